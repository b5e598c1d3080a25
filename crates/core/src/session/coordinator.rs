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
//!   without looking inside); their headers are counted, a chunk at or
//!   below the highest forwarded is a re-send;
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
//! - an agent's Error is fatal; a link silent for the stall time is dead
//!   (the round fails); pings go out every heartbeat, so a live link is
//!   never silent.
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
        while self.above.remove(&self.below) {
            self.below += 1;
        }
        true
    }

    /// The receiver stands at chunk `seq` (it said so in its Welcome or
    /// an Ack): every chunk below it was forwarded, by this run or an
    /// earlier one.
    pub fn start_at(&mut self, seq: u64) {
        if seq > self.below {
            self.below = seq;
            self.above = self.above.split_off(&seq);
            while self.above.remove(&self.below) {
                self.below += 1;
            }
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
}

/// One round: both agents connected and welcomed.
pub struct Relay {
    /// The last rewind: its position and when.
    rewound_to: Option<(u64, Duration)>,
    /// The highest chunk the receiver acknowledged (its position).
    acked: u64,
    nonce: u64,
    last_ping: Duration,
    /// The stream's length, once the sender's End came by.
    stream_len: Option<u64>,
}

/// The progress a round made (`Transfer::progressed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved(pub bool);

impl Relay {
    /// Both agents welcomed this round; the receiver stands at `next_seq`
    /// (`offset` bytes fed). The first actions: Want and Ack there, to the
    /// sender.
    pub fn start(t: &mut Transfer, next_seq: u64, offset: u64, now: Duration) -> (Relay, [Act; 2]) {
        t.stats.acked_bytes = t.stats.acked_bytes.max(offset);
        t.stats.forwarded.start_at(next_seq);
        t.stats.drove = true;
        let relay = Relay {
            rewound_to: None,
            acked: next_seq,
            nonce: 0,
            last_ping: now,
            stream_len: None,
        };
        let want = Msg::Want { seq: next_seq };
        let ack = Msg::Ack {
            seq: next_seq,
            offset,
        };
        (
            relay,
            [Act::Send(Side::Sender, want), Act::Send(Side::Sender, ack)],
        )
    }

    /// A chunk from the sender (forwarded by the driver): its sequence
    /// number, payload bytes and the stream offset it ends at.
    pub fn chunk(&mut self, t: &mut Transfer, seq: u64, payload: u64, end: u64) {
        let s = &mut t.stats;
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
                self.acked = self.acked.max(seq);
                t.stats.forwarded.start_at(seq);
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
    /// nothing for the stall time (`silent`: since each agent's link last
    /// carried a byte) is dead.
    pub fn tick(&mut self, t: &Transfer, now: Duration, silent: [Duration; 2]) -> Vec<Act> {
        for (name, s) in [("sender", silent[0]), ("receiver", silent[1])] {
            if s > t.timing.stall {
                return vec![Act::Dead(format!(
                    "{name} link idle for {}s",
                    t.timing.stall.as_secs()
                ))];
            }
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
