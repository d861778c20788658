"""The supervisor's policy without processes: which deaths are restarted, the restart budget, which signals go
on to the broker, and which command lines run the broker without a supervisor."""

from __future__ import annotations

import signal

import pytest

from zchat.broker.supervisor import (
    SI_KERNEL,
    RestartBudget,
    crashed,
    describe,
    exit_status,
    passed_on,
    wants_supervisor,
)

SI_USER = 0


@pytest.mark.parametrize(
    ("status", "restart"),
    [
        (0, False),  # stopped
        (1, False),  # refused to start: config, keys, database, port
        (2, False),  # a command-line error
        (70, True),  # stopped on a failure after it started
        (3, True),
        (120, True),
        (-signal.SIGABRT, True),  # libzmq's assertion
        (-signal.SIGSEGV, True),
        (-signal.SIGBUS, True),
        (-signal.SIGKILL, True),  # the OOM killer
        (-signal.SIGQUIT, True),
        (-signal.SIGINT, False),  # the signals of a stop
        (-signal.SIGTERM, False),
        (-signal.SIGHUP, False),
        (-signal.SIGPIPE, False),
    ],
)
def test_which_deaths_are_restarted(status, restart):
    assert crashed(status) is restart


def test_the_supervisor_exits_with_the_brokers_status_and_128_plus_a_signal():
    assert exit_status(0) == 0
    assert exit_status(1) == 1
    assert exit_status(70) == 70
    assert exit_status(-signal.SIGABRT) == 134
    assert exit_status(-signal.SIGTERM) == 143


def test_a_death_is_described_in_words():
    assert describe(-signal.SIGABRT) == "killed by SIGABRT"
    assert describe(-signal.SIGSEGV, core_dumped=True) == "killed by SIGSEGV (core dumped)"
    assert describe(70) == "exited with status 70"
    assert describe(-200) == "killed by signal 200"


def test_five_restarts_a_minute_and_no_more():
    budget = RestartBudget(limit=5, window=60.0)
    assert all(budget.take(now) for now in (0.0, 1.0, 2.0, 3.0, 4.0))
    assert not budget.take(5.0)  # a sixth within the minute
    assert not budget.take(59.9)
    assert budget.take(60.0)  # the first one has left the window
    assert not budget.take(60.5)
    assert budget.take(200.0)


def test_a_broker_that_ran_a_while_before_it_died_starts_the_count_afresh():
    """A peer who crashes a running broker now and then costs restarts, never the service."""
    budget = RestartBudget(limit=2, window=60.0, stable_after=10.0)
    assert budget.take(0.0, ran_for=1.0)
    assert budget.take(1.0, ran_for=0.5)
    assert not budget.take(2.0, ran_for=0.5), "it cannot even start: give up"
    assert budget.take(20.0, ran_for=15.0)
    assert budget.take(31.0, ran_for=11.0)
    assert budget.take(42.0, ran_for=11.0)
    assert budget.take(43.0, ran_for=0.5)
    assert not budget.take(44.0, ran_for=0.5)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_go_on_to_the_broker(signum):
    assert passed_on(signum, SI_USER)


def test_a_terminals_ctrl_c_reached_the_broker_already_and_is_not_sent_twice():
    assert not passed_on(signal.SIGINT, SI_KERNEL)
    assert passed_on(signal.SIGHUP, SI_KERNEL)  # a hangup may reach only the session leader: pass it on


@pytest.mark.parametrize(
    ("args", "supervised"),
    [
        ([], True),
        (["--config", "c.json"], True),
        (["--config=c.json", "--create-keys", "--log-level", "DEBUG"], True),
        (["--no-supervisor"], False),
        (["--config", "c.json", "--no-sup"], False),  # argparse takes an abbreviation
        (["--backup", "copy.db"], False),
        (["--backup=copy.db"], False),
        (["-h"], False),
        (["--help"], False),
        (["--", "--help"], True),
    ],
)
def test_which_command_lines_run_the_broker_without_a_supervisor(args, supervised):
    assert wants_supervisor(args) is supervised
