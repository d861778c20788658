"""What every attacker process shares: its spec, pacing, sockets from a chosen source address, and an insider.

`AttackSpec` is what `attack.run` hands an attacker process (picklable: the
processes are spawned). `Pacer` spaces an action at a rate. `tcp()` opens a
raw TCP connection from one loopback address (a DEALER with hand-picked
credentials is `harness.dealer.hand_picked_dealer`, with `QUEUE`). `Insider` is a registered user's bare
DEALER driven by zchat's own `ClientSession`: it logs in on a new connection
whenever asked, reads what the broker sends, and acknowledges it or not
(an attacker that never acknowledges keeps its window full on purpose).
"""

from __future__ import annotations

import resource
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from zchat import crypto
from zchat.client.session import ClientSession, State
from zchat.client.transport import HandshakeState, connect_dealer, read_monitor, stop_watching, watch_handshake
from zchat.errors import BrokerBusy, ChatError, LoginRefused
from zchat.events import Accepted, Event, Failed, SessionClosed, Shutdown, Welcome
from zchat.keystore import KeyLayout

Stats = dict[str, float]
Message = tuple[Any, ...]

GO_TIMEOUT = 120.0
IDLE = 0.002
LOGIN_TIMEOUT = 10.0
QUEUE = 100  # the high-water marks of an attacker's hand-picked DEALER


@dataclass(frozen=True)
class AttackSpec:
    kind: str
    port: int
    keys_root: Path
    duration: float
    scale: float
    sources: tuple[str, ...]  # loopback addresses to connect from
    insider: str = ""  # the registered user it abuses, if any
    # For replay: an honest user's genuine zchat HELLO (its frames); for hello_flood, the bytes a CurveZMQ client
    # sends first (greeting and HELLO command), captured before the go.
    captured_hello: tuple[bytes, ...] = ()
    counters: tuple[int, ...] = ()  # libzmq's first generate_random() values in an unseeded process
    recipient: str = ""  # whom it mails, if it mails
    broker_log: Path | None = None  # the broker's log, where a leaked routing id is looked for
    messages_per_second: float = 20.0  # the broker's messages_per_second_per_user
    max_text_bytes: int = 64 * 1024  # the broker's max_text_bytes
    heartbeat_timeout: float = 6.0  # the broker's heartbeat_timeout


class Pacer:
    """Lets an action happen `rate` times per second on average (never catching up more than a second)."""

    def __init__(self, rate: float, now: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else float("inf")
        self.next = now

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = max(self.next + self.interval, now - 1.0)
        return True


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def endpoint(source: str, port: int) -> str:
    return f"tcp://{source}:0;127.0.0.1:{port}"


def tcp(source: str, port: int, timeout: float = 1.0) -> socket.socket:
    """A TCP connection to the broker from `source`; OSError when it cannot be made. Reset (linger 0) on close."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def broker_keys(spec: AttackSpec) -> crypto.PublicKeyFile:
    return crypto.load_public_key_file(KeyLayout(spec.keys_root).broker_public)


def insider_key(spec: AttackSpec) -> crypto.PrivateKey:
    return crypto.load_private_key(KeyLayout(spec.keys_root).client_private(spec.insider))


def queue(sock: zmq.Socket[bytes], frames: list[bytes]) -> bool:
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def drain_replies(sock: zmq.Socket[bytes], stats: Stats, prefix: str) -> None:
    while True:
        try:
            reply = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        command = reply[1].decode("ascii", "replace") if len(reply) > 1 else "?"
        key = f"{prefix}_{command.lower()}"
        stats[key] = stats.get(key, 0) + 1


def count(stats: Stats, key: str, by: float = 1) -> None:
    stats[key] = stats.get(key, 0) + by


class Insider:
    """A registered user's bare DEALER, logged in by hand with zchat's `ClientSession`.

    Each `login()` is a new connection (so a new routing id and a new session, which replaces the last one at
    the broker). `pump()` reads what came, counts the answers to its statements (Accepted, Failed) and pings;
    it acknowledges what it read only when `ack` is true. Outcomes of logins are counted in `stats`:
    `logins`, and `login_refused` (REFUSED), `login_busy` (BUSY), `handshake_refused` (the CurveZMQ handshake
    was refused: a lockout or a rate limit), `login_timeouts`.
    """

    def __init__(
        self,
        spec: AttackSpec,
        context: zmq.Context[zmq.Socket[bytes]],
        stats: Stats,
        *,
        source: str | None = None,
        ack: bool = True,
        send_queue: int = 10_000,
    ) -> None:
        self.spec = spec
        self.context = context
        self.stats = stats
        self.source = source or spec.sources[0]
        self.ack = ack
        self.send_queue = send_queue
        self.key = insider_key(spec)
        self.broker = broker_keys(spec)
        self.sock: zmq.Socket[bytes] | None = None
        self.session = ClientSession(spec.insider, self.key, self.broker.rsa, bot=True, history=False)
        self.events = 0
        self.last_ping = 0.0
        self.last_heard = 0.0

    def connect(self) -> zmq.Socket[bytes]:
        """A new connection (the old one closed) and a new session in state NEW."""
        self.close()
        self.sock = connect_dealer(
            self.context,
            endpoint(self.source, self.spec.port),
            self.key,
            self.broker.curve or b"",
            queue_limit=self.send_queue,
        )
        self.session = ClientSession(self.spec.insider, self.key, self.broker.rsa, bot=True, history=False)
        return self.sock

    def login(self, deadline: float) -> bool:
        """Log in on a new connection; True once welcomed (counted), False for any refusal or at `deadline`."""
        sock = self.connect()
        monitor = watch_handshake(sock)
        state = HandshakeState()
        try:
            sock.send_multipart(self.session.hello())
            while time.monotonic() < deadline:
                if read_monitor(monitor, state).refused:
                    count(self.stats, "handshake_refused")
                    return False
                if not sock.poll(20):
                    continue
                try:
                    events, reply = self.session.receive(sock.recv_multipart())
                except LoginRefused:
                    count(self.stats, "login_refused")
                    return False
                except BrokerBusy:
                    count(self.stats, "login_busy")
                    return False
                except ChatError:
                    count(self.stats, "login_errors")
                    return False
                if reply is not None:
                    sock.send_multipart(reply)
                if any(isinstance(event, Welcome) for event in events):
                    self.last_ping = self.last_heard = time.monotonic()
                    count(self.stats, "logins")
                    return True
            count(self.stats, "login_timeouts")
            return False
        finally:
            stop_watching(sock, monitor)

    @property
    def online(self) -> bool:
        return self.sock is not None and self.session.state is State.READY

    def silent_too_long(self, now: float) -> bool:
        """Nothing heard from the broker for longer than its heartbeat timeout: the session is gone."""
        return now - self.last_heard > self.spec.heartbeat_timeout

    def send(self, frames: list[bytes]) -> bool:
        return self.sock is not None and queue(self.sock, frames)

    def pump(self, now: float, batch: int = 200) -> list[Event]:
        """Read what came (up to a batch), count answers, acknowledge it (if `ack`), ping once a second."""
        if self.sock is None:
            return []
        got: list[Event] = []
        was_ready = self.session.state is State.READY
        for _ in range(batch):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.last_heard = now
            try:
                events, reply = self.session.receive(frames)
            except ChatError:
                count(self.stats, "session_errors")
                continue
            self.events += len(events)
            got.extend(events)
            if reply is not None:
                queue(self.sock, reply)
        for event in got:
            if isinstance(event, Accepted):
                count(self.stats, "accepted_seen")
            elif isinstance(event, Failed):
                count(self.stats, "refused_seen")
            elif isinstance(event, SessionClosed | Shutdown):
                count(self.stats, "sessions_closed")
        if was_ready and self.session.state is State.CLOSED:
            count(self.stats, "sessions_ended_by_broker")
        if self.ack:
            ack = self.session.ack()
            if ack is not None:
                queue(self.sock, ack)
        if now - self.last_ping >= 1.0:
            self.last_ping = now
            queue(self.sock, self.session.ping())
        return got

    def close(self, linger: int = 0) -> None:
        if self.sock is not None:
            self.sock.close(linger=linger)
            self.sock = None
