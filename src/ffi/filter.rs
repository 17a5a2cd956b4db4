//! A command filter (it sees every command before it runs) and a detached
//! context of the module, for the filter's work, as safe calls.

use crate::ffi::{guard, string_bytes};
use redis_module::{raw, Context};
use std::ffi::c_int;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

/// The arguments of a command seen by the filter, read on demand (the
/// filter runs for every command: nothing is copied).
pub struct FilterArgs(*mut raw::RedisModuleCommandFilterCtx);

impl FilterArgs {
    pub fn len(&self) -> usize {
        // SAFETY: the filter context Redis passed for this call.
        let n = unsafe { raw::RedisModule_CommandFilterArgsCount.map_or(0, |f| f(self.0)) };
        usize::try_from(n).unwrap_or(0)
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let i = c_int::try_from(i).ok()?;
        // SAFETY: the filter context Redis passed for this call; Redis
        // checks the index; the string lives for the call.
        unsafe {
            raw::RedisModule_CommandFilterArgGet
                .map(|f| f(self.0, i))
                .filter(|s| !s.is_null())
                .map(|s| string_bytes(s))
        }
    }
}

/// What the filter runs for each command (set once at load).
pub type FilterHook = fn(&FilterArgs);

static HOOK: OnceLock<FilterHook> = OnceLock::new();

/// A detached context of the module: lives as long as the module.
static DETACHED: AtomicPtr<raw::RedisModuleCtx> = AtomicPtr::new(std::ptr::null_mut());

/// Create the module's detached context and register `hook` as a command
/// filter (not called for the module's own commands). Once, at load.
pub fn install(ctx: *mut raw::RedisModuleCtx, hook: FilterHook) -> Result<(), String> {
    HOOK.set(hook)
        .map_err(|_| "command filter installed twice")?;
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
        return Err("failed to register the command filter".into());
    }
    Ok(())
}

/// The detached context, for timers and server info outside a command.
/// Main thread only.
pub fn detached() -> Option<Context> {
    let ctx = DETACHED.load(Ordering::Relaxed);
    (!ctx.is_null()).then(|| Context::new(ctx))
}

/// An unsigned field of `INFO section`, e.g. `stats` /
/// `total_commands_processed`.
pub fn server_info_unsigned(
    ctx: &Context,
    section: &std::ffi::CStr,
    field: &std::ffi::CStr,
) -> Option<u64> {
    // SAFETY: a valid context; the info data is freed before return.
    unsafe {
        let info = raw::RedisModule_GetServerInfo?(ctx.get_raw(), section.as_ptr());
        if info.is_null() {
            return None;
        }
        let mut err: c_int = 0;
        let value = raw::RedisModule_ServerInfoGetFieldUnsigned?(info, field.as_ptr(), &mut err);
        if let Some(free) = raw::RedisModule_FreeServerInfo {
            free(ctx.get_raw(), info);
        }
        (err == 0).then_some(value)
    }
}

unsafe extern "C" fn on_command(filter: *mut raw::RedisModuleCommandFilterCtx) {
    guard((), || {
        if let Some(hook) = HOOK.get() {
            hook(&FilterArgs(filter));
        }
    });
}
