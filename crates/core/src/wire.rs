//! The `--rsync` wire protocol: versioned, framed messages between the
//! coordinator and the sender and receiver agents.
//!
//! A frame is `u32 length (big-endian) | u8 type | payload`, the length
//! counting type and payload. Integers are big-endian; strings and byte
//! strings are `u32 length | bytes`. Chunks carry their sequence number,
//! their offset in the stream, their length in the stream, a codec (raw or
//! zstd), the BLAKE3 hash of the stream bytes and the payload. A chunk is
//! good only if its payload decodes to exactly its length and that hashes
//! to its hash: what reaches `zfs receive` is what `zfs send` produced. The decoder is
//! incremental (bytes in, messages out) and never panics on garbage: it
//! returns an error, after which the connection is dropped.
//!
//! Nothing here does I/O.

pub const VERSION: u16 = 6;
/// The largest frame we accept: a 16 MiB chunk plus headers.
pub const MAX_FRAME: usize = (16 << 20) + 1024;

/// Message types: a frame's fifth byte.
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const WANT: u8 = 3;
    pub const CHUNK: u8 = 4;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const END: u8 = 7;
    pub const DONE: u8 = 8;
    pub const PING: u8 = 9;
    pub const PONG: u8 = 10;
    pub const ERROR: u8 = 11;
    pub const BYE: u8 = 12;
    pub const BUSY: u8 = 13;
    pub const LANE: u8 = 14;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator = 0,
    Sender = 1,
    Receiver = 2,
}

impl Role {
    /// An agent's role as `agent start` and `agent list` name it: "send"
    /// or "receive" (the zfs command it holds open).
    pub fn agent_arg(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Sender => "send",
            Role::Receiver => "receive",
        }
    }

    /// The agent role named `arg` ("send" or "receive").
    pub fn from_agent_arg(arg: &str) -> Option<Role> {
        match arg {
            "send" => Some(Role::Sender),
            "receive" => Some(Role::Receiver),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> Option<Role> {
        Some(match v {
            0 => Role::Coordinator,
            1 => Role::Sender,
            2 => Role::Receiver,
            _ => return None,
        })
    }
}

/// How a chunk's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u64,
    pub offset: u64,
    /// Bytes of the stream this chunk carries (the payload decoded).
    pub len: u32,
    pub codec: Codec,
    /// BLAKE3 of the stream bytes (not of the payload).
    pub hash: [u8; 32],
    pub data: Payload,
}

/// A chunk's payload bytes. A chunk decoded from a frame keeps the frame
/// and points past its header, so a megabyte chunk is never copied out of
/// the buffer it was read into.
#[derive(Clone, Default)]
pub struct Payload {
    buf: Vec<u8>,
    start: usize,
}

impl From<Vec<u8>> for Payload {
    fn from(buf: Vec<u8>) -> Payload {
        Payload { buf, start: 0 }
    }
}

impl Payload {
    /// The buffer the payload is in (a decoded chunk's: its whole frame).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl std::ops::DerefMut for Payload {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

impl Chunk {
    pub fn new(seq: u64, offset: u64, data: Vec<u8>) -> Chunk {
        Chunk {
            seq,
            offset,
            len: data.len() as u32,
            codec: Codec::Raw,
            hash: *blake3::hash(&data).as_bytes(),
            data: data.into(),
        }
    }

    /// The frame header of this chunk (length prefix included): writing it
    /// and then the payload sends the same bytes as `encode_chunk`, without
    /// copying the payload into a frame first.
    pub fn head(&self) -> [u8; CHUNK_HEAD] {
        let mut h = [0u8; CHUNK_HEAD];
        let frame_len = (CHUNK_HEAD - 4 + self.data.len()) as u32;
        h[..4].copy_from_slice(&frame_len.to_be_bytes());
        h[4] = kind::CHUNK;
        h[5..13].copy_from_slice(&self.seq.to_be_bytes());
        h[13..21].copy_from_slice(&self.offset.to_be_bytes());
        h[21..25].copy_from_slice(&self.len.to_be_bytes());
        h[25] = self.codec as u8;
        h[26..58].copy_from_slice(&self.hash);
        h[58..62].copy_from_slice(&(self.data.len() as u32).to_be_bytes());
        h
    }

    /// The same chunk with a zstd payload, if that is smaller; else
    /// unchanged. Returns whether it shrank.
    pub fn compress(&mut self, level: i32) -> bool {
        if self.codec != Codec::Raw {
            return false;
        }
        match zstd::bulk::compress(&self.data, level) {
            Ok(z) if z.len() < self.data.len() => {
                self.data = z.into();
                self.codec = Codec::Zstd;
                true
            }
            _ => false,
        }
    }

    /// The stream bytes, if the payload decodes to exactly `len` bytes
    /// whose hash is `hash`; `None` for a damaged chunk.
    pub fn open(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        let bytes: std::borrow::Cow<'_, [u8]> = match self.codec {
            Codec::Raw => std::borrow::Cow::Borrowed(&self.data),
            Codec::Zstd => {
                std::borrow::Cow::Owned(zstd::bulk::decompress(&self.data, self.len as usize).ok()?)
            }
        };
        (bytes.len() == self.len as usize && *blake3::hash(&bytes).as_bytes() == self.hash)
            .then_some(bytes)
    }

    pub fn verify(&self) -> bool {
        self.open().is_some()
    }
}

/// How the stream ended on the sending side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub chunks: u64,
    pub total_len: u64,
    pub stream_hash: [u8; 32],
    /// `zfs send`'s exit status (0 = complete stream).
    pub status: i32,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// First message on every connection, from the coordinator: who is
    /// asking (see `ownership`).
    Hello {
        version: u16,
        role: Role,
        owner: Owner,
        /// Which of the transfer's connections this is (`--streams`: one
        /// per lane; a single connection is lane 0). A connection replaces
        /// only the earlier one of its lane.
        lane: u16,
    },
    /// The agent's answer: where it stands.
    Welcome {
        version: u16,
        role: Role,
        next_seq: u64,
        offset: u64,
        produced: u64,
    },
    /// Coordinator -> sender: send chunks from `seq` on.
    Want {
        seq: u64,
    },
    Chunk(Chunk),
    /// Receiver: every chunk below `seq` (`offset` bytes) was taken by zfs
    /// receive. Coordinator -> sender: chunks below `seq` may be dropped.
    Ack {
        seq: u64,
        offset: u64,
    },
    /// Receiver: chunk `seq` failed its hash; send it again.
    Nak {
        seq: u64,
    },
    End(End),
    /// Receiver: zfs receive finished with `status`.
    Done {
        status: i32,
        stderr: String,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Error {
        msg: String,
    },
    /// Coordinator: the transfer is over; exit and clean up.
    Bye,
    /// Agent: refused a Hello, because another coordinator (`label`)
    /// drives this transfer and was heard `heard_ms` ago.
    Busy {
        label: String,
        heard_ms: u64,
    },
    /// Coordinator -> sender, with several connections (`--streams`):
    /// connection `lane` is lost and may send nothing more (`up` false),
    /// or, made again, sends from where sending stands (`up` true).
    Lane {
        lane: u16,
        up: bool,
    },
}

/// A message type's name, for people.
pub fn kind_name(kind: u8) -> &'static str {
    const NAMES: [&str; 15] = [
        "", "hello", "welcome", "want", "chunk", "ack", "nak", "end", "done", "ping", "pong",
        "error", "bye", "busy", "lane",
    ];
    NAMES.get(kind as usize).copied().unwrap_or("unknown")
}

impl Msg {
    /// This message's type (`kind`).
    pub fn kind(&self) -> u8 {
        match self {
            Msg::Hello { .. } => kind::HELLO,
            Msg::Welcome { .. } => kind::WELCOME,
            Msg::Want { .. } => kind::WANT,
            Msg::Chunk(_) => kind::CHUNK,
            Msg::Ack { .. } => kind::ACK,
            Msg::Nak { .. } => kind::NAK,
            Msg::End(_) => kind::END,
            Msg::Done { .. } => kind::DONE,
            Msg::Ping { .. } => kind::PING,
            Msg::Pong { .. } => kind::PONG,
            Msg::Error { .. } => kind::ERROR,
            Msg::Bye => kind::BYE,
            Msg::Busy { .. } => kind::BUSY,
            Msg::Lane { .. } => kind::LANE,
        }
    }

    /// This message's type, for people ("hello", "chunk", ...).
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }
}

/// The coordinator a Hello comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    /// Where its run is alone (one machine, user and lock directory: see
    /// `ownership`); empty for a tool such as `agent stop` run by hand.
    pub domain: String,
    /// Its run, random.
    pub run: u64,
    /// For people: host and pid.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    Version(u16),
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
    }
}

/// Bytes before a chunk frame's payload: length prefix, type, seq,
/// offset, stream length, codec, hash and payload length.
pub const CHUNK_HEAD: usize = 4 + 1 + 8 + 8 + 4 + 1 + 32 + 4;

/// Encodes a chunk as one frame (the payload copied once; the agents write
/// `Chunk::head` and the payload instead).
pub fn encode_chunk(c: &Chunk) -> Vec<u8> {
    let mut f = Vec::with_capacity(CHUNK_HEAD + c.data.len());
    f.extend_from_slice(&c.head());
    f.extend_from_slice(&c.data);
    f
}

/// What the coordinator needs to know of a chunk it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub seq: u64,
    /// Where the chunk's stream bytes end.
    pub end: u64,
    /// Payload bytes on the wire.
    pub payload: usize,
}

/// The header of a chunk frame (as `Decoder::next_frame` returns it),
/// without copying it; `None` for any other frame.
pub fn chunk_header(frame: &[u8]) -> Option<ChunkHeader> {
    if frame.len() < CHUNK_HEAD || frame[4] != kind::CHUNK {
        return None;
    }
    let seq = u64::from_be_bytes(frame[5..13].try_into().ok()?);
    let offset = u64::from_be_bytes(frame[13..21].try_into().ok()?);
    let len = u32::from_be_bytes(frame[21..25].try_into().ok()?);
    Some(ChunkHeader {
        seq,
        end: offset.saturating_add(u64::from(len)),
        payload: frame.len() - CHUNK_HEAD,
    })
}

/// Encodes one message as a frame.
pub fn encode(m: &Msg) -> Vec<u8> {
    if let Msg::Chunk(c) = m {
        return encode_chunk(c);
    }
    let mut w = W(vec![0, 0, 0, 0]);
    match m {
        Msg::Hello {
            version,
            role,
            owner,
            lane,
        } => {
            w.u8(kind::HELLO);
            w.u16(*version);
            w.u8(*role as u8);
            w.bytes(owner.domain.as_bytes());
            w.u64(owner.run);
            w.bytes(owner.label.as_bytes());
            w.u16(*lane);
        }
        Msg::Welcome {
            version,
            role,
            next_seq,
            offset,
            produced,
        } => {
            w.u8(kind::WELCOME);
            w.u16(*version);
            w.u8(*role as u8);
            w.u64(*next_seq);
            w.u64(*offset);
            w.u64(*produced);
        }
        Msg::Want { seq } => {
            w.u8(kind::WANT);
            w.u64(*seq);
        }
        Msg::Chunk(_) => unreachable!("encoded by encode_chunk"),
        Msg::Ack { seq, offset } => {
            w.u8(kind::ACK);
            w.u64(*seq);
            w.u64(*offset);
        }
        Msg::Nak { seq } => {
            w.u8(kind::NAK);
            w.u64(*seq);
        }
        Msg::End(e) => {
            w.u8(kind::END);
            w.u64(e.chunks);
            w.u64(e.total_len);
            w.0.extend_from_slice(&e.stream_hash);
            w.i32(e.status);
            w.bytes(e.stderr.as_bytes());
        }
        Msg::Done { status, stderr } => {
            w.u8(kind::DONE);
            w.i32(*status);
            w.bytes(stderr.as_bytes());
        }
        Msg::Ping { nonce } => {
            w.u8(kind::PING);
            w.u64(*nonce);
        }
        Msg::Pong { nonce } => {
            w.u8(kind::PONG);
            w.u64(*nonce);
        }
        Msg::Error { msg } => {
            w.u8(kind::ERROR);
            w.bytes(msg.as_bytes());
        }
        Msg::Bye => w.u8(kind::BYE),
        Msg::Busy { label, heard_ms } => {
            w.u8(kind::BUSY);
            w.bytes(label.as_bytes());
            w.u64(*heard_ms);
        }
        Msg::Lane { lane, up } => {
            w.u8(kind::LANE);
            w.u16(*lane);
            w.u8(u8::from(*up));
        }
    }
    let len = (w.0.len() - 4) as u32;
    w.0[..4].copy_from_slice(&len.to_be_bytes());
    w.0
}

struct R<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Malformed(self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, WireError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn hash(&mut self) -> Result<[u8; 32], WireError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| WireError::Malformed(self.what))
    }
    fn role(&mut self) -> Result<Role, WireError> {
        Role::from_u8(self.u8()?).ok_or(WireError::Malformed(self.what))
    }
    /// A chunk's fields up to its payload (left empty).
    fn chunk_head(&mut self) -> Result<Chunk, WireError> {
        let seq = self.u64()?;
        let offset = self.u64()?;
        let len = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
        let codec = match self.u8()? {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            _ => return Err(WireError::Malformed("chunk")),
        };
        if len as usize > MAX_FRAME {
            return Err(WireError::Malformed("chunk"));
        }
        Ok(Chunk {
            seq,
            offset,
            len,
            codec,
            hash: self.hash()?,
            data: Payload::default(),
        })
    }
    fn done(&self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(self.what))
        }
    }
}

fn decode_body(t: u8, body: &[u8]) -> Result<Msg, WireError> {
    let what = kind_name(t);
    let mut r = R { b: body, what };
    let m = match t {
        kind::HELLO => {
            let version = r.u16()?;
            // An older version's Hello is laid out differently: say which
            // version it is, not that it is malformed.
            if version != VERSION {
                return Err(WireError::Version(version));
            }
            Msg::Hello {
                version,
                role: r.role()?,
                owner: Owner {
                    domain: r.string()?,
                    run: r.u64()?,
                    label: r.string()?,
                },
                lane: r.u16()?,
            }
        }
        kind::WELCOME => Msg::Welcome {
            version: r.u16()?,
            role: r.role()?,
            next_seq: r.u64()?,
            offset: r.u64()?,
            produced: r.u64()?,
        },
        kind::WANT => Msg::Want { seq: r.u64()? },
        kind::CHUNK => {
            let mut c = r.chunk_head()?;
            c.data = r.bytes()?.to_vec().into();
            Msg::Chunk(c)
        }
        kind::ACK => Msg::Ack {
            seq: r.u64()?,
            offset: r.u64()?,
        },
        kind::NAK => Msg::Nak { seq: r.u64()? },
        kind::END => Msg::End(End {
            chunks: r.u64()?,
            total_len: r.u64()?,
            stream_hash: r.hash()?,
            status: r.i32()?,
            stderr: r.string()?,
        }),
        kind::DONE => Msg::Done {
            status: r.i32()?,
            stderr: r.string()?,
        },
        kind::PING => Msg::Ping { nonce: r.u64()? },
        kind::PONG => Msg::Pong { nonce: r.u64()? },
        kind::ERROR => Msg::Error { msg: r.string()? },
        kind::BYE => Msg::Bye,
        kind::BUSY => Msg::Busy {
            label: r.string()?,
            heard_ms: r.u64()?,
        },
        kind::LANE => Msg::Lane {
            lane: r.u16()?,
            up: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(WireError::Malformed(what)),
            },
        },
        k => return Err(WireError::UnknownType(k)),
    };
    r.done()?;
    if let Msg::Hello { version, .. } | Msg::Welcome { version, .. } = &m {
        if *version != VERSION {
            return Err(WireError::Version(*version));
        }
    }
    Ok(m)
}

/// Incremental decoder: feed it bytes as they arrive, take messages out.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame (length prefix included), `Ok(None)` if
    /// more bytes are needed. The frame keeps the decoder's buffer and
    /// only the bytes after it are copied, so a large chunk is never
    /// copied here.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        // The rest starts a buffer sized for a frame like this one, so it
        // does not grow (and copy) its way up again.
        let mut rest = Vec::with_capacity((4 + len).max(self.buf.len() - 4 - len));
        rest.extend_from_slice(&self.buf[4 + len..]);
        self.buf.truncate(4 + len);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_msg(&mut self) -> Result<Option<Msg>, WireError> {
        match self.next_frame()? {
            Some(f) => decode_owned(f).map(Some),
            None => Ok(None),
        }
    }
}

/// Decodes a whole frame as `next_frame` returns it.
pub fn decode_frame(frame: &[u8]) -> Result<Msg, WireError> {
    decode_body(frame[4], &frame[5..])
}

/// Decodes a whole frame it takes over: a chunk keeps the frame as its
/// payload's buffer instead of copying the payload out.
pub fn decode_owned(frame: Vec<u8>) -> Result<Msg, WireError> {
    if frame.get(4) != Some(&4) {
        return decode_frame(&frame);
    }
    let mut r = R {
        b: &frame[5..],
        what: "chunk",
    };
    let mut c = r.chunk_head()?;
    r.bytes()?;
    r.done()?;
    // The payload is what follows its length: the rest of the frame.
    c.data = Payload {
        buf: frame,
        start: CHUNK_HEAD,
    };
    Ok(Msg::Chunk(c))
}

/// Decodes one frame held whole in `bytes` (tests, and single reads).
pub fn decode_frames(bytes: &[u8]) -> Result<Option<Msg>, WireError> {
    let mut d = Decoder::default();
    d.push(bytes);
    d.next_msg()
}

pub mod mux;

#[cfg(test)]
mod tests;
