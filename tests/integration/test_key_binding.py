"""A .pub that carries another user's Curve25519 key, against a real broker (issue 18, finding 6).

A newcomer's file with alice's Curve key used to map alice's key to the newcomer (the last file
listed won), so alice's handshakes came in under the newcomer's name and she could not log in.
The Curve block of a .pub is now bound to its RSA key by a signature; the broker refuses a file
whose binding does not verify, and a Curve key that two files carry, each with one log line.
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.conftest import TEST_CONFIG, BrokerProcess
from zchat import crypto
from zchat.errors import ConnectError
from zchat.keystore import register_existing_key

NEWCOMERS = ("dave", "erin", "frank", "grace")  # several, so that one of them is listed after alice's file


def curve_blocks(pub: bytes) -> bytes:
    """Everything after the RSA block of a public key file: its Curve block, and its binding if it has one."""
    return pub.split(b"-----END PUBLIC KEY-----\n", 1)[1]


def lines_naming(log: str, path: object) -> list[str]:
    return [line for line in log.splitlines() if str(path) in line]


@pytest.mark.parametrize("copied", ["with-alices-binding", "curve-block-only"])
def test_a_newcomers_pub_with_alices_curve_key_does_not_lock_alice_out(make_broker, connect, keyring, copied):
    broker = make_broker()
    alice_pub = broker.keys.client_public("alice").read_bytes()
    stolen = curve_blocks(alice_pub)
    if copied == "curve-block-only":
        stolen = stolen.split(b"-----BEGIN ZCHAT CURVE25519 BINDING-----")[0]
    # Each newcomer has a valid RSA key of its own (mallory's: not registered) and alice's Curve key.
    rsa_block = crypto.export_public_pem(keyring.keys["mallory"])
    for name in NEWCOMERS:
        broker.keys.client_public(name).write_bytes(rsa_block + stolen)

    alice = connect(broker, "alice")
    assert alice.online
    alice.close()
    again = connect(broker, "alice")  # more handshakes: the refusals are not logged again
    assert again.online
    with pytest.raises(ConnectError, match="login refused"):  # a newcomer cannot log in with alice's key
        connect(broker, "dave", key_path=keyring.private("mallory"), connect_timeout=2.0)

    for name in NEWCOMERS:
        path = broker.keys.client_public(name)
        broker.wait_for_log(re.escape(str(path)), timeout=5)
        said = lines_naming(broker.log(), path)
        assert len(said) == 1, said
        assert "not bound to its RSA key" in said[0]
    assert not lines_naming(broker.log(), broker.keys.client_public("alice"))


def test_a_curve_key_signed_anew_by_a_newcomer_is_refused_for_both_and_said_once(make_broker, connect, keyring):
    """A newcomer who signs alice's Curve key with its own RSA key makes a valid binding: two files now
    carry one Curve key, and neither name may connect with it (one line names both files) until the
    operator removes the file that is not its owner's."""
    broker = make_broker()
    alice_curve = crypto.load_public_key_file(broker.keys.client_public("alice")).curve
    assert alice_curve is not None
    squatter = broker.keys.client_public("dave")
    squatter.write_bytes(crypto.export_public_file(keyring.keys["mallory"], curve=alice_curve))

    for _ in range(2):
        with pytest.raises(ConnectError, match="login refused"):
            connect(broker, "alice", connect_timeout=2.0)
    said = lines_naming(broker.log(), squatter)
    assert len(said) == 1, said
    assert str(broker.keys.client_public("alice")) in said[0]
    assert "same Curve25519 key" in said[0]
    assert connect(broker, "bob").online, "everyone else is unaffected"

    squatter.unlink()
    assert connect(broker, "alice").online


def test_a_pub_from_before_the_binding_cannot_connect_until_make_keys_binds_it(make_broker, connect, keyring):
    broker = make_broker()
    path = broker.keys.client_public("bob")
    held = crypto.load_public_key_file(path)
    assert held.curve is not None
    unbound = path.read_bytes().split(b"-----BEGIN ZCHAT CURVE25519 BINDING-----")[0]
    path.write_bytes(unbound)  # as `make keys` wrote it before the binding
    assert crypto.load_public_key_file(path).unbound_curve == held.curve

    for _ in range(2):
        with pytest.raises(ConnectError, match="login refused"):
            connect(broker, "bob", connect_timeout=2.0)
    said = lines_naming(broker.log(), path)
    assert len(said) == 1, said
    assert "make keys NAME=bob" in said[0]

    fingerprint, written = register_existing_key(broker.keys, "bob")  # what `make keys NAME=bob` does
    assert written
    assert fingerprint == crypto.fingerprint(keyring.keys["bob"])
    assert connect(broker, "bob").online


def test_problems_found_at_start_are_logged_once(tmp_path, keyring, connect):
    """The start-up audit names each problem file; the handshakes that follow do not name it again."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    shutil.copytree(keyring.root, workdir / "keys")
    broker = BrokerProcess(workdir, {**TEST_CONFIG, "keys_dir": "keys"})
    unbound, squatter = broker.keys.client_public("bob"), broker.keys.client_public("dave")
    unbound.write_bytes(unbound.read_bytes().split(b"-----BEGIN ZCHAT CURVE25519 BINDING-----")[0])
    alice_curve = crypto.load_public_key_file(broker.keys.client_public("alice")).curve
    squatter.write_bytes(crypto.export_public_file(keyring.keys["mallory"], curve=alice_curve))
    broker.start()
    try:
        for name in ("bob", "alice", "bob"):
            with pytest.raises(ConnectError, match="login refused"):
                connect(broker, name, connect_timeout=2.0)
        assert connect(broker, "carol").online
        for path in (unbound, squatter):
            said = lines_naming(broker.log(), path)
            assert len(said) == 1, said
            assert "registry: " in said[0]
    finally:
        broker.kill()
