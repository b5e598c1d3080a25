//! What the user sees: `--json` events checked against docs/json-events.md,
//! log lines when stderr is not a terminal, and the bar in a real terminal
//! (a pty from script(1)) moving and ending at 100%.

mod agents;
mod common;
use agents::*;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use syncoid_rsync_testkit::{Host, Sshd};

/// Event name -> documented keys, read from the tables in
/// docs/json-events.md (so the document and the program cannot drift).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/json-events.md"
    ))
    .unwrap();
    let key = regex::Regex::new(r"`([a-z_]+)`").unwrap();
    let mut out = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cols[1].trim_matches('`').to_string();
        if ["event", "elapsed", "time"].contains(&name.as_str()) {
            continue;
        }
        let mut keys: BTreeSet<String> = key
            .captures_iter(cols[2])
            .map(|c| c[1].to_string())
            .collect();
        keys.extend(["event", "elapsed", "time"].map(String::from));
        out.insert(name, keys);
    }
    out
}

/// Checks one event against the documented keys and the types its name
/// implies; returns the event name.
fn check_event(e: &Value, doc: &BTreeMap<String, BTreeSet<String>>) -> String {
    let name = e["event"]
        .as_str()
        .unwrap_or_else(|| panic!("no event in {e}"));
    let want = doc
        .get(name)
        .unwrap_or_else(|| panic!("undocumented event {name}: {e}"));
    let have: BTreeSet<String> = e.as_object().unwrap().keys().cloned().collect();
    assert_eq!(&have, want, "keys of {name}");
    for (k, v) in e.as_object().unwrap() {
        let ok = match k.as_str() {
            "event" | "source" | "target" | "reason" | "kind" | "status" | "mode" => v.is_string(),
            "error" => v.is_string() || v.is_null(),
            "estimate_bytes" | "eta_seconds" => v.is_u64() || v.is_null(),
            "dry_run" | "estimate_known" | "link_down" => v.is_boolean(),
            "datasets" => v.is_array() || v.is_u64(),
            "links" => v.as_array().is_some_and(|a| {
                a.iter()
                    .all(|l| ["up", "down", "joining"].contains(&l.as_str().unwrap_or("")))
            }),
            "elapsed" | "time" | "seconds" | "rate_bps" | "mean_rate_bps" | "outage_seconds" => {
                v.is_number()
            }
            _ => v.is_u64(),
        };
        assert!(ok, "{name}.{k} has the wrong type: {v}");
    }
    name.to_string()
}

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_events_follow_the_documented_schema_through_an_outage() {
    let _serial = serial();
    let doc = documented();
    assert!(doc.len() >= 8, "{doc:?}");
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    // ~3 s of sending; the agent connections killed once 8 MB arrived
    // (the receiver is connected then: a connection killed while the
    // agent starts is a retried start, not an outage).
    let child = push_through(&sshd, (&local, &far), "24M", &["--json"], 8 << 20);
    let mut killed = 0;
    for p in agent_links(child.id()) {
        kill(p, 9);
        killed += 1;
    }
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(killed >= 1);
    let evs = events(&out);
    let names: Vec<String> = evs.iter().map(|e| check_event(e, &doc)).collect();
    assert_eq!(names.first().map(String::as_str), Some("plan"), "{names:?}");
    assert_eq!(
        names.last().map(String::as_str),
        Some("summary"),
        "{names:?}"
    );
    for must in [
        "dataset_start",
        "progress",
        "link_lost",
        "retry",
        "reconnect",
        "dataset_done",
    ] {
        assert!(names.iter().any(|n| n == must), "no {must} in {names:?}");
    }
    let summary = evs.last().unwrap();
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["replicated"], 1);
    assert!(summary["reconnects"].as_u64().unwrap() >= 1);
    // Stream bytes (records and headers) received: at least the payload
    // the emulator's receive took, and what the dataset reported.
    let total = received_bytes(&far);
    let bytes = summary["bytes"].as_u64().unwrap();
    assert!(bytes >= total, "{bytes} < {total}");
    let done = evs.iter().find(|e| e["event"] == "dataset_done").unwrap();
    assert_eq!(done["bytes"].as_u64().unwrap(), bytes);
    assert_eq!(done["status"], "replicated");
    let start = evs.iter().find(|e| e["event"] == "dataset_start").unwrap();
    assert_eq!(start["kind"], "full");
    assert!(start["estimate_bytes"].as_u64().unwrap() > 24_000_000);
    let mut last = 0;
    for p in evs.iter().filter(|e| e["event"] == "progress") {
        let (got, of) = (
            p["bytes_received"].as_u64().unwrap(),
            p["total_bytes"].as_u64().unwrap(),
        );
        assert!(got <= of, "{p}");
        assert!(got >= last, "progress went backwards: {p}");
        last = got;
    }
    let lost = evs.iter().find(|e| e["event"] == "link_lost").unwrap();
    assert!(lost["bytes_safe"].as_u64().unwrap() <= bytes);
    assert!(!err.contains("link to the agents lost") || err.contains("WARNING"));
    assert_eq!(far.files("far/data"), local.files("src/data"));
}

/// With `--streams 3`, progress says the width and each connection's
/// state; one connection killed is a `links` event with it lost alone (no
/// link_lost: the stream never stopped), then one with all three up.
#[test]
fn json_shows_each_connection_and_one_lost_alone() {
    let _serial = serial();
    let doc = documented();
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let (_r1, _r2) = (Reaper(&local), Reaper(&far));
    let opts = ["--json", "--streams=3"];
    let child = push_through(&sshd, (&local, &far), "24M", &opts, 8 << 20);
    // Once all three connections are made, one is killed; the helper
    // returns once it was made again.
    kill_one_connection(child.id(), &far, 3, 1);
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    let evs = events(&out);
    let names: Vec<String> = evs.iter().map(|e| check_event(e, &doc)).collect();
    assert!(!names.iter().any(|n| n == "link_lost"), "{names:?}");
    let links: Vec<Vec<&str>> = evs
        .iter()
        .filter(|e| e["event"] == "links")
        .map(|e| {
            let all = e["links"].as_array().unwrap();
            all.iter().map(|l| l.as_str().unwrap()).collect()
        })
        .collect();
    // The stream starts on the first connection while the others are
    // made; one is lost (the others stay up), and all are up again after.
    assert_eq!(links.first().map(Vec::len), Some(3), "{links:?}");
    let all_up = |l: &Vec<&str>| *l == vec!["up"; 3];
    let lost = links
        .iter()
        .position(|l| l.contains(&"down") && l.iter().filter(|s| **s == "up").count() == 2);
    let back = lost.and_then(|i| links[i..].iter().position(all_up));
    assert!(back.is_some(), "one lost alone, all up again: {links:?}");
    let p = evs.iter().find(|e| e["event"] == "progress").unwrap();
    assert_eq!(p["streams"], 3);
    assert_eq!(far.files("far/data"), local.files("src/data"));
}

#[test]
fn json_in_standard_mode_counts_every_stream_exactly() {
    let _serial = serial();
    let doc = documented();
    let h = two_pools();
    let r = ok(&h, &["--json", "src/data", "dst/data"]);
    let evs = events(&r.stdout);
    let mut names: Vec<String> = evs.iter().map(|e| check_event(e, &doc)).collect();
    // Each stream ends with a progress event at 100% of what it really was:
    // the last one before the next stream starts or the dataset is done.
    let mut ends: Vec<&Value> = Vec::new();
    let mut last: Option<&Value> = None;
    for e in &evs {
        match e["event"].as_str().unwrap() {
            "progress" => last = Some(e),
            "dataset_start" | "dataset_done" => ends.extend(last.take()),
            _ => {}
        }
    }
    assert_eq!(ends.len(), 2, "{}", r.stdout);
    for p in &ends {
        assert_eq!(p["wire_bytes"], 0);
        assert_eq!(p["bytes_received"], p["total_bytes"], "{p}");
    }
    let full_end = ends[0]["bytes_received"].as_u64().unwrap();
    assert!(
        full_end > 50_000,
        "the full stream carries the 50 KB file: {full_end}"
    );
    let summary = evs.last().unwrap();
    assert!(summary["bytes"].as_u64().unwrap() >= full_end);
    names.retain(|n| n != "progress");
    // Two streams (the oldest snapshot in full, then an incremental to the
    // sync snapshot), one dataset.
    assert_eq!(
        names,
        [
            "plan",
            "dataset_start",
            "dataset_start",
            "dataset_done",
            "summary"
        ],
        "{}",
        r.stdout
    );
    let starts: Vec<&Value> = evs
        .iter()
        .filter(|e| e["event"] == "dataset_start")
        .collect();
    assert_eq!(starts[0]["kind"], "full");
    assert_eq!(starts[1]["kind"], "incremental");
    assert_eq!(summary["exit_code"], 0);
    // Nothing to do the second time: the dataset is up to date.
    let r = ok(&h, &["--json", "--no-sync-snap", "src/data", "dst/data"]);
    let evs = events(&r.stdout);
    assert_eq!(evs.len(), 3, "{}", r.stdout);
    assert_eq!(evs[1]["status"], "up_to_date", "{}", r.stdout);
    // A failure: exit code and summary agree.
    h.zfs(&["create", "dst/other"]).ok();
    h.write("dst/other", "mine", b"precious");
    h.zfs(&["snapshot", "dst/other@x"]).ok();
    let r = run(&h, &["--json", "src/data", "dst/other"]);
    let evs = events(&r.stdout);
    let last = evs.last().unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["failed"], 1);
    assert_eq!(last["exit_code"].as_i64().unwrap(), i64::from(r.status));
    let done = evs.iter().find(|e| e["event"] == "dataset_done").unwrap();
    assert!(done["error"].as_str().unwrap().len() > 10, "{done}");
}

#[test]
fn without_a_terminal_progress_is_plain_log_lines() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "16M");
    synthetic(&h, "src/data/kid", "3M");
    let child = spawn(
        &h,
        &["--rsync", "-r", "--no-sync-snap", "src/data", "dst/data"],
        &[
            ("FAKEZFS_SEND_RATE", "6M"),
            ("SYNCOID_RSYNC_LOG_INTERVAL", "0.5"),
        ],
    );
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "{out}\n{err}");
    // Recursive: each line says which dataset of the plan it is.
    let first: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("progress [1/2] src/data: "))
        .collect();
    assert!(first.len() >= 3, "{err}");
    assert!(first.last().unwrap().contains("(100%)"), "{err}");
    let second = err
        .lines()
        .rfind(|l| l.starts_with("progress [2/2] src/data/kid: "))
        .unwrap_or_else(|| panic!("no line for the child: {err}"));
    assert!(second.contains("(100%)"), "{second}");
    assert!(!err.contains('\r'), "no terminal control in logs");
    assert_eq!(h.files("dst/data/kid"), h.files("src/data/kid"));
}

/// Runs syncoid-rsync with `args` on `h` in a pty (script(1) gives it one
/// as stdout and stderr), zfs send at `rate`; returns what the terminal
/// showed, after checking the run succeeded and the data arrived.
fn in_terminal(h: &Host, args: &str, rate: &str) -> String {
    let cmd = format!("{} {args} src/data dst/data", bin());
    let out = h
        .command("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("FAKEZFS_SEND_RATE", rate)
        .env("COLUMNS", "150")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    text
}

/// Percentages of the bar's redraws, checked to grow, to have moved
/// through the middle and to end full at 100%.
fn bar_percentages(text: &str) -> Vec<u32> {
    let frames: Vec<&str> = text
        .split('\r')
        .filter(|f| f.starts_with("src/data ["))
        .collect();
    assert!(frames.len() >= 3, "the bar was redrawn in place: {text:?}");
    let pct = |f: &str| -> u32 {
        f.split('%')
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let seen: Vec<u32> = frames.iter().map(|f| pct(f)).collect();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        seen.iter().any(|p| *p > 0 && *p < 100),
        "it moved: {seen:?}"
    );
    assert_eq!(*seen.last().unwrap(), 100, "{seen:?}");
    assert!(
        frames
            .last()
            .unwrap()
            .contains("[####################] 100%"),
        "{text:?}"
    );
    seen
}

#[test]
fn in_a_terminal_standard_mode_shows_our_bar_not_pv() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    synthetic(&h, "src/data", "12M");
    let text = in_terminal(&h, "--no-sync-snap", "5M");
    bar_percentages(&text);
}

#[test]
fn in_a_terminal_the_bar_moves_and_ends_at_100_percent() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "16M");
    let text = in_terminal(&h, "--rsync --no-sync-snap", "6M");
    bar_percentages(&text);
    // On a terminal the run ends with its summary.
    assert!(
        text.contains("syncoid-rsync: 1 replicated, 0 already up to date, 0 skipped, 0 busy, 0 failed; 16.0 MB in "),
        "{text:?}"
    );
}

/// `-r --jobs 3` in a terminal: one line for all streams, redrawn in
/// place with the datasets done and the sums, never a bar per dataset;
/// the INFO lines of the datasets never land in the middle of it; the
/// summary lists each dataset's outcome.
#[test]
fn in_a_terminal_several_datasets_share_one_line() {
    let _serial = serial();
    let h = Host::new(&["src", "dst"]);
    let _reap = Reaper(&h);
    synthetic(&h, "src/data", "1M");
    for kid in ["a", "b", "c"] {
        synthetic(&h, &format!("src/data/{kid}"), "8M");
    }
    let text = in_terminal(&h, "-r --jobs=3 --rsync --no-sync-snap", "4M");
    for kid in ["a", "b", "c"] {
        let (src, dst) = (format!("src/data/{kid}"), format!("dst/data/{kid}"));
        assert_eq!(h.files(&dst), h.files(&src), "{kid}");
    }
    let frames: Vec<&str> = text.split('\r').filter(|f| f.starts_with('[')).collect();
    assert!(
        frames.iter().any(|f| f.contains(" datasets] 3 streams: ")),
        "three streams on one line: {text:?}"
    );
    assert!(
        frames.last().unwrap().starts_with("[4/4 datasets]"),
        "{text:?}"
    );
    assert!(
        !text.contains("src/data/a ["),
        "no bar per dataset: {text:?}"
    );
    // Every INFO line starts a line of its own.
    for l in text.split('\n') {
        if let Some(at) = l.find("INFO:") {
            assert!(
                l[..at].trim_matches(['\r', ' ']).is_empty() || l[..at].ends_with("\x1b[K"),
                "{l:?}"
            );
        }
    }
    for kid in ["a", "b", "c"] {
        assert!(
            text.contains(&format!("replicated  src/data/{kid} -> dst/data/{kid}")),
            "{text:?}"
        );
    }
}
