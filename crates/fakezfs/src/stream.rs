//! The emulator's send stream format.
//!
//! A stream is one or more substreams (one per snapshot, as `zfs send -I`
//! produces) and a terminator. A substream is a header (JSON, with its own
//! xxh3), data records of at most `RECORD` payload bytes each with an xxh3,
//! and an end record with the payload length and the xxh3 of all of it:
//!
//! ```text
//! "FZS1" u32:hlen header-json u64:xxh3(header)
//! ('D' u32:len u64:xxh3(data) data)*
//! 'E' u64:payload-bytes-in-this-substream u64:xxh3(those bytes)
//! ... next substream ...
//! "FZEN"
//! ```
//!
//! The payload of a substream is the ops section (directories, files,
//! symlinks, deletions; `ops_len` bytes) followed by the synthetic content.
//! A resumed substream (`resuming`) carries the payload from
//! `resume_offset` on.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::state::Synthetic;
use crate::tree::{Entry, Manifest};

pub const MAGIC: &[u8; 4] = b"FZS1";
pub const END: &[u8; 4] = b"FZEN";
pub const RECORD: usize = 256 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub version: u32,
    /// `pool/fs@snap` on the sending side.
    pub toname: String,
    pub toguid: u64,
    /// 0 for a full stream.
    pub fromguid: u64,
    pub fromname: String,
    pub creation: u64,
    pub ops_len: u64,
    pub payload_len: u64,
    pub resume_offset: u64,
    /// Made by `zfs send -t`: it goes on with a receive that was cut, at
    /// `resume_offset`, which is 0 when the cut came before the first
    /// record (real zfs marks such a stream with its RESUMING feature
    /// flag, whatever the offset).
    #[serde(default)]
    pub resuming: bool,
    pub raw: bool,
    pub synthetic: Option<Synthetic>,
    /// Properties sent with `-p`/`-R` (or needed by a raw stream).
    pub props: BTreeMap<String, String>,
    pub encrypted: Option<String>,
    /// With `-R`: the dataset's path below the sent root ("" for the root).
    pub relpath: Option<String>,
}

impl Header {
    pub fn is_full(&self) -> bool {
        self.fromguid == 0
    }
}

/// Serialises the ops that turn `from` into `to`.
pub fn encode_ops(
    from: &Manifest,
    to: &Manifest,
    blob: &mut dyn FnMut(&str) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, _) in from.iter().rev() {
        if !to.contains_key(path) {
            out.push(b'x');
            put_str(&mut out, path);
        }
    }
    for (path, entry) in to {
        if from.get(path) == Some(entry) {
            continue;
        }
        match entry {
            Entry::Dir { mode } => {
                out.push(b'd');
                put_str(&mut out, path);
                out.extend_from_slice(&mode.to_le_bytes());
            }
            Entry::File { mode, hash, .. } => {
                let data = blob(hash);
                out.push(b'f');
                put_str(&mut out, path);
                out.extend_from_slice(&mode.to_le_bytes());
                out.extend_from_slice(&(data.len() as u64).to_le_bytes());
                out.extend_from_slice(&data);
            }
            Entry::Symlink { target } => {
                out.push(b'l');
                put_str(&mut out, path);
                put_str(&mut out, target);
            }
        }
    }
    out.push(b'Z');
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Stores a file body under its hash.
pub type BlobSink<'a> = &'a mut dyn FnMut(&str, &[u8]) -> Result<(), String>;

/// Applies ops to `base`; file bodies are handed to `blob` for storage.
pub fn apply_ops(ops: &[u8], base: &mut Manifest, blob: BlobSink) -> Result<(), String> {
    let mut c = Cursor { b: ops, i: 0 };
    loop {
        let op = c.u8()?;
        if op == b'Z' {
            return Ok(());
        }
        let path = c.string()?;
        match op {
            b'x' => {
                base.retain(|k, _| k != &path && !k.starts_with(&format!("{path}/")));
            }
            b'd' => {
                let mode = c.u32()?;
                base.insert(path, Entry::Dir { mode });
            }
            b'f' => {
                let mode = c.u32()?;
                let size = c.u64()?;
                let data = c.take(size as usize)?;
                let hash = blake3::hash(data).to_hex().to_string();
                blob(&hash, data)?;
                base.insert(path, Entry::File { mode, size, hash });
            }
            b'l' => {
                let target = c.string()?;
                base.insert(path, Entry::Symlink { target });
            }
            _ => return Err(format!("invalid op {op}")),
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.i.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or("truncated ops")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "bad utf-8".to_string())
    }
}

/// Writes one substream: header, payload records from `payload`, end record.
pub fn write_substream(
    w: &mut dyn Write,
    header: &Header,
    payload: &mut dyn FnMut(u64, &mut [u8]) -> usize,
) -> io::Result<()> {
    let json = serde_json::to_vec(header).expect("header serialises");
    w.write_all(MAGIC)?;
    w.write_all(&(json.len() as u32).to_le_bytes())?;
    w.write_all(&json)?;
    w.write_all(&xxh3_64(&json).to_le_bytes())?;
    let mut off = header.resume_offset;
    let mut total = Xxh3::new();
    let mut buf = vec![0u8; RECORD];
    while off < header.payload_len {
        let n = ((header.payload_len - off) as usize).min(RECORD);
        let got = payload(off, &mut buf[..n]);
        debug_assert_eq!(got, n);
        let data = &buf[..n];
        total.update(data);
        let mut rec = [0u8; 13];
        rec[0] = b'D';
        rec[1..5].copy_from_slice(&(n as u32).to_le_bytes());
        rec[5..13].copy_from_slice(&xxh3_64(data).to_le_bytes());
        w.write_all(&rec)?;
        w.write_all(data)?;
        off += n as u64;
    }
    let mut end = [0u8; 17];
    end[0] = b'E';
    end[1..9].copy_from_slice(&(header.payload_len - header.resume_offset).to_le_bytes());
    end[9..17].copy_from_slice(&total.digest().to_le_bytes());
    w.write_all(&end)
}

/// The exact byte length of a substream with this header.
pub fn substream_len(header: &Header) -> u64 {
    let json = serde_json::to_vec(header).expect("header serialises").len() as u64;
    let payload = header.payload_len - header.resume_offset;
    let records = payload.div_ceil(RECORD as u64);
    4 + 4 + json + 8 + records * 13 + payload + 17
}

/// Why a stream could not be read.
#[derive(Debug, PartialEq)]
pub enum StreamError {
    /// The stream ended early: truncated.
    Incomplete,
    /// A checksum did not match, or a record is malformed.
    Corrupt(String),
}

pub enum Next {
    Substream(Header),
    End,
}

/// Reads the start of the next substream, or the terminator.
pub fn read_next(r: &mut dyn Read) -> Result<Next, StreamError> {
    let mut magic = [0u8; 4];
    read_exact(r, &mut magic)?;
    if &magic == END {
        return Ok(Next::End);
    }
    if &magic != MAGIC {
        return Err(StreamError::Corrupt(
            "invalid stream (bad magic number)".into(),
        ));
    }
    let mut len = [0u8; 4];
    read_exact(r, &mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        return Err(StreamError::Corrupt(
            "invalid stream (header too large)".into(),
        ));
    }
    let mut json = vec![0u8; len];
    read_exact(r, &mut json)?;
    let mut sum = [0u8; 8];
    read_exact(r, &mut sum)?;
    if u64::from_le_bytes(sum) != xxh3_64(&json) {
        return Err(StreamError::Corrupt("checksum mismatch".into()));
    }
    serde_json::from_slice(&json)
        .map(Next::Substream)
        .map_err(|e| StreamError::Corrupt(format!("invalid stream header: {e}")))
}

/// What a record read produced.
pub enum Record<'a> {
    Data(&'a [u8]),
    End { bytes: u64, sum: u64 },
}

pub fn read_record<'a>(r: &mut dyn Read, buf: &'a mut Vec<u8>) -> Result<Record<'a>, StreamError> {
    let mut tag = [0u8; 1];
    read_exact(r, &mut tag)?;
    match tag[0] {
        b'D' => {
            let mut h = [0u8; 12];
            read_exact(r, &mut h)?;
            let n = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
            let sum = u64::from_le_bytes(h[4..].try_into().unwrap());
            if n > RECORD {
                return Err(StreamError::Corrupt("invalid record length".into()));
            }
            buf.resize(n, 0);
            read_exact(r, buf)?;
            if xxh3_64(buf) != sum {
                return Err(StreamError::Corrupt("checksum mismatch".into()));
            }
            Ok(Record::Data(&buf[..]))
        }
        b'E' => {
            let mut h = [0u8; 16];
            read_exact(r, &mut h)?;
            Ok(Record::End {
                bytes: u64::from_le_bytes(h[..8].try_into().unwrap()),
                sum: u64::from_le_bytes(h[8..].try_into().unwrap()),
            })
        }
        _ => Err(StreamError::Corrupt("invalid record type".into())),
    }
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), StreamError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(StreamError::Incomplete),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(StreamError::Incomplete),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload_len: u64) -> Header {
        Header {
            version: 1,
            toname: "p/a@s".into(),
            toguid: 5,
            fromguid: 0,
            fromname: String::new(),
            creation: 1,
            ops_len: payload_len,
            payload_len,
            resume_offset: 0,
            resuming: false,
            raw: false,
            synthetic: None,
            props: BTreeMap::new(),
            encrypted: None,
            relpath: None,
        }
    }

    #[test]
    fn length_is_exact_and_records_roundtrip() {
        let h = header(RECORD as u64 * 2 + 17);
        let mut out = Vec::new();
        write_substream(&mut out, &h, &mut |off, buf| {
            buf.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (off as usize + i) as u8);
            buf.len()
        })
        .unwrap();
        assert_eq!(out.len() as u64, substream_len(&h));
        let mut r = &out[..];
        let Next::Substream(got) = read_next(&mut r).unwrap() else {
            panic!()
        };
        assert_eq!(got, h);
        let mut buf = Vec::new();
        let mut total = 0;
        loop {
            match read_record(&mut r, &mut buf).unwrap() {
                Record::Data(d) => total += d.len(),
                Record::End { bytes, .. } => {
                    assert_eq!(bytes as usize, total);
                    break;
                }
            }
        }
    }

    #[test]
    fn corruption_and_truncation_are_detected() {
        let h = header(1000);
        let mut out = Vec::new();
        write_substream(&mut out, &h, &mut |_, buf| buf.len()).unwrap();
        let mut bad = out.clone();
        let at = bad.len() - 100;
        bad[at] ^= 0xff;
        let mut r = &bad[..];
        read_next(&mut r).unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            read_record(&mut r, &mut buf),
            Err(StreamError::Corrupt(_))
        ));
        let mut r = &out[..out.len() - 500];
        read_next(&mut r).unwrap();
        assert!(matches!(
            read_record(&mut r, &mut buf),
            Err(StreamError::Incomplete)
        ));
    }

    #[test]
    fn ops_roundtrip() {
        let mut from = Manifest::new();
        from.insert("old".into(), Entry::Dir { mode: 0o755 });
        from.insert("old/x".into(), Entry::Symlink { target: "y".into() });
        let mut to = Manifest::new();
        let body = b"hello".to_vec();
        let hash = blake3::hash(&body).to_hex().to_string();
        to.insert(
            "f".into(),
            Entry::File {
                mode: 0o644,
                size: 5,
                hash: hash.clone(),
            },
        );
        let ops = encode_ops(&from, &to, &mut |_| body.clone());
        let mut base = from.clone();
        let mut stored = Vec::new();
        apply_ops(&ops, &mut base, &mut |h, d| {
            stored.push((h.to_string(), d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(base, to);
        assert_eq!(stored, vec![(hash, body)]);
    }
}
