"""`python -m attack` at small scale: every attack at once against a real broker while users chat.

Runs the attack exactly as `make attack` does, only shorter and at a tenth of
every attack rate (`--quick`), and checks its report: the broker stayed up and
exited 0 on SIGTERM, nothing from honest users was lost or duplicated, no
traceback or libzmq assertion in the broker's log, the store grew no more than
the attackers' quotas, the refilling user stayed within the message rate, and
every attack really sent something. The timing targets (p99, memory, the
flood's CPU share) are for the full run on quiet hardware, not for a test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attack.attackers import ATTACKS
from tests.conftest import ROOT, run_env

RUN = sorted(ATTACKS)


@pytest.mark.slow
def test_a_short_attack_leaves_the_broker_up_and_loses_nothing():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attack",
            "--quick",
            "--duration",
            "4",
            "--json",
            "--timeout",
            "100",
            "--attacks",
            ",".join(RUN),
        ],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip(), f"no report (exit status {proc.returncode}); stderr:\n{proc.stderr}"
    numbers = json.loads(proc.stdout)
    details = f"{json.dumps(numbers, indent=1)}\nstderr:\n{proc.stderr}"
    assert numbers["broker"]["up"], details
    assert numbers["broker"]["exit_status"] == 0, details
    assert numbers["broker"]["tracebacks"] == 0, details
    assert numbers["broker"]["assertion_failures"] == 0, details
    honest = numbers["honest"]
    assert honest["expected_deliveries"] > 0, details
    assert honest["lost"] == 0, details
    assert honest["duplicated"] == 0, details
    assert numbers["targets"]["broker_up"], details
    assert numbers["targets"]["nothing_lost"], details
    assert numbers["targets"]["nothing_duplicated"], details
    assert numbers["targets"]["store_growth_le_quotas"], details
    assert numbers["targets"]["refill_within_rate"], details
    attacks = numbers["attacks"]
    assert set(attacks) == set(RUN), details
    assert all(isinstance(stats, dict) for stats in attacks.values()), details  # each attacker reported
    # Issue 11's attacks.
    assert attacks["random_bytes"]["connections"] > 0, details
    assert attacks["routing_claims"]["claims_predicted"] > 0, details
    assert attacks["endless_multipart"]["frames"] > 0, details
    assert attacks["conn_flood"]["opened"] > 0, details
    assert attacks["rsa_work"]["stranger_hellos_queued"] > 0, details
    assert attacks["log_amp"]["frames"] > 0, details
    # Issue 18's.
    assert attacks["mail_self"]["mail_sent"] > 0, details
    assert attacks["mail_away"]["mail_sent"] > 0, details
    assert attacks["session_churn"]["sends_queued"] > 0, details
    assert attacks["held_multipart"]["connections"] > 0, details
    assert attacks["rate_refill"]["sent"] > 0, details
    assert attacks["hello_flood"]["connections"] > 0, details
    assert numbers["store"]["bound_mb"] > 0, details
