"""The drivers contain per-event failures: the bot runner, the piped client loop and the archive bot.

No sockets: a stand-in client hands the real loops their events.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import signal
from collections import deque
from collections.abc import Iterator

import pytest

import zchat.client.terminal.app as chat_client
from bots.archive import Archive
from zchat.client import bot
from zchat.client.terminal import output
from zchat.client.terminal.display import Display
from zchat.events import ChatMessage, Event, Notice, Shutdown


class FakeClient:
    """What the loops use of ChatClient: events come from a script; a step may be an exception to raise."""

    name = "bob"  # who the piped client is logged in as (a message naming bob is one for us)

    def __init__(self, *steps: Event | Exception) -> None:
        self.steps: deque[Event | Exception] = deque(steps)
        self.sent: list[tuple[str, str | None]] = []
        self.closed = False

    # the bot runner's side
    def receive(self, timeout: float | None = None) -> Event | None:
        if not self.steps:
            self.closed = True
            return None
        step = self.steps.popleft()
        if isinstance(step, Exception):
            raise step
        return step

    def send(self, text: str, *, to: str | None = None, action: bool = False) -> str:
        self.sent.append((text, to))
        return f"id{len(self.sent)}"

    @property
    def pending(self) -> tuple[str, ...]:
        return ()

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, say_bye: bool = True) -> None:
        self.closed = True

    def drain(self) -> list[Event]:
        events: list[Event] = []
        while self.steps and not isinstance(self.steps[0], Exception):
            events.append(self.steps.popleft())  # type: ignore[arg-type]
        return events


class AsyncFakeClient(FakeClient):
    """The piped client's side: what it uses of AsyncChatClient, over the same script."""

    async def receive(self, timeout: float | None = None) -> Event | None:  # type: ignore[override]
        return FakeClient.receive(self, timeout)

    async def flush(self, timeout: float) -> bool:  # type: ignore[override]
        return True

    async def close(self, say_bye: bool = True) -> None:  # type: ignore[override]
        self.closed = True


@pytest.fixture
def restored_signals() -> Iterator[None]:
    """run_bot installs its own SIGINT/SIGTERM handlers; put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def message(text: str, sender: str = "alice", timestamp: float = 1_700_000_000.0) -> ChatMessage:
    return ChatMessage(sender, text, timestamp)


def test_bot_runner_skips_an_event_its_handler_fails_on(monkeypatch, caplog, restored_signals):
    client = FakeClient(
        message("boom"),
        RuntimeError("a frame the client could not take in"),
        message("fine"),
        Notice("hello"),
        message("again"),
        Shutdown("admin"),
        message("never reached"),
    )
    monkeypatch.setattr(bot, "connect_bot", lambda args: client)
    seen: list[str] = []

    def handle(event: Event) -> str | None:
        if isinstance(event, ChatMessage):
            if event.text == "boom":
                raise ValueError("the handler failed on purpose")
            seen.append(event.text)
            return f"got {event.text}"
        raise KeyError("not a chat message")

    args = bot.bot_arguments("tester").parse_args([])
    with caplog.at_level(logging.WARNING, logger="zchat.client.bot"):
        assert bot.run_bot(args, handle) == 0
    assert seen == ["fine", "again"]
    assert client.sent == [("got fine", None), ("got again", None)]
    assert client.closed
    failures = [r for r in caplog.records if r.name == "zchat.client.bot" and r.levelno >= logging.WARNING]
    assert len(failures) == 3, [r.getMessage() for r in failures]  # boom, the bad frame, the Notice


@pytest.mark.parametrize("timestamp", [1e300, -1e300, 1e20, math.nan, math.inf])
def test_archive_bot_records_a_message_with_an_impossible_time(timestamp):
    stream = io.StringIO()
    archive = Archive(stream)
    assert archive(message("from nowhere", timestamp=timestamp)) is None
    assert archive(message("next")) is None
    first, second = (json.loads(line, parse_constant=pytest.fail) for line in stream.getvalue().splitlines())
    assert first["text"] == "from nowhere"
    assert first["time"] is None
    assert first["ts"] is None or first["ts"] == timestamp
    assert second["text"] == "next"
    assert second["time"]
    assert second["ts"] == 1_700_000_000.0


def test_archive_bot_records_the_brokers_time():
    stream = io.StringIO()
    Archive(stream)(ChatMessage("alice", "hi", 1e300, received=1_700_000_000.0))
    record = json.loads(stream.getvalue())
    assert record["ts"] == 1_700_000_000.0
    assert record["time"]


@pytest.mark.parametrize("as_json", [False, True])
def test_piped_client_skips_an_event_it_cannot_show_and_shows_the_next(monkeypatch, capsys, caplog, as_json):
    original = Display.format

    def failing_format(self: Display, event: Event) -> str:
        if isinstance(event, ChatMessage) and event.text == "boom":
            raise RuntimeError("the display failed on purpose")
        return original(self, event)

    monkeypatch.setattr(Display, "format", failing_format)
    real_to_dict = output.to_dict

    def failing_to_dict(event: Event) -> dict[str, object]:
        if isinstance(event, ChatMessage) and event.text == "boom":
            raise RuntimeError("the JSON encoding failed on purpose")
        return real_to_dict(event)

    monkeypatch.setattr(output, "to_dict", failing_to_dict)
    client = AsyncFakeClient(
        message("before"),
        message("far future", timestamp=1e300),
        message("boom"),
        message("after"),
        RuntimeError("a frame the client could not take in"),
        message("later"),
        Shutdown("admin"),
    )
    with caplog.at_level(logging.WARNING, logger="zchat.client.terminal.app"):
        nothing_typed: asyncio.Queue[str | None] = asyncio.Queue()
        assert asyncio.run(chat_client.run_piped(client, as_json=as_json, lines=nothing_typed)) == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out.splitlines()
    texts = [line for line in out if "alice" in line]
    assert len(texts) == 4, out
    assert "boom" not in "".join(out)
    for expected, line in zip(("before", "far future", "after", "later"), texts, strict=True):
        assert expected in line
    assert len([r for r in caplog.records if r.name == "zchat.client.terminal.app"]) == 2


def test_ctrl_c_while_exit_waits_for_the_brokers_answers_stops_at_once():
    class Unanswered(AsyncFakeClient):
        async def receive(self, timeout: float | None = None) -> Event | None:  # type: ignore[override]
            await asyncio.Event().wait()  # the broker says nothing
            return None

        async def flush(self, timeout: float) -> bool:  # type: ignore[override]
            conversation.interrupt()  # Ctrl-C while /exit waits for the broker's answers
            return False

    typed: asyncio.Queue[str | None] = asyncio.Queue()
    typed.put_nowait("/exit")
    conversation = chat_client.Conversation(Unanswered(), output.Output(Display), typed)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):  # main() says "interrupted", status 130, as it always did
        asyncio.run(conversation.run())


def test_ctrl_c_before_exit_leaves_at_once_with_status_0():
    typed: asyncio.Queue[str | None] = asyncio.Queue()
    conversation = chat_client.Conversation(AsyncFakeClient(), output.Output(Display), typed)  # type: ignore[arg-type]
    conversation.interrupt()
    assert asyncio.run(conversation.run()) == 0
