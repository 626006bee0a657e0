"""The INI dialect of seed 004, read with the line number of every section and key."""

from __future__ import annotations

from ssmtp_mailer.config.model import Location

SECTION_KINDS = ("global", "domain", "user", "mapping")

# `#` or `;` after whitespace starts an inline comment (the whitespace goes with it).
_INLINE_COMMENT = (" #", "\t#", " ;", "\t;")


class RawSection:
    """One `[kind:name]` section: its values as written and the line of each key.

    Lines are kept as numbers and turned into a Location only when a message needs one:
    a large tree has tens of thousands of values and almost never a problem with them.
    """

    __slots__ = ("kind", "lines", "location", "name", "values")

    def __init__(self, kind: str, name: str, location: Location) -> None:
        self.kind = kind
        self.name = name
        self.location = location
        self.values: dict[str, str] = {}
        self.lines: dict[str, int] = {}

    def location_of(self, key: str) -> Location:
        """Where `key` is set in this section."""
        return Location(self.location.path, self.lines[key])


def _strip_inline_comment(value: str) -> str:
    """`#` or `;` start a comment after whitespace; a double-quoted value keeps both."""
    if value.startswith('"'):
        end = _closing_quote(value)
        if end is not None:
            rest = value[end + 1 :]
            if not rest.strip() or (rest[0].isspace() and rest.lstrip()[0] in "#;"):
                return value[: end + 1]
            return value
    starts = [i for i in map(value.find, _INLINE_COMMENT) if i >= 0]
    return value[: min(starts)].rstrip() if starts else value


def _closing_quote(value: str) -> int | None:
    i = 1
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == '"':
            return i
        i += 1
    return None


def unquote(value: str) -> str:
    """A `"..."` value with JSON escapes becomes its content; anything else is kept."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        decoded = _json_string(value[1:-1])
        return value[1:-1] if decoded is None else decoded
    return value


# RFC 8259 §7. The string alone, without the json module: the sendmail path reads quoted
# values (passwords) and needs none of json's number, object or encoder machinery.
_JSON_ESCAPES = {
    '"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
}  # fmt: skip
_HEX = frozenset("0123456789abcdefABCDEF")


def _json_string(body: str) -> str | None:
    """What the JSON string `"body"` stands for (as json.loads reads it), or None if invalid."""
    out: list[str] = []
    at = 0
    while True:
        slash = body.find("\\", at)
        plain = body[at:] if slash < 0 else body[at:slash]
        if '"' in plain or (plain and min(plain) < " "):  # both must be escaped
            return None
        out.append(plain)
        if slash < 0:
            return "".join(out)
        kind = body[slash + 1 : slash + 2]
        if kind in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[kind])
            at = slash + 2
            continue
        code = _hex4(body, slash + 1)
        if code is None:
            return None
        at = slash + 6
        if 0xD800 <= code < 0xDC00:  # a UTF-16 surrogate pair is one character
            low = _hex4(body, at + 1) if body.startswith("\\u", at) else None
            if low is not None and 0xDC00 <= low < 0xE000:
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                at += 6
        out.append(chr(code))


def _hex4(body: str, at: int) -> int | None:
    """The code of `uXXXX` at `at`, or None."""
    digits = body[at + 1 : at + 5]
    if body[at : at + 1] != "u" or len(digits) != 4 or not _HEX.issuperset(digits):
        return None
    return int(digits, 16)


def parse_ini(text: str, path: str, problems: list[str]) -> list[RawSection]:
    """Sections in file order; every problem is appended as `file:line: why`."""
    sections: list[RawSection] = []
    current: RawSection | None = None
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            current = _section_header(line, Location(path, number), problems)
            if current is not None:
                sections.append(current)
                values, lines = current.values, current.lines
            continue
        key, sep, value = line.partition("=")
        key = key.rstrip().lower()
        # isidentifier() is the common shape (`smtp_port`) and implies non-empty, no spaces.
        if not sep or not (key.isidentifier() or (key and not any(c.isspace() for c in key))):
            # Only the first word is shown: the rest may be a secret (msmtp's `password x`).
            first = line.split(None, 1)[0][:40]
            problems.append(
                f"{path}:{number}: expected 'key = value' or '[section]',"
                f" got a line starting {first!r}"
            )
            continue
        if current is None:
            problems.append(
                f"{path}:{number}: {key}: key outside any section (add [global] above it)"
            )
            continue
        if key in values:
            problems.append(
                f"{path}:{number}: {key}: set twice in one section (first at {path}:{lines[key]})"
            )
            continue
        value = value.lstrip()
        if value[:1] == '"' or "#" in value or ";" in value:
            value = _strip_inline_comment(value)
        if value[:1] == '"' and _closing_quote(value) not in (None, len(value) - 1):
            # Not dropped: `"a.example" extra words` would load as a.example.
            problems.append(
                f"{path}:{number}: {key}: text after the closing quote (put it inside the"
                " quotes, or start a comment with ' #')"
            )
            continue
        values[key] = value
        lines[key] = number
    return sections


def _section_header(line: str, where: Location, problems: list[str]) -> RawSection | None:
    body = _strip_inline_comment(line) if "#" in line or ";" in line else line
    if not body.endswith("]"):
        problems.append(f"{where}: section header without closing ']': {line[:60]!r}")
        return None
    inner = body[1:-1].strip()
    kind, sep, name = inner.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if kind == "global":
        if sep:
            problems.append(f"{where}: [global] takes no name")
        return RawSection("global", "", where)
    if kind not in SECTION_KINDS:
        problems.append(
            f"{where}: unknown section [{inner}] (expected [global], [domain:NAME],"
            " [user:ADDRESS] or [mapping:NAME])"
        )
        return RawSection("unknown", inner, where)
    if not name:
        problems.append(f"{where}: section [{inner}] has no name (expected [{kind}:NAME])")
        return RawSection("unknown", inner, where)
    return RawSection(kind, name, where)
