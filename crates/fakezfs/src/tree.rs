//! Filesystem contents: capture a mounted directory into a manifest, store
//! file bodies as content-addressed blobs, and make a directory equal a
//! manifest again. Snapshots, rollbacks and receives all go through here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::fail::{Fail, Res};
use crate::state::Store;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, size: u64, hash: String },
    Symlink { target: String },
}

impl Entry {
    pub fn size(&self) -> u64 {
        match self {
            Entry::File { size, .. } => *size,
            _ => 0,
        }
    }
}

/// Relative path -> entry, sorted so parents come before children.
pub type Manifest = BTreeMap<String, Entry>;

fn io(what: &str, p: &Path, e: std::io::Error) -> Fail {
    Fail::new(1, format!("fakezfs: {what} {}: {e}", p.display()))
}

/// Reads `dir` into a manifest; with `store_blobs`, file bodies are copied
/// into the blob store (a snapshot), otherwise only hashed (a comparison).
pub fn capture(store: &Store, dir: &Path, store_blobs: bool) -> Res<Manifest> {
    let mut m = Manifest::new();
    if dir.exists() {
        walk(store, dir, "", store_blobs, &mut m)?;
    }
    Ok(m)
}

fn walk(store: &Store, dir: &Path, rel: &str, blobs: bool, m: &mut Manifest) -> Res<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io("read", dir, e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = path.symlink_metadata().map_err(|e| io("stat", &path, e))?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let t = fs::read_link(&path).map_err(|e| io("readlink", &path, e))?;
            m.insert(
                r,
                Entry::Symlink {
                    target: t.to_string_lossy().into_owned(),
                },
            );
        } else if meta.is_dir() {
            m.insert(r.clone(), Entry::Dir { mode });
            walk(store, &path, &r, blobs, m)?;
        } else if meta.is_file() {
            let data = fs::read(&path).map_err(|e| io("read", &path, e))?;
            let hash = blake3::hash(&data).to_hex().to_string();
            if blobs {
                put_blob(store, &hash, &data)?;
            }
            let size = data.len() as u64;
            m.insert(r, Entry::File { mode, size, hash });
        }
    }
    Ok(())
}

pub fn put_blob(store: &Store, hash: &str, data: &[u8]) -> Res<()> {
    let p = store.root.join("blobs").join(hash);
    if !p.exists() {
        let tmp = store
            .root
            .join("blobs")
            .join(format!(".{hash}.{}", std::process::id()));
        fs::write(&tmp, data).map_err(|e| io("write", &tmp, e))?;
        fs::rename(&tmp, &p).map_err(|e| io("rename", &p, e))?;
    }
    Ok(())
}

pub fn get_blob(store: &Store, hash: &str) -> Res<Vec<u8>> {
    let p = store.root.join("blobs").join(hash);
    fs::read(&p).map_err(|e| io("read blob", &p, e))
}

/// Stores a manifest and returns its id (the hash of its JSON).
pub fn put_manifest(store: &Store, m: &Manifest) -> Res<String> {
    let json = serde_json::to_vec(m).expect("manifest serialises");
    let id = blake3::hash(&json).to_hex()[..32].to_string();
    put_file(store, "manifests", &id, &json)?;
    Ok(id)
}

fn put_file(store: &Store, sub: &str, id: &str, data: &[u8]) -> Res<()> {
    let p = store.root.join(sub).join(id);
    if !p.exists() {
        let tmp = store
            .root
            .join(sub)
            .join(format!(".{id}.{}", std::process::id()));
        fs::write(&tmp, data).map_err(|e| io("write", &tmp, e))?;
        fs::rename(&tmp, &p).map_err(|e| io("rename", &p, e))?;
    }
    Ok(())
}

pub fn get_manifest(store: &Store, id: &str) -> Res<Manifest> {
    let p = store.root.join("manifests").join(id);
    let bytes = fs::read(&p).map_err(|e| io("read manifest", &p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Fail::new(1, format!("fakezfs: manifest {id}: {e}")))
}

pub fn total_size(m: &Manifest) -> u64 {
    m.values().map(Entry::size).sum()
}

/// Bytes in `to` that are not the same in `from`.
pub fn changed_size(from: &Manifest, to: &Manifest) -> u64 {
    to.iter()
        .filter(|(k, v)| from.get(*k) != Some(v))
        .map(|(_, v)| v.size())
        .sum()
}

/// Makes `dir` hold exactly `m`: removes what `m` lacks, writes what differs.
pub fn materialize(store: &Store, dir: &Path, m: &Manifest) -> Res<()> {
    fs::create_dir_all(dir).map_err(|e| io("mkdir", dir, e))?;
    let current = capture(store, dir, false)?;
    // Children sort after parents, so remove in reverse order.
    for (rel, entry) in current.iter().rev() {
        if m.get(rel) != Some(entry) {
            let p = dir.join(rel);
            let r = match entry {
                Entry::Dir { .. } if matches!(m.get(rel), Some(Entry::Dir { .. })) => Ok(()),
                Entry::Dir { .. } => fs::remove_dir_all(&p),
                _ => fs::remove_file(&p),
            };
            r.map_err(|e| io("remove", &p, e))?;
        }
    }
    for (rel, entry) in m {
        let p = dir.join(rel);
        if current.get(rel) == Some(entry) {
            continue;
        }
        match entry {
            Entry::Dir { mode } => {
                fs::create_dir_all(&p).map_err(|e| io("mkdir", &p, e))?;
                set_mode(&p, *mode)?;
            }
            Entry::File { mode, hash, .. } => {
                let data = get_blob(store, hash)?;
                fs::write(&p, data).map_err(|e| io("write", &p, e))?;
                set_mode(&p, *mode)?;
            }
            Entry::Symlink { target } => {
                symlink(target, &p).map_err(|e| io("symlink", &p, e))?;
            }
        }
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Res<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", p, e))
}
