"""A throw-away directory for one bench run: RSA keys made in parallel, registered names, and the processes
under test (`harness.process`: the broker, the reference relay).

Layout of the directory:

    pool/broker.pem, pool/broker.pub    the broker's key pair (`harness.keys.make_keys`)
    pool/private/key<i>.pem             the distinct client key pairs, i = 1..distinct,
    pool/clients/key<i>.pub             as `zchat.keystore` writes them
    keys/broker.pem, keys/broker.pub    the broker's key pair (a copy of the pool's)
    keys/clients/<name>.pub             every registered name of the current phase (see `register`)
    <broker-label>/config.json, .log    one directory per broker started
    curve/                              CurveZMQ certificates for the reference relay

Process statistics (CPU time, resident memory) come from /proc (`harness.procfs`), so this runs on Linux only.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.keys import make_keys
from harness.process import ROOT, BrokerProcess, HarnessError, ServerProcess
from zchat import crypto
from zchat.keystore import KeyLayout


class BenchError(HarnessError):
    """The run itself failed: a process did not start, a phase timed out, a client was turned away for good."""


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def cores() -> int:
    """CPU cores this process may run on (what the broker and the load generator share)."""
    return len(os.sched_getaffinity(0))


def log_problems(server: ServerProcess) -> list[str]:
    """Lines of the log that say the process failed, or dropped a benchmark client it should have kept."""
    bad = ("internal error", "Traceback", "too slow to keep up", "timed out")
    return [line for line in server.log().splitlines() if any(word in line for word in bad)]


class Workspace:
    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="zchat-bench-"))
        self.keep = keep
        self.layout = KeyLayout(self.root / "keys")
        self.pool = KeyLayout(self.root / "pool")
        self.pool_size = 0
        self.key_cache: dict[int, crypto.PrivateKey] = {}
        self.own_curve: dict[str, bytes] = {}  # registered name -> its own Curve25519 secret (see `register`)
        self.servers: list[ServerProcess] = []

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for server in self.servers:
            server.kill()
        if self.keep:
            progress(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def make_keys(self, distinct: int, bits: int, processes: int) -> None:
        """`distinct` client key pairs plus the broker's, generated in parallel processes."""
        make_keys(self.pool.root, [f"key{i}" for i in range(1, distinct + 1)], bits, processes)
        self.pool_size = distinct
        self.layout.clients_dir.mkdir(parents=True)
        shutil.copyfile(self.pool.broker_private, self.layout.broker_private)
        self.layout.broker_private.chmod(0o600)
        shutil.copyfile(self.pool.broker_public, self.layout.broker_public)

    def _pool_name(self, slot: int) -> str:
        """The pool key of client slot `slot` (slots beyond the pool reuse its keys round robin)."""
        return f"key{slot % self.pool_size + 1}"

    def pool_pem(self, slot: int) -> Path:
        """The private key file of client slot `slot`."""
        return self.pool.client_private(self._pool_name(slot))

    def client_key(self, slot: int) -> crypto.PrivateKey:
        index = slot % self.pool_size
        if index not in self.key_cache:
            self.key_cache[index] = crypto.load_private_key(self.pool_pem(slot))
        return self.key_cache[index]

    def broker_key(self) -> crypto.PrivateKey:
        return crypto.load_private_key(self.layout.broker_private)

    def broker_public(self) -> crypto.PublicKey:
        return crypto.load_public_key(self.layout.broker_public)

    def register(self, names: Sequence[str]) -> None:
        """Make `names` the registered users (name i gets pool slot i), replacing the previous phase's names.

        The broker maps a connection's Curve25519 key to exactly one registered user, so
        every name needs a Curve key of its own. A name whose slot is a pool key of its own
        gets that key's .pub (written by `write_public_key`: RSA key and derived Curve key).
        A name that reuses a pool key (slot beyond the pool) gets a .pub with that pool
        key's RSA half and a random Curve25519 pair of its own (`curve_secret(name)`), bound by the pool key:
        RSA and CurveZMQ cost the same for any key of a size, and keys for 1000 names
        would take minutes to generate.
        """
        for old in self.layout.clients_dir.glob("*.pub"):
            old.unlink()
        self.own_curve = {}
        for slot, name in enumerate(names):
            target = self.layout.client_public(name)
            if slot < self.pool_size:
                shutil.copyfile(self.pool.client_public(self._pool_name(slot)), target)
                continue
            secret = os.urandom(crypto.CURVE_KEY_BYTES)
            public = crypto.curve_public(secret)
            target.write_bytes(crypto.export_public_file(self.client_key(slot), curve=public))  # bound by its RSA key
            if crypto.load_public_key_file(target).curve != public:
                raise BenchError(f"{target}: the Curve25519 key did not read back")
            self.own_curve[name] = secret

    def curve_secret(self, name: str) -> bytes | None:
        """The Curve25519 secret key of a registered name, or None when it is the one derived from its RSA key."""
        return self.own_curve.get(name)

    def broker_curve(self) -> bytes:
        """The broker's Curve25519 public key, from its .pub file as clients read it."""
        curve = crypto.load_public_key_file(self.layout.broker_public).curve
        if curve is None:
            raise BenchError(f"{self.layout.broker_public} holds no Curve25519 key")
        return curve

    # ------------------------------------------------------------ processes

    def start_broker(self, label: str, config: dict[str, Any]) -> BrokerProcess:
        """broker.py started the way `make broker` starts it: `python broker.py --config FILE`, stdin closed."""
        workdir = self.root / label
        workdir.mkdir()
        broker = BrokerProcess(workdir, {**config, "keys_dir": str(self.layout.root)}, label)
        self.servers.append(broker)
        return broker.start()

    def start_relay(self, label: str, arguments: list[str]) -> ServerProcess:
        """The reference relay (`bench.relay`), run from the repository."""
        workdir = self.root / label
        workdir.mkdir()
        relay = ServerProcess(workdir / "relay.log", ROOT, label)
        self.servers.append(relay)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        relay.launch([sys.executable, "-m", "bench.relay", *arguments], env=env)
        relay.wait_for_port()
        return relay
