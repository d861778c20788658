"""The terminal client's pure helpers: what Tab offers, what counts as a message for me, which answers are asked
again."""

from __future__ import annotations

import pytest

from zchat.client.terminal.commands import completions
from zchat.client.terminal.display import Display, for_me, mentions
from zchat.client.terminal.prompts import host_problem, port_problem
from zchat.events import ChatMessage, Left, Welcome

ONLINE = ["alice", "bob", "Bobby", "carol"]


def offered(before: str) -> list[str]:
    return [text for text, _, _ in completions(before, ONLINE, "alice")]


def test_tab_offers_commands_at_the_start_of_a_line():
    assert offered("/ex") == ["/exit"]
    assert offered("/wh") == ["/who", "/whois "]  # a command that takes an argument comes with its space
    assert offered("/nothing") == []
    _, start, shown = completions("/ex", ONLINE, "alice")[0]
    assert (start, shown) == (-3, "/exit")  # replaces what was typed


def test_tab_offers_names_after_msg_whois_and_trust_and_as_an_address():
    assert offered("/msg b") == ["bob ", "Bobby "]  # any case
    assert offered("/msg a") == []  # not ourselves
    assert offered("/whois a") == ["alice "]  # but /whois ourselves is fine
    assert offered("/trust c") == ["carol "]
    assert offered("/msg bob hel") == []  # the text is not a name
    assert offered("ca") == ["carol: "]
    assert offered("hello ca") == []  # only the first word addresses someone
    assert offered("/me b") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice: hi", True),
        ("hi ALICE!", True),
        ("@alice?", True),
        ("malice", False),
        ("alice_b", False),  # another name
        ("alice-bot", False),
        ("al ice", False),
    ],
)
def test_a_mention_is_the_name_as_a_word_in_any_case(text, expected):
    assert mentions(text, "alice") is expected


def test_a_message_for_me_is_a_mention_or_private_never_my_own():
    assert for_me(ChatMessage("bob", "hi alice", 0.0), "alice")
    assert for_me(ChatMessage("bob", "hi", 0.0, private=True), "alice")
    assert not for_me(ChatMessage("alice", "I am alice", 0.0), "alice")
    assert not for_me(ChatMessage("bob", "hi all", 0.0), "alice")
    shown = Display(colour=True, me="alice").format(ChatMessage("bob", "hi alice", 0.0))
    assert "\x1b[1;7mbob:\x1b[0m" in shown  # the author in reverse video
    assert "\x1b[1mhi alice\x1b[0m" in shown  # the text bold
    assert "\x1b[1;7m" not in Display(colour=True, me="carol").format(ChatMessage("bob", "hi alice", 0.0))


def test_a_chosen_leave_says_just_left_and_piped_output_gives_no_terminal_hints():
    assert Display().format(Left("carol", "left")).endswith("* carol left")
    assert Display().format(Left("carol", "timed out")).endswith("* carol left (timed out)")
    welcome = Welcome("alice", ())
    assert "/help" not in Display().format(welcome)
    assert Display(hints=True).format(welcome).endswith("(/help for commands)")


@pytest.mark.parametrize("host", ["127.0.0.1", "192.168.1.20", "localhost", "chat.example.org", "broker-1"])
def test_addresses_that_can_be_right(host):
    assert host_problem(host) is None


@pytest.mark.parametrize("host", ["not an ip!", "1.2.3.999", "256.1.1.1", "", "-bad.example", "a..b", "::1"])
def test_addresses_that_cannot(host):
    assert host_problem(host) is not None


@pytest.mark.parametrize(
    ("port", "ok"),
    [
        ("5000", True),
        ("1", True),
        ("65535", True),
        ("0", False),
        ("65536", False),
        ("five", False),
        ("-1", False),
        ("\uff15\uff10\uff10\uff10", False),
    ],
)
def test_ports(port, ok):
    assert (port_problem(port) is None) is ok
