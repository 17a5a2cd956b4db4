//! One thin function per command: parse, open the key, call the state
//! machine, apply its change (store, signal, replicate, index), reply.

use crate::args::{self, ArgError};
use crate::codec;
use crate::datatype::LOCK_TYPE;
use crate::ffi::{self, Request};
use crate::lock::{self, Acquired, Change, Lock, Micros};
use crate::{clock, node, sweeper};
use redis_module::key::RedisKeyWritable;
use redis_module::redisvalue::RedisValueKey;
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

/// `lock.max-ttl-ms`: the longest lease a client may ask for.
pub static MAX_TTL_MS: AtomicI64 = AtomicI64::new(86_400_000);

fn max_ttl_ms() -> i64 {
    MAX_TTL_MS.load(Ordering::Relaxed)
}

fn arg_error(e: ArgError) -> RedisError {
    RedisError::String(format!("ERR {}", e.0))
}

fn integer(v: u64) -> RedisValue {
    RedisValue::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

/// An open lock key: its name, the key, and the lock stored in it.
struct Slot<'a> {
    name: RedisString,
    key: RedisKeyWritable,
    lock: Option<&'a mut Lock>,
}

/// Open the request's key for writing; `WRONGTYPE` if it holds something
/// other than a lock.
fn open<'a>(ctx: &Context, req: &Request) -> Result<Slot<'a>, RedisError> {
    let name = req.key(ctx).ok_or(RedisError::WrongArity)?;
    let key = ctx.open_key_writable(&name);
    let lock = key
        .get_value::<Lock>(&LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)?;
    Ok(Slot { name, key, lock })
}

impl Slot<'_> {
    fn current(&self) -> Option<&Lock> {
        self.lock.as_deref()
    }

    /// Apply a state-machine change and replicate its effect: `LOCK.LOAD`
    /// with the encoded lock (time left, so a replica or an AOF replay ends
    /// with a deadline that is never earlier), or `DEL`.
    fn apply(self, ctx: &Context, change: Change, now: Micros) -> Result<(), RedisError> {
        match change {
            Change::Keep => Ok(()),
            Change::Put(lock) => store(ctx, self, lock, now),
            Change::Remove => {
                sweeper::remove(ctx, &self.key, &self.name);
                Ok(())
            }
        }
    }
}

fn store(ctx: &Context, slot: Slot, lock: Lock, now: Micros) -> Result<(), RedisError> {
    let payload = codec::encode(&lock, now);
    let deadline = lock.deadline;
    match slot.lock {
        Some(stored) => *stored = lock,
        None => slot
            .key
            .set_value(&LOCK_TYPE, lock)
            .map_err(|_| RedisError::WrongType)?,
    }
    ffi::signal_modified(ctx, &slot.name);
    ffi::replicate_load(ctx, &slot.name, &payload);
    sweeper::track(ctx, ffi::selected_db(ctx), slot.name.as_slice(), deadline);
    Ok(())
}

/// `LOCK.ACQUIRE key token ttl-ms`
pub fn acquire(ctx: &Context, req: &Request) -> RedisResult {
    let parsed = args::acquire(req.args, max_ttl_ms()).map_err(arg_error)?;
    let slot = open(ctx, req)?;
    let now = clock::now();
    let ttl = parsed.ttl_ms.saturating_mul(1000);
    let out = node::with(|n| lock::acquire(slot.current(), parsed.token, ttl, now, &mut n.fences));
    slot.apply(ctx, out.change, now)?;
    match out.reply {
        Acquired::Granted(fence) => Ok(integer(fence)),
        Acquired::Taken => Ok(RedisValue::Null),
        Acquired::FencesExhausted => Err(RedisError::Str(
            "ERR the node's fencing counter is exhausted",
        )),
    }
}

/// `LOCK.EXTEND key token ttl-ms`
pub fn extend(ctx: &Context, req: &Request) -> RedisResult {
    let parsed = args::extend(req.args, max_ttl_ms()).map_err(arg_error)?;
    let slot = open(ctx, req)?;
    let now = clock::now();
    let out = lock::extend(
        slot.current(),
        parsed.token,
        parsed.ttl_ms.saturating_mul(1000),
        now,
    );
    slot.apply(ctx, out.change, now)?;
    Ok(RedisValue::Integer(i64::from(out.reply)))
}

/// `LOCK.RELEASE key token`
pub fn release(ctx: &Context, req: &Request) -> RedisResult {
    let parsed = args::release(req.args).map_err(arg_error)?;
    let slot = open(ctx, req)?;
    let now = clock::now();
    let out = lock::release(slot.current(), parsed.token, now);
    slot.apply(ctx, out.change, now)?;
    Ok(RedisValue::Integer(i64::from(out.reply)))
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
    let fields = BTreeMap::from([
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
    Ok(RedisValue::OrderedMap(fields))
}

/// `LOCK.LOAD key payload`: store a lock exactly as encoded. This is how the
/// module's effects reach replicas and the AOF; it is not for applications.
pub fn load(ctx: &Context, req: &Request) -> RedisResult {
    let payload = args::load(req.args).map_err(arg_error)?;
    let now = clock::now();
    let lock = codec::decode(payload, now)
        .map_err(|e| RedisError::String(format!("ERR invalid LOCK.LOAD payload: {e}")))?;
    let slot = open(ctx, req)?;
    node::with(|n| n.fences.observe(lock.fence));
    store(ctx, slot, lock, now)?;
    Ok(RedisValue::SimpleStringStatic("OK"))
}
