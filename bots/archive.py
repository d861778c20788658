"""archive: appends every chat message it sees to a JSON-lines file (time, sender, text), one flushed line each.

The file is data/archive.jsonl (in the working directory, next to the broker's database when run with
`make bot BOT=archive`; git-ignored) unless --file names another; its directory is created if missing.

The time is the broker's receive time when it stamped one, else the author's; a time no calendar holds
(1e300, NaN) is archived as null.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TextIO

from zchat.client.bot import bot_arguments, run_bot
from zchat.events import ChatMessage, Event

DEFAULT_FILE = Path("data") / "archive.jsonl"


def _iso_time(ts: float) -> str | None:
    """Local ISO 8601 time of `ts`, or None when no calendar holds it."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))
    except (OverflowError, ValueError, OSError):
        return None


class Archive:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> str | None:
        if isinstance(event, ChatMessage):
            ts = event.timestamp if event.received is None else event.received
            record = {
                "time": _iso_time(ts),
                "ts": ts if math.isfinite(ts) else None,
                "sender": event.sender,
                "text": event.text,
                "private": event.private,
            }
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
        return None


def main() -> int:
    parser = bot_arguments("archive", __doc__ or "")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help=f"where to append (default: {DEFAULT_FILE})")
    args = parser.parse_args()
    try:
        args.file.parent.mkdir(parents=True, exist_ok=True)
        stream = args.file.open("a", encoding="utf-8")
    except OSError as exc:
        print(f"bot archive: error: cannot append to {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with stream:
        return run_bot(args, Archive(stream))


if __name__ == "__main__":
    sys.exit(main())
