"""A verifying receiver for the latency measurement: its own process, a real client session.

It connects over CurveZMQ (`harness.dealer.client_dealer`, zchat/3), logs in
with `zchat.client.session.ClientSession` and runs every frame through
`ClientSession.receive()`: the envelope is opened, the
delivery MAC and sequence number checked and the author's signature verified,
exactly as in the terminal client; after each batch of frames read it sends
`ClientSession.ack()`, as the terminal client does. The moment `receive()` returns a chat
message is when it was received; the benchmark's texts name their sender slot
and number, so the parent matches it with the moment it was sent.

Talks to the parent over a multiprocessing pipe:

    verifier -> parent   ("ready",)  ("result", [(slot, number, time.time()), ...], {problem: count})
                         ("error", text)
    parent -> verifier   ("stop", expected_messages, seconds_to_wait_for_them)
"""

from __future__ import annotations

import signal
import time
import traceback
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path

import zmq

from bench.stats import parse_text
from harness.dealer import client_dealer
from zchat import crypto
from zchat.client.session import ClientSession, State
from zchat.errors import ConnectError, RemoteProtocolError
from zchat.events import ChatMessage, Event, Notice, SessionClosed, Shutdown, Welcome

PING_EVERY = 1.0


def verifier_main(
    conn: Connection, endpoint: str, name: str, key_path: str, broker_public_path: str, curve_secret: bytes | None
) -> None:
    """`curve_secret`: the name's own Curve25519 secret, or None for the one derived from its RSA key."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _run(conn, endpoint, name, Path(key_path), Path(broker_public_path), curve_secret)
    except Exception:
        conn.send(("error", traceback.format_exc()))


class _Receiver:
    """The verifier's socket and session, what it received and what went wrong."""

    def __init__(self, conn: Connection, sock: zmq.Socket[bytes], session: ClientSession, name: str) -> None:
        self.conn, self.sock, self.session, self.name = conn, sock, session, name
        self.received: list[tuple[int, int, float]] = []
        self.problems: Counter[str] = Counter()
        self.last_sent = time.monotonic()

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)
        self.last_sent = time.monotonic()

    def read(self) -> bool:
        """Run every frame waiting through the session; False when the login failed (the parent is told)."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            try:
                events, reply = self.session.receive(frames)
            except ConnectError as exc:
                self.conn.send(("error", f"{self.name}: login failed: {exc}"))
                return False
            except RemoteProtocolError as exc:
                self.problems[f"dropped: {exc}"] += 1
                continue
            now = time.time()
            if reply is not None:
                self.send(reply)
            for event in events:
                self.on_event(event, now)

    def on_event(self, event: Event, now: float) -> None:
        if isinstance(event, ChatMessage):
            parsed = parse_text(event.text)
            if parsed is None:
                self.problems["unexpected text"] += 1
            else:
                self.received.append((parsed[0], parsed[1], now))
        elif isinstance(event, Welcome):
            self.conn.send(("ready",))
        elif isinstance(event, (Notice, SessionClosed, Shutdown)):
            self.problems[f"{type(event).__name__}: {event}"] += 1


def _run(
    conn: Connection, endpoint: str, name: str, key_path: Path, broker_public_path: Path, curve_secret: bytes | None
) -> None:
    key = crypto.load_private_key(key_path)
    broker = crypto.load_public_key_file(broker_public_path)
    if broker.curve is None:
        raise ValueError(f"{broker_public_path} holds no Curve25519 key")
    session = ClientSession(name, key, broker.rsa)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = client_dealer(context, endpoint, curve_secret or crypto.curve_secret(key), broker.curve, queue_limit=0)
    sock.send_multipart(session.hello())
    receiver = _Receiver(conn, sock, session, name)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(conn.fileno(), zmq.POLLIN)
    expected: int | None = None
    give_up = 0.0
    while True:
        poller.poll(100)
        if not receiver.read():
            return
        ack = session.ack()
        if ack is not None:
            receiver.send(ack)
        if conn.poll():
            message = conn.recv()
            if message[0] == "stop":
                expected, give_up = int(message[1]), time.monotonic() + float(message[2])
        if expected is not None and (len(receiver.received) >= expected or time.monotonic() > give_up):
            conn.send(("result", receiver.received, dict(receiver.problems)))
            break
        if session.state is State.READY and time.monotonic() - receiver.last_sent > PING_EVERY:
            receiver.send(session.ping())
    sock.close(linger=0)
    context.term()
