//! The coordinator's side of an `--rsync` transfer: connects to both
//! agents (a unix socket locally, `ssh HOST syncoid-rsync agent bridge DIR`
//! remotely, which hands the session's pipes to the agent), moves chunks
//! from sender to receiver and acknowledgements back, sends heartbeats, and
//! when a connection dies or stalls opens a new one and resumes from the
//! receiver's position. It gives up only after the inactivity timeout
//! passes without progress.

mod conn;
pub mod hosted;
mod setup;

use conn::*;
pub use conn::{Agent, Opened};
pub use setup::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::output::Out;
use crate::progress::{Face, Progress};
use syncoid_rsync_core::session::coordinator::{
    greeting, Act, Greeting, LaneState, Next as After, Relay, Side, Stats, Timing, Transfer,
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
    (via, width): (Via, usize),
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
    // they are there, are made while lane 0 already carries the stream
    // (the session's first actions say to), each on a thread of its own:
    // a long round trip's handshakes cost no time. Each is an ssh
    // connection of its own, never a session of the master: its own TCP
    // connection (its own congestion window on a lossy path) and its own
    // ssh process (its own cipher thread), which is what several
    // connections are for.
    let over = RoundOver::default();
    let mut lanes = Lanes {
        s: vec![Some(s)],
        r: vec![Some(r)],
    };
    lanes.s.resize_with(width, || None);
    lanes.r.resize_with(width, || None);
    let up: Vec<bool> = lanes.s.iter().map(Option::is_some).collect();
    out.debug(&format!(
        "agents connected; resuming at chunk {next} (connections per agent: {width})"
    ));
    progress.link_ok();
    let (mut relay, first) = Relay::start(t, &up, next, offset, now());
    let mut acts = first;
    // Lanes made again mid-round, from the threads that make them. One
    // still at work when the round ends greets nobody: its Hello would
    // replace the next round's connection on that lane.
    let (made_tx, made) = crossbeam_channel::unbounded::<(usize, Result<(Conn, Conn), String>)>();

    loop {
        // Whatever any connection brings, and lanes made again: sender
        // connections first, then the receiver's, in lane order (set up
        // again only when the lanes change).
        let from: Vec<(usize, Side, Inbox)> = lanes
            .s
            .iter()
            .enumerate()
            .map(|l| (l, Side::Sender))
            .chain(lanes.r.iter().enumerate().map(|l| (l, Side::Receiver)))
            .filter_map(|((lane, c), side)| c.as_ref().map(|c| (lane, side, c.rx.clone())))
            .collect();
        let mut select = crossbeam_channel::Select::new();
        for (_, _, rx) in &from {
            select.recv(rx);
        }
        let made_at = select.recv(&made);
        if width > 1 {
            progress.lanes(relay.lanes().iter().map(|l| lane_word(*l)).collect());
        }
        loop {
            // What the session said: the first failure ends the round.
            let mut changed = false;
            while !acts.is_empty() {
                for act in std::mem::take(&mut acts) {
                    match act {
                        Act::Send(side, m) => {
                            if let Err((lane, why)) = lanes.send(&relay, side, &m, out) {
                                acts.extend(relay.lost(t, lane, why, now()));
                            }
                        }
                        Act::Finished { status, stderr } => {
                            out.debug(&format!("zfs receive ended (exit status {status})"));
                            let agents_gone = lanes.all().all(|c| closed(c, BYE_WAIT));
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
                        Act::LaneLost { lane, why } => {
                            out.debug(&format!(
                                "connection {lane} lost ({why}); the others carry on"
                            ));
                            (lanes.s[lane], lanes.r[lane]) = (None, None);
                            changed = true;
                        }
                        Act::Reopen { lane } => {
                            let (a, b, tx) = (sender.clone(), receiver.clone(), made_tx.clone());
                            let over = over.0.clone();
                            std::thread::spawn(move || {
                                let made = open_lane((&a, &b), lane, Via::Own, stall, &over)
                                    .and_then(|(s, r)| {
                                        welcomed(&s, &r, lane, wait).map(|()| (s, r))
                                    });
                                let _ = tx.send((lane, made));
                            });
                            changed = true;
                        }
                    }
                }
            }
            if changed {
                break;
            }
            if let Ok(op) = select.select_timeout(Duration::from_millis(500)) {
                let i = op.index();
                if i == made_at {
                    match op.recv(&made) {
                        Ok((lane, Ok((s, r)))) => {
                            acts = relay.joined(lane);
                            if !acts.is_empty() {
                                out.debug(&format!("connection {lane} made again"));
                                (lanes.s[lane], lanes.r[lane]) = (Some(s), Some(r));
                            }
                        }
                        Ok((lane, Err(e))) => {
                            out.debug(&e);
                            relay.join_failed(lane, now());
                        }
                        Err(_) => unreachable!("the round holds a sender"),
                    }
                    break;
                }
                let (lane, side, rx) = &from[i];
                let (lane, side) = (*lane, *side);
                let who = if side == Side::Sender {
                    "sender"
                } else {
                    "receiver"
                };
                let named = |e: String| {
                    if width > 1 {
                        format!("{who} connection {lane}: {e}")
                    } else {
                        format!("{who}: {e}")
                    }
                };
                match op.recv(rx) {
                    Err(_) => acts = relay.lost(t, lane, named("reader ended".into()), now()),
                    Ok(Ok(In::Chunk(head))) => {
                        relay.chunk(t, lane, head.seq, head.payload as u64, head.end);
                    }
                    Ok(Ok(In::Msg(m))) => acts = relay.on_msg(t, side, m, now()),
                    Ok(Err(e)) => acts = relay.lost(t, lane, named(e), now()),
                }
            }
            let st = &t.stats;
            progress.tick(
                st.acked_bytes,
                st.sent_bytes,
                st.wire_bytes,
                st.resent_bytes,
            );
            acts.extend(relay.tick(t, now(), &lanes.silent()));
        }
    }
}

/// What a connection's reader brings.
type Inbox = crossbeam_channel::Receiver<Result<In, String>>;

/// A round's connections, by lane: the sender's and the receiver's (None
/// while the lane is lost).
struct Lanes {
    s: Vec<Option<Conn>>,
    r: Vec<Option<Conn>>,
}

impl Lanes {
    fn all(&self) -> impl Iterator<Item = &Conn> {
        self.s.iter().chain(&self.r).flatten()
    }

    /// Each lane's silence on each side (none for a lane that is lost).
    fn silent(&self) -> Vec<[Duration; 2]> {
        let quiet = |c: &Option<Conn>| c.as_ref().map(Conn::silent_for).unwrap_or_default();
        self.s
            .iter()
            .zip(&self.r)
            .map(|(s, r)| [quiet(s), quiet(r)])
            .collect()
    }

    /// Sends what the session said to an agent, on the lanes the session
    /// routes it to. A write that fails names the lane it failed on.
    fn send(&self, relay: &Relay, side: Side, m: &Msg, out: &Out) -> Result<(), (usize, String)> {
        let (all, who) = match side {
            Side::Sender => (&self.s, "sender"),
            Side::Receiver => (&self.r, "receiver"),
        };
        if matches!(m, Msg::End(_)) {
            out.debug("end of stream forwarded to the receiver");
        }
        let frame = wire::encode(m);
        for lane in relay.route(m) {
            let Some(c) = all[lane].as_ref() else {
                continue;
            };
            match m {
                // Pings and Acks never wait on a full queue: a later one
                // says the same.
                Msg::Ping { .. } | Msg::Ack { .. } => {
                    let _ = c.tx.try_send(frame.clone());
                }
                Msg::Bye => {
                    let _ = c.tx.send(frame.clone());
                }
                _ => c
                    .send(frame.clone())
                    .map_err(|e| (lane, format!("{who} {e}")))?,
            }
        }
        Ok(())
    }
}

/// Set when a round ends (dropped), for the threads that make its lanes.
#[derive(Default)]
struct RoundOver(Arc<AtomicBool>);

impl Drop for RoundOver {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A lane's state, for people and `--json`.
fn lane_word(l: LaneState) -> &'static str {
    match l {
        LaneState::Up => "up",
        LaneState::Down { .. } => "down",
        LaneState::Joining => "joining",
    }
}

/// Opens connection `lane` to both agents and greets them on it (the
/// receiver's first: the sender's relays chunks into it).
fn open_lane(
    (sender, receiver): (&Agent, &Agent),
    lane: usize,
    via: Via,
    stall: Duration,
    over: &AtomicBool,
) -> Result<(Conn, Conn), String> {
    let r = open(receiver, via)
        .map(|o| conn(o, QUEUE, None, stall))
        .map_err(|e| format!("receiver connection {lane}: {e}"))?;
    let s = open(sender, via)
        .map(|o| conn(o, QUEUE, Some(&r), stall))
        .map_err(|e| format!("sender connection {lane}: {e}"))?;
    if over.load(Ordering::SeqCst) {
        return Err(format!("connection {lane}: the round is over"));
    }
    if !say_hello(&s, Role::Sender, lane as u16) || !say_hello(&r, Role::Receiver, lane as u16) {
        return Err(format!("connection {lane}: {CLOSED}"));
    }
    Ok((s, r))
}

/// Both agents' answers to lane `lane`'s Hellos, within `wait`.
fn welcomed(s: &Conn, r: &Conn, lane: usize, wait: Duration) -> Result<(), String> {
    for (c, who) in [(s, "sender"), (r, "receiver")] {
        match answer(c, wait) {
            Greeting::Welcome { .. } => {}
            Greeting::Busy { label, .. } => {
                return Err(format!("{who} connection {lane}: taken by {label}"))
            }
            Greeting::Failed(e) => return Err(format!("{who} connection {lane}: {e}")),
        }
    }
    Ok(())
}
