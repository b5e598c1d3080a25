//! The command line: syncoid 2.3's options, with their meanings, plus ours.
//! Parsed here (stage one); `config` turns it into validated settings.

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "syncoid-rsync",
    version,
    about = "Replicate ZFS datasets between hosts: syncoid's command line, plus a transport that survives outages.",
    after_help = "SOURCE and TARGET are `pool/fs` or `[user@]host:pool/fs`.\n\
                  Exit status: 0 done (or nothing to do), 1 some datasets skipped (busy target),\n\
                  2 some datasets failed, 64 bad command line, 69 a host or tool is unusable."
)]
pub struct Args {
    /// Source dataset: pool/fs or [user@]host:pool/fs
    #[arg(required_unless_present_any = ["monitor_version", "generate"])]
    pub source: Option<String>,
    /// Target dataset: pool/fs or [user@]host:pool/fs
    #[arg(required_unless_present_any = ["monitor_version", "generate"])]
    pub target: Option<String>,

    // --- What to replicate ---
    /// Also replicate child datasets
    #[arg(short = 'r', long, help_heading = "What to replicate")]
    pub recursive: bool,
    /// With --recursive: do not replicate the top dataset itself
    #[arg(long, help_heading = "What to replicate")]
    pub skip_parent: bool,
    /// DEPRECATED alias of --exclude-datasets (ignored if that is given)
    #[arg(long, value_name = "REGEX", help_heading = "What to replicate")]
    pub exclude: Vec<String>,
    /// Skip datasets whose name matches REGEX (repeatable)
    #[arg(long, value_name = "REGEX", help_heading = "What to replicate")]
    pub exclude_datasets: Vec<String>,
    /// Skip snapshots whose name matches REGEX (repeatable; wins over --include-snaps)
    #[arg(long, value_name = "REGEX", help_heading = "What to replicate")]
    pub exclude_snaps: Vec<String>,
    /// Only replicate snapshots whose name matches REGEX (repeatable)
    #[arg(long, value_name = "REGEX", help_heading = "What to replicate")]
    pub include_snaps: Vec<String>,
    /// Send only the newest snapshot, not the ones in between (-i instead of -I)
    #[arg(long, help_heading = "What to replicate")]
    pub no_stream: bool,
    /// Do not recreate clones as clones on the target
    #[arg(long, help_heading = "What to replicate")]
    pub no_clone_handling: bool,

    // --- Sync snapshots ---
    /// Do not create a sync snapshot; send the newest existing one
    #[arg(long, help_heading = "Sync snapshots")]
    pub no_sync_snap: bool,
    /// With -r: take every dataset's sync snapshot in one `zfs snapshot`
    /// call before the first send, so the whole tree is captured at one
    /// instant (ZFS makes them together) and with one call instead of one
    /// per dataset
    #[arg(long, help_heading = "Sync snapshots")]
    pub atomic_sync_snap: bool,
    /// Do not prune older sync snapshots
    #[arg(long, help_heading = "Sync snapshots")]
    pub keep_sync_snap: bool,
    /// Extra identifier in sync snapshot and hold names (for several targets)
    #[arg(long, value_name = "EXTRA", help_heading = "Sync snapshots")]
    pub identifier: Option<String>,
    /// With --no-sync-snap: bookmark the newest source snapshot after success
    #[arg(long, help_heading = "Sync snapshots")]
    pub create_bookmark: bool,
    /// Hold the newest snapshot on both sides; release the previous hold
    #[arg(long, help_heading = "Sync snapshots")]
    pub use_hold: bool,
    /// syncoid 2.1's: roll back without destroying clones. Always so here
    /// (a forced receive never destroys a snapshot that has clones)
    #[arg(long, help_heading = "Target safety")]
    pub no_clone_rollback: bool,

    // --- Target safety ---
    /// Never roll the target back (no `zfs receive -F`); diverged targets are an error
    #[arg(long, help_heading = "Target safety")]
    pub no_rollback: bool,
    /// Destroy and re-create a target that shares no snapshot with the source (never a pool root)
    #[arg(long, help_heading = "Target safety")]
    pub force_delete: bool,
    /// After replicating, destroy target snapshots the source no longer has
    #[arg(long, help_heading = "Target safety")]
    pub delete_target_snapshots: bool,
    /// Do not use or keep resumable receive state
    #[arg(long, help_heading = "Target safety")]
    pub no_resume: bool,
    /// Print every zfs command that would run, in order; change nothing
    #[arg(long, help_heading = "Target safety")]
    pub dry_run: bool,

    // --- Properties ---
    /// Set the source's recordsize on the target (new targets)
    #[arg(long, help_heading = "Properties")]
    pub preserve_recordsize: bool,
    /// Set the source's locally set properties on the target
    #[arg(long, help_heading = "Properties")]
    pub preserve_properties: bool,
    /// Extra zfs send options in syncoid's syntax, e.g. "Lc e" or "w"
    #[arg(
        long,
        value_name = "OPTIONS",
        help_heading = "Properties",
        allow_hyphen_values = true
    )]
    pub sendoptions: Option<String>,
    /// Extra zfs receive options, e.g. "ux recordsize o compression=lz4"
    #[arg(
        long,
        value_name = "OPTIONS",
        help_heading = "Properties",
        allow_hyphen_values = true
    )]
    pub recvoptions: Option<String>,

    // --- Transport ---
    /// gzip, pigz-fast, pigz-slow, zstd-fast, zstdmt-fast, zstd-slow, zstdmt-slow, xz, lzo (default), lz4, none
    #[arg(long, value_name = "FORMAT", help_heading = "Transport")]
    pub compress: Option<String>,
    /// Bandwidth limit on the sending side (mbuffer syntax: 10m)
    #[arg(long, value_name = "RATE", help_heading = "Transport")]
    pub source_bwlimit: Option<String>,
    /// Bandwidth limit on the receiving side
    #[arg(long, value_name = "RATE", help_heading = "Transport")]
    pub target_bwlimit: Option<String>,
    /// mbuffer's memory (default 16M)
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "16M",
        help_heading = "Transport"
    )]
    pub mbuffer_size: String,
    /// pv's display options (default "-p -t -e -r -b")
    #[arg(
        long,
        value_name = "OPTIONS",
        default_value = "-p -t -e -r -b",
        allow_hyphen_values = true,
        help_heading = "Transport"
    )]
    pub pv_options: String,
    /// UNENCRYPTED direct TCP: IP:PORT[,IP:PORT[,TIMEOUT[,mbuffer]]] (connect,listen)
    #[arg(long, value_name = "ADDR", help_heading = "Transport")]
    pub insecure_direct_connection: Option<String>,

    // --- --rsync ---
    /// Resumable, verified transport through agents on both hosts that survives outages
    #[arg(long, help_heading = "--rsync mode")]
    pub rsync: bool,
    /// --rsync: chunk size (default 1M)
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "1M",
        help_heading = "--rsync mode"
    )]
    pub chunk_size: String,
    /// --rsync: memory the sender keeps for unacknowledged chunks (default 32M)
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "32M",
        help_heading = "--rsync mode"
    )]
    pub spool_size: String,
    /// --rsync: give up after this long without progress (default 1h; 90s, 30m, 2h)
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1h",
        help_heading = "--rsync mode"
    )]
    pub inactivity_timeout: String,
    /// --rsync: a connection that carries nothing for this long (not even
    /// the heartbeats sent six times as often) is declared dead and made
    /// again (default 10s; raise it for links that stall longer and come
    /// back on their own)
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        help_heading = "--rsync mode"
    )]
    pub link_timeout: String,
    /// --rsync: carry each dataset's stream over N connections between
    /// each pair of hosts (default 1; 2-16 for long or fast links, where
    /// one ssh connection's window or cipher thread is the limit)
    #[arg(
        long,
        value_name = "N",
        default_value = "1",
        help_heading = "--rsync mode"
    )]
    pub streams: String,
    /// With -r: replicate up to N datasets at once (default 1: one after
    /// another, in syncoid's order). A parent is received before its
    /// children and a clone's origin before the clone; bandwidth limits
    /// apply to all of them together
    #[arg(long, value_name = "N", default_value = "1")]
    pub jobs: String,
    /// --rsync: the syncoid-rsync binary to run on remote hosts (one built
    /// for their architecture or system), instead of the installed one or a
    /// copy of this one; it must be this version
    #[arg(long, value_name = "PATH", help_heading = "--rsync mode")]
    pub agent_path: Option<String>,
    /// --rsync: like --agent-path, for the source host only
    #[arg(long, value_name = "PATH", help_heading = "--rsync mode")]
    pub source_agent_path: Option<String>,
    /// --rsync: like --agent-path, for the target host only
    #[arg(long, value_name = "PATH", help_heading = "--rsync mode")]
    pub target_agent_path: Option<String>,

    // --- SSH ---
    /// ssh_config(5) file for ssh -F
    #[arg(long, value_name = "FILE", help_heading = "SSH")]
    pub sshconfig: Option<String>,
    /// Private key for ssh -i
    #[arg(long, value_name = "FILE", help_heading = "SSH")]
    pub sshkey: Option<String>,
    /// Port for ssh -p
    #[arg(long, value_name = "PORT", help_heading = "SSH")]
    pub sshport: Option<u16>,
    /// Cipher for ssh -c
    #[arg(short = 'c', long, value_name = "CIPHER", help_heading = "SSH")]
    pub sshcipher: Option<String>,
    /// Option for ssh -o (repeatable)
    #[arg(short = 'o', long, value_name = "OPTION", help_heading = "SSH")]
    pub sshoption: Vec<String>,
    /// Run zfs without sudo even when not root (ZFS permission delegation)
    #[arg(long, help_heading = "SSH")]
    pub no_privilege_elevation: bool,

    // --- Output ---
    /// Print what is done step by step
    #[arg(long, help_heading = "Output")]
    pub debug: bool,
    /// Print errors only
    #[arg(long, help_heading = "Output")]
    pub quiet: bool,
    /// Print both sides' snapshot lists
    #[arg(long, help_heading = "Output")]
    pub dumpsnaps: bool,
    /// Print one JSON object per event on stdout instead of text (plan,
    /// dataset start and done, progress, link lost, retry, reconnect,
    /// summary; see docs/json-events.md). Warnings and errors stay on stderr
    #[arg(long, help_heading = "Output")]
    pub json: bool,
    /// Write Prometheus metrics (textfile collector format) to PATH at the
    /// end of each run: per dataset the outcome, bytes, duration and last
    /// success time; the run's exit status
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    pub metrics_file: Option<String>,
    /// Do not check for mbuffer, pv and the compressor before starting
    #[arg(long, help_heading = "Output")]
    pub no_command_checks: bool,
    /// Alone: print the version in a monitoring-friendly form and exit.
    /// With SOURCE and TARGET it does nothing (as in syncoid)
    #[arg(long, help_heading = "Output")]
    pub monitor_version: bool,
    /// Print the man page (man) or a shell completion script and exit
    #[arg(long, value_name = "WHAT", help_heading = "Output",
          value_parser = ["man", "bash", "zsh", "fish"])]
    pub generate: Option<String>,
}

/// syncoid parses its command line with Perl's Getopt::Long, which also
/// takes long options with one dash (`-quiet`), in any case (`--Quiet`),
/// and abbreviated to any unique prefix (`--no-priv`, `--ident=x`). This
/// rewrites such words into the exact `--name` clap knows, so a syncoid
/// command line works unchanged. Values (the word after an option that
/// takes one) and everything after `--` are left alone. An abbreviation
/// that fits several options is an error naming them.
pub fn getopt_compat(argv: Vec<String>) -> Result<Vec<String>, String> {
    use clap::CommandFactory;
    let cmd = Args::command();
    let longs: Vec<(String, bool)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let takes = a.get_action().takes_values();
            a.get_long().map(|l| (l.to_string(), takes))
        })
        .collect();
    let shorts_with_value: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_short().map(|c| format!("-{c}")))
        .collect();
    let mut out = Vec::with_capacity(argv.len());
    let mut words = argv.into_iter();
    out.extend(words.next());
    let mut value_next = false;
    while let Some(w) = words.next() {
        if std::mem::take(&mut value_next) {
            out.push(w);
            continue;
        }
        if w == "--" {
            out.push(w);
            out.extend(words);
            break;
        }
        let (dashes, body) = match (w.strip_prefix("--"), w.strip_prefix('-')) {
            (Some(b), _) => (2, b),
            (None, Some(b)) if b.chars().count() > 1 => (1, b),
            _ => {
                value_next = shorts_with_value.contains(&w);
                out.push(w);
                continue;
            }
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        match resolve_long(&longs, name) {
            Ok(Some((long, takes))) => {
                value_next = takes && value.is_none();
                out.push(match value {
                    Some(v) => format!("--{long}={v}"),
                    None => format!("--{long}"),
                });
            }
            // One dash and no long option: a short one with its value
            // attached (`-oBatchMode=yes`, `-caes128-ctr`).
            Ok(None) if dashes == 1 => {
                value_next = false;
                out.push(w);
            }
            Ok(None) => out.push(w),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The long option `name` stands for: itself in any case, or the one
/// option it is a prefix of.
fn resolve_long<'a>(
    longs: &'a [(String, bool)],
    name: &str,
) -> Result<Option<(&'a str, bool)>, String> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty() {
        return Ok(None);
    }
    if let Some((l, t)) = longs.iter().find(|(l, _)| *l == lower) {
        return Ok(Some((l, *t)));
    }
    let fits: Vec<&(String, bool)> = longs
        .iter()
        .filter(|(l, _)| l.starts_with(&lower))
        .collect();
    match fits.as_slice() {
        [] => Ok(None),
        [(l, t)] => Ok(Some((l, *t))),
        many => Err(format!(
            "option --{name} is ambiguous: it could be {}",
            many.iter()
                .map(|(l, _)| format!("--{l}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `--generate man|bash|zsh|fish`: the man page or a completion script,
/// from the same definitions as `--help`.
pub fn generate(what: &str, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut cmd = Args::command();
    let shell = match what {
        "man" => return clap_mangen::Man::new(cmd).render(out),
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        _ => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "syncoid-rsync", out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compat(words: &[&str]) -> Result<Vec<String>, String> {
        let mut argv = vec!["syncoid-rsync".to_string()];
        argv.extend(words.iter().map(|w| w.to_string()));
        getopt_compat(argv).map(|v| v[1..].to_vec())
    }

    #[test]
    fn getopt_long_forms_become_exact_long_options() {
        assert_eq!(
            compat(&[
                "-quiet",
                "--Quiet",
                "--no-priv",
                "--keep-sync",
                "--ident=x",
                "-DEBUG"
            ])
            .unwrap(),
            [
                "--quiet",
                "--quiet",
                "--no-privilege-elevation",
                "--keep-sync-snap",
                "--identifier=x",
                "--debug"
            ]
        );
        // An exact name wins over being a prefix of a longer one.
        assert_eq!(compat(&["--exclude=a"]).unwrap(), ["--exclude=a"]);
        assert_eq!(compat(&["-sshport", "22"]).unwrap(), ["--sshport", "22"]);
    }

    #[test]
    fn values_shorts_and_operands_are_left_alone() {
        let words = [
            "--sendoptions",
            "-Lce",
            "-r",
            "-oBatchMode=yes",
            "-caes128-ctr",
            "-o",
            "-quiet",
            "src",
            "dst",
        ];
        assert_eq!(compat(&words).unwrap(), words);
        assert_eq!(compat(&["--", "-quiet"]).unwrap(), ["--", "-quiet"]);
        assert_eq!(compat(&["--bogus", "-"]).unwrap(), ["--bogus", "-"]);
    }

    #[test]
    fn an_ambiguous_abbreviation_names_the_candidates() {
        let e = compat(&["--no-s", "a", "b"]).unwrap_err();
        assert!(
            e.contains("--no-stream") && e.contains("--no-sync-snap"),
            "{e}"
        );
    }

    #[test]
    fn every_syncoid_2_1_and_2_3_option_is_accepted() {
        // From syncoid's GetOptions calls (2.1.0 and the current source).
        for o in [
            "no-command-checks",
            "monitor-version",
            "compress=lz4",
            "dumpsnaps",
            "recursive",
            "sendoptions=w",
            "recvoptions=u",
            "source-bwlimit=1m",
            "target-bwlimit=1m",
            "sshconfig=f",
            "sshkey=k",
            "sshport=22",
            "sshcipher=c",
            "sshoption=o",
            "debug",
            "quiet",
            "no-stream",
            "no-sync-snap",
            "no-resume",
            "exclude=x",
            "skip-parent",
            "identifier=i",
            "no-clone-handling",
            "no-privilege-elevation",
            "force-delete",
            "no-clone-rollback",
            "no-rollback",
            "create-bookmark",
            "use-hold",
            "pv-options=-p",
            "keep-sync-snap",
            "preserve-recordsize",
            "mbuffer-size=1M",
            "delete-target-snapshots",
            "insecure-direct-connection=1.2.3.4:5",
            "preserve-properties",
            "include-snaps=a",
            "exclude-snaps=b",
            "exclude-datasets=c",
        ] {
            let argv = compat(&[&format!("--{o}"), "src", "dst"]).unwrap();
            let mut full = vec!["syncoid-rsync".to_string()];
            full.extend(argv);
            assert!(Args::try_parse_from(full).is_ok(), "--{o}");
        }
    }
}
