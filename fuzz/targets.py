"""Fuzz targets: each takes arbitrary bytes and must either succeed or raise an expected, named error.

Anything else (an IndexError, a KeyError, a crash in the broker core) is a bug.
The same targets run under atheris (`make fuzz`) and, briefly, in the test suite.
"""

from __future__ import annotations

import contextlib
import tempfile
from functools import cache
from pathlib import Path

import crypto
from chat import protocol as p
from chat.broker_core import BrokerCore, run_inline
from chat.broker_work import JobRunner
from chat.config import Config
from chat.errors import ConnectError, RemoteProtocolError
from chat.keystore import KeyLayout, Registry, write_private_key, write_public_key
from chat.session import ClientSession

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
    core = BrokerCore(broker_key.public_key(), Registry(layout), Config("127.0.0.1", 0, keys_dir=root))
    return broker_key, alice_key, core, root


def frames_and_documents(data: bytes) -> None:
    """Frame checks and every JSON document decoder."""
    for allowed in (p.CLIENT_COMMANDS, p.BROKER_COMMANDS):
        with contextlib.suppress(RemoteProtocolError):
            p.decode_frames(split_frames(data), allowed, p.max_body_bytes(p.DEFAULT_MAX_TEXT_BYTES))
    for decode in (p.Hello.decode, p.Challenge.decode, p.Login.decode, lambda d: p.Delivery.open(d, bytes(32))):
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


TARGETS = {"frames": frames_and_documents, "envelope": envelope, "broker": broker, "client": client}
