"""`ssmtp-mailer send`: options, MIME structure, header injection, a real send."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from relayconf import HOST, write_relay_config
from smtpserver import SMTPTestServer

from ssmtp_mailer.cli import cli
from ssmtp_mailer.errors import MailerError


@pytest.fixture
def config(tmp_path: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_relay_config(
        tmp_path / "ssmtp-mailer.conf",
        smtp_server.port,
        f"default_from = nobody@{HOST}\non_temporary_failure = fail\n",
    )
    monkeypatch.setenv("SSMTP_MAILER_CONFIG", str(path))
    return path


def send(*args: str, input: bytes | str | None = None) -> tuple[int, str]:
    """Run `ssmtp-mailer send ARGS`; the exit code as the entry point would report it."""
    result = CliRunner().invoke(cli, ["send", *args], input=input, standalone_mode=False)
    if isinstance(result.exception, MailerError):
        return result.exception.exit_code, result.output + str(result.exception)
    if result.exception is not None:
        raise result.exception
    code = result.return_value
    return (code if isinstance(code, int) else 0), result.output


def dry_run(*args: str, input: bytes | str | None = None) -> dict[str, Any]:
    code, output = send("--dry-run", "--json", *args, input=input)
    assert code == 0, output
    data = json.loads(output)
    assert isinstance(data, dict)
    return data


def parse(text: str) -> EmailMessage:
    msg = email.message_from_bytes(text.encode(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.mark.parametrize(
    "args",
    [
        ["--to", "a@x.example", "--subject", "hi\r\nBcc: victim@x.example"],
        ["--to", "a@x.example\nb@x.example"],
        ["--to", "a@x.example", "--from", "me@x.example\r"],
        ["--to", "a@x.example", "--cc", "c@x.example\n"],
        ["--to", "a@x.example", "--bcc", "\nc@x.example"],
        ["--to", "a@x.example", "--reply-to", "r@x.example\nX: y"],
        ["--to", "a@x.example", "--header", "X-Tag: a\r\nBcc: v@x.example"],
    ],
)
def test_cr_or_lf_in_a_value_is_refused(
    config: Path, smtp_server: SMTPTestServer, args: list[str]
) -> None:
    code, output = send(*args, "--body", "x")
    assert code == 64, output
    assert "CR or LF" in output
    assert smtp_server.messages == []


def test_usage_errors(config: Path) -> None:
    assert send("--body", "x")[0] == 64  # no recipients
    assert send("--to", "a@x.example", "--header", "NoColon", "--body", "x")[0] == 64
    assert send("--to", "a@x.example", "--header", "To: b@x.example", "--body", "x")[0] == 64
    assert send("--to", "a b@x.example", "--body", "x")[0] == 64
    assert send("--to", "a@x.example", "--attach", "/nonexistent/file", "--body", "x")[0] == 64
    assert send("--to", "a@x.example", "--body", "x", "--body-file", "f")[0] == 64


def test_dry_run_prints_envelope_and_message(config: Path, smtp_server: SMTPTestServer) -> None:
    code, output = send(
        "--from", "Me <me@x.example>", "--to", "a@x.example", "--bcc", "hidden@x.example",
        "--subject", "Hello", "--body", "line one\nline two", "--dry-run",
    )  # fmt: skip
    assert code == 0
    head, _, message = output.partition("\n\n")
    assert head.splitlines() == [
        "Envelope-From: <me@x.example>",
        "Envelope-To: <a@x.example>",
        "Envelope-To: <hidden@x.example>",
        f"Route: [domain:*] 127.0.0.1:{smtp_server.port}",
    ]
    msg = parse(message)
    assert msg["Subject"] == "Hello" and msg["To"] == "a@x.example" and msg["Bcc"] is None
    assert msg["Message-ID"].endswith(f"@{HOST}>") and msg["Date"] is not None
    assert msg.get_content() == "line one\nline two\n"
    assert smtp_server.messages == []


def test_recipients_repeatable_and_comma_separated(config: Path) -> None:
    data = dry_run(
        "--to", 'a@x.example, "Doe, J" <j@x.example>', "--to", "root",
        "--cc", "c@x.example", "--bcc", "b1@x.example,b2@x.example", "--body", "x",
    )  # fmt: skip
    assert data["recipients"] == [
        "a@x.example", "j@x.example", f"root@{HOST}", "c@x.example", "b1@x.example", "b2@x.example",
    ]  # fmt: skip
    msg = parse(data["message"])
    assert [a.addr_spec for a in msg["To"].addresses] == [
        "a@x.example",
        "j@x.example",
        f"root@{HOST}",
    ]
    assert msg["To"].addresses[1].display_name == "Doe, J"
    # A Bcc address nowhere in the message (the Message-ID is hex: it may hold "b1@").
    assert msg["Bcc"] is None and "b1@x.example" not in data["message"]
    assert data["sender"] == f"nobody@{HOST}"


def test_non_ascii_subject_and_names_are_encoded(config: Path) -> None:
    data = dry_run(
        "--from", "Jörg Müller <jorg@x.example>", "--to", "Zoë <z@x.example>",
        "--subject", "Grüße aus Köln — ça va ?", "--body", "Größe: 3 €",
        "--header", "X-Note: naïve", "--reply-to", "Ænima <ae@x.example>",
    )  # fmt: skip
    head = data["message"].split("\n\n", 1)[0]
    assert head.isascii()
    msg = parse(data["message"])
    assert msg["Subject"] == "Grüße aus Köln — ça va ?"
    assert msg["From"].addresses[0].display_name == "Jörg Müller"
    assert msg["To"].addresses[0].display_name == "Zoë"
    assert msg["X-Note"] == "naïve"
    assert msg["Reply-To"].addresses[0].addr_spec == "ae@x.example"
    assert msg.get_content() == "Größe: 3 €\n"
    assert data["sender"] == "jorg@x.example"


def test_html_and_attachments_structure(config: Path, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4\n" + bytes(range(256)))
    notes = tmp_path / "notes.txt"
    notes.write_bytes("héllo\n".encode())
    blob = tmp_path / "data.unknownext"
    blob.write_bytes(b"\x00\x01\x02")
    data = dry_run(
        "--to", "a@x.example", "--subject", "Report", "--body", "See attached.",
        "--html", "<p>See <b>attached</b>.</p>",
        "--attach", str(pdf), "--attach", str(notes), "--attach", str(blob),
    )  # fmt: skip
    msg = parse(data["message"])
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_parts())
    assert parts[0].get_content_type() == "multipart/alternative"
    alternatives = [p.get_content_type() for p in parts[0].iter_parts()]
    assert alternatives == ["text/plain", "text/html"]
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content() == "See attached.\n"
    attachments = list(msg.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["report.pdf", "notes.txt", "data.unknownext"]
    assert [a.get_content_type() for a in attachments] == [
        "application/pdf", "text/plain", "application/octet-stream",
    ]  # fmt: skip
    assert all(a["Content-Transfer-Encoding"] == "base64" for a in attachments)
    assert attachments[0].get_payload(decode=True) == pdf.read_bytes()
    assert attachments[1].get_payload(decode=True) == notes.read_bytes()


def test_body_from_stdin_and_file(config: Path, tmp_path: Path) -> None:
    data = dry_run("--to", "a@x.example", input="from stdin\n")
    assert parse(data["message"]).get_content() == "from stdin\n"
    path = tmp_path / "body.txt"
    path.write_text("from a file\n")
    data = dry_run("--to", "a@x.example", "--body-file", str(path))
    assert parse(data["message"]).get_content() == "from a file\n"
    assert send("--to", "a@x.example", "--dry-run", input=b"\xff\xfe")[0] == 65


def test_real_send(config: Path, smtp_server: SMTPTestServer) -> None:
    code, output = send(
        "--from", "Sender <s@x.example>", "--to", "a@x.example", "--cc", "c@x.example",
        "--bcc", "b@x.example", "--subject", "Réunion", "--body", "Bonjour à tous",
        "--header", "X-Priority: 1", "--json",
    )  # fmt: skip
    assert code == 0, output
    result = json.loads(output)
    assert result["exit_code"] == 0
    assert result["delivered"] == ["a@x.example", "c@x.example", "b@x.example"]
    got = smtp_server.messages[0]
    assert got.mail_from == "s@x.example"
    assert got.rcpt_tos == ["a@x.example", "c@x.example", "b@x.example"]
    assert "BODY=8BITMIME" in got.mail_options
    msg = got.message()
    assert msg["Subject"] == "Réunion" and msg["X-Priority"] == "1" and msg["Bcc"] is None
    assert msg["Message-ID"] == result["message_id"]
    assert msg.get_content().replace("\r\n", "\n") == "Bonjour à tous\n"


def test_real_send_failure_exit_code(config: Path, smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = "550-rcpt:a@x.example"
    code, _ = send("--to", "a@x.example", "--body", "x")
    assert code == 67


def test_a_transcript_nobody_can_read_costs_no_message(
    config: Path, smtp_server: SMTPTestServer
) -> None:
    """`send -v` with stderr full: the transcript's first failed write sent the message to
    failed/ with exit 70; it is delivered, and the transcript goes nowhere."""
    import subprocess
    import sys

    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "ssmtp_mailer", "-C", str(config), "send", "-v",
             "--to", "a@x.example", "--subject", "s", "--body", "b"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=full, timeout=30,
        )  # fmt: skip
    assert done.returncode == 0
    assert [m.rcpt_tos for m in smtp_server.wait_for(1)] == [["a@x.example"]]


def test_a_full_stdout_after_delivery_says_the_message_went(
    config: Path, smtp_server: SMTPTestServer
) -> None:
    """`send --json > /dev/full`: delivered, but the report was an internal error (70), so a
    script would send it again; now one line says the output failed and the message went."""
    import subprocess
    import sys

    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "ssmtp_mailer", "send", "--json", "--to", "a@x.example",
             "--body", "hi"],
            stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE, timeout=30,
        )  # fmt: skip
    (msg,) = smtp_server.wait_for(1)
    message_id = parse(msg.data.decode())["Message-ID"]
    assert (done.returncode, done.stderr.decode()) == (
        74,
        "ssmtp-mailer: standard output: No space left on device; "
        f"the message was delivered to 1 recipient(s) {message_id}\n",
    )


def test_a_closed_stdin_is_one_line(config: Path, smtp_server: SMTPTestServer) -> None:
    """`send --to a@x.example <&-`: no body to read, EX_IOERR as sendmail says it (it was an
    internal error, AttributeError on sys.stdin.buffer)."""
    import subprocess
    import sys

    without_stdin = "import os, sys; os.close(0); os.execv(sys.executable, sys.argv)"
    done = subprocess.run(
        [sys.executable, "-c", without_stdin, "-m", "ssmtp_mailer", "send", "--to", "a@x.example"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (
        74,
        b"ssmtp-mailer: standard input: not open (closed by the program that ran us)\n",
    )
    assert smtp_server.messages == []
