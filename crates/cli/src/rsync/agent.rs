//! The `--rsync` agents (`syncoid-rsync agent ...`): a sender that owns
//! `zfs send` and a receiver that owns `zfs receive -s`, each detached from
//! any ssh connection and serving the coordinator over a unix socket in its
//! session directory. `agent bridge DIR` (what the coordinator runs through
//! ssh) hands its stdin and stdout to the agent over that socket, so the
//! agent reads and writes sshd's pipes itself; `agent list` and `agent stop`
//! find and end agents. An agent that hears nothing from a coordinator for
//! its inactivity timeout stops its zfs process and removes its directory.

use std::borrow::Cow;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::feed::{Buffers, Feed};
use super::link::{self, Link};
use super::session::{self, Marker};
use crate::host::StderrTail;
use syncoid_rsync_core::ownership::{self, Admit};
use syncoid_rsync_core::session::receiver::{self, Refused, Step};
use syncoid_rsync_core::session::sender::{self, Answer, Next};
use syncoid_rsync_core::transport::{Chunker, Pacer};
use syncoid_rsync_core::wire::{self, Chunk, Msg, Owner, Role};

pub struct StartOpts {
    pub role: Role,
    pub key: String,
    pub timeout: Duration,
    pub chunk_size: usize,
    pub spool_size: usize,
    /// zstd level for chunks (0: raw).
    pub compress_level: i32,
    /// Bytes per second (0: unlimited): the sender's socket writes, the
    /// receiver's feeding of zfs receive.
    pub bwlimit: u64,
    /// `--attach`: once the session dir is printed, this process becomes
    /// the agent's first connection (as `agent bridge` does), so starting
    /// and connecting cost one ssh session, not two.
    pub attach: bool,
    pub argv: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: syncoid-rsync agent start send|receive --key KEY --timeout SECS [--attach] [--chunk-size N] [--spool-size N] [--compress-level N] [--bwlimit BYTES/S] -- ZFS-ARGV...\n\
         \x20      syncoid-rsync agent bridge DIR | list | stop DIR [--owner DOMAIN:RUN:LABEL] | sweep"
    );
    std::process::exit(64);
}

/// `agent bridge`'s exit status when the agent is gone for good: its
/// session dir does not exist, or nothing listens on its socket (the
/// agent died or ended; a host that rebooted shows either).
pub const GONE: i32 = 69;

/// `syncoid-rsync agent ...`
pub fn main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("start") => match parse_start(&args[1..]) {
            Some(o) => start(o),
            None => usage(),
        },
        Some("bridge") if args.len() == 2 => bridge(&args[1]),
        Some("list") => {
            for (dir, m) in session::list() {
                let line = serde_json::json!({
                    "dir": dir, "role": m.role, "key": m.key, "pid": m.pid, "alive": session::alive(m.pid), "wire": m.wire
                });
                println!("{line}");
            }
            0
        }
        Some("stop") if args.len() >= 2 => stop(&args[1..]),
        Some("sweep") => {
            println!("{}", session::sweep());
            0
        }
        _ => usage(),
    }
}

fn parse_start(args: &[String]) -> Option<StartOpts> {
    let role = match args.first()?.as_str() {
        "send" => Role::Sender,
        "receive" => Role::Receiver,
        _ => return None,
    };
    let sep = args.iter().position(|a| a == "--")?;
    let mut o = StartOpts {
        role,
        key: String::new(),
        timeout: Duration::from_secs(3600),
        chunk_size: 1 << 20,
        spool_size: 32 << 20,
        compress_level: 0,
        bwlimit: 0,
        attach: false,
        argv: args[sep + 1..].to_vec(),
    };
    let mut i = 1;
    while i < sep {
        if args[i] == "--attach" {
            o.attach = true;
            i += 1;
            continue;
        }
        let v = args.get(i + 1)?;
        match args[i].as_str() {
            "--key" => o.key = v.clone(),
            "--timeout" => o.timeout = Duration::from_secs(v.parse().ok()?),
            "--chunk-size" => o.chunk_size = v.parse().ok()?,
            "--spool-size" => o.spool_size = v.parse().ok()?,
            "--compress-level" => o.compress_level = v.parse().ok()?,
            "--bwlimit" => o.bwlimit = v.parse().ok()?,
            _ => return None,
        }
        i += 2;
    }
    (!o.argv.is_empty() && !o.key.is_empty()).then_some(o)
}

/// Creates the session, detaches, and prints the session directory once
/// the agent listens.
fn start(o: StartOpts) -> i32 {
    let attach = o.attach;
    let bin = session::own_bin_dir();
    if let Some(b) = &bin {
        session::touch(b);
    }
    session::sweep();
    let dir = match session::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("agent: {e}");
            return 1;
        }
    };
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two close-on-exec descriptors (the agent's zfs
    // child must not inherit the ready pipe, or the starter never sees EOF);
    // we are single-threaded here, so
    // fork is safe; the child only calls async-signal-safe functions
    // before it becomes the agent process proper.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            eprintln!("agent: pipe failed");
            return 1;
        }
        match libc::fork() {
            -1 => {
                eprintln!("agent: fork failed");
                return 1;
            }
            0 => {
                libc::close(fds[0]);
                libc::setsid();
                match libc::fork() {
                    -1 => libc::_exit(1),
                    0 => {}
                    _ => libc::_exit(0),
                }
                let code = daemon(o, &dir, bin.as_deref(), fds[1]);
                libc::_exit(code);
            }
            child => {
                libc::close(fds[1]);
                let mut status = 0;
                libc::waitpid(child, &mut status, 0);
            }
        }
    }
    // SAFETY: fds[0] is the read end we own.
    let mut ready = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    let mut msg = String::new();
    let _ = ready.read_to_string(&mut msg);
    if msg.trim() == "ready" {
        println!("{}", dir.display());
        if attach {
            let _ = std::io::stdout().flush();
            return bridge(&dir.display().to_string());
        }
        0
    } else {
        eprintln!("agent: failed to start: {}", msg.trim());
        session::remove(&dir);
        1
    }
}

/// `bin`: the copy of the binary this agent runs from, if any.
fn daemon(o: StartOpts, dir: &Path, bin: Option<&Path>, ready_fd: i32) -> i32 {
    // SAFETY: ready_fd is the write end of our pipe.
    let mut ready = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(ready_fd) };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"));
    if let Ok(log) = &log {
        use std::os::fd::AsRawFd;
        null_stdin_stdout();
        // SAFETY: our own stderr onto the log file we opened.
        unsafe {
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
    let fail = |ready: &mut std::fs::File, msg: String| {
        let _ = writeln!(ready, "{msg}");
        session::remove(dir);
        1
    };
    let listener = match UnixListener::bind(dir.join("sock")) {
        Ok(l) => l,
        Err(e) => return fail(&mut ready, format!("bind: {e}")),
    };
    let marker = Marker {
        pid: std::process::id(),
        role: if o.role == Role::Sender {
            "send"
        } else {
            "receive"
        }
        .into(),
        key: o.key.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        bin: bin.map(|b| b.display().to_string()),
        wire: wire::VERSION,
    };
    if let Err(e) = session::write_marker(dir, &marker) {
        return fail(&mut ready, e);
    }
    let child = Command::new(&o.argv[0])
        .args(&o.argv[1..])
        .stdin(if o.role == Role::Receiver {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if o.role == Role::Sender {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return fail(&mut ready, format!("cannot start {}: {e}", o.argv[0])),
    };
    // A chunk passes to zfs receive (or comes from zfs send) in one write
    // instead of sixteen.
    if let Some(p) = &child.stdout {
        crate::transfer::widen_pipe(p);
    }
    if let Some(p) = &child.stdin {
        crate::transfer::widen_pipe(p);
    }
    let _ = writeln!(ready, "ready");
    drop(ready);
    eprintln!(
        "agent {} pid {} serving {}: {:?}",
        marker.role,
        marker.pid,
        dir.display(),
        o.argv
    );
    let (code, last) = match o.role {
        Role::Sender => run_sender(&o, listener, child),
        _ => run_receiver(&o, listener, child),
    };
    eprintln!("agent exiting with {code}");
    // The copy it ran from was used until now (see session::BIN_STALE).
    if let Some(b) = &marker.bin {
        session::touch(Path::new(b));
    }
    session::remove(dir);
    crate::log_rusage(&marker.role);
    // Only now may the coordinator see the connection close: the session
    // directory is gone.
    drop(last);
    code
}

/// What the coordinator last did, for the inactivity timeout.
struct Clock {
    last_heard: Mutex<Instant>,
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
struct TimedOut;

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
fn serve(
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
            match ownership::admit(owner.as_ref(), heard, &asker, super::takeover_wait()) {
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
            let late = since.elapsed() > super::setup_wait();
            if late {
                eprintln!(
                    "a connection said no hello within {:?}: closed",
                    super::setup_wait()
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
const HELLO_MAX: usize = 4096;

/// Reads a connection's first frame, exactly (what follows stays unread
/// for the connection's reader), and returns it if it is a Hello. Anything
/// else gets an Error naming what was wrong (a version mismatch, say).
fn greet(s: &Link) -> Option<Msg> {
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
    fn new(bwlimit: u64) -> Paced {
        Paced {
            pacer: (bwlimit > 0).then(|| Mutex::new((Pacer::new(bwlimit), Instant::now()))),
        }
    }

    /// Writes `bytes` whole, in pieces no faster than the limit.
    fn write(&self, w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
        self.put(bytes, |piece| w.write_all(piece))
    }

    /// Hands `bytes` to `put` whole, in pieces no faster than the limit.
    fn put(
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

fn write_msg(w: &Mutex<Link>, m: &Msg) -> bool {
    w.lock()
        .map(|mut s| s.write_all(&wire::encode(m)).is_ok())
        .unwrap_or(false)
}

/// Messages read ahead of their handling: the socket keeps being read
/// (sshd keeps decrypting) while a chunk is written to zfs receive.
const READ_AHEAD: usize = 4;

/// Calls `f` with `first` (the Hello `serve` read), then reads messages
/// from `s` until it closes or fails and calls `f` for each, in order, on
/// this thread (a reader thread reads up to `READ_AHEAD`
/// messages ahead, into buffers from `spare` when it has them).
fn read_loop(
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
        let stop = super::read_msgs(&mut s, spare, |m| {
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
        if let super::Stop::Failed(e) = stop {
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

/// The sender session and the condition its producer and connections
/// wait on (room in the spool, a Want, an Ack, the end).
type Shared = (Mutex<sender::Session>, Condvar);

/// Runs the sender; returns its exit code and the connection to hold
/// until cleanup is done.
fn run_sender(o: &StartOpts, listener: UnixListener, mut child: Child) -> (i32, Option<Link>) {
    let clock = Arc::new(Clock {
        last_heard: Mutex::new(Instant::now()),
    });
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
    let timeout = o.timeout;
    let done = || shared.0.lock().expect("state").bye();
    let served = serve(&listener, &clock, timeout, &done, &|s, hello| {
        let generation = shared.0.lock().expect("state").connected();
        shared.1.notify_all();
        let writer = Arc::new(Mutex::new(s.clone()));
        let (shared2, writer2, clock2) = (shared.clone(), writer.clone(), clock.clone());
        std::thread::spawn(move || {
            read_loop(s, hello, None, &clock2, &writer2, super::heartbeat(), |m| {
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
        return (3, None);
    };
    let _ = producer.join();
    (0, last)
}

/// zfs send's pid, so a timeout can end it.
static CHILD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn kill_group_child() {
    let pid = CHILD_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signalling the zfs process this agent started.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

fn produce(
    mut out: impl Read,
    mut child: Child,
    tail: StderrTail,
    chunk_size: usize,
    level: i32,
    shared: &Shared,
) {
    CHILD_PID.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let mut chunker = Chunker::new(chunk_size);
    let fault = fault();
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
        if matches!(&fault, Some((k, seq)) if k == "spool" && *seq == c.seq) {
            c.data[0] ^= 0xff;
        }
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
fn sender_msg(m: Msg, generation: u64, shared: &Shared, w: &Mutex<Link>) -> bool {
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

/// Test hook, `SYNCOID_RSYNC_FAULT=wire:SEQ` or `spool:SEQ`: damage chunk
/// SEQ once on the wire, or for good in the spool (after it was hashed),
/// to prove detection.
fn fault() -> Option<(String, u64)> {
    let v = std::env::var("SYNCOID_RSYNC_FAULT").ok()?;
    let (kind, seq) = v.split_once(':')?;
    Some((kind.to_string(), seq.parse().ok()?))
}

/// Writes what the sender session says connection `generation` sends
/// next, until it says stop or the connection fails.
fn push_chunks(generation: u64, shared: &Shared, w: &Mutex<Link>, paced: &Paced) {
    let fault = fault();
    static WIRE_FAULT_DONE: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
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
                    Next::Chunk(c) => {
                        let damage = matches!(&fault, Some((k, seq)) if k == "wire" && *seq == c.seq)
                            && !WIRE_FAULT_DONE.swap(true, std::sync::atomic::Ordering::SeqCst);
                        if damage {
                            let mut bad = Chunk::clone(&c);
                            bad.data[0] ^= 0xff;
                            break Out::Chunk(Arc::new(bad));
                        }
                        break Out::Chunk(c);
                    }
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
enum Out {
    Chunk(Arc<Chunk>),
    Frame(Vec<u8>),
}

struct RecvState {
    session: receiver::Session,
    paced: Paced,
}

/// Runs the receiver; returns its exit code and the connection to hold
/// until cleanup is done.
fn run_receiver(o: &StartOpts, listener: UnixListener, mut child: Child) -> (i32, Option<Link>) {
    CHILD_PID.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let clock = Arc::new(Clock {
        last_heard: Mutex::new(Instant::now()),
    });
    let stdin = Arc::new(Mutex::new(child.stdin.take().map(Feed::new)));
    let buffers = Arc::new(Buffers::default());
    let tail = Arc::new(Mutex::new(Some(StderrTail::drain(
        child.stderr.take().expect("piped stderr"),
        false,
    ))));
    let child = Arc::new(Mutex::new(child));
    let state = Arc::new(Mutex::new(RecvState {
        session: receiver::Session::new(),
        paced: Paced::new(o.bwlimit),
    }));
    let done = || state.lock().expect("state").session.bye();
    let served = serve(&listener, &clock, o.timeout, &done, &|s, hello| {
        let writer = Arc::new(Mutex::new(s.clone()));
        let (state, stdin, child, tail, clock, buffers) = (
            state.clone(),
            stdin.clone(),
            child.clone(),
            tail.clone(),
            clock.clone(),
            buffers.clone(),
        );
        // Chunks are checked and fed under the state lock, so a connection
        // that lingers after being replaced can never feed out of order or
        // twice; it ends at its next socket operation.
        std::thread::spawn(move || {
            let spare = Some(buffers.clone());
            read_loop(s, hello, spare, &clock, &writer, super::heartbeat(), |m| {
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
        return (3, None);
    };
    (0, last)
}

/// The receiver's zfs receive: its stdin, the process, its stderr, and the
/// buffers its stdin may still be reading from.
struct Zfs<'a> {
    stdin: &'a Mutex<Option<Feed<std::process::ChildStdin>>>,
    child: &'a Mutex<Child>,
    tail: &'a Mutex<Option<StderrTail>>,
    buffers: &'a Buffers,
}

/// Carries out what the receiver session (`session::receiver`, which
/// holds every rule) says to do with message `m`; false ends the
/// connection. Under the state lock, so a connection that lingers after
/// being replaced can never feed out of order or twice.
fn receiver_msg(m: Msg, state: &Mutex<RecvState>, zfs: &Zfs, w: &Mutex<Link>) -> bool {
    let mut st = state.lock().expect("state");
    let RecvState { session, paced } = &mut *st;
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
                drop(st);
                write_msg(w, &reply);
                return true;
            }
            Step::Fail(reply) => {
                drop(st);
                write_msg(w, &reply);
                return false;
            }
            Step::Close => return false,
            Step::Nothing => return true,
            Step::Feed(_) => unreachable!("fed above"),
        };
    }
}

/// Writes a verified chunk's stream bytes to zfs receive: how far its
/// input has been written, or None when it no longer takes input.
fn feed(bytes: &[u8], paced: &mut Paced, zfs: &Zfs) -> Option<u64> {
    let mut stdin = zfs.stdin.lock().expect("stdin");
    let f = stdin.as_mut()?;
    let r = paced.put(bytes, |piece| f.put(piece));
    f.report(zfs.buffers);
    r.ok().map(|()| f.written)
}

fn finish(zfs: &Zfs) -> (i32, String) {
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

/// `agent bridge DIR`: hands this ssh session's stdin and stdout to the
/// agent (see `link`), then waits until the agent lets go of them, so the
/// session lasts as long as the agent uses it. No byte of the stream
/// passes through this process.
fn bridge(dir: &str) -> i32 {
    let dir = match session::open(dir) {
        Ok(d) => d,
        Err(e)
            if std::fs::symlink_metadata(dir).is_err_and(|m| m.kind() == ErrorKind::NotFound) =>
        {
            eprintln!("bridge: no agent: {e}");
            return GONE;
        }
        Err(e) => {
            eprintln!("bridge: {e}");
            return 64;
        }
    };
    let sock = match UnixStream::connect(dir.join("sock")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bridge: no agent at {}: {e}", dir.display());
            let gone = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused);
            return if gone { GONE } else { 70 };
        }
    };
    if let Err(e) = link::send_stdio(&sock) {
        eprintln!("bridge: cannot hand the session to the agent: {e}");
        return 70;
    }
    // The agent holds the session's pipes now; ours go, so they close
    // when the agent closes its copies.
    null_stdin_stdout();
    // Until the agent closes the socket (it sends nothing on it).
    let _ = std::io::copy(&mut &sock, &mut std::io::sink());
    0
}

/// Points this process's stdin and stdout at /dev/null.
fn null_stdin_stdout() {
    // SAFETY: replacing our own fds 0 and 1 with a descriptor we open and
    // close here.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

/// `agent stop`'s exit status when the agent is driven by another
/// coordinator (EX_TEMPFAIL): it was left alone.
pub const HELD: i32 = 75;

/// `agent stop DIR [--owner DOMAIN:RUN:LABEL]`: asks the agent to end
/// (Bye), then makes sure. With an owner, the agent may refuse (another
/// coordinator drives it): then it is left alone, and the status is
/// `HELD`. Without one (by hand), the agent always obeys.
fn stop(args: &[String]) -> i32 {
    let owner = match args {
        [_] => Owner::default(),
        [_, flag, o] if flag == "--owner" => match parse_owner(o) {
            Some(o) => o,
            None => usage(),
        },
        _ => usage(),
    };
    let dir: PathBuf = match session::open(&args[0]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("stop: {e}");
            return 64;
        }
    };
    // Whether the agent may be ended by its pid if it lingers: always by
    // hand; for a coordinator, only once the agent welcomed it (an agent
    // that did not answer may be another machine's, busy), or when nothing
    // answers at its socket (then no coordinator can reach it either).
    let mut may_kill = owner.domain.is_empty();
    match UnixStream::connect(dir.join("sock")) {
        Ok(mut s) => {
            let _ = s.write_all(&wire::encode(&Msg::Hello {
                version: wire::VERSION,
                role: Role::Coordinator,
                owner,
            }));
            // By hand the agent obeys: no answer to wait for.
            let answer = if may_kill { None } else { first_answer(&mut s) };
            match answer {
                Some(Msg::Busy { label, heard_ms }) => {
                    eprintln!(
                        "stop: {} is driven by {label} (heard {:.1}s ago): left alone",
                        dir.display(),
                        heard_ms as f64 / 1000.0
                    );
                    return HELD;
                }
                Some(Msg::Welcome { .. }) => may_kill = true,
                _ => {}
            }
            let _ = s.write_all(&wire::encode(&Msg::Bye));
        }
        Err(_) => may_kill = true,
    }
    for _ in 0..50 {
        match session::read_marker(&dir) {
            Some(m) if session::alive(m.pid) => std::thread::sleep(Duration::from_millis(100)),
            _ => break,
        }
    }
    if let Some(m) = session::read_marker(&dir) {
        if session::alive(m.pid) && !may_kill {
            eprintln!(
                "stop: {} did not answer and is still running: left alone (it ends at its inactivity timeout)",
                dir.display()
            );
            return 1;
        }
        if session::alive(m.pid) {
            // SAFETY: the marker in a directory we own names our agent.
            unsafe {
                libc::kill(m.pid as i32, libc::SIGTERM);
            }
        }
    }
    session::remove(&dir);
    0
}

/// The agent's answer to a Hello, if one comes within 5 s.
fn first_answer(s: &mut UnixStream) -> Option<Msg> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut answer = None;
    super::read_msgs(s, None, |m| {
        answer = Some(m);
        false
    });
    answer
}

/// `agent stop`'s `--owner` argument for `o`: `DOMAIN:RUN:LABEL`.
pub fn owner_arg(o: &Owner) -> String {
    format!("{}:{}:{}", o.domain, o.run, o.label)
}

/// Reads `owner_arg` back (the label may hold colons).
fn parse_owner(s: &str) -> Option<Owner> {
    let mut parts = s.splitn(3, ':');
    let domain = parts.next()?.to_string();
    let run = parts.next()?.parse().ok()?;
    let label = parts.next()?.to_string();
    (!domain.is_empty()).then_some(Owner { domain, run, label })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use syncoid_rsync_core::wire::Decoder;

    fn hello() -> Msg {
        Msg::Hello {
            version: wire::VERSION,
            role: Role::Sender,
            owner: Owner::default(),
        }
    }

    /// The messages the peer reads within `wait`, or until the agent
    /// closes the connection.
    fn msgs_within(peer: &mut UnixStream, wait: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + wait;
        let mut d = Decoder::default();
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            peer.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match peer.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => d.push(&buf[..n]),
                Err(_) => break,
            }
        }
        std::iter::from_fn(|| d.next_msg().unwrap()).collect()
    }

    /// The beats (Pong, nonce 0) the peer reads within `wait`.
    fn beats_within(peer: &mut UnixStream, wait: Duration) -> usize {
        let msgs = msgs_within(peer, wait);
        for m in &msgs {
            assert!(matches!(m, Msg::Pong { nonce: 0 }), "unexpected {m:?}");
        }
        msgs.len()
    }

    fn owner(domain: &str, run: u64) -> Owner {
        Owner {
            domain: domain.into(),
            run,
            label: format!("{domain}/{run}"),
        }
    }

    /// Connects to `sock`, says Hello as `o`, and returns the connection
    /// with the agent's answer, if any came (a refusal comes at once; an
    /// admitted connection hears nothing until it asks).
    fn say_hello(sock: &Path, o: Owner) -> (UnixStream, Option<Msg>) {
        let mut c = UnixStream::connect(sock).unwrap();
        c.write_all(&wire::encode(&Msg::Hello {
            version: wire::VERSION,
            role: Role::Sender,
            owner: o,
        }))
        .unwrap();
        let answer = msgs_within(&mut c, Duration::from_millis(700))
            .into_iter()
            .next();
        (c, answer)
    }

    /// Whether the agent still serves `link` (a replaced connection is
    /// cancelled: its writes fail).
    fn served(link: &Link) -> bool {
        link.clone()
            .write_all(&wire::encode(&Msg::Pong { nonce: 0 }))
            .is_ok()
    }

    /// An agent serves one coordinator. Another machine's coordinator is
    /// refused (Busy, naming the owner) while the owner is heard, and the
    /// owner's connection goes on; a later run of the owner's machine (it
    /// holds the transfer lock there, so the old run ended) takes over at
    /// once; a tool without an owner (`agent stop` by hand) is served but
    /// owns nothing; a first message that is not a Hello is refused.
    #[test]
    fn one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let clock = Arc::new(Clock {
            last_heard: Mutex::new(Instant::now()),
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, handled) = crossbeam_channel::unbounded::<(Link, Msg)>();
        let server = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let done = || stop.load(std::sync::atomic::Ordering::SeqCst);
                let _ = serve(
                    &listener,
                    &clock,
                    Duration::from_secs(60),
                    &done,
                    &|s, m| {
                        tx.send((s, m)).unwrap();
                    },
                );
            })
        };
        let next = |who: &str| {
            let (link, m) = handled.recv_timeout(Duration::from_secs(5)).unwrap();
            let Msg::Hello { owner, .. } = m else {
                panic!("{who}: handled {m:?}")
            };
            (link, owner)
        };

        let (_a, answer) = say_hello(&sock, owner("m1", 1));
        assert_eq!(answer, None, "the first owner is admitted silently");
        let (a_link, seen) = next("a");
        assert_eq!(seen, owner("m1", 1));

        let (_b, answer) = say_hello(&sock, owner("m2", 9));
        match answer {
            Some(Msg::Busy { label, heard_ms }) => {
                assert_eq!(label, "m1/1");
                assert!(heard_ms < 5000, "{heard_ms}");
            }
            other => panic!("another machine's run was not refused: {other:?}"),
        }
        assert!(
            handled.try_recv().is_err(),
            "a refused connection was handled"
        );
        assert!(served(&a_link), "the refusal cut the owner's connection");

        let (_t, answer) = say_hello(&sock, Owner::default());
        assert_eq!(answer, None);
        let (t_link, _) = next("tool");
        assert!(
            !served(&a_link),
            "the tool's connection replaces the last one"
        );
        let (_b, answer) = say_hello(&sock, owner("m2", 9));
        assert!(
            matches!(&answer, Some(Msg::Busy { label, .. }) if label == "m1/1"),
            "the tool took the agent: {answer:?}"
        );

        let (_c, answer) = say_hello(&sock, owner("m1", 2));
        assert_eq!(
            answer, None,
            "a later run of the owner's machine is admitted"
        );
        let (c_link, seen) = next("c");
        assert_eq!(seen.run, 2);
        assert!(!served(&t_link));
        assert!(served(&c_link));
        let (_b, answer) = say_hello(&sock, owner("m2", 9));
        assert!(
            matches!(&answer, Some(Msg::Busy { label, .. }) if label == "m1/2"),
            "{answer:?}"
        );

        let mut x = UnixStream::connect(&sock).unwrap();
        x.write_all(&wire::encode(&Msg::Bye)).unwrap();
        assert!(
            matches!(msgs_within(&mut x, Duration::from_secs(5)).first(), Some(Msg::Error { msg }) if msg.contains("not a hello")),
            "a connection that did not greet was not refused"
        );
        assert!(served(&c_link), "a bad connection cut the owner's");

        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        server.join().unwrap();
    }

    /// An agent beats while its handler is busy (a receive that stopped
    /// taking writes) and stays silent while it idles waiting for data:
    /// then only the coordinator's pings get answers, so a link stuck
    /// towards the agent is seen as the silence it is.
    #[test]
    fn beats_only_while_busy() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let link = Link::direct(a).unwrap();
        let writer = Arc::new(Mutex::new(link.clone()));
        let clock = Arc::new(Clock {
            last_heard: Mutex::new(Instant::now()),
        });
        let agent = std::thread::spawn(move || {
            read_loop(
                link,
                hello(),
                None,
                &clock,
                &writer,
                Duration::from_millis(100),
                |m| match m {
                    Msg::Want { .. } => {
                        std::thread::sleep(Duration::from_millis(1200));
                        true
                    }
                    Msg::Hello { .. } => true,
                    _ => false,
                },
            )
        });
        assert_eq!(
            beats_within(&mut peer, Duration::from_millis(800)),
            0,
            "an idle agent beat"
        );
        peer.write_all(&wire::encode(&Msg::Want { seq: 0 }))
            .unwrap();
        let busy = beats_within(&mut peer, Duration::from_millis(1100));
        assert!(busy >= 5, "{busy} beats in 1.1 s of a busy handler");
        // The last beats of the busy spell (it ends at 1.2 s).
        beats_within(&mut peer, Duration::from_millis(400));
        assert_eq!(
            beats_within(&mut peer, Duration::from_millis(800)),
            0,
            "the agent beat after its handler was done"
        );
        peer.write_all(&wire::encode(&Msg::Bye)).unwrap();
        agent.join().unwrap();
    }
}
