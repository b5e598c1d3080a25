//! Stage two of the command line: validated settings. Everything the user
//! typed is checked here, before any host is contacted; a bad value is a
//! clear message and exit status 64, with nothing changed anywhere.

use std::sync::Arc;

use crate::args::Args;
use crate::host::{Host, SshConfig};
use syncoid_rsync_core::argv::{parse_direct, parse_zfs_opts, Compress, Direct, ZfsOpt};
use syncoid_rsync_core::location::{self, Location};
use syncoid_rsync_core::syncsnap;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub struct Settings {
    pub args: Args,
    pub source: Location,
    pub target: Location,
    pub source_host: Host,
    pub target_host: Host,
    pub compress: Compress,
    pub direct: Option<Direct>,
    pub chunk_size: usize,
    pub spool_size: usize,
    /// --rsync: the binary to run on the (source, target) host when it is
    /// remote (`--agent-path` and its per-side forms).
    pub agent_paths: (Option<String>, Option<String>),
    pub inactivity: std::time::Duration,
    /// --rsync: the link timeout and what follows from it.
    pub timing: syncoid_rsync_core::session::coordinator::Timing,
    /// --rsync: connections per agent for one stream (`--streams`).
    pub streams: usize,
    /// Datasets replicated at once (`--jobs`).
    pub jobs: usize,
    /// --rsync: zstd level of chunks (0: raw) and bandwidth limits in
    /// bytes per second (0: none).
    pub rsync_level: i32,
    pub source_rate: u64,
    pub target_rate: u64,
    pub send_opts: Vec<ZfsOpt>,
    pub recv_opts: Vec<ZfsOpt>,
    pub exclude_datasets: Vec<Pattern>,
    pub exclude_snaps: Vec<Pattern>,
    pub include_snaps: Vec<Pattern>,
    pub hostname: String,
    /// Run zfs through sudo on the source / target.
    pub source_sudo: bool,
    pub target_sudo: bool,
    /// Things worth saying about the command line that do not stop it
    /// (printed as INFO lines once output is set up).
    pub notes: Vec<String>,
}

/// A user's regular expression in Perl's syntax, as syncoid matches it
/// (look-ahead and look-behind, back-references, lazy quantifiers).
#[derive(Debug)]
pub struct Pattern(fancy_regex::Regex);

impl Pattern {
    /// An expression that gives up on a name (backtracking past the
    /// engine's limit) matches nothing: a pathological pattern never
    /// excludes or includes by accident.
    pub fn is_match(&self, name: &str) -> bool {
        self.0.is_match(name).unwrap_or(false)
    }
}

fn regexes(v: &[String], what: &str) -> Result<Vec<Pattern>, UsageError> {
    v.iter()
        .map(|r| {
            fancy_regex::Regex::new(r).map(Pattern).map_err(|e| {
                UsageError(format!(
                    "--{what} '{r}' is not a valid regular expression: {e}"
                ))
            })
        })
        .collect()
}

/// ssh's own liveness check for --rsync connections (the master's and each
/// reconnection's own): a keepalive after 10 s without a word from the
/// server, the connection given up after three unanswered.
pub const SSH_KEEPALIVE: [&str; 4] = [
    "-o",
    "ServerAliveInterval=10",
    "-o",
    "ServerAliveCountMax=3",
];

/// The binary `--agent-path` (both sides) or `--source-agent-path` /
/// `--target-agent-path` name for each remote side.
fn agent_paths(
    a: &Args,
    source_remote: bool,
    target_remote: bool,
) -> Result<(Option<String>, Option<String>), UsageError> {
    let given = [
        ("agent-path", &a.agent_path),
        ("source-agent-path", &a.source_agent_path),
        ("target-agent-path", &a.target_agent_path),
    ];
    for (name, p) in given {
        let Some(p) = p else { continue };
        if !a.rsync {
            return Err(UsageError(format!(
                "--{name} is for --rsync (the agents' binary)"
            )));
        }
        if !p.starts_with('/') || p.contains('\n') {
            return Err(UsageError(format!(
                "--{name} '{p}' must be an absolute path on the remote host"
            )));
        }
    }
    let side = |own: &Option<String>, name: &str, remote: bool, role: &str| match (own, remote) {
        (Some(_), false) => Err(UsageError(format!(
            "--{name}: the {role} is this machine, which runs this very binary"
        ))),
        (Some(p), true) => Ok(Some(p.clone())),
        (None, true) => Ok(a.agent_path.clone()),
        (None, false) => Ok(None),
    };
    let source = side(
        &a.source_agent_path,
        "source-agent-path",
        source_remote,
        "source",
    )?;
    let target = side(
        &a.target_agent_path,
        "target-agent-path",
        target_remote,
        "target",
    )?;
    if a.agent_path.is_some() && !source_remote && !target_remote {
        return Err(UsageError(
            "--agent-path names the binary for remote hosts, and both are this machine".into(),
        ));
    }
    Ok((source, target))
}

fn ssh_base(a: &Args, inactivity: std::time::Duration) -> Result<SshConfig, UsageError> {
    let dir = crate::host::control_dir().map_err(|e| {
        UsageError(format!(
            "cannot create a private ssh control directory: {e}"
        ))
    })?;
    // The user's own options first, so theirs win over ours below (ssh
    // takes the first value of an option).
    let mut user = Vec::new();
    if let Some(f) = &a.sshconfig {
        user.extend(["-F".to_string(), f.clone()]);
    }
    if let Some(c) = &a.sshcipher {
        user.extend(["-c".to_string(), c.clone()]);
    }
    for o in &a.sshoption {
        user.extend(["-o".to_string(), o.clone()]);
    }
    if let Some(p) = a.sshport {
        user.extend(["-p".to_string(), p.to_string()]);
    }
    if let Some(k) = &a.sshkey {
        user.extend(["-i".to_string(), k.clone()]);
    }
    let mut base = user.clone();
    // A host that is down, or accepts TCP and never answers, must not hang
    // a cron run (TCP's own connect timeout is about 2 min, and a silent
    // server none at all); for --rsync, a new master after an outage must
    // not wait that long while the link is still down.
    base.extend(["-o".to_string(), "ConnectTimeout=10".to_string()]);
    if a.rsync {
        // The master carries the first connection to each agent and every
        // zfs call around the transfer. Without a keepalive, a link that
        // dies while ssh has nothing it may send (the far pool busy, so
        // the channel window is used up) is noticed only at our stall
        // time, and a control call can hang until TCP gives up (~15 min).
        // A keepalive meets a reset link at once and a blackholed one
        // within 30-40 s; --rsync reconnects either way.
        base.extend(SSH_KEEPALIVE.iter().map(|o| o.to_string()));
    }
    base.extend([
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        format!("ControlPath={}/%C", dir.path().display()),
        "-o".into(),
        "ControlPersist=60".into(),
        "-o".into(),
        "BatchMode=yes".into(),
    ]);
    let again = a.rsync.then(|| {
        let out = crate::output::Out {
            quiet: a.quiet,
            debug: a.debug,
            json: a.json,
        };
        crate::again::Policy::new(inactivity, out)
    });
    Ok(SshConfig {
        base,
        user,
        again,
        control_dir: dir,
    })
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `local_pools` is asked only when an argument could be a pool name with
/// a colon (it runs `zfs list` locally).
pub fn settings(args: Args, local_pools: &dyn Fn() -> Vec<String>) -> Result<Settings, UsageError> {
    let a = &args;
    let raw_src = a
        .source
        .clone()
        .ok_or_else(|| UsageError("missing SOURCE".into()))?;
    let raw_dst = a
        .target
        .clone()
        .ok_or_else(|| UsageError("missing TARGET".into()))?;
    let pools = if location::is_ambiguous(&raw_src) || location::is_ambiguous(&raw_dst) {
        local_pools()
    } else {
        Vec::new()
    };
    let source =
        location::parse(&raw_src, &pools).map_err(|e| UsageError(format!("SOURCE {e}")))?;
    let target =
        location::parse(&raw_dst, &pools).map_err(|e| UsageError(format!("TARGET {e}")))?;
    same_place(&source, &target, a.recursive)?;
    if let Some(id) = &a.identifier {
        if !syncsnap::valid_identifier(id) {
            return Err(UsageError(format!(
                "--identifier '{id}' may only contain letters, digits and - _ : ."
            )));
        }
    }
    let compress = match &a.compress {
        None => Compress::Lzo,
        Some(c) => Compress::parse(c).ok_or_else(|| {
            UsageError(format!(
                "--compress '{c}' is not one of {}",
                Compress::NAMES.join(", ")
            ))
        })?,
    };
    let parse_opts = |o: &Option<String>, what: &str| -> Result<Vec<ZfsOpt>, UsageError> {
        match o {
            None => Ok(Vec::new()),
            Some(line) => parse_zfs_opts(line).ok_or_else(|| {
                UsageError(format!(
                    "--{what} '{line}' is not valid (syncoid syntax: \"Lc e\", \"o prop=value\")"
                ))
            }),
        }
    };
    let size = |v: &str, what: &str, max: u64| -> Result<usize, UsageError> {
        syncoid_rsync_core::units::parse_size(v)
            .filter(|n| *n >= 4096 && *n <= max)
            .map(|n| n as usize)
            .ok_or_else(|| {
                UsageError(format!(
                    "--{what} '{v}' must be a size from 4K to {}",
                    syncoid_rsync_core::units::nicenum(max)
                ))
            })
    };
    let chunk_size = size(&a.chunk_size, "chunk-size", 16 << 20)?;
    let spool_size = size(&a.spool_size, "spool-size", 1 << 40)?;
    let inactivity = parse_duration(&a.inactivity_timeout).ok_or_else(|| {
        UsageError(format!(
            "--inactivity-timeout '{}' is not a duration (90s, 30m, 2h, or seconds)",
            a.inactivity_timeout
        ))
    })?;
    let link_timeout = parse_duration(&a.link_timeout)
        .filter(|d| (1..=3600).contains(&d.as_secs()))
        .ok_or_else(|| {
            UsageError(format!(
                "--link-timeout '{}' is not a duration from 1s to 1h (10s, 2m, or seconds)",
                a.link_timeout
            ))
        })?;
    let timing = syncoid_rsync_core::session::coordinator::Timing::new(link_timeout, inactivity);
    let streams = a
        .streams
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| {
            UsageError(format!(
                "--streams '{}' is not a number of connections from 1 to 16",
                a.streams
            ))
        })?;
    let jobs = a
        .jobs
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| {
            UsageError(format!(
                "--jobs '{}' is not a number of datasets at once from 1 to 64",
                a.jobs
            ))
        })?;
    if streams > 1 && !a.rsync {
        return Err(UsageError(
            "--streams needs --rsync (standard mode sends over one ssh pipe)".into(),
        ));
    }
    // Both modes check every value here, before any host is asked: a bad
    // rate must not surface as mbuffer's error after a sync snapshot.
    let rate = |v: &Option<String>, what: &str| -> Result<u64, UsageError> {
        match v {
            Some(r) => syncoid_rsync_core::units::parse_size(r)
                .filter(|n| *n >= 1024)
                .ok_or_else(|| {
                    UsageError(format!(
                        "--{what} '{r}' is not a rate of at least 1K bytes per second (for example 500K, 10M)"
                    ))
                }),
            None => Ok(0),
        }
    };
    if !valid_mbuffer_size(&a.mbuffer_size) {
        return Err(UsageError(format!(
            "--mbuffer-size '{}' is not a size of at least 4K (for example 16M, 1G) or a share of memory (5%)",
            a.mbuffer_size
        )));
    }
    let source_rate = rate(&a.source_bwlimit, "source-bwlimit")?;
    let target_rate = rate(&a.target_bwlimit, "target-bwlimit")?;
    let (source_rate, target_rate) = if a.rsync {
        (source_rate, target_rate)
    } else {
        // Standard mode hands the user's text to mbuffer.
        (0, 0)
    };
    let rsync_level = if a.compress.is_none() {
        1
    } else {
        compress.zstd_level()
    };
    if a.rsync && a.insecure_direct_connection.is_some() {
        return Err(UsageError(
            "--rsync and --insecure-direct-connection cannot be combined".into(),
        ));
    }
    let send_opts = parse_opts(&a.sendoptions, "sendoptions")?;
    let recv_opts = parse_opts(&a.recvoptions, "recvoptions")?;
    if a.recursive && send_opts.iter().any(|o| o.letter == 'R') {
        return Err(UsageError(
            "zfs send -R (--sendoptions) and --recursive cannot be combined".into(),
        ));
    }
    let agent_paths = agent_paths(a, source.remote.is_some(), target.remote.is_some())?;
    if let Some(m) = &a.metrics_file {
        let p = std::path::Path::new(m);
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        if m.is_empty() || p.is_dir() || !dir.unwrap_or(std::path::Path::new(".")).is_dir() {
            return Err(UsageError(format!(
                "--metrics-file '{m}' must name a file in an existing directory"
            )));
        }
    }
    let mut notes = Vec::new();
    if a.atomic_sync_snap && a.no_sync_snap {
        return Err(UsageError(
            "--atomic-sync-snap takes sync snapshots, which --no-sync-snap leaves out: use one of them".into(),
        ));
    }
    if a.create_bookmark && !a.no_sync_snap {
        // syncoid ignores it silently; a cron line that has it must not
        // stop replicating.
        notes.push("--create-bookmark does nothing without --no-sync-snap (as in syncoid): no bookmark is made".into());
    }
    let direct = match &a.insecure_direct_connection {
        None => None,
        Some(d) => {
            if source.remote.is_some() == target.remote.is_some() {
                return Err(UsageError(
                    "--insecure-direct-connection needs exactly one remote side (it cannot relay between two remote hosts, nor be used locally)".into(),
                ));
            }
            Some(parse_direct(d).ok_or_else(|| {
                UsageError(format!("--insecure-direct-connection '{d}' is not IP:PORT[,IP:PORT[,TIMEOUT[,mbuffer]]]"))
            })?)
        }
    };
    let excl = if a.exclude_datasets.is_empty() {
        &a.exclude
    } else {
        &a.exclude_datasets
    };
    let exclude_datasets = regexes(excl, "exclude-datasets")?;
    let exclude_snaps = regexes(&a.exclude_snaps, "exclude-snaps")?;
    let include_snaps = regexes(&a.include_snaps, "include-snaps")?;
    let needs_ssh = source.remote.is_some() || target.remote.is_some();
    let ssh = if needs_ssh {
        Some(Arc::new(ssh_base(a, inactivity)?))
    } else {
        None
    };
    let host_of = |l: &Location| match (&l.remote, &ssh) {
        (Some(r), Some(s)) => Host::Remote {
            dest: r.destination(),
            ssh: s.clone(),
        },
        _ => Host::Local,
    };
    let sudo = |l: &Location| {
        !a.no_privilege_elevation
            && match &l.remote {
                Some(r) => r.user.as_deref() != Some("root"),
                None => !is_root(),
            }
    };
    Ok(Settings {
        source_host: host_of(&source),
        target_host: host_of(&target),
        source_sudo: sudo(&source),
        target_sudo: sudo(&target),
        source,
        target,
        compress,
        direct,
        chunk_size,
        spool_size,
        agent_paths,
        inactivity,
        timing,
        streams,
        jobs,
        rsync_level,
        source_rate,
        target_rate,
        send_opts,
        recv_opts,
        exclude_datasets,
        exclude_snaps,
        include_snaps,
        hostname: hostname(),
        notes,
        args,
    })
}

/// SOURCE and TARGET on one host must not overlap: a receive into the
/// source itself (forced, it would discard the source's newest changes), a
/// recursive run that would replicate the target into itself, or a target
/// that holds the source (`--force-delete` would destroy the source).
/// Hosts are compared by name; the same machine under two names is not
/// recognised.
fn same_place(source: &Location, target: &Location, recursive: bool) -> Result<(), UsageError> {
    let host = |l: &Location| l.remote.as_ref().map(|r| r.host.clone());
    if host(source) != host(target) {
        return Ok(());
    }
    let (s, t) = (&source.dataset, &target.dataset);
    let why = if s == t {
        "SOURCE and TARGET are the same dataset"
    } else if recursive && t.is_within(s) {
        "TARGET is inside SOURCE: --recursive would replicate the target into itself"
    } else if s.is_within(t) {
        "SOURCE is inside TARGET: receiving into TARGET could roll back or destroy the source"
    } else {
        return Ok(());
    };
    Err(UsageError(format!(
        "{why} ({source} -> {target}); nothing was done"
    )))
}

/// mbuffer's `-m`: a size, or a percentage of memory (`5%`).
fn valid_mbuffer_size(v: &str) -> bool {
    match v.strip_suffix('%') {
        Some(p) => p.parse::<u8>().is_ok_and(|p| (1..=90).contains(&p)),
        None => syncoid_rsync_core::units::parse_size(v).is_some_and(|n| n >= 4096),
    }
}

/// `90s`, `30m`, `2h`, `1d` or plain seconds.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    (n > 0).then(|| std::time::Duration::from_secs(n * mult))
}

impl Settings {
    /// Ends the ssh masters and removes the control directory
    /// (`host::close_all`).
    pub fn close_ssh(&self) {
        crate::host::close_all(&[self.source_host.clone(), self.target_host.clone()]);
    }

    /// syncoid's snapisincluded: excludes win over includes.
    pub fn snap_included(&self, name: &str) -> bool {
        if self.exclude_snaps.iter().any(|r| r.is_match(name)) {
            return false;
        }
        self.include_snaps.is_empty() || self.include_snaps.iter().any(|r| r.is_match(name))
    }

    pub fn sync_prefix(&self) -> String {
        syncsnap::prefix(self.args.identifier.as_deref(), &self.hostname)
    }

    /// The hold tag: `syncoid_[identifier_]hostname`, as syncoid names it.
    pub fn hold_tag(&self) -> String {
        self.sync_prefix()
    }
}
