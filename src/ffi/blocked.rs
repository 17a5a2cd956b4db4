//! A blocked client (`RedisModule_BlockClient`) as a value: created by
//! [`BlockedClient::block`], released exactly once by
//! [`BlockedClient::unblock`], which consumes it. Its reply is a fencing
//! token or nil. The module's own timer ends the wait, so no Redis timeout
//! is set and no timeout callback is registered.

use crate::ffi::guard;
use redis_module::{raw, Context};
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

/// Identifies a blocked client in the disconnect callback.
pub type ClientId = usize;

/// What runs when a blocked client goes away (disconnected, killed, or
/// force-unblocked when the node became a replica) before it was unblocked.
/// Set once at load. It must end in [`BlockedClient::unblock`] for the
/// handle of that client, if the module still holds it.
static ON_DISCONNECT: OnceLock<fn(&Context, ClientId)> = OnceLock::new();

/// Set the disconnect hook; called once at load.
pub fn on_disconnect(hook: fn(&Context, ClientId)) {
    let _ = ON_DISCONNECT.set(hook);
}

/// A blocked-client handle. Only touched on Redis's main thread.
#[derive(Debug)]
pub struct BlockedClient(*mut raw::RedisModuleBlockedClient);

// SAFETY: the handle is created, used and released on the main thread only;
// the mutex that holds the waiters exists to make a static sound, not for
// other threads.
unsafe impl Send for BlockedClient {}

impl BlockedClient {
    /// Block the client of the running command; `None` if it cannot block.
    pub fn block(ctx: &Context) -> Option<BlockedClient> {
        // SAFETY: a command context; the callbacks have the signatures Redis
        // calls. No Redis timeout and no timeout callback (see the module
        // documentation above).
        let bc = unsafe {
            raw::RedisModule_BlockClient.map_or(std::ptr::null_mut(), |f| {
                f(ctx.get_raw(), Some(reply_cb), None, Some(free_cb), 0)
            })
        };
        if bc.is_null() {
            return None;
        }
        // SAFETY: a handle just returned by BlockClient.
        unsafe {
            if let Some(f) = raw::RedisModule_SetDisconnectCallback {
                f(bc, Some(disconnect_cb));
            }
        }
        Some(BlockedClient(bc))
    }

    pub fn id(&self) -> ClientId {
        self.0 as ClientId
    }

    /// Wake the client with a fencing token (granted) or nil, and release
    /// the handle. Consumes the handle: it is never used again.
    pub fn unblock(self, fence: Option<u64>) {
        let privdata = fence.map_or(std::ptr::null_mut(), |fence| {
            Box::into_raw(Box::new(fence)).cast()
        });
        // SAFETY: the handle is still blocked (the value is consumed here, so
        // this runs once per handle); the reply callback reads the box and
        // the free callback frees it.
        unsafe {
            if let Some(f) = raw::RedisModule_UnblockClient {
                f(self.0, privdata);
            }
        }
    }
}

unsafe extern "C" fn reply_cb(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    guard(raw::REDISMODULE_OK as c_int, || {
        // SAFETY: a reply callback's context; the private data is the boxed
        // fence from `BlockedClient::unblock` (or null), freed by free_cb.
        unsafe {
            let fence = raw::RedisModule_GetBlockedClientPrivateData
                .map_or(std::ptr::null_mut(), |f| f(ctx))
                .cast::<u64>();
            match fence.as_ref() {
                Some(fence) => {
                    raw::reply_with_long_long(ctx, i64::try_from(*fence).unwrap_or(i64::MAX))
                }
                None => raw::reply_with_null(ctx),
            };
        }
        raw::REDISMODULE_OK as c_int
    })
}

unsafe extern "C" fn free_cb(_ctx: *mut raw::RedisModuleCtx, privdata: *mut c_void) {
    guard((), || {
        if !privdata.is_null() {
            // SAFETY: created by Box::into_raw in `BlockedClient::unblock`.
            drop(unsafe { Box::from_raw(privdata.cast::<u64>()) });
        }
    });
}

unsafe extern "C" fn disconnect_cb(
    ctx: *mut raw::RedisModuleCtx,
    bc: *mut raw::RedisModuleBlockedClient,
) {
    guard((), || {
        if let Some(hook) = ON_DISCONNECT.get() {
            hook(&Context::new(ctx), bc as ClientId);
        }
    });
}
