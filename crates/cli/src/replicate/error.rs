//! Why one dataset failed (`DsError`), and what the user can do about
//! the zfs errors we recognise.

use crate::host::CmdError;
use syncoid_rsync_core::plan::Conflict;

/// Why one dataset failed.
#[derive(Debug)]
pub(crate) enum DsError {
    Conflict(Conflict),
    Cmd(Vec<CmdError>),
    Other(String),
    /// --rsync: an agent is gone for good and the other was stopped; the
    /// target's resume token carries the transfer on.
    AgentGone(String),
    /// --rsync: another machine's run drives this transfer's agents; they
    /// are left to it (the dataset counts as busy, as syncoid's busy
    /// receive does).
    Busy(String),
    /// The link to a host was lost for the whole inactivity timeout: a
    /// later run goes on (exit status `RETRY`).
    LinkLost(String),
    /// --rsync: our binary cannot run on a host, found before this
    /// dataset changed anything: no dataset can be replicated, and the run
    /// ends as a failed pre-flight.
    CannotRun(String),
}

impl DsError {
    /// Nothing but a lost link stopped the dataset: commands that failed
    /// only because ssh lost its connection (status 255 on a remote host,
    /// after the tries `again` allows).
    pub(super) fn link_lost(&self) -> bool {
        match self {
            DsError::LinkLost(_) => true,
            DsError::Cmd(errs) => !errs.is_empty() && errs.iter().all(CmdError::link_lost),
            _ => false,
        }
    }
}

impl From<CmdError> for DsError {
    fn from(e: CmdError) -> DsError {
        DsError::Cmd(vec![e])
    }
}

impl std::fmt::Display for DsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DsError::Conflict(c) => write!(f, "{c}"),
            DsError::Cmd(errs) => {
                let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                write!(f, "{}", msgs.join("\n  "))?;
                if let Some(hint) = errs.first().and_then(|e| hint(&e.stderr)) {
                    write!(f, "\n  hint: {hint}")?;
                }
                Ok(())
            }
            DsError::Other(m)
            | DsError::AgentGone(m)
            | DsError::Busy(m)
            | DsError::LinkLost(m)
            | DsError::CannotRun(m) => f.write_str(m),
        }
    }
}

/// What the user can do about zfs errors we recognise (the texts are
/// OpenZFS 2.1's, from ../shared/zfs-reference and the VM).
pub(super) fn hint(stderr: &str) -> Option<&'static str> {
    let has = |t: &str| stderr.contains(t);
    Some(if has("has been modified") {
        "the target changed since its last snapshot; without --no-rollback the next run rolls it back (zfs receive -F), losing those changes"
    } else if has("does not match incremental source") || has("most recent snapshot of") {
        "the target's newest snapshot is not the common base; run again without --no-rollback to roll it back, or --force-delete to replace it"
    } else if has("new filesystem stream: destination") && has("exists") {
        "the target exists but shares no snapshot with the source: choose another target, or --force-delete to destroy and replace it"
    } else if has("checksum mismatch or incomplete stream") || has("incomplete stream") {
        "the stream was cut or damaged on its way; the target keeps what it verified (resume token): run the same command again (--rsync survives this)"
    } else if has("out of space") || has("No space left") || has("quota exceeded") {
        "the target pool or dataset is full: free space or raise its quota"
    } else if has("no such pool") {
        "the pool does not exist on that host: check the name (zpool list)"
    } else if has("dataset is busy") {
        "another process holds the dataset: wait, or find it with `zfs holds` / `lsof`"
    } else if has("Permission denied") || has("permission denied") {
        "check the ssh key and user, or use sudo/zfs allow (see --no-privilege-elevation)"
    } else if has("command not found") || has("not found") {
        "a program is missing on that host: install it or choose --compress=none"
    } else {
        return None;
    })
}

#[cfg(test)]
mod hint_tests {
    use super::hint;

    #[test]
    fn real_zfs_errors_get_a_hint() {
        for (msg, want) in [
            ("cannot receive incremental stream: destination dst/data has been modified", "--no-rollback"),
            ("cannot receive incremental stream: most recent snapshot of dst/other does not\nmatch incremental source", "--force-delete"),
            ("cannot receive new filesystem stream: destination 'dst/data' exists", "--force-delete"),
            ("cannot receive new filesystem stream: checksum mismatch or incomplete stream.", "run the same command again"),
            ("cannot open 'nopool': no such pool", "zpool list"),
            ("cannot destroy snapshot src/data@a: dataset is busy", "zfs holds"),
        ] {
            let h = hint(msg).unwrap_or_else(|| panic!("no hint for {msg}"));
            assert!(h.contains(want), "{msg} -> {h}");
        }
        assert_eq!(hint("something else entirely"), None);
    }
}
