"""`dns check`: a domain's mail records (MX, SPF, DKIM, DMARC, PTR, MTA-STS, TLS-RPT) over DNS.

The queries go through dnspython to `dns_servers` (or the system's resolvers); what the
answers mean is decided by the pure `spf` and `dnsrecords` modules.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from ssmtp_mailer import dnsrecords, spf
from ssmtp_mailer.config.model import DomainConfig, HostPort
from ssmtp_mailer.dnsrecords import TxtRecord
from ssmtp_mailer.errors import ConfigError

if TYPE_CHECKING:
    from typing import Any

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"


class Check(NamedTuple):
    """One line of the checklist; `publish` holds the zone-file lines that would fix it."""

    name: str
    status: str
    summary: str
    required: bool = True
    details: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.required and self.status == FAIL

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "required": self.required,
            "summary": self.summary,
            "details": list(self.details),
            "publish": list(self.publish),
        }


class Request(NamedTuple):
    domain: str
    selectors: tuple[tuple[str, Path | None], ...] = ()
    ip: str | None = None
    route: DomainConfig | None = None
    servers: tuple[HostPort, ...] = ()
    ca_file: Path | None = None
    timeout: float = 5.0
    # Where the selectors' key records are: the d= of the route's signatures, when its
    # name fixes one (relay/dkim.py route_domain); else `domain`.
    dkim_domain: str | None = None


class Report(NamedTuple):
    domain: str
    checks: tuple[Check, ...]
    servers: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "ok": self.ok,
            "resolvers": list(self.servers),
            "checks": [c.as_dict() for c in self.checks],
        }


class ResolverTimeout(spf.TempError):
    """No resolver answered within the timeout (not an answer such as SERVFAIL)."""


class Resolver:
    """`spf.Lookups` on dnspython: empty answers for NXDOMAIN/no data, spf.TempError else."""

    def __init__(self, servers: Sequence[HostPort] = (), timeout: float = 5.0) -> None:
        if servers:
            self._resolver = dns.resolver.Resolver(configure=False)
            # Ports first: dnspython >= 2.4 reads them when the nameservers are set.
            self._resolver.nameserver_ports = {s.host: s.port or 53 for s in servers}
            self._resolver.nameservers = [s.host for s in servers]
        else:
            try:
                self._resolver = dns.resolver.Resolver()
            except dns.exception.DNSException as exc:
                raise ConfigError(
                    "dns_servers", f"not set, and no system resolver: {exc}"
                ) from None
        self._resolver.lifetime = timeout
        # Each server its share of the time, so that one that never answers leaves the
        # next one a try (as resolv.conf's servers are tried in turn).
        self._resolver.timeout = timeout / max(1, len(self._resolver.nameservers))

    @property
    def names(self) -> list[str]:
        ports = self._resolver.nameserver_ports
        return [str(HostPort(str(s), ports.get(str(s), 53))) for s in self._resolver.nameservers]

    def _answer(self, name: str, rdtype: str) -> list[Any]:
        return self.answer_and_ttl(name, rdtype)[0]

    def answer_and_ttl(
        self, name: str, rdtype: str, lifetime: float | None = None
    ) -> tuple[list[Any], int]:
        """The records and their TTL in seconds (0 when there are none: nothing to cache);
        `lifetime`, a shorter wait than the resolver's own."""
        try:
            answer = self._resolver.resolve(name, rdtype, search=False, lifetime=lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            return [], _negative_ttl(exc)
        except dns.name.EmptyLabel:
            return [], 0
        except dns.exception.Timeout as exc:
            raise ResolverTimeout(f"{name} {rdtype}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"{name} {rdtype}: {exc}") from None
        return list(answer), answer.rrset.ttl if answer.rrset is not None else 0

    def alias_of(self, name: str) -> str | None:
        """What a CNAME at `name` points to, or None when it has none."""
        records = self._answer(name, "CNAME")
        return str(records[0].target).rstrip(".") if records else None

    def txt(self, name: str) -> list[str]:
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self._answer(name, "TXT")]

    def addresses(self, name: str, version: int) -> list[str]:
        return [r.address for r in self._answer(name, "A" if version == 4 else "AAAA")]

    def all_addresses(self, name: str) -> list[str]:
        return self.addresses(name, 4) + self.addresses(name, 6)

    def mx_records(self, name: str) -> list[tuple[int, str]]:
        rows = [
            (r.preference, r.exchange.to_text().rstrip(".").lower())
            for r in self._answer(name, "MX")
        ]
        return sorted(rows)

    def mx(self, name: str) -> list[str]:
        return [host for _, host in self.mx_records(name) if host]

    def ptr(self, ip: str) -> list[str]:
        reverse = dns.reversename.from_address(ip).to_text()
        return [r.target.to_text().rstrip(".").lower() for r in self._answer(reverse, "PTR")]


def _negative_ttl(exc: dns.exception.DNSException) -> int:
    """How long a "no such record" may be cached: the SOA's minimum (RFC 2308 §5), else 0."""
    try:
        if isinstance(exc, dns.resolver.NXDOMAIN):
            responses = list(exc.responses().values())  # type: ignore[no-untyped-call]
        else:
            responses = [exc.response()]  # type: ignore[attr-defined]
    except (AttributeError, KeyError, TypeError):
        return 0
    for response in responses:
        for rrset in getattr(response, "authority", ()):
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return int(min(rrset.ttl, rrset[0].minimum))
    return 0


# Checked only when published: a lookup that fails may be of a record that is not there.
_OPTIONAL = {"MTA-STS", "TLS-RPT"}


def _guard(name: str, run: Callable[[], list[Check]], required: bool) -> list[Check]:
    """A check whose lookups failed temporarily says so instead of guessing; for an
    optional record (MTA-STS, TLS-RPT) that is a warning: it may well not be published."""
    try:
        return run()
    except spf.TempError as exc:
        status = FAIL if required else WARN
        summary = f"DNS lookup failed: {exc}"
        return [Check(name, status, summary, required=required, details=("try again later",))]


def check_mx(dns: Resolver, domain: str) -> list[Check]:
    rows = dns.mx_records(domain)
    if rows == [(0, "")]:
        return [
            Check(
                "MX",
                FAIL,
                "null MX (RFC 7505): the domain says it receives no mail",
                details=(
                    "receivers may refuse mail from a domain with a null MX (RFC 7505 §4.2,"
                    " 550 5.7.27), and bounces cannot come back",
                ),
                publish=(f"{domain}. IN MX 10 mail.{domain}.",),
            )
        ]
    if any(host == "" for _, host in rows):
        return [
            Check(
                "MX",
                FAIL,
                'a null MX (".") beside other MX records, or not at preference 0:'
                " RFC 7505 §3 allows it only alone, as MX 0 .",
                details=tuple(f"{p} {h or '.'}" for p, h in rows),
                publish=(
                    f"{domain}. IN MX 0 .   (receives no mail; remove the others)",
                    f"or only the real ones, as {domain}. IN MX 10 mail.{domain}.",
                ),
            )
        ]
    if not rows:
        addresses = dns.all_addresses(domain)
        if addresses:
            return [
                Check(
                    "MX",
                    WARN,
                    f"no MX; mail goes to the domain's own address {addresses[0]} (RFC 5321 §5.1)",
                    publish=(f"{domain}. IN MX 10 mail.{domain}.",),
                )
            ]
        return [
            Check(
                "MX",
                FAIL,
                "no MX record and no address: replies and bounces have nowhere to go",
                publish=(f"{domain}. IN MX 10 mail.{domain}.",),
            )
        ]
    details, unresolved = [], []
    for preference, host in rows:
        addresses = dns.all_addresses(host)
        details.append(f"{preference} {host} -> {', '.join(addresses) or 'no address'}")
        if not addresses:
            unresolved.append(host)
    if unresolved:
        return [
            Check(
                "MX",
                FAIL,
                f"MX host {unresolved[0]} has no A or AAAA record",
                details=tuple(details),
                publish=tuple(f"{h}. IN A <address of {h}>" for h in unresolved),
            )
        ]
    summary = ", ".join(f"{p} {h}" for p, h in rows)
    aliases = [(p, h, target) for p, h in rows if (target := dns.alias_of(h)) is not None]
    if aliases:
        _, alias, target = aliases[0]
        return [
            Check(
                "MX",
                WARN,
                f"MX host {alias} is an alias (CNAME) of {target}: RFC 2181 §10.3 says an MX"
                " must name the host itself, and some senders refuse to follow it",
                details=tuple(details),
                publish=tuple(f"{domain}. IN MX {p} {t}." for p, _, t in aliases),
            )
        ]
    return [Check("MX", OK, summary, details=tuple(details))]


class _Proposed(NamedTuple):
    """The resolver's answers, with `record` as `domain`'s SPF record: a fix, evaluated."""

    dns: Resolver
    domain: str
    record: str

    def txt(self, name: str) -> list[str]:
        return [self.record] if name.rstrip(".").lower() == self.domain else self.dns.txt(name)

    def addresses(self, name: str, version: int) -> list[str]:
        return self.dns.addresses(name, version)

    def mx(self, name: str) -> list[str]:
        return self.dns.mx(name)

    def ptr(self, ip: str) -> list[str]:
        return self.dns.ptr(ip)


class _SpfFix(NamedTuple):
    """The SPF record to publish, as a zone line, and the user's terms it leaves out."""

    line: str
    dropped: tuple[str, ...] = ()

    @property
    def note(self) -> tuple[str, ...]:
        """The detail that names what the record leaves out, when it leaves out anything."""
        if not self.dropped:
            return ()
        terms = ", ".join(self.dropped)
        return (f"the record to publish leaves out {terms}: receivers give permerror there",)


def _spf_fix(
    dns: Resolver,
    domain: str,
    record: str | None,
    ip: str | None,
    provider: dnsrecords.Provider | None,
) -> _SpfFix:
    """The record to publish: the user's valid terms kept but for an include or redirect
    that receivers fail on, +all closed to ~all, and what `ip` and the relay need added."""
    terms = spf.valid_terms(record or "")
    kept = " ".join(["v=spf1", *(t.text for t in terms)])
    dropped = spf.walk(_Proposed(dns, domain, kept), domain).broken_terms
    words = [
        "~all" if t.name == "all" and t.qualifier == "+" else t.text
        for t in terms
        if t.text not in dropped
    ] or ["~all"]
    text = " ".join(["v=spf1", *words])
    if ip and spf.check_host(_Proposed(dns, domain, text), ip, domain).result != "pass":
        text = dnsrecords.spf_with(text, _ip_mechanism(ip))
    if provider:
        reached = set(spf.walk(_Proposed(dns, domain, text), domain).includes)
        if not reached & {provider.spf_include, *provider.also}:
            text = dnsrecords.spf_with(text, f"include:{provider.spf_include}")
    if not any(t.name not in ("all", "exp") for t in spf.valid_terms(text)):
        text = dnsrecords.spf_with(text, "mx")  # a record that lets no one send
    return _SpfFix(TxtRecord(domain, text).zone_line(), dropped)


def _ip_mechanism(ip: str) -> str:
    return f"ip{ipaddress.ip_address(ip).version}:{ip}"


def check_spf(
    dns: Resolver, domain: str, ip: str | None, provider: dnsrecords.Provider | None
) -> list[Check]:
    records = spf.spf_records(dns, domain)
    if not records:
        return [
            Check(
                "SPF",
                FAIL,
                "no SPF record: receivers cannot tell which servers may send for the domain",
                publish=(_spf_fix(dns, domain, None, ip, provider).line,),
            )
        ]
    if len(records) > 1:
        merged = dnsrecords.TxtRecord(domain, dnsrecords.spf_merged(records)).zone_line()
        return [
            Check(
                "SPF",
                FAIL,
                f"{len(records)} SPF records: that is a permanent error (RFC 7208 §4.5);"
                " merge them into one and delete the others",
                details=tuple(records),
                publish=(merged,),
            )
        ]
    record = records[0]
    fixed = functools.cache(lambda: _spf_fix(dns, domain, record, ip, provider))
    try:
        parsed = spf.parse(record)
    except spf.SpfError as exc:
        return [
            Check(
                "SPF",
                FAIL,
                f"invalid SPF record: {exc}",
                details=(record, *fixed().note),
                publish=(fixed().line,),
            )
        ]
    walked = spf.walk(dns, domain)
    if walked.broken:
        checks = [
            Check(
                "SPF",
                FAIL,
                walked.broken[0],
                details=(
                    record,
                    *walked.broken[1:],
                    *fixed().note,
                    "if that service still sends for you, correct the name or have its owner fix"
                    " its record, then add it back",
                ),
                publish=(fixed().line,),
            )
        ]
    else:
        checks = [Check("SPF", OK, record)]
    if any(t.name == "all" and t.qualifier == "+" for t in parsed.mechanisms):
        checks.append(
            Check(
                "SPF all",
                FAIL,
                f"+all: every host on the internet passes SPF for {domain}",
                details=(
                    "end it with ~all (or -all): only the senders it lists should pass",
                    *fixed().note,
                ),
                publish=(fixed().line,),
            )
        )
    if any(t.name == "ptr" for t in parsed.mechanisms):
        checks.append(
            Check(
                "SPF ptr",
                WARN,
                "the ptr mechanism: RFC 7208 §5.5 says not to use it (slow, and some receivers"
                " skip it); list the addresses with ip4:/ip6: or a: instead",
            )
        )
    too_many = walked.lookups > spf.MAX_LOOKUPS
    if too_many:
        checks.append(
            Check(
                "SPF lookups",
                FAIL,
                f"{walked.lookups} DNS lookups, more than the {spf.MAX_LOOKUPS} RFC 7208 §4.6.4"
                " allows",
                details=(
                    "receivers stop counting at 10 and treat the record as broken (permerror);"
                    " replace includes with ip4:/ip6: ranges or drop ones no longer used",
                    *walked.problems,
                ),
            )
        )
    elif walked.problems:
        checks.append(Check("SPF lookups", FAIL, walked.problems[0], details=walked.problems[1:]))
    else:
        checks.append(Check("SPF lookups", OK, f"{walked.lookups} of {spf.MAX_LOOKUPS}"))
    broken = too_many or bool(walked.problems or walked.broken)
    if ip:
        result = spf.check_host(dns, ip, domain)
        if result.result == "pass":
            checks.append(Check(f"SPF for {ip}", OK, f"pass ({result.term})"))
        else:
            why = f": {result.why}" if result.why else (f" ({result.term})" if result.term else "")
            # Adding the address to a record that is broken anyway would fix nothing.
            checks.append(
                Check(
                    f"SPF for {ip}",
                    FAIL,
                    f"{result.result}{why}: {ip} is not authorised to send for {domain}",
                    details=("fix the record first (above)",) if broken else (),
                    publish=() if broken else (fixed().line,),
                )
            )
    if provider:
        reached = {d.lower() for d in walked.includes}
        wanted = {provider.spf_include, *provider.also}
        if reached & wanted:
            found = sorted(reached & wanted)[0]
            checks.append(Check(f"SPF for {provider.name}", OK, f"includes {found}"))
        else:
            checks.append(
                Check(
                    f"SPF for {provider.name}",
                    FAIL,
                    f"the route relays through {provider.name}, but the record does not"
                    f" include {provider.spf_include}",
                    details=fixed().note,
                    publish=(fixed().line,),
                )
            )
    return checks


def check_dkim(dns: Resolver, domain: str, selector: str, key_file: Path | None) -> list[Check]:
    from ssmtp_mailer import keytool
    from ssmtp_mailer.dkimkey import KeyFileError

    name = f"DKIM {selector}"
    record_name = dnsrecords.dkim_name(selector, domain)
    expected: TxtRecord | None = None
    pair = None
    if key_file is not None:
        try:
            pair = keytool.public_of(key_file.read_bytes())
        except (OSError, KeyFileError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            return [Check(name, FAIL, f"cannot read the configured key {key_file}: {why}")]
        expected = dnsrecords.dkim_record(selector, domain, pair.key_type, pair.public_b64)
    publish = (expected.zone_line(),) if expected else ()
    keygen = f"ssmtp-mailer dkim keygen --domain {domain} --selector {selector}"
    texts = [
        t for t in dns.txt(record_name) if "p=" in t.lower() or t.lower().startswith("v=dkim1")
    ]
    if not texts:
        return [
            Check(
                name,
                FAIL,
                f"no key record at {record_name}",
                details=() if expected else (f"make a key and its record with: {keygen}",),
                publish=publish,
            )
        ]
    if len(texts) > 1:
        return [
            Check(
                name, FAIL, f"{len(texts)} key records at {record_name}; keep one", publish=publish
            )
        ]
    try:
        tags = dnsrecords.parse_tags(texts[0])
    except ValueError as exc:
        return [Check(name, FAIL, f"{record_name}: {exc}", publish=publish)]
    key_type = tags.get("k", "rsa").lower()
    public = dnsrecords.joined_key(tags.get("p", ""))
    problem = None
    if miscased := dnsrecords.miscased_tag(tags, _DKIM_TAGS):
        problem = (
            f"{miscased}=: tag names are case-sensitive (RFC 6376 §3.2);"
            f" verifiers read {miscased.lower()}= only"
        )
    elif "v" in tags and tags["v"] != "DKIM1":
        problem = f"v={tags['v']}, expected v=DKIM1 (RFC 6376 §3.6.1)"
    elif "v" in tags and next(iter(tags)) != "v":
        problem = "v=DKIM1 is not the first tag, which RFC 6376 §3.6.1 requires"
    elif "p" not in tags:
        problem = "no p= tag (the public key)"
    elif not public:
        problem = "p= is empty: the key is revoked"
    elif key_type not in ("rsa", "ed25519"):
        problem = f"k={key_type}: verifiers know rsa and ed25519"
    elif not {"email", "*"} & _tag_list(tags, "s", "*"):
        problem = f"s={tags['s']}: the key is not for email, verifiers ignore it (RFC 6376 §3.6.1)"
    elif "sha256" not in _tag_list(tags, "h", "sha256"):
        problem = f"h={tags['h']}: our signatures are sha256, which it rules out (RFC 6376 §3.6.1)"
    elif pair is not None and not keytool.same_public_key(key_type, public, pair):
        problem = (
            f"the published key is not the public half of {key_file}"
            if key_type == pair.key_type
            else f"published k={key_type}, the configured key is {pair.key_type}"
        )
    if problem:
        return [Check(name, FAIL, f"{record_name}: {problem}", publish=publish)]
    if "y" in _tag_list(tags, "t", ""):
        return [
            Check(
                name,
                WARN,
                f"{record_name}: t=y: a key in testing, whose signatures verifiers may treat"
                " as absent (RFC 6376 §3.6.1); drop t=y once they verify",
            )
        ]
    if pair is None:
        return [
            Check(
                name,
                OK,
                f"{record_name}: k={key_type} key published (no key configured to compare)",
            )
        ]
    return [Check(name, OK, f"{record_name}: k={key_type}, matches {key_file}")]


def check_dmarc(dns: Resolver, domain: str) -> list[Check]:
    labels = domain.split(".")
    # RFC 7489 §6.6.3: the domain's own record, else its organizational domain's (here: each
    # parent down to two labels, without a public-suffix list).
    for index in range(len(labels) - 1):
        at = ".".join(labels[index:])
        where = f"_dmarc.{at}" + (" (the organizational domain's)" if index else "")
        texts = dns.txt(f"_dmarc.{at}")
        records = [t for t in texts if t.replace(" ", "").lower().startswith("v=dmarc1")]
        later = [t for t in map(_dmarc_tags, texts) if t.get("v", "").upper() == "DMARC1"]
        if not records and later:
            return [
                Check(
                    "DMARC",
                    FAIL,
                    f"{where}: v=DMARC1 is not the first tag, which RFC 7489 §6.4 requires;"
                    " receivers discard the record",
                    publish=(TxtRecord(f"_dmarc.{at}", _dmarc_text(later[0])).zone_line(),),
                )
            ]
        if not records:
            continue
        if len(records) > 1:
            return [
                Check("DMARC", FAIL, f"{where}: {len(records)} records; receivers ignore them all")
            ]
        try:
            tags = dnsrecords.parse_tags(records[0])
        except ValueError as exc:
            return [
                Check(
                    "DMARC",
                    FAIL,
                    f"{where}: {exc}",
                    publish=(dnsrecords.dmarc_record(domain).zone_line(),),
                )
            ]
        problem = _dmarc_problem(tags)
        if problem is not None:
            return [
                Check(
                    "DMARC",
                    FAIL,
                    f"{where}: {problem} (RFC 7489 §6.4); receivers ignore the record",
                    publish=(dnsrecords.dmarc_record(at).zone_line(),),
                )
            ]
        policy = tags.get("sp", tags.get("p", "")) if index else tags.get("p", "")
        policy = policy.lower()
        if policy not in ("none", "quarantine", "reject") and tags.get("rua", "").strip(", "):
            said = f"p={tags['p']}" if "p" in tags else "no p="
            return [
                Check(
                    "DMARC",
                    WARN,
                    f"{where}: {said}, but a rua= to report to: receivers act as if it said"
                    " p=none (RFC 7489 §6.6.3)",
                    details=("p=none only monitors; move to quarantine once reports look clean",),
                    publish=(TxtRecord(f"_dmarc.{at}", _dmarc_text(tags, p="none")).zone_line(),),
                )
            ]
        if policy not in ("none", "quarantine", "reject"):
            return [
                Check(
                    "DMARC",
                    FAIL,
                    f"{where}: p={policy or '(missing)'}, expected none, quarantine or reject",
                    publish=(dnsrecords.dmarc_record(at).zone_line(),),
                )
            ]
        summary = f"{where}: p={policy}" + (f", rua={tags['rua']}" if "rua" in tags else "")
        if policy == "none":
            return [
                Check(
                    "DMARC",
                    WARN,
                    summary,
                    details=("p=none only monitors; move to quarantine once reports look clean",),
                )
            ]
        return [Check("DMARC", OK, summary)]
    return [
        Check(
            "DMARC",
            FAIL,
            f"no DMARC record at _dmarc.{domain}",
            details=("Gmail and Yahoo require DMARC from bulk senders",),
            publish=(dnsrecords.dmarc_record(domain).zone_line(),),
        )
    ]


def _dmarc_tags(text: str) -> dict[str, str]:
    try:
        return dnsrecords.parse_tags(text)
    except ValueError:
        return {}


def _dmarc_text(tags: dict[str, str], **changed: str) -> str:
    """A DMARC record of `tags` with v=DMARC1 first and p= next, as RFC 7489 §6.4 has them."""
    tags = {"v": "", "p": "", **tags, **changed} | {"v": "DMARC1"}
    return "; ".join(f"{k}={v}" for k, v in tags.items() if v)


def _tag_list(tags: dict[str, str], key: str, default: str) -> set[str]:
    """A colon-separated DKIM tag value (s=, h=) as lower-case words (RFC 6376 §3.6.1)."""
    return set(tags.get(key, default).lower().replace(" ", "").split(":"))


# RFC 6376 §3.6.1; RFC 7489 §6.3.
_DKIM_TAGS = {"v", "h", "k", "n", "p", "s", "t"}
_DMARC_TAGS = {"v", "p", "sp", "rua", "ruf", "adkim", "aspf", "pct", "fo", "rf", "ri"}

_DMARC_VALUES = {
    "sp": {"none", "quarantine", "reject"},
    "adkim": {"r", "s"},
    "aspf": {"r", "s"},
}


def _dmarc_problem(tags: dict[str, str]) -> str | None:
    """What makes a DMARC record's tags invalid, or None (the policy is checked apart)."""
    # RFC 7489 §6.3: DMARC records take DKIM's tag syntax, case-sensitive names and all.
    miscased = dnsrecords.miscased_tag(tags, _DMARC_TAGS)
    if miscased:
        lower = miscased.lower()
        return f"{miscased}=: tag names are case-sensitive, as in DKIM, so this is no {lower}="
    if tags.get("v") != "DMARC1":
        return f"v={tags.get('v', '')}, expected v=DMARC1 exactly"
    pct = tags.get("pct", "100")
    if not pct.isdigit() or int(pct) > 100:
        return f"pct={pct}, expected 0 to 100"
    # RFC 7489 §6.3: a receiver meeting a bad value may ignore the record, or read sp as none.
    for key, allowed in _DMARC_VALUES.items():
        value = tags.get(key)
        if value is not None and value.lower() not in allowed:
            return f"{key}={value}, expected {' or '.join(sorted(allowed))}"
    fo = tags.get("fo")
    if fo is not None and not all(o.strip() in ("0", "1", "d", "s") for o in fo.split(":")):
        return f"fo={fo}, expected options of 0, 1, d and s, as fo=1 or fo=d:s"
    ri = tags.get("ri")
    if ri is not None and not ri.isdigit():
        return f"ri={ri}, expected seconds, as ri=86400"
    for key in ("rua", "ruf"):
        for uri in filter(None, (u.strip() for u in tags.get(key, "").split(","))):
            if not uri.lower().startswith(("mailto:", "https:")):
                return f"{key}={uri}: a report address is a URI, as mailto:{uri}"
    return None


def check_ptr(dns: Resolver, domain: str, ip: str) -> list[Check]:
    reverse = dns_reverse(ip)
    names = dns.ptr(ip)
    host = f"mail.{domain}"
    if not names:
        return [
            Check(
                "PTR",
                FAIL,
                f"{ip} has no PTR record (many receivers refuse mail from such addresses)",
                details=("the PTR is set by whoever owns the address: your hosting provider",),
                publish=(f"{reverse} IN PTR {host}.", f"{host}. IN A {ip}"),
            )
        ]
    for name in names:
        if ip in {str(ipaddress.ip_address(a)) for a in dns.all_addresses(name)}:
            return [Check("PTR", OK, f"{ip} -> {name} -> {ip}")]
    forward = ", ".join(dns.all_addresses(names[0])) or "no address"
    return [
        Check(
            "PTR",
            FAIL,
            f"{ip} -> {names[0]}, but {names[0]} -> {forward} (not forward-confirmed)",
            publish=(f"{names[0]}. IN {'A' if ':' not in ip else 'AAAA'} {ip}",),
        )
    ]


def dns_reverse(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text()


_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


def check_mta_sts(dns: Resolver, domain: str, ca_file: Path | None, timeout: float) -> list[Check]:
    records = [t for t in dns.txt(f"_mta-sts.{domain}") if t.replace(" ", "").startswith("v=STSv1")]
    if not records:
        return [Check("MTA-STS", SKIP, "not published", required=False)]
    try:
        tags = dnsrecords.parse_tags(records[0])
    except ValueError as exc:
        return [Check("MTA-STS", FAIL, f"_mta-sts.{domain}: {exc}")]
    if len(records) > 1 or not _STS_ID.match(tags.get("id", "")):
        why = "more than one record" if len(records) > 1 else "id= must be 1-32 letters or digits"
        return [Check("MTA-STS", FAIL, f"_mta-sts.{domain}: {why} (RFC 8461 §3.1)")]
    host = f"mta-sts.{domain}"
    try:
        addresses = dns.all_addresses(host)
        if not addresses:
            raise OSError(f"{host} has no address")
        policy = fetch_sts_policy(host, addresses[0], ca_file, timeout)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return [
            Check(
                "MTA-STS",
                FAIL,
                f"id={tags['id']} published, but the policy cannot be fetched from"
                f" https://{host}/.well-known/mta-sts.txt: {exc}",
            )
        ]
    from ssmtp_mailer.relay.direct import parse_policy

    # As a sending MTA reads it (and our own direct delivery does).
    parsed = parse_policy(tags["id"], policy)
    if parsed is None:
        return [
            Check(
                "MTA-STS",
                FAIL,
                f"policy at https://{host}/.well-known/mta-sts.txt is not valid (RFC 8461 §3.2):"
                " it needs version: STSv1, mode: enforce|testing|none, a max_age: in seconds"
                " and, unless mode is none, mx: lines; senders ignore it",
                details=tuple(f"{k}: {v}" for k, v in policy.items()),
            )
        ]
    age = policy.get("max_age", "")
    if len(age) > 10 or int(age) > MAX_STS_AGE:
        return [
            Check(
                "MTA-STS",
                FAIL,
                f"max_age: {age} is over the {MAX_STS_AGE} seconds (a year) RFC 8461 §3.2"
                " allows; a sender may take the policy for invalid and ignore it",
                publish=("max_age: 604800   (in the policy file, one week)",),
            )
        ]
    hosts = [h for _, h in dns.mx_records(domain) if h] if parsed.mode != "none" else []
    uncovered = [h for h in hosts if not parsed.allows(h)]
    if uncovered:
        return [
            Check(
                "MTA-STS",
                FAIL if parsed.mode == "enforce" else WARN,
                f"mode={parsed.mode}, but the policy's mx ({', '.join(parsed.mx)}) does not cover"
                f" the MX host {uncovered[0]}: senders that enforce it refuse to deliver there"
                " (RFC 8461 §4.1)",
                publish=tuple(f"mx: {h}   (in the policy file)" for h in uncovered),
            )
        ]
    return [Check("MTA-STS", OK, f"mode={parsed.mode}, mx={', '.join(parsed.mx) or '-'}")]


MAX_STS_AGE = 31557600  # RFC 8461 §3.2, with at most 10 digits


def fetch_sts_policy(
    host: str, address: str, ca_file: Path | None, timeout: float
) -> dict[str, str]:
    """RFC 8461 §3.3: the policy file over HTTPS, the certificate verified for `host`."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    request = f"GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\n\r\n"
    data = b""
    with (
        socket.create_connection((address, 443), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(request.encode("ascii"))
        while len(data) < 65536:
            chunk = tls.recv(8192)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"HTTP {b' '.join(status[1:]).decode('latin-1') or 'no answer'}")
    policy: dict[str, str] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            key = key.strip().lower()
            policy[key] = (
                policy[key] + " " if key == "mx" and key in policy else ""
            ) + value.strip()
    return policy


def check_tlsrpt(dns: Resolver, domain: str) -> list[Check]:
    name = f"_smtp._tls.{domain}"
    records = [t for t in dns.txt(name) if t.replace(" ", "").startswith("v=TLSRPTv1")]
    if not records:
        return [Check("TLS-RPT", SKIP, "not published", required=False)]
    try:
        tags = dnsrecords.parse_tags(records[0])
    except ValueError as exc:
        return [Check("TLS-RPT", FAIL, f"{name}: {exc}")]
    uris = [u.strip() for u in tags.get("rua", "").split(",") if u.strip()]
    if len(records) > 1 or not uris or not all(u.startswith(("mailto:", "https:")) for u in uris):
        return [
            Check("TLS-RPT", FAIL, f"{name}: needs one record with rua=mailto:... (RFC 8460 §3)")
        ]
    return [Check("TLS-RPT", OK, f"rua={', '.join(uris)}")]


def run(request: Request, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Every check for `request.domain`, in checklist order."""
    domain = request.domain.rstrip(".").lower()
    resolver = Resolver(request.servers, request.timeout)
    route = request.route
    provider = None
    if route is not None and route.delivery_mode.value != "direct":
        provider = dnsrecords.provider_for(route.smtp_server)
    steps: list[tuple[str, Callable[[], list[Check]]]] = [
        ("MX", lambda: check_mx(resolver, domain)),
        ("SPF", lambda: check_spf(resolver, domain, request.ip, provider)),
    ]
    signing_domain = request.dkim_domain or domain
    for selector, key_file in request.selectors:
        steps.append(
            (
                f"DKIM {selector}",
                functools.partial(check_dkim, resolver, signing_domain, selector, key_file),
            )
        )
    if not request.selectors:
        skipped = Check(
            "DKIM",
            SKIP,
            "no selector configured for the route or given with --selector",
            required=False,
        )
        steps.append(("DKIM", lambda: [skipped]))
    steps.append(("DMARC", lambda: check_dmarc(resolver, domain)))
    if request.ip:
        ip = request.ip
        steps.append(("PTR", lambda: check_ptr(resolver, domain, ip)))
    steps.append(
        ("MTA-STS", lambda: check_mta_sts(resolver, domain, request.ca_file, request.timeout))
    )
    steps.append(("TLS-RPT", lambda: check_tlsrpt(resolver, domain)))
    checks: list[Check] = []
    for name, step in steps:
        progress(name)
        checks.extend(_guard(name, step, required=name not in _OPTIONAL))
    return Report(domain, tuple(checks), tuple(resolver.names))
