"""Key files on disk: the layout of keys/, creating keys, and the broker's allow-list.

    keys/broker.pem           broker private key (0600)
    keys/broker.pub           broker public key, handed to clients
    keys/clients/<name>.pub   the allow-list: one registered public key per user
    keys/private/<name>.pem   a user's own private key (0600), on that user's machine

Also the command line behind `make keys NAME=...`.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import crypto
from chat.errors import LocalProtocolError
from chat.protocol import check_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyLayout:
    root: Path

    @property
    def broker_private(self) -> Path:
        return self.root / "broker.pem"

    @property
    def broker_public(self) -> Path:
        return self.root / "broker.pub"

    @property
    def clients_dir(self) -> Path:
        return self.root / "clients"

    def client_public(self, name: str) -> Path:
        return self.clients_dir / f"{check_name(name)}.pub"

    def client_private(self, name: str) -> Path:
        return self.root / "private" / f"{check_name(name)}.pem"


def write_private_key(path: Path, key: crypto.PrivateKey, passphrase: str | None = None) -> None:
    """Write a PKCS#8 PEM with mode 0600; never overwrites an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = crypto.export_private_pem(key, passphrase)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def write_public_key(path: Path, key: crypto.PublicKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(crypto.export_public_pem(key))
    tmp.replace(path)


def ensure_broker_keys(layout: KeyLayout, bits: int = crypto.keys.DEFAULT_KEY_BITS) -> tuple[crypto.PrivateKey, bool]:
    """Load the broker key pair, creating it (and the registry directory) on first need. Returns (key, created)."""
    layout.clients_dir.mkdir(parents=True, exist_ok=True)
    if layout.broker_private.exists():
        key = crypto.load_private_key(layout.broker_private)
        if not layout.broker_public.exists():
            write_public_key(layout.broker_public, key)
        return key, False
    key = crypto.generate_private_key(bits)
    write_private_key(layout.broker_private, key)
    write_public_key(layout.broker_public, key)
    return key, True


def create_client_key(
    layout: KeyLayout, name: str, passphrase: str | None = None, bits: int = crypto.keys.DEFAULT_KEY_BITS
) -> str:
    """Create keys/private/<name>.pem and register keys/clients/<name>.pub; return the fingerprint.

    Refuses (FileExistsError) when either file exists: a key is never overwritten
    and a registered name is never taken over.
    """
    private_path, public_path = layout.client_private(name), layout.client_public(name)
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; not overwriting it")
    key = crypto.generate_private_key(bits)
    write_private_key(private_path, key, passphrase)
    write_public_key(public_path, key)
    return crypto.fingerprint(key)


@dataclass(frozen=True)
class Registered:
    key: crypto.PublicKey
    der: bytes  # crypto.public_key_to_der(key)


class Registry:
    """The allow-list directory. Deny by default; a file that fails to load is refused loudly.

    Files are checked at each lookup (and re-read when they change), so keys
    registered, replaced or removed while the broker runs take effect without
    a restart.
    """

    def __init__(self, layout: KeyLayout) -> None:
        self.layout = layout
        # name -> (file stamp, key or None when the file was refused); re-read when the file changes.
        self._cache: dict[str, tuple[tuple[int, int, int], Registered | None]] = {}

    def lookup(self, name: str) -> crypto.PublicKey | None:
        """The registered key for `name`, or None (not registered, or the file was refused)."""
        registered = self.registered(name)
        return None if registered is None else registered.key

    def registered(self, name: str) -> Registered | None:
        """The registered key for `name` with its DER export (made once per file version), or None."""
        try:
            path = self.layout.client_public(name)
        except LocalProtocolError:
            return None
        try:
            info = path.stat()
        except OSError:
            self._cache.pop(name, None)
            return None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        registered: Registered | None
        try:
            key = crypto.load_public_key(path)
            registered = Registered(key, crypto.public_key_to_der(key))
        except crypto.KeyFileError as exc:
            log.error("refusing registry file: %s", exc)
            registered = None
        self._cache[name] = (stamp, registered)
        return registered

    def audit(self) -> list[str]:
        """Problems with registry files, one line each, for the log at start-up."""
        problems = []
        if not self.layout.clients_dir.is_dir():
            return [f"{self.layout.clients_dir}: registry directory missing; nobody can log in"]
        for path in sorted(self.layout.clients_dir.iterdir()):
            if path.suffix != ".pub":
                continue
            try:
                check_name(path.stem)
                crypto.load_public_key(path)
            except LocalProtocolError:
                problems.append(f"{path}: file name is not a valid user name; ignored")
            except crypto.KeyFileError as exc:
                problems.append(str(exc))
        return problems


def read_new_passphrase() -> str | None:
    """PASSPHRASE from the environment, else asked twice on a TTY, else none."""
    if "PASSPHRASE" in os.environ:
        return os.environ["PASSPHRASE"] or None
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass("Passphrase for the new key (empty for none): ")
    if first and getpass.getpass("Repeat the passphrase: ") != first:
        raise ValueError("the passphrases do not match")
    return first or None


def print_fingerprint(layout: KeyLayout, name: str) -> int:
    """`make fingerprint NAME=...`: the registered key's fingerprint, or a one-line error."""
    try:
        print(f"{name} {crypto.fingerprint(crypto.load_public_key(layout.client_public(name)))}")
    except (LocalProtocolError, crypto.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make keys", description="Create and register a user's key pair, or show a registered key's fingerprint."
    )
    parser.add_argument("name", help="user name: 1-32 of A-Z a-z 0-9 _ -")
    parser.add_argument("--keys-dir", type=Path, default=Path("keys"), help="key directory (default: keys)")
    parser.add_argument("--bits", type=int, default=crypto.keys.DEFAULT_KEY_BITS, help="RSA modulus size")
    parser.add_argument(
        "--fingerprint",
        action="store_true",
        help="only print the registered key's fingerprint (to compare out of band)",
    )
    args = parser.parse_args(argv)
    layout = KeyLayout(args.keys_dir)
    if args.fingerprint:
        return print_fingerprint(layout, args.name)
    try:
        check_name(args.name)
        if args.bits < crypto.MIN_KEY_BITS:
            raise ValueError(f"--bits must be at least {crypto.MIN_KEY_BITS}")
        _, created = ensure_broker_keys(layout)
        if created:
            print(f"created the broker key pair {layout.broker_private} and {layout.broker_public}")
        fp = create_client_key(layout, args.name, read_new_passphrase(), args.bits)
    except (LocalProtocolError, ValueError, FileExistsError, crypto.KeyFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {layout.client_private(args.name)} (mode 0600, keep it secret)")
    print(f"registered {layout.client_public(args.name)}")
    print(f"fingerprint {fp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
