//! The receiver agent: the driver of `core::session::receiver`. Verified
//! chunks are fed to `zfs receive -s` without a copy (vmsplice), under
//! the state lock.

use std::borrow::Cow;
use std::os::unix::net::UnixListener;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::host::StderrTail;
use crate::rsync::feed::{Buffers, Feed};
use crate::rsync::link::Link;
use syncoid_rsync_core::session::receiver::{self, Refused, Step};
use syncoid_rsync_core::wire::Msg;

pub(super) struct RecvState {
    session: receiver::Session,
    paced: Paced,
}

/// Runs the receiver; returns its exit code and the connection to hold
/// until cleanup is done.
pub(super) fn run_receiver(
    o: &StartOpts,
    listener: UnixListener,
    mut child: Child,
) -> (i32, Vec<Link>) {
    CHILD_PID.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let door = Door::new(o.timing());
    let beat = o.timing().heartbeat;
    let stdin = Arc::new(Mutex::new(child.stdin.take().map(Feed::new)));
    let buffers = Arc::new(Buffers::default());
    let tail = Arc::new(Mutex::new(Some(StderrTail::drain(
        child.stderr.take().expect("piped stderr"),
        false,
    ))));
    let child = Arc::new(Mutex::new(child));
    let state = Arc::new(Mutex::new(RecvState {
        session: receiver::Session::with_window(o.window),
        paced: Paced::new(o.bwlimit),
    }));
    let done = || state.lock().expect("state").session.bye();
    let served = serve(&listener, &door, &done, &|s, hello, id| {
        let writer = Arc::new(Mutex::new(s.clone()));
        let (state, stdin, child, tail, door, buffers) = (
            state.clone(),
            stdin.clone(),
            child.clone(),
            tail.clone(),
            door.clone(),
            buffers.clone(),
        );
        // Chunks are checked and fed under the state lock, so a connection
        // that lingers after being replaced can never feed out of order or
        // twice; it ends at its next socket operation.
        std::thread::spawn(move || {
            let spare = Some(buffers.clone());
            read_loop(s, id, hello, spare, &door, &writer, beat, |m| {
                let zfs = Zfs {
                    stdin: &stdin,
                    child: &child,
                    tail: &tail,
                    buffers: &buffers,
                };
                receiver_msg(m, &state, &zfs, &writer)
            });
        });
    });
    let Ok(last) = served else {
        // End zfs receive gracefully: at end of input it keeps what it
        // verified as resumable state (-s). Only if it hangs is it killed.
        stdin.lock().expect("stdin").take();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.lock().expect("child").try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    kill_group_child();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        return (3, Vec::new());
    };
    (0, last)
}

/// The receiver's zfs receive: its stdin, the process, its stderr, and the
/// buffers its stdin may still be reading from.
pub(super) struct Zfs<'a> {
    stdin: &'a Mutex<Option<Feed<std::process::ChildStdin>>>,
    child: &'a Mutex<Child>,
    tail: &'a Mutex<Option<StderrTail>>,
    buffers: &'a Buffers,
}

/// Carries out what the receiver session (`session::receiver`, which
/// holds every rule) says to do with message `m`; false ends the
/// connection. Under the state lock, so a connection that lingers after
/// being replaced can never feed out of order or twice.
pub(super) fn receiver_msg(m: Msg, state: &Mutex<RecvState>, zfs: &Zfs, w: &Mutex<Link>) -> bool {
    let mut st = state.lock().expect("state");
    let mut m = m;
    loop {
        match handle(m, &mut st, zfs) {
            Handled::Again(next) => m = next,
            Handled::Reply(reply) => {
                drop(st);
                write_msg(w, &reply);
                return true;
            }
            Handled::Fail(reply) => {
                drop(st);
                write_msg(w, &reply);
                return false;
            }
            Handled::Close => return false,
            Handled::Nothing => return true,
        }
    }
}

/// What handling one message came to.
enum Handled {
    /// Handle this one next (a held chunk that is next, an End that
    /// waited), still under the state lock.
    Again(Msg),
    Reply(Msg),
    Fail(Msg),
    Close,
    Nothing,
}

fn handle(m: Msg, st: &mut RecvState, zfs: &Zfs) -> Handled {
    let RecvState { session, paced } = st;
    let (mut step, fed) = match session.on_msg(&m) {
        Step::Feed(bytes) => {
            let Msg::Chunk(c) = &m else {
                unreachable!("the session feeds chunks only")
            };
            let end = feed(&bytes, paced, zfs);
            let unpacked = match bytes {
                Cow::Owned(v) => Some(v),
                Cow::Borrowed(_) => None,
            };
            (session.fed(c, end.is_some()), Some((end, unpacked)))
        }
        Step::Hold => {
            let Msg::Chunk(c) = m else {
                unreachable!("the session holds chunks only")
            };
            session.hold(c);
            return Handled::Nothing;
        }
        step => (step.detach(), None),
    };
    if let Msg::Chunk(c) = m {
        let frame = c.data.into_buffer();
        match fed {
            // The memory zfs receive reads from (the frame, or the chunk
            // unpacked) is kept unchanged until it has read it all (see
            // `feed`), then reused for later frames.
            Some((Some(end), Some(unpacked))) => {
                zfs.buffers.give(end, unpacked);
                zfs.buffers.give(0, frame);
            }
            Some((Some(end), None)) => zfs.buffers.give(end, frame),
            // The pipe may hold part of it: never used again.
            Some((None, Some(unpacked))) => std::mem::forget(unpacked),
            Some((None, None)) => std::mem::forget(frame),
            None => zfs.buffers.give(0, frame),
        }
    }
    loop {
        step = match step {
            Step::FinishZfs => {
                let (status, stderr) = finish(zfs);
                session.zfs_ended(status, stderr)
            }
            Step::Reply(reply) => {
                if let Some(Refused::Corrupt { seq }) = session.take_refused() {
                    eprintln!("chunk {seq} failed verification: asking for it again");
                }
                return Handled::Reply(reply);
            }
            Step::Fail(reply) => return Handled::Fail(reply),
            Step::Again(next) => return Handled::Again(next),
            Step::Close => return Handled::Close,
            Step::Nothing => return Handled::Nothing,
            Step::Feed(_) | Step::Hold => unreachable!("handled above"),
        };
    }
}

/// Writes a verified chunk's stream bytes to zfs receive: how far its
/// input has been written, or None when it no longer takes input.
pub(super) fn feed(bytes: &[u8], paced: &mut Paced, zfs: &Zfs) -> Option<u64> {
    let mut stdin = zfs.stdin.lock().expect("stdin");
    let f = stdin.as_mut()?;
    let r = paced.put(bytes, |piece| f.put(piece));
    f.report(zfs.buffers);
    r.ok().map(|()| f.written)
}

pub(super) fn finish(zfs: &Zfs) -> (i32, String) {
    zfs.stdin.lock().expect("stdin").take();
    let status = zfs
        .child
        .lock()
        .expect("child")
        .wait()
        .ok()
        .and_then(|s| s.code())
        .unwrap_or(-1);
    let stderr = zfs
        .tail
        .lock()
        .expect("tail")
        .take()
        .map(|t| t.finish())
        .unwrap_or_default();
    (status, stderr)
}
