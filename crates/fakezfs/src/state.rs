//! The emulator's persistent state: pools, datasets, snapshots, bookmarks.
//!
//! Everything lives under `FAKEZFS_ROOT`: `state.json` (this model), `lock`
//! (an flock that serialises writers, as the kernel serialises txgs),
//! `manifests/` and `blobs/` (snapshot contents, see `tree`), `partial/`
//! (resumable receive state) and `mnt/` (the mounted filesystems). It does not
//! own file contents or streams.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use crate::fail::{Fail, Res};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synthetic {
    pub size: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Local,
    Received,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropVal {
    pub value: String,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub guid: u64,
    pub size: u64,
    pub creation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    pub creation: u64,
    pub manifest: String,
    pub synthetic: Option<Synthetic>,
    #[serde(default)]
    pub holds: BTreeMap<String, u64>,
    #[serde(default)]
    pub props: BTreeMap<String, PropVal>,
    /// Bytes that differ from the previous snapshot (the `written` property).
    pub written: u64,
    pub referenced: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bookmark {
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    pub creation: u64,
    /// Kept so an incremental from a bookmark can be computed; real ZFS keeps
    /// only the txg and reads the blocks born after it.
    pub manifest: String,
    pub synthetic: Option<Synthetic>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Encryption {
    pub root: String,
    pub keyformat: String,
    pub key_loaded: bool,
}

/// A receive interrupted under `-s`: what a resume must continue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Partial {
    pub toguid: u64,
    pub toname: String,
    pub fromguid: u64,
    /// Payload bytes received and verified so far.
    pub offset: u64,
    /// The stream header of the interrupted receive, as JSON.
    pub header: String,
    /// File under `partial/` holding the received ops bytes.
    pub ops_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    pub guid: u64,
    pub createtxg: u64,
    pub creation: u64,
    #[serde(default)]
    pub volume: bool,
    pub origin: Option<String>,
    #[serde(default)]
    pub props: BTreeMap<String, PropVal>,
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    #[serde(default)]
    pub bookmarks: Vec<Bookmark>,
    pub synthetic: Option<Synthetic>,
    pub partial: Option<Partial>,
    /// Exists only to hold a partial receive of a new filesystem.
    #[serde(default)]
    pub inconsistent: bool,
    pub mounted: bool,
    pub encryption: Option<Encryption>,
}

impl Dataset {
    pub fn snapshot(&self, name: &str) -> Option<&Snapshot> {
        self.snapshots.iter().find(|s| s.name == name)
    }
    pub fn snapshot_mut(&mut self, name: &str) -> Option<&mut Snapshot> {
        self.snapshots.iter_mut().find(|s| s.name == name)
    }
    pub fn bookmark(&self, name: &str) -> Option<&Bookmark> {
        self.bookmarks.iter().find(|b| b.name == name)
    }
    pub fn latest(&self) -> Option<&Snapshot> {
        self.snapshots.last()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub txg: u64,
    pub pools: BTreeMap<String, Pool>,
    pub datasets: BTreeMap<String, Dataset>,
}

impl State {
    pub fn next_txg(&mut self) -> u64 {
        self.txg += 1;
        self.txg
    }

    pub fn ds(&self, name: &str) -> Option<&Dataset> {
        self.datasets.get(name)
    }

    /// Names of `name`'s descendants (not `name` itself), sorted.
    pub fn descendants(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}/");
        self.datasets
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The snapshot `fs@snap`, if both exist.
    pub fn snap(&self, full: &str) -> Option<(&Dataset, &Snapshot)> {
        let (fs, s) = full.split_once('@')?;
        let d = self.ds(fs)?;
        Some((d, d.snapshot(s)?))
    }

    /// Clones whose origin is `fs@snap`.
    pub fn clones_of(&self, full_snap: &str) -> Vec<String> {
        self.datasets
            .iter()
            .filter(|(_, d)| d.origin.as_deref() == Some(full_snap))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The directory tree behind one `FAKEZFS_ROOT`.
pub struct Store {
    pub root: PathBuf,
}

pub struct Lock {
    _file: fs::File,
}

impl Store {
    pub fn from_env() -> Res<Store> {
        let root = std::env::var_os("FAKEZFS_ROOT")
            .ok_or_else(|| Fail::new(1, "fakezfs: FAKEZFS_ROOT is not set"))?;
        let root = PathBuf::from(root);
        for sub in ["manifests", "blobs", "partial", "mnt"] {
            fs::create_dir_all(root.join(sub))
                .map_err(|e| Fail::new(1, format!("fakezfs: cannot create {sub}: {e}")))?;
        }
        Ok(Store { root })
    }

    pub fn mount_base(&self) -> PathBuf {
        std::env::var_os("FAKEZFS_MOUNT_BASE")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("mnt"))
    }

    pub fn lock(&self) -> Res<Lock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))
            .map_err(|e| Fail::new(1, format!("fakezfs: lock: {e}")))?;
        // SAFETY: flock on a file descriptor we own; released when `file` drops.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(Fail::new(1, "fakezfs: flock failed"));
        }
        Ok(Lock { _file: file })
    }

    pub fn load(&self) -> Res<State> {
        match fs::read(self.root.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Fail::new(1, format!("fakezfs: corrupt state.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Fail::new(1, format!("fakezfs: read state: {e}"))),
        }
    }

    pub fn save(&self, st: &State) -> Res<()> {
        let tmp = self.root.join(format!("state.json.{}", std::process::id()));
        let bytes = serde_json::to_vec(st).expect("state serialises");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            fs::rename(&tmp, self.root.join("state.json"))
        };
        write().map_err(|e| Fail::new(1, format!("fakezfs: write state: {e}")))
    }

    /// Runs `f` on the state under the lock and saves what it leaves.
    pub fn transact<T>(&self, f: impl FnOnce(&mut State) -> Res<T>) -> Res<T> {
        let _lock = self.lock()?;
        let mut st = self.load()?;
        let out = f(&mut st);
        self.save(&st)?;
        out
    }

    /// A consistent read of the state.
    pub fn read(&self) -> Res<State> {
        let _lock = self.lock()?;
        self.load()
    }

    pub fn partial_path(&self, file: &str) -> PathBuf {
        self.root.join("partial").join(file)
    }

    /// Where `name` is mounted: its own `mountpoint` property, or its
    /// parent's mountpoint plus its last component, as ZFS inherits it.
    pub fn mountpoint(&self, st: &State, name: &str) -> PathBuf {
        if let Some(p) = st
            .datasets
            .get(name)
            .and_then(|d| d.props.get("mountpoint"))
        {
            return PathBuf::from(&p.value);
        }
        match name.rsplit_once('/') {
            Some((parent, last)) => self.mountpoint(st, parent).join(last),
            None => self.mount_base().join(name),
        }
    }
}

/// The clock for creation times; `FAKEZFS_NOW=EPOCH` sets it (to test
/// snapshots whose creation times are out of order, as after a clock jump).
pub fn now() -> u64 {
    if let Some(t) = std::env::var("FAKEZFS_NOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh 64-bit guid (never 0).
pub fn new_guid() -> u64 {
    let mut buf = [0u8; 8];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    let g = u64::from_le_bytes(buf);
    if g == 0 {
        1
    } else {
        g
    }
}
