//! The `--rsync` protocol's rules as sans-IO sessions: state machines that
//! take decoded messages and the outcomes of what they asked for, and
//! return what to do next. They never touch a socket, a process, a thread
//! or a clock; the agents in the binary are drivers that carry out their
//! steps (`rsync::agent`).
//!
//! `receiver`: the receiver agent's rules (what it answers, when a chunk
//! may reach `zfs receive`, when the stream is complete). `sender`: the
//! sender agent's (which chunk goes out next on which connection, the
//! spool, End, the check before a resend). `coordinator`: the
//! coordinator's (a transfer as rounds of connections, and what each
//! message of a round leads to). `sim` drives all three over virtual
//! links that fail, on virtual time.

pub mod coordinator;
pub mod gate;
pub mod receiver;
pub mod sender;
#[cfg(test)]
mod sim;
