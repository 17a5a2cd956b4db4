//! The queued hand-over on 5 real nodes, by counts, not timings: server
//! commands and connections per contended grant, fairness with a contender
//! whose wall clock is a day off (a process of its own under libfaketime),
//! and the split and give-up paths leaving no grant and no wait behind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Connection;
use redis_lock_client::{Client, Config};
use testkit::{lockcmd, NodeSet};

const MS: Duration = Duration::from_millis(1);

fn client(urls: &[String]) -> Client {
    let config = Config::builder(urls.to_vec())
        .connect_timeout(500 * MS)
        .request_timeout(50 * MS)
        .server_wait(true)
        .build()
        .unwrap();
    Client::new(config).unwrap()
}

/// One connection per node kept for `INFO stats` readings, so the readings
/// open no connections themselves.
struct Stats(Vec<Connection>);

impl Stats {
    fn new(set: &NodeSet) -> Stats {
        Stats(set.nodes.iter().map(|s| s.conn()).collect())
    }

    /// (commands processed, connections received) summed over the nodes,
    /// less this reading's own `INFO` commands.
    fn read(&mut self) -> (i64, i64) {
        let mut commands = 0;
        let mut connections = 0;
        for c in &mut self.0 {
            let text: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
            let field = |name: &str| -> i64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                    .unwrap()
            };
            commands += field("total_commands_processed");
            connections += field("total_connections_received");
        }
        (commands - self.0.len() as i64, connections)
    }
}

/// The monotonic clock in microseconds, the same in every process (a
/// faked wall clock leaves it alone).
fn mono_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Acquire, hold `hold`, release, from `from` until `until` (monotonic
/// microseconds); the grants counted.
async fn contend(c: Client, key: &str, hold: Duration, from: u64, until: u64) -> u64 {
    while mono_micros() < from {
        tokio::time::sleep(MS).await;
    }
    let mut grants = 0;
    while mono_micros() < until {
        let left = Duration::from_micros(until.saturating_sub(mono_micros())) + 100 * MS;
        let lease = c.acquire(key, 10_000 * MS, left).await.unwrap();
        if mono_micros() < until {
            grants += 1;
        }
        tokio::time::sleep(hold).await;
        c.release(&lease).await.unwrap();
    }
    assert!(c.settle(Duration::from_secs(2)).await);
    grants
}

/// Four contenders pass one lock on five nodes: after a warm-up, a grant
/// costs the waits and the releases (10 commands), at most 12 with the
/// occasional split, and the waits reuse their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_grant_on_five_nodes_costs_at_most_twelve_commands_and_no_connection() {
    let set = NodeSet::start(5, testkit::first_flavor());
    let urls = set.urls();
    let clients: Vec<Client> = (0..4).map(|_| client(&urls)).collect();
    let grants = Arc::new(AtomicU64::new(0));
    let run = |rounds: usize| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                let (c, grants) = (c.clone(), grants.clone());
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        let lease = c
                            .acquire("counted", 10_000 * MS, 10_000 * MS)
                            .await
                            .unwrap();
                        grants.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(MS).await;
                        c.release(&lease).await.unwrap();
                    }
                })
            })
            .collect();
        async move {
            for h in handles {
                h.await.unwrap();
            }
        }
    };
    run(20).await; // warm-up: connections opened, node clocks learned
    for c in &clients {
        assert!(c.settle(Duration::from_secs(2)).await);
    }
    let mut stats = Stats::new(&set);
    let before = stats.read();
    grants.store(0, Ordering::Relaxed);
    run(100).await;
    for c in &clients {
        assert!(c.settle(Duration::from_secs(2)).await);
    }
    let after = stats.read();
    let grants = grants.load(Ordering::Relaxed) as f64;
    let commands = (after.0 - before.0) as f64 / grants;
    let connections = (after.1 - before.1) as f64 / grants;
    eprintln!("{grants} grants: {commands:.2} commands and {connections:.3} connections each");
    assert!(commands <= 12.0, "{commands:.2} commands per grant");
    assert!(
        connections <= 0.05,
        "{connections:.3} connections per grant"
    );
}

/// Run by `skewed_clocks_do_not_move_a_contender_in_the_queues` in a
/// process of its own, under libfaketime: contends from `FROM` to `UNTIL`
/// and prints its grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of another test"]
async fn skewed_contender_process() {
    let Ok(urls) = std::env::var("HANDOVER_URLS") else {
        return;
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let var = |name: &str| std::env::var(name).unwrap().parse::<u64>().unwrap();
    let grants = contend(client(&urls), "skewed", MS, var("FROM"), var("UNTIL")).await;
    println!("grants {grants}");
}

/// Three contenders and a fourth whose wall clock is a day ahead, then a
/// day behind: each gets about a quarter of the grants. (With tickets from
/// the client's wall clock it got 2% ahead, and 50% behind.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_do_not_move_a_contender_in_the_queues() {
    let Some(lib) = testkit::libfaketime() else {
        panic!("libfaketime is needed: apt-get install -y faketime");
    };
    let set = NodeSet::start(5, testkit::first_flavor());
    let urls = set.urls();
    for skew in ["+1d", "-1d"] {
        let from = mono_micros() + 1_500_000;
        let until = from + 2_000_000;
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "skewed_contender_process",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("HANDOVER_URLS", urls.join(","))
            .env("FROM", from.to_string())
            .env("UNTIL", until.to_string())
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", skew)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_DONT_RESET", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let handles: Vec<_> = (0..3)
            .map(|_| tokio::spawn(contend(client(&urls), "skewed", MS, from, until)))
            .collect();
        let mut others = Vec::new();
        for h in handles {
            others.push(h.await.unwrap());
        }
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let skewed: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("grants ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count from the {skew} contender: {text}"));
        let mean = others.iter().sum::<u64>() as f64 / others.len() as f64;
        eprintln!("{skew}: skewed contender {skewed} grants, the others {others:?}");
        assert!(mean > 20.0, "too few grants to judge: {others:?}");
        let share = skewed as f64 / mean;
        assert!(
            (0.6..=1.4).contains(&share),
            "{skew}: {skewed} grants against {others:?}"
        );
    }
}

/// Nothing of `token`-less waiters or grants left on any node: no lock but
/// `holder`'s, no waiter.
fn only_held_by(set: &NodeSet, key: &str, holder_nodes: usize) {
    testkit::eventually(Duration::from_secs(5), "nothing left behind", || {
        set.nodes
            .iter()
            .enumerate()
            .all(|(i, s)| {
                let info = lockcmd::info_on(s, key);
                match info {
                    None => i >= holder_nodes,
                    Some(info) => i < holder_nodes && info["waiters"] == 0,
                }
            })
            .then_some(())
    });
}

/// A holder on nodes 0-2: the waiter is granted the free nodes 3 and 4 at
/// once, the rest does not follow within its split window, so it gives
/// them back, and when its budget runs out it has left neither a grant
/// nor a wait anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_minority_grant_and_a_spent_budget_leave_nothing_behind() {
    let set = NodeSet::start(5, testkit::first_flavor());
    for s in &set.nodes[..3] {
        assert!(lockcmd::acquire(&mut s.conn(), "split", "holder", 60_000).is_some());
    }
    let w = client(&set.urls());
    let mut stats = Stats::new(&set);
    let released_before = released_minorities(&mut stats);
    let e = w.acquire("split", 10_000 * MS, 400 * MS).await.unwrap_err();
    assert!(e.is_wait_exhausted() && e.is_taken(), "{e}");
    assert!(w.settle(Duration::from_secs(2)).await);
    only_held_by(&set, "split", 3);
    // It did take the free nodes and gave them back (each split released
    // them): more releases of a held lock than before.
    assert!(released_minorities(&mut stats) > released_before);
}

fn released_minorities(stats: &mut Stats) -> i64 {
    stats
        .0
        .iter_mut()
        .map(|c| testkit::info_field(c, "lock", "lock_releases"))
        .sum()
}

/// A holder whose lock runs out just when the waiter's budget does, at
/// offsets around it: the node's hand-over and the waiter's giving up race.
/// Either the waiter has the lease, or nothing of it is left on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_racing_the_end_of_the_wait_is_not_left_behind() {
    let set = NodeSet::start(5, testkit::first_flavor());
    let w = client(&set.urls());
    let (mut won, mut lost) = (0, 0);
    for offset in (-20i64..=20).step_by(4) {
        let key = format!("race:{offset}");
        let budget = 200u64;
        let ttl = u64::try_from(budget as i64 + offset).unwrap();
        for s in &set.nodes {
            assert!(lockcmd::acquire(&mut s.conn(), &key, "holder", ttl).is_some());
        }
        match w
            .acquire(&key, 10_000 * MS, Duration::from_millis(budget))
            .await
        {
            Ok(lease) => {
                won += 1;
                w.release(&lease).await.unwrap();
            }
            Err(e) => {
                assert!(e.is_wait_exhausted(), "{e}");
                lost += 1;
            }
        }
        assert!(w.settle(Duration::from_secs(2)).await);
        testkit::eventually(Duration::from_secs(5), "nothing left", || {
            set.nodes
                .iter()
                .all(|s| lockcmd::info_on(s, &key).is_none())
                .then_some(())
        });
    }
    eprintln!("won {won}, gave up {lost}");
}

/// The holder's lock runs out (no release) after longer than the waiter's
/// TTL: the queues hand the waiter the lock, but the grant is as old as
/// its wait says, so a plain round with the same token confirms it (a
/// refresh on every node that handed it over), and the lease is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_after_a_wait_longer_than_the_ttl_is_confirmed_by_a_refresh() {
    let set = NodeSet::start(5, testkit::first_flavor());
    for s in &set.nodes {
        assert!(lockcmd::acquire(&mut s.conn(), "late", "holder", 700).is_some());
    }
    let w = client(&set.urls());
    let mut stats = Stats::new(&set);
    let refreshes = |stats: &mut Stats| -> i64 {
        stats
            .0
            .iter_mut()
            .map(|c| testkit::info_field(c, "lock", "lock_reacquisitions"))
            .sum()
    };
    let before = refreshes(&mut stats);
    let lease = w.acquire("late", 500 * MS, 5_000 * MS).await.unwrap();
    assert!(!lease.remaining().is_zero());
    assert!(refreshes(&mut stats) - before >= 3, "confirmed on a quorum");
    w.release(&lease).await.unwrap();
    assert!(w.settle(Duration::from_secs(2)).await);
}

/// A prompt hand-over needs no confirming round: no refresh, no extension.
/// (Unfenced clients: a fence raise, when the nodes' fences differ, is a
/// refresh of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_hand_over_needs_no_confirming_round() {
    let set = NodeSet::start(5, testkit::first_flavor());
    let unfenced = || {
        let config = Config::builder(set.urls())
            .request_timeout(50 * MS)
            .fenced(false)
            .build()
            .unwrap();
        Client::new(config).unwrap()
    };
    let (a, b) = (unfenced(), unfenced());
    let held = a.acquire("prompt", 10_000 * MS, 1_000 * MS).await.unwrap();
    let waiting = tokio::spawn(async move {
        let lease = b.acquire("prompt", 10_000 * MS, 5_000 * MS).await.unwrap();
        b.release(&lease).await.unwrap();
        assert!(b.settle(Duration::from_secs(2)).await);
    });
    testkit::eventually(Duration::from_secs(5), "queued everywhere", || {
        set.nodes
            .iter()
            .all(|s| lockcmd::info_on(s, "prompt").is_some_and(|i| i["waiters"] == 1))
            .then_some(())
    });
    let mut stats = Stats::new(&set);
    let field = |stats: &mut Stats, name: &str| -> i64 {
        stats
            .0
            .iter_mut()
            .map(|c| testkit::info_field(c, "lock", name))
            .sum()
    };
    let (refreshes, extensions) = (
        field(&mut stats, "lock_reacquisitions"),
        field(&mut stats, "lock_extensions"),
    );
    a.release(&held).await.unwrap();
    waiting.await.unwrap();
    assert_eq!(field(&mut stats, "lock_reacquisitions"), refreshes);
    assert_eq!(field(&mut stats, "lock_extensions"), extensions);
    assert!(field(&mut stats, "lock_handovers") >= 3);
}
