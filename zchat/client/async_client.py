"""`AsyncChatClient`: the chat client for asyncio programs, on zmq.asyncio.

    from zchat.client import AsyncChatClient
    from zchat.events import ChatMessage

    async with await AsyncChatClient.connect("127.0.0.1", 5000, "echo", "keys/private/echo.pem", bot=True) as client:
        async for event in client:
            if isinstance(event, ChatMessage) and not event.history and not event.bot:
                await client.send(f"echo: {event.text}")

The same client as `zchat.client.ChatClient` (the policy is `zchat.client.core.ClientCore`, the socket
work `zchat.client.driver.SocketDriver`); only the waiting differs. One background task owns the sockets: it
waits on them with a `zmq.asyncio.Poller` (or until the core's next deadline, or until a method here
wakes it), then hands what arrived to the core and carries out what the core decided. So heartbeats
and reconnecting go on while your code awaits something else. The methods here only tell the core
and wake the task; the task sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Unpack

import zmq
import zmq.asyncio

from zchat.client.driver import IDLE_WAIT, ClientBase, FileOptions
from zchat.errors import ConnectError
from zchat.events import Event

log = logging.getLogger(__name__)

_wake_endpoints = itertools.count(1)


class AsyncChatClient(ClientBase):
    """A chat client for one asyncio event loop; create it, then `await login()` (or use `connect()`)."""

    def _set_up(self) -> None:
        """The background task's state, and the pair of sockets that wakes it."""
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None  # what ended the task, for the next caller to see
        self._news = asyncio.Event()  # set by the task when there are events, an error, or the end
        # Wakes the task: its poll cannot see sends made between polls (zmq's descriptor is edge-triggered).
        wake_endpoint = f"inproc://async-chat-client-{next(_wake_endpoints)}-{id(self)}"
        self._wake_in = self._context.socket(zmq.PAIR)
        self._wake_in.setsockopt(zmq.LINGER, 0)
        self._wake_in.bind(wake_endpoint)
        self._wake_out = self._context.socket(zmq.PAIR)
        self._wake_out.setsockopt(zmq.LINGER, 0)
        self._wake_out.connect(wake_endpoint)

    # ------------------------------------------------------------ construction

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        name: str,
        key_path: str | Path,
        broker_key_path: str | Path = "keys/broker.pub",
        **options: Unpack[FileOptions],
    ) -> AsyncChatClient:
        """Load keys, connect and log in; raises ConnectError or crypto.KeyFileError with a clear message.

        Options as `from_files` (`passphrase`, `bot`, `history`, `reconnect`, `connect_timeout`).
        """
        client = cls.from_files(host, port, name, key_path, broker_key_path, **options)
        await client.login()
        return client

    async def login(self) -> None:
        """Connect and log in; returns once the broker welcomed us (ConnectError if the first login fails: the
        client is closed then)."""
        try:
            self.start_login()
            while not self.online:
                self._raise_error()
                if self.closed:
                    raise ConnectError("the client was closed while logging in")
                self._news.clear()
                await self._news.wait()
        except BaseException:
            await self.close(say_bye=False)
            raise

    def start_login(self) -> None:
        """Connect and start the task that logs in and keeps the session; a `Welcome` event says it is done."""
        if self._task is not None:
            raise ConnectError("already started")
        self.core.start(time.monotonic())
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"chat client {self.name}")

    # ------------------------------------------------------------ what a user does

    async def send(self, text: str, *, to: str | None = None, action: bool = False) -> str:
        """Send a chat message to everyone else, or only to `to`; returns its message id.

        As `ChatClient.send`: Unsendable (a ValueError) if the text cannot be sent; the broker's `Accepted` or `Failed`
        event names the id; the message waits in the outbox until then, across reconnects.
        """
        message_id = self.core.say(text, time.monotonic(), to=to, action=action)
        self._wake()
        return message_id

    async def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until the broker answered every message sent so far; True if it has.

        Their `Accepted` and `Failed` events stay queued for `receive()`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and not self.closed and self._task is not None:
            self._raise_error()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), remaining)
        return not self.pending

    async def who(self) -> None:
        """Ask who is online; the answer arrives as a WhoList event. ConnectError when not logged in."""
        self.core.request("who", time.monotonic())
        self._wake()

    async def request_shutdown(self) -> None:
        """Ask the broker to stop (admins only; others get a Notice). ConnectError when not logged in."""
        self.core.request("shutdown", time.monotonic())
        self._wake()

    async def receive(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds (None waits forever) or once closed and drained.

        Raises ConnectError when the login failed, or the connection was lost with `reconnect=False`.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._raise_error()
            event = self.core.next_event()
            if event is not None:
                return event
            if self.closed or self._task is None:
                return None
            self._news.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._news.wait(), remaining)
            except TimeoutError:
                return None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        """Every event, the last one included, until the client is closed (by you, a shutdown or the broker)."""
        while (event := await self.receive(None)) is not None:
            yield event

    def drain(self) -> list[Event]:
        """All events received so far."""
        return self.core.drain_events()

    async def close(self, say_bye: bool = True) -> None:
        """Leave the chat (telling the broker when logged in) and close the socket. Idempotent.

        Messages still waiting for the broker's answer get `Failed` events (take them with `drain()`).
        """
        self.core.close(time.monotonic(), say_bye=say_bye)
        task, self._task = self._task, None
        if task is not None and not task.done():
            self._wake()
            try:
                await task  # it carries out the goodbye and closes the socket
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
        self._driver.perform()  # when the task never ran, or already ended
        self._driver.close()
        if not self._wake_in.closed:
            self._wake_in.close(linger=0)
            self._wake_out.close(linger=0)
        if self._own_context and not self._context.closed:
            await asyncio.to_thread(self._context.term)  # waits for the goodbye to be flushed (bounded by linger)

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ the task

    async def _run(self) -> None:
        """Wait for the broker, the monitor, a deadline or a wake-up; let the core act; until closed."""
        try:
            while True:
                self._driver.perform()  # what the methods above asked for
                if self.core.closed:
                    break
                sockets = self._driver.sockets()
                poller = zmq.asyncio.Poller()
                for sock in (*sockets, self._wake_in):
                    poller.register(sock, zmq.POLLIN)
                wait = self._driver.wait_time(time.monotonic(), IDLE_WAIT)
                ready = dict(await poller.poll(math.ceil(wait * 1000)))
                if self._wake_in in ready:
                    self._drain_wake_ups()
                self._driver.handle([sock for sock in sockets if sock in ready], time.monotonic())
                if self.core.has_events or self.core.closed:
                    self._news.set()
        except Exception as exc:  # ConnectError when the login fails; anything else is a bug worth showing
            self._error = exc
            self._driver.perform()
        finally:
            self._news.set()

    def _wake(self) -> None:
        with contextlib.suppress(zmq.ZMQError):  # already woken (Again), or closed
            self._wake_out.send(b"", zmq.NOBLOCK)

    def _drain_wake_ups(self) -> None:
        while True:
            try:
                self._wake_in.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error
