"""What the broker keeps, and on what terms: its use of the store (`zchat.broker.store`).

What must survive a restart goes to the store: the room's history (also here in
memory, `history`, for the replays of new logins), private messages until their
recipient has read them, and the ids of accepted messages (so a re-send is
recognised). `Archive` keeps the group commit's books (the answers that wait for
the next commit, the mail rows it would take back if it failed), drops what the
retention settings say is too old, and says why a message cannot be kept: the
disk floor (`min_free_disk_bytes`, `max_store_bytes`) and the mail quotas of its
sender and its recipient. It reads no clock: the wall-clock time comes in.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any

from zchat.broker.outbound import estimate
from zchat.broker.store import Store
from zchat.config import Config
from zchat.errors import StoreError
from zchat.protocol import events as wire

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 60.0  # seconds between the store's retention passes
SEEN_DAYS = 30.0  # an accepted message id is recognised this long after (longer while the message is kept)
DAY = 86_400.0
SENT_MAIL_SHARES = 10  # mail waiting for one recipient may use at most this share of its sender's quota


@dataclass(frozen=True)
class Committed:
    """What a commit settled: the answers that waited for it, and why they failed ("" when they did not)."""

    answers: list[tuple[bytes, wire.AcceptedEvent]]  # (identity, its answer, as it would be if the commit worked)
    failure: str
    taken_back: set[int]  # mail rows the failed commit took back (none when it worked)


class Archive:
    def __init__(self, store: Store, config: Config, wall: float) -> None:
        self.store = store
        self.config = config
        self.dirty = False  # the store holds changes not yet committed
        self.awaiting_commit: list[tuple[bytes, wire.AcceptedEvent]] = []  # answers that wait for commit()
        self.uncommitted_mail: set[int] = set()  # mail rows added since the last commit (a failed one undoes them)
        self.last_prune = float("-inf")
        self.space_problem: str | None = None  # why new messages cannot be stored now, if they cannot
        # The room's last messages (never private ones) as history events, replayed to each new session that
        # wants them: the store's newest, kept here too.
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=config.history_size)
        self.load_history(wall)

    def seen(self, sender: str, message_id: str) -> float | None:
        """When the store accepted `sender`'s message `message_id`, or None if it has not (StoreError)."""
        return self.store.seen(sender, message_id)

    def keep_chat(self, sender: str, message_id: str, received: float, kept: dict[str, Any]) -> None:
        """A room message, into the store and the history (StoreError when the store cannot take it)."""
        self.store.add_chat(sender, message_id, received, kept)
        self.history.append(kept)

    def keep_mail(self, to: str, sender: str, message_id: str, received: float, sealed: bytes) -> int:
        """A private message sealed to `to`, kept until `to` reads it: its row (StoreError when not kept)."""
        row = self.store.add_mail(to, sender, message_id, received, sealed)
        self.uncommitted_mail.add(row)
        return row

    def after_commit(self, identity: bytes, accepted: wire.AcceptedEvent) -> None:
        """`accepted` goes to `identity` at the next commit, once what the store took is durable."""
        self.awaiting_commit.append((identity, accepted))
        self.dirty = True

    def commit(self, wall: float) -> Committed | None:
        """Make durable everything the store took since the last call (one transaction); None when it took
        nothing. A failed commit loads the history again as the store has it."""
        if not self.dirty:
            return None
        self.dirty = False
        answers, self.awaiting_commit = self.awaiting_commit, []
        added_mail, self.uncommitted_mail = self.uncommitted_mail, set()
        try:
            self.store.commit()
        except StoreError as exc:
            log.error("%s", exc)
            self.load_history(wall)
            return Committed(answers, f"not stored: {exc}", added_mail)
        return Committed(answers, "", set())

    def delete_mail(self, rows: list[int]) -> None:
        """Kept mail its recipient has read."""
        try:
            self.store.delete_mail(rows)
        except StoreError as exc:  # it comes again at the next login; the client shows it once
            log.error("%s", exc)
            return
        self.dirty = True

    def prune_due(self, now: float, wall: float) -> None:
        """A retention pass, at most once per PRUNE_INTERVAL of the monotonic `now`."""
        if now - self.last_prune >= PRUNE_INTERVAL:
            self.last_prune = now
            self.prune(wall)

    def history_to_replay(self) -> list[dict[str, Any]]:
        """The newest history entries that fit in `history_replay_bytes`, oldest first."""
        chosen: list[dict[str, Any]] = []
        budget = self.config.history_replay_bytes
        for entry in reversed(self.history):
            budget -= estimate(entry)
            if budget < 0:
                break
            chosen.append(entry)
        chosen.reverse()
        return chosen

    def last_mail_row(self) -> int:
        """Where a login's kept mail ends: what is stored later reaches the session live."""
        try:
            return self.store.last_mail_row()
        except StoreError as exc:
            log.error("cannot read the kept messages: %s", exc)
            return 0

    def load_history(self, wall: float) -> None:
        """The room's history as the store has it (at start, and after a failed commit)."""
        self.history.clear()
        try:
            kept = self.store.history(self.config.history_size, since=self._oldest_kept(self.config.history_days, wall))
        except StoreError as exc:
            log.error("cannot read the history: %s", exc)
            return
        self.history.extend(entry.document for entry in kept)

    def _oldest_kept(self, days: float, wall: float) -> float:
        """The wall-clock time before which what is kept for `days` days is dropped (0 days: nothing is)."""
        return wall - days * DAY if days else 0.0

    def prune(self, wall: float) -> None:
        """Drop what the retention settings say is too old (history, mail, remembered ids)."""
        try:
            self.store.prune(
                wall,
                history_size=self.config.history_size,
                history_days=self.config.history_days,
                mail_days=self.config.mailbox_days,
                seen_days=SEEN_DAYS,
            )
        except StoreError as exc:
            log.error("%s", exc)
            return
        self.dirty = True
        oldest = self._oldest_kept(self.config.history_days, wall)
        while self.history and self.history[0]["received"] < oldest:
            self.history.popleft()

    def mail_problem(self, sender: str, to: str, size: int) -> str | None:
        """Why a private message of `size` sealed bytes from `sender` cannot be kept for `to`, if it cannot.

        The limits hold whether `to` is online or away (mail is kept until its recipient reads it) and for mail
        to oneself: the recipient's mailbox, what the sender has waiting for others, and a tenth of that for any
        one of them.
        """
        count, waiting = self.store.mailbox_usage(to)
        if count >= self.config.mailbox_messages or waiting + size > self.config.mailbox_bytes:
            return f"{to}'s mailbox is full ({count} messages waiting)"
        if to == sender:
            return None
        count, waiting = self.store.sent_usage(sender)
        if count >= self.config.sent_mail_messages or waiting + size > self.config.sent_mail_bytes:
            return f"you have {count} private messages waiting to be read; send more once they are read"
        # One recipient who never reads may hold only a share of a sender's quota: otherwise a user could make a
        # bot (which answers privately) spend all of its quota on her and fall silent to everyone else.
        count, waiting = self.store.sent_usage(sender, to)
        limit = max(1, self.config.sent_mail_messages // SENT_MAIL_SHARES)
        if count >= limit or waiting + size > self.config.sent_mail_bytes // SENT_MAIL_SHARES:
            return f"you have {count} private messages waiting for {to} to read; send more once they are read"
        return None

    def space_problem_now(self) -> str | None:
        """Why nothing new can be stored now (the disk floor, or the store's size limit), if it cannot.

        Looked at for every message to store (a few system calls); a change is logged once. Storing resumes by
        itself once retention or read mail frees room (SQLite reuses the pages of deleted rows).
        """
        try:
            in_use, room = self.store.space()
        except StoreError as exc:
            log.error("%s", exc)
            return self.space_problem
        problem = None
        if self.config.max_store_bytes and in_use >= self.config.max_store_bytes:
            problem = f"not stored: the broker's store is full ({in_use} bytes, max_store_bytes); try again later"
        elif room < self.config.min_free_disk_bytes:
            problem = f"not stored: the broker's disk is full ({room} bytes free); try again later"
        if problem and not self.space_problem:
            log.error("new messages are refused until there is room: %s", problem.removeprefix("not stored: "))
        elif self.space_problem and not problem:
            log.info("there is room in the store again: new messages are stored")
        self.space_problem = problem
        return problem
