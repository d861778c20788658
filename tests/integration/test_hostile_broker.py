"""A client against a broker that lies, at the socket: a CurveZMQ ROUTER and a ZAP handler written by hand.

The fake broker holds the real broker key (so it passes every check a client makes of the broker's proof),
answers each CurveZMQ handshake with the ZAP status a test gives it (RFC 27), and each login with a
welcome that says what the test wants. What it receives after the welcome is counted, so a client that
floods it with PINGs shows.
"""

from __future__ import annotations

import collections
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from tests.conftest import KeyRing
from zchat import crypto
from zchat import protocol as p
from zchat.client.sync_client import ChatClient
from zchat.errors import ConnectError
from zchat.events import ConnectionLost, Event, UserInfo, Welcome
from zchat.protocol import events as wire

WAIT = 20.0  # the longest any client call here may take before the test fails


class FakeBroker(threading.Thread):
    """A broker that lies: CurveZMQ with its own ZAP answers, and a welcome with the numbers it is given."""

    def __init__(self, keyring: KeyRing, zap: list[bytes], welcome: dict[str, Any]) -> None:
        super().__init__(daemon=True, name="fake broker")
        self.keyring = keyring
        self.key = keyring.keys["broker"]
        self.zap_answers = collections.deque(zap)  # statuses for the next handshakes, then b"200"
        self.welcome_fields = welcome
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.zap = self.context.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind("inproc://zeromq.zap.01")  # before the ROUTER binds: every handshake asks it
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.CURVE_SERVER, 1)
        self.router.setsockopt(zmq.CURVE_SECRETKEY, crypto.curve_secret(self.key))
        self.router.setsockopt(zmq.ZAP_DOMAIN, b"zchat")
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.commands: queue.Queue[tuple[str, Any]] = queue.Queue()  # what the test asks of the loop
        self.statuses: list[bytes] = []  # the ZAP answers given, in order
        self.after_welcome: collections.Counter[bytes] = collections.Counter()  # commands received after it
        self.welcomes = 0
        self._halt = threading.Event()
        self._sessions: dict[bytes, tuple[str, bytes, int]] = {}  # identity -> (session id, delivery key, seq)
        self._nonces: dict[bytes, tuple[bytes, bytes, bytes]] = {}  # identity -> (client nonce, server nonce, dk)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.zap, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                ready = dict(poller.poll(20))
                if self.zap in ready:
                    request = self.zap.recv_multipart()
                    status = self.zap_answers.popleft() if self.zap_answers else b"200"
                    self.statuses.append(status)
                    user = b"alice" if status == b"200" else b""
                    self.zap.send_multipart([b"1.0", request[1], status, b"status", user, b""])
                if self.router in ready:
                    identity, *frames = self.router.recv_multipart()
                    self._receive(identity, frames)
                while not self.commands.empty():
                    what, identity = self.commands.get_nowait()
                    if what == "evict":
                        self.router.send_multipart([identity, *p.encode_frames(p.EVICTED)])
        finally:
            self.zap.close(linger=0)
            self.router.close(linger=0)

    def stop(self) -> None:
        self._halt.set()
        self.join(WAIT)
        self.context.term()

    def evict_everyone(self) -> None:
        for identity in list(self._sessions):
            self.commands.put(("evict", identity))

    def _receive(self, identity: bytes, frames: list[bytes]) -> None:
        command = frames[1] if len(frames) == 3 else b""
        if identity in self._sessions:
            self.after_welcome[command] += 1
        if command == p.HELLO:
            hello = p.Hello.decode(crypto.open_envelope(self.key, frames[2], p.context(p.HELLO)))
            server_nonce, delivery_key = secrets.token_bytes(p.NONCE_BYTES), secrets.token_bytes(32)
            self._nonces[identity] = (hello.nonce, server_nonce, delivery_key)
            proof = crypto.sign(self.key, p.broker_proof_input(hello.user, hello.nonce, server_nonce, delivery_key))
            challenge = p.Challenge(hello.user, hello.nonce, server_nonce, delivery_key, proof).encode()
            sealed = crypto.seal(self.keyring.keys[hello.user], challenge, p.context(p.CHALLENGE))
            self.router.send_multipart([identity, *p.encode_frames(p.CHALLENGE, sealed)])
        elif command == p.LOGIN and identity in self._nonces:
            _, server_nonce, delivery_key = self._nonces.pop(identity)
            session = p.session_id(server_nonce)
            self._sessions[identity] = (session, delivery_key, 1)
            alice = self.keyring.keys["alice"]
            me = UserInfo("alice", crypto.fingerprint(alice), False, crypto.public_key_to_der(alice))
            welcome = {
                **wire.WelcomeEvent("alice", (me,), 1.0, 6.0, p.DEFAULT_MAX_TEXT_BYTES).to_doc(),
                **self.welcome_fields,
            }
            plaintext = wire.seal_delivery(delivery_key, session, 1, welcome)
            sealed = crypto.seal(alice, plaintext, p.context(p.EVENT))
            self.router.send_multipart([identity, *p.encode_frames(p.EVENT, sealed)])
            self.welcomes += 1


@pytest.fixture
def fake_broker(keyring: KeyRing) -> Iterator[Callable[..., FakeBroker]]:
    brokers: list[FakeBroker] = []

    def start(zap: list[bytes] | None = None, **welcome: Any) -> FakeBroker:
        broker = FakeBroker(keyring, zap or [], welcome)
        broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def connect_in_thread(keyring: KeyRing, broker: FakeBroker, **options: Any) -> ChatClient | BaseException:
    """ChatClient.connect() as alice, run where a hang cannot stop the test: what it returned or raised."""
    outcome: list[ChatClient | BaseException] = []

    def attempt() -> None:
        try:
            outcome.append(
                ChatClient.connect(
                    "127.0.0.1",
                    broker.port,
                    "alice",
                    keyring.private("alice"),
                    keyring.layout.broker_public,
                    **options,
                )
            )
        except BaseException as exc:  # handed to the test, which checks it
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert outcome, f"ChatClient.connect() did not return within {WAIT:g} s"
    return outcome[0]


def events_until(client: ChatClient, predicate: Callable[[Event], bool]) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        event = client.receive(timeout=0.5)
        if event is not None:
            events.append(event)
            if predicate(event):
                return events
    raise AssertionError(f"not seen within {WAIT:g} s; events: {events}")


# ---------------------------------------------------------------- finding 8: a welcome that would hang the client


@pytest.mark.parametrize(
    ("welcome", "reason"),
    [
        ({"heartbeat_interval": 0}, "heartbeat_interval 0 s is outside"),
        ({"heartbeat_timeout": 0}, "heartbeat_timeout 0 s is outside"),
        ({"heartbeat_interval": 1e-9, "heartbeat_timeout": 2e-9}, "heartbeat_interval 1e-09 s is outside"),
    ],
    ids=["interval-0", "timeout-0", "both-tiny"],
)
def test_connect_ends_with_one_line_against_a_welcome_that_would_hang_it(keyring, fake_broker, welcome, reason):
    broker = fake_broker(**welcome)
    outcome = connect_in_thread(keyring, broker)
    assert isinstance(outcome, ConnectError), outcome
    assert f"the broker's welcome was unusable ({reason}" in str(outcome)
    assert "\n" not in str(outcome)
    assert broker.welcomes == 1  # no reconnect loop against a broker that lies
    assert sum(broker.after_welcome.values()) <= 2, broker.after_welcome  # not a PING flood


def test_connect_ends_against_a_welcome_that_lists_us_with_another_key(keyring, fake_broker):
    mallory = keyring.keys["mallory"]
    forged = UserInfo("alice", crypto.fingerprint(mallory), False, crypto.public_key_to_der(mallory))
    broker = fake_broker(users=[wire.user_info_doc(forged)])
    outcome = connect_in_thread(keyring, broker)
    assert isinstance(outcome, ConnectError), outcome
    assert "gives us another key" in str(outcome)


def test_a_sane_welcome_from_the_same_fake_broker_logs_in(keyring, fake_broker):
    """Control for the tests above: the fake broker's login is a real one."""
    broker = fake_broker(heartbeat_interval=0.05, heartbeat_timeout=0.2)
    client = connect_in_thread(keyring, broker)
    assert isinstance(client, ChatClient), client
    try:
        assert client.online
        assert client.session.heartbeat_interval == 0.05
    finally:
        client.close(say_bye=False)


# ---------------------------------------------------------------- the CurveZMQ handshake's ZAP status (RFC 27)


def test_a_handshake_refused_with_400_is_a_refusal(keyring, fake_broker):
    broker = fake_broker(zap=[b"400"])
    outcome = connect_in_thread(keyring, broker)
    assert isinstance(outcome, ConnectError), outcome
    assert str(outcome).startswith("login refused: the broker does not accept 'alice' with this key")
    assert broker.statuses == [b"400"]


def test_a_first_handshake_refused_with_500_says_try_again_later(keyring, fake_broker):
    broker = fake_broker(zap=[b"500"])
    outcome = connect_in_thread(keyring, broker)
    assert isinstance(outcome, ConnectError), outcome
    assert "turned the connection away for now (an error in the broker, status 500); try again later" in str(outcome)
    assert "refused" not in str(outcome)


def test_a_first_handshake_answered_300_is_not_called_a_refusal(keyring, fake_broker):
    """libzmq sends the client no status for a ZAP 300: the handshake is left unanswered, or broken off without
    a word (a race inside libzmq). The login times out, saying the broker may be turning it away for now."""
    broker = fake_broker(zap=[b"300"] * 20)
    outcome = connect_in_thread(keyring, broker, connect_timeout=1.0)
    assert isinstance(outcome, ConnectError), outcome
    assert "turning the connection away for now" in str(outcome)
    assert "refused" not in str(outcome)
    assert broker.statuses[:1] == [b"300"]


@pytest.mark.slow
@pytest.mark.parametrize("status", [b"500", b"300"])
def test_a_re_login_turned_away_for_now_is_tried_again_until_it_gets_in(keyring, fake_broker, status):
    broker = fake_broker(heartbeat_interval=0.2, heartbeat_timeout=2.0)
    client = connect_in_thread(keyring, broker)
    assert isinstance(client, ChatClient), client
    try:
        client.drain()
        broker.zap_answers.extend([status])  # the next handshake is turned away, the one after is let in
        broker.evict_everyone()
        events = events_until(client, lambda e: isinstance(e, Welcome))
        lost = [e.reason for e in events if isinstance(e, ConnectionLost)]
        assert lost[0] == "evicted by the broker", events
        if status == b"500":
            assert lost[1:] == ["the broker turned the connection away for now (an error in the broker)"], events
        else:  # no status: the attempt times out, unless libzmq broke the handshake off and got in at its next try
            assert lost[1:] in ([], ["login attempt timed out"]), events
        assert broker.statuses == [b"200", status, b"200"]
        assert client.online
    finally:
        client.close(say_bye=False)
