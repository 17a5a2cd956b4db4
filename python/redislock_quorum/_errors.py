"""The exceptions of redislock_quorum: one hierarchy under LockError."""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional


class NodeFailure(NamedTuple):
    """Why one node did not give a usable answer in a round."""

    node: int
    """The node's position in the list given to Client."""
    address: str
    """host:port of the node (never its credentials)."""
    kind: str
    """connect, timeout, auth, module_not_loaded, server, protocol or io."""
    code: Optional[str]
    """The server's error code (ERR, WRONGTYPE, ...) when it sent one."""
    message: str


class LockError(Exception):
    """Base of every error raised by redislock_quorum."""

    key: Optional[str] = None
    node_errors: List[NodeFailure]

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.node_errors = []
        for name, value in details.items():
            setattr(self, name, value)


class LockTaken(LockError):
    """Another holder has the lock: enough nodes refused that a quorum was out of reach.

    ``held_elsewhere`` nodes said another token holds it; ``granted`` nodes
    granted it to us and were released again at once.
    """

    held_elsewhere: int = 0
    granted: int = 0
    quorum: int = 0
    nodes: int = 0


class NodesUnavailable(LockError):
    """Too few nodes answered to make up a quorum; ``node_errors`` says why,
    node by node. ``retry_after`` (seconds) is set when the nodes are up but
    refuse new grants for a while (TRYAGAIN: their rejoin or promotion delay)."""

    retry_after: Optional[float] = None
    answered: int = 0
    quorum: int = 0
    nodes: int = 0


class LockTimeout(LockError, TimeoutError):
    """The wait budget ran out (``last`` is the error of the last round), or a
    round took so long that no validity was left."""

    waited: float = 0.0
    attempts: int = 0
    last: Optional[LockError] = None


class LockLost(LockError):
    """The lock is no longer held: ``reason`` is ``expired`` (the validity ran
    out before a renewal reached a quorum), ``not_held`` (a quorum no longer
    holds it for this token), ``max_hold`` or ``hold_limit``."""

    reason: str = "expired"


class ConfigurationError(LockError, ValueError):
    """A setting or an argument was rejected; nothing was sent."""
