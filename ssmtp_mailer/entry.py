"""The console script: dispatch on the invocation name, and catch every error exactly once."""

from __future__ import annotations

import gc
import io
import os
import sys
from typing import TYPE_CHECKING

from ssmtp_mailer.errors import EX_IOERR, EX_SOFTWARE, MailerError, StreamError
from ssmtp_mailer.errors import report as report_line

if TYPE_CHECKING:
    from typing import TextIO

    from _typeshed import ReadableBuffer


def report(lines: list[str]) -> None:
    for line in lines:
        report_line(line)


def _verbose(args: list[str]) -> bool:
    return any(a in ("-v", "--verbose") for a in args)


def _sendmail_name(name: str) -> bool:
    return name == "sendmail" or name.startswith("sendmail.")


def _listing(name: str, args: list[str]) -> bool:
    return name == "mailq" or "-bp" in args


class _StandardOutput(io.FileIO):
    """Descriptor 1, whose failures are the user's, not bugs: `standard output: No space left
    on device`, EX_IOERR, as when it is not open at all. After the first failed write the
    rest go nowhere, as on stderr (errors.say): nothing is tried again at exit."""

    failed = False

    def write(self, data: ReadableBuffer, /) -> int:
        if self.failed:
            return memoryview(data).nbytes
        try:
            return super().write(data)
        except BrokenPipeError:
            self.failed = True
            raise  # the reader went away: main() decides (no failure for a listing)
        except OSError as exc:
            self.failed = True
            raise StreamError("standard output", exc.strerror or str(exc)) from None


def _watch_standard_output() -> None:
    """Put the process's own stdout (not a test's capture) on _StandardOutput."""
    out = sys.stdout
    if out is None or out is not sys.__stdout__ or not isinstance(out, io.TextIOWrapper):
        return
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_StandardOutput(out.fileno(), "w", closefd=False)),
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
        write_through=out.write_through,
    )


def script() -> None:
    """The installed `ssmtp-mailer` program, and the `sendmail` and `mailq` links to it.

    Run as sendmail, the process lives for one message (or one -bs session, one queue run).
    The cyclic garbage collector stays off while it starts, which saves the repeated scans
    of everything its imports create, and those modes that handle many messages switch it
    back on (see run_sendmail). Once main() has returned, every file we wrote is closed and
    synced, stdout flushed; we flush stderr and leave with os._exit, skipping the
    interpreter's teardown of its modules, which costs as much as a sixth of the whole run.
    """
    name = os.path.basename(sys.argv[0])
    if not (_sendmail_name(name) or name == "mailq"):
        sys.exit(main())
    gc.disable()
    code = main()
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
    _watch_standard_output()
    try:
        code = _run(args, name)
    except MailerError as exc:
        report(exc.lines())
        return exc.exit_code
    except KeyboardInterrupt:
        report(["interrupted"])
        return 130
    except BrokenPipeError:
        # A reader that went away (`mailq | head`) is no failure for a listing, but a
        # message whose intake or report was cut off must not be taken as accepted.
        return 0 if _listing(name, args) else EX_IOERR
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if _verbose(args):
            import traceback

            traceback.print_exc()
        report([f"internal error: {type(exc).__name__}: {exc}", "hint: rerun with -v for details"])
        return EX_SOFTWARE
    try:
        if _flushed(sys.stdout):
            return code
    except StreamError as exc:  # the output's last piece, written only now
        report(exc.lines())
        return code or exc.exit_code
    return code or (0 if _listing(name, args) else EX_IOERR)  # as for a BrokenPipeError


def _run(args: list[str], name: str) -> int:
    # mailq is `sendmail -bp`, newaliases `sendmail -bi`, as in sendmail itself.
    mode = {"mailq": ["-bp"], "newaliases": ["-bi"]}.get(name)
    if mode is not None or _sendmail_name(name):
        from ssmtp_mailer.sendmail import run_sendmail

        return run_sendmail([*(mode or []), *args])
    from ssmtp_mailer.cli import run_cli

    return run_cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
