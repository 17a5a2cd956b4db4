//! The subcommands other than `run`, and the settings they share.

use std::io::Write;
use std::time::Duration;

use clap::CommandFactory;
use redis_lock_client::{Client, Config};

use crate::args::{
    AcquireArgs, Cli, Command, ExtendArgs, Global, InfoArgs, ReleaseArgs, StatusArgs,
};
use crate::exit::{self, Failure};
use crate::nodes::{verdict, Nodes, Tally};
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
        Command::Man(_) => man(),
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
    b.build().map_err(|e| fail(exit::classify(&e), e))
}

pub fn client(config: Config) -> Result<Client, u8> {
    Client::new(config).map_err(|e| fail(exit::classify(&e), e))
}

/// The nodes for direct requests, checked by the client's configuration
/// first so that both report a bad URL the same way.
fn nodes(g: &Global) -> Result<Nodes, u8> {
    let config = config(g, None)?;
    let urls: Vec<String> = node_urls(g)?
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    Nodes::new(
        &urls,
        config.node_addrs(),
        (g.username.as_deref(), g.password.as_deref()),
        config.quorum(),
        (g.connect_timeout, g.timeout),
    )
    .map_err(|e| fail(Failure::Usage, e))
}

/// Why an acquisition failed, in one line, and its status.
pub fn not_acquired(key: &str, e: &redis_lock_client::Error) -> u8 {
    let failure = exit::classify(e);
    let what = match failure {
        Failure::Taken => format!("lock {key:?} not acquired: {e}"),
        Failure::Unavailable => format!("lock {key:?} not acquired, nodes unavailable: {e}"),
        Failure::Misconfigured => format!("lock {key:?} not acquired, nodes misconfigured: {e}"),
        _ => e.to_string(),
    };
    fail(failure, what)
}

async fn acquire(g: &Global, a: AcquireArgs) -> u8 {
    let client = match config(g, None).and_then(client) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key = a.lock.key.as_str();
    match client.acquire(key, a.lock.ttl, a.wait).await {
        Ok(lease) => {
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
            let code = not_acquired(key, &e);
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

async fn extend(g: &Global, a: ExtendArgs) -> u8 {
    let nodes = match nodes(g) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let ttl_ms = u64::try_from(a.lock.ttl.as_millis()).unwrap_or(u64::MAX);
    let results = nodes
        .extend_or_release(&a.lock.key, &a.token, Some(ttl_ms))
        .await;
    report(&nodes, &a.lock.key, &results, |t| {
        format!(
            "extended {:?} by {} on {} of {} nodes",
            a.lock.key,
            duration::format(a.lock.ttl),
            t.held,
            nodes.len()
        )
    })
}

async fn release(g: &Global, a: ReleaseArgs) -> u8 {
    let nodes = match nodes(g) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let results = nodes.extend_or_release(&a.key, &a.token, None).await;
    report(&nodes, &a.key, &results, |t| {
        format!(
            "released {:?}: it was held on {} of {} nodes",
            a.key,
            t.held,
            nodes.len()
        )
    })
}

/// The outcome of `extend` / `release` on stdout (success) or stderr.
fn report(
    nodes: &Nodes,
    key: &str,
    results: &[Result<bool, crate::nodes::NodeFailure>],
    done: impl FnOnce(&Tally) -> String,
) -> u8 {
    let tally = Tally::of(results);
    match verdict(&tally, nodes.len(), nodes.quorum()) {
        Ok(()) => {
            put(&format!("{}\n", done(&tally)));
            exit::OK
        }
        Err(failure) => {
            let errors: Vec<String> = nodes
                .labels()
                .iter()
                .zip(results)
                .filter_map(|(label, r)| r.as_ref().err().map(|e| format!("; {label}: {e}")))
                .collect();
            let what = match failure {
                Failure::NotHeld => "this token does not hold the lock on a quorum",
                _ => "too few nodes answered to tell",
            };
            fail(
                failure,
                format!(
                    "{key:?}: {what}: held on {}, not held on {}, failed on {} of {} nodes (quorum {}){}",
                    tally.held,
                    tally.not_held,
                    tally.failed.len(),
                    nodes.len(),
                    nodes.quorum(),
                    errors.concat()
                ),
            )
        }
    }
}

async fn info(g: &Global, a: InfoArgs) -> u8 {
    let nodes = match nodes(g) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let states = nodes.lock_info(&a.key).await;
    put(&output::info(&nodes.labels(), &states, nodes.quorum()));
    let answered = states.iter().filter(|s| s.is_ok()).count();
    if answered >= nodes.quorum() {
        exit::OK
    } else {
        let kinds = states
            .iter()
            .filter_map(|s| s.as_ref().err().map(|e| e.kind));
        let failure = Failure::from_node_kinds(kinds);
        fail(
            failure,
            format!(
                "only {answered} of {} nodes answered (quorum {})",
                nodes.len(),
                nodes.quorum()
            ),
        )
    }
}

async fn status(g: &Global, a: StatusArgs) -> u8 {
    let nodes = match nodes(g) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let probes = nodes.probe(a.key.as_deref()).await;
    put(&output::status(
        &nodes.labels(),
        &probes,
        a.key.as_deref(),
        nodes.quorum(),
    ));
    let healthy = probes.iter().filter(|p| p.healthy()).count();
    if healthy == probes.len() {
        exit::OK
    } else if healthy >= nodes.quorum() {
        exit::DEGRADED
    } else {
        Failure::from_node_kinds(probes.iter().filter_map(|p| p.failure_kind())).code()
    }
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
