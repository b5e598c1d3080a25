//! Replication of one run: pre-flight, one listing per side, then per
//! dataset: plan (pure) and either print it (--dry-run) or execute it.
//! A failure in one dataset is reported and the others go on; the summary
//! decides the exit status.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;

use crate::config::Settings;
use crate::gather;
use crate::host::{at_once, CmdError, Host};
use crate::interrupt;
use crate::output::{exit, readable, Out, Summary};
use crate::progress::{Face, Progress};
use crate::rsync::coordinator::{self, Agent, AgentOpts, Opened, Retry};
use crate::transfer::{self, Hosts};
use syncoid_rsync_core::argv::{self, PipeOpts, Receive, SendWhat, Tools};
use syncoid_rsync_core::inventory::{Inventory, Snap};
use syncoid_rsync_core::plan::{self, Conflict, Input, Plan, Rollback, Side, Step, TargetState};
use syncoid_rsync_core::shell;
use syncoid_rsync_core::syncsnap;

/// A run-level failure: nothing (more) can be done.
#[derive(Debug)]
pub struct Fatal {
    pub code: i32,
    pub msg: String,
}

pub fn fatal(code: i32, msg: impl Into<String>) -> Fatal {
    Fatal {
        code,
        msg: msg.into(),
    }
}

/// Why one dataset failed.
#[derive(Debug)]
enum DsError {
    Conflict(Conflict),
    Cmd(Vec<CmdError>),
    Other(String),
    /// --rsync: an agent is gone for good and the other was stopped; the
    /// target's resume token carries the transfer on.
    AgentGone(String),
    /// --rsync: another machine's run drives this transfer's agents; they
    /// are left to it (the dataset counts as busy, as syncoid's busy
    /// receive does).
    Busy(String),
}

impl From<CmdError> for DsError {
    fn from(e: CmdError) -> DsError {
        DsError::Cmd(vec![e])
    }
}

impl std::fmt::Display for DsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DsError::Conflict(c) => write!(f, "{c}"),
            DsError::Cmd(errs) => {
                let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                write!(f, "{}", msgs.join("\n  "))?;
                if let Some(hint) = errs.first().and_then(|e| hint(&e.stderr)) {
                    write!(f, "\n  hint: {hint}")?;
                }
                Ok(())
            }
            DsError::Other(m) | DsError::AgentGone(m) | DsError::Busy(m) => f.write_str(m),
        }
    }
}

/// What the user can do about zfs errors we recognise (the texts are
/// OpenZFS 2.1's, from ../shared/zfs-reference and the VM).
fn hint(stderr: &str) -> Option<&'static str> {
    let has = |t: &str| stderr.contains(t);
    Some(if has("has been modified") {
        "the target changed since its last snapshot; without --no-rollback the next run rolls it back (zfs receive -F), losing those changes"
    } else if has("does not match incremental source") || has("most recent snapshot of") {
        "the target's newest snapshot is not the common base; run again without --no-rollback to roll it back, or --force-delete to replace it"
    } else if has("new filesystem stream: destination") && has("exists") {
        "the target exists but shares no snapshot with the source: choose another target, or --force-delete to destroy and replace it"
    } else if has("checksum mismatch or incomplete stream") || has("incomplete stream") {
        "the stream was cut or damaged on its way; the target keeps what it verified (resume token): run the same command again (--rsync survives this)"
    } else if has("out of space") || has("No space left") || has("quota exceeded") {
        "the target pool or dataset is full: free space or raise its quota"
    } else if has("no such pool") {
        "the pool does not exist on that host: check the name (zpool list)"
    } else if has("dataset is busy") {
        "another process holds the dataset: wait, or find it with `zfs holds` / `lsof`"
    } else if has("Permission denied") || has("permission denied") {
        "check the ssh key and user, or use sudo/zfs allow (see --no-privilege-elevation)"
    } else if has("command not found") || has("not found") {
        "a program is missing on that host: install it or choose --compress=none"
    } else {
        return None;
    })
}

#[cfg(test)]
mod hint_tests {
    use super::hint;

    #[test]
    fn real_zfs_errors_get_a_hint() {
        for (msg, want) in [
            ("cannot receive incremental stream: destination dst/data has been modified", "--no-rollback"),
            ("cannot receive incremental stream: most recent snapshot of dst/other does not\nmatch incremental source", "--force-delete"),
            ("cannot receive new filesystem stream: destination 'dst/data' exists", "--force-delete"),
            ("cannot receive new filesystem stream: checksum mismatch or incomplete stream.", "run the same command again"),
            ("cannot open 'nopool': no such pool", "zpool list"),
            ("cannot destroy snapshot src/data@a: dataset is busy", "zfs holds"),
        ] {
            let h = hint(msg).unwrap_or_else(|| panic!("no hint for {msg}"));
            assert!(h.contains(want), "{msg} -> {h}");
        }
        assert_eq!(hint("something else entirely"), None);
    }
}

/// One dataset as the planner and executor see it.
#[derive(Default, Clone)]
struct View {
    snaps: Vec<Snap>,
    marks: Vec<Snap>,
    resume_token: Option<String>,
    written: u64,
    exists: bool,
    recordsize: Option<String>,
    sync: Option<String>,
    is_volume: bool,
}

fn view(inv: Option<&Inventory>, fs: &str) -> View {
    let Some(inv) = inv else {
        return View::default();
    };
    let Some(d) = inv.dataset(fs) else {
        return View::default();
    };
    View {
        snaps: inv.snaps_of(fs).to_vec(),
        marks: inv.marks_of(fs).to_vec(),
        resume_token: d.resume_token.clone(),
        written: d.written,
        exists: true,
        recordsize: d.recordsize.clone(),
        sync: d.sync.clone(),
        is_volume: d.is_volume,
    }
}

struct Ctx<'a> {
    s: &'a Settings,
    out: Out,
    progress: Progress,
    /// --rsync: hosts that have this version of syncoid-rsync installed.
    installed: BTreeSet<String>,
    /// Bytes received and reconnects over the run (for the summary).
    bytes: std::cell::Cell<u64>,
    reconnects: std::cell::Cell<u64>,
    /// --rsync: payload bytes sent again after outages.
    resent: std::cell::Cell<u64>,
    tools: Tools,
    busy: Vec<String>,
    /// --rsync: the syncoid-rsync binary on (source, target), and the
    /// directories we copied it into (removed at the end of the run).
    exes: std::cell::RefCell<Option<Exes>>,
    /// --rsync: the agents alive on (source, target) at pre-flight: those
    /// of interrupted runs (listed once per run, not per dataset).
    live: std::cell::RefCell<LiveAgents>,
}

/// The live agents on a host.
type AgentList = Vec<crate::preflight::LiveAgent>;

struct LiveAgents {
    source: AgentList,
    target: AgentList,
}

#[derive(Clone)]
struct Exes {
    source: String,
    target: String,
    copied: Vec<(Host, String)>,
}

impl Ctx<'_> {
    fn zfs(&self, side: Side, args: &[&str]) -> Vec<String> {
        gather::zfs(self.sudo(side), args)
    }
    fn host(&self, side: Side) -> &Host {
        match side {
            Side::Source => &self.s.source_host,
            Side::Target => &self.s.target_host,
        }
    }
    fn sudo(&self, side: Side) -> bool {
        match side {
            Side::Source => self.s.source_sudo,
            Side::Target => self.s.target_sudo,
        }
    }
    fn dry(&self) -> bool {
        self.s.args.dry_run
    }
    /// Runs (or, with --dry-run, prints) a zfs command on one side.
    fn zfs_run(&self, side: Side, args: &[&str]) -> Result<String, CmdError> {
        let argv = self.zfs(side, args);
        if self.dry() {
            self.out
                .plain(&format!("  {}", self.host(side).describe(&[argv])));
            return Ok(String::new());
        }
        self.out
            .debug(&self.host(side).describe(std::slice::from_ref(&argv)));
        self.host(side).run_ok(&argv)
    }
}

/// Datasets to replicate, parents and clone origins first.
fn datasets(s: &Settings, inv: &Inventory) -> Vec<(String, Option<String>)> {
    let root = s.source.dataset.as_str();
    let mut list: Vec<(String, Option<String>)> = if s.args.recursive {
        inv.datasets
            .iter()
            .filter(|d| !(s.args.skip_parent && d.name == root))
            .filter(|d| !s.exclude_datasets.iter().any(|r| r.is_match(&d.name)))
            .map(|d| (d.name.clone(), d.origin.clone()))
            .collect()
    } else {
        vec![(root.to_string(), None)]
    };
    let names: BTreeSet<String> = list.iter().map(|(n, _)| n.clone()).collect();
    for (_, origin) in list.iter_mut() {
        let keep = !s.args.no_clone_handling
            && origin
                .as_ref()
                .and_then(|o| o.split_once('@'))
                .is_some_and(|(fs, _)| names.contains(fs));
        if !keep {
            *origin = None;
        }
    }
    // Move each clone after its origin's dataset (parents already precede
    // children in zfs list order).
    let mut ordered: Vec<(String, Option<String>)> = Vec::new();
    let mut pending = list;
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for item in pending {
            let dep = item
                .1
                .as_ref()
                .and_then(|o| o.split_once('@'))
                .map(|(fs, _)| fs.to_string());
            let ready = dep.is_none_or(|d| ordered.iter().any(|(n, _)| *n == d));
            if ready {
                ordered.push(item);
            } else {
                rest.push(item);
            }
        }
        if rest.len() == before {
            // A cycle: replicate the rest as plain datasets.
            ordered.extend(rest.into_iter().map(|(n, _)| (n, None)));
            break;
        }
        pending = rest;
    }
    ordered
}

pub fn run(s: &Settings) -> Result<Summary, Fatal> {
    let out = Out {
        quiet: s.args.quiet,
        debug: s.args.debug,
        json: s.args.json,
    };
    let started = std::time::Instant::now();
    let src_root = s.source.dataset.as_str();
    let dst_root = s.target.dataset.as_str();
    let recursive = s.args.recursive;
    // Each side is listed in the same call as its pre-flight probe.
    let src_list = gather::Listing::new(s.source_sudo, src_root, recursive, false);
    let dst_list = gather::Listing::new(s.target_sudo, dst_root, recursive, true);
    let crate::preflight::Report {
        tools,
        installed,
        agents,
        listed: [src_out, dst_out],
    } = crate::preflight::run(s, &out, (&src_list.script(), &dst_list.script()))?;
    // When source and target are one host, it was probed once: both
    // sides see the same list.
    let on = |h: &Host| agents.get(&h.label()).cloned().unwrap_or_default();
    let live = LiveAgents {
        source: on(&s.source_host),
        target: on(&s.target_host),
    };
    if s.args.rsync {
        out.debug(&format!(
            "live agents: {} on the source, {} on the target",
            live.source.len(),
            live.target.len()
        ));
    }
    out.debug("pre-flight checks passed");
    let src_inv = src_list
        .parse(&s.source_host, &src_out.0, &src_out.1, None)
        .map_err(|e| fatal(exit::FAILED, format!("cannot list the source: {e}")))?
        .0
        .ok_or_else(|| {
            fatal(
                exit::FAILED,
                format!("source dataset {} does not exist", s.source),
            )
        })?;
    let (dst_inv, busy) = dst_list
        .parse(&s.target_host, &dst_out.0, &dst_out.1, None)
        .map_err(|e| fatal(exit::FAILED, format!("cannot list the target: {e}")))?;
    out.debug("source and target listed");
    let face = if s.args.json {
        Face::Json
    } else if s.args.quiet {
        Face::Quiet
    } else if out.stderr_is_terminal() {
        Face::Bar
    } else {
        Face::Log
    };
    let ctx = Ctx {
        s,
        out,
        progress: Progress::new(face),
        bytes: std::cell::Cell::new(0),
        reconnects: std::cell::Cell::new(0),
        resent: std::cell::Cell::new(0),
        tools,
        installed,
        busy,
        exes: std::cell::RefCell::new(None),
        live: std::cell::RefCell::new(live),
    };
    if s.args.dry_run {
        out.plain("DRY RUN: these are the commands a real run would execute; nothing is changed.");
    }
    let mut summary = Summary::default();
    let list = datasets(s, &src_inv);
    if list.is_empty() {
        out.critical("no datasets found");
        summary.failed += 1;
    }
    let pairs: Vec<(String, Option<String>, String)> = list
        .into_iter()
        .map(|(src_fs, origin)| {
            let dst_fs = format!("{dst_root}{}", &src_fs[src_root.len()..]);
            (src_fs, origin, dst_fs)
        })
        .collect();
    ctx.progress.json(
        "plan",
        serde_json::json!({
            "mode": if s.args.rsync { "rsync" } else { "standard" },
            "source": s.source.to_string(), "target": s.target.to_string(),
            "dry_run": s.args.dry_run,
            "datasets": pairs.iter().map(|(a, _, b)| serde_json::json!({"source": a, "target": b})).collect::<Vec<_>>(),
        }),
    );
    let count = pairs.len();
    for (index, (src_fs, origin, dst_fs)) in pairs.into_iter().enumerate() {
        ctx.progress.dataset(index + 1, count);
        let src = view(Some(&src_inv), &src_fs);
        let dst = view(dst_inv.as_ref(), &dst_fs);
        let t = std::time::Instant::now();
        let before = ctx.bytes.get();
        let (reconnects_before, resent_before) = (ctx.reconnects.get(), ctx.resent.get());
        let (status, error) = match sync_dataset(&ctx, &src_fs, &dst_fs, origin, src, dst) {
            Ok(Outcome::Replicated) => {
                summary.replicated += 1;
                ("replicated", None)
            }
            Ok(Outcome::UpToDate) => {
                summary.up_to_date += 1;
                ("up_to_date", None)
            }
            Ok(Outcome::Skipped) => {
                summary.skipped += 1;
                ("skipped", None)
            }
            Ok(Outcome::Busy) => {
                summary.busy += 1;
                ("busy", None)
            }
            Err(DsError::Busy(why)) => {
                summary.busy += 1;
                out.warn(&format!(
                    "Cannot sync now: {dst_fs} is being replicated from {src_fs} by another syncoid-rsync --rsync run: {why}. Leaving the transfer to it."
                ));
                ("busy", None)
            }
            Err(e) => {
                summary.failed += 1;
                out.critical(&format!("{} -> {}: {e}", src_fs, dst_fs));
                ("failed", Some(e.to_string()))
            }
        };
        summary.datasets.push(crate::metrics::Dataset {
            source: location_of(&s.source_host, &src_fs),
            target: location_of(&s.target_host, &dst_fs),
            outcome: status,
            // Counted with --rsync, or by the meter standard mode puts in
            // its pipeline on a terminal or with --json.
            bytes: (s.args.rsync || matches!(ctx.progress.face(), Face::Bar | Face::Json))
                .then(|| ctx.bytes.get() - before),
            seconds: t.elapsed().as_secs_f64(),
            reconnects: ctx.reconnects.get() - reconnects_before,
            resent_bytes: ctx.resent.get() - resent_before,
        });
        ctx.progress.json(
            "dataset_done",
            serde_json::json!({
                "source": src_fs, "target": dst_fs, "status": status, "error": error,
                "bytes": ctx.bytes.get() - before,
                "seconds": (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            }),
        );
    }
    let secs = started.elapsed().as_secs_f64();
    summary.bytes = ctx.bytes.get();
    summary.reconnects = ctx.reconnects.get();
    summary.seconds = secs;
    ctx.progress.json(
        "summary",
        serde_json::json!({
            "replicated": summary.replicated, "up_to_date": summary.up_to_date,
            "skipped": summary.skipped, "busy": summary.busy, "failed": summary.failed,
            "bytes": ctx.bytes.get(), "reconnects": ctx.reconnects.get(),
            "seconds": (secs * 1000.0).round() / 1000.0,
            "mean_rate_bps": if secs > 0.0 { (ctx.bytes.get() as f64 / secs).round() } else { 0.0 },
            "exit_code": summary.exit_code(),
        }),
    );
    if ctx.forget_exes() {
        out.debug("copied binaries removed");
    }
    Ok(summary)
}

/// `host:fs`, or `fs` on this machine (as the user wrote SOURCE/TARGET).
fn location_of(host: &Host, fs: &str) -> String {
    match host {
        Host::Local => fs.to_string(),
        Host::Remote { dest, .. } => format!("{dest}:{fs}"),
    }
}

enum Outcome {
    Replicated,
    UpToDate,
    Skipped,
    Busy,
}

fn now_local() -> syncsnap::LocalTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let t = now as libc::time_t;
    // SAFETY: localtime_r fills the tm we own from a valid time_t.
    let offset = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm.tm_gmtoff as i32
    };
    syncsnap::local_time(now, offset)
}

fn sync_dataset(
    ctx: &Ctx,
    src_fs: &str,
    dst_fs: &str,
    origin: Option<String>,
    mut src: View,
    mut dst: View,
) -> Result<Outcome, DsError> {
    let out = &ctx.out;
    match src.sync.as_deref() {
        None | Some("true") | Some("-") | Some("") => {}
        Some("false") => {
            out.info(&format!(
                "Skipping dataset (syncoid:sync=false): {src_fs}..."
            ));
            return Ok(Outcome::Skipped);
        }
        Some(hosts) => {
            if !hosts.split(',').any(|h| h == ctx.s.hostname) {
                out.info(&format!(
                    "Skipping dataset (syncoid:sync doesn't include {}): {src_fs}...",
                    ctx.s.hostname
                ));
                return Ok(Outcome::Skipped);
            }
        }
    }
    // --rsync: one run per transfer on this machine (`rsync::lock`), held
    // until this dataset is done.
    let _lock = if ctx.s.args.rsync && !ctx.dry() {
        match crate::rsync::lock::take(&ctx.transfer_key(src_fs, dst_fs)) {
            Ok(lock) => Some(lock),
            Err(crate::rsync::lock::Refused::Held(pid)) => {
                let by = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                out.warn(&format!(
                    "Cannot sync now: {dst_fs} is already being replicated from {src_fs} by another syncoid-rsync --rsync run on this machine{by}."
                ));
                return Ok(Outcome::Busy);
            }
            Err(crate::rsync::lock::Refused::Unsafe(e)) => {
                return Err(DsError::Other(format!("--rsync: {e}")));
            }
        }
    } else {
        None
    };
    let mut replicated = false;
    // --rsync: agents found gone (a host restarted) and replaced so far.
    let mut gone = 0;
    // A zfs receive into the target may be our own --rsync agent's, left
    // by an interrupted run: finish that first; only a foreign one is busy.
    let reattached = if ctx.s.args.rsync && !ctx.dry() {
        match reattach(ctx, src_fs, dst_fs) {
            Err(DsError::AgentGone(e)) => {
                gone += 1;
                carry_on_after_gone(ctx, dst_fs, &e)?;
                true
            }
            r => r?,
        }
    } else {
        false
    };
    if reattached {
        replicated = true;
        src = refresh(ctx, Side::Source, src_fs)?;
        dst = refresh(ctx, Side::Target, dst_fs)?;
    } else if ctx.busy.iter().any(|b| b == dst_fs) {
        let th = &ctx.s.target_host;
        let whose = match gather::receiving_agent(th, dst_fs) {
            Some(pid) => format!(
                " It is a syncoid-rsync --rsync agent's (pid {pid} on {}): run the same command with --rsync to \
                 drive that transfer on, or end it with `syncoid-rsync agent stop DIR` there \
                 (`syncoid-rsync agent list` shows DIR; the target keeps what it received).",
                th.label()
            ),
            None => String::new(),
        };
        out.warn(&format!(
            "Cannot sync now: {dst_fs} is already target of a zfs receive process.{whose}"
        ));
        return Ok(Outcome::Busy);
    }
    for _round in 0..4 + 2 * MAX_GONE {
        let input = plan_input(ctx, &src, &dst, dst_fs, origin.clone());
        if ctx.s.args.dumpsnaps {
            dump(out, src_fs, &input);
        }
        let opts = plan_options(ctx);
        let plan = plan::plan(&input, &opts).map_err(|c| match c {
            // syncoid's words, which scripts may grep.
            Conflict::NoSourceSnapshots => DsError::Other(format!(
                "no snapshots exist on source {src_fs}, and you asked for --no-sync-snap."
            )),
            c => DsError::Conflict(c),
        })?;
        let steps = match plan {
            Plan::UpToDate { newest } => {
                out.info(&format!("no snapshots on source newer than {newest} on target. Nothing to do, not syncing."));
                if ctx.s.args.delete_target_snapshots && !ctx.dry() {
                    delete_target_snapshots(ctx, src_fs, dst_fs)?;
                }
                return Ok(if replicated {
                    Outcome::Replicated
                } else {
                    Outcome::UpToDate
                });
            }
            Plan::Steps(steps) => steps,
        };
        if ctx.dry() {
            out.plain(&format!("{src_fs} -> {dst_fs}:"));
        }
        let mut replan = false;
        for step in &steps {
            match run_step(ctx, src_fs, dst_fs, &src, step) {
                Ok(()) => {}
                Err(DsError::AgentGone(e)) if gone < MAX_GONE => {
                    gone += 1;
                    carry_on_after_gone(ctx, dst_fs, &e)?;
                    replan = true;
                    break;
                }
                Err(DsError::Cmd(errs))
                    if matches!(step, Step::Resume { .. }) && source_gone(&errs) =>
                {
                    out.warn("resetting partially receive state because the snapshot source no longer exists: discarding the target's partial receive state (zfs receive -A) and starting a normal sync");
                    ctx.zfs_run(Side::Target, &["receive", "-A", dst_fs])?;
                    replan = true;
                    break;
                }
                Err(e) => return Err(e),
            }
            if matches!(step, Step::Resume { .. }) {
                replan = true;
            }
            replicated |= step.is_transfer();
        }
        if !replan || ctx.dry() {
            if ctx.s.args.delete_target_snapshots && !ctx.dry() {
                delete_target_snapshots(ctx, src_fs, dst_fs)?;
            }
            return Ok(Outcome::Replicated);
        }
        src = refresh(ctx, Side::Source, src_fs)?;
        dst = refresh(ctx, Side::Target, dst_fs)?;
    }
    Err(DsError::Other(
        "gave up after repeated resume attempts".into(),
    ))
}

/// How many times one dataset's `--rsync` transfer goes on from the resume
/// token after an agent was found gone, in one run.
const MAX_GONE: usize = 5;

/// After an agent was found gone (`e`) and the other stopped: copies of
/// the binary are made afresh, and planning waits (up to a minute) until
/// no `zfs receive` writes to `dst_fs`: the receive of an agent that died
/// or was stopped ends when its input does, saving the resume token.
fn carry_on_after_gone(ctx: &Ctx, dst_fs: &str, e: &str) -> Result<(), DsError> {
    ctx.out.warn(&format!(
        "{e}; the other agent was stopped: going on from the target's resume token"
    ));
    ctx.forget_exes();
    let host = ctx.host(Side::Target);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while gather::receiving(host)?.iter().any(|b| b == dst_fs) {
        if std::time::Instant::now() > deadline {
            return Err(DsError::Other(format!(
                "{dst_fs} is still the target of a zfs receive a minute after its agent was gone: run the same command again once it has ended"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}

fn source_gone(errs: &[CmdError]) -> bool {
    errs.iter().any(|e| {
        e.stderr
            .contains("used in the initial send no longer exists")
            || (e.stderr.contains("incremental source") && e.stderr.contains("no longer exists"))
    })
}

fn refresh(ctx: &Ctx, side: Side, fs: &str) -> Result<View, DsError> {
    let inv = gather::inventory(ctx.host(side), ctx.sudo(side), fs, false)?;
    Ok(view(inv.as_ref(), fs))
}

fn plan_input(ctx: &Ctx, src: &View, dst: &View, dst_fs: &str, origin: Option<String>) -> Input {
    let s = ctx.s;
    let included = |n: &str| s.snap_included(n);
    Input {
        source: plan::filter_snaps(&src.snaps, &included),
        source_marks: src.marks.clone(),
        target: dst.exists.then(|| TargetState {
            snaps: plan::filter_snaps(&dst.snaps, &included),
            resume_token: dst.resume_token.clone(),
            written: dst.written,
            is_pool_root: !dst_fs.contains('/'),
        }),
        origin,
        new_sync_snap: (!s.args.no_sync_snap)
            .then(|| fresh_sync_name(ctx, src))
            .filter(|n| s.snap_included(n)),
    }
}

/// The sync snapshot name for now; if the source already has one with that
/// name (a run within the same second), waits for the next second rather
/// than fail on `dataset already exists` as syncoid does.
fn fresh_sync_name(ctx: &Ctx, src: &View) -> String {
    loop {
        let name = syncsnap::name(
            ctx.s.args.identifier.as_deref(),
            &ctx.s.hostname,
            &now_local(),
        );
        if !src.snaps.iter().any(|s| s.name == name) {
            return name;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn plan_options(ctx: &Ctx) -> plan::Options {
    let a = &ctx.s.args;
    plan::Options {
        no_stream: a.no_stream,
        force_delete: a.force_delete,
        no_rollback: a.no_rollback,
        resume: !a.no_resume,
        keep_sync_snap: a.keep_sync_snap,
        create_bookmark: a.create_bookmark,
        use_hold: a.use_hold,
        sync_prefix: ctx.s.sync_prefix(),
        snaps_filtered: !ctx.s.include_snaps.is_empty() || !ctx.s.exclude_snaps.is_empty(),
    }
}

fn dump(out: &Out, fs: &str, input: &Input) {
    let names = |v: &[Snap]| {
        v.iter()
            .map(|s| format!("{} (guid {}, txg {})", s.name, s.guid, s.createtxg))
            .collect::<Vec<_>>()
    };
    out.plain(&format!(
        "snapshots of {fs} (source): {:?}",
        names(&input.source)
    ));
    if let Some(t) = &input.target {
        out.plain(&format!("snapshots of the target: {:?}", names(&t.snaps)));
    }
}

fn run_step(ctx: &Ctx, src_fs: &str, dst_fs: &str, src: &View, step: &Step) -> Result<(), DsError> {
    let out = &ctx.out;
    match step {
        Step::AbortPartialReceive => {
            out.debug(&format!("reset partial receive state of {dst_fs}..."));
            out.warn(&format!(
                "resetting partially receive state (--no-resume): discarding the interrupted receive on {dst_fs}"
            ));
            ctx.zfs_run(Side::Target, &["receive", "-A", dst_fs])?;
        }
        Step::CreateSyncSnap { name } => {
            ctx.zfs_run(Side::Source, &["snapshot", &format!("{src_fs}@{name}")])?;
        }
        Step::DestroyTarget => destroy_target(ctx, dst_fs)?,
        Step::DestroyClashing { snaps } => {
            let list = snaps
                .iter()
                .map(|n| format!("{dst_fs}@{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            out.warn(&format!(
                "--force-delete: destroying target snapshots whose names the source reuses for other snapshots: {list}"
            ));
            ctx.zfs_run(
                Side::Target,
                &["destroy", &format!("{dst_fs}@{}", snaps.join(","))],
            )?;
        }
        Step::Hold { side, snap } | Step::Release { side, snap } => {
            let verb = if matches!(step, Step::Hold { .. }) {
                "hold"
            } else {
                "release"
            };
            let fs = if *side == Side::Source {
                src_fs
            } else {
                dst_fs
            };
            if let Err(e) = ctx.zfs_run(*side, &[verb, &ctx.s.hold_tag(), &format!("{fs}@{snap}")])
            {
                out.warn(&format!("zfs {verb} failed: {e}"));
            }
        }
        Step::Bookmark { snap } => create_bookmark(ctx, src_fs, src, snap)?,
        Step::Prune { side, snaps } => {
            let fs = if *side == Side::Source {
                src_fs
            } else {
                dst_fs
            };
            for chunk in snaps.chunks(50) {
                let target = format!("{fs}@{}", chunk.join(","));
                if let Err(e) = ctx.zfs_run(*side, &["destroy", &target]) {
                    out.warn(&format!(
                        "pruning old sync snapshots on the {side} failed: {e}"
                    ));
                }
            }
        }
        transfer_step => send_step(ctx, src_fs, dst_fs, src, transfer_step)?,
    }
    Ok(())
}

fn destroy_target(ctx: &Ctx, dst_fs: &str) -> Result<(), DsError> {
    if !dst_fs.contains('/') {
        return Err(DsError::Other(format!(
            "refusing to destroy pool root {dst_fs}"
        )));
    }
    // `destroy -n` changes nothing: a dry run lists what it would destroy
    // as completely as the warning before a real run.
    let argv = ctx.zfs(Side::Target, &["destroy", "-r", "-n", "-v", dst_fs]);
    let listing = ctx.host(Side::Target).run_ok_read(&argv)?;
    let doomed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("would destroy "))
        .collect();
    ctx.out.info(&format!(
        "Removing {dst_fs} because no matching snapshots were found"
    ));
    ctx.out.warn(&format!(
        "--force-delete: {dst_fs} shares no snapshot with the source; destroying it and everything in it: {}",
        if doomed.is_empty() { dst_fs.to_string() } else { doomed.join(", ") }
    ));
    ctx.zfs_run(Side::Target, &["destroy", "-r", dst_fs])?;
    Ok(())
}

fn create_bookmark(ctx: &Ctx, src_fs: &str, src: &View, snap: &str) -> Result<(), DsError> {
    let first = ctx.zfs_run(
        Side::Source,
        &[
            "bookmark",
            &format!("{src_fs}@{snap}"),
            &format!("{src_fs}#{snap}"),
        ],
    );
    let Err(e) = first else { return Ok(()) };
    let guid = src
        .snaps
        .iter()
        .find(|s| s.name == snap)
        .map(|s| s.guid)
        .unwrap_or(0);
    if src.marks.iter().any(|m| m.name == snap && m.guid == guid) {
        ctx.out.info("bookmark already exists, skipping creation");
        return Ok(());
    }
    let suffix: String = guid.to_string().chars().take(6).collect();
    ctx.out.info(&format!(
        "bookmark creation failed ({e}), retrying with guid based suffix ({suffix})..."
    ));
    ctx.zfs_run(
        Side::Source,
        &[
            "bookmark",
            &format!("{src_fs}@{snap}"),
            &format!("{src_fs}#{snap}{suffix}"),
        ],
    )?;
    Ok(())
}

fn describe_rollback(dst_fs: &str, r: &Rollback) -> String {
    let mut parts = Vec::new();
    if !r.destroys.is_empty() {
        parts.push(format!(
            "destroys target snapshots {}",
            r.destroys
                .iter()
                .map(|s| format!("{dst_fs}@{s}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if r.discards_changes {
        parts.push(format!(
            "rolls back changes made on {dst_fs} since its newest snapshot"
        ));
    }
    format!(
        "the forced receive (zfs receive -F) {}",
        parts.join(" and ")
    )
}

fn send_step(
    ctx: &Ctx,
    src_fs: &str,
    dst_fs: &str,
    src: &View,
    step: &Step,
) -> Result<(), DsError> {
    let s = ctx.s;
    let snap = |n: &str| format!("{src_fs}@{n}");
    let (what, rollback, label) = match step {
        Step::Full { snap: n } => (
            SendWhat::Full { snap: snap(n) },
            Rollback::default(),
            if s.args.no_stream {
                format!(
                    "--no-stream selected; sending newest full snapshot {} to new target filesystem {dst_fs}:",
                    snap(n)
                )
            } else {
                format!(
                    "Sending oldest full snapshot {} to new target filesystem {dst_fs}",
                    snap(n)
                )
            },
        ),
        Step::Clone { origin, snap: n } => (
            SendWhat::Incremental {
                from: origin.clone(),
                to: snap(n),
                intermediates: false,
            },
            Rollback::default(),
            format!("Clone is recreated on target {dst_fs} based on {origin}"),
        ),
        Step::Incremental {
            from,
            to,
            intermediates,
            rollback,
        } => (
            SendWhat::Incremental {
                from: snap(from),
                to: snap(to),
                intermediates: *intermediates,
            },
            rollback.clone(),
            format!("Sending incremental {} ... {to} to {dst_fs}", snap(from)),
        ),
        Step::FromBookmark { mark, to, rollback } => (
            SendWhat::Incremental {
                from: format!("{src_fs}#{mark}"),
                to: snap(to),
                intermediates: false,
            },
            rollback.clone(),
            format!("Sending incremental {src_fs}#{mark} ... {to} to {dst_fs}"),
        ),
        Step::Resume { token } => (
            SendWhat::Resume {
                token: token.clone(),
            },
            Rollback::default(),
            format!("Resuming interrupted zfs send/receive from {src_fs} to {dst_fs}"),
        ),
        other => {
            return Err(DsError::Other(format!(
                "internal: {other:?} is not a transfer"
            )))
        }
    };
    // As syncoid: incremental receives are forced (-F) unless --no-rollback,
    // because a mounted target is "modified" by atime updates that `written`
    // does not show yet. What the rollback destroys is known and printed.
    let force = !s.args.no_rollback
        && matches!(
            step,
            Step::Incremental { .. } | Step::FromBookmark { .. } | Step::Resume { .. }
        );
    if !rollback.is_empty() {
        ctx.out.warn(&describe_rollback(dst_fs, &rollback));
    }
    let mut set_props = Vec::new();
    if s.args.preserve_properties {
        set_props = local_properties(ctx, src_fs)?;
    } else if s.args.preserve_recordsize && !src.is_volume {
        if let Some(rs) = &src.recordsize {
            set_props.push(("recordsize".to_string(), rs.clone()));
        }
    }
    let recv = Receive {
        resumable: !s.args.no_resume || s.args.rsync,
        force,
        set_props,
    };
    let send_argv = argv::send(&what, &s.send_opts, s.source_sudo);
    let recv_argv = argv::receive(dst_fs, &recv, &s.recv_opts, s.target_sudo);
    let size = if ctx.dry() { 0 } else { estimate(ctx, &what) };
    let hosts = Hosts {
        source: &s.source_host,
        target: &s.target_host,
    };
    let pipe = PipeOpts {
        compress: s.compress,
        mbuffer_size: s.args.mbuffer_size.clone(),
        source_bwlimit: s.args.source_bwlimit.clone(),
        target_bwlimit: s.args.target_bwlimit.clone(),
        // Our own meter where syncoid puts pv, when progress is shown on a
        // terminal or as JSON events: exact, and never past 100%.
        pv_options: None,
        meter: matches!(ctx.progress.face(), Face::Bar | Face::Json),
        source_remote: s.source_host.is_remote(),
        target_remote: s.target_host.is_remote(),
        direct: s.direct.clone(),
    };
    let segments = argv::pipeline(
        send_argv.clone(),
        recv_argv.clone(),
        size,
        &pipe,
        &ctx.tools,
    );
    if ctx.dry() {
        let how = if s.args.rsync {
            // No pipeline: agents hold zfs send and zfs receive open and
            // chunks travel between them.
            format!(
                "{}  (sender agent on {})  =>  verified chunks  =>  {}  (receiver agent on {})",
                shell::join(&send_argv),
                s.source_host.label(),
                shell::join(&recv_argv),
                s.target_host.label()
            )
        } else {
            transfer::describe(&segments, &hosts)
        };
        ctx.out.plain(&format!("  {how}"));
        return Ok(());
    }
    let est = if size == 0 {
        "UNKNOWN".to_string()
    } else {
        readable(size)
    };
    // syncoid's words: "...: (~ SIZE)" after --no-stream's label.
    match label.strip_suffix(':') {
        Some(l) => ctx.out.info(&format!("{l}: (~ {est})")),
        None => ctx.out.info(&format!("{label} (~ {est}):")),
    }
    let kind = match what {
        SendWhat::Full { .. } => "full",
        SendWhat::Incremental { .. } => "incremental",
        SendWhat::Resume { .. } => "resume",
    };
    ctx.progress.json(
        "dataset_start",
        serde_json::json!({
            "source": src_fs, "target": dst_fs, "kind": kind,
            "estimate_bytes": (size > 0).then_some(size),
        }),
    );
    if s.args.rsync {
        return rsync_transfer(ctx, src_fs, dst_fs, &send_argv, &recv_argv, size);
    }
    ctx.out.debug(&transfer::describe(&segments, &hosts));
    ctx.progress.start_stream(src_fs, dst_fs, size);
    interrupt::doing(Some(interrupt::Doing::Stream {
        target: dst_fs.to_string(),
        resumable: recv.resumable,
    }));
    let result = transfer::run(&segments, &hosts, &ctx.progress);
    interrupt::doing(None);
    ctx.progress.end_stream(result.is_ok());
    let bytes = result.map_err(DsError::Cmd)?;
    ctx.bytes.set(ctx.bytes.get() + bytes);
    Ok(())
}

fn estimate(ctx: &Ctx, what: &SendWhat) -> u64 {
    let argv = argv::estimate(what, &ctx.s.send_opts, ctx.s.source_sudo);
    match ctx.s.source_host.run(&argv) {
        Ok(o) if o.status.success() => {
            argv::parse_estimate(&String::from_utf8_lossy(&o.stdout)).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Locally set properties, less those zfs cannot set (syncoid's list).
fn local_properties(ctx: &Ctx, fs: &str) -> Result<Vec<(String, String)>, DsError> {
    const READONLY: &[&str] = &[
        "available",
        "compressratio",
        "createtxg",
        "creation",
        "clones",
        "defer_destroy",
        "encryptionroot",
        "filesystem_count",
        "keystatus",
        "guid",
        "logicalreferenced",
        "logicalused",
        "mounted",
        "objsetid",
        "origin",
        "receive_resume_token",
        "redact_snaps",
        "referenced",
        "refcompressratio",
        "snapshot_count",
        "type",
        "used",
        "usedbychildren",
        "usedbydataset",
        "usedbyrefreservation",
        "usedbysnapshots",
        "userrefs",
        "snapshots_changed",
        "volblocksize",
        "written",
        "version",
        "volsize",
        "casesensitivity",
        "normalization",
        "utf8only",
        "encryption",
    ];
    let argv = ctx.zfs(
        Side::Source,
        &[
            "get",
            "-s",
            "local",
            "-H",
            "-p",
            "-o",
            "property,value",
            "all",
            fs,
        ],
    );
    let listing = ctx.host(Side::Source).run_ok(&argv)?;
    Ok(listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(k, _)| !READONLY.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn delete_target_snapshots(ctx: &Ctx, src_fs: &str, dst_fs: &str) -> Result<(), DsError> {
    let src = refresh(ctx, Side::Source, src_fs)?;
    let dst = refresh(ctx, Side::Target, dst_fs)?;
    let included = |n: &str| ctx.s.snap_included(n);
    let doomed = plan::target_only(
        &plan::filter_snaps(&src.snaps, &included),
        &plan::filter_snaps(&dst.snaps, &included),
    );
    for chunk in doomed.chunks(50) {
        ctx.out.info(&format!(
            "--delete-target-snapshots: destroying {dst_fs}@{}",
            chunk.join(",")
        ));
        if let Err(e) = ctx.zfs_run(
            Side::Target,
            &["destroy", &format!("{dst_fs}@{}", chunk.join(","))],
        ) {
            ctx.out
                .warn(&format!("destroying target snapshots failed: {e}"));
        }
    }
    Ok(())
}

impl Ctx<'_> {
    /// --rsync: our binary on both hosts (copied there when missing; to
    /// two hosts at once).
    fn exes(&self) -> Result<Exes, DsError> {
        if let Some(e) = self.exes.borrow().as_ref() {
            return Ok(e.clone());
        }
        let (sh, th) = (&self.s.source_host, &self.s.target_host);
        let installed = &self.installed;
        let (patience, out, quit) = (self.s.inactivity, &self.out, &AtomicBool::new(false));
        let provision = |h: &Host| {
            Retry::run(patience, quit, out, |retry| {
                coordinator::provision(h, installed.contains(&h.label()), retry)
            })
        };
        let (a, b) = if th.label() != sh.label() {
            let (b, a) = at_once(|| provision(th), || provision(sh));
            (a, Some(b))
        } else {
            (provision(sh), None)
        };
        let mut copied = Vec::new();
        let mut take = |host: &Host, r: Result<(String, Option<String>), String>| {
            let (exe, dir) = r?;
            if let Some(d) = dir {
                self.out
                    .debug(&format!("copied syncoid-rsync to {}:{d}", host.label()));
                copied.push((host.clone(), d));
            }
            Ok::<_, String>(exe)
        };
        let source = take(sh, a);
        let target = match b {
            Some(b) => take(th, b),
            None => source.clone(),
        };
        let (source, target) = match (source, target) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), _) | (_, Err(e)) => {
                // Nothing is left behind by a half-done provisioning.
                for (host, dir) in &copied {
                    coordinator::unprovision(host, dir);
                }
                return Err(DsError::Other(e));
            }
        };
        let e = Exes {
            source,
            target,
            copied,
        };
        *self.exes.borrow_mut() = Some(e.clone());
        Ok(e)
    }

    /// --rsync: removes the copies of the binary and forgets them, at the
    /// end of the run or after an agent is gone (its host may have
    /// restarted and lost its /tmp: the next transfer copies afresh). No
    /// agent runs from them by then. False when there was nothing to forget.
    fn forget_exes(&self) -> bool {
        let Some(exes) = self.exes.borrow_mut().take() else {
            return false;
        };
        for (host, dir) in &exes.copied {
            coordinator::unprovision(host, dir);
        }
        true
    }

    fn transfer_key(&self, src_fs: &str, dst_fs: &str) -> String {
        coordinator::key(
            &format!("{}:{src_fs}", self.s.source_host.label()),
            &format!("{}:{dst_fs}", self.s.target_host.label()),
        )
    }

    /// The sender and receiver agents living in these session dirs.
    fn agents(&self, exes: &Exes, sdir: String, rdir: String) -> (Agent, Agent) {
        let sender = Agent {
            host: self.s.source_host.clone(),
            exe: exes.source.clone(),
            dir: sdir,
        };
        let receiver = Agent {
            host: self.s.target_host.clone(),
            exe: exes.target.clone(),
            dir: rdir,
        };
        (sender, receiver)
    }

    fn agent_opts(&self, bwlimit: u64) -> AgentOpts {
        AgentOpts {
            timeout: self.s.inactivity,
            chunk_size: self.s.chunk_size,
            spool_size: self.s.spool_size,
            compress_level: self.s.rsync_level,
            bwlimit,
        }
    }
}

/// Moves one stream through agents on both hosts.
fn rsync_transfer(
    ctx: &Ctx,
    src_fs: &str,
    dst_fs: &str,
    send_argv: &[String],
    recv_argv: &[String],
    estimate: u64,
) -> Result<(), DsError> {
    let exes = ctx.exes()?;
    let key = ctx.transfer_key(src_fs, dst_fs);
    let (sh, th) = (&ctx.s.source_host, &ctx.s.target_host);
    let ropts = ctx.agent_opts(ctx.s.target_rate);
    let sopts = ctx.agent_opts(ctx.s.source_rate);
    // Both start at once; if one fails, the other is stopped.
    let receiver = coordinator::Start {
        host: th,
        exe: &exes.target,
        role: "receive",
        key: &key,
        opts: &ropts,
        zfs_argv: recv_argv,
    };
    let sender = coordinator::Start {
        host: sh,
        exe: &exes.source,
        role: "send",
        opts: &sopts,
        zfs_argv: send_argv,
        ..receiver
    };
    let (patience, out, quit) = (ctx.s.inactivity, &ctx.out, &AtomicBool::new(false));
    let start = |a: &coordinator::Start| {
        Retry::run(patience, quit, out, |retry| {
            coordinator::start_or_find(a, retry)
        })
    };
    let (rdir, sdir) = at_once(|| start(&receiver), || start(&sender));
    let ((rdir, r_conn), (sdir, s_conn)) = match (rdir, sdir) {
        (Ok(r), Ok(s)) => (r, s),
        (r, s) => {
            if let Ok((d, _)) = &r {
                let _ = coordinator::stop_agent(th, &exes.target, d);
            }
            if let Ok((d, _)) = &s {
                let _ = coordinator::stop_agent(sh, &exes.source, d);
            }
            let why = [r.err(), s.err()].into_iter().flatten().collect::<Vec<_>>();
            return Err(DsError::Other(why.join("\n")));
        }
    };
    ctx.out.debug(&format!(
        "agents: sender {}:{sdir}, receiver {}:{rdir}",
        sh.label(),
        th.label()
    ));
    let (sender, receiver) = ctx.agents(&exes, sdir, rdir);
    let first = (s_conn, r_conn);
    finish_transfer(ctx, (&sender, &receiver), first, src_fs, dst_fs, estimate)
}

/// Runs the transfer between two live agents; `first`: connections to
/// them opened when they were started.
fn finish_transfer(
    ctx: &Ctx,
    (sender, receiver): (&Agent, &Agent),
    first: (Option<Opened>, Option<Opened>),
    src_fs: &str,
    dst_fs: &str,
    estimate: u64,
) -> Result<(), DsError> {
    // Receiver first: it closes zfs receive -s, keeping what it verified.
    // Err: one was driven by another machine's run, and left to it.
    let stop_both = || {
        let r = coordinator::stop_agent(&receiver.host, &receiver.exe, &receiver.dir);
        let s = coordinator::stop_agent(&sender.host, &sender.exe, &sender.dir);
        r.and(s)
    };
    let mut hosts = vec![sender.host.label(), receiver.host.label()];
    hosts.dedup();
    interrupt::doing(Some(interrupt::Doing::Agents {
        source: format!("{}:{src_fs}", ctx.s.source_host.label()),
        target: format!("{}:{dst_fs}", ctx.s.target_host.label()),
        hosts,
        timeout: ctx.s.args.inactivity_timeout.clone(),
    }));
    ctx.progress.start_stream(src_fs, dst_fs, estimate);
    let result = coordinator::run(
        sender,
        receiver,
        first,
        ctx.s.inactivity,
        &ctx.out,
        &ctx.progress,
    );
    interrupt::doing(None);
    ctx.progress
        .end_stream(matches!(&result, Ok(o) if o.status == 0));
    let outcome = match result {
        Ok(o) => o,
        Err(coordinator::RunError::Inactive(e)) => return Err(DsError::Other(e)),
        Err(coordinator::RunError::Gone(e)) => {
            // The survivor is stopped (a receiver closes zfs receive -s,
            // keeping what it verified), unless another run took it over.
            stop_both().map_err(DsError::Busy)?;
            return Err(DsError::AgentGone(e));
        }
        Err(coordinator::RunError::Busy(why)) => return Err(DsError::Busy(why)),
        Err(coordinator::RunError::Fatal(e)) => {
            // Nothing more can come from these agents: stop both. The
            // receiver closes zfs receive -s, whose resume token keeps
            // every verified byte for the next run.
            let _ = stop_both();
            return Err(DsError::Other(format!(
                "{e}\n  the target keeps what was received (resume token): run the same command again to continue"
            )));
        }
    };
    // Both agents were told the transfer is over. One that did not close
    // its connection (it does once its session dir is gone) may have
    // missed the goodbye: stop it, rather than let it linger until its
    // timeout.
    if !outcome.agents_gone {
        ctx.out
            .debug("an agent did not confirm its exit; stopping both");
        let _ = stop_both();
    }
    let st = &outcome.stats;
    ctx.bytes.set(ctx.bytes.get() + st.acked_bytes);
    ctx.reconnects.set(ctx.reconnects.get() + st.reconnects);
    ctx.resent.set(ctx.resent.get() + st.resent_bytes);
    ctx.out.info(&format!(
        "--rsync: {} received and verified ({} on the wire), {} reconnects, {} chunks ({}) sent again",
        readable(st.acked_bytes),
        readable(st.wire_bytes),
        st.reconnects,
        st.resent_chunks,
        readable(st.resent_bytes)
    ));
    if outcome.status != 0 {
        return Err(DsError::Other(format!(
            "zfs receive on {} failed (exit status {}):\n    {}",
            receiver.host.label(),
            outcome.status,
            outcome.stderr.trim_end().replace('\n', "\n    ")
        )));
    }
    Ok(())
}

/// --rsync: finishes a transfer whose coordinator was interrupted, if both
/// its agents are still alive; stops a lone survivor (the target's resume
/// token then carries the transfer on). True when a transfer was finished.
fn reattach(ctx: &Ctx, src_fs: &str, dst_fs: &str) -> Result<bool, DsError> {
    let key = ctx.transfer_key(src_fs, dst_fs);
    let (sh, th) = (&ctx.s.source_host, &ctx.s.target_host);
    // Each is handled once: taken out of the run's list.
    let take = |list: &mut AgentList, role: &str| {
        let i = list.iter().position(|a| a.role == role && a.key == key)?;
        Some(list.remove(i))
    };
    let (sdir, rdir) = {
        let mut live = ctx.live.borrow_mut();
        (
            take(&mut live.source, "send"),
            take(&mut live.target, "receive"),
        )
    };
    if sdir.is_none() && rdir.is_none() {
        return Ok(false);
    }
    // Only now is our binary needed on the hosts.
    let exes = ctx.exes()?;
    // Agents of another version (the package was upgraded while they
    // ran) cannot understand us, nor we them: they are stopped as if by
    // hand (ended by their pid), and the transfer goes on from the
    // target's resume token, as after an agent gone for good.
    let other = [&sdir, &rdir]
        .into_iter()
        .flatten()
        .find(|a| a.wire != syncoid_rsync_core::wire::VERSION);
    if let Some(a) = other {
        let what = if a.wire == 0 {
            "an older syncoid-rsync".to_string()
        } else {
            format!("wire protocol version {}", a.wire)
        };
        ctx.out.warn(&format!(
            "--rsync: the agents of an interrupted transfer of {src_fs} run {what}, which this one ({}) cannot talk to; stopping them",
            env!("CARGO_PKG_VERSION")
        ));
        if let Some(r) = &rdir {
            coordinator::stop_agent_by_hand(th, &exes.target, &r.dir);
        }
        if let Some(s) = &sdir {
            coordinator::stop_agent_by_hand(sh, &exes.source, &s.dir);
        }
        return Err(DsError::AgentGone(format!(
            "the agents of an interrupted transfer of {src_fs} ran {what}"
        )));
    }
    let (sdir, rdir) = (sdir.map(|a| a.dir), rdir.map(|a| a.dir));
    match (sdir, rdir) {
        (Some(sdir), Some(rdir)) => {
            ctx.out.info(&format!(
                "--rsync: re-attaching to the live agents of an interrupted transfer of {src_fs}"
            ));
            let (sender, receiver) = ctx.agents(&exes, sdir, rdir);
            finish_transfer(ctx, (&sender, &receiver), (None, None), src_fs, dst_fs, 0)?;
            Ok(true)
        }
        (Some(d), None) => {
            // Unless another machine's run drives it: then its receiver is
            // only out of our sight, not gone.
            coordinator::stop_agent(sh, &exes.source, &d).map_err(DsError::Busy)?;
            ctx.out.warn(&format!("--rsync: the receiving agent of an earlier transfer is gone; stopping its sender ({d})"));
            Ok(false)
        }
        (None, Some(d)) => {
            coordinator::stop_agent(th, &exes.target, &d).map_err(DsError::Busy)?;
            ctx.out.warn(&format!("--rsync: the sending agent of an earlier transfer is gone; stopping its receiver ({d})"));
            Ok(false)
        }
        (None, None) => Ok(false),
    }
}
