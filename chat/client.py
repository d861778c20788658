"""`ChatClient`: a logged-in chat session over a ZeroMQ DEALER socket, for people and bots.

    from chat.client import ChatClient

    with ChatClient.connect("127.0.0.1", 5000, "echo", "keys/private/echo.pem", bot=True) as bot:
        for event in bot:
            ...

It owns the socket, heartbeats, and reconnection: when the broker goes silent
it emits `ConnectionLost`, retries with exponential backoff and logs in again
(never after a deliberate shutdown). Protocol rules live in `chat.session`.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import zmq

import crypto
from chat.errors import BrokerBusy, ConnectError, DeliveryGap, RemoteProtocolError
from chat.events import (
    ConnectionLost,
    Event,
    Joined,
    KeyChanged,
    Notice,
    SessionClosed,
    Shutdown,
    UserInfo,
    Welcome,
    WhoList,
)
from chat.pins import PinStore, pins_path_for
from chat.protocol import NAME_PATTERN, text_problem
from chat.session import ClientSession, State
from chat.transport import (
    HandshakeState,
    broker_curve_key,
    curve_dealer,
    read_monitor,
    stop_watching,
    watch_handshake,
)

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_QUEUED_WHILE_OFFLINE = 1000
MAX_FRAMES_PER_POLL = 100


class _Outgoing(NamedTuple):
    text: str
    to: str | None
    action: bool


def _users_in(event: Event) -> tuple[UserInfo, ...]:
    if isinstance(event, Welcome | WhoList):
        return event.users
    if isinstance(event, Joined):
        return (event.user,)
    return ()


def load_keys(
    key_path: str | Path, broker_key_path: str | Path, passphrase: str | None = None
) -> tuple[crypto.PrivateKey, crypto.PublicKeyFile]:
    """Load the user's private key and the pinned broker key file (crypto.KeyFileError says what is wrong)."""
    broker = crypto.load_public_key_file(Path(broker_key_path))
    broker_curve_key(broker, str(broker_key_path))
    return crypto.load_private_key(Path(key_path), passphrase), broker


class ChatClient:
    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        key: crypto.PrivateKey,
        broker_key: crypto.PublicKeyFile,
        *,
        bot: bool = False,
        history: bool = True,
        reconnect: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        pins_path: Path | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ConnectError(f"port must be from 1 to 65535, not {port}")
        self.endpoint = f"tcp://{host}:{port}"
        self.name = name
        self.key = key
        self.broker_key = broker_key.rsa
        self.broker_curve = broker_curve_key(broker_key, "the broker's public key")
        self.curve_secret = crypto.curve_secret(key)  # the transport's key, derived once
        self.bot = bot
        self.history = history
        self.pins = PinStore(pins_path)
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self._own_context = context is None
        self._context: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None
        self._handshake: zmq.Socket[bytes] | None = None  # the socket monitor: connected, secured, refused
        self._transport = HandshakeState()
        self.session = ClientSession(name, key, self.broker_key, bot=bot, history=history)
        self._events: collections.deque[Event] = collections.deque()
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._ever_logged_in = False
        self._closed = False
        self._attempt_deadline = 0.0
        self._retry_at: float | None = None
        self._retry_delay = FIRST_RETRY_DELAY
        self._last_heard = 0.0
        self._last_sent = 0.0

    # ------------------------------------------------------------ construction

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        name: str,
        key_path: str | Path,
        broker_key_path: str | Path = "keys/broker.pub",
        *,
        passphrase: str | None = None,
        bot: bool = False,
        history: bool = True,
        reconnect: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> ChatClient:
        """Load keys, connect and log in; raises ConnectError or crypto.KeyFileError with a clear message.

        Other users' key fingerprints are pinned on first sight in a file next to the key (`KeyChanged` events).
        """
        key, broker_key = load_keys(key_path, broker_key_path, passphrase)
        client = cls(
            host,
            port,
            name,
            key,
            broker_key,
            bot=bot,
            history=history,
            reconnect=reconnect,
            connect_timeout=connect_timeout,
            pins_path=pins_path_for(Path(key_path)),
        )
        try:
            client.login()
        except BaseException:
            client.close(say_bye=False)
            raise
        return client

    def login(self) -> None:
        """Connect and log in, blocking until the broker welcomed us (or ConnectError)."""
        self.start_login()
        while self.session.state is not State.READY:
            self.poll(0.1)

    def start_login(self) -> None:
        """Connect and send the first login message without waiting: `poll()` carries the login on.

        For programs that drive many clients from one loop (blocking in `login()`
        would starve the others' heartbeats). A `Welcome` event says it is done.
        """
        self._start_attempt(time.monotonic())

    # ------------------------------------------------------------ what a user does

    @property
    def online(self) -> bool:
        """Logged in right now."""
        return self.session.state is State.READY

    @property
    def roster(self) -> dict[str, UserInfo]:
        """Who is online, as the broker last told us (name -> UserInfo)."""
        return self.session.roster

    @property
    def closed(self) -> bool:
        """Closed for good: by close(), the broker's shutdown, or the broker ending the session."""
        return self._closed

    def send(self, text: str, *, to: str | None = None, action: bool = False) -> None:
        """Send a chat message to everyone else, or only to `to`. ValueError if the text cannot be sent.

        `action` marks a /me line. The broker answers a private message to someone offline with a Notice.

        While reconnecting, messages are queued (up to 1000; more raise ConnectError)
        and sent after the next login.
        """
        problem = text_problem(text, self.session.max_text_bytes)
        if problem:
            raise ValueError(problem)
        if len(self._outbox) >= MAX_QUEUED_WHILE_OFFLINE:
            raise ConnectError(f"not connected, and {MAX_QUEUED_WHILE_OFFLINE} messages are already waiting")
        if to is not None and not NAME_PATTERN.fullmatch(to):
            raise ValueError(f"invalid user name {to!r}")
        self._outbox.append(_Outgoing(text, to, action))
        self._flush_outbox()

    def who(self) -> None:
        """Ask who is online; the answer arrives as a WhoList event."""
        self._request("who")

    def request_shutdown(self) -> None:
        """Ask the broker to stop (admins only; others get a Notice)."""
        self._request("shutdown")

    def receive(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds (None waits forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            if self._closed:
                return None
            remaining = 0.5 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.poll(min(remaining, 0.5))
        return self._events.popleft()

    def __iter__(self) -> Iterator[Event]:
        """Every event, the last one included, until the client is closed (by you, a shutdown or the broker)."""
        while (event := self.receive(None)) is not None:
            yield event

    def close(self, say_bye: bool = True) -> None:
        """Leave the chat (telling the broker when logged in) and close the socket. Idempotent."""
        self._closed = True
        if self._socket is not None:
            if say_bye and self.online:
                self._send(self.session.request("bye"))
                self._close_socket(linger=1000)
            else:
                self._close_socket()
        self.session.state = State.CLOSED
        if self._own_context and not self._context.closed:
            self._context.term()  # waits for the goodbye to be flushed (bounded by linger)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ the loop

    def poll(self, timeout: float, also: Sequence[zmq.Socket[bytes]] = ()) -> list[zmq.Socket[bytes]]:
        """Wait up to `timeout` seconds for the broker or the sockets in `also`.

        Queues any events (take them with `receive()` or `drain()`), keeps
        heartbeats and reconnection going, and returns which `also` sockets
        are readable, so a program can run one poll loop over the chat and its
        own input. Raises ConnectError when the first login fails.
        """
        poller = zmq.Poller()
        if self._socket is not None:
            poller.register(self._socket, zmq.POLLIN)
        if self._handshake is not None:
            poller.register(self._handshake, zmq.POLLIN)
        for sock in also:
            poller.register(sock, zmq.POLLIN)
        ready = dict(poller.poll(int(max(0.0, timeout) * 1000)))
        if (
            self._handshake is not None
            and self._handshake in ready
            and read_monitor(self._handshake, self._transport).refused
        ):
            self._key_refused()
        if self._socket is not None and self._socket in ready:
            self._read_socket()
        self._maintain(time.monotonic())
        return [sock for sock in also if sock in ready]

    def drain(self) -> list[Event]:
        """All events received so far."""
        events = list(self._events)
        self._events.clear()
        return events

    def _read_socket(self) -> None:
        # Bounded: under a flood of deliveries the loop must still get round to sending heartbeats.
        for _ in range(MAX_FRAMES_PER_POLL):
            if self._socket is None:
                return
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._last_heard = time.monotonic()
            try:
                events, reply = self.session.receive(frames)
            except DeliveryGap as exc:
                log.warning("deliveries from the broker were lost (%s); logging in again", exc)
                self._connection_lost("messages from the broker were lost on the way", time.monotonic())
                return
            except RemoteProtocolError as exc:
                log.debug("dropped a frame from the broker: %s", exc)
                continue
            except BrokerBusy:
                if not self._ever_logged_in:
                    self.close(say_bye=False)
                    raise
                self._connection_lost("the broker is busy", time.monotonic())
                return
            except ConnectError:
                self.close(say_bye=False)
                raise
            except Exception:  # our bug, on one frame: skip it, keep the session
                log.exception("could not handle a frame from the broker; skipped it")
                continue
            if reply is not None:
                self._send(reply)
            for event in events:
                self._on_event(event)
        self._acknowledge()

    def _acknowledge(self) -> None:
        """Tell the broker what we have read, so it sends more (its flow control)."""
        if self._socket is not None:
            ack = self.session.ack()
            if ack is not None:
                self._send(ack)

    def _on_event(self, event: Event) -> None:
        for user in _users_in(event):
            pinned = self.pins.check(user.name, user.fingerprint)
            if pinned is not None and user.name != self.name:
                self._events.append(KeyChanged(user.name, pinned, user.fingerprint))
        if isinstance(event, Welcome):
            self._retry_delay = FIRST_RETRY_DELAY
            self._ever_logged_in = True
            self._flush_outbox()
        self._events.append(event)
        if isinstance(event, Shutdown | SessionClosed):
            self.close(say_bye=False)
        elif isinstance(event, Notice) and self.session.state is State.CLOSED:
            self._connection_lost("evicted by the broker", time.monotonic())

    def _flush_outbox(self) -> None:
        """Send queued messages while logged in; a message the socket refuses goes back to the front."""
        while self._outbox and self.online:
            message = self._outbox.popleft()
            if not self._send(self.session.say(message.text, to=message.to, action=message.action)):
                # The statement number is spent: only a fresh session can continue in order.
                self._outbox.appendleft(message)
                self._connection_lost("the queue to the broker is full", time.monotonic())

    def _maintain(self, now: float) -> None:
        if self._closed:
            return
        state = self.session.state
        if self._retry_at is not None:
            if now >= self._retry_at:
                self._start_attempt(now)
        elif state in (State.HELLO_SENT, State.LOGIN_SENT):
            if now > self._attempt_deadline:
                if not self._ever_logged_in:
                    self.close(say_bye=False)
                    if self._transport.connected and not self._transport.secured:
                        raise ConnectError(
                            f"the broker at {self.endpoint} did not complete the encrypted handshake: the pinned"
                            " broker key is not this broker's key (copy its keys/broker.pub again)"
                        )
                    raise ConnectError(
                        f"the broker at {self.endpoint} did not answer within {self.connect_timeout:g}s"
                        " (is it running, and is this its key?)"
                    )
                self._connection_lost("login attempt timed out", now)
        elif state is State.READY:
            if now - self._last_heard > self.session.heartbeat_timeout:
                self._connection_lost("the broker stopped answering", now)
            elif now - self._last_sent >= self.session.heartbeat_interval:
                self._send(self.session.ping())

    def _key_refused(self) -> None:
        """The broker refused our key at the transport: it is not registered there, or no longer."""
        self.close(say_bye=False)
        if not self._ever_logged_in:
            raise ConnectError(
                f"login refused: the broker does not accept {self.name!r} with this key (is the user registered?)"
            )
        self._events.append(SessionClosed("the broker no longer accepts your key"))

    def _close_socket(self, linger: int = 0) -> None:
        if self._socket is not None and self._handshake is not None:
            stop_watching(self._socket, self._handshake)
        if self._socket is not None:
            self._socket.close(linger=linger)
        self._socket, self._handshake = None, None

    def _connection_lost(self, reason: str, now: float) -> None:
        self._close_socket()
        self.session.state = State.CLOSED
        if not self.reconnect:
            self.close(say_bye=False)
            raise ConnectError(f"connection to the broker lost: {reason}")
        delay = self._retry_delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
        self._retry_delay = min(self._retry_delay * 2, MAX_RETRY_DELAY)
        self._retry_at = now + delay
        self._events.append(ConnectionLost(reason, round(delay, 1)))

    def _start_attempt(self, now: float) -> None:
        self._retry_at = None
        self._close_socket()
        self._socket = curve_dealer(self._context, self.curve_secret, self.broker_curve)
        self._handshake = watch_handshake(self._socket)  # before connecting: its first event is not missed
        self._transport = HandshakeState()
        self._socket.connect(self.endpoint)
        self.session = ClientSession(self.name, self.key, self.broker_key, bot=self.bot, history=self.history)
        self._last_heard = now
        self._attempt_deadline = now + self.connect_timeout
        self._send(self.session.hello())

    def _request(self, kind: str) -> None:
        if not self.online:
            raise ConnectError("not connected to the broker right now")
        if not self._send(self.session.request(kind)):
            self._connection_lost("the queue to the broker is full", time.monotonic())
            raise ConnectError("not connected to the broker right now")

    def _send(self, frames: list[bytes]) -> bool:
        """Queue frames on the socket without blocking; False if there is no room (or no socket)."""
        if self._socket is None:
            return False
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._last_sent = time.monotonic()
        return True
