//! Setting a transfer up on the hosts: our binary there (`provision`),
//! agents started or found (`start_or_find`), stopped (`stop_agent`), and
//! the retries of a link that fails meanwhile (`Retry`).

use crossbeam_channel::bounded;
use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::again::Backoff;
use crate::host::{Host, StderrTail};
use crate::output::Out;
use crate::preflight::Binary;
use crate::rsync::session;
use syncoid_rsync_core::session::coordinator::Timing;
use syncoid_rsync_core::shell;

/// An agent to start: its host, our binary there, its role (`send` or
/// `receive`), the transfer's key, its options and its zfs command.
#[derive(Clone, Copy)]
pub struct Start<'a> {
    pub host: &'a Host,
    pub exe: &'a str,
    pub role: Role,
    pub key: &'a str,
    pub opts: &'a AgentOpts,
    pub zfs_argv: &'a [String],
}

/// Why a step of setting up a transfer on a host (copying the binary,
/// starting an agent, listing agents) failed.
#[derive(Debug)]
pub enum SetupError {
    /// The command ran and failed, or could not be run: trying again fails
    /// the same way.
    Failed(String),
    /// The connection to the host failed or hung before the command
    /// answered: it may or may not have run (an agent may be running).
    Link(String),
}

/// Why link failures stopped being tried again (`Retry`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ended {
    /// The inactivity timeout passed: the link was lost all along.
    Timeout,
    /// The other side's setup failed.
    OtherSide,
    /// Our binary cannot run on the host (`provision`): no try would help,
    /// and no transfer can start there.
    CannotRun,
}

/// Setting up one side of a transfer failed.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupFailed {
    pub why: String,
    /// None: a failure that trying again does not cure.
    pub ended: Option<Ended>,
}

impl SetupFailed {
    /// Both sides' failures (either may be absent) are a lost link alone:
    /// one side gave up at the inactivity timeout, and the other did too
    /// or stopped because of it.
    pub fn link_lost(failures: &[&SetupFailed]) -> bool {
        failures.iter().any(|f| f.ended == Some(Ended::Timeout))
            && failures
                .iter()
                .all(|f| matches!(f.ended, Some(Ended::Timeout | Ended::OtherSide)))
    }
}

/// Tries again after a link failure in setting up a transfer: capped
/// backoff, a warning each time, and an end when `patience` (the
/// inactivity timeout) has passed or the other side gave up (`quit`).
pub struct Retry<'a> {
    /// How the last `wait` ended tries, if it did.
    ended: Option<Ended>,
    deadline: Instant,
    patience: Duration,
    backoff: Backoff,
    quit: &'a AtomicBool,
    out: &'a Out,
}

impl<'a> Retry<'a> {
    /// Runs `f` with retries of its own; when it fails, the other side
    /// (sharing `quit`) stops trying.
    pub fn run<T>(
        patience: Duration,
        quit: &'a AtomicBool,
        out: &'a Out,
        f: impl FnOnce(&mut Retry) -> Result<T, String>,
    ) -> Result<T, SetupFailed> {
        let mut retry = Retry {
            ended: None,
            deadline: Instant::now() + patience,
            patience,
            backoff: Backoff::default(),
            quit,
            out,
        };
        let r = f(&mut retry);
        if r.is_err() {
            quit.store(true, Ordering::Relaxed);
        }
        r.map_err(|why| SetupFailed {
            why,
            ended: retry.ended,
        })
    }

    /// Waits before the next try after `why`; Err (with `why`) when no
    /// try is left.
    fn wait(&mut self, why: &str) -> Result<(), String> {
        if self.quit.load(Ordering::Relaxed) {
            self.ended = Some(Ended::OtherSide);
            return Err(format!("{why}; not tried again: the other side failed"));
        }
        if Instant::now() + self.backoff.wait() > self.deadline {
            self.ended = Some(Ended::Timeout);
            return Err(format!(
                "{why}; gave up after {}s (inactivity timeout)",
                self.patience.as_secs()
            ));
        }
        self.out.warn(&format!(
            "{why}; trying again in {:.1}s",
            self.backoff.wait().as_secs_f64()
        ));
        crate::again::sleep(&mut self.backoff);
        Ok(())
    }
}

/// Starts an agent, or finds the one an earlier try started: a
/// connection that fails while an agent starts is retried (`retry`, each
/// try on an ssh connection of its own). Before each new start the host is
/// asked for a live agent of this transfer and role, since the one a lost
/// connection started may be running: two receivers must never compete
/// for one dataset.
pub fn start_or_find(a: &Start, retry: &mut Retry) -> Result<(String, Option<Opened>), String> {
    let mut via = Via::Master;
    loop {
        let mut why = match start_agent(a, via) {
            Ok(started) => return Ok(started),
            Err(SetupError::Failed(e)) => return Err(e),
            Err(SetupError::Link(e)) => e,
        };
        via = Via::Own;
        loop {
            retry.wait(&why)?;
            match find_agent(a) {
                Ok(Some(dir)) => {
                    retry.out.info(&format!(
                        "--rsync: the {} agent on {} was started before the connection failed: using it ({dir})",
                        a.role.agent_arg(),
                        a.host.label()
                    ));
                    return Ok((dir, None));
                }
                Ok(None) => break,
                Err(SetupError::Failed(e)) => return Err(e),
                Err(SetupError::Link(e)) => why = e,
            }
        }
    }
}

/// The session dir of the live agent of `a`'s role and transfer on its
/// host, if there is one (`agent list`, on an ssh connection of its own).
pub(super) fn find_agent(a: &Start) -> Result<Option<String>, SetupError> {
    let argv = vec![a.exe.to_string(), "agent".into(), "list".into()];
    let out = a
        .host
        .command_with(&OWN_SSH, &[argv])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SetupError::Failed(format!("ssh: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let what = format!("listing the agents on {}", a.host.label());
        return Err(setup_error(&what, out.status, &stderr));
    }
    let found = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<session::Listed>(l).ok())
        .find(|l| l.serves(a.role, a.key))
        .map(|l| l.dir);
    Ok(found)
}

/// What an ssh command that ended with `status` means: the link failed
/// (ssh's own 255, or a signal) or the command on the far end did.
pub(super) fn setup_error(
    what: &str,
    status: std::process::ExitStatus,
    stderr: &str,
) -> SetupError {
    use std::os::unix::process::ExitStatusExt;
    let stderr = stderr.trim();
    let how = match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("ssh ended by signal {sig}"),
        (Some(code), _) => format!("exit status {code}"),
        _ => "no exit status".into(),
    };
    let msg = if stderr.is_empty() {
        format!("{what} failed ({how})")
    } else {
        format!("{what} failed ({how}): {stderr}")
    };
    if status.code() == Some(255) || status.signal().is_some() {
        SetupError::Link(msg)
    } else {
        SetupError::Failed(msg)
    }
}

/// Starts an agent; returns its session directory and, on a remote host,
/// the first connection to it: the same ssh session that started it
/// (`agent start --attach`), one session where start and connect took two.
/// An answer that does not come within the setup wait is a hung link.
pub(super) fn start_agent(a: &Start, via: Via) -> Result<(String, Option<Opened>), SetupError> {
    let Start {
        host,
        exe,
        role,
        key,
        opts,
        zfs_argv,
    } = *a;
    let mut argv = vec![
        exe.to_string(),
        "agent".into(),
        "start".into(),
        role.agent_arg().into(),
        "--key".into(),
        key.into(),
        "--timeout".into(),
        opts.timing.inactivity.as_secs().to_string(),
        "--link-timeout".into(),
        opts.timing.stall.as_millis().to_string(),
        "--chunk-size".into(),
        opts.chunk_size.to_string(),
        "--spool-size".into(),
        opts.spool_size.to_string(),
        "--compress-level".into(),
        opts.compress_level.to_string(),
        "--bwlimit".into(),
        opts.bwlimit.to_string(),
        "--window".into(),
        opts.window.to_string(),
    ];
    let what = format!(
        "starting the {} agent on {}",
        role.agent_arg(),
        host.label()
    );
    let setup_wait = opts.timing.setup;
    if !host.is_remote() {
        argv.push("--".into());
        argv.extend(zfs_argv.iter().cloned());
        let out = host
            .run(&argv)
            .map_err(|e| SetupError::Failed(e.to_string()))?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || dir.is_empty() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(SetupError::Failed(format!(
                "{what} failed: {}",
                stderr.trim()
            )));
        }
        return Ok((dir, None));
    }
    if let (Via::Master, Some(h)) = (via, hosted::get(host, exe)) {
        // Started by this thread's agent on the host: no ssh session.
        let mut args = argv[3..].to_vec();
        args.push("--".into());
        args.extend(zfs_argv.iter().cloned());
        let (dir, first) = h.start_agent(args).map_err(|e| match e {
            SetupError::Failed(e) => SetupError::Failed(format!("{what} failed: {e}")),
            SetupError::Link(e) => SetupError::Link(format!("{what}: {e}")),
        })?;
        return Ok((dir, Some(first)));
    }
    argv.push("--attach".into());
    argv.push("--".into());
    argv.extend(zfs_argv.iter().cloned());
    let own: &[&str] = match via {
        Via::Master => &[],
        Via::Own => &OWN_SSH,
    };
    let mut child = host
        .command_with(own, &[argv])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SetupError::Failed(format!("ssh: {e}")))?;
    let tail = StderrTail::drain(child.stderr.take().expect("piped"), false);
    // A hung link (a blackhole on the master's connection) is cut after
    // the setup wait. The child is not reaped before the watchdog ends,
    // so its pid cannot name another process.
    let pid = child.id() as libc::pid_t;
    let (answered, watch) = bounded::<()>(0);
    let watchdog = std::thread::spawn(move || {
        let hung = watch
            .recv_timeout(setup_wait)
            .is_err_and(|e| e.is_timeout());
        if hung {
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        hung
    });
    // The session dir's line, read byte by byte: what follows it on this
    // pipe is the agent's protocol.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let stdout = child.stdout.as_mut().expect("piped");
    let mut ended = false;
    loop {
        match stdout.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) if line.len() < 4096 => line.push(byte[0]),
            Ok(1) => break,
            _ => {
                ended = true;
                break;
            }
        }
    }
    drop(answered);
    let hung = watchdog.join().unwrap_or(false);
    let dir = String::from_utf8_lossy(&line).trim().to_string();
    if !ended && byte[0] == b'\n' && !dir.is_empty() {
        return Ok((dir, Some(ssh_ends(child))));
    }
    if hung {
        let _ = child.wait();
        return Err(SetupError::Link(format!(
            "{what}: no answer within {}s",
            setup_wait.as_secs()
        )));
    }
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        return Err(SetupError::Failed(format!(
            "{what} failed: an answer that is not a session directory"
        )));
    }
    let status = child
        .wait()
        .map_err(|e| SetupError::Failed(format!("ssh: {e}")))?;
    Err(setup_error(&what, status, &tail.finish()))
}

#[derive(Clone, Copy)]
pub struct AgentOpts {
    /// The agent's timing: its inactivity timeout and the link timeout.
    pub timing: Timing,
    pub chunk_size: usize,
    pub spool_size: usize,
    pub compress_level: i32,
    /// Bytes per second for this agent (0: none).
    pub bwlimit: u64,
    /// The receiver's reorder window (0: one connection per agent).
    pub window: usize,
}

/// Runs `agent stop DIR` on `host`, with `more` arguments.
pub(super) fn run_stop(
    host: &Host,
    exe: &str,
    dir: &str,
    more: &[String],
) -> Option<std::process::Output> {
    let mut argv = vec![
        exe.to_string(),
        "agent".into(),
        "stop".into(),
        dir.to_string(),
    ];
    argv.extend_from_slice(more);
    host.run(&argv).ok()
}

/// Stops an agent as `agent stop DIR` by hand does: it is ended by its
/// pid if it does not obey. For agents that cannot speak our protocol.
pub fn stop_agent_by_hand(host: &Host, exe: &str, dir: &str) {
    run_stop(host, exe, dir, &[]);
}

/// Stops an agent of this run (or of an interrupted run of this machine).
/// Err: the agent is driven by another machine's run (`ownership`), and
/// was left alone; the message says by whom.
pub fn stop_agent(host: &Host, exe: &str, dir: &str) -> Result<(), String> {
    let owner = crate::rsync::agent::owner_arg(crate::rsync::lock::owner());
    match run_stop(host, exe, dir, &["--owner".into(), owner]) {
        Some(out) if out.status.code() == Some(crate::rsync::agent::HELD) => {
            let by = match serde_json::from_slice::<crate::rsync::agent::Held>(&out.stdout) {
                Ok(h) => format!("{} (heard {:.1}s ago)", h.by, h.heard_ms as f64 / 1000.0),
                // An agent of an older version says it in prose only.
                Err(_) => "another run".into(),
            };
            Err(format!("the agent on {} is driven by {by}", host.label()))
        }
        _ => Ok(()),
    }
}

/// The transfer key: which agents belong to replicating `src` to `dst`.
pub fn key(src: &str, dst: &str) -> String {
    let h = blake3::hash(format!("{src}\0{dst}").as_bytes());
    h.to_hex()[..24].to_string()
}

/// Makes sure `host` can run our binary (`preflight::Binary`): the one
/// there, or a copy of this binary in a fresh private directory of the
/// place pre-flight chose, which is run with `--version` before it is
/// used: a copy that cannot start there (a loader that lacks what it
/// needs) is removed and reported with the loader's words.
/// Returns (exe, dir to remove).
/// A copy whose connection failed is tried again (`retry`); the copy a
/// lost answer made, if any, is removed by the agents' sweep once stale,
/// or by a later run of this machine (its owner file names this run).
pub fn provision(
    host: &Host,
    binary: &Binary,
    retry: &mut Retry,
) -> Result<(String, Option<String>), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let base = match binary {
        Binary::Own => return Ok((me.display().to_string(), None)),
        Binary::At(exe) => return Ok((exe.clone(), None)),
        Binary::CopyInto(base) => base,
    };
    let owner = format!(
        "{}:{}",
        crate::rsync::lock::owner().domain,
        std::process::id()
    );
    let ours = crate::preflight::our_version();
    let (bin, own) = (
        "\"$d/syncoid-rsync\"",
        format!("\"$d/{}\"", session::BIN_OWNER),
    );
    let script = format!(
        "umask 077; d=$(mktemp -d {base}/{prefix}XXXXXXXX) || exit 1; \
         trap 'rm -rf \"$d\"; exit 1' HUP PIPE TERM; \
         if ! {{ cat > {bin} && chmod 700 {bin} && echo {owner} > {own}; }}; then rm -f {bin} {own}; rmdir \"$d\"; exit 1; fi; \
         if v=$({bin} --version 2>&1) && [ \"$v\" = {ours_q} ]; then echo \"$d\"; \
         else printf '%s\\n' \"$v\" >&2; rm -f {bin} {own}; rmdir \"$d\"; exit {CANNOT_RUN}; fi",
        base = shell::quote(base),
        prefix = session::BIN_PREFIX,
        ours_q = shell::quote(&ours),
    );
    let what = format!("copying syncoid-rsync to {}:{base}", host.label());
    let mut own: &[&str] = &[];
    loop {
        let file = std::fs::File::open(&me).map_err(|e| e.to_string())?;
        let out = host
            .command_with(own, &[vec!["sh".into(), "-c".into(), script.clone()]])
            .stdin(Stdio::from(file))
            .output()
            .map_err(|e| format!("{what}: {e}"))?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && copy_dir(&dir) {
            return Ok((format!("{dir}/syncoid-rsync"), Some(dir)));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(CANNOT_RUN) {
            retry.ended = Some(Ended::CannotRun);
            return Err(format!(
                "the copy of syncoid-rsync cannot run on {} ({base}): {}\n      \
                 install a syncoid-rsync {} built for that system there (the static build, scripts/build-release.sh, runs on any x86_64 Linux), \
                 or name one with --agent-path",
                host.label(),
                stderr.trim().replace('\n', "\n      "),
                env!("CARGO_PKG_VERSION")
            ));
        }
        match setup_error(&what, out.status, &stderr) {
            SetupError::Link(why) => retry.wait(&why)?,
            SetupError::Failed(e) => return Err(e),
        }
        own = &OWN_SSH;
    }
}

/// `provision`'s exit status when the copy did not answer `--version`
/// with this version.
pub(super) const CANNOT_RUN: i32 = 3;

/// An absolute path ending in a copy directory's name (`provision`).
pub(super) fn copy_dir(dir: &str) -> bool {
    let p = std::path::Path::new(dir);
    p.is_absolute()
        && !dir.contains("/../")
        && p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(session::valid_bin_name)
}

/// Removes a directory `provision` created.
pub fn unprovision(host: &Host, dir: &str) {
    if copy_dir(dir) {
        let d = shell::quote(dir);
        let line = format!(
            "rm -f {d}/syncoid-rsync {d}/{} && rmdir {d}",
            session::BIN_OWNER
        );
        let _ = host.run(&["sh".into(), "-c".into(), line]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Out {
        Out {
            quiet: true,
            debug: false,
            json: false,
        }
    }

    /// Tries are spaced by the backoff and end at the inactivity timeout,
    /// with the last reason; a side that fails stops the other's tries.
    #[test]
    fn retries_end_at_the_timeout_or_when_the_other_side_failed() {
        let (out, quit) = (quiet(), AtomicBool::new(false));
        let t = Instant::now();
        let mut tries = 0;
        let r: Result<(), SetupFailed> =
            Retry::run(Duration::from_millis(900), &quit, &out, |retry| loop {
                tries += 1;
                retry.wait(&format!("try {tries} failed"))?;
            });
        // Waits of 0.25 and 0.5 s fit in 0.9 s; the next (1 s) does not.
        assert_eq!(tries, 3);
        assert_eq!(
            r.unwrap_err(),
            SetupFailed {
                why: "try 3 failed; gave up after 0s (inactivity timeout)".into(),
                ended: Some(Ended::Timeout),
            }
        );
        assert!(
            t.elapsed() >= Duration::from_millis(750),
            "{:?}",
            t.elapsed()
        );
        assert!(
            quit.load(Ordering::Relaxed),
            "a failure tells the other side"
        );

        let t = Instant::now();
        let r: Result<(), SetupFailed> =
            Retry::run(Duration::from_secs(60), &quit, &out, |retry| {
                retry.wait("refused")
            });
        assert_eq!(
            r.unwrap_err(),
            SetupFailed {
                why: "refused; not tried again: the other side failed".into(),
                ended: Some(Ended::OtherSide),
            }
        );
        assert!(t.elapsed() < Duration::from_millis(100));

        let quit = AtomicBool::new(false);
        let r = Retry::run(Duration::from_secs(60), &quit, &out, |retry| {
            retry.wait("once")?;
            Ok(7)
        });
        assert_eq!(r, Ok(7));
        assert!(!quit.load(Ordering::Relaxed));
    }

    /// A setup is stopped by a lost link alone when one side gave up at
    /// the timeout and the other did too or stopped because of it.
    #[test]
    fn a_setup_failure_is_a_lost_link_only_when_nothing_else_failed() {
        let f = |ended| SetupFailed {
            why: String::new(),
            ended,
        };
        let (timeout, other) = (f(Some(Ended::Timeout)), f(Some(Ended::OtherSide)));
        let (failed, cannot) = (f(None), f(Some(Ended::CannotRun)));
        assert!(SetupFailed::link_lost(&[&timeout]));
        assert!(SetupFailed::link_lost(&[&timeout, &other]));
        assert!(!SetupFailed::link_lost(&[&other, &failed]));
        assert!(!SetupFailed::link_lost(&[&timeout, &failed]));
        assert!(!SetupFailed::link_lost(&[&timeout, &cannot]));
        assert!(!SetupFailed::link_lost(&[]));
    }
}
