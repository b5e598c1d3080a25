//! `--many` and `--many-rtt`: trees of many datasets, replicated with
//! `--jobs 1` and 4 (and syncoid 2.1), through the loopback sshd and
//! through a round trip.

use std::path::PathBuf;
use syncoid_rsync_core::fuzz::noise;
use syncoid_rsync_testkit::{syncoid_bin, Host, Sshd};

use super::{measure, sibling, Rows};

/// A tree `src/root` of `n` datasets on `h`, each with `size` of data
/// in a file and snapshot `s0`.
fn many_tree(h: &Host, n: usize, size: usize) {
    h.zfs(&["create", "src/root"]).ok();
    h.zfs(&["snapshot", "src/root@s0"]).ok();
    for i in 0..n {
        let fs = format!("src/root/d{i}");
        h.zfs(&["create", &fs]).ok();
        h.write(&fs, "f0", &noise(size, i as u64 * 0x9E37_79B9));
        h.zfs(&["snapshot", &format!("{fs}@s0")]).ok();
    }
}

/// One new snapshot `s{round}` with `size` new bytes on each of the `n`
/// datasets of `many_tree`.
fn many_round(h: &Host, n: usize, size: usize, round: usize) {
    for i in 0..n {
        let fs = format!("src/root/d{i}");
        h.write(
            &fs,
            &format!("f{round}"),
            &noise(size, (round * n + i) as u64 * 0x9E37_79B9),
        );
    }
    let snaps: Vec<String> = (0..n).map(|i| format!("src/root/d{i}@s{round}")).collect();
    let root = format!("src/root@s{round}");
    let mut args = vec!["snapshot", root.as_str()];
    args.extend(snaps.iter().map(String::as_str));
    h.zfs(&args).ok();
}

/// `--many N[:MS]`: N datasets, each with one new 1 MB snapshot per run,
/// replicated incrementally (`-r --no-sync-snap`) to a target behind the
/// loopback sshd (with MS: each ssh connection through the latency relay,
/// that round trip): syncoid 2.1 (without a round trip only: its ssh
/// command line cannot carry the relay), then ours in standard mode and
/// with `--rsync`, at `--jobs 1` and 4. Rows are (tool, wall s, CPU s);
/// one run each (the tree is the sample).
pub(crate) fn many(n: usize, rtt_ms: f64) -> Rows {
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    let mut ssh = sshd.syncoid_args();
    if rtt_ms > 0.0 {
        ssh.push(format!(
            "--sshoption=ProxyCommand={} {}ms %h %p",
            sibling("latency").display(),
            rtt_ms / 2.0
        ));
    }
    many_tree(&local, n, 1 << 20);
    let ours = sibling("syncoid-rsync");
    let first = |extra: &[&str]| {
        let mut c = local.command(ours.to_str().unwrap());
        c.args(&ssh)
            .args(["-r", "--no-sync-snap", "--quiet", "--jobs=4"])
            .args(extra)
            .args(["src/root", "root@127.0.0.1:far/root"]);
        measure(c)
    };
    first(&[]);
    let kinds: Vec<(String, PathBuf, Vec<&str>)> = vec![
        ("syncoid 2.1".into(), syncoid_bin(), vec![]),
        (
            "syncoid-rsync --jobs 1".into(),
            ours.clone(),
            vec!["--jobs=1"],
        ),
        (
            "syncoid-rsync --jobs 4".into(),
            ours.clone(),
            vec!["--jobs=4"],
        ),
        (
            "syncoid-rsync --rsync --jobs 1".into(),
            ours.clone(),
            vec!["--rsync", "--jobs=1"],
        ),
        (
            "syncoid-rsync --rsync --jobs 4".into(),
            ours.clone(),
            vec!["--rsync", "--jobs=4"],
        ),
    ];
    let mut rows = Vec::new();
    for (round, (label, bin, extra)) in kinds.into_iter().enumerate() {
        many_round(&local, n, 1 << 20, round + 1);
        if rtt_ms > 0.0 && bin == syncoid_bin() {
            // The next run sends this round's snapshot too.
            continue;
        }
        let mut c = local.command(bin.to_str().unwrap());
        c.args(&ssh)
            .args(["-r", "--no-sync-snap", "--quiet"])
            .args(extra)
            .args(["src/root", "root@127.0.0.1:far/root"]);
        let s = measure(c);
        rows.push((label, s.secs, s.cpu));
    }
    for i in 0..n {
        let snaps = far.snapshots(&format!("far/root/d{i}"));
        assert_eq!(snaps.len(), 6, "far/root/d{i}: {snaps:?}");
    }
    rows
}

/// `--many-rtt MS:N:SIZE`: N datasets of SIZE each (synthetic), pushed in
/// full through the loopback sshd with every ssh connection through the
/// latency relay (round trip MS; 0: no relay), at `--jobs 1` and 4, in
/// standard mode and with `--rsync`. Rows are (tool, wall s, CPU s).
pub(crate) fn many_rtt(spec: &str) -> Rows {
    let parts: Vec<&str> = spec.split(':').collect();
    let [ms, n, size] = parts[..] else {
        panic!("--many-rtt MS:N:SIZE");
    };
    let (ms, n): (f64, usize) = (ms.parse().expect("MS"), n.parse().expect("N"));
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    local.zfs(&["create", "src/root"]).ok();
    local.zfs(&["snapshot", "src/root@s"]).ok();
    for i in 0..n {
        let fs = format!("src/root/d{i}");
        local
            .zfs(&["create", "-o", &format!("fakezfs:synthetic={size}"), &fs])
            .ok();
        local.zfs(&["snapshot", &format!("{fs}@s")]).ok();
    }
    let cfg = local.dir().join("ssh_config");
    let mut block = sshd.config_block("far");
    // MS 0: straight to the loopback sshd, no relay.
    if ms > 0.0 {
        block.push_str(&format!(
            "  ProxyCommand {} {}ms %h %p\n",
            sibling("latency").display(),
            ms / 2.0
        ));
    }
    std::fs::write(&cfg, block).unwrap();
    let ours = sibling("syncoid-rsync");
    let mut rows = Vec::new();
    // The last two rows: --rsync without the host agents (each transfer's
    // agents started by an ssh session of their own, as before them).
    for (k, extra) in [
        vec!["--jobs=1"],
        vec!["--jobs=4"],
        vec!["--rsync", "--jobs=1"],
        vec!["--rsync", "--jobs=4"],
        vec!["--rsync", "--jobs=1", "(no host agent)"],
        vec!["--rsync", "--jobs=4", "(no host agent)"],
    ]
    .into_iter()
    .enumerate()
    {
        let target = format!("far/k{k}");
        let mut c = local.command(ours.to_str().unwrap());
        let no_host_agent = extra.contains(&"(no host agent)");
        if no_host_agent {
            c.env("SYNCOID_RSYNC_HOST_AGENT", "0");
        }
        let label = format!("syncoid-rsync {}", extra.join(" "));
        let extra: Vec<&str> = extra.into_iter().filter(|a| a.starts_with("--")).collect();
        c.args(["-r", "--compress=none", "--no-sync-snap", "--quiet"])
            .arg(format!("--sshconfig={}", cfg.display()))
            .args(&extra)
            .arg("src/root")
            .arg(format!("root@far:{target}"));
        // BENCH_DEBUG_DIR: each row's --debug lines (timestamped) into
        // DIR/rowK.log, to see where a row's time goes.
        if let Ok(d) = std::env::var("BENCH_DEBUG_DIR") {
            c.arg("--debug");
            let f = std::fs::File::create(format!("{d}/row{k}.log")).unwrap();
            c.stderr(f.try_clone().unwrap()).stdout(f);
        }
        let s = measure(c);
        rows.push((label, s.secs, s.cpu));
        far.zfs(&["destroy", "-r", &target]).ok();
    }
    rows
}
