"""zchat/client/core.py: the client's policy, without sockets or a clock.

A hand-made broker (`FakeBroker`) answers with real sealed frames; the test plays the driver: it
performs the core's actions into a log (`Driver`), reports what the "socket" says, and moves time.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest

from zchat import crypto
from zchat import protocol as p
from zchat.client.attempt import FIRST_RETRY_DELAY, MAX_RETRY_DELAY, ZAP_ERROR, ZAP_REFUSED, ZAP_TEMPORARY, Backoff
from zchat.client.core import MAX_REFUSED_RELOGINS, ClientCore, Connect, Disconnect, Send
from zchat.client.outbox import MAX_REFUSALS
from zchat.client.pins import PinStore
from zchat.errors import ConnectError, LocalProtocolError
from zchat.events import (
    Accepted,
    ChatMessage,
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
)
from zchat.protocol import events as wire

INTERVAL, TIMEOUT = 1.0, 6.0


def user_info(name: str, key: crypto.PrivateKey, bot: bool = False) -> UserInfo:
    return UserInfo(name, crypto.fingerprint(key), bot, crypto.public_key_to_der(key))


class FakeBroker:
    """The broker's side of one client's sessions, by hand: challenges, numbered deliveries, opened SENDs."""

    def __init__(self, keys: dict[str, crypto.PrivateKey], name: str = "alice") -> None:
        self.keys = keys
        self.name = name
        self.key = keys["broker"]
        self.session = ""
        self.delivery_key = b""
        self.seq = 0

    def challenge(self, hello: list[bytes]) -> list[bytes]:
        assert hello[1] == p.HELLO
        request = p.Hello.decode(crypto.open_envelope(self.key, hello[2], p.context(p.HELLO)))
        server_nonce = secrets.token_bytes(p.NONCE_BYTES)
        self.delivery_key = secrets.token_bytes(p.DELIVERY_KEY_BYTES)
        self.session, self.seq = p.session_id(server_nonce), 0
        proof = crypto.sign(self.key, p.broker_proof_input(self.name, request.nonce, server_nonce, self.delivery_key))
        doc = p.Challenge(self.name, request.nonce, server_nonce, self.delivery_key, proof).encode()
        return p.encode_frames(p.CHALLENGE, crypto.seal(self.keys[self.name], doc, p.context(p.CHALLENGE)))

    def event(self, event: dict[str, Any], seq: int | None = None) -> list[bytes]:
        self.seq = self.seq + 1 if seq is None else seq
        plaintext = wire.seal_delivery(self.delivery_key, self.session, self.seq, event)
        return p.encode_frames(p.EVENT, crypto.seal(self.keys[self.name], plaintext, p.context(p.EVENT)))

    def welcome(self, *others: UserInfo) -> list[bytes]:
        users = [user_info(self.name, self.keys[self.name]), *others]
        return self.event(
            wire.WelcomeEvent(self.name, tuple(users), INTERVAL, TIMEOUT, p.DEFAULT_MAX_TEXT_BYTES).to_doc()
        )

    def chat(self, sender: str, text: str, message_id: str, **flags: Any) -> list[bytes]:
        """A chat event from `sender` (flags: history=True with author, ...)."""
        statement = p.Statement.build("chat", sender, "ab" * 32, 1, 1.0, text, message_id=message_id)
        signed = p.SignedStatement(
            statement.text, crypto.sign(self.keys[sender], p.statement_signing_input(statement.text))
        )
        author = user_info(sender, self.keys[sender]) if flags.get("history") else None
        return self.event(wire.ChatEvent(signed, 2.0, author, **flags).to_doc())

    def opened(self, frames: list[bytes]) -> p.Statement:
        """What a SEND says."""
        assert frames[1] == p.SEND
        signed = p.load_doc(crypto.open_envelope(self.key, frames[2], p.context(p.SEND)))
        return p.Statement.parse(signed["signed"])


@dataclass
class Driver:
    """Performs the core's actions into a log, like a socket that takes everything (unless told to block)."""

    core: ClientCore
    connects: int = 0
    disconnects: list[float] = field(default_factory=list)
    sent: list[list[bytes]] = field(default_factory=list)
    block_after: int | None = None  # how many more Sends the "socket" takes before it would block

    def run(self, now: float) -> None:
        while (action := self.core.next_action()) is not None:
            if isinstance(action, Connect):
                self.connects += 1
            elif isinstance(action, Disconnect):
                self.disconnects.append(action.linger)
            elif isinstance(action, Send):
                if self.block_after is not None:
                    if self.block_after == 0:
                        self.core.send_blocked(now)
                        continue
                    self.block_after -= 1
                self.sent.append(action.frames)

    def take(self) -> list[list[bytes]]:
        sent, self.sent = self.sent, []
        return sent

    def commands(self) -> list[bytes]:
        return [frames[1] for frames in self.take()]


class Harness:
    def __init__(self, keys: dict[str, crypto.PrivateKey], **options: Any) -> None:
        options.setdefault("uniform", lambda low, high: 1.0)  # no jitter unless a test asks for it
        self.core = ClientCore("alice", keys["alice"], keys["broker"], endpoint="tcp://127.0.0.1:9", **options)
        self.broker = FakeBroker(keys)
        self.driver = Driver(self.core)
        self.keys = keys
        self.now = 100.0

    def feed(self, *frames: list[bytes]) -> None:
        try:
            self.core.frames_received(list(frames), self.now)
        finally:
            self.driver.run(self.now)

    def tick(self, to: float) -> None:
        self.now = to
        try:
            self.core.tick(self.now)
        finally:
            self.driver.run(self.now)

    def say(self, text: str, **kwargs: Any) -> str:
        message_id = self.core.say(text, self.now, **kwargs)
        self.driver.run(self.now)
        return message_id

    def log_in(self, *others: UserInfo) -> list[Event]:
        """Start (or retry, when a retry is due) and complete a login; returns the events so far."""
        if self.core.session.state.value == "new":
            self.core.start(self.now)
            self.driver.run(self.now)
        (hello,) = [frames for frames in self.driver.take() if frames[1] == p.HELLO]  # older frames went nowhere
        self.feed(self.broker.challenge(hello))
        (login,) = self.driver.take()
        assert login[1] == p.LOGIN
        self.feed(self.broker.welcome(*others))
        assert self.core.online
        return self.core.drain_events()

    def statements(self) -> list[p.Statement]:
        return [self.broker.opened(frames) for frames in self.driver.take() if frames[1] == p.SEND]

    def lose_connection(self) -> ConnectionLost:
        self.tick(self.now + TIMEOUT)
        (lost,) = [e for e in self.core.drain_events() if isinstance(e, ConnectionLost)]
        return lost

    def retry(self) -> None:
        deadline = self.core.next_deadline()
        assert deadline is not None
        self.tick(deadline)


@pytest.fixture
def h(keyring) -> Harness:
    return Harness(keyring.keys)


@pytest.fixture
def online(h) -> Harness:
    h.log_in()
    return h


def accepted(message_id: str, **flags: Any) -> dict[str, Any]:
    return wire.AcceptedEvent(message_id, 1_700_000_000.0, **flags).to_doc()


def failed(message_id: str, reason: str) -> dict[str, Any]:
    return wire.FailedEvent(message_id, reason).to_doc()


# ---------------------------------------------------------------- login


def test_login_connects_says_hello_and_is_welcomed(h):
    assert h.core.next_deadline() is None  # nothing to do before start()
    h.core.start(h.now)
    h.driver.run(h.now)
    assert h.driver.connects == 1
    assert [frames[1] for frames in h.driver.sent] == [p.HELLO]
    assert h.core.next_deadline() == h.now + 5.0  # the attempt's timeout
    events = h.log_in()
    assert [type(e) for e in events] == [Welcome]
    assert h.core.online
    assert h.driver.disconnects == []


def test_a_first_login_that_gets_no_answer_fails_with_a_clear_error_at_its_deadline(h):
    h.core.start(h.now)
    h.driver.run(h.now)
    h.tick(h.now + 4.9)
    assert not h.core.closed
    with pytest.raises(ConnectError, match=r"tcp://127.0.0.1:9 did not answer within 5s"):
        h.tick(h.now + 0.1)
    assert h.core.closed
    assert h.driver.disconnects == [0.0]
    assert h.core.next_deadline() is None


def test_a_first_login_whose_handshake_is_broken_off_again_and_again_blames_the_broker_key(h):
    """The broker cannot read a CurveZMQ hello made for another key: it breaks the handshake off at once, and
    libzmq tries again and again."""
    h.core.start(h.now)
    h.driver.run(h.now)
    h.core.handshake(connected=True, broken=1)
    h.core.handshake(connected=True, broken=12)
    with pytest.raises(ConnectError, match="handshake: the pinned broker key is not this broker's key") as error:
        h.tick(h.now + 5.0)
    assert "unless the broker is turning the connection away for now" in str(error.value)


def test_a_first_login_whose_handshake_is_left_unanswered_says_it_may_be_turned_away_for_now(h):
    """A broker's ZAP handler answering 300 (a rate, a lockout, a connection cap) sends the client nothing."""
    h.core.start(h.now)
    h.driver.run(h.now)
    h.core.handshake(connected=True, broken=1)  # the broker's handshake timeout closed the first one
    with pytest.raises(ConnectError, match="within 5s: it may be turning the connection away for now") as error:
        h.tick(h.now + 5.0)
    assert "broker key" not in str(error.value)
    assert "try again later" in str(error.value)


def test_a_key_the_transport_refuses_ends_a_first_login_with_an_error_and_a_later_session_with_an_event(h, keyring):
    h.core.start(h.now)
    with pytest.raises(ConnectError, match="login refused"):
        h.core.handshake_refused(ZAP_REFUSED, h.now)
    assert h.core.closed
    later = Harness(keyring.keys)
    later.log_in()
    later.core.handshake_refused(ZAP_REFUSED, later.now)
    later.driver.run(later.now)
    assert later.core.drain_events() == [SessionClosed("the broker no longer accepts your key")]
    assert later.core.closed
    assert later.driver.disconnects == [0.0]


@pytest.mark.parametrize(
    ("status", "why"), [(ZAP_TEMPORARY, "too many handshakes for this user"), (ZAP_ERROR, "an error in the broker")]
)
def test_a_handshake_turned_away_for_now_is_no_refusal(keyring, status, why):
    first = Harness(keyring.keys)
    first.core.start(first.now)
    with pytest.raises(
        ConnectError, match=f"turned the connection away for now \\({why}.*\\); try again later"
    ) as error:
        first.core.handshake_refused(status, first.now)
    assert "refused" not in str(error.value)
    assert first.core.closed

    later = Harness(keyring.keys)
    later.log_in()
    later.lose_connection()
    later.retry()
    later.core.handshake_refused(status, later.now)
    later.driver.run(later.now)
    (lost,) = later.core.drain_events()
    assert isinstance(lost, ConnectionLost)
    assert lost.reason.startswith("the broker turned the connection away for now")
    assert not later.core.closed
    later.driver.take()  # the HELLO of the attempt turned away
    later.retry()
    later.log_in()  # the next attempt goes on as usual
    assert later.driver.connects == 3


def test_refused_and_busy_end_a_first_login(h, keyring):
    h.core.start(h.now)
    h.driver.run(h.now)
    with pytest.raises(ConnectError, match="login refused"):
        h.feed(p.encode_frames(p.REFUSED))
    assert h.core.closed
    busy = Harness(keyring.keys)
    busy.core.start(busy.now)
    with pytest.raises(ConnectError, match="busy"):
        busy.feed(p.encode_frames(p.BUSY))
    assert busy.core.closed


def test_a_busy_or_timed_out_re_login_retries(online):
    online.lose_connection()
    online.retry()
    online.feed(p.encode_frames(p.BUSY))
    assert [e.reason for e in online.core.drain_events() if isinstance(e, ConnectionLost)] == ["the broker is busy"]
    online.retry()
    online.driver.take()
    online.tick(online.now + 5.0)
    assert [e.reason for e in online.core.drain_events()] == ["login attempt timed out"]
    assert not online.core.closed


def test_a_refused_re_login_retries_a_few_times_then_ends(online):
    """A broker restarted between our HELLO and LOGIN refuses the LOGIN it never challenged: try again; a key
    refused login after login ends the client."""
    reason = "the broker refused a login (it may have restarted meanwhile)"
    online.lose_connection()
    for _ in range(MAX_REFUSED_RELOGINS):
        online.retry()
        online.feed(p.encode_frames(p.REFUSED))
        assert reason in [e.reason for e in online.core.drain_events() if isinstance(e, ConnectionLost)]
        assert not online.core.closed
    online.retry()
    with pytest.raises(ConnectError, match="login refused"):
        online.feed(p.encode_frames(p.REFUSED))
    assert online.core.closed


@pytest.mark.parametrize("between", ["busy", "timeout", "turned-away"])
def test_only_a_welcome_resets_the_count_of_refused_re_logins(online, between):
    """BUSY, a timed-out attempt or a handshake turned away for now, between two REFUSED, prove nothing about
    our key: the count goes on."""
    h = online
    h.lose_connection()
    for _ in range(MAX_REFUSED_RELOGINS):
        h.retry()
        h.feed(p.encode_frames(p.REFUSED))
        h.retry()
        if between == "busy":
            h.feed(p.encode_frames(p.BUSY))
        elif between == "timeout":
            h.tick(h.now + 5.0)
        else:
            h.core.handshake_refused(ZAP_TEMPORARY, h.now)
            h.driver.run(h.now)
        assert not h.core.closed
    h.retry()
    with pytest.raises(ConnectError, match="login refused"):
        h.feed(p.encode_frames(p.REFUSED))
    assert h.core.closed


def test_a_welcome_resets_the_count_of_refused_re_logins(online):
    h = online
    for _ in range(3):
        h.lose_connection()
        for _ in range(MAX_REFUSED_RELOGINS):
            h.retry()
            h.feed(p.encode_frames(p.REFUSED))
            h.driver.take()
        h.retry()
        h.log_in()
    assert not h.core.closed


@pytest.mark.parametrize(
    "numbers",
    [(0.0, TIMEOUT), (INTERVAL, 0.0), (INTERVAL, 1.5 * INTERVAL)],
    ids=["interval-0", "timeout-0", "timeout-short"],
)
def test_an_unusable_welcome_ends_the_client_even_after_a_reconnect(online, numbers):
    """A broker that lies in its welcome is not one to retry: no reconnect loop against it."""
    h = online
    h.lose_connection()
    h.retry()
    (hello,) = [frames for frames in h.driver.take() if frames[1] == p.HELLO]
    h.feed(h.broker.challenge(hello))
    h.driver.take()
    interval, timeout = numbers
    me = user_info("alice", h.keys["alice"])
    welcome = wire.WelcomeEvent("alice", (me,), interval, timeout, p.DEFAULT_MAX_TEXT_BYTES).to_doc()
    with pytest.raises(ConnectError, match="the broker's welcome was unusable"):
        h.feed(h.broker.event(welcome))
    assert h.core.closed
    assert h.core.next_deadline() is None
    h.tick(h.now + 60)
    assert h.driver.connects == 2


# ---------------------------------------------------------------- heartbeats and the deadline


def test_heartbeats_follow_the_deadline(online):
    h = online
    h.driver.take()
    start = h.now
    assert h.core.next_deadline() == start + INTERVAL  # a PING is due before the broker could be missed
    h.tick(start + INTERVAL - 0.01)
    assert h.driver.take() == []
    h.tick(start + INTERVAL)
    assert h.driver.commands() == [p.PING]
    assert h.core.next_deadline() == start + 2 * INTERVAL
    h.now = start + 2.5
    h.feed(p.encode_frames(p.PING))  # hearing from the broker moves the silence deadline, not the PING one
    h.tick(start + 2 * INTERVAL + 0.6)
    assert h.driver.commands() == [p.PING]
    for second in range(3, 8):
        h.tick(start + second + 0.6)
        h.driver.take()
    assert h.core.next_deadline() == start + 2.5 + TIMEOUT  # PINGs keep going; the broker is silent
    h.tick(start + 2.5 + TIMEOUT)
    (lost,) = h.core.drain_events()
    assert lost == ConnectionLost("the broker stopped answering", FIRST_RETRY_DELAY)
    assert h.driver.disconnects == [0.0]
    assert h.core.next_deadline() == h.now + FIRST_RETRY_DELAY


def test_what_is_sent_counts_as_a_heartbeat(online):
    h = online
    h.tick(h.now + 0.9)
    h.say("hello")
    assert h.core.next_deadline() == h.now + INTERVAL


def test_frames_read_are_acknowledged_after_the_batch(online):
    h = online
    h.driver.take()
    h.feed(h.broker.event(wire.LeaveEvent("bob", "left").to_doc()), h.broker.event(wire.ErrorEvent("x").to_doc()))
    (ack,) = h.driver.take()
    assert ack[1] == p.ACK
    h.feed(p.encode_frames(p.PING))  # no EVENT: nothing to acknowledge
    assert h.driver.take() == []


# ---------------------------------------------------------------- reconnecting


def test_backoff_doubles_to_its_cap_and_resets_after_a_welcome(keyring):
    h = Harness(keyring.keys, uniform=lambda low, high: high)  # always the longest jitter: +20 %
    h.log_in()
    h.lose_connection()
    waits = []
    for _ in range(6):
        before = h.now
        h.retry()
        waits.append(round(h.now - before, 6))
        h.driver.take()
        h.tick(h.now + 5.0)  # the re-login times out
        h.core.drain_events()
    assert waits == [0.6, 1.2, 2.4, 4.8, 9.6, 9.6]
    h.retry()
    h.log_in()
    assert h.lose_connection().retry_in == 0.6


@pytest.mark.parametrize("seed", range(5))
def test_backoff_jitter_stays_within_twenty_percent(seed):
    import random

    backoff = Backoff(uniform=random.Random(seed).uniform)
    nominal = FIRST_RETRY_DELAY
    for _ in range(10):
        assert 0.8 * nominal <= backoff.delay() <= 1.2 * nominal
        nominal = min(nominal * 2, MAX_RETRY_DELAY)


def test_a_gap_in_the_deliveries_starts_a_new_session(online):
    h = online
    h.feed(h.broker.event(wire.ErrorEvent("x").to_doc(), seq=h.broker.seq + 2))
    assert [type(e) for e in h.core.drain_events()] == [ConnectionLost]
    assert h.driver.disconnects == [0.0]
    h.retry()
    assert h.driver.connects == 2


def test_eviction_is_reported_and_starts_a_new_session(online):
    online.feed(p.encode_frames(p.EVICTED))
    notice, lost = online.core.drain_events()
    assert isinstance(notice, Notice)
    assert lost.reason == "evicted by the broker"


def test_frames_after_the_end_of_a_session_in_one_batch_are_ignored(online):
    h = online
    h.driver.take()
    gap = h.broker.event(wire.ErrorEvent("lost").to_doc(), seq=h.broker.seq + 2)
    h.feed(gap, h.broker.event(wire.ErrorEvent("after").to_doc()))
    assert [type(e) for e in h.core.drain_events()] == [ConnectionLost]
    assert h.driver.take() == []  # no ACK on a session that is over


def test_without_reconnect_a_lost_connection_closes_with_an_error(keyring):
    h = Harness(keyring.keys, reconnect=False)
    h.log_in()
    h.say("unanswered")
    with pytest.raises(ConnectError, match="connection to the broker lost: the broker stopped answering"):
        h.tick(h.now + TIMEOUT)
    assert h.core.closed
    (failure,) = h.core.drain_events()
    assert isinstance(failure, Failed)
    assert failure.reason.startswith("not confirmed: connection to the broker lost")


# ---------------------------------------------------------------- the acknowledged outbox


def test_each_message_has_an_id_and_waits_for_the_brokers_answer(online):
    h = online
    h.driver.take()
    first = h.say("one")
    second = h.say("two", to="bob", action=True)
    assert first != second
    assert h.core.pending == (first, second)
    one, two = h.statements()
    assert (one.message_id, one.body, one.to, one.action) == (first, "one", None, False)
    assert (two.message_id, two.body, two.to, two.action) == (second, "two", "bob", True)
    h.feed(h.broker.event(accepted(second, queued=True)))
    assert h.core.pending == (first,)
    h.feed(h.broker.event(failed(first, "you are sending too fast")))
    assert h.core.pending == ()
    assert h.core.drain_events() == [
        Accepted(second, 1_700_000_000.0, queued=True),
        Failed(first, "you are sending too fast"),
    ]


def test_after_a_reconnect_unanswered_messages_are_sent_again_in_order_with_their_ids(online):
    h = online
    h.driver.take()
    ids = [h.say(f"m{i}") for i in range(3)]
    h.feed(h.broker.event(accepted(ids[0])))
    h.driver.take()
    h.lose_connection()
    offline = h.say("typed while offline")
    assert h.driver.take() == []  # nothing goes out between sessions
    h.retry()
    h.log_in()
    again = h.statements()
    assert [(s.message_id, s.body) for s in again] == [(ids[1], "m1"), (ids[2], "m2"), (offline, "typed while offline")]
    assert [s.seq for s in again] == [1, 2, 3]  # statements of the new session
    assert h.core.pending == (ids[1], ids[2], offline)


def test_an_accepted_message_of_ours_replayed_from_the_history_is_not_shown_again(online):
    h = online
    h.driver.take()
    mine = h.say("said before the reconnect")
    h.feed(h.broker.event(accepted(mine)))
    h.lose_connection()
    h.retry()
    h.log_in()
    h.feed(h.broker.chat("alice", "said before the reconnect", mine, history=True))
    assert [e for e in h.core.drain_events() if isinstance(e, ChatMessage)] == []


def test_a_statement_the_socket_cannot_queue_means_a_new_session_and_the_message_stays(online):
    h = online
    h.driver.take()
    h.driver.block_after = 1
    first, second, third = h.say("a"), h.say("b"), h.say("c")
    assert [s.message_id for s in h.statements()] == [first]
    assert [type(e) for e in h.core.drain_events()] == [ConnectionLost]
    assert h.driver.disconnects == [0.0]
    assert h.core.pending == (first, second, third)
    h.driver.block_after = None
    h.retry()
    h.log_in()
    assert [s.message_id for s in h.statements()] == [first, second, third]


def test_a_refused_statement_means_a_new_session_and_the_message_is_sent_again(online):
    h = online
    h.driver.take()
    mine = h.say("refused once")
    h.feed(h.broker.event(wire.RefusedEvent(1, mine).to_doc()))
    (lost,) = h.core.drain_events()
    assert lost.reason == "the broker refused a statement"
    assert h.driver.disconnects == [0.0]
    h.retry()
    h.log_in()
    assert [s.message_id for s in h.statements()] == [mine]


def test_a_message_refused_again_and_again_is_given_up(online):
    h = online
    mine = h.say("never acceptable")
    for attempt in range(MAX_REFUSALS):
        h.driver.take()
        h.feed(h.broker.event(wire.RefusedEvent(1, mine).to_doc()))
        h.retry()
        events = h.log_in()
        if attempt < MAX_REFUSALS - 1:
            assert mine in h.core.pending
    assert Failed(mine, f"not sent: the broker refused it {MAX_REFUSALS} times") in events
    assert h.core.pending == ()


def test_closing_answers_every_waiting_message_with_failed(online):
    h = online
    h.driver.take()
    sent = h.say("on its way")
    h.lose_connection()
    unsent = h.say("never sent")
    h.core.close(h.now)
    h.driver.run(h.now)
    assert h.core.drain_events() == [
        Failed(sent, "not confirmed: the client was closed"),
        Failed(unsent, "not sent: the client was closed"),
    ]
    assert h.core.next_deadline() is None
    with pytest.raises(ConnectError):
        h.say("too late")


def test_close_says_bye_when_logged_in(online):
    h = online
    h.driver.take()
    h.core.close(h.now)
    h.driver.run(h.now)
    (bye,) = h.statements()
    assert bye.kind == "bye"
    assert h.driver.disconnects == [1.0]  # a linger for the goodbye


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (wire.ShutdownEvent("admin").to_doc(), "not confirmed: the broker shut down"),
        (
            wire.ClosedEvent("logged in again").to_doc(),
            "not confirmed: the broker closed the session (logged in again)",
        ),
    ],
)
def test_a_close_for_good_by_the_broker_fails_what_waits_then_ends_without_reconnecting(online, event, reason):
    h = online
    mine = h.say("last words")
    h.feed(h.broker.event(event))
    failure, last = h.core.drain_events()
    assert failure == Failed(mine, reason)
    assert isinstance(last, Shutdown | SessionClosed)
    assert h.core.closed
    h.tick(h.now + 60)
    assert h.driver.connects == 1


def test_the_outbox_is_bounded(keyring):
    h = Harness(keyring.keys, outbox_limit=3)
    h.core.start(h.now)
    for i in range(3):
        h.say(f"queued {i}")
    with pytest.raises(ConnectError, match="3 messages are already waiting"):
        h.say("one too many")


def test_text_and_names_are_checked_when_sent(h):
    with pytest.raises(LocalProtocolError, match="control"):
        h.say("a\nb")
    with pytest.raises(LocalProtocolError, match="invalid user name"):
        h.say("hi", to="no such name!")


def test_requests_need_a_session(h):
    with pytest.raises(ConnectError, match="not connected"):
        h.core.request("who", h.now)
    h.log_in()
    h.core.request("who", h.now)
    h.driver.run(h.now)
    assert [s.kind for s in h.statements()] == ["who"]


# ---------------------------------------------------------------- pins


def test_a_key_other_than_the_pinned_one_is_reported(keyring):
    pins = PinStore(None)
    pins.check("bob", "SHA256:" + "0" * 64)
    h = Harness(keyring.keys, pins=pins)
    h.log_in()
    h.feed(h.broker.event(wire.JoinEvent(user_info("bob", keyring.keys["bob"])).to_doc()))
    warning, joined = h.core.drain_events()
    assert warning == KeyChanged("bob", "SHA256:" + "0" * 64, crypto.fingerprint(keyring.keys["bob"]))
    assert isinstance(joined, Joined)
