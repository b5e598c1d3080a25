//! What one side has: datasets, snapshots and bookmarks, parsed from one
//! batched `zfs list` per side (not one zfs call per dataset).
//!
//! The listings we ask for (`listing_argv`) and the parsers here are made
//! for each other: `-H -p` output, tab-separated, one object per line.

use std::collections::BTreeMap;

/// A snapshot or bookmark: the short name (after `@` or `#`) and its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    pub creation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatasetInfo {
    pub name: String,
    /// `fs@snap` when the dataset is a clone.
    pub origin: Option<String>,
    pub resume_token: Option<String>,
    /// The `syncoid:sync` property, when set.
    pub sync: Option<String>,
    /// Bytes written since the newest snapshot (`written`).
    pub written: u64,
    pub is_volume: bool,
    pub recordsize: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inventory {
    /// Datasets in listing order (parents before children).
    pub datasets: Vec<DatasetInfo>,
    /// Snapshots per dataset, oldest first (by createtxg).
    pub snaps: BTreeMap<String, Vec<Snap>>,
    /// Bookmarks per dataset, oldest first.
    pub marks: BTreeMap<String, Vec<Snap>>,
}

/// The `-o` columns of the dataset listing, in the order `parse_datasets` reads.
pub const DATASET_COLUMNS: &str =
    "name,type,origin,receive_resume_token,syncoid:sync,written,recordsize";
/// The `-o` columns of the snapshot listing.
pub const SNAPSHOT_COLUMNS: &str = "name,guid,createtxg,creation";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected zfs list output line {line}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
}

fn dash(v: &str) -> Option<String> {
    (v != "-" && !v.is_empty()).then(|| v.to_string())
}

/// Parses `zfs list -H -p -o DATASET_COLUMNS -t filesystem,volume`.
pub fn parse_datasets(out: &str) -> Result<Vec<DatasetInfo>, ParseError> {
    out.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            let err = || ParseError {
                line: i + 1,
                text: l.to_string(),
            };
            if f.len() != 7 {
                return Err(err());
            }
            Ok(DatasetInfo {
                name: f[0].to_string(),
                is_volume: f[1] == "volume",
                origin: dash(f[2]),
                resume_token: dash(f[3]),
                sync: dash(f[4]),
                written: f[5].parse().unwrap_or(0),
                recordsize: dash(f[6]),
            })
        })
        .collect()
}

/// Parses `zfs list -H -p -o SNAPSHOT_COLUMNS -t snapshot,bookmark` into
/// (snapshots, bookmarks) per dataset, each sorted by createtxg.
#[allow(clippy::type_complexity)]
pub fn parse_snapshots(
    out: &str,
) -> Result<(BTreeMap<String, Vec<Snap>>, BTreeMap<String, Vec<Snap>>), ParseError> {
    let mut snaps: BTreeMap<String, Vec<Snap>> = BTreeMap::new();
    let mut marks: BTreeMap<String, Vec<Snap>> = BTreeMap::new();
    for (i, l) in out.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let err = || ParseError {
            line: i + 1,
            text: l.to_string(),
        };
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() != 4 {
            return Err(err());
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| err());
        let (fs, name, map) = if let Some((fs, s)) = f[0].split_once('@') {
            (fs, s, &mut snaps)
        } else if let Some((fs, b)) = f[0].split_once('#') {
            (fs, b, &mut marks)
        } else {
            return Err(err());
        };
        map.entry(fs.to_string()).or_default().push(Snap {
            name: name.to_string(),
            guid: num(f[1])?,
            createtxg: num(f[2])?,
            creation: num(f[3])?,
        });
    }
    for v in snaps.values_mut().chain(marks.values_mut()) {
        v.sort_by_key(|s| (s.createtxg, s.creation));
    }
    Ok((snaps, marks))
}

impl Inventory {
    pub fn dataset(&self, name: &str) -> Option<&DatasetInfo> {
        self.datasets.iter().find(|d| d.name == name)
    }
    pub fn snaps_of(&self, name: &str) -> &[Snap] {
        self.snaps.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
    pub fn marks_of(&self, name: &str) -> &[Snap] {
        self.marks.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_listing_shapes() {
        // Shape of zfs-reference case 010 (`zfs list -H -p -t snapshot -o name,guid,createtxg,creation`)
        // plus a bookmark line as 2.1 prints it with -t all.
        let out = "src/data@b\t2568370091076132727\t10\t1795781764\n\
                   src/data@a\t4072604168315158788\t9\t1795781763\n\
                   src/data#a\t4072604168315158788\t9\t1795781763\n\
                   src/data/child@a\t17377894239021656441\t14\t1795781766\n";
        let (snaps, marks) = parse_snapshots(out).unwrap();
        let names: Vec<_> = snaps["src/data"].iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(marks["src/data"][0].guid, 4072604168315158788);
        assert_eq!(snaps["src/data/child"][0].createtxg, 14);
        assert!(parse_snapshots("garbage\n").is_err());
    }

    #[test]
    fn parses_dataset_listing() {
        let out = "src/clone\tfilesystem\tsrc/data@b\t-\t-\t0\t131072\n\
                   dst/part\tfilesystem\t-\t1-abc-12-00ff\ttrue\t4096\t131072\n";
        let d = parse_datasets(out).unwrap();
        assert_eq!(d[0].origin.as_deref(), Some("src/data@b"));
        assert_eq!(d[1].resume_token.as_deref(), Some("1-abc-12-00ff"));
        assert_eq!(d[1].sync.as_deref(), Some("true"));
        assert_eq!(d[1].written, 4096);
        assert!(parse_datasets("a\tb\n").is_err());
    }
}
