//! The subcommands other than `run`: acquire, extend, release, info,
//! status, completions.

use clap::CommandFactory;
use redis_lock_client::{Client, Health, NodeErrorKind, Token};

use crate::args::{AcquireArgs, Cli, ExtendArgs, Global, InfoArgs, ReleaseArgs, StatusArgs};
use crate::exit::{self, Failure};
use crate::setup::{client, config, fail, not_acquired, put, settle};
use crate::{duration, output};

pub async fn acquire(g: &Global, a: AcquireArgs) -> u8 {
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

pub async fn extend(g: &Global, a: ExtendArgs) -> u8 {
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

pub async fn release(g: &Global, a: ReleaseArgs) -> u8 {
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

/// The one rule for `info` and `status`, from the client's verdict: 0 when
/// every node is fine, 1 when a quorum is, else the failure of the nodes
/// that are not.
fn health_code(health: Health, kinds: Vec<NodeErrorKind>) -> u8 {
    match health {
        Health::All => exit::OK,
        h if h.has_quorum() => exit::DEGRADED,
        _ => Failure::from_node_kinds(kinds).code(),
    }
}

pub async fn info(g: &Global, a: InfoArgs) -> u8 {
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
    health_code(views.health(), kinds)
}

pub async fn status(g: &Global, a: StatusArgs) -> u8 {
    let client = match connect(g) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let probes = client.probe(a.key.as_deref()).await;
    let health = client.health(&probes);
    put(&output::status(
        &client.config().node_addrs(),
        &probes,
        a.key.as_deref(),
        client.config().quorum(),
        health,
    ));
    let kinds = probes.iter().filter_map(|p| p.failure_kind()).collect();
    health_code(health, kinds)
}

/// The manual page, from the same definition as `--help`.
pub fn man() -> u8 {
    let mut page = Vec::new();
    match clap_mangen::Man::new(Cli::command()).render(&mut page) {
        Ok(()) => {
            put(&String::from_utf8_lossy(&page));
            exit::OK
        }
        Err(e) => {
            eprintln!("redis-lock: cannot render the manual page: {e}");
            exit::INTERNAL
        }
    }
}

pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = Cli::command();
    // Into memory first: generate() panics if its writer fails.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "redis-lock", &mut script);
    put(&String::from_utf8_lossy(&script));
    exit::OK
}
