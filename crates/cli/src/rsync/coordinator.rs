//! The coordinator's side of an `--rsync` transfer: connects to both
//! agents (a unix socket locally, `ssh HOST syncoid-rsync agent bridge DIR`
//! remotely, which hands the session's pipes to the agent), moves chunks
//! from sender to receiver and acknowledgements back, sends heartbeats, and
//! when a connection dies or stalls opens a new one and resumes from the
//! receiver's position. It gives up only after the inactivity timeout
//! passes without progress.

use crossbeam_channel::{bounded, Receiver as Rx, SendTimeoutError, Sender as Tx, TrySendError};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{relay, session, setup_wait, stall};
use crate::again::Backoff;
use crate::config::SSH_KEEPALIVE;
use crate::host::{Host, StderrTail};
use crate::output::Out;
use crate::preflight::Binary;
use crate::progress::{Face, Progress};
use syncoid_rsync_core::session::coordinator::{
    Act, Next as After, Relay, Side, Stats, Timing, Transfer,
};
use syncoid_rsync_core::shell;
use syncoid_rsync_core::wire::{self, Msg, Role};

/// Where an agent lives.
#[derive(Clone)]
pub struct Agent {
    pub host: Host,
    /// The syncoid-rsync binary on that host.
    pub exe: String,
    pub dir: String,
}

/// Frames queued per direction and connection in the coordinator. The
/// sender's spool is what covers the link's round trip; these only smooth
/// the hand-over between threads, and each holds up to a chunk.
const QUEUE: usize = 4;

/// One live connection to an agent.
struct Conn {
    tx: Tx<Vec<u8>>,
    rx: Rx<Result<In, String>>,
    child: Option<Child>,
    /// The writing side, shared by the writer thread and, on the
    /// receiver's connection, the relay that forwards chunks into it.
    w: Arc<Mutex<File>>,
    /// A local connection's socket: shut down when the connection is
    /// dropped, so no thread stays blocked on it.
    sock: Option<UnixStream>,
    /// When the link last moved: bytes read from the agent, or a 64 KiB
    /// piece of a chunk written towards it. Set by the readers and the
    /// relay, so a slow link whose chunks take longer than the stall
    /// time to pass is alive, while a dead one is noticed even when the
    /// main loop waits on it. Small frames (pings, acks) written do not
    /// count: they fit in the buffers of a link that is long dead, so a
    /// link that carries only those is alive by its answers (a pong per
    /// ping) alone.
    heard: Arc<Mutex<Heard>>,
}

/// When a link last moved, and whether its reader is held up by the
/// coordinator itself (its queue full while the main loop is busy, or the
/// sender's relay waiting to write into the receiver's connection):
/// silence then is ours, not the link's.
struct Heard {
    at: Instant,
    held: bool,
}

impl Heard {
    fn now() -> Mutex<Heard> {
        Mutex::new(Heard {
            at: Instant::now(),
            held: false,
        })
    }
}

fn touch(h: &Mutex<Heard>) {
    h.lock().expect("heard").at = Instant::now();
}

/// Marks a link's reader held up by the coordinator (true) or reading
/// again (false); either way its silence counts from now.
fn hold(h: &Mutex<Heard>, held: bool) {
    let mut h = h.lock().expect("heard");
    h.held = held;
    h.at = Instant::now();
}

impl Conn {
    fn silent_for(&self) -> Duration {
        let h = self.heard.lock().expect("heard");
        if h.held {
            Duration::ZERO
        } else {
            h.at.elapsed()
        }
    }

    /// Queues a frame for the agent; fails when the connection is closed
    /// or the link has not moved for the stall time (a dead link whose
    /// writes block).
    fn send(&self, frame: Vec<u8>) -> Result<(), String> {
        let mut frame = frame;
        loop {
            match self.tx.send_timeout(frame, Duration::from_millis(500)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Disconnected(_)) => return Err("closed".into()),
                Err(SendTimeoutError::Timeout(f)) => {
                    if self.silent_for() > stall() {
                        return Err(format!("link idle for {}s", stall().as_secs()));
                    }
                    frame = f;
                }
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = &self.sock {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// ssh options of every connection to an agent: a connection of its own,
/// not a session of the ssh master, so when it dies its remote end dies
/// with it and nothing shared wedges; ssh's own keepalive notices a dead
/// link. (ssh takes the first value of an option: these come before the
/// user's and the master's.)
const OWN_SSH: [&str; 10] = [
    "-o",
    "ControlMaster=no",
    "-o",
    "ControlPath=none",
    SSH_KEEPALIVE[0],
    SSH_KEEPALIVE[1],
    SSH_KEEPALIVE[2],
    SSH_KEEPALIVE[3],
    "-o",
    "ConnectTimeout=5",
];

/// How a connection reaches a remote agent.
#[derive(Clone, Copy)]
enum Via {
    /// A session of the host's ssh master.
    Master,
    /// An ssh connection of its own (`OWN_SSH`).
    Own,
}

/// The two ends of a connection to an agent (and the ssh carrying it),
/// before the coordinator's threads take them over.
pub struct Opened {
    r: File,
    w: File,
    child: Option<Child>,
    sock: Option<UnixStream>,
}

/// Opens a connection to an agent: its socket on this machine, or through
/// `ssh HOST syncoid-rsync agent bridge DIR`, which hands the ssh
/// session's pipes to the agent (`rsync::link`): a session channel, with
/// no process of ours copying on the far end. (sshd's unix-socket
/// forwarding, `ssh -L`, was measured slower: 2 GiB with aes128-gcm took
/// 9.5 s forwarded against 7.8 s through a session channel.)
fn open(a: &Agent, via: Via) -> Result<Opened, String> {
    match &a.host {
        Host::Local => {
            let s = UnixStream::connect(format!("{}/sock", a.dir))
                .map_err(|e| format!("connect {}: {e}", a.dir))?;
            let fd = |s: &UnixStream| -> Result<File, String> {
                Ok(File::from(OwnedFd::from(
                    s.try_clone().map_err(|e| e.to_string())?,
                )))
            };
            Ok(Opened {
                r: fd(&s)?,
                w: fd(&s)?,
                child: None,
                sock: Some(s),
            })
        }
        remote => {
            let argv = vec![
                a.exe.clone(),
                "agent".into(),
                "bridge".into(),
                a.dir.clone(),
            ];
            let own: &[&str] = match via {
                Via::Master => &[],
                Via::Own => &OWN_SSH,
            };
            let c = remote
                .command_with(own, &[argv])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("ssh: {e}"))?;
            Ok(ssh_ends(c))
        }
    }
}

/// The widened pipes of an ssh child as a connection's ends.
fn ssh_ends(mut c: Child) -> Opened {
    let r = c.stdout.take().expect("piped");
    let w = c.stdin.take().expect("piped");
    crate::transfer::widen_pipe(&r);
    crate::transfer::widen_pipe(&w);
    Opened {
        r: File::from(OwnedFd::from(r)),
        w: File::from(OwnedFd::from(w)),
        child: Some(c),
        sock: None,
    }
}

/// Starts the threads that move frames over an opened connection. The
/// sender's connection is given the receiver's (`relay_to`): its reader
/// forwards chunks straight into it (`rsync::relay`).
fn conn(o: Opened, queue: usize, relay_to: Option<&Conn>) -> Conn {
    let Opened {
        r: reader,
        w: writer,
        child,
        sock,
    } = o;
    let (tx, wrx) = bounded::<Vec<u8>>(queue);
    let (rtx, rx) = bounded::<Result<In, String>>(queue);
    let heard = Arc::new(Heard::now());
    let w = Arc::new(Mutex::new(writer));
    let out = w.clone();
    std::thread::spawn(move || {
        for frame in wrx {
            if out.lock().expect("writer").write_all(&frame).is_err() {
                return;
            }
        }
    });
    let touched = heard.clone();
    match relay_to {
        Some(r) => {
            let (dst, dst_heard) = (r.w.clone(), r.heard.clone());
            std::thread::spawn(move || relay_frames(&reader, &dst, rtx, &touched, &dst_heard));
        }
        None => {
            std::thread::spawn(move || read_frames(reader, rtx, &touched));
        }
    }
    Conn {
        tx,
        rx,
        child,
        heard,
        w,
        sock,
    }
}

/// What a connection's reader passes on: a chunk by its header (the relay
/// has already forwarded it), everything else decoded.
enum In {
    /// A chunk the relay forwarded.
    Chunk(wire::ChunkHeader),
    Msg(Msg),
}

/// A connection's reader: every frame read is decoded and passed on. The
/// link is marked alive on every read that moved bytes, not only when a
/// frame is complete: a chunk that takes longer than the stall time to
/// arrive (a slow link, a low `--source-bwlimit`) comes over a live link.
fn read_frames(r: File, tx: Tx<Result<In, String>>, heard: &Mutex<Heard>) {
    let mut r = super::Counted {
        r,
        on_read: || touch(heard),
    };
    let stop = super::read_frames(&mut r, |frame| pass_on(&tx, heard, &frame));
    ended(&tx, stop);
}

/// The sender's connection's reader: chunks go straight to the receiver's
/// connection (`rsync::relay`) and are passed on by header; while the
/// relay waits on the receiver, the sender's silence is not counted.
fn relay_frames(
    src: &File,
    dst: &Mutex<File>,
    tx: Tx<Result<In, String>>,
    heard: &Mutex<Heard>,
    dst_heard: &Mutex<Heard>,
) {
    let read = || touch(heard);
    let wrote = || touch(dst_heard);
    let on_receiver = |waiting: bool| hold(heard, waiting);
    let ev = relay::Events {
        read: &read,
        wrote: &wrote,
        on_receiver: &on_receiver,
    };
    let stop = relay::relay(src, dst, &ev, |frame| match frame {
        relay::Frame::Chunk(head) => deliver(&tx, heard, In::Chunk(head)),
        relay::Frame::Other(frame) => pass_on(&tx, heard, &frame),
    });
    ended(&tx, stop);
}

/// Decodes a frame that is not a chunk and passes it to the main loop.
fn pass_on(
    tx: &Tx<Result<In, String>>,
    heard: &Mutex<Heard>,
    frame: &[u8],
) -> Result<bool, String> {
    match wire::decode_frame(frame) {
        // A pong's work is done by being read (the link moved); passing it
        // on could fill the queue while the main loop is busy, and stop
        // this reader.
        Ok(Msg::Pong { .. }) => Ok(true),
        Ok(Msg::Chunk(_)) => Err("protocol error: a chunk from the receiver".into()),
        Ok(m) => deliver(tx, heard, In::Msg(m)),
        Err(e) => Err(format!("protocol error: {e}")),
    }
}

/// Hands an item to the main loop; false once it is gone.
fn deliver(tx: &Tx<Result<In, String>>, heard: &Mutex<Heard>, item: In) -> Result<bool, String> {
    match tx.try_send(Ok(item)) {
        Ok(()) => Ok(true),
        Err(TrySendError::Disconnected(_)) => Ok(false),
        Err(TrySendError::Full(item)) => {
            // The main loop is busy (waiting to queue a frame for the
            // other agent): this link is not read meanwhile, so its
            // silence does not count until reading resumes.
            hold(heard, true);
            let sent = tx.send(item).is_ok();
            hold(heard, false);
            Ok(sent)
        }
    }
}

/// Why a reader ended when the agent's side closed the connection.
const CLOSED: &str = "connection closed";

/// Whether the ssh session of a connection that closed before the
/// greeting ended with `agent::GONE` (the far end found no agent) or
/// without our binary to run.
fn bridge_says_gone(c: &mut Conn) -> bool {
    let Some(child) = c.child.as_mut() else {
        return false;
    };
    // The session closed: ssh exits a moment later.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            // Our binary missing there (127) means no agent runs from it
            // either: the host restarted and lost its /tmp.
            Ok(Some(status)) => return matches!(status.code(), Some(super::agent::GONE | 127)),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

/// Whether a local agent that could not be reached is gone for good: its
/// session dir or socket is missing, or its process is not running. Read
/// from the files, not by connecting: a connection would be taken for the
/// coordinator's own.
fn local_agent_gone(a: &Agent) -> bool {
    if a.host.is_remote() {
        return false;
    }
    let dir = std::path::Path::new(&a.dir);
    if std::fs::symlink_metadata(dir.join("sock")).is_err() {
        return true;
    }
    session::read_marker(dir).is_none_or(|m| !session::alive(m.pid))
}

/// Tells the main loop why a reader ended (unless it asked it to).
fn ended(tx: &Tx<Result<In, String>>, stop: super::Stop) {
    let why = match stop {
        super::Stop::Handler => return,
        super::Stop::Closed => CLOSED.to_string(),
        super::Stop::Failed(e) => e,
    };
    let _ = tx.send(Err(why));
}

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
    Finished(Outcome),
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

/// Greets an agent: its Welcome, or its Busy when another coordinator
/// drives it.
fn hello(c: &Conn, role: Role) -> Result<Msg, String> {
    c.tx.send(wire::encode(&Msg::Hello {
        version: wire::VERSION,
        role,
        owner: super::lock::owner().clone(),
    }))
    .map_err(|_| "connection closed".to_string())?;
    match c.rx.recv_timeout(setup_wait()) {
        Ok(Ok(In::Msg(m @ (Msg::Welcome { .. } | Msg::Busy { .. })))) => Ok(m),
        Ok(Ok(In::Msg(Msg::Error { msg }))) => Err(msg),
        Ok(Ok(In::Msg(other))) => Err(format!("unexpected {} before the welcome", kind(&other))),
        Ok(Ok(In::Chunk { .. })) => Err("unexpected chunk before the welcome".into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer".into()),
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
    inactivity: Duration,
    out: &Out,
    progress: &Progress,
) -> Result<Outcome, RunError> {
    let epoch = Instant::now();
    let now = || epoch.elapsed();
    let mut t = Transfer::new(Timing::new(stall(), inactivity), now());
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
            via,
            &mut t,
            &now,
            out,
            progress,
        );
        match step {
            Step::Finished(o) => return Ok(o),
            Step::Fatal(e) => return Err(RunError::Fatal(e)),
            Step::Gone(e) => return Err(RunError::Gone(e)),
            // A run that drove the transfer and finds only one agent taken
            // (another run took it, found the other still ours and left)
            // gets it back once that run has been silent for the takeover
            // wait: an outage until then.
            Step::Busy { why, both } if both || !t.stats.drove => return Err(RunError::Busy(why)),
            Step::Retry(why) | Step::Busy { why, .. } => match t.failed(&why, now()) {
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
            },
        }
    }
}

fn attempt(
    (sender, s_opened): (&Agent, Option<Opened>),
    (receiver, r_opened): (&Agent, Option<Opened>),
    via: Via,
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
    let r = r.map(|o| conn(o, QUEUE, None));
    let s = s.map(|o| conn(o, QUEUE, r.as_ref().ok()));
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
            Ok(mut c) => match hello(&c, role) {
                Ok(Msg::Busy { label, heard_ms }) => Err(Step::Busy {
                    why: format!(
                        "the {who} agent on {} is driven by {label} (heard {:.1}s ago)",
                        a.host.label(),
                        heard_ms as f64 / 1000.0
                    ),
                    both: false,
                }),
                Ok(m) => Ok((c, m)),
                Err(e) => {
                    let gone = e == CLOSED && bridge_says_gone(&mut c);
                    Err(failed(e, gone))
                }
            },
        }
    };
    let s = match greeted(s, Role::Sender, "sender", sender) {
        Ok((c, _)) => c,
        Err(Step::Busy { why, .. }) => {
            // A run that drove the transfer asks whether the receiver is
            // taken too: then it lost both. A newcomer leaves at once,
            // without touching the receiver.
            let both = t.stats.drove
                && matches!(
                    greeted(r, Role::Receiver, "receiver", receiver),
                    Err(Step::Busy { .. })
                );
            return Step::Busy { why, both };
        }
        Err(step) => return step,
    };
    let (r, next, offset) = match greeted(r, Role::Receiver, "receiver", receiver) {
        Ok((
            c,
            Msg::Welcome {
                next_seq, offset, ..
            },
        )) => (c, next_seq, offset),
        Ok(_) => unreachable!("hello returns Welcome"),
        Err(step) => return step,
    };
    out.debug(&format!("agents connected; resuming at chunk {next}"));
    progress.link_ok();
    let (mut relay, first) = Relay::start(t, next, offset, now());
    let mut acts = Vec::from(first);
    loop {
        // What the session said: the first failure ends the round.
        for act in acts.drain(..) {
            match act {
                Act::Send(side, m) => {
                    let (c, who) = match side {
                        Side::Sender => (&s, "sender"),
                        Side::Receiver => (&r, "receiver"),
                    };
                    match &m {
                        Msg::End(_) => out.debug("end of stream forwarded to the receiver"),
                        Msg::Bye => {
                            let _ = c.tx.send(wire::encode(&m));
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
                    let agents_gone = closed(&s, BYE_WAIT) && closed(&r, BYE_WAIT);
                    out.debug("agents said goodbye");
                    return Step::Finished(Outcome {
                        status,
                        stderr,
                        stats: t.stats.clone(),
                        agents_gone,
                    });
                }
                Act::Fatal(e) => return Step::Fatal(e),
                Act::Dead(why) => return Step::Retry(why),
            }
        }
        crossbeam_channel::select! {
            recv(s.rx) -> m => match m {
                Err(_) => return Step::Retry("sender reader ended".into()),
                Ok(Ok(In::Chunk(head))) => {
                    relay.chunk(t, head.seq, head.payload as u64, head.end);
                }
                Ok(Ok(In::Msg(m))) => acts = relay.on_msg(t, Side::Sender, m, now()),
                Ok(Err(e)) => return Step::Retry(format!("sender: {e}")),
            },
            recv(r.rx) -> m => match m {
                Err(_) => return Step::Retry("receiver reader ended".into()),
                Ok(Ok(In::Msg(m))) => acts = relay.on_msg(t, Side::Receiver, m, now()),
                Ok(Ok(In::Chunk(_))) => {}
                Ok(Err(e)) => return Step::Retry(format!("receiver: {e}")),
            },
            default(Duration::from_millis(500)) => {}
        }
        let st = &t.stats;
        progress.tick(
            st.acked_bytes,
            st.sent_bytes,
            st.wire_bytes,
            st.resent_bytes,
        );
        acts.extend(relay.tick(t, now(), [s.silent_for(), r.silent_for()]));
    }
}

/// An agent to start: its host, our binary there, its role (`send` or
/// `receive`), the transfer's key, its options and its zfs command.
#[derive(Clone, Copy)]
pub struct Start<'a> {
    pub host: &'a Host,
    pub exe: &'a str,
    pub role: &'a str,
    pub key: &'a str,
    pub opts: &'a AgentOpts,
    pub zfs_argv: &'a [String],
}

/// Why a step of setting up a transfer on a host (copying the binary,
/// starting an agent, listing agents) failed.
#[derive(Debug)]
pub enum SetupError {
    /// The command ran and failed, or could not be run: trying again fails
    /// the same way.
    Failed(String),
    /// The connection to the host failed or hung before the command
    /// answered: it may or may not have run (an agent may be running).
    Link(String),
}

/// Why link failures stopped being tried again (`Retry`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ended {
    /// The inactivity timeout passed: the link was lost all along.
    Timeout,
    /// The other side's setup failed.
    OtherSide,
    /// Our binary cannot run on the host (`provision`): no try would help,
    /// and no transfer can start there.
    CannotRun,
}

/// Setting up one side of a transfer failed.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupFailed {
    pub why: String,
    /// None: a failure that trying again does not cure.
    pub ended: Option<Ended>,
}

impl SetupFailed {
    /// Both sides' failures (either may be absent) are a lost link alone:
    /// one side gave up at the inactivity timeout, and the other did too
    /// or stopped because of it.
    pub fn link_lost(failures: &[&SetupFailed]) -> bool {
        failures.iter().any(|f| f.ended == Some(Ended::Timeout))
            && failures
                .iter()
                .all(|f| matches!(f.ended, Some(Ended::Timeout | Ended::OtherSide)))
    }
}

/// Tries again after a link failure in setting up a transfer: capped
/// backoff, a warning each time, and an end when `patience` (the
/// inactivity timeout) has passed or the other side gave up (`quit`).
pub struct Retry<'a> {
    /// How the last `wait` ended tries, if it did.
    ended: Option<Ended>,
    deadline: Instant,
    patience: Duration,
    backoff: Backoff,
    quit: &'a AtomicBool,
    out: &'a Out,
}

impl<'a> Retry<'a> {
    /// Runs `f` with retries of its own; when it fails, the other side
    /// (sharing `quit`) stops trying.
    pub fn run<T>(
        patience: Duration,
        quit: &'a AtomicBool,
        out: &'a Out,
        f: impl FnOnce(&mut Retry) -> Result<T, String>,
    ) -> Result<T, SetupFailed> {
        let mut retry = Retry {
            ended: None,
            deadline: Instant::now() + patience,
            patience,
            backoff: Backoff::new(),
            quit,
            out,
        };
        let r = f(&mut retry);
        if r.is_err() {
            quit.store(true, Ordering::Relaxed);
        }
        r.map_err(|why| SetupFailed {
            why,
            ended: retry.ended,
        })
    }

    /// Waits before the next try after `why`; Err (with `why`) when no
    /// try is left.
    fn wait(&mut self, why: &str) -> Result<(), String> {
        if self.quit.load(Ordering::Relaxed) {
            self.ended = Some(Ended::OtherSide);
            return Err(format!("{why}; not tried again: the other side failed"));
        }
        if Instant::now() + self.backoff.0 > self.deadline {
            self.ended = Some(Ended::Timeout);
            return Err(format!(
                "{why}; gave up after {}s (inactivity timeout)",
                self.patience.as_secs()
            ));
        }
        self.out.warn(&format!(
            "{why}; trying again in {:.1}s",
            self.backoff.0.as_secs_f64()
        ));
        self.backoff.sleep();
        Ok(())
    }
}

/// Starts an agent, or finds the one an earlier try started: a
/// connection that fails while an agent starts is retried (`retry`, each
/// try on an ssh connection of its own). Before each new start the host is
/// asked for a live agent of this transfer and role, since the one a lost
/// connection started may be running: two receivers must never compete
/// for one dataset.
pub fn start_or_find(a: &Start, retry: &mut Retry) -> Result<(String, Option<Opened>), String> {
    let mut via = Via::Master;
    loop {
        let mut why = match start_agent(a, via) {
            Ok(started) => return Ok(started),
            Err(SetupError::Failed(e)) => return Err(e),
            Err(SetupError::Link(e)) => e,
        };
        via = Via::Own;
        loop {
            retry.wait(&why)?;
            match find_agent(a) {
                Ok(Some(dir)) => {
                    retry.out.info(&format!(
                        "--rsync: the {} agent on {} was started before the connection failed: using it ({dir})",
                        a.role,
                        a.host.label()
                    ));
                    return Ok((dir, None));
                }
                Ok(None) => break,
                Err(SetupError::Failed(e)) => return Err(e),
                Err(SetupError::Link(e)) => why = e,
            }
        }
    }
}

/// The session dir of the live agent of `a`'s role and transfer on its
/// host, if there is one (`agent list`, on an ssh connection of its own).
fn find_agent(a: &Start) -> Result<Option<String>, SetupError> {
    let argv = vec![a.exe.to_string(), "agent".into(), "list".into()];
    let out = a
        .host
        .command_with(&OWN_SSH, &[argv])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SetupError::Failed(format!("ssh: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let what = format!("listing the agents on {}", a.host.label());
        return Err(setup_error(&what, out.status, &stderr));
    }
    let found = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["role"] == a.role && v["key"] == a.key && v["alive"] == true)
        .and_then(|v| v["dir"].as_str().map(str::to_string));
    Ok(found)
}

/// What an ssh command that ended with `status` means: the link failed
/// (ssh's own 255, or a signal) or the command on the far end did.
fn setup_error(what: &str, status: std::process::ExitStatus, stderr: &str) -> SetupError {
    use std::os::unix::process::ExitStatusExt;
    let stderr = stderr.trim();
    let how = match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("ssh ended by signal {sig}"),
        (Some(code), _) => format!("exit status {code}"),
        _ => "no exit status".into(),
    };
    let msg = if stderr.is_empty() {
        format!("{what} failed ({how})")
    } else {
        format!("{what} failed ({how}): {stderr}")
    };
    if status.code() == Some(255) || status.signal().is_some() {
        SetupError::Link(msg)
    } else {
        SetupError::Failed(msg)
    }
}

/// Starts an agent; returns its session directory and, on a remote host,
/// the first connection to it: the same ssh session that started it
/// (`agent start --attach`), one session where start and connect took two.
/// An answer that does not come within the setup wait is a hung link.
fn start_agent(a: &Start, via: Via) -> Result<(String, Option<Opened>), SetupError> {
    let Start {
        host,
        exe,
        role,
        key,
        opts,
        zfs_argv,
    } = *a;
    let mut argv = vec![
        exe.to_string(),
        "agent".into(),
        "start".into(),
        role.into(),
        "--key".into(),
        key.into(),
        "--timeout".into(),
        opts.timeout.as_secs().to_string(),
        "--chunk-size".into(),
        opts.chunk_size.to_string(),
        "--spool-size".into(),
        opts.spool_size.to_string(),
        "--compress-level".into(),
        opts.compress_level.to_string(),
        "--bwlimit".into(),
        opts.bwlimit.to_string(),
    ];
    let what = format!("starting the {role} agent on {}", host.label());
    if !host.is_remote() {
        argv.push("--".into());
        argv.extend(zfs_argv.iter().cloned());
        let out = host
            .run(&argv)
            .map_err(|e| SetupError::Failed(e.to_string()))?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || dir.is_empty() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(SetupError::Failed(format!(
                "{what} failed: {}",
                stderr.trim()
            )));
        }
        return Ok((dir, None));
    }
    argv.push("--attach".into());
    argv.push("--".into());
    argv.extend(zfs_argv.iter().cloned());
    let own: &[&str] = match via {
        Via::Master => &[],
        Via::Own => &OWN_SSH,
    };
    let mut child = host
        .command_with(own, &[argv])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SetupError::Failed(format!("ssh: {e}")))?;
    let tail = StderrTail::drain(child.stderr.take().expect("piped"), false);
    // A hung link (a blackhole on the master's connection) is cut after
    // the setup wait. The child is not reaped before the watchdog ends,
    // so its pid cannot name another process.
    let pid = child.id() as libc::pid_t;
    let (answered, watch) = bounded::<()>(0);
    let watchdog = std::thread::spawn(move || {
        let hung = watch
            .recv_timeout(setup_wait())
            .is_err_and(|e| e.is_timeout());
        if hung {
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        hung
    });
    // The session dir's line, read byte by byte: what follows it on this
    // pipe is the agent's protocol.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let stdout = child.stdout.as_mut().expect("piped");
    let mut ended = false;
    loop {
        match stdout.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) if line.len() < 4096 => line.push(byte[0]),
            Ok(1) => break,
            _ => {
                ended = true;
                break;
            }
        }
    }
    drop(answered);
    let hung = watchdog.join().unwrap_or(false);
    let dir = String::from_utf8_lossy(&line).trim().to_string();
    if !ended && byte[0] == b'\n' && !dir.is_empty() {
        return Ok((dir, Some(ssh_ends(child))));
    }
    if hung {
        let _ = child.wait();
        return Err(SetupError::Link(format!(
            "{what}: no answer within {}s",
            setup_wait().as_secs()
        )));
    }
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        return Err(SetupError::Failed(format!(
            "{what} failed: an answer that is not a session directory"
        )));
    }
    let status = child
        .wait()
        .map_err(|e| SetupError::Failed(format!("ssh: {e}")))?;
    Err(setup_error(&what, status, &tail.finish()))
}

#[derive(Clone, Copy)]
pub struct AgentOpts {
    pub timeout: Duration,
    pub chunk_size: usize,
    pub spool_size: usize,
    pub compress_level: i32,
    /// Bytes per second for this agent (0: none).
    pub bwlimit: u64,
}

/// Runs `agent stop DIR` on `host`, with `more` arguments.
fn run_stop(host: &Host, exe: &str, dir: &str, more: &[String]) -> Option<std::process::Output> {
    let mut argv = vec![
        exe.to_string(),
        "agent".into(),
        "stop".into(),
        dir.to_string(),
    ];
    argv.extend_from_slice(more);
    host.run(&argv).ok()
}

/// Stops an agent as `agent stop DIR` by hand does: it is ended by its
/// pid if it does not obey. For agents that cannot speak our protocol.
pub fn stop_agent_by_hand(host: &Host, exe: &str, dir: &str) {
    run_stop(host, exe, dir, &[]);
}

/// Stops an agent of this run (or of an interrupted run of this machine).
/// Err: the agent is driven by another machine's run (`ownership`), and
/// was left alone; the message says by whom.
pub fn stop_agent(host: &Host, exe: &str, dir: &str) -> Result<(), String> {
    let owner = super::agent::owner_arg(super::lock::owner());
    match run_stop(host, exe, dir, &["--owner".into(), owner]) {
        Some(out) if out.status.code() == Some(super::agent::HELD) => {
            // "stop: DIR is driven by LABEL (heard Ns ago): left alone"
            let said = String::from_utf8_lossy(&out.stderr);
            let by = said
                .split_once(" is driven by ")
                .map(|(_, by)| by.trim().trim_end_matches(": left alone"))
                .unwrap_or("another run");
            Err(format!("the agent on {} is driven by {by}", host.label()))
        }
        _ => Ok(()),
    }
}

/// The transfer key: which agents belong to replicating `src` to `dst`.
pub fn key(src: &str, dst: &str) -> String {
    let h = blake3::hash(format!("{src}\0{dst}").as_bytes());
    h.to_hex()[..24].to_string()
}

/// Makes sure `host` can run our binary (`preflight::Binary`): the one
/// there, or a copy of this binary in a fresh private directory of the
/// place pre-flight chose, which is run with `--version` before it is
/// used: a copy that cannot start there (a loader that lacks what it
/// needs) is removed and reported with the loader's words.
/// Returns (exe, dir to remove).
/// A copy whose connection failed is tried again (`retry`); the copy a
/// lost answer made, if any, is removed by the agents' sweep once stale,
/// or by a later run of this machine (its owner file names this run).
pub fn provision(
    host: &Host,
    binary: &Binary,
    retry: &mut Retry,
) -> Result<(String, Option<String>), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let base = match binary {
        Binary::Own => return Ok((me.display().to_string(), None)),
        Binary::At(exe) => return Ok((exe.clone(), None)),
        Binary::CopyInto(base) => base,
    };
    let owner = format!("{}:{}", super::lock::owner().domain, std::process::id());
    let ours = format!("syncoid-rsync {}", env!("CARGO_PKG_VERSION"));
    let (bin, own) = (
        "\"$d/syncoid-rsync\"",
        format!("\"$d/{}\"", session::BIN_OWNER),
    );
    let script = format!(
        "umask 077; d=$(mktemp -d {base}/{prefix}XXXXXXXX) || exit 1; \
         if ! {{ cat > {bin} && chmod 700 {bin} && echo {owner} > {own}; }}; then rm -f {bin} {own}; rmdir \"$d\"; exit 1; fi; \
         if v=$({bin} --version 2>&1) && [ \"$v\" = {ours_q} ]; then echo \"$d\"; \
         else printf '%s\\n' \"$v\" >&2; rm -f {bin} {own}; rmdir \"$d\"; exit {CANNOT_RUN}; fi",
        base = shell::quote(base),
        prefix = session::BIN_PREFIX,
        ours_q = shell::quote(&ours),
    );
    let what = format!("copying syncoid-rsync to {}:{base}", host.label());
    let mut own: &[&str] = &[];
    loop {
        let file = std::fs::File::open(&me).map_err(|e| e.to_string())?;
        let out = host
            .command_with(own, &[vec!["sh".into(), "-c".into(), script.clone()]])
            .stdin(Stdio::from(file))
            .output()
            .map_err(|e| format!("{what}: {e}"))?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && copy_dir(&dir) {
            return Ok((format!("{dir}/syncoid-rsync"), Some(dir)));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(CANNOT_RUN) {
            retry.ended = Some(Ended::CannotRun);
            return Err(format!(
                "the copy of syncoid-rsync cannot run on {} ({base}): {}\n      \
                 install a syncoid-rsync {} built for that system there (the static build, scripts/build-release.sh, runs on any x86_64 Linux), \
                 or name one with --agent-path",
                host.label(),
                stderr.trim().replace('\n', "\n      "),
                env!("CARGO_PKG_VERSION")
            ));
        }
        match setup_error(&what, out.status, &stderr) {
            SetupError::Link(why) => retry.wait(&why)?,
            SetupError::Failed(e) => return Err(e),
        }
        own = &OWN_SSH;
    }
}

/// `provision`'s exit status when the copy did not answer `--version`
/// with this version.
const CANNOT_RUN: i32 = 3;

/// An absolute path ending in a copy directory's name (`provision`).
fn copy_dir(dir: &str) -> bool {
    let p = std::path::Path::new(dir);
    p.is_absolute()
        && !dir.contains("/../")
        && p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(session::valid_bin_name)
}

/// Removes a directory `provision` created.
pub fn unprovision(host: &Host, dir: &str) {
    if copy_dir(dir) {
        let d = shell::quote(dir);
        let line = format!(
            "rm -f {d}/syncoid-rsync {d}/{} && rmdir {d}",
            session::BIN_OWNER
        );
        let _ = host.run(&["sh".into(), "-c".into(), line]);
    }
}

fn kind(m: &Msg) -> &'static str {
    match m {
        Msg::Hello { .. } => "hello",
        Msg::Welcome { .. } => "welcome",
        Msg::Want { .. } => "want",
        Msg::Chunk(_) => "chunk",
        Msg::Ack { .. } => "ack",
        Msg::Nak { .. } => "nak",
        Msg::End(_) => "end",
        Msg::Done { .. } => "done",
        Msg::Ping { .. } => "ping",
        Msg::Pong { .. } => "pong",
        Msg::Error { .. } => "error",
        Msg::Bye => "bye",
        Msg::Busy { .. } => "busy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Out {
        Out {
            quiet: true,
            debug: false,
            json: false,
        }
    }

    /// Tries are spaced by the backoff and end at the inactivity timeout,
    /// with the last reason; a side that fails stops the other's tries.
    #[test]
    fn retries_end_at_the_timeout_or_when_the_other_side_failed() {
        let (out, quit) = (quiet(), AtomicBool::new(false));
        let t = Instant::now();
        let mut tries = 0;
        let r: Result<(), SetupFailed> =
            Retry::run(Duration::from_millis(900), &quit, &out, |retry| loop {
                tries += 1;
                retry.wait(&format!("try {tries} failed"))?;
            });
        // Waits of 0.25 and 0.5 s fit in 0.9 s; the next (1 s) does not.
        assert_eq!(tries, 3);
        assert_eq!(
            r.unwrap_err(),
            SetupFailed {
                why: "try 3 failed; gave up after 0s (inactivity timeout)".into(),
                ended: Some(Ended::Timeout),
            }
        );
        assert!(
            t.elapsed() >= Duration::from_millis(750),
            "{:?}",
            t.elapsed()
        );
        assert!(
            quit.load(Ordering::Relaxed),
            "a failure tells the other side"
        );

        let t = Instant::now();
        let r: Result<(), SetupFailed> =
            Retry::run(Duration::from_secs(60), &quit, &out, |retry| {
                retry.wait("refused")
            });
        assert_eq!(
            r.unwrap_err(),
            SetupFailed {
                why: "refused; not tried again: the other side failed".into(),
                ended: Some(Ended::OtherSide),
            }
        );
        assert!(t.elapsed() < Duration::from_millis(100));

        let quit = AtomicBool::new(false);
        let r = Retry::run(Duration::from_secs(60), &quit, &out, |retry| {
            retry.wait("once")?;
            Ok(7)
        });
        assert_eq!(r, Ok(7));
        assert!(!quit.load(Ordering::Relaxed));
    }

    /// A setup is stopped by a lost link alone when one side gave up at
    /// the timeout and the other did too or stopped because of it.
    #[test]
    fn a_setup_failure_is_a_lost_link_only_when_nothing_else_failed() {
        let f = |ended| SetupFailed {
            why: String::new(),
            ended,
        };
        let (timeout, other) = (f(Some(Ended::Timeout)), f(Some(Ended::OtherSide)));
        let (failed, cannot) = (f(None), f(Some(Ended::CannotRun)));
        assert!(SetupFailed::link_lost(&[&timeout]));
        assert!(SetupFailed::link_lost(&[&timeout, &other]));
        assert!(!SetupFailed::link_lost(&[&other, &failed]));
        assert!(!SetupFailed::link_lost(&[&timeout, &failed]));
        assert!(!SetupFailed::link_lost(&[&timeout, &cannot]));
        assert!(!SetupFailed::link_lost(&[]));
    }
}
