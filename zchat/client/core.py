"""A client's connection policy without I/O: `ClientCore`, what every client driver runs.

It owns everything a client decides, and nothing it does with a socket:

- logging in (`ClientSession` for the protocol) and giving each attempt `connect_timeout` seconds;
  a first login that fails, for any reason (a refusal, BUSY, a handshake turned away for now, no answer),
  raises `ConnectError` with a message for a person: whoever started it is waiting and can try again;
- heartbeats (a PING when nothing was sent for `heartbeat_interval`; the connection is lost after
  `heartbeat_timeout` of silence), flow-control ACKs after each batch of frames read;
- reconnecting after a lost connection, an EVICTED, a delivery gap, a BUSY, timed-out or turned-away
  (transport status 300 or 500) re-login, a refused statement, or a statement the socket could not queue: a
  new socket and a new session, after a backoff of 0.5 s doubling to 8 s, +-20 % jitter
  (`zchat.client.attempt`); a REFUSED re-login
  too, up to MAX_REFUSED_RELOGINS since the last welcome; never after a shutdown, a `closed` event, a key the
  transport refuses (status 400), or a broker that fails its proof or sends an unusable welcome;
- key pins (`zchat.client.pins.PinStore`: `KeyChanged` events);
- the acknowledged outbox (`zchat.client.outbox`): every chat message gets its id when the user sends it
  and stays in the outbox until the broker answers it (`Accepted` or `Failed`); after every welcome, what
  is still there is sent again, in order, with the same ids (the broker keeps each id once). Closing for
  good answers every message still waiting with a `Failed` event.

Like h11's `Connection`, it imports no socket library and never reads the clock: every input takes `now`
(`time.monotonic()` in a driver) and `next_deadline()` says when to call `tick()` at the latest. A driver
runs this loop (`zchat.client.driver.SocketDriver` does it for the zmq drivers):

    core.start(now)
    while not core.closed:
        perform every action from core.next_action(), in order:
            Connect     close any socket, open a new DEALER (a new routing id), watch its handshake, connect it
            Send        queue the frames without blocking; if the socket would block: core.send_blocked(now)
            Disconnect  close the socket, letting queued frames out for at most `linger` seconds
        wait until the socket is readable, the handshake monitor reports, or core.next_deadline()
        core.handshake(connected=..., secured=..., broken=...) and core.handshake_refused(status, now),
            as the monitor says
        core.frames_received(frames read now, a bounded batch, now)
        core.tick(now)
        hand the user core.next_event() until it is None

Inputs that end the client for good raise `ConnectError` after queueing the actions that close the
socket: a driver performs the actions in a `finally`.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from zchat import crypto
from zchat import protocol as p
from zchat.client.attempt import ZAP_ERROR, ZAP_REFUSED, ZAP_TEMPORARY, Backoff, Handshake
from zchat.client.outbox import MAX_OUTBOX, Outbox, Outgoing
from zchat.client.pins import PinStore
from zchat.client.session import ClientSession, SeenMessages, State, check_chat
from zchat.errors import (
    BrokerBusy,
    ConnectError,
    DeliveryGap,
    LocalProtocolError,
    LoginRefused,
    RemoteProtocolError,
    StatementRefused,
)
from zchat.events import (
    Accepted,
    ConnectionLost,
    Event,
    Failed,
    Joined,
    KeyChanged,
    Notice,
    SessionClosed,
    Shutdown,
    UserInfo,
    Welcome,
    WhoList,
)

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
# A login refused after we were logged in before is tried again this many times: a broker restarted between
# our HELLO and LOGIN refuses a LOGIN it never challenged. A key that is really refused fails every time. Only a
# welcome resets the count: a BUSY or a timed-out attempt between two refusals proves nothing about our key.
MAX_REFUSED_RELOGINS = 3
BYE_LINGER = 1.0  # seconds a closing socket may take to hand the broker our goodbye
REQUESTS = ("who", "shutdown")

_LOGGING_IN = (State.HELLO_SENT, State.LOGIN_SENT)


# ------------------------------------------------------------ what a driver does


@dataclass(frozen=True)
class Connect:
    """Close any socket; open a new DEALER to the broker (a new routing id), watch its handshake, connect it."""


@dataclass(frozen=True)
class Send:
    """Queue these frames on the socket without blocking; if it would block, call `send_blocked(now)`."""

    frames: list[bytes]


@dataclass(frozen=True)
class Disconnect:
    """Close the socket, letting frames already queued out for at most `linger` seconds."""

    linger: float = 0.0


Action = Connect | Send | Disconnect


def _users_in(event: Event) -> tuple[UserInfo, ...]:
    if isinstance(event, Welcome | WhoList):
        return event.users
    if isinstance(event, Joined):
        return (event.user,)
    return ()


# ------------------------------------------------------------ the core


class ClientCore:
    """One chat client's state and policy across connections; drive it as the module docstring says."""

    def __init__(
        self,
        name: str,
        key: crypto.PrivateKey,
        broker_key: crypto.PublicKey,
        *,
        endpoint: str = "the broker",
        bot: bool = False,
        history: bool = True,
        reconnect: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        pins: PinStore | None = None,
        seen: SeenMessages | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
        outbox_limit: int = MAX_OUTBOX,
    ) -> None:
        """`endpoint` names the broker in error messages; `uniform` draws the backoff jitter (for tests)."""
        self.name = p.check_name(name)
        self.key = key
        self.broker_key = broker_key
        self.endpoint = endpoint
        self.bot = bot
        self.history = history
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self.pins = PinStore(None) if pins is None else pins
        self.seen = SeenMessages() if seen is None else seen  # one for every session: nothing is shown twice
        self.session = self._new_session()
        self.connection = 0  # counts Connect actions: which socket the current session lives on
        self._backoff = Backoff(uniform=uniform)
        self._actions: collections.deque[Action] = collections.deque()
        self._events: collections.deque[Event] = collections.deque()
        self._outbox = Outbox(outbox_limit)
        self._logged_in_before = False
        self._refused_relogins = 0  # logins refused in a row since the last welcome
        self._closed = False
        self._attempt_deadline = 0.0
        self._retry_at: float | None = None
        self._last_heard = 0.0
        self._last_sent = 0.0
        self._handshake = Handshake()  # the transport as the driver reports it, for the first login's error message

    # ------------------------------------------------------------ state

    @property
    def online(self) -> bool:
        """Logged in right now."""
        return self.session.state is State.READY

    @property
    def closed(self) -> bool:
        """Closed for good: by close(), the broker's shutdown or `closed`, a refused login or key."""
        return self._closed

    @property
    def logged_in_before(self) -> bool:
        return self._logged_in_before

    @property
    def roster(self) -> dict[str, UserInfo]:
        """Who is online, as the broker last told us (name -> UserInfo)."""
        return self.session.roster

    @property
    def max_text_bytes(self) -> int:
        return self.session.max_text_bytes

    @property
    def pending(self) -> tuple[str, ...]:
        """The ids of the messages the broker has not answered yet, oldest first."""
        return self._outbox.ids

    def next_deadline(self) -> float | None:
        """The latest time to call `tick()`: a retry, a login timeout, a heartbeat to send or to miss."""
        if self._closed:
            return None
        if self._retry_at is not None:
            return self._retry_at
        state = self.session.state
        if state in _LOGGING_IN:
            return self._attempt_deadline
        if state is State.READY:
            return min(
                self._last_heard + self.session.heartbeat_timeout, self._last_sent + self.session.heartbeat_interval
            )
        return None

    def next_action(self) -> Action | None:
        """The next thing the driver must do with its socket, or None."""
        return self._actions.popleft() if self._actions else None

    def next_event(self) -> Event | None:
        """The next event for the user, or None."""
        return self._events.popleft() if self._events else None

    def drain_events(self) -> list[Event]:
        events = list(self._events)
        self._events.clear()
        return events

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    # ------------------------------------------------------------ what the user does

    def start(self, now: float) -> None:
        """Connect and send the first HELLO; the login goes on as frames arrive and time passes."""
        if self._closed:
            raise ConnectError("the client is closed")
        if self.connection:
            raise ConnectError("the client has already started")
        self._start_attempt(now)

    def say(self, text: str, now: float, *, to: str | None = None, action: bool = False) -> str:
        """Put a chat message in the outbox (and send it when logged in); returns its id.

        Unsendable if the text or name cannot be sent; ConnectError when the client is closed or
        `outbox_limit` messages already wait for the broker's answer.
        """
        check_chat(text, to, self.session.max_text_bytes)
        if self._closed:
            raise ConnectError("the client is closed")
        self._outbox.check_room("the broker's answer" if self.online else "the connection")
        message_id = p.new_message_id()
        if to != self.name:
            # Our own line, shown by whoever drives us as we send it: a history replay after a reconnect (even
            # before the broker's answer) does not show it again. A private message to ourselves comes back.
            self.seen.first_time(self.name, message_id)
        self._outbox.add(Outgoing(message_id, text, to, action))
        self._flush_outbox(now)
        return message_id

    def request(self, kind: str, now: float) -> None:
        """Send a "who" or "shutdown" request; ConnectError when not logged in. Not kept for a later session."""
        if kind not in REQUESTS:
            raise LocalProtocolError(f"not a request: {kind!r}")
        if not self.online:
            raise ConnectError("not connected to the broker right now")
        self._send(self.session.request(kind), now)

    def close(self, now: float, *, say_bye: bool = True) -> None:
        """Leave for good (saying bye when logged in); unanswered messages get Failed events. Idempotent."""
        if self._closed:
            return
        bye = self.session.request("bye") if say_bye and self.online else None
        self._close_for_good("the client was closed")
        if bye is not None:
            self._actions.clear()
            self._send(bye, now)
            self._actions.append(Disconnect(BYE_LINGER))

    # ------------------------------------------------------------ what the driver reports

    def frames_received(self, batch: Iterable[list[bytes]], now: float) -> None:
        """Frames read from the current socket, in order; acknowledges them (flow control) afterwards.

        Raises ConnectError when the login is refused or fails to prove the broker's key, or when a
        first login finds the broker busy; the socket is to be closed (a Disconnect is queued) either way.
        """
        connection = self.connection
        for frames in batch:
            if self._closed or self._retry_at is not None or self.connection != connection:
                return  # the session these frames belong to has ended
            self._last_heard = now
            try:
                events, reply = self.session.receive(frames)
            except DeliveryGap as exc:
                log.warning("deliveries from the broker were lost (%s); logging in again", exc)
                self._connection_lost("messages from the broker were lost on the way", now)
                return
            except RemoteProtocolError as exc:
                log.debug("dropped a frame from the broker: %s", exc)
                continue
            except StatementRefused as exc:
                self._statement_refused(exc, now)
                return
            except BrokerBusy as exc:
                if not self._logged_in_before:
                    self._close_for_good(str(exc))
                    raise
                self._connection_lost("the broker is busy", now)
                return
            except LoginRefused as exc:
                self._refused_relogins += 1
                if not self._logged_in_before or self._refused_relogins > MAX_REFUSED_RELOGINS:
                    self._close_for_good(str(exc))
                    raise
                self._connection_lost("the broker refused a login (it may have restarted meanwhile)", now)
                return
            except ConnectError as exc:
                self._close_for_good(str(exc))
                raise
            except Exception:  # our bug, on one frame: skip it, keep the session
                log.exception("could not handle a frame from the broker; skipped it")
                continue
            if reply is not None:
                self._send(reply, now)
            for event in events:
                self._on_event(event, now)
        if not self._closed and self._retry_at is None and self.connection == connection:
            ack = self.session.ack()
            if ack is not None:
                self._send(ack, now)

    def send_blocked(self, now: float) -> None:
        """The socket would not queue the last Send: its statement number is spent, so start a new session.

        While logging in, the attempt is left to time out. The messages stay in the outbox.
        """
        if self._closed or self._retry_at is not None:
            return
        if self.session.state in _LOGGING_IN:
            log.debug("a login message could not be queued; the attempt will time out")
            return
        self._connection_lost("the queue to the broker is full", now)

    def handshake(self, *, connected: bool = False, secured: bool = False, broken: int = 0) -> None:
        """What the socket monitor said: TCP reached the broker, the CurveZMQ handshake completed, or it was
        broken off `broken` times without a status (the broker could not read it, or closed it unanswered)."""
        self._handshake.report(connected=connected, secured=secured, broken=broken)

    def handshake_refused(self, status: int, now: float) -> None:
        """The broker's ZAP handler answered our CurveZMQ handshake with this RFC 27 status (not 200).

        400: our key is not registered there (or no longer): the end, a first login with a ConnectError, a later
        one with a SessionClosed event. 300 (turned away for now: a rate, a lockout, too many connections) and
        500 (an error in the broker) are not refusals: a first login fails with "try again later", a re-login is
        tried again after the backoff, and neither counts towards MAX_REFUSED_RELOGINS.
        """
        if self._closed or self._retry_at is not None:
            return
        if status == ZAP_REFUSED or not (ZAP_TEMPORARY <= status < 600):
            self._close_for_good("the broker no longer accepts our key")
            if not self._logged_in_before:
                raise ConnectError(
                    f"login refused: the broker does not accept {self.name!r} with this key (is the user registered?)"
                )
            self._events.append(SessionClosed("the broker no longer accepts your key"))
            return
        why = "an error in the broker" if status >= ZAP_ERROR else "too many handshakes for this user, or a lockout"
        if not self._logged_in_before:
            error = ConnectError(
                f"the broker at {self.endpoint} turned the connection away for now ({why}, status {status});"
                " try again later"
            )
            self._close_for_good(str(error))
            raise error
        self._connection_lost(f"the broker turned the connection away for now ({why})", now)

    def tick(self, now: float) -> None:
        """Time passed: retry, time a login out, send a heartbeat or notice the broker's silence.

        Raises ConnectError when a first login runs out of time.
        """
        if self._closed:
            return
        if self._retry_at is not None:
            if now >= self._retry_at:
                self._start_attempt(now)
            return
        state = self.session.state
        if state in _LOGGING_IN:
            if now >= self._attempt_deadline:
                if not self._logged_in_before:
                    error = self._handshake.timed_out(self.endpoint, self.connect_timeout)
                    self._close_for_good(str(error))
                    raise error
                self._connection_lost("login attempt timed out", now)
        elif state is State.READY:
            if now >= self._last_heard + self.session.heartbeat_timeout:
                self._connection_lost("the broker stopped answering", now)
            elif now >= self._last_sent + self.session.heartbeat_interval:
                self._send(self.session.ping(), now)

    # ------------------------------------------------------------ inside

    def _new_session(self) -> ClientSession:
        return ClientSession(self.name, self.key, self.broker_key, bot=self.bot, history=self.history, seen=self.seen)

    def _start_attempt(self, now: float) -> None:
        self._retry_at = None
        self.connection += 1
        self.session = self._new_session()
        self._handshake = Handshake()
        self._last_heard = now
        self._attempt_deadline = now + self.connect_timeout
        self._actions.append(Connect())
        self._send(self.session.hello(), now)

    def _send(self, frames: list[bytes], now: float) -> None:
        self._actions.append(Send(frames))
        self._last_sent = now

    def _on_event(self, event: Event, now: float) -> None:
        for user in _users_in(event):
            if user.name == self.name:
                continue  # not pinned: every welcome must list us with our own key (the session checks it)
            pinned = self.pins.check(user.name, user.fingerprint)
            if pinned is not None:
                self._events.append(KeyChanged(user.name, pinned, user.fingerprint))
        if isinstance(event, Welcome):
            self._backoff.reset()
            self._logged_in_before = True
            self._refused_relogins = 0
            self._events.append(event)
            self._flush_outbox(now)
        elif isinstance(event, Accepted | Failed):
            message = self._outbox.answered(event.message_id)
            self._events.append(event if message is None else replace(event, text=message.text, to=message.to))
        elif isinstance(event, Shutdown):
            self._close_for_good("the broker shut down")
            self._events.append(event)
        elif isinstance(event, SessionClosed):
            self._close_for_good(f"the broker closed the session ({event.reason})")
            self._events.append(event)
        else:
            self._events.append(event)
            if isinstance(event, Notice) and self.session.state is State.CLOSED:  # EVICTED
                self._connection_lost("evicted by the broker", now)

    def _flush_outbox(self, now: float) -> None:
        """Send every message not yet sent on this connection, in order (all of them after a welcome)."""
        for message in self._outbox.unsent(self.connection):
            if not self.online:
                return
            try:
                frames = self.session.say(
                    message.text, to=message.to, action=message.action, message_id=message.message_id
                )
            except LocalProtocolError as exc:  # this broker allows less than the one it was written for
                self._outbox.answered(message.message_id)
                self._events.append(message.failed(f"not sent: {exc}"))
                continue
            message.sent_on = self.connection
            self._send(frames, now)

    def _statement_refused(self, exc: StatementRefused, now: float) -> None:
        log.warning("%s; logging in again", exc)
        failed = self._outbox.refused(exc.message_id)
        if failed is not None:
            self._events.append(failed)
        self._connection_lost("the broker refused a statement", now)

    def _connection_lost(self, reason: str, now: float) -> None:
        """End this session and socket; retry after a backoff (or, without `reconnect`, close and raise)."""
        self._actions.clear()  # nothing more goes out on this session
        self._actions.append(Disconnect())
        self.session.state = State.CLOSED
        if not self.reconnect:
            error = ConnectError(f"connection to the broker lost: {reason}")
            self._close_for_good(str(error))
            raise error
        delay = self._backoff.delay()
        self._retry_at = now + delay
        self._events.append(ConnectionLost(reason, round(delay, 1)))

    def _close_for_good(self, why: str) -> None:
        """Closed, never to reconnect: the socket goes, and every message still waiting gets a Failed event."""
        self._closed = True
        self._retry_at = None
        self.session.state = State.CLOSED
        self._actions.clear()
        self._actions.append(Disconnect())
        self._events.extend(self._outbox.fail_all(why))
