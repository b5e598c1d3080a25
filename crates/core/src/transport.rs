//! The pure parts of the `--rsync` transport: cutting a stream into
//! chunks, the sender's bounded spool of unacknowledged chunks, and the
//! receiver's rule for what may reach `zfs receive`.
//!
//! Invariants (tested by simulation over a link that drops, duplicates,
//! reorders and corrupts):
//! - the receiver feeds chunk `n` only after chunks `0..n`, only if its hash
//!   verifies, and never twice: its `offset` only grows, by each fed chunk;
//! - the sender keeps every chunk until the receiver acknowledged it, so a
//!   reconnection can always resume from the receiver's `next_seq`;
//! - the spool never holds more than its limit plus one chunk.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::wire::{Chunk, End};

/// Cuts a byte stream into numbered, hashed chunks.
pub struct Chunker {
    size: usize,
    buf: Vec<u8>,
    seq: u64,
    offset: u64,
    hasher: blake3::Hasher,
}

impl Chunker {
    pub fn new(size: usize) -> Chunker {
        Chunker {
            size: size.max(1),
            buf: Vec::with_capacity(size),
            seq: 0,
            offset: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    /// How many more bytes complete the current chunk.
    pub fn room(&self) -> usize {
        self.size - self.buf.len()
    }

    /// Adds bytes; returns the chunks they completed.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Chunk> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let n = self.room().min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.size {
                out.push(self.cut());
            }
        }
        out
    }

    /// Reads from `r` straight into the current chunk (no copy) until it
    /// is full or the input ends. Returns the full chunk, or `None` when
    /// the input ended first (then `finish` gives the rest).
    pub fn fill(&mut self, r: &mut impl std::io::Read) -> std::io::Result<Option<Chunk>> {
        use std::io::Read;
        r.take(self.room() as u64).read_to_end(&mut self.buf)?;
        Ok((self.buf.len() == self.size).then(|| self.cut()))
    }

    fn cut(&mut self) -> Chunk {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.size));
        let c = Chunk::new(self.seq, self.offset, data);
        // The whole stream's hash is the hash of the chunks' hashes in
        // order: as strong (each chunk's bytes are checked against its
        // hash), and the bytes are hashed once, not twice.
        self.hasher.update(&c.hash);
        self.seq += 1;
        self.offset += c.data.len() as u64;
        c
    }

    /// The last, partial chunk (if any) and the end record.
    pub fn finish(mut self, status: i32, stderr: String) -> (Option<Chunk>, End) {
        let last = (!self.buf.is_empty()).then(|| self.cut());
        let end = End {
            chunks: self.seq,
            total_len: self.offset,
            stream_hash: *self.hasher.finalize().as_bytes(),
            status,
            stderr,
        };
        (last, end)
    }
}

/// Chunks produced and not yet acknowledged by the receiver.
pub struct Spool {
    /// Shared, so a chunk can be written out without holding the spool
    /// (or copying the chunk).
    chunks: VecDeque<Arc<Chunk>>,
    bytes: usize,
    limit: usize,
    /// Every chunk below this was acknowledged (and dropped).
    acked: u64,
    /// The next sequence number the producer will push.
    produced: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Ready(&'a Arc<Chunk>),
    /// Not produced yet.
    Pending,
    /// Acknowledged and dropped: the receiver has it.
    Gone,
}

impl Spool {
    pub fn new(limit: usize) -> Spool {
        Spool {
            chunks: VecDeque::new(),
            bytes: 0,
            limit,
            acked: 0,
            produced: 0,
        }
    }

    /// The producer may add a chunk (else it must stop reading zfs send).
    pub fn has_room(&self) -> bool {
        self.bytes < self.limit || self.chunks.is_empty()
    }

    pub fn push(&mut self, c: Chunk) {
        debug_assert_eq!(c.seq, self.produced);
        self.produced = c.seq + 1;
        self.bytes += c.data.len();
        self.chunks.push_back(Arc::new(c));
    }

    /// Drops every chunk below `seq`.
    pub fn ack(&mut self, seq: u64) {
        while self.chunks.front().is_some_and(|c| c.seq < seq) {
            let c = self.chunks.pop_front().expect("front exists");
            self.bytes -= c.data.len();
        }
        self.acked = self.acked.max(seq.min(self.produced));
    }

    pub fn get(&self, seq: u64) -> Lookup<'_> {
        if seq < self.acked {
            return Lookup::Gone;
        }
        match self.chunks.front() {
            Some(first) if seq >= first.seq && seq < self.produced => {
                Lookup::Ready(&self.chunks[(seq - first.seq) as usize])
            }
            _ if seq >= self.produced => Lookup::Pending,
            _ => Lookup::Gone,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn produced(&self) -> u64 {
        self.produced
    }
    pub fn acked(&self) -> u64 {
        self.acked
    }
}

/// What the receiver does with an arriving chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The next chunk, verified: feed these stream bytes to zfs receive.
    Feed(std::borrow::Cow<'a, [u8]>),
    /// Already fed: ignore (acknowledge again).
    Duplicate,
    /// Ahead of the next expected chunk: ignore, ask from `expected`.
    Gap { expected: u64 },
    /// Hash mismatch or wrong offset: ask again.
    Corrupt,
}

/// The receiver's position in the stream.
pub struct Receiver {
    next_seq: u64,
    offset: u64,
    hasher: blake3::Hasher,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            next_seq: 0,
            offset: 0,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl Receiver {
    pub fn check<'a>(&self, c: &'a Chunk) -> Verdict<'a> {
        if c.seq < self.next_seq {
            return Verdict::Duplicate;
        }
        if c.seq > self.next_seq {
            return Verdict::Gap {
                expected: self.next_seq,
            };
        }
        if c.offset != self.offset {
            return Verdict::Corrupt;
        }
        match c.open() {
            Some(bytes) => Verdict::Feed(bytes),
            None => Verdict::Corrupt,
        }
    }

    /// Records that chunk `c`'s stream bytes (which `check` said to feed)
    /// reached zfs receive.
    pub fn fed(&mut self, c: &Chunk) {
        assert_eq!(c.seq, self.next_seq, "fed out of order");
        self.hasher.update(&c.hash);
        self.next_seq += 1;
        self.offset += u64::from(c.len);
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether everything the sender produced arrived intact.
    pub fn complete(&self, end: &End) -> Result<(), String> {
        if self.next_seq != end.chunks || self.offset != end.total_len {
            return Err(format!(
                "stream incomplete: {} of {} chunks, {} of {} bytes",
                self.next_seq, end.chunks, self.offset, end.total_len
            ));
        }
        if *self.hasher.finalize().as_bytes() != end.stream_hash {
            return Err("the whole-stream hash does not match".into());
        }
        Ok(())
    }
}

/// A token bucket for smooth bandwidth limits (`--source-bwlimit`,
/// `--target-bwlimit` in `--rsync` mode): bytes go out in small pieces,
/// each after the wait `take` returns, so the rate holds over any second,
/// not just on average. Time is passed in.
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    piece: usize,
    last: Option<std::time::Duration>,
}

impl Pacer {
    /// The largest piece callers send at a time.
    pub const PIECE: usize = 64 << 10;
    /// The smallest: below 10 KB/s pieces come less often than 20 a second.
    const MIN_PIECE: usize = 512;

    /// `rate` in bytes per second (at least 1).
    pub fn new(rate: u64) -> Pacer {
        let rate = rate.max(1) as f64;
        // About 20 pieces a second: a slow limit sends a trickle, not a
        // 64 KiB burst every few seconds (at 32 KB/s that would be a 2 s
        // silence between writes, long enough to look like a dead link).
        let piece = ((rate / 20.0) as usize).clamp(Self::MIN_PIECE, Self::PIECE);
        let burst = (rate / 20.0).max(piece as f64);
        Pacer {
            rate,
            burst,
            tokens: burst,
            piece,
            last: None,
        }
    }

    /// The piece size to send at a time at this rate.
    pub fn piece(&self) -> usize {
        self.piece
    }

    /// Accounts for `n` bytes about to be sent at `now`; returns how long
    /// to wait before sending them.
    pub fn take(&mut self, now: std::time::Duration, n: usize) -> std::time::Duration {
        if let Some(last) = self.last {
            let dt = now.saturating_sub(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests;
