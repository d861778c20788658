"""The acknowledged outbox, without I/O: what a client keeps between connections until the broker answers.

`Outbox` holds every chat message the broker has not answered yet, in the order the user sent them, with
the connection each was last sent on and how often the broker refused it; `ClientCore` (zchat.client.core)
sends what it holds again after every welcome, and fails what it gives up on.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from zchat.errors import ConnectError
from zchat.events import Failed

log = logging.getLogger(__name__)

MAX_OUTBOX = 1000
MAX_REFUSALS = 3  # a message the broker refuses this many times is given up (Failed), so a reconnect loop ends


@dataclass
class Outgoing:
    """A chat message in the outbox: the user's words, its id, and the connection it was last sent on."""

    message_id: str
    text: str
    to: str | None = None
    action: bool = False
    sent_on: int = 0  # the connection (ClientCore.connection) it was last sent on; 0: never sent

    def failed(self, reason: str) -> Failed:
        return Failed(self.message_id, reason, self.text, self.to)


class Outbox:
    """The messages waiting for the broker's answer (`Accepted` or `Failed`), oldest first, at most `limit`."""

    def __init__(self, limit: int = MAX_OUTBOX) -> None:
        self.limit = limit
        self._messages: dict[str, Outgoing] = {}  # in the order the user sent them
        self._refusals: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def ids(self) -> tuple[str, ...]:
        """The ids of the messages waiting, oldest first."""
        return tuple(self._messages)

    @property
    def full(self) -> bool:
        return len(self._messages) >= self.limit

    def check_room(self, waiting_for: str) -> None:
        """ConnectError when `limit` messages already wait (for the broker's answer, or for the connection)."""
        if self.full:
            raise ConnectError(f"not sent: {self.limit} messages are already waiting for {waiting_for}")

    def add(self, message: Outgoing) -> None:
        self._messages[message.message_id] = message

    def unsent(self, connection: int) -> list[Outgoing]:
        """The messages not yet sent on `connection`, in order (all of them on a new connection)."""
        return [message for message in self._messages.values() if message.sent_on != connection]

    def answered(self, message_id: str) -> Outgoing | None:
        """Take the message the broker answered (or gave up on) out of the outbox; None if it is not waiting."""
        self._refusals.pop(message_id, None)
        message = self._messages.pop(message_id, None)
        if message is None:
            log.debug("the broker answered message %s, which is not waiting for an answer", message_id)
        return message

    def refused(self, message_id: str) -> Failed | None:
        """The broker refused this statement once more: after MAX_REFUSALS, it leaves the outbox (a Failed)."""
        if message_id not in self._messages:
            return None
        self._refusals[message_id] += 1
        if self._refusals[message_id] < MAX_REFUSALS:
            return None
        message = self._messages[message_id]
        self.answered(message_id)
        return message.failed(f"not sent: the broker refused it {MAX_REFUSALS} times")

    def fail_all(self, why: str) -> list[Failed]:
        """Empty the outbox for good: a Failed for every message, "not confirmed" once sent, else "not sent"."""
        failed = [message.failed(f"{'not confirmed' if message.sent_on else 'not sent'}: {why}") for message in self]
        self._messages.clear()
        self._refusals.clear()
        return failed

    def __iter__(self) -> Iterator[Outgoing]:
        return iter(list(self._messages.values()))
