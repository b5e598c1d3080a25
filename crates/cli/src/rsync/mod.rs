//! `--rsync`: a chunked, verified transport that survives outages. See
//! docs/design.md for the protocol, the resume invariants and cleanup.

pub mod agent;
pub mod coordinator;
pub mod session;
