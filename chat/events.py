"""What a client session hands to its user: typed, immutable events.

The terminal client prints them, bots match on them. They carry only data the
session has already opened and verified.
"""

from __future__ import annotations

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
    sender: str
    text: str
    timestamp: float


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
class ConnectionLost(Event):
    """The broker went silent or dropped us; the client retries after `retry_in` seconds."""

    reason: str
    retry_in: float
