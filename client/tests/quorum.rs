//! The quorum client against real nodes started by `testkit`.
//!
//! Mutual exclusion is checked by data (a counter updated non-atomically in
//! the critical section, a flag that catches two holders at once), never by
//! timing. Every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_lock_client::{Client, Config, ConfigBuilder, Error, LossReason, NodeErrorKind, Token};
use testkit::{NodeSet, Server};

const MS: Duration = Duration::from_millis(1);

fn nodes(n: usize) -> NodeSet {
    NodeSet::start(n, testkit::first_flavor())
}

fn config(set: &NodeSet) -> ConfigBuilder {
    Config::builder(set.urls())
        .connect_timeout(100 * MS)
        .request_timeout(50 * MS)
}

fn client(set: &NodeSet) -> Client {
    Client::new(config(set).build().unwrap()).unwrap()
}

fn held_on(set: &NodeSet, key: &str) -> usize {
    testkit::lockcmd::held_on(&set.nodes, key)
}

/// Waits (bounded) until no node holds `key`: releases to the slowest nodes
/// finish in the background.
fn free_everywhere(set: &NodeSet, key: &str) {
    testkit::eventually(
        Duration::from_secs(5),
        &format!("{key} free on every node"),
        || (held_on(set, key) == 0).then_some(()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_extend_release_on_five_nodes() {
    let set = nodes(5);
    let c = client(&set);
    let mut lease = c.try_acquire("res", 2000 * MS).await.unwrap();
    assert_eq!(lease.resource(), "res");
    assert!(lease.nodes().len() >= 3, "granted by {:?}", lease.nodes());
    assert!(lease.remaining() > 1500 * MS && lease.remaining() <= 2000 * MS);
    assert!(lease.token().as_str().len() >= 40);
    // The fence is the largest of the granting nodes' fences, and every
    // node of the lease holds it (fenced acquisition raised them).
    let fences: Vec<i64> = lease
        .nodes()
        .iter()
        .map(|&i| testkit::lockcmd::info_on(&set.nodes[i], "res").unwrap()["fence"])
        .collect();
    assert_eq!(lease.fence(), *fences.iter().max().unwrap() as u64);
    assert!(
        fences.iter().all(|f| *f as u64 == lease.fence()),
        "{fences:?}"
    );

    let before = lease.valid_until();
    tokio::time::sleep(50 * MS).await;
    c.extend(&mut lease, 5000 * MS).await.unwrap();
    assert!(lease.valid_until() > before);
    assert!(lease.remaining() > 4000 * MS);
    let ttl_left = testkit::lockcmd::info_on(&set.nodes[lease.nodes()[0]], "res").unwrap()["ttl"];
    assert!(ttl_left > 4000, "node ttl {ttl_left}");

    let released = c.release(&lease).await.unwrap();
    // It returns once a quorum answered; the rest finish in the background.
    assert!(released.held >= 1, "{released:?}");
    assert!(released.held + released.not_held >= 3, "{released:?}");
    assert_eq!(released.held + released.not_held + released.pending, 5);
    free_everywhere(&set, "res");
    // Idempotent: a second release finds nothing to release.
    let again = c.release(&lease).await.unwrap();
    assert_eq!(again.held, 0, "{again:?}");
    assert!(again.not_held >= 3, "{again:?}");
    // And the resource is free for someone else.
    client(&set).try_acquire("res", 1000 * MS).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_taken_for_others() {
    let set = nodes(5);
    let a = client(&set);
    let b = client(&set);
    let lease = a.try_acquire("res", 5000 * MS).await.unwrap();
    // The slower nodes' grants finish in the background: count after them.
    assert!(a.settle(Duration::from_secs(5)).await);
    let holding = held_on(&set, "res");
    assert!(holding >= lease.nodes().len());
    let err = b.try_acquire("res", 5000 * MS).await.unwrap_err();
    assert!(err.is_taken(), "{err}");
    assert!(err.held_elsewhere().unwrap() >= 3, "{err}");
    // A failed round leaves nothing behind: only the holder's grants remain.
    assert_eq!(held_on(&set, "res"), holding);
    // Waiting a little does not help while it is held: timeout, and still "taken".
    let started = Instant::now();
    let err = b.acquire("res", 5000 * MS, 300 * MS).await.unwrap_err();
    assert!(err.is_timeout() && err.is_taken(), "{err}");
    assert!(started.elapsed() < 2000 * MS);
    a.release(&lease).await.unwrap();
    b.try_acquire("res", 5000 * MS).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_between_many_tasks_keeps_mutual_exclusion() {
    let set = nodes(5);
    const TASKS: usize = 8;
    const ROUNDS: usize = 10;
    // Updated non-atomically inside the critical section: a lost update
    // (two holders at once) shows up in the final count.
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let fences = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        // One client per task, as separate processes would have.
        let c = Client::new(
            config(&set)
                .retry_delay(5 * MS)
                .retry_jitter(20 * MS)
                .build()
                .unwrap(),
        )
        .unwrap();
        let (counter, inside, fences) = (counter.clone(), inside.clone(), fences.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let lease = c
                    .acquire("contended", 2000 * MS, 30_000 * MS)
                    .await
                    .unwrap();
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                fences.lock().unwrap().push(lease.fence());
                let seen = counter.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::time::sleep(MS).await;
                counter.store(seen + 1, Ordering::SeqCst);
                inside.store(false, Ordering::SeqCst);
                c.release(&lease).await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("contention finished in time")
            .unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), (TASKS * ROUNDS) as u64);
    // Fenced acquisition (the default): each holder released before the
    // next was granted, so the fences grow strictly from holder to holder,
    // whichever majorities granted them (tests/fencing.rs checks this under
    // faults).
    let fences = fences.lock().unwrap();
    assert_eq!(fences.len(), TASKS * ROUNDS);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences out of order: {fences:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extending_an_expired_lease_is_an_expired_error() {
    let set = nodes(3);
    let c = client(&set);
    let mut lease = c.try_acquire("res", 100 * MS).await.unwrap();
    tokio::time::sleep(150 * MS).await;
    let err = c.extend(&mut lease, 1000 * MS).await.unwrap_err();
    assert!(err.is_expired(), "{err}");
    // Released by someone else after expiry: extend says the lock is gone.
    let mut lease = c.try_acquire("res2", 2000 * MS).await.unwrap();
    for s in &set.nodes {
        let _: i64 = redis::cmd("DEL").arg("res2").query(&mut s.conn()).unwrap();
    }
    let err = c.extend(&mut lease, 2000 * MS).await.unwrap_err();
    assert_eq!(err.loss_reason(), Some(LossReason::NotHeld), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_or_two_nodes_down_still_work_three_down_fail_fast() {
    let mut set = nodes(5);
    let c = client(&set);
    c.connect().await.unwrap();

    set.nodes[0].kill();
    let lease = c.try_acquire("one-down", 2000 * MS).await.unwrap();
    assert!(!lease.nodes().contains(&0));
    c.release(&lease).await.unwrap();

    set.nodes[1].kill();
    let mut lease = c.try_acquire("two-down", 2000 * MS).await.unwrap();
    assert_eq!(lease.nodes(), &[2, 3, 4]);
    c.extend(&mut lease, 2000 * MS).await.unwrap();
    let released = c.release(&lease).await.unwrap();
    assert_eq!(released.held, 3, "{released:?}");
    assert_eq!(released.failed.len() + released.pending, 2, "{released:?}");

    set.nodes[2].kill();
    let started = Instant::now();
    let err = c.try_acquire("three-down", 2000 * MS).await.unwrap_err();
    let took = started.elapsed();
    assert!(err.is_unreachable(), "{err}");
    assert_eq!(err.node_errors().len(), 3, "{err}");
    assert!(took < 1000 * MS, "took {took:?}");
    // Nothing is left behind on the two live nodes.
    assert_eq!(held_on(&set, "three-down"), 0);
    // With a wait budget it keeps trying, then says why it gave up.
    let err = c
        .acquire("three-down", 2000 * MS, 200 * MS)
        .await
        .unwrap_err();
    assert!(err.is_timeout() && err.is_unreachable(), "{err}");

    // A node that comes back is reconnected.
    set.nodes[0].start_again();
    let lease = c.try_acquire("back", 2000 * MS).await.unwrap();
    assert!(lease.nodes().contains(&0), "{:?}", lease.nodes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_does_not_stall_acquisition() {
    let set = nodes(5);
    let c = client(&set);
    set.nodes[4].pause();
    // Won without the paused node: the answer comes from the other four.
    let started = Instant::now();
    let lease = c.try_acquire("paused", 5000 * MS).await.unwrap();
    assert!(
        started.elapsed() < 1000 * MS,
        "took {:?}",
        started.elapsed()
    );
    assert!(!lease.nodes().contains(&4));
    c.release(&lease).await.unwrap();

    // Nor release: it returns once a quorum answered, even when the hung
    // node's timeout is long.
    let patient = Client::new(
        config(&set)
            .connect_timeout(5000 * MS)
            .request_timeout(5000 * MS)
            .build()
            .unwrap(),
    )
    .unwrap();
    let lease = patient
        .try_acquire("paused-release", 5000 * MS)
        .await
        .unwrap();
    let started = Instant::now();
    let released = patient.release(&lease).await.unwrap();
    assert!(
        started.elapsed() < 1000 * MS,
        "took {:?}",
        started.elapsed()
    );
    assert!(released.pending >= 1, "{released:?}");

    // Now the paused node's answer is needed to decide (two nodes are held
    // by someone else): the round waits for its per-node timeout, no longer.
    let other = Token::random().unwrap();
    for s in &set.nodes[..2] {
        let _: i64 = redis::cmd("LOCK.ACQUIRE")
            .arg("paused2")
            .arg(other.as_str())
            .arg(10_000)
            .query(&mut s.conn())
            .unwrap();
    }
    let started = Instant::now();
    let err = c.try_acquire("paused2", 5000 * MS).await.unwrap_err();
    let took = started.elapsed();
    assert!(err.is_taken(), "{err}");
    assert!(
        err.node_errors()
            .iter()
            .any(|e| e.node == 4 && e.kind == NodeErrorKind::Timeout),
        "{err}"
    );
    assert!(took >= 50 * MS && took < 1000 * MS, "took {took:?}");
    set.nodes[4].resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_lost_replies_succeeds_with_the_same_token() {
    let set = nodes(5);
    let c = client(&set);
    let token = Token::random().unwrap();
    // A round whose requests all arrived but whose replies were lost.
    let mut fences = Vec::new();
    for s in &set.nodes {
        let f: i64 = redis::cmd("LOCK.ACQUIRE")
            .arg("lost-reply")
            .arg(token.as_str())
            .arg(10_000)
            .query(&mut s.conn())
            .unwrap();
        fences.push(f as u64);
    }
    // Another token is refused...
    assert!(c
        .try_acquire("lost-reply", 10_000 * MS)
        .await
        .unwrap_err()
        .is_taken());
    // ... the same token is granted again, with the same fences.
    let lease = c
        .try_acquire_with_token("lost-reply", 10_000 * MS, &token)
        .await
        .unwrap();
    assert_eq!(lease.token(), &token);
    assert!(fences.contains(&lease.fence()));
    assert!(lease.fence() <= *fences.iter().max().unwrap());
    c.release(&lease).await.unwrap();
    free_everywhere(&set, "lost-reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_keeps_trying_through_an_outage_of_the_majority() {
    let set = Arc::new(nodes(5));
    let c = client(&set);
    for s in &set.nodes[..3] {
        s.pause();
    }
    let resumer = {
        let set = set.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(400));
            for s in &set.nodes[..3] {
                s.resume();
            }
        })
    };
    let lease = c.acquire("outage", 5000 * MS, 10_000 * MS).await.unwrap();
    resumer.await.unwrap();
    assert!(lease.nodes().len() >= 3);
    c.release(&lease).await.unwrap();
    // The rounds that failed during the outage left nothing behind.
    free_everywhere(&set, "outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquisition_releases_what_it_was_granted() {
    let set = nodes(5);
    // Long timeouts so that the round is still undecided when cancelled.
    let c = Client::new(
        config(&set)
            .connect_timeout(5000 * MS)
            .request_timeout(5000 * MS)
            .build()
            .unwrap(),
    )
    .unwrap();
    c.connect().await.unwrap();
    for s in &set.nodes[..3] {
        s.pause();
    }
    let cancelled =
        tokio::time::timeout(200 * MS, c.acquire("cancel", 30_000 * MS, 10_000 * MS)).await;
    assert!(cancelled.is_err(), "the round should still be waiting");
    for s in &set.nodes[..3] {
        s.resume();
    }
    // The two live nodes granted; the background release frees them (and
    // the three that were paused, once they answer).
    free_everywhere(&set, "cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_renews_through_work_five_times_the_ttl() {
    let set = nodes(5);
    let c = client(&set);
    let other = client(&set);
    let ttl = 300 * MS;
    let out = c
        .with_lock("long-work", ttl, |held| {
            let other = other.clone();
            async move {
                let fence = held.fence();
                let end = Instant::now() + 5 * ttl;
                let mut checks = 0;
                while Instant::now() < end {
                    // Someone else trying all along never gets it.
                    let err = other.try_acquire("long-work", ttl).await.unwrap_err();
                    assert!(err.is_taken(), "{err}");
                    assert!(!held.is_lost());
                    assert_eq!(held.fence(), fence);
                    checks += 1;
                    tokio::time::sleep(50 * MS).await;
                }
                checks
            }
        })
        .await
        .unwrap();
    assert!(out >= 10, "{out} checks");
    // Leaving the closure released it.
    free_everywhere(&set, "long-work");
    other.try_acquire("long-work", ttl).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_is_signalled_when_the_lock_is_deleted_on_a_majority() {
    let set = nodes(5);
    let c = client(&set);
    let guard = c.lock("deleted", 600 * MS, 1000 * MS).await.unwrap();
    assert!(!guard.is_lost());
    testkit::lockcmd::wait_held_everywhere(&set.nodes, "deleted");
    for s in &set.nodes[..3] {
        let _: i64 = redis::cmd("DEL")
            .arg("deleted")
            .query(&mut s.conn())
            .unwrap();
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("loss signalled in time");
    assert_eq!(reason, LossReason::NotHeld);
    assert!(guard.is_lost());
    drop(guard);
    free_everywhere(&set, "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_is_signalled_when_a_majority_of_nodes_stops() {
    let mut set = nodes(5);
    let c = client(&set);
    let ttl = 600 * MS;
    let guard = c.lock("stopped", ttl, 1000 * MS).await.unwrap();
    let work = async {
        // Work that watches the signal.
        tokio::select! {
            reason = guard.lost() => Err(reason),
            _ = tokio::time::sleep(Duration::from_secs(30)) => Ok(()),
        }
    };
    let killer = async {
        tokio::time::sleep(100 * MS).await;
        for s in &mut set.nodes[..3] {
            s.kill();
        }
        Instant::now()
    };
    let (outcome, killed_at) = tokio::join!(work, killer);
    assert_eq!(outcome, Err(LossReason::Expired));
    // Signalled no later than the validity the client had when the nodes went.
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    assert!(guard.lease().valid_until() <= Instant::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_stops_the_work_when_the_lock_is_lost() {
    let set = Arc::new(nodes(5));
    let c = client(&set);
    let deleter = {
        let set = set.clone();
        tokio::task::spawn_blocking(move || {
            testkit::eventually(Duration::from_secs(5), "lock taken", || {
                (held_on(&set, "stopped-work") >= 3).then_some(())
            });
            for s in &set.nodes {
                let _: i64 = redis::cmd("DEL")
                    .arg("stopped-work")
                    .query(&mut s.conn())
                    .unwrap();
            }
        })
    };
    let started = Instant::now();
    let err = c
        .with_lock("stopped-work", 600 * MS, |_held| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await
        .unwrap_err();
    deleter.await.unwrap();
    assert!(
        matches!(
            err,
            Error::Lost {
                reason: LossReason::NotHeld,
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_stops_at_the_maximum_hold() {
    let set = nodes(3);
    let c = Client::new(config(&set).max_hold(900 * MS).build().unwrap()).unwrap();
    let started = Instant::now();
    let guard = c.lock("bounded", 300 * MS, 1000 * MS).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("loss signalled in time");
    assert_eq!(reason, LossReason::MaxHold);
    let held = started.elapsed();
    assert!(held >= 500 * MS, "renewed at least once: held {held:?}");
    assert!(guard.lease().valid_until() <= guard.lease().acquired_at() + 900 * MS);
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_guard_releases_in_the_background() {
    let set = nodes(3);
    let c = client(&set);
    let guard = c.lock("dropped", 5000 * MS, 1000 * MS).await.unwrap();
    assert!(held_on(&set, "dropped") >= 2);
    drop(guard);
    free_everywhere(&set, "dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_module_are_reported_as_such() {
    let set = NodeSet::start_with(3, |_| Server::builder(testkit::first_flavor()).no_module());
    let c = client(&set);
    let err = c.try_acquire("res", 1000 * MS).await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.node_errors().len() >= 2);
    assert!(
        err.node_errors().iter().all(|e| e.is_module_not_loaded()),
        "{err}"
    );
    assert!(err.to_string().contains("module not loaded"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_auth_failures_reported() {
    let set = nodes(3);
    for s in &set.nodes {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("s3cret")
            .query(&mut s.conn())
            .unwrap();
    }
    let urls = set.urls();
    let wrong = Client::new(config(&set).password("wrong").build().unwrap()).unwrap();
    let err = wrong.try_acquire("res", 1000 * MS).await.unwrap_err();
    assert!(err.node_errors().iter().all(|e| e.is_auth()), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");
    // From the builder, or in the URL.
    let right = Client::new(config(&set).password("s3cret").build().unwrap()).unwrap();
    let lease = right.try_acquire("res", 1000 * MS).await.unwrap();
    right.release(&lease).await.unwrap();
    let in_url: Vec<String> = urls
        .iter()
        .map(|u| u.replace("redis://", "redis://:s3cret@"))
        .collect();
    let c = Client::from_urls(in_url.join(",")).unwrap();
    c.try_acquire("res", 1000 * MS).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flavor_acquires_extends_and_releases() {
    for f in testkit::flavors() {
        let set = NodeSet::start(3, f);
        let c = client(&set);
        let mut lease = c.try_acquire("flavored", 1000 * MS).await.unwrap();
        c.extend(&mut lease, 1000 * MS).await.unwrap();
        assert!(client(&set)
            .try_acquire("flavored", 1000 * MS)
            .await
            .unwrap_err()
            .is_taken());
        let r = c.release(&lease).await.unwrap();
        assert!(r.held >= 1 && r.held + r.not_held >= 2, "{f}: {r:?}");
    }
}

/// A round and a release return once a quorum answered; `settle` waits for
/// the slower node too, so a program that calls it before exiting leaves the
/// lock on every node (acquired) or on none (released).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_waits_for_the_slower_nodes() {
    let set = nodes(3);
    let slow = testkit::Proxy::start(("127.0.0.1", set.nodes[2].port()));
    slow.set_mode(testkit::ProxyMode::Delay(200 * MS));
    let urls = vec![set.nodes[0].url(), set.nodes[1].url(), slow.url()];
    let c = Client::new(
        Config::builder(urls)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    )
    .unwrap();
    let lease = c
        .try_acquire("settle", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(lease.nodes(), [0, 1], "decided without the slow node");
    assert!(c.settle(Duration::from_secs(5)).await);
    assert_eq!(held_on(&set, "settle"), 3);
    let released = c.release(&lease).await.unwrap();
    assert_eq!((released.held, released.pending), (2, 1));
    assert!(c.settle(Duration::from_secs(5)).await);
    assert_eq!(held_on(&set, "settle"), 0);
    assert!(c.settle(Duration::ZERO).await, "nothing left running");
}
