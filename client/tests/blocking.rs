//! The blocking facade, from plain threads without a runtime of their own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis_lock_client::blocking::Client;
use redis_lock_client::{Config, LossReason};
use testkit::{Flavor, NodeSet};

const MS: Duration = Duration::from_millis(1);

fn nodes(n: usize) -> NodeSet {
    let flavor: Flavor = *testkit::flavors()
        .first()
        .expect("a server flavor is installed");
    NodeSet::start(n, flavor)
}

fn client(set: &NodeSet) -> Client {
    Client::new(
        Config::builder(set.urls())
            .retry_delay(5 * MS)
            .retry_jitter(20 * MS)
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn blocking_acquire_extend_release() {
    let set = nodes(3);
    let c = client(&set);
    let mut lease = c.try_acquire("b", 1000 * MS).unwrap();
    assert!(c.try_acquire("b", 1000 * MS).unwrap_err().is_taken());
    c.extend(&mut lease, 2000 * MS).unwrap();
    assert!(lease.remaining() > 1500 * MS);
    let r = c.release(&lease).unwrap();
    assert!(r.held >= 1 && r.held + r.not_held >= 2, "{r:?}");
    c.acquire("b", 1000 * MS, 1000 * MS).unwrap();
}

#[test]
fn blocking_with_lock_renews_while_the_thread_works() {
    let set = nodes(3);
    let c = client(&set);
    let ttl = 300 * MS;
    let out = c
        .with_lock("bw", ttl, |held| {
            let end = Instant::now() + 4 * ttl;
            while Instant::now() < end {
                assert!(!held.is_lost());
                thread::sleep(50 * MS);
            }
            held.fence()
        })
        .unwrap();
    assert!(out > 0);
    // Released on the way out.
    c.try_acquire("bw", ttl).unwrap();
}

#[test]
fn blocking_threads_exclude_each_other() {
    let set = nodes(3);
    let counter = Arc::new(AtomicU64::new(0));
    let urls = set.urls();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let counter = counter.clone();
            let urls = urls.clone();
            thread::spawn(move || {
                let c = Client::new(
                    Config::builder(urls)
                        .retry_delay(2 * MS)
                        .retry_jitter(10 * MS)
                        .build()
                        .unwrap(),
                )
                .unwrap();
                for _ in 0..5 {
                    let guard = c.lock("bt", 2000 * MS, 20_000 * MS).unwrap();
                    let seen = counter.load(Ordering::SeqCst);
                    thread::sleep(MS);
                    counter.store(seen + 1, Ordering::SeqCst);
                    guard.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 20);
}

#[test]
fn blocking_guard_reports_loss() {
    let set = nodes(3);
    let c = client(&set);
    let guard = c.lock("bl", 400 * MS, 1000 * MS).unwrap();
    assert_eq!(guard.wait_lost(50 * MS).unwrap(), None);
    for s in &set.nodes {
        let _: i64 = redis::cmd("DEL").arg("bl").query(&mut s.conn()).unwrap();
    }
    assert_eq!(
        guard.wait_lost(Duration::from_secs(5)).unwrap(),
        Some(LossReason::NotHeld)
    );
    assert!(guard.is_lost());
    // with_lock says so too.
    let err = c
        .with_lock("bl2", 400 * MS, |held| {
            for s in &set.nodes {
                let _: i64 = redis::cmd("DEL").arg("bl2").query(&mut s.conn()).unwrap();
            }
            let end = Instant::now() + Duration::from_secs(5);
            while !held.is_lost() && Instant::now() < end {
                thread::sleep(10 * MS);
            }
        })
        .unwrap_err();
    assert!(err.is_lost(), "{err}");
}

#[tokio::test]
async fn blocking_calls_inside_a_runtime_are_errors_not_panics() {
    let set = nodes(1);
    let c = client(&set);
    let err = c.try_acquire("rt", 1000 * MS).unwrap_err();
    assert!(err.to_string().contains("async runtime"), "{err}");
    // Dropping it here must not panic either.
    drop(c);
}
