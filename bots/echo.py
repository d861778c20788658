"""echo: answers every chat message from someone else with `echo: <text>` (never a bot's: see zchat.client.bot)."""

from __future__ import annotations

import sys

from zchat.client.bot import bot_arguments, run_bot
from zchat.events import ChatMessage, Event

PREFIX = "echo: "


def handle(event: Event) -> str | None:
    # Never an echo: a program that does not log in as a bot and repeats what it reads would otherwise loop.
    if isinstance(event, ChatMessage) and not event.text.startswith(PREFIX):
        return PREFIX + event.text
    return None


if __name__ == "__main__":
    sys.exit(run_bot(bot_arguments("echo", __doc__ or "").parse_args(), handle))
