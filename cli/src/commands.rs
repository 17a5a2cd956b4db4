//! The subcommands other than `run`, and the settings they share.

use std::io::Write;
use std::time::Duration;

use clap::CommandFactory;
use redis_lock_client::{Client, Config, NodeErrorKind, Token};

use crate::args::{
    AcquireArgs, Cli, Command, ExtendArgs, Global, InfoArgs, ReleaseArgs, StatusArgs,
};
use crate::exit::{self, Failure};
use crate::{duration, output, run};

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

pub async fn dispatch(cli: Cli) -> u8 {
    let g = &cli.global;
    match cli.command {
        Command::Run(a) => run::run(g, a).await,
        Command::Acquire(a) => acquire(g, a).await,
        Command::Extend(a) => extend(g, a).await,
        Command::Release(a) => release(g, a).await,
        Command::Info(a) => info(g, a).await,
        Command::Status(a) => status(g, a).await,
        Command::Completions(c) => completions(c.shell),
    }
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

async fn acquire(g: &Global, a: AcquireArgs) -> u8 {
    let client = match config(g, None).and_then(client) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key = a.lock.key.as_str();
    match client.acquire(key, a.lock.ttl, a.waiting.budget()).await {
        Ok(lease) => {
            // Checked once connected (no extra wait for nodes that are
            // down): one server listed twice must not make the quorum.
            if let Err(e) = client.check_distinct().await {
                let _ = client.release(&lease).await;
                settle(g, &client).await;
                return fail(Failure::Usage, e);
            }
            let shown = output::acquired(
                key,
                lease.token().as_str(),
                lease.fence(),
                lease.remaining(),
            );
            if !put(&shown) {
                // Nobody learns the token: nobody could release it.
                let _ = client.release(&lease).await;
                settle(g, &client).await;
                return fail(
                    Failure::Internal,
                    format!("cannot write the lease of {key:?} to stdout; released it"),
                );
            }
            // The round returned once a quorum granted; let the requests to
            // the slower nodes finish, so the lock is held on every node that
            // can take it and not on a bare quorum.
            settle(g, &client).await;
            exit::OK
        }
        Err(e) => {
            let code = not_acquired(&e, a.waiting.conflict_exit_code);
            settle(g, &client).await;
            code
        }
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

/// The client for `extend`, `release`, `info` and `status`.
fn connect(g: &Global) -> Result<Client, u8> {
    config(g, None).and_then(client)
}

fn token(raw: &str) -> Result<Token, u8> {
    Token::new(raw).map_err(|e| fail(Failure::Usage, format!("--token: {e}")))
}

/// A failed `extend` or `release` by token: "not held" (and a hold limit
/// that keeps the lock from being extended) is status 1.
fn token_failure(e: &redis_lock_client::Error) -> u8 {
    let failure = if e.is_not_held() || e.is_lost() {
        Failure::NotHeld
    } else {
        exit::classify(e)
    };
    fail(failure, e)
}

async fn extend(g: &Global, a: ExtendArgs) -> u8 {
    let (client, token) = match connect(g).and_then(|c| Ok((c, token(&a.token)?))) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let key = &a.lock.key;
    match client.extend_token(key, &token, a.lock.ttl).await {
        Ok(on) => {
            put(&format!(
                "extended {key:?} by {} on {on} of {} nodes\n",
                duration::format(a.lock.ttl),
                client.config().nodes()
            ));
            exit::OK
        }
        Err(e) => token_failure(&e),
    }
}

async fn release(g: &Global, a: ReleaseArgs) -> u8 {
    let (client, token) = match connect(g).and_then(|c| Ok((c, token(&a.token)?))) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match client.release_token(&a.key, &token).await {
        Ok(r) => {
            put(&format!(
                "released {:?}: it was held on {} of {} nodes\n",
                a.key,
                r.held,
                client.config().nodes()
            ));
            exit::OK
        }
        Err(e) => token_failure(&e),
    }
}

/// The one rule for `info` and `status`: 0 when every node is fine, 1 when
/// a quorum is, else the failure of the nodes that are not.
fn health_code(ok: usize, nodes: usize, quorum: usize, kinds: Vec<NodeErrorKind>) -> u8 {
    if ok == nodes {
        exit::OK
    } else if ok >= quorum {
        exit::DEGRADED
    } else {
        Failure::from_node_kinds(kinds).code()
    }
}

async fn info(g: &Global, a: InfoArgs) -> u8 {
    let client = match connect(g) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let views = client.lock_info(&a.key).await;
    put(&output::info(&client.config().node_addrs(), &views));
    let kinds = views
        .nodes
        .iter()
        .filter_map(|s| s.as_ref().err().map(|e| e.kind))
        .collect();
    let answered = views.nodes.len() - views.failed();
    health_code(answered, views.nodes.len(), views.quorum, kinds)
}

async fn status(g: &Global, a: StatusArgs) -> u8 {
    let client = match connect(g) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let probes = client.probe(a.key.as_deref()).await;
    let quorum = client.config().quorum();
    put(&output::status(
        &client.config().node_addrs(),
        &probes,
        a.key.as_deref(),
        quorum,
    ));
    let healthy = probes.iter().filter(|p| p.healthy()).count();
    let kinds = probes.iter().filter_map(|p| p.failure_kind()).collect();
    health_code(healthy, probes.len(), quorum, kinds)
}

pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = Cli::command();
    // Into memory first: generate() panics if its writer fails.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "redis-lock", &mut script);
    put(&String::from_utf8_lossy(&script));
    exit::OK
}
