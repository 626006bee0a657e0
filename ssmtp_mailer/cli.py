"""The `ssmtp-mailer` click group; each subcommand lives in `commands/` and loads on use."""

from __future__ import annotations

import importlib

import click

from ssmtp_mailer import __version__, errors
from ssmtp_mailer.commands.common import common_options
from ssmtp_mailer.errors import UsageError

# name -> (module, attribute, one-line help); loaded only when the command runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "config": ("ssmtp_mailer.commands.config", "config_group", "Check, show, import the config."),
    "password": (
        "ssmtp_mailer.commands.password",
        "password_group",
        "Keyring passwords; hashes for the listener's AUTH.",
    ),
    "listen": ("ssmtp_mailer.commands.listen", "listen_command", "Run the SMTP listener."),
    "test": ("ssmtp_mailer.commands.test", "test_command", "Check the relay routes step by step."),
    "route": ("ssmtp_mailer.commands.route", "route_command", "Explain how mail is routed."),
    "queue": ("ssmtp_mailer.commands.queue", "queue_group", "List, show, run and clean the spool."),
    "send": ("ssmtp_mailer.commands.send", "send_command", "Send a message built from options."),
    "sendmail": ("ssmtp_mailer.commands.sendmail_cmd", "sendmail_command", "Act as sendmail."),
    "dkim": ("ssmtp_mailer.commands.dkim", "dkim_group", "Make DKIM signing keys."),
    "dns": ("ssmtp_mailer.commands.dns", "dns_group", "Check a domain's mail DNS records."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked, keeping start-up fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ssmtp-mailer")
@common_options
def cli() -> None:
    """A send-only mail transfer agent: sendmail-compatible, relays through your SMTP server."""


def run_cli(args: list[str]) -> int:
    """Run the group without click's own exit handling; errors reach the entry point."""
    try:
        result = cli.main(args=args, prog_name="ssmtp-mailer", standalone_mode=False)
    except click.exceptions.Abort:
        errors.report("aborted")
        return 1
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "ssmtp-mailer"
        what = command.partition(" ")[2] or "usage"
        raise UsageError(what, exc.format_message(), hint=f"see `{command} --help`") from None
    except click.ClickException as exc:
        raise UsageError("ssmtp-mailer", exc.format_message()) from None
    return result if isinstance(result, int) else 0
