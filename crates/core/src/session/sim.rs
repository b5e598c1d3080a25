//! A deterministic simulation of a whole `--rsync` transfer: the real
//! sender, receiver and coordinator sessions, over two virtual links (the
//! coordinator's to each agent) on virtual time. A seeded schedule cuts
//! the links (whatever is in flight is lost, or, on some, delivered after
//! the heal on the connection that was replaced, among the new one's
//! frames; a cut link refuses new connections until it heals), delays
//! them, damages chunks in flight and delivers some twice; half of them
//! send chunks compressed. The agents' drivers are the minimum the real
//! ones do (feed what the session says, answer pings). Every schedule
//! checks:
//! - zfs receive gets a prefix of the stream at every moment and the
//!   whole stream at the end: each byte once, in order, only verified
//!   bytes (a damaged copy is never fed);
//! - the sender's spool never holds more than its bound plus one chunk;
//! - a transfer whose link never comes back gives up after the
//!   inactivity timeout (virtual time) with the documented reason, and
//!   not long after it.

use std::collections::VecDeque;
use std::time::Duration;

use super::coordinator::{Act, Next as After, Relay, Side, Timing, Transfer};
use super::{receiver, sender};
use crate::fuzz::noise;
use crate::transport::Chunker;
use crate::wire::{Chunk, End, Msg, Owner, Role, VERSION};

/// splitmix64: the schedule's randomness, from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// 0..n
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `p` per mille.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The simulation's step.
const TICK: Duration = Duration::from_millis(50);

/// One direction of a connection: frames and when each arrives.
#[derive(Default)]
struct Pipe(VecDeque<(Duration, Msg)>);

/// The coordinator's connection to one agent: frames each way, whether
/// it is open, and the agent's generation for it (the sender's).
#[derive(Default)]
struct Conn {
    /// The coordinator counts it as connected (until it declares it dead).
    open: bool,
    /// The link under it was cut: whatever is written into it is lost.
    cut: bool,
    to_agent: Pipe,
    from_agent: Pipe,
    generation: u64,
    /// When the coordinator last heard anything on it.
    heard: Duration,
    welcomed: Option<Msg>,
}

/// A link: down until `down_until`; one-way delay.
struct Link {
    down_until: Duration,
    delay: Duration,
    /// Never heals (the give-up schedules).
    dead: bool,
}

impl Link {
    fn up(&self, now: Duration) -> bool {
        !self.dead && now >= self.down_until
    }
}

/// What a schedule ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Finished {
        fed: Vec<u8>,
        status: i32,
        at: Duration,
        /// The most payload the receiver's reorder window held at once.
        held_max: usize,
        /// Rounds made again (all lanes lost at once, or lane 0 at the
        /// start), lanes lost alone and lanes made again within a round.
        reconnects: u64,
        lanes_lost: u64,
        lanes_joined: u64,
    },
    GaveUp {
        why: String,
        at: Duration,
    },
    Fatal(String),
}

/// A broken rule to prove the checks catch it (`Broken::None` ships).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    None,
    /// The coordinator does not rewind the sender on a Nak.
    NoRewind,
    /// The coordinator resumes a round at the start, not at the
    /// receiver's position.
    ResumeAtZero,
    /// The receiver's driver feeds chunks the session refused.
    FeedRefused,
}

/// The schedule's knobs, drawn from its seed.
pub struct Schedule {
    pub seed: u64,
    pub len: usize,
    pub chunk: usize,
    pub spool: usize,
    /// Per mille per tick that a link is cut, and the longest cut.
    pub cut_rate: u64,
    pub max_cut: Duration,
    /// Per mille that a chunk in flight is damaged.
    pub damage: u64,
    /// Per mille that a cut connection still delivers what was in flight
    /// towards its agent, after the heal (TCP kept retransmitting it),
    /// interleaved with the frames of the connection that replaced it.
    pub linger: u64,
    /// Per mille that a chunk relayed to the receiver arrives twice.
    pub dup: u64,
    /// The receiver's reorder window in payload bytes (0: none, as the
    /// agents run today; else the spool's size).
    pub window: usize,
    /// Connections per agent (one stream over several): each lane is a
    /// connection to the sender and one to the receiver, each over its own
    /// link with its own faults; chunks cross on the lane they left on.
    pub lanes: usize,
    pub delay: Duration,
    /// The link to the receiver never comes back after its first cut.
    pub never_heals: bool,
    /// Only this lane's links are ever cut (the others never are).
    pub cut_only: Option<usize>,
    /// No link is cut before this time.
    pub cuts_from: Duration,
    /// Chunks travel zstd-compressed where that shrinks them (the stream
    /// has runs of zeros, so some do and some do not).
    pub compress: bool,
    pub timing: Timing,
    pub broken: Broken,
}

impl Schedule {
    pub fn from_seed(seed: u64) -> Schedule {
        let mut r = Rng::new(seed);
        let chunk = 256 + r.below(4096) as usize;
        let mut sch = Schedule {
            seed,
            len: r.below(64 << 10) as usize,
            chunk,
            spool: chunk + r.below(16 << 10) as usize,
            cut_rate: [0, 1, 4, 16][r.below(4) as usize],
            max_cut: Duration::from_millis(r.below(40_000)),
            damage: [0, 5, 50][r.below(3) as usize],
            linger: [0, 300, 1000][r.below(3) as usize],
            dup: [0, 20][r.below(2) as usize],
            window: 0,
            lanes: 1,
            delay: Duration::from_millis(r.below(300)),
            never_heals: r.chance(50),
            cut_only: None,
            cuts_from: Duration::ZERO,
            compress: r.chance(500),
            timing: Timing::new(Duration::from_secs(10), Duration::from_secs(60)),
            broken: Broken::None,
        };
        // Half hold chunks ahead of the position (the receiver's reorder
        // window, as large as the spool); half of those go over several
        // connections (which needs the window).
        if r.chance(500) {
            sch.window = sch.spool;
            sch.lanes = 1 + r.below(4) as usize;
        }
        sch
    }
}

/// Runs one schedule to its end; panics when a rule is broken.
pub fn run(sch: &Schedule) -> Ending {
    let mut rng = Rng::new(sch.seed ^ 0xA5A5);
    let mut data = noise(sch.len, sch.seed | 1);
    for (i, b) in data.iter_mut().enumerate() {
        if (i / 700) % 3 == 0 {
            *b = 0;
        }
    }
    let mut chunker = Chunker::new(sch.chunk);
    let mut pending: VecDeque<Chunk> = chunker.push(&data).into();
    let (last, end) = chunker.finish(0, String::new());
    pending.extend(last);
    if sch.compress {
        for c in pending.iter_mut() {
            c.compress(1);
        }
    }
    let mut end: Option<End> = Some(end);

    let mut snd = sender::Session::new(sch.spool);
    let mut rcv = receiver::Session::with_window(sch.window);
    let mut fed: Vec<u8> = Vec::new();
    let mut now = Duration::ZERO;
    let mut t = Transfer::new(sch.timing, now);
    // Connection and link `2 * lane + side` (side 0: the sender's).
    let n = 2 * sch.lanes;
    // Several lanes differ in delay (other paths, other queues), so their
    // chunks overtake each other.
    let mut links: Vec<Link> = (0..n)
        .map(|i| Link {
            down_until: Duration::ZERO,
            delay: sch.delay + Duration::from_millis(if i >= 2 { rng.below(200) } else { 0 }),
            dead: false,
        })
        .collect();
    // The most the receiver's window held at once.
    let mut held_max = 0;
    let mut conns: Vec<Conn> = (0..n).map(|_| Conn::default()).collect();
    let mut relay: Option<Relay> = None;
    // Lanes opened at the round's start; lanes being made again, since.
    let mut opened = vec![false; sch.lanes];
    let mut joining: Vec<Option<Duration>> = vec![None; sch.lanes];
    let (mut lanes_lost, mut lanes_joined) = (0, 0);
    // When the next round may connect.
    let mut connect_at = Some(Duration::ZERO);
    let mut first_cut = true;
    // Frames of closed connections still on their way to an agent: when,
    // to which (0: sender), on which generation.
    let mut lingering: Vec<(Duration, usize, u64, Msg)> = Vec::new();

    loop {
        now += TICK;
        assert!(
            now < Duration::from_secs(3600),
            "seed {}: no end after an hour of virtual time",
            sch.seed
        );
        if std::env::var_os("SIM_TRACE").is_some() && now.as_millis().is_multiple_of(5000) {
            eprintln!(
                "{now:?} rcv at {:?} links up {:?} conns open {:?} cut {:?} welcomed {:?} relay {} connect_at {connect_at:?} fed {} of {}",
                rcv.position(),
                links.iter().map(|l| l.up(now)).collect::<Vec<_>>(),
                conns.iter().map(|c| c.open).collect::<Vec<_>>(),
                conns.iter().map(|c| c.cut).collect::<Vec<_>>(),
                conns.iter().map(|c| c.welcomed.is_some()).collect::<Vec<_>>(),
                relay.is_some(),
                fed.len(),
                data.len()
            );
        }
        // Faults: a cut loses what is in flight and ends the connection.
        for (i, link) in links.iter_mut().enumerate() {
            let spared = sch.cut_only.is_some_and(|l| l != i / 2) || now < sch.cuts_from;
            if link.up(now) && !spared && rng.chance(sch.cut_rate) {
                link.down_until =
                    now + Duration::from_millis(rng.below(sch.max_cut.as_millis() as u64 + 1));
                if sch.never_heals && i % 2 == 1 && first_cut {
                    link.dead = true;
                }
                first_cut = false;
                let c = &mut conns[i];
                c.cut = true;
                // What was on its way to the agent is lost, or, on a
                // connection TCP keeps retransmitting, delivered after
                // the heal, when the coordinator has long replaced it.
                let linger = c.open && !link.dead && rng.chance(sch.linger);
                for (_, m) in c.to_agent.0.drain(..) {
                    if linger {
                        let at = link.down_until + Duration::from_millis(rng.below(2000));
                        lingering.push((at, i, c.generation, m));
                    }
                }
                c.from_agent.0.clear();
            }
        }
        // The producer: zfs send's chunks while the spool has room.
        while snd.has_room() && !pending.is_empty() {
            snd.produced(pending.pop_front().expect("pending"));
        }
        if pending.is_empty() {
            if let Some(e) = end.take() {
                snd.send_ended(e);
            }
        }
        assert!(
            snd.spooled() <= sch.spool + sch.chunk,
            "seed {}: spool {} over its bound {}",
            sch.seed,
            snd.spooled(),
            sch.spool
        );

        // A new round: open the connections and greet. Lane 0 must come
        // up; another lane whose links are down starts lost.
        if connect_at.is_some_and(|at| now >= at) {
            connect_at = None;
            t.round();
            if links[0].up(now) && links[1].up(now) {
                for lane in 0..sch.lanes {
                    opened[lane] = links[2 * lane].up(now) && links[2 * lane + 1].up(now);
                    if opened[lane] {
                        open_lane(&mut conns, &links, &mut snd, lane, now);
                    }
                }
            } else {
                match t.failed("connection refused", now) {
                    After::Reconnect(wait) => connect_at = Some(now + wait),
                    After::GiveUp(why) => return gave_up(sch, why, now, t.last_progress()),
                }
                continue;
            }
        }

        // Frames of connections long replaced reach the agents; their
        // answers go nowhere (the coordinator closed those).
        let (due, later): (Vec<_>, Vec<_>) = lingering.drain(..).partition(|f| f.0 <= now);
        lingering = later;
        for (_, i, g, m) in due {
            if i % 2 == 0 {
                let _ = snd.on_msg(g, &m);
            } else {
                let _ = receiver_driver(&mut rcv, &m, &mut fed, &data, sch);
            }
        }

        // The agents read what arrived and answer.
        for lane in 0..sch.lanes {
            let (si, ri) = (2 * lane, 2 * lane + 1);
            if conns[si].open {
                let g = conns[si].generation;
                while let Some(m) = arrive(&mut conns[si].to_agent, now) {
                    let reply = match m {
                        Msg::Ping { nonce } => Some(Msg::Pong { nonce }),
                        m => match snd.on_msg(g, &m) {
                            sender::Answer::Reply(r) | sender::Answer::Fail(r) => Some(r),
                            _ => None,
                        },
                    };
                    if let Some(r) = reply {
                        send(&mut conns[si], false, now + links[si].delay, r);
                    }
                }
                // The sender writes what its session says (a few per tick
                // and connection: the link's rate).
                for _ in 0..8 {
                    match snd.next(g) {
                        sender::Next::Chunk(c) => {
                            let mut c = Chunk::clone(&c);
                            if rng.chance(sch.damage) && !c.data.is_empty() {
                                let i = rng.below(c.data.len() as u64) as usize;
                                c.data[i] ^= 0x10;
                            }
                            send(&mut conns[si], false, now + links[si].delay, Msg::Chunk(c));
                        }
                        sender::Next::Frame(m) => {
                            send(&mut conns[si], false, now + links[si].delay, m);
                        }
                        sender::Next::Wait | sender::Next::Stop => break,
                    }
                }
            }
            if conns[ri].open {
                while let Some(m) = arrive(&mut conns[ri].to_agent, now) {
                    for r in receiver_driver(&mut rcv, &m, &mut fed, &data, sch) {
                        send(&mut conns[ri], false, now + links[ri].delay, r);
                    }
                    held_max = held_max.max(rcv.held_bytes());
                }
            }
        }

        // The coordinator: greetings, then the relay.
        let mut acts = Vec::new();
        for i in 0..n {
            let side = if i % 2 == 0 {
                Side::Sender
            } else {
                Side::Receiver
            };
            if !conns[i].open {
                continue;
            }
            while let Some(m) = arrive(&mut conns[i].from_agent, now) {
                conns[i].heard = now;
                if conns[i].welcomed.is_none() {
                    if matches!(m, Msg::Welcome { .. }) {
                        conns[i].welcomed = Some(m);
                    }
                    continue;
                }
                let Some(r) = relay.as_mut() else { continue };
                if let (Side::Sender, Msg::Chunk(c)) = (side, &m) {
                    r.chunk(
                        &mut t,
                        i / 2,
                        c.seq,
                        c.data.len() as u64,
                        c.offset + u64::from(c.len),
                    );
                    // On to the receiver over the same lane.
                    let ri = i + 1;
                    if rng.chance(sch.dup) {
                        send(&mut conns[ri], true, now + links[ri].delay, m.clone());
                    }
                    send(&mut conns[ri], true, now + links[ri].delay, m);
                    continue;
                }
                if sch.broken == Broken::NoRewind && matches!(m, Msg::Nak { .. }) {
                    continue;
                }
                acts.extend(r.on_msg(&mut t, side, m, now));
            }
        }
        let welcomed = |c: &Conn| c.open && c.welcomed.is_some();
        let all_welcomed =
            (0..n).all(|i| !opened[i / 2] || welcomed(&conns[i])) && welcomed(&conns[1]);
        if relay.is_none() && all_welcomed {
            let Some(Msg::Welcome {
                next_seq, offset, ..
            }) = conns[1].welcomed.clone()
            else {
                unreachable!()
            };
            let next = if sch.broken == Broken::ResumeAtZero {
                0
            } else {
                next_seq
            };
            let (r, first) = Relay::start(&mut t, &opened, next, offset, now);
            relay = Some(r);
            acts.extend(first);
        }
        if let Some(r) = relay.as_mut() {
            // Lanes being made again: welcomed on both sides, they join;
            // no answer within the setup wait, they failed.
            for lane in 0..sch.lanes {
                let Some(since) = joining[lane] else { continue };
                if welcomed(&conns[2 * lane]) && welcomed(&conns[2 * lane + 1]) {
                    joining[lane] = None;
                    lanes_joined += 1;
                    acts.extend(r.joined(lane));
                } else if now.saturating_sub(since) > sch.timing.setup {
                    joining[lane] = None;
                    close_lane(&mut conns, lane);
                    r.join_failed(lane, now);
                }
            }
            // Each lane's silence on each side (a lane that is not up
            // has none that counts).
            let silent: Vec<[Duration; 2]> = (0..sch.lanes)
                .map(|lane| {
                    [0, 1].map(|side| {
                        let c = &conns[2 * lane + side];
                        if r.is_up(lane) {
                            now.saturating_sub(c.heard)
                        } else {
                            Duration::ZERO
                        }
                    })
                })
                .collect();
            acts.extend(r.tick(&mut t, now, &silent));
        } else if connect_at.is_none()
            && (0..n)
                .any(|i| opened[i / 2] && now.saturating_sub(conns[i].heard) > sch.timing.setup)
        {
            // A greeting that never came back (the setup wait).
            acts.push(Act::Dead("no answer to the greeting".into()));
        }
        for act in acts {
            // The coordinator's decisions, pings and Acks aside.
            let routine = matches!(act, Act::Send(_, Msg::Ping { .. } | Msg::Ack { .. }));
            if std::env::var_os("SIM_TRACE").is_some() && !routine {
                let lanes = relay.as_ref().map(Relay::lanes);
                eprintln!("{now:?} {act:?} lanes {lanes:?}");
            }
            match act {
                Act::Send(side, m) => {
                    let Some(r) = relay.as_ref() else { continue };
                    let side = if side == Side::Sender { 0 } else { 1 };
                    for lane in r.route(&m) {
                        let i = 2 * lane + side;
                        let at = now + links[i].delay;
                        send(&mut conns[i], true, at, m.clone());
                    }
                }
                Act::LaneLost { lane, .. } => {
                    lanes_lost += 1;
                    close_lane(&mut conns, lane);
                }
                Act::Reopen { lane } => {
                    let Some(r) = relay.as_mut() else { continue };
                    if links[2 * lane].up(now) && links[2 * lane + 1].up(now) {
                        open_lane(&mut conns, &links, &mut snd, lane, now);
                        joining[lane] = Some(now);
                    } else {
                        r.join_failed(lane, now);
                    }
                }
                Act::Finished { status, .. } => {
                    assert_eq!(
                        fed, data,
                        "seed {}: finished with a different stream",
                        sch.seed
                    );
                    return Ending::Finished {
                        fed,
                        status,
                        at: now,
                        held_max,
                        reconnects: t.stats.reconnects,
                        lanes_lost,
                        lanes_joined,
                    };
                }
                Act::Fatal(e) => return Ending::Fatal(e),
                Act::Dead(why) => {
                    relay = None;
                    for c in conns.iter_mut() {
                        c.open = false;
                    }
                    joining.fill(None);
                    match t.failed(&why, now) {
                        After::Reconnect(wait) => connect_at = Some(now + wait),
                        After::GiveUp(why) => return gave_up(sch, why, now, t.last_progress()),
                    }
                    break;
                }
            }
        }
        // A cut connection: the coordinator notices through silence (the
        // relay's stall) or, before the relay, through the greeting wait.
    }
}

/// Opens lane `lane`'s two connections and greets the agents on them.
fn open_lane(
    conns: &mut [Conn],
    links: &[Link],
    snd: &mut sender::Session,
    lane: usize,
    now: Duration,
) {
    for (side, role) in [(0, Role::Sender), (1, Role::Receiver)] {
        let i = 2 * lane + side;
        conns[i] = Conn {
            open: true,
            heard: now,
            ..Conn::default()
        };
        let hello = Msg::Hello {
            version: VERSION,
            role,
            owner: Owner::default(),
            lane: lane as u16,
        };
        conns[i].to_agent.0.push_back((now + links[i].delay, hello));
    }
    // The sender takes the connection when the Hello arrives; a
    // generation given now is the same rule (a later one replaces it).
    conns[2 * lane].generation = snd.connected_on(lane as u16);
}

/// The coordinator ends lane `lane`'s connections.
fn close_lane(conns: &mut [Conn], lane: usize) {
    conns[2 * lane].open = false;
    conns[2 * lane + 1].open = false;
}

/// Writes `m` into a connection, toward the agent or from it; lost when
/// the link under it was cut or the connection is closed.
fn send(c: &mut Conn, to_agent: bool, at: Duration, m: Msg) {
    if !c.open || c.cut {
        return;
    }
    let pipe = if to_agent {
        &mut c.to_agent
    } else {
        &mut c.from_agent
    };
    pipe.0.push_back((at, m));
}

/// A give-up must be for the inactivity timeout, no sooner than it after
/// the last progress, and no later than the round that noticed it could
/// take (the setup wait, three stall times) and the longest backoff.
fn gave_up(sch: &Schedule, why: String, at: Duration, last_progress: Duration) -> Ending {
    assert!(
        why.contains("inactivity timeout"),
        "seed {}: gave up for {why}",
        sch.seed
    );
    let quiet = at - last_progress;
    let latest =
        sch.timing.inactivity + sch.timing.setup + super::coordinator::MAX_BACKOFF + TICK * 2;
    assert!(
        quiet >= sch.timing.inactivity && quiet <= latest,
        "seed {}: gave up {quiet:?} after the last progress",
        sch.seed
    );
    Ending::GaveUp { why, at }
}

/// The next frame whose time has come.
fn arrive(p: &mut Pipe, now: Duration) -> Option<Msg> {
    if p.0.front().is_some_and(|(at, _)| *at <= now) {
        p.0.pop_front().map(|(_, m)| m)
    } else {
        None
    }
}

/// The receiver agent's driver: carries out the session's steps with a
/// zfs receive that takes everything; the replies.
fn receiver_driver(
    rcv: &mut receiver::Session,
    m: &Msg,
    fed: &mut Vec<u8>,
    data: &[u8],
    sch: &Schedule,
) -> Vec<Msg> {
    if let Msg::Ping { nonce } = m {
        return vec![Msg::Pong { nonce: *nonce }];
    }
    // The message, then what the session hands back to handle again (a
    // held chunk that is next, an End that waited): borrowed, then owned.
    let mut m = std::borrow::Cow::Borrowed(m);
    loop {
        let mut next = None;
        if sch.broken == Broken::FeedRefused {
            if let Msg::Chunk(c) = &*m {
                if c.seq == rcv.position().0 && c.offset == fed.len() as u64 && !c.verify() {
                    fed.extend_from_slice(&c.data);
                }
            }
        }
        let mut step = rcv.on_msg(&m).detach();
        loop {
            step = match step {
                receiver::Step::Feed(bytes) => {
                    let Msg::Chunk(c) = &*m else { unreachable!() };
                    fed.extend_from_slice(&bytes);
                    assert!(
                        data.starts_with(fed),
                        "seed {}: zfs receive got bytes that are not the stream's",
                        sch.seed
                    );
                    rcv.fed(c, true)
                }
                receiver::Step::FinishZfs => rcv.zfs_ended(0, String::new()),
                receiver::Step::Hold => {
                    let Msg::Chunk(c) = &*m else { unreachable!() };
                    rcv.hold(c.clone());
                    assert!(
                        rcv.held_bytes() <= sch.window,
                        "seed {}: the reorder window holds {} bytes, over {}",
                        sch.seed,
                        rcv.held_bytes(),
                        sch.window
                    );
                    break;
                }
                receiver::Step::Again(again) => {
                    next = Some(again);
                    break;
                }
                receiver::Step::Reply(r) | receiver::Step::Fail(r) => return vec![r],
                receiver::Step::Close | receiver::Step::Nothing => break,
            };
        }
        match next {
            Some(again) => m = std::borrow::Cow::Owned(again),
            None => return Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
