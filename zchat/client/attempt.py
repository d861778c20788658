"""One login attempt after another, without I/O: the backoff between them and what each one's handshake showed.

`Backoff` draws the delays between reconnection attempts. `Handshake` gathers what the driver's socket
monitor reports during one attempt (TCP reached the broker, the CurveZMQ handshake completed, or it was
broken off), so that a first login that runs out of time says what most likely went wrong. The ZAP status
codes are those a broker's ZAP handler answers a handshake with. `ClientCore` (zchat.client.core) uses both.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from zchat.errors import ConnectError

FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
RETRY_JITTER = 0.2
# RFC 27 status codes a broker's ZAP handler answers a CurveZMQ handshake with. libzmq reports 400 and 500 on
# the socket monitor; a 300 sends the client no status at all (zchat.client.transport), but is handled like a
# 500 should a transport ever report it.
ZAP_TEMPORARY, ZAP_REFUSED, ZAP_ERROR = 300, 400, 500
# A handshake broken off before it completed this many times in one attempt: most likely the broker cannot read
# our CurveZMQ hello, so the pinned broker key is not its key (libzmq connects again by itself, see
# zchat.client.transport). A status 300 leaves the handshake unanswered until the broker's handshake timeout,
# or (it depends on a race inside libzmq) breaks it off at once just the same: the message says both.
BROKEN_HANDSHAKES_WRONG_KEY = 2


class Backoff:
    """Delays between reconnection attempts: `first`, doubling up to `cap`, each multiplied by a jitter factor."""

    def __init__(
        self,
        first: float = FIRST_RETRY_DELAY,
        cap: float = MAX_RETRY_DELAY,
        jitter: float = RETRY_JITTER,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.first, self.cap, self.jitter, self.uniform = first, cap, jitter, uniform
        self._next = first

    def delay(self) -> float:
        """The next delay (and double the one after it, up to the cap)."""
        delay = self._next * self.uniform(1 - self.jitter, 1 + self.jitter)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


@dataclass
class Handshake:
    """What the socket monitor said during one attempt: connected, secured, and broken off `broken` times."""

    connected: bool = False
    secured: bool = False
    broken: int = 0  # handshakes broken off without a status in this attempt

    def report(self, *, connected: bool = False, secured: bool = False, broken: int = 0) -> None:
        self.connected = self.connected or connected
        self.secured = self.secured or secured
        self.broken = max(self.broken, broken)

    def timed_out(self, endpoint: str, timeout: float) -> ConnectError:
        """The error for a first login that ran out of time, naming the likeliest cause."""
        if self.connected and not self.secured:
            if self.broken >= BROKEN_HANDSHAKES_WRONG_KEY:
                return ConnectError(
                    f"the broker at {endpoint} did not complete the encrypted handshake: the pinned"
                    " broker key is not this broker's key (copy its keys/broker.pub again), unless the broker"
                    " is turning the connection away for now"
                )
            return ConnectError(
                f"the broker at {endpoint} did not complete the encrypted handshake within"
                f" {timeout:g}s: it may be turning the connection away for now (too many handshakes"
                " or connections for this user or address, or a lockout), or be overloaded; try again later"
            )
        return ConnectError(
            f"the broker at {endpoint} did not answer within {timeout:g}s (is it running, and is this its key?)"
        )
