"""Hostile or broken input on the sendmail path: refused cleanly, or handled, never smuggled."""

from __future__ import annotations

from pathlib import Path

import pytest
from relayconf import RunMain, write_relay_config
from smtpserver import SMTPTestServer


@pytest.fixture
def conf(tmp_path: Path, smtp_server: SMTPTestServer) -> Path:
    return write_relay_config(
        tmp_path / "m.conf", smtp_server.port, "default_from = fallback@host.example\n"
    )


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
    run_main: RunMain,
    args: list[str],
) -> None:
    code, _, err = run_main(["-C", str(conf), *args], MESSAGE)
    assert code == 64
    assert "CR, LF or NUL inside an argument" in err
    assert len(err.splitlines()) == 1
    assert smtp_server.messages == []


def test_two_senders_in_f_is_a_usage_error(
    conf: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    code, _, err = run_main(
        ["-C", str(conf), "-f", "a@x.example, b@x.example", "c@x.example"],
        MESSAGE,
    )
    assert code == 64
    assert "exactly one sender" in err
    assert smtp_server.messages == []


def test_from_header_without_an_address_falls_back_to_default_from(
    conf: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    code, _, err = run_main(
        ["-C", str(conf), "a@x.example"],
        b"From: Backup Script\nSubject: x\n\nx\n",
    )
    assert code == 0, err
    (received,) = smtp_server.wait_for(1)
    assert received.mail_from == "fallback@host.example"
    # The name stays, with that address: not `Backup Script@host.example`.
    assert received.message()["From"] == "Backup Script <fallback@host.example>"


def test_bi_is_newaliases(conf: Path, run_main: RunMain) -> None:
    code, _, err = run_main(["-C", str(conf), "-bi"], b"")
    assert code == 0
    assert "mapping" in err


def test_policy_cannot_be_bypassed_by_letter_case(tmp_path: Path, run_main: RunMain) -> None:
    conf = tmp_path / "pol.conf"
    conf.write_text(
        "[global]\ndefault_hostname = h.example\n[domain:*]\nsmtp_server = s.example\n"
        "[user:alice@h.example]\ncan_send_from = false\n"
    )
    for sender in ("alice@h.example", "Alice@h.example", "ALICE@H.EXAMPLE"):
        code, _, err = run_main(
            ["route", "-C", str(conf), "--from", sender, "--to", "b@x.example"], prog="ssmtp-mailer"
        )
        assert code == 77, sender
        assert "can_send_from = false" in err
