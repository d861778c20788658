"""Rate limits the broker keeps per source: token buckets, and a log that a peer cannot flood.

`TokenBucket` allows `rate` events per second with bursts. `PeerLog` writes a
log line about a peer only while that peer (and all peers together) stay under
a budget per window; what it holds back is counted and reported as one
summary line per window, so malformed frames cost the log a few lines, not
one line each; its windows go by the times its flushes are given (no clock is
read here). `short()` names a connection in the log without showing its
routing id.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from dataclasses import dataclass

LOG_WINDOW = 10.0  # seconds
LOG_LINES_PER_SOURCE = 20  # per window
LOG_LINES_IN_ALL = 200  # per window, every source together
MAX_LOG_SOURCES = 10_000  # sources counted in one window; more are summed up together

_LOG_KEY = secrets.token_bytes(16)  # this process's: the same connection gets the same name in one log


def short(identity: bytes) -> str:
    """A name for a connection in the log that does not show its routing id: libzmq numbers connections with a
    counter a peer must not learn (zchat.broker.admission.RoutingIds)."""
    return hashlib.blake2b(identity, key=_LOG_KEY, digest_size=5).hexdigest()


@dataclass
class TokenBucket:
    """`rate` events per second with bursts of up to `capacity`."""

    rate: float
    capacity: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, now: float) -> TokenBucket:
        capacity = max(1.0, 2 * rate)
        return cls(rate, capacity, capacity, now)

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def idle(self, now: float) -> bool:
        """True when the bucket would be full again: forgetting it changes nothing."""
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


_PEER_LOGS: list[PeerLog] = []


def flush_peer_logs(now: float) -> None:
    """Write the summaries of every PeerLog whose window has ended by `now` (an I/O loop calls this every turn)."""
    for peer_log in _PEER_LOGS:
        peer_log.flush(now)


class PeerLog:
    """Log lines caused by peers, at most LOG_LINES_PER_SOURCE per source and LOG_LINES_IN_ALL in all per window.

    It reads no clock: a window ends at the first `flush(now)` at least LOG_WINDOW after the one that started it
    (the first flush starts the first window).
    """

    def __init__(self, logger: logging.Logger) -> None:
        _PEER_LOGS.append(self)
        self.lock = threading.Lock()  # the broker's loop and its gatekeeper thread both flush every PeerLog
        self.logger = logger
        self.window_start: float | None = None  # set by the first flush
        self.lines: dict[str, int] = {}
        self.written = 0
        self.suppressed: dict[str, int] = {}

    def log(self, level: int, source: str, message: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        with self.lock:
            count = self.lines.get(source, 0)
            if count >= LOG_LINES_PER_SOURCE or self.written >= LOG_LINES_IN_ALL:
                known = source in self.suppressed or len(self.suppressed) < MAX_LOG_SOURCES
                key = source if known else "other sources"
                self.suppressed[key] = self.suppressed.get(key, 0) + 1
                return
            if len(self.lines) < MAX_LOG_SOURCES:
                self.lines[source] = count + 1
            self.written += 1
        self.logger.log(level, message, *args)

    def info(self, source: str, message: str, *args: object) -> None:
        self.log(logging.INFO, source, message, *args)

    def warning(self, source: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, source, message, *args)

    def flush(self, now: float) -> None:
        """Write the summary of a window that has ended by `now`, and start the next one."""
        with self.lock:
            self._roll(now)

    def _roll(self, now: float) -> None:
        if self.window_start is None:
            self.window_start = now
            return
        if now - self.window_start < LOG_WINDOW:
            return
        if self.suppressed:
            total = sum(self.suppressed.values())
            worst = sorted(self.suppressed.items(), key=lambda item: -item[1])[:3]
            self.logger.warning(
                "suppressed %d log lines about peers in the last %.0f s (most: %s)",
                total,
                now - self.window_start,
                ", ".join(f"{source} {count}" for source, count in worst),
            )
        self.window_start, self.lines, self.written, self.suppressed = now, {}, 0, {}
