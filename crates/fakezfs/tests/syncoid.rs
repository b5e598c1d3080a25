//! A real client through the emulator: Debian's syncoid 2.1 replicates
//! (full, incremental, resume after an interrupted receive) locally and
//! through a real sshd, and the target ends up with the source's files and
//! snapshots.

use std::process::Command;
use syncoid_rsync_testkit::{syncoid_bin, Host, Sshd, Zfs};

fn syncoid(local: &Host, args: &[&str]) -> Zfs {
    let out = Command::new(syncoid_bin())
        .args(args)
        .envs(local.envs())
        .output()
        .expect("run syncoid");
    let z = Zfs {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        status: out.status.code().unwrap_or(-1),
    };
    assert_eq!(z.status, 0, "syncoid failed:\n{}\n{}", z.stdout, z.stderr);
    z
}

fn source() -> Host {
    let h = Host::new(&["src", "dst"]);
    h.zfs(&["create", "src/data"]).ok();
    h.write(
        "src/data",
        "big",
        &(0..20_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    h.write("src/data", "d/small", b"hello");
    h.zfs(&["snapshot", "src/data@first"]).ok();
    h
}

fn sync_snaps(snaps: &[String]) -> Vec<&String> {
    snaps.iter().filter(|s| s.starts_with("syncoid_")).collect()
}

#[test]
fn syncoid_full_incremental_and_resume_locally() {
    let h = source();
    syncoid(&h, &["--compress=none", "src/data", "dst/data"]);
    assert_eq!(h.files("dst/data"), h.files("src/data"));
    let dst = h.snapshots("dst/data");
    assert_eq!(dst[0], "first");
    assert_eq!(sync_snaps(&dst).len(), 1, "{dst:?}");
    for (name, guid) in h.snapshot_guids("dst/data") {
        assert_eq!(h.snapshot_guids("src/data")[&name], guid);
    }

    h.write("src/data", "d/later", b"incremental");
    std::thread::sleep(std::time::Duration::from_secs(1));
    syncoid(&h, &["src/data", "dst/data"]);
    assert_eq!(h.read("dst/data", "d/later").unwrap(), b"incremental");
    let dst = h.snapshots("dst/data");
    assert_eq!(
        sync_snaps(&dst).len(),
        1,
        "old sync snapshot pruned: {dst:?}"
    );

    // syncoid's own resume recipe: an interrupted receive, then syncoid.
    h.zfs(&["snapshot", "src/data@second"]).ok();
    h.sh("zfs send src/data@first | head --bytes=8M | zfs receive -s dst/resumed");
    assert!(h
        .get("receive_resume_token", "dst/resumed")
        .starts_with("1-"));
    syncoid(&h, &["--compress=none", "src/data", "dst/resumed"]);
    assert_eq!(h.get("receive_resume_token", "dst/resumed"), "-");
    assert_eq!(h.files("dst/resumed"), h.files("src/data"));
    let resumed = h
        .log()
        .iter()
        .any(|e| e["argv"][0] == "send" && e["argv"][1] == "-t");
    assert!(resumed, "syncoid resumed with zfs send -t");
}

#[test]
fn syncoid_push_and_pull_through_real_sshd() {
    let src = source();
    let remote = Host::new(&["backup"]);
    let sshd = Sshd::start(&remote);
    let ssh = sshd.syncoid_args();
    let mut args: Vec<&str> = ssh.iter().map(String::as_str).collect();
    args.extend(["src/data", "root@127.0.0.1:backup/data"]);
    syncoid(&src, &args);
    assert_eq!(remote.files("backup/data"), src.files("src/data"));
    assert_eq!(remote.snapshot_guids("backup/data").len(), 2);

    src.write("src/data", "pushed-later", b"x");
    syncoid(&src, &args);
    assert_eq!(remote.read("backup/data", "pushed-later").unwrap(), b"x");

    // Pull it back to a third place on the local host.
    let mut args: Vec<&str> = ssh.iter().map(String::as_str).collect();
    args.extend(["root@127.0.0.1:backup/data", "dst/pulled"]);
    syncoid(&src, &args);
    assert_eq!(src.files("dst/pulled"), remote.files("backup/data"));

    // Resume through ssh: an interrupted push leaves a token on the remote,
    // and syncoid finishes it with zfs send -t.
    let ssh_line = sshd
        .ssh_opts()
        .iter()
        .map(|o| format!("'{o}'"))
        .collect::<Vec<_>>()
        .join(" ");
    src.sh(&format!(
        "zfs send src/data@first | head --bytes=8M | ssh {ssh_line} root@127.0.0.1 zfs receive -s backup/resumed"
    ));
    assert!(remote
        .get("receive_resume_token", "backup/resumed")
        .starts_with("1-"));
    let mut args: Vec<&str> = ssh.iter().map(String::as_str).collect();
    args.extend([
        "--compress=none",
        "src/data",
        "root@127.0.0.1:backup/resumed",
    ]);
    syncoid(&src, &args);
    assert_eq!(remote.get("receive_resume_token", "backup/resumed"), "-");
    assert_eq!(remote.files("backup/resumed"), src.files("src/data"));
    assert!(src
        .log()
        .iter()
        .any(|e| e["argv"][0] == "send" && e["argv"][1] == "-t"));
}
