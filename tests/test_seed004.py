"""Seed 004 end to end: the shipped etc/ssmtp-mailer tree forwards the contact-* aliases."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from relayconf import RunMain
from smtpserver import SMTPTestServer

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "ssmtp-mailer"
ALIASES = [
    "contact-general",
    "contact-legal",
    "contact-privacy",
    "contact-support",
    "contact-sales",
]
APP_PASSWORD = "gmail app pass: 16 chars"


@pytest.fixture
def gmail(smtp_server_factory: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    """A stand-in for smtp.gmail.com:587: STARTTLS required, AUTH for the relay account."""
    return smtp_server_factory(
        starttls=True, require_starttls=True, auth={"mail-relay@domain1.com": APP_PASSWORD}
    )


@pytest.fixture
def tree(tmp_path: Path, gmail: SMTPTestServer) -> Path:
    """The shipped tree, with only the Gmail route pointed at the stand-in and a password set."""
    return shipped_tree(tmp_path, gmail)


def shipped_tree(tmp_path: Path, gmail: SMTPTestServer) -> Path:
    """Copy etc/ssmtp-mailer into tmp_path, its Gmail route aimed at `gmail`; the main file."""
    root = tmp_path / "ssmtp-mailer"
    shutil.copytree(EXAMPLE, root)
    main_conf = root / "ssmtp-mailer.conf"
    main_conf.write_text(
        main_conf.read_text().replace("[global]\n", f"[global]\nspool_dir = {tmp_path}/spool\n", 1)
    )
    domain = root / "domains" / "domain1.com.conf"
    text = domain.read_text()
    assert "smtp_server = smtp.gmail.com\n" in text
    text = text.replace("smtp_server = smtp.gmail.com\n", "smtp_server = 127.0.0.1\n")
    text = text.replace("smtp_port = 587\n", f"smtp_port = {gmail.port}\n")
    gmail.write_ca_pem(tmp_path / "ca.pem")
    text += f'ssl_ca_file = {tmp_path / "ca.pem"}\npassword = "{APP_PASSWORD}"\n'
    domain.write_text(text)
    domain.chmod(0o600)
    return main_conf


@pytest.fixture
def run(run_main: RunMain) -> RunMain:
    """`run_main`, also checking that the relay password is never shown."""

    def invoke(args: list[str], stdin: bytes = b"", prog: str = "sendmail") -> tuple[int, str, str]:
        code, out, err = run_main(args, stdin, prog)
        assert APP_PASSWORD not in out + err
        return code, out, err

    return invoke


@pytest.mark.parametrize("alias", ALIASES)
def test_alias_is_forwarded_through_the_gmail_route(
    tree: Path,
    gmail: SMTPTestServer,
    alias: str,
    run: RunMain,
) -> None:
    message = (
        f"From: Visitor <visitor@outside.example>\nTo: {alias}@mailer.domain1.com\n"
        f"Subject: hello {alias}\n\nA question.\n"
    ).encode()
    code, _, err = run(["-C", str(tree), "-t", "-i"], message)
    assert code == 0, err
    (received,) = gmail.wait_for(1)
    assert received.rcpt_tos == [f"{alias}@domain1.com"]
    assert received.tls and received.auth_user == "mail-relay@domain1.com"
    # Forwarded mail leaves as the relay account; the visitor stays reachable.
    assert received.mail_from == "mail-relay@domain1.com"
    parsed = received.message()
    assert parsed["To"] == f"{alias}@domain1.com"
    assert "visitor@outside.example" in (parsed["Reply-To"] or parsed["From"])
    assert parsed["Subject"] == f"hello {alias}"


def test_all_five_aliases_in_one_message_make_one_transaction(
    tree: Path,
    gmail: SMTPTestServer,
    run: RunMain,
) -> None:
    to = ", ".join(f"{a}@mailer.domain1.com" for a in ALIASES)
    code, _, err = run(
        ["-C", str(tree), "-t"],
        f"From: v@outside.example\nTo: {to}\nSubject: all\n\nx\n".encode(),
    )
    assert code == 0, err
    (received,) = gmail.wait_for(1)
    assert received.rcpt_tos == [f"{a}@domain1.com" for a in ALIASES]


def test_send_command_of_the_seed_document(
    tree: Path,
    gmail: SMTPTestServer,
    run: RunMain,
) -> None:
    code, _, err = run(
        [
            "--config",
            str(tree),
            "send",
            "--from",
            "contact-general@mailer.domain1.com",
            "--to",
            "test@example.com",
            "--subject",
            "Test Email",
            "--body",
            "This is a test email from the relay system",
        ],
        prog="ssmtp-mailer",
    )
    assert code == 0, err
    (received,) = gmail.wait_for(1)
    assert received.rcpt_tos == ["test@example.com"]
    assert received.message()["Subject"] == "Test Email"
    assert b"This is a test email from the relay system" in received.data


def test_wrong_password_is_exit_77_with_hint_and_message_kept(
    tree: Path,
    gmail: SMTPTestServer,
    run: RunMain,
) -> None:
    domain = tree.parent / "domains" / "domain1.com.conf"
    domain.write_text(domain.read_text().replace(APP_PASSWORD, "not the app password"))
    code, _, err = run(
        ["-C", str(tree), "-t"],
        b"To: contact-sales@mailer.domain1.com\nSubject: x\n\nx\n",
    )
    assert code == 77
    assert "535" in err and "hint:" in err
    assert "not the app password" not in err
    assert gmail.messages == []
    code, out, _ = run(["-C", str(tree), "queue", "list", "--failed"], prog="ssmtp-mailer")
    assert code == 0
    assert "contact-sales@domain1.com" in out
