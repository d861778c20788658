"""chat_client.py --json: every line on stdout is one JSON object, the client's own answers included."""

from __future__ import annotations

import json

from tests.conftest import wait_for
from zchat.events import ChatMessage


def test_every_line_on_stdout_is_one_json_object(broker, client, connect):
    bob = connect(broker, "bob")
    alice = client(broker, "alice", "--json")
    alice.expect_line(r'"type": "welcome"')
    alice.send(
        "/help",
        "/help msg",
        "/nonsense",
        "/msg",
        "/whois bob",
        "/whois nobody_here",
        "/trust bob",
        "/msg nobody_here hello?",
        "/msg bob psst",
        "/me waves",
        "for the room",
        "/exit",
    )
    assert alice.wait() == 0, alice.transcript()
    assert wait_for(bob, lambda e: isinstance(e, ChatMessage) and e.text == "for the room")
    records = []
    for line in alice.out.lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON object: {line!r}\n{alice.transcript()}") from None
    assert all(isinstance(record, dict) and "type" in record for record in records), records
    by_type: dict[str, list[dict]] = {}
    for record in records:
        by_type.setdefault(record["type"], []).append(record)

    help_all, help_msg = by_type["help"]
    assert "/whois NAME" in help_all["text"]
    assert "/trust NAME" in help_all["text"]
    assert help_msg["text"].split()[:3] == ["/msg", "NAME", "TEXT"]
    notices = [record["message"] for record in by_type["notice"] if record.get("local")]
    assert any("unknown command /nonsense" in notice for notice in notices), notices
    assert any(notice == "usage: /msg NAME TEXT" for notice in notices), notices
    assert any("nobody_here is not online" in notice for notice in notices), notices
    assert any("bob's key" in notice and "pinned already" in notice for notice in notices), notices
    (whois,) = by_type["whois"]
    assert (whois["name"], whois["bot"], whois["pin"]) == ("bob", False, "pinned")
    assert whois["fingerprint"] == whois["pinned"]

    # What was sent, under which id, and the broker's answer to each.
    sent = {record["text"]: record for record in by_type["sent"]}
    assert set(sent) == {"hello?", "psst", "waves", "for the room"}
    assert (sent["psst"]["to"], sent["waves"]["action"], sent["for the room"]["to"]) == ("bob", True, None)
    answers = {record["id"]: record["type"] for record in by_type["acked"] + by_type["failed"]}
    assert answers == {
        sent["hello?"]["id"]: "failed",
        sent["psst"]["id"]: "acked",
        sent["waves"]["id"]: "acked",
        sent["for the room"]["id"]: "acked",
    }
    assert "Traceback" not in alice.err.text()


def test_what_the_broker_said_before_a_typed_line_is_shown_before_its_answer(broker, client, connect):
    bob = connect(broker, "bob")
    for n in range(5):
        bob.send(f"earlier {n}")
    assert bob.flush(10)
    alice = client(broker, "alice", "--json")
    alice.send("/help msg", "/exit")  # typed at once: the history arrives with the welcome, before they are read
    assert alice.wait() == 0, alice.transcript()
    kinds = [json.loads(line)["type"] for line in alice.out.lines]
    assert kinds[:7] == ["welcome", "chat", "chat", "chat", "chat", "chat", "help"], alice.transcript()
