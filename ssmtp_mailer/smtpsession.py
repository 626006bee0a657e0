"""`sendmail -bs`: an SMTP session on stdin/stdout, in the listener's dialect (SPEC §8).

Loaded only for -bs: `sendmail -t` never pays for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ssmtp_mailer import __version__, dialect
from ssmtp_mailer.addresses import address_problem, is_null_sender, qualify, split_path
from ssmtp_mailer.errors import PROG
from ssmtp_mailer.relay.pool import ConnectionPool

if TYPE_CHECKING:
    from typing import BinaryIO

    from ssmtp_mailer.config.model import Config
    from ssmtp_mailer.dialect import DsnTransaction

# Reads of a data line: one longer than this is taken in pieces, so a line of gigabytes
# with no newline costs no more memory than the message size allows.
_READ = 65536


# What HELP lists: the commands with a syntax to show (EXPN only ever says no).
_OFFERED = ("DATA", "EHLO", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT", "RSET", "VRFY")


def _path_argument(argument: str, keyword: str, extended: bool) -> tuple[str, list[str]] | str:
    """`FROM:<addr> PARAMS` -> (addr, params), or the refusal, in the order aiosmtpd
    checks: the keyword, the path, parameters after HELO (ESMTP's, RFC 5321 §4.1.1.11)."""
    syntax = dialect.SYNTAX.format(f"{'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>")
    head, colon, rest = argument.partition(":")
    if not colon or head.strip().upper() != keyword or not rest.strip():
        return syntax
    path = split_path(rest)
    if path is None:
        return dialect.MALFORMED_PATH
    address, params = path[0].strip(), path[1].split()
    if params and not extended:
        return syntax
    return address, params


class SMTPSession:
    """`sendmail -bs`: the listener's dialect over a pair of byte streams."""

    def __init__(
        self,
        config: Config,
        instream: BinaryIO,
        outstream: BinaryIO,
        transcript: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.instream = instream
        self.outstream = outstream
        self.transcript = transcript
        self.hostname = config.global_.default_hostname
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.dsn: DsnTransaction | None = None
        self.connections: ConnectionPool | None = None
        self.crlf = True  # the client's line ends, as its last command had them
        self.count = dialect.CommandCount()
        self.greeting: str | None = None  # HELO or EHLO, once the client has sent one

    def reply(self, line: str) -> None:
        self.outstream.write(dialect.printable(line).encode("utf-8", "replace") + b"\r\n")
        self.outstream.flush()

    def reset(self) -> None:
        self.sender = None
        self.recipients = []
        self.dsn = None

    def run(self) -> int:
        """Serve commands until QUIT or end of input; the exit code is always 0."""
        # The session's messages share their relay connections (SPEC §6 reuse).
        with ConnectionPool(self.config.global_.connection_reuse_idle) as self.connections:
            return self._serve()

    def _serve(self) -> int:
        self.reply(f"220 {self.hostname} ESMTP {PROG} {__version__}")
        while True:
            raw = self.instream.readline(dialect.MAX_COMMAND + 2)
            if not raw:
                return 0
            cut = len(raw) > dialect.MAX_COMMAND + 1 and not raw.endswith(b"\n")
            if cut:
                while (rest := self.instream.readline(_READ)) and not rest.endswith(b"\n"):
                    pass  # the rest of the over-long line
            # How this client ends its lines: CRLF (as SMTP wants) or LF alone (a script).
            self.crlf = raw.endswith(b"\r\n")
            stripped = raw.rstrip(b"\r\n")
            if cut or len(stripped) > dialect.MAX_COMMAND:
                self.reply(dialect.LINE_TOO_LONG)
                continue
            if not stripped:
                self.reply(dialect.NOT_RECOGNIZED)  # no command at all: not an unknown one
                continue
            line = stripped.decode("utf-8", "replace")
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            if verb == "QUIT" and not argument.strip():
                self.reply(dialect.CLOSING.format(self.hostname))
                return 0
            handler = getattr(self, f"smtp_{verb}", None) if verb.isalpha() else None
            closing = self.count.closing(verb, known=handler is not None)
            if closing is not None:
                self.reply(closing)
                return 0
            if handler is None:
                self.reply(dialect.NOT_RECOGNIZED)
            else:
                handler(argument.strip())

    def smtp_HELO(self, argument: str) -> None:
        if not argument:
            self.reply(dialect.SYNTAX.format("HELO hostname"))
            return
        self.reset()
        self.greeting = "HELO"
        self.reply(f"250 {self.hostname}")

    def smtp_EHLO(self, argument: str) -> None:
        if not argument:
            self.reply(dialect.SYNTAX.format("EHLO hostname"))
            return
        self.reset()
        self.greeting = "EHLO"  # ESMTP's parameters from here on
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self.config.global_.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "DSN",
            "ENHANCEDSTATUSCODES",
            "HELP",
        ]
        for line in lines[:-1]:
            self.reply(f"250-{line}")
        self.reply(f"250 {lines[-1]}")

    def smtp_QUIT(self, argument: str) -> None:
        self.reply(dialect.SYNTAX.format("QUIT"))  # QUIT with an argument: it stays

    def smtp_NOOP(self, argument: str) -> None:
        self.reply(dialect.OK)

    def smtp_RSET(self, argument: str) -> None:
        if argument:
            self.reply(dialect.SYNTAX.format("RSET"))
            return
        self.reset()
        self.reply(dialect.OK)

    def smtp_HELP(self, argument: str) -> None:
        self.reply(dialect.help_reply(argument, _OFFERED))

    def smtp_VRFY(self, argument: str) -> None:
        if not argument or split_path(argument) is None:
            self.reply(dialect.SYNTAX.format(dialect.HELP_TOPICS["VRFY"]))
            return
        self.reply(dialect.CANNOT_VRFY)

    # Neither is offered on stdin: the listener's replies when it cannot do them.
    def smtp_STARTTLS(self, argument: str) -> None:
        self.reply(dialect.NO_TLS)

    def smtp_AUTH(self, argument: str) -> None:
        self.reply(dialect.AUTH_NEEDS_TLS)

    def smtp_EXPN(self, argument: str) -> None:
        self.reply(dialect.NO_EXPN)

    def smtp_MAIL(self, argument: str) -> None:
        if self.greeting is None:
            self.reply(dialect.NEED_HELO)
            return
        parsed = _path_argument(argument, "FROM", self.greeting == "EHLO")
        if isinstance(parsed, str):
            self.reply(parsed)
            return
        if self.sender is not None:
            self.reply(dialect.NESTED_MAIL)
            return
        address, params = parsed
        found = dialect.dsn_parameters("MAIL", params)
        refusal = found.refusal or dialect.mail_parameters_refusal(
            found.others, self.config.global_.max_message_size
        )
        if refusal is not None:
            self.reply(refusal)
            return
        sender = "" if is_null_sender(address) else qualify(address, self.hostname)
        if sender and address_problem(sender):
            self.reply(f"553 5.1.7 Bad sender address syntax: {address}")
            return
        self.sender = sender
        self.dsn = dialect.DsnTransaction(found.values)
        self.reply(dialect.MAIL_OK)

    def smtp_RCPT(self, argument: str) -> None:
        if self.greeting is None:
            self.reply(dialect.NEED_HELO)
            return
        if self.sender is None or self.dsn is None:
            self.reply(dialect.NEED_MAIL)
            return
        parsed = _path_argument(argument, "TO", self.greeting == "EHLO")
        if isinstance(parsed, str) or not parsed[0]:
            self.reply(
                parsed if isinstance(parsed, str) else dialect.SYNTAX.format("RCPT TO:<address>")
            )
            return
        found = dialect.dsn_parameters("RCPT", parsed[1])
        if found.refusal is not None:
            self.reply(found.refusal)
            return
        if len(self.recipients) >= dialect.MAX_RECIPIENTS:
            self.reply(dialect.TOO_MANY_RECIPIENTS)
            return
        recipient = qualify(parsed[0], self.hostname)
        if address_problem(recipient):
            self.reply(f"553 5.1.3 Bad recipient address syntax: {parsed[0]}")
            return
        refusal = dialect.recipient_reply(self.config, self.sender, recipient)
        if refusal is None:
            refusal = self.dsn.refusal(recipient, found.values)
        if refusal is not None:
            self.reply(refusal)
            return
        self.dsn.accepted(recipient, found.values)
        self.recipients.append(recipient)
        self.reply(dialect.RCPT_OK)

    def smtp_DATA(self, argument: str) -> None:
        if self.greeting is None:
            self.reply(dialect.NEED_HELO)
            return
        if self.sender is None:
            self.reply(dialect.NEED_MAIL)
            return
        if not self.recipients:
            self.reply(dialect.NO_RECIPIENTS)
            return
        if argument:
            self.reply(dialect.SYNTAX.format("DATA"))
            return
        self.reply(dialect.START_DATA)
        limit = self.config.global_.max_message_size
        chunks: list[bytes] = []
        size = 0
        ended = False
        # A client that speaks CRLF ends DATA with CRLF . CRLF alone (RFC 5321 §4.1.1.4):
        # a `.` line ended by a bare LF is its content, or a message could carry a second
        # one after it (SMTP smuggling). A script that writes LF alone ends it with `.` LF.
        dot = b".\r\n" if self.crlf else b".\n"
        at_start = True  # the piece read begins a line
        while piece := self.instream.readline(_READ):
            if at_start:
                if piece == dot or piece == b".\r\n":
                    ended = True
                    break
                if piece.startswith(b".") and piece != b".\n":
                    piece = piece[1:]  # RFC 5321 §4.5.2 transparency
            at_start = piece.endswith(b"\n")
            size += len(piece)
            if size <= limit:
                chunks.append(piece)
        if not ended:
            return  # end of input in the middle of DATA: nothing was accepted
        sender, recipients = self.sender, self.recipients
        dsn = self.dsn.dsn() if self.dsn is not None else None
        self.reset()
        if size > limit:
            self.reply(dialect.TOO_BIG)
            return
        reply = dialect.deliver_data(
            self.config,
            b"".join(chunks),
            sender,
            recipients,
            dsn=dsn,
            transcript=self.transcript,
            pool=self.connections,
        )
        if reply.startswith("250"):
            self.count.accepted()
        self.reply(reply)
