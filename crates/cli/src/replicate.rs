//! Replication of one run: pre-flight, one listing per side, then per
//! dataset: plan (pure) and either print it (--dry-run) or execute it.
//! A failure in one dataset is reported and the others go on; the summary
//! decides the exit status.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::config::Settings;
use crate::gather;
use crate::host::{CmdError, Host};
use crate::interrupt;
use crate::output::{exit, readable, Out, Summary};
use crate::progress::{Face, Progress};
use crate::rsync::coordinator;
use crate::transfer::{self, Hosts};
use syncoid_rsync_core::argv::{self, PipeOpts, Receive, SendWhat, Tools};
use syncoid_rsync_core::inventory::{Inventory, Snap};
use syncoid_rsync_core::plan::{self, Conflict, Input, Plan, Rollback, Side, Step, TargetState};
use syncoid_rsync_core::shell;

mod error;
mod jobs;
mod later;
mod steps;
mod sync_snap;
use crate::rsync::dataset::reattach;
pub(crate) use error::DsError;
use steps::{delete_target_snapshots, run_step};
use sync_snap::{fresh_sync_name, skipped, snapshot_together};

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

/// What every dataset of a run shares: safe to share between the
/// threads of `--jobs`.
pub(crate) struct Run<'a> {
    pub(crate) s: &'a Settings,
    pub(crate) out: Out,
    pub(crate) progress: Progress,
    /// --rsync: the agents' binary on each host (by label).
    pub(crate) binaries: std::collections::BTreeMap<String, crate::preflight::Binary>,
    pub(crate) tools: Tools,
    pub(crate) busy: Vec<String>,
    /// --rsync: the syncoid-rsync binary on (source, target), found or
    /// copied once per run; checked again after an agent was gone (its
    /// host may have restarted and lost its /tmp).
    pub(crate) exes: Mutex<Option<Exes>>,
    /// --rsync: an agent was gone since: check the binary is still there.
    pub(crate) exes_check: std::sync::atomic::AtomicBool,
    /// --rsync: the directories we copied the binary into, removed at the
    /// end of the run (not before: other datasets' agents may run from them).
    pub(crate) copied: Mutex<Vec<(Host, String)>>,
    /// --rsync: the agents alive on (source, target) at pre-flight: those
    /// of interrupted runs (listed once per run, not per dataset).
    pub(crate) live: Mutex<LiveAgents>,
    /// Datasets in flight at once: `--jobs`, or fewer when the plan has
    /// fewer. Each stream gets this share of a bandwidth limit, so that
    /// all of them together keep to it.
    pub(crate) at_once: usize,
    /// `--atomic-sync-snap`: the sync snapshot taken for all these
    /// datasets at once, before the first send.
    pub(crate) together: Option<(String, BTreeSet<String>)>,
    /// A tree's run: prunes wait for its end (`later`), to be made in one
    /// call per host. None: each dataset prunes after its transfer.
    pub(crate) later: Option<Mutex<Vec<later::Prune>>>,
    /// --rsync: the run's binaries are known (a transfer needs agents):
    /// threads waiting for a dataset start their host agents meanwhile
    /// (`warm_up`).
    pub(crate) warm: std::sync::atomic::AtomicBool,
}

/// One dataset's view of the run, with its own counters.
pub(crate) struct Ctx<'a> {
    run: &'a Run<'a>,
    /// Bytes received and reconnects for this dataset.
    pub(crate) bytes: std::cell::Cell<u64>,
    pub(crate) reconnects: std::cell::Cell<u64>,
    /// --rsync: payload bytes sent again after outages.
    pub(crate) resent: std::cell::Cell<u64>,
}

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = Run<'a>;
    fn deref(&self) -> &Run<'a> {
        self.run
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(run: &'a Run<'a>) -> Ctx<'a> {
        Ctx {
            run,
            bytes: Default::default(),
            reconnects: Default::default(),
            resent: Default::default(),
        }
    }
}

/// The live agents on a host.
pub(crate) type AgentList = Vec<crate::preflight::LiveAgent>;

pub(crate) struct LiveAgents {
    pub(crate) source: AgentList,
    pub(crate) target: AgentList,
}

#[derive(Clone)]
pub(crate) struct Exes {
    pub(crate) source: String,
    pub(crate) target: String,
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
    /// Standard mode puts our own meter where syncoid puts pv when
    /// progress is shown on a terminal or as JSON events (exact, never past
    /// 100%); only then does it count a stream's bytes.
    fn metered(&self) -> bool {
        matches!(self.progress.face(), Face::Bar | Face::Json)
    }
    /// Standard mode: mbuffer's rate for one stream, the user's text as
    /// it is with one dataset at a time, else its share in bytes per second
    /// (the datasets in flight at once keep to the limit together).
    fn rate_share(&self, limit: &Option<String>) -> Option<String> {
        let limit = limit.as_ref()?;
        if self.at_once == 1 {
            return Some(limit.clone());
        }
        let rate = syncoid_rsync_core::units::parse_size(limit)?;
        Some((rate / self.at_once as u64).max(1024).to_string())
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
        binaries,
        leftovers,
        agents,
        listed: [src_out, dst_out],
    } = crate::preflight::run(s, &out, (&src_list.script(), &dst_list.script()))?;
    for (host, dir) in &leftovers {
        out.debug(&format!(
            "removing {}:{dir}, a copy of syncoid-rsync an earlier run could not remove",
            host.label()
        ));
        if !s.args.dry_run {
            coordinator::unprovision(host, dir);
        }
    }
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
    let list = datasets(s, &src_inv);
    let pairs: Vec<jobs::Item> = list
        .into_iter()
        .map(|(src_fs, origin)| {
            let dst_fs = format!("{dst_root}{}", &src_fs[src_root.len()..]);
            jobs::Item {
                src_fs,
                origin,
                dst_fs,
            }
        })
        .collect();
    let mut run = Run {
        s,
        out,
        progress: Progress::new(face)
            .with_streams(s.streams)
            .with_jobs(s.jobs),
        tools,
        binaries,
        busy,
        exes: Mutex::new(None),
        exes_check: Default::default(),
        copied: Mutex::new(Vec::new()),
        live: Mutex::new(live),
        at_once: s.jobs.clamp(1, pairs.len().max(1)),
        together: None,
        later: (pairs.len() > 1 && !s.args.dry_run).then(|| Mutex::new(Vec::new())),
        warm: Default::default(),
    };
    if s.args.dry_run {
        out.plain("DRY RUN: these are the commands a real run would execute; nothing is changed.");
    }
    if pairs.is_empty() {
        out.critical("no datasets found");
    }
    run.progress.json(
        "plan",
        serde_json::json!({
            "mode": if s.args.rsync { "rsync" } else { "standard" },
            "source": s.source.to_string(), "target": s.target.to_string(),
            "dry_run": s.args.dry_run, "jobs": s.jobs,
            "datasets": pairs.iter().map(|i| serde_json::json!({"source": i.src_fs, "target": i.dst_fs})).collect::<Vec<_>>(),
        }),
    );
    let empty = pairs.is_empty();
    if s.args.atomic_sync_snap {
        run.together = snapshot_together(&run, &pairs, &src_inv)?;
    }
    let inventories = (&src_inv, dst_inv.as_ref());
    // SYNCOID_RSYNC_HOST_AGENT=0 turns them off (a comparison, or a host
    // where they misbehave).
    let host_agents = std::env::var_os("SYNCOID_RSYNC_HOST_AGENT").is_none_or(|v| v != "0");
    if s.args.rsync && pairs.len() > 1 && !s.args.dry_run && host_agents {
        // A tree: each thread starts its transfers through one agent per
        // remote host instead of an ssh session each.
        crate::rsync::coordinator::hosted::enable(&s.timing);
    }
    let done = jobs::run_all(&run, &pairs, inventories);
    crate::rsync::coordinator::hosted::close_all();
    if let Some(later) = &run.later {
        let prunes = std::mem::take(&mut *crate::lock(later));
        later::prune_all(&Ctx::new(&run), prunes);
    }
    if run.remove_copies() {
        out.debug("copied binaries removed");
    }
    let mut summary = Summary::default();
    if empty {
        summary.failed += 1;
    }
    for d in done? {
        match d.outcome {
            "replicated" => summary.replicated += 1,
            "up_to_date" => summary.up_to_date += 1,
            "skipped" => summary.skipped += 1,
            "busy" => summary.busy += 1,
            "link_lost" => {
                summary.failed += 1;
                summary.link_lost += 1;
            }
            _ => summary.failed += 1,
        }
        summary.bytes += d.bytes.unwrap_or(0);
        summary.reconnects += d.reconnects;
        summary.datasets.push(d);
    }
    let secs = started.elapsed().as_secs_f64();
    summary.seconds = secs;
    run.progress.json(
        "summary",
        serde_json::json!({
            "replicated": summary.replicated, "up_to_date": summary.up_to_date,
            "skipped": summary.skipped, "busy": summary.busy, "failed": summary.failed,
            "link_lost": summary.link_lost,
            "bytes": summary.bytes, "reconnects": summary.reconnects,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "mean_rate_bps": if secs > 0.0 { (summary.bytes as f64 / secs).round() } else { 0.0 },
            "exit_code": summary.exit_code(),
        }),
    );
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

fn sync_dataset(
    ctx: &Ctx,
    src_fs: &str,
    dst_fs: &str,
    origin: Option<String>,
    mut src: View,
    mut dst: View,
) -> Result<Outcome, DsError> {
    let out = &ctx.out;
    if let Some(why) = skipped(ctx.s, src_fs, &src) {
        out.info(&why);
        return Ok(Outcome::Skipped);
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
        let input = plan_input(ctx, (src_fs, &src), &dst, dst_fs, origin.clone());
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
        if ctx.s.args.rsync && !ctx.dry() && matches!(plan, Plan::Steps(_)) {
            // The agents' binary on both hosts, copied and run with
            // --version where needed, before a step changes anything (the
            // sync snapshot first); once per run.
            ctx.exes()?;
        }
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

fn plan_input(
    ctx: &Ctx,
    (src_fs, src): (&str, &View),
    dst: &View,
    dst_fs: &str,
    origin: Option<String>,
) -> Input {
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
            .then(|| fresh_sync_name(ctx, src_fs, src))
            .filter(|n| s.snap_included(n)),
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
