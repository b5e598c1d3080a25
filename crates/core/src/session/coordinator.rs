//! The coordinator's session: a transfer as rounds of connections to the
//! two agents, and, within a round, what it does with each message.
//! Time is a value (`now`: any monotonic instant, as a Duration since an
//! epoch the driver chose); the driver reads the links, calls this, and
//! carries out the actions.
//!
//! Within a round (`Relay`):
//! - it starts once both agents welcomed it: Want to the sender at the
//!   receiver's position (`next_seq`), so every round resumes where the
//!   receiver stands, and an Ack there: the Acks of the chunks fed just
//!   before a cut may have been lost with it, and a sender whose spool
//!   is full of such chunks would otherwise wait for room for good (the
//!   simulation found that deadlock: everything produced was received,
//!   nothing was left to send, nothing acknowledged it);
//! - chunks flow from sender to receiver (the driver forwards them
//!   without looking inside); their headers are counted, a chunk
//!   forwarded before (or below where the receiver stood) is a re-send;
//! - End is forwarded to the receiver; Ack to the sender (the spool may
//!   drop what it covers), and an Ack that moves the receiver's offset is
//!   progress;
//! - a Nak below an Ack already heard is stale (it came over a slower
//!   connection than the Ack) and is ignored;
//! - a Nak rewinds the sender with a Want, once per position: chunks
//!   already in flight behind a refused one are refused too, and each
//!   would otherwise rewind again. A rewind that no Ack passed within a
//!   stall time is made again: if the copy sent again was refused too,
//!   the receiver's Naks came while the first rewind was still fresh,
//!   and nothing else would ever move the transfer on (the simulation
//!   found it stuck for good without this, its links alive);
//! - Done ends the transfer: Bye to both;
//! - an agent's Error is fatal; a link silent for the stall time is dead;
//!   pings go out every heartbeat, so a live link is never silent.
//!
//! Over several connections to each agent (`--streams`: lanes, each a
//! connection to the sender and one to the receiver), a lane fails on
//! its own and the others carry on:
//! - a lane is lost when either of its connections is silent for the
//!   stall time or fails; the sender is told (Lane down: it sends nothing
//!   more into a link that may be dead) and rewound (Want) to the first
//!   chunk that may be lost with it: the lowest the lane carried that the
//!   receiver has not acknowledged, or the first the coordinator has not
//!   seen, whichever comes first (a chunk the receiver already has comes
//!   back as a duplicate, which it acknowledges again: its Ack may have
//!   been lost on that lane); and the last Ack goes to the sender again
//!   (those sent over the lost lane may be lost with it);
//! - a lost lane is made again after its own backoff (doubling, capped,
//!   reset once it carries a chunk); made again, the sender is told (Lane
//!   up) and it joins at the cursor, with no rewind;
//! - messages to an agent go on the lowest lane that is up; pings and Bye
//!   on every lane that is up;
//! - only when the last lane is lost does the round fail (the round's
//!   rules across rounds follow).
//!
//! A round that moves nothing for the inactivity timeout ends, however
//! alive its links (`Transfer` then gives up).
//!
//! Across rounds (`Transfer`): a failed round is tried again after a
//! capped backoff that starts over once a round made progress; no
//! progress for the inactivity timeout ends the transfer (the agents keep
//! their state, the next run resumes).

use std::time::Duration;

use crate::wire::Msg;

/// Counters the transfer knows exactly.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub acked_bytes: u64,
    /// Chunk payload bytes moved from sender to receiver (compressed size,
    /// re-sent chunks included).
    pub wire_bytes: u64,
    /// Chunks (and their payload bytes) the sender had to send again:
    /// lost in flight at a reconnect, or refused by the receiver.
    pub resent_chunks: u64,
    pub resent_bytes: u64,
    /// Stream bytes the sender has produced and sent on (the end of the
    /// furthest chunk forwarded).
    pub sent_bytes: u64,
    pub reconnects: u64,
    /// The chunks forwarded so far (to count re-sends).
    pub forwarded: Forwarded,
    /// Both agents welcomed this run at least once: it drives the transfer.
    pub drove: bool,
    /// Chunk payload bytes each connection (lane) carried, with
    /// `--streams` above 1.
    pub lane_bytes: Vec<u64>,
    /// Lanes lost alone (the others carried on) and made again.
    pub lanes_lost: u64,
}

/// The chunks forwarded so far: all below `below`, and those in `above`.
/// Over several connections chunks come out of order, so the highest one
/// forwarded does not say which were: a chunk that overtook another does
/// not make the other a re-send. Chunks stay in `above` only while one
/// below them is missing, which the sender's spool bounds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forwarded {
    below: u64,
    above: std::collections::BTreeSet<u64>,
}

impl Forwarded {
    /// Records chunk `seq`; false if it was forwarded before.
    pub fn first(&mut self, seq: u64) -> bool {
        if seq < self.below || !self.above.insert(seq) {
            return false;
        }
        self.settle();
        true
    }

    /// Moves the mark past the chunks above it that now follow on.
    fn settle(&mut self) {
        while self.above.remove(&self.below) {
            self.below += 1;
        }
    }

    /// The first chunk not forwarded yet.
    pub fn next(&self) -> u64 {
        self.below
    }

    /// The receiver stands at chunk `seq` (it said so in its Welcome or
    /// an Ack): every chunk below it was forwarded, by this run or an
    /// earlier one.
    pub fn start_at(&mut self, seq: u64) {
        if seq > self.below {
            self.below = seq;
            self.above = self.above.split_off(&seq);
            self.settle();
        }
    }
}

/// Timing rules, all from the link timeout and the inactivity timeout
/// (settings: `--link-timeout`, `--inactivity-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A link silent this long is dead (the link timeout).
    pub stall: Duration,
    /// Pings (coordinator) and beats (agents) go out this often: six per
    /// stall time, so a live link is never that quiet.
    pub heartbeat: Duration,
    /// A step that sets a connection up (an agent started, a greeting
    /// answered) may take this long before its link counts as hung: three
    /// stall times, since it includes an ssh handshake and, for a start,
    /// zfs starting on a host that may be busy.
    pub setup: Duration,
    /// Another machine's coordinator may take an agent over once its
    /// owner was silent this long: three stall times. A live coordinator
    /// reconnects within a few seconds of a link coming back (its backoff
    /// is capped at 2 s), so only one that died or lost the agents for
    /// that long loses them.
    pub takeover: Duration,
    /// No progress for this long ends the transfer.
    pub inactivity: Duration,
}

/// The default link timeout. A live link is never this quiet (pings,
/// beats and data keep it moving). Short, because an outage shorter than
/// this is left to TCP, which resends with a doubling backoff (0.2, 0.6,
/// 1.4, 3.0, 6.2, 12.6 s after the cut): from a heal to the next resend,
/// or to our reconnection at the stall time, is then never more than
/// about 4 s. (At 30 s, a 15 s blackhole took 11.5 s to flow again.)
pub const DEFAULT_STALL: Duration = Duration::from_secs(10);

impl Timing {
    /// The rules for a link timeout `stall` and an inactivity timeout.
    pub fn new(stall: Duration, inactivity: Duration) -> Timing {
        Timing {
            stall,
            heartbeat: stall / 6,
            setup: stall * 3,
            takeover: stall * 3,
            inactivity,
        }
    }

    /// What an agent's door waits for.
    pub fn waits(&self) -> super::gate::Waits {
        super::gate::Waits {
            setup: self.setup,
            takeover: self.takeover,
            inactivity: self.inactivity,
        }
    }
}

/// Which agent a message goes to or came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sender,
    Receiver,
}

/// What the driver does.
#[derive(Debug, PartialEq, Eq)]
pub enum Act {
    /// Send this to an agent.
    Send(Side, Msg),
    /// The stream ended: zfs receive's status and stderr. Bye went to both.
    Finished { status: i32, stderr: String },
    /// An agent failed in a way no reconnection mends.
    Fatal(String),
    /// This round's links are dead (`why`): end them; `Transfer` decides
    /// what follows.
    Dead(String),
    /// Lane `lane` is lost (`why`): end its connections.
    LaneLost { lane: usize, why: String },
    /// Make lane `lane` again: open and greet its connections, then say
    /// how it went (`Relay::joined`, `Relay::join_failed`).
    Reopen { lane: usize },
}

/// Tells the sender that lane `lane` was lost (`up` false) or made again.
fn lane_to_sender(lane: usize, up: bool) -> Act {
    Act::Send(
        Side::Sender,
        Msg::Lane {
            lane: lane as u16,
            up,
        },
    )
}

/// A lane's state within a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneState {
    /// Carrying chunks.
    Up,
    /// Lost; made again at `retry_at`.
    Down { retry_at: Duration },
    /// Being made again (the driver opens and greets its connections).
    Joining,
}

struct Lane {
    state: LaneState,
    backoff: Backoff,
    /// Chunks relayed on this lane that the receiver has not acknowledged.
    carried: std::collections::BTreeSet<u64>,
}

/// One round: both agents connected and welcomed.
pub struct Relay {
    /// The last rewind: its position and when.
    rewound_to: Option<(u64, Duration)>,
    /// The highest chunk the receiver acknowledged (its position), and
    /// the stream offset there.
    acked: u64,
    acked_offset: u64,
    nonce: u64,
    last_ping: Duration,
    /// The stream's length, once the sender's End came by.
    stream_len: Option<u64>,
    lanes: Vec<Lane>,
}

/// The progress a round made (`Transfer::progressed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved(pub bool);

impl Relay {
    /// Both agents welcomed this round on lane 0 and on the lanes in `up`;
    /// the receiver stands at `next_seq` (`offset` bytes fed). The others
    /// are made while the stream flows: the first actions are a Lane down
    /// for each (the sender may hold an earlier round's connection on it,
    /// which must not take chunks) and a Reopen, then Want and Ack at the
    /// receiver's position, to the sender.
    pub fn start(
        t: &mut Transfer,
        up: &[bool],
        next_seq: u64,
        offset: u64,
        now: Duration,
    ) -> (Relay, Vec<Act>) {
        t.stats.acked_bytes = t.stats.acked_bytes.max(offset);
        t.stats.forwarded.start_at(next_seq);
        t.stats.drove = true;
        if up.len() > 1 {
            t.stats.lane_bytes.resize(up.len(), 0);
        }
        let mut relay = Relay {
            rewound_to: None,
            acked: next_seq,
            acked_offset: offset,
            nonce: 0,
            last_ping: now,
            stream_len: None,
            lanes: Vec::new(),
        };
        let mut acts = Vec::new();
        for (lane, up) in up.iter().enumerate() {
            let state = if *up || lane == 0 {
                LaneState::Up
            } else {
                acts.push(lane_to_sender(lane, false));
                acts.push(Act::Reopen { lane });
                LaneState::Joining
            };
            relay.lanes.push(Lane {
                state,
                backoff: Backoff::default(),
                carried: Default::default(),
            });
        }
        let want = Msg::Want { seq: next_seq };
        let ack = Msg::Ack {
            seq: next_seq,
            offset,
        };
        acts.push(Act::Send(Side::Sender, want));
        acts.push(Act::Send(Side::Sender, ack));
        (relay, acts)
    }

    /// Each lane's state.
    pub fn lanes(&self) -> Vec<LaneState> {
        self.lanes.iter().map(|l| l.state).collect()
    }

    /// Whether lane `lane` is up.
    pub fn is_up(&self, lane: usize) -> bool {
        self.lanes
            .get(lane)
            .is_some_and(|l| l.state == LaneState::Up)
    }

    /// The lanes a message to an agent goes on: pings (each connection
    /// must stay heard) and Bye on every lane that is up; anything else on
    /// the lowest that is up.
    pub fn route(&self, m: &Msg) -> Vec<usize> {
        let mut up = (0..self.lanes.len()).filter(|l| self.is_up(*l));
        if matches!(m, Msg::Ping { .. } | Msg::Bye) {
            up.collect()
        } else {
            vec![up.next().unwrap_or(0)]
        }
    }

    /// Lane `lane` is lost (`why`: a connection failed or was silent for
    /// the stall time). Already lost: nothing. The last one up: the
    /// round's links are dead.
    pub fn lost(&mut self, t: &mut Transfer, lane: usize, why: String, now: Duration) -> Vec<Act> {
        if !self.is_up(lane) {
            return Vec::new();
        }
        if (0..self.lanes.len()).all(|l| l == lane || !self.is_up(l)) {
            return vec![Act::Dead(why)];
        }
        t.stats.lanes_lost += 1;
        let l = &mut self.lanes[lane];
        let first_unseen = t.stats.forwarded.next();
        let resume = l
            .carried
            .first()
            .map_or(first_unseen, |c| first_unseen.min(*c));
        l.carried.clear();
        l.state = LaneState::Down {
            retry_at: now + l.backoff.take(),
        };
        self.rewound_to = Some((resume, now));
        vec![
            Act::LaneLost { lane, why },
            lane_to_sender(lane, false),
            Act::Send(Side::Sender, Msg::Want { seq: resume }),
            // The Acks that went to the sender over the lost lane may be
            // lost with it: a sender whose spool is full of what the
            // receiver has would wait for room for good.
            Act::Send(
                Side::Sender,
                Msg::Ack {
                    seq: self.acked,
                    offset: self.acked_offset,
                },
            ),
        ]
    }

    /// Lane `lane` was made again: both its connections welcomed us. The
    /// sender sends on it from where it stands.
    pub fn joined(&mut self, lane: usize) -> Vec<Act> {
        match self.lanes.get_mut(lane) {
            Some(l) if l.state == LaneState::Joining => {
                l.state = LaneState::Up;
                vec![lane_to_sender(lane, true)]
            }
            _ => Vec::new(),
        }
    }

    /// Making lane `lane` again failed: it is tried again after its
    /// backoff.
    pub fn join_failed(&mut self, lane: usize, now: Duration) {
        if let Some(l) = self.lanes.get_mut(lane) {
            if l.state == LaneState::Joining {
                l.state = LaneState::Down {
                    retry_at: now + l.backoff.take(),
                };
            }
        }
    }

    /// A chunk from the sender (forwarded by the driver on lane `lane`):
    /// its sequence number, payload bytes and the stream offset it ends at.
    pub fn chunk(&mut self, t: &mut Transfer, lane: usize, seq: u64, payload: u64, end: u64) {
        if let Some(l) = self.lanes.get_mut(lane) {
            if seq >= self.acked {
                l.carried.insert(seq);
            }
            l.backoff = Backoff::default();
        }
        let s = &mut t.stats;
        if let Some(carried) = s.lane_bytes.get_mut(lane) {
            *carried += payload;
        }
        s.wire_bytes += payload;
        if !s.forwarded.first(seq) {
            s.resent_chunks += 1;
            s.resent_bytes += payload;
        }
        s.sent_bytes = s.sent_bytes.max(end);
    }

    /// A message from an agent.
    pub fn on_msg(&mut self, t: &mut Transfer, from: Side, m: Msg, now: Duration) -> Vec<Act> {
        match (from, m) {
            (Side::Sender, Msg::End(e)) => {
                self.stream_len = Some(e.total_len);
                vec![Act::Send(Side::Receiver, Msg::End(e))]
            }
            (Side::Receiver, Msg::Ack { seq, offset }) => {
                if seq >= self.acked {
                    (self.acked, self.acked_offset) = (seq, offset);
                }
                t.stats.forwarded.start_at(seq);
                for l in &mut self.lanes {
                    l.carried = l.carried.split_off(&self.acked);
                }
                if self.rewound_to.is_some_and(|(r, _)| seq > r) {
                    self.rewound_to = None;
                }
                if offset > t.stats.acked_bytes {
                    t.stats.acked_bytes = offset;
                    t.last_progress = now;
                    t.moved = true;
                }
                vec![Act::Send(Side::Sender, Msg::Ack { seq, offset })]
            }
            // A Nak below an Ack already heard is stale: it came over
            // another connection, slower than the one that brought the
            // Ack, and the receiver has moved on (the sender dropped
            // those chunks, and a Want there would be an Error).
            (Side::Receiver, Msg::Nak { seq }) if seq < self.acked => Vec::new(),
            (Side::Receiver, Msg::Nak { seq }) => {
                let recent =
                    |(r, at): (u64, Duration)| r == seq && now.saturating_sub(at) < t.timing.stall;
                if self.rewound_to.is_some_and(recent) {
                    return Vec::new();
                }
                self.rewound_to = Some((seq, now));
                vec![Act::Send(Side::Sender, Msg::Want { seq })]
            }
            (Side::Receiver, Msg::Done { status, stderr }) => {
                // A clean Done follows the whole stream checked against
                // End's totals. Its last chunks' Ack may not come at all
                // (over several connections, End can overtake them).
                if let Some(len) = self.stream_len.filter(|_| status == 0) {
                    t.stats.acked_bytes = t.stats.acked_bytes.max(len);
                }
                vec![
                    Act::Send(Side::Sender, Msg::Bye),
                    Act::Send(Side::Receiver, Msg::Bye),
                    Act::Finished { status, stderr },
                ]
            }
            (Side::Sender, Msg::Error { msg }) => vec![Act::Fatal(format!("sender agent: {msg}"))],
            (Side::Receiver, Msg::Error { msg }) => {
                vec![Act::Fatal(format!("receiver agent: {msg}"))]
            }
            _ => Vec::new(),
        }
    }

    /// Time passed: pings when the heartbeat is due; a link that said
    /// nothing for the stall time (`silent`: for each lane, since its
    /// sender's and its receiver's connection last carried a byte) is
    /// dead; a lost lane whose backoff passed is made again.
    pub fn tick(&mut self, t: &mut Transfer, now: Duration, silent: &[[Duration; 2]]) -> Vec<Act> {
        // Links alive (lanes lost and made again, pings answered) are not
        // progress: the inactivity timeout ends a round that moves nothing.
        if now.saturating_sub(t.last_progress) > t.timing.inactivity {
            return vec![Act::Dead("nothing received within the round".into())];
        }
        let mut acts = Vec::new();
        for (lane, quiet) in silent.iter().enumerate() {
            for (name, s) in [("sender", quiet[0]), ("receiver", quiet[1])] {
                if s > t.timing.stall && self.is_up(lane) {
                    let why = if self.lanes.len() > 1 {
                        format!(
                            "{name} connection {lane} idle for {}s",
                            t.timing.stall.as_secs()
                        )
                    } else {
                        format!("{name} link idle for {}s", t.timing.stall.as_secs())
                    };
                    acts.extend(self.lost(t, lane, why, now));
                    if matches!(acts.last(), Some(Act::Dead(_))) {
                        return acts;
                    }
                }
            }
        }
        for (lane, l) in self.lanes.iter_mut().enumerate() {
            if matches!(l.state, LaneState::Down { retry_at } if now >= retry_at) {
                l.state = LaneState::Joining;
                acts.push(Act::Reopen { lane });
            }
        }
        if !acts.is_empty() {
            return acts;
        }
        if let Some((seq, at)) = self.rewound_to {
            if now.saturating_sub(at) >= t.timing.stall {
                self.rewound_to = Some((seq, now));
                return vec![Act::Send(Side::Sender, Msg::Want { seq })];
            }
        }
        if now.saturating_sub(self.last_ping) > t.timing.heartbeat {
            self.nonce += 1;
            self.last_ping = now;
            let nonce = self.nonce;
            return vec![
                Act::Send(Side::Sender, Msg::Ping { nonce }),
                Act::Send(Side::Receiver, Msg::Ping { nonce }),
            ];
        }
        Vec::new()
    }
}

/// What follows a round that failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Connect again after this wait.
    Reconnect(Duration),
    /// No progress for the inactivity timeout: give up with this reason.
    GiveUp(String),
}

/// What an agent's answer to our Hello means.
#[derive(Debug, PartialEq, Eq)]
pub enum Greeting {
    /// It serves us; the receiver stands at `next_seq` (`offset` bytes).
    Welcome { next_seq: u64, offset: u64 },
    /// Another coordinator (`label`, heard `heard_ms` ago) drives it.
    Busy { label: String, heard_ms: u64 },
    /// It refused us for good reason (an Error), or the greeting failed:
    /// no answer within the setup wait, or an answer that is no answer.
    Failed(String),
}

/// Reads an agent's first answer (`None`: none came within the setup
/// wait). Only Welcome, Busy or Error may answer a Hello.
pub fn greeting(answer: Option<Msg>) -> Greeting {
    match answer {
        Some(Msg::Welcome {
            next_seq, offset, ..
        }) => Greeting::Welcome { next_seq, offset },
        Some(Msg::Busy { label, heard_ms }) => Greeting::Busy { label, heard_ms },
        Some(Msg::Error { msg }) => Greeting::Failed(msg),
        Some(other) => Greeting::Failed(format!("unexpected {} before the welcome", other.name())),
        None => Greeting::Failed("no answer".into()),
    }
}

/// A transfer across rounds.
pub struct Transfer {
    pub stats: Stats,
    pub timing: Timing,
    last_progress: Duration,
    /// This round moved the receiver's offset.
    moved: bool,
    backoff: Backoff,
    rounds: u64,
}

/// The first wait before trying again, doubled after each failed try up
/// to `MAX_BACKOFF`: with ssh's ConnectTimeout (SYNs at 0, 1 and 3 s), a
/// healed link sees a new SYN within about 4 s.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The wait before the next try: `FIRST_BACKOFF`, doubled after each, at
/// most `MAX_BACKOFF`. Rounds of a transfer (`Transfer`), its set-up and
/// the calls around it all wait this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(FIRST_BACKOFF)
    }
}

impl Backoff {
    /// The wait the next try would take.
    pub fn wait(&self) -> Duration {
        self.0
    }

    /// Takes the current wait and doubles the next (up to the cap).
    pub fn take(&mut self) -> Duration {
        let w = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        w
    }
}

impl Transfer {
    pub fn new(timing: Timing, now: Duration) -> Transfer {
        Transfer {
            stats: Stats::default(),
            timing,
            last_progress: now,
            moved: false,
            backoff: Backoff::default(),
            rounds: 0,
        }
    }

    /// When the receiver's offset last moved (or the transfer began).
    pub fn last_progress(&self) -> Duration {
        self.last_progress
    }

    /// A round begins (connections are being opened); rounds after the
    /// first are reconnections.
    pub fn round(&mut self) {
        if self.rounds > 0 {
            self.stats.reconnects += 1;
        }
        self.rounds += 1;
        self.moved = false;
    }

    /// The round failed (`why`): when to try again, or that it is over.
    pub fn failed(&mut self, why: &str, now: Duration) -> Next {
        if self.moved {
            // The link worked: the next failure is a new outage.
            self.backoff = Backoff::default();
        }
        if now.saturating_sub(self.last_progress) > self.timing.inactivity {
            return Next::GiveUp(format!(
                "no progress for {}s (inactivity timeout); last error: {why}. The agents keep their state until their own timeout: run the same command again to resume",
                self.timing.inactivity.as_secs()
            ));
        }
        Next::Reconnect(self.backoff.take())
    }

    /// The sender's agent refused us (Busy): whether to greet the receiver
    /// anyway, to learn whether it is taken too. Only a run that drove the
    /// transfer asks (it may have lost both, or only one while another run
    /// found the other still ours and left); a newcomer leaves at once,
    /// without touching the receiver.
    pub fn ask_the_other_after_busy(&self) -> bool {
        self.stats.drove
    }

    /// An agent refused us (`why`); `both`: the other did too. A run that
    /// never drove the transfer, or that lost both agents, leaves it to
    /// their owner (None: the agents are left alone). One that drove it
    /// and finds only one taken gets it back once the other run has been
    /// silent for the takeover wait: until then this is an outage like
    /// any other.
    pub fn refused(&mut self, why: &str, both: bool, now: Duration) -> Option<Next> {
        if both || !self.stats.drove {
            return None;
        }
        Some(self.failed(why, now))
    }
}

#[cfg(test)]
mod tests;
