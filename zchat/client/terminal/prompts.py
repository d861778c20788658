"""The terminal client's start-up: the questions it asks (or reads from piped stdin), and its keys.

On a terminal it asks for the server address and user name unless given on the command line, asking
again after an answer that cannot be right; Ctrl-D or Ctrl-C give up (`Cancelled`). With stdin not a
terminal nothing is asked: with --user, a missing --host or --port comes from the config file; without
it, the first lines of stdin answer what would have been asked, in the same order (an empty line takes
the default), and a wrong answer is a one-line `UsageError`.

A key protected by a passphrase opens with PASSPHRASE from the environment, or else with one asked for
on the terminal (three tries). On the broker's machine, a new user name gets a key created and registered.
`start()` ends with a client, not yet logged in.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from zchat import crypto
from zchat.client.async_client import AsyncChatClient
from zchat.config import client_settings
from zchat.errors import ChatError
from zchat.keystore import KeyLayout, create_client_key, lookalike_problem
from zchat.protocol import NAME_PATTERN


class UsageError(ChatError):
    """Something the person typed or configured is wrong; the message says what."""


class Cancelled(ChatError):
    """The person gave up at a prompt (Ctrl-D or Ctrl-C); `status` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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


def ask_passphrase(path: Path, error: crypto.KeyFileError | None) -> str:
    """The passphrase for `path`, asked on the terminal (after saying why the last one failed)."""
    if not sys.stdin.isatty():
        raise UsageError(f"{path} is protected by a passphrase: set PASSPHRASE or run on a terminal")
    if error is not None:
        print(f"  {error}; try again", file=sys.stderr, flush=True)
    try:
        return getpass.getpass(f"Passphrase for {path}: ")
    except EOFError:
        sys.stderr.write("\n")
        raise Cancelled("cancelled: end of input at the passphrase prompt", 1) from None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise Cancelled("cancelled at the passphrase prompt", 130) from None


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


def _answer_questions(args: argparse.Namespace, layout: KeyLayout, default_ip: str, default_port: int) -> None:
    """Fill in --host, --port and --user: asked on a terminal, read from piped stdin, or the config's."""

    def user_problem(name: str) -> str | None:  # a look-alike of a registered name is asked again too
        return name_problem(name) or lookalike_problem(layout, name)

    if not sys.stdin.isatty() and args.user is not None:  # stdin holds the messages only
        args.host = default_ip if args.host is None else args.host
        args.port = default_port if args.port is None else args.port
        return
    answer = _ask if sys.stdin.isatty() else _read_answer  # piped: the first lines answer, in the same order
    if args.host is None:
        args.host = answer("Server IP", default_ip, host_problem)
    if args.port is None:
        args.port = int(answer("Server port", str(default_port), port_problem))
    if args.user is None:
        args.user = answer("Username", None, user_problem)


def start(args: argparse.Namespace) -> AsyncChatClient:
    """Fill in missing answers and load the keys: a client ready to log in."""
    settings = client_settings(args.config, args.keys_dir)
    layout = KeyLayout(settings.keys_dir)
    if sys.stdin.isatty():
        _broker_key_path(args, layout)  # before any question: no answer could make up for it
    _answer_questions(args, layout, settings.server_ip, settings.server_port)
    for problem in (host_problem(args.host), port_problem(str(args.port)), name_problem(args.user)):
        if problem is not None:
            raise UsageError(problem)
    key_path = _resolve_key(args, layout)
    return AsyncChatClient.from_files(
        args.host,
        args.port,
        args.user,
        key_path,
        _broker_key_path(args, layout),
        passphrase=os.environ.get("PASSPHRASE"),
        ask=ask_passphrase,
        connect_timeout=args.connect_timeout,
    )
