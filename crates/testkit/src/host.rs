//! An emulated ZFS host for tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The fakezfs binary: `$FAKEZFS_BIN`, or the one built beside the running
/// test (`target/<profile>/fakezfs`; run `cargo build --workspace` first).
pub fn fakezfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FAKEZFS_BIN") {
        return PathBuf::from(p);
    }
    built("fakezfs")
}

/// The `tamper` filter (a link that damages one chunk), built beside the
/// running test.
pub fn tamper_bin() -> PathBuf {
    built("tamper")
}

/// The latency relay (`latency DELAY HOST PORT [HOLD]`), an ssh
/// ProxyCommand that gives a connection a round trip.
pub fn latency_bin() -> PathBuf {
    built("latency")
}

/// A binary of this workspace, built beside the running test
/// (`target/<profile>/NAME`; run `cargo build --workspace` first).
fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        bin.display()
    );
    bin
}

pub struct Host {
    tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub mnt: PathBuf,
    pub bin: PathBuf,
}

/// The result of one command: stdout, stderr, exit status.
#[derive(Debug)]
pub struct Zfs {
    pub stdout: String,
    pub stderr: String,
    pub status: i32,
}

impl Zfs {
    fn from(o: Output) -> Zfs {
        Zfs {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            status: o.status.code().unwrap_or(-1),
        }
    }

    /// Panics with the command's stderr unless it succeeded.
    pub fn ok(self) -> Zfs {
        assert_eq!(self.status, 0, "command failed: {}", self.stderr);
        self
    }
}

impl Host {
    /// A host with the given pools.
    pub fn new(pools: &[&str]) -> Host {
        let tmp = tempfile::Builder::new()
            .prefix("srtest-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().join("root");
        let mnt = tmp.path().join("mnt");
        let bin = tmp.path().join("bin");
        let tmp_dir = tmp.path().join("tmp");
        for d in [&root, &mnt, &bin, &tmp_dir] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let st = Command::new(fakezfs_bin())
            .arg("link")
            .arg(&bin)
            .status()
            .expect("fakezfs link");
        assert!(st.success());
        let h = Host {
            tmp,
            root,
            mnt,
            bin,
        };
        for p in pools {
            h.zpool(&["create", p]).ok();
        }
        h
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// This host's private stand-in for /tmp (where --rsync agents make
    /// their session directories).
    pub fn tmp(&self) -> PathBuf {
        self.tmp.path().join("tmp")
    }

    /// Entries left in this host's tmp (session directories).
    pub fn tmp_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// PATH for a process that should see this host's zfs first. Not
    /// /usr/local/bin: a syncoid-rsync installed there (the README's install
    /// command) would be taken for the host's own, and the tests that
    /// check copying the binary to a host would see nothing copied.
    pub fn path_env(&self) -> String {
        format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", self.bin.display())
    }

    /// The environment a process on this host needs.
    pub fn envs(&self) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), self.path_env()),
            ("FAKEZFS_ROOT".into(), self.root.display().to_string()),
            ("FAKEZFS_MOUNT_BASE".into(), self.mnt.display().to_string()),
            ("SYNCOID_RSYNC_TMP".into(), self.tmp().display().to_string()),
        ]
    }

    /// A command that runs on this host.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.envs(self.envs());
        c
    }

    pub fn zfs(&self, args: &[&str]) -> Zfs {
        Zfs::from(self.command("zfs").args(args).output().expect("run zfs"))
    }

    pub fn zpool(&self, args: &[&str]) -> Zfs {
        Zfs::from(
            self.command("zpool")
                .args(args)
                .output()
                .expect("run zpool"),
        )
    }

    /// Runs a shell command line on this host.
    pub fn sh(&self, script: &str) -> Zfs {
        Zfs::from(
            self.command("bash")
                .arg("-c")
                .arg(script)
                .output()
                .expect("run bash"),
        )
    }

    /// Where dataset `fs` is mounted.
    pub fn mountpoint(&self, fs: &str) -> PathBuf {
        let out = self
            .zfs(&["get", "-H", "-o", "value", "mountpoint", fs])
            .ok();
        PathBuf::from(out.stdout.trim())
    }

    pub fn write(&self, fs: &str, rel: &str, data: &[u8]) {
        let p = self.mountpoint(fs).join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    pub fn read(&self, fs: &str, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.mountpoint(fs).join(rel)).ok()
    }

    /// Every file below `fs`'s mountpoint: relative path -> contents.
    pub fn files(&self, fs: &str) -> BTreeMap<String, Vec<u8>> {
        let base = self.mountpoint(fs);
        let mut out = BTreeMap::new();
        collect(&base, &base, &mut out);
        out
    }

    /// Short snapshot names of `fs`, oldest first.
    pub fn snapshots(&self, fs: &str) -> Vec<String> {
        let out = self.zfs(&[
            "list",
            "-H",
            "-t",
            "snapshot",
            "-o",
            "name",
            "-s",
            "createtxg",
            "-d",
            "1",
            fs,
        ]);
        out.stdout
            .lines()
            .filter_map(|l| l.split_once('@').map(|(_, s)| s.to_string()))
            .collect()
    }

    /// `name -> guid` of `fs`'s snapshots.
    pub fn snapshot_guids(&self, fs: &str) -> BTreeMap<String, String> {
        let out = self.zfs(&[
            "list",
            "-H",
            "-p",
            "-t",
            "snapshot",
            "-o",
            "name,guid",
            "-d",
            "1",
            fs,
        ]);
        out.stdout
            .lines()
            .filter_map(|l| {
                let (n, g) = l.split_once('\t')?;
                Some((n.split_once('@')?.1.to_string(), g.to_string()))
            })
            .collect()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.zfs(&["list", "-H", "-t", "all", "-o", "name", name])
            .status
            == 0
    }

    pub fn get(&self, prop: &str, name: &str) -> String {
        self.zfs(&["get", "-H", "-o", "value", prop, name])
            .ok()
            .stdout
            .trim()
            .to_string()
    }

    /// The emulator's invocation log, one JSON value per zfs/zpool call.
    pub fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.root.join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect()
    }

    /// The zfs subcommands logged, e.g. ["list", "snapshot", "send"].
    pub fn logged_subcommands(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter(|e| e["prog"] == "zfs")
            .filter_map(|e| e["argv"][0].as_str().map(String::from))
            .collect()
    }
}

fn collect(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(base, &p, out);
        } else {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            out.insert(rel, std::fs::read(&p).unwrap_or_default());
        }
    }
}
