"""The one SMTP dialect of `sendmail -bs` and the listener (SPEC §8): replies and RCPT policy.

Pure: the sessions (smtpsession.SMTPSession over stdin/stdout, listener.ListenerHandler on
aiosmtpd) own the I/O and ask here what to answer, so both say the same thing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from ssmtp_mailer import errors
from ssmtp_mailer.errors import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOHOST,
    EX_NOPERM,
    EX_NOUSER,
    EX_PROTOCOL,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    MailerError,
    UsageError,
)
from ssmtp_mailer.message import Dsn, Intake, parse_dsn, prepare, unxtext

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ssmtp_mailer.config.model import Config
    from ssmtp_mailer.pipeline import SubmitResult
    from ssmtp_mailer.relay.pool import ConnectionPool

# SPEC §9 exit code -> reply to the final "." (or to MAIL/RCPT when decided early).
_REPLIES: dict[int, tuple[int, str]] = {
    EX_USAGE: (553, "5.1.3"),
    EX_DATAERR: (554, "5.6.0"),
    EX_NOUSER: (550, "5.1.1"),
    EX_NOHOST: (451, "4.4.0"),
    EX_UNAVAILABLE: (554, "5.0.0"),
    EX_SOFTWARE: (451, "4.3.0"),
    EX_CANTCREAT: (451, "4.3.0"),
    EX_TEMPFAIL: (451, "4.4.1"),
    EX_PROTOCOL: (554, "5.7.0"),
    EX_NOPERM: (550, "5.7.1"),
    EX_CONFIG: (451, "4.3.5"),
}

OK = "250 2.0.0 OK"
# The longest command line, without its CRLF, that either session reads (Postfix's
# line_length_limit): RFC 5321 §4.5.3.1.4 asks for 512 at least, and ORCPT and ENVID add
# up to 600 more (RFC 3461 §4).
MAX_COMMAND = 2048
# Unrecognized commands a session may send; the last of them ends it with 421 (RFC 5321
# §4.2.3), as aiosmtpd counts them (its BOGUS_LIMIT).
MAX_UNKNOWN = 5
TOO_MANY_UNKNOWN = "421 4.7.0 Too many unrecognized commands, closing"
# Commands that move no mail, allowed between two messages (Postfix's
# smtpd_junk_command_limit): a client looping on NOOP holds a connection slot for ever.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP"})
MAX_JUNK = 100
TOO_MANY_JUNK = "421 4.7.0 Too many commands without mail, closing"
MAIL_OK = "250 2.1.0 OK"
RCPT_OK = "250 2.1.5 OK"
# Recipients one transaction takes: RFC 5321 §4.5.3.1.8 asks for at least 100, Postfix
# takes 1000 (smtpd_recipient_limit); the client sends the rest in another transaction.
MAX_RECIPIENTS = 1000
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_AUTH_FAILURES = "421 4.7.0 Too many failed authentications, closing"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
RELAY_DENIED = "554 5.7.1 <{}>: Relay access denied"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
TOO_MANY = "421 4.7.0 Too many connections, try again later"
TIMED_OUT = "421 4.4.2 Timeout waiting for the client, closing"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_OK = "235 2.7.0 Authentication successful"
SENDER_NOT_OWNED = "553 5.7.1 <{}>: Sender address not owned by {}"
SENDER_NEEDS_LOGIN = "553 5.7.1 <{}>: Sender address rejected: not logged in"
UNSUPPORTED_PARAMETER = "555 5.5.4 Unsupported parameter {}"
BAD_SIZE = "501 5.5.4 Bad SIZE parameter"
BAD_BODY = "501 5.5.4 BODY can only be one of 7BIT, 8BITMIME"
BAD_SMTPUTF8 = "501 5.5.4 SMTPUTF8 takes no arguments"
BAD_PARAMETER = "501 5.5.4 Bad {} parameter: {}"
# RFC 5321 §4.2.3 455: our messages carry one NOTIFY (as sendmail -N does); the client
# sends a recipient that wants another in a transaction of its own.
NOTIFY_DIFFERS = (
    "455 4.5.4 <{}>: NOTIFY differs from this transaction's other recipients;"
    " send it in another transaction"
)
# The session's own replies, word for word the same from `sendmail -bs` and the listener;
# every reply carries an enhanced status code (RFC 2034: both offer ENHANCEDSTATUSCODES).
NOT_RECOGNIZED = "500 5.5.1 Command not recognized"
LINE_TOO_LONG = "500 5.5.2 Line too long"
SYNTAX = "501 5.5.4 Syntax: {}"
NEED_HELO = "503 5.5.1 Send HELO or EHLO first"
MALFORMED_PATH = "553 5.1.3 Malformed address"  # unbalanced <>, a bad route or quote
NEED_MAIL = "503 5.5.1 Need MAIL command"
NESTED_MAIL = "503 5.5.1 Nested MAIL command"
NO_RECIPIENTS = "554 5.5.1 No valid recipients"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
CANNOT_VRFY = "252 2.5.2 Cannot VRFY; send and we will try"
NO_EXPN = "502 5.5.1 EXPN not available"
TLS_ACTIVE = "503 5.5.1 TLS already active"
BAD_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"
HELP = "214 2.0.0 Commands: {}"
NO_TLS = "454 4.7.0 TLS not available"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
# HELP's answer for each command (RFC 5321 §4.1.1.8); the listener's aiosmtpd takes its
# syntax texts from here too.
HELP_TOPICS = {
    "AUTH": "AUTH <mechanism>",
    "DATA": "DATA",
    "EHLO": "EHLO hostname",
    "HELO": "HELO hostname",
    "HELP": "HELP [command]",
    "MAIL": "MAIL FROM:<address> [SP <mail-parameters>]",
    "NOOP": "NOOP [ignored]",
    "QUIT": "QUIT",
    "RCPT": "RCPT TO:<address> [SP <mail-parameters>]",
    "RSET": "RSET",
    "STARTTLS": "STARTTLS",
    "VRFY": "VRFY <address>",
}
CLOSING = "221 2.0.0 {} closing"

# aiosmtpd's own wording of the replies it makes itself, in ours.
_STOCK = {
    "250 OK": OK,
    "500 Error: bad syntax": NOT_RECOGNIZED,
    "500 Command line too long": LINE_TOO_LONG,
    "503 Error: need MAIL command": NEED_MAIL,
    "553 5.1.3 Error: malformed address": MALFORMED_PATH,
    "503 Error: need RCPT command": NO_RECIPIENTS,
    "503 Error: nested MAIL command": NESTED_MAIL,
    "503 Error: send HELO first": NEED_HELO,
    "503 Error: send EHLO first": NEED_HELO,
    "252 Cannot VRFY user, but will accept message and attempt delivery": CANNOT_VRFY,
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "454 TLS not available": NO_TLS,
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "552 Error: Too much mail data": TOO_BIG,
    "554 Command refused due to lack of security": "554 5.7.0 Command refused: TLS failed",
    "502 5.5.1 Too many unrecognized commands, goodbye.": TOO_MANY_UNKNOWN,
    "501 Syntax: MAIL FROM: <address>": SYNTAX.format("MAIL FROM:<address>"),
    "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]": SYNTAX.format("MAIL FROM:<address>"),
    "501 Syntax: RCPT TO: <address>": SYNTAX.format("RCPT TO:<address>"),
    "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]": SYNTAX.format("RCPT TO:<address>"),
}
_STOCK_PREFIXES = (
    ("500 Error: command ", NOT_RECOGNIZED),  # "FOO" not recognized, 'AUTH' after HELO
    ("500 Line too long", LINE_TOO_LONG),
)
_CLASS_DETAIL = {
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "555": "5.5.4",
}


_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


class CommandCount:
    """The session limits both sessions share: unrecognized commands, and junk commands
    since the last message accepted. `closing` is the 421 that ends the session, or None."""

    def __init__(self) -> None:
        self.unknown = 0
        self.junk = 0

    def closing(self, verb: str, *, known: bool) -> str | None:
        if not known:
            self.unknown += 1
            return TOO_MANY_UNKNOWN if self.unknown >= MAX_UNKNOWN else None
        if verb in JUNK_COMMANDS:
            self.junk += 1
            return TOO_MANY_JUNK if self.junk > MAX_JUNK else None
        return None

    def accepted(self) -> None:
        """A message got its 250: the client is sending mail, not idling."""
        self.junk = 0


def printable(reply: str) -> str:
    """A reply line with the control characters a client sent (a bare CR, NUL) shown as
    `?`: echoed as they came, they broke the reply's line (RFC 5321 §4.2)."""
    return _CONTROLS.sub("?", reply)


def in_our_words(reply: str) -> str:
    """A reply aiosmtpd made, as `sendmail -bs` words it; ours pass unchanged.

    HELP becomes 214 (RFC 5321 §4.2.1: 250 is for actions); any other refusal without an
    enhanced status code gets one by its class (X.0.0, 5.5.x for syntax and sequence).
    """
    known = _STOCK.get(reply)
    if known is not None:
        return known
    head = reply[:1]
    if head == "2":
        if reply.startswith("250 Supported commands: "):
            return HELP.format(reply[len("250 Supported commands: ") :])
        if reply.startswith("250 Syntax: "):
            return "214 2.0.0 Syntax: " + reply[len("250 Syntax: ") :]
        return reply
    if head not in ("4", "5") or (reply[4:5] in ("4", "5") and reply[5:6] == "."):
        return reply  # a 2xx or 3xx of ours or aiosmtpd's, or a code that has one
    for prefix, ours in _STOCK_PREFIXES:
        if reply.startswith(prefix):
            return ours
    code, _, text = reply.partition(" ")
    if text.startswith("Syntax: "):
        return SYNTAX.format(text[len("Syntax: ") :])
    detail = _CLASS_DETAIL.get(code, f"{code[0]}.0.0")
    return f"{code} {detail} {text.removeprefix('Error: ')}"


def help_reply(topic: str, offered: Iterable[str]) -> str:
    """The reply to HELP: the commands the session offers now, or one's syntax."""
    commands = sorted(offered)
    verb = topic.strip().upper()
    if verb in commands:
        return f"214 2.0.0 Syntax: {HELP_TOPICS[verb]}"
    if verb:
        return f"501 5.5.4 No help for {topic.strip()}; commands: {' '.join(commands)}"
    return HELP.format(" ".join(commands))


def reply_for(code: int, text: str) -> str:
    """The SMTP reply line for a sysexit code and a human reason."""
    smtp, enhanced = _REPLIES.get(code, (451, "4.3.0"))
    text = " ".join(text.split())[:400] or "failed"
    return f"{smtp} {enhanced} {text}"


def recipient_reply(
    config: Config, sender: str, recipient: str, *, foreign: bool = False
) -> str | None:
    """None when policy lets `sender` write to `recipient`, else the refusal reply for RCPT.

    Policy is decided per recipient at RCPT, so that the reply to DATA concerns delivery
    only; `foreign` as for the message (rewrite.explain_delivery).
    """
    from ssmtp_mailer import rewrite

    try:
        plan = rewrite.plan_delivery(config, sender, [recipient], foreign=foreign)
    except MailerError as exc:
        return reply_for(exc.exit_code, exc.why)
    if plan.refused:
        return reply_for(EX_NOPERM, f"<{recipient}>: {plan.refused[0].reason}")
    return None


# In a reply of ours, the relay's own permanent one: `...: 554 5.7.1 its words`.
_RELAY_REPLY = re.compile(r": (5\d\d (?:[245]\.\d{1,3}\.\d{1,3} )?.*)$")


def for_outsiders(reply: str, recipient: str | None = None) -> str:
    """A refusal as a client outside allowed_networks hears it: its codes, a fixed text.

    The why can name configuration files and sections or spool paths, which are no
    business of the internet; the listener logs it instead. A relay's own refusal of a
    message (5xx to the final dot) goes on as it was said (SPEC §8).
    """
    if reply[:1] not in ("4", "5"):
        return reply
    if recipient is None and reply[:1] == "5":
        # The relay's own reply to the message, without our words around it: they name
        # the relay's address and the recipient a mapping made (`host:port: every
        # recipient refused: <alias target>: 550 ...`).
        relays = _RELAY_REPLY.search(reply, 4)
        if relays is not None:
            return relays.group(1)
    code, enhanced = reply.split(" ", 2)[:2]
    if code[:1] == "4":
        text = "Temporary failure, try again later"
    else:
        text = "Recipient address rejected" if recipient is not None else "Message rejected"
    subject = f"<{recipient}>: " if recipient is not None else ""
    return f"{code} {enhanced} {subject}{text}"


def outcome_reply(result: SubmitResult) -> str:
    """The reply to the final dot: 250 with what became of the message, or the failure."""
    if result.exit_code != 0:
        return reply_for(result.exit_code, result.summary)
    queued = [o.queued_id for o in result.outcomes if o.queued_id]
    if queued:
        return f"250 2.0.0 OK queued as {', '.join(queued)} {result.message_id}"
    relay_ids = [o.result.reply for o in result.outcomes if o.result is not None and o.result.reply]
    said = f" ({' '.join(relay_ids[0].split())[:200]})" if relay_ids else ""
    return f"250 2.0.0 OK {result.message_id} delivered{said}"


def error_reply(exc: MailerError) -> str:
    return reply_for(exc.exit_code, exc.why)


# -- DSN parameters (RFC 3461 §4) -----------------------------------------------------

_DSN_KEYWORDS = {"MAIL": ("RET", "ENVID"), "RCPT": ("NOTIFY", "ORCPT")}
# The other parameters the dialect takes (SIZE, RFC 1870; BODY, RFC 6152; SMTPUTF8, RFC 6531).
_OTHER_KEYWORDS = {"MAIL": ("SIZE", "BODY", "SMTPUTF8"), "RCPT": ()}
_ORCPT_MAX = 500  # RFC 3461 §4.2
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)


class DsnParameters(NamedTuple):
    """The DSN parameters of one MAIL or RCPT command, split from the others."""

    values: dict[str, str]  # RET and ENVID (decoded), or NOTIFY and ORCPT; checked
    others: list[str]  # SIZE, BODY and SMTPUTF8 as given, for the session to check
    refusal: str | None = None  # the reply to the first bad or unknown parameter


def dsn_parameters(verb: str, params: Sequence[str]) -> DsnParameters:
    """RET= and ENVID= of MAIL, or NOTIFY= and ORCPT= of RCPT: checked by the same rules as
    sendmail's -R, -V and -N (message.parse_dsn), normalised, and split from the rest; a
    parameter the dialect does not know at all is refused here too, with its name."""
    keywords = _DSN_KEYWORDS[verb]
    values: dict[str, str] = {}
    others: list[str] = []
    refusal: str | None = None
    for param in params:
        key, equals, value = param.partition("=")
        key = key.upper()
        if key not in keywords:
            if key in _OTHER_KEYWORDS[verb]:
                others.append(param)
            elif refusal is None:
                refusal = UNSUPPORTED_PARAMETER.format(param)
            continue
        if refusal is not None:
            continue
        if not equals or not value:
            refusal = BAD_PARAMETER.format(key, "it needs a value")
        elif key in values:
            refusal = BAD_PARAMETER.format(key, "given twice")
        elif key == "ORCPT":
            problem = _orcpt_problem(value)
            if problem is None:
                values[key] = value
            else:
                refusal = BAD_PARAMETER.format(key, problem)
        else:
            text = unxtext(value) if key == "ENVID" else value
            if text is None:
                refusal = BAD_PARAMETER.format(key, "not xtext (RFC 3461 §4)")
                continue
            notify, ret, envid = (text if key == k else None for k in ("NOTIFY", "RET", "ENVID"))
            try:
                dsn = parse_dsn(notify, ret, envid)
            except UsageError as exc:
                refusal = BAD_PARAMETER.format(key, exc.why)
                continue
            assert dsn is not None
            # The one field given, as parse_dsn normalised it (upper case, no repeats).
            values[key] = dsn.notify or dsn.ret or dsn.envid or text
    return DsnParameters(values, others, refusal)


def mail_parameters_refusal(others: Sequence[str], max_size: int) -> str | None:
    """The reply to MAIL's SIZE, BODY or SMTPUTF8 (DsnParameters.others) when one is bad,
    else None; a SIZE over `max_size` gets 552 at once (RFC 1870 §6)."""
    for param in others:
        key, equals, value = param.partition("=")
        key = key.upper()
        if key == "SIZE":
            if not value.isdigit():
                return BAD_SIZE
            if max_size and int(value) > max_size:
                return TOO_BIG
        elif key == "BODY":
            if value.upper() not in ("7BIT", "8BITMIME"):
                return BAD_BODY
        elif key == "SMTPUTF8":
            if equals:
                return BAD_SMTPUTF8
        else:
            return UNSUPPORTED_PARAMETER.format(param)
    return None


def _orcpt_problem(value: str) -> str | None:
    """None for a well-formed ORCPT value (addr-type;xtext, RFC 3461 §4.2), else why not."""
    if len(value) > _ORCPT_MAX:
        return f"over {_ORCPT_MAX} characters"
    kind, semicolon, address = value.partition(";")
    if not semicolon or not kind or not set(kind) <= _ATEXT:
        return "expected addr-type;address, as rfc822;user@example.org"
    if kind.lower() == "utf-8":
        # RFC 6533 §3: with SMTPUTF8 the address may be UTF-8 itself (utf-8-addr-unitext).
        if not all(c.isprintable() for c in address if not c.isascii()):
            return "not xtext (RFC 3461 §4)"
        address = "".join(c for c in address if c.isascii())
    if not address or unxtext(address) is None:
        return "not xtext (RFC 3461 §4)"
    return None


def _notify_words(notify: str | None) -> frozenset[str] | None:
    return None if notify is None else frozenset(notify.split(","))


class DsnTransaction:
    """What one SMTP transaction asked of DSN: RET and ENVID from MAIL, NOTIFY and each
    recipient's ORCPT from its RCPTs."""

    __slots__ = ("envid", "notify", "orcpt", "recipients", "ret")

    def __init__(self, mail: Mapping[str, str]) -> None:
        self.ret = mail.get("RET")
        self.envid = mail.get("ENVID")
        self.notify: str | None = None
        self.orcpt: list[tuple[str, str]] = []
        self.recipients = 0

    def refusal(self, recipient: str, rcpt: Mapping[str, str]) -> str | None:
        """The 455 for a recipient whose NOTIFY is not that of the ones accepted before."""
        if self.recipients and _notify_words(rcpt.get("NOTIFY")) != _notify_words(self.notify):
            return NOTIFY_DIFFERS.format(recipient)
        return None

    def accepted(self, recipient: str, rcpt: Mapping[str, str]) -> None:
        if not self.recipients:
            self.notify = rcpt.get("NOTIFY")
        if "ORCPT" in rcpt:
            self.orcpt.append((recipient, rcpt["ORCPT"]))
        self.recipients += 1

    def dsn(self) -> Dsn | None:
        if self.ret is None and self.envid is None and self.notify is None and not self.orcpt:
            return None
        return Dsn(self.notify, self.ret, self.envid, tuple(self.orcpt))


def deliver_data(
    config: Config,
    raw: bytes,
    sender: str,
    recipients: Sequence[str],
    *,
    received: bytes = b"",
    dsn: Dsn | None = None,
    transcript: Callable[[str], None] | None = None,
    report: Callable[[str], None] = errors.report,
    run_queue: bool = True,
    retries: int = 0,
    pool: ConnectionPool | None = None,
    held: bool = False,
    told: bool = True,
    foreign: bool = False,
    refused: Callable[[MailerError], None] | None = None,
) -> str:
    """A message received by DATA through the sendmail path; the reply to the final dot.

    `received`: our trace field, put in front of the message; max_message_size is the
    sender's (the SIZE we advertised), so it does not count.
    A fault of our own set-up (the configuration, the relay refusing our AUTH or TLS) is
    queued for the fix, as a queue entry waits for it: a 4xx would only bring the message
    back, and a copy in failed/ each time. `held`, `told`, `foreign`: pipeline.submit.
    `refused` hears a refusal of the whole message (a 5xx, nothing kept of it), for a
    caller whose sender heard 0 long ago (the maildrop's pickup).
    """
    from ssmtp_mailer import pipeline

    g = config.global_
    try:
        prepared = prepare(
            received + raw,
            Intake(recipients=tuple(recipients), envelope_from=sender or "<>", dsn=dsn),
            hostname=g.default_hostname,
            default_from=g.default_from,
            max_size=g.max_message_size + len(received),
        )
        result = pipeline.submit(
            config,
            prepared,
            transcript=transcript,
            report=report,
            run_queue=run_queue,
            retries=retries,
            pool=pool,
            accepted=True,
            held=held,
            told=told,
            foreign=foreign,
        )
    except MailerError as exc:
        report(f"{exc.what}: {exc.why}")
        reply = error_reply(exc)
        if refused is not None and reply.startswith("5"):
            refused(exc)
        return reply
    except Exception as exc:  # a bug: the session goes on, the client may retry
        report(f"internal error: {type(exc).__name__}: {exc}")
        return reply_for(EX_SOFTWARE, "internal error")
    return outcome_reply(result)
