//! Fault injection, set by environment variables (see the crate README):
//!
//! | variable | effect |
//! |---|---|
//! | `FAKEZFS_SEND_FAIL_AFTER=N` | `zfs send` writes N bytes, then fails with an I/O error |
//! | `FAKEZFS_SEND_HANG_AFTER=N` | `zfs send` writes N bytes, then hangs until killed |
//! | `FAKEZFS_SEND_CORRUPT_AT=N` | `zfs send` flips the bits of stream byte N |
//! | `FAKEZFS_SEND_RATE=R` | `zfs send` writes at most R bytes/s (`10M` = 10 MiB/s) |
//! | `FAKEZFS_RECV_FAIL_AFTER=N` | `zfs receive` reads N bytes, then the stream breaks |
//! | `FAKEZFS_RECV_PAUSE=N:SECS` | `zfs receive` reads N bytes, then reads nothing for SECS (a pool that stops taking writes) |
//! | `FAKEZFS_RECV_COMMIT_DELAY=SECS` | `zfs receive` waits SECS after a stream's end before committing it (a slow pool) |
//! | `FAKEZFS_NOW=EPOCH` | the clock for creation times (out-of-order snapshots) |
//!
//! Sizes take the suffixes K, M, G. Everything else is the real behaviour.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::FromRawFd;
use std::time::{Duration, Instant};

use crate::fail::Res;
use syncoid_rsync_core::units::parse_size;

/// The status a shell reports for a process killed by SIGPIPE.
pub const SIGPIPE_STATUS: i32 = 141;

fn env_size(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| parse_size(&v))
}

pub fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EIO) => "Input/output error".into(),
        _ => e.to_string(),
    }
}

/// A 1 MiB pipe buffer (when `fd` is a pipe) means 16 times fewer wake-ups
/// than the default 64 KiB; the stream rate through a pipe doubles.
fn grow_pipe(fd: i32) {
    // SAFETY: F_SETPIPE_SZ only changes a pipe's capacity; on anything else it fails harmlessly.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// stdout for a send stream, with the send faults applied.
pub struct FaultyOut {
    file: io::BufWriter<File>,
    written: u64,
    fail_after: Option<u64>,
    hang_after: Option<u64>,
    corrupt_at: Option<u64>,
    rate: Option<u64>,
    start: Instant,
}

impl FaultyOut {
    pub fn stdout() -> Res<FaultyOut> {
        grow_pipe(1);
        // SAFETY: fd 1 is open for the life of the process; we are its only writer.
        let file = unsafe { File::from_raw_fd(1) };
        Ok(FaultyOut {
            file: io::BufWriter::with_capacity(1 << 20, file),
            written: 0,
            fail_after: env_size("FAKEZFS_SEND_FAIL_AFTER"),
            hang_after: env_size("FAKEZFS_SEND_HANG_AFTER"),
            corrupt_at: env_size("FAKEZFS_SEND_CORRUPT_AT"),
            rate: env_size("FAKEZFS_SEND_RATE").filter(|r| *r > 0),
            start: Instant::now(),
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Keeps to the rate: what was written leaves before each pause, so a
    /// slow send trickles as a real one does instead of coming in bursts
    /// of the buffer's size.
    fn throttle(&mut self) -> io::Result<()> {
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.written as f64 / rate as f64);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                self.file.flush()?;
                std::thread::sleep(due - elapsed);
            }
        }
        Ok(())
    }
}

impl Write for FaultyOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let limit = [self.fail_after, self.hang_after]
            .into_iter()
            .flatten()
            .min()
            .map(|l| l.saturating_sub(self.written) as usize);
        let mut n = buf.len().min(limit.unwrap_or(usize::MAX));
        if self.rate.is_some() {
            n = n.min(64 * 1024);
        }
        if n == 0 && !buf.is_empty() {
            self.file.flush()?;
            if self.hang_after.is_some_and(|h| self.written >= h) {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut chunk = buf[..n].to_vec();
        if let Some(at) = self.corrupt_at {
            if at >= self.written && at < self.written + n as u64 {
                chunk[(at - self.written) as usize] ^= 0xff;
            }
        }
        let n = self.file.write(&chunk)?;
        self.written += n as u64;
        self.throttle()?;
        Ok(n)
    }

    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        if self.fail_after.is_none()
            && self.hang_after.is_none()
            && self.corrupt_at.is_none()
            && self.rate.is_none()
        {
            self.file.write_all(buf)?;
            self.written += buf.len() as u64;
            return Ok(());
        }
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// stdin for a receive, counting bytes, with the receive fault applied.
pub struct FaultyIn {
    file: File,
    pub read: u64,
    fail_after: Option<u64>,
    /// Bytes after which the receive pauses once, and for how long.
    pause: Option<(u64, Duration)>,
}

/// `FAKEZFS_RECV_PAUSE=N:SECS`.
fn recv_pause() -> Option<(u64, Duration)> {
    let v = std::env::var("FAKEZFS_RECV_PAUSE").ok()?;
    let (at, secs) = v.split_once(':')?;
    Some((parse_size(at)?, Duration::from_secs_f64(secs.parse().ok()?)))
}

impl FaultyIn {
    pub fn stdin() -> FaultyIn {
        grow_pipe(0);
        // SAFETY: fd 0 is open for the life of the process; we are its only reader.
        let file = unsafe { File::from_raw_fd(0) };
        FaultyIn {
            file,
            read: 0,
            fail_after: env_size("FAKEZFS_RECV_FAIL_AFTER"),
            pause: recv_pause(),
        }
    }
}

impl Read for FaultyIn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((at, wait)) = self.pause {
            if self.read >= at {
                self.pause = None;
                std::thread::sleep(wait);
            }
        }
        let mut want = buf.len();
        if let Some(l) = self.fail_after {
            if self.read >= l {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            want = want.min((l - self.read) as usize);
        }
        if let Some((at, _)) = self.pause {
            // Stops exactly at the pause point (read < at here).
            want = want.min((at - self.read) as usize);
        }
        let n = self.file.read(&mut buf[..want])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// `FAKEZFS_RECV_COMMIT_DELAY=SECS`: a receive that has read its whole
/// stream waits before committing it, as a busy pool's last txg may.
pub fn commit_delay() {
    if let Some(secs) = std::env::var("FAKEZFS_RECV_COMMIT_DELAY")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        std::thread::sleep(Duration::from_secs_f64(secs));
    }
}
