"""The terminal client's program, `main()`: one asyncio loop on `AsyncChatClient` for both of its modes.

On a terminal (stdin and stdout, without --json) the input line is edited with prompt_toolkit: incoming
messages appear above it in colour, Tab completes names and commands, the prompt counts the messages the
broker has not answered yet (`alice (2 pending)> `), and a message that names us or is private to us is
highlighted and rings the bell (at most once a second; never with --no-bell). Piped, stdin is read line
by line in a thread of its own and each event is printed as plain lines, or as JSON with --json (see
`zchat.client.terminal.output`); the start-up questions are `zchat.client.terminal.prompts`.

Either way a `Conversation` runs: it shows the broker's events as the client hands them over, and acts
on each typed line (`zchat.client.terminal.commands`). It ends at /exit, end of input, Ctrl-D or Ctrl-C
(after waiting a moment for the broker's answers to what was sent, then showing what never will be), at
SIGINT when piped (closing at once), or at the broker's shutdown or `closed`
(`zchat.client.running` says with which exit status).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from zchat.client.async_client import AsyncChatClient
from zchat.client.running import EXIT_ERROR, EXIT_OK, LEAVE_WAIT, end_status, leave_async, skipping_bad_frames
from zchat.client.terminal.commands import command, completions
from zchat.client.terminal.display import Display, for_me
from zchat.client.terminal.output import Output
from zchat.client.terminal.prompts import Cancelled, start
from zchat.config import add_location_arguments
from zchat.errors import ChatError, ConnectError
from zchat.events import Event

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

log = logging.getLogger(__name__)

BELL_INTERVAL = 1.0  # seconds: the terminal bell rings at most this often
Lines = asyncio.Queue[str | None]  # the lines typed, None at the end of input


class Conversation:
    """One chat, from the login to its end: the broker's events shown as they come, each typed line acted on.

    This one reads piped lines from a queue; `TerminalConversation` reads them from prompt_toolkit.
    """

    def __init__(self, client: AsyncChatClient, out: Output, lines: Lines | None = None) -> None:
        self.client = client
        self.out = out
        self.lines: Lines = asyncio.Queue() if lines is None else lines
        self.reading: asyncio.Task[str | None] | None = None
        self.interrupted = False
        self.leaving = False

    async def read_line(self) -> str | None:
        """The next line typed; None at the end of input."""
        return await self.lines.get()

    def stop_reading(self, reading: asyncio.Task[str | None]) -> None:
        reading.cancel()

    def shown(self, event: Event) -> None:
        """Called after each event the broker sent was shown."""

    def lost(self, exc: ConnectError) -> int:
        """The client cannot go on (a login again failed for good): piped, an error for main() to report."""
        raise exc

    def interrupt(self) -> None:
        """SIGINT: leave at once, without waiting for the broker's answers; while waiting for them, stop."""
        if self.leaving:
            raise KeyboardInterrupt  # main() says "interrupted", status 130
        self.interrupted = True
        if self.reading is not None:
            self.reading.cancel()

    async def run(self) -> int:
        """Chat until /exit, end of input or the broker's shutdown or `closed`; returns the exit status."""
        receiving: asyncio.Task[Event | None] | None = None
        reading: asyncio.Task[str | None] | None = None
        try:
            while True:
                receiving = receiving or asyncio.create_task(self._next_event())
                reading = self.reading = reading or asyncio.create_task(self.read_line())
                await asyncio.wait({receiving, reading}, return_when=asyncio.FIRST_COMPLETED)
                if receiving.done():  # first: everything the broker said before the line typed
                    status = self._took(receiving)
                    if status is None:
                        status = self._took_waiting()
                    if status is not None:
                        return status
                    receiving = None
                if reading.done():
                    if (status := self._took_waiting()) is not None:
                        return status
                    if self.interrupted:
                        return await self._leave(receiving, 0.0)
                    line = reading.result()
                    if line is None or await command(self.client, line.strip(), self.out):
                        return await self._leave(receiving, LEAVE_WAIT)
                    reading = None
        finally:
            if receiving is not None:
                receiving.cancel()
            if reading is not None and not reading.done():
                self.stop_reading(reading)
            await asyncio.gather(*(task for task in (receiving, reading) if task is not None), return_exceptions=True)

    async def _next_event(self) -> Event | None:
        """The next event; None once the client is closed and every event taken. A bad frame is skipped."""
        while True:
            with skipping_bad_frames(log):
                return await self.client.receive()

    def _took(self, receiving: asyncio.Task[Event | None]) -> int | None:
        """Show what the client handed over; the exit status when it ends the chat."""
        try:
            event = receiving.result()
        except ConnectError as exc:
            return self.lost(exc)
        if event is None:  # closed without a word (there is always one: Shutdown or SessionClosed)
            return EXIT_OK
        self._show(event)
        self.shown(event)
        return end_status(event)

    def _took_waiting(self) -> int | None:
        """Show every event the client holds already, in order; the exit status when one ends the chat."""
        for event in self.client.drain():
            self._show(event)
            self.shown(event)
            if (status := end_status(event)) is not None:
                return status
        return None

    async def _leave(self, receiving: asyncio.Task[Event | None] | None, wait: float) -> int:
        """Wait up to `wait` seconds for the broker's answers, close, and show the last events."""
        if receiving is not None:
            receiving.cancel()  # it has taken nothing: command() never waits; the last events are shown below
        self.leaving = wait > 0
        for event in await leave_async(self.client, wait):
            self._show(event)
        return EXIT_OK

    def _show(self, event: Event) -> None:
        try:
            self.out.event(event)
        except OSError:  # the output itself is gone: nothing more can be shown
            raise
        except Exception as exc:  # one event must never stop the others from being shown
            # One line (a traceback would garble the terminal); %r shows any odd character in the message escaped.
            log.warning("could not show a %s event; skipped it (%r)", type(event).__name__, exc)


class TerminalConversation(Conversation):
    """On a terminal: an input line that incoming messages never garble, with editing, history and Tab."""

    def __init__(self, client: AsyncChatClient, bell: bool = True) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import Completer, Completion
        from prompt_toolkit.history import InMemoryHistory

        class ChatCompleter(Completer):
            def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
                for text, begin, shown in completions(document.text_before_cursor, client.roster, client.name):
                    yield Completion(text, start_position=begin, display=shown)

        super().__init__(client, Output(self.display))
        self.prompt: PromptSession[str] = PromptSession(
            history=InMemoryHistory(), completer=ChatCompleter(), complete_while_typing=False
        )
        self.colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        self.bell = Bell(self.prompt.app.output.bell) if bell else None

    def display(self) -> Display:
        """A display for the terminal's width now: it is read at each print, so a resized window re-wraps."""
        try:
            width = self.prompt.app.output.get_size().columns
        except Exception:  # no terminal to ask (yet): what the environment says
            width = 0
        width = width if width > 0 else shutil.get_terminal_size().columns
        return Display(colour=self.colour, width=width, me=self.client.name, hints=True)

    def prompt_text(self) -> str:
        """`alice> `, or `alice (2 pending)> ` while the broker has not answered two of our messages."""
        waiting = len(self.client.pending)
        return f"{self.client.name} ({waiting} pending)> " if waiting else f"{self.client.name}> "

    async def read_line(self) -> str | None:
        try:
            return await self.prompt.prompt_async(self.prompt_text)
        except (EOFError, KeyboardInterrupt):
            return "/exit"

    def stop_reading(self, reading: asyncio.Task[str | None]) -> None:
        if self.prompt.app.is_running:
            self.prompt.app.exit(exception=EOFError())
        else:
            reading.cancel()

    def shown(self, event: Event) -> None:
        # A bell for a message for us, said now (a replayed past rings nothing).
        if self.bell is not None and for_me(event, self.client.name) and not getattr(event, "history", False):
            self.bell.ring()
        if self.prompt.app.is_running:
            self.prompt.app.invalidate()  # the pending count in the prompt may have changed

    def lost(self, exc: ConnectError) -> int:
        print(self.display().warning(str(exc)), flush=True)
        return EXIT_ERROR

    async def run(self) -> int:
        from prompt_toolkit.patch_stdout import patch_stdout

        with patch_stdout(raw=True):
            return await super().run()


class Bell:
    """The terminal bell, at most once per `interval`: a flood of messages for us cannot make it ring on and on.

    A bell asked for within the interval rings when it is over (once, however many were asked for).
    """

    def __init__(self, sound: Callable[[], None], interval: float = BELL_INTERVAL) -> None:
        self.sound = sound
        self.interval = interval
        self.last = -interval
        self.due: asyncio.TimerHandle | None = None

    def ring(self) -> None:
        if self.due is not None:
            return  # one is on its way
        wait = self.last + self.interval - time.monotonic()
        if wait <= 0:
            self._ring()
        else:
            self.due = asyncio.get_running_loop().call_later(wait, self._ring)

    def _ring(self) -> None:
        self.due = None
        self.last = time.monotonic()
        self.sound()


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: Lines, stream: TextIO) -> None:
    """Hand each line of `stream` to the loop (None at the end), from a thread of its own."""

    def put(line: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        except RuntimeError:  # the loop is closed: the chat is over
            return False
        return True

    try:
        for line in stream:
            if not put(line.rstrip("\r\n").encode("utf-8", errors="surrogateescape").decode("utf-8", "replace")):
                return
    except (OSError, ValueError):
        pass
    put(None)


async def run_piped(client: AsyncChatClient, as_json: bool = False, lines: Lines | None = None) -> int:
    """Chat with stdin not a terminal: its lines (or `lines`) are typed, every event is printed."""
    display = Display(me=client.name)
    conversation = Conversation(client, Output(lambda: display, as_json), lines)
    if lines is None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=_read_stdin, args=(loop, conversation.lines, sys.stdin), daemon=True).start()
    if threading.current_thread() is not threading.main_thread():
        return await conversation.run()
    previous = signal.getsignal(signal.SIGINT)
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, conversation.interrupt)
    try:
        return await conversation.run()
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)


async def chat(client: AsyncChatClient, terminal: bool, as_json: bool = False, bell: bool = True) -> int:
    """Log in and chat, on a terminal or piped; returns the exit status."""
    await client.login()
    try:
        if terminal:
            return await TerminalConversation(client, bell).run()
        return await run_piped(client, as_json)
    finally:
        await client.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Encrypted group chat client.",
        epilog="With stdin not a terminal nothing is asked. With --user, --host and --port default to server_ip "
        "and server_port from the config file. Without --user, the first lines of stdin answer what would be "
        "asked (server IP, port, user name: whichever is missing), then come the messages.",
    )
    parser.add_argument("--host", help="broker IPv4 address or host name (asked on a terminal, else from --config)")
    parser.add_argument("--port", type=int, help="broker port (asked on a terminal, else from --config)")
    parser.add_argument("--user", help="your user name (asked on a terminal, else read from stdin's first lines)")
    parser.add_argument("--key", help="your private key (default: KEYS_DIR/private/USER.pem)")
    parser.add_argument("--broker-key", help="the broker's public key (default: KEYS_DIR/broker.pub)")
    add_location_arguments(parser)
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the broker at start (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line, nothing else (scripts)")
    parser.add_argument("--no-bell", action="store_true", help="never ring the terminal bell for a message to you")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    program = Path(sys.argv[0]).name.removesuffix(".py")  # chat_client from the repository, zchat installed
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        client = start(args)
        terminal = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
        return asyncio.run(chat(client, terminal, as_json=args.json, bell=not args.no_bell))
    except Cancelled as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return exc.status
    except (ChatError, FileExistsError) as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{program}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
