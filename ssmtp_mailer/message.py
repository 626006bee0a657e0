"""Bytes in, a prepared message and its envelope out (SPEC §5); pure: no network, no disk."""

import functools
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from ssmtp_mailer.addresses import (
    NULL_SENDER_NAME,
    address_key,
    address_problem,
    has_domain,
    is_null_sender,
    qualify,
)
from ssmtp_mailer.errors import DataError, UsageError, shorten

if TYPE_CHECKING:
    from ssmtp_mailer.rewrite import Plan, RouteGroup

CRLF = b"\r\n"
# RFC 5322 §2.1.1: a line is at most 998 octets, CRLF excluded.
MAX_LINE = 998

# A header field name is printable ASCII without the colon; obsolete syntax allows WSP before it.
_FIELD_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")
# A body line over 998 octets: 999 octets plus its CR is 1000 characters that are not LF.
# Anchored on the LF before it, so the regex engine jumps from line to line instead of
# trying every offset; the body's first line is checked apart.
_LONG_LINE_RE = re.compile(rb"\n[^\n]{%d}" % (MAX_LINE + 2))
# Address headers whose bare local names are qualified (SPEC §4.1).
QUALIFIED_HEADERS = frozenset({"from", "to", "cc", "resent-from", "resent-to", "resent-cc"})
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# -- addresses -----------------------------------------------------------------------


class Mailbox(NamedTuple):
    """One mailbox of an address list; start:end is the addr-spec's span in the parsed text."""

    name: str
    address: str
    start: int
    end: int


class _Token(NamedTuple):
    kind: str  # "atom", "qs" (quoted string), "dl" (domain literal), "ws", "comment", or a special
    text: str
    start: int
    end: int


_SPECIALS = "<>,:;"
# One atom (what _tokenize reads up to white space, a comment, a quote or a special)
# between optional white space.
_BARE_ADDRESS = re.compile(r'[ \t\r\n]*([^ \t\r\n()"\[<>,:;]+)[ \t\r\n]*')


def _tokenize(text: str) -> list[_Token]:
    """RFC 5322 lexical tokens; unterminated quotes and comments run to the end, never raise."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        start = i
        if c in " \t\r\n":
            while i < n and text[i] in " \t\r\n":
                i += 1
            tokens.append(_Token("ws", text[start:i], start, i))
        elif c == "(":
            depth = 0
            while i < n:
                ch = text[i]
                if ch == "\\":
                    i += 2
                    continue
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
            i = min(i, n)
            tokens.append(_Token("comment", text[start:i], start, i))
        elif c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
            i = min(i + 1, n)
            tokens.append(_Token("qs" if c == '"' else "dl", text[start:i], start, i))
        elif c in _SPECIALS:
            i += 1
            tokens.append(_Token(c, c, start, i))
        else:
            # At least one character: a stray ")" starts an atom of its own.
            i += 1
            while i < n and text[i] not in ' \t\r\n()"[' and text[i] not in _SPECIALS:
                i += 1
            tokens.append(_Token("atom", text[start:i], start, i))
    return tokens


def _addr_from(tokens: Sequence[_Token], fallback: int) -> tuple[str, int, int]:
    """The addr-spec spelled by tokens (CFWS dropped) and its span."""
    words = [t for t in tokens if t.kind in ("atom", "qs", "dl")]
    if not words:
        return "", fallback, fallback
    parts: list[str] = []
    previous: _Token | None = None
    for token in tokens:
        if token.kind not in ("atom", "qs", "dl"):
            continue
        # Whitespace between two words is only legal next to "." or "@"; keep a space
        # otherwise so that validation refuses "john doe@x" instead of merging it.
        if (
            previous is not None
            and previous.end != token.start
            and not (previous.text[-1:] in ".@" or token.text[:1] in ".@")
        ):
            parts.append(" ")
        parts.append(token.text)
        previous = token
    return "".join(parts), words[0].start, words[-1].end


def _phrase(tokens: Sequence[_Token]) -> str:
    words = [t.text for t in tokens if t.kind in ("atom", "qs")]
    return " ".join(w[1:-1] if w.startswith('"') and w.endswith('"') else w for w in words)


def _mailbox(tokens: list[_Token]) -> Mailbox | None:
    if not any(t.kind not in ("ws", "comment") for t in tokens):
        return None
    opens = [k for k, t in enumerate(tokens) if t.kind == "<"]
    if opens:
        first = opens[0]
        closing = (k for k in range(first + 1, len(tokens)) if tokens[k].kind == ">")
        close = next(closing, len(tokens))
        inner = tokens[first + 1 : close]
        # Obsolete source route <@a,@b:user@x>: the address follows the last colon.
        colons = [k for k, t in enumerate(inner) if t.kind == ":"]
        if colons:
            inner = inner[colons[-1] + 1 :]
        inner = [t for t in inner if t.kind not in (",", "<")]
        address, start, end = _addr_from(inner, tokens[first].end)
        return Mailbox(_phrase(tokens[:first]), address, start, end)
    address, start, end = _addr_from(tokens, tokens[0].start)
    comments = [t.text[1:-1].strip() for t in tokens if t.kind == "comment"]
    return Mailbox(" ".join(c for c in comments if c), address, start, end)


def parse_addresses(text: str) -> list[Mailbox]:
    """Every mailbox in an RFC 5322 address list (groups, comments, quoted names, routes)."""
    bare = _BARE_ADDRESS.fullmatch(text)
    if bare is not None:
        # Most fields and every envelope address: one atom, which is what the tokens say too.
        return [Mailbox("", bare.group(1), bare.start(1), bare.end(1))]
    return _parse_address_list(text)


def _parse_address_list(text: str) -> list[Mailbox]:
    found: list[Mailbox] = []
    current: list[_Token] = []
    in_angle = False
    for token in _tokenize(text):
        kind = token.kind
        if kind == "<":
            in_angle = True
        elif kind == ">":
            in_angle = False
        elif not in_angle and kind in (",", ";"):
            box = _mailbox(current)
            if box is not None:
                found.append(box)
            current = []
            continue
        elif not in_angle and kind == ":":
            # "name:" opens a group; the words before it are the group's name, not a mailbox.
            current = []
            continue
        current.append(token)
    box = _mailbox(current)
    if box is not None:
        found.append(box)
    return found


def split_recipients(values: Iterable[str]) -> list[str]:
    """The addresses in command-line recipient arguments (each may be a list `a@x, B <b@x>`)."""
    out: list[str] = []
    for value in values:
        out.extend(box.address for box in parse_addresses(value) if box.address)
    return out


def format_mailbox(name: str | None, address: str) -> str:
    """`Name <address>`, the name quoted or RFC 2047-encoded as needed."""
    if not name:
        return address
    # Command-line bytes that are not UTF-8 arrive as surrogates; show them as U+FFFD.
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if name.isascii():
        if re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\- ]+", name):
            return f"{name} <{address}>"
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{address}>'
    from email.charset import Charset

    # RFC 2047 §2: an encoded word is at most 75 characters; split longer names into several.
    charset = Charset("utf-8")
    words: list[str] = []
    chunk = ""
    for char in name:
        if len((chunk + char).encode("utf-8")) > 45:
            words.append(charset.header_encode(chunk))
            chunk = ""
        chunk += char
    words.append(charset.header_encode(chunk))
    return f"{' '.join(words)} <{address}>"


# -- header fields -------------------------------------------------------------------


class HeaderField(NamedTuple):
    """One header field as its original bytes: physical lines joined by CRLF, no final CRLF."""

    name: str
    raw: bytes
    line: int  # first line's number in the input, 1-based

    @property
    def key(self) -> str:
        return self.name.lower()

    def value(self) -> str:
        """The field body after the colon, undecoded bytes kept as surrogates."""
        return self.raw.split(b":", 1)[1].decode("utf-8", "surrogateescape")

    def with_value(self, value: str) -> "HeaderField":
        head = self.raw.split(b":", 1)[0]
        raw = head + b":" + value.encode("utf-8", "surrogateescape")
        return HeaderField(self.name, raw, self.line)


def _parse_header(data: bytes | bytearray, first_line: int) -> tuple[list[HeaderField], int, bool]:
    """Header fields of CRLF data, the offset where the body starts, and whether a blank line
    separated them (a line that is neither a field nor a continuation ends the header)."""
    fields: list[HeaderField] = []
    pos, n, line = 0, len(data), first_line
    view = memoryview(data)
    while pos < n:
        end = data.find(CRLF, pos)
        if end < 0:
            end = n
        text = bytes(view[pos:end])
        if not text:
            return fields, min(end + 2, n), True
        if text[:1] in (b" ", b"\t") and fields:
            last = fields[-1]
            fields[-1] = HeaderField(last.name, last.raw + CRLF + text, last.line)
        else:
            match = _FIELD_RE.match(text)
            if match is None:
                return fields, pos, False
            fields.append(HeaderField(match.group(1).decode("ascii"), text, line))
        pos = end + 2
        line += 1
    return fields, n, False


def _fold(field: HeaderField) -> HeaderField:
    """Fold physical lines over 998 octets at whitespace (RFC 5322 §2.2.3); in an address
    list without any (`a@x,b@y,…`, as programs join them), after a comma between addresses,
    where a space changes nothing."""
    if len(field.raw) <= MAX_LINE:
        return field
    lines = field.raw.split(CRLF)
    if all(len(x) <= MAX_LINE for x in lines):
        return field
    out: list[bytes] = []
    for index, text in enumerate(lines):
        floor = len(field.name) + 1 if index == 0 else 1
        while len(text) > MAX_LINE:
            cut = max(text.rfind(b" ", floor, MAX_LINE + 1), text.rfind(b"\t", floor, MAX_LINE + 1))
            if cut <= floor - 1 or not text[:cut].strip(b" \t"):
                commas = _list_commas(text, floor) if field.key in ADDRESS_LISTS else []
                after = [c for c in commas if c <= MAX_LINE]
                if not after:
                    raise DataError(
                        f"header {field.name} (line {field.line})",
                        f"a line is over {MAX_LINE} octets with no whitespace to fold it at",
                    )
                out.append(text[: after[-1]])
                text = b" " + text[after[-1] :]
            else:
                out.append(text[:cut])
                text = text[cut:]
            floor = 1
        out.append(text)
    return HeaderField(field.name, CRLF.join(out), field.line)


# Fields holding address lists, which may be folded after a comma (RFC 5322 §3.6.2, §3.6.3).
ADDRESS_LISTS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "resent-from", "resent-to", "resent-cc"}
)


def _list_commas(text: bytes, start: int) -> list[int]:
    """The offsets just after each comma of `text` that separates addresses: outside quoted
    strings, comments and angle brackets."""
    found: list[int] = []
    quoted = escaped = False
    depth = angle = 0
    for offset in range(start, len(text)):
        char = text[offset : offset + 1]
        if escaped:
            escaped = False
        elif char == b"\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != b'"'
        elif char == b'"':
            quoted = True
        elif char == b"(":
            depth += 1
        elif char == b")" and depth:
            depth -= 1
        elif depth:
            continue
        elif char == b"<":
            angle += 1
        elif char == b">" and angle:
            angle -= 1
        elif char == b"," and not angle:
            found.append(offset + 1)
    return found


def _rewrite_addresses(
    field: HeaderField, change: Mapping[int, str] | None, mapper: "_AddressMapper"
) -> HeaderField:
    """Replace addr-specs in the field (by index in `change`, or through `mapper`) in place."""
    value = field.value()
    boxes = parse_addresses(value)
    pieces: list[str] = []
    last = 0
    changed = False
    for index, box in enumerate(boxes):
        new = change.get(index) if change is not None else None
        if new is None:
            new = mapper(box.address)
        if new is None or new == box.address:
            continue
        pieces.append(value[last : box.start])
        pieces.append(new)
        last = box.end
        changed = True
    if not changed:
        return field
    pieces.append(value[last:])
    return _fold(field.with_value("".join(pieces)))


class _AddressMapper:
    """Maps a header address to its replacement or None; compares case-insensitively."""

    def __init__(self, rewrites: Mapping[str, str], hostname: str | None) -> None:
        self.rewrites = {k.lower(): v for k, v in rewrites.items()}
        self.hostname = hostname

    def __call__(self, address: str) -> str | None:
        if not address:
            return None
        if self.hostname is not None and not has_domain(address):
            address = f"{address}@{self.hostname}"
            return self.rewrites.get(address.lower(), address)
        return self.rewrites.get(address.lower())


# -- preparation ---------------------------------------------------------------------


class Dsn(NamedTuple):
    """What a sender asked of delivery status notifications (RFC 3461): -N, -R, -V, and
    the ORCPT an SMTP client gave each recipient."""

    notify: str | None = None  # "NEVER" or a comma list of SUCCESS, FAILURE, DELAY
    ret: str | None = None  # FULL or HDRS
    envid: str | None = None
    # (recipient as delivered, ORCPT as the client sent it: addr-type;xtext). RFC 3461
    # §6.2.1 has a relaying MTA pass each one on unchanged.
    orcpt: tuple[tuple[str, str], ...] = ()

    def flags(self) -> dict[str, str]:
        """notify, ret and envid, those given (the maildrop's and the spool's record)."""
        given = {"notify": self.notify, "ret": self.ret, "envid": self.envid}
        return {k: v for k, v in given.items() if v is not None}

    def mail_options(self) -> list[str]:
        options = [f"RET={self.ret}"] if self.ret else []
        if self.envid:
            options.append(f"ENVID={xtext(self.envid)}")
        return options

    def rcpt_options(self, recipient: str | None = None) -> list[str]:
        options = [f"NOTIFY={self.notify}"] if self.notify else []
        original = self.original_recipient(recipient) if recipient is not None else None
        if original is not None:
            options.append(f"ORCPT={original}")
        return options

    def original_recipient(self, recipient: str) -> str | None:
        """The ORCPT given for `recipient` (its domain compared without case), or None."""
        key = address_key(recipient)
        return next((v for r, v in self.orcpt if address_key(r) == key), None)

    def renamed(self, finals: Mapping[str, str]) -> "Dsn":
        """The same request once mappings rewrote recipients (`finals`: given -> final)."""
        if not self.orcpt or not finals:
            return self
        final_of = {address_key(given): final for given, final in finals.items()}
        return self._replace(
            orcpt=tuple((final_of.get(address_key(r), r), v) for r, v in self.orcpt)
        )


_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ENVID = range(1, 101)  # RFC 3461 §4.4: at most 100 characters


def xtext(text: str) -> str:
    """RFC 3461 §4: `+XX` for '+', '=', controls and anything beyond printable ASCII."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


# RFC 3461 §4: xchar is "!" to "~" except "+" and "="; hexchar is "+" and two hex digits.
_XTEXT_RE = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")


def unxtext(text: str) -> str | None:
    """The text an RFC 3461 xtext spells, or None when `text` is not xtext."""
    if not _XTEXT_RE.fullmatch(text):
        return None
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def parse_dsn(notify: str | None, ret: str | None, envid: str | None) -> Dsn | None:
    """The sendmail flags -N, -R and -V as a Dsn, or None; UsageError names a bad value."""
    if notify is None and ret is None and envid is None:
        return None
    if notify is not None:
        words = [w.strip().upper() for w in notify.split(",")]
        if words != ["NEVER"] and not (words and set(words) <= _NOTIFY_WORDS):
            raise UsageError(
                f"-N {shorten(notify)}",
                "expected never, or a comma list of success, failure and delay",
            )
        notify = ",".join(dict.fromkeys(words))
    if ret is not None:
        ret = ret.strip().upper()
        if ret not in ("FULL", "HDRS"):
            raise UsageError(f"-R {shorten(ret)}", "expected full or hdrs")
    if envid is not None and not (envid.isascii() and envid.isprintable() and len(envid) in _ENVID):
        raise UsageError(f"-V {shorten(envid)}", "expected 1 to 100 printable ASCII characters")
    return Dsn(notify, ret, envid)


class Intake(NamedTuple):
    """What the caller (sendmail flags, -bs envelope, `send` options) says about a message."""

    recipients: tuple[str, ...] = ()
    envelope_from: str | None = None
    full_name: str | None = None
    extract_recipients: bool = False
    dot_ends_input: bool = False
    dsn: Dsn | None = None


class PreparedMessage(NamedTuple):
    """The message ready for routing: envelope, final bytes (CRLF, not dot-stuffed), flags."""

    sender: str
    recipients: tuple[str, ...]
    data: bytearray
    eightbit: bool
    smtputf8: bool
    message_id: str
    dsn: Dsn | None = None


def _lone_dot(data: bytes | bytearray) -> int:
    """Where the first line that is a single `.` begins (it may be the unterminated last), or -1."""
    at = 0
    while True:
        if data.startswith(b".", at):
            after = data[at + 1 : at + 3]
            if after in (b"", b"\r") or after.startswith((b"\n", b"\r\n")):
                return at
        newline = data.find(b"\n.", at)
        if newline < 0:
            return -1
        at = newline + 1


def truncate_at_lone_dot(raw: bytes) -> bytes:
    """Input up to (not including) the first line that is a single `.` (sendmail without -i)."""
    cut = _lone_dot(raw)
    return raw if cut < 0 else raw[:cut]


def _line_of(data: bytes | bytearray, offset: int, first_line: int) -> int:
    return first_line + data.count(b"\n", 0, offset)


if TYPE_CHECKING:
    _Bytes = TypeVar("_Bytes", bytes, bytearray)


_CRS_BEFORE_LF = re.compile(b"\r+\n")
_HEADER_END = re.compile(b"(?:\\A|\n)\\.?\r*\n")  # an empty line, or a `.` one (-bm's end)
_LONE_CRS = re.compile(b"\r+(?=[^\r\n])")
_CR_BLANK_LINE = re.compile(b"\r\r(?!\n)")  # an old Mac's header end


def header_end(raw: "_Bytes", start: int = 0) -> int:
    """Where the header of input with LF line ends ends, just past its first empty line
    (or `.` line) at or after `start`; -1 when that is not in `raw` yet."""
    found = _HEADER_END.search(raw, start)
    return -1 if found is None else found.end()


def _lf_input(head: "_Bytes") -> bool:
    """Whether input beginning with `head` ends its lines in LF: an LF comes before any
    CR-ended empty line (an old Mac's input with one final LF is still a Mac's)."""
    first_lf = head.find(b"\n")
    cr_blank = _CR_BLANK_LINE.search(head)
    return first_lf >= 0 and (cr_blank is None or first_lf < cr_blank.start())


def crlf_lines(chunk: "_Bytes", *, header: bool = False) -> "_Bytes":
    """LF, CRLF, a bare CR or a mix of them become CRLF; `header`: the chunk is where the
    message begins, with its whole header unless the input ended sooner.

    RFC 5321 §2.3.8 forbids a bare CR on the wire, and a lone CR ended lines on old Macs:
    it is a line end too, except in the header of input whose lines end in LF. There it
    is a space, as Postfix and msmtp keep it one field: a web form's `a<CR>Bcc: b` pasted
    into Subject must not become a field that -t sends a copy to.
    CRs before an LF are one line end with it: CR CR LF is a CRLF converted once more on
    its way (a text-mode write), and as two line ends it made the first header field's end
    a blank line, moving the rest of the header into the body.
    For input read in pieces, the caller keeps a piece's trailing CRs for the next one,
    so that a line end split between pieces stays one.
    """
    crlfs = chunk.count(CRLF)
    if chunk.count(b"\n") == crlfs == chunk.count(b"\r"):
        return chunk
    if header and _lf_input(chunk):
        end = header_end(chunk)
        end = len(chunk) if end < 0 else end
        chunk = type(chunk)(_LONE_CRS.sub(b" ", chunk[:end]) + chunk[end:])
    if b"\r\r\n" in chunk:
        chunk = type(chunk)(_CRS_BEFORE_LF.sub(CRLF, chunk))  # in one pass, however many
    return chunk.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def lone_dot_line(data: bytes | bytearray, start: int = 0) -> int:
    """Where the first complete `.` line at or after `start` begins in CRLF data, or -1."""
    if start == 0 and data.startswith(b".\r\n"):
        return 0
    found = data.find(b"\n.\r\n", start)
    return -1 if found < 0 else found + 1


def _long_line(data: bytes | bytearray, start: int) -> int:
    """Where the first line over MAX_LINE octets at or after `start` begins, or -1."""
    first_end = data.find(b"\n", start)
    if (len(data) if first_end < 0 else first_end) - start > MAX_LINE + 1:
        return start
    found = _LONG_LINE_RE.search(data, start)
    return -1 if found is None else found.start() + 1


def _to_crlf(data: bytearray) -> bytearray:
    """`data` with CRLF line endings and a final CRLF; reused when it already has them."""
    data = crlf_lines(data, header=True)
    if data and not data.endswith(CRLF):
        data += CRLF
    return data


def format_date(now: float) -> str:
    """RFC 5322 date in local time, independent of the locale."""
    return _format_second(math.floor(now))


# A message's Received and Date fields, and a busy listener's next messages, fall in the
# same second: localtime() and the formatting cost more than the rest of the header.
@functools.lru_cache(maxsize=2)
def _format_second(second: int) -> str:
    t = time.localtime(second)
    offset = t.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


def make_message_id(hostname: str, now: float) -> str:
    """A unique Message-ID in the domain `hostname`."""
    stamp = f"{int(now * 1000):x}"
    return f"<{stamp}.{os.urandom(8).hex()}@{hostname}>"


def _new_field(name: str, value: str) -> HeaderField:
    return _fold(HeaderField(name, f"{name}: {value}".encode("utf-8", "surrogateescape"), 0))


def _addresses_of(fields: Iterable[HeaderField], names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [
        box.address
        for field in fields
        if field.key in wanted
        for box in parse_addresses(field.value())
        if box.address
    ]


# Where bare names stay bare (prepare's hostname None), they are checked as if at this.
_STAND_IN = "localhost"


def _qualified(address: str, hostname: str | None) -> str:
    return address if hostname is None else qualify(address, hostname)


def _problem(address: str, hostname: str | None) -> str | None:
    """Why `address`, qualified as prepare() qualifies it, is no envelope address."""
    return address_problem(qualify(address, hostname or _STAND_IN))


def _check_address(address: str, where: str, *, usage: bool, hostname: str | None = None) -> None:
    problem = _problem(address, hostname)
    if problem is not None:
        error = UsageError if usage else DataError
        raise error(f"{where} address {address!r}", problem)


def prepare(
    raw: bytes | bytearray,
    intake: Intake,
    *,
    hostname: str | None,
    default_from: str,
    max_size: int,
    now: float | None = None,
) -> PreparedMessage:
    """Check and complete a message read from a program; raise DataError or UsageError.

    `hostname` None (a user who cannot read the configuration, submitting): bare names
    stay bare and no Message-ID is made, for the listener or the pickup to complete with
    the configured default_hostname, as Postfix's cleanup does for postdrop's files.

    A bytearray is taken over and becomes the prepared message's buffer, so a large message
    is held once, not copied at every step; bytes are copied into a new buffer.
    """
    now = time.time() if now is None else now
    data = raw if isinstance(raw, bytearray) else bytearray(raw)
    del raw
    first_line = 1
    if data.startswith(b"From "):
        # An mbox separator line, not a header (mailers that write mbox format pass it on).
        cut = data.find(b"\n")
        del data[: len(data) if cut < 0 else cut + 1]
        first_line = 2
    if intake.dot_ends_input:
        cut = _lone_dot(data)
        if cut >= 0:
            del data[cut:]
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError("message", f"line {_line_of(data, nul, first_line)} contains a NUL byte")
    data = _to_crlf(data)
    # The limit is on what the sender gave, as SMTP's SIZE counts it (CR LF line ends, as
    # `sendmail` reads them too): what is added here, a Date or Message-ID, does not count.
    if len(data) > max_size:
        raise DataError("message", f"{len(data)} octets, over max_message_size ({max_size} octets)")
    fields, body_start, _ = _parse_header(data, first_line)
    long_line = _long_line(data, body_start)
    if long_line >= 0:
        number = _line_of(data, long_line, first_line)
        raise DataError(
            "message",
            f"line {number} is over {MAX_LINE} octets (RFC 5322 limit); "
            "encode the body (base64 or quoted-printable)",
        )

    # Recipients: the command line's, plus the header's with -t (SPEC §5).
    candidates = [_qualified(a, hostname) for a in split_recipients(intake.recipients)]
    for address in candidates:
        _check_address(address, "recipient", usage=True, hostname=hostname)
    if intake.extract_recipients:
        resent = any(f.key.startswith("resent-") for f in fields)
        names = ("resent-to", "resent-cc", "resent-bcc") if resent else ("to", "cc", "bcc")
        extracted = [_qualified(a, hostname) for a in _addresses_of(fields, names)]
        for address in extracted:
            _check_address(address, "header", usage=False, hostname=hostname)
        candidates.extend(extracted)
    recipients: list[str] = []
    seen: set[str] = set()
    for address in candidates:
        if address.lower() not in seen:
            seen.add(address.lower())
            recipients.append(address)
    if not recipients:
        hint = "give recipients as arguments, or use -t to read them from To/Cc/Bcc"
        raise UsageError("message", "no recipients", hint=hint)

    # Envelope sender (SPEC §4.0).
    if intake.envelope_from is not None:
        sender = "" if is_null_sender(intake.envelope_from) else intake.envelope_from
        boxes = parse_addresses(sender)
        if sender and len(boxes) != 1:
            raise UsageError("-f", "give exactly one sender address")
        sender = _qualified(boxes[0].address if boxes else sender, hostname)
        if sender:
            _check_address(sender, "sender", usage=True, hostname=hostname)
    header_from = _addresses_of(fields, ("from",))
    usable_from = bool(header_from) and (
        is_null_sender(header_from[0]) or _problem(header_from[0], hostname) is None
    )
    if intake.envelope_from is None:
        if usable_from:
            sender = "" if is_null_sender(header_from[0]) else _qualified(header_from[0], hostname)
        else:
            # No From, or one with no usable address (`From: Backup Script`): like ssmtp and
            # msmtp, the message still goes, from default_from.
            sender = _qualified(default_from, hostname)

    # Header fixes, touching only the fields concerned.
    mapper = _AddressMapper({}, hostname)
    kept: list[HeaderField] = []
    # A message from the null sender with no From is the system's (a bounce), not the
    # account running us: an outsider's `MAIL FROM:<>` was From: mail@ (listen_user).
    if sender:
        author = sender
    elif intake.envelope_from is not None and is_null_sender(intake.envelope_from):
        author = _qualified(NULL_SENDER_NAME, hostname)
    else:
        author = _qualified(default_from, hostname)
    for field in fields:
        key = field.key
        if key in ("bcc", "resent-bcc"):
            continue
        if key in ("from", "date", "message-id") and not field.value().strip():
            continue  # `From:` with nothing after it (PHP's empty $from): ours instead
        if key == "from" and not usable_from:
            # A name and no address (`From: Backup Script`): the name, with the sender's
            # address; qualified as it stands it would be `Backup Script@host`.
            name = " ".join(field.value().split())
            field = _new_field("From", format_mailbox(name, author))
        elif key in QUALIFIED_HEADERS:
            field = _rewrite_addresses(field, None, mapper)
        kept.append(_fold(field))
    keys = {f.key for f in kept}
    if "from" not in keys:
        kept.append(_new_field("From", format_mailbox(intake.full_name, author)))
    if "date" not in keys:
        kept.append(_new_field("Date", format_date(now)))
    message_id = next((f.value().strip() for f in kept if f.key == "message-id"), "")
    if not message_id and hostname is not None:
        message_id = make_message_id(hostname, now)
        kept.append(_new_field("Message-ID", message_id))

    # The new header replaces the old in the same buffer (a memmove, not a second copy of the
    # body). prepare() always writes the blank line, even where the input had none, as
    # sendmail does.
    data[:body_start] = b"".join(f.raw + CRLF for f in kept) + CRLF
    eightbit = not data.isascii()
    addresses = [sender, *recipients]
    if eightbit:  # else no address in the header can be non-ASCII either
        addresses += _addresses_of(kept, ("from", "to", "cc"))
    return PreparedMessage(
        sender=sender,
        recipients=tuple(recipients),
        data=data,
        eightbit=eightbit,
        smtputf8=not all(a.isascii() for a in addresses),
        message_id=message_id,
        dsn=intake.dsn,
    )


def apply_group_headers(
    prepared_or_bytes: PreparedMessage | bytes | bytearray,
    plan: "Plan",
    group: "RouteGroup",
    *,
    in_place: bool = False,
) -> bytes | bytearray:
    """Apply the plan's header rewrites and the group's From/Reply-To, touching only those
    header lines; every other byte is returned as it was.

    With `in_place`, a prepared message's buffer gets the new header itself instead of a
    copy being made: for the last group of a submission, when nothing reads the old one again.
    """
    data = (
        prepared_or_bytes.data
        if isinstance(prepared_or_bytes, PreparedMessage)
        else prepared_or_bytes
    )
    if not plan.address_rewrites and group.header_from is None and group.reply_to is None:
        return data
    fields, body_start, separated = _parse_header(data, 1)
    mapper = _AddressMapper(plan.address_rewrites, None)
    out: list[HeaderField] = []
    from_done = False
    # SPEC §4.5: the author's own Reply-To survives; ours goes in only when there is none.
    add_reply_to = group.reply_to is not None and not any(f.key == "reply-to" for f in fields)
    for field in fields:
        if field.key in QUALIFIED_HEADERS:
            change = {0: group.header_from} if group.header_from and field.key == "from" else None
            if field.key == "from" and from_done:
                change = None
            field = _rewrite_addresses(field, change, mapper)
            from_done = from_done or field.key == "from"
        out.append(field)
    if add_reply_to:
        assert group.reply_to is not None
        out.append(_new_field("Reply-To", group.reply_to))
    header = b"".join(f.raw + CRLF for f in out)
    separator = CRLF if separated else b""
    if not separated and body_start < len(data):
        separator = CRLF
    if in_place and isinstance(data, bytearray):
        try:
            data[:body_start] = header + separator
            return data
        except BufferError:
            # A view of the buffer is still alive (an earlier group's failure keeps the
            # frame that streamed it): the buffer cannot be resized, so copy after all.
            pass
    return b"".join((header, separator, memoryview(data)[body_start:]))
