//! The module data type `redislock`: one lock per key. Its callbacks are
//! thin: encoding and decoding live in `codec.rs`, and every callback runs
//! behind the panic barrier.

use crate::ffi;
use crate::pure::lock::Lock;
use crate::pure::{clock, codec};
use crate::server::{state, stats};
use redis_module::native_types::RedisType;
use redis_module::{logging, raw};
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::Ordering::Relaxed;

/// `TYPE key` replies `redislock` (type names are exactly 9 characters).
pub static LOCK_TYPE: RedisType = RedisType::new(
    "redislock",
    codec::VERSION as i32,
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: None,
        digest: Some(digest),
        free: Some(free),
        aux_load: Some(aux_load),
        aux_save: Some(aux_save),
        aux_save2: None,
        aux_save_triggers: raw::REDISMODULE_AUX_BEFORE_RDB as i32,
        free_effort: None,
        unlink: None,
        copy: Some(copy),
        defrag: None,
        copy2: None,
        free_effort2: None,
        mem_usage2: Some(mem_usage),
        unlink2: None,
    },
);

/// The largest fence a restored lock may carry (see DESIGN.md, "The
/// counter's headroom").
fn fence_ceiling() -> u64 {
    let wall_micros = ffi::server_wall_ms().saturating_mul(1000);
    state::with(|n| crate::pure::lock::fence_ceiling(n.fences.last(), wall_micros))
}

/// # Safety
/// `value` must be a pointer this type handed to Redis (a boxed `Lock`).
unsafe fn lock_ref<'a>(value: *const c_void) -> Option<&'a Lock> {
    // SAFETY: per the caller's contract.
    unsafe { value.cast::<Lock>().as_ref() }
}

unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    ffi::guard(ptr::null_mut(), || {
        if encver < 1 || encver > c_int::from(codec::VERSION) {
            logging::log_warning(format!("lock: cannot load encoding version {encver}"));
            return ptr::null_mut();
        }
        let Ok(buffer) = raw::load_string_buffer(rdb) else {
            return ptr::null_mut();
        };
        match codec::decode(buffer.as_ref(), clock::now()) {
            Ok(lock) if !ffi::server_loading() && lock.fence > fence_ceiling() => {
                // `RESTORE` of a crafted (or far-future) payload: the same
                // bound as a `FENCE` floor, or one call could spend the
                // node's counter for every tenant.
                logging::log_warning(format!(
                    "lock: refusing a restored lock whose fence {} is above the node's bound {}",
                    lock.fence,
                    fence_ceiling()
                ));
                ptr::null_mut()
            }
            Ok(lock) => {
                state::with(|n| n.fences.observe(lock.fence));
                stats::LOCKS.fetch_add(1, Relaxed);
                Box::into_raw(Box::new(lock)).cast()
            }
            Err(e) => {
                logging::log_warning(format!("lock: refusing a corrupt lock payload: {e}"));
                ptr::null_mut()
            }
        }
    })
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    ffi::guard((), || {
        // SAFETY: Redis passes a value of this type.
        if let Some(lock) = unsafe { lock_ref(value) } {
            raw::save_slice(rdb, &codec::encode(lock, clock::now()));
        }
    });
}

unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    ffi::guard((), || {
        // SAFETY: Redis passes a value of this type.
        if let Some(lock) = unsafe { lock_ref(value) } {
            ffi::emit_aof(aof, c"LOCK.LOAD", key, &codec::encode(lock, clock::now()));
        }
    });
}

/// What a lock costs the module: its allocation (rounded up to the
/// allocator's size class), a token too long to sit inline, and the lock's
/// entry in the expiry index, which holds the key's name (`MEMORY USAGE`
/// adds the key's name and its dictionary entry). The server's own object
/// header and module-value wrapper (32 bytes) are not the module's to
/// report, as for any module type.
unsafe extern "C" fn mem_usage(
    ctx: *mut raw::RedisModuleKeyOptCtx,
    value: *const c_void,
    _sample_size: usize,
) -> usize {
    ffi::guard(0, || {
        // SAFETY: Redis passes a value of this type and its key context.
        let (lock, key) = unsafe { (lock_ref(value), ffi::opt_ctx_key(ctx)) };
        let Some(lock) = lock else { return 0 };
        let (db, key_len) = key.unwrap_or((0, 0));
        let spilled = match lock.spilled_bytes() {
            0 => 0,
            n => n.next_multiple_of(16),
        };
        std::mem::size_of::<Lock>().next_multiple_of(16)
            + spilled
            + state::with(|n| n.index.entry_cost(db, key_len))
    })
}

/// Holder, fence and extension count: what a replica must agree on. The
/// deadline is left out on purpose: a replica's is later by the replication
/// delay (see DESIGN.md).
unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    ffi::guard((), || {
        // SAFETY: Redis passes a value of this type and a live digest.
        unsafe {
            let Some(lock) = lock_ref(value) else { return };
            if let Some(add) = raw::RedisModule_DigestAddStringBuffer {
                add(md, lock.owner().as_ptr().cast(), lock.owner().len());
            }
            if let Some(add) = raw::RedisModule_DigestAddLongLong {
                add(md, i64::try_from(lock.fence).unwrap_or(i64::MAX));
                add(md, i64::try_from(lock.extensions()).unwrap_or(i64::MAX));
            }
            if let Some(end) = raw::RedisModule_DigestEndSequence {
                end(md);
            }
        }
    });
}

unsafe extern "C" fn free(value: *mut c_void) {
    ffi::guard((), || {
        if !value.is_null() {
            // SAFETY: the value was created by Box::into_raw in this module.
            drop(unsafe { Box::from_raw(value.cast::<Lock>()) });
            stats::LOCKS.fetch_sub(1, Relaxed);
        }
    });
}

unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    ffi::guard(ptr::null_mut(), || {
        // SAFETY: Redis passes a value of this type.
        match unsafe { lock_ref(value) } {
            Some(lock) => {
                stats::LOCKS.fetch_add(1, Relaxed);
                Box::into_raw(Box::new(lock.clone())).cast()
            }
            None => ptr::null_mut(),
        }
    })
}

/// The node's fencing counter travels in the RDB (and so in `DEBUG RELOAD`,
/// full syncs and the AOF preamble) even when no lock is held.
unsafe extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, when: c_int) {
    ffi::guard((), || {
        if when == raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
            raw::save_unsigned(rdb, state::with(|n| n.fences.last()));
        }
    });
}

unsafe extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, _encver: c_int, when: c_int) -> c_int {
    ffi::guard(raw::REDISMODULE_ERR as c_int, || {
        if when != raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
            return raw::REDISMODULE_OK as c_int;
        }
        match raw::load_unsigned(rdb) {
            Ok(last) => {
                state::with(|n| n.fences.observe(last));
                raw::REDISMODULE_OK as c_int
            }
            Err(_) => raw::REDISMODULE_ERR as c_int,
        }
    })
}
