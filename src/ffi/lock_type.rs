//! The raw side of the module data type `redislock`: the `RedisType` and
//! its `extern "C"` callbacks, which turn Redis's pointers into a `&Lock`
//! (or a boxed one) and call the safe functions of `server/datatype.rs`.
//! Every callback runs behind the panic barrier.

use crate::ffi::{emit_aof, guard, opt_ctx_key};
use crate::pure::codec;
use crate::pure::lock::Lock;
use crate::server::datatype;
use redis_module::native_types::RedisType;
use redis_module::raw;
use std::ffi::{c_int, c_void};
use std::ptr;

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

/// # Safety
/// `value` must be a pointer this type handed to Redis (a boxed `Lock`).
unsafe fn lock_ref<'a>(value: *const c_void) -> Option<&'a Lock> {
    // SAFETY: per the caller's contract.
    unsafe { value.cast::<Lock>().as_ref() }
}

fn boxed(lock: Option<Lock>) -> *mut c_void {
    lock.map_or(ptr::null_mut(), |lock| Box::into_raw(Box::new(lock)).cast())
}

unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    guard(ptr::null_mut(), || {
        let Ok(buffer) = raw::load_string_buffer(rdb) else {
            return ptr::null_mut();
        };
        boxed(datatype::load(encver, buffer.as_ref()))
    })
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    guard((), || {
        // SAFETY: Redis passes a value of this type.
        if let Some(lock) = unsafe { lock_ref(value) } {
            raw::save_slice(rdb, &datatype::save(lock));
        }
    });
}

unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    guard((), || {
        // SAFETY: Redis passes a value of this type.
        if let Some(lock) = unsafe { lock_ref(value) } {
            emit_aof(aof, c"LOCK.LOAD", key, &datatype::save(lock));
        }
    });
}

unsafe extern "C" fn mem_usage(
    ctx: *mut raw::RedisModuleKeyOptCtx,
    value: *const c_void,
    _sample_size: usize,
) -> usize {
    guard(0, || {
        // SAFETY: Redis passes a value of this type and its key context.
        let (lock, key) = unsafe { (lock_ref(value), opt_ctx_key(ctx)) };
        lock.map_or(0, |lock| datatype::memory(lock, key))
    })
}

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    guard((), || {
        // SAFETY: Redis passes a value of this type.
        let Some(lock) = (unsafe { lock_ref(value) }) else {
            return;
        };
        let (bytes, numbers) = datatype::digest(lock);
        // SAFETY: a live digest for this call; the buffer is valid for it.
        unsafe {
            if let Some(add) = raw::RedisModule_DigestAddStringBuffer {
                add(md, bytes.as_ptr().cast(), bytes.len());
            }
            if let Some(add) = raw::RedisModule_DigestAddLongLong {
                for n in numbers {
                    add(md, n);
                }
            }
            if let Some(end) = raw::RedisModule_DigestEndSequence {
                end(md);
            }
        }
    });
}

unsafe extern "C" fn free(value: *mut c_void) {
    guard((), || {
        if !value.is_null() {
            // SAFETY: the value was created by Box::into_raw in this file.
            drop(unsafe { Box::from_raw(value.cast::<Lock>()) });
            datatype::freed();
        }
    });
}

unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    guard(ptr::null_mut(), || {
        // SAFETY: Redis passes a value of this type.
        boxed(unsafe { lock_ref(value) }.map(datatype::copy))
    })
}

unsafe extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, when: c_int) {
    guard((), || {
        if when == raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
            raw::save_unsigned(rdb, datatype::aux_value());
        }
    });
}

unsafe extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, _encver: c_int, when: c_int) -> c_int {
    guard(raw::REDISMODULE_ERR as c_int, || {
        if when != raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
            return raw::REDISMODULE_OK as c_int;
        }
        match raw::load_unsigned(rdb) {
            Ok(last) => {
                datatype::aux_loaded(last);
                raw::REDISMODULE_OK as c_int
            }
            Err(_) => raw::REDISMODULE_ERR as c_int,
        }
    })
}
