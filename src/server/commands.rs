//! One thin function per command: parse, open the key, call the state
//! machine, apply its change (store, signal, replicate, index), reply.

use crate::ffi::{self, Request};
use crate::pure::args::{self, ArgError};
use crate::pure::codec;
use crate::pure::lock::{
    self, AcquireRequest, Acquired, Admission, Extended, Lock, Micros, Released,
};
use crate::pure::{clock, rejoin};
use crate::server::datatype::LOCK_TYPE;
use crate::server::keys::{self, LockKey};
use crate::server::stats::{self, bump};
use crate::server::{state, sweeper, waiters};
use redis_module::redisvalue::RedisValueKey;
use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisValue};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// `lock.max-ttl-ms`: the longest lease a client may ask for.
pub static MAX_TTL_MS: AtomicI64 = AtomicI64::new(crate::pure::settings::MAX_TTL_MS.default);

/// `lock.max-hold-ms`: the longest a grant may be held, extensions
/// included, unless `MAXHOLD` asks for less. 0: no bound.
pub static MAX_HOLD_MS: AtomicI64 = AtomicI64::new(0);

/// `lock.max-waiters`: clients that may wait on one lock at once; a `WAIT`
/// beyond it is a single try. 0: none may wait.
pub static MAX_WAITERS: AtomicI64 = AtomicI64::new(10_000);

/// `lock.rejoin-delay-ms`: refuse new grants for this long after start-up
/// (-1: `lock.max-ttl-ms` unless the AOF was on at load; see `rejoin.rs`).
pub static REJOIN_DELAY_MS: AtomicI64 = AtomicI64::new(rejoin::AUTO);

/// `lock.promotion-delay-ms`: refuse new grants for this long after this
/// node is promoted from replica to primary (0: off, -1: `lock.max-ttl-ms`).
pub static PROMOTION_DELAY_MS: AtomicI64 = AtomicI64::new(0);

/// When this node was last promoted to primary (`clock::now()`), 0 if never.
static PROMOTED_AT: AtomicU64 = AtomicU64::new(0);

/// Whether `appendonly` was `yes` when the module was loaded.
static DURABLE_AT_LOAD: AtomicBool = AtomicBool::new(false);

/// Whether the start-up load brought the module's state back.
static STATE_LOADED: AtomicBool = AtomicBool::new(false);

/// Open from the module's load until the server's event loop first runs,
/// which is after it has loaded its data from disk: only that load counts
/// as "the node came back with its state" (not a later `DEBUG RELOAD`, a
/// full sync or a `RESTORE`).
static START_LOAD_OPEN: AtomicBool = AtomicBool::new(true);

/// The module's state (its fencing counter, a lock, a `LOCK.LOAD` replayed
/// from the AOF) was read while the server loaded its data at start-up.
pub fn note_state_loaded() {
    if START_LOAD_OPEN.load(Ordering::Relaxed) && ffi::server_loading() {
        STATE_LOADED.store(true, Ordering::Relaxed);
    }
}

fn restart() -> rejoin::Restart {
    rejoin::Restart {
        aof: DURABLE_AT_LOAD.load(Ordering::Relaxed),
        state_loaded: STATE_LOADED.load(Ordering::Relaxed),
    }
}

/// Record at load whether the server keeps its grants in an AOF; once the
/// start-up load is over (the first turn of the event loop), log the delay
/// that applies.
pub fn init_rejoin(ctx: &Context) {
    let text = |v: &RedisValue| match v {
        RedisValue::SimpleString(s) | RedisValue::BulkString(s) => s.clone(),
        RedisValue::SimpleStringStatic(s) => (*s).to_owned(),
        RedisValue::StringBuffer(b) => String::from_utf8_lossy(b).into_owned(),
        RedisValue::BulkRedisString(s) => s.to_string_lossy(),
        _ => String::new(),
    };
    // Anything unexpected counts as "no AOF": the safe side.
    let durable = match ctx.call("CONFIG", &["GET", "appendonly"]) {
        Ok(RedisValue::Array(items)) => items.get(1).is_some_and(|v| text(v) == "yes"),
        _ => false,
    };
    DURABLE_AT_LOAD.store(durable, Ordering::Relaxed);
    ctx.create_timer(std::time::Duration::ZERO, start_load_over, ());
}

fn start_load_over(ctx: &Context, (): ()) {
    ffi::guard((), || {
        START_LOAD_OPEN.store(false, Ordering::Relaxed);
        if let Some(left) =
            rejoin::remaining_ms(rejoin_delay_ms(), clock::since_load_at(clock::now()))
        {
            ctx.log_notice(&format!(
                "lock: delayed rejoin: new grants are refused for another {left} ms \
                 (lock.rejoin-delay-ms; {}); if this node is new, end it with \
                 CONFIG SET lock.rejoin-delay-ms 0",
                restart().reason()
            ));
        }
    });
}

fn rejoin_delay_ms() -> u64 {
    rejoin::delay_ms(
        REJOIN_DELAY_MS.load(Ordering::Relaxed),
        restart(),
        max_ttl_ms(),
    )
}

/// While the delayed rejoin or the promotion delay runs: the refusal for a
/// new grant at `now`.
fn rejoining(now: Micros) -> Option<RedisError> {
    if let Some(left) = rejoin::remaining_ms(rejoin_delay_ms(), clock::since_load_at(now)) {
        return Some(RedisError::String(rejoin::refusal(left)));
    }
    promotion_left_ms(now).map(|left| RedisError::String(rejoin::promotion_refusal(left)))
}

fn promotion_left_ms(now: Micros) -> Option<u64> {
    let promoted_at = PROMOTED_AT.load(Ordering::Relaxed);
    rejoin::promotion_remaining_ms(
        rejoin::promotion_delay_ms(PROMOTION_DELAY_MS.load(Ordering::Relaxed), max_ttl_ms()),
        (promoted_at != 0).then_some(promoted_at),
        now,
    )
}

/// A replica became a primary. Its data may lack the last grants of its
/// old primary, so the promotion delay starts now.
pub fn on_promoted(ctx: &Context) {
    let now = clock::now();
    PROMOTED_AT.store(now, Ordering::Relaxed);
    if let Some(left) = promotion_left_ms(now) {
        ctx.log_notice(&format!(
            "lock: promoted to primary: new grants are refused for {left} ms \
             (lock.promotion-delay-ms)"
        ));
    }
}

fn max_ttl_ms() -> i64 {
    MAX_TTL_MS.load(Ordering::Relaxed)
}

fn limits() -> args::Limits {
    args::Limits {
        max_ttl_ms: max_ttl_ms(),
        max_hold_ms: MAX_HOLD_MS.load(Ordering::Relaxed),
        max_fence: fence_ceiling(),
    }
}

/// A replica grants, extends and releases nothing, whatever
/// `replica-read-only` says: a lock written there would be lost at the next
/// sync, and only the primary sweeps locks and serves waiters.
fn refuse_on_replica(ctx: &Context) -> Result<(), RedisError> {
    if ctx.get_flags().contains(ContextFlags::SLAVE) {
        return Err(RedisError::Str(
            "READONLY lock commands are refused on a replica: send them to the primary",
        ));
    }
    Ok(())
}

/// The largest fencing token a client's request may set (see DESIGN.md,
/// "The counter's headroom").
fn fence_ceiling() -> u64 {
    let wall_micros = ffi::server_wall_ms().saturating_mul(1000);
    state::with(|n| lock::fence_ceiling(n.fences.last(), wall_micros))
}

fn arg_error(e: ArgError) -> RedisError {
    RedisError::String(format!("ERR {}", e.0))
}

fn integer(v: u64) -> RedisValue {
    RedisValue::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Open the request's key for writing; `WRONGTYPE` if it holds something
/// other than a lock.
fn open<'a>(ctx: &Context, req: &Request) -> Result<LockKey<'a>, RedisError> {
    keys::open(ctx, req.key(ctx).ok_or(RedisError::WrongArity)?)
}

/// Apply the state machine's outcome to the key, arm the sweeper for the
/// deadline it may have set, and hand back the reply.
fn apply<R>(
    ctx: &Context,
    key: LockKey,
    out: lock::Outcome<R>,
    now: Micros,
    event: &'static std::ffi::CStr,
) -> Result<R, RedisError> {
    let applied = key.apply(ctx, out.change, out.ended, now, event);
    sweeper::arm(ctx);
    applied.map(|()| out.reply)
}

/// `LOCK.ACQUIRE key token ttl-ms [FENCE floor] [MAXHOLD ms] [WAIT ms]`
pub fn acquire(ctx: &Context, req: &Request) -> RedisResult {
    let parsed = args::acquire(req.args, limits()).map_err(arg_error)?;
    refuse_on_replica(ctx)?;
    // One clock read per command: the request has arrived, so a deadline
    // counted from here is never earlier than the one its sender assumes.
    let now = clock::now();
    // During the delayed rejoin or the promotion delay only the holder of
    // a live lock may refresh it: nothing new is granted, nobody waits, and
    // no ended lock is handed to a waiter.
    let refusal = rejoining(now);
    let admission = if refusal.is_some() {
        Admission::HolderOnly
    } else {
        Admission::Open
    };
    let db = ffi::selected_db(ctx);
    if waiters::total() > 0 && admission == Admission::Open {
        if let Some(name) = req.key(ctx) {
            // Waiters are served first: a lock that has ended goes to the
            // head of its queue before anyone new can take it.
            keys::serve_if_free(ctx, db, name);
        }
    }
    let key = open(ctx, req)?;
    let request = AcquireRequest {
        token: parsed.token,
        ttl: parsed.ttl_ms.saturating_mul(1000),
        fence_floor: parsed.fence_floor,
        max_hold: parsed.max_hold_ms.map(|ms| ms.saturating_mul(1000)),
    };
    let out = state::with(|n| {
        lock::acquire_admitted(key.current(), &request, admission, now, &mut n.fences)
    });
    match apply(ctx, key, out, now, c"lock.acquired")? {
        Acquired::Granted(fence) => {
            bump(&stats::ACQUISITIONS);
            Ok(integer(fence))
        }
        Acquired::Refreshed(fence) => {
            bump(&stats::REACQUISITIONS);
            Ok(integer(fence))
        }
        Acquired::Refused => {
            bump(&stats::REJOIN_REFUSALS);
            Err(refusal.unwrap_or(RedisError::Str("TRYAGAIN lock node refuses new grants")))
        }
        Acquired::Taken => {
            bump(&stats::CONTENDED);
            let Some(timeout) = parsed.wait_ms else {
                return Ok(RedisValue::Null);
            };
            let name = req.key(ctx).ok_or(RedisError::WrongArity)?;
            let limit = usize::try_from(MAX_WAITERS.load(Ordering::Relaxed)).unwrap_or(0);
            if waiters::waiting(db, name.as_slice()) >= limit {
                bump(&stats::WAITS_REFUSED);
                return Ok(RedisValue::Null);
            }
            if !waiters::can_block(ctx) {
                return Ok(RedisValue::Null);
            }
            let key = (db, name.as_slice().to_vec());
            waiters::block(ctx, key, &request, timeout, parsed.ticket)?;
            Ok(RedisValue::NoReply)
        }
        Acquired::HoldLimit => {
            bump(&stats::HOLD_LIMIT_REFUSALS);
            Ok(RedisValue::Null)
        }
        Acquired::FencesExhausted => Err(RedisError::Str(
            "ERR the node's fencing counter is exhausted",
        )),
    }
}

/// `LOCK.EXTEND key token ttl-ms`
pub fn extend(ctx: &Context, req: &Request) -> RedisResult {
    let parsed = args::extend(req.args, max_ttl_ms()).map_err(arg_error)?;
    refuse_on_replica(ctx)?;
    let key = open(ctx, req)?;
    let now = clock::now();
    let ttl = parsed.ttl_ms.saturating_mul(1000);
    let out = lock::extend(key.current(), parsed.token, ttl, now);
    let extended = apply(ctx, key, out, now, c"lock.extended")?;
    bump(match extended {
        Extended::Extended => &stats::EXTENSIONS,
        Extended::HoldLimit => &stats::HOLD_LIMIT_REFUSALS,
        Extended::NotHeld => &stats::EXTENSIONS_REFUSED,
    });
    Ok(RedisValue::Integer(extended.code()))
}

/// `LOCK.RELEASE key token`
pub fn release(ctx: &Context, req: &Request) -> RedisResult {
    let parsed = args::release(req.args).map_err(arg_error)?;
    refuse_on_replica(ctx)?;
    if waiters::total() > 0 {
        if let Some(name) = req.key(ctx) {
            // The token's own waits end first: a hand-over below must not
            // go to the client that is giving the lock up.
            let db = ffi::selected_db(ctx);
            if waiters::cancel(ctx, db, name.as_slice(), parsed.token) > 0 {
                bump(&stats::WAITS_CANCELLED);
            }
        }
    }
    let key = open(ctx, req)?;
    let now = clock::now();
    let out = lock::release(key.current(), parsed.token, now);
    let released = apply(ctx, key, out, now, c"lock.released")?;
    match released {
        Released::Freed => bump(&stats::RELEASES),
        Released::HeldByAnother => bump(&stats::RELEASES_WRONG_TOKEN),
        Released::NotHeld => {}
    }
    Ok(RedisValue::Integer(i64::from(released.freed())))
}

/// `LOCK.INFO key`: read-only, so an ended lock that is still stored shows
/// as free but is left for the sweeper.
pub fn info(ctx: &Context, req: &Request) -> RedisResult {
    args::info(req.args).map_err(arg_error)?;
    let name = req.key(ctx).ok_or(RedisError::WrongArity)?;
    let key = ctx.open_key(&name);
    let current = key
        .get_value::<Lock>(&LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)?;
    let Some(view) = lock::view(current, clock::now()) else {
        return Ok(RedisValue::Null);
    };
    let mut fields = BTreeMap::from([
        (RedisValueKey::String("ttl".into()), integer(view.ttl_ms)),
        (RedisValueKey::String("fence".into()), integer(view.fence)),
        (
            RedisValueKey::String("acquired".into()),
            integer(view.acquired_ms),
        ),
        (
            RedisValueKey::String("extensions".into()),
            integer(view.extensions),
        ),
        (
            RedisValueKey::String("owner".into()),
            RedisValue::BulkString(view.owner),
        ),
    ]);
    let waiting = waiters::waiting(ffi::selected_db(ctx), name.as_slice());
    fields.insert(
        RedisValueKey::String("waiters".into()),
        integer(waiting as u64),
    );
    if let Some(left) = view.hold_left_ms {
        fields.insert(RedisValueKey::String("maxhold".into()), integer(left));
    }
    Ok(RedisValue::OrderedMap(fields))
}

/// `LOCK.LOAD key payload`: store a lock exactly as encoded. This is how the
/// module's effects reach replicas and the AOF; it is not for applications.
pub fn load(ctx: &Context, req: &Request) -> RedisResult {
    let payload = args::load(req.args).map_err(arg_error)?;
    let replay = ffi::is_replay(ctx);
    if !replay {
        // From a user, not from the primary's stream or the AOF.
        refuse_on_replica(ctx)?;
    }
    let now = clock::now();
    let lock = codec::decode(payload, now)
        .map_err(|e| RedisError::String(format!("ERR invalid LOCK.LOAD payload: {e}")))?;
    if !replay {
        args::loaded_fence(lock.fence, fence_ceiling()).map_err(arg_error)?;
    }
    let key = open(ctx, req)?;
    state::with(|n| n.fences.observe(lock.fence));
    if replay {
        note_state_loaded();
    }
    key.store(ctx, lock, now)?;
    sweeper::arm(ctx);
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// `INFO lock`. (The plain field calls are marked deprecated in favour of a
/// builder that allocates per field; they are what the builder calls.)
#[allow(deprecated)]
pub fn info_section(ctx: &redis_module::InfoContext) {
    if ctx.add_info_section(None) != redis_module::Status::Ok {
        return;
    }
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ctx.add_info_field_str("version", crate::pure::version::VERSION);
    ctx.add_info_field_long_long("locks", stats::LOCKS.load(Ordering::Relaxed));
    for (name, value) in stats::counters() {
        ctx.add_info_field_long_long(&name.to_ascii_lowercase(), int(value));
    }
    let (fence, indexed) = state::with(|n| (n.fences.last(), n.index.len()));
    ctx.add_info_field_long_long("fence_counter", int(fence));
    ctx.add_info_field_long_long("expiry_index_entries", int(indexed as u64));
    ctx.add_info_field_long_long("waiters", int(waiters::total() as u64));
    let now = clock::now();
    let rejoin_left =
        rejoin::remaining_ms(rejoin_delay_ms(), clock::since_load_at(now)).unwrap_or(0);
    ctx.add_info_field_long_long("rejoin_delay_left_ms", int(rejoin_left));
    ctx.add_info_field_str("rejoin_restart", restart().reason());
    let promotion_left = promotion_left_ms(now).unwrap_or(0);
    ctx.add_info_field_long_long("promotion_delay_left_ms", int(promotion_left));
}
