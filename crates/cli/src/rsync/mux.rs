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
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lock;
use syncoid_rsync_core::wire::mux::{self, Control, HEADER, MAX_PIECE};

/// Bytes read from a channel's socket at a time (one piece).
const PIECE: usize = 256 << 10;

pub struct Mux {
    /// The connection's writing side; None once let go (`finish`).
    out: Mutex<Option<File>>,
    /// The mux's end of each joined channel.
    channels: Mutex<HashMap<u32, UnixStream>>,
    /// When the connection last brought a piece.
    heard: Mutex<Instant>,
}

impl Mux {
    pub fn new(out: File) -> Arc<Mux> {
        Arc::new(Mux {
            out: Mutex::new(Some(out)),
            channels: Mutex::new(HashMap::new()),
            heard: Mutex::new(Instant::now()),
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
        let reader = sock.try_clone()?;
        lock(&self.channels).insert(channel, sock);
        let m = self.clone();
        std::thread::spawn(move || m.pump(channel, reader));
        Ok(())
    }

    fn pump(&self, channel: u32, mut sock: UnixStream) {
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if self.write(&[&mux::header(channel, n), &buf[..n]]).is_err() {
                break;
            }
        }
        self.close(channel);
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
    /// channel's socket; a channel that is gone (or fails) takes them
    /// nowhere. Only the connection's own failure is an error.
    fn deliver(&self, r: &mut File, channel: u32, len: usize) -> io::Result<()> {
        debug_assert!(len <= MAX_PIECE);
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf)?;
        let sock = lock(&self.channels)
            .get(&channel)
            .and_then(|s| s.try_clone().ok());
        if let Some(mut s) = sock {
            if s.write_all(&buf).is_err() {
                self.close(channel);
            }
        }
        Ok(())
    }
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
