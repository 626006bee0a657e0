"""Delivery status notifications (RFC 3464) for entries that failed, sent with a null sender."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ssmtp_mailer import log
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import (
    EX_OK,
    CantCreateError,
    ConfigError,
    MailerError,
    TempFailError,
)
from ssmtp_mailer.message import unxtext

if TYPE_CHECKING:
    from email.mime.multipart import MIMEMultipart

    from ssmtp_mailer.relay.pool import ConnectionPool
    from ssmtp_mailer.rewrite import RouteGroup


from ssmtp_mailer.spool.store import (
    FAILED,
    Attempt,
    Entry,
    _cant_create,
    _fresh_id,
    _now,
    _write_entry,
    enqueue,
    ensure_spool,
    error_reason,
    store_failed,
)

# -- bounces (RFC 3464) --------------------------------------------------------------


def notice_wanted(config: Config, failed: Entry) -> bool:
    """Whether the sender of `failed` is told: `bounce` on, a sender (never a bounce for a
    bounce), and no NOTIFY without FAILURE (RFC 3461 §4.1: the sender's `-N never`)."""
    if not config.global_.bounce or not failed.sender:
        return False
    dsn = failed.dsn
    return dsn is None or not dsn.notify or "FAILURE" in dsn.notify.split(",")


def _bounce(
    config: Config,
    failed: Entry,
    data: bytes,
    pool: ConnectionPool | None = None,
    rate_wait: float | None = None,
    notice_id: str | None = None,
) -> Literal["sent", "queued"] | None:
    """Tell the sender, with a null envelope sender: "sent", "queued" (the relay could not
    take it now; under `notice_id` when given), or None when no notice went (none wanted,
    none possible, or the relay refused it for good). CantCreateError when it could
    neither be sent nor queued.
    `rate_wait`: as engine.deliver's (None, the runner's: as long as the limit needs)."""
    if not notice_wanted(config, failed):
        return None
    from ssmtp_mailer.relay.engine import DeliveryLog, deliver
    from ssmtp_mailer.rewrite import RouteGroup, plan_delivery

    try:
        notice = build_bounce(config, failed, data)
    except Exception as exc:  # a bug in the notice must not undo the entry's move to failed/
        log.write_traceback(config, exc)
        return None
    try:
        groups = plan_delivery(config, "", [failed.sender]).groups
    except MailerError as exc:
        # No route for <>: the notice goes back the way the message went.
        route = config.domains.get(failed.route)
        if not isinstance(exc, ConfigError) or route is None:
            log.write(
                config, "ERROR", f"no failure notice for {failed.id} to {failed.sender}: {exc.why}"
            )
            return None
        groups = (RouteGroup(route, "", (failed.sender,)),)
    outcome: Literal["sent", "queued"] | None = None
    eightbit = not notice.isascii()  # a returned 8-bit message (RET=FULL) goes as it is
    for group in groups:
        signed = _signed(config, group, notice)
        record = DeliveryLog(config, group, signed)
        try:
            delivered = deliver(
                config, group, signed, record=record, pool=pool, rate_wait=rate_wait,
                eightbit=eightbit,
            )  # fmt: skip
            record.sent(delivered, EX_OK)
            outcome = outcome or "sent"
        except TempFailError as exc:
            # The notice must not be lost either; it is an ordinary entry from here on.
            # CantCreateError (a full disk) goes to the caller: the notice is still owed.
            queued = enqueue(
                config,
                group,
                signed,
                smtputf8=False,
                eightbit=eightbit,
                reason=error_reason(exc),
                entry_id=notice_id,
            )
            record.not_sent(exc, "queued", EX_OK, queued)
            outcome = "queued"
        except MailerError as exc:
            record.not_sent(exc, "failed", EX_OK)
            with contextlib.suppress(CantCreateError):
                store_failed(config, group, signed, reason=error_reason(exc))
    return outcome


def _signed(config: Config, group: RouteGroup, notice: bytes) -> bytes:
    """The notice DKIM-signed when its route signs (SPEC §6: every message), as the
    sender's own mail is; unsigned, with a warning, when it cannot be: a notice that
    fails DMARC may still be read, one never sent cannot."""
    if not group.route.dkim_key_file:
        return notice
    from ssmtp_mailer.relay import dkim

    try:
        signer = dkim.signer_for(group.route)
        return notice if signer is None else dkim.sign(signer, notice, "")
    except MailerError as exc:
        log.write(config, "WARNING", f"failure notice not DKIM-signed: {exc.what}: {exc.why}")
        return notice


def notify_failed(config: Config, entry_id: str, pool: ConnectionPool | None = None) -> bool:
    """A failure notice for a `failed/` entry made at submission: recipients the relay
    refused after the client heard 250 for the message (the listener, the maildrop),
    when nobody else can tell the sender."""
    from ssmtp_mailer.spool.store import find_entry

    try:
        failed, data = find_entry(config, entry_id)
        # Not a moment's wait for the rate limit: the client waits for its 250 meanwhile;
        # a notice that must wait is queued instead.
        return _bounce(config, failed, data, pool, rate_wait=0) is not None
    except CantCreateError as exc:
        log.write(config, "ERROR", f"no failure notice for {entry_id}: {exc.what}: {exc.why}")
        return False
    except Exception as exc:  # the message itself went: a notice's trouble must not undo that
        log.write_traceback(config, exc)
        return False


def _status_for(reply: str, default: str) -> str:
    """The enhanced status code (RFC 3463) in a reply, else `default`."""
    match = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", reply)
    return match.group(1) if match else default


def build_bounce(config: Config, failed: Entry, data: bytes) -> bytes:
    """A multipart/report delivery-status notice (RFC 3464) for `failed`, CRLF bytes: the
    whole message returned when the sender asked (RET=FULL, RFC 3461 §4.3) and the notice
    stays within max_message_size (as Postfix's bounce_size_limit), else its headers."""
    limit = config.global_.max_message_size
    if failed.dsn is not None and (failed.dsn.ret or "").upper() == "FULL":
        notice = _notice(config, failed, data, full=True)
        if len(notice) <= limit:
            return notice
        why = f"the whole message, {len(data)} octets, is too large to return"
        return _notice(config, failed, data, full=False, why=why)
    return _notice(config, failed, data, full=False)


def _notice(config: Config, failed: Entry, data: bytes, *, full: bool, why: str = "") -> bytes:
    import email.policy
    import email.utils
    from email.message import Message
    from email.mime.base import MIMEBase
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText
    from email.parser import BytesHeaderParser

    hostname = config.global_.default_hostname
    expired = failed.reason.startswith("expired")
    attached = "" if full else f" (headers only{': ' + why if why else ''})"
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients."
        f" It is attached below{attached}.",
        "",
    ]
    for rcpt in failed.recipients:
        lines.append(f"<{rcpt}>: {failed.replies.get(rcpt, failed.reason)}")
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = failed.sender
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: automatic, not to be answered
    text = "\n".join(lines) + "\n"
    explanation = MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8")
    del explanation["MIME-Version"]
    report.attach(explanation)

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Queue-ID"] = failed.origin or failed.id
    per_message["Arrival-Date"] = email.utils.format_datetime(failed.created)
    if failed.dsn is not None and failed.dsn.envid:
        per_message["Original-Envelope-Id"] = failed.dsn.envid  # RFC 3464 §2.2.1
    blocks: list[Message | str] = [per_message]
    for rcpt in failed.recipients:
        reply = failed.replies.get(rcpt, failed.attempts[-1].reply if failed.attempts else "")
        block = Message()
        orcpt = failed.dsn.original_recipient(rcpt) if failed.dsn is not None else None
        if orcpt is not None:  # RFC 3464 §2.3.1: the sender's ORCPT, when it gave one
            block["Original-Recipient"] = original_recipient(orcpt)
        block["Final-Recipient"] = final_recipient(rcpt)
        block["Action"] = "failed"
        block["Status"] = _status_for(reply, "4.4.7" if expired else "5.0.0")
        if re.match(r"^[245]\d\d\b", reply):
            block["Diagnostic-Code"] = f"smtp; {reply}"
        else:
            block["Diagnostic-Code"] = f"X-ssmtp-mailer; {failed.reason}"
        if failed.failed_at is not None:
            block["Last-Attempt-Date"] = email.utils.format_datetime(failed.failed_at)
        blocks.append(block)
    status = MIMEBase("message", "delivery-status")
    status.set_payload(blocks)
    del status["MIME-Version"]
    report.attach(status)

    if full:
        kind = "message/global" if failed.smtputf8 else "message/rfc822"
        return _with_message(report, data, kind)
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    original = MIMEBase("text", "rfc822-headers")
    original.set_payload(
        "".join(f"{k}: {v}\n" for k, v in headers.items())
        .encode("ascii", "replace")
        .decode("ascii")
    )
    del original["MIME-Version"]
    report.attach(original)
    return report.as_bytes(policy=email.policy.SMTP)


def _with_message(report: MIMEMultipart, data: bytes, kind: str) -> bytes:
    """The report with the message as its last part, byte for byte as it was queued (RFC
    6522 §3; `kind` message/global, RFC 6532 §3.7, for an SMTPUTF8 one). The email
    package would parse and write it again, refolding its headers."""
    import email.policy
    import secrets

    encoding = ""
    if not data.isascii():  # RFC 2045 §6.4: 8bit inside, so 8bit outside
        encoding = "Content-Transfer-Encoding: 8bit\r\n"
        report["Content-Transfer-Encoding"] = "8bit"
    while True:
        report_bytes = report.as_bytes(policy=email.policy.SMTP)
        boundary = report.get_boundary()
        assert boundary is not None
        if f"--{boundary}".encode() not in data:  # drawn at random: as good as always
            break
        report.set_boundary(f"={secrets.token_hex(16)}=")
    closing = f"--{boundary}--".encode()
    head = report_bytes[: report_bytes.rindex(closing)]
    part = f"--{boundary}\r\nContent-Type: {kind}\r\n{encoding}\r\n".encode()
    # The CR LF before a delimiter is the delimiter's (RFC 2046 §5.1.1), not the message's.
    return head + part + data + b"\r\n" + closing + b"\r\n"


def original_recipient(orcpt: str) -> str:
    """The Original-Recipient field's value from an ORCPT, as one line of printable ASCII:
    an rfc822 address's xtext decoded when that gives one, else kept as xtext; any other
    type (utf-8, RFC 6533) with \\x{HEX} for what is not printable ASCII."""
    kind, _, value = orcpt.partition(";")
    if kind.lower() == "rfc822":
        decoded = unxtext(value)
        return f"{kind}; {decoded if decoded and _printable(decoded) else value}"
    return f"{kind}; {_escaped(value)}"


def final_recipient(address: str) -> str:
    """The Final-Recipient field's value: rfc822, or utf-8 with RFC 6533 \\x{HEX} escapes,
    so that an SMTPUTF8 recipient's notice stays an ASCII header."""
    if address.isascii():
        return f"rfc822; {address}"
    return f"utf-8; {_escaped(address)}"


def _printable(text: str) -> bool:
    return all("!" <= c <= "~" for c in text)


def _escaped(text: str) -> str:
    """RFC 6533 utf-8-addr-xtext: \\x{HEX} for what is not printable ASCII, and for \\, + and =."""
    return "".join(c if "!" <= c <= "~" and c not in "\\+=" else f"\\x{{{ord(c):X}}}" for c in text)


def refuse_local(
    config: Config,
    owner: str,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    reason: str,
) -> str:
    """A local submission whose sender its uid may not use (SPEC §8): kept in `failed/`
    (route `maildrop`), and a bounce to `owner`, the user who submitted it."""
    directory = ensure_spool(config) / FAILED
    now = _now()
    entry = Entry(
        id=_fresh_id(directory),
        sender=owner,
        recipients=tuple(recipients),
        route="maildrop",
        smtputf8=not all(a.isascii() for a in (sender, *recipients)),
        eightbit=False,
        created=now,
        queued=now,
        next_attempt=now,
        attempts=(Attempt(now, reason),),
        reason=reason,
        failed_at=now,
        area=FAILED,
    )
    try:
        _write_entry(directory, entry, data)
    except OSError as exc:
        raise _cant_create(directory, exc) from None
    _bounce(config, entry, data)
    return entry.id
