"""The relay engine against real aiosmtpd servers: TLS, AUTH, transactions, logging, rate limit."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from smtpserver import SMTPTestServer

from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import (
    ConfigError,
    DataError,
    MailerError,
    NoPermError,
    NoUserError,
    ProtocolError,
    TempFailError,
)
from ssmtp_mailer.relay import ratelimit
from ssmtp_mailer.relay.engine import DeliveryLog, DeliveryResult, deliver
from ssmtp_mailer.rewrite import RouteGroup

Factory = Callable[..., SMTPTestServer]

USER = "relay-user@example.com"
PASSWORD = 'S3cret: p@ss#"word with spaces'
OCI_USER = "ocid1.user.oc1..aaaaexample@ocid1.tenancy.oc1..bbbbexample.com"
OCI_PASSWORD = 'oci:pa@ss#w"rd ok'
TOKEN = "ya29.oauth-token-value-XYZ"
SECRETS = (PASSWORD, OCI_PASSWORD, TOKEN)
SENDER = "sender@example.com"
RCPT = "rcpt@example.org"
MESSAGE = (
    b"From: sender@example.com\r\n"
    b"To: rcpt@example.org\r\n"
    b"Subject: test\r\n"
    b"Message-ID: <m1@test.example>\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"last line\r\n"
)


def _ini_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps([str(v) for v in value])
    text = str(value)
    # JSON quoting keeps `#`, `;`, quotes and spaces inside a value (config/ini.py).
    return json.dumps(text) if any(c in text for c in "#;\"' \\") else text


def make_config(
    tmp_path: Path,
    server: SMTPTestServer | None = None,
    *,
    name: str = "example.com",
    global_: dict[str, Any] | None = None,
    **domain: Any,
) -> Config:
    """Write an INI for one route (to `server` unless smtp_server is given) and load it."""
    settings: dict[str, Any] = {
        "default_hostname": "client.test.example",
        "spool_dir": tmp_path / "spool",
        "log_file": tmp_path / "mail.log",
        "log_level": "DEBUG",
        "connection_timeout": 2,
        "read_timeout": 2,
        "write_timeout": 2,
        "max_retries": 0,
        "retry_backoff": 0,
    }
    settings.update(global_ or {})
    route: dict[str, Any] = {"use_starttls": False, "auth_method": "NONE"}
    if server is not None:
        route.update(smtp_server=server.host, smtp_port=server.port)
    route.update(domain)
    lines = ["[global]", *(f"{k} = {_ini_value(v)}" for k, v in settings.items())]
    lines += ["", f"[domain:{name}]", *(f"{k} = {_ini_value(v)}" for k, v in route.items())]
    path = tmp_path / "ssmtp-mailer.conf"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return load_config(str(path))


def send(
    config: Config,
    recipients: tuple[str, ...] = (RCPT,),
    data: bytes = MESSAGE,
    *,
    sender: str = SENDER,
    name: str = "example.com",
    **kwargs: Any,
) -> DeliveryResult:
    """Deliver one group as the pipeline does, log line included."""
    group = RouteGroup(route=config.domains[name], envelope_from=sender, recipients=recipients)
    record = DeliveryLog(config, group, data)
    try:
        result = deliver(config, group, data, record=record, **kwargs)
    except MailerError as exc:
        record.not_sent(exc, "failed", exc.exit_code)
        raise
    record.sent(result, 0)
    return result


@pytest.fixture(autouse=True)
def no_secret_leaks(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> Iterator[None]:
    """No password or token ever reaches stdout, stderr or the log file."""
    yield
    out, err = capfd.readouterr()
    log_text = (tmp_path / "mail.log").read_text() if (tmp_path / "mail.log").exists() else ""
    for secret in SECRETS:
        for where, text in (("stdout", out), ("stderr", err), ("log", log_text)):
            assert secret not in text, f"secret leaked to {where}"
    sys.stdout.write(out)
    sys.stderr.write(err)


def tls_server(factory: Factory, **options: Any) -> SMTPTestServer:
    return factory(starttls=True, auth={USER: PASSWORD, OCI_USER: OCI_PASSWORD}, **options)


# -- plain delivery -------------------------------------------------------------


def test_exact_bytes_envelope_and_helo(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp_server)
    result = send(config, (RCPT, "second@example.org"))
    [got] = smtp_server.messages
    assert got.data == MESSAGE  # dot-stuffed on the wire, unstuffed by the server
    assert got.mail_from == SENDER
    assert got.rcpt_tos == [RCPT, "second@example.org"]
    assert got.helo == "client.test.example"
    assert result.accepted == (RCPT, "second@example.org")
    assert result.refused == {}
    assert result.reply.startswith("250")
    assert result.tls is None and result.auth_user is None
    assert result.server == f"127.0.0.1:{smtp_server.port}"


def test_helo_name_and_null_sender(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp_server, helo_name="mx.custom.example")
    send(config, sender="")
    [got] = smtp_server.messages
    assert got.helo == "mx.custom.example"
    assert got.mail_from == "<>"


def test_message_without_final_crlf_and_leading_dot(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    config = make_config(tmp_path, smtp_server)
    data = b"Subject: x\r\n\r\n.starts\r\nno newline at end"
    send(config, data=data)
    assert smtp_server.messages[0].data == data + b"\r\n"


def test_large_message_streams_exactly(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp_server)
    body = b"".join(b".line %d with a leading dot\r\nplain line\r\n" % i for i in range(60000))
    data = b"Subject: big\r\n\r\n" + body
    assert len(data) > 2 * (1 << 20)  # several streaming chunks
    send(config, data=data)
    assert smtp_server.messages[0].data == data


def test_one_transaction_for_many_recipients(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp_server)
    recipients = tuple(f"user{i}@example.org" for i in range(300))
    result = send(config, recipients)
    assert smtp_server.connections == 1
    [got] = smtp_server.messages
    assert got.rcpt_tos == list(recipients)
    assert len(result.accepted) == 300


# -- TLS and authentication ------------------------------------------------------


# An explicit auth_method is honoured even where AUTO would pick another.
@pytest.mark.parametrize("method", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_starttls_and_auth(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path, method: str
) -> None:
    server = tls_server(smtp_server_factory)
    config = make_config(
        tmp_path,
        server,
        use_starttls=True,
        ssl_ca_file=ca_file,
        auth_method=method,
        username=USER,
        password=PASSWORD,
    )
    result = send(config)
    [got] = server.messages
    assert got.tls and got.auth_user == USER
    assert [(a.mechanism, a.success, a.tls) for a in server.auth_attempts] == [(method, True, True)]
    assert result.tls is not None and result.tls.startswith("TLSv1.")
    assert result.auth_user == USER


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        # Over TLS, fewest round trips first: PLAIN (1), CRAM-MD5 (2), LOGIN (3).
        (["PLAIN", "LOGIN", "CRAM-MD5"], "PLAIN"),
        (["LOGIN", "CRAM-MD5"], "CRAM-MD5"),
        (["LOGIN"], "LOGIN"),
    ],
)
def test_auto_over_tls_picks_the_fewest_round_trips(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path, offered: list[str], chosen: str
) -> None:
    server = tls_server(smtp_server_factory, auth_mechanisms=offered)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    send(config)
    assert [a.mechanism for a in server.auth_attempts] == [chosen]


def test_implicit_tls(smtp_server_factory: Factory, tmp_path: Path, ca_file: Path) -> None:
    server = smtp_server_factory(implicit_tls=True, auth={USER: PASSWORD})
    config = make_config(
        tmp_path, server, use_ssl=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    result = send(config)
    [got] = server.messages
    assert got.tls and got.auth_user == USER and got.data == MESSAGE
    assert result.tls is not None


def test_verifying_context_keeps_the_interpreter_checks(tmp_path: Path, ca_file: Path) -> None:
    """Python 3.13's VERIFY_X509_STRICT stays on: test certificates must meet it instead."""
    from ssmtp_mailer.relay.smtp import tls_context

    config = make_config(
        tmp_path, smtp_server="127.0.0.1", smtp_port=25, use_starttls=True, ssl_ca_file=ca_file
    )
    context = tls_context(config.domains["example.com"])
    defaults = ssl.create_default_context().verify_flags
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.verify_flags & defaults == defaults


def test_oci_style_username_and_special_password(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = tls_server(smtp_server_factory)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="PLAIN",
        username=OCI_USER, password=OCI_PASSWORD,
    )  # fmt: skip
    send(config)
    assert server.messages[0].auth_user == OCI_USER


def test_non_ascii_password(smtp_server_factory: Factory, tmp_path: Path, ca_file: Path) -> None:
    password = "pässwörd ✓"
    server = smtp_server_factory(starttls=True, auth={USER: password})
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="PLAIN",
        username=USER, password=password,
    )  # fmt: skip
    send(config)
    assert server.messages[0].auth_user == USER


def test_password_command_is_run_only_when_used(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = tls_server(smtp_server_factory)
    secret_file = tmp_path / "secret"
    secret_file.write_text(PASSWORD + "\nsecond line ignored\n")
    marker = tmp_path / "ran"
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password_command=f"touch {marker}; cat {secret_file}",
    )  # fmt: skip
    assert not marker.exists()
    send(config)
    assert marker.exists()
    assert server.messages[0].auth_user == USER


def test_xoauth2_token_command(smtp_server_factory: Factory, tmp_path: Path, ca_file: Path) -> None:
    server = smtp_server_factory(starttls=True, xoauth2_tokens={USER: TOKEN})
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="XOAUTH2",
        username=USER, oauth2_token_command=f"echo {TOKEN}",
    )  # fmt: skip
    lines: list[str] = []
    send(config, transcript=lines.append)
    assert [(a.mechanism, a.success) for a in server.auth_attempts] == [("XOAUTH2", True)]
    assert "C: AUTH XOAUTH2 <redacted>" in lines


def test_xoauth2_bad_token_is_auth_refused(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = smtp_server_factory(starttls=True, xoauth2_tokens={USER: "other"})
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="XOAUTH2",
        username=USER, oauth2_token_command=f"echo {TOKEN}",
    )  # fmt: skip
    with pytest.raises(NoPermError) as info:
        send(config)
    assert info.value.exit_code == 77


def test_failing_token_command_is_a_clear_config_error(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = smtp_server_factory(starttls=True, xoauth2_tokens={USER: TOKEN})
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="XOAUTH2",
        username=USER, oauth2_token_command="echo expired >&2; exit 3",
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        send(config)
    assert "oauth2_token_command" in info.value.what
    # Its stderr (a token helper's may hold the token) is for a terminal, not our error.
    assert "status 3" in info.value.why and "expired" not in info.value.why


def test_auth_refused_over_plaintext_before_anything_is_sent(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    server = smtp_server_factory(auth={USER: PASSWORD}, auth_require_tls=False)
    config = make_config(tmp_path, server, auth_method="AUTO", username=USER, password=PASSWORD)
    lines: list[str] = []
    with pytest.raises(NoPermError) as info:
        send(config, transcript=lines.append)
    assert info.value.exit_code == 77
    assert "unencrypted" in info.value.why
    assert "allow_plaintext_auth" in (info.value.hint or "")
    assert server.auth_attempts == []
    assert not any(line.startswith("C: AUTH") for line in lines)


def test_plaintext_auth_when_explicitly_allowed(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    server = smtp_server_factory(auth={USER: PASSWORD}, auth_require_tls=False)
    config = make_config(
        tmp_path, server, auth_method="LOGIN", username=USER, password=PASSWORD,
        allow_plaintext_auth=True,
    )  # fmt: skip
    send(config)
    assert server.messages[0].auth_user == USER


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["PLAIN", "LOGIN", "CRAM-MD5"], "CRAM-MD5"), (["LOGIN", "PLAIN"], "PLAIN")],
)
def test_auto_without_tls_prefers_cram_md5(
    smtp_server_factory: Factory, tmp_path: Path, offered: list[str], chosen: str
) -> None:
    server = smtp_server_factory(
        auth={USER: PASSWORD}, auth_require_tls=False, auth_mechanisms=offered
    )
    config = make_config(
        tmp_path, server, auth_method="AUTO", username=USER, password=PASSWORD,
        allow_plaintext_auth=True,
    )  # fmt: skip
    lines: list[str] = []
    send(config, transcript=lines.append)
    assert [(a.mechanism, a.success, a.tls) for a in server.auth_attempts] == [
        (chosen, True, False)
    ]
    # CRAM-MD5 sends a digest, never the password, not even base64-encoded.
    auth_lines = [line for line in lines if line.startswith("C: AUTH")]
    assert auth_lines == [
        f"C: AUTH {chosen}" if chosen == "CRAM-MD5" else "C: AUTH PLAIN <redacted>"
    ]


def test_plain_is_one_round_trip_with_an_initial_response(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = tls_server(smtp_server_factory)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    lines: list[str] = []
    send(config, transcript=lines.append)
    start = next(i for i, line in enumerate(lines) if line.startswith("C: AUTH"))
    assert lines[start] == "C: AUTH PLAIN <redacted>"
    assert lines[start + 1].startswith("S: 235")


def test_starttls_not_offered_is_a_protocol_error(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    config = make_config(tmp_path, smtp_server, use_starttls=True)
    with pytest.raises(ProtocolError) as info:
        send(config)
    assert info.value.exit_code == 76
    assert "STARTTLS" in info.value.why
    assert smtp_server.messages == []


def test_transcript_redacts_auth(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = tls_server(smtp_server_factory)
    for method in ("PLAIN", "LOGIN", "CRAM-MD5"):
        config = make_config(
            tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method=method,
            username=USER, password=PASSWORD,
        )  # fmt: skip
        lines: list[str] = []
        send(config, transcript=lines.append)
        text = "\n".join(lines)
        assert "C: STARTTLS" in text and "S: 235" in text
        assert "C: <message: " in text
        start = next(i for i, line in enumerate(lines) if line.startswith("C: AUTH"))
        end = next(i for i, line in enumerate(lines) if line.startswith("S: 235"))
        said = [line for line in lines[start:end] if line.startswith("C: ")]
        assert said[0] in (f"C: AUTH {method}", f"C: AUTH {method} <redacted>")
        assert all(line == "C: <redacted>" for line in said[1:])
        assert len(said) == {"PLAIN": 1, "LOGIN": 3, "CRAM-MD5": 2}[method]
        import base64

        for secret in (PASSWORD, base64.b64encode(PASSWORD.encode()).decode()):
            assert secret not in text
        assert "Hello." not in text  # the message body is not echoed


# -- transaction outcomes ----------------------------------------------------------


def test_partial_refusal_delivers_to_the_rest(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(fault="550-rcpt:bad@example.org")
    config = make_config(tmp_path, server)
    result = send(config, (RCPT, "bad@example.org", "third@example.org"))
    assert result.accepted == (RCPT, "third@example.org")
    assert list(result.refused) == ["bad@example.org"]
    code, reply = result.refused["bad@example.org"]
    assert code == 550 and "User unknown" in reply
    assert result.deferred == ()
    assert server.messages[0].rcpt_tos == [RCPT, "third@example.org"]
    log_text = (tmp_path / "mail.log").read_text()
    assert "outcome=partial" in log_text and "bad@example.org" in log_text


def test_every_recipient_refused(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(fault="550-rcpt:bad@example.org")
    config = make_config(tmp_path, server)
    with pytest.raises(NoUserError) as info:
        send(config, ("bad@example.org",))
    assert info.value.exit_code == 67
    assert "550" in info.value.why and "bad@example.org" in info.value.why
    assert server.messages == []


def test_smtputf8_needed_but_not_offered(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp_server)
    with pytest.raises(DataError) as info:
        send(config, ("jörg@exämple.org",), smtputf8=True)
    assert info.value.exit_code == 65
    assert "SMTPUTF8" in info.value.why
    assert smtp_server.messages == []


def test_an_idn_domain_goes_as_its_a_label_where_smtputf8_is_missing(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    """Only the domains are non-ASCII: the relay without SMTPUTF8 gets their A-labels
    (the same addresses), where the message was refused with exit 65."""
    config = make_config(tmp_path, smtp_server)
    result = send(
        config,
        ("user@bücher.example", "plain@example.org"),
        sender="app@straße.example",
        smtputf8=True,
    )
    assert result.accepted == ("user@bücher.example", "plain@example.org")
    [got] = smtp_server.messages
    assert not got.smtputf8
    assert got.mail_from == "app@xn--strae-oqa.example"
    assert got.rcpt_tos == ["user@xn--bcher-kva.example", "plain@example.org"]


def test_smtputf8_when_offered(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(smtputf8=True)
    config = make_config(tmp_path, server)
    data = "Subject: ünïcode\r\n\r\nbody\r\n".encode()
    send(config, ("jörg@exämple.org",), data, sender="sénder@example.com", smtputf8=True)
    [got] = server.messages
    assert got.smtputf8 and got.rcpt_tos == ["jörg@exämple.org"] and got.data == data


def test_eightbit_body(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp_server)
    data = "Subject: x\r\n\r\nGrüße\r\n".encode()
    send(config, data=data, eightbit=True)
    [got] = smtp_server.messages
    assert "BODY=8BITMIME" in got.mail_options and got.data == data


def test_size_over_the_relay_limit(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(size_limit=1000)
    config = make_config(tmp_path, server)
    with pytest.raises(DataError) as info:
        send(config, data=b"Subject: x\r\n\r\n" + b"x" * 2000 + b"\r\n")
    assert "1000" in info.value.why
    assert server.messages == []


# -- logging -----------------------------------------------------------------------


def test_one_log_line_per_message(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = tls_server(smtp_server_factory)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, username=USER,
        password=PASSWORD, auth_method="AUTO", global_={"log_level": "INFO"},
    )  # fmt: skip
    send(config, (RCPT, "two@example.org"))
    log_file = tmp_path / "mail.log"
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1
    line = lines[0]
    for part in (
        "msgid=<m1@test.example>",
        "from=<sender@example.com>",
        "to=<rcpt@example.org>,<two@example.org>",
        "route=example.com",
        f"relay=127.0.0.1:{server.port}",
        "tls=TLSv1.",
        f"auth={USER}",
        f"size={len(MESSAGE)}",
        'reply="250 ',
        "outcome=sent",
        "exit=0",
    ):
        assert part in line
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640


def test_failure_is_logged_with_its_exit_code(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(fault="554-data-end")
    config = make_config(tmp_path, server, global_={"log_level": "INFO"})
    with pytest.raises(DataError):
        send(config)
    [line] = (tmp_path / "mail.log").read_text().splitlines()
    assert "outcome=failed" in line and "exit=65" in line and "554" in line


def test_log_level_error_hides_successes(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp_server, global_={"log_level": "ERROR"})
    send(config)
    assert not (tmp_path / "mail.log").exists()


def test_tls_verify_false_warns_on_every_send(
    smtp_server_factory: Factory, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = smtp_server_factory(starttls=True, cert="self-signed")
    config = make_config(tmp_path, server, use_starttls=True, tls_verify=False)
    send(config)
    send(config)
    err = capfd.readouterr().err
    assert err.count("tls_verify = false") == 2
    assert len(server.messages) == 2


# -- rate limiting -----------------------------------------------------------------


def test_rate_limit_window(tmp_path: Path) -> None:
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limits = [("global", 2)]
    for _ in range(2):
        assert ratelimit.acquire(tmp_path, limits, clock=lambda: now[0], sleep=sleep) == 0
    waited = ratelimit.acquire(tmp_path, limits, max_wait=120, clock=lambda: now[0], sleep=sleep)
    assert 59 < waited < 61 and slept
    assert ratelimit.acquire(tmp_path, limits, max_wait=0, clock=lambda: now[0], sleep=sleep) == 0
    with pytest.raises(TempFailError) as info:
        ratelimit.acquire(tmp_path, limits, max_wait=5, clock=lambda: now[0], sleep=sleep)
    assert info.value.exit_code == 75


def test_rate_limit_holds_across_processes(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ssmtp_mailer.relay import ratelimit\n"
        "from ssmtp_mailer.errors import TempFailError\n"
        "ok = 0\n"
        "for _ in range(10):\n"
        "    try:\n"
        "        ratelimit.acquire(Path(sys.argv[1]), [('route-x', 7)], max_wait=0)\n"
        "        ok += 1\n"
        "    except TempFailError:\n"
        "        pass\n"
        "print(ok)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    total = sum(int(p.communicate()[0]) for p in procs)
    assert total == 7


def test_rate_limited_send_becomes_a_temporary_failure(
    smtp_server: SMTPTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_WAIT", 0.0)
    config = make_config(tmp_path, smtp_server, rate_limit_per_minute=1)
    send(config)
    with pytest.raises(TempFailError) as info:
        send(config)
    assert "rate limit" in info.value.what
    assert len(smtp_server.messages) == 1
    assert (tmp_path / "spool" / "ratelimit").is_dir()
    assert os.listdir(tmp_path / "spool" / "ratelimit")


def test_rate_limiting_can_be_switched_off(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    config = make_config(
        tmp_path, smtp_server, rate_limit_per_minute=1, global_={"enable_rate_limiting": False}
    )
    send(config)
    send(config)
    assert len(smtp_server.messages) == 2


def test_a_refused_oauth2_token_gets_a_hint_about_tokens_not_passwords(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = smtp_server_factory(starttls=True, xoauth2_tokens={USER: TOKEN})
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="XOAUTH2",
        username=USER, oauth2_token_command="echo not-the-token",
    )  # fmt: skip
    with pytest.raises(NoPermError) as info:
        send(config)
    assert info.value.exit_code == 77
    assert info.value.hint is not None and "OAuth2 token" in info.value.hint
    assert "password" not in info.value.hint
    assert server.messages == []
