"""One address model (RFC 5321/5322/6531): split, qualify, validate, compare; pure.

Intake (`message`, `send`, `sendmail -bs`), rewriting (`patterns`, `rewrite`) and `route`
all use these, so an address accepted at intake is one every mapping can match.
"""

from __future__ import annotations

import re

# RFC 5322 §3.2.3 atext, widened by RFC 6531 to any non-ASCII character. These two are left
# to re's own cache: Unicode ranges are slow to compile, and the ASCII shapes below settle
# nearly every address without them.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\ud7ff\ue000-\U0010ffff]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# RFC 5322 §3.2.4 quoted-string without folding white space (RFC 5321 §4.1.2 has none).
_QTEXT = r"[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\ud7ff\ue000-\U0010ffff]"
_QUOTED = rf'"(?:{_QTEXT}|\\[\x20-\x7e])*"'
_QUOTED_PAIR = r"\\([\x20-\x7e])"  # re's cache too: quoted local parts are rare
# RFC 5321 §4.1.2 sub-domain: Let-dig [Ldh-str], at most 63 octets (RFC 1035).
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{LABEL}(?:\.{LABEL})*\.?")
_ASCII_ATOM = r"[A-Za-z0-9!#$%&'+/=?^_`{|}~-]+"
# An all-ASCII dot-atom local part without '*' (patterns use '*' as the wildcard).
ASCII_LOCAL = rf"{_ASCII_ATOM}(?:\.{_ASCII_ATOM})*"
_ASCII_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ASCII_DOT_ATOM = re.compile(rf"{_ASCII_ATEXT}(?:\.{_ASCII_ATEXT})*")
# RFC 5321 §4.5.3.1: local part, domain and whole path limits, in octets.
MAX_LOCAL = 64
MAX_DOMAIN = 253
MAX_ADDRESS = 254


def _quoted_end(address: str) -> int:
    """Where a leading quoted-string local part ends (the index after its closing quote), or -1."""
    if not address.startswith('"'):
        return -1
    index = 1
    while index < len(address):
        char = address[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            return index + 1
        index += 1
    return -1


def split_path(text: str) -> tuple[str, str] | None:
    """The path of MAIL FROM: or RCPT TO: and the text after it (RFC 5321 §4.1.2).

    `<addr> PARAMS` gives (addr, " PARAMS"), `<>` gives ("", ...), None when malformed.
    Lenient as sendmail is: the angle brackets may be missing, and a source route
    (`<@relay:addr>`) is dropped. A quoted local part may hold '>' and spaces.
    """
    text = text.strip()
    if text.startswith("<"):
        start = 1
        if text.startswith('"', 1):
            start = _quoted_end(text[1:]) + 1
            if start <= 0:
                return None
        close = text.find(">", start)
        if close < 0:
            return None
        address, rest = text[1:close], text[close + 1 :]
    else:
        address = text.split(None, 1)[0] if text else ""
        if not address:
            return None
        rest = text[len(address) :]
    if address.startswith("@"):
        address = address.partition(":")[2]
        if not address:
            return None  # a source route to nowhere is not the null path
    return address, rest


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain); the domain is "" for a bare name. A quoted local part may hold '@'."""
    end = _quoted_end(address)
    if end >= 0:
        if address[end : end + 1] == "@":
            return address[:end], address[end + 1 :]
        if end == len(address):
            return address, ""
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


def has_domain(address: str) -> bool:
    """Whether the address has an @domain part (an @ inside a quoted local part does not count)."""
    return bool(split_address(address)[1]) or address.endswith("@")


def qualify(address: str, hostname: str) -> str:
    """A bare local name gets `@hostname` (SPEC §4.1); the null sender stays empty."""
    if not address or has_domain(address):
        return address
    return f"{address}@{hostname}"


def is_null_sender(address: str) -> bool:
    """`<>`, an empty address or MAILER-DAEMON mean the null sender (SPEC §4.0)."""
    return address.strip() in ("", "<>") or address.strip().lower() == "mailer-daemon"


def domain_key(domain: str) -> str:
    """The form domains are compared in: lowercase ASCII, IDNA A-labels for non-ASCII names."""
    if domain.isascii():
        return domain.lower().rstrip(".")
    try:
        # The stdlib codec is IDNA 2003 (nameprep case-folds), enough to compare names.
        return domain.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        return domain.casefold()


def local_key(local: str) -> str:
    """The form local parts are compared in: case-folded, quoting removed.

    RFC 5321 §2.4 lets a server treat case as significant, but every relay and mailbox
    provider folds it, as Postfix's lookup tables do; comparing case-sensitively here
    would let `Alice@` slip past a rule written for `alice@`.
    """
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        # RFC 5321 §4.1.2: "abc"@x and abc@x are the same mailbox.
        local = re.sub(_QUOTED_PAIR, r"\1", local[1:-1])
    return local.lower()


def address_key(address: str) -> tuple[str, str]:
    """The key two addresses are equal under."""
    local, domain = split_address(address)
    return local_key(local), domain_key(domain)


def local_problem(local: str) -> str | None:
    """Why `local` is not an RFC 5321 local part, or None."""
    if not local:
        return "the local part is empty"
    if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL:
        return f"the local part is longer than {MAX_LOCAL} octets (RFC 5321 §4.5.3.1.1)"
    if (
        _ASCII_DOT_ATOM.fullmatch(local)
        or re.fullmatch(_DOT_ATOM, local)
        or re.fullmatch(_QUOTED, local)
    ):
        return None
    return f"{local!r} is not a valid local part (RFC 5322 dot-atom or quoted string)"


def domain_problem(domain: str) -> str | None:
    """Why `domain` is not a mail domain (host name, IDNA name or address literal), or None."""
    if not domain:
        return "the domain is empty"
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        import ipaddress

        try:
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return f"{domain!r} is not a valid address literal"
        return None
    ascii_name = domain
    if not domain.isascii():
        try:
            ascii_name = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return f"{domain!r} is not a valid internationalized domain name"
    if len(ascii_name.rstrip(".")) > MAX_DOMAIN:
        return f"the domain is longer than {MAX_DOMAIN} octets"
    if not _HOSTNAME.fullmatch(ascii_name):
        return f"{domain!r} is not a valid domain name"
    return None


def address_problem(address: str) -> str | None:
    """Why `address` (already qualified) cannot be an SMTP envelope address, or None."""
    if not address.isascii() and any("\udc80" <= c <= "\udcff" for c in address):
        return "is not valid UTF-8"
    local, domain = split_address(address)
    if not domain:
        return "has no domain (like user@example.com)"
    problem = local_problem(local) or domain_problem(domain)
    if problem:
        return problem
    if len(address.encode("utf-8")) > MAX_ADDRESS:
        return f"is longer than {MAX_ADDRESS} octets (RFC 5321 §4.5.3.1.3)"
    return None


def is_valid_address(address: str) -> bool:
    """True when `address` is a well-formed `local@domain` mailbox."""
    return address_problem(address) is None
