"""Key files on disk: the layout of keys/, creating keys, and the broker's allow-list.

    keys/broker.pem           broker private key (0600)
    keys/broker.pub           broker public key, handed to clients
    keys/clients/<name>.pub   the allow-list: one registered public key per user
    keys/private/<name>.pem   a user's own private key (0600), on that user's machine

Also the command line `zchat-keys NAME` (`make keys NAME=...`, `make fingerprint NAME=...`).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zchat import crypto
from zchat.config import add_location_arguments, client_settings
from zchat.errors import ChatError, ConfigError, LocalProtocolError
from zchat.names import clashing_name, name_skeleton
from zchat.protocol import NAME_PATTERN, check_name

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


def write_public_key(path: Path, key: crypto.PrivateKey) -> None:
    """Write the public key file of a private key: its RSA key and its Curve25519 transport key, bound by the
    RSA key's signature (zchat.crypto.keyfile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(crypto.export_public_file(key))
    tmp.replace(path)


def public_file_is_current(path: Path, key: crypto.PrivateKey) -> bool:
    """True when `path` is the public key file of `key`, its Curve25519 key included and bound to it."""
    try:
        held = crypto.load_public_key_file(path)
    except crypto.KeyFileError:
        return False
    return held.rsa == key.public_key() and held.curve == crypto.curve_public(crypto.curve_secret(key))


def public_file_needs_binding(path: Path) -> bool:
    """True when `path` is there but gives no bound Curve25519 key: written before keys were bound, or damaged."""
    if not path.exists():
        return False
    try:
        return crypto.load_public_key_file(path).curve is None
    except crypto.KeyFileError:
        return True


def ensure_broker_keys(layout: KeyLayout, bits: int = crypto.keys.DEFAULT_KEY_BITS) -> tuple[crypto.PrivateKey, bool]:
    """Load the broker key pair, creating it (and the registry directory) on first need. Returns (key, created)."""
    layout.clients_dir.mkdir(parents=True, exist_ok=True)
    if layout.broker_private.exists():
        key = crypto.load_private_key(layout.broker_private)
        if not public_file_is_current(layout.broker_public, key):  # missing, or from before the (bound) Curve key
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
    and a registered name is never taken over. Also refuses (FileExistsError) a
    name that looks like a registered one (`aIice` after `alice`, see
    zchat.names); nothing is written then.
    """
    private_path, public_path = layout.client_private(name), layout.client_public(name)
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; not overwriting it")
    problem = lookalike_problem(layout, name)
    if problem is not None:
        raise FileExistsError(problem)
    key = crypto.generate_private_key(bits)
    write_private_key(private_path, key, passphrase)
    write_public_key(public_path, key)
    return crypto.fingerprint(key)


def lookalike_problem(layout: KeyLayout, name: str) -> str | None:
    """Why `name` (a valid name) cannot be a new user here: it looks like a registered one. None: it can."""
    if layout.client_public(name).exists() or layout.client_private(name).exists():  # not new: its own key
        return None
    clash = clashing_name(name, registered_names(layout))
    return None if clash is None else f"{name!r} looks like the registered user {clash!r}; choose another name"


def register_existing_key(layout: KeyLayout, name: str, passphrase: str | None = None) -> tuple[str, bool]:
    """Write keys/clients/<name>.pub again from the existing keys/private/<name>.pem: (fingerprint, written).

    For a .pub that was lost, or written before it carried the Curve25519 key or its binding (or whose
    binding was damaged). Refuses (FileExistsError) a .pub that holds another RSA key: a registered name
    is never taken over.
    """
    key = crypto.load_private_key(layout.client_private(name), passphrase)
    public_path = layout.client_public(name)
    if public_path.exists():
        if crypto.load_public_key(public_path) != key.public_key():
            raise FileExistsError(f"{public_path} holds another key; not overwriting it")
        if public_file_is_current(public_path, key):
            return crypto.fingerprint(key), False
    write_public_key(public_path, key)
    return crypto.fingerprint(key), True


def registered_names(layout: KeyLayout) -> list[str]:
    """The names registered in keys/clients/ (`<name>.pub` files whose stem is a valid name), sorted."""
    try:
        paths = list(layout.clients_dir.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:  # not a directory, unreadable: say which
        raise crypto.KeyFileError(f"{layout.clients_dir}: cannot list the registered keys: {exc.strerror}") from None
    return sorted(path.stem for path in paths if path.suffix == ".pub" and NAME_PATTERN.fullmatch(path.stem))


@dataclass(frozen=True)
class Registered:
    key: crypto.PublicKey
    der: bytes  # crypto.public_key_to_der(key)
    # The Curve25519 transport key, only when the file binds it to `key`; None in a file without one, or with an
    # unbound one (`unbound_curve`, a file from before keys were bound): then the user cannot connect.
    curve: bytes | None
    unbound_curve: bytes | None = None


Stamp = tuple[int, int, int]  # a file version: (st_mtime_ns, st_size, st_ino)


class _SaidOnce:
    """The registry problems already logged, per file version, shared by every Registry of the process (the
    broker's loop and its gatekeeper thread each have one, and the start-up audit a third), so that each
    problem is one log line, not one per handshake or per Registry."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._said: set[tuple[object, ...]] = set()

    def first(self, key: tuple[object, ...]) -> bool:
        """True the first time `key` is seen (and it is remembered)."""
        with self._lock:
            if key in self._said:
                return False
            if len(self._said) >= self.LIMIT:
                self._said.clear()
            self._said.add(key)
            return True


_said = _SaidOnce()


def _refused_problem(path: Path, problem: str | None) -> str:
    return f"{problem}; refused, as if {path.stem} were not registered"


def _unbound_problem(path: Path, registered: Registered) -> str:
    name = path.stem
    advice = f"run `make keys NAME={name}` where the private key is, and register the .pub it writes"
    if registered.unbound_curve is None:
        return f"{path}: has no Curve25519 key, so {name} cannot connect; {advice}"
    return (
        f"{path}: its Curve25519 key is not bound to its RSA key (the file has no binding: it was written before"
        f" keys were bound, or by hand), so {name} cannot connect until `make keys NAME={name}` is run again"
        " where the private key is, and the .pub it writes is registered"
    )


def _shared_problem(paths: list[Path]) -> str:
    names = ", ".join(path.stem for path in paths)
    return (
        f"{', '.join(str(path) for path in paths)}: carry the same Curve25519 key, so no one ({names}) can connect"
        " with it; remove every file that is not its owner's (compare fingerprints out of band:"
        " `make fingerprint NAME=...`)"
    )


class Registry:
    """The allow-list directory. Deny by default; a file that fails to load is refused loudly.

    Files are checked at each lookup (and re-read when they change), so keys
    registered, replaced or removed while the broker runs take effect without
    a restart.

    A file is refused (as if its name were not registered) when it fails to
    load, a Curve25519 binding that does not verify included: the file was
    damaged, or its Curve block was taken from another user's file. A file
    whose Curve key is not bound (written before keys were bound), or whose
    bound Curve key another file carries too, keeps its RSA key registered
    (`registered()`, `lookup()`: mail can be sealed to it, a session open
    already goes on), but its Curve key is never mapped to a name
    (`name_for_curve_key()`), so the transport refuses every handshake with
    it. Each problem is logged once per file version, and `audit()` lists
    them all at start.
    """

    def __init__(self, layout: KeyLayout) -> None:
        self.layout = layout
        # name -> (file stamp, key or None when the file was refused, why); re-read when the file changes.
        self._cache: dict[str, tuple[Stamp, Registered | None, str | None]] = {}
        # Curve25519 key -> name, for the transport's allow-list; listed again when the directory changes.
        self._by_curve: dict[bytes, str] = {}
        self._listed: tuple[int, int] | None = None
        self._listed_at = float("-inf")
        self._look_alikes: tuple[tuple[int, int] | None, dict[str, str]] = (None, {})  # directory stamp, clashes

    def look_alikes(self) -> dict[str, str]:
        """Each registered name that looks like another one (zchat.names), and that other, worked out again when the
        directory changes: keys made here never clash, but a registry may have been filled by hand."""
        try:
            info = self.layout.clients_dir.stat()
        except OSError:
            return {}
        stamp = (info.st_mtime_ns, info.st_ino)
        if self._look_alikes[0] != stamp:
            by_skeleton: dict[str, list[str]] = {}
            for registered in registered_names(self.layout):
                by_skeleton.setdefault(name_skeleton(registered), []).append(registered)
            clashes = (
                (name, clashing_name(name, names)) for names in by_skeleton.values() if len(names) > 1 for name in names
            )
            self._look_alikes = (stamp, {name: twin for name, twin in clashes if twin is not None})
        return self._look_alikes[1]

    def name_for_curve_key(self, curve: bytes, now: float) -> str | None:
        """The registered user whose Curve25519 key `curve` is, or None.

        Only a key bound to its file's RSA key, and carried by no other file, has a name. The directory
        is listed again when it changed, or (for a key it does not hold, since a file may have been
        rewritten in place) at most once per second.
        """
        try:
            info = self.layout.clients_dir.stat()
            stamp = (info.st_mtime_ns, info.st_ino)
        except OSError:
            return None
        if stamp != self._listed or (curve not in self._by_curve and now - self._listed_at >= 1.0):
            self._listed, self._listed_at = stamp, now
            self._by_curve = self._curve_keys(say=self._say)
        name = self._by_curve.get(curve)
        if name is None:
            return None
        registered = self.registered(name)  # the file may have changed since the listing
        return name if registered is not None and registered.curve == curve else None

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
        loaded = self._load(path)
        if loaded is None:
            return None
        stamp, registered, problem = loaded
        if problem is not None:
            self._say(("refused", str(path), stamp), _refused_problem(path, problem))
        return registered

    def _load(self, path: Path) -> tuple[Stamp, Registered | None, str | None] | None:
        """A registry file's stamp, its key (None when refused) and why it was refused; None: no such file."""
        name = path.stem
        try:
            info = path.stat()
        except OSError:
            self._cache.pop(name, None)
            return None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached
        registered: Registered | None
        problem = None
        try:
            held = crypto.load_public_key_file(path)
            registered = Registered(held.rsa, crypto.public_key_to_der(held.rsa), held.curve, held.unbound_curve)
        except crypto.KeyFileError as exc:
            registered, problem = None, str(exc)
        self._cache[name] = (stamp, registered, problem)
        return self._cache[name]

    def _curve_keys(self, say: Callable[[tuple[object, ...], str], None]) -> dict[bytes, str]:
        """Each bound Curve25519 key that exactly one file carries -> that file's name. `say` gets each file
        refused, and each whose Curve key cannot be used (no key, no binding, or a key another file carries)."""
        holders: dict[bytes, list[tuple[Path, Stamp]]] = {}
        for path in sorted(self.layout.clients_dir.glob("*.pub")):
            if not NAME_PATTERN.fullmatch(path.stem):
                continue
            loaded = self._load(path)
            if loaded is None:  # gone since the listing
                continue
            stamp, registered, problem = loaded
            if registered is None:
                say(("refused", str(path), stamp), _refused_problem(path, problem))
            elif registered.curve is None:
                say(("unbound", str(path), stamp), _unbound_problem(path, registered))
            else:
                holders.setdefault(registered.curve, []).append((path, stamp))
        by_curve = {}
        for curve, held in holders.items():
            if len(held) == 1:
                by_curve[curve] = held[0][0].stem
            else:
                say(("shared", *((str(path), stamp) for path, stamp in held)), _shared_problem([p for p, _ in held]))
        return by_curve

    @staticmethod
    def _say(key: tuple[object, ...], problem: str) -> None:
        if _said.first(key):
            log.error("registry: %s", problem)

    def audit(self) -> list[str]:
        """Problems with registry files, one line each, for the log at start-up (not logged again later)."""
        if not self.layout.clients_dir.is_dir():
            return [f"{self.layout.clients_dir}: registry directory missing; nobody can log in"]
        problems = [
            f"{path}: file name is not a valid user name; ignored"
            for path in sorted(self.layout.clients_dir.glob("*.pub"))
            if not NAME_PATTERN.fullmatch(path.stem)
        ]

        def listed(key: tuple[object, ...], problem: str) -> None:
            _said.first(key)
            problems.append(problem)

        self._curve_keys(say=listed)
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
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def public_file_note(layout: KeyLayout, name: str) -> str:
    """What became of a user's new public key file: registered on the broker's machine, else to be handed over."""
    path = layout.client_public(name)
    if layout.broker_private.exists():
        return f"registered {path}"
    return f"wrote {path}: give it to the broker's operator, for the broker's keys/clients/"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zchat-keys", description="Create and register a user's key pair, or show a registered key's fingerprint."
    )
    parser.add_argument("name", help="user name: 1-32 of A-Z a-z 0-9 _ -")
    add_location_arguments(parser)
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if NAME has a private key already (a bot's start), but bind a .pub written before binding",
    )
    parser.add_argument(
        "--bits", type=int, default=crypto.keys.DEFAULT_KEY_BITS, help="RSA modulus size (default: %(default)s)"
    )
    parser.add_argument(
        "--fingerprint",
        action="store_true",
        help="only print the registered key's fingerprint (to compare out of band)",
    )
    return parser


def _make_key(layout: KeyLayout, args: argparse.Namespace) -> str | None:
    """The fingerprint of NAME's new key pair; None when NAME had one already (then what became of it is said)."""
    name = check_name(args.name)
    private = layout.client_private(name)
    if args.if_missing and private.exists():
        if public_file_needs_binding(layout.client_public(name)):
            # A .pub from before keys were bound: bind it now (a bot's key has no passphrase unless PASSPHRASE).
            fp, _ = register_existing_key(layout, name, os.environ.get("PASSPHRASE") or None)
            print(f"{private} exists; its Curve25519 key is now bound to its RSA key")
            print(public_file_note(layout, name))
            print(f"fingerprint {fp}")
        return None
    if args.bits < crypto.MIN_KEY_BITS:
        raise ValueError(f"--bits must be at least {crypto.MIN_KEY_BITS}")
    # Never the broker's keys: only the broker makes its own (at its first start), and on a client machine
    # keys/broker.pub is the copy the user trusts.
    if not private.exists():
        return create_client_key(layout, name, read_new_passphrase(), args.bits)
    passphrase = os.environ.get("PASSPHRASE") or None
    if passphrase is None and sys.stdin.isatty() and b"ENCRYPTED" in private.read_bytes():
        passphrase = getpass.getpass(f"Passphrase for {private}: ")
    fp, written = register_existing_key(layout, name, passphrase)
    state = public_file_note(layout, name) if written else f"already there: {layout.client_public(name)}"
    print(f"{private} exists; {state}")
    print(f"fingerprint {fp}")
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        layout = KeyLayout(client_settings(args.config, args.keys_dir).keys_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.fingerprint:
        return print_fingerprint(layout, args.name)
    try:
        fp = _make_key(layout, args)
    except (ChatError, ValueError, OSError) as exc:  # OSError: FileExistsError too
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EOFError:  # Ctrl-D at a passphrase prompt
        print(
            f"\nerror: cancelled (end of input at the passphrase prompt); no key written for {args.name}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:  # Ctrl-C, at a prompt or while the key is made
        print(f"\nerror: cancelled (Ctrl-C); no key written for {args.name}", file=sys.stderr)
        return 130
    if fp is not None:
        print(f"wrote {layout.client_private(args.name)} (mode 0600, keep it secret)")
        print(public_file_note(layout, args.name))
        print(f"fingerprint {fp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
