//! Sizes: OpenZFS's human-readable format and the size suffixes users type.

/// Formats bytes the way `zfs list` does without `-p` (libzfs `zfs_nicenum`):
/// `0B`, `512B`, `96K`, `2.99M`, `3.62G`; at most 5 characters where a
/// fraction is shown.
pub fn nicenum(num: u64) -> String {
    const UNITS: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];
    let mut n = num;
    let mut index = 0;
    while n >= 1024 && index < UNITS.len() - 1 {
        n /= 1024;
        index += 1;
    }
    let u = UNITS[index];
    if index == 0 || num.is_multiple_of(1u64 << (10 * index)) {
        return format!("{n}{u}");
    }
    let val = num as f64 / (1u64 << (10 * index)) as f64;
    for precision in (0..=2).rev() {
        let s = format!("{val:.precision$}{u}");
        if s.len() <= 5 || precision == 0 {
            return s;
        }
    }
    unreachable!()
}

/// Parses `8G`, `512k`, `1.5M`, `100` (bytes) with binary multiples.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        _ => return None,
    };
    let bytes = value * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicenum_matches_real_zfs_list() {
        // Values and renderings from zfs-reference cases 005/006 (OpenZFS 2.1.11).
        let pairs = [
            (4382720, "4.18M"),
            (3887931392, "3.62G"),
            (106496, "104K"),
            (0, "0B"),
            (3125248, "2.98M"),
            (3416064, "3.26M"),
            (3133440, "2.99M"),
            (98304, "96K"),
            (196608, "192K"),
            (512, "512B"),
        ];
        for (n, s) in pairs {
            assert_eq!(nicenum(n), s, "{n}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5Q"), None);
    }
}
