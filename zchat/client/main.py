"""The terminal client: one poll loop over the broker's DEALER socket and stdin.

On a terminal it asks for the server address and user name unless given on
the command line (asking again after an answer that cannot be right), and
the input line is edited with prompt_toolkit: incoming messages appear above
it in colour, Tab completes names and commands, and a message that names us
or is private to us is highlighted and rings the bell (unless --no-bell).

With stdin not a terminal it asks nothing. With --user, stdin holds only the
messages, and a missing --host or --port comes from the config file. Without
--user, the first lines are the answers to what would have been asked (server
IP, port and user name, whichever is missing; an empty line takes the
default), then come the messages; a wrong answer is a one-line error. Each
event is printed as one plain line (or, with --json, every line on stdout is
one JSON object: events, and the client's own answers such as help, usage
errors and /whois), and end of input leaves like /exit.
Commands: see COMMANDS.

The broker answers each message we send: until it has, the terminal's prompt
counts it as pending; a message it did not deliver is shown as
`! not delivered: <reason>: <preview>`, a private message once the broker has
taken it as `* (private to bob) <text>`, and one it keeps for someone offline
as `* queued for bob (offline): <preview>`. Piped output shows those lines
too (not the plain acknowledgements); --json prints every answer (`acked`,
`failed`) and a `sent` object naming the id of each message sent.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

import zmq

from zchat import crypto
from zchat.client.core import EXIT_CLOSED, EXIT_OK
from zchat.client.display import Display, for_me
from zchat.client.pins import pins_path_for
from zchat.client.sync_client import ChatClient
from zchat.client.transport import broker_curve_key
from zchat.config import add_location_arguments, client_settings
from zchat.errors import ChatError, ConnectError
from zchat.events import Accepted, Event, Failed, KeyChanged, SessionClosed, Shutdown, to_dict
from zchat.keystore import KeyLayout, create_client_key, lookalike_problem
from zchat.protocol import NAME_PATTERN

log = logging.getLogger(__name__)

STDIN_ENDPOINT = "inproc://chat-client-stdin"
LEAVE_WAIT = 3.0  # seconds /exit waits for the broker to answer the messages sent just before it
PASSPHRASE_TRIES = 3
BELL_INTERVAL = 1.0  # seconds: the terminal bell rings at most this often
COMMANDS: dict[str, tuple[str, str]] = {  # command -> (usage, what it does)
    "/who": ("/who", "list who is online, with key fingerprints"),
    "/whois": ("/whois NAME", "show NAME's full key fingerprint and whether it matches the one you pinned"),
    "/msg": ("/msg NAME TEXT", "send TEXT to NAME only (sealed to NAME's key like every message)"),
    "/me": ("/me TEXT", 'an action line: "* alice TEXT"'),
    "/trust": ("/trust NAME", "accept the key NAME has now, after a key change you checked out of band"),
    "/exit": ("/exit", "leave the chat (also Ctrl-D, or end of input)"),
    "/shutdown": ("/shutdown", "stop the broker (admins only)"),
    "/help": ("/help [COMMAND]", "this list, or one command's help"),
}
# What /help COMMAND adds to the command's line.
COMMAND_DETAILS: dict[str, str] = {
    "/msg": "The broker answers: '* (private to NAME) TEXT' once it has taken the message;\n"
    "'* queued for NAME (offline)' when NAME is offline (kept, sealed to NAME's key, and shown at NAME's\n"
    "next login, for up to mailbox_days); '! not delivered: <reason>' when it cannot (no such user,\n"
    "a full mailbox, too fast). Private messages are never in the room's history.",
    "/whois": "Compare the fingerprint with the one NAME reads out to you, or with `make fingerprint NAME=...`\n"
    "on the broker's machine: the same text means the same key.",
    "/trust": "Only after a key-change warning, and only once NAME has told you, out of band, the new\n"
    "fingerprint /whois shows: the old pin is then replaced and the warning stops.",
    "/exit": "Messages the broker has not answered yet are waited for a moment, then reported.",
    "/shutdown": "Every client is told and exits; the broker keeps the history for its next start.",
}
NAME_COMMANDS = ("/msg", "/whois", "/trust")  # Tab completes a name after these
HELP = "\n".join(
    [
        "commands:",
        *(f"  {usage:<17} {about}" for usage, about in COMMANDS.values()),
        '//TEXT sends "/TEXT"; anything else is sent to everyone else in the room.',
        "On a terminal, Tab completes names and commands.",
    ]
)


class UsageError(ChatError):
    """Something the person typed or configured is wrong; the message says what."""


class Cancelled(ChatError):
    """The person gave up at a prompt (Ctrl-D or Ctrl-C); `status` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------ start-up

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host_problem(host: str) -> str | None:
    """Why `host` cannot be the broker's address (None when it can): an IPv4 address or a host name."""
    try:
        ipaddress.IPv4Address(host)
        return None
    except ValueError:
        pass
    if ":" in host:
        return f"{host!r}: IPv6 addresses are not supported; give an IPv4 address or a host name"
    labels = host.removesuffix(".").split(".")
    if len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
        return None
    return f"{host!r} is not an IPv4 address (like 192.168.1.20) or a host name"


def port_problem(port: str) -> str | None:
    if port.isascii() and port.isdigit() and 0 < int(port) < 65536:
        return None
    return f"port must be a number from 1 to 65535, not {port!r}"


def name_problem(name: str) -> str | None:
    return None if NAME_PATTERN.fullmatch(name) else f"invalid user name {name!r}: use 1-32 of A-Z a-z 0-9 _ -"


def _ask(question: str, default: str | None, problem: Callable[[str], str | None]) -> str:
    """Ask on the terminal until the answer passes `problem`; Ctrl-D or Ctrl-C give up (Cancelled)."""
    prompt = f"{question} [{default}]: " if default else f"{question}: "
    while True:
        try:
            if sys.stdout.isatty():
                answer = input(prompt)
            else:  # stdout may be a pipe for a program (--json): the question is for the person
                sys.stderr.write(prompt)
                sys.stderr.flush()
                answer = input()
        except EOFError:
            sys.stderr.write("\n")
            raise Cancelled(f"cancelled: end of input at the {question.lower()} prompt", 1) from None
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise Cancelled(f"cancelled at the {question.lower()} prompt", 130) from None
        answer = answer.strip() or (default or "")
        trouble = problem(answer) if answer else f"{question.lower()} is required"
        if trouble is None:
            return answer
        print(f"  {trouble}; try again (Ctrl-D gives up)", file=sys.stderr, flush=True)


def _read_answer(question: str, default: str | None, problem: Callable[[str], str | None]) -> str:
    """An answer from piped stdin, one line, in the order the prompts would ask; nothing is asked again."""
    line = sys.stdin.readline()
    if not line:
        raise UsageError(f"end of input where the {question.lower()} was expected (or pass it on the command line)")
    answer = line.strip() or (default or "")
    trouble = problem(answer) if answer else f"{question.lower()} is required"
    if trouble is not None:
        raise UsageError(f"{question.lower()} (line read from stdin): {trouble}")
    return answer


def _load_private_key(path: Path) -> crypto.PrivateKey:
    """Load our key; a passphrase comes from PASSPHRASE or, on a terminal, is asked for (again when wrong)."""
    try:
        encrypted = b"ENCRYPTED" in path.read_bytes()[:200]
    except OSError:
        encrypted = False  # load_private_key reports the problem
    if not encrypted or "PASSPHRASE" in os.environ:
        return crypto.load_private_key(path, os.environ.get("PASSPHRASE") if encrypted else None)
    if not sys.stdin.isatty():
        raise UsageError(f"{path} is protected by a passphrase: set PASSPHRASE or run on a terminal")
    for attempt in range(1, PASSPHRASE_TRIES + 1):
        try:
            passphrase = getpass.getpass(f"Passphrase for {path}: ")
        except EOFError:
            sys.stderr.write("\n")
            raise Cancelled("cancelled: end of input at the passphrase prompt", 1) from None
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise Cancelled("cancelled at the passphrase prompt", 130) from None
        try:
            return crypto.load_private_key(path, passphrase)
        except crypto.KeyFileError as exc:
            if attempt == PASSPHRASE_TRIES:
                raise
            print(f"  {exc}; try again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")  # pragma: no cover


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
    raise UsageError(
        f"key file {path} not found (create it with: make keys NAME={args.user},"
        f" or zchat-keys {args.user} --keys-dir {layout.root})"
    )


def _broker_key_path(args: argparse.Namespace, layout: KeyLayout) -> Path:
    """The broker's public key file to pin; a missing one is a usage error saying where to get it."""
    path = Path(args.broker_key) if args.broker_key else layout.broker_public
    if not path.exists():
        raise UsageError(
            f"{path}: no broker key there: copy keys/broker.pub from the broker's machine"
            " (or give its path with --broker-key; on the broker's machine, start the broker first)"
        )
    return path


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


def start(args: argparse.Namespace) -> ChatClient:
    """Fill in missing answers, load keys and log in."""
    settings = client_settings(args.config, args.keys_dir)
    default_ip, default_port = settings.server_ip, settings.server_port
    layout = KeyLayout(settings.keys_dir)
    if sys.stdin.isatty():
        _broker_key_path(args, layout)  # before any question: no answer could make up for it

    def user_problem(name: str) -> str | None:  # a look-alike of a registered name is asked again too
        return name_problem(name) or lookalike_problem(layout, name)

    if not sys.stdin.isatty() and args.user is not None:  # stdin holds the messages only
        args.host = default_ip if args.host is None else args.host
        args.port = default_port if args.port is None else args.port
    elif not sys.stdin.isatty():  # the first lines answer what a terminal would be asked, in the same order
        if args.host is None:
            args.host = _read_answer("Server IP", default_ip, host_problem)
        if args.port is None:
            args.port = int(_read_answer("Server port", str(default_port), port_problem))
        args.user = _read_answer("Username", None, user_problem)
    else:
        if args.host is None:
            args.host = _ask("Server IP", default_ip, host_problem)
        if args.port is None:
            args.port = int(_ask("Server port", str(default_port), port_problem))
        if args.user is None:
            args.user = _ask("Username", None, user_problem)
    for problem in (host_problem(args.host), port_problem(str(args.port)), name_problem(args.user)):
        if problem is not None:
            raise UsageError(problem)
    key_path = _resolve_key(args, layout)
    broker_key_path = _broker_key_path(args, layout)
    broker_key = crypto.load_public_key_file(broker_key_path)
    broker_curve_key(broker_key, str(broker_key_path))
    key = _load_private_key(key_path)
    client = ChatClient(
        args.host,
        args.port,
        args.user,
        key,
        broker_key,
        connect_timeout=args.connect_timeout,
        pins_path=pins_path_for(key_path),
    )
    try:
        client.login()
    except BaseException:
        client.close(say_bye=False)
        raise
    return client


# ------------------------------------------------------------ the loop


def describe(event: Event, display: Display) -> str | None:
    """The line to show for `event`; None for what needs no line (a plain acknowledgement)."""
    if isinstance(event, Accepted):
        if event.to is None:
            return None
        return display.queued(event.to, event.text) if event.queued else display.private_sent(event.to, event.text)
    if isinstance(event, Failed):
        return display.failed(event.reason, event.text or None)
    return display.format(event)


class Output:
    """Where everything the client shows goes: plain lines, or with --json one JSON object per line.

    Also what the client remembers of what it showed: the keys seen in place of pinned ones (for /trust).
    """

    def __init__(self, display: Callable[[], Display], as_json: bool = False) -> None:
        self.display = display  # called for each line: a terminal's width may have changed
        self.as_json = as_json
        self.changed_keys: dict[str, str] = {}  # name -> the fingerprint seen instead of the pinned one

    def _write(self, line: str) -> None:
        print(line, flush=True)

    def _record(self, record: dict[str, object]) -> None:
        self._write(json.dumps(record, ensure_ascii=False))

    def event(self, event: Event) -> None:
        if isinstance(event, KeyChanged):
            self.changed_keys[event.name] = event.seen
        if self.as_json:
            self._record(to_dict(event))
            return
        line = describe(event, self.display())
        if line is not None:
            self._write(line)

    def sending(self, message_id: str, text: str, to: str | None = None, action: bool = False) -> None:
        """A message went to the broker (it answers later, naming `message_id`)."""
        if self.as_json:
            self._record({"type": "sent", "id": message_id, "text": text, "to": to, "action": action})

    def info(self, text: str) -> None:
        """A local answer to something typed (JSON: a notice with `local`)."""
        if self.as_json:
            self._record({"type": "notice", "message": text, "local": True})
        else:
            self._write(self.display().system(text))

    def warning(self, text: str) -> None:
        """Something typed could not be done: a usage error, an unknown command, a message not sent."""
        if self.as_json:
            self._record({"type": "notice", "message": text, "local": True})
        else:
            self._write(self.display().warning(text))

    def help(self, text: str) -> None:
        if self.as_json:
            self._record({"type": "help", "text": text})
        else:
            self._write(text)

    def whois(self, name: str, bot: bool, fingerprint: str, pinned: str | None, status: str) -> None:
        if self.as_json:
            state = "not pinned" if pinned is None else "pinned" if pinned == fingerprint else "different"
            self._record(
                {"type": "whois", "name": name, "bot": bot, "fingerprint": fingerprint, "pinned": pinned, "pin": state}
            )
        else:
            self._write(self.display().system(f"{name} ({'bot' if bot else 'user'}) key {fingerprint}: {status}"))

    def trusted(self, name: str, fingerprint: str, replaced: str | None) -> None:
        if self.as_json:
            self._record({"type": "trusted", "name": name, "fingerprint": fingerprint, "replaced": replaced})
        else:
            instead = "now pinned" if replaced is None else f"pinned in place of {replaced}"
            self._write(self.display().system(f"trusted {name}'s key {fingerprint} ({instead})"))


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
    display = Display(me=client.name)
    out = Output(lambda: display, as_json)

    def show(event: Event) -> None:
        try:
            out.event(event)
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
            if isinstance(event, SessionClosed):
                return EXIT_CLOSED
            if isinstance(event, Shutdown):
                return EXIT_OK
        if keyboard in ready:
            raw = keyboard.recv()
            if raw == b"" or _command(client, raw.decode("utf-8", errors="replace").strip(), out):
                client.flush(LEAVE_WAIT)
                client.close()
                for event in client.drain():  # messages that will now never be answered
                    show(event)
                return 0


def completions(before: str, names: Iterable[str], me: str) -> list[tuple[str, int, str]]:
    """What Tab offers for the text before the cursor: (text to put in, where it starts (<= 0), shown as).

    A command at the start of the line (`/ex` -> `/exit`); a name after /msg, /whois and /trust; a name as
    `name: ` when the line starts with one. Names are those online, ourselves left out (but for /whois).
    """
    if before.startswith("/") and " " not in before:
        return [
            (command + (" " if " " in usage else ""), -len(before), command)
            for command, (usage, _) in COMMANDS.items()
            if command.startswith(before.lower())
        ]
    command, space, word = before.partition(" ")
    online = sorted(names, key=str.lower)
    if space and command in NAME_COMMANDS and " " not in word:
        return [
            (name + " ", -len(word), name)
            for name in online
            if name.lower().startswith(word.lower()) and (name != me or command == "/whois")
        ]
    if not before.startswith("/") and not space:  # the first word of a message: whom it is for
        return [
            (f"{name}: ", -len(before), name)
            for name in online
            if name != me and name.lower().startswith(before.lower())
        ]
    return []


def run_terminal(client: ChatClient, bell: bool = True) -> int:
    """Chat on a terminal: an input line that incoming messages never garble, with editing, history and Tab.

    One asyncio loop serves both the keyboard (prompt_toolkit) and the broker
    (a task polling the client's socket every few milliseconds).
    """
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion
    from prompt_toolkit.document import Document
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    class ChatCompleter(Completer):
        def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
            for text, start, shown in completions(document.text_before_cursor, client.roster, client.name):
                yield Completion(text, start_position=start, display=shown)

    prompt: PromptSession[str] = PromptSession(
        history=InMemoryHistory(), completer=ChatCompleter(), complete_while_typing=False
    )
    status: list[int] = []
    colour = _colour_wanted()

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
        width = width if width > 0 else shutil.get_terminal_size().columns
        return Display(colour=colour, width=width, me=client.name, hints=True)

    out = Output(display)
    bell_due: list[bool] = []  # a bell waits for BELL_INTERVAL since the last one
    last_bell = [-BELL_INTERVAL]

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
                    out.event(event)
                except Exception as exc:  # one event must never stop the others from being shown
                    _skipped(event, exc)
                if isinstance(event, Shutdown | SessionClosed):
                    finish(EXIT_CLOSED if isinstance(event, SessionClosed) else EXIT_OK)
                    return
            # A bell for a message for us, said now (a replayed past rings nothing); at most one a second, so a
            # flood of them cannot make the terminal ring on and on.
            if bell and any(for_me(event, client.name) and not getattr(event, "history", False) for event in events):
                bell_due.append(True)
            if bell_due and (now := time.monotonic()) - last_bell[0] >= BELL_INTERVAL:
                bell_due.clear()
                last_bell[0] = now
                prompt.app.output.bell()
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
                if _command(client, line.strip(), out):
                    client.flush(LEAVE_WAIT)
                    client.close()
                    for event in client.drain():  # the last answers (Failed: never to be answered)
                        if isinstance(event, Accepted | Failed):
                            out.event(event)
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


def _command(client: ChatClient, line: str, out: Output) -> bool:
    """Act on one input line (what it sends is noted in `out`); True means leave."""
    if not line:
        return False
    if line == "/exit":
        return True
    command, _, rest = line.partition(" ")
    rest = rest.strip()
    try:
        if command == "/help":
            out.help(_help(rest))
        elif command == "/who":
            client.who()
        elif command == "/shutdown":
            client.request_shutdown()
        elif command == "/whois" and rest:
            _whois(client, rest, out)
        elif command == "/trust" and rest:
            _trust(client, rest, out)
        elif command == "/msg" and len(rest.split(maxsplit=1)) == 2:
            to, text = rest.split(maxsplit=1)
            out.sending(client.send(text, to=to), text, to)
        elif command == "/me" and rest:
            out.sending(client.send(rest, action=True), rest, action=True)
        elif command in ("/whois", "/msg", "/me", "/trust"):
            out.warning(f"usage: {COMMANDS[command][0]}")
        elif line.startswith("/") and not line.startswith("//"):
            out.warning(f"unknown command {command}; /help lists the commands")
        else:
            text = line[1:] if line.startswith("//") else line
            out.sending(client.send(text), text)
    except ValueError as exc:
        out.warning(f"not sent: {exc}")
    except ConnectError as exc:
        out.warning(str(exc))
    return False


def _help(topic: str) -> str:
    """The command list, or one command's help (`/help msg` or `/help /msg`)."""
    if not topic:
        return HELP
    command = "/" + topic.removeprefix("/").split()[0].lower()
    if command not in COMMANDS:
        return f"no command {command}; /help lists the commands"
    usage, about = COMMANDS[command]
    details = COMMAND_DETAILS.get(command)
    return f"  {usage:<17} {about}" + (f"\n{details}" if details else "")


def _whois(client: ChatClient, name: str, out: Output) -> None:
    user = client.roster.get(name)
    if user is None:
        out.warning(f"{name} is not online")
        return
    pinned = client.pins.pins.get(name)
    out.whois(name, user.bot, user.fingerprint, pinned, client.pins.status(name, user.fingerprint))


def _trust(client: ChatClient, name: str, out: Output) -> None:
    """Pin the key `name` shows now in place of the one pinned before (the person checked it out of band)."""
    user = client.roster.get(name)
    fingerprint = user.fingerprint if user is not None else out.changed_keys.get(name)
    if fingerprint is None:
        out.warning(f"{name} is not online and showed no new key here; nothing to trust")
        return
    pinned = client.pins.pins.get(name)
    if pinned == fingerprint:
        out.info(f"{name}'s key {fingerprint} is the one pinned already")
        return
    if not client.pins.trust(name, fingerprint):
        out.warning(f"could not write {client.pins.path}: {name}'s new key is trusted for this session only")
    out.changed_keys.pop(name, None)
    out.trusted(name, fingerprint, pinned)


def main(argv: list[str] | None = None) -> int:
    program = Path(sys.argv[0]).name.removesuffix(".py")  # chat_client from the repository, zchat installed
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        client = start(args)
        if sys.stdin.isatty() and sys.stdout.isatty() and not args.json:
            return run_terminal(client, bell=not args.no_bell)
        return run(client, as_json=args.json)
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
