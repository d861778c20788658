"""dice: answers `!roll NdM` (for example `!roll 2d6`) with the result, and odd requests with a usage line."""

from __future__ import annotations

import re
import secrets
import sys

from zchat.client.bot import bot_arguments, run_bot
from zchat.events import ChatMessage, Event

MAX_DICE = 100
MAX_SIDES = 1000
USAGE = f"usage: !roll NdM, e.g. !roll 2d6 (1-{MAX_DICE} dice of 2-{MAX_SIDES} sides)"
ROLL = re.compile(r"!roll\s+(\d{1,4})d(\d{1,5})", re.IGNORECASE)


def roll(sender: str, request: str) -> str:
    """The answer to one `!roll ...` request: the dice and their sum, or the usage line."""
    match = ROLL.fullmatch(request.strip())
    if not match:
        return USAGE
    count, sides = int(match.group(1)), int(match.group(2))
    if not (1 <= count <= MAX_DICE and 2 <= sides <= MAX_SIDES):
        return USAGE
    dice = [secrets.randbelow(sides) + 1 for _ in range(count)]
    if count == 1:
        return f"{sender} rolled 1d{sides}: {dice[0]}"
    return f"{sender} rolled {count}d{sides}: {' + '.join(map(str, dice))} = {sum(dice)}"


def handle(event: Event) -> str | None:
    if isinstance(event, ChatMessage) and event.text.strip().lower().startswith("!roll"):
        return roll(event.sender, event.text)
    return None


if __name__ == "__main__":
    sys.exit(run_bot(bot_arguments("dice", __doc__ or "").parse_args(), handle))
