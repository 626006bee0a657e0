"""`ssmtp-mailer sendmail ARGS…`: the sendmail interface without a symlink."""

from __future__ import annotations

import click

from ssmtp_mailer.commands.common import settings


class _RawArgsCommand(click.Command):
    """Keeps the arguments exactly as given: click would swallow a `--` that sendmail needs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["sendmail_args"] = list(args)
        return super().parse_args(ctx, args)


@click.command(
    "sendmail",
    cls=_RawArgsCommand,
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        # -h is sendmail's hop count, and --help and -? print sendmail's own flags.
        "help_option_names": [],
    },
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def sendmail_command(ctx: click.Context, args: tuple[str, ...]) -> int:
    """Behave as sendmail (`ssmtp-mailer sendmail -t -i < message`); --help lists its flags."""
    from ssmtp_mailer.sendmail import run_sendmail

    raw: list[str] = ctx.meta.get("sendmail_args", list(args))
    # The group's own -C/-v (`ssmtp-mailer -C FILE sendmail …`) mean the same to sendmail,
    # and so do --config and --verbose after the command name (run_sendmail takes those).
    shared = settings()
    prefix = ["-C", shared.config_path] if shared.config_path else []
    prefix += ["-v"] if shared.verbose else []
    return run_sendmail(prefix + raw, shared_options=True)
