//! The receiver agent's session: every rule of what it does with a message
//! from the coordinator.
//!
//! - Hello: Welcome with its position (the next chunk it needs and the
//!   stream offset), so a coordinator that reconnects resumes there.
//! - Chunk: the next one, verified, is fed to `zfs receive` (`Step::Feed`);
//!   only once the driver reports it fed is it acknowledged (Ack), so an
//!   Ack never runs ahead of what zfs took. One already fed is acknowledged
//!   again; one ahead, or one that fails its hash, is answered with a Nak
//!   at the position (the sender rewinds there).
//! - End: while chunks are missing (re-sent after a rewind, still on their
//!   way) a Nak at the position; then the whole stream is checked against
//!   the sender's totals and hash (a mismatch is an Error that ends the
//!   connection), zfs receive's input is closed and its exit awaited
//!   (`Step::FinishZfs`), and Done reports how it ended, with the sender's
//!   failure if `zfs send` failed.
//! - Once zfs receive ended (after End, or because feeding it failed),
//!   every Chunk and End is answered with the same Done.
//! - Bye: the coordinator is done with this agent (`Step::Close`).
//!
//! With a reorder window (`with_window`: chunks travel over several
//! connections and arrive out of order), a chunk ahead of the position is
//! held (`Step::Hold`) while the chunks it holds fit in the window, and
//! handled again once it is next (`Step::Again`), when it is checked like
//! any chunk; an End that comes before the last chunks waits for them the
//! same way. Without one (a single connection, where a chunk ahead means
//! one was lost), both are a Nak at the position, as above.

use std::borrow::Cow;

use crate::transport::{Receiver, Verdict};
use crate::wire::{Chunk, Msg, Role, VERSION};

/// How `zfs receive` ended: exit status and the tail of its stderr.
pub type Ended = (i32, String);

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Send this to the coordinator.
    Reply(Msg),
    /// Write these verified stream bytes to zfs receive's input, then tell
    /// the session how it went (`fed`).
    Feed(Cow<'a, [u8]>),
    /// Close zfs receive's input, wait for it to exit, then tell the
    /// session how it ended (`zfs_ended`).
    FinishZfs,
    /// Send this, then end the connection: the stream is broken.
    Fail(Msg),
    /// Keep this chunk (the one just handled, ahead of the position):
    /// give it to `hold`. It comes back as `Again` when it is next.
    Hold,
    /// Handle this message now, as if it had just come: a held chunk that
    /// is next, or an End that waited for the last chunks.
    Again(Msg),
    /// End the connection: the coordinator said goodbye.
    Close,
    /// Nothing to answer.
    Nothing,
}

impl Step<'_> {
    /// The same step, free of the message it came from. A Feed's bytes
    /// are copied: drivers feed them before they let go of the message.
    pub fn detach(self) -> Step<'static> {
        match self {
            Step::Feed(b) => Step::Feed(Cow::Owned(b.into_owned())),
            Step::Reply(m) => Step::Reply(m),
            Step::FinishZfs => Step::FinishZfs,
            Step::Fail(m) => Step::Fail(m),
            Step::Hold => Step::Hold,
            Step::Again(m) => Step::Again(m),
            Step::Close => Step::Close,
            Step::Nothing => Step::Nothing,
        }
    }
}

/// Why a chunk was not taken, for the agent's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It failed its hash or did not start at the receiver's offset.
    Corrupt { seq: u64 },
}

#[derive(Default)]
pub struct Session {
    recv: Receiver,
    /// How zfs receive ended, once it did.
    ended: Option<Ended>,
    /// End arrived and the stream verified: zfs receive is being finished;
    /// `zfs send`'s own status and stderr, for Done.
    ending: Option<Ended>,
    /// Set by `take_refused` readers: the last chunk refused.
    refused: Option<Refused>,
    /// The coordinator said Bye.
    bye: bool,
    /// Payload bytes the reorder window may hold (0: no window).
    window: usize,
    /// Chunks ahead of the position, by sequence number.
    held: std::collections::BTreeMap<u64, Chunk>,
    /// An End that came before the last chunks.
    end: Option<crate::wire::End>,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// A session that holds chunks ahead of its position, up to `window`
    /// payload bytes (the sender's spool bounds what can be ahead).
    pub fn with_window(window: usize) -> Session {
        Session {
            window,
            ..Session::default()
        }
    }

    /// Payload bytes held ahead of the position.
    pub fn held_bytes(&self) -> usize {
        self.held.values().map(|c| c.data.len()).sum()
    }

    /// Keeps chunk `c`, which `on_msg` said to hold.
    pub fn hold(&mut self, c: Chunk) {
        self.held.insert(c.seq, c);
    }

    /// The next chunk needed and the stream offset it starts at.
    pub fn position(&self) -> (u64, u64) {
        (self.recv.next_seq(), self.recv.offset())
    }

    /// The coordinator said Bye: the agent may go.
    pub fn bye(&self) -> bool {
        self.bye
    }

    /// The last chunk refused since this was asked (for the log).
    pub fn take_refused(&mut self) -> Option<Refused> {
        self.refused.take()
    }

    fn ack(&self) -> Msg {
        Msg::Ack {
            seq: self.recv.next_seq(),
            offset: self.recv.offset(),
        }
    }

    fn nak(&self) -> Msg {
        Msg::Nak {
            seq: self.recv.next_seq(),
        }
    }

    fn done(ended: &Ended) -> Msg {
        Msg::Done {
            status: ended.0,
            stderr: ended.1.clone(),
        }
    }

    /// A message from the coordinator.
    pub fn on_msg<'a>(&mut self, m: &'a Msg) -> Step<'a> {
        match m {
            Msg::Hello { .. } => Step::Reply(Msg::Welcome {
                version: VERSION,
                role: Role::Receiver,
                next_seq: self.recv.next_seq(),
                offset: self.recv.offset(),
                produced: 0,
            }),
            Msg::Chunk(c) => self.on_chunk(c),
            Msg::End(e) => {
                if let Some(ended) = &self.ended {
                    return Step::Reply(Session::done(ended));
                }
                if self.ending.is_some() {
                    // Being finished: the Done follows.
                    return Step::Nothing;
                }
                if self.recv.next_seq() < e.chunks {
                    if self.window > 0 {
                        // The last chunks come on other connections.
                        self.end = Some(e.clone());
                        return Step::Nothing;
                    }
                    // Chunks re-sent after a rewind are still on their way.
                    return Step::Reply(self.nak());
                }
                if let Err(why) = self.recv.complete(e) {
                    return Step::Fail(Msg::Error { msg: why });
                }
                self.ending = Some((e.status, e.stderr.clone()));
                Step::FinishZfs
            }
            Msg::Bye => {
                self.bye = true;
                Step::Close
            }
            _ => Step::Nothing,
        }
    }

    fn on_chunk<'a>(&mut self, c: &'a Chunk) -> Step<'a> {
        if let Some(ended) = &self.ended {
            return Step::Reply(Session::done(ended));
        }
        if self.ending.is_some() {
            return Step::Nothing;
        }
        match self.recv.check(c) {
            Verdict::Feed(bytes) => Step::Feed(bytes),
            Verdict::Duplicate => Step::Reply(self.ack()),
            Verdict::Gap { expected } => {
                let fits = self.held_bytes() + c.data.len() <= self.window;
                if self.held.contains_key(&c.seq) {
                    Step::Nothing
                } else if fits {
                    Step::Hold
                } else {
                    Step::Reply(Msg::Nak { seq: expected })
                }
            }
            Verdict::Corrupt => {
                self.refused = Some(Refused::Corrupt { seq: c.seq });
                Step::Reply(self.nak())
            }
        }
    }

    /// How feeding `c` (the chunk `on_msg` said to feed) went: all of it
    /// written (then it is acknowledged), or zfs receive stopped taking
    /// input (then it is finished, and Done says how it ended).
    /// With a reorder window, what is next may already be held: it is
    /// handled then (`Again`), and the Ack waits for the end of that run
    /// (Acks are cumulative).
    pub fn fed(&mut self, c: &Chunk, ok: bool) -> Step<'static> {
        if !ok {
            return Step::FinishZfs;
        }
        self.recv.fed(c);
        let next = self.recv.next_seq();
        self.held.retain(|seq, _| *seq >= next);
        if let Some(h) = self.held.remove(&next) {
            return Step::Again(Msg::Chunk(h));
        }
        if let Some(e) = self.end.take_if(|e| next >= e.chunks) {
            return Step::Again(Msg::End(e));
        }
        Step::Reply(self.ack())
    }

    /// zfs receive exited (`FinishZfs`): Done, with `zfs send`'s failure
    /// first when the sender reported one.
    pub fn zfs_ended(&mut self, status: i32, stderr: String) -> Step<'static> {
        let stderr = match self.ending.take() {
            Some((send_status, send_err)) if send_status != 0 => {
                format!("zfs send failed ({send_status}): {send_err}\n{stderr}")
            }
            _ => stderr,
        };
        let ended = (status, stderr);
        let done = Session::done(&ended);
        self.ended = Some(ended);
        Step::Reply(done)
    }
}

#[cfg(test)]
mod tests;
