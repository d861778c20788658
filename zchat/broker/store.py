"""What the broker core asks of its durable store: the `Store` protocol and the records it returns.

The store owns what must survive a restart or a `kill -9`: the room history, the
private messages waiting for their recipients, and the record of statements
already accepted (author and message id), which makes a client's re-send
idempotent. Writes since the last `commit()` form one transaction (group
commit); the broker acknowledges a statement only after the commit that holds
it returned.

Each user's share is bounded by the caller (`mailbox_usage`, `sent_usage`);
`space` tells how much of the file holds data, so the caller can stop
storing before the disk is full.

The interface is deliberately small, so that a server database can replace
SQLite for a team that outgrows one disk. The implementation the broker runs
is `zchat.broker.sqlite_store.SQLiteStore`: one SQLite file, encrypted at
rest. A store is not thread-safe: use it from one thread at a time. Every
method raises `zchat.errors.StoreError` when the store cannot do what was
asked; the store stays usable after a failed write or commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

DAY = 86_400.0  # seconds


@dataclass(frozen=True)
class StoredChat:
    """A room message as kept: who wrote it, its id, when the broker received it, what it replays."""

    author: str
    message_id: str
    received: float
    document: dict[str, Any]


@dataclass(frozen=True)
class Mail:
    """A private message waiting for its recipient, sealed to the recipient (opaque to the store)."""

    row: int
    sealed: bytes
    stored: float  # Unix seconds


class Store(Protocol):
    """The broker's durable store; see the module docstring."""

    # -- reading -----------------------------------------------------------------------------------------

    def seen(self, author: str, message_id: str) -> float | None:
        """When an earlier accepted statement (room or private) with this author and id was received, else None.

        Sees writes of the current, uncommitted transaction.
        """
        ...

    def history(self, count: int, since: float) -> list[StoredChat]:
        """The newest `count` room messages received at or after `since`, oldest first."""
        ...

    def mailbox(self, recipient: str, after: int = 0, until: int | None = None, limit: int = -1) -> list[Mail]:
        """The mail waiting for `recipient`, oldest first: rows after `after` and up to `until`, at most `limit`
        of them (-1: all). A caller reads a long mailbox a page at a time this way."""
        ...

    def mailbox_usage(self, recipient: str) -> tuple[int, int]:
        """(messages, bytes of their sealed envelopes) waiting for `recipient`."""
        ...

    def sent_usage(self, sender: str, recipient: str | None = None) -> tuple[int, int]:
        """(messages, bytes of their sealed envelopes) that `sender` has waiting for others, or for `recipient`."""
        ...

    def last_mail_row(self) -> int:
        """The newest mail row id given out so far (0 if none): mail stored later has a greater one."""
        ...

    def space(self) -> tuple[int, int]:
        """(bytes of the store that hold data, bytes it can still take)."""
        ...

    # -- writing (each joins the open transaction; commit() makes it durable) ------------------------------

    def add_chat(self, author: str, message_id: str, received: float, document: dict[str, Any]) -> None:
        """Keep a room message in the history and record it as seen.

        Raises StoreError if the store fails (disk full) or the message is already in the history; the caller
        refuses that message and the store stays usable.
        """
        ...

    def add_mail(self, recipient: str, author: str, message_id: str, received: float, sealed: bytes) -> int:
        """Store a private message for `recipient` and record it as seen; return its row id.

        The same author and id may be stored for several recipients. Raises StoreError as `add_chat`.
        """
        ...

    def delete_mail(self, rows: Iterable[int]) -> None:
        """Forget delivered mail by row id (ids that are gone already are ignored)."""
        ...

    def prune(self, now: float, *, history_size: int, history_days: float, mail_days: float, seen_days: float) -> None:
        """Forget what is past keeping; 0 days means no limit by age for that kind.

        Room messages beyond the newest `history_size` or received more than `history_days` ago go; so does
        mail stored more than `mail_days` ago, and seen-records older than `seen_days` whose message is
        neither in the history nor waiting as mail.
        """
        ...

    def commit(self) -> None:
        """Make every write since the last commit durable, all or nothing.

        On failure the writes are rolled back and StoreError says why, e.g.
        "could not store messages: database or disk is full"; the store stays usable.
        """
        ...

    def close(self) -> None:
        """Close the store; writes not committed are dropped. Idempotent."""
        ...
