//! Side by side with Debian's syncoid 2.1: the same scenario on two
//! identical emulated hosts, syncoid on one, syncoid-rsync on the other;
//! the targets must end up with the same snapshots (sync snapshots compared
//! by count and naming pattern, since their timestamps differ).

mod common;
use common::*;
use std::process::Command;
use syncoid_rsync_testkit::{syncoid_bin, Host};

fn syncoid(h: &Host, args: &[&str]) {
    let out = Command::new(syncoid_bin())
        .args(args)
        .envs(h.envs())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "syncoid {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn normalized(h: &Host, fs: &str) -> Vec<String> {
    h.snapshots(fs)
        .into_iter()
        .map(|s| {
            if s.starts_with("syncoid_") {
                "SYNC".to_string()
            } else {
                s
            }
        })
        .collect()
}

/// Runs `scenario` on two fresh hosts with the given tool and compares.
fn compare(args: &[&str], setup: impl Fn(&Host), between: impl Fn(&Host), datasets: &[&str]) {
    let theirs = Host::new(&["src", "dst"]);
    let ours = Host::new(&["src", "dst"]);
    setup(&theirs);
    setup(&ours);
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["src/data", "dst/data"]);
    syncoid(&theirs, &full);
    ok(&ours, &full);
    between(&theirs);
    between(&ours);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    syncoid(&theirs, &full);
    ok(&ours, &full);
    for ds in datasets {
        assert_eq!(
            normalized(&ours, ds),
            normalized(&theirs, ds),
            "{ds} with {args:?}"
        );
        assert_eq!(ours.files(ds), theirs.files(ds), "{ds} files with {args:?}");
    }
}

fn base(h: &Host) {
    h.zfs(&["create", "src/data"]).ok();
    h.write("src/data", "f", b"one");
    h.zfs(&["snapshot", "src/data@a"]).ok();
    h.write("src/data", "g", b"two");
    h.zfs(&["snapshot", "src/data@b"]).ok();
}

fn more(h: &Host) {
    h.write("src/data", "h", b"three");
    h.zfs(&["snapshot", "src/data@c"]).ok();
}

#[test]
fn same_snapshots_as_syncoid_by_default() {
    let _serial = serial();
    compare(&["--compress=none"], base, more, &["dst/data"]);
}

#[test]
fn same_snapshots_as_syncoid_with_no_sync_snap_and_no_stream() {
    let _serial = serial();
    compare(&["--no-sync-snap"], base, more, &["dst/data"]);
    compare(
        &["--no-sync-snap", "--no-stream"],
        base,
        more,
        &["dst/data"],
    );
}

#[test]
fn same_tree_as_syncoid_recursively() {
    let _serial = serial();
    let tree = |h: &Host| {
        base(h);
        h.zfs(&["create", "src/data/kid"]).ok();
        h.write("src/data/kid", "k", b"kid");
        h.zfs(&["snapshot", "-r", "src/data@r1"]).ok();
    };
    compare(&["-r"], tree, more, &["dst/data", "dst/data/kid"]);
}

#[test]
fn same_result_as_syncoid_after_bookmark_fallback() {
    let _serial = serial();
    let between = |h: &Host| {
        // Keep only a bookmark of the common snapshot, then move on.
        h.zfs(&["bookmark", "src/data@b", "src/data#b"]).ok();
        h.zfs(&["destroy", "src/data@a,b"]).ok();
        more(h);
        h.zfs(&["snapshot", "src/data@d"]).ok();
    };
    compare(&["--no-sync-snap"], base, between, &["dst/data"]);
}
