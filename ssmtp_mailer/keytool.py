"""DKIM key pairs with `cryptography`: new keys for `dkim keygen`, public halves for `dns check`.

Only these two commands import `cryptography` (Debian 12: python3-cryptography); signing
reads keys with `dkimkey`, which needs no crypto library.
"""

from __future__ import annotations

import base64
from typing import NamedTuple

from ssmtp_mailer.dkimkey import ED25519, RSA, KeyFileError
from ssmtp_mailer.errors import UnavailableError


class KeyPair(NamedTuple):
    algorithm: str
    bits: int
    private_pem: bytes
    public_b64: str

    @property
    def key_type(self) -> str:
        return "ed25519" if self.algorithm == ED25519 else "rsa"


def _require_cryptography() -> None:
    """One clear line where `cryptography` is missing (the zipapp, a minimal venv)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise UnavailableError(
            "cryptography",
            "not installed: dkim keygen and the DKIM key check of dns check need it",
            hint="apt-get install python3-cryptography, or pip install cryptography",
        ) from None


def generate(algorithm: str, bits: int = 2048) -> KeyPair:
    """A new key: PKCS#8 PEM and the DKIM `p=` value (SPKI for RSA, raw 32 bytes for Ed25519)."""
    _require_cryptography()
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == RSA:
        return _pair(rsa.generate_private_key(public_exponent=65537, key_size=bits))
    return _pair(ed25519.Ed25519PrivateKey.generate())


def public_of(pem: bytes) -> KeyPair:
    """The pair for an existing private key file's contents."""
    _require_cryptography()
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot read the private key: {exc}") from None
    return _pair(key)


def _pair(key: object) -> KeyPair:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    pem_args = (s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    if isinstance(key, rsa.RSAPrivateKey):
        public = key.public_key().public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
        return KeyPair(RSA, key.key_size, key.private_bytes(*pem_args), _b64(public))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        public = key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
        return KeyPair(ED25519, 256, key.private_bytes(*pem_args), _b64(public))
    raise KeyFileError("neither an RSA nor an Ed25519 key (DKIM signs with those two)")


def same_public_key(key_type: str, published_b64: str, pair: KeyPair) -> bool:
    """Whether a DNS `p=` value (base64; SPKI for RSA, RFC 8463 raw key for Ed25519) is `pair`'s."""
    if key_type != pair.key_type:
        return False
    try:
        published = base64.b64decode(published_b64, validate=True)
    except ValueError:
        return False
    mine = base64.b64decode(pair.public_b64)
    if published == mine or pair.algorithm == ED25519:
        return published == mine
    from cryptography.hazmat.primitives import serialization as s

    try:
        loaded = s.load_der_public_key(published)
    except ValueError:
        return False
    return bool(loaded.public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo) == mine)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
