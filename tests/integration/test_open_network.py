"""Issue 11, findings 1-6: what a stranger (or a registered user) can send to the broker's TCP port.

Every test runs a real broker process on loopback and attacks it the way the
issue measured it: raw TCP with hand-written ZMTP 3.0 bytes where the attack
is at the byte level, pyzmq sockets where it is about ZeroMQ behaviour. After
each attack the broker is still up, did not log a traceback, and honest users
still log in and chat.

ZMTP 3.0 (RFC 23) in a few lines: a 64-byte greeting (signature 0xFF, 8 bytes
of padding, 0x7F; version 3.0; a 20-byte mechanism name; an as-server byte;
31 bytes of filler), then frames: a flags byte (bit 0 MORE, bit 1 LONG, bit 2
COMMAND), the size (1 byte, or 8 bytes big-endian with LONG) and the body.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attack.attackers import LOG_JUNK
from attack.zmtp import SIGNATURE, frame, greeting, message, predicted_counters, ready, zmtp_command
from fuzz import targets as fuzz_targets
from harness.dealer import hand_picked_dealer
from tests.conftest import TEST_CONFIG, WAIT, BrokerProcess, KeyRing, raw_login, run_env, wait_for
from tests.unit.test_fuzz_targets import frame_like
from zchat import crypto
from zchat import protocol as p
from zchat.broker.ratelimit import LOG_WINDOW
from zchat.client.session import ClientSession
from zchat.events import ChatMessage

MB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MEMORY_BOUND = 30 * MB  # what an attack may add to the broker's resident memory (its workers included)

# ------------------------------------------------------------ ZMTP 3.0 by hand

# A CurveZMQ HELLO command has a 200-byte body (RFC 26); this one has the right size and garbage inside.
CURVE_GARBAGE_HELLO = greeting(b"CURVE") + zmtp_command(b"HELLO", b"\x01\x00" + random.Random(7).randbytes(192))


@contextlib.contextmanager
def raw_tcp(port: int, source: str = "") -> Iterator[socket.socket]:
    """A plain TCP connection to the broker, reset (linger 0) when done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        if source:
            sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        yield sock
    finally:
        sock.close()


def null_handshake(sock: socket.socket, timeout: float = 2.0) -> bool:
    """Greet with the NULL mechanism and send READY, then wait for the broker's READY.

    True when it came: a peer without keys got in. (libzmq takes what follows READY as the next handshake
    command until it has sent its own READY, so an attacker waits for it before sending messages.)
    """
    received = b""
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(greeting(b"NULL") + ready())
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                return False
            received += chunk
            if b"\x05READY" in received[64:]:
                return True
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        return False
    return False


def send_until_closed(sock: socket.socket, data: bytes, chunk: int = MB) -> int:
    """Write `data`; returns how many bytes went out before the broker closed the connection (len(data) if never)."""
    sent = 0
    view = memoryview(data)
    try:
        while sent < len(data):
            sock.sendall(view[sent : sent + chunk])
            sent += min(chunk, len(data) - sent)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        return sent
    return sent


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the other end closes the connection (reading and discarding whatever it sent first)."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


# ------------------------------------------------------------ watching the broker process


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()  # fields from the third on: state, ppid, ...


def children(pid: int) -> list[int]:
    """The broker's child processes (its crypto workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def rss(pid: int) -> int:
    """Resident memory of one process in bytes (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError):
        return 0


def tree_rss(broker: BrokerProcess) -> int:
    assert broker.proc is not None
    return sum(rss(pid) for pid in (broker.proc.pid, *children(broker.proc.pid)))


def workers_cpu(broker: BrokerProcess) -> float:
    """CPU seconds (user + system) the broker's crypto workers have used so far."""
    assert broker.proc is not None
    total = 0
    for pid in children(broker.proc.pid):
        with contextlib.suppress(OSError, IndexError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def settled_workers_cpu(broker: BrokerProcess, quiet: float = 0.5, timeout: float = 5.0) -> float:
    """The workers' CPU seconds once they have been idle for `quiet` seconds (the work queued is done)."""
    last, since = workers_cpu(broker), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = workers_cpu(broker)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def assert_unharmed(broker: BrokerProcess, since: int = 0) -> None:
    assert broker.alive(), f"the broker stopped (exit status {broker.proc and broker.proc.poll()}):\n{broker.log()}"
    log = broker.log(since)
    assert "Traceback" not in log, log
    assert "Assertion failed" not in log, log


def assert_honest_chat(broker: BrokerProcess, connect: Callable[..., Any], text: str, pair=("alice", "bob")) -> None:
    """Two honest users log in (within the client's connect timeout) and one's message reaches the other."""
    assert_unharmed(broker)
    listener = connect(broker, pair[1])
    speaker = connect(broker, pair[0])
    speaker.send(text)
    event = wait_for(listener, lambda e: isinstance(e, ChatMessage) and e.text == text)
    assert event.sender == pair[0]


# ------------------------------------------------------------ ZeroMQ sockets with hand-picked credentials


def dealer(
    context: zmq.Context[zmq.Socket[bytes]],
    broker: BrokerProcess,
    curve_secret: bytes | None,
    routing_id: bytes | None = None,
    endpoint: str = "",
    watch: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]] | None = None,
) -> zmq.Socket[bytes]:
    """A DEALER that speaks CURVE with `curve_secret` (NULL when None), optionally claiming a routing id.

    With `watch`, a monitor of its handshake is attached before it connects (an event before that is lost)
    and the pair goes into `watch`, for `wait_handshakes()`.
    """
    server_key = broker.curve_key if curve_secret is not None else b""
    sock = hand_picked_dealer(context, None, curve_secret, server_key, routing_id=routing_id, timeout_ms=3000)
    if watch is not None:
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        monitor.setsockopt(zmq.LINGER, 0)
        watch.append((sock, monitor))
    sock.connect(endpoint or f"tcp://127.0.0.1:{broker.port}")
    return sock


@pytest.fixture
def sockets(zmq_context: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[..., zmq.Socket[bytes]]]:
    """`dealer()` on the test's context, every socket (and its monitor) closed with linger 0 at teardown."""
    made: list[zmq.Socket[bytes]] = []

    def factory(*args: Any, **kwargs: Any) -> zmq.Socket[bytes]:
        sock = dealer(zmq_context, *args, **kwargs)
        made.append(sock)
        return sock

    yield factory
    for sock in made:
        sock.close(linger=0)


def wait_handshakes(pairs: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]], timeout: float, stop=None) -> int:
    """Wait until every socket's CURVE handshake succeeded (or `stop()` is true); returns how many did."""
    pending = {monitor: sock for sock, monitor in pairs}
    done = 0
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    for monitor in pending:
        poller.register(monitor, zmq.POLLIN)
    while pending and time.monotonic() < deadline and not (stop and stop()):
        for monitor, _ in poller.poll(100):
            monitor.recv_multipart()
            poller.unregister(monitor)
            del pending[monitor]
            done += 1
    for sock, monitor in pairs:
        sock.disable_monitor()
        monitor.close(linger=0)
    return done


def curve_secret_of(keyring: KeyRing, name: str) -> bytes:
    return crypto.curve_secret(keyring.keys[name])


# ------------------------------------------------------------ finding 1: random bytes on the port

RANDOM = random.Random(11)
JUNK = {
    "random-4KiB": RANDOM.randbytes(4096),
    "random-64KiB": RANDOM.randbytes(64 * 1024),
    "random-1MiB": RANDOM.randbytes(MB),
    # ZMTP 1.0 (legacy, no greeting): an empty identity frame, then a one-frame message. Its frames carry no
    # metadata, which is what made the old broker's `Peer-Address` lookup raise.
    "zmtp1-message": b"\x01\x00" + b"\x06\x00hello" * 500,
    "zmtp2-greeting": SIGNATURE + b"\x01\x05" + b"\x00\x00" + b"\x00\x05hello",
    "signature-then-random": SIGNATURE + RANDOM.randbytes(4096),
    "null-greeting-then-random": greeting(b"NULL") + RANDOM.randbytes(4096),
    "curve-greeting-then-random": greeting(b"CURVE") + RANDOM.randbytes(4096),
    "curve-as-server-then-random": greeting(b"CURVE", as_server=True) + RANDOM.randbytes(4096),
    "plain-greeting-then-random": greeting(b"PLAIN") + RANDOM.randbytes(4096),
    "http": b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n" * 100,
    "tls-client-hello": bytes.fromhex("160301") + (4096).to_bytes(2, "big") + RANDOM.randbytes(4096),
    "zeros": bytes(4096),
    "ones": b"\xff" * 4096,
}
# Sent after a NULL handshake that waited for the broker's READY (which our broker never sends).
AFTER_NULL_HANDSHAKE = {
    "hello-shaped-messages": message([p.MARKER, p.HELLO, RANDOM.randbytes(442)]) * 50,
    "random-frames": b"".join(frame(RANDOM.randbytes(n), more=n % 3 == 0) for n in range(300)),
    "huge-frame-size": b"\x02" + b"\xff" * 8,
    "random-after-ready": RANDOM.randbytes(4096),
}


def test_random_and_malformed_bytes_do_not_stop_the_broker(broker, connect):
    """Finding 1: random bytes (several sizes) and structured junk (legacy ZMTP, bad greetings, HTTP, TLS).

    Each connection stays open until the broker closes it, so the broker has read all of it before it is judged
    (what got as far as its socket is read in a later loop turn, before the honest users' frames are all read)."""
    for name, junk in JUNK.items():
        with raw_tcp(broker.port) as sock:
            send_until_closed(sock, junk)
            closed_by_peer(sock, WAIT)
        assert broker.alive(), f"the broker stopped after {name}:\n{broker.log()}"
    for name, junk in AFTER_NULL_HANDSHAKE.items():
        with raw_tcp(broker.port) as sock:
            if null_handshake(sock):
                send_until_closed(sock, junk)
            closed_by_peer(sock, WAIT)
        assert broker.alive(), f"the broker stopped after a NULL handshake and {name}:\n{broker.log()}"
    assert_honest_chat(broker, connect, "after the junk")
    assert_unharmed(broker)


# ------------------------------------------------------------ finding 2: routing-id claims


CLAIMED_IDS = [b"alice", secrets.token_bytes(16), b"\x01abcd", b"\x00"]  # a name, random, 5 bytes, 1 byte


@pytest.mark.slow
def test_claimed_routing_ids_get_no_answer(broker, connect, keyring, sockets):
    """Finding 2a: a registered user's DEALER that announces its own routing id has its frames dropped.

    bob's DEALER, which claims nothing, gets its HELLO answered meanwhile: the silence is the dropping."""
    broker_key = crypto.load_public_key(broker.keys.broker_public)
    claimers = [sockets(broker, curve_secret_of(keyring, "alice"), routing_id=claimed) for claimed in CLAIMED_IDS]
    for sock in claimers:
        sock.send_multipart(ClientSession("alice", keyring.keys["alice"], broker_key).hello())
        sock.send_multipart(p.encode_frames(p.PING))
    honest = sockets(broker, curve_secret_of(keyring, "bob"))
    honest.send_multipart(ClientSession("bob", keyring.keys["bob"], broker_key).hello())
    assert honest.recv_multipart()[:2] == [p.MARKER, p.CHALLENGE]  # RCVTIMEO: 3 s
    deadline = time.monotonic() + 1.0
    for sock in claimers:
        assert not sock.poll(max(0, int((deadline - time.monotonic()) * 1000))), "a claimed routing id was answered"
    broker.wait_for_log("claimed a routing id")
    assert_honest_chat(broker, connect, "ids are not for claiming", pair=("carol", "admin"))


# broker.py exactly as it is, but without seeding rand(): the control.
UNSEEDED_BROKER = (
    "import sys, zchat.broker.main as broker; broker.seed_routing_ids = lambda: None;"
    " sys.exit(broker.main(sys.argv[1:]))"
)


class UnseededBroker(BrokerProcess):
    def start(self, port: int | None = None, stdin: int | None = subprocess.DEVNULL) -> BrokerProcess:
        self.config["server_port"] = 0
        self.config_path.write_text(json.dumps(self.config))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", UNSEEDED_BROKER, "--config", str(self.config_path)],
                cwd=self.workdir,
                env=run_env(),
                stdin=stdin,
                stdout=log,
                stderr=log,
            )
        self.port = int(self.wait_for_log(r"listening on tcp://[\d.]+:(\d+)").group(1))
        return self


CLAIMS = 40
COLLISION_CONFIG = {
    "workers": 1,  # the workers' ROUTER takes libzmq's first random number; the clients' ROUTER the second
    "max_connections_per_source": 4 * CLAIMS,
    "handshakes_per_second_per_source": 1000,
    "handshakes_per_second_per_user": 1000,
    "connections_per_second_per_source": 1000,
}


def claim_then_connect(broker: BrokerProcess, keyring: KeyRing, sockets, counter: int) -> None:
    """Claim the routing ids an unseeded broker gives its next CLAIMS connections, then open CLAIMS ordinary ones."""
    names = ["alice", "bob", "carol", "admin"]
    claims: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]] = []
    for k in range(CLAIMS):
        claimed = b"\x00" + ((counter + k) & 0xFFFFFFFF).to_bytes(4, "big")
        sockets(broker, curve_secret_of(keyring, names[k % 4]), routing_id=claimed, watch=claims)
    # Every claim is registered now: the broker's side of a connection hands it to the ROUTER (through the
    # socket's one command queue, in order) before its READY reaches us, so the ROUTER takes the claims in
    # before any connection opened after this line.
    assert wait_handshakes(claims, timeout=15) == CLAIMS, broker.log()
    ordinary: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]] = []
    for k in range(CLAIMS):
        sockets(broker, curve_secret_of(keyring, names[k % 4]), watch=ordinary)
    wait_handshakes(ordinary, timeout=15, stop=lambda: not broker.alive())


@pytest.mark.slow
def test_claiming_the_next_generated_routing_ids_cannot_abort_the_broker(
    tmp_path: Path, make_broker, connect, keyring, sockets
):
    """Finding 2b: claims of the ids libzmq would generate next. The unseeded control aborts, our broker does not."""
    counter = predicted_counters(2)[1]  # see COLLISION_CONFIG

    # The control: the same broker without seed_routing_ids() dies on libzmq's assertion. This shows the
    # prediction is right and the attack real, so that the second half means something.
    workdir = tmp_path / "unseeded"
    workdir.mkdir()
    shutil.copytree(keyring.root, workdir / "keys")
    control = UnseededBroker(workdir, {**TEST_CONFIG, **COLLISION_CONFIG, "keys_dir": "keys"})
    try:
        control.start()
        claim_then_connect(control, keyring, sockets, counter)
        assert control.proc is not None
        status = control.proc.wait(timeout=10)
        assert status == -signal.SIGABRT, control.log()
        assert "Assertion failed" in control.log()
    finally:
        control.kill()

    ours = make_broker(**COLLISION_CONFIG)
    claim_then_connect(ours, keyring, sockets, counter)
    assert_unharmed(ours)
    assert_honest_chat(ours, connect, "the counter is a secret")
    assert_unharmed(ours)


def test_a_routing_id_claimed_ahead_of_the_counter_is_closed_when_it_speaks(broker, connect, keyring, sockets):
    """A claim of the form libzmq generates (0x00 + 4 bytes), anywhere but the few ids given out so far: the
    broker cannot know it is a claim from its form, but it is ahead of the counter, so its connection is closed
    at its first frame, long before the counter could reach it."""
    broker_key = crypto.load_public_key(broker.keys.broker_public)
    claimed = b"\x00" + os.urandom(4)
    watched: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]] = []
    claimer = sockets(broker, curve_secret_of(keyring, "alice"), routing_id=claimed, watch=watched)
    assert wait_handshakes(watched, timeout=10) == 1
    claimer.send_multipart(ClientSession("alice", keyring.keys["alice"], broker_key).hello())
    broker.wait_for_log(
        "closing a connection of alice from 127.0.0.1 that claimed a routing id .*; alice is locked out"
    )
    assert claimed.hex() not in broker.log(), "the log shows no routing id"
    assert not claimer.poll(500), "the claim was answered"
    assert_honest_chat(broker, connect, "no claims ahead", pair=("carol", "admin"))


# ------------------------------------------------------------ finding 3: a never-ending multipart message

ENDLESS = b"\x01\x00" * (12 * MB)  # 24 MB of empty frames, every one with MORE set


@pytest.mark.slow
@pytest.mark.parametrize(
    "prelude",
    [b"NULL", CURVE_GARBAGE_HELLO, greeting(b"CURVE")],
    ids=["null-ready", "curve-garbage-hello", "curve-greeting-only"],
)
def test_a_never_ending_multipart_message_is_refused(broker, connect, prelude):
    """Finding 3: a stranger's handshake fails, its connection closes, and the broker's memory stays put."""
    before = tree_rss(broker)
    peak = before
    got_in = False
    with raw_tcp(broker.port) as sock:
        if prelude == b"NULL":  # b"NULL": a NULL greeting and READY, and the broker's READY awaited
            got_in = null_handshake(sock)
            prelude = b""
        sent = send_until_closed(sock, prelude + ENDLESS)
        closed = sent < len(prelude + ENDLESS) or closed_by_peer(sock, 5)
        peak = max(peak, tree_rss(broker))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # whatever it buffered, it would have by now
        peak = max(peak, tree_rss(broker))
        time.sleep(0.05)
    assert peak - before < MEMORY_BOUND, f"broker memory grew by {(peak - before) / MB:.0f} MB"
    assert closed, f"the broker kept reading {sent} bytes of one endless message"
    assert not got_in, "a NULL peer completed the handshake"
    assert_honest_chat(broker, connect, "memory is bounded")


# ------------------------------------------------------------ finding 4: a connection flood from one source

CAP = 50


def count_open(flood: list[socket.socket]) -> int:
    """How many of the flood's connections the broker still holds open (drains what it sent, sees its close)."""
    still_open = 0
    for sock in flood:
        try:
            while True:
                if not sock.recv(65536):
                    break
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
    return still_open


@pytest.mark.slow
def test_a_connection_flood_from_one_source_is_capped(make_broker, connect, keyring, sockets):
    """Finding 4: 300 connections from one address; the broker keeps at most the cap open and serves others."""
    broker = make_broker(max_connections_per_source=CAP, connections_per_second_per_source=1000)
    before = tree_rss(broker)
    flood: list[socket.socket] = []
    try:
        started = time.monotonic()
        for k in range(300):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            flood.append(sock)
            sock.settimeout(3)
            sock.connect(("127.0.0.1", broker.port))
            if k % 2:  # half of them begin a CurveZMQ handshake and stall; the others say nothing at all
                sock.sendall(greeting(b"CURVE"))
            sock.setblocking(False)
        # Within the handshake timeout (5 s), so that what is closed was closed by the cap.
        deadline = started + 3.5
        while (still_open := count_open(flood)) > CAP and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_open <= CAP, f"{still_open} connections from one source still open"
        assert still_open >= CAP // 2, f"only {still_open} open: closed by something other than the cap?"
        assert time.monotonic() - started < 4.5
        assert tree_rss(broker) - before < MEMORY_BOUND

        # While the flood holds its cap, a user from another address logs in.
        other = sockets(
            broker, curve_secret_of(keyring, "carol"), endpoint=f"tcp://127.0.0.2:0;127.0.0.1:{broker.port}"
        )
        raw_login(other, "carol", keyring, broker)
    finally:
        for sock in flood:
            sock.close()
    assert_unharmed(broker)
    assert_honest_chat(broker, connect, "the flood is over")


# ------------------------------------------------------------ finding 5: RSA work for strangers


def genuine_hello(keyring: KeyRing, broker: BrokerProcess) -> list[bytes]:
    """A HELLO as alice's client makes it, captured for replay."""
    return ClientSession("alice", keyring.keys["alice"], crypto.load_public_key(broker.keys.broker_public)).hello()


def rsa_open_seconds(keyring: KeyRing, hello: list[bytes], count: int = 20) -> float:
    """What one RSA open of a HELLO costs here (the broker's key is the test ring's)."""
    started = time.process_time()
    for _ in range(count):
        crypto.open_envelope(keyring.keys["broker"], hello[2], p.context(p.HELLO))
    return (time.process_time() - started) / count


REPLAYS = 300
SOURCES = 30


@pytest.mark.slow
def test_strangers_cause_no_rsa_work(broker, connect, keyring, sockets):
    """Finding 5: replayed and random HELLOs from NULL peers (raw bytes, from many source addresses), from an
    unregistered key and from a random key."""
    hello = genuine_hello(keyring, broker)
    random_hello = [p.MARKER, p.HELLO, secrets.token_bytes(442)]
    since = len(broker.log_path.read_bytes())
    cpu_before = workers_cpu(broker)

    got_in = False
    with contextlib.ExitStack() as open_connections:  # kept open until measured: a reset discards unread bytes
        for source in range(1, SOURCES + 1):  # NULL mechanism, at the byte level, as if from many hosts
            sock = open_connections.enter_context(raw_tcp(broker.port, source=f"127.0.1.{source}"))
            if null_handshake(sock):
                got_in = True
                send_until_closed(sock, (message(hello) + message(random_hello)) * (REPLAYS // SOURCES // 2))
        settled_workers_cpu(broker)  # whatever they caused is done before they hang up
    strangers = [
        sockets(broker, curve_secret_of(keyring, "mallory")),  # a key, but not registered
        sockets(broker, secrets.token_bytes(32)),  # a key nobody knows
        sockets(broker, None),  # no CurveZMQ at all
    ]
    for sock in strangers:
        for frames in [hello, random_hello] * 20:
            with contextlib.suppress(zmq.Again):  # no handshake, no pipe: nothing to send on
                sock.send_multipart(frames, zmq.NOBLOCK)
    for sock in strangers:
        assert not sock.poll(300), "a stranger got an answer"

    spent = settled_workers_cpu(broker) - cpu_before
    one_open = rsa_open_seconds(keyring, hello)
    assert spent < 0.25 * REPLAYS * one_open + 0.1, (
        f"workers spent {spent:.2f}s, one open costs {one_open * 1000:.1f}ms"
    )
    log = broker.log(since)
    for line in ("login refused", "dropped frame", "dropped HELLO", "turned away"):
        assert line not in log, log
    assert not got_in, "a NULL peer completed the handshake"
    assert_honest_chat(broker, connect, "strangers cost nothing")


@pytest.mark.slow
def test_a_registered_user_over_the_login_rate_gets_busy_without_rsa_work(make_broker, keyring, raw_dealer):
    """Finding 5, insiders: HELLOs beyond `logins_per_second_per_user` are answered BUSY before any RSA work."""
    broker = make_broker(logins_per_second_per_user=1)
    sock = raw_dealer(broker, "alice")
    hello = genuine_hello(keyring, broker)
    cpu_before = workers_cpu(broker)
    for _ in range(REPLAYS):
        sock.send_multipart(hello)
    busy = 0
    with contextlib.suppress(zmq.Again):
        for _ in range(REPLAYS):
            reply = sock.recv_multipart()
            busy += reply[:2] == [p.MARKER, p.BUSY]
    assert busy >= REPLAYS - 10, f"only {busy} BUSY answers"
    spent = settled_workers_cpu(broker) - cpu_before
    one_open = rsa_open_seconds(keyring, hello)
    assert spent < 0.25 * REPLAYS * one_open + 0.1, (
        f"workers spent {spent:.2f}s, one open costs {one_open * 1000:.1f}ms"
    )
    # The limit is alice's, not her address's: bob, from the same address, logs in right away.
    raw_login(raw_dealer(broker, "bob"), "bob", keyring, broker)
    assert_unharmed(broker)


# ------------------------------------------------------------ finding 6: the log does not amplify


@pytest.mark.slow
def test_malformed_frames_from_a_user_do_not_amplify_into_the_log(make_broker, connect, keyring, raw_dealer):
    """Finding 6: 2.5 MB of malformed frames add a few dozen log lines and one summary, not a line per frame."""
    started = time.monotonic()  # the broker's log windows start after this
    broker = make_broker(heartbeat_timeout=60)  # nobody times out while the test waits for the summary
    bob = connect(broker, "bob")
    sock = raw_dealer(broker, "alice")
    sock.setsockopt(zmq.SNDTIMEO, 10_000)
    session, _ = raw_login(sock, "alice", keyring, broker)
    since = len(broker.log_path.read_bytes())
    sent = count = 0
    while sent < 2.5 * MB:
        frames = LOG_JUNK[count % len(LOG_JUNK)]
        sock.send_multipart(frames)
        sent += sum(len(f) for f in frames) + len(frames)
        count += 1
    sock.send_multipart(
        session.say("after the junk", message_id=p.new_message_id())
    )  # the broker reads one connection in order
    assert wait_for(bob, lambda e: isinstance(e, ChatMessage)).text == "after the junk"

    added = broker.log(since)
    assert len(added.splitlines()) < 50, f"{count} junk messages added {len(added.splitlines())} log lines"
    assert len(added.encode()) < 20_000
    # The summary comes once the window that saw the flood ends, without anything else happening: the loop
    # flushes the rate-limited log every turn.
    window_over = started + LOG_WINDOW + 5 - time.monotonic()
    summary = broker.wait_for_log(r"suppressed (\d+) log lines", timeout=window_over)
    assert int(summary.group(1)) >= count - 100, summary.group(0)
    assert_unharmed(broker)
    assert len(broker.log(since).splitlines()) < 50


# ------------------------------------------------------------ `make fuzz`'s tcp target


@pytest.mark.slow
def test_the_tcp_fuzz_target_keeps_its_broker_up_and_reports_its_death():
    """The tcp target runs briefly here (its own broker, the unit suite's inputs plus larger random ones), and
    what it is for works: once its broker is gone it raises BrokerDied."""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(frame_like, st.binary(min_size=1, max_size=8192)))
    def run(data: bytes) -> None:
        fuzz_targets.tcp(data)

    try:
        run()
        fuzz_targets._stop(fuzz_targets._tcp_broker().process)
        with pytest.raises(fuzz_targets.BrokerDied, match="stopped"):
            fuzz_targets.tcp(b"\x00after")
    finally:
        fuzz_targets._stop(fuzz_targets._tcp_broker().process)
        fuzz_targets._tcp_broker.cache_clear()
