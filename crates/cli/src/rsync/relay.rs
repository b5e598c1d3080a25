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
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::link::cvt;
use super::{Counted, Frames, Stop};
use syncoid_rsync_core::wire::{self, ChunkHeader, CHUNK_HEAD};

/// Bytes moved per splice into the receiver: the link's liveness clock
/// moves at least this often while a chunk passes.
const PIECE: usize = 64 << 10;
/// The private pipe's size: a default chunk in one splice from the sender.
const MID: usize = 1 << 20;

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

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        let n = super::link::splice(from, to, len, libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE);
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
    Relay::new(src, ev).run(dst, f)
}

/// The sender's stream, its reads reported as `Events::read`.
type Source<'a> = Frames<Counted<&'a File, &'a (dyn Fn() + Sync)>>;

struct Relay<'a> {
    frames: Source<'a>,
    ev: &'a Events<'a>,
    /// The private pipe (read end, write end), made at the first chunk.
    mid: Option<(OwnedFd, OwnedFd)>,
    /// Splicing was refused: payloads are copied.
    copy: bool,
}

impl<'a> Relay<'a> {
    fn new(src: &'a File, ev: &'a Events<'a>) -> Relay<'a> {
        Relay {
            frames: Frames::new(Counted {
                r: src,
                on_read: ev.read,
            }),
            ev,
            mid: None,
            copy: false,
        }
    }

    fn run(&mut self, dst: &Mutex<File>, mut f: impl FnMut(Frame) -> Result<bool, String>) -> Stop {
        loop {
            let frame = match self.next(dst) {
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

    fn next(&mut self, dst: &Mutex<File>) -> Result<Option<Frame>, String> {
        let Some(total) = self.frames.next_len()? else {
            return Ok(None);
        };
        // A length is at least 1, so the type byte is there to read.
        if !self.frames.fill(5)? {
            return Ok(None);
        }
        if self.frames.buffered()[4] == wire::kind::CHUNK && total >= CHUNK_HEAD {
            if !self.frames.fill(CHUNK_HEAD)? {
                return Ok(None);
            }
            let head = &self.frames.buffered()[..CHUNK_HEAD];
            let mut h = wire::chunk_header(head).expect("a chunk header");
            h.payload = total - CHUNK_HEAD;
            self.forward(total, dst)?;
            return Ok(Some(Frame::Chunk(h)));
        }
        Ok(self.frames.frame(total)?.map(Frame::Other))
    }

    /// Writes the `total`-byte chunk frame that starts in the buffer to
    /// `dst`: what is buffered first, then the rest spliced straight from
    /// the sender (or, where splicing is refused, read into the buffer).
    fn forward(&mut self, total: usize, dst: &Mutex<File>) -> Result<(), String> {
        let mut d = dst.lock().expect("receiver side");
        let mut left = total;
        while left > 0 {
            if self.frames.buffered().is_empty() {
                if !self.copy {
                    left -= self.splice_on(left, &d)?;
                    continue;
                }
                if !self.frames.fill(1)? {
                    return Err("read: connection closed mid-chunk".into());
                }
            }
            let n = self.frames.buffered().len().min(left);
            (self.ev.on_receiver)(true);
            for piece in self.frames.buffered()[..n].chunks(PIECE) {
                d.write_all(piece)
                    .map_err(|e| format!("receiver: write: {e}"))?;
                (self.ev.wrote)();
            }
            (self.ev.on_receiver)(false);
            self.frames.consume(n);
            left -= n;
        }
        Ok(())
    }

    /// Splices up to `left` payload bytes from the sender through the
    /// private pipe into `d`; returns how many (0 when the sender's end
    /// cannot be spliced from: nothing was moved, and `copy` is set).
    fn splice_on(&mut self, left: usize, d: &File) -> Result<usize, String> {
        if self.mid.is_none() {
            let (r, w) = super::link::pipe(0).map_err(|e| format!("pipe: {e}"))?;
            crate::transfer::widen_pipe(&w);
            self.mid = Some((r, w));
        }
        let (mid_r, mid_w) = self.mid.as_ref().expect("made");
        let src = self.frames.get_ref().r.as_raw_fd();
        let got = match splice(src, mid_w.as_raw_fd(), left.min(MID)) {
            Ok(0) => return Err("read: connection closed mid-chunk".into()),
            Ok(got) => got,
            Err(e) if super::link::refused(&e) => {
                self.copy = true;
                return Ok(0);
            }
            Err(e) => return Err(format!("read: {e}")),
        };
        (self.ev.read)();
        (self.ev.on_receiver)(true);
        let mut out = got;
        while out > 0 {
            out -= match splice(mid_r.as_raw_fd(), d.as_raw_fd(), out.min(PIECE)) {
                Ok(0) => Err("receiver: write: connection closed".to_string()),
                Ok(k) => Ok(k),
                Err(e) => Err(format!("receiver: write: {e}")),
            }?;
            (self.ev.wrote)();
        }
        (self.ev.on_receiver)(false);
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
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
            let mut r = Relay::new(&src_out, &ev);
            r.copy = copy;
            let stop = r.run(&dst, |f| {
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

    /// Where a seccomp filter forbids splice, chunks are copied through.
    #[test]
    fn chunks_are_copied_where_splicing_is_forbidden() {
        std::thread::spawn(|| {
            crate::rsync::link::tests::deny_splice_on_this_thread();
            let c = Chunk::new(0, 0, noise(3 << 20, 5));
            let mut frame = c.head().to_vec();
            frame.extend_from_slice(&c.data);
            let (mut src_in, src_out) = ends(true);
            let (dst_in, mut dst_out) = ends(false);
            let sent = frame.clone();
            let feed = std::thread::spawn(move || src_in.write_all(&sent).unwrap());
            let got = std::thread::spawn(move || {
                let mut v = Vec::new();
                dst_out.read_to_end(&mut v).unwrap();
                v
            });
            let ev = Events {
                read: &|| {},
                wrote: &|| {},
                on_receiver: &|_| {},
            };
            let dst = Mutex::new(dst_in);
            let mut r = Relay::new(&src_out, &ev);
            let stop = r.run(&dst, |_| Ok(true));
            // Checked before joining the feeder, which a relay that
            // failed early would leave blocked.
            if let Stop::Failed(e) = &stop {
                panic!("the relay failed: {e}");
            }
            assert!(r.copy, "splicing was refused");
            feed.join().unwrap();
            drop(dst);
            assert!(got.join().unwrap() == frame, "the receiver's bytes differ");
        })
        .join()
        .unwrap();
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
