"""Joins and leaves on their way to the members: batched per session, sent at most once per interval.

A join or leave waits for each member it is for until that member's next event
(a member hears of a user before hearing from them) or the next flush, at most
once per `presence_interval`: a change after a quiet spell goes out at once, and
in a login storm or a mass disconnect each member gets one event for many
changes, not one sealed event per change. No sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zchat.protocol import events as wire

Change = wire.JoinEvent | wire.LeaveEvent


class Presence:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.waiting: dict[bytes, list[Change]] = {}  # per session: the joins and leaves not yet sent to it
        self.last_flush = float("-inf")

    def announce(self, change: Change, to: Iterable[bytes]) -> None:
        """A join or leave for the sessions `to`; it waits for `flush()` or their next event."""
        for identity in to:
            self.waiting.setdefault(identity, []).append(change)

    def take(self, identity: bytes) -> list[dict[str, Any]]:
        """The joins and leaves waiting for one session, as the one event that carries them (none if none wait)."""
        return _events(self.waiting.pop(identity, []))

    def forget(self, identity: bytes) -> None:
        self.waiting.pop(identity, None)

    def due(self, now: float) -> float | None:
        """Seconds until `flush()` will send what waits; None when nothing waits."""
        if not self.waiting:
            return None
        return max(0.0, self.last_flush + self.interval - now)

    def flush(self, now: float) -> dict[bytes, list[dict[str, Any]]]:
        """Each session's joins and leaves that go out now, as one event: none before the interval has passed."""
        if not self.waiting or now - self.last_flush < self.interval:
            return {}
        self.last_flush = now
        ready, self.waiting = self.waiting, {}
        return {identity: _events(changes) for identity, changes in ready.items()}


def _events(changes: list[Change]) -> list[dict[str, Any]]:
    if not changes:
        return []
    return [changes[0].to_doc() if len(changes) == 1 else wire.PresenceEvent(tuple(changes)).to_doc()]
