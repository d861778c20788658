"""The socket side every zmq client shares: `SocketDriver`, `ClientBase`, and loading a client's keys.

`SocketDriver` carries out a `zchat.client.core.ClientCore`'s actions on a CurveZMQ DEALER and its
handshake monitor, and feeds the core what they report; it never waits. `ClientBase` builds the core and
the driver from keys (or key files) and holds what a user reads (online, roster, pending); the blocking
`zchat.client.sync_client.ChatClient` and the asyncio `zchat.client.async_client.AsyncChatClient` add only
their way of waiting. `load_keys` and `load_private_key` are the one way a client program loads its keys:
a passphrase from the caller (an environment variable), or asked for through a callback (a terminal).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Self, TypedDict, Unpack

import zmq

from zchat import crypto
from zchat.client.core import ClientCore, Connect, Disconnect, Send
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
from zchat.events import UserInfo

log = logging.getLogger(__name__)

MAX_FRAMES_PER_POLL = 100  # under a flood of deliveries the loop still gets round to heartbeats
IDLE_WAIT = 0.5  # the longest a wait lasts when the core names no deadline
PASSPHRASE_TRIES = 3
# Asks for the passphrase of the key file at this path; told the previous try's error (None the first time).
AskPassphrase = Callable[[Path, crypto.KeyFileError | None], str]


class SessionOptions(TypedDict, total=False):
    """How a client keeps its session (defaults in `ClientCore`)."""

    bot: bool  # flagged as a bot in /who
    history: bool  # ask for the room's recent history at login
    reconnect: bool  # log in again after a lost connection (else ConnectError)
    connect_timeout: float  # seconds each login attempt may take


class FileOptions(SessionOptions, total=False):
    """`SessionOptions`, and how to open a key file protected by a passphrase."""

    passphrase: str | None
    ask: AskPassphrase | None


def load_private_key(path: Path, passphrase: str | None = None, ask: AskPassphrase | None = None) -> crypto.PrivateKey:
    """Our private key. One protected by a passphrase opens with `passphrase`; without it, with what `ask`
    answers (up to PASSPHRASE_TRIES times while it is wrong). KeyFileError says what is wrong."""
    if passphrase is not None or ask is None or not _protected(path):
        return crypto.load_private_key(path, passphrase)
    error: crypto.KeyFileError | None = None
    for attempt in range(1, PASSPHRASE_TRIES + 1):
        try:
            return crypto.load_private_key(path, ask(path, error))
        except crypto.KeyFileError as exc:
            if attempt == PASSPHRASE_TRIES:
                raise
            error = exc
    raise AssertionError("unreachable")  # pragma: no cover


def _protected(path: Path) -> bool:
    try:
        return b"ENCRYPTED" in path.read_bytes()[:200]
    except OSError:
        return False  # load_private_key reports the problem


def load_keys(
    key_path: str | Path,
    broker_key_path: str | Path,
    passphrase: str | None = None,
    ask: AskPassphrase | None = None,
) -> tuple[crypto.PrivateKey, crypto.PublicKeyFile]:
    """The pinned broker key file (first: no passphrase is asked for in vain), then our private key."""
    broker = crypto.load_public_key_file(Path(broker_key_path))
    broker_curve_key(broker, str(broker_key_path))
    return load_private_key(Path(key_path), passphrase, ask), broker


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
        pins_path: Path | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        **options: Unpack[SessionOptions],
    ) -> None:
        """Not yet connected. Other users' keys are pinned in `pins_path` (in memory only when None)."""
        self.endpoint = endpoint_for(host, port)
        self.name = name
        self.pins = PinStore(pins_path)
        self.core = ClientCore(
            name, key, broker_key.rsa, endpoint=self.endpoint, pins=self.pins, seen=SeenMessages(), **options
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
        ask: AskPassphrase | None = None,
        **options: Unpack[SessionOptions],
    ) -> Self:
        """A client with the keys in these files (crypto.KeyFileError says what is wrong), not yet connected.

        A key protected by a passphrase opens with `passphrase`, or else with what `ask` answers (see
        `load_private_key`). Other users' key fingerprints are pinned on first sight in a file next to the
        key (`KeyChanged` events).
        """
        key, broker_key = load_keys(key_path, broker_key_path, passphrase, ask)
        return cls(host, port, name, key, broker_key, pins_path=pins_path_for(Path(key_path)), **options)

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
