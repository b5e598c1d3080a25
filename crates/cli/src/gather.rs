//! Reads each side's state with one batched listing per side, and checks
//! which optional tools each host has (one call per host).

use std::collections::BTreeSet;

use crate::host::{CmdError, Host};
use syncoid_rsync_core::inventory::{self, Inventory, DATASET_COLUMNS, SNAPSHOT_COLUMNS};

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
    let depth_ds: &[&str] = if recursive { &["-r"] } else { &["-d", "0"] };
    let depth_snap: &[&str] = if recursive { &["-r"] } else { &["-d", "1"] };
    let mut args = vec![
        "list",
        "-H",
        "-p",
        "-t",
        "filesystem,volume",
        "-o",
        DATASET_COLUMNS,
    ];
    args.extend(depth_ds);
    args.push(root);
    let argv = zfs(sudo, &args);
    let out = host.run(&argv)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if err.contains("dataset does not exist") {
            return Ok(None);
        }
        return Err(host.error(&[argv], out.status.code(), err));
    }
    let parse_err = |e: inventory::ParseError| {
        host.error(&[vec!["zfs".into(), "list".into()]], Some(0), e.to_string())
    };
    let datasets =
        inventory::parse_datasets(&String::from_utf8_lossy(&out.stdout)).map_err(parse_err)?;
    let mut args = vec![
        "list",
        "-H",
        "-p",
        "-t",
        "snapshot,bookmark",
        "-o",
        SNAPSHOT_COLUMNS,
    ];
    args.extend(depth_snap);
    args.push(root);
    let listing = host.run_ok(&zfs(sudo, &args))?;
    let (snaps, marks) = inventory::parse_snapshots(&listing).map_err(parse_err)?;
    Ok(Some(Inventory {
        datasets,
        snaps,
        marks,
    }))
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

/// Datasets on `host` that a running `zfs receive` is writing to.
pub fn busy_targets(host: &Host) -> Vec<String> {
    let argv = vec!["ps".to_string(), "-Ao".to_string(), "args=".to_string()];
    let Ok(out) = host.run_ok(&argv) else {
        return Vec::new();
    };
    out.lines()
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
