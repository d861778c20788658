"""Accounting for a soak run: what was sent, what each receiver got, and what that adds up to.

Every chat message the soak sends reads `sender|seq|unix-time`, with `seq`
counting 1, 2, 3... per sender name across all of its sessions. The broker
refuses some (a `Notice` "not delivered: ...: 'sender|seq|...'"); the others
are *accepted*. What each receiver should have got:

- a stable receiver (never leaves on purpose): every accepted message of every
  other sender;
- a churning receiver, per session: for each sender, every accepted message
  between the first and the last one it got from that sender in that session
  (it cannot know what was sent while it was away, but must have no gap).

`lost` is what was expected and not received, `duplicated` counts a receiver
getting the same sender+seq more than once (over all its sessions),
`out_of_order` a sender's seq going backwards within one receiver session, and
`unexpected` anything received that was never accepted (a refused message, a
seq never sent, one's own message, or a text the soak did not write).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

# What the soak writes; a refusal notice quotes the first 40 characters of it, which hold the sender and seq.
TEXT_PATTERN = re.compile(r"([A-Za-z0-9_-]{1,32})\|(\d+)\|(\d+(?:\.\d+)?)")
REFUSAL_PREFIX = "not delivered"

# One receiver session: sender -> that sender's seqs in the order they arrived.
SessionLog = Mapping[str, Sequence[int]]


def message_text(sender: str, seq: int, sent_at: float) -> str:
    """The text of the `seq`th message from `sender`, sent at `sent_at` (time.time())."""
    return f"{sender}|{seq}|{sent_at:.6f}"


def parse_text(text: str) -> tuple[str, int, float] | None:
    """(sender, seq, sent_at) from a soak message text, or None if the soak did not write it."""
    match = TEXT_PATTERN.fullmatch(text)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), float(match.group(3))


def parse_refusal(message: str) -> tuple[str, int] | None:
    """(sender, seq) of the message a broker Notice says it did not deliver, or None for any other notice."""
    if not message.startswith(REFUSAL_PREFIX):
        return None
    match = TEXT_PATTERN.search(message)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


@dataclass(frozen=True)
class Tally:
    sent: int
    accepted: int
    delivered: int
    expected: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int
    missing: Counter[tuple[str, int]]  # (sender, seq) -> how many receivers that should have it did not


def tally(
    sent: Mapping[str, int],
    refused: Mapping[str, Collection[int]],
    stable: Collection[str],
    sessions: Mapping[str, Sequence[SessionLog]],
    unparsed: int = 0,
) -> Tally:
    """Add up a run.

    `sent[name]` is how many messages `name` sent (seqs 1..n), `refused[name]`
    the seqs the broker refused, `stable` the receivers that never left on
    purpose, `sessions[name]` what each receiver got, session by session, and
    `unparsed` how many chat messages arrived whose text the soak did not write.
    """

    def accepted(sender: str, seq: int) -> bool:
        return 1 <= seq <= sent.get(sender, 0) and seq not in refused_sets.get(sender, ())

    refused_sets = {name: {s for s in seqs if 1 <= s <= sent.get(name, 0)} for name, seqs in refused.items()}
    accepted_by = {name: n - len(refused_sets.get(name, ())) for name, n in sent.items()}
    total_accepted = sum(accepted_by.values())
    delivered = unparsed
    expected = lost = duplicated = out_of_order = 0
    unexpected = unparsed
    missing: Counter[tuple[str, int]] = Counter()
    for receiver, logs in sessions.items():
        seen: Counter[tuple[str, int]] = Counter()
        for log in logs:
            for sender, seqs in log.items():
                delivered += len(seqs)
                seen.update((sender, seq) for seq in seqs)
                out_of_order += sum(1 for before, after in itertools.pairwise(seqs) if after < before)
                valid = {seq for seq in seqs if sender != receiver and accepted(sender, seq)}
                unexpected += sum(1 for seq in seqs if seq not in valid)
                if receiver in stable or not valid:
                    continue
                low, high = min(valid), max(valid)
                window = high - low + 1 - sum(1 for seq in refused_sets.get(sender, ()) if low <= seq <= high)
                expected += window
                lost += window - len(valid)
                missing.update(
                    (sender, seq) for seq in range(low, high + 1) if seq not in valid and accepted(sender, seq)
                )
        duplicated += sum(count - 1 for count in seen.values())
        if receiver in stable:
            want = total_accepted - accepted_by.get(receiver, 0)
            got = sum(1 for sender, seq in seen if sender != receiver and accepted(sender, seq))
            expected += want
            lost += want - got
            if got < want:
                missing.update(
                    (sender, seq)
                    for sender, n in sent.items()
                    if sender != receiver
                    for seq in range(1, n + 1)
                    if accepted(sender, seq) and (sender, seq) not in seen
                )
    return Tally(
        sent=sum(sent.values()),
        accepted=total_accepted,
        delivered=delivered,
        expected=expected,
        lost=lost,
        duplicated=duplicated,
        out_of_order=out_of_order,
        unexpected=unexpected,
        missing=missing,
    )


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The nearest-rank percentile of `values` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
