//! A resource that enforces fencing: the store a lock is supposed to protect.
//!
//! A lock alone cannot stop a holder that was paused (GC, SIGSTOP, a slow
//! disk) past its lease from writing: it wakes up believing it still holds
//! the lock. The resource has to check. Each write carries the writer's
//! fencing token (the lease's `fence()`) and an id of the lease; the store
//! remembers the highest token it has accepted and takes a write only if
//!
//! - its token is greater than that (a newer lease), or
//! - it is equal and comes from the same lease (a holder writing again).
//!
//! Everything else is stale and rejected, so once a newer holder has written,
//! no older holder's write lands, however late it arrives. That works only if
//! tokens grow from one lease to the next across the whole lock service,
//! which is what the quorum client's fenced acquisition provides.
//!
//! ```
//! use testkit::FencedStore;
//!
//! let store = FencedStore::new();
//! store.write(10, "lease-a", "x", "1").unwrap(); // lease a, fence 10
//! store.write(10, "lease-a", "x", "2").unwrap(); // same lease again
//! store.write(12, "lease-b", "x", "3").unwrap(); // a newer lease
//! let stale = store.write(10, "lease-a", "x", "4").unwrap_err(); // a woke up late
//! assert_eq!(stale.highest, 12);
//! assert_eq!(store.get("x").as_deref(), Some("3"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// A write refused because a newer fencing token was seen first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleFence {
    /// The token the write carried.
    pub fence: u64,
    /// The highest token accepted so far.
    pub highest: u64,
}

impl fmt::Display for StaleFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stale fencing token {}: the store has accepted {}",
            self.fence, self.highest
        )
    }
}

impl std::error::Error for StaleFence {}

#[derive(Debug, Default)]
struct State {
    /// Highest token accepted, and the lease that wrote with it.
    highest: Option<(u64, String)>,
    data: BTreeMap<String, String>,
    accepted: u64,
    rejected: u64,
}

/// An in-memory key/value store that rejects writes with stale fencing
/// tokens. Thread-safe; share it with an `Arc`.
#[derive(Debug, Default)]
pub struct FencedStore {
    state: Mutex<State>,
}

impl FencedStore {
    pub fn new() -> FencedStore {
        FencedStore::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent data:
        // every update below is a single assignment after the check.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `value` under `key` if `fence` is not stale: greater than the
    /// highest token accepted so far, or equal to it from the same `lease`
    /// (any id of the lease that is the same for all of its writes, e.g. its
    /// token). Returns the highest token seen when it refuses.
    pub fn write(
        &self,
        fence: u64,
        lease: &str,
        key: &str,
        value: impl Into<String>,
    ) -> Result<(), StaleFence> {
        let mut state = self.state();
        let fresh = match &state.highest {
            None => true,
            Some((highest, writer)) => fence > *highest || (fence == *highest && writer == lease),
        };
        if !fresh {
            state.rejected += 1;
            return Err(StaleFence {
                fence,
                highest: state.highest.as_ref().map_or(0, |(h, _)| *h),
            });
        }
        if state.highest.as_ref().is_none_or(|(h, _)| fence > *h) {
            state.highest = Some((fence, lease.to_owned()));
        }
        state.data.insert(key.to_owned(), value.into());
        state.accepted += 1;
        Ok(())
    }

    /// The value last written under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.state().data.get(key).cloned()
    }

    /// The highest fencing token accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.state().highest.as_ref().map(|(h, _)| *h)
    }

    /// How many writes were accepted and rejected.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state();
        (state.accepted, state.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_tokens_win_and_stale_ones_are_refused() {
        let s = FencedStore::new();
        assert_eq!(s.highest(), None);
        // (fence, lease, accepted?)
        let steps: &[(u64, &str, bool)] = &[
            (5, "a", true),
            (5, "a", true),  // the same lease again
            (5, "b", false), // another lease with an equal token: not ordered after a
            (4, "c", false), // older
            (9, "b", true),  // newer
            (5, "a", false), // a, woken up late
            (9, "b", true),
            (10, "c", true),
            (9, "b", false),
        ];
        for (i, (fence, lease, ok)) in steps.iter().enumerate() {
            let got = s.write(*fence, lease, "k", format!("v{i}"));
            assert_eq!(got.is_ok(), *ok, "step {i}: {fence} by {lease}: {got:?}");
            if let Err(e) = got {
                assert!(e.highest > *fence || (e.highest == *fence && *lease != "a"));
                assert!(e.to_string().contains("stale"));
            }
        }
        assert_eq!(s.highest(), Some(10));
        assert_eq!(s.get("k").as_deref(), Some("v7"));
        assert_eq!(s.counts(), (5, 4));
    }
}
