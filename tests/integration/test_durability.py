"""Nothing accepted is lost: a real broker killed with SIGKILL during traffic and started again on the same
database, real clients that re-send what was not acknowledged, offline private messages across a restart,
and a database the broker must refuse to open."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter

import pytest

from tests.conftest import pump, wait_for
from zchat.events import Accepted, ChatMessage, Event, Failed

pytestmark = pytest.mark.slow

KILLS = 3
MESSAGES_PER_ROUND = 25


@pytest.mark.slow
def test_kill_9_during_traffic_loses_and_repeats_nothing_acknowledged(make_broker, connect):
    broker = make_broker(history_size=1000, messages_per_second_per_user=1000)
    alice = connect(broker, "alice", connect_timeout=10.0)
    bob = connect(broker, "bob", connect_timeout=10.0)
    sent: list[str] = []  # alice's message ids, in the order she sent them
    answers: dict[str, Event] = {}
    shown_to_bob: list[ChatMessage] = []

    def take(events: dict[str, list[Event]]) -> None:
        for event in events["alice"]:
            if isinstance(event, Accepted | Failed):
                assert event.message_id not in answers, f"answered twice: {event}"
                answers[event.message_id] = event
        shown_to_bob.extend(e for e in events["bob"] if isinstance(e, ChatMessage) and e.sender == "alice")

    for round_ in range(KILLS + 1):
        for i in range(MESSAGES_PER_ROUND):
            sent.append(alice.send(f"round {round_} message {i:02}"))
            take(pump([alice, bob], 0.01))
            if round_ < KILLS and i == MESSAGES_PER_ROUND // 2:
                broker.kill()  # SIGKILL in the middle of the traffic: some messages are on their way
                broker.start(port=broker.port)
    deadline = time.monotonic() + 60
    while len(answers) < len(sent) and time.monotonic() < deadline:
        take(pump([alice, bob], 0.2))
    take(pump([alice, bob], 1.0))  # bob's last deliveries

    assert set(answers) == set(sent), f"never answered: {sorted(set(sent) - set(answers))}"
    assert all(isinstance(answers[mid], Accepted) for mid in sent), [
        a for a in answers.values() if isinstance(a, Failed)
    ]
    texts = [f"round {r} message {i:02}" for r in range(KILLS + 1) for i in range(MESSAGES_PER_ROUND)]
    # Bob saw every message exactly once (live, or from the history after his reconnect), each id once.
    assert sorted(m.text for m in shown_to_bob) == sorted(texts)
    assert Counter(m.message_id for m in shown_to_bob) == Counter(sent)
    # The history holds each acknowledged message exactly once, in alice's order.
    carol = connect(broker, "carol")
    history = [e for e in pump([carol], 2.0)["carol"] if isinstance(e, ChatMessage) and e.history]
    assert [m.text for m in history if m.sender == "alice"] == texts
    assert broker.log().count("listening on") == KILLS + 1


@pytest.mark.slow
def test_a_private_message_for_someone_offline_survives_a_crash(make_broker, connect):
    broker = make_broker()
    alice = connect(broker, "alice")
    message_id = alice.send("see you tomorrow", to="bob")
    accepted = wait_for(alice, lambda e: isinstance(e, Accepted | Failed))
    assert accepted == Accepted(message_id, accepted.received, queued=True)
    broker.kill()
    broker.start(port=broker.port)
    bob = connect(broker, "bob")
    message = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert (message.sender, message.text, message.private, message.away) == ("alice", "see you tomorrow", True, True)
    assert message.message_id == message_id
    bob.close()  # read and acknowledged: kept no longer
    again = connect(broker, "bob")
    assert [e for e in pump([again], 1.5)["bob"] if isinstance(e, ChatMessage)] == []


@pytest.mark.slow
def test_a_refused_statement_makes_the_client_log_in_again_and_resend(make_broker, connect):
    broker = make_broker()
    alice = connect(broker, "alice")
    bob = connect(broker, "bob")
    alice.session._seq_out += 1  # the next statement skips a number: the broker refuses it and ends the session
    message_id = alice.send("are you there?")
    answer = wait_for(alice, lambda e: isinstance(e, Accepted | Failed), timeout=15)
    assert answer == Accepted(message_id, answer.received)
    got = [e for e in pump([bob], 1.0)["bob"] if isinstance(e, ChatMessage)]
    assert [(m.text, m.message_id) for m in got] == [("are you there?", message_id)]
    assert "refused a SEND from alice" in broker.log()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["random bytes", "newer schema"])
def test_a_damaged_or_newer_database_stops_the_broker_with_one_line(make_broker, damage):
    broker = make_broker()
    broker.terminate()
    database = broker.workdir / "data" / "zchat.db"
    if damage == "random bytes":
        database.write_bytes(b"\x8f" * 8192)
    else:
        with sqlite3.connect(database) as db:
            db.execute("PRAGMA user_version = 99")
    before = database.read_bytes()
    result = broker.run_to_the_end()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("broker: error: ")
    assert str(database) in lines[0]
    assert ("damaged" if damage == "random bytes" else "newer zchat") in lines[0]
    assert "Traceback" not in result.stderr
    assert database.read_bytes() == before  # never replaced or emptied
