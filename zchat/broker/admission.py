"""Who may hold a connection to the broker: the policy behind its ZAP handler, without sockets.

The transport is CurveZMQ. A connection completes its handshake only if its
Curve25519 key is a registered user's (`keys/clients/<name>.pub`, re-read when
it changes: deny by default), and the ZAP answer names that user, so every
frame the broker reads carries the user it came from ("User-Id"). Per source
address there is a cap on open connections and a rate of handshakes. A
stranger gets no further than the handshake: it can send no frame, claim no
routing id, and cause no RSA work.

`RoutingIds` keeps a registered user from crashing the broker through
libzmq's routing ids (see its docstring).

`zchat.broker.gatekeeper` runs this policy on the ZAP and monitor sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from zchat.broker.ratelimit import PeerLog, TokenBucket
from zchat.keystore import Registry

log = logging.getLogger(__name__)
peer_log = PeerLog(log)

CURVE = b"CURVE"
Peer = tuple[str, int]  # a TCP peer's address and port
MAX_TRACKED_SOURCES = 100_000
SILENT_LIMIT = 10.0  # seconds after it was accepted: a connection that has not sent a frame by then is closed
COUNTER = 1 << 32


class RoutingIds:
    """Tells a routing id libzmq made up from one a peer claimed ahead of libzmq's counter.

    libzmq gives each connection that announces no routing id the id 0x00 + a
    32-bit counter, and aborts the whole process if that id is already taken
    (socket_base.cpp, add_out_pipe). A peer that announced the id the counter
    will reach later could so crash the broker. The counter starts at a secret
    random place (zchat.broker.main seeds it). `counter()` reads it (the broker's probe
    connection: it uses one id up); `first` is where it stood before any peer
    could connect. Every id libzmq has made up lies in [first, counter()], so
    an id of libzmq's form ahead of that was claimed, and its connection is
    closed the moment it speaks. A connection that never speaks is closed after
    SILENT_LIMIT by the gatekeeper; ids of any other form can never collide.
    """

    def __init__(self, first: int, counter: Callable[[], int]) -> None:
        self.first = first
        self.high = first  # the counter's value when last read
        self.counter = counter

    def made_by_libzmq(self, identity: bytes) -> bool:
        """True for an id libzmq gave out; False for a claimed one (any other form, or ahead of the counter)."""
        if len(identity) != 5 or identity[0] != 0:
            return False
        offset = (int.from_bytes(identity[1:], "big") - self.first) % COUNTER
        if offset <= (self.high - self.first) % COUNTER:
            return True
        self.high = self.counter()  # a new connection since the last reading, most likely
        return offset <= (self.high - self.first) % COUNTER


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    user: str  # the registered name when allowed


class Admission:
    def __init__(self, registry: Registry, max_connections_per_source: int, handshakes_per_second: float) -> None:
        self.registry = registry
        self.max_connections_per_source = max_connections_per_source
        self.handshakes_per_second = handshakes_per_second
        self.connections: dict[int, tuple[Peer, float]] = {}  # open TCP connection (its descriptor) -> peer, when
        self.spoke: set[int] = set()  # connections that have sent a frame
        self.per_source: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}  # handshakes per source address, and per registered user

    def accepted(self, handle: int, peer: Peer, now: float = 0.0) -> bool:
        """A TCP connection from `peer` (address, port) was accepted. False: its address holds too many, close it."""
        self.closed(handle)  # a descriptor number is reused once its connection is gone
        source = peer[0]
        if self.per_source.get(source, 0) >= self.max_connections_per_source:
            peer_log.warning(source, "closing a connection from %s: %d open already", source, self.per_source[source])
            return False
        self.connections[handle] = (peer, now)
        self.per_source[source] = self.per_source.get(source, 0) + 1
        return True

    def speaking(self, handle: int) -> None:
        """The connection sent a frame: it is not one that only holds a routing id."""
        if handle in self.connections:
            self.spoke.add(handle)

    def silent(self, now: float) -> list[int]:
        """Connections accepted more than SILENT_LIMIT ago that never sent a frame: to be closed."""
        return [
            handle
            for handle, (_, since) in self.connections.items()
            if handle not in self.spoke and now - since > SILENT_LIMIT
        ]

    def unread(
        self, read: dict[int, int], received: Callable[[int, Peer], int | None], limit: int
    ) -> list[tuple[int, Peer, int]]:
        """Connections on which more than `limit` bytes arrived (`received`, from the kernel) than the messages
        read from them account for (`read`): (descriptor, peer, those bytes). libzmq keeps a multipart message
        until its last frame, so these are the connections sending one that never ends."""
        found = []
        for handle, (peer, _) in list(self.connections.items()):
            arrived = received(handle, peer)
            if arrived is not None and arrived - read.get(handle, 0) > limit:
                found.append((handle, peer, arrived - read.get(handle, 0)))
        return found

    def peer(self, handle: int) -> Peer | None:
        """Who the connection with this descriptor came from, while it is open."""
        entry = self.connections.get(handle)
        return None if entry is None else entry[0]

    def closed(self, handle: int) -> None:
        self.spoke.discard(handle)
        entry = self.connections.pop(handle, None)
        if entry is None:
            return
        source = entry[0][0]
        left = self.per_source.get(source, 1) - 1
        if left > 0:
            self.per_source[source] = left
        else:
            self.per_source.pop(source, None)

    def authenticate(self, source: str, mechanism: bytes, credentials: list[bytes], now: float) -> Verdict:
        """The ZAP question: may this handshake complete, and as which user?"""
        # Registered users are counted per user, everyone else per address: a stranger who shares a user's
        # address (a NAT) uses up only the strangers' allowance.
        user = None
        if mechanism == CURVE and len(credentials) == 1:
            user = self.registry.name_for_curve_key(credentials[0], now)
        if user is None:
            if self._take("address " + source, now):
                peer_log.info(source, "handshake from %s refused: not a registered CurveZMQ key", source)
            return Verdict(False, "")
        if not self._take("user " + user, now):  # the same rate from any number of addresses
            peer_log.warning(source, "handshake by %s refused: more than %g/s", user, self.handshakes_per_second)
            return Verdict(False, "")
        return Verdict(True, user)

    def _take(self, key: str, now: float) -> bool:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_TRACKED_SOURCES:
                self.forget_idle(now)
            bucket = self.buckets[key] = TokenBucket.full(self.handshakes_per_second, now)
        return bucket.take(now)

    def forget_idle(self, now: float) -> None:
        for source, bucket in list(self.buckets.items()):
            if bucket.idle(now):
                del self.buckets[source]
