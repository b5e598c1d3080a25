//! Where commands run: this machine, or a remote host through the system's
//! OpenSSH (one multiplexed master connection per host, in a private
//! control directory of ours). Child processes never deadlock on a full
//! stderr pipe: stderr is drained on its own thread into a bounded tail,
//! and a failure carries host, argv, status and that tail.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use syncoid_rsync_core::shell;

/// How to reach remote hosts: the ssh argv before the destination.
#[derive(Debug)]
pub struct SshConfig {
    pub base: Vec<String>,
    /// The user's own ssh options (-F, -c, -o, -p, -i): what a command
    /// suggested to them must carry.
    pub user: Vec<String>,
    /// --rsync: calls whose connection fails are tried again.
    pub again: Option<crate::again::Policy>,
    /// Our private ControlPath directory (0700); held so it is removed on drop.
    pub control_dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub enum Host {
    Local,
    Remote { dest: String, ssh: Arc<SshConfig> },
}

/// A command that failed (or could not start), with what it said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct CmdError {
    pub host: String,
    pub command: String,
    pub status: Option<i32>,
    pub stderr: String,
}

impl CmdError {
    /// ssh lost (or never made) its connection to a remote host: status
    /// 255, which our remote commands never use themselves.
    pub fn link_lost(&self) -> bool {
        self.status == Some(255) && self.host != Host::Local.label()
    }

    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => format!("exit status {s}"),
            None => "killed by a signal or not started".to_string(),
        };
        let tail = self.stderr.trim_end();
        let mut msg = format!("on {}: `{}` failed ({status})", self.host, self.command);
        if !tail.is_empty() {
            msg.push_str(":\n    ");
            msg.push_str(&tail.replace('\n', "\n    "));
        }
        msg
    }
}

/// Keeps the last `max` lines a child wrote to stderr.
pub struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl StderrTail {
    pub fn drain(stream: impl Read + Send + 'static, echo: bool) -> StderrTail {
        const MAX: usize = 40;
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let keep = lines.clone();
        let thread = std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut buf) {
                if n == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if echo {
                    eprintln!("{line}");
                }
                let mut l = keep.lock().expect("tail lock");
                if l.len() == MAX {
                    l.pop_front();
                }
                l.push_back(line);
                buf.clear();
            }
        });
        StderrTail {
            lines,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> String {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let l = self.lines.lock().expect("tail lock");
        l.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Copies `from` to `to` until the input ends or the output is gone,
/// passing on every read at once and telling `passed` how many bytes went.
/// Not `io::copy`: between sockets and sshd's pipes it may splice, which
/// can hold a small frame (a Welcome) until more data or the end arrives.
pub fn pump(from: &mut impl Read, to: &mut impl Write, buf: usize, mut passed: impl FnMut(u64)) {
    let mut buf = vec![0u8; buf];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
                passed(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Runs `a` on a thread of its own while `b` runs here: calls to two
/// hosts (or two calls to one) overlap.
pub fn at_once<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    let master = MASTER.with(|m| m.get());
    std::thread::scope(|sc| {
        let t = sc.spawn(move || {
            // The same ssh masters as the thread it works for.
            use_master(master);
            a()
        });
        let rb = b();
        (t.join().expect("worker thread"), rb)
    })
}

thread_local! {
    /// Which of each host's ssh masters this thread's remote commands
    /// share: with `--jobs`, each dataset thread has its own (0: the run's
    /// first, which pre-flight and the listings use). One master carries at
    /// most sshd's `MaxSessions` (10 by default) sessions at once, and each
    /// has its own TCP connection and cipher process.
    static MASTER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The highest master number any thread used (all are closed at the end).
static MASTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes this thread's remote commands use master `n` of each host.
pub fn use_master(n: usize) {
    MASTER.with(|m| m.set(n));
    MASTERS.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
}

/// Which master this thread's remote commands use (`use_master`).
pub fn master() -> usize {
    MASTER.with(|m| m.get())
}

/// The ssh option that picks master `n` (none for the first: the base
/// options name its path).
fn master_path(ssh: &SshConfig, n: usize) -> Option<String> {
    (n > 0).then(|| format!("ControlPath={}/%C-{n}", ssh.control_dir.path().display()))
}

/// `a b | c d`: stages as one shell line, each word quoted as needed.
fn pipeline_line(stages: &[Vec<String>]) -> String {
    stages
        .iter()
        .map(|s| shell::join(s))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Our ssh control directories: `syncoid-rsync-ssh-PID-XXXXXX`.
const CONTROL_PREFIX: &str = "syncoid-rsync-ssh-";

/// A private (0700) ssh control directory for this run, named with our
/// pid. Those of runs that are gone (killed before they could remove
/// theirs) are swept first: ours, real directories, their pid not running.
pub fn control_dir() -> std::io::Result<tempfile::TempDir> {
    // ssh's control socket path (dir + 40 hex digits + a temporary
    // suffix) must fit a Unix socket's 108 bytes: a long TMPDIR falls back
    // to /tmp.
    let mut tmp = std::env::temp_dir();
    if tmp.as_os_str().len() > 40 {
        tmp = "/tmp".into();
    }
    sweep_control_dirs(&tmp);
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!("{CONTROL_PREFIX}{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(tmp)
}

/// Removes the control directories in `dir` whose run is gone.
fn sweep_control_dirs(dir: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(CONTROL_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        let ours = std::fs::symlink_metadata(e.path())
            .is_ok_and(|m| m.is_dir() && m.uid() == crate::rsync::session::euid());
        if ours && !crate::rsync::session::alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Where zfs lives on Linux (and FreeBSD), appended to PATH as syncoid
/// does: cron's PATH (`/usr/bin:/bin`) and a non-login ssh session of a
/// user other than root often lack them.
pub const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// `path` with the sbin directories it lacks appended (its own order and
/// entries first, so the user's choice of zfs wins).
pub fn with_sbin(path: &str) -> String {
    let mut out = path.to_string();
    for dir in SBIN_DIRS {
        if !path.split(':').any(|p| p == dir) {
            if !out.is_empty() {
                out.push(':');
            }
            out.push_str(dir);
        }
    }
    out
}

/// What ssh runs on a remote host: the pipeline under `sh -c` (whatever
/// the login shell is), with the sbin directories appended to PATH.
fn remote_line(stages: &[Vec<String>]) -> String {
    let path: Vec<String> = SBIN_DIRS.iter().map(|d| format!(":{d}")).collect();
    let inner = format!(
        "PATH=\"$PATH{}\"; export PATH; {}",
        path.concat(),
        pipeline_line(stages)
    );
    format!("sh -c {}", shell::quote(&inner))
}

impl Host {
    pub fn is_remote(&self) -> bool {
        matches!(self, Host::Remote { .. })
    }

    pub fn label(&self) -> String {
        match self {
            Host::Local => "local machine".to_string(),
            Host::Remote { dest, .. } => dest.clone(),
        }
    }

    /// A Command running `stages` piped together on this host. Local
    /// pipelines of more than one stage go through `sh -c`, remote ones
    /// through the remote shell; every word is quoted by `shell::join`.
    pub fn command(&self, stages: &[Vec<String>]) -> Command {
        self.command_with(&[], stages)
    }

    /// Like `command`, with extra ssh options for a remote host (ignored
    /// locally).
    pub fn command_with(&self, ssh_extra: &[&str], stages: &[Vec<String>]) -> Command {
        match self {
            Host::Local if stages.len() == 1 => {
                let mut c = Command::new(&stages[0][0]);
                c.args(&stages[0][1..]);
                c
            }
            Host::Local => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(pipeline_line(stages));
                c
            }
            Host::Remote { dest, ssh } => {
                let mut c = Command::new("ssh");
                c.args(ssh_extra);
                // ssh takes the first value given for an option.
                if let Some(path) = master_path(ssh, MASTER.with(|m| m.get())) {
                    c.arg("-o").arg(path);
                }
                c.args(&ssh.base)
                    .arg(dest)
                    .arg("--")
                    .arg(remote_line(stages));
                c
            }
        }
    }

    /// The ssh command a user can try by hand to reach this host, with
    /// their options: `ssh -p 2222 -i key user@host true`.
    pub fn try_by_hand(&self) -> String {
        match self {
            Host::Local => "true".into(),
            Host::Remote { dest, ssh } => {
                let mut argv = vec!["ssh".to_string()];
                argv.extend(ssh.user.iter().cloned());
                argv.extend([dest.clone(), "true".into()]);
                shell::join(&argv)
            }
        }
    }

    /// Text of what `command` runs, for messages and --dry-run.
    pub fn describe(&self, stages: &[Vec<String>]) -> String {
        let line = pipeline_line(stages);
        match self {
            Host::Local => line,
            Host::Remote { dest, .. } => format!("ssh {dest} {}", shell::quote(&line)),
        }
    }

    /// Runs one command to completion, capturing its output.
    pub fn run(&self, argv: &[String]) -> Result<Output, CmdError> {
        self.run_stages(&[argv.to_vec()])
    }

    pub fn run_stages(&self, stages: &[Vec<String>]) -> Result<Output, CmdError> {
        self.run_as(stages, &crate::again::kind(stages))
    }

    /// Runs a command the caller knows only reads (a listing script): in
    /// --rsync mode it is tried again when its connection fails.
    pub fn run_read(&self, argv: &[String]) -> Result<Output, CmdError> {
        self.run_as(&[argv.to_vec()], &crate::again::Kind::Read)
    }

    /// Runs a script of changes that each end in the same state when run
    /// twice (the caller takes their "already done" refusals as success):
    /// in --rsync mode it is tried again when its connection fails.
    pub fn run_repeatable(&self, argv: &[String]) -> Result<Output, CmdError> {
        self.run_as(&[argv.to_vec()], &crate::again::Kind::Change(&[]))
    }

    fn run_as(
        &self,
        stages: &[Vec<String>],
        kind: &crate::again::Kind,
    ) -> Result<Output, CmdError> {
        let once = || {
            self.command(stages)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| self.error(stages, None, e.to_string()))
        };
        if let Host::Remote { dest, ssh } = self {
            if let Some(policy) = &ssh.again {
                return policy.run(dest, &pipeline_line(stages), kind, once);
            }
        }
        once()
    }

    /// Runs and requires success.
    pub fn run_ok(&self, argv: &[String]) -> Result<String, CmdError> {
        self.succeeded(argv, self.run(argv)?)
    }

    /// `run_read`, requiring success.
    pub fn run_ok_read(&self, argv: &[String]) -> Result<String, CmdError> {
        self.succeeded(argv, self.run_read(argv)?)
    }

    fn succeeded(&self, argv: &[String], out: Output) -> Result<String, CmdError> {
        if !out.status.success() {
            return Err(self.error(
                &[argv.to_vec()],
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn error(&self, stages: &[Vec<String>], status: Option<i32>, stderr: String) -> CmdError {
        CmdError {
            host: self.label(),
            command: pipeline_line(stages),
            status,
            stderr,
        }
    }

    /// Ends the ssh master connection, if one was opened.
    pub fn close(&self) {
        if let Host::Remote { dest, ssh } = self {
            let masters = MASTERS.load(std::sync::atomic::Ordering::Relaxed);
            for n in 0..=masters {
                let mut c = Command::new("ssh");
                if let Some(path) = master_path(ssh, n) {
                    c.arg("-o").arg(path);
                }
                let _ = c
                    .args(&ssh.base)
                    .args(["-O", "exit"])
                    .arg(dest)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Ends the ssh masters of `hosts` at once (not ControlPersist later) and
/// removes their private control directories. `std::process::exit` skips
/// the directories' drops, and the masters must all be told to exit before
/// a directory they share goes.
pub fn close_all(hosts: &[Host]) {
    for h in hosts {
        h.close();
    }
    for h in hosts {
        if let Host::Remote { ssh, .. } = h {
            let _ = std::fs::remove_dir_all(ssh.control_dir.path());
        }
    }
}

/// A spawned child with its stderr being drained.
pub struct Running {
    pub child: Child,
    pub tail: StderrTail,
    pub host: Host,
    pub stages: Vec<Vec<String>>,
}

impl Running {
    /// Waits; `Err` with the stderr tail unless it exited 0.
    pub fn wait(mut self) -> Result<(), CmdError> {
        let status = self.child.wait();
        let tail = self.tail.finish();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(self.host.error(&self.stages, s.code(), tail)),
            Err(e) => Err(self.host.error(&self.stages, None, format!("{e}\n{tail}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_dirs_are_private_and_those_of_gone_runs_are_swept() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut gone = Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let dead = tmp.path().join(format!("{CONTROL_PREFIX}{gone_pid}-abc"));
        let live = tmp
            .path()
            .join(format!("{CONTROL_PREFIX}{}-abc", std::process::id()));
        let old_form = tmp.path().join(format!("{CONTROL_PREFIX}Xy12ab"));
        for d in [&dead, &live, &old_form] {
            std::fs::create_dir(d).unwrap();
        }
        let link = tmp.path().join(format!("{CONTROL_PREFIX}{gone_pid}-link"));
        std::os::unix::fs::symlink(&live, &link).unwrap();
        sweep_control_dirs(tmp.path());
        assert!(!dead.exists(), "a gone run's directory is swept");
        assert!(
            live.exists() && old_form.exists(),
            "a live run's and unknown ones stay"
        );
        assert!(
            link.symlink_metadata().is_ok(),
            "a symlink is never followed or removed"
        );
        let ours = control_dir().unwrap();
        let mode = ours.path().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(ours
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("{CONTROL_PREFIX}{}-", std::process::id())));
    }

    #[test]
    fn sbin_directories_are_appended_once_after_the_users_path() {
        assert_eq!(
            with_sbin("/usr/bin:/bin"),
            "/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
        );
        assert_eq!(
            with_sbin("/opt/zfs/bin:/usr/sbin:/usr/bin"),
            "/opt/zfs/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/sbin"
        );
    }

    /// What the far login shell gets, run by a local sh as sshd would.
    fn as_login_shell(stages: &[Vec<String>]) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(remote_line(stages))
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("sh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn remote_commands_run_under_sh_with_the_sbin_directories() {
        let v = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            as_login_shell(&[v(&["printenv", "PATH"])]),
            "/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin\n"
        );
        assert_eq!(
            as_login_shell(&[v(&["printf", "%s|", "a b'c", "$(x)"]), v(&["cat"])]),
            "a b'c|$(x)|"
        );
    }
}
