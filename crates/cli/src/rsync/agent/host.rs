//! `agent host --idle SECS`: the agent of a run (of one `--jobs` thread)
//! on a host, reached over one ssh session (`wire::mux`). It starts each
//! transfer's agent (`agent start`, as an ssh session did before) and
//! joins the agent's socket to a channel of its own, so a tree's
//! transfers cost no ssh session each. The transfer agents stay what
//! they were: one process per transfer with its own zfs process, spool,
//! session directory and owner; one failing ends only its transfer, and
//! a transfer outlives this process (it reconnects through a bridge, as
//! after any outage). It creates nothing on disk, and ends when the
//! coordinator lets go of its connection or was silent for `--idle`.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::session;
use crate::rsync::mux::Mux;
use syncoid_rsync_core::wire::mux::{Control, VERSION};

pub(super) fn main(args: &[String]) -> i32 {
    let idle = match args {
        [flag, secs] if flag == "--idle" => match secs.parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => super::usage(),
        },
        _ => super::usage(),
    };
    // Close-on-exec duplicates of our stdin and stdout: the agents we
    // start must not hold the session open after we end.
    // SAFETY: new descriptors of our own, owned from here on.
    let (r, w) = unsafe {
        let (r, w) = (
            libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3),
            libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3),
        );
        if r < 0 || w < 0 {
            return 1;
        }
        (
            File::from(OwnedFd::from_raw_fd(r)),
            File::from(OwnedFd::from_raw_fd(w)),
        )
    };
    crate::transfer::widen_pipe(&r);
    crate::transfer::widen_pipe(&w);
    super::null_stdin_stdout();
    let mux = Mux::new(w);
    if mux.send(&Control::Hi { version: VERSION }).is_err() {
        return 1;
    }
    let watched = mux.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if watched.silent_for() > idle {
            // The link died without closing: the transfers' agents go
            // on and are reached again through bridges.
            std::process::exit(0);
        }
    });
    let m = mux.clone();
    mux.demux(r, |c| match c {
        Control::Start { channel, argv } => {
            let m = m.clone();
            std::thread::spawn(move || start(&m, channel, &argv));
        }
        Control::Attach { channel, dir } => {
            let m = m.clone();
            std::thread::spawn(move || attach(&m, channel, &dir));
        }
        Control::Ping { nonce } => {
            let _ = m.send(&Control::Pong { nonce });
        }
        _ => {}
    });
    0
}

fn refuse(m: &Mux, channel: u32, gone: bool, why: String) {
    let _ = m.send(&Control::Refused { channel, gone, why });
}

/// Runs `agent start ARGV...` and joins the agent it started.
fn start(m: &Arc<Mux>, channel: u32, argv: &[String]) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return refuse(m, channel, false, format!("agent host: {e}")),
    };
    let out = Command::new(exe)
        .args(["agent", "start"])
        .args(argv)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return refuse(m, channel, false, format!("agent host: {e}")),
    };
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || dir.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return refuse(m, channel, false, stderr);
    }
    attach(m, channel, &dir);
}

/// Joins the socket of the agent in `dir` to `channel`.
fn attach(m: &Arc<Mux>, channel: u32, dir: &str) {
    let path = match session::open(dir) {
        Ok(p) => p,
        Err(e) => {
            let gone = std::fs::symlink_metadata(dir).is_err();
            return refuse(m, channel, gone, e);
        }
    };
    let sock = match UnixStream::connect(path.join("sock")) {
        Ok(s) => s,
        Err(e) => {
            let gone = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused);
            return refuse(m, channel, gone, format!("no agent at {dir}: {e}"));
        }
    };
    if let Err(e) = m.join(channel, sock) {
        return refuse(m, channel, false, format!("agent host: {e}"));
    }
    let _ = m.send(&Control::Opened {
        channel,
        dir: dir.to_string(),
    });
}
