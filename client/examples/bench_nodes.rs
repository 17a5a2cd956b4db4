//! Acquire+release latencies of this client on nodes that are already
//! running, one sample per line in microseconds: the Rust side of
//! `make bench-python` (`python/bench.py`), which starts the nodes and runs
//! every client on the same ones.
//!
//! ```text
//! cargo run --release -p redis-lock-client --example bench_nodes -- ITERATIONS KEY URL...
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use redis_lock_client::{Client, Config};

const TTL: Duration = Duration::from_secs(10);

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("usage: bench_nodes ITERATIONS KEY URL...");
    let key = args
        .next()
        .expect("usage: bench_nodes ITERATIONS KEY URL...");
    let urls: Vec<String> = args.collect();
    // One thread drives the client, as in `examples/bench.rs`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let samples = rt.block_on(async {
        let client = Client::new(Config::builder(urls).build().unwrap()).unwrap();
        client.connect().await.unwrap();
        for _ in 0..200 {
            let lease = client.try_acquire(&key, TTL).await.unwrap();
            client.release(&lease).await.unwrap();
        }
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            let lease = client.try_acquire(&key, TTL).await.unwrap();
            client.release(&lease).await.unwrap();
            samples.push(t.elapsed());
        }
        samples
    });
    let mut out = std::io::stdout().lock();
    for s in samples {
        writeln!(out, "{:.1}", s.as_secs_f64() * 1e6).unwrap();
    }
}
