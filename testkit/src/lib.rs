//! Test harness for redis-lock: throwaway Redis and Valkey servers with the module loaded.
//!
//! Every [`Server`] gets a free port, a private temp dir holding its log and data files,
//! `--save ""` unless asked otherwise, and a bounded readiness wait. Dropping it kills the
//! process and waits for it; if the test is panicking, the server log is printed first.
//!
//! ```no_run
//! use testkit::{flavors, Server};
//!
//! for flavor in flavors() {
//!     let server = Server::start(flavor); // module from target/debug, or REDIS_LOCK_MODULE
//!     let mut conn = server.conn();
//!     let pong: String = redis::cmd("PING").query(&mut conn).expect("PING");
//!     assert_eq!(pong, "PONG");
//! }
//! ```
//!
//! Environment:
//! - `REDIS_SERVER`, `VALKEY8_SERVER`, `VALKEY9_SERVER`, `REDIS74_SERVER`: server binaries to
//!   use instead of the installed ones.
//! - `CI=true` or `REDIS_LOCK_REQUIRE_ALL=1`: a missing flavor fails [`flavors()`] instead of
//!   being skipped.
//! - `REDIS_LOCK_MODULE`: the module `.so` to load (default `target/debug/libredis_lock.so`).
//! - `REDIS_LOCK_KEEP_DIRS=1`: keep each server's temp dir (log, RDB, AOF) after the test.

mod cluster;
mod fenced;
mod flavor;
pub mod history;
pub mod lockcmd;
mod lockutil;
pub mod proxy;
pub mod resp;
mod rng;
mod server;
pub mod tls;

use std::env;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

pub use cluster::Cluster;
pub use fenced::{FencedStore, StaleFence};
pub use flavor::{faketime_flavors, first_flavor, flavors, require_all, Flavor};
pub use lockutil::{
    corrupt_lock_dumps, crc64_redis, dump_with_fence, error_text, info_field, lock_info_fields,
    lock_info_owner, read_aof, wait_aof_rewrite,
};
pub use proxy::{Mode as ProxyMode, Proxy};
pub use redis;
pub use rng::Rng;
pub use server::{libfaketime, Server, ServerBuilder};

/// The workspace's root directory (where `Cargo.toml`, `target/` and `.venv/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The module to load: `REDIS_LOCK_MODULE` if set, else `libredis_lock.so` in the workspace's
/// `target/debug` (or `$CARGO_TARGET_DIR/debug`). When neither exists (a plain `cargo test` on a
/// clean checkout), the module is built once, into `target/testkit` (the outer cargo holds the
/// lock on `target/debug` while tests run). Panics if no module can be had.
pub fn module_path() -> PathBuf {
    if let Some(p) = env::var_os("REDIS_LOCK_MODULE").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        assert!(
            path.is_file(),
            "REDIS_LOCK_MODULE={} does not exist: build the module first: cargo build -p redis-lock",
            path.display()
        );
        return path;
    }
    let root = workspace_root();
    let target = match env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => root.join(t),
        _ => root.join("target"),
    };
    let built = target.join("debug").join("libredis_lock.so");
    if built.is_file() {
        return built;
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let own = target.join("testkit");
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!(
            "testkit: {} is missing: building the module into {}",
            built.display(),
            own.display()
        );
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "redis-lock", "--target-dir"])
            .arg(&own)
            .current_dir(&root)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        let path = own.join("debug").join("libredis_lock.so");
        if status.success() && path.is_file() {
            Ok(path)
        } else {
            Err(format!("cargo build -p redis-lock failed ({status})"))
        }
    });
    match result {
        Ok(path) => path.clone(),
        Err(e) => panic!(
            "module not found at {} and building it failed: {e} (or point REDIS_LOCK_MODULE at the .so)",
            built.display()
        ),
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
///
/// Another process can take it before it is used; [`Server`] retries with a new port when
/// that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// Poll `f` every 10 ms until it returns `Some`, and return that. Panics with `what` if
/// `timeout` passes first (`f` is always tried at least once).
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Independent servers, for the quorum client: no replication between them.
#[derive(Debug)]
pub struct NodeSet {
    pub nodes: Vec<Server>,
}

impl NodeSet {
    /// `n` servers of `flavor` with the module loaded, started in parallel.
    pub fn start(n: usize, flavor: Flavor) -> NodeSet {
        NodeSet::start_with(n, |_| Server::builder(flavor))
    }

    /// `n` servers from `builder(i)` for i in `0..n`, started in parallel, in order.
    pub fn start_with(n: usize, builder: impl Fn(usize) -> ServerBuilder + Sync) -> NodeSet {
        let builder = &builder;
        let nodes = thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| s.spawn(move || builder(i).start()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        NodeSet { nodes }
    }

    /// One `redis://127.0.0.1:<port>` URL per node, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }
}
