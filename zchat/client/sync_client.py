"""`ChatClient`: a chat client over a ZeroMQ DEALER socket, for people and bots, blocking (no asyncio).

    from zchat.client import ChatClient

    with ChatClient.connect("127.0.0.1", 5000, "echo", "keys/private/echo.pem", bot=True) as bot:
        for event in bot:
            ...

The policy (login, heartbeats, reconnecting, the acknowledged outbox, key pins) is
`zchat.client.core.ClientCore`; the protocol is `zchat.client.session`. This module owns
the sockets: `SocketDriver` carries out a core's actions on a CurveZMQ DEALER
and its handshake monitor and feeds it what they report (the asyncio driver,
`zchat.client.async_client`, uses it too), and `ChatClient` is the blocking loop around it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import zmq

from zchat import crypto
from zchat.client.core import DEFAULT_CONNECT_TIMEOUT, ClientCore, Connect, Disconnect, Send
from zchat.client.pins import PinStore, pins_path_for
from zchat.client.session import ClientSession, SeenMessages
from zchat.client.transport import (
    HandshakeState,
    broker_curve_key,
    curve_dealer,
    read_monitor,
    stop_watching,
    watch_handshake,
)
from zchat.errors import ConnectError
from zchat.events import Event, UserInfo

log = logging.getLogger(__name__)

MAX_FRAMES_PER_POLL = 100  # under a flood of deliveries the loop still gets round to heartbeats
IDLE_WAIT = 0.5  # the longest a wait lasts when the core names no deadline


def load_keys(
    key_path: str | Path, broker_key_path: str | Path, passphrase: str | None = None
) -> tuple[crypto.PrivateKey, crypto.PublicKeyFile]:
    """Load the user's private key and the pinned broker key file (crypto.KeyFileError says what is wrong)."""
    broker = crypto.load_public_key_file(Path(broker_key_path))
    broker_curve_key(broker, str(broker_key_path))
    return crypto.load_private_key(Path(key_path), passphrase), broker


def endpoint_for(host: str, port: int) -> str:
    if not 0 < port < 65536:
        raise ConnectError(f"port must be from 1 to 65535, not {port}")
    return f"tcp://{host}:{port}"


class SocketDriver:
    """A `ClientCore`'s hands: one CurveZMQ DEALER at a time (and its handshake monitor), no waiting.

    A loop waits on `sockets()` (or `core.next_deadline()`, see `wait_time()`) in its own way, blocking
    or asyncio, then calls `handle()` with the sockets that are readable.
    """

    def __init__(
        self,
        core: ClientCore,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        curve_secret: bytes,
        broker_curve: bytes,
    ) -> None:
        self.core = core
        self.context = context
        self.endpoint = endpoint
        self.curve_secret = curve_secret  # the transport's key, derived from the RSA key once
        self.broker_curve = broker_curve
        self.socket: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None
        self._transport = HandshakeState()

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """What to wait on for reading: the DEALER and its monitor, while there is one."""
        return [sock for sock in (self.socket, self.monitor) if sock is not None]

    def wait_time(self, now: float, limit: float) -> float:
        """Seconds to wait at most: `limit`, or less when the core has something to do earlier."""
        deadline = self.core.next_deadline()
        wait = limit if deadline is None else min(limit, deadline - now)
        return max(0.0, wait)

    def handle(self, ready: Collection[zmq.Socket[bytes]], now: float) -> None:
        """Feed the core what the ready sockets hold, let time pass, and carry out what it decided.

        Raises ConnectError when the core closed for good during a first login (the socket is closed then).
        """
        try:
            if self.monitor is not None and self.monitor in ready:
                read_monitor(self.monitor, self._transport)
                transport = self._transport
                self.core.handshake(connected=transport.connected, secured=transport.secured, broken=transport.broken)
                if transport.status is not None:
                    self.core.handshake_refused(transport.status, now)
            if self.socket is not None and self.socket in ready:
                self.core.frames_received(self._read(), now)
            self.core.tick(now)
        finally:
            self.perform()

    def perform(self) -> bool:
        """Carry out the core's actions; False if a Send would have blocked (the core then reconnects)."""
        all_sent = True
        while (action := self.core.next_action()) is not None:
            if isinstance(action, Send):
                if not self._queue(action.frames):
                    all_sent = False
                    try:
                        self.core.send_blocked(time.monotonic())
                    except ConnectError:
                        self.perform()  # closed for good: close the socket before telling the caller
                        raise
            elif isinstance(action, Connect):
                self._open()
            elif isinstance(action, Disconnect):
                self._close(action.linger)
        return all_sent

    def close(self) -> None:
        """Close the socket now, whatever the core thinks (the core should be closed already)."""
        self._close(0.0)

    def _read(self) -> list[list[bytes]]:
        batch: list[list[bytes]] = []
        while self.socket is not None and len(batch) < MAX_FRAMES_PER_POLL:
            try:
                batch.append(self.socket.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return batch

    def _queue(self, frames: list[bytes]) -> bool:
        if self.socket is None:
            return False
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _open(self) -> None:
        self._close(0.0)
        self.socket = curve_dealer(self.context, self.curve_secret, self.broker_curve)
        self.monitor = watch_handshake(self.socket)  # before connecting: its first event is not missed
        self._transport = HandshakeState()
        self.socket.connect(self.endpoint)

    def _close(self, linger: float) -> None:
        if self.socket is not None and self.monitor is not None:
            stop_watching(self.socket, self.monitor)
        if self.socket is not None:
            self.socket.close(linger=int(linger * 1000))
        self.socket, self.monitor = None, None


class ClientBase:
    """What the blocking and the asyncio clients share: the core, the driver of its sockets, and what a user reads."""

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
        self.endpoint = endpoint_for(host, port)
        self.name = name
        self.pins = PinStore(pins_path)
        self.core = ClientCore(
            name,
            key,
            broker_key.rsa,
            endpoint=self.endpoint,
            bot=bot,
            history=history,
            reconnect=reconnect,
            connect_timeout=connect_timeout,
            pins=self.pins,
            seen=SeenMessages(),
        )
        self._own_context = context is None
        self._context: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        curve = broker_curve_key(broker_key, "the broker's public key")
        self._driver = SocketDriver(self.core, self._context, self.endpoint, crypto.curve_secret(key), curve)
        self._set_up()

    def _set_up(self) -> None:
        """What a driver adds once the core and its sockets exist (the blocking client: nothing)."""

    @classmethod
    def from_files(
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
    ) -> Self:
        """A client with the keys in these files (crypto.KeyFileError says what is wrong), not yet connected.

        Other users' key fingerprints are pinned on first sight in a file next to the key (`KeyChanged` events).
        """
        key, broker_key = load_keys(key_path, broker_key_path, passphrase)
        return cls(
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

    @property
    def online(self) -> bool:
        """Logged in right now."""
        return self.core.online

    @property
    def roster(self) -> dict[str, UserInfo]:
        """Who is online, as the broker last told us (name -> UserInfo)."""
        return self.core.roster

    @property
    def closed(self) -> bool:
        """Closed for good: by close(), the broker's shutdown, or the broker ending the session."""
        return self.core.closed

    @property
    def session(self) -> ClientSession:
        """The protocol session of the current connection (a new one after each reconnect)."""
        return self.core.session

    @property
    def pending(self) -> tuple[str, ...]:
        """Ids of the messages sent and not yet answered by the broker (Accepted or Failed), oldest first."""
        return self.core.pending


class ChatClient(ClientBase):
    """A chat client whose socket work happens while it is called: `poll()`, `receive()`, iteration, `login()`."""

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
        client = cls.from_files(
            host,
            port,
            name,
            key_path,
            broker_key_path,
            passphrase=passphrase,
            bot=bot,
            history=history,
            reconnect=reconnect,
            connect_timeout=connect_timeout,
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
        while not self.online:
            if self.closed:
                raise ConnectError("the client was closed while logging in")
            self.poll(0.1)

    def start_login(self) -> None:
        """Connect and send the first login message without waiting: `poll()` carries the login on.

        For programs that drive many clients from one loop (blocking in `login()`
        would starve the others' heartbeats). A `Welcome` event says it is done.
        """
        self.core.start(time.monotonic())
        self._driver.perform()

    # ------------------------------------------------------------ what a user does

    def send(self, text: str, *, to: str | None = None, action: bool = False) -> str:
        """Send a chat message to everyone else, or only to `to`; returns its message id.

        `action` marks a /me line. ValueError if the text cannot be sent. The broker answers every
        message with an `Accepted` event (`queued`: a private message kept for someone offline) or a
        `Failed` event naming this id. Until then the message waits in the outbox, and is sent again
        after a reconnect (up to 1000 waiting messages; more raise ConnectError).
        """
        message_id = self.core.say(text, time.monotonic(), to=to, action=action)
        self._driver.perform()
        return message_id

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until the broker answered every message sent so far; True if it has.

        Their `Accepted` and `Failed` events are queued as usual. Call it before `close()` to leave without
        messages whose fate is unknown.
        """
        deadline = time.monotonic() + timeout
        while self.pending and not self.closed and (remaining := deadline - time.monotonic()) > 0:
            self.poll(min(remaining, IDLE_WAIT))
        return not self.pending

    def who(self) -> None:
        """Ask who is online; the answer arrives as a WhoList event."""
        self._request("who")

    def request_shutdown(self) -> None:
        """Ask the broker to stop (admins only; others get a Notice)."""
        self._request("shutdown")

    def receive(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds (None waits forever) or once closed and drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.core.has_events:
            if self.closed:
                return None
            remaining = IDLE_WAIT if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.poll(min(remaining, IDLE_WAIT))
        return self.core.next_event()

    def __iter__(self) -> Iterator[Event]:
        """Every event, the last one included, until the client is closed (by you, a shutdown or the broker)."""
        while (event := self.receive(None)) is not None:
            yield event

    def close(self, say_bye: bool = True) -> None:
        """Leave the chat (telling the broker when logged in) and close the socket. Idempotent.

        Messages still waiting for the broker's answer get `Failed` events (take them with `drain()`).
        """
        self.core.close(time.monotonic(), say_bye=say_bye)
        try:
            self._driver.perform()
        finally:
            self._release()

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
        own input. It may return early, when the client has something to do.
        Raises ConnectError when the first login fails.
        """
        poller = zmq.Poller()
        for sock in (*self._driver.sockets(), *also):
            poller.register(sock, zmq.POLLIN)
        wait = self._driver.wait_time(time.monotonic(), max(0.0, timeout))
        ready = dict(poller.poll(math.ceil(wait * 1000)))
        try:
            self._driver.handle(ready, time.monotonic())
        finally:
            if self.closed:
                self._release()
        return [sock for sock in also if sock in ready]

    def drain(self) -> list[Event]:
        """All events received so far."""
        return self.core.drain_events()

    def _release(self) -> None:
        """Closed for good: the socket goes, and the context too when it is ours."""
        self._driver.close()
        if self._own_context and not self._context.closed:
            self._context.term()  # waits for a goodbye to be flushed (bounded by its linger)

    def _request(self, kind: str) -> None:
        self.core.request(kind, time.monotonic())
        if not self._driver.perform():
            raise ConnectError("not connected to the broker right now")
