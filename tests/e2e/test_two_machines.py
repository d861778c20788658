"""Issue 13: README's "Another machine", end to end, with two machines played on this host.

Each machine is its own copy of the repository (as a fresh clone: `keys/` holds only its README) in its own
network namespace; the two namespaces are joined by a veth pair and nothing else, so the only way from B to
the broker on A is A's private address. Every step is a command from README, run the way a person runs it
(`make ...` in the machine's directory, inside its namespace), and the keys travel between the machines
as plain file copies. Where README, taken literally, does not work, the test does what README should say and
says so in a comment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, WAIT, copy_checkout
from tests.e2e.helpers import Proc
from zchat import crypto

pytestmark = pytest.mark.slow

STAMP = ".venv/.runtime-installed"  # make -o: never (re)install into the shared venv
A_IP, B_IP = "10.213.0.1", "10.213.0.2"  # only inside the two namespaces: never clash with the host or other runs
PORT = 5000  # config.json's: each namespace has its own ports, so README's default is free
START_WAIT = 30.0  # the broker creates its 3072-bit key pair and starts its workers
MAKE_WAIT = 60.0
CLOCK = r"\[\d\d:\d\d:\d\d\]"
# What a fresh clone holds and `make broker|keys|client|fingerprint` use.


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL)


def _ip_ok(*args: str) -> None:
    result = _ip(*args)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr.strip()}"


def _sweep(netns: str) -> None:
    """SIGKILL whatever still runs in `netns` (only this test starts processes there) and wait until it is empty."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        listed = _ip("netns", "pids", netns)
        pids = [int(pid) for pid in listed.stdout.split()] if listed.returncode == 0 else []
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two network namespaces, A (A_IP) and B (B_IP) on one veth pair, loopback up; deleted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed")
    tag = uuid.uuid4().hex[:8]
    names = (f"zchat-a-{tag}", f"zchat-b-{tag}")
    created: list[str] = []
    try:
        for name in names:
            added = _ip("netns", "add", name)
            if added.returncode != 0:
                pytest.skip(f"`ip netns add` is unavailable here: {added.stderr.strip()}")
            created.append(name)
        # Both ends are created straight inside their namespaces: no interface name is ever taken on the host.
        _ip_ok("link", "add", "veth-a", "netns", names[0], "type", "veth", "peer", "name", "veth-b", "netns", names[1])
        for name, dev, address in ((names[0], "veth-a", A_IP), (names[1], "veth-b", B_IP)):
            _ip_ok("-n", name, "addr", "add", f"{address}/24", "dev", dev)
            _ip_ok("-n", name, "link", "set", dev, "up")
            _ip_ok("-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in created:
            _sweep(name)
            _ip("netns", "delete", name)  # also removes the veth pair
        leftover = _ip("netns", "list").stdout
        assert not any(name in leftover for name in created), leftover


def _env() -> dict[str, str]:
    """A person's shell: no PYTHONPATH from the test run, no make state, no passphrase (so no prompt)."""
    drop = {"PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PASSPHRASE", "NO_COLOR"}
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def background(argv: Sequence[str], cwd: Path, name: str) -> Proc:
    """A long-running command inside a namespace, in its own process group (make, the shell and python under it,
    and the broker's workers); what outlives a leader that already exited is swept with the namespace."""
    return Proc(argv, cwd, _env(), name, command=True, group=True)


@dataclass
class Machine:
    """One computer: a copy of the repository, used only from inside its own network namespace."""

    label: str
    netns: str
    ip: str
    repo: Path
    started: list[Proc]

    @property
    def keys(self) -> Path:
        return self.repo / "keys"

    def _argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *command]

    def make(self, *targets: str) -> subprocess.CompletedProcess[str]:
        argv = self._argv("make", "--no-print-directory", "-o", STAMP, *targets)
        result = subprocess.run(
            argv, cwd=self.repo, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=MAKE_WAIT
        )
        assert result.returncode == 0, f"{self.label}: make {' '.join(targets)}:\n{result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def start(self, *command: str, name: str) -> Proc:
        proc = background(self._argv(*command), self.repo, f"{name} on {self.label}")
        self.started.append(proc)
        return proc


def _clone(target: Path) -> Path:
    """A fresh clone's files, with the project's venv linked in (nothing is installed)."""
    copy_checkout(target)
    (target / "keys").mkdir()
    shutil.copy2(ROOT / "keys" / "README.md", target / "keys" / "README.md")  # a clone has keys/, empty but this
    return target


@pytest.fixture
def machines(tmp_path: Path, namespaces: tuple[str, str]) -> Iterator[tuple[Machine, Machine]]:
    started: list[Proc] = []
    a = Machine("A", namespaces[0], A_IP, _clone(tmp_path / "machine-a" / "zchat"), started)
    b = Machine("B", namespaces[1], B_IP, _clone(tmp_path / "machine-b" / "zchat"), started)
    try:
        yield a, b
    finally:
        for proc in reversed(started):  # clients first, the broker last; `namespaces` then sweeps and deletes
            proc.kill()


def _client(host: str, user: str) -> list[str]:
    return [".venv/bin/python", "chat_client.py", "--host", host, "--port", str(PORT), "--user", user]


def _fingerprint(make_output: str) -> str:
    match = re.search(r"^fingerprint (SHA256:[0-9a-f]{64})$", make_output, re.MULTILINE)
    assert match, make_output
    return match.group(1)


@pytest.mark.slow
def test_another_machine_as_readme_says(machines: tuple[Machine, Machine]) -> None:
    a, b = machines
    broker, broker_fp = _broker_on(a)
    alice_fp, bob_fp = _keys_exchanged(a, b, broker_fp)
    alice, bob = _chat_across(a, b, bob_fp)

    # ---- everyone leaves: end of input leaves like /exit; /shutdown on the broker's console stops it.
    bob.close_stdin()
    assert bob.wait() == 0, bob.transcript()
    alice.expect_line(rf"^{CLOCK} \* bob left\b")
    alice.close_stdin()
    assert alice.wait() == 0, alice.transcript()
    broker.send("/shutdown")
    assert broker.wait(START_WAIT) == 0, broker.transcript()
    log = broker.err.text()
    assert "bob logged in (" + bob_fp[:23] in log, log
    assert "alice logged in (" + alice_fp[:23] in log, log
    assert "internal error" not in log, log
    for proc in (alice, bob, broker):
        assert "Traceback" not in proc.err.text(), proc.transcript()


def _broker_on(a: Machine) -> tuple[Proc, str]:
    # ---- machine A, the broker's: "set `server_ip` in `config.json`", then `make broker`.
    config_path = a.repo / "config.json"
    config = json.loads(config_path.read_text())
    config["server_ip"] = a.ip
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    broker = a.start("make", "--no-print-directory", "-o", STAMP, "broker", name="make broker")
    broker.expect_err(r"created (?:the|a new) broker key pair \S*keys/broker\.pem", START_WAIT)
    broker_fp = broker.expect_err(
        rf"INFO broker: listening on tcp://{re.escape(a.ip)}:{PORT} \(broker key (\S+)\)", START_WAIT
    )[1]
    assert (a.keys / "broker.pem").stat().st_mode & 0o777 == 0o600
    return broker, broker_fp


def _keys_exchanged(a: Machine, b: Machine, broker_fp: str) -> tuple[str, str]:
    """README's key exchange: the fingerprints of alice (made on A) and bob (made on B)."""
    # ---- A's own user, as the walkthrough does it on the broker's machine.
    alice_fp = _fingerprint(a.make("keys", "NAME=alice").stdout)

    # ---- machine B: "Copy `keys/broker.pub` from the broker's machine to the client machine's `keys/broker.pub`".
    shutil.copyfile(a.keys / "broker.pub", b.keys / "broker.pub")
    copied = (b.keys / "broker.pub").read_bytes()
    assert crypto.fingerprint(crypto.load_public_key(b.keys / "broker.pub")) == broker_fp

    # "Create the user's key on the client machine with `make keys NAME=bob`".
    made = b.make("keys", "NAME=bob").stdout
    bob_fp = _fingerprint(made)
    assert "wrote keys/private/bob.pem (mode 0600" in made
    assert "wrote keys/clients/bob.pub: give it to the broker's operator" in made
    assert "broker key pair" not in made
    assert (b.keys / "broker.pub").read_bytes() == copied, "make keys on B changed the copied broker.pub"
    assert not (b.keys / "broker.pem").exists(), "make keys on B made B a broker"
    assert (b.keys / "private" / "bob.pem").stat().st_mode & 0o777 == 0o600

    # "give the broker's operator `keys/clients/bob.pub` to drop into the broker's `keys/clients/`"
    # (while the broker runs: "picks it up at the next connection, no restart needed").
    shutil.copyfile(b.keys / "clients" / "bob.pub", a.keys / "clients" / "bob.pub")

    # "Compare the printed fingerprints out of band": what make printed on B against the broker's registry.
    # (README's section does not say which command prints it on A; `make fingerprint` is in "Key trust".)
    assert a.make("fingerprint", "NAME=bob").stdout.strip() == f"bob {bob_fp}"
    assert a.make("fingerprint", "NAME=alice").stdout.strip() == f"alice {alice_fp}"
    return alice_fp, bob_fp


def _chat_across(a: Machine, b: Machine, bob_fp: str) -> tuple[Proc, Proc]:
    # ---- the two users, without prompts, as "Without prompts, and from scripts" says: alice on A, and bob on B
    # against A's address. README writes `python chat_client.py ...`, but a bare `python` has none of the
    # dependencies (they are in .venv, which the make targets created): the venv's interpreter is what works.
    alice = a.start(*_client(a.ip, "alice"), name="alice")
    alice.expect_line(rf"^{CLOCK} \* logged in as alice; online: nobody else\b")
    bob = b.start(*_client(a.ip, "bob"), name="bob")
    bob.expect_line(rf"^{CLOCK} \* logged in as bob; online: alice\b")
    joined = alice.expect_line(rf"^{CLOCK} \* bob joined \((SHA256:[0-9a-f]{{16}})\)$")
    assert bob_fp.startswith(joined[1]), "alice sees another key than the one made on B"

    # ---- a message crosses, both ways, checked on the other side's output.
    bob.send("hello alice, from machine B")
    alice.expect_line(rf"^{CLOCK} bob: hello alice, from machine B$")
    alice.send("hi bob, from machine A")
    bob.expect_line(rf"^{CLOCK} alice: hi bob, from machine A$")
    return alice, bob
