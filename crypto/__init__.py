"""The only place that touches PyCryptodome.

A few verbs, no knobs: generate/load/export RSA keys, seal/open a hybrid
envelope (RSA-OAEP wrapping an AES-256-GCM body), sign/verify (RSA-PSS),
mac/verify_mac (HMAC-SHA256), fingerprint a public key, derive the
Curve25519 pair for the CurveZMQ transport from an RSA key (`crypto.curve`),
and write/read the public key file that binds the two (`crypto.keyfile`).
Every algorithm, hash, mask function and mode is fixed here and passed
explicitly; callers never choose one.

Every failure to open or verify something a peer sent raises the single
`CryptoError`, whose message never says which step failed.
"""

from .atrest import DataKey
from .curve import CURVE_KEY_BYTES, curve_public, curve_secret
from .envelope import open_envelope, seal
from .errors import CryptoError, KeyFileError
from .keyfile import (
    CURVE_BINDING_CONTEXT,
    PublicKeyFile,
    curve_binding_input,
    export_public_file,
    load_public_key,
    load_public_key_file,
)
from .keys import (
    MIN_KEY_BITS,
    PrivateKey,
    PublicKey,
    export_private_pem,
    export_public_pem,
    fingerprint,
    fingerprint_der,
    generate_private_key,
    key_bits,
    load_private_key,
    private_key_from_pem,
    public_key_from_der,
    public_key_to_der,
)
from .mac import MAC_KEY_BYTES, mac, verify_mac
from .signing import sign, verify

__all__ = [
    "CURVE_BINDING_CONTEXT",
    "CURVE_KEY_BYTES",
    "MAC_KEY_BYTES",
    "MIN_KEY_BITS",
    "CryptoError",
    "DataKey",
    "KeyFileError",
    "PrivateKey",
    "PublicKey",
    "PublicKeyFile",
    "curve_binding_input",
    "curve_public",
    "curve_secret",
    "export_private_pem",
    "export_public_file",
    "export_public_pem",
    "fingerprint",
    "fingerprint_der",
    "generate_private_key",
    "key_bits",
    "load_private_key",
    "load_public_key",
    "load_public_key_file",
    "mac",
    "open_envelope",
    "private_key_from_pem",
    "public_key_from_der",
    "public_key_to_der",
    "seal",
    "sign",
    "verify",
    "verify_mac",
]
