//! A breakable link for tests: ../shared/netlab in host mode, with names,
//! subnet and state directory of our own so several labs (and a user's
//! default lab) can coexist. The test process stays in the root network
//! namespace; the far host's sshd listens inside a namespace behind a veth
//! pair whose link the test cuts (blackhole, down, reject) and heals. The
//! sshd's sessions see one emulated `Host` (PATH and FAKEZFS_* through the
//! server-side SetEnv). `Drop` tears the lab down with netlab's down.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Host;

pub struct Netlab {
    scripts: PathBuf,
    env: Vec<(String, String)>,
    pub state: PathBuf,
    pub dst_ip: String,
    dst_ns: String,
    veth_dst: String,
}

/// Where netlab's scripts are: `$NETLAB_DIR` or ../shared/netlab next to
/// the workspace.
pub fn netlab_dir() -> PathBuf {
    if let Ok(d) = std::env::var("NETLAB_DIR") {
        return d.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/netlab")
}

impl Netlab {
    /// Brings up lab number `n` (0..=40) whose far side serves `far`.
    /// Panics with netlab's own output when it cannot (needs root and
    /// network namespaces).
    pub fn up(far: &Host, n: u32) -> Netlab {
        Netlab::up_with(far, n, &[])
    }

    /// Like `up`, with more environment for the far host's sessions (a
    /// fault of its zfs, such as `FAKEZFS_RECV_PAUSE`).
    pub fn up_with(far: &Host, n: u32, extra_env: &[(&str, &str)]) -> Netlab {
        let scripts = netlab_dir();
        assert!(
            scripts.join("up.sh").is_file(),
            "netlab not found at {} (set NETLAB_DIR)",
            scripts.display()
        );
        let tag = format!("{}{n}", std::process::id() % 10_000);
        let octet = 100 + (std::process::id() % 30) * 4 + n;
        // Under /run, not the host's temp dir: sshd's StrictModes refuses
        // an authorized_keys below a directory it does not trust.
        let state = PathBuf::from(format!("/run/srlab{tag}"));
        let setenv = far
            .envs()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra_env.iter().copied())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let env: Vec<(String, String)> = [
            ("NETLAB_STATE", state.display().to_string()),
            ("NETLAB_MODE", "host".into()),
            ("NETLAB_DST_NS", format!("srlab{tag}")),
            ("NETLAB_SRC_IP", format!("10.233.{octet}.1")),
            ("NETLAB_DST_IP", format!("10.233.{octet}.2")),
            ("NETLAB_VETH_SRC", format!("srs{tag}")),
            ("NETLAB_VETH_DST", format!("srd{tag}")),
            ("NETLAB_SETENV", setenv),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let lab = Netlab {
            scripts,
            dst_ip: format!("10.233.{octet}.2"),
            dst_ns: format!("srlab{tag}"),
            veth_dst: format!("srd{tag}"),
            env,
            state,
        };
        // A lab of this name can only be a leftover of a dead run whose
        // pid ended in the same digits (a live one has another pid): its
        // namespace, state and a blackhole it never healed would become
        // this lab's. Torn down first.
        lab.tear_down();
        lab.script(&["up.sh", "host"]);
        lab
    }

    fn script(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(self.scripts.join(args[0]))
            .args(&args[1..])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run netlab");
        assert!(
            out.status.success(),
            "netlab {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `cut.sh MODE` (blackhole, down, reject, ...).
    pub fn cut(&self, mode: &str) {
        self.script(&["cut.sh", mode]);
    }

    /// `slow.sh RATE`: both directions capped at RATE (tc syntax, e.g.
    /// `200mbit`); `off` lifts it.
    pub fn slow(&self, rate: &str) {
        self.script(&["slow.sh", rate]);
    }

    pub fn heal(&self) {
        self.script(&["heal.sh"]);
    }

    /// syncoid-rsync options that reach the far host without ~/.ssh.
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "--sshconfig".into(),
            self.state.join("ssh_config").display().to_string(),
        ]
    }

    /// `root@IP` of the far host.
    pub fn dest(&self) -> String {
        format!("root@{}", self.dst_ip)
    }

    /// Bytes the far end of the link has received so far.
    pub fn far_rx_bytes(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.dst_ns, "cat"])
            .arg(format!(
                "/sys/class/net/{}/statistics/rx_bytes",
                self.veth_dst
            ))
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        self.tear_down();
    }
}

impl Netlab {
    /// Heals the link and takes the lab down (both idempotent).
    fn tear_down(&self) {
        let _ = Command::new("bash")
            .arg(self.scripts.join("heal.sh"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
        let _ = Command::new("bash")
            .arg(self.scripts.join("down.sh"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
    }
}
