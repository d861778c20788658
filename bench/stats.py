"""The benchmark's message texts (percentiles are `harness.stats`)."""

from __future__ import annotations


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
