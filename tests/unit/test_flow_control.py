"""Flow control (PROTOCOL.md 8.4), paced history replay (7.5), the broker's clock on chat events (7.3),
time stamps a statement may carry, who may log in on a connection (1.5, 5.2), look-alike names, and the
fair order in which envelopes are opened (zchat/broker/workers.py). No sockets: zchat/broker/core.py with real
client sessions (tests/unit/world.py)."""

from __future__ import annotations

import collections
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.unit.world import REFUSED_FRAMES, World
from zchat import crypto
from zchat import protocol as p
from zchat.broker.core import BrokerCore
from zchat.broker.work import Cancel, ChallengeJob, Job, JobRunner, Opened, OpenJob, Outgoing, Work
from zchat.broker.workers import HANDSHAKE_TURN, INLINE_OPENS_PER_TURN, InlineJobs, OpenQueue
from zchat.client.session import ClientSession
from zchat.errors import ConnectError, RemoteProtocolError, StatementRefused
from zchat.events import Accepted, ChatMessage, Event, Failed, Left, SessionClosed, Shutdown, Welcome
from zchat.keystore import KeyLayout

WINDOW = 64 * 1024
TEXT_BYTES = 10_000  # one chat EVENT with such a text is about 11 KB: five fit in WINDOW, six do not
BUSY_FRAMES = [p.MARKER, p.BUSY, b""]
EVICTED_FRAMES = [p.MARKER, p.EVICTED, b""]


def run_in_order(
    core: BrokerCore, runner: JobRunner, work: list[Work], now: float, wall: float | None = None
) -> list[Outgoing]:
    """Do the core's jobs as broker.py does with `workers: 0` (zchat.broker.workers.InlineJobs): frames go out at once,
    jobs are done first in, first out (so each session's deliveries in the order the core made them)."""
    out: list[Outgoing] = []
    jobs: collections.deque[Job] = collections.deque()

    def handle(items: list[Work]) -> None:
        for item in items:
            if isinstance(item, Outgoing):
                out.append(item)
            else:
                jobs.append(item)

    handle(work)
    while jobs:
        result = runner.perform(jobs.popleft())
        handle(core.opened(result, now, wall) if isinstance(result, Opened) else core.sendable([result], now))
    return out


class InOrderWorld(World):
    """World with the jobs done in the order the core made them (World.run uses run_inline, see
    test_run_inline_keeps_each_sessions_deliveries_in_order)."""

    def run(self, work: list[Work]) -> list[Outgoing]:
        wall = self.wall_clock()
        out = run_in_order(self.core, self.runner, work, self.now, wall)
        out += run_in_order(self.core, self.runner, self.core.commit(self.now, wall), self.now, wall)
        return out + run_in_order(self.core, self.runner, self.core.flush_presence(self.now), self.now, wall)


def make_world(keyring: Any, layout: KeyLayout | None = None, **overrides: Any) -> World:
    return InOrderWorld(keyring.keys, layout or keyring.layout, config_overrides=overrides)


def text(i: int, size: int = TEXT_BYTES) -> str:
    label = f"message {i:03d} "
    return label + "x" * (size - len(label))


def event_bytes(out: list[Outgoing], identity: bytes) -> list[int]:
    """Sizes of the EVENT bodies `out` sends to `identity`."""
    return [len(m.frames[2]) for m in out if m.identity == identity and m.frames[1] == p.EVENT]


def ack(world: World, identity: bytes) -> list[Outgoing]:
    """The client acknowledges everything it has read; what the broker sends it then."""
    frames = world.clients[identity].ack()
    assert frames is not None, "nothing to acknowledge"
    return world.send(identity, frames)


def drain(world: World, identity: bytes) -> list[Event]:
    """ACK until nothing more comes: every event `identity` gets meanwhile, in order."""
    seen: list[Event] = []
    while (frames := world.clients[identity].ack()) is not None:
        seen += world.deliver(world.send(identity, frames)).get(identity, [])
    return seen


def chats(events: list[Event]) -> list[ChatMessage]:
    return [e for e in events if isinstance(e, ChatMessage)]


def say(world: World, identity: bytes, message: str, message_id: str = "") -> list[Outgoing]:
    world.now += 0.1  # well under messages_per_second_per_user
    return world.send(identity, world.clients[identity].say(message, message_id=message_id))


def only_accepted(world: World, out: list[Outgoing], identity: bytes, message_id: str) -> Accepted:
    """`out` is the broker's answer to one room message from someone alone in the room: its `accepted`."""
    assert [m.identity for m in out] == [identity]
    (accepted,) = world.deliver(out)[identity]
    assert isinstance(accepted, Accepted)
    assert (accepted.message_id, accepted.queued, accepted.duplicate) == (message_id, False, False)
    return accepted


def login_with_history(world: World, name: str, identity: bytes | None = None) -> tuple[ClientSession, list[Outgoing]]:
    """A login whose answer may hold more than the welcome (the history replay): every frame the LOGIN caused."""
    identity = identity or name.encode()
    session = world.client(name, identity)
    (challenge,) = world.send(identity, session.hello())
    _, login = session.receive(challenge.frames)
    assert login is not None
    return session, world.send(identity, login)


# ---------------------------------------------------------------- the window


def test_events_beyond_the_window_wait_for_the_ack_in_order(keyring):
    world = make_world(keyring, send_window_bytes=WINDOW)
    world.login("bob")
    world.login("alice")
    ack(world, b"bob")  # bob has read his welcome and alice's join: nothing of his is in flight
    bob = world.core.sessions[b"bob"].outbound
    assert bob.in_flight_bytes == 0

    sent = [text(i) for i in range(12)]
    received: list[ChatMessage] = []
    first_sizes: list[int] = []
    for message in sent:
        out = say(world, b"alice", message)
        first_sizes += event_bytes(out, b"bob")
        received += chats(world.deliver(out).get(b"bob", []))
    # Only what fits in the window went out; the rest is sealed and held.
    assert 1 <= len(received) < len(sent)
    assert sum(first_sizes) <= WINDOW
    assert bob.in_flight_bytes == sum(first_sizes)
    assert bob.held, "the next EVENT waits"
    assert bob.in_flight_bytes + len(bob.held[0].frames[2]) > WINDOW, "it waits only because it does not fit"
    assert len(received) + len(bob.held) == len(sent)

    rounds = 0
    while len(received) < len(sent):
        out = ack(world, b"bob")
        sizes = event_bytes(out, b"bob")
        assert sizes, "an ACK releases what waits"
        assert sum(sizes) <= WINDOW
        received += chats(world.deliver(out).get(b"bob", []))
        rounds += 1
        assert rounds < 10
    assert [m.text for m in received] == sent, "in order, nothing lost, nothing twice"
    assert all(m.sender == "alice" and not m.history for m in received)
    assert not bob.held
    assert world.clients[b"bob"].ack() is not None
    assert drain(world, b"bob") == []


def test_the_window_holds_at_most_half_of_send_queue_limit_events(keyring):
    world = make_world(keyring, send_queue_limit=10)
    world.login("bob")
    world.login("alice")
    ack(world, b"bob")
    received: list[ChatMessage] = []
    for i in range(12):
        received += chats(world.deliver(say(world, b"alice", f"short {i}")).get(b"bob", []))
    assert [m.text for m in received] == [f"short {i}" for i in range(5)]
    assert len(world.core.sessions[b"bob"].outbound.in_flight) == 5
    assert len(world.core.sessions[b"bob"].outbound.held) == 7

    received += chats(world.deliver(ack(world, b"bob")).get(b"bob", []))
    assert [m.text for m in received] == [f"short {i}" for i in range(10)]
    received += chats(world.deliver(ack(world, b"bob")).get(b"bob", []))
    assert [m.text for m in received] == [f"short {i}" for i in range(12)]


def test_acks_for_unknown_or_already_acknowledged_events_change_nothing(keyring):
    world = make_world(keyring, send_window_bytes=WINDOW)
    world.login("bob")
    world.login("alice")
    ack(world, b"bob")
    bob = world.core.sessions[b"bob"].outbound
    delivered: list[Outgoing] = []
    for i in range(8):
        delivered += say(world, b"alice", text(i))
    world.deliver(delivered)
    state = (list(bob.in_flight), bob.in_flight_bytes, list(bob.held), bob.held_bytes)
    assert bob.held

    never_sent = [p.MARKER, p.ACK, b"\x00" * p.ACK_BYTES]
    assert world.send(b"bob", never_sent) == []
    not_yet_sent = [p.MARKER, p.ACK, p.event_tag(bob.held[0].frames[2])]  # sealed, held, not sent
    assert world.send(b"bob", not_yet_sent) == []
    assert (list(bob.in_flight), bob.in_flight_bytes, list(bob.held), bob.held_bytes) == state

    frames = world.clients[b"bob"].ack()
    assert frames is not None
    released = world.send(b"bob", frames)
    assert event_bytes(released, b"bob")
    after = (list(bob.in_flight), bob.in_flight_bytes, list(bob.held), bob.held_bytes)
    assert world.send(b"bob", frames) == [], "the same ACK again"
    assert (list(bob.in_flight), bob.in_flight_bytes, list(bob.held), bob.held_bytes) == after


@pytest.mark.parametrize("size", [0, 1, p.ACK_BYTES - 1, p.ACK_BYTES + 1, 32])
def test_an_ack_body_of_the_wrong_size_is_dropped(keyring, size):
    world = make_world(keyring, send_window_bytes=WINDOW)
    world.login("bob")
    world.login("alice")
    ack(world, b"bob")
    bob = world.core.sessions[b"bob"]
    delivered: list[Outgoing] = []
    for i in range(7):
        delivered += say(world, b"alice", text(i))
    world.deliver(delivered)
    assert bob.outbound.held
    real = world.clients[b"bob"].ack()
    assert real is not None
    tag = real[2]
    body = (tag * 2)[-size:] if size else b""  # ends like the real tag, so only the size is wrong
    frames = [p.MARKER, p.ACK, body]
    with pytest.raises(RemoteProtocolError, match="16 bytes"):
        p.decode_frames(frames, p.CLIENT_COMMANDS, world.core.max_body)
    state = (list(bob.outbound.in_flight), list(bob.outbound.held), bob.last_heard)
    world.now += 1.0
    assert world.send(b"bob", frames) == []
    assert (list(bob.outbound.in_flight), list(bob.outbound.held), bob.last_heard) == state, (
        "dropped before anything looks at it"
    )
    assert event_bytes(world.send(b"bob", real), b"bob"), "the right ACK still works"


def test_a_session_that_never_acks_is_ended_as_too_slow(keyring):
    world = make_world(keyring, send_window_bytes=WINDOW, send_queue_bytes=WINDOW)
    world.login("bob")
    world.login("carol")
    world.login("alice")
    ack(world, b"carol")
    sent: list[str] = []
    carol_got: list[Event] = []
    alice_got: list[Event] = []
    bob_bytes = 0
    evicted_at = None
    for i in range(20):
        bob = world.core.sessions.get(b"bob")
        held_before = bob.outbound.held_bytes if bob is not None else 0
        sent.append(text(i))
        out = say(world, b"alice", sent[-1])
        bob_bytes += sum(event_bytes(out, b"bob"))
        seen = world.deliver(out)
        alice_got += seen.get(b"alice", [])
        carol_got += seen.get(b"carol", [])
        carol_got += world.deliver(ack(world, b"carol")).get(b"carol", [])  # carol keeps up
        if bob is not None and b"bob" not in world.core.sessions:
            evicted_at = i
            to_carol = event_bytes(out, b"carol")[0]  # the chat (her notice of bob's leave comes after it)
            assert held_before <= WINDOW < held_before + to_carol + 8, "ended once more than send_queue_bytes wait"
        elif b"bob" in world.core.sessions:
            assert world.core.sessions[b"bob"].outbound.held_bytes <= WINDOW
    assert evicted_at is not None, "bob was never ended"
    assert bob_bytes <= WINDOW, "bob got no more than his window"
    assert Left("bob", "too slow to keep up") in carol_got
    assert Left("bob", "too slow to keep up") in alice_got
    assert [m.text for m in chats(carol_got)] == sent, "carol is unaffected"
    assert set(world.core.by_name) == {"alice", "carol"}
    assert world.send(b"bob", world.clients[b"bob"].ping()) == [Outgoing(b"bob", EVICTED_FRAMES)]


# ---------------------------------------------------------------- the history replay


def history_world(keyring: Any, count: int, **overrides: Any) -> tuple[World, list[str]]:
    """alice alone sent `count` messages to the room: the history."""
    world = make_world(keyring, send_window_bytes=WINDOW, **overrides)
    world.login("alice")
    sent = [text(i) for i in range(count)]
    for i, message in enumerate(sent):
        only_accepted(world, say(world, b"alice", message, f"h{i}"), b"alice", f"h{i}")
    return world, sent


def test_history_replay_is_paced_by_the_window(keyring):
    world, sent = history_world(keyring, 12)
    _, out = login_with_history(world, "bob")
    sizes = event_bytes(out, b"bob")
    assert len(sizes) >= 2, "the welcome and at least one history event"
    assert sum(sizes) <= WINDOW, "no more than a window before bob acknowledges"
    seen = world.deliver(out)
    first = seen[b"bob"]
    assert isinstance(first[0], Welcome)
    assert 1 <= len(chats(first)) < len(sent)

    # alice speaks while bob's replay is under way: it comes after the whole history.
    live = say(world, b"alice", "live while replaying")
    assert b"bob" not in {m.identity for m in live}
    world.deliver(live)

    rest = drain(world, b"bob")
    everything = chats(first) + chats(rest)
    assert [m.text for m in everything] == [*sent, "live while replaying"]
    assert all(m.history for m in everything[:-1]), "oldest first, all marked history"
    assert not everything[-1].history
    assert all(m.sender == "alice" for m in everything)
    session = world.core.sessions[b"bob"]
    assert not session.outbound.backlog
    assert not session.outbound.held


def test_history_replay_sends_the_newest_entries_that_fit(keyring):
    world, sent = history_world(keyring, 12)
    signed = [entry["signed"] for entry in world.core.archive.history]
    budget = sum(len(s) for s in signed[-3:])
    replay_world = make_world(keyring, send_window_bytes=WINDOW, history_replay_bytes=budget)
    replay_world.core.archive.history.extend(world.core.archive.history)
    _, out = login_with_history(replay_world, "bob")
    replayed = chats(replay_world.deliver(out)[b"bob"]) + chats(drain(replay_world, b"bob"))
    texts = [m.text for m in replayed]
    assert 1 <= len(texts) < len(sent)
    assert texts == sent[-len(texts) :], "the newest, oldest first"
    assert all(m.history for m in replayed)
    assert sum(len(s) for s in signed[-len(texts) :]) <= budget


def test_history_replay_budget_counts_each_entry_as_1_kib_and_twice_its_statement(keyring):
    world, sent = history_world(keyring, 6)
    signed = [entry["signed"] for entry in world.core.archive.history]
    budget = sum(1024 + 2 * len(s) for s in signed[-3:])  # PROTOCOL.md 7.5
    replay_world = make_world(keyring, send_window_bytes=WINDOW, history_replay_bytes=budget)
    replay_world.core.archive.history.extend(world.core.archive.history)
    _, out = login_with_history(replay_world, "bob")
    replayed = chats(replay_world.deliver(out)[b"bob"]) + chats(drain(replay_world, b"bob"))
    assert [m.text for m in replayed] == sent[-3:]


def test_no_history_replay_with_a_zero_budget(keyring):
    world, _ = history_world(keyring, 3, history_replay_bytes=0)
    _, out = login_with_history(world, "bob")
    events = world.deliver(out)[b"bob"]
    assert len(events) == 1
    assert isinstance(events[0], Welcome)


def test_run_inline_keeps_each_sessions_deliveries_in_order(keyring):
    world = World(keyring.keys, keyring.layout)  # World.run is run_inline
    world.login("alice")
    sent = [f"entry {i}" for i in range(10)]
    for i, message in enumerate(sent):
        only_accepted(world, say(world, b"alice", message, f"e{i}"), b"alice", f"e{i}")
    _, out = login_with_history(world, "bob")
    replayed = chats(world.deliver(out)[b"bob"]) + chats(drain(world, b"bob"))
    assert [m.text for m in replayed] == sent


# ---------------------------------------------------------------- the broker's clock


class Clock:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_chat_events_carry_the_brokers_wall_clock(keyring):
    world = make_world(keyring)
    world.wall_clock = clock = Clock(1_700_000_000.1234)  # the time the world gives the core
    world.login("bob")
    world.login("alice")
    out = say(world, b"alice", "what time is it")
    (message,) = chats(world.deliver(out)[b"bob"])
    assert message.received == 1_700_000_000.123
    stamped, *_ = world.core.archive.history
    assert stamped["received"] == 1_700_000_000.123
    # The history keeps the event a replay sends: the signed statement, the time, and its author's user object.
    assert set(stamped) == {"type", "signed", "sig", "received", "history", "author"}
    assert (stamped["type"], stamped["history"], stamped["author"]["name"]) == ("chat", True, "alice")

    clock.value = 1_800_000_000.0
    _, out = login_with_history(world, "carol")
    (replayed,) = chats(world.deliver(out)[b"carol"])
    assert replayed.history
    assert replayed.text == "what time is it"
    assert replayed.received == 1_700_000_000.123, "a replay keeps the time the broker first received it"

    out = say(world, b"alice", "later")
    got = world.deliver(out)
    assert [m.received for m in chats(got[b"bob"] + got[b"carol"])] == [1_800_000_000.0, 1_800_000_000.0]


# ---------------------------------------------------------------- time stamps in statements


BAD_TIMESTAMPS = {
    "nan": "NaN",
    "infinity": "Infinity",
    "-infinity": "-Infinity",
    "negative": "-1",
    "1e300": "1e300",
    "1e400": "1e400",
    "5e9": "5e9",
    "after-2100": str(p.MAX_TIMESTAMP + 1),
    "4000-digits": "1" + "0" * 3999,
    "5000-digits": "1" + "0" * 4999,
    "string": '"1700000000"',
    "true": "true",
    "null": "null",
    "list": "[1700000000]",
}


STATEMENT_ID = "ts-test"


def statement_frames(world: World, key: crypto.PrivateKey, session_id: str, raw_ts: str) -> list[bytes]:
    """SEND frames for alice's first chat statement, its `ts` written as `raw_ts` (JSON text, any value)."""
    statement = (
        '{"type":"chat","from":"alice","session":"'
        + session_id
        + '","seq":1,"ts":'
        + raw_ts
        + ',"id":"'
        + STATEMENT_ID
        + '","text":"bad"}'
    )
    signature = crypto.sign(key, p.statement_signing_input(statement))
    body = p.SignedStatement(statement, signature).encode()
    return p.encode_frames(p.SEND, crypto.seal(world.broker_public, body, p.context(p.SEND)))


BAD_TIME_STAMP = Failed(
    STATEMENT_ID, f"its time stamp is not a time from 1970 to 2100 (ts must be 0 to {p.MAX_TIMESTAMP}): 'bad'"
)
JSON_TIMESTAMPS = [name for name in BAD_TIMESTAMPS if name != "5000-digits"]  # 5000 digits: not JSON to Python


@pytest.mark.parametrize("raw", [BAD_TIMESTAMPS[name] for name in JSON_TIMESTAMPS], ids=JSON_TIMESTAMPS)
def test_statements_with_a_bad_time_stamp_are_not_delivered(keyring, raw, caplog):
    caplog.set_level(logging.DEBUG)
    world = make_world(keyring)
    world.login("bob")
    alice = world.login("alice").client
    world.now += 0.1
    out = world.send(b"alice", statement_frames(world, keyring.keys["alice"], alice.session_id, raw))
    assert world.deliver(out) == {b"alice": [BAD_TIME_STAMP]}, "nothing for bob; alice hears it failed"
    assert not world.core.archive.history
    assert world.store.seen("alice", STATEMENT_ID) is None, "not kept"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], "no traceback"
    assert set(world.core.by_name) == {"alice", "bob"}, "the session goes on"


@pytest.mark.parametrize("raw", [BAD_TIMESTAMPS[name] for name in JSON_TIMESTAMPS], ids=JSON_TIMESTAMPS)
def test_a_chat_with_a_bad_time_stamp_fails_and_its_seq_counts(keyring, raw):
    world = make_world(keyring)
    world.login("bob")
    alice = world.login("alice").client
    world.now += 0.1
    out = world.send(b"alice", statement_frames(world, keyring.keys["alice"], alice.session_id, raw))
    assert world.deliver(out) == {b"alice": [BAD_TIME_STAMP]}
    assert world.core.sessions[b"alice"].seq_in == 1  # authentic and in order: its number is spent
    alice._seq_out = 1  # the hand-made statement used seq 1 behind the session's back
    seen = world.deliver(say(world, b"alice", "good", STATEMENT_ID))  # seq 2; the failed id was not kept
    (message,) = chats(seen[b"bob"])
    assert message.text == "good"
    assert seen[b"alice"] == [Accepted(STATEMENT_ID, message.received)]


def test_a_statement_that_is_not_json_is_refused_and_ends_the_session(keyring):
    """5000 digits exceed Python's integer parsing limit: the SEND is not a JSON document at all (6.3). The
    broker cannot read its seq or id; it refuses it, ends the session, and a new login starts at seq 1."""
    world = make_world(keyring)
    world.login("bob")
    alice = world.login("alice").client
    out = world.send(b"alice", statement_frames(world, keyring.keys["alice"], alice.session_id, "9" * 5000))
    (refused,) = [m for m in out if m.identity == b"alice"]
    assert world.open_event(b"alice", refused.frames) == {"type": "refused"}
    with pytest.raises(StatementRefused):
        alice.receive(refused.frames)
    assert world.deliver([m for m in out if m.identity != b"alice"]) == {b"bob": [Left("alice", "connection lost")]}
    assert b"alice" not in world.core.sessions
    world.login("alice")
    seen = world.deliver(say(world, b"alice", "good", STATEMENT_ID))  # seq 1 of the new session
    (message,) = chats(seen[b"bob"])
    assert message.text == "good"
    assert seen[b"alice"] == [Accepted(STATEMENT_ID, message.received)]


@pytest.mark.parametrize("raw", ["0", "1700000000.5", str(p.MAX_TIMESTAMP)])
def test_statements_with_a_time_stamp_in_range_are_delivered(keyring, raw):
    world = make_world(keyring)
    world.login("bob")
    alice = world.login("alice").client
    out = world.send(b"alice", statement_frames(world, keyring.keys["alice"], alice.session_id, raw))
    seen = world.deliver(out)
    (message,) = chats(seen[b"bob"])
    assert message.text == "bad"  # the text is fine; so is this ts
    assert message.timestamp == float(raw)
    assert seen[b"alice"] == [Accepted(STATEMENT_ID, message.received)]


# ---------------------------------------------------------------- the connection's user


def test_hello_for_another_user_than_the_connection_is_refused(world):
    bob = world.client("bob", b"conn-1")
    work = world.core.receive(b"conn-1", bob.hello(), world.now, source="10.0.0.1", user="alice")
    assert world.run(work) == [Outgoing(b"conn-1", REFUSED_FRAMES)]
    assert world.core.logins.pending == {}
    assert world.core.logins.hellos_opening == 0
    assert world.core.logins.hello_users == {}

    alice = world.client("alice", b"conn-2")
    work = world.core.receive(b"conn-2", alice.hello(), world.now, source="10.0.0.1", user="alice")
    (challenge,) = world.run(work)
    assert challenge.frames[1] == p.CHALLENGE
    _, login = alice.receive(challenge.frames)
    assert login is not None
    out = world.run(world.core.receive(b"conn-2", login, world.now, source="10.0.0.1", user="alice"))
    (welcome,) = world.deliver(out)[b"conn-2"]
    assert isinstance(welcome, Welcome)
    assert [u.name for u in world.core.online()] == ["alice"]


def test_login_rate_is_per_user_not_per_source(keyring):
    world = make_world(keyring, logins_per_second_per_user=0.5)  # bursts of one

    def hello(identity: bytes, name: str) -> list[Outgoing]:
        client = world.client(name, identity)
        return world.run(world.core.receive(identity, client.hello(), world.now, source="10.0.0.1", user=name))

    def login(identity: bytes, challenge: Outgoing, name: str) -> None:
        _, frames = world.clients[identity].receive(challenge.frames)
        assert frames is not None
        out = world.run(world.core.receive(identity, frames, world.now, source="10.0.0.1", user=name))
        (welcome,) = world.deliver(out)[identity]
        assert isinstance(welcome, Welcome)

    (alice_challenge,) = hello(b"a1", "alice")
    assert alice_challenge.frames[1] == p.CHALLENGE
    assert hello(b"a2", "alice") == [Outgoing(b"a2", BUSY_FRAMES)], "alice's second login within the second"
    (bob_challenge,) = hello(b"b1", "bob")  # same source, another user: his own budget
    assert bob_challenge.frames[1] == p.CHALLENGE
    login(b"a1", alice_challenge, "alice")
    login(b"b1", bob_challenge, "bob")
    assert [u.name for u in world.core.online()] == ["alice", "bob"]

    world.now += 2.0
    (again,) = hello(b"a3", "alice")
    assert again.frames[1] == p.CHALLENGE, "the budget refills"


# ---------------------------------------------------------------- look-alike names


def forged_login(world: World, identity: bytes, name: str, signer: crypto.PrivateKey) -> list[Outgoing]:
    """HELLO as `name`, then a LOGIN signed with `signer` over the nonces read from the broker's state
    (so it gets past a decoy challenge nobody can open)."""
    client = world.client(name, identity, key=signer)
    (challenge,) = world.send(identity, client.hello())
    assert challenge.frames[1] == p.CHALLENGE
    pending = world.core.logins.pending[identity]
    proof = crypto.sign(signer, p.login_proof_input(name, pending.client_nonce, pending.server_nonce))
    body = crypto.seal(world.broker_public, p.Login(proof).encode(), p.context(p.LOGIN))
    return world.send(identity, p.encode_frames(p.LOGIN, body))


@pytest.fixture
def keys_copy(keyring: Any, tmp_path: Path) -> KeyLayout:
    root = tmp_path / "keys"
    shutil.copytree(keyring.root, root)
    return KeyLayout(root)


def test_control_forged_login_with_the_right_key_gets_in(keyring, keys_copy):
    world = make_world(keyring, keys_copy)
    out = forged_login(world, b"alice", "alice", keyring.keys["alice"])
    assert [(m.identity, m.frames[1]) for m in out] == [(b"alice", p.EVENT)]


@pytest.mark.parametrize("signer", ["alice", "broker"])
def test_a_name_with_a_registered_look_alike_is_refused(keyring, keys_copy, signer):
    shutil.copyfile(keys_copy.client_public("alice"), keys_copy.client_public("aIice"))
    world = make_world(keyring, keys_copy)

    client = world.client("alice", b"real-alice")
    (challenge,) = world.send(b"real-alice", client.hello())
    with pytest.raises(ConnectError, match="login refused"):
        client.receive(challenge.frames)  # a decoy, sealed to the broker's key

    for identity, name in ((b"alice", "alice"), (b"aIice", "aIice")):
        out = forged_login(world, identity, name, keyring.keys[signer])
        assert out == [Outgoing(identity, REFUSED_FRAMES)]
    assert world.core.sessions == {}
    assert world.core.logins.pending == {b"real-alice": world.core.logins.pending[b"real-alice"]}

    world.login("bob")  # others are not affected
    assert [u.name for u in world.core.online()] == ["bob"]


# ---------------------------------------------------------------- the order envelopes are opened in


def send_job(identity: bytes, n: int, session: str = "") -> OpenJob:
    """SEND number `n` from the user named like `identity`, of its session `session` (default: one per user)."""
    return OpenJob(identity, p.SEND, b"%d" % n, identity.decode(), session or f"session of {identity.decode()}")


def challenge_job(n: int) -> ChallengeJob:
    return ChallengeJob(b"h%d" % n, b"", "alice", b"", b"", b"")


def test_one_users_flood_does_not_delay_another_user():
    queue = OpenQueue()
    for n in range(100):
        queue.append(send_job(b"flood", n))
    queue.append(send_job(b"single", 0))
    assert len(queue) == 101
    order = [queue.popleft() for _ in range(101)]
    assert not queue
    assert send_job(b"single", 0) in order[:2]
    assert [job for job in order if job.identity == b"flood"] == [send_job(b"flood", n) for n in range(100)]


def test_users_take_turns_each_in_its_own_order():
    queue = OpenQueue()
    for n in range(3):
        for identity in (b"a", b"b", b"c"):
            queue.append(send_job(identity, n))
    order = [queue.popleft() for _ in range(9)]
    assert [(job.identity, job.body) for job in order] == [
        (identity, b"%d" % n) for n in range(3) for identity in (b"a", b"b", b"c")
    ]


def test_handshakes_get_every_fifth_turn_while_sessions_wait():
    queue = OpenQueue()
    for n in range(60):
        queue.append(send_job(b"a" if n % 2 else b"b", n))
    handshakes = [OpenJob(b"h%d" % n, p.HELLO, b"") if n % 2 else challenge_job(n) for n in range(10)]
    handshakes.append(OpenJob(b"h-login", p.LOGIN, b""))
    for job in handshakes:
        queue.append(job)
    order = [queue.popleft() for _ in range(len(queue))]
    positions = [i + 1 for i, job in enumerate(order) if job in handshakes]
    assert positions == [HANDSHAKE_TURN * k for k in range(1, 12)]
    assert [job for job in order if job in handshakes] == handshakes, "handshakes keep their order"
    for identity in (b"a", b"b"):
        mine = [job.body for job in order if job.identity == identity]
        assert mine == sorted(mine, key=int)


def test_several_sessions_of_one_user_share_that_users_turn():
    queue = OpenQueue()
    for n in range(4):  # mallory's four sessions, each with a flood of its own
        for m in range(10):
            queue.append(send_job(b"mallory", 10 * n + m, session=f"mallory {n}"))
    queue.append(send_job(b"alice", 0))
    order = [queue.popleft() for _ in range(len(queue))]
    assert order.index(send_job(b"alice", 0)) <= 1


def test_a_cancelled_session_loses_its_unopened_sends_and_no_one_else_does():
    queue = OpenQueue()
    for n in range(5):
        queue.append(send_job(b"mallory", n, session="old"))
        queue.append(send_job(b"mallory", 100 + n, session="new"))
        queue.append(send_job(b"alice", n))
    queue.append(OpenJob(b"h", p.HELLO, b""))
    assert queue.cancel(Cancel("mallory", "old")) == 5
    assert queue.cancel(Cancel("mallory", "old")) == 0
    order = [queue.popleft() for _ in range(len(queue))]
    assert [job.session for job in order if job.owner == "mallory"] == ["new"] * 5
    assert len([job for job in order if job.owner == "alice"]) == 5
    assert queue.cancel(Cancel("nobody", "x")) == 0


def test_handshakes_go_at_once_when_no_session_waits():
    queue = OpenQueue()
    jobs = [OpenJob(b"h%d" % n, p.HELLO, b"") for n in range(3)]
    for job in jobs:
        queue.append(job)
    assert [queue.popleft() for _ in range(3)] == jobs
    queue.append(send_job(b"a", 0))
    queue.append(OpenJob(b"h9", p.HELLO, b""))
    queue.clear()
    assert not queue
    assert len(queue) == 0


def test_inline_jobs_open_a_bounded_number_of_envelopes_per_turn(keyring):
    jobs = InlineJobs(keyring.keys["broker"], lambda identity: True)
    count = 2 * INLINE_OPENS_PER_TURN + 3
    submitted = [send_job(b"a" if n % 3 else b"b", n) for n in range(count)]
    jobs.submit(submitted)
    assert jobs.has_results()
    assert not jobs.idle()
    results: list[Any] = []
    turns = []
    while not jobs.idle():
        got = jobs.collect()
        turns.append(len(got))
        results += got
    assert turns == [INLINE_OPENS_PER_TURN, INLINE_OPENS_PER_TURN, 3]
    assert all(isinstance(r, Opened) and r.plaintext is None and r.command == p.SEND for r in results)
    for identity in (b"a", b"b"):
        assert [r for r in results if r.identity == identity] == [
            Opened(identity, p.SEND, None, job.session) for job in submitted if job.identity == identity
        ]
    assert jobs.collect() == []


# ---------------------------------------------------------------- ending a session that has events waiting


def replay_cut_short(keyring: Any, identity: bytes) -> tuple[World, list[str], list[str]]:
    """bob logs in on `identity` to 12 messages of history, more than his window; alice speaks while the rest of
    the replay waits. The world, the history, and what bob must still get if his session ends now: the replay
    events already sealed for him (held for his window: their numbers are spent), then alice's live message."""
    world, sent = history_world(keyring, 12)
    _, out = login_with_history(world, "bob", identity)
    seen = world.deliver(out)[identity]
    session = world.core.sessions[identity]
    assert session.outbound.replay, "part of the replay still waits"
    got = len(chats(seen))
    assert [m.text for m in chats(seen)] == sent[:got]
    live = world.deliver(say(world, b"alice", "live while replaying", "live"))
    assert [type(e) for e in live.pop(b"alice")] == [Accepted]
    assert live == {}, "it waits behind bob's replay"
    assert len(session.outbound.backlog) == 1
    sealed = len(session.outbound.held)
    assert got + sealed < len(sent), "some of the replay is not sealed yet"
    return world, sent, [*sent[got : got + sealed], "live while replaying"]


def test_a_session_closed_during_its_replay_gets_its_live_events_then_closed(keyring):
    """The rest of the login's replay is dropped (bob's next login replays the history anyway); what was sealed
    for him and what came live meanwhile go out past the window, then `closed`."""
    world, sent, due = replay_cut_short(keyring, b"bob-1")
    _, out = login_with_history(world, "bob", b"bob-2")  # bob logs in again elsewhere
    seen = world.deliver(out)
    rest = seen[b"bob-1"]
    assert [m.text for m in chats(rest)] == due
    assert [m.history for m in chats(rest)] == [True] * (len(due) - 1) + [False]
    assert rest[-1] == SessionClosed("you logged in again elsewhere")
    assert len(rest) == len(due) + 1
    # The new session gets the whole history again (and alice's message in it), from the start.
    replay = chats(seen[b"bob-2"]) + chats(drain(world, b"bob-2"))
    assert [m.text for m in replay] == [*sent, "live while replaying"]
    assert all(m.history for m in replay)


def test_shutdown_sends_what_waits_for_each_session_then_the_notice(keyring):
    world, _, due = replay_cut_short(keyring, b"bob")
    rest = world.deliver(world.run(world.core.shutdown("SIGTERM", world.now)))
    assert rest[b"alice"] == [Shutdown("SIGTERM")]
    assert [m.text for m in chats(rest[b"bob"])] == due
    assert rest[b"bob"][-1] == Shutdown("SIGTERM")
    assert len(rest[b"bob"]) == len(due) + 1


# ---------------------------------------------------------------- what a session sends


def test_unopened_sends_are_bounded_in_bytes(keyring):
    # The budget is at least two of the largest SENDs: with 16 KiB texts, 160 KiB.
    world = make_world(keyring, queued_send_bytes_per_user=64 * 1024, max_text_bytes=16 * 1024)
    world.login("bob")
    alice = world.login("alice").client
    frames = [alice.say(text(i)) for i in range(20)]  # about 10 KB each: more than 160 KiB in all
    work: list[Work] = []
    for message in frames:  # all arrive before any is opened, as in a flood
        work += world.core.receive(b"alice", message, world.now)
    assert b"alice" not in world.core.sessions, "disconnected as too fast"
    assert len([w for w in work if isinstance(w, OpenJob)]) < len(frames)
    assert world.core.receive(b"alice", alice.ping(), world.now) == [Outgoing(b"alice", EVICTED_FRAMES)]


def test_a_session_is_bound_to_its_connections_user(keyring):
    world = make_world(keyring)
    world.login("bob")
    alice = world.login("alice").client
    message = alice.say("from alice's session")
    # The same routing id on a connection the transport says is bob's: dropped, alice's session untouched.
    assert world.core.receive(b"alice", message, world.now, user="bob") == []
    assert world.core.sessions[b"alice"].seq_in == 0
    (chat,) = chats(world.deliver(world.run(world.core.receive(b"alice", message, world.now, user="alice")))[b"bob"])
    assert chat.text == "from alice's session"


def test_a_hello_from_a_user_no_longer_registered_costs_no_rsa_work(keyring, tmp_path):
    root = tmp_path / "keys"
    shutil.copytree(keyring.root, root)
    world = make_world(keyring, KeyLayout(root))
    (root / "clients" / "carol.pub").unlink()  # revoked after its connection was admitted
    world.read_keys()  # as the I/O loop does when a connection speaks whose user's key file changed
    work = world.core.receive(b"conn", world.client("carol", b"conn").hello(), world.now, user="carol")
    assert work == [Outgoing(b"conn", REFUSED_FRAMES)]
