//! Keyspace events and server events, delivered to safe hooks: the raw
//! callbacks live here and pass on plain values.

use crate::ffi::{event_name, guard, string_bytes};
use redis_module::{raw, Context};
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// A keyspace event: its name (e.g. `del`, `rename_to`) and the key's name,
/// in the database the context has selected.
pub type KeyspaceHook = fn(&Context, &str, &[u8]);

/// The server events the module follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// `SWAPDB a b` swapped the two databases.
    SwapDb(i32, i32),
    /// `FLUSHDB` of a database, or `FLUSHALL` (-1), is done.
    Flushed(i32),
    /// This node became a primary.
    Promoted,
}

pub type ServerHook = fn(&Context, ServerEvent);

static KEYSPACE_HOOK: OnceLock<KeyspaceHook> = OnceLock::new();
static SERVER_HOOK: OnceLock<ServerHook> = OnceLock::new();

/// Call `hook` for keyspace events of the classes `types`
/// (`REDISMODULE_NOTIFY_*`). Once, at load.
pub fn subscribe_keyspace_events(
    ctx: *mut raw::RedisModuleCtx,
    types: c_int,
    hook: KeyspaceHook,
) -> Result<(), String> {
    KEYSPACE_HOOK
        .set(hook)
        .map_err(|_| "keyspace events subscribed twice")?;
    // SAFETY: the OnLoad context and an extern "C" callback of the right type.
    let status = unsafe {
        raw::RedisModule_SubscribeToKeyspaceEvents
            .ok_or("RedisModule_SubscribeToKeyspaceEvents missing")?(
            ctx,
            types,
            Some(on_keyspace_event),
        )
    };
    if status == raw::Status::Ok as c_int {
        Ok(())
    } else {
        Err("failed to subscribe to keyspace events".into())
    }
}

/// Call `hook` for `SWAPDB`, the end of `FLUSHDB`/`FLUSHALL`, and a
/// promotion to primary. Once, at load.
pub fn subscribe_server_events(
    ctx: *mut raw::RedisModuleCtx,
    hook: ServerHook,
) -> Result<(), String> {
    SERVER_HOOK
        .set(hook)
        .map_err(|_| "server events subscribed twice")?;
    for id in [
        raw::REDISMODULE_EVENT_SWAPDB,
        raw::REDISMODULE_EVENT_FLUSHDB,
        raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
    ] {
        // redismodule.h defines the event descriptors as header statics,
        // which do not link from Rust: build the same value (id, version 1).
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        // SAFETY: the OnLoad context; the callback has the signature Redis calls.
        let status = unsafe {
            raw::RedisModule_SubscribeToServerEvent
                .ok_or("RedisModule_SubscribeToServerEvent missing")?(
                ctx,
                event,
                Some(on_server_event),
            )
        };
        if status != raw::Status::Ok as c_int {
            return Err(format!("failed to subscribe to server event {id}"));
        }
    }
    Ok(())
}

unsafe extern "C" fn on_keyspace_event(
    ctx: *mut raw::RedisModuleCtx,
    _type: c_int,
    event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    guard(0, || {
        // SAFETY: Redis passes a NUL-terminated event name and a valid key
        // string for the duration of the callback.
        let (event, key) = unsafe { (event_name(event), string_bytes(key)) };
        if let Some(hook) = KEYSPACE_HOOK.get() {
            hook(&Context::new(ctx), &event, key);
        }
        0
    })
}

unsafe extern "C" fn on_server_event(
    ctx: *mut raw::RedisModuleCtx,
    event: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    guard((), || {
        let Some(hook) = SERVER_HOOK.get() else {
            return;
        };
        // SAFETY: Redis passes the event's own info struct as `data`.
        if let Some(event) = unsafe { server_event(event.id, subevent, data) } {
            hook(&Context::new(ctx), event);
        }
    });
}

/// # Safety
/// `data` must be the info struct Redis passes with event `id`.
unsafe fn server_event(id: u64, subevent: u64, data: *mut c_void) -> Option<ServerEvent> {
    match id {
        raw::REDISMODULE_EVENT_SWAPDB => {
            // SAFETY: per the caller's contract, a RedisModuleSwapDbInfo.
            let info = unsafe { data.cast::<raw::RedisModuleSwapDbInfo>().as_ref()? };
            Some(ServerEvent::SwapDb(info.dbnum_first, info.dbnum_second))
        }
        raw::REDISMODULE_EVENT_FLUSHDB if subevent == raw::REDISMODULE_SUBEVENT_FLUSHDB_END => {
            // SAFETY: per the caller's contract, a RedisModuleFlushInfo.
            let info = unsafe { data.cast::<raw::RedisModuleFlushInfo>().as_ref()? };
            Some(ServerEvent::Flushed(info.dbnum))
        }
        raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED
            if subevent == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_MASTER =>
        {
            Some(ServerEvent::Promoted)
        }
        _ => None,
    }
}
