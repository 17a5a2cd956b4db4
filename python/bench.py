"""Acquire+release latency on 5 local nodes, in one run: redislock_quorum
(this package) against the Rust client it wraps, pottery's Redlock and
python-redis-lock. Run by `make bench-python` (scripts/python.sh bench),
which builds everything in release mode first.

    python python/bench.py [iterations]     (default 2000 per client)

The nodes are started here (python/tests/conftest.py's Node: free ports, a
temp dir, killed at the end) and every client runs on the same ones, in
interleaved rounds so that drift of the machine's speed hits all alike.
python-redis-lock is a single-instance lock: it runs on the first node only
(no quorum), as the floor of what one round trip costs from Python.
Absolute numbers drift between runs and machines: compare the ratios.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "tests"))

import redis  # noqa: E402

from conftest import Node  # noqa: E402
from redislock_quorum import Client  # noqa: E402

ROUNDS = 5
TTL = 10.0


def quantile(samples: List[float], q: float) -> float:
    s = sorted(samples)
    return s[round((len(s) - 1) * q)] if s else float("nan")


def timed(op: Callable[[], None], n: int, out: List[float]) -> None:
    for _ in range(n):
        t = time.perf_counter()
        op()
        out.append((time.perf_counter() - t) * 1e6)


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    per_round = max(1, iterations // ROUNDS)
    rust_bench = os.environ.get("RUST_BENCH", "target/release/examples/bench_nodes")
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [Node(Path(tmp) / f"node{i}") for i in range(5)]
        try:
            urls = [n.url for n in nodes]
            ours = Client(urls, ttl=TTL)
            ours.connect()

            def ours_hand() -> None:
                ours.release(ours.try_acquire("bench:py", ttl=TTL))

            def ours_with() -> None:
                with ours.lock("bench:pywith", ttl=TTL, wait=0):
                    pass

            from pottery import Redlock

            masters = {redis.Redis(host="127.0.0.1", port=n.port) for n in nodes}

            def pottery_op() -> None:
                lock = Redlock(key="bench:pottery", masters=masters, auto_release_time=TTL)
                if not lock.acquire(blocking=False):
                    raise RuntimeError("pottery: not acquired")
                lock.release()

            import redis_lock

            single = redis.Redis(host="127.0.0.1", port=nodes[0].port)

            def python_redis_lock_op() -> None:
                lock = redis_lock.Lock(single, "bench:prl", expire=int(TTL))
                if not lock.acquire(blocking=False):
                    raise RuntimeError("python-redis-lock: not acquired")
                lock.release()

            python_ops: Dict[str, Callable[[], None]] = {
                "redislock_quorum try_acquire+release": ours_hand,
                "redislock_quorum with client.lock()": ours_with,
                "pottery Redlock": pottery_op,
                "python-redis-lock (1 node)": python_redis_lock_op,
            }
            samples: Dict[str, List[float]] = {name: [] for name in python_ops}
            samples["Rust client (tokio, current-thread)"] = []
            for op in python_ops.values():  # warm up
                timed(op, 100, [])
            for _ in range(ROUNDS):
                for name, op in python_ops.items():
                    timed(op, per_round, samples[name])
                out = subprocess.run(
                    [rust_bench, str(per_round), "bench:rs", *urls],
                    check=True, capture_output=True, text=True,
                ).stdout
                samples["Rust client (tokio, current-thread)"] += [float(x) for x in out.split()]
        finally:
            for n in nodes:
                n.kill()

    rust_p50 = quantile(samples["Rust client (tokio, current-thread)"], 0.5)
    pottery_p50 = quantile(samples["pottery Redlock"], 0.5)
    print(f"acquire+release on 5 local nodes (redis-server {redis_version()}), "
          f"{ROUNDS} interleaved rounds, {per_round * ROUNDS} samples each, TTL {TTL:.0f} s")
    print(f"{'client':42} {'p50 µs':>9} {'p99 µs':>9} {'p50 / Rust':>11} {'pottery / p50':>14}")
    for name, s in samples.items():
        p50, p99 = quantile(s, 0.5), quantile(s, 0.99)
        print(f"{name:42} {p50:9.0f} {p99:9.0f} {p50 / rust_p50:10.2f}x {pottery_p50 / p50:13.1f}x")


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split()[2].removeprefix("v=") if out else "?"


if __name__ == "__main__":
    main()
