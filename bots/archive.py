"""archive: appends every chat message it sees to a JSON-lines file (time, sender, text), one flushed line each."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from chat.bot import bot_arguments, run_bot
from chat.events import ChatMessage, Event


class Archive:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> str | None:
        if isinstance(event, ChatMessage):
            when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(event.timestamp))
            record = {
                "time": when,
                "ts": event.timestamp,
                "sender": event.sender,
                "text": event.text,
                "private": event.private,
            }
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
        return None


def main() -> int:
    parser = bot_arguments("archive", __doc__ or "")
    parser.add_argument("--file", type=Path, default=Path("archive.jsonl"), help="where to append (archive.jsonl)")
    args = parser.parse_args()
    with args.file.open("a", encoding="utf-8") as stream:
        return run_bot(args, Archive(stream))


if __name__ == "__main__":
    sys.exit(main())
