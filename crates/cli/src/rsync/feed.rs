//! The receiver agent's writes into `zfs receive`: a verified chunk is
//! handed to its stdin pipe by reference (`vmsplice(2)`), not copied, and
//! the buffer it was read into is used again for a later chunk only once
//! zfs receive has read every byte of it. Until then the pipe reads the
//! buffer's memory: changing or freeing it earlier would change what zfs
//! receive reads, after our verification.
//!
//! Positions are bytes written into the pipe since the start. A buffer
//! fed up to position `end` is free once the pipe's reader has consumed
//! that far: the bytes written minus those still unread in the pipe
//! (`FIONREAD`), measured after each feed.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;

use super::link::cvt;

/// Chunk buffers waiting to be used again, with the position their bytes
/// end at in the pipe.
#[derive(Default)]
pub struct Buffers(Mutex<Spare>);

#[derive(Default)]
struct Spare {
    /// Oldest first.
    held: VecDeque<(u64, Vec<u8>)>,
    /// The pipe's reader has every byte before this position.
    consumed: u64,
}

/// Buffers kept for later chunks: the chunks read ahead, the ones the
/// pipe holds and a few more. Beyond that a free buffer is released.
const KEEP: usize = 12;

/// A buffer never fed is kept only from this size: smaller frames (a
/// chunk that compressed well) would only have to grow.
const MIN_KEPT: usize = 64 << 10;

impl Buffers {
    /// A buffer whose bytes the pipe's reader has all consumed, if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        let mut s = self.0.lock().expect("buffers");
        let consumed = s.consumed;
        match s.held.front() {
            Some((end, _)) if *end <= consumed => s.held.pop_front().map(|(_, b)| b),
            _ => None,
        }
    }

    /// Keeps `buf` until the pipe's reader has consumed up to `end` (0: it
    /// was never fed, free at once). Free buffers beyond `KEEP` are let go.
    pub fn give(&self, end: u64, buf: Vec<u8>) {
        let mut s = self.0.lock().expect("buffers");
        // Positions only grow, so the queue stays in order of `end`; a
        // buffer never fed goes first (or, small, goes at once).
        if end == 0 {
            if buf.capacity() >= MIN_KEPT {
                s.held.push_front((0, buf));
            }
        } else {
            s.held.push_back((end, buf));
        }
        let consumed = s.consumed;
        while s.held.len() > KEEP && s.held.front().is_some_and(|(end, _)| *end <= consumed) {
            s.held.pop_front();
        }
    }

    fn consumed(&self, upto: u64) {
        let mut s = self.0.lock().expect("buffers");
        s.consumed = s.consumed.max(upto);
    }
}

impl Drop for Spare {
    /// A buffer the pipe may still hold is leaked, not freed: the agent
    /// can let go of its buffers (a goodbye mid-transfer, the inactivity
    /// timeout) while zfs receive still reads what it was given, and freed
    /// memory would be reused by the allocator before the agent exits.
    fn drop(&mut self) {
        for (end, buf) in self.held.drain(..) {
            if end > self.consumed {
                std::mem::forget(buf);
            }
        }
    }
}

/// zfs receive's stdin, fed by reference where the kernel allows.
pub struct Feed<W> {
    w: W,
    /// Bytes written into the pipe so far.
    pub written: u64,
    /// vmsplice was refused (`link::refused`: not a pipe, or not
    /// allowed): plain writes.
    copy: bool,
}

impl<W: Write + AsFd> Feed<W> {
    pub fn new(w: W) -> Feed<W> {
        Feed {
            w,
            written: 0,
            copy: false,
        }
    }

    /// Writes `bytes` whole. They may be read from the caller's memory
    /// after this returns: keep it unchanged, by giving its buffer to
    /// `Buffers::give` with `written` as the end, never dropping it
    /// while the pipe may still hold it.
    pub fn put(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.copy {
                self.w.write_all(bytes)?;
                self.written += bytes.len() as u64;
                return Ok(());
            }
            let iov = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            // SAFETY: one iovec over the caller's live slice, only read by
            // the kernel (for how long, see above).
            let n = cvt(unsafe { libc::vmsplice(self.w.as_fd().as_raw_fd(), &iov, 1, 0) });
            match n {
                Ok(n) => {
                    self.written += n as u64;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if super::link::refused(&e) => self.copy = true,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Tells `buffers` how far the pipe's reader has got.
    pub fn report(&self, buffers: &Buffers) {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int: the bytes unread in the pipe.
        let ok = unsafe { libc::ioctl(self.w.as_fd().as_raw_fd(), libc::FIONREAD, &mut unread) };
        if ok == 0 && unread >= 0 {
            buffers.consumed(self.written.saturating_sub(unread as u64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use syncoid_rsync_core::fuzz::noise;

    /// Bytes fed by reference arrive whole and in order; a buffer is not
    /// given out again while the pipe still holds any of its bytes, and is
    /// once the reader has them all.
    #[test]
    fn a_buffer_is_used_again_only_once_its_bytes_were_read() {
        let (r, w) = super::super::link::pipe(0).unwrap();
        crate::transfer::widen_pipe(&w);
        let (mut r, w) = (std::fs::File::from(r), std::fs::File::from(w));
        let buffers = Buffers::default();
        let mut feed = Feed::new(w);
        let a = noise(300_000, 1);
        feed.put(&a).unwrap();
        feed.report(&buffers);
        buffers.give(feed.written, a.clone());
        assert!(buffers.take().is_none(), "given out while in the pipe");
        let mut got = vec![0u8; 200_000];
        r.read_exact(&mut got).unwrap();
        feed.report(&buffers);
        assert!(buffers.take().is_none(), "given out while partly unread");
        let b = noise(5000, 2);
        feed.put(&b).unwrap();
        let mut rest = vec![0u8; 100_000 + 5000];
        r.read_exact(&mut rest).unwrap();
        feed.report(&buffers);
        got.extend_from_slice(&rest);
        assert!(got[..300_000] == a[..] && got[300_000..] == b[..]);
        assert!(buffers.take() == Some(a), "the read buffer came back");
        assert!(buffers.take().is_none());
        let c = noise(70_000, 3);
        buffers.give(0, c.clone());
        assert!(buffers.take() == Some(c), "a buffer never fed is free");
    }

    /// However many buffers come back and however few are taken (chunks
    /// that compressed well are read into frames of their own, and the
    /// buffers they were unpacked into come back), the free ones kept stay
    /// bounded; one the pipe may hold is never let go.
    #[test]
    fn the_buffers_kept_stay_bounded() {
        let buffers = Buffers::default();
        let mut end = 0;
        for i in 0..200u64 {
            end += 100_000;
            buffers.give(end, vec![i as u8; 100_000]);
            buffers.give(0, vec![0u8; 100]);
            // The pipe's reader is three buffers behind.
            buffers.consumed(end.saturating_sub(300_000));
            let held = buffers.0.lock().unwrap().held.len();
            assert!(held <= KEEP, "{held} buffers kept after {i}");
        }
        buffers.consumed(end);
        buffers.give(end + 1, vec![9; 10]);
        let s = buffers.0.lock().unwrap();
        assert_eq!(s.held.back().map(|(e, _)| *e), Some(end + 1));
        assert!(
            s.held.iter().all(|(_, b)| b.len() != 100),
            "a small frame kept"
        );
    }

    /// Where a seccomp filter forbids vmsplice the bytes are written.
    #[test]
    fn a_pipe_is_written_to_where_vmsplice_is_forbidden() {
        std::thread::spawn(|| {
            crate::rsync::link::tests::deny_splice_on_this_thread();
            let (r, w) = super::super::link::pipe(0).unwrap();
            let mut feed = Feed::new(std::fs::File::from(w));
            let a = noise(300_000, 4);
            let reader = std::thread::spawn(move || {
                let mut v = Vec::new();
                std::fs::File::from(r).read_to_end(&mut v).unwrap();
                v
            });
            feed.put(&a).unwrap();
            assert!(feed.copy, "vmsplice was refused");
            drop(feed);
            assert!(reader.join().unwrap() == a);
        })
        .join()
        .unwrap();
    }

    /// Into something that is not a pipe the bytes are written (copied).
    #[test]
    fn a_file_is_written_to() {
        let mut f = tempfile::tempfile().unwrap();
        let mut feed = Feed::new(f.try_clone().unwrap());
        let a = noise(70_000, 3);
        feed.put(&a).unwrap();
        assert_eq!(feed.written, 70_000);
        let mut got = Vec::new();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut got).unwrap();
        assert!(got == a);
    }
}
