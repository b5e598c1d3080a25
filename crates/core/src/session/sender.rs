//! The sender agent's session: which chunk goes out next on which
//! connection, and what it answers.
//!
//! - Each connection from the coordinator is a new generation on a lane
//!   (`connected_on`; one stream over several connections has one lane
//!   per connection, a single connection is lane 0). A connection replaces
//!   the older one on its lane, which is told to stop; only the current
//!   connection of each lane may send or be heard.
//! - Hello: Welcome with what the receiver acknowledged (`next_seq`) and
//!   how many chunks `zfs send` produced.
//! - Want: sending (re)starts at that chunk, on every current connection
//!   (they take chunks from one cursor, each the next when it has room);
//!   a connection that came later waits for the next Want. A chunk the
//!   spool dropped (acknowledged) is an Error that ends the connection.
//! - Ack: chunks below it are dropped from the spool (and the cursor, if
//!   behind it, moves up to it), making room for the
//!   producer (`has_room`).
//! - A chunk goes out the first time as it was hashed; one sent again (the
//!   cursor went back after a Want) is verified first, and if the spool's
//!   own copy is damaged the transfer stops with an Error: it can never be
//!   produced again (resend invariant 5).
//! - Once `zfs send` ended and every chunk went out, End follows; it is
//!   sent again after each later Want (a rewind re-sends chunks, and the
//!   receiver needs End after them).
//! - Lane (several connections): a lost lane's connection stops at once,
//!   so nothing more goes into a link that may be dead (the chunks it took
//!   are asked for again by the Want that follows); a lane made again
//!   joins sending at the cursor, without a rewind.
//! - Bye: the coordinator is done with this agent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::transport::{Lookup, Spool};
use crate::wire::{Chunk, End, Msg, Role, VERSION};

/// What a connection sends next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// This chunk, as the spool holds it.
    Chunk(Arc<Chunk>),
    /// This message (End, or the Error that stops the transfer).
    Frame(Msg),
    /// Nothing yet: wait for the producer, an Ack or a Want.
    Wait,
    /// This connection is replaced, or the transfer is over: stop.
    Stop,
}

/// What to do after a message from the coordinator.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Keep reading.
    Go,
    /// Send this, keep reading.
    Reply(Msg),
    /// Send this, then end the connection.
    Fail(Msg),
    /// End the connection: a newer one replaced it.
    Stale,
}

pub struct Session {
    spool: Spool,
    end: Option<End>,
    /// The last generation given out.
    generation: u64,
    /// Each lane's current connection (generation).
    lanes: BTreeMap<u16, u64>,
    /// The next chunk a connection sends.
    cursor: u64,
    /// The connections that were told where to start (a Want came after
    /// they connected).
    wanted: BTreeSet<u64>,
    /// Wants so far: End goes out again after each.
    wants: u64,
    /// The Want count when End last went out.
    end_sent: Option<u64>,
    /// The highest chunk sent so far: one sent again is verified first.
    sent_max: Option<u64>,
    bye: bool,
}

impl Session {
    /// `spool_size`: bytes of unacknowledged chunks kept (`--spool-size`).
    pub fn new(spool_size: usize) -> Session {
        Session {
            spool: Spool::new(spool_size),
            end: None,
            generation: 0,
            lanes: BTreeMap::new(),
            cursor: 0,
            wanted: BTreeSet::new(),
            wants: 0,
            end_sent: None,
            sent_max: None,
            bye: false,
        }
    }

    /// A new connection from the coordinator on lane 0: its generation,
    /// which replaces the lane's earlier one.
    pub fn connected(&mut self) -> u64 {
        self.connected_on(0)
    }

    /// A new connection on `lane`: its generation, which replaces the
    /// lane's earlier one.
    pub fn connected_on(&mut self, lane: u16) -> u64 {
        self.generation += 1;
        if let Some(old) = self.lanes.insert(lane, self.generation) {
            self.wanted.remove(&old);
        }
        self.generation
    }

    fn current(&self, generation: u64) -> bool {
        self.lanes.values().any(|g| *g == generation)
    }

    /// The coordinator said Bye, or the transfer was stopped.
    pub fn bye(&self) -> bool {
        self.bye
    }

    /// Ends the transfer (the agent's inactivity timeout).
    pub fn stop(&mut self) {
        self.bye = true;
    }

    /// The producer may add a chunk (else it must stop reading zfs send).
    pub fn has_room(&self) -> bool {
        self.spool.has_room()
    }

    /// A chunk `zfs send` produced.
    pub fn produced(&mut self, c: Chunk) {
        self.spool.push(c);
    }

    /// `zfs send` ended; `end` holds its totals and status.
    pub fn send_ended(&mut self, end: End) {
        self.end = Some(end);
    }

    /// Bytes the spool holds.
    pub fn spooled(&self) -> usize {
        self.spool.bytes()
    }

    /// A message from the coordinator on connection `generation`.
    pub fn on_msg(&mut self, generation: u64, m: &Msg) -> Answer {
        if !self.current(generation) {
            return Answer::Stale;
        }
        match m {
            Msg::Hello { .. } => Answer::Reply(Msg::Welcome {
                version: VERSION,
                role: Role::Sender,
                next_seq: self.spool.acked(),
                offset: 0,
                produced: self.spool.produced(),
            }),
            Msg::Want { seq } => {
                if let Lookup::Gone = self.spool.get(*seq) {
                    return Answer::Fail(Msg::Error {
                        msg: format!("chunk {seq} was already acknowledged and dropped"),
                    });
                }
                self.cursor = *seq;
                self.wanted = self.lanes.values().copied().collect();
                self.wants += 1;
                Answer::Go
            }
            Msg::Ack { seq, .. } => {
                self.spool.ack(*seq);
                // What the receiver has need not go again: a cursor behind
                // the Ack (sent back by a rewind while the receiver fed
                // the same chunks from its reorder window) would point at
                // chunks the spool just dropped, and wait for good.
                self.cursor = self.cursor.max(*seq);
                Answer::Go
            }
            Msg::Lane { lane, up: false } => {
                if let Some(g) = self.lanes.remove(lane) {
                    self.wanted.remove(&g);
                }
                Answer::Go
            }
            Msg::Lane { lane, up: true } => {
                // Only once sending started: before that, the Want
                // starts every connection there is.
                if self.wants > 0 {
                    self.wanted.extend(self.lanes.get(lane));
                }
                Answer::Go
            }
            Msg::Bye => {
                self.bye = true;
                Answer::Go
            }
            _ => Answer::Go,
        }
    }

    /// What connection `generation` sends next.
    pub fn next(&mut self, generation: u64) -> Next {
        if !self.current(generation) || self.bye {
            return Next::Stop;
        }
        if !self.wanted.contains(&generation) {
            return Next::Wait;
        }
        let cursor = self.cursor;
        if let Lookup::Ready(c) = self.spool.get(cursor) {
            let resend = self.sent_max.is_some_and(|m| cursor <= m);
            if resend && !c.verify() {
                let msg = format!(
                    "chunk {} is damaged in the sender's spool; it cannot be produced again",
                    c.seq
                );
                self.bye = true;
                return Next::Frame(Msg::Error { msg });
            }
            let c = c.clone();
            self.sent_max = self.sent_max.max(Some(cursor));
            self.cursor += 1;
            return Next::Chunk(c);
        }
        if let Some(e) = &self.end {
            if cursor >= e.chunks && self.end_sent != Some(self.wants) {
                self.end_sent = Some(self.wants);
                return Next::Frame(Msg::End(e.clone()));
            }
        }
        Next::Wait
    }
}

#[cfg(test)]
mod tests;
