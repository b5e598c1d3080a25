//! What the emulator does with data: streams carry files exactly, broken
//! streams are refused without side effects, resumable receives resume at
//! the right byte, faults fire where asked, and every call is logged.

use syncoid_rsync_testkit::Host;

fn setup() -> Host {
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "src/data"]).ok();
    h.write("src/data", "f1", &vec![7u8; 3_000_000]);
    h.write("src/data", "dir/f2", b"two\n");
    h.zfs(&["snapshot", "src/data@a"]).ok();
    h.write("src/data", "dir/f2", b"two\nthree\n");
    h.write("src/data", "f3", b"new");
    h.zfs(&["snapshot", "src/data@b"]).ok();
    h
}

#[test]
fn full_and_incremental_streams_carry_the_files() {
    let h = setup();
    h.sh("zfs send src/data@a | zfs receive dst/data").ok();
    assert_eq!(h.read("dst/data", "dir/f2").unwrap(), b"two\n");
    assert_eq!(h.read("dst/data", "f3"), None);
    h.sh("zfs send -i @a src/data@b | zfs receive dst/data")
        .ok();
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    assert_eq!(h.snapshot_guids("dst/data"), h.snapshot_guids("src/data"));
    assert_eq!(h.get("origin", "dst/data"), "-");
}

#[test]
fn truncated_full_stream_is_refused_and_creates_nothing() {
    let h = setup();
    let r = h.sh("zfs send src/data@a | head -c 1000000 | zfs receive dst/trunc");
    assert_eq!(r.status, 1);
    assert_eq!(
        r.stderr,
        "cannot receive new filesystem stream: incomplete stream\n"
    );
    assert!(!h.exists("dst/trunc"));
}

#[test]
fn corrupted_incremental_is_refused_and_target_is_unchanged() {
    let h = setup();
    h.sh("zfs send src/data@a | zfs receive dst/data").ok();
    let before = h.files("dst/data");
    let r = h.sh("FAKEZFS_SEND_CORRUPT_AT=300 zfs send -i @a src/data@b | zfs receive dst/data");
    assert_eq!(r.status, 1, "{r:?}");
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    assert_eq!(h.snapshots("dst/data"), ["a"]);
    assert_eq!(h.files("dst/data"), before);
}

#[test]
fn interrupted_receive_resumes_at_the_saved_offset() {
    let h = setup();
    let r = h.sh("zfs send src/data@a | head -c 1000000 | zfs receive -s dst/part");
    assert_eq!(r.status, 1);
    assert!(
        r.stderr.contains("Partially received snapshot is saved."),
        "{}",
        r.stderr
    );
    let token = h.get("receive_resume_token", "dst/part");
    assert!(token.starts_with("1-"), "{token}");
    let est = h.zfs(&["send", "-nvP", "-t", &token]).ok();
    assert!(est.stdout.contains("toname = src/data@a"), "{}", est.stdout);
    h.sh(&format!("zfs send -t {token} | zfs receive -s dst/part"))
        .ok();
    assert_eq!(h.get("receive_resume_token", "dst/part"), "-");
    assert_eq!(h.read("dst/part", "f1").unwrap(), vec![7u8; 3_000_000]);
    assert_eq!(h.read("dst/part", "dir/f2").unwrap(), b"two\n");
    assert_eq!(
        h.snapshot_guids("dst/part")["a"],
        h.snapshot_guids("src/data")["a"]
    );
    // The two receives fed contiguous, non-overlapping payload ranges.
    let fed: Vec<(u64, u64)> = h
        .log()
        .iter()
        .filter(|e| e["argv"][0] == "receive")
        .flat_map(|e| e["fed"].as_array().cloned().unwrap_or_default())
        .map(|f| (f["from"].as_u64().unwrap(), f["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(fed.len(), 2, "{fed:?}");
    assert_eq!(fed[0].0, 0);
    assert_eq!(fed[1].0, fed[0].1);
    assert!(fed[0].1 > 0);
}

/// A receive cut after the stream's header but before its first whole
/// record keeps a partial state at offset 0, as real zfs does (the resume
/// fields are set when the receive begins); its token's stream resumes it
/// from the start and is not taken for a new full stream.
#[test]
fn a_receive_cut_before_its_first_record_resumes_from_offset_0() {
    let h = setup();
    let r = h.sh("zfs send src/data@a | head -c 2000 | zfs receive -s dst/part");
    assert!(
        r.stderr.contains("Partially received snapshot is saved."),
        "{}",
        r.stderr
    );
    let token = h.get("receive_resume_token", "dst/part");
    let est = h.zfs(&["send", "-nvP", "-t", &token]).ok();
    assert!(est.stdout.contains("offset = 0x0"), "{}", est.stdout);
    h.sh(&format!("zfs send -t {token} | zfs receive -s dst/part"))
        .ok();
    assert_eq!(h.get("receive_resume_token", "dst/part"), "-");
    assert_eq!(h.read("dst/part", "f1").unwrap(), vec![7u8; 3_000_000]);
    assert_eq!(
        h.snapshot_guids("dst/part")["a"],
        h.snapshot_guids("src/data")["a"]
    );
}

#[test]
fn receive_abort_discards_partial_state() {
    let h = setup();
    h.sh("zfs send src/data@a | head -c 1000000 | zfs receive -s dst/part");
    h.zfs(&["receive", "-A", "dst/part"]).ok();
    assert!(!h.exists("dst/part"));
    let r = h.zfs(&["receive", "-A", "dst/part"]);
    assert_eq!(r.status, 1);
}

#[test]
fn modified_target_and_wrong_base_are_refused_with_real_messages() {
    let h = setup();
    h.sh("zfs send src/data@a | zfs receive dst/data").ok();
    h.write("dst/data", "local-change", b"x");
    let r = h.sh("zfs send -i @a src/data@b | zfs receive dst/data");
    assert_eq!(
        r.stderr,
        "cannot receive incremental stream: destination dst/data has been modified\nsince most recent snapshot\n"
    );
    h.sh("zfs send -i @a src/data@b | zfs receive -F dst/data")
        .ok();
    assert_eq!(h.read("dst/data", "local-change"), None);
    h.zfs(&["create", "dst/other"]).ok();
    h.zfs(&["snapshot", "dst/other@x"]).ok();
    let r = h.sh("zfs send -i @a src/data@b | zfs receive dst/other");
    assert!(
        r.stderr.contains("does not\nmatch incremental source"),
        "{}",
        r.stderr
    );
}

#[test]
fn synthetic_content_streams_and_is_verified() {
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "-o", "fakezfs:synthetic=64M", "src/big"])
        .ok();
    h.zfs(&["snapshot", "src/big@s1"]).ok();
    let est = h.zfs(&["send", "-nvP", "src/big@s1"]).ok();
    let size: u64 = est
        .stdout
        .lines()
        .last()
        .unwrap()
        .split('\t')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 64 << 20, "{size}");
    h.sh("zfs send src/big@s1 | zfs receive dst/big").ok();
    let log = h.log();
    let send = log
        .iter()
        .find(|e| e["argv"] == serde_json::json!(["send", "src/big@s1"]));
    let sent = send.unwrap()["stdout_bytes"].as_u64();
    assert_eq!(
        sent,
        Some(size),
        "the -nvP estimate is the exact stream size"
    );
    assert!(h.get("referenced", "dst/big").ends_with('M'));
    let r = h.sh("FAKEZFS_SEND_CORRUPT_AT=40000000 zfs send src/big@s1 | zfs receive dst/big2");
    assert_eq!(r.status, 1);
    assert!(!h.exists("dst/big2"));
}

#[test]
fn send_and_receive_faults_fire_where_asked() {
    let h = setup();
    let r = h.sh("FAKEZFS_SEND_FAIL_AFTER=500000 zfs send src/data@a > /dev/null");
    assert_eq!(r.status, 1);
    assert_eq!(
        r.stderr,
        "warning: cannot send 'src/data@a': Input/output error\n"
    );
    let r = h.sh("zfs send src/data@a | FAKEZFS_RECV_FAIL_AFTER=2000000 zfs receive -s dst/part");
    assert_eq!(r.status, 1);
    let log = h.log();
    let recv = log.iter().rfind(|e| e["argv"][0] == "receive").unwrap();
    assert_eq!(recv["stdin_bytes"], 2_000_000);
    assert!(h.get("receive_resume_token", "dst/part").starts_with("1-"));
    // A pause stops the reading for a while; the stream still arrives whole.
    let t = std::time::Instant::now();
    let r = h.sh("zfs send src/data@a | FAKEZFS_RECV_PAUSE=100000:1.5 zfs receive dst/paused");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(
        t.elapsed().as_secs_f64() >= 1.5,
        "no pause: {:?}",
        t.elapsed()
    );
    assert!(h.read("dst/paused", "f1") == Some(vec![7u8; 3_000_000]));
    assert_eq!(h.read("dst/paused", "dir/f2").unwrap(), b"two\n");
}

#[test]
fn every_invocation_is_logged_with_its_status() {
    let h = setup();
    h.zfs(&["destroy", "src/nope@x"]);
    let log = h.log();
    let last = log.last().unwrap();
    assert_eq!(last["argv"], serde_json::json!(["destroy", "src/nope@x"]));
    assert_eq!(last["status"], 1);
    assert!(
        h.logged_subcommands()
            .iter()
            .filter(|c| *c == "snapshot")
            .count()
            == 2
    );
}

#[test]
fn pool_roots_are_not_destroyed_and_holds_block_destroy() {
    let h = setup();
    let r = h.zfs(&["destroy", "src"]);
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("operation does not apply to pools"));
    h.zfs(&["hold", "keep", "src/data@a"]).ok();
    let r = h.zfs(&["destroy", "src/data@a"]);
    assert_eq!(
        r.stderr,
        "cannot destroy snapshot src/data@a: dataset is busy\n"
    );
    h.zfs(&["release", "keep", "src/data@a"]).ok();
    h.zfs(&["destroy", "src/data@a"]).ok();
    assert_eq!(h.snapshots("src/data"), ["b"]);
}

#[test]
fn bookmarks_serve_as_incremental_sources() {
    let h = setup();
    h.sh("zfs send src/data@a | zfs receive dst/data").ok();
    h.zfs(&["bookmark", "src/data@a", "src/data#a"]).ok();
    h.zfs(&["destroy", "src/data@a"]).ok();
    h.sh("zfs send -i src/data#a src/data@b | zfs receive dst/data")
        .ok();
    assert_eq!(h.files("dst/data"), h.files("src/data"));
}

#[test]
fn replication_stream_carries_children_and_properties() {
    let h = setup();
    h.zfs(&["create", "src/data/child"]).ok();
    h.write("src/data/child", "c", b"child");
    h.zfs(&["set", "syncoid:sync=true", "src/data"]).ok();
    h.zfs(&["snapshot", "-r", "src/data@r"]).ok();
    h.sh("zfs send -R src/data@r | zfs receive dst/copy").ok();
    assert_eq!(h.snapshots("dst/copy"), ["a", "b", "r"]);
    assert_eq!(h.read("dst/copy/child", "c").unwrap(), b"child");
    let r = h
        .zfs(&[
            "get",
            "-H",
            "-o",
            "value,source",
            "syncoid:sync",
            "dst/copy",
        ])
        .ok();
    assert_eq!(r.stdout, "true\treceived\n");
}
