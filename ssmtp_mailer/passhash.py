"""`smtp_password_hash` values: scrypt hashes for AUTH to the listener (SPEC §8); pure.

The format is `scrypt$N$r$p$SALT$KEY` with SALT and KEY in unpadded base64, so a hash
says how it was made and stronger parameters can come later without a new key.
"""

from __future__ import annotations

PREFIX = "scrypt"
# RFC 7914's interactive-login parameters: ~50 ms and 16 MiB per check.
N, R, P = 2**14, 8, 1
KEY_LENGTH = 32
SALT_LENGTH = 16


class HashFormatError(ValueError):
    """Not a hash `password hash` could have printed."""


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise HashFormatError("not base64") from None


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    import hashlib

    # maxmem: OpenSSL's default (32 MiB) is just too small for n=2**14, r=8 plus overhead.
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=64 * 2**20)


def hash_password(password: str) -> str:
    """A new hash of `password` with a random salt."""
    import secrets

    salt = secrets.token_bytes(SALT_LENGTH)
    key = _derive(password.encode("utf-8"), salt, N, R, P, KEY_LENGTH)
    return f"{PREFIX}${N}${R}${P}${_b64(salt)}${_b64(key)}"


def parse(text: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, key) of a hash; HashFormatError saying what is wrong."""
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise HashFormatError("expected scrypt$N$r$p$salt$key (from `ssmtp-mailer password hash`)")
    try:
        n, r, p = (int(x, 10) for x in parts[1:4])
    except ValueError:
        raise HashFormatError("N, r and p must be whole numbers") from None
    if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise HashFormatError("N must be a power of two up to 2**20, r 1-32, p 1-16")
    salt, key = _unb64(parts[4]), _unb64(parts[5])
    if len(salt) < 8 or len(key) < 16:
        raise HashFormatError("salt or key too short")
    return n, r, p, salt, key


def verify_password(password: bytes, stored: str) -> bool:
    """True when `password` matches `stored`; False for a wrong password or a broken hash."""
    import hmac

    try:
        n, r, p, salt, key = parse(stored)
    except HashFormatError:
        return False
    return hmac.compare_digest(_derive(password, salt, n, r, p, len(key)), key)
