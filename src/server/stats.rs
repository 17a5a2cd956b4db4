//! Counters and gauges for `INFO lock`. Atomics, because a value's free
//! callback can run on a background thread (lazy free of a flushed db).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        $(#[doc = $doc] pub static $name: AtomicU64 = AtomicU64::new(0);)*

        /// `CONFIG RESETSTAT`: zero every counter (gauges stay).
        pub fn reset() {
            $($name.store(0, Relaxed);)*
        }

        /// (NAME, value) of every counter, in a fixed order.
        pub fn counters() -> Vec<(&'static str, u64)> {
            vec![$((stringify!($name), $name.load(Relaxed)),)*]
        }
    };
}

counters! {
    ACQUISITIONS: "New grants.",
    REACQUISITIONS: "Refreshes of a grant by its holder (LOCK.ACQUIRE with the holding token).",
    CONTENDED: "LOCK.ACQUIRE refused because another token holds the lock.",
    HOLD_LIMIT_REFUSALS: "Refreshes and extensions refused by the grant's hold limit.",
    EXTENSIONS: "Successful LOCK.EXTEND.",
    EXTENSIONS_REFUSED: "LOCK.EXTEND that replied 0.",
    RELEASES: "Successful LOCK.RELEASE.",
    RELEASES_WRONG_TOKEN: "LOCK.RELEASE of a held lock by a token that does not hold it.",
    EXPIRED: "Leases that ran out while held (ended without a release).",
    HANDOVERS: "Grants made to a waiting client when the lock was freed.",
    WAIT_TIMEOUTS: "Waiting clients whose WAIT ran out.",
    WAITS_REFUSED: "WAITs answered at once because lock.max-waiters clients already waited.",
    WAITS_CANCELLED: "LOCK.RELEASE that ended waits of its own token (a client giving up).",
    REJOIN_REFUSALS: "LOCK.ACQUIRE refused with TRYAGAIN during the delayed rejoin after start-up.",
}

/// Lock values stored on the node (live, plus ended ones the sweeper has not
/// removed yet).
pub static LOCKS: AtomicI64 = AtomicI64::new(0);

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}
