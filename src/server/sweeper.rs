//! Removes the keys of locks that have ended, at their deadline, by a module
//! timer on the monotonic clock. The primary deletes and replicates `DEL`;
//! a replica only waits for that `DEL` (and re-checks in case it is promoted).
//! While clients are paused (`CLIENT PAUSE ... WRITE`, a failover) nothing
//! is deleted: the timer looks again every few milliseconds until the pause
//! ends, as Redis holds back its own expiry. An ended lock is never live,
//! so holding back its deletion never extends it.

use crate::ffi;
use crate::pure::clock;
use crate::pure::lock::{Lock, Micros};
use crate::server::datatype::LOCK_TYPE;
use crate::server::state;
use redis_module::{Context, ContextFlags, RedisString};
use std::time::Duration;

/// Keys examined per timer run, so a mass expiry does not stall the server.
const BATCH: usize = 1_000;

/// How often a replica (or a loading server) looks again at a lock that has
/// ended but that it may not delete itself.
const RECHECK: Micros = 1_000_000;

/// How often the timer looks again while writes are paused.
const PAUSED_RECHECK: Micros = 10_000;

/// Whether the module may write now outside a client command (a timer).
pub enum Gate {
    Open,
    /// Clients are paused or the server is loading: look again shortly.
    Later,
    /// A replica: only its primary deletes and grants.
    Never,
}

pub fn write_gate(ctx: &Context) -> Gate {
    let flags = ctx.get_flags();
    if flags.contains(ContextFlags::SLAVE) {
        Gate::Never
    } else if flags.contains(ContextFlags::LOADING) || ffi::writes_paused() {
        Gate::Later
    } else {
        Gate::Open
    }
}

/// Record that `key` in `db` holds a lock ending at `deadline`, and make sure
/// the timer fires by then.
pub fn track(ctx: &Context, db: i32, key: &[u8], deadline: Micros) {
    state::with(|n| n.index.insert(deadline, db, key));
    arm(ctx);
}

/// The lock in `key` (of the selected database) no longer ends at
/// `deadline`: a command moved or removed it. Its entry goes; the timer may
/// then fire for nothing, which is harmless.
pub fn untrack(ctx: &Context, key: &[u8], deadline: Micros) {
    let db = ffi::selected_db(ctx);
    state::with(|n| n.index.remove(deadline, db, key));
}

/// Arm the timer for the earliest deadline on record, unless it already
/// fires by then.
pub fn arm(ctx: &Context) {
    arm_not_before(ctx, 0);
}

/// Arm the timer for the earliest deadline on record but not before
/// `not_before`, unless it already fires by then.
fn arm_not_before(ctx: &Context, not_before: Micros) {
    let plan = state::with(|n| {
        let next = n.index.next_deadline()?.max(not_before);
        match n.timer {
            Some((_, at)) if at <= next => None,
            old => Some((old.map(|(id, _)| id), next)),
        }
    });
    let Some((old, next)) = plan else { return };
    if let Some(id) = old {
        // The data of our timers is `()`, so nothing is leaked or dropped.
        let _ = ctx.stop_timer::<()>(id);
    }
    let wait_ms = next.saturating_sub(clock::now()).div_ceil(1000);
    let id = ctx.create_timer(Duration::from_millis(wait_ms), on_timer, ());
    state::with(|n| n.timer = Some((id, next)));
}

fn on_timer(ctx: &Context, _: ()) {
    ffi::guard((), || {
        state::with(|n| n.timer = None);
        if ffi::writes_paused() {
            // A deletion now would be propagated while clients are paused,
            // which aborts the server: wait for the pause to end.
            arm_not_before(ctx, clock::now().saturating_add(PAUSED_RECHECK));
            return;
        }
        sweep(ctx);
        arm(ctx);
    });
}

fn sweep(ctx: &Context) {
    let now = clock::now();
    let due = state::with(|n| n.index.pop_due(now, BATCH));
    let may_delete = matches!(write_gate(ctx), Gate::Open);
    for entry in due {
        if !ffi::select_db(ctx, entry.db) {
            continue;
        }
        let name = RedisString::create_from_slice(ctx.get_raw(), entry.key.as_slice());
        let key = ctx.open_key_writable(&name);
        let deadline = match key.get_value::<Lock>(&LOCK_TYPE) {
            Ok(Some(lock)) => lock.deadline,
            // Deleted, overwritten by another type, or renamed away.
            _ => continue,
        };
        if now < deadline {
            // Extended, or re-granted: look again at its current deadline.
            state::with(|n| n.index.insert(deadline, entry.db, &entry.key));
        } else if may_delete {
            remove(ctx, &key, &name);
            crate::server::stats::bump(&crate::server::stats::EXPIRED);
            ffi::notify(ctx, c"lock.expired", &name);
            // Expired: the first waiter gets it at the deadline.
            crate::server::waiters::hand_over(ctx, entry.db, &name, &key);
        } else {
            state::with(|n| {
                n.index
                    .insert(now.saturating_add(RECHECK), entry.db, &entry.key)
            });
        }
    }
}

/// Delete a lock's key and replicate the deletion.
pub fn remove(ctx: &Context, key: &redis_module::key::RedisKeyWritable, name: &RedisString) {
    if key.delete().is_ok() {
        ffi::signal_modified(ctx, name);
        ffi::replicate_del(ctx, name);
    }
}

/// Keyspace events that bring a lock to a key without one of our commands
/// (loading from RDB, RENAME, MOVE, COPY, RESTORE: index the lock there),
/// or take one away (DEL, RENAME, MOVE, a native TTL, eviction: serve the
/// key's waiters).
pub unsafe extern "C" fn on_keyspace_event(
    ctx: *mut redis_module::raw::RedisModuleCtx,
    _type: std::ffi::c_int,
    event: *const std::ffi::c_char,
    key: *mut redis_module::raw::RedisModuleString,
) -> std::ffi::c_int {
    ffi::guard(0, || {
        // SAFETY: Redis passes a NUL-terminated event name and a valid key
        // string for the duration of the callback.
        let (event, key) = unsafe { (ffi::event_name(event), ffi::string_bytes(key)) };
        let context = Context::new(ctx);
        if matches!(
            event.as_ref(),
            "del" | "rename_from" | "move_from" | "expired" | "evicted"
        ) {
            // The key went away under its waiters: serve them.
            crate::server::waiters::kick(&context, ffi::selected_db(&context), key);
            return 0;
        }
        if !matches!(
            event.as_ref(),
            "loaded" | "rename_to" | "move_to" | "copy_to" | "restore"
        ) {
            return 0;
        }
        let name = RedisString::create_from_slice(context.get_raw(), key);
        let deadline = match context.open_key(&name).get_value::<Lock>(&LOCK_TYPE) {
            Ok(Some(lock)) => lock.deadline,
            _ => return 0,
        };
        track(&context, ffi::selected_db(&context), key, deadline);
        0
    })
}

/// `SWAPDB`: keep the index pointing at the right databases. Waiters stay
/// with the database they waited in, as Redis's own blocked clients do;
/// both databases have new contents, so their queues are served again.
pub unsafe extern "C" fn on_swapdb(
    ctx: *mut redis_module::raw::RedisModuleCtx,
    _event: redis_module::raw::RedisModuleEvent,
    _subevent: u64,
    data: *mut std::ffi::c_void,
) {
    ffi::guard((), || {
        // SAFETY: Redis passes the SWAPDB event's info struct as `data`.
        if let Some((a, b)) = unsafe { ffi::swapdb_info(data) } {
            state::with(|n| n.index.swap_db(a, b));
            let context = Context::new(ctx);
            crate::server::waiters::kick_db(&context, a);
            crate::server::waiters::kick_db(&context, b);
        }
    });
}

/// `FLUSHDB` / `FLUSHALL`: forget the emptied databases' entries now rather
/// than when they come due.
pub unsafe extern "C" fn on_flush(
    ctx: *mut redis_module::raw::RedisModuleCtx,
    _event: redis_module::raw::RedisModuleEvent,
    subevent: u64,
    data: *mut std::ffi::c_void,
) {
    ffi::guard((), || {
        // SAFETY: Redis passes the FLUSHDB event's info struct as `data`.
        if let Some(db) = unsafe { ffi::flush_info(subevent, data) } {
            state::with(|n| n.index.forget_db(db));
            crate::server::waiters::kick_db(&Context::new(ctx), db);
        }
    });
}
