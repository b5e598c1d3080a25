//! Helpers for tests of `--rsync` agents on emulated hosts: what the
//! emulator's receives were fed, agent processes, spawning and waiting.
#![allow(dead_code)]

use super::common::{bin, wait_until};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use syncoid_rsync_testkit::{Host, Netlab, Sshd};

/// An ssh in front of the real one: `script` installed as `ssh` in a
/// directory of `local`'s named `name`, with a `state` directory beside
/// it for the script's marks. Returns that directory and a PATH that finds
/// the wrapper first.
pub fn wrapped_ssh(local: &Host, name: &str, script: &str) -> (std::path::PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let wrap = local.dir().join(name);
    std::fs::create_dir_all(wrap.join("state")).unwrap();
    std::fs::write(wrap.join("ssh"), script).unwrap();
    std::fs::set_permissions(wrap.join("ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", wrap.display(), local.path_env());
    (wrap, path)
}

/// Payload byte ranges fed to each `zfs receive` (from the emulator log).
pub fn fed(h: &Host) -> Vec<(String, u64, u64)> {
    h.log()
        .iter()
        .filter(|e| e["argv"][0] == "receive")
        .flat_map(|e| e["fed"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            (
                f["snapshot"].as_str().unwrap().to_string(),
                f["from"].as_u64().unwrap(),
                f["to"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Every snapshot's payload was fed once: ranges are contiguous, no overlap.
pub fn assert_fed_once(h: &Host) {
    let mut by_snap: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
    for (s, a, b) in fed(h) {
        by_snap.entry(s).or_default().push((a, b));
    }
    for (s, ranges) in by_snap {
        let mut at = 0;
        for (a, b) in &ranges {
            assert_eq!(*a, at, "{s}: fed {ranges:?} - a byte twice or a gap");
            at = *b;
        }
    }
}

/// A push of src/data from `local` to `dst` on `far` ended as it must: the
/// data identical, one zfs receive fed each byte once, no session dir or
/// copy of the binary left on either host.
pub fn assert_one_clean_push(local: &Host, far: &Host, dst: &str) {
    assert_eq!(far.files(dst), local.files("src/data"));
    let receives = far
        .log()
        .iter()
        .filter(|e| e["argv"][0] == "receive")
        .count();
    assert_eq!(receives, 1, "one zfs receive took the whole stream");
    assert_fed_once(far);
    assert!(
        far.tmp_entries().is_empty() && local.tmp_entries().is_empty(),
        "left behind: {:?} {:?}",
        far.tmp_entries(),
        local.tmp_entries()
    );
}

/// A transfer of src/data on `src` to `dst` on `far` that an agent's loss
/// cut in two ended as it must: the rest was resumed from the target's
/// token (`stdout` says so), the data is identical, the first receive kept
/// what it took and the second took the rest, each byte once, and no
/// agent or session dir is left.
pub fn assert_resumed_from_token(src: &Host, far: &Host, dst: &str, stdout: &str) {
    assert!(
        stdout.contains("Resuming interrupted zfs send/receive"),
        "{stdout}"
    );
    assert_eq!(far.files(dst), src.files("src/data"));
    let f = fed(far);
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f[0].2 > 0, "the first receive kept {} bytes", f[0].2);
    assert_fed_once(far);
    for h in [src, far] {
        assert!(
            agent_pids(h).is_empty() && h.tmp_entries().is_empty(),
            "left behind: {:?}",
            h.tmp_entries()
        );
    }
}

pub fn synthetic(h: &Host, fs: &str, size: &str) {
    h.zfs(&["create", "-o", &format!("fakezfs:synthetic={size}"), fs])
        .ok();
    h.write(fs, "file.txt", b"real file next to synthetic data");
    h.zfs(&["snapshot", &format!("{fs}@s1")]).ok();
}

/// A coordinator started by a test; killed (by its pid) if the test
/// fails before `finish`, so it cannot start agents or receives that
/// disturb the next test.
pub struct Spawned(Option<Child>);

impl Spawned {
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.as_mut().expect("running").try_wait()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn spawn(h: &Host, args: &[&str], env: &[(&str, &str)]) -> Spawned {
    Spawned(Some(
        h.command(bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

/// Waits for the coordinator (at most two minutes: a hang is a failure
/// with its output, not a stuck suite).
pub fn finish(mut spawned: Spawned) -> (i32, String, String) {
    let mut child = spawned.0.take().expect("running");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A failed run's output for an assertion message: its CRITICAL and
/// WARNING lines first (a CI log cut in the middle still shows why), then
/// all of stdout and stderr.
pub fn told(out: &str, err: &str) -> String {
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("CRITICAL") || l.contains("WARNING"))
        .collect();
    format!("{}\n---\n{out}\n{err}", problems.join("\n"))
}

/// The coordinator's ssh connections to its remote agents: each runs
/// `syncoid-rsync agent bridge DIR` on the far end, or, the first one,
/// `syncoid-rsync agent start ... --attach` (started and connected in one).
pub fn agent_links(pid: u32) -> Vec<i32> {
    let mut links = children_matching(pid, "agent bridge");
    links.extend(children_matching(pid, "--attach"));
    links
}

/// pids of the processes whose parent is `pid` and whose command line
/// contains `needle`.
pub fn children_matching(pid: u32, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid: u32 = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if ppid == pid
            && String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
        {
            out.push(p);
        }
    }
    out
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: signalling a process this test started (or its descendant).
    unsafe {
        libc_kill(pid, sig);
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Agents' pids from the markers in a host's tmp.
pub fn agent_pids(h: &Host) -> Vec<(String, i32)> {
    agents_on(h).into_iter().map(|(_, r, p)| (r, p)).collect()
}

/// The session dir and pid of the `role` agent on `h`.
pub fn agent(h: &Host, role: &str) -> (std::path::PathBuf, i32) {
    agents_on(h)
        .into_iter()
        .find(|(_, r, _)| r == role)
        .map(|(d, _, p)| (d, p))
        .unwrap_or_else(|| panic!("no {role} agent on the host"))
}

/// The session dirs on `h` with their agents' role and pid (markers).
fn agents_on(h: &Host) -> Vec<(std::path::PathBuf, String, i32)> {
    h.tmp_entries()
        .iter()
        .map(|d| h.tmp().join(d))
        .filter_map(|d| {
            let m = std::fs::read_to_string(d.join(".syncoid-rsync-session")).ok()?;
            let v = serde_json::from_str::<serde_json::Value>(&m).ok()?;
            let role = v["role"].as_str().unwrap_or("").to_string();
            Some((d, role, v["pid"].as_i64().unwrap_or(0) as i32))
        })
        .collect()
}

/// Ends, on drop, any agent still running from this host's session dirs,
/// so a failing test does not leave them to disturb the next one.
pub struct Reaper<'a>(pub &'a Host);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for d in self.0.tmp_entries() {
                let log = std::fs::read_to_string(self.0.tmp().join(&d).join("agent.log"))
                    .unwrap_or_default();
                eprintln!("--- agent log {d}:\n{log}");
            }
        }
        for (_, pid) in agent_pids(self.0) {
            kill(pid, 9);
        }
    }
}

/// The binary was copied to a fresh private dir on the remote host, and
/// that dir was removed at the end.
pub fn assert_copy_removed(stdout: &str) {
    let copied = stdout
        .split("copied syncoid-rsync to root@127.0.0.1:")
        .nth(1)
        .unwrap_or_else(|| panic!("no copy reported:\n{stdout}"))
        .lines()
        .next()
        .unwrap();
    assert!(copied.contains("/syncoid-rsync-bin."), "{copied}");
    assert!(
        !std::path::Path::new(copied).exists(),
        "{copied} was not removed"
    );
}

/// The target's resume token, if the target exists and has one.
pub fn token(h: &Host, fs: &str) -> String {
    h.zfs(&["get", "-H", "-o", "value", "receive_resume_token", fs])
        .stdout
        .trim()
        .to_string()
}

/// Stream bytes the `zfs receive` running on `h` has read so far (its
/// read(2) count, from /proc), 0 if none runs: a transfer's progress as it
/// happens, where the emulator's log has it only once a receive ended.
pub fn receiving_now(h: &Host) -> u64 {
    let root = format!("FAKEZFS_ROOT={}", h.root.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|p| {
            let argv = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let mut argv = argv.split(|b| *b == 0);
            let zfs = argv.next().is_some_and(|a| a.ends_with(b"zfs"));
            let env = std::fs::read(p.path().join("environ")).unwrap_or_default();
            zfs && argv.next() == Some(b"receive".as_slice())
                && env.split(|b| *b == 0).any(|v| v == root.as_bytes())
        })
        .filter_map(|p| {
            let io = std::fs::read_to_string(p.path().join("io")).ok()?;
            let rchar = io.lines().find_map(|l| l.strip_prefix("rchar: "))?;
            rchar.trim().parse::<u64>().ok()
        })
        .sum()
}

/// Waits until the receive running on `h` has read `bytes`.
pub fn wait_receiving(h: &Host, bytes: u64) {
    wait_until(&format!("{bytes} bytes received"), 60, || {
        receiving_now(h) >= bytes
    });
}

/// Payload bytes the emulator's receives have taken.
pub fn received_bytes(h: &Host) -> u64 {
    fed(h).iter().map(|(_, a, b)| b - a).sum()
}

/// Runs `args` on `h` with zfs send at `rate`, lets zfs receive take
/// `bytes` once both agents are up, then SIGKILLs the coordinator (the
/// agents live on). Returns the agents' (role, pid) as they were at the
/// kill.
pub fn start_then_kill_coordinator(
    h: &Host,
    args: &[&str],
    rate: &str,
    bytes: u64,
) -> Vec<(String, i32)> {
    let child = spawn(h, args, &[("FAKEZFS_SEND_RATE", rate)]);
    wait_until("both agents", 40, || agent_pids(h).len() == 2);
    wait_receiving(h, bytes);
    let pids = agent_pids(h);
    kill(child.id() as i32, 9);
    let _ = finish(child);
    pids
}

/// Whether a coordinator has connected to the agent on `h` (its log says
/// so): the agent's start is over.
pub fn receiver_connected(h: &Host) -> bool {
    agent_log(h).is_some_and(|l| l.contains("coordinator connected"))
}

/// The log of the (one) live agent on `h`, if any.
pub fn agent_log(h: &Host) -> Option<String> {
    std::fs::read_dir(h.tmp())
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("syncoid-rsync-")
        })
        .find_map(|e| std::fs::read_to_string(e.path().join("agent.log")).ok())
}

/// Starts a push of `src/data` (`size` of synthetic data, which the
/// emulator sends at 8 MB/s) from `local` to `far/data` through `sshd`,
/// with `--rsync --chunk-size=256K --no-sync-snap` and `opts`; returns
/// once the receiver is connected and took `bytes`.
pub fn push_through(
    sshd: &Sshd,
    (local, far): (&Host, &Host),
    size: &str,
    opts: &[&str],
    bytes: u64,
) -> Spawned {
    synthetic(local, "src/data", size);
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = vec!["--rsync", "--chunk-size=256K", "--no-sync-snap"];
    args.extend(opts);
    args.extend(ssh.iter().map(String::as_str));
    args.extend(["src/data", "root@127.0.0.1:far/data"]);
    let child = spawn(local, &args, &[("FAKEZFS_SEND_RATE", "8M")]);
    wait_until("the receiver connected", 40, || receiver_connected(far));
    wait_receiving(far, bytes);
    child
}

/// Connections the receiver's agent on `h` admitted so far (its log).
pub fn admitted(h: &Host) -> usize {
    agent_log(h)
        .unwrap_or_default()
        .matches("coordinator connected")
        .count()
}

/// Kills one of the coordinator's (`pid`) `width` connections to the
/// receiver's agent on `far`, once all of them are up: the `nth` of them
/// (modulo); returns once a new one was admitted in its place.
pub fn kill_one_connection(pid: u32, far: &Host, width: usize, nth: usize) {
    wait_until("all connections up", 60, || agent_links(pid).len() == width);
    let before = admitted(far);
    let links = agent_links(pid);
    let victim = links[nth % links.len()];
    kill(victim, 9);
    wait_until("the killed connection made again", 60, || {
        let now = agent_links(pid);
        now.len() == width && !now.contains(&victim) && admitted(far) > before
    });
}

/// Blackholes the netlab link for `secs`, heals it, and returns once
/// data flows across it again.
pub fn blackhole_for(lab: &Netlab, secs: u64) {
    lab.cut("blackhole");
    std::thread::sleep(Duration::from_secs(secs));
    let at_heal = lab.far_rx_bytes();
    lab.heal();
    wait_until("data flowing after the heal", 60, || {
        lab.far_rx_bytes() > at_heal + (1 << 20)
    });
}
