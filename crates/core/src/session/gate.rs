//! An agent's door: which connections it serves, who drives it, and how
//! long it waits for them. The agent's driver (`rsync::agent::serving`)
//! accepts connections, reads their first frame and the frames after, and
//! carries out what this says.
//!
//! - A connection must say Hello first, within the setup wait; a first
//!   frame that is too long, not a Hello, or not readable is answered with
//!   an Error naming what was wrong, and the connection is closed.
//! - The owner in a Hello is admitted or refused (`ownership::admit`): a
//!   coordinator of another machine is refused with Busy while this
//!   agent's owner was heard within the takeover wait. An admitted
//!   connection replaces the one before it on its lane (even a half-dead
//!   ssh session that never sees its peer go), which is closed; a new
//!   owner's connection replaces every connection of the old owner.
//! - Every message from the current coordinator counts as hearing from it;
//!   an agent that heard nothing for its inactivity timeout gives up.
//! - A Ping is answered with a Pong at once, even while the agent waits on
//!   zfs; while it waits, it also beats (a Pong with nonce 0) every
//!   heartbeat. An idle agent does not beat: if it waits for data that
//!   does not come, the link towards it is stuck, and the coordinator must
//!   see silence and reconnect.

use std::time::Duration;

use crate::ownership::{self, Admit};
use crate::wire::{Msg, Owner};

/// A Hello is small: its owner's domain, run and label.
pub const HELLO_MAX: usize = 4096;

/// The beat an agent sends while it waits on zfs.
pub const BEAT: Msg = Msg::Pong { nonce: 0 };

/// A connection, as the driver numbers them.
pub type ConnId = u64;

/// How long the door waits (from the settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// A connection has this long to say Hello.
    pub setup: Duration,
    /// Another machine's coordinator may take over an owner silent this long.
    pub takeover: Duration,
    /// The agent gives up after hearing nothing for this long.
    pub inactivity: Duration,
}

/// What the driver does with a connection's Hello.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it; close `replaces`, the connections it replaces. `note`
    /// is for the agent's log.
    Admit { replaces: Vec<ConnId>, note: String },
    /// Send `answer` (Busy, or an Error) and close it; the current
    /// connection goes on untouched.
    Refuse { answer: Msg, note: String },
}

/// What `tick` asks of the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Close this connection: it said no Hello within the setup wait.
    Close(ConnId, String),
    /// Nobody drove this agent for its inactivity timeout: give up.
    GiveUp(String),
}

/// The door's state.
pub struct Gate {
    waits: Waits,
    owner: Option<Owner>,
    /// When the current coordinator was last heard.
    heard: Duration,
    /// The current connection of each lane.
    current: std::collections::BTreeMap<u16, ConnId>,
    /// Connections that have not said Hello yet, and since when.
    pending: Vec<(ConnId, Duration)>,
    gave_up: bool,
}

impl Gate {
    /// An agent started at `now`: the clock runs from its start.
    pub fn new(waits: Waits, now: Duration) -> Gate {
        Gate {
            waits,
            owner: None,
            heard: now,
            current: Default::default(),
            pending: Vec::new(),
            gave_up: false,
        }
    }

    /// A connection was accepted; its Hello is awaited.
    pub fn accepted(&mut self, id: ConnId, now: Duration) {
        self.pending.push((id, now));
    }

    /// Whether a first frame of `len` bytes may be read as a Hello (else
    /// why not, for `hello`).
    pub fn first_frame(len: usize) -> Result<(), String> {
        if len == 0 || len > HELLO_MAX {
            return Err(format!("a first frame of {len} bytes is not a hello"));
        }
        Ok(())
    }

    /// Connection `id`'s first frame, decoded (or why it could not be).
    /// A connection whose first frame never came (it closed, or its
    /// reader failed) is `first: Err` too; the driver sends the answer if
    /// it can.
    pub fn hello(&mut self, id: ConnId, first: Result<Msg, String>, now: Duration) -> Verdict {
        self.pending.retain(|(p, _)| *p != id);
        let (asker, lane) = match first {
            Ok(Msg::Hello { owner, lane, .. }) => (owner, lane),
            Ok(other) => {
                let msg = format!("the first message ({}) was not a hello", other.name());
                return refused(msg);
            }
            Err(e) => return refused(format!("protocol error: {e}")),
        };
        let heard = now.saturating_sub(self.heard);
        let admit = ownership::admit(self.owner.as_ref(), heard, &asker, self.waits.takeover);
        let note = match admit {
            Admit::Refuse => {
                let label = self.owner.as_ref().map(|o| o.label.clone());
                let label = label.unwrap_or_default();
                return Verdict::Refuse {
                    note: format!(
                        "refused {}: this transfer is driven by {label}, heard {:.1}s ago",
                        asker.label,
                        heard.as_secs_f64()
                    ),
                    answer: Msg::Busy {
                        label,
                        heard_ms: heard.as_millis() as u64,
                    },
                };
            }
            Admit::TakeOver => {
                let old = self.owner.replace(asker.clone());
                format!(
                    "{} takes over from {} (heard {:.1}s ago)",
                    asker.label,
                    old.map(|o| o.label).unwrap_or_default(),
                    heard.as_secs_f64()
                )
            }
            Admit::First => {
                self.owner = Some(asker.clone());
                format!("driven by {}", asker.label)
            }
            Admit::Again => format!("{} again", asker.label),
            Admit::Tool => "a tool connected".to_string(),
        };
        self.heard = now;
        // A new owner (or a tool) takes every connection; the owner's new
        // connection replaces its lane's.
        let replaced: Vec<ConnId> = if matches!(admit, Admit::Again) {
            self.current.insert(lane, id).into_iter().collect()
        } else {
            let old = std::mem::take(&mut self.current);
            self.current.insert(lane, id);
            old.into_values().collect()
        };
        let replaces = replaced.into_iter().filter(|old| *old != id).collect();
        Verdict::Admit { replaces, note }
    }

    /// A message came from connection `id`: if it is the current one, its
    /// coordinator was heard.
    pub fn heard(&mut self, id: ConnId, now: Duration) {
        if self.current.values().any(|c| *c == id) {
            self.heard = self.heard.max(now);
        }
    }

    /// What is due at `now`: connections past the setup wait without a
    /// Hello, and the agent's own give-up.
    pub fn tick(&mut self, now: Duration) -> Vec<Due> {
        let setup = self.waits.setup;
        let mut due = Vec::new();
        self.pending.retain(|(id, since)| {
            let late = now.saturating_sub(*since) > setup;
            if late {
                due.push(Due::Close(
                    *id,
                    format!("a connection said no hello within {setup:?}: closed"),
                ));
            }
            !late
        });
        let idle = now.saturating_sub(self.heard);
        if !self.gave_up && idle > self.waits.inactivity {
            self.gave_up = true;
            due.push(Due::GiveUp(format!(
                "no coordinator for {}s: giving up",
                self.waits.inactivity.as_secs()
            )));
        }
        due
    }

    /// When `tick` may next have something to do.
    pub fn next_tick(&self) -> Duration {
        let give_up = self.heard + self.waits.inactivity;
        let pending = self
            .pending
            .iter()
            .map(|(_, since)| *since + self.waits.setup);
        pending.fold(give_up, Duration::min)
    }
}

/// The answer to a message that the agent's reader handles on its own: a
/// Ping gets its Pong at once, whatever the agent is doing.
pub fn answer_at_once(m: &Msg) -> Option<Msg> {
    match m {
        Msg::Ping { nonce } => Some(Msg::Pong { nonce: *nonce }),
        _ => None,
    }
}

/// Whether a heartbeat sends a beat: only while the agent waits on zfs.
pub fn beats(busy: bool) -> Option<Msg> {
    busy.then_some(BEAT)
}

fn refused(msg: String) -> Verdict {
    Verdict::Refuse {
        note: format!("connection refused: {msg}"),
        answer: Msg::Error { msg },
    }
}

#[cfg(test)]
mod tests;
