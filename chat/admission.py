"""Who may hold a connection to the broker: the policy behind its ZAP handler, without sockets.

The transport is CurveZMQ. A connection completes its handshake only if its
Curve25519 key is a registered user's (`keys/clients/<name>.pub`, re-read when
it changes: deny by default), and the ZAP answer names that user, so every
frame the broker reads carries the user it came from ("User-Id"). Per source
address there is a cap on open connections and a rate of handshakes. A
stranger gets no further than the handshake: it can send no frame, claim no
routing id, and cause no RSA work.

`chat.gatekeeper` runs this policy on the ZAP and monitor sockets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chat.keystore import Registry
from chat.ratelimit import PeerLog, TokenBucket

log = logging.getLogger(__name__)
peer_log = PeerLog(log)

CURVE = b"CURVE"
MAX_TRACKED_SOURCES = 100_000


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    user: str  # the registered name when allowed


class Admission:
    def __init__(self, registry: Registry, max_connections_per_source: int, handshakes_per_second: float) -> None:
        self.registry = registry
        self.max_connections_per_source = max_connections_per_source
        self.handshakes_per_second = handshakes_per_second
        self.connections: dict[int, str] = {}  # open TCP connection (its file descriptor) -> source address
        self.per_source: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}

    def accepted(self, handle: int, source: str) -> bool:
        """A TCP connection was accepted. False: its source holds too many already, close it."""
        self.closed(handle)  # a descriptor number is reused once its connection is gone
        if self.per_source.get(source, 0) >= self.max_connections_per_source:
            peer_log.warning(source, "closing a connection from %s: %d open already", source, self.per_source[source])
            return False
        self.connections[handle] = source
        self.per_source[source] = self.per_source.get(source, 0) + 1
        return True

    def closed(self, handle: int) -> None:
        source = self.connections.pop(handle, None)
        if source is None:
            return
        left = self.per_source.get(source, 1) - 1
        if left > 0:
            self.per_source[source] = left
        else:
            self.per_source.pop(source, None)

    def authenticate(self, source: str, mechanism: bytes, credentials: list[bytes], now: float) -> Verdict:
        """The ZAP question: may this handshake complete, and as which user?"""
        bucket = self.buckets.get(source)
        if bucket is None:
            if len(self.buckets) >= MAX_TRACKED_SOURCES:
                self.forget_idle(now)
            bucket = self.buckets[source] = TokenBucket.full(self.handshakes_per_second, now)
        if not bucket.take(now):
            peer_log.warning(source, "handshake from %s refused: more than %g/s", source, self.handshakes_per_second)
            return Verdict(False, "")
        if mechanism != CURVE or len(credentials) != 1:
            peer_log.info(source, "handshake from %s refused: not CURVE", source)
            return Verdict(False, "")
        user = self.registry.name_for_curve_key(credentials[0], now)
        if user is None:
            peer_log.info(source, "handshake from %s refused: key not registered", source)
            return Verdict(False, "")
        return Verdict(True, user)

    def forget_idle(self, now: float) -> None:
        for source, bucket in list(self.buckets.items()):
            if bucket.idle(now):
                del self.buckets[source]
