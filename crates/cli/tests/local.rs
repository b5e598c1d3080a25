//! Standard mode end to end on one emulated host (local -> local).

mod common;
use common::*;
use syncoid_rsync_testkit::Host;

#[test]
fn full_then_incremental_with_sync_snapshots() {
    let _serial = serial();
    let h = two_pools();
    let r = ok(&h, &["src/data", "dst/data"]);
    assert!(
        r.stdout
            .contains("Sending oldest full snapshot src/data@first"),
        "{}",
        r.stdout
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    let dst = h.snapshots("dst/data");
    assert_eq!(dst[..2], ["first", "second"]);
    let syncs = sync_snaps(&dst);
    assert_eq!(syncs.len(), 1);
    let re =
        regex::Regex::new(r"^syncoid_.+_\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d-GMT-?\d\d:\d\d$").unwrap();
    assert!(re.is_match(&syncs[0]), "{}", syncs[0]);
    assert_same_guids(&h, "src/data", "dst/data");

    h.write("src/data", "later.txt", b"later");
    ok(&h, &["src/data", "dst/data"]);
    assert_eq!(h.read("dst/data", "later.txt").unwrap(), b"later");
    let dst = h.snapshots("dst/data");
    assert_eq!(
        sync_snaps(&dst).len(),
        1,
        "the previous sync snapshot was pruned: {dst:?}"
    );
    assert_eq!(sync_snaps(&h.snapshots("src/data")), sync_snaps(&dst));
    // Only our old sync snapshots were destroyed; incremental receives are
    // forced (-F) as in syncoid, with nothing newer on the target to lose.
    let calls = destructive_calls(&h);
    assert!(
        calls
            .iter()
            .all(|c| (c.starts_with("destroy") && c.contains("@syncoid_"))
                || c.starts_with("receive -s -F")),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.starts_with("destroy")),
        "the old sync snapshot was pruned"
    );
}

#[test]
fn no_sync_snap_sends_existing_snapshots_and_then_has_nothing_to_do() {
    let _serial = serial();
    let h = two_pools();
    ok(&h, &["--no-sync-snap", "src/data", "dst/data"]);
    assert_eq!(h.snapshots("dst/data"), ["first", "second"]);
    assert!(sync_snaps(&h.snapshots("src/data")).is_empty());
    let r = ok(&h, &["--no-sync-snap", "src/data", "dst/data"]);
    assert!(r.stdout.contains("Nothing to do"), "{}", r.stdout);
}

#[test]
fn no_stream_sends_only_the_newest() {
    let _serial = serial();
    let h = two_pools();
    let r = ok(
        &h,
        &["--no-stream", "--no-sync-snap", "src/data", "dst/data"],
    );
    assert!(
        r.stdout.contains("INFO: --no-stream selected; sending newest full snapshot src/data@second to new target filesystem dst/data: (~ "),
        "{}",
        r.stdout
    );
    assert_eq!(h.snapshots("dst/data"), ["second"]);
    assert_eq!(h.files("dst/data"), h.files("src/data"));
}

#[test]
fn identifiers_keep_their_own_sync_snapshots() {
    let _serial = serial();
    let h = two_pools();
    ok(&h, &["--identifier=one", "src/data", "dst/one"]);
    ok(&h, &["--identifier=two", "src/data", "dst/two"]);
    ok(&h, &["--identifier=one", "src/data", "dst/one"]);
    let src = sync_snaps(&h.snapshots("src/data"));
    assert_eq!(
        src.iter().filter(|s| s.starts_with("syncoid_one_")).count(),
        1,
        "{src:?}"
    );
    assert_eq!(
        src.iter().filter(|s| s.starts_with("syncoid_two_")).count(),
        1,
        "{src:?}"
    );
    ok(
        &h,
        &[
            "--keep-sync-snap",
            "--identifier=two",
            "src/data",
            "dst/two",
        ],
    );
    let src = sync_snaps(&h.snapshots("src/data"));
    assert_eq!(
        src.iter().filter(|s| s.starts_with("syncoid_two_")).count(),
        2,
        "{src:?}"
    );
}

#[test]
fn recursive_with_children_clone_skip_parent_and_excludes() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["create", "src/data/child"]).ok();
    h.write("src/data/child", "c", b"child data");
    h.zfs(&["create", "src/data/skipme"]).ok();
    h.zfs(&["clone", "src/data@first", "src/data/clone"]).ok();
    h.write("src/data/clone", "only-in-clone", b"x");
    ok(
        &h,
        &["-r", "--exclude-datasets=skipme", "src/data", "dst/data"],
    );
    assert_eq!(h.read("dst/data/child", "c").unwrap(), b"child data");
    assert!(!h.exists("dst/data/skipme"));
    assert!(
        h.get("origin", "dst/data/clone")
            .starts_with("dst/data@first"),
        "clone recreated as a clone"
    );
    assert_eq!(h.files("dst/data/clone"), h.files("src/data/clone"));
    h.zfs(&["create", "dst/other"]).ok();
    ok(&h, &["-r", "--skip-parent", "src/data", "dst/other"]);
    assert!(h.exists("dst/other/child") && h.exists("dst/other/skipme"));
    assert!(
        h.snapshots("dst/other").is_empty(),
        "the parent itself was skipped"
    );
}

#[test]
fn bookmark_fallback_with_and_without_intermediates_and_zero_names() {
    let _serial = serial();
    for (intermediate, name) in [(true, "0"), (false, "base")] {
        let h = Host::new(&["src", "dst"]);
        h.zfs(&["create", "src/data"]).ok();
        h.write("src/data", "f", b"1");
        h.zfs(&["snapshot", &format!("src/data@{name}")]).ok();
        ok(&h, &["--no-sync-snap", "src/data", "dst/data"]);
        h.zfs(&[
            "bookmark",
            &format!("src/data@{name}"),
            &format!("src/data#{name}"),
        ])
        .ok();
        h.zfs(&["destroy", &format!("src/data@{name}")]).ok();
        h.write("src/data", "f", b"2");
        if intermediate {
            h.zfs(&["snapshot", "src/data@mid"]).ok();
            h.write("src/data", "f", b"3");
        }
        ok(&h, &["src/data", "dst/data"]);
        assert_eq!(h.files("dst/data"), h.files("src/data"));
        let want = if intermediate { 3 } else { 2 };
        assert_eq!(
            h.snapshots("dst/data").len(),
            want,
            "{:?}",
            h.snapshots("dst/data")
        );
    }
}

#[test]
fn unrelated_target_is_refused_without_force_delete_and_replaced_with_it() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["create", "dst/data"]).ok();
    h.write("dst/data", "precious", b"keep me");
    h.zfs(&["snapshot", "dst/data@mine"]).ok();
    let r = run_expect(&h, &["src/data", "dst/data"], 2);
    assert!(r.stderr.contains("no snapshot in common"), "{}", r.stderr);
    assert!(r.stderr.contains("target snapshots: mine"), "{}", r.stderr);
    assert!(r.stderr.contains("--force-delete"), "{}", r.stderr);
    assert_eq!(h.read("dst/data", "precious").unwrap(), b"keep me");
    assert!(
        destructive_calls(&h).is_empty(),
        "{:?}",
        destructive_calls(&h)
    );

    let r = ok(&h, &["--force-delete", "src/data", "dst/data"]);
    assert!(
        r.stderr
            .contains("destroying it and everything in it: dst/data@mine, dst/data"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout
            .contains("INFO: Removing dst/data because no matching snapshots were found"),
        "{}",
        r.stdout
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
}

#[test]
fn force_delete_never_destroys_a_pool_root() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["snapshot", "dst@unrelated"]).ok();
    let r = run_expect(&h, &["--force-delete", "src/data", "dst"], 2);
    assert!(r.stderr.contains("no snapshot in common"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("never destroyed (not even with --force-delete)")
            && !r.stderr.contains("Use --force-delete"),
        "{}",
        r.stderr
    );
    assert!(destructive_calls(&h).is_empty());
}

/// `--dry-run --force-delete` lists everything a real run destroys, as the
/// warning before a real run does, and destroys nothing.
#[test]
fn dry_run_force_delete_lists_everything_it_would_destroy() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["create", "dst/data"]).ok();
    h.zfs(&["snapshot", "dst/data@old"]).ok();
    h.zfs(&["create", "dst/data/kid"]).ok();
    h.zfs(&["snapshot", "dst/data/kid@old"]).ok();
    let r = ok(&h, &["--dry-run", "--force-delete", "src/data", "dst/data"]);
    let all = "dst/data/kid@old, dst/data/kid, dst/data@old, dst/data";
    assert!(r.stderr.contains(all), "{}", r.stderr);
    assert!(destructive_calls(&h).is_empty());
    assert!(h.exists("dst/data/kid"));
    let r = ok(&h, &["--force-delete", "src/data", "dst/data"]);
    assert!(r.stderr.contains(all), "{}", r.stderr);
    assert!(!h.exists("dst/data/kid"));
}

#[test]
fn interrupted_receive_is_resumed_from_its_token() {
    let _serial = serial();
    let h = two_pools();
    h.write("src/data", "big", &vec![3u8; 12 << 20]);
    h.zfs(&["snapshot", "src/data@big"]).ok();
    h.sh("zfs send src/data@first | head --bytes=8M | zfs receive -s dst/data");
    h.sh("zfs send src/data@big | head --bytes=8M | zfs receive -s dst/big");
    assert!(h.get("receive_resume_token", "dst/big").starts_with("1-"));
    let r = ok(&h, &["--no-stream", "src/data", "dst/big"]);
    assert!(
        r.stdout.contains("Resuming interrupted zfs send/receive"),
        "{}",
        r.stdout
    );
    assert_eq!(h.get("receive_resume_token", "dst/big"), "-");
    assert_eq!(h.files("dst/big"), h.files("src/data"));
    let resumed = h
        .log()
        .iter()
        .any(|e| e["argv"][0] == "send" && e["argv"][1] == "-t");
    assert!(resumed);
}

#[test]
fn no_resume_discards_partial_state_and_starts_over() {
    let _serial = serial();
    let h = two_pools();
    h.write("src/data", "big", &vec![5u8; 12 << 20]);
    h.zfs(&["snapshot", "src/data@big"]).ok();
    h.sh("zfs send src/data@first | zfs receive dst/data").ok();
    h.sh("zfs send -i @first src/data@big | head --bytes=8M | zfs receive -s dst/data");
    assert!(h.get("receive_resume_token", "dst/data").starts_with("1-"));
    let r = ok(&h, &["--no-resume", "src/data", "dst/data"]);
    assert!(
        r.stderr.contains("resetting partially receive state (--no-resume): discarding the interrupted receive on dst/data"),
        "{}",
        r.stderr
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert!(!h
        .log()
        .iter()
        .any(|e| e["argv"][0] == "send" && e["argv"][1] == "-t"));
}

/// `--no-resume` after a first full receive was cut: the partial dataset
/// is discarded (`zfs receive -A`) and a full send starts over; `--debug`
/// says so in syncoid's words.
#[test]
fn no_resume_after_a_cut_first_full_receive_starts_over() {
    let _serial = serial();
    let h = two_pools();
    h.write("src/data", "big", &vec![5u8; 12 << 20]);
    h.zfs(&["snapshot", "src/data@big"]).ok();
    h.sh("zfs send src/data@big | head --bytes=4M | zfs receive -s dst/data");
    assert!(h.get("receive_resume_token", "dst/data").starts_with("1-"));
    let r = ok(&h, &["--no-resume", "--debug", "src/data", "dst/data"]);
    assert!(
        r.stdout
            .contains("DEBUG: reset partial receive state of dst/data..."),
        "{}",
        r.stdout
    );
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_same_guids(&h, "src/data", "dst/data");
    assert!(!h
        .log()
        .iter()
        .any(|e| e["argv"][0] == "send" && e["argv"][1] == "-t"));
}

#[test]
fn resume_whose_source_snapshot_is_gone_starts_a_normal_sync() {
    let _serial = serial();
    let h = two_pools();
    h.write("src/data", "big", &vec![9u8; 12 << 20]);
    h.zfs(&["snapshot", "src/data@big"]).ok();
    h.sh("zfs send src/data@first | zfs receive dst/data").ok();
    h.sh("zfs send -i @first src/data@big | head --bytes=8M | zfs receive -s dst/data");
    h.zfs(&["destroy", "src/data@big"]).ok();
    let r = ok(&h, &["src/data", "dst/data"]);
    assert!(
        r.stderr.contains(
            "resetting partially receive state because the snapshot source no longer exists"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(h.get("receive_resume_token", "dst/data"), "-");
    assert_eq!(h.files("dst/data"), h.files("src/data"));
}

#[test]
fn preserve_recordsize_and_properties() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["set", "recordsize=1M", "src/data"]).ok();
    h.zfs(&["set", "compression=lz4", "src/data"]).ok();
    h.zfs(&["set", "acme:owner=ops", "src/data"]).ok();
    ok(&h, &["--preserve-recordsize", "src/data", "dst/rs"]);
    assert_eq!(
        h.zfs(&["get", "-H", "-p", "-o", "value", "recordsize", "dst/rs"])
            .ok()
            .stdout
            .trim(),
        "1048576"
    );
    assert_eq!(h.get("compression", "dst/rs"), "off");
    ok(&h, &["--preserve-properties", "src/data", "dst/props"]);
    assert_eq!(h.get("compression", "dst/props"), "lz4");
    assert_eq!(h.get("acme:owner", "dst/props"), "ops");
}

#[test]
fn include_and_exclude_snaps() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["snapshot", "src/data@daily-1"]).ok();
    h.zfs(&["snapshot", "src/data@hourly-1"]).ok();
    ok(
        &h,
        &[
            "--no-sync-snap",
            "--exclude-snaps=hourly",
            "src/data",
            "dst/a",
        ],
    );
    assert_eq!(h.snapshots("dst/a"), ["first", "second", "daily-1"]);
    ok(
        &h,
        &[
            "--no-sync-snap",
            "--include-snaps=first|daily",
            "src/data",
            "dst/b",
        ],
    );
    assert_eq!(h.snapshots("dst/b"), ["first", "daily-1"]);
}

#[test]
fn holds_bookmarks_and_target_snapshot_deletion() {
    let _serial = serial();
    let h = two_pools();
    ok(&h, &["--use-hold", "src/data", "dst/data"]);
    let newest = sync_snaps(&h.snapshots("src/data")).pop().unwrap();
    let holds = h
        .zfs(&["holds", "-H", &format!("src/data@{newest}")])
        .ok()
        .stdout;
    assert!(holds.contains("syncoid_"), "{holds}");
    let holds = h
        .zfs(&["holds", "-H", &format!("dst/data@{newest}")])
        .ok()
        .stdout;
    assert!(holds.contains("syncoid_"), "{holds}");

    ok(
        &h,
        &["--no-sync-snap", "--create-bookmark", "src/data", "dst/bm"],
    );
    assert!(
        h.exists(&format!("src/data#{newest}")),
        "bookmark of the newest snapshot"
    );

    h.zfs(&["destroy", "src/data@first"]).ok();
    ok(
        &h,
        &[
            "--no-sync-snap",
            "--delete-target-snapshots",
            "src/data",
            "dst/bm",
        ],
    );
    assert_eq!(h.snapshots("dst/bm"), ["second".to_string(), newest]);
}

#[test]
fn dry_run_prints_every_command_and_changes_nothing() {
    let _serial = serial();
    let h = two_pools();
    let setup_calls = h.log().len();
    let r = ok(&h, &["--dry-run", "src/data", "dst/data"]);
    assert!(
        r.stdout.contains("zfs snapshot src/data@syncoid_"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("zfs send src/data@first |"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("zfs receive -s dst/data"), "{}", r.stdout);
    assert!(!h.exists("dst/data"));
    let changed: Vec<String> = h.logged_subcommands()[setup_calls..]
        .iter()
        .filter(|c| !matches!(c.as_str(), "list" | "get"))
        .cloned()
        .collect();
    assert!(changed.is_empty(), "dry run ran {changed:?}");
}

#[test]
fn modified_target_is_rolled_back_with_a_warning_or_refused_with_no_rollback() {
    let _serial = serial();
    let h = two_pools();
    ok(&h, &["src/data", "dst/data"]);
    h.write("dst/data", "stray", b"written on the target");
    let r = run_expect(&h, &["--no-rollback", "src/data", "dst/data"], 2);
    assert!(
        r.stderr.contains("--no-rollback forbids it"),
        "{}",
        r.stderr
    );
    assert_eq!(
        h.read("dst/data", "stray").unwrap(),
        b"written on the target"
    );
    let r = ok(&h, &["src/data", "dst/data"]);
    assert!(
        r.stderr.contains("rolls back changes made on dst/data"),
        "{}",
        r.stderr
    );
    assert_eq!(h.read("dst/data", "stray"), None);
}

#[test]
fn hostile_and_missing_names_fail_clearly_without_side_effects() {
    let _serial = serial();
    let h = two_pools();
    let setup_calls = h.log().len();
    for bad in ["src/da'ta", "src/$(touch /tmp/pwned)", "src/a;b", "src/`x`"] {
        let r = run_expect(&h, &[bad, "dst/x"], 64);
        assert!(r.stderr.contains("invalid"), "{bad}: {}", r.stderr);
    }
    let r = run_expect(&h, &["src/nope", "dst/x"], 2);
    assert!(
        r.stderr.contains("source dataset src/nope does not exist"),
        "{}",
        r.stderr
    );
    let r = run_expect(&h, &["--compress=bogus", "src/data", "dst/x"], 64);
    assert!(r.stderr.contains("--compress 'bogus'"), "{}", r.stderr);
    let calls: Vec<String> = h.log()[setup_calls..]
        .iter()
        .map(|e| e["argv"][0].to_string())
        .collect();
    assert!(calls.iter().all(|c| c == "\"list\""), "{calls:?}");
}

#[test]
fn names_with_spaces_work() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "src/my data"]).ok();
    h.write("src/my data", "f", b"spaced");
    ok(&h, &["src/my data", "dst/my copy"]);
    assert_eq!(h.read("dst/my copy", "f").unwrap(), b"spaced");
}

#[test]
fn syncoid_sync_property_skips_datasets() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["create", "src/data/off"]).ok();
    h.zfs(&["set", "syncoid:sync=false", "src/data/off"]).ok();
    h.zfs(&["create", "src/data/elsewhere"]).ok();
    h.zfs(&["set", "syncoid:sync=otherhost", "src/data/elsewhere"])
        .ok();
    let r = ok(&h, &["-r", "src/data", "dst/data"]);
    assert!(
        r.stdout
            .contains("Skipping dataset (syncoid:sync=false): src/data/off"),
        "{}",
        r.stdout
    );
    assert!(!h.exists("dst/data/off") && !h.exists("dst/data/elsewhere"));
}

#[test]
fn help_and_version() {
    let _serial = serial();
    let h = Host::new(&[]);
    let r = ok(&h, &["--version"]);
    assert!(r.stdout.starts_with("syncoid-rsync "), "{}", r.stdout);
    let r = ok(&h, &["--help"]);
    for opt in [
        "--no-sync-snap",
        "--force-delete",
        "--sshkey",
        "--dry-run",
        "--insecure-direct-connection",
    ] {
        assert!(r.stdout.contains(opt), "--help lacks {opt}");
    }
    run_expect(&h, &["--bogus-flag", "a", "b"], 64);
}

#[test]
fn recursive_no_op_run_lists_each_side_once_whatever_the_dataset_count() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "src/root"]).ok();
    for i in 0..60 {
        h.zfs(&["create", &format!("src/root/d{i:03}")]).ok();
    }
    for s in 0..8 {
        h.zfs(&["snapshot", "-r", &format!("src/root@s{s}")]).ok();
    }
    h.sh("zfs send -R src/root@s7 | zfs receive dst/root").ok();
    let before = h.log().len();
    let r = ok(&h, &["-r", "--no-sync-snap", "src/root", "dst/root"]);
    assert_eq!(
        r.stdout.matches("Nothing to do").count(),
        61,
        "{}",
        r.stdout
    );
    let calls: Vec<String> = h.log()[before..]
        .iter()
        .map(|e| e["argv"].to_string())
        .collect();
    // One pre-flight probe (`zfs list -d 0`: zfs works) for the one host,
    // then two listings per side, none per dataset.
    assert_eq!(
        calls.len(),
        5,
        "one probe and two listings per side, none per dataset: {calls:#?}"
    );
    assert!(calls[0].contains("\"-d\",\"0\""), "{calls:#?}");
}

#[test]
fn out_of_order_creation_times_are_ordered_by_createtxg() {
    // syncoid test 011: the clock jumped back between snapshots.
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "src/before"]).ok();
    h.zfs(&[
        "snapshot",
        "src/before@this-snapshot-should-make-it-into-the-after-dataset",
    ])
    .ok();
    h.sh("FAKEZFS_NOW=1155533696 zfs snapshot src/before@oldest-snapshot")
        .ok();
    h.zfs(&["snapshot", "src/before@another-snapshot-does-not-matter"])
        .ok();
    ok(&h, &["--sendoptions=Lec", "src/before", "dst/after"]);
    let got = h.snapshots("dst/after");
    assert_eq!(
        got[..3],
        [
            "this-snapshot-should-make-it-into-the-after-dataset",
            "oldest-snapshot",
            "another-snapshot-does-not-matter"
        ]
    );
}

#[test]
fn force_delete_replaces_a_conflicting_snapshot() {
    // syncoid test 008: a snapshot re-created on the source under the same name.
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "src/src"]).ok();
    h.zfs(&["snapshot", "src/src@duplicate"]).ok();
    ok(&h, &["-r", "--compress=none", "src/src", "dst/dst"]);
    h.zfs(&["destroy", "src/src@duplicate"]).ok();
    h.zfs(&["snapshot", "src/src@duplicate"]).ok();
    let r = run_expect(&h, &["-r", "--compress=none", "src/src", "dst/dst"], 2);
    assert!(r.stderr.contains("named duplicate"), "{}", r.stderr);
    ok(
        &h,
        &[
            "-r",
            "--force-delete",
            "--compress=none",
            "src/src",
            "dst/dst",
        ],
    );
    let norm = |fs: &str| -> Vec<(String, String)> {
        h.snapshot_guids(fs)
            .into_iter()
            .map(|(n, g)| {
                (
                    if n.starts_with("syncoid_") {
                        "syncoid_".into()
                    } else {
                        n
                    },
                    g,
                )
            })
            .collect()
    };
    assert_eq!(norm("src/src"), norm("dst/dst"));
}

#[test]
fn output_options_debug_quiet_dumpsnaps_monitor_version_and_buffers() {
    let _serial = serial();
    let h = two_pools();
    let r = ok(
        &h,
        &[
            "--debug",
            "--dumpsnaps",
            "--mbuffer-size=4M",
            "--source-bwlimit=50m",
            "src/data",
            "dst/a",
        ],
    );
    assert!(
        r.stdout.contains(
            "DEBUG: zfs send src/data@first | mbuffer -R 50m -q -s 128k -m 4M | zfs receive"
        ) && r.stdout.contains("s]\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("snapshots of src/data (source)"),
        "{}",
        r.stdout
    );
    let r = ok(&h, &["--quiet", "src/data", "dst/a"]);
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
    let r = ok(&h, &["--monitor-version"]);
    assert!(r.stdout.starts_with("OK: syncoid-rsync "), "{}", r.stdout);
    assert_eq!(h.files("dst/a"), h.files("src/data"));
}

#[test]
fn syncoid_command_line_forms_replicate() {
    let _serial = serial();
    let h = two_pools();
    // Getopt::Long's forms, syncoid 2.1's --no-clone-rollback, and
    // --create-bookmark without --no-sync-snap (ignored, as syncoid does).
    let r = ok(
        &h,
        &[
            "-debug",
            "--Dumpsnaps",
            "--no-clone-rollback",
            "--create-bookmark",
            "--ident=x",
            "--keep-sync",
            "--no-priv",
            "src/data",
            "dst/a",
        ],
    );
    assert!(r.stdout.contains("DEBUG:"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("--create-bookmark does nothing without --no-sync-snap"),
        "{}",
        r.stdout
    );
    assert_eq!(h.files("dst/a"), h.files("src/data"));
    assert!(sync_snaps(&h.snapshots("dst/a"))[0].starts_with("syncoid_x_"));
    let r = run_expect(&h, &["--no-s", "src/data", "dst/b"], 64);
    assert!(r.stderr.contains("ambiguous"), "{}", r.stderr);
    // --monitor-version with SOURCE and TARGET does nothing: it replicates.
    ok(&h, &["-quiet", "--monitor-version", "src/data", "dst/m"]);
    assert_eq!(h.files("dst/m"), h.files("src/data"));
}

#[test]
fn perl_regex_features_select_datasets_and_snapshots() {
    let _serial = serial();
    let h = two_pools();
    for c in ["keep", "drop", "dropped"] {
        h.zfs(&["create", &format!("src/data/{c}")]).ok();
        h.zfs(&["snapshot", &format!("src/data/{c}@one")]).ok();
    }
    // Look-ahead: every child except keep is excluded.
    ok(
        &h,
        &[
            "-r",
            "--no-sync-snap",
            "--exclude-datasets=src/data/(?!keep)",
            "--include-snaps=^(?!second$)(?<!x)",
            "src/data",
            "dst/data",
        ],
    );
    assert!(h.exists("dst/data/keep"));
    assert!(!h.exists("dst/data/drop") && !h.exists("dst/data/dropped"));
    assert_eq!(h.snapshots("dst/data"), ["first"]);
}

#[test]
fn overlapping_datasets_and_bad_values_are_refused_before_anything_runs() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["create", "src/data/sub"]).ok();
    let before = h.log().len();
    let cases: &[(&[&str], &str)] = &[
        (&["src/data", "src/data"], "the same dataset"),
        (
            &["-r", "src/data", "src/data/sub/copy"],
            "TARGET is inside SOURCE",
        ),
        (&["src/data/sub", "src/data"], "SOURCE is inside TARGET"),
        (
            &["--mbuffer-size=xyz", "src/data", "dst/x"],
            "--mbuffer-size 'xyz'",
        ),
        (
            &["--source-bwlimit=-5", "src/data", "dst/x"],
            "--source-bwlimit '-5'",
        ),
        (
            &["--target-bwlimit=xyz", "src/data", "dst/x"],
            "--target-bwlimit 'xyz'",
        ),
        (
            &[
                "--insecure-direct-connection=127.0.0.1:99999",
                "src/data",
                "root@h:dst/x",
            ],
            "--insecure-direct-connection",
        ),
        (&["--", "-src/data", "dst/x"], "must begin with a letter"),
        (&["src/data", "--", "-dst/x"], "must begin with a letter"),
        (&["src/data@first", "dst/x"], "is a snapshot"),
    ];
    for (args, says) in cases {
        let r = run_expect(&h, args, 64);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    assert_eq!(
        h.log().len(),
        before,
        "nothing ran: {:?}",
        &h.log()[before..]
    );
    assert!(!h.exists("dst/x"));
}

#[test]
fn a_cron_run_without_a_terminal_prints_no_progress_and_no_needless_warnings() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "-o", "fakezfs:synthetic=40M", "src/data"])
        .ok();
    h.zfs(&["snapshot", "src/data@s1"]).ok();
    // No mbuffer, pv or compressor here: a local run uses none of them
    // (the compressor never, mbuffer only for a bandwidth limit).
    let out = h
        .command(bin())
        .env("PATH", restricted_path(&h, true))
        .args(["src/data", "dst/data"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stderr, "", "stdout:\n{stdout}");
    assert!(!stdout.contains("progress"), "{stdout}");
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    let r = h
        .command(bin())
        .env("PATH", restricted_path(&h, true))
        .args([
            "--source-bwlimit=10M",
            "--no-sync-snap",
            "src/data",
            "dst/other",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        stderr.contains("mbuffer not available on local machine - sync will continue without the bandwidth limit."),
        "{stderr}"
    );
    assert!(!stderr.contains("lzop"), "{stderr}");
}

/// Cron's PATH (`/usr/bin:/bin`) lacks the sbin directories where zfs
/// lives; syncoid appends them, and so do we. A private mount namespace
/// (root only, as CI runs) puts this host's zfs at /usr/local/sbin.
#[test]
fn under_crons_path_zfs_is_found_in_the_sbin_directories() {
    let _serial = serial();
    let h = two_pools();
    let script = format!(
        "mount --bind {} /usr/local/sbin && exec {} src/data dst/data",
        h.bin.display(),
        bin()
    );
    let out = h
        .command("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Operation not permitted") {
        eprintln!("skipped: needs root for a private mount namespace");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(h.files("dst/data"), h.files("src/data"));
}

#[test]
fn dry_run_with_rsync_shows_the_agents_not_a_pipeline() {
    let _serial = serial();
    let h = two_pools();
    let r = ok(
        &h,
        &[
            "--dry-run",
            "--rsync",
            "--no-sync-snap",
            "src/data",
            "dst/data",
        ],
    );
    assert!(
        r.stdout.contains("zfs send src/data@first  (sender agent on local machine)  =>  verified chunks  =>  zfs receive -s dst/data  (receiver agent on local machine)"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("mbuffer"), "{}", r.stdout);
    assert!(!h.exists("dst/data"));
}

#[test]
fn syncoids_words_are_kept_where_scripts_grep_them() {
    let _serial = serial();
    let h = two_pools();
    h.zfs(&["create", "src/empty"]).ok();
    let r = run_expect(&h, &["--no-sync-snap", "src/empty", "dst/empty"], 2);
    assert!(
        r.stderr
            .contains("no snapshots exist on source src/empty, and you asked for --no-sync-snap."),
        "{}",
        r.stderr
    );
}

/// Parses a Prometheus text file with the reference client's parser
/// (Debian's python3-prometheus-client): `name{labels} value` lines.
fn prometheus_samples(path: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
             for fam in f(open(sys.argv[1]).read()):\n    for s in fam.samples:\n        \
             print(s.name + '{' + ','.join(k + '=' + v for k, v in sorted(s.labels.items())) + '} ' + repr(s.value))",
        )
        .arg(path)
        .output()
        .expect("python3 with prometheus_client (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// `--metrics-file` after a success, a failure and a busy dataset: the
/// file parses as Prometheus text, says each outcome and exit status, and
/// keeps a failing dataset's last success time.
#[test]
fn metrics_file_reports_success_failure_and_busy_for_prometheus() {
    let _serial = serial();
    let h = two_pools();
    let prom = h.dir().join("syncoid.prom");
    let m = format!("--metrics-file={}", prom.display());
    ok(&h, &[&m, "src/data", "dst/data"]);
    let first = prometheus_samples(&prom);
    let has = |samples: &[String], s: &str| samples.iter().any(|l| l == s);
    assert!(
        has(
            &first,
            "syncoid_rsync_dataset_outcome{outcome=replicated,source=src/data,target=dst/data} 1.0"
        ),
        "{first:?}"
    );
    assert!(
        has(&first, "syncoid_rsync_last_run_exit_code{} 0.0"),
        "{first:?}"
    );
    let success = |samples: &[String]| {
        samples
            .iter()
            .find(|l| l.starts_with("syncoid_rsync_dataset_last_success_timestamp_seconds{source=src/data,target=dst/data}"))
            .cloned()
            .unwrap_or_else(|| panic!("no last success: {samples:?}"))
    };
    let succeeded_at = success(&first);

    // A failure: the target diverged and --no-rollback forbids the fix.
    h.write("dst/data", "stray", b"x");
    run_expect(&h, &[&m, "--no-rollback", "src/data", "dst/data"], 2);
    let failed = prometheus_samples(&prom);
    assert!(
        has(
            &failed,
            "syncoid_rsync_dataset_outcome{outcome=failed,source=src/data,target=dst/data} 1.0"
        ),
        "{failed:?}"
    );
    assert!(
        has(&failed, "syncoid_rsync_last_run_exit_code{} 2.0"),
        "{failed:?}"
    );
    assert_eq!(
        success(&failed),
        succeeded_at,
        "the last success time is kept"
    );

    // Busy: a zfs receive into the target is running.
    let mut busy = h
        .command("zfs")
        .args(["receive", "-s", "dst/data"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cmdline = format!("/proc/{}/cmdline", busy.id());
    wait_until("the other zfs receive", 10, || {
        std::fs::read(&cmdline).is_ok_and(|c| c.windows(7).any(|w| w == b"receive"))
    });
    let r = run(&h, &[&m, "src/data", "dst/data"]);
    let _ = busy.kill();
    let _ = busy.wait();
    assert_eq!(r.status, 1, "{}", r.stderr);
    let b = prometheus_samples(&prom);
    assert!(
        has(
            &b,
            "syncoid_rsync_dataset_outcome{outcome=busy,source=src/data,target=dst/data} 1.0"
        ),
        "{b:?}"
    );
    assert!(has(&b, "syncoid_rsync_last_run_exit_code{} 1.0"), "{b:?}");
    let left: Vec<_> = std::fs::read_dir(h.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("metrics"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
