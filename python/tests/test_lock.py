"""redislock_quorum against real nodes: holding, renewal, loss, faults."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import List

import pytest

import redislock_quorum as rq
from redislock_quorum import (
    Client,
    ConfigurationError,
    LockError,
    LockLost,
    LockTaken,
    LockTimeout,
    NodesUnavailable,
)

from conftest import Nodes, wait_until


def test_settings_default_to_the_rust_clients(nodes3: Nodes) -> None:
    c = Client(nodes3.urls)
    cfg = c.config
    assert cfg["quorum"] == 2
    assert cfg["ttl"] == rq.DEFAULT_TTL == 30.0
    for name in ("connect_timeout", "request_timeout", "wait", "max_hold"):
        assert cfg[name] == pytest.approx(rq.DEFAULTS[name])
    assert rq.DEFAULTS["request_timeout"] == pytest.approx(0.05)
    assert rq.DEFAULTS["wait"] == pytest.approx(10.0)
    assert cfg["fenced"] is True and cfg["server_wait"] is True
    c2 = Client(",".join(nodes3.urls), ttl=5, wait=2, request_timeout=0.02, quorum=3, fenced=False)
    cfg2 = c2.config
    assert (cfg2["ttl"], cfg2["wait"], cfg2["request_timeout"], cfg2["quorum"], cfg2["fenced"]) == (
        5.0, 2.0, pytest.approx(0.02), 3, False)


def test_bad_settings_raise_configuration_error_before_anything_is_sent() -> None:
    for make in (
        lambda: Client([]),
        lambda: Client(["redis://127.0.0.1:1"], ttl=0),
        lambda: Client(["redis://127.0.0.1:1"], request_timeout=-1),
        lambda: Client(["not a url"]),
        lambda: Client(["redis://127.0.0.1:1"], quorum=5),
    ):
        with pytest.raises(ConfigurationError) as info:
            make()
        assert isinstance(info.value, ValueError) and isinstance(info.value, LockError)
    c = Client(["redis://127.0.0.1:1"])
    with pytest.raises(ConfigurationError):
        c.try_acquire("", ttl=1)
    with pytest.raises(ConfigurationError):
        c.try_acquire("k", ttl=-1)


def test_exceptions_form_one_hierarchy() -> None:
    for cls in (LockTaken, NodesUnavailable, LockTimeout, LockLost, ConfigurationError):
        assert issubclass(cls, LockError)
    assert issubclass(LockTimeout, TimeoutError)


def test_lock_holds_renews_past_its_ttl_and_releases_on_exit(nodes5: Nodes) -> None:
    holder, other = Client(nodes5.urls), Client(nodes5.urls)
    with holder.lock("jobs:renew", ttl=0.6, wait=1) as lease:
        assert lease.key == "jobs:renew" and lease.fence >= 1
        assert 0 < lease.validity <= 0.6
        time.sleep(1.5)  # two and a half TTLs: only renewal keeps it
        lease.check()
        assert not lease.lost.is_set()
        with pytest.raises(LockTaken) as info:
            other.try_acquire("jobs:renew", ttl=1)
        assert info.value.held_elsewhere >= 3 and info.value.quorum == 3
        fence = lease.fence
    # Released on exit: free at once, with a greater fence.
    again = other.try_acquire("jobs:renew", ttl=1)
    assert again.fence > fence
    other.release(again)


def test_lock_released_when_the_block_raises(nodes3: Nodes) -> None:
    c = Client(nodes3.urls)
    with pytest.raises(ZeroDivisionError):
        with c.lock("jobs:raise", ttl=5):
            1 / 0
    c.release(c.try_acquire("jobs:raise", ttl=1))


def test_acquire_waits_in_the_queue_until_the_holder_releases(nodes5: Nodes) -> None:
    holder, waiter = Client(nodes5.urls), Client(nodes5.urls)
    first = holder.try_acquire("jobs:queue", ttl=10)
    threading.Timer(0.3, holder.release, (first,)).start()
    t = time.monotonic()
    second = waiter.acquire("jobs:queue", ttl=10, wait=5)
    took = time.monotonic() - t
    assert 0.25 < took < 2.0, took  # handed over on release, not at the TTL
    assert second.fence > first.fence
    waiter.release(second)


def test_wait_budget_runs_out_with_lock_timeout(nodes3: Nodes) -> None:
    holder, waiter = Client(nodes3.urls), Client(nodes3.urls)
    held = holder.try_acquire("jobs:busy", ttl=10)
    t = time.monotonic()
    with pytest.raises(LockTimeout) as info:
        waiter.acquire("jobs:busy", ttl=10, wait=0.3)
    assert 0.25 < time.monotonic() - t < 2.0
    assert isinstance(info.value, TimeoutError)
    holder.release(held)


def test_extend_and_release_by_hand_and_loss_on_extend(nodes3: Nodes) -> None:
    c = Client(nodes3.urls)
    lease = c.try_acquire("jobs:hand", ttl=1)
    c.extend(lease, ttl=20)
    assert lease.validity > 15
    released = c.release(lease)
    assert released.held >= 2
    with pytest.raises(LockLost) as info:
        c.extend(lease, ttl=5)
    assert info.value.reason in ("not_held", "expired")
    assert lease.lost.is_set()
    with pytest.raises(LockLost):
        lease.check()


def test_deleting_the_key_on_a_majority_sets_lost_within_one_renewal_period(nodes5: Nodes) -> None:
    c = Client(nodes5.urls)
    ttl = 0.9  # renewed every ttl / 3 = 0.3 s
    with pytest.raises(LockLost) as exit_error:
        with c.lock("jobs:lost", ttl=ttl) as lease:
            for node in nodes5[:3]:
                assert node.conn().delete("jobs:lost") == 1
            t = time.monotonic()
            assert lease.lost.wait(timeout=ttl / 3 + 0.2), "no loss signal within one renewal period"
            assert time.monotonic() - t <= ttl / 3 + 0.2
            with pytest.raises(LockLost) as info:
                lease.check()
            assert info.value.reason == "not_held"
    assert exit_error.value.reason == "not_held"


def test_one_node_down_still_locks_and_a_majority_down_says_why(nodes5: Nodes) -> None:
    c = Client(nodes5.urls)
    nodes5[4].stop()
    nodes5[3].stop()
    with c.lock("jobs:down", ttl=5) as lease:
        assert lease.fence >= 1
    nodes5[2].stop()
    with pytest.raises(NodesUnavailable) as info:
        c.try_acquire("jobs:down", ttl=5)
    e = info.value
    assert (e.answered, e.quorum, e.nodes) == (2, 3, 5)
    assert sorted(f.node for f in e.node_errors) == [2, 3, 4]
    assert all(f.address.startswith("127.0.0.1:") for f in e.node_errors)
    assert all(f.kind in ("connect", "io", "timeout") for f in e.node_errors), e.node_errors
    nodes5[2].start()
    c.release(c.try_acquire("jobs:down", ttl=5))


def test_a_paused_node_does_not_stall_the_rounds(nodes5: Nodes) -> None:
    c = Client(nodes5.urls)
    c.connect()
    nodes5[0].pause()
    try:
        t = time.monotonic()
        for _ in range(5):
            lease = c.try_acquire("jobs:paused", ttl=5)
            c.release(lease)
        per_op = (time.monotonic() - t) / 5
        assert per_op < 0.3, per_op  # bounded by the per-node timeout, not by the node
        with c.lock("jobs:paused", ttl=0.6) as held:
            time.sleep(1.0)  # renewals go on without the paused node
            held.check()
    finally:
        nodes5[0].resume()


def _contend(urls: List[str], key: str, rounds: int, counter_port: int, out) -> None:  # type: ignore[no-untyped-def]
    import redis as redis_py

    client = Client(urls)
    plain = redis_py.Redis(port=counter_port)
    for _ in range(rounds):
        with client.lock(key, ttl=5, wait=30) as lease:
            start = time.monotonic()
            # A read-modify-write that loses updates unless the lock excludes.
            n = int(plain.get("counter") or 0)
            time.sleep(0.005)
            plain.set("counter", n + 1)
            out.put((lease.fence, start, time.monotonic()))


def test_processes_hold_one_at_a_time_with_increasing_fences(nodes5: Nodes, node1) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs, rounds = 4, 6
    workers = [
        ctx.Process(target=_contend, args=(nodes5.urls, "jobs:mp", rounds, node1.port, out))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    spans = [out.get(timeout=60) for _ in range(procs * rounds)]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    spans.sort(key=lambda s: s[1])
    for (f1, _, end1), (f2, start2, _) in zip(spans, spans[1:]):
        assert start2 >= end1, "two holders at once"
        assert f2 > f1, "fences must increase from holder to holder"
    assert int(node1.conn().get("counter")) == procs * rounds


def test_threads_share_one_client(nodes3: Nodes, node1) -> None:  # type: ignore[no-untyped-def]
    c = Client(nodes3.urls)
    plain = node1.conn()
    fences: List[int] = []

    def work() -> None:
        for _ in range(5):
            with c.lock("jobs:threads", ttl=5, wait=30) as lease:
                n = int(plain.get("n") or 0)
                time.sleep(0.002)
                plain.set("n", n + 1)
                fences.append(lease.fence)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert int(plain.get("n")) == 30
    assert fences == sorted(fences) and len(set(fences)) == 30


def test_the_gil_is_released_while_waiting(nodes3: Nodes) -> None:
    holder, waiter = Client(nodes3.urls), Client(nodes3.urls)
    held = holder.try_acquire("jobs:gil", ttl=10)
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.05)
    before = ticks
    with pytest.raises(LockTimeout):
        waiter.acquire("jobs:gil", ttl=10, wait=0.5)
    during = ticks - before
    stop.set()
    t.join()
    holder.release(held)
    # A held GIL would leave the spinning thread a few switch intervals at most.
    assert during > 100_000, during


def test_keyboard_interrupt_during_a_wait_leaves_nothing_held(nodes5: Nodes) -> None:
    holder, waiter, third = Client(nodes5.urls), Client(nodes5.urls), Client(nodes5.urls)
    held = holder.try_acquire("jobs:int", ttl=10)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        waiter.acquire("jobs:int", ttl=10, wait=10)
    assert time.monotonic() - t < 2.0
    # The interrupted waiter's place in the queues is gone ...
    assert wait_until(lambda: nodes5.waiting_clients() == [0] * 5, 1.0), nodes5.waiting_clients()
    holder.release(held)
    assert waiter.settle(2.0)
    # ... so nothing is handed to it, and a newcomer gets the lock at once.
    lease = third.try_acquire("jobs:int", ttl=5)
    third.release(lease)
    assert third.settle(2.0)
    assert nodes5.holders("jobs:int") == [False] * 5


def test_a_release_right_after_an_interrupted_wait_leaves_nothing_held(nodes5: Nodes) -> None:
    # The interrupted call returns only once the client's future is dropped
    # (its waiting connections closed, its releases sent): a release sent
    # after that cannot hand the lock to the interrupted waiter.
    holder, waiter = Client(nodes5.urls), Client(nodes5.urls)
    held = holder.try_acquire("jobs:race", ttl=10)
    for _ in range(10):
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            waiter.acquire("jobs:race", ttl=30, wait=10)
        holder.release(held)  # at once: the race window
        assert waiter.settle(2.0) and holder.settle(2.0)
        assert wait_until(lambda: not any(nodes5.holders("jobs:race")), 1.0), nodes5.holders("jobs:race")
        held = holder.try_acquire("jobs:race", ttl=10)
