//! The coordinator's side of an `--rsync` transfer: connects to both
//! agents (a unix socket locally, `ssh HOST syncoid-rsync agent bridge DIR`
//! remotely, which hands the session's pipes to the agent), moves chunks
//! from sender to receiver and acknowledgements back, sends heartbeats, and
//! when a connection dies or stalls opens a new one and resumes from the
//! receiver's position. It gives up only after the inactivity timeout
//! passes without progress.

mod conn;
mod setup;

use conn::*;
pub use conn::{Agent, Opened};
pub use setup::*;

use std::time::{Duration, Instant};

use crate::output::Out;
use crate::progress::{Face, Progress};
use syncoid_rsync_core::session::coordinator::{
    greeting, Act, Greeting, Next as After, Relay, Side, Stats, Timing, Transfer,
};
use syncoid_rsync_core::wire::{self, Msg, Role};

pub struct Outcome {
    pub status: i32,
    pub stderr: String,
    pub stats: Stats,
    /// Both agents closed their connections after the goodbye: they hold
    /// them until their session dirs are removed, so they are gone.
    pub agents_gone: bool,
}

/// How long agents get to clean up and close after the goodbye.
const BYE_WAIT: Duration = Duration::from_secs(3);

/// Waits until the agent closes the connection (its reader ends), for at
/// most `wait`.
fn closed(c: &Conn, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match c.rx.recv_deadline(deadline) {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return true,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => return false,
        }
    }
}

enum Step {
    Finished(Box<Outcome>),
    /// The link failed; try again.
    Retry(String),
    Fatal(String),
    /// An agent is gone for good (its host says so): nothing to reconnect to.
    Gone(String),
    /// An agent refused us: another coordinator drives it (`ownership`).
    /// `both`: the other agent refused us too.
    Busy {
        why: String,
        both: bool,
    },
}

/// Greets an agent on connection `lane` and reads its answer
/// (`session::coordinator::greeting`: what it means) within the setup wait.
fn hello(c: &Conn, role: Role, lane: u16, wait: Duration) -> Greeting {
    if !say_hello(c, role, lane) {
        return Greeting::Failed(CLOSED.into());
    }
    answer(c, wait)
}

/// Sends the Hello of connection `lane`; false when the connection is closed.
fn say_hello(c: &Conn, role: Role, lane: u16) -> bool {
    let hello = Msg::Hello {
        version: wire::VERSION,
        role,
        owner: super::lock::owner().clone(),
        lane,
    };
    c.tx.send(wire::encode(&hello)).is_ok()
}

/// The agent's answer to a Hello, within `wait`.
fn answer(c: &Conn, wait: Duration) -> Greeting {
    match c.rx.recv_timeout(wait) {
        Ok(Ok(In::Msg(m))) => greeting(Some(m)),
        Ok(Ok(In::Chunk { .. })) => Greeting::Failed("unexpected chunk before the welcome".into()),
        Ok(Err(e)) => Greeting::Failed(e),
        Err(_) => greeting(None),
    }
}

/// Why a transfer did not finish.
pub enum RunError {
    /// An agent reported an error it cannot recover from.
    Fatal(String),
    /// No progress for the inactivity timeout: the agents keep their state.
    Inactive(String),
    /// An agent is gone for good (it died, or its host restarted): the
    /// other can only be stopped, and the target's resume token used.
    Gone(String),
    /// Another coordinator (another machine's run of the same transfer)
    /// drives the agents: before this run ever drove them, or after it
    /// lost both to it. The agents are left alone.
    Busy(String),
}

/// Runs a transfer between two started agents to its end.
/// `first`: connections to the (sender, receiver) opened when they were
/// started (`start_agent`), used by the first attempt.
pub fn run(
    sender: &Agent,
    receiver: &Agent,
    first: (Option<Opened>, Option<Opened>),
    timing: Timing,
    lanes: usize,
    out: &Out,
    progress: &Progress,
) -> Result<Outcome, RunError> {
    let epoch = Instant::now();
    let now = || epoch.elapsed();
    let mut t = Transfer::new(timing, now());
    let mut first = Some(first);
    loop {
        let opened = first.take();
        t.round();
        let (s_opened, r_opened) = opened.unwrap_or((None, None));
        // The first connection rides on the host's ssh master (just used,
        // so no new handshake); a reconnection makes its own, so it never
        // waits behind a master stuck in the outage.
        let via = if t.stats.reconnects == 0 {
            Via::Master
        } else {
            Via::Own
        };
        let step = attempt(
            (sender, s_opened),
            (receiver, r_opened),
            (via, lanes),
            &mut t,
            &now,
            out,
            progress,
        );
        let (why, after) = match step {
            Step::Finished(o) => return Ok(*o),
            Step::Fatal(e) => return Err(RunError::Fatal(e)),
            Step::Gone(e) => return Err(RunError::Gone(e)),
            Step::Busy { why, both } => match t.refused(&why, both, now()) {
                None => return Err(RunError::Busy(why)),
                Some(after) => (why, after),
            },
            Step::Retry(why) => {
                let after = t.failed(&why, now());
                (why, after)
            }
        };
        match after {
            After::GiveUp(e) => return Err(RunError::Inactive(e)),
            After::Reconnect(wait) => {
                progress.link_lost(&why);
                // The bar shows the outage in place; elsewhere it is a line.
                if progress.face() != Face::Bar {
                    out.warn(&format!(
                        "link to the agents lost ({why}); reconnecting in {:.1}s",
                        wait.as_secs_f64()
                    ));
                }
                std::thread::sleep(wait);
            }
        }
    }
}

fn attempt(
    (sender, s_opened): (&Agent, Option<Opened>),
    (receiver, r_opened): (&Agent, Option<Opened>),
    (via, lanes): (Via, usize),
    t: &mut Transfer,
    now: &dyn Fn() -> Duration,
    out: &Out,
    progress: &Progress,
) -> Step {
    // Both connections are opened before either is greeted, so two ssh
    // handshakes overlap.
    let reach = |a: &Agent, opened: Option<Opened>| match opened {
        Some(o) => Ok(o),
        None => open(a, via),
    };
    let (s, r) = (reach(sender, s_opened), reach(receiver, r_opened));
    // The receiver's connection first: the sender's relays chunks into it.
    let stall = t.timing.stall;
    let r = r.map(|o| conn(o, QUEUE, None, stall));
    let s = s.map(|o| conn(o, QUEUE, r.as_ref().ok(), stall));
    let wait = t.timing.setup;
    // A failed greeting is an outage, unless the agent is gone for good.
    let greeted = |c: Result<Conn, String>, role: Role, who: &str, a: &Agent| {
        let failed = |e: String, gone: bool| {
            if gone {
                Step::Gone(format!(
                    "the {who} agent on {} is gone: nothing answers at {}",
                    a.host.label(),
                    a.dir
                ))
            } else {
                Step::Retry(format!("{who}: {e}"))
            }
        };
        match c {
            Err(e) => Err(failed(e, local_agent_gone(a))),
            Ok(mut c) => match hello(&c, role, 0, wait) {
                Greeting::Busy { label, heard_ms } => Err(Step::Busy {
                    why: format!(
                        "the {who} agent on {} is driven by {label} (heard {:.1}s ago)",
                        a.host.label(),
                        heard_ms as f64 / 1000.0
                    ),
                    both: false,
                }),
                Greeting::Welcome { next_seq, offset } => Ok((c, next_seq, offset)),
                Greeting::Failed(e) => {
                    let gone = e == CLOSED && bridge_says_gone(&mut c);
                    Err(failed(e, gone))
                }
            },
        }
    };
    let s = match greeted(s, Role::Sender, "sender", sender) {
        Ok((c, ..)) => c,
        Err(Step::Busy { why, .. }) => {
            let both = t.ask_the_other_after_busy()
                && matches!(
                    greeted(r, Role::Receiver, "receiver", receiver),
                    Err(Step::Busy { .. })
                );
            return Step::Busy { why, both };
        }
        Err(step) => return step,
    };
    let (r, next, offset) = match greeted(r, Role::Receiver, "receiver", receiver) {
        Ok(welcomed) => welcomed,
        Err(step) => return step,
    };
    // The other lanes, once lane 0 settled who drives the agents and that
    // they are there: all opened, then all greeted, so their handshakes
    // overlap. Any failure fails the round.
    let (mut ss, mut rs) = (vec![s], vec![r]);
    let mut more = Vec::new();
    for lane in 1..lanes {
        let r = open(receiver, via).map(|o| conn(o, QUEUE, None, stall));
        let r = match r {
            Ok(r) => r,
            Err(e) => return Step::Retry(format!("receiver connection {lane}: {e}")),
        };
        let s = open(sender, via).map(|o| conn(o, QUEUE, Some(&r), stall));
        let s = match s {
            Ok(s) => s,
            Err(e) => return Step::Retry(format!("sender connection {lane}: {e}")),
        };
        let lane = lane as u16;
        if !say_hello(&s, Role::Sender, lane) || !say_hello(&r, Role::Receiver, lane) {
            return Step::Retry(format!("connection {lane}: {CLOSED}"));
        }
        more.push((s, r, lane));
    }
    for (s, r, lane) in more {
        for (c, who) in [(&s, "sender"), (&r, "receiver")] {
            match answer(c, wait) {
                Greeting::Welcome { .. } => {}
                Greeting::Busy { label, .. } => {
                    return Step::Retry(format!("{who} connection {lane}: taken by {label}"))
                }
                Greeting::Failed(e) => return Step::Retry(format!("{who} connection {lane}: {e}")),
            }
        }
        ss.push(s);
        rs.push(r);
    }
    let (s, r) = (&ss[0], &rs[0]);
    out.debug(&format!(
        "agents connected over {lanes} connection(s) each; resuming at chunk {next}"
    ));
    progress.link_ok();
    // Whatever any connection brings: sender connections first, then
    // the receiver's, in lane order (set up once: the connections stay
    // the same for the whole round).
    let conns: Vec<(&Conn, Side)> = ss
        .iter()
        .map(|c| (c, Side::Sender))
        .chain(rs.iter().map(|c| (c, Side::Receiver)))
        .collect();
    let mut select = crossbeam_channel::Select::new();
    for (c, _) in &conns {
        select.recv(&c.rx);
    }
    let (mut relay, first) = Relay::start(t, next, offset, now());
    let mut acts = Vec::from(first);
    loop {
        // What the session said: the first failure ends the round.
        for act in acts.drain(..) {
            match act {
                Act::Send(side, m) => {
                    let (all, c, who) = match side {
                        Side::Sender => (&ss, s, "sender"),
                        Side::Receiver => (&rs, r, "receiver"),
                    };
                    match &m {
                        Msg::End(_) => out.debug("end of stream forwarded to the receiver"),
                        // Every connection says goodbye; every one is
                        // pinged (each must stay heard).
                        Msg::Bye => {
                            for c in all {
                                let _ = c.tx.send(wire::encode(&m));
                            }
                            continue;
                        }
                        Msg::Ping { .. } => {
                            for c in all {
                                let _ = c.tx.try_send(wire::encode(&m));
                            }
                            continue;
                        }
                        _ => {}
                    }
                    // Acks and pings never wait on a full queue: a later
                    // one says the same.
                    if matches!(m, Msg::Ack { .. } | Msg::Ping { .. }) {
                        let _ = c.tx.try_send(wire::encode(&m));
                    } else if let Err(e) = c.send(wire::encode(&m)) {
                        return Step::Retry(format!("{who} {e}"));
                    }
                }
                Act::Finished { status, stderr } => {
                    out.debug(&format!("zfs receive ended (exit status {status})"));
                    let agents_gone = ss.iter().chain(&rs).all(|c| closed(c, BYE_WAIT));
                    out.debug("agents said goodbye");
                    return Step::Finished(Box::new(Outcome {
                        status,
                        stderr,
                        stats: t.stats.clone(),
                        agents_gone,
                    }));
                }
                Act::Fatal(e) => return Step::Fatal(e),
                Act::Dead(why) => return Step::Retry(why),
            }
        }
        if let Ok(op) = select.select_timeout(Duration::from_millis(500)) {
            let i = op.index();
            let (c, side) = conns[i];
            let who = if side == Side::Sender {
                "sender"
            } else {
                "receiver"
            };
            let lane = if side == Side::Sender {
                i
            } else {
                i - ss.len()
            };
            let named = |e: String| {
                if lanes > 1 {
                    format!("{who} connection {lane}: {e}")
                } else {
                    format!("{who}: {e}")
                }
            };
            match op.recv(&c.rx) {
                Err(_) => return Step::Retry(format!("{who} reader ended")),
                Ok(Ok(In::Chunk(head))) => {
                    relay.chunk(t, head.seq, head.payload as u64, head.end);
                    if lanes > 1 {
                        let carried = &mut t.stats.lane_bytes;
                        carried.resize(carried.len().max(lanes), 0);
                        carried[lane] += head.payload as u64;
                    }
                }
                Ok(Ok(In::Msg(m))) => acts = relay.on_msg(t, side, m, now()),
                Ok(Err(e)) => return Step::Retry(named(e)),
            }
        }
        let st = &t.stats;
        progress.tick(
            st.acked_bytes,
            st.sent_bytes,
            st.wire_bytes,
            st.resent_bytes,
        );
        // The longest silence on each side: any dead connection ends the
        // round.
        let silent = |all: &[Conn]| all.iter().map(Conn::silent_for).max().unwrap_or_default();
        acts.extend(relay.tick(t, now(), [silent(&ss), silent(&rs)]));
    }
}
