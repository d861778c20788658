"""Fuzz targets: each takes arbitrary bytes and must either succeed or raise an expected, named error.

Anything else (an IndexError, a KeyError, a crash in the broker core) is a bug.
The same targets run under atheris (`make fuzz`) and, briefly, in the test suite.

`tcp` is different: it writes the bytes to a real broker process's TCP port and
raises `BrokerDied` when that broker stops or logs a traceback.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import re
import socket
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from attack.zmtp import SIGNATURE, greeting, ready
from harness.process import BrokerProcess
from zchat import crypto
from zchat import protocol as p
from zchat.broker.core import BrokerCore
from zchat.broker.registered import read_keys
from zchat.broker.sqlite_store import SQLiteStore
from zchat.broker.work import JobRunner, run_inline
from zchat.client.session import ClientSession
from zchat.config import Config
from zchat.errors import ConnectError, RemoteProtocolError
from zchat.keystore import KeyLayout, Registry, write_private_key, write_public_key
from zchat.protocol import events as wire

EXPECTED = (RemoteProtocolError, crypto.CryptoError)


def split_frames(data: bytes) -> list[bytes]:
    """Cut fuzz input into frames at a separator that random data hits often enough."""
    return data.split(b"\xff\xfe")


@cache
def _world() -> tuple[crypto.PrivateKey, crypto.PrivateKey, BrokerCore, Path]:
    root = Path(tempfile.mkdtemp(prefix="zchat-fuzz-"))
    layout = KeyLayout(root)
    broker_key = crypto.generate_private_key(2048)
    alice_key = crypto.generate_private_key(2048)
    write_private_key(layout.broker_private, broker_key)
    write_public_key(layout.broker_public, broker_key)
    write_public_key(layout.client_public("alice"), alice_key)
    store = SQLiteStore.open(":memory:", broker_key, now=0.0)
    config = Config("127.0.0.1", 0, keys_dir=root)
    core = BrokerCore(broker_key.public_key(), read_keys(Registry(layout)), config, store, wall=0.0)
    return broker_key, alice_key, core, root


def frames_and_documents(data: bytes) -> None:
    """Frame checks and every JSON document decoder."""
    for allowed in (p.CLIENT_COMMANDS, p.BROKER_COMMANDS):
        with contextlib.suppress(RemoteProtocolError):
            p.decode_frames(split_frames(data), allowed, p.max_body_bytes(p.DEFAULT_MAX_TEXT_BYTES))
    for decode in (p.Hello.decode, p.Challenge.decode, p.Login.decode, lambda d: wire.Delivery.open(d, bytes(32))):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)
    with contextlib.suppress(RemoteProtocolError):
        p.Statement.parse(data.decode("utf-8", errors="replace"))
    with contextlib.suppress(RemoteProtocolError):
        p.SignedStatement.from_doc(p.load_doc(data), p.DEFAULT_MAX_TEXT_BYTES)


def envelope(data: bytes) -> None:
    """Opening an envelope: only CryptoError may come out."""
    broker_key, _, _, _ = _world()
    with contextlib.suppress(crypto.CryptoError):
        crypto.open_envelope(broker_key, data, p.context(p.HELLO))


def broker(data: bytes) -> None:
    """The broker core never raises on peer input, whatever the frames and the sender's state."""
    broker_key, _, core, _ = _world()
    runner = JobRunner(broker_key)
    frames = split_frames(data)
    run_inline(core, runner, core.receive(b"unauthenticated", frames, now=1.0, source="198.51.100.7"), 1.0)
    # With a real envelope body too, so the checks behind the crypto get exercised.
    if len(frames) >= 2:
        body = crypto.seal(broker_key, frames[-1], p.context(p.HELLO))
        hello = core.receive(b"hello-sender", [p.MARKER, p.HELLO, body], now=1.0, source="198.51.100.8")
        run_inline(core, runner, hello, 1.0)
        login = [p.MARKER, p.LOGIN, crypto.seal(broker_key, frames[-1], p.context(p.LOGIN))]
        run_inline(core, runner, core.receive(b"hello-sender", login, 1.0), 1.0)


def client(data: bytes) -> None:
    """The client session rejects any broker frame with a named error."""
    broker_key, alice_key, _, _ = _world()
    for body in (data, crypto.seal(alice_key, data, p.context(p.CHALLENGE))):
        session = ClientSession("alice", alice_key, broker_key)
        session.hello()
        with contextlib.suppress(RemoteProtocolError, ConnectError):
            session.receive([p.MARKER, p.CHALLENGE, body])


# ------------------------------------------------------------ raw bytes on a real broker's port


class BrokerDied(Exception):
    """The broker process behind the `tcp` target stopped, logged a traceback or stopped accepting: a finding."""


# The first input byte picks what goes before the rest: nothing, a NULL greeting and READY, a CURVE greeting,
# or the greeting's signature and version only (the input goes on with the mechanism).
TCP_PREFIXES = (b"", greeting(b"NULL") + ready(), greeting(b"CURVE"), SIGNATURE + b"\x03\x00")
_BAD_LOG_LINES = re.compile(r"Traceback|internal error|Assertion failed")


class WatchedBroker(BrokerProcess):
    """broker.py under `_WATCHDOG`, which stops it when the fuzzer goes away: libFuzzer ends the process without
    running Python's atexit handlers. `proc` is the watchdog; its exit status is the broker's (128 + N for
    signal N)."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", _WATCHDOG, *super().command()]


@dataclass
class _TcpBroker:
    broker: WatchedBroker
    log_offset: int = 0
    recent: collections.deque[bytes] = field(default_factory=lambda: collections.deque(maxlen=3))

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The watchdog (`_stop` it to stop the broker)."""
        return self.broker.running_proc

    def check(self) -> None:
        """Raise BrokerDied if the broker stopped or logged something it never should."""
        status = self.broker.running_proc.poll()
        with self.broker.log_path.open("rb") as log:
            log.seek(self.log_offset)
            added = log.read().decode("utf-8", "replace")
        self.log_offset += len(added.encode())
        bad = _BAD_LOG_LINES.search(added)
        if status is None and bad is None:
            return
        # The broker handles a connection after we close it: the input to blame may be one of the last few.
        inputs = ", ".join(data[:200].hex() for data in self.recent)
        why = f"stopped (exit status {status})" if status is not None else f"logged {bad.group(0) if bad else ''!r}"
        raise BrokerDied(f"the broker {why}; last inputs (hex): {inputs}\n--- broker log:\n{added[-4000:]}")


_WATCHDOG = """
import os, signal, subprocess, sys, time
parent = os.getppid()
broker = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
signal.signal(signal.SIGTERM, lambda *_: broker.kill())
while broker.poll() is None and os.getppid() == parent:
    time.sleep(0.1)
if broker.poll() is None:
    broker.kill()
code = broker.wait()
sys.exit(128 - code if code < 0 else code)
"""


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the watchdog, which stops the broker."""
    if process.poll() is None:
        process.terminate()
        process.wait(10)


@cache
def _tcp_broker() -> _TcpBroker:
    """broker.py in its own process on a free loopback port, with the fuzz world's keys (alice registered)."""
    _, _, _, root = _world()
    config = {
        "server_ip": "127.0.0.1",
        "keys_dir": str(root),
        "workers": 0,  # no RSA work should ever happen here; a crypto worker would only cost start-up time
        "max_connections_per_source": 100_000,  # every input reaches libzmq's parser, none is refused for count
        "handshakes_per_second_per_source": 1_000_000,
        "connections_per_second_per_source": 1_000_000,  # nor for their rate
    }
    broker = WatchedBroker(Path(tempfile.mkdtemp(prefix="zchat-fuzz-tcp-")), config, "the fuzz broker")
    try:
        broker.start()
    finally:
        if broker.proc is not None:
            atexit.register(_stop, broker.proc)
    return _TcpBroker(broker)


def _connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset on close: no TIME_WAIT
    sock.settimeout(2)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def tcp(data: bytes) -> None:
    """Raw bytes on a real broker's port (after a ZMTP prefix the first byte picks): the broker stays up."""
    broker = _tcp_broker()
    broker.check()
    payload = TCP_PREFIXES[data[0] % len(TCP_PREFIXES)] + data[1:] if data else b""
    broker.recent.append(data)
    try:
        sock = _connect(broker.port)
    except OSError as exc:
        broker.check()
        raise BrokerDied(f"the broker is running but does not accept a connection: {exc}") from None
    with sock, contextlib.suppress(OSError):  # the broker may close first: that is its right
        sock.sendall(payload)
    broker.check()


TARGETS = {"frames": frames_and_documents, "envelope": envelope, "broker": broker, "client": client, "tcp": tcp}
