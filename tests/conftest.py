"""Shared fixtures: a key ring made once per run, real brokers on loopback, clients that get closed.

Every wait has a timeout; every socket is closed with linger 0 (ChatClient
does that itself; `raw_dealer` below for hand-made sockets).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pexpect
import pytest
import zmq

from harness.dealer import client_dealer
from harness.keys import make_key
from harness.process import ROOT, BrokerProcess
from zchat import crypto
from zchat.client.session import ClientSession
from zchat.client.sync_client import ChatClient
from zchat.events import Event, Welcome
from zchat.keystore import KeyLayout

TEST_KEY_BITS = 2048
REGISTERED = ("alice", "bob", "carol", "admin")
# Fast heartbeats so liveness tests finish quickly.
TEST_CONFIG: dict[str, Any] = {
    "server_ip": "127.0.0.1",
    "server_port": 0,
    "admins": ["admin"],
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 3.0,
    "presence_interval": 0.05,  # joins and leaves still batched, without making every test wait for them
    "workers": 1,  # one crypto worker process: enough for a test, and quicker to start (worker tests set their own)
}
WAIT = 10.0  # default upper bound for any expected event


@dataclass
class KeyRing:
    """Keys generated once per test run: the broker, registered users, and an outsider."""

    root: Path
    keys: dict[str, crypto.PrivateKey] = field(default_factory=dict)

    @property
    def layout(self) -> KeyLayout:
        return KeyLayout(self.root)

    def private(self, name: str) -> Path:
        return self.layout.client_private(name)


@pytest.fixture(scope="session")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    ring = KeyRing(tmp_path_factory.mktemp("keyring"))
    ring.keys["broker"] = make_key(ring.layout, None, TEST_KEY_BITS)
    for name in (*REGISTERED, "mallory"):  # mallory has a key but is not registered
        ring.keys[name] = make_key(ring.layout, name, TEST_KEY_BITS, registered=name != "mallory")
    ring.layout.clients_dir.mkdir(exist_ok=True)
    return ring


B = TypeVar("B", bound=BrokerProcess)
T = TypeVar("T")


def broker_in(workdir: Path, keyring: KeyRing, overrides: dict[str, Any], kind: type[B]) -> B:
    """A broker (not started) in a new `workdir`, with a private copy of the key ring and TEST_CONFIG plus
    `overrides`."""
    workdir.mkdir()
    shutil.copytree(keyring.root, workdir / "keys")
    return kind(workdir, {**TEST_CONFIG, **overrides, "keys_dir": "keys"})


def broker_config(workdir: Path, keyring: KeyRing, **overrides: Any) -> Path:
    """`workdir` with a private copy of the key ring and a config.json of TEST_CONFIG plus `overrides`, for a
    broker a test starts itself: the config file."""
    shutil.copytree(keyring.root, workdir / "keys")
    config = workdir / "config.json"
    config.write_text(json.dumps({**TEST_CONFIG, **overrides, "keys_dir": "keys"}))
    return config


def broker_on_terminal(config: Path, cwd: Path) -> pexpect.spawn:
    """broker.py on a pseudo-terminal, as an operator runs it (supervised, with its console)."""
    return pexpect.spawn(
        sys.executable,
        [str(ROOT / "broker.py"), "--config", str(config)],
        cwd=str(cwd),
        env=run_env(),
        encoding="utf-8",
        timeout=WAIT,
    )


@pytest.fixture
def make_broker(tmp_path: Path, keyring: KeyRing) -> Iterator[Callable[..., BrokerProcess]]:
    """Start brokers with a private copy of the key ring; all are killed at teardown."""
    started: list[BrokerProcess] = []

    def factory(**overrides: Any) -> BrokerProcess:
        broker = broker_in(tmp_path / f"broker{len(started)}", keyring, overrides, BrokerProcess)
        started.append(broker)
        return broker.start()

    yield factory
    for broker in started:
        broker.kill()
    for broker in started:  # the safety net in broker.py must never have caught anything
        assert "internal error" not in broker.log(), broker.log()


@pytest.fixture
def broker(make_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    return make_broker()


@pytest.fixture
def connect(keyring: KeyRing) -> Iterator[Callable[..., ChatClient]]:
    """Log a user in to a broker through the real client session; every client is closed at teardown."""
    clients: list[ChatClient] = []

    def factory(broker: BrokerProcess, name: str, **kwargs: Any) -> ChatClient:
        kwargs.setdefault("connect_timeout", 5.0)
        key_path = kwargs.pop("key_path", broker.keys.client_private(name))
        broker_key_path = kwargs.pop("broker_key_path", broker.keys.broker_public)
        client = ChatClient.connect("127.0.0.1", broker.port, name, key_path, broker_key_path, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close(say_bye=False)


def wait_for(client: ChatClient, predicate: Callable[[Event], bool], timeout: float = WAIT) -> Event:
    """The first event matching `predicate` within `timeout`; fails listing what arrived instead."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = client.receive(timeout=deadline - time.monotonic())
        if event is None:
            break
        if predicate(event):
            return event
        seen.append(event)
    raise AssertionError(f"{client.name}: no matching event within {timeout}s; got {seen!r}")


def pump(clients: list[ChatClient], seconds: float) -> dict[str, list[Event]]:
    """Poll every client for `seconds`: the events each one got."""
    got: dict[str, list[Event]] = {client.name: [] for client in clients}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for client in clients:
            client.poll(0.005)
            got[client.name] += client.drain()
    return got


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """The first true value of `condition()` within `timeout`; fails naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def collect(client: ChatClient, duration: float) -> list[Event]:
    """Every event that arrives within `duration` seconds (for asserting that something does NOT arrive)."""
    events: list[Event] = []
    deadline = time.monotonic() + duration
    while (remaining := deadline - time.monotonic()) > 0:
        event = client.receive(timeout=remaining)
        if event is not None:
            events.append(event)
    return events


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def raw_dealer(
    zmq_context: zmq.Context[zmq.Socket[bytes]], keyring: KeyRing
) -> Iterator[Callable[..., zmq.Socket[bytes]]]:
    """A bare DEALER connected to a broker over CurveZMQ as a registered user (alice unless told), for sending
    hand-made frames."""
    sockets: list[zmq.Socket[bytes]] = []

    def factory(broker: BrokerProcess, name: str = "alice") -> zmq.Socket[bytes]:
        secret = crypto.curve_secret(keyring.keys[name])
        sock = client_dealer(zmq_context, broker.endpoint, secret, broker.curve_key, receive_timeout_ms=3000)
        sockets.append(sock)
        return sock

    yield factory
    for sock in sockets:
        sock.close(linger=0)


CHECKOUT_FILES = ("Makefile", "requirements.txt", "requirements-dev.txt", "broker.py", "chat_client.py")


def shipped_config() -> bytes:
    """config.json as committed: the working tree's copy is the user's to edit (another port, say)."""
    shown = subprocess.run(["git", "show", "HEAD:config.json"], cwd=ROOT, capture_output=True, timeout=30, check=False)
    return shown.stdout if shown.returncode == 0 else (ROOT / "config.json").read_bytes()  # not a git checkout


def copy_checkout(dest: Path, *, packages: tuple[str, ...] = (), venv: bool = True) -> Path:
    """What a fresh clone holds for `make broker|client|keys`: the files, config.json as shipped, zchat/ (its
    crypto link kept) and crypto/, plus `packages`; with `venv`, the project's .venv linked in (nothing is
    installed)."""
    dest.mkdir(parents=True)
    for name in CHECKOUT_FILES:
        shutil.copy2(ROOT / name, dest / name)  # copy2 keeps mtimes, so the install stamp stays up to date
    (dest / "config.json").write_bytes(shipped_config())
    for package in ("zchat", "crypto", *packages):
        shutil.copytree(ROOT / package, dest / package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    if venv:
        (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def run_env() -> dict[str, str]:
    """Environment for child processes: the project importable, no passphrase leaking in."""
    env = {k: v for k, v in os.environ.items() if k != "PASSPHRASE"}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def raw_login(
    sock: zmq.Socket[bytes], name: str, keyring: KeyRing, broker: BrokerProcess
) -> tuple[ClientSession, list[list[bytes]]]:
    """Log in over a bare DEALER; returns the session and the frames we sent (for replay tests)."""
    session = ClientSession(name, keyring.keys[name], crypto.load_public_key(broker.keys.broker_public))
    sent = [session.hello()]
    sock.send_multipart(sent[0])
    _, reply = session.receive(sock.recv_multipart())
    assert reply is not None
    sent.append(reply)
    sock.send_multipart(reply)
    events: list[Event] = []
    while not events:  # a PING may come first
        events, _ = session.receive(sock.recv_multipart())
    assert isinstance(events[0], Welcome)
    return session, sent
