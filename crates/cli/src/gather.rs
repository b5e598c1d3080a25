//! Reads each side's state with one batched listing per side, and checks
//! which optional tools each host has (one call per host).

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
    listing(host, sudo, root, recursive, false).map(|(inv, _)| inv)
}

/// The target's inventory and the datasets its running `zfs receive`s
/// write to (see `busy_targets`), from the same shell call.
pub fn target_state(
    host: &Host,
    sudo: bool,
    root: &str,
    recursive: bool,
) -> Result<(Option<Inventory>, Vec<String>), CmdError> {
    listing(host, sudo, root, recursive, true)
}

/// Ends each part of a combined listing on stdout (with the part's exit
/// status) and on stderr. No line of `zfs list -H` starts with `#`.
const PART: &str = "#syncoid-rsync-part";
const PART_OUT: &str = "\n#syncoid-rsync-part ";
const PART_ERR: &str = "#syncoid-rsync-part\n";

/// Datasets, then snapshots and bookmarks (then, with `ps`, the process
/// list) in one shell call: one round trip to a remote host, not three.
fn listing(
    host: &Host,
    sudo: bool,
    root: &str,
    recursive: bool,
    ps: bool,
) -> Result<(Option<Inventory>, Vec<String>), CmdError> {
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
    let ds_argv = zfs(sudo, &ds_args);
    let snap_argv = zfs(sudo, &snap_args);
    let end = format!("printf '\\n{PART} %s\\n' $?; echo '{PART}' >&2");
    let mut script = format!(
        "{}; {end}; {}; {end}",
        shell::join(&ds_argv),
        shell::join(&snap_argv)
    );
    if ps {
        script.push_str("; ps -Ao args=");
    }
    let out = host.run(&["sh".into(), "-c".into(), script])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // stdout: DATASETS \n#PART STATUS\n SNAPSHOTS \n#PART STATUS\n PS
    let mut parts = stdout.splitn(3, PART_OUT);
    let ds_out = parts.next().unwrap_or("");
    let status = |part: Option<&str>| {
        let (code, rest) = part?.split_once('\n')?;
        Some((code.parse::<i32>().ok()?, rest.to_string()))
    };
    let Some((ds_status, snap_out)) = status(parts.next()) else {
        // The shell never got that far (ssh failed, say).
        return Err(host.error(&[ds_argv], out.status.code(), stderr.into_owned()));
    };
    let (snap_status, ps_out) = status(parts.next()).unwrap_or((-1, String::new()));
    let mut errs = stderr.splitn(3, PART_ERR);
    let (ds_err, snap_err) = (errs.next().unwrap_or(""), errs.next().unwrap_or(""));
    if ds_status != 0 {
        if ds_err.contains("dataset does not exist") {
            return Ok((None, busy_in(&ps_out)));
        }
        return Err(host.error(&[ds_argv], Some(ds_status), ds_err.to_string()));
    }
    if snap_status != 0 {
        return Err(host.error(&[snap_argv], Some(snap_status), snap_err.to_string()));
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
    let out = host.run_ok(&argv)?;
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
