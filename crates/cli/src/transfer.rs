//! Running one send/receive pipeline: spawns each stage (local stages as
//! their own processes, a remote segment as one ssh), pipes them together,
//! drains every stderr, and reports the failing stage with its stderr.
//! The `METER` stage (where syncoid puts pv) runs in this process: a pump
//! that counts the stream for the progress display.

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::host::{CmdError, Host, Running, StderrTail};
use crate::progress::Progress;
use syncoid_rsync_core::argv::{Segment, Where, METER};

pub struct Hosts<'a> {
    pub source: &'a Host,
    pub target: &'a Host,
}

impl Hosts<'_> {
    fn of(&self, w: Where) -> &Host {
        match w {
            Where::Source => self.source,
            Where::Target => self.target,
            Where::Local => &Host::Local,
        }
    }
}

/// The unit that becomes one process: a local stage, or a remote segment.
fn units(segments: &[Segment], hosts: &Hosts) -> Vec<(Host, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    for seg in segments.iter().filter(|s| !s.stages.is_empty()) {
        let host = hosts.of(seg.at).clone();
        if host.is_remote() {
            out.push((host, seg.stages.clone()));
        } else {
            out.extend(seg.stages.iter().map(|st| (Host::Local, vec![st.clone()])));
        }
    }
    out
}

fn is_meter(stages: &[Vec<String>]) -> bool {
    stages.len() == 1 && stages[0].len() == 1 && stages[0][0] == METER
}

/// The pipeline as one line of text (for --dry-run and --debug); the
/// in-process meter is not a command and is left out.
pub fn describe(segments: &[Segment], hosts: &Hosts) -> String {
    units(segments, hosts)
        .iter()
        .filter(|(_, stages)| !is_meter(stages))
        .map(|(h, stages)| h.describe(stages))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// 1 MiB instead of 64 KiB between stages: 16 times fewer wake-ups per
/// byte, which matters when every core is busy encrypting or compressing.
pub fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ only changes the capacity of a pipe we own; a
    // failure (limit, not a pipe) leaves it as it was.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// Runs the pipeline to the end, showing progress through `progress` when
/// it has a meter stage; returns the bytes the meter counted (0 without).
/// On failure the error of the last failing process comes first (the
/// receiver's refusal explains a sender's EPIPE).
pub fn run(segments: &[Segment], hosts: &Hosts, progress: &Progress) -> Result<u64, Vec<CmdError>> {
    let units = units(segments, hosts);
    let mut running: Vec<Running> = Vec::new();
    let mut prev: Option<std::process::ChildStdout> = None;
    let mut metered: Option<std::io::PipeReader> = None;
    let count = Arc::new(AtomicU64::new(0));
    let mut pump = None;
    let n = units.len();
    for (i, (host, stages)) in units.into_iter().enumerate() {
        if is_meter(&stages) {
            let (reader, writer) = match std::io::pipe() {
                Ok(p) => p,
                Err(e) => return Err(vec![host.error(&stages, None, e.to_string())]),
            };
            let input = prev.take();
            let c = count.clone();
            pump = Some(std::thread::spawn(move || {
                if let Some(input) = input {
                    let (mut input, mut writer) = (input, writer);
                    crate::host::pump(&mut input, &mut writer, 1 << 20, |n| {
                        c.fetch_add(n, Ordering::Relaxed);
                    });
                }
            }));
            metered = Some(reader);
            continue;
        }
        let mut cmd = host.command(&stages);
        cmd.stdin(match (prev.take(), metered.take()) {
            (Some(out), _) => Stdio::from(out),
            (None, Some(r)) => Stdio::from(r),
            (None, None) => Stdio::null(),
        });
        cmd.stdout(if i + 1 == n {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
        let is_pv = stages.len() == 1 && stages[0][0] == "pv";
        cmd.stderr(if is_pv {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
        let mut child: Child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let err = host.error(&stages, None, format!("cannot start: {e}"));
                for r in running {
                    let mut c = r.child;
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(vec![err]);
            }
        };
        prev = child.stdout.take();
        if let Some(out) = &prev {
            widen_pipe(out);
        }
        let tail = match child.stderr.take() {
            Some(e) => StderrTail::drain(e, false),
            None => StderrTail::drain(std::io::empty(), false),
        };
        running.push(Running {
            child,
            tail,
            host,
            stages,
        });
    }
    if let Some(pump) = pump {
        let tick = || {
            let n = count.load(Ordering::Relaxed);
            progress.tick(n, n, 0, 0);
        };
        while !pump.is_finished() {
            tick();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = pump.join();
        tick();
    }
    let mut errors: Vec<CmdError> = running.into_iter().filter_map(|r| r.wait().err()).collect();
    if errors.is_empty() {
        return Ok(count.load(Ordering::Relaxed));
    }
    errors.reverse();
    Err(errors)
}
