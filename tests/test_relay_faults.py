"""The engine against misbehaving real servers: SPEC §9 codes, retries, fallbacks, certificates."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from smtpserver import MisbehavingServer, SMTPTestServer
from test_relay import (
    PASSWORD,
    USER,
    make_config,
    no_secret_leaks,
    send,
)

from ssmtp_mailer.errors import (
    DataError,
    MailerError,
    NoHostError,
    NoPermError,
    ProtocolError,
    TempFailError,
)
from ssmtp_mailer.relay import hints

__all__ = ["no_secret_leaks"]  # the autouse fixture applies here too

Factory = Callable[..., SMTPTestServer]


def closed_port() -> int:
    """A local port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("421-connect", TempFailError, 75),
        ("451-rcpt", TempFailError, 75),
        ("452-data", TempFailError, 75),
        ("drop-mid-data", TempFailError, 75),
        ("drop-starttls", TempFailError, 75),
        ("554-data-end", DataError, 65),
        ("535-auth", NoPermError, 77),
    ],
)
def test_fault_maps_to_exit_code(
    smtp_server_factory: Factory,
    tmp_path: Path,
    ca_file: Path,
    fault: str,
    error: type[MailerError],
    code: int,
) -> None:
    server = smtp_server_factory(starttls=True, auth={USER: PASSWORD}, fault=fault)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    with pytest.raises(error) as info:
        send(config)
    assert info.value.exit_code == code
    assert server.messages == []


def test_temporary_failures_are_retried(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(fault="451-rcpt")
    config = make_config(tmp_path, server, global_={"max_retries": 2, "retry_backoff": 0})
    lines: list[str] = []
    with pytest.raises(TempFailError) as info:
        send(config, transcript=lines.append, retries=2)  # as the listener's workers do
    assert server.connections == 3
    assert "3 attempts" in info.value.why and "451" in info.value.why
    assert sum(line.startswith("* retry") for line in lines) == 2


def test_retry_succeeds_when_the_fault_clears(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(fault="452-data")
    config = make_config(tmp_path, server, global_={"max_retries": 1, "retry_backoff": 1})

    def transcript(line: str) -> None:
        if line.startswith("* retry"):
            server.fault = None  # the relay recovers during the backoff

    result = send(config, transcript=transcript, retries=1)
    assert result.attempts == 2
    assert len(server.messages) == 1


@pytest.mark.parametrize(
    ("fault", "code"), [("554-data-end", 65), ("535-auth", 77), ("550-rcpt:rcpt@example.org", 67)]
)
def test_permanent_failures_are_not_retried(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path, fault: str, code: int
) -> None:
    server = smtp_server_factory(starttls=True, auth={USER: PASSWORD}, fault=fault)
    fallback = smtp_server_factory()
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD, fallback_servers=[f"127.0.0.1:{fallback.port}"],
        global_={"max_retries": 3, "retry_backoff": 0},
    )  # fmt: skip
    with pytest.raises(MailerError) as info:
        send(config)
    assert info.value.exit_code == code
    assert server.connections == 1
    assert fallback.connections == 0


def test_auth_refused_has_the_credentials_hint(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = smtp_server_factory(starttls=True, auth={USER: PASSWORD})
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password="wrong password",
    )  # fmt: skip
    with pytest.raises(NoPermError) as info:
        send(config)
    assert "535" in info.value.why
    assert info.value.hint == hints.CREDENTIALS
    assert "without the domain" in info.value.hint and "OCID" in info.value.hint


def test_stall_past_the_read_timeout(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(fault="stall")
    config = make_config(tmp_path, server, global_={"read_timeout": 1})
    started = time.monotonic()
    with pytest.raises(TempFailError) as info:
        send(config)
    assert time.monotonic() - started < 5
    assert "timed out" in info.value.why


def test_stall_after_data(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(fault="stall-data-end")
    config = make_config(tmp_path, server, global_={"read_timeout": 1})
    with pytest.raises(TempFailError) as info:
        send(config)
    assert "timed out" in info.value.why


def test_no_reply_to_the_final_dot_sends_the_message_nowhere_else(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    """The primary has the whole message and says nothing: it may have taken it, so the
    fallback and the retries are not tried (two copies); the message waits in the queue."""
    primary = smtp_server_factory(fault="stall-data-end")
    fallback = smtp_server_factory()
    config = make_config(
        tmp_path, primary, fallback_servers=[f"127.0.0.1:{fallback.port}"],
        global_={"read_timeout": 1, "max_retries": 2},
    )  # fmt: skip
    with pytest.raises(TempFailError) as info:
        send(config, retries=2)
    assert "after the whole message was sent" in info.value.why
    assert primary.connections == 1
    assert fallback.connections == 0


def test_silent_server_times_out(tmp_path: Path) -> None:
    with MisbehavingServer(MisbehavingServer.silent) as server:
        config = make_config(
            tmp_path, smtp_server="127.0.0.1", smtp_port=server.port, global_={"read_timeout": 1}
        )
        with pytest.raises(TempFailError):
            send(config)


def test_implicit_tls_hang_up_is_temporary(tmp_path: Path, ca_file: Path) -> None:
    with MisbehavingServer(MisbehavingServer.hang_up) as server:
        config = make_config(
            tmp_path, smtp_server="127.0.0.1", smtp_port=server.port, use_ssl=True,
            use_starttls=False, ssl_ca_file=ca_file,
        )  # fmt: skip
        with pytest.raises(TempFailError) as info:
            send(config)
    assert info.value.exit_code == 75


def test_host_not_found(tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp_server="no-such-relay.invalid", smtp_port=587)
    with pytest.raises(NoHostError) as info:
        send(config)
    assert info.value.exit_code == 68
    assert "no-such-relay.invalid" in info.value.why


def test_fallback_gets_the_message_when_the_primary_is_down(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path, smtp_server="127.0.0.1", smtp_port=closed_port(),
        fallback_servers=[f"127.0.0.1:{smtp_server.port}"], global_={"max_retries": 1},
    )  # fmt: skip
    result = send(config, retries=1)
    assert result.server == f"127.0.0.1:{smtp_server.port}"
    assert result.attempts == 3
    assert len(smtp_server.messages) == 1


def test_fallbacks_in_order_then_temporary_failure(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    second = smtp_server_factory(fault="421-connect")
    third = smtp_server_factory(fault="451-rcpt")
    config = make_config(
        tmp_path, smtp_server="no-such-relay.invalid",
        fallback_servers=[f"127.0.0.1:{second.port}", f"127.0.0.1:{third.port}"],
        global_={"max_retries": 2},
    )  # fmt: skip
    with pytest.raises(TempFailError) as info:
        send(config)
    # the unknown primary is not retried; each fallback is tried once
    assert (second.connections, third.connections) == (1, 1)
    assert "no-such-relay.invalid" in info.value.why
    assert "421" in info.value.why and "451" in info.value.why


# -- certificates --------------------------------------------------------------------


@pytest.mark.parametrize("cert", ["wrong-host", "expired", "self-signed"])
def test_bad_certificate_is_refused(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path, cert: str
) -> None:
    server = smtp_server_factory(starttls=True, auth={USER: PASSWORD}, cert=cert)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD, global_={"max_retries": 2},
    )  # fmt: skip
    with pytest.raises(ProtocolError) as info:
        send(config)
    assert info.value.exit_code == 76
    assert "certificate" in info.value.why
    assert "tls_fingerprint" in (info.value.hint or "") and "ssl_ca_file" in (info.value.hint or "")
    assert server.auth_attempts == []
    assert server.connections == 1  # not retried


def test_system_store_rejects_a_private_ca(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(starttls=True)
    config = make_config(tmp_path, server, use_starttls=True)
    with pytest.raises(ProtocolError):
        send(config)


def test_self_signed_with_matching_pin(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(starttls=True, auth={USER: PASSWORD}, cert="self-signed")
    pin = server.cert_fingerprint_sha256
    colons = ":".join(pin[i : i + 2] for i in range(0, 64, 2)).upper()
    for written in (pin, colons):
        config = make_config(
            tmp_path, server, use_starttls=True, tls_fingerprint=written, auth_method="AUTO",
            username=USER, password=PASSWORD,
        )  # fmt: skip
        send(config)
    assert len(server.messages) == 2
    assert server.messages[0].auth_user == USER


def test_pin_also_works_with_implicit_tls(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(implicit_tls=True, cert="self-signed")
    config = make_config(
        tmp_path, server, use_ssl=True, tls_fingerprint=server.cert_fingerprint_sha256
    )
    send(config)
    assert len(server.messages) == 1


def test_self_signed_with_wrong_pin(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(starttls=True, auth={USER: PASSWORD}, cert="self-signed")
    config = make_config(
        tmp_path, server, use_starttls=True, tls_fingerprint="ab" * 32, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    with pytest.raises(ProtocolError) as info:
        send(config)
    assert server.cert_fingerprint_sha256 in info.value.why
    assert server.auth_attempts == []
    assert server.messages == []


def test_hints() -> None:
    assert hints.for_reply(535, "5.7.8 Authentication credentials invalid") == hints.CREDENTIALS
    assert hints.for_reply(554, "5.7.1 <a@b>: Relay access denied") == hints.RELAY_DENIED
    assert hints.for_reply(550, "5.7.1 SPF check failed") == hints.SENDER_AUTH
    assert hints.for_reply(250, "ok") is None
    assert hints.for_timeout(25) == hints.PORT25_BLOCKED
    assert hints.for_timeout(587) is None


def endless_reply(conn: socket.socket) -> None:
    """Greet, then answer EHLO with continuation lines that never end."""
    conn.sendall(b"220 relay.example ESMTP\r\n")
    conn.recv(4096)
    with contextlib.suppress(OSError):
        while True:
            conn.sendall(b"250-more\r\n" * 100)


def slow_reply(conn: socket.socket) -> None:
    """Greet, then leave every command unanswered (a reply that never comes)."""
    conn.sendall(b"220 relay.example ESMTP\r\n")
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass


def test_endless_reply_is_a_protocol_failure_not_a_memory_hog(tmp_path: Path) -> None:
    server = MisbehavingServer(endless_reply).start()
    try:
        config = make_config(tmp_path, smtp_server="127.0.0.1", smtp_port=server.port)
        with pytest.raises(MailerError) as info:
            send(config)
    finally:
        server.stop()
    assert info.value.exit_code == 76
    assert "unreadable reply: Reply too long." in info.value.why


def test_a_reply_that_never_comes_is_a_typed_timeout(tmp_path: Path) -> None:
    server = MisbehavingServer(slow_reply).start()
    try:
        config = make_config(
            tmp_path, smtp_server="127.0.0.1", smtp_port=server.port, global_={"read_timeout": 1}
        )
        with pytest.raises(TempFailError) as info:
            send(config)
    finally:
        server.stop()
    assert info.value.why == "EHLO: timed out"
