//! The module data type `redislock`, one lock per key: what its callbacks
//! do, on safe values. The raw callbacks are in `ffi/value_type.rs`;
//! encoding and decoding live in `pure/codec.rs`.

use crate::ffi;
use crate::ffi::value_type::{methods, ValueType};
use crate::pure::lock::Lock;
use crate::pure::{clock, codec};
use crate::server::{state, stats};
use redis_module::logging;
use redis_module::native_types::RedisType;
use std::sync::atomic::Ordering::Relaxed;

/// `TYPE key` replies `redislock` (type names are exactly 9 characters).
pub static LOCK_TYPE: RedisType =
    RedisType::new("redislock", codec::VERSION as i32, methods::<LockType>());

/// The lock type's callbacks.
pub struct LockType;

impl ValueType for LockType {
    type Value = Lock;
    const AOF_COMMAND: &'static std::ffi::CStr = c"LOCK.LOAD";

    fn load(encver: i32, payload: &[u8]) -> Option<Lock> {
        load(encver, payload)
    }
    fn save(lock: &Lock) -> Vec<u8> {
        save(lock)
    }
    fn memory(lock: &Lock, key: Option<(i32, usize)>) -> usize {
        memory(lock, key)
    }
    fn digest(lock: &Lock) -> (&[u8], [i64; 2]) {
        digest(lock)
    }
    fn freed() {
        freed()
    }
    fn copy(lock: &Lock) -> Lock {
        copy(lock)
    }
    fn aux_value() -> u64 {
        aux_value()
    }
    fn aux_loaded(last: u64) {
        aux_loaded(last)
    }
}

/// The largest fence a restored lock may carry (see DESIGN.md, "The
/// counter's headroom").
fn fence_ceiling() -> u64 {
    let wall_micros = ffi::server_wall_ms().saturating_mul(1000);
    state::with(|n| crate::pure::lock::fence_ceiling(n.fences.last(), wall_micros))
}

/// A lock read from an RDB file, `RESTORE` or a full sync, in encoding
/// version `encver`; `None` refuses it (the load fails).
pub fn load(encver: i32, payload: &[u8]) -> Option<Lock> {
    if encver < 1 || encver > i32::from(codec::VERSION) {
        logging::log_warning(format!("lock: cannot load encoding version {encver}"));
        return None;
    }
    match codec::decode(payload, clock::now()) {
        Ok(lock) if !ffi::server_loading() && lock.fence > fence_ceiling() => {
            // `RESTORE` of a crafted (or far-future) payload: the same
            // bound as a `FENCE` floor, or one call could spend the
            // node's counter for every tenant.
            logging::log_warning(format!(
                "lock: refusing a restored lock whose fence {} is above the node's bound {}",
                lock.fence,
                fence_ceiling()
            ));
            None
        }
        Ok(lock) => {
            state::with(|n| n.fences.observe(lock.fence));
            crate::server::commands::note_state_loaded();
            stats::LOCKS.fetch_add(1, Relaxed);
            Some(lock)
        }
        Err(e) => {
            logging::log_warning(format!("lock: refusing a corrupt lock payload: {e}"));
            None
        }
    }
}

/// The payload written to the RDB and emitted to the AOF (as `LOCK.LOAD`).
pub fn save(lock: &Lock) -> Vec<u8> {
    codec::encode(lock, clock::now())
}

/// What a lock costs the module: its allocation (rounded up to the
/// allocator's size class), a token too long to sit inline, and the lock's
/// entry in the expiry index, which holds the key's name. `key` is the
/// key's database and name length, when the server gives them. (`MEMORY
/// USAGE` adds the key's name and its dictionary entry. The server's own
/// object header and module-value wrapper, 32 bytes, are not the module's
/// to report, as for any module type.)
pub fn memory(lock: &Lock, key: Option<(i32, usize)>) -> usize {
    let (db, key_len) = key.unwrap_or((0, 0));
    let spilled = match lock.spilled_bytes() {
        0 => 0,
        n => n.next_multiple_of(16),
    };
    std::mem::size_of::<Lock>().next_multiple_of(16)
        + spilled
        + state::with(|n| n.index.entry_cost(db, key_len))
}

/// Holder, fence and extension count: what a replica must agree on. The
/// deadline is left out on purpose: a replica's is later by the replication
/// delay (see DESIGN.md).
pub fn digest(lock: &Lock) -> (&[u8], [i64; 2]) {
    (
        lock.owner(),
        [
            i64::try_from(lock.fence).unwrap_or(i64::MAX),
            i64::try_from(lock.extensions()).unwrap_or(i64::MAX),
        ],
    )
}

/// A lock value was freed.
pub fn freed() {
    stats::LOCKS.fetch_sub(1, Relaxed);
}

/// `COPY`: the same lock under another name.
pub fn copy(lock: &Lock) -> Lock {
    stats::LOCKS.fetch_add(1, Relaxed);
    lock.clone()
}

/// The node's fencing counter travels in the RDB (and so in `DEBUG RELOAD`,
/// full syncs and the AOF preamble) even when no lock is held.
pub fn aux_value() -> u64 {
    state::with(|n| n.fences.last())
}

pub fn aux_loaded(last: u64) {
    state::with(|n| n.fences.observe(last));
    crate::server::commands::note_state_loaded();
}
