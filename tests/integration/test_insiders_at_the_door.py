"""Issue 18, findings 3, 4 and 7: what a registered user (and one busy address) can do at the broker's door.

Real brokers over loopback. Where libzmq cannot send what the attack sends
(a multipart message left unfinished, an announced routing id chosen per
connection), a hand-written CurveZMQ client does (`attack.rawcurve`).
"""

from __future__ import annotations

import contextlib
import selectors
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from attack.rawcurve import HandshakeFailed, RawCurveClient, hello_bytes
from attack.zmtp import generated_form, predicted_counters
from tests.conftest import TEST_CONFIG, BrokerProcess, KeyRing, raw_login
from tests.integration.test_open_network import COLLISION_CONFIG, UnseededBroker, assert_honest_chat, tree_rss
from zchat import crypto
from zchat import protocol as p
from zchat.client.session import ClientSession

MB = 1024 * 1024


def raw_client(
    broker: BrokerProcess, keyring: KeyRing, name: str, source: str = "127.0.0.1", **kwargs
) -> RawCurveClient:
    secret = crypto.curve_secret(keyring.keys[name])
    return RawCurveClient(
        "127.0.0.1", broker.port, broker.curve_key, crypto.curve_public(secret), secret, source, **kwargs
    )


@pytest.fixture
def clients() -> Iterator[list[RawCurveClient]]:
    made: list[RawCurveClient] = []
    yield made
    for client in made:
        client.close()


def wait_closed(clients: list[RawCurveClient], timeout: float, until_open: int = 0) -> list[RawCurveClient]:
    """Wait until at most `until_open` of `clients` are still open (or the timeout); returns those still open."""
    still = list(clients)
    deadline = time.monotonic() + timeout
    while len(still) > until_open and time.monotonic() < deadline:
        still = [client for client in still if not client.closed_by_peer(0.01)]
    return still


# ------------------------------------------------------------ finding 3: unfinished bytes, per user

CONNECTIONS = 12  # of one user, from two addresses
CAP = 8  # max_connections_per_user
HELD = 7 * MB + 512 * 1024  # each: one multipart message, never finished (the old cut-off: 8 MiB a connection)
PART = 256 * 1024


@pytest.mark.slow
def test_one_users_connections_and_unfinished_messages_are_held_to_one_budget(make_broker, keyring, clients):
    """Finding 3: alice opens connections from two addresses; each speaks once, then sends most of a multipart
    message and stops.

    The broker keeps at most `max_connections_per_user` of them, and closes those holding most until what
    all of hers hold together fits `unfinished_bytes_per_user`: its memory grows by about one budget, not
    by connections x HELD."""
    broker = make_broker(
        max_connections_per_user=CAP, unfinished_bytes_per_user=8 * MB, handshakes_per_second_per_user=100
    )
    before = tree_rss(broker)
    for k in range(CONNECTIONS):
        client = raw_client(broker, keyring, "alice", source=f"127.0.0.{2 + k % 2}")
        clients.append(client)
        client.handshake(timeout=5)
        client.send_message(p.encode_frames(p.PING))  # one complete message: the connection has spoken
    kept = wait_closed(clients, timeout=5, until_open=CAP)
    assert len(kept) == CAP, f"{len(kept)} of alice's {CONNECTIONS} connections kept open"
    assert "connections open already" in broker.log()

    peak = before
    part = bytes(PART)
    sent: list[RawCurveClient] = []
    for client in kept:
        with contextlib.suppress(OSError):  # closed by the broker part way: what the test expects
            client.send_raw(b"".join(client.frame_bytes(part, more=True) for _ in range(HELD // PART)))
        sent.append(client)
        # Two of them are over the budget: one is closed before the next begins. (The broker looks four times
        # a second; what arrives in between is a transient this test does not measure.)
        sent = wait_closed(sent, timeout=5, until_open=1)
        peak = max(peak, tree_rss(broker))
    still_open = sent
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # whatever it buffered, it would have by now
        peak = max(peak, tree_rss(broker))
        time.sleep(0.05)
    assert len(still_open) <= 1, f"{len(still_open)} of alice's connections still hold {HELD / MB:.1f} MB each"
    # One budget (8 MiB), plus the connection on its way to being closed and what the allocator keeps;
    # CAP x HELD = 60 MB were held for good before.
    assert peak - before < 30 * MB, f"the broker grew by {(peak - before) / MB:.0f} MB"
    assert "bytes that form no message" in broker.log()
    # bob is not alice: his connection speaks and is served.
    bob = raw_client(broker, keyring, "bob")
    clients.append(bob)
    bob.handshake(timeout=5)
    bob.send_message(raw_session(keyring, broker, "bob").hello())
    assert read_message(bob)[:2] == [p.MARKER, p.CHALLENGE]


def raw_session(keyring: KeyRing, broker: BrokerProcess, name: str) -> ClientSession:
    return ClientSession(name, keyring.keys[name], crypto.load_public_key(broker.keys.broker_public))


def read_message(client: RawCurveClient, timeout: float = 3.0) -> list[bytes]:
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        got = client.recv_frame(max(0.0, deadline - time.monotonic()))
        if got is None:
            raise AssertionError(f"no whole message within {timeout}s (got {frames!r})")
        frames.append(got[0])
        if not got[1]:
            return frames


def test_connections_that_have_not_spoken_get_only_a_small_allowance(make_broker, keyring, clients):
    """Finding 3, before the first frame: a connection that never finishes its first message holds little."""
    broker = make_broker(handshakes_per_second_per_user=100)
    for source in ("127.0.0.2", "127.0.0.3"):
        client = raw_client(broker, keyring, "alice", source=source)
        clients.append(client)
        client.handshake(timeout=5)
        with contextlib.suppress(OSError):
            client.send_raw(b"".join(client.frame_bytes(bytes(PART), more=True) for _ in range(4)))  # 1 MiB
    assert wait_closed(clients, timeout=3) == [], "an unfinished first message of 1 MiB was kept"


# ------------------------------------------------------------ finding 4: the routing-id oracle


@pytest.fixture
def unseeded(tmp_path: Path, keyring: KeyRing) -> Iterator[BrokerProcess]:
    """A broker whose routing-id counter the test knows: libzmq's, with C rand() not seeded."""
    workdir = tmp_path / "unseeded"
    workdir.mkdir()
    shutil.copytree(keyring.root, workdir / "keys")
    broker = UnseededBroker(workdir, {**TEST_CONFIG, **COLLISION_CONFIG, "keys_dir": "keys"})
    try:
        yield broker.start()
    finally:
        broker.kill()
    assert "internal error" not in broker.log(), broker.log()


@pytest.mark.slow
def test_every_routing_id_claim_is_closed_and_locks_its_user_out(unseeded, keyring, clients, connect, raw_dealer):
    """Finding 4: claims inside the range handed out (ids of connections that spoke and ended, whose
    descriptors the claims reuse, and the broker's own probes) and outside it all get the same answer: the
    connection is closed at its first frame and its user cannot connect for `routing_id_lockout`. Others
    carry on. (A claim of a live connection's id is not taken in by libzmq: nothing it sends is read, and it
    is closed as silent.)"""
    broker = unseeded
    counter = predicted_counters(2)[1]  # the broker's first probe took this id: clients got the next ones
    for name in ("carol", "bob", "carol", "bob"):  # connections that speak and end: their ids lie inside the range
        sock = raw_dealer(broker, name)
        raw_login(sock, name, keyring, broker)
        sock.close(linger=0)
    inside = [generated_form(counter + k) for k in range(8)]
    outside = [generated_form(counter + 100_000), b"alice", b"\x00\x01"]
    claimers = []
    for k, claimed in enumerate(inside + outside):  # every claim's handshake first: each claim locks out its user
        client = raw_client(broker, keyring, "alice" if k % 2 else "carol", identity=claimed)
        clients.append(client)
        client.handshake(timeout=5)
        claimers.append((claimed, client))
    for claimed, client in claimers:
        client.send_message(raw_session(keyring, broker, "alice").hello())
        assert client.closed_by_peer(3), f"claim of {claimed.hex()} was not closed"
    log = broker.log()
    assert "claimed a routing id" in log
    assert not any(claimed.hex() in log for claimed, _ in claimers), "the log shows no routing id"
    assert log.count("is locked out for") == 2, "once per lockout (alice's and carol's)"
    for name in ("alice", "carol"):  # locked out: the handshake is refused with "try later" (300, no ERROR)
        with raw_client(broker, keyring, name) as client, pytest.raises(HandshakeFailed) as refused:
            client.handshake(timeout=5)
        assert refused.value.status is None
    assert_unharmed_with_chat(broker, connect)


def assert_unharmed_with_chat(broker: BrokerProcess, connect) -> None:
    assert_honest_chat(broker, connect, "no oracle here", pair=("admin", "bob"))


@pytest.mark.slow
def test_zap_answers_400_for_a_stranger_and_300_for_a_rate(make_broker, keyring, clients):
    """A key that is not registered gets ERROR 400; a user over the handshake rate is closed without an
    ERROR (300: try later)."""
    broker = make_broker(handshakes_per_second_per_user=1)  # bursts of 2
    with raw_client(broker, keyring, "mallory") as stranger, pytest.raises(HandshakeFailed) as refused:
        stranger.handshake(timeout=5)
    assert refused.value.status == 400
    statuses = []
    for _ in range(4):
        with raw_client(broker, keyring, "alice") as client:
            try:
                client.handshake(timeout=5)
                statuses.append(200)
            except HandshakeFailed as exc:
                statuses.append(exc.status or 300)
    assert statuses[:2] == [200, 200], statuses
    assert 300 in statuses[2:], statuses


# ------------------------------------------------------------ finding 7: one address, many connections


class Flood:
    """Connection attempts from one address, as fast as a few in flight allow, each replaying one HELLO.

    An attempt that connects is held open (until the broker closes it); one that has not connected within
    `give_up` seconds (its SYN dropped) is abandoned, so a kernel that refuses does not slow the flood down.
    """

    def __init__(self, port: int, replay: bytes, source: str = "127.0.0.9", in_flight: int = 64, give_up: float = 0.25):
        self.port, self.replay, self.source, self.in_flight, self.give_up = port, replay, source, in_flight, give_up
        self.attempts = self.given_up = 0
        self.connected: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.connected:
            sock.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        pending: dict[socket.socket, float] = {}
        try:
            while not self.stop.is_set():
                while len(pending) < self.in_flight:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.bind((self.source, 0))
                    sock.setblocking(False)
                    sock.connect_ex(("127.0.0.1", self.port))
                    self.attempts += 1
                    pending[sock] = time.monotonic()
                    selector.register(sock, selectors.EVENT_WRITE)
                for key, _ in selector.select(0.01):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    selector.unregister(sock)
                    del pending[sock]
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        sock.close()
                        continue
                    with contextlib.suppress(OSError):
                        sock.send(self.replay)
                    self.connected.append(sock)
                now = time.monotonic()
                for sock in [sock for sock, since in pending.items() if now - since > self.give_up]:
                    selector.unregister(sock)
                    del pending[sock]
                    sock.close()
                    self.given_up += 1
        finally:
            for sock in pending:
                sock.close()
            selector.close()

    def open(self) -> int:
        """How many of the connections made are still open."""
        return sum(not _closed(sock) for sock in list(self.connected))


@pytest.mark.slow
def test_an_address_over_its_connection_rate_is_refused_before_it_is_accepted(make_broker, keyring, connect):
    """Finding 7: one address opens connections as fast as it can, each replaying one HELLO. Over
    `connections_per_second_per_source` its connection attempts are dropped by the kernel (no accept, no WELCOME)
    and those that slip through are closed at once, while users from another address log in and chat; once the
    flood stops, the address connects again."""
    broker = make_broker(connections_per_second_per_source=5)  # bursts of 10
    with Flood(broker.port, hello_bytes(broker.curve_key)) as flood:
        broker.wait_for_log(r"127\.0\.0\.9: more than 5/s; refusing its connections")
        assert_honest_chat(broker, connect, "through the flood")
        # Attempts the kernel drops never connect: the flood gives them up. (A full backlog drops some too.)
        deadline = time.monotonic() + 15
        while flood.given_up < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        made = len(flood.connected)
        assert made < flood.given_up, f"{made} of {flood.attempts} attempts connected"
        elapsed = time.monotonic() - flood.started
        allowed = 10 + 5 * (elapsed + 1.5)
        deadline = time.monotonic() + 1.5
        while (still := flood.open()) > allowed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert still <= allowed, f"{still} of {made} connections open after {elapsed:.1f} s"
    # Once the flood has stopped, the address is let in again.
    deadline = time.monotonic() + 15
    while True:
        try:
            with RawCurveClient(
                "127.0.0.1", broker.port, broker.curve_key, *_curve_pair(keyring, "alice"), source="127.0.0.9"
            ) as client:
                client.handshake(timeout=5)
            break
        except (OSError, HandshakeFailed):
            if time.monotonic() > deadline:
                raise


def _curve_pair(keyring: KeyRing, name: str) -> tuple[bytes, bytes]:
    secret = crypto.curve_secret(keyring.keys[name])
    return crypto.curve_public(secret), secret


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_zmq_identity_property_reads_a_claim_that_starts_with_a_zero_byte_as_empty(zmq_context, request):
    """What the broker may and may not rely on (libzmq 4.3.5): `Frame.get("Identity")` shows an announced
    routing id, but one starting with a zero byte (libzmq's own form) reads as empty, like no claim; a
    connection that sends no Identity property at all has none."""
    router = zmq_context.socket(zmq.ROUTER)
    request.addfinalizer(lambda: router.close(linger=0))
    router.setsockopt(zmq.LINGER, 0)
    public, secret = zmq.curve_keypair()
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_SECRETKEY, secret)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client_public, client_secret = zmq.curve_keypair()
    pair = z85.decode(client_public), z85.decode(client_secret)
    seen = {}
    for announced in (b"", b"alice", generated_form(7), b"\x00abc", None):
        with RawCurveClient("127.0.0.1", port, z85.decode(public), *pair, identity=announced) as client:
            client.handshake(timeout=5)
            client.send_message([b"hi"])
            assert router.poll(3000)
            head, _ = router.recv_multipart(copy=False)
            try:
                identity = head.get("Identity")
            except zmq.ZMQError:
                identity = None
            seen[announced] = (identity, head.bytes)
    assert seen[b""][0] == "", "libzmq's own id"
    assert seen[b""][1][:1] == b"\x00"
    assert len(seen[b""][1]) == 5
    assert seen[b"alice"] == ("alice", b"alice")
    assert seen[generated_form(7)] == ("", generated_form(7)), "a claim of libzmq's form looks like no claim"
    assert seen[b"\x00abc"] == ("", b"\x00abc")
    assert seen[None][0] is None
    assert len(seen[None][1]) == 5
