//! Session directories of `--rsync` agents: `/tmp/syncoid-rsync-<id>/`,
//! created atomically (mkdir, mode 0700), checked to be a real directory
//! owned by us (never followed through a symlink), marked with a
//! `.syncoid-rsync-session` file naming the agent's pid, role and transfer.
//! Sweeping removes only directories that carry our marker, belong to us
//! and whose agent is no longer alive.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use syncoid_rsync_core::wire::Role;

pub const PREFIX: &str = "syncoid-rsync-";
pub const MARKER: &str = ".syncoid-rsync-session";

/// What an agent writes in its session dir (`MARKER`, one line of JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Marker {
    pub pid: u32,
    /// "send" or "receive" on disk and in `agent list`.
    #[serde(with = "role_arg")]
    pub role: Role,
    /// Identifies the transfer (source and target dataset) for re-attaching.
    pub key: String,
    pub created: u64,
    /// The copy of the binary the agent runs from (`BIN_PREFIX` dir), if
    /// it runs from one: a copy in use is never swept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin: Option<String>,
    /// The wire protocol version the agent speaks; 0 in the markers of
    /// agents from before it was written down (version 3 or older).
    #[serde(default)]
    pub wire: u16,
}

/// An agent as the hosts' session dirs show it: where, what its marker
/// says, and whether its process runs. `agent list` prints one per line
/// (JSON); pre-flight's probe and the coordinator read the same record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Listed {
    pub dir: String,
    #[serde(flatten)]
    pub marker: Marker,
    pub alive: bool,
}

impl Listed {
    /// Whether this is the live agent of `role` in transfer `key`.
    pub fn serves(&self, role: Role, key: &str) -> bool {
        self.alive && self.marker.role == role && self.marker.key == key
    }
}

/// The agents on this host, as `agent list` prints them.
pub fn listed() -> Vec<Listed> {
    list()
        .into_iter()
        .map(|(dir, marker)| Listed {
            dir: dir.display().to_string(),
            alive: alive(marker.pid),
            marker,
        })
        .collect()
}

/// `Role` as the agents name it ("send", "receive").
mod role_arg {
    use serde::{Deserialize, Deserializer, Serializer};
    use syncoid_rsync_core::wire::Role;

    pub fn serialize<S: Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.agent_arg())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let arg = String::deserialize(d)?;
        Role::from_agent_arg(&arg)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown agent role {arg:?}")))
    }
}

/// Directories the coordinator copies the binary into (`mktemp -d
/// <base>/syncoid-rsync-bin.XXXXXXXX`, 0700); removed at the end of its
/// run. One left by a coordinator that was killed is swept once no live
/// agent runs from it and it has not been used for `BIN_STALE`.
pub const BIN_PREFIX: &str = "syncoid-rsync-bin.";
/// Agents mark their copy as used when they start and when they end, so
/// a copy between two transfers of a live run is always fresh.
pub const BIN_STALE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A valid copy directory name: `BIN_PREFIX` and mktemp's 8 characters.
pub fn valid_bin_name(name: &str) -> bool {
    name.strip_prefix(BIN_PREFIX)
        .is_some_and(|x| x.len() == 8 && x.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The copy directory this process runs from, if it is one of ours.
pub fn own_bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let ours = valid_bin_name(dir.file_name()?.to_str()?)
        && dir
            .parent()
            .is_some_and(|p| bin_bases().iter().any(|b| b == p))
        && verify(dir).is_ok();
    ours.then(|| dir.to_path_buf())
}

/// Marks a copy directory as used now (its modification time).
pub fn touch(dir: &Path) {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid C path; a null times pointer means "now".
    unsafe {
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0);
    }
}

/// Where copies of the binary may go, in order of preference: the
/// agents' directory, then, for a host whose /tmp is mounted noexec (a
/// common hardening rule), the login's runtime directory and its home.
/// Pre-flight takes the first that exists, is writable, lets a program run
/// and has room (`BIN_BASES_SH` lists the same, for its shell).
pub fn bin_bases() -> Vec<PathBuf> {
    let mut bases = vec![base()];
    for var in ["XDG_RUNTIME_DIR", "HOME"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(v);
            if p.is_absolute() && !bases.contains(&p) {
                bases.push(p);
            }
        }
    }
    bases
}

/// `bin_bases` as words of a shell `for` loop.
pub const BIN_BASES_SH: &str = "\"${SYNCOID_RSYNC_TMP:-/tmp}\" \"$XDG_RUNTIME_DIR\" \"$HOME\"";

/// The file in a copy directory that names the run that made it
/// (`lock::Owner`'s domain and the coordinator's pid), so that a later run
/// of the same machine removes the copy of one that is gone.
pub const BIN_OWNER: &str = "owner";

pub fn base() -> PathBuf {
    PathBuf::from(std::env::var_os("SYNCOID_RSYNC_TMP").unwrap_or_else(|| "/tmp".into()))
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// A valid session id: 16 lowercase hex digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn random_id() -> String {
    let mut buf = [0u8; 8];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `dir` is a directory (not a link to one) owned by us, 0700.
pub fn verify(dir: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(format!(
            "{} is not a directory (a symlink?): refusing it",
            dir.display()
        ));
    }
    if meta.uid() != euid() {
        return Err(format!(
            "{} belongs to uid {}, not to us: refusing it",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is accessible to others: refusing it",
            dir.display()
        ));
    }
    Ok(())
}

/// Creates a fresh private session directory.
pub fn create() -> Result<PathBuf, String> {
    for _ in 0..8 {
        let dir = base().join(format!("{PREFIX}{}", random_id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                verify(&dir)?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
    Err("cannot create a unique session directory".into())
}

/// Resolves a session directory argument, refusing anything that is not
/// exactly `<base>/syncoid-rsync-<16 hex>` and ours.
pub fn open(arg: &str) -> Result<PathBuf, String> {
    let p = Path::new(arg);
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let id = name.strip_prefix(PREFIX).unwrap_or("");
    if p.parent() != Some(base().as_path()) || !valid_id(id) {
        return Err(format!("'{arg}' is not a syncoid-rsync session directory"));
    }
    verify(p)?;
    Ok(p.to_path_buf())
}

pub fn write_marker(dir: &Path, m: &Marker) -> Result<(), String> {
    let tmp = dir.join(".marker.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| format!("marker: {e}"))?;
    f.write_all(
        serde_json::to_string(m)
            .expect("marker serialises")
            .as_bytes(),
    )
    .map_err(|e| format!("marker: {e}"))?;
    fs::rename(&tmp, dir.join(MARKER)).map_err(|e| format!("marker: {e}"))
}

pub fn read_marker(dir: &Path) -> Option<Marker> {
    let meta = fs::symlink_metadata(dir.join(MARKER)).ok()?;
    if !meta.is_file() {
        return None;
    }
    serde_json::from_slice(&fs::read(dir.join(MARKER)).ok()?).ok()
}

/// Whether `pid` runs (a zombie, dead but not yet reaped, does not).
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if pid == 0 || unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !matches!(
        stat.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next()),
        Some("Z")
    )
}

/// Removes a session directory we own (its files only; no recursion into
/// anything that is not a plain file).
pub fn remove(dir: &Path) {
    if verify(dir).is_err() {
        return;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if fs::symlink_metadata(&p)
                .map(|m| !m.is_dir())
                .unwrap_or(false)
            {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Our session directories with their markers (live or not).
pub fn list() -> Vec<(PathBuf, Marker)> {
    let Ok(rd) = fs::read_dir(base()) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str()?.to_string();
            valid_id(name.strip_prefix(PREFIX)?).then_some(())?;
            verify(&p).ok()?;
            Some((p.clone(), read_marker(&p)?))
        })
        .collect()
}

/// Removes stale session directories (ours, marked, agent dead) and stale
/// copies of the binary in any of `bin_bases` (ours, private, holding only
/// the binary and its owner file, run from by no live agent and unused for
/// `BIN_STALE`). Returns how many.
pub fn sweep() -> usize {
    let mut n = 0;
    let mut in_use = std::collections::BTreeSet::new();
    for (dir, m) in list() {
        if !alive(m.pid) {
            remove(&dir);
            n += 1;
        } else if let Some(b) = m.bin {
            in_use.insert(PathBuf::from(b));
        }
    }
    let copies = bin_bases()
        .into_iter()
        .filter_map(|b| fs::read_dir(b).ok())
        .flat_map(|rd| rd.flatten());
    for e in copies {
        let p = e.path();
        let named = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(valid_bin_name);
        if !named || in_use.contains(&p) || verify(&p).is_err() {
            continue;
        }
        let stale = fs::symlink_metadata(&p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > BIN_STALE));
        let only_binary = fs::read_dir(&p).is_ok_and(|rd| {
            rd.flatten().all(|f| {
                (f.file_name() == "syncoid-rsync" || f.file_name() == BIN_OWNER)
                    && fs::symlink_metadata(f.path()).is_ok_and(|m| m.is_file())
            })
        });
        if stale && only_binary {
            remove(&p);
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths_are_checked() {
        assert!(valid_id("0123456789abcdef"));
        assert!(!valid_id("0123456789abcdeF"));
        assert!(!valid_id("../../etc"));
        assert!(open("/etc").is_err());
        assert!(open("/tmp/syncoid-rsync-../x").is_err());
        assert!(open("/tmp/other-0123456789abcdef").is_err());
    }
}
