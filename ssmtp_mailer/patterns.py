"""Address patterns of SPEC §4 (exact, `*@domain`, `local@*`, bare names); pure."""

import functools
import re
from collections.abc import Iterable
from typing import Generic, NamedTuple, TypeVar

from ssmtp_mailer.addresses import (
    ASCII_LOCAL,
    LABEL,
    address_key,
    domain_key,
    domain_problem,
    local_key,
    local_problem,
    split_address,
)

T = TypeVar("T")

# The common all-ASCII shapes, checked with one regex so 10,000 mappings index quickly.
_SIMPLE_PATTERN = rf"({ASCII_LOCAL}|\*)@({LABEL}(?:\.{LABEL})*|\*)"


@functools.cache
def _simple_pattern() -> re.Pattern[str]:
    """Compiled on first use: a configuration without mappings (or a cached one) needs none."""
    return re.compile(_SIMPLE_PATTERN)


class Pattern(NamedTuple):
    """A parsed pattern; `local`/`domain` None mean `*`; `bare` means no `@` (default_hostname)."""

    text: str
    local: str | None
    domain: str | None
    bare: bool = False


def parse_pattern(text: str) -> Pattern:
    """Parse a from_pattern / user address / allowed_recipients entry; ValueError says why."""
    simple = _simple_pattern().fullmatch(text)
    # An xn-- label is checked the long way: it must be a true A-label (addresses).
    if (
        simple is not None
        and len(simple[1]) <= 64
        and len(simple[2]) <= 253
        and ("xn--" not in simple[2].lower())
    ):
        local, domain = simple[1], simple[2]
        return Pattern(text, None if local == "*" else local, None if domain == "*" else domain)
    local, domain = split_address(text)
    bare = "@" not in text
    if local != "*" and "*" in local and not local.startswith('"'):
        raise ValueError(f"'*' must be the whole local part in {text!r}")
    if domain != "*" and "*" in domain:
        raise ValueError(f"'*' must be the whole domain in {text!r}")
    if local != "*":
        problem = local_problem(local)
        if problem:
            raise ValueError(f"{text!r}: {problem}")
    if not bare and domain != "*":
        problem = domain_problem(domain)
        if problem:
            raise ValueError(f"{text!r}: {problem}")
    return Pattern(
        text=text,
        local=None if local == "*" else local,
        domain=None if domain == "*" or bare else domain,
        bare=bare,
    )


# Mappings already found valid: the loader checks each one and the rewrite index then parses
# it again; a large tree would otherwise pay for every pattern twice.
_VALID_MAPPINGS: dict[tuple[str, str], Pattern] = {}
_VALID_MAPPINGS_MAX = 100_000


def parse_mapping(source: str, target: str) -> Pattern:
    """The from_pattern of a valid mapping; ValueError says why it is invalid."""
    found = _VALID_MAPPINGS.get((source, target))
    if found is not None:
        return found
    pattern = _parse_mapping(source, target)
    remember_valid_mapping(source, target, pattern)
    return pattern


def remember_valid_mapping(source: str, target: str, pattern: Pattern) -> None:
    """Record that `parse_mapping(source, target)` is `pattern` (a cache of checked mappings)."""
    if len(_VALID_MAPPINGS) >= _VALID_MAPPINGS_MAX:
        _VALID_MAPPINGS.clear()
    _VALID_MAPPINGS[(source, target)] = pattern


def _parse_mapping(source: str, target: str) -> Pattern:
    try:
        src = parse_pattern(source)
    except ValueError as exc:
        raise ValueError(f"from_pattern: {exc}") from None
    simple = _simple_pattern().fullmatch(target)
    if (
        simple is not None
        and simple[2] != "*"
        and len(simple[1]) <= 64
        and len(simple[2]) <= 253
        and "xn--" not in simple[2].lower()
    ):
        if simple[1] == "*" and src.local is not None:
            raise ValueError(_KEEPS_LOCAL.format(target=target, source=source))
        return src
    t_local, t_domain = split_address(target)
    if "@" in target and "*" in t_domain:
        raise ValueError(f"the domain of {target!r} must be a real domain, not a wildcard")
    if t_local == "*":
        if src.local is not None:
            raise ValueError(_KEEPS_LOCAL.format(target=target, source=source))
    elif "*" in t_local and not t_local.startswith('"'):
        raise ValueError(f"'*' must be the whole local part in {target!r}")
    else:
        problem = local_problem(t_local)
        if problem:
            raise ValueError(f"{target!r}: {problem}")
    if "@" in target:
        problem = domain_problem(t_domain)
        if problem:
            raise ValueError(f"{target!r}: {problem}")
    return src


_KEEPS_LOCAL = "{target!r} keeps the local part, but from_pattern {source!r} has no '*' local part"


def pattern_problem(source: str, target: str) -> str | None:
    """Why mapping `source` -> `target` is invalid or could make an invalid address, or None."""
    try:
        parse_mapping(source, target)
    except ValueError as exc:
        return str(exc)
    return None


def apply_target(target: str, matched: str, hostname: str) -> str:
    """The address `target` (a to_pattern) makes of `matched`: `*` keeps its local part."""
    t_local, t_domain = split_address(target)
    local = split_address(matched)[0] if t_local == "*" else t_local
    return f"{local}@{t_domain if '@' in target else hostname}"


class PatternIndex(Generic[T]):
    """Patterns in file order, looked up by hash (never scanned): the first match wins."""

    def __init__(self, items: Iterable[tuple[Pattern, T]], hostname: str) -> None:
        self._exact: dict[tuple[str, str], tuple[int, T]] = {}
        self._any_local: dict[str, tuple[int, T]] = {}
        self._any_domain: dict[str, tuple[int, T]] = {}
        self._any: tuple[int, T] | None = None
        host = domain_key(hostname)
        exact, any_local, any_domain = self._exact, self._any_local, self._any_domain
        for position, (pattern, item) in enumerate(items):
            entry = (position, item)
            local = None if pattern.local is None else local_key(pattern.local)
            if pattern.bare:
                # A bare name means the name at default_hostname, and an unqualified address.
                domains: tuple[str | None, ...] = (host, "")
            else:
                domains = (None if pattern.domain is None else domain_key(pattern.domain),)
            for dkey in domains:
                if local is None and dkey is None:
                    if self._any is None:
                        self._any = entry
                elif local is None:
                    assert dkey is not None
                    if dkey not in any_local:
                        any_local[dkey] = entry
                elif dkey is None:
                    if local not in any_domain:
                        any_domain[local] = entry
                elif (local, dkey) not in exact:
                    exact[(local, dkey)] = entry

    def match(self, address: str) -> tuple[int, T] | None:
        """(file-order position, item) of the first pattern matching `address`, or None."""
        lkey, dkey = address_key(address)
        best = self._exact.get((lkey, dkey))
        for found in (self._any_local.get(dkey), self._any_domain.get(lkey), self._any):
            if found is not None and (best is None or found[0] < best[0]):
                best = found
        return best
