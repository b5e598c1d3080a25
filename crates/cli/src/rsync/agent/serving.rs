//! How an agent serves its coordinator: connections accepted, greeted and
//! read, heartbeats sent, and bandwidth pacing. Who may drive the agent,
//! how long it waits, and when it beats are the door's rules
//! (`core::session::gate`).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rsync::feed::Buffers;
use crate::rsync::link::Link;
use syncoid_rsync_core::session::coordinator::Timing;
use syncoid_rsync_core::session::gate::{self, ConnId, Due, Gate, Verdict};
use syncoid_rsync_core::transport::Pacer;
use syncoid_rsync_core::wire::{self, Msg};

/// The agent's door (`core::session::gate`) on the real clock: who drives
/// the agent, and how long it waits for them.
pub(super) struct Door {
    gate: Mutex<Gate>,
    epoch: Instant,
}

impl Door {
    /// The door of an agent with these timing rules.
    pub(super) fn new(timing: Timing) -> Arc<Door> {
        Arc::new(Door {
            gate: Mutex::new(Gate::new(timing.waits(), Duration::ZERO)),
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().expect("gate")
    }

    /// A message came on connection `id`.
    fn heard(&self, id: ConnId) {
        let now = self.now();
        self.gate().heard(id, now);
    }
}

/// The coordinator was silent for the inactivity timeout.
pub(super) struct TimedOut;

/// Accepts coordinator connections until `done` says stop or the door
/// says give up. Each connection's first frame is read on its own thread
/// (`greet`); the door admits or refuses it. An admitted connection
/// replaces those the door names (its lane's earlier one, or all of an
/// old owner's) and goes to `handle` with its Hello and id; a refused one
/// gets the door's answer (Busy, or an Error) and is closed. When done,
/// returns the current connections: the agent holds them open until its
/// session dir is gone, so the coordinator sees them close only once the
/// agent has cleaned up.
pub(super) fn serve(
    listener: &UnixListener,
    door: &Arc<Door>,
    done: &dyn Fn() -> bool,
    handle: &dyn Fn(Link, Msg, ConnId),
) -> Result<Vec<Link>, TimedOut> {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    // The current connections (one per lane), by id.
    let mut current: std::collections::BTreeMap<ConnId, Link> = Default::default();
    // Each new connection comes back from its greeting thread with its
    // first frame, or why there was none.
    let (greeted_tx, greeted) =
        crossbeam_channel::unbounded::<(ConnId, Link, Result<Msg, String>)>();
    // Connections whose Hello has not come yet.
    let mut pending: Vec<(ConnId, Link)> = Vec::new();
    let mut next_id: ConnId = 0;
    loop {
        if done() {
            return Ok(current.into_values().collect());
        }
        let now = door.now();
        for due in door.gate().tick(now) {
            match due {
                Due::Close(id, why) => {
                    eprintln!("{why}");
                    pending.retain(|(p, s)| {
                        *p != id || {
                            s.cancel();
                            false
                        }
                    });
                }
                Due::GiveUp(why) => {
                    eprintln!("{why}");
                    return Err(TimedOut);
                }
            }
        }
        while let Ok((id, s, first)) = greeted.try_recv() {
            pending.retain(|(p, _)| *p != id);
            let now = door.now();
            let verdict = door.gate().hello(id, first.clone(), now);
            match verdict {
                Verdict::Refuse { answer, note } => {
                    eprintln!("{note}");
                    let _ = s.clone().write_all(&wire::encode(&answer));
                    s.cancel();
                }
                Verdict::Admit { replaces, note } => {
                    let attached = if s.attached() {
                        " (ssh session attached)"
                    } else {
                        ""
                    };
                    eprintln!("coordinator connected{attached}: {note}");
                    // The connection replaced, even if it is a half-dead
                    // ssh session that never sees its peer go.
                    for old in replaces {
                        if let Some(old) = current.remove(&old) {
                            old.cancel();
                        }
                    }
                    current.insert(id, s.clone());
                    let hello = first.expect("an admitted connection said hello");
                    handle(s, hello, id);
                }
            }
        }
        match listener.accept() {
            Ok((s, _)) => {
                let s = match Link::accept(s) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("connection refused: {e}");
                        continue;
                    }
                };
                next_id += 1;
                let id = next_id;
                door.gate().accepted(id, door.now());
                pending.push((id, s.clone()));
                let tx = greeted_tx.clone();
                std::thread::spawn(move || {
                    let first = greet(&s);
                    let _ = tx.send((id, s, first));
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads a connection's first frame, exactly (what follows stays unread
/// for the connection's reader), and decodes it; the door judges it.
pub(super) fn greet(s: &Link) -> Result<Msg, String> {
    let mut r = s.clone();
    let mut frame = vec![0u8; 4];
    r.read_exact(&mut frame)
        .map_err(|e| format!("no first frame: {e}"))?;
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    Gate::first_frame(len)?;
    frame.resize(4 + len, 0);
    r.read_exact(&mut frame[4..])
        .map_err(|e| format!("no first frame: {e}"))?;
    wire::decode_frame(&frame).map_err(|e| e.to_string())
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
#[allow(clippy::too_many_arguments)]
pub(super) fn read_loop(
    mut s: Link,
    id: ConnId,
    first: Msg,
    spare: Option<Arc<Buffers>>,
    door: &Arc<Door>,
    writer: &Arc<Mutex<Link>>,
    beat: Duration,
    mut f: impl FnMut(Msg) -> bool,
) {
    let (tx, rx) = crossbeam_channel::bounded::<Msg>(READ_AHEAD);
    let touched = door.clone();
    let shut = s.clone();
    let w = writer.clone();
    let reader = std::thread::spawn(move || {
        let stop = crate::rsync::read_msgs(&mut s, spare, |m| {
            touched.heard(id);
            // Answered here, not in turn: the coordinator hears from a
            // live agent even while the handler waits on zfs (a receive
            // committing the end of its stream).
            if let Some(answer) = gate::answer_at_once(&m) {
                write_msg(&w, &answer);
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
            let busy = working.load(std::sync::atomic::Ordering::SeqCst);
            if let Some(beat) = gate::beats(busy) {
                if !write_msg(&w, &beat) {
                    break;
                }
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
