//! Server-side waiting: LOCK.ACQUIRE ... WAIT queues clients FIFO and hands
//! the lock over the moment it is released or expires.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use redis::{Connection, Value};
use std::thread;
use std::time::{Duration, Instant};
use testkit::lockcmd::{acquire, acquire_with, info, owner, release};
use testkit::{eventually, Server};

/// Start a waiter on its own connection; returns its join handle.
fn wait_in_thread(
    server: &Server,
    key: &'static str,
    token: &'static str,
    ttl: u64,
    wait: u64,
) -> thread::JoinHandle<(Option<i64>, Instant)> {
    let mut c = server.conn();
    thread::spawn(move || {
        let got = acquire_with(&mut c, key, token, ttl, &["WAIT", &wait.to_string()]);
        (got, Instant::now())
    })
}

fn wait_for_waiters(c: &mut Connection, key: &str, n: i64) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} waiters on {key}"),
        || (info(c, key).map(|i| i["waiters"]) == Some(n)).then_some(()),
    );
}

#[test]
fn release_hands_the_lock_to_the_waiter() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let first = acquire(&mut c, "k", "a", 60_000).unwrap();
        let waiter = wait_in_thread(&server, "k", "b", 60_000, 10_000);
        wait_for_waiters(&mut c, "k", 1);
        let released_at = Instant::now();
        assert_eq!(release(&mut c, "k", "a"), 1);
        let (got, woke_at) = waiter.join().unwrap();
        let fence = got.expect("the waiter is granted the lock");
        assert!(fence > first, "{flavor}");
        assert!(woke_at >= released_at);
        assert_eq!(
            info(&mut c, "k").unwrap()["fence"],
            fence,
            "{flavor}: held by the waiter now"
        );
        assert_eq!(
            acquire(&mut c, "k", "a", 1_000),
            None,
            "{flavor}: not free in between"
        );
        assert_eq!(info(&mut c, "k").unwrap()["waiters"], 0);
    }
}

#[test]
fn expiry_hands_the_lock_over_at_the_deadline_not_before() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let taken_at = Instant::now();
        acquire(&mut c, "k", "a", 300).unwrap();
        let waiter = wait_in_thread(&server, "k", "b", 60_000, 10_000);
        let (got, woke_at) = waiter.join().unwrap();
        assert!(got.is_some(), "{flavor}: granted at expiry");
        assert!(
            woke_at.duration_since(taken_at) >= Duration::from_millis(290),
            "{flavor}: never before the deadline"
        );
        let stats: String = redis::cmd("INFO").arg("lock").query(&mut c).unwrap();
        assert!(stats.contains("lock_handovers:1"), "{flavor}: {stats}");
    }
}

#[test]
fn waiters_are_served_in_arrival_order() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let mut handles = Vec::new();
        for (i, token) in ["w1", "w2", "w3", "w4"].into_iter().enumerate() {
            handles.push((token, wait_in_thread(&server, "k", token, 60_000, 20_000)));
            wait_for_waiters(&mut c, "k", i as i64 + 1);
        }
        let mut holder = "a";
        let mut fences = Vec::new();
        for (token, handle) in handles {
            assert_eq!(release(&mut c, "k", holder), 1);
            let (got, _) = handle.join().unwrap();
            fences.push(got.unwrap_or_else(|| panic!("{flavor}: {token} not served")));
            holder = token;
        }
        assert!(
            fences.windows(2).all(|w| w[0] < w[1]),
            "{flavor}: {fences:?}"
        );
    }
}

#[test]
fn a_timed_out_wait_replies_nil_and_leaves_no_trace() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let mut w = server.conn();
        let started = Instant::now();
        assert_eq!(
            acquire_with(&mut w, "k", "b", 60_000, &["WAIT", "200"]),
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(190), "{flavor}");
        assert_eq!(info(&mut c, "k").unwrap()["waiters"], 0);
        assert_eq!(release(&mut c, "k", "a"), 1);
        assert_eq!(
            info(&mut c, "k"),
            None,
            "{flavor}: nobody was handed the lock"
        );
        let stats: String = redis::cmd("INFO").arg("lock").query(&mut c).unwrap();
        assert!(
            stats.contains("lock_wait_timeouts:1") && stats.contains("lock_waiters:0"),
            "{flavor}: {stats}"
        );
    }
}

#[test]
fn a_disconnected_waiter_is_skipped() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        // This waiter gives up on its side (read timeout) and drops its connection.
        let mut quitter = server.conn();
        quitter
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let gone = thread::spawn(move || {
            let r = redis::cmd("LOCK.ACQUIRE")
                .arg("k")
                .arg("gone")
                .arg(60_000)
                .arg("WAIT")
                .arg(30_000)
                .query::<Option<i64>>(&mut quitter);
            assert!(r.is_err(), "the quitter times out on its side");
        });
        gone.join().unwrap();
        wait_for_waiters(&mut c, "k", 0);
        let next = wait_in_thread(&server, "k", "next", 60_000, 10_000);
        wait_for_waiters(&mut c, "k", 1);
        assert_eq!(release(&mut c, "k", "a"), 1);
        let (got, _) = next.join().unwrap();
        assert!(got.is_some(), "{flavor}: the live waiter is served");
        assert_eq!(owner(&mut c, "k"), Some(lock_owner_of("next")));
    }
}

#[test]
fn deleting_the_key_serves_the_waiters() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let waiter = wait_in_thread(&server, "k", "b", 60_000, 10_000);
        wait_for_waiters(&mut c, "k", 1);
        let _: i64 = redis::cmd("DEL").arg("k").query(&mut c).unwrap();
        let (got, _) = waiter.join().unwrap();
        assert!(got.is_some(), "{flavor}: a waiter is not stranded by DEL");
    }
}

#[test]
fn wait_inside_multi_and_lua_is_a_single_try() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let started = Instant::now();
        let replies: Vec<Value> = redis::pipe()
            .atomic()
            .cmd("LOCK.ACQUIRE")
            .arg("k")
            .arg("b")
            .arg(1_000)
            .arg("WAIT")
            .arg(5_000)
            .query(&mut c)
            .unwrap();
        assert_eq!(replies, [Value::Nil], "{flavor}");
        let script = redis::Script::new(
            "return redis.call('LOCK.ACQUIRE', KEYS[1], ARGV[1], 1000, 'WAIT', 5000)",
        );
        let got: Option<i64> = script.key("k").arg("b").invoke(&mut c).unwrap();
        assert_eq!(got, None);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{flavor}: neither blocked"
        );
        assert_eq!(info(&mut c, "k").unwrap()["waiters"], 0);
    }
}

#[test]
fn a_handed_over_grant_replicates() {
    for flavor in testkit::flavors() {
        let primary = Server::start(flavor);
        let replica = Server::builder(flavor).replica_of(&primary).start();
        replica.wait_replica_synced(Duration::from_secs(10));
        let mut p = primary.conn();
        acquire(&mut p, "k", "a", 60_000).unwrap();
        let waiter = wait_in_thread(&primary, "k", "b", 60_000, 10_000);
        wait_for_waiters(&mut p, "k", 1);
        release(&mut p, "k", "a");
        let fence = waiter.join().unwrap().0.unwrap();
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(5_000).query(&mut p).unwrap();
        assert_eq!(acked, 1);
        let mut r = replica.conn();
        assert_eq!(info(&mut r, "k").unwrap()["fence"], fence, "{flavor}");
        assert_eq!(owner(&mut r, "k"), Some(lock_owner_of("b")));
    }
}

/// The fingerprint LOCK.INFO shows for a token, asked of a throwaway
/// server (the module's rlib cannot be linked into a test binary: it
/// installs Redis's allocator).
fn lock_owner_of(token: &str) -> String {
    let server = Server::start(testkit::flavors()[0]);
    let mut c = server.conn();
    acquire(&mut c, "probe", token, 1_000).unwrap();
    owner(&mut c, "probe").unwrap()
}

#[test]
fn tickets_order_the_queue() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let mut handles = Vec::new();
        for (i, (token, ticket)) in [("t300", "300"), ("t100", "100"), ("t200", "200")]
            .into_iter()
            .enumerate()
        {
            let mut w = server.conn();
            handles.push((
                token,
                thread::spawn(move || {
                    acquire_with(
                        &mut w,
                        "k",
                        token,
                        60_000,
                        &["WAIT", "20000", "TICKET", ticket],
                    )
                }),
            ));
            wait_for_waiters(&mut c, "k", i as i64 + 1);
        }
        let mut holder = "a".to_string();
        let mut served = Vec::new();
        for _ in 0..3 {
            assert_eq!(release(&mut c, "k", holder.as_str()), 1);
            let next = testkit::eventually(Duration::from_secs(5), "next holder", || {
                handles.iter().position(|(_, h)| h.is_finished())
            });
            let (token, handle) = handles.remove(next);
            assert!(handle.join().unwrap().is_some());
            served.push(token);
            holder = token.to_string();
        }
        assert_eq!(served, ["t100", "t200", "t300"], "{flavor}");
    }
}

/// A client giving up on an acquisition sends `LOCK.RELEASE` with its token
/// to every node: where it waits, the wait ends (nil), so the lock goes to
/// the next waiter, not to a client that has left.
#[test]
fn release_by_a_waiting_token_ends_its_wait_and_the_next_waiter_is_served() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let quitter = wait_in_thread(&server, "k", "b", 60_000, 30_000);
        wait_for_waiters(&mut c, "k", 1);
        let next = wait_in_thread(&server, "k", "c", 60_000, 30_000);
        wait_for_waiters(&mut c, "k", 2);
        assert_eq!(release(&mut c, "k", "b"), 0, "{flavor}: b held nothing");
        let (got, _) = quitter.join().unwrap();
        assert_eq!(got, None, "{flavor}: b's wait ended with nil");
        wait_for_waiters(&mut c, "k", 1);
        assert_eq!(release(&mut c, "k", "a"), 1);
        assert!(next.join().unwrap().0.is_some(), "{flavor}");
        assert_eq!(owner(&mut c, "k").unwrap(), lock_owner_of("c"));
    }
}

/// A ticket from the future orders like the node's time of arrival: a
/// client whose clock runs a day ahead waits its turn, it is not put behind
/// every later waiter.
#[test]
fn a_ticket_from_the_future_counts_as_the_time_of_arrival() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let day_ahead = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
            + 86_400_000_000;
        let mut w = server.conn();
        let ahead = thread::spawn(move || {
            acquire_with(
                &mut w,
                "k",
                "ahead",
                60_000,
                &["WAIT", "20000", "TICKET", &day_ahead.to_string()],
            )
        });
        wait_for_waiters(&mut c, "k", 1);
        let later = wait_in_thread(&server, "k", "later", 60_000, 20_000);
        wait_for_waiters(&mut c, "k", 2);
        assert_eq!(release(&mut c, "k", "a"), 1);
        assert!(ahead.join().unwrap().is_some(), "{flavor}: first come");
        assert_eq!(release(&mut c, "k", "ahead"), 1);
        assert!(later.join().unwrap().0.is_some(), "{flavor}");
    }
}

#[test]
fn max_waiters_bounds_the_queue() {
    for flavor in testkit::flavors() {
        let server = Server::builder(flavor)
            .module_arg("max-waiters", "1")
            .start();
        let mut c = server.conn();
        acquire(&mut c, "k", "a", 60_000).unwrap();
        let first = wait_in_thread(&server, "k", "b", 60_000, 10_000);
        wait_for_waiters(&mut c, "k", 1);
        let mut w = server.conn();
        let started = Instant::now();
        assert_eq!(
            acquire_with(&mut w, "k", "c", 60_000, &["WAIT", "5000"]),
            None,
            "{flavor}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{flavor}: answered at once"
        );
        assert_eq!(testkit::lockcmd::stats(&mut c)["waits_refused"], 1);
        release(&mut c, "k", "a");
        assert!(first.join().unwrap().0.is_some());
    }
}
