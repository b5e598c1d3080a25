//! The `--rsync` agents (`syncoid-rsync agent ...`): a sender that owns
//! `zfs send` and a receiver that owns `zfs receive -s`, each detached from
//! any ssh connection and serving the coordinator over a unix socket in its
//! session directory. `agent bridge DIR` (what the coordinator runs through
//! ssh) hands its stdin and stdout to the agent over that socket, so the
//! agent reads and writes sshd's pipes itself; `agent list` and `agent stop`
//! find and end agents. An agent that hears nothing from a coordinator for
//! its inactivity timeout stops its zfs process and removes its directory.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::link::{self};
use super::session::{self, Marker};
use syncoid_rsync_core::session::coordinator::{Timing, DEFAULT_STALL};
use syncoid_rsync_core::wire::{self, Msg, Owner, Role};

mod host;
mod receiving;
mod sending;
mod serving;
use receiving::*;
use sending::*;
use serving::*;

pub struct StartOpts {
    pub role: Role,
    pub key: String,
    pub timeout: Duration,
    /// How long a link may be silent before it is dead (`--link-timeout`).
    pub link_timeout: Duration,
    /// The receiver's reorder window in bytes (`--streams` above 1: the
    /// spool's size; 0: one connection, chunks in order).
    pub window: usize,
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
        "usage: syncoid-rsync agent start send|receive --key KEY --timeout SECS [--link-timeout MS] [--window BYTES] [--attach] [--chunk-size N] [--spool-size N] [--compress-level N] [--bwlimit BYTES/S] -- ZFS-ARGV...\n\
         \x20      syncoid-rsync agent bridge DIR | host --idle SECS | list | stop DIR [--owner DOMAIN:RUN:LABEL] | sweep"
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
        Some("host") => host::main(&args[1..]),
        Some("list") => {
            for agent in session::listed() {
                println!("{}", serde_json::to_string(&agent).expect("json"));
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

impl StartOpts {
    /// The timing rules this agent follows.
    pub(super) fn timing(&self) -> Timing {
        Timing::new(self.link_timeout, self.timeout)
    }
}

fn parse_start(args: &[String]) -> Option<StartOpts> {
    let role = Role::from_agent_arg(args.first()?)?;
    let sep = args.iter().position(|a| a == "--")?;
    let mut o = StartOpts {
        role,
        key: String::new(),
        timeout: Duration::from_secs(3600),
        link_timeout: DEFAULT_STALL,
        window: 0,
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
            "--link-timeout" => o.link_timeout = Duration::from_millis(v.parse().ok()?),
            "--window" => o.window = v.parse().ok()?,
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
        role: o.role,
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
        marker.role.agent_arg(),
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
    crate::log_rusage(marker.role.agent_arg());
    // Only now may the coordinator see the connection close: the session
    // directory is gone.
    drop(last);
    code
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

/// What `agent stop` prints on stdout (one line of JSON) when it exits
/// `HELD`: the run that drives the agent, and when the agent last heard it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub by: String,
    pub heard_ms: u64,
}

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
                lane: 0,
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
                    // For the coordinator: who, as data (`Held`).
                    let held = Held {
                        by: label,
                        heard_ms,
                    };
                    println!("{}", serde_json::to_string(&held).unwrap_or_default());
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
    use crate::rsync::link::Link;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use syncoid_rsync_core::wire::Decoder;

    fn hello() -> Msg {
        Msg::Hello {
            version: wire::VERSION,
            role: Role::Sender,
            owner: Owner::default(),
            lane: 0,
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

    /// What became of a Hello: the agent handed the connection to its
    /// handler (admitted), or answered it (refused).
    enum Said {
        Admitted(Link, Owner),
        Refused(Msg),
    }

    /// Connects to `sock` and says Hello as `o`; returns the connection
    /// and what the agent did, as soon as it did it: handed the connection
    /// to its handler (`handled`) or answered. Neither within 5 s fails.
    fn say_hello(
        sock: &Path,
        o: Owner,
        handled: &crossbeam_channel::Receiver<(Link, Msg)>,
    ) -> (UnixStream, Said) {
        let mut c = UnixStream::connect(sock).unwrap();
        c.write_all(&wire::encode(&Msg::Hello {
            version: wire::VERSION,
            role: Role::Sender,
            owner: o,
            lane: 0,
        }))
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok((link, m)) = handled.try_recv() {
                let Msg::Hello { owner, .. } = m else {
                    panic!("handled {m:?}")
                };
                return (c, Said::Admitted(link, owner));
            }
            if let Some(m) = msgs_within(&mut c, Duration::from_millis(20))
                .into_iter()
                .next()
            {
                return (c, Said::Refused(m));
            }
        }
        panic!("the agent neither admitted nor refused a hello within 5 s");
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
        let door = Door::new(Timing::new(DEFAULT_STALL, Duration::from_secs(60)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, handled) = crossbeam_channel::unbounded::<(Link, Msg)>();
        let server = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let done = || stop.load(std::sync::atomic::Ordering::SeqCst);
                let _ = serve(&listener, &door, &done, &|s, m, _| {
                    tx.send((s, m)).unwrap();
                });
            })
        };
        let admitted = |said: Said| match said {
            Said::Admitted(link, owner) => (link, owner),
            Said::Refused(m) => panic!("refused: {m:?}"),
        };
        let refused = |said: Said| match said {
            Said::Refused(m) => m,
            Said::Admitted(_, owner) => panic!("{owner:?} was admitted"),
        };

        let (_a, said) = say_hello(&sock, owner("m1", 1), &handled);
        let (a_link, seen) = admitted(said);
        assert_eq!(seen, owner("m1", 1));

        let (_b, said) = say_hello(&sock, owner("m2", 9), &handled);
        match refused(said) {
            Msg::Busy { label, heard_ms } => {
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

        let (_t, said) = say_hello(&sock, Owner::default(), &handled);
        let (t_link, _) = admitted(said);
        assert!(
            !served(&a_link),
            "the tool's connection replaces the last one"
        );
        let (_b, said) = say_hello(&sock, owner("m2", 9), &handled);
        let answer = refused(said);
        assert!(
            matches!(&answer, Msg::Busy { label, .. } if label == "m1/1"),
            "the tool took the agent: {answer:?}"
        );

        // A later run of the owner's machine is admitted.
        let (_c, said) = say_hello(&sock, owner("m1", 2), &handled);
        let (c_link, seen) = admitted(said);
        assert_eq!(seen.run, 2);
        assert!(!served(&t_link));
        assert!(served(&c_link));
        let (_b, said) = say_hello(&sock, owner("m2", 9), &handled);
        let answer = refused(said);
        assert!(
            matches!(&answer, Msg::Busy { label, .. } if label == "m1/2"),
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
        let door = Door::new(Timing::new(DEFAULT_STALL, Duration::from_secs(60)));
        let agent = std::thread::spawn(move || {
            read_loop(
                link,
                1,
                hello(),
                None,
                &door,
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
