//! Server-side waiting: `LOCK.ACQUIRE ... WAIT ms` blocks the client (not the
//! server) in a queue per key, ordered by ticket (arrival time unless the
//! client gives its own), and the lock is handed to the head of
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

use crate::ffi::blocked::{BlockedClient, ClientId};
use crate::pure::clock;
use crate::pure::lock::{AcquireRequest, Micros};
use crate::pure::queue::{KeyId, WaitQueues};
use crate::server::stats::{self, bump};
use redis_module::{Context, ContextFlags, RedisError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A queued client and the request it was parsed into.
pub struct Waiter {
    client: BlockedClient,
    request: AcquireRequest<Box<[u8]>>,
    /// The module timer that ends the wait (none for `WAIT 0`).
    timer: Option<u64>,
}

impl Waiter {
    /// What the client asked for.
    pub fn request(&self) -> &AcquireRequest<Box<[u8]>> {
        &self.request
    }

    /// Wake the client with its fencing token (granted) or nil.
    pub fn wake(self, fence: Option<u64>) {
        self.client.unblock(fence);
    }
}

#[derive(Default)]
struct State {
    queues: WaitQueues<Waiter>,
    /// Blocked client -> waiter id, for the disconnect callback.
    ids: HashMap<ClientId, u64>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

impl State {
    /// Take a waiter out of its queue and of the handle map; the one way a
    /// waiter leaves (grant, timeout, disconnect), so it leaves once.
    fn take(&mut self, waiter: Option<Waiter>) -> Option<Waiter> {
        if let Some(w) = &waiter {
            self.ids.remove(&w.client.id());
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
    let deny = ContextFlags::MULTI | ContextFlags::LUA | ContextFlags::DENY_BLOCKING;
    !ctx.get_flags().intersects(deny)
}

/// Block the calling client in the queue of `key`, keeping its request.
pub fn block(
    ctx: &Context,
    key: KeyId,
    request: &AcquireRequest<&[u8]>,
    timeout_ms: u64,
    ticket: Option<u64>,
) -> Result<(), RedisError> {
    // A ticket from the future orders like one from now: a client whose
    // clock runs ahead waits its turn instead of behind everyone who comes
    // later (DESIGN.md, "Order across nodes").
    let arrival = arrival_ticket();
    let ticket = ticket.map_or(arrival, |t| t.min(arrival));
    let client =
        BlockedClient::block(ctx).ok_or(RedisError::Str("ERR this client cannot block"))?;
    let client_id = client.id();
    let waiter = Waiter {
        client,
        request: request.to_owned(),
        timer: None,
    };
    let id = with(|s| {
        let id = s.queues.push(key, ticket, waiter);
        s.ids.insert(client_id, id);
        update_total(s);
        id
    });
    if timeout_ms > 0 {
        let timer = ctx.create_timer(Duration::from_millis(timeout_ms), on_wait_timeout, id);
        with(|s| {
            if let Some(w) = s.queues.get_mut(id) {
                w.timer = Some(timer);
            }
        });
    }
    Ok(())
}

/// Take the first waiter in line for `key` of `db` out of its queue (its
/// timer stopped), to be granted the lock or woken.
pub fn next(ctx: &Context, db: i32, key: &[u8]) -> Option<Waiter> {
    if TOTAL.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let id: KeyId = (db, key.to_vec());
    let waiter = with(|s| {
        let next = s.queues.pop_front(&id).map(|(_, w)| w);
        s.take(next)
    })?;
    stop_timer(ctx, &waiter);
    Some(waiter)
}

/// `LOCK.RELEASE` by `token`: every wait of that token on `key` of `db`
/// ends, replying nil, so a client that gives up on an acquisition leaves
/// nothing queued behind (and its waiting connections get their reply).
pub fn cancel(ctx: &Context, db: i32, key: &[u8], token: &[u8]) -> usize {
    if TOTAL.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    let id: KeyId = (db, key.to_vec());
    let gone = with(|s| {
        let gone = s
            .queues
            .remove_where(&id, |w| w.request.token.as_ref() == token);
        for w in &gone {
            s.ids.remove(&w.client.id());
        }
        update_total(s);
        gone
    });
    let n = gone.len();
    for waiter in gone {
        stop_timer(ctx, &waiter);
        waiter.wake(None);
    }
    n
}

/// The keys that have waiters in `db` (-1: every database).
pub fn keys_in(db: i32) -> Vec<KeyId> {
    with(|s| s.queues.keys_in(db))
}

fn stop_timer(ctx: &Context, waiter: &Waiter) {
    if let Some(timer) = waiter.timer {
        // Harmless if it already fired; its data is an integer.
        let _ = ctx.stop_timer::<u64>(timer);
    }
}

/// The wait ran out: leave the queue and reply nil (no trace left behind).
/// If a grant or a disconnection took the waiter out first, nothing to do.
fn on_wait_timeout(_ctx: &Context, id: u64) {
    crate::ffi::guard((), || {
        let waiter = with(|s| {
            let waiter = s.queues.remove(id);
            s.take(waiter)
        });
        if let Some(waiter) = waiter {
            bump(&stats::WAIT_TIMEOUTS);
            waiter.wake(None);
        }
    });
}

/// The waiting client went away (disconnected, killed, or force-unblocked
/// when this node became a replica): take it out of its queue, stop its
/// timer and release the handle, so the next waiter is served instead.
pub fn disconnected(ctx: &Context, client: ClientId) {
    let waiter = with(|s| {
        let waiter = s.ids.remove(&client).and_then(|id| s.queues.remove(id));
        s.take(waiter)
    });
    if let Some(waiter) = waiter {
        stop_timer(ctx, &waiter);
        waiter.wake(None);
    }
}
