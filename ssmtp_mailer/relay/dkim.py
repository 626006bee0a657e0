"""DKIM signing (RFC 6376, RFC 8463) of a route's mail with dkimpy, one signature per key.

Keys are loaded and checked before the first delivery attempt, so a bad key is EX_CONFIG
for the whole message, never a failure half-way through its route groups. dkimpy itself
is imported only when a message is signed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from ssmtp_mailer.addresses import ascii_domain, split_address
from ssmtp_mailer.config.model import DkimAlgorithm, DomainConfig
from ssmtp_mailer.dkimkey import ED25519, RSA, DkimKey, KeyFileError, parse_private_key
from ssmtp_mailer.errors import ConfigError, DataError, SoftwareError

# SPEC §6. The fields a reader trusts are signed once more than they occur (over-signed,
# RFC 6376 §8.15), so none can be added above the signed ones: no second From, and no
# Subject, Reply-To, To or Cc where the message had none.
OVERSIGNED = frozenset({"from", "subject", "reply-to", "to", "cc"})
SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
)


class SigningKey(NamedTuple):
    selector: str
    path: Path
    key: DkimKey


class Signer(NamedTuple):
    """A route's keys; `domain` is the d= tag (None: the envelope sender's, see route_domain);
    `left_out`, SIGNED_HEADERS its relay rewrites (a signature over them would break)."""

    route: str
    domain: str | None
    keys: tuple[SigningKey, ...]
    left_out: frozenset[str] = frozenset()


# Relays that rewrite fields after we sign. Amazon SES replaces Message-ID and Date; its
# guide to signing by hand says to leave them out ("Manual DKIM signing in Amazon SES").
_REWRITTEN_BY_RELAY = {"amazonaws.com": frozenset({"message-id", "date"})}


def rewritten_by_relay(route: DomainConfig) -> frozenset[str]:
    """The fields the route's relay rewrites after we sign."""
    host = (route.smtp_server or "").lower().rstrip(".")
    for suffix, fields in _REWRITTEN_BY_RELAY.items():
        if host == suffix or host.endswith("." + suffix):
            return fields
    return frozenset()


# Keys already read, by (path, size, mtime): the listener and `queue run` sign many messages.
_loaded: dict[tuple[str, int, int], DkimKey] = {}


def _read_key(path: Path, where: str) -> DkimKey:
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            ident = (str(path), st.st_size, st.st_mtime_ns)
            cached = _loaded.get(ident)
            if cached is not None:
                return cached
            text = handle.read(1 << 16)
    except OSError as exc:
        raise ConfigError(where, f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        key = parse_private_key(text)
    except KeyFileError as exc:
        raise ConfigError(
            where, f"{path}: {exc}", hint="`ssmtp-mailer dkim keygen` writes a usable key"
        ) from None
    _loaded[ident] = key
    return key


def signer_for(route: DomainConfig) -> Signer | None:
    """The route's signer, its keys read and checked; None when the route does not sign."""
    if not route.dkim_key_file:
        return None
    where = f"{route.location}: [domain:{route.name}]: dkim_key_file"
    keys = tuple(
        SigningKey(selector, path, _read_key(path, where))
        for selector, path in zip(route.dkim_selector, route.dkim_key_file, strict=True)
    )
    algorithms = {k.key.algorithm for k in keys}
    wanted = route.dkim_algorithm
    problem = None
    if wanted in (DkimAlgorithm.RSA, DkimAlgorithm.ED25519):
        others = [k for k in keys if k.key.algorithm != wanted.value]
        if others:
            kind = "an Ed25519" if others[0].key.algorithm == ED25519 else "an RSA"
            problem = f"dkim_algorithm = {wanted.value}, but {others[0].path} is {kind} key"
    elif wanted == DkimAlgorithm.BOTH and algorithms != {RSA, ED25519}:
        have = "RSA" if RSA in algorithms else "Ed25519"
        problem = f"dkim_algorithm = both needs an RSA and an Ed25519 key, the keys are all {have}"
    if problem:
        raise ConfigError(
            f"{route.location}: [domain:{route.name}]",
            problem,
            hint="`ssmtp-mailer dkim keygen --algorithm rsa|ed25519` makes the missing key",
        )
    if ED25519 in algorithms:
        # Known before anything goes (a zipapp, a venv without it): never after some of
        # the message went, nor by a queued entry kept unsigned.
        try:
            import nacl.signing  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"{where}: {next(k.path for k in keys if k.key.algorithm == ED25519)}",
                "Ed25519 signing needs PyNaCl (Debian: python3-nacl)",
            ) from None
    return Signer(route.name, route_domain(route), keys, rewritten_by_relay(route))


def route_domain(route: DomainConfig) -> str | None:
    """The d= of a route named after a domain; None for `[domain:*]` and for a name that is
    no domain (`[domain:relay]`), whose mail is signed as its envelope sender's domain:
    the one a forwarding route's relay_account makes ours, never a stranger's From."""
    name = route.name.strip(".")
    if "." not in name or "*" in name:
        return None
    return ascii_domain(name)  # the loader refused a name IDNA 2008 does not allow


def header_list(
    headers: list[tuple[bytes, bytes]], left_out: frozenset[str] = frozenset()
) -> list[bytes]:
    """The h= list: each SPEC header but `left_out` as often as it occurs, the OVERSIGNED
    once more."""
    counts: dict[bytes, int] = {}
    for field, _ in headers:
        key = field.strip().lower()
        counts[key] = counts.get(key, 0) + 1
    out: list[bytes] = []
    for name in SIGNED_HEADERS:
        if name in left_out:
            continue
        wanted = name.encode("ascii")
        out += [wanted] * (counts.get(wanted, 0) + (1 if name in OVERSIGNED else 0))
    return out


def _from_domain(headers: list[tuple[bytes, bytes]]) -> str | None:
    from ssmtp_mailer.message import parse_addresses

    for name, value in headers:
        if name.strip().lower() == b"from":
            found = parse_addresses(value.decode("utf-8", "replace"))
            if found and "@" in found[0].address:
                return found[0].address.rpartition("@")[2].lower()
    return None


_OBSOLETE_NAME = re.compile(rb"^([!-9;-~]+)[ \t]+:", re.MULTILINE)


def plain_field_names(message: bytes) -> bytes:
    """`Subject : x` as `Subject: x`: the obsolete space before a field's colon (RFC 5322
    §4.5) taken out of the header, which DKIM's parser refuses; the field is the same."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    if b" :" not in head and b"\t:" not in head:
        return message
    return _OBSOLETE_NAME.sub(rb"\1:", head) + message[len(head) :]


def sign(signer: Signer, data: bytes | bytearray, envelope_from: str) -> bytes:
    """`data` (CRLF, not dot-stuffed) with one DKIM-Signature per key in front; d= the
    signer's domain, else `envelope_from`'s, else (a bounce: the null sender) From's."""
    import dkim  # type: ignore[import-untyped, unused-ignore]

    message = plain_field_names(bytes(data))
    try:
        state = dkim.DKIM(message, linesep=b"\r\n")
    except dkim.MessageFormatError as exc:
        raise DataError("message", f"cannot be DKIM-signed: {exc}") from None
    include = header_list(state.headers, signer.left_out)
    domain = signer.domain or split_address(envelope_from)[1].lower() or _from_domain(state.headers)
    if domain is None:
        raise ConfigError(
            f"[domain:{signer.route}]", "cannot sign: the message has no sender's domain"
        )
    # d= in IDNA 2008's A-label (the stdlib codec's IDNA 2003 made straße.example's
    # signature strasse.example's); intake has refused an address whose domain has none.
    a_label = None if domain.startswith("[") else ascii_domain(domain)
    if a_label is None:
        raise ConfigError(
            f"[domain:{signer.route}]",
            f"cannot sign as {domain!r}: d= must be a domain name (RFC 6376 §3.5)",
        )
    d = a_label.encode("ascii")
    signatures = []
    for item in signer.keys:
        try:
            signature = state.sign(
                item.selector.encode("ascii"),
                d,
                item.key.signing_key,
                signature_algorithm=item.key.algorithm.encode("ascii"),
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
        except dkim.NaClNotFoundError:
            raise ConfigError(
                f"[domain:{signer.route}]: {item.path}",
                "Ed25519 signing needs PyNaCl (Debian: python3-nacl)",
            ) from None
        except dkim.DKIMException as exc:
            raise SoftwareError(f"DKIM signing with {item.path}", str(exc)) from None
        signatures.append(signature)
    return b"".join(signatures) + message


def check_route(route: DomainConfig) -> list[str]:
    """`config check`: the route's keys load and sign a sample message; problems as lines."""
    try:
        signer = signer_for(route)
        if signer is not None:
            domain = signer.domain or "example.com"
            named = (ascii_domain(domain) or "example.com").encode("ascii")
            sample = b"From: check@%s\r\nSubject: check\r\n\r\nbody\r\n" % named
            sign(signer, sample, f"check@{domain}")
    except ConfigError as exc:
        return exc.lines() if exc.problems else [f"{exc.what}: {exc.why}"]
    except SoftwareError as exc:
        return [f"{route.location}: [domain:{route.name}]: {exc.what}: {exc.why}"]
    return []
