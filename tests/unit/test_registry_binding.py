"""The broker's registry and the Curve25519 binding (zchat.keystore.Registry): which file's Curve key maps to a
name, which are refused, and that each refusal is one log line, however many handshakes and Registries meet it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from zchat import crypto
from zchat.keystore import KeyLayout, Registry, register_existing_key

NOW = 100.0


@pytest.fixture
def layout(keyring: Any, tmp_path: Path) -> KeyLayout:
    root = tmp_path / "keys"
    shutil.copytree(keyring.root, root)
    return KeyLayout(root)


def curve_of(keyring: Any, name: str) -> bytes:
    return crypto.curve_public(crypto.curve_secret(keyring.keys[name]))


def after_rsa(data: bytes) -> bytes:
    return data.split(b"-----END PUBLIC KEY-----\n", 1)[1]


def registry_lines(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "zchat.keystore" and str(path) in r.getMessage()]


def handshakes(registry: Registry, curves: list[bytes], times: int = 5) -> list[str | None]:
    """Many handshakes, over several seconds (so the directory is listed again for unknown keys)."""
    names = []
    for i in range(times):
        for curve in curves:
            names.append(registry.name_for_curve_key(curve, NOW + 2.0 * i))
    return names


# Newcomers named to sort before and after alice: the last file listed used to win.
NEWCOMERS = ("aaron", "dave", "zed")


@pytest.mark.parametrize("copied", ["curve-and-binding", "curve-only"])
def test_a_newcomer_with_alices_curve_key_is_refused_and_alice_keeps_hers(keyring, layout, caplog, copied):
    stolen = after_rsa(layout.client_public("alice").read_bytes())
    if copied == "curve-only":
        stolen = stolen.split(b"-----BEGIN ZCHAT CURVE25519 BINDING")[0]
    for newcomer in NEWCOMERS:
        layout.client_public(newcomer).write_bytes(crypto.export_public_pem(keyring.keys["mallory"]) + stolen)
    caplog.set_level(logging.INFO, logger="zchat.keystore")

    loop, gatekeeper = Registry(layout), Registry(layout)  # the broker has two, in two threads
    alice = curve_of(keyring, "alice")
    assert set(handshakes(gatekeeper, [alice])) == {"alice"}
    assert gatekeeper.name_for_curve_key(curve_of(keyring, "mallory"), NOW + 20) is None
    assert set(handshakes(loop, [alice])) == {"alice"}

    for newcomer in NEWCOMERS:
        if copied == "curve-only":  # unbound: its RSA key stays registered, its Curve key maps to nobody
            registered = loop.registered(newcomer)
            assert registered is not None
            assert (registered.key, registered.curve, registered.unbound_curve) == (
                keyring.keys["mallory"].public_key(),
                None,
                alice,
            )
        else:  # a binding that does not verify: the whole file is refused
            assert loop.registered(newcomer) is None
            assert loop.lookup(newcomer) is None
        said = registry_lines(caplog, layout.client_public(newcomer))
        assert len(said) == 1, said
        assert "not bound to its RSA key" in said[0]
    assert not registry_lines(caplog, layout.client_public("alice"))


def test_a_curve_key_in_two_bound_files_maps_to_neither_and_is_said_once(keyring, layout, caplog):
    """mallory signs alice's Curve key with mallory's own RSA key: a valid binding, a shared key."""
    alice = curve_of(keyring, "alice")
    squatter = layout.client_public("dave")
    squatter.write_bytes(crypto.export_public_file(keyring.keys["mallory"], curve=alice))
    caplog.set_level(logging.INFO, logger="zchat.keystore")
    loop, gatekeeper = Registry(layout), Registry(layout)

    assert set(handshakes(gatekeeper, [alice])) == {None}
    assert set(handshakes(loop, [alice])) == {None}
    assert gatekeeper.name_for_curve_key(curve_of(keyring, "bob"), NOW + 30) == "bob"
    said = registry_lines(caplog, squatter)
    assert len(said) == 1, said
    assert str(layout.client_public("alice")) in said[0]
    assert "same Curve25519 key" in said[0]
    assert "no one (alice, dave)" in said[0]
    # Decided: both RSA keys stay registered (an open session goes on, mail can be sealed); only the transport
    # refuses the shared Curve key.
    assert gatekeeper.lookup("alice") == keyring.keys["alice"].public_key()
    assert gatekeeper.lookup("dave") == keyring.keys["mallory"].public_key()

    squatter.unlink()
    assert gatekeeper.name_for_curve_key(alice, NOW + 40) == "alice"


def test_a_curve_key_shared_after_a_rewrite_in_place_is_found_within_a_second(keyring, layout, caplog):
    """A file rewritten in place does not change the directory: the next listing (at most once a second, at a
    handshake with a key the registry does not hold) finds the shared key."""
    gate = Registry(layout)
    alice, mallory = curve_of(keyring, "alice"), curve_of(keyring, "mallory")
    carol_path = layout.client_public("carol")
    assert gate.name_for_curve_key(alice, NOW) == "alice"
    with carol_path.open("r+b") as handle:
        handle.write(crypto.export_public_file(keyring.keys["carol"], curve=alice))
        handle.truncate()
    caplog.set_level(logging.INFO, logger="zchat.keystore")
    assert gate.name_for_curve_key(mallory, NOW + 2) is None  # an unknown key: listed again
    assert gate.name_for_curve_key(alice, NOW + 2) is None
    assert len(registry_lines(caplog, carol_path)) == 1


def test_a_file_from_before_the_binding_is_said_once_with_what_to_do(keyring, layout, caplog):
    path = layout.client_public("bob")
    path.write_bytes(path.read_bytes().split(b"-----BEGIN ZCHAT CURVE25519 BINDING")[0])
    caplog.set_level(logging.INFO, logger="zchat.keystore")
    gate = Registry(layout)
    assert set(handshakes(gate, [curve_of(keyring, "bob")])) == {None}
    said = registry_lines(caplog, path)
    assert len(said) == 1, said
    assert "cannot connect until `make keys NAME=bob` is run again where the private key is" in said[0]
    assert gate.lookup("bob") == keyring.keys["bob"].public_key()

    assert register_existing_key(layout, "bob")[1]  # `make keys NAME=bob`
    assert gate.name_for_curve_key(curve_of(keyring, "bob"), NOW + 20) == "bob"


def test_the_audit_lists_every_problem_and_the_registry_does_not_say_them_again(keyring, layout, caplog):
    alice = curve_of(keyring, "alice")
    unbound, forged, shared = (layout.client_public(name) for name in ("bob", "erin", "dave"))
    unbound.write_bytes(unbound.read_bytes().split(b"-----BEGIN ZCHAT CURVE25519 BINDING")[0])
    forged.write_bytes(
        crypto.export_public_pem(keyring.keys["mallory"]) + after_rsa(layout.client_public("alice").read_bytes())
    )
    shared.write_bytes(crypto.export_public_file(keyring.keys["mallory"], curve=alice))
    (layout.clients_dir / "not a name.pub").write_bytes(b"")

    problems = Registry(layout).audit()
    assert len(problems) == 4, problems
    for path in (unbound, forged, shared, layout.clients_dir / "not a name.pub"):
        assert sum(str(path) in line for line in problems) == 1, (path, problems)

    caplog.set_level(logging.INFO, logger="zchat.keystore")
    gate = Registry(layout)  # another Registry of the same process: the audit's lines are not logged again
    handshakes(gate, [alice, curve_of(keyring, "bob"), curve_of(keyring, "carol")])
    assert gate.registered("erin") is None
    assert [r.getMessage() for r in caplog.records if r.name == "zchat.keystore"] == []


def test_a_changed_file_is_said_again(keyring, layout, caplog):
    """Once per file version: a file fixed and broken again is a new problem."""
    path = layout.client_public("bob")
    bound = path.read_bytes()
    caplog.set_level(logging.INFO, logger="zchat.keystore")
    gate = Registry(layout)
    for step in range(2):
        path.unlink()
        path.write_bytes(bound.split(b"-----BEGIN ZCHAT CURVE25519 BINDING")[0] + b"\n" * step)
        assert gate.name_for_curve_key(curve_of(keyring, "bob"), NOW + 10 * step) is None
        path.unlink()
        path.write_bytes(bound)
        assert gate.name_for_curve_key(curve_of(keyring, "bob"), NOW + 10 * step + 5) == "bob"
    assert len(registry_lines(caplog, path)) == 2


def test_look_alikes_are_each_registered_name_that_looks_like_another_and_follow_the_directory(layout, keyring):
    registry = Registry(layout)
    assert registry.look_alikes() == {}
    shutil.copyfile(layout.client_public("alice"), layout.clients_dir / "aIice.pub")  # filled by hand
    assert registry.look_alikes() == {"alice": "aIice", "aIice": "alice"}
    (layout.clients_dir / "aIice.pub").unlink()
    assert registry.look_alikes() == {}
