//! Waiting in one node's queue: `LOCK.ACQUIRE ... WAIT` blocks its
//! connection (as `BLPOP` does), so each wait runs on a connection of its
//! own, taken from a small pool of the node's waiting connections and put
//! back once the wait's reply has been read. A wait that ends otherwise (a
//! client-side timeout, an error, the future dropped) drops its connection:
//! a connection whose blocked request may still be pending on the server is
//! never reused. Idle connections are closed after [`IDLE_CLOSE`].
//!
//! Each waiting connection, when opened, asks the node for its clock
//! (`TIME`): the client's tickets are then the start of its wait on the
//! node's own clock (see [`Node::ticket`]), so the order of the queues does
//! not depend on the client's wall clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::time::timeout;

use super::{Node, Phase};
use crate::error::{NodeError, NodeErrorKind};
use crate::proto::{self, Acquire};

/// A waiting connection unused for this long is closed.
pub(crate) const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// At most this many idle waiting connections are kept per node (one per
/// concurrent wait of this client on the node is what reuse needs).
const MAX_IDLE: usize = 16;

/// The node's clock offset is learned again on a connection taken this
/// long after it was last learned (clock steps on the node).
const OFFSET_REFRESH: Duration = Duration::from_secs(60);

/// The node's wall clock in microseconds at one instant of ours.
#[derive(Clone, Copy, Debug)]
struct NodeClock {
    node_micros: u64,
    at: Instant,
}

#[derive(Default)]
pub(crate) struct WaitPool {
    idle: Mutex<Vec<(MultiplexedConnection, Instant)>>,
    clock: Mutex<Option<NodeClock>>,
    /// A waiting connection was ever opened: a request may have reached
    /// the node on one.
    opened: AtomicBool,
    /// A task closes idle connections.
    reaping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WaitPool {
    pub(crate) fn ever_opened(&self) -> bool {
        self.opened.load(Ordering::Relaxed)
    }

    /// An idle connection, the most recently used, if one is fresh enough.
    fn take(&self) -> Option<MultiplexedConnection> {
        let mut idle = lock(&self.idle);
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_CLOSE {
                return Some(conn);
            }
        }
        None
    }

    /// Closes connections idle for [`IDLE_CLOSE`]; whether any stay idle.
    fn reap(&self) -> bool {
        let mut idle = lock(&self.idle);
        idle.retain(|(_, since)| since.elapsed() < IDLE_CLOSE);
        !idle.is_empty()
    }

    pub(crate) fn idle(&self) -> usize {
        lock(&self.idle).len()
    }
}

/// The ticket for a wait that started at `started`, given the node's
/// clock at `clock.at`: the same instant on the node's clock.
fn ticket_at(clock: NodeClock, started: Instant) -> u64 {
    if started >= clock.at {
        let ahead = started.duration_since(clock.at).as_micros();
        clock
            .node_micros
            .saturating_add(u64::try_from(ahead).unwrap_or(u64::MAX))
    } else {
        let behind = clock.at.duration_since(started).as_micros();
        clock
            .node_micros
            .saturating_sub(u64::try_from(behind).unwrap_or(u64::MAX))
    }
}

impl Node {
    /// The ticket of a wait that started at `started`: that instant on the
    /// node's clock, as learned from `TIME` on a waiting connection (to
    /// within half a round trip), advanced by our monotonic clock. Before
    /// anything is learned (`TIME` failed), our own wall clock.
    pub(crate) fn ticket(&self, started: Instant) -> u64 {
        if let Some(clock) = *lock(&self.waits.clock) {
            return ticket_at(clock, started);
        }
        let wall = SystemTime::now()
            .checked_sub(started.elapsed())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        u64::try_from(wall.as_micros()).unwrap_or(u64::MAX)
    }

    /// A waiting connection: an idle one, or a new one (which learns the
    /// node's clock).
    async fn waiting_connection(&self) -> Result<MultiplexedConnection, NodeError> {
        if let Some(mut conn) = self.waits.take() {
            let stale = lock(&self.waits.clock).is_none_or(|c| c.at.elapsed() > OFFSET_REFRESH);
            if stale {
                self.learn_clock(&mut conn).await;
            }
            return Ok(conn);
        }
        let mut conn = match timeout(self.connect_timeout, self.open_connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(self.with_refusal(e).await.unsent()),
            Err(_) => return Err(self.no_connection().unsent()),
        };
        self.waits.opened.store(true, Ordering::Relaxed);
        tracing::debug!(node = self.index, addr = %self.label, "waiting connection opened");
        self.learn_clock(&mut conn).await;
        Ok(conn)
    }

    /// `TIME` on `conn`: the node's clock at the midpoint of the request.
    /// A node that does not answer in time teaches nothing.
    async fn learn_clock(&self, conn: &mut MultiplexedConnection) {
        let sent = Instant::now();
        let reply = timeout(
            self.request_timeout,
            redis::cmd("TIME").query_async::<(u64, u64)>(conn),
        )
        .await;
        if let Ok(Ok((secs, micros))) = reply {
            let rtt = sent.elapsed();
            let at = sent + rtt / 2;
            let node_micros = secs.saturating_mul(1_000_000).saturating_add(micros);
            *lock(&self.waits.clock) = Some(NodeClock { node_micros, at });
        }
    }

    /// Puts a waiting connection whose reply was read back in the pool,
    /// and makes sure a task will close it once idle.
    fn put_back(self: &Arc<Self>, conn: MultiplexedConnection) {
        {
            let mut idle = lock(&self.waits.idle);
            if idle.len() >= MAX_IDLE {
                idle.remove(0);
            }
            idle.push((conn, Instant::now()));
        }
        if self.waits.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to close them later: closed when next taken stale,
            // or with the client.
            self.waits.reaping.store(false, Ordering::Release);
            return;
        };
        let node: Weak<Node> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(IDLE_CLOSE / 2).await;
                let Some(node) = node.upgrade() else { return };
                if !node.waits.reap() {
                    node.waits.reaping.store(false, Ordering::Release);
                    // A connection put back since the check restarts us.
                    if node.waits.idle() == 0 || node.waits.reaping.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }

    /// `LOCK.ACQUIRE key token ttl-ms WAIT wait-ms TICKET t` on a waiting
    /// connection, `t` the wait's start (`started`) on the node's clock.
    /// The fence if granted, `None` if the wait ended without a grant (it
    /// ran out, or our own `LOCK.RELEASE` ended it). `sent` is set before
    /// the request goes out. The connection goes back to the pool only
    /// once the reply has been read.
    pub(crate) async fn acquire_waiting(
        self: Arc<Self>,
        key: Arc<str>,
        token: crate::lease::Token,
        ttl_ms: u64,
        wait_ms: u64,
        started: Instant,
        sent: Arc<[AtomicBool]>,
    ) -> Result<Option<u64>, NodeError> {
        let mut conn = self.waiting_connection().await?;
        let request =
            Acquire::new(&key, token.as_str(), ttl_ms).wait(wait_ms, Some(self.ticket(started)));
        if let Some(sent) = sent.get(self.index) {
            sent.store(true, Ordering::Relaxed);
        }
        let limit = Duration::from_millis(wait_ms).saturating_add(self.request_timeout);
        let reply = match timeout(
            limit,
            proto::encode(&request).query_async::<Value>(&mut conn),
        )
        .await
        {
            // The wait may still be pending on the node: the connection
            // is dropped, not reused.
            Err(_) => {
                return Err(self.error(NodeErrorKind::Timeout, format!("no reply within {limit:?}")))
            }
            Ok(Err(e)) => return self.answer(&request, Err(self.classify(&e, Phase::Request))),
            Ok(Ok(reply)) => reply,
        };
        self.put_back(conn);
        self.answer(&request, Ok(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_the_start_on_the_nodes_clock_whichever_side_it_was_learned() {
        let at = Instant::now();
        let clock = NodeClock {
            node_micros: 5_000_000,
            at,
        };
        assert_eq!(ticket_at(clock, at), 5_000_000);
        assert_eq!(ticket_at(clock, at + Duration::from_millis(3)), 5_003_000);
        if let Some(before) = at.checked_sub(Duration::from_millis(2)) {
            assert_eq!(ticket_at(clock, before), 4_998_000);
        }
        let early = NodeClock {
            node_micros: 10,
            at,
        };
        if let Some(before) = at.checked_sub(Duration::from_secs(1)) {
            assert_eq!(ticket_at(early, before), 0, "saturates");
        }
    }
}
