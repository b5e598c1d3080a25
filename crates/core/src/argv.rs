//! Command lines as data: zfs send/receive and the pipeline around them
//! (compression, mbuffer, pv) for each of the four topologies, built the
//! way syncoid builds them. The executor runs these vectors; remote
//! segments become one string through `shell::join`, the only place a
//! command line is quoted.

/// Where a pipeline segment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Source,
    Local,
    Target,
}

/// A run of commands piped together on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub at: Where,
    pub stages: Vec<Vec<String>>,
}

/// The compressors of `--compress`, with their decompressors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    None,
    Gzip,
    PigzFast,
    PigzSlow,
    ZstdFast,
    ZstdmtFast,
    ZstdSlow,
    ZstdmtSlow,
    Xz,
    Lzo,
    Lz4,
}

impl Compress {
    pub const NAMES: &'static [&'static str] = &[
        "gzip",
        "pigz-fast",
        "pigz-slow",
        "zstd-fast",
        "zstdmt-fast",
        "zstd-slow",
        "zstdmt-slow",
        "xz",
        "lzo",
        "lz4",
        "none",
    ];

    pub fn parse(s: &str) -> Option<Compress> {
        Some(match s {
            "none" => Compress::None,
            "gzip" => Compress::Gzip,
            "pigz-fast" => Compress::PigzFast,
            "pigz-slow" => Compress::PigzSlow,
            "zstd-fast" => Compress::ZstdFast,
            "zstdmt-fast" => Compress::ZstdmtFast,
            "zstd-slow" => Compress::ZstdSlow,
            "zstdmt-slow" => Compress::ZstdmtSlow,
            "xz" => Compress::Xz,
            "lzo" | "default" => Compress::Lzo,
            "lz4" => Compress::Lz4,
            _ => return None,
        })
    }

    /// The zstd level `--rsync` compresses chunks with in process (0: none).
    /// The fast compressors map to level 1 (3 for zstd-fast, as in
    /// syncoid's `zstd -3`), the slow ones to 9 (pigz-slow) or 19
    /// (zstd-slow, xz). With no --compress at all, `--rsync` uses level 1.
    pub fn zstd_level(self) -> i32 {
        match self {
            Compress::None => 0,
            Compress::ZstdFast | Compress::ZstdmtFast => 3,
            Compress::PigzSlow => 9,
            Compress::ZstdSlow | Compress::ZstdmtSlow | Compress::Xz => 19,
            Compress::Gzip | Compress::PigzFast | Compress::Lzo | Compress::Lz4 => 1,
        }
    }

    /// The program that must exist on both ends.
    pub fn program(self) -> Option<&'static str> {
        match self {
            Compress::None => None,
            Compress::Gzip => Some("gzip"),
            Compress::PigzFast | Compress::PigzSlow => Some("pigz"),
            Compress::ZstdFast | Compress::ZstdSlow => Some("zstd"),
            Compress::ZstdmtFast | Compress::ZstdmtSlow => Some("zstdmt"),
            Compress::Xz => Some("xz"),
            Compress::Lzo => Some("lzop"),
            Compress::Lz4 => Some("lz4"),
        }
    }

    /// The decompressing program (`zcat` for gzip, as syncoid).
    pub fn decompress_program(self) -> Option<&'static str> {
        match self {
            Compress::Gzip => Some("zcat"),
            other => other.program(),
        }
    }

    pub fn compress_argv(self) -> Vec<String> {
        let args: &[&str] = match self {
            Compress::None => return vec![],
            Compress::Gzip | Compress::PigzFast | Compress::ZstdFast | Compress::ZstdmtFast => {
                &["-3"]
            }
            Compress::PigzSlow => &["-9"],
            Compress::ZstdSlow | Compress::ZstdmtSlow => &["-19"],
            Compress::Xz | Compress::Lzo | Compress::Lz4 => &[],
        };
        let mut v = vec![self.program().unwrap_or_default().to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    pub fn decompress_argv(self) -> Vec<String> {
        let args: &[&str] = match self {
            Compress::None => return vec![],
            Compress::Gzip => &[],
            Compress::Xz => &["-d"],
            Compress::Lzo => &["-dfc"],
            _ => &["-dc"],
        };
        let mut v = vec![self.decompress_program().unwrap_or_default().to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }
}

/// One option of `--sendoptions`/`--recvoptions`: a letter and, for
/// `o`, `x` and `X`, its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZfsOpt {
    pub letter: char,
    pub value: Option<String>,
}

/// Parses syncoid's option syntax: `"Lc e"` is `-L -c -e`; `"o a=b x c"` is
/// `-o a=b -x c`. `None` when a value-taking letter is not last in its word.
pub fn parse_zfs_opts(line: &str) -> Option<Vec<ZfsOpt>> {
    let mut out = Vec::new();
    let mut pending: Option<char> = None;
    for word in line.split(' ').filter(|w| !w.is_empty()) {
        if let Some(letter) = pending.take() {
            out.push(ZfsOpt {
                letter,
                value: Some(word.to_string()),
            });
            continue;
        }
        for c in word.chars() {
            if pending.is_some() {
                return None;
            }
            if matches!(c, 'o' | 'x' | 'X') {
                pending = Some(c);
            } else if c.is_ascii_alphabetic() {
                out.push(ZfsOpt {
                    letter: c,
                    value: None,
                });
            } else {
                return None;
            }
        }
    }
    if pending.is_some() {
        return None;
    }
    Some(out)
}

fn opts_argv(opts: &[ZfsOpt], allowed: &str) -> Vec<String> {
    let mut v = Vec::new();
    for o in opts.iter().filter(|o| allowed.contains(o.letter)) {
        v.push(format!("-{}", o.letter));
        if let Some(val) = &o.value {
            v.push(val.clone());
        }
    }
    v
}

/// What a send sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendWhat {
    Full {
        snap: String,
    },
    /// `-i`/`-I FROM TO`; FROM may be `fs@snap` or `fs#mark`.
    Incremental {
        from: String,
        to: String,
        intermediates: bool,
    },
    Resume {
        token: String,
    },
}

fn zfs(elevate: bool) -> Vec<String> {
    let mut v = Vec::new();
    if elevate {
        v.push("sudo".to_string());
    }
    v.push("zfs".to_string());
    v
}

/// `zfs send` with the user's send options filtered as syncoid filters them.
pub fn send(what: &SendWhat, user_opts: &[ZfsOpt], elevate: bool) -> Vec<String> {
    let mut v = zfs(elevate);
    v.push("send".into());
    match what {
        SendWhat::Full { snap } => {
            v.extend(opts_argv(user_opts, "LPVRXbcehpsvw"));
            v.push(snap.clone());
        }
        SendWhat::Incremental {
            from,
            to,
            intermediates,
        } => {
            let allowed = if from.contains('#') {
                "LVcew"
            } else {
                "LPVRXbcehpsvw"
            };
            v.extend(opts_argv(user_opts, allowed));
            v.push(if *intermediates { "-I" } else { "-i" }.into());
            v.push(from.clone());
            v.push(to.clone());
        }
        SendWhat::Resume { token } => {
            v.extend(opts_argv(user_opts, "PVev"));
            v.push("-t".into());
            v.push(token.clone());
        }
    }
    v
}

/// `zfs send -nvP` for the same stream: the size estimate.
pub fn estimate(what: &SendWhat, user_opts: &[ZfsOpt], elevate: bool) -> Vec<String> {
    let allowed = if matches!(what, SendWhat::Resume { .. }) {
        "Ve"
    } else {
        "LVRXbcehpsw"
    };
    let filtered: Vec<ZfsOpt> = user_opts
        .iter()
        .filter(|o| allowed.contains(o.letter))
        .cloned()
        .collect();
    let mut v = send(what, &filtered, elevate);
    let at = if elevate { 3 } else { 2 };
    v.insert(at, "-nvP".into());
    v
}

/// Parses the byte count from `zfs send -nvP` output (its last line).
pub fn parse_estimate(stdout: &str) -> Option<u64> {
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    last.rsplit('\t').next()?.trim().parse().ok()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receive {
    pub resumable: bool,
    pub force: bool,
    /// `-o prop=value` from --preserve-properties / --preserve-recordsize.
    pub set_props: Vec<(String, String)>,
}

/// `zfs receive` with the user's receive options filtered as syncoid does.
pub fn receive(target: &str, r: &Receive, user_opts: &[ZfsOpt], elevate: bool) -> Vec<String> {
    let mut v = zfs(elevate);
    v.push("receive".into());
    v.extend(opts_argv(user_opts, "hoxuv"));
    if r.resumable {
        v.push("-s".into());
    }
    if r.force {
        v.push("-F".into());
    }
    for (k, val) in &r.set_props {
        v.push("-o".into());
        v.push(format!("{k}={val}"));
    }
    v.push(target.to_string());
    v
}

/// Tools found on each host (for mbuffer, pv and the compressor).
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub source_mbuffer: bool,
    pub target_mbuffer: bool,
    pub local_mbuffer: bool,
    pub local_pv: bool,
    /// The compressor is usable on every host that needs it.
    pub compress: bool,
}

/// `--insecure-direct-connection`: the stream leaves ssh and goes over a
/// plain TCP connection from the source (socat) to a listener on the target
/// (busybox nc, or mbuffer with the `mbuffer` variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Direct {
    pub connect: String,
    pub listen: String,
    pub timeout: u32,
    pub mbuffer: bool,
}

/// Parses `IP:PORT[,IP:PORT[,TIMEOUT[,mbuffer]]]` (connect, listen).
pub fn parse_direct(s: &str) -> Option<Direct> {
    let parts: Vec<&str> = s.split(',').collect();
    let addr_ok = |p: &&str| {
        p.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.starts_with('-') && port.parse::<u16>().is_ok_and(|n| n > 0)
        })
    };
    if parts.is_empty() || parts.len() > 4 || !parts.iter().take(2).all(addr_ok) {
        return None;
    }
    let timeout = match parts.get(2) {
        Some(t) => t.parse().ok()?,
        None => 60,
    };
    let mbuffer = match parts.get(3) {
        Some(&"mbuffer") => true,
        Some(_) => return None,
        None => false,
    };
    Some(Direct {
        connect: parts[0].to_string(),
        listen: parts.get(1).unwrap_or(&parts[0]).to_string(),
        timeout,
        mbuffer,
    })
}

#[derive(Debug, Clone)]
pub struct PipeOpts {
    pub compress: Compress,
    pub mbuffer_size: String,
    pub source_bwlimit: Option<String>,
    pub target_bwlimit: Option<String>,
    /// pv's options (split on whitespace); `None` disables pv.
    pub pv_options: Option<Vec<String>>,
    /// Our own in-process progress meter where pv would go (replaces pv).
    pub meter: bool,
    pub source_remote: bool,
    pub target_remote: bool,
    pub direct: Option<Direct>,
}

fn socat(d: &Direct) -> Vec<String> {
    vec![
        "socat".into(),
        "-".into(),
        format!("TCP:{},retry={},interval=1", d.connect, d.timeout),
    ]
}

/// The target side's listener for a direct connection.
fn listener(d: &Direct, limit: Option<(&str, &str)>, size: &str) -> Vec<String> {
    if d.mbuffer {
        let mut v = mbuffer(limit, size);
        v.splice(
            1..1,
            [
                "-W".to_string(),
                d.timeout.to_string(),
                "-I".to_string(),
                d.listen.clone(),
            ],
        );
        v
    } else {
        vec![
            "busybox".into(),
            "nc".into(),
            "-l".into(),
            d.listen.clone(),
            "-w".into(),
            d.timeout.to_string(),
        ]
    }
}

fn mbuffer(limit: Option<(&str, &str)>, size: &str) -> Vec<String> {
    let mut v = vec!["mbuffer".to_string()];
    if let Some((flag, rate)) = limit {
        v.push(flag.to_string());
        v.push(rate.to_string());
    }
    v.extend(
        ["-q", "-s", "128k", "-m", size]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

/// The stage `transfer` runs in process: it counts the stream for the
/// progress display where syncoid puts pv.
pub const METER: &str = "@meter";

fn pv(opts: &[String], size: u64) -> Vec<String> {
    let mut v = vec!["pv".to_string()];
    v.extend(opts.iter().cloned());
    v.push("-s".into());
    v.push(size.to_string());
    v
}

/// The optional stages pipelines are made of, each `None` where the tool
/// is missing or not wanted.
struct Parts {
    compress: Option<Vec<String>>,
    decompress: Option<Vec<String>>,
    /// mbuffer on the sending side, with --source-bwlimit.
    src_buf: Option<Vec<String>>,
    /// mbuffer on the receiving side, with --target-bwlimit.
    dst_buf: Option<Vec<String>>,
    /// mbuffer on this machine when relaying between two remote hosts.
    relay_buf: Option<Vec<String>>,
    pv: Option<Vec<String>>,
}

fn seg(at: Where, stages: Vec<Option<Vec<String>>>) -> Segment {
    Segment {
        at,
        stages: stages.into_iter().flatten().collect(),
    }
}

/// The sync pipeline for one send, segment by segment (syncoid's
/// `buildsynccmd`). The first stage is `send`, the last `recv`.
pub fn pipeline(
    send: Vec<String>,
    recv: Vec<String>,
    size: u64,
    o: &PipeOpts,
    t: &Tools,
) -> Vec<Segment> {
    let comp = o.compress != Compress::None && t.compress;
    let src_limit = o.source_bwlimit.as_deref().map(|r| ("-R", r));
    let dst_limit = o.target_bwlimit.as_deref().map(|r| ("-r", r));
    let p = Parts {
        compress: comp.then(|| o.compress.compress_argv()),
        decompress: comp.then(|| o.compress.decompress_argv()),
        src_buf: t
            .source_mbuffer
            .then(|| mbuffer(src_limit, &o.mbuffer_size)),
        dst_buf: t
            .target_mbuffer
            .then(|| mbuffer(dst_limit, &o.mbuffer_size)),
        relay_buf: t.local_mbuffer.then(|| mbuffer(None, &o.mbuffer_size)),
        pv: if o.meter {
            Some(vec![METER.to_string()])
        } else {
            o.pv_options
                .as_ref()
                .filter(|_| t.local_pv)
                .map(|opts| pv(opts, size))
        },
    };
    if let Some(direct) = &o.direct {
        return direct_pipeline(send, recv, o, direct, dst_limit, p);
    }
    match (o.source_remote, o.target_remote) {
        (false, false) => {
            // Both local: one mbuffer, either limit.
            let limit = src_limit.or(dst_limit);
            let buf = t.source_mbuffer.then(|| mbuffer(limit, &o.mbuffer_size));
            vec![seg(Where::Local, vec![Some(send), buf, p.pv, Some(recv)])]
        }
        (false, true) => vec![
            seg(Where::Local, vec![Some(send), p.pv, p.compress, p.src_buf]),
            seg(Where::Target, vec![p.dst_buf, p.decompress, Some(recv)]),
        ],
        (true, false) => vec![
            seg(Where::Source, vec![Some(send), p.compress, p.src_buf]),
            seg(
                Where::Local,
                vec![p.dst_buf, p.decompress, p.pv, Some(recv)],
            ),
        ],
        (true, true) => vec![
            seg(
                Where::Source,
                vec![Some(send), p.compress.clone(), p.src_buf],
            ),
            seg(
                Where::Local,
                vec![p.decompress.clone(), p.pv, p.compress, p.relay_buf],
            ),
            seg(Where::Target, vec![p.dst_buf, p.decompress, Some(recv)]),
        ],
    }
}

/// syncoid's shapes with `--insecure-direct-connection` (one side remote).
fn direct_pipeline(
    send: Vec<String>,
    recv: Vec<String>,
    o: &PipeOpts,
    direct: &Direct,
    dst_limit: Option<(&str, &str)>,
    p: Parts,
) -> Vec<Segment> {
    // An mbuffer listener is the target's buffer already.
    let dst_buf = p.dst_buf.filter(|_| !direct.mbuffer);
    let listen = Some(listener(direct, dst_limit, &o.mbuffer_size));
    if o.source_remote {
        vec![
            seg(
                Where::Source,
                vec![Some(send), p.compress, p.src_buf, Some(socat(direct))],
            ),
            seg(
                Where::Local,
                vec![listen, dst_buf, p.decompress, p.pv, Some(recv)],
            ),
        ]
    } else {
        vec![
            seg(
                Where::Local,
                vec![Some(send), p.pv, p.compress, p.src_buf, Some(socat(direct))],
            ),
            seg(
                Where::Target,
                vec![listen, dst_buf, p.decompress, Some(recv)],
            ),
        ]
    }
}

#[cfg(test)]
mod tests;
