"""What the broker keeps (zchat/broker/core.py over zchat/broker/store.py): answers only after the commit, re-sends
recognised, history and private messages that survive a restart, mailbox limits, a full disk, refused statements,
retention. No sockets: tests/unit/world.py over a real SQLite file; a restart is a new Store and BrokerCore on
the same file, as a restarted broker makes them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.world import WALL0, WallClock, World
from zchat import protocol as p
from zchat.broker.archive import DAY, PRUNE_INTERVAL
from zchat.broker.work import run_inline
from zchat.client.session import SeenMessages, State
from zchat.errors import StatementRefused
from zchat.events import Accepted, ChatMessage, Event, Failed, Left

FULL = "database or disk is full"
BIG = "x" * 20_000  # needs new pages however much room the database's pages have left


@pytest.fixture
def clock() -> WallClock:
    return WallClock(WALL0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "broker.db"


@pytest.fixture
def make(keyring: Any, db_path: Path, clock: WallClock) -> Iterator[Callable[..., World]]:
    """Worlds over the database file `db_path`, with the wall clock `clock`; config overrides as keywords."""
    made: list[World] = []

    def make_world(**overrides: Any) -> World:
        world = World(keyring.keys, keyring.layout, overrides, db_path=db_path, wall_clock=clock)
        made.append(world)
        return world

    yield make_world
    for world in made:
        world.store.close()


@pytest.fixture
def world(make: Callable[..., World]) -> World:
    return make()


def say(world: World, identity: bytes, text: str, message_id: str, to: str | None = None) -> dict[bytes, list[Event]]:
    """A chat message, a tenth of a second and a wall-clock second after the last (so each has its own time)."""
    world.now += 0.1
    clock = world.wall_clock
    assert isinstance(clock, WallClock)
    clock.value += 1.0
    return world.say(identity, text, to=to, message_id=message_id)


def accepted(seen: dict[bytes, list[Event]], identity: bytes) -> Accepted:
    """The one event `identity` got: an Accepted."""
    (answer,) = seen[identity]
    assert isinstance(answer, Accepted)
    return answer


def chats(events: list[Event]) -> list[ChatMessage]:
    assert all(isinstance(e, ChatMessage) for e in events), events
    return [e for e in events if isinstance(e, ChatMessage)]


def texts(events: list[Event]) -> list[str]:
    return [m.text for m in chats(events)]


def stored_texts(world: World) -> list[str]:
    """The room history as the store has it (its current transaction included)."""
    return [p.Statement.parse(entry.document["signed"]).body for entry in world.store.history(1000, since=0.0)]


def core_texts(world: World) -> list[str]:
    return [p.Statement.parse(entry["signed"]).body for entry in world.core.archive.history]


def committed_rows(db_path: Path, table: str) -> int:
    """Rows of `table` another process would see: what was committed."""
    other = sqlite3.connect(db_path)
    try:
        return int(other.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - a table name of ours
    finally:
        other.close()


def fill_the_disk(world: World) -> None:
    """No page more for the database: what needs a new page fails as on a full disk."""
    pages = world.store._db.execute("PRAGMA page_count").fetchone()[0]
    world.store._db.execute(f"PRAGMA max_page_count = {pages}")


def free_the_disk(world: World) -> None:
    world.store._db.execute("PRAGMA max_page_count = 1073741823")


# ---------------------------------------------------------------- accepted once committed


def test_accepted_comes_with_the_commit_once_per_message(world, db_path):
    world.login("alice")
    world.login("bob")
    alice = world.clients[b"alice"]
    work = world.core.receive(b"alice", alice.say("one", message_id="one"), world.now)
    work += world.core.receive(b"alice", alice.say("two", message_id="two"), world.now)
    out = run_inline(world.core, world.runner, work, world.now, world.wall_clock())
    # Delivered at once; the sender hears nothing yet, and nothing is durable.
    assert [m.identity for m in out] == [b"bob", b"bob"]
    delivered = chats(world.deliver(out)[b"bob"])
    assert [(m.text, m.message_id) for m in delivered] == [("one", "one"), ("two", "two")]
    assert committed_rows(db_path, "chat") == 0
    assert core_texts(world) == ["one", "two"]

    # One commit for both (group commit): then the answers, in order, with the times the others saw.
    answers = world.run(world.core.commit(world.now))
    assert [m.identity for m in answers] == [b"alice", b"alice"]
    assert world.deliver(answers) == {
        b"alice": [Accepted("one", delivered[0].received), Accepted("two", delivered[1].received)]
    }
    assert committed_rows(db_path, "chat") == 2
    assert world.core.commit(world.now) == [], "each answer goes once"
    assert world.run(world.core.commit(world.now + 1)) == []

    # A turn with one message: one answer.
    seen = say(world, b"alice", "three", "three")
    assert seen[b"alice"] == [Accepted("three", chats(seen[b"bob"])[0].received)]
    assert world.core.commit(world.now) == []


def test_a_message_the_broker_crashed_before_committing_is_new_after_the_restart(world, db_path):
    world.login("alice")
    alice = world.clients[b"alice"]
    work = world.core.receive(b"alice", alice.say("lost?", message_id="m1"), world.now)
    out = run_inline(world.core, world.runner, work, world.now, world.wall_clock())
    assert out == []  # alone in the room: nothing goes out before the commit
    world.restart()  # no commit: the broker died with the message in its open transaction
    assert world.core.archive.history == type(world.core.archive.history)()
    assert committed_rows(db_path, "seen") == 0
    world.login("alice")
    world.login("bob")
    seen = say(world, b"alice", "lost?", "m1")  # the client re-sends what was never accepted
    (message,) = chats(seen[b"bob"])
    assert seen[b"alice"] == [Accepted("m1", message.received)]


# ---------------------------------------------------------------- re-sends


@pytest.mark.parametrize("restart", [False, True], ids=["same-broker", "after-restart"])
def test_a_resend_of_an_accepted_message_is_a_duplicate_and_goes_nowhere(world, restart):
    world.login("alice", b"alice-1")
    world.login("bob")
    seen = say(world, b"alice-1", "only once", "once")
    first = accepted(seen, b"alice-1")
    assert texts(seen[b"bob"]) == ["only once"]
    world.request(b"alice-1", "bye")  # alice's connection ends before she read the answer, say
    if restart:
        world.restart()
        world.login("bob")
    world.login("alice", b"alice-2")
    seen = say(world, b"alice-2", "only once", "once")
    assert seen == {b"alice-2": [Accepted("once", first.received, duplicate=True)]}, "bob gets nothing"
    assert core_texts(world) == ["only once"]
    assert stored_texts(world) == ["only once"]
    carol = world.login("carol")
    assert [(m.text, m.message_id, m.history) for m in chats(carol.replay)] == [("only once", "once", True)]


def test_a_resend_of_a_kept_private_message_is_not_kept_twice(world):
    world.login("alice")
    seen = say(world, b"alice", "psst", "p1", to="carol")
    first = accepted(seen, b"alice")
    assert first.queued
    size = world.store.mailbox_usage("carol")
    assert size[0] == 1
    seen = say(world, b"alice", "psst", "p1", to="carol")
    assert seen == {b"alice": [Accepted("p1", first.received, duplicate=True)]}
    assert world.store.mailbox_usage("carol") == size
    carol = world.login("carol")
    assert [(m.text, m.message_id) for m in chats(carol.replay)] == [("psst", "p1")]


# ---------------------------------------------------------------- history across a restart


def test_history_survives_a_restart(world):
    world.login("alice")
    answers = [accepted(say(world, b"alice", f"message {i}", f"m{i}"), b"alice") for i in range(3)]
    kept = list(world.core.archive.history)
    world.restart()
    assert list(world.core.archive.history) == kept, "loaded from the store at start"
    bob = world.login("bob")
    replay = chats(bob.replay)
    assert [(m.sender, m.text, m.message_id, m.history) for m in replay] == [
        ("alice", f"message {i}", f"m{i}", True) for i in range(3)
    ]
    assert [m.received for m in replay] == [a.received for a in answers], "the time the broker first received each"
    # The broker goes on from there.
    world.login("alice")
    seen = say(world, b"alice", "after the restart", "m3")
    assert texts(seen[b"bob"]) == ["after the restart"]
    assert core_texts(world) == [*(f"message {i}" for i in range(3)), "after the restart"]


def test_a_reconnecting_client_does_not_show_the_history_it_has_seen(world):
    world.login("alice")
    seen_by_bob = SeenMessages()
    world.login("bob", b"bob-1", seen=seen_by_bob)
    assert texts(say(world, b"alice", "live", "live")[b"bob-1"]) == ["live"]
    world.request(b"bob-1", "bye")
    say(world, b"alice", "while bob was away", "away")
    again = world.login("bob", b"bob-2", seen=seen_by_bob)
    assert [(m.text, m.history) for m in chats(again.replay)] == [("while bob was away", True)]
    assert again.client._seq_in == 3, "the broker replayed both; the client showed the one it had not seen"


# ---------------------------------------------------------------- private messages to someone offline


def private(message: ChatMessage) -> tuple[str, str, str, bool, bool, bool]:
    return (message.sender, message.text, message.message_id, message.private, message.away, message.history)


@pytest.mark.parametrize("restart", [False, True], ids=["same-broker", "after-restart"])
def test_a_private_message_to_someone_offline_waits_for_their_next_login(world, restart):
    world.login("alice")
    world.login("bob")
    room = say(world, b"alice", "to the room", "r1")
    seen = say(world, b"alice", "psst, carol", "p1", to="carol")
    answer = accepted(seen, b"alice")
    assert answer == Accepted("p1", answer.received, queued=True)
    assert b"bob" not in seen
    assert world.store.mailbox_usage("carol")[0] == 1
    if restart:
        world.restart()
    carol = world.login("carol")
    history, mail = chats(carol.replay)  # the room's history first, then what was kept for her
    assert private(history) == ("alice", "to the room", "r1", False, False, True)
    assert history.received == chats(room[b"bob"])[0].received
    assert private(mail) == ("alice", "psst, carol", "p1", True, True, False)
    assert mail.received == answer.received
    # Kept until she has acknowledged the event that carried it.
    assert world.store.mailbox_usage("carol")[0] == 1
    assert world.ack(b"carol") == {}
    assert world.store.mailbox("carol") == []
    world.restart()
    assert world.store.mailbox("carol") == [], "its deletion was committed"
    assert [private(m) for m in chats(world.login("carol").replay)] == [private(history)], "the history alone"


def test_kept_mail_not_acknowledged_comes_again_and_the_client_skips_it(world):
    world.login("alice")
    accepted(say(world, b"alice", "psst", "p1", to="carol"), b"alice")
    seen_by_carol = SeenMessages()
    first = world.login("carol", b"carol-1", seen=seen_by_carol)
    assert [private(m) for m in chats(first.replay)] == [("alice", "psst", "p1", True, True, False)]
    world.request(b"carol-1", "bye")  # before acknowledging it
    assert len(world.store.mailbox("carol")) == 1

    again = world.login("carol", b"carol-2", seen=seen_by_carol)
    assert again.replay == [], "shown once"
    assert again.client._seq_in == 2, "the welcome and the mail again"
    world.ack(b"carol-2")
    assert world.store.mailbox("carol") == []
    assert world.login("carol", b"carol-3").client._seq_in == 1, "nothing after the welcome now"


def test_a_private_message_delivered_live_is_kept_until_acknowledged(world):
    world.login("alice")
    seen_by_bob = SeenMessages()
    world.login("bob", b"bob-1", seen=seen_by_bob)
    seen = say(world, b"alice", "live psst", "p1", to="bob")
    (message,) = chats(seen[b"bob-1"])
    assert private(message) == ("alice", "live psst", "p1", True, False, False)
    assert seen[b"alice"] == [Accepted("p1", message.received)], "delivered, so not queued"
    assert len(world.store.mailbox("bob")) == 1
    world.request(b"bob-1", "bye")  # bob read it, but his acknowledgement never reached the broker
    again = world.login("bob", b"bob-2", seen=seen_by_bob)
    assert again.replay == []
    assert again.client._seq_in == 2
    world.ack(b"bob-2")
    assert world.store.mailbox("bob") == []


def test_an_acknowledged_live_private_message_is_deleted(world):
    world.login("alice")
    world.login("bob")
    world.ack(b"bob")  # bob has read alice's join: the private message is the next event
    say(world, b"alice", "psst", "p1", to="bob")
    assert len(world.store.mailbox("bob")) == 1
    world.ack(b"bob")
    assert world.store.mailbox("bob") == []
    world.request(b"bob", "bye")
    assert world.login("bob").client._seq_in == 1


@pytest.mark.parametrize("name", ["zed", "mallory"], ids=["unknown", "key-but-not-registered"])
def test_a_private_message_to_someone_not_registered_fails(world, name):
    world.login("alice")
    world.login("bob")
    seen = say(world, b"alice", f"hi {name}", "p1", to=name)
    assert seen == {b"alice": [Failed("p1", f"nobody is registered here as {name}: 'hi {name}'")]}
    assert world.store.seen("alice", "p1") is None
    assert world.store.mailbox_usage(name) == (0, 0)


# ---------------------------------------------------------------- mailbox limits


def test_a_full_mailbox_by_count_fails_until_its_owner_collects(make):
    world = make(mailbox_messages=2)
    world.login("alice")
    for i in range(2):
        assert accepted(say(world, b"alice", f"note {i}", f"n{i}", to="carol"), b"alice").queued
    seen = say(world, b"alice", "one too many", "n2", to="carol")
    assert seen == {b"alice": [Failed("n2", "carol's mailbox is full (2 messages waiting): 'one too many'")]}
    assert world.store.seen("alice", "n2") is None
    assert accepted(say(world, b"alice", "bob's box is another", "b0", to="bob"), b"alice").queued

    carol = world.login("carol")
    assert texts(carol.replay) == ["note 0", "note 1"]
    world.ack(b"carol")
    assert world.store.mailbox_usage("carol") == (0, 0)
    world.request(b"carol", "bye")
    assert accepted(say(world, b"alice", "one too many", "n2", to="carol"), b"alice").queued


def test_a_full_mailbox_by_size_fails(make):
    limit = 6000
    world = make(mailbox_bytes=limit)
    world.login("alice")
    long_text = "y" * 2000
    assert accepted(say(world, b"alice", long_text, "long", to="carol"), b"alice").queued
    count, size = world.store.mailbox_usage("carol")
    assert count == 1
    assert size + size > limit, "another one as long does not fit"
    seen = say(world, b"alice", long_text, "long2", to="carol")
    expected = f"carol's mailbox is full (1 messages waiting): {'y' * 40 + '…'!r}"
    assert seen == {b"alice": [Failed("long2", expected)]}
    assert accepted(say(world, b"alice", "short", "short", to="carol"), b"alice").queued, "a short one still fits"
    count, size = world.store.mailbox_usage("carol")
    assert count == 2
    assert size <= limit
    assert texts(world.login("carol").replay) == [long_text, "short"]


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_fails_the_message_and_the_broker_goes_on(world):
    world.login("alice")
    world.login("bob")
    accepted(say(world, b"alice", "before", "m0"), b"alice")
    fill_the_disk(world)
    seen = say(world, b"alice", BIG, "big")
    reason = f"not stored: could not store the message: {FULL}: {'x' * 40 + '…'!r}"
    assert seen == {b"alice": [Failed("big", reason)]}, "bob gets nothing"
    assert core_texts(world) == ["before"]
    seen = say(world, b"alice", BIG, "big-psst", to="carol")
    assert seen == {b"alice": [Failed("big-psst", reason.replace("the message", "the private message"))]}

    free_the_disk(world)
    seen = say(world, b"alice", BIG, "big")  # the same message again: it was not kept, so it is new
    (message,) = chats(seen[b"bob"])
    assert seen[b"alice"] == [Accepted("big", message.received)]
    assert accepted(say(world, b"alice", "psst", "big-psst", to="carol"), b"alice").queued
    world.restart()
    assert texts(world.login("bob").replay) == ["before", BIG]
    assert texts(world.login("carol").replay) == ["before", BIG, "psst"]


def test_a_full_disk_that_takes_the_whole_turn_fails_every_message_of_it(world):
    """SQLite may drop the whole transaction on a full disk: the messages stored earlier in the same turn are
    lost too, and their senders hear `failed` at the commit instead of `accepted`."""
    world.login("alice")
    world.login("bob")
    fill_the_disk(world)
    alice = world.clients[b"alice"]
    work = world.core.receive(b"alice", alice.say("small", message_id="small"), world.now)
    work += world.core.receive(b"alice", alice.say(BIG, message_id="big"), world.now)
    seen = world.deliver(world.run(work))
    if world.store.seen("alice", "small") is not None:  # pragma: no cover - this SQLite undid the statement only
        pytest.skip("SQLite kept the rest of the transaction")
    assert seen[b"alice"] == [
        Failed("big", f"not stored: could not store the message: {FULL}: {'x' * 40 + '…'!r}"),
        Failed("small", f"not stored: could not store messages: {FULL}"),
    ]
    # bob saw "small" before the commit failed (deliveries do not wait for it); the history has lost it.
    assert texts(seen[b"bob"]) == ["small"]
    assert world.core.archive.history == type(world.core.archive.history)()
    free_the_disk(world)
    seen = say(world, b"alice", "small", "small")  # it was not kept: the same id is new to the broker
    received = world.store.seen("alice", "small")
    assert received is not None
    assert seen == {b"alice": [Accepted("small", received)], b"bob": []}, "bob's client has shown it already"
    world.restart()
    assert texts(world.login("carol").replay) == ["small"]


def test_an_acknowledgement_never_deletes_mail_it_did_not_carry(world):
    world.login("alice")
    world.login("bob")
    world.ack(b"bob")
    fill_the_disk(world)
    alice = world.clients[b"alice"]
    work = world.core.receive(b"alice", alice.say("psst, bob", to="bob", message_id="lost"), world.now)
    work += world.core.receive(b"alice", alice.say(BIG, message_id="big"), world.now)
    seen = world.deliver(world.run(work))
    if world.store.seen("alice", "lost") is not None:  # pragma: no cover - this SQLite undid the statement only
        pytest.skip("SQLite kept the rest of the transaction")
    assert [type(e) for e in seen[b"alice"]] == [Failed, Failed]
    assert texts(seen[b"bob"]) == ["psst, bob"]  # delivered live, carrying a mail row that was then rolled back
    free_the_disk(world)

    answer = accepted(say(world, b"alice", "for carol", "kept", to="carol"), b"alice")
    assert answer.queued
    assert len(world.store.mailbox("carol")) == 1
    world.ack(b"bob")  # bob acknowledges the event that carried the lost private message
    assert len(world.store.mailbox("carol")) == 1, "carol's mail is still kept"
    assert texts(world.login("carol").replay) == ["for carol"]


# ---------------------------------------------------------------- refused statements


def test_a_refused_statement_ends_the_session_and_a_new_login_sends_again(world):
    world.login("alice")
    world.login("bob")
    alice = world.clients[b"alice"]
    alice._seq_out += 1  # a statement lost on the way: the next one skips a number
    out = world.send(b"alice", alice.say("second", message_id="s2"))
    (refusal,) = [m for m in out if m.identity == b"alice"]
    assert world.open_event(b"alice", refusal.frames) == {"type": "refused", "seq": 2, "id": "s2"}
    with pytest.raises(StatementRefused, match=r"^the broker refused a statement \(statement 2, message s2\)$"):
        alice.receive(refusal.frames)
    assert alice.state is State.CLOSED
    assert world.deliver([m for m in out if m.identity != b"alice"]) == {b"bob": [Left("alice", "connection lost")]}
    assert set(world.core.by_name) == {"bob"}
    assert world.store.seen("alice", "s2") is None

    world.login("alice")  # the client logs in again on the same connection and re-sends
    seen = say(world, b"alice", "second", "s2")
    (message,) = chats(seen[b"bob"])
    assert (message.text, message.message_id) == ("second", "s2")
    assert seen[b"alice"] == [Accepted("s2", message.received)]


# ---------------------------------------------------------------- retention


def test_tick_prunes_the_history_to_history_size_at_most_once_a_minute(make):
    world = make(history_size=3)
    world.login("alice")
    for i in range(5):
        accepted(say(world, b"alice", f"m{i}", f"m{i}"), b"alice")
    assert core_texts(world) == ["m2", "m3", "m4"]
    assert stored_texts(world) == [f"m{i}" for i in range(5)], "the store keeps them until the next prune"
    world.now = start = 2000.0  # a whole number: start + PRUNE_INTERVAL - start is exactly PRUNE_INTERVAL
    world.run(world.core.tick(start, world.wall_clock()))
    assert stored_texts(world) == ["m2", "m3", "m4"]
    assert world.core.by_name == {}, "alice timed out meanwhile"
    world.login("alice")
    for i in (5, 6):
        accepted(say(world, b"alice", f"m{i}", f"m{i}"), b"alice")
    world.run(world.core.tick(start + PRUNE_INTERVAL / 2, world.wall_clock()))
    assert len(stored_texts(world)) == 5, "not a minute since the last prune"
    world.run(world.core.tick(start + PRUNE_INTERVAL, world.wall_clock()))
    assert stored_texts(world) == ["m4", "m5", "m6"]
    world.restart()
    assert texts(world.login("bob").replay) == ["m4", "m5", "m6"]


def test_tick_prunes_history_older_than_history_days(make, clock):
    world = make(history_days=1.0)
    world.login("alice")
    accepted(say(world, b"alice", "old", "old"), b"alice")
    clock.value += DAY / 2
    accepted(say(world, b"alice", "new", "new"), b"alice")
    world.now = start = 2000.0  # a whole number: start + PRUNE_INTERVAL - start is exactly PRUNE_INTERVAL
    world.run(world.core.tick(start, world.wall_clock()))
    assert stored_texts(world) == ["old", "new"]
    clock.value += DAY * 0.6  # "old" is now 1.1 days old, "new" 0.6
    world.run(world.core.tick(start + PRUNE_INTERVAL / 2, world.wall_clock()))
    assert stored_texts(world) == ["old", "new"], "not a minute since the last prune"
    assert core_texts(world) == ["old", "new"]
    world.run(world.core.tick(start + PRUNE_INTERVAL, world.wall_clock()))
    assert stored_texts(world) == ["new"]
    assert core_texts(world) == ["new"]
    assert texts(world.login("bob").replay) == ["new"]
    # A broker started later loads only what is young enough, even before its first prune.
    clock.value += DAY / 2
    world.restart()
    assert stored_texts(world) == ["new"]
    assert core_texts(world) == []
    assert world.login("carol").replay == []


def test_tick_prunes_mail_older_than_mailbox_days(make, clock):
    world = make(mailbox_days=1.0)
    world.login("alice")
    accepted(say(world, b"alice", "stale", "stale", to="carol"), b"alice")
    clock.value += DAY / 2
    accepted(say(world, b"alice", "fresh", "fresh", to="carol"), b"alice")
    clock.value += DAY * 0.6
    world.run(world.core.tick(world.now, world.wall_clock()))
    assert world.store.mailbox_usage("carol")[0] == 1
    assert texts(world.login("carol").replay) == ["fresh"]


def test_history_size_zero_keeps_nothing(make):
    world = make(history_size=0)
    world.login("alice")
    answer = accepted(say(world, b"alice", "fleeting", "f1"), b"alice")
    assert answer == Accepted("f1", answer.received)
    world.run(world.core.tick(world.now, world.wall_clock()))
    assert stored_texts(world) == []
    assert world.login("bob").replay == []
    # Its id is still remembered: a re-send is a duplicate, not a new message.
    assert say(world, b"alice", "fleeting", "f1") == {b"alice": [Accepted("f1", answer.received, duplicate=True)]}
