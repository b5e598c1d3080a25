//! Channels over one connection (`wire::mux`), the same on both ends:
//! the coordinator's side of a host agent and `agent host` itself. Each
//! channel is joined to a unix socket (an agent's, or one end of a
//! socketpair whose other end the coordinator uses as a connection): what
//! is read from it goes out as pieces of its channel, and the pieces of
//! its channel read from the connection are written into it. Either side
//! closing a channel ends only that channel; the connection ending ends
//! them all, and each transfer then reconnects on its own (a connection
//! of its own, as after any outage).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::link;
use crate::lock;
use syncoid_rsync_core::wire::mux::{self, Control, HEADER, MAX_PIECE};

/// Bytes read from a channel's socket at a time (one piece).
const PIECE: usize = 256 << 10;

pub struct Mux {
    /// The connection's writing side; None once let go (`finish`).
    out: Mutex<Option<File>>,
    /// The mux's end of each joined channel.
    channels: Mutex<HashMap<u32, Arc<UnixStream>>>,
    /// When the connection last brought a piece.
    heard: Mutex<Instant>,
    /// Whether pieces are spliced from the connection into the channels
    /// (until the kernel refuses once).
    splice_in: AtomicBool,
}

impl Mux {
    pub fn new(out: File) -> Arc<Mux> {
        Arc::new(Mux {
            out: Mutex::new(Some(out)),
            channels: Mutex::new(HashMap::new()),
            heard: Mutex::new(Instant::now()),
            splice_in: AtomicBool::new(true),
        })
    }

    /// Writes whole pieces, never interleaved with another's.
    fn write(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut out = lock(&self.out);
        let Some(w) = out.as_mut() else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        for p in parts {
            w.write_all(p)?;
        }
        Ok(())
    }

    pub fn send(&self, c: &Control) -> io::Result<()> {
        self.write(&[&mux::encode(c)])
    }

    /// Joins `sock` to `channel`: a thread sends what it reads from it
    /// until it closes, then tells the other side (Close).
    pub fn join(self: &Arc<Self>, channel: u32, sock: UnixStream) -> io::Result<()> {
        let sock = Arc::new(sock);
        lock(&self.channels).insert(channel, sock.clone());
        let m = self.clone();
        std::thread::spawn(move || m.pump(channel, &sock));
        Ok(())
    }

    /// Sends what `sock` brings as pieces of `channel` until it closes:
    /// spliced through a private pipe (the bytes never enter our memory),
    /// or read and written where the kernel refuses.
    fn pump(&self, channel: u32, sock: &UnixStream) {
        let mut via = link::pipe(0).ok();
        if let Some((_, w)) = &via {
            crate::transfer::widen_pipe(w);
        }
        let mut buf = Vec::new();
        loop {
            let moved = match &via {
                Some((r, w)) => self.pump_spliced(channel, sock, r, w),
                None => {
                    buf.resize(PIECE, 0);
                    self.pump_copied(channel, sock, &mut buf)
                }
            };
            match moved {
                Moved::More => {}
                Moved::Ended => break,
                Moved::Refused => via = None,
            }
        }
        self.close(channel);
    }

    fn pump_copied(&self, channel: u32, mut sock: &UnixStream, buf: &mut [u8]) -> Moved {
        let n = match sock.read(buf) {
            Ok(0) | Err(_) => return Moved::Ended,
            Ok(n) => n,
        };
        match self.write(&[&mux::header(channel, n), &buf[..n]]) {
            Ok(()) => Moved::More,
            Err(_) => Moved::Ended,
        }
    }

    fn pump_spliced(&self, channel: u32, sock: &UnixStream, r: &OwnedFd, w: &OwnedFd) -> Moved {
        let n = match splice_once(sock.as_raw_fd(), w.as_raw_fd(), PIECE) {
            Ok(0) => return Moved::Ended,
            Ok(n) => n,
            Err(e) if link::refused(&e) => return Moved::Refused,
            Err(_) => return Moved::Ended,
        };
        let mut out = lock(&self.out);
        let Some(out) = out.as_mut() else {
            return Moved::Ended;
        };
        if out.write_all(&mux::header(channel, n)).is_err() {
            return Moved::Ended;
        }
        let mut left = n;
        while left > 0 {
            match splice_once(r.as_raw_fd(), out.as_raw_fd(), left) {
                Ok(0) => return Moved::Ended,
                Ok(m) => left -= m,
                Err(e) if link::refused(&e) => {
                    // A connection the kernel does not splice into: what
                    // is in the pipe is read and written, and so from now on.
                    let mut rest = vec![0u8; left];
                    let Ok(fd) = r.try_clone() else {
                        return Moved::Ended;
                    };
                    let copied = File::from(fd).read_exact(&mut rest).is_ok()
                        && out.write_all(&rest).is_ok();
                    return if copied { Moved::Refused } else { Moved::Ended };
                }
                Err(_) => return Moved::Ended,
            }
        }
        Moved::More
    }

    /// Ends `channel` on this side and tells the other (once).
    pub fn close(&self, channel: u32) {
        if let Some(s) = lock(&self.channels).remove(&channel) {
            let _ = s.shutdown(Shutdown::Both);
            let _ = self.send(&Control::Close { channel });
        }
    }

    /// Ends the channel the other side closed.
    fn closed(&self, channel: u32) {
        if let Some(s) = lock(&self.channels).remove(&channel) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// How long the connection has brought nothing.
    pub fn silent_for(&self) -> Duration {
        lock(&self.heard).elapsed()
    }

    /// Lets go of the writing side: the other end reads the end of the
    /// connection.
    pub fn finish(&self) {
        lock(&self.out).take();
    }

    /// Reads pieces from `r` until the connection ends, writing each into
    /// its channel and handing control messages (but Close) to
    /// `on_control`. Then every channel is ended. Returns why it ended.
    pub fn demux(&self, mut r: File, mut on_control: impl FnMut(Control)) -> String {
        let why = loop {
            let mut h = [0u8; HEADER];
            if let Err(e) = r.read_exact(&mut h) {
                break format!("connection closed: {e}");
            }
            let (channel, len) = match mux::parse_header(&h) {
                Ok(p) => p,
                Err(e) => break format!("protocol error: {e}"),
            };
            *lock(&self.heard) = Instant::now();
            if channel == mux::CONTROL {
                let mut body = vec![0u8; len];
                if let Err(e) = r.read_exact(&mut body) {
                    break format!("connection closed: {e}");
                }
                match mux::decode(&body) {
                    Ok(Control::Close { channel }) => self.closed(channel),
                    Ok(c) => on_control(c),
                    Err(e) => break format!("protocol error: {e}"),
                }
                continue;
            }
            if let Err(e) = self.deliver(&mut r, channel, len) {
                break format!("connection closed: {e}");
            }
        };
        for (_, s) in lock(&self.channels).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        why
    }

    /// Moves one piece's `len` bytes from the connection into its
    /// channel's socket (spliced where the kernel allows); a channel that
    /// is gone (or fails) takes them nowhere. Only the connection's own
    /// failure is an error.
    fn deliver(&self, r: &mut File, channel: u32, len: usize) -> io::Result<()> {
        debug_assert!(len <= MAX_PIECE);
        // The channel's own handle: no descriptor duplicated per piece.
        let sock = lock(&self.channels).get(&channel).cloned();
        let Some(sock) = sock else {
            return discard(r, len);
        };
        let mut left = len;
        while left > 0 && self.splice_in.load(Ordering::Relaxed) {
            match splice_once(r.as_raw_fd(), sock.as_raw_fd(), left) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(m) => left -= m,
                Err(e) if link::refused(&e) => {
                    self.splice_in.store(false, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    // The channel's socket failed (its agent is gone).
                    self.close(channel);
                    return discard(r, left);
                }
            }
        }
        if left > 0 {
            let mut buf = vec![0u8; left];
            r.read_exact(&mut buf)?;
            if (&*sock).write_all(&buf).is_err() {
                self.close(channel);
            }
        }
        Ok(())
    }
}

/// What a pump did with one piece.
enum Moved {
    More,
    Ended,
    /// The kernel refused to splice: read and write from now on.
    Refused,
}

/// One `splice(2)` of up to `len` bytes, tried again when a signal
/// interrupted it.
fn splice_once(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        match link::cvt(link::splice(from, to, len, 0)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Reads and drops `len` bytes of the connection.
fn discard(r: &mut File, len: usize) -> io::Result<()> {
    let n = io::copy(&mut r.take(len as u64), &mut io::sink())?;
    if n < len as u64 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn file(s: &UnixStream) -> File {
        File::from(OwnedFd::from(s.try_clone().unwrap()))
    }

    /// Two muxes joined by a socketpair, each demuxing on a thread.
    fn pair() -> (Arc<Mux>, Arc<Mux>) {
        let (a, b) = UnixStream::pair().unwrap();
        let (ma, mb) = (Mux::new(file(&a)), Mux::new(file(&b)));
        for (m, s) in [(ma.clone(), a), (mb.clone(), b)] {
            std::thread::spawn(move || m.demux(file(&s), |_| {}));
        }
        (ma, mb)
    }

    /// Channel `n` joined on both muxes; returns the two outer ends.
    fn channel(ma: &Arc<Mux>, mb: &Arc<Mux>, n: u32) -> (UnixStream, UnixStream) {
        let (a_out, a_in) = UnixStream::pair().unwrap();
        let (b_out, b_in) = UnixStream::pair().unwrap();
        ma.join(n, a_in).unwrap();
        mb.join(n, b_in).unwrap();
        (a_out, b_out)
    }

    #[test]
    fn channels_carry_their_own_bytes_and_end_alone() {
        let (ma, mb) = pair();
        let (mut a1, mut b1) = channel(&ma, &mb, 1);
        let (mut a2, mut b2) = channel(&ma, &mb, 2);
        let one: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let two: Vec<u8> = (0..1_500_000u32).map(|i| (i * 13 + 1) as u8).collect();
        let (o1, o2) = (one.clone(), two.clone());
        let w1 = std::thread::spawn(move || a1.write_all(&o1).map(|_| a1));
        let w2 = std::thread::spawn(move || b2.write_all(&o2).map(|_| b2));
        let mut got1 = vec![0u8; one.len()];
        b1.read_exact(&mut got1).unwrap();
        let mut got2 = vec![0u8; two.len()];
        a2.read_exact(&mut got2).unwrap();
        assert!(got1 == one && got2 == two, "each channel's bytes, in order");
        let (a1, b2) = (w1.join().unwrap().unwrap(), w2.join().unwrap().unwrap());
        // Channel 1 closed on one side ends on the other; 2 goes on.
        drop(a1);
        let mut rest = Vec::new();
        b1.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let mut b2 = b2;
        b2.write_all(b"still here").unwrap();
        let mut got = [0u8; 10];
        a2.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still here");
    }

    /// Two muxes joined by two pipes, as over ssh: pieces are spliced
    /// both ways, or, where a seccomp filter forbids splicing (a
    /// container's), read and written; the bytes are the same.
    #[test]
    fn over_pipes_channels_carry_their_bytes_spliced_or_not() {
        for denied in [false, true] {
            std::thread::spawn(move || {
                if denied {
                    crate::rsync::link::tests::deny_splice_on_this_thread();
                }
                let (ab_r, ab_w) = link::pipe(0).unwrap();
                let (ba_r, ba_w) = link::pipe(0).unwrap();
                let (ma, mb) = (Mux::new(ab_w.into()), Mux::new(ba_w.into()));
                let (da, db) = (ma.clone(), mb.clone());
                std::thread::spawn(move || da.demux(ba_r.into(), |_| {}));
                std::thread::spawn(move || db.demux(ab_r.into(), |_| {}));
                let (mut a, mut b) = channel(&ma, &mb, 3);
                let data = syncoid_rsync_core::fuzz::noise(3 << 20, 11);
                let sent = data.clone();
                let w = std::thread::spawn(move || a.write_all(&sent).map(|_| a));
                let mut got = vec![0u8; data.len()];
                b.read_exact(&mut got).unwrap();
                assert!(got == data, "a -> b differs (splice denied: {denied})");
                let mut a = w.join().unwrap().unwrap();
                let sent = data.clone();
                let w = std::thread::spawn(move || b.write_all(&sent));
                a.read_exact(&mut got).unwrap();
                w.join().unwrap().unwrap();
                assert!(got == data, "b -> a differs (splice denied: {denied})");
                for m in [&ma, &mb] {
                    assert_eq!(m.splice_in.load(Ordering::Relaxed), !denied);
                }
            })
            .join()
            .unwrap();
        }
    }

    #[test]
    fn the_connection_ending_ends_every_channel() {
        let (a, b) = UnixStream::pair().unwrap();
        let ma = Mux::new(file(&a));
        let (mut outer, inner) = UnixStream::pair().unwrap();
        ma.join(4, inner).unwrap();
        let m = ma.clone();
        let reader = file(&a);
        let t = std::thread::spawn(move || m.demux(reader, |_| {}));
        drop(b);
        let why = t.join().unwrap();
        assert!(why.starts_with("connection closed"), "{why}");
        let mut rest = Vec::new();
        outer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn control_messages_reach_the_handler_and_garbage_ends_the_connection() {
        let (a, b) = UnixStream::pair().unwrap();
        let ma = Mux::new(file(&a));
        let (tx, rx) = std::sync::mpsc::channel();
        let m = ma.clone();
        let reader = file(&b);
        let t = std::thread::spawn(move || m.demux(reader, |c| tx.send(c).unwrap()));
        let mut w = file(&a);
        w.write_all(&mux::encode(&Control::Ping { nonce: 5 }))
            .unwrap();
        // A piece for a channel nobody joined is dropped, not an error.
        w.write_all(&mux::header(9, 3)).unwrap();
        w.write_all(b"abc").unwrap();
        w.write_all(&mux::encode(&Control::Pong { nonce: 6 }))
            .unwrap();
        assert_eq!(rx.recv().unwrap(), Control::Ping { nonce: 5 });
        assert_eq!(rx.recv().unwrap(), Control::Pong { nonce: 6 });
        w.write_all(&mux::header(1, MAX_PIECE + 1)).unwrap();
        let why = t.join().unwrap();
        assert!(why.starts_with("protocol error"), "{why}");
    }
}
