"""The console script: dispatch on the invocation name, and catch every error exactly once."""

from __future__ import annotations

import os
import sys

from ssmtp_mailer.errors import EX_IOERR, EX_SOFTWARE, PROG, MailerError
from ssmtp_mailer.errors import report as report_line

NEWALIASES_NOTE = (
    f"{PROG}: newaliases: there is no aliases database; aliases are the [mapping:] sections"
    " of the configuration (see `ssmtp-mailer config show`)"
)


def report(lines: list[str]) -> None:
    for line in lines:
        report_line(line)


def _verbose(args: list[str]) -> bool:
    return any(a in ("-v", "--verbose") for a in args)


def main(argv: list[str] | None = None, prog_name: str | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = os.path.basename(prog_name or sys.argv[0])
    try:
        if name == "sendmail" or name.startswith("sendmail."):
            from ssmtp_mailer.sendmail import run_sendmail

            return run_sendmail(args)
        if name == "mailq":
            from ssmtp_mailer.sendmail import run_sendmail

            return run_sendmail(["-bp", *args])
        if name == "newaliases":
            print(NEWALIASES_NOTE, file=sys.stderr)
            return 0
        from ssmtp_mailer.cli import run_cli

        return run_cli(args)
    except MailerError as exc:
        report(exc.lines())
        return exc.exit_code
    except KeyboardInterrupt:
        report(["interrupted"])
        return 130
    except BrokenPipeError:
        # A reader that went away (`mailq | head`) is no failure for a listing, but a
        # message whose intake or report was cut off must not be taken as accepted.
        return 0 if name == "mailq" or "-bp" in args else EX_IOERR
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if _verbose(args):
            import traceback

            traceback.print_exc()
        report([f"internal error: {type(exc).__name__}: {exc}", "hint: rerun with -v for details"])
        return EX_SOFTWARE


if __name__ == "__main__":
    raise SystemExit(main())
