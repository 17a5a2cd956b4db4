//! `CONFIG RESETSTAT` resets the module's counters too.
//!
//! Redis 7.0 tells modules nothing about RESETSTAT, so a command filter
//! notices the command, and a timer that runs right after it checks that the
//! server really reset its statistics (the command may have been refused,
//! e.g. by ACL): `total_commands_processed` went down.

use crate::ffi;
use crate::server::stats;
use redis_module::{raw, Context};
use std::ffi::c_int;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Duration;

/// A detached context of the module, for creating timers and reading server
/// info from the filter (which has no context of its own). Main thread only.
static DETACHED: AtomicPtr<raw::RedisModuleCtx> = AtomicPtr::new(std::ptr::null_mut());

pub fn install(ctx: *mut raw::RedisModuleCtx) -> Result<(), String> {
    // SAFETY: the OnLoad context; the detached context lives as long as the module.
    let detached = unsafe {
        raw::RedisModule_GetDetachedThreadSafeContext.ok_or("no detached contexts")?(ctx)
    };
    DETACHED.store(detached, Ordering::Relaxed);
    // SAFETY: the OnLoad context and an extern "C" filter of the right type.
    let filter = unsafe {
        raw::RedisModule_RegisterCommandFilter.ok_or("no command filters")?(
            ctx,
            Some(on_command),
            raw::REDISMODULE_CMDFILTER_NOSELF as c_int,
        )
    };
    if filter.is_null() {
        return Err("failed to register the RESETSTAT filter".into());
    }
    Ok(())
}

fn commands_processed(ctx: *mut raw::RedisModuleCtx) -> Option<u64> {
    // SAFETY: a valid (detached) context; the info data is freed before return.
    unsafe {
        let info = raw::RedisModule_GetServerInfo?(ctx, c"stats".as_ptr());
        if info.is_null() {
            return None;
        }
        let mut err: c_int = 0;
        let value = raw::RedisModule_ServerInfoGetFieldUnsigned?(
            info,
            c"total_commands_processed".as_ptr(),
            &mut err,
        );
        if let Some(free) = raw::RedisModule_FreeServerInfo {
            free(ctx, info);
        }
        (err == 0).then_some(value)
    }
}

unsafe extern "C" fn on_command(filter: *mut raw::RedisModuleCommandFilterCtx) {
    ffi::guard((), || {
        // SAFETY: Redis passes a valid filter context for this call.
        let arg = |i: c_int| unsafe {
            raw::RedisModule_CommandFilterArgGet
                .map(|f| f(filter, i))
                .filter(|s| !s.is_null())
                .map(|s| ffi::string_bytes(s))
        };
        // SAFETY: as above.
        let argc = unsafe { raw::RedisModule_CommandFilterArgsCount.map_or(0, |f| f(filter)) };
        let is_resetstat = argc == 2
            && arg(0).is_some_and(|a| a.eq_ignore_ascii_case(b"config"))
            && arg(1).is_some_and(|a| a.eq_ignore_ascii_case(b"resetstat"));
        let ctx = DETACHED.load(Ordering::Relaxed);
        if !is_resetstat || ctx.is_null() {
            return;
        }
        let Some(before) = commands_processed(ctx) else {
            return;
        };
        Context::new(ctx).create_timer(Duration::ZERO, check_reset, before);
    });
}

fn check_reset(ctx: &Context, before: u64) {
    ffi::guard((), || {
        let after = commands_processed(ctx.get_raw()).unwrap_or(u64::MAX);
        if after < before || before <= 2 {
            stats::reset();
        }
    });
}
