"""The terminal client: one poll loop over the broker's DEALER socket and stdin.

Prompts for the server address and user name unless given on the command
line; prints each event as one line (or, with --json, as one JSON object per
line); reads lines to send. Commands: /help, /who, /exit, /shutdown. With
stdin piped, prompt answers and messages are read line by line, and end of
input leaves like /exit.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import zmq

import crypto
from chat.client import ChatClient
from chat.config import DEFAULT_CONFIG, load_config
from chat.errors import ConfigError, ConnectError, LocalProtocolError
from chat.events import (
    ChatMessage,
    ConnectionLost,
    Event,
    Joined,
    Left,
    Notice,
    SessionClosed,
    Shutdown,
    Welcome,
    WhoList,
    to_dict,
)
from chat.keystore import KeyLayout, create_client_key
from chat.protocol import NAME_PATTERN

STDIN_ENDPOINT = "inproc://chat-client-stdin"
HELP = """commands:
  /who        list who is online, with key fingerprints
  /exit       leave the chat
  /shutdown   stop the broker (admins only)
  /help       this list
anything else is sent to everyone else in the room"""


class UsageError(Exception):
    """Something the person typed or configured is wrong; the message says what."""


# ------------------------------------------------------------ formatting


def _clock(timestamp: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def _short(fingerprint: str) -> str:
    return fingerprint[:23]


def format_event(event: Event) -> str:
    """One or more lines for a person; a chat message is always exactly one line."""
    if isinstance(event, ChatMessage):
        return f"[{_clock(event.timestamp)}] {event.sender}: {event.text}"
    if isinstance(event, Welcome):
        others = [u.name for u in event.users if u.name != event.name]
        online = ", ".join(others) or "nobody else"
        return f"[{_clock()}] * logged in as {event.name}; online: {online} (/help for commands)"
    if isinstance(event, Joined):
        kind = "bot " if event.user.bot else ""
        return f"[{_clock()}] * {kind}{event.user.name} joined ({_short(event.user.fingerprint)})"
    if isinstance(event, Left):
        return f"[{_clock()}] * {event.name} left ({event.reason})"
    if isinstance(event, WhoList):
        rows = [f"  {u.name:<32} {u.fingerprint}{'  (bot)' if u.bot else ''}" for u in event.users]
        return f"[{_clock()}] * {len(event.users)} online:\n" + "\n".join(rows)
    if isinstance(event, Notice):
        return f"[{_clock()}] ! {event.message}"
    if isinstance(event, Shutdown):
        return f"[{_clock()}] * the broker is shutting down ({event.by}); goodbye"
    if isinstance(event, SessionClosed):
        return f"[{_clock()}] ! the broker closed this session: {event.reason}; goodbye"
    if isinstance(event, ConnectionLost):
        return f"[{_clock()}] ! connection lost: {event.reason}; retrying in {event.retry_in:g}s"
    return f"[{_clock()}] * {event}"


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


def _stdin_reader(context: zmq.Context[zmq.Socket[bytes]], stream: TextIO) -> None:
    """Forward each input line to the poll loop; an empty message means end of input."""
    sock = context.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(STDIN_ENDPOINT)
    try:
        for line in stream:
            sock.send(line.rstrip("\r\n").encode("utf-8", errors="surrogateescape") or b"\n")
    except (OSError, ValueError):
        pass
    sock.send(b"")


def run(client: ChatClient, as_json: bool = False) -> int:
    """Chat until /exit, end of input, or the broker's shutdown. Returns the exit status."""
    stdin_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    keyboard = stdin_context.socket(zmq.PAIR)
    keyboard.setsockopt(zmq.LINGER, 0)
    keyboard.bind(STDIN_ENDPOINT)
    threading.Thread(target=_stdin_reader, args=(stdin_context, sys.stdin), daemon=True).start()

    def show(event: Event) -> None:
        print(json.dumps(to_dict(event), ensure_ascii=False) if as_json else format_event(event), flush=True)

    for event in client.drain():
        show(event)
    while True:
        try:
            ready = client.poll(1.0, also=[keyboard])
        except KeyboardInterrupt:
            client.close()
            return 0
        for event in client.drain():
            show(event)
            if isinstance(event, Shutdown | SessionClosed):
                return 0
        if keyboard in ready:
            raw = keyboard.recv()
            if raw == b"" or _command(client, raw.decode("utf-8", errors="replace").strip()):
                client.close()
                return 0


def _command(client: ChatClient, line: str) -> bool:
    """Act on one input line; True means leave."""
    if not line:
        return False
    if line == "/exit":
        return True
    try:
        if line == "/help":
            print(HELP, flush=True)
        elif line == "/who":
            client.who()
        elif line == "/shutdown":
            client.request_shutdown()
        elif line.startswith("/") and not line.startswith("//"):
            print(f"! unknown command {line.split()[0]}; /help lists the commands", flush=True)
        else:
            client.send(line[1:] if line.startswith("//") else line)
    except ValueError as exc:
        print(f"! not sent: {exc}", flush=True)
    except ConnectError as exc:
        print(f"! {exc}", flush=True)
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        client = start(args)
        return run(client, as_json=args.json)
    except (UsageError, ConfigError, ConnectError, crypto.KeyFileError, LocalProtocolError, FileExistsError) as exc:
        print(f"chat_client: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
