//! What every subcommand shares: the client from the global flags, how a
//! failure is reported, writing to stdout, letting background requests
//! finish.

use std::io::Write;
use std::time::Duration;

use redis_lock_client::{Client, Config};

use crate::args::Global;
use crate::duration;
use crate::exit::{self, Failure};

/// Prints `redis-lock: message` on stderr and returns the failure's status.
pub fn fail(failure: Failure, message: impl std::fmt::Display) -> u8 {
    say!("redis-lock: {message}");
    failure.code()
}

/// Writes to stdout; false if that failed (a closed pipe): never a panic.
pub fn put(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

fn node_urls(g: &Global) -> Result<&str, u8> {
    match g.nodes.as_deref().map(str::trim) {
        Some(urls) if !urls.is_empty() => Ok(urls),
        _ => Err(fail(
            Failure::Usage,
            "no nodes: set REDIS_LOCK_NODES or pass --nodes redis://host:port,...",
        )),
    }
}

/// The quorum client's configuration from the global flags.
pub fn config(g: &Global, max_hold: Option<Duration>) -> Result<Config, u8> {
    let mut b = Config::builder(node_urls(g)?)
        .connect_timeout(g.connect_timeout)
        .request_timeout(g.timeout)
        .retry_delay(g.retry)
        .retry_jitter(g.retry)
        .max_hold(max_hold.unwrap_or(Duration::MAX));
    if let Some(u) = &g.username {
        b = b.username(u);
    }
    if let Some(p) = &g.password {
        b = b.password(p);
    }
    if let Some(ca) = &g.tls_ca {
        b = b.tls_ca_file(ca);
    }
    if let (Some(cert), Some(key)) = (&g.tls_cert, &g.tls_key) {
        b = b.tls_client_cert(cert, key);
    }
    b.build().map_err(|e| fail(exit::classify(&e), e))
}

pub fn client(config: Config) -> Result<Client, u8> {
    Client::new(config).map_err(|e| fail(exit::classify(&e), e))
}

/// Why an acquisition failed, in one line, and its status.
/// `conflict` is the status for a lock held by another (`-E`).
pub fn not_acquired(e: &redis_lock_client::Error, conflict: u8) -> u8 {
    let failure = exit::classify(e);
    let what = match failure {
        Failure::Usage | Failure::Internal => e.to_string(),
        // The client's message names the lock.
        _ => format!("not acquired: {e}"),
    };
    let code = fail(failure, what);
    if failure == Failure::Taken {
        conflict
    } else {
        code
    }
}

/// Before the runtime stops: waits for the requests the client left to
/// finish in the background, at most as long as one request may take (a
/// request on a broken connection is sent once more on a new one).
pub async fn settle(g: &Global, client: &Client) {
    let limit = g
        .connect_timeout
        .saturating_add(g.timeout)
        .saturating_mul(2);
    if !client.settle(limit).await {
        say!(
            "redis-lock: some nodes did not answer within {}; a lock left on them runs out at its TTL",
            duration::format(limit)
        );
    }
}
