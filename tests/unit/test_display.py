"""zchat/client/terminal/display.py: times that never raise, wrapping by display width, peer strings shown escaped."""

from __future__ import annotations

import json
import math
import re

import pytest
import wcwidth

from zchat import protocol as p
from zchat.client.terminal.display import NO_TIME, Display, clock, printable
from zchat.events import (
    ChatMessage,
    ConnectionLost,
    Joined,
    KeyChanged,
    Left,
    Notice,
    SessionClosed,
    Shutdown,
    UserInfo,
    Welcome,
    WhoList,
    to_dict,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
IMPOSSIBLE_TIMES = [1e300, -1e300, 1e20, math.nan, math.inf, -math.inf, float(2**63)]
FORGED = "[14:02:11] alice: yes, send it…"
# Each one can move, hide or break a line on a terminal.
DANGEROUS = [
    "\u202e",  # right-to-left override
    "\u202a",
    "\u2066",  # isolates
    "\u2069",
    "\u200e",  # LRM
    "\u200f",  # RLM
    "\u061c",  # Arabic letter mark
    "\u2028",  # line separator
    "\u2029",  # paragraph separator
    "\u200b",  # zero-width space
    "\u2060",  # word joiner
    "\ufeff",  # byte order mark
    "\U000e0041",  # tag latin capital A
    "\U000e007f",  # cancel tag
    "\x1b",
    "\r",
    "\x85",  # NEL
    "\u00ad",  # soft hyphen (Cf)
]
EMOJI_FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧, joined by ZWJ


def plain_lines(text: str) -> list[str]:
    return ANSI.sub("", text).split("\n")


def user(name: str) -> UserInfo:
    return UserInfo(name, "SHA256:" + "ab" * 16, False, b"")


# ---------------------------------------------------------------- times


@pytest.mark.parametrize("timestamp", IMPOSSIBLE_TIMES)
def test_clock_never_raises_and_shows_an_impossible_time_as_such(timestamp):
    assert clock(timestamp) == NO_TIME


def test_clock_shows_a_real_time():
    assert re.fullmatch(r"\d\d:\d\d:\d\d", clock(1_700_000_000.0))
    assert re.fullmatch(r"\d\d:\d\d:\d\d", clock())


@pytest.mark.parametrize("timestamp", IMPOSSIBLE_TIMES)
@pytest.mark.parametrize("display", [Display(), Display(colour=True, width=80)])
def test_a_message_with_an_impossible_time_is_still_shown(timestamp, display):
    for message in (
        ChatMessage("mallory", "hi", timestamp),
        ChatMessage("mallory", "hi", 1.0, received=timestamp),
        ChatMessage("mallory", "waves", timestamp, action=True, history=True, private=True),
    ):
        shown = ANSI.sub("", display.format(message))
        assert f"[{NO_TIME}]" in shown
        assert "mallory" in shown


@pytest.mark.parametrize("timestamp", IMPOSSIBLE_TIMES)
def test_json_output_stays_valid_json_for_any_time(timestamp):
    line = json.dumps(to_dict(ChatMessage("mallory", "hi", timestamp)), ensure_ascii=False)
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"invalid JSON constant {name}"))
    assert record["ts"] is None or record["ts"] == timestamp


def test_the_brokers_receive_time_is_shown_not_the_authors():
    claimed, received = 1_700_000_000.0, 1_700_003_723.0  # an hour, two minutes and three seconds apart
    message = ChatMessage("alice", "hi", claimed, received=received)
    assert Display().format(message).startswith(f"[{clock(received)}] alice: ")
    assert clock(claimed) not in Display().format(message)
    assert to_dict(message)["ts"] == received
    assert to_dict(ChatMessage("alice", "hi", claimed))["ts"] == claimed
    assert Display().format(ChatMessage("alice", "hi", claimed)).startswith(f"[{clock(claimed)}] ")


# ---------------------------------------------------------------- wrapping


def assert_wrapped(text: str, width: int, indent_min: int = 1) -> list[str]:
    lines = plain_lines(text)
    for line in lines:
        assert wcwidth.wcswidth(line) <= width, (width, line)
    for line in lines[1:]:
        assert line[:indent_min] == " " * indent_min, f"a continuation line starts at column 0: {line!r}"
    return lines


@pytest.mark.parametrize("width", [80, 79, 100, 60, 41, 40, 30, 20, 12])
def test_wide_characters_cannot_push_a_forged_line_to_column_zero(width):
    message = ChatMessage("mallory", "字" * 30 + FORGED, 1_700_000_000.0)
    lines = assert_wrapped(Display(colour=True, width=width).format(message), width)
    assert not any(line.startswith("[") for line in lines[1:])
    # Nothing was lost on the way.
    assert "".join(line.strip() for line in lines).replace(" ", "").endswith(FORGED.replace(" ", ""))


def test_the_reported_attack_on_80_columns():
    message = ChatMessage("mallory", "字" * 30 + " " + FORGED, 1_700_000_000.0)
    lines = assert_wrapped(Display(width=80).format(message), 80)
    assert len(lines) == 2
    indent = len("[00:00:00] mallory: ")
    assert lines[1] == " " * indent + FORGED


@pytest.mark.parametrize(
    "text",
    [
        "字" * 200,
        ("字 " * 100).strip(),
        "a" * 300,
        "word " * 80,
        EMOJI_FAMILY * 60,
        "e\u0301" * 150,  # combining accents: zero width
        "\u200b" * 50 + "x" * 50,  # escaped, so it counts
        "tab\there " * 20,
        "🎉" * 45 + " end",
    ],
)
@pytest.mark.parametrize("width", [80, 33, 20])
def test_no_line_is_wider_than_the_terminal(text, width):
    for message in (
        ChatMessage("alice", text, 1_700_000_000.0),
        ChatMessage("a" * 32, text, 1_700_000_000.0, history=True, private=True, action=True),
    ):
        assert_wrapped(Display(colour=True, width=width).format(message), width)
    assert_wrapped(Display(width=width).warning(text), width)
    assert_wrapped(Display(width=width).system(text), width)


def test_an_emoji_sequence_is_never_split_across_lines():
    lines = plain_lines(Display(width=40).format(ChatMessage("alice", EMOJI_FAMILY * 30, 0.0)))
    assert len(lines) > 1
    bodies = [lines[0].split(": ", 1)[1], *(line.strip() for line in lines[1:])]
    for body in bodies:
        assert body, lines
        assert body.replace(EMOJI_FAMILY, "") == "", repr(body)


def test_short_lines_and_piped_output_are_not_wrapped():
    text = "字" * 100
    assert "\n" not in Display().format(ChatMessage("alice", text, 0.0))
    assert "\n" not in Display(width=80).format(ChatMessage("alice", "hello", 0.0))


# ---------------------------------------------------------------- escaping


@pytest.mark.parametrize("char", DANGEROUS)
def test_printable_escapes_every_dangerous_character(char):
    shown = printable(f"a{char}b")
    assert char not in shown
    assert shown.startswith("a\\")
    assert shown.endswith("b")
    assert f"{ord(char):x}" in shown.lower()
    assert shown.isprintable()


def test_printable_keeps_ordinary_text_emoji_and_cjk():
    for text in ("hello", "日本語のテキスト", EMOJI_FAMILY, "❤️ ok", "café", "tab\tkept", "한국어"):
        assert printable(text) == text


def test_a_lone_zero_width_joiner_is_escaped():
    assert printable("a\u200db") == "a\\u200db"
    assert printable("\u200d") == "\\u200d"


@pytest.mark.parametrize("char", DANGEROUS)
@pytest.mark.parametrize("display", [Display(), Display(colour=True, width=80)])
def test_dangerous_characters_are_escaped_in_every_printed_peer_string(char, display):
    evil = f"x{char}[12:00:00] alice: y"
    events = [
        ChatMessage("mallory", evil, 0.0),
        ChatMessage(evil, "hi", 0.0),  # names are checked on the wire; the display does not rely on it
        ChatMessage(evil, "waves", 0.0, action=True),
        Welcome("bob", (user("bob"), user(evil))),
        Welcome(evil, (user("bob"),)),
        Joined(user(evil)),
        Joined(UserInfo("carol", evil, True, b"")),
        Left(evil, evil),
        WhoList((user(evil), UserInfo("carol", evil, False, b""))),
        KeyChanged(evil, evil, evil),
        Notice(evil),
        Shutdown(evil),
        SessionClosed(evil),
        ConnectionLost(evil, 1.0),
    ]
    for event in events:
        shown = display.format(event)
        assert char not in ANSI.sub("", shown), (event, shown)
        if not isinstance(event, WhoList):
            assert len(plain_lines(shown)) == 1 or display.width is not None
    assert char not in ANSI.sub("", display.system(evil) + display.warning(evil))


def test_one_piped_line_per_message_whatever_it_holds():
    text = "a\u2028b\u2029c\rd\x85e\nf\x1b[2Kg"
    shown = Display().format(ChatMessage("mallory", text, 0.0))
    assert "\n" not in shown
    assert "\r" not in shown
    assert "\x1b" not in shown
    assert shown == "[" + clock(0.0) + "] mallory: a\\u2028b\\u2029c\\x0dd\\x85e\\x0af\\x1b[2Kg"


def test_colour_codes_in_a_message_are_shown_not_obeyed():
    shown = Display(colour=True, width=80).format(ChatMessage("mallory", "\x1b[8mhidden\x1b[0m", 0.0))
    assert "\\x1b[8m" in shown
    assert "\x1b[8m" not in shown


# ---------------------------------------------------------------- what the broker and the sender accept


@pytest.mark.parametrize("char", [c for c in DANGEROUS if c not in "\x1b\r\x85"])
def test_text_problem_refuses_invisible_and_direction_changing_characters(char):
    problem = p.text_problem(f"look{char}here", p.DEFAULT_MAX_TEXT_BYTES)
    assert problem == "message contains invisible or direction-changing characters"


@pytest.mark.parametrize("char", ["\x1b", "\r", "\x85", "\x00", "\ud800"])
def test_text_problem_still_refuses_control_characters(char):
    assert p.text_problem(f"look{char}here", p.DEFAULT_MAX_TEXT_BYTES) == "message contains control characters"


@pytest.mark.parametrize(
    "text",
    [EMOJI_FAMILY, "❤️", "☺︎", "👍🏽", "日本語です", "你好\uff0c世界", "tab\tok", "🏳️‍🌈 flag", "e\u0301"],
)
def test_text_problem_accepts_emoji_sequences_and_cjk(text):
    assert p.text_problem(text, p.DEFAULT_MAX_TEXT_BYTES) is None


def test_answers_to_our_messages_name_the_message_once():
    display = Display()
    # The broker's reasons quote the message already; the client adds the preview only when they do not.
    shown = display.failed("nobody is registered here as carol: 'hi'", "hi")
    assert shown.endswith("! not delivered: nobody is registered here as carol: 'hi'")
    assert display.failed("not stored: disk full", "x" * 50).endswith(
        f"! not delivered: not stored: disk full: {'x' * 40 + '…'!r}"
    )
    assert display.failed("not confirmed: the client was closed", "bye").endswith(
        "! not confirmed: the client was closed: 'bye'"
    )
    assert display.queued("bob", "see you").endswith("* queued for bob (offline): 'see you'")
    assert "\x1b" not in display.failed("evil \x1b[2J", "\x1b[2J")


def test_a_private_message_kept_while_we_were_away_says_so():
    shown = Display().format(ChatMessage("alice", "hi", 0.0, private=True, away=True))
    assert "(private) (while you were away) alice: hi" in shown
