"""Trust on first use: the key fingerprints a user has seen for everyone else.

Stored as a small JSON file next to the user's private key
(`keys/private/alice.known.json`, mode 0600): one object, user name ->
fingerprint (`"SHA256:"` and 64 lowercase hex digits, 2.2 of docs/PROTOCOL.md),
for example `{"bob": "SHA256:9f86d0..."}`. A name seen for the first time is
pinned; a later, different fingerprint is reported, never silently accepted:
only `trust()` (the client's /trust, once the new key was checked out of band)
pins another one. The user's own name is not pinned: the client checks its own
entry in each welcome against its own key instead. A file that cannot be read,
or that is not such an object, is left as it is (nothing is written over it)
and the pins are kept in memory only, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from zchat.protocol import NAME_PATTERN

log = logging.getLogger(__name__)

FINGERPRINT_PATTERN = re.compile(r"SHA256:[0-9a-f]{64}")


def pins_path_for(key_path: Path) -> Path:
    """keys/private/alice.pem -> keys/private/alice.known.json"""
    return key_path.with_name(key_path.stem + ".known.json")


def parse_pins(text: str) -> dict[str, str]:
    """The pins a file holds; ValueError unless it is one JSON object of user names to fingerprints."""
    loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError("not a JSON object")
    for name, fingerprint in loaded.items():
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{name!r} is not a user name")
        if not isinstance(fingerprint, str) or not FINGERPRINT_PATTERN.fullmatch(fingerprint):
            raise ValueError(f"the fingerprint for {name} is not SHA256: and 64 hex digits")
    return dict(loaded)


class PinStore:
    def __init__(self, path: Path | None) -> None:
        """Pins kept in memory only when `path` is None (or names a file that cannot be read as pins)."""
        self.path = path
        self.pins: dict[str, str] = {}
        if path is not None and path.exists():
            try:
                self.pins = parse_pins(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                log.warning(
                    "cannot use the pin file %s (%s): keys are pinned for this run only, and the file is left as it is",
                    path,
                    exc,
                )
                self.path = None

    def check(self, name: str, fingerprint: str) -> str | None:
        """Pin `fingerprint` if `name` is new; return the pinned fingerprint if it differs, else None."""
        pinned = self.pins.get(name)
        if pinned is None:
            self.pins[name] = fingerprint
            self._save()
            return None
        return None if pinned == fingerprint else pinned

    def status(self, name: str, fingerprint: str) -> str:
        pinned = self.pins.get(name)
        if pinned is None:
            return "not pinned"
        return "pinned" if pinned == fingerprint else f"DIFFERENT from the pinned {pinned}"

    def trust(self, name: str, fingerprint: str) -> bool:
        """Pin `fingerprint` for `name`, replacing whatever was pinned; False if the file could not be written."""
        self.pins[name] = fingerprint
        return self._save()

    def _save(self) -> bool:
        if self.path is None:
            return True
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.pins, handle, indent=1, sort_keys=True)
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot save pins to %s: %s", self.path, exc)
            return False
        return True
