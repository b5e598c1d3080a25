use super::*;
use crate::fuzz::noise;

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
