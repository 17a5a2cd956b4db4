//! `acquire` waiting in the nodes' FIFO queues (`LOCK.ACQUIRE ... WAIT`)
//! against 5 real nodes: woken by release, splits resolved, cancellation
//! leaves no grant, and many contenders with mutual exclusion and no
//! starvation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_lock_client::{Client, Config};
use testkit::{lockcmd, NodeSet, Server};

const MS: Duration = Duration::from_millis(1);

fn client(set: &NodeSet, server_wait: bool) -> Client {
    let config = Config::builder(set.urls())
        .connect_timeout(100 * MS)
        .request_timeout(50 * MS)
        .server_wait(server_wait)
        .build()
        .unwrap();
    Client::new(config).unwrap()
}

fn waiters(server: &Server, key: &str) -> i64 {
    lockcmd::info(&mut server.conn(), key).map_or(0, |i| i["waiters"])
}

fn queued_everywhere(set: &NodeSet, key: &str, n: i64) {
    testkit::eventually(
        Duration::from_secs(5),
        &format!("{n} waiters on every node"),
        || set.nodes.iter().all(|s| waiters(s, key) == n).then_some(()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_acquire_is_woken_by_the_release() {
    let set = NodeSet::start(5, testkit::first_flavor());
    let a = client(&set, true);
    let b = client(&set, true);
    let held = a.try_acquire("res", 30_000 * MS).await.unwrap();
    let waiting = tokio::spawn(async move { b.acquire("res", 5_000 * MS, 10_000 * MS).await });
    // Queued behind the holder on a quorum of nodes (the holder may hold
    // only a quorum; the waiter then holds the nodes it left free).
    testkit::eventually(Duration::from_secs(5), "queued on a quorum", || {
        let queued = set.nodes.iter().filter(|s| waiters(s, "res") == 1).count();
        (queued >= 3).then_some(())
    });
    let released_at = Instant::now();
    a.release(&held).await.unwrap();
    let lease = waiting.await.unwrap().unwrap();
    let waited = released_at.elapsed();
    assert!(lease.nodes().len() >= 3, "granted by {:?}", lease.nodes());
    assert!(
        lease.fence() > held.fence(),
        "{} after {}",
        lease.fence(),
        held.fence()
    );
    // Woken by the hand-over, not by a poll: far below any polling delay.
    assert!(waited < 2_000 * MS, "took {waited:?}");
}

/// A holder that got only a bare quorum (nodes 0-2): the waiter queues on
/// those (it may take the free nodes meanwhile, and gives them back when
/// the rest does not follow within its split window); once the holder
/// releases it takes every node, and its release leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_a_bare_quorum_gets_every_node_once_released() {
    let set = NodeSet::start(5, testkit::first_flavor());
    for s in &set.nodes[..3] {
        assert!(lockcmd::acquire(&mut s.conn(), "res", "holder", 30_000).is_some());
    }
    let w = client(&set, true);
    let w2 = w.clone();
    let waiting = tokio::spawn(async move { w2.acquire("res", 5_000 * MS, 10_000 * MS).await });
    testkit::eventually(
        Duration::from_secs(5),
        "queued on the holder's nodes",
        || {
            set.nodes[..3]
                .iter()
                .all(|s| waiters(s, "res") == 1)
                .then_some(())
        },
    );
    tokio::time::sleep(100 * MS).await;
    assert!(!waiting.is_finished());
    for s in &set.nodes[..3] {
        assert_eq!(lockcmd::release(&mut s.conn(), "res", "holder"), 1);
    }
    let lease = waiting.await.unwrap().unwrap();
    assert!(lease.nodes().len() >= 3, "{:?}", lease.nodes());
    testkit::lockcmd::wait_held_everywhere(&set.nodes, "res");
    w.release(&lease).await.unwrap();
    testkit::eventually(Duration::from_secs(5), "nothing left", || {
        set.nodes
            .iter()
            .all(|s| lockcmd::info_on(s, "res").is_none())
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_acquire_leaves_no_waiter_and_no_grant() {
    let set = NodeSet::start(5, testkit::first_flavor());
    let a = client(&set, true);
    let b = client(&set, true);
    let held = a.try_acquire("res", 30_000 * MS).await.unwrap();
    let gave_up = tokio::time::timeout(300 * MS, b.acquire("res", 5_000 * MS, 10_000 * MS)).await;
    assert!(gave_up.is_err(), "still waiting when cancelled");
    // Dropping the future closed its connections: the nodes forget the waiter.
    queued_everywhere(&set, "res", 0);
    a.release(&held).await.unwrap();
    testkit::eventually(Duration::from_secs(5), "free on every node", || {
        set.nodes
            .iter()
            .all(|s| lockcmd::info(&mut s.conn(), "res").is_none())
            .then_some(())
    });
}

/// Tasks contend for one lock, each taking it `rounds` times. Returns the
/// longest single wait.
async fn contend(set: &NodeSet, server_wait: bool, tasks: usize, rounds: usize) -> Duration {
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let waits = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let c = client(set, server_wait);
        let (counter, inside, waits) = (counter.clone(), inside.clone(), waits.clone());
        handles.push(tokio::spawn(async move {
            for r in 0..rounds {
                let asked = Instant::now();
                let lease = c
                    .acquire("shared", 2_000 * MS, 30_000 * MS)
                    .await
                    .unwrap_or_else(|e| panic!("task {t} round {r} starved: {e}"));
                waits.lock().unwrap().push(asked.elapsed());
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                let seen = counter.load(Ordering::SeqCst);
                tokio::time::sleep(2 * MS).await;
                counter.store(seen + 1, Ordering::SeqCst);
                inside.store(false, Ordering::SeqCst);
                c.release(&lease).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        counter.load(Ordering::SeqCst),
        (tasks * rounds) as u64,
        "no lost update"
    );
    let waits = waits.lock().unwrap();
    *waits.iter().max().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queued_contenders_keep_mutual_exclusion_and_nobody_starves() {
    let set = NodeSet::start(5, testkit::first_flavor());
    // The bound: every acquisition succeeds within its 30 s budget (a
    // starved task fails its acquire and the test).
    let longest = contend(&set, true, 8, 6).await;
    eprintln!("queued: longest wait {longest:?}");
    assert!(longest < 30_000 * MS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_still_works() {
    let set = NodeSet::start(5, testkit::first_flavor());
    let longest = contend(&set, false, 4, 4).await;
    eprintln!("polling: longest wait {longest:?}");
}
