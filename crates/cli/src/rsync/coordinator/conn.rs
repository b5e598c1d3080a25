//! The coordinator's connections to the agents: a unix socket locally,
//! `ssh HOST syncoid-rsync agent bridge DIR` remotely; frames read on a
//! thread of their own, chunks relayed from the sender's connection into
//! the receiver's without passing through the coordinator's memory, and
//! when each last carried a byte.

use crossbeam_channel::{bounded, Receiver as Rx, SendTimeoutError, Sender as Tx, TrySendError};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::SSH_KEEPALIVE;
use crate::host::Host;
use crate::rsync::{relay, session};
use syncoid_rsync_core::wire::{self, Msg};

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
pub(super) const QUEUE: usize = 4;

/// One live connection to an agent.
pub(super) struct Conn {
    pub(super) tx: Tx<Vec<u8>>,
    pub(super) rx: Rx<Result<In, String>>,
    pub(super) child: Option<Child>,
    /// The writing side, shared by the writer thread and, on the
    /// receiver's connection, the relay that forwards chunks into it.
    pub(super) w: Arc<Mutex<File>>,
    /// A local connection's socket: shut down when the connection is
    /// dropped, so no thread stays blocked on it.
    pub(super) sock: Option<UnixStream>,
    /// When the link last moved: bytes read from the agent, or a 64 KiB
    /// piece of a chunk written towards it. Set by the readers and the
    /// relay, so a slow link whose chunks take longer than the stall
    /// time to pass is alive, while a dead one is noticed even when the
    /// main loop waits on it. Small frames (pings, acks) written do not
    /// count: they fit in the buffers of a link that is long dead, so a
    /// link that carries only those is alive by its answers (a pong per
    /// ping) alone.
    pub(super) heard: Arc<Mutex<Heard>>,
    /// The link timeout: a link silent this long is dead.
    pub(super) stall: Duration,
}

/// When a link last moved, and whether its reader is held up by the
/// coordinator itself (its queue full while the main loop is busy, or the
/// sender's relay waiting to write into the receiver's connection):
/// silence then is ours, not the link's.
pub(super) struct Heard {
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

pub(super) fn touch(h: &Mutex<Heard>) {
    h.lock().expect("heard").at = Instant::now();
}

/// Marks a link's reader held up by the coordinator (true) or reading
/// again (false); either way its silence counts from now.
pub(super) fn hold(h: &Mutex<Heard>, held: bool) {
    let mut h = h.lock().expect("heard");
    h.held = held;
    h.at = Instant::now();
}

impl Conn {
    pub(super) fn silent_for(&self) -> Duration {
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
    pub(super) fn send(&self, frame: Vec<u8>) -> Result<(), String> {
        let mut frame = frame;
        loop {
            match self.tx.send_timeout(frame, Duration::from_millis(500)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Disconnected(_)) => return Err("closed".into()),
                Err(SendTimeoutError::Timeout(f)) => {
                    if self.silent_for() > self.stall {
                        return Err(format!("link idle for {}s", self.stall.as_secs()));
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
pub(super) const OWN_SSH: [&str; 10] = [
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
pub(super) enum Via {
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
pub(super) fn open(a: &Agent, via: Via) -> Result<Opened, String> {
    match &a.host {
        Host::Local => {
            let s = UnixStream::connect(format!("{}/sock", a.dir))
                .map_err(|e| format!("connect {}: {e}", a.dir))?;
            socket_ends(s)
        }
        remote => {
            if let Via::Master = via {
                // Through this thread's agent on the host, if it has one.
                if let Some(h) = super::hosted::get(remote, &a.exe) {
                    return h.attach(&a.dir);
                }
            }
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

/// A unix socket as a connection's ends: a local agent's, or the
/// coordinator's end of a host agent's channel.
pub(super) fn socket_ends(s: UnixStream) -> Result<Opened, String> {
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

/// The widened pipes of an ssh child as a connection's ends.
pub(super) fn ssh_ends(mut c: Child) -> Opened {
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
pub(super) fn conn(o: Opened, queue: usize, relay_to: Option<&Conn>, stall: Duration) -> Conn {
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
        stall,
    }
}

/// What a connection's reader passes on: a chunk by its header (the relay
/// has already forwarded it), everything else decoded.
pub(super) enum In {
    /// A chunk the relay forwarded.
    Chunk(wire::ChunkHeader),
    Msg(Msg),
}

/// A connection's reader: every frame read is decoded and passed on. The
/// link is marked alive on every read that moved bytes, not only when a
/// frame is complete: a chunk that takes longer than the stall time to
/// arrive (a slow link, a low `--source-bwlimit`) comes over a live link.
pub(super) fn read_frames(r: File, tx: Tx<Result<In, String>>, heard: &Mutex<Heard>) {
    let mut r = crate::rsync::Counted {
        r,
        on_read: || touch(heard),
    };
    let stop = crate::rsync::read_frames(&mut r, |frame| pass_on(&tx, heard, &frame));
    ended(&tx, stop);
}

/// The sender's connection's reader: chunks go straight to the receiver's
/// connection (`rsync::relay`) and are passed on by header; while the
/// relay waits on the receiver, the sender's silence is not counted.
pub(super) fn relay_frames(
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
pub(super) fn pass_on(
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
pub(super) fn deliver(
    tx: &Tx<Result<In, String>>,
    heard: &Mutex<Heard>,
    item: In,
) -> Result<bool, String> {
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
pub(super) const CLOSED: &str = "connection closed";

/// Whether the ssh session of a connection that closed before the
/// greeting ended with `agent::GONE` (the far end found no agent) or
/// without our binary to run.
pub(super) fn bridge_says_gone(c: &mut Conn) -> bool {
    let Some(child) = c.child.as_mut() else {
        return false;
    };
    // The session closed: ssh exits a moment later.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            // Our binary missing there (127) means no agent runs from it
            // either: the host restarted and lost its /tmp.
            Ok(Some(status)) => {
                return matches!(status.code(), Some(crate::rsync::agent::GONE | 127))
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

/// Whether a local agent that could not be reached is gone for good: its
/// session dir or socket is missing, or its process is not running. Read
/// from the files, not by connecting: a connection would be taken for the
/// coordinator's own.
pub(super) fn local_agent_gone(a: &Agent) -> bool {
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
pub(super) fn ended(tx: &Tx<Result<In, String>>, stop: crate::rsync::Stop) {
    let why = match stop {
        crate::rsync::Stop::Handler => return,
        crate::rsync::Stop::Closed => CLOSED.to_string(),
        crate::rsync::Stop::Failed(e) => e,
    };
    let _ = tx.send(Err(why));
}
