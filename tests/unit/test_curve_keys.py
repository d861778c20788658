"""The CurveZMQ transport keys derived from a user's RSA key (crypto/curve.py, PROTOCOL.md 2.1), the public key
file that carries both (crypto/keys.py), and the broker's own files (zchat.keystore.ensure_broker_keys)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils import z85

from zchat import crypto
from zchat.crypto.keyfile import BINDING_BLOCK, CURVE_BLOCK
from zchat.keystore import (
    KeyLayout,
    ensure_broker_keys,
    public_file_is_current,
    public_file_needs_binding,
    write_public_key,
)

BEGIN = b"-----BEGIN " + CURVE_BLOCK.encode() + b"-----\n"
END = b"\n-----END " + CURVE_BLOCK.encode() + b"-----\n"


def hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with an empty salt (HashLen zero bytes), written out here so the derivation is checked
    against the spec and not against the same library call."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def curve_file(key: crypto.PrivateKey, curve_text: bytes, binding: bytes = b"") -> bytes:
    """A public key file whose Curve block holds `curve_text` (followed by `binding`, a whole block, if given)."""
    return crypto.export_public_pem(key).rstrip(b"\n") + b"\n" + BEGIN + curve_text + END + binding


def binding_block(signature: bytes) -> bytes:
    return (
        b"-----BEGIN "
        + BINDING_BLOCK.encode()
        + b"-----\n"
        + base64.b64encode(signature)
        + b"\n-----END "
        + (BINDING_BLOCK.encode() + b"-----\n")
    )


# ---------------------------------------------------------------- the derivation


def test_curve_secret_is_deterministic_per_rsa_key(keyring):
    alice = keyring.keys["alice"]
    secret = crypto.curve_secret(alice)
    assert len(secret) == crypto.CURVE_KEY_BYTES == 32
    assert crypto.curve_secret(alice) == secret
    reloaded = crypto.load_private_key(keyring.private("alice"))  # the same key, read from its file
    assert crypto.curve_secret(reloaded) == secret
    secrets_ = {crypto.curve_secret(keyring.keys[name]) for name in ("alice", "bob", "carol", "broker")}
    assert len(secrets_) == 4, "each RSA key has its own"


def test_curve_secret_follows_the_documented_derivation(keyring):
    for name in ("alice", "broker"):
        key = keyring.keys[name]
        k = (key.size_in_bits() + 7) // 8
        expected = hkdf_sha256(int(key.d).to_bytes(k, "big"), b"zchat curve25519 secret key v1", 32)
        assert crypto.curve_secret(key) == expected


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_public_matches_libzmq(keyring):
    for name in ("alice", "bob", "broker"):
        secret = crypto.curve_secret(keyring.keys[name])
        public = crypto.curve_public(secret)
        assert len(public) == 32
        assert z85.decode(zmq.curve_public(z85.encode(secret))) == public
    assert crypto.curve_public(crypto.curve_secret(keyring.keys["alice"])) != crypto.curve_public(
        crypto.curve_secret(keyring.keys["bob"])
    )


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_curve_public_needs_a_32_byte_secret(length):
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.curve_public(b"\x01" * length)


# ---------------------------------------------------------------- the public key file


def test_public_key_file_round_trips(keyring, tmp_path):
    alice = keyring.keys["alice"]
    path = tmp_path / "alice.pub"
    write_public_key(path, alice)
    held = crypto.load_public_key_file(path)
    assert held.rsa == alice.public_key()
    assert not held.rsa.has_private()
    assert held.curve == crypto.curve_public(crypto.curve_secret(alice))
    assert held.unbound_curve is None
    assert crypto.load_public_key(path) == alice.public_key()
    assert crypto.load_public_key_file(path) == held
    assert BEGIN in path.read_bytes()
    assert b"PRIVATE" not in path.read_bytes()
    assert public_file_is_current(path, alice)
    assert not public_file_is_current(path, keyring.keys["bob"])


def test_the_registered_files_carry_the_curve_key(keyring):
    for name in ("alice", "bob", "carol", "admin"):
        held = crypto.load_public_key_file(keyring.layout.client_public(name))
        assert held.curve == crypto.curve_public(crypto.curve_secret(keyring.keys[name]))


def test_a_file_without_the_curve_block_loads_without_a_curve_key(keyring, tmp_path):
    path = tmp_path / "old.pub"
    path.write_bytes(crypto.export_public_pem(keyring.keys["alice"]))
    held = crypto.load_public_key_file(path)
    assert held.rsa == keyring.keys["alice"].public_key()
    assert held.curve is None
    assert not public_file_is_current(path, keyring.keys["alice"])


def test_the_curve_block_may_be_wrapped_or_indented(keyring, tmp_path):
    alice = keyring.keys["alice"]
    curve = crypto.curve_public(crypto.curve_secret(alice))
    text = base64.b64encode(curve)
    path = tmp_path / "wrapped.pub"
    binding = base64.b64encode(crypto.sign(alice, crypto.curve_binding_input(curve)))
    block = b"-----BEGIN " + BINDING_BLOCK.encode() + b"-----\n  " + binding[:100] + b"\n  " + binding[100:]
    block += b"\n-----END " + BINDING_BLOCK.encode() + b"-----\n"
    path.write_bytes(curve_file(alice, b"  " + text[:20] + b"\n  " + text[20:], block))
    assert crypto.load_public_key_file(path).curve == crypto.curve_public(crypto.curve_secret(alice))


@pytest.mark.parametrize(
    "curve_text",
    [
        base64.b64encode(b"\x01" * 31),
        base64.b64encode(b"\x01" * 33),
        base64.b64encode(b"\x01" * 64),
        b"",
        b"!!!!not base64!!!!",
        base64.b64encode(b"\x01" * 32)[:-1],  # bad padding
        base64.b64encode(b"\x01" * 32) + b"*",
        base64.urlsafe_b64encode(b"\xff" * 32),  # - and _ are not in the base64 alphabet
    ],
    ids=["31-bytes", "33-bytes", "64-bytes", "empty", "not-base64", "bad-padding", "trailing-junk", "urlsafe"],
)
def test_a_corrupted_curve_block_is_refused(keyring, tmp_path, curve_text):
    path = tmp_path / "bad.pub"
    path.write_bytes(curve_file(keyring.keys["alice"], curve_text))
    with pytest.raises(crypto.KeyFileError, match="Curve25519"):
        crypto.load_public_key_file(path)
    with pytest.raises(crypto.KeyFileError):
        crypto.load_public_key(path)


@pytest.mark.parametrize(
    "extra",
    [
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n",
        b"-----BEGIN ZCHAT ED25519 PUBLIC KEY-----\nAAAA\n-----END ZCHAT ED25519 PUBLIC KEY-----\n",
    ],
    ids=["certificate", "pkcs1", "unknown-zchat"],
)
def test_a_file_with_an_unknown_pem_block_is_refused(keyring, tmp_path, extra):
    path = tmp_path / "extra.pub"
    path.write_bytes(crypto.export_public_file(keyring.keys["alice"]) + extra)
    with pytest.raises(crypto.KeyFileError, match="not an RSA public key file"):
        crypto.load_public_key_file(path)


def test_a_file_holding_a_private_key_is_refused_even_with_a_curve_block(keyring, tmp_path):
    alice = keyring.keys["alice"]
    path = tmp_path / "private.pub"
    path.write_bytes(crypto.export_private_pem(alice) + BEGIN + base64.b64encode(b"\x01" * 32) + END)
    with pytest.raises(crypto.KeyFileError, match="PRIVATE"):
        crypto.load_public_key_file(path)


# ---------------------------------------------------------------- the broker's files


@pytest.fixture
def broker_layout(keyring: Any, tmp_path: Path) -> KeyLayout:
    """A key directory holding only the key ring's broker.pem (no broker.pub, no clients/)."""
    layout = KeyLayout(tmp_path / "keys")
    layout.root.mkdir()
    shutil.copyfile(keyring.layout.broker_private, layout.broker_private)
    return layout


def test_ensure_broker_keys_rewrites_a_broker_pub_without_the_curve_block(keyring, broker_layout):
    broker = keyring.keys["broker"]
    broker_layout.broker_public.write_bytes(crypto.export_public_pem(broker))
    key, created = ensure_broker_keys(broker_layout)
    assert not created
    assert key == broker
    held = crypto.load_public_key_file(broker_layout.broker_public)
    assert held.rsa == broker.public_key()
    assert held.curve == crypto.curve_public(crypto.curve_secret(broker))
    assert broker_layout.clients_dir.is_dir()


@pytest.mark.parametrize(
    "content",
    ["missing", "another-key", "garbage"],
)
def test_ensure_broker_keys_rewrites_a_broker_pub_that_is_not_its_own(keyring, broker_layout, content):
    broker = keyring.keys["broker"]
    if content == "another-key":
        broker_layout.broker_public.write_bytes(crypto.export_public_file(keyring.keys["alice"]))
    elif content == "garbage":
        broker_layout.broker_public.write_bytes(b"not a key")
    key, created = ensure_broker_keys(broker_layout)
    assert (key, created) == (broker, False)
    assert public_file_is_current(broker_layout.broker_public, broker)


def test_ensure_broker_keys_leaves_a_current_broker_pub_untouched(keyring, broker_layout):
    broker = keyring.keys["broker"]
    path = broker_layout.broker_public
    path.write_bytes(crypto.export_public_file(broker))
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before, written = path.stat(), path.read_bytes()
    key, created = ensure_broker_keys(broker_layout)
    assert (key, created) == (broker, False)
    after = path.stat()
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (before.st_mtime_ns, before.st_ino, before.st_size)
    assert path.read_bytes() == written
    assert broker_layout.broker_private.read_bytes() == keyring.layout.broker_private.read_bytes()


def blocks_of(key: crypto.PrivateKey) -> tuple[bytes, bytes]:
    """A key's public file split into its RSA block and its Curve block."""
    data = crypto.export_public_file(key)
    cut = data.index(BEGIN)
    return data[:cut], data[cut:]


def test_a_file_with_two_curve_blocks_is_refused(keyring, tmp_path):
    alice_rsa, alice_curve = blocks_of(keyring.keys["alice"])
    _, mallory_curve = blocks_of(keyring.keys["mallory"])
    path = tmp_path / "two-curves.pub"
    path.write_bytes(alice_rsa + alice_curve + mallory_curve)
    with pytest.raises(crypto.KeyFileError):
        crypto.load_public_key_file(path)


def test_a_file_with_two_rsa_blocks_is_refused(keyring, tmp_path):
    alice_rsa, alice_curve = blocks_of(keyring.keys["alice"])
    mallory_rsa, _ = blocks_of(keyring.keys["mallory"])
    path = tmp_path / "two-keys.pub"
    path.write_bytes(mallory_rsa + alice_rsa + alice_curve)
    with pytest.raises(crypto.KeyFileError):
        crypto.load_public_key_file(path)


# ---------------------------------------------------------------- the binding


def split_file(data: bytes) -> tuple[bytes, bytes, bytes]:
    """A public key file cut into its RSA block, its Curve block and its binding block."""
    curve_at = data.index(BEGIN)
    binding_at = data.index(b"-----BEGIN " + BINDING_BLOCK.encode())
    return data[:curve_at], data[curve_at:binding_at], data[binding_at:]


def binding_signature(data: bytes) -> bytes:
    body = split_file(data)[2].split(b"-----\n", 1)[1].split(b"\n-----END")[0]
    return base64.b64decode(b"".join(body.split()), validate=True)


def test_the_file_is_the_documented_bytes_and_the_binding_verifies_as_specified(keyring):
    """PROTOCOL.md 2.1: the binding is RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) by the file's RSA key of
    b"zchat/3|curve-key|" followed by the 32 raw bytes of the Curve key; checked here with PyCryptodome
    directly, not through crypto.verify."""
    from Crypto.Hash import SHA256
    from Crypto.Signature import pss

    alice = keyring.keys["alice"]
    curve = crypto.curve_public(crypto.curve_secret(alice))
    data = crypto.export_public_file(alice)
    signature = binding_signature(data)
    body = base64.b64encode(signature)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    assert data == (
        crypto.export_public_pem(alice).rstrip(b"\n")
        + b"\n"
        + BEGIN
        + base64.b64encode(curve)
        + END
        + b"-----BEGIN ZCHAT CURVE25519 BINDING-----\n"
        + b"\n".join(lines)
        + b"\n-----END ZCHAT CURVE25519 BINDING-----\n"
    )
    assert len(signature) == (alice.size_in_bits() + 7) // 8
    scheme = pss.new(alice.public_key(), mask_func=lambda seed, n: pss.MGF1(seed, n, SHA256), salt_bytes=32)
    scheme.verify(SHA256.new(b"zchat/3|curve-key|" + curve), signature)  # raises if not
    assert crypto.CURVE_BINDING_CONTEXT == b"zchat/3|curve-key|"
    assert crypto.curve_binding_input(curve) == b"zchat/3|curve-key|" + curve


def test_a_file_without_a_binding_gives_its_rsa_key_and_no_usable_curve_key(keyring, tmp_path):
    alice = keyring.keys["alice"]
    rsa, curve_block, _ = split_file(crypto.export_public_file(alice))
    path = tmp_path / "unbound.pub"
    path.write_bytes(rsa + curve_block)
    held = crypto.load_public_key_file(path)
    assert held.rsa == alice.public_key()
    assert held.curve is None
    assert held.unbound_curve == crypto.curve_public(crypto.curve_secret(alice))
    assert not public_file_is_current(path, alice)
    assert public_file_needs_binding(path)
    assert not public_file_needs_binding(tmp_path / "missing.pub")


def tampered(data: bytes, index: int) -> bytes:
    """`data` with one bit of its binding signature flipped."""
    signature = bytearray(binding_signature(data))
    signature[index] ^= 0x01
    rsa, curve_block, _ = split_file(data)
    return rsa + curve_block + binding_block(bytes(signature))


@pytest.mark.parametrize("index", [0, 100, -1])
def test_a_tampered_binding_is_refused(keyring, tmp_path, index):
    path = tmp_path / "tampered.pub"
    path.write_bytes(tampered(crypto.export_public_file(keyring.keys["alice"]), index))
    with pytest.raises(crypto.KeyFileError, match="not bound to its RSA key"):
        crypto.load_public_key_file(path)
    assert crypto.load_public_key(path) == keyring.keys["alice"].public_key()  # the RSA key alone still reads
    assert public_file_needs_binding(path)


@pytest.mark.parametrize("swap", ["curve-and-binding", "curve-only", "binding-only", "binding-to-the-owner"])
def test_blocks_swapped_between_files_are_refused(keyring, tmp_path, swap):
    """Alice's Curve key (with or without her binding) under mallory's RSA key, or one file's binding in
    the other: no combination verifies."""
    alice_rsa, alice_curve, alice_binding = split_file(crypto.export_public_file(keyring.keys["alice"]))
    mallory_rsa, mallory_curve, mallory_binding = split_file(crypto.export_public_file(keyring.keys["mallory"]))
    data = {
        "curve-and-binding": mallory_rsa + alice_curve + alice_binding,
        "curve-only": mallory_rsa + alice_curve + mallory_binding,
        "binding-only": mallory_rsa + mallory_curve + alice_binding,
        "binding-to-the-owner": alice_rsa + alice_curve + mallory_binding,
    }[swap]
    path = tmp_path / "swapped.pub"
    path.write_bytes(data)
    with pytest.raises(crypto.KeyFileError, match="not bound to its RSA key"):
        crypto.load_public_key_file(path)


@pytest.mark.parametrize(
    "signed",
    [b"", b"zchat/3|login|", b"zchat/3|statement|", b"zchat/3|broker|", b"zchat/3|curve-key"],
    ids=["bare-key", "login", "statement", "broker", "context-without-bar"],
)
def test_a_signature_made_for_another_purpose_is_no_binding(keyring, tmp_path, signed):
    alice = keyring.keys["alice"]
    curve = crypto.curve_public(crypto.curve_secret(alice))
    path = tmp_path / "other.pub"
    path.write_bytes(curve_file(alice, base64.b64encode(curve), binding_block(crypto.sign(alice, signed + curve))))
    with pytest.raises(crypto.KeyFileError, match="not bound to its RSA key"):
        crypto.load_public_key_file(path)


@pytest.mark.parametrize(
    "body",
    [b"", b"!!!!", base64.b64encode(b"\x01" * 256), base64.b64encode(b"\x01" * 300)],
    ids=["empty", "not-base64", "junk-of-the-right-length", "too-long"],
)
def test_a_garbled_binding_is_refused(keyring, tmp_path, body):
    alice = keyring.keys["alice"]
    curve = base64.b64encode(crypto.curve_public(crypto.curve_secret(alice)))
    block = b"-----BEGIN " + BINDING_BLOCK.encode() + b"-----\n" + body + b"\n-----END " + BINDING_BLOCK.encode()
    path = tmp_path / "garbled.pub"
    path.write_bytes(curve_file(alice, curve, block + b"-----\n"))
    with pytest.raises(crypto.KeyFileError, match="not bound to its RSA key"):
        crypto.load_public_key_file(path)


def test_a_binding_without_a_curve_key_or_twice_is_refused(keyring, tmp_path):
    rsa, curve_block, binding = split_file(crypto.export_public_file(keyring.keys["alice"]))
    path = tmp_path / "odd.pub"
    path.write_bytes(rsa + binding)
    with pytest.raises(crypto.KeyFileError, match="binding but no Curve25519 key"):
        crypto.load_public_key_file(path)
    path.write_bytes(rsa + curve_block + binding + binding)
    with pytest.raises(crypto.KeyFileError, match="not an RSA public key file"):
        crypto.load_public_key_file(path)


def test_a_chosen_curve_key_is_bound_by_the_rsa_key_that_signs_it(keyring, tmp_path):
    """`export_public_file(key, curve=...)` (the benchmark's names that share a pool key): the binding says only
    that the RSA key's holder chose this Curve key."""
    alice = keyring.keys["alice"]
    chosen = crypto.curve_public(b"\x07" * 32)
    path = tmp_path / "chosen.pub"
    path.write_bytes(crypto.export_public_file(alice, curve=chosen))
    assert crypto.load_public_key_file(path) == crypto.PublicKeyFile(alice.public_key(), chosen)
    assert not public_file_is_current(path, alice)  # not the Curve key derived from alice's RSA key
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.export_public_file(alice, curve=b"\x07" * 31)


def test_ensure_broker_keys_binds_an_unbound_broker_pub(keyring, broker_layout):
    broker = keyring.keys["broker"]
    rsa, curve_block, _ = split_file(crypto.export_public_file(broker))
    broker_layout.broker_public.write_bytes(rsa + curve_block)
    assert ensure_broker_keys(broker_layout) == (broker, False)
    held = crypto.load_public_key_file(broker_layout.broker_public)
    assert held.curve == crypto.curve_public(crypto.curve_secret(broker))


@pytest.mark.parametrize("damage", ["unbound", "tampered"])
def test_a_client_refuses_a_pinned_broker_pub_whose_curve_key_is_not_bound(keyring, tmp_path, damage):
    """The client pins broker.pub; a Curve key that its RSA key did not sign is refused, in one line."""
    from zchat.client.driver import load_keys

    data = crypto.export_public_file(keyring.keys["broker"])
    rsa, curve_block, _ = split_file(data)
    path = tmp_path / "broker.pub"
    path.write_bytes(rsa + curve_block if damage == "unbound" else tampered(data, 5))
    with pytest.raises(crypto.KeyFileError) as caught:
        load_keys(keyring.private("alice"), path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
