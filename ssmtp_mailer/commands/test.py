"""`ssmtp-mailer test [--domain NAME] [--to ADDR] [--json]`: check the relay routes step by step."""

from __future__ import annotations

import click

from ssmtp_mailer.commands.common import common_options, json_option, load, print_json, settings
from ssmtp_mailer.commands.route import server_text
from ssmtp_mailer.config.model import Config, DomainConfig
from ssmtp_mailer.errors import ConfigError, UsageError


def _routes(config: Config, name: str | None) -> list[DomainConfig]:
    if name is None:
        routes = [r for r in config.domains.values() if r.enabled]
        if not routes:
            raise ConfigError("test", "no enabled [domain:] route to check")
        return routes
    route = config.domains.get(name.lower())
    if route is None:
        known = ", ".join(sorted(config.domains)) or "none"
        raise ConfigError(f"[domain:{name}]", f"no such route (routes: {known})")
    return [route]


@click.command("test")
@common_options
@click.option("--domain", "domain", metavar="NAME", help="Check only this route.")
@click.option("--to", "to", metavar="ADDR", help="Also send a test message to ADDR.")
@json_option
def test_command(domain: str | None, to: str | None, as_json: bool) -> int:
    """Check each route: DNS, connect, banner, EHLO, TLS and certificate, AUTH (and send with --to).

    Exits 0 only when every route checked passed; otherwise with the first failure's code.
    """
    from ssmtp_mailer.relay import diagnose

    if to is not None and ("@" not in to or any(c in to for c in " \t\r\n<>")):
        raise UsageError("test --to", f"expected an address like you@example.com, got {to!r}")
    config = load()
    verbose = settings().verbose > 0
    transcript: list[str] = []

    def record(line: str) -> None:
        if as_json:
            transcript.append(line)
        else:
            click.echo(f"      {line}")

    reports = []
    for route in _routes(config, domain):
        if not as_json:
            click.echo(f"[domain:{route.name}] {server_text(route)}")
        report = diagnose.check_route(config, route, to=to, transcript=record if verbose else None)
        reports.append(report)
        if not as_json:
            for step in report.steps:
                click.echo(f"  {'ok  ' if step.ok else 'FAIL'}  {step.name}: {step.detail}")
                if step.hint:
                    click.echo(f"        hint: {step.hint}")
            shown = any("tls_fingerprint =" in (s.hint or "") for s in report.steps)
            if report.fingerprint and not shown:
                click.echo(f"  to pin this certificate: tls_fingerprint = {report.fingerprint}")
            click.echo(f"  => {'passed' if report.ok else 'FAILED'}")
    failed = [r for r in reports if not r.ok]
    if as_json:
        data = {"ok": not failed, "routes": [r.as_dict() for r in reports]}
        if verbose:
            data["transcript"] = transcript
        print_json(data)
    return failed[0].exit_code if failed else 0
