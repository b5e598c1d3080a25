//! How an agent serves its coordinator: connections accepted and greeted
//! (ownership decides who may drive it), frames read and heartbeats
//! sent, the inactivity clock, and bandwidth pacing.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rsync::feed::Buffers;
use crate::rsync::link::Link;
use syncoid_rsync_core::ownership::{self, Admit};
use syncoid_rsync_core::transport::Pacer;
use syncoid_rsync_core::wire::{self, Msg, Owner};

/// What the coordinator last did, for the inactivity timeout.
pub(super) struct Clock {
    pub(super) last_heard: Mutex<Instant>,
}

impl Clock {
    fn touch(&self) {
        *self.last_heard.lock().expect("clock") = Instant::now();
    }
    fn idle(&self) -> Duration {
        self.last_heard.lock().expect("clock").elapsed()
    }
}

/// The coordinator was silent for the inactivity timeout.
pub(super) struct TimedOut;

/// Accepts coordinator connections until `done` says stop or the
/// coordinator has been silent for the timeout. Each connection must
/// first say Hello (read on its own thread, within `setup_wait`); the
/// owner in it is admitted or refused (`ownership::admit`: a coordinator
/// of another machine is refused while this agent's owner was heard
/// within `takeover_wait`). An admitted connection replaces the previous
/// one and goes to `handle` with its Hello; a refused one gets Busy and is
/// closed, and the current connection goes on untouched. When done,
/// returns the last connection: the agent holds it open until its session
/// dir is gone, so the coordinator sees it close only once the agent has
/// cleaned up.
pub(super) fn serve(
    listener: &UnixListener,
    clock: &Arc<Clock>,
    timeout: Duration,
    done: &dyn Fn() -> bool,
    handle: &dyn Fn(Link, Msg),
) -> Result<Option<Link>, TimedOut> {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let mut current: Option<Link> = None;
    let mut owner: Option<Owner> = None;
    // Each new connection comes back from its greeting thread with its
    // Hello, or without one (refused there, and cancelled).
    let (greeted_tx, greeted) = crossbeam_channel::unbounded::<(Link, Option<Msg>)>();
    // Connections whose Hello has not come yet, and since when.
    let mut pending: Vec<(Instant, Link)> = Vec::new();
    loop {
        if done() {
            return Ok(current);
        }
        if clock.idle() > timeout {
            eprintln!("no coordinator for {}s: giving up", timeout.as_secs());
            return Err(TimedOut);
        }
        while let Ok((s, hello)) = greeted.try_recv() {
            pending.retain(|(_, p)| !p.same(&s));
            let Some(hello) = hello else { continue };
            let Msg::Hello { owner: asker, .. } = &hello else {
                continue;
            };
            let asker = asker.clone();
            let heard = clock.idle();
            match ownership::admit(owner.as_ref(), heard, &asker, crate::rsync::takeover_wait()) {
                Admit::Refuse => {
                    let label = owner.as_ref().map(|o| o.label.clone()).unwrap_or_default();
                    eprintln!(
                        "refused {}: this transfer is driven by {label}, heard {:.1}s ago",
                        asker.label,
                        heard.as_secs_f64()
                    );
                    let busy = Msg::Busy {
                        label,
                        heard_ms: heard.as_millis() as u64,
                    };
                    let mut s = s;
                    let _ = s.write_all(&wire::encode(&busy));
                    s.cancel();
                    continue;
                }
                Admit::TakeOver => {
                    eprintln!(
                        "{} takes over from {} (heard {:.1}s ago)",
                        asker.label,
                        owner.as_ref().map(|o| o.label.as_str()).unwrap_or(""),
                        heard.as_secs_f64()
                    );
                    owner = Some(asker);
                }
                Admit::First => owner = Some(asker),
                Admit::Again | Admit::Tool => {}
            }
            clock.touch();
            eprintln!(
                "coordinator connected{}",
                if s.attached() {
                    " (ssh session attached)"
                } else {
                    ""
                }
            );
            // A new connection replaces the old one, even if the old
            // one is a half-dead ssh session that never sees its peer go.
            if let Some(old) = current.take() {
                old.cancel();
            }
            current = Some(s.clone());
            handle(s, hello);
        }
        pending.retain(|(since, s)| {
            let late = since.elapsed() > crate::rsync::setup_wait();
            if late {
                eprintln!(
                    "a connection said no hello within {:?}: closed",
                    crate::rsync::setup_wait()
                );
                s.cancel();
            }
            !late
        });
        match listener.accept() {
            Ok((s, _)) => {
                let s = match Link::accept(s) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("connection refused: {e}");
                        continue;
                    }
                };
                pending.push((Instant::now(), s.clone()));
                let tx = greeted_tx.clone();
                std::thread::spawn(move || {
                    let hello = greet(&s);
                    if hello.is_none() {
                        s.cancel();
                    }
                    let _ = tx.send((s, hello));
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A Hello is small: its owner's domain, run and label.
pub(super) const HELLO_MAX: usize = 4096;

/// Reads a connection's first frame, exactly (what follows stays unread
/// for the connection's reader), and returns it if it is a Hello. Anything
/// else gets an Error naming what was wrong (a version mismatch, say).
pub(super) fn greet(s: &Link) -> Option<Msg> {
    let mut r = s.clone();
    let mut frame = vec![0u8; 4];
    r.read_exact(&mut frame).ok()?;
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    let refuse = |msg: String| {
        eprintln!("connection refused: {msg}");
        let _ = s.clone().write_all(&wire::encode(&Msg::Error { msg }));
        None
    };
    if len == 0 || len > HELLO_MAX {
        return refuse(format!("a first frame of {len} bytes is not a hello"));
    }
    frame.resize(4 + len, 0);
    r.read_exact(&mut frame[4..]).ok()?;
    match wire::decode_frame(&frame) {
        Ok(m @ Msg::Hello { .. }) => Some(m),
        Ok(_) => refuse(format!(
            "the first message (type {}) was not a hello",
            frame[4]
        )),
        Err(e) => refuse(format!("protocol error: {e}")),
    }
}

/// A bandwidth limit shared by an agent's connections.
pub struct Paced {
    pacer: Option<Mutex<(Pacer, Instant)>>,
}

impl Paced {
    pub(super) fn new(bwlimit: u64) -> Paced {
        Paced {
            pacer: (bwlimit > 0).then(|| Mutex::new((Pacer::new(bwlimit), Instant::now()))),
        }
    }

    /// Writes `bytes` whole, in pieces no faster than the limit.
    pub(super) fn write(&self, w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
        self.put(bytes, |piece| w.write_all(piece))
    }

    /// Hands `bytes` to `put` whole, in pieces no faster than the limit.
    pub(super) fn put(
        &self,
        bytes: &[u8],
        mut put: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let Some(p) = &self.pacer else {
            return put(bytes);
        };
        let size = p.lock().expect("pacer").0.piece();
        for piece in bytes.chunks(size) {
            let wait = {
                let mut g = p.lock().expect("pacer");
                let now = g.1.elapsed();
                g.0.take(now, piece.len())
            };
            std::thread::sleep(wait);
            put(piece)?;
        }
        Ok(())
    }
}

pub(super) fn write_msg(w: &Mutex<Link>, m: &Msg) -> bool {
    w.lock()
        .map(|mut s| s.write_all(&wire::encode(m)).is_ok())
        .unwrap_or(false)
}

/// Messages read ahead of their handling: the socket keeps being read
/// (sshd keeps decrypting) while a chunk is written to zfs receive.
pub(super) const READ_AHEAD: usize = 4;

/// Calls `f` with `first` (the Hello `serve` read), then reads messages
/// from `s` until it closes or fails and calls `f` for each, in order, on
/// this thread (a reader thread reads up to `READ_AHEAD`
/// messages ahead, into buffers from `spare` when it has them).
pub(super) fn read_loop(
    mut s: Link,
    first: Msg,
    spare: Option<Arc<Buffers>>,
    clock: &Arc<Clock>,
    writer: &Arc<Mutex<Link>>,
    beat: Duration,
    mut f: impl FnMut(Msg) -> bool,
) {
    let (tx, rx) = crossbeam_channel::bounded::<Msg>(READ_AHEAD);
    let touched = clock.clone();
    let shut = s.clone();
    let w = writer.clone();
    let reader = std::thread::spawn(move || {
        let stop = crate::rsync::read_msgs(&mut s, spare, |m| {
            touched.touch();
            // Answered here, not in turn: the coordinator hears from a
            // live agent even while the handler waits on zfs (a receive
            // committing the end of its stream).
            if let Msg::Ping { nonce } = m {
                write_msg(&w, &Msg::Pong { nonce });
                return true;
            }
            tx.send(m).is_ok()
        });
        if let crate::rsync::Stop::Failed(e) = stop {
            eprintln!("{e}");
        }
    });
    // Beats: a Pong with nonce 0 (pings count from 1) at the ping rate,
    // sent only while the handler is busy (waiting on zfs). When zfs
    // receive stops taking writes the read-ahead fills, then the socket,
    // and the coordinator's pings wait behind chunks no one reads; the
    // beats tell it this agent and its link are alive. An agent that is
    // idle sends none: if it waits for data that does not come, the link
    // towards it is stuck (a TCP connection in retransmission backoff
    // after an outage can be for minutes, while the other direction
    // works), and the coordinator must see silence and reconnect. A
    // frozen agent or a dead link sends none either.
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop_beats, beats_stopped) = crossbeam_channel::bounded::<()>(0);
    let (w, working) = (writer.clone(), busy.clone());
    let beats = std::thread::spawn(move || {
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            beats_stopped.recv_timeout(beat)
        {
            if working.load(std::sync::atomic::Ordering::SeqCst)
                && !write_msg(&w, &Msg::Pong { nonce: 0 })
            {
                break;
            }
        }
    });
    for m in std::iter::once(first).chain(rx.iter()) {
        busy.store(true, std::sync::atomic::Ordering::SeqCst);
        let go_on = f(m);
        busy.store(false, std::sync::atomic::Ordering::SeqCst);
        if !go_on {
            // Done with this connection: unblock the reader.
            shut.cancel();
            break;
        }
    }
    drop(rx);
    drop(stop_beats);
    let _ = reader.join();
    let _ = beats.join();
}
