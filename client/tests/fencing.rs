//! Fencing tokens that stay monotonic across a quorum, checked on histories.
//!
//! Many client tasks take one lock on 5 real nodes again and again and write
//! to a [`FencedStore`] with their lease's fence, while holders are paused
//! past their TTL, nodes are killed and restarted from their AOF
//! (`appendfsync always`) and paused (SIGSTOP), so that the granting
//! majority keeps moving. Every grant, write and release is recorded, and
//! the history checker (`testkit::history`) must find no violation: tokens
//! increase from lease to lease, no stale write is accepted, no two leases
//! overlap. Negative controls run the same checks on per-node fences
//! (`fenced(false)`) and must find violations.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis_lock_client::{Client, Config, ConfigBuilder, Lease};
use testkit::history::{check, Op, Recorder, Report, Value};
use testkit::{lockcmd, FencedStore, NodeSet, Server};

const MS: Duration = Duration::from_millis(1);

fn config(urls: &[String]) -> ConfigBuilder {
    Config::builder(urls.to_vec())
        .connect_timeout(100 * MS)
        .request_timeout(50 * MS)
        .retry_delay(5 * MS)
        .retry_jitter(20 * MS)
}

fn fence_on(server: &Server, key: &str) -> Option<u64> {
    lockcmd::info(&mut server.conn(), key).map(|f| f["fence"] as u64)
}

/// Raises a node's counter far above the others' (as a node restarted
/// later would have it: a counter starts at the node's clock in µs). By
/// 2^36 µs (19 hours) a time: the module refuses a `FENCE` floor more than
/// 2^40 µs above its clock, and a test may push a few times in a row.
fn push_counter_ahead(server: &Server) -> u64 {
    let mut c = server.conn();
    let now = lockcmd::acquire(&mut c, "fencing:bump", "bump", 1000).unwrap() as u64;
    let ahead = now + (1 << 36);
    let got = lockcmd::acquire_with(
        &mut c,
        "fencing:bump",
        "bump",
        1000,
        &["FENCE", &ahead.to_string()],
    )
    .unwrap() as u64;
    assert_eq!(got, ahead);
    lockcmd::release(&mut c, "fencing:bump", "bump");
    ahead
}

/// Records a write of `lease` (acquisition `id`) to the store.
fn write(rec: &Recorder, store: &FencedStore, p: usize, id: u64, lease: &Lease, v: &str) -> bool {
    let w = rec.invoke(
        p,
        Op::Write {
            lease: id,
            fence: lease.fence(),
        },
    );
    match store.write(lease.fence(), lease.token().as_str(), "value", v) {
        Ok(()) => {
            rec.ok(w, Value::Done);
            true
        }
        Err(e) => {
            rec.fail(w, e.to_string());
            false
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_holds_the_lease_fence_and_extend_keeps_it() {
    let set = NodeSet::start(5, testkit::first_flavor());
    let urls = set.urls();
    // Node 0 counts far ahead, so its grants decide T whenever it grants.
    let ahead = push_counter_ahead(&set.nodes[0]);
    let c = Client::new(config(&urls).build().unwrap()).unwrap();
    assert!(c.config().fenced(), "fenced is the default");
    let mut last = 0;
    for round in 0..10 {
        let mut lease = c.try_acquire("fencing:quorum", 5000 * MS).await.unwrap();
        let fence = lease.fence();
        assert!(fence > last, "round {round}: {fence} after {last}");
        last = fence;
        // The lease's nodes are a quorum and each holds exactly its fence.
        assert!(lease.nodes().len() >= 3, "{:?}", lease.nodes());
        for &i in lease.nodes() {
            assert_eq!(
                fence_on(&set.nodes[i], "fencing:quorum"),
                Some(fence),
                "node {i}"
            );
        }
        if lease.nodes().contains(&0) {
            assert!(fence > ahead);
        }
        // Extension keeps the fence, on the lease and on the nodes.
        c.extend(&mut lease, 8000 * MS).await.unwrap();
        assert_eq!(lease.fence(), fence);
        let holding = set
            .nodes
            .iter()
            .filter(|s| fence_on(s, "fencing:quorum") == Some(fence))
            .count();
        assert!(holding >= 3, "{holding} nodes hold {fence} after extend");
        c.release(&lease).await.unwrap();
        testkit::eventually(Duration::from_secs(5), "lock free everywhere", || {
            set.nodes
                .iter()
                .all(|s| fence_on(s, "fencing:quorum").is_none())
                .then_some(())
        });
    }
    // Once node 0 has been in a quorum, every later lease is above its
    // counter, whichever majority grants it.
    assert!(last > ahead, "node 0 never granted in 10 rounds");

    // Unfenced, the lease's fence is only its granting nodes' largest:
    // nodes below it are left where they were. (The raises above levelled
    // the counters of the nodes that granted: push node 0 ahead again, and
    // make nodes 0, 1, 2 the majority by holding the lock on 3 and 4.)
    push_counter_ahead(&set.nodes[0]);
    for s in &set.nodes[3..] {
        assert!(lockcmd::acquire(&mut s.conn(), "fencing:unfenced", "other", 60_000).is_some());
    }
    let unfenced = Client::new(config(&urls).fenced(false).build().unwrap()).unwrap();
    let lease = unfenced
        .try_acquire("fencing:unfenced", 5000 * MS)
        .await
        .unwrap();
    assert_eq!(lease.nodes(), &[0, 1, 2]);
    let fences: Vec<u64> = lease
        .nodes()
        .iter()
        .map(|&i| fence_on(&set.nodes[i], "fencing:unfenced").unwrap())
        .collect();
    assert_eq!(lease.fence(), *fences.iter().max().unwrap());
    assert!(
        fences.iter().any(|f| *f < lease.fence()),
        "per-node fences differ: {fences:?}"
    );
}

/// A client allowed `FENCE` pushed one node's counter to the top of the
/// module's bound (its clock + 2^40 µs): the raise that carries that token
/// to the other nodes is still within theirs (their clocks have moved on
/// since), so fenced leases keep coming, and the counters keep their
/// headroom (see DESIGN.md, "The counter's headroom").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_pushed_to_the_bound_still_lets_fenced_leases_through() {
    for flavor in testkit::flavors() {
        let set = NodeSet::start(3, flavor);
        let urls = set.urls();
        let mut c0 = set.nodes[0].conn();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut c0).unwrap();
        // The module reads its clock in milliseconds.
        let top = (secs * 1000 + micros / 1000) * 1000 + (1 << 40);
        let pushed =
            lockcmd::acquire_with(&mut c0, "other:x", "t", 1000, &["FENCE", &top.to_string()]);
        assert_eq!(pushed, Some(top as i64), "{flavor}");
        lockcmd::release(&mut c0, "other:x", "t");
        // Nodes 1 and 2 need node 0 in every majority: hold the lock on 2.
        assert!(lockcmd::acquire(&mut set.nodes[2].conn(), "fencing:top", "x", 60_000).is_some());
        // Node 0's next grant is `top + 1`: node 1 takes it once its clock
        // (milliseconds, same machine) is past node 0's at the push. Under
        // clock skew it would take that much longer: the documented cost.
        tokio::time::sleep(2 * MS).await;
        let c = Client::new(config(&urls).build().unwrap()).unwrap();
        let lease = c.try_acquire("fencing:top", 5000 * MS).await.unwrap();
        assert!(lease.fence() > top, "{flavor}: {}", lease.fence());
        assert_eq!(lease.nodes(), &[0, 1], "{flavor}");
        assert_eq!(
            fence_on(&set.nodes[1], "fencing:top"),
            Some(lease.fence()),
            "{flavor}"
        );
        c.release(&lease).await.unwrap();
        assert!(c.settle(Duration::from_secs(5)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_that_a_quorum_does_not_confirm_fails_the_round_and_releases() {
    let set = NodeSet::start(3, testkit::first_flavor());
    let urls = set.urls();
    let key = "fencing:refused";
    // Grants come from nodes 0 and 1 (2 is held by someone else), node 0's
    // fence is the larger, so node 1 must be raised. Node 1 bounds every
    // grant's hold to its TTL, so the raise (a refresh with the same TTL a
    // moment later) would pass the bound: it answers nil.
    push_counter_ahead(&set.nodes[0]);
    assert!(lockcmd::acquire(&mut set.nodes[2].conn(), key, "other", 60_000).is_some());
    let max_hold = |ms: u64| {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("lock.max-hold-ms")
            .arg(ms)
            .query(&mut set.nodes[1].conn())
            .unwrap();
    };
    max_hold(5000);
    let c = Client::new(config(&urls).build().unwrap()).unwrap();
    let err = c.try_acquire(key, 5000 * MS).await.unwrap_err();
    assert!(err.is_taken(), "{err}");
    assert_eq!(err.held_elsewhere(), Some(1), "{err}");
    // Nothing is left behind on the nodes that granted.
    for i in 0..2 {
        assert_eq!(fence_on(&set.nodes[i], key), None, "node {i}");
    }
    // Unfenced, the same round wins (nothing is raised).
    let unfenced = Client::new(config(&urls).fenced(false).build().unwrap()).unwrap();
    let lease = unfenced.try_acquire(key, 5000 * MS).await.unwrap();
    assert_eq!(lease.nodes(), &[0, 1]);
    unfenced.release(&lease).await.unwrap();
    // The release returned once two nodes answered, one of them node 2 (not
    // ours): let it reach the other node too.
    assert!(unfenced.settle(Duration::from_secs(5)).await);
    // Without the bound the raise goes through.
    max_hold(0);
    let lease = c.try_acquire(key, 5000 * MS).await.unwrap();
    assert_eq!(lease.nodes(), &[0, 1]);
    for i in 0..2 {
        assert_eq!(
            fence_on(&set.nodes[i], key),
            Some(lease.fence()),
            "node {i}"
        );
    }
}

/// The classic stale holder, staged so that per-node fences fail: node 0
/// counts far ahead; A is granted by nodes 0, 1, 2 (3 and 4 are held by
/// someone else), pauses before writing until its lease has run out; B is
/// granted by nodes 2, 3, 4 and writes; then A wakes up and writes.
async fn stale_holder(fenced: bool) -> (Report, Lease, Lease) {
    let set = NodeSet::start(5, testkit::first_flavor());
    let urls = set.urls();
    let key = "fencing:stale";
    push_counter_ahead(&set.nodes[0]);
    let rec = Recorder::new();
    let store = FencedStore::new();
    let block = |nodes: &[usize]| {
        for &i in nodes {
            assert!(lockcmd::acquire(&mut set.nodes[i].conn(), key, "other", 60_000).is_some());
        }
    };
    let unblock = |nodes: &[usize]| {
        for &i in nodes {
            assert_eq!(lockcmd::release(&mut set.nodes[i].conn(), key, "other"), 1);
        }
    };

    block(&[3, 4]);
    let a_client = Client::new(config(&urls).fenced(fenced).build().unwrap()).unwrap();
    let ia = rec.invoke(
        1,
        Op::Acquire {
            resource: key.into(),
        },
    );
    let a = a_client.try_acquire(key, 300 * MS).await.unwrap();
    granted(&rec, ia, &a);
    assert_eq!(a.nodes(), &[0, 1, 2]);

    // A stops (a GC pause, SIGSTOP) before its write; its lock runs out.
    rec.fault(1, "holder A paused past its TTL");
    tokio::time::sleep_until(a.valid_until().into()).await;
    testkit::eventually(Duration::from_secs(5), "A's lock ended", || {
        (0..3)
            .all(|i| fence_on(&set.nodes[i], key).is_none())
            .then_some(())
    });

    unblock(&[3, 4]);
    block(&[0, 1]);
    let b_client = Client::new(config(&urls).fenced(fenced).build().unwrap()).unwrap();
    let ib = rec.invoke(
        2,
        Op::Acquire {
            resource: key.into(),
        },
    );
    let b = b_client.try_acquire(key, 5000 * MS).await.unwrap();
    granted(&rec, ib, &b);
    assert_eq!(b.nodes(), &[2, 3, 4]);
    write(&rec, &store, 2, ib, &b, "B");

    // A wakes up and writes with the lease it still believes in.
    write(&rec, &store, 1, ia, &a, "A");
    let ir = rec.invoke(2, Op::Release { lease: ib });
    b_client.release(&b).await.unwrap();
    rec.ok(ir, Value::Done);
    (check(&rec.history()), a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raise_rejects_the_stale_holder() {
    let (report, a, b) = stale_holder(true).await;
    println!("fenced: A {} then B {}: {report}", a.fence(), b.fence());
    assert!(b.fence() > a.fence());
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.writes_accepted, report.writes_rejected), (1, 1));
}

/// Negative control: the same story with per-node fences. The checker must
/// see both the token going backwards and A's stale write accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_per_node_fences_let_the_stale_holder_write() {
    let (report, a, b) = stale_holder(false).await;
    println!("unfenced: A {} then B {}: {report}", a.fence(), b.fence());
    assert!(b.fence() < a.fence());
    let (malformed, order, stale, overlap) = report.counts();
    assert_eq!((malformed, overlap), (0, 0), "{report}");
    assert!(order >= 1 && stale >= 1, "{report}");
    assert_eq!((report.writes_accepted, report.writes_rejected), (2, 0));
}

/// What one chaotic run did, beside the history.
#[derive(Debug, Default)]
struct Chaos {
    kills: usize,
    node_pauses: usize,
    holder_pauses: usize,
    quorums: usize,
}

/// `clients` tasks take `resource` for `run`, with faults: holders paused
/// past the TTL (6% of leases), nodes killed and restarted from the AOF,
/// nodes paused. Returns the checker's report.
async fn chaos(fenced: bool, clients: usize, run: Duration, seed: u64) -> (Report, Chaos) {
    const TTL: Duration = Duration::from_millis(250);
    const RESOURCE: &str = "fencing:chaos";
    let flavor = testkit::first_flavor();
    let set = NodeSet::start_with(5, |_| Server::builder(flavor).appendonly(true));
    let urls = set.urls();
    let rec = Arc::new(Recorder::new());
    let store = Arc::new(FencedStore::new());
    let stop = Arc::new(AtomicBool::new(false));
    let holder_pauses = Arc::new(AtomicUsize::new(0));
    let quorums = Arc::new(Mutex::new(HashSet::new()));

    // The fault injector owns the nodes (kill and restart need them
    // mutably) and runs on a thread of its own: those calls block.
    let injector = {
        let (rec, stop) = (rec.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut set = set;
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut kills, mut pauses) = (0, 0);
            let me = usize::MAX;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(rng.random_range(150..400) * MS);
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = rng.random_range(0..5);
                if rng.random_bool(0.6) {
                    // kill -9; its locks and counter come back from the AOF.
                    rec.fault(me, format!("kill -9 node {i}"));
                    set.nodes[i].kill();
                    kills += 1;
                    // Sometimes pause another one meanwhile: only three left.
                    let j = (i + rng.random_range(1..5)) % 5;
                    let both = rng.random_bool(0.3);
                    if both {
                        rec.fault(me, format!("pause node {j}"));
                        set.nodes[j].pause();
                        pauses += 1;
                    }
                    std::thread::sleep(rng.random_range(100..400) * MS);
                    if both {
                        set.nodes[j].resume();
                    }
                    set.nodes[i].start_again();
                } else {
                    // SIGSTOP a node for up to twice the TTL.
                    rec.fault(me, format!("pause node {i}"));
                    set.nodes[i].pause();
                    pauses += 1;
                    std::thread::sleep(rng.random_range(100..500) * MS);
                    set.nodes[i].resume();
                }
            }
            (set, kills, pauses)
        })
    };

    let until = Instant::now() + run;
    let mut tasks = Vec::new();
    for p in 0..clients {
        let client = Client::new(config(&urls).fenced(fenced).build().unwrap()).unwrap();
        let (rec, store) = (rec.clone(), store.clone());
        let (holder_pauses, quorums) = (holder_pauses.clone(), quorums.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ ((p as u64 + 1) * 0x9e37_79b9));
            let mut n = 0;
            while Instant::now() < until {
                let id = rec.invoke(
                    p,
                    Op::Acquire {
                        resource: RESOURCE.into(),
                    },
                );
                let lease = match client.acquire(RESOURCE, TTL, 2000 * MS).await {
                    Ok(lease) => {
                        granted(&rec, id, &lease);
                        lease
                    }
                    Err(e) => {
                        // No lease was handed out (partial grants were released).
                        rec.fail(id, e.to_string());
                        continue;
                    }
                };
                quorums.lock().unwrap().insert(lease.nodes().to_vec());
                // A holder that stops past its lease without checking it:
                // before its first write, or between two writes.
                let pause = rng.random_bool(0.06).then(|| rng.random_bool(0.5));
                let stall = |rng: &mut StdRng| TTL + rng.random_range(20..150) * MS;
                if pause == Some(true) {
                    rec.fault(p, "holder paused past its TTL before writing");
                    holder_pauses.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(stall(&mut rng)).await;
                }
                n += 1;
                write(&rec, &store, p, id, &lease, &format!("{p}:{n}"));
                if pause == Some(false) {
                    rec.fault(p, "holder paused past its TTL between writes");
                    holder_pauses.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(stall(&mut rng)).await;
                } else {
                    tokio::time::sleep(rng.random_range(0..3) * MS).await;
                }
                if pause.is_some() || rng.random_bool(0.5) {
                    n += 1;
                    write(&rec, &store, p, id, &lease, &format!("{p}:{n}"));
                }
                let r = rec.invoke(p, Op::Release { lease: id });
                match client.release(&lease).await {
                    Ok(_) => rec.ok(r, Value::Done),
                    Err(e) => rec.unknown(r, e.to_string()),
                }
                tokio::time::sleep(rng.random_range(0..5) * MS).await;
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
    let (set, kills, node_pauses) = tokio::task::spawn_blocking(move || injector.join())
        .await
        .unwrap()
        .unwrap();
    drop(set);
    let report = check(&rec.history());
    let (accepted, rejected) = store.counts();
    assert_eq!(
        (accepted as usize, rejected as usize),
        (report.writes_accepted, report.writes_rejected)
    );
    let quorums = quorums.lock().unwrap().len();
    (
        report,
        Chaos {
            kills,
            node_pauses,
            holder_pauses: holder_pauses.load(Ordering::SeqCst),
            quorums,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_stay_monotonic_through_pauses_kills_and_shifting_quorums() {
    let (report, chaos) = chaos(true, 6, Duration::from_secs(20), 5).await;
    println!(
        "fenced chaos: {report}\n  faults: {} node kills (restarted from the AOF), {} node pauses, \
         {} holder pauses past the TTL; {} distinct granting quorums",
        chaos.kills, chaos.node_pauses, chaos.holder_pauses, chaos.quorums
    );
    assert!(report.is_ok(), "{report}");
    assert!(report.leases >= 200, "{report}");
    assert!(chaos.kills >= 5 && chaos.holder_pauses >= 5, "{chaos:?}");
    assert!(chaos.quorums >= 5, "{chaos:?}");
    // Paused holders were fenced off: some of their writes were refused.
    assert!(report.writes_rejected >= 1, "{report}");
    assert_eq!(
        report.faults,
        chaos.kills + chaos.node_pauses + chaos.holder_pauses
    );
}

/// Negative control on the same workload: per-node fences go backwards as
/// soon as two successive leases are granted by majorities whose largest
/// counters differ, which the node start times and restarts guarantee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_chaos_with_per_node_fences_is_caught() {
    let (report, chaos) = chaos(false, 4, Duration::from_secs(6), 7).await;
    println!(
        "unfenced chaos: {report}\n  faults: {} kills, {} node pauses, {} holder pauses",
        chaos.kills, chaos.node_pauses, chaos.holder_pauses
    );
    let (malformed, order, _stale, overlap) = report.counts();
    assert_eq!((malformed, overlap), (0, 0), "{report}");
    assert!(order >= 1, "{report}");
}
