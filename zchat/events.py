"""What a client session hands to its user: typed, immutable events.

The terminal client prints them, bots match on them. They carry only data the
session has already opened and verified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UserInfo:
    """Someone online: name, key fingerprint, whether it is a bot, and its public key (DER)."""

    name: str
    fingerprint: str
    bot: bool
    key_der: bytes = field(repr=False)


class Event:
    """Base class of everything `ChatClient.receive()` returns."""


@dataclass(frozen=True)
class ChatMessage(Event):
    """A message, its author verified. `private`: sent to us alone; `action`: a /me line;
    `history`: from before we logged in, replayed by the broker; `away`: a private message kept for us
    while we were offline; `bot`: its author logs in as a bot (as /who shows). `timestamp` is the author's
    claim; `received` the broker's receive time (Unix seconds), which is what clients show. `message_id`
    is the author's id for the message."""

    sender: str
    text: str
    timestamp: float
    private: bool = False
    action: bool = False
    history: bool = False
    received: float | None = None
    message_id: str = ""
    away: bool = False
    bot: bool = False


@dataclass(frozen=True)
class Accepted(Event):
    """The broker stored our message `message_id` and sent it on. `queued`: a private message for someone
    offline, delivered when they log in. `duplicate`: it had it already (we sent it again after a reconnect)."""

    message_id: str
    received: float
    queued: bool = False
    duplicate: bool = False
    # What we sent under this id (filled in by the client, which kept it until now; not the broker's word).
    text: str = field(default="", compare=False)
    to: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Failed(Event):
    """The broker did not deliver or keep our message `message_id`; `reason` says why. It will not be re-sent."""

    message_id: str
    reason: str
    # What we sent under this id (filled in by the client, which kept it until now; not the broker's word).
    text: str = field(default="", compare=False)
    to: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class KeyChanged(Event):
    """Someone showed up with a key other than the one we pinned on first sight. Loud on purpose."""

    name: str
    pinned: str
    seen: str


@dataclass(frozen=True)
class Welcome(Event):
    """Login succeeded; `users` is everyone online, ourselves included."""

    name: str
    users: tuple[UserInfo, ...]


@dataclass(frozen=True)
class Joined(Event):
    user: UserInfo


@dataclass(frozen=True)
class Left(Event):
    name: str
    reason: str


@dataclass(frozen=True)
class WhoList(Event):
    users: tuple[UserInfo, ...]


@dataclass(frozen=True)
class Notice(Event):
    """A message from the broker to us alone, e.g. a refused command."""

    message: str


@dataclass(frozen=True)
class Shutdown(Event):
    """The broker is stopping on purpose; the session is over and will not reconnect."""

    by: str


@dataclass(frozen=True)
class SessionClosed(Event):
    """The broker ended our session for good (we logged in elsewhere, or our key was revoked); no reconnect."""

    reason: str


@dataclass(frozen=True)
class ConnectionLost(Event):
    """The broker went silent or dropped us; the client retries after `retry_in` seconds."""

    reason: str
    retry_in: float


def _json_time(value: float) -> float | None:
    """A time JSON can hold: None for NaN and infinities (which `json.dumps` would write as invalid JSON)."""
    return value if math.isfinite(value) else None


def _user_dict(user: UserInfo) -> dict[str, object]:
    return {"name": user.name, "fingerprint": user.fingerprint, "bot": user.bot}


def to_dict(event: Event) -> dict[str, object]:
    """A JSON-ready dict for an event (`chat_client.py --json` prints these, one per line)."""
    if isinstance(event, ChatMessage):
        return {
            "type": "chat",
            "from": event.sender,
            "text": event.text,
            "ts": _json_time(event.timestamp if event.received is None else event.received),
            "private": event.private,
            "action": event.action,
            "history": event.history,
            "away": event.away,
            "bot": event.bot,
            "id": event.message_id,
        }
    if isinstance(event, Accepted):
        return {
            "type": "acked",
            "id": event.message_id,
            "ts": _json_time(event.received),
            "queued": event.queued,
            "duplicate": event.duplicate,
        }
    if isinstance(event, Failed):
        return {"type": "failed", "id": event.message_id, "reason": event.reason}
    if isinstance(event, KeyChanged):
        return {"type": "key_changed", "name": event.name, "pinned": event.pinned, "seen": event.seen}
    if isinstance(event, Welcome):
        return {"type": "welcome", "name": event.name, "users": [_user_dict(u) for u in event.users]}
    if isinstance(event, Joined):
        return {"type": "join", **_user_dict(event.user)}
    if isinstance(event, Left):
        return {"type": "leave", "name": event.name, "reason": event.reason}
    if isinstance(event, WhoList):
        return {"type": "who", "users": [_user_dict(u) for u in event.users]}
    if isinstance(event, Notice):
        return {"type": "notice", "message": event.message}
    if isinstance(event, Shutdown):
        return {"type": "shutdown", "by": event.by}
    if isinstance(event, SessionClosed):
        return {"type": "closed", "reason": event.reason}
    if isinstance(event, ConnectionLost):
        return {"type": "connection_lost", "reason": event.reason, "retry_in": event.retry_in}
    raise TypeError(f"not an event: {event!r}")
