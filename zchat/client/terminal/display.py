"""How the terminal client shows events: one line per message, timestamps, stable per-user colours.

Colours only on a terminal and never with NO_COLOR set; when a width is
given (a terminal), long lines wrap by display width (wide characters count
two columns) under their text instead of under the timestamp. Piped output is
plain: exactly one line per chat message. Every string a peer supplied goes
through `printable()`, so no control, format or direction-changing character
can make a line look like someone else's.

On a terminal, a message that names us (`mentions`) or is private to us is
highlighted (reverse video for who wrote it, bold text).
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from dataclasses import dataclass

import wcwidth

from zchat.events import (
    Accepted,
    ChatMessage,
    ConnectionLost,
    Event,
    Failed,
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
HIGHLIGHT, BOLD = "1;7", "1"  # a message for us: its author in reverse video, its text bold
_NAME_CHARS = "A-Za-z0-9_-"  # zchat.protocol.NAME_PATTERN's


# Shown escaped: controls, format characters (bidi controls, zero-width ones, tags) and line/paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ZWJ = "\u200d"
NO_TIME = "--:--:--"


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    return ch != "\t" and (unicodedata.category(ch) in _ESCAPED_CATEGORIES or 0xE0000 <= ord(ch) <= 0xE007F)


def printable(text: str) -> str:
    """`text` with every control, format, bidi, zero-width, tag and separator character shown escaped (`\\u202e`).

    The one exception: a zero-width joiner inside an emoji sequence (👨‍👩‍👧) is kept, since it only joins
    pictures; anywhere else it is escaped too. Tabs are kept. Use this on every string a peer supplied.
    """
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    for cluster in wcwidth.iter_graphemes(text):
        for i, ch in enumerate(cluster):
            joins = ch == _ZWJ and 0 < i < len(cluster) - 1
            out.append(_escape(ch) if _unsafe(ch) and not joins else ch)
    return "".join(out)


def short_fingerprint(fingerprint: str) -> str:
    return fingerprint[:23]


def clock(timestamp: float | None = None) -> str:
    """HH:MM:SS local time of `timestamp` (now if None); NO_TIME for a time no calendar holds (1e300, NaN)."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(timestamp))
    except (OverflowError, ValueError, OSError):
        return NO_TIME


def shown_time(message: ChatMessage) -> float:
    """When a message is shown as sent: the broker's receive time when known, else the author's claim."""
    return message.timestamp if message.received is None else message.received


def preview(text: str, limit: int = 40) -> str:
    """The first `limit` characters of a message (with … when longer) in Python quotes, e.g. 'are you there?'."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def text_width(text: str) -> int:
    """Terminal columns `text` takes once its colour codes are removed."""
    return max(0, wcwidth.wcswidth(_ANSI.sub("", text)))


def mentions(text: str, name: str) -> bool:
    """`text` names `name` as a word of its own, in any case: "Alice: hi", "hi @alice", not "malice"."""
    return re.search(rf"(?<![{_NAME_CHARS}]){re.escape(name)}(?![{_NAME_CHARS}])", text, re.IGNORECASE) is not None


def for_me(event: Event, me: str | None) -> bool:
    """A message someone else wrote that is private to us or mentions our name: one to draw attention to."""
    if not isinstance(event, ChatMessage) or me is None or event.sender == me:
        return False
    return event.private or mentions(event.text, me)


@dataclass(frozen=True)
class Display:
    """`me`: our name, to highlight messages for us; `hints`: a person reads this (a terminal), so the
    welcome line says how to get help."""

    colour: bool = False
    width: int | None = None
    me: str | None = None
    hints: bool = False

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def user(self, name: str) -> str:
        """A name (made printable) in its own colour, the same in every session."""
        colour = _USER_COLOURS[hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()[0] % len(_USER_COLOURS)]
        return self.paint(printable(name), str(colour))

    def _line(self, timestamp: float | None, head: str, text: str, code: str | None = None) -> str:
        """One entry: time, `head` (already printable), then `text` made printable and painted with `code`.

        With a width, `text` wraps by display width; every continuation line starts with the indent and none
        is wider than the width.
        """
        prefix = f"{self.paint(f'[{clock(timestamp)}]', DIM)} {head}"
        text = printable(text)
        if self.width is None:
            return prefix + self._paint_part(text, code)
        width = max(self.width, 8)
        prefix_width = text_width(prefix)
        indent = prefix_width if prefix_width <= width // 2 else 4
        if prefix_width > width - 2:  # no room after the prefix: wrap the whole entry, uncoloured
            plain = _ANSI.sub("", prefix) + text
            return "\n".join(wcwidth.wrap(plain, width, subsequent_indent=" " * indent, propagate_sgr=False))
        first = "#" * prefix_width  # stands for the prefix; a line that does not start with it is a continuation
        parts = wcwidth.wrap(text, width, initial_indent=first, subsequent_indent=" " * indent, propagate_sgr=False)
        if parts and parts[0].startswith(first):
            head_part, rest = parts[0][prefix_width:], parts[1:]
        else:
            head_part, rest = "", parts
        lines = [
            prefix + self._paint_part(head_part, code),
            *(" " * indent + self._paint_part(part[indent:], code) for part in rest),
        ]
        return "\n".join(lines)

    def _paint_part(self, text: str, code: str | None) -> str:
        return self.paint(text, code) if code and text else text

    def system(self, text: str, timestamp: float | None = None) -> str:
        return self._line(timestamp, self.paint("* ", DIM), text, DIM)

    def warning(self, text: str) -> str:
        return self._line(None, self.paint("! ", BOLD_RED), text, BOLD_RED)

    def failed(self, reason: str, text: str | None = None) -> str:
        """`! not delivered: <reason>: <preview>`: a message of ours (`text`, when known) was not delivered.

        A reason of the client's own ("not sent: ...", "not confirmed: ..." after a close) is shown as it is.
        """
        reason = reason.removeprefix("not delivered: ")
        if not reason.startswith(("not sent: ", "not confirmed: ")):  # those two are the client's own words
            reason = f"not delivered: {reason}"
        if text is not None and not reason.endswith(preview(text)):  # the broker's reasons quote it already
            reason = f"{reason}: {preview(text)}"
        return self.warning(printable(reason))

    def queued(self, to: str, text: str) -> str:
        """`* queued for bob (offline): <preview>`: a private message the broker keeps until its recipient logs in."""
        return self.system(f"queued for {printable(to)} (offline): {preview(text)}")

    def private_sent(self, to: str, text: str) -> str:
        """`* (private to bob) <text>`: a private message of ours the broker accepted and sent on."""
        return self.system(f"(private to {to}) {text}")

    def format(self, event: Event) -> str:
        """The text for one event; a chat message is one line unless wrapped for a terminal."""
        if isinstance(event, ChatMessage):
            marks = "".join(
                (
                    self.paint("(history) ", DIM) if event.history else "",
                    self.paint("(private) ", MAGENTA) if event.private else "",
                    self.paint("(while you were away) ", MAGENTA) if event.away else "",
                )
            )
            if for_me(event, self.me):
                author = printable(event.sender)
                head = self.paint(f"* {author}", HIGHLIGHT) if event.action else self.paint(f"{author}:", HIGHLIGHT)
                return self._line(shown_time(event), f"{marks}{head} ", event.text, BOLD)
            if event.action:
                return self._line(shown_time(event), f"{marks}* {self.user(event.sender)} ", event.text)
            return self._line(shown_time(event), f"{marks}{self.user(event.sender)}: ", event.text)
        if isinstance(event, Welcome):
            others = [printable(u.name) for u in event.users if u.name != event.name]
            online = ", ".join(others) or "nobody else"
            hint = " (/help for commands)" if self.hints else ""
            return self.system(f"logged in as {printable(event.name)}; online: {online}{hint}")
        if isinstance(event, Joined):
            kind = "bot " if event.user.bot else ""
            name, fingerprint = printable(event.user.name), printable(short_fingerprint(event.user.fingerprint))
            return self.system(f"{kind}{name} joined ({fingerprint})")
        if isinstance(event, Left):
            why = "" if event.reason == "left" else f" ({printable(event.reason)})"  # "left": they chose to
            return self.system(f"{printable(event.name)} left{why}")
        if isinstance(event, WhoList):
            rows = [
                f"  {printable(u.name):<32} {printable(u.fingerprint)}{'  (bot)' if u.bot else ''}" for u in event.users
            ]
            return self.system(f"{len(event.users)} online:") + "\n" + "\n".join(rows)
        if isinstance(event, KeyChanged):
            return self.warning(
                f"WARNING: {printable(event.name)} now has key {printable(event.seen)}, "
                f"but you pinned {printable(event.pinned)}. "
                "This is someone else, or their key was replaced: check with them out of band"
                f" (/whois {printable(event.name)}); only then accept it with /trust {printable(event.name)}."
            )
        if isinstance(event, Notice):
            return self.warning(printable(event.message))
        if isinstance(event, Failed):
            return self.failed(event.reason)
        if isinstance(event, Accepted):
            return self.system(f"message {event.message_id} {'queued' if event.queued else 'accepted'}")
        if isinstance(event, Shutdown):
            return self.system(f"the broker is shutting down ({printable(event.by)}); goodbye")
        if isinstance(event, SessionClosed):
            return self.warning(f"the broker closed this session: {printable(event.reason)}; goodbye")
        if isinstance(event, ConnectionLost):
            return self.warning(f"connection lost: {printable(event.reason)}; retrying in {event.retry_in:g}s")
        return self.system(printable(str(event)))
