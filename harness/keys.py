"""Key pairs for a broker under test and its users, written as `zchat.keystore` writes them.

`make_key` generates one key pair in this process and writes it where a `KeyLayout` puts it: the broker's
broker.pem and broker.pub, or a user's private/<name>.pem and (registered) clients/<name>.pub, the .pub bound
to its Curve25519 key by `zchat.keystore.write_public_key`. `make_keys` writes the broker's and many users'
in a pool of spawned processes, on every core unless told.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Sequence
from pathlib import Path

from zchat import crypto
from zchat.keystore import KeyLayout, write_private_key, write_public_key


def make_key(layout: KeyLayout, name: str | None, bits: int, *, registered: bool = True) -> crypto.PrivateKey:
    """A new key pair, written: the broker's (`name` None) or a user's (its .pub only when `registered`)."""
    key = crypto.generate_private_key(bits)
    if name is None:
        write_private_key(layout.broker_private, key)
        write_public_key(layout.broker_public, key)
    else:
        write_private_key(layout.client_private(name), key)
        if registered:
            write_public_key(layout.client_public(name), key)
    return key


def _make_key(job: tuple[Path, str | None, int]) -> None:
    root, name, bits = job
    make_key(KeyLayout(root), name, bits)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_keys(root: Path, names: Sequence[str], bits: int, processes: int | None = None) -> KeyLayout:
    """The broker's key pair and a registered one per name under `root`, made by `processes` spawned processes
    (one per core by default); Ctrl-C reaches only the caller."""
    layout = KeyLayout(root)
    layout.clients_dir.mkdir(parents=True)
    (root / "private").mkdir()
    jobs: list[tuple[Path, str | None, int]] = [(root, None, bits), *((root, name, bits) for name in names)]
    mp = multiprocessing.get_context("spawn")
    with mp.Pool(processes or multiprocessing.cpu_count(), initializer=_ignore_sigint) as pool:
        for _ in pool.imap_unordered(_make_key, jobs):
            pass
    return layout
