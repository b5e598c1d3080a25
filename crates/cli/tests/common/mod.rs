//! Helpers for end-to-end tests of the syncoid-rsync binary on the emulator.
#![allow(dead_code)]

use std::process::Command;
use syncoid_rsync_testkit::{Host, Sshd, Zfs};

/// Serialises the tests of one binary: syncoid's busy check (`ps` for a
/// `zfs receive` into the target) sees every test's processes, and tests
/// share dataset names inside their private emulated hosts.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_syncoid-rsync")
}

/// Runs syncoid-rsync on `host` (its zfs, its PATH).
pub fn run(host: &Host, args: &[&str]) -> Zfs {
    let out = host
        .command(bin())
        .args(args)
        .output()
        .expect("run syncoid-rsync");
    Zfs {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        status: out.status.code().unwrap_or(-1),
    }
}

/// Runs it and requires exit status `code`.
pub fn run_expect(host: &Host, args: &[&str], code: i32) -> Zfs {
    let r = run(host, args);
    assert_eq!(
        r.status, code,
        "syncoid-rsync {args:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    r
}

pub fn ok(host: &Host, args: &[&str]) -> Zfs {
    run_expect(host, args, 0)
}

/// A host with pools src and dst and src/data holding two snapshots.
pub fn two_pools() -> Host {
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "src/data"]).ok();
    h.write("src/data", "a.txt", b"alpha");
    h.write(
        "src/data",
        "dir/b.bin",
        &(0..50_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    );
    h.zfs(&["snapshot", "src/data@first"]).ok();
    h.write("src/data", "c.txt", b"gamma");
    h.zfs(&["snapshot", "src/data@second"]).ok();
    h
}

pub fn sync_snaps(snaps: &[String]) -> Vec<String> {
    snaps
        .iter()
        .filter(|s| s.starts_with("syncoid_"))
        .cloned()
        .collect()
}

/// The target's snapshots carry the source's guids.
pub fn assert_same_guids(h: &Host, src: &str, dst: &str) {
    let s = h.snapshot_guids(src);
    for (name, guid) in h.snapshot_guids(dst) {
        assert_eq!(
            s.get(&name),
            Some(&guid),
            "{dst}@{name} does not match the source"
        );
    }
}

/// zfs subcommands that destroy or roll back, from the emulator's log.
pub fn destructive_calls(h: &Host) -> Vec<String> {
    h.log()
        .iter()
        .filter(|e| e["prog"] == "zfs")
        .filter_map(|e| {
            let argv: Vec<String> = e["argv"]
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            let destructive = matches!(argv[0].as_str(), "destroy" | "rollback")
                || (argv[0] == "receive" && argv.iter().any(|a| a == "-F"));
            (destructive && !argv.contains(&"-n".to_string())).then(|| argv.join(" "))
        })
        .collect()
}

/// A directory of symlinks to only the given system tools: a PATH without
/// mbuffer, the compressors (and, if left out, zfs).
pub fn restricted_path(h: &Host, with_zfs: bool) -> String {
    let dir = h.dir().join("restricted-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for tool in ["sh", "bash", "ps", "uname", "awk", "cat", "true"] {
        for base in ["/usr/bin", "/bin"] {
            let from = std::path::Path::new(base).join(tool);
            if from.exists() && !dir.join(tool).exists() {
                std::os::unix::fs::symlink(&from, dir.join(tool)).unwrap();
            }
        }
    }
    if with_zfs {
        format!("{}:{}", h.bin.display(), dir.display())
    } else {
        dir.display().to_string()
    }
}

pub fn sh(cmd: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(cmd);
    c
}

pub struct Lab {
    pub local: Host,
    pub a: Host,
    pub b: Host,
    _sa: Sshd,
    _sb: Sshd,
    pub config: String,
}

/// This machine (pool `here`), and two ssh hosts `hosta` (pool `pa`) and
/// `hostb` (pool `pb`), each with its own emulator state.
pub fn lab() -> Lab {
    let local = Host::new(&["here"]);
    let a = Host::new(&["pa"]);
    let b = Host::new(&["pb"]);
    let sa = Sshd::start(&a);
    let sb = Sshd::start(&b);
    let config = local.dir().join("ssh_config");
    std::fs::write(
        &config,
        format!("{}{}", sa.config_block("hosta"), sb.config_block("hostb")),
    )
    .unwrap();
    Lab {
        config: config.display().to_string(),
        local,
        a,
        b,
        _sa: sa,
        _sb: sb,
    }
}

/// Waits until `f` says so, polling every 100 ms; fails the test after
/// `secs` seconds, naming `what`.
pub fn wait_until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
