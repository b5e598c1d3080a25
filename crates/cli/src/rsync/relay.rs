//! The coordinator's forwarding of chunks from the sender's connection to
//! the receiver's without passing their payloads through its own memory:
//! a chunk frame's 62-byte header is read, and its payload is spliced
//! (`splice(2)`) from the sender's descriptor through a private pipe into
//! the receiver's, whichever of them are sockets (a local agent) or pipes
//! (an ssh session). Other frames are read whole and handed on, as
//! `read_frames` does. Where the kernel refuses to splice a descriptor,
//! the payload is copied through the relay's 16 KiB buffer instead.
//!
//! The receiver's side is shared with the coordinator's writer thread
//! (pings, end of stream, goodbye) behind a mutex: a chunk is written
//! whole while it is held, so frames never interleave.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::Stop;
use syncoid_rsync_core::wire::{self, ChunkHeader, CHUNK_HEAD};

/// Bytes moved per splice into the receiver: the link's liveness clock
/// moves at least this often while a chunk passes.
const PIECE: usize = 64 << 10;
/// The private pipe's size: a default chunk in one splice from the sender.
const MID: usize = 1 << 20;
/// Bytes read at a time for length prefixes and small frames.
const HEAD_BUF: usize = 16 << 10;

/// What the relay reports as it goes.
pub struct Events<'a> {
    /// Bytes came from the sender.
    pub read: &'a (dyn Fn() + Sync),
    /// A piece of a chunk reached the receiver's connection.
    pub wrote: &'a (dyn Fn() + Sync),
    /// The relay waits on the receiver (true) or is done waiting (false):
    /// the sender is not read meanwhile, so its silence is not its own.
    pub on_receiver: &'a (dyn Fn(bool) + Sync),
}

/// A frame read from the sender.
pub enum Frame {
    /// A chunk, already forwarded to the receiver.
    Chunk(ChunkHeader),
    /// Anything else, whole (length prefix included), not forwarded.
    Other(Vec<u8>),
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: splice between two descriptors we hold open, with no
        // offsets (both are read and written at their current position).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
            )
        };
        match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Reads frames from `src` until `f` returns false or an error, the input
/// ends, a frame is malformed or the receiver's side fails; chunk frames
/// are written to `dst` as they come, then reported by header.
pub fn relay(
    src: &File,
    dst: &Mutex<File>,
    ev: &Events,
    f: impl FnMut(Frame) -> Result<bool, String>,
) -> Stop {
    Relay::new(src).run(dst, ev, f)
}

struct Relay<'a> {
    src: &'a File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The private pipe (read end, write end), made at the first chunk.
    mid: Option<(OwnedFd, OwnedFd)>,
    /// Splicing was refused: payloads are copied.
    copy: bool,
}

impl<'a> Relay<'a> {
    fn new(src: &'a File) -> Relay<'a> {
        Relay {
            src,
            buf: vec![0u8; HEAD_BUF],
            start: 0,
            end: 0,
            mid: None,
            copy: false,
        }
    }

    fn run(
        &mut self,
        dst: &Mutex<File>,
        ev: &Events,
        mut f: impl FnMut(Frame) -> Result<bool, String>,
    ) -> Stop {
        loop {
            let frame = match self.next(dst, ev) {
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

    /// Reads until at least `n` bytes are buffered; false at end of input.
    fn fill(&mut self, n: usize, ev: &Events) -> Result<bool, String> {
        while self.end - self.start < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            match (&*self.src).read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(k) => {
                    self.end += k;
                    (ev.read)();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(true)
    }

    fn next(&mut self, dst: &Mutex<File>, ev: &Events) -> Result<Option<Frame>, String> {
        if !self.fill(5, ev)? {
            return Ok(None);
        }
        let at = self.start;
        let len = u32::from_be_bytes(self.buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > wire::MAX_FRAME {
            return Err(format!(
                "protocol error: {}",
                wire::WireError::TooLarge(len)
            ));
        }
        let total = 4 + len;
        if self.buf[at + 4] == 4 && total >= CHUNK_HEAD {
            if !self.fill(CHUNK_HEAD, ev)? {
                return Ok(None);
            }
            let head = &self.buf[self.start..self.start + CHUNK_HEAD];
            let mut h = wire::chunk_header(head).expect("a chunk header");
            h.payload = total - CHUNK_HEAD;
            self.forward(total, dst, ev)?;
            return Ok(Some(Frame::Chunk(h)));
        }
        let mut frame = Vec::with_capacity(total);
        let have = (self.end - self.start).min(total);
        frame.extend_from_slice(&self.buf[self.start..self.start + have]);
        self.start += have;
        if frame.len() < total {
            let rest = (total - frame.len()) as u64;
            match self.src.take(rest).read_to_end(&mut frame) {
                Ok(_) if frame.len() == total => (ev.read)(),
                Ok(_) => return Ok(None),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(Some(Frame::Other(frame)))
    }

    /// Writes the `total`-byte chunk frame that starts in the buffer to
    /// `dst`: what is buffered, then the rest straight from the sender.
    fn forward(&mut self, total: usize, dst: &Mutex<File>, ev: &Events) -> Result<(), String> {
        let mut d = dst.lock().expect("receiver side");
        let have = (self.end - self.start).min(total);
        (ev.on_receiver)(true);
        for piece in self.buf[self.start..self.start + have].chunks(PIECE) {
            d.write_all(piece)
                .map_err(|e| format!("receiver: write: {e}"))?;
            (ev.wrote)();
        }
        (ev.on_receiver)(false);
        self.start += have;
        let mut left = total - have;
        while left > 0 {
            left -= self.pass(left, &mut d, ev)?;
        }
        Ok(())
    }

    /// Moves up to `left` payload bytes from the sender to `d`; returns
    /// how many (at least one).
    fn pass(&mut self, left: usize, d: &mut File, ev: &Events) -> Result<usize, String> {
        if !self.copy {
            if self.mid.is_none() {
                let (r, w) = super::link::pipe(0).map_err(|e| format!("pipe: {e}"))?;
                crate::transfer::widen_pipe(&w);
                self.mid = Some((r, w));
            }
            let (mid_r, mid_w) = self.mid.as_ref().expect("made");
            let (mid_r, mid_w) = (mid_r.as_raw_fd(), mid_w.as_raw_fd());
            match splice(self.src.as_raw_fd(), mid_w, left.min(MID)) {
                Ok(0) => return Err("read: connection closed mid-chunk".into()),
                Ok(got) => {
                    (ev.read)();
                    (ev.on_receiver)(true);
                    let mut out = got;
                    while out > 0 {
                        let k = match splice(mid_r, d.as_raw_fd(), out.min(PIECE)) {
                            Ok(0) => Err("receiver: write: connection closed".to_string()),
                            Ok(k) => Ok(k),
                            Err(e) => Err(format!("receiver: write: {e}")),
                        }?;
                        out -= k;
                        (ev.wrote)();
                    }
                    (ev.on_receiver)(false);
                    return Ok(got);
                }
                // The sender's end cannot be spliced from (nothing was
                // moved): copy.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.copy = true,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let want = left.min(self.buf.len());
        let got = match (&*self.src).read(&mut self.buf[..want]) {
            Ok(0) => return Err("read: connection closed mid-chunk".into()),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(format!("read: {e}")),
        };
        (ev.read)();
        (ev.on_receiver)(true);
        d.write_all(&self.buf[..got])
            .map_err(|e| format!("receiver: write: {e}"))?;
        (ev.wrote)();
        (ev.on_receiver)(false);
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use syncoid_rsync_core::fuzz::noise;
    use syncoid_rsync_core::wire::{encode, Chunk, Msg};

    /// The two ends of a connection of each kind: (write into, read from).
    fn ends(socket: bool) -> (File, File) {
        if socket {
            let (a, b) = UnixStream::pair().unwrap();
            (File::from(OwnedFd::from(a)), File::from(OwnedFd::from(b)))
        } else {
            let (r, w) = super::super::link::pipe(0).unwrap();
            (File::from(w), File::from(r))
        }
    }

    /// Chunks of many sizes between small frames pass from a socket or a
    /// pipe to a socket or a pipe byte for byte, spliced (and copied, where
    /// splicing is refused); every frame is reported once, in order, chunks
    /// by their header; the events fire.
    #[test]
    fn chunks_pass_whole_and_other_frames_are_handed_on() {
        for (src_socket, dst_socket, copy) in [
            (true, true, false),
            (true, false, false),
            (false, true, false),
            (false, false, false),
            (true, false, true),
        ] {
            let mut sent = Vec::new();
            let mut expect = Vec::new();
            let mut offset = 0u64;
            for (i, size) in [0usize, 1, 61, 5000, 70_000, 1 << 20, 3 << 20, 17]
                .into_iter()
                .enumerate()
            {
                let c = Chunk::new(i as u64, offset, noise(size, i as u64));
                offset += size as u64;
                sent.extend_from_slice(&c.head());
                sent.extend_from_slice(&c.data);
                expect.push(format!("chunk {i} {offset} {size}"));
                sent.extend(encode(&Msg::Ping { nonce: i as u64 }));
                expect.push(format!("other {i}"));
            }
            let chunks: Vec<u8> = {
                // What the receiver must get: the chunk frames alone.
                let mut v = Vec::new();
                let mut d = wire::Decoder::default();
                d.push(&sent);
                while let Ok(Some(frame)) = d.next_frame() {
                    if wire::chunk_header(&frame).is_some() {
                        v.extend_from_slice(&frame);
                    }
                }
                v
            };
            let (mut src_in, src_out) = ends(src_socket);
            let (dst_in, mut dst_out) = ends(dst_socket);
            let feed = std::thread::spawn(move || {
                src_in.write_all(&sent).unwrap();
            });
            let got = std::thread::spawn(move || {
                let mut v = Vec::new();
                dst_out.read_to_end(&mut v).unwrap();
                v
            });
            let dst = Mutex::new(dst_in);
            let counts = std::sync::atomic::AtomicUsize::new(0);
            let bump = || {
                counts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            };
            let ev = Events {
                read: &bump,
                wrote: &bump,
                on_receiver: &|_| {},
            };
            let mut seen = Vec::new();
            let mut r = Relay::new(&src_out);
            r.copy = copy;
            let stop = r.run(&dst, &ev, |f| {
                seen.push(match f {
                    Frame::Chunk(h) => format!("chunk {} {} {}", h.seq, h.end, h.payload),
                    Frame::Other(v) => match wire::decode_frame(&v).unwrap() {
                        Msg::Ping { nonce } => format!("other {nonce}"),
                        _ => "unexpected".into(),
                    },
                });
                Ok(true)
            });
            assert_eq!(r.copy, copy, "splicing refused");
            feed.join().unwrap();
            drop(dst);
            assert!(matches!(stop, Stop::Closed));
            assert_eq!(seen, expect, "{src_socket} {dst_socket}");
            assert!(
                got.join().unwrap() == chunks,
                "the receiver's bytes differ ({src_socket} {dst_socket})"
            );
            assert!(counts.into_inner() > 16);
        }
    }

    /// A sender that stops mid-chunk is an error, not a short chunk.
    #[test]
    fn a_chunk_cut_short_is_an_error() {
        let c = Chunk::new(0, 0, noise(200_000, 3));
        let (mut src_in, src_out) = ends(true);
        let (dst_in, _dst_out) = ends(false);
        src_in.write_all(&c.head()).unwrap();
        src_in.write_all(&c.data[..100_000]).unwrap();
        drop(src_in);
        let ev = Events {
            read: &|| {},
            wrote: &|| {},
            on_receiver: &|_| {},
        };
        let dst = Mutex::new(dst_in);
        let stop = relay(&src_out, &dst, &ev, |_| Ok(true));
        match stop {
            Stop::Failed(e) => assert!(e.contains("mid-chunk"), "{e}"),
            _ => panic!("a short chunk was taken"),
        }
    }
}
