//! Effects reach replicas: same holder, same fence, a deadline never earlier;
//! replicas refuse writes; a promoted replica refuses a second holder.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use redis::Connection;
use std::time::{Duration, Instant};
use testkit::lockcmd::{acquire, info, owner, wait_gone};
use testkit::Server;

fn wait_replicated(primary: &mut Connection) {
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5_000).query(primary).unwrap();
    assert_eq!(acked, 1, "the replica acknowledged the writes");
}

fn digest(conn: &mut Connection) -> String {
    redis::cmd("DEBUG").arg("DIGEST").query(conn).unwrap()
}

#[test]
fn a_replica_ends_with_the_same_locks_and_digest() {
    for flavor in testkit::flavors() {
        let primary = Server::start(flavor);
        // Some state before the replica attaches travels by full sync (RDB),
        // the rest by the command stream.
        let mut p = primary.conn();
        let early = acquire(&mut p, "early", "tok-early", 240_000).unwrap();
        let replica = Server::builder(flavor).replica_of(&primary).start();
        replica.wait_replica_synced(Duration::from_secs(10));
        let mut r = replica.conn();
        let mut fences = vec![("early".to_string(), early)];
        for i in 0..30 {
            let key = format!("k{i}");
            fences.push((
                key.clone(),
                acquire(&mut p, &key, format!("t{i}"), 240_000).unwrap(),
            ));
        }
        let _: i64 = redis::cmd("LOCK.EXTEND")
            .arg("k1")
            .arg("t1")
            .arg(200_000)
            .query(&mut p)
            .unwrap();
        let _: i64 = redis::cmd("LOCK.RELEASE")
            .arg("k2")
            .arg("t2")
            .query(&mut p)
            .unwrap();
        wait_replicated(&mut p);
        for (key, fence) in &fences {
            if key == "k2" {
                assert_eq!(info(&mut r, key), None, "{flavor}: release replicated");
                continue;
            }
            let between = Instant::now();
            let on_primary = info(&mut p, key).unwrap();
            let on_replica =
                info(&mut r, key).unwrap_or_else(|| panic!("{flavor}: {key} missing on replica"));
            // The replica is read later: its TTL may be lower by the time
            // between the two reads (measured, not guessed: a loaded machine
            // can take more than a few milliseconds), plus 1 ms of rounding.
            let slack = i64::try_from(between.elapsed().as_millis()).unwrap() + 1;
            assert_eq!(on_replica["fence"], *fence, "{flavor}: {key}");
            assert_eq!(on_replica["extensions"], on_primary["extensions"]);
            assert_eq!(owner(&mut r, key), owner(&mut p, key));
            // Read after the primary: a deadline that is never earlier.
            assert!(
                on_replica["ttl"] >= on_primary["ttl"] - slack,
                "{flavor}: {key}: replica {on_replica:?} primary {on_primary:?}"
            );
        }
        assert_eq!(digest(&mut p), digest(&mut r), "{flavor}: DEBUG DIGEST");
        let err = redis::cmd("LOCK.ACQUIRE")
            .arg("x")
            .arg("t")
            .arg(100)
            .query::<redis::Value>(&mut r)
            .unwrap_err();
        assert!(
            testkit::error_text(&err).starts_with("READONLY"),
            "{flavor}: {err}"
        );
    }
}

#[test]
fn expiry_on_the_primary_reaches_the_replica_as_a_delete() {
    for flavor in testkit::flavors() {
        let primary = Server::start(flavor);
        let replica = Server::builder(flavor).replica_of(&primary).start();
        replica.wait_replica_synced(Duration::from_secs(10));
        let mut p = primary.conn();
        let mut r = replica.conn();
        acquire(&mut p, "short", "t", 100).unwrap();
        wait_replicated(&mut p);
        wait_gone(&mut r, "short", Duration::from_secs(5));
    }
}

#[test]
fn a_promoted_replica_refuses_a_second_holder() {
    for flavor in testkit::flavors() {
        let mut primary = Server::start(flavor);
        let replica = Server::builder(flavor).replica_of(&primary).start();
        replica.wait_replica_synced(Duration::from_secs(10));
        let mut p = primary.conn();
        let fence = acquire(&mut p, "res", "first", 240_000).unwrap();
        wait_replicated(&mut p);
        primary.kill();
        let mut r = replica.conn();
        let _: () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query(&mut r)
            .unwrap();
        assert_eq!(
            acquire(&mut r, "res", "second", 10_000),
            None,
            "{flavor}: the lock that replicated is held"
        );
        assert_eq!(
            acquire(&mut r, "res", "first", 240_000),
            Some(fence),
            "{flavor}: by its holder"
        );
        let next = acquire(&mut r, "other", "x", 10_000).unwrap();
        assert!(
            next > fence,
            "{flavor}: fences keep increasing after failover"
        );
        // The promoted node now expires locks itself.
        acquire(&mut r, "short", "x", 100).unwrap();
        wait_gone(&mut r, "short", Duration::from_secs(5));
    }
}

/// `MOVE key db` leaves the operator's connection on its own database, and
/// the replica applies the same `MOVE`. Valkey 8.1 runs a module's keyspace
/// callbacks on the executing client after selecting the event's database
/// and does not select back (valkey-io/valkey#4024, fixed in 9): with the
/// module subscribed, `move_to` left the client on the destination, so its
/// next command ran there and the `MOVE` reached the replica under
/// `SELECT <destination>` (which the replica refused: "source and
/// destination objects are the same"). The module selects the source
/// database back after `move_to`.
#[test]
fn move_leaves_the_client_on_its_database_and_the_replica_in_step() {
    for flavor in testkit::flavors() {
        let primary = Server::start(flavor);
        let replica = Server::builder(flavor).replica_of(&primary).start();
        replica.wait_replica_synced(Duration::from_secs(10));
        let mut p = primary.conn();
        acquire(&mut p, "held", "tok", 240_000).unwrap();
        let _: () = redis::cmd("SET")
            .arg("plain")
            .arg("v")
            .query(&mut p)
            .unwrap();
        for key in ["held", "plain"] {
            let moved: i64 = redis::cmd("MOVE").arg(key).arg(1).query(&mut p).unwrap();
            assert_eq!(moved, 1, "{flavor}: MOVE {key} 1");
            // The same connection, still on database 0.
            let _: () = redis::cmd("SET")
                .arg(format!("after-{key}"))
                .arg("x")
                .query(&mut p)
                .unwrap();
        }
        wait_replicated(&mut p);
        for (conn, who) in [(&mut p, "primary"), (&mut replica.conn(), "replica")] {
            let _: () = redis::cmd("SELECT").arg(0).query(conn).unwrap();
            let in_0: Vec<String> = redis::cmd("KEYS").arg("*").query(conn).unwrap();
            let _: () = redis::cmd("SELECT").arg(1).query(conn).unwrap();
            let mut in_1: Vec<String> = redis::cmd("KEYS").arg("*").query(conn).unwrap();
            let mut in_0 = in_0;
            in_0.sort();
            in_1.sort();
            assert_eq!(in_0, ["after-held", "after-plain"], "{flavor} {who}: db 0");
            assert_eq!(in_1, ["held", "plain"], "{flavor} {who}: db 1");
        }
        assert!(
            !replica.log().contains("CRITICAL"),
            "{flavor}: the replica refused its primary's stream"
        );
    }
}
