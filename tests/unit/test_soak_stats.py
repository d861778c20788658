"""The soak's accounting (`soak.stats`) on hand-made receiver logs: each kind of fault is counted where it belongs.

A message counts as accepted only when its sender got `Accepted` for it; one answered `Failed` is refused,
and one with no answer is neither expected nor unexpected.
"""

from __future__ import annotations

import pytest

from harness.stats import percentile
from soak.stats import ReceiverSession, message_text, parse_text, tally


def session(client: int = 0, **got: list[int]) -> ReceiverSession:
    return ReceiverSession(client, dict(got))


def everything(sent: dict[str, int]) -> dict[str, list[int]]:
    return {name: list(range(1, n + 1)) for name, n in sent.items()}


def test_message_text_round_trips() -> None:
    text = message_text("soak199", 123456, 1764080000.123456)
    parsed = parse_text(text)
    assert parsed is not None
    assert parsed[:2] == ("soak199", 123456)
    assert parsed[2] == pytest.approx(1764080000.123456)
    assert parse_text("hello") is None


def test_a_clean_run_adds_up() -> None:
    sent = {"a": 3, "b": 2, "c": 0}
    sessions = {
        "a": [session(b=[1, 2])],
        "b": [session(a=[1, 2, 3])],
        "c": [session(0, a=[1]), session(1, a=[3], b=[2])],  # churning: away for a:2 and b:1, no gap inside a session
    }
    counts = tally(sent, everything(sent), {}, {"a", "b"}, sessions)
    assert (counts.sent, counts.accepted, counts.refused, counts.unanswered) == (5, 5, 0, 0)
    assert (counts.delivered, counts.expected) == (8, 8)
    assert (counts.lost, counts.duplicated, counts.out_of_order, counts.unexpected) == (0, 0, 0, 0)


def test_stable_receivers_expect_every_accepted_message_and_refusals_are_not_expected() -> None:
    counts = tally({"a": 4, "b": 0}, {"a": [1, 2, 4]}, {"a": [3]}, {"b"}, {"b": [session(a=[1, 4])]})
    assert (counts.accepted, counts.refused, counts.unanswered) == (3, 1, 0)
    assert (counts.expected, counts.lost) == (3, 1)
    assert set(counts.missing) == {("a", 2)}


def test_unanswered_and_failed_messages_are_never_lost() -> None:
    # a:2 was refused and a:3 never answered: neither is missed by the stable b nor inside c's window 1..4.
    sent = {"a": 4}
    counts = tally(sent, {"a": [1, 4]}, {"a": [2]}, {"b"}, {"b": [session(a=[1, 4])], "c": [session(a=[1, 4])]})
    assert (counts.accepted, counts.refused, counts.unanswered) == (2, 1, 1)
    assert (counts.expected, counts.lost, counts.unexpected) == (4, 0, 0)


def test_an_unanswered_message_received_is_not_unexpected_but_a_refused_one_is() -> None:
    counts = tally({"a": 3}, {"a": [1]}, {"a": [2]}, {"b"}, {"b": [session(a=[1, 2, 3])]})
    assert counts.unanswered == 1
    assert counts.delivered_unanswered == 1  # a:3: its fate is unknown, so having it is fine
    assert counts.unexpected == 1  # a:2 was refused: nobody should have it
    assert counts.lost == 0


def test_a_churning_receiver_expects_no_gap_between_its_first_and_last_message_per_session() -> None:
    counts = tally(
        {"a": 10},
        {"a": [1, 2, 3, 4, 6, 7, 8, 9, 10]},
        {"a": [5]},
        set(),
        {"c": [session(0, a=[2, 3, 7]), session(1, a=[9])]},
    )
    assert counts.expected == 5 + 1  # 2..7 without the refused 5, then 9 alone
    assert counts.lost == 2  # 4 and 6
    assert counts.missing == {("a", 4): 1, ("a", 6): 1}


def test_what_the_same_client_showed_in_an_earlier_session_fills_a_later_window() -> None:
    # After a reconnect the client skips a:2, which it showed before the broker died, when it comes again.
    sessions = {"c": [session(0, a=[1, 2]), session(0, a=[1, 3])]}
    counts = tally({"a": 3}, {"a": [1, 2, 3]}, {}, set(), sessions)
    assert (counts.expected, counts.lost) == (2 + 3, 0)
    assert counts.duplicated == 1  # but a:1 shown again by the same client is a duplicate
    # A fresh client (a rejoin) does not skip what an earlier client showed: there a:2 is missing.
    sessions = {"c": [session(0, a=[1, 2]), session(1, a=[1, 3])]}
    counts = tally({"a": 3}, {"a": [1, 2, 3]}, {}, set(), sessions)
    assert (counts.lost, counts.duplicated) == (1, 0)
    assert counts.missing == {("a", 2): 1}


def test_duplicates_count_per_client_across_its_sessions_and_reordering_within_one() -> None:
    sessions = {"c": [session(0, a=[1, 3, 2]), session(0, a=[3, 4])]}
    counts = tally({"a": 4}, {"a": [1, 2, 3, 4]}, {}, set(), sessions)
    assert counts.duplicated == 1  # a:3 shown in both sessions of one client
    assert counts.out_of_order == 1  # 3 then 2 in the first session
    assert counts.lost == 0


def test_a_history_replay_in_a_fresh_client_is_not_a_duplicate() -> None:
    # A stable receiver whose client was replaced (the broker ended its session) gets the history again.
    sessions = {"b": [session(0, a=[1, 2]), session(1, a=[1, 2, 3])]}
    counts = tally({"a": 3}, {"a": [1, 2, 3]}, {}, {"b"}, sessions)
    assert (counts.duplicated, counts.lost, counts.expected) == (0, 0, 3)


def test_unexpected_messages_are_counted() -> None:
    sessions = {"a": [session(a=[1], b=[2, 9])]}  # its own message, a refused one, one never sent
    counts = tally({"a": 1, "b": 2}, {"a": [1], "b": [1]}, {"b": [2]}, {"a"}, sessions, unparsed=1)
    assert counts.unexpected == 4
    assert counts.lost == 1  # b:1


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
