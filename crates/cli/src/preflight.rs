//! Pre-flight: before any snapshot is taken or byte moved, every host
//! involved is probed in one shell call each (reachable over ssh; zfs
//! present and working, through sudo where it is needed; the optional
//! tools the chosen options use; for `--rsync` a usable agent binary, a
//! writable directory for its session and memory for its spool, and the
//! live agents of earlier runs). The same call lists the side's datasets
//! and snapshots (`gather::Listing`), so a remote side costs one ssh
//! session before planning. Every problem is reported at once, per host,
//! with what to install or change.
//! Blocking problems end the run with exit status 69; missing optional
//! tools are warnings (the run goes on without them, as syncoid does), and
//! `--no-command-checks` skips that part.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Settings;
use crate::host::{at_once, Host};
use crate::output::{exit, Out};
use crate::replicate::{fatal, Fatal};
use crate::rsync::session::{valid_id, Marker, PREFIX};
use std::path::Path;
use syncoid_rsync_core::argv::Tools;

/// What one host has, from one shell call.
#[derive(Debug, Default)]
struct Probe {
    found: BTreeSet<String>,
    arch: String,
    ours: Option<String>,
    /// `--rsync`: live agents' session dirs with their markers.
    agents: Vec<(String, String)>,
    /// stdout and stderr of each extra script.
    extra: Vec<(String, String)>,
    tmp_writable: bool,
    /// A program in the agents' directory can run (not a noexec mount).
    tmp_exec: bool,
    sudo_ok: bool,
    zfs_error: Option<String>,
    mem_kib: Option<u64>,
}

/// An agent of an earlier run, alive on a host at pre-flight.
#[derive(Debug, Clone)]
pub struct LiveAgent {
    pub dir: String,
    /// "send" or "receive".
    pub role: String,
    /// Its transfer (`coordinator::key`).
    pub key: String,
    /// The wire protocol it speaks (0: from before markers said).
    pub wire: u16,
}

/// Starts each extra script's output, on stdout and on stderr.
const SECTION: &str = "#syncoid-rsync-section";
const SECTION_OUT: &str = "\n#syncoid-rsync-section\n";
const SECTION_ERR: &str = "#syncoid-rsync-section\n";

/// Our session dirs under the agents' directory `$t` whose agent runs:
/// `agent MARKER DIR` each (the marker is one line of JSON without
/// spaces). The same rules as `session::list`: a real directory (not a
/// symlink), ours, private, marked, its agent running and not a zombie.
/// Read by the shell, so finding none needs no binary of ours on the host;
/// whatever is then done to a session (attach, stop) goes through our
/// binary, which checks the directory again.
const LIVE_AGENTS: &str = "for d in \"$t\"/syncoid-rsync-????????????????; do \
     m=\"$d/.syncoid-rsync-session\"; \
     [ -d \"$d\" ] && [ ! -L \"$d\" ] && [ -O \"$d\" ] && [ -f \"$m\" ] && [ ! -L \"$m\" ] || continue; \
     case $(ls -ld \"$d\") in drwx------*) ;; *) continue ;; esac; \
     p=$(sed -n 's/.*\"pid\":\\([0-9][0-9]*\\).*/\\1/p' \"$m\"); \
     [ -n \"$p\" ] && kill -0 \"$p\" 2>/dev/null || continue; \
     [ \"$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1)\" = Z ] && continue; \
     echo \"agent $(cat \"$m\") $d\"; \
     done; ";

/// sudo's words when it would prompt (`-n` refuses instead).
fn sudo_wants_a_password(err: &str) -> bool {
    err.starts_with("sudo:")
        && ["password is required", "terminal is required", "askpass"]
            .iter()
            .any(|w| err.contains(w))
}

/// `rsync`: also what the agents need (our binary and architecture, their
/// directory, memory), which the standard mode does not ask for.
/// `extras`: more scripts to run in the same call (the side's listing);
/// their stdout and stderr come back in `Probe::extra`, in order.
fn probe(
    host: &Host,
    programs: &[&str],
    sudo: bool,
    rsync: bool,
    extras: &[&str],
) -> Result<Probe, String> {
    let mut script = crate::gather::have_script(programs);
    // sudo is probed with a zfs command, the only kind we run through it:
    // a backup user's rule often allows zfs and nothing else (not `true`).
    let zfs = if sudo { "sudo -n zfs" } else { "zfs" };
    script.push_str(&format!(
        "if command -v zfs >/dev/null 2>&1; then e=$({zfs} list -H -o name -d 0 2>&1 >/dev/null) && echo zfs ok || echo zfs error $e; fi; "
    ));
    if rsync {
        script.push_str(
            "echo arch $(uname -m); \
             v=$(syncoid-rsync --version 2>/dev/null) && echo ours $v; \
             t=${SYNCOID_RSYNC_TMP:-/tmp}; [ -d \"$t\" ] && [ -w \"$t\" ] && echo tmp ok; \
             f=\"$t/.syncoid-rsync-exec-$$\"; printf '#!/bin/sh\\nexit 0\\n' > \"$f\" 2>/dev/null \
             && chmod 700 \"$f\" && \"$f\" 2>/dev/null && echo tmp exec; rm -f \"$f\"; \
             awk '/^MemAvailable:/ {print \"mem \" $2}' /proc/meminfo 2>/dev/null; ",
        );
        script.push_str(LIVE_AGENTS);
    }
    script.push_str("true");
    for extra in extras {
        script.push_str(&format!(
            "; printf '\\n{SECTION}\\n'; echo '{SECTION}' >&2; {extra}"
        ));
    }
    script.push_str("; true");
    let argv = vec!["sh".to_string(), "-c".to_string(), script];
    let out = host.run_read(&argv).map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // ssh's own words; our probe script is no help to the reader.
        let status = match out.status.code() {
            Some(255) => "ssh failed".to_string(),
            Some(c) => format!("the probe exited with status {c}"),
            None => "ssh was killed by a signal".to_string(),
        };
        return Err(format!("{status}: {}", stderr.trim()));
    }
    let mut outs = stdout.split(SECTION_OUT);
    let mut errs = stderr.split(SECTION_ERR);
    let own = outs.next().unwrap_or("");
    let _ = errs.next();
    let mut p = Probe::default();
    for _ in extras {
        let o = outs.next().unwrap_or("").to_string();
        let e = errs.next().unwrap_or("").to_string();
        p.extra.push((o, e));
    }
    for line in own.lines() {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "have" => {
                p.found.insert(rest.to_string());
            }
            "arch" => p.arch = rest.trim().to_string(),
            "ours" => p.ours = Some(rest.trim().to_string()),
            "tmp" if rest == "exec" => p.tmp_exec = true,
            "tmp" => p.tmp_writable = true,
            "zfs" if rest == "ok" => p.sudo_ok = true,
            "zfs" => {
                let e = rest.trim_start_matches("error").trim().to_string();
                p.sudo_ok = !sudo_wants_a_password(&e);
                p.zfs_error = Some(e);
            }
            "mem" => p.mem_kib = rest.trim().parse().ok(),
            "agent" => {
                if let Some((marker, dir)) = rest.split_once(' ') {
                    p.agents.push((dir.to_string(), marker.to_string()));
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

/// The Debian package that provides `program`.
fn package(program: &str) -> &str {
    match program {
        "lzop" => "lzop",
        "xz" => "xz-utils",
        "zstd" | "zstdmt" => "zstd",
        "zfs" => "zfsutils-linux",
        other => other,
    }
}

/// What pre-flight found, for the run.
pub struct Report {
    pub tools: Tools,
    /// `--rsync`: labels of the hosts where this very version of
    /// syncoid-rsync is installed (elsewhere it is copied in).
    pub installed: BTreeSet<String>,
    /// `--rsync`: the live agents on each host (by label).
    pub agents: BTreeMap<String, Vec<LiveAgent>>,
    /// What the source's and the target's listing scripts printed
    /// (stdout, stderr).
    pub listed: [(String, String); 2],
}

/// Checks every host; returns the optional tools found. `listings`: the
/// (source, target) scripts run in the same call as each side's probe;
/// what they printed is in `Report::listed`.
pub fn run(s: &Settings, out: &Out, listings: (&str, &str)) -> Result<Report, Fatal> {
    // Local to local, syncoid's pipeline compresses nothing and buffers
    // once, on the source side: a compressor is never used, and a missing
    // mbuffer matters only when it should apply a bandwidth limit.
    let local_only = !s.source_host.is_remote() && !s.target_host.is_remote();
    let comp = if s.args.rsync || local_only {
        None
    } else {
        s.compress.program()
    };
    let optional = !s.args.no_command_checks && !s.args.rsync;
    let mut wanted = vec!["zfs"];
    if optional {
        wanted.push("mbuffer");
        wanted.extend(comp);
    }
    let same_host = s.source_host.label() == s.target_host.label();
    let (src_list, dst_list) = listings;
    type Probed<'a> = (&'a str, &'a Host, bool, Vec<&'a str>);
    let hosts: Vec<Probed> = if same_host {
        vec![(
            "source and target",
            &s.source_host,
            s.source_sudo || s.target_sudo,
            vec![src_list, dst_list],
        )]
    } else {
        vec![
            ("source", &s.source_host, s.source_sudo, vec![src_list]),
            ("target", &s.target_host, s.target_sudo, vec![dst_list]),
        ]
    };
    let mut problems = Vec::new();
    let mut probes = Vec::new();
    let mut installed = BTreeSet::new();
    let mut agents = BTreeMap::new();
    // Two hosts are probed at once (two ssh handshakes overlap).
    let probe_one =
        |(_, host, sudo, extras): &Probed| probe(host, &wanted, *sudo, s.args.rsync, extras);
    let results = match hosts.as_slice() {
        [a, b] => {
            let (rb, ra) = at_once(|| probe_one(b), || probe_one(a));
            vec![ra, rb]
        }
        _ => hosts.iter().map(probe_one).collect(),
    };
    let mut listed = Vec::new();
    for ((role, host, sudo, _), result) in hosts.iter().zip(results) {
        let who = format!("{role} ({})", host.label());
        let p = match result {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!(
                    "{who}: cannot run commands there: {}\n      check the host name, user, port and key (try: {})",
                    e.trim_end().replace('\n', "\n      "),
                    host.try_by_hand()
                ));
                continue;
            }
        };
        if !p.found.contains("zfs") {
            problems.push(format!(
                "{who}: zfs not found in PATH: install OpenZFS (Debian: apt install zfsutils-linux)"
            ));
        } else if *sudo && !p.sudo_ok {
            problems.push(format!(
                "{who}: zfs needs root there and sudo asks for a password: allow passwordless sudo for zfs, connect as root, or delegate with `zfs allow` and use --no-privilege-elevation"
            ));
        } else if let Some(e) = &p.zfs_error {
            problems.push(format!(
                "{who}: zfs does not work: {e}\n      is the zfs kernel module loaded (modprobe zfs), and may this user use it?"
            ));
        }
        let live = p
            .agents
            .iter()
            .filter_map(|(dir, marker)| {
                let m: Marker = serde_json::from_str(marker).ok()?;
                let id = Path::new(dir).file_name()?.to_str()?.strip_prefix(PREFIX)?;
                valid_id(id).then(|| LiveAgent {
                    dir: dir.clone(),
                    role: m.role,
                    key: m.key,
                    wire: m.wire,
                })
            })
            .collect();
        agents.insert(host.label(), live);
        listed.extend(p.extra.iter().cloned());
        let want = format!("syncoid-rsync {}", env!("CARGO_PKG_VERSION"));
        if p.ours.as_deref() == Some(want.as_str()) {
            installed.insert(host.label());
        }
        if s.args.rsync {
            if !p.tmp_writable {
                problems.push(format!(
                    "{who}: the agents' directory (/tmp, or $SYNCOID_RSYNC_TMP) is not writable"
                ));
            }
            let copied = host.is_remote() && p.ours.as_deref() != Some(want.as_str());
            if copied && p.tmp_writable && !p.tmp_exec {
                problems.push(format!(
                    "{who}: programs cannot run from the agents' directory (/tmp, or $SYNCOID_RSYNC_TMP: mounted noexec?), \
                     where the copy of syncoid-rsync it lacks would go: install syncoid-rsync {} there \
                     (then nothing is copied), or allow exec on that directory",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            if copied && !p.arch.is_empty() && p.arch != std::env::consts::ARCH {
                problems.push(format!(
                    "{who}: runs {}, this syncoid-rsync is built for {}: install syncoid-rsync {} there",
                    p.arch,
                    std::env::consts::ARCH,
                    env!("CARGO_PKG_VERSION")
                ));
            }
            let need = (s.spool_size + 2 * s.chunk_size) as u64 + (32 << 20);
            if let Some(kib) = p.mem_kib {
                if kib * 1024 < need {
                    problems.push(format!(
                        "{who}: {} MiB of memory available, the --rsync agents need about {} MiB: lower --spool-size",
                        kib / 1024,
                        need >> 20
                    ));
                }
            }
        }
        probes.push((role.to_string(), host.label(), p));
    }
    if !problems.is_empty() {
        return Err(fatal(
            exit::UNAVAILABLE,
            format!("pre-flight failed:\n  {}", problems.join("\n  ")),
        ));
    }
    // Every host answered, so both listings ran: (source, target).
    let mut listed = listed.into_iter();
    let listed = [
        listed.next().unwrap_or_default(),
        listed.next().unwrap_or_default(),
    ];
    if !optional {
        return Ok(Report {
            tools: Tools {
                source_mbuffer: true,
                target_mbuffer: true,
                local_mbuffer: true,
                local_pv: true,
                compress: true,
            },
            installed,
            agents,
            listed,
        });
    }
    let has = |role: &str, prog: &str| {
        probes
            .iter()
            .any(|(r, _, p)| r.contains(role) && p.found.contains(prog))
    };
    let local = crate::gather::available(&Host::Local, &["pv", "mbuffer", comp.unwrap_or("true")])
        .unwrap_or_default();
    let both_remote = s.source_host.is_remote() && s.target_host.is_remote();
    let mut compress = comp.is_some();
    let mut hints = Vec::new();
    if let Some(c) = comp {
        for role in ["source", "target"] {
            if !has(role, c) {
                out.warn(&format!(
                    "{c} not available on {role} - sync will continue without compression."
                ));
                hints.push((role, c));
                compress = false;
            }
        }
        if both_remote && !local.contains(c) {
            out.warn(&format!(
                "{c} not available on local machine - sync will continue without compression."
            ));
            hints.push(("local machine", c));
            compress = false;
        }
    }
    let tools = Tools {
        source_mbuffer: has("source", "mbuffer"),
        target_mbuffer: has("target", "mbuffer"),
        local_mbuffer: local.contains("mbuffer"),
        local_pv: local.contains("pv"),
        compress,
    };
    let limited = s.args.source_bwlimit.is_some() || s.args.target_bwlimit.is_some();
    if local_only {
        if !tools.source_mbuffer && limited {
            out.warn("mbuffer not available on local machine - sync will continue without the bandwidth limit.");
            hints.push(("source", "mbuffer"));
        }
    } else if !tools.source_mbuffer {
        out.warn("mbuffer not available on source - sync will continue without source buffering.");
        hints.push(("source", "mbuffer"));
    }
    if !tools.target_mbuffer && !local_only {
        out.warn("mbuffer not available on target - sync will continue without target buffering.");
        hints.push(("target", "mbuffer"));
    }
    if !hints.is_empty() {
        let host_of = |role: &str| {
            probes
                .iter()
                .find(|(r, _, _)| r.contains(role))
                .map(|(_, l, _)| l.clone())
                .unwrap_or_else(|| role.to_string())
        };
        let mut lines: Vec<String> = hints
            .iter()
            .map(|(role, prog)| {
                let host = if *role == "local machine" {
                    Host::Local.label()
                } else {
                    host_of(role)
                };
                format!("{host}: apt install {}", package(prog))
            })
            .collect();
        lines.dedup();
        out.warn(&format!(
            "pre-flight: optional tools missing (--no-command-checks skips this check); to install them:\n    {}",
            lines.join("\n    ")
        ));
    }
    Ok(Report {
        tools,
        installed,
        agents,
        listed,
    })
}
