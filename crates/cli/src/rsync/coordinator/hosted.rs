//! The coordinator's side of the host agents (`agent host`): with more
//! than one dataset in a `--rsync` run, each thread starts one agent per
//! remote host, over one ssh session of its master, and then starts
//! every transfer's agent through it and carries each transfer's first
//! connection as a channel of that session. A tree's datasets then cost
//! no ssh session each (the remote shell's start, often slowed by a
//! login script, was most of what a small dataset's transfer cost).
//!
//! Nothing depends on it: a host agent that cannot start (an installed
//! binary of another version, a refusal) or whose link fails is dropped,
//! and the transfers go as without it: agents started by an ssh session
//! each, reconnections through bridges of their own.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Sender as Tx};

use super::setup::SetupError;
use super::{socket_ends, Opened};
use crate::host::{Host, StderrTail};
use crate::lock;
use crate::rsync::mux::Mux;
use syncoid_rsync_core::session::coordinator::Timing;
use syncoid_rsync_core::wire::mux::{Control, VERSION};

/// One thread's agent on one host.
pub struct HostAgent {
    mux: Arc<Mux>,
    child: Mutex<Child>,
    next: AtomicU32,
    /// Who waits for the answer about each channel.
    waiting: Mutex<HashMap<u32, Tx<Control>>>,
    dead: AtomicBool,
    setup: Duration,
}

/// One thread's host agent on one host: None until started, or when one
/// could not be started there (`failed`: the thread does without).
#[derive(Default)]
struct Slot {
    agent: Option<Arc<HostAgent>>,
    failed: bool,
}

/// The run's host agents by (host, ssh master). A slot is locked while
/// its agent starts, so two threads sharing a master (`host::at_once`)
/// never start two.
type Agents = HashMap<(String, usize), Arc<Mutex<Slot>>>;

static AGENTS: Mutex<Option<Agents>> = Mutex::new(None);
/// The run's timing, in milliseconds (stall, setup); 0: host agents off.
static TIMING: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Turns host agents on for this run.
pub fn enable(t: &Timing) {
    TIMING[0].store(t.stall.as_millis() as u64, Ordering::Relaxed);
    TIMING[1].store(t.setup.as_millis() as u64, Ordering::Relaxed);
}

/// This thread's agent on `host` (started with our binary `exe` there),
/// if host agents are on and one runs or can be started.
pub fn get(host: &Host, exe: &str) -> Option<Arc<HostAgent>> {
    let stall = Duration::from_millis(TIMING[0].load(Ordering::Relaxed));
    let setup = Duration::from_millis(TIMING[1].load(Ordering::Relaxed));
    if stall.is_zero() {
        return None;
    }
    let key = (host.label(), crate::host::master());
    let slot = lock(&AGENTS)
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_default()
        .clone();
    let mut slot = lock(&slot);
    if slot.failed {
        return None;
    }
    if let Some(h) = &slot.agent {
        if !h.dead() {
            return Some(h.clone());
        }
        h.end();
    }
    slot.agent = HostAgent::start(host, exe, stall, setup);
    slot.failed = slot.agent.is_none();
    slot.agent.clone()
}

/// Ends every host agent of the run (their transfers' agents stay as
/// they are): all are told at once, then each is waited for, so a run of
/// N threads pays one round trip for them, not N.
pub fn close_all() {
    let agents: Vec<Arc<HostAgent>> = lock(&AGENTS)
        .take()
        .into_iter()
        .flat_map(|a| a.into_values())
        .filter_map(|slot| lock(&slot).agent.take())
        .collect();
    for h in &agents {
        h.let_go();
    }
    for h in &agents {
        h.end();
    }
}

impl HostAgent {
    fn start(host: &Host, exe: &str, stall: Duration, setup: Duration) -> Option<Arc<HostAgent>> {
        let argv = vec![
            exe.to_string(),
            "agent".into(),
            "host".into(),
            "--idle".into(),
            setup.as_secs().max(1).to_string(),
        ];
        let mut child = host
            .command_with(&[], &[argv])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let _tail = StderrTail::drain(child.stderr.take().expect("piped"), false);
        let w = child.stdin.take().expect("piped");
        let r = child.stdout.take().expect("piped");
        crate::transfer::widen_pipe(&w);
        crate::transfer::widen_pipe(&r);
        let h = Arc::new(HostAgent {
            mux: Mux::new(File::from(OwnedFd::from(w))),
            child: Mutex::new(child),
            next: AtomicU32::new(1),
            waiting: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            setup,
        });
        let (hi_tx, hi) = bounded::<u16>(1);
        let reader = h.clone();
        let r = File::from(OwnedFd::from(r));
        std::thread::spawn(move || {
            reader.mux.demux(r, |c| match c {
                Control::Hi { version } => {
                    let _ = hi_tx.try_send(version);
                }
                Control::Opened { channel, .. } | Control::Refused { channel, .. } => {
                    if let Some(tx) = lock(&reader.waiting).remove(&channel) {
                        let _ = tx.send(c);
                    }
                }
                _ => {}
            });
            reader.dead.store(true, Ordering::Relaxed);
            // Whoever waits for an answer hears the end.
            lock(&reader.waiting).clear();
        });
        if h.mux.send(&Control::Hi { version: VERSION }).is_err()
            || hi.recv_timeout(setup) != Ok(VERSION)
        {
            h.end();
            return None;
        }
        // Pings keep the link's silence measured; a link silent for the
        // stall time is dead, and the agent is dropped.
        let beat = h.clone();
        std::thread::spawn(move || {
            let mut nonce = 0;
            while !beat.dead() {
                std::thread::sleep(stall / 6);
                nonce += 1;
                let sent = beat.mux.send(&Control::Ping { nonce }).is_ok();
                if !sent || beat.mux.silent_for() > stall {
                    beat.end();
                }
            }
        });
        Some(h)
    }

    fn dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Closes our end of the connection: the far end exits when it reads
    /// the end.
    fn let_go(&self) {
        self.dead.store(true, Ordering::Relaxed);
        self.mux.finish();
    }

    /// Lets go of the connection, and ends the ssh session if it lingers
    /// (a second).
    fn end(&self) {
        self.let_go();
        let mut c = lock(&self.child);
        for _ in 0..40 {
            if !matches!(c.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Asks for a channel (`ask` makes the request for its number) and
    /// waits for the answer: the agent's directory and the coordinator's
    /// end of the channel.
    fn open(&self, ask: impl FnOnce(u32) -> Control) -> Result<(String, Opened), SetupError> {
        let channel = self.next.fetch_add(1, Ordering::Relaxed);
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| SetupError::Failed(format!("socketpair: {e}")))?;
        let (tx, rx) = bounded(1);
        lock(&self.waiting).insert(channel, tx);
        let lost = |why: &str| {
            lock(&self.waiting).remove(&channel);
            self.mux.close(channel);
            SetupError::Link(format!("the host agent's link: {why}"))
        };
        if self.mux.join(channel, theirs).is_err() || self.mux.send(&ask(channel)).is_err() {
            self.end();
            return Err(lost("closed"));
        }
        match rx.recv_timeout(self.setup) {
            Ok(Control::Opened { dir, .. }) => {
                let opened = socket_ends(ours).map_err(SetupError::Failed)?;
                Ok((dir, opened))
            }
            Ok(Control::Refused { why, .. }) => {
                self.mux.close(channel);
                Err(SetupError::Failed(why))
            }
            Ok(_) | Err(_) if self.dead() => Err(lost("closed")),
            _ => {
                // No answer within the setup wait: a hung link.
                self.end();
                Err(lost(&format!("no answer within {}s", self.setup.as_secs())))
            }
        }
    }

    /// Starts an agent (`agent start ARGV...`) and opens its first
    /// connection.
    pub fn start_agent(&self, argv: Vec<String>) -> Result<(String, Opened), SetupError> {
        self.open(|channel| Control::Start { channel, argv })
    }

    /// A connection to the live agent in `dir`.
    pub fn attach(&self, dir: &str) -> Result<Opened, String> {
        let dir = dir.to_string();
        match self.open(|channel| Control::Attach { channel, dir }) {
            Ok((_, o)) => Ok(o),
            Err(SetupError::Failed(e) | SetupError::Link(e)) => Err(e),
        }
    }
}
