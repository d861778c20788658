"""Who is registered, as the broker's core is told: a snapshot of the key files, read by the I/O loop.

The core (zchat.broker.core and zchat.broker.login) reads no files. zchat.broker.main
reads the allow-list (`zchat.keystore.Registry`, which loads a file again only when
it changed) at every heartbeat, whenever keys/clients/ gained, lost or renamed a file
(`clients_stamp()`, one stat per turn of its loop: a message to a user registered a
moment ago finds them), and when a connection speaks whose user's file changed since,
and hands the core the `RegisteredKeys` that `read_keys()` makes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from zchat import crypto
from zchat.keystore import Registered, Registry, registered_names

log = logging.getLogger(__name__)
_said: set[str] = set()  # problems listing the directory, each logged once


@dataclass(frozen=True)
class RegisteredKeys:
    """`keys`: each registered name whose file loads, and its key. `look_alikes`: each registered name that looks
    like another registered name (zchat.names), and that other name."""

    keys: Mapping[str, Registered] = field(default_factory=dict)
    look_alikes: Mapping[str, str] = field(default_factory=dict)

    def registered(self, name: str) -> Registered | None:
        return self.keys.get(name)

    def look_alike(self, name: str) -> str | None:
        return self.look_alikes.get(name)


def clients_stamp(registry: Registry) -> int | None:
    """keys/clients/'s modification time (ns): it changes when a file is added, removed or renamed there."""
    try:
        return os.stat(registry.layout.clients_dir).st_mtime_ns
    except OSError:
        return None


def read_keys(registry: Registry) -> RegisteredKeys:
    """The registry's keys and look-alikes as the files are now; a directory that cannot be listed registers
    nobody (said in the log)."""
    try:
        names = registered_names(registry.layout)
    except crypto.KeyFileError as exc:
        if str(exc) not in _said:
            _said.add(str(exc))
            log.error("registry: %s; nobody can log in", exc)
        return RegisteredKeys()
    keys = {name: registered for name in names if (registered := registry.registered(name)) is not None}
    look_alikes = {name: twin for name, twin in registry.look_alikes().items() if name in keys}
    return RegisteredKeys(keys, look_alikes)
