//! Delayed rejoin: a node that may have lost its locks refuses new grants
//! with `TRYAGAIN` until `lock.rejoin-delay-ms` has passed since start-up;
//! extend, release and info keep working; the automatic default follows
//! the AOF setting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};
use testkit::lockcmd::{self, acquire, extend, info, release};
use testkit::{error_text, info_field, Server};

fn try_acquire(
    c: &mut redis::Connection,
    key: &str,
    token: &str,
    ttl: u64,
) -> Result<Option<i64>, String> {
    redis::cmd("LOCK.ACQUIRE")
        .arg(key)
        .arg(token)
        .arg(ttl)
        .query::<Option<i64>>(c)
        .map_err(|e| error_text(&e))
}

/// What an operator who knows no lease is outstanding does.
fn end_the_delay(c: &mut redis::Connection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("lock.rejoin-delay-ms")
        .arg("0")
        .query(c)
        .unwrap();
}

#[test]
fn grants_are_refused_with_tryagain_until_the_delay_has_passed() {
    for flavor in testkit::flavors() {
        let started = Instant::now();
        let server = Server::builder(flavor)
            .module_arg("rejoin-delay-ms", "1500")
            .start();
        let mut c = server.conn();
        let err = try_acquire(&mut c, "k", "a", 1000).unwrap_err();
        assert!(err.starts_with("TRYAGAIN"), "{flavor}: {err}");
        assert!(err.contains("lock.rejoin-delay-ms"), "{flavor}: {err}");
        let left: u64 = err
            .split_whitespace()
            .skip_while(|w| *w != "another")
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{flavor}: no time left in {err}"));
        assert!(left > 0 && left <= 1500, "{flavor}: {left}");
        // WAIT does not queue either; nothing was stored.
        let err = lockcmd::error_of(
            &mut c,
            &[b"LOCK.ACQUIRE", b"k", b"a", b"1000", b"WAIT", b"100"],
        );
        assert!(err.starts_with("TRYAGAIN"), "{flavor}: {err}");
        assert_eq!(info(&mut c, "k"), None, "{flavor}");
        // The other commands work meanwhile.
        assert_eq!(extend(&mut c, "k", "a", 1000), 0, "{flavor}");
        assert_eq!(release(&mut c, "k", "a"), 0, "{flavor}");
        assert!(
            info_field(&mut c, "lock", "lock_rejoin_delay_left_ms") > 0,
            "{flavor}"
        );
        assert!(
            info_field(&mut c, "lock", "lock_rejoin_refusals") >= 2,
            "{flavor}"
        );
        // Then grants resume, not before the delay.
        let fence = testkit::eventually(Duration::from_secs(5), "grants resume", || {
            try_acquire(&mut c, "k", "a", 1000).ok().flatten()
        });
        assert!(started.elapsed() >= Duration::from_millis(1500), "{flavor}");
        assert!(fence > 0);
        assert_eq!(
            info_field(&mut c, "lock", "lock_rejoin_delay_left_ms"),
            0,
            "{flavor}"
        );
        assert_eq!(
            acquire(&mut c, "k", "b", 1000),
            None,
            "{flavor}: normal again"
        );
    }
}

#[test]
fn a_holder_may_refresh_and_extend_a_lock_it_holds_during_the_delay() {
    for flavor in testkit::flavors() {
        // RDB-only persistence: the auto delay applies (no AOF), but a lock
        // saved before the restart comes back held.
        let mut server = Server::builder(flavor)
            .rdb()
            .module_arg("rejoin-delay-ms", "2000")
            .start();
        let mut c = server.conn();
        // Right after start the delay runs; end it for the setup.
        end_the_delay(&mut c);
        let fence = acquire(&mut c, "held", "owner", 60_000).unwrap();
        server.shutdown_save();
        server.start_again();
        let mut c = server.conn();
        assert_eq!(info(&mut c, "held").unwrap()["fence"], fence, "{flavor}");
        // The holder refreshes (same grant, same fence) and extends.
        assert_eq!(
            try_acquire(&mut c, "held", "owner", 60_000),
            Ok(Some(fence)),
            "{flavor}"
        );
        assert_eq!(extend(&mut c, "held", "owner", 60_000), 1, "{flavor}");
        // Anyone else, on any key, is refused with TRYAGAIN.
        for (key, token) in [("held", "other"), ("free", "other")] {
            let err = try_acquire(&mut c, key, token, 1000).unwrap_err();
            assert!(err.starts_with("TRYAGAIN"), "{flavor}: {key}: {err}");
        }
        assert_eq!(release(&mut c, "held", "owner"), 1, "{flavor}");
        assert!(try_acquire(&mut c, "held", "other", 1000)
            .unwrap_err()
            .starts_with("TRYAGAIN"));
        // An operator may end the delay at once.
        end_the_delay(&mut c);
        assert!(
            try_acquire(&mut c, "held", "other", 1000)
                .unwrap()
                .is_some(),
            "{flavor}"
        );
    }
}

#[test]
fn the_default_is_max_ttl_without_aof_and_off_with_it() {
    for flavor in testkit::flavors() {
        // No persistence, the default setting (-1): refused for max-ttl-ms.
        let server = Server::builder(flavor)
            .module_arg("rejoin-delay-ms", "-1")
            .module_arg("max-ttl-ms", "800")
            .start();
        let mut c = server.conn();
        let got: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("lock.rejoin-delay-ms")
            .query(&mut c)
            .unwrap();
        assert_eq!(got[1], "-1", "{flavor}");
        let err = try_acquire(&mut c, "k", "a", 500).unwrap_err();
        assert!(err.starts_with("TRYAGAIN"), "{flavor}: {err}");
        testkit::eventually(Duration::from_secs(5), "grants after max-ttl-ms", || {
            try_acquire(&mut c, "k", "a", 500).ok().flatten()
        });
        assert!(server.log().contains("delayed rejoin"), "{flavor}: logged");

        assert!(server.log().contains("delayed rejoin"), "{flavor}: logged");
    }
}

/// `appendonly yes` is not enough to skip the delay: the node must have
/// brought its state back. A fresh (or wiped) AOF node waits, and says how
/// an operator ends the wait; one that loaded its AOF grants at once.
#[test]
fn the_default_is_off_only_when_the_aof_brought_the_state_back() {
    for flavor in testkit::flavors() {
        let mut server = Server::builder(flavor)
            .appendonly(true)
            .module_arg("rejoin-delay-ms", "-1")
            .module_arg("max-ttl-ms", "600000")
            .start();
        let mut c = server.conn();
        let err = try_acquire(&mut c, "k", "a", 500).unwrap_err();
        assert!(err.starts_with("TRYAGAIN"), "{flavor}: {err}");
        assert!(
            err.contains("CONFIG SET lock.rejoin-delay-ms 0"),
            "{flavor}: the refusal says how to end it: {err}"
        );
        assert!(
            server.info("lock").contains("nothing loaded"),
            "{flavor}: {}",
            server.info("lock")
        );
        assert!(
            server.log().contains("CONFIG SET lock.rejoin-delay-ms 0"),
            "{flavor}: logged"
        );
        // A reload later (here DEBUG RELOAD, which writes and reads back an
        // RDB with the module's state) does not count as coming back.
        let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
        let err = try_acquire(&mut c, "k", "a", 500).unwrap_err();
        assert!(
            err.starts_with("TRYAGAIN"),
            "{flavor}: after DEBUG RELOAD: {err}"
        );
        // The operator knows this node is new.
        end_the_delay(&mut c);
        assert!(
            try_acquire(&mut c, "k", "a", 60_000).unwrap().is_some(),
            "{flavor}"
        );

        // Restarted with its AOF (fsync always): the lock is back, and new
        // grants need no delay. CONFIG SET was not persisted: the setting
        // is the automatic one again.
        server.restart();
        let mut c = server.conn();
        assert!(
            server.info("lock").contains("appendonly yes, state loaded"),
            "{flavor}: {}",
            server.info("lock")
        );
        assert_eq!(
            info_field(&mut c, "lock", "lock_rejoin_delay_left_ms"),
            0,
            "{flavor}"
        );
        assert!(info(&mut c, "k").is_some(), "{flavor}: the lock came back");
        assert!(
            try_acquire(&mut c, "other", "b", 500).unwrap().is_some(),
            "{flavor}: grants at once"
        );

        // Its AOF lost: it waits again.
        server.restart_wiped();
        let mut c = server.conn();
        let err = try_acquire(&mut c, "k", "b", 500).unwrap_err();
        assert!(err.starts_with("TRYAGAIN"), "{flavor}: wiped: {err}");
    }
}

/// A node whose AOF holds only the module's counter (no lock left, after a
/// rewrite) has still brought its state back.
#[test]
fn an_aof_with_no_locks_but_the_counter_counts_as_loaded() {
    for flavor in testkit::flavors() {
        let mut server = Server::builder(flavor)
            .appendonly(true)
            .module_arg("rejoin-delay-ms", "0")
            .start();
        let mut c = server.conn();
        assert!(try_acquire(&mut c, "k", "a", 60_000).unwrap().is_some());
        assert_eq!(release(&mut c, "k", "a"), 1, "{flavor}");
        let _: () = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap_or(());
        testkit::eventually(Duration::from_secs(10), "the rewrite ends", || {
            (info_field(&mut c, "persistence", "aof_rewrite_in_progress") == 0
                && info_field(&mut c, "persistence", "aof_rewrite_scheduled") == 0)
                .then_some(())
        });
        server.restart();
        let state = server.info("lock");
        assert!(
            state.contains("rejoin_restart:appendonly yes, state loaded"),
            "{flavor}: {state}"
        );
    }
}

#[test]
fn a_promoted_replica_refuses_new_grants_for_the_promotion_delay() {
    for flavor in testkit::flavors() {
        let primary = Server::start(flavor);
        let replica = Server::builder(flavor)
            .replica_of(&primary)
            .module_arg("promotion-delay-ms", "1500")
            .start();
        replica.wait_replica_synced(Duration::from_secs(10));
        let fence = acquire(&mut primary.conn(), "held", "owner", 60_000).unwrap();
        let mut c = replica.conn();
        testkit::eventually(Duration::from_secs(5), "the lock replicated", || {
            info(&mut c, "held")
        });
        assert_eq!(
            info_field(&mut c, "lock", "lock_promotion_delay_left_ms"),
            0,
            "{flavor}: not promoted yet"
        );
        let promoted = Instant::now();
        let _: () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query(&mut c)
            .unwrap();
        // No new grant, on a free key or a held one.
        for (key, token) in [("free", "other"), ("held", "other")] {
            let err = try_acquire(&mut c, key, token, 1000).unwrap_err();
            assert!(err.starts_with("TRYAGAIN"), "{flavor}: {key}: {err}");
            assert!(err.contains("lock.promotion-delay-ms"), "{flavor}: {err}");
        }
        assert!(info_field(&mut c, "lock", "lock_promotion_delay_left_ms") > 0);
        // The holder of a replicated lock refreshes (same fence) and extends.
        assert_eq!(
            try_acquire(&mut c, "held", "owner", 60_000),
            Ok(Some(fence)),
            "{flavor}"
        );
        assert_eq!(extend(&mut c, "held", "owner", 60_000), 1, "{flavor}");
        let granted = testkit::eventually(Duration::from_secs(5), "grants resume", || {
            try_acquire(&mut c, "free", "other", 1000).ok().flatten()
        });
        assert!(
            promoted.elapsed() >= Duration::from_millis(1500),
            "{flavor}"
        );
        assert!(granted > fence, "{flavor}: fences go on increasing");
    }
}
