//! Calls a tree's run makes once, at its end: the pruning of old sync
//! snapshots, all of a host's in one shell call (`zfs destroy` takes the
//! snapshots of one dataset, so one command per dataset, in one session)
//! instead of one ssh session per dataset and side. A run cut short
//! leaves those snapshots to the next run, which prunes every old sync
//! snapshot of ours it finds.

use super::*;
use crate::gather::{part_end, parts};

/// Commands per shell call (each is one dataset's `zfs destroy`).
const PER_CALL: usize = 100;

/// A deferred prune: one dataset's old sync snapshots on one side.
pub(crate) struct Prune {
    pub(crate) side: Side,
    pub(crate) argv: Vec<String>,
}

/// What a `zfs destroy` of snapshots says when they are gone already (a
/// try whose answer was lost destroyed them): the prune's work is done.
const GONE: [&str; 2] = [
    "could not find any snapshots to destroy",
    "dataset does not exist",
];

/// Runs the deferred prunes, one shell call per side (and `PER_CALL`
/// datasets); a failure is a warning, as a prune's is.
pub(crate) fn prune_all(ctx: &Ctx, prunes: Vec<Prune>) {
    for side in [Side::Source, Side::Target] {
        let argvs: Vec<&Vec<String>> = prunes
            .iter()
            .filter(|p| p.side == side)
            .map(|p| &p.argv)
            .collect();
        for batch in argvs.chunks(PER_CALL) {
            run_batch(ctx, side, batch);
        }
    }
}

fn run_batch(ctx: &Ctx, side: Side, batch: &[&Vec<String>]) {
    let host = ctx.host(side);
    let end = part_end();
    let script = batch
        .iter()
        .map(|argv| format!("{}; {end}", shell::join(argv)))
        .collect::<Vec<_>>()
        .join("; ");
    for argv in batch {
        ctx.out.debug(&host.describe(std::slice::from_ref(*argv)));
    }
    let failed = |e: String| {
        ctx.out.warn(&format!(
            "pruning old sync snapshots on the {side} failed: {e}"
        ));
    };
    let out = match host.run_repeatable(&["sh".into(), "-c".into(), script]) {
        Ok(o) => o,
        Err(e) => return failed(e.to_string()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (argv, part) in batch.iter().zip(parts(batch.len(), &stdout, &stderr)) {
        match part {
            Some((0, _)) => {}
            Some((_, err)) if GONE.iter().any(|g| err.contains(g)) => {}
            Some((status, err)) => {
                failed(host.error(&[argv.to_vec()], Some(status), err).to_string())
            }
            None => failed(
                host.error(&[argv.to_vec()], out.status.code(), stderr.to_string())
                    .to_string(),
            ),
        }
    }
}
