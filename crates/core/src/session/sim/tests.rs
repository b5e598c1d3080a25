use super::*;

/// How many schedules `cargo test` runs; `SIM_SCHEDULES` asks for more
/// (`scripts/fuzz.sh`), `SIM_FIRST_SEED` for another range.
fn schedules() -> std::ops::Range<u64> {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let first = env("SIM_FIRST_SEED", 0);
    first..first + env("SIM_SCHEDULES", 10_000)
}

/// Every schedule ends as a transfer must: the whole stream fed once and
/// in order, or a give-up after the inactivity timeout with its reason
/// (`run` checks the rules on the way), and that only when a link stayed
/// away or was cut so often (several times a minute, for up to 40 s, or
/// while greeting, which waits 30 s) that nothing moved for a minute.
#[test]
fn ten_thousand_seeded_fault_schedules_keep_every_rule() {
    let started = std::time::Instant::now();
    let (mut finished, mut gave_up, mut cut_for_good) = (0, 0, 0);
    let (mut lost, mut joined) = (0, 0);
    for seed in schedules() {
        let sch = Schedule::from_seed(seed);
        match run(&sch) {
            Ending::Finished {
                status,
                lanes_lost,
                lanes_joined,
                ..
            } => {
                assert_eq!(status, 0);
                finished += 1;
                lost += lanes_lost;
                joined += lanes_joined;
            }
            Ending::GaveUp { .. } => {
                // Links never cut (chunks damaged, delays) never stop a
                // transfer: only an outage can.
                assert!(
                    sch.never_heals || sch.cut_rate > 0,
                    "seed {seed}: gave up, its links never cut"
                );
                gave_up += 1;
                if sch.never_heals && sch.cut_rate > 0 {
                    cut_for_good += 1;
                }
            }
            Ending::Fatal(e) => panic!("seed {seed}: {e}"),
        }
    }
    eprintln!(
        "{} schedules in {:.1}s: {finished} finished, {gave_up} gave up ({cut_for_good} with a link cut for good); in those that finished, {lost} lanes lost alone and {joined} made again",
        schedules().count(),
        started.elapsed().as_secs_f64()
    );
    assert!(finished > gave_up, "most schedules finish");
    assert!(cut_for_good > 0, "some schedules lose a link for good");
    assert!(
        lost > 0 && joined > 0,
        "some schedules lose lanes alone and make them again"
    );
}

/// A link cut for good: the transfer gives up after the inactivity
/// timeout, with the reason the README documents, not before.
#[test]
fn a_link_that_never_comes_back_is_given_up_after_the_inactivity_timeout() {
    let mut sch = Schedule::from_seed(1);
    sch.len = 200 << 10;
    sch.cut_rate = 1000;
    sch.never_heals = true;
    match run(&sch) {
        Ending::GaveUp { why, at } => {
            assert!(
                why.starts_with("no progress for 60s (inactivity timeout)"),
                "{why}"
            );
            assert!(
                at >= Duration::from_secs(60) && at < Duration::from_secs(75),
                "{at:?}"
            );
        }
        e => panic!("{e:?}"),
    }
}

/// Schedule `seed` with a stream of `len` bytes in 1 KiB chunks over four
/// lanes, a reorder window as large as the `spool`, no chunk damaged and
/// every link healing.
fn four_lanes(seed: u64, len: usize, spool: usize) -> Schedule {
    let mut sch = Schedule::from_seed(seed);
    sch.len = len;
    sch.chunk = 1024;
    sch.spool = spool;
    sch.window = spool;
    sch.lanes = 4;
    sch.damage = 0;
    sch.never_heals = false;
    sch
}

/// One stream over four connections, each link with its own delay: the
/// chunks overtake each other, the receiver's window holds the early ones,
/// and the stream arrives whole, each byte once.
#[test]
fn four_lanes_reorder_and_finish() {
    let mut sch = four_lanes(3, 200 << 10, 64 << 10);
    sch.cut_rate = 0;
    match run(&sch) {
        Ending::Finished { held_max, .. } => {
            assert!(held_max > 0, "no chunk ever came early");
            assert!(held_max <= sch.window);
        }
        e => panic!("{e:?}"),
    }
}

/// One lane of four cut again and again once the transfer is under way,
/// lane 0 (which carries the coordinator's messages first) or another:
/// the others carry the stream on, the lost lane is made again within the
/// round, and the round itself never fails.
#[test]
fn a_lane_lost_alone_only_narrows_the_transfer() {
    for cut in [0, 2] {
        let mut sch = four_lanes(11, 2 << 20, 32 << 10);
        sch.cut_rate = 30;
        sch.max_cut = Duration::from_secs(5);
        sch.cut_only = Some(cut);
        sch.cuts_from = Duration::from_secs(2);
        match run(&sch) {
            Ending::Finished {
                reconnects,
                lanes_lost,
                lanes_joined,
                ..
            } => {
                assert_eq!(reconnects, 0, "lane {cut}: the round failed");
                assert!(lanes_lost >= 2, "lane {cut}: lost {lanes_lost} times");
                assert!(lanes_joined >= 1, "lane {cut}: never made again");
            }
            e => panic!("lane {cut}: {e:?}"),
        }
    }
}

/// Rules broken on purpose are caught: each broken variant breaks a rule
/// or fails to finish a schedule that finishes when it ships clean (a
/// transfer stuck with its links alive gives up at the inactivity
/// timeout: that is a failure too).
#[test]
fn broken_rules_are_caught() {
    for broken in [Broken::NoRewind, Broken::ResumeAtZero, Broken::FeedRefused] {
        let caught = (0..3000u64).any(|seed| {
            let mut sch = Schedule::from_seed(seed);
            if !matches!(run(&sch), Ending::Finished { .. }) {
                return false;
            }
            sch.broken = broken;
            let r = std::panic::catch_unwind(|| run(&sch));
            !matches!(r, Ok(Ending::Finished { .. }))
        });
        assert!(caught, "{broken:?} went unnoticed");
    }
}

/// Replays one schedule with a trace every 5 s of virtual time:
/// `SEED=N SIM_TRACE=1 cargo test -p syncoid-rsync-core replay -- --ignored --nocapture`.
#[test]
#[ignore]
fn replay() {
    let seed = std::env::var("SEED").unwrap().parse().unwrap();
    let sch = Schedule::from_seed(seed);
    eprintln!(
        "len {} chunk {} spool {} window {} lanes {} cut {} max_cut {:?} damage {} linger {} dup {} delay {:?} never {}",
        sch.len,
        sch.chunk,
        sch.spool,
        sch.window,
        sch.lanes,
        sch.cut_rate,
        sch.max_cut,
        sch.damage,
        sch.linger,
        sch.dup,
        sch.delay,
        sch.never_heals
    );
    eprintln!("{:?}", run(&sch));
}
