"""The client in tests/independent_client.py, written only from docs/PROTOCOL.md, against the real broker.

The independent client imports nothing from the project; the other side of each conversation is the
project's own ChatClient, so both directions are checked: reference → independent and independent → reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat.events import ChatMessage, Left
from tests.conftest import TEST_CONFIG, WAIT, BrokerProcess, wait_for
from tests.independent_client import (
    IndependentClient,
    LoginRefused,
    b64e,
    dumps,
    load_private_key,
    sign,
)

Event = dict[str, Any]


@pytest.fixture
def independent() -> Iterator[Callable[..., IndependentClient]]:
    """Log a user in through the independent client; every one is closed (linger 0) at teardown."""
    clients: list[IndependentClient] = []

    def factory(broker: BrokerProcess, name: str, **kwargs: Any) -> IndependentClient:
        client = IndependentClient(
            "127.0.0.1", broker.port, name, broker.keys.client_private(name), broker.keys.broker_public, **kwargs
        )
        clients.append(client)
        client.login(timeout=5.0)
        return client

    yield factory
    for client in clients:
        client.close(say_bye=False)


def wait_event(client: IndependentClient, predicate: Callable[[Event], bool], timeout: float = WAIT) -> Event:
    """The first event matching `predicate` within `timeout`; fails listing what arrived instead."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = client.receive(timeout=remaining)
        if event is None:
            continue
        for one in event["changes"] if event["type"] == "presence" else [event]:  # joins and leaves sent together
            if predicate(one):
                return one
            seen.append(one)
    raise AssertionError(f"{client.name}: no matching event within {timeout}s; got {seen!r}")


def chat_from(sender: str, text: str | None = None) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "chat" and e["from"] == sender and (text is None or e["text"] == text)


def test_independent_client_logs_in(broker, independent):
    carol = independent(broker, "carol")

    assert carol.logged_in
    assert len(carol.session or "") == 64
    assert carol.seq_in == 1  # the welcome, and no history: HELLO said "history": false
    assert carol.heartbeat_interval == pytest.approx(0.2)
    assert carol.heartbeat_timeout == pytest.approx(TEST_CONFIG["heartbeat_timeout"])
    assert "carol" in carol.roster


def test_unregistered_name_is_refused(broker, independent):
    with pytest.raises(LoginRefused):  # mallory has a key but is not registered: the challenge does not open
        independent(broker, "mallory")


def test_message_from_a_normal_client_reaches_the_independent_client(broker, connect, independent):
    alice = connect(broker, "alice")
    carol = independent(broker, "carol")
    assert "alice" in carol.roster  # from the welcome

    text = 'Hello, Carol — ça va? "quoted" 👋'
    alice.send(text)
    event = wait_event(carol, chat_from("alice"))

    assert event["text"] == text  # the author's signature was verified with alice's roster key
    assert not event["private"]
    assert not event["action"]
    assert not event["history"]


def test_message_from_a_client_that_joins_later_is_verified(broker, connect, independent):
    carol = independent(broker, "carol")
    alice = connect(broker, "alice")
    joined = wait_event(carol, lambda e: e["type"] == "join")
    assert joined["name"] == "alice"

    alice.send("after the join")
    assert wait_event(carol, chat_from("alice"))["text"] == "after the join"


def test_a_forged_author_signature_is_rejected(broker, connect, independent):
    connect(broker, "alice")
    carol = independent(broker, "carol")
    # A statement claiming to be alice's but signed with carol's key must fail 7.4 step 4.
    statement = dumps(
        {"type": "chat", "from": "alice", "session": "00" * 32, "seq": 1, "ts": time.time(), "text": "forged"}
    )
    sig = sign(load_private_key(broker.keys.client_private("carol")), b"zchat/2|statement|" + statement.encode())
    with pytest.raises(ValueError, match="bad signature"):
        carol._chat({"type": "chat", "signed": statement, "sig": b64e(sig)}, is_history=False)


def test_message_from_the_independent_client_reaches_a_normal_client(broker, connect, independent):
    bob = connect(broker, "bob")
    carol = independent(broker, "carol")

    text = 'Grüße aus Köln — 日本語, émoji 👋🏽 and "quotes" and a\ttab'
    carol.send(text)
    event = wait_for(bob, lambda e: isinstance(e, ChatMessage) and e.sender == "carol")
    assert event.text == text

    carol.send("just for bob", to="bob")
    event = wait_for(bob, lambda e: isinstance(e, ChatMessage) and e.sender == "carol")
    assert event.text == "just for bob"


def test_independent_client_survives_idle_heartbeat_intervals(broker, connect, independent):
    carol = independent(broker, "carol")
    idle = 2 * carol.heartbeat_timeout  # without PINGs the broker would have timed carol out by now

    deadline = time.monotonic() + idle
    events: list[Event] = []
    while (remaining := deadline - time.monotonic()) > 0:
        event = carol.receive(timeout=remaining)
        if event is not None:
            events.append(event)

    assert events == []  # no connection_lost, evicted or closed
    assert carol.logged_in
    assert carol.pings_sent >= idle / carol.heartbeat_interval / 2
    assert carol.pings_received > 0  # the broker heartbeats too

    alice = connect(broker, "alice")  # the broker still counts carol as online: she is told of the join
    assert wait_event(carol, lambda e: e["type"] == "join")["name"] == "alice"
    alice.send("still there?")
    assert wait_event(carol, chat_from("alice"))["text"] == "still there?"
    carol.send("yes")
    assert wait_for(alice, lambda e: isinstance(e, ChatMessage) and e.sender == "carol").text == "yes"


def test_history_is_verified_with_the_author_key(broker, connect, independent):
    alice = connect(broker, "alice")
    alice.send("before carol came")
    bob = connect(broker, "bob")  # bob's own history replay shows that the broker has kept the message
    wait_for(bob, lambda e: isinstance(e, ChatMessage) and e.text == "before carol came")
    alice.close(say_bye=True)  # the author need not be online for a history event (7.5)
    wait_for(bob, lambda e: isinstance(e, Left))

    carol = independent(broker, "carol", history=True)
    assert "alice" not in carol.roster  # so the signature can only have been checked with the `author` key
    event = wait_event(carol, chat_from("alice"))
    assert event["text"] == "before carol came"
    assert event["history"]
