"""The one SMTP dialect of `sendmail -bs` and the listener (SPEC §8): replies and RCPT policy.

Pure: the sessions (sendmail.SMTPSession over stdin/stdout, listener.ListenerHandler on
aiosmtpd) own the I/O and ask here what to answer, so both say the same thing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

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
MAIL_OK = "250 2.1.0 OK"
RCPT_OK = "250 2.1.5 OK"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
RELAY_DENIED = "554 5.7.1 <{}>: Relay access denied"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
TOO_MANY = "421 4.7.0 Too many connections, try again later"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_OK = "235 2.7.0 Authentication successful"
SENDER_NOT_OWNED = "553 5.7.1 <{}>: Sender address not owned by {}"


def reply_for(code: int, text: str) -> str:
    """The SMTP reply line for a sysexit code and a human reason."""
    smtp, enhanced = _REPLIES.get(code, (451, "4.3.0"))
    text = " ".join(text.split())[:400] or "failed"
    return f"{smtp} {enhanced} {text}"


def recipient_reply(config: Config, sender: str, recipient: str) -> str | None:
    """None when policy lets `sender` write to `recipient`, else the refusal reply for RCPT.

    Policy is decided per recipient at RCPT, so that the reply to DATA concerns delivery only.
    """
    from ssmtp_mailer import rewrite

    try:
        plan = rewrite.plan_delivery(config, sender, [recipient])
    except MailerError as exc:
        return reply_for(exc.exit_code, exc.why)
    if plan.refused:
        return reply_for(EX_NOPERM, f"<{recipient}>: {plan.refused[0].reason}")
    return None


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


def deliver_data(
    config: Config,
    raw: bytes,
    sender: str,
    recipients: Sequence[str],
    *,
    transcript: Callable[[str], None] | None = None,
    report: Callable[[str], None] = errors.report,
    run_queue: bool = True,
    retries: int = 0,
    pool: ConnectionPool | None = None,
) -> str:
    """A message received by DATA through the sendmail path; the reply to the final dot."""
    from ssmtp_mailer import pipeline
    from ssmtp_mailer.message import Intake, prepare

    g = config.global_
    try:
        prepared = prepare(
            raw,
            Intake(recipients=tuple(recipients), envelope_from=sender or "<>"),
            hostname=g.default_hostname,
            default_from=g.default_from,
            max_size=g.max_message_size,
        )
        result = pipeline.submit(
            config,
            prepared,
            transcript=transcript,
            report=report,
            run_queue=run_queue,
            retries=retries,
            pool=pool,
        )
    except MailerError as exc:
        report(f"{exc.what}: {exc.why}")
        return error_reply(exc)
    except Exception as exc:  # a bug: the session goes on, the client may retry
        report(f"internal error: {type(exc).__name__}: {exc}")
        return reply_for(EX_SOFTWARE, "internal error")
    return outcome_reply(result)
