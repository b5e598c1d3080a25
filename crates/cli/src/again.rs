//! `--rsync` mode: an ssh call around the transfer (a listing, a snapshot,
//! pruning) whose connection fails is tried again, as the transfer is,
//! until the inactivity timeout. Only calls that are safe to repeat are:
//! reads, and changes whose repeat either does the change or fails with a
//! message that says the wanted state is there already (the try whose
//! answer was lost made it). A host that never answered in this run is not
//! waited for: a wrong address or port is an error at once.

use std::collections::HashSet;
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::output::Out;

/// The wait between tries (250 ms doubling to 2 s), the same as the
/// transfer's between rounds.
pub use syncoid_rsync_core::session::coordinator::Backoff;

/// Sleeps `backoff`'s current wait and doubles its next.
pub fn sleep(backoff: &mut Backoff) {
    std::thread::sleep(backoff.take());
}

/// What a command is, for trying it again after its connection failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// Reads only: tried again as it is.
    Read,
    /// Makes a change, and running it twice ends in the same state. If
    /// the try whose answer was lost made it, the next one fails with one
    /// of these messages: that failure is the success the first one had.
    Change(&'static [&'static str]),
    /// Not tried again.
    Never,
}

/// Whether one of `args` is a cluster of short flags holding `flag` (`-nvP`).
fn has_flag(args: &[&str], flag: char) -> bool {
    args.iter()
        .any(|a| a.starts_with('-') && !a.starts_with("--") && a[1..].contains(flag))
}

/// The kind of a command run on a host: zfs and zpool by their verb,
/// `ps`; anything else is never tried again (callers that know their
/// script only reads say so with `Host::run_read`).
pub fn kind(stages: &[Vec<String>]) -> Kind {
    let [argv] = stages else {
        return Kind::Never;
    };
    let words: Vec<&str> = argv
        .iter()
        .map(String::as_str)
        .skip_while(|w| *w == "sudo" || *w == "-n")
        .collect();
    match words.as_slice() {
        ["ps", ..] => Kind::Read,
        ["zpool", "list" | "get", ..] => Kind::Read,
        ["zfs", "list" | "get", ..] => Kind::Read,
        // Dry runs: an estimate, the list of what a destroy would remove.
        ["zfs", "send" | "destroy", rest @ ..] if has_flag(rest, 'n') => Kind::Read,
        ["zfs", "snapshot", ..] => Kind::Change(&["dataset already exists"]),
        ["zfs", "destroy", ..] => Kind::Change(&[
            "could not find any snapshots to destroy",
            "dataset does not exist",
        ]),
        ["zfs", "bookmark", ..] => Kind::Change(&["bookmark exists"]),
        ["zfs", "hold", ..] => Kind::Change(&["tag already exists"]),
        ["zfs", "release", ..] => Kind::Change(&["no such tag"]),
        ["zfs", "receive" | "recv", rest @ ..] if has_flag(rest, 'A') => {
            Kind::Change(&["does not have any resumable receive state"])
        }
        ["zfs", "rollback" | "set" | "inherit", ..] => Kind::Change(&[]),
        _ => Kind::Never,
    }
}

/// Whether ssh itself failed (its own status 255) in a way a working link
/// would not fix: authentication, a changed host key.
fn permanent(stderr: &str) -> bool {
    [
        "Permission denied",
        "Host key verification failed",
        "Too many authentication failures",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// How ssh calls are tried again (`--rsync` only): for how long, where
/// warnings go, and which hosts answered in this run.
#[derive(Debug)]
pub struct Policy {
    pub patience: Duration,
    pub out: Out,
    reached: Mutex<HashSet<String>>,
}

impl Policy {
    pub fn new(patience: Duration, out: Out) -> Policy {
        Policy {
            patience,
            out,
            reached: Mutex::new(HashSet::new()),
        }
    }

    fn reached(&self, dest: &str) -> bool {
        self.reached.lock().expect("reached").contains(dest)
    }

    fn answered(&self, dest: &str) {
        self.reached
            .lock()
            .expect("reached")
            .insert(dest.to_string());
    }

    /// Runs `once` (one ssh call of `kind` to `dest`, shown as `what`)
    /// and tries again while its connection fails, as the policy allows.
    /// The last failure is returned as it is when no try is left.
    pub fn run<E>(
        &self,
        dest: &str,
        what: &str,
        kind: &Kind,
        mut once: impl FnMut() -> Result<Output, E>,
    ) -> Result<Output, E> {
        let deadline = Instant::now() + self.patience;
        let mut backoff = Backoff::default();
        let mut lost = false;
        let mut warned: Option<Instant> = None;
        loop {
            let mut out = once()?;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.code() != Some(255) {
                self.answered(dest);
                if let (true, false, Kind::Change(done)) = (lost, out.status.success(), kind) {
                    if done.iter().any(|d| stderr.contains(d)) {
                        self.out.warn(&format!(
                            "on {dest}: `{what}` was done by the try whose answer was lost ({})",
                            stderr.trim()
                        ));
                        return Ok(succeeded());
                    }
                }
                return Ok(out);
            }
            let give_up = *kind == Kind::Never
                || !self.reached(dest)
                || permanent(&stderr)
                || Instant::now() + backoff.wait() > deadline;
            if give_up {
                if lost {
                    out.stderr.extend_from_slice(
                        format!(
                            "(connection lost; tried again for {}s, the inactivity timeout)\n",
                            self.patience.as_secs()
                        )
                        .as_bytes(),
                    );
                }
                return Ok(out);
            }
            // One warning, then one a minute while the outage lasts.
            if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                let why = stderr.lines().last().unwrap_or("").trim();
                self.out.warn(&format!(
                    "on {dest}: `{what}` lost its connection ({why}); trying again until it answers (at most {}s)",
                    self.patience.as_secs()
                ));
                warned = Some(Instant::now());
            }
            sleep(&mut backoff);
            lost = true;
        }
    }
}

/// The output of a command that succeeded and said nothing.
fn succeeded() -> Output {
    use std::os::unix::process::ExitStatusExt;
    Output {
        status: std::process::ExitStatus::from_raw(0),
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn argv(line: &str) -> Vec<Vec<String>> {
        vec![line.split(' ').map(String::from).collect()]
    }

    #[test]
    fn only_reads_and_repeatable_changes_are_tried_again() {
        for read in [
            "zfs list -H -p -t snapshot src/data",
            "sudo -n zfs get -H receive_resume_token dst/data",
            "zfs send -nvP -I src/data@a src/data@b",
            "zfs destroy -r -n -v dst/data",
            "zpool list -H -o name",
            "ps -Ao args=",
        ] {
            assert_eq!(kind(&argv(read)), Kind::Read, "{read}");
        }
        for (change, done) in [
            ("zfs snapshot src/data@syncoid_x", "dataset already exists"),
            (
                "sudo zfs destroy dst/data@a,b",
                "could not find any snapshots to destroy",
            ),
            ("zfs destroy -r dst/data", "dataset does not exist"),
            ("zfs hold syncoid-x src/data@a", "tag already exists"),
            ("zfs release syncoid-x src/data@a", "no such tag"),
            (
                "zfs receive -A dst/data",
                "does not have any resumable receive state",
            ),
            ("zfs bookmark src/data@a src/data#a", "bookmark exists"),
        ] {
            match kind(&argv(change)) {
                Kind::Change(msgs) => assert!(msgs.contains(&done), "{change}"),
                k => panic!("{change}: {k:?}"),
            }
        }
        assert_eq!(kind(&argv("zfs rollback -R dst/data@a")), Kind::Change(&[]));
        for never in [
            "zfs send -I src/data@a src/data@b",
            "zfs receive -s dst/data",
            "sh -c rm -f x",
            "syncoid-rsync agent stop /tmp/x",
            "zfs create dst/new",
        ] {
            assert_eq!(kind(&argv(never)), Kind::Never, "{never}");
        }
        let piped = vec![argv("zfs list")[0].clone(), argv("cat")[0].clone()];
        assert_eq!(kind(&piped), Kind::Never);
    }

    fn output(code: i32, stderr: &str) -> Output {
        Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: b"out".to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    fn quiet() -> Out {
        Out {
            quiet: true,
            debug: false,
            json: false,
        }
    }

    /// Runs `answers` in turn through the policy; how many were used.
    fn tries(p: &Policy, k: &Kind, answers: &[Output]) -> (Output, usize) {
        let mut used = 0;
        let out = p
            .run::<()>("h", "zfs x", k, || {
                used += 1;
                Ok(answers[used - 1].clone())
            })
            .unwrap();
        (out, used)
    }

    const LOST: &str = "ssh: connect to host h port 22: Connection refused\n";

    #[test]
    fn a_lost_connection_is_tried_again_once_the_host_answered() {
        let p = Policy::new(Duration::from_secs(60), quiet());
        // Never answered in this run: a wrong address is an error at once.
        let (out, used) = tries(&p, &Kind::Read, &[output(255, LOST), output(0, "")]);
        assert_eq!((out.status.code(), used), (Some(255), 1));
        let (out, used) = tries(&p, &Kind::Read, &[output(0, "")]);
        assert_eq!((out.status.code(), used), (Some(0), 1));
        // Answered before: tried until it answers, its answer kept.
        let (out, used) = tries(
            &p,
            &Kind::Read,
            &[
                output(255, LOST),
                output(255, LOST),
                output(1, "no such pool"),
            ],
        );
        assert_eq!((out.status.code(), used), (Some(1), 3));
        assert_eq!(out.stderr, b"no such pool");
        // Never tried again: not safe to repeat, or a refusal.
        let (_, used) = tries(&p, &Kind::Never, &[output(255, LOST), output(0, "")]);
        assert_eq!(used, 1);
        let denied = "root@h: Permission denied (publickey).\n";
        let (_, used) = tries(&p, &Kind::Read, &[output(255, denied), output(0, "")]);
        assert_eq!(used, 1);
    }

    #[test]
    fn a_change_whose_answer_was_lost_counts_as_done_by_its_repeats_refusal() {
        let p = Policy::new(Duration::from_secs(60), quiet());
        tries(&p, &Kind::Read, &[output(0, "")]);
        let snapshot = kind(&argv("zfs snapshot src/data@s"));
        let exists = "cannot create snapshot 'src/data@s': dataset already exists\n";
        let (out, used) = tries(&p, &snapshot, &[output(255, LOST), output(1, exists)]);
        assert_eq!((out.status.success(), used), (true, 2));
        // The same refusal without a lost try is a real failure.
        let (out, _) = tries(&p, &snapshot, &[output(1, exists)]);
        assert_eq!(out.status.code(), Some(1));
        // Any other failure of the repeat stays a failure.
        let (out, _) = tries(
            &p,
            &snapshot,
            &[output(255, LOST), output(1, "out of space")],
        );
        assert_eq!(out.status.code(), Some(1));
    }

    #[test]
    fn tries_end_at_the_inactivity_timeout_with_the_last_failure() {
        let p = Policy::new(Duration::from_millis(600), quiet());
        tries(&p, &Kind::Read, &[output(0, "")]);
        let t = Instant::now();
        let (out, used) = tries(&p, &Kind::Read, &vec![output(255, LOST); 10]);
        assert_eq!(out.status.code(), Some(255));
        // A wait of 0.25 s fits in 0.6 s; the next, 0.5 s, would not.
        assert_eq!(used, 2);
        assert!(t.elapsed() < Duration::from_secs(2));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Connection refused"), "{text}");
        assert!(text.contains("the inactivity timeout"), "{text}");
    }
}
