//! SOURCE and TARGET arguments: `pool/fs` or `[user@]host:pool/fs`.
//!
//! The rules are syncoid's: anything with an `@` before the dataset is
//! remote (`user@host:fs`, or `@host:fs` with no user); a `host:` prefix
//! without `@` is remote unless a local pool has that name (pool names may
//! contain `:`), so the caller passes the local pool names in.

use crate::names::{DatasetName, NameError};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub user: Option<String>,
    pub host: String,
}

impl Remote {
    /// The ssh destination: `user@host` or `host`.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub remote: Option<Remote>,
    pub dataset: DatasetName,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.remote {
            Some(r) => write!(f, "{}:{}", r.destination(), self.dataset),
            None => write!(f, "{}", self.dataset),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("'{0}': missing dataset after the host")]
    NoDataset(String),
    #[error("'{arg}': invalid dataset name: {err}")]
    BadName { arg: String, err: NameError },
    #[error("'{0}': invalid host name")]
    BadHost(String),
    #[error("'{0}' is a snapshot: give the dataset (pool/fs); its snapshots are replicated")]
    Snapshot(String),
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && !h.starts_with('-')
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:%".contains(c))
}

fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && !u.starts_with('-')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// True when `arg` needs the local pool list to be classified.
pub fn is_ambiguous(arg: &str) -> bool {
    !arg.contains('@')
        && arg
            .split('/')
            .next()
            .is_some_and(|first| first.contains(':'))
}

/// Parses a SOURCE or TARGET argument.
pub fn parse(arg: &str, local_pools: &[String]) -> Result<Location, LocationError> {
    let bad = |err| match err {
        NameError::MultipleDelimiters if arg.contains('@') && !arg.contains('#') => {
            LocationError::Snapshot(arg.to_string())
        }
        err => LocationError::BadName {
            arg: arg.to_string(),
            err,
        },
    };
    let first = arg.split('/').next().unwrap_or("");
    let remote_split =
        if let Some((userhost, rest)) = arg.split_once(':').filter(|(uh, _)| uh.contains('@')) {
            Some((userhost, rest))
        } else if first.contains(':') && !local_pools.iter().any(|p| p == first) {
            arg.split_once(':')
        } else {
            None
        };
    let Some((userhost, fs)) = remote_split else {
        return Ok(Location {
            remote: None,
            dataset: DatasetName::parse(arg).map_err(bad)?,
        });
    };
    if fs.is_empty() {
        return Err(LocationError::NoDataset(arg.to_string()));
    }
    let (user, host) = match userhost.rsplit_once('@') {
        Some(("", h)) => (None, h),
        Some((u, h)) => (Some(u), h),
        None => (None, userhost),
    };
    if !valid_host(host) || user.is_some_and(|u| !valid_user(u)) {
        return Err(LocationError::BadHost(arg.to_string()));
    }
    Ok(Location {
        remote: Some(Remote {
            user: user.map(String::from),
            host: host.to_string(),
        }),
        dataset: DatasetName::parse(fs).map_err(bad)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Location {
        parse(s, &["tank:old".to_string()]).unwrap()
    }

    #[test]
    fn local_and_remote_forms() {
        assert_eq!(p("tank/fs").remote, None);
        let r = p("root@backup.example:pool/fs").remote.unwrap();
        assert_eq!(
            (r.user.as_deref(), r.host.as_str()),
            (Some("root"), "backup.example")
        );
        assert_eq!(p("@host:pool/fs").remote.unwrap().destination(), "host");
        assert_eq!(p("host:pool/fs").remote.unwrap().destination(), "host");
        assert_eq!(p("host:pool/fs").dataset.as_str(), "pool/fs");
    }

    #[test]
    fn colon_pool_names_stay_local() {
        let l = p("tank:old/fs");
        assert_eq!(l.remote, None);
        assert_eq!(l.dataset.as_str(), "tank:old/fs");
        assert!(is_ambiguous("tank:old/fs"));
        assert!(!is_ambiguous("root@h:tank/fs"));
    }

    #[test]
    fn hostile_input_is_refused() {
        for bad in [
            "-oProxyCommand=x:pool/fs",
            "root@:pool/fs",
            "a b@h:pool/fs",
            "host:",
            "root@h:pool/$(x)",
        ] {
            assert!(parse(bad, &[]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_pool_starting_with_a_dash_is_no_option_and_a_snapshot_is_named_so() {
        let e = parse("-R", &[]).unwrap_err().to_string();
        assert!(e.contains("must begin with a letter"), "{e}");
        let e = parse("root@h:-x/fs", &[]).unwrap_err().to_string();
        assert!(e.contains("must begin with a letter"), "{e}");
        for snap in ["pool/fs@daily", "root@h:pool/fs@daily"] {
            let e = parse(snap, &[]).unwrap_err();
            assert_eq!(e, LocationError::Snapshot(snap.into()));
            assert!(e.to_string().contains("is a snapshot"), "{e}");
        }
    }
}
