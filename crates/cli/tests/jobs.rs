//! `-r --jobs N`: several datasets of a tree in flight at once, in
//! standard mode and with `--rsync`, on the emulator and through a real
//! sshd. Every dataset must arrive identical, parents before children and
//! clone origins before their clones, each byte fed once, nothing left.

mod agents;
mod common;
use agents::*;
use common::*;
use syncoid_rsync_testkit::{Host, Netlab, Sshd};

/// A tree under `src/tree` on `h`: `n` datasets in a few levels, every
/// fifth of them with `big` of synthetic data, and two clones of earlier
/// datasets' snapshots. Returns the datasets below the root, in creation
/// order.
fn tree(h: &Host, n: usize, big: &str) -> Vec<String> {
    h.zfs(&["create", "src/tree"]).ok();
    h.write("src/tree", "root.txt", b"root");
    h.zfs(&["snapshot", "src/tree@s1"]).ok();
    let mut made = Vec::new();
    for i in 0..n {
        // d0, d1 at the top; then children of earlier ones, three levels.
        let fs = match i {
            0..=3 => format!("src/tree/d{i}"),
            _ => format!("{}/d{i}", made[(i * 7) % made.len().min(12)]),
        };
        if i % 5 == 4 {
            synthetic(h, &fs, big);
        } else {
            h.zfs(&["create", &fs]).ok();
            h.write(&fs, "f.txt", format!("dataset {i}").as_bytes());
            h.zfs(&["snapshot", &format!("{fs}@s1")]).ok();
        }
        made.push(fs);
    }
    for (k, of) in [1, 2].iter().enumerate() {
        let clone = format!("src/tree/clone{k}");
        h.zfs(&["clone", &format!("{}@s1", made[*of]), &clone]).ok();
        h.write(&clone, "only-in-clone.txt", b"mine");
        h.zfs(&["snapshot", &format!("{clone}@s1")]).ok();
        made.push(clone);
    }
    made
}

/// Every dataset of the tree arrived identical under `dst` on `far`, and
/// each clone is a clone of its origin's copy.
fn assert_tree_arrived(src: &Host, far: &Host, made: &[String], dst: &str) {
    for fs in std::iter::once(&"src/tree".to_string()).chain(made) {
        let to = fs.replacen("src/tree", dst, 1);
        assert_eq!(far.files(&to), src.files(fs), "{fs} -> {to}");
        assert!(far.snapshots(&to).contains(&"s1".to_string()), "{to}");
    }
    for k in 0..2 {
        let origin = far.get("origin", &format!("{dst}/clone{k}"));
        assert!(
            origin.starts_with(dst) && origin.ends_with("@s1"),
            "{origin}"
        );
    }
}

/// The `--json` events of a run: (event, source) in order.
fn events(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["event"].as_str().unwrap_or("").to_string(),
                v["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// From a run's events: the most datasets in flight at once, and for
/// each dataset that started, whether its parent and origin had ended
/// before it started.
fn in_flight_and_order(
    ev: &[(String, String)],
    made: &[String],
    origin: &dyn Fn(&str) -> Option<String>,
) -> usize {
    let mut running = std::collections::BTreeSet::new();
    let mut ended = std::collections::BTreeSet::new();
    let mut most = 0;
    for (e, fs) in ev {
        match e.as_str() {
            "dataset_start" => {
                let parent = fs.rsplit_once('/').map(|p| p.0.to_string());
                for dep in parent.into_iter().chain(origin(fs)) {
                    if dep == "src" || !made.contains(&dep) && dep != "src/tree" {
                        continue;
                    }
                    assert!(
                        ended.contains(&dep),
                        "{fs} started before {dep} ended: {ev:?}"
                    );
                }
                running.insert(fs.clone());
                most = most.max(running.len());
            }
            "dataset_done" => {
                running.remove(fs);
                ended.insert(fs.clone());
            }
            _ => {}
        }
    }
    most
}

#[test]
fn a_tree_with_jobs_4_arrives_identical_with_parents_and_origins_first() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let made = tree(&h, 16, "3M");
    let origins: std::collections::BTreeMap<String, String> = (0..2)
        .map(|k| {
            let clone = format!("src/tree/clone{k}");
            let o = h.get("origin", &clone);
            (clone, o.split('@').next().unwrap().to_string())
        })
        .collect();
    let origin = |fs: &str| origins.get(fs).cloned();
    let r = ok(&h, &["-r", "--jobs=4", "--json", "src/tree", "dst/tree"]);
    assert_tree_arrived(&h, &h, &made, "dst/tree");
    let ev = events(&r.stdout);
    let most = in_flight_and_order(&ev, &made, &origin);
    assert!(
        (2..=4).contains(&most),
        "{most} datasets in flight at once: {ev:?}"
    );
    let done = ev.iter().filter(|(e, _)| e == "dataset_done").count();
    assert_eq!(done, made.len() + 1, "{ev:?}");
    // A second run sends d2's new snapshot; the others are up to date.
    // The summary lists each dataset's outcome in the plan's order.
    h.write("src/tree/d2", "new.txt", b"new");
    h.zfs(&["snapshot", "src/tree/d2@s2"]).ok();
    let r = ok(
        &h,
        &[
            "-r",
            "--jobs=4",
            "--no-sync-snap",
            "--debug",
            "src/tree",
            "dst/tree",
        ],
    );
    assert_eq!(h.read("dst/tree/d2", "new.txt").unwrap(), b"new");
    let listed: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("  replicated ") || l.starts_with("  up to date "))
        .collect();
    assert_eq!(listed.len(), made.len() + 1, "{}", r.stderr);
    assert!(listed[0].contains("src/tree -> dst/tree"), "{listed:?}");
    assert_eq!(
        listed
            .iter()
            .filter(|l| l.starts_with("  replicated"))
            .count(),
        1,
        "{listed:?}"
    );
    assert!(
        listed
            .iter()
            .any(|l| l.starts_with("  replicated  src/tree/d2 -> dst/tree/d2")),
        "{listed:?}"
    );
}

/// `--jobs 1` is the run as it was: one dataset at a time, in the plan's
/// order, with the same output as without the option.
#[test]
fn jobs_1_keeps_the_plan_order_and_the_output() {
    let _serial = serial();
    let h = Host::new(&["src", "dst", "dst2"]);
    let made = tree(&h, 8, "1M");
    // A dry run prints each dataset's block in order, whatever --jobs.
    let dry = |jobs: &str| {
        let args = [
            "-r",
            "--no-sync-snap",
            "--dry-run",
            jobs,
            "src/tree",
            "dst/tree",
        ];
        ok(&h, &args).stdout
    };
    assert_eq!(dry("--jobs=4"), dry("--jobs=1"));
    let plain = ok(&h, &["-r", "--no-sync-snap", "src/tree", "dst/tree"]);
    let one = ok(
        &h,
        &["-r", "--no-sync-snap", "--jobs=1", "src/tree", "dst2/tree"],
    );
    assert_eq!(one.stdout.replace("dst2/", "dst/"), plain.stdout);
    assert_tree_arrived(&h, &h, &made, "dst2/tree");
    let json = ok(&h, &["-r", "--jobs=1", "--json", "src/tree", "dst/tree"]);
    let ev = events(&json.stdout);
    let plan: Vec<String> =
        serde_json::from_str::<serde_json::Value>(json.stdout.lines().next().unwrap()).unwrap()
            ["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["source"].as_str().unwrap().to_string())
            .collect();
    let done: Vec<String> = ev
        .into_iter()
        .filter(|(e, _)| e == "dataset_done")
        .map(|(_, fs)| fs)
        .collect();
    assert_eq!(done, plan);
}

/// The issue's tree through sshd: 50 datasets (every fifth with 12 MB,
/// two clones) pushed with `-r --rsync --jobs 4`, while a receiving agent
/// is killed mid-stream: that transfer alone goes on from its resume
/// token; every dataset identical, each byte fed once, exit 0, nothing
/// left in /tmp on either host.
#[test]
fn fifty_datasets_with_rsync_and_jobs_4_through_sshd_survive_a_killed_agent() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    let made = tree(&local, 48, "12M");
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec![
        "-r",
        "--rsync",
        "--jobs=4",
        "--no-sync-snap",
        "--chunk-size=256K",
    ];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/tree", "root@127.0.0.1:far/tree"]);
    let child = spawn(&local, &args, &[("FAKEZFS_SEND_RATE", "8M")]);
    // Once a big dataset's receive took 2 MB: its receiver agent is killed.
    let big_receiver = || big_receiver(&far);
    wait_until("a big receive under way", 60, || {
        big_receiver().is_some() && receiving_now(&far) >= 2 << 20
    });
    kill(big_receiver().expect("a big dataset's receiver"), 9);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{}", told(&out, &err));
    assert!(
        out.contains("Resuming interrupted zfs send/receive")
            || err.contains("going on from the target's resume token"),
        "{out}\n{err}"
    );
    assert_tree_arrived(&local, &far, &made, "far/tree");
    assert_fed_once(&far);
    assert_nothing_left(&local, &far, "");
}

/// No agent runs on either host, and neither host's tmp holds a session
/// dir or a copy of the binary (`context`: shown when it fails).
fn assert_nothing_left(local: &Host, far: &Host, context: &str) {
    assert!(agent_pids(local).is_empty() && agent_pids(far).is_empty());
    assert_eq!(far.tmp_entries(), Vec::<String>::new(), "{context}");
    assert_eq!(local.tmp_entries(), Vec::<String>::new());
}

/// The pid of a receiving agent on `far` whose dataset is one of the
/// tree's big ones (`d4`, `d9`, ...), if one runs.
fn big_receiver(far: &Host) -> Option<i32> {
    far.tmp_entries().into_iter().find_map(|d| {
        let dir = far.tmp().join(&d);
        let marker = std::fs::read_to_string(dir.join(".syncoid-rsync-session")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&marker).ok()?;
        let log = std::fs::read_to_string(dir.join("agent.log")).ok()?;
        let fs = log.split('"').rev().nth(1)?.to_string();
        let i: usize = fs.rsplit("/d").next()?.parse().ok()?;
        (v["role"] == "receive" && i % 5 == 4).then(|| v["pid"].as_i64().unwrap() as i32)
    })
}

/// The issue's tree across a link that really fails (netlab, root only):
/// 50 datasets with `-r --rsync --jobs 4` and a 32 MiB/s limit shared by
/// the four, a big dataset's receiving agent killed, then the whole link
/// blackholed for 20 s: every dataset identical, each byte fed once,
/// exit 0, nothing left in /tmp.
#[test]
fn fifty_datasets_with_jobs_4_survive_a_killed_agent_and_a_20s_blackhole() {
    let local = Host::new(&["src"]);
    let far = Host::new(&["far7"]);
    let lab = Netlab::up(&far, 7);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    let made = tree(&local, 48, "24M");
    let mut args: Vec<String> = [
        "-r",
        "--rsync",
        "--jobs=4",
        "--no-sync-snap",
        "--chunk-size=256K",
        "--source-bwlimit=32M",
        "--debug",
    ]
    .map(String::from)
    .to_vec();
    args.extend(lab.ssh_args());
    args.extend(["src/tree".to_string(), format!("{}:far7/tree", lab.dest())]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = spawn(&local, &args, &[]);
    wait_until("a big receive under way", 120, || {
        big_receiver(&far).is_some() && receiving_now(&far) >= 4 << 20
    });
    kill(big_receiver(&far).expect("a big dataset's receiver"), 9);
    let at = lab.far_rx_bytes() + (40 << 20);
    wait_until("40 MB more after the kill", 120, || {
        lab.far_rx_bytes() >= at
    });
    blackhole_for(&lab, 20);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{}", told(&out, &err));
    assert!(
        err.contains("going on from the target's resume token"),
        "{err}"
    );
    assert_tree_arrived(&local, &far, &made, "far7/tree");
    assert_fed_once(&far);
    assert_nothing_left(&local, &far, &format!("{out}\n{err}"));
}

/// A coordinator of a `--jobs 4 --rsync` run killed while four big
/// datasets are in flight; the same command again re-attaches to each
/// transfer's live agents: none starts over (one zfs receive per dataset,
/// each byte fed once).
#[test]
fn a_killed_jobs_4_coordinator_is_rerun_and_reattaches_every_transfer() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    h.zfs(&["create", "src/root"]).ok();
    h.zfs(&["snapshot", "src/root@s1"]).ok();
    for fs in ["a", "b", "c", "d"] {
        synthetic(&h, &format!("src/root/{fs}"), "24M");
    }
    let args = [
        "-r",
        "--rsync",
        "--jobs=4",
        "--no-sync-snap",
        "--chunk-size=256K",
        "src/root",
        "dst/root",
    ];
    let child = spawn(&h, &args, &[("FAKEZFS_SEND_RATE", "4M")]);
    wait_until("four transfers under way", 60, || {
        agent_pids(&h).len() == 8 && receiving_now(&h) >= 8 << 20
    });
    kill(child.id() as i32, 9);
    let _ = finish(child);
    assert_eq!(
        agent_pids(&h).len(),
        8,
        "the agents outlive their coordinator"
    );
    let r = ok(&h, &args);
    assert_eq!(
        r.stdout.matches("re-attaching to the live agents").count(),
        4,
        "{}",
        r.stdout
    );
    for fs in ["a", "b", "c", "d"] {
        let (src, dst) = (format!("src/root/{fs}"), format!("dst/root/{fs}"));
        assert_eq!(h.files(&dst), h.files(&src), "{fs}");
    }
    let receives = h
        .log()
        .iter()
        .filter(|e| e["argv"][0] == "receive" && e["argv"].to_string().contains("dst/root/"))
        .count();
    assert_eq!(
        receives, 4,
        "one zfs receive per dataset, none started over"
    );
    assert_fed_once(&h);
    assert_eq!(h.tmp_entries(), Vec::<String>::new());
}

/// `--jobs` takes a number of datasets from 1 to 64; anything else is a
/// usage error before any host is asked.
#[test]
fn a_bad_jobs_value_is_refused() {
    let _serial = serial();
    let h = two_pools();
    for bad in ["0", "65", "x", "-1"] {
        let r = run_expect(
            &h,
            &["-r", &format!("--jobs={bad}"), "src/data", "dst/data"],
            64,
        );
        assert!(r.stderr.contains("--jobs"), "{}", r.stderr);
        assert!(!h.exists("dst/data"));
    }
}

/// `--atomic-sync-snap`: one `zfs snapshot` call takes the sync snapshot
/// of every dataset of the tree (one transaction group: one instant),
/// none is taken again per dataset, and each arrives; a dataset that
/// `syncoid:sync=false` leaves out gets none. With `--no-sync-snap` it
/// is refused before anything runs.
#[test]
fn atomic_sync_snap_takes_the_trees_sync_snapshots_in_one_call() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let made = tree(&h, 8, "1M");
    h.zfs(&["set", "syncoid:sync=false", "src/tree/d3"]).ok();
    ok(
        &h,
        &[
            "-r",
            "--jobs=3",
            "--atomic-sync-snap",
            "src/tree",
            "dst/tree",
        ],
    );
    let snapshot_calls: Vec<serde_json::Value> = h
        .log()
        .into_iter()
        .filter(|e| e["argv"][0] == "snapshot" && e["argv"].to_string().contains("syncoid_"))
        .collect();
    assert_eq!(snapshot_calls.len(), 1, "{snapshot_calls:?}");
    let taken = snapshot_calls[0]["argv"].as_array().unwrap().len() - 1;
    // The root, the datasets below it and the clones, but not d3.
    assert_eq!(taken, made.len(), "{snapshot_calls:?}");
    let txgs: std::collections::BTreeSet<String> = std::iter::once("src/tree".to_string())
        .chain(made.iter().filter(|fs| !fs.ends_with("/d3")).cloned())
        .map(|fs| {
            let sync = sync_snaps(&h.snapshots(&fs));
            assert_eq!(sync.len(), 1, "{fs}: {sync:?}");
            let to = fs.replacen("src/tree", "dst/tree", 1);
            assert!(h.snapshots(&to).contains(&sync[0]), "{to} has {}", sync[0]);
            let snap = format!("{fs}@{}", sync[0]);
            h.zfs(&["get", "-Hp", "-o", "value", "createtxg", &snap])
                .ok()
                .stdout
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(txgs.len(), 1, "one transaction group: {txgs:?}");
    assert!(sync_snaps(&h.snapshots("src/tree/d3")).is_empty());
    let r = run_expect(
        &h,
        &[
            "-r",
            "--atomic-sync-snap",
            "--no-sync-snap",
            "src/tree",
            "dst/tree",
        ],
        64,
    );
    assert!(r.stderr.contains("--atomic-sync-snap"), "{}", r.stderr);
}

/// More datasets at once than sshd lets one connection carry sessions
/// (`MaxSessions`, 10 by default): standard mode with `--jobs 12` pushes
/// 14 datasets, 12 at once, through an sshd with the default; every one
/// arrives. (Each dataset thread has ssh masters of its own; ssh would
/// also fall back to a connection of its own for a session a master
/// refused, so this shows the run works, not which way.)
#[test]
fn more_jobs_than_sshds_sessions_per_connection_all_arrive() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start_with_default_sessions(&far);
    local.zfs(&["create", "src/tree"]).ok();
    local.zfs(&["snapshot", "src/tree@s1"]).ok();
    for i in 0..14 {
        synthetic(&local, &format!("src/tree/d{i}"), "2M");
    }
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec!["-r", "--jobs=12", "--no-sync-snap"];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/tree", "root@127.0.0.1:far/tree"]);
    let (code, out, err) = finish(spawn(&local, &args, &[("FAKEZFS_SEND_RATE", "1M")]));
    assert_eq!(code, 0, "{}", told(&out, &err));
    for i in 0..14 {
        let (src, dst) = (format!("src/tree/d{i}"), format!("far/tree/d{i}"));
        assert_eq!(far.files(&dst), local.files(&src), "{src}");
    }
}

/// An ssh in front of the real one that notes each call's arguments, one
/// line per call.
const LOGGING_SSH: &str = r#"#!/bin/sh
line=$(printf '%s' "$*" | tr '\n' ' ')
printf '%s\n' "$line" >> "$(dirname "$0")/state/calls"
exec /usr/bin/ssh "$@"
"#;

/// pids of the processes whose command line holds `needle`.
fn procs_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
        })
        .collect()
}

/// The far host's agents of a tree run: `agent host` processes run from
/// the copy of the binary in its tmp.
fn host_agents(far: &Host) -> Vec<i32> {
    procs_with(&format!("{}/syncoid-rsync-bin.", far.tmp().display()))
        .into_iter()
        .filter(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains("agent\0host")
        })
        .collect()
}

/// A tree's transfers are started through one agent per thread on the
/// far host (`agent host`, one ssh session), not an ssh session each:
/// no ssh call starts an agent, at most one host agent per thread was
/// started (the thread waiting for the root's transfer started its own
/// meanwhile), the whole tree took fewer ssh calls than it has datasets,
/// everything arrived, and no host agent is left.
#[test]
fn a_tree_starts_its_far_agents_through_one_host_agent_per_thread() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["farh"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    let made = tree(&local, 18, "3M");
    let (wrap, path) = wrapped_ssh(&local, "logging-ssh", LOGGING_SSH);
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec!["-r", "--rsync", "--jobs=2", "--no-sync-snap", "--debug"];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/tree", "root@127.0.0.1:farh/tree"]);
    let (code, out, err) = finish(spawn(&local, &args, &[("PATH", path.as_str())]));
    assert_eq!(code, 0, "{}", told(&out, &err));
    assert_tree_arrived(&local, &far, &made, "farh/tree");
    assert_fed_once(&far);
    let calls = std::fs::read_to_string(wrap.join("state/calls")).unwrap();
    let sessions: Vec<&str> = calls.lines().filter(|l| !l.contains(" -O ")).collect();
    assert!(
        !calls.contains("agent start"),
        "an agent started by an ssh session of its own:\n{calls}"
    );
    let hosts = calls.matches("agent host").count();
    assert!((1..=2).contains(&hosts), "{hosts} host agents:\n{calls}");
    // The thread that waited for the tree's root to arrive started its
    // host agent meanwhile, not when its first dataset was ready.
    assert!(
        out.contains("a waiting thread's host agent on root@127.0.0.1 is up"),
        "{out}"
    );
    assert!(
        sessions.len() < made.len(),
        "{} ssh calls for {} datasets:\n{calls}",
        sessions.len(),
        made.len() + 1
    );
    wait_until("the host agents to end", 10, || {
        host_agents(&far).is_empty()
    });
    assert_nothing_left(&local, &far, "");
}

/// The far host's agent killed while big transfers go through it: each
/// transfer it carried goes on over a bridge of its own from where it was
/// (none starts over), the datasets after it get a new host agent, and
/// everything arrives, each byte fed once, nothing left.
#[test]
fn a_killed_host_agent_ends_no_transfer() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["fark"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    let made = tree(&local, 20, "12M");
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec![
        "-r",
        "--rsync",
        "--jobs=2",
        "--no-sync-snap",
        "--chunk-size=256K",
        "--link-timeout=2s",
    ];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/tree", "root@127.0.0.1:fark/tree"]);
    let child = spawn(&local, &args, &[("FAKEZFS_SEND_RATE", "8M")]);
    wait_until("a big receive under way", 60, || {
        big_receiver(&far).is_some() && receiving_now(&far) >= 2 << 20
    });
    let hosts = host_agents(&far);
    assert!(!hosts.is_empty(), "no host agent runs");
    for p in hosts {
        kill(p, 9);
    }
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{}", told(&out, &err));
    assert!(err.contains("link to the agents lost"), "{err}");
    assert_tree_arrived(&local, &far, &made, "fark/tree");
    assert_fed_once(&far);
    let receives = far
        .log()
        .iter()
        .filter(|e| e["argv"][0] == "receive")
        .count();
    assert_eq!(receives, made.len() + 1, "a transfer started over");
    wait_until("the host agents to end", 10, || {
        host_agents(&far).is_empty()
    });
    assert_nothing_left(&local, &far, "");
}

/// A tree's old sync snapshots are pruned at the end of the run, all of a
/// host's in one call (one ssh session for the remote target, not one per
/// dataset): after a second run every dataset keeps exactly its newest
/// sync snapshot on both sides. A prune that fails (a hold on one old
/// snapshot) is a warning naming that dataset; the others are pruned.
#[test]
fn a_trees_prunes_are_one_call_per_host_at_the_end() {
    let _serial = serial();
    let local = Host::new(&["src"]);
    let far = Host::new(&["farp"]);
    let sshd = Sshd::start(&far);
    let made = tree(&local, 8, "1M");
    let (wrap, path) = wrapped_ssh(&local, "logging-ssh", LOGGING_SSH);
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec!["-r", "--jobs=2", "--identifier=t"];
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/tree", "root@127.0.0.1:farp/tree"]);
    let run = |what: &str| {
        let (code, out, err) = finish(spawn(&local, &args, &[("PATH", path.as_str())]));
        assert_eq!(code, 0, "{what}: {}", told(&out, &err));
        (out, err)
    };
    run("first");
    let sync = |h: &Host, fs: &str| -> Vec<String> {
        h.snapshots(fs)
            .into_iter()
            .filter(|s| s.starts_with("syncoid_t_"))
            .collect()
    };
    let first = sync(&far, "farp/tree/d3");
    assert_eq!(first.len(), 1, "{first:?}");
    // One old sync snapshot on the target held: its prune must fail.
    far.zfs(&["hold", "keep", &format!("farp/tree/d3@{}", first[0])])
        .ok();
    std::fs::write(wrap.join("state/calls"), "").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (out, err) = run("second");
    let calls = std::fs::read_to_string(wrap.join("state/calls")).unwrap();
    let destroys = calls.lines().filter(|l| l.contains("destroy")).count();
    assert_eq!(destroys, 1, "prunes not in one call:\n{calls}");
    let log = format!("{out}\n{err}");
    assert!(
        log.contains("pruning old sync snapshots on the target failed")
            && log.contains("farp/tree/d3@"),
        "{log}"
    );
    for fs in std::iter::once(&"src/tree".to_string()).chain(&made) {
        let to = fs.replacen("src/tree", "farp/tree", 1);
        let (s, t) = (sync(&local, fs), sync(&far, &to));
        assert_eq!(s.len(), 1, "{fs}: {s:?}");
        if to == "farp/tree/d3" {
            assert_eq!(t.len(), 2, "the held one stays: {t:?}");
        } else {
            assert_eq!(t, s, "{to}");
        }
    }
}
