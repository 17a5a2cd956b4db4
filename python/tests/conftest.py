"""Real nodes for the tests: redis-server with the module, as the Rust tests
start them (testkit): free ports, a temp dir with the log, no persistence,
a bounded readiness wait, killed at the end; the logs are printed when a
test fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
MODULE = os.environ.get("REDIS_LOCK_MODULE") or str(ROOT / "target" / "debug" / "libredis_lock.so")
SERVER = os.environ.get("REDIS_SERVER") or "redis-server"
READY_WITHIN = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One redis-server with the module loaded."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "server.log"
        self.proc: "subprocess.Popen[bytes] | None" = None
        self.port = 0
        for _ in range(3):  # another process may take the free port first
            self.port = free_port()
            if self._spawn():
                return
        raise RuntimeError(f"redis-server did not start; log:\n{self.log_text()}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def conn(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def _spawn(self) -> bool:
        self.proc = subprocess.Popen(
            [
                SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--logfile", str(self.log), "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--enable-debug-command", "yes",
                "--loadmodule", MODULE, "rejoin-delay-ms", "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.conn().ping():
                    return True
            except redis.RedisError:
                time.sleep(0.02)
        self.kill()
        return False

    def start(self) -> None:
        """Starts again on the same port (after stop)."""
        if not self._spawn():
            raise RuntimeError(f"redis-server did not restart; log:\n{self.log_text()}")

    def stop(self) -> None:
        self.kill()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"


class Nodes(List[Node]):
    @property
    def urls(self) -> List[str]:
        return [n.url for n in self]

    def waiting_clients(self) -> List[int]:
        """Clients blocked in a command (LOCK.ACQUIRE ... WAIT), per node."""
        return [sum("b" in c["flags"] for c in n.conn().client_list()) for n in self]

    def holders(self, key: str) -> List[bool]:
        return [n.conn().execute_command("LOCK.INFO", key) is not None for n in self]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.failed_call = report.failed


def _nodes(n: int, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Nodes]:
    if not Path(MODULE).is_file():
        pytest.fail(f"the module is not built: {MODULE} (cargo build -p redis-lock)")
    nodes = Nodes()
    try:
        for i in range(n):
            nodes.append(Node(tmp_path / f"node{i}"))
        yield nodes
    finally:
        for node in nodes:
            node.kill()
        if getattr(request.node, "failed_call", False):
            for node in nodes:
                print(f"---- node on port {node.port} log ----\n{node.log_text()}")


@pytest.fixture
def nodes5(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Nodes]:
    yield from _nodes(5, tmp_path, request)


@pytest.fixture
def nodes3(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Nodes]:
    yield from _nodes(3, tmp_path, request)


@pytest.fixture
def node1(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    nodes = _nodes(1, tmp_path, request)
    try:
        yield next(nodes)[0]
    finally:
        nodes.close()


def wait_until(condition, within: float, step: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    """Polls ``condition`` until it holds or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
