"""zchat/broker/work.py: the broker's crypto jobs, their frames to and from workers, and how the core hands them out."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.unit.world import REFUSED_FRAMES, World
from zchat import crypto
from zchat import protocol as p
from zchat.broker.work import (
    ChallengeJob,
    DeliveryJob,
    JobRunner,
    Opened,
    OpenJob,
    Outgoing,
    decode_jobs,
    decode_results,
    encode_jobs,
    encode_results,
)
from zchat.events import Accepted, ChatMessage, Left

BUSY_FRAMES = [p.MARKER, p.BUSY, b""]
EVICTED_FRAMES = [p.MARKER, p.EVICTED, b""]


def broadcast_event() -> dict:
    return {"type": "chat", "text": "héllo 👋", "n": 3, "x": 1.5, "ok": True, "none": None, "list": [1, {"a": "b"}]}


def delivery(identity: bytes, seq: int, event: dict) -> DeliveryJob:
    return DeliveryJob(identity, b"der-" + identity, b"k" * 32, "s" * 64, seq, event)


def shipped(jobs: list) -> list:
    """The jobs as a worker gets them: each event as its JSON text."""
    return [
        dataclasses.replace(job, event=p.dump_doc(job.event).decode()) if isinstance(job, DeliveryJob) else job
        for job in jobs
    ]


def no_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every private-key and per-recipient crypto call fail the test."""

    def boom(*args, **kwargs):
        raise AssertionError("crypto done where only a job was expected")

    for name in ("open_envelope", "seal", "sign", "verify", "mac"):
        monkeypatch.setattr(crypto, name, boom)


def receive_send(world: World, identity: bytes, frames: list[bytes]) -> OpenJob:
    """The core's answer to one SEND from `identity`, not run: exactly one OpenJob."""
    (job,) = world.core.receive(identity, frames, world.now)
    session = world.core.sessions[identity]
    assert job == OpenJob(identity, p.SEND, frames[2], session.name, session.session_id)
    return job


def send_job(world: World, identity: bytes, text: str) -> OpenJob:
    return receive_send(world, identity, world.clients[identity].say(text))


def open_it(world: World, job: OpenJob) -> list:
    """Perform one OpenJob and hand its result to the core, as the broker does: the work that follows."""
    result = world.runner.perform(job)
    assert isinstance(result, Opened)
    return world.core.opened(result, world.now)


# ---------------------------------------------------------------- frames between the broker and its workers


def test_jobs_round_trip_through_frames():
    shared = broadcast_event()
    other = {"type": "leave", "name": "bob", "reason": "left"}
    jobs = [
        OpenJob(b"alice", p.SEND, b"\x00\x01sealed"),
        delivery(b"bob", 7, shared),
        ChallengeJob(b"D", b"der", "zoë", b"c" * 32, b"s" * 32, b"\x00" * 32),  # identity equal to a tag
        delivery(b"carol", 1, other),
        delivery(b"O", 2, shared),  # the first event again, after another one
        OpenJob(b"", p.HELLO, b""),
    ]
    frames = encode_jobs(jobs)
    assert all(isinstance(frame, bytes) for frame in frames)
    assert frames[0] == b"2"
    decoded = decode_jobs(frames)
    assert decoded == shipped(jobs)
    assert [type(job) for job in decoded] == [type(job) for job in jobs]
    events = [json.loads(job.event) for job in decoded if isinstance(job, DeliveryJob)]
    assert events == [shared, other, shared]


def test_empty_batch_round_trips():
    assert encode_jobs([]) == [b"0"]
    assert decode_jobs(encode_jobs([])) == []


def test_a_broadcast_event_is_encoded_once():
    event = broadcast_event()
    jobs = [delivery(identity, seq, event) for seq, identity in enumerate([b"a", b"b", b"c", b"d"], start=1)]
    frames = encode_jobs(jobs)
    assert frames[0] == b"1"
    assert frames.count(p.dump_doc(event)) == 1
    assert decode_jobs(frames) == shipped(jobs)


def test_equal_but_distinct_events_are_encoded_separately():
    first, second = broadcast_event(), broadcast_event()
    assert first == second
    assert first is not second
    jobs = [delivery(b"a", 1, first), delivery(b"b", 1, second)]
    frames = encode_jobs(jobs)
    assert frames[0] == b"2"
    assert decode_jobs(frames) == shipped(jobs)


def test_unknown_job_tag_is_an_error():
    with pytest.raises(ValueError, match="unknown job tag"):
        decode_jobs([b"0", b"X", b"a", b"b", b"c"])


def test_results_round_trip_through_frames():
    results = [
        Outgoing(b"alice", [p.MARKER, p.EVENT, b"\x00sealed"]),
        Opened(b"bob", p.SEND, None),
        Opened(b"carol", p.HELLO, b""),
        Outgoing(b"R", [p.MARKER, p.PING, b""]),  # identity equal to a tag, empty last frame
        Opened(b"S", p.LOGIN, b"+plus"),
        Opened(b"dave", p.SEND, b"\x00"),
        Outgoing(b"eve", []),
    ]
    frames = encode_results(results)
    assert all(isinstance(frame, bytes) for frame in frames)
    decoded = decode_results(frames)
    assert decoded == results
    assert decoded[1].plaintext is None
    assert decoded[2].plaintext == b""
    assert decoded[2].plaintext is not None
    assert decode_results(encode_results([])) == []


def test_unknown_result_tag_is_an_error():
    with pytest.raises(ValueError, match="unknown result tag"):
        decode_results([b"X", b"a", b"b", b"c"])


def test_jobs_shipped_to_a_worker_deliver_the_same_messages(world, keyring):
    """The worker path: jobs and results go through their frames, performed by a runner of its own."""
    for name in ("alice", "bob", "carol"):
        world.login(name)
    worker = JobRunner(keyring.keys["broker"])
    job = send_job(world, b"alice", "via a worker")
    (opened,) = decode_results(encode_results([worker.perform(job) for job in decode_jobs(encode_jobs([job]))]))
    work = world.core.opened(opened, world.now)
    assert encode_jobs(work)[0] == b"1"
    out = decode_results(encode_results([worker.perform(job) for job in decode_jobs(encode_jobs(work))]))
    seen = world.deliver(out)
    assert sorted(seen) == [b"bob", b"carol"]
    for events in seen.values():
        (message,) = events
        assert isinstance(message, ChatMessage)
        assert (message.sender, message.text) == ("alice", "via a worker")


# ---------------------------------------------------------------- the core hands out jobs


def test_a_send_is_one_open_job_and_opening_it_gives_one_delivery_per_member(world, monkeypatch):
    for name in ("alice", "bob", "carol"):
        world.login(name)
    before = {identity: session.outbound.seq_out for identity, session in world.core.sessions.items()}
    frames = [world.clients[b"alice"].say(text) for text in ("one", "two")]  # the client signs and seals
    with monkeypatch.context() as patched:
        no_crypto(patched)
        first, second = (receive_send(world, b"alice", f) for f in frames)
    assert world.core.sessions[b"alice"].opening == 2

    deliveries = []
    for job in (first, second):
        work = open_it(world, job)
        assert all(isinstance(item, DeliveryJob) for item in work)
        assert sorted(item.identity for item in work) == [b"bob", b"carol"]
        assert len({id(item.event) for item in work}) == 1  # one broadcast: one shared event
        deliveries += work
    assert world.core.sessions[b"alice"].opening == 0

    for identity in (b"bob", b"carol"):
        session = world.core.sessions[identity]
        mine = [job for job in deliveries if job.identity == identity]
        assert [job.seq for job in mine] == [before[identity] + 1, before[identity] + 2]
        assert {(job.session_id, job.delivery_key) for job in mine} == {(session.session_id, session.delivery_key)}
    assert world.core.sessions[b"alice"].outbound.seq_out == before[b"alice"]

    seen = world.deliver(world.run(deliveries))
    assert [type(e) for e in seen.pop(b"alice")] == [Accepted, Accepted]  # at the commit that ends the turn
    assert {identity: [e.text for e in events] for identity, events in seen.items()} == {
        b"bob": ["one", "two"],
        b"carol": ["one", "two"],
    }


def test_a_dropped_session_ends_only_after_its_sends_came_back(world):
    world.login("alice")
    world.login("bob")
    first = send_job(world, b"bob", "last words")
    second = send_job(world, b"bob", "really last")
    assert world.core.unreachable(b"bob", world.now) == []
    assert world.core.drained(world.now) == []
    assert b"bob" in world.core.sessions

    seen = world.deliver(world.run(open_it(world, first)))
    assert [(e.sender, e.text) for e in seen[b"alice"]] == [("bob", "last words")]
    assert world.core.drained(world.now) == []  # one envelope is still out
    assert b"bob" in world.core.sessions

    seen = world.deliver(world.run(open_it(world, second)))
    assert [(e.sender, e.text) for e in seen[b"alice"]] == [("bob", "really last")]
    seen = world.deliver(world.run(world.core.drained(world.now)))
    assert seen == {b"alice": [Left("bob", "connection lost")]}
    assert b"bob" not in world.core.sessions
    assert "bob" not in world.core.by_name
    assert world.core.gone == set()
    assert world.core.drained(world.now) == []


def test_a_session_with_too_many_sends_being_opened_is_disconnected(keyring):
    world = World(keyring.keys, keyring.layout, {"queued_sends_per_user": 10, "history_size": 0})
    world.login("alice")
    world.login("bob")
    jobs = [send_job(world, b"bob", f"m{i}") for i in range(10)]
    assert world.core.sessions[b"bob"].opening == 10

    out = world.core.receive(b"bob", world.clients[b"bob"].say("one too many"), world.now)
    assert not any(isinstance(item, OpenJob) for item in out)
    seen = world.deliver(world.run(out))
    assert seen == {b"alice": [Left("bob", "too fast")]}
    assert b"bob" not in world.core.sessions
    assert "bob" not in world.core.by_name
    assert b"bob" in world.core.evicted
    assert world.send(b"bob", world.clients[b"bob"].ping()) == [Outgoing(b"bob", EVICTED_FRAMES)]
    # The envelopes still out come back to a session that is gone.
    assert [open_it(world, job) for job in jobs] == [[]] * 10


def test_a_send_fits_again_once_an_envelope_came_back(keyring):
    # Control for the test above: ten envelopes out is the limit; one back makes room for the next SEND.
    world = World(keyring.keys, keyring.layout, {"queued_sends_per_user": 10, "history_size": 0})
    world.login("alice")
    world.login("bob")
    jobs = [send_job(world, b"bob", f"m{i}") for i in range(10)]
    seen = world.deliver(world.run([item for job in jobs[:1] for item in open_it(world, job)]))
    assert [e.text for e in seen[b"alice"]] == ["m0"]
    send_job(world, b"bob", "fits again")
    assert b"bob" in world.core.sessions


def test_hellos_being_opened_count_towards_max_pending_logins(keyring):
    world = World(keyring.keys, keyring.layout, {"max_pending_logins": 2})

    def hello(name: str) -> list:
        identity = name.encode()
        return world.core.receive(identity, world.client(name).hello(), world.now, source=identity.hex())

    (alice,) = hello("alice")
    assert isinstance(alice, OpenJob)
    assert alice.command == p.HELLO
    (bob,) = hello("bob")  # one HELLO in flight: still room
    assert isinstance(bob, OpenJob)
    assert bob.command == p.HELLO
    assert world.core.logins.pending == {}

    out = hello("carol")
    assert out == [Outgoing(b"carol", BUSY_FRAMES)]
    assert out[0].frames[1] == p.BUSY
    assert world.core.logins.hellos_opening == 2

    # Once opened, the two logins are pending: still two in progress.
    (challenge,) = open_it(world, alice)
    assert isinstance(challenge, ChallengeJob)
    assert hello("carol") == [Outgoing(b"carol", BUSY_FRAMES)]


def test_opened_send_of_a_session_that_already_ended_is_ignored(world):
    world.login("alice")
    world.login("bob")
    job = send_job(world, b"bob", "too late")
    seen = world.deliver(world.run(world.core.too_slow(b"bob", world.now)))
    assert seen == {b"alice": [Left("bob", "too slow to keep up")]}
    assert open_it(world, job) == []
    assert set(world.core.sessions) == {b"alice"}


def test_opened_send_from_an_identity_that_never_logged_in_is_ignored(world):
    world.login("alice")
    assert world.core.opened(Opened(b"stranger", p.SEND, b"{}"), world.now) == []
    assert set(world.core.sessions) == {b"alice"}


def test_a_hello_that_did_not_open_is_refused_like_any_other(world):
    session = world.client("alice")
    (job,) = world.core.receive(b"alice", session.hello(), world.now, source="x")
    assert job.command == p.HELLO
    assert world.core.opened(Opened(b"alice", p.HELLO, None), world.now) == [Outgoing(b"alice", REFUSED_FRAMES)]
    assert world.core.logins.hellos_opening == 0
    assert world.core.logins.pending == {}
    assert world.core.sessions == {}


def login_frames(world: World, name: str) -> list[bytes]:
    """A LOGIN for `name`, after a HELLO the broker answered: the frames, not yet sent."""
    session = world.client(name)
    (challenge,) = world.send(name.encode(), session.hello())
    _, login = session.receive(challenge.frames)
    assert login is not None
    return login


def test_a_login_that_did_not_open_is_refused_like_any_other(world):
    login = login_frames(world, "alice")
    (job,) = world.core.receive(b"alice", login, world.now)
    assert job == OpenJob(b"alice", p.LOGIN, login[2])
    assert world.core.opened(Opened(b"alice", p.LOGIN, None), world.now) == [Outgoing(b"alice", REFUSED_FRAMES)]
    assert world.core.logins.pending == {}
    assert world.core.sessions == {}


def test_one_hello_buys_one_login_envelope_opening(world):
    """A stream of LOGINs after one HELLO: only the first is opened (RSA); the others get REFUSED at once."""
    login = login_frames(world, "alice")
    first = world.core.receive(b"alice", login, world.now, source="x")
    assert [type(job) for job in first] == [OpenJob]
    for _ in range(5):
        assert world.core.receive(b"alice", login, world.now, source="x") == [Outgoing(b"alice", REFUSED_FRAMES)]
    out = world.run(first)  # the first one still completes the login
    assert b"alice" in world.core.sessions
    assert out
