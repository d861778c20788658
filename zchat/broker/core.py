"""The broker's rules, without sockets: logins, sessions, fan-out, heartbeats.

`BrokerCore.receive()` takes one message from a ROUTER identity and returns
work: frames ready to send, and crypto jobs (`zchat.broker.work`): open an
envelope, seal a challenge, seal a delivery. Whoever runs an OpenJob hands
its result back to `opened()`, which returns more work. `tick()` does the
timed work. The I/O loop in zchat.broker.main only moves frames, runs the jobs (in
its own loop or in worker processes), and reports peers it could not reach
(`unreachable()`, `too_slow()`). `run_inline()` runs every job at once, for
a broker without workers and for tests.

Order: the core numbers each session's deliveries as it creates their jobs.
Whoever runs the jobs must send each recipient's deliveries in the order they
were created, and hand back the OpenJobs' results in the order their frames
arrived (zchat.broker.workers does both).

What must survive a restart goes to the store (`zchat.broker.store`): the room's
history, private messages until their recipient has read them, and the ids of
accepted messages (so a re-send is recognised). A sender hears `accepted` only
once the I/O loop has called `commit()` after the store took the message: one
commit for everything since the previous call (group commit).

Every limit belongs to the user, across all of that user's sessions
(`UserBudget`): the message rate, kept across logins; the SENDs waiting to be
opened, dropped unopened when their session ends (`Cancel`); the mail it has
waiting for others and the mail waiting for it, whether it is online or not.
A login's kept mail is read from the store a page at a time, as its window
allows, so no user's data holds up the loop. Below the disk floor
(`min_free_disk_bytes`, `max_store_bytes`) new messages are refused with
`failed` until there is room again.

A routing identity is trusted only after it completed the login proof; its
session is bound to it. Every failure of a peer's frame is a silent drop
(details go to the log) or, during login, the one generic REFUSED answer.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zchat import crypto
from zchat import protocol as p
from zchat.broker.ratelimit import PeerLog, TokenBucket
from zchat.broker.store import Store
from zchat.broker.work import Cancel, ChallengeJob, DeliveryJob, JobRunner, Opened, OpenJob, Outgoing, Work
from zchat.config import Config
from zchat.errors import RemoteProtocolError, StoreError
from zchat.events import UserInfo
from zchat.keystore import Registry

log = logging.getLogger(__name__)
peer_log = PeerLog(log)  # lines a peer's frames cause: rate-limited per source

HANDSHAKE_TIMEOUT = 10.0
BACKLOG_BATCH = 8  # backlog events sealed at a time for one session, as its window allows
EVICTED_MEMORY = 60.0
SWEEPS_PER_INTERVAL = 10  # tick() looks at every session this often per heartbeat interval, at most
PRUNE_INTERVAL = 60.0  # seconds between the store's retention passes
SEEN_DAYS = 30.0  # an accepted message id is recognised this long after (longer while the message is kept)
DAY = 86_400.0
MAIL_PAGE = 32  # kept private messages read from the store at a time for one session
SENT_MAIL_SHARES = 10  # mail waiting for one recipient may use at most this share of its sender's quota

Queued = tuple[dict[str, Any], int | None]  # an event not yet sealed, and the stored mail row it carries (if any)


@dataclass
class Pending:
    user: str
    key: crypto.PublicKey
    key_der: bytes
    bot: bool
    client_nonce: bytes
    server_nonce: bytes
    delivery_key: bytes
    started: float
    history: bool


@dataclass(slots=True)
class UserBudget:
    """What one user uses of the broker, whatever its sessions and connections; kept across logins."""

    messages: TokenBucket
    queued_sends: int = 0  # SEND envelopes of all its sessions waiting to be opened
    queued_send_bytes: int = 0


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
    seq_in: int = 0
    seq_out: int = 0
    opening: int = 0  # SEND envelopes of this session handed out as OpenJobs and not yet back
    opening_bytes: int = 0  # their size (its user's budget counts them with its other sessions')
    opening_sizes: collections.deque[int] = field(default_factory=collections.deque)
    presence: list[p.JoinEvent | p.LeaveEvent] = field(default_factory=list)  # joins and leaves not yet sent
    gone: bool = False  # its connection dropped: frames it sent before may still be queued for us
    # Flow control (PROTOCOL.md 8.4): at most `send_window_bytes` of EVENTs sent and not acknowledged.
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
    def name(self) -> str:
        return self.info.name

    @property
    def mail_to_read(self) -> bool:
        return self.mail_read < self.mail_until

    @property
    def catching_up(self) -> bool:
        """Its login's replay, or what came meanwhile, is still going out: new events wait behind it."""
        return bool(self.replay or self.mail_to_read or self.backlog)


_LOG_KEY = secrets.token_bytes(16)  # this process's: the same connection gets the same name in one log


def short(identity: bytes) -> str:
    """A name for a connection in the log that does not show its routing id: libzmq numbers connections with a
    counter a peer must not learn (zchat.broker.admission.RoutingIds)."""
    return hashlib.blake2b(identity, key=_LOG_KEY, digest_size=5).hexdigest()


class BrokerCore:
    def __init__(
        self,
        broker_public: crypto.PublicKey,
        registry: Registry,
        config: Config,
        store: Store,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """The core never holds the broker's private key: the jobs it returns are done by whoever has it.

        `wall_clock` gives the time stamped on each chat message and kept in the store (the other times are
        the callers' monotonic `now`).
        """
        self.wall_clock = wall_clock
        self.store = store
        self.store_dirty = False  # the store holds changes not yet committed
        self.awaiting_commit: list[tuple[bytes, p.AcceptedEvent]] = []  # answers that wait for commit()
        self.uncommitted_mail: set[int] = set()  # mail rows added since the last commit (a failed one undoes them)
        self.last_prune = float("-inf")
        # Unregistered names get a challenge sealed to the broker's own key, so a HELLO does not reveal who is
        # registered.
        self.decoy_key = broker_public
        self.decoy_key_der = crypto.public_key_to_der(self.decoy_key)
        self.registry = registry
        self.config = config
        self.max_body = p.max_body_bytes(config.max_text_bytes)
        # At least two of the largest SENDs, or a long message would end its session as "too fast" every time.
        self.queued_send_bytes = max(config.queued_send_bytes_per_user, 2 * self.max_body)
        self.pending: dict[bytes, Pending] = {}
        self.sessions: dict[bytes, Session] = {}
        self.by_name: dict[str, bytes] = {}
        self.evicted: dict[bytes, float] = {}
        self.gone: set[bytes] = set()  # sessions whose connection dropped, ended once their frames are handled
        self.hellos_opening = 0
        self.logins_opening: dict[bytes, Pending] = {}  # LOGINs handed out as OpenJobs, their challenge used up
        self.hello_users: dict[bytes, str] = {}  # HELLOs handed out as OpenJobs: the user their connection is
        self.presence_waiting: set[bytes] = set()  # sessions with joins or leaves not yet sent
        self.last_presence_flush = float("-inf")
        self.login_buckets: dict[str, TokenBucket] = {}
        self.budgets: dict[str, UserBudget] = {}  # per user; forgotten once idle with no session
        self.space_problem: str | None = None  # why new messages cannot be stored now, if they cannot
        # The room's last messages (never private ones) as history events, replayed to each new session that
        # wants them: the store's newest, kept here too.
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=config.history_size)
        self._load_history()
        self.last_registry_check = 0.0
        self.last_sweep = float("-inf")
        self.shutdown_requested_by: str | None = None
        self.now = 0.0  # the time the current entry point was called with

    # ------------------------------------------------------------ entry points

    def receive(self, identity: bytes, frames: list[bytes], now: float, source: str = "", user: str = "") -> list[Work]:
        """Handle one message from `identity`.

        `source` is the peer's address (for the log); `user` the registered name the transport authenticated
        (CurveZMQ), whose logins are rate-limited and who may log in only as itself.
        """
        self.now = now
        try:
            command, body = p.decode_frames(frames, p.CLIENT_COMMANDS, self.max_body)
        except RemoteProtocolError as exc:
            peer_log.info(source or short(identity), "dropped frame from %s (%s): %s", short(identity), source, exc)
            return []
        session = self.sessions.get(identity)
        if session is not None and user and user != session.name:  # an old id on another user's connection
            peer_log.info(user, "dropped a frame from %s on %s's session", user, session.name)
            return []
        if session is not None:
            session.last_heard = now
            if command == p.SEND:
                budget = session.budget
                too_much = budget.queued_send_bytes + len(body) > self.queued_send_bytes
                if budget.queued_sends >= self.config.queued_sends_per_user or too_much:
                    peer_log.warning(
                        session.name, "disconnecting %s: sending faster than the broker can keep up", session.name
                    )
                    self.evicted[identity] = now
                    return self._remove(session, "too fast")
                session.opening += 1
                session.opening_bytes += len(body)
                session.opening_sizes.append(len(body))
                budget.queued_sends += 1
                budget.queued_send_bytes += len(body)
                return [OpenJob(identity, p.SEND, body, session.name, session.session_id)]
            if command == p.ACK:
                return self._acknowledged(session, body)
            if command != p.PING:
                peer_log.info(session.name, "dropped %s from logged-in %s", command.decode(), session.name)
            return []
        if command == p.HELLO:
            return self._on_hello_frame(identity, body, now, user, source)
        if command == p.LOGIN:
            pending = self.pending.pop(identity, None)
            if pending is None:  # also a second LOGIN while the first is being opened: one RSA open per HELLO
                return self._refuse(identity, "LOGIN without a challenge")
            self.logins_opening[identity] = pending
            return [OpenJob(identity, p.LOGIN, body)]
        if identity in self.evicted:
            return [Outgoing(identity, p.encode_frames(p.EVICTED))]
        log.debug("dropped %s from unauthenticated %s", command.decode(), short(identity))
        return []

    def opened(self, result: Opened, now: float) -> list[Work]:
        """An OpenJob's result: go on with the HELLO, LOGIN or SEND it came from."""
        self.now = now
        if result.command == p.HELLO:
            self.hellos_opening -= 1
            return self._on_hello(result.identity, result.plaintext, now, self.hello_users.pop(result.identity, ""))
        if result.command == p.LOGIN:
            return self._on_login(result.identity, result.plaintext, now)
        session = self.sessions.get(result.identity)
        if session is None or session.session_id != result.session:  # it ended while this was being opened
            return []
        session.opening = max(0, session.opening - 1)
        session.budget.queued_sends = max(0, session.budget.queued_sends - 1)
        if session.opening_sizes:
            size = session.opening_sizes.popleft()
            session.opening_bytes -= size
            session.budget.queued_send_bytes = max(0, session.budget.queued_send_bytes - size)
        return self._on_send(session, result.plaintext, now)

    def sendable(self, items: list[Outgoing], now: float) -> list[Work]:
        """Sealed frames on their way out: the EVENTs that fit their session's window, and more backlog to seal.

        The rest wait in the session until it acknowledges what it has read (`ACK`); a session for which
        more than `send_queue_bytes` wait is too slow, and is disconnected.
        """
        self.now = now
        out: list[Work] = []
        touched: dict[bytes, Session] = {}
        for item in items:
            session = self.sessions.get(item.identity)
            if session is None and item.identity in self.evicted and item.frames[1] == p.EVENT:
                continue  # ended as too slow or too fast a moment ago: it hears EVICTED at its next frame
            if session is None or item.frames[1] != p.EVENT:
                out.append(item)
                continue
            session.sealing = max(0, session.sealing - 1)
            touched[session.identity] = session
            size = len(item.frames[2])
            if session.held or self._window_full(session, size):
                session.held.append(item)
                session.held_bytes += size
                if (
                    session.held_bytes > self.config.send_queue_bytes
                    or len(session.held) > self.config.send_queue_limit
                ):
                    out += self.too_slow(session.identity, now)
                continue
            out.append(self._in_flight(session, item))
        for session in touched.values():
            if session.identity in self.sessions:
                out += self._pump(session)
        return out

    def commit(self, now: float) -> list[Work]:
        """Make durable everything the store took since the last call (one transaction), then tell the senders.

        The I/O loop calls this once per turn, after handling what it read. If the store fails (a full disk,
        say), every message of the transaction is answered `failed` instead of `accepted` (a re-send of a message
        committed earlier stays accepted).
        """
        self.now = now
        if not self.store_dirty:
            return []
        self.store_dirty = False
        answers, self.awaiting_commit = self.awaiting_commit, []
        added_mail, self.uncommitted_mail = self.uncommitted_mail, set()
        failure = ""
        try:
            self.store.commit()
        except StoreError as exc:
            log.error("%s", exc)
            failure = f"not stored: {exc}"
            self._load_history()
            self._forget_mail(added_mail)
        out: list[Work] = []
        for identity, accepted in answers:
            session = self.sessions.get(identity)
            if session is not None:
                lost = failure and not accepted.duplicate
                answer = p.FailedEvent(accepted.message_id, failure) if lost else accepted
                out += self._event(session, answer.to_doc())
        return out

    def _forget_mail(self, rows: set[int]) -> None:
        """Mail rows a failed commit took back: no ACK may delete them, since the store may give them out again."""
        for session in self.sessions.values():
            session.mail_seqs = collections.deque(entry for entry in session.mail_seqs if entry[1] not in rows)
            for queue in (session.replay, session.backlog):
                if any(row in rows for _, row in queue):
                    kept = [(event, None if row in rows else row) for event, row in queue]
                    queue.clear()
                    queue.extend(kept)

    def tick(self, now: float) -> list[Work]:
        """Timeouts, PINGs and forgetting; it looks at every session, so at most SWEEPS_PER_INTERVAL times per
        heartbeat interval however often the I/O loop turns."""
        self.now = now
        if now - self.last_sweep < self.config.heartbeat_interval / SWEEPS_PER_INTERVAL:
            return []
        self.last_sweep = now
        out: list[Work] = []
        for identity, pending in list(self.pending.items()):
            if now - pending.started > HANDSHAKE_TIMEOUT:
                del self.pending[identity]
        for identity, since in list(self.evicted.items()):
            if now - since > EVICTED_MEMORY:
                del self.evicted[identity]
        for source, bucket in list(self.login_buckets.items()):
            if bucket.idle(now):
                del self.login_buckets[source]
        for name, budget in list(self.budgets.items()):
            if name not in self.by_name and budget.queued_sends == 0 and budget.messages.idle(now):
                del self.budgets[name]
        if now - self.last_registry_check >= self.config.heartbeat_interval:
            self.last_registry_check = now
            out += self._end_revoked_sessions(now)
        if now - self.last_prune >= PRUNE_INTERVAL:
            self.last_prune = now
            self._prune()
        for session in list(self.sessions.values()):
            if now - session.last_heard > self.config.heartbeat_timeout:
                log.info("%s timed out", session.name)
                self.evicted[session.identity] = now
                out += self._remove(session, "timed out")
            elif now - session.last_ping >= self.config.heartbeat_interval:
                # Sent whatever else is queued for the session: deliveries may wait behind a burst, a PING never does.
                session.last_ping = now
                out.append(Outgoing(session.identity, p.encode_frames(p.PING)))
        return out

    def unreachable(self, identity: bytes, now: float) -> list[Work]:
        """The I/O layer found `identity`'s connection gone: stop sending to it.

        The session ends at `drained()`: what the client sent before it went
        (its last message, its goodbye) may still wait in the inbound queue.
        """
        self.pending.pop(identity, None)
        session = self.sessions.get(identity)
        if session is not None and not session.gone:
            log.info("%s disconnected", session.name)
            session.gone = True
            self.gone.add(identity)
        return []

    def drained(self, now: float) -> list[Work]:
        """The I/O layer has read everything queued: end the sessions whose connection dropped.

        A session whose last envelopes are still being opened ends at a later call.
        """
        out: list[Work] = []
        for identity in list(self.gone):
            session = self.sessions.get(identity)
            if session is None:
                self.gone.discard(identity)
            elif session.opening == 0:
                out += self._remove(session, "connection lost")
        return out

    def too_slow(self, identity: bytes, now: float) -> list[Work]:
        """`identity`'s send queue is full: end its session, and answer its next frame with EVICTED."""
        self.pending.pop(identity, None)
        session = self.sessions.get(identity)
        if session is None:
            return []
        log.warning("disconnecting %s: too slow to keep up", session.name)
        self.evicted[identity] = now
        return self._remove(session, "too slow to keep up")

    def shutdown(self, by: str, now: float) -> list[Work]:
        """Tell everyone the broker is stopping, after everything still waiting for them; the caller flushes and exits.

        The window no longer holds anything back: what waits goes to the socket now, the notice last. What the
        store took is committed first, so the answers to the last messages go out too.
        """
        out = self.commit(now)
        for session in self.sessions.values():
            if not session.gone:
                out += self._last_words(session, p.ShutdownEvent(by).to_doc())
        self.sessions.clear()
        self.by_name.clear()
        self.pending.clear()
        self.gone.clear()
        return out

    def flush_presence(self, now: float) -> list[Work]:
        """Send the joins and leaves that wait, each session's in one event.

        The I/O loop calls this every turn. Joins and leaves go out at most once per
        `presence_interval`: a change after a quiet spell goes out at once, and in a
        login storm or a mass disconnect each member gets one event for many changes,
        not one sealed event per change.
        """
        if not self.presence_waiting or now - self.last_presence_flush < self.config.presence_interval:
            return []
        self.last_presence_flush = now
        out: list[Work] = []
        for identity in list(self.presence_waiting):
            session = self.sessions.get(identity)
            if session is not None:
                out += self._send_presence(session)
        self.presence_waiting.clear()
        return out

    def presence_due(self, now: float) -> float | None:
        """Seconds until flush_presence() will send the joins and leaves that wait; None when none wait."""
        if not self.presence_waiting:
            return None
        return max(0.0, self.last_presence_flush + self.config.presence_interval - now)

    def online(self) -> list[UserInfo]:
        return sorted((s.info for s in self.sessions.values()), key=lambda u: u.name)

    # ------------------------------------------------------------ login

    def _refuse(self, identity: bytes, why: str) -> list[Work]:
        peer_log.info(short(identity), "login refused for %s: %s", short(identity), why)
        self.pending.pop(identity, None)
        return [Outgoing(identity, p.encode_frames(p.REFUSED))]

    def _busy(self, identity: bytes, why: str, who: str = "") -> list[Work]:
        peer_log.warning(who or short(identity), "login from %s turned away: %s", short(identity), why)
        return [Outgoing(identity, p.encode_frames(p.BUSY))]

    def _on_hello_frame(self, identity: bytes, body: bytes, now: float, user: str, source: str) -> list[Work]:
        # Cheap checks first: no RSA work for logins we would turn away anyway.
        who = user or source  # the transport's user; a core driven without one (tests, fuzzing) goes by source
        bucket = self.login_buckets.setdefault(who, TokenBucket.full(self.config.logins_per_second_per_user, now))
        if not bucket.take(now):
            return self._busy(identity, f"more than {self.config.logins_per_second_per_user:g} logins/s by {who}", who)
        logins_in_progress = len(self.pending) + self.hellos_opening + len(self.logins_opening)
        if identity not in self.pending and logins_in_progress >= self.config.max_pending_logins:
            return self._busy(identity, "too many logins in progress")
        if user and self.registry.registered(user) is None:  # revoked since its connection was admitted
            return self._refuse(identity, f"{user} is no longer registered")
        if len(self.sessions) >= self.config.max_clients:  # before reading the name: no hint who is online
            return self._busy(identity, f"{self.config.max_clients} clients online (max_clients)")
        self.hellos_opening += 1
        self.hello_users[identity] = user
        return [OpenJob(identity, p.HELLO, body)]

    def _on_hello(self, identity: bytes, plaintext: bytes | None, now: float, transport_user: str) -> list[Work]:
        if identity in self.sessions:
            return []
        try:
            hello = p.Hello.decode(_require_plaintext(plaintext))
        except (crypto.CryptoError, RemoteProtocolError) as exc:
            return self._refuse(identity, f"bad HELLO ({exc})")
        if transport_user and hello.user != transport_user:
            return self._refuse(identity, f"HELLO for {hello.user!r} on {transport_user!r}'s connection")
        registered = self.registry.registered(hello.user)
        if registered is None:
            peer_log.info(
                short(identity), "login for unregistered %r from %s; it will be refused", hello.user, short(identity)
            )
            user_key, key_der = self.decoy_key, self.decoy_key_der
        elif (twin := self.registry.look_alike(hello.user)) is not None:
            log.error(
                "%r and %r are both registered and look alike: neither may log in until one is removed",
                hello.user,
                twin,
            )
            user_key, key_der = self.decoy_key, self.decoy_key_der
        else:
            user_key, key_der = registered.key, registered.der
        server_nonce = secrets.token_bytes(p.NONCE_BYTES)
        delivery_key = secrets.token_bytes(p.DELIVERY_KEY_BYTES)
        self.pending[identity] = Pending(
            hello.user, user_key, key_der, hello.bot, hello.nonce, server_nonce, delivery_key, now, hello.history
        )
        return [ChallengeJob(identity, key_der, hello.user, hello.nonce, server_nonce, delivery_key)]

    def _on_login(self, identity: bytes, plaintext: bytes | None, now: float) -> list[Work]:
        pending = self.logins_opening.pop(identity, None)
        if pending is None:  # its connection dropped meanwhile
            return []
        try:
            login = p.Login.decode(_require_plaintext(plaintext))
            signed = p.login_proof_input(pending.user, pending.client_nonce, pending.server_nonce)
            crypto.verify(pending.key, signed, login.signature)
            if pending.key is self.decoy_key:
                raise RemoteProtocolError("not registered")
        except (crypto.CryptoError, RemoteProtocolError) as exc:
            return self._refuse(identity, f"bad LOGIN for {pending.user!r} ({exc})")
        previous = self.by_name.get(pending.user)
        if previous is None and len(self.sessions) >= self.config.max_clients:
            return self._busy(identity, f"{self.config.max_clients} clients online (max_clients)")
        out: list[Work] = []
        if previous is not None:
            closed = p.ClosedEvent("you logged in again elsewhere")
            out += self._close(self.sessions[previous], closed, "logged in again")
        info = UserInfo(pending.user, crypto.fingerprint_der(pending.key_der), pending.bot, pending.key_der)
        budget = self.budgets.get(info.name)
        if budget is None:
            budget = self.budgets[info.name] = UserBudget(
                TokenBucket.full(self.config.messages_per_second_per_user, now)
            )
        session_id = p.session_id(pending.server_nonce)
        session = Session(identity, info, pending.key, session_id, pending.delivery_key, now, now, budget)
        self.sessions[identity] = session
        self.by_name[info.name] = identity
        self.evicted.pop(identity, None)
        log.info("%s logged in (%s%s)", info.name, info.fingerprint[:23], ", bot" if info.bot else "")
        welcome = p.WelcomeEvent(
            info.name,
            tuple(self.online()),
            self.config.heartbeat_interval,
            self.config.heartbeat_timeout,
            self.config.max_text_bytes,
        )
        out += self._event(session, welcome.to_doc())
        if pending.history:
            session.replay.extend((earlier, None) for earlier in self._history_to_replay())
        session.mail_until = self._last_mail_row()
        out += self._pump(session)
        self._announce(p.JoinEvent(info), exclude=identity)
        return out

    def _history_to_replay(self) -> list[dict[str, Any]]:
        """The newest history entries that fit in `history_replay_bytes`, oldest first."""
        chosen: list[dict[str, Any]] = []
        budget = self.config.history_replay_bytes
        for entry in reversed(self.history):
            budget -= _estimate(entry)
            if budget < 0:
                break
            chosen.append(entry)
        chosen.reverse()
        return chosen

    def _last_mail_row(self) -> int:
        """Where a login's kept mail ends: what is stored later reaches the session live."""
        try:
            return self.store.last_mail_row()
        except StoreError as exc:
            log.error("cannot read the kept messages: %s", exc)
            return 0

    def _read_mail_page(self, session: Session) -> None:
        """The next page of the private messages kept for the session, oldest first, each with its row (deleted
        once acknowledged), onto its replay."""
        try:
            page = self.store.mailbox(session.name, after=session.mail_read, until=session.mail_until, limit=MAIL_PAGE)
        except StoreError as exc:
            log.error("cannot read %s's kept messages: %s", session.name, exc)
            page = []
        session.mail_read = page[-1].row if len(page) == MAIL_PAGE else session.mail_until
        session.replay.extend((p.MailEvent(mail.sealed).to_doc(), mail.row) for mail in page)

    def _load_history(self) -> None:
        """The room's history as the store has it (at start, and after a failed commit)."""
        self.history.clear()
        try:
            kept = self.store.history(self.config.history_size, since=self._oldest_kept(self.config.history_days))
        except StoreError as exc:
            log.error("cannot read the history: %s", exc)
            return
        self.history.extend(entry.document for entry in kept)

    def _oldest_kept(self, days: float) -> float:
        """The wall-clock time before which what is kept for `days` days is dropped (0 days: nothing is)."""
        return self.wall_clock() - days * DAY if days else 0.0

    def _prune(self) -> None:
        """Drop what the retention settings say is too old (history, mail, remembered ids)."""
        try:
            self.store.prune(
                self.wall_clock(),
                history_size=self.config.history_size,
                history_days=self.config.history_days,
                mail_days=self.config.mailbox_days,
                seen_days=SEEN_DAYS,
            )
        except StoreError as exc:
            log.error("%s", exc)
            return
        self.store_dirty = True
        oldest = self._oldest_kept(self.config.history_days)
        while self.history and self.history[0]["received"] < oldest:
            self.history.popleft()

    # ------------------------------------------------------------ statements

    def _on_send(self, session: Session, plaintext: bytes | None, now: float) -> list[Work]:
        statement: p.Statement | None = None
        try:
            doc = p.load_doc(_require_plaintext(plaintext))
            signed = p.SignedStatement.from_doc(doc, self.config.max_text_bytes)
            statement = p.Statement.parse(signed.statement)
            if statement.sender != session.name or statement.session != session.session_id:
                raise RemoteProtocolError("statement for another user or session")
            if statement.seq != session.seq_in + 1:
                raise RemoteProtocolError(f"sequence {statement.seq}, expected {session.seq_in + 1}")
            crypto.verify(session.key, p.statement_signing_input(signed.statement), signed.signature)
        except (crypto.CryptoError, RemoteProtocolError) as exc:
            # Its sequence is out of step from now on: the session ends, and the client logs in again and
            # re-sends what was not accepted. The answer names the statement when it could be read, never why.
            peer_log.info(session.name, "refused a SEND from %s (%s); ending the session", session.name, exc)
            seq, message_id = (statement.seq, statement.message_id) if statement else (None, "")
            return self._close(session, p.RefusedEvent(seq, message_id), "connection lost")
        session.seq_in = statement.seq
        if statement.kind == "chat":
            return self._on_chat(session, signed, statement, now)
        if statement.kind == "who":
            return self._event(session, p.WhoEvent(tuple(self.online())).to_doc())
        if statement.kind == "shutdown":
            if session.name in self.config.admins:
                log.info("shutdown requested by %s", session.name)
                self.shutdown_requested_by = session.name
                return []
            message = "/shutdown refused: only admins listed in the broker's config.json may stop it"
            return self._event(session, p.ErrorEvent(message).to_doc())
        log.info("%s left", session.name)
        return self._remove(session, "left")

    def _on_chat(self, session: Session, signed: p.SignedStatement, statement: p.Statement, now: float) -> list[Work]:
        """Keep a chat message in the store, send it on, and answer the sender once it is committed."""
        message_id, to = statement.message_id, statement.to
        try:
            earlier = self.store.seen(session.name, message_id)
        except StoreError as exc:
            return self._failed(session, statement, f"not stored: {exc}")
        if earlier is not None:  # a re-send of a message we have: say so again, deliver nothing
            return self._after_commit(session, p.AcceptedEvent(message_id, earlier, duplicate=True))
        problem = p.text_problem(statement.body, self.config.max_text_bytes)
        if problem is None and statement.timestamp is None:
            problem = f"its time stamp is not a time from 1970 to 2100 (ts must be 0 to {p.MAX_TIMESTAMP})"
        recipient = None if to is None or problem else self.registry.registered(to)
        if problem is None and to is not None and recipient is None:
            problem = f"nobody is registered here as {to}"
        if problem is None and not session.budget.messages.take(now):
            problem = f"you are sending more than {self.config.messages_per_second_per_user:g} messages per second"
        if problem is None:
            problem = self._space_problem()
        if problem:
            return self._failed(session, statement, problem)
        # Stamped with the broker's clock (like IRCv3 server-time): clients show this, not the author's ts.
        received = round(self.wall_clock(), 3)
        live = p.ChatEvent(signed, received).to_doc()
        if to is None:
            kept = p.ChatEvent(signed, received, session.info, history=True).to_doc()
            try:
                self.store.add_chat(session.name, message_id, received, kept)
            except StoreError as exc:
                return self._failed(session, statement, f"not stored: {exc}")
            self.history.append(kept)
            return self._after_commit(session, p.AcceptedEvent(message_id, received)) + self._broadcast(
                live, exclude=session.identity
            )
        if recipient is None:  # checked above
            return []
        # Kept until its recipient acknowledges it, sealed to the recipient: a copy of the database shows nothing.
        mail = p.ChatEvent(signed, received, session.info, away=True).to_doc()
        sealed = crypto.seal(recipient.key, p.dump_doc(mail), p.MAIL_CONTEXT)
        online = self.by_name.get(to)
        try:
            problem = self._mail_problem(session.name, to, len(sealed))
            if problem:
                return self._failed(session, statement, problem)
            row = self.store.add_mail(to, session.name, message_id, received, sealed)
        except StoreError as exc:
            return self._failed(session, statement, f"not stored: {exc}")
        self.uncommitted_mail.add(row)
        out = self._after_commit(session, p.AcceptedEvent(message_id, received, queued=online is None))
        if online is not None:
            out += self._event(self.sessions[online], live, row)
        return out

    def _mail_problem(self, sender: str, to: str, size: int) -> str | None:
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

    def _space_problem(self) -> str | None:
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

    def _failed(self, session: Session, statement: p.Statement, problem: str) -> list[Work]:
        preview = statement.body[:40] + ("…" if len(statement.body) > 40 else "")
        return self._event(session, p.FailedEvent(statement.message_id, f"{problem}: {preview!r}").to_doc())

    def _after_commit(self, session: Session, accepted: p.AcceptedEvent) -> list[Work]:
        """`accepted` goes to the session at the next commit(), once what the store took is durable."""
        self.awaiting_commit.append((session.identity, accepted))
        self.store_dirty = True
        return []

    def _acknowledged(self, session: Session, tag: bytes) -> list[Work]:
        """The session has read every EVENT up to the one `tag` names: send what waits, seal more backlog."""
        if tag not in session.in_flight_tags:
            return []  # not one we sent and have not yet heard about: a late or repeated ACK
        while session.in_flight:
            sent, size = session.in_flight.popleft()
            session.in_flight_tags.discard(sent)
            session.in_flight_bytes -= size
            session.acknowledged += 1
            if sent == tag:
                break
        read: list[int] = []  # kept private messages it has now read
        while session.mail_seqs and session.mail_seqs[0][0] <= session.acknowledged:
            read.append(session.mail_seqs.popleft()[1])
        if read:
            self._delete_mail(read)
        out: list[Work] = []
        while session.held and not self._window_full(session, len(session.held[0].frames[2])):
            item = session.held.popleft()
            session.held_bytes -= len(item.frames[2])
            out.append(self._in_flight(session, item))
        return out + self._pump(session)

    def _in_flight(self, session: Session, item: Outgoing) -> Outgoing:
        """`item` (an EVENT) goes out now: it counts against the session's window until acknowledged."""
        size, tag = len(item.frames[2]), p.event_tag(item.frames[2])
        session.in_flight.append((tag, size))
        session.in_flight_tags.add(tag)
        session.in_flight_bytes += size
        return item

    def _window_full(self, session: Session, size: int) -> bool:
        """No room for an EVENT of `size` bytes: the window is full (one EVENT always fits an empty one).

        The window also holds at most half of `send_queue_limit` EVENTs, so the socket's own queue never fills.
        """
        if not session.in_flight:
            return False
        return (
            session.in_flight_bytes + size > self.config.send_window_bytes
            or len(session.in_flight) >= self.config.send_queue_limit // 2
        )

    def _delete_mail(self, rows: list[int]) -> None:
        try:
            self.store.delete_mail(rows)
        except StoreError as exc:  # it comes again at the next login; the client shows it once
            log.error("%s", exc)
            return
        self.store_dirty = True

    def _end_revoked_sessions(self, now: float) -> list[Work]:
        """End sessions whose registered key was removed or replaced since they logged in."""
        out: list[Work] = []
        for session in list(self.sessions.values()):
            key = self.registry.lookup(session.name)
            if key is not None and (key.n, key.e) == (session.key.n, session.key.e):  # cheap: runs every tick
                continue
            log.warning("%s: registered key removed or replaced; ending the session", session.name)
            reason = "your key is no longer registered with this broker"
            out += self._close(session, p.ClosedEvent(reason), "key no longer registered")
        return out

    # ------------------------------------------------------------ helpers

    def _close(self, session: Session, last: p.ClosedEvent | p.RefusedEvent, public_reason: str) -> list[Work]:
        """End a session: tell it why (`closed`: for good; `refused`: log in again), tell the others it left.

        Its later frames are dropped, not answered with EVICTED: that would go out at once, and could
        overtake the `closed` still waiting to be sealed, and the client would reconnect.
        """
        out = [] if session.gone else self._last_words(session, last.to_doc())
        return out + self._remove(session, public_reason)

    def _last_words(self, session: Session, event: dict[str, Any]) -> list[Work]:
        """Everything still waiting for a session that ends now (its login's replay aside), then `event`, past its
        window. Kept mail it has not acknowledged stays kept: it comes again at its next login."""
        out: list[Work] = list(session.held)
        session.held.clear()
        backlog, session.backlog = session.backlog, collections.deque()
        session.replay.clear()
        session.mail_read = session.mail_until
        for waiting in [*(queued for queued, _ in backlog), *self._send_presence_events(session), event]:
            out += self._seal(session, waiting)
        return out

    def _event(self, session: Session, event: dict[str, Any], mail_row: int | None = None) -> list[Work]:
        """The job that seals one EVENT for one session (none for a session whose connection dropped).

        Joins and leaves still waiting for it go first: a member hears of a user before hearing from them.
        `mail_row`: the event carries this kept private message, deleted once the session acknowledges it.
        """
        if session.gone:
            return []
        return self._send_presence(session) + self._deliver(session, event, mail_row)

    def _announce(self, change: p.JoinEvent | p.LeaveEvent, exclude: bytes) -> None:
        """A join or leave for everyone but `exclude`; it waits for flush_presence() or their next event."""
        for session in self.sessions.values():
            if session.identity != exclude and not session.gone:
                session.presence.append(change)
                self.presence_waiting.add(session.identity)

    def _send_presence(self, session: Session) -> list[Work]:
        return [job for event in self._send_presence_events(session) for job in self._deliver(session, event)]

    def _send_presence_events(self, session: Session) -> list[dict[str, Any]]:
        """The joins and leaves waiting for `session`, as the one event that carries them (none if none wait)."""
        changes, session.presence = session.presence, []
        self.presence_waiting.discard(session.identity)
        if not changes or session.gone:
            return []
        return [changes[0].to_doc() if len(changes) == 1 else p.PresenceEvent(tuple(changes)).to_doc()]

    def _deliver(self, session: Session, event: dict[str, Any], mail_row: int | None = None) -> list[Work]:
        """The job that seals `event` for `session`; behind its replay and backlog, if it has them."""
        if session.catching_up:
            return self._defer(session, event, mail_row)
        return self._seal(session, event, mail_row)

    def _defer(self, session: Session, event: dict[str, Any], mail_row: int | None) -> list[Work]:
        session.backlog.append((event, mail_row))
        session.backlog_bytes += _estimate(event)
        too_much = session.backlog_bytes > self.config.send_queue_bytes
        if (too_much or len(session.backlog) > self.config.send_queue_limit) and session.identity in self.sessions:
            return self.too_slow(session.identity, self.now)
        return []

    def _pump(self, session: Session) -> list[Work]:
        """Seal the next replay or backlog events while the session's window has room (kept mail is read from the
        store a page at a time, as it is needed)."""
        out: list[Work] = []
        while (
            session.catching_up
            and not session.held
            and session.sealing < BACKLOG_BATCH
            and not self._window_full(session, self.config.send_window_bytes // 2)
        ):
            if not session.replay and session.mail_to_read:
                self._read_mail_page(session)
                continue
            if session.replay:
                event, mail_row = session.replay.popleft()
            else:
                event, mail_row = session.backlog.popleft()
                session.backlog_bytes -= _estimate(event)
            out += self._seal(session, event, mail_row)
        return out

    def _seal(self, session: Session, event: dict[str, Any], mail_row: int | None = None) -> list[Work]:
        session.sealing += 1
        session.seq_out += 1
        if mail_row is not None:
            session.mail_seqs.append((session.seq_out, mail_row))
        info = session.info
        return [
            DeliveryJob(
                session.identity, info.key_der, session.delivery_key, session.session_id, session.seq_out, event
            )
        ]

    def _broadcast(self, event: dict[str, Any], exclude: bytes) -> list[Work]:
        return [o for s in list(self.sessions.values()) if s.identity != exclude for o in self._event(s, event)]

    def _remove(self, session: Session, reason: str) -> list[Work]:
        """End a session: its SENDs not yet opened are dropped unopened, and leave its user's budget."""
        self.sessions.pop(session.identity, None)
        self.gone.discard(session.identity)
        self.presence_waiting.discard(session.identity)
        if self.by_name.get(session.name) == session.identity:
            del self.by_name[session.name]
        self._announce(p.LeaveEvent(session.name, reason), exclude=session.identity)
        if not session.opening:
            return []
        peer_log.info(
            session.name, "%s's session ended with %d envelopes not yet opened", session.name, session.opening
        )
        budget = session.budget
        budget.queued_sends = max(0, budget.queued_sends - session.opening)
        budget.queued_send_bytes = max(0, budget.queued_send_bytes - session.opening_bytes)
        session.opening, session.opening_bytes = 0, 0
        session.opening_sizes.clear()
        return [Cancel(session.name, session.session_id)]


def _estimate(event: dict[str, Any]) -> int:
    """About how many bytes an event takes sealed: its signed statement (JSON-escaped twice) or its sealed mail,
    and the rest."""
    carried = event.get("signed", event.get("sealed"))
    return 1024 + (2 * len(carried) if isinstance(carried, str) else 0)


def _require_plaintext(plaintext: bytes | None) -> bytes:
    if plaintext is None:
        raise crypto.CryptoError()
    return plaintext


def run_inline(core: BrokerCore, runner: JobRunner, work: list[Work], now: float) -> list[Outgoing]:
    """Do every job in `work` now, in order, feeding opened envelopes back to `core`: the frames to send."""
    out: list[Outgoing] = []
    queue = collections.deque(work)
    while queue:
        item = queue.popleft()
        if isinstance(item, Outgoing):
            out.append(item)
            continue
        if isinstance(item, Cancel):  # nothing waits here: every job runs at once
            continue
        result = runner.perform(item)
        if isinstance(result, Opened):
            queue.extendleft(reversed(core.opened(result, now)))
        else:  # sealed frames go out now; what sendable() makes (more backlog to seal) waits its turn
            for made in core.sendable([result], now):
                if isinstance(made, Outgoing):
                    out.append(made)
                else:
                    queue.append(made)
    return out
