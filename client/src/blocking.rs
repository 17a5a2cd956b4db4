//! A blocking facade for programs without tokio: the same client, driven by
//! a small runtime that this facade owns.
//!
//! Calls block the calling thread. They must not be made from inside an
//! async runtime (they return [`Error::Runtime`] instead of panicking).

use std::fmt;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::client::Released;
use crate::config::{Config, IntoNodeAddrs};
use crate::error::{Error, LossReason};
use crate::guard::HeldLease;
use crate::lease::{Lease, Token};

/// The blocking client. Renewal of guards runs on its own worker thread.
pub struct Client {
    inner: crate::Client,
    // `Option` so that `Drop` can shut it down without blocking for long.
    runtime: Option<Runtime>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Client")
            .field(&self.inner)
            .finish()
    }
}

impl Client {
    pub fn new(config: Config) -> Result<Client, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis-lock-client")
            .enable_all()
            .build()
            .map_err(|e| Error::runtime(format!("cannot start the runtime: {e}")))?;
        Ok(Client {
            inner: crate::Client::new(config)?,
            runtime: Some(runtime),
        })
    }

    pub fn from_urls(nodes: impl IntoNodeAddrs) -> Result<Client, Error> {
        Client::new(Config::from_urls(nodes)?)
    }

    /// The async client underneath (sharing the connections).
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    fn block_on<F: std::future::Future>(&self, fut: F) -> Result<F::Output, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::runtime(
                "the blocking client was called from inside an async runtime; use the async client there",
            ));
        }
        match &self.runtime {
            Some(rt) => Ok(rt.block_on(fut)),
            None => Err(Error::runtime("the runtime is shut down")),
        }
    }

    /// See [`crate::Client::connect`].
    pub fn connect(&self) -> Result<Vec<crate::NodeError>, Error> {
        self.block_on(self.inner.connect())?
    }

    /// See [`crate::Client::try_acquire`].
    pub fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Lease, Error> {
        self.block_on(self.inner.try_acquire(resource, ttl))?
    }

    /// See [`crate::Client::try_acquire_with_token`].
    pub fn try_acquire_with_token(
        &self,
        resource: &str,
        ttl: Duration,
        token: &Token,
    ) -> Result<Lease, Error> {
        self.block_on(self.inner.try_acquire_with_token(resource, ttl, token))?
    }

    /// See [`crate::Client::acquire`].
    pub fn acquire(&self, resource: &str, ttl: Duration, wait: Duration) -> Result<Lease, Error> {
        self.block_on(self.inner.acquire(resource, ttl, wait))?
    }

    /// See [`crate::Client::acquire_default`].
    pub fn acquire_default(&self, resource: &str, ttl: Duration) -> Result<Lease, Error> {
        self.block_on(self.inner.acquire_default(resource, ttl))?
    }

    /// See [`crate::Client::extend_token`].
    pub fn extend_token(
        &self,
        resource: &str,
        token: &crate::Token,
        ttl: Duration,
    ) -> Result<usize, Error> {
        self.block_on(self.inner.extend_token(resource, token, ttl))?
    }

    /// See [`crate::Client::release_token`].
    pub fn release_token(&self, resource: &str, token: &crate::Token) -> Result<Released, Error> {
        self.block_on(self.inner.release_token(resource, token))?
    }

    /// See [`crate::Client::extend`].
    pub fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<(), Error> {
        self.block_on(self.inner.extend(lease, ttl))?
    }

    /// See [`crate::Client::release`].
    pub fn release(&self, lease: &Lease) -> Result<Released, Error> {
        self.block_on(self.inner.release(lease))?
    }

    /// See [`crate::Client::settle`].
    pub fn settle(&self, limit: Duration) -> Result<bool, Error> {
        self.block_on(self.inner.settle(limit))
    }

    /// Acquires and renews in the background; see [`crate::Client::lock`].
    pub fn lock(&self, resource: &str, ttl: Duration, wait: Duration) -> Result<LockGuard, Error> {
        let guard = self.block_on(self.inner.lock(resource, ttl, wait))??;
        let handle = match &self.runtime {
            Some(rt) => rt.handle().clone(),
            None => return Err(Error::runtime("the runtime is shut down")),
        };
        Ok(LockGuard {
            held: guard.held().clone(),
            guard: Some(guard),
            runtime: handle,
        })
    }

    /// Runs `work` on this thread while the lock is renewed in the
    /// background. Blocking work cannot be interrupted: `work` should check
    /// [`HeldLease::is_lost`] between steps. Returns [`Error::Lost`] if the
    /// lock was lost before `work` returned (its output is then dropped,
    /// since it was not produced under the lock).
    pub fn with_lock<T>(
        &self,
        resource: &str,
        ttl: Duration,
        work: impl FnOnce(&HeldLease) -> T,
    ) -> Result<T, Error> {
        let guard = self.lock(resource, ttl, self.inner.config().default_wait())?;
        let out = work(guard.held());
        if let Some(reason) = guard.held().loss() {
            return Err(Error::Lost {
                resource: resource.to_owned(),
                reason,
            });
        }
        if let Err(e) = guard.release() {
            tracing::warn!(resource, error = %e, "release after work failed; the lock runs out at its TTL");
        }
        Ok(out)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                // Let the background work (the releases of dropped guards,
                // the stragglers of a release) finish, for a moment at most:
                // shutting the runtime down cancels it.
                rt.block_on(self.inner.settle(Duration::from_millis(200)));
                rt.shutdown_background();
            }
        }
    }
}

/// A lock renewed in the background; see [`crate::LockGuard`]. Dropping it
/// releases in the background; prefer [`LockGuard::release`], which waits
/// and reports.
#[derive(Debug)]
pub struct LockGuard {
    guard: Option<crate::LockGuard>,
    held: HeldLease,
    runtime: tokio::runtime::Handle,
}

impl LockGuard {
    /// The holder's view: current lease and loss signal.
    pub fn held(&self) -> &HeldLease {
        &self.held
    }

    pub fn lease(&self) -> Lease {
        self.held.lease()
    }

    pub fn fence(&self) -> u64 {
        self.held.fence()
    }

    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Blocks until the lock is lost (`Some(reason)`) or `timeout` passes
    /// (`None`).
    pub fn wait_lost(&self, timeout: Duration) -> Result<Option<LossReason>, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::runtime("blocking call inside an async runtime"));
        }
        let held = self.held.clone();
        Ok(self
            .runtime
            .block_on(async move { tokio::time::timeout(timeout, held.lost()).await.ok() }))
    }

    /// Stops renewing and releases; waits for the outcome.
    pub fn release(mut self) -> Result<Released, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::runtime("blocking call inside an async runtime"));
        }
        match self.guard.take() {
            Some(guard) => self.runtime.block_on(guard.release()),
            None => Err(Error::runtime("the guard was already released")),
        }
    }
}
