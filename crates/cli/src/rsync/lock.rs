//! One `--rsync` run per transfer on this machine. A transfer of days
//! outlives the interval of the cron job that started it; the next run
//! would find the live agents and re-attach to them, and two coordinators
//! would take the agents' connections from each other for the rest of the
//! transfer. The run replicating a dataset pair holds a lock named by its
//! transfer key; a second run finds it held and reports the dataset busy,
//! as syncoid does when a zfs receive is running. The lock is an `flock`,
//! which ends with its process however it ends: a rerun after a killed
//! coordinator takes it at once and re-attaches.
//!
//! The lock files live in `<tmp>/syncoid-rsync-locks-<uid>/` (0700, ours,
//! never through a symlink), hold the owner's pid, and are removed by
//! their owner at the end; so is the directory once empty. A killed run's
//! file (held by no one) is removed by the next run that takes a lock.

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use syncoid_rsync_core::wire::Owner;

/// A held lock; released (and its file removed) on drop.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

/// Why a lock was not taken.
#[derive(Debug)]
pub enum Refused {
    /// Another live run holds it (its pid, when it wrote one).
    Held(Option<u32>),
    /// The lock directory or file cannot be used safely.
    Unsafe(String),
}

/// The threads of one run (`--jobs`) take and drop their locks one at a
/// time: a thread's sweep holds another's fresh lock file for a moment,
/// which must not make that one look held by another run, and a drop
/// removes the directory when it is empty, which must not happen between
/// another thread's making it and locking a file in it.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    crate::lock(&TAKING)
}

fn dir_in(base: &Path) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    base.join(format!("syncoid-rsync-locks-{uid}"))
}

/// This run as the agents see it (`ownership`). Its domain is where the
/// lock is exclusive: this boot of this machine (a rebooted machine runs
/// none of its old runs; cloned machines differ in boot id), its name (a
/// container shares the boot id with its host), the user and the lock
/// directory. So a later run of the same domain may take a transfer's
/// agents over at once: holding the lock, it knows the earlier run ended.
pub fn owner() -> &'static Owner {
    static OWNER: std::sync::OnceLock<Owner> = std::sync::OnceLock::new();
    OWNER.get_or_init(|| {
        let host = crate::config::hostname();
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let dir = dir_in(&super::session::base());
        let domain = blake3::hash(format!("{host}\0{}\0{}", boot.trim(), dir.display()).as_bytes());
        Owner {
            domain: domain.to_hex()[..24].to_string(),
            run: u64::from_str_radix(&super::session::random_id(), 16).unwrap_or(0),
            label: format!("syncoid-rsync on {host} (pid {})", std::process::id()),
        }
    })
}

/// Takes the lock of transfer `key` (hex, from `coordinator::key`), beside
/// the session directories.
pub fn take(key: &str) -> Result<Lock, Refused> {
    take_in(&super::session::base(), key)
}

fn take_in(base: &Path, key: &str) -> Result<Lock, Refused> {
    let _one = one_at_a_time();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refused::Unsafe(format!("not a transfer key: {key:?}")));
    }
    let dir = dir_in(base);
    // A removal by another run's end can race with us: try again then.
    const ATTEMPTS: usize = 8;
    for attempt in 0..ATTEMPTS {
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Refused::Unsafe(format!(
                    "cannot create {}: {e}",
                    dir.display()
                )))
            }
        }
        if let Err(e) = super::session::verify(&dir) {
            // Removed by another run's end since we made it: again.
            if fs::symlink_metadata(&dir).is_err() {
                continue;
            }
            return Err(Refused::Unsafe(e));
        }
        sweep(&dir, key);
        let path = dir.join(key);
        let file = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Refused::Unsafe(format!(
                    "cannot open {}: {e}",
                    path.display()
                )))
            }
        };
        if file.try_lock().is_err() {
            match holder(&file) {
                // No pid (yet): another run's sweep holds it for a moment,
                // or its taker has not written its pid: look again.
                None if attempt + 1 < ATTEMPTS => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                pid => return Err(Refused::Held(pid)),
            }
        }
        // The file may have been removed by the run that held it, between
        // our open and our lock: then this lock guards nothing.
        let same = fs::symlink_metadata(&path)
            .ok()
            .zip(file.metadata().ok())
            .is_some_and(|(p, f)| p.ino() == f.ino() && p.dev() == f.dev());
        if !same {
            continue;
        }
        let mut lock = Lock { file, path };
        lock.write_pid();
        return Ok(lock);
    }
    Err(Refused::Unsafe(format!(
        "cannot take a lock in {}: it keeps changing",
        dir.display()
    )))
}

/// Removes the lock files of runs that ended without removing theirs (a
/// killed coordinator): those no process holds. `keep` is ours to take.
fn sweep(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == keep || name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let path = dir.join(&name);
        let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        if file.try_lock().is_ok() {
            // Held by us now, so nobody else can be using it; a run that
            // opened it before the removal sees another file when it checks.
            let _ = fs::remove_file(&path);
        }
    }
}

fn holder(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

impl Lock {
    fn write_pid(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = writeln!(self.file, "{}", std::process::id());
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _one = one_at_a_time();
        // Removed while still held, so no other run can have taken it.
        let _ = fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The threads of a `--jobs` run take and drop locks of their own
    /// transfers at the same time: none is ever refused.
    #[test]
    fn threads_of_one_run_never_see_each_others_locks_as_held() {
        let tmp = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let base = tmp.path();
                s.spawn(move || {
                    for i in 0..200 {
                        let key = format!("{t:x}{i:03x}");
                        let lock =
                            take_in(base, &key).unwrap_or_else(|e| panic!("{key} refused: {e:?}"));
                        drop(lock);
                    }
                });
            }
        });
    }

    #[test]
    fn one_run_holds_a_transfer_and_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let take = |key: &str| take_in(tmp.path(), key);
        {
            let first = take("00ff").expect("free");
            match take("00ff") {
                Err(Refused::Held(pid)) => assert_eq!(pid, Some(std::process::id())),
                other => panic!("taken twice: {other:?}"),
            }
            // Another transfer is another lock.
            let other = take("0abc").expect("another key");
            drop(other);
            drop(first);
            let again = take("00ff").expect("free again");
            drop(again);
            assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "left behind");
        }
    }

    #[test]
    fn a_lock_of_a_process_that_ended_is_free() {
        let tmp = tempfile::tempdir().unwrap();
        let take = |key: &str| take_in(tmp.path(), key);
        {
            // A child holds the lock through an inherited descriptor, then
            // ends without removing anything (as a SIGKILLed run would).
            let lock = take("0123").expect("free");
            let fd = lock.file.as_raw_fd();
            // SAFETY: fork in a test; the child only sleeps and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: the child keeps its copy of the descriptor (an
                // flock belongs to the open file) and exits without
                // running destructors.
                unsafe {
                    libc::sleep(1);
                    libc::_exit(0);
                }
            }
            std::mem::forget(lock);
            // SAFETY: our descriptor: the child's copy still holds the lock.
            unsafe { libc::close(fd) };
            assert!(matches!(take("0123"), Err(Refused::Held(_))));
            let mut status = 0;
            // SAFETY: waiting for the child we forked.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            // Another transfer's run removes the stale file.
            drop(take("0456").expect("another key"));
            assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "left behind");
            let lock = take("0123").expect("free once its holder ended");
            drop(lock);
        }
    }

    #[test]
    fn a_symlinked_or_foreign_lock_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let take = |key: &str| take_in(tmp.path(), key);
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir_in(tmp.path())).unwrap();
        assert!(matches!(take("00ff"), Err(Refused::Unsafe(_))));
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        fs::remove_file(dir_in(tmp.path())).unwrap();
        assert!(matches!(take("../x"), Err(Refused::Unsafe(_))));
    }
}
