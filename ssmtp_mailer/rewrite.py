"""Rewriting, routing and sender policy (SPEC §4): pure, turns (config, envelope) into a Plan.

Decisions, in order (each one is recorded in `Plan.steps`):

1. Masquerading: the sender is rewritten by the first mapping whose from_pattern matches it.
2. Forwarding: each recipient is rewritten by the first mapping matching it. A rewrite is applied
   once: its result is never matched again, so mappings cannot loop.
3. Policy: the `[user:]` matching the sender as given (else as rewritten) is enforced: disabled or
   `can_send_from = false` refuses the message; `allowed_domains` / `allowed_recipients` (and the
   sender mapping's `allowed_recipients`) refuse recipients by name, a recipient passing when either
   its given or its rewritten address is allowed; a recipient whose own `[user:]` says
   `can_send_to = false` is refused. With `users_required`, a sender without a section is refused.
   The null sender is checked as `MAILER-DAEMON@default_hostname`.
4. Route, per recipient: the route of the sender's mapping (`domain`, else the route owning
   `smtp_account`); else that of the recipient's mapping (forwarded mail); else `[domain:<sender
   domain>]`; else `default_domain`; else `[domain:*]`; else EX_CONFIG naming the sender. A route
   with `enabled = false` is skipped with a step saying so. Recipients are grouped per route.
5. Envelope sender per route (SPEC §4.5): the sender is kept when the route may send as it (it is
   the route's relay_account or username; the sender's mapping or `[user:] domain` names this
   route; the route has no relay_account; the null sender; or, on relays that accept any address of
   their domain, the sender's domain is the route's or its account's). Otherwise the envelope
   sender becomes the recipient mapping's `smtp_account` when the route owns it, else the route's
   `relay_account`, and:
   - on relays that refuse or silently replace a foreign From (Gmail, Microsoft 365, SES, OCI,
     SendGrid: `_OWN_FROM_RELAYS`), From is set to that account and Reply-To to the author
     (`RouteGroup.header_from` / `reply_to`);
   - elsewhere From is kept (it names the author) and Reply-To left alone (both None).
"""

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from ssmtp_mailer import addresses as addr
from ssmtp_mailer import patterns as pat
from ssmtp_mailer.config.model import Config, DomainConfig, MappingConfig, UserConfig
from ssmtp_mailer.errors import ConfigError, NoPermError

# Relays that refuse (550 / SendAsDenied) or silently replace a From their account may not use.
_OWN_FROM_RELAYS = (
    "gmail.com",
    "googlemail.com",
    "amazonaws.com",
    "office365.com",
    "outlook.com",
    "oraclecloud.com",
    "sendgrid.net",
)


class RouteGroup(NamedTuple):
    """One SMTP transaction: a route and the recipients it carries."""

    route: DomainConfig
    envelope_from: str
    recipients: tuple[str, ...]
    header_from: str | None = None
    reply_to: str | None = None


class Refusal(NamedTuple):
    """A sender or recipient refused by policy; `rule` is the deciding section's file:line."""

    address: str
    reason: str
    rule: str = ""


class Rewrite(NamedTuple):
    """One mapping applied to one address."""

    role: str
    original: str
    final: str
    mapping: str
    rule: str
    headers: bool


class Plan(NamedTuple):
    """Everything decided about one message before any connection is made."""

    sender: str
    groups: tuple[RouteGroup, ...]
    refused: tuple[Refusal, ...] = ()
    # Read-only: every Plan built without rewrites shares this one empty mapping.
    address_rewrites: Mapping[str, str] = MappingProxyType({})
    steps: tuple[str, ...] = ()
    original_sender: str = ""
    rewrites: tuple[Rewrite, ...] = ()
    sender_refusal: Refusal | None = None
    sender_rule: str = ""


class _Index:
    """Lookup tables built once per Config, so planning never scans the mappings."""

    # A plain class: a dataclass would be generated at every import, and this one is private.
    __slots__ = ("accounts", "allowed", "mappings", "plans", "routes", "users")

    def __init__(
        self,
        *,
        mappings: pat.PatternIndex[MappingConfig],
        users: pat.PatternIndex[UserConfig],
        routes: dict[str, DomainConfig],
        accounts: dict[str, DomainConfig],
    ) -> None:
        self.mappings = mappings
        self.users = users
        self.routes = routes
        self.accounts = accounts
        self.allowed: dict[int, tuple[frozenset[str], pat.PatternIndex[None]]] = {}
        # (sender, recipients) -> its Plan: a daemon plans the same few envelopes all day
        # (the listener at RCPT, then again for the message).
        self.plans: dict[tuple[str, tuple[str, ...], bool], Plan] = {}


# Config holds a dict, so it is unhashable, and a tuple cannot be weakly referenced: cache by id.
# Each entry keeps its Config alive, so no other object can take that id while it is cached;
# only the most recent few are kept, so a process building many configs does not grow.
_INDEX_ENTRIES = 8
PLANS_KEPT = 4096
_INDEXES: dict[int, tuple[Config, _Index]] = {}


def _index(config: Config) -> _Index:
    cached = _INDEXES.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    index = _build_index(config)
    if len(_INDEXES) >= _INDEX_ENTRIES:
        del _INDEXES[next(iter(_INDEXES))]
    _INDEXES[id(config)] = (config, index)
    return index


def _build_index(config: Config) -> _Index:
    hostname = config.global_.default_hostname
    problems: list[str] = []
    mappings: list[tuple[pat.Pattern, MappingConfig]] = []
    for mapping in config.mappings:
        try:
            mappings.append((pat.parse_mapping(mapping.from_pattern, mapping.to_pattern), mapping))
        except ValueError as exc:
            problems.append(f"{mapping.location}: [mapping:{mapping.name}]: {exc}")
    users: list[tuple[pat.Pattern, UserConfig]] = []
    for user in config.users:
        try:
            users.append((pat.parse_pattern(user.address), user))
        except ValueError as exc:
            problems.append(f"{user.location}: [user:{user.address}]: {exc}")
    if problems:
        raise ConfigError("configuration", "invalid patterns", problems=problems)
    routes = {addr.domain_key(name): route for name, route in config.domains.items()}
    accounts: dict[str, DomainConfig] = {}
    for route in config.domains.values():
        for account in (route.relay_account, route.username):
            if account:
                accounts.setdefault(account.lower(), route)
    return _Index(
        mappings=pat.PatternIndex(mappings, hostname),
        users=pat.PatternIndex(users, hostname),
        routes=routes,
        accounts=accounts,
    )


def _allowed(
    index: _Index, section: UserConfig | MappingConfig, hostname: str
) -> tuple[frozenset[str], pat.PatternIndex[None]]:
    """The section's allowed_domains keys and allowed_recipients patterns, parsed once."""
    cached = index.allowed.get(id(section))
    if cached is not None:
        return cached
    domains = getattr(section, "allowed_domains", ())
    items: list[tuple[pat.Pattern, None]] = []
    for text in section.allowed_recipients:
        try:
            items.append((pat.parse_pattern(text), None))
        except ValueError as exc:
            raise ConfigError(
                str(section.location), f"allowed_recipients: {exc}", problems=()
            ) from None
    result = (frozenset(addr.domain_key(d) for d in domains), pat.PatternIndex(items, hostname))
    index.allowed[id(section)] = result
    return result


def _label(section: UserConfig | MappingConfig | DomainConfig) -> str:
    if isinstance(section, UserConfig):
        return f"[user:{section.address}] ({section.location})"
    if isinstance(section, MappingConfig):
        return f"[mapping:{section.name}] ({section.location})"
    return f"[domain:{section.name}] ({section.location})"


def _rewrite(index: _Index, address: str, hostname: str) -> tuple[MappingConfig, str] | None:
    # Only well-formed mailboxes are rewritten, so a `*` local part never carries junk along.
    if not address or not addr.is_valid_address(address):
        return None
    found = index.mappings.match(address)
    if found is None:
        return None
    mapping = found[1]
    return mapping, pat.apply_target(mapping.to_pattern, address, hostname)


def _user_for(index: _Index, *addresses: str) -> UserConfig | None:
    for address in addresses:
        found = index.users.match(address)
        if found is not None:
            return found[1]
    return None


def _mapping_route(index: _Index, mapping: MappingConfig, steps: list[str]) -> DomainConfig | None:
    """The enabled route a mapping names through `domain` or `smtp_account`, else None."""
    route: DomainConfig | None = None
    if mapping.domain:
        route = index.routes.get(addr.domain_key(mapping.domain))
    elif mapping.smtp_account:
        route = index.accounts.get(mapping.smtp_account.lower())
    if route is None:
        return None
    if not route.enabled:
        steps.append(f"skipped {_label(route)} named by {_label(mapping)}: enabled = false")
        return None
    return route


def _fallback_route(
    config: Config, index: _Index, sender: str, steps: list[str]
) -> tuple[DomainConfig | None, str]:
    """SPEC §4.4 after mappings: sender-domain section, default_domain, `*`; and what was tried."""
    tried: list[str] = []
    candidates: list[tuple[str, str]] = []
    if sender:
        domain = addr.split_address(sender)[1]
        candidates.append((domain, f"named after the sender's domain {domain}"))
    else:  # the null sender is MAILER-DAEMON@default_hostname, for routing as for policy
        domain = config.global_.default_hostname
        candidates.append((domain, f"named after default_hostname {domain}, for <>"))
    if config.global_.default_domain:
        candidates.append((config.global_.default_domain, "default_domain"))
    candidates.append(("*", "the catch-all"))
    for name, why in candidates:
        route = index.routes.get(addr.domain_key(name))
        if route is None:
            tried.append(f"no [domain:{name}]" if name != "*" else "no [domain:*]")
            continue
        if not route.enabled:
            steps.append(f"skipped {_label(route)} ({why}): enabled = false")
            tried.append(f"[domain:{route.name}] disabled")
            continue
        return route, why
    if not config.global_.default_domain:
        tried.insert(-1, "no default_domain")
    return None, ", ".join(tried)


def _route_accounts(route: DomainConfig) -> set[str]:
    return {a.lower() for a in (route.relay_account, route.username) if a}


def demands_own_from(route: DomainConfig) -> bool:
    """True when the route's relay refuses or replaces a From its account may not use."""
    host = (route.smtp_server or "").lower().rstrip(".")
    return any(host == s or host.endswith("." + s) for s in _OWN_FROM_RELAYS)


def _may_send_as(
    route: DomainConfig,
    sender: str,
    sender_user: UserConfig | None,
    sender_mapping_route: DomainConfig | None,
) -> str | None:
    """Why the route may send as `sender` (so it stays the envelope sender), or None."""
    if not sender:
        return "the null sender is kept (RFC 5321 §4.5.5)"
    if not route.relay_account:
        return "the route has no relay_account to send as instead"
    if sender.lower() in _route_accounts(route):
        return "it is the route's account"
    if sender_mapping_route is route:
        return "the sender's mapping names this route"
    if (
        sender_user
        and sender_user.domain
        and (addr.domain_key(sender_user.domain) == addr.domain_key(route.name))
    ):
        return f"{_label(sender_user)} names this route"
    if not demands_own_from(route):
        own = {addr.domain_key(route.name)} | {
            addr.domain_key(addr.split_address(a)[1]) for a in _route_accounts(route) if "@" in a
        }
        if addr.domain_key(addr.split_address(sender)[1]) in own:
            return "its domain is the route's"
    return None


def _identity(
    route: DomainConfig,
    sender: str,
    sender_user: UserConfig | None,
    sender_mapping_route: DomainConfig | None,
    recipient_mapping: MappingConfig | None,
) -> tuple[str, str | None, str | None, str]:
    """(envelope_from, header_from, reply_to, explanation) for one route (SPEC §4.5)."""
    why = _may_send_as(route, sender, sender_user, sender_mapping_route)
    if why is not None:
        return sender, None, None, f"envelope sender {sender or '<>'} kept: {why}"
    assert route.relay_account is not None
    account = route.relay_account
    source = "relay_account"
    if (
        recipient_mapping is not None
        and recipient_mapping.smtp_account
        and recipient_mapping.smtp_account.lower() in _route_accounts(route)
    ):
        account = recipient_mapping.smtp_account
        source = f"smtp_account of {_label(recipient_mapping)}"
    said = (
        f"envelope sender becomes {account} ({source}): [domain:{route.name}] sends as its"
        f" own account, not as {sender}"
    )
    if demands_own_from(route):
        return (
            account,
            account,
            sender,
            (
                f"{said}; From replaced by {account} and Reply-To set to {sender} unless the"
                f" message has one ({route.smtp_server} refuses a foreign From)"
            ),
        )
    return account, None, None, f"{said}; From kept (names the author), Reply-To untouched"


def _recipient_refusal(
    index: _Index,
    hostname: str,
    sender_user: UserConfig | None,
    sender_mapping: MappingConfig | None,
    given: str,
    final: str,
) -> Refusal | None:
    candidates = (given, final) if given != final else (given,)
    if sender_user is not None:
        domains, recipients = _allowed(index, sender_user, hostname)
        if domains and not any(
            addr.domain_key(addr.split_address(c)[1]) in domains for c in candidates
        ):
            return Refusal(
                given,
                f"domain not in allowed_domains ({', '.join(sender_user.allowed_domains)})"
                f" of [user:{sender_user.address}]",
                str(sender_user.location),
            )
        if sender_user.allowed_recipients and not any(recipients.match(c) for c in candidates):
            return Refusal(
                given,
                f"not in allowed_recipients of [user:{sender_user.address}]",
                str(sender_user.location),
            )
    if sender_mapping is not None and sender_mapping.allowed_recipients:
        recipients = _allowed(index, sender_mapping, hostname)[1]
        if not any(recipients.match(c) for c in candidates):
            return Refusal(
                given,
                f"not in allowed_recipients of [mapping:{sender_mapping.name}]",
                str(sender_mapping.location),
            )
    receiver = _user_for(index, *candidates)
    if receiver is not None and not receiver.can_send_to:
        return Refusal(
            given,
            f"may not receive mail ([user:{receiver.address}] can_send_to = false)",
            str(receiver.location),
        )
    return None


def _sender_refusal(
    config: Config, user: UserConfig | None, sender: str, policy_address: str
) -> Refusal | None:
    if user is not None:
        if not user.enabled:
            return Refusal(sender, f"[user:{user.address}] is disabled", str(user.location))
        if not user.can_send_from:
            return Refusal(
                sender,
                f"may not send ([user:{user.address}] can_send_from = false)",
                str(user.location),
            )
        return None
    if config.global_.users_required:
        where = config.global_.location_of("users_required") or config.main_file
        return Refusal(
            sender,
            f"no [user:] section matches {policy_address} and users_required = true",
            str(where),
        )
    return None


def explain_delivery(
    config: Config, sender: str, recipients: Sequence[str], *, foreign: bool = False
) -> Plan:
    """The plan with every decision; policy refusals are recorded, not raised (for `route`).

    `foreign`: the message came from a client of the listener outside allowed_networks
    that did not log in. Its sender is not masqueraded: a mapping such as `root` →
    `alerts@example.com` would give anyone on the internet our own From (Postfix
    rewrites the headers of local clients only).

    Pure, so each configuration remembers the plans it made (a few thousand).
    """
    index = _index(config)
    key = (sender, tuple(recipients), foreign)
    plan = index.plans.get(key)
    if plan is None:
        plan = _explain(config, index, sender, key[1], foreign)
        if len(index.plans) >= PLANS_KEPT:
            index.plans.clear()
        index.plans[key] = plan
    return plan


def _explain(
    config: Config, index: _Index, sender: str, recipients: tuple[str, ...], foreign: bool
) -> Plan:
    hostname = config.global_.default_hostname
    steps: list[str] = []
    rewrites: list[Rewrite] = []
    header_map: dict[str, str] = {}

    def record(role: str, given: str, hit: tuple[MappingConfig, str] | None) -> str:
        if hit is None:
            steps.append(f"{role} {given or '<>'}: no mapping matches")
            return given
        mapping, final = hit
        where = "envelope and headers" if mapping.rewrite_headers else "envelope only"
        steps.append(f"{role} {given}: {_label(mapping)} rewrites it to {final} ({where})")
        rewrites.append(
            Rewrite(
                role, given, final, mapping.name, str(mapping.location), mapping.rewrite_headers
            )
        )
        if mapping.rewrite_headers and final != given:
            header_map.setdefault(given, final)
        return final

    if foreign:
        steps.append(f"sender {sender or '<>'}: from outside, not rewritten")
        sender_hit, final_sender = None, sender
    else:
        sender_hit = _rewrite(index, sender, hostname)
        final_sender = record("sender", sender, sender_hit)
    sender_mapping = sender_hit[0] if sender_hit else None

    given_recipients: list[tuple[str, str, MappingConfig | None]] = []
    for recipient in recipients:
        hit = _rewrite(index, recipient, hostname)
        mapping = hit[0] if hit else None
        given_recipients.append((recipient, record("recipient", recipient, hit), mapping))

    policy_given = sender or f"{addr.NULL_SENDER_NAME}@{hostname}"
    policy_final = final_sender or policy_given
    sender_user = _user_for(index, policy_given, policy_final)
    if sender_user is not None:
        steps.append(f"policy: {_label(sender_user)} applies to the sender")
    refusal = _sender_refusal(config, sender_user, sender, policy_given)
    sender_rule = str(sender_user.location) if sender_user else ""
    if refusal is not None:
        steps.append(f"policy: sender {sender or '<>'} refused: {refusal.reason} ({refusal.rule})")
        return Plan(
            sender=final_sender,
            groups=(),
            address_rewrites=header_map,
            steps=tuple(steps),
            original_sender=sender,
            rewrites=tuple(rewrites),
            sender_refusal=refusal,
            sender_rule=refusal.rule,
        )

    sender_route = _mapping_route(index, sender_mapping, steps) if sender_mapping else None
    fallback: tuple[DomainConfig | None, str] | None = None
    refused: list[Refusal] = []
    refused_seen: set[str] = set()
    delivered: set[tuple[str, str]] = set()
    groups: dict[tuple[str, str, str | None, str | None], list[str]] = {}
    group_routes: dict[tuple[str, str, str | None, str | None], DomainConfig] = {}
    explained: set[tuple[str, str]] = set()
    for given, final, mapping in given_recipients:
        denial = _recipient_refusal(index, hostname, sender_user, sender_mapping, given, final)
        if denial is not None:
            if given not in refused_seen:
                refused_seen.add(given)
                refused.append(denial)
                steps.append(f"policy: recipient {given} refused: {denial.reason} ({denial.rule})")
            continue
        key = addr.address_key(final)
        if key in delivered:
            steps.append(f"recipient {given}: {final} is already a recipient")
            continue
        delivered.add(key)
        route = sender_route
        why = "the sender's mapping"
        if route is None and mapping is not None:
            route, why = _mapping_route(index, mapping, steps), f"{_label(mapping)} (forwarded)"
        if route is None:
            if fallback is None:
                fallback = _fallback_route(config, index, final_sender, steps)
            route, why = fallback
            if route is None:
                raise ConfigError(
                    final_sender or "<>",
                    f"no route for this sender ({fallback[1]})",
                    hint="add a [domain:] section for the sender's domain, set default_domain"
                    " in [global], or add a [domain:*] catch-all",
                )
        envelope, header_from, reply_to, how = _identity(
            route, final_sender, sender_user, sender_route, mapping
        )
        steps.append(f"route for {final}: {_label(route)} via {why}")
        group_key = (route.name, envelope, header_from, reply_to)
        if (route.name, how) not in explained:
            explained.add((route.name, how))
            steps.append(f"[domain:{route.name}]: {how}")
        groups.setdefault(group_key, []).append(final)
        group_routes[group_key] = route

    plan_groups = tuple(
        RouteGroup(
            route=group_routes[key],
            envelope_from=key[1],
            recipients=tuple(finals),
            header_from=key[2],
            reply_to=key[3],
        )
        for key, finals in groups.items()
    )
    return Plan(
        sender=final_sender,
        groups=plan_groups,
        refused=tuple(refused),
        address_rewrites=header_map,
        steps=tuple(steps),
        original_sender=sender,
        rewrites=tuple(rewrites),
        sender_rule=sender_rule,
    )


def plan_delivery(
    config: Config, sender: str, recipients: Sequence[str], *, foreign: bool = False
) -> Plan:
    """The plan for one message; NoPermError if the sender or every recipient is refused.

    `foreign`: explain_delivery.
    """
    plan = explain_delivery(config, sender, recipients, foreign=foreign)
    refusal = plan.sender_refusal
    if refusal is not None:
        raise NoPermError(
            refusal.address or "<>",
            f"{refusal.reason} ({refusal.rule})",
            hint="see `ssmtp-mailer route --from ADDRESS --to ...` for every decision",
        )
    if plan.refused and not plan.groups:
        raise NoPermError(
            "recipients",
            "; ".join(f"{r.address}: {r.reason} ({r.rule})" for r in plan.refused),
        )
    return plan


def accepts_from_anywhere(config: Config, recipient: str) -> bool:
    """SPEC §8: a recipient any client may write to (a mapping's from_pattern, a [user:] that
    may receive), so the listener relays for it without being an open relay.

    A `[user:]` counts only where it names its domain: `[user:nagios@*]` says what nagios
    may send as, and taken as "may receive" it would relay to nagios at every domain. (A
    mapping always names the domain it delivers to.)
    """
    # A local part that routes on (`a%b@here`, `b!a@here`, `"a@b"@here`) would make the
    # next hop a relay for the outsider (Postfix: allow_untrusted_routing = no).
    if any(c in recipient.rpartition("@")[0] for c in "%!@"):
        return False
    index = _index(config)
    if addr.is_valid_address(recipient) and index.mappings.match(recipient) is not None:
        return True
    user = _user_for(index, recipient)
    if user is None or not user.enabled or not user.can_send_to:
        return False
    pattern = pat.parse_pattern(user.address)
    return pattern.domain is not None or pattern.bare


def user_of(config: Config, address: str) -> UserConfig | None:
    """The first `[user:]` whose pattern matches `address`."""
    return _user_for(_index(config), address)


def user_for_login(config: Config, login: str) -> UserConfig | None:
    """The enabled `[user:]` with an `smtp_password_hash` whose address is `login` exactly."""
    wanted = login.lower()
    for user in config.users:
        if user.smtp_password_hash and user.enabled and user.address.lower() == wanted:
            return user
    return None


def owned_by_a_login(config: Config, sender: str) -> bool:
    """Whether `sender`, however spelled (quotes, case, IDN, a bare name), is an address
    of a `[user:]` that sends by logging in (`smtp_password_hash`), as its pattern says."""
    return any(
        user.enabled and user.smtp_password_hash and user_allows_sender(config, user, sender)
        for user in config.users
    )


def user_allows_sender(config: Config, user: UserConfig, sender: str) -> bool:
    """True when `sender` is the `[user:]`'s own address or one its pattern covers."""
    items = [(pat.parse_pattern(user.address), None)]
    return pat.PatternIndex(items, config.global_.default_hostname).match(sender) is not None
