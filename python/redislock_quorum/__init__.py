"""Distributed locks over the redis-lock module, for Python.

The quorum (Redlock) client of redis-lock, the Rust one, not a second
implementation: the same fan-out with early decision, validity with drift,
fencing tokens raised to a common value, waiting in the nodes' queues,
background renewal and the loss signal.

    from redislock_quorum import Client

    client = Client(["redis://a:6379", "redis://b:6379", "redis://c:6379"])
    with client.lock("jobs:nightly", ttl=30, wait=10) as lease:
        do_something(fence=lease.fence)   # renewed in the background
        lease.check()                     # raises LockLost once the lock is gone

Durations are seconds (floats). Network waits release the GIL; a client is
safe to share between threads. Create clients after ``fork()``: a client
made in a parent process refuses to work in the child.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any, Callable, List, Optional, Sequence, Union

from . import _native
from ._errors import (
    ConfigurationError,
    LockError,
    LockLost,
    LockTaken,
    LockTimeout,
    NodeFailure,
    NodesUnavailable,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ConfigurationError",
    "DEFAULTS",
    "DEFAULT_TTL",
    "Lease",
    "LockError",
    "LockLost",
    "LockTaken",
    "LockTimeout",
    "NodeFailure",
    "NodesUnavailable",
    "Released",
]

#: The Rust client's defaults, in seconds: connect_timeout, request_timeout,
#: retry_delay, retry_jitter, drift_factor (a ratio), drift_fixed, wait, max_hold.
DEFAULTS: dict = dict(_native.DEFAULTS)

#: The lease length when neither the client nor the call gives one (as the
#: redis-lock command-line tool).
DEFAULT_TTL = 30.0

#: What a release did: ``held`` nodes freed the lock, ``not_held`` did not
#: hold it for this token, ``pending`` were not waited for (a quorum had
#: answered), ``failed`` lists the nodes that could not be asked.
Released = _native.ReleaseResult


class Lease:
    """A lock held on a quorum of nodes.

    ``fence`` is the fencing token to hand to the protected resource (it
    must refuse a write with a smaller fence than one it has seen);
    ``validity`` the seconds the lock can still be relied on; ``lost`` a
    :class:`threading.Event` set once the lock is known lost.
    """

    __slots__ = ("_native", "_guard", "_lost")

    def __init__(self, native: Any, guard: Any = None, lost: Optional[threading.Event] = None) -> None:
        self._native = native
        self._guard = guard
        self._lost = lost

    @property
    def lost(self) -> threading.Event:
        """Set once the lock is known lost (by the renewal of a lease from
        :meth:`Client.lock`; by :meth:`check` or a failed extension of a
        lease managed by hand)."""
        if self._lost is None:  # made on demand: most hand-held leases never ask
            self._lost = threading.Event()
        return self._lost

    @property
    def _current(self) -> Any:
        return self._guard if self._guard is not None else self._native

    @property
    def key(self) -> str:
        """The locked key (the same on every node)."""
        return self._current.key

    @property
    def token(self) -> str:
        """The secret that extends and releases this lease."""
        return self._current.token

    @property
    def fence(self) -> int:
        """The fencing token: greater than that of any earlier holder."""
        return self._current.fence

    @property
    def validity(self) -> float:
        """Seconds the lock can still be relied on (0.0 once expired);
        moves forward with each renewal."""
        return self._current.validity

    @property
    def ttl(self) -> float:
        return self._current.ttl

    def check(self) -> None:
        """Raises :class:`LockLost` if the lock is gone (signalled, or past
        its validity by this process's clock). Call it between the steps
        of a long job."""
        if self._guard is not None:
            reason = self._guard.loss()
        elif self.lost.is_set() or self._native.validity <= 0.0:
            reason = "expired"
        else:
            reason = None
        if reason is not None or self.lost.is_set():
            self.lost.set()
            raise LockLost(
                f"the lock {self.key!r} is lost ({reason or 'expired'})",
                key=self.key,
                reason=reason or "expired",
            )

    def __repr__(self) -> str:
        return f"<Lease key={self.key!r} fence={self.fence} validity={self.validity:.3f}s>"


class _Settings:
    """What Client and AsyncClient share: the native client and the
    defaults of each call."""

    def __init__(
        self,
        nodes: Union[str, Sequence[str]],
        *,
        ttl: float = DEFAULT_TTL,
        wait: Optional[float] = None,
        quorum: Optional[int] = None,
        connect_timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
        retry_count: Optional[int] = None,
        retry_delay: Optional[float] = None,
        retry_jitter: Optional[float] = None,
        drift_factor: Optional[float] = None,
        drift_fixed: Optional[float] = None,
        max_hold: Optional[float] = None,
        fenced: Optional[bool] = None,
        server_wait: Optional[bool] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
    ) -> None:
        if isinstance(nodes, str):
            nodes = [n.strip() for n in nodes.split(",") if n.strip()]
        if not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ConfigurationError(f"ttl={ttl!r} is not a number of seconds > 0")
        self._native = _native.Client(
            list(nodes),
            quorum=quorum,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            retry_count=retry_count,
            retry_delay=retry_delay,
            retry_jitter=retry_jitter,
            drift_factor=drift_factor,
            drift_fixed=drift_fixed,
            wait=wait,
            max_hold=max_hold,
            fenced=fenced,
            server_wait=server_wait,
            username=username,
            password=password,
        )
        self.ttl = float(ttl)
        self.wait = float(self._native.config()["wait"])

    @property
    def config(self) -> dict:
        """The effective settings (durations in seconds)."""
        c = self._native.config()
        c["ttl"] = self.ttl
        return c

    def _ttl(self, ttl: Optional[float]) -> float:
        return self.ttl if ttl is None else float(ttl)

    def _wait(self, wait: Optional[float]) -> float:
        return self.wait if wait is None else float(wait)


class Client(_Settings):
    """The quorum client over N nodes running the redis-lock module.

    ``Client(nodes, ttl=30, wait=10, ...)``: ``nodes`` is a list of
    ``redis://`` / ``rediss://`` URLs (or one comma-separated string). Every
    other setting is the Rust client's, with its default when omitted (see
    :data:`DEFAULTS`): ``quorum`` (a majority), ``connect_timeout`` (0.1 s),
    ``request_timeout`` (0.05 s, per node and request), ``retry_count``
    (unbounded within ``wait``), ``retry_delay`` (0.05 s), ``retry_jitter``
    (0.1 s), ``drift_factor`` (0.01) and ``drift_fixed`` (0.002 s),
    ``wait`` (10 s), ``max_hold`` (600 s of renewal at most), ``fenced``
    (True: fences increase across the node set), ``server_wait`` (True: wait
    in the nodes' queues rather than polling), ``username``/``password``.
    ``ttl`` is this package's default lease length (30 s).
    """

    def lock(self, key: str, *, ttl: Optional[float] = None, wait: Optional[float] = None) -> "_Lock":
        """A context manager: acquires on entry (waiting up to ``wait``
        seconds in the nodes' queues), renews in the background at a third
        of ``ttl`` while the block runs, releases on exit, also when the
        block raises. If the lock was lost while the block ran (and the
        block raised nothing else), the exit raises :class:`LockLost`."""
        return _Lock(self, key, self._ttl(ttl), self._wait(wait))

    def try_acquire(self, key: str, *, ttl: Optional[float] = None) -> Lease:
        """One round: raises :class:`LockTaken` or :class:`NodesUnavailable`
        at once if no quorum grants. Nothing renews the lease."""
        return Lease(self._native.try_acquire(key, self._ttl(ttl)))

    def acquire(self, key: str, *, ttl: Optional[float] = None, wait: Optional[float] = None) -> Lease:
        """Waits up to ``wait`` seconds for the lock (:class:`LockTimeout`
        after that). Nothing renews the lease: :meth:`extend` it, and
        :meth:`release` it when done."""
        return Lease(self._native.acquire(key, self._ttl(ttl), self._wait(wait)))

    def extend(self, lease: Lease, *, ttl: Optional[float] = None) -> None:
        """Extends a lease acquired by hand to ``ttl`` from now; raises
        :class:`LockLost` (and sets ``lease.lost``) if it is no longer held."""
        if lease._guard is not None:
            raise ConfigurationError("a lease from lock() is renewed in the background")
        try:
            self._native.extend(lease._native, self._ttl(ttl))
        except LockLost:
            lease.lost.set()
            raise

    def release(self, lease: Lease) -> Released:
        """Releases on every node (idempotent); returns once a quorum answered."""
        if lease._guard is not None:
            return lease._guard.release()
        return self._native.release(lease._native)

    def connect(self) -> List[NodeFailure]:
        """Connects to every node now rather than at the first request;
        returns the nodes that failed (raises :class:`NodesUnavailable`
        below a quorum)."""
        return self._native.connect()

    def settle(self, timeout: float = 1.0) -> bool:
        """Waits at most ``timeout`` seconds for requests still finishing in
        the background (the slower nodes of a release, the release of a
        cancelled acquisition). Call it before the process exits."""
        return self._native.settle(timeout)


class _LockBase:
    """What the context managers of Client.lock and AsyncClient.lock share."""

    __slots__ = ("_client", "_key", "_ttl", "_wait", "_lease")

    def __init__(self, client: _Settings, key: str, ttl: float, wait: float) -> None:
        self._client = client
        self._key = key
        self._ttl = ttl
        self._wait = wait
        self._lease: Optional[Lease] = None

    def _release_failed(self, e: LockError) -> None:
        # The lock runs out at its TTL; do not hide the block's own error.
        warnings.warn(f"release of {self._key!r} failed: {e}", RuntimeWarning, stacklevel=3)

    def _lost_while_held(self, lease: Lease, reason: Optional[str], exc_type: Any) -> None:
        if reason is not None and exc_type is None:
            lease.lost.set()
            raise LockLost(
                f"the lock {self._key!r} was lost while held ({reason})", key=self._key, reason=reason
            )


class _Lock(_LockBase):
    """The context manager of :meth:`Client.lock`."""

    __slots__ = ()

    def __enter__(self) -> Lease:
        lost = threading.Event()
        self._lease = Lease(None, self._client._native.lock(self._key, self._ttl, self._wait, lost), lost)
        return self._lease

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        reason = lease._guard.loss()
        try:
            lease._guard.release()
        except LockError as e:
            self._release_failed(e)
        self._lost_while_held(lease, reason, exc_type)


# --- asyncio -----------------------------------------------------------------


def _deliver(fut: "asyncio.Future[Any]", ok: bool, value: Any, undo: Callable[[Any], None]) -> None:
    """On the event loop: hand the outcome to the awaiting coroutine, or
    undo it (release) if that coroutine was cancelled meanwhile."""
    if fut.cancelled():
        if ok:
            undo(value)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _nothing(_: Any) -> None:
    pass


async def _run(start: Callable[..., Any], *args: Any, undo: Callable[[Any], None] = _nothing) -> Any:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(ok: bool, value: Any) -> None:  # on the client's runtime thread
        try:
            loop.call_soon_threadsafe(_deliver, fut, ok, value, undo)
        except RuntimeError:  # the loop is closed: nobody will take it
            if ok:
                undo(value)

    task = start(*args, done)
    try:
        return await fut
    except asyncio.CancelledError:
        task.cancel()  # dropping the client's future releases what it was granted
        raise


class AsyncClient(_Settings):
    """The asyncio twin of :class:`Client` (same settings). Requests run on
    the client's own thread: awaiting never blocks the event loop."""

    def lock(self, key: str, *, ttl: Optional[float] = None, wait: Optional[float] = None) -> "_AsyncLock":
        """``async with client.lock(key, ttl=..., wait=...) as lease:``, as :meth:`Client.lock`."""
        return _AsyncLock(self, key, self._ttl(ttl), self._wait(wait))

    async def try_acquire(self, key: str, *, ttl: Optional[float] = None) -> Lease:
        native = await _run(self._native.try_acquire_async, key, self._ttl(ttl), undo=self._forget)
        return Lease(native)

    async def acquire(self, key: str, *, ttl: Optional[float] = None, wait: Optional[float] = None) -> Lease:
        native = await _run(self._native.acquire_async, key, self._ttl(ttl), self._wait(wait), undo=self._forget)
        return Lease(native)

    async def extend(self, lease: Lease, *, ttl: Optional[float] = None) -> None:
        if lease._guard is not None:
            raise ConfigurationError("a lease from lock() is renewed in the background")
        try:
            await _run(self._native.extend_async, lease._native, self._ttl(ttl))
        except LockLost:
            lease.lost.set()
            raise

    async def release(self, lease: Lease) -> Released:
        if lease._guard is not None:
            return await _release_guard(lease._guard)
        return await _run(self._native.release_async, lease._native)

    async def settle(self, timeout: float = 1.0) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self._native.settle, timeout)

    def _forget(self, native_lease: Any) -> None:
        self._native.release_async(native_lease, lambda ok, value: None)


async def _release_guard(guard: Any) -> Released:
    return await _run(guard.release_async)


class _AsyncLock(_LockBase):
    """The context manager of :meth:`AsyncClient.lock`."""

    __slots__ = ()

    async def __aenter__(self) -> Lease:
        lost = threading.Event()
        guard = await _run(
            self._client._native.lock_async,
            self._key,
            self._ttl,
            self._wait,
            lost,
            undo=lambda guard: guard.abandon(),
        )
        self._lease = Lease(None, guard, lost)
        return self._lease

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        reason = lease._guard.loss()
        try:
            await _release_guard(lease._guard)
        except asyncio.CancelledError:
            lease._guard.abandon()
            raise
        except LockError as e:
            self._release_failed(e)
        self._lost_while_held(lease, reason, exc_type)
