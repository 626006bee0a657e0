"""Parsers from INI text to typed values; each raises ValueError saying what was expected."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from ssmtp_mailer.config.ini import unquote
from ssmtp_mailer.config.model import HostPort
from ssmtp_mailer.errors import shorten

E = TypeVar("E", bound=Enum)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NOT_IN_ADDRESS = frozenset(" \t<>\r\n,")
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)


def parse_str(text: str) -> str:
    value = unquote(text)
    if not value:
        raise ValueError("expected a value, got nothing")
    return value


def parse_bool(text: str) -> bool:
    word = unquote(text).lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true/false, yes/no, on/off or 1/0, got {shorten(text)}")


# Above this no count, size or duration makes sense, and a socket timeout or a sleep
# given more overflows (OverflowError, a traceback at send time).
MAX_INT = 2**31 - 1
# int() also takes `1_000` and other scripts' digits (`١٢`): plain ASCII digits only.
_INT_RE = re.compile(r"[+-]?[0-9]+")


def int_parser(low: int, high: int = MAX_INT, what: str = "a whole number") -> Callable[[str], int]:
    def parse(text: str) -> int:
        digits = unquote(text).strip()
        if not _INT_RE.fullmatch(digits):
            raise ValueError(f"expected {what}, got {shorten(text)}")
        value = int(digits, 10)
        if value < low or value > high:
            shown = digits if len(digits) <= 40 else shorten(digits)
            raise ValueError(f"expected {what} ({low}-{high}), got {shown}")
        return value

    return parse


parse_port = int_parser(1, 65535, "a port number")
parse_seconds = int_parser(0, what="a number of seconds")
# A day: a relay or client silent longer than that is gone.
parse_timeout = int_parser(1, 86400, "a number of seconds")
parse_count = int_parser(0, what="a whole number")
parse_positive = int_parser(1, what="a positive whole number")


def parse_list(text: str) -> tuple[str, ...]:
    """Either `a, b` or `["a", "b"]`."""
    text = text.strip()
    if text.startswith("["):
        import json

        try:
            items = json.loads(text)
        except ValueError:
            raise ValueError(f'expected a list like ["a", "b"], got {shorten(text)}') from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"expected a list of strings, got {shorten(text)}")
        return tuple(i.strip() for i in items if i.strip())
    return tuple(unquote(part.strip()) for part in text.split(",") if part.strip())


def enum_parser(kind: type[E], *, upper: bool = False) -> Callable[[str], E]:
    members = {member.value: member for member in kind}

    def parse(text: str) -> E:
        word = unquote(text)
        word = word.upper() if upper else word.lower()
        member = members.get(word)
        if member is not None:
            return member
        allowed = ", ".join(str(m.value) for m in kind)
        raise ValueError(f"expected one of {allowed}, got {shorten(text)}")

    return parse


def parse_hostname(text: str) -> str:
    host = unquote(text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # Either check accepts `host` as it is; the name check first spares ipaddress's exceptions.
    if _HOST_RE.match(host):
        return host
    import ipaddress  # needed only for address literals, and costly to import

    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        raise ValueError(f"expected a host name or IP address, got {shorten(text)}") from None


def parse_own_hostname(text: str) -> str:
    """default_hostname, helo_name: this host's name as mail shows it (MAIL FROM, EHLO).

    A final dot is dropped (relays refuse `root@host.example.` with 553). An IP address is
    refused: a domain needs it as an address literal ([192.0.2.1], RFC 5321 §4.1.3),
    which few relays accept from a sender.
    """
    host = parse_hostname(text)
    if not _HOST_RE.match(host) or host.replace(".", "").isdigit():
        raise ValueError(
            f"expected this host's name, not an IP address: {shorten(text)}"
            " (use a name that resolves to it)"
        )
    return host.removesuffix(".")


def parse_mail_domain(text: str) -> str:
    """A domain of mail addresses (dns check's, DKIM's d=) in its key form: lower case,
    IDNA 2008 A-labels for a non-ASCII name, as the routes compare it."""
    from ssmtp_mailer.addresses import domain_key, domain_problem

    domain = unquote(text).strip().rstrip(".")
    if domain.startswith("[") or domain.rpartition(".")[2].isdigit() or ":" in domain:
        raise ValueError(f"expected a domain name, not an address: {shorten(text)}")
    problem = domain_problem(domain)
    if problem is not None:
        raise ValueError(f"expected a domain name: {problem}")
    return domain_key(domain)


def parse_hostport(text: str) -> HostPort:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    text = unquote(text.strip())
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected [address]:port, got {shorten(text)}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    return HostPort(parse_hostname(host), parse_port(port_text) if port_text else None)


def parse_hostport_list(text: str) -> tuple[HostPort, ...]:
    stripped = text.strip()
    if stripped.startswith("[") and not stripped.startswith(('["', "[ ", "[]")):
        # `[::1]:25, ...`: an IPv6 literal, not a JSON list.
        items: tuple[str, ...] = tuple(p.strip() for p in stripped.split(",") if p.strip())
    else:
        items = parse_list(text)
    return tuple(parse_hostport(item) for item in items)


def parse_listen_addresses(text: str) -> tuple[HostPort, ...]:
    """`listen_address`: at least one; an empty one left the listener listening on nothing."""
    addresses = parse_hostport_list(text)
    if not addresses:
        raise ValueError("expected addresses to listen on like 127.0.0.1:25, got nothing")
    return addresses


def parse_networks(text: str) -> tuple[str, ...]:
    import ipaddress

    out = []
    for item in parse_list(text):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"expected networks like 127.0.0.0/8, got {shorten(item)}") from None
    return tuple(out)


def parse_nameservers(text: str) -> tuple[HostPort, ...]:
    """`dns_servers`: IP addresses, each with an optional port (`192.0.2.1:5353`, `[::1]:53`)."""
    import ipaddress

    out = []
    for item in parse_list(text):
        server = parse_hostport(item)
        try:
            ipaddress.ip_address(server.host)
        except ValueError:
            raise ValueError(
                f"expected IP addresses with optional :port, got {shorten(item)}"
            ) from None
        out.append(server)
    return tuple(out)


# Left to re's own cache: only a route that signs needs it.
_SELECTOR = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*$"


def parse_selectors(text: str) -> tuple[str, ...]:
    """DKIM selectors (RFC 6376 §3.1: dot-separated DNS labels)."""
    out = parse_list(text)
    for item in out:
        if not re.match(_SELECTOR, item):
            raise ValueError(
                f"expected DKIM selectors (DNS labels like rsa2026), got {shorten(item)}"
            )
    return out


def parse_log_level(text: str) -> str:
    level = unquote(text).upper()
    if level == "WARN":
        level = "WARNING"
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {shorten(text)}")
    return level


def parse_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint, hex with or without colons; kept as lowercase hex."""
    digits = unquote(text).replace(":", "").lower()
    if digits.startswith("sha256/") or digits.startswith("sha256:"):
        digits = digits[7:]
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError(f"expected a SHA-256 fingerprint (64 hex digits), got {shorten(text)}")
    return digits


def parse_address(text: str) -> str:
    """A plain mailbox `local@domain` (or a bare local name), no display name."""
    value = unquote(text)
    if not _NOT_IN_ADDRESS.isdisjoint(value) or value.count("@") > 1 or value.endswith("@"):
        raise ValueError(f"expected an address like user@example.com, got {shorten(text)}")
    if value.startswith("@"):
        raise ValueError(f"expected an address like user@example.com, got {shorten(text)}")
    return value


def parse_password_hash(text: str) -> str:
    """An `smtp_password_hash` as `ssmtp-mailer password hash` prints it."""
    from ssmtp_mailer import passhash

    value = unquote(text)
    try:
        passhash.parse(value)
    except passhash.HashFormatError as exc:
        raise ValueError(str(exc)) from None
    return value
