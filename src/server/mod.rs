//! The Redis glue around the pure core (see `src/lib.rs` for the map of
//! every file). Nothing here holds an `unsafe` block: raw calls go through
//! `crate::ffi`.

pub mod commands;
pub mod datatype;
pub mod keys;
pub mod resetstat;
pub mod state;
pub mod stats;
pub mod sweeper;
pub mod waiters;
