//! A held lock with automatic extension and a loss signal.
//!
//! A background task renews the lease at a third of its TTL. The holder
//! sees the current lease and the loss through a [`HeldLease`] (a
//! `tokio::sync::watch` underneath): `lost().await` resolves the moment the
//! lock is known lost, whether a quorum refused a renewal or the validity
//! ran out before one succeeded.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::client::{Client, Released};
use crate::error::{Error, LossReason};
use crate::lease::Lease;
use crate::quorum;

#[derive(Clone, Debug)]
struct State {
    lease: Lease,
    lost: Option<LossReason>,
    /// The reason to give if the validity runs out: `MaxHold` once renewal
    /// stopped on purpose.
    on_expiry: LossReason,
}

/// The holder's view of a lock kept by automatic extension: the current
/// lease, and whether (and why) it was lost. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HeldLease {
    rx: watch::Receiver<State>,
}

impl HeldLease {
    /// The current lease (its validity moves forward with each renewal).
    pub fn lease(&self) -> Lease {
        self.rx.borrow().lease.clone()
    }

    pub fn resource(&self) -> String {
        self.rx.borrow().lease.resource.clone()
    }

    pub fn fence(&self) -> u64 {
        self.rx.borrow().lease.fence
    }

    pub fn valid_until(&self) -> Instant {
        self.rx.borrow().lease.valid_until
    }

    /// Whether the lock is lost: signalled, or past its validity by the
    /// client's clock.
    pub fn is_lost(&self) -> bool {
        let state = self.rx.borrow();
        state.lost.is_some() || Instant::now() >= state.lease.valid_until
    }

    /// Why the lock was lost, if it was.
    pub fn loss(&self) -> Option<LossReason> {
        let state = self.rx.borrow();
        match state.lost {
            Some(reason) => Some(reason),
            None if Instant::now() >= state.lease.valid_until => Some(state.on_expiry),
            None => None,
        }
    }

    /// Waits until the lease changes: a renewal moved its validity, or the
    /// loss was signalled. False once the renewal task has ended and no
    /// change can come any more. Cancellation-safe. For a holder that hands
    /// the validity on, as `redis-lock run` does to its watchdog.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Resolves when the lock is lost. Cancellation-safe: select on it
    /// beside the work.
    pub async fn lost(&self) -> LossReason {
        let mut rx = self.rx.clone();
        loop {
            let (lost, until, on_expiry) = {
                let state = rx.borrow_and_update();
                (state.lost, state.lease.valid_until, state.on_expiry)
            };
            if let Some(reason) = lost {
                return reason;
            }
            // The deadline is a loss by itself, even if the renewal task is
            // gone or late to say so.
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(until.into()).await;
                        return rx.borrow().lost.unwrap_or(on_expiry);
                    }
                }
                _ = tokio::time::sleep_until(until.into()) => {
                    let state = rx.borrow_and_update();
                    if let Some(reason) = state.lost {
                        return reason;
                    }
                    // Renewed just in time: keep watching the new deadline.
                    if state.lease.valid_until <= Instant::now() {
                        return state.on_expiry;
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
enum Stop {
    /// Release and send the outcome back.
    Reply(oneshot::Sender<Result<Released, Error>>),
}

/// A lock held with automatic extension; see [`Client::lock`].
///
/// Dropping the guard stops the renewal and releases the lock in the
/// background on the runtime that renews it (no blocking work in `Drop`);
/// [`LockGuard::release`] does the same and waits for the outcome.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    held: HeldLease,
    stop: Option<oneshot::Sender<Stop>>,
}

impl LockGuard {
    pub(crate) fn start(
        client: Client,
        lease: Lease,
        runtime: &tokio::runtime::Handle,
    ) -> LockGuard {
        let (tx, rx) = watch::channel(State {
            lease,
            lost: None,
            on_expiry: LossReason::Expired,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        // Counted with the client's background work: a program that waits
        // for it to settle before exiting lets a dropped guard release.
        client
            .inner
            .background
            .spawn(Some(runtime), renew(client.clone(), tx, stop_rx));
        LockGuard {
            client,
            held: HeldLease { rx },
            stop: Some(stop_tx),
        }
    }

    /// The holder's view: current lease and loss signal.
    pub fn held(&self) -> &HeldLease {
        &self.held
    }

    /// The current lease.
    pub fn lease(&self) -> Lease {
        self.held.lease()
    }

    pub fn fence(&self) -> u64 {
        self.held.fence()
    }

    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Resolves when the lock is lost.
    pub async fn lost(&self) -> LossReason {
        self.held.lost().await
    }

    /// Stops renewing and releases the lock on every node.
    pub async fn release(mut self) -> Result<Released, Error> {
        if let Some(stop) = self.stop.take() {
            let (reply_tx, reply_rx) = oneshot::channel();
            if stop.send(Stop::Reply(reply_tx)).is_ok() {
                if let Ok(outcome) = reply_rx.await {
                    return outcome;
                }
            }
        }
        // The renewal task has ended (the lock was lost, or its runtime is
        // gone): release directly; it is idempotent.
        self.client.release(&self.held.lease()).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the channel tells the renewal task to release and stop.
        drop(self.stop.take());
    }
}

fn mark_lost(tx: &watch::Sender<State>, reason: LossReason) {
    tx.send_modify(|s| {
        if s.lost.is_none() {
            s.lost = Some(reason);
        }
    });
}

async fn finish(client: &Client, lease: &Lease, stop: Result<Stop, oneshot::error::RecvError>) {
    let outcome = client.release(lease).await;
    match stop {
        Ok(Stop::Reply(reply)) => {
            let _ = reply.send(outcome);
        }
        Err(_) => match outcome {
            Ok(r) => {
                tracing::debug!(resource = %lease.resource, held = r.held, "guard dropped, released")
            }
            Err(e) => tracing::warn!(resource = %lease.resource, error = %e,
                "guard dropped, release failed; the lock runs out at its TTL"),
        },
    }
}

/// The renewal loop of one guard.
async fn renew(client: Client, tx: watch::Sender<State>, mut stop: oneshot::Receiver<Stop>) {
    let (held_since, ttl) = {
        let s = tx.borrow();
        (s.lease.acquired_at, s.lease.ttl)
    };
    let max_hold = client.config().max_hold();
    let mut next = quorum::renew_at(held_since, ttl);
    loop {
        let (lease, on_expiry) = {
            let s = tx.borrow();
            (s.lease.clone(), s.on_expiry)
        };
        let until = lease.valid_until;
        if Instant::now() >= until {
            tracing::warn!(resource = %lease.resource, reason = %on_expiry, "lock lost");
            mark_lost(&tx, on_expiry);
            // Keep the channel open until the guard goes, so a release
            // request still gets an answer.
            let s = stop.await;
            finish(&client, &lease, s).await;
            return;
        }
        let renewing = quorum::may_renew(held_since, next, ttl, max_hold);
        if !renewing && on_expiry != LossReason::MaxHold {
            tracing::info!(resource = %lease.resource, ?max_hold, "maximum hold reached; renewal stops");
            tx.send_modify(|s| s.on_expiry = LossReason::MaxHold);
        }
        let wake = if renewing { next.min(until) } else { until };
        tokio::select! {
            biased;
            s = &mut stop => {
                finish(&client, &lease, s).await;
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        if !renewing || Instant::now() >= until {
            continue;
        }
        let started = Instant::now();
        let mut renewed = lease.clone();
        let outcome = tokio::select! {
            biased;
            s = &mut stop => {
                finish(&client, &lease, s).await;
                return;
            }
            // The validity ends while the extension is under way: that is
            // the loss, whatever the late answer would have been.
            _ = tokio::time::sleep_until(until.into()) => continue,
            r = client.extend(&mut renewed, ttl) => r,
        };
        match outcome {
            Ok(()) => {
                tracing::trace!(resource = %lease.resource, "renewed");
                tx.send_modify(|s| s.lease = renewed);
                next = quorum::renew_at(started, ttl);
            }
            Err(Error::Lost { reason, .. }) => {
                tracing::warn!(resource = %lease.resource, %reason, "lock lost");
                mark_lost(&tx, reason);
                // Free the nodes that still hold our token, then wait for
                // the guard to go.
                let _ = client.release(&lease).await;
                let s = stop.await;
                finish(&client, &lease, s).await;
                return;
            }
            Err(e) => {
                tracing::warn!(resource = %lease.resource, error = %e, "renewal failed, retrying");
                next = Instant::now() + quorum::renew_retry_delay(ttl);
            }
        }
    }
}

/// Taking a lock that renews itself: the guard's constructors.
impl Client {
    /// Acquires (waiting up to `wait`) and returns a guard that renews the
    /// lease in the background at a third of the TTL, signals the moment it
    /// is lost, stops renewing at the configured maximum hold, and releases
    /// when dropped (in the background) or by [`LockGuard::release`].
    pub async fn lock(
        &self,
        resource: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::runtime("a lock guard needs a tokio runtime to renew on"))?;
        let lease = self.acquire(resource, ttl, wait).await?;
        Ok(LockGuard::start(self.clone(), lease, &handle))
    }

    /// Runs `work` while holding the lock, renewing it as long as the work
    /// runs (up to the maximum hold). Waits up to the configured default
    /// wait to acquire.
    ///
    /// If the lock is lost, `work` is dropped at once (it stops at its
    /// current `.await`) and [`Error::Lost`] is returned; work that must
    /// clean up itself can instead watch [`HeldLease::lost`]. When `work`
    /// finishes, the lock is released and its output returned.
    pub async fn with_lock<F, Fut, T>(
        &self,
        resource: &str,
        ttl: Duration,
        work: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(HeldLease) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self
            .lock(resource, ttl, self.inner.config.default_wait)
            .await?;
        let held = guard.held().clone();
        let work = work(held.clone());
        tokio::select! {
            biased;
            reason = held.lost() => {
                drop(guard);
                Err(Error::Lost { resource: resource.to_owned(), reason })
            }
            out = work => {
                if let Err(e) = guard.release().await {
                    tracing::warn!(resource, error = %e, "release after work failed; the lock runs out at its TTL");
                }
                Ok(out)
            }
        }
    }
}
