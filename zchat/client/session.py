"""One client login session, without sockets: handshake, sealing, sequence numbers, verification.

`ClientSession` turns what the user wants to say into frames and frames from
the broker into typed events (`zchat.events`). It checks everything the broker
sends: the broker's proof of its pinned key, each delivery's session and
sequence number (so replayed, reordered or reflected frames are rejected), and
each chat message's author signature. It refuses a welcome whose numbers a broker's config could not hold
(heartbeats too fast or too slow to live by, a text limit out of range) or that does not list us with our own
key: a broker that says such things is not one to stay with. Messages it has shown once (an author and
a message id) are skipped when they come again, live, from the history or from
the mailbox: `SeenMessages` outlives a session, so a reconnect shows nothing twice.
"""

from __future__ import annotations

import collections
import enum
import logging
import secrets
import time
from dataclasses import dataclass

from zchat import crypto
from zchat import protocol as p
from zchat.errors import (
    BrokerBusy,
    ConnectError,
    DeliveryGap,
    LocalProtocolError,
    LoginRefused,
    RemoteProtocolError,
    StatementRefused,
    Unsendable,
)
from zchat.events import (
    Accepted,
    ChatMessage,
    Event,
    Failed,
    Joined,
    Left,
    Notice,
    SessionClosed,
    Shutdown,
    UserInfo,
    Welcome,
    WhoList,
)
from zchat.protocol import events as wire

log = logging.getLogger(__name__)

REFUSED_MESSAGE = (
    "login refused: the broker does not accept {name!r} with this key "
    "(is the name registered with this key, and is the broker key the right one?)"
)


SEEN_MESSAGES_KEPT = 10_000

# What a welcome may say: the bounds the broker's own config.json takes (zchat.config). A client believing a
# heartbeat_interval of 0 would PING without end, and one believing a heartbeat_timeout of 0 would never stay
# logged in long enough to return from its login.
HEARTBEAT_INTERVAL_RANGE = (0.05, 60.0)
HEARTBEAT_TIMEOUT_RANGE = (0.2, 600.0)
MAX_TEXT_BYTES_RANGE = (1, 1024 * 1024)


class SeenMessages:
    """The (author, message id) pairs of the last messages shown, oldest forgotten first."""

    def __init__(self, limit: int = SEEN_MESSAGES_KEPT) -> None:
        self.limit = limit
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def first_time(self, author: str, message_id: str) -> bool:
        """True the first time a message is seen (and remember it); False for a message seen before."""
        key = (author, message_id)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True


class State(enum.Enum):
    NEW = "new"
    HELLO_SENT = "hello sent"
    LOGIN_SENT = "login sent"
    READY = "ready"
    CLOSED = "closed"


@dataclass
class _Peer:
    info: UserInfo
    key: crypto.PublicKey
    last_statement: tuple[str, int] = ("", 0)


def check_chat(text: str, to: str | None, max_text_bytes: int) -> None:
    """Unsendable says why `text` (to the user `to`, when given) cannot be sent as a chat message."""
    problem = p.text_problem(text, max_text_bytes)
    if problem:
        raise Unsendable(problem)
    if to is not None and not p.NAME_PATTERN.fullmatch(to):
        raise Unsendable(f"invalid user name {to!r}")


class ClientSession:
    def __init__(
        self,
        name: str,
        key: crypto.PrivateKey,
        broker_key: crypto.PublicKey,
        *,
        bot: bool = False,
        history: bool = True,
        seen: SeenMessages | None = None,
    ) -> None:
        self.name = p.check_name(name)
        self.seen = SeenMessages() if seen is None else seen
        self.key = key
        self.fingerprint = crypto.fingerprint(key.public_key())
        self.broker_key = broker_key
        self.bot = bot
        self.history = history
        self.state = State.NEW
        self.max_text_bytes = p.DEFAULT_MAX_TEXT_BYTES
        self.heartbeat_interval = 1.0
        self.heartbeat_timeout = 6.0
        self.session_id = ""
        self._delivery_key = b""
        self._client_nonce = b""
        self._seq_out = 0
        self._seq_in = 0
        self._peers: dict[str, _Peer] = {}
        self._replaying_history = False  # history events may only follow the welcome, before anything else
        self._unacked_tag: bytes | None = None  # the last EVENT read and not yet acknowledged

    # ------------------------------------------------------------ outgoing

    def hello(self) -> list[bytes]:
        if self.state is not State.NEW:
            raise LocalProtocolError("hello() is the first step of a session")
        self._client_nonce = secrets.token_bytes(p.NONCE_BYTES)
        doc = p.Hello(self.name, self._client_nonce, self.bot, self.history).encode()
        self.state = State.HELLO_SENT
        return p.encode_frames(p.HELLO, crypto.seal(self.broker_key, doc, p.context(p.HELLO)))

    def say(self, text: str, *, to: str | None = None, action: bool = False, message_id: str = "") -> list[bytes]:
        """Frames for a chat message (private when `to` is given); LocalProtocolError says why it cannot be sent.

        `message_id` (`p.new_message_id()`, a fresh one when not given) names the message: the broker answers
        it with an Accepted or Failed event, and a re-send in a later session keeps the same id so it is
        delivered once.
        """
        message_id = message_id or p.new_message_id()
        check_chat(text, to, self.max_text_bytes)
        if not p.MESSAGE_ID_PATTERN.fullmatch(message_id):
            raise LocalProtocolError(f"invalid message id {message_id!r}")
        return self._statement("chat", text, to=to, action=action, message_id=message_id)

    def request(self, kind: str) -> list[bytes]:
        """Frames for a command statement: "who", "shutdown" or "bye"."""
        if kind == "chat":
            raise LocalProtocolError("use say() for chat messages")
        return self._statement(kind, "")

    def ping(self) -> list[bytes]:
        return p.encode_frames(p.PING)

    def ack(self) -> list[bytes] | None:
        """Frames acknowledging every EVENT read so far, or None when there is nothing new to acknowledge.

        The broker sends a session only so many bytes it has not acknowledged (flow control); a driver
        sends this after each batch of frames it read.
        """
        tag, self._unacked_tag = self._unacked_tag, None
        return None if tag is None else p.encode_frames(p.ACK, tag)

    def _statement(
        self, kind: str, body: str, *, to: str | None = None, action: bool = False, message_id: str = ""
    ) -> list[bytes]:
        if self.state is not State.READY:
            raise LocalProtocolError("not logged in")
        self._seq_out += 1
        statement = p.Statement.build(
            kind,
            self.name,
            self.session_id,
            self._seq_out,
            time.time(),
            body,
            to=to,
            action=action,
            message_id=message_id,
        )
        signature = crypto.sign(self.key, p.statement_signing_input(statement.text))
        doc = p.SignedStatement(statement.text, signature).encode()
        return p.encode_frames(p.SEND, crypto.seal(self.broker_key, doc, p.context(p.SEND)))

    # ------------------------------------------------------------ incoming

    def receive(self, frames: list[bytes]) -> tuple[list[Event], list[bytes] | None]:
        """Handle one broker message: (events for the user, frames to send back or None).

        Raises RemoteProtocolError for a frame to drop, ConnectError when the
        broker refused the login or failed to prove its key.
        """
        command, body = p.decode_frames(frames, p.BROKER_COMMANDS, p.MAX_BROKER_BODY)
        if command == p.PING:
            return [], None
        if command == p.REFUSED and self.state in (State.HELLO_SENT, State.LOGIN_SENT):
            self.state = State.CLOSED
            raise LoginRefused(REFUSED_MESSAGE.format(name=self.name))
        if command == p.BUSY and self.state in (State.HELLO_SENT, State.LOGIN_SENT):
            self.state = State.CLOSED
            raise BrokerBusy("the broker is busy (too many clients or logins); try again later")
        if command == p.EVICTED and self.state is State.READY:
            self.state = State.CLOSED
            return [Notice("the broker ended our session (we were too slow, or silent for too long)")], None
        if command == p.CHALLENGE and self.state is State.HELLO_SENT:
            return [], self._on_challenge(body)
        if command == p.EVENT and self.state in (State.LOGIN_SENT, State.READY):
            return self._on_event(body), None
        raise RemoteProtocolError(f"unexpected {command.decode()} in state {self.state.value}")

    def _on_challenge(self, body: bytes) -> list[bytes]:
        try:
            plaintext = crypto.open_envelope(self.key, body, p.context(p.CHALLENGE))
        except crypto.CryptoError:
            # Sealed to another key: the broker has a different key registered under our name.
            self.state = State.CLOSED
            raise LoginRefused(REFUSED_MESSAGE.format(name=self.name)) from None
        try:
            challenge = p.Challenge.decode(plaintext)
            if challenge.user != self.name or challenge.client_nonce != self._client_nonce:
                raise RemoteProtocolError("challenge for another login")
            proof = p.broker_proof_input(self.name, self._client_nonce, challenge.server_nonce, challenge.delivery_key)
            crypto.verify(self.broker_key, proof, challenge.signature)
        except (crypto.CryptoError, RemoteProtocolError):
            self.state = State.CLOSED
            raise ConnectError(
                "broker authentication failed: it could not prove it holds the pinned broker key"
            ) from None
        self.session_id = p.session_id(challenge.server_nonce)
        self._delivery_key = challenge.delivery_key
        login_proof = crypto.sign(self.key, p.login_proof_input(self.name, self._client_nonce, challenge.server_nonce))
        self.state = State.LOGIN_SENT
        return p.encode_frames(p.LOGIN, crypto.seal(self.broker_key, p.Login(login_proof).encode(), p.context(p.LOGIN)))

    def _on_event(self, body: bytes) -> list[Event]:
        try:
            plaintext = crypto.open_envelope(self.key, body, p.context(p.EVENT))
        except crypto.CryptoError:
            raise RemoteProtocolError("event did not open") from None
        delivery = wire.Delivery.open(plaintext, self._delivery_key)
        if delivery.session != self.session_id:
            raise RemoteProtocolError("event for another session")
        if delivery.seq <= self._seq_in:
            raise RemoteProtocolError(f"event sequence {delivery.seq} already seen")
        if delivery.seq > self._seq_in + 1:
            # Authentic (the MAC checked out) but not the next one: deliveries were lost in transit.
            raise DeliveryGap(f"event sequence {delivery.seq}, expected {self._seq_in + 1}")
        if self.state is State.LOGIN_SENT and delivery.kind != "welcome":
            raise RemoteProtocolError("first event is not a welcome")
        # Authentic and in order: it counts, and is acknowledged, even if we cannot use it (a newer event type, say).
        self._seq_in = delivery.seq
        self._unacked_tag = p.event_tag(body)
        try:
            return self._interpret(delivery)
        except RemoteProtocolError as exc:
            if delivery.kind == "welcome" and self.state is State.LOGIN_SENT:
                self.state = State.CLOSED
                raise ConnectError(f"the broker's welcome was unusable ({exc})") from None
            log.warning("ignored a %r event from the broker: %s", delivery.kind, exc)
            return []

    def _interpret(self, delivery: wire.Delivery) -> list[Event]:
        event = wire.decode_event(delivery.event, self.max_text_bytes)
        if isinstance(event, wire.WelcomeEvent):
            if self.state is not State.LOGIN_SENT or event.name != self.name:
                raise RemoteProtocolError("unexpected welcome")
            self._check_welcome(event)
            self._peers = {u.name: self._peer(u) for u in event.users}
            self.heartbeat_interval = event.heartbeat_interval
            self.heartbeat_timeout = event.heartbeat_timeout
            self.max_text_bytes = event.max_text_bytes
            self.state = State.READY
            self._replaying_history = True
            return [Welcome(self.name, event.users)]
        if isinstance(event, wire.ChatEvent):
            if event.away:
                raise RemoteProtocolError("a kept private message outside its sealed mail")
            return self._chat(event)
        self._replaying_history = False
        if isinstance(event, wire.MailEvent):
            return self._chat(self._open_mail(event))
        if isinstance(event, wire.JoinEvent | wire.LeaveEvent):
            return self._presence((event,))
        if isinstance(event, wire.PresenceEvent):
            return self._presence(event.changes)
        if isinstance(event, wire.WhoEvent):
            for user in event.users:
                self._peer(user)  # the same checks as the roster: a real key with that fingerprint
            return [WhoList(event.users)]
        if isinstance(event, wire.AcceptedEvent):
            return [Accepted(event.message_id, event.received, event.queued, event.duplicate)]
        if isinstance(event, wire.FailedEvent):
            return [Failed(event.message_id, event.reason)]
        if isinstance(event, wire.ErrorEvent):
            return [Notice(event.message)]
        if isinstance(event, wire.RefusedEvent):
            self.state = State.CLOSED
            named = f" (statement {event.seq}{', message ' + event.message_id if event.message_id else ''})"
            message = "the broker refused a statement" + (named if event.seq is not None else "")
            raise StatementRefused(message, event.seq, event.message_id)
        if isinstance(event, wire.ShutdownEvent):
            self.state = State.CLOSED
            return [Shutdown(event.by)]
        self.state = State.CLOSED  # ClosedEvent, the last one left
        return [SessionClosed(event.reason)]

    def _check_welcome(self, welcome: wire.WelcomeEvent) -> None:
        """RemoteProtocolError unless the welcome's numbers are ones a broker can be configured with, and its
        roster lists us (every entry under our name) with our own key."""
        interval, timeout, text = welcome.heartbeat_interval, welcome.heartbeat_timeout, welcome.max_text_bytes
        low, high = HEARTBEAT_INTERVAL_RANGE
        if not low <= interval <= high:
            raise RemoteProtocolError(f"heartbeat_interval {interval:g} s is outside {low:g}-{high:g} s")
        low, high = HEARTBEAT_TIMEOUT_RANGE
        if not low <= timeout <= high:
            raise RemoteProtocolError(f"heartbeat_timeout {timeout:g} s is outside {low:g}-{high:g} s")
        if timeout < 2 * interval:
            raise RemoteProtocolError(
                f"heartbeat_timeout {timeout:g} s is less than twice heartbeat_interval {interval:g} s"
            )
        low_bytes, high_bytes = MAX_TEXT_BYTES_RANGE
        if not low_bytes <= text <= high_bytes:
            raise RemoteProtocolError(f"max_text_bytes {text} is outside {low_bytes}-{high_bytes}")
        ours = [user for user in welcome.users if user.name == self.name]
        if not ours:
            raise RemoteProtocolError("its list of users online leaves us out")
        if any(user.fingerprint != self.fingerprint for user in ours):
            raise RemoteProtocolError("its list of users online gives us another key")

    def _open_mail(self, mail: wire.MailEvent) -> wire.ChatEvent:
        """A private message kept while we were away: sealed to our key, inside a chat event with `away`."""
        try:
            plaintext = crypto.open_envelope(self.key, mail.sealed, wire.MAIL_CONTEXT)
        except crypto.CryptoError:
            raise RemoteProtocolError("a kept message that does not open with our key") from None
        inner = wire.decode_event(p.load_doc(plaintext), self.max_text_bytes)
        if not isinstance(inner, wire.ChatEvent) or not inner.away:
            raise RemoteProtocolError("a kept message that is not a private message")
        return inner

    def _presence(self, changes: tuple[wire.JoinEvent | wire.LeaveEvent, ...]) -> list[Event]:
        """Joins and leaves, in order; the roster changes only if every one of them is well formed."""
        events: list[Event] = []
        updates: list[tuple[str, _Peer | None]] = []
        for change in changes:
            if isinstance(change, wire.JoinEvent):
                updates.append((change.user.name, self._peer(change.user)))
                events.append(Joined(change.user))
            else:
                updates.append((change.name, None))
                events.append(Left(change.name, change.reason))
        for name, peer in updates:
            if peer is None:
                self._peers.pop(name, None)
            else:
                self._peers[name] = peer
        return events

    @staticmethod
    def _peer(user: UserInfo) -> _Peer:
        try:
            key = crypto.public_key_from_der(user.key_der)
        except ValueError:
            raise RemoteProtocolError(f"bad key for {user.name}") from None
        if crypto.fingerprint(key) != user.fingerprint:
            raise RemoteProtocolError(f"fingerprint mismatch for {user.name}")
        return _Peer(user, key)

    @property
    def roster(self) -> dict[str, UserInfo]:
        """Who is online, as the broker last told us."""
        return {name: peer.info for name, peer in self._peers.items()}

    def _chat(self, event: wire.ChatEvent) -> list[Event]:
        """A verified ChatMessage, or nothing for a message shown before (same author and message id)."""
        message = self._verify_chat(event)
        if not self.seen.first_time(message.sender, message.message_id):
            log.debug("skipped a message from %s shown before", message.sender)
            return []
        return [message]

    def _verify_chat(self, event: wire.ChatEvent) -> ChatMessage:
        signed = event.statement
        statement = p.Statement.parse(signed.statement)
        if event.history and not self._replaying_history:
            raise RemoteProtocolError("history outside the replay that follows the welcome")
        if not event.away:
            self._replaying_history = event.history
        if event.author is not None:  # history or mail: the author may be gone; the broker names the key it registered
            peer = self._peer(event.author)
            if peer.info.name != statement.sender:
                raise RemoteProtocolError("a kept message that names another author")
        else:
            found = self._peers.get(statement.sender)
            if found is None:
                raise RemoteProtocolError("chat from someone not online")
            peer = found
        if statement.timestamp is None:
            raise RemoteProtocolError("chat whose time stamp is not a time")
        if statement.kind != "chat" or statement.to not in (None, self.name):
            raise RemoteProtocolError("not a chat message for us")
        if event.away and statement.to is None:
            raise RemoteProtocolError("a kept message to the room")
        try:
            crypto.verify(peer.key, p.statement_signing_input(signed.statement), signed.signature)
        except crypto.CryptoError:
            raise RemoteProtocolError(f"bad author signature on a message from {statement.sender}") from None
        if p.text_problem(statement.body, self.max_text_bytes):
            raise RemoteProtocolError("unacceptable message text")
        if event.author is None:
            last_session, last_seq = peer.last_statement
            if statement.session == last_session and statement.seq <= last_seq:
                raise RemoteProtocolError(f"replayed message from {statement.sender}")
            peer.last_statement = (statement.session, statement.seq)
        return ChatMessage(
            statement.sender,
            statement.body,
            statement.timestamp,
            private=statement.to is not None,
            action=statement.action,
            history=event.history,
            received=event.received,
            message_id=statement.message_id,
            away=event.away,
            bot=peer.info.bot,
        )
