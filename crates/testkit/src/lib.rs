//! Test fixtures shared by the workspace's integration tests.
//!
//! - [`Host`]: an emulated ZFS host: a private `FAKEZFS_ROOT`, a `bin/` with
//!   `zfs`/`zpool` links to the emulator, helpers to run zfs and read files.
//! - [`Sshd`]: a real OpenSSH `sshd` on 127.0.0.1 whose sessions see one
//!   `Host`'s emulator, stopped by pid when dropped.
//! - [`Netlab`]: ../shared/netlab in host mode: a far host's sshd behind a
//!   veth pair in a network namespace, with a link the test cuts and heals.
//!
//! Nothing here talks to anything but loopback, addresses inside network
//! namespaces it made, and its own temp dirs.

mod host;
mod netlab;
mod sshd;

pub use host::{fakezfs_bin, latency_bin, tamper_bin, Host, Zfs};
pub use netlab::{netlab_dir, Netlab};
pub use sshd::Sshd;

/// Debian's syncoid 2.1: `$SYNCOID_BIN`, the copy unpacked by
/// scripts/install-test-deps.sh, or the sanoid package's.
pub fn syncoid_bin() -> std::path::PathBuf {
    let candidates = [
        std::env::var("SYNCOID_BIN").unwrap_or_default(),
        "/opt/sanoid/usr/sbin/syncoid".into(),
        "/usr/sbin/syncoid".into(),
    ];
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("syncoid 2.1 not found: run scripts/install-test-deps.sh")
}
