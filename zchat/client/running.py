"""How a program runs a client to its end: the policy the terminal client and the bot runner share.

- A frame the client could not take in is skipped: one line in the log, and the program goes on
  (`skipping_bad_frames`).
- The broker's `Shutdown` ends the program with EXIT_OK, its `SessionClosed` with EXIT_CLOSED
  (`end_status`); a program that leaves by itself (/exit, end of input, a signal) ends with EXIT_OK.
- Leaving: wait up to LEAVE_WAIT seconds for the broker's answers to what was sent, close (saying bye),
  then take the last events, a `Failed` for every message that will now never be answered (`leave`, and
  `leave_async` for the asyncio client).

Both load their keys with `zchat.client.driver.load_keys`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from zchat.client.async_client import AsyncChatClient
from zchat.client.sync_client import ChatClient
from zchat.errors import ConnectError
from zchat.events import Event, SessionClosed, Shutdown

# How a program running a client (the terminal client, the bot runner) ends, as its exit status:
EXIT_OK = 0  # the user left (/exit, end of input, a signal), or the broker shut down (`shutdown`)
EXIT_ERROR = 1  # an error: no login (unreachable, refused, busy, a bad broker), or the connection lost for good
# The broker ended the session for good (`closed`: the same name logged in elsewhere, or the key is no longer
# registered). Not 1, so a supervisor can be told not to start the program again (systemd:
# RestartPreventExitStatus=3): a copy started again would only close the session that replaced it.
EXIT_CLOSED = 3
LEAVE_WAIT = 3.0  # seconds a program that leaves waits for the broker to answer the messages sent just before


def end_status(event: Event) -> int | None:
    """The exit status `event` ends the program with (Shutdown, SessionClosed); None: it goes on."""
    if isinstance(event, Shutdown):
        return EXIT_OK
    if isinstance(event, SessionClosed):
        return EXIT_CLOSED
    return None


@contextlib.contextmanager
def skipping_bad_frames(log: logging.Logger) -> Iterator[None]:
    """Around taking in the next event: anything but a ConnectError is logged on `log` (one line) and dropped.

    The caller sees no event then, and goes on; a ConnectError (the client cannot go on) passes.
    """
    try:
        yield
    except ConnectError:
        raise
    except Exception as exc:
        # One line (a traceback would garble a terminal); %r shows any odd character in the message escaped.
        log.warning("could not take in a message from the broker; skipped it (%r)", exc)


def leave(client: ChatClient, wait: float = LEAVE_WAIT) -> list[Event]:
    """Wait up to `wait` seconds for the broker's answers, close, and return the events not taken yet.

    The client is closed even when the wait ends in a ConnectError (which passes).
    """
    try:
        client.flush(wait)
    finally:
        client.close()
    return client.drain()


async def leave_async(client: AsyncChatClient, wait: float = LEAVE_WAIT) -> list[Event]:
    """`leave` for the asyncio client."""
    try:
        await client.flush(wait)
    finally:
        await client.close()
    return client.drain()
