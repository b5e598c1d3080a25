use super::*;

fn transfer() -> Transfer {
    Transfer::new(
        Timing::new(Duration::from_secs(10), Duration::from_secs(60)),
        Duration::ZERO,
    )
}

const S: Duration = Duration::from_secs(1);

#[test]
fn a_round_resumes_at_the_receiver_and_relays_acks_naks_and_done() {
    let mut t = transfer();
    t.round();
    let (mut r, first) = Relay::start(&mut t, &[true], 7, 700, S);
    assert_eq!(
        first,
        [
            Act::Send(Side::Sender, Msg::Want { seq: 7 }),
            Act::Send(
                Side::Sender,
                Msg::Ack {
                    seq: 7,
                    offset: 700
                }
            )
        ]
    );
    assert!(t.stats.drove);
    // A Nak rewinds once per position.
    let nak = || Msg::Nak { seq: 9 };
    assert_eq!(
        r.on_msg(&mut t, Side::Receiver, nak(), S),
        [Act::Send(Side::Sender, Msg::Want { seq: 9 })]
    );
    assert_eq!(r.on_msg(&mut t, Side::Receiver, nak(), S), []);
    // An Ack past it is progress and allows the next rewind.
    let ack = Msg::Ack {
        seq: 10,
        offset: 1000,
    };
    assert_eq!(
        r.on_msg(&mut t, Side::Receiver, ack.clone(), 2 * S),
        [Act::Send(Side::Sender, ack)]
    );
    assert_eq!(t.stats.acked_bytes, 1000);
    // A Nak below it is stale (another connection, slower): ignored.
    assert_eq!(r.on_msg(&mut t, Side::Receiver, nak(), 2 * S), []);
    let nak = || Msg::Nak { seq: 10 };
    assert_eq!(
        r.on_msg(&mut t, Side::Receiver, nak(), 2 * S),
        [Act::Send(Side::Sender, Msg::Want { seq: 10 })]
    );
    // The copy sent again refused too: its Naks come while the rewind is
    // fresh; no Ack passes, and a stall time later it is made again.
    assert_eq!(r.on_msg(&mut t, Side::Receiver, nak(), 3 * S), []);
    assert_eq!(r.tick(&mut t, 11 * S, &[[S, S]]).len(), 2, "pings only");
    assert_eq!(
        r.tick(&mut t, 12 * S, &[[S, S]]),
        [Act::Send(Side::Sender, Msg::Want { seq: 10 })]
    );
    assert_eq!(r.on_msg(&mut t, Side::Receiver, nak(), 13 * S), []);
    // Chunks counted; one at or below the highest is a re-send.
    r.chunk(&mut t, 0, 10, 100, 1100);
    r.chunk(&mut t, 0, 9, 100, 1000);
    assert_eq!((t.stats.resent_chunks, t.stats.resent_bytes), (1, 100));
    let done = Msg::Done {
        status: 0,
        stderr: String::new(),
    };
    assert_eq!(
        r.on_msg(&mut t, Side::Receiver, done, 3 * S),
        [
            Act::Send(Side::Sender, Msg::Bye),
            Act::Send(Side::Receiver, Msg::Bye),
            Act::Finished {
                status: 0,
                stderr: String::new()
            }
        ]
    );
    assert_eq!(
        r.on_msg(&mut t, Side::Sender, Msg::Error { msg: "x".into() }, 3 * S),
        [Act::Fatal("sender agent: x".into())]
    );
}

/// Over several connections chunks reach the coordinator out of order,
/// and End may overtake the last chunks' Ack: neither is a re-send or a
/// shortfall in what the summary reports.
#[test]
fn chunks_out_of_order_are_not_resends_and_a_clean_done_counts_the_whole_stream() {
    let mut t = transfer();
    t.round();
    let (mut r, _) = Relay::start(&mut t, &[true], 4, 400, S);
    for seq in [5, 4, 7, 6, 9, 8] {
        r.chunk(&mut t, 0, seq, 100, (seq + 1) * 100);
    }
    assert_eq!((t.stats.resent_chunks, t.stats.wire_bytes), (0, 600));
    // A chunk below where the receiver stood (an earlier run sent it)
    // and one forwarded twice are re-sends.
    r.chunk(&mut t, 0, 3, 100, 400);
    r.chunk(&mut t, 0, 8, 100, 900);
    assert_eq!((t.stats.resent_chunks, t.stats.resent_bytes), (2, 200));
    let ack = Msg::Ack {
        seq: 8,
        offset: 800,
    };
    r.on_msg(&mut t, Side::Receiver, ack, S);
    r.on_msg(&mut t, Side::Sender, Msg::End(end_of(1000)), S);
    let done = |status| Msg::Done {
        status,
        stderr: String::new(),
    };
    // zfs receive failed: what was acknowledged is all that counts.
    let mut failed = transfer();
    let (mut f, _) = Relay::start(&mut failed, &[true], 4, 400, S);
    f.on_msg(&mut failed, Side::Sender, Msg::End(end_of(1000)), S);
    f.on_msg(&mut failed, Side::Receiver, done(1), S);
    assert_eq!(failed.stats.acked_bytes, 400);
    r.on_msg(&mut t, Side::Receiver, done(0), S);
    assert_eq!(t.stats.acked_bytes, 1000);
}

fn end_of(total_len: u64) -> crate::wire::End {
    crate::wire::End {
        chunks: total_len / 100,
        total_len,
        stream_hash: [0; 32],
        status: 0,
        stderr: String::new(),
    }
}

#[test]
fn pings_keep_links_alive_and_silence_kills_them() {
    let mut t = transfer();
    t.round();
    let (mut r, _) = Relay::start(&mut t, &[true], 0, 0, Duration::ZERO);
    assert_eq!(r.tick(&mut t, S, &[[S, S]]), []);
    let pings = r.tick(&mut t, 2 * S, &[[S, S]]);
    assert!(
        matches!(
            pings[..],
            [Act::Send(Side::Sender, Msg::Ping { nonce: 1 }), _]
        ),
        "{pings:?}"
    );
    assert_eq!(
        r.tick(&mut t, 3 * S, &[[S, 11 * S]]),
        [Act::Dead("receiver link idle for 10s".into())]
    );
}

#[test]
fn failed_rounds_back_off_and_give_up_after_the_inactivity_timeout() {
    let mut t = transfer();
    t.round();
    assert_eq!(
        t.failed("cut", S),
        Next::Reconnect(Duration::from_millis(250))
    );
    t.round();
    assert_eq!(
        t.failed("cut", 2 * S),
        Next::Reconnect(Duration::from_millis(500))
    );
    // A round that made progress starts the backoff over.
    t.round();
    let (mut r, _) = Relay::start(&mut t, &[true], 0, 0, 3 * S);
    r.on_msg(
        &mut t,
        Side::Receiver,
        Msg::Ack { seq: 1, offset: 5 },
        4 * S,
    );
    assert_eq!(
        t.failed("cut", 5 * S),
        Next::Reconnect(Duration::from_millis(250))
    );
    for _ in 0..5 {
        t.round();
        t.failed("cut", 6 * S);
    }
    t.round();
    assert_eq!(t.failed("cut", 7 * S), Next::Reconnect(MAX_BACKOFF));
    assert_eq!(t.stats.reconnects, 8);
    match t.failed("cut", 65 * S) {
        Next::GiveUp(why) => assert!(
            why.starts_with("no progress for 60s (inactivity timeout); last error: cut."),
            "{why}"
        ),
        n => panic!("{n:?}"),
    }
}

#[test]
fn a_hello_is_answered_by_welcome_busy_or_error_only() {
    use super::{greeting, Greeting};
    let welcome = Msg::Welcome {
        version: crate::wire::VERSION,
        role: crate::wire::Role::Receiver,
        next_seq: 7,
        offset: 700,
        produced: 9,
    };
    assert_eq!(
        greeting(Some(welcome)),
        Greeting::Welcome {
            next_seq: 7,
            offset: 700
        }
    );
    let busy = Msg::Busy {
        label: "m2".into(),
        heard_ms: 5,
    };
    assert!(matches!(
        greeting(Some(busy)),
        Greeting::Busy { heard_ms: 5, .. }
    ));
    let error = Msg::Error { msg: "no".into() };
    assert_eq!(greeting(Some(error)), Greeting::Failed("no".into()));
    assert_eq!(
        greeting(Some(Msg::Nak { seq: 1 })),
        Greeting::Failed("unexpected nak before the welcome".into())
    );
    assert_eq!(greeting(None), Greeting::Failed("no answer".into()));
}

#[test]
fn a_refusal_sends_a_newcomer_away_and_is_an_outage_for_the_owner_until_both_are_lost() {
    let timing = Timing::new(Duration::from_secs(10), Duration::from_secs(60));
    let mut newcomer = Transfer::new(timing, Duration::ZERO);
    newcomer.round();
    assert!(!newcomer.ask_the_other_after_busy());
    assert_eq!(
        newcomer.refused("taken", false, Duration::from_secs(1)),
        None
    );
    let mut owner = Transfer::new(timing, Duration::ZERO);
    owner.round();
    let _ = Relay::start(&mut owner, &[true], 0, 0, Duration::ZERO);
    assert!(owner.ask_the_other_after_busy());
    assert!(matches!(
        owner.refused("one taken", false, Duration::from_secs(1)),
        Some(Next::Reconnect(_))
    ));
    assert_eq!(
        owner.refused("both taken", true, Duration::from_secs(2)),
        None
    );
    // An owner refused for longer than the inactivity timeout gives up.
    assert!(matches!(
        owner.refused("one taken", false, Duration::from_secs(61)),
        Some(Next::GiveUp(_))
    ));
}
