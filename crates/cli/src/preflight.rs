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
use syncoid_rsync_core::shell;

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
    /// Where a copy of the binary could go (`session::bin_bases`), each
    /// with what the probe found: "ok" (then the KiB free, if known),
    /// "noexec" or "notwritable".
    bases: Vec<(String, String, Option<u64>)>,
    /// Copies of the binary there that name their run: (owner, dir).
    copies: Vec<(String, String)>,
    /// `--agent-path`: Ok(what its `--version` printed), or Err(its exit
    /// status and what it printed).
    at_path: Option<Result<String, String>>,
    sudo_ok: bool,
    zfs_error: Option<String>,
    mem_kib: Option<u64>,
}

/// An agent of an earlier run, alive on a host at pre-flight.
pub type LiveAgent = crate::rsync::session::Listed;

/// What a host runs as the agents' binary (`--rsync`).
#[derive(Debug, Clone, PartialEq)]
pub enum Binary {
    /// This machine: the running executable.
    Own,
    /// A binary of this version on the host: the installed one, or the
    /// one `--agent-path` names.
    At(String),
    /// None there: a copy of this one goes into a fresh private directory
    /// in this one, which lets programs run and has room for it.
    CopyInto(String),
}

/// This version, as `syncoid-rsync --version` prints it.
pub fn our_version() -> String {
    format!("syncoid-rsync {}", env!("CARGO_PKG_VERSION"))
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
/// `--rsync`: what to ask a host about the agents' binary.
#[derive(Clone, Copy)]
struct Agents<'a> {
    /// `--agent-path` for this host.
    at_path: Option<&'a str>,
    /// KiB a copy of the binary needs.
    copy_kib: u64,
}

fn probe(
    host: &Host,
    programs: &[&str],
    sudo: bool,
    rsync: Option<Agents>,
    extras: &[&str],
) -> Result<Probe, String> {
    let mut script = crate::gather::have_script(programs);
    // sudo is probed with a zfs command, the only kind we run through it:
    // a backup user's rule often allows zfs and nothing else (not `true`).
    let zfs = if sudo { "sudo -n zfs" } else { "zfs" };
    script.push_str(&format!(
        "if command -v zfs >/dev/null 2>&1; then e=$({zfs} list -H -o name -d 0 2>&1 >/dev/null) && echo zfs ok || echo zfs error $e; fi; "
    ));
    if let Some(agents) = rsync {
        script.push_str(
            "echo arch $(uname -m); \
             v=$(syncoid-rsync --version 2>/dev/null) && echo ours $v; \
             t=${SYNCOID_RSYNC_TMP:-/tmp}; [ -d \"$t\" ] && [ -w \"$t\" ] && echo tmp ok; \
             awk '/^MemAvailable:/ {print \"mem \" $2}' /proc/meminfo 2>/dev/null; ",
        );
        if let Some(p) = agents.at_path {
            // One line of what it printed, whatever happened.
            script.push_str(&format!(
                "if v=$({} --version 2>&1); then echo \"atpath ok $(printf %s \"$v\" | tr '\\n' ' ')\"; \
                 else echo \"atpath failed $?: $(printf %s \"$v\" | tr '\\n' ' ')\"; fi; ",
                shell::quote(p)
            ));
        } else {
            script.push_str(&bases_script(agents.copy_kib));
        }
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
            "tmp" => p.tmp_writable = true,
            "base" => {
                // "base STATUS KIB DIR"
                let mut w = rest.splitn(3, ' ');
                if let (Some(st), Some(kib), Some(dir)) = (w.next(), w.next(), w.next()) {
                    p.bases
                        .push((dir.to_string(), st.to_string(), kib.parse().ok()));
                }
            }
            "copy" => {
                if let Some((owner, dir)) = rest.split_once(' ') {
                    p.copies.push((owner.to_string(), dir.to_string()));
                }
            }
            "atpath" => {
                p.at_path = Some(match rest.split_once(' ') {
                    Some(("ok", v)) => Ok(v.trim().to_string()),
                    _ => Err(rest.trim_start_matches("failed").trim().to_string()),
                });
            }
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

/// For each place a copy of the binary may go, in order: whether it is
/// writable, lets a program run (a noexec mount does not) and has
/// `need_kib` free; and the copies of earlier runs there that name their
/// run (ours, real directories), for `leftovers`.
fn bases_script(need_kib: u64) -> String {
    format!(
        "for b in {bases}; do \
           [ -n \"$b\" ] && [ -d \"$b\" ] || continue; \
           if [ ! -w \"$b\" ]; then echo \"base notwritable - $b\"; continue; fi; \
           f=\"$b/.syncoid-rsync-exec-$$\"; \
           if {{ printf '#!/bin/sh\\nexit 0\\n' > \"$f\" && chmod 700 \"$f\" && \"$f\"; }} 2>/dev/null; \
           then k=$(df -Pk \"$b\" 2>/dev/null | awk 'NR==2 {{print $4}}'); \
             if [ -n \"$k\" ] && [ \"$k\" -lt {need_kib} ]; then echo \"base full $k $b\"; else echo \"base ok ${{k:--}} $b\"; fi; \
           else echo \"base noexec - $b\"; fi; rm -f \"$f\"; \
           for c in \"$b\"/{prefix}????????; do \
             [ -d \"$c\" ] && [ ! -L \"$c\" ] && [ -O \"$c\" ] && [ -f \"$c/{owner}\" ] || continue; \
             echo \"copy $(head -c 100 \"$c/{owner}\" | tr -cd '0-9a-f:') $c\"; \
           done; \
         done; ",
        bases = crate::rsync::session::BIN_BASES_SH,
        prefix = crate::rsync::session::BIN_PREFIX,
        owner = crate::rsync::session::BIN_OWNER,
    )
}

/// The binary `host` runs as the agents' (`--rsync`), from its probe; Err:
/// why there is none, with what to do.
fn binary(host: &Host, p: &Probe, at_path: Option<&str>) -> Result<Binary, String> {
    let ours = our_version();
    if !host.is_remote() {
        return Ok(Binary::Own);
    }
    if let Some(path) = at_path {
        return match &p.at_path {
            Some(Ok(v)) if *v == ours => Ok(Binary::At(path.to_string())),
            Some(Ok(v)) => Err(format!(
                "{path} --version says '{}', not '{ours}': both hosts' agents must be this version",
                short(v)
            )),
            Some(Err(e)) => Err(format!(
                "{path} cannot run there (--agent-path): exit status {}",
                short(e)
            )),
            None => Err(format!("{path} was not checked there (--agent-path)")),
        };
    }
    if p.ours.as_deref() == Some(ours.as_str()) {
        return Ok(Binary::At("syncoid-rsync".into()));
    }
    let install = format!(
        "install {ours} there (the static build or the .deb: see the README), or name one with --agent-path"
    );
    if !p.arch.is_empty() && p.arch != std::env::consts::ARCH {
        return Err(format!(
            "runs {}, this syncoid-rsync is built for {}: {install} (build one with `cargo build --release --target {}-unknown-linux-gnu`)",
            p.arch,
            std::env::consts::ARCH,
            p.arch
        ));
    }
    if let Some((dir, _, _)) = p.bases.iter().find(|(_, st, _)| st == "ok") {
        return Ok(Binary::CopyInto(dir.clone()));
    }
    let tried: Vec<String> = p
        .bases
        .iter()
        .map(|(dir, st, kib)| match st.as_str() {
            "noexec" => format!("{dir}: programs cannot run there (mounted noexec?)"),
            "full" => format!("{dir}: {} MiB free", kib.unwrap_or(0) / 1024),
            _ => format!("{dir}: not writable"),
        })
        .collect();
    Err(format!(
        "no directory where the copy of syncoid-rsync it lacks could run ({}): {install}, or allow exec in one of them",
        tried.join("; ")
    ))
}

/// At most 300 characters of what a program printed.
fn short(said: &str) -> String {
    match said.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &said[..i]),
        None => said.to_string(),
    }
}

/// Copies of the binary that runs of this machine made and could not
/// remove (their link was down at the end): the run is gone (its pid), and
/// no live agent runs from the copy.
fn gone_runs_copies(copies: &[(String, String)], live: &[LiveAgent]) -> Vec<String> {
    let domain = &crate::rsync::lock::owner().domain;
    copies
        .iter()
        .filter(|(owner, dir)| {
            let Some((d, pid)) = owner.split_once(':') else {
                return false;
            };
            let pid: u32 = pid.parse().unwrap_or(0);
            d == domain
                && pid != 0
                && pid != std::process::id()
                && !crate::rsync::session::alive(pid)
                && !live
                    .iter()
                    .any(|a| a.marker.bin.as_deref() == Some(dir.as_str()))
        })
        .map(|(_, dir)| dir.clone())
        .collect()
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
    /// `--rsync`: the agents' binary on each host (by label).
    pub binaries: BTreeMap<String, Binary>,
    /// `--rsync`: copies of the binary that runs of this machine which are
    /// gone left on a host (its link was down when they ended): to remove.
    pub leftovers: Vec<(Host, String)>,
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
    type Probed<'a> = (&'a str, &'a Host, bool, Vec<&'a str>, Option<&'a str>);
    let (src_path, dst_path) = (s.agent_paths.0.as_deref(), s.agent_paths.1.as_deref());
    let hosts: Vec<Probed> = if same_host {
        vec![(
            "source and target",
            &s.source_host,
            s.source_sudo || s.target_sudo,
            vec![src_list, dst_list],
            src_path.or(dst_path),
        )]
    } else {
        vec![
            (
                "source",
                &s.source_host,
                s.source_sudo,
                vec![src_list],
                src_path,
            ),
            (
                "target",
                &s.target_host,
                s.target_sudo,
                vec![dst_list],
                dst_path,
            ),
        ]
    };
    let mut problems = Vec::new();
    let mut probes = Vec::new();
    let mut binaries = BTreeMap::new();
    let mut leftovers = Vec::new();
    let mut agents = BTreeMap::new();
    // What a copy of this binary needs: its size and a MiB to spare.
    let copy_kib = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map_or(16 << 10, |m| m.len() / 1024 + 1024);
    // Two hosts are probed at once (two ssh handshakes overlap).
    let probe_one = |(_, host, sudo, extras, at_path): &Probed| {
        let rsync = s.args.rsync.then_some(Agents {
            at_path: *at_path,
            copy_kib,
        });
        probe(host, &wanted, *sudo, rsync, extras)
    };
    let results = match hosts.as_slice() {
        [a, b] => {
            let (rb, ra) = at_once(|| probe_one(b), || probe_one(a));
            vec![ra, rb]
        }
        _ => hosts.iter().map(probe_one).collect(),
    };
    let mut listed = Vec::new();
    for ((role, host, sudo, _, at_path), result) in hosts.iter().zip(results) {
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
                    marker: m,
                    alive: true,
                })
            })
            .collect::<Vec<_>>();
        if s.args.rsync {
            leftovers.extend(
                gone_runs_copies(&p.copies, &live)
                    .into_iter()
                    .map(|d| ((*host).clone(), d)),
            );
        }
        agents.insert(host.label(), live);
        listed.extend(p.extra.iter().cloned());
        if s.args.rsync {
            if !p.tmp_writable {
                problems.push(format!(
                    "{who}: the agents' directory (/tmp, or $SYNCOID_RSYNC_TMP) is not writable"
                ));
            }
            match binary(host, &p, *at_path) {
                Ok(b) => {
                    binaries.insert(host.label(), b);
                }
                Err(e) => problems.push(format!("{who}: {e}")),
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
            binaries,
            leftovers,
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
        binaries,
        leftovers,
        agents,
        listed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::SshConfig;
    use std::sync::Arc;

    fn remote() -> Host {
        Host::Remote {
            dest: "backup".into(),
            ssh: Arc::new(SshConfig {
                base: Vec::new(),
                user: Vec::new(),
                again: None,
                control_dir: tempfile::tempdir().unwrap(),
            }),
        }
    }

    fn base(dir: &str, status: &str) -> (String, String, Option<u64>) {
        (dir.into(), status.into(), Some(2048))
    }

    /// The agents' binary: this one locally; --agent-path's when it is this
    /// version; the installed one; else a copy in the first place where it
    /// can run; else a refusal that names every place tried.
    #[test]
    fn the_agents_binary_is_chosen_in_order() {
        let host = remote();
        let mut p = Probe {
            arch: std::env::consts::ARCH.into(),
            ..Probe::default()
        };
        assert_eq!(binary(&Host::Local, &p, Some("/x")), Ok(Binary::Own));

        p.at_path = Some(Ok(our_version()));
        assert_eq!(
            binary(&host, &p, Some("/opt/sr")),
            Ok(Binary::At("/opt/sr".into()))
        );
        p.at_path = Some(Ok("syncoid-rsync 0.0.1".into()));
        let e = binary(&host, &p, Some("/opt/sr")).unwrap_err();
        assert!(e.contains("says 'syncoid-rsync 0.0.1'"), "{e}");
        p.at_path = Some(Err("126: Exec format error".into()));
        let e = binary(&host, &p, Some("/opt/sr")).unwrap_err();
        assert!(
            e.contains("cannot run there (--agent-path): exit status 126"),
            "{e}"
        );

        p.ours = Some(our_version());
        assert_eq!(
            binary(&host, &p, None),
            Ok(Binary::At("syncoid-rsync".into()))
        );

        p.ours = None;
        p.bases = vec![base("/tmp", "noexec"), base("/run/user/0", "ok")];
        assert_eq!(
            binary(&host, &p, None),
            Ok(Binary::CopyInto("/run/user/0".into()))
        );
        p.bases = vec![
            base("/tmp", "noexec"),
            base("/run/user/0", "notwritable"),
            base("/root", "full"),
        ];
        let e = binary(&host, &p, None).unwrap_err();
        assert!(
            e.contains("/tmp: programs cannot run there")
                && e.contains("/run/user/0: not writable")
                && e.contains("/root: 2 MiB free")
                && e.contains("--agent-path"),
            "{e}"
        );

        p.arch = "aarch64".into();
        let e = binary(&host, &p, None).unwrap_err();
        assert!(
            e.contains("runs aarch64") && e.contains("--target aarch64-unknown-linux-gnu"),
            "{e}"
        );
    }

    /// A copy is a gone run's when it names this machine's runs and a pid
    /// that is not running, and no live agent runs from it.
    #[test]
    fn copies_of_gone_runs_of_this_machine_are_found() {
        let domain = &crate::rsync::lock::owner().domain;
        // A pid far above any pid_max: not running.
        let copies = vec![
            (
                format!("{domain}:4999999"),
                "/tmp/syncoid-rsync-bin.aaaaaaaa".to_string(),
            ),
            (
                format!("{domain}:{}", std::process::id()),
                "/tmp/syncoid-rsync-bin.bbbbbbbb".into(),
            ),
            (
                "0123456789abcdef01234567:4999999".into(),
                "/tmp/syncoid-rsync-bin.cccccccc".into(),
            ),
            (
                format!("{domain}:4999998"),
                "/tmp/syncoid-rsync-bin.dddddddd".into(),
            ),
            (
                format!("{domain}:1"),
                "/tmp/syncoid-rsync-bin.eeeeeeee".into(),
            ),
        ];
        let live = vec![LiveAgent {
            dir: "/tmp/syncoid-rsync-0123456789abcdef".into(),
            marker: Marker {
                pid: 1,
                role: syncoid_rsync_core::wire::Role::Receiver,
                key: "k".into(),
                created: 0,
                bin: Some("/tmp/syncoid-rsync-bin.dddddddd".into()),
                wire: 4,
            },
            alive: true,
        }];
        assert_eq!(
            gone_runs_copies(&copies, &live),
            vec!["/tmp/syncoid-rsync-bin.aaaaaaaa".to_string()]
        );
    }
}
