//! `--rsync` end to end on the emulator: the transport survives killed
//! connections, a killed coordinator, a killed receiver agent and corrupted
//! chunks, feeds zfs receive every byte exactly once, and leaves nothing
//! behind.

mod agents;
mod common;
use agents::*;
use common::*;
use std::time::{Duration, Instant};
use syncoid_rsync_testkit::{Host, Sshd};

#[test]
fn push_through_sshd_provisions_itself_and_cleans_up() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "8M");
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec![
        "--rsync",
        "--debug",
        "--chunk-size=256K",
        "--inactivity-timeout=40s",
    ];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/data", "root@127.0.0.1:far/data"]);
    let (code, stdout, stderr) = finish(spawn(&local, &args, &[]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_copy_removed(&stdout);
    assert_eq!(far.files("far/data"), local.files("src/data"));
    assert_fed_once(&far);
    assert_eq!(far.tmp_entries(), Vec::<String>::new());
    assert_eq!(local.tmp_entries(), Vec::<String>::new());
}

#[test]
fn local_transfer_is_identical_fed_once_and_leaves_nothing_behind() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "20M");
    let r = ok(
        &h,
        &["--rsync", "--chunk-size=256K", "src/data", "dst/data"],
    );
    assert!(
        r.stdout.contains("--rsync: 20.0 MB received and verified"),
        "{}",
        r.stdout
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_eq!(h.snapshot_guids("dst/data").len(), 2);
    assert_fed_once(&h);
    assert!(
        h.tmp_entries().is_empty(),
        "session dirs left: {:?}",
        h.tmp_entries()
    );
    // An incremental afterwards goes the same way.
    h.write("src/data", "more.txt", b"more");
    ok(&h, &["--rsync", "src/data", "dst/data"]);
    assert_eq!(h.read("dst/data", "more.txt").unwrap(), b"more");
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

/// An `ssh` in front of the real one that refuses the first copy of the
/// binary, then fails the receive agent's start three ways in turn: no
/// answer at all (hangs), connection refused (nothing ran), and the answer
/// lost after the agent started (the session dir it printed is kept in
/// `state/lost/dir`). Then it passes.
const FLAKY_START_SSH: &str = r#"#!/bin/bash
st="$(dirname "$0")/state"
case "$*" in
*"syncoid-rsync-bin.XXXXXXXX"*)
  if mkdir "$st/copy" 2>/dev/null; then
    echo "ssh: connect to host 127.0.0.1: Network is unreachable" >&2; exit 255
  fi;;
*"agent start receive"*)
  if mkdir "$st/hung" 2>/dev/null; then exec sleep 600; fi
  if mkdir "$st/refused" 2>/dev/null; then
    echo "ssh: connect to host 127.0.0.1: Connection refused" >&2; exit 255
  fi
  if mkdir "$st/lost" 2>/dev/null; then
    exec 3< <(exec /usr/bin/ssh "$@" </dev/null 2>/dev/null)
    read -r dir <&3
    kill $! 2>/dev/null
    echo "$dir" > "$st/lost/dir"
    echo "Connection reset by peer" >&2; exit 255
  fi;;
esac
exec /usr/bin/ssh "$@"
"#;

/// A connection that fails while the binary is copied or an agent starts
/// is retried, and the agent a lost answer started is found and used, not
/// doubled: one zfs receive took the whole stream, each byte once, and
/// nothing is left behind on either host.
#[test]
fn a_connection_lost_while_setting_up_is_retried_without_a_second_agent() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "4M");
    let (wrap, path) = wrapped_ssh(&local, "flaky-ssh", FLAKY_START_SSH);
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec![
        "--rsync",
        "--chunk-size=256K",
        "--no-sync-snap",
        "--link-timeout=2s",
    ];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/data", "root@127.0.0.1:far/data"]);
    let env = [("PATH", path.as_str())];
    let (code, out, err) = finish(spawn(&local, &args, &env));
    assert_eq!(code, 0, "{out}\n{err}");
    for what in [
        "copying syncoid-rsync to root@127.0.0.1:",
        "failed (exit status 255): ssh: connect to host 127.0.0.1: Network is unreachable",
        "no answer within 6s",
        "(exit status 255): ssh: connect to host",
        "Connection reset by peer",
    ] {
        assert!(err.contains(what), "{what}: {err}");
    }
    assert_eq!(err.matches("; trying again in").count(), 4, "{err}");
    assert_one_clean_push(&local, &far, "far/data");
    let lost = std::fs::read_to_string(wrap.join("state/lost/dir")).unwrap();
    assert!(lost.trim().starts_with('/'), "the lost answer: {lost:?}");
    assert!(
        out.contains(&format!(
            "the receive agent on root@127.0.0.1 was started before the connection failed: using it ({})",
            lost.trim()
        )),
        "{out}"
    );
}

/// An ssh in front of the real one that loses calls around the transfer:
/// the first `zfs snapshot` and `zfs destroy` run but their answers are
/// lost, and the first size estimate is refused before it runs.
const FLAKY_CALLS_SSH: &str = r#"#!/bin/bash
st="$(dirname "$0")/state"
lost() { /usr/bin/ssh "$@" >/dev/null 2>&1; echo "Connection reset by peer" >&2; exit 255; }
case "$*" in
*"zfs snapshot"*) if mkdir "$st/snapshot" 2>/dev/null; then lost "$@"; fi;;
*"zfs destroy"*) if mkdir "$st/destroy" 2>/dev/null; then lost "$@"; fi;;
*"zfs send -nvP"*) if mkdir "$st/estimate" 2>/dev/null; then
  echo "ssh: connect to host 127.0.0.1 port 22: Connection refused" >&2; exit 255
fi;;
esac
exec /usr/bin/ssh "$@"
"#;

/// With `--rsync`, the calls around the transfer survive a lost connection
/// too: a read refused is asked again (the estimate, its size shown), and a snapshot made or pruned by
/// a call whose answer was lost is not made twice nor reported failed (its
/// repeat finds it done). Two pulls with sync snapshots: both succeed, the
/// source keeps one sync snapshot, and both sides hold the same ones.
#[test]
fn calls_around_the_transfer_whose_connection_fails_are_tried_again() {
    let _serial = serial();
    let local = Host::new(&["dst"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&far, "far/data", "2M");
    let (_, path) = wrapped_ssh(&local, "flaky-calls-ssh", FLAKY_CALLS_SSH);
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec!["--rsync"];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["root@127.0.0.1:far/data", "dst/data"]);
    let env = [("PATH", path.as_str())];
    let (code, out, first) = finish(spawn(&local, &args, &env));
    assert_eq!(code, 0, "{out}\n{first}");
    for what in [
        "lost its connection (ssh: connect to host 127.0.0.1 port 22: Connection refused)",
        "was done by the try whose answer was lost (cannot create snapshot",
        "of 2.0 MB",
    ] {
        assert!(first.contains(what), "{what}: {first}");
    }
    let (code, out, second) = finish(spawn(&local, &args, &env));
    assert_eq!(code, 0, "{out}\n{second}");
    assert!(
        second.contains(
            "was done by the try whose answer was lost (could not find any snapshots to destroy"
        ),
        "{second}"
    );
    assert!(!second.contains("pruning old sync snapshots"), "{second}");
    let sync: Vec<String> = far
        .snapshots("far/data")
        .into_iter()
        .filter(|s| s.starts_with("syncoid_"))
        .collect();
    assert_eq!(sync.len(), 1, "{sync:?}");
    assert_eq!(
        local.snapshot_guids("dst/data"),
        far.snapshot_guids("far/data")
    );
}

/// A noexec mount over a directory the test made, unmounted when dropped.
struct NoexecMount(std::path::PathBuf);

impl Drop for NoexecMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a noexec tmpfs (0700) over `dir`; None without the right to
/// mount (not root).
fn noexec_mount(dir: &std::path::Path) -> Option<NoexecMount> {
    std::fs::create_dir_all(dir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "noexec,mode=0700", "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    st.success().then(|| NoexecMount(dir.to_path_buf()))
}

/// `--rsync` to `far` through `sshd`, with `extra` options.
fn push_args<'a>(sshd: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = vec!["--rsync", "--debug"];
    args.extend(extra);
    args.extend(sshd.iter().map(String::as_str));
    args.extend(["src/data", "root@127.0.0.1:far/data"]);
    args
}

/// A host whose /tmp (its agents' directory) is mounted noexec, a common
/// hardening rule, and that has no syncoid-rsync installed: the copy goes
/// to the login's runtime directory instead, where programs may run, and
/// is gone at the end.
#[test]
fn a_host_whose_tmp_is_noexec_gets_the_copy_in_its_runtime_dir() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let Some(_mount) = noexec_mount(&far.tmp()) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let run = far.dir().join("run-user");
    let home = far.dir().join("home");
    for d in [&run, &home] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    let (run_s, home_s) = (run.display().to_string(), home.display().to_string());
    let sshd = Sshd::start_with_env(
        &far,
        &[
            ("XDG_RUNTIME_DIR", run_s.as_str()),
            ("HOME", home_s.as_str()),
        ],
    );
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "2M");
    let ssh = sshd.syncoid_args();
    let r = ok(&local, &push_args(&ssh, &["--no-sync-snap"]));
    assert!(
        r.stdout.contains(&format!(
            "copied syncoid-rsync to root@127.0.0.1:{run_s}/syncoid-rsync-bin."
        )),
        "{}",
        r.stdout
    );
    assert_one_clean_push(&local, &far, "far/data");
    let left = |d: &std::path::Path| std::fs::read_dir(d).unwrap().count();
    assert_eq!((left(&run), left(&home)), (0, 0), "a copy was left behind");
}

/// No place on the host lets the copy run (/tmp and the home are noexec
/// mounts, no runtime directory): pre-flight says what it tried and what
/// to do (exit 69) before anything changes: no sync snapshot, nothing
/// copied, no agent.
#[test]
fn a_host_where_no_copy_can_run_is_refused_before_anything_changes() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let Some(_mount) = noexec_mount(&far.tmp()) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let home = far.tmp().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home_s = home.display().to_string();
    let sshd = Sshd::start_with_env(&far, &[("XDG_RUNTIME_DIR", ""), ("HOME", home_s.as_str())]);
    synthetic(&local, "src/data", "2M");
    let snaps = local.snapshots("src/data");
    let ssh = sshd.syncoid_args();
    let r = run_expect(&local, &push_args(&ssh, &[]), 69);
    assert!(
        r.stderr
            .contains("no directory where the copy of syncoid-rsync it lacks could run")
            && r.stderr
                .contains(&format!("{home_s}: programs cannot run there"))
            && r.stderr.contains("--agent-path"),
        "{}",
        r.stderr
    );
    assert_eq!(
        local.snapshots("src/data"),
        snaps,
        "a sync snapshot was made"
    );
    assert!(!far.exists("far/data"));
    assert_eq!(far.tmp_entries(), vec!["home".to_string()]);
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0);
}

/// `--agent-path` names the binary a remote host runs: nothing is copied
/// when it is this version; one that cannot run there (built for another
/// architecture) or is another version is refused by pre-flight with what
/// it said, exit 69, before anything changes.
#[test]
fn agent_path_names_the_remote_binary_and_one_that_cannot_run_is_refused() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "2M");
    let ssh = sshd.syncoid_args();
    let snaps = local.snapshots("src/data");

    // An ELF file for aarch64: the loader cannot run it here.
    let foreign = far.dir().join("aarch64-syncoid-rsync");
    let mut elf = std::fs::read(bin()).unwrap();
    elf.truncate(4096);
    elf[18] = 183; // e_machine: EM_AARCH64
    elf[19] = 0;
    std::fs::write(&foreign, elf).unwrap();
    std::fs::set_permissions(
        &foreign,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let foreign_s = format!("--target-agent-path={}", foreign.display());
    let r = run_expect(&local, &push_args(&ssh, &[&foreign_s]), 69);
    assert!(
        r.stderr.contains(&format!(
            "{} cannot run there (--agent-path)",
            foreign.display()
        )),
        "{}",
        r.stderr
    );
    // An older version.
    let old = far.dir().join("old-syncoid-rsync");
    std::fs::write(&old, "#!/bin/sh\necho syncoid-rsync 0.0.9\n").unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let old_s = format!("--agent-path={}", old.display());
    let r = run_expect(&local, &push_args(&ssh, &[&old_s]), 69);
    assert!(
        r.stderr.contains(&format!(
            "{} --version says 'syncoid-rsync 0.0.9', not 'syncoid-rsync ",
            old.display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(
        local.snapshots("src/data"),
        snaps,
        "a sync snapshot was made"
    );
    assert!(!far.exists("far/data"));
    assert_eq!(far.tmp_entries(), Vec::<String>::new());

    // This very binary, put there by hand: used as it is, nothing copied.
    let mine = far.dir().join("syncoid-rsync");
    std::fs::copy(bin(), &mine).unwrap();
    let mine_s = format!("--agent-path={}", mine.display());
    let r = ok(&local, &push_args(&ssh, &["--no-sync-snap", &mine_s]));
    assert!(!r.stdout.contains("copied syncoid-rsync"), "{}", r.stdout);
    assert_one_clean_push(&local, &far, "far/data");
    assert!(mine.exists(), "the named binary is the user's: left alone");

    let r = run_expect(&local, &["--agent-path=/x", "src/data", "dst/data"], 64);
    assert!(
        r.stderr.contains("--agent-path is for --rsync"),
        "{}",
        r.stderr
    );
}

#[test]
fn push_through_sshd_provisions_itself_and_survives_killed_connections() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "48M");
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec!["--rsync", "--debug", "--chunk-size=256K", "--no-sync-snap"];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/data", "root@127.0.0.1:far/data"]);
    // ~6 s of sending; the connections are killed three times meanwhile.
    let child = spawn(&local, &args, &[("FAKEZFS_SEND_RATE", "8M")]);
    let pid = child.id();
    let mut kills = 0;
    let mut receiver_log = String::new();
    let t = Instant::now();
    while kills < 3 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(1200));
        if let Some(log) = agent_log(&far) {
            receiver_log = log;
        }
        // Once the receiver is connected: a connection killed while the
        // agent starts is a retried start, not an outage.
        if !receiver_log.contains("coordinator connected") {
            continue;
        }
        for p in agent_links(pid) {
            // Shown if the test fails: what was killed, and when.
            let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
            eprintln!(
                "killing {p} at {:?}: {}",
                t.elapsed(),
                cmd.replace('\0', " ")
            );
            kill(p, 9);
            kills += 1;
        }
    }
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(kills >= 1, "the test killed {kills} connections");
    assert!(err.contains("link to the agents lost"), "{err}");
    // Each connection, the first and the reconnections, handed the ssh
    // session's pipes to the agent (no process copying between them).
    assert!(
        receiver_log
            .matches("coordinator connected (ssh session attached)")
            .count()
            >= 2,
        "{receiver_log}"
    );
    assert!(
        !receiver_log.contains("connection refused"),
        "{receiver_log}"
    );
    assert_copy_removed(&out);
    assert_one_clean_push(&local, &far, "far/data");
    // Nothing left to send: the pre-flight found no live agents, so the
    // binary is not copied at all.
    let r = ok(&local, &args);
    assert!(
        r.stdout
            .contains("live agents: 0 on the source, 0 on the target"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("copied syncoid-rsync"), "{}", r.stdout);
    assert_eq!(far.tmp_entries(), Vec::<String>::new());
}

/// The size (in MiB) before `what` in `--rsync: 20.0 MB received and
/// verified (92 KB on the wire), ...`.
fn reported_mb(stdout: &str, what: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.contains("--rsync:"))
        .unwrap_or_else(|| panic!("no --rsync summary in {stdout}"));
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("{what} not in {line}"));
    let words: Vec<&str> = line[..at].split_whitespace().collect();
    let (num, unit) = (
        words[words.len() - 2].trim_start_matches('('),
        words[words.len() - 1],
    );
    let scale = match unit {
        "B" => 1.0 / 1048576.0,
        "KB" => 1.0 / 1024.0,
        "MB" => 1.0,
        "GB" => 1024.0,
        _ => panic!("unit {unit} in {line}"),
    };
    num.parse::<f64>()
        .unwrap_or_else(|_| panic!("{num} in {line}"))
        * scale
}

/// A stream that compresses to almost nothing (zeros): every chunk comes
/// as a tiny frame and is unpacked into a buffer of its own; those
/// buffers are kept for reuse only up to a bound, so the receiver's
/// memory stays flat (it grew by a chunk per chunk when they were all
/// kept).
#[test]
fn a_stream_that_compresses_to_nothing_keeps_the_receivers_memory_flat() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    h.zfs(&["create", "src/zeros"]).ok();
    h.write("src/zeros", "zeros.bin", &vec![0u8; 300 << 20]);
    h.zfs(&["snapshot", "src/zeros@s1"]).ok();
    let log = h.dir().join("rusage.log");
    let log_env = log.to_str().unwrap();
    let (code, out, err) = finish(spawn(
        &h,
        &["--rsync", "--no-sync-snap", "src/zeros", "dst/zeros"],
        &[("SYNCOID_RSYNC_RUSAGE_LOG", log_env)],
    ));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(h.files("dst/zeros"), h.files("src/zeros"));
    assert_fed_once(&h);
    let receiver_line = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("receive "))
            .map(str::to_string)
    };
    wait_until("the receiver's rusage line", 10, || {
        receiver_line().is_some()
    });
    let receiver = receiver_line().expect("rusage line");
    // "receive PID MAX_RSS_KIB ...": 300 chunks of 1 MiB went through.
    let rss_kib: u64 = receiver.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        rss_kib < 64 << 10,
        "receiver peak RSS {rss_kib} KiB: {receiver}"
    );
}

#[test]
fn chunks_are_compressed_in_process_and_arrive_identical() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    h.zfs(&["create", "src/text"]).ok();
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i}: the quick brown fox\n").into_bytes())
        .collect();
    h.write("src/text", "log.txt", &text);
    h.zfs(&["snapshot", "src/text@s1"]).ok();
    // Default in --rsync mode: zstd; the wire carries far less than the stream.
    let r = ok(&h, &["--rsync", "--no-sync-snap", "src/text", "dst/text"]);
    let (stream, wire) = (
        reported_mb(&r.stdout, "received"),
        reported_mb(&r.stdout, "on the wire"),
    );
    assert!(stream > 5.0 && wire < stream / 4.0, "{}", r.stdout);
    assert_eq!(h.files("dst/text"), h.files("src/text"));
    assert_fed_once(&h);
    // --compress=none sends the stream as it is.
    let r = ok(
        &h,
        &[
            "--rsync",
            "--compress=none",
            "--no-sync-snap",
            "src/text",
            "dst/raw",
        ],
    );
    let (stream, wire) = (
        reported_mb(&r.stdout, "received"),
        reported_mb(&r.stdout, "on the wire"),
    );
    assert!((wire - stream).abs() < 0.05, "{}", r.stdout);
    assert_eq!(h.files("dst/raw"), h.files("src/text"));
    // Incompressible data is sent raw, not inflated.
    synthetic(&h, "src/noise", "6M");
    let r = ok(&h, &["--rsync", "--no-sync-snap", "src/noise", "dst/noise"]);
    let (stream, wire) = (
        reported_mb(&r.stdout, "received"),
        reported_mb(&r.stdout, "on the wire"),
    );
    assert!(wire <= stream, "{}", r.stdout);
    assert_eq!(h.files("dst/noise"), h.files("src/noise"));
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

#[test]
fn bandwidth_limits_hold_without_mbuffer_or_pv() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "6M");
    for flag in ["--source-bwlimit=2M", "--target-bwlimit=2M"] {
        let dst = if flag.starts_with("--source") {
            "dst/a"
        } else {
            "dst/b"
        };
        let t = Instant::now();
        let r = ok(
            &h,
            &[
                "--rsync",
                "--debug",
                "--compress=none",
                "--no-sync-snap",
                flag,
                "src/data",
                dst,
            ],
        );
        // 6 MiB at 2 MiB/s cannot take less than ~3 s (less one burst).
        assert!(
            t.elapsed() >= Duration::from_millis(2500),
            "{flag}: {:?}\n{}",
            t.elapsed(),
            r.stderr
        );
        // The limit is in process: no mbuffer or pv ran.
        let said = format!("{}{}", r.stdout, r.stderr);
        assert!(
            !said.contains("mbuffer") && !said.contains(" pv "),
            "{said}"
        );
        assert_eq!(h.files(dst), h.files("src/data"));
    }
    let r = run(
        &h,
        &["--rsync", "--source-bwlimit=fast", "src/data", "dst/c"],
    );
    assert_eq!(r.status, 64, "{}", r.stderr);
    assert!(
        r.stderr.contains("--source-bwlimit 'fast' is not a rate"),
        "{}",
        r.stderr
    );
    assert!(h.zfs(&["list", "dst/c"]).status != 0, "nothing was created");
}

#[test]
fn killed_coordinator_is_rerun_and_reattaches_to_the_live_agents() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "40M");
    let args = [
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=256K",
        "src/data",
        "dst/data",
    ];
    start_then_kill_coordinator(&h, &args, "10M", 8 << 20);
    assert_eq!(
        agent_pids(&h).len(),
        2,
        "the agents outlive their coordinator"
    );
    let r = ok(&h, &args);
    assert!(
        r.stdout.contains("re-attaching to the live agents"),
        "{}",
        r.stdout
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_eq!(
        h.log().iter().filter(|e| e["argv"][0] == "receive").count(),
        1,
        "the same zfs receive finished it"
    );
    assert_fed_once(&h);
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

/// Ctrl-C on an `--rsync` run says that the agents keep the transfer and
/// how to resume or stop it (exit 130, the agents live on); a standard run
/// that then finds the target busy names the agent whose receive it is;
/// the same command again finishes the transfer, each byte fed once.
#[test]
fn ctrl_c_says_the_agents_keep_the_transfer_and_a_standard_run_names_them() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "40M");
    let args = [
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=256K",
        "src/data",
        "dst/data",
    ];
    let run = spawn(&h, &args, &[("FAKEZFS_SEND_RATE", "10M")]);
    wait_until("both agents", 40, || agent_pids(&h).len() == 2);
    wait_until("the first connection", 40, || receiver_connected(&h));
    kill(run.id() as i32, 2); // SIGINT, as Ctrl-C sends
    let (code, out, err) = finish(run);
    assert_eq!(code, 130, "{out}\n{err}");
    for part in [
        "interrupted (Ctrl-C): the --rsync agents on local machine keep the transfer of local machine:src/data to local machine:dst/data",
        "Run the same command again to resume it where it stands",
        "syncoid-rsync agent stop DIR",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert_eq!(agent_pids(&h).len(), 2, "the agents live on");
    let r = run_expect(&h, &["--no-sync-snap", "src/data", "dst/data"], 1);
    assert!(
        r.stderr.contains("Cannot sync now: dst/data is already target of a zfs receive process. It is a syncoid-rsync --rsync agent's (pid ")
            && r.stderr.contains("syncoid-rsync agent stop DIR"),
        "{}",
        r.stderr
    );
    ok(&h, &args);
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_fed_once(&h);
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

/// A second run of the same command while the first still transfers (cron
/// starting the next run of a transfer that takes days) leaves the
/// transfer to the first: it reports the dataset busy (exit 1), makes no
/// sync snapshot and takes no connection from the agents. The first
/// finishes with each byte fed once and no reconnection; a run after it
/// works, and no lock is left behind.
#[test]
fn a_second_run_of_a_running_transfer_reports_it_busy_and_leaves_it_alone() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "40M");
    let args = ["--rsync", "--chunk-size=256K", "src/data", "dst/data"];
    let first = spawn(&h, &args, &[("FAKEZFS_SEND_RATE", "10M")]);
    wait_until("both agents", 40, || agent_pids(&h).len() == 2);
    wait_until("the first connection", 40, || receiver_connected(&h));
    let snaps = h.snapshots("src/data");
    let second = run_expect(&h, &args, 1);
    assert!(
        second.stderr.contains(
            "Cannot sync now: dst/data is already being replicated from src/data by another syncoid-rsync --rsync run on this machine (pid "
        ),
        "{}",
        second.stderr
    );
    assert_eq!(
        h.snapshots("src/data"),
        snaps,
        "the busy run made a snapshot"
    );
    let (code, out, err) = finish(first);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("link to the agents lost"), "{err}");
    assert_fed_once(&h);
    assert_same_guids(&h, "src/data", "dst/data");
    ok(&h, &args);
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

/// A recursive run looks for live agents once (in the pre-flight, not per
/// dataset) and still finds the interrupted child's.
#[test]
fn recursive_rerun_lists_agents_once_and_reattaches_the_interrupted_child() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    h.zfs(&["create", "src/root"]).ok();
    synthetic(&h, "src/root/a", "40M");
    for fs in ["src/root/b", "src/root/c", "src/root/d"] {
        synthetic(&h, fs, "1M");
    }
    h.zfs(&["snapshot", "src/root@s1"]).ok();
    let args = [
        "-r",
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=256K",
        "src/root",
        "dst/root",
    ];
    start_then_kill_coordinator(&h, &args, "10M", 8 << 20);
    assert_eq!(agent_pids(&h).len(), 2, "src/root/a's agents live on");
    let mut again = args.to_vec();
    again.push("--debug");
    let r = ok(&h, &again);
    assert!(
        r.stdout
            .contains("re-attaching to the live agents of an interrupted transfer of src/root/a"),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout
            .matches("live agents: 2 on the source, 2 on the target")
            .count(),
        1,
        "{}",
        r.stdout
    );
    for fs in ["a", "b", "c", "d"] {
        assert_eq!(
            h.files(&format!("dst/root/{fs}")),
            h.files(&format!("src/root/{fs}")),
            "{fs}"
        );
    }
    assert_fed_once(&h);
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

#[test]
fn killed_receiver_agent_is_replaced_and_the_resume_token_used() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "40M");
    let args = [
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=256K",
        "src/data",
        "dst/data",
    ];
    start_then_kill_coordinator(&h, &args, "10M", 8 << 20);
    let (_, receiver) = agent(&h, "receive");
    kill(receiver, 9);
    wait_until("a resume token", 10, || {
        token(&h, "dst/data").starts_with("1-")
    });
    let r = ok(&h, &args);
    assert!(r.stderr.contains("stopping its sender"), "{}", r.stderr);
    assert_resumed_from_token(&h, &h, "dst/data", &r.stdout);
}

/// An agent that dies while the coordinator runs (its host restarted,
/// say) is noticed as gone, not waited on for the inactivity timeout: the
/// other agent is stopped and the transfer goes on from the target's
/// resume token in the same run; the first receive kept what it took and
/// the second took the rest, each byte once; nothing is left behind.
#[test]
fn an_agent_gone_mid_transfer_is_replaced_from_the_resume_token_in_the_same_run() {
    for role in ["receive", "send"] {
        let _serial = serial();
        let h = Host::new(&["src", "dst"]);
        let _reap = Reaper(&h);
        synthetic(&h, "src/data", "40M");
        let args = [
            "--rsync",
            "--no-sync-snap",
            "--chunk-size=256K",
            "src/data",
            "dst/data",
        ];
        let child = spawn(&h, &args, &[("FAKEZFS_SEND_RATE", "10M")]);
        wait_until("both agents", 40, || agent_pids(&h).len() == 2);
        wait_receiving(&h, 8 << 20);
        let (_, pid) = agent(&h, role);
        kill(pid, 9);
        let (code, out, err) = finish(child);
        assert_eq!(code, 0, "{role}: {out}\n{err}");
        let who = if role == "send" { "sender" } else { "receiver" };
        assert!(
            err.contains(&format!("the {who} agent on local machine is gone")),
            "{role}: {err}"
        );
        assert!(
            err.contains("going on from the target's resume token"),
            "{err}"
        );
        assert!(!err.contains("no progress for"), "{err}");
        assert_resumed_from_token(&h, &h, "dst/data", &out);
    }
}

/// A receiving agent killed after its zfs receive read the stream's
/// header but before the first whole record: the target keeps a partial
/// state at offset 0 (as real zfs does, once a receive has begun), and
/// the transfer goes on from that token, from the start, in the same run:
/// the second receive is fed every byte, and the data arrives identical.
#[test]
fn a_receiver_killed_before_its_first_record_goes_on_from_offset_0() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "300K");
    let args = [
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=64K",
        "src/data",
        "dst/data",
    ];
    // At 100 KB/s the first record (256 KB) takes about two seconds; the
    // agent is killed once the receive read the first chunk (the header
    // and 64 KB of it; the emulator's own reads of its state are a few KB).
    let child = spawn(&h, &args, &[("FAKEZFS_SEND_RATE", "100K")]);
    wait_until("both agents", 40, || agent_pids(&h).len() == 2);
    wait_receiving(&h, 64 << 10);
    let (_, pid) = agent(&h, "receive");
    kill(pid, 9);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{}", told(&out, &err));
    assert!(
        out.contains("Resuming interrupted zfs send/receive"),
        "{out}\n{err}"
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    let f = fed(&h);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(
        (f[0].1, f[0].2),
        (0, 0),
        "the first receive took a record: {f:?}"
    );
    assert_eq!(f[1].1, 0, "{f:?}");
    assert_fed_once(&h);
    assert!(agent_pids(&h).is_empty() && h.tmp_entries().is_empty());
}

/// A rerun that finds an agent alive but unreachable (its socket removed,
/// as a tmp cleaner might after days) treats it as gone: it is stopped
/// with the other one and the transfer goes on from the resume token.
#[test]
fn a_rerun_that_cannot_reach_a_live_agent_goes_on_from_the_resume_token() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "40M");
    let args = [
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=256K",
        "src/data",
        "dst/data",
    ];
    start_then_kill_coordinator(&h, &args, "10M", 8 << 20);
    let (receiver, _) = agent(&h, "receive");
    std::fs::remove_file(receiver.join("sock")).unwrap();
    let r = ok(&h, &args);
    assert!(
        r.stdout.contains("re-attaching to the live agents"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("the receiver agent on local machine is gone"),
        "{}",
        r.stderr
    );
    assert_resumed_from_token(&h, &h, "dst/data", &r.stdout);
}

/// Through sshd the far end says the agent is gone (`agent bridge` finds
/// nothing listening): the receiver's host is asked again, the binary
/// copied afresh (a restarted host may have lost its /tmp), and the
/// transfer goes on from the resume token in the same run.
#[test]
fn a_remote_receiver_gone_mid_transfer_is_replaced_in_the_same_run() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "40M");
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec!["--rsync", "--chunk-size=256K", "--no-sync-snap"];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/data", "root@127.0.0.1:far/data"]);
    let child = spawn(&local, &args, &[("FAKEZFS_SEND_RATE", "10M")]);
    wait_until("the receiver connected", 40, || receiver_connected(&far));
    wait_receiving(&far, 8 << 20);
    let (_, pid) = agent(&far, "receive");
    kill(pid, 9);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("the receiver agent on root@127.0.0.1 is gone"),
        "{err}"
    );
    assert_resumed_from_token(&local, &far, "far/data", &out);
}

/// An ssh whose connection to the receiver's host damages chunk 3 once on
/// its way (`tamper`, in front of ssh, on the connection that carries
/// chunks: the receiver's).
fn tamper_ssh() -> String {
    format!(
        r#"#!/bin/bash
st="$(dirname "$0")/state"
case "$*" in
*" agent start receive "*|*" agent bridge "*)
  {tamper} 3 "$st/damaged" | /usr/bin/ssh "$@"; exit $? ;;
esac
exec /usr/bin/ssh "$@"
"#,
        tamper = syncoid_rsync_testkit::tamper_bin().display()
    )
}

/// A chunk damaged on the wire (after the sender hashed it) is refused by
/// the receiver, never fed, and sent again: the transfer completes with
/// identical data, each byte fed once, and the summary counts the re-send.
/// (A chunk damaged in the sender's own spool is refused by the sender:
/// `session::sender`'s tests.)
#[test]
fn a_chunk_damaged_on_the_wire_is_detected_never_fed_and_sent_again() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "4M");
    let (wrap, path) = wrapped_ssh(&local, "tamper-ssh", &tamper_ssh());
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec![
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=256K",
        "--compress=none",
    ];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/data", "root@127.0.0.1:far/data"]);
    let (code, stdout, stderr) = finish(spawn(&local, &args, &[("PATH", path.as_str())]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        wrap.join("state/damaged").exists(),
        "the link damaged no chunk: {stderr}"
    );
    let resent: u64 = stdout
        .split(" chunks (")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(resent >= 1, "{stdout}");
    assert_one_clean_push(&local, &far, "far/data");
}

#[test]
fn agents_give_up_after_their_inactivity_timeout_and_clean_up() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "40M");
    let args = [
        "--rsync",
        "--no-sync-snap",
        "--inactivity-timeout=3s",
        "src/data",
        "dst/data",
    ];
    let pids = start_then_kill_coordinator(&h, &args, "2M", 2 << 20);
    // The killed coordinator's lock file stays until the next run.
    wait_until("the agents to time out", 20, || {
        h.tmp_entries()
            .iter()
            .all(|e| e.starts_with("syncoid-rsync-locks-"))
    });
    for (role, pid) in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("gone");
        assert!(
            matches!(state, "gone" | "Z"),
            "{role} agent {pid} still runs ({state})"
        );
    }
    // The receiver's zfs receive -s kept what it had: the next run resumes.
    wait_until("a resume token", 10, || {
        token(&h, "dst/data").starts_with("1-")
    });
    assert!(received_bytes(&h) > 0);
    let r = ok(&h, &args);
    assert!(
        r.stdout.contains("Resuming interrupted zfs send/receive"),
        "{}",
        r.stdout
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

#[test]
fn sweeping_removes_only_our_dead_sessions_and_never_follows_symlinks() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let _serial = serial();
    let h = Host::new(&[]);
    let tmp = h.tmp();
    let mk = |name: &str, mode: u32, marker: bool| {
        let d = tmp.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        if marker {
            let m = r#"{"pid":999999999,"role":"send","key":"k","created":0}"#;
            std::fs::write(d.join(".syncoid-rsync-session"), m).unwrap();
        }
        d
    };
    let stale = mk("syncoid-rsync-00000000000000aa", 0o700, true);
    let unmarked = mk("syncoid-rsync-00000000000000bb", 0o700, false);
    let shared = mk("syncoid-rsync-00000000000000cc", 0o755, true);
    let foreign_name = mk("syncoid-rsync-notours", 0o700, true);
    let victim = h.dir().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(
        victim.join(".syncoid-rsync-session"),
        r#"{"pid":999999999,"role":"send","key":"k","created":0}"#,
    )
    .unwrap();
    std::fs::write(victim.join("precious"), b"keep").unwrap();
    let link = tmp.join("syncoid-rsync-00000000000000dd");
    symlink(&victim, &link).unwrap();

    let r = ok(&h, &["agent", "sweep"]);
    assert_eq!(
        r.stdout.trim(),
        "1",
        "only the stale, marked, private session is ours to remove"
    );
    assert!(!stale.exists());
    for kept in [&unmarked, &shared, &foreign_name] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    assert!(
        victim.join("precious").exists(),
        "a symlinked entry was followed"
    );

    let r = run_expect(&h, &["agent", "stop", link.to_str().unwrap()], 64);
    assert!(r.stderr.contains("symlink"), "{}", r.stderr);
    let r = run_expect(&h, &["agent", "stop", "/etc"], 64);
    assert!(
        r.stderr.contains("not a syncoid-rsync session directory"),
        "{}",
        r.stderr
    );
    let r = run_expect(&h, &["agent", "bridge", shared.to_str().unwrap()], 64);
    assert!(r.stderr.contains("accessible to others"), "{}", r.stderr);
    assert!(victim.join("precious").exists() && link.exists());
}

/// Live agents are found by the pre-flight's shell listing; it takes only
/// what `agent list` would: a session dir that is a symlink, shared,
/// someone else's or not named like ours is never attached to or stopped,
/// even with a running pid and this transfer's key in its marker.
#[test]
fn a_rerun_attaches_only_to_session_dirs_that_are_ours() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let _serial = serial();
    let h = two_pools();
    let _reap = Reaper(&h);
    let key = |src: &str, dst: &str| {
        let h = blake3::hash(format!("local machine:{src}\0local machine:{dst}").as_bytes());
        h.to_hex()[..24].to_string()
    };
    let key = key("src/data", "dst/data");
    // A running process of ours that is no agent.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let marker = |role: &str| {
        format!(
            r#"{{"pid":{},"role":"{role}","key":"{key}","created":0}}"#,
            sleeper.id()
        )
    };
    let tmp = h.tmp();
    let plant = |dir: &std::path::Path, role: &str, mode: u32| {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join(".syncoid-rsync-session"), marker(role)).unwrap();
        std::fs::write(dir.join("precious"), b"keep").unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let victim = h.dir().join("victim");
    plant(&victim, "send", 0o700);
    symlink(&victim, tmp.join("syncoid-rsync-00000000000000d1")).unwrap();
    let shared = tmp.join("syncoid-rsync-00000000000000d2");
    plant(&shared, "receive", 0o755);
    let misnamed = tmp.join("syncoid-rsync-notours000000000");
    plant(&misnamed, "send", 0o700);
    let mut kept = vec![victim.clone(), shared.clone(), misnamed.clone()];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = tmp.join("syncoid-rsync-00000000000000d3");
        plant(&theirs, "receive", 0o700);
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        kept.push(theirs);
    }
    let r = ok(
        &h,
        &[
            "--rsync",
            "--no-sync-snap",
            "--debug",
            "src/data",
            "dst/data",
        ],
    );
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains("live agents: 0 on the source, 0 on the target"),
        "{said}"
    );
    assert!(
        !said.contains("re-attaching") && !said.contains("is gone; stopping"),
        "{said}"
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    for d in &kept {
        assert!(d.join("precious").exists(), "{} was touched", d.display());
        assert!(d.join(".syncoid-rsync-session").exists(), "{}", d.display());
    }
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the pid was not signalled"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// Copies of the binary (`syncoid-rsync-bin.XXXXXXXX`) are swept only when
/// ours, private, holding nothing but the binary, unused for an hour and
/// run from by no live agent; a symlinked entry is never followed.
#[test]
fn sweeping_removes_only_stale_unused_copies_of_the_binary() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::SystemTime;
    let _serial = serial();
    let h = Host::new(&[]);
    let tmp = h.tmp();
    let hours_ago = |d: &std::path::Path, hours: u64| {
        let t = SystemTime::now() - Duration::from_secs(hours * 3600);
        std::fs::File::open(d).unwrap().set_modified(t).unwrap();
    };
    let copy = |name: &str, hours: u64, extra: bool| {
        let d = tmp.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(d.join("syncoid-rsync"), b"binary").unwrap();
        if extra {
            std::fs::write(d.join("precious"), b"keep").unwrap();
        }
        hours_ago(&d, hours);
        d
    };
    let stale = copy("syncoid-rsync-bin.AAAAaaa1", 2, false);
    let fresh = copy("syncoid-rsync-bin.BBBBbbb2", 0, false);
    let in_use = copy("syncoid-rsync-bin.CCCCccc3", 2, false);
    let not_only_ours = copy("syncoid-rsync-bin.DDDDddd4", 2, true);
    let misnamed = copy("syncoid-rsync-bin.toolongname", 2, false);
    let shared = copy("syncoid-rsync-bin.FFFFfff6", 2, false);
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    hours_ago(&shared, 2);
    let victim = h.dir().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("syncoid-rsync"), b"binary").unwrap();
    hours_ago(&victim, 2);
    symlink(&victim, tmp.join("syncoid-rsync-bin.EEEEeee5")).unwrap();
    // A live agent (a running process of ours) runs from `in_use`.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let session = tmp.join("syncoid-rsync-00000000000000c1");
    std::fs::create_dir(&session).unwrap();
    std::fs::set_permissions(&session, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        session.join(".syncoid-rsync-session"),
        format!(
            r#"{{"pid":{},"role":"receive","key":"k","created":0,"bin":"{}"}}"#,
            sleeper.id(),
            in_use.display()
        ),
    )
    .unwrap();

    let r = ok(&h, &["agent", "sweep"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(r.stdout.trim(), "1", "only the stale, unused copy goes");
    assert!(!stale.exists());
    for kept in [
        &fresh,
        &in_use,
        &not_only_ours,
        &misnamed,
        &shared,
        &session,
    ] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    assert!(
        victim.join("syncoid-rsync").exists(),
        "a symlink was followed"
    );
}

/// A coordinator killed mid-transfer leaves its copy of the binary on the
/// far host; the rerun re-attaches (its own copy removed at its end), and
/// the orphan, once unused for an hour, is swept by a later run's agent.
#[test]
fn a_killed_coordinators_copy_of_the_binary_is_swept_once_stale() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "16M");
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec!["--rsync", "--debug", "--chunk-size=256K", "--no-sync-snap"];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/data", "root@127.0.0.1:far/data"]);
    let child = spawn(&local, &args, &[("FAKEZFS_SEND_RATE", "4M")]);
    wait_until("both agents", 40, || {
        agent_pids(&local).len() == 1 && agent_pids(&far).len() == 1
    });
    wait_receiving(&far, 2 << 20);
    kill(child.id() as i32, 9);
    let _ = finish(child);
    let copies = || -> Vec<String> {
        far.tmp_entries()
            .into_iter()
            .filter(|e| e.starts_with("syncoid-rsync-bin."))
            .collect()
    };
    let orphan = copies();
    assert_eq!(orphan.len(), 1, "{orphan:?}");

    let r = ok(&local, &args);
    assert!(
        r.stdout.contains("re-attaching to the live agents"),
        "{}",
        r.stdout
    );
    assert_copy_removed(&r.stdout);
    assert_eq!(
        copies(),
        orphan,
        "the orphan is fresh: its agent just ended"
    );
    assert_eq!(far.files("far/data"), local.files("src/data"));

    let t = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::open(far.tmp().join(&orphan[0]))
        .unwrap()
        .set_modified(t)
        .unwrap();
    local.write("src/data", "more", b"more");
    local.zfs(&["snapshot", "src/data@s2"]).ok();
    ok(&local, &args);
    assert_eq!(far.read("far/data", "more").unwrap(), b"more");
    assert_eq!(far.tmp_entries(), Vec::<String>::new());
    assert_eq!(local.tmp_entries(), Vec::<String>::new());
}

/// A chunk that takes longer than the stall time to arrive comes over a
/// live link: every read marks it alive, not only a complete frame. With a
/// 2 s stall time, a 256 KiB chunk at --source-bwlimit=32K (8 s, sent as a
/// trickle of small pieces) passes with no reconnect.
#[test]
fn a_chunk_slower_than_the_stall_time_is_not_a_dead_link() {
    finishes_without_a_reconnect(
        "300K",
        &[
            "--compress=none",
            "--chunk-size=256K",
            "--source-bwlimit=32K",
            "--inactivity-timeout=40s",
        ],
        &[],
    );
}

/// A local `--rsync` transfer of a `size` dataset with a 2 s stall time
/// (plus `extra` options and environment) finishes with identical data,
/// each byte fed once, and not one link declared lost.
fn finishes_without_a_reconnect(size: &str, extra: &[&str], env: &[(&str, &str)]) {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", size);
    let mut args = vec!["--rsync", "--no-sync-snap", "--link-timeout=2s"];
    args.extend(extra);
    args.extend(["src/data", "dst/data"]);
    let child = spawn(&h, &args, env);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("link to the agents lost"), "{err}");
    assert!(out.contains(", 0 reconnects"), "{out}");
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_fed_once(&h);
}

/// A link that only swallows small frames is not alive: with the sender
/// agent frozen (SIGSTOP), the coordinator's pings still fit in the
/// socket's buffer, but no answer comes, so the link is declared dead after
/// the stall time (2 s here) and re-opened; once the agent runs again the
/// transfer finishes, each byte fed once.
#[test]
fn a_frozen_agent_is_noticed_by_its_silence_not_hidden_by_buffered_pings() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "24M");
    let args = [
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=256K",
        "--inactivity-timeout=60s",
        "--link-timeout=2s",
        "src/data",
        "dst/data",
    ];
    let child = spawn(&h, &args, &[("FAKEZFS_SEND_RATE", "4M")]);
    wait_until("both agents", 40, || agent_pids(&h).len() == 2);
    wait_receiving(&h, 4 << 20);
    let sender = agent_pids(&h)
        .into_iter()
        .find(|(role, _)| role == "send")
        .expect("sender agent")
        .1;
    kill(sender, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    kill(sender, libc::SIGCONT);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("link to the agents lost (sender link idle for 2s)"),
        "{err}"
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_fed_once(&h);
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

/// A receive that takes longer than the stall time to commit its stream
/// (a busy pool) is not a dead link: the agent answers pings while it
/// waits for zfs receive. 2 s stall time, 5 s commit.
#[test]
fn a_receive_slow_to_commit_is_not_a_dead_link() {
    finishes_without_a_reconnect("2M", &[], &[("FAKEZFS_RECV_COMMIT_DELAY", "5")]);
}

/// A pool that stops taking writes mid-stream for longer than the stall
/// time is not a dead link either: the receiver's socket fills and the
/// coordinator's pings wait behind the chunks in it, but the agent says
/// it is alive on its own. 2 s stall time, zfs receive reading nothing
/// for 6 s after its first MiB.
#[test]
fn a_pool_that_stops_taking_writes_is_not_a_dead_link() {
    finishes_without_a_reconnect(
        "12M",
        &["--compress=none", "--chunk-size=256K"],
        &[("FAKEZFS_RECV_PAUSE", "1M:6")],
    );
}

/// `--rsync` pulls from an ssh host and relays between two ssh hosts
/// through this machine (agents on both far hosts, the binary copied to
/// each, first connections made by `agent start --attach`): full, then
/// incremental; data identical, each byte fed once, nothing left in any
/// host's tmp.
#[test]
fn rsync_pulls_and_relays_between_two_ssh_hosts() {
    let _serial = serial();
    let lab = lab();
    let (local, a, b) = (&lab.local, &lab.a, &lab.b);
    let (_r1, _r2, _r3) = (Reaper(local), Reaper(a), Reaper(b));
    let cfg = format!("--sshconfig={}", lab.config);
    synthetic(a, "pa/data", "6M");
    let run = |target: &str| {
        let r = ok(
            local,
            &[
                &cfg,
                "--rsync",
                "--debug",
                "--chunk-size=256K",
                "root@hosta:pa/data",
                target,
            ],
        );
        assert!(r.stdout.contains("--rsync: "), "{}", r.stdout);
        r
    };
    for round in 0..2 {
        if round == 1 {
            a.write("pa/data", "later.txt", b"later");
        }
        let r = run("here/pulled");
        assert_eq!(
            local.files("here/pulled"),
            a.files("pa/data"),
            "pull {round}"
        );
        let r2 = run("root@hostb:pb/relayed");
        assert_eq!(b.files("pb/relayed"), a.files("pa/data"), "relay {round}");
        for out in [&r.stdout, &r2.stdout] {
            assert!(out.contains("copied syncoid-rsync to root@hosta:"), "{out}");
        }
        assert!(
            r2.stdout.contains("copied syncoid-rsync to root@hostb:"),
            "{}",
            r2.stdout
        );
    }
    assert_eq!(local.read("here/pulled", "later.txt").unwrap(), b"later");
    assert_eq!(b.read("pb/relayed", "later.txt").unwrap(), b"later");
    assert_fed_once(local);
    assert_fed_once(b);
    for h in [local, a, b] {
        assert_eq!(h.tmp_entries(), Vec::<String>::new());
    }
}

/// Session dirs left on `h` (a killed coordinator's copy of the binary
/// is not one: it is swept once stale).
fn sessions_left(h: &Host) -> Vec<String> {
    h.tmp_entries()
        .into_iter()
        .filter(|e| !e.starts_with("syncoid-rsync-bin."))
        .collect()
}

/// A lab (servers' sessions given `env`) with a second machine, `other`
/// (its own tmp, so its own lock directory and owner domain), both able
/// to run `args`: the relay of `size` from hosta to hostb, its sender held
/// to 4 MB/s so that it lasts.
struct RelayLab {
    lab: Lab,
    other: Host,
    args: Vec<String>,
}

fn relay_lab(size: &str, extra: &[&str]) -> RelayLab {
    let lab = lab();
    synthetic(&lab.a, "pa/data", size);
    let cfg = format!("--sshconfig={}", lab.config);
    let mut args = vec![
        cfg.as_str(),
        "--rsync",
        "--chunk-size=256K",
        "--source-bwlimit=4M",
    ];
    args.extend(extra);
    args.extend(["root@hosta:pa/data", "root@hostb:pb/data"]);
    let args = args.into_iter().map(String::from).collect();
    RelayLab {
        lab,
        other: Host::new(&["elsewhere"]),
        args,
    }
}

/// Two machines run the same remote-to-remote command (a second backup
/// server, or the job moved while the first run still goes). The second
/// finds the first's agents on both hosts, but they belong to a run that
/// is alive elsewhere: they refuse it and name their owner. It reports
/// the dataset busy (exit 1), makes no snapshot and takes no connection;
/// the first finishes undisturbed, each byte fed once.
#[test]
fn another_machine_running_the_same_transfer_is_refused_by_its_agents() {
    let _serial = serial();
    let r = relay_lab("32M", &[]);
    let (local, a, b, other) = (&r.lab.local, &r.lab.a, &r.lab.b, &r.other);
    let (_r1, _r2, _r3, _r4) = (Reaper(local), Reaper(a), Reaper(b), Reaper(other));
    let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
    let first = spawn(local, &args, &[]);
    wait_until("the first run's receiver", 40, || receiver_connected(b));
    let snaps = a.snapshots("pa/data");
    let second = run_expect(other, &args, 1);
    assert!(
        second.stderr.contains(
            "Cannot sync now: pb/data is being replicated from pa/data by another syncoid-rsync --rsync run: the sender agent on root@hosta is driven by syncoid-rsync on "
        ),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains(&format!("(pid {})", first.id())),
        "{}",
        second.stderr
    );
    assert_eq!(
        a.snapshots("pa/data"),
        snaps,
        "the refused run made a snapshot"
    );
    let (code, out, err) = finish(first);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("link to the agents lost"), "{err}");
    assert!(out.contains(", 0 reconnects,"), "{out}");
    assert_eq!(b.files("pb/data"), a.files("pa/data"));
    assert_fed_once(b);
    for h in [local, a, b, other] {
        assert_eq!(h.tmp_entries(), Vec::<String>::new());
    }
}

/// A machine that sees only one agent of a transfer takes it for the
/// remnant of an interrupted run of its own and stops it. When the other
/// agent is in fact local to another machine whose run is alive (both
/// push a dataset of the same name to the same target), the agent
/// refuses to stop: the dataset is reported busy, and the first run
/// finishes without losing its receiver.
#[test]
fn an_agent_driven_from_another_machine_is_not_stopped_as_a_lone_survivor() {
    let _serial = serial();
    let lab = lab();
    let (local, b) = (&lab.local, &lab.b);
    let other = Host::new(&["here"]);
    let (_r1, _r2, _r3) = (Reaper(local), Reaper(b), Reaper(&other));
    synthetic(local, "here/data", "32M");
    synthetic(&other, "here/data", "1M");
    let cfg = format!("--sshconfig={}", lab.config);
    let args = [
        cfg.as_str(),
        "--rsync",
        "--no-sync-snap",
        "--chunk-size=256K",
        "--target-bwlimit=4M",
        "here/data",
        "root@hostb:pb/data",
    ];
    let first = spawn(local, &args, &[]);
    wait_until("the first run's receiver", 40, || receiver_connected(b));
    let second = run_expect(&other, &args, 1);
    assert!(
        second.stderr.contains(
            "Cannot sync now: pb/data is being replicated from here/data by another syncoid-rsync --rsync run: the agent on root@hostb is driven by syncoid-rsync on "
        ),
        "{}",
        second.stderr
    );
    assert!(!second.stderr.contains("is gone"), "{}", second.stderr);
    // Who drives it and when it was heard came from the agent as data.
    assert!(second.stderr.contains("s ago)"), "{}", second.stderr);
    let (code, out, err) = finish(first);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(", 0 reconnects,"), "{out}");
    assert_eq!(b.files("pb/data"), local.files("here/data"));
    let receives: Vec<_> = b
        .log()
        .into_iter()
        .filter(|e| e["argv"][0] == "receive")
        .collect();
    assert_eq!(
        receives.len(),
        1,
        "the first run's receive was stopped and replaced: {receives:?}"
    );
    assert_fed_once(b);
    for h in [local, b, &other] {
        assert_eq!(h.tmp_entries(), Vec::<String>::new());
    }
}

/// The agents wait for their owner only so long: once it has been silent
/// for the takeover wait (three stall times; 2 s stall here), a run from
/// another machine takes the transfer over and finishes it, sending no
/// byte twice. Before that, it is refused.
#[test]
fn another_machine_takes_a_transfer_over_once_its_coordinator_is_silent() {
    let _serial = serial();
    let r = relay_lab("32M", &["--no-sync-snap", "--link-timeout=2s"]);
    let (local, a, b, other) = (&r.lab.local, &r.lab.a, &r.lab.b, &r.other);
    let (_r1, _r2, _r3, _r4) = (Reaper(local), Reaper(a), Reaper(b), Reaper(other));
    let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
    let first = spawn(local, &args, &[]);
    wait_until("the first run's receiver", 40, || receiver_connected(b));
    wait_receiving(b, 4 << 20);
    kill(first.id() as i32, 9);
    let killed = Instant::now();
    let _ = finish(first);
    let refused = run_expect(other, &args, 1);
    assert!(
        refused.stderr.contains("is driven by syncoid-rsync on "),
        "{}",
        refused.stderr
    );
    let wait = Duration::from_secs(7);
    std::thread::sleep(wait.saturating_sub(killed.elapsed()));
    let (code, out, err) = finish(spawn(other, &args, &[]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("re-attaching to the live agents"), "{out}");
    assert_eq!(b.files("pb/data"), a.files("pa/data"));
    assert_eq!(
        b.log().iter().filter(|e| e["argv"][0] == "receive").count(),
        1,
        "the same zfs receive finished it"
    );
    assert_fed_once(b);
    for h in [a, b] {
        assert_eq!(sessions_left(h), Vec::<String>::new());
    }
}

/// An ssh that cannot reach hosta while `state/cut` exists: this
/// machine's link to the source host is down.
const CUT_HOSTA_SSH: &str = r#"#!/bin/bash
st="$(dirname "$0")/state"
case "$*" in
*hosta*) if [ -e "$st/cut" ]; then
  echo "ssh: connect to host hosta port 22: Connection timed out" >&2; exit 255
fi;;
esac
exec /usr/bin/ssh "$@"
"#;

/// A run that cannot reach the agents for longer than the takeover wait
/// loses the transfer to another machine's run that can: when its link
/// comes back, both agents refuse it, and it leaves the transfer to the
/// new owner (busy, exit 1) instead of taking the agents back. The new
/// owner finishes it: one receive, each byte fed once.
#[test]
fn a_run_cut_off_for_longer_than_the_takeover_wait_leaves_the_transfer_to_the_new_owner() {
    let _serial = serial();
    let r = relay_lab("64M", &["--no-sync-snap", "--link-timeout=2s"]);
    let (local, a, b, other) = (&r.lab.local, &r.lab.a, &r.lab.b, &r.other);
    let (_r1, _r2, _r3, _r4) = (Reaper(local), Reaper(a), Reaper(b), Reaper(other));
    let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
    let (wrap, path) = wrapped_ssh(local, "cut-hosta-ssh", CUT_HOSTA_SSH);
    let env = [("PATH", path.as_str())];
    let first = spawn(local, &args, &env);
    wait_until("the first run's receiver", 40, || receiver_connected(b));
    wait_receiving(b, 2 << 20);
    // The link to hosta goes down: its connection dies, and new ones fail.
    std::fs::write(wrap.join("state/cut"), "").unwrap();
    let to_hosta: Vec<i32> = agent_links(first.id())
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("hosta"))
        })
        .collect();
    assert!(!to_hosta.is_empty(), "no connection to hosta");
    for p in to_hosta {
        kill(p, 9);
    }
    std::thread::sleep(Duration::from_secs(7));
    let second = spawn(other, &args, &[]);
    wait_until("the takeover", 30, || {
        agent_log(b).is_some_and(|l| l.contains("takes over from"))
    });
    std::fs::remove_file(wrap.join("state/cut")).unwrap();
    let (code, out, err) = finish(first);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(
            "Cannot sync now: pb/data is being replicated from pa/data by another syncoid-rsync --rsync run: the sender agent on root@hosta is driven by syncoid-rsync on "
        ),
        "{err}"
    );
    assert!(err.contains(&format!("(pid {})", second.id())), "{err}");
    let (code, out, err) = finish(second);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("re-attaching to the live agents"), "{out}");
    assert_eq!(b.files("pb/data"), a.files("pa/data"));
    let receives = b.log().iter().filter(|e| e["argv"][0] == "receive").count();
    assert_eq!(receives, 1, "the same zfs receive finished it");
    assert_fed_once(b);
    for h in [a, b] {
        assert_eq!(sessions_left(h), Vec::<String>::new());
    }
}

/// `agent stop DIR --owner ...` (how a coordinator stops an agent) ends by
/// its pid only an agent that welcomed it: one that takes the connection
/// but does not answer may be another machine's agent, busy, and is left
/// alone (exit 1, its directory kept). By hand (no owner) the same agent
/// is ended and its directory removed, as before.
#[test]
fn a_coordinators_stop_never_kills_an_agent_that_did_not_answer() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let h = Host::new(&["src"]);
    let _reap = Reaper(&h);
    let mut agent = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let dir = h.tmp().join("syncoid-rsync-00000000000000e1");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        dir.join(".syncoid-rsync-session"),
        format!(
            r#"{{"pid":{},"role":"receive","key":"00ff","created":0}}"#,
            agent.id()
        ),
    )
    .unwrap();
    // Takes connections (the kernel queues them) and never answers.
    let _mute = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
    let d = dir.display().to_string();
    let t = Instant::now();
    let r = run_expect(
        &h,
        &[
            "agent",
            "stop",
            &d,
            "--owner",
            "d0m41n:7:syncoid-rsync on x (pid 1)",
        ],
        1,
    );
    assert!(
        r.stderr
            .contains("did not answer and is still running: left alone"),
        "{}",
        r.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent was signalled"
    );
    assert!(
        dir.join(".syncoid-rsync-session").exists(),
        "its directory was removed"
    );
    ok(&h, &["agent", "stop", &d]);
    assert!(agent.wait().unwrap().code().is_none(), "ended by a signal");
    assert!(!dir.exists(), "the directory of the ended agent is left");
}

/// Agents left by an interrupted run of an older syncoid-rsync (the
/// package was upgraded while they ran) cannot understand this one's
/// Hello: they drop the connection. Instead of reconnecting to them until
/// the inactivity timeout, the run sees their version in their markers,
/// stops them (ended by their pid, as `agent stop` by hand does) and goes
/// on from the target's resume token: here a full send, as nothing was
/// received yet.
#[test]
fn agents_of_an_older_version_are_stopped_and_the_transfer_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let h = two_pools();
    let _reap = Reaper(&h);
    let key = blake3::hash(b"local machine:src/data\0local machine:dst/data");
    let key = &key.to_hex()[..24];
    let mut planted = Vec::new();
    for (i, role) in ["send", "receive"].iter().enumerate() {
        let agent = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let dir = h.tmp().join(format!("syncoid-rsync-00000000000000f{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A marker as version 3 wrote it: no "wire".
        std::fs::write(
            dir.join(".syncoid-rsync-session"),
            format!(
                r#"{{"pid":{},"role":"{role}","key":"{key}","created":0}}"#,
                agent.id()
            ),
        )
        .unwrap();
        // Like an old agent given a Hello it cannot decode: it reads and
        // hangs up, every time.
        let listener = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(mut c) = c else { return };
                let _ = std::io::Read::read(&mut c, &mut [0u8; 64]);
            }
        });
        planted.push((agent, dir));
    }
    let r = ok(
        &h,
        &[
            "--rsync",
            "--no-sync-snap",
            "--inactivity-timeout=60",
            "src/data",
            "dst/data",
        ],
    );
    assert!(
        r.stderr.contains(
            "--rsync: the agents of an interrupted transfer of src/data run an older syncoid-rsync, which this one"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("re-attaching"), "{}", r.stdout);
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    for (mut agent, dir) in planted {
        assert!(
            agent.wait().unwrap().code().is_none(),
            "not ended by a signal"
        );
        assert!(!dir.exists(), "{} left", dir.display());
    }
}
