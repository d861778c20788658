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


@dataclass
class _Answers:
    """What the broker answered, by sender: the seqs accepted and refused (of those sent)."""

    sent: Mapping[str, int]
    accepted: dict[str, set[int]]
    refused: dict[str, set[int]]

    def is_accepted(self, sender: str, seq: int) -> bool:
        return seq in self.accepted.get(sender, ())

    def is_unanswered(self, sender: str, seq: int) -> bool:
        return (
            1 <= seq <= self.sent.get(sender, 0)
            and not self.is_accepted(sender, seq)
            and seq not in self.refused.get(sender, ())
        )


def _session_counts(
    receiver: str, log: ReceiverSession, before: set[tuple[str, int]], answers: _Answers, churning: bool
) -> tuple[Counter[str], Counter[tuple[str, int]]]:
    """One receiver session's counts (delivered, out_of_order, delivered_unanswered, unexpected and, for a churning
    receiver, expected and lost) and the (sender, seq) pairs it lacks; `before`: what its client showed earlier."""
    counts: Counter[str] = Counter()
    missing: Counter[tuple[str, int]] = Counter()
    for sender, seqs in log.got.items():
        counts["delivered"] += len(seqs)
        counts["out_of_order"] += sum(1 for first, then in itertools.pairwise(seqs) if then < first)
        own = sender == receiver
        counts["delivered_unanswered"] += sum(1 for seq in seqs if not own and answers.is_unanswered(sender, seq))
        counts["unexpected"] += sum(
            1 for seq in seqs if own or not (answers.is_accepted(sender, seq) or answers.is_unanswered(sender, seq))
        )
        valid = {seq for seq in seqs if not own and answers.is_accepted(sender, seq)}
        if not churning or not valid:
            continue
        window = [seq for seq in range(min(valid), max(valid) + 1) if answers.is_accepted(sender, seq)]
        absent = [seq for seq in window if seq not in valid and (sender, seq) not in before]
        counts["expected"] += len(window)
        counts["lost"] += len(absent)
        missing.update((sender, seq) for seq in absent)
    return counts, missing


def _receiver_counts(
    receiver: str, logs: Sequence[ReceiverSession], answers: _Answers, stable: Collection[str]
) -> tuple[Counter[str], Counter[tuple[str, int]]]:
    """All the sessions of one receiver: its counts (duplicated too) and what it lacks."""
    counts: Counter[str] = Counter()
    missing: Counter[tuple[str, int]] = Counter()
    shown: dict[int, Counter[tuple[str, int]]] = {}  # per client of this receiver
    for log in logs:
        by_client = shown.setdefault(log.client, Counter())
        before = set(by_client)  # shown by this client in its earlier sessions: it skips them now
        for sender, seqs in log.got.items():
            by_client.update((sender, seq) for seq in seqs)
        session, lacking = _session_counts(receiver, log, before, answers, receiver not in stable)
        counts.update(session)
        missing.update(lacking)
    counts["duplicated"] += sum(count - 1 for counts in shown.values() for count in counts.values())
    if receiver in stable:
        seen = {pair for counts in shown.values() for pair in counts}
        not_shown = [
            (sender, seq)
            for sender, seqs in answers.accepted.items()
            if sender != receiver
            for seq in seqs
            if (sender, seq) not in seen
        ]
        total_accepted = sum(len(seqs) for seqs in answers.accepted.values())
        counts["expected"] += total_accepted - len(answers.accepted.get(receiver, ()))
        counts["lost"] += len(not_shown)
        missing.update(not_shown)
    return counts, missing


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
    answers = _Answers(sent, accepted_sets, refused_sets)
    total_accepted = sum(len(seqs) for seqs in accepted_sets.values())
    total_refused = sum(len(seqs) for seqs in refused_sets.values())
    counts: Counter[str] = Counter(delivered=unparsed, unexpected=unparsed)
    missing: Counter[tuple[str, int]] = Counter()
    for receiver, logs in sessions.items():
        one, lacking = _receiver_counts(receiver, logs, answers, stable)
        counts.update(one)
        missing.update(lacking)
    return Tally(
        sent=sum(sent.values()),
        accepted=total_accepted,
        refused=total_refused,
        unanswered=sum(sent.values()) - total_accepted - total_refused,
        delivered=counts["delivered"],
        expected=counts["expected"],
        lost=counts["lost"],
        duplicated=counts["duplicated"],
        out_of_order=counts["out_of_order"],
        unexpected=counts["unexpected"],
        delivered_unanswered=counts["delivered_unanswered"],
        missing=missing,
    )
