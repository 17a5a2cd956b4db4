//! Server-side waiting: `LOCK.ACQUIRE ... WAIT ms` blocks the client (not the
//! server) in a FIFO queue per key, and the lock is handed to the head of
//! the queue the moment it is freed: in the same command when released, by
//! the sweeper's timer at the deadline when it expires, and on the next
//! event-loop turn when an operator deletes, moves, swaps or expires the key.
//!
//! The module runs the `WAIT` timeout itself (a module timer per waiter),
//! and registers no Redis timeout callback. On Redis 7.0 a client's Redis
//! timeout can be processed after the module unblocked it in the same
//! event-loop turn: the reply is then lost, and a lock handed over in that
//! turn would be held by a client that never hears of it. With the timeout
//! in the module, every waiter leaves the queue exactly once, by one of a
//! grant, its timer or its disconnection, and every way out releases the
//! blocked-client handle. (So `CLIENT UNBLOCK` does not end a lock wait: it
//! replies 0, as for any module command without a timeout callback.)

use crate::ffi;
use crate::pure::clock;
use crate::pure::lock::{self, AcquireRequest, Acquired, Change, Micros};
use crate::pure::queue::{KeyId, WaitQueues};
use crate::server::stats::{self, bump};
use crate::server::{commands, state};
use redis_module::key::RedisKeyWritable;
use redis_module::{raw, Context, RedisError, RedisString};
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What a queued client asked for.
pub struct Waiter {
    bc: BlockedClient,
    token: Box<[u8]>,
    ttl: Micros,
    fence_floor: u64,
    max_hold: Option<Micros>,
    /// The module timer that ends the wait (none for `WAIT 0`).
    timer: Option<u64>,
}

/// A blocked-client handle. Only touched on Redis's main thread.
struct BlockedClient(*mut raw::RedisModuleBlockedClient);
// SAFETY: the handle is created, used and released on the main thread only;
// the mutex below exists to make the static sound, not for other threads.
unsafe impl Send for BlockedClient {}

impl BlockedClient {
    /// Wake the client with a fencing token (granted) or nil, and release
    /// the handle. Consumes the handle: it is never used again.
    fn unblock(self, fence: Option<u64>) {
        let privdata = fence.map_or(std::ptr::null_mut(), |fence| {
            Box::into_raw(Box::new(fence)).cast()
        });
        // SAFETY: the handle is still blocked (it was in a queue, and leaves
        // the queue exactly once); the reply callback reads the box and the
        // free callback frees it.
        unsafe {
            if let Some(f) = raw::RedisModule_UnblockClient {
                f(self.0, privdata);
            }
        }
    }
}

#[derive(Default)]
struct State {
    queues: WaitQueues<Waiter>,
    /// Blocked-client handle -> waiter id, for the timeout and disconnect callbacks.
    ids: HashMap<usize, u64>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

impl State {
    /// Take a waiter out of its queue and of the handle map; the one way a
    /// waiter leaves (grant, timeout, disconnect), so it leaves once.
    fn take(&mut self, waiter: Option<Waiter>) -> Option<Waiter> {
        if let Some(w) = &waiter {
            self.ids.remove(&(w.bc.0 as usize));
        }
        update_total(self);
        waiter
    }
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(State::default))
}

/// Clients waiting on any key: lets the hot path skip the queue lookup
/// (which hashes and copies the key) when nobody waits, the common case.
static TOTAL: AtomicUsize = AtomicUsize::new(0);

fn update_total(s: &State) {
    TOTAL.store(s.queues.total(), Ordering::Relaxed);
}

pub fn waiting(db: i32, key: &[u8]) -> usize {
    if TOTAL.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    with(|s| s.queues.len(&(db, key.to_vec())))
}

pub fn total() -> usize {
    TOTAL.load(Ordering::Relaxed)
}

/// The wall clock (us) when the module loaded, and the monotonic clock then.
static CLOCK_BASE: Mutex<(u64, Micros)> = Mutex::new((0, 0));

/// Fix the base of arrival tickets; called once at load.
pub fn init_clock(wall_micros: u64) {
    let mut base = CLOCK_BASE.lock().unwrap_or_else(|p| p.into_inner());
    *base = (wall_micros, clock::now());
}

/// The ticket of a waiter without `TICKET`: the node's wall-clock time of
/// arrival in microseconds, advanced by the monotonic clock, so it never
/// goes backwards (FIFO holds through clock steps) and it interleaves by
/// time with the clients' own tickets.
fn arrival_ticket() -> u64 {
    let (wall, mono) = *CLOCK_BASE.lock().unwrap_or_else(|p| p.into_inner());
    wall.saturating_add(clock::now().saturating_sub(mono))
}

/// Whether the current client may block: not inside MULTI, a script, or
/// anything else that denies blocking. There `WAIT` is a single try.
pub fn can_block(ctx: &Context) -> bool {
    // SAFETY: a valid context.
    let flags = unsafe { raw::RedisModule_GetContextFlags.map_or(0, |f| f(ctx.get_raw())) };
    let deny = raw::REDISMODULE_CTX_FLAGS_MULTI
        | raw::REDISMODULE_CTX_FLAGS_LUA
        | raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING;
    (flags as u32) & deny == 0
}

/// Block the calling client in the queue of `key`.
pub fn block(
    ctx: &Context,
    key: KeyId,
    req: &AcquireRequest,
    timeout_ms: u64,
    ticket: Option<u64>,
) -> Result<(), RedisError> {
    let ticket = ticket.unwrap_or_else(arrival_ticket);
    // SAFETY: a command context; the callbacks have the signatures Redis
    // calls. No Redis timeout and no timeout callback: the module's own
    // timer ends the wait (see the module documentation above).
    let bc = unsafe {
        raw::RedisModule_BlockClient.map_or(std::ptr::null_mut(), |f| {
            f(ctx.get_raw(), Some(reply_cb), None, Some(free_cb), 0)
        })
    };
    if bc.is_null() {
        return Err(RedisError::Str("ERR this client cannot block"));
    }
    let waiter = Waiter {
        bc: BlockedClient(bc),
        token: req.token.into(),
        ttl: req.ttl,
        fence_floor: req.fence_floor,
        max_hold: req.max_hold,
        timer: None,
    };
    let id = with(|s| {
        let id = s.queues.push(key, ticket, waiter);
        s.ids.insert(bc as usize, id);
        update_total(s);
        id
    });
    if timeout_ms > 0 {
        let timer = ffi::start_timer(ctx, timeout_ms, wait_timeout_cb, id);
        with(|s| {
            if let Some(w) = s.queues.get_mut(id) {
                w.timer = Some(timer);
            }
        });
    }
    // SAFETY: a handle just returned by BlockClient.
    unsafe {
        if let Some(f) = raw::RedisModule_SetDisconnectCallback {
            f(bc, Some(disconnect_cb));
        }
    }
    Ok(())
}

/// The lock in `key` (open for writing) is free: grant it to the first
/// waiter in line, if any, and wake that client with its fencing token.
pub fn hand_over(ctx: &Context, db: i32, name: &RedisString, key: &RedisKeyWritable) {
    let id: KeyId = (db, name.as_slice().to_vec());
    let Some(waiter) = with(|s| {
        let next = s.queues.pop_front(&id).map(|(_, w)| w);
        s.take(next)
    }) else {
        return;
    };
    if let Some(timer) = waiter.timer {
        ffi::stop_timer(ctx, timer);
    }
    let now = clock::now();
    let req = AcquireRequest {
        token: &waiter.token,
        ttl: waiter.ttl,
        fence_floor: waiter.fence_floor,
        max_hold: waiter.max_hold,
    };
    let out = state::with(|n| lock::acquire(None, &req, now, &mut n.fences));
    let reply = match (out.reply, out.change) {
        (Acquired::Granted(fence), Change::Put(lock)) => {
            match commands::put_new(ctx, name, key, lock, now) {
                Ok(()) => {
                    bump(&stats::ACQUISITIONS);
                    bump(&stats::HANDOVERS);
                    ffi::notify(ctx, c"lock.acquired", name);
                    Some(fence)
                }
                Err(_) => None,
            }
        }
        _ => None,
    };
    waiter.bc.unblock(reply);
}

/// If the lock in `key` of `db` is free (or has ended) and clients wait for
/// it, hand it over now.
pub fn serve_if_free(ctx: &Context, db: i32, name: &RedisString) {
    if waiting(db, name.as_slice()) == 0 || !ffi::select_db(ctx, db) {
        return;
    }
    let key = ctx.open_key_writable(name);
    let Ok(current) = key.get_value::<lock::Lock>(&crate::server::datatype::LOCK_TYPE) else {
        return; // another type now: leave the waiters to time out
    };
    let now = clock::now();
    match current {
        Some(lock) if lock.is_live(now) => {}
        Some(_) => {
            crate::server::sweeper::remove(ctx, &key, name);
            bump(&stats::EXPIRED);
            ffi::notify(ctx, c"lock.expired", name);
            hand_over(ctx, db, name, &key);
        }
        None => hand_over(ctx, db, name, &key),
    }
}

/// How long a deferred hand-over waits before it looks again whether the
/// server accepts writes (a pause ends, a loading finishes).
const RETRY_MS: u64 = 10;

/// A key with waiters was deleted, moved, expired or evicted behind the
/// module's back: serve its queue on the next event-loop turn (not inside
/// the notification, where a write would join the operator's command).
pub fn kick(ctx: &Context, db: i32, key: &[u8]) {
    if waiting(db, key) > 0 {
        ctx.create_timer(Duration::ZERO, on_kick, (db, key.to_vec()));
    }
}

/// FLUSHDB/FLUSHALL/SWAPDB: every queue of the changed databases.
pub fn kick_db(ctx: &Context, db: i32) {
    for (db, key) in with(|s| s.queues.keys_in(db)) {
        ctx.create_timer(Duration::ZERO, on_kick, (db, key));
    }
}

fn on_kick(ctx: &Context, (db, key): (i32, Vec<u8>)) {
    ffi::guard((), || {
        if waiting(db, &key) == 0 {
            return;
        }
        match crate::server::sweeper::write_gate(ctx) {
            crate::server::sweeper::Gate::Open => {
                let name = RedisString::create_from_slice(ctx.get_raw(), key.as_slice());
                serve_if_free(ctx, db, &name);
            }
            // Paused or loading: look again shortly (the queue keeps its order).
            crate::server::sweeper::Gate::Later => {
                ctx.create_timer(Duration::from_millis(RETRY_MS), on_kick, (db, key));
            }
            // A replica grants nothing; its waiters left when it was demoted.
            crate::server::sweeper::Gate::Never => {}
        }
    });
}

unsafe extern "C" fn reply_cb(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    ffi::guard(raw::REDISMODULE_OK as c_int, || {
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

/// The wait ran out: leave the queue and reply nil (no trace left behind).
/// If a grant or a disconnection took the waiter out first, nothing to do.
unsafe extern "C" fn wait_timeout_cb(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    ffi::guard((), || {
        // The timer's data is the waiter's id (see `ffi::start_timer`).
        let id = data as usize as u64;
        let waiter = with(|s| {
            let waiter = s.queues.remove(id);
            s.take(waiter)
        });
        if let Some(waiter) = waiter {
            bump(&stats::WAIT_TIMEOUTS);
            waiter.bc.unblock(None);
        }
    });
}

unsafe extern "C" fn free_cb(_ctx: *mut raw::RedisModuleCtx, privdata: *mut c_void) {
    ffi::guard((), || {
        if !privdata.is_null() {
            // SAFETY: created by Box::into_raw in `BlockedClient::unblock`.
            drop(unsafe { Box::from_raw(privdata.cast::<u64>()) });
        }
    });
}

/// The waiting client went away (disconnected, killed, or force-unblocked
/// when this node became a replica): take it out of its queue, stop its
/// timer and release the handle, so the next waiter is served instead.
unsafe extern "C" fn disconnect_cb(
    ctx: *mut raw::RedisModuleCtx,
    bc: *mut raw::RedisModuleBlockedClient,
) {
    ffi::guard((), || {
        let waiter = with(|s| {
            let waiter = s
                .ids
                .remove(&(bc as usize))
                .and_then(|id| s.queues.remove(id));
            s.take(waiter)
        });
        if let Some(waiter) = waiter {
            if let Some(timer) = waiter.timer {
                ffi::stop_timer(&Context::new(ctx), timer);
            }
            waiter.bc.unblock(None);
        }
    });
}
