"""Rewriting, routing and sender policy (SPEC §4): pure, returns a Plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ssmtp_mailer.config.model import Config, DomainConfig
from ssmtp_mailer.errors import ConfigError


@dataclass(frozen=True)
class RouteGroup:
    """One SMTP transaction: a route and the recipients it carries."""

    route: DomainConfig
    envelope_from: str
    recipients: tuple[str, ...]
    header_from: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True)
class Refusal:
    address: str
    reason: str
    rule: str = ""


@dataclass(frozen=True)
class Plan:
    sender: str
    groups: tuple[RouteGroup, ...]
    refused: tuple[Refusal, ...] = ()
    address_rewrites: dict[str, str] = field(default_factory=dict)
    steps: tuple[str, ...] = ()


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def plan_delivery(config: Config, sender: str, recipients: Sequence[str]) -> Plan:
    """Route every recipient through the sender's route (mappings come with SPEC §4)."""
    route = (
        config.domains.get(_domain_of(sender))
        or config.domains.get((config.global_.default_domain or "").lower())
        or config.domains.get("*")
    )
    if route is None or not route.enabled:
        raise ConfigError(sender or "<>", "no route for this sender (no [domain:] matches it)")
    return Plan(sender=sender, groups=(RouteGroup(route, sender, tuple(recipients)),))
