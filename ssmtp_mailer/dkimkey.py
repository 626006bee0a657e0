"""DKIM private keys: PEM (PKCS#8, or PKCS#1 for RSA) to what dkimpy signs with; pure.

dkimpy 1.1.4 reads RSA keys only as PKCS#1 and Ed25519 keys only as the base64 of the
32-byte seed, while `openssl genpkey` and `dkim keygen` write PKCS#8. A few lines of DER
reading bridge the two without importing a crypto library on the sending path.
"""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits.
MIN_RSA_BITS = 1024

_OID_RSA = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
_OID_ED25519 = bytes.fromhex("2b6570")  # 1.3.101.112 id-Ed25519
_SEQUENCE, _INTEGER, _OCTET_STRING, _OID = 0x30, 0x02, 0x04, 0x06


class KeyFileError(ValueError):
    """The key file cannot be used; the message says why."""


class DkimKey(NamedTuple):
    """A private key ready for dkimpy: PKCS#1 PEM (RSA) or the base64 seed (Ed25519)."""

    algorithm: str
    signing_key: bytes
    bits: int = 0


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise KeyFileError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise KeyFileError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise KeyFileError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, s, e = _tlv(data, pos)
        out.append((tag, s, e))
        pos = e
    return out


def _sequence(data: bytes) -> list[tuple[int, int, int]]:
    tag, start, end = _tlv(data, 0)
    if tag != _SEQUENCE or end != len(data):
        raise KeyFileError("not a DER SEQUENCE")
    return _children(data, start, end)


def _rsa_bits(pkcs1: bytes) -> int:
    """The modulus size of a PKCS#1 RSAPrivateKey, checking its shape (RFC 8017 A.1.2)."""
    fields = _sequence(pkcs1)
    if len(fields) < 9 or any(tag != _INTEGER for tag, _, _ in fields[:9]):
        raise KeyFileError("not an RSA private key (RFC 8017 RSAPrivateKey)")
    _, start, end = fields[1]
    return int.from_bytes(pkcs1[start:end], "big").bit_length()


def _pem_blocks(text: bytes) -> list[tuple[str, bytes]]:
    """(label, DER) of each PEM block in `text`."""
    blocks = []
    lines = text.replace(b"\r\n", b"\n").split(b"\n")
    label: str | None = None
    body: list[bytes] = []
    for raw in lines:
        line = raw.strip()
        if line.startswith(b"-----BEGIN ") and line.endswith(b"-----"):
            label, body = line[11:-5].decode("ascii", "replace"), []
        elif line.startswith(b"-----END ") and label is not None:
            try:
                blocks.append((label, base64.b64decode(b"".join(body), validate=True)))
            except (binascii.Error, ValueError):
                raise KeyFileError(f"{label}: bad base64") from None
            label = None
        elif label is not None and line and b":" not in line:
            body.append(line)
        elif label is not None and b":" in line:  # RFC 1421 headers: an encrypted PKCS#1 key
            raise KeyFileError("the key is encrypted; write it without a passphrase (0600)")
    return blocks


def parse_private_key(text: bytes) -> DkimKey:
    """The key in a PEM file; KeyFileError says what is wrong with it."""
    blocks = _pem_blocks(text)
    if not blocks:
        raise KeyFileError("no PEM private key in the file")
    label, der = next(((lb, d) for lb, d in blocks if "PRIVATE KEY" in lb), blocks[0])
    if label == "ENCRYPTED PRIVATE KEY":
        raise KeyFileError("the key is encrypted; write it without a passphrase (0600)")
    if label == "RSA PRIVATE KEY":
        return _rsa_key(der)
    if label != "PRIVATE KEY":
        if "PRIVATE KEY" in label:
            raise KeyFileError(f"{label}: DKIM signs with RSA or Ed25519 keys only")
        raise KeyFileError(f"{label}: not a private key (expected PKCS#8 'PRIVATE KEY')")
    fields = _sequence(der)
    if len(fields) < 3 or fields[0][0] != _INTEGER or fields[1][0] != _SEQUENCE:
        raise KeyFileError("not a PKCS#8 private key")
    algorithm = _children(der, fields[1][1], fields[1][2])
    if not algorithm or algorithm[0][0] != _OID:
        raise KeyFileError("not a PKCS#8 private key")
    oid = der[algorithm[0][1] : algorithm[0][2]]
    tag, start, end = fields[2]
    if tag != _OCTET_STRING:
        raise KeyFileError("not a PKCS#8 private key")
    inner = der[start:end]
    if oid == _OID_RSA:
        return _rsa_key(inner)
    if oid == _OID_ED25519:
        # RFC 8410 §7: CurvePrivateKey ::= OCTET STRING, the 32-byte seed.
        tag, start, end = _tlv(inner, 0)
        if tag != _OCTET_STRING or end - start != 32 or end != len(inner):
            raise KeyFileError("bad Ed25519 private key (expected a 32-byte seed)")
        return DkimKey(ED25519, base64.b64encode(inner[start:end]), 256)
    raise KeyFileError("neither an RSA nor an Ed25519 key (DKIM signs with those two)")


def _rsa_key(pkcs1: bytes) -> DkimKey:
    bits = _rsa_bits(pkcs1)
    if bits < MIN_RSA_BITS:
        raise KeyFileError(f"RSA key of {bits} bits; DKIM needs at least {MIN_RSA_BITS} (use 2048)")
    body = base64.encodebytes(pkcs1)
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n" + body + b"-----END RSA PRIVATE KEY-----\n"
    return DkimKey(RSA, pem, bits)


def key_type(algorithm: str) -> str:
    """The DKIM `k=` tag for a signing algorithm."""
    return "ed25519" if algorithm == ED25519 else "rsa"
