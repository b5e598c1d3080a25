//! What the user reads: syncoid-style INFO/WARNING/CRITICAL lines, quiet
//! and debug modes, and the end-of-run summary with the exit status.

use std::io::IsTerminal;

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Time since the start of the run.
pub fn since_start() -> std::time::Duration {
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Marks the start of the run for debug timestamps.
pub fn mark_start() {
    START.get_or_init(std::time::Instant::now);
}

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub quiet: bool,
    pub debug: bool,
    /// --json: stdout carries JSON events only; text goes nowhere but
    /// warnings and errors (stderr).
    pub json: bool,
}

impl Out {
    pub fn info(&self, msg: &str) {
        if !self.quiet && !self.json {
            crate::progress::over_the_line(|| println!("INFO: {msg}"));
        }
    }
    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            crate::progress::over_the_line(|| eprintln!("WARNING: {msg}"));
        }
    }
    pub fn critical(&self, msg: &str) {
        crate::progress::over_the_line(|| eprintln!("CRITICAL ERROR: {msg}"));
    }
    /// Debug lines start as syncoid's (`DEBUG: ` then the words, which
    /// scripts grep) and end with the time since the start, to show where
    /// it goes.
    pub fn debug(&self, msg: &str) {
        if self.debug && !self.json {
            let t = START.get_or_init(std::time::Instant::now).elapsed();
            crate::progress::over_the_line(|| println!("DEBUG: {msg} [+{:.3}s]", t.as_secs_f64()));
        }
    }
    /// Always printed (dry-run plans, dumps the user asked for).
    pub fn plain(&self, msg: &str) {
        if !self.json {
            crate::progress::over_the_line(|| println!("{msg}"));
        }
    }
    pub fn stderr_is_terminal(&self) -> bool {
        std::io::stderr().is_terminal()
    }
}

/// Exit statuses, decided here only.
pub mod exit {
    pub const OK: i32 = 0;
    /// Transient, retry later: some datasets were busy (a receive already
    /// running on the target) or lost their link for the whole inactivity
    /// timeout (the next run resumes); none needs a human.
    pub const RETRY: i32 = 1;
    /// Needs a human: at least one dataset could not be replicated for a
    /// reason that a later run does not cure by itself.
    pub const FAILED: i32 = 2;
    /// Bad command line: nothing was done.
    pub const USAGE: i32 = 64;
    /// A host or a required tool is unusable: nothing was done.
    pub const UNAVAILABLE: i32 = 69;
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub replicated: usize,
    pub up_to_date: usize,
    pub skipped: usize,
    pub failed: usize,
    pub busy: usize,
    /// Of `failed`, those for a lost link alone (the next run resumes).
    pub link_lost: usize,
    /// `--rsync`: stream bytes received, and reconnects.
    pub bytes: u64,
    pub reconnects: u64,
    pub seconds: f64,
    /// Each dataset's result, for `--metrics-file`.
    pub datasets: Vec<crate::metrics::Dataset>,
}

impl Summary {
    pub fn exit_code(&self) -> i32 {
        if self.failed > self.link_lost {
            exit::FAILED
        } else if self.busy > 0 || self.link_lost > 0 {
            exit::RETRY
        } else {
            exit::OK
        }
    }

    /// Each dataset's outcome, one line each: `replicated  a -> b  (1.2 MB, 0.4s)`.
    pub fn outcomes(&self) -> Vec<String> {
        self.datasets
            .iter()
            .map(|d| {
                let bytes = d
                    .bytes
                    .map(|b| format!("{}, ", readable(b)))
                    .unwrap_or_default();
                format!(
                    "{:<11} {} -> {}  ({bytes}{:.1}s)",
                    d.outcome.replace('_', " "),
                    d.source,
                    d.target,
                    d.seconds
                )
            })
            .collect()
    }

    pub fn line(&self) -> String {
        let mut s = format!(
            "{} replicated, {} already up to date, {} skipped, {} busy, {} failed",
            self.replicated, self.up_to_date, self.skipped, self.busy, self.failed
        );
        if self.link_lost > 0 {
            s.push_str(&format!(
                " ({} of them for a lost link: run again later)",
                self.link_lost
            ));
        }
        if self.bytes > 0 {
            let rate = self.bytes as f64 / self.seconds.max(0.001);
            s.push_str(&format!(
                "; {} in {:.1}s ({}/s), {} reconnect{}",
                readable(self.bytes),
                self.seconds,
                readable(rate as u64),
                self.reconnects,
                if self.reconnects == 1 { "" } else { "s" }
            ));
        }
        s
    }
}

/// Human size as syncoid prints estimates: `2.9 MB`, `512 KB`.
pub fn readable(bytes: u64) -> String {
    let b = bytes as f64;
    if b > 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GB", b / 1024.0 / 1024.0 / 1024.0)
    } else if b > 1024.0 * 1024.0 {
        format!("{:.1} MB", b / 1024.0 / 1024.0)
    } else if bytes >= 1024 {
        format!("{} KB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost link or a busy dataset alone is "retry later" (1); any other
    /// failure needs a human (2), whatever else happened.
    #[test]
    fn exit_status_tells_retry_later_from_needs_a_human() {
        let s = |failed, link_lost, busy| Summary {
            replicated: 3,
            failed,
            link_lost,
            busy,
            ..Summary::default()
        };
        assert_eq!(s(0, 0, 0).exit_code(), exit::OK);
        assert_eq!(s(0, 0, 1).exit_code(), exit::RETRY);
        assert_eq!(s(2, 2, 0).exit_code(), exit::RETRY);
        assert_eq!(s(2, 1, 1).exit_code(), exit::FAILED);
        assert!(s(2, 2, 0)
            .line()
            .contains("2 failed (2 of them for a lost link: run again later)"));
    }
}
