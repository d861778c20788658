"""The terminal client in a real pseudo-terminal, read back through a terminal emulator (pyte).

What a person sees: incoming lines never garble the half-typed input, the
line stays editable, private messages and history are marked, a changed key
raises a loud warning.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator

import pexpect
import pyte
import pytest

from tests.conftest import BrokerProcess, collect, run_env, wait_for
from tests.e2e.helpers import CLIENT
from zchat import crypto
from zchat.events import ChatMessage, Joined
from zchat.keystore import write_public_key

COLUMNS, ROWS = 100, 30
LEFT, HOME = "\x1b[D", "\x01"  # cursor left, Ctrl-A (start of line)


class Terminal:
    """chat_client.py in a pty, its output fed to an emulated screen."""

    def __init__(
        self, broker: BrokerProcess, user: str, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        args = [CLIENT, "--host", "127.0.0.1", "--port", str(broker.port), "--user", user, *extra]
        self.child = pexpect.spawn(
            sys.executable,
            args,
            cwd=str(broker.workdir),
            env=env or run_env(),
            dimensions=(ROWS, COLUMNS),
        )

    def pump(self, seconds: float = 0.05) -> None:
        try:
            data = self.child.read_nonblocking(65536, timeout=seconds)
        except (pexpect.TIMEOUT, pexpect.EOF):
            return
        self.raw += data
        self.stream.feed(data)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def wait_for(self, predicate: Callable[[list[str]], bool], what: str, timeout: float = 15) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if predicate(self.lines()):
                return self.lines()
        raise AssertionError(f"screen never showed {what}:\n" + "\n".join(self.lines()))

    def text(self) -> str:
        """The screen as one string, wrapped lines joined back together."""
        return " ".join(" ".join(self.lines()).split())

    def wait_text(self, text: str, timeout: float = 15) -> list[str]:
        return self.wait_for(lambda _: text in self.text(), repr(text), timeout)

    def input_line(self) -> str:
        """The line the cursor is on: the input line."""
        return self.lines()[self.screen.cursor.y]

    def type(self, keys: str) -> None:
        self.child.send(keys)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()


@pytest.fixture
def broker(make_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    """In-process clients heartbeat only while polled, and these tests spend their time watching a screen."""
    return make_broker(heartbeat_timeout=30)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def factory(
        broker: BrokerProcess, user: str, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
    ) -> Terminal:
        term = Terminal(broker, user, env, extra)
        opened.append(term)
        return term

    yield factory
    for term in opened:
        term.close()


@pytest.mark.slow
def test_incoming_message_never_garbles_the_line_being_typed(broker, connect, terminal):
    bob = connect(broker, "bob")
    alice = terminal(broker, "alice")
    alice.wait_text("logged in as alice")
    wait_for(bob, lambda e: isinstance(e, Joined))
    alice.type("hello wor")
    alice.wait_for(lambda _: alice.input_line() == "alice> hello wor", "the half-typed line")
    bob.send("incoming while you type")
    # The message appears above, and the half-typed line is redrawn intact below it.
    lines = alice.wait_for(
        lambda lines: "bob: incoming while you type" in alice.text() and alice.input_line() == "alice> hello wor",
        "the message above the intact input line",
    )
    message_row = next(i for i, line in enumerate(lines) if "incoming while you type" in line)
    assert alice.screen.cursor.y > message_row
    # Still editable: finish the word, then jump to the start of the line and insert there.
    alice.type("ld")
    alice.type(HOME + ">> ")
    alice.type(LEFT + LEFT + LEFT + "[")  # and a cursor move in the middle
    alice.wait_for(lambda _: alice.input_line() == "alice> [>> hello world", "the edited line")
    alice.type("\r")
    message = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert (message.sender, message.text) == ("alice", "[>> hello world")


@pytest.mark.slow
def test_input_history_recalls_earlier_lines(broker, connect, terminal):
    bob = connect(broker, "bob")
    alice = terminal(broker, "alice")
    alice.wait_text("logged in as alice")
    alice.type("first line\r")
    assert wait_for(bob, lambda e: isinstance(e, ChatMessage)).text == "first line"
    alice.type("\x1b[A")  # up arrow
    alice.wait_for(lambda _: alice.input_line() == "alice> first line", "the recalled line")
    alice.type(" again\r")
    assert wait_for(bob, lambda e: isinstance(e, ChatMessage)).text == "first line again"


@pytest.mark.slow
def test_private_message_reaches_only_its_recipient(broker, connect, terminal):
    bob = connect(broker, "bob")
    carol = connect(broker, "carol")
    alice = terminal(broker, "alice")
    alice.wait_text("logged in as alice")
    alice.type("/msg bob just between us\r")
    message = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert (message.sender, message.text, message.private) == ("alice", "just between us", True)
    alice.wait_text("* (private to bob) just between us")  # once the broker has taken it
    alice.type("/msg nobody hello?\r")
    lines = alice.wait_text("! not delivered: ")
    assert any("not delivered: " in line and line.endswith("'hello?'") for line in lines), lines
    assert "private to nobody" not in alice.text()  # never shown as if sent
    alice.type("for everyone\r")
    assert [e.text for e in collect(carol, 1.0) if isinstance(e, ChatMessage)] == ["for everyone"]
    bob.send("right back at you", to="alice")
    alice.wait_text("(private) bob: right back at you")


@pytest.mark.slow
def test_history_is_shown_first_and_marked(broker, connect, terminal):
    bob = connect(broker, "bob")
    connect(broker, "carol")
    bob.send("said before alice came")
    bob.send("a secret for carol", to="carol")  # private: never in history
    bob.send("also before")
    bob.who()  # a round trip, so the broker has handled everything above
    wait_for(bob, lambda e: type(e).__name__ == "WhoList")
    alice = terminal(broker, "alice")
    lines = alice.wait_text("(history) bob: also before")
    history = [line for line in lines if "(history)" in line]
    assert [line.split("bob: ", 1)[1] for line in history] == ["said before alice came", "also before"]
    bob.send("live now")
    lines = alice.wait_text("bob: live now")
    assert not any("(history) bob: live now" in line for line in lines)


@pytest.mark.slow
def test_a_changed_key_raises_a_loud_warning(broker, connect, terminal, keyring):
    alice = terminal(broker, "alice")
    alice.wait_text("logged in as alice")
    first = connect(broker, "bob")
    alice.wait_text("bob joined")  # alice pins bob's key on first sight
    first.close()
    alice.wait_text("bob left")
    # bob's registration is replaced by another key, and "bob" logs in with it.
    write_public_key(broker.keys.client_public("bob"), keyring.keys["mallory"])  # replaced as make keys does
    connect(broker, "bob", key_path=keyring.private("mallory"))
    alice.wait_text("WARNING: bob now has key")
    assert f"but you pinned {crypto.fingerprint(keyring.keys['bob'])}" in alice.text()
    alice.type("/whois bob\r")
    alice.wait_text("DIFFERENT from the pinned")
    # Checked out of band: /trust pins the new key (no hand-editing of known.json), and the warning is over.
    alice.type("/trust bob\r")
    new = crypto.fingerprint(keyring.keys["mallory"])
    alice.wait_text(f"trusted bob's key {new}")
    known = json.loads(broker.keys.client_private("alice").with_name("alice.known.json").read_text())
    assert known["bob"] == new
    alice.type("/whois bob\r")
    alice.wait_text(f"bob (user) key {new}: pinned")


@pytest.mark.slow
def test_colours_on_a_terminal_and_never_with_no_color(broker, connect, terminal):
    coloured = terminal(broker, "alice")
    coloured.wait_text("logged in as alice")
    assert b"\x1b[2m[" in coloured.raw  # a dim timestamp
    plain = terminal(broker, "carol", env={**run_env(), "NO_COLOR": "1"})
    plain.wait_text("logged in as carol")
    assert b"\x1b[2m[" not in plain.raw


@pytest.mark.slow
def test_the_prompt_counts_the_messages_the_broker_has_not_answered(make_broker, terminal):
    broker = make_broker(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    alice = terminal(broker, "alice")
    alice.wait_text("logged in as alice")
    port = broker.port
    broker.kill()
    alice.type("into the void\r")
    alice.wait_for(lambda _: alice.input_line() == "alice (1 pending)>", "the pending count")
    broker.start(port=port)
    # The client logs in again, sends the message again, and the broker's answer clears the count.
    alice.wait_for(lambda _: alice.input_line() == "alice>", "the prompt without a count", timeout=30)
    assert "not delivered" not in alice.text()


BELL, CTRL_U = b"\x07", "\x15"  # the terminal bell; Ctrl-U empties the input line


@pytest.mark.slow
def test_tab_completes_commands_and_the_names_of_who_is_online(broker, connect, terminal):
    bob = connect(broker, "bob")
    connect(broker, "carol")
    alice = terminal(broker, "alice")
    alice.wait_text("logged in as alice; online: bob, carol")

    def completes(typed: str, expected: str) -> None:
        alice.type(CTRL_U + typed + "\t")
        alice.wait_for(lambda _: alice.input_line() == f"alice> {expected}", f"{typed!r} completed to {expected!r}")

    completes("/ex", "/exit")
    completes("/wh", "/who")  # /who and /whois: the common part, then the choice
    completes("/msg b", "/msg bob")
    completes("/whois c", "/whois carol")
    completes("/trust B", "/trust bob")
    completes("ca", "carol:")  # at the start of a line: whom the message is for
    alice.type("see you\r")
    message = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert message.text == "carol: see you"
    completes("/msg b", "/msg bob")
    alice.type("psst\r")
    message = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert (message.text, message.private) == ("psst", True)
    alice.wait_text("* (private to bob) psst")


def styled(term: Terminal, text: str) -> tuple[bool, bool]:
    """(the author's cells are in reverse video, the text's cells are bold) on the row showing `text`."""
    row = next(y for y, line in enumerate(term.lines()) if text in line)
    start = term.lines()[row].index(text)
    cells = term.screen.buffer[row]
    author = [cells[x] for x in range(start) if cells[x].data not in " []:0123456789*"]
    return all(cell.reverse for cell in author[-3:]), all(cells[x].bold for x in range(start, start + len(text)))


@pytest.mark.slow
def test_a_message_for_me_is_highlighted_and_rings_the_bell(broker, connect, terminal):
    bob = connect(broker, "bob")
    alice = terminal(broker, "alice")
    carol = terminal(broker, "carol", extra=("--no-bell",))
    alice.wait_text("logged in as alice")
    carol.wait_text("logged in as carol")
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "carol")

    bob.send("nothing special here")
    alice.wait_text("bob: nothing special here")
    assert styled(alice, "nothing special here") == (False, False)
    assert BELL not in alice.raw

    bob.send("hey ALICE, look")  # her name as a word, in any case
    alice.wait_for(lambda _: "hey ALICE, look" in alice.text() and BELL in alice.raw, "the highlight and the bell")
    assert styled(alice, "hey ALICE, look") == (True, True)

    bob.send("with malice aforethought")  # not her name
    alice.wait_text("bob: with malice aforethought")
    assert styled(alice, "with malice aforethought") == (False, False)
    assert alice.raw.count(BELL) == 1

    bob.send("just for you", to="alice")  # private: for her too
    alice.wait_for(lambda _: "just for you" in alice.text() and alice.raw.count(BELL) == 2, "a second bell")
    assert styled(alice, "just for you") == (True, True)

    bob.send("carol, are you there?")  # highlighted for carol, who asked for no bell
    carol.wait_text("bob: carol, are you there?")
    assert styled(carol, "carol, are you there?") == (True, True)
    bob.send("carol again, privately", to="carol")
    carol.wait_text("carol again, privately")
    assert BELL not in carol.raw
