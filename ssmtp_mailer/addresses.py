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


# The name the null sender goes by (From of a message with none, policy, routing).
NULL_SENDER_NAME = "MAILER-DAEMON"


def is_null_sender(address: str) -> bool:
    """`<>`, an empty address or MAILER-DAEMON mean the null sender (SPEC §4.0)."""
    return address.strip() in ("", "<>") or address.strip().lower() == "mailer-daemon"


# IDNA 2008 (RFC 5890-5892) as relays and resolvers apply it (UTS #46, non-transitional),
# not the stdlib `idna` codec: that is IDNA 2003, whose nameprep folds ß to ss, ς to a
# plain sigma and full-width letters to ASCII and drops soft hyphens and joiners, so
# straße.example would pass here for strasse.example while the next hop delivers to
# xn--strae-oqa.example, a domain of its own.
# RFC 5892 §2.1 LetterDigits: what a label may hold besides '-'.
_LETTER_DIGITS = frozenset({"Ll", "Lu", "Lo", "Lm", "Mn", "Mc", "Nd"})
# Letters and marks DISALLOWED all the same: RFC 5892 §2.6 exceptions, §2.3 default
# ignorables, §2.4 ignorable blocks, §2.9 old Hangul jamo. Left to re's cache, as above.
_DISALLOWED = (
    "[\u034f\u0640\u07fa\u1100-\u11ff\u17b4\u17b5\u180b-\u180f\u20d0-\u20ff"
    "\u302e\u302f\u3031-\u3035\u303b\u3164\ua960-\ua97f\ud7b0-\ud7ff\ufe00-\ufe0f"
    "\uffa0\U0001d100-\U0001d24f\U000e0100-\U000e01ef]"
)
# ß and ς are PVALID (RFC 5892 §2.6), and case folding would make them ss and a plain
# sigma: while a label is folded they stand as private-use code points, which no label
# may hold.
_HOLD = str.maketrans({"\u00df": "\ue000", "\u03c2": "\ue001"})
_RELEASE = str.maketrans({"\ue000": "\u00df", "\ue001": "\u03c2"})
_VIRAMA = 9  # the canonical combining class of a virama (RFC 5892 A.1, A.2)
# Hiragana, Katakana (but its middle dot) and Han (RFC 5892 A.7).
_JAPANESE = re.compile(
    "[\u3040-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0003134f]"
)
# Those stand-ins, and ẞ: DISALLOWED, and UTS #46 makes it ß, or ss when transitional.
_REFUSED = frozenset("\ue000\ue001\u1e9e")


def _a_label(label: str) -> str | None:
    """The A-label (lower case) of a non-ASCII label, or None when IDNA 2008 allows none.

    Case is folded as UTS #46 folds it (Ü to ü); a label that another mapping of UTS #46
    would change (full-width and compatibility forms, which it makes ASCII; ignorables,
    which it drops) is refused: taken as it is, it would be another domain here than at
    the next hop.
    """
    import unicodedata  # not for ASCII names: the sendmail path does without it

    if not _REFUSED.isdisjoint(label):
        return None
    held = label.translate(_HOLD)
    folded = unicodedata.normalize("NFC", held.casefold())
    if folded != unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", held).casefold()):
        return None
    u_label = folded.translate(_RELEASE)
    if (
        u_label.isascii()  # a spelling of an ASCII label, such as K (Kelvin sign) for k
        or u_label.startswith("-")
        or u_label.endswith("-")
        or u_label[2:4] == "--"  # RFC 5891 §4.2.3.1
        or unicodedata.category(u_label[0])[0] == "M"  # RFC 5891 §4.2.3.2
        or re.search(_DISALLOWED, u_label)
        or not all(
            c == "-" or unicodedata.category(c) in _LETTER_DIGITS or _in_context(u_label, i)
            for i, c in enumerate(u_label)
        )
        or _mixes_arabic_indic_digits(u_label)
    ):
        return None
    return "xn--" + u_label.encode("punycode").decode("ascii")


def _in_context(label: str, index: int) -> bool:
    """RFC 5892 Appendix A: a joiner or punctuation a label may hold where its rule holds
    (l·l in Catalan, a geresh after Hebrew, the katakana middle dot among Japanese).
    ZWNJ is taken after a virama only: its Arabic-script rule needs joining types, which
    the standard library does not know, so such a label is refused, never mistaken."""
    import unicodedata

    char = label[index]
    before = label[index - 1] if index else ""
    after = label[index + 1 : index + 2]
    if char in "\u200c\u200d":  # A.1, A.2
        return bool(before) and unicodedata.combining(before) == _VIRAMA
    if char == "\u00b7":  # A.3
        return before == "l" and after == "l"
    if char == "\u0375":  # A.4: the Greek lower numeral sign, before Greek
        return bool(after) and "\u0370" <= after <= "\u03ff"
    if char in "\u05f3\u05f4":  # A.5, A.6: geresh and gershayim, after Hebrew
        return bool(before) and "\u0590" <= before <= "\u05ff"
    if char == "\u30fb":  # A.7: katakana middle dot, with Hiragana, Katakana or Han
        return any(_JAPANESE.match(c) for c in label if c != "\u30fb")
    return False


def _mixes_arabic_indic_digits(label: str) -> bool:
    """RFC 5892 A.8, A.9: Arabic-Indic and extended Arabic-Indic digits never together."""
    return re.search("[\u0660-\u0669]", label) is not None and (
        re.search("[\u06f0-\u06f9]", label) is not None
    )


def _checked_a_label(label: str) -> bool:
    """Whether a lower-case `xn--` label is an A-label: the A-label of a valid U-label."""
    try:
        u_label = label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        return False
    return _a_label(u_label) == label


def ascii_domain(domain: str) -> str | None:
    """`domain` in lower-case ASCII with its non-ASCII labels as IDNA 2008 A-labels, or None
    when a label is valid in neither form (an `xn--` label must be a true A-label)."""
    labels = domain.split(".")
    for index, label in enumerate(labels):
        if label.isascii():
            label = label.lower()
            if label.startswith("xn--") and not _checked_a_label(label):
                return None
        else:
            a_label = _a_label(label)
            if a_label is None:
                return None
            label = a_label
        labels[index] = label
    return ".".join(labels)


def ascii_address(address: str) -> str | None:
    """`address` with its domain's non-ASCII labels as A-labels, for a server without
    SMTPUTF8 (RFC 6531 needs it only for a non-ASCII local part); None when the local
    part is not ASCII or the domain no valid IDN. The null sender stays ""."""
    local, domain = split_address(address)
    if not local.isascii():
        return None
    if not domain or domain.isascii():
        return address
    converted = ascii_domain(domain)
    return None if converted is None else f"{local}@{converted}"


def domain_key(domain: str) -> str:
    """The form domains are compared in: lower-case ASCII, IDNA 2008 A-labels for non-ASCII
    labels; a non-ASCII name IDNA 2008 refuses is its own key, equal to no valid name's."""
    if domain.isascii():
        return domain.lower().rstrip(".")
    ascii_name = ascii_domain(domain) if len(domain) <= MAX_DOMAIN + 1 else None
    return domain if ascii_name is None else ascii_name.rstrip(".")


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
    # An A-label is never shorter than its U-label: a name this long needs no converting.
    if len(domain.rstrip(".")) > MAX_DOMAIN:
        return f"the domain is longer than {MAX_DOMAIN} octets"
    ascii_name = domain
    if not domain.isascii() or ("--" in domain and "xn--" in domain.lower()):
        converted = ascii_domain(domain)
        if converted is None:
            return f"{domain!r} is not a valid internationalized domain name (IDNA 2008)"
        ascii_name = converted
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
