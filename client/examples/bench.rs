//! Acquire+release latency of this client on 1 and 5 nodes, and of `rslock`
//! on the same 5 nodes, measured in one run and printed as a table with
//! ratios; and the cost of fenced acquisition (the default: a raise round
//! after the grant) against unfenced, on the same 5 nodes.
//!
//! Run through `scripts/bench-client.sh` (release build, module from
//! `target/release`), or directly:
//!
//! ```text
//! cargo build --release -p redis-lock
//! REDIS_LOCK_MODULE=target/release/libredis_lock.so \
//!   cargo run --release -p redis-lock-client --example bench -- [iterations]
//! ```
//!
//! The servers are started by `testkit` on free ports and stopped at the
//! end. The healthy configurations take turns in several rounds, so that
//! drift of the machine's speed during the run hits all of them alike. Two
//! last rows pause one of the five nodes (SIGSTOP) to show what a hung node
//! costs each client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use redis_lock_client::{Client, Config};
use testkit::{Flavor, NodeSet};

const TTL: Duration = Duration::from_secs(10);
const ROUNDS: usize = 5;
/// rslock waits ~0.5 s per request to a hung node: a few iterations suffice.
const PAUSED_RSLOCK: usize = 6;

/// Latencies, and the client's own CPU time spent producing them.
#[derive(Default)]
struct Samples(Vec<Duration>, Duration);

impl Samples {
    /// Client CPU time per acquire+release.
    fn cpu_per_op(&self) -> Duration {
        self.1 / u32::try_from(self.0.len().max(1)).unwrap_or(u32::MAX)
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied().unwrap_or_default()
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// CPU time of the calling thread. The runtime is single-threaded, so this
/// is all the client's work (connection drivers included), and none of the
/// servers'.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

async fn ours(client: &Client, resource: &str, n: usize, out: &mut Samples) {
    let mut acquire_only = Samples::default();
    ours_split(client, resource, n, out, &mut acquire_only, None).await;
}

/// As `ours`, and the acquisition alone (up to the lease in hand) into
/// `acquire_only`. With `bump`, a single-node client takes and releases
/// another lock before each iteration (untimed), which moves that node's
/// counter one ahead of the others': the fences a round is granted then
/// differ, and fenced acquisition has to raise every time.
async fn ours_split(
    client: &Client,
    resource: &str,
    n: usize,
    out: &mut Samples,
    acquire_only: &mut Samples,
    bump: Option<&Client>,
) {
    let mut cpu = Duration::ZERO;
    for _ in 0..n {
        if let Some(b) = bump {
            let lease = b.try_acquire("bench:bump", TTL).await.unwrap();
            b.release(&lease).await.unwrap();
        }
        let cpu0 = thread_cpu();
        let t = Instant::now();
        let lease = client.try_acquire(resource, TTL).await.unwrap();
        acquire_only.0.push(t.elapsed());
        client.release(&lease).await.unwrap();
        out.0.push(t.elapsed());
        cpu += thread_cpu().saturating_sub(cpu0);
    }
    out.1 += cpu;
}

async fn theirs(manager: &rslock::LockManager, resource: &str, n: usize, out: &mut Samples) {
    let cpu = thread_cpu();
    for _ in 0..n {
        let t = Instant::now();
        let lock = manager.lock(resource, TTL).await.unwrap();
        manager.unlock(&lock).await;
        out.0.push(t.elapsed());
    }
    out.1 += thread_cpu().saturating_sub(cpu);
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("iterations: a number"))
        .unwrap_or(4000);
    let per_round = (iterations / ROUNDS).max(1);
    let flavor = Flavor::Redis7;
    let set = NodeSet::start(5, flavor);
    let urls = set.urls();

    // One thread drives every client alike.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let one = Client::new(Config::builder(vec![urls[0].clone()]).build().unwrap()).unwrap();
        let five = Client::new(Config::builder(urls.clone()).build().unwrap()).unwrap();
        let five_unfenced = Client::new(
            Config::builder(urls.clone())
                .fenced(false)
                .build()
                .unwrap(),
        )
        .unwrap();
        let rs_one = rslock::LockManager::new(vec![urls[0].clone()]);
        let rs_five = rslock::LockManager::new(urls.clone());
        one.connect().await.unwrap();
        five.connect().await.unwrap();
        five_unfenced.connect().await.unwrap();

        // Warm up connections and caches.
        let mut sink = Samples::default();
        ours(&one, "bench:warm", 200, &mut sink).await;
        ours(&five, "bench:warm", 200, &mut sink).await;
        ours(&five_unfenced, "bench:warm", 200, &mut sink).await;
        theirs(&rs_one, "bench:warm", 200, &mut sink).await;
        theirs(&rs_five, "bench:warm", 200, &mut sink).await;

        let (mut a, mut b, mut c, mut d) = (
            Samples::default(),
            Samples::default(),
            Samples::default(),
            Samples::default(),
        );
        // Fenced (b, the default) and unfenced (u) on 5 nodes, with the
        // acquisition alone timed too (ba, ua). One hot lock keeps the
        // counters of the nodes that usually grant in step (each raise
        // levels them), so most rounds need no raise; with node 0's counter
        // pushed ahead before every round (x, xa) each one does.
        let (mut u, mut ba, mut ua) = (
            Samples::default(),
            Samples::default(),
            Samples::default(),
        );
        let (mut x, mut xa, mut xu, mut xua) = (
            Samples::default(),
            Samples::default(),
            Samples::default(),
            Samples::default(),
        );
        let bump = Client::new(Config::builder(vec![urls[0].clone()]).build().unwrap()).unwrap();
        for _ in 0..ROUNDS {
            ours(&one, "bench:1", per_round, &mut a).await;
            ours_split(&five, "bench:5", per_round, &mut b, &mut ba, None).await;
            ours_split(&five_unfenced, "bench:5u", per_round, &mut u, &mut ua, None).await;
            ours_split(&five, "bench:5x", per_round, &mut x, &mut xa, Some(&bump)).await;
            ours_split(&five_unfenced, "bench:5xu", per_round, &mut xu, &mut xua, Some(&bump)).await;
            theirs(&rs_five, "bench:rs5", per_round, &mut c).await;
            theirs(&rs_one, "bench:rs1", per_round, &mut d).await;
        }

        // One node hung (SIGSTOP): the per-node timeout and the early
        // decision keep this client going; rslock waits for every node.
        set.nodes[4].pause();
        let mut e = Samples::default();
        let mut f = Samples::default();
        ours(&five, "bench:p5", per_round, &mut e).await;
        theirs(&rs_five, "bench:rsp5", PAUSED_RSLOCK, &mut f).await;
        set.nodes[4].resume();

        let base50 = a.quantile(0.5);
        let base99 = a.quantile(0.99);
        println!(
            "acquire+release latency on {flavor}, one client task, loopback; healthy rows {ROUNDS} interleaved rounds"
        );
        println!(
            "{:<40} {:>6} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "configuration", "n", "p50 us", "p99 us", "p50/ours1", "p99/ours1", "client cpu us"
        );
        for (name, s) in [
            ("redis-lock-client, 1 node", &a),
            ("redis-lock-client, 5 nodes", &b),
            ("redis-lock-client, 5 nodes, unfenced", &u),
            ("  ... fenced, counters apart", &x),
            ("  ... unfenced, counters apart", &xu),
            ("rslock 0.10, 1 node", &d),
            ("rslock 0.10, 5 nodes", &c),
            ("redis-lock-client, 5 nodes, 1 paused", &e),
            ("rslock 0.10, 5 nodes, 1 paused", &f),
        ] {
            println!(
                "{:<40} {:>6} {:>10.1} {:>10.1} {:>9.2}x {:>9.2}x {:>12.1}",
                name,
                s.0.len(),
                us(s.quantile(0.5)),
                us(s.quantile(0.99)),
                us(s.quantile(0.5)) / us(base50),
                us(s.quantile(0.99)) / us(base99),
                us(s.cpu_per_op()),
            );
        }
        println!();
        println!(
            "{:<44} {:>6} {:>10} {:>10}",
            "acquisition alone, 5 nodes", "n", "p50 us", "p99 us"
        );
        for (name, s) in [
            ("fenced (default), hot lock", &ba),
            ("unfenced, hot lock", &ua),
            ("fenced, counters apart (raise ~every round)", &xa),
            ("unfenced, counters apart", &xua),
        ] {
            println!(
                "{:<44} {:>6} {:>10.1} {:>10.1}",
                name,
                s.0.len(),
                us(s.quantile(0.5)),
                us(s.quantile(0.99)),
            );
        }
        println!();
        for (name, f, nf) in [
            ("hot lock", &ba, &ua),
            ("counters apart", &xa, &xua),
            ("hot lock, acquire+release", &b, &u),
            ("counters apart, acquire+release", &x, &xu),
        ] {
            println!(
                "fenced / unfenced, 5 nodes, {:<32} p50 {:.2}x ({:+.0} us)  p99 {:.2}x ({:+.0} us)",
                format!("{name}:"),
                us(f.quantile(0.5)) / us(nf.quantile(0.5)),
                us(f.quantile(0.5)) - us(nf.quantile(0.5)),
                us(f.quantile(0.99)) / us(nf.quantile(0.99)),
                us(f.quantile(0.99)) - us(nf.quantile(0.99)),
            );
        }
        println!(
            "this client, 5 nodes / 1 node:        p50 {:.2}x  p99 {:.2}x   (target <= 1.5x)",
            us(b.quantile(0.5)) / us(base50),
            us(b.quantile(0.99)) / us(base99)
        );
        println!(
            "rslock / this client, 5 nodes:        p50 {:.2}x  p99 {:.2}x   (target >= 2x at p50)",
            us(c.quantile(0.5)) / us(b.quantile(0.5)),
            us(c.quantile(0.99)) / us(b.quantile(0.99))
        );
        println!(
            "rslock / this client, 1 node paused:  p50 {:.0}x  p99 {:.0}x",
            us(f.quantile(0.5)) / us(e.quantile(0.5)),
            us(f.quantile(0.99)) / us(e.quantile(0.99))
        );
    });
}
