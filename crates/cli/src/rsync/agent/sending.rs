//! The sender agent: the driver of `core::session::sender`. A producer
//! thread cuts `zfs send`'s output into the session's spool; each
//! connection writes what the session says goes next.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::host::StderrTail;
use crate::rsync::link::Link;
use syncoid_rsync_core::session::sender::{self, Answer, Next};
use syncoid_rsync_core::transport::Chunker;
use syncoid_rsync_core::wire::{self, Chunk, Msg};

/// The sender session and the condition its producer and connections
/// wait on (room in the spool, a Want, an Ack, the end).
pub(super) type Shared = (Mutex<sender::Session>, Condvar);

/// Runs the sender; returns its exit code and the connection to hold
/// until cleanup is done.
pub(super) fn run_sender(
    o: &StartOpts,
    listener: UnixListener,
    mut child: Child,
) -> (i32, Vec<Link>) {
    let door = Door::new(o.timing());
    let beat = o.timing().heartbeat;
    let shared: Arc<Shared> = Arc::new((
        Mutex::new(sender::Session::new(o.spool_size)),
        Condvar::new(),
    ));
    let stdout = child.stdout.take().expect("piped stdout");
    let tail = StderrTail::drain(child.stderr.take().expect("piped stderr"), false);
    let paced = Arc::new(Paced::new(o.bwlimit));
    let producer = {
        let shared = shared.clone();
        let (chunk_size, level) = (o.chunk_size, o.compress_level);
        std::thread::spawn(move || produce(stdout, child, tail, chunk_size, level, &shared))
    };
    let done = || shared.0.lock().expect("state").bye();
    let served = serve(&listener, &door, &done, &|s, hello, id| {
        // Each lane (one of a stream's connections) has its current one.
        let lane = match &hello {
            Msg::Hello { lane, .. } => *lane,
            _ => 0,
        };
        let generation = shared.0.lock().expect("state").connected_on(lane);
        shared.1.notify_all();
        let writer = Arc::new(Mutex::new(s.clone()));
        let (shared2, writer2, door2) = (shared.clone(), writer.clone(), door.clone());
        std::thread::spawn(move || {
            read_loop(s, id, hello, None, &door2, &writer2, beat, |m| {
                sender_msg(m, generation, &shared2, &writer2)
            });
        });
        let shared3 = shared.clone();
        let paced = paced.clone();
        std::thread::spawn(move || push_chunks(generation, &shared3, &writer, &paced));
    });
    let Ok(last) = served else {
        // Inactivity: stop zfs send gracefully; the producer then ends.
        shared.0.lock().expect("state").stop();
        shared.1.notify_all();
        kill_group_child();
        return (3, Vec::new());
    };
    let _ = producer.join();
    (0, last)
}

/// zfs send's pid, so a timeout can end it.
pub(super) static CHILD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

pub(super) fn kill_group_child() {
    let pid = CHILD_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signalling the zfs process this agent started.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

pub(super) fn produce(
    mut out: impl Read,
    mut child: Child,
    tail: StderrTail,
    chunk_size: usize,
    level: i32,
    shared: &Shared,
) {
    CHILD_PID.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let mut chunker = Chunker::new(chunk_size);
    // Chunks that do not shrink (already compressed or encrypted data)
    // make the next few skip zstd, which then tries again.
    let mut skip = 0u32;
    let mut compress = |c: &mut Chunk| {
        if level == 0 {
            return;
        }
        if skip > 0 {
            skip -= 1;
        } else if !c.compress(level) {
            skip = 16;
        }
    };
    let mut spool = |st: &mut sender::Session, mut c: Chunk| {
        compress(&mut c);
        st.produced(c);
    };
    loop {
        {
            let mut st = shared.0.lock().expect("state");
            while !st.has_room() && !st.bye() {
                st = shared.1.wait(st).expect("state");
            }
            if st.bye() {
                return;
            }
        }
        // zfs send's bytes go straight into the chunk (read_to_end retries
        // interrupted reads; any other error ends the stream like EOF, and
        // zfs send's status tells the receiver what happened).
        match chunker.fill(&mut out) {
            Ok(Some(c)) => {
                spool(&mut shared.0.lock().expect("state"), c);
                shared.1.notify_all();
            }
            Ok(None) | Err(_) => break,
        }
    }
    let status = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
    let (last, end) = chunker.finish(status, tail.finish());
    let mut st = shared.0.lock().expect("state");
    if let Some(c) = last {
        spool(&mut st, c);
    }
    eprintln!(
        "zfs send ended: status {status}, {} bytes in {} chunks",
        end.total_len, end.chunks
    );
    st.send_ended(end);
    shared.1.notify_all();
}

/// Carries out the sender session's answer to message `m` on connection
/// `generation`; false ends the connection.
pub(super) fn sender_msg(m: Msg, generation: u64, shared: &Shared, w: &Mutex<Link>) -> bool {
    let answer = shared.0.lock().expect("state").on_msg(generation, &m);
    match answer {
        Answer::Stale => false,
        // Keep reading even if the answer cannot be written: a Bye may
        // already be waiting behind the Hello.
        Answer::Reply(reply) => {
            write_msg(w, &reply);
            true
        }
        Answer::Fail(reply) => {
            write_msg(w, &reply);
            false
        }
        Answer::Go => {
            shared.1.notify_all();
            true
        }
    }
}

/// Writes what the sender session says connection `generation` sends
/// next, until it says stop or the connection fails.
pub(super) fn push_chunks(generation: u64, shared: &Shared, w: &Mutex<Link>, paced: &Paced) {
    loop {
        let frame = {
            let mut st = shared.0.lock().expect("state");
            loop {
                match st.next(generation) {
                    Next::Stop => return,
                    Next::Wait => {
                        st = shared
                            .1
                            .wait_timeout(st, Duration::from_millis(500))
                            .expect("state")
                            .0;
                    }
                    Next::Chunk(c) => break Out::Chunk(c),
                    Next::Frame(m) => break Out::Frame(wire::encode(&m)),
                }
            }
        };
        // A chunk goes out as its header and then its payload, straight
        // from the spool: shared, not copied into a frame, and handed to
        // the kernel by reference (`Link::write_pages`; the spool keeps it
        // unchanged until the receiver has it).
        let wrote = w
            .lock()
            .map(|mut s| match &frame {
                Out::Chunk(c) => {
                    paced.write(&mut *s, &c.head()).is_ok()
                        && paced.put(&c.data, |piece| s.write_pages(piece)).is_ok()
                }
                Out::Frame(f) => paced.write(&mut *s, f).is_ok(),
            })
            .unwrap_or(false);
        if !wrote {
            return;
        }
    }
}

/// What the sender writes next: a chunk from the spool, or a message.
pub(super) enum Out {
    Chunk(Arc<Chunk>),
    Frame(Vec<u8>),
}
