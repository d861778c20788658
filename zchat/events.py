"""What a client session hands to its user: typed, immutable events.

The terminal client prints them, bots match on them. They carry only data the
session has already opened and verified. `to_dict` is their one JSON encoding
(the records `--json` prints): each event names its `KIND` once, and its record
is made from its fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class UserInfo:
    """Someone online: name, key fingerprint, whether it is a bot, and its public key (DER)."""

    name: str
    fingerprint: str
    bot: bool
    key_der: bytes = field(repr=False)


def _json_time(value: float) -> float | None:
    """A time JSON can hold: None for NaN and infinities (which `json.dumps` would write as invalid JSON)."""
    return value if math.isfinite(value) else None


def _user_dict(user: UserInfo) -> dict[str, object]:
    return {"name": user.name, "fingerprint": user.fingerprint, "bot": user.bot}


def _json_value(value: Any) -> object:
    if isinstance(value, UserInfo):
        return _user_dict(value)
    if isinstance(value, tuple):
        return [_json_value(item) for item in value]
    return value


def json_field(key: str | None, *, time: bool = False) -> dict[str, object]:
    """A field's metadata for the --json record: written under `key` (None: left out); a `time` that is not a
    finite number is written as null."""
    return {"json": key, "time": time}


@dataclass(frozen=True)
class Event:
    """Base class of everything `ChatClient.receive()` returns. `KIND` is its "type" in the --json record,
    named once in its class statement (`class Notice(Event, kind="notice")`)."""

    KIND: ClassVar[str]

    def __init_subclass__(cls, *, kind: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.KIND = kind

    def record(self) -> dict[str, object]:
        """The --json record after its "type": every field, in order, under its name or as `json_field` says."""
        record: dict[str, object] = {}
        for item in fields(self):
            key = item.metadata.get("json", item.name)
            if key is not None:
                value = getattr(self, item.name)
                record[key] = _json_time(value) if item.metadata.get("time") else _json_value(value)
        return record


@dataclass(frozen=True)
class ChatMessage(Event, kind="chat"):
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

    def record(self) -> dict[str, object]:
        return {
            "from": self.sender,
            "text": self.text,
            "ts": _json_time(self.timestamp if self.received is None else self.received),
            "private": self.private,
            "action": self.action,
            "history": self.history,
            "away": self.away,
            "bot": self.bot,
            "id": self.message_id,
        }


@dataclass(frozen=True)
class Accepted(Event, kind="acked"):
    """The broker stored our message `message_id` and sent it on. `queued`: a private message for someone
    offline, delivered when they log in. `duplicate`: it had it already (we sent it again after a reconnect)."""

    message_id: str = field(metadata=json_field("id"))
    received: float = field(metadata=json_field("ts", time=True))
    queued: bool = False
    duplicate: bool = False
    # What we sent under this id (filled in by the client, which kept it until now; not the broker's word).
    text: str = field(default="", compare=False, metadata=json_field(None))
    to: str | None = field(default=None, compare=False, metadata=json_field(None))


@dataclass(frozen=True)
class Failed(Event, kind="failed"):
    """The broker did not deliver or keep our message `message_id`; `reason` says why. It will not be re-sent."""

    message_id: str = field(metadata=json_field("id"))
    reason: str
    # What we sent under this id (filled in by the client, which kept it until now; not the broker's word).
    text: str = field(default="", compare=False, metadata=json_field(None))
    to: str | None = field(default=None, compare=False, metadata=json_field(None))


@dataclass(frozen=True)
class KeyChanged(Event, kind="key_changed"):
    """Someone showed up with a key other than the one we pinned on first sight. Loud on purpose."""

    name: str
    pinned: str
    seen: str


@dataclass(frozen=True)
class Welcome(Event, kind="welcome"):
    """Login succeeded; `users` is everyone online, ourselves included."""

    name: str
    users: tuple[UserInfo, ...]


@dataclass(frozen=True)
class Joined(Event, kind="join"):
    user: UserInfo

    def record(self) -> dict[str, object]:
        return _user_dict(self.user)


@dataclass(frozen=True)
class Left(Event, kind="leave"):
    name: str
    reason: str


@dataclass(frozen=True)
class WhoList(Event, kind="who"):
    users: tuple[UserInfo, ...]


@dataclass(frozen=True)
class Notice(Event, kind="notice"):
    """A message from the broker to us alone, e.g. a refused command."""

    message: str


@dataclass(frozen=True)
class Shutdown(Event, kind="shutdown"):
    """The broker is stopping on purpose; the session is over and will not reconnect."""

    by: str


@dataclass(frozen=True)
class SessionClosed(Event, kind="closed"):
    """The broker ended our session for good (we logged in elsewhere, or our key was revoked); no reconnect."""

    reason: str


@dataclass(frozen=True)
class ConnectionLost(Event, kind="connection_lost"):
    """The broker went silent or dropped us; the client retries after `retry_in` seconds."""

    reason: str
    retry_in: float


def to_dict(event: Event) -> dict[str, object]:
    """A JSON-ready dict for an event (`chat_client.py --json` prints these, one per line)."""
    kind = getattr(event, "KIND", None)
    if not isinstance(event, Event) or kind is None:
        raise TypeError(f"not an event: {event!r}")
    return {"type": kind, **event.record()}
