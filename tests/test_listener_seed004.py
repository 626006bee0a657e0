"""Seed 004's inbound half: the shipped tree behind `ssmtp-mailer listen`, mail from the internet."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer
from test_listener import Listener, start_listener  # noqa: F401 (the fixture)
from test_seed004 import APP_PASSWORD, gmail, shipped_tree  # noqa: F401 (gmail: the fixture)


@pytest.fixture
def tree(tmp_path: Path, gmail: SMTPTestServer) -> Path:  # noqa: F811
    """The shipped tree; the Gmail route points at the stand-in, the listener stays root."""
    main_conf = shipped_tree(tmp_path, gmail)
    text = main_conf.read_text()
    assert "listen_user = mail\n" in text
    text = text.replace("listen_user = mail\n", "listen_user = root\n")  # tmp_path is root's
    # 127.0.0.2 plays the internet: only the listener's own host is trusted.
    text = text.replace(
        "allowed_networks = 127.0.0.0/8, ::1/128", "allowed_networks = 127.0.0.1/32"
    )
    main_conf.write_text(text)
    return main_conf


def test_the_internet_reaches_the_contact_aliases_and_nothing_else(
    tree: Path,
    gmail: SMTPTestServer,  # noqa: F811
    start_listener: Callable[[Path], Listener],  # noqa: F811
) -> None:
    listener = start_listener(tree)
    with listener.client("127.0.0.2") as client:
        client.ehlo("mx.visitor.example")
        client.mail("visitor@outside.example")
        assert client.rcpt("contact-general@mailer.domain1.com")[0] == 250
        assert client.rcpt("contact-legal@mailer.domain1.com")[0] == 250
        code, text = client.rcpt("anyone@gmail.com")
        assert code == 554 and b"5.7.1" in text
        code, _ = client.data(
            "From: Visitor <visitor@outside.example>\r\nTo: contact-general@mailer.domain1.com,"
            " contact-legal@mailer.domain1.com\r\nSubject: Test Email\r\n\r\nhello\r\n"
        )
        assert code == 250
    got = gmail.wait_for(1)[0]
    assert got.auth_user == "mail-relay@domain1.com" and got.tls
    assert sorted(got.rcpt_tos) == ["contact-general@domain1.com", "contact-legal@domain1.com"]
    msg = got.message()
    assert "contact-general@domain1.com" in str(msg["To"])
    assert "visitor@outside.example" in str(msg["Reply-To"]) + str(msg["From"])
    assert APP_PASSWORD not in "\n".join(listener.lines)


def test_an_unmapped_local_part_of_the_mailer_domain_is_refused(
    tree: Path,
    gmail: SMTPTestServer,  # noqa: F811
    start_listener: Callable[[Path], Listener],  # noqa: F811
) -> None:
    listener = start_listener(tree)
    with listener.client("127.0.0.2") as client:
        client.ehlo("mx.visitor.example")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail(
                "visitor@outside.example", ["postmaster@domain1.com"], "Subject: x\r\n\r\nx\r\n"
            )
    assert gmail.messages == []


def test_a_bounce_for_a_contact_alias_is_forwarded_with_the_null_sender(
    tree: Path,
    gmail: SMTPTestServer,  # noqa: F811
    start_listener: Callable[[Path], Listener],  # noqa: F811
) -> None:
    """An outside MTA's failure notice (RFC 5321 §4.5.5: MAIL FROM:<>) for mail a contact
    alias sent; it must not come back with a sender a second bounce could go to."""
    listener = start_listener(tree)
    with listener.client("127.0.0.2") as client:
        client.ehlo("mx.visitor.example")
        assert client.mail("")[0] == 250
        assert client.rcpt("contact-general@mailer.domain1.com")[0] == 250
        code, text = client.rcpt("anyone@gmail.com")
        assert code == 554 and b"5.7.1" in text
        code, _ = client.data(
            "From: Mail Delivery System <MAILER-DAEMON@mx.visitor.example>\r\n"
            "To: contact-general@mailer.domain1.com\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n\r\nno such user\r\n"
        )
        assert code == 250
    got = gmail.wait_for(1)[0]
    assert (got.mail_from, got.rcpt_tos) == ("<>", ["contact-general@domain1.com"])
    assert got.auth_user == "mail-relay@domain1.com" and got.tls
    assert got.message()["To"] == "contact-general@domain1.com"


def test_the_internet_hears_no_configuration_paths_when_refused(
    tree: Path,
    tmp_path: Path,
    gmail: SMTPTestServer,  # noqa: F811
    start_listener: Callable[[Path], Listener],  # noqa: F811
) -> None:
    """A policy refusal's why names the section and file:line that decided it: the admin's
    clients hear it, the internet hears only the codes, and the why goes to the log."""
    log_file = tmp_path / "mail.log"
    text = tree.read_text().replace("users_required = false", "users_required = true")
    tree.write_text(text.replace("[global]\n", f"[global]\nlog_file = {log_file}\n", 1))
    listener = start_listener(tree)
    with listener.client("127.0.0.2") as client:
        client.ehlo("mx.visitor.example")
        client.mail("visitor@outside.example")
        code, said = client.rcpt("contact-sales@mailer.domain1.com")
    assert (code, said) == (
        550,
        b"5.7.1 <contact-sales@mailer.domain1.com>: Recipient address rejected",
    )
    logged = log_file.read_text()
    assert "users_required = true" in logged and f"{tree}:" in logged and "[127.0.0.2]" in logged
    with listener.client("127.0.0.1") as client:
        client.ehlo("app.domain1.com")
        client.mail("visitor@outside.example")
        code, said = client.rcpt("contact-sales@mailer.domain1.com")
    assert code == 550 and b"users_required = true" in said and str(tree).encode() in said
    assert gmail.messages == []
