"""The broker's supervisor, with real brokers: a broker aborted under traffic is back by itself and nothing
accepted is lost; a stop (SIGTERM, Ctrl-C) is the broker's own, never a restart; a broker that cannot start is
not restarted; a broker that keeps dying is given up on; a `kill -9` of the supervisor leaves no broker."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from harness.procfs import child_pids, running
from tests.conftest import (
    WAIT,
    BrokerProcess,
    KeyRing,
    broker_config,
    broker_in,
    broker_on_terminal,
    free_port,
    pump,
    run_env,
    wait_until,
)
from zchat.broker.supervisor import SUPERVISOR_PID
from zchat.events import Accepted, ChatMessage, Event, Failed

pytestmark = pytest.mark.slow

RESTARTED = re.compile(r"the broker \(pid (\d+)\) (.+); started it again as pid (\d+)")


class SupervisedBroker(BrokerProcess):
    """broker.py as `make broker` runs it: `proc` is the supervisor, the broker is its child."""

    options = ()

    def child(self, timeout: float = WAIT) -> int:
        """The broker process under the supervisor (waits until there is exactly one)."""
        assert self.proc is not None
        return wait_until(lambda: single(child_pids(self.proc.pid)), timeout, "the supervisor's one child")


def single(pids: list[int]) -> int | None:
    return pids[0] if len(pids) == 1 else None


@pytest.fixture
def supervised(tmp_path: Path, keyring: KeyRing) -> Iterator[Callable[..., SupervisedBroker]]:
    """Start supervised brokers on a fixed free port (a restarted broker listens where the first did)."""
    started: list[SupervisedBroker] = []

    def factory(**overrides: Any) -> SupervisedBroker:
        broker = broker_in(tmp_path / f"supervised{len(started)}", keyring, overrides, SupervisedBroker)
        started.append(broker)
        broker.start(port=free_port())
        return broker

    yield factory
    for broker in started:
        kids = child_pids(broker.proc.pid) if broker.proc is not None else []
        broker.kill()
        for kid in kids:  # they die with the supervisor; this only stops a leak if that is broken
            if running(kid):
                os.kill(kid, signal.SIGKILL)
    for broker in started:
        assert "internal error" not in broker.log(), broker.log()


@pytest.mark.slow
def test_a_broker_aborted_under_traffic_is_back_and_loses_and_repeats_nothing_accepted(supervised, connect):
    broker = supervised(history_size=1000, messages_per_second_per_user=1000)
    senders = [connect(broker, name, connect_timeout=10.0) for name in ("alice", "bob")]
    clients = [*senders, connect(broker, "carol", connect_timeout=10.0)]
    sent: dict[str, list[str]] = {client.name: [] for client in senders}
    answers: dict[str, Event] = {}
    shown: dict[str, list[ChatMessage]] = {client.name: [] for client in clients}

    def take(events: dict[str, list[Event]]) -> None:
        for name, got in events.items():
            for event in got:
                if isinstance(event, Accepted | Failed):
                    assert event.message_id not in answers, f"answered twice: {event}"
                    answers[event.message_id] = event
                elif isinstance(event, ChatMessage) and event.sender != name:
                    shown[name].append(event)

    first = broker.child()
    workers = child_pids(first)
    assert workers  # its crypto worker, which must leave when its broker is gone
    offset = len(broker.log_path.read_bytes())
    for i in range(40):
        for sender in senders:
            sent[sender.name].append(sender.send(f"{sender.name} {i:02}"))
        take(pump(clients, 0.01))
        if i == 15:
            os.kill(first, signal.SIGABRT)  # what libzmq does when a claimed routing id collides with its own
    restarted = broker.wait_for_log(RESTARTED.pattern, since=offset, timeout=30)
    assert int(restarted.group(1)) == first
    assert restarted.group(2).startswith("killed by SIGABRT")  # "(core dumped)" too where core files are on
    broker.wait_for_log("listening on", since=offset, timeout=30)
    assert broker.child() == int(restarted.group(3)) != first

    everything = [mid for ids in sent.values() for mid in ids]
    deadline = time.monotonic() + 60
    while len(answers) < len(everything) and time.monotonic() < deadline:
        take(pump(clients, 0.2))
    take(pump(clients, 1.0))  # the last deliveries

    assert set(answers) == set(everything), f"never answered: {sorted(set(everything) - set(answers))}"
    assert [a for a in answers.values() if isinstance(a, Failed)] == []
    for client in clients:  # each one saw everyone else's messages exactly once, live or from the history
        expected = Counter(mid for name, ids in sent.items() if name != client.name for mid in ids)
        assert Counter(m.message_id for m in shown[client.name]) == expected, client.name
    wait_until(lambda: not any(running(pid) for pid in [first, *workers]), WAIT, "the aborted broker's workers exit")
    assert broker.log(offset).count("listening on") == 1


@pytest.mark.slow
def test_sigterm_to_the_supervisor_stops_the_broker_gracefully_with_status_0(supervised, connect):
    broker = supervised()
    connect(broker, "alice")
    child = broker.child()
    workers = child_pids(child)
    assert broker.terminate() == 0
    assert not any(running(pid) for pid in [child, *workers])  # it waited for the broker, which stops its workers
    log = broker.log()
    assert log.count("shutting down: SIGTERM") == 1
    assert "broker stopped" in log
    assert "started it again" not in log


@pytest.mark.slow
def test_sighup_to_the_supervisor_stops_the_broker_gracefully_with_status_0(supervised, connect):
    """A closed terminal or a service manager's SIGHUP: passed on, and the broker stops as on SIGTERM."""
    broker = supervised()
    connect(broker, "alice")
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    assert broker.proc.wait(WAIT) == 0
    log = broker.log()
    assert log.count("shutting down: SIGHUP") == 1
    assert "started it again" not in log


def test_ctrl_c_on_a_terminal_stops_the_broker_once_with_status_0(tmp_path, keyring):
    child = broker_on_terminal(broker_config(tmp_path, keyring), tmp_path)
    try:
        child.expect("listening on")
        child.expect("crypto: ")
        child.sendintr()  # the terminal sends SIGINT to its foreground process group: supervisor, broker, workers
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        assert child.before.count("shutting down: SIGINT") == 1
        assert "Traceback" not in child.before
        assert "started it again" not in child.before
    finally:
        if child.isalive():
            child.terminate(force=True)


# A child that counts the SIGINTs it gets: Ctrl-C reaches it from the terminal, and the supervisor must not
# send it a second one.
COUNT_SIGINTS = """
import signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda *_: got.append(1))
print("ready", flush=True)
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:
    time.sleep(0.02)
print(f"SIGINTs: {len(got)}", flush=True)
"""
SUPERVISE = "import sys; from zchat.broker.supervisor import supervise; sys.exit(supervise(sys.argv[1:]))"


@pytest.mark.parametrize("source", ["terminal", "kill"])
def test_the_broker_gets_one_sigint_whoever_sends_it(source):
    child = pexpect.spawn(
        sys.executable,
        ["-c", SUPERVISE, sys.executable, "-c", COUNT_SIGINTS],
        env=run_env(),
        encoding="utf-8",
        timeout=WAIT,
    )
    try:
        child.expect("ready")
        if source == "terminal":
            child.sendintr()
        else:
            os.kill(child.pid, signal.SIGINT)  # to the supervisor alone: it passes it on
        child.expect(r"SIGINTs: (\d+)")
        assert child.match.group(1) == "1"
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


@pytest.mark.parametrize("failure", ["bad config", "port taken"])
def test_a_broker_that_cannot_start_is_not_restarted(supervised, failure):
    broker = supervised()
    assert broker.terminate() == 0
    if failure == "bad config":
        broker.config_path.write_text('{"server_ip": "127.0.0.1", "server_port": "five"}')
        result = broker.run_to_the_end()
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", broker.port))
            taken.listen()
            result = broker.run_to_the_end()
    assert result.returncode == 1
    # One line from the broker (a later one may first clean up what other tests' aborted brokers left in /tmp).
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("broker: error: ")
    assert ("server_port" if failure == "bad config" else "cannot listen") in errors[0]


def test_a_broker_that_keeps_dying_is_given_up_with_one_line(supervised):
    broker = supervised(workers=0)
    pids = []
    for restarts in range(6):  # five restarts in a minute are allowed; the sixth death is one too many
        pids.append(broker.child())
        os.kill(pids[-1], signal.SIGABRT)
        if restarts < 5:
            wait_until(lambda n=restarts: len(RESTARTED.findall(broker.log())) == n + 1, 30, "a restart")
    assert broker.proc is not None
    assert broker.proc.wait(30) == 128 + signal.SIGABRT
    lines = broker.log().strip().splitlines()
    assert re.fullmatch(
        r"broker: error: the broker died 6 times within 60 s \(last: killed by SIGABRT( \(core dumped\))?\);"
        r" not starting it again",
        lines[-1],
    ), lines[-1]
    assert [int(m[0]) for m in RESTARTED.findall(broker.log())] == pids[:5]
    assert not any(running(pid) for pid in pids)


@pytest.mark.slow
def test_kill_9_of_the_supervisor_leaves_no_broker_and_the_port_free(supervised):
    broker = supervised()
    child = broker.child()
    workers = child_pids(child)
    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait(WAIT)
    # The kernel kills the orphaned broker (PR_SET_PDEATHSIG) as its supervisor exits; it is gone a moment later.
    wait_until(lambda: not any(running(pid) for pid in [child, *workers]), WAIT, "the broker and its workers exit")
    broker.start(port=broker.port)  # the port is free: nothing is left holding it
    assert broker.log().count("listening on") == 2
    assert broker.child() != child


@pytest.mark.slow
def test_a_broker_whose_supervisor_is_already_gone_does_not_start(supervised):
    broker = supervised()
    assert broker.terminate() == 0
    not_our_parent = str(os.getpid() + 1)  # the broker's parent is this process
    result = broker.run_to_the_end(env={**run_env(), SUPERVISOR_PID: not_our_parent})
    assert result.returncode == 1
    assert result.stderr.strip() == f"broker: error: its supervisor (pid {not_our_parent}) is gone; not starting"
