//! `--rsync`: a chunked, verified transport that survives outages. See
//! docs/design.md for the protocol, the resume invariants and cleanup.

pub mod agent;
pub mod coordinator;
pub mod dataset;
pub mod feed;
pub mod link;
pub mod lock;
pub mod mux;
pub mod relay;
pub mod session;

use std::io::Read;
use std::sync::Arc;
use syncoid_rsync_core::wire::{self, Msg};

/// Why `read_msgs` stopped.
pub enum Stop {
    /// The handler asked to stop.
    Handler,
    /// The peer closed the connection.
    Closed,
    /// A read failed or a frame was malformed.
    Failed(String),
}

/// Reads frames from `r` and hands each message to `f` until `f` returns
/// false, the input ends or a frame is malformed. Large frames are read
/// into buffers from `spare` when it has one free.
pub fn read_msgs(
    r: &mut impl Read,
    spare: Option<Arc<feed::Buffers>>,
    mut f: impl FnMut(Msg) -> bool,
) -> Stop {
    let mut frames = Frames::new(r);
    frames.spare = spare;
    each_frame(frames, |frame| match wire::decode_owned(frame) {
        Ok(m) => Ok(f(m)),
        Err(e) => Err(format!("protocol error: {e}")),
    })
}

/// Bytes read at a time for length prefixes and small frames; the rest of
/// a larger frame is read straight into its own buffer.
const HEAD_BUF: usize = 16 << 10;

/// A stream read as frames through a `HEAD_BUF` buffer: length prefixes
/// and small frames come from it, the rest of a larger frame is read
/// straight into the frame's own buffer (or, in the coordinator's relay,
/// spliced on without being read).
pub struct Frames<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Buffers used before, for frames larger than `HEAD_BUF`.
    spare: Option<Arc<feed::Buffers>>,
}

impl<R: Read> Frames<R> {
    pub fn new(r: R) -> Frames<R> {
        Frames {
            r,
            buf: vec![0u8; HEAD_BUF],
            start: 0,
            end: 0,
            spare: None,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.r
    }

    /// Reads until at least `n` (<= `HEAD_BUF`) bytes are buffered; false
    /// when the input ends first.
    pub fn fill(&mut self, n: usize) -> Result<bool, String> {
        while self.end - self.start < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(k) => self.end += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(true)
    }

    /// The bytes read and not yet taken.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Takes `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consumed more than buffered");
        self.start += n;
    }

    /// The next frame's whole length (prefix included), checked; None at
    /// the end of the input.
    pub fn next_len(&mut self) -> Result<Option<usize>, String> {
        if !self.fill(4)? {
            return Ok(None);
        }
        let head = self.buffered();
        let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > wire::MAX_FRAME {
            return Err(format!(
                "protocol error: {}",
                wire::WireError::TooLarge(len)
            ));
        }
        Ok(Some(4 + len))
    }

    /// The next frame, `total` bytes long, whole; None when the input
    /// ends within it.
    pub fn frame(&mut self, total: usize) -> Result<Option<Vec<u8>>, String> {
        let used = match &self.spare {
            Some(spare) if total > HEAD_BUF => spare.take(),
            _ => None,
        };
        if let Some(mut frame) = used {
            // Sized without clearing what it held (only a longer frame
            // than before zeroes its new tail), then overwritten.
            frame.resize(total, 0);
            let have = self.buffered().len().min(total);
            frame[..have].copy_from_slice(&self.buffered()[..have]);
            self.consume(have);
            return match self.r.read_exact(&mut frame[have..]) {
                Ok(()) => Ok(Some(frame)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(format!("read: {e}")),
            };
        }
        let mut frame = Vec::with_capacity(total);
        let have = self.buffered().len().min(total);
        frame.extend_from_slice(&self.buffered()[..have]);
        self.consume(have);
        if frame.len() < total {
            let rest = (total - frame.len()) as u64;
            match (&mut self.r).take(rest).read_to_end(&mut frame) {
                Ok(_) if frame.len() == total => {}
                Ok(_) => return Ok(None),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(Some(frame))
    }
}

/// A reader that calls `on_read` whenever a read moved bytes (a link's
/// liveness clock).
pub struct Counted<R, F> {
    pub r: R,
    pub on_read: F,
}

impl<R: Read, F: Fn()> Read for Counted<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        if n > 0 {
            (self.on_read)();
        }
        Ok(n)
    }
}

/// Reads whole frames (length prefix included, undecoded) from `r` and
/// hands each to `f` until `f` returns false or an error, the input ends,
/// or a frame is malformed. A chunk's payload is read into the frame's own
/// buffer (copied at most `HEAD_BUF` bytes of it), never through a second
/// buffer.
pub fn read_frames(r: &mut impl Read, f: impl FnMut(Vec<u8>) -> Result<bool, String>) -> Stop {
    each_frame(Frames::new(r), f)
}

fn each_frame<R: Read>(
    mut frames: Frames<R>,
    mut f: impl FnMut(Vec<u8>) -> Result<bool, String>,
) -> Stop {
    loop {
        let frame = match frames.next_len().and_then(|len| match len {
            Some(total) => frames.frame(total),
            None => Ok(None),
        }) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Stop::Closed,
            Err(e) => return Stop::Failed(e),
        };
        match f(frame) {
            Ok(true) => {}
            Ok(false) => return Stop::Handler,
            Err(e) => return Stop::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use syncoid_rsync_core::wire::{encode, Chunk, Decoder};

    /// A reader that hands out its bytes in the given piece sizes.
    struct Dribble {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        next: usize,
    }

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let want = self.sizes[self.next % self.sizes.len()].max(1);
            self.next += 1;
            let n = want.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    proptest! {
        /// However the bytes arrive, the reader returns the frames the pure
        /// decoder finds, then stops as it does: at the end of the input or
        /// at the first bad length.
        #[test]
        fn frames_read_are_the_frames_decoded(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40_000), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
            sizes in proptest::collection::vec(1usize..70_000, 1..6),
        ) {
            let mut bytes = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                bytes.extend(encode(&Msg::Ping { nonce: i as u64 }));
                bytes.extend(encode(&Msg::Chunk(Chunk::new(i as u64, 0, p.clone()))));
            }
            bytes.extend(&tail);
            let mut want = Vec::new();
            let mut d = Decoder::default();
            d.push(&bytes);
            let want_error = loop {
                match d.next_frame() {
                    Ok(Some(f)) => want.push(f),
                    Ok(None) => break false,
                    Err(_) => break true,
                }
            };
            let mut r = Dribble { data: bytes, at: 0, sizes, next: 0 };
            let mut got = Vec::new();
            let stop = read_frames(&mut r, |f| {
                got.push(f);
                Ok(true)
            });
            prop_assert_eq!(got, want);
            prop_assert_eq!(matches!(stop, Stop::Failed(_)), want_error);
        }
    }
}
