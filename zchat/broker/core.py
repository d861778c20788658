"""The broker's rules, without sockets: sessions, statements, fan-out, presence, heartbeats.

`BrokerCore.receive()` takes one message from a ROUTER identity and returns
work (`zchat.broker.work`): frames ready to send, and crypto jobs (open an
envelope, seal a challenge, seal a delivery). Whoever runs an OpenJob hands its
result back to `opened()`, which returns more work; `tick()` does the timed
work. The I/O loop (zchat.broker.main) moves frames, runs the jobs (or
`run_inline()` does), reports peers it could not reach (`unreachable()`,
`too_slow()`), and brings in what the core does not read itself: the time
(each entry point's monotonic `now`, and `wall`, the wall-clock time stamped on
what is kept) and who is registered (`keys_read()`).

Its rooms: logins up to a proven LOGIN (`zchat.broker.login`); a session and
its user's budget (`zchat.broker.sessions`); what goes out to a session, in
order and as its window allows (`zchat.broker.outbound`: deliveries are
numbered as their jobs are made, and must be sent in that order); joins and
leaves (`zchat.broker.presence`); what is kept (`zchat.broker.archive`). A
sender hears `accepted` only once the I/O loop has called `commit()` after the
store took the message: one commit per turn (group commit).

A routing identity is trusted only after it completed the login proof; its
session is bound to it. Every failure of a peer's frame is a silent drop
(details go to the log) or, during login, the one generic REFUSED answer.
"""

from __future__ import annotations

import logging
from typing import Any

from zchat import crypto
from zchat import protocol as p
from zchat.broker.archive import Archive
from zchat.broker.login import Logins, Pending, busy, welcome
from zchat.broker.presence import Presence
from zchat.broker.ratelimit import PeerLog, TokenBucket, short
from zchat.broker.registered import RegisteredKeys
from zchat.broker.sessions import BadStatement, Session, UserBudget
from zchat.broker.store import Store
from zchat.broker.work import Opened, OpenJob, Outgoing, Work
from zchat.config import Config
from zchat.errors import RemoteProtocolError, StoreError
from zchat.events import UserInfo
from zchat.protocol import events as wire

log = logging.getLogger(__name__)
peer_log = PeerLog(log)  # lines a peer's frames cause: rate-limited per source

EVICTED_MEMORY = 60.0
SWEEPS_PER_INTERVAL = 10  # tick() looks at every session this often per heartbeat interval, at most


class BrokerCore:
    def __init__(
        self, broker_public: crypto.PublicKey, keys: RegisteredKeys, config: Config, store: Store, wall: float
    ) -> None:
        """The core never holds the broker's private key: the jobs it returns are done by whoever has it.

        `keys`: who is registered, as the I/O loop read the key files (`keys_read()` brings changes). `wall`: the
        wall-clock time now (the history older than `history_days` is not loaded).
        """
        self.now = 0.0  # the monotonic time the current entry point was called with
        self.wall = wall  # the wall-clock time last given: stamped on each chat message and kept in the store
        self.store = store
        self.archive = Archive(store, config, wall)
        self.config = config
        self.logins = Logins(broker_public, keys, config)
        self.max_body = p.max_body_bytes(config.max_text_bytes)
        # At least two of the largest SENDs, or a long message would end its session as "too fast" every time.
        self.queued_send_bytes = max(config.queued_send_bytes_per_user, 2 * self.max_body)
        self.sessions: dict[bytes, Session] = {}
        self.by_name: dict[str, bytes] = {}
        self.evicted: dict[bytes, float] = {}
        self.gone: set[bytes] = set()  # sessions whose connection dropped, ended once their frames are handled
        self.presence = Presence(config.presence_interval)  # joins and leaves not yet sent
        self.budgets: dict[str, UserBudget] = {}  # per user; forgotten once idle with no session
        self.last_sweep = float("-inf")
        self.shutdown_requested_by: str | None = None

    def _at(self, now: float, wall: float | None) -> None:
        """The time an entry point was called at; without `wall`, the wall clock is taken as last given."""
        self.now = now
        if wall is not None:
            self.wall = wall

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
            return self._from_session(session, command, body, now)
        if command == p.HELLO:
            return self.logins.hello_frame(identity, body, now, user, source, len(self.sessions))
        if command == p.LOGIN:
            return self.logins.login_frame(identity, body)
        if identity in self.evicted:
            return [Outgoing(identity, p.encode_frames(p.EVICTED))]
        log.debug("dropped %s from unauthenticated %s", command.decode(), short(identity))
        return []

    def _from_session(self, session: Session, command: bytes, body: bytes, now: float) -> list[Work]:
        session.last_heard = now
        if command == p.SEND:
            if session.take_send(len(body), self.config.queued_sends_per_user, self.queued_send_bytes):
                return [OpenJob(session.identity, p.SEND, body, session.name, session.session_id)]
            peer_log.warning(session.name, "disconnecting %s: sending faster than the broker can keep up", session.name)
            self.evicted[session.identity] = now
            return self._remove(session, "too fast")
        if command == p.ACK:
            return self._acknowledged(session, body)
        if command != p.PING:
            peer_log.info(session.name, "dropped %s from logged-in %s", command.decode(), session.name)
        return []

    def opened(self, result: Opened, now: float, wall: float | None = None) -> list[Work]:
        """An OpenJob's result: go on with the HELLO, LOGIN or SEND it came from."""
        self._at(now, wall)
        if result.command == p.HELLO:
            return self.logins.hello(result.identity, result.plaintext, now, result.identity in self.sessions)
        if result.command == p.LOGIN:
            return self._on_login(result.identity, result.plaintext, now)
        session = self.sessions.get(result.identity)
        if session is None or session.session_id != result.session:  # it ended while this was being opened
            return []
        session.send_opened()
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
            touched[session.identity] = session
            out += session.outbound.sealed(item)
            if session.outbound.overflowing:
                out += self.too_slow(session.identity, now)
        for session in touched.values():
            if session.identity in self.sessions:
                out += session.outbound.pump()
        return out

    def commit(self, now: float, wall: float | None = None) -> list[Work]:
        """Make durable everything the store took since the last call (one transaction), then tell the senders.

        The I/O loop calls this once per turn, after handling what it read. If the store fails (a full disk,
        say), every message of the transaction is answered `failed` instead of `accepted` (a re-send of a message
        committed earlier stays accepted).
        """
        self._at(now, wall)
        committed = self.archive.commit(self.wall)
        if committed is None:
            return []
        if committed.taken_back:
            for each in self.sessions.values():  # no ACK may delete them: the store may give them out again
                each.outbound.forget_mail(committed.taken_back)
        out: list[Work] = []
        for identity, accepted in committed.answers:
            session = self.sessions.get(identity)
            if session is not None:
                lost = committed.failure and not accepted.duplicate
                answer = wire.FailedEvent(accepted.message_id, committed.failure) if lost else accepted
                out += self._event(session, answer.to_doc())
        return out

    def tick(self, now: float, wall: float | None = None, read_all_at: float | None = None) -> list[Work]:
        """Timeouts, PINGs and forgetting; it looks at every session, so at most SWEEPS_PER_INTERVAL times per
        heartbeat interval however often the I/O loop turns. Silence counts only up to `read_all_at`, the last
        time the I/O loop had read every frame waiting for it (None: now): a PING unread behind a long turn is not.
        """
        self._at(now, wall)
        if now - self.last_sweep < self.config.heartbeat_interval / SWEEPS_PER_INTERVAL:
            return []
        self.last_sweep = now
        out: list[Work] = []
        self.logins.sweep(now)
        for identity, since in list(self.evicted.items()):
            if now - since > EVICTED_MEMORY:
                del self.evicted[identity]
        for name, budget in list(self.budgets.items()):
            if name not in self.by_name and budget.queued_sends == 0 and budget.messages.idle(now):
                del self.budgets[name]
        self.archive.prune_due(now, self.wall)
        heard_until = now if read_all_at is None else min(now, read_all_at)
        for session in list(self.sessions.values()):
            if heard_until - session.last_heard > self.config.heartbeat_timeout:
                log.info("%s timed out", session.name)
                self.evicted[session.identity] = now
                out += self._remove(session, "timed out")
            elif now - session.last_ping >= self.config.heartbeat_interval:
                # Sent whatever else is queued for the session: deliveries may wait behind a burst, a PING never does.
                session.last_ping = now
                out.append(Outgoing(session.identity, p.encode_frames(p.PING)))
        return out

    def keys_read(self, keys: RegisteredKeys, now: float) -> list[Work]:
        """Who is registered, as the I/O loop has just read the key files: logins and private messages go by it
        from now on, and the sessions whose registered key was removed or replaced since they logged in end."""
        self.now = now
        self.logins.keys = keys
        out: list[Work] = []
        for session in list(self.sessions.values()):
            registered = keys.registered(session.name)
            if registered is not None and (registered.key.n, registered.key.e) == (session.key.n, session.key.e):
                continue
            log.warning("%s: registered key removed or replaced; ending the session", session.name)
            reason = "your key is no longer registered with this broker"
            out += self._close(session, wire.ClosedEvent(reason), "key no longer registered")
        return out

    def unreachable(self, identity: bytes, now: float) -> list[Work]:
        """The I/O layer found `identity`'s connection gone: stop sending to it.

        The session ends at `drained()`: what the client sent before it went
        (its last message, its goodbye) may still wait in the inbound queue.
        """
        self.now = now
        self.logins.pending.pop(identity, None)
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
        self.now = now
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
        self.logins.pending.pop(identity, None)
        session = self.sessions.get(identity)
        if session is None:
            return []
        log.warning("disconnecting %s: too slow to keep up", session.name)
        self.evicted[identity] = now
        return self._remove(session, "too slow to keep up")

    def shutdown(self, by: str, now: float, wall: float | None = None) -> list[Work]:
        """Tell everyone the broker is stopping, after everything still waiting for them; the caller flushes and exits.

        The window no longer holds anything back: what waits goes to the socket now, the notice last. What the
        store took is committed first, so the answers to the last messages go out too.
        """
        out = self.commit(now, wall)
        for session in self.sessions.values():
            if not session.gone:
                out += self._last_words(session, wire.ShutdownEvent(by).to_doc())
        self.sessions.clear()
        self.by_name.clear()
        self.logins.pending.clear()
        self.gone.clear()
        return out

    def flush_presence(self, now: float) -> list[Work]:
        """Send the joins and leaves that wait, each session's in one event, at most once per `presence_interval`
        (zchat.broker.presence). The I/O loop calls this every turn."""
        self.now = now
        out: list[Work] = []
        for identity, events in self.presence.flush(now).items():
            session = self.sessions.get(identity)
            if session is not None and not session.gone:
                out += [job for event in events for job in self._deliver(session, event)]
        return out

    def presence_due(self, now: float) -> float | None:
        """Seconds until flush_presence() will send the joins and leaves that wait; None when none wait."""
        return self.presence.due(now)

    def online(self) -> list[UserInfo]:
        return sorted((s.info for s in self.sessions.values()), key=lambda u: u.name)

    # ------------------------------------------------------------ a new session

    def _on_login(self, identity: bytes, plaintext: bytes | None, now: float) -> list[Work]:
        """A LOGIN opened: a session for the login it proves, welcomed, its replay started, announced to the others."""
        pending = self.logins.login(identity, plaintext)
        if not isinstance(pending, Pending):
            return pending
        previous = self.by_name.get(pending.user)
        if previous is None and len(self.sessions) >= self.config.max_clients:
            return busy(identity, f"{self.config.max_clients} clients online (max_clients)")
        out: list[Work] = []
        if previous is not None:
            closed = wire.ClosedEvent("you logged in again elsewhere")
            out += self._close(self.sessions[previous], closed, "logged in again")
        budget = self.budgets.get(pending.user)
        if budget is None:
            rate = self.config.messages_per_second_per_user
            budget = self.budgets[pending.user] = UserBudget(TokenBucket.full(rate, now))
        session = Session.start(identity, pending, budget, now, self.config, self.store)
        self.sessions[identity] = session
        self.by_name[session.name] = identity
        self.evicted.pop(identity, None)
        info = session.info
        log.info("%s logged in (%s%s)", info.name, info.fingerprint[:23], ", bot" if info.bot else "")
        out += self._event(session, welcome(info, self.online(), self.config).to_doc())
        history = self.archive.history_to_replay() if pending.history else []
        out += session.outbound.start_replay(history, self.archive.last_mail_row())
        self._announce(wire.JoinEvent(info), exclude=identity)
        return out

    # ------------------------------------------------------------ statements

    def _on_send(self, session: Session, plaintext: bytes | None, now: float) -> list[Work]:
        try:
            signed, statement = session.read_statement(plaintext, self.config.max_text_bytes)
        except BadStatement as exc:
            # Its sequence is out of step from now on: the session ends, and the client logs in again and
            # re-sends what was not accepted. The answer names the statement when it could be read, never why.
            peer_log.info(session.name, "refused a SEND from %s (%s); ending the session", session.name, exc)
            seq, message_id = (exc.statement.seq, exc.statement.message_id) if exc.statement else (None, "")
            return self._close(session, wire.RefusedEvent(seq, message_id), "connection lost")
        session.seq_in = statement.seq
        if statement.kind == "chat":
            return self._on_chat(session, signed, statement, now)
        if statement.kind == "who":
            return self._event(session, wire.WhoEvent(tuple(self.online())).to_doc())
        if statement.kind == "shutdown":
            if session.name in self.config.admins:
                log.info("shutdown requested by %s", session.name)
                self.shutdown_requested_by = session.name
                return []
            message = "/shutdown refused: only admins listed in the broker's config.json may stop it"
            return self._event(session, wire.ErrorEvent(message).to_doc())
        log.info("%s left", session.name)
        return self._remove(session, "left")

    def _on_chat(self, session: Session, signed: p.SignedStatement, statement: p.Statement, now: float) -> list[Work]:
        """Keep a chat message in the store, send it on, and answer the sender once it is committed."""
        message_id, to = statement.message_id, statement.to
        try:
            earlier = self.archive.seen(session.name, message_id)
        except StoreError as exc:
            return self._failed(session, statement, f"not stored: {exc}")
        if earlier is not None:  # a re-send of a message we have: say so again, deliver nothing
            return self._after_commit(session, wire.AcceptedEvent(message_id, earlier, duplicate=True))
        problem = p.text_problem(statement.body, self.config.max_text_bytes)
        if problem is None and statement.timestamp is None:
            problem = f"its time stamp is not a time from 1970 to 2100 (ts must be 0 to {p.MAX_TIMESTAMP})"
        recipient = None if to is None or problem else self.logins.keys.registered(to)
        if problem is None and to is not None and recipient is None:
            problem = f"nobody is registered here as {to}"
        if problem is None and not session.budget.messages.take(now):
            problem = f"you are sending more than {self.config.messages_per_second_per_user:g} messages per second"
        if problem is None:
            problem = self.archive.space_problem_now()
        if problem:
            return self._failed(session, statement, problem)
        # Stamped with the broker's clock (like IRCv3 server-time): clients show this, not the author's ts.
        received = round(self.wall, 3)
        live = wire.ChatEvent(signed, received).to_doc()
        if to is None:
            kept = wire.ChatEvent(signed, received, session.info, history=True).to_doc()
            try:
                self.archive.keep_chat(session.name, message_id, received, kept)
            except StoreError as exc:
                return self._failed(session, statement, f"not stored: {exc}")
            return self._after_commit(session, wire.AcceptedEvent(message_id, received)) + self._broadcast(
                live, exclude=session.identity
            )
        if recipient is None:  # checked above
            return []
        # Kept until its recipient acknowledges it, sealed to the recipient: a copy of the database shows nothing.
        mail = wire.ChatEvent(signed, received, session.info, away=True).to_doc()
        sealed = crypto.seal(recipient.key, p.dump_doc(mail), wire.MAIL_CONTEXT)
        online = self.by_name.get(to)
        try:
            problem = self.archive.mail_problem(session.name, to, len(sealed))
            if problem:
                return self._failed(session, statement, problem)
            row = self.archive.keep_mail(to, session.name, message_id, received, sealed)
        except StoreError as exc:
            return self._failed(session, statement, f"not stored: {exc}")
        out = self._after_commit(session, wire.AcceptedEvent(message_id, received, queued=online is None))
        if online is not None:
            out += self._event(self.sessions[online], live, row)
        return out

    def _failed(self, session: Session, statement: p.Statement, problem: str) -> list[Work]:
        preview = statement.body[:40] + ("…" if len(statement.body) > 40 else "")
        return self._event(session, wire.FailedEvent(statement.message_id, f"{problem}: {preview!r}").to_doc())

    def _after_commit(self, session: Session, accepted: wire.AcceptedEvent) -> list[Work]:
        """`accepted` goes to the session at the next commit(), once what the store took is durable."""
        self.archive.after_commit(session.identity, accepted)
        return []

    def _acknowledged(self, session: Session, tag: bytes) -> list[Work]:
        """The session has read every EVENT up to the one `tag` names: delete the kept mail it has read, send what
        waits, seal more backlog."""
        read = session.outbound.acknowledge(tag)
        if read is None:
            return []
        if read:
            self.archive.delete_mail(read)
        return session.outbound.release()

    # ------------------------------------------------------------ helpers

    def _close(self, session: Session, last: wire.ClosedEvent | wire.RefusedEvent, public_reason: str) -> list[Work]:
        """End a session: tell it why (`closed`: for good; `refused`: log in again), tell the others it left.

        Its later frames are dropped, not answered with EVICTED: that would go out at once, and could
        overtake the `closed` still waiting to be sealed, and the client would reconnect.
        """
        out = [] if session.gone else self._last_words(session, last.to_doc())
        return out + self._remove(session, public_reason)

    def _last_words(self, session: Session, event: dict[str, Any]) -> list[Work]:
        """Everything still waiting for a session that ends now (its login's replay aside), its joins and leaves,
        then `event`, past its window."""
        return session.outbound.last_words([*self._send_presence_events(session), event])

    def _event(self, session: Session, event: dict[str, Any], mail_row: int | None = None) -> list[Work]:
        """The job that seals one EVENT for one session (none for a session whose connection dropped).

        Joins and leaves still waiting for it go first: a member hears of a user before hearing from them.
        `mail_row`: the event carries this kept private message, deleted once the session acknowledges it.
        """
        if session.gone:
            return []
        return self._send_presence(session) + self._deliver(session, event, mail_row)

    def _announce(self, change: wire.JoinEvent | wire.LeaveEvent, exclude: bytes) -> None:
        """A join or leave for everyone but `exclude`; it waits for flush_presence() or their next event."""
        self.presence.announce(
            change, [s.identity for s in self.sessions.values() if s.identity != exclude and not s.gone]
        )

    def _send_presence(self, session: Session) -> list[Work]:
        return [job for event in self._send_presence_events(session) for job in self._deliver(session, event)]

    def _send_presence_events(self, session: Session) -> list[dict[str, Any]]:
        """The joins and leaves waiting for `session`, as the one event that carries them (none if none wait)."""
        events = self.presence.take(session.identity)
        return [] if session.gone else events

    def _deliver(self, session: Session, event: dict[str, Any], mail_row: int | None = None) -> list[Work]:
        """The job that seals `event` for `session`; behind its replay and backlog, if it has them (a session with
        too much waiting there is too slow)."""
        out = session.outbound.deliver(event, mail_row)
        if session.outbound.behind and session.identity in self.sessions:
            return out + self.too_slow(session.identity, self.now)
        return out

    def _broadcast(self, event: dict[str, Any], exclude: bytes) -> list[Work]:
        return [o for s in list(self.sessions.values()) if s.identity != exclude for o in self._event(s, event)]

    def _remove(self, session: Session, reason: str) -> list[Work]:
        """End a session: its SENDs not yet opened are dropped unopened, and leave its user's budget."""
        self.sessions.pop(session.identity, None)
        self.gone.discard(session.identity)
        self.presence.forget(session.identity)
        if self.by_name.get(session.name) == session.identity:
            del self.by_name[session.name]
        self._announce(wire.LeaveEvent(session.name, reason), exclude=session.identity)
        if not session.opening:
            return []
        peer_log.info(
            session.name, "%s's session ended with %d envelopes not yet opened", session.name, session.opening
        )
        return [session.drop_sends()]
