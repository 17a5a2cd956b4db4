//! The server's own operations around locks, tried as a hostile operator
//! would: a write pause (what FAILOVER does), waits that time out or are
//! unblocked, native TTLs and eviction on lock keys, SWAPDB, writable
//! replicas. Each test here failed on the module before its fix.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use redis::{Connection, Value};
use std::thread;
use std::time::{Duration, Instant};
use testkit::lockcmd::{acquire, acquire_with, error_of, fingerprint, info, owner, release};
use testkit::{eventually, Flavor, Server};

fn used_memory(c: &mut Connection) -> i64 {
    testkit::info_field(c, "memory", "used_memory")
}

/// `round(c, 50)` to warm up (allocator pools, the timer table), then
/// `round(c, n)`; asserts that the second kept less than 128 KB of
/// `used_memory` (what per-request leaks of a few hundred bytes exceed).
fn assert_memory_returns(
    flavor: Flavor,
    what: &str,
    c: &mut Connection,
    n: usize,
    mut round: impl FnMut(&mut Connection, usize),
) {
    round(c, 50);
    let before = used_memory(c);
    round(c, n);
    let after = used_memory(c);
    eprintln!("{flavor}: {before} -> {after} bytes after {n} {what}");
    assert!(
        after - before < 128 * 1024,
        "{flavor}: {n} {what} kept {} bytes",
        after - before
    );
}

fn waiters_on(c: &mut Connection, key: &str) -> i64 {
    info(c, key).map_or(0, |i| i["waiters"])
}

fn wait_for_waiters(c: &mut Connection, key: &str, n: i64) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} waiters on {key}"),
        || (waiters_on(c, key) == n).then_some(()),
    );
}

type Waiter = thread::JoinHandle<(redis::RedisResult<Value>, Connection)>;

/// A client that waits for `key` on its own connection; the thread returns
/// its reply (or the read error) and the connection, for what comes next.
fn waiter(
    server: &Server,
    key: &'static str,
    token: &'static str,
    ttl: u64,
    wait: u64,
    read_timeout: Duration,
) -> Waiter {
    waiter_with_id(server, key, token, ttl, wait, read_timeout).0
}

/// [`waiter`], and the waiting client's `CLIENT ID`.
fn waiter_with_id(
    server: &Server,
    key: &'static str,
    token: &'static str,
    ttl: u64,
    wait: u64,
    read_timeout: Duration,
) -> (Waiter, i64) {
    let mut c = server.conn();
    c.set_read_timeout(Some(read_timeout)).unwrap();
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    let handle = thread::spawn(move || {
        let got = redis::cmd("LOCK.ACQUIRE")
            .arg(key)
            .arg(token)
            .arg(ttl)
            .arg("WAIT")
            .arg(wait)
            .query::<Value>(&mut c);
        (got, c)
    });
    (handle, id)
}

fn pause(c: &mut Connection, ms: u64, mode: &str) {
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg(mode)
        .query(c)
        .unwrap();
}

/// Finding 1: a lock that ends, or is handed over, while writes are paused
/// used to abort the server (propagation from a timer during a pause) once
/// it had an AOF or a replica. Now the sweeper and the hand-over wait for
/// the pause to end, and then do their work.
#[test]
fn a_lock_ending_during_a_write_pause_waits_for_the_pause_and_does_not_crash() {
    for flavor in testkit::flavors() {
        for with_replica in [false, true] {
            for mode in ["WRITE", "ALL"] {
                let mut builder = Server::builder(flavor);
                if !with_replica {
                    builder = builder.appendonly(false);
                }
                let primary = builder.start();
                let replica = with_replica.then(|| {
                    let r = Server::builder(flavor)
                        .replica_of(&primary)
                        .arg("repl-diskless-sync-delay", "0")
                        .start();
                    r.wait_replica_synced(Duration::from_secs(20));
                    r
                });
                let what = format!("{flavor}, replica {with_replica}, PAUSE {mode}");
                let mut c = primary.conn();
                acquire(&mut c, "ends", "a", 200).unwrap();
                acquire(&mut c, "handed", "a", 200).unwrap();
                let next = waiter(
                    &primary,
                    "handed",
                    "b",
                    60_000,
                    10_000,
                    Duration::from_secs(10),
                );
                wait_for_waiters(&mut c, "handed", 1);
                pause(&mut c, 800, mode);
                thread::sleep(Duration::from_millis(500));
                // Both deadlines have passed inside the pause.
                assert!(primary.is_running(), "{what}: the server died");
                let mut probe = primary.conn();
                let pong: String = redis::cmd("PING").query(&mut probe).unwrap();
                assert_eq!(pong, "PONG", "{what}");
                let (got, _) = next.join().unwrap();
                let fence = match got {
                    Ok(Value::Int(f)) => f,
                    other => panic!("{what}: the waiter got {other:?}"),
                };
                assert!(primary.is_running(), "{what}: the server died");
                assert_eq!(info(&mut c, "handed").unwrap()["fence"], fence, "{what}");
                testkit::lockcmd::wait_gone(&mut c, "ends", Duration::from_secs(5));
                if let Some(replica) = &replica {
                    let mut r = replica.conn();
                    testkit::lockcmd::wait_gone(&mut r, "ends", Duration::from_secs(5));
                    eventually(Duration::from_secs(5), "the hand-over replicated", || {
                        (owner(&mut r, "handed") == Some(fingerprint(b"b"))).then_some(())
                    });
                }
            }
        }
    }
}

/// Finding 2: every `WAIT` that timed out kept its blocked-client handle
/// (about 35 KB each on Redis 7.0). Now memory returns to where it was.
#[test]
fn timed_out_waits_leave_no_memory_behind() {
    const WAITS: usize = 400;
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "holder", 240_000).unwrap();
        let mut w = server.conn();
        assert_memory_returns(flavor, "timed-out waits", &mut c, WAITS, |_, n| {
            for _ in 0..n {
                let got = acquire_with(&mut w, "k", "waiter", 1_000, &["WAIT", "1"]);
                assert_eq!(got, None);
            }
        });
        assert_eq!(waiters_on(&mut c, "k"), 0);
        assert_eq!(testkit::lockcmd::stats(&mut c)["wait_timeouts"], 450);
    }
}

/// Waits that their own token's `LOCK.RELEASE` ends (a quorum client
/// giving up) leave nothing behind: the handle, the timer, the queue entry.
#[test]
fn waits_cancelled_by_their_token_leave_no_memory_behind() {
    const WAITS: usize = 400;
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "holder", 240_000).unwrap();
        let mut w = server.conn();
        assert_memory_returns(flavor, "cancelled waits", &mut c, WAITS, |c, n| {
            for i in 0..n {
                let token = format!("w{i}");
                let wait = redis::cmd("LOCK.ACQUIRE")
                    .arg("k")
                    .arg(&token)
                    .arg(60_000)
                    .arg("WAIT")
                    .arg(60_000)
                    .arg("TICKET")
                    .arg(i)
                    .get_packed_command();
                w.send_packed_command(&wait).unwrap();
                eventually(Duration::from_secs(5), "queued", || {
                    (waiters_on(c, "k") == 1).then_some(())
                });
                assert_eq!(release(c, "k", &token), 0, "{flavor}: it held nothing");
                let reply: Value = w.recv_response().unwrap();
                assert_eq!(reply, Value::Nil, "{flavor}: the wait ended with nil");
            }
        });
        assert_eq!(waiters_on(&mut c, "k"), 0);
        let stats = testkit::lockcmd::stats(&mut c);
        assert_eq!(stats["waits_cancelled"], 450);
        assert_eq!(stats["wait_timeouts"], 0);
        assert_eq!(stats["waiters"], 0);
    }
}

/// Waiters that disconnect or are killed (`CLIENT KILL`) leave nothing
/// behind either.
#[test]
fn waiters_that_disconnect_or_are_killed_leave_no_memory_behind() {
    const WAITERS: usize = 60;
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "holder", 240_000).unwrap();
        let round = |c: &mut Connection, kill: bool| {
            let mut ids = Vec::new();
            let mut conns = Vec::new();
            for _ in 0..WAITERS {
                let mut w = server.conn();
                let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut w).unwrap();
                // Sent, not read: the client waits.
                let wait = redis::cmd("LOCK.ACQUIRE")
                    .arg("k")
                    .arg(format!("w{id}"))
                    .arg(60_000)
                    .arg("WAIT")
                    .arg(60_000)
                    .get_packed_command();
                w.send_packed_command(&wait).unwrap();
                ids.push(id);
                conns.push(w);
            }
            eventually(Duration::from_secs(5), "the waiters queued", || {
                (waiters_on(c, "k") == WAITERS as i64).then_some(())
            });
            if kill {
                for id in &ids {
                    let _: i64 = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("ID")
                        .arg(id)
                        .query(c)
                        .unwrap();
                }
            }
            drop(conns);
            eventually(Duration::from_secs(5), "the waiters gone", || {
                (waiters_on(c, "k") == 0 && testkit::lockcmd::stats(c)["waiters"] == 0)
                    .then_some(())
            });
        };
        round(&mut c, false);
        let before = used_memory(&mut c);
        for _ in 0..3 {
            round(&mut c, false);
            round(&mut c, true);
        }
        let after = used_memory(&mut c);
        eprintln!(
            "{flavor}: {before} -> {after} bytes after {} waiters left",
            6 * WAITERS
        );
        assert!(
            after - before < 128 * 1024,
            "{flavor}: kept {} bytes",
            after - before
        );
    }
}

/// `CLIENT UNBLOCK` does not end a lock wait (it replies 0): on Redis 7.0
/// an unblock in the same event-loop turn as a hand-over loses the grant's
/// reply. The waiter is still served, and nothing leaks.
#[test]
fn client_unblock_leaves_a_lock_wait_alone() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let (next, id) = waiter_with_id(&server, "k", "b", 60_000, 10_000, Duration::from_secs(10));
        wait_for_waiters(&mut c, "k", 1);
        for form in [&[][..], &["ERROR"][..], &["TIMEOUT"][..]] {
            let n: i64 = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .arg(form)
                .query(&mut c)
                .unwrap();
            assert_eq!(n, 0, "{flavor}: CLIENT UNBLOCK {form:?}");
        }
        assert_eq!(waiters_on(&mut c, "k"), 1, "{flavor}: still waiting");
        assert_eq!(release(&mut c, "k", "a"), 1);
        let (got, _) = next.join().unwrap();
        assert!(matches!(got, Ok(Value::Int(_))), "{flavor}: {got:?}");
        assert_eq!(owner(&mut c, "k"), Some(fingerprint(b"b")), "{flavor}");
    }
}

/// Checks that a waiter's reply and the lock agree: granted (a fence) and
/// holding it, or told nil and not holding it; and that the connection's
/// next reply is its own.
fn assert_reply_matches_the_lock(
    what: &str,
    got: redis::RedisResult<Value>,
    mut w: Connection,
    c: &mut Connection,
    token: &[u8],
) {
    let holds = owner(c, "k") == Some(fingerprint(token));
    match got {
        Ok(Value::Int(fence)) => {
            assert!(
                holds,
                "{what}: replied fence {fence} but does not hold the lock"
            );
            assert_eq!(info(c, "k").unwrap()["fence"], fence, "{what}");
        }
        Ok(Value::Nil) => assert!(!holds, "{what}: replied nil but holds the lock (phantom)"),
        other => panic!("{what}: no proper reply ({other:?}); holds the lock: {holds}"),
    }
    let echo: String = redis::cmd("ECHO").arg("mine").query(&mut w).unwrap();
    assert_eq!(echo, "mine", "{what}: replies shifted");
}

/// Finding 3: on Redis 7.0, a waiter whose `WAIT` had just run out, handed
/// the lock in the same event-loop turn, held it without ever hearing of
/// it, and its connection's replies were shifted by one. `DEBUG SLEEP`
/// puts the timeout and the release (or the expiry) in one turn.
#[test]
fn a_waiter_past_its_timeout_is_never_granted_without_hearing_of_it() {
    for flavor in testkit::flavors() {
        for expiry in [false, true] {
            let what = format!("{flavor}, {}", if expiry { "expiry" } else { "release" });
            let server = Server::start(flavor);
            let mut c = server.conn();
            let mut holder = server.conn();
            let ttl = if expiry { 200 } else { 60_000 };
            acquire(&mut c, "k", "a", ttl).unwrap();
            let next = waiter(&server, "k", "b", 60_000, 100, Duration::from_secs(3));
            wait_for_waiters(&mut c, "k", 1);
            // One read of the server: sleep past the wait's end, then release.
            let mut pipe = redis::pipe();
            pipe.cmd("DEBUG").arg("SLEEP").arg("0.3");
            if !expiry {
                pipe.cmd("LOCK.RELEASE").arg("k").arg("a");
            }
            let _: Vec<Value> = pipe.query(&mut holder).unwrap();
            let (got, w) = next.join().unwrap();
            assert_reply_matches_the_lock(&what, got, w, &mut c, b"b");
        }
    }
}

/// Finding 5: a lock key removed by a native TTL, a `RESTORE` with a TTL
/// or eviction left its waiters queued until their own timeout (or for
/// ever with `WAIT 0`): expired and evicted keys come as their own event
/// classes. Now the queue is served.
#[test]
fn waiters_are_served_when_a_native_ttl_or_eviction_removes_the_lock() {
    for flavor in testkit::flavors() {
        for how in ["PEXPIRE", "RESTORE", "evict"] {
            let what = format!("{flavor}, {how}");
            let server = Server::start(flavor);
            let mut c = server.conn();
            acquire(&mut c, "k", "a", 240_000).unwrap();
            let next = waiter(&server, "k", "b", 60_000, 0, Duration::from_secs(10));
            wait_for_waiters(&mut c, "k", 1);
            let started = Instant::now();
            match how {
                "PEXPIRE" => {
                    let n: i64 = redis::cmd("PEXPIRE")
                        .arg("k")
                        .arg(100)
                        .query(&mut c)
                        .unwrap();
                    assert_eq!(n, 1);
                }
                "RESTORE" => {
                    let dump: Vec<u8> = redis::cmd("DUMP").arg("k").query(&mut c).unwrap();
                    let () = redis::cmd("RESTORE")
                        .arg("k")
                        .arg(100)
                        .arg(dump)
                        .arg("REPLACE")
                        .query(&mut c)
                        .unwrap();
                }
                _ => {
                    let () = redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("maxmemory-policy")
                        .arg("allkeys-lru")
                        .query(&mut c)
                        .unwrap();
                    // Lowering maxmemory evicts at once (the lock is the only
                    // key); lifting it in the same read of the server (one
                    // write of a pipeline) means the hand-over that follows
                    // is not evicted in turn.
                    let _: Vec<Value> = redis::pipe()
                        .cmd("CONFIG")
                        .arg("SET")
                        .arg("maxmemory")
                        .arg(1)
                        .cmd("CONFIG")
                        .arg("SET")
                        .arg("maxmemory")
                        .arg(0)
                        .query(&mut c)
                        .unwrap();
                    assert_eq!(testkit::info_field(&mut c, "stats", "evicted_keys"), 1);
                }
            }
            let (got, _) = next.join().unwrap();
            assert!(matches!(got, Ok(Value::Int(_))), "{what}: {got:?}");
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
            assert_eq!(owner(&mut c, "k"), Some(fingerprint(b"b")), "{what}");
            assert_eq!(waiters_on(&mut c, "k"), 0, "{what}");
        }
    }
}

/// Finding 8: a writable replica (`replica-read-only no`) granted locks of
/// its own, which the next sync silently dropped. Any replica refuses lock
/// writes now; locks from the primary still arrive and show.
#[test]
fn lock_writes_are_refused_on_a_replica_even_a_writable_one() {
    for flavor in testkit::flavors() {
        let primary = Server::start(flavor);
        let replica = Server::builder(flavor)
            .replica_of(&primary)
            .arg("replica-read-only", "no")
            .arg("repl-diskless-sync-delay", "0")
            .start();
        replica.wait_replica_synced(Duration::from_secs(20));
        let mut p = primary.conn();
        let fence = acquire(&mut p, "k", "a", 60_000).unwrap();
        let mut r = replica.conn();
        eventually(Duration::from_secs(5), "the grant replicated", || {
            (info(&mut r, "k").map(|i| i["fence"]) == Some(fence)).then_some(())
        });
        let refused: [&[&[u8]]; 5] = [
            &[b"LOCK.ACQUIRE", b"free", b"t", b"1000"],
            &[b"LOCK.ACQUIRE", b"k", b"a", b"1000"],
            &[b"LOCK.EXTEND", b"k", b"a", b"1000"],
            &[b"LOCK.RELEASE", b"k", b"a"],
            &[b"LOCK.LOAD", b"k", b"anything"],
        ];
        for args in refused {
            let err = error_of(&mut r, args);
            assert!(err.starts_with("READONLY"), "{flavor}: {args:?}: {err}");
        }
        assert!(info(&mut r, "free").is_none(), "{flavor}");
        // Plain writes are still the operator's business on such a replica.
        let () = redis::cmd("SET").arg("x").arg("1").query(&mut r).unwrap();
        assert_eq!(release(&mut p, "k", "a"), 1);
        testkit::lockcmd::wait_gone(&mut r, "k", Duration::from_secs(5));
    }
}

/// Finding 9: after `SWAPDB 0 1` a client waiting in db 0 was granted the
/// lock in db 1. A waiter stays with its database, as Redis's own blocked
/// clients do: db 0 is empty after the swap, so it gets the lock there.
#[test]
fn after_swapdb_a_waiter_stays_in_its_database() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let next = waiter(&server, "k", "b", 60_000, 10_000, Duration::from_secs(10));
        wait_for_waiters(&mut c, "k", 1);
        let () = redis::cmd("SWAPDB").arg(0).arg(1).query(&mut c).unwrap();
        let (got, mut w) = next.join().unwrap();
        let Ok(Value::Int(fence)) = got else {
            panic!("{flavor}: the waiter got {got:?}")
        };
        assert_eq!(
            info(&mut c, "k").unwrap()["fence"],
            fence,
            "{flavor}: in db 0"
        );
        assert_eq!(owner(&mut c, "k"), Some(fingerprint(b"b")), "{flavor}");
        assert_eq!(
            release(&mut w, "k", "b"),
            1,
            "{flavor}: its release in db 0 works"
        );
        let () = redis::cmd("SELECT").arg(1).query(&mut c).unwrap();
        assert_eq!(
            owner(&mut c, "k"),
            Some(fingerprint(b"a")),
            "{flavor}: db 1 unchanged"
        );
    }
}

/// Finding 10: `TICKET` without `WAIT` was accepted silently.
#[test]
fn ticket_without_wait_is_refused() {
    let flavor: Flavor = testkit::first_flavor();
    let server = Server::start(flavor);
    let mut c = server.conn();
    let err = error_of(
        &mut c,
        &[b"LOCK.ACQUIRE", b"k", b"t", b"1000", b"TICKET", b"5"],
    );
    assert!(
        err.starts_with("ERR") && err.contains("TICKET needs WAIT"),
        "{err}"
    );
    assert!(info(&mut c, "k").is_none(), "refused, nothing changed");
}

/// A lock costs the same however often it is extended: each extension used
/// to leave an expiry-index entry behind until the old deadline passed
/// (about 97 B each; a lock renewed every second for its 10-minute TTL
/// cost tens of KB).
#[test]
fn extensions_keep_one_index_entry_per_lock() {
    let server = Server::start(testkit::first_flavor());
    let mut c = server.conn();
    let entries = |c: &mut Connection| testkit::lockcmd::stats(c)["expiry_index_entries"];
    acquire(&mut c, "k", "a", 240_000).unwrap();
    for i in 0..20 {
        assert_eq!(testkit::lockcmd::extend(&mut c, "k", "a", 240_000 + i), 1);
        acquire(&mut c, "k", "a", 240_100 + i).unwrap(); // a refresh, too
    }
    assert_eq!(entries(&mut c), 1);
    assert_eq!(release(&mut c, "k", "a"), 1);
    assert_eq!(entries(&mut c), 0);
}

/// `MEMORY USAGE` of a lock counts its expiry-index entry and does not grow
/// as the lock is extended; on Redis 7.0 a lock with a 40-byte token costs
/// at most 1.5x a `SET key token PX ttl` key by that measure.
#[test]
fn memory_usage_of_a_lock_stays_put_across_extensions() {
    const N: usize = 1_000;
    let token = "0123456789abcdef0123456789abcdef01234567";
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let usage = |c: &mut Connection, key: &str| -> i64 {
            redis::cmd("MEMORY").arg("USAGE").arg(key).query(c).unwrap()
        };
        let each = |command: &str| {
            let mut pipe = redis::pipe();
            for i in 0..N {
                pipe.cmd(command)
                    .arg(format!("lock:{i:07}"))
                    .arg(token)
                    .arg(240_000)
                    .ignore();
            }
            pipe
        };
        let () = each("LOCK.ACQUIRE").query(&mut c).unwrap();
        let fresh = usage(&mut c, "lock:0000042");
        for _ in 0..10 {
            let () = each("LOCK.EXTEND").query(&mut c).unwrap();
        }
        let extended = usage(&mut c, "lock:0000042");
        assert_eq!(
            testkit::lockcmd::stats(&mut c)["expiry_index_entries"],
            N as i64,
            "{flavor}: one index entry per lock"
        );
        // The index's shared slack moves with the buckets: a few bytes.
        assert!(
            (extended - fresh).abs() <= 8,
            "{flavor}: {fresh} B fresh, {extended} B after 10 extensions"
        );
        let lock_alone = 80 + 16 + 24; // the lock, its 12-byte name, its dict entry
        assert!(
            extended > lock_alone,
            "{flavor}: {extended} B counts the index entry"
        );
        if flavor == Flavor::Redis7 {
            let _: () = redis::cmd("SET")
                .arg("str:0000042")
                .arg(token)
                .arg("PX")
                .arg(240_000)
                .query(&mut c)
                .unwrap();
            let string = usage(&mut c, "str:0000042");
            assert!(
                extended * 2 <= string * 3,
                "{flavor}: lock {extended} B vs SET PX key {string} B"
            );
        }
    }
}
