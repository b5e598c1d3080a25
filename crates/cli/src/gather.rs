//! Reads each side's state with one batched listing per side (one shell
//! call, run by the pre-flight in its own call), and checks which optional
//! tools each host has (one call per host).

use std::collections::BTreeSet;

use crate::host::{CmdError, Host};
use syncoid_rsync_core::inventory::{self, Inventory, DATASET_COLUMNS, SNAPSHOT_COLUMNS};
use syncoid_rsync_core::shell;

/// `[sudo] zfs ARGS...`
pub fn zfs(sudo: bool, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if sudo {
        v.push("sudo".into());
    }
    v.push("zfs".into());
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// `None` when `root` does not exist on `host`.
pub fn inventory(
    host: &Host,
    sudo: bool,
    root: &str,
    recursive: bool,
) -> Result<Option<Inventory>, CmdError> {
    Listing::new(sudo, root, recursive, false)
        .run(host)
        .map(|(inv, _)| inv)
}

/// Ends each part of a combined listing on stdout (with the part's exit
/// status) and on stderr. No line of `zfs list -H` starts with `#`.
const PART: &str = "#syncoid-rsync-part";

/// What a script runs after each of its parts: the part's exit status on
/// stdout and a mark on stderr, so one call's output is told apart by
/// part (`parts`).
pub(crate) fn part_end() -> String {
    format!("printf '\\n{PART} %s\\n' $?; echo '{PART}' >&2")
}

/// Each part's exit status and stderr, from what a script of `n` parts,
/// each followed by `part_end`, printed; None for a part it did not
/// finish (the shell or the connection ended first).
pub(crate) fn parts(n: usize, stdout: &str, stderr: &str) -> Vec<Option<(i32, String)>> {
    let statuses: Vec<Option<i32>> = stdout
        .split(PART_OUT)
        .skip(1)
        .map(|p| p.split('\n').next().and_then(|c| c.trim().parse().ok()))
        .collect();
    let errs: Vec<&str> = stderr.split(PART_ERR).collect();
    (0..n)
        .map(|i| {
            let status = statuses.get(i).copied().flatten()?;
            Some((status, errs.get(i).unwrap_or(&"").to_string()))
        })
        .collect()
}
const PART_OUT: &str = "\n#syncoid-rsync-part ";
const PART_ERR: &str = "#syncoid-rsync-part\n";

/// One side's state as one shell script: its datasets, then its snapshots
/// and bookmarks (then, with `ps`, the process list, for the datasets a
/// running `zfs receive` writes to): one round trip to a remote host, not
/// three. The pre-flight runs it in the same call as its probe.
pub struct Listing {
    ds_argv: Vec<String>,
    snap_argv: Vec<String>,
    ps: bool,
}

/// A side's inventory (`None`: the root does not exist) and the datasets
/// being received into.
pub type State = (Option<Inventory>, Vec<String>);

impl Listing {
    pub fn new(sudo: bool, root: &str, recursive: bool, ps: bool) -> Listing {
        let depth_ds: &[&str] = if recursive { &["-r"] } else { &["-d", "0"] };
        let depth_snap: &[&str] = if recursive { &["-r"] } else { &["-d", "1"] };
        let mut ds_args = vec![
            "list",
            "-H",
            "-p",
            "-t",
            "filesystem,volume",
            "-o",
            DATASET_COLUMNS,
        ];
        ds_args.extend(depth_ds);
        ds_args.push(root);
        let mut snap_args = vec![
            "list",
            "-H",
            "-p",
            "-t",
            "snapshot,bookmark",
            "-o",
            SNAPSHOT_COLUMNS,
        ];
        snap_args.extend(depth_snap);
        snap_args.push(root);
        // The listing runs in the pre-flight's call, before its verdict on
        // sudo: `sudo -n` fails at once where sudo would ask for a password
        // (the pre-flight then says so), never prompting on a terminal.
        let zfs = |args: &[&str]| {
            let mut v = zfs(sudo, args);
            if sudo {
                v.insert(1, "-n".into());
            }
            v
        };
        Listing {
            ds_argv: zfs(&ds_args),
            snap_argv: zfs(&snap_args),
            ps,
        }
    }

    pub fn script(&self) -> String {
        let end = part_end();
        let mut script = format!(
            "{}; {end}; {}; {end}",
            shell::join(&self.ds_argv),
            shell::join(&self.snap_argv)
        );
        if self.ps {
            script.push_str("; ps -Ao args=");
        }
        script
    }

    pub fn run(&self, host: &Host) -> Result<State, CmdError> {
        let out = host.run_read(&["sh".into(), "-c".into(), self.script()])?;
        self.parse(
            host,
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
            out.status.code(),
        )
    }

    /// Reads what `script` printed; `status` is the shell's, used only
    /// when the script did not get as far as its first part.
    pub fn parse(
        &self,
        host: &Host,
        stdout: &str,
        stderr: &str,
        status: Option<i32>,
    ) -> Result<State, CmdError> {
        // stdout: DATASETS \n#PART STATUS\n SNAPSHOTS \n#PART STATUS\n PS
        let mut parts = stdout.splitn(3, PART_OUT);
        let ds_out = parts.next().unwrap_or("");
        let exit_of = |part: Option<&str>| {
            let (code, rest) = part?.split_once('\n')?;
            Some((code.parse::<i32>().ok()?, rest.to_string()))
        };
        let Some((ds_status, snap_out)) = exit_of(parts.next()) else {
            // The shell never got that far (ssh failed, say).
            return Err(host.error(
                std::slice::from_ref(&self.ds_argv),
                status,
                stderr.to_string(),
            ));
        };
        let (snap_status, ps_out) = exit_of(parts.next()).unwrap_or((-1, String::new()));
        let mut errs = stderr.splitn(3, PART_ERR);
        let (ds_err, snap_err) = (errs.next().unwrap_or(""), errs.next().unwrap_or(""));
        if ds_status != 0 {
            if ds_err.contains("dataset does not exist") {
                return Ok((None, busy_in(&ps_out)));
            }
            return Err(host.error(
                std::slice::from_ref(&self.ds_argv),
                Some(ds_status),
                ds_err.to_string(),
            ));
        }
        if snap_status != 0 {
            return Err(host.error(
                std::slice::from_ref(&self.snap_argv),
                Some(snap_status),
                snap_err.to_string(),
            ));
        }
        let parse_err = |e: inventory::ParseError| {
            host.error(&[vec!["zfs".into(), "list".into()]], Some(0), e.to_string())
        };
        let datasets = inventory::parse_datasets(ds_out).map_err(parse_err)?;
        let (snaps, marks) = inventory::parse_snapshots(&snap_out).map_err(parse_err)?;
        Ok((
            Some(Inventory {
                datasets,
                snaps,
                marks,
            }),
            busy_in(&ps_out),
        ))
    }
}

/// The names of the local pools (for `host:` prefixes that may be pools).
pub fn local_pools() -> Vec<String> {
    Host::Local
        .run_ok(&zfs(false, &["list", "-d0", "-H", "-o", "name"]))
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// Which of `programs` exist on `host` (POSIX `command -v`, as syncoid).
pub fn available(host: &Host, programs: &[&str]) -> Result<BTreeSet<String>, CmdError> {
    let argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("{}true", have_script(programs)),
    ];
    let out = host.run_ok_read(&argv)?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("have "))
        .map(String::from)
        .collect())
}

/// Shell lines printing `have PROGRAM` for each of `programs` in PATH.
pub fn have_script(programs: &[&str]) -> String {
    programs
        .iter()
        .map(|p| format!("command -v {p} >/dev/null 2>&1 && echo have {p}; "))
        .collect()
}

/// The datasets a running `zfs receive` on `host` writes to.
pub fn receiving(host: &Host) -> Result<Vec<String>, CmdError> {
    let argv = ["ps", "-Ao", "args="].map(String::from);
    Ok(busy_in(&host.run_ok(&argv)?))
}

/// The pid of the `syncoid-rsync agent` whose `zfs receive` writes to
/// `fs` on `host`, if that receive is an agent's (asked only when a target
/// is found busy, to say whose it is).
pub fn receiving_agent(host: &Host, fs: &str) -> Option<u32> {
    let argv = ["ps", "-Ao", "pid=,ppid=,args="].map(String::from);
    agent_receiving(&host.run_ok(&argv).ok()?, fs)
}

/// From `ps -Ao pid=,ppid=,args=`: the agent among the ancestors (up to
/// sudo and a shell between them) of the `zfs receive` into `fs`.
fn agent_receiving(ps: &str, fs: &str) -> Option<u32> {
    let procs: Vec<(u32, u32, &str)> = ps
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let pid = w.next()?.parse().ok()?;
            let ppid = w.next()?.parse().ok()?;
            let rest = l.trim_start();
            let args = rest.split_once(char::is_whitespace)?.1.trim_start();
            let args = args.split_once(char::is_whitespace)?.1.trim_start();
            Some((pid, ppid, args))
        })
        .collect();
    let (_, mut parent, _) = *procs
        .iter()
        .find(|(_, _, args)| busy_in(args).iter().any(|b| b == fs))?;
    for _ in 0..3 {
        let (pid, ppid, args) = *procs.iter().find(|(pid, _, _)| *pid == parent)?;
        if args.contains("syncoid-rsync") && args.contains(" agent ") {
            return Some(pid);
        }
        parent = ppid;
    }
    None
}

/// Datasets that a running `zfs receive` is writing to, from the lines
/// of `ps -Ao args=`.
fn busy_in(ps: &str) -> Vec<String> {
    ps.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "receive" || *w == "recv")?;
            let is_zfs = i > 0 && words[i - 1].ends_with("zfs");
            (is_zfs && !words.contains(&"-A"))
                .then(|| words.last().map(|s| s.to_string()))
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_is_traced_to_the_agent_that_runs_it() {
        let ps = "    1     0 init
  700     1 /tmp/syncoid-rsync-bin.Xy/syncoid-rsync agent start receive --key k
  701   700 sudo zfs receive -s -F pool/data
  702   701 zfs receive -s -F pool/data
  800     1 zfs receive -s pool/other
";
        assert_eq!(agent_receiving(ps, "pool/data"), Some(700));
        assert_eq!(agent_receiving(ps, "pool/other"), None);
        assert_eq!(agent_receiving(ps, "pool/none"), None);
    }

    /// Runs a listing's script with `zfs` and `ps` as shell functions
    /// (`fns`), and reads it as `Listing::run` does.
    fn listed(l: &Listing, fns: &str) -> Result<State, CmdError> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{fns}\n{}", l.script()))
            .output()
            .expect("sh");
        l.parse(
            &Host::Local,
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
            out.status.code(),
        )
    }

    const PS: &str = "ps() { echo 'init'; echo '/sbin/zfs receive -s -F pool/busy'; echo 'zfs receive -A pool/aborted'; }";

    #[test]
    fn one_call_yields_datasets_snapshots_bookmarks_and_busy_targets() {
        let l = Listing::new(false, "pool/fs", false, true);
        let fns = format!(
            "{PS}\nzfs() {{ case \"$*\" in *filesystem*) printf 'pool/fs\\tfilesystem\\t-\\t-\\t-\\t0\\t131072' ;; \
             *) printf 'pool/fs@a\\t11\\t5\\t100\\npool/fs#m\\t11\\t5\\t100\\n' ;; esac; }}"
        );
        let (inv, busy) = listed(&l, &fns).unwrap();
        let inv = inv.expect("exists");
        assert_eq!(inv.datasets.len(), 1);
        assert_eq!(inv.datasets[0].name, "pool/fs");
        assert_eq!(inv.snaps["pool/fs"][0].name, "a");
        assert_eq!(inv.marks["pool/fs"][0].guid, 11);
        assert_eq!(busy, vec!["pool/busy".to_string()]);
    }

    #[test]
    fn a_missing_root_is_none_and_other_failures_name_their_own_command() {
        let l = Listing::new(false, "pool/x", true, true);
        let missing = format!(
            "{PS}\nzfs() {{ echo \"cannot open 'pool/x': dataset does not exist\" >&2; return 1; }}"
        );
        let (inv, busy) = listed(&l, &missing).unwrap();
        assert!(inv.is_none());
        assert_eq!(busy, vec!["pool/busy".to_string()]);

        let denied = "zfs() { case \"$*\" in *filesystem*) echo 'permission denied' >&2; return 1 ;; *) echo 'other' >&2; return 1 ;; esac; }";
        let e = listed(&l, denied).unwrap_err();
        assert_eq!(e.status, Some(1));
        assert_eq!(e.stderr.trim(), "permission denied");
        assert!(e.command.contains("filesystem,volume"), "{}", e.command);

        let snaps = "zfs() { case \"$*\" in *filesystem*) printf 'pool/x\\tfilesystem\\t-\\t-\\t-\\t0\\t-\\n' ;; *) echo 'io error' >&2; return 2 ;; esac; }";
        let e = listed(&l, snaps).unwrap_err();
        assert_eq!(e.status, Some(2));
        assert_eq!(e.stderr.trim(), "io error");
        assert!(e.command.contains("snapshot,bookmark"), "{}", e.command);
    }

    #[test]
    fn a_shell_that_never_ran_is_an_error_with_its_own_status() {
        let l = Listing::new(false, "pool/x", false, false);
        let e = l
            .parse(
                &Host::Local,
                "",
                "ssh: connect to host h: refused\n",
                Some(255),
            )
            .unwrap_err();
        assert_eq!(e.status, Some(255));
        assert!(e.stderr.contains("refused"));
    }
}
