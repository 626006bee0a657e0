"""`ssmtp-mailer password set|delete NAME`: route passwords in the system keyring;
`password hash`: an `smtp_password_hash` for AUTH to the listener."""

from __future__ import annotations

import sys

import click

from ssmtp_mailer import errors
from ssmtp_mailer.commands.common import common_options, load
from ssmtp_mailer.config import secrets
from ssmtp_mailer.config.model import DomainConfig
from ssmtp_mailer.errors import ConfigError, UsageError


@click.group("password")
@common_options
def password_group() -> None:
    """Store route passwords in the keyring (service `ssmtp-mailer`, key = route name)."""


def _route(name: str) -> DomainConfig:
    config = load()
    route = config.domains.get(name.lower())
    if route is None:
        known = ", ".join(sorted(config.domains)) or "none"
        raise ConfigError(f"[domain:{name}]", f"no such route (routes: {known})")
    return route


def _route_name(name: str) -> str:
    return _route(name).name


@password_group.command("set")
@common_options
@click.argument("name")
def set_password(name: str) -> None:
    """Prompt for NAME's password without echo (or read one line from stdin) and store it."""
    route = _route(name)
    key = route.name
    # The keyring is read only when the route has neither (relay/engine.py Credentials).
    unused = "password" if route.password is not None else None
    unused = unused or ("password_command" if route.password_command is not None else None)
    if unused is not None:
        where = f"{route.location}: [domain:{key}]"
        errors.report(f"warning: {where} has {unused}, which is used instead of the keyring")
    if sys.stdin.isatty():
        secret = click.prompt(
            f"Password for [domain:{key}]", hide_input=True, confirmation_prompt=True
        )
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise UsageError("password set", "empty password, nothing stored")
    secrets.keyring_set(key, secret)
    click.echo(f"stored the password for [domain:{key}] in the keyring")


@password_group.command("delete")
@common_options
@click.argument("name")
def delete_password(name: str) -> int:
    """Remove NAME's password from the keyring."""
    key = _route_name(name)
    if not secrets.keyring_delete(key):
        raise UsageError(
            f"password delete {key}",
            "no password stored in the keyring under this name",
            hint="the name is the route's, as in [domain:NAME]",
        )
    click.echo(f"deleted the password for [domain:{key}] from the keyring")
    return 0


@password_group.command("hash")
@common_options
def hash_password() -> None:
    """Prompt for a password without echo (or read one line from stdin) and print its
    scrypt hash, for `smtp_password_hash` in a [user:] section."""
    from ssmtp_mailer import passhash

    if sys.stdin.isatty():
        secret = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise UsageError("password hash", "empty password, nothing to hash")
    click.echo(passhash.hash_password(secret))
