use super::*;
use crate::fuzz::noise;
use crate::transport::Chunker;
use crate::wire::End;
use proptest::prelude::*;

/// A stream cut into chunks, and its End.
fn stream(len: usize, chunk: usize, seed: u64) -> (Vec<u8>, Vec<Chunk>, End) {
    let data = noise(len, seed);
    let mut c = Chunker::new(chunk);
    let mut chunks = c.push(&data);
    let (last, end) = c.finish(0, String::new());
    chunks.extend(last);
    (data, chunks, end)
}

/// What a driver with a zfs receive that takes `accept` bytes (then
/// fails) saw from one message: replies sent, bytes fed, whether zfs was
/// finished and the connection closed.
#[derive(Default)]
struct Driver {
    fed: Vec<u8>,
    replies: Vec<Msg>,
    finished: usize,
    closed: bool,
    /// zfs receive takes this many bytes more, then fails.
    accept: usize,
    /// zfs receive's exit status when finished.
    status: i32,
}

impl Driver {
    fn deliver(&mut self, s: &mut Session, m: &Msg) {
        let mut step = s.on_msg(m);
        loop {
            step = match step {
                Step::Feed(bytes) => {
                    let Msg::Chunk(c) = m else {
                        panic!("fed without a chunk")
                    };
                    assert!(c.verify(), "fed a chunk that failed its hash");
                    let ok = bytes.len() <= self.accept;
                    if ok {
                        self.accept -= bytes.len();
                        self.fed.extend_from_slice(&bytes);
                    } else {
                        self.accept = 0;
                    }
                    s.fed(c, ok)
                }
                Step::FinishZfs => {
                    self.finished += 1;
                    s.zfs_ended(self.status, "receive said".into())
                }
                Step::Reply(r) => {
                    self.replies.push(r);
                    return;
                }
                Step::Fail(r) => {
                    self.replies.push(r);
                    self.closed = true;
                    return;
                }
                Step::Close => {
                    self.closed = true;
                    return;
                }
                Step::Hold => {
                    let Msg::Chunk(c) = m else {
                        panic!("held without a chunk")
                    };
                    s.hold(c.clone());
                    return;
                }
                Step::Again(next) => {
                    self.deliver(s, &next);
                    return;
                }
                Step::Nothing => return,
            }
        }
    }
}

#[test]
fn with_a_window_chunks_ahead_are_held_and_fed_in_order_and_end_waits_for_the_last() {
    let (data, chunks, end) = stream(1000, 100, 3);
    assert_eq!(chunks.len(), 10);
    let mut s = Session::with_window(300);
    let mut d = Driver {
        accept: usize::MAX,
        ..Driver::default()
    };
    // 3, 2, 1 are held (300 bytes), 4 does not fit: a Nak at the position.
    for i in [3, 2, 1, 4] {
        d.deliver(&mut s, &Msg::Chunk(chunks[i].clone()));
    }
    assert_eq!(s.held_bytes(), 300);
    assert_eq!(d.replies, [Msg::Nak { seq: 0 }]);
    assert!(d.fed.is_empty());
    // A held chunk again changes nothing; 0 comes: 0..=3 fed, one Ack.
    d.deliver(&mut s, &Msg::Chunk(chunks[2].clone()));
    d.deliver(&mut s, &Msg::Chunk(chunks[0].clone()));
    assert_eq!(d.fed, data[..400]);
    assert_eq!(s.held_bytes(), 0);
    assert_eq!(
        d.replies[1..],
        [Msg::Ack {
            seq: 4,
            offset: 400
        }]
    );
    // End before the last chunks waits for them; a damaged held chunk is
    // refused when it comes to be fed.
    d.deliver(&mut s, &Msg::End(end.clone()));
    assert_eq!(d.finished, 0);
    let mut bad = chunks[5].clone();
    bad.data[0] ^= 1;
    for c in [&bad, &chunks[7], &chunks[6], &chunks[4]] {
        d.deliver(&mut s, &Msg::Chunk(c.clone()));
    }
    assert_eq!(d.fed, data[..500]);
    assert_eq!(d.replies.last(), Some(&Msg::Nak { seq: 5 }));
    d.deliver(&mut s, &Msg::Chunk(chunks[5].clone()));
    assert_eq!(d.fed, data[..800]);
    assert_eq!(
        d.replies.last(),
        Some(&Msg::Ack {
            seq: 8,
            offset: 800
        })
    );
    for c in [&chunks[9], &chunks[8]] {
        d.deliver(&mut s, &Msg::Chunk(c.clone()));
    }
    assert_eq!(d.fed, data);
    assert_eq!(d.finished, 1, "End was handled once the last chunk was fed");
    assert!(matches!(
        d.replies.last(),
        Some(Msg::Done { status: 0, .. })
    ));
}

#[test]
fn hello_is_answered_with_the_position() {
    let (_, chunks, _) = stream(100, 40, 1);
    let mut s = Session::new();
    let mut d = Driver {
        accept: usize::MAX,
        ..Driver::default()
    };
    d.deliver(&mut s, &Msg::Chunk(chunks[0].clone()));
    let hello = Msg::Hello {
        version: VERSION,
        role: Role::Receiver,
        owner: Default::default(),
        lane: 0,
    };
    d.deliver(&mut s, &hello);
    assert_eq!(
        d.replies,
        [
            Msg::Ack { seq: 1, offset: 40 },
            Msg::Welcome {
                version: VERSION,
                role: Role::Receiver,
                next_seq: 1,
                offset: 40,
                produced: 0,
            }
        ]
    );
}

#[test]
fn chunks_are_fed_in_order_once_and_acked_only_after_feeding() {
    let (data, chunks, end) = stream(100, 40, 2);
    let mut s = Session::new();
    let mut d = Driver {
        accept: usize::MAX,
        ..Driver::default()
    };
    let mut bad = chunks[1].clone();
    bad.data[0] ^= 1;
    for c in [&chunks[1], &chunks[0], &chunks[0], &bad, &chunks[1]] {
        d.deliver(&mut s, &Msg::Chunk(c.clone()));
    }
    assert_eq!(s.take_refused(), Some(Refused::Corrupt { seq: 1 }));
    assert_eq!(
        d.replies,
        [
            Msg::Nak { seq: 0 },
            Msg::Ack { seq: 1, offset: 40 },
            Msg::Ack { seq: 1, offset: 40 },
            Msg::Nak { seq: 1 },
            Msg::Ack { seq: 2, offset: 80 },
        ]
    );
    // End before the last chunk: it is still on its way.
    d.deliver(&mut s, &Msg::End(end.clone()));
    assert_eq!(d.replies.last(), Some(&Msg::Nak { seq: 2 }));
    assert_eq!(d.finished, 0);
    d.deliver(&mut s, &Msg::Chunk(chunks[2].clone()));
    d.deliver(&mut s, &Msg::End(end.clone()));
    assert_eq!(d.finished, 1);
    let done = Msg::Done {
        status: 0,
        stderr: "receive said".into(),
    };
    assert_eq!(d.replies.last(), Some(&done));
    // Once ended, the same Done for everything, and zfs is not finished
    // twice.
    d.deliver(&mut s, &Msg::End(end));
    d.deliver(&mut s, &Msg::Chunk(chunks[0].clone()));
    assert_eq!(d.finished, 1);
    assert_eq!(&d.replies[d.replies.len() - 2..], [done.clone(), done]);
    assert_eq!(d.fed, data);
    d.deliver(&mut s, &Msg::Bye);
    assert!(d.closed && s.bye());
}

#[test]
fn a_stream_that_does_not_match_its_end_is_an_error() {
    let (_, chunks, mut end) = stream(100, 40, 3);
    let mut s = Session::new();
    let mut d = Driver {
        accept: usize::MAX,
        ..Driver::default()
    };
    for c in &chunks {
        d.deliver(&mut s, &Msg::Chunk(c.clone()));
    }
    end.stream_hash[0] ^= 1;
    d.deliver(&mut s, &Msg::End(end));
    assert!(d.closed);
    assert!(
        matches!(d.replies.last(), Some(Msg::Error { msg }) if msg.contains("hash")),
        "{:?}",
        d.replies.last()
    );
    assert_eq!(d.finished, 0, "zfs receive is not finished on a bad stream");
}

#[test]
fn a_failed_send_and_a_receive_that_stops_taking_input_are_reported() {
    let (_, chunks, mut end) = stream(100, 40, 4);
    let mut s = Session::new();
    let mut d = Driver {
        accept: usize::MAX,
        status: 1,
        ..Driver::default()
    };
    for c in &chunks {
        d.deliver(&mut s, &Msg::Chunk(c.clone()));
    }
    end.status = 2;
    end.stderr = "send broke".into();
    d.deliver(&mut s, &Msg::End(end));
    assert_eq!(
        d.replies.last(),
        Some(&Msg::Done {
            status: 1,
            stderr: "zfs send failed (2): send broke\nreceive said".into()
        })
    );

    // zfs receive takes one chunk, then fails: Done, not Ack.
    let mut s = Session::new();
    let mut d = Driver {
        accept: 40,
        status: 1,
        ..Driver::default()
    };
    for c in &chunks {
        d.deliver(&mut s, &Msg::Chunk(c.clone()));
    }
    let done = Msg::Done {
        status: 1,
        stderr: "receive said".into(),
    };
    assert_eq!(
        d.replies,
        [Msg::Ack { seq: 1, offset: 40 }, done.clone(), done]
    );
    assert_eq!(d.finished, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever arrives in whatever order (duplicates, corrupted copies,
    /// chunks ahead, End early and again), the bytes that reach zfs
    /// receive are a prefix of the stream, each chunk's once and in
    /// order, and every Ack names exactly what was fed. Delivering the
    /// rest in order then completes the stream.
    #[test]
    fn whatever_arrives_zfs_gets_a_prefix_of_the_stream_once(
        len in 0usize..2000,
        chunk in 1usize..300,
        seed in any::<u64>(),
        picks in proptest::collection::vec((any::<u16>(), 0u8..10), 0..120),
        accept in prop_oneof![Just(usize::MAX), 0usize..2000],
    ) {
        let (data, chunks, end) = stream(len, chunk, seed);
        let mut s = Session::new();
        // zfs receive takes `accept` bytes, then fails.
        let mut d = Driver { accept, ..Driver::default() };
        for (pick, kind) in picks {
            let m = match (chunks.len(), kind) {
                (_, 0) => Msg::End(end.clone()),
                (0, _) => continue,
                (n, 1) => {
                    let mut c = chunks[pick as usize % n].clone();
                    let i = pick as usize % c.data.len().max(1);
                    if !c.data.is_empty() {
                        c.data[i] ^= 0x40;
                    } else {
                        c.offset += 1;
                    }
                    Msg::Chunk(c)
                }
                (n, _) => Msg::Chunk(chunks[pick as usize % n].clone()),
            };
            let before = d.replies.len();
            d.deliver(&mut s, &m);
            prop_assert!(data.starts_with(&d.fed));
            prop_assert!(d.finished <= 1, "zfs receive finished twice");
            // An intact stream is never an error, whatever the order.
            prop_assert!(!d.closed, "{:?}", d.replies.last());
            if d.replies.len() > before {
                if let Some(Msg::Ack { seq, offset }) = d.replies.last() {
                    prop_assert_eq!(*offset as usize, d.fed.len());
                    prop_assert_eq!(*seq, s.position().0);
                }
            }
        }
        if accept < data.len() {
            return Ok(());
        }
        let (next, _) = s.position();
        for c in &chunks[next as usize..] {
            d.deliver(&mut s, &Msg::Chunk(c.clone()));
        }
        d.deliver(&mut s, &Msg::End(end));
        prop_assert_eq!(&d.fed, &data);
        prop_assert_eq!(d.finished, 1);
        let done = Msg::Done { status: 0, stderr: "receive said".into() };
        prop_assert_eq!(d.replies.last(), Some(&done));
    }
}
