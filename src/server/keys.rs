//! The key operations every path shares: open a lock key, store a lock in
//! it (signal, replicate, index), end a lock (delete, replicate `DEL`,
//! notify, count) and hand a freed lock to the next waiter. The commands,
//! the sweeper and the waiters' wake-ups all go through these, so the
//! sequence "end the lock -> notify -> hand over" is written once.
//!
//! Storing a lock records its deadline in the expiry index; the caller arms
//! the sweeper's timer before it returns (`sweeper::arm`).

use crate::ffi;
use crate::pure::clock;
use crate::pure::codec;
use crate::pure::lock::{self, Acquired, Change, Lock, Micros};
use crate::server::datatype::LOCK_TYPE;
use crate::server::stats::{self, bump};
use crate::server::{state, waiters};
use redis_module::key::RedisKeyWritable;
use redis_module::{Context, RedisError, RedisString};
use std::ffi::CStr;
use std::sync::atomic::Ordering;

/// A lock key open for writing: its database and name, the key, and the
/// lock stored in it.
pub struct LockKey<'a> {
    db: i32,
    name: RedisString,
    key: RedisKeyWritable,
    lock: Option<&'a mut Lock>,
}

/// How a lock ends.
#[derive(Clone, Copy)]
pub enum Ending {
    /// Its deadline passed (event `lock.expired`, counted as expired).
    Expired,
    /// A command ended it while live (its own event, e.g. `lock.released`).
    By(&'static CStr),
}

/// Open `name` in the selected database for writing; `WRONGTYPE` if it
/// holds something other than a lock.
pub fn open<'a>(ctx: &Context, name: RedisString) -> Result<LockKey<'a>, RedisError> {
    let key = ctx.open_key_writable(&name);
    let lock = key
        .get_value::<Lock>(&LOCK_TYPE)
        .map_err(|_| RedisError::WrongType)?;
    Ok(LockKey {
        db: ffi::selected_db(ctx),
        name,
        key,
        lock,
    })
}

impl LockKey<'_> {
    pub fn current(&self) -> Option<&Lock> {
        self.lock.as_deref()
    }

    /// Apply a state-machine change: store the lock and fire `event`, or end
    /// the lock (and serve its next waiter). `ended`: the operation found a
    /// lock whose deadline had passed.
    pub fn apply(
        self,
        ctx: &Context,
        change: Change,
        ended: bool,
        now: Micros,
        event: &'static CStr,
    ) -> Result<(), RedisError> {
        match change {
            Change::Keep => {
                if ended {
                    bump(&stats::EXPIRED);
                }
            }
            Change::Put(lock) => {
                if ended {
                    bump(&stats::EXPIRED);
                }
                let name = self.store(ctx, lock, now)?;
                ffi::notify(ctx, event, &name);
            }
            Change::Remove => {
                let ending = if ended {
                    Ending::Expired
                } else {
                    Ending::By(event)
                };
                self.end(ctx, ending);
            }
        }
        Ok(())
    }

    /// Store a lock in the key; returns the key's name. An existing lock is
    /// changed in place and keeps its one index entry (moved if its deadline
    /// moved).
    pub fn store(self, ctx: &Context, lock: Lock, now: Micros) -> Result<RedisString, RedisError> {
        match self.lock {
            Some(stored) => {
                let payload = codec::encode(&lock, now);
                let (old, new) = (stored.deadline, lock.deadline);
                *stored = lock;
                published(ctx, &self.name, &payload);
                if old != new {
                    untrack(self.db, self.name.as_slice(), old);
                    track(self.db, self.name.as_slice(), new);
                }
            }
            None => put_new(ctx, self.db, &self.name, &self.key, lock, now)?,
        }
        Ok(self.name)
    }

    /// End the lock: delete the key and replicate `DEL`, notify, count, and
    /// hand the lock to the first waiter in line, in this same call.
    pub fn end(self, ctx: &Context, ending: Ending) {
        if let Some(old) = self.current() {
            untrack(self.db, self.name.as_slice(), old.deadline);
        }
        if self.key.delete().is_ok() {
            ffi::signal_modified(ctx, &self.name);
            ffi::replicate_del(ctx, &self.name);
        }
        let event = match ending {
            Ending::Expired => {
                bump(&stats::EXPIRED);
                c"lock.expired"
            }
            Ending::By(event) => event,
        };
        ffi::notify(ctx, event, &self.name);
        hand_over(ctx, self.db, &self.name, &self.key);
    }
}

/// Record the deadline of the lock in `key` of `db` in the expiry index.
pub fn track(db: i32, key: &[u8], deadline: Micros) {
    state::with(|n| n.index.insert(deadline, db, key));
}

/// The lock in `key` of `db` no longer ends at `deadline`: its entry goes.
fn untrack(db: i32, key: &[u8], deadline: Micros) {
    state::with(|n| n.index.remove(deadline, db, key));
}

/// Store a lock in an empty key opened for writing, and publish it.
fn put_new(
    ctx: &Context,
    db: i32,
    name: &RedisString,
    key: &RedisKeyWritable,
    lock: Lock,
    now: Micros,
) -> Result<(), RedisError> {
    let payload = codec::encode(&lock, now);
    let deadline = lock.deadline;
    key.set_value(&LOCK_TYPE, lock)
        .map_err(|_| RedisError::WrongType)?;
    stats::LOCKS.fetch_add(1, Ordering::Relaxed);
    published(ctx, name, &payload);
    track(db, name.as_slice(), deadline);
    Ok(())
}

/// A stored lock changed: tell watchers, and replicate it as `LOCK.LOAD`
/// with the encoded lock (time left, so a replica or an AOF replay ends
/// with a deadline that is never earlier).
fn published(ctx: &Context, name: &RedisString, payload: &[u8]) {
    ffi::signal_modified(ctx, name);
    ffi::replicate_load(ctx, name, payload);
}

/// The lock in `key` (open for writing) is free: grant it to the first
/// waiter in line, if any, with the request the waiter was parsed into, and
/// wake that client with its fencing token.
fn hand_over(ctx: &Context, db: i32, name: &RedisString, key: &RedisKeyWritable) {
    let Some(waiter) = waiters::next(ctx, db, name.as_slice()) else {
        return;
    };
    let now = clock::now();
    let out = state::with(|n| lock::acquire(None, waiter.request(), now, &mut n.fences));
    let fence = match (out.reply, out.change) {
        (Acquired::Granted(fence), Change::Put(lock)) => {
            match put_new(ctx, db, name, key, lock, now) {
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
    waiter.wake(fence);
}

/// If the lock in `name` of `db` is free (or has ended) and clients wait
/// for it, hand it over now.
pub fn serve_if_free(ctx: &Context, db: i32, name: RedisString) {
    if waiters::waiting(db, name.as_slice()) == 0 || !ffi::select_db(ctx, db) {
        return;
    }
    let Ok(key) = open(ctx, name) else {
        return; // another type now: leave the waiters to time out
    };
    match key.current() {
        Some(lock) if lock.is_live(clock::now()) => {}
        Some(_) => key.end(ctx, Ending::Expired),
        None => hand_over(ctx, key.db, &key.name, &key.key),
    }
}
