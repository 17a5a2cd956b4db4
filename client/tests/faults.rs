//! Fault scenarios, checked on histories, with a negative control for each
//! safety feature (the checker must see the violation when the feature is
//! off, so it is known to catch it):
//!
//! - `restart`: a node restarted at once without persistence during a lease.
//!   Delayed rejoin off: a second client is granted the lease (overlap);
//!   on (`rejoin-delay-ms -1`, i.e. `max-ttl-ms` without AOF): refused.
//! - `failover`: a single primary with a replica, promoted by
//!   `REPLICAOF NO ONE` after the primary is killed. A replica that had not
//!   caught up (its link held by a proxy) grants the lock again (overlap),
//!   unless `lock.promotion-delay-ms` covers the lease; one that had caught
//!   up refuses it.
//! - `stale`: a holder paused past its TTL writes after the next holder.
//!   Without a fence the resource accepts it (stale write); with the fence
//!   (`FencedStore`) it is rejected.
//! - `proxy`: clients reach the nodes through proxies that hold, drop and
//!   delay single links at random: no violation.
//!
//! Each prints one table line: scenario, operations, faults, violations.
//! Seeded and short by default; `FAULTS_SEED` and `FAULTS_DURATION` (seconds)
//! make them longer (`make soak SEED=.. DURATION=..`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis_lock_client::{Client, Config, ConfigBuilder, Lease};
use testkit::history::{check, Event, Kind, Op, Recorder, Report, Value};
use testkit::proxy::{Mode, Proxy};
use testkit::{lockcmd, FencedStore, NodeSet, Server};

const MS: Duration = Duration::from_millis(1);

/// `FAULTS_SEED` (default 7).
fn seed() -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

/// `FAULTS_DURATION` in seconds, if set (a soak run).
fn soak() -> Option<Duration> {
    std::env::var("FAULTS_DURATION")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Rounds of a round-based scenario: `short` by default, or as many as fit
/// in the soak duration at `per_round` each.
fn rounds(short: usize, per_round: Duration) -> usize {
    soak().map_or(short, |d| {
        short.max((d.as_millis() / per_round.as_millis().max(1)) as usize)
    })
}

fn config(urls: &[String]) -> ConfigBuilder {
    Config::builder(urls.to_vec())
        .connect_timeout(100 * MS)
        .request_timeout(50 * MS)
        .retry_delay(5 * MS)
        .retry_jitter(20 * MS)
}

fn client(urls: &[String]) -> Client {
    Client::new(config(urls).build().unwrap()).unwrap()
}

fn granted(rec: &Recorder, id: u64, lease: &Lease) {
    rec.ok(
        id,
        Value::Lease {
            fence: lease.fence(),
            valid_until: rec.time(lease.valid_until()),
        },
    );
}

/// Acquire once (a single round), recorded.
async fn try_acquire(
    rec: &Recorder,
    p: usize,
    c: &Client,
    key: &str,
    ttl: Duration,
) -> Option<(u64, Lease)> {
    let id = rec.invoke(
        p,
        Op::Acquire {
            resource: key.into(),
        },
    );
    match c.try_acquire(key, ttl).await {
        Ok(lease) => {
            granted(rec, id, &lease);
            Some((id, lease))
        }
        Err(e) => {
            rec.fail(id, e.to_string());
            None
        }
    }
}

async fn release(rec: &Recorder, p: usize, c: &Client, id: u64, lease: &Lease) {
    let r = rec.invoke(p, Op::Release { lease: id });
    match c.release(lease).await {
        Ok(_) => rec.ok(r, Value::Done),
        Err(e) => rec.unknown(r, e.to_string()),
    }
}

/// A write recorded in the history; `store` `None`: a resource that checks
/// nothing and accepts every write.
fn write(
    rec: &Recorder,
    store: Option<&FencedStore>,
    p: usize,
    id: u64,
    lease: &Lease,
    v: &str,
) -> bool {
    let w = rec.invoke(
        p,
        Op::Write {
            lease: id,
            fence: lease.fence(),
        },
    );
    let res = match store {
        Some(s) => s
            .write(lease.fence(), lease.token().as_str(), "value", v)
            .map_err(|e| e.to_string()),
        None => Ok(()),
    };
    match res {
        Ok(()) => {
            rec.ok(w, Value::Done);
            true
        }
        Err(e) => {
            rec.fail(w, e);
            false
        }
    }
}

/// Prints the scenario's table line and returns the report.
fn table(scenario: &str, history: &[Event]) -> Report {
    let report = check(history);
    let ops = history
        .iter()
        .filter(|e| matches!(e.kind, Kind::Invoke(_)))
        .count();
    let (malformed, order, stale, overlap) = report.counts();
    println!(
        "| {scenario:<34} | seed {:>5} | {ops:>5} ops | {:>4} faults | {:>3} violations (overlap {overlap}, stale {stale}, order {order}, malformed {malformed}) |",
        seed(),
        report.faults,
        report.violations.len(),
    );
    report
}

fn set_config(server: &Server, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(&mut server.conn())
        .unwrap();
}

// ---------------------------------------------------------------- restart

/// How the restarted node comes back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// `appendonly no`: whatever it granted is gone.
    NoPersistence,
    /// `appendonly yes`, but its directory is wiped (a lost disk, a
    /// container without a volume): it loads nothing.
    WipedAof,
}

/// Per round: node `blocked` is held by someone else, so A's lease is
/// granted by exactly the other two; one of them is killed and restarted at
/// once without its data; the block is lifted and B tries.
async fn restart_scenario(delayed_rejoin: bool, how: Restart) -> Report {
    const TTL: Duration = Duration::from_millis(1500);
    let f = testkit::first_flavor();
    let delay = if delayed_rejoin { "-1" } else { "0" };
    let mut set = NodeSet::start_with(3, |_| {
        let b = Server::builder(f)
            .module_arg("rejoin-delay-ms", delay)
            .module_arg("max-ttl-ms", "2000");
        match how {
            Restart::NoPersistence => b,
            Restart::WipedAof => b.appendonly(false),
        }
    });
    // A fresh cluster holds nothing: the operator ends the initial delay.
    for s in &set.nodes {
        set_config(s, "lock.rejoin-delay-ms", "0");
    }
    let urls = set.urls();
    let rec = Recorder::new();
    let mut rng = StdRng::seed_from_u64(seed());
    let n = rounds(3, Duration::from_millis(800));
    for round in 0..n {
        let key = format!("faults:restart:{round}");
        let blocked = rng.random_range(0..3);
        let others: Vec<usize> = (0..3).filter(|&i| i != blocked).collect();
        assert!(lockcmd::acquire(&mut set.nodes[blocked].conn(), &key, "other", 2000).is_some());
        let a_client = client(&urls);
        let (ia, a) = try_acquire(&rec, 1, &a_client, &key, TTL)
            .await
            .expect("A is granted by the two free nodes");
        assert_eq!(a.nodes(), &others[..]);
        let victim = others[rng.random_range(0..2)];
        match how {
            Restart::NoPersistence => {
                rec.fault(
                    0,
                    format!("kill -9 and restart node {victim} without persistence"),
                );
                tokio::task::block_in_place(|| set.nodes[victim].restart());
            }
            Restart::WipedAof => {
                rec.fault(
                    0,
                    format!("kill -9 node {victim}, wipe its AOF, restart (appendonly yes)"),
                );
                tokio::task::block_in_place(|| set.nodes[victim].restart_wiped());
            }
        }
        assert_eq!(
            lockcmd::release(&mut set.nodes[blocked].conn(), &key, "other"),
            1
        );
        let b_client = client(&urls);
        let b = try_acquire(&rec, 2, &b_client, &key, TTL).await;
        if let Some((ib, b)) = &b {
            release(&rec, 2, &b_client, *ib, b).await;
        }
        release(&rec, 1, &a_client, ia, &a).await;
        // A's lease has ended (released): nothing the restarted node may
        // have granted is outstanding, so the next round may use it.
        set_config(&set.nodes[victim], "lock.rejoin-delay-ms", "0");
    }
    table(
        &format!(
            "restart{}, delayed rejoin {}",
            match how {
                Restart::NoPersistence => "",
                Restart::WipedAof => " (AOF wiped)",
            },
            if delayed_rejoin { "on" } else { "off" }
        ),
        &rec.history(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_a_node_restarted_without_persistence_grants_twice() {
    let report = restart_scenario(false, Restart::NoPersistence).await;
    let (malformed, _, _, overlap) = report.counts();
    assert_eq!(malformed, 0, "{report}");
    assert!(
        overlap >= 1,
        "the checker must see the second holder: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_rejoin_keeps_a_restarted_node_from_granting_twice() {
    let report = restart_scenario(true, Restart::NoPersistence).await;
    assert!(report.is_ok(), "{report}");
    assert!(report.acquisitions_failed >= 1, "B was refused: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_an_aof_node_restarted_empty_without_a_delay_grants_twice() {
    let report = restart_scenario(false, Restart::WipedAof).await;
    let (malformed, _, _, overlap) = report.counts();
    assert_eq!(malformed, 0, "{report}");
    assert!(
        overlap >= 1,
        "the checker must see the second holder: {report}"
    );
}

/// `appendonly yes` does not switch the automatic delay off by itself: a
/// node whose AOF did not survive loads nothing, and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automatic_delay_keeps_an_aof_node_restarted_empty_from_granting_twice() {
    let report = restart_scenario(true, Restart::WipedAof).await;
    assert!(report.is_ok(), "{report}");
    assert!(report.acquisitions_failed >= 1, "B was refused: {report}");
}

// ---------------------------------------------------------------- failover

/// One primary, one replica linked to it through a proxy. A takes the lock
/// on the primary; the replica either got it (caught up) or its link was
/// held (not caught up); the primary is killed, the replica promoted, and B
/// asks the new primary.
/// With `promotion_delay`, the replica runs with `lock.promotion-delay-ms`
/// longer than A's lease.
async fn failover_scenario(caught_up: bool, promotion_delay: bool) -> Report {
    let f = testkit::first_flavor();
    let rec = Recorder::new();
    let n = rounds(1, Duration::from_millis(600));
    for round in 0..n {
        let key = format!("faults:failover:{round}");
        let mut primary = Server::start(f);
        let link = Proxy::start(("127.0.0.1", primary.port()));
        let mut replica =
            Server::builder(f).arg("replicaof", &format!("127.0.0.1 {}", link.port()));
        if promotion_delay {
            replica = replica.module_arg("promotion-delay-ms", "3500");
        }
        let replica = replica.start();
        replica.wait_replica_synced(Duration::from_secs(10));
        if !caught_up {
            rec.fault(0, "replication link held");
            link.set_mode(Mode::Hold);
        }
        let a_client = client(&[primary.url()]);
        let (ia, a) = try_acquire(&rec, 1, &a_client, &key, 3000 * MS)
            .await
            .expect("A is granted by the primary");
        if caught_up {
            testkit::eventually(Duration::from_secs(5), "the replica has the lock", || {
                lockcmd::info(&mut replica.conn(), &key).map(|_| ())
            });
        }
        rec.fault(0, "kill -9 the primary");
        tokio::task::block_in_place(|| primary.kill());
        link.set_mode(Mode::Drop);
        rec.fault(0, "REPLICAOF NO ONE on the replica");
        let _: () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query(&mut replica.conn())
            .unwrap();
        let b_client = client(&[replica.url()]);
        if let Some((ib, b)) = try_acquire(&rec, 2, &b_client, &key, 3000 * MS).await {
            release(&rec, 2, &b_client, ib, &b).await;
        }
        // The primary is gone: A's release may not land anywhere useful.
        release(&rec, 1, &a_client, ia, &a).await;
    }
    table(
        &format!(
            "failover, replica {}{}",
            if caught_up { "caught up" } else { "behind" },
            if promotion_delay {
                ", promotion delay on"
            } else {
                ""
            }
        ),
        &rec.history(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_failover_to_a_replica_that_had_not_caught_up_grants_twice() {
    let report = failover_scenario(false, false).await;
    let (malformed, _, _, overlap) = report.counts();
    assert_eq!(malformed, 0, "{report}");
    assert!(overlap >= 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_replica_that_had_caught_up_keeps_the_lock() {
    let report = failover_scenario(true, false).await;
    assert!(report.is_ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promotion_delay_keeps_a_replica_that_had_not_caught_up_from_granting_twice() {
    let report = failover_scenario(false, true).await;
    assert!(report.is_ok(), "{report}");
}

// ---------------------------------------------------------------- stale holder

/// A is granted, stops past its lease, B is granted and writes, A writes.
async fn stale_scenario(fenced: bool) -> Report {
    let set = NodeSet::start(3, testkit::first_flavor());
    let urls = set.urls();
    let rec = Recorder::new();
    let store = FencedStore::new();
    let store = fenced.then_some(&store);
    let mut rng = StdRng::seed_from_u64(seed());
    let n = rounds(2, Duration::from_millis(500));
    for round in 0..n {
        let key = format!("faults:stale:{round}");
        let a_client = client(&urls);
        let b_client = client(&urls);
        let ttl = rng.random_range(150..300) * MS;
        let (ia, a) = try_acquire(&rec, 1, &a_client, &key, ttl).await.unwrap();
        write(&rec, store, 1, ia, &a, "A before the pause");
        rec.fault(1, "holder A paused past its TTL");
        tokio::time::sleep_until(a.valid_until().into()).await;
        testkit::eventually(Duration::from_secs(5), "A's lock ended", || {
            set.nodes
                .iter()
                .all(|s| lockcmd::info(&mut s.conn(), &key).is_none())
                .then_some(())
        });
        let (ib, b) = try_acquire(&rec, 2, &b_client, &key, 5000 * MS)
            .await
            .unwrap();
        write(&rec, store, 2, ib, &b, "B");
        tokio::time::sleep(rng.random_range(0..20) * MS).await;
        // A wakes up and writes with the lease it still believes in.
        write(&rec, store, 1, ia, &a, "A after the pause");
        release(&rec, 2, &b_client, ib, &b).await;
    }
    table(
        &format!(
            "stale holder, {}",
            if fenced { "fenced" } else { "no fence" }
        ),
        &rec.history(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_a_paused_holder_without_a_fence_writes_stale() {
    let report = stale_scenario(false).await;
    let (malformed, _, stale, overlap) = report.counts();
    assert_eq!((malformed, overlap), (0, 0), "{report}");
    assert!(stale >= 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_rejects_a_paused_holder() {
    let report = stale_scenario(true).await;
    assert!(report.is_ok(), "{report}");
    assert!(report.writes_rejected >= 1, "{report}");
}

// ---------------------------------------------------------------- proxies

/// Three clients, each reaching each of three nodes through its own proxy;
/// an injector holds, drops and delays single links at random.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_dropped_and_delayed_links_do_not_break_safety() {
    const TTL: Duration = Duration::from_millis(300);
    const RESOURCE: &str = "faults:proxy";
    const CLIENTS: usize = 3;
    let set = NodeSet::start(3, testkit::first_flavor());
    let proxies: Arc<Vec<Vec<Proxy>>> = Arc::new(
        (0..CLIENTS)
            .map(|_| {
                set.nodes
                    .iter()
                    .map(|s| Proxy::start(("127.0.0.1", s.port())))
                    .collect()
            })
            .collect(),
    );
    let rec = Arc::new(Recorder::new());
    let store = Arc::new(FencedStore::new());
    let stop = Arc::new(AtomicBool::new(false));
    let run = soak().unwrap_or(Duration::from_secs(3));

    let injector = {
        let (rec, stop, proxies) = (rec.clone(), stop.clone(), proxies.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed());
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(rng.random_range(50..150) * MS);
                let (c, n) = (rng.random_range(0..CLIENTS), rng.random_range(0..3));
                let mode = match rng.random_range(0..3) {
                    0 => Mode::Hold,
                    1 => Mode::Drop,
                    _ => Mode::Delay(rng.random_range(10..80) * MS),
                };
                rec.fault(usize::MAX, format!("{mode:?} link client {c} - node {n}"));
                proxies[c][n].set_mode(mode);
                std::thread::sleep(rng.random_range(100..400) * MS);
                proxies[c][n].set_mode(Mode::Pass);
            }
        })
    };

    let until = Instant::now() + run;
    let mut tasks = Vec::new();
    for p in 0..CLIENTS {
        let urls: Vec<String> = proxies[p].iter().map(Proxy::url).collect();
        let c = client(&urls);
        let (rec, store) = (rec.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed() ^ ((p as u64 + 1) * 0x9e37_79b9));
            let mut n = 0;
            while Instant::now() < until {
                let id = rec.invoke(
                    p,
                    Op::Acquire {
                        resource: RESOURCE.into(),
                    },
                );
                let lease = match c.acquire(RESOURCE, TTL, 1000 * MS).await {
                    Ok(lease) => {
                        granted(&rec, id, &lease);
                        lease
                    }
                    Err(e) => {
                        rec.fail(id, e.to_string());
                        continue;
                    }
                };
                n += 1;
                write(&rec, Some(&store), p, id, &lease, &format!("{p}:{n}"));
                tokio::time::sleep(rng.random_range(0..30) * MS).await;
                n += 1;
                write(&rec, Some(&store), p, id, &lease, &format!("{p}:{n}"));
                release(&rec, p, &c, id, &lease).await;
                tokio::time::sleep(rng.random_range(0..10) * MS).await;
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(run + Duration::from_secs(30), t)
            .await
            .expect("client tasks finish")
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || injector.join())
        .await
        .unwrap()
        .unwrap();
    let report = table("proxy hold/drop/delay, fenced", &rec.history());
    assert!(report.is_ok(), "{report}");
    assert!(report.leases >= 3, "{report}");
    assert!(report.faults >= 3, "{report}");
    drop(proxies);
    drop(set);
}
