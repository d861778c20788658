"""`ChatClient`: a chat client over a ZeroMQ DEALER socket, for people and bots, blocking (no asyncio).

    from zchat.client import ChatClient

    with ChatClient.connect("127.0.0.1", 5000, "echo", "keys/private/echo.pem", bot=True) as bot:
        for event in bot:
            ...

The policy (login, heartbeats, reconnecting, the acknowledged outbox, key pins) is
`zchat.client.core.ClientCore`; the protocol is `zchat.client.session`; the sockets are
`zchat.client.driver` (`SocketDriver`, shared with the asyncio client). This module is only the
blocking loop around them: the socket work happens while `ChatClient` is called.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Unpack

import zmq

from zchat.client.driver import IDLE_WAIT, ClientBase, FileOptions
from zchat.errors import ConnectError
from zchat.events import Event

log = logging.getLogger(__name__)


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
        **options: Unpack[FileOptions],
    ) -> ChatClient:
        """Load keys, connect and log in; raises ConnectError or crypto.KeyFileError with a clear message.

        Options as `from_files` (`passphrase`, `bot`, `history`, `reconnect`, `connect_timeout`). Other
        users' key fingerprints are pinned on first sight in a file next to the key (`KeyChanged` events).
        """
        client = cls.from_files(host, port, name, key_path, broker_key_path, **options)
        client.login()
        return client

    def login(self) -> None:
        """Connect and log in, blocking until the broker welcomed us (or ConnectError: the client is closed)."""
        try:
            self.start_login()
            while not self.online:
                if self.closed:
                    raise ConnectError("the client was closed while logging in")
                self.poll(0.1)
        except BaseException:
            self.close(say_bye=False)
            raise

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

        `action` marks a /me line. Unsendable (a ValueError) if the text cannot be sent. The broker answers every
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
