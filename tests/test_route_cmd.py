"""`ssmtp-mailer route`: text and JSON on the shipped example tree, and its exit codes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ssmtp_mailer.cli import cli
from ssmtp_mailer.entry import main

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "ssmtp-mailer" / "ssmtp-mailer.conf"
MAPPINGS = EXAMPLE.parent / "mappings" / "relay-mappings.conf"
USERS = EXAMPLE.parent / "users" / "mail-relay@domain1.com.conf"
ALIASES = ("general", "legal", "privacy", "support", "sales")


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["route", "-C", str(EXAMPLE), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def mapping_line(alias: str) -> int:
    lines = MAPPINGS.read_text().splitlines()
    return lines.index(f"[mapping:contact-{alias}]") + 1


@pytest.mark.parametrize("alias", ALIASES)
def test_each_alias_routes_to_domain1_rewritten(alias: str) -> None:
    out = run("--from", "Bob <bob@example.org>", "--to", f"contact-{alias}@mailer.domain1.com")
    assert (
        f"[mapping:contact-{alias}] {MAPPINGS}:{mapping_line(alias)}: recipient"
        f" contact-{alias}@mailer.domain1.com -> contact-{alias}@domain1.com"
    ) in out
    assert "[domain:domain1.com]" in out
    assert "server: smtp.gmail.com:587" in out
    assert "tls: STARTTLS, certificate verified" in out
    assert "auth: LOGIN as mail-relay@domain1.com" in out
    assert "MAIL FROM:<mail-relay@domain1.com>" in out
    assert f"RCPT TO:<contact-{alias}@domain1.com>" in out
    assert "From: mail-relay@domain1.com" in out
    assert "Reply-To: bob@example.org" in out
    assert "policy: allowed" in out


@pytest.mark.parametrize("alias", ALIASES)
def test_each_alias_as_json(alias: str) -> None:
    data = json.loads(
        run("--json", "--from", "bob@example.org", "--to", f"contact-{alias}@mailer.domain1.com")
    )
    assert data["sender"] == {"given": "bob@example.org", "final": "bob@example.org"}
    [match] = data["mappings"]
    assert match["mapping"] == f"contact-{alias}"
    assert match["section"] == f"{MAPPINGS}:{mapping_line(alias)}"
    assert match["rewritten"] == f"contact-{alias}@domain1.com"
    assert data["header_rewrites"] == {
        f"contact-{alias}@mailer.domain1.com": f"contact-{alias}@domain1.com"
    }
    [group] = data["routes"]
    assert group["route"] == "domain1.com"
    assert (group["server"], group["port"], group["auth_method"]) == (
        "smtp.gmail.com",
        587,
        "LOGIN",
    )
    assert group["tls"].startswith("STARTTLS")
    assert group["envelope_from"] == "mail-relay@domain1.com"
    assert group["recipients"] == [f"contact-{alias}@domain1.com"]
    assert (group["header_from"], group["reply_to"]) == (
        "mail-relay@domain1.com",
        "bob@example.org",
    )
    assert data["policy"]["verdict"] == "allowed"
    assert data["steps"]


def test_aliases_and_a_local_recipient_split_by_route() -> None:
    to = ",".join(f"contact-{a}@mailer.domain1.com" for a in ALIASES)
    data = json.loads(run("--json", "--from", "root", "--to", to, "--to", "root"))
    assert data["sender"]["given"] == "root@mailer.domain1.com"
    assert data["recipients"][-1] == "root@mailer.domain1.com"
    gmail, local = data["routes"]
    assert gmail["route"] == "domain1.com"
    assert gmail["recipients"] == [f"contact-{a}@domain1.com" for a in ALIASES]
    assert gmail["envelope_from"] == "mail-relay@domain1.com"
    assert gmail["reply_to"] == "root@mailer.domain1.com"
    assert local["route"] == "mailer.domain1.com"
    assert local["recipients"] == ["root@mailer.domain1.com"]
    assert local["envelope_from"] == "root@mailer.domain1.com"


def test_local_sender_uses_its_domain_route() -> None:
    out = run("--from", "root", "--to", "admin@example.net")
    assert "[domain:mailer.domain1.com]" in out
    assert "server: localhost:25" in out
    assert "tls: none (plaintext)" in out
    assert "auth: none" in out
    assert "MAIL FROM:<root@mailer.domain1.com>" in out


def test_default_sender_and_null_sender() -> None:
    data = json.loads(run("--json", "--to", "a@domain1.com"))
    assert data["sender"]["given"] == "noreply@mailer.domain1.com"
    data = json.loads(run("--json", "--from", "<>", "--to", "a@domain1.com"))
    assert data["routes"][0]["envelope_from"] == ""


def write_tree(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        path.chmod(0o600)
    return tmp / "ssmtp-mailer.conf"


def test_no_secret_is_printed_or_resolved(tmp_path: Path) -> None:
    main_file = write_tree(
        tmp_path,
        {
            "ssmtp-mailer.conf": """\
                [global]
                default_hostname = srv.example
                spool_dir = spool
                [domain:srv.example]
                smtp_server = mail.srv.example
                use_ssl = true
                username = me@srv.example
                password = hunter2-secret
                [domain:other.example]
                smtp_server = mail.other.example
                password_command = touch ran-password-command
            """
        },
    )
    result = CliRunner().invoke(
        cli, ["route", "-C", str(main_file), "--json", "--from", "me", "--to", "a@b.example"]
    )
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    data = json.loads(result.output)
    assert data["routes"][0]["tls"].startswith("implicit TLS")
    assert data["routes"][0]["port"] == 465
    assert not (tmp_path / "ran-password-command").exists()


def test_no_route_exits_78_naming_the_sender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_file = write_tree(
        tmp_path,
        {
            "ssmtp-mailer.conf": """\
                [global]
                default_hostname = srv.example
                spool_dir = spool
                [domain:relay.example]
                smtp_server = mail.relay.example
            """
        },
    )
    code = main(
        ["route", "-C", str(main_file), "--from", "someone@nowhere.example", "--to", "a@b.example"]
    )
    assert code == 78
    err = capsys.readouterr().err
    assert "ssmtp-mailer: someone@nowhere.example: no route for this sender" in err
    assert "no [domain:nowhere.example]" in err


def test_policy_refusal_exits_77_with_file_and_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["route", "-C", str(EXAMPLE), "--from", "mail-relay@domain1.com", "--to", "x@example.org"]
    )
    assert code == 77
    captured = capsys.readouterr()
    assert f"{USERS}:2" in captured.err
    assert "x@example.org" in captured.err
    assert "policy: refused" in captured.out
    assert "refused x@example.org: domain not in allowed_domains" in captured.out


def test_sender_refusal_exits_77_after_printing_the_decisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_file = write_tree(
        tmp_path,
        {
            "ssmtp-mailer.conf": """\
                [global]
                default_hostname = srv.example
                spool_dir = spool
                users_required = true
                [domain:*]
                smtp_server = mail.relay.example
                [user:cron@srv.example]
                can_send_from = false
            """
        },
    )
    code = main(["route", "-C", str(main_file), "--json", "--from", "cron", "--to", "a@b.example"])
    assert code == 77
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["policy"]["sender_refused"]["rule"] == f"{main_file}:7"
    assert f"{main_file}:7" in captured.err
    assert main(["route", "-C", str(main_file), "--from", "other", "--to", "a@b.example"]) == 77
    assert "users_required" in capsys.readouterr().err


def test_partial_refusal_exits_77_like_sendmail_and_names_the_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--from", "mail-relay@domain1.com", "--to", "a@domain1.com", "--to", "x@example.org"]
    assert main(["route", "-C", str(EXAMPLE), *args]) == 77
    captured = capsys.readouterr()
    assert "policy: partly refused" in captured.out
    assert "refused x@example.org" in captured.out
    assert "RCPT TO:<a@domain1.com>" in captured.out
    assert "x@example.org: domain not in allowed_domains" in captured.err
    assert f"{USERS}:2" in captured.err


def test_to_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "-C", str(EXAMPLE), "--from", "a@b.example"]) == 64
    # An empty --to is no recipient, as for sendmail (it printed "routes: none", exit 0).
    assert main(["route", "-C", str(EXAMPLE), "--to", ""]) == 64
    assert capsys.readouterr().err.endswith("ssmtp-mailer: --to: no recipients\n")


def test_to_reads_addresses_as_sendmail_does() -> None:
    """A display name with a comma, or a quoted local part holding one, is one address:
    `route` split them at the comma and refused '"Doe' (exit 64), where send took them."""
    out = run(
        "--from", "a@domain1.com",
        "--to", '"Doe, John" <contact-general@mailer.domain1.com>',
        "--to", '"a,b"@domain1.com, c@domain1.com',
    )  # fmt: skip
    assert "RCPT TO:<contact-general@domain1.com>" in out
    assert 'RCPT TO:<"a,b"@domain1.com>' in out and "RCPT TO:<c@domain1.com>" in out
