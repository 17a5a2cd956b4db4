//! The pure core: no Redis imports, time and randomness passed in, tested
//! with tables and property tests without a server (see `src/lib.rs` for
//! the map of every file).

pub mod args;
pub mod clock;
pub mod codec;
pub mod expiry;
pub mod lock;
pub mod queue;
pub mod rejoin;
pub mod settings;
pub mod version;
