//! ZFS names as parsed values.
//!
//! A `DatasetName`, `SnapshotName` or `BookmarkName` can only be made by the
//! parsers here, so the rest of the code never holds an unchecked name. The
//! rules are those of OpenZFS's `zfs_name_valid`: components of letters,
//! digits and `_ - : . ` (and space), separated by `/`, at most 255 bytes.

use std::fmt;

/// The longest name OpenZFS accepts (ZFS_MAX_DATASET_NAME_LEN - 1).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty component or misplaced '@' or '#' delimiter in name")]
    EmptyComponent,
    #[error("invalid character '{0}' in name")]
    InvalidChar(char),
    #[error("name is too long")]
    TooLong,
    #[error("missing '@' delimiter in snapshot name")]
    NotSnapshot,
    #[error("missing '#' delimiter in bookmark name")]
    NotBookmark,
    #[error("multiple '@' and/or '#' delimiters in name")]
    MultipleDelimiters,
    #[error("leading slash in name")]
    LeadingSlash,
    #[error("trailing slash in name")]
    TrailingSlash,
    #[error("a pool name must begin with a letter")]
    PoolStart,
}

fn valid_component_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | ' ')
}

fn check_component(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::EmptyComponent);
    }
    match s.chars().find(|c| !valid_component_char(*c)) {
        Some(c) => Err(NameError::InvalidChar(c)),
        None => Ok(()),
    }
}

/// `pool/fs/child`: a filesystem or volume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if s.contains('@') || s.contains('#') {
            return Err(NameError::MultipleDelimiters);
        }
        if s.starts_with('/') {
            return Err(NameError::LeadingSlash);
        }
        if s.ends_with('/') {
            return Err(NameError::TrailingSlash);
        }
        s.split('/').try_for_each(check_component)?;
        // OpenZFS's pool_namecheck; a name starting with '-' would also
        // reach zfs as an option.
        if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::PoolStart);
        }
        Ok(DatasetName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool this dataset lives in (its first component).
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    pub fn is_pool_root(&self) -> bool {
        !self.0.contains('/')
    }

    pub fn parent(&self) -> Option<DatasetName> {
        self.0
            .rfind('/')
            .map(|i| DatasetName(self.0[..i].to_string()))
    }

    /// `self` is `other` or lies below it.
    pub fn is_within(&self, other: &DatasetName) -> bool {
        self.0 == other.0
            || (self.0.starts_with(other.as_str()) && self.0.as_bytes()[other.0.len()] == b'/')
    }

    /// Joins a relative child path (`a/b`) below this dataset.
    pub fn join(&self, rel: &str) -> Result<DatasetName, NameError> {
        DatasetName::parse(&format!("{}/{}", self.0, rel))
    }

    pub fn snapshot(&self, snap: &str) -> Result<SnapshotName, NameError> {
        check_component(snap)?;
        Ok(SnapshotName {
            dataset: self.clone(),
            snap: snap.to_string(),
        })
    }

    pub fn bookmark(&self, mark: &str) -> Result<BookmarkName, NameError> {
        check_component(mark)?;
        Ok(BookmarkName {
            dataset: self.clone(),
            mark: mark.to_string(),
        })
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `pool/fs@snap`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    dataset: DatasetName,
    snap: String,
}

impl SnapshotName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let (ds, snap) = s.split_once('@').ok_or(NameError::NotSnapshot)?;
        if snap.contains('@') || snap.contains('#') {
            return Err(NameError::MultipleDelimiters);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        DatasetName::parse(ds)?.snapshot(snap)
    }

    pub fn dataset(&self) -> &DatasetName {
        &self.dataset
    }

    /// The part after `@`.
    pub fn short(&self) -> &str {
        &self.snap
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.dataset, self.snap)
    }
}

/// `pool/fs#mark`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BookmarkName {
    dataset: DatasetName,
    mark: String,
}

impl BookmarkName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let (ds, mark) = s.split_once('#').ok_or(NameError::NotBookmark)?;
        if mark.contains('@') || mark.contains('#') {
            return Err(NameError::MultipleDelimiters);
        }
        DatasetName::parse(ds)?.bookmark(mark)
    }

    pub fn dataset(&self) -> &DatasetName {
        &self.dataset
    }

    pub fn short(&self) -> &str {
        &self.mark
    }
}

impl fmt::Display for BookmarkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.dataset, self.mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names() {
        let d = DatasetName::parse("tank/a b/c:d.e-f_g").unwrap();
        assert_eq!(d.pool(), "tank");
        assert_eq!(d.parent().unwrap().as_str(), "tank/a b");
        assert!(!d.is_pool_root());
        assert!(DatasetName::parse("tank").unwrap().is_pool_root());
        for bad in [
            "", "tank/", "/tank", "tank//a", "tank@a", "tank/a$b", "t;a", "a`b", "-tank", "-R/x",
            "1tank/a", ".tank",
        ] {
            assert!(DatasetName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            DatasetName::parse(&"a".repeat(256)),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn within() {
        let a = DatasetName::parse("tank/a").unwrap();
        assert!(DatasetName::parse("tank/a/b").unwrap().is_within(&a));
        assert!(a.is_within(&a));
        assert!(!DatasetName::parse("tank/ab").unwrap().is_within(&a));
    }

    #[test]
    fn snapshot_and_bookmark_names() {
        let s = SnapshotName::parse("tank/a@0").unwrap();
        assert_eq!(s.short(), "0");
        assert_eq!(s.to_string(), "tank/a@0");
        assert!(SnapshotName::parse("tank/a").is_err());
        assert!(SnapshotName::parse("tank/a@").is_err());
        assert!(SnapshotName::parse("tank/a@b@c").is_err());
        let b = BookmarkName::parse("tank/a#x").unwrap();
        assert_eq!(b.dataset().as_str(), "tank/a");
        assert!(BookmarkName::parse("tank/a#x#y").is_err());
    }
}
