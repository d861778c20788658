"""A session's outbound side: what the broker sends one session, in order, no faster than it reads.

`Outbound` owns everything between "this event is for that session" and the
frame on its way out: the sealing jobs (`DeliveryJob`, numbered in order), the
login's replay (history, then kept mail read from the store a page at a time,
as the window allows), the backlog of events that come while the replay goes
out, and flow control (PROTOCOL.md 8.4): at most `send_window_bytes` of EVENTs
sent and not acknowledged; sealed frames beyond that wait (`held`) until the
session acknowledges what it has read (`ACK`).

It decides nothing about who the session is or when it ends: `behind` and
`overflowing` say when it has more waiting than `send_queue_bytes` or
`send_queue_limit` allow, and the core ends the session as too slow. Kept mail
the session has acknowledged is handed back by `acknowledge()` for the core to
delete. No sockets, no clock.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any

from zchat import protocol as p
from zchat.broker.store import Store
from zchat.broker.work import DeliveryJob, Outgoing, Work
from zchat.config import Config
from zchat.errors import StoreError
from zchat.protocol import events as wire

log = logging.getLogger(__name__)

BACKLOG_BATCH = 8  # backlog events sealed at a time for one session, as its window allows
MAIL_PAGE = 32  # kept private messages read from the store at a time for one session

Queued = tuple[dict[str, Any], int | None]  # an event not yet sealed, and the stored mail row it carries (if any)


@dataclass(slots=True)
class Outbound:
    """What waits for one session, and what it has been sent and not yet acknowledged."""

    identity: bytes
    name: str
    key_der: bytes  # the session's registered key: each delivery is sealed to it
    delivery_key: bytes
    session_id: str
    config: Config
    store: Store
    seq_out: int = 0  # deliveries sealed for it so far: the seq of the last one
    in_flight: collections.deque[tuple[bytes, int]] = field(default_factory=collections.deque)  # (tag, size)
    in_flight_tags: set[bytes] = field(default_factory=set)
    in_flight_bytes: int = 0
    held: collections.deque[Outgoing] = field(default_factory=collections.deque)  # sealed, waiting for the window
    held_bytes: int = 0
    sealing: int = 0  # EVENT jobs made for it and not yet back as frames
    # Events not yet sealed: the login's replay (history, then mail), and what comes while it goes out (after it).
    replay: collections.deque[Queued] = field(default_factory=collections.deque)
    # Kept mail still to be read for the replay, a page at a time: rows after mail_read, up to mail_until.
    mail_read: int = 0
    mail_until: int = 0
    backlog: collections.deque[Queued] = field(default_factory=collections.deque)
    backlog_bytes: int = 0
    acknowledged: int = 0  # EVENTs it has acknowledged: the seq of the last one (they go out in seq order)
    mail_seqs: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)  # (seq, mail row)

    @property
    def mail_to_read(self) -> bool:
        return self.mail_read < self.mail_until

    @property
    def catching_up(self) -> bool:
        """Its login's replay, or what came meanwhile, is still going out: new events wait behind it."""
        return bool(self.replay or self.mail_to_read or self.backlog)

    @property
    def behind(self) -> bool:
        """More events wait unsealed behind its replay than `send_queue_bytes` or `send_queue_limit` allow."""
        too_much = self.backlog_bytes > self.config.send_queue_bytes
        return too_much or len(self.backlog) > self.config.send_queue_limit

    @property
    def overflowing(self) -> bool:
        """More sealed EVENTs wait for its window than `send_queue_bytes` or `send_queue_limit` allow."""
        return self.held_bytes > self.config.send_queue_bytes or len(self.held) > self.config.send_queue_limit

    def start_replay(self, history: list[dict[str, Any]], mail_until: int) -> list[Work]:
        """A new login's replay: `history`, then the mail kept for it up to the row `mail_until`."""
        self.replay.extend((earlier, None) for earlier in history)
        self.mail_until = mail_until
        return self.pump()

    def deliver(self, event: dict[str, Any], mail_row: int | None = None) -> list[Work]:
        """The job that seals `event`; behind the replay and backlog, if there are any (then see `behind`).

        `mail_row`: the event carries this kept private message, deleted once the session acknowledges it.
        """
        if self.catching_up:
            self.backlog.append((event, mail_row))
            self.backlog_bytes += estimate(event)
            return []
        return self.seal(event, mail_row)

    def sealed(self, item: Outgoing) -> list[Outgoing]:
        """An EVENT sealed for the session: `[item]` when it fits the window now; held otherwise (see
        `overflowing`)."""
        self.sealing = max(0, self.sealing - 1)
        size = len(item.frames[2])
        if self.held or self._window_full(size):
            self.held.append(item)
            self.held_bytes += size
            return []
        return [self._in_flight(item)]

    def acknowledge(self, tag: bytes) -> list[int] | None:
        """The session has read every EVENT up to the one `tag` names: the kept mail rows it has now read (to
        delete), or None for a tag that is not one we sent and have not yet heard about (a late or repeated ACK).
        Then `release()` sends what waits."""
        if tag not in self.in_flight_tags:
            return None
        while self.in_flight:
            sent, size = self.in_flight.popleft()
            self.in_flight_tags.discard(sent)
            self.in_flight_bytes -= size
            self.acknowledged += 1
            if sent == tag:
                break
        read: list[int] = []
        while self.mail_seqs and self.mail_seqs[0][0] <= self.acknowledged:
            read.append(self.mail_seqs.popleft()[1])
        return read

    def release(self) -> list[Work]:
        """The held EVENTs that fit the window now, then more of the replay and backlog to seal."""
        out: list[Work] = []
        while self.held and not self._window_full(len(self.held[0].frames[2])):
            item = self.held.popleft()
            self.held_bytes -= len(item.frames[2])
            out.append(self._in_flight(item))
        return out + self.pump()

    def pump(self) -> list[Work]:
        """Seal the next replay or backlog events while the window has room (kept mail is read from the store a
        page at a time, as it is needed)."""
        out: list[Work] = []
        while (
            self.catching_up
            and not self.held
            and self.sealing < BACKLOG_BATCH
            and not self._window_full(self.config.send_window_bytes // 2)
        ):
            if not self.replay and self.mail_to_read:
                self._read_mail_page()
                continue
            if self.replay:
                event, mail_row = self.replay.popleft()
            else:
                event, mail_row = self.backlog.popleft()
                self.backlog_bytes -= estimate(event)
            out += self.seal(event, mail_row)
        return out

    def seal(self, event: dict[str, Any], mail_row: int | None = None) -> list[Work]:
        """The job that seals `event` as the next delivery, past the window and the backlog."""
        self.sealing += 1
        self.seq_out += 1
        if mail_row is not None:
            self.mail_seqs.append((self.seq_out, mail_row))
        return [DeliveryJob(self.identity, self.key_der, self.delivery_key, self.session_id, self.seq_out, event)]

    def last_words(self, events: list[dict[str, Any]]) -> list[Work]:
        """Everything still waiting for a session that ends now (its login's replay aside), then `events`, past its
        window. Kept mail it has not acknowledged stays kept: it comes again at its next login."""
        out: list[Work] = list(self.held)
        self.held.clear()
        backlog, self.backlog = self.backlog, collections.deque()
        self.replay.clear()
        self.mail_read = self.mail_until
        for waiting in [*(queued for queued, _ in backlog), *events]:
            out += self.seal(waiting)
        return out

    def forget_mail(self, rows: set[int]) -> None:
        """Mail rows a failed commit took back: no ACK may delete them, since the store may give them out again."""
        self.mail_seqs = collections.deque(entry for entry in self.mail_seqs if entry[1] not in rows)
        for queue in (self.replay, self.backlog):
            if any(row in rows for _, row in queue):
                kept = [(event, None if row in rows else row) for event, row in queue]
                queue.clear()
                queue.extend(kept)

    def _in_flight(self, item: Outgoing) -> Outgoing:
        """`item` (an EVENT) goes out now: it counts against the window until acknowledged."""
        size, tag = len(item.frames[2]), p.event_tag(item.frames[2])
        self.in_flight.append((tag, size))
        self.in_flight_tags.add(tag)
        self.in_flight_bytes += size
        return item

    def _window_full(self, size: int) -> bool:
        """No room for an EVENT of `size` bytes: the window is full (one EVENT always fits an empty one).

        The window also holds at most half of `send_queue_limit` EVENTs, so the socket's own queue never fills.
        """
        if not self.in_flight:
            return False
        return (
            self.in_flight_bytes + size > self.config.send_window_bytes
            or len(self.in_flight) >= self.config.send_queue_limit // 2
        )

    def _read_mail_page(self) -> None:
        """The next page of the private messages kept for the session, oldest first, each with its row (deleted
        once acknowledged), onto its replay."""
        try:
            page = self.store.mailbox(self.name, after=self.mail_read, until=self.mail_until, limit=MAIL_PAGE)
        except StoreError as exc:
            log.error("cannot read %s's kept messages: %s", self.name, exc)
            page = []
        self.mail_read = page[-1].row if len(page) == MAIL_PAGE else self.mail_until
        self.replay.extend((wire.MailEvent(mail.sealed).to_doc(), mail.row) for mail in page)


def estimate(event: dict[str, Any]) -> int:
    """About how many bytes an event takes sealed: its signed statement (JSON-escaped twice) or its sealed mail,
    and the rest."""
    carried = event.get("signed", event.get("sealed"))
    return 1024 + (2 * len(carried) if isinstance(carried, str) else 0)
