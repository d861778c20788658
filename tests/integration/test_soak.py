"""`python -m soak` at small scale: a real broker, clients in two worker processes, traffic and churn.

Runs the soak exactly as `make soak` does, only smaller, and checks its verdict
and its numbers: nothing lost, duplicated or reordered, every message accepted,
churning clients really left and came back.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_env

# Seed 19 makes four of the six churning clients leave within the first 2 s, so rejoins happen inside the 6 s.
SMALL_SOAK = ["--clients", "12", "--workers", "2", "--duration", "6", "--rate", "20", "--churn", "0.1", "--seed", "19"]


@pytest.mark.slow
def test_small_soak_loses_duplicates_and_reorders_nothing():
    proc = subprocess.run(
        [sys.executable, "-m", "soak", "--json", "--timeout", "100", *SMALL_SOAK],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip(), f"no report; stderr:\n{proc.stderr}"
    numbers = json.loads(proc.stdout)
    details = f"{json.dumps(numbers, indent=1)}\nstderr:\n{proc.stderr}"
    assert numbers["lost"] == 0, details
    assert numbers["duplicated"] == 0, details
    assert numbers["out_of_order"] == 0, details
    assert numbers["unexpected"] == 0, details
    assert numbers["delivered"] >= numbers["expected"] > 0, details
    assert numbers["sent"] == 120, details  # 20 msg/s for 6 s
    assert numbers["accepted"] == numbers["sent"], details
    assert numbers["reconnects"] > 0, details
    assert numbers["broker_exit"] == 0, details
    assert numbers["ok"] is True, details
    assert proc.returncode == 0, details
