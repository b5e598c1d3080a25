//! One module per group of zfs subcommands.

pub mod destroy;
pub mod fixture;
pub mod list;
pub mod manage;
pub mod recv;
pub mod select;
pub mod send;
pub mod zpool;
