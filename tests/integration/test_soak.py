"""`python -m soak` at small scale: a real broker, clients in two worker processes, traffic and churn.

Runs the soak exactly as `make soak` does, only smaller, and checks its verdict
and its numbers: nothing lost, duplicated or reordered, every message accepted,
churning clients really left and came back. A second run kills the broker with
SIGKILL every 3 s (`make soak KILL_BROKER_EVERY=...`) and checks that nothing
acknowledged was lost, duplicated or reordered across the restarts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT, run_env

# Seed 19 makes four of the six churning clients leave within the first 2 s, so rejoins happen inside the 6 s.
SMALL_SOAK = ["--clients", "12", "--workers", "2", "--duration", "6", "--rate", "20", "--churn", "0.1", "--seed", "19"]
# Kills at t+3 s and t+6 s; 10 msg/s, so that messages are on their way at each kill; some churn.
KILLING_SOAK = [
    "--clients",
    "12",
    "--workers",
    "2",
    "--duration",
    "8",
    "--rate",
    "10",
    "--churn",
    "0.05",
    "--kill-broker-every",
    "3",
]


def soak(args: list[str], timeout: float) -> tuple[dict[str, Any], str, int]:
    """Run `python -m soak --json` with a hard limit below `timeout`; its numbers, a description, its status."""
    proc = subprocess.run(
        [sys.executable, "-m", "soak", "--json", "--timeout", str(timeout - 20), *args],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.stdout.strip(), f"no report; stderr:\n{proc.stderr}"
    numbers: dict[str, Any] = json.loads(proc.stdout)
    return numbers, f"{json.dumps(numbers, indent=1)}\nstderr:\n{proc.stderr}", proc.returncode


@pytest.mark.slow
def test_small_soak_loses_duplicates_and_reorders_nothing() -> None:
    numbers, details, status = soak(SMALL_SOAK, 120)
    assert numbers["lost"] == 0, details
    assert numbers["duplicated"] == 0, details
    assert numbers["out_of_order"] == 0, details
    assert numbers["unexpected"] == 0, details
    assert numbers["unanswered"] == 0, details
    assert numbers["delivered"] >= numbers["expected"] > 0, details
    assert numbers["sent"] == 120, details  # 20 msg/s for 6 s
    assert numbers["accepted"] == numbers["sent"], details
    assert numbers["kills"] == 0, details
    assert numbers["reconnects"] > 0, details
    assert numbers["broker_exit"] == 0, details
    assert numbers["ok"] is True, details
    assert status == 0, details


@pytest.mark.slow
def test_soak_killing_the_broker_loses_duplicates_and_reorders_nothing_acknowledged() -> None:
    numbers, details, _ = soak(KILLING_SOAK, 150)
    assert numbers["kills"] >= 2, details
    assert numbers["lost"] == 0, details
    assert numbers["duplicated"] == 0, details
    assert numbers["out_of_order"] == 0, details
    assert numbers["unexpected"] == 0, details
    assert numbers["accepted"] > 0, details
    assert numbers["accepted_after_last_kill"] > 0, details  # the last restarted broker took messages too
    assert numbers["relogins"] > 0, details  # clients logged in again after the kills
    assert numbers["drained"] is True, details
    assert numbers["broker_exit"] == 0, details  # the last broker, stopped with SIGTERM
    assert numbers["broker_internal_errors"] == numbers["broker_tracebacks"] == 0, details
    # Every message is answered, except those of a client that gave up for good: a re-login whose LOGIN
    # crossed a restart gets REFUSED ("LOGIN without a challenge"), and the reference client then closes
    # (docs/PROTOCOL.md 5.6), reporting its waiting messages "not confirmed". Nothing is left waiting.
    assert numbers["unanswered"] == numbers["unanswered_given_up"], details
