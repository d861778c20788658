"""The soak's accounting (`soak.stats`) on hand-made receiver logs: each kind of fault is counted where it belongs."""

from __future__ import annotations

import pytest

from soak.stats import message_text, parse_refusal, parse_text, percentile, tally


def test_message_text_round_trips_and_fits_in_a_refusal_preview():
    text = message_text("soak199", 123456, 1764080000.123456)
    assert parse_text(text) == ("soak199", 123456, pytest.approx(1764080000.123456))
    preview = text[:40]  # the broker quotes the first 40 characters of a refused message
    assert parse_refusal(f"not delivered: you are sending too fast: {preview!r}") == ("soak199", 123456)
    assert parse_refusal("/shutdown refused: only admins ...") is None
    assert parse_text("hello") is None


def test_a_clean_run_adds_up():
    sent = {"a": 3, "b": 2, "c": 0}
    sessions = {
        "a": [{"b": [1, 2]}],
        "b": [{"a": [1, 2, 3]}],
        "c": [{"a": [1]}, {"a": [3], "b": [2]}],  # churning: away for a:2 and b:1, no gap inside a session
    }
    counts = tally(sent, {}, {"a", "b"}, sessions)
    assert (counts.sent, counts.accepted, counts.delivered, counts.expected) == (5, 5, 8, 8)
    assert (counts.lost, counts.duplicated, counts.out_of_order, counts.unexpected) == (0, 0, 0, 0)


def test_stable_receivers_expect_every_accepted_message_and_refusals_are_not_expected():
    counts = tally({"a": 4, "b": 0}, {"a": [3]}, {"b"}, {"b": [{"a": [1, 4]}]})
    assert counts.accepted == 3
    assert (counts.expected, counts.lost) == (3, 1)
    assert set(counts.missing) == {("a", 2)}


def test_a_churning_receiver_expects_no_gap_between_its_first_and_last_message_per_session():
    counts = tally({"a": 10}, {"a": [5]}, set(), {"c": [{"a": [2, 3, 7]}, {"a": [9]}]})
    assert counts.expected == 5 + 1  # 2..7 without the refused 5, then 9 alone
    assert counts.lost == 2  # 4 and 6
    assert counts.missing == {("a", 4): 1, ("a", 6): 1}


def test_duplicates_count_across_sessions_and_reordering_within_one():
    sessions = {"c": [{"a": [1, 3, 2]}, {"a": [3, 4]}]}
    counts = tally({"a": 4}, {}, set(), sessions)
    assert counts.duplicated == 1  # a:3 arrived in both sessions
    assert counts.out_of_order == 1  # 3 then 2 in the first session
    assert counts.lost == 0


def test_unexpected_messages_are_counted():
    sessions = {"a": [{"a": [1], "b": [2, 9]}]}  # its own message, a refused one, one never sent
    counts = tally({"a": 1, "b": 2}, {"b": [2]}, {"a"}, sessions, unparsed=1)
    assert counts.unexpected == 4
    assert counts.lost == 1  # b:1


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
