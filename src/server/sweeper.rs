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
use crate::server::keys::{self, Ending};
use crate::server::{state, waiters};
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
        let Ok(key) = keys::open(ctx, name) else {
            continue; // overwritten by another type
        };
        let Some(deadline) = key.current().map(|lock| lock.deadline) else {
            continue; // deleted, or renamed away
        };
        if now < deadline {
            // Extended, or re-granted: look again at its current deadline.
            keys::track(entry.db, &entry.key, deadline);
        } else if may_delete {
            // Expired: the first waiter gets it at the deadline.
            key.end(ctx, Ending::Expired);
        } else {
            keys::track(entry.db, &entry.key, now.saturating_add(RECHECK));
        }
    }
}

/// Keyspace events that bring a lock to a key without one of our commands
/// (loading from RDB, RENAME, MOVE, COPY, RESTORE: index the lock there),
/// or take one away (DEL, RENAME, MOVE, a native TTL, eviction: serve the
/// key's waiters).
pub fn on_keyspace_event(ctx: &Context, event: &str, key: &[u8]) {
    let db = ffi::selected_db(ctx);
    // Valkey 8.1 runs this callback on the client executing the command,
    // after selecting the event's database on it, and never selects back
    // (valkey-io/valkey#4024, fixed in Valkey 9): after `move_to` the
    // client would stay on MOVE's destination, its next commands would run
    // there, and the MOVE would reach replicas and the AOF under the wrong
    // SELECT. MOVE fires `move_from` (the source: the client's own
    // database) just before `move_to`, so select that back afterwards. On
    // servers that use a temporary client, or restore the database
    // themselves, this changes nothing.
    if event == "move_from" {
        MOVED_FROM.with(|m| m.set(Some(db)));
    }
    index_or_serve(ctx, event, key, db);
    if event == "move_to" {
        if let Some(source) = MOVED_FROM.with(std::cell::Cell::take) {
            if source != db {
                ffi::select_db(ctx, source);
            }
        }
    }
}

thread_local! {
    /// The database of the last `move_from`, until its `move_to`.
    static MOVED_FROM: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

fn index_or_serve(ctx: &Context, event: &str, key: &[u8], db: i32) {
    if matches!(
        event,
        "del" | "rename_from" | "move_from" | "expired" | "evicted"
    ) {
        // The key went away under its waiters: serve them.
        kick(ctx, db, key);
        return;
    }
    if !matches!(
        event,
        "loaded" | "rename_to" | "move_to" | "copy_to" | "restore"
    ) {
        return;
    }
    let name = RedisString::create_from_slice(ctx.get_raw(), key);
    let deadline = match ctx.open_key(&name).get_value::<Lock>(&LOCK_TYPE) {
        Ok(Some(lock)) => lock.deadline,
        _ => return,
    };
    keys::track(db, key, deadline);
    arm(ctx);
}

/// `SWAPDB`: keep the index pointing at the right databases. Waiters stay
/// with the database they waited in, as Redis's own blocked clients do;
/// both databases have new contents, so their queues are served again.
pub fn on_swapdb(ctx: &Context, a: i32, b: i32) {
    state::with(|n| n.index.swap_db(a, b));
    kick_db(ctx, a);
    kick_db(ctx, b);
}

/// `FLUSHDB` / `FLUSHALL`: forget the emptied databases' entries now rather
/// than when they come due.
pub fn on_flush(ctx: &Context, db: i32) {
    state::with(|n| n.index.forget_db(db));
    kick_db(ctx, db);
}

/// How long a deferred hand-over waits before it looks again whether the
/// server accepts writes (a pause ends, a loading finishes).
const RETRY_MS: u64 = 10;

/// A key with waiters was deleted, moved, expired or evicted behind the
/// module's back: serve its queue on the next event-loop turn (not inside
/// the notification, where a write would join the operator's command).
fn kick(ctx: &Context, db: i32, key: &[u8]) {
    if waiters::waiting(db, key) > 0 {
        ctx.create_timer(Duration::ZERO, on_kick, (db, key.to_vec()));
    }
}

/// FLUSHDB/FLUSHALL/SWAPDB: every queue of the changed databases.
fn kick_db(ctx: &Context, db: i32) {
    for (db, key) in waiters::keys_in(db) {
        ctx.create_timer(Duration::ZERO, on_kick, (db, key));
    }
}

fn on_kick(ctx: &Context, (db, key): (i32, Vec<u8>)) {
    ffi::guard((), || {
        if waiters::waiting(db, &key) == 0 {
            return;
        }
        match write_gate(ctx) {
            Gate::Open => {
                let name = RedisString::create_from_slice(ctx.get_raw(), key.as_slice());
                keys::serve_if_free(ctx, db, name);
                arm(ctx);
            }
            // Paused or loading: look again shortly (the queue keeps its order).
            Gate::Later => {
                ctx.create_timer(Duration::from_millis(RETRY_MS), on_kick, (db, key));
            }
            // A replica grants nothing; its waiters left when it was demoted.
            Gate::Never => {}
        }
    });
}
