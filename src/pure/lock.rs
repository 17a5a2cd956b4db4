//! The lock state machine: pure, with time passed in.
//!
//! Nothing here knows about Redis. Every operation takes the current lock (if
//! any), the request and `now` (microseconds on the node's monotonic clock)
//! and returns the reply together with the change to apply to the key. The
//! glue in `commands.rs` applies the change, replicates it and replies.

use sha2::{Digest, Sha256};

/// Microseconds on the module's monotonic clock (see `clock.rs`).
pub type Micros = u64;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;

/// Tokens up to this many bytes (a 20-byte random token in hex is 40) are
/// stored inside the lock, so a lock is one allocation and checking the
/// owner touches no other memory.
pub const INLINE_TOKEN: usize = 42;

/// The holder's token and the grant's extension count. They share one
/// 48-byte field: a longer token's pointer gives the field 8-byte alignment,
/// and the count fills what would otherwise be padding, so a whole [`Lock`]
/// is 80 bytes (one allocator size class) with a token of up to 42 bytes
/// inline.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holder {
    Inline {
        extensions: u32,
        len: u8,
        bytes: [u8; INLINE_TOKEN],
    },
    Spilled {
        extensions: u32,
        bytes: Box<[u8]>,
    },
}

impl Holder {
    fn new(token: &[u8], extensions: u32) -> Self {
        match u8::try_from(token.len()) {
            Ok(len) if token.len() <= INLINE_TOKEN => {
                let mut bytes = [0; INLINE_TOKEN];
                if let Some(head) = bytes.get_mut(..token.len()) {
                    head.copy_from_slice(token);
                }
                Holder::Inline {
                    extensions,
                    len,
                    bytes,
                }
            }
            _ => Holder::Spilled {
                extensions,
                bytes: token.into(),
            },
        }
    }

    fn token(&self) -> &[u8] {
        match self {
            Holder::Inline { len, bytes, .. } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            Holder::Spilled { bytes, .. } => bytes,
        }
    }

    fn extensions(&self) -> u32 {
        match self {
            Holder::Inline { extensions, .. } | Holder::Spilled { extensions, .. } => *extensions,
        }
    }

    fn set_extensions(&mut self, n: u32) {
        match self {
            Holder::Inline { extensions, .. } | Holder::Spilled { extensions, .. } => {
                *extensions = n
            }
        }
    }
}

/// `hold_limit` of a grant without one.
const NO_HOLD_LIMIT: Micros = Micros::MAX;

/// A held (or expired but not yet removed) lock. Fields are sized to their
/// range: 80 bytes, one allocation, for a token of up to 42 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// The fencing token handed out with this grant.
    pub fence: u64,
    /// The lock is held while `now < deadline`.
    pub deadline: Micros,
    /// When this grant was made.
    pub acquired_at: Micros,
    /// The grant can never be held past this (`MAXHOLD`); [`NO_HOLD_LIMIT`]: no bound.
    hold_limit: Micros,
    /// The holder's token (the capability to extend and release; never
    /// printed) and how many times `LOCK.EXTEND` renewed this grant.
    holder: Holder,
}

impl Lock {
    /// A grant to `owner`, not yet extended, without a hold limit.
    pub fn new(owner: &[u8], fence: u64, deadline: Micros, acquired_at: Micros) -> Self {
        Lock {
            fence,
            deadline,
            acquired_at,
            hold_limit: NO_HOLD_LIMIT,
            holder: Holder::new(owner, 0),
        }
    }

    /// The same lock with a hold limit (`None`: no bound).
    pub fn with_hold_limit(mut self, limit: Option<Micros>) -> Self {
        // A limit of u64::MAX microseconds (half a million years) is no bound.
        self.hold_limit = limit.unwrap_or(NO_HOLD_LIMIT);
        self
    }

    /// The same lock, extended `n` times (counted up to `u32::MAX`).
    pub fn with_extensions(mut self, n: u64) -> Self {
        self.holder
            .set_extensions(u32::try_from(n).unwrap_or(u32::MAX));
        self
    }

    /// The holder's token.
    pub fn owner(&self) -> &[u8] {
        self.holder.token()
    }

    /// How many times `LOCK.EXTEND` renewed this grant.
    pub fn extensions(&self) -> u64 {
        u64::from(self.holder.extensions())
    }

    /// The grant can never be held past this (`MAXHOLD`); `None`: no bound.
    pub fn hold_limit(&self) -> Option<Micros> {
        (self.hold_limit != NO_HOLD_LIMIT).then_some(self.hold_limit)
    }

    /// Heap bytes the lock holds besides its own allocation (a token longer
    /// than [`INLINE_TOKEN`]).
    pub fn spilled_bytes(&self) -> usize {
        match &self.holder {
            Holder::Inline { .. } => 0,
            Holder::Spilled { bytes, .. } => bytes.len(),
        }
    }

    pub fn is_live(&self, now: Micros) -> bool {
        now < self.deadline
    }

    pub fn is_held_by(&self, token: &[u8], now: Micros) -> bool {
        self.is_live(now) && self.owner() == token
    }

    pub fn remaining(&self, now: Micros) -> Micros {
        self.deadline.saturating_sub(now)
    }

    pub fn held_for(&self, now: Micros) -> Micros {
        now.saturating_sub(self.acquired_at)
    }

    /// Whether a deadline would pass the grant's hold limit.
    fn past_hold_limit(&self, deadline: Micros) -> bool {
        self.hold_limit().is_some_and(|limit| deadline > limit)
    }
}

/// What to do with the key after an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Leave the key as it is.
    Keep,
    /// Store this lock in the key (a new grant or a new deadline).
    Put(Lock),
    /// Delete the key (released, or found expired).
    Remove,
}

/// The reply to send and the change to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<R> {
    pub reply: R,
    pub change: Change,
    /// The operation found a lock whose deadline had passed (for the
    /// "expired while held" count).
    pub ended: bool,
}

/// The node-wide fencing counter: every new grant gets a value strictly
/// greater than every value handed out or observed before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FenceCounter {
    last: u64,
}

/// Fencing tokens are replied as Redis integers, so they stay below `i64::MAX`.
pub const MAX_FENCE: u64 = i64::MAX as u64;

/// How far above the node's wall clock, in microseconds, one request may set
/// a fencing token (`FENCE` floor, `LOCK.LOAD` payload): 2^40 µs, about 12.7
/// days. The counter starts at the wall clock in µs (about 2^50.7 in 2026)
/// and grows by one per grant, so honest tokens on nodes whose clocks agree
/// within days stay far below this; a request cannot push the counter more
/// than 12.7 days of clock ahead, and 2^63 stays some 290,000 years away.
pub const FENCE_HEADROOM: u64 = 1 << 40;

/// The largest fencing token a request may ask for on a node whose counter
/// is at `last`, at `wall_micros` on its wall clock: the clock plus
/// [`FENCE_HEADROOM`], or the counter itself if it is higher already (a
/// floor at or below the counter spends nothing).
///
/// The bound is absolute, not relative to the counter: raising the counter
/// to it does not raise the bound, so repeating the request gains nothing.
pub fn fence_ceiling(last: u64, wall_micros: u64) -> u64 {
    last.max(wall_micros.saturating_add(FENCE_HEADROOM))
        .min(MAX_FENCE)
}

impl FenceCounter {
    pub const fn starting_at(last: u64) -> Self {
        FenceCounter { last }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next fencing token, or `None` once the counter is exhausted.
    pub fn next_fence(&mut self) -> Option<u64> {
        let next = self.last.checked_add(1).filter(|n| *n <= MAX_FENCE)?;
        self.last = next;
        Some(next)
    }

    /// Raise the counter to at least `seen` (a fence loaded from persistence
    /// or replication), so later grants stay above it.
    pub fn observe(&mut self, seen: u64) {
        self.last = self.last.max(seen);
    }
}

/// Reply of `LOCK.ACQUIRE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// A new grant to the token; this is its fencing token.
    Granted(u64),
    /// The token already held the lock: the same grant with a fresh
    /// deadline (and its fence raised to the floor, if asked); this is its
    /// fencing token.
    Refreshed(u64),
    /// Another token holds the lock.
    Taken,
    /// New grants are refused for now ([`Admission::HolderOnly`]), and the
    /// token does not hold the lock.
    Refused,
    /// The holder asked to refresh its grant past the grant's hold limit.
    HoldLimit,
    /// The node has handed out its last fencing token.
    FencesExhausted,
}

impl Acquired {
    /// The fencing token of a grant or a refresh.
    pub fn fence(self) -> Option<u64> {
        match self {
            Acquired::Granted(fence) | Acquired::Refreshed(fence) => Some(fence),
            _ => None,
        }
    }
}

/// Who may be granted a lock now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Anyone (the normal case).
    Open,
    /// Only the holder of a live lock, refreshing its own grant: while the
    /// node rejoins after a restart or was just promoted, it may lack grants
    /// it made (or its old primary made), so it grants nothing new. An
    /// ended lock stays as it is: it is neither replaced nor handed over.
    HolderOnly,
}

/// What `LOCK.ACQUIRE` asks for. `T` holds the token: borrowed from the
/// command's arguments (`&[u8]`), or owned by a waiter that keeps its
/// request until it is served (`Box<[u8]>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquireRequest<T> {
    pub token: T,
    pub ttl: Micros,
    /// Raise the grant's fencing token, and the node's counter, to at least
    /// this (0: no floor). Used by the quorum client to make tokens
    /// monotonic across nodes.
    pub fence_floor: u64,
    /// For a new grant: how long it may be held at most, extensions included.
    pub max_hold: Option<Micros>,
}

impl AcquireRequest<&[u8]> {
    /// The same request, owning its token.
    pub fn to_owned(&self) -> AcquireRequest<Box<[u8]>> {
        AcquireRequest {
            token: self.token.into(),
            ttl: self.ttl,
            fence_floor: self.fence_floor,
            max_hold: self.max_hold,
        }
    }
}

/// `LOCK.ACQUIRE`: take a free or expired lock, or refresh our own.
pub fn acquire<T: AsRef<[u8]>>(
    current: Option<&Lock>,
    req: &AcquireRequest<T>,
    now: Micros,
    fences: &mut FenceCounter,
) -> Outcome<Acquired> {
    acquire_admitted(current, req, Admission::Open, now, fences)
}

/// `LOCK.ACQUIRE` under an admission rule (see [`Admission`]).
pub fn acquire_admitted<T: AsRef<[u8]>>(
    current: Option<&Lock>,
    req: &AcquireRequest<T>,
    admission: Admission,
    now: Micros,
    fences: &mut FenceCounter,
) -> Outcome<Acquired> {
    let token = req.token.as_ref();
    let holds = current.is_some_and(|lock| lock.is_held_by(token, now));
    if admission == Admission::HolderOnly && !holds {
        return Outcome {
            reply: Acquired::Refused,
            change: Change::Keep,
            ended: false,
        };
    }
    let deadline = now.saturating_add(req.ttl);
    let ended = current.is_some_and(|lock| !lock.is_live(now));
    let (reply, change) = match current {
        Some(lock) if lock.is_held_by(token, now) => {
            if lock.past_hold_limit(deadline) {
                (Acquired::HoldLimit, Change::Keep)
            } else {
                // A retry of our own grant (e.g. after a lost reply): same
                // grant, fresh deadline, and the fence raised if asked.
                let fence = lock.fence.max(req.fence_floor);
                fences.observe(fence);
                let lock = Lock {
                    deadline,
                    fence,
                    ..lock.clone()
                };
                (Acquired::Refreshed(fence), Change::Put(lock))
            }
        }
        Some(lock) if lock.is_live(now) => (Acquired::Taken, Change::Keep),
        _ => match fences.next_fence() {
            Some(next) => {
                let fence = next.max(req.fence_floor);
                fences.observe(fence);
                let lock = Lock::new(token, fence, deadline, now)
                    .with_hold_limit(req.max_hold.map(|m| now.saturating_add(m)));
                (Acquired::Granted(fence), Change::Put(lock))
            }
            None => (Acquired::FencesExhausted, Change::Keep),
        },
    };
    Outcome {
        reply,
        change,
        ended,
    }
}

/// Reply of `LOCK.EXTEND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extended {
    /// The deadline moved (reply 1).
    Extended,
    /// The token does not hold the lock: free, ended, or another's (reply 0).
    NotHeld,
    /// The token holds the lock, but the new deadline would pass the grant's
    /// hold limit: the lock keeps its current deadline (reply -1), so the
    /// holder can tell "my grant runs out at its limit" from "I lost it".
    HoldLimit,
}

impl Extended {
    /// The integer `LOCK.EXTEND` replies.
    pub fn code(self) -> i64 {
        match self {
            Extended::Extended => 1,
            Extended::NotHeld => 0,
            Extended::HoldLimit => -1,
        }
    }
}

/// `LOCK.EXTEND`: move the deadline of a lock the token holds. An expired
/// lock is not revived; it is removed. An extension past the grant's hold
/// limit is refused (the lock keeps its current deadline).
pub fn extend(current: Option<&Lock>, token: &[u8], ttl: Micros, now: Micros) -> Outcome<Extended> {
    let deadline = now.saturating_add(ttl);
    let ended = current.is_some_and(|lock| !lock.is_live(now));
    let (reply, change) = match current {
        Some(lock) if lock.is_held_by(token, now) => {
            if lock.past_hold_limit(deadline) {
                (Extended::HoldLimit, Change::Keep)
            } else {
                let lock = Lock {
                    deadline,
                    ..lock.clone()
                }
                .with_extensions(lock.extensions().saturating_add(1));
                (Extended::Extended, Change::Put(lock))
            }
        }
        Some(_) if ended => (Extended::NotHeld, Change::Remove),
        _ => (Extended::NotHeld, Change::Keep),
    };
    Outcome {
        reply,
        change,
        ended,
    }
}

/// Reply of `LOCK.RELEASE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The token held the lock; it is free now (reply 1).
    Freed,
    /// No live lock: nothing to release (reply 0).
    NotHeld,
    /// Another token holds the lock, which stays (reply 0).
    HeldByAnother,
}

impl Released {
    /// Whether the lock was freed.
    pub fn freed(self) -> bool {
        self == Released::Freed
    }
}

/// `LOCK.RELEASE`: free a lock the token holds. Releasing twice, or after
/// expiry, is harmless.
pub fn release(current: Option<&Lock>, token: &[u8], now: Micros) -> Outcome<Released> {
    let ended = current.is_some_and(|lock| !lock.is_live(now));
    let (reply, change) = match current {
        Some(lock) if lock.is_held_by(token, now) => (Released::Freed, Change::Remove),
        Some(_) if ended => (Released::NotHeld, Change::Remove),
        Some(_) => (Released::HeldByAnother, Change::Keep),
        None => (Released::NotHeld, Change::Keep),
    };
    Outcome {
        reply,
        change,
        ended,
    }
}

/// What `LOCK.INFO` shows of a live lock. The token itself is never shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Milliseconds left, rounded up: never reports a lock as ending sooner than it does.
    pub ttl_ms: u64,
    pub fence: u64,
    /// Milliseconds since this grant was made, rounded down.
    pub acquired_ms: u64,
    pub extensions: u64,
    /// Identifies the holder without revealing the token.
    pub owner: String,
    /// Milliseconds until the grant's hold limit, rounded down, if it has one.
    pub hold_left_ms: Option<u64>,
}

pub fn view(current: Option<&Lock>, now: Micros) -> Option<View> {
    let lock = current.filter(|lock| lock.is_live(now))?;
    Some(View {
        ttl_ms: lock.remaining(now).div_ceil(1000),
        fence: lock.fence,
        acquired_ms: lock.held_for(now) / 1000,
        extensions: lock.extensions(),
        owner: fingerprint(lock.owner()),
        hold_left_ms: lock
            .hold_limit()
            .map(|limit| limit.saturating_sub(now) / 1000),
    })
}

/// The first 8 bytes of SHA-256 of the token, in hex. Equal tokens give equal
/// fingerprints on every node; a random token of 20 bytes or more cannot be
/// recovered from it (a short guessable token could be, by trying guesses).
pub fn fingerprint(token: &[u8]) -> String {
    let digest = Sha256::digest(token);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
