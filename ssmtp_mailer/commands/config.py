"""`ssmtp-mailer config check|show`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ssmtp_mailer.commands.common import common_options, json_option, load, print_json, settings
from ssmtp_mailer.config.model import AuthMethod, Config
from ssmtp_mailer.errors import EX_CONFIG, ConfigError, MailerError


@click.group("config")
@common_options
def config_group() -> None:
    """Check, show or import the configuration."""


def secret_problems(config: Config, *, resolve: bool) -> list[str]:
    """Over-readable password files always; with `resolve`, every secret is fetched too."""
    from ssmtp_mailer.config import secrets

    problems: list[str] = []
    for domain in config.domains.values():
        if domain.password is not None and domain.password_location is not None:
            problem = secrets.secret_file_problem(Path(domain.password_location.path))
            if problem:
                problems.append(f"{domain.password_location}: password: {problem}")
        if not resolve or not domain.enabled:
            continue
        try:
            if domain.auth_method == AuthMethod.XOAUTH2 or (
                domain.auth_method == AuthMethod.AUTO and domain.oauth2_token_command
            ):
                secrets.resolve_oauth2_token(domain)
            elif (
                domain.auth_method != AuthMethod.NONE
                and domain.password is None
                and domain.username
                and secrets.resolve_password(domain) is None
            ):
                problems.append(
                    f"{domain.location}: [domain:{domain.name}]: no password for"
                    f" {domain.username} (no password, password_command or keyring entry;"
                    f" run: ssmtp-mailer password set {domain.name})"
                )
        except MailerError as exc:
            problems.append(f"{domain.location}: {exc.what}: {exc.why}")
    return problems


def dkim_problems(config: Config) -> list[str]:
    """Every signing route's keys are read, checked and tried on a sample message."""
    signing = [d for d in config.domains.values() if d.dkim_key_file]
    if not signing:
        return []
    from ssmtp_mailer.relay import dkim

    return [line for domain in signing for line in dkim.check_route(domain)]


@config_group.command("check")
@common_options
@json_option
@click.option("--strict", is_flag=True, help="Treat warnings (unknown keys) as errors.")
@click.option(
    "--secrets",
    "check_secrets",
    is_flag=True,
    help="Also run password commands and read the keyring.",
)
def check(as_json: bool, strict: bool, check_secrets: bool) -> int:
    """Validate the configuration; exit 78 listing every problem."""
    errors: list[str] = []
    warnings: list[str] = []
    config = None
    try:
        config = load(strict=strict)
    except ConfigError as exc:
        errors = exc.problems or [f"{exc.what}: {exc.why}"]
        warnings = exc.warnings
    if config is not None:
        warnings = list(config.warnings)
        errors = secret_problems(config, resolve=check_secrets) + dkim_problems(config)
    ok = not errors
    if as_json:
        print_json(
            {
                "ok": ok,
                "file": str(config.main_file) if config else settings().config_path,
                "errors": errors,
                "warnings": warnings,
                "files": [str(f) for f in config.files] if config else [],
            }
        )
    else:
        for line in errors:
            click.echo(f"ssmtp-mailer: {line}", err=True)
        for line in warnings:
            click.echo(f"ssmtp-mailer: warning: {line}", err=True)
        if ok and config is not None:
            click.echo(
                f"{config.main_file}: OK: {len(config.domains)} routes, {len(config.users)} users,"
                f" {len(config.mappings)} mappings in {len(config.files)} files"
            )
    return 0 if ok else EX_CONFIG


@config_group.command("show")
@common_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ini", "toml", "json"]),
    default="ini",
    show_default=True,
    help="Output format.",
)
def show(fmt: str) -> None:
    """Print the effective configuration, defaults filled in, secrets redacted."""
    from ssmtp_mailer.config import render

    config = load()
    text = {"ini": render.to_ini, "toml": render.to_toml, "json": render.to_json}[fmt](config)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
