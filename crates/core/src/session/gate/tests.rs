use super::*;
use crate::wire::{Role, VERSION};

const WAITS: Waits = Waits {
    setup: Duration::from_secs(30),
    takeover: Duration::from_secs(30),
    inactivity: Duration::from_secs(3600),
};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn hello(domain: &str, run: u64) -> Result<Msg, String> {
    hello_on(domain, run, 0)
}

fn hello_on(domain: &str, run: u64, lane: u16) -> Result<Msg, String> {
    Ok(Msg::Hello {
        version: VERSION,
        role: Role::Coordinator,
        owner: Owner {
            domain: domain.into(),
            run,
            label: format!("{domain}#{run}"),
        },
        lane,
    })
}

fn admitted(v: &Verdict) -> Option<Vec<ConnId>> {
    match v {
        Verdict::Admit { replaces, .. } => Some(replaces.clone()),
        Verdict::Refuse { .. } => None,
    }
}

#[test]
fn a_newer_connection_of_the_owner_replaces_the_older() {
    let mut g = Gate::new(WAITS, secs(0.0));
    g.accepted(1, secs(0.0));
    assert_eq!(
        admitted(&g.hello(1, hello("m1", 7), secs(0.1))),
        Some(vec![])
    );
    g.accepted(2, secs(5.0));
    assert_eq!(
        admitted(&g.hello(2, hello("m1", 7), secs(5.1))),
        Some(vec![1])
    );
}

#[test]
fn another_machine_is_refused_with_busy_until_the_owner_was_silent_for_the_takeover_wait() {
    let mut g = Gate::new(WAITS, secs(0.0));
    g.hello(1, hello("m1", 1), secs(1.0));
    g.heard(1, secs(10.0));
    // Heard 19.9 s ago: refused, and the current connection stays.
    match g.hello(2, hello("m2", 1), secs(29.9)) {
        Verdict::Refuse {
            answer: Msg::Busy { label, heard_ms },
            note,
        } => {
            assert_eq!((label.as_str(), heard_ms), ("m1#1", 19_900));
            assert!(note.contains("driven by m1#1"), "{note}");
        }
        v => panic!("{v:?}"),
    }
    // A refused connection's messages do not count as the owner's.
    g.heard(2, secs(35.0));
    // Silent for 30 s: m2 takes over, and its connection replaces m1's.
    assert_eq!(
        admitted(&g.hello(3, hello("m2", 1), secs(40.0))),
        Some(vec![1])
    );
    // Now m1 is the other machine.
    assert!(admitted(&g.hello(4, hello("m1", 1), secs(41.0))).is_none());
}

/// One stream over several connections: each lane's new connection
/// replaces only that lane's; a later run takes every lane's.
#[test]
fn lanes_are_replaced_one_by_one_and_all_by_a_new_owner() {
    let mut g = Gate::new(WAITS, secs(0.0));
    assert_eq!(
        admitted(&g.hello(1, hello_on("m1", 1, 0), secs(1.0))),
        Some(vec![])
    );
    assert_eq!(
        admitted(&g.hello(2, hello_on("m1", 1, 1), secs(1.0))),
        Some(vec![])
    );
    assert_eq!(
        admitted(&g.hello(3, hello_on("m1", 1, 1), secs(2.0))),
        Some(vec![2])
    );
    g.heard(1, secs(3.0));
    g.heard(3, secs(4.0));
    assert_eq!(
        g.next_tick(),
        secs(3604.0),
        "both lanes keep the agent alive"
    );
    assert_eq!(
        admitted(&g.hello(4, hello_on("m1", 2, 0), secs(5.0))),
        Some(vec![1, 3])
    );
}

#[test]
fn a_later_run_of_the_same_machine_takes_over_at_once() {
    let mut g = Gate::new(WAITS, secs(0.0));
    g.hello(1, hello("m1", 1), secs(1.0));
    g.heard(1, secs(2.0));
    assert_eq!(
        admitted(&g.hello(2, hello("m1", 2), secs(2.1))),
        Some(vec![1])
    );
}

#[test]
fn a_first_frame_that_is_no_hello_gets_an_error_naming_it() {
    let mut g = Gate::new(WAITS, secs(0.0));
    g.accepted(1, secs(0.0));
    match g.hello(1, Ok(Msg::Want { seq: 0 }), secs(0.1)) {
        Verdict::Refuse {
            answer: Msg::Error { msg },
            ..
        } => assert_eq!(msg, "the first message (want) was not a hello"),
        v => panic!("{v:?}"),
    }
    match g.hello(2, Err("unsupported protocol version 3".into()), secs(0.1)) {
        Verdict::Refuse {
            answer: Msg::Error { msg },
            ..
        } => assert!(msg.contains("version 3"), "{msg}"),
        v => panic!("{v:?}"),
    }
    assert!(Gate::first_frame(0).is_err());
    assert!(Gate::first_frame(HELLO_MAX + 1).is_err());
    assert!(Gate::first_frame(HELLO_MAX).is_ok());
    // Refused connections leave nothing pending and no owner.
    assert_eq!(
        admitted(&g.hello(3, hello("m2", 1), secs(0.2))),
        Some(vec![])
    );
}

#[test]
fn a_connection_without_hello_is_closed_after_the_setup_wait() {
    let mut g = Gate::new(WAITS, secs(0.0));
    g.accepted(1, secs(1.0));
    g.accepted(2, secs(20.0));
    assert_eq!(g.next_tick(), secs(31.0));
    assert_eq!(g.tick(secs(31.0)), vec![]);
    let due = g.tick(secs(31.001));
    assert!(matches!(due.as_slice(), [Due::Close(1, _)]), "{due:?}");
    // Connection 2 said Hello in time: nothing more to close.
    g.hello(2, hello("m1", 1), secs(40.0));
    assert_eq!(g.tick(secs(100.0)), vec![]);
}

#[test]
fn the_agent_gives_up_once_after_hearing_nothing_for_its_inactivity_timeout() {
    let waits = Waits {
        inactivity: Duration::from_secs(60),
        ..WAITS
    };
    let mut g = Gate::new(waits, secs(0.0));
    g.hello(1, hello("m1", 1), secs(1.0));
    g.heard(1, secs(50.0));
    assert_eq!(g.next_tick(), secs(110.0));
    assert_eq!(g.tick(secs(110.0)), vec![]);
    // Another connection's silence or chatter changes nothing.
    g.heard(9, secs(100.0));
    let due = g.tick(secs(110.5));
    assert!(
        matches!(due.as_slice(), [Due::GiveUp(why)] if why == "no coordinator for 60s: giving up"),
        "{due:?}"
    );
    assert_eq!(g.tick(secs(200.0)), vec![]);
}

#[test]
fn an_agent_never_driven_gives_up_from_its_start() {
    let waits = Waits {
        inactivity: Duration::from_secs(5),
        ..WAITS
    };
    let mut g = Gate::new(waits, secs(100.0));
    assert_eq!(g.tick(secs(104.0)), vec![]);
    assert!(matches!(g.tick(secs(105.1)).as_slice(), [Due::GiveUp(_)]));
}

#[test]
fn pings_are_answered_at_once_and_beats_go_only_while_busy() {
    assert_eq!(
        answer_at_once(&Msg::Ping { nonce: 4 }),
        Some(Msg::Pong { nonce: 4 })
    );
    assert_eq!(answer_at_once(&Msg::Want { seq: 1 }), None);
    assert_eq!(beats(true), Some(BEAT));
    assert_eq!(beats(false), None);
}

/// Every order of a few connections from two machines, each saying Hello
/// at some time: at most one connection is current, a refused one never
/// replaces it, and a Busy is sent only while another machine's owner was
/// heard within the takeover wait.
#[test]
fn exhaustive_small_orders_keep_one_owner() {
    let askers = [("m1", 1), ("m1", 2), ("m2", 1)];
    let times = [0.0, 10.0, 31.0, 70.0];
    for a in 0..askers.len() {
        for b in 0..askers.len() {
            for c in 0..askers.len() {
                for t in times {
                    let mut g = Gate::new(WAITS, secs(0.0));
                    let mut current: Option<ConnId> = None;
                    let mut owner: Option<&str> = None;
                    let mut last_heard = 0.0;
                    for (id, (i, at)) in [(a, 0.0), (b, t), (c, t + 5.0)].into_iter().enumerate() {
                        let (domain, run) = askers[i];
                        let v = g.hello(id as ConnId, hello(domain, run), secs(at));
                        match v {
                            Verdict::Admit { replaces, .. } => {
                                assert_eq!(replaces, current.into_iter().collect::<Vec<_>>());
                                current = Some(id as ConnId);
                                owner = Some(domain);
                                last_heard = at;
                            }
                            Verdict::Refuse { answer, .. } => {
                                assert!(matches!(answer, Msg::Busy { .. }));
                                assert!(owner.is_some_and(|o| o != domain));
                                assert!(at - last_heard < 30.0);
                            }
                        }
                    }
                }
            }
        }
    }
}
