"""`ssmtp-mailer send`: build a MIME message from options and send it like sendmail would."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ssmtp_mailer import errors
from ssmtp_mailer.addresses import address_problem, qualify
from ssmtp_mailer.commands.common import common_options, json_option, load, print_json, settings
from ssmtp_mailer.errors import DataError, StreamError, UsageError
from ssmtp_mailer.message import Intake, PreparedMessage, parse_addresses, prepare

if TYPE_CHECKING:
    from email.message import EmailMessage

    from ssmtp_mailer.config.model import Config
    from ssmtp_mailer.pipeline import SubmitResult

_HEADER_NAME_RE = re.compile(r"[!-9;-~]+\Z")
# Set by their own options or by the MIME construction; a --header copy would contradict them.
_RESERVED = {
    "from": "--from",
    "to": "--to",
    "cc": "--cc",
    "bcc": "--bcc",
    "subject": "--subject",
    "reply-to": "--reply-to",
    "mime-version": None,
    "content-type": None,
    "content-transfer-encoding": None,
}


@dataclass(frozen=True)
class SendRequest:
    """The options of `send`, checked, before any message is built."""

    sender: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str | None
    body: str
    html: str | None
    attachments: tuple[Path, ...]
    headers: tuple[tuple[str, str], ...]
    reply_to: str | None


def _no_newlines(option: str, values: tuple[str, ...] | list[str]) -> None:
    for value in values:
        if "\r" in value or "\n" in value:
            raise UsageError(option, "a value must not contain CR or LF (header injection)")


def _check_addresses(option: str, values: tuple[str, ...], hostname: str) -> list[str]:
    addresses: list[str] = []
    for value in values:
        for box in parse_addresses(value):
            address = qualify(box.address, hostname)
            problem = address_problem(address) if address else "is empty"
            if problem:
                raise UsageError(f"{option} {box.address or value!r}", problem)
            addresses.append(address)
    return addresses


def build_message(request: SendRequest) -> EmailMessage:
    """The MIME message: text (and HTML alternative), attachments, headers; no Date/Message-ID
    (prepare() adds them from the configuration)."""
    import mimetypes
    from email import policy
    from email.message import EmailMessage

    # Only a non-ASCII address needs raw UTF-8 headers (RFC 6532); names get RFC 2047 words.
    everything = [request.sender or "", *request.to, *request.cc, request.reply_to or ""]
    addresses = [box.address for value in everything for box in parse_addresses(value)]
    chosen = policy.SMTP if all(a.isascii() for a in addresses) else policy.SMTPUTF8
    msg = EmailMessage(policy=chosen)
    try:
        if request.sender:
            msg["From"] = request.sender
        if request.to:
            msg["To"] = ", ".join(request.to)
        if request.cc:
            msg["Cc"] = ", ".join(request.cc)
        if request.reply_to:
            msg["Reply-To"] = request.reply_to
        if request.subject is not None:
            msg["Subject"] = request.subject
        for name, value in request.headers:
            msg[name] = value
    except (ValueError, TypeError) as exc:
        raise UsageError("header", str(exc)) from None
    msg.set_content(request.body)
    if request.html is not None:
        msg.add_alternative(request.html, subtype="html")
    for path in request.attachments:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"--attach {path}", exc.strerror or str(exc)) from None
        ctype, encoding = mimetypes.guess_type(path.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"  # a .gz is sent as it is, not as its content
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=path.name)
    return msg


def _read_body(body: str | None, body_file: str | None) -> str:
    if body is not None and body_file is not None:
        raise UsageError("--body", "give --body or --body-file, not both")
    if body is not None:
        return body
    if body_file is not None:
        try:
            data = Path(body_file).read_bytes()
        except OSError as exc:
            raise UsageError(f"--body-file {body_file}", exc.strerror or str(exc)) from None
        where = f"--body-file {body_file}"
    else:
        from ssmtp_mailer.sendmail import _standard

        # Not click.get_binary_stream: deprecated since click 8.5 (8.1 is our minimum).
        stdin = _standard(sys.stdin, "input").buffer
        if stdin.isatty():
            errors.report("reading the body from stdin (end with Ctrl-D)")
        data = stdin.read()
        where = "body from stdin"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(where, f"is not UTF-8 text (byte {exc.start})") from None


def _parse_headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in values:
        name, colon, value = item.partition(":")
        name = name.strip()
        if not colon or not _HEADER_NAME_RE.match(name):
            raise UsageError(f"--header {item!r}", "expected 'Name: value'")
        if name.lower() in _RESERVED:
            option = _RESERVED[name.lower()]
            why = f"use {option}" if option else "is set by the MIME structure"
            raise UsageError(f"--header {name}", why)
        out.append((name, value.strip()))
    return tuple(out)


def _render_dry_run(config: Config, prepared: PreparedMessage, as_json: bool) -> None:
    """What would be sent: each transaction's route, envelope and final message (SPEC §4)."""
    from ssmtp_mailer import rewrite
    from ssmtp_mailer.commands.route import mx_preview, server_text
    from ssmtp_mailer.message import apply_group_headers

    plan = rewrite.plan_delivery(config, prepared.sender, prepared.recipients)
    mx = mx_preview(config, plan)
    transactions = [
        {
            "route": group.route.name,
            "server": server_text(group.route),
            "mx": mx[index],
            "envelope_from": group.envelope_from,
            "recipients": list(group.recipients),
            "message": apply_group_headers(prepared, plan, group)
            .decode("utf-8", "replace")
            .replace("\r\n", "\n"),
        }
        for index, group in enumerate(plan.groups)
    ]
    refused = [{"address": r.address, "reason": r.reason} for r in plan.refused]
    if as_json:
        print_json(
            {
                "dry_run": True,
                "sender": prepared.sender,
                "recipients": list(prepared.recipients),
                "message_id": prepared.message_id,
                "eightbit": prepared.eightbit,
                "smtputf8": prepared.smtputf8,
                "message": prepared.data.decode("utf-8", "replace").replace("\r\n", "\n"),
                "transactions": transactions,
                "refused": refused,
            }
        )
        return
    for refusal in refused:
        click.echo(f"Refused: <{refusal['address']}>: {refusal['reason']}")
    for transaction in transactions:
        click.echo(f"Envelope-From: <{transaction['envelope_from']}>")
        for recipient in transaction["recipients"]:
            click.echo(f"Envelope-To: <{recipient}>")
        click.echo(f"Route: [domain:{transaction['route']}] {transaction['server']}")
        hosts: dict[str, str] = transaction["mx"]  # type: ignore[assignment]
        for domain, text in hosts.items():
            click.echo(f"MX {domain}: {text}")
        click.echo("")
        click.echo(transaction["message"], nl=False)


def _render_result(result: SubmitResult, prepared: PreparedMessage, as_json: bool) -> None:
    if as_json:
        deliveries: list[dict[str, Any]] = []
        for outcome in result.outcomes:
            entry: dict[str, Any] = {
                "route": outcome.group.route.name,
                "recipients": list(outcome.group.recipients),
            }
            if outcome.result is not None:
                entry.update(
                    server=outcome.result.server,
                    accepted=list(outcome.result.accepted),
                    refused={k: list(v) for k, v in outcome.result.refused.items()},
                    reply=outcome.result.reply,
                    tls=outcome.result.tls,
                )
            if outcome.queued_id is not None:
                entry["queued"] = outcome.queued_id
            if outcome.error is not None:
                entry["error"] = outcome.error.lines()[0]
                entry["exit_code"] = outcome.error.exit_code
            deliveries.append(entry)
        print_json(
            {
                "message_id": prepared.message_id,
                "sender": prepared.sender,
                "recipients": list(prepared.recipients),
                "exit_code": result.exit_code,
                "delivered": list(result.delivered),
                "refused": [
                    {"address": r.address, "reason": r.reason, "rule": r.rule}
                    for r in result.plan.refused
                ],
                "deliveries": deliveries,
                "problems": list(result.problems),
            }
        )
    elif result.exit_code == 0 and settings().verbose:
        errors.say(f"sent {prepared.message_id} to {', '.join(result.delivered)}")


@click.command("send")
@click.option("--from", "sender", metavar="ADDR", help="Sender: envelope and From header.")
@click.option("--to", multiple=True, metavar="ADDR", help="Recipient (repeatable, or a, b).")
@click.option("--cc", multiple=True, metavar="ADDR", help="Copy recipient (repeatable).")
@click.option("--bcc", multiple=True, metavar="ADDR", help="Blind copy (not in the headers).")
@click.option("--subject", metavar="TEXT", help="Subject (any language; encoded as needed).")
@click.option("--body", metavar="TEXT", help="Body text (default: read from stdin).")
@click.option("--body-file", metavar="PATH", help="Read the body text from PATH.")
@click.option("--html", metavar="HTML", help="An HTML alternative to the text body.")
@click.option("--attach", multiple=True, metavar="FILE", help="Attach FILE (repeatable).")
@click.option("--header", "headers", multiple=True, metavar="'Name: value'", help="Extra header.")
@click.option("--reply-to", metavar="ADDR", help="Reply-To header.")
@click.option("--dry-run", is_flag=True, help="Print the envelope and message; send nothing.")
@json_option
@common_options
def send_command(
    sender: str | None,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    subject: str | None,
    body: str | None,
    body_file: str | None,
    html: str | None,
    attach: tuple[str, ...],
    headers: tuple[str, ...],
    reply_to: str | None,
    dry_run: bool,
    as_json: bool,
) -> int:
    """Send a message built from options (the body from --body, --body-file or stdin)."""
    for option, values in (
        ("--from", [sender or ""]),
        ("--to", to),
        ("--cc", cc),
        ("--bcc", bcc),
        ("--subject", [subject or ""]),
        ("--reply-to", [reply_to or ""]),
        ("--header", headers),
        ("--attach", attach),
        ("--body-file", [body_file or ""]),
    ):
        _no_newlines(option, values)
    config = load()
    hostname = config.global_.default_hostname
    envelope_from = None
    if sender:
        boxes = _check_addresses("--from", (sender,), hostname)
        if len(boxes) != 1:
            raise UsageError("--from", "give exactly one sender address")
        envelope_from = boxes[0]
    if reply_to:
        _check_addresses("--reply-to", (reply_to,), hostname)
    recipients = [
        *_check_addresses("--to", to, hostname),
        *_check_addresses("--cc", cc, hostname),
        *_check_addresses("--bcc", bcc, hostname),
    ]
    if not recipients:
        raise UsageError("send", "no recipients", hint="give --to (or --cc, --bcc)")
    request = SendRequest(
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        body=_read_body(body, body_file),
        html=html,
        attachments=tuple(Path(p) for p in attach),
        headers=_parse_headers(headers),
        reply_to=reply_to,
    )
    msg = build_message(request)
    g = config.global_
    prepared = prepare(
        msg.as_bytes(),
        Intake(recipients=tuple(recipients), envelope_from=envelope_from),
        hostname=hostname,
        default_from=g.default_from,
        max_size=g.max_message_size,
    )
    if dry_run:
        _render_dry_run(config, prepared, as_json)
        return 0
    from ssmtp_mailer import pipeline

    def transcript(line: str) -> None:
        errors.say(line)

    result = pipeline.submit(
        config, prepared, transcript=transcript if settings().verbose else None
    )
    try:
        _render_result(result, prepared, as_json)
    except StreamError as exc:
        if result.exit_code:  # not sent: its lines are on stderr already, and its code stands
            errors.report(exc.lines()[0])
            return result.exit_code
        # The report is lost, not the message: a script told only "failed" would send again.
        raise StreamError(exc.what, f"{exc.why}; the message was {result.summary}") from None
    return result.exit_code
