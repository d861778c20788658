"""What the broker sends a session, without I/O: the sealed delivery and the typed events it carries.

An EVENT body opens to a delivery (`seal_delivery`, `Delivery.open`): the session's id, a sequence number and
one event object, MACed under the session's delivery key. One typed class per event type, encoded by the broker
(`to_doc()`) and decoded by the client (`decode_event()`) through the same code; each class names its `"type"`
tag once (`TYPE`). Decoding checks types and ranges; what a field means (is a key real, does a signature verify)
is the client session's business. What a client hands its user is `zchat.events`, not these.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self, get_args

from zchat import crypto
from zchat.errors import RemoteProtocolError
from zchat.events import UserInfo
from zchat.protocol import (
    DEFAULT_MAX_TEXT_BYTES,
    MARKER,
    MAX_BROKER_BODY,
    SignedStatement,
    b64,
    delivery_mac_input,
    dump_doc,
    get_b64,
    get_bool,
    get_float,
    get_int,
    get_message_id,
    get_name,
    get_str,
    get_timestamp,
    load_doc,
)

# ---------------------------------------------------------------- users and deliveries


def user_info_doc(user: UserInfo) -> dict[str, Any]:
    return {"name": user.name, "key": b64(user.key_der), "fingerprint": user.fingerprint, "bot": user.bot}


def parse_user_info(doc: Any) -> UserInfo:
    if not isinstance(doc, dict):
        raise RemoteProtocolError("user entry is not an object")
    return UserInfo(get_name(doc, "name"), get_str(doc, "fingerprint"), get_bool(doc, "bot"), get_b64(doc, "key"))


def parse_user_list(doc: dict[str, Any], key: str) -> tuple[UserInfo, ...]:
    users = doc.get(key)
    if not isinstance(users, list):
        raise RemoteProtocolError(f"field {key!r} is not a list")
    return tuple(parse_user_info(entry) for entry in users)


def seal_delivery(delivery_key: bytes, session: str, seq: int, event: dict[str, Any] | str) -> bytes:
    """The EVENT plaintext: the delivery JSON and its HMAC under the session's delivery key.

    `event` may come as its JSON text already (`dump_doc(event)` decoded), so a broadcast serialises it once.
    """
    event_json = event if isinstance(event, str) else dump_doc(event).decode("utf-8")
    delivery = '{"session":' + json.dumps(session) + ',"seq":' + str(int(seq)) + ',"event":' + event_json + "}"
    tag = crypto.mac(delivery_key, delivery_mac_input(delivery))
    return dump_doc({"delivery": delivery, "mac": b64(tag)})


@dataclass(frozen=True)
class Delivery:
    session: str
    seq: int
    event: dict[str, Any]
    kind: str

    @classmethod
    def open(cls, data: bytes, delivery_key: bytes) -> Delivery:
        """Check the MAC, then parse; anything wrong raises RemoteProtocolError."""
        outer = load_doc(data)
        delivery = get_str(outer, "delivery")
        try:
            crypto.verify_mac(delivery_key, delivery_mac_input(delivery), get_b64(outer, "mac", 32))
        except crypto.CryptoError:
            raise RemoteProtocolError("delivery MAC does not verify") from None
        doc = load_doc(delivery)
        event = doc.get("event")
        if not isinstance(event, dict):
            raise RemoteProtocolError("delivery without event object")
        return cls(get_str(doc, "session"), get_int(doc, "seq", 1), event, get_str(event, "type"))


# ---------------------------------------------------------------- how a field goes on the wire

Reader = Callable[[dict[str, Any], str], Any]


def _as_is(value: Any) -> Any:
    return value


def wire(read: Reader, write: Callable[[Any], Any] = _as_is, key: str = "") -> dict[str, Any]:
    """A field's metadata: `read` checks it in a document, `write` makes its JSON value, `key` names it (else the
    field's own name)."""
    return {"wire": (key, read, write)}


def _users_doc(users: tuple[UserInfo, ...]) -> list[dict[str, Any]]:
    return [user_info_doc(u) for u in users]


def _read_user(doc: dict[str, Any], key: str) -> UserInfo:
    return parse_user_info(doc.get(key))


def _read_text_cap(doc: dict[str, Any], key: str) -> int:
    return get_int(doc, key, 1, 1 << 24)


def _read_sealed(doc: dict[str, Any], key: str) -> bytes:
    return get_b64(doc, key, max_length=MAX_BROKER_BODY)


@dataclass(frozen=True)
class WireEvent:
    """Base of the broker's events. `TYPE` is the event's "type" tag, named once in its class statement
    (`class LeaveEvent(WireEvent, tag="leave")`). By default every field is written and read as its metadata
    (`wire()`) says, in the order of the fields; an event with optional keys writes and reads its own."""

    TYPE: ClassVar[str]

    def __init_subclass__(cls, *, tag: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.TYPE = tag

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.TYPE}
        for item in fields(self):
            key, _, write = item.metadata["wire"]
            doc[key or item.name] = write(getattr(self, item.name))
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Self:
        values = []
        for item in fields(cls):
            key, read, _ = item.metadata["wire"]
            values.append(read(doc, key or item.name))
        return cls(*values)


# ---------------------------------------------------------------- events (what a delivery carries)


@dataclass(frozen=True)
class WelcomeEvent(WireEvent, tag="welcome"):
    name: str = field(metadata=wire(get_name))
    users: tuple[UserInfo, ...] = field(metadata=wire(parse_user_list, _users_doc))
    heartbeat_interval: float = field(metadata=wire(get_float))
    heartbeat_timeout: float = field(metadata=wire(get_float))
    max_text_bytes: int = field(metadata=wire(_read_text_cap))


@dataclass(frozen=True)
class ChatEvent(WireEvent, tag="chat"):
    """A chat statement relayed with its author's signature, stamped with the broker's `received` time.

    `history`: replayed from the room's history after the welcome; `away`: a private message kept while its
    recipient was offline. Both come with `author`, the author's user object (the author may be offline).
    """

    statement: SignedStatement
    received: float
    author: UserInfo | None = None
    history: bool = False
    away: bool = False

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.TYPE, **self.statement.to_doc(), "received": self.received}
        if self.history:
            doc["history"] = True
        if self.away:
            doc["away"] = True
        if self.author is not None:
            doc["author"] = user_info_doc(self.author)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any], max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> Self:
        history, away = doc.get("history") is True, doc.get("away") is True
        author = parse_user_info(doc.get("author")) if history or away else None
        statement = SignedStatement.from_doc(doc, max_text_bytes)
        return cls(statement, get_timestamp(doc, "received"), author, history, away)


@dataclass(frozen=True)
class MailEvent(WireEvent, tag="mail"):
    """A private message kept for us while we were away: a `chat` event (with `away` and `author`) sealed to our
    own key when the broker stored it, so that only we can read it (context MAIL_CONTEXT)."""

    sealed: bytes = field(metadata=wire(_read_sealed, b64))


MAIL_CONTEXT = MARKER + b"|MAIL"


@dataclass(frozen=True)
class JoinEvent(WireEvent, tag="join"):
    user: UserInfo = field(metadata=wire(_read_user, user_info_doc))


@dataclass(frozen=True)
class LeaveEvent(WireEvent, tag="leave"):
    name: str = field(metadata=wire(get_name))
    reason: str = field(metadata=wire(get_str))


_PRESENCE_CHANGES: dict[str, type[JoinEvent | LeaveEvent]] = {kind.TYPE: kind for kind in (JoinEvent, LeaveEvent)}


@dataclass(frozen=True)
class PresenceEvent(WireEvent, tag="presence"):
    """Several joins and leaves for one member, in the order they happened."""

    changes: tuple[JoinEvent | LeaveEvent, ...]

    def to_doc(self) -> dict[str, Any]:
        return {"type": self.TYPE, "changes": [change.to_doc() for change in self.changes]}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Self:
        changes = doc.get("changes")
        if not isinstance(changes, list) or not changes:
            raise RemoteProtocolError("presence without changes")
        parsed: list[JoinEvent | LeaveEvent] = []
        for change in changes:
            kind = change.get("type") if isinstance(change, dict) else None
            known = _PRESENCE_CHANGES.get(kind) if isinstance(kind, str) else None
            if known is None:
                raise RemoteProtocolError(f"a presence change of type {kind!r}")
            parsed.append(known.from_doc(change))
        return cls(tuple(parsed))


@dataclass(frozen=True)
class WhoEvent(WireEvent, tag="who"):
    users: tuple[UserInfo, ...] = field(metadata=wire(parse_user_list, _users_doc))


@dataclass(frozen=True)
class AcceptedEvent(WireEvent, tag="accepted"):
    """Our chat statement `id` is kept by the broker (committed to its database) and on its way.

    `queued`: a private message whose recipient is offline, stored until they log in. `duplicate`: the broker had
    already accepted a statement with this id (a re-send); nothing was delivered again.
    """

    message_id: str
    received: float
    queued: bool = False
    duplicate: bool = False

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.TYPE, "id": self.message_id, "received": self.received}
        if self.queued:
            doc["queued"] = True
        if self.duplicate:
            doc["duplicate"] = True
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Self:
        return cls(
            get_message_id(doc, "id"),
            get_timestamp(doc, "received"),
            doc.get("queued") is True,
            doc.get("duplicate") is True,
        )


@dataclass(frozen=True)
class FailedEvent(WireEvent, tag="failed"):
    """Our chat statement `id` was not delivered and not kept; `reason` is for a person to read."""

    message_id: str = field(metadata=wire(get_message_id, key="id"))
    reason: str = field(metadata=wire(get_str))


@dataclass(frozen=True)
class RefusedEvent(WireEvent, tag="refused"):
    """A SEND of ours failed the broker's checks; the session is over, log in again and re-send.

    `seq` and `message_id` name the statement when the broker could read them (None and "" otherwise).
    """

    seq: int | None
    message_id: str

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.TYPE}
        if self.seq is not None:
            doc["seq"] = self.seq
        if self.message_id:
            doc["id"] = self.message_id
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Self:
        seq = get_int(doc, "seq", 1) if "seq" in doc else None
        return cls(seq, get_message_id(doc, "id") if "id" in doc else "")


@dataclass(frozen=True)
class ErrorEvent(WireEvent, tag="error"):
    message: str = field(metadata=wire(get_str))


@dataclass(frozen=True)
class ClosedEvent(WireEvent, tag="closed"):
    reason: str = field(metadata=wire(get_str))


@dataclass(frozen=True)
class ShutdownEvent(WireEvent, tag="shutdown"):
    by: str = field(metadata=wire(get_str))


BrokerEvent = (
    WelcomeEvent
    | ChatEvent
    | MailEvent
    | JoinEvent
    | LeaveEvent
    | PresenceEvent
    | WhoEvent
    | AcceptedEvent
    | FailedEvent
    | RefusedEvent
    | ErrorEvent
    | ClosedEvent
    | ShutdownEvent
)

# Every event of BrokerEvent by its tag; a chat event is read apart, with the text cap.
_EVENT_CLASSES: dict[str, Any] = {kind.TYPE: kind for kind in get_args(BrokerEvent) if kind is not ChatEvent}


def decode_event(doc: dict[str, Any], max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> BrokerEvent:
    """The typed event for a delivery's `event` object; RemoteProtocolError for an unknown type or a bad field."""
    kind = get_str(doc, "type")
    if kind == ChatEvent.TYPE:
        return ChatEvent.from_doc(doc, max_text_bytes)
    cls = _EVENT_CLASSES.get(kind)
    if cls is None:
        raise RemoteProtocolError(f"unknown event type {kind!r}")
    event: BrokerEvent = cls.from_doc(doc)
    return event
