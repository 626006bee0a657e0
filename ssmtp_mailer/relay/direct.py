"""Direct delivery to each recipient domain's MX (SPEC §6, `delivery_mode = direct|hybrid`).

Recipients are grouped by domain; each domain gets one transaction at the first of its
MX hosts that takes it (RFC 5321 §5.1: preference order, random among equals; the
domain's own A/AAAA when it has no MX; a null MX, RFC 7505, refuses the domain). A
connection failure or a 4xx moves on to the next address and host; when every host
failed the domain's recipients are deferred, which the caller queues (or, for a hybrid
route, hands to the relay at once).

STARTTLS whenever the MX offers it. The certificate is checked only when the route says
`direct_tls = verify` or the domain publishes an MTA-STS policy in `enforce` mode (RFC
8461), which also limits delivery to the MX hosts the policy lists. A TLS requirement
that cannot be met defers the domain (RFC 8461 §5.1: never a permanent failure).
"""

from __future__ import annotations

import ipaddress
import random
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from ssmtp_mailer import dnsrecords, spf
from ssmtp_mailer.addresses import domain_key, split_address
from ssmtp_mailer.config.model import Config, DeliveryMode, DirectTls, DomainConfig
from ssmtp_mailer.dnscheck import Resolver, ResolverTimeout, fetch_sts_policy
from ssmtp_mailer.errors import MailerError, NoUserError, TempFailError
from ssmtp_mailer.relay import dnscache, engine, hints
from ssmtp_mailer.relay.smtp import Endpoint, RelayFailure, tls_context
from ssmtp_mailer.rewrite import RouteGroup

Transcript = Callable[[str], None]
RelayPath = Callable[[tuple[str, ...]], engine.DeliveryResult]

# RFC 7505 §4.1: the reply for a domain that publishes a null MX.
NULL_MX_CODE = 556
# What a domain's recipients are deferred with when no MX could take them.
DEFERRED_CODE = 451
# Lookups in a row that timed out before the resolvers count as silent (Lookups.records),
# and how long the lookups after a time-out are waited for.
SILENT_AFTER = 2
PROBE_SECONDS = 2.0
_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class MxHost(NamedTuple):
    """One host to try: its name (for TLS and the log), preference and addresses."""

    name: str
    preference: int
    addresses: tuple[str, ...] | None  # None: not looked up yet (see Lookups.each_address)


class StsPolicy(NamedTuple):
    """An MTA-STS policy (RFC 8461 §3.2)."""

    id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int

    def allows(self, host: str) -> bool:
        """RFC 8461 §4.1: an exact name, or `*.` matching exactly one leftmost label."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            pattern = pattern.rstrip(".").lower()
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


class DomainPlan(NamedTuple):
    """Where one domain's mail goes; `refusal` is why it goes nowhere (null MX, no address)."""

    domain: str
    hosts: tuple[MxHost, ...]
    implicit: bool = False
    refusal: str | None = None
    policy: StsPolicy | None = None
    unlisted: tuple[str, ...] = ()


class Lookups:
    """DNS through `dns_servers` (or the system's), with answers cached for their TTL."""

    def __init__(self, config: Config) -> None:
        g = config.global_
        self.resolver = Resolver(g.dns_servers, float(min(g.connection_timeout, 30)))
        self.cache = dnscache.Cache(dnscache.path_for(g.spool_dir), lambda: _ensure_spool(config))
        self.timeout = float(g.connection_timeout)
        # The lookups in a row that timed out. After SILENT_AFTER, the resolvers count as
        # silent and the later lookups of this delivery are not waited for: each recipient
        # domain (and each MX host) would wait the whole timeout. One alone is not enough:
        # some name servers drop queries for one name or type (AAAA, _mta-sts) only. After
        # one, the next is waited for PROBE_SECONDS: resolvers that answer do so at once,
        # and dead ones cost a caller the timeout once, not twice.
        self.timeouts: list[ResolverTimeout] = []

    def records(self, name: str, rdtype: str) -> list[str]:
        """The answer as text (MX `pref host`, addresses, TXT strings joined); spf.TempError."""
        key = f"{rdtype} {name.lower()}"
        cached = self.cache.get(key)
        if isinstance(cached, list):
            return [str(r) for r in cached]
        if len(self.timeouts) >= SILENT_AFTER:
            last = self.timeouts[-1]
            raise spf.TempError(f"{name} {rdtype}: not asked, no resolver answered ({last})")
        try:
            wait = min(PROBE_SECONDS, self.timeout) if self.timeouts else None
            answer, ttl = self.resolver.answer_and_ttl(name, rdtype, wait)
        except ResolverTimeout as exc:
            self.timeouts.append(exc)
            raise
        self.timeouts.clear()
        if rdtype == "MX":
            rows = [f"{r.preference} {r.exchange.to_text().rstrip('.').lower()}" for r in answer]
        elif rdtype == "TXT":
            rows = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        else:
            rows = [str(r.address) for r in answer]
        self.cache.put(key, rows, ttl)
        return rows

    def each_address(self, host: MxHost) -> Iterator[str]:
        """The host's addresses, looked up only as far as the attempts get (A, then AAAA).

        IPv4 first: a host whose IPv6 route is broken would cost connection_timeout per MX
        before the address that works. A lookup that fails is passed over when the other
        found addresses (RFC 5321 §5.1 uses what answered); spf.TempError when none did.
        """
        if host.addresses is not None:
            yield from host.addresses
            return
        failed: spf.TempError | None = None
        found_any = False
        for kind in ("A", "AAAA"):
            try:
                found = self.records(host.name, kind)
            except spf.TempError as exc:  # a SERVFAIL for A must not hide a working AAAA
                failed = failed or exc
                continue
            found_any = found_any or bool(found)
            yield from found
        if failed is not None and not found_any:
            raise failed

    def addresses(self, name: str) -> tuple[str, ...]:
        return tuple(self.each_address(MxHost(name, 0, None)))

    def mx_hosts(self, domain: str, resolve: bool = True) -> DomainPlan:
        """RFC 5321 §5.1 (with RFC 7505's null MX) for one domain; `resolve`: addresses too."""
        literal = address_literal(domain)
        if literal is not None:
            return DomainPlan(domain, (MxHost(domain, 0, (literal,)),), implicit=True)
        rows = []
        for text in self.records(domain, "MX"):
            preference, _, host = text.partition(" ")
            rows.append((int(preference), host))
        if rows == [(0, "")] or (rows and all(host == "" for _, host in rows)):
            return DomainPlan(
                domain, (), refusal=f"{domain} publishes a null MX: it accepts no mail (RFC 7505)"
            )
        if not rows:
            addresses = self.addresses(domain)
            if not addresses:
                return DomainPlan(
                    domain, (), refusal=f"{domain} has no MX and no address: no mail server"
                )
            return DomainPlan(domain, (MxHost(domain, 0, addresses),), implicit=True)
        # A null MX beside real ones is no null MX (RFC 7505 §3): the real ones count.
        rows = [(pref, host) for pref, host in rows if host]
        hosts = [
            MxHost(host, pref, self.addresses(host) if resolve else None)
            for pref, host in ordered(rows)
        ]
        return DomainPlan(domain, tuple(hosts))

    def sts_policy(self, domain: str, ca_file: str | None) -> StsPolicy | None:
        """The domain's MTA-STS policy (RFC 8461 §3), from the cache while its id holds."""
        key = f"STS {domain.lower()}"
        cached = self.cache.get(key)
        held = None
        if isinstance(cached, list) and len(cached) == 4:
            held = StsPolicy(str(cached[0]), str(cached[1]), tuple(cached[2]), int(cached[3]))
        try:
            texts = self.records(f"_mta-sts.{domain}", "TXT")
        except spf.TempError:
            # §3.3 and §5.1: a lookup that fails is no record; a cached policy still holds.
            return held
        records = [t for t in texts if t.replace(" ", "").startswith("v=STSv1")]
        if len(records) != 1:
            # §5.1: without a (valid) record, a policy still in the cache stays in force.
            return held
        try:
            record_id = dnsrecords.parse_tags(records[0]).get("id", "")
        except ValueError:
            return held
        if not _STS_ID.match(record_id) or (held is not None and held.id == record_id):
            return held
        host = f"mta-sts.{domain}"
        try:
            addresses = self.addresses(host)
            if not addresses:
                return held
            fetched = fetch_sts_policy(
                host, addresses[0], None if ca_file is None else Path(ca_file), self.timeout
            )
        except (OSError, ssl.SSLError, ValueError, spf.TempError):
            return held
        policy = parse_policy(record_id, fetched)
        if policy is None:
            return held
        self.cache.put(key, list(policy), policy.max_age, limit=dnscache.MAX_POLICY_AGE)
        return policy


def _ensure_spool(config: Config) -> None:
    from ssmtp_mailer.spool.store import ensure_spool

    ensure_spool(config)


def parse_policy(record_id: str, fields: dict[str, str]) -> StsPolicy | None:
    """A fetched policy file's fields, or None when it is not a valid policy (RFC 8461 §3.2)."""
    mode = fields.get("mode", "")
    age = fields.get("max_age", "")
    if fields.get("version") != "STSv1" or mode not in ("enforce", "testing", "none"):
        return None
    if not age.isdigit():
        return None
    mx = tuple(fields.get("mx", "").split())
    if mode != "none" and not mx:
        return None
    return StsPolicy(record_id, mode, mx, min(int(age), dnscache.MAX_POLICY_AGE))


def ordered(rows: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """MX records by preference, shuffled among equal preferences (RFC 5321 §5.1)."""
    shuffled = list(rows)
    random.shuffle(shuffled)
    return sorted(shuffled, key=lambda row: row[0])


def address_literal(domain: str) -> str | None:
    """The IP of an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 §4.1.3)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def domain_of(address: str) -> str:
    """The recipient's domain as DNS is asked for it (addresses.domain_key)."""
    return domain_key(split_address(address)[1])


def by_domain(recipients: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Recipients grouped by domain, in the order they first appear."""
    groups: dict[str, list[str]] = {}
    for rcpt in recipients:
        groups.setdefault(domain_of(rcpt), []).append(rcpt)
    return {d: tuple(r) for d, r in groups.items()}


def plan_domain(
    lookups: Lookups, route: DomainConfig, domain: str, resolve: bool = True
) -> DomainPlan:
    """MX hosts, then the MTA-STS policy that may narrow them (raises spf.TempError)."""
    plan = lookups.mx_hosts(domain, resolve)
    if plan.refusal is not None or address_literal(domain) is not None:
        return plan
    ca_file = None if route.ssl_ca_file is None else str(route.ssl_ca_file)
    policy = lookups.sts_policy(domain, ca_file)
    if policy is None or policy.mode != "enforce":
        return plan._replace(policy=policy)
    allowed = tuple(h for h in plan.hosts if policy.allows(h.name))
    unlisted = tuple(h.name for h in plan.hosts if not policy.allows(h.name))
    return plan._replace(hosts=allowed, policy=policy, unlisted=unlisted)


def tls_requirement(route: DomainConfig, plan: DomainPlan) -> str | None:
    """Why this domain needs a verified certificate, or None when TLS is opportunistic."""
    if plan.policy is not None and plan.policy.mode == "enforce":
        return f"the MTA-STS policy of {plan.domain} (mode enforce)"
    if route.direct_tls == DirectTls.VERIFY:
        return "direct_tls = verify"
    return None


def endpoint_for(
    config: Config, route: DomainConfig, host: MxHost, address: str, verify: bool
) -> Endpoint:
    """The connection to one MX address: STARTTLS when offered, or required with `verify`."""
    g = config.global_
    # tls_context caches one context per setting; the route's CA file and client
    # certificate apply to MX hosts too, its tls_fingerprint (the relay's) does not.
    context = tls_context(route._replace(tls_verify=verify, tls_fingerprint=None))
    return Endpoint(
        # An address literal's certificate names the bare IP (and an IP gets no SNI).
        host=address_literal(host.name) or host.name,
        port=route.direct_port,
        route=route.name,
        helo=route.helo_name or g.default_hostname,
        implicit_tls=False,
        starttls=True,
        context=context,
        fingerprint=None,
        connect_timeout=g.connection_timeout,
        read_timeout=g.read_timeout,
        write_timeout=g.write_timeout,
        address=address,
        starttls_optional=not verify,
    )


class DomainOutcome(NamedTuple):
    """What became of one domain's recipients."""

    domain: str
    recipients: tuple[str, ...]
    result: engine.DeliveryResult | None = None
    error: MailerError | None = None
    unanswered: bool = False  # an MX got the whole message and never answered (RelayFailure)
    code: int = 550  # the reply code a permanent `error` stands for in the failure notice

    @property
    def temporary(self) -> bool:
        """Deferred, and worth a try through the relay (hybrid): not when an MX may have it."""
        return isinstance(self.error, TempFailError) and not self.unanswered


def deliver(
    config: Config,
    group: RouteGroup,
    data: bytes | bytearray,
    *,
    record: engine.DeliveryLog,
    send: Callable[[Endpoint, RouteGroup, Transcript | None], engine.DeliveryResult],
    relay: RelayPath | None,
    transcript: Transcript | None = None,
) -> engine.DeliveryResult:
    """Every domain of the group to its MX; with `relay` (hybrid), deferred ones through it.

    Returns what was accepted and, per recipient, each refusal (5xx: permanent, 4xx:
    to be queued); raises when nothing was accepted and every refusal was of one kind.
    """
    route = group.route
    lookups = Lookups(config)
    outcomes = [
        _deliver_domain(config, lookups, group._replace(recipients=rcpts), domain, send, transcript)
        for domain, rcpts in by_domain(group.recipients).items()
    ]
    record.path = "direct"
    relayed: engine.DeliveryResult | None = None
    relay_error: MailerError | None = None
    # Whole domains deferred, and single recipients an MX answered with a 4xx (greylisting).
    deferred = tuple(r for o in outcomes if o.temporary for r in o.recipients) + tuple(
        r for o in outcomes if o.result is not None for r in o.result.deferred
    )
    if relay is not None and deferred:
        if transcript is not None:
            transcript(f"* direct delivery deferred {len(deferred)} recipient(s): via the relay")
        try:
            relayed = relay(deferred)
        except MailerError as exc:
            relay_error = exc
    return _combine(route, outcomes, relayed, relay_error, record)


def _deliver_domain(
    config: Config,
    lookups: Lookups,
    group: RouteGroup,
    domain: str,
    send: Callable[[Endpoint, RouteGroup, Transcript | None], engine.DeliveryResult],
    transcript: Transcript | None,
) -> DomainOutcome:
    route = group.route
    rcpts = group.recipients
    try:
        plan = plan_domain(lookups, route, domain, resolve=False)
    except spf.TempError as exc:
        return DomainOutcome(domain, rcpts, error=TempFailError(domain, f"MX lookup failed: {exc}"))
    if plan.refusal is not None:
        # The recipients' own domain refuses them (RFC 7505's 556 5.1.10): EX_NOUSER.
        return DomainOutcome(
            domain, rcpts, error=NoUserError(domain, plan.refusal), code=NULL_MX_CODE
        )
    if transcript is not None:
        transcript(f"* {domain}: {hosts_text(plan)}")
    if not plan.hosts:
        if plan.unlisted:
            why = (
                f"no MX is listed in its MTA-STS policy (MX: {', '.join(plan.unlisted)};"
                f" policy mx: {', '.join(plan.policy.mx) if plan.policy else '-'})"
            )
        else:
            why = "no MX host has an address"
        return DomainOutcome(domain, rcpts, error=TempFailError(domain, why))
    required = tls_requirement(route, plan)
    failures: list[str] = []
    # A problem of the message at one host (SMTPUTF8 not offered, say): final when every
    # host said the same.
    refusal: MailerError | None = None
    refusals = 0
    # Hosts whose name has no address (NXDOMAIN or no A/AAAA, as answered, not failed).
    unknown = 0
    for host in plan.hosts:
        tried = False
        try:
            for address in lookups.each_address(host):
                tried = True
                endpoint = endpoint_for(config, route, host, address, verify=required is not None)
                try:
                    result = _send_opportunistically(endpoint, group, send, required, transcript)
                except RelayFailure as failure:
                    step, line = _next_step(failure, required, endpoint.label)
                    if step == "final":
                        return DomainOutcome(
                            domain, rcpts, error=failure.error, unanswered=failure.unanswered
                        )
                    failures.append(line)
                    if step == "refusal":
                        refusal = refusal or failure.error
                        refusals += 1
                    if step == "address":
                        continue
                    break
                return DomainOutcome(domain, rcpts, result=result)
        except spf.TempError as exc:
            failures.append(f"{host.name}: address lookup failed ({exc})")
            continue
        if not tried:
            unknown += 1
            failures.append(f"{host.name}: no address")
    if refusal is not None and refusals == len(failures):
        return DomainOutcome(domain, rcpts, error=refusal)
    if unknown == len(plan.hosts):
        # RFC 5321 §5.1: MX records none of which is usable are an error; the DNS said so
        # (nothing failed), as Postfix bounces "Host not found" (5.4.4).
        why = f"no MX host has an address ({'; '.join(failures)})"
        return DomainOutcome(domain, rcpts, error=NoUserError(domain, why))
    hint = None
    if any("timed out" in f for f in failures) and route.direct_port == 25:
        hint = hints.DIRECT_PORT25_BLOCKED
    return DomainOutcome(
        domain,
        rcpts,
        error=TempFailError(domain, f"no MX host took the message: {'; '.join(failures)}", hint),
    )


def _next_step(failure: RelayFailure, required: str | None, label: str) -> tuple[str, str]:
    """After a failed attempt: try the next `address` or `host`, or stop (`final`,
    `refusal`: the message's own problem at this host); and the line saying why."""
    error = failure.error
    if failure.unanswered:
        return "final", f"{label}: {error.why}"
    if failure.stage == "connect" and failure.code is not None:
        # A host that greets with 4xx or 5xx refuses this client, not the recipients
        # (Postfix skips it too): the next MX may take the message, else it waits.
        return "host", f"{label}: {error.why}"
    if failure.stage in ("TLS", "STARTTLS") and failure.code is None:
        why = error.why
        if required is not None and failure.stage == "STARTTLS":
            why = "does not offer STARTTLS"
        return "address", f"{label}: {why} ({required or 'TLS'})"
    line = f"{label}: {error.why}"
    if not failure.temporary:
        return ("refusal" if failure.next_server else "final"), line
    # A 4xx is this host's trouble: the next host may do better; a connection failure
    # may be this address's only.
    return ("host" if failure.code is not None else "address"), line


def _send_opportunistically(
    endpoint: Endpoint,
    group: RouteGroup,
    send: Callable[[Endpoint, RouteGroup, Transcript | None], engine.DeliveryResult],
    required: str | None,
    transcript: Transcript | None,
) -> engine.DeliveryResult:
    """One attempt; when TLS is only opportunistic, a failed handshake is retried in clear.

    As Postfix's `may` level does: an MX whose TLS is broken still gets the mail, which
    is what it would have got from a sender without STARTTLS.
    """
    try:
        return send(endpoint, group, transcript)
    except RelayFailure as failure:
        # A handshake that failed, or a STARTTLS the MX offered and then refused (454).
        if required is not None or failure.stage not in ("TLS", "STARTTLS"):
            raise
        if transcript is not None:
            transcript(f"* {endpoint.label}: TLS failed ({failure.error.why}); again without")
        return send(endpoint._replace(starttls=False), group, transcript)


def _combine(
    route: DomainConfig,
    outcomes: list[DomainOutcome],
    relayed: engine.DeliveryResult | None,
    relay_error: MailerError | None,
    record: engine.DeliveryLog,
) -> engine.DeliveryResult:
    """One DeliveryResult for the group; raises when nothing went and all failed alike."""
    results = [o.result for o in outcomes if o.result is not None]
    paths = ["direct"] if results else []
    if relayed is not None:
        results.append(relayed)
        paths.append("relay")
    refused: dict[str, tuple[int, str]] = {}
    refused_by: dict[str, str] = {}
    errors: list[MailerError] = []
    for outcome in outcomes:
        error = outcome.error
        if error is None or (outcome.temporary and relayed is not None):
            continue
        if outcome.temporary and relay_error is not None:
            error = TempFailError(
                error.what, f"{error.why}; through the relay: {relay_error.why}", error.hint
            )
        errors.append(error)
        code = DEFERRED_CODE if isinstance(error, TempFailError) else outcome.code
        for rcpt in outcome.recipients:
            refused[rcpt] = (code, error.why)
            refused_by[rcpt] = error.what  # the domain, not a server that never saw it
    record.path = "+".join(paths) or "direct"
    servers = ", ".join(r.server for r in results)
    if servers:
        record.relay = servers
    accepted = tuple(a for r in results for a in r.accepted)
    if not accepted:
        temporary = [e for e in errors if isinstance(e, TempFailError)]
        if len(temporary) == len(errors):
            record.reply = "; ".join(f"{e.what}: {e.why}" for e in errors)
            raise _joined(route, errors, TempFailError)
        if not temporary:
            raise _joined(route, errors, type(errors[0]))
    for result in results:
        refused.update(result.refused)
        refused_by.update((rcpt, result.server) for rcpt in result.refused)
    for address in accepted:
        # Deferred by its MX, then taken by the relay.
        refused.pop(address, None)
        refused_by.pop(address, None)
    return engine.DeliveryResult(
        route=route.name,
        server=servers or "-",
        accepted=accepted,
        refused=refused,
        reply=" / ".join(r.reply for r in results if r.reply),
        tls=next((r.tls for r in results if r.tls), None),
        auth_user=relayed.auth_user if relayed is not None else None,
        path=record.path,
        refused_by=refused_by,
    )


def _joined(route: DomainConfig, errors: list[MailerError], kind: type[MailerError]) -> MailerError:
    """The domains' errors as one (the first one's hint)."""
    if len(errors) == 1:
        return errors[0]
    why = "; ".join(f"{e.what}: {e.why}" for e in errors)
    hint = next((e.hint for e in errors if e.hint), None)
    return kind(f"[domain:{route.name}] direct delivery", why, hint=hint)


def hosts_text(plan: DomainPlan) -> str:
    """The hosts in the order they will be tried, for a transcript, `route` and --dry-run."""
    if plan.refusal is not None:
        return plan.refusal
    parts = []
    for host in plan.hosts:
        kind = "no MX, the domain's own address" if plan.implicit else f"MX {host.preference}"
        if host.addresses is None:  # looked up when it is tried
            parts.append(f"{host.name} ({kind})")
            continue
        where = ", ".join(host.addresses) or "no address"
        parts.append(f"{host.name} [{where}] ({kind})")
    text = "; ".join(parts) or "no usable MX"
    if plan.policy is not None:
        text += f"; MTA-STS {plan.policy.mode}"
        if plan.unlisted:
            text += f" (not in the policy: {', '.join(plan.unlisted)})"
    return text


def preview(config: Config, route: DomainConfig, recipients: Sequence[str]) -> dict[str, str]:
    """Per recipient domain, the MX hosts a delivery would try now (for `route`, --dry-run)."""
    if route.delivery_mode == DeliveryMode.RELAY:
        return {}
    shown: dict[str, str] = {}
    try:
        lookups = Lookups(config)
    except MailerError as exc:
        return {domain: exc.why for domain in by_domain(recipients)}
    for domain in by_domain(recipients):
        try:
            shown[domain] = hosts_text(plan_domain(lookups, route, domain))
        except spf.TempError as exc:
            shown[domain] = f"DNS lookup failed: {exc}"
    return shown
