//! Sync snapshot names, exactly as syncoid makes them:
//! `syncoid_[IDENTIFIER_]HOSTNAME_YYYY-MM-DD_HH:MM:SS-GMT[-]HH:MM`.
//!
//! The time and the UTC offset are passed in (no clock here). A positive
//! offset has no sign, because `+` is not allowed in a snapshot name.

/// The prefix that marks sync snapshots this host (and identifier) owns:
/// only these are ever pruned.
pub fn prefix(identifier: Option<&str>, hostname: &str) -> String {
    match identifier {
        Some(id) => format!("syncoid_{id}_{hostname}"),
        None => format!("syncoid_{hostname}"),
    }
}

/// A valid `--identifier`: the characters syncoid accepts.
pub fn valid_identifier(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
}

/// Civil local time fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// Seconds east of UTC.
    pub utc_offset: i32,
}

pub fn name(identifier: Option<&str>, hostname: &str, t: &LocalTime) -> String {
    let sign = if t.utc_offset < 0 { "-" } else { "" };
    let off = t.utc_offset.unsigned_abs();
    format!(
        "{}_{:04}-{:02}-{:02}_{:02}:{:02}:{:02}-GMT{sign}{:02}:{:02}",
        prefix(identifier, hostname),
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        off / 3600,
        off % 3600 / 60
    )
}

/// Local time from a UNIX time and an offset (seconds east of UTC).
pub fn local_time(unix: i64, utc_offset: i32) -> LocalTime {
    let t = unix + i64::from(utc_offset);
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400) as u32;
    let (year, month, day) = civil_from_days(days);
    LocalTime {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs % 3600 / 60,
        second: secs % 60,
        utc_offset,
    }
}

/// Howard Hinnant's days-to-civil algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_syncoid() {
        // 2026-11-27 12:34:56 UTC
        let t = local_time(1_795_782_896, 0);
        assert_eq!(
            name(None, "host1", &t),
            "syncoid_host1_2026-11-27_12:34:56-GMT00:00"
        );
        let t = local_time(1_795_782_896, -5 * 3600 - 1800);
        assert_eq!(
            name(Some("offsite"), "h", &t),
            "syncoid_offsite_h_2026-11-27_07:04:56-GMT-05:30"
        );
        let t = local_time(1_795_782_896, 3600);
        assert_eq!(
            name(None, "h", &t),
            "syncoid_h_2026-11-27_13:34:56-GMT01:00"
        );
        assert!(crate::names::SnapshotName::parse(&format!("p/f@{}", name(None, "h", &t))).is_ok());
    }

    #[test]
    fn identifiers() {
        assert!(valid_identifier("a-b_c:d.e"));
        assert!(!valid_identifier("a b"));
        assert!(!valid_identifier(""));
    }
}
