//! A real OpenSSH server on 127.0.0.1 for tests.
//!
//! Keys are generated into a private temp dir; the server's sessions get
//! PATH and FAKEZFS_ROOT from `SetEnv` in its config (sshd resets a PATH a
//! client sends). The server is stopped by its pid when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Host;

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub key: PathBuf,
    dir: PathBuf,
}

fn sshd_bin() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("sshd not found: install openssh-server");
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Starts an sshd whose sessions run on `host`.
    pub fn start(host: &Host) -> Sshd {
        Sshd::start_with_env(host, &[])
    }

    /// Like `start`, with some of the sessions' variables replaced (PATH,
    /// say) or added (FAKEZFS_SEND_RATE, say).
    pub fn start_with_env(host: &Host, overrides: &[(&str, &str)]) -> Sshd {
        Sshd::launch(host, overrides, 100)
    }

    /// Like `start`, with sshd's default `MaxSessions` (10): at most that
    /// many sessions at once on one connection (one ssh master).
    pub fn start_with_default_sessions(host: &Host) -> Sshd {
        Sshd::launch(host, &[], 10)
    }

    fn launch(host: &Host, overrides: &[(&str, &str)], max_sessions: u32) -> Sshd {
        let dir = host.dir().join("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let hostkey = dir.join("host_key");
        let key = dir.join("client_key");
        keygen(&hostkey);
        keygen(&key);
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let cfg = dir.join("sshd_config");
            std::fs::write(&cfg, config(&dir, port, host, overrides, max_sessions)).unwrap();
            let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
            let child = Command::new(sshd_bin())
                .args(["-D", "-e", "-f"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            let mut s = Sshd {
                child,
                port,
                key: key.clone(),
                dir: dir.clone(),
            };
            if s.wait_ready() {
                return s;
            }
            last_err = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
            s.stop();
        }
        panic!("sshd did not start: {last_err}");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// ssh options that reach this server without touching ~/.ssh.
    pub fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.key.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// syncoid's (and syncoid-rsync's) options that reach this server
    /// without touching ~/.ssh.
    pub fn syncoid_args(&self) -> Vec<String> {
        vec![
            format!("--sshport={}", self.port),
            format!("--sshkey={}", self.key.display()),
            "--sshoption=StrictHostKeyChecking=no".into(),
            format!(
                "--sshoption=UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ),
        ]
    }

    /// An ssh_config(5) block naming this server `alias`.
    pub fn config_block(&self, alias: &str) -> String {
        format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile {}\n  BatchMode yes\n  LogLevel ERROR\n",
            self.port,
            self.key.display(),
            self.dir.join("known_hosts").display()
        )
    }

    /// Runs a command on the server's host through ssh.
    pub fn ssh(&self, remote_cmd: &str) -> crate::Zfs {
        let out = Command::new("ssh")
            .args(self.ssh_opts())
            .arg("root@127.0.0.1")
            .arg(remote_cmd)
            .output()
            .expect("ssh");
        crate::Zfs {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            status: out.status.code().unwrap_or(-1),
        }
    }

    pub fn stop(&mut self) {
        // SAFETY: signalling the sshd we spawned, by its pid.
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(
    dir: &Path,
    port: u16,
    host: &Host,
    overrides: &[(&str, &str)],
    max_sessions: u32,
) -> String {
    let env = host
        .envs()
        .into_iter()
        .map(|(k, v)| {
            let v = overrides
                .iter()
                .find(|(o, _)| *o == k)
                .map_or(v, |(_, o)| o.to_string());
            format!("{k}={v}")
        })
        .chain(
            overrides
                .iter()
                .filter(|(o, _)| !host.envs().iter().any(|(k, _)| k == o))
                .map(|(k, v)| format!("{k}={v}")),
        )
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
         PidFile {pid}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nUseDNS no\n\
         MaxStartups 100\nMaxSessions {max_sessions}\nLogLevel ERROR\n\
         SetEnv {env}\n",
        hk = dir.join("host_key").display(),
        ak = dir.join("authorized_keys").display(),
        pid = dir.join("sshd.pid").display(),
    )
}
