"""`ssmtp-mailer route`: every rewriting, routing and policy decision for an envelope, unsent."""

from __future__ import annotations

from typing import Any

import click

from ssmtp_mailer.addresses import NULL_SENDER_NAME, address_problem, is_null_sender, qualify
from ssmtp_mailer.commands.common import common_options, json_option, load, print_json
from ssmtp_mailer.config.model import AuthMethod, Config, DeliveryMode, DomainConfig
from ssmtp_mailer.errors import NoPermError, UsageError
from ssmtp_mailer.message import parse_addresses, split_recipients
from ssmtp_mailer.rewrite import Plan, RouteGroup, explain_delivery


def envelope_address(text: str, hostname: str, option: str = "--to") -> str:
    """An address as the intake takes it: display names dropped, bare names qualified, and
    refused (exit 64) where the intake would refuse it."""
    text = text.strip()
    if is_null_sender(text) or text.upper() == NULL_SENDER_NAME:
        return ""
    boxes = [box.address for box in parse_addresses(text) if box.address]
    if len(boxes) != 1:
        raise UsageError(f"{option} {text!r}", "give exactly one address")
    address = qualify(boxes[0], hostname)
    problem = address_problem(address)
    if problem:
        raise UsageError(f"{option} {text!r}", problem)
    return address


def tls_mode(route: DomainConfig) -> str:
    """How the connection is protected, in words."""
    if route.use_ssl:
        mode = "implicit TLS"
    elif route.use_starttls:
        mode = "STARTTLS"
    else:
        return "none (plaintext)"
    if route.tls_fingerprint:
        return f"{mode}, certificate pinned by fingerprint"
    if not route.tls_verify:
        return f"{mode}, certificate NOT verified"
    return f"{mode}, certificate verified"


def auth_text(route: DomainConfig) -> str:
    """The auth method and user; never a secret (none is resolved)."""
    if route.auth_method == AuthMethod.NONE:
        return "none"
    user = f" as {route.username}" if route.username else ""
    return f"{route.auth_method.value}{user}"


def server_text(route: DomainConfig) -> str:
    direct = f"MX of each recipient domain, port {route.direct_port}"
    if route.delivery_mode == DeliveryMode.DIRECT:
        return f"{direct} (direct delivery)"
    server = f"{route.smtp_server}:{route.smtp_port}"
    if route.delivery_mode == DeliveryMode.HYBRID:
        server = f"{direct}; the relay {server} when they defer (hybrid)"
    return server


def direct_tls_text(route: DomainConfig) -> str:
    if route.direct_tls.value == "verify":
        return "STARTTLS with a verified certificate required (direct_tls = verify)"
    return (
        "STARTTLS when offered; certificate verified only under an MTA-STS enforce policy"
        " (direct_tls = opportunistic)"
    )


def mx_preview(config: Config, plan: Plan) -> list[dict[str, str]]:
    """Per group, the MX hosts a direct or hybrid route would try now (DNS lookups)."""
    if all(g.route.delivery_mode == DeliveryMode.RELAY for g in plan.groups):
        return [{} for _ in plan.groups]
    from ssmtp_mailer.relay import direct

    return [direct.preview(config, g.route, g.recipients) for g in plan.groups]


def group_data(group: RouteGroup, mx: dict[str, str] | None = None) -> dict[str, Any]:
    route = group.route
    direct = route.delivery_mode != DeliveryMode.RELAY
    return {
        "mx": mx or {},
        "direct_port": route.direct_port if direct else None,
        "direct_tls": direct_tls_text(route) if direct else None,
        "route": route.name,
        "section": str(route.location),
        "server": route.smtp_server,
        "port": route.smtp_port,
        "delivery_mode": route.delivery_mode.value,
        "fallback_servers": [str(f) for f in route.fallback_servers],
        "tls": tls_mode(route),
        "auth_method": route.auth_method.value,
        "username": route.username,
        "envelope_from": group.envelope_from,
        "recipients": list(group.recipients),
        "header_from": group.header_from,
        "reply_to": group.reply_to,
    }


def verdict(plan: Plan) -> str:
    if plan.sender_refusal is not None:
        return "refused"
    if plan.refused:
        return "refused" if not plan.groups else "partly refused"
    return "allowed"


def plan_data(
    plan: Plan, recipients: list[str], mx: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    mx = mx or [{} for _ in plan.groups]
    return {
        "sender": {"given": plan.original_sender, "final": plan.sender},
        "recipients": recipients,
        "mappings": [
            {
                "role": r.role,
                "address": r.original,
                "rewritten": r.final,
                "mapping": r.mapping,
                "section": r.rule,
                "headers": r.headers,
            }
            for r in plan.rewrites
        ],
        "header_rewrites": dict(plan.address_rewrites),
        "routes": [group_data(g, m) for g, m in zip(plan.groups, mx, strict=True)],
        "policy": {
            "verdict": verdict(plan),
            "sender_rule": plan.sender_rule,
            "sender_refused": (
                {"reason": plan.sender_refusal.reason, "rule": plan.sender_refusal.rule}
                if plan.sender_refusal
                else None
            ),
            "refused": [
                {"address": r.address, "reason": r.reason, "rule": r.rule} for r in plan.refused
            ],
        },
        "steps": list(plan.steps),
    }


def plan_text(plan: Plan, mx: list[dict[str, str]] | None = None) -> list[str]:
    mx = mx or [{} for _ in plan.groups]
    lines = [f"sender: {plan.original_sender or '<>'}"]
    if plan.sender != plan.original_sender:
        lines[0] += f" -> {plan.sender}"
    lines.append("mappings:")
    lines.extend(
        f"  [mapping:{r.mapping}] {r.rule}: {r.role} {r.original} -> {r.final}"
        + ("" if r.headers else " (envelope only)")
        for r in plan.rewrites
    )
    if not plan.rewrites:
        lines.append("  none matched")
    lines.append("header changes:")
    lines.extend(f"  {old} -> {new} (From/To/Cc)" for old, new in plan.address_rewrites.items())
    for group in plan.groups:
        if group.header_from:
            lines.append(f"  From: {group.header_from} (route [domain:{group.route.name}])")
        if group.reply_to:
            lines.append(f"  Reply-To: {group.reply_to} (route [domain:{group.route.name}])")
    if len(lines) and lines[-1] == "header changes:":
        lines.append("  none")
    lines.append("routes:")
    for group, hosts in zip(plan.groups, mx, strict=True):
        route = group.route
        lines.append(f"  [domain:{route.name}] {route.location}")
        lines.append(f"    server: {server_text(route)}")
        lines.extend(f"    MX {domain}: {text}" for domain, text in hosts.items())
        if route.delivery_mode != DeliveryMode.RELAY:
            lines.append(f"    direct tls: {direct_tls_text(route)}")
        if route.delivery_mode != DeliveryMode.DIRECT:  # the relay's settings
            if route.fallback_servers:
                fallbacks = ", ".join(str(f) for f in route.fallback_servers)
                lines.append(f"    fallback: {fallbacks}")
            relay = "relay " if route.delivery_mode == DeliveryMode.HYBRID else ""
            lines.append(f"    {relay}tls: {tls_mode(route)}")
            lines.append(f"    {relay}auth: {auth_text(route)}")
        lines.append(f"    MAIL FROM:<{group.envelope_from}>")
        lines.extend(f"    RCPT TO:<{r}>" for r in group.recipients)
    if not plan.groups:
        lines.append("  none")
    lines.append(f"policy: {verdict(plan)}")
    if plan.sender_refusal is not None:
        r = plan.sender_refusal
        lines.append(f"  sender {r.address or '<>'}: {r.reason} ({r.rule})")
    elif plan.sender_rule:
        lines.append(f"  sender section: {plan.sender_rule}")
    lines.extend(f"  refused {r.address}: {r.reason} ({r.rule})" for r in plan.refused)
    lines.append("decisions:")
    lines.extend(f"  {n}. {step}" for n, step in enumerate(plan.steps, start=1))
    return lines


def refusal_error(plan: Plan) -> NoPermError | None:
    """The error for this plan's policy verdict, if any: sendmail exits 77 for any refusal."""
    r = plan.sender_refusal
    if r is not None:
        return NoPermError(r.address or "<>", f"{r.reason} ({r.rule})")
    if plan.refused:
        return NoPermError(
            "recipients", "; ".join(f"{x.address}: {x.reason} ({x.rule})" for x in plan.refused)
        )
    return None


def route_plan(config: Config, sender: str | None, recipients: list[str]) -> tuple[Plan, list[str]]:
    """Qualify the envelope as the intake does, then plan it."""
    hostname = config.global_.default_hostname
    envelope_from = envelope_address(
        config.global_.default_from if sender is None else sender, hostname, "--from"
    )
    to = [envelope_address(r, hostname) for r in recipients]
    if any(not r for r in to):
        raise UsageError("route", "--to needs an address, not the null sender")
    return explain_delivery(config, envelope_from, to), to


@click.command("route")
@common_options
@json_option
@click.option(
    "--from",
    "-f",
    "sender",
    metavar="ADDRESS",
    help="Envelope sender (default: default_from; '<>' for the null sender).",
)
@click.option(
    "--to",
    "-t",
    "recipients",
    metavar="ADDRESS",
    multiple=True,
    required=True,
    help="Recipient; repeat or separate with commas.",
)
def route_command(as_json: bool, sender: str | None, recipients: tuple[str, ...]) -> int:
    """Show how a message would be rewritten, routed and allowed, without sending it."""
    config = load()
    # As sendmail reads its arguments: `"Doe, John" <j@x>` is one address, not two.
    wanted = split_recipients(recipients)
    if not wanted:
        raise UsageError("--to", "no recipients")
    plan, to = route_plan(config, sender, wanted)
    mx = mx_preview(config, plan)
    if as_json:
        print_json(plan_data(plan, to, mx))
    else:
        click.echo("\n".join(plan_text(plan, mx)))
    error = refusal_error(plan)
    if error is not None:
        raise error
    return 0
