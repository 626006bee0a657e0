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
            return value[: end + 1]
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
        import json  # quoted values are rare: most sends never load json

        try:
            decoded = json.loads(value)
        except ValueError:
            return value[1:-1]
        if isinstance(decoded, str):
            return decoded
    return value


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
