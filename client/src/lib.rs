//! Quorum (Redlock) client for the `redis-lock` module.
//!
//! A lock is taken on N independent nodes that run the module, and held when
//! a majority granted it within its validity (TTL − elapsed − drift). The
//! requests go to every node in parallel over one long-lived multiplexed
//! connection per node, each bounded by a per-node timeout, and the answer
//! is decided as soon as it is certain: a slow or hung node never stalls a
//! round that the others can decide.
//!
//! ```no_run
//! # async fn demo() -> Result<(), redis_lock_client::Error> {
//! use std::time::Duration;
//! use redis_lock_client::{Client, Config};
//!
//! let client = Client::new(
//!     Config::builder("redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003").build()?,
//! )?;
//!
//! // One lease, by hand.
//! let lease = client.acquire("jobs:nightly", Duration::from_secs(10), Duration::from_secs(2)).await?;
//! println!("fence {}", lease.fence()); // hand it to the protected resource
//! client.release(&lease).await?;
//!
//! // Or renewed automatically while the work runs; the work is dropped if the lock is lost.
//! let out = client
//!     .with_lock("jobs:nightly", Duration::from_secs(10), |held| async move {
//!         // ... write to storage with held.fence() ...
//!         held.fence()
//!     })
//!     .await?;
//! # let _ = out;
//! # Ok(())
//! # }
//! ```
//!
//! The quorum arithmetic (tally, fence raise, validity, drift, backoff,
//! renewal times) lives in a pure module with time passed in; IO is at the
//! edge (`node.rs`). A [`blocking`] facade owns a runtime for programs without
//! tokio.

// Unit tests may unwrap and index; library code may not (see [workspace.lints]).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod background;
pub mod blocking;

/// This crate's version, the same number as the module's (`INFO lock`,
/// `MODULE LIST`) and `redis-lock --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
mod client;
mod config;
mod error;
mod guard;
mod inspect;
mod lease;
mod node;
mod nodeset;
mod proto;
mod quorum;
mod round;

pub use client::{Client, Released};
pub use config::{
    Config, ConfigBuilder, IntoNodeAddrs, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRIFT_FACTOR,
    DEFAULT_DRIFT_FIXED, DEFAULT_MAX_HOLD, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_DELAY,
    DEFAULT_RETRY_JITTER, DEFAULT_WAIT,
};
pub use error::{human_duration, Error, LossReason, NodeError, NodeErrorKind};
pub use guard::{HeldLease, LockGuard};
pub use inspect::{Health, Holder, LockView, LockViews, ModuleState, NodeHealth};
pub use lease::{Lease, Token, MAX_TOKEN_LEN, TOKEN_BYTES};
