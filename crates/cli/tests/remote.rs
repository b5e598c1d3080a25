//! Standard mode through a real sshd: push, pull and remote -> remote
//! (relayed through this machine), with the compressors and mbuffer, and
//! dataset names that need quoting on the remote shell.

mod common;
use common::*;
use syncoid_rsync_testkit::{Host, Sshd};

fn seed(h: &Host, fs: &str) {
    h.zfs(&["create", fs]).ok();
    h.write(
        fs,
        "data.bin",
        &(0..300_000u32).map(|i| (i % 13) as u8).collect::<Vec<_>>(),
    );
    h.write(fs, "sub/note", b"note");
    h.zfs(&["snapshot", &format!("{fs}@s1")]).ok();
    h.write(fs, "sub/later", b"later");
    h.zfs(&["snapshot", &format!("{fs}@s2")]).ok();
}

#[test]
fn push_pull_and_relay_with_each_compressor() {
    let _serial = serial();
    let l = lab();
    let cfg = format!("--sshconfig={}", l.config);
    seed(&l.local, "here/data");
    for (i, comp) in ["lzo", "zstd-fast", "gzip", "lz4", "xz", "pigz-fast", "none"]
        .iter()
        .enumerate()
    {
        let c = format!("--compress={comp}");
        let pushed = format!("pa/push{i}");
        ok(
            &l.local,
            &[&cfg, &c, "here/data", &format!("root@hosta:{pushed}")],
        );
        assert_eq!(
            l.a.files(&pushed),
            l.local.files("here/data"),
            "push with {comp}"
        );
        let pulled = format!("here/pull{i}");
        ok(
            &l.local,
            &[&cfg, &c, &format!("root@hosta:{pushed}"), &pulled],
        );
        assert_eq!(
            l.local.files(&pulled),
            l.local.files("here/data"),
            "pull with {comp}"
        );
        let relayed = format!("pb/relay{i}");
        ok(
            &l.local,
            &[
                &cfg,
                &c,
                &format!("root@hosta:{pushed}"),
                &format!("root@hostb:{relayed}"),
            ],
        );
        assert_eq!(
            l.b.files(&relayed),
            l.local.files("here/data"),
            "relay with {comp}"
        );
        assert_eq!(l.b.snapshots(&relayed)[..2], ["s1", "s2"]);
    }
    // An incremental push after a change.
    l.local.write("here/data", "sub/newer", b"newer");
    ok(&l.local, &[&cfg, "here/data", "root@hosta:pa/push0"]);
    assert_eq!(l.a.read("pa/push0", "sub/newer").unwrap(), b"newer");
}

#[test]
fn names_needing_quotes_cross_ssh_intact() {
    let _serial = serial();
    let l = lab();
    let cfg = format!("--sshconfig={}", l.config);
    seed(&l.a, "pa/my data");
    ok(
        &l.local,
        &[&cfg, "root@hosta:pa/my data", "root@hostb:pb/copy of data"],
    );
    assert_eq!(l.b.files("pb/copy of data"), l.a.files("pa/my data"));
    let r = run_expect(&l.local, &[&cfg, "root@hosta:pa/x;rm -rf ~", "here/x"], 64);
    assert!(r.stderr.contains("invalid"), "{}", r.stderr);
}

#[test]
fn recursive_push_with_a_clone_through_ssh() {
    let _serial = serial();
    let l = lab();
    let cfg = format!("--sshconfig={}", l.config);
    seed(&l.local, "here/tree");
    l.local.zfs(&["create", "here/tree/kid"]).ok();
    l.local.write("here/tree/kid", "k", b"kid");
    l.local.zfs(&["clone", "here/tree@s1", "here/tree/cl"]).ok();
    ok(&l.local, &[&cfg, "-r", "here/tree", "root@hosta:pa/tree"]);
    assert_eq!(l.a.read("pa/tree/kid", "k").unwrap(), b"kid");
    assert!(l.a.get("origin", "pa/tree/cl").starts_with("pa/tree@s1"));
}

#[test]
fn insecure_direct_connection_carries_the_stream_over_plain_tcp() {
    let _serial = serial();
    let l = lab();
    let cfg = format!("--sshconfig={}", l.config);
    seed(&l.local, "here/data");
    for variant in ["", ",mbuffer"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let direct =
            format!("--insecure-direct-connection=127.0.0.1:{port},127.0.0.1:{port},10{variant}");
        let target = format!("pa/direct{}", variant.len());
        let r = ok(
            &l.local,
            &[
                &cfg,
                "--debug",
                &direct,
                "here/data",
                &format!("root@hosta:{target}"),
            ],
        );
        assert!(r.stdout.contains("socat - TCP:127.0.0.1:"), "{}", r.stdout);
        assert_eq!(
            l.a.files(&target),
            l.local.files("here/data"),
            "direct{variant}"
        );
    }
    let r = run_expect(
        &l.local,
        &[
            "--insecure-direct-connection=127.0.0.1:1",
            "here/data",
            "here/x",
        ],
        64,
    );
    assert!(r.stderr.contains("exactly one remote side"), "{}", r.stderr);
}

#[test]
fn unreachable_host_fails_preflight_clearly() {
    let _serial = serial();
    let l = lab();
    seed(&l.local, "here/data");
    let r = run_expect(
        &l.local,
        &[
            "--sshport=1",
            "-o",
            "ConnectTimeout=3",
            "here/data",
            "root@127.0.0.1:pa/x",
        ],
        69,
    );
    assert!(r.stderr.contains("pre-flight failed"), "{}", r.stderr);
    assert!(r.stderr.contains("target (root@127.0.0.1)"), "{}", r.stderr);
    // ssh's own error and a command to try that carries the user's
    // options; not our probe script.
    assert!(
        r.stderr
            .contains("(try: ssh -o ConnectTimeout=3 -p 1 root@127.0.0.1 true)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("command -v"), "{}", r.stderr);
    assert_eq!(
        sync_snaps(&l.local.snapshots("here/data")).len(),
        0,
        "nothing was snapshotted"
    );
}

#[test]
fn sshkey_sshport_and_sshoption_reach_the_host() {
    let _serial = serial();
    let local = Host::new(&["here"]);
    let remote = Host::new(&["far"]);
    let sshd = Sshd::start(&remote);
    seed(&local, "here/data");
    let port = format!("--sshport={}", sshd.port);
    let key = format!("--sshkey={}", sshd.key.display());
    let known = format!("UserKnownHostsFile={}/kh", remote.dir().display());
    ok(
        &local,
        &[
            &port,
            &key,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            &known,
            "-c",
            "aes128-gcm@openssh.com",
            "here/data",
            "root@127.0.0.1:far/data",
        ],
    );
    assert_eq!(remote.files("far/data"), local.files("here/data"));
}

#[test]
fn preflight_names_every_missing_optional_tool_with_what_to_install() {
    let _serial = serial();
    let local = Host::new(&["here"]);
    let far = Host::new(&["far"]);
    let path = restricted_path(&far, true);
    let sshd = Sshd::start_with_env(&far, &[("PATH", &path)]);
    seed(&local, "here/data");
    let reach = sshd.syncoid_args();
    let base: Vec<&str> = reach.iter().map(String::as_str).collect();
    let mut args = base.clone();
    args.extend(["here/data", "root@127.0.0.1:far/data"]);
    // lzop (the default --compress) and mbuffer are missing on the target:
    // both are named, with the package to install, and the run goes on.
    let r = ok(&local, &args);
    for line in [
        "lzop not available on target - sync will continue without compression.",
        "mbuffer not available on target - sync will continue without target buffering.",
        "root@127.0.0.1: apt install lzop",
        "root@127.0.0.1: apt install mbuffer",
    ] {
        assert!(
            r.stderr.contains(line),
            "missing {line:?} in:\n{}",
            r.stderr
        );
    }
    assert_eq!(far.files("far/data"), local.files("here/data"));
    // --no-command-checks skips the optional part, as in syncoid: the
    // tools are then assumed, and their absence fails the transfer with a
    // hint instead of a pre-flight report.
    local.write("here/data", "new.txt", b"new");
    let mut unchecked = base.clone();
    unchecked.extend([
        "--no-command-checks",
        "here/data",
        "root@127.0.0.1:far/data",
    ]);
    let r = run_expect(&local, &unchecked, 2);
    assert!(!r.stderr.contains("apt install"), "{}", r.stderr);
    assert!(
        r.stderr.contains("a program is missing on that host"),
        "{}",
        r.stderr
    );
}

#[test]
fn preflight_reports_every_blocking_problem_at_once_and_changes_nothing() {
    let _serial = serial();
    let local = Host::new(&["here"]);
    let far = Host::new(&["far"]);
    let path = restricted_path(&far, false);
    let sshd = Sshd::start_with_env(
        &far,
        &[("PATH", &path), ("SYNCOID_RSYNC_TMP", "/nonexistent/tmp")],
    );
    seed(&local, "here/data");
    let mut args = vec!["--rsync".to_string()];
    args.extend(sshd.syncoid_args());
    args.extend(["here/data".into(), "root@127.0.0.1:far/data".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_expect(&local, &args, 69);
    assert!(r.stderr.contains("pre-flight failed"), "{}", r.stderr);
    assert!(
        r.stderr.contains("target (root@127.0.0.1): zfs not found in PATH: install OpenZFS (Debian: apt install zfsutils-linux)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("target (root@127.0.0.1): the agents' directory (/tmp, or $SYNCOID_RSYNC_TMP) is not writable"),
        "both problems at once: {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("source (local"),
        "the source is fine: {}",
        r.stderr
    );
    assert_eq!(
        sync_snaps(&local.snapshots("here/data")).len(),
        0,
        "nothing was snapshotted"
    );
}

/// A target that someone's `zfs receive` is writing to (seen through the
/// same ssh call that lists the target) is reported busy and left alone,
/// whether it exists yet or not; once that receive is gone, the same
/// command replicates.
#[test]
fn a_target_being_received_into_is_busy_and_left_alone() {
    use std::process::Stdio;
    let _serial = serial();
    let l = lab();
    let cfg = format!("--sshconfig={}", l.config);
    seed(&l.local, "here/data");
    let args = [cfg.as_str(), "here/data", "root@hosta:pa/busy"];
    let busy_run = |exists: bool| {
        // Another receive into pa/busy, waiting for its stream.
        let mut other =
            l.a.command("zfs")
                .args(["receive", "-F", "pa/busy"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
        let listed = || {
            let ps = std::process::Command::new("ps")
                .args(["-Ao", "args="])
                .output()
                .unwrap();
            String::from_utf8_lossy(&ps.stdout).contains("receive -F pa/busy")
        };
        wait_until("the other receive", 10, listed);
        let before = l.a.zfs(&["list", "-t", "all", "-r", "pa"]).stdout;
        let r = run(&l.local, &args);
        let said = format!("{}{}", r.stdout, r.stderr);
        assert_eq!(
            r.status, 1,
            "busy is exit status 1 (exists: {exists}): {said}"
        );
        assert!(
            said.contains("Cannot sync now: pa/busy is already target of a zfs receive process."),
            "{said}"
        );
        assert!(
            said.contains("0 replicated, 0 already up to date, 0 skipped, 1 busy"),
            "{said}"
        );
        assert_eq!(l.a.zfs(&["list", "-t", "all", "-r", "pa"]).stdout, before);
        drop(other.stdin.take());
        let _ = other.wait();
    };
    busy_run(false);
    assert_ne!(l.a.zfs(&["list", "pa/busy"]).status, 0, "nothing received");
    ok(&l.local, &args);
    assert_eq!(l.a.files("pa/busy"), l.local.files("here/data"));
    l.local.write("here/data", "more", b"more");
    l.local.zfs(&["snapshot", "here/data@s3"]).ok();
    busy_run(true);
    ok(&l.local, &args);
    assert_eq!(l.a.files("pa/busy"), l.local.files("here/data"));
}

/// Processes whose command line mentions `needle` (ours: ssh masters on a
/// control path in a test's own directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

/// After a remote run ends, successful or not, nothing of ours remains:
/// no ssh control directory and no ssh master waiting out ControlPersist.
#[test]
fn a_remote_run_leaves_no_control_directory_and_no_ssh_master() {
    let _serial = serial();
    let l = lab();
    let cfg = format!("--sshconfig={}", l.config);
    seed(&l.local, "here/data");
    // Short: the control socket's path must fit a Unix socket address.
    let own_tmp = tempfile::Builder::new().prefix("srt").tempdir().unwrap();
    let tmpdir = own_tmp.path().to_path_buf();
    let tmp = tmpdir.display().to_string();
    for (args, code) in [
        (vec![cfg.as_str(), "here/data", "root@hosta:pa/data"], 0),
        (vec![cfg.as_str(), "root@hosta:pa/nope", "here/x"], 2),
    ] {
        let out = l
            .local
            .command(bin())
            .env("TMPDIR", &tmp)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left: Vec<_> = std::fs::read_dir(&tmpdir).unwrap().flatten().collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
        assert_eq!(processes_mentioning(&tmp), Vec::<String>::new(), "{args:?}");
    }
    assert_eq!(l.a.files("pa/data"), l.local.files("here/data"));
}

/// A host that accepts the TCP connection and never speaks: standard mode
/// gives up after ssh's ConnectTimeout (10 s unless the user sets one)
/// instead of hanging a cron run.
#[test]
fn a_host_that_never_answers_fails_preflight_within_the_connect_timeout() {
    let _serial = serial();
    let h = Host::new(&["here"]);
    seed(&h, "here/data");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    // Accepted and held open, never answered, until the run is over.
    let held = std::thread::spawn(move || silent.accept());
    let t = std::time::Instant::now();
    let r = run_expect(
        &h,
        &[
            "--sshport",
            &port,
            "-o",
            "StrictHostKeyChecking=no",
            "here/data",
            "root@127.0.0.1:pa/x",
        ],
        69,
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );
    assert!(r.stderr.contains("pre-flight failed"), "{}", r.stderr);
    drop(held);
}

/// A sudo whose rule allows this user zfs and nothing else, without a
/// password (the usual least-privilege rule for a backup user); it logs
/// every call.
const ZFS_ONLY_SUDO: &str = r#"#!/bin/bash
echo "$*" >> "$(dirname "$0")/../sudo.log"
[ "$1" = -n ] && shift
case "$1" in
  zfs) exec "$@" ;;
  *) echo "Sorry, user backup is not allowed to execute '/usr/bin/$1' as root on hosta." >&2; exit 1 ;;
esac
"#;

const PASSWORD_SUDO: &str = "#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n";

fn fake_sudo(h: &Host, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = h.bin.join("sudo");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// With a host given without `root@`, zfs runs through sudo there. A rule
/// that allows zfs only (not `true`) is enough, in both modes: pre-flight
/// probes sudo with a zfs command, and nothing but zfs goes through sudo.
/// A sudo that would ask for a password is reported before anything runs.
#[test]
fn a_sudo_rule_that_allows_only_zfs_is_enough() {
    let _serial = serial();
    let l = lab();
    let cfg = format!("--sshconfig={}", l.config);
    seed(&l.local, "here/data");
    fake_sudo(&l.a, ZFS_ONLY_SUDO);
    ok(&l.local, &[&cfg, "here/data", "hosta:pa/std"]);
    assert_eq!(l.a.files("pa/std"), l.local.files("here/data"));
    ok(&l.local, &[&cfg, "--rsync", "here/data", "hosta:pa/rs"]);
    assert_eq!(l.a.files("pa/rs"), l.local.files("here/data"));
    ok(&l.local, &[&cfg, "--rsync", "hosta:pa/rs", "here/back"]);
    assert_eq!(l.local.files("here/back"), l.local.files("here/data"));
    let calls = std::fs::read_to_string(l.a.dir().join("sudo.log")).unwrap();
    assert!(calls.lines().any(|c| c.contains("receive")), "{calls}");
    assert!(calls.lines().any(|c| c.contains("send")), "{calls}");
    assert!(
        calls
            .lines()
            .all(|c| c.starts_with("zfs ") || c.starts_with("-n zfs ")),
        "only zfs goes through sudo:\n{calls}"
    );

    fake_sudo(&l.a, PASSWORD_SUDO);
    let r = run_expect(&l.local, &[&cfg, "here/data", "hosta:pa/pw"], 69);
    assert!(
        r.stderr
            .contains("zfs needs root there and sudo asks for a password"),
        "{}",
        r.stderr
    );
    assert!(!l.a.exists("pa/pw"));
}
