"""Who may hold a connection to the broker, and for whom it speaks: the policy behind the door, without sockets.

The transport is CurveZMQ. A connection completes its handshake only if its
Curve25519 key is a registered user's (`keys/clients/<name>.pub`, re-read when
it changes: deny by default), and the ZAP answer names that user, so every
frame the broker reads carries the user it came from ("User-Id"). A stranger
gets no further than the handshake: it can send no frame, claim no routing
id, and cause no RSA work.

`Admission` (the gatekeeper thread's half) answers the ZAP question and keeps
the budgets of TCP connections: per source address a cap on open connections
and a rate of accepted ones (an address over that rate goes on the
`Blocklist`, whose connection attempts the kernel drops until its budget
is whole again), and a handshake rate for strangers; per user a
handshake rate, a lockout after a routing-id claim, and the bytes received
that form no message yet, summed over all of the user's connections (a
connection that has not spoken yet gets only a small allowance of its own).

`Speakers` (the broker loop's half) ties each connection to its user at its
first frame: at most `max_connections_per_user` per user, and every routing id
checked by `RoutingIds`, so that no peer can make libzmq abort the broker.

`zchat.broker.gatekeeper` runs `Admission` on the ZAP and monitor sockets;
`zchat.broker.main` runs `Speakers` in its loop.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from zchat.broker.ratelimit import PeerLog, TokenBucket
from zchat.keystore import Registry

log = logging.getLogger(__name__)
peer_log = PeerLog(log)

CURVE = b"CURVE"
Peer = tuple[str, int]  # a TCP peer's address and port
MAX_TRACKED_SOURCES = 100_000
MAX_BLOCKED_SOURCES = 64  # addresses whose connection attempts the kernel drops at once (more: closed once accepted)
SILENT_LIMIT = 10.0  # seconds after it was accepted: a connection that has not sent a frame by then is closed
UNTIED_ALLOWANCE = 64 * 1024  # bytes a connection may hold that form no message before it has spoken (a HELLO < 2 KiB)
COUNTER = 1 << 32
# Seconds within which a connection's first frame follows the moment libzmq gave it its routing id: its handshake
# (5 s at most) and SILENT_LIMIT, with room for a busy loop. An unknown id given out longer ago than this is a claim.
ID_WINDOW = 30.0
READING_INTERVAL = 1.0  # seconds: the counter is read at most this often for the window (plus when an id is ahead)
MAX_REMEMBERED_IDS = 100_000  # ended connections' routing ids remembered for ID_WINDOW (more: the oldest go)
OK, RETRY, DENIED = 200, 300, 400  # ZAP status codes (RFC 27): admitted, temporary failure, not registered


class RoutingIds:
    """Tells a routing id libzmq made up from one a peer claimed.

    libzmq gives each connection that announces no routing id the id 0x00 + a
    32-bit counter, and aborts the whole process if that id is already taken
    (socket_base.cpp, add_out_pipe). A peer that announced the id the counter
    will reach later could so crash the broker. The counter starts at a secret
    random place (zchat.broker.main seeds it). `counter()` reads it (the broker's
    probe connection: it uses one id up); `first` is where it stood before any
    peer could connect.

    An id of libzmq's form is libzmq's only inside a window: after the reading
    taken ID_WINDOW seconds ago (`floor`: every connection given an id before
    it has spoken or been closed since) and at most the counter's latest
    reading. Ahead of the counter, or at or behind the floor without a live
    connection, it was claimed. Ids of any other form are always claims.
    The probe's own ids are never a client's.
    """

    def __init__(self, first: int, counter: Callable[[], int], now: float = -math.inf) -> None:
        self.first = first
        self.high = first  # the counter's value when last read
        self.counter = counter
        self.readings: collections.deque[tuple[float, int]] = collections.deque([(now, first)])
        self.probes: set[int] = {first}  # offsets of the probe's own ids inside the window

    def _offset(self, value: int) -> int:
        return (value - self.first) % COUNTER

    def _read(self, now: float) -> None:
        self.high = self.counter()
        self.probes.add(self._offset(self.high))
        self.readings.append((now, self.high))

    def floor(self, now: float) -> int:
        """The offset (from `first`) of the counter's reading ID_WINDOW ago: ids at or behind it are old."""
        while len(self.readings) > 1 and self.readings[1][0] <= now - ID_WINDOW:
            self.readings.popleft()
        floor = self._offset(self.readings[0][1])
        if len(self.probes) > 1:
            self.probes = {offset for offset in self.probes if offset > floor}
        return floor

    def made_by_libzmq(self, identity: bytes, now: float) -> bool:
        """True for an id libzmq may have given a connection that has not spoken yet; False for a claim (any
        other form, ahead of the counter, a probe's, or given out so long ago that its connection would be known)."""
        if len(identity) != 5 or identity[0] != 0:
            return False
        offset = self._offset(int.from_bytes(identity[1:], "big"))
        if offset > self._offset(self.high) or now - self.readings[-1][0] >= READING_INTERVAL:
            self._read(now)  # a new connection since the last reading, most likely; and the window moves on
        if offset > self._offset(self.high) or offset in self.probes:
            return False
        return offset > self.floor(now)


class Seen(Enum):
    """What a frame's routing id and connection are to `Speakers`."""

    SERVE = "serve"  # a connection of libzmq's making, tied to its user
    DROP = "drop"  # a connection the broker closed: its frames left over are dropped without a word
    LAST = "last"  # a connection that ended by itself: its frames still queued are its last words, handled
    CLAIM = "claim"  # a claimed routing id: close the connection and lock its user out
    FULL = "full"  # the user holds `max_connections_per_user` already: close this one


@dataclass(frozen=True)
class Speaker:
    source: str
    user: str
    handle: int  # the TCP connection's descriptor (reused once it is closed)
    serial: int  # the connection's number, from the gatekeeper's ZAP answer (never reused)


class Speakers:
    """The broker loop's record of the connections that have spoken: routing id -> address, user, connection.

    A connection's first frame ties it to its user (at most
    `max_connections_per_user` each) and checks its routing id. An id is served
    only on the connection it was first seen on, and never again once that
    connection has ended (libzmq never reuses one): seen on any other
    connection, it was claimed. Frames still queued from a connection closed
    or ended are dropped. Connections are told apart by the serial number the
    gatekeeper gave each in its ZAP answer: a descriptor is reused at once.
    """

    def __init__(self, routing_ids: RoutingIds, max_connections_per_user: int) -> None:
        self.routing_ids = routing_ids
        self.max_connections_per_user = max_connections_per_user
        self.live: dict[bytes, Speaker] = {}
        self.handles: dict[int, bytes] = {}  # descriptor -> the id last seen on it (live or closing)
        self.closing: dict[bytes, int] = {}  # ids whose connection (serial) the broker is closing
        # Ids whose connection ended: its serial, when, and its speaker (None if the broker was closing it).
        self.ended: dict[bytes, tuple[int, float, Speaker | None]] = {}
        self.per_user: dict[str, int] = {}

    def first_frame(self, identity: bytes, source: str, user: str, handle: int, serial: int, now: float) -> Seen:
        """A frame whose id is not live on its connection (`serial`): serve it (tying the connection), or not."""
        known = self.live.get(identity)
        if known is not None:
            if known.serial == serial:  # its descriptor changed? Never: the same connection
                return Seen.SERVE
            # libzmq took the id in again, so its connection is gone: a claim of a used id
            self._forget(identity, known.handle, now)
            return self._refuse(identity, handle, serial, Seen.CLAIM)
        closing = self.closing.get(identity)
        if closing is not None:
            return Seen.DROP if closing == serial else self._refuse(identity, handle, serial, Seen.CLAIM)
        ended = self.ended.get(identity)
        if ended is not None:
            if ended[0] != serial:
                return self._refuse(identity, handle, serial, Seen.CLAIM)
            return Seen.DROP if ended[2] is None else Seen.LAST
        if not self.routing_ids.made_by_libzmq(identity, now):
            return self._refuse(identity, handle, serial, Seen.CLAIM)
        if self.per_user.get(user, 0) >= self.max_connections_per_user:
            return self._refuse(identity, handle, serial, Seen.FULL)
        self.live[identity] = Speaker(source, user, handle, serial)
        self.handles[handle] = identity
        self.per_user[user] = self.per_user.get(user, 0) + 1
        return Seen.SERVE

    def _refuse(self, identity: bytes, handle: int, serial: int, seen: Seen) -> Seen:
        self.closing[identity] = serial
        self.handles[handle] = identity
        return seen

    def last_words(self, identity: bytes) -> Speaker | None:
        """Who a connection that ended by itself was, for its frames still queued."""
        ended = self.ended.get(identity)
        return None if ended is None else ended[2]

    def ended_connection(self, handle: int, now: float) -> None:
        """The connection with this descriptor has ended (the gatekeeper saw it close)."""
        identity = self.handles.pop(handle, None)
        if identity is not None:
            self._forget(identity, handle, now)
        self._prune(now)

    def _forget(self, identity: bytes, handle: int, now: float) -> None:
        serial = self.closing.pop(identity, None)
        known = self.live.get(identity)
        speaker = None
        if known is not None and known.handle == handle:
            serial, speaker = known.serial, known
            del self.live[identity]
            left = self.per_user.get(known.user, 1) - 1
            if left > 0:
                self.per_user[known.user] = left
            else:
                self.per_user.pop(known.user, None)
        if self.handles.get(handle) == identity:
            del self.handles[handle]
        if serial is not None:
            self.ended.pop(identity, None)
            self.ended[identity] = (serial, now, speaker)  # newest last

    def _prune(self, now: float) -> None:
        """Ended ids are remembered for ID_WINDOW: later, `RoutingIds` knows them for old ids anyway."""
        while self.ended:
            identity, (_, when, _) = next(iter(self.ended.items()))
            if now - when <= ID_WINDOW and len(self.ended) <= MAX_REMEMBERED_IDS:
                return
            del self.ended[identity]


class Blocklist:
    """Source addresses over their connection rate, each until its budget is whole again.

    The gatekeeper has the kernel drop their connection attempts (a filter on the listening socket), so that a
    flood from one address costs the broker no accept, no handshake and no event. At most `capacity` addresses:
    beyond, an address's connections are accepted and closed at once, as without a blocklist. `version`
    changes whenever the set of addresses does.
    """

    def __init__(self, capacity: int = MAX_BLOCKED_SOURCES) -> None:
        self.capacity = capacity
        self.until: dict[str, float] = {}
        self.version = 0

    def block(self, source: str, until: float) -> bool:
        """Refuse `source` until then (a block under way is extended). False: the list is full."""
        if source in self.until:
            self.until[source] = max(self.until[source], until)
            return True
        if len(self.until) >= self.capacity:
            return False
        self.until[source] = until
        self.version += 1
        return True

    def expire(self, now: float) -> None:
        """Forget the addresses whose time has come."""
        ended = [source for source, until in self.until.items() if until <= now]
        for source in ended:
            del self.until[source]
        if ended:
            self.version += 1

    def next_expiry(self) -> float | None:
        return min(self.until.values(), default=None)

    def sources(self) -> list[str]:
        return sorted(self.until)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    user: str  # the registered name when allowed
    status: int = DENIED  # the ZAP status code: OK, RETRY (a rate, a lockout: try later) or DENIED


REFUSED = Verdict(False, "", DENIED)
LATER = Verdict(False, "", RETRY)


class Admission:
    def __init__(
        self,
        registry: Registry,
        max_connections_per_source: int,
        handshakes_per_second: float,
        *,
        connections_per_second_per_source: float = math.inf,
        handshakes_per_second_per_user: float | None = None,
        unfinished_bytes_per_user: int = 8 * 1024 * 1024,
        routing_id_lockout: float = 300.0,
    ) -> None:
        """`handshakes_per_second`: per source address, for keys that are not registered (strangers)."""
        self.registry = registry
        self.max_connections_per_source = max_connections_per_source
        self.handshakes_per_second = handshakes_per_second
        self.connections_per_second_per_source = connections_per_second_per_source
        self.handshakes_per_second_per_user = (
            handshakes_per_second if handshakes_per_second_per_user is None else handshakes_per_second_per_user
        )
        self.unfinished_bytes_per_user = unfinished_bytes_per_user
        self.routing_id_lockout = routing_id_lockout
        self.connections: dict[int, tuple[Peer, float]] = {}  # open TCP connection (its descriptor) -> peer, when
        self.spoke: set[int] = set()  # connections that have sent a frame
        self.users: dict[int, str] = {}  # connections tied to their user (at their first frame)
        self.per_source: dict[str, int] = {}
        # Token buckets: handshakes per source address (strangers) and per user, connections per source address.
        self.buckets: dict[str, TokenBucket] = {}
        self.locked_until: dict[str, float] = {}  # users locked out (claimed a routing id) until then
        self.blocklist = Blocklist()  # addresses over the connection rate: the kernel drops their connection attempts

    def accepted(self, handle: int, peer: Peer, now: float = 0.0) -> bool:
        """A TCP connection from `peer` (address, port) was accepted. False: its address connects too fast, or
        holds too many: close it. Every connection accepted counts against the rate, refused ones too; an address
        over the rate goes on the blocklist until its budget (a burst) is whole again."""
        self.closed(handle)  # a descriptor number is reused once its connection is gone
        source = peer[0]
        rate = self.connections_per_second_per_source
        if not self._take("connect " + source, rate, now):
            bucket = self.buckets["connect " + source]
            # Until the budget is whole again: each time the kernel lets an address in again, some of its
            # connections get accepted before this thread blocks it anew; so the longer the block, the fewer.
            wait = max(0.0, bucket.capacity - bucket.tokens) / bucket.rate
            blocked = source in self.blocklist.until
            if self.blocklist.block(source, now + wait) and not blocked:
                peer_log.warning(
                    source,
                    "closing a connection from %s: more than %g/s; refusing its connections for %.0f ms",
                    source,
                    rate,
                    wait * 1000,
                )
            else:
                peer_log.warning(source, "closing a connection from %s: more than %g/s", source, rate)
            return False
        if self.per_source.get(source, 0) >= self.max_connections_per_source:
            peer_log.warning(source, "closing a connection from %s: %d open already", source, self.per_source[source])
            return False
        self.connections[handle] = (peer, now)
        self.per_source[source] = self.per_source.get(source, 0) + 1
        return True

    def speaking(self, handle: int, user: str = "") -> None:
        """The connection sent a frame (the broker's loop tied it to `user`): it does not only hold a routing id."""
        if handle in self.connections:
            self.spoke.add(handle)
            if user:
                self.users[handle] = user

    def silent(self, now: float) -> list[int]:
        """Connections accepted more than SILENT_LIMIT ago that never sent a frame: to be closed."""
        return [
            handle
            for handle, (_, since) in self.connections.items()
            if handle not in self.spoke and now - since > SILENT_LIMIT
        ]

    def unread(self, read: dict[int, int], received: Callable[[int, Peer], int | None]) -> list[tuple[int, Peer, int]]:
        """Connections to close for the bytes that arrived on them (`received`, from the kernel) and form no
        message the broker has read (`read`): (descriptor, peer, those bytes). libzmq keeps a multipart message
        until its last frame, so these are connections sending one that never ends. A connection not tied to a
        user yet may hold UNTIED_ALLOWANCE; a user's connections together `unfinished_bytes_per_user`, and over
        it the ones holding most are closed."""
        found = []
        held: dict[str, list[tuple[int, int, Peer]]] = {}
        for handle, (peer, _) in list(self.connections.items()):
            arrived = received(handle, peer)
            if arrived is None:
                continue
            unread = arrived - read.get(handle, 0)
            user = self.users.get(handle)
            if user is None:
                if unread > UNTIED_ALLOWANCE:
                    found.append((handle, peer, unread))
            elif unread > 0:
                held.setdefault(user, []).append((unread, handle, peer))
        for connections in held.values():
            total = sum(unread for unread, _, _ in connections)
            for unread, handle, peer in sorted(connections, reverse=True):
                if total <= self.unfinished_bytes_per_user:
                    break
                found.append((handle, peer, unread))
                total -= unread
        return found

    def user_of(self, handle: int) -> str:
        return self.users.get(handle, "")

    def peer(self, handle: int) -> Peer | None:
        """Who the connection with this descriptor came from, while it is open."""
        entry = self.connections.get(handle)
        return None if entry is None else entry[0]

    def closed(self, handle: int) -> None:
        self.spoke.discard(handle)
        self.users.pop(handle, None)
        entry = self.connections.pop(handle, None)
        if entry is None:
            return
        source = entry[0][0]
        left = self.per_source.get(source, 1) - 1
        if left > 0:
            self.per_source[source] = left
        else:
            self.per_source.pop(source, None)

    def lock_out(self, user: str, now: float) -> bool:
        """`user` claimed a routing id: refuse their handshakes for `routing_id_lockout` seconds from now.
        True when this starts a lockout (False: it extends one)."""
        if len(self.locked_until) >= MAX_TRACKED_SOURCES:
            self.locked_until = {name: until for name, until in self.locked_until.items() if until > now}
        started = self.locked_until.get(user, -math.inf) <= now
        self.locked_until[user] = now + self.routing_id_lockout
        return started

    def authenticate(self, source: str, mechanism: bytes, credentials: list[bytes], now: float) -> Verdict:
        """The ZAP question: may this handshake complete, and as which user?"""
        # Registered users are counted per user, everyone else per address: a stranger who shares a user's
        # address (a NAT) uses up only the strangers' allowance.
        user = None
        if mechanism == CURVE and len(credentials) == 1:
            user = self.registry.name_for_curve_key(credentials[0], now)
        if user is None:
            if self._take("address " + source, self.handshakes_per_second, now):
                peer_log.info(source, "handshake from %s refused: not a registered CurveZMQ key", source)
            return REFUSED
        locked = self.locked_until.get(user, -math.inf) - now
        if locked > 0:
            peer_log.info(user, "handshake by %s refused: locked out for %.0f s more", user, locked)
            return LATER
        rate = self.handshakes_per_second_per_user
        if not self._take("user " + user, rate, now):  # the same rate from any number of addresses
            peer_log.warning(user, "handshake by %s from %s refused: more than %g/s", user, source, rate)
            return LATER
        return Verdict(True, user, OK)

    def _take(self, key: str, rate: float, now: float) -> bool:
        if rate == math.inf:
            return True
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_TRACKED_SOURCES:
                self.forget_idle(now)
            bucket = self.buckets[key] = TokenBucket.full(rate, now)
        return bucket.take(now)

    def forget_idle(self, now: float) -> None:
        for source, bucket in list(self.buckets.items()):
            if bucket.idle(now):
                del self.buckets[source]
