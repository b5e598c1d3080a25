//! Micro-benchmarks of the --rsync data path on one core: cutting and
//! hashing a stream into chunks (sender), framing them, and decoding plus
//! verifying them (receiver). `cargo bench -p syncoid-rsync-core`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use syncoid_rsync_core::fuzz::noise;
use syncoid_rsync_core::transport::{Chunker, Receiver, Verdict};
use syncoid_rsync_core::wire::{decode_owned, encode_chunk, Decoder, Msg};

const CHUNK: usize = 1 << 20;
const STREAM: usize = 64 << 20;

fn bench(c: &mut Criterion) {
    let data = noise(STREAM, 0x9e37_79b9_7f4a_7c15);
    let mut g = c.benchmark_group("rsync data path (64 MiB, 1 MiB chunks)");
    g.throughput(Throughput::Bytes(STREAM as u64));
    g.sample_size(10);
    g.bench_function("sender: chunk + hash", |b| {
        b.iter(|| {
            let mut ch = Chunker::new(CHUNK);
            let chunks = ch.push(black_box(&data));
            black_box(ch.finish(0, String::new()));
            chunks.len()
        })
    });
    // As the sender agent does: read straight into the chunk.
    g.bench_function("sender: fill from a reader + hash", |b| {
        b.iter(|| {
            let mut ch = Chunker::new(CHUNK);
            let mut r = black_box(&data[..]);
            let mut n = 0;
            while let Some(c) = ch.fill(&mut r).unwrap() {
                n += c.data.len();
            }
            black_box(ch.finish(0, String::new()));
            n
        })
    });
    let mut ch = Chunker::new(CHUNK);
    let chunks = ch.push(&data);
    g.bench_function("sender: frame", |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|c| encode_chunk(black_box(c)).len())
                .sum::<usize>()
        })
    });
    let frames: Vec<Vec<u8>> = chunks.iter().map(encode_chunk).collect();
    g.bench_function("receiver: deframe + verify", |b| {
        b.iter(|| {
            let mut d = Decoder::default();
            let mut r = Receiver::default();
            for f in &frames {
                d.push(black_box(f));
                let frame = d.next_frame().unwrap().unwrap();
                // As the receiver agent does: the payload stays in the frame.
                let Msg::Chunk(c) = decode_owned(frame).unwrap() else {
                    unreachable!()
                };
                match r.check(&c) {
                    Verdict::Feed(bytes) => {
                        black_box(&bytes);
                        r.fed(&c);
                    }
                    v => panic!("{v:?}"),
                }
            }
            r.offset()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
