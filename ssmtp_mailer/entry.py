"""The console script: dispatch on the invocation name, and catch every error exactly once."""

from __future__ import annotations

import gc
import os
import sys
from typing import TYPE_CHECKING

from ssmtp_mailer.errors import EX_IOERR, EX_SOFTWARE, MailerError
from ssmtp_mailer.errors import report as report_line

if TYPE_CHECKING:
    from typing import TextIO


def report(lines: list[str]) -> None:
    for line in lines:
        report_line(line)


def _verbose(args: list[str]) -> bool:
    return any(a in ("-v", "--verbose") for a in args)


def _sendmail_name(name: str) -> bool:
    return name == "sendmail" or name.startswith("sendmail.")


def script() -> None:
    """The installed `ssmtp-mailer` program, and the `sendmail` and `mailq` links to it.

    Run as sendmail, the process lives for one message (or one -bs session, one queue run).
    The cyclic garbage collector stays off while it starts, which saves the repeated scans
    of everything its imports create, and those modes that handle many messages switch it
    back on (see run_sendmail). Once main() has returned, every file we wrote is closed and
    synced; we flush stdout and stderr and leave with os._exit, skipping the interpreter's
    teardown of its modules, which costs as much as a sixth of the whole run.
    """
    name = os.path.basename(sys.argv[0])
    if not (_sendmail_name(name) or name == "mailq"):
        sys.exit(main())
    gc.disable()
    code = main()
    if not _flushed(sys.stdout):  # the reader went away: as in main(), fine for a listing
        listing = name == "mailq" or "-bp" in sys.argv[1:]
        code = code or (0 if listing else EX_IOERR)
    _flushed(sys.stderr)
    os._exit(code)


def _flushed(stream: TextIO | None) -> bool:
    """Flush a standard stream: False if that failed. None is a stream closed at start."""
    if stream is None:
        return True
    try:
        stream.flush()
    except (OSError, ValueError):  # ValueError: closed meanwhile
        return False
    return True


def main(argv: list[str] | None = None, prog_name: str | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = os.path.basename(prog_name or sys.argv[0])
    try:
        # mailq is `sendmail -bp`, newaliases `sendmail -bi`, as in sendmail itself.
        mode = {"mailq": ["-bp"], "newaliases": ["-bi"]}.get(name)
        if mode is not None or _sendmail_name(name):
            from ssmtp_mailer.sendmail import run_sendmail

            return run_sendmail([*(mode or []), *args])
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
