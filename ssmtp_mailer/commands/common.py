"""Options every subcommand shares, and the settings they fill in."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from ssmtp_mailer.config.model import Config

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """What the shared options said, wherever on the command line they were given."""

    config_path: str | None = None
    verbose: int = 0


def settings() -> Settings:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def _set_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        settings().config_path = value


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    settings().verbose += value


def common_options(func: F) -> F:
    """`--config/-C PATH` and `-v/--verbose`, accepted on the group and on every command."""
    func = click.option(
        "-C",
        "--config",
        "config_path",
        metavar="PATH",
        expose_value=False,
        callback=_set_config,
        help="Configuration file (default: $SSMTP_MAILER_CONFIG, user, then system file).",
    )(func)
    func = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_set_verbose,
        help="Say more (SMTP transcript, tracebacks).",
    )(func)
    return func


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def load(strict: bool = False) -> Config:
    from ssmtp_mailer.config.loader import load_config

    return load_config(settings().config_path, strict=strict)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
