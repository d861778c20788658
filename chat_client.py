"""The terminal client: one poll loop over the broker's DEALER socket and stdin.

Prompts for the server address and user name unless given on the command
line. On a terminal, the input line is edited with prompt_toolkit and
incoming messages appear above it in colour; with stdin or stdout piped,
prompt answers and messages are read line by line, each event is printed as
one plain line (or, with --json, one JSON object), and end of input leaves
like /exit. Commands: see HELP.

The broker answers each message we send: until it has, the terminal's prompt
counts it as pending; a message it did not deliver is shown as
`! not delivered: <reason>: <preview>`, and a private message it keeps for
someone offline as `* queued for bob (offline): <preview>`. Piped output shows
those two lines too (not the plain acknowledgements); --json prints every answer
(`acked`, `failed`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import TextIO

import zmq

import crypto
from chat.client import ChatClient
from chat.config import DEFAULT_CONFIG, load_config
from chat.display import Display
from chat.errors import ConfigError, ConnectError, LocalProtocolError
from chat.events import Accepted, Event, Failed, SessionClosed, Shutdown, to_dict
from chat.keystore import KeyLayout, create_client_key
from chat.protocol import NAME_PATTERN

log = logging.getLogger(__name__)

STDIN_ENDPOINT = "inproc://chat-client-stdin"
LEAVE_WAIT = 3.0  # seconds /exit waits for the broker to answer the messages sent just before it
HELP = """commands:
  /who              list who is online, with key fingerprints
  /whois NAME       show NAME's full key fingerprint and whether it matches the one you pinned
  /msg NAME TEXT    send TEXT to NAME only (sealed to NAME's key like every message)
  /me TEXT          an action line: "* alice TEXT"
  /exit             leave the chat (also Ctrl-D, or end of input)
  /shutdown         stop the broker (admins only)
  /help             this list
//TEXT sends "/TEXT"; anything else is sent to everyone else in the room"""


class UsageError(Exception):
    """Something the person typed or configured is wrong; the message says what."""


# ------------------------------------------------------------ start-up


def _ask(question: str, default: str | None) -> str:
    prompt = f"{question} [{default}]: " if default else f"{question}: "
    if sys.stdin.isatty():
        answer = input(prompt)
    else:
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise UsageError(f"no answer for {question.lower()!r}: input ended")
        answer = line.rstrip("\r\n")
    answer = answer.strip()
    if not answer and default is None:
        raise UsageError(f"{question.lower()} is required")
    return answer or str(default)


def _passphrase(path: Path) -> str | None:
    try:
        encrypted = b"ENCRYPTED" in path.read_bytes()[:200]
    except OSError:
        return None  # load_private_key reports the problem
    if not encrypted:
        return None
    if "PASSPHRASE" in os.environ:
        return os.environ["PASSPHRASE"]
    if sys.stdin.isatty():
        return getpass.getpass(f"Passphrase for {path}: ")
    raise UsageError(f"{path} is protected by a passphrase: set PASSPHRASE or run on a terminal")


def _resolve_key(args: argparse.Namespace, layout: KeyLayout) -> Path:
    """The private key to use; on the broker's machine, a new name gets a key created and registered."""
    if args.key:
        return Path(args.key)
    path = layout.client_private(args.user)
    if path.exists():
        return path
    if layout.broker_private.exists() and not layout.client_public(args.user).exists():
        fp = create_client_key(layout, args.user, os.environ.get("PASSPHRASE") or None)
        print(
            f"* created a key for {args.user}: {path} (registered as {layout.client_public(args.user)}, {fp})",
            file=sys.stderr,
        )
        return path
    raise UsageError(f"key file {path} not found (create it with: make keys NAME={args.user})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Encrypted group chat client.")
    parser.add_argument("--host", help="broker IP address (asked if missing)")
    parser.add_argument("--port", type=int, help="broker port (asked if missing)")
    parser.add_argument("--user", help="your user name (asked if missing)")
    parser.add_argument("--key", help="your private key (default: keys/private/USER.pem)")
    parser.add_argument("--broker-key", help="the broker's public key (default: keys/broker.pub)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="where the default address comes from")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for the broker at start")
    parser.add_argument("--json", action="store_true", help="print one JSON object per event (for scripts)")
    return parser.parse_args(argv)


def start(args: argparse.Namespace) -> ChatClient:
    """Fill in missing answers, load keys and log in."""
    default_ip, default_port, keys_dir = "127.0.0.1", 5000, Path("keys")
    if args.config.exists() or args.config != DEFAULT_CONFIG:
        config = load_config(args.config)
        default_ip, default_port, keys_dir = config.server_ip, config.server_port, config.keys_dir
    if args.host is None:
        args.host = _ask("Server IP", default_ip)
    if args.port is None:
        answer = _ask("Server port", str(default_port))
        if not answer.isdigit() or not 0 < int(answer) < 65536:
            raise UsageError(f"port must be a number from 1 to 65535, not {answer!r}")
        args.port = int(answer)
    if args.user is None:
        args.user = _ask("Username", None)
    if not NAME_PATTERN.fullmatch(args.user):
        raise UsageError(f"invalid user name {args.user!r}: use 1-32 of A-Z a-z 0-9 _ -")
    layout = KeyLayout(keys_dir)
    key_path = _resolve_key(args, layout)
    broker_key_path = Path(args.broker_key) if args.broker_key else layout.broker_public
    return ChatClient.connect(
        args.host,
        args.port,
        args.user,
        key_path,
        broker_key_path,
        passphrase=_passphrase(key_path),
        connect_timeout=args.connect_timeout,
    )


# ------------------------------------------------------------ the loop


class Sent:
    """Our messages the broker has not answered yet (id -> text and recipient), so its answer can name them."""

    def __init__(self) -> None:
        self.waiting: dict[str, tuple[str, str | None]] = {}

    def add(self, message_id: str, text: str, to: str | None = None) -> None:
        self.waiting[message_id] = (text, to)

    def describe(self, event: Event, display: Display) -> str | None:
        """The line to show for `event`; None for what needs no line (a plain acknowledgement)."""
        if isinstance(event, Accepted):
            text, to = self.waiting.pop(event.message_id, ("", None))
            return display.queued(to, text) if event.queued and to is not None else None
        if isinstance(event, Failed):
            message = self.waiting.pop(event.message_id, None)
            return display.failed(event.reason, None if message is None else message[0])
        return display.format(event)


def _stdin_reader(context: zmq.Context[zmq.Socket[bytes]], stream: TextIO) -> None:
    """Forward each input line to the poll loop; an empty message means end of input."""
    try:
        sock = context.socket(zmq.PAIR)
    except zmq.ZMQError:  # run() has already returned and closed the context
        return
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(STDIN_ENDPOINT)
        try:
            for line in stream:
                sock.send(line.rstrip("\r\n").encode("utf-8", errors="surrogateescape") or b"\n")
        except (OSError, ValueError):
            pass
        sock.send(b"")
    except zmq.ZMQError:  # likewise
        pass
    finally:
        sock.close()


def run(client: ChatClient, as_json: bool = False) -> int:
    """Chat until /exit, end of input, or the broker's shutdown, reading lines from stdin. Returns the exit status."""
    stdin_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    keyboard = stdin_context.socket(zmq.PAIR)
    keyboard.setsockopt(zmq.LINGER, 0)
    keyboard.bind(STDIN_ENDPOINT)
    threading.Thread(target=_stdin_reader, args=(stdin_context, sys.stdin), daemon=True).start()
    try:
        return _run(client, keyboard, as_json)
    finally:
        keyboard.close(linger=0)
        stdin_context.destroy(linger=0)


def _run(client: ChatClient, keyboard: zmq.Socket[bytes], as_json: bool) -> int:
    display = Display()
    sent = Sent()

    def show(event: Event) -> None:
        try:
            line = json.dumps(to_dict(event), ensure_ascii=False) if as_json else sent.describe(event, display)
            if line is not None:
                print(line, flush=True)
        except OSError:  # the output itself is gone: nothing more can be shown
            raise
        except Exception as exc:  # one event must never stop the others from being shown
            _skipped(event, exc)

    for event in client.drain():
        show(event)
    while True:
        try:
            ready = _poll(client, 1.0, [keyboard])
        except KeyboardInterrupt:
            client.close()
            for event in client.drain():
                show(event)
            return 0
        for event in client.drain():
            show(event)
            if isinstance(event, Shutdown | SessionClosed):
                return 0
        if keyboard in ready:
            raw = keyboard.recv()
            if raw == b"" or _command(client, raw.decode("utf-8", errors="replace").strip(), display, sent):
                client.flush(LEAVE_WAIT)
                client.close()
                for event in client.drain():  # messages that will now never be answered
                    show(event)
                return 0


def run_terminal(client: ChatClient) -> int:
    """Chat on a terminal: an input line that incoming messages never garble, with editing and history.

    One asyncio loop serves both the keyboard (prompt_toolkit) and the broker
    (a task polling the client's socket every few milliseconds).
    """
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    prompt: PromptSession[str] = PromptSession(history=InMemoryHistory())
    status: list[int] = []
    colour = _colour_wanted()
    sent = Sent()

    def prompt_text() -> str:
        """`alice> `, or `alice (2 pending)> ` while the broker has not answered two of our messages."""
        waiting = len(client.pending)
        return f"{client.name} ({waiting} pending)> " if waiting else f"{client.name}> "

    def display() -> Display:
        """A display for the terminal's width now: it is read at each print, so a resized window re-wraps."""
        try:
            width = prompt.app.output.get_size().columns
        except Exception:  # no terminal to ask (yet): what the environment says
            width = 0
        return Display(colour=colour, width=width if width > 0 else shutil.get_terminal_size().columns)

    def finish(code: int) -> None:
        status.append(code)
        if prompt.app.is_running:
            prompt.app.exit(exception=EOFError())

    async def pump() -> None:
        while not status:
            try:
                _poll(client, 0)
            except ConnectError as exc:
                print(display().warning(str(exc)), flush=True)
                finish(1)
                return
            events = client.drain()
            for event in events:
                try:
                    line = sent.describe(event, display())
                    if line is not None:
                        print(line, flush=True)
                except Exception as exc:  # one event must never stop the others from being shown
                    _skipped(event, exc)
                if isinstance(event, Shutdown | SessionClosed):
                    finish(0)
                    return
            if events and prompt.app.is_running:
                prompt.app.invalidate()  # the pending count in the prompt may have changed
            await asyncio.sleep(0.02)

    async def chat() -> int:
        with patch_stdout(raw=True):
            task = asyncio.create_task(pump())
            while not status:
                try:
                    line = await prompt.prompt_async(prompt_text)
                except (EOFError, KeyboardInterrupt):
                    line = "/exit"
                if status:
                    break
                if _command(client, line.strip(), display(), sent):
                    client.flush(LEAVE_WAIT)
                    client.close()
                    for event in client.drain():  # the last answers (Failed: never to be answered)
                        if isinstance(event, Accepted | Failed) and (shown := sent.describe(event, display())):
                            print(shown, flush=True)
                    finish(0)
            await task
        return status[0]

    return asyncio.run(chat())


def _poll(client: ChatClient, timeout: float, also: list[zmq.Socket[bytes]] | None = None) -> list[zmq.Socket[bytes]]:
    """client.poll(), except that a frame it fails to decode is logged and dropped instead of ending the client."""
    try:
        return client.poll(timeout, also=also or [])
    except ConnectError:
        raise
    except Exception as exc:
        log.warning("could not take in a message from the broker; skipped it (%r)", exc)
        return []


def _skipped(event: Event, exc: Exception) -> None:
    # One line (a traceback would garble the terminal); %r shows any odd character in the message escaped.
    log.warning("could not show a %s event; skipped it (%r)", type(event).__name__, exc)


def _colour_wanted() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _command(client: ChatClient, line: str, display: Display, sent: Sent) -> bool:
    """Act on one input line (what it sends is noted in `sent`); True means leave."""
    if not line:
        return False
    if line == "/exit":
        return True
    command, _, rest = line.partition(" ")
    rest = rest.strip()
    try:
        if command == "/help":
            print(HELP, flush=True)
        elif command == "/who":
            client.who()
        elif command == "/shutdown":
            client.request_shutdown()
        elif command == "/whois" and rest:
            print(_whois(client, rest, display), flush=True)
        elif command == "/msg" and len(rest.split(maxsplit=1)) == 2:
            to, text = rest.split(maxsplit=1)
            sent.add(client.send(text, to=to), text, to)
            print(display.system(f"(private to {to}) {text}"), flush=True)
        elif command == "/me" and rest:
            sent.add(client.send(rest, action=True), rest)
        elif command in ("/whois", "/msg", "/me"):
            print(display.warning(f"usage: {_usage(command)}"), flush=True)
        elif line.startswith("/") and not line.startswith("//"):
            print(display.warning(f"unknown command {command}; /help lists the commands"), flush=True)
        else:
            text = line[1:] if line.startswith("//") else line
            sent.add(client.send(text), text)
    except ValueError as exc:
        print(display.warning(f"not sent: {exc}"), flush=True)
    except ConnectError as exc:
        print(display.warning(str(exc)), flush=True)
    return False


def _usage(command: str) -> str:
    return next(row.strip() for row in HELP.splitlines() if row.strip().startswith(command + " "))


def _whois(client: ChatClient, name: str, display: Display) -> str:
    user = client.roster.get(name)
    if user is None:
        return display.warning(f"{name} is not online")
    kind = "bot" if user.bot else "user"
    return display.system(f"{name} ({kind}) key {user.fingerprint}: {client.pins.status(name, user.fingerprint)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        client = start(args)
        if sys.stdin.isatty() and sys.stdout.isatty() and not args.json:
            return run_terminal(client)
        return run(client, as_json=args.json)
    except (UsageError, ConfigError, ConnectError, crypto.KeyFileError, LocalProtocolError, FileExistsError) as exc:
        print(f"chat_client: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
