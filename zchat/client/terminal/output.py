"""Where everything the terminal client shows goes: plain lines (`zchat.client.terminal.display`) or JSON.

`Output` prints one entry per event, and the client's own answers (help, usage errors, /whois, /trust).
Plain, each event is a line (or lines wrapped for a terminal) made by `describe`; the broker's plain
acknowledgement of a message to the room is no line at all, a private message once the broker has taken
it is `* (private to bob) <text>`, one it keeps for someone offline `* queued for bob (offline): <preview>`
and one it did not deliver `! not delivered: <reason>: <preview>`. With --json every line on stdout is one
JSON object: every event (`zchat.events.to_dict`, the answers `acked` and `failed` included), a `sent`
object naming the id of each message sent, and the client's own answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from zchat.client.terminal.display import Display
from zchat.events import Accepted, Event, Failed, KeyChanged, to_dict


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
