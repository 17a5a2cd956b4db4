//! A forward jump of the node's wall clock does not free a lock early.
//! Valkey runs under libfaketime (Debian's Redis hangs under it, see
//! PLATFORM.md); only the wall clock moves, the monotonic clock does not.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};
use testkit::{eventually, Server};

#[test]
fn a_wall_clock_jump_past_the_ttl_does_not_free_a_held_lock() {
    for flavor in testkit::faketime_flavors() {
        let server = Server::builder(flavor).faketime().start();
        let mut c = server.conn();
        let fence: i64 = redis::cmd("LOCK.ACQUIRE")
            .arg("res")
            .arg("holder")
            .arg(3_000)
            .query(&mut c)
            .unwrap();
        let taken_at = Instant::now();
        // The control: a plain key with the same TTL, expired by Redis's wall clock.
        let _: () = redis::cmd("SET")
            .arg("plain")
            .arg("holder")
            .arg("PX")
            .arg(3_000)
            .query(&mut c)
            .unwrap();
        let (before, _): (i64, i64) = redis::cmd("TIME").query(&mut c).unwrap();
        server.set_fake_offset("+3600s");
        let (after, _): (i64, i64) = redis::cmd("TIME").query(&mut c).unwrap();
        assert!(
            after - before >= 3_500,
            "{flavor}: the wall clock jumped ({before} -> {after})"
        );
        // Native expiry frees the plain key at once: the fault is real.
        let plain: Option<String> = redis::cmd("GET").arg("plain").query(&mut c).unwrap();
        assert_eq!(
            plain, None,
            "{flavor}: the plain SET PX lock was freed by the jump"
        );
        // The module's lock is still held, by its holder, with its fence.
        let taken: Option<i64> = redis::cmd("LOCK.ACQUIRE")
            .arg("res")
            .arg("intruder")
            .arg(3_000)
            .query(&mut c)
            .unwrap();
        assert!(
            taken.is_none() || taken_at.elapsed() >= Duration::from_secs(3),
            "{flavor}: lock freed early by the wall clock"
        );
        let v: redis::Value = redis::cmd("LOCK.INFO").arg("res").query(&mut c).unwrap();
        let fields = testkit::lock_info_fields(&v).expect("still held");
        assert_eq!(fields["fence"], fence);
        assert!(fields["ttl"] <= 3_000);
        // It ends by the monotonic clock, at its deadline.
        eventually(
            Duration::from_secs(10),
            "lock ends at its monotonic deadline",
            || {
                let granted: Option<i64> = redis::cmd("LOCK.ACQUIRE")
                    .arg("res")
                    .arg("next")
                    .arg(3_000)
                    .query(&mut c)
                    .unwrap();
                granted.map(|_| taken_at.elapsed())
            },
        );
        assert!(taken_at.elapsed() >= Duration::from_millis(2_900));
    }
}
