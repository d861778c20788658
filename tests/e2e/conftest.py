"""Fixtures for driving chat_client.py and broker.py as real processes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BrokerProcess, KeyRing, broker_in
from tests.e2e.helpers import CLIENT, Proc


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """Start a program (path and arguments after the interpreter); every one is killed at teardown."""
    procs: list[Proc] = []

    def factory(args: list[str], cwd: Path, env: dict[str, str] | None = None, name: str = "") -> Proc:
        proc = Proc(args, cwd, env, name)
        procs.append(proc)
        return proc

    yield factory
    for proc in procs:
        proc.kill()


@pytest.fixture
def client(spawn: Callable[..., Proc]) -> Callable[..., Proc]:
    """chat_client.py logged in with flags to a broker, run in the broker's directory."""

    def factory(broker: BrokerProcess, user: str, *extra: str, env: dict[str, str] | None = None) -> Proc:
        args = [CLIENT, "--host", "127.0.0.1", "--port", str(broker.port), "--user", user, *extra]
        return spawn(args, broker.workdir, env, name=user)

    return factory


@pytest.fixture
def console_broker(tmp_path: Path, keyring: KeyRing) -> Iterator[Callable[..., BrokerProcess]]:
    """A broker whose stdin is a pipe the test writes to (built the same way as `make_broker`)."""
    started: list[BrokerProcess] = []

    def factory(**overrides: Any) -> BrokerProcess:
        broker = broker_in(tmp_path / f"console-broker{len(started)}", keyring, overrides, BrokerProcess)
        started.append(broker)
        return broker.start(stdin=subprocess.PIPE)

    yield factory
    for broker in started:
        broker.kill()
        if broker.proc is not None and broker.proc.stdin is not None:
            broker.proc.stdin.close()
