//! Delayed rejoin: a node that may have lost its locks refuses new grants
//! until every lease it could have granted before has ended. Pure: the
//! setting, the persistence seen at load and the time since load are passed in.
//!
//! A node restarted without its data (no AOF, or an RDB snapshot older than
//! its last grants) would grant a lock that another client still holds on the
//! strength of the grant it lost, breaking the quorum's majority intersection.
//! The longest lease it could have granted is `lock.max-ttl-ms`, so refusing
//! new grants for that long after start-up closes the gap (the Redlock
//! paper's "delayed restart").
//!
//! `lock.rejoin-delay-ms`:
//! - [`AUTO`] (-1, the default): `lock.max-ttl-ms` when the server had no
//!   AOF (`appendonly no`) when the module was loaded, 0 with the AOF on;
//! - 0: off;
//! - N > 0: N milliseconds.
//!
//! `lock.promotion-delay-ms` does the same after a replica is promoted to
//! primary (`REPLICAOF NO ONE`, a failover): with asynchronous replication
//! it may lack the last grants of its old primary. 0 (the default) is off,
//! [`AUTO`] is `lock.max-ttl-ms`, N > 0 is N milliseconds.

use crate::pure::lock::Micros;

/// The setting's value for "decide from the persistence configuration".
pub const AUTO: i64 = -1;

/// The delay in milliseconds that applies, from the setting, whether the
/// server had the AOF on at load (`durable`) and `lock.max-ttl-ms`.
pub fn delay_ms(setting: i64, durable: bool, max_ttl_ms: i64) -> u64 {
    let ms = match setting {
        AUTO if durable => 0,
        AUTO => max_ttl_ms,
        n => n,
    };
    ms.max(0).unsigned_abs()
}

/// Milliseconds of the delay still to run `since_load` after the module was
/// loaded (rounded up, so a running delay never shows 0); `None` once over.
pub fn remaining_ms(delay_ms: u64, since_load: Micros) -> Option<u64> {
    let left = delay_ms.saturating_mul(1000).saturating_sub(since_load);
    (left > 0).then(|| left.div_ceil(1000))
}

/// `lock.promotion-delay-ms` in milliseconds: [`AUTO`] is `lock.max-ttl-ms`,
/// 0 (the default) is off.
pub fn promotion_delay_ms(setting: i64, max_ttl_ms: i64) -> u64 {
    // The rejoin delay's rules, as for a node without an AOF.
    delay_ms(setting, false, max_ttl_ms)
}

/// Milliseconds of the promotion delay still to run at `now`, for a node
/// promoted at `promoted_at` (`None`: never promoted since it loaded).
pub fn promotion_remaining_ms(
    delay_ms: u64,
    promoted_at: Option<Micros>,
    now: Micros,
) -> Option<u64> {
    remaining_ms(delay_ms, now.saturating_sub(promoted_at?))
}

/// The error a refused grant replies while the promotion delay runs.
pub fn promotion_refusal(remaining_ms: u64) -> String {
    format!(
        "TRYAGAIN lock node was promoted to primary: new grants are refused for another \
         {remaining_ms} ms (lock.promotion-delay-ms), until every lease its old primary may \
         have granted without replicating has ended"
    )
}

/// The error a refused grant replies while the delay runs.
pub fn refusal(remaining_ms: u64) -> String {
    format!(
        "TRYAGAIN lock node is rejoining: new grants are refused for another {remaining_ms} ms \
         (lock.rejoin-delay-ms), until every lease it may have granted before its restart has ended"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_max_ttl_without_aof_and_off_with_it() {
        assert_eq!(delay_ms(AUTO, false, 30_000), 30_000);
        assert_eq!(delay_ms(AUTO, true, 30_000), 0);
        assert_eq!(delay_ms(0, false, 30_000), 0);
        assert_eq!(delay_ms(500, true, 30_000), 500);
        assert_eq!(delay_ms(500, false, 30_000), 500);
        assert_eq!(delay_ms(-7, false, 30_000), 0);
    }

    #[test]
    fn remaining_counts_down_and_rounds_up() {
        assert_eq!(remaining_ms(0, 0), None);
        assert_eq!(remaining_ms(500, 0), Some(500));
        assert_eq!(remaining_ms(500, 1), Some(500));
        assert_eq!(remaining_ms(500, 499_001), Some(1));
        assert_eq!(remaining_ms(500, 499_999), Some(1));
        assert_eq!(remaining_ms(500, 500_000), None);
        assert_eq!(remaining_ms(500, u64::MAX), None);
        assert_eq!(remaining_ms(u64::MAX, 0), Some(u64::MAX / 1000 + 1));
    }

    #[test]
    fn the_promotion_delay_runs_from_the_promotion() {
        assert_eq!(promotion_delay_ms(0, 30_000), 0);
        assert_eq!(promotion_delay_ms(AUTO, 30_000), 30_000);
        assert_eq!(promotion_delay_ms(700, 30_000), 700);
        assert_eq!(promotion_remaining_ms(700, None, 5_000_000), None);
        assert_eq!(
            promotion_remaining_ms(700, Some(5_000_000), 5_000_000),
            Some(700)
        );
        assert_eq!(
            promotion_remaining_ms(700, Some(5_000_000), 5_699_999),
            Some(1)
        );
        assert_eq!(
            promotion_remaining_ms(700, Some(5_000_000), 5_700_000),
            None
        );
        assert_eq!(promotion_remaining_ms(0, Some(5_000_000), 5_000_000), None);
        // A clock reading before the promotion (never happens) is "just promoted".
        assert_eq!(promotion_remaining_ms(700, Some(5_000_000), 1), Some(700));
        let e = promotion_refusal(42);
        assert!(e.starts_with("TRYAGAIN ") && e.contains("42 ms"), "{e}");
        assert!(e.contains("lock.promotion-delay-ms"), "{e}");
    }

    #[test]
    fn the_refusal_is_a_tryagain_error_naming_the_time_left() {
        let e = refusal(1234);
        assert!(e.starts_with("TRYAGAIN "), "{e}");
        assert!(e.contains("1234 ms"), "{e}");
        assert!(e.contains("lock.rejoin-delay-ms"), "{e}");
    }
}
