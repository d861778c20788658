"""Who may hold a connection (zchat/broker/admission.py, PROTOCOL.md 1.5) and the log a peer cannot flood
(zchat/broker/ratelimit.py). No sockets: the ZAP questions are asked directly."""

from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from zchat import crypto
from zchat.broker.admission import (
    CURVE,
    ID_WINDOW,
    LATER,
    MAX_BLOCKED_SOURCES,
    OK,
    REFUSED,
    SILENT_LIMIT,
    UNTIED_ALLOWANCE,
    Admission,
    Blocklist,
    RoutingIds,
    Seen,
    Speaker,
    Speakers,
    Verdict,
)
from zchat.broker.gatekeeper import bytes_received
from zchat.broker.ratelimit import LOG_LINES_IN_ALL, LOG_LINES_PER_SOURCE, LOG_WINDOW, PeerLog
from zchat.keystore import KeyLayout, Registry


def curve_key(keyring: Any, name: str) -> bytes:
    return crypto.curve_public(crypto.curve_secret(keyring.keys[name]))


@pytest.fixture
def layout(keyring: Any, tmp_path: Path) -> KeyLayout:
    """A private copy of the key ring: these tests rewrite and remove registry files."""
    root = tmp_path / "keys"
    shutil.copytree(keyring.root, root)
    return KeyLayout(root)


def admission(layout: KeyLayout, per_source: int = 64, rate: float = 1000.0) -> Admission:
    return Admission(Registry(layout), max_connections_per_source=per_source, handshakes_per_second=rate)


# ---------------------------------------------------------------- authenticate


def test_a_registered_users_curve_key_is_admitted_as_that_user(keyring, layout):
    gate = admission(layout)
    for name in ("alice", "bob", "carol", "admin"):
        assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, name)], 100.0) == Verdict(True, name, OK)


def test_an_unregistered_key_is_refused(keyring, layout):
    gate = admission(layout)
    assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "mallory")], 100.0) == REFUSED
    assert gate.authenticate("192.0.2.1", CURVE, [b"\x00" * 32], 100.0) == REFUSED
    assert gate.authenticate("192.0.2.1", CURVE, [b"short"], 100.0) == REFUSED
    # The broker's own key is not a user's.
    assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "broker")], 100.0) == REFUSED


@pytest.mark.parametrize(
    ("mechanism", "credentials"),
    [
        (b"NULL", []),
        (b"PLAIN", [b"alice", b"secret"]),
        (b"GSSAPI", []),
        (b"curve", None),  # the mechanism name is exact
        (CURVE, []),
        (CURVE, "two"),
    ],
)
def test_anything_but_curve_with_one_key_is_refused(keyring, layout, mechanism, credentials):
    key = curve_key(keyring, "alice")
    if credentials is None:
        credentials = [key]
    elif credentials == "two":
        credentials = [key, key]
    gate = admission(layout)
    assert gate.authenticate("192.0.2.1", mechanism, credentials, 100.0) == REFUSED
    assert gate.authenticate("192.0.2.1", CURVE, [key], 100.0) == Verdict(True, "alice", OK), "control"


def test_handshakes_beyond_the_rate_of_one_user_are_refused_from_any_source(keyring, layout):
    gate = admission(layout, rate=2.0)  # bursts of 4
    alice = [curve_key(keyring, "alice")]
    sources = ["192.0.2.1", "192.0.2.2", "198.51.100.7", "192.0.2.1", "192.0.2.9"]
    assert [gate.authenticate(source, CURVE, alice, 100.0).allowed for source in sources] == [True] * 4 + [False]
    bob = [curve_key(keyring, "bob")]
    assert gate.authenticate("192.0.2.1", CURVE, bob, 100.0) == Verdict(True, "bob", OK), "another user, same source"
    assert gate.authenticate("192.0.2.1", CURVE, alice, 100.4) == LATER, "not yet a whole token: try later (300)"
    assert gate.authenticate("192.0.2.1", CURVE, alice, 100.6) == Verdict(True, "alice", OK), "one more after 0.5 s"
    assert gate.authenticate("192.0.2.1", CURVE, alice, 100.6) == LATER


def test_strangers_sharing_a_users_address_use_up_only_their_own_allowance(keyring, layout):
    gate = admission(layout, rate=1.0)  # bursts of 2
    for _ in range(50):  # a stranger behind alice's NAT
        assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "mallory")], 100.0) == REFUSED
        assert gate.authenticate("192.0.2.1", b"NULL", [], 100.0) == REFUSED
    assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "alice")], 100.0) == Verdict(True, "alice", OK)


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite a file's bytes without replacing the file (same inode, the directory unchanged)."""
    with path.open("r+b") as handle:
        handle.write(data)
        handle.truncate()


def test_a_key_file_rewritten_in_place_is_honoured_at_the_next_handshake(keyring, layout):
    gate = admission(layout)
    path = layout.client_public("alice")
    old, new = [curve_key(keyring, "alice")], [curve_key(keyring, "mallory")]
    assert gate.authenticate("192.0.2.1", CURVE, old, 100.0) == Verdict(True, "alice", OK)
    assert gate.authenticate("192.0.2.1", CURVE, new, 100.0) == REFUSED
    inode, directory = path.stat().st_ino, layout.clients_dir.stat().st_mtime_ns

    rewrite_in_place(path, crypto.export_public_file(keyring.keys["mallory"]))  # alice's key replaced
    assert path.stat().st_ino == inode
    assert layout.clients_dir.stat().st_mtime_ns == directory

    assert gate.authenticate("192.0.2.1", CURVE, old, 101.0) == REFUSED, "the old key at once"
    assert gate.authenticate("192.0.2.1", CURVE, new, 101.0) == Verdict(True, "alice", OK), "the new key"
    assert gate.authenticate("192.0.2.1", CURVE, old, 105.0) == REFUSED


def test_a_key_file_replaced_by_rename_is_honoured_at_once(keyring, layout):
    gate = admission(layout)
    old, new = [curve_key(keyring, "alice")], [curve_key(keyring, "mallory")]
    assert gate.authenticate("192.0.2.1", CURVE, old, 100.0) == Verdict(True, "alice", OK)
    tmp = layout.clients_dir / "alice.tmp"
    tmp.write_bytes(crypto.export_public_file(keyring.keys["mallory"]))
    tmp.replace(layout.client_public("alice"))
    assert gate.authenticate("192.0.2.1", CURVE, old, 100.0) == REFUSED
    assert gate.authenticate("192.0.2.1", CURVE, new, 100.0) == Verdict(True, "alice", OK)


def test_a_removed_key_file_is_refused(keyring, layout):
    gate = admission(layout)
    alice = [curve_key(keyring, "alice")]
    assert gate.authenticate("192.0.2.1", CURVE, alice, 100.0) == Verdict(True, "alice", OK)
    layout.client_public("alice").unlink()
    assert gate.authenticate("192.0.2.1", CURVE, alice, 100.0) == REFUSED
    assert gate.authenticate("192.0.2.1", CURVE, alice, 110.0) == REFUSED
    assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "bob")], 110.0) == Verdict(True, "bob", OK)


def test_a_key_file_without_a_curve_key_cannot_connect(keyring, layout):
    gate = admission(layout)
    path = layout.client_public("alice")
    path.write_bytes(crypto.export_public_pem(keyring.keys["alice"]))  # written before protocol 2
    assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "alice")], 100.0) == REFUSED


def test_a_missing_registry_directory_refuses_everyone(keyring, layout):
    gate = admission(layout)
    shutil.rmtree(layout.clients_dir)
    assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "alice")], 100.0) == REFUSED


# ---------------------------------------------------------------- connections per source


def test_connections_per_source_are_capped(layout):
    gate = admission(layout, per_source=2)
    assert gate.accepted(10, ("192.0.2.1", 40010))
    assert gate.accepted(11, ("192.0.2.1", 40011))
    assert not gate.accepted(12, ("192.0.2.1", 40012)), "a third from the same source"
    assert gate.accepted(13, ("192.0.2.2", 40013)), "another source has its own count"
    assert gate.per_source == {"192.0.2.1": 2, "192.0.2.2": 1}

    gate.closed(12)  # the refused one was never counted: closing it frees nothing
    assert gate.per_source == {"192.0.2.1": 2, "192.0.2.2": 1}
    assert not gate.accepted(14, ("192.0.2.1", 40014))

    gate.closed(10)
    assert gate.per_source == {"192.0.2.1": 1, "192.0.2.2": 1}
    assert gate.accepted(15, ("192.0.2.1", 40015))
    assert not gate.accepted(16, ("192.0.2.1", 40016))

    gate.closed(11)
    gate.closed(15)
    gate.closed(13)
    assert gate.per_source == {}
    assert gate.connections == {}


def test_a_reused_handle_counts_once(layout):
    gate = admission(layout, per_source=2)
    assert gate.accepted(10, ("192.0.2.1", 40010))
    # Descriptor 10 closed without a `closed` (a missed event), then reused by another source.
    assert gate.accepted(10, ("192.0.2.2", 40010))
    assert gate.per_source == {"192.0.2.2": 1}
    assert gate.connections == {10: (("192.0.2.2", 40010), 0.0)}
    # And reused by the same source: still one connection.
    assert gate.accepted(10, ("192.0.2.2", 40010))
    assert gate.accepted(11, ("192.0.2.2", 40011))
    assert gate.per_source == {"192.0.2.2": 2}
    assert not gate.accepted(12, ("192.0.2.2", 40012))


def test_closing_an_unknown_handle_is_harmless(layout):
    gate = admission(layout, per_source=1)
    gate.closed(99)
    assert gate.accepted(10, ("192.0.2.1", 40010))
    gate.closed(99)
    gate.closed(10)
    gate.closed(10)  # twice
    assert gate.per_source == {}
    assert gate.connections == {}
    assert gate.accepted(11, ("192.0.2.1", 40011))
    assert gate.per_source == {"192.0.2.1": 1}


# ---------------------------------------------------------------- the log a peer cannot flood


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeMonotonic:
    """The monotonic time a PeerLog's flushes are given, by hand."""
    return FakeMonotonic()


@pytest.fixture
def peer_log(clock: FakeMonotonic, caplog: pytest.LogCaptureFixture) -> PeerLog:
    caplog.set_level(logging.INFO, logger="tests.peerlog")
    log = PeerLog(logging.getLogger("tests.peerlog"))
    log.flush(clock())  # its first window starts now
    return log


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tests.peerlog"]


def test_one_source_gets_a_few_lines_then_one_summary(peer_log, clock, caplog):
    for i in range(1000):
        peer_log.info("198.51.100.7", "bad frame %d from %s", i, "198.51.100.7")
    written = lines(caplog)
    assert written == [f"bad frame {i} from 198.51.100.7" for i in range(LOG_LINES_PER_SOURCE)]

    clock.now += LOG_WINDOW - 0.5
    peer_log.flush(clock())
    assert lines(caplog) == written, "no summary before the window ends"

    clock.now += 1.0
    peer_log.flush(clock())
    *_, summary = lines(caplog)
    assert len(lines(caplog)) == LOG_LINES_PER_SOURCE + 1
    assert summary.startswith(f"suppressed {1000 - LOG_LINES_PER_SOURCE} log lines about peers")
    assert f"198.51.100.7 {1000 - LOG_LINES_PER_SOURCE}" in summary
    assert caplog.records[-1].levelno == logging.WARNING

    peer_log.flush(clock())
    clock.now += 2 * LOG_WINDOW
    peer_log.flush(clock())
    assert len(lines(caplog)) == LOG_LINES_PER_SOURCE + 1, "one summary per window with suppressed lines"

    peer_log.warning("198.51.100.7", "a new window")
    assert lines(caplog)[-1] == "a new window", "the source may log again"


def test_the_summary_comes_with_the_next_line_too(peer_log, clock, caplog):
    for _ in range(LOG_LINES_PER_SOURCE + 5):
        peer_log.info("198.51.100.7", "noise")
    clock.now += LOG_WINDOW
    peer_log.flush(clock())  # the I/O loop flushes every turn: the window ends there
    peer_log.info("203.0.113.9", "first of a new window")
    *_, summary, line = lines(caplog)
    assert summary.startswith("suppressed 5 log lines about peers")
    assert line == "first of a new window"


def test_all_sources_together_are_capped(peer_log, clock, caplog):
    sources = [f"10.0.{i // 256}.{i % 256}" for i in range(LOG_LINES_IN_ALL + 100)]
    for source in sources:
        peer_log.info(source, "hello from %s", source)
    assert lines(caplog) == [f"hello from {source}" for source in sources[:LOG_LINES_IN_ALL]]
    clock.now += LOG_WINDOW
    peer_log.flush(clock())
    summary = lines(caplog)[-1]
    assert summary.startswith("suppressed 100 log lines about peers")
    assert len(lines(caplog)) == LOG_LINES_IN_ALL + 1


def test_lines_below_the_loggers_level_cost_nothing(clock, caplog):
    caplog.set_level(logging.WARNING, logger="tests.peerlog")
    log = PeerLog(logging.getLogger("tests.peerlog"))
    log.flush(clock())
    for _ in range(1000):
        log.info("198.51.100.7", "debugging noise")
    log.warning("198.51.100.7", "a warning")
    clock.now += LOG_WINDOW
    log.flush(clock())
    assert lines(caplog) == ["a warning"], "no summary: nothing was held back"


# ---------------------------------------------------------------- routing ids and silent connections


def libzmq_id(value: int) -> bytes:
    return b"\x00" + (value % 2**32).to_bytes(4, "big")


class Counter:
    """libzmq's routing-id counter as the probe reads it: each reading uses one id up."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.readings: list[int] = []

    def __call__(self) -> int:
        self.readings.append(self.value)
        self.value += 1
        return self.readings[-1]


def test_routing_ids_up_to_the_counter_are_libzmqs_and_ids_ahead_are_claims():
    counter = Counter(1)  # the id libzmq gives the next connection
    check = RoutingIds(first=0xFFFFFFFE, counter=counter, now=100.0)  # the counter wraps round 2**32
    counter.value = 5  # connections since: 0xFFFFFFFF, 0, 1, 2, 3, 4 were given out
    for value in (0xFFFFFFFF, 0, 4):
        assert check.made_by_libzmq(libzmq_id(value), 100.1)
    assert counter.readings == [5], "read once: the first id ahead of the last reading"
    assert not check.made_by_libzmq(libzmq_id(0xFFFFFFFE), 100.1), "the probe's own id"
    assert not check.made_by_libzmq(libzmq_id(5), 100.1), "the probe's own id"
    assert not check.made_by_libzmq(libzmq_id(7), 100.1), "ahead of the counter: a claim"
    assert not check.made_by_libzmq(libzmq_id(0x7FFFFFFF), 100.1)
    assert counter.readings == [5, 6, 7]
    # Ids of another form are never libzmq's: they are claims.
    assert not check.made_by_libzmq(b"alice", 100.1)
    assert not check.made_by_libzmq(b"\x00\x01", 100.1)


def test_an_unknown_routing_id_handed_out_longer_ago_than_the_window_is_a_claim():
    """A connection speaks within ID_WINDOW of getting its id; an id older than that which is not live belongs
    to a connection that spoke (and is known or ended) or was closed as silent: whoever sends it claimed it."""
    counter = Counter(10)
    check = RoutingIds(first=9, counter=counter, now=0.0)
    counter.value = 20  # ids 10..19 given out
    assert check.made_by_libzmq(libzmq_id(12), 1.0)  # reading 20 at t=1
    counter.value = 40
    assert check.made_by_libzmq(libzmq_id(30), 5.0)  # reading 40 at t=5
    assert check.made_by_libzmq(libzmq_id(15), 1.0 + ID_WINDOW - 1), "the reading at t=1 is not old yet"
    assert not check.made_by_libzmq(libzmq_id(15), 1.0 + ID_WINDOW + 0.5), "before the reading of ID_WINDOW ago"
    assert check.made_by_libzmq(libzmq_id(25), 1.0 + ID_WINDOW + 0.5), "after it"
    assert not check.made_by_libzmq(libzmq_id(25), 5.0 + ID_WINDOW + 0.5)
    assert not check.made_by_libzmq(libzmq_id(20), 1.0 + ID_WINDOW + 0.5), "a probe's"


def speakers(cap: int = 2) -> tuple[Speakers, Counter]:
    counter = Counter(1)
    return Speakers(RoutingIds(first=0, counter=counter, now=0.0), cap), counter


def test_a_routing_id_is_served_only_on_the_connection_it_was_first_seen_on():
    table, counter = speakers()
    counter.value = 10
    one = libzmq_id(3)
    assert table.first_frame(one, "10.0.0.1", "alice", 7, 101, 1.0) is Seen.SERVE
    assert table.live[one].serial == 101
    assert table.per_user == {"alice": 1}
    assert table.first_frame(one, "10.0.0.1", "alice", 7, 101, 1.1) is Seen.SERVE, "its descriptor read again"
    # libzmq took the id in again on another connection: the first has ended, and this one claimed it.
    assert table.first_frame(one, "10.0.0.2", "bob", 8, 102, 1.2) is Seen.CLAIM
    assert one not in table.live
    assert table.per_user == {}
    assert table.first_frame(one, "10.0.0.2", "bob", 8, 102, 1.3) is Seen.DROP, "its frames queued: dropped"


def test_an_ended_connections_id_is_never_served_again_but_its_own_last_words_are():
    table, counter = speakers()
    counter.value = 10
    one = libzmq_id(3)
    assert table.first_frame(one, "10.0.0.1", "alice", 7, 101, 1.0) is Seen.SERVE
    table.ended_connection(7, 2.0)
    assert table.live == {}
    assert table.per_user == {}
    assert table.first_frame(one, "10.0.0.1", "alice", 7, 101, 2.1) is Seen.LAST, "sent before it ended"
    assert table.last_words(one) == Speaker("10.0.0.1", "alice", 7, 101)
    assert table.first_frame(one, "10.0.0.1", "alice", 7, 103, 2.2) is Seen.CLAIM, "the descriptor reused"
    table.ended_connection(7, 2.3)
    # Long after, the id is older than the window: still a claim.
    assert table.first_frame(one, "10.0.0.1", "alice", 9, 104, 2.3 + ID_WINDOW + 5) is Seen.CLAIM


def test_a_user_holds_at_most_so_many_connections():
    table, counter = speakers(cap=2)
    counter.value = 10
    assert table.first_frame(libzmq_id(1), "10.0.0.1", "alice", 5, 1, 1.0) is Seen.SERVE
    assert table.first_frame(libzmq_id(2), "10.0.0.2", "alice", 6, 2, 1.0) is Seen.SERVE
    assert table.first_frame(libzmq_id(3), "10.0.0.3", "alice", 7, 3, 1.0) is Seen.FULL
    assert table.first_frame(libzmq_id(3), "10.0.0.3", "alice", 7, 3, 1.0) is Seen.DROP, "closing already"
    assert table.first_frame(libzmq_id(4), "10.0.0.3", "bob", 8, 4, 1.0) is Seen.SERVE, "bob has his own"
    table.ended_connection(7, 1.5)  # the refused one: frees nothing
    assert table.per_user == {"alice": 2, "bob": 1}
    table.ended_connection(5, 1.5)
    assert table.first_frame(libzmq_id(9), "10.0.0.3", "alice", 7, 9, 1.6) is Seen.SERVE


def test_a_claim_locks_its_user_out_and_the_refusals_say_try_later(keyring, layout):
    gate = Admission(
        Registry(layout), max_connections_per_source=64, handshakes_per_second=1000, routing_id_lockout=300.0
    )
    alice = [curve_key(keyring, "alice")]
    assert gate.lock_out("alice", 100.0), "a lockout starts"
    assert not gate.lock_out("alice", 150.0), "a second claim meanwhile extends it (and is not logged again)"
    assert gate.authenticate("192.0.2.1", CURVE, alice, 200.0) == LATER
    assert gate.authenticate("192.0.2.1", CURVE, alice, 449.0) == LATER
    assert gate.authenticate("192.0.2.1", CURVE, alice, 451.0) == Verdict(True, "alice", OK)
    assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "bob")], 200.0) == Verdict(True, "bob", OK)
    assert gate.authenticate("192.0.2.1", CURVE, [curve_key(keyring, "mallory")], 200.0) == REFUSED
    assert REFUSED.status == 400
    assert LATER.status == 300


def test_the_users_handshake_rate_is_not_the_strangers_rate_per_address(keyring, layout):
    gate = Admission(
        Registry(layout), max_connections_per_source=64, handshakes_per_second=1, handshakes_per_second_per_user=10
    )
    alice = [curve_key(keyring, "alice")]
    assert all(gate.authenticate("192.0.2.1", CURVE, alice, 100.0).allowed for _ in range(20))
    assert gate.authenticate("192.0.2.1", CURVE, alice, 100.0) == LATER


def test_connections_per_second_from_one_address_are_bounded(layout):
    gate = Admission(
        Registry(layout), max_connections_per_source=1000, handshakes_per_second=10, connections_per_second_per_source=5
    )
    verdicts = [gate.accepted(handle, ("192.0.2.1", 40000 + handle), 100.0) for handle in range(12)]
    assert verdicts == [True] * 10 + [False] * 2, "bursts of twice the rate"
    assert gate.accepted(50, ("192.0.2.2", 40050), 100.0), "another address"
    assert gate.accepted(51, ("192.0.2.1", 40051), 100.2), "one more after 0.2 s"
    assert not gate.accepted(52, ("192.0.2.1", 40052), 100.2)


def test_an_address_over_the_connection_rate_is_blocked_until_its_budget_is_whole_again(layout):
    gate = Admission(
        Registry(layout), max_connections_per_source=1000, handshakes_per_second=10, connections_per_second_per_source=5
    )
    assert all(gate.accepted(handle, ("192.0.2.1", 40000 + handle), 100.0) for handle in range(10))
    version = gate.blocklist.version
    assert gate.blocklist.sources() == []
    assert not gate.accepted(10, ("192.0.2.1", 40010), 100.0)
    assert gate.blocklist.until == {"192.0.2.1": 102.0}, "10 tokens at 5/s: 2 s"
    assert gate.blocklist.version == version + 1
    assert not gate.accepted(11, ("192.0.2.1", 40011), 100.1), "accepted before the kernel heard of the block"
    assert gate.blocklist.until == {"192.0.2.1": pytest.approx(102.0)}, "the bucket is full at the same time"
    assert gate.blocklist.version == version + 1, "the same addresses"
    gate.blocklist.expire(101.9)
    assert gate.blocklist.sources() == ["192.0.2.1"]
    gate.blocklist.expire(102.01)
    assert gate.blocklist.sources() == []
    assert gate.blocklist.version == version + 2
    assert all(gate.accepted(handle, ("192.0.2.1", 40000 + handle), 102.01) for handle in range(12, 22)), "a burst"


def test_connections_refused_for_the_cap_count_against_the_rate(layout):
    """An address that holds its cap of open connections and floods is blocked all the same."""
    gate = Admission(
        Registry(layout), max_connections_per_source=2, handshakes_per_second=10, connections_per_second_per_source=5
    )
    verdicts = [gate.accepted(handle, ("192.0.2.1", 40000 + handle), 100.0) for handle in range(11)]
    assert verdicts == [True] * 2 + [False] * 9
    assert gate.blocklist.sources() == ["192.0.2.1"], "the 11th is over the rate"


def test_the_blocklist_holds_so_many_addresses_at_most():
    blocklist = Blocklist(capacity=2)
    assert blocklist.block("192.0.2.1", 10.0)
    assert blocklist.block("2001:db8::1", 20.0)
    assert not blocklist.block("192.0.2.3", 30.0), "full: closed once accepted instead"
    assert blocklist.block("192.0.2.1", 5.0), "already there (the later end stays)"
    assert blocklist.until == {"192.0.2.1": 10.0, "2001:db8::1": 20.0}
    assert blocklist.next_expiry() == 10.0
    blocklist.expire(10.0)
    assert blocklist.sources() == ["2001:db8::1"]
    assert blocklist.block("192.0.2.3", 30.0)
    assert Blocklist().capacity == MAX_BLOCKED_SOURCES
    assert Blocklist().next_expiry() is None


def test_connections_that_never_speak_are_reported_once_the_limit_has_passed(keyring):
    admission = Admission(Registry(keyring.layout), max_connections_per_source=10, handshakes_per_second=5)
    assert admission.accepted(7, ("10.0.0.1", 40007), now=100.0)
    assert admission.accepted(8, ("10.0.0.1", 40008), now=100.0)
    admission.speaking(8)
    assert admission.silent(100.0 + SILENT_LIMIT - 0.1) == []
    assert admission.silent(100.0 + SILENT_LIMIT + 0.1) == [7]
    admission.closed(7)
    assert admission.silent(200.0) == []
    admission.speaking(99)  # a descriptor that is not (or no longer) counted changes nothing
    assert admission.accepted(99, ("10.0.0.2", 40099), now=200.0)
    assert admission.silent(200.0 + SILENT_LIMIT + 1) == [99]


def test_a_user_is_held_to_the_handshake_rate_from_every_source(keyring):
    admission = Admission(Registry(keyring.layout), max_connections_per_source=10, handshakes_per_second=1)
    curve = crypto.curve_public(crypto.curve_secret(keyring.keys["alice"]))
    verdicts = [admission.authenticate(f"10.0.0.{n}", b"CURVE", [curve], 50.0).allowed for n in range(5)]
    assert verdicts == [True, True, False, False, False]  # a burst of two, then the user's bucket is empty
    bob = crypto.curve_public(crypto.curve_secret(keyring.keys["bob"]))
    assert admission.authenticate("10.0.0.9", b"CURVE", [bob], 50.0).allowed


# ---------------------------------------------------------------- bytes that form no message


def test_a_connection_whose_bytes_form_no_message_is_found(layout):
    """What the kernel received on a real TCP connection, against what the broker read from it."""
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as client:
        accepted, peer = server.accept()
        with accepted:
            client.sendall(b"\x01\x00" * 50_000)  # 100,000 bytes of frames with MORE set, say (fits the buffer)
            deadline = time.monotonic() + 5
            while bytes_received(accepted.fileno(), peer) != 100_000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert bytes_received(accepted.fileno(), peer) == 100_000
            assert bytes_received(accepted.fileno(), ("192.0.2.9", 1)) is None, "not that peer's descriptor"
            gate = Admission(
                Registry(layout),
                max_connections_per_source=5,
                handshakes_per_second=10,
                unfinished_bytes_per_user=20_000,
            )
            assert gate.accepted(accepted.fileno(), peer)
            handle = accepted.fileno()
            assert gate.unread({handle: 90_000}, bytes_received) == [], "not tied to a user: 64 KiB"
            assert gate.unread({}, bytes_received) == [(handle, peer, 100_000)]
            gate.speaking(handle, "alice")
            assert gate.unread({handle: 90_000}, bytes_received) == []
            assert gate.unread({handle: 70_000}, bytes_received) == [(handle, peer, 30_000)]


def test_a_users_unfinished_bytes_are_summed_over_their_connections(layout):
    """Over the budget, the connections holding most are closed until the rest fits; a connection not tied
    to a user may hold UNTIED_ALLOWANCE."""
    gate = Admission(
        Registry(layout), max_connections_per_source=64, handshakes_per_second=10, unfinished_bytes_per_user=100
    )
    arrived = {1: 60, 2: 50, 3: 30, 4: 90, 5: UNTIED_ALLOWANCE + 1, 6: UNTIED_ALLOWANCE}
    for handle in arrived:
        assert gate.accepted(handle, ("192.0.2.1", 40000 + handle))
    for handle in (1, 2, 3):
        gate.speaking(handle, "alice")
    gate.speaking(4, "bob")

    def received(handle: int, peer: tuple[str, int]) -> int:
        return arrived[handle]

    closing = {handle for handle, _, _ in gate.unread({}, received)}
    assert closing == {1, 5}, "alice's 140 bytes: the 60 go; bob's 90 fit; one untied connection over 64 KiB"
    gate.closed(1)
    assert gate.users == {2: "alice", 3: "alice", 4: "bob"}
