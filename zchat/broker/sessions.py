"""A logged-in session as the broker core holds it, and the budget its user shares across sessions.

Every limit belongs to the user, across all of that user's sessions
(`UserBudget`): the message rate, kept across logins, and the SENDs waiting to
be opened, dropped unopened when their session ends (`Cancel`). A `Session` is
bound to the routing identity that completed the login proof; what goes out to
it is its `Outbound` (`zchat.broker.outbound`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from zchat import crypto
from zchat import protocol as p
from zchat.broker.login import Pending
from zchat.broker.outbound import Outbound
from zchat.broker.ratelimit import TokenBucket
from zchat.broker.store import Store
from zchat.broker.work import Cancel, require_plaintext
from zchat.config import Config
from zchat.errors import RemoteProtocolError
from zchat.events import UserInfo


@dataclass(slots=True)
class UserBudget:
    """What one user uses of the broker, whatever its sessions and connections; kept across logins."""

    messages: TokenBucket
    queued_sends: int = 0  # SEND envelopes of all its sessions waiting to be opened
    queued_send_bytes: int = 0


class BadStatement(RemoteProtocolError):
    """A SEND that does not hold this session's next statement, signed by its key; `statement` when it could be
    read (the answer names it, never why it was refused)."""

    def __init__(self, why: str, statement: p.Statement | None) -> None:
        super().__init__(why)
        self.statement = statement


@dataclass(slots=True)
class Session:
    identity: bytes
    info: UserInfo
    key: crypto.PublicKey
    session_id: str
    delivery_key: bytes
    last_heard: float
    last_ping: float
    budget: UserBudget
    outbound: Outbound  # what goes out to it: replay, backlog, window
    seq_in: int = 0
    opening: int = 0  # SEND envelopes of this session handed out as OpenJobs and not yet back
    opening_bytes: int = 0  # their size (its user's budget counts them with its other sessions')
    opening_sizes: collections.deque[int] = field(default_factory=collections.deque)
    gone: bool = False  # its connection dropped: frames it sent before may still be queued for us

    @classmethod
    def start(
        cls, identity: bytes, pending: Pending, budget: UserBudget, now: float, config: Config, store: Store
    ) -> Session:
        """The session a proven login opens on `identity`."""
        info = UserInfo(pending.user, crypto.fingerprint_der(pending.key_der), pending.bot, pending.key_der)
        session_id = p.session_id(pending.server_nonce)
        outbound = Outbound(identity, info.name, info.key_der, pending.delivery_key, session_id, config, store)
        return cls(identity, info, pending.key, session_id, pending.delivery_key, now, now, budget, outbound)

    @property
    def name(self) -> str:
        return self.info.name

    def read_statement(self, plaintext: bytes | None, max_text_bytes: int) -> tuple[p.SignedStatement, p.Statement]:
        """The signed statement an opened SEND holds (None: it did not open), if it is this session's (its user,
        its session id), the next in its sequence, and signed by its key; BadStatement otherwise."""
        statement: p.Statement | None = None
        try:
            doc = p.load_doc(require_plaintext(plaintext))
            signed = p.SignedStatement.from_doc(doc, max_text_bytes)
            statement = p.Statement.parse(signed.statement)
            if statement.sender != self.name or statement.session != self.session_id:
                raise RemoteProtocolError("statement for another user or session")
            if statement.seq != self.seq_in + 1:
                raise RemoteProtocolError(f"sequence {statement.seq}, expected {self.seq_in + 1}")
            crypto.verify(self.key, p.statement_signing_input(signed.statement), signed.signature)
        except (crypto.CryptoError, RemoteProtocolError) as exc:
            raise BadStatement(str(exc), statement) from None
        return signed, statement

    def take_send(self, size: int, max_sends: int, max_bytes: int) -> bool:
        """A SEND envelope of `size` bytes to be opened, counted against its user's budget; False (and nothing
        counted) when its user has `max_sends` or `max_bytes` waiting already: it sends faster than we keep up."""
        budget = self.budget
        if budget.queued_sends >= max_sends or budget.queued_send_bytes + size > max_bytes:
            return False
        self.opening += 1
        self.opening_bytes += size
        self.opening_sizes.append(size)
        budget.queued_sends += 1
        budget.queued_send_bytes += size
        return True

    def send_opened(self) -> None:
        """One of its SEND envelopes came back opened: it leaves its user's budget."""
        self.opening = max(0, self.opening - 1)
        self.budget.queued_sends = max(0, self.budget.queued_sends - 1)
        if self.opening_sizes:
            size = self.opening_sizes.popleft()
            self.opening_bytes -= size
            self.budget.queued_send_bytes = max(0, self.budget.queued_send_bytes - size)

    def drop_sends(self) -> Cancel:
        """The session ended with SEND envelopes not yet opened: they leave its user's budget, and are dropped
        unopened."""
        budget = self.budget
        budget.queued_sends = max(0, budget.queued_sends - self.opening)
        budget.queued_send_bytes = max(0, budget.queued_send_bytes - self.opening_bytes)
        self.opening, self.opening_bytes = 0, 0
        self.opening_sizes.clear()
        return Cancel(self.name, self.session_id)
