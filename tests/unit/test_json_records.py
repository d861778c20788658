"""zchat.events.to_dict: the records `--json` prints, key for key and in order (docs/PROTOCOL.md, README)."""

from __future__ import annotations

import json
import math

import pytest

from zchat import events as e

ALICE = e.UserInfo("alice", "ab:cd", False, b"\x01")
BOT = e.UserInfo("bot_1", "ef:01", True, b"\x03")
USERS = (
    '[{"name": "alice", "fingerprint": "ab:cd", "bot": false}, {"name": "bot_1", "fingerprint": "ef:01", "bot": true}]'
)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            e.ChatMessage("alice", "hi", 5.0),
            '{"type": "chat", "from": "alice", "text": "hi", "ts": 5.0, "private": false, "action": false, '
            '"history": false, "away": false, "bot": false, "id": ""}',
        ),
        (
            e.ChatMessage("alice", "hi", 5.0, True, True, True, 7.5, "mid", True, True),
            '{"type": "chat", "from": "alice", "text": "hi", "ts": 7.5, "private": true, "action": true, '
            '"history": true, "away": true, "bot": true, "id": "mid"}',
        ),
        (
            e.ChatMessage("alice", "hi", 1.0, received=math.inf),
            '{"type": "chat", "from": "alice", "text": "hi", "ts": null, "private": false, "action": false, '
            '"history": false, "away": false, "bot": false, "id": ""}',
        ),
        (e.Accepted("mid", 3.0), '{"type": "acked", "id": "mid", "ts": 3.0, "queued": false, "duplicate": false}'),
        (
            e.Accepted("mid", math.nan, True, True, "text", "bob"),
            '{"type": "acked", "id": "mid", "ts": null, "queued": true, "duplicate": true}',
        ),
        (e.Failed("mid", "why", "text", "bob"), '{"type": "failed", "id": "mid", "reason": "why"}'),
        (e.KeyChanged("bob", "aa", "bb"), '{"type": "key_changed", "name": "bob", "pinned": "aa", "seen": "bb"}'),
        (e.Welcome("alice", (ALICE, BOT)), '{"type": "welcome", "name": "alice", "users": ' + USERS + "}"),
        (e.Joined(BOT), '{"type": "join", "name": "bot_1", "fingerprint": "ef:01", "bot": true}'),
        (e.Left("bob", "quit"), '{"type": "leave", "name": "bob", "reason": "quit"}'),
        (e.WhoList((ALICE, BOT)), '{"type": "who", "users": ' + USERS + "}"),
        (e.Notice("msg"), '{"type": "notice", "message": "msg"}'),
        (e.Shutdown("admin"), '{"type": "shutdown", "by": "admin"}'),
        (e.SessionClosed("why"), '{"type": "closed", "reason": "why"}'),
        (e.ConnectionLost("gone", 2.5), '{"type": "connection_lost", "reason": "gone", "retry_in": 2.5}'),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, e.Event) else "",
)
def test_each_event_has_one_record(event, line):
    assert json.dumps(e.to_dict(event), ensure_ascii=False) == line


@pytest.mark.parametrize("thing", [e.Event(), object()], ids=["base", "object"])
def test_what_is_not_an_event_has_no_record(thing):
    with pytest.raises(TypeError, match="not an event"):
        e.to_dict(thing)
