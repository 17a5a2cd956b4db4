//! The requests a client leaves to finish after the call that started them
//! returned: the slower nodes of a won round, the releases of a round that
//! lost or was cancelled, the stragglers of a release, the renewal of a
//! guard. They are counted, so that a program about to exit can wait
//! (bounded) until they are done instead of cutting them off, which would
//! leave a lock held on some nodes until its TTL.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Background {
    running: AtomicUsize,
    idle: Notify,
}

/// Counts one task from its spawn until it ends or is dropped (a runtime
/// that shuts down drops its tasks).
struct Running(Arc<Background>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Background {
    /// Spawns `task` on `runtime` (the current one if `None`). Returns
    /// false, and drops `task`, if there is no runtime to run it on.
    pub(crate) fn spawn<F>(
        self: &Arc<Self>,
        runtime: Option<&tokio::runtime::Handle>,
        task: F,
    ) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let current;
        let handle = match runtime {
            Some(h) => h,
            None => match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    current = h;
                    &current
                }
                Err(_) => return false,
            },
        };
        self.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.clone());
        handle.spawn(async move {
            let _running = running;
            task.await;
        });
        true
    }

    /// How many tasks are still running.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits until no task is running, at most `limit`. Whether they all
    /// finished.
    pub(crate) async fn settle(&self, limit: Duration) -> bool {
        let idle = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                // Registered before the check, so a task ending in between
                // still wakes us.
                notified.as_mut().enable();
                if self.running() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, idle).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settle_waits_for_every_task_and_no_longer() {
        let bg = Arc::new(Background::default());
        assert!(bg.settle(Duration::ZERO).await, "nothing running");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(bg.spawn(None, async move {
            let _ = rx.await;
        }));
        assert!(bg.spawn(None, tokio::time::sleep(Duration::from_millis(30))));
        assert_eq!(bg.running(), 2);
        assert!(
            !bg.settle(Duration::from_millis(60)).await,
            "one is blocked"
        );
        assert_eq!(bg.running(), 1);
        drop(tx);
        assert!(bg.settle(Duration::from_secs(5)).await);
        assert_eq!(bg.running(), 0);
    }

    #[test]
    fn without_a_runtime_nothing_is_spawned() {
        let bg = Arc::new(Background::default());
        assert!(!bg.spawn(None, async {}));
        assert_eq!(bg.running(), 0);
    }

    #[test]
    fn a_task_dropped_with_its_runtime_is_not_counted() {
        let bg = Arc::new(Background::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(bg.spawn(Some(rt.handle()), std::future::pending()));
        assert_eq!(bg.running(), 1);
        drop(rt);
        assert_eq!(bg.running(), 0);
    }
}
