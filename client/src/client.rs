//! The async client: acquisition rounds over all nodes in parallel, decided
//! as soon as the outcome is certain; extension; release.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::StreamExt;
use rand::Rng;

use crate::background::Background;
use crate::config::Config;
use crate::error::{Error, NodeError};
use crate::lease::{Lease, Token};
use crate::node::Node;
use crate::nodeset::{self, drive, fan_out, NodeMask};
use crate::proto::{Acquire, Extend, Release};
use crate::quorum::{self, Decision};
use crate::round::{Asker, RaiseRound, Round, TokenRound};

mod queued;

/// The outcome of a release: how many nodes held the lock for this token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Released {
    /// Nodes where this token held the lock and it is now free.
    pub held: usize,
    /// Nodes where this token did not hold it (already released, expired,
    /// or never granted there).
    pub not_held: usize,
    /// Nodes that could not be asked.
    pub failed: Vec<NodeError>,
    /// Nodes whose answer was not waited for: a quorum had already
    /// answered, so the lock was free for others. Their requests were sent
    /// and finish in the background.
    pub pending: usize,
}

impl Released {
    /// Every node answered.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.pending == 0
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) nodes: Vec<Arc<Node>>,
    pub(crate) background: Arc<Background>,
}

/// A quorum lock client over N nodes that run the module.
///
/// Cheap to clone (the connections are shared). Connections are opened
/// lazily, one multiplexed connection per node.
///
/// **Call [`Client::settle`] before the program exits.** A won round leaves
/// its slower nodes' requests, and a release its stragglers, to finish in
/// the background on the runtime; a runtime shut down first cuts them
/// short, and a lock left on those nodes then runs out only at its TTL.
/// (The [`crate::blocking`] client waits for them itself when dropped.)
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.inner.config.node_addrs())
            .field("quorum", &self.inner.config.quorum())
            .finish_non_exhaustive()
    }
}

/// A TTL as the client uses it: whole milliseconds, as sent to the nodes.
#[derive(Clone, Copy)]
struct Ttl {
    duration: Duration,
    millis: u64,
}

/// Releases the token on every node it may have reached if the round's
/// future is dropped before it finished (cancellation), so a cancelled
/// acquisition does not leave the lock blocked until its TTL.
struct ReleaseOnDrop {
    inner: Arc<Inner>,
    resource: String,
    token: Token,
    armed: bool,
}

impl ReleaseOnDrop {
    /// Runs `work` under the guard: disarmed when `work` completes, however
    /// it ends (it releases what it must itself), so only a future dropped
    /// mid-way releases in the background.
    async fn around<T>(
        inner: &Arc<Inner>,
        resource: &str,
        token: &Token,
        work: impl Future<Output = T>,
    ) -> T {
        let mut guard = ReleaseOnDrop {
            inner: inner.clone(),
            resource: resource.to_owned(),
            token: token.clone(),
            armed: true,
        };
        let out = work.await;
        guard.armed = false;
        out
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // No blocking work here: hand the release to the runtime, if any.
        let inner = self.inner.clone();
        let resource = std::mem::take(&mut self.resource);
        let token = self.token.clone();
        tracing::debug!(resource = %resource, "acquisition cancelled, releasing in the background");
        // A node without a connection never got the request.
        let which: NodeMask = inner
            .nodes
            .iter()
            .filter(|n| n.may_be_connected())
            .map(|n| n.index)
            .collect();
        self.inner.background.spawn(None, async move {
            release_nodes(&inner, &resource, &token, which, Wait::All).await;
        });
    }
}

impl Client {
    /// A client for the configured nodes. Nothing is connected yet.
    pub fn new(config: Config) -> Result<Client, Error> {
        let nodes = config
            .nodes
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Node::new(
                    i,
                    spec,
                    config.tls.as_ref(),
                    config.connect_timeout,
                    config.request_timeout,
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                nodes,
                background: Arc::default(),
            }),
        })
    }

    /// A client with the default configuration for these node addresses.
    pub fn from_urls(nodes: impl crate::config::IntoNodeAddrs) -> Result<Client, Error> {
        Client::new(Config::from_urls(nodes)?)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Waits, at most `limit`, until the requests this client left to finish
    /// in the background are done: the slower nodes of a won round, the
    /// stragglers of a release (see [`Released::pending`]), the release of
    /// a cancelled acquisition or of a dropped guard. A program calls it
    /// before it exits, so that no node keeps a lock until its TTL because
    /// the request freeing it never went out. Whether everything finished
    /// (false if a guard is still held, or a node did not answer in time).
    pub async fn settle(&self, limit: Duration) -> bool {
        self.inner.background.settle(limit).await
    }

    /// Connects to every node now rather than at the first request. Fails
    /// with [`Error::Unreachable`] if fewer than a quorum can be reached;
    /// the per-node errors are in it either way.
    pub async fn connect(&self) -> Result<Vec<NodeError>, Error> {
        let results = nodeset::each(&self.inner.nodes, |n| async move { n.connect().await }).await;
        let errors: Vec<NodeError> = results.into_iter().filter_map(Result::err).collect();
        let answered = self.inner.nodes.len() - errors.len();
        if answered < self.inner.config.quorum {
            return Err(Error::Unreachable {
                resource: String::new(),
                answered,
                quorum: self.inner.config.quorum,
                nodes: self.inner.nodes.len(),
                node_errors: errors,
            });
        }
        Ok(errors)
    }

    fn check_resource(resource: &str) -> Result<(), Error> {
        if resource.is_empty() {
            return Err(Error::invalid("the resource name is empty"));
        }
        Ok(())
    }

    fn check_ttl(&self, ttl: Duration) -> Result<Ttl, Error> {
        let millis = u64::try_from(ttl.as_millis())
            .ok()
            .filter(|ms| (1..=i64::MAX as u64).contains(ms))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "TTL {ttl:?} is not a whole number of milliseconds >= 1 ms"
                ))
            })?;
        let duration = Duration::from_millis(millis);
        let drift = self.inner.config.drift(duration);
        if drift >= duration {
            return Err(Error::invalid(format!(
                "TTL {duration:?} leaves no validity after the drift allowance of {drift:?}"
            )));
        }
        Ok(Ttl { duration, millis })
    }

    /// One round: asks every node once, in parallel. Fails at once with
    /// [`Error::Taken`] or [`Error::Unreachable`] if no quorum grants.
    pub async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Lease, Error> {
        let token = Token::random()?;
        self.try_acquire_with_token(resource, ttl, &token).await
    }

    /// One round with a token chosen by the caller. Acquiring with the
    /// token that already holds the lock succeeds again (and refreshes it),
    /// so this is how to retry an acquisition whose replies were lost.
    pub async fn try_acquire_with_token(
        &self,
        resource: &str,
        ttl: Duration,
        token: &Token,
    ) -> Result<Lease, Error> {
        Self::check_resource(resource)?;
        let ttl = self.check_ttl(ttl)?;
        self.acquire_round(resource, token, ttl).await
    }

    /// Rounds until one wins, the wait budget `wait` runs out
    /// ([`Error::Timeout`]), or the configured retry count does (the last
    /// round's error). Every round uses the same token, so a grant whose
    /// reply was lost does not block the next round. Between rounds the
    /// client sleeps `retry_delay` plus a random share of `retry_jitter`.
    ///
    /// Cancellation-safe: dropping the future releases whatever the round
    /// in progress may have been granted (in the background).
    pub async fn acquire(
        &self,
        resource: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Lease, Error> {
        Self::check_resource(resource)?;
        let ttl = self.check_ttl(ttl)?;
        let token = Token::random()?;
        if self.inner.config.server_wait && !wait.is_zero() {
            let work = self.wait_in_queues(resource, &token, ttl, wait);
            return ReleaseOnDrop::around(&self.inner, resource, &token, work).await;
        }
        let backoff = self.inner.config.backoff();
        let started = Instant::now();
        let mut attempts: u32 = 0;
        loop {
            attempts = attempts.saturating_add(1);
            let err = match self.acquire_round(resource, &token, ttl).await {
                Ok(lease) => return Ok(lease),
                Err(e)
                    if matches!(
                        e,
                        Error::Taken { .. }
                            | Error::Unreachable { .. }
                            | Error::NoValidityLeft { .. }
                    ) =>
                {
                    e
                }
                // Nodes refusing grants: wait only if they may grant
                // again within the budget.
                Err(e)
                    if e.retry_after()
                        .is_some_and(|after| started.elapsed().saturating_add(after) < wait) =>
                {
                    e
                }
                Err(e) => return Err(e),
            };
            let unit: f64 = rand::rng().random();
            let elapsed = started.elapsed();
            match backoff.next_delay(attempts, self.inner.config.retry_count, elapsed, wait, unit) {
                Some(delay) => {
                    tracing::debug!(resource, attempts, ?delay, error = %err, "retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    let out_of_retries = self
                        .inner
                        .config
                        .retry_count
                        .is_some_and(|max| attempts > max);
                    if out_of_retries || wait.is_zero() {
                        return Err(err);
                    }
                    return Err(Error::Timeout {
                        resource: resource.to_owned(),
                        waited: started.elapsed(),
                        attempts,
                        last: Box::new(err),
                    });
                }
            }
        }
    }

    /// [`Client::acquire`] with the configured default wait
    /// ([`crate::ConfigBuilder::default_wait`], 10 s unless set).
    pub async fn acquire_default(&self, resource: &str, ttl: Duration) -> Result<Lease, Error> {
        self.acquire(resource, ttl, self.inner.config.default_wait)
            .await
    }

    async fn acquire_round(&self, resource: &str, token: &Token, ttl: Ttl) -> Result<Lease, Error> {
        let work = self.round(resource, token, ttl, None);
        ReleaseOnDrop::around(&self.inner, resource, token, work).await
    }

    /// One round, noting in `granting`, if asked, which nodes granted in it.
    /// (A lost round has released those grants again: the lock was free
    /// there.) Run it inside [`ReleaseOnDrop::around`].
    async fn round(
        &self,
        resource: &str,
        token: &Token,
        ttl: Ttl,
        granting: Option<&mut NodeMask>,
    ) -> Result<Lease, Error> {
        let inner = &self.inner;
        let n = inner.nodes.len();
        let started = Instant::now();
        let mut round = Round::new(n, inner.config.quorum);
        {
            // Owned futures, so that the slower nodes can be left to finish
            // in the background once the round is won (below).
            let shared: Arc<str> = Arc::from(resource);
            let mut pending = fan_out(&inner.nodes, nodeset::all, |node| {
                let (resource, token) = (shared.clone(), token.clone());
                async move {
                    node.call(&Acquire::new(&resource, token.as_str(), ttl.millis))
                        .await
                }
            });
            drive(&mut pending, |i, answer| round.note(i, answer).is_some()).await;
            if round.decision() == Some(Decision::Won) {
                if !pending.is_empty() {
                    // Won: let the slower nodes' requests go out and finish,
                    // so the lock is held on every node that can take it,
                    // not on a bare quorum (a bare quorum is lost with one
                    // more node). Their grants are ours: the lease's release
                    // and extension go to every node.
                    inner
                        .background
                        .spawn(None, async move { while pending.next().await.is_some() {} });
                }
            } else {
                // Lost: the release below goes to every node that may hold
                // our token, and waits for each (a release queues behind the
                // grant on the same connection), so hearing the slower
                // nodes out first costs nothing, and tells which nodes
                // another client holds and which were free (a waiter queues
                // only where it is held).
                drive(&mut pending, |i, answer| {
                    round.note(i, answer);
                    false
                })
                .await;
            }
        }
        let now = Instant::now();
        let granted = round.granted();
        let may_hold = round.may_hold();
        if let Some(granting) = granting {
            *granting = granted.iter().map(|(i, _)| *i).collect();
        }

        if round.decision() == Some(Decision::Won) {
            let lease = won_lease(
                inner,
                resource,
                token,
                ttl,
                started,
                (&granted, round.tally().max_fence()),
                round.into_errors(),
            )
            .await;
            match &lease {
                Ok(lease) => {
                    tracing::debug!(resource, lease.fence, ?lease.nodes, elapsed = ?started.elapsed(), "acquired")
                }
                Err(e) => {
                    release_nodes(inner, resource, token, may_hold, Wait::All).await;
                    tracing::debug!(resource, error = %e, elapsed = ?started.elapsed(), "won but not held: released");
                }
            }
            return lease;
        }

        // Lost: release the partial grants at once (and the nodes that
        // failed or were still pending: their grant may have landed).
        if round.needs_release() {
            release_nodes(inner, resource, token, may_hold, Wait::All).await;
        }
        let t = round.tally();
        tracing::debug!(
            resource,
            granted = t.granted(),
            refused = t.refused(),
            failed = t.failed(),
            elapsed = ?now.saturating_duration_since(started),
            "not acquired"
        );
        Err(round.error(resource))
    }

    /// Extends the lease on a quorum to `ttl` from now, within its remaining
    /// validity. On success the lease's validity, TTL and nodes are updated.
    ///
    /// - [`Error::Expired`] if the lease had expired (or expired before a
    ///   quorum answered): it must not be relied on any more;
    /// - [`Error::Lost`] with [`LossReason::NotHeld`] if so many nodes no
    ///   longer hold it for this token that a quorum cannot, or with
    ///   [`LossReason::HoldLimit`] if it is the nodes' hold limit
    ///   (`LOCK.EXTEND` replying -1) that keeps a quorum from extending;
    /// - [`Error::Unreachable`] if too few nodes answered (the lease stays
    ///   valid until its current deadline; try again).
    pub async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<(), Error> {
        let ttl = self.check_ttl(ttl)?;
        let started = Instant::now();
        let expired = || Error::Expired {
            resource: lease.resource.clone(),
        };
        if started >= lease.valid_until {
            return Err(expired());
        }
        let round = self
            .by_token(&lease.resource, &lease.token, ttl, Until::Decided)
            .await;
        let now = Instant::now();
        if now >= lease.valid_until {
            return Err(expired());
        }
        let nodes = round.verdict(&lease.resource, Asker::Lease)?;
        let drift = self.inner.config.drift(ttl.duration);
        let Some(valid_until) = quorum::valid_until(started, ttl.duration, drift, now) else {
            return Err(Error::NoValidityLeft {
                resource: lease.resource.clone(),
                ttl: ttl.duration,
                elapsed: now.saturating_duration_since(started),
            });
        };
        lease.valid_until = valid_until;
        lease.renewed_at = started;
        lease.ttl = ttl.duration;
        lease.nodes = nodes;
        tracing::debug!(resource = %lease.resource, "extended");
        Ok(())
    }

    /// `LOCK.EXTEND` by `token` on every node, in parallel, fed to a
    /// [`TokenRound`] until it is decided or every node answered.
    async fn by_token(&self, resource: &str, token: &Token, ttl: Ttl, until: Until) -> TokenRound {
        let inner = &self.inner;
        let mut round = TokenRound::new(inner.nodes.len(), inner.config.quorum);
        let request = Extend {
            key: resource,
            token: token.as_str(),
            ttl_ms: ttl.millis,
        };
        let mut pending = fan_out(&inner.nodes, nodeset::all, |node| async move {
            node.call(&request).await
        });
        drive(&mut pending, |i, answer| {
            round.note(i, answer).is_some() && until == Until::Decided
        })
        .await;
        round
    }

    /// Releases the lock on every node (idempotent) and reports how many
    /// held it. Returns as soon as a quorum has answered (the lock is then
    /// free for others); the requests to slower nodes were sent and finish
    /// in the background ([`Released::pending`]), so a hung node does not
    /// delay the release. [`Error::Unreachable`] if fewer than a quorum
    /// answered: the lock may then stay held until its TTL runs out.
    ///
    /// Do not acquire again with the same token right after a release: a
    /// late release could reach a slow node after the new grant.
    pub async fn release(&self, lease: &Lease) -> Result<Released, Error> {
        let all = NodeMask::all(self.inner.nodes.len());
        let released = release_nodes(
            &self.inner,
            &lease.resource,
            &lease.token,
            all,
            Wait::Quorum,
        )
        .await;
        let answered = released.held + released.not_held;
        if answered < self.inner.config.quorum {
            return Err(Error::Unreachable {
                resource: lease.resource.clone(),
                answered,
                quorum: self.inner.config.quorum,
                nodes: self.inner.nodes.len(),
                node_errors: released.failed,
            });
        }
        Ok(released)
    }

    /// Extends a lease held by `token` (handed over from another process,
    /// say a script's `redis-lock acquire`) to `ttl` from now on every node
    /// that holds it. Returns on how many nodes it was extended (a quorum at
    /// least); [`Error::NotHeld`] if the token does not hold it on a quorum,
    /// [`Error::Lost`] with [`LossReason::HoldLimit`] if the nodes' hold
    /// limit keeps a quorum from extending.
    pub async fn extend_token(
        &self,
        resource: &str,
        token: &Token,
        ttl: Duration,
    ) -> Result<usize, Error> {
        Self::check_resource(resource)?;
        let ttl = self.check_ttl(ttl)?;
        let round = self.by_token(resource, token, ttl, Until::All).await;
        round.verdict(resource, Asker::Token).map(|on| on.len())
    }

    /// Releases a lock held by `token` (handed over from another process)
    /// on every node, waiting for each node's answer (each bounded by the
    /// per-node timeouts). [`Error::NotHeld`] if the token did not hold it
    /// on a quorum (already released, run out, or another's).
    pub async fn release_token(&self, resource: &str, token: &Token) -> Result<Released, Error> {
        Self::check_resource(resource)?;
        let all = NodeMask::all(self.inner.nodes.len());
        let (round, pending) = release_round(&self.inner, resource, token, all, Wait::All).await;
        let released = round.released(pending);
        round.verdict(resource, Asker::Token).map(|_| released)
    }
}

/// How long a round by token listens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Until the outcome is certain.
    Decided,
    /// For every node's answer (each bounded by the node timeouts).
    All,
}

/// The lease of a round that a quorum granted (`granted`: node, fence;
/// `fence` the largest of them), its validity counted from `started`, the
/// instant before the round's first request (every grant came after its
/// request was sent). Fenced: the fences are raised first, so that a
/// quorum holds the lease's fence (not worth a round trip once no validity
/// is left); `errors` are the round's own, for the error of a failed raise.
/// On an error the caller releases.
async fn won_lease(
    inner: &Inner,
    resource: &str,
    token: &Token,
    ttl: Ttl,
    started: Instant,
    (granted, fence): (&[(usize, u64)], Option<u64>),
    errors: Vec<NodeError>,
) -> Result<Lease, Error> {
    let drift = inner.config.drift(ttl.duration);
    let mut fence = fence.unwrap_or_default();
    let mut nodes: Vec<usize> = granted.iter().map(|(i, _)| *i).collect();
    if inner.config.fenced
        && quorum::valid_until(started, ttl.duration, drift, Instant::now()).is_some()
    {
        let raised = raise_fences(inner, resource, token, ttl, granted).await;
        (fence, nodes) = raised.outcome(resource, inner.nodes.len(), errors)?;
    }
    // The raise round comes out of the validity too.
    let now = Instant::now();
    let Some(valid_until) = quorum::valid_until(started, ttl.duration, drift, now) else {
        return Err(Error::NoValidityLeft {
            resource: resource.to_owned(),
            ttl: ttl.duration,
            elapsed: now.saturating_duration_since(started),
        });
    };
    Ok(Lease {
        resource: resource.to_owned(),
        token: token.clone(),
        fence,
        acquired_at: started,
        renewed_at: started,
        valid_until,
        ttl: ttl.duration,
        nodes,
    })
}

/// The raise round of a fenced acquisition (see [`RaiseRound`]): sends
/// `LOCK.ACQUIRE resource token ttl FENCE T` to every granting node whose
/// fence is below `T`, in parallel, each bounded by the per-node timeouts,
/// and stops as soon as the outcome is certain. The stragglers' raises, if
/// sent, land or not; either way the lease does not count on them.
async fn raise_fences(
    inner: &Inner,
    resource: &str,
    token: &Token,
    ttl: Ttl,
    granted: &[(usize, u64)],
) -> RaiseRound {
    let mut raise = RaiseRound::new(inner.config.quorum, granted);
    let (to_raise, floor) = (raise.to_raise(), raise.floor());
    let request = Acquire::new(resource, token.as_str(), ttl.millis).fence(Some(floor));
    let mut pending = fan_out(
        &inner.nodes,
        |i| to_raise.contains(i),
        |node| async move { node.call(&request).await },
    );
    drive(&mut pending, |i, answer| raise.note(i, answer).is_some()).await;
    raise
}

/// When a release round may stop waiting.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// For every selected node's answer (each bounded by the node timeouts).
    All,
    /// Until a quorum has answered: the lock is then certainly free for
    /// others. The requests still out finish in the background, on the
    /// connections they were sent on.
    Quorum,
}

/// Sends `LOCK.RELEASE` to the selected nodes in parallel.
pub(crate) async fn release_nodes(
    inner: &Arc<Inner>,
    resource: &str,
    token: &Token,
    which: NodeMask,
    wait: Wait,
) -> Released {
    let (round, pending) = release_round(inner, resource, token, which, wait).await;
    round.released(pending)
}

/// `LOCK.RELEASE` to the selected nodes in parallel, fed to a
/// [`TokenRound`]; with how many answers were left to the background.
async fn release_round(
    inner: &Arc<Inner>,
    resource: &str,
    token: &Token,
    which: NodeMask,
    wait: Wait,
) -> (TokenRound, usize) {
    let shared: Arc<str> = Arc::from(resource);
    let mut pending = fan_out(
        &inner.nodes,
        |i| which.contains(i),
        |node| {
            let (resource, token) = (shared.clone(), token.clone());
            async move {
                let request = Release {
                    key: &resource,
                    token: token.as_str(),
                };
                node.call(&request).await
            }
        },
    );
    let quorum = inner.config.quorum;
    let mut round = TokenRound::new(inner.nodes.len(), quorum);
    // Without a tokio runtime to leave the stragglers to, wait for every
    // node.
    let may_leave = wait == Wait::Quorum && tokio::runtime::Handle::try_current().is_ok();
    drive(&mut pending, |i, answer| {
        round.note(i, answer);
        may_leave && round.answered() >= quorum
    })
    .await;
    let left = pending.len();
    if left > 0 {
        let resource = shared.clone();
        inner.background.spawn(None, async move {
            while let Some((_, answer)) = pending.next().await {
                if let Err(e) = answer {
                    tracing::debug!(resource = %resource, error = %e, "late release failed");
                }
            }
        });
    }
    let out = round.released(left);
    tracing::debug!(
        resource,
        held = out.held,
        not_held = out.not_held,
        failed = out.failed.len(),
        pending = out.pending,
        "released"
    );
    (round, left)
}
