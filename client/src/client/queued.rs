//! `acquire` by waiting in the nodes' queues (`LOCK.ACQUIRE ... WAIT`)
//! instead of polling: each node hands the lock to the first client in its
//! queue the moment it is released or expires.
//!
//! An attempt is one round of `LOCK.ACQUIRE ... WAIT ms TICKET t` to every
//! node, each on a waiting connection of the node's pool (a blocked request
//! holds up its connection; see `node/waiting.rs`): a free node grants at
//! once, a held one queues the request and grants it when its turn comes.
//! When a quorum has granted, the lease is made without a confirming round:
//! every grant happened after its request was sent, so each granting node's
//! deadline is at least the attempt's start + TTL, and validity counts from
//! that start exactly as for a plain round. The fences are raised only if
//! the granting nodes gave different ones; a grant whose validity has worn
//! below half the TTL (a long wait) is confirmed by a plain round with the
//! same token (a refresh where we hold it), which anchors it to now. A
//! contended grant on five nodes thus costs five `WAIT`s and, later, the
//! holder's five releases.
//!
//! Across nodes the queues can hand the lock to different clients (a split:
//! with three waiters and five nodes, 2/2/1, nobody has a quorum and nobody
//! will release; or clients that start at once on free nodes). So once a
//! node has granted, the rest of a quorum must follow within the split
//! window. If it does not, the client releases everything it may hold and
//! queues again after a short random pause, so nobody keeps a partial grant.
//! `LOCK.RELEASE` also ends the token's own waits on a node, so that one
//! command per node takes back both the grants and the waits of an attempt,
//! whatever order they race in; the waits still out then answer nil and
//! their connections go back to the pool. The window starts at a fifth of
//! the request timeout (10 ms by default, at least 2 ms) and doubles with
//! each consecutive split, up to a quarter of the TTL (at most 2 s): a
//! split among waiters resolves in milliseconds, while a long wait does not
//! churn through rounds.
//!
//! Every request of one `acquire` carries the same ticket: the instant the
//! client started waiting, on each node's own clock (learned with `TIME`
//! when the waiting connection was opened, and carried forward on the
//! client's monotonic clock). Nodes serve their queues in ticket order, so
//! all nodes agree on who is next (no splits among clients that are queued
//! everywhere), and a client that re-queues after a split keeps its place:
//! the oldest waiter is served first, so nobody starves, and a client's
//! wall clock, however wrong, does not move it in the queues. Safety never
//! depends on tickets.

use super::{release_nodes, won_lease, Client, Ttl, Wait};
use crate::error::{Error, NodeErrorKind};
use crate::lease::{Lease, Token};
use crate::nodeset::{self, fan_out, NodeMask};
use crate::quorum::{self, Decision};
use crate::round::Round;
use futures_util::stream::StreamExt;
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a queue round ended.
enum Queued {
    /// A quorum granted: (node, fence) of each grant.
    Quorum(Vec<(usize, u64)>),
    /// A quorum can no longer grant (waits ran out, nodes failed): why.
    Lost(Error),
    /// Some nodes granted, but not a quorum within the split window.
    Split(Error),
}

/// The least time a round inside a wait is given, budget or not: live
/// nodes answer in a few milliseconds.
const MIN_ROUND: Duration = Duration::from_millis(50);

/// Less than this left of the wait budget: one plain round decides.
const MIN_WAIT: Duration = Duration::from_millis(2);

/// Whether waiting on may cure a queue round's error, with `left` of the
/// budget: the lock is held elsewhere, or nodes did not answer; not when
/// the request is refused (a usage error), nor when nodes refuse grants
/// for longer than the budget.
fn waiting_may_cure(e: &Error, left: Duration) -> bool {
    e.is_taken()
        || e.is_unreachable()
        || e.is_timeout()
        || e.retry_after().is_some_and(|after| after < left)
}

/// How a wait that ran out is reported: a timeout carrying the last round's
/// own error.
fn timed_out(resource: &str, started: Instant, attempts: u32, last: Error) -> Error {
    Error::Timeout {
        resource: resource.to_owned(),
        waited: started.elapsed(),
        attempts,
        last: Box::new(last),
    }
}

/// A round that the end of the wait budget cut short: its own drop guard
/// releases whatever it may have been granted. Reported with the last
/// round's error if there was one.
fn cut_short(resource: &str, last: Option<Error>, quorum: usize, nodes: usize) -> Error {
    last.unwrap_or_else(|| Error::Unreachable {
        resource: resource.to_owned(),
        answered: 0,
        quorum,
        nodes,
        node_errors: Vec::new(),
    })
}

impl Client {
    /// Runs one round of a wait, cut off once the budget is spent (but
    /// never sooner than [`MIN_ROUND`] from now, or the request timeout if
    /// shorter: enough for nodes that answer): nodes that cannot be reached
    /// must not stretch the wait by a connect timeout per round.
    async fn within<T>(
        &self,
        started: Instant,
        wait: Duration,
        round: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let left = wait
            .saturating_sub(started.elapsed())
            .max(self.inner.config.request_timeout.min(MIN_ROUND));
        tokio::time::timeout(left, round).await.ok()
    }

    /// `acquire` by waiting in the nodes' queues; run it inside
    /// [`super::ReleaseOnDrop::around`].
    pub(super) async fn wait_in_queues(
        &self,
        resource: &str,
        token: &Token,
        ttl: Ttl,
        wait: Duration,
    ) -> Result<Lease, Error> {
        let started = Instant::now();
        let backoff = self.inner.config.backoff();
        let mut attempts: u32 = 0;
        // A hand-over's grants come within the spread of one round trip to
        // the nodes, far inside a request timeout: a fifth of it (10 ms by
        // default) tells a split without making a start-up race (clients
        // starting at once on a free lock) cost a whole request timeout.
        let first_window = (self.inner.config.request_timeout / 5).max(Duration::from_millis(2));
        let max_window = (ttl.duration / 4)
            .min(Duration::from_secs(2))
            .max(first_window);
        let mut split_window = first_window;
        let n = self.inner.nodes.len();
        let mut last: Option<Error> = None;
        loop {
            attempts = attempts.saturating_add(1);
            let left = wait.saturating_sub(started.elapsed());
            if left < MIN_WAIT {
                // The budget is spent: one plain round, its answer final.
                return self
                    .last_round(resource, token, ttl, (started, wait), attempts, last)
                    .await;
            }
            let attempt = Instant::now();
            // Which nodes the attempt's requests went out to: they may hold
            // our token (or a wait of it) afterwards. The flags outlive a
            // round cut short by the budget.
            let sent: Arc<[AtomicBool]> = (0..n).map(|_| AtomicBool::new(false)).collect();
            // The round ends with the budget (given at least what a round
            // needs), and says then what it heard so far.
            let budget = left.max(self.inner.config.request_timeout.min(MIN_ROUND));
            let deadline = tokio::time::Instant::now() + budget;
            let outcome = self
                .queue_round(
                    resource,
                    token,
                    ttl,
                    (left, deadline),
                    started,
                    split_window,
                    &sent,
                )
                .await;
            let (err, split) = match outcome {
                Queued::Quorum(granted) => {
                    match self
                        .queued_lease(resource, token, ttl, attempt, &granted)
                        .await
                    {
                        Ok(lease) => return Ok(lease),
                        Err(e) => (e, false),
                    }
                }
                Queued::Lost(e) => (e, false),
                Queued::Split(e) => (e, true),
            };
            // Give back every grant and wait of the attempt before anything
            // else: the same token is reused, so a late release must not
            // hit the next attempt's grant (the release is awaited).
            let reached: NodeMask = sent
                .iter()
                .enumerate()
                .filter(|(_, s)| s.load(Ordering::Relaxed))
                .map(|(i, _)| i)
                .collect();
            release_nodes(&self.inner, resource, token, reached, Wait::All).await;
            tracing::debug!(resource, split, error = %err, "queue round without a lease");
            let left = wait.saturating_sub(started.elapsed());
            if !waiting_may_cure(&err, left) {
                return Err(err);
            }
            tracing::debug!(resource, error = %err, "queued again");
            if left < MIN_WAIT {
                return Err(timed_out(resource, started, attempts, err));
            }
            last = Some(err);
            if split {
                // The tickets already order the queues: a short random pause
                // is enough, and the window grows so a long wait stays calm.
                split_window = (split_window * 2).min(max_window);
                let pause = first_window.mul_f64(rand::rng().random::<f64>() / 2.0);
                if started.elapsed() + pause < wait {
                    tokio::time::sleep(pause).await;
                    continue;
                }
            } else {
                split_window = first_window;
            }
            let unit: f64 = rand::rng().random();
            let delay = backoff.next_delay(
                attempts,
                self.inner.config.retry_count,
                started.elapsed(),
                wait,
                unit,
            );
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    // Out of retries or budget: a last plain round.
                    return self
                        .last_round(resource, token, ttl, (started, wait), attempts, last)
                        .await;
                }
            }
        }
    }

    /// The final plain round once waiting is over; its failure is reported
    /// as a timeout carrying the round's own error. (It releases what it
    /// was granted if it fails, like every round.)
    async fn last_round(
        &self,
        resource: &str,
        token: &Token,
        ttl: Ttl,
        (started, wait): (Instant, Duration),
        attempts: u32,
        last: Option<Error>,
    ) -> Result<Lease, Error> {
        let (quorum, n) = (self.inner.config.quorum, self.inner.nodes.len());
        self.within(started, wait, self.acquire_round(resource, token, ttl))
            .await
            .unwrap_or_else(|| Err(cut_short(resource, last, quorum, n)))
            .map_err(|e| timed_out(resource, started, attempts, e))
    }

    /// One queue round: `WAIT` on every node, decided as soon as a quorum
    /// granted, a quorum became impossible, the split window closed after
    /// a first grant, or the `deadline` (the wait budget) passed. The waits
    /// still out when it is decided finish in a task of their own, so that their connections come back to the
    /// pool once answered (a lost round's release ends them at once; a won
    /// one's hold nodes for the lease until its release).
    #[allow(clippy::too_many_arguments)]
    async fn queue_round(
        &self,
        resource: &str,
        token: &Token,
        ttl: Ttl,
        (wait, deadline): (Duration, tokio::time::Instant),
        started: Instant,
        split_window: Duration,
        sent: &Arc<[AtomicBool]>,
    ) -> Queued {
        let inner = &self.inner;
        // The nodes end their waits a little before the budget does, so that
        // a node that answers says "not granted" (nil) before the round is
        // cut off, and only a node that does not answer counts as failed.
        let margin = inner.config.request_timeout.min(wait / 4);
        let wait_ms = u64::try_from(wait.saturating_sub(margin).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let key: Arc<str> = Arc::from(resource);
        let mut round = Round::new(inner.nodes.len(), inner.config.quorum);
        let mut pending = fan_out(&inner.nodes, nodeset::all, |node| {
            node.acquire_waiting(
                key.clone(),
                token.clone(),
                ttl.millis,
                wait_ms,
                started,
                sent.clone(),
            )
        });
        let mut split_at: Option<tokio::time::Instant> = None;
        let mut answered = NodeMask::default();
        let outcome = loop {
            let split = split_at.unwrap_or(deadline).min(deadline);
            let answer = tokio::select! {
                answer = pending.next() => answer,
                () = tokio::time::sleep_until(split) => None,
            };
            let Some((i, answer)) = answer else {
                if tokio::time::Instant::now() >= deadline || split_at.is_none() {
                    // The budget ran out: a node that has not answered by
                    // now failed (it does not answer, or not in time).
                    for node in inner.nodes.iter().filter(|n| !answered.contains(n.index)) {
                        let late = node.error(
                            NodeErrorKind::Timeout,
                            format!("no answer within the wait of {wait:?}"),
                        );
                        let _ = round.note(node.index, Err(late));
                    }
                    break Queued::Lost(round.error(resource));
                }
                break Queued::Split(round.error(resource));
            };
            answered.insert(i);
            match round.note(i, answer) {
                Some(Decision::Won) => break Queued::Quorum(round.granted()),
                Some(Decision::Lost) => break Queued::Lost(round.error(resource)),
                None if round.tally().granted() > 0 => {
                    split_at.get_or_insert_with(|| tokio::time::Instant::now() + split_window);
                }
                None => {}
            }
        };
        if !pending.is_empty() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { while pending.next().await.is_some() {} });
            }
        }
        outcome
    }

    /// The lease of a queue round that a quorum granted (`granted`: node,
    /// fence), its validity counted from `attempt`, the instant before the
    /// round's first request: each grant came after its request was sent.
    /// Fences that differ are raised first. A grant whose validity a long
    /// wait has worn below half the TTL (or away) is confirmed instead by a
    /// plain round with the same token: a refresh where the queues handed
    /// us the lock, which anchors validity and fence to now.
    async fn queued_lease(
        &self,
        resource: &str,
        token: &Token,
        ttl: Ttl,
        attempt: Instant,
        granted: &[(usize, u64)],
    ) -> Result<Lease, Error> {
        let inner = &self.inner;
        let drift = inner.config.drift(ttl.duration);
        let now = Instant::now();
        let fresh = quorum::valid_until(attempt, ttl.duration, drift, now)
            .is_some_and(|until| until.saturating_duration_since(now) >= ttl.duration / 2);
        if !fresh {
            tracing::debug!(resource, waited = ?now.saturating_duration_since(attempt), "confirming a late grant");
            return self.acquire_round(resource, token, ttl).await;
        }
        let lease = won_lease(
            inner,
            resource,
            token,
            ttl,
            attempt,
            (granted, granted.iter().map(|(_, f)| *f).max()),
            Vec::new(),
        )
        .await?;
        tracing::debug!(resource, lease.fence, ?lease.nodes, "acquired in the queues");
        Ok(lease)
    }
}
