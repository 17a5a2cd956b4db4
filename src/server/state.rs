//! Node-wide state of the module: the fencing counter, the expiry index and
//! the sweeper's timer. Redis calls the module from its main thread only
//! (the RDB and AOF writers are forked children with their own copy), so the
//! mutex is never contended; it exists to make the static sound.

use crate::pure::expiry::ExpiryIndex;
use crate::pure::lock::{FenceCounter, Micros};
use std::sync::Mutex;

pub struct Node {
    pub fences: FenceCounter,
    pub index: ExpiryIndex,
    /// The armed sweeper timer and the deadline it was armed for.
    pub timer: Option<(u64, Micros)>,
}

static NODE: Mutex<Node> = Mutex::new(Node {
    fences: FenceCounter::starting_at(0),
    index: ExpiryIndex::new(),
    timer: None,
});

pub fn with<R>(f: impl FnOnce(&mut Node) -> R) -> R {
    // A panic caught while the lock was held leaves consistent data (every
    // update is a single assignment or insert), so a poisoned lock is reused.
    let mut node = NODE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut node)
}
