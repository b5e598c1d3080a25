use super::*;
use crate::fuzz::noise;
use crate::wire::{decode_frames, encode_chunk, Msg};
use proptest::prelude::*;

#[test]
fn chunker_cuts_and_hashes_the_whole_stream() {
    let data = noise(10_000, 3);
    let mut c = Chunker::new(4096);
    let mut chunks = c.push(&data[..5000]);
    chunks.extend(c.push(&data[5000..]));
    let (last, end) = c.finish(0, String::new());
    chunks.extend(last);
    assert_eq!(
        chunks.iter().map(|c| c.data.len()).collect::<Vec<_>>(),
        [4096, 4096, 1808]
    );
    assert_eq!(end.total_len, 10_000);
    assert_eq!(end.chunks, 3);
    let hashes: Vec<u8> = data
        .chunks(4096)
        .flat_map(|c| *blake3::hash(c).as_bytes())
        .collect();
    assert_eq!(
        end.stream_hash,
        *blake3::hash(&hashes).as_bytes(),
        "the stream hash is the hash of the chunk hashes in order"
    );
    assert!(chunks.iter().all(|c| c.verify()));
}

#[test]
fn spool_is_bounded_and_keeps_unacked_chunks() {
    let mut s = Spool::new(8192);
    let mut c = Chunker::new(4096);
    for ch in c.push(&noise(4096 * 3, 1)) {
        if s.has_room() {
            s.push(ch);
        }
    }
    assert_eq!(s.produced(), 2, "the third chunk waits for room");
    assert!(!s.has_room());
    assert!(matches!(s.get(0), Lookup::Ready(_)));
    s.ack(1);
    assert_eq!(s.get(0), Lookup::Gone);
    assert!(s.has_room());
    assert_eq!(s.get(5), Lookup::Pending);
}

#[test]
fn receiver_feeds_only_the_next_verified_chunk() {
    let mut r = Receiver::default();
    let mut c = Chunker::new(10);
    let chunks = c.push(&noise(30, 2));
    assert_eq!(r.check(&chunks[1]), Verdict::Gap { expected: 0 });
    let mut bad = chunks[0].clone();
    bad.data[0] ^= 1;
    assert_eq!(r.check(&bad), Verdict::Corrupt);
    assert_eq!(
        r.check(&chunks[0]),
        Verdict::Feed((&chunks[0].data[..]).into())
    );
    r.fed(&chunks[0]);
    assert_eq!(r.check(&chunks[0]), Verdict::Duplicate);
    let mut shifted = chunks[1].clone();
    shifted.offset += 1;
    shifted.hash = *blake3::hash(&shifted.data).as_bytes();
    assert_eq!(
        r.check(&shifted),
        Verdict::Corrupt,
        "right hash, wrong place"
    );
}

/// A link between coordinator and receiver that loses, duplicates,
/// reorders and corrupts frames, and a coordinator that recovers the way
/// the real one does: on silence, a gap or a Nak it rewinds to the
/// receiver's next_seq. Everything is deterministic per seed.
/// Odd seeds compress their chunks (zstd where it shrinks): the stream has
/// runs of zeros, so some chunks travel compressed and some raw.
fn simulate(seed: u64, len: usize, chunk: usize, spool_limit: usize) -> (Vec<u8>, Vec<u8>, usize) {
    let mut data = noise(len, seed);
    for (i, b) in data.iter_mut().enumerate() {
        if (i / 700) % 3 == 0 {
            *b = 0;
        }
    }
    let compress = seed % 2 == 1;
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut roll = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut chunker = Some(Chunker::new(chunk));
    let mut spool = Spool::new(spool_limit);
    let mut recv = Receiver::default();
    let mut fed = Vec::new();
    let mut end = None;
    let mut pending_input: &[u8] = &data;
    let mut cursor = 0u64;
    let mut in_flight: Vec<Vec<u8>> = Vec::new();
    let mut peak = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "no progress");
        // The sender agent reads zfs send while the spool has room.
        while spool.has_room() && chunker.is_some() {
            let take = pending_input.len().min(chunk.max(1));
            let ck = chunker.as_mut().unwrap();
            for mut c in ck.push(&pending_input[..take]) {
                if compress {
                    c.compress(1);
                }
                spool.push(c);
            }
            pending_input = &pending_input[take..];
            if pending_input.is_empty() {
                let (last, e) = chunker.take().unwrap().finish(0, String::new());
                if let Some(l) = last {
                    spool.push(l);
                }
                end = Some(e);
            }
        }
        peak = peak.max(spool.bytes());
        // The coordinator forwards the chunk at its cursor over the link.
        if let Lookup::Ready(c) = spool.get(cursor) {
            let mut frame = encode_chunk(c);
            match roll(20) {
                0 => {} // lost
                1 => {
                    let at = 4 + roll(frame.len() as u64 - 4) as usize;
                    frame[at] ^= 0x55; // corrupted on the wire
                    in_flight.push(frame);
                }
                2 => {
                    in_flight.push(frame.clone()); // duplicated
                    in_flight.push(frame);
                }
                _ => in_flight.push(frame),
            }
            cursor += 1;
        }
        if roll(4) == 0 && in_flight.len() > 1 {
            let i = roll(in_flight.len() as u64) as usize;
            let f = in_flight.remove(i); // reordered
            in_flight.push(f);
        }
        // The receiver agent takes what arrives.
        let mut rewind = None;
        if !in_flight.is_empty() && roll(2) == 0 {
            let frame = in_flight.remove(0);
            match decode_frames(&frame) {
                Ok(Some(Msg::Chunk(c))) => match recv.check(&c) {
                    Verdict::Feed(bytes) => {
                        let before = recv.offset();
                        fed.extend_from_slice(&bytes);
                        recv.fed(&c);
                        assert_eq!(recv.offset(), before + u64::from(c.len));
                        spool.ack(recv.next_seq());
                    }
                    Verdict::Duplicate => spool.ack(recv.next_seq()),
                    Verdict::Gap { expected } => rewind = Some(expected),
                    Verdict::Corrupt => rewind = Some(recv.next_seq()),
                },
                // A frame whose bytes were damaged: the connection would drop.
                _ => rewind = Some(recv.next_seq()),
            }
        }
        // Silence (everything lost): the coordinator's stall timer fires.
        if in_flight.is_empty()
            && !matches!(spool.get(cursor), Lookup::Ready(_))
            && cursor != recv.next_seq()
        {
            rewind = Some(recv.next_seq());
        }
        if let Some(seq) = rewind {
            in_flight.clear(); // a reconnect discards what was in flight
            cursor = seq;
        }
        if let Some(e) = &end {
            if recv.next_seq() == e.chunks {
                recv.complete(e).expect("complete");
                return (data, fed, peak);
            }
        }
    }
}

#[test]
fn survives_a_hostile_link_small() {
    let (data, fed, _) = simulate(42, 100_000, 1000, 8000);
    assert_eq!(fed, data);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_byte_arrives_once_whatever_the_link_does(
        seed in 1u64..u64::MAX,
        len in 0usize..60_000,
        chunk in 1usize..5000,
        spool_chunks in 1usize..8,
    ) {
        let (data, fed, peak) = simulate(seed, len, chunk, spool_chunks * chunk);
        prop_assert_eq!(fed, data);
        prop_assert!(peak <= spool_chunks * chunk + chunk, "spool grew to {}", peak);
    }
}

#[test]
fn pacer_holds_the_rate_over_every_second_not_just_on_average() {
    use std::time::Duration;
    for rate in [32_000u64, 1_000_000, 50_000_000] {
        let mut p = Pacer::new(rate);
        let piece = p.piece() as u64;
        let mut now = Duration::ZERO;
        let mut sends = Vec::new(); // (time, bytes)
                                    // A sender that always has data: 10 s of pieces, each sent after its wait.
        while now < Duration::from_secs(10) {
            now += p.take(now, piece as usize);
            sends.push((now, piece));
        }
        let total: u64 = sends.iter().map(|s| s.1).sum();
        let mean = total as f64 / now.as_secs_f64();
        assert!(
            (mean - rate as f64).abs() < rate as f64 * 0.05,
            "{rate} B/s: mean {mean}"
        );
        // Any one-second window carries at most the rate plus the burst.
        let burst = (rate / 20).max(piece);
        for (i, (t0, _)) in sends.iter().enumerate() {
            let window: u64 = sends[i..]
                .iter()
                .take_while(|(t, _)| *t < *t0 + Duration::from_secs(1))
                .map(|s| s.1)
                .sum();
            assert!(
                window <= rate + burst + piece,
                "{rate} B/s: burst of {window} bytes at {t0:?}"
            );
        }
        // A trickle, not bursts: no gap between writes is longer than a
        // tenth of a second (at 32 KB/s, 64 KiB pieces left 2 s gaps).
        let gap = sends.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
        assert!(gap <= Duration::from_millis(100), "{rate} B/s: gap {gap:?}");
        // After idling, the credit is capped: no catch-up burst.
        let idle = now + Duration::from_secs(60);
        let mut at = idle;
        let mut sent = 0u64;
        while at < idle + Duration::from_secs(1) {
            at += p.take(at, piece as usize);
            sent += piece;
        }
        assert!(
            sent <= rate + burst + 2 * piece,
            "{rate} B/s: {sent} bytes in the first second after idling"
        );
    }
}

/// A reader that hands out its bytes in the given piece sizes (a pipe
/// whose writer is sometimes slow).
struct Dribble<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl std::io::Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.next % self.sizes.len()].max(1);
        self.next += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

proptest! {
    /// Reading straight into chunks cuts the same chunks, and the same end
    /// record, as pushing the bytes, however the reads come.
    #[test]
    fn filling_from_a_reader_cuts_what_pushing_cuts(
        len in 0usize..20_000,
        size in 1usize..5000,
        sizes in proptest::collection::vec(1usize..9000, 1..8),
    ) {
        let data = noise(len, 7);
        let mut pushed = Chunker::new(size);
        let mut want = pushed.push(&data);
        let (last, want_end) = pushed.finish(0, String::new());
        want.extend(last);

        let mut filled = Chunker::new(size);
        let mut r = Dribble { data: &data, sizes, next: 0 };
        let mut got = Vec::new();
        while let Some(c) = filled.fill(&mut r).unwrap() {
            got.push(c);
        }
        let (last, end) = filled.finish(0, String::new());
        got.extend(last);
        prop_assert_eq!(got, want);
        prop_assert_eq!(end, want_end);
    }
}
