//! Pure logic of syncoid-rsync.
//!
//! Owns the values the rest of the tool reasons about (dataset, snapshot and
//! bookmark names, sizes) and the functions that turn them into command lines
//! and back. Nothing here starts a process, opens a file or reads a clock:
//! this crate has no I/O dependencies, so it cannot.

pub mod argv;
pub mod fuzz;
pub mod inventory;
pub mod location;
pub mod names;
pub mod ownership;
pub mod plan;
pub mod session;
pub mod shell;
pub mod syncsnap;
pub mod transport;
pub mod units;
pub mod wire;
