"""Readings of the broker under attack: its log, its store (size, census, the bound on it) and its CPU share.

`StoreBound` is what the attackers may make the store hold, from the broker's
config; `mail_census` reads the store read-only at the end (row counts and
sizes are in clear). `flood_share` is what the connection flood costs the
broker: its CPU share while the flood's pulses are on, less the share while
they are off.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attack.flood import PULSE
from zchat.broker.main import DATABASE_FILE
from zchat.config import Config
from zchat.protocol import max_body_bytes

# Issue 18's attacks that send mail, and the insider who sends it.
MAILERS = {"mail_self": "selfmailer", "mail_away": "awaymailer", "rate_refill": "refiller"}
PULSE_MARGIN = 0.4  # seconds left out at each end of a flood pulse when the broker's CPU share is measured


def log_numbers(data: bytes) -> dict[str, Any]:
    """What the broker's log holds: its size, and what went wrong in it."""
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    return {
        "log_bytes": len(data),
        "log_lines": len(lines),
        "tracebacks": text.count("Traceback"),
        "assertion_failures": text.count("Assertion failed"),
        "internal_errors": text.count("internal error"),
        "suppressed_summaries": sum("suppressed" in line for line in lines),
        "errors_or_warnings": sum(" ERROR " in line or " WARNING " in line for line in lines),
    }


# ---------------------------------------------------------------- the store


def store_bytes(data_dir: Path) -> int:
    """The size of the broker's database on disk: zchat.db and its write-ahead log."""
    total = 0
    for name in (DATABASE_FILE, DATABASE_FILE + "-wal"):
        with contextlib.suppress(OSError):
            total += (data_dir / name).stat().st_size
    return total


@dataclass(frozen=True)
class StoreBound:
    """What the attackers may make the store hold, from the config: their mailboxes, their senders' quotas of
    mail waiting for others, and the room history (`history_size` messages of the largest size)."""

    mailboxes: tuple[str, ...]  # the attackers' recipients
    senders: tuple[str, ...]  # the attackers who mail
    mailbox_bytes: int
    sent_mail_bytes: int
    history_size: int
    max_message_bytes: int

    @classmethod
    def of(cls, config: Config, attacks: list[str], recipients: dict[str, str]) -> StoreBound:
        mailers = [kind for kind in attacks if kind in MAILERS]
        return cls(
            mailboxes=tuple(sorted({recipients[kind] for kind in mailers})),
            senders=tuple(sorted(MAILERS[kind] for kind in mailers)),
            mailbox_bytes=config.mailbox_bytes,
            sent_mail_bytes=config.sent_mail_bytes,
            history_size=config.history_size,
            max_message_bytes=max_body_bytes(config.max_text_bytes),
        )

    def numbers(self) -> dict[str, Any]:
        """The bound's terms, for the report."""
        return {
            "mailboxes": list(self.mailboxes),
            "mailbox_bytes": self.mailbox_bytes,
            "senders": list(self.senders),
            "sent_mail_bytes": self.sent_mail_bytes,
            "history_size": self.history_size,
            "max_message_bytes": self.max_message_bytes,
        }

    @property
    def total(self) -> int:
        return (
            len(self.mailboxes) * self.mailbox_bytes
            + len(self.senders) * self.sent_mail_bytes
            + self.history_size * self.max_message_bytes
        )


def mail_census(data_dir: Path) -> dict[str, Any]:
    """What the store holds at the end, read-only: the rooms' history, and the mail by mailbox (recipients are
    HMAC tags, but row counts and sizes are in clear), largest first."""
    try:
        db = sqlite3.connect(f"file:{data_dir / DATABASE_FILE}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return {"error": str(exc)}
    try:
        boxes = db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM mail GROUP BY recipient ORDER BY 2 DESC"
        ).fetchall()
        history = int(db.execute("SELECT count(*) FROM chat").fetchone()[0])
        seen = int(db.execute("SELECT count(*) FROM seen").fetchone()[0])
    except sqlite3.Error as exc:
        return {"error": str(exc)}
    finally:
        db.close()
    return {
        "mail_rows": sum(int(rows) for rows, _ in boxes),
        "mail_mb": round(sum(int(size) for _, size in boxes) / 1e6, 1),
        "mailboxes": [{"rows": int(rows), "mb": round(int(size) / 1e6, 2)} for rows, size in boxes[:5]],
        "history_rows": history,
        "seen_rows": seen,
    }


# ---------------------------------------------------------------- the broker's CPU during the flood's pulses


Sample = tuple[float, float]  # (time.monotonic(), CPU seconds)


def _cpu_at(samples: list[Sample], t: float) -> float | None:
    """The CPU seconds at `t`, interpolated between the samples around it."""
    for (t1, c1), (t2, c2) in itertools.pairwise(samples):
        if t1 <= t <= t2:
            return c1 if t2 == t1 else c1 + (c2 - c1) * (t - t1) / (t2 - t1)
    return None


def pulse_shares(samples: list[Sample], pulse_start: float, end: float) -> tuple[float, float] | None:
    """The CPU share (cores) of what `samples` measure while the flood is on, and while it is off. Each
    pulse's first and last PULSE_MARGIN seconds are left out."""
    totals = {True: [0.0, 0.0], False: [0.0, 0.0]}  # on -> [cpu seconds, seconds]
    k = 0
    while (begin := pulse_start + k * PULSE + PULSE_MARGIN) < end:
        finish = pulse_start + (k + 1) * PULSE - PULSE_MARGIN
        if finish <= end:
            c1, c2 = _cpu_at(samples, begin), _cpu_at(samples, finish)
            if c1 is not None and c2 is not None:
                totals[k % 2 == 0][0] += c2 - c1
                totals[k % 2 == 0][1] += finish - begin
        k += 1
    if not totals[True][1] or not totals[False][1]:
        return None
    return totals[True][0] / totals[True][1], totals[False][0] / totals[False][1]


def flood_share(process: list[Sample], threads: list[Sample], pulse_start: float, end: float) -> dict[str, float]:
    """What the flood costs the broker's process (its crypto workers are not involved): the CPU share while
    the flood is on minus the share while it is off, for the whole process and for its threads other than the
    main loop (libzmq's I/O thread, which does the handshakes, and the gatekeeper, which answers ZAP and
    watches connections). On a saturated machine the whole-process figure understates the cost (the flood
    takes CPU from the main loop), so the larger of the two is the flood's share."""
    numbers: dict[str, float] = {}
    for name, samples in (("process", process), ("threads", threads)):
        shares = pulse_shares(samples, pulse_start, end)
        if shares is not None:
            numbers[f"{name}_cores_on"] = round(shares[0], 3)
            numbers[f"{name}_cores_off"] = round(shares[1], 3)
            numbers[f"{name}_share"] = round(shares[0] - shares[1], 3)
    if "process_share" in numbers and "threads_share" in numbers:
        numbers["share"] = max(numbers["process_share"], numbers["threads_share"])
    return numbers
