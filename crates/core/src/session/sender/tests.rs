use super::*;
use crate::fuzz::noise;
use crate::transport::Chunker;

/// A sender session that produced `len` bytes in chunks of `chunk`, and
/// whose zfs send ended; the chunks as produced.
fn produced(len: usize, chunk: usize) -> (Session, Vec<Chunk>) {
    let mut s = Session::new(1 << 20);
    let mut c = Chunker::new(chunk);
    let mut chunks = c.push(&noise(len, 7));
    let (last, end) = c.finish(0, String::new());
    chunks.extend(last);
    for ch in &chunks {
        s.produced(ch.clone());
    }
    s.send_ended(end);
    (s, chunks)
}

fn seq(n: Next) -> Option<u64> {
    match n {
        Next::Chunk(c) => Some(c.seq),
        _ => None,
    }
}

#[test]
fn nothing_goes_out_before_want_and_then_from_there_with_end_last() {
    let (mut s, _) = produced(100, 40);
    let g = s.connected();
    assert_eq!(s.next(g), Next::Wait, "no Want yet");
    let hello = Msg::Hello {
        version: VERSION,
        role: Role::Sender,
        owner: Default::default(),
        lane: 0,
    };
    assert!(matches!(
        s.on_msg(g, &hello),
        Answer::Reply(Msg::Welcome {
            next_seq: 0,
            produced: 3,
            ..
        })
    ));
    assert_eq!(s.on_msg(g, &Msg::Want { seq: 1 }), Answer::Go);
    assert_eq!(seq(s.next(g)), Some(1));
    assert_eq!(seq(s.next(g)), Some(2));
    assert!(matches!(s.next(g), Next::Frame(Msg::End(_))));
    assert_eq!(s.next(g), Next::Wait, "End once per Want");
    // A rewind: the chunks again, then End again.
    s.on_msg(g, &Msg::Want { seq: 0 });
    assert_eq!(seq(s.next(g)), Some(0));
    assert_eq!(seq(s.next(g)), Some(1));
    assert_eq!(seq(s.next(g)), Some(2));
    assert!(matches!(s.next(g), Next::Frame(Msg::End(_))));
}

#[test]
fn a_newer_connection_replaces_the_older() {
    let (mut s, _) = produced(100, 40);
    let old = s.connected();
    s.on_msg(old, &Msg::Want { seq: 0 });
    assert_eq!(seq(s.next(old)), Some(0));
    let new = s.connected();
    assert_eq!(s.next(old), Next::Stop);
    assert_eq!(s.on_msg(old, &Msg::Want { seq: 0 }), Answer::Stale);
    assert_eq!(s.next(new), Next::Wait, "the new one waits for its Want");
    s.on_msg(new, &Msg::Want { seq: 1 });
    assert_eq!(seq(s.next(new)), Some(1));
    s.on_msg(new, &Msg::Bye);
    assert!(s.bye());
    assert_eq!(s.next(new), Next::Stop);
}

#[test]
fn acked_chunks_are_dropped_and_cannot_be_wanted() {
    let (mut s, _) = produced(100, 40);
    let g = s.connected();
    s.on_msg(g, &Msg::Ack { seq: 2, offset: 80 });
    assert_eq!(s.spooled(), 20);
    assert!(matches!(
        s.on_msg(g, &Msg::Want { seq: 1 }),
        Answer::Fail(Msg::Error { .. })
    ));
}

/// Several connections take chunks from one cursor once a Want came;
/// a lane's new connection replaces only that lane's and waits for the
/// next Want, which sends every current connection on from there.
#[test]
fn lanes_share_one_cursor_and_are_replaced_one_by_one() {
    let (mut s, _) = produced(400, 40);
    let a = s.connected_on(0);
    let b = s.connected_on(1);
    s.on_msg(b, &Msg::Want { seq: 0 });
    assert_eq!(seq(s.next(a)), Some(0));
    assert_eq!(seq(s.next(b)), Some(1));
    assert_eq!(seq(s.next(a)), Some(2));
    // Lane 1 comes back on a new connection: lane 0 goes on alone.
    let b2 = s.connected_on(1);
    assert_eq!(s.next(b), Next::Stop);
    assert_eq!(s.on_msg(b, &Msg::Ack { seq: 1, offset: 40 }), Answer::Stale);
    assert_eq!(s.next(b2), Next::Wait);
    assert_eq!(seq(s.next(a)), Some(3));
    // A Want (the rewind after the lane's loss) sends both on from there.
    s.on_msg(a, &Msg::Want { seq: 2 });
    assert_eq!(seq(s.next(b2)), Some(2));
    assert_eq!(seq(s.next(a)), Some(3));
    assert_eq!(seq(s.next(b2)), Some(4));
}

/// A lost lane stops at once (nothing more into a link that may be
/// dead); made again, it joins at the cursor, with no rewind.
#[test]
fn a_lost_lane_stops_and_a_lane_made_again_joins_at_the_cursor() {
    let (mut s, _) = produced(400, 40);
    let a = s.connected_on(0);
    let b = s.connected_on(1);
    // Before sending starts, a join is the Want's business.
    s.on_msg(a, &Msg::Lane { lane: 1, up: true });
    assert_eq!(s.next(b), Next::Wait);
    s.on_msg(a, &Msg::Want { seq: 0 });
    assert_eq!(seq(s.next(b)), Some(0));
    assert_eq!(s.on_msg(a, &Msg::Lane { lane: 1, up: false }), Answer::Go);
    assert_eq!(s.next(b), Next::Stop);
    assert_eq!(s.on_msg(b, &Msg::Ack { seq: 1, offset: 40 }), Answer::Stale);
    assert_eq!(seq(s.next(a)), Some(1));
    // Made again: waits until the coordinator says it joins, then takes
    // the next chunk, not the first.
    let b2 = s.connected_on(1);
    assert_eq!(s.next(b2), Next::Wait);
    s.on_msg(a, &Msg::Lane { lane: 1, up: true });
    assert_eq!(seq(s.next(b2)), Some(2));
    assert_eq!(seq(s.next(a)), Some(3));
    // The coordinator's own lane can be the lost one, too.
    s.on_msg(b2, &Msg::Lane { lane: 0, up: false });
    assert_eq!(s.next(a), Next::Stop);
    assert_eq!(seq(s.next(b2)), Some(4));
}

/// An Ack beyond the cursor (the receiver fed from its reorder window
/// what a rewind sent the cursor back over) moves the cursor up: it must
/// not wait at chunks the Ack dropped.
#[test]
fn an_ack_ahead_of_the_cursor_moves_it_up() {
    let (mut s, _) = produced(200, 40);
    let g = s.connected();
    s.on_msg(g, &Msg::Want { seq: 0 });
    assert_eq!(seq(s.next(g)), Some(0));
    s.on_msg(
        g,
        &Msg::Ack {
            seq: 3,
            offset: 120,
        },
    );
    assert_eq!(seq(s.next(g)), Some(3));
    assert_eq!(seq(s.next(g)), Some(4));
}

#[test]
fn a_chunk_damaged_in_the_spool_is_never_sent_again() {
    let mut s = Session::new(1 << 20);
    let mut c = Chunker::new(40);
    let mut chunks = c.push(&noise(100, 9));
    chunks[1].data[0] ^= 1;
    for ch in chunks {
        s.produced(ch);
    }
    let g = s.connected();
    s.on_msg(g, &Msg::Want { seq: 0 });
    // The first time it goes out as it is (the receiver checks it)...
    assert_eq!(seq(s.next(g)), Some(0));
    assert_eq!(seq(s.next(g)), Some(1));
    // ...asked for again, the sender checks its own copy first.
    s.on_msg(g, &Msg::Want { seq: 1 });
    match s.next(g) {
        Next::Frame(Msg::Error { msg }) => assert!(msg.contains("chunk 1 is damaged"), "{msg}"),
        n => panic!("{n:?}"),
    }
    assert!(s.bye());
}

#[test]
fn the_spool_bounds_the_producer() {
    let mut s = Session::new(100);
    let mut c = Chunker::new(40);
    let chunks = c.push(&noise(400, 3));
    let mut pushed = 0;
    for ch in chunks {
        if !s.has_room() {
            break;
        }
        s.produced(ch);
        pushed += 1;
    }
    assert_eq!(
        pushed, 3,
        "120 bytes held: the limit plus less than a chunk"
    );
    let g = s.connected();
    s.on_msg(g, &Msg::Ack { seq: 2, offset: 80 });
    assert!(s.has_room());
}
