//! The module's clock: microseconds on the process's monotonic clock.
//!
//! Wall-clock time never decides when a lock ends: a forward jump of the
//! node's clock (NTP step, operator error, VM migration) must not free a lock
//! early. Values are offset so that `now - held` never underflows for the
//! acquisition time of a lock loaded from an RDB file written long ago.

use crate::pure::lock::Micros;
use std::sync::OnceLock;
use std::time::Instant;

/// 2^50 us, about 35 years.
const OFFSET: Micros = 1 << 50;

static START: OnceLock<Instant> = OnceLock::new();

/// Fix the clock's origin; called once at module load.
pub fn init() {
    START.get_or_init(Instant::now);
}

pub fn now() -> Micros {
    let start = START.get_or_init(Instant::now);
    let elapsed = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX / 2);
    OFFSET.saturating_add(elapsed)
}

/// Microseconds from the module's load to `now` (a value of [`now`]).
pub fn since_load_at(now: Micros) -> Micros {
    now.saturating_sub(OFFSET)
}
