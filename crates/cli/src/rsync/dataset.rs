//! `--rsync` for one dataset: our binary on both hosts, the two agents
//! started (or found alive after an interrupted run and re-attached to),
//! the transfer driven to its end, and what remains of an agent that is
//! gone. The protocol itself is `rsync::coordinator`'s.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::host::{at_once, Host};
use crate::interrupt;
use crate::lock;
use crate::output::readable;
use crate::preflight::Binary;
use crate::replicate::{AgentList, Ctx, DsError, Exes, Run};
use crate::rsync::coordinator::{self, Agent, AgentOpts, Opened, Retry};
use crate::rsync::coordinator::{Ended, SetupFailed};
use syncoid_rsync_core::wire::Role;

impl Run<'_> {
    /// --rsync: our binary on both hosts (copied there when missing; to
    /// two hosts at once).
    pub(crate) fn exes(&self) -> Result<Exes, DsError> {
        // Held while provisioning: the datasets of `--jobs` wait for one
        // copy rather than each make their own.
        let mut cached = lock(&self.exes);
        if let Some(e) = cached.as_ref() {
            let check = self.exes_check.swap(false, Ordering::Relaxed);
            if !check || self.exes_still_there(e) {
                return Ok(e.clone());
            }
            *cached = None;
        }
        let (sh, th) = (&self.s.source_host, &self.s.target_host);
        let binaries = &self.binaries;
        let (patience, out, quit) = (self.s.inactivity, &self.out, &AtomicBool::new(false));
        let provision = |h: &Host| {
            // Pre-flight decided for every host it probed.
            let binary = binaries
                .get(&h.label())
                .cloned()
                .unwrap_or(if h.is_remote() {
                    Binary::CopyInto("/tmp".into())
                } else {
                    Binary::Own
                });
            Retry::run(patience, quit, out, |retry| {
                coordinator::provision(h, &binary, retry)
            })
        };
        let (a, b) = if th.label() != sh.label() {
            let (b, a) = at_once(|| provision(th), || provision(sh));
            (a, Some(b))
        } else {
            (provision(sh), None)
        };
        let mut copied = Vec::new();
        let mut take = |host: &Host, r: Result<(String, Option<String>), SetupFailed>| {
            let (exe, dir) = r?;
            if let Some(d) = dir {
                self.out
                    .debug(&format!("copied syncoid-rsync to {}:{d}", host.label()));
                copied.push((host.clone(), d));
            }
            Ok::<_, SetupFailed>(exe)
        };
        let source = take(sh, a);
        let target = match b {
            Some(b) => take(th, b),
            None => source.clone(),
        };
        let (source, target) = match (source, target) {
            (Ok(s), Ok(t)) => (s, t),
            (s, t) => {
                // Nothing is left behind by a half-done provisioning.
                for (host, dir) in &copied {
                    coordinator::unprovision(host, dir);
                }
                return Err(setup_failed(&[s.err().as_ref(), t.err().as_ref()]));
            }
        };
        lock(&self.copied).extend(copied);
        let e = Exes { source, target };
        *cached = Some(e.clone());
        self.warm.store(true, Ordering::Relaxed);
        Ok(e)
    }

    /// A thread with nothing to do yet, in a run whose transfers need
    /// agents: it starts its host agents now (and its ssh masters with
    /// them), while the datasets it waits for are sent, so that its first
    /// transfer does not begin with them. Nothing if host agents are off.
    pub(crate) fn warm_up(&self) {
        let Some(e) = lock(&self.exes).clone() else {
            return;
        };
        let (sh, th) = (&self.s.source_host, &self.s.target_host);
        for (h, exe) in [(sh, &e.source), (th, &e.target)] {
            if h.is_remote() && coordinator::hosted::get(h, exe).is_some() {
                self.out.debug(&format!(
                    "a waiting thread's host agent on {} is up",
                    h.label()
                ));
            }
        }
    }

    /// --rsync: after an agent is gone (its host may have restarted and
    /// lost its /tmp), the next transfer checks that the binary is still
    /// where it was, and copies it afresh only if it is not. Copies stay
    /// until the end of the run: other datasets' agents may run from them.
    pub(crate) fn forget_exes(&self) {
        self.exes_check.store(true, Ordering::Relaxed);
    }

    /// Whether both hosts still have the binary (a host that cannot be
    /// asked is taken to have it: starting the agent then fails and is
    /// tried again, as any call over a failing link).
    fn exes_still_there(&self, e: &Exes) -> bool {
        let (sh, th) = (&self.s.source_host, &self.s.target_host);
        [(sh, &e.source), (th, &e.target)].iter().all(|(h, exe)| {
            let gone = h
                .run(&["test".into(), "-x".into(), exe.to_string()])
                .is_ok_and(|o| o.status.code() == Some(1));
            if gone {
                self.out.debug(&format!(
                    "{exe} is gone from {}: copying it again",
                    h.label()
                ));
            }
            !gone
        })
    }

    /// --rsync: removes the copies of the binary made in this run, at its
    /// end (no agent of ours runs from them then). False when none was made.
    pub(crate) fn remove_copies(&self) -> bool {
        let copied = std::mem::take(&mut *lock(&self.copied));
        for (host, dir) in &copied {
            coordinator::unprovision(host, dir);
        }
        !copied.is_empty()
    }

    pub(crate) fn transfer_key(&self, src_fs: &str, dst_fs: &str) -> String {
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
            timing: self.s.timing,
            chunk_size: self.s.chunk_size,
            spool_size: self.s.spool_size,
            compress_level: self.s.rsync_level,
            // The datasets in flight at once share the limit.
            bwlimit: bwlimit / self.at_once as u64,
            // Several connections deliver chunks out of order: the
            // receiver holds up to a spool's worth of early ones.
            window: if self.s.streams > 1 {
                self.s.spool_size
            } else {
                0
            },
        }
    }
}

/// Setting up a transfer failed on one side or both: a lost link when
/// that alone stopped it.
fn setup_failed(failures: &[Option<&SetupFailed>]) -> DsError {
    let failures: Vec<&SetupFailed> = failures.iter().flatten().copied().collect();
    let why = failures
        .iter()
        .map(|f| f.why.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    if failures.iter().any(|f| f.ended == Some(Ended::CannotRun)) {
        DsError::CannotRun(why)
    } else if SetupFailed::link_lost(&failures) {
        DsError::LinkLost(why)
    } else {
        DsError::Other(why)
    }
}

/// Moves one stream through agents on both hosts.
pub(crate) fn rsync_transfer(
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
        role: Role::Receiver,
        key: &key,
        opts: &ropts,
        zfs_argv: recv_argv,
    };
    let sender = coordinator::Start {
        host: sh,
        exe: &exes.source,
        role: Role::Sender,
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
            return Err(setup_failed(&[r.err().as_ref(), s.err().as_ref()]));
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
        ctx.s.timing,
        ctx.s.streams,
        &ctx.out,
        &ctx.progress,
    );
    interrupt::doing(None);
    ctx.progress
        .end_stream(matches!(&result, Ok(o) if o.status == 0));
    let outcome = match result {
        Ok(o) => o,
        Err(coordinator::RunError::Inactive(e)) => return Err(DsError::LinkLost(e)),
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
    if !st.lane_bytes.is_empty() {
        let each: Vec<String> = st.lane_bytes.iter().map(|b| readable(*b)).collect();
        let lost = match st.lanes_lost {
            0 => String::new(),
            1 => "; one was lost alone and made again while the others carried on".into(),
            n => {
                format!("; {n} times one was lost alone and made again while the others carried on")
            }
        };
        ctx.out.info(&format!(
            "--rsync: over {} connections, each carried {}{lost}",
            st.lane_bytes.len(),
            each.join(", ")
        ));
    }
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
pub(crate) fn reattach(ctx: &Ctx, src_fs: &str, dst_fs: &str) -> Result<bool, DsError> {
    let key = ctx.transfer_key(src_fs, dst_fs);
    let (sh, th) = (&ctx.s.source_host, &ctx.s.target_host);
    // Each is handled once: taken out of the run's list.
    let take = |list: &mut AgentList, role: Role| {
        let i = list.iter().position(|a| a.serves(role, &key))?;
        Some(list.remove(i))
    };
    let (sdir, rdir) = {
        let mut live = lock(&ctx.live);
        (
            take(&mut live.source, Role::Sender),
            take(&mut live.target, Role::Receiver),
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
        .find(|a| a.marker.wire != syncoid_rsync_core::wire::VERSION);
    if let Some(a) = other {
        let what = if a.marker.wire == 0 {
            "an older syncoid-rsync".to_string()
        } else {
            format!("wire protocol version {}", a.marker.wire)
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
