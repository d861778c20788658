"""Small shared pieces: the benchmark's message texts and percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence


def message_text(sender: int, number: int, size: int) -> str:
    """A chat text of exactly `size` UTF-8 bytes that names its sender slot and its number."""
    head = f"bench {sender} {number} "
    return head + "x" * (size - len(head))


def parse_text(text: str) -> tuple[int, int] | None:
    """(sender slot, number) from a `message_text`, or None."""
    parts = text.split(" ", 3)
    if len(parts) < 3 or parts[0] != "bench":
        return None
    try:
        return int(parts[1]), int(parts[2])
    except ValueError:
        return None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between the closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
