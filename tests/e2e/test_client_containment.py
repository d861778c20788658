"""One event never kills or deafens chat_client.py: an impossible time, or a failure showing one message.

The client runs as its own process, piped and in a pseudo-terminal; a launcher makes its display fail on
the message "boom" (and only on that one), the way an unforeseen bug would.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import pexpect
import pyte
import pytest
import wcwidth

from tests.conftest import BrokerProcess, run_env, wait_for
from tests.e2e.helpers import Proc
from tests.e2e.test_terminal import COLUMNS, ROWS, Terminal
from zchat.events import Joined

# chat_client.main() with Display.format failing on one message.
LAUNCH = """
import sys
import zchat.client.terminal.display

original = zchat.client.terminal.display.Display.format

def format(self, event):
    if getattr(event, "text", None) == "boom":
        raise RuntimeError("the display failed on purpose")
    return original(self, event)

zchat.client.terminal.display.Display.format = format
import zchat.client.terminal.app as chat_client
sys.exit(chat_client.main(sys.argv[1:]))
"""


def client_args(broker: BrokerProcess, user: str) -> list[str]:
    return ["-c", LAUNCH, "--host", "127.0.0.1", "--port", str(broker.port), "--user", user]


def send_from_the_far_future(alice, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed message whose author claims the time 1e300 (a broker may refuse it; a client must survive it).

    A broker that refuses it also refuses what the author sends next (out of sequence), so others speak next.
    """
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: 1e300)
        alice.send(text)


@pytest.mark.slow
def test_piped_client_survives_an_impossible_time_and_a_failing_display(broker, spawn, connect, monkeypatch):
    bob: Proc = spawn(client_args(broker, "bob"), broker.workdir, name="bob")
    bob.expect_line(r"\* logged in as bob")
    alice = connect(broker, "alice")
    send_from_the_far_future(alice, "from the far future", monkeypatch)
    carol = connect(broker, "carol")
    carol.send("boom")
    carol.send("after boom")
    bob.expect_line(r"^\[\d\d:\d\d:\d\d\] carol: after boom$")
    assert bob.alive(), bob.transcript()
    bob.expect_err(r"skipped")
    assert not [line for line in bob.out.lines if line.endswith("carol: boom")]
    bob.close_stdin()
    assert bob.wait() == 0, bob.transcript()
    assert "Traceback" not in bob.err.text(), bob.transcript()


def test_json_client_survives_an_impossible_time(broker, spawn, connect, monkeypatch):
    bob: Proc = spawn([*client_args(broker, "bob"), "--json"], broker.workdir, name="bob")
    bob.expect_line(r'"type": "welcome"')
    alice = connect(broker, "alice")
    send_from_the_far_future(alice, "from the far future", monkeypatch)
    connect(broker, "carol").send("next")
    assert isinstance(json.loads(bob.expect_line(r'"text": "next"').string)["ts"], float)
    for line in bob.out.lines:  # shown (if the broker let it through) as valid JSON
        record = json.loads(line, parse_constant=pytest.fail)
        assert record.get("ts", 0.0) is None or isinstance(record.get("ts", 0.0), float)
    bob.close_stdin()
    assert bob.wait() == 0, bob.transcript()


class LaunchedTerminal(Terminal):
    """test_terminal's Terminal, running the launcher instead of chat_client.py."""

    def __init__(self, broker: BrokerProcess, user: str) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.child = pexpect.spawn(
            sys.executable,
            client_args(broker, user),
            cwd=str(broker.workdir),
            env=run_env(),
            dimensions=(ROWS, COLUMNS),
        )


@pytest.fixture
def launched() -> Callable[[BrokerProcess, str], LaunchedTerminal]:
    opened: list[LaunchedTerminal] = []

    def factory(broker: BrokerProcess, user: str) -> LaunchedTerminal:
        term = LaunchedTerminal(broker, user)
        opened.append(term)
        return term

    yield factory
    for term in opened:
        term.close()


@pytest.fixture
def broker(make_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    """In-process clients heartbeat only while polled, and these tests spend their time watching a screen."""
    return make_broker(heartbeat_timeout=30)


@pytest.mark.slow
def test_terminal_keeps_receiving_after_an_impossible_time_and_a_failing_display(
    broker, connect, launched, monkeypatch
):
    bob = connect(broker, "bob")
    alice = launched(broker, "alice")
    alice.wait_text("logged in as alice")
    wait_for(bob, lambda e: isinstance(e, Joined))
    send_from_the_far_future(bob, "from the far future", monkeypatch)
    carol = connect(broker, "carol")
    carol.send("boom")
    carol.send("after boom")
    alice.wait_text("carol: after boom")
    assert alice.child.isalive()
    assert "carol: boom" not in alice.text()


@pytest.mark.slow
def test_terminal_rewraps_at_the_new_width_after_a_resize(broker, connect, launched):
    bob = connect(broker, "bob")
    alice = launched(broker, "alice")
    alice.wait_text("logged in as alice")
    wait_for(bob, lambda e: isinstance(e, Joined))
    narrow = 60
    # Nothing to wait for: the window has its new size once setwinsize returns, and the client asks the
    # terminal for its width at each message it prints.
    alice.child.setwinsize(ROWS, narrow)
    bob.send("字" * 40 + " [14:02:11] carol: " + "wide " * 12 + "end")
    lines = alice.wait_for(lambda _: "end" in alice.text() and "carol" in alice.text(), "the wrapped message")
    first = next(i for i, line in enumerate(lines) if "bob: " in line)
    last = next(i for i, line in enumerate(lines) if line.rstrip().endswith("end"))
    message = lines[first : last + 1]
    assert len(message) >= 3, message
    for line in message:
        assert wcwidth.wcswidth(line) <= narrow, message
    for line in message[1:]:
        assert line.startswith(" "), message
