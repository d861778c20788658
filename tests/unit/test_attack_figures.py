"""The pure parts of `make attack`: the routing-id search's bookkeeping, the flood's CPU share from its pulses,
the store's bound from the config, and the captured HELLO's framing. No sockets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from attack.flood import PULSE, CaptureError, _hello_end
from attack.insiders import CounterSearch, near_full_text
from attack.measure import PULSE_MARGIN, StoreBound, pulse_shares
from attack.zmtp import greeting, zmtp_command
from zchat.config import parse_config
from zchat.protocol import max_body_bytes


class Counter:
    """A broker's routing ids as today's broker answers claims: an id the counter has reached is served; one
    above it is closed, after a probe connection that takes the next id; a claim of the next id aborts."""

    def __init__(self, first: int, top: int) -> None:
        self.first, self.top = first, top
        self.aborted = False

    def claim(self, claimed: int) -> str:
        if self.first <= claimed <= self.top:
            return "served"
        self.top += 1  # the probe
        if claimed == self.top:
            self.aborted = True
        return "closed"


def run_search(search: CounterSearch, counter: Counter, claims: int) -> list[int]:
    """Claims until a search ends (or `claims` were made): the ids claimed."""
    made = []
    for _ in range(claims):
        claimed = search.next_claim()
        made.append(claimed)
        if search.record(claimed, counter.claim(claimed)):
            break
    return made


def test_a_search_from_the_top_never_claims_the_next_id():
    counter = Counter(1000, 1000)
    search = CounterSearch(1000)
    for _ in range(20):
        run_search(search, counter, 50)
        assert not counter.aborted
        assert search.lo == counter.top  # found exactly, each time (each search moves the counter by one)
    assert search.searches == 20


@pytest.mark.parametrize("distance", [1, 2, 3, 7, 152, 5000, 70_000])
def test_a_search_finds_the_top_within_a_logarithmic_number_of_claims(distance):
    counter = Counter(1000, 1000 + distance)
    search = CounterSearch(1000)
    made = run_search(search, counter, 200)
    assert search.searches == 1
    assert counter.top - 1 <= search.lo <= counter.top
    assert len(made) <= 2 * math.ceil(math.log2(distance + 1)) + 3
    assert all(claimed >= 1002 for claimed in made)  # never the id just above the leaked one
    # (A claim above a counter the search has not pinned down may still be its next id: the oracle's danger,
    # which `Counter.aborted` would show; the broker has to survive it.)


def test_an_unanswered_or_refused_claim_teaches_nothing():
    search = CounterSearch(50)
    first = search.next_claim()
    assert not search.record(first, "refused")
    assert not search.record(first, "unanswered")
    assert search.next_claim() == first


def test_the_flood_share_is_the_cpu_rate_on_minus_off():
    # 1 core while on (even pulses), 0.25 while off, sampled every 0.1 s for 8 pulses.
    samples, cpu, t = [], 0.0, 0.0
    while t <= 8 * PULSE + 1e-9:
        samples.append((t, cpu))
        cpu += 0.1 * (1.0 if int(t / PULSE) % 2 == 0 else 0.25)
        t = round(t + 0.1, 6)
    shares = pulse_shares(samples, 0.0, 8 * PULSE)
    assert shares is not None
    on, off = shares
    assert on == pytest.approx(1.0, abs=0.05)
    assert off == pytest.approx(0.25, abs=0.05)
    assert PULSE > 2 * PULSE_MARGIN
    assert pulse_shares(samples, 0.0, PULSE) is None  # no "off" window yet: no figure


def test_the_store_bound_counts_mailboxes_senders_and_history():
    config = parse_config({"server_ip": "127.0.0.1", "server_port": 0}, Path(__file__))
    recipients = {"mail_self": "selfmailer", "mail_away": "absent", "rate_refill": "refiller"}
    bound = StoreBound.of(config, ["mail_self", "mail_away", "session_churn"], recipients)
    assert bound.mailboxes == ("absent", "selfmailer")
    assert bound.senders == ("awaymailer", "selfmailer")
    expected = 2 * config.mailbox_bytes + 2 * config.sent_mail_bytes
    assert bound.total == expected + config.history_size * max_body_bytes(config.max_text_bytes)


def test_a_near_full_text_fits_and_doubles_at_each_escaping():
    text = near_full_text(12, 1000)
    assert len(text.encode()) == 1000
    assert len(json.dumps(json.dumps(text))) > 3.9 * len(text)


def test_the_relay_finds_the_end_of_the_hello():
    hello = zmtp_command(b"HELLO", bytes(194))
    data = greeting(b"CURVE") + hello
    assert _hello_end(data[:-1]) is None
    assert _hello_end(data + b"more") == len(data)
    with pytest.raises(CaptureError):
        _hello_end(greeting(b"CURVE") + zmtp_command(b"READY", bytes(10)))
