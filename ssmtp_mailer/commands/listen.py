"""`ssmtp-mailer listen [--address HOST:PORT]…`: the SMTP listener in the foreground."""

from __future__ import annotations

import click

from ssmtp_mailer.commands.common import common_options, load
from ssmtp_mailer.config.model import Config, HostPort
from ssmtp_mailer.errors import UsageError


def _addresses(values: tuple[str, ...], config: Config) -> tuple[HostPort, ...]:
    from ssmtp_mailer.config.values import parse_hostport

    if not values:
        return config.global_.listen_address
    out = []
    for value in values:
        try:
            if value.endswith(":0"):  # any free port; the one taken is printed
                out.append(parse_hostport(value[:-2])._replace(port=0))
            else:
                out.append(parse_hostport(value))
        except ValueError as exc:
            raise UsageError(f"--address {value}", str(exc)) from None
    return tuple(out)


def _system_spool(config: Config) -> Config:
    """The listener is the system's: without spool_dir it uses the system spool, also once
    it runs as listen_user (whose own default would be a spool in its home)."""
    from ssmtp_mailer.submit import submission_spool

    g = config.global_
    spool = submission_spool(g)
    return config if spool == g.spool_dir else config._replace(global_=g._replace(spool_dir=spool))


@click.command("listen")
@common_options
@click.option(
    "--address",
    "addresses",
    multiple=True,
    metavar="HOST:PORT",
    help="Listen here instead of listen_address (repeatable; [::1]:25 for IPv6; port 0: any).",
)
def listen_command(addresses: tuple[str, ...]) -> int:
    """Accept mail over SMTP (and from local users on spool_dir/submit.sock) and relay it.

    Runs in the foreground until SIGTERM or SIGINT; SIGHUP reloads the configuration.
    """
    from ssmtp_mailer.config.loader import load_config_file
    from ssmtp_mailer.listener import run_listener

    config = _system_spool(load())
    main_file = config.main_file

    def reload() -> Config:
        return _system_spool(load_config_file(main_file))

    return run_listener(config, _addresses(addresses, config), reload, configured=not addresses)
