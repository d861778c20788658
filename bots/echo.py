"""echo: answers every chat message from someone else with `echo: <text>`."""

from __future__ import annotations

import sys

from zchat.client.bot import bot_arguments, run_bot
from zchat.events import ChatMessage, Event

PREFIX = "echo: "


def handle(event: Event) -> str | None:
    # Never answer an echo: two echo bots would otherwise talk forever.
    if isinstance(event, ChatMessage) and not event.text.startswith(PREFIX):
        return PREFIX + event.text
    return None


if __name__ == "__main__":
    sys.exit(run_bot(bot_arguments("echo", __doc__ or "").parse_args(), handle))
