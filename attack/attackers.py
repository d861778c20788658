"""Every attack of `make attack`, each the body of its own process: issue 11's six and issue 18's insiders.

Every attacker waits for the "go" event, attacks until `duration` seconds
later, closes everything and puts ("result", kind, stats) on the out queue
(stats: what it sent, and its own CPU seconds), or ("error", kind, traceback).
Each attacker connects from its own loopback source addresses (127.0.0.2 and
up), so the per-source limits it trips are its own and not the honest users'
(they connect from 127.0.0.1).

    random_bytes       4 KiB of random bytes on each new TCP connection
    routing_claims     an insider's CURVE DEALERs announcing routing ids: the ids an unseeded libzmq would generate
                       next, random ids of that form, and arbitrary ones; each sends HELLO-shaped frames
    endless_multipart  a stranger: raw TCP, a ZMTP 3.0 NULL greeting, then empty frames with MORE set, forever
    conn_flood         as many raw TCP connections as it can hold open, from several sources, reopened when closed
    rsa_work           a captured HELLO replayed from unregistered CURVE keys, NULL DEALERs and raw NULL ZMTP;
                       an insider's HELLOs far over its login rate
    log_amp            an insider that logged in sends malformed frames as fast as its pace allows

Issue 18's attacks (one budget per user) live in `attack.insiders` (findings 1, 2, 4 and 5: a registered
user's mail, sessions, routing-id claims and message rate) and `attack.flood` (finding 7: one address's
connections, each replaying one captured CurveZMQ HELLO); finding 3 uses `attack.rawcurve`.
`ATTACKS` names them all, `PREPARE` the steps some take before the go.

`scale` (1.0, or less for --quick) multiplies every rate and count.
"""

from __future__ import annotations

import collections
import os
import random
import resource
import secrets
import selectors
import socket
import time
import traceback
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType

import zmq

from attack.common import (
    GO_TIMEOUT,
    IDLE,
    LOGIN_TIMEOUT,
    QUEUE,
    AttackSpec,
    Insider,
    Message,
    Pacer,
    Stats,
    broker_keys,
    cpu_seconds,
    drain_replies,
    endpoint,
    insider_key,
    queue,
    tcp,
)
from attack.flood import hello_flood, prepare_flood
from attack.insiders import (
    find_leaked_id,
    held_multipart,
    mail_away,
    mail_self,
    rate_refill,
    routing_search,
    session_churn,
)
from attack.zmtp import ENDLESS_FRAME, NULL_HANDSHAKE, generated_form, greeting, message
from harness.dealer import hand_picked_dealer
from zchat import crypto
from zchat import protocol as p
from zchat.client.session import ClientSession

# Paces at scale 1.0 (per second unless said otherwise). Chosen so that all six together use well under one core.
RANDOM_BYTES_RATE = 40.0  # connections
RANDOM_BYTES_CHUNK = 4096
RANDOM_BYTES_HOLD = 1.0  # seconds a connection stays open after its bytes
CLAIM_RATE = 10.0  # CURVE connections with a claimed routing id (the ZAP handler admits 20/s per source)
CLAIM_HOLD = 2.0
ENDLESS_BYTES_RATE = 16 * 1024 * 1024.0
ENDLESS_RECONNECT_RATE = 20.0
ENDLESS_CHUNK = ENDLESS_FRAME * 32 * 1024  # 64 KiB of empty MORE frames
FLOOD_TARGET = 4000  # connections it tries to hold open
FLOOD_OPEN_RATE = 200.0  # new connections per second, at most
STRANGER_DEALER_RATE = 20.0  # new DEALERs per second, per kind (unregistered CURVE key, NULL)
STRANGER_HOLD = 1.0
STRANGER_HELLOS = 4  # HELLOs queued on each stranger DEALER
RAW_NULL_RATE = 10.0  # raw NULL-ZMTP connections per second, each with RAW_NULL_HELLOS replayed HELLOs
RAW_NULL_HELLOS = 20
INSIDER_HELLO_RATE = 100.0
JUNK_RATE = 10_000.0  # malformed frames
JUNK_BATCH = 100

# Malformed messages a logged-in user may send (finding 6); each the broker must drop without a log line each.
LOG_JUNK: list[list[bytes]] = [
    [b"x"],
    [p.MARKER, b"NOPE", b""],
    [p.MARKER],
    [p.MARKER, p.SEND],
    [p.MARKER, p.SEND, b"", b"one too many"],
    [b"", b"", b"", b"", b""],
    [b"zchat/0", p.HELLO, b"\x01"],
    [p.MARKER, p.HELLO, b"\x01" + bytes(40)],  # a HELLO from a logged-in user
    [p.MARKER, p.CHALLENGE, b"\x01"],  # a broker-only command
]
# What the log amplifier sends: those, a SEND whose body is no envelope, and an ACK of nothing.
LOG_AMP_JUNK: list[list[bytes]] = [*LOG_JUNK, [p.MARKER, p.SEND, os.urandom(600)], [p.MARKER, p.ACK, bytes(16)]]


# ------------------------------------------------------------ 1. random bytes


def random_bytes(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {"connections": 0, "bytes": 0, "connect_failures": 0}
    pacer = Pacer(RANDOM_BYTES_RATE * spec.scale, time.monotonic())
    held: collections.deque[tuple[socket.socket, float]] = collections.deque()
    while (now := time.monotonic()) < end:
        if pacer.due(now):
            try:
                sock = tcp(spec.sources[0], spec.port)
                sock.setblocking(False)
                stats["bytes"] += sock.send(os.urandom(RANDOM_BYTES_CHUNK))
                stats["connections"] += 1
                held.append((sock, now))
            except OSError:
                stats["connect_failures"] += 1
        while held and now - held[0][1] > RANDOM_BYTES_HOLD:
            held.popleft()[0].close()
        time.sleep(max(IDLE, min(pacer.next, end) - time.monotonic()))
    for sock, _ in held:
        sock.close()
    return stats


# ------------------------------------------------------------ 2. routing-id claims


def routing_claims(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {
        "connections": 0,
        "claims_predicted": 0,
        "claims_generated_form_random": 0,
        "claims_arbitrary": 0,
        "frames_queued": 0,
        "frames_not_queued": 0,
    }
    rng = random.Random()  # noqa: S311 - attack traffic, not a secret
    broker = broker_keys(spec)
    key = insider_key(spec)
    secret = crypto.curve_secret(key)
    server_key = broker.curve or b""
    hellos = [ClientSession(spec.insider, key, broker.rsa, bot=True).hello() for _ in range(4)]
    counters = list(spec.counters) or [0]
    next_offset = [0] * len(counters)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    held: collections.deque[tuple[zmq.Socket[bytes], float]] = collections.deque()
    pacer = Pacer(CLAIM_RATE * spec.scale, time.monotonic())
    made = 0
    try:
        while (now := time.monotonic()) < end:
            if pacer.due(now):
                kind = made % 4
                if kind < 2:  # the ids an unseeded broker gives its next connections, each start in turn
                    which = (made // 2) % len(counters)
                    claimed = generated_form(counters[which] + next_offset[which])
                    next_offset[which] += 1
                    stats["claims_predicted"] += 1
                elif kind == 2:
                    claimed = b"\x00" + secrets.token_bytes(4)
                    stats["claims_generated_form_random"] += 1
                else:
                    claimed = bytes([rng.randrange(1, 256)]) + secrets.token_bytes(rng.randrange(0, 32))
                    stats["claims_arbitrary"] += 1
                made += 1
                sock = hand_picked_dealer(
                    context,
                    endpoint(spec.sources[0], spec.port),
                    secret,
                    server_key,
                    routing_id=claimed,
                    queue_limit=QUEUE,
                )
                stats["connections"] += 1
                for frames in (hellos[made % len(hellos)], [p.MARKER, p.HELLO, secrets.token_bytes(442)]):
                    queued = queue(sock, frames)
                    stats["frames_queued" if queued else "frames_not_queued"] += 1
                held.append((sock, now))
            for sock, _ in held:
                drain_replies(sock, stats, "replies")
            while held and now - held[0][1] > CLAIM_HOLD:
                held.popleft()[0].close(linger=0)
            time.sleep(max(IDLE, min(pacer.next, end) - time.monotonic()))
    finally:
        for sock, _ in held:
            sock.close(linger=0)
        context.term()
    return stats


# ------------------------------------------------------------ 3. a never-ending multipart message


def endless_multipart(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {"connections": 0, "bytes": 0, "frames": 0, "max_bytes_one_connection": 0, "connect_failures": 0}
    budget = Pacer(ENDLESS_BYTES_RATE * spec.scale / len(ENDLESS_CHUNK), time.monotonic())  # chunks per second
    reconnect = Pacer(ENDLESS_RECONNECT_RATE * spec.scale, time.monotonic())
    prelude = greeting(b"NULL")
    while (now := time.monotonic()) < end:
        if not reconnect.due(now):
            time.sleep(max(IDLE, min(reconnect.next, end) - now))
            continue
        try:
            sock = tcp(spec.sources[0], spec.port)
        except OSError:
            stats["connect_failures"] += 1
            continue
        stats["connections"] += 1
        this = 0
        try:
            sock.settimeout(0.5)
            sock.sendall(prelude)
            stats["bytes"] += len(prelude)
            while (now := time.monotonic()) < end:
                if not budget.due(now):
                    time.sleep(max(IDLE, min(budget.next, end) - now))
                    continue
                try:
                    sent = sock.send(ENDLESS_CHUNK)
                except TimeoutError:  # the broker stopped reading but holds the connection: keep pushing
                    continue
                this += sent
                stats["bytes"] += sent
                stats["frames"] += sent // 2
        except OSError:  # closed by the broker: the normal end of a connection
            pass
        finally:
            sock.close()
            stats["max_bytes_one_connection"] = max(stats["max_bytes_one_connection"], this)
    return stats


# ------------------------------------------------------------ 4. a connection flood


def conn_flood(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {"opened": 0, "closed_by_broker": 0, "peak_open": 0, "open_at_end": 0, "connect_failures": 0}
    target = max(1, int(FLOOD_TARGET * spec.scale))
    pacer = Pacer(FLOOD_OPEN_RATE * spec.scale, time.monotonic())
    selector = selectors.DefaultSelector()
    open_count = 0
    made = 0
    try:
        while (now := time.monotonic()) < end:
            while open_count < target and pacer.due(now):
                source = spec.sources[made % len(spec.sources)]
                made += 1
                try:
                    sock = tcp(source, spec.port, timeout=0.5)
                    if made % 2:  # half begin a CurveZMQ handshake and stall; the others say nothing at all
                        sock.sendall(greeting(b"CURVE"))
                    sock.setblocking(False)
                except OSError:
                    stats["connect_failures"] += 1
                    break
                selector.register(sock, selectors.EVENT_READ, sock)
                open_count += 1
                stats["opened"] += 1
                now = time.monotonic()
            stats["peak_open"] = max(stats["peak_open"], open_count)
            for key, _ in selector.select(timeout=0.01):
                sock = key.data
                try:
                    closed = not sock.recv(65536)
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    selector.unregister(sock)
                    sock.close()
                    open_count -= 1
                    stats["closed_by_broker"] += 1
    finally:
        stats["open_at_end"] = open_count
        for key in list(selector.get_map().values()):
            key.data.close()
        selector.close()
    return stats


# ------------------------------------------------------------ 5. unauthenticated RSA work


class _RsaWork:
    """rsa_work's sockets: stranger DEALERs and raw NULL connections held a while, the insider's DEALER."""

    def __init__(self, spec: AttackSpec, context: zmq.Context[zmq.Socket[bytes]], stats: Stats) -> None:
        self.spec, self.context, self.stats = spec, context, stats
        broker = broker_keys(spec)
        self.server_key = broker.curve or b""
        self.captured = list(spec.captured_hello)
        self.random_hello = [p.MARKER, p.HELLO, secrets.token_bytes(442)]
        self.raw_attack = NULL_HANDSHAKE + message(self.captured) * RAW_NULL_HELLOS
        key = insider_key(spec)
        self.insider_hellos = [ClientSession(spec.insider, key, broker.rsa, bot=True).hello() for _ in range(8)]
        self.insider = hand_picked_dealer(
            context, endpoint(spec.sources[2], spec.port), crypto.curve_secret(key), self.server_key, queue_limit=QUEUE
        )
        self.held: collections.deque[tuple[zmq.Socket[bytes], float]] = collections.deque()
        self.raw_held: collections.deque[tuple[socket.socket, float]] = collections.deque()

    def stranger(self, source: str, secret: bytes | None, counter: str, at: float) -> None:
        """A DEALER the broker does not know, with captured HELLOs (and a random one) queued on it."""
        sock = hand_picked_dealer(
            self.context, endpoint(source, self.spec.port), secret, self.server_key, queue_limit=QUEUE
        )
        self.stats[counter] += 1
        for k in range(STRANGER_HELLOS):
            queued = queue(sock, self.random_hello if k == STRANGER_HELLOS - 1 else self.captured)
            self.stats["stranger_hellos_queued" if queued else "stranger_hellos_not_queued"] += 1
        self.held.append((sock, at))

    def raw_null(self, source: str, at: float) -> None:
        """A raw TCP connection: the NULL handshake, then the captured HELLO over and over."""
        try:
            raw = tcp(source, self.spec.port)
            raw.setblocking(False)
            sent = raw.send(self.raw_attack)
            self.stats["raw_null_connections"] += 1
            self.stats["raw_null_bytes"] += sent
            self.stats["raw_null_hellos"] += max(0, sent - len(NULL_HANDSHAKE)) // len(message(self.captured))
            self.raw_held.append((raw, at))
        except OSError:
            self.stats["connect_failures"] += 1

    def insider_hello(self) -> None:
        frames = self.insider_hellos[int(self.stats["insider_hellos"]) % len(self.insider_hellos)]
        queued = queue(self.insider, frames)
        self.stats["insider_hellos" if queued else "insider_hellos_not_queued"] += 1

    def tend(self, now: float) -> None:
        """Count the replies; close what has been held for STRANGER_HOLD."""
        drain_replies(self.insider, self.stats, "insider_replies")
        for sock, _ in self.held:
            drain_replies(sock, self.stats, "stranger_replies")
        while self.held and now - self.held[0][1] > STRANGER_HOLD:
            self.held.popleft()[0].close(linger=0)
        while self.raw_held and now - self.raw_held[0][1] > STRANGER_HOLD:
            self.raw_held.popleft()[0].close()

    def close(self) -> None:
        for sock, _ in self.held:
            sock.close(linger=0)
        for raw, _ in self.raw_held:
            raw.close()
        self.insider.close(linger=0)


def rsa_work(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {
        "unregistered_curve_dealers": 0,
        "null_dealers": 0,
        "stranger_hellos_queued": 0,
        "stranger_hellos_not_queued": 0,
        "raw_null_connections": 0,
        "raw_null_hellos": 0,
        "raw_null_bytes": 0,
        "insider_hellos": 0,
        "insider_hellos_not_queued": 0,
        "connect_failures": 0,
    }
    unregistered_source, null_source = spec.sources[0], spec.sources[1]
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    work = _RsaWork(spec, context, stats)
    now = time.monotonic()
    curve_pace = Pacer(STRANGER_DEALER_RATE * spec.scale, now)
    null_pace = Pacer(STRANGER_DEALER_RATE * spec.scale, now)
    raw_pace = Pacer(RAW_NULL_RATE * spec.scale, now)
    insider_pace = Pacer(INSIDER_HELLO_RATE * spec.scale, now)
    try:
        while (now := time.monotonic()) < end:
            if curve_pace.due(now):
                work.stranger(unregistered_source, secrets.token_bytes(32), "unregistered_curve_dealers", now)
            if null_pace.due(now):
                work.stranger(null_source, None, "null_dealers", now)
            if raw_pace.due(now):
                work.raw_null(null_source, now)
            while insider_pace.due(now):
                work.insider_hello()
            work.tend(now)
            next_due = min(curve_pace.next, null_pace.next, raw_pace.next, insider_pace.next, end)
            time.sleep(max(IDLE, next_due - time.monotonic()))
    finally:
        work.close()
        context.term()
    return stats


# ------------------------------------------------------------ 6. log amplification


def log_amp(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {"frames": 0, "bytes": 0, "frames_not_queued": 0, "logins": 0}
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    insider = Insider(spec, context, stats)
    pacer = Pacer(JUNK_RATE * spec.scale / JUNK_BATCH, time.monotonic())  # batches per second
    sent = 0
    try:
        while (now := time.monotonic()) < end:
            if not insider.online:
                if not insider.login(min(end, now + LOGIN_TIMEOUT)):
                    time.sleep(0.5)
                continue
            insider.pump(now)
            if pacer.due(now) and insider.sock is not None:
                for _ in range(JUNK_BATCH):
                    frames = LOG_AMP_JUNK[sent % len(LOG_AMP_JUNK)]
                    sent += 1
                    if queue(insider.sock, frames):
                        stats["frames"] += 1
                        stats["bytes"] += sum(len(f) + 1 for f in frames)
                    else:
                        stats["frames_not_queued"] += 1
            time.sleep(max(IDLE, min(pacer.next, end) - time.monotonic()))
        stats["events_received"] = insider.events
    finally:
        insider.close()
        context.term()
    return stats


ATTACKS: dict[str, Callable[[AttackSpec, float], Stats]] = {
    # Issue 11: strangers, and insiders at the edges of the protocol.
    "random_bytes": random_bytes,
    "routing_claims": routing_claims,
    "endless_multipart": endless_multipart,
    "conn_flood": conn_flood,
    "rsa_work": rsa_work,
    "log_amp": log_amp,
    # Issue 18: one budget per user (its findings 1, 2, 4, 5 and 7; the numbers are the issue's).
    "mail_self": mail_self,  # 1
    "mail_away": mail_away,  # 1
    "session_churn": session_churn,  # 2
    "held_multipart": held_multipart,  # 3
    "routing_search": routing_search,  # 4
    "rate_refill": rate_refill,  # 5
    "hello_flood": hello_flood,  # 7
}

# Steps an attacker takes before it reports itself armed (before the go): each returns the spec to attack with.
PREPARE: dict[str, Callable[[AttackSpec], AttackSpec]] = {
    "routing_search": find_leaked_id,
    "hello_flood": prepare_flood,
}


ATTACKER_NICENESS = 10


def attacker_main(spec: AttackSpec, out: Queue[Message], go: EventType) -> None:
    """Entry point of an attacker process: wait for go, attack for spec.duration seconds, report."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner stops us
    # Attackers would run on machines of their own: here they share the broker's two cores, and would otherwise
    # measure how much CPU they take from the honest users' process, not what they cost the broker. At a lower
    # priority they still use every cycle the broker and the honest users leave, and the broker's limits, not
    # their CPU, bound what most of them send (the report shows each one's CPU and what it sent).
    os.nice(ATTACKER_NICENESS)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if spec.kind in PREPARE:
            spec = PREPARE[spec.kind](spec)
        out.put(("armed", spec.kind, None))
        if not go.wait(GO_TIMEOUT):
            raise TimeoutError("no go signal")
        cpu_before = cpu_seconds()
        stats = ATTACKS[spec.kind](spec, time.monotonic() + spec.duration)
        stats["cpu_s"] = round(cpu_seconds() - cpu_before, 2)
        out.put(("result", spec.kind, stats))
    except BaseException:
        out.put(("error", spec.kind, traceback.format_exc()))
        raise SystemExit(1) from None
