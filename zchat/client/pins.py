"""Trust on first use: the key fingerprints a user has seen for everyone else.

Stored as a small JSON file next to the user's private key
(`keys/private/alice.known.json`): name -> fingerprint. A name seen for the
first time is pinned; a later, different fingerprint is reported, never
silently accepted: only `trust()` (the client's /trust, once the new key was
checked out of band) pins another one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def pins_path_for(key_path: Path) -> Path:
    """keys/private/alice.pem -> keys/private/alice.known.json"""
    return key_path.with_name(key_path.stem + ".known.json")


class PinStore:
    def __init__(self, path: Path | None) -> None:
        """Pins kept in memory only when `path` is None."""
        self.path = path
        self.pins: dict[str, str] = {}
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable pin file %s: %s", path, exc)
                loaded = {}
            if isinstance(loaded, dict):
                self.pins = {str(k): str(v) for k, v in loaded.items()}

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
