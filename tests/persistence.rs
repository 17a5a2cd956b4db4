//! Locks and the fencing counter survive DEBUG RELOAD, AOF rewrite and
//! replay, and restarts; deadlines come back later, never earlier.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use redis::Connection;
use std::time::Duration;
use testkit::lockcmd::{acquire, info, wait_gone};
use testkit::{Flavor, Server};

/// Take `n` locks with a long TTL; return (key, token, fence).
fn take_locks(conn: &mut Connection, n: usize) -> Vec<(String, String, i64)> {
    (0..n)
        .map(|i| {
            let (key, token) = (format!("lock:{i}"), format!("owner-{i}"));
            let fence = acquire(conn, &key, &token, 240_000).unwrap();
            (key, token, fence)
        })
        .collect()
}

/// Every lock is still held by its owner with its fence, and refused to others.
fn assert_held(flavor: Flavor, conn: &mut Connection, locks: &[(String, String, i64)], what: &str) {
    for (key, token, fence) in locks {
        let shown = info(conn, key).unwrap_or_else(|| panic!("{flavor}: {what}: {key} lost"));
        assert_eq!(shown["fence"], *fence, "{flavor}: {what}: {key}");
        assert!(
            shown["ttl"] > 0 && shown["ttl"] <= 240_000,
            "{flavor}: {what}: {shown:?}"
        );
        assert_eq!(
            acquire(conn, key, "intruder", 1_000),
            None,
            "{flavor}: {what}: {key} refused to others"
        );
        assert_eq!(
            acquire(conn, key, token, 240_000),
            Some(*fence),
            "{flavor}: {what}: owner keeps {key}"
        );
    }
}

fn max_fence(locks: &[(String, String, i64)]) -> i64 {
    locks.iter().map(|l| l.2).max().unwrap()
}

#[test]
fn debug_reload_keeps_locks_fences_and_the_counter() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let locks = take_locks(&mut c, 20);
        let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
        assert_held(flavor, &mut c, &locks, "after DEBUG RELOAD");
        let next = acquire(&mut c, "fresh", "t", 1_000).unwrap();
        assert!(
            next > max_fence(&locks),
            "{flavor}: counter continues after reload"
        );
        // Reloaded locks are indexed again: they still expire on their own.
        acquire(&mut c, "short", "t", 200).unwrap();
        let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
        wait_gone(&mut c, "short", Duration::from_secs(5));
    }
}

#[test]
fn aof_rewrite_without_rdb_preamble_then_loadaof_keeps_locks() {
    for flavor in testkit::flavors() {
        let server = Server::builder(flavor)
            .appendonly(true)
            .arg("aof-use-rdb-preamble", "no")
            .start();
        let mut c = server.conn();
        let locks = take_locks(&mut c, 20);
        let _: () = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap_or(());
        testkit::wait_aof_rewrite(&mut c, Duration::from_secs(20));
        let aof_text = testkit::read_aof(server.dir());
        assert!(
            aof_text.contains("LOCK.LOAD"),
            "{flavor}: the rewrite emits LOCK.LOAD"
        );
        let _: () = redis::cmd("DEBUG").arg("LOADAOF").query(&mut c).unwrap();
        assert_held(flavor, &mut c, &locks, "after BGREWRITEAOF + DEBUG LOADAOF");
        assert!(acquire(&mut c, "fresh", "t", 1_000).unwrap() > max_fence(&locks));
    }
}

#[test]
fn restart_with_appendfsync_always_keeps_every_acknowledged_lock() {
    for flavor in testkit::flavors() {
        let mut server = Server::builder(flavor).appendonly(true).start();
        let mut c = server.conn();
        let locks = take_locks(&mut c, 50);
        // A released lock's fence must not be handed out again either.
        let released = acquire(&mut c, "gone", "t", 240_000).unwrap();
        let _: i64 = redis::cmd("LOCK.RELEASE")
            .arg("gone")
            .arg("t")
            .query(&mut c)
            .unwrap();
        server.kill();
        server.start_again();
        let mut c = server.conn();
        assert_held(flavor, &mut c, &locks, "after kill -9 and restart");
        let next = acquire(&mut c, "fresh", "t", 1_000).unwrap();
        assert!(next > released, "{flavor}: {next} > {released}");
    }
}

#[test]
fn restart_from_rdb_keeps_locks() {
    for flavor in testkit::flavors() {
        let mut server = Server::builder(flavor).rdb().start();
        let mut c = server.conn();
        let locks = take_locks(&mut c, 20);
        server.shutdown_save();
        server.start_again();
        let mut c = server.conn();
        assert_held(flavor, &mut c, &locks, "after SHUTDOWN SAVE and restart");
    }
}

/// The counter's floor at start-up comes from the wall clock. Move that clock
/// back a day across the restart, so only the persisted counter can keep the
/// next fence above the old ones (no lock is held: nothing else carries it).
#[test]
fn fencing_counter_survives_a_restart_with_the_clock_set_back() {
    for flavor in testkit::faketime_flavors() {
        for persistence in ["rdb", "aof"] {
            let builder = Server::builder(flavor).faketime();
            let builder = if persistence == "rdb" {
                builder.rdb()
            } else {
                builder.appendonly(true)
            };
            let mut server = builder.start();
            let mut c = server.conn();
            let mut last = 0;
            for i in 0..20 {
                let key = format!("k{i}");
                last = acquire(&mut c, &key, "t", 60_000).unwrap();
                let _: i64 = redis::cmd("LOCK.RELEASE")
                    .arg(&key)
                    .arg("t")
                    .query(&mut c)
                    .unwrap();
            }
            assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 0);
            if persistence == "rdb" {
                server.shutdown_save();
            } else {
                server.kill();
            }
            server.set_fake_offset("-1d");
            server.start_again();
            let mut c = server.conn();
            let (secs, _): (i64, i64) = redis::cmd("TIME").query(&mut c).unwrap();
            let real = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            assert!(
                real - secs > 80_000,
                "{flavor}: the node's clock is a day behind ({secs} vs {real})"
            );
            let next = acquire(&mut c, "after", "t", 1_000).unwrap();
            assert!(
                next > last,
                "{flavor} {persistence}: fence {next} after restart must exceed {last}"
            );
        }
    }
}
