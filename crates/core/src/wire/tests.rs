use super::*;
use proptest::prelude::*;

fn samples() -> Vec<Msg> {
    vec![
        Msg::Hello {
            version: VERSION,
            role: Role::Sender,
            owner: Owner {
                domain: "d0m41n".into(),
                run: u64::MAX - 3,
                label: "backup1 pid 42".into(),
            },
            lane: 0,
        },
        Msg::Welcome {
            version: VERSION,
            role: Role::Receiver,
            next_seq: 7,
            offset: 7 << 20,
            produced: 9,
        },
        Msg::Want { seq: 3 },
        Msg::Chunk(Chunk::new(5, 1234, b"hello world".to_vec())),
        Msg::Ack { seq: 6, offset: 99 },
        Msg::Nak { seq: 6 },
        Msg::End(End {
            chunks: 2,
            total_len: 10,
            stream_hash: [7; 32],
            status: 1,
            stderr: "boom".into(),
        }),
        Msg::Done {
            status: 0,
            stderr: String::new(),
        },
        Msg::Ping { nonce: 1 },
        Msg::Pong { nonce: 1 },
        Msg::Error { msg: "no".into() },
        Msg::Bye,
        Msg::Busy {
            label: "backup2 pid 7".into(),
            heard_ms: 1500,
        },
        Msg::Lane { lane: 3, up: false },
        Msg::Lane { lane: 0, up: true },
    ]
}

#[test]
fn every_message_roundtrips_even_byte_by_byte() {
    let mut all = Vec::new();
    for m in samples() {
        all.extend(encode(&m));
    }
    let mut d = Decoder::default();
    let mut got = Vec::new();
    for b in all {
        d.push(&[b]);
        while let Some(m) = d.next_msg().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, samples());
}

#[test]
fn chunks_verify_their_hash() {
    let mut c = Chunk::new(0, 0, vec![1, 2, 3]);
    assert!(c.verify());
    c.data[1] ^= 1;
    assert!(!c.verify());
}

#[test]
fn compressed_chunks_open_to_the_stream_bytes_and_refuse_damage() {
    let raw = [vec![7u8; 5000], b"tail".to_vec()].concat();
    let mut c = Chunk::new(3, 100, raw.clone());
    assert!(c.compress(1), "a run of sevens shrinks");
    assert_eq!(c.codec, Codec::Zstd);
    assert!(c.data.len() < 100);
    assert_eq!(c.len as usize, raw.len());
    let back = decode_frames(&encode(&Msg::Chunk(c.clone())))
        .unwrap()
        .unwrap();
    assert_eq!(back, Msg::Chunk(c.clone()));
    assert_eq!(c.open().as_deref(), Some(&raw[..]));
    let mut bad = c.clone();
    let last = bad.data.len() - 1;
    bad.data[last] ^= 0x40;
    assert_eq!(bad.open(), None, "damaged payload");
    let mut short = c.clone();
    short.len -= 1;
    assert_eq!(short.open(), None, "length must match");
    let mut incompressible = Chunk::new(0, 0, (0..=255u8).collect());
    assert!(
        !incompressible.compress(1),
        "kept raw when zstd does not shrink it"
    );
    assert_eq!(incompressible.codec, Codec::Raw);
}

#[test]
fn bad_frames_are_errors() {
    let mut d = Decoder::default();
    d.push(&[0, 0, 0, 1, 99]);
    assert_eq!(d.next_msg(), Err(WireError::UnknownType(99)));
    let mut d = Decoder::default();
    d.push(&[0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(d.next_msg(), Err(WireError::TooLarge(_))));
    let mut d = Decoder::default();
    let mut hello = encode(&Msg::Hello {
        version: 99,
        role: Role::Sender,
        owner: Owner::default(),
        lane: 0,
    });
    d.push(&hello);
    assert_eq!(d.next_msg(), Err(WireError::Version(99)));
    hello = encode(&Msg::Ping { nonce: 1 });
    hello[3] += 1; // length one too long: trailing garbage inside the frame
    hello.push(0);
    let mut d = Decoder::default();
    d.push(&hello);
    assert_eq!(d.next_msg(), Err(WireError::Malformed("ping")));
}

proptest! {
    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut d = Decoder::default();
        d.push(&bytes);
        for _ in 0..64 {
            match d.next_msg() {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    #[test]
    fn chunks_roundtrip(seq: u64, offset: u64, data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let m = Msg::Chunk(Chunk::new(seq, offset, data));
        let mut d = Decoder::default();
        d.push(&encode(&m));
        prop_assert_eq!(d.next_msg().unwrap(), Some(m));
    }
}

#[test]
fn chunk_headers_are_read_without_decoding() {
    let mut c = Chunk::new(9, 1000, vec![3u8; 4000]);
    c.compress(1);
    let frame = encode(&Msg::Chunk(c.clone()));
    let h = chunk_header(&frame).unwrap();
    assert_eq!(
        h,
        ChunkHeader {
            seq: 9,
            end: 5000,
            payload: c.data.len()
        }
    );
    assert_eq!(chunk_header(&encode(&Msg::Bye)), None);
}

proptest! {
    /// The decoder that keeps a chunk's frame as its payload accepts and
    /// refuses exactly what the copying decoder does, with the same result.
    #[test]
    fn owned_decoding_matches_copying_decoding(
        seq: u64,
        offset: u64,
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
    ) {
        let mut frame = encode(&Msg::Chunk(Chunk::new(seq, offset, data)));
        // Damage some bytes past the length prefix, and maybe shorten it.
        for (at, x) in flips {
            let i = 4 + at % (frame.len() - 4);
            frame[i] ^= x;
        }
        if cut % 3 == 0 {
            frame.truncate(5 + cut % (frame.len() - 4));
        }
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        prop_assert_eq!(decode_owned(frame.clone()), decode_frame(&frame));
    }

    #[test]
    fn a_chunk_head_and_payload_are_its_frame(seq: u64, offset: u64, data in proptest::collection::vec(any::<u8>(), 0..4096), level in 0i32..2) {
        let mut c = Chunk::new(seq, offset, data);
        if level > 0 {
            c.compress(level);
        }
        let parts = [&c.head()[..], &c.data[..]].concat();
        prop_assert_eq!(&parts, &encode_chunk(&c));
        prop_assert_eq!(decode_owned(parts).unwrap(), Msg::Chunk(c));
    }
}
