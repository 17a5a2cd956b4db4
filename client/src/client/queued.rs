//! `acquire` by waiting in the nodes' FIFO queues (`LOCK.ACQUIRE ... WAIT`)
//! instead of polling: each node hands the lock to the first client in its
//! queue the moment it is released or expires.
//!
//! Each attempt starts with a plain round, on the long-lived connections: it
//! takes a free lock at once, and otherwise tells which nodes another client
//! holds (a lost round hears every node out and releases what it got). A
//! queue round then sends `WAIT` to those nodes only, each on a connection
//! of its own, counting the nodes that were free as granted: a waiter holds
//! no node while it waits, so it neither refuses others there nor keeps a
//! holder that got only some nodes from getting more. When a quorum has
//! granted, a plain round with the same token (a refresh on the nodes that
//! granted, a grant on the free ones) anchors the lease's validity to a
//! start time the client knows.
//!
//! Across nodes the queues can hand the lock to different clients (a split:
//! with three waiters and five nodes, 2/2/1, nobody has a quorum and nobody
//! will release; or clients that start at once on free nodes). So once a
//! node has granted, the rest of a quorum must follow within the split
//! window. If it does not, the client releases everything it got, drops its
//! other waits (closing their connections takes it out of those queues) and
//! queues again after a short random pause, so nobody keeps a partial grant.
//! The window starts at one request timeout (at least 10 ms) and doubles
//! with each consecutive split, up to a quarter of the TTL (at most 2 s): a
//! split among waiters resolves in milliseconds, while a long wait does not
//! churn through rounds.
//!
//! Every request of one `acquire` carries the same `TICKET`: the client's
//! wall-clock time when it started waiting, in microseconds. Nodes serve
//! their queues in ticket order, so all nodes agree on who is next (no
//! splits among clients that are queued everywhere), and a client that
//! re-queues after a split keeps its place: the oldest waiter is served
//! first, so nobody starves. Clock skew between clients only shifts that
//! order; it cannot affect safety.

use super::{release_nodes, Client, ReleaseOnDrop, Ttl, Wait};
use crate::error::Error;
use crate::lease::{Lease, Token};
use crate::nodeset::{fan_out, NodeMask};
use crate::quorum::{Decision, Tally, Vote};
use futures_util::stream::StreamExt;
use rand::Rng;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a queue round ended.
enum Queued {
    /// A quorum granted.
    Quorum,
    /// A quorum can no longer grant (waits timed out, nodes failed).
    Lost { failed_beyond_spare: bool },
    /// Some nodes granted, but not a quorum within the split window.
    Split,
}

/// Copies which nodes a queue round's waits reached into the caller's
/// vector when the round ends, however it ends (a round cut short by the
/// budget is dropped mid-way).
struct Filled<'a> {
    sent: &'a [AtomicBool],
    reached: &'a mut NodeMask,
}

impl Drop for Filled<'_> {
    fn drop(&mut self) {
        *self.reached = self
            .sent
            .iter()
            .enumerate()
            .filter(|(_, sent)| sent.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect();
    }
}

/// The least time a round inside a wait is given, budget or not: live
/// nodes answer in a few milliseconds.
const MIN_ROUND: Duration = Duration::from_millis(50);

/// Less than this left of the wait budget: one plain round decides.
const MIN_WAIT: Duration = Duration::from_millis(2);

/// A plain round's outcome inside the waiting loop: `Break` ends the wait
/// (a lease, or an error that waiting cannot cure), `Continue` waits on
/// with the round's error (the lock is held elsewhere, or nodes did not
/// answer: `why` is logged).
fn ends_the_wait(
    round: Result<Lease, Error>,
    resource: &str,
    left: Duration,
    why: &str,
) -> ControlFlow<Result<Lease, Error>, Error> {
    match round {
        // Nodes refusing grants for longer than the budget: waiting cannot
        // succeed, so it ends at once.
        Err(e)
            if e.is_taken()
                || e.is_unreachable()
                || e.is_timeout()
                || e.retry_after().is_some_and(|after| after < left) =>
        {
            tracing::debug!(resource, error = %e, "{why}");
            ControlFlow::Continue(e)
        }
        done => ControlFlow::Break(done),
    }
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
    /// [`ReleaseOnDrop::around`].
    pub(super) async fn wait_in_queues(
        &self,
        resource: &str,
        token: &Token,
        ttl: Ttl,
        wait: Duration,
    ) -> Result<Lease, Error> {
        let started = Instant::now();
        let ticket = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let backoff = self.inner.config.backoff();
        let mut attempts: u32 = 0;
        let first_window = self
            .inner
            .config
            .request_timeout
            .max(Duration::from_millis(10));
        let max_window = (ttl.duration / 4)
            .min(Duration::from_secs(2))
            .max(first_window);
        let mut split_window = first_window;
        let (quorum, n) = (self.inner.config.quorum, self.inner.nodes.len());
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
            // A plain round first: it takes a free lock at once, on the
            // long-lived connections, and tells where another client holds
            // it. A lost round has released what it was granted.
            let mut free = NodeMask::default();
            let round = self
                .within(
                    started,
                    wait,
                    ReleaseOnDrop::around(
                        &self.inner,
                        resource,
                        token,
                        self.round(resource, token, ttl, Some(&mut free)),
                    ),
                )
                .await
                .unwrap_or_else(|| Err(cut_short(resource, last.take(), quorum, n)));
            let err = match ends_the_wait(
                round,
                resource,
                wait.saturating_sub(started.elapsed()),
                "held elsewhere, queueing",
            ) {
                ControlFlow::Break(done) => return done,
                ControlFlow::Continue(e) => e,
            };
            let left = wait.saturating_sub(started.elapsed());
            if left < MIN_WAIT {
                // That round was the last one the budget allows.
                return Err(timed_out(resource, started, attempts, err));
            }
            last = Some(err);
            let mut reached = NodeMask::all(n);
            let outcome = self
                .within(
                    started,
                    wait,
                    self.queue_round(
                        resource,
                        token,
                        ttl,
                        left,
                        ticket,
                        split_window,
                        free,
                        &mut reached,
                    ),
                )
                .await
                .unwrap_or(Queued::Lost {
                    failed_beyond_spare: true,
                });
            if let Queued::Quorum = outcome {
                let round = self.acquire_round(resource, token, ttl).await;
                if let ControlFlow::Break(done) = ends_the_wait(
                    round,
                    resource,
                    wait.saturating_sub(started.elapsed()),
                    "queued grant not confirmed",
                ) {
                    return done;
                }
            } else {
                tracing::debug!(
                    resource,
                    split = matches!(outcome, Queued::Split),
                    unreachable = matches!(
                        outcome,
                        Queued::Lost {
                            failed_beyond_spare: true
                        }
                    ),
                    "queue round without a quorum"
                );
            }
            // Give back every partial grant before queueing again: the same
            // token is reused, so a late release must not hit the next grant.
            // Nodes whose wait could not even connect hold nothing of ours.
            release_nodes(&self.inner, resource, token, reached, Wait::All).await;
            if let Queued::Split = outcome {
                // The tickets already order the queues: a short random pause
                // is enough, and the window grows so a long wait stays calm.
                split_window = (split_window * 2).min(max_window);
                let pause = first_window.mul_f64(rand::rng().random::<f64>());
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

    /// One queue round: `WAIT` on every node but those found free (`free`)
    /// by the plain round before it, which count as granted here and are
    /// taken by the confirming round; decided as soon as a quorum granted,
    /// a quorum became impossible, or the split window closed. A waiter so
    /// holds no node while it waits.
    #[allow(clippy::too_many_arguments)]
    async fn queue_round(
        &self,
        resource: &str,
        token: &Token,
        ttl: Ttl,
        wait: Duration,
        ticket: u64,
        split_window: Duration,
        free: NodeMask,
        reached: &mut NodeMask,
    ) -> Queued {
        let inner = &self.inner;
        // Every node may hold our token after this round (a late grant)
        // but those whose wait never connected: filled in when the round
        // ends, or is cut short (the flags outlive the futures).
        let sent: Vec<AtomicBool> = (0..inner.nodes.len())
            .map(|i| AtomicBool::new(free.contains(i)))
            .collect();
        let fill = Filled {
            sent: &sent,
            reached,
        };
        *fill.reached = NodeMask::all(inner.nodes.len());
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut tally = Tally::new(inner.nodes.len(), inner.config.quorum);
        let is_free = |i: usize| free.contains(i);
        for _ in (0..inner.nodes.len()).filter(|&i| is_free(i)) {
            tally.record(Vote::Granted(0));
        }
        if tally.decision() == Some(Decision::Won) {
            return Queued::Quorum;
        }
        let mut pending = fan_out(
            &inner.nodes,
            |i| !is_free(i),
            |node| {
                let sent = sent.get(node.index);
                async move {
                    match sent {
                        Some(sent) => {
                            node.acquire_waiting(
                                resource,
                                token.as_str(),
                                ttl.millis,
                                wait_ms,
                                ticket,
                                sent,
                            )
                            .await
                        }
                        None => Ok(None),
                    }
                }
            },
        );
        let mut split_at: Option<tokio::time::Instant> = None;
        loop {
            let answer = match split_at {
                Some(at) => tokio::select! {
                    answer = pending.next() => answer,
                    () = tokio::time::sleep_until(at) => return Queued::Split,
                },
                None => pending.next().await,
            };
            let Some((i, answer)) = answer else {
                return Queued::Split;
            };
            match answer {
                Ok(Some(fence)) => {
                    tally.record(Vote::Granted(fence));
                    split_at.get_or_insert_with(|| tokio::time::Instant::now() + split_window);
                }
                Ok(None) => tally.record(Vote::Refused),
                Err(e) => {
                    tracing::debug!(resource, node = i, error = %e, "queued wait failed");
                    tally.record(Vote::Failed);
                }
            }
            match tally.decision() {
                Some(Decision::Won) => return Queued::Quorum,
                Some(Decision::Lost) => {
                    return Queued::Lost {
                        failed_beyond_spare: tally.failed_beyond_spare(),
                    }
                }
                None => {}
            }
        }
    }
}
