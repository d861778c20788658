"""zchat/protocol/: frame checks, document codecs, statements, events, text and name rules."""

from __future__ import annotations

import json
import typing

import pytest

from zchat import crypto
from zchat import protocol as p
from zchat.errors import LocalProtocolError, RemoteProtocolError
from zchat.events import UserInfo
from zchat.protocol import events as wire

MAX_BODY = p.max_body_bytes(p.DEFAULT_MAX_TEXT_BYTES)
NONCE = bytes(range(32))
OTHER_NONCE = bytes(range(100, 132))
DELIVERY_KEY = bytes(range(200, 232))


def doc(**fields) -> bytes:
    return json.dumps(fields).encode()


def remote_error(action) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        action()
    return info.value


# ---------------------------------------------------------------- frames


def test_decode_frames_accepts_a_well_formed_message():
    assert p.decode_frames([p.MARKER, p.SEND, b"body"], p.CLIENT_COMMANDS, MAX_BODY) == (p.SEND, b"body")
    assert p.decode_frames([p.MARKER, p.PING, b""], p.CLIENT_COMMANDS, MAX_BODY) == (p.PING, b"")


@pytest.mark.parametrize("count", [0, 1, 2, 4, 10])
def test_decode_frames_rejects_wrong_frame_count(count):
    frames = [p.MARKER, p.PING, b"", b"", b"", b"", b"", b"", b"", b""][:count]
    error = remote_error(lambda: p.decode_frames(frames, p.CLIENT_COMMANDS, MAX_BODY))
    assert "frames" in str(error)


@pytest.mark.parametrize("marker", [b"", b"zchat/1", b"zchat/2", b"ZCHAT/3", b"zchat/3 ", b"zchat"])
def test_decode_frames_rejects_wrong_marker(marker):
    error = remote_error(lambda: p.decode_frames([marker, p.PING, b""], p.CLIENT_COMMANDS, MAX_BODY))
    assert "marker" in str(error)


@pytest.mark.parametrize("command", [b"", b"NOPE", b"hello", b"HELLO ", p.EVENT, p.CHALLENGE, p.REFUSED])
def test_decode_frames_rejects_unknown_client_command(command):
    error = remote_error(lambda: p.decode_frames([p.MARKER, command, b""], p.CLIENT_COMMANDS, MAX_BODY))
    assert "unknown command" in str(error)


@pytest.mark.parametrize("command", [p.HELLO, p.LOGIN, p.SEND])
def test_decode_frames_rejects_client_commands_from_the_broker(command):
    remote_error(lambda: p.decode_frames([p.MARKER, command, b"x"], p.BROKER_COMMANDS, MAX_BODY))


def test_decode_frames_size_limit_is_inclusive():
    body = b"x" * 100
    assert p.decode_frames([p.MARKER, p.SEND, body], p.CLIENT_COMMANDS, 100) == (p.SEND, body)
    error = remote_error(lambda: p.decode_frames([p.MARKER, p.SEND, body + b"x"], p.CLIENT_COMMANDS, 100))
    assert "exceeds" in str(error)


def test_decode_frames_checks_size_before_command_semantics():
    # An oversize PING body is refused for its size, whatever else is wrong with it.
    error = remote_error(lambda: p.decode_frames([p.MARKER, p.PING, b"x" * 11], p.CLIENT_COMMANDS, 10))
    assert "exceeds" in str(error)


@pytest.mark.parametrize(
    ("command", "allowed"),
    [
        (p.PING, p.CLIENT_COMMANDS),
        (p.PING, p.BROKER_COMMANDS),
        (p.REFUSED, p.BROKER_COMMANDS),
        (p.EVICTED, p.BROKER_COMMANDS),
        (p.BUSY, p.BROKER_COMMANDS),
    ],
)
def test_decode_frames_rejects_body_on_bodyless_commands(command, allowed):
    error = remote_error(lambda: p.decode_frames([p.MARKER, command, b"\x00"], allowed, MAX_BODY))
    assert "unexpected body" in str(error)


def test_encode_frames_refuses_body_on_bodyless_command():
    assert p.encode_frames(p.PING) == [p.MARKER, p.PING, b""]
    assert p.encode_frames(p.SEND, b"body") == [p.MARKER, p.SEND, b"body"]
    with pytest.raises(LocalProtocolError):
        p.encode_frames(p.REFUSED, b"why")


def test_contexts_differ_per_command():
    contexts = {p.context(command) for command in p.CLIENT_COMMANDS | p.BROKER_COMMANDS}
    assert len(contexts) == len(p.CLIENT_COMMANDS | p.BROKER_COMMANDS)
    assert p.context(p.SEND) == b"zchat/3|SEND"


def worst_case_chat() -> p.SignedStatement:
    """A full-size private action of characters that JSON escaping doubles, with the longest id, signed with a
    4096-bit key."""
    statement = p.Statement.build(
        "chat",
        "a" * 32,
        "ab" * 32,
        p.MAX_SEQ,
        1e300,
        '"' * p.DEFAULT_MAX_TEXT_BYTES,
        to="b" * 32,
        action=True,
        message_id="i" * 64,
    )
    return p.SignedStatement(statement.text, b"s" * 512)


def test_max_body_covers_a_send_of_a_doubly_escaped_full_text():
    envelope_overhead = 1 + 512 + 12 + 16
    assert len(worst_case_chat().encode()) + envelope_overhead <= MAX_BODY


def test_broker_body_limit_covers_a_chat_delivery_of_a_full_text():
    author = UserInfo("a" * 32, "SHA256:" + "0" * 64, False, b"k" * 600)  # a 4096-bit key's DER is about 550 bytes
    event = wire.ChatEvent(worst_case_chat(), p.MAX_TIMESTAMP, author, away=True).to_doc()
    plaintext = wire.seal_delivery(DELIVERY_KEY, "ab" * 32, p.MAX_SEQ, event)
    assert len(plaintext) + 1 + 512 + 12 + 16 <= p.MAX_BROKER_BODY
    # The same message kept for an offline recipient: the chat event sealed to them, inside a mail event.
    sealed = b"s" * (len(p.dump_doc(event)) + 1 + 512 + 12 + 16)
    mail = wire.seal_delivery(DELIVERY_KEY, "ab" * 32, p.MAX_SEQ, wire.MailEvent(sealed).to_doc())
    assert len(mail) + 1 + 512 + 12 + 16 <= p.MAX_BROKER_BODY


# ---------------------------------------------------------------- handshake documents


def test_hello_round_trip():
    hello = p.Hello("alice_01-x", NONCE, bot=True)
    assert p.Hello.decode(hello.encode()) == hello
    assert p.Hello.decode(p.Hello("bob", NONCE, bot=False).encode()).bot is False


def test_hello_encode_checks_the_name():
    with pytest.raises(LocalProtocolError):
        p.Hello("not a name", NONCE, bot=False).encode()


def test_challenge_round_trip():
    challenge = p.Challenge("alice", NONCE, OTHER_NONCE, DELIVERY_KEY, b"\x00signature\xff" * 30)
    assert p.Challenge.decode(challenge.encode()) == challenge


def test_login_round_trip():
    login = p.Login(bytes(range(256)))
    assert p.Login.decode(login.encode()) == login


GOOD_HELLO = {"user": "alice", "nonce": p.b64(NONCE), "bot": False}
GOOD_CHALLENGE = {
    "user": "alice",
    "client_nonce": p.b64(NONCE),
    "server_nonce": p.b64(OTHER_NONCE),
    "delivery_key": p.b64(DELIVERY_KEY),
    "sig": "c2ln",
}


MALFORMED_JSON = {
    "empty": b"",
    "open": b"{",
    "text": b"not json",
    "bad-utf8": b"\xff\xfe{}",
    "unterminated": b'{"user": "alice"',
    "list": b"[1, 2]",
    "string": b'"a string"',
    "int": b"42",
    "null": b"null",
    "true": b"true",
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "nan": b"NaN",
}


@pytest.mark.parametrize("data", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
@pytest.mark.parametrize(
    "decode",
    [p.Hello.decode, p.Challenge.decode, p.Login.decode, lambda data: wire.Delivery.open(data, DELIVERY_KEY)],
    ids=["hello", "challenge", "login", "delivery"],
)
def test_documents_reject_malformed_or_non_object_json(decode, data):
    remote_error(lambda: decode(data))


@pytest.mark.parametrize(
    "change",
    [
        {"user": 5},
        {"user": None},
        {"user": ["alice"]},
        {"bot": 1},
        {"bot": 0},
        {"bot": "false"},
        {"bot": None},
        {"nonce": 12345},
        {"nonce": "not base64!"},
        {"nonce": p.b64(NONCE)[:-1]},
        {"nonce": p.b64(NONCE) + "\n"},
        {"nonce": p.b64(NONCE[:31])},
        {"nonce": p.b64(NONCE + b"\x00")},
        {"nonce": ""},
        {"user": ""},
        {"user": "a" * 33},
        {"user": "al ice"},
        {"user": "alice\n"},
        {"user": "ålice"},
        {"user": "alice/../bob"},
        {"user": "alice.pub"},
    ],
)
def test_hello_rejects_wrong_fields(change):
    remote_error(lambda: p.Hello.decode(doc(**{**GOOD_HELLO, **change})))


@pytest.mark.parametrize("missing", sorted(GOOD_HELLO))
def test_hello_rejects_missing_fields(missing):
    fields = {k: v for k, v in GOOD_HELLO.items() if k != missing}
    remote_error(lambda: p.Hello.decode(doc(**fields)))


@pytest.mark.parametrize(
    "change",
    [
        {"client_nonce": p.b64(NONCE[:16])},
        {"server_nonce": p.b64(OTHER_NONCE * 2)},
        {"server_nonce": True},
        {"delivery_key": p.b64(DELIVERY_KEY[:31])},
        {"delivery_key": None},
        {"sig": "@@@@"},
        {"sig": 7},
        {"sig": "c2l"},  # missing padding
        {"user": "bad name"},
    ],
)
def test_challenge_rejects_wrong_fields(change):
    assert p.Challenge.decode(doc(**GOOD_CHALLENGE)).signature == b"sig"
    remote_error(lambda: p.Challenge.decode(doc(**{**GOOD_CHALLENGE, **change})))


@pytest.mark.parametrize("sig", [None, 1, True, "***", "A" * 20_000, ["c2ln"]])
def test_login_rejects_bad_signature_field(sig):
    remote_error(lambda: p.Login.decode(doc(sig=sig)))


def test_base64_length_cap():
    assert len(p.get_b64({"k": p.b64(b"x" * 8192)}, "k")) == 8192
    remote_error(lambda: p.get_b64({"k": p.b64(b"x" * 8200)}, "k"))


@pytest.mark.parametrize(("value", "ok"), [(1, True), (0, False), (True, False), (1.0, False), ("1", False)])
def test_get_int_never_takes_bool_float_or_string(value, ok):
    if ok:
        assert p.get_int({"n": value}, "n", 1) == value
    else:
        remote_error(lambda: p.get_int({"n": value}, "n", 1))


def test_get_int_range():
    assert p.get_int({"n": p.MAX_SEQ}, "n") == p.MAX_SEQ
    remote_error(lambda: p.get_int({"n": p.MAX_SEQ + 1}, "n"))
    remote_error(lambda: p.get_int({"n": -1}, "n"))


@pytest.mark.parametrize(("value", "ok"), [(1, True), (1.5, True), (True, False), (None, False), ("1.5", False)])
def test_get_float_never_takes_bool_or_string(value, ok):
    if ok:
        assert p.get_float({"x": value}, "x") == float(value)
    else:
        remote_error(lambda: p.get_float({"x": value}, "x"))


@pytest.mark.parametrize(("value", "ok"), [(True, True), (False, True), (1, False), (0, False), ("true", False)])
def test_get_bool_never_takes_int_or_string(value, ok):
    if ok:
        assert p.get_bool({"b": value}, "b") is value
    else:
        remote_error(lambda: p.get_bool({"b": value}, "b"))


# ---------------------------------------------------------------- deliveries


def macced(inner: str, key: bytes = DELIVERY_KEY) -> bytes:
    """An EVENT plaintext around any inner text, with a correct MAC under `key`."""
    return p.dump_doc({"delivery": inner, "mac": p.b64(crypto.mac(key, p.delivery_mac_input(inner)))})


def test_delivery_round_trip():
    data = wire.seal_delivery(DELIVERY_KEY, "ab12", 7, {"type": "leave", "name": "bøb", "reason": "left"})
    delivery = wire.Delivery.open(data, DELIVERY_KEY)
    assert (delivery.session, delivery.seq, delivery.kind) == ("ab12", 7, "leave")
    assert delivery.event == {"type": "leave", "name": "bøb", "reason": "left"}


def test_delivery_under_another_key_is_rejected():
    data = wire.seal_delivery(DELIVERY_KEY, "ab12", 7, {"type": "who", "users": []})
    error = remote_error(lambda: wire.Delivery.open(data, bytes(32)))
    assert "MAC" in str(error)


def test_tampered_delivery_is_rejected():
    outer = json.loads(wire.seal_delivery(DELIVERY_KEY, "ab12", 7, {"type": "who", "users": []}))
    tampered = {**outer, "delivery": outer["delivery"].replace('"seq":7', '"seq":8')}
    assert tampered != outer
    remote_error(lambda: wire.Delivery.open(p.dump_doc(tampered), DELIVERY_KEY))


@pytest.mark.parametrize(
    "mac", [None, "", "not base64", p.b64(bytes(31)), p.b64(bytes(33)), p.b64(bytes(32)), 5], ids=repr
)
def test_delivery_with_a_bad_mac_field_is_rejected(mac):
    outer = json.loads(wire.seal_delivery(DELIVERY_KEY, "ab12", 7, {"type": "who", "users": []}))
    remote_error(lambda: wire.Delivery.open(p.dump_doc({**outer, "mac": mac}), DELIVERY_KEY))


@pytest.mark.parametrize(
    "fields",
    [
        {"session": "s", "seq": 1},
        {"session": "s", "seq": 1, "event": "chat"},
        {"session": "s", "seq": 1, "event": {"no": "type"}},
        {"session": "s", "seq": 1, "event": {"type": 3}},
        {"session": "s", "seq": 0, "event": {"type": "who"}},
        {"session": "s", "seq": True, "event": {"type": "who"}},
        {"session": "s", "seq": "1", "event": {"type": "who"}},
        {"session": 1, "seq": 1, "event": {"type": "who"}},
    ],
)
def test_delivery_rejects_wrong_fields(fields):
    good = {"session": "s", "seq": 1, "event": {"type": "who"}}
    assert wire.Delivery.open(macced(json.dumps(good)), DELIVERY_KEY).kind == "who"
    remote_error(lambda: wire.Delivery.open(macced(json.dumps(fields)), DELIVERY_KEY))


@pytest.mark.parametrize("inner", ["", "[]", "not json", '"string"', "{}"], ids=repr)
def test_delivery_with_a_valid_mac_over_garbage_is_rejected(inner):
    remote_error(lambda: wire.Delivery.open(macced(inner), DELIVERY_KEY))


def test_delivery_smuggling_a_lone_surrogate_is_rejected():
    data = b'{"delivery": "\\ud800", "mac": "' + p.b64(bytes(32)).encode() + b'"}'
    assert json.loads(data)["delivery"] == "\ud800"
    error = remote_error(lambda: wire.Delivery.open(data, DELIVERY_KEY))
    assert "Unicode" in str(error)


def test_user_info_round_trip_and_rejections():
    user = UserInfo("carol", "SHA256:" + "0" * 64, True, b"\x30\x82der")
    assert wire.parse_user_info(wire.user_info_doc(user)) == user
    assert wire.parse_user_list({"users": [wire.user_info_doc(user)]}, "users") == (user,)
    remote_error(lambda: wire.parse_user_info("carol"))
    remote_error(lambda: wire.parse_user_info({**wire.user_info_doc(user), "name": "c a r o l"}))
    remote_error(lambda: wire.parse_user_info({**wire.user_info_doc(user), "bot": "yes"}))
    remote_error(lambda: wire.parse_user_list({"users": {"carol": 1}}, "users"))
    remote_error(lambda: wire.parse_user_list({}, "users"))


# ---------------------------------------------------------------- the answers to a chat statement


@pytest.mark.parametrize(
    ("event", "document"),
    [
        (wire.AcceptedEvent("m1", 1.5), {"type": "accepted", "id": "m1", "received": 1.5}),
        (wire.AcceptedEvent("m1", 2.0, queued=True), {"type": "accepted", "id": "m1", "received": 2.0, "queued": True}),
        (
            wire.AcceptedEvent("m1", 2.0, duplicate=True),
            {"type": "accepted", "id": "m1", "received": 2.0, "duplicate": True},
        ),
        (wire.FailedEvent("m-2", "mailbox full"), {"type": "failed", "id": "m-2", "reason": "mailbox full"}),
        (wire.RefusedEvent(7, "m_3"), {"type": "refused", "seq": 7, "id": "m_3"}),
        (wire.RefusedEvent(7, ""), {"type": "refused", "seq": 7}),
        (wire.RefusedEvent(None, ""), {"type": "refused"}),
        (wire.MailEvent(b"\x00sealed\xff"), {"type": "mail", "sealed": p.b64(b"\x00sealed\xff")}),
    ],
    ids=["accepted", "queued", "duplicate", "failed", "refused", "refused-no-id", "refused-unread", "mail"],
)
def test_answer_events_round_trip(event, document):
    assert event.to_doc() == document
    assert wire.decode_event(json.loads(json.dumps(document))) == event


@pytest.mark.parametrize(
    "document",
    [
        {"type": "accepted", "received": 1.0},
        {"type": "accepted", "id": "a b", "received": 1.0},
        {"type": "accepted", "id": "m1"},
        {"type": "accepted", "id": "m1", "received": -1},
        {"type": "accepted", "id": "m1", "received": True},
        {"type": "failed", "id": "m1"},
        {"type": "failed", "reason": "why"},
        {"type": "refused", "seq": 0},
        {"type": "refused", "seq": "1"},
        {"type": "refused", "id": ""},
        {"type": "mail"},
        {"type": "mail", "sealed": "not base64!"},
    ],
    ids=repr,
)
def test_answer_events_with_bad_fields_are_rejected(document):
    remote_error(lambda: wire.decode_event(document))


def test_queued_and_duplicate_are_true_only_when_true():
    document = {"type": "accepted", "id": "m1", "received": 1.0, "queued": "yes", "duplicate": 1}
    assert wire.decode_event(document) == wire.AcceptedEvent("m1", 1.0)


# ---------------------------------------------------------------- statements

SESSION = "ab" * 32


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("chat", "hello"),
        ("chat", 'quotes " and \\ backslashes \\" and </script>'),
        ("chat", "naïve café ✓ 👋🏽 日本語 \u2028 \ufeff"),
        ("chat", "tab\there"),
        ("who", ""),
        ("shutdown", ""),
        ("bye", ""),
    ],
)
def test_statement_build_parse_round_trip(kind, body):
    message_id = "Zx_9-" if kind == "chat" else ""
    built = p.Statement.build(kind, "alice", SESSION, 42, 1700000000.123456, body, message_id=message_id)
    parsed = p.Statement.parse(built.text)
    assert parsed == built
    assert parsed.text == built.text
    assert (parsed.kind, parsed.sender, parsed.session, parsed.seq, parsed.body) == (kind, "alice", SESSION, 42, body)
    assert parsed.timestamp == 1700000000.123456
    assert parsed.message_id == message_id
    assert ('"id":' in built.text) is (kind == "chat")


def test_private_action_round_trip():
    built = p.Statement.build("chat", "alice", SESSION, 1, 1.0, "waves", to="bob", action=True, message_id="m1")
    parsed = p.Statement.parse(built.text)
    assert parsed == built
    assert (parsed.to, parsed.action, parsed.message_id) == ("bob", True, "m1")


def test_new_message_ids_are_fresh_and_valid():
    ids = {p.new_message_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 22 and p.MESSAGE_ID_PATTERN.fullmatch(i) for i in ids)


def test_statement_parse_keeps_the_exact_signed_text():
    # Key order and spacing as the author wrote them are kept, never re-serialised.
    text = '{ "ts": 1.5, "seq": 3, "id": "x", "session": "s", "from": "bob", "type": "chat", "text": "caf\\u00e9" }'
    statement = p.Statement.parse(text)
    assert statement.text == text
    assert statement.body == "café"
    assert statement.sender == "bob"
    assert statement.message_id == "x"


def test_statement_signing_input_covers_the_exact_text():
    built = p.Statement.build("chat", "alice", SESSION, 1, 1.0, "é", message_id="m")
    assert p.statement_signing_input(built.text) == b"zchat/3|statement|" + built.text.encode("utf-8")
    assert "é" in built.text  # not ASCII-escaped: the signed bytes are the UTF-8 text


def test_statement_build_refuses_misuse():
    with pytest.raises(LocalProtocolError):
        p.Statement.build("dance", "alice", SESSION, 1, 1.0)
    with pytest.raises(LocalProtocolError):
        p.Statement.build("chat", "not valid", SESSION, 1, 1.0, "hi", message_id="m")
    for bad_id in ("", "a b", "x" * 65, "é"):
        with pytest.raises(LocalProtocolError, match="invalid message id"):
            p.Statement.build("chat", "alice", SESSION, 1, 1.0, "hi", message_id=bad_id)


GOOD_STATEMENT = {"type": "chat", "from": "alice", "session": SESSION, "seq": 1, "ts": 1.0, "id": "m1", "text": "hi"}


@pytest.mark.parametrize(
    "change",
    [
        {"type": "dance"},
        {"type": None},
        {"from": "a b"},
        {"from": 1},
        {"session": 1},
        {"seq": 0},
        {"seq": -1},
        {"seq": True},
        {"seq": 1.0},
        {"seq": "1"},
        {"seq": 2**53},
        {"text": 5},
        {"text": None},
        {"id": None},
        {"id": ""},
        {"id": 1},
        {"id": "a b"},
        {"id": "x" * 65},
        {"id": "m1\n"},
        {"to": "not a name"},
        {"to": None},
        {"action": 1},
        {"action": "true"},
    ],
)
def test_statement_parse_rejects_wrong_fields(change):
    assert p.Statement.parse(json.dumps(GOOD_STATEMENT)).body == "hi"
    remote_error(lambda: p.Statement.parse(json.dumps({**GOOD_STATEMENT, **change})))


def test_a_chat_statement_without_an_id_is_rejected():
    statement = {k: v for k, v in GOOD_STATEMENT.items() if k != "id"}
    assert "id" in str(remote_error(lambda: p.Statement.parse(json.dumps(statement))))
    # Other statements carry no id.
    who = {k: v for k, v in statement.items() if k != "text"} | {"type": "who"}
    assert p.Statement.parse(json.dumps(who)).message_id == ""


@pytest.mark.parametrize("ts", [True, "now", None, float("nan"), -1, 1e300, 10**4000, [1.0]])
def test_statement_with_an_impossible_ts_parses_with_no_timestamp(ts):
    """The broker then refuses it with an error that names it (the statement is authentic: its seq counts)."""
    text = (
        json.dumps({**GOOD_STATEMENT, "ts": ts})
        if ts != 10**4000
        else json.dumps(GOOD_STATEMENT).replace('"ts": 1.0', '"ts": ' + "9" * 4000)
    )
    assert p.Statement.parse(text).timestamp is None


@pytest.mark.parametrize("text", ["", "[]", "{", '"x"', json.dumps({"type": "chat"})])
def test_statement_parse_rejects_malformed_text(text):
    remote_error(lambda: p.Statement.parse(text))


def test_signed_statement_round_trip_and_limits():
    signed = p.SignedStatement('{"type":"who"}', b"\x01\x02")
    assert p.SignedStatement.from_doc(p.load_doc(signed.encode()), 100) == signed
    too_long = p.SignedStatement("x" * (p.max_body_bytes(100) + 1), b"\x01")
    remote_error(lambda: p.SignedStatement.from_doc(too_long.to_doc(), 100))
    remote_error(lambda: p.SignedStatement.from_doc({"signed": 1, "sig": "AA=="}, 100))
    remote_error(lambda: p.SignedStatement.from_doc({"signed": "{}", "sig": "not base64"}, 100))


# ---------------------------------------------------------------- text and names

LIMIT = 100


@pytest.mark.parametrize(
    "text",
    [
        "hi",
        "tab\tseparated",
        "👋🏽 emoji",
        "日本語",
        "x" * LIMIT,
        "é" * (LIMIT // 2),
        "  padded  ",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467 joined emoji",
    ],
)
def test_text_problem_accepts(text):
    assert p.text_problem(text, LIMIT) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\t\n", "empty"),
        ("x" * (LIMIT + 1), f"{LIMIT + 1} bytes"),
        ("é" * (LIMIT // 2 + 1), f"{LIMIT + 2} bytes"),
        ("👋" * 26, "104 bytes"),
        ("red \x1b[31m alert", "control"),
        ("nul \x00 byte", "control"),
        ("line\nbreak", "control"),
        ("carriage\rreturn", "control"),
        ("bell\x07", "control"),
        ("del\x7f", "control"),
        ("c1 \x9b control", "control"),
        ("lone \ud800 surrogate", "control"),
        ("\u200b zero width", "invisible"),
        ("\u202e reversed", "direction-changing"),
    ],
)
def test_text_problem_refuses(text, expected):
    problem = p.text_problem(text, LIMIT)
    assert problem is not None
    assert expected in problem


@pytest.mark.parametrize("name", ["a", "alice", "Bob_2", "x-y", "A" * 32, "0", "_", "-"])
def test_check_name_accepts(name):
    assert p.check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "A" * 33, "al ice", "alice\n", "ålice", "alice.pub", "../bob", "a/b", "名前", "alice\x00"]
)
def test_check_name_refuses(name):
    with pytest.raises(LocalProtocolError, match="invalid name"):
        p.check_name(name)


def test_signing_inputs_are_distinct_per_purpose():
    broker = p.broker_proof_input("alice", NONCE, OTHER_NONCE, DELIVERY_KEY)
    login = p.login_proof_input("alice", NONCE, OTHER_NONCE)
    assert not broker.startswith(login[: len(b"zchat/3|login")])
    assert broker != p.broker_proof_input("alice", NONCE, OTHER_NONCE, bytes(32))
    assert p.delivery_mac_input("x") != p.statement_signing_input("x")
    assert p.login_proof_input("alice", NONCE, OTHER_NONCE) != p.login_proof_input("alice", OTHER_NONCE, NONCE)
    assert p.session_id(OTHER_NONCE) == OTHER_NONCE.hex()


def decoded_or_problem(document):
    try:
        return wire.decode_event(document)
    except RemoteProtocolError as exc:
        return str(exc)


def test_every_broker_event_names_its_own_tag_and_is_decoded_by_it():
    kinds = typing.get_args(wire.BrokerEvent)
    assert len({kind.TYPE for kind in kinds}) == len(kinds) == 13
    for kind in kinds:  # a known tag with its fields missing: the event's own checks answer
        outcome = decoded_or_problem({"type": kind.TYPE})
        assert isinstance(outcome, kind) or "unknown event type" not in outcome
    assert "unknown event type" in str(remote_error(lambda: wire.decode_event({"type": "room"})))
