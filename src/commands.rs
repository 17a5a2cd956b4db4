//! One thin function per command: parse, open the key, call the state
//! machine, apply its change (store, replicate, index), reply.

use crate::args::{self, ArgError};
use crate::codec;
use crate::datatype::LOCK_TYPE;
use crate::lock::{self, Acquired, Change, Lock, Micros};
use crate::{clock, ffi, node, sweeper};
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

fn slices(args: &[RedisString]) -> Vec<&[u8]> {
    args.iter().map(RedisString::as_slice).collect()
}

fn key_name(args: &[RedisString]) -> Result<&RedisString, RedisError> {
    args.get(1).ok_or(RedisError::WrongArity)
}

fn ttl_micros(ttl_ms: u64) -> Micros {
    ttl_ms.saturating_mul(1000)
}

/// The lock stored in `key`, `None` if the key is empty, `WRONGTYPE` if it
/// holds something else.
fn stored(key: &RedisKeyWritable) -> Result<Option<Lock>, RedisError> {
    match key.get_value::<Lock>(&LOCK_TYPE) {
        Ok(lock) => Ok(lock.cloned()),
        Err(_) => Err(RedisError::WrongType),
    }
}

/// Apply a state-machine change to the key and replicate its effect:
/// `LOCK.LOAD` with the encoded lock (a relative deadline, so a replica or an
/// AOF replay ends up with a deadline that is never earlier), or `DEL`.
fn apply(
    ctx: &Context,
    key: &RedisKeyWritable,
    name: &RedisString,
    change: Change,
    now: Micros,
) -> Result<(), RedisError> {
    match change {
        Change::Keep => Ok(()),
        Change::Put(lock) => put(ctx, key, name, lock, now),
        Change::Remove => {
            sweeper::remove(ctx, key, name);
            Ok(())
        }
    }
}

fn put(
    ctx: &Context,
    key: &RedisKeyWritable,
    name: &RedisString,
    lock: Lock,
    now: Micros,
) -> Result<(), RedisError> {
    let payload = codec::encode(&lock, now);
    let deadline = lock.deadline;
    key.set_value(&LOCK_TYPE, lock)
        .map_err(|_| RedisError::WrongType)?;
    ctx.replicate("LOCK.LOAD", &[name.as_slice(), payload.as_slice()]);
    sweeper::track(ctx, ffi::selected_db(ctx), name.as_slice(), deadline);
    Ok(())
}

/// `LOCK.ACQUIRE key token ttl-ms`
pub fn acquire(ctx: &Context, args: &[RedisString]) -> RedisResult {
    let req = args::acquire(&slices(args), max_ttl_ms()).map_err(arg_error)?;
    let name = key_name(args)?;
    let key = ctx.open_key_writable(name);
    let current = stored(&key)?;
    let now = clock::now();
    let out = node::with(|n| {
        lock::acquire(
            current.as_ref(),
            req.token,
            ttl_micros(req.ttl_ms),
            now,
            &mut n.fences,
        )
    });
    apply(ctx, &key, name, out.change, now)?;
    match out.reply {
        Acquired::Granted(fence) => Ok(RedisValue::Integer(
            i64::try_from(fence).unwrap_or(i64::MAX),
        )),
        Acquired::Taken => Ok(RedisValue::Null),
        Acquired::FencesExhausted => Err(RedisError::Str(
            "ERR the node's fencing counter is exhausted",
        )),
    }
}

/// `LOCK.EXTEND key token ttl-ms`
pub fn extend(ctx: &Context, args: &[RedisString]) -> RedisResult {
    let req = args::extend(&slices(args), max_ttl_ms()).map_err(arg_error)?;
    let name = key_name(args)?;
    let key = ctx.open_key_writable(name);
    let current = stored(&key)?;
    let now = clock::now();
    let out = lock::extend(current.as_ref(), req.token, ttl_micros(req.ttl_ms), now);
    apply(ctx, &key, name, out.change, now)?;
    Ok(RedisValue::Integer(i64::from(out.reply)))
}

/// `LOCK.RELEASE key token`
pub fn release(ctx: &Context, args: &[RedisString]) -> RedisResult {
    let req = args::release(&slices(args)).map_err(arg_error)?;
    let name = key_name(args)?;
    let key = ctx.open_key_writable(name);
    let current = stored(&key)?;
    let now = clock::now();
    let out = lock::release(current.as_ref(), req.token, now);
    apply(ctx, &key, name, out.change, now)?;
    Ok(RedisValue::Integer(i64::from(out.reply)))
}

/// `LOCK.INFO key`: read-only, so an ended lock that is still stored shows
/// as free but is left for the sweeper.
pub fn info(ctx: &Context, args: &[RedisString]) -> RedisResult {
    args::info(&slices(args)).map_err(arg_error)?;
    let name = key_name(args)?;
    let key = ctx.open_key(name);
    let current = match key.get_value::<Lock>(&LOCK_TYPE) {
        Ok(lock) => lock.cloned(),
        Err(_) => return Err(RedisError::WrongType),
    };
    let Some(view) = lock::view(current.as_ref(), clock::now()) else {
        return Ok(RedisValue::Null);
    };
    let int = |v: u64| RedisValue::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    let fields = BTreeMap::from([
        (RedisValueKey::String("ttl".into()), int(view.ttl_ms)),
        (RedisValueKey::String("fence".into()), int(view.fence)),
        (
            RedisValueKey::String("acquired".into()),
            int(view.acquired_ms),
        ),
        (
            RedisValueKey::String("extensions".into()),
            int(view.extensions),
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
pub fn load(ctx: &Context, args: &[RedisString]) -> RedisResult {
    let payload = args::load(&slices(args)).map_err(arg_error)?;
    let name = key_name(args)?;
    let now = clock::now();
    let lock = codec::decode(payload, now)
        .map_err(|e| RedisError::String(format!("ERR invalid LOCK.LOAD payload: {e}")))?;
    let key = ctx.open_key_writable(name);
    stored(&key)?;
    node::with(|n| n.fences.observe(lock.fence));
    put(ctx, &key, name, lock, now)?;
    Ok(RedisValue::SimpleStringStatic("OK"))
}
