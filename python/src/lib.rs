//! The native half of the Python package `redislock_quorum`: the Rust quorum
//! client (`redis-lock-client`) behind a thin PyO3 layer. The Python half
//! (`redislock_quorum/__init__.py`) holds the context managers, the asyncio
//! glue and the exception classes.
//!
//! Every operation runs on one tokio runtime per process (see [`Engine`]),
//! driven by the calling thread with the GIL released. Waits that can be long (acquire, lock) wake every 50 ms
//! to let Python run its signal handlers: a `KeyboardInterrupt` aborts the
//! task, and the client's cancellation-safety releases whatever the round
//! was granted.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::IntoPyObjectExt;
use redis_lock_client::{
    Config, Error, HeldLease, LockGuard, LossReason, NodeError, NodeErrorKind, Released,
};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, Notify};

/// How often a waiting call lets Python check for signals.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The runtime every client of the process shares: a current-thread tokio
/// runtime that the calling thread drives itself while it waits (as the
/// Rust client's own benchmark runs), so a round's requests, replies and
/// connection drivers cost no hand-over between threads. When no call has
/// been in progress for [`IDLE_AFTER`], a background thread drives it
/// instead (renewals, the stragglers of a release, asyncio operations) and
/// hands it back to the next caller.
struct Engine {
    rt: Runtime,
    /// Calls driving (or about to drive) the runtime now.
    callers: AtomicUsize,
    /// Calls started so far: the idle driver waits for a quiet period.
    calls: AtomicU64,
    /// Asks the idle driver to give the runtime back.
    kick: Notify,
    /// Work was spawned from outside: the idle driver should take over now.
    wanted: AtomicBool,
    idle_driver: OnceLock<std::thread::Thread>,
}

/// How long without calls before the background thread drives the runtime.
const IDLE_AFTER: Duration = Duration::from_millis(1);

impl Engine {
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.callers.fetch_add(1, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.kick.notify_one();
        let out = self.rt.block_on(fut);
        self.callers.fetch_sub(1, Ordering::SeqCst);
        out
    }

    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.rt.spawn(fut);
        if self.callers.load(Ordering::SeqCst) == 0 {
            self.wanted.store(true, Ordering::SeqCst);
            if let Some(t) = self.idle_driver.get() {
                t.unpark();
            }
        }
        handle
    }

    fn idle_loop(&self) {
        loop {
            let seen = self.calls.load(Ordering::SeqCst);
            if !self.wanted.swap(false, Ordering::SeqCst) {
                std::thread::park_timeout(IDLE_AFTER);
                let wanted = self.wanted.swap(false, Ordering::SeqCst);
                let busy = self.callers.load(Ordering::SeqCst) > 0
                    || self.calls.load(Ordering::SeqCst) != seen;
                if busy && !wanted {
                    continue;
                }
            }
            // Drives everything until a caller asks for the runtime back.
            self.rt.block_on(self.kick.notified());
        }
    }
}

/// The process's engine, with the pid that made it: after `fork` the
/// parent's threads do not exist in the child, so the child makes its own
/// (the old one is leaked: dropping it would wait for those threads).
static ENGINE: Mutex<Option<(u32, Arc<Engine>)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn runtime() -> PyResult<Arc<Engine>> {
    let pid = std::process::id();
    let mut slot = lock(&ENGINE);
    if let Some((owner, engine)) = slot.as_ref() {
        if *owner == pid {
            return Ok(engine.clone());
        }
    }
    if let Some((_, inherited)) = slot.take() {
        std::mem::forget(inherited);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the tokio runtime: {e}")))?;
    let engine = Arc::new(Engine {
        rt,
        callers: AtomicUsize::new(0),
        calls: AtomicU64::new(0),
        kick: Notify::new(),
        wanted: AtomicBool::new(false),
        idle_driver: OnceLock::new(),
    });
    let driver = engine.clone();
    let thread = std::thread::Builder::new()
        .name("redislock-quorum".into())
        .spawn(move || driver.idle_loop())
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the runtime's thread: {e}")))?;
    let _ = engine.idle_driver.set(thread.thread().clone());
    *slot = Some((pid, engine.clone()));
    Ok(engine)
}

/// A duration in seconds from Python, checked before anything is sent.
fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        Python::attach(|py| {
            let message = format!("{name}={value} is not a number of seconds >= 0");
            match py
                .import("redislock_quorum._errors")
                .and_then(|m| m.getattr("ConfigurationError"))
                .and_then(|c| c.call1((message,)))
            {
                Ok(exc) => PyErr::from_value(exc),
                Err(e) => e,
            }
        })
    })
}

fn kind_name(kind: NodeErrorKind) -> &'static str {
    match kind {
        NodeErrorKind::Connect => "connect",
        NodeErrorKind::Timeout => "timeout",
        NodeErrorKind::Auth => "auth",
        NodeErrorKind::ModuleNotLoaded => "module_not_loaded",
        NodeErrorKind::Server => "server",
        NodeErrorKind::Protocol => "protocol",
        NodeErrorKind::Io => "io",
        _ => "other",
    }
}

fn loss_name(reason: LossReason) -> &'static str {
    match reason {
        LossReason::Expired => "expired",
        LossReason::NotHeld => "not_held",
        LossReason::MaxHold => "max_hold",
        LossReason::HoldLimit => "hold_limit",
        _ => "other",
    }
}

fn node_failures<'py>(py: Python<'py>, errors: &[NodeError]) -> PyResult<Bound<'py, PyList>> {
    if errors.is_empty() {
        return Ok(PyList::empty(py));
    }
    let errors_mod = py.import("redislock_quorum._errors")?;
    let cls = errors_mod.getattr("NodeFailure")?;
    let items = errors
        .iter()
        .map(|e| {
            cls.call1((
                e.node,
                e.addr.as_str(),
                kind_name(e.kind),
                e.code.as_deref(),
                e.message.as_str(),
            ))
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// The Python exception for a client error, from `redislock_quorum._errors`.
fn exception<'py>(py: Python<'py>, err: &Error) -> PyResult<Bound<'py, PyAny>> {
    let m = py.import("redislock_quorum._errors")?;
    let kw = PyDict::new(py);
    let class = match err {
        Error::Taken {
            resource,
            held_elsewhere,
            granted,
            quorum,
            nodes,
            node_errors,
            ..
        } => {
            kw.set_item("key", resource)?;
            kw.set_item("held_elsewhere", held_elsewhere)?;
            kw.set_item("granted", granted)?;
            kw.set_item("quorum", quorum)?;
            kw.set_item("nodes", nodes)?;
            kw.set_item("node_errors", node_failures(py, node_errors)?)?;
            "LockTaken"
        }
        Error::Unreachable {
            resource,
            answered,
            quorum,
            nodes,
            node_errors,
            ..
        } => {
            kw.set_item("key", resource)?;
            kw.set_item("answered", answered)?;
            kw.set_item("quorum", quorum)?;
            kw.set_item("nodes", nodes)?;
            kw.set_item("node_errors", node_failures(py, node_errors)?)?;
            "NodesUnavailable"
        }
        Error::Refused {
            resource,
            retry_after,
            quorum,
            nodes,
            node_errors,
            ..
        } => {
            // The nodes are up but refuse new grants for a while (TRYAGAIN:
            // their rejoin or promotion delay).
            kw.set_item("key", resource)?;
            kw.set_item("retry_after", retry_after.as_secs_f64())?;
            kw.set_item("quorum", quorum)?;
            kw.set_item("nodes", nodes)?;
            kw.set_item("node_errors", node_failures(py, node_errors)?)?;
            "NodesUnavailable"
        }
        Error::Timeout {
            resource,
            waited,
            attempts,
            last,
            ..
        } => {
            kw.set_item("key", resource)?;
            kw.set_item("waited", waited.as_secs_f64())?;
            kw.set_item("attempts", attempts)?;
            kw.set_item("last", exception(py, last)?)?;
            kw.set_item("node_errors", node_failures(py, err.node_errors())?)?;
            "LockTimeout"
        }
        Error::NoValidityLeft { resource, .. } => {
            kw.set_item("key", resource)?;
            "LockTimeout"
        }
        Error::Expired { resource, .. } => {
            kw.set_item("key", resource)?;
            kw.set_item("reason", "expired")?;
            "LockLost"
        }
        Error::Lost {
            resource, reason, ..
        } => {
            kw.set_item("key", resource)?;
            kw.set_item("reason", loss_name(*reason))?;
            "LockLost"
        }
        e if e.is_invalid() => "ConfigurationError",
        _ => "LockError",
    };
    m.getattr(class)?.call((err.to_string(),), Some(&kw))
}

fn to_pyerr(py: Python<'_>, err: &Error) -> PyErr {
    match exception(py, err) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// An operation that ended in Rust: its value or the client's error.
type Outcome<T> = Result<T, Error>;

/// Waits on the calling thread (GIL released) for `fut`, run as a task on
/// the runtime. With `interruptible`, wakes every [`SIGNAL_POLL`] to run
/// Python's signal handlers; if one raises, the task is aborted (dropping
/// the client's future releases what it was granted) and the error returned.
fn wait<T, F>(py: Python<'_>, rt: &Arc<Engine>, fut: F, interruptible: bool) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = Outcome<T>> + Send + 'static,
{
    let rt = rt.clone();
    let out: Result<Outcome<T>, PyErr> = py.detach(move || {
        rt.block_on(async move {
            if !interruptible {
                return Ok(fut.await);
            }
            let mut fut = Box::pin(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    _ = tokio::time::sleep(SIGNAL_POLL) => {
                        if let Err(e) = Python::attach(|py| py.check_signals()) {
                            // Dropped here, on this thread, and the runtime
                            // run a little: the releases are sent and the
                            // waiting connections' drivers end (closing them,
                            // which takes the waiter out of the queues)
                            // before Python sees the error.
                            drop(fut);
                            for _ in 0..4 {
                                tokio::task::yield_now().await;
                            }
                            return Err(e);
                        }
                    }
                }
            }
        })
    });
    out?.map_err(|e| to_pyerr(py, &e))
}

/// A started asynchronous operation; `cancel()` aborts it (what it was
/// granted is released in the background).
#[pyclass(module = "redislock_quorum._native", frozen)]
struct Task {
    abort: tokio::task::AbortHandle,
}

#[pymethods]
impl Task {
    fn cancel(&self) {
        self.abort.abort();
    }
}

/// Runs `fut` on the runtime and calls `done(True, value)` or
/// `done(False, exception)` on the runtime's thread when it ends (the
/// Python side hands that to its event loop with `call_soon_threadsafe`).
fn spawn<T, F>(rt: &Arc<Engine>, fut: F, done: Py<PyAny>) -> Task
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
    F: Future<Output = Outcome<T>> + Send + 'static,
{
    let handle = rt.spawn(async move {
        let out = fut.await;
        // None while the interpreter shuts down: nobody is left to tell.
        Python::try_attach(|py| {
            let called = match out {
                Ok(value) => value
                    .into_bound_py_any(py)
                    .and_then(|v| done.call1(py, (true, v))),
                Err(e) => match exception(py, &e) {
                    Ok(exc) => done.call1(py, (false, exc)),
                    Err(conv) => done.call1(py, (false, conv.into_value(py))),
                },
            };
            if let Err(e) = called {
                e.write_unraisable(py, None);
            }
        });
    });
    Task {
        abort: handle.abort_handle(),
    }
}

/// One lease, as returned by acquire (a snapshot for a guard).
#[pyclass(module = "redislock_quorum._native", frozen)]
struct Lease {
    inner: Mutex<redis_lock_client::Lease>,
}

impl Lease {
    fn new(lease: redis_lock_client::Lease) -> Lease {
        Lease {
            inner: Mutex::new(lease),
        }
    }

    fn get(&self) -> redis_lock_client::Lease {
        lock(&self.inner).clone()
    }
}

#[pymethods]
impl Lease {
    #[getter]
    fn key(&self) -> String {
        lock(&self.inner).resource().to_owned()
    }

    #[getter]
    fn token(&self) -> String {
        lock(&self.inner).token().as_str().to_owned()
    }

    #[getter]
    fn fence(&self) -> u64 {
        lock(&self.inner).fence()
    }

    /// Seconds of validity left (0.0 once expired).
    #[getter]
    fn validity(&self) -> f64 {
        lock(&self.inner).remaining().as_secs_f64()
    }

    #[getter]
    fn ttl(&self) -> f64 {
        lock(&self.inner).ttl().as_secs_f64()
    }

    #[getter]
    fn nodes(&self) -> Vec<usize> {
        lock(&self.inner).nodes().to_vec()
    }
}

/// The outcome of a release.
#[pyclass(module = "redislock_quorum._native", frozen, get_all)]
struct ReleaseResult {
    held: usize,
    not_held: usize,
    pending: usize,
    failed: Py<PyList>,
}

/// A release's outcome on its way to Python (None: there was nothing left
/// to release).
struct ReleasedPy(Option<Released>);

impl<'py> IntoPyObject<'py> for ReleasedPy {
    type Target = ReleaseResult;
    type Output = Bound<'py, ReleaseResult>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Bound::new(py, self.result(py)?)
    }
}

impl ReleasedPy {
    fn result(self, py: Python<'_>) -> PyResult<ReleaseResult> {
        let (held, not_held, pending, failed) = match &self.0 {
            Some(r) => (r.held, r.not_held, r.pending, r.failed.as_slice()),
            None => (0, 0, 0, &[][..]),
        };
        Ok(ReleaseResult {
            held,
            not_held,
            pending,
            failed: node_failures(py, failed)?.unbind(),
        })
    }
}

/// A lock held with background renewal (`Client.lock`).
#[pyclass(module = "redislock_quorum._native", frozen)]
struct Guard {
    guard: Mutex<Option<LockGuard>>,
    held: HeldLease,
    rt: Arc<Engine>,
    // Dropping it stops the task that sets the Python event on loss.
    _watch: Mutex<Option<oneshot::Sender<()>>>,
}

impl Guard {
    fn start(guard: LockGuard, event: Py<PyAny>, rt: &Arc<Engine>) -> Guard {
        let held = guard.held().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let watched = held.clone();
        rt.spawn(async move {
            tokio::select! {
                _ = watched.lost() => {
                    Python::try_attach(|py| {
                        if let Err(e) = event.call_method0(py, "set") {
                            e.write_unraisable(py, None);
                        }
                    });
                }
                _ = stop_rx => {}
            }
        });
        Guard {
            guard: Mutex::new(Some(guard)),
            held,
            rt: rt.clone(),
            _watch: Mutex::new(Some(stop_tx)),
        }
    }

    fn take(&self) -> Option<LockGuard> {
        drop(lock(&self._watch).take());
        lock(&self.guard).take()
    }
}

#[pymethods]
impl Guard {
    #[getter]
    fn key(&self) -> String {
        self.held.resource()
    }

    #[getter]
    fn fence(&self) -> u64 {
        self.held.fence()
    }

    #[getter]
    fn token(&self) -> String {
        self.held.lease().token().as_str().to_owned()
    }

    #[getter]
    fn validity(&self) -> f64 {
        self.held.lease().remaining().as_secs_f64()
    }

    #[getter]
    fn ttl(&self) -> f64 {
        self.held.lease().ttl().as_secs_f64()
    }

    /// Why the lock was lost (`"expired"`, `"not_held"`, `"max_hold"`,
    /// `"hold_limit"`), or None while it is held.
    fn loss(&self) -> Option<&'static str> {
        self.held.loss().map(loss_name)
    }

    /// The current lease (a snapshot).
    fn lease(&self) -> Lease {
        Lease::new(self.held.lease())
    }

    /// Stops renewing and releases on every node; waits for a quorum.
    fn release(&self, py: Python<'_>) -> PyResult<ReleaseResult> {
        let guard = self.take();
        let fut = async move {
            match guard {
                Some(g) => g.release().await.map(|r| ReleasedPy(Some(r))),
                None => Ok(ReleasedPy(None)),
            }
        };
        wait(py, &self.rt, fut, false)?.result(py)
    }

    fn release_async(&self, done: Py<PyAny>) -> Task {
        let guard = self.take();
        let fut = async move {
            match guard {
                Some(g) => g.release().await.map(|r| ReleasedPy(Some(r))),
                None => Ok(ReleasedPy(None)),
            }
        };
        spawn(&self.rt, fut, done)
    }

    /// Stops renewing and releases in the background without waiting.
    fn abandon(&self) {
        drop(self.take());
    }
}

/// The quorum client.
#[pyclass(module = "redislock_quorum._native", frozen)]
struct Client {
    client: redis_lock_client::Client,
    rt: Arc<Engine>,
    pid: u32,
}

impl Client {
    fn rt(&self) -> PyResult<&Arc<Engine>> {
        if std::process::id() != self.pid {
            return Err(PyRuntimeError::new_err(
                "this client was created before fork(); its connections belong to the parent: make a new Client in the child process",
            ));
        }
        Ok(&self.rt)
    }
}

fn ttl_of(ttl: f64) -> PyResult<Duration> {
    seconds("ttl", ttl)
}

async fn guard_of(
    client: redis_lock_client::Client,
    key: String,
    ttl: Duration,
    wait: Duration,
) -> Outcome<LockGuard> {
    client.lock(&key, ttl, wait).await
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (nodes, *, quorum=None, connect_timeout=None, request_timeout=None, retry_count=None, retry_delay=None, retry_jitter=None, drift_factor=None, drift_fixed=None, wait=None, max_hold=None, fenced=None, server_wait=None, username=None, password=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        nodes: Vec<String>,
        quorum: Option<usize>,
        connect_timeout: Option<f64>,
        request_timeout: Option<f64>,
        retry_count: Option<u32>,
        retry_delay: Option<f64>,
        retry_jitter: Option<f64>,
        drift_factor: Option<f64>,
        drift_fixed: Option<f64>,
        wait: Option<f64>,
        max_hold: Option<f64>,
        fenced: Option<bool>,
        server_wait: Option<bool>,
        username: Option<String>,
        password: Option<String>,
    ) -> PyResult<Client> {
        let build = || -> PyResult<Result<redis_lock_client::Client, Error>> {
            let mut b = Config::builder(nodes);
            if let Some(q) = quorum {
                b = b.quorum(q);
            }
            if let Some(t) = connect_timeout {
                b = b.connect_timeout(seconds("connect_timeout", t)?);
            }
            if let Some(t) = request_timeout {
                b = b.request_timeout(seconds("request_timeout", t)?);
            }
            if let Some(n) = retry_count {
                b = b.retry_count(n);
            }
            if let Some(t) = retry_delay {
                b = b.retry_delay(seconds("retry_delay", t)?);
            }
            if let Some(t) = retry_jitter {
                b = b.retry_jitter(seconds("retry_jitter", t)?);
            }
            if drift_factor.is_some() || drift_fixed.is_some() {
                let factor = drift_factor.unwrap_or(redis_lock_client::DEFAULT_DRIFT_FACTOR);
                let fixed = match drift_fixed {
                    Some(t) => seconds("drift_fixed", t)?,
                    None => redis_lock_client::DEFAULT_DRIFT_FIXED,
                };
                b = b.drift(factor, fixed);
            }
            if let Some(t) = wait {
                b = b.default_wait(seconds("wait", t)?);
            }
            if let Some(t) = max_hold {
                b = b.max_hold(seconds("max_hold", t)?);
            }
            if let Some(f) = fenced {
                b = b.fenced(f);
            }
            if let Some(s) = server_wait {
                b = b.server_wait(s);
            }
            if let Some(u) = username {
                b = b.username(u);
            }
            if let Some(p) = password {
                b = b.password(p);
            }
            Ok(b.build().and_then(redis_lock_client::Client::new))
        };
        let client = build()?.map_err(|e| to_pyerr(py, &e))?;
        Ok(Client {
            client,
            rt: runtime()?,
            pid: std::process::id(),
        })
    }

    /// The effective settings, in seconds where they are durations.
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.client.config();
        let d = PyDict::new(py);
        d.set_item("nodes", c.node_addrs())?;
        d.set_item("quorum", c.quorum())?;
        d.set_item("connect_timeout", c.connect_timeout().as_secs_f64())?;
        d.set_item("request_timeout", c.request_timeout().as_secs_f64())?;
        d.set_item("wait", c.default_wait().as_secs_f64())?;
        d.set_item("max_hold", c.max_hold().as_secs_f64())?;
        d.set_item("fenced", c.fenced())?;
        d.set_item("server_wait", c.server_wait())?;
        Ok(d)
    }

    /// Connects to every node now; the per-node failures (raises
    /// NodesUnavailable below a quorum).
    fn connect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let client = self.client.clone();
        let errors = wait(py, self.rt()?, async move { client.connect().await }, true)?;
        node_failures(py, &errors)
    }

    fn try_acquire(&self, py: Python<'_>, key: String, ttl: f64) -> PyResult<Lease> {
        let client = self.client.clone();
        let ttl = ttl_of(ttl)?;
        let fut = async move { client.try_acquire(&key, ttl).await };
        wait(py, self.rt()?, fut, false).map(Lease::new)
    }

    fn acquire(&self, py: Python<'_>, key: String, ttl: f64, wait_s: f64) -> PyResult<Lease> {
        let client = self.client.clone();
        let (ttl, wait_d) = (ttl_of(ttl)?, seconds("wait", wait_s)?);
        let fut = async move { client.acquire(&key, ttl, wait_d).await };
        wait(py, self.rt()?, fut, true).map(Lease::new)
    }

    fn extend(&self, py: Python<'_>, lease: &Lease, ttl: f64) -> PyResult<()> {
        let client = self.client.clone();
        let mut current = lease.get();
        let ttl = ttl_of(ttl)?;
        let fut = async move {
            client.extend(&mut current, ttl).await?;
            Ok(current)
        };
        let extended = wait(py, self.rt()?, fut, false)?;
        *lock(&lease.inner) = extended;
        Ok(())
    }

    fn release(&self, py: Python<'_>, lease: &Lease) -> PyResult<ReleaseResult> {
        let client = self.client.clone();
        let current = lease.get();
        let fut = async move { client.release(&current).await.map(|r| ReleasedPy(Some(r))) };
        wait(py, self.rt()?, fut, false)?.result(py)
    }

    /// Acquires (waiting up to `wait`) and renews in the background; sets
    /// `event` when the lock is lost.
    fn lock(
        &self,
        py: Python<'_>,
        key: String,
        ttl: f64,
        wait_s: f64,
        event: Py<PyAny>,
    ) -> PyResult<Guard> {
        let rt = self.rt()?.clone();
        let (ttl, wait_d) = (ttl_of(ttl)?, seconds("wait", wait_s)?);
        let (client, engine) = (self.client.clone(), rt.clone());
        let fut = async move {
            let guard = guard_of(client, key, ttl, wait_d).await?;
            // Started on the runtime: its watcher needs no wake-up there.
            Ok(Guard::start(guard, event, &engine))
        };
        wait(py, &rt, fut, true)
    }

    /// Waits, at most `limit` seconds, for the requests left to finish in
    /// the background (stragglers of releases, cancelled acquisitions).
    fn settle(&self, py: Python<'_>, limit: f64) -> PyResult<bool> {
        let client = self.client.clone();
        let limit = seconds("limit", limit)?;
        let fut = async move { Ok(client.settle(limit).await) };
        wait(py, self.rt()?, fut, true)
    }

    fn try_acquire_async(&self, key: String, ttl: f64, done: Py<PyAny>) -> PyResult<Task> {
        let client = self.client.clone();
        let ttl = ttl_of(ttl)?;
        let fut = async move { client.try_acquire(&key, ttl).await.map(Lease::new) };
        Ok(spawn(self.rt()?, fut, done))
    }

    fn acquire_async(&self, key: String, ttl: f64, wait_s: f64, done: Py<PyAny>) -> PyResult<Task> {
        let client = self.client.clone();
        let (ttl, wait_d) = (ttl_of(ttl)?, seconds("wait", wait_s)?);
        let fut = async move { client.acquire(&key, ttl, wait_d).await.map(Lease::new) };
        Ok(spawn(self.rt()?, fut, done))
    }

    fn release_async(&self, lease: &Lease, done: Py<PyAny>) -> PyResult<Task> {
        let client = self.client.clone();
        let current = lease.get();
        let fut = async move { client.release(&current).await.map(|r| ReleasedPy(Some(r))) };
        Ok(spawn(self.rt()?, fut, done))
    }

    fn extend_async(&self, lease: Py<Lease>, ttl: f64, done: Py<PyAny>) -> PyResult<Task> {
        let client = self.client.clone();
        let mut current = lease.get().get();
        let ttl = ttl_of(ttl)?;
        let fut = async move {
            client.extend(&mut current, ttl).await?;
            *lock(&lease.get().inner) = current;
            Ok(())
        };
        Ok(spawn(self.rt()?, fut, done))
    }

    fn lock_async(
        &self,
        key: String,
        ttl: f64,
        wait_s: f64,
        event: Py<PyAny>,
        done: Py<PyAny>,
    ) -> PyResult<Task> {
        let rt = self.rt()?.clone();
        let client = self.client.clone();
        let fut_rt = rt.clone();
        let (ttl, wait_d) = (ttl_of(ttl)?, seconds("wait", wait_s)?);
        let fut = async move {
            let guard = guard_of(client, key, ttl, wait_d).await?;
            Ok(Guard::start(guard, event, &fut_rt))
        };
        Ok(spawn(&rt, fut, done))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Lease>()?;
    m.add_class::<Guard>()?;
    m.add_class::<Task>()?;
    m.add_class::<ReleaseResult>()?;
    let defaults = PyDict::new(m.py());
    defaults.set_item(
        "connect_timeout",
        redis_lock_client::DEFAULT_CONNECT_TIMEOUT.as_secs_f64(),
    )?;
    defaults.set_item(
        "request_timeout",
        redis_lock_client::DEFAULT_REQUEST_TIMEOUT.as_secs_f64(),
    )?;
    defaults.set_item(
        "retry_delay",
        redis_lock_client::DEFAULT_RETRY_DELAY.as_secs_f64(),
    )?;
    defaults.set_item(
        "retry_jitter",
        redis_lock_client::DEFAULT_RETRY_JITTER.as_secs_f64(),
    )?;
    defaults.set_item("drift_factor", redis_lock_client::DEFAULT_DRIFT_FACTOR)?;
    defaults.set_item(
        "drift_fixed",
        redis_lock_client::DEFAULT_DRIFT_FIXED.as_secs_f64(),
    )?;
    defaults.set_item("wait", redis_lock_client::DEFAULT_WAIT.as_secs_f64())?;
    defaults.set_item(
        "max_hold",
        redis_lock_client::DEFAULT_MAX_HOLD.as_secs_f64(),
    )?;
    m.add("DEFAULTS", defaults)?;
    Ok(())
}
