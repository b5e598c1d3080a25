//! Ctrl-C (SIGINT) and SIGTERM on the coordinator: before it exits, it
//! says what goes on without it and how to pick it up or stop it, ends
//! its ssh masters and removes its control directory. Exit status 130 or
//! 143 (128 + the signal), as a shell reports a process the signal ended.
//!
//! The signal handler only writes the signal's number to a pipe (all it
//! may do); a thread of ours reads it and does the rest. Child processes
//! start with default handlers (exec resets caught signals), so a Ctrl-C
//! still reaches zfs and ssh in the terminal's process group as before.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use crate::host::Host;

/// What the run is doing now, for the message.
#[derive(Debug, Clone)]
pub enum Doing {
    /// An `--rsync` transfer: its agents outlive this command.
    Agents {
        source: String,
        target: String,
        hosts: Vec<String>,
        timeout: String,
    },
    /// A standard stream into `target`.
    Stream { target: String, resumable: bool },
}

/// What each thread of the run is doing (several with `--jobs`).
static DOING: Mutex<Vec<(std::thread::ThreadId, Doing)>> = Mutex::new(Vec::new());
static HOSTS: Mutex<Vec<Host>> = Mutex::new(Vec::new());
static WAKE: AtomicI32 = AtomicI32::new(-1);

/// Records what this thread of the run is doing (None: between
/// transfers).
pub fn doing(d: Option<Doing>) {
    let me = std::thread::current().id();
    let mut all = crate::lock(&DOING);
    all.retain(|(t, _)| *t != me);
    all.extend(d.map(|d| (me, d)));
}

/// The words for an interruption while `d` was under way.
pub fn message(sig: &str, d: Option<&Doing>) -> String {
    match d {
        Some(Doing::Agents {
            source,
            target,
            hosts,
            timeout,
        }) => format!(
            "interrupted ({sig}): the --rsync agents on {} keep the transfer of {source} to {target} \
             open for up to {timeout} (--inactivity-timeout) without this command. Run the same command \
             again to resume it where it stands (nothing received is sent again). To end it instead: \
             `syncoid-rsync agent list` on those hosts shows the agents, `syncoid-rsync agent stop DIR` \
             ends one (the target keeps what it received)",
            hosts.join(" and ")
        ),
        Some(Doing::Stream {
            target,
            resumable: true,
        }) => format!(
            "interrupted ({sig}) while receiving into {target}: it keeps what it received \
             (resume token); run the same command again to resume"
        ),
        Some(Doing::Stream {
            target,
            resumable: false,
        }) => format!(
            "interrupted ({sig}) while receiving into {target}: with --no-resume the partial \
             receive is discarded; run the same command again to start over"
        ),
        None => format!("interrupted ({sig})"),
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WAKE.load(Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; one byte from a local.
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

/// Installs the handlers. `hosts`: whose ssh masters to end and control
/// directories to remove. The message is printed under --quiet too: it
/// says why the run ended.
pub fn install(hosts: Vec<Host>) {
    *crate::lock(&HOSTS) = hosts;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two fds we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    WAKE.store(fds[1], Ordering::Relaxed);
    let read_fd = fds[0];
    std::thread::spawn(move || {
        let mut b = 0u8;
        // SAFETY: reads one byte into a local from our own pipe.
        while unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) } != 1 {}
        let sig = b as i32;
        let name = if sig == libc::SIGINT {
            "Ctrl-C"
        } else {
            "SIGTERM"
        };
        let all = crate::lock(&DOING).clone();
        crate::progress::over_the_line(|| {
            if all.is_empty() {
                eprintln!("\nsyncoid-rsync: {}", message(name, None));
            }
            for (_, d) in &all {
                eprintln!("\nsyncoid-rsync: {}", message(name, Some(d)));
            }
        });
        crate::host::close_all(&crate::lock(&HOSTS));
        crate::log_rusage("coordinator");
        std::process::exit(128 + sig);
    });
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a handler that only writes one byte to a pipe; SA_RESTART
        // keeps the other threads' system calls going.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_what_goes_on_and_how_to_resume_or_stop_it() {
        let m = message(
            "Ctrl-C",
            Some(&Doing::Agents {
                source: "tank/data".into(),
                target: "root@b:pool/data".into(),
                hosts: vec!["local machine".into(), "root@b".into()],
                timeout: "1h".into(),
            }),
        );
        for part in [
            "interrupted (Ctrl-C)",
            "agents on local machine and root@b",
            "for up to 1h",
            "Run the same command again",
            "syncoid-rsync agent stop DIR",
        ] {
            assert!(m.contains(part), "{part}: {m}");
        }
        let m = message(
            "SIGTERM",
            Some(&Doing::Stream {
                target: "pool/x".into(),
                resumable: true,
            }),
        );
        assert!(m.contains("resume token") && m.contains("pool/x"), "{m}");
    }
}
