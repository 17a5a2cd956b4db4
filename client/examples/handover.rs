//! Hand-over latency (from the holder's release to the next holder's grant)
//! and throughput of a lock passed among contenders, waiting in the nodes'
//! queues (`LOCK.ACQUIRE ... WAIT`) against polling (this client's polling
//! mode and `rslock`), all in one run. Run by `scripts/bench-handover.sh`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use redis_lock_client::{Client, Config};
use testkit::{lockcmd, Flavor, NodeSet};

const TTL: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(30);

fn client(urls: &[String], server_wait: bool) -> Client {
    Client::new(
        Config::builder(urls.to_vec())
            .server_wait(server_wait)
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A benchmark case: name, nodes, their URLs, the holder, the waiter, samples.
type Case<'a> = (
    &'a str,
    &'a NodeSet,
    &'a [String],
    &'a Client,
    Waiter,
    usize,
);

#[derive(Clone, Copy)]
enum Waiter {
    /// LOCK.ACQUIRE ... WAIT on one node, on a plain connection.
    Raw,
    /// This client, queued in the nodes (`server_wait(true)`).
    Queued,
    /// This client polling with its default backoff (50 ms + 0-100 ms).
    Polling,
    /// rslock: `lock()` (3 tries, 0-200 ms apart) until it succeeds.
    Rslock,
}

/// One hand-over: the holder releases while the waiter waits; returns the
/// time from just before the release to the waiter's grant.
async fn handover(
    set: &NodeSet,
    urls: &[String],
    holder: &Client,
    waiter: Waiter,
    key: &str,
) -> Duration {
    let lease = holder.acquire(key, TTL, WAIT).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
    let (urls_owned, key_owned) = (urls.to_vec(), key.to_owned());
    let task = tokio::spawn(async move {
        let urls = urls_owned;
        let key = key_owned.as_str();
        match waiter {
            Waiter::Raw => {
                let c = redis::Client::open(urls[0].as_str()).unwrap();
                let mut conn = c.get_multiplexed_async_connection().await.unwrap();
                let fence: Option<i64> = redis::cmd("LOCK.ACQUIRE")
                    .arg(key)
                    .arg("raw-waiter")
                    .arg(10_000)
                    .arg("WAIT")
                    .arg(30_000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let got = Instant::now();
                assert!(fence.is_some());
                let _: i64 = redis::cmd("LOCK.RELEASE")
                    .arg(key)
                    .arg("raw-waiter")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let _ = tx.send(got);
            }
            Waiter::Queued | Waiter::Polling => {
                let c = client(&urls, matches!(waiter, Waiter::Queued));
                let lease = c.acquire(key, TTL, WAIT).await.unwrap();
                let got = Instant::now();
                c.release(&lease).await.unwrap();
                let _ = tx.send(got);
            }
            Waiter::Rslock => {
                let m = rslock::LockManager::new(urls.clone());
                let lock = loop {
                    if let Ok(lock) = m.lock(key, TTL).await {
                        break lock;
                    }
                };
                let got = Instant::now();
                m.unlock(&lock).await;
                let _ = tx.send(got);
            }
        }
    });
    match waiter {
        // Release once the waiter is queued on every node.
        Waiter::Raw | Waiter::Queued => {
            let nodes = &set.nodes[..urls.len()];
            // Queued on every node the holder holds (it may hold only a
            // quorum; the waiter then holds the others).
            let quorum = nodes.len() / 2 + 1;
            testkit::eventually(Duration::from_secs(10), "waiter queued", || {
                let queued = nodes
                    .iter()
                    .filter(|s| {
                        lockcmd::info(&mut s.conn(), key).is_some_and(|i| i["waiters"] == 1)
                    })
                    .count();
                (queued >= quorum).then_some(())
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A poller is between two tries at a random phase.
        Waiter::Polling | Waiter::Rslock => {
            let phase = rand::rng().random_range(100..300);
            tokio::time::sleep(Duration::from_millis(phase)).await;
        }
    }
    let released = Instant::now();
    holder.release(&lease).await.unwrap();
    let got = rx.await.unwrap();
    task.await.unwrap();
    got.saturating_duration_since(released)
}

/// Grants per second of one lock passed among `tasks` contenders for `secs`,
/// and the fewest and most grants any one contender got.
async fn throughput(
    urls: &[String],
    server_wait: bool,
    tasks: usize,
    secs: u64,
) -> (f64, u64, u64) {
    let count = Arc::new(AtomicU64::new(0));
    let per_task: Arc<Vec<AtomicU64>> = Arc::new((0..tasks).map(|_| AtomicU64::new(0)).collect());
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (c, count, per_task) = (client(urls, server_wait), count.clone(), per_task.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let left = stop.saturating_duration_since(Instant::now());
                match c.acquire("bench:tput", TTL, left).await {
                    Ok(lease) => {
                        if Instant::now() < stop {
                            count.fetch_add(1, Ordering::Relaxed);
                            per_task[t].fetch_add(1, Ordering::Relaxed);
                        }
                        c.release(&lease).await.unwrap();
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let counts: Vec<u64> = per_task.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    (
        count.load(Ordering::Relaxed) as f64 / secs as f64,
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    )
}

fn main() {
    let samples: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("samples"))
        .unwrap_or(200);
    let poll_samples = (samples / 4).max(10);
    let set = NodeSet::start(5, Flavor::Redis7);
    let urls = set.urls();
    let one = vec![urls[0].clone()];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let holder1 = client(&one, true);
        let holder5 = client(&urls, true);
        let cases: Vec<Case> = vec![
            ("1 node, LOCK.ACQUIRE WAIT (raw connection)", &set, &one, &holder1, Waiter::Raw, samples),
            ("1 node, this client, queued", &set, &one, &holder1, Waiter::Queued, samples),
            ("1 node, this client, polling", &set, &one, &holder1, Waiter::Polling, poll_samples),
            ("1 node, rslock 0.10 (polling)", &set, &one, &holder1, Waiter::Rslock, poll_samples),
            ("5 nodes, this client, queued", &set, &urls, &holder5, Waiter::Queued, samples),
            ("5 nodes, this client, polling", &set, &urls, &holder5, Waiter::Polling, poll_samples),
            ("5 nodes, rslock 0.10 (polling)", &set, &urls, &holder5, Waiter::Rslock, poll_samples),
        ];
        println!("hand-over latency: from the holder's release to the waiter's grant");
        println!("{:<46} {:>5} {:>10} {:>10}", "waiter", "n", "p50 ms", "p99 ms");
        let mut p50 = Vec::new();
        for (i, (name, set, urls, holder, waiter, n)) in cases.into_iter().enumerate() {
            let key = format!("bench:handover:{i}");
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                lat.push(handover(set, urls, holder, waiter, &key).await);
            }
            let (a, b) = (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99));
            println!("{name:<46} {n:>5} {:>10.3} {:>10.3}", ms(a), ms(b));
            p50.push(a);
        }
        println!();
        let ratio = |slow: Duration, fast: Duration| slow.as_secs_f64() / fast.as_secs_f64();
        println!("polling / queued at p50: 1 node: client polling {:.0}x, rslock {:.0}x;  5 nodes: client polling {:.0}x, rslock {:.0}x",
            ratio(p50[2], p50[1]), ratio(p50[3], p50[1]), ratio(p50[5], p50[4]), ratio(p50[6], p50[4]));
        println!();
        println!("one lock passed among 16 contenders on 5 nodes for 3 s:");
        for (name, server_wait) in [("queued", true), ("polling", false)] {
            let (rate, fewest, most) = throughput(&urls, server_wait, 16, 3).await;
            println!("  {name:<8} {rate:>7.0} grants/s   per contender: fewest {fewest}, most {most}");
        }
    });
}
