//! `--streams N`: one dataset's stream over several connections per agent,
//! on the emulator: locally and through a real sshd, with connections
//! killed mid-stream. Each run must leave identical data, one zfs receive
//! fed each byte exactly once, and nothing behind.

mod agents;
mod common;
use agents::*;
use common::*;
use syncoid_rsync_testkit::{latency_bin, Host, Sshd};

#[test]
fn a_local_stream_over_four_connections_arrives_identical_and_fed_once() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "24M");
    let r = ok(
        &h,
        &[
            "--rsync",
            "--streams=4",
            "--chunk-size=256K",
            "src/data",
            "dst/data",
        ],
    );
    // Chunks that overtook one another on their connections are neither
    // re-sends nor missing from the count.
    assert!(
        r.stdout.contains("--rsync: 24.0 MB received and verified")
            && r.stdout.contains("0 reconnects, 0 chunks (0 B) sent again"),
        "{}",
        r.stdout
    );
    // Each of the four connections carried a share of the chunks.
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("over 4 connections, each carried"))
        .unwrap_or_else(|| panic!("no per-connection line: {}", r.stdout));
    assert_eq!(
        line.matches(" MB").count() + line.matches(" KB").count(),
        4,
        "{line}"
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_fed_once(&h);
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
    // An incremental afterwards goes the same way.
    h.write("src/data", "more.txt", b"more");
    ok(&h, &["--rsync", "--streams=4", "src/data", "dst/data"]);
    assert_eq!(h.read("dst/data", "more.txt").unwrap(), b"more");
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

/// Three connections each way through sshd; all of them killed at once
/// the receiver took 8 MB: the first ones are lost alone, the last one
/// ends the round, every connection is made again, and the transfer
/// resumes where the receiver stands.
#[test]
fn a_push_over_three_connections_survives_them_killed() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    let child = push_through(&sshd, (&local, &far), "32M", &["--streams=3"], 8 << 20);
    // The source is this machine: its agent is reached by its socket; the
    // target's three connections are ssh sessions.
    let links = agent_links(child.id());
    assert_eq!(links.len(), 3, "ssh connections to the receiver: {links:?}");
    let log = agent_log(&far).unwrap_or_default();
    assert_eq!(log.matches("coordinator connected").count(), 3, "{log}");
    for p in links {
        kill(p, 9);
    }
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("link to the agents lost"), "{err}");
    assert_one_clean_push(&local, &far, "far/data");
}

/// Four connections each way through sshd; one of them killed three
/// times while the stream flows: each time only that connection is lost,
/// the other three carry the stream on, and it is made again within the
/// round. The transfer never stops (no reconnect of the whole link).
#[test]
fn a_push_over_four_connections_goes_on_while_one_is_killed_again_and_again() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    let child = push_through(&sshd, (&local, &far), "64M", &["--streams=4"], 4 << 20);
    let pid = child.id();
    // The stream starts on one connection; the other three join it.
    wait_until("all four connections", 40, || admitted(&far) >= 4);
    wait_receiving(&far, 8 << 20);
    for round in 0..3 {
        kill_one_connection(pid, &far, 4, round);
        // The stream moved on since.
        wait_receiving(&far, (16 + 8 * round as u64) << 20);
    }
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("link to the agents lost"), "{err}");
    assert!(out.contains(", 0 reconnects,"), "{out}");
    assert!(
        out.contains("3 times one was lost alone and made again"),
        "{out}"
    );
    assert_one_clean_push(&local, &far, "far/data");
}

#[test]
fn streams_needs_rsync_and_a_sane_count() {
    let h = Host::new(&["src", "dst"]);
    for (args, says) in [
        (vec!["--streams=2"], "--streams needs --rsync"),
        (vec!["--rsync", "--streams=0"], "from 1 to 16"),
        (vec!["--rsync", "--streams=17"], "from 1 to 16"),
    ] {
        let mut all = args.clone();
        all.extend(["src/data", "dst/data"]);
        let r = run(&h, &all);
        assert_eq!(r.status, 64, "{all:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{all:?}: {}", r.stderr);
    }
}

/// `--streams 3` pulling from an ssh host and relaying between two ssh
/// hosts through this machine (three connections in, three out): data
/// identical, each byte fed once, nothing left behind; the summary says
/// what each of the three carried.
#[test]
fn streams_pull_and_relay_between_two_ssh_hosts() {
    let _serial = serial();
    let lab = lab();
    let (local, a, b) = (&lab.local, &lab.a, &lab.b);
    let (_r1, _r2, _r3) = (Reaper(local), Reaper(a), Reaper(b));
    let cfg = format!("--sshconfig={}", lab.config);
    synthetic(a, "pa/data", "12M");
    for target in ["here/pulled", "root@hostb:pb/relayed"] {
        let r = ok(
            local,
            &[
                &cfg,
                "--rsync",
                "--streams=3",
                "--chunk-size=256K",
                "root@hosta:pa/data",
                target,
            ],
        );
        assert!(
            r.stdout.contains("over 3 connections, each carried"),
            "{}",
            r.stdout
        );
    }
    assert_eq!(local.files("here/pulled"), a.files("pa/data"));
    assert_eq!(b.files("pb/relayed"), a.files("pa/data"));
    assert_fed_once(local);
    assert_fed_once(b);
    for h in [local, a, b] {
        assert_eq!(h.tmp_entries(), Vec::<String>::new());
    }
}

/// A bandwidth limit holds for the stream, not for each connection: 6 MiB
/// over four connections at 2 MiB/s takes no less than about 3 s (a limit
/// per connection would allow 8 MiB/s), at either end.
#[test]
fn a_bandwidth_limit_holds_for_all_connections_together() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "6M");
    for (flag, dst) in [
        ("--source-bwlimit=2M", "dst/a"),
        ("--target-bwlimit=2M", "dst/b"),
    ] {
        let t = std::time::Instant::now();
        let args = [
            "--rsync",
            "--streams=4",
            "--chunk-size=256K",
            "--compress=none",
            "--no-sync-snap",
            flag,
            "src/data",
            dst,
        ];
        ok(&h, &args);
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(2500),
            "{flag}: {:?}",
            t.elapsed()
        );
        assert_eq!(h.files(dst), h.files("src/data"));
    }
}

/// The netlab test's faults, through the latency relay (a 50 ms round
/// trip on each connection, the case `--streams` is for): a 500 MB push
/// over four connections, one of them killed three times (each lost
/// alone, the others carry on), then every connection held for 30 s (all
/// lost: the round ends and all four are made again once the hold is
/// lifted). Identical data, every byte fed once, exit 0.
#[test]
fn four_streams_through_a_round_trip_survive_kills_and_a_30s_hold() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    synthetic(&local, "src/data", "500M");
    let hold = local.dir().join("hold");
    let cfg = local.dir().join("ssh_config_rtt");
    let mut block = sshd.config_block("far");
    block.push_str(&format!(
        "  ProxyCommand {} 25ms %h %p {}\n",
        latency_bin().display(),
        hold.display()
    ));
    std::fs::write(&cfg, block).unwrap();
    let cfg = format!("--sshconfig={}", cfg.display());
    let args = [
        &cfg,
        "--rsync",
        "--no-sync-snap",
        "--streams=4",
        "--source-bwlimit=32M",
        "src/data",
        "root@far:far/data",
    ];
    let child = spawn(&local, &args, &[]);
    wait_until("the receiver connected", 60, || receiver_connected(&far));
    let pid = child.id();
    wait_until("all four connections", 60, || admitted(&far) >= 4);
    for kill_no in 1..=3u64 {
        wait_receiving(&far, kill_no * (40 << 20));
        kill_one_connection(pid, &far, 4, kill_no as usize);
    }
    wait_receiving(&far, 160 << 20);
    std::fs::write(&hold, b"").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(30));
    let at_heal = receiving_now(&far);
    std::fs::remove_file(&hold).unwrap();
    wait_until("data flowing after the hold", 90, || {
        receiving_now(&far) > at_heal + (1 << 20)
    });
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("link to the agents lost"), "{err}");
    let alone = regex::Regex::new(r"(\d+) times one was lost alone").unwrap();
    let times: u64 = alone.captures(&out).map_or(0, |c| c[1].parse().unwrap());
    assert!(times >= 3, "{out}");
    assert_one_clean_push(&local, &far, "far/data");
}
