"""The sendmail interface (SPEC §2, §5): hand-parsed flags, -bm intake, -bs, -bp, -q.

Kept free of click and of every heavy import on the way of a message: programs run this
once per message. Only -bp (mailq) loads the queue command's renderer, click with it.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from ssmtp_mailer import __version__, errors
from ssmtp_mailer.errors import PROG, DataError, MailerError, StreamError, UsageError

if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

    from ssmtp_mailer.config.model import Config, GlobalConfig
    from ssmtp_mailer.message import PreparedMessage

# Flags that take a value, attached (-fADDR) or as the next argument (-f ADDR).
_WITH_VALUE = frozenset("fFrCXBOLhANRVob")
# Flags whose value, if any, can only be attached (-q1h, -d0.1).
_OPTIONAL_ATTACHED = frozenset("qd")
_NO_VALUE = frozenset("tivUGnm")
_MODES = {"m": "deliver", "s": "smtp", "p": "list", "i": "newaliases", "V": "version"}
NEWALIASES_NOTE = (
    f"{PROG}: newaliases: there is no aliases database; aliases are the [mapping:] sections"
    " of the configuration (see `ssmtp-mailer config show`)"
)
# Bytes asked of stdin per read while taking in a message.
READ_SIZE = 256 * 1024

USAGE = """\
usage: sendmail [flags] [recipient ...]
  -t            read recipients from To/Cc/Bcc (Resent-* when present), plus arguments
  -i, -oi       a line with a single "." does not end the message
  -f ADDR       envelope sender (also -r ADDR); "<>" is the null sender
  -F NAME       full name for the From header added when the message has none
  -C FILE       configuration file
  -v            print the SMTP transcript on stderr
  -X FILE       append the SMTP transcript to FILE
  -bm           read a message from stdin and deliver it (default)
  -bs           speak SMTP on stdin/stdout
  -bp           list the queue (as mailq)
  -bi           as newaliases: there is no aliases database (mappings live in the config)
  -bV, --version  print the version
  -q            run the queue
  -N DSN        delivery status notifications: never, or a list of success,failure,delay
  -R RET        what a failure notice returns: full or hdrs
  -V ENVID      the envelope id a notice quotes
                (-N, -R and -V go to relays that offer DSN, RFC 3461; dropped otherwise)
Accepted and ignored: -B TYPE, -o*, -O OPT, -L TAG, -h N, -n, -A X, -U, -G, -m, -d*, --
"""


class SendmailArgs:
    """The meaning of a sendmail command line, filled in flag by flag."""

    # A plain class, not a dataclass: `dataclasses` stays off the sendmail path.
    __slots__ = (
        "config_path",
        "dsn_envid",
        "dsn_notify",
        "dsn_ret",
        "extract_recipients",
        "force_queue",
        "full_name",
        "ignore_dots",
        "mode",
        "recipients",
        "sender",
        "transcript_file",
        "verbose",
    )

    def __init__(self) -> None:
        self.mode = "deliver"
        self.extract_recipients = False
        self.ignore_dots = False
        self.sender: str | None = None
        self.full_name: str | None = None
        self.config_path: str | None = None
        self.verbose = False
        self.transcript_file: str | None = None
        self.force_queue = False
        self.recipients: list[str] = []
        self.dsn_notify: str | None = None
        self.dsn_ret: str | None = None
        self.dsn_envid: str | None = None


def _apply(flag: str, value: str | None, parsed: SendmailArgs) -> None:
    """Record one flag (with its value, if it takes one)."""
    if flag == "t":
        parsed.extract_recipients = True
    elif flag == "i":
        parsed.ignore_dots = True
    elif flag == "v":
        parsed.verbose = True
    elif flag == "N":
        parsed.dsn_notify = value
    elif flag == "R":
        parsed.dsn_ret = value
    elif flag == "V":
        parsed.dsn_envid = value
    elif flag in "fr":
        parsed.sender = value
    elif flag == "F":
        parsed.full_name = value
    elif flag == "C":
        parsed.config_path = value
    elif flag == "X":
        parsed.transcript_file = value
    elif flag == "b":
        assert value is not None
        mode = _MODES.get(value)
        if mode is None:
            raise UsageError(f"-b{value}", "this mode is not supported", hint="see sendmail --help")
        parsed.mode = mode
    elif flag == "o":
        # -oi (and its long form) is the only -o option with a meaning here; -oem, -oee...
        # choose sendmail's error-reporting style and are ignored, as msmtp does.
        if value == "i":
            parsed.ignore_dots = True
    elif flag == "O":
        name, _, setting = (value or "").partition("=")
        if name.strip().lower() == "ignoredots" and setting.strip().lower() in ("", "true", "t"):
            parsed.ignore_dots = True
    elif flag == "q":
        parsed.mode = "queue"
        parsed.force_queue = value in ("", "f") or (value or "").startswith(("I", "R", "S"))
    # B, L, h, A, n, U, G, m, d: accepted and ignored (SPEC §5).


def parse_args(args: Sequence[str], *, shared_options: bool = False) -> SendmailArgs:
    """Parse sendmail flags by hand: clusters, attached values, `--`, recipients anywhere.

    `shared_options`: also the long options every subcommand takes, `--config PATH` and
    `--verbose` (`ssmtp-mailer sendmail`); a program run as `sendmail` takes sendmail's own.
    """
    for arg in args:
        # An argument is one address or value: CR/LF would smuggle SMTP commands or headers.
        if any(c in arg for c in "\r\n\0"):
            shown = arg.encode("unicode_escape").decode("ascii")[:60]
            raise UsageError(repr(shown), "CR, LF or NUL inside an argument")
    parsed = SendmailArgs()
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            parsed.recipients.extend(args[index:])
            break
        if arg in ("--help", "-?"):
            parsed.mode = "help"
            continue
        if arg == "--version":
            parsed.mode = "version"
            continue
        if not arg.startswith("-") or arg == "-":
            if arg == "-":
                raise UsageError("-", "unknown flag", hint="see sendmail --help")
            parsed.recipients.append(arg)
            continue
        if shared_options and arg == "--verbose":
            parsed.verbose = True
            continue
        option, attached, value = arg.partition("=")
        if shared_options and option == "--config":
            if not attached and index < len(args):
                value = args[index]
                index += 1
            if not value:
                raise UsageError("--config", "needs a value", hint="see sendmail --help")
            parsed.config_path = value
            continue
        if arg.startswith("--"):
            raise UsageError(arg, "unknown flag", hint="see sendmail --help")
        position = 1
        while position < len(arg):
            flag = arg[position]
            position += 1
            if flag in _NO_VALUE:
                _apply(flag, None, parsed)
            elif flag in _OPTIONAL_ATTACHED:
                _apply(flag, arg[position:], parsed)
                break
            elif flag in _WITH_VALUE:
                value = arg[position:]
                if not value:
                    if index >= len(args):
                        raise UsageError(f"-{flag}", "needs a value", hint="see sendmail --help")
                    value = args[index]
                    index += 1
                _apply(flag, value, parsed)
                break
            else:
                raise UsageError(f"-{flag}", "unknown flag", hint="see sendmail --help")
    return parsed


# -- running -------------------------------------------------------------------------


def _load(parsed: SendmailArgs) -> Config:
    from ssmtp_mailer.config.loader import load_config

    return load_config(parsed.config_path)


def _transcript(parsed: SendmailArgs) -> Callable[[str], None] | None:
    """The -v / -X transcript sink, or None when neither was asked for."""
    if not parsed.verbose and not parsed.transcript_file:
        return None
    log = None
    if parsed.transcript_file:
        try:
            log = open(parsed.transcript_file, "a", encoding="utf-8")  # noqa: SIM115 (process-long)
        except OSError as exc:
            raise UsageError(f"-X {parsed.transcript_file}", exc.strerror or str(exc)) from None

    def write(line: str) -> None:
        if parsed.verbose:
            errors.say(line)
        if log is not None:
            log.write(line + "\n")
            log.flush()

    return write


def read_message(stream: BinaryIO, *, dot_ends: bool, limit: int) -> bytearray:
    """Read the message from stdin into one buffer with CRLF line endings, stopping at a lone
    `.` line unless -i; refuse over `limit`.

    Read in pieces, not by line: a 25 MB message then costs 25 MB, not a list of lines plus
    their join. A pipe's writer may keep it open after the dot, so reading stops there.
    """
    from ssmtp_mailer.message import crlf_lines, lone_dot_line

    read = getattr(stream, "read1", None) or stream.read
    data = bytearray()
    held = b""  # a piece's final CRs, until the next piece says whether an LF follows
    for got, first in _pieces(read, limit):
        piece = held + got
        held = piece[len(piece.rstrip(b"\r")) :]
        start = len(data)
        data += crlf_lines(piece[: len(piece) - len(held)], header=first)
        if dot_ends:
            # The dot line may have begun in the previous piece: "\n" ".\r\n".
            cut = lone_dot_line(data, max(0, start - 3))
            if cut >= 0:
                del data[cut:]
                return data
        if len(data) + len(held) > limit:
            raise _too_big(len(data) + len(held), limit)
    data += crlf_lines(held)
    return data


def _too_big(size: int, limit: int) -> DataError:
    return DataError("message", f"{size} octets read, over max_message_size ({limit} octets)")


def _pieces(read: Callable[[int], bytes], limit: int) -> Iterator[tuple[bytes, bool]]:
    """The input in pieces, each with whether it is the first: that one holds the whole
    header (crlf_lines tells a CR in it from a line end), unless the input or `limit`
    ends sooner."""
    from ssmtp_mailer.message import header_end

    head = bytearray()
    searched = 0  # where an end not found yet may begin: the last LF looked at
    while True:
        got = read(READ_SIZE)
        if not got:
            yield bytes(head), True
            return  # never read again after the end: a terminal's ^D is not repeated
        head += got
        if len(head) > limit:
            raise _too_big(len(head), limit)
        if header_end(head, searched) >= 0:
            break
        last_lf = head.rfind(b"\n")
        # No LF yet: only `.` and CRs so far can still be the start of an end.
        searched = last_lf if last_lf >= 0 else 0 if not head[1:].strip(b"\r") else len(head)
    yield bytes(head), True
    while got := read(READ_SIZE):
        yield got, False


def deliver_stdin(parsed: SendmailArgs, config: Config, stream: BinaryIO) -> int:
    """-bm: read, prepare, submit; returns the SPEC §9 exit code."""
    from ssmtp_mailer import pipeline

    prepared = _prepare_stdin(parsed, config.global_, stream)
    if os.geteuid() != 0 and _needs_submission(config):
        from ssmtp_mailer import submit

        # This user may not write the queue: the system takes the message (SPEC §8).
        spool = config.global_.spool_dir
        return submit.submit(
            config.global_,
            spool,
            prepared,
            bytes(prepared.data),
            sender_given=parsed.sender is not None,
        )
    return pipeline.submit(config, prepared, transcript=_transcript(parsed)).exit_code


def _needs_submission(config: Config) -> bool:
    from ssmtp_mailer import submit

    return submit.needs_submission(config)


def submit_stdin(parsed: SendmailArgs, g: GlobalConfig | None, stream: BinaryIO) -> int:
    """-bm for a user who cannot read the configuration: local submission (SPEC §8)."""
    from ssmtp_mailer import submit

    prepared = _prepare_stdin(parsed, g, stream)
    spool = submit.submission_spool(g)
    return submit.submit(
        g, spool, prepared, bytes(prepared.data), sender_given=parsed.sender is not None
    )


def submit_session(g: GlobalConfig | None) -> int:
    """-bs for a user who may not read the secrets or write the queue: the listener's own
    session over submit.sock (SPEC §8)."""
    from ssmtp_mailer import submit

    spool_dir = submit.submission_spool(g)
    instream, outstream = _standard(sys.stdin, "input"), _standard(sys.stdout, "output")
    outstream.flush()
    return submit.relay_session(spool_dir, instream.fileno(), outstream.fileno())


def _prepare_stdin(
    parsed: SendmailArgs, g: GlobalConfig | None, stream: BinaryIO
) -> PreparedMessage:
    from ssmtp_mailer.message import Intake, parse_dsn, prepare

    hostname: str | None
    if g is None:
        # Bare names stay bare: the listener or the pickup qualifies them with the
        # configured default_hostname, which this user cannot read (this host's own name
        # made the sender one the pickup does not count as the user's).
        from ssmtp_mailer.config.loader import _login_name
        from ssmtp_mailer.config.model import GlobalConfig as Defaults

        hostname = None
        limit: int = Defaults._field_defaults["max_message_size"]
        default_from = _login_name()
    else:
        hostname, default_from, limit = g.default_hostname, g.default_from, g.max_message_size
    dsn = parse_dsn(parsed.dsn_notify, parsed.dsn_ret, parsed.dsn_envid)
    raw = read_message(stream, dot_ends=not parsed.ignore_dots, limit=limit)
    intake = Intake(
        recipients=tuple(parsed.recipients),
        envelope_from=parsed.sender,
        full_name=parsed.full_name,
        extract_recipients=parsed.extract_recipients,
        dot_ends_input=not parsed.ignore_dots,
        dsn=dsn,
    )
    prepared = prepare(raw, intake, hostname=hostname, default_from=default_from, max_size=limit)
    del raw
    return prepared


def run_sendmail(args: list[str], *, shared_options: bool = False) -> int:
    """The sendmail program: `args` are its arguments (without the program name)."""
    parsed = parse_args(args, shared_options=shared_options)
    if parsed.mode == "help":
        _standard(sys.stdout, "output").write(USAGE)
        return 0
    if parsed.mode == "version":
        _standard(sys.stdout, "output").write(f"{PROG} {__version__} (sendmail interface)\n")
        return 0
    if parsed.mode == "newaliases":
        errors.say(NEWALIASES_NOTE)
        return 0
    try:
        config = _load(parsed)
    except MailerError as exc:
        from ssmtp_mailer.config.loader import UnreadableConfigError

        # Only permission stood in the way: hand the message to the system (SPEC §8).
        if not isinstance(exc, UnreadableConfigError) or os.geteuid() == 0:
            raise
        if parsed.mode == "smtp":
            return submit_session(exc.global_)
        if parsed.mode == "list":  # the queue is listed by who may read it, secrets or not
            from ssmtp_mailer.commands.queue import listing_config

            return _run_mode(parsed, listing_config(parsed.config_path, exc.global_))
        if parsed.mode != "deliver":
            raise
        return submit_stdin(parsed, exc.global_, _standard(sys.stdin, "input").buffer)
    if parsed.mode in ("queue", "smtp"):
        gc.enable()  # these handle many messages in one process (see entry.script)
    try:
        return _run_mode(parsed, config)
    except MailerError:
        raise
    except Exception as exc:  # a bug: the user gets one line (entry), the log the traceback
        from ssmtp_mailer import log

        log.write_traceback(config, exc)
        raise


def _run_mode(parsed: SendmailArgs, config: Config) -> int:
    if parsed.mode == "list":
        from ssmtp_mailer.commands.queue import listing_text

        _standard(sys.stdout, "output").write(listing_text(config).rstrip("\n") + "\n")
        return 0
    if parsed.mode == "queue":
        from ssmtp_mailer import spool

        result = spool.run_queue(config, force=parsed.force_queue)
        for problem in result.problems:  # what made it 75, as `queue run` says it
            errors.report(f"queue run: {problem}")
        return result.exit_code
    if parsed.mode == "smtp":
        if os.geteuid() != 0 and _needs_submission(config):
            return submit_session(config.global_)
        from ssmtp_mailer.smtpsession import SMTPSession

        instream, outstream = _standard(sys.stdin, "input"), _standard(sys.stdout, "output")
        session = SMTPSession(config, instream.buffer, outstream.buffer, _transcript(parsed))
        return session.run()
    return deliver_stdin(parsed, config, _standard(sys.stdin, "input").buffer)


def _standard(stream: TextIO | None, which: str) -> TextIO:
    """sys.stdin or sys.stdout; Python makes it None when the descriptor was not open."""
    if stream is None:
        raise StreamError(f"standard {which}", "not open (closed by the program that ran us)")
    return stream
