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
//! - [`AUTO`] (-1, the default): 0 when the node came back with the lock
//!   state it had: the AOF is on (`appendonly yes`) *and* its start-up load
//!   brought the module's state back (the fencing counter, an auxiliary
//!   field of every RDB and AOF preamble the module wrote, or a lock). Else
//!   `lock.max-ttl-ms`: without the AOF a snapshot may be older than the
//!   last grants, and an AOF node that loaded nothing may have lost its
//!   directory (a wiped disk, a container without a volume), which looks
//!   exactly like a brand-new node: an operator who knows the node is new
//!   ends the delay with `CONFIG SET lock.rejoin-delay-ms 0`;
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

/// What the node knew at start-up about the grants it made before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Restart {
    /// `appendonly yes` when the module was loaded.
    pub aof: bool,
    /// The start-up load brought the module's state back (its fencing
    /// counter or a lock, from the RDB/AOF preamble or the AOF's commands).
    pub state_loaded: bool,
}

impl Restart {
    /// Whether the node has every grant it made before: the AOF keeps
    /// grants, and this start actually read them back.
    pub fn kept_its_grants(self) -> bool {
        self.aof && self.state_loaded
    }

    /// For the log and `INFO lock`: why the automatic delay is what it is.
    pub fn reason(self) -> &'static str {
        match (self.aof, self.state_loaded) {
            (true, true) => "appendonly yes, state loaded",
            (true, false) => "appendonly yes, nothing loaded (new or wiped)",
            (false, _) => "appendonly no",
        }
    }
}

/// The delay in milliseconds that applies, from the setting, what the node
/// brought back at start-up, and `lock.max-ttl-ms`.
pub fn delay_ms(setting: i64, restart: Restart, max_ttl_ms: i64) -> u64 {
    let ms = match setting {
        AUTO if restart.kept_its_grants() => 0,
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
    delay_ms(setting, Restart::default(), max_ttl_ms)
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
         have granted without replicating has ended; if no such lease can be outstanding, \
         end it with CONFIG SET lock.promotion-delay-ms 0"
    )
}

/// The error a refused grant replies while the delay runs.
pub fn refusal(remaining_ms: u64) -> String {
    format!(
        "TRYAGAIN lock node is rejoining: new grants are refused for another {remaining_ms} ms \
         (lock.rejoin-delay-ms), until every lease it may have granted before its restart has \
         ended; if none can be outstanding (a brand-new node), end it with \
         CONFIG SET lock.rejoin-delay-ms 0"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_off_only_when_the_aof_brought_the_state_back() {
        let r = |aof, state_loaded| Restart { aof, state_loaded };
        let table = [
            // (setting, aof, loaded) -> delay
            (AUTO, false, false, 30_000),
            (AUTO, false, true, 30_000), // a snapshot may be older than the last grants
            (AUTO, true, false, 30_000), // new, or wiped: cannot be told apart
            (AUTO, true, true, 0),
            (0, false, false, 0),
            (0, true, false, 0),
            (500, true, true, 500),
            (500, false, false, 500),
            (-7, false, false, 0),
        ];
        for (setting, aof, loaded, want) in table {
            assert_eq!(
                delay_ms(setting, r(aof, loaded), 30_000),
                want,
                "setting {setting} aof {aof} loaded {loaded}"
            );
        }
        assert!(r(true, false).reason().contains("nothing loaded"));
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
        assert!(e.contains("CONFIG SET lock.promotion-delay-ms 0"), "{e}");
    }

    #[test]
    fn the_refusal_is_a_tryagain_error_naming_the_time_left() {
        let e = refusal(1234);
        assert!(e.starts_with("TRYAGAIN "), "{e}");
        assert!(e.contains("1234 ms"), "{e}");
        assert!(e.contains("lock.rejoin-delay-ms"), "{e}");
        assert!(e.contains("CONFIG SET lock.rejoin-delay-ms 0"), "{e}");
        assert!(!e.contains('\n') && !e.contains('\r'), "{e}");
    }
}
