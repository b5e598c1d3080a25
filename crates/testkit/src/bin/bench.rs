//! The benchmark harness: throughput of raw `zfs send | ssh | zfs receive`,
//! Debian's syncoid 2.1 and syncoid-rsync on the same synthetic dataset over
//! a loopback sshd, in the same run, as ratios (medians of --reps runs);
//! and the recursive no-op planning run (ours vs syncoid).
//!
//! cargo run --release -p syncoid-rsync-testkit --bin bench -- \
//!     [--sizes 1G,4G] [--reps 3] [--ciphers default,aes128-gcm@openssh.com] [--tree 1000x50]
//!     [--memory 1G,8G] [--outage blackhole:30,reject:5] [--other-build DIR,...]
//!
//! `--rtt MS[,MS...]:SIZE` pushes SIZE through a loopback sshd whose ssh
//! connections go through `latency` (a ProxyCommand holding each
//! direction's bytes for half the round trip): the raw pipe, standard mode
//! and `--rsync` with each `--streams W[,W...]` (default 1), at each
//! round trip.
//!
//! `--other-build DIR[,DIR...]` adds a `--rsync --compress=none` row for
//! the syncoid-rsync in each DIR (another build: the static one against
//! the dynamic, or an older commit's), in the same run, interleaved.
//!
//! Prints a markdown table. CPU is the machine-wide busy time from
//! /proc/stat during the run (every process involved, both ends).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use syncoid_rsync_testkit::{syncoid_bin, Host, Netlab, Sshd};

#[path = "bench/many.rs"]
mod many;
use many::{many, many_rtt};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn busy_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    cpu.iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum()
}

struct Sample {
    secs: f64,
    cpu: f64,
}

/// The row every ratio is taken against (escaped for a markdown table).
const RAW_SSH: &str = "raw zfs send \\| ssh \\| zfs receive";

fn measure(mut cmd: Command) -> Sample {
    let j0 = busy_jiffies();
    let t0 = Instant::now();
    let out = cmd.output().expect("run benchmark command");
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (busy_jiffies() - j0) as f64 / 100.0;
    assert!(
        out.status.success(),
        "benchmark command failed: {:?}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    Sample { secs, cpu }
}

/// A synthetic dataset `src/big` of `size` on `h`, snapshotted `@s`.
fn big(h: &Host, size: &str) {
    h.zfs(&[
        "create",
        "-o",
        &format!("fakezfs:synthetic={size}"),
        "src/big",
    ])
    .ok();
    h.zfs(&["snapshot", "src/big@s"]).ok();
}

/// The size of `src/big@s`'s full stream, as `zfs send -nvP` gives it.
fn stream_bytes(h: &Host) -> u64 {
    let est = h.zfs(&["send", "-nvP", "src/big@s"]).ok().stdout;
    est.lines()
        .last()
        .and_then(|l| l.split('\t').nth(1))
        .and_then(|v| v.parse().ok())
        .expect("zfs send -nvP gives a size")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().join(name)
}

struct Row {
    what: String,
    secs: f64,
    cpu: f64,
    bytes: u64,
}

fn throughput(
    sizes: &[String],
    reps: usize,
    ciphers: &[String],
) -> Vec<(String, String, Vec<Row>)> {
    let ours = sibling("syncoid-rsync");
    let others: Vec<PathBuf> = arg("--other-build", "")
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join("syncoid-rsync"))
        .collect();
    let mut tables = Vec::new();
    for size in sizes {
        let local = Host::new(&["src", "dst"]);
        let far = Host::new(&["far"]);
        let sshd = Sshd::start(&far);
        big(&local, size);
        let bytes = stream_bytes(&local);
        for cipher in ciphers {
            let mut ssh: Vec<String> = sshd.ssh_opts();
            if cipher != "default" {
                ssh.extend(["-c".into(), cipher.clone()]);
            }
            let ssh_line = ssh
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(" ");
            let mut tool_args = sshd.syncoid_args();
            tool_args.extend([
                "--no-sync-snap".into(),
                "--compress=none".into(),
                "--quiet".into(),
            ]);
            if cipher != "default" {
                tool_args.push(format!("--sshcipher={cipher}"));
            }
            let mut rows = Vec::new();
            let mut kinds = vec![
                "raw zfs send \\| zfs receive (local)".to_string(),
                RAW_SSH.to_string(),
                "syncoid 2.1".into(),
                "syncoid-rsync".into(),
                "syncoid-rsync --rsync --compress=none".into(),
                "syncoid-rsync --rsync (zstd default)".into(),
            ];
            let first_other = kinds.len();
            for o in &others {
                kinds.push(format!("{} --rsync --compress=none", o.display()));
            }
            // Interleaved: each repetition runs every kind once, so a drift
            // of the machine over the run (other load, a fuller pool)
            // spreads over all kinds instead of landing on the last ones.
            let mut secs = vec![Vec::new(); kinds.len()];
            let mut cpu = vec![Vec::new(); kinds.len()];
            for r in 0..reps {
                for k in 0..kinds.len() {
                    let target = format!("t{k}r{r}");
                    let cmd = match k {
                        0 => {
                            let mut c = local.command("bash");
                            c.arg("-c")
                                .arg(format!("zfs send src/big@s | zfs receive dst/{target}"));
                            c
                        }
                        1 => {
                            let mut c = local.command("bash");
                            c.arg("-c").arg(format!("zfs send src/big@s | ssh {ssh_line} root@127.0.0.1 zfs receive far/{target}"));
                            c
                        }
                        _ => {
                            let bin = match k {
                                2 => syncoid_bin(),
                                k if k >= first_other => others[k - first_other].clone(),
                                _ => ours.clone(),
                            };
                            let mut c = local.command(bin.to_str().unwrap());
                            // Kind 5 leaves --compress out: --rsync's default (zstd).
                            c.args(
                                tool_args
                                    .iter()
                                    .filter(|a| k != 5 || *a != "--compress=none"),
                            );
                            if k >= 4 {
                                c.arg("--rsync");
                            }
                            c.arg("src/big").arg(format!("root@127.0.0.1:far/{target}"));
                            c
                        }
                    };
                    let s = measure(cmd);
                    secs[k].push(s.secs);
                    cpu[k].push(s.cpu);
                    if k == 0 {
                        local.zfs(&["destroy", "-r", &format!("dst/{target}")]).ok();
                    } else {
                        far.zfs(&["destroy", "-r", &format!("far/{target}")]).ok();
                    }
                }
            }
            for ((kind, secs), cpu) in kinds.iter().zip(secs).zip(cpu) {
                rows.push(Row {
                    what: kind.clone(),
                    secs: median(secs),
                    cpu: median(cpu),
                    bytes,
                });
            }
            tables.push((size.clone(), cipher.clone(), rows));
        }
    }
    tables
}

/// `--outage MODE:SECS,...`: a 500 MB --rsync push through a netlab link
/// cut after 100 MB for SECS (needs root and network namespaces). Returns
/// (fault, heal -> data flowing in s, bytes sent twice, bytes fed twice).
fn outage(spec: &str) -> Vec<(String, f64, String, u64)> {
    let mut rows = Vec::new();
    for (n, item) in spec.split(',').enumerate() {
        let (mode, secs) = item.split_once(':').expect("MODE:SECS");
        let secs: u64 = secs.parse().expect("seconds");
        let local = Host::new(&["src"]);
        let pool = format!("far{n}");
        let far = Host::new(&[&pool]);
        let lab = Netlab::up(&far, n as u32);
        big(&local, "500M");
        let mut c = local.command(sibling("syncoid-rsync").to_str().unwrap());
        c.args(["--rsync", "--no-sync-snap", "--source-bwlimit=32M"])
            .args(lab.ssh_args())
            .arg("src/big")
            .arg(format!("{}:{pool}/big", lab.dest()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let child = c.spawn().expect("start syncoid-rsync");
        while lab.far_rx_bytes() < 100 << 20 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        lab.cut(mode);
        std::thread::sleep(std::time::Duration::from_secs(secs));
        let at_heal = lab.far_rx_bytes();
        lab.heal();
        let healed = Instant::now();
        while lab.far_rx_bytes() < at_heal + (1 << 20) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let flowing = healed.elapsed().as_secs_f64();
        let out = child.wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout);
        let resent = text
            .lines()
            .find(|l| l.contains("sent again"))
            .and_then(|l| l.split(" chunks (").nth(1))
            .and_then(|r| r.split(')').next())
            .unwrap_or("?")
            .to_string();
        // Fed twice: the emulator's log of payload ranges per receive.
        let mut fed_twice = 0u64;
        let mut at = std::collections::BTreeMap::new();
        for e in far.log() {
            for f in e["fed"].as_array().cloned().unwrap_or_default() {
                let (snap, from, to) = (
                    f["snapshot"].as_str().unwrap_or("").to_string(),
                    f["from"].as_u64().unwrap_or(0),
                    f["to"].as_u64().unwrap_or(0),
                );
                let end = at.entry(snap).or_insert(0u64);
                fed_twice += end.saturating_sub(from).min(to - from);
                *end = (*end).max(to);
            }
        }
        rows.push((format!("{mode} {secs} s"), flowing, resent, fed_twice));
    }
    rows
}

/// `--streams W,...`: the widths the --rsync rows run at (default 1).
fn widths() -> Vec<String> {
    arg("--streams", "1").split(',').map(String::from).collect()
}

/// Rows of one table: (pipeline, wall s, CPU s).
type Rows = Vec<(String, f64, f64)>;

/// `--rtt MS,...:SIZE`: the raw pipe, our standard mode and `--rsync`
/// pushing SIZE through a loopback sshd, each ssh connection through the
/// `latency` relay (one-way delay = half the round trip). Median of
/// `reps`, interleaved; rows per round trip.
fn rtt(spec: &str, reps: usize) -> (u64, Vec<(u64, Rows)>) {
    let (rtts, size) = spec.split_once(':').expect("--rtt MS,...:SIZE");
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    let sshd = Sshd::start(&far);
    big(&local, size);
    let bytes = stream_bytes(&local);
    let ours = sibling("syncoid-rsync");
    let relay = sibling("latency");
    // --rsync rows: one per --streams width.
    let widths = widths();
    let mut kinds = vec![RAW_SSH.to_string(), "syncoid-rsync".to_string()];
    kinds.extend(
        widths
            .iter()
            .map(|w| format!("syncoid-rsync --rsync --compress=none --streams {w}")),
    );
    let mut tables = Vec::new();
    for ms in rtts.split(',') {
        let ms: u64 = ms.parse().expect("--rtt milliseconds");
        let cfg = local.dir().join(format!("ssh_config_{ms}"));
        let mut block = sshd.config_block("far");
        if ms > 0 {
            block.push_str(&format!(
                "  ProxyCommand {} {}ms %h %p\n",
                relay.display(),
                ms as f64 / 2.0
            ));
        }
        std::fs::write(&cfg, block).unwrap();
        let cfg = cfg.display().to_string();
        let (mut secs, mut cpu) = (vec![Vec::new(); kinds.len()], vec![Vec::new(); kinds.len()]);
        for rep in 0..reps {
            for k in 0..kinds.len() {
                let target = format!("far/rtt{ms}k{k}r{rep}");
                let cmd = if k == 0 {
                    let mut c = local.command("bash");
                    c.arg("-c").arg(format!(
                        "zfs send src/big@s | ssh -F {cfg} far zfs receive {target}"
                    ));
                    c
                } else {
                    let mut c = local.command(ours.to_str().unwrap());
                    c.args(["--compress=none", "--no-sync-snap", "--quiet"])
                        .arg(format!("--sshconfig={cfg}"));
                    if k >= 2 {
                        c.arg("--rsync").arg(format!("--streams={}", widths[k - 2]));
                    }
                    c.arg("src/big").arg(format!("root@far:{target}"));
                    c
                };
                let s = measure(cmd);
                secs[k].push(s.secs);
                cpu[k].push(s.cpu);
                far.zfs(&["destroy", "-r", &target]).ok();
            }
        }
        let rows = kinds
            .iter()
            .zip(secs.into_iter().zip(cpu))
            .map(|(kind, (s, c))| (kind.to_string(), median(s), median(c)))
            .collect();
        tables.push((ms, rows));
    }
    (bytes, tables)
}

/// `--link RATE:SIZE,...`: the raw pipe, our standard mode and `--rsync`
/// (at each width of `--streams`) pushing SIZE through a netlab link
/// capped at RATE (tc syntax), where
/// the network and not the CPU is the limit: what a WAN user sees. Median
/// of `reps`; rows are (pipeline, wall s, CPU s).
type LinkTable = (String, String, u64, Rows);

fn link(spec: &str, reps: usize) -> Vec<LinkTable> {
    let mut tables = Vec::new();
    for (n, item) in spec.split(',').enumerate() {
        let (rate, size) = item.split_once(':').expect("--link RATE:SIZE");
        let local = Host::new(&["src"]);
        let pool = format!("far{n}");
        let far = Host::new(&[&pool]);
        let lab = Netlab::up(&far, 20 + n as u32);
        lab.slow(rate);
        big(&local, size);
        let bytes = stream_bytes(&local);
        let ours = sibling("syncoid-rsync");
        let cfg = lab.ssh_args()[1].clone();
        // The raw pipe, standard mode, --rsync at each width of
        // `--streams` (default 1), then --rsync found on the target.
        let widths = widths();
        let mut kinds: Vec<(String, Vec<String>)> = vec![
            (RAW_SSH.to_string(), Vec::new()),
            ("syncoid-rsync".to_string(), Vec::new()),
        ];
        for w in &widths {
            let label = if w == "1" {
                "syncoid-rsync --rsync --compress=none".to_string()
            } else {
                format!("syncoid-rsync --rsync --compress=none --streams {w}")
            };
            kinds.push((label, vec!["--rsync".into(), format!("--streams={w}")]));
        }
        kinds.push((
            "same as --streams 1, syncoid-rsync installed on the target".to_string(),
            vec!["--rsync".into()],
        ));
        let mut rows = Vec::new();
        for (k, (kind, extra)) in kinds.iter().enumerate() {
            if k == kinds.len() - 1 {
                // On the far host's PATH: found by the pre-flight, not copied.
                std::os::unix::fs::symlink(&ours, far.dir().join("bin/syncoid-rsync")).unwrap();
            }
            let (mut secs, mut cpu) = (Vec::new(), Vec::new());
            for rep in 0..reps {
                let target = format!("{pool}/k{k}r{rep}");
                let cmd = if k == 0 {
                    let mut c = local.command("bash");
                    c.arg("-c").arg(format!(
                        "zfs send src/big@s | ssh -F {cfg} {} zfs receive {target}",
                        lab.dest()
                    ));
                    c
                } else {
                    let mut c = local.command(ours.to_str().unwrap());
                    c.args(["--compress=none", "--no-sync-snap", "--quiet"])
                        .args(lab.ssh_args())
                        .args(extra);
                    c.arg("src/big").arg(format!("{}:{target}", lab.dest()));
                    c
                };
                let s = measure(cmd);
                secs.push(s.secs);
                cpu.push(s.cpu);
                far.zfs(&["destroy", "-r", &target]).ok();
            }
            rows.push((kind.to_string(), median(secs), median(cpu)));
        }
        tables.push((rate.to_string(), size.to_string(), bytes, rows));
    }
    tables
}

fn tree_noop(spec: &str) -> Vec<(String, f64, usize)> {
    let (n, s) = spec.split_once('x').expect("--tree NxM");
    let h = Host::new(&["src", "dst"]);
    let st = Command::new(syncoid_rsync_testkit::fakezfs_bin())
        .args(["fixture", "mirror-tree", "src/root", "dst/root", n, s])
        .envs(h.envs())
        .status()
        .unwrap();
    assert!(st.success());
    let ours = sibling("syncoid-rsync");
    let mut out = Vec::new();
    // One no-op run: wall time and the zfs calls it made.
    let mut row = |name: &str, bin: &Path, ssh: &[String], target: &str, extra: &[&str]| {
        let before = h.log().len();
        let mut c = h.command(bin.to_str().unwrap());
        c.args(ssh)
            .args(["-r", "--no-sync-snap", "--quiet", "src/root", target])
            .args(extra);
        let sample = measure(c);
        out.push((name.to_string(), sample.secs, h.log().len() - before));
    };
    row("syncoid-rsync", &ours, &[], "dst/root", &[]);
    row(
        "syncoid-rsync --rsync",
        &ours,
        &[],
        "dst/root",
        &["--rsync"],
    );
    row("syncoid 2.1", &syncoid_bin(), &[], "dst/root", &[]);
    // The same tree with the target behind the loopback sshd: what a
    // per-dataset ssh call would cost shows here.
    let sshd = Sshd::start(&h);
    let ssh = sshd.syncoid_args();
    let far = "root@127.0.0.1:dst/root";
    row("syncoid-rsync, target over ssh", &ours, &ssh, far, &[]);
    row(
        "syncoid-rsync --rsync, target over ssh",
        &ours,
        &ssh,
        far,
        &["--rsync"],
    );
    out
}

/// What one of our processes used, from its `SYNCOID_RSYNC_RUSAGE_LOG` line.
struct Usage {
    role: String,
    max_rss_kib: u64,
    minor_faults: u64,
    cpu_ms: u64,
}

/// Peak RSS, page faults and CPU of each part of a local `--rsync`
/// transfer of `size`.
fn memory(size: &str) -> Vec<Usage> {
    let h = Host::new(&["src", "dst"]);
    big(&h, size);
    let log = h.dir().join("rusage.log");
    let mut c = h.command(sibling("syncoid-rsync").to_str().unwrap());
    c.args(["--rsync", "--no-sync-snap", "--quiet", "src/big", "dst/big"])
        .env("SYNCOID_RSYNC_RUSAGE_LOG", &log);
    measure(c);
    std::thread::sleep(std::time::Duration::from_secs(1));
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(2)
                .filter_map(|f| f.parse().ok())
                .collect();
            Some(Usage {
                role: l.split_whitespace().next()?.to_string(),
                max_rss_kib: *v.first()?,
                minor_faults: *v.get(1)?,
                cpu_ms: v.get(2)? + v.get(3)?,
            })
        })
        .collect()
}

/// `--profile SIZE`: one --rsync push through the loopback sshd with
/// --debug (timestamped lines show where the time goes).
fn profile(size: &str) {
    let local = Host::new(&["src"]);
    let far = Host::new(&["far"]);
    // PROFILE_LINK=RATE: the far host behind a netlab link capped at RATE
    // instead of the loopback sshd.
    let rate = std::env::var("PROFILE_LINK").unwrap_or_default();
    let (sshd, lab);
    let (ssh_args, dest) = if rate.is_empty() {
        sshd = Sshd::start(&far);
        (sshd.syncoid_args(), "root@127.0.0.1".to_string())
    } else {
        lab = Netlab::up(&far, 30);
        lab.slow(&rate);
        (lab.ssh_args(), lab.dest())
    };
    big(&local, size);
    let extra: Vec<String> = std::env::var("PROFILE_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut c = local.command(sibling("syncoid-rsync").to_str().unwrap());
    c.args(ssh_args)
        .args(["--no-sync-snap", "--debug"])
        .args(extra)
        .arg("src/big")
        .arg(format!("{dest}:far/big"));
    let t = Instant::now();
    let out = c.output().unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!("wall {:.2}s", t.elapsed().as_secs_f64());
}

/// Prints `rows` (the raw pipe first) as markdown table lines that start
/// with `lead`'s columns: wall time, rate, CPU and the ratio to the raw
/// pipe.
fn print_rows(lead: &str, bytes: u64, rows: &Rows) {
    let raw = rows[0].1;
    for (what, secs, cpu) in rows {
        println!(
            "| {lead} | {what} | {secs:.2} | {:.1} | {cpu:.1} | {:.3} |",
            bytes as f64 / secs / 1e6,
            raw / secs
        );
    }
}

fn main() {
    let p = arg("--profile", "");
    if !p.is_empty() {
        profile(&p);
        return;
    }
    let spec = arg("--many", "none");
    if spec != "none" {
        let (n, ms) = spec.split_once(':').unwrap_or((&spec, "0"));
        let n: usize = n.parse().expect("--many N[:MS]");
        let ms: f64 = ms.parse().expect("--many N[:MS]");
        println!("### {n} datasets, each with one new 1 MB snapshot, target behind the loopback sshd, round trip {ms} ms (one run each)\n");
        println!("| tool | wall s | CPU s | s per dataset |");
        println!("|---|---|---|---|");
        for (what, secs, cpu) in many(n, ms) {
            println!("| {what} | {secs:.2} | {cpu:.1} | {:.3} |", secs / n as f64);
        }
        return;
    }
    let spec = arg("--many-rtt", "none");
    if spec != "none" {
        println!("### Many datasets in full through a round trip ({spec}: RTT ms, datasets, size each; one run each)\n");
        println!("| tool | wall s | CPU s |");
        println!("|---|---|---|");
        for (what, secs, cpu) in many_rtt(&spec) {
            println!("| {what} | {secs:.2} | {cpu:.1} |");
        }
        return;
    }
    let sizes: Vec<String> = arg("--sizes", "1G,4G")
        .split(',')
        .map(String::from)
        .collect();
    let ciphers: Vec<String> = arg("--ciphers", "default,aes128-gcm@openssh.com")
        .split(',')
        .map(String::from)
        .collect();
    let reps: usize = arg("--reps", "3").parse().expect("--reps N");
    let tree = arg("--tree", "1000x50");
    println!("### Throughput (median of {reps}; ratio = raw ssh pipe time / tool time)\n");
    println!("| size | cipher | pipeline | wall s | MB/s | CPU s | ratio to raw ssh |");
    println!("|---|---|---|---|---|---|---|");
    if arg("--sizes", "") != "none" {
        for (size, cipher, rows) in throughput(&sizes, reps, &ciphers) {
            let raw = rows[1].secs;
            for r in &rows {
                println!(
                    "| {size} | {cipher} | {} | {:.2} | {:.0} | {:.1} | {:.3} |",
                    r.what,
                    r.secs,
                    r.bytes as f64 / r.secs / 1e6,
                    r.cpu,
                    raw / r.secs
                );
            }
        }
    }
    let spec = arg("--link", "none");
    if spec != "none" {
        println!("\n### Through a rate-capped netlab link (median of {reps}; ratio = raw time / tool time)\n");
        println!("| link | size | pipeline | wall s | MB/s | CPU s | ratio to raw ssh |");
        println!("|---|---|---|---|---|---|---|");
        for (rate, size, bytes, rows) in link(&spec, reps) {
            print_rows(&format!("{rate} | {size}"), bytes, &rows);
        }
    }
    let spec = arg("--rtt", "none");
    if spec != "none" {
        println!("\n### Through a round trip (latency relay on loopback; median of {reps}; ratio = raw time / tool time)\n");
        println!("| RTT ms | pipeline | wall s | MB/s | CPU s | ratio to raw ssh |");
        println!("|---|---|---|---|---|---|");
        let (bytes, tables) = rtt(&spec, reps);
        for (ms, rows) in tables {
            print_rows(&ms.to_string(), bytes, &rows);
        }
    }
    let out = arg("--outage", "none");
    if out != "none" {
        println!(
            "\n### --rsync outages (500 MB push at 32 MiB/s through netlab, cut after 100 MB)\n"
        );
        println!("| fault | heal -> data flowing s | sent twice on the wire | bytes fed twice |");
        println!("|---|---|---|---|");
        for (what, flowing, resent, twice) in outage(&out) {
            println!("| {what} | {flowing:.1} | {resent} | {twice} |");
        }
    }
    let mem = arg("--memory", "1G,8G");
    if mem != "none" {
        println!(
            "\n### Peak RSS of each part, local --rsync (defaults: 1 MiB chunks, 32 MiB spool)\n"
        );
        println!("| stream | part | peak RSS MiB | minor page faults | CPU s |");
        println!("|---|---|---|---|---|");
        for size in mem.split(',') {
            let parts = memory(size);
            for (role, name) in [
                ("coordinator", "coordinator"),
                ("send", "sender agent"),
                ("receive", "receiver agent"),
            ] {
                match parts.iter().find(|u| u.role == role) {
                    Some(u) => println!(
                        "| {size} | {name} | {:.1} | {} | {:.2} |",
                        u.max_rss_kib as f64 / 1024.0,
                        u.minor_faults,
                        u.cpu_ms as f64 / 1000.0
                    ),
                    None => println!("| {size} | {name} | ? | ? | ? |"),
                }
            }
        }
    }
    if tree != "none" {
        println!("\n### Recursive no-op run over {tree} (datasets x snapshots)\n");
        println!("| tool | wall s | zfs/zpool calls |");
        println!("|---|---|---|");
        for (name, secs, calls) in tree_noop(&tree) {
            println!("| {name} | {secs:.2} | {calls} |");
        }
    }
}
