"""One root exception; each subclass carries its sysexit code (SPEC §9) and a hint."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

PROG = "ssmtp-mailer"

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78


# A value quoted in an error is cut to this many characters: a 10 MB configuration value
# must not become 10 MB on stderr.
SHOWN_VALUE = 60
# And no line is longer than this, whatever it quotes.
SHOWN_LINE = 1000


def shorten(value: str, limit: int = SHOWN_VALUE) -> str:
    """`value` quoted for an error message, cut to a readable length."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def say(line: str) -> None:
    """One line on stderr, if anyone can read it. A stderr that is closed (daemons run
    us so), full or a pipe nobody reads must not turn a message we queued or delivered
    into a failure: after the first failed write, the rest go nowhere."""
    stream = sys.stderr
    if stream is None:  # not open when we started
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):  # ValueError: closed meanwhile
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (process-long; nothing to flush at exit)


def report(line: str) -> None:
    """Print one line on stderr the way every error is shown: `ssmtp-mailer: <line>`."""
    if len(line) > SHOWN_LINE:
        line = f"{line[:SHOWN_LINE]}... (cut, {len(line)} characters)"
    say(f"{PROG}: {line}")


class MailerError(Exception):
    """Root of every error the user is shown as `ssmtp-mailer: <what>: <why>`."""

    exit_code = EX_SOFTWARE

    def __init__(self, what: str, why: str, hint: str | None = None) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why
        self.hint = hint

    def lines(self) -> list[str]:
        """The lines printed on stderr, without the program-name prefix."""
        out = [f"{self.what}: {self.why}"]
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out


class UsageError(MailerError):
    exit_code = EX_USAGE


class DataError(MailerError):
    exit_code = EX_DATAERR


class NoUserError(MailerError):
    exit_code = EX_NOUSER


class TempFailError(MailerError):
    exit_code = EX_TEMPFAIL


class NoHostError(TempFailError):
    """The relay's name does not resolve: temporary (queued), EX_NOHOST when not queued."""

    exit_code = EX_NOHOST


class UnavailableError(MailerError):
    exit_code = EX_UNAVAILABLE


class SoftwareError(MailerError):
    exit_code = EX_SOFTWARE


class CantCreateError(MailerError):
    exit_code = EX_CANTCREAT


class StreamError(MailerError):
    exit_code = EX_IOERR


class ProtocolError(MailerError):
    exit_code = EX_PROTOCOL


class NoPermError(MailerError):
    exit_code = EX_NOPERM


class ConfigError(MailerError):
    """A configuration problem; may carry several, each already `file:line: key: why`."""

    exit_code = EX_CONFIG

    def __init__(
        self,
        what: str,
        why: str,
        hint: str | None = None,
        problems: Sequence[str] = (),
        warnings: Sequence[str] = (),
    ) -> None:
        super().__init__(what, why, hint)
        self.problems = list(problems)
        # What `config check` shows beside the errors (unknown keys); others show errors only.
        self.warnings = list(warnings)

    def lines(self) -> list[str]:
        if not self.problems:
            return super().lines()
        out = list(self.problems)
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out
