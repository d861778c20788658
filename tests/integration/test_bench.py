"""`python -m bench --quick --json` runs and reports every number the issue asks for.

Only that it runs and what it prints: no timing is asserted, the numbers
depend on the machine (only orders that hold anywhere, such as a commit of
100 messages taking longer than a commit of one).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.report import render_table
from tests.conftest import ROOT, run_env

POSITIVE_KEYS = (
    "clients",
    "message_bytes",
    "key_bits",
    "cores",
    "deliveries_per_s",
    "crypto_bound_per_s_one_core",
    "crypto_bound_per_s_all_cores",
    "efficiency_all_cores",
    "efficiency",
    "latency_ms_p50",
    "latency_ms_p99",
    "fanout_crypto_ms",
    "plain_relay_deliveries_per_s",
    "curve_relay_deliveries_per_s",
    "rss_mb_1000_clients",
    "login_storm_s",
    "client_login_crypto_ms",
    "login_storm_floor_s",
    "curve_handshake_ms",
    "broker_commits_per_s",
    "broker_messages_per_commit",
)
# Numbers that may round to zero or below on a busy machine (small CPU differences), so only their presence is checked.
NUMBER_KEYS = ("curve_handshake_broker_cpu_ms", "curve_cpu_us_per_delivery")


@pytest.mark.slow
def test_quick_bench_prints_every_key():
    proc = subprocess.run(
        # Smaller still than --quick: the test checks that every number is there, not what it is.
        [sys.executable, "-m", "bench", "--quick", "--json", "--duration", "1", "--idle-clients", "20"],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=150,  # below pytest's own timeout, so a hang is reported with the bench's output
    )
    assert proc.stdout.strip(), f"no report; stderr:\n{proc.stderr}"
    numbers = json.loads(proc.stdout)
    details = f"{json.dumps(numbers, indent=1)}\nstderr:\n{proc.stderr}"
    # The one problem a busy machine causes (the suite runs beside it): the crypto bound, measured under load,
    # sized too few prepared messages for the broker then. Anything else (lost deliveries...) fails the test.
    assert [problem for problem in numbers["problems"] if not problem.endswith("(not saturated)")] == [], details
    assert proc.returncode == (1 if numbers["problems"] else 0), details
    assert numbers["quick"] is True, details
    for key in POSITIVE_KEYS:
        value = numbers[key]
        assert isinstance(value, (int, float)), f"{key}: {value!r}\n{details}"
        assert not isinstance(value, bool), f"{key}: {value!r}\n{details}"
        assert value > 0, f"{key}: {value!r}\n{details}"
    for key in NUMBER_KEYS:
        assert isinstance(numbers[key], (int, float)), f"{key}: {numbers[key]!r}\n{details}"
    assert numbers["clients"] == 10, details
    assert numbers["key_bits"] == 2048, details
    assert numbers["efficiency"] == pytest.approx(
        numbers["deliveries_per_s"] / (numbers["cores"] * numbers["crypto_bound_per_s_one_core"]), rel=0.01
    ), details
    # zchat/3's group commit: timed alone for groups of 1, 10 and 100 messages, and counted in the broker's log.
    groups = numbers["commit_latency"]
    assert [group["messages"] for group in groups] == [1, 10, 100], details
    for group in groups:
        assert 0 < group["ms_p50"] <= group["ms_p99"], details
        assert group["messages_per_s"] > 0, details
    assert groups[2]["ms_p50"] > groups[0]["ms_p50"], details  # a hundred writes cost more than one
    assert numbers["details"]["broker"]["commits"] > 0, details
    # Every commit holds at least one message (a few may be store upkeep), so there are about as many messages as
    # commits or more; the messages come from the deliveries counted in the window, which lag the commits a little.
    assert numbers["broker_messages_per_commit"] >= 0.5, details
    assert "make bench" in numbers["command"], details
    table = render_table(numbers)  # the table `make bench` prints, from the same numbers
    for row in (
        "broker: encrypted deliveries/s",
        "crypto on all",
        "login storm:",
        "CurveZMQ handshake",
        "store: commit of 100 messages",
        "broker: commits/s",
    ):
        assert row in table, table
    assert f"{numbers['deliveries_per_s']:,.0f}" in table, table
