"""The broker's crypto worker processes, on a real broker: order, bursts, a worker dying, the one-process mode."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
import zmq

from harness.procfs import child_pids, running
from tests.conftest import BrokerProcess, raw_login, wait_for
from zchat import protocol as p
from zchat.client.session import ClientSession
from zchat.client.sync_client import ChatClient
from zchat.events import ChatMessage, ConnectionLost, Joined


def worker_pids(broker: BrokerProcess) -> list[int]:
    assert broker.proc is not None
    return child_pids(broker.proc.pid)


def test_the_broker_runs_the_configured_number_of_workers(make_broker):
    broker = make_broker(workers=3)
    assert "crypto: 3 worker processes" in broker.log()
    pids = worker_pids(broker)
    assert len(pids) == 3
    for pid in pids:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"zchat.broker.workers" in command
        assert b"PRIVATE" not in command  # the key goes down a pipe, not onto a command line
        (endpoint,) = [arg.decode() for arg in command.split(b"\0") if arg.startswith(b"ipc://")]
        directory = Path(endpoint.removeprefix("ipc://")).parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # only the broker's user can reach the workers
    assert broker.terminate() == 0
    assert not directory.exists()
    assert not any(running(pid) for pid in pids)


def test_one_process_broker_without_workers(make_broker, connect):
    broker = make_broker(workers=0)
    assert "crypto: in the broker's own loop" in broker.log()
    assert worker_pids(broker) == []
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "alice")
    for i in range(5):
        alice.send(f"m{i}")
    texts = [wait_for(bob, lambda e: isinstance(e, ChatMessage)).text for _ in range(5)]
    assert texts == [f"m{i}" for i in range(5)]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_nothing_is_lost(make_broker, connect):
    broker = make_broker(workers=2, messages_per_second_per_user=1000, heartbeat_timeout=30)
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "alice")
    for i in range(20):
        alice.send(f"before {i}")
    os.kill(worker_pids(broker)[0], signal.SIGKILL)
    for i in range(20):
        alice.send(f"after {i}")
    expected = [f"before {i}" for i in range(20)] + [f"after {i}" for i in range(20)]
    received = [wait_for(bob, lambda e: isinstance(e, ChatMessage), timeout=30).text for _ in expected]
    assert received == expected
    broker.wait_for_log("crypto worker 0 exited .* restarting it")
    assert len(worker_pids(broker)) == 2
    assert broker.alive()


class Burst:
    """Raw senders that fire prepared messages all at once, and bob (a real client) who reads them."""

    def __init__(self, bob: ChatClient) -> None:
        self.bob = bob
        self.senders: list[tuple[str, zmq.Socket[bytes], ClientSession]] = []
        self.received: dict[str, list[str]] = {}
        self.lost_connection: list[ConnectionLost] = []
        self.refused: list[bytes] = []

    def bob_reads(self, timeout: float) -> None:
        self.bob.poll(timeout)  # an in-process client heartbeats while it is polled
        for event in self.bob.drain():
            if isinstance(event, ChatMessage):
                self.received.setdefault(event.sender, []).append(event.text)
            elif isinstance(event, ConnectionLost):
                self.lost_connection.append(event)

    def senders_stay_alive(self) -> None:
        for _, sock, session in self.senders:
            sock.send_multipart(session.ping())
            while sock.poll(0):
                command = sock.recv_multipart()[1]
                if command in (p.EVICTED, p.REFUSED):
                    self.refused.append(command)

    def prepare(self, count: int) -> list[tuple[zmq.Socket[bytes], list[list[bytes]]]]:
        """`count` messages per sender, signed and sealed now; everyone stays alive meanwhile (it takes a while)."""
        burst = []
        for name, sock, session in self.senders:
            self.received[name] = []
            frames = []
            for i in range(count):
                frames.append(session.say(f"{name} {i}", message_id=p.new_message_id()))
                if i % 20 == 0:
                    self.bob_reads(0)
                    self.senders_stay_alive()
            burst.append((sock, frames))
        return burst

    def fire(self, burst: list[tuple[zmq.Socket[bytes], list[list[bytes]]]], total: int) -> float:
        """Send everything from a thread of its own while bob reads; the seconds until bob had all `total`."""
        stop = threading.Event()

        def raw_senders() -> None:  # from now on the senders' sockets belong to this thread
            for sock, frames in burst:
                for message in frames:
                    sock.send_multipart(message)
            while not stop.wait(0.1):
                self.senders_stay_alive()

        thread = threading.Thread(target=raw_senders)
        started = time.monotonic()
        thread.start()
        try:
            deadline = time.monotonic() + 120
            while sum(map(len, self.received.values())) < total and time.monotonic() < deadline:
                self.bob_reads(0.05)
            return time.monotonic() - started
        finally:
            stop.set()
            thread.join()


@pytest.mark.slow
def test_a_burst_beyond_capacity_is_worked_off_in_order_without_stalling_heartbeats(
    make_broker, connect, keyring, raw_dealer
):
    """Three senders fire 800 messages each at once: about four seconds of the broker's crypto on a quiet machine
    (2,400 opens, 7,200 seals), and more on a busy one: longer than the 2 s heartbeat timeout, as measured. Every
    message reaches bob, in each sender's order, and nobody times out on either side.

    A loop turn that reads a thousand frames and hands out a thousand results can take a second on a machine whose
    cores are busy with other work: the broker counts silence only up to the last time it had read everything."""
    count, timeout = 800, 2.0
    broker = make_broker(
        workers=2,
        heartbeat_interval=0.2,
        heartbeat_timeout=timeout,
        messages_per_second_per_user=1e6,
        send_queue_limit=4 * count,  # the senders never read: each has the others' 1,600 messages waiting
    )
    burst = Burst(connect(broker, "bob"))
    for name in ("alice", "carol", "admin"):
        sock = raw_dealer(broker, name)
        session, _ = raw_login(sock, name, keyring, broker)
        burst.senders.append((name, sock, session))
        wait_for(burst.bob, lambda e, name=name: isinstance(e, Joined) and e.user.name == name)
    took = burst.fire(burst.prepare(count), count * len(burst.senders))
    received, lost_connection, refused = burst.received, burst.lost_connection, burst.refused
    assert took > timeout, f"the burst took {took:.1f} s, no longer than the heartbeat timeout"
    for name, texts in received.items():
        assert texts == [f"{name} {i}" for i in range(count)]
    assert not lost_connection
    assert not refused
    assert "timed out" not in broker.log()
    assert "too slow" not in broker.log()


@pytest.mark.slow
def test_workers_exit_when_the_broker_is_killed(make_broker):
    broker = make_broker(workers=2)
    pids = worker_pids(broker)
    broker.kill()  # SIGKILL: the broker cannot stop them itself
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(pid) for pid in pids)
