"""Every limit belongs to the user, across its sessions and logins: the message rate, the SENDs waiting to be
opened, the mail it keeps waiting and the mail waiting for it, and the disk floor. No sockets."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.world import WALL0, WallClock, World
from zchat.broker import outbound
from zchat.broker.sqlite_store import SQLiteStore
from zchat.broker.work import Cancel, OpenJob
from zchat.events import Accepted, ChatMessage, Event, Failed


@pytest.fixture
def make(keyring: Any, tmp_path: Path) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make_world(**overrides: Any) -> World:
        world = World(
            keyring.keys, keyring.layout, overrides, db_path=tmp_path / "broker.db", wall_clock=WallClock(WALL0)
        )
        made.append(world)
        return world

    yield make_world
    for world in made:
        world.store.close()


def answer(seen: dict[bytes, list[Event]], identity: bytes) -> Event:
    (event,) = [e for e in seen[identity] if isinstance(e, (Accepted, Failed))]
    return event


def say(world: World, identity: bytes, text: str, to: str | None = None) -> Event:
    world.now += 0.001
    return answer(world.say(identity, text, to=to), identity)


# ---------------------------------------------------------------- the message rate


def test_the_message_rate_is_the_users_and_a_new_login_does_not_refill_it(make):
    world = make(messages_per_second_per_user=1.0)  # bursts of 2
    world.login("bob")
    world.login("alice", b"alice-1")
    assert [type(say(world, b"alice-1", f"m{i}")) for i in range(3)] == [Accepted, Accepted, Failed]
    world.login("alice", b"alice-2")  # replaces the first session: the rate is still used up
    failed = say(world, b"alice-2", "again")
    assert isinstance(failed, Failed)
    assert "more than 1 messages per second" in failed.reason
    world.now += 1.0
    assert isinstance(say(world, b"alice-2", "a second later"), Accepted)


def test_an_idle_users_budget_is_forgotten_once_it_would_be_full_again(make):
    world = make(messages_per_second_per_user=1.0)
    world.login("alice")
    say(world, b"alice", "one")
    world.request(b"alice", "bye")
    world.core.tick(world.now)
    assert "alice" in world.core.budgets, "not yet refilled"
    world.now += 10
    world.core.tick(world.now)
    assert "alice" not in world.core.budgets


# ---------------------------------------------------------------- SENDs waiting to be opened


def test_a_session_that_ends_drops_its_unopened_sends_and_their_share_of_the_budget(make):
    world = make(queued_sends_per_user=10)
    world.login("bob")
    session = world.login("alice", b"alice-1")
    jobs = [
        job
        for i in range(6)
        for job in world.core.receive(b"alice-1", session.client.say(f"m{i}"), world.now)
        if isinstance(job, OpenJob)
    ]
    assert len(jobs) == 6
    assert world.core.budgets["alice"].queued_sends == 6
    world.login("alice", b"alice-2")  # alice elsewhere: the first session ends
    # The login's work asked the broker to drop the old session's envelopes (World runs jobs at once, so it
    # sees no Cancel; the core hands it out, as the test below checks).
    assert world.core.budgets["alice"].queued_sends == 0
    assert world.core.budgets["alice"].queued_send_bytes == 0
    # An envelope of the old session that was already being opened comes back: it is ignored.
    assert world.core.opened(world.runner.perform(jobs[0]), world.now) == []
    assert world.core.sessions[b"alice-2"].seq_in == 0


def test_ending_a_session_hands_out_a_cancel_for_its_envelopes(make):
    world = make()
    world.login("bob")
    session = world.login("alice")
    for i in range(3):
        world.core.receive(b"alice", session.client.say(f"m{i}"), world.now)
    session_id = world.core.sessions[b"alice"].session_id
    work = world.core.too_slow(b"alice", world.now)
    assert Cancel("alice", session_id) in work


def test_a_user_over_its_queue_of_unopened_sends_is_disconnected_as_too_fast(make):
    world = make(queued_sends_per_user=4)
    world.login("bob")
    first = world.login("alice", b"alice-1")
    for i in range(4):
        assert world.core.receive(b"alice-1", first.client.say(f"m{i}"), world.now)
    out = world.core.receive(b"alice-1", first.client.say("one too many"), world.now)
    assert not any(isinstance(item, OpenJob) for item in out)
    assert b"alice-1" not in world.core.sessions, "disconnected as too fast"


def test_an_envelope_for_an_earlier_session_on_the_same_identity_is_ignored(make):
    world = make()
    world.login("bob")
    first = world.login("alice")
    (job,) = world.core.receive(b"alice", first.client.say("from the first session"), world.now)
    assert isinstance(job, OpenJob)
    world.deliver(world.run(world.core.too_slow(b"alice", world.now)))
    world.core.evicted.clear()
    world.login("alice")  # the same connection logs in again
    assert world.core.opened(world.runner.perform(job), world.now) == []
    assert world.core.sessions[b"alice"].seq_in == 0


# ---------------------------------------------------------------- mail


def test_the_mailbox_limit_holds_while_its_owner_is_online_and_does_not_read(make):
    world = make(mailbox_messages=3)
    world.login("alice")
    world.login("bob")  # online, never acknowledges
    assert [type(say(world, b"alice", f"m{i}", to="bob")) for i in range(3)] == [Accepted] * 3
    failed = say(world, b"alice", "one too many", to="bob")
    assert isinstance(failed, Failed)
    assert "bob's mailbox is full (3 messages waiting)" in failed.reason
    assert world.store.mailbox_usage("bob")[0] == 3
    world.ack(b"bob")  # bob reads: there is room again
    assert isinstance(say(world, b"alice", "now it fits", to="bob"), Accepted)


def test_mail_to_oneself_counts_against_ones_own_mailbox(make):
    world = make(mailbox_messages=2, sent_mail_messages=1)
    world.login("alice")
    assert [type(say(world, b"alice", f"note {i}", to="alice")) for i in range(3)] == [Accepted, Accepted, Failed]
    assert world.store.mailbox_usage("alice")[0] == 2


def test_a_sender_has_a_quota_of_mail_waiting_for_others(make):
    world = make(sent_mail_messages=2, mailbox_messages=100)
    world.login("alice")
    assert isinstance(say(world, b"alice", "to bob", to="bob"), Accepted)
    assert isinstance(say(world, b"alice", "to carol", to="carol"), Accepted)
    failed = say(world, b"alice", "to bob again", to="bob")
    assert isinstance(failed, Failed)
    assert "you have 2 private messages waiting to be read" in failed.reason
    assert world.store.sent_usage("alice") == (2, world.store.sent_usage("alice")[1])
    # bob reads his: alice may send again.
    world.login("bob")
    world.ack(b"bob")
    assert world.store.sent_usage("alice")[0] == 1
    assert isinstance(say(world, b"alice", "to bob once more", to="bob"), Accepted)


def test_one_recipient_who_never_reads_holds_only_a_tenth_of_a_senders_quota(make):
    """Else a user could make a bot, which answers privately, spend its whole quota on her and fall silent."""
    world = make(sent_mail_messages=20, mailbox_messages=100)
    world.login("alice")
    assert [type(say(world, b"alice", f"to bob {i}", to="bob")) for i in range(3)] == [Accepted, Accepted, Failed]
    failed = say(world, b"alice", "to bob, once more", to="bob")
    assert isinstance(failed, Failed)
    assert "you have 2 private messages waiting for bob to read" in failed.reason
    assert isinstance(say(world, b"alice", "to carol", to="carol"), Accepted), "others still get her mail"


def test_a_login_reads_its_kept_mail_a_page_at_a_time(make, monkeypatch):
    world = make(mailbox_messages=1000, sent_mail_messages=10_000, messages_per_second_per_user=1e6)
    world.login("alice")
    count = 3 * outbound.MAIL_PAGE + 5
    for i in range(count):
        assert isinstance(say(world, b"alice", f"mail {i}", to="carol"), Accepted)
    pages: list[int] = []
    read = world.store.mailbox

    def counting(*args: Any, **kwargs: Any) -> Any:
        page = read(*args, **kwargs)
        pages.append(len(page))
        return page

    monkeypatch.setattr(world.store, "mailbox", counting)
    carol = world.login("carol")
    assert pages
    assert max(pages) <= outbound.MAIL_PAGE
    got = [m.text for m in carol.replay if isinstance(m, ChatMessage)]
    while len(got) < count:
        released = world.ack(b"carol").get(b"carol", [])
        assert released, "each acknowledgement lets more of the mailbox out"
        got += [m.text for m in released if isinstance(m, ChatMessage)]
    assert got == [f"mail {i}" for i in range(count)]
    assert max(pages) <= outbound.MAIL_PAGE
    assert len(pages) >= count // outbound.MAIL_PAGE


def test_mail_kept_after_the_login_comes_live_once_and_not_again_from_the_pages(make):
    world = make(mailbox_messages=1000, sent_mail_messages=1000, messages_per_second_per_user=1e6)
    world.login("alice")
    for i in range(outbound.MAIL_PAGE + 3):
        say(world, b"alice", f"before {i}", to="carol")
    carol = world.login("carol")
    got = [m.text for m in carol.replay if isinstance(m, ChatMessage)]
    got += [m.text for m in world.say(b"alice", "after", to="carol").get(b"carol", []) if isinstance(m, ChatMessage)]
    for _ in range(10):
        got += [m.text for m in world.ack(b"carol").get(b"carol", []) if isinstance(m, ChatMessage)]
        if "after" in got:
            break
    assert got == [*(f"before {i}" for i in range(outbound.MAIL_PAGE + 3)), "after"]


# ---------------------------------------------------------------- the disk


def test_past_the_store_limit_new_messages_fail_and_storing_resumes_when_there_is_room(make):
    world = make(max_store_bytes=10**9)
    world.login("alice")
    world.login("bob")
    assert isinstance(say(world, b"alice", "fits"), Accepted)
    in_use, _ = world.store.space()
    world.core.config = world.core.archive.config = world.config = type(world.config)(
        **{**world.config.__dict__, "max_store_bytes": in_use}
    )
    failed = say(world, b"alice", "no room")
    assert isinstance(failed, Failed)
    assert "the broker's store is full" in failed.reason
    assert isinstance(say(world, b"alice", "private: no room either", to="bob"), Failed)
    # Live chat goes on: who is online still answers; and room comes back by itself.
    assert world.request(b"alice", "who")
    world.core.config = world.core.archive.config = world.config = type(world.config)(
        **{**world.config.__dict__, "max_store_bytes": 10**9}
    )
    assert isinstance(say(world, b"alice", "stored again"), Accepted)


def test_below_the_free_disk_floor_new_messages_fail(make, monkeypatch):
    world = make()
    world.login("alice")
    in_use, room = world.store.space()
    monkeypatch.setattr(world.store, "space", lambda: (in_use, world.config.min_free_disk_bytes - 1))
    failed = say(world, b"alice", "the disk is full")
    assert isinstance(failed, Failed)
    assert "the broker's disk is full" in failed.reason
    monkeypatch.setattr(world.store, "space", lambda: (in_use, room))
    assert isinstance(say(world, b"alice", "room again"), Accepted)


def test_a_schema_1_database_is_upgraded_and_its_mail_counts_for_no_sender(keyring, tmp_path):
    path = tmp_path / "old.db"
    store = SQLiteStore.open(path, keyring.keys["broker"], now=WALL0)
    store.add_mail("bob", "alice", "m1", WALL0, b"sealed")
    store.commit()
    store.close()
    db = sqlite3.connect(path)  # as schema 1 had it: no sender column
    db.execute("DROP INDEX mail_sender")
    db.execute("ALTER TABLE mail DROP COLUMN sender")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SQLiteStore.open(path, keyring.keys["broker"], now=WALL0)
    try:
        assert [m.sealed for m in store.mailbox("bob")] == [b"sealed"]
        assert store.sent_usage("alice") == (0, 0)
        store.add_mail("bob", "alice", "m2", WALL0, b"sealed 2")
        store.commit()
        assert store.sent_usage("alice") == (1, len(b"sealed 2"))
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SQLiteStore.SCHEMA_VERSION
    db.close()


def test_the_stored_mail_of_a_statement_names_its_sender(make):
    world = make()
    world.login("alice")
    say(world, b"alice", "hi", to="bob")
    assert world.store.sent_usage("alice")[0] == 1
    assert world.store.sent_usage("bob") == (0, 0)
