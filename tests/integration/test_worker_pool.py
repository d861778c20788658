"""WorkerPool driven directly, with real worker processes: order over many batches, a hung worker, the restart limit."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from tests.conftest import KeyRing
from zchat import crypto
from zchat import protocol as p
from zchat.broker import workers
from zchat.broker.work import DeliveryJob, Job, Opened, OpenJob, Outgoing, Result
from zchat.broker.workers import WorkerPool
from zchat.errors import WorkerError
from zchat.protocol import events as wire

DELIVERY_KEY = secrets.token_bytes(p.DELIVERY_KEY_BYTES)
SESSION = "s-pool-test"


@pytest.fixture
def make_pool(keyring: KeyRing, zmq_context: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[[int], WorkerPool]]:
    pools: list[WorkerPool] = []

    def factory(count: int) -> WorkerPool:
        pool = WorkerPool(count, keyring.keys["broker"], zmq_context, deliverable=lambda identity: True)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        pool.close()


def delivery(keyring: KeyRing, name: str, seq: int) -> DeliveryJob:
    key_der = crypto.public_key_to_der(keyring.keys[name])
    return DeliveryJob(name.encode(), key_der, DELIVERY_KEY, SESSION, seq, {"type": "notice", "text": f"n{seq}"})


def seq_of(keyring: KeyRing, result: Result) -> int:
    """Open a sealed delivery as its recipient would and read its sequence number."""
    assert isinstance(result, Outgoing)
    command, body = p.decode_frames(result.frames, {p.EVENT}, 1 << 20)
    plaintext = crypto.open_envelope(keyring.keys[result.identity.decode()], body, p.context(command))
    return wire.Delivery.open(plaintext, DELIVERY_KEY).seq


def run_until(pool: WorkerPool, count: int, timeout: float = 30.0) -> list[Result]:
    """Turn the pool as the broker loop does until `count` results came back."""
    results: list[Result] = []
    deadline = time.monotonic() + timeout
    while len(results) < count and time.monotonic() < deadline:
        pool.check()
        pool.socket.poll(50)
        results += pool.collect()
    return results


@pytest.mark.slow
def test_results_come_back_in_order_across_many_batches(keyring, make_pool):
    """Deliveries in the order submitted, opened envelopes likewise (deliveries go first, so the two interleave
    differently than submitted)."""
    pool = make_pool(2)
    jobs: list[Job] = []
    for seq in range(1, 121):
        jobs.append(delivery(keyring, "alice" if seq % 2 else "bob", seq))
        if seq % 10 == 0:
            body = crypto.seal(keyring.keys["broker"].public_key(), f"open {seq}".encode(), p.context(p.SEND))
            jobs.append(OpenJob(b"carol", p.SEND, body))
    pool.submit(jobs)
    results = run_until(pool, len(jobs))
    assert len(results) == len(jobs)
    assert [seq_of(keyring, r) for r in results if isinstance(r, Outgoing)] == list(range(1, 121))
    opened = [r.plaintext for r in results if isinstance(r, Opened)]
    assert opened == [f"open {seq}".encode() for seq in range(10, 121, 10)]
    assert pool.idle()


def test_a_hung_worker_is_killed_and_its_batches_done_by_its_replacement(keyring, make_pool, monkeypatch):
    monkeypatch.setattr(workers, "BATCH_TIMEOUT", 1.0)
    pool = make_pool(1)
    hung = pool.workers[0].process
    pool.submit([delivery(keyring, "alice", seq) for seq in range(1, 41)])
    time.sleep(0.01)
    os.kill(hung.pid, signal.SIGSTOP)  # alive, maybe in the middle of a batch, holds its batches, never answers
    results = run_until(pool, 40)
    assert [seq_of(keyring, r) for r in results] == list(range(1, 41))  # nothing lost, nothing twice
    assert hung.returncode == -signal.SIGKILL
    assert pool.workers[0].process.pid != hung.pid
    assert pool.idle()


@pytest.mark.slow
def test_a_replacement_that_never_gets_ready_is_replaced_in_turn(keyring, make_pool, monkeypatch):
    pool = make_pool(1)
    monkeypatch.setattr(workers, "START_TIMEOUT", 1.0)
    real_start = pool._start
    mute: list[subprocess.Popen[bytes]] = []

    def start_a_mute_one_first(index: int) -> workers.Worker:
        if mute:
            return real_start(index)
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # never says ready
        mute.append(process)
        return workers.Worker(index, f"w{index}".encode(), process, time.monotonic())

    monkeypatch.setattr(pool, "_start", start_a_mute_one_first)
    first = pool.workers[0].process
    first.kill()
    first.wait()
    pool.submit([delivery(keyring, "alice", seq) for seq in range(1, 11)])
    results = run_until(pool, 10)
    assert [seq_of(keyring, r) for r in results] == list(range(1, 11))
    assert mute[0].returncode == -signal.SIGKILL


def test_workers_that_keep_dying_stop_the_pool(keyring, make_pool, monkeypatch):
    monkeypatch.setattr(workers, "MAX_RESTARTS", 1)
    monkeypatch.setattr(workers, "CHECK_INTERVAL", 0.0)
    pool = make_pool(1)
    first = pool.workers[0].process
    first.kill()
    first.wait()
    pool.check()  # the first exit: restarted
    second = pool.workers[0].process
    assert second.pid != first.pid
    second.kill()
    second.wait()
    with pytest.raises(WorkerError, match="exited 2 times"):
        pool.check()
