//! The raw side of a module data type whose values are boxed Rust values:
//! the `extern "C"` callbacks turn Redis's pointers into a `&T::Value` (or
//! a boxed one) and call the safe functions of a [`ValueType`]
//! (`server/datatype.rs` implements it for locks). Every callback runs
//! behind the panic barrier.

use crate::ffi::{emit_aof, guard, opt_ctx_key};
use redis_module::raw;
use std::ffi::{c_int, c_void};
use std::ptr;

/// What a module type does, on safe values.
pub trait ValueType {
    type Value: Clone;
    /// A value read in encoding version `encver`; `None` refuses it.
    fn load(encver: i32, payload: &[u8]) -> Option<Self::Value>;
    /// The payload written to the RDB, and to the AOF as `AOF_COMMAND`.
    fn save(value: &Self::Value) -> Vec<u8>;
    /// The command that recreates a value from its payload in the AOF.
    const AOF_COMMAND: &'static std::ffi::CStr;
    /// Bytes the value costs; `key` is the key's database and name length.
    fn memory(value: &Self::Value, key: Option<(i32, usize)>) -> usize;
    /// What `DEBUG DIGEST` covers: bytes, then integers.
    fn digest(value: &Self::Value) -> (&[u8], [i64; 2]);
    /// A value was freed (on any thread).
    fn freed();
    /// `COPY`.
    fn copy(value: &Self::Value) -> Self::Value;
    /// The node-wide number saved before the keys, and its loading.
    fn aux_value() -> u64;
    fn aux_loaded(value: u64);
}

/// The type methods of `T`.
pub const fn methods<T: ValueType>() -> raw::RedisModuleTypeMethods {
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load::<T>),
        rdb_save: Some(rdb_save::<T>),
        aof_rewrite: Some(aof_rewrite::<T>),
        mem_usage: None,
        digest: Some(digest::<T>),
        free: Some(free::<T>),
        aux_load: Some(aux_load::<T>),
        aux_save: Some(aux_save::<T>),
        aux_save2: None,
        aux_save_triggers: raw::REDISMODULE_AUX_BEFORE_RDB as i32,
        free_effort: None,
        unlink: None,
        copy: Some(copy::<T>),
        defrag: None,
        copy2: None,
        free_effort2: None,
        mem_usage2: Some(mem_usage::<T>),
        unlink2: None,
    }
}

/// # Safety
/// `value` must be a pointer this type handed to Redis (a boxed `T::Value`).
unsafe fn value_ref<'a, T: ValueType>(value: *const c_void) -> Option<&'a T::Value> {
    // SAFETY: per the caller's contract.
    unsafe { value.cast::<T::Value>().as_ref() }
}

fn boxed<V>(value: Option<V>) -> *mut c_void {
    value.map_or(ptr::null_mut(), |v| Box::into_raw(Box::new(v)).cast())
}

unsafe extern "C" fn rdb_load<T: ValueType>(
    rdb: *mut raw::RedisModuleIO,
    encver: c_int,
) -> *mut c_void {
    guard(ptr::null_mut(), || {
        let Ok(buffer) = raw::load_string_buffer(rdb) else {
            return ptr::null_mut();
        };
        boxed(T::load(encver, buffer.as_ref()))
    })
}

unsafe extern "C" fn rdb_save<T: ValueType>(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    guard((), || {
        // SAFETY: Redis passes a value of this type.
        if let Some(value) = unsafe { value_ref::<T>(value) } {
            raw::save_slice(rdb, &T::save(value));
        }
    });
}

unsafe extern "C" fn aof_rewrite<T: ValueType>(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    guard((), || {
        // SAFETY: Redis passes a value of this type.
        if let Some(value) = unsafe { value_ref::<T>(value) } {
            emit_aof(aof, T::AOF_COMMAND, key, &T::save(value));
        }
    });
}

unsafe extern "C" fn mem_usage<T: ValueType>(
    ctx: *mut raw::RedisModuleKeyOptCtx,
    value: *const c_void,
    _sample_size: usize,
) -> usize {
    guard(0, || {
        // SAFETY: Redis passes a value of this type and its key context.
        let (value, key) = unsafe { (value_ref::<T>(value), opt_ctx_key(ctx)) };
        value.map_or(0, |value| T::memory(value, key))
    })
}

unsafe extern "C" fn digest<T: ValueType>(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    guard((), || {
        // SAFETY: Redis passes a value of this type.
        let Some(value) = (unsafe { value_ref::<T>(value) }) else {
            return;
        };
        let (bytes, numbers) = T::digest(value);
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

unsafe extern "C" fn free<T: ValueType>(value: *mut c_void) {
    guard((), || {
        if !value.is_null() {
            // SAFETY: the value was created by Box::into_raw in this file.
            drop(unsafe { Box::from_raw(value.cast::<T::Value>()) });
            T::freed();
        }
    });
}

unsafe extern "C" fn copy<T: ValueType>(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    guard(ptr::null_mut(), || {
        // SAFETY: Redis passes a value of this type.
        boxed(unsafe { value_ref::<T>(value) }.map(T::copy))
    })
}

unsafe extern "C" fn aux_save<T: ValueType>(rdb: *mut raw::RedisModuleIO, when: c_int) {
    guard((), || {
        if when == raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
            raw::save_unsigned(rdb, T::aux_value());
        }
    });
}

unsafe extern "C" fn aux_load<T: ValueType>(
    rdb: *mut raw::RedisModuleIO,
    _encver: c_int,
    when: c_int,
) -> c_int {
    guard(raw::REDISMODULE_ERR as c_int, || {
        if when != raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
            return raw::REDISMODULE_OK as c_int;
        }
        match raw::load_unsigned(rdb) {
            Ok(last) => {
                T::aux_loaded(last);
                raw::REDISMODULE_OK as c_int
            }
            Err(_) => raw::REDISMODULE_ERR as c_int,
        }
    })
}
