"""How the terminal client shows events: one line per message, timestamps, stable per-user colours.

Colours only on a terminal and never with NO_COLOR set; when a width is
given (a terminal), long lines wrap under their text instead of under the
timestamp. Piped output is plain: exactly one line per chat message.
"""

from __future__ import annotations

import hashlib
import re
import textwrap
import time
from dataclasses import dataclass

from chat.events import (
    ChatMessage,
    ConnectionLost,
    Event,
    Joined,
    KeyChanged,
    Left,
    Notice,
    SessionClosed,
    Shutdown,
    Welcome,
    WhoList,
)

_USER_COLOURS = (31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
DIM, BOLD_RED, MAGENTA, RESET = "2", "1;31", "35", "0"


def short_fingerprint(fingerprint: str) -> str:
    return fingerprint[:23]


def clock(timestamp: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


@dataclass(frozen=True)
class Display:
    colour: bool = False
    width: int | None = None

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def user(self, name: str) -> str:
        """A name in its own colour, the same in every session."""
        colour = _USER_COLOURS[hashlib.sha256(name.encode()).digest()[0] % len(_USER_COLOURS)]
        return self.paint(name, str(colour))

    def _line(self, timestamp: float | None, head: str, text: str) -> str:
        prefix = f"{self.paint(f'[{clock(timestamp)}]', DIM)} {head}"
        if self.width is None:
            return f"{prefix}{text}"
        indent = len(_ANSI.sub("", prefix))
        if indent > self.width // 2:
            indent = 4
        wrapped = textwrap.wrap(text, max(20, self.width - indent)) or [""]
        first, rest = wrapped[0], wrapped[1:]
        return "\n".join([f"{prefix}{first}", *(" " * indent + part for part in rest)])

    def system(self, text: str, timestamp: float | None = None) -> str:
        return self._line(timestamp, self.paint("* ", DIM), self.paint(text, DIM))

    def warning(self, text: str) -> str:
        return self._line(None, self.paint("! ", BOLD_RED), self.paint(text, BOLD_RED))

    def format(self, event: Event) -> str:
        """The text for one event; a chat message is one line unless wrapped for a terminal."""
        if isinstance(event, ChatMessage):
            marks = "".join(
                (
                    self.paint("(history) ", DIM) if event.history else "",
                    self.paint("(private) ", MAGENTA) if event.private else "",
                )
            )
            if event.action:
                return self._line(event.timestamp, f"{marks}* {self.user(event.sender)} ", event.text)
            return self._line(event.timestamp, f"{marks}{self.user(event.sender)}: ", event.text)
        if isinstance(event, Welcome):
            others = [self.user(u.name) for u in event.users if u.name != event.name]
            online = ", ".join(others) or "nobody else"
            return self.system(f"logged in as {event.name}; online: {online} (/help for commands)")
        if isinstance(event, Joined):
            kind = "bot " if event.user.bot else ""
            return self.system(f"{kind}{event.user.name} joined ({short_fingerprint(event.user.fingerprint)})")
        if isinstance(event, Left):
            return self.system(f"{event.name} left ({event.reason})")
        if isinstance(event, WhoList):
            rows = [f"  {u.name:<32} {u.fingerprint}{'  (bot)' if u.bot else ''}" for u in event.users]
            return self.system(f"{len(event.users)} online:") + "\n" + "\n".join(rows)
        if isinstance(event, KeyChanged):
            return self.warning(
                f"WARNING: {event.name} now has key {event.seen}, but you pinned {event.pinned}. "
                "This is someone else, or their key was replaced: check with them out of band."
            )
        if isinstance(event, Notice):
            return self.warning(event.message)
        if isinstance(event, Shutdown):
            return self.system(f"the broker is shutting down ({event.by}); goodbye")
        if isinstance(event, SessionClosed):
            return self.warning(f"the broker closed this session: {event.reason}; goodbye")
        if isinstance(event, ConnectionLost):
            return self.warning(f"connection lost: {event.reason}; retrying in {event.retry_in:g}s")
        return self.system(str(event))
