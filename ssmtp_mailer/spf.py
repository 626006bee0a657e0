"""SPF (RFC 7208): record syntax, the DNS lookup budget and check_host(); pure.

The DNS is reached only through a `Lookups` object the caller passes in (`dnscheck` gives
one on dnspython), so everything here is plain logic.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Protocol

    class Lookups(Protocol):
        """DNS answers; an empty list for NXDOMAIN or no data, TempError when unsure."""

        def txt(self, name: str) -> list[str]: ...
        def addresses(self, name: str, version: int) -> list[str]: ...
        def mx(self, name: str) -> list[str]: ...
        def ptr(self, ip: str) -> list[str]: ...


# RFC 7208 §4.6.4: at most 10 terms that cause DNS lookups, at most 2 of them void.
MAX_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
# §4.6.4: an `mx` or `ptr` mechanism looks up at most 10 names.
MAX_NAMES_PER_MECHANISM = 10

_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_LOOKUP_TERMS = {"include", "a", "mx", "ptr", "exists", "redirect"}
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_MACRO_RE = re.compile(r"%\{([slodiphcrtv])([0-9]*)(r?)([.\-+,/_=]*)\}|%%|%_|%-", re.I)


class SpfError(ValueError):
    """A permanent error (RFC 7208 §2.6.7): the record is broken; the message says how."""


class TempError(Exception):
    """A DNS lookup failed temporarily (§2.6.6)."""


class Term(NamedTuple):
    """A mechanism (`qualifier` set) or a modifier (`qualifier` empty, `name` redirect/exp/...)."""

    qualifier: str
    name: str
    target: str | None = None
    cidr4: int | None = None
    cidr6: int | None = None
    text: str = ""

    @property
    def is_mechanism(self) -> bool:
        return bool(self.qualifier)


class Record(NamedTuple):
    terms: tuple[Term, ...]

    @property
    def mechanisms(self) -> list[Term]:
        return [t for t in self.terms if t.is_mechanism]

    def modifier(self, name: str) -> Term | None:
        return next((t for t in self.terms if not t.is_mechanism and t.name == name), None)


class Result(NamedTuple):
    """check_host()'s answer, the term that decided it and the lookups it cost."""

    result: str  # pass fail softfail neutral none permerror temperror
    term: str = ""
    lookups: int = 0
    why: str = ""


def is_spf(text: str) -> bool:
    """Whether a TXT record is an SPF record (§4.5: `v=spf1` then a space or the end)."""
    lowered = text.lower()
    return lowered == "v=spf1" or lowered.startswith("v=spf1 ")


def _check_macros(text: str) -> None:
    rest = _MACRO_RE.sub("", text)
    if "%" in rest:
        raise SpfError(f"bad macro in {text!r}")


def _cidr(text: str, term: str) -> tuple[str, int | None, int | None]:
    cidr4 = cidr6 = None
    if "//" in text:
        text, _, six = text.partition("//")
        if not six.isdigit() or int(six) > 128:
            raise SpfError(f"bad IPv6 prefix length in {term!r}")
        cidr6 = int(six)
    if "/" in text:
        text, _, four = text.rpartition("/")
        if not four.isdigit() or int(four) > 32:
            raise SpfError(f"bad IPv4 prefix length in {term!r}")
        cidr4 = int(four)
    return text, cidr4, cidr6


def _domain_spec(text: str, term: str) -> str:
    _check_macros(text)
    if not text or ("%" not in text and "." not in text.strip(".")):
        raise SpfError(f"bad domain in {term!r}")
    return text


def _mechanism(qualifier: str, name: str, value: str | None, text: str) -> Term:
    """`value` is what follows the name: nothing, `:` and a value, or (a, mx) `/` lengths."""
    if name == "all":
        if value is not None:
            raise SpfError(f"'all' takes no value: {text!r}")
        return Term(qualifier, name, text=text)
    spec = value[1:] if value is not None and value.startswith(":") else None
    if name in ("ip4", "ip6"):
        if not spec:
            raise SpfError(f"{name} needs an address: {text!r}")
        try:
            network = ipaddress.ip_network(spec, strict=False)
        except ValueError:
            raise SpfError(f"bad {name} network in {text!r}") from None
        if network.version != (4 if name == "ip4" else 6):
            raise SpfError(f"{name} with an IPv{network.version} network: {text!r}")
        return Term(qualifier, name, str(network), text=text)
    if name in ("include", "exists"):
        if not spec:
            raise SpfError(f"{name} needs a domain: {text!r}")
        return Term(qualifier, name, _domain_spec(spec, text), text=text)
    # a, mx, ptr: an optional `:domain`, then (a, mx) optional prefix lengths.
    rest = (value or "") if spec is None else spec
    cidr4 = cidr6 = None
    if name != "ptr":
        rest, cidr4, cidr6 = _cidr(rest, text)
    if spec is not None and not rest:
        # §5: a colon is followed by a domain-spec; `a:` is a permanent error, not `a`.
        raise SpfError(f"no domain after the colon in {text!r} (RFC 7208 §5)")
    target = _domain_spec(rest, text) if rest else None
    return Term(qualifier, name, target, cidr4, cidr6, text=text)


def parse(text: str) -> Record:
    """The terms of an SPF record; SpfError says what is wrong with it."""
    if not is_spf(text):
        raise SpfError("does not start with v=spf1")
    terms: list[Term] = []
    seen: set[str] = set()
    for word in text.split()[1:]:
        modifier = re.match(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$", word)
        if modifier:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if name in seen:
                    raise SpfError(f"{name}= appears twice (RFC 7208 §6)")
                seen.add(name)
                value = _domain_spec(value, word)
            else:
                _check_macros(value)
            terms.append(Term("", name, value, text=word))
            continue
        qualifier = "+"
        if word[0] in _QUALIFIERS:
            qualifier, word_body = word[0], word[1:]
        else:
            word_body = word
        # The name ends at `:` or, as in `a/24` and `mx//64`, at `/`.
        name = re.split("[:/]", word_body, maxsplit=1)[0]
        value = word_body[len(name) :]
        name = name.lower()
        if name not in _MECHANISMS:
            raise SpfError(f"unknown mechanism {word!r}")
        terms.append(_mechanism(qualifier, name, value or None, word))
    return Record(tuple(terms))


def valid_terms(text: str) -> list[Term]:
    """The terms of an SPF record that parse, each once: what a repair of it keeps."""
    terms: list[Term] = []
    for word in text.split()[1:]:
        try:
            term = parse("v=spf1 " + word).terms[0]
        except SpfError:
            continue
        # §6: a second redirect= or exp= is an error too.
        if not any(t.text == word or (not t.is_mechanism and t.name == term.name) for t in terms):
            terms.append(term)
    return terms


def expand(spec: str, ip: str, domain: str, sender: str) -> str:
    """Macro expansion (RFC 7208 §7) of a domain-spec."""
    address = ipaddress.ip_address(ip)
    local, _, sender_domain = sender.rpartition("@")
    # §7.3: an IPv6 address is written as dot-separated nibbles.
    v6 = address.version == 6
    dotted = ".".join(address.exploded.replace(":", "")) if v6 else str(address)
    values = {
        "s": sender,
        "l": local or "postmaster",
        "o": sender_domain or domain,
        "d": domain,
        "i": dotted,
        "p": "unknown",
        "v": "in-addr" if address.version == 4 else "ip6",
        "h": domain,
        "c": str(address),
        "r": "unknown",
        "t": "0",
    }

    def one(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "%%":
            return "%"
        if whole == "%_":
            return " "
        if whole == "%-":
            return "%20"
        letter, digits, reverse, delimiters = match.groups()
        parts = re.split("[" + re.escape(delimiters or ".") + "]", values[letter.lower()])
        if reverse:
            parts.reverse()
        if digits:
            parts = parts[-int(digits) :] if int(digits) else parts
        return ".".join(parts)

    return _MACRO_RE.sub(one, spec)


class _Budget:
    def __init__(self) -> None:
        self.lookups = 0
        self.void = 0

    def spend(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise SpfError(f"more than {MAX_LOOKUPS} DNS lookups (RFC 7208 §4.6.4), at {term!r}")

    def answered(self, answers: list[str]) -> list[str]:
        if not answers:
            self.void += 1
            if self.void > MAX_VOID_LOOKUPS:
                raise SpfError(f"more than {MAX_VOID_LOOKUPS} lookups found nothing (§4.6.4)")
        return answers


def spf_records(dns: Lookups, domain: str) -> list[str]:
    return [t for t in dns.txt(domain) if is_spf(t)]


def _record_of(dns: Lookups, domain: str) -> Record | None:
    records = spf_records(dns, domain)
    if not records:
        return None
    if len(records) > 1:
        raise SpfError(f"{domain} has {len(records)} SPF records; exactly one is allowed (§4.5)")
    return parse(records[0])


def _in(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, addresses: list[str], term: Term
) -> bool:
    prefix = term.cidr4 if ip.version == 4 else term.cidr6
    for text in addresses:
        length = prefix if prefix is not None else ip.max_prefixlen
        if ip in ipaddress.ip_network(f"{text}/{length}", strict=False):
            return True
    return False


def check_host(dns: Lookups, ip: str, domain: str, sender: str = "") -> Result:
    """RFC 7208 §4: does `domain` authorise `ip` to send (as `sender`)?"""
    budget = _Budget()
    try:
        result, term = _check(
            dns, ipaddress.ip_address(ip), domain, sender or f"postmaster@{domain}", budget, 0
        )
    except SpfError as exc:
        return Result("permerror", lookups=budget.lookups, why=str(exc))
    except TempError as exc:
        return Result("temperror", lookups=budget.lookups, why=str(exc))
    return Result(result, term, budget.lookups)


def _check(
    dns: Lookups,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    domain: str,
    sender: str,
    budget: _Budget,
    depth: int,
) -> tuple[str, str]:
    if depth > MAX_LOOKUPS:
        raise SpfError("includes and redirects nested over 10 deep (a loop?)")
    record = _record_of(dns, domain)
    if record is None:
        return "none", ""

    def target(term: Term) -> str:
        return expand(term.target, str(ip), domain, sender) if term.target else domain

    for term in record.mechanisms:
        if term.name in _LOOKUP_TERMS:
            budget.spend(term.text)
        if _matches(dns, ip, term, target, sender, budget, depth, domain):
            return _QUALIFIERS[term.qualifier], term.text
    redirect = record.modifier("redirect")
    if redirect is not None:
        budget.spend(redirect.text)
        result, decided = _check(dns, ip, target(redirect), sender, budget, depth + 1)
        if result == "none":
            raise SpfError(f"redirect={target(redirect)} has no SPF record")
        return result, decided
    return "neutral", ""


def _matches(
    dns: Lookups,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    term: Term,
    target: Callable[[Term], str],
    sender: str,
    budget: _Budget,
    depth: int,
    domain: str,
) -> bool:
    name = term.name
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        assert term.target is not None
        network = ipaddress.ip_network(term.target)
        return network.version == ip.version and ip in network
    if name == "a":
        return _in(ip, budget.answered(dns.addresses(target(term), ip.version)), term)
    if name == "mx":
        hosts = budget.answered(dns.mx(target(term)))
        if len(hosts) > MAX_NAMES_PER_MECHANISM:
            raise SpfError(f"{term.text!r}: more than {MAX_NAMES_PER_MECHANISM} MX hosts (§4.6.4)")
        return any(_in(ip, dns.addresses(host, ip.version), term) for host in hosts)
    if name == "ptr":
        wanted = target(term).lower().rstrip(".")
        for host in dns.ptr(str(ip))[:MAX_NAMES_PER_MECHANISM]:
            host = host.lower().rstrip(".")
            if (host == wanted or host.endswith("." + wanted)) and str(ip) in dns.addresses(
                host, ip.version
            ):
                return True
        return False
    if name == "exists":
        return bool(budget.answered(dns.addresses(target(term), 4)))
    if name == "include":
        result, _ = _check(dns, ip, target(term), sender, budget, depth + 1)
        if result == "pass":
            return True
        if result in ("fail", "softfail", "neutral"):
            return False
        if result == "temperror":
            raise TempError(f"include:{target(term)}: temporary DNS failure")
        raise SpfError(f"include:{target(term)} has no SPF record")
    raise SpfError(f"unknown mechanism {term.text!r}")


class Walk(NamedTuple):
    """Every lookup a record can cost, whatever the sending address, and what it reaches."""

    lookups: int
    includes: tuple[str, ...]
    problems: tuple[str, ...]  # over the void-lookup limit, or a lookup that failed
    # Includes and redirects whose target has no valid SPF record, or that loop back to a
    # record being evaluated: a permerror for every sender that reaches them (§4.6.4,
    # §5.2, §6.1).
    broken: tuple[str, ...] = ()
    # The domain's own include and redirect terms that lead to those: what a fix leaves out.
    broken_terms: tuple[str, ...] = ()


def _permerror(path: tuple[str, ...]) -> str:
    section = "§6.1" if path and path[-1].startswith("redirect") else "§5.2"
    return f"so receivers give permerror (RFC 7208 {section})"


def walk(dns: Lookups, domain: str) -> Walk:
    """Follow every include and redirect (not macros): the worst-case lookup count (§4.6.4)."""
    includes: list[str] = []
    problems: list[str] = []
    broken: list[str] = []
    broken_terms: list[str] = []
    voids: list[str] = []  # names an a, mx or exists term finds nothing at, for IPv4 senders

    def fail(path: tuple[str, ...], why: str) -> None:
        broken.append(f"{' > '.join(path) or domain}: {why}")
        if path and path[0] not in broken_terms:
            broken_terms.append(path[0])

    def visit(name: str, path: tuple[str, ...], evaluating: frozenset[str]) -> int:
        if len(path) > MAX_LOOKUPS:
            fail(path, "includes and redirects nested over 10 deep")
            return 0
        try:
            record = _record_of(dns, name)
        except SpfError as exc:
            fail(path, f"the SPF record of {name} is invalid ({exc}), {_permerror(path)}")
            return 0
        if record is None:
            if path:
                fail(path, f"{name} has no SPF record, {_permerror(path)}")
            return 0
        evaluating |= {name.rstrip(".").lower()}
        count = 0
        followed = [t for t in record.mechanisms if t.name == "include"]
        redirect = record.modifier("redirect")
        # §6.1: redirect is ignored when the record has an `all` mechanism.
        if redirect is not None and not any(t.name == "all" for t in record.mechanisms):
            followed.append(redirect)
        count += sum(1 for t in record.mechanisms if t.name in _LOOKUP_TERMS)
        for term in record.mechanisms:
            target = term.target or name
            if term.name in ("a", "mx", "exists") and "%" not in target:
                found = dns.mx(target) if term.name == "mx" else dns.addresses(target, 4)
                if not found:
                    voids.append(f"{term.name}:{target}")
        for term in followed:
            assert term.target is not None
            if term.name == "redirect":
                count += 1
            if "%" in term.target:
                continue
            target = term.target.rstrip(".").lower()
            includes.append(term.target.lower())
            if target in evaluating:
                fail(
                    (*path, term.text),
                    f"loops back to {target}, whose record is being evaluated: receivers go"
                    " round until the 10-lookup limit, then give permerror (RFC 7208 §4.6.4)",
                )
                continue
            count += visit(term.target, (*path, term.text), evaluating)
        return count

    try:
        total = visit(domain, (), frozenset())
    except TempError as exc:
        problems.append(f"temporary DNS failure: {exc}")
        total = 0
    if len(voids) > MAX_VOID_LOOKUPS:
        problems.append(
            f"{len(voids)} of its lookups find nothing ({', '.join(voids)}); receivers allow"
            f" {MAX_VOID_LOOKUPS} (RFC 7208 §4.6.4), then take the record for broken"
        )
    return Walk(total, tuple(includes), tuple(problems), tuple(broken), tuple(broken_terms))
