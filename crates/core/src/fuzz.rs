//! Fuzz entry points: each takes arbitrary bytes and panics only if an
//! invariant breaks. `fuzz/` runs them under cargo-fuzz (`scripts/fuzz.sh`);
//! the unit tests below run them on random and mutated inputs, so they are
//! exercised on every test run. Also the deterministic test streams the
//! transport's tests and the criterion benchmarks share.

use crate::transport::{Receiver, Verdict};
use crate::wire::{decode_frame, encode, Chunk, Decoder, Msg};

/// `len` deterministic, incompressible bytes (xorshift64 from `seed`).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The decoder never panics on garbage, and every message it accepts
/// encodes back to the very frame it came from.
pub fn decode(data: &[u8]) {
    let mut d = Decoder::default();
    // Feed in uneven pieces, as a socket would.
    let mut rest = data;
    let mut step = 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        d.push(&rest[..n]);
        rest = &rest[n..];
        step = step * 3 % 17 + 1;
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(m) = decode_frame(&frame) {
                        assert_eq!(encode(&m), frame, "re-encoding {m:?}");
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// A receiver fed any sequence of chunks (real ones, duplicated, out of
/// order, damaged, compressed or not) feeds each byte of the stream at
/// most once, in order, and only verified bytes.
pub fn receiver(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let stream: Vec<u8> = data.iter().map(|b| b.wrapping_mul(7) & 0x0f).collect();
    let size = usize::from(data[0] % 31) + 1;
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut off = 0u64;
    for (i, piece) in stream.chunks(size).enumerate() {
        let mut c = Chunk::new(i as u64, off, piece.to_vec());
        if i % 2 == 0 {
            c.compress(1);
        }
        off += piece.len() as u64;
        chunks.push(c);
    }
    let mut r = Receiver::default();
    let mut fed = Vec::new();
    for op in &data[1..] {
        let i = usize::from(*op) % chunks.len();
        let mut c = chunks[i].clone();
        if op & 0x80 != 0 && !c.data.is_empty() {
            let at = usize::from(*op) % c.data.len();
            c.data[at] ^= 0x5a;
        }
        if let Verdict::Feed(bytes) = r.check(&c) {
            fed.extend_from_slice(&bytes);
            r.fed(&c);
        }
    }
    assert!(
        stream.starts_with(&fed),
        "fed bytes that are not the stream"
    );
    assert_eq!(r.offset(), fed.len() as u64);
}

/// Frames that a hostile peer could send are handled like garbage.
pub fn frames(data: &[u8]) {
    let msgs = [
        Msg::Bye,
        Msg::Ping { nonce: 7 },
        Msg::Chunk(Chunk::new(1, 2, data.to_vec())),
    ];
    let mut bytes: Vec<u8> = msgs.iter().flat_map(encode).collect();
    bytes.extend_from_slice(data);
    decode(&bytes);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn decode_targets_hold(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            super::decode(&data);
            super::frames(&data);
        }

        #[test]
        fn receiver_target_holds(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::receiver(&data);
        }
    }
}
