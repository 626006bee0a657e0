"""`ssmtp-mailer dns check`: are a domain's mail records right for how it sends?"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import click

from ssmtp_mailer.commands.common import common_options, json_option, print_json, settings
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import ConfigError, UsageError

_MARKS = {"ok": "ok  ", "fail": "FAIL", "warn": "warn", "skip": " -- "}


@click.group("dns")
@common_options
def dns_group() -> None:
    """Check the DNS records a sending domain needs."""


def _config(route: str | None) -> Config | None:
    """The configuration, or None when there is none and no route was asked for."""
    from ssmtp_mailer.config.loader import find_config_file, load_config_file

    try:
        path = find_config_file(settings().config_path)
    except ConfigError:
        if route is not None or settings().config_path is not None:
            raise
        return None
    return load_config_file(path)


@dns_group.command("check")
@common_options
@json_option
@click.argument("domain")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    help="DKIM selector to check (repeatable; default: the route's dkim_selector).",
)
@click.option("--ip", help="The address mail leaves from: SPF must allow it, its PTR must match.")
@click.option("--route", help="The [domain:NAME] route whose relay and keys to check against.")
def check(
    as_json: bool, domain: str, selectors: tuple[str, ...], ip: str | None, route: str | None
) -> int:
    """Check MX, SPF, DKIM, DMARC, PTR, MTA-STS and TLS-RPT; exit 1 if a required check fails."""
    from ssmtp_mailer import dnscheck
    from ssmtp_mailer.config.values import parse_mail_domain, parse_selectors

    try:
        domain = parse_mail_domain(domain)
    except ValueError as exc:
        raise UsageError("DOMAIN", str(exc)) from None
    if ip is not None:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise UsageError("--ip", f"expected an IP address, got {ip!r}") from None
    try:
        wanted = [s for text in selectors for s in parse_selectors(text)]
    except ValueError as exc:
        raise UsageError("--selector", str(exc)) from None
    config = _config(route)
    domain_config = None
    if config is not None:
        name = (route or domain).lower()
        domain_config = config.domains.get(name)
        if route is not None and domain_config is None:
            known = ", ".join(sorted(config.domains)) or "none"
            raise ConfigError(f"--route {route}", f"no such route (routes: {known})")
    keys: dict[str, Path] = {}
    signing_domain = None
    if domain_config is not None:
        from ssmtp_mailer.relay.dkim import route_domain

        keys = dict(zip(domain_config.dkim_selector, domain_config.dkim_key_file, strict=True))
        signing_domain = route_domain(domain_config)
    chosen = wanted or list(keys)
    request = dnscheck.Request(
        domain=domain,
        selectors=tuple((s, keys.get(s)) for s in chosen),
        ip=ip,
        route=domain_config,
        servers=config.global_.dns_servers if config else (),
        ca_file=domain_config.ssl_ca_file if domain_config else None,
        dkim_domain=signing_domain,
    )
    progress = _progress if sys.stderr.isatty() and not as_json else _quiet
    report = dnscheck.run(request, progress)
    if progress is _progress:
        click.echo("\r\033[K", nl=False, err=True)
    if as_json:
        print_json(report.as_dict())
    else:
        _render(report)
    return 0 if report.ok else 1


def _progress(name: str) -> None:
    click.echo(f"\r\033[Kchecking {name}...", nl=False, err=True)


def _quiet(name: str) -> None:
    return None


def _render(report: object) -> None:
    from ssmtp_mailer.dnscheck import Report

    assert isinstance(report, Report)
    click.echo(
        f"DNS check for {report.domain} (resolvers: {', '.join(report.servers) or 'system'})"
    )
    for check in report.checks:
        optional = "" if check.required or check.status == "skip" else " (optional)"
        click.echo(f"[{_MARKS[check.status]}] {check.name}: {check.summary}{optional}")
        for line in check.details:
            click.echo(f"       {line}")
        for line in check.publish:
            click.echo(f"       publish: {line}")
    failed = [c.name for c in report.checks if c.failed]
    if failed:
        click.echo(f"{len(failed)} required check(s) failed: {', '.join(failed)}")
    else:
        click.echo("all required checks passed")
