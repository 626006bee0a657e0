"""Hostile or broken input on the sendmail path: refused cleanly, or handled, never smuggled."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer

from ssmtp_mailer.entry import main


@pytest.fixture
def conf(tmp_path: Path, smtp_server: SMTPTestServer) -> Path:
    path = tmp_path / "m.conf"
    path.write_text(
        f"[global]\ndefault_hostname = host.example\ndefault_from = fallback@host.example\n"
        f"spool_dir = {tmp_path}/spool\nmax_retries = 0\nenable_rate_limiting = false\n"
        f"[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {smtp_server.port}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    return path


def sendmail(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    stdin: bytes,
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    capsys.readouterr()
    code = main(args, prog_name="sendmail")
    return code, capsys.readouterr().err


MESSAGE = b"Subject: hi\n\nbody\n"


@pytest.mark.parametrize(
    "args",
    [
        ["a@x.example\r\nRCPT TO:<evil@x.example>"],
        ["-f", "me@x.example\r\nRCPT TO:<evil@x.example>", "a@x.example"],
        ["-F", "Evil\r\nBcc: evil@x.example", "a@x.example"],
        ["a@x.example\0"],
    ],
    ids=["recipient", "sender", "full-name", "nul"],
)
def test_cr_lf_nul_in_arguments_is_refused_and_nothing_sent(
    conf: Path,
    smtp_server: SMTPTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    code, err = sendmail(monkeypatch, capsys, ["-C", str(conf), *args], MESSAGE)
    assert code == 64
    assert "CR, LF or NUL inside an argument" in err
    assert len(err.splitlines()) == 1
    assert smtp_server.messages == []


def test_two_senders_in_f_is_a_usage_error(
    conf: Path,
    smtp_server: SMTPTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = sendmail(
        monkeypatch,
        capsys,
        ["-C", str(conf), "-f", "a@x.example, b@x.example", "c@x.example"],
        MESSAGE,
    )
    assert code == 64
    assert "exactly one sender" in err
    assert smtp_server.messages == []


def test_from_header_without_an_address_falls_back_to_default_from(
    conf: Path,
    smtp_server: SMTPTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = sendmail(
        monkeypatch,
        capsys,
        ["-C", str(conf), "a@x.example"],
        b"From: Backup Script\nSubject: x\n\nx\n",
    )
    assert code == 0, err
    (received,) = smtp_server.wait_for(1)
    assert received.mail_from == "fallback@host.example"


def test_bi_is_newaliases(
    conf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = sendmail(monkeypatch, capsys, ["-C", str(conf), "-bi"], b"")
    assert code == 0
    assert "mapping" in err


def test_policy_cannot_be_bypassed_by_letter_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "pol.conf"
    conf.write_text(
        "[global]\ndefault_hostname = h.example\n[domain:*]\nsmtp_server = s.example\n"
        "[user:alice@h.example]\ncan_send_from = false\n"
    )
    for sender in ("alice@h.example", "Alice@h.example", "ALICE@H.EXAMPLE"):
        capsys.readouterr()
        code = main(
            ["route", "-C", str(conf), "--from", sender, "--to", "b@x.example"], "ssmtp-mailer"
        )
        assert code == 77, sender
        assert "can_send_from = false" in capsys.readouterr().err
