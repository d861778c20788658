"""Running a bot: the command line every bot shares, and the event loop around a handler.

A bot is a function that receives each event and may return a line to send
(to the room, or privately to the sender of a private message):

    from zchat.client.bot import bot_arguments, run_bot
    from zchat.events import ChatMessage

    def handle(event):
        if isinstance(event, ChatMessage):
            return f"echo: {event.text}"
        return None

    run_bot(bot_arguments("echo").parse_args(), handle)

A reply to another bot's message is never sent: two bots answering each other
would fill the room. A user whose key differs from the one the bot pinned on
first sight (`KeyChanged`) is logged as a warning each time the broker names
them, and the bot goes on answering (the handler sees the event and may decide
otherwise); nobody is there to check the new key, so the pin is not replaced.
The handler sees every event, the broker's answers to the bot's own messages
included: `Accepted` (stored and sent on; `queued` for someone offline) or
`Failed` (not delivered, with the reason), each naming the id `send()` returned.
The runner logs a failed reply as a warning.

Bots log in like people, with their own registered key, flagged as bots in /who.
For full control use `zchat.client.ChatClient` directly, or
`zchat.client.AsyncChatClient` in an asyncio program.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from zchat.client.running import (
    EXIT_ERROR,
    EXIT_OK,
    LEAVE_WAIT,
    end_status,
    leave,
    skipping_bad_frames,
)
from zchat.client.sync_client import ChatClient
from zchat.config import add_location_arguments, client_settings
from zchat.errors import ChatError, ConnectError, LocalProtocolError
from zchat.events import Accepted, ChatMessage, Event, Failed, KeyChanged, SessionClosed, Shutdown
from zchat.keystore import KeyLayout

log = logging.getLogger(__name__)

Handler = Callable[[Event], str | None]


def bot_arguments(name: str, description: str = "") -> argparse.ArgumentParser:
    """The shared command line: --config, --keys-dir, --host, --port, --name, --key, --broker-key."""
    parser = argparse.ArgumentParser(prog=f"bot {name}", description=description or f"The {name} bot.")
    add_location_arguments(parser)
    parser.add_argument("--host", help="broker IP (default: server_ip from the config)")
    parser.add_argument("--port", type=int, help="broker port (default: server_port from the config)")
    parser.add_argument("--name", default=name, help=f"user name to log in as (default: {name})")
    parser.add_argument("--key", type=Path, help="private key (default: KEYS_DIR/private/NAME.pem)")
    parser.add_argument("--broker-key", type=Path, help="broker public key (default: KEYS_DIR/broker.pub)")
    parser.add_argument("--passphrase-env", default="PASSPHRASE", help="environment variable holding the passphrase")
    return parser


def connect_bot(args: argparse.Namespace) -> ChatClient:
    """Log in with the shared command-line options."""
    settings = client_settings(args.config, args.keys_dir)
    layout = KeyLayout(settings.keys_dir)
    return ChatClient.connect(
        args.host or settings.server_ip,
        args.port or settings.server_port,
        args.name,
        args.key or layout.client_private(args.name),
        args.broker_key or layout.broker_public,
        passphrase=os.environ.get(args.passphrase_env) or None,
        bot=True,
        history=False,  # a bot answers what is said while it listens, not the replayed past
    )


def run_bot(args: argparse.Namespace, handle: Handler) -> int:
    """Log in, answer events until the broker shuts down or a signal arrives. Returns an exit status.

    EXIT_OK (0) after a signal or the broker's shutdown, EXIT_ERROR (1) when the login fails or the connection
    is lost for good, EXIT_CLOSED (3) when the broker ends the session for good (`closed`: the same name logged
    in elsewhere, or the key is no longer registered).

    An exception from `handle` (or from taking in one event) is logged and that event skipped.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        client = connect_bot(args)
    except ChatError as exc:
        print(f"bot {args.name}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    log.info("%s is online", args.name)
    try:
        status = _listen(client, args.name, handle, stopping)
        last = leave(client, LEAVE_WAIT)
    except ConnectError as exc:
        print(f"bot {args.name}: error: {exc}", file=sys.stderr)
        status, last = EXIT_ERROR, leave(client, 0.0)
    finally:
        client.close()
    for event in last:
        if isinstance(event, Failed):
            log.warning("a reply was not delivered: %s", event.reason)
    return status


def _listen(client: ChatClient, name: str, handle: Handler, stopping: list[str]) -> int:
    """Hand `handle` every event and send its replies, until a signal or the last event of a closed client."""
    while not stopping:
        event = None
        with skipping_bad_frames(log):  # a frame the client could not take in: drop it, keep listening
            event = client.receive(timeout=0.5)
        if event is None:
            if client.closed:
                break
            continue
        status = end_status(event)
        if status is not None:
            if isinstance(event, Shutdown):
                log.info("the broker is shutting down (%s)", event.by)
            elif isinstance(event, SessionClosed):
                log.warning("the broker ended the session: %s", event.reason)
            return status
        if isinstance(event, ChatMessage) and event.sender == name:
            continue
        _note(client, event)
        try:
            reply = handle(event)
        except Exception:  # the handler failed on this one event; the next one may be fine
            log.exception("the handler failed on a %s event; skipped it", type(event).__name__)
            continue
        if reply and isinstance(event, ChatMessage) and event.bot:
            log.info("not answering %s, a bot (bots never answer bots)", event.sender)
        elif reply and not client.closed:
            to = event.sender if isinstance(event, ChatMessage) and event.private else None
            try:
                client.send(reply, to=to)  # a private question gets a private answer
            except LocalProtocolError as exc:
                log.warning("reply not sent: %s", exc)
    return EXIT_OK


def _note(client: ChatClient, event: Event) -> None:
    """Log what a bot's keeper should know: a changed key, a reply not delivered or kept for later."""
    if isinstance(event, KeyChanged):
        log.warning(
            "%s's key is not the one pinned in %s (pinned %s, now %s): check it out of band; the bot goes"
            " on answering, and the pin stays until it is replaced in that file",
            event.name,
            client.pins.path or "memory",
            event.pinned,
            event.seen,
        )
    elif isinstance(event, Failed):
        log.warning("a reply was not delivered: %s", event.reason)
    elif isinstance(event, Accepted) and event.queued:
        log.info("a reply is kept for its offline recipient (message %s)", event.message_id)
