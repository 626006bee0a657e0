"""The INI dialect of seed 004, read with the line number of every section and key."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ssmtp_mailer.config.model import Location

SECTION_KINDS = ("global", "domain", "user", "mapping")


@dataclass
class RawValue:
    text: str
    location: Location


@dataclass
class RawSection:
    kind: str
    name: str
    location: Location
    values: dict[str, RawValue] = field(default_factory=dict)


def _strip_inline_comment(value: str) -> str:
    """`#` or `;` start a comment after whitespace; a double-quoted value keeps both."""
    if value.startswith('"'):
        end = _closing_quote(value)
        if end is not None:
            return value[: end + 1]
    for i, ch in enumerate(value):
        if ch in "#;" and i > 0 and value[i - 1] in " \t":
            return value[:i].rstrip()
    return value


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
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, raw_line in enumerate(text.splitlines(), start=1):
        where = Location(path, number)
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = _section_header(line, where, problems)
            if current is not None:
                sections.append(current)
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or not key or any(c.isspace() for c in key):
            problems.append(f"{where}: expected 'key = value' or '[section]', got {line[:60]!r}")
            continue
        if current is None:
            problems.append(f"{where}: {key}: key outside any section (add [global] above it)")
            continue
        if key in current.values:
            first = current.values[key].location
            problems.append(f"{where}: {key}: set twice in one section (first at {first})")
            continue
        current.values[key] = RawValue(_strip_inline_comment(value.strip()), where)
    return sections


def _section_header(line: str, where: Location, problems: list[str]) -> RawSection | None:
    body = _strip_inline_comment(line)
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
