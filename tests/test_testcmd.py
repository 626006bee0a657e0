"""`ssmtp-mailer test`: step-by-step route checks against real servers, hints, JSON, exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer
from test_relay import PASSWORD, USER, make_config, no_secret_leaks

from ssmtp_mailer.entry import main

__all__ = ["no_secret_leaks"]

Factory = Callable[..., SMTPTestServer]


def run(capfd: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, str, str]:
    code = main(["test", "-C", str(tmp_path / "ssmtp-mailer.conf"), *args])
    out, err = capfd.readouterr()
    return code, out, err


def auth_server(factory: Factory, **options: object) -> SMTPTestServer:
    return factory(starttls=True, auth={USER: PASSWORD}, **options)


def test_every_step_passes(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = auth_server(smtp_server_factory)
    make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    code, out, _ = run(capfd, tmp_path)
    assert code == 0
    for step in (
        "DNS:",
        "TCP connect:",
        "banner: 220",
        "EHLO:",
        "STARTTLS: TLSv1.",
        "certificate:",
    ):
        assert f"ok    {step}" in out
    assert f"AUTH: PLAIN as {USER}: accepted" in out
    assert "verified against" in out and "expires" in out
    assert f"tls_fingerprint = {server.cert_fingerprint_sha256}" in out
    assert "=> passed" in out
    assert server.messages == []


def test_printed_fingerprint_is_accepted_by_the_config(
    smtp_server_factory: Factory, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = auth_server(smtp_server_factory, cert="self-signed")
    make_config(
        tmp_path, server, use_starttls=True, auth_method="AUTO", username=USER, password=PASSWORD
    )
    code, out, _ = run(capfd, tmp_path)
    assert code == 76
    assert "FAIL  TLS: TLS certificate not accepted" in out
    assert "hint: if the relay uses a private CA set ssl_ca_file" in out
    assert "NOT trusted" in out
    # The untrusted certificate is still described, so the user can check it out of band.
    trusted_line = next(line for line in out.splitlines() if "NOT trusted" in line)
    assert "subject CN=" in trusted_line and "expires 20" in trusted_line
    assert "names 127.0.0.1" in trusted_line or "names localhost" in trusted_line
    pin_line = next(line for line in out.splitlines() if "tls_fingerprint = " in line)
    pin = pin_line.split("tls_fingerprint = ")[1].strip()
    assert pin == server.cert_fingerprint_sha256
    assert server.auth_attempts == []
    # paste it into the route: now every step passes, including AUTH
    make_config(
        tmp_path, server, use_starttls=True, auth_method="AUTO", username=USER, password=PASSWORD,
        tls_fingerprint=pin,
    )  # fmt: skip
    code, out, _ = run(capfd, tmp_path)
    assert code == 0, out
    assert "matches tls_fingerprint" in out


def test_wrong_password_has_the_username_hint(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = auth_server(smtp_server_factory)
    make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="PLAIN",
        username="noreply", password="not the password",
    )  # fmt: skip
    code, out, _ = run(capfd, tmp_path)
    assert code == 77
    assert "FAIL  AUTH: authentication refused: 535" in out
    assert "without the domain" in out and "OCID" in out


def test_closed_port(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from test_relay_faults import closed_port

    make_config(tmp_path, smtp_server="127.0.0.1", smtp_port=closed_port())
    code, out, _ = run(capfd, tmp_path)
    assert code == 75
    assert "FAIL  TCP connect" in out and "hint: nothing listens there" in out


def test_unknown_host(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    make_config(tmp_path, smtp_server="no-such-relay.invalid", smtp_port=587)
    code, out, _ = run(capfd, tmp_path)
    assert code == 68
    assert "FAIL  DNS: no-such-relay.invalid" in out


def test_json_and_to_sends_a_message(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = auth_server(smtp_server_factory)
    make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD, relay_account=USER,
    )  # fmt: skip
    code, out, _ = run(capfd, tmp_path, "--json", "--to", "admin@example.org")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True
    [route] = data["routes"]
    assert route["route"] == "example.com" and route["exit_code"] == 0
    assert route["tls_fingerprint"] == server.cert_fingerprint_sha256
    names = [s["name"] for s in route["steps"]]
    assert names == [
        "DNS", "TCP connect", "banner", "EHLO", "STARTTLS", "certificate", "AUTH", "test message"
    ]  # fmt: skip
    [got] = server.messages
    assert got.rcpt_tos == ["admin@example.org"] and got.mail_from == USER
    assert got.message()["Subject"].startswith("ssmtp-mailer test")


def test_verbose_transcript_is_redacted(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = auth_server(smtp_server_factory)
    make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="LOGIN",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    code, out, _ = run(capfd, tmp_path, "-v")
    assert code == 0
    assert "C: AUTH LOGIN" in out and "C: <redacted>" in out and "S: 235" in out


def test_domain_selects_one_route(
    smtp_server: SMTPTestServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    make_config(tmp_path, smtp_server)
    code, out, _ = run(capfd, tmp_path, "--domain", "EXAMPLE.com")
    assert code == 0 and "[domain:example.com]" in out
    assert "TLS: none" in out and "AUTH: not used" in out
    code, _, err = run(capfd, tmp_path, "--domain", "nope")
    assert code == 78 and "no such route" in err and "example.com" in err


def test_failing_route_sets_the_exit_code_but_all_are_checked(
    smtp_server_factory: Factory, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    good = smtp_server_factory()
    config_file = tmp_path / "ssmtp-mailer.conf"
    make_config(tmp_path, good)
    config_file.write_text(
        config_file.read_text()
        + "\n[domain:broken]\nsmtp_server = no-such-relay.invalid\nuse_starttls = false\n"
    )
    code, out, _ = run(capfd, tmp_path)
    assert code == 68
    assert "[domain:example.com]" in out and "[domain:broken]" in out
    assert out.count("=> passed") == 1 and out.count("=> FAILED") == 1
