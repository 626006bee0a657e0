"""The relay engine and `ssmtp-mailer test` against a real Postfix + Dovecot SASL relay.

The relay comes from tests/integration/relay-setup.sh ($RELAY_DIR/relay.env). When it is
not running, this module starts it itself as root, and is skipped otherwise; under
CI=true as root a relay that cannot start fails the run instead.
Messages are sent with `engine.deliver` and with the installed `ssmtp-mailer test --to`
(the `send`/`sendmail` pipeline is exercised by its own tests).
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_relay import make_config, send

from ssmtp_mailer.errors import NoPermError, NoUserError
from ssmtp_mailer.relay import hints

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SETUP = HERE / "integration" / "relay-setup.sh"
RELAY_LOCK = os.environ.get("RELAY_LOCK", "/tmp/ssmtp-mailer-relay.lock")
# Dovecot delays every failed login (auth_failure_delay) and, after failures, every
# login from the same address (auth penalty): the wrong-password tests slow the others.
SLOW_AUTH = {"read_timeout": 30}


def _read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


def _unavailable(why: str) -> None:
    """Skip, except where the tier must run: under CI as root a missing relay fails the run."""
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        pytest.fail(f"integration tier cannot start under CI: {why}", pytrace=False)
    pytest.skip(why)


def _running_env(env_file: Path) -> dict[str, str] | None:
    if env_file.exists():
        env = _read_env(env_file)
        if _listening(int(env["RELAY_SUBMISSION_PORT"])):
            return env
    return None


@pytest.fixture(scope="module")
def relay() -> Iterator[dict[str, str]]:
    """relay.env of a running relay (started here when possible), held against restarts.

    relay-setup.sh and relay-stop.sh take RELAY_LOCK exclusively; a module using the
    relay holds it shared, so another run's set-up or stop waits until these tests end.
    """
    env_file = Path(os.environ.get("RELAY_DIR", "/tmp/ssmtp-mailer-relay")) / "relay.env"
    if _running_env(env_file) is None:
        if os.geteuid() != 0:
            _unavailable(
                "the Postfix relay is not running and starting it needs root"
                " (run tests/integration/relay-setup.sh)"
            )
        done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not env_file.exists():
            _unavailable(f"relay-setup.sh failed ({done.returncode}): {done.stderr[-500:]}")
    with open(RELAY_LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        env = _running_env(env_file)
        if env is None:
            _unavailable("the Postfix relay stopped while the tests were starting")
        assert env is not None
        yield env


@pytest.fixture
def secrets_checked(relay: dict[str, str], capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """The relay's passwords never appear on stdout or stderr."""
    yield
    out, err = capfd.readouterr()
    for secret in (relay["RELAY_PASSWORD"], relay["RELAY_OCI_PASSWORD"]):
        assert secret not in out and secret not in err


def route_for(relay: dict[str, str], kind: str = "submission", **extra: Any) -> dict[str, Any]:
    """Route keys for one of the relay's ports."""
    keys: dict[str, Any] = {
        "smtp_server": relay["RELAY_HOST"],
        "ssl_ca_file": relay["RELAY_CA"],
        "username": relay["RELAY_USER"],
        "password": relay["RELAY_PASSWORD"],
        "auth_method": "AUTO",
    }
    if kind == "submission":
        keys.update(smtp_port=int(relay["RELAY_SUBMISSION_PORT"]), use_starttls=True)
    elif kind == "smtps":
        keys.update(smtp_port=int(relay["RELAY_SMTPS_PORT"]), use_ssl=True, use_starttls=False)
    elif kind == "plainauth":
        keys.update(smtp_port=int(relay["RELAY_PLAINAUTH_PORT"]), use_starttls=False)
    keys.update(extra)
    return keys


def message(token: str) -> bytes:
    return (
        f"From: relay-user@example.com\r\n"
        f"To: inbox@example.net\r\n"
        f"Subject: integration {token}\r\n"
        f"Message-ID: <{token}@client.test.example>\r\n"
        f"\r\n"
        f"token {token}\r\n"
        f".leading dot line\r\n"
        f"Gr\u00fc\u00dfe\r\n"
    ).encode()


def wait_in_maildir(relay: dict[str, str], token: str, timeout: float = 20) -> bytes:
    """The delivered file holding `token` (Postfix's virtual(8) writes LF line ends)."""
    maildir = Path(relay["RELAY_MAILDIR"])
    deadline = time.monotonic() + timeout
    needle = token.encode()
    while time.monotonic() < deadline:
        for sub in ("new", "cur"):
            for path in (maildir / sub).glob("*"):
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if needle in data:
                    return data
        time.sleep(0.1)
    raise AssertionError(f"no message with {token} in {maildir} within {timeout} s")


@pytest.mark.parametrize("kind", ["submission", "smtps"])
def test_delivery_arrives_byte_exact(
    relay: dict[str, str], tmp_path: Path, secrets_checked: None, kind: str
) -> None:
    config = make_config(tmp_path, global_=SLOW_AUTH, **route_for(relay, kind))
    token = uuid.uuid4().hex
    data = message(token)
    lines: list[str] = []
    result = send(
        config, ("inbox@example.net",), data, sender=relay["RELAY_USER"], eightbit=True,
        transcript=lines.append,
    )  # fmt: skip
    assert result.tls is not None and result.auth_user == relay["RELAY_USER"]
    delivered = wait_in_maildir(relay, token)
    head = delivered.partition(b"\n\n")[0]
    # Postfix prepends Return-Path/Delivered-To/Received; what we sent follows unchanged.
    assert delivered.endswith(data.replace(b"\r\n", b"\n"))
    assert f"Return-Path: <{relay['RELAY_USER']}>".encode() in head
    assert b"C: AUTH PLAIN <redacted>" in "\n".join(lines).encode()


def test_oci_style_username(relay: dict[str, str], tmp_path: Path, secrets_checked: None) -> None:
    keys = route_for(relay, username=relay["RELAY_OCI_USER"], password=relay["RELAY_OCI_PASSWORD"])
    config = make_config(tmp_path, global_=SLOW_AUTH, **keys)
    token = uuid.uuid4().hex
    result = send(config, ("inbox@example.net",), message(token), sender="me@example.com")
    assert result.auth_user == relay["RELAY_OCI_USER"]
    wait_in_maildir(relay, token)


def test_wrong_password_is_77_with_the_535_hint(
    relay: dict[str, str], tmp_path: Path, secrets_checked: None
) -> None:
    config = make_config(
        tmp_path, global_=SLOW_AUTH, **route_for(relay, password="not-the-password")
    )
    with pytest.raises(NoPermError) as info:
        send(config, ("inbox@example.net",), message("x"), sender=relay["RELAY_USER"])
    assert info.value.exit_code == 77
    assert "535" in info.value.why
    assert info.value.hint == hints.CREDENTIALS


def test_unauthenticated_send_is_relay_access_denied(
    relay: dict[str, str], tmp_path: Path, secrets_checked: None
) -> None:
    config = make_config(tmp_path, global_=SLOW_AUTH, **route_for(relay, auth_method="NONE"))
    with pytest.raises(NoUserError) as info:
        send(config, ("inbox@example.net",), message("x"), sender=relay["RELAY_USER"])
    assert info.value.exit_code == 67
    assert "554" in info.value.why and "Relay access denied" in info.value.why
    assert info.value.hint == hints.RELAY_DENIED


def test_plaintext_auth_port_refused_before_any_password(
    relay: dict[str, str], tmp_path: Path, secrets_checked: None
) -> None:
    config = make_config(tmp_path, global_=SLOW_AUTH, **route_for(relay, "plainauth"))
    lines: list[str] = []
    with pytest.raises(NoPermError) as info:
        send(
            config, ("inbox@example.net",), message("x"), sender=relay["RELAY_USER"],
            transcript=lines.append,
        )  # fmt: skip
    assert info.value.exit_code == 77 and "unencrypted" in info.value.why
    assert any(line.startswith("S: 250-AUTH") for line in lines)  # offered by Postfix...
    assert not any(line.startswith("C: AUTH") for line in lines)  # ...and never used


def count_test_messages(relay: dict[str, str]) -> int:
    maildir = Path(relay["RELAY_MAILDIR"])
    return sum(
        b"Subject: ssmtp-mailer test through" in path.read_bytes()
        for sub in ("new", "cur")
        for path in (maildir / sub).glob("*")
    )


def run_cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssmtp-mailer", "test", "-C", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_test_sends_through_the_real_program(
    relay: dict[str, str], tmp_path: Path, secrets_checked: None
) -> None:
    make_config(tmp_path, global_=SLOW_AUTH, **route_for(relay, relay_account=relay["RELAY_USER"]))
    before = count_test_messages(relay)
    done = run_cli(tmp_path / "ssmtp-mailer.conf", "--to", "inbox@example.net", "-v")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"tls_fingerprint = {relay['RELAY_SERVER_SHA256']}" in done.stdout
    assert "ok    test message" in done.stdout
    assert relay["RELAY_PASSWORD"] not in done.stdout + done.stderr
    assert "C: <message: " in done.stdout and "This test message" not in done.stdout
    assert count_test_messages(relay) > before


def test_cli_test_wrong_password(relay: dict[str, str], tmp_path: Path) -> None:
    make_config(tmp_path, global_=SLOW_AUTH, **route_for(relay, password="wrong"))
    done = run_cli(tmp_path / "ssmtp-mailer.conf")
    assert done.returncode == 77
    assert "FAIL  AUTH: authentication refused: 535" in done.stdout
    assert "without the domain" in done.stdout


def test_cli_test_pins_the_relay_certificate(relay: dict[str, str], tmp_path: Path) -> None:
    keys = route_for(relay, tls_fingerprint=relay["RELAY_SERVER_SHA256"])
    del keys["ssl_ca_file"]
    make_config(tmp_path, global_=SLOW_AUTH, **keys)
    done = run_cli(tmp_path / "ssmtp-mailer.conf")
    assert done.returncode == 0, done.stdout
    assert "matches tls_fingerprint" in done.stdout


# -- PIPELINING and connection reuse against Postfix (SPEC §6 round trips) -------------


def test_postfix_gets_mail_rcpt_and_data_in_one_flight(
    relay: dict[str, str], tmp_path: Path, secrets_checked: None
) -> None:
    config = make_config(tmp_path, global_=SLOW_AUTH, **route_for(relay))
    token = uuid.uuid4().hex
    recipients = tuple(f"pipe{i}-{token[:8]}@example.net" for i in range(3))
    lines: list[str] = []
    result = send(
        config, recipients, message(token), sender=relay["RELAY_USER"], transcript=lines.append
    )
    assert result.accepted == recipients
    start = next(i for i, line in enumerate(lines) if line.upper().startswith("C: MAIL FROM:"))
    # Every command of the transaction was written before the first reply was read.
    assert [line[3:7].upper() for line in lines[start : start + 5]] == [
        "MAIL", "RCPT", "RCPT", "RCPT", "DATA",
    ]  # fmt: skip
    assert lines[start + 5].startswith("S: 250")
    wait_in_maildir(relay, token)


def _postfix_sessions(relay: dict[str, str], needle: str, timeout: float = 10) -> list[str]:
    """Postfix's end-of-session lines (command counts per connection) that contain needle."""
    log = Path(relay["RELAY_POSTFIX_LOG"])
    deadline = time.monotonic() + timeout
    while True:
        found = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if "disconnect from" in line and needle in line
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_queue_run_drains_over_one_authenticated_connection(
    relay: dict[str, str], tmp_path: Path, secrets_checked: None
) -> None:
    from ssmtp_mailer import spool
    from ssmtp_mailer.rewrite import RouteGroup

    config = make_config(tmp_path, global_=SLOW_AUTH, **route_for(relay))
    token = uuid.uuid4().hex
    group = RouteGroup(
        route=config.domains["example.com"],
        envelope_from=relay["RELAY_USER"],
        recipients=("inbox@example.net",),
    )
    for n in range(7):
        data = message(f"{token}-{n}")
        spool.enqueue(config, group, data, smtputf8=False, eightbit=True, reason="test")
    result = spool.run_queue(config, force=True)
    assert len(result.delivered) == 7 and spool.list_entries(config) == []
    for n in range(7):
        wait_in_maildir(relay, f"{token}-{n}")
    # One session: one STARTTLS, one AUTH, seven transactions with RSET between them.
    sessions = _postfix_sessions(relay, "auth=1 mail=7 rcpt=7 data=7 rset=6")
    assert sessions, "no single Postfix session carried the seven messages"


def test_postfix_resumes_the_tls_session_of_an_idle_connection(
    relay: dict[str, str], tmp_path: Path, secrets_checked: None
) -> None:
    from ssmtp_mailer.relay.pool import ConnectionPool

    config = make_config(tmp_path, global_=SLOW_AUTH, **route_for(relay))
    second: list[str] = []
    with ConnectionPool(0.1) as pool:
        token = uuid.uuid4().hex
        send(config, ("inbox@example.net",), message(token), sender=relay["RELAY_USER"],
             pool=pool)  # fmt: skip
        time.sleep(0.3)  # longer than connection_reuse_idle: a new connection
        send(config, ("inbox@example.net",), message(token + "-2"), sender=relay["RELAY_USER"],
             pool=pool, transcript=second.append)  # fmt: skip
    assert pool.opened == 2
    assert any(line.startswith("* TLS: TLSv1.3") and "session resumed" in line for line in second)
    wait_in_maildir(relay, token + "-2")
