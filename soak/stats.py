"""Accounting for a soak run: what was sent, what each receiver got, and what that adds up to.

Every chat message the soak sends reads `sender|seq|unix-time`, with `seq`
counting 1, 2, 3... per sender name across all of its sessions. The broker
answers each one by its id (6.4 of docs/PROTOCOL.md), and the sender maps the
answer back to the seq:

- *accepted*: the sender got `Accepted` for it (committed by the broker);
- *refused*: the sender got `Failed` for it;
- *unanswered*: neither, by the end of the run (its fate is unknown: it may or
  may not have been stored; in a healthy run there are none after the drain).
  A client that closes for good with messages still waiting reports them
  `Failed` "not confirmed" itself: the broker never answered, so the soak
  counts those as unanswered, not refused (`soak.worker` sorts them out).

What each receiver should have shown (history replayed after a login counts as
shown, like a live message):

- a stable receiver (never leaves on purpose, but logs in again after the
  broker dies): every accepted message of every other sender;
- a churning receiver, per session: for each sender, every accepted message
  between the first and the last one it got from that sender in that session
  (it cannot know what was sent while it was away, but must have no gap); one
  that the same client showed in an earlier session counts, since the client
  rightly skips what it has shown (docs/PROTOCOL.md 7.6).

`lost` is what was expected and not received. `duplicated` counts one client
showing the same sender+seq more than once, over all the sessions of that
client (`ChatClient`): that is what its user would see twice. A churning name
gets a fresh client after each rejoin, whose history replay rightly shows earlier
messages again: that is not a duplicate. `out_of_order` is a sender's seq going
backwards within one receiver session (the history replay, then live messages).
`unexpected` is anything received that was neither accepted nor unanswered (a
refused message, a seq never sent, one's own message arriving live, or a text
the soak did not write). Unanswered messages are neither expected nor
unexpected; those received are counted as `delivered_unanswered`.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

# What the soak writes.
TEXT_PATTERN = re.compile(r"([A-Za-z0-9_-]{1,32})\|(\d+)\|(\d+(?:\.\d+)?)")


@dataclass
class ReceiverSession:
    """One login session of a receiver: which of its clients (0, 1, ... per name) it was, and what it showed,
    sender -> that sender's seqs in the order they were shown (history first, then live)."""

    client: int
    got: dict[str, list[int]] = field(default_factory=dict)
    started: float = 0.0  # time.time() of its welcome


def message_text(sender: str, seq: int, sent_at: float) -> str:
    """The text of the `seq`th message from `sender`, sent at `sent_at` (time.time())."""
    return f"{sender}|{seq}|{sent_at:.6f}"


def parse_text(text: str) -> tuple[str, int, float] | None:
    """(sender, seq, sent_at) from a soak message text, or None if the soak did not write it."""
    match = TEXT_PATTERN.fullmatch(text)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), float(match.group(3))


@dataclass(frozen=True)
class Tally:
    sent: int
    accepted: int
    refused: int
    unanswered: int
    delivered: int
    expected: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int
    delivered_unanswered: int
    missing: Counter[tuple[str, int]]  # (sender, seq) -> how many receivers that should have it did not


def tally(
    sent: Mapping[str, int],
    accepted: Mapping[str, Collection[int]],
    refused: Mapping[str, Collection[int]],
    stable: Collection[str],
    sessions: Mapping[str, Sequence[ReceiverSession]],
    unparsed: int = 0,
) -> Tally:
    """Add up a run.

    `sent[name]` is how many messages `name` sent (seqs 1..n), `accepted[name]`
    the seqs the broker answered with `Accepted`, `refused[name]` those it
    answered with `Failed`, `stable` the receivers that never left on purpose,
    `sessions[name]` what each receiver showed, session by session, and
    `unparsed` how many chat messages arrived whose text the soak did not write.
    """
    accepted_sets = {name: {s for s in seqs if 1 <= s <= sent.get(name, 0)} for name, seqs in accepted.items()}
    refused_sets = {
        name: {s for s in seqs if 1 <= s <= sent.get(name, 0)} - accepted_sets.get(name, set())
        for name, seqs in refused.items()
    }

    def is_accepted(sender: str, seq: int) -> bool:
        return seq in accepted_sets.get(sender, ())

    def is_unanswered(sender: str, seq: int) -> bool:
        return (
            1 <= seq <= sent.get(sender, 0) and not is_accepted(sender, seq) and seq not in refused_sets.get(sender, ())
        )

    accepted_by = {name: len(seqs) for name, seqs in accepted_sets.items()}
    total_accepted = sum(accepted_by.values())
    total_refused = sum(len(seqs) for seqs in refused_sets.values())
    delivered = unparsed
    expected = lost = duplicated = out_of_order = delivered_unanswered = 0
    unexpected = unparsed
    missing: Counter[tuple[str, int]] = Counter()
    for receiver, logs in sessions.items():
        shown: dict[int, Counter[tuple[str, int]]] = {}  # per client of this receiver
        for log in logs:
            by_client = shown.setdefault(log.client, Counter())
            before = set(by_client)  # shown by this client in its earlier sessions: it skips them now
            for sender, seqs in log.got.items():
                delivered += len(seqs)
                by_client.update((sender, seq) for seq in seqs)
                out_of_order += sum(1 for first, then in itertools.pairwise(seqs) if then < first)
                own = sender == receiver
                delivered_unanswered += sum(1 for seq in seqs if not own and is_unanswered(sender, seq))
                unexpected += sum(
                    1 for seq in seqs if own or not (is_accepted(sender, seq) or is_unanswered(sender, seq))
                )
                valid = {seq for seq in seqs if not own and is_accepted(sender, seq)}
                if receiver in stable or not valid:
                    continue
                window = [seq for seq in range(min(valid), max(valid) + 1) if is_accepted(sender, seq)]
                absent = [seq for seq in window if seq not in valid and (sender, seq) not in before]
                expected += len(window)
                lost += len(absent)
                missing.update((sender, seq) for seq in absent)
        duplicated += sum(count - 1 for counts in shown.values() for count in counts.values())
        if receiver in stable:
            seen = {pair for counts in shown.values() for pair in counts}
            want = total_accepted - accepted_by.get(receiver, 0)
            not_shown = [
                (sender, seq)
                for sender, seqs in accepted_sets.items()
                if sender != receiver
                for seq in seqs
                if (sender, seq) not in seen
            ]
            expected += want
            lost += len(not_shown)
            missing.update(not_shown)
    return Tally(
        sent=sum(sent.values()),
        accepted=total_accepted,
        refused=total_refused,
        unanswered=sum(sent.values()) - total_accepted - total_refused,
        delivered=delivered,
        expected=expected,
        lost=lost,
        duplicated=duplicated,
        out_of_order=out_of_order,
        unexpected=unexpected,
        delivered_unanswered=delivered_unanswered,
        missing=missing,
    )
