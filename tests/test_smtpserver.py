"""The test SMTP servers behave as documented, checked with the stdlib client only."""

from __future__ import annotations

import hashlib
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from smtpserver import AuthAttempt, MisbehavingServer, SMTPTestServer

# Load the fixtures here too, so this file also runs without tests/conftest.py.

Factory = Callable[..., SMTPTestServer]

SENDER = "alice@example.org"
RCPT = "bob@example.net"
# A leading dot (dot-stuffed on the wire), 8-bit text and an empty line in the body.
MESSAGE = (
    b"From: alice@example.org\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe\r\n"
)
STALL_TIMEOUT = 0.5


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def connect(server: SMTPTestServer, timeout: float = 5) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=timeout)


def xoauth2(user: str, token: str) -> Callable[..., str]:
    def authobject(challenge: bytes | None = None) -> str:
        # After a failure the server sends a JSON error challenge; answer it empty.
        return f"user={user}\x01auth=Bearer {token}\x01\x01" if challenge is None else ""

    return authobject


# -- plain delivery ----------------------------------------------------------------


def test_plain_delivery_records_exact_bytes_and_envelope(smtp_server: SMTPTestServer) -> None:
    with connect(smtp_server) as client:
        refused = client.sendmail(
            SENDER, [RCPT, "carol@example.net"], MESSAGE, mail_options=["BODY=8BITMIME"]
        )
    assert refused == {}
    [received] = smtp_server.wait_for(1)
    assert received.data == MESSAGE
    assert received.mail_from == SENDER
    assert received.rcpt_tos == [RCPT, "carol@example.net"]
    assert "BODY=8BITMIME" in received.mail_options
    assert (received.tls, received.tls_version, received.auth_user) == (False, None, None)
    assert received.peer[0] == "127.0.0.1"
    assert received.helo
    assert received.message()["Subject"] == "hi"
    assert smtp_server.connections == 1
    assert smtp_server.errors == []


def test_plain_server_offers_neither_tls_nor_auth(smtp_server: SMTPTestServer) -> None:
    with connect(smtp_server) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert not client.has_extn("smtputf8")
        assert client.docmd("AUTH", "PLAIN")[0] == 503


def test_wait_for_times_out(smtp_server: SMTPTestServer) -> None:
    with pytest.raises(TimeoutError):
        smtp_server.wait_for(1, timeout=0.05)


def test_smtputf8(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(smtputf8=True)
    with connect(server) as client:
        client.sendmail("jürgen@exämple.org", ["zoë@example.net"], MESSAGE, ["SMTPUTF8"])
    [received] = server.wait_for(1)
    assert received.smtputf8
    assert (received.mail_from, received.rcpt_tos) == ("jürgen@exämple.org", ["zoë@example.net"])


def test_size_limit(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(size_limit=100)
    with connect(server) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "100"
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(SENDER, [RCPT], MESSAGE * 2)
    assert refused.value.smtp_code == 552


# -- TLS ---------------------------------------------------------------------------


def test_starttls_verifies_against_the_ca(smtp_server_factory: Factory, ca_file: Path) -> None:
    server = smtp_server_factory(starttls=True)
    with connect(server) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(ca_file)))
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).hexdigest() == server.cert_fingerprint_sha256
        client.sendmail(SENDER, [RCPT], MESSAGE)
    [received] = server.wait_for(1)
    assert received.tls
    assert received.tls_version in ("TLSv1.2", "TLSv1.3")
    assert received.data == MESSAGE


def test_require_starttls_refuses_mail_before_tls(
    smtp_server_factory: Factory, tls_ca: trustme.CA
) -> None:
    server = smtp_server_factory(starttls=True, require_starttls=True)
    with connect(server) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 530
        client.starttls(context=client_context(tls_ca))
        client.sendmail(SENDER, [RCPT], MESSAGE)
    assert server.wait_for(1)[0].tls


@pytest.mark.parametrize(
    ("cert", "verify_code"),
    [
        # X509_V_ERR_IP_ADDRESS_MISMATCH: the client connects to 127.0.0.1, not localhost
        ("wrong-host", 64),
        ("expired", 10),  # X509_V_ERR_CERT_HAS_EXPIRED
        ("self-signed", 18),  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    ],
)
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
def test_bad_certificates_fail_verification(
    smtp_server_factory: Factory, tls_ca: trustme.CA, cert: str, verify_code: int, implicit: bool
) -> None:
    server = smtp_server_factory(starttls=not implicit, implicit_tls=implicit, cert=cert)
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        if implicit:
            smtplib.SMTP_SSL(server.host, server.port, context=client_context(tls_ca), timeout=5)
        else:
            with connect(server) as client:
                client.starttls(context=client_context(tls_ca))
    assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value)
    assert failure.value.verify_code == verify_code
    assert server.messages == []


def test_self_signed_certificate_can_be_pinned_or_trusted(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(starttls=True, cert="self-signed")
    pinning = ssl.create_default_context()
    pinning.check_hostname = False
    pinning.verify_mode = ssl.CERT_NONE
    with connect(server) as client:
        client.starttls(context=pinning)
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).hexdigest() == server.cert_fingerprint_sha256
    trusting = ssl.create_default_context(cadata=server.cert_pem.decode())
    with connect(server) as client:
        client.starttls(context=trusting)
        client.sendmail(SENDER, [RCPT], MESSAGE)
    assert server.wait_for(1)[0].tls


def test_implicit_tls(smtp_server_factory: Factory, tls_ca: trustme.CA) -> None:
    server = smtp_server_factory(implicit_tls=True)
    context = client_context(tls_ca)
    with smtplib.SMTP_SSL(server.host, server.port, context=context, timeout=5) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail(SENDER, [RCPT], MESSAGE)
    [received] = server.wait_for(1)
    assert received.tls
    assert received.data == MESSAGE


def test_write_ca_pem(tmp_path: Path, tls_ca: trustme.CA) -> None:
    server = SMTPTestServer(starttls=True, ca=tls_ca)
    path = server.write_ca_pem(tmp_path / "ca.pem")
    assert path.read_bytes() == tls_ca.cert_pem.bytes()


# -- AUTH --------------------------------------------------------------------------

USERS = {"alice": "s3cret"}
TOKENS = {"alice": "ya29.token"}


def authenticate(client: smtplib.SMTP, mechanism: str, user: str, secret: str) -> None:
    client.user, client.password = user, secret
    authobjects: dict[str, Callable[..., str | None]] = {
        "PLAIN": client.auth_plain,
        "LOGIN": client.auth_login,
        "CRAM-MD5": client.auth_cram_md5,
        "XOAUTH2": xoauth2(user, secret),
    }
    client.auth(mechanism, authobjects[mechanism])  # type: ignore[arg-type]


@pytest.fixture
def auth_server(smtp_server_factory: Factory) -> SMTPTestServer:
    return smtp_server_factory(starttls=True, auth=USERS, xoauth2_tokens=TOKENS)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
def test_auth_mechanism_accepts_right_credentials(
    auth_server: SMTPTestServer, tls_ca: trustme.CA, mechanism: str
) -> None:
    secret = TOKENS["alice"] if mechanism == "XOAUTH2" else USERS["alice"]
    with connect(auth_server) as client:
        client.starttls(context=client_context(tls_ca))
        client.ehlo()
        assert set(client.esmtp_features["auth"].split()) == {
            "PLAIN",
            "LOGIN",
            "CRAM-MD5",
            "XOAUTH2",
        }
        authenticate(client, mechanism, "alice", secret)
        client.sendmail(SENDER, [RCPT], MESSAGE)
    assert auth_server.wait_for(1)[0].auth_user == "alice"
    assert auth_server.auth_attempts == [AuthAttempt(mechanism, "alice", True, True)]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
@pytest.mark.parametrize(("user", "secret"), [("alice", "wrong"), ("mallory", "s3cret")])
def test_auth_mechanism_refuses_wrong_credentials(
    auth_server: SMTPTestServer, tls_ca: trustme.CA, mechanism: str, user: str, secret: str
) -> None:
    with connect(auth_server) as client:
        client.starttls(context=client_context(tls_ca))
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            authenticate(client, mechanism, user, secret)
        assert refused.value.smtp_code == 535
        # Still not authenticated: MAIL is refused.
        assert client.mail(SENDER)[0] == 530
    assert auth_server.auth_attempts == [AuthAttempt(mechanism, user, False, True)]


def test_auth_needs_tls_by_default(auth_server: SMTPTestServer) -> None:
    with connect(auth_server) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN")[0] == 538


def test_auth_over_plaintext_when_allowed(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(auth=USERS, auth_require_tls=False)
    with connect(server) as client:
        client.login("alice", "s3cret")
        client.sendmail(SENDER, [RCPT], MESSAGE)
    received = server.wait_for(1)[0]
    assert (received.tls, received.auth_user) == (False, "alice")
    assert server.auth_attempts[0].tls is False


def test_auth_over_implicit_tls(smtp_server_factory: Factory, tls_ca: trustme.CA) -> None:
    server = smtp_server_factory(implicit_tls=True, auth=USERS, auth_mechanisms=["PLAIN"])
    context = client_context(tls_ca)
    with smtplib.SMTP_SSL(server.host, server.port, context=context, timeout=5) as client:
        client.ehlo()
        assert client.esmtp_features["auth"].strip() == "PLAIN"
        client.login("alice", "s3cret")
        client.sendmail(SENDER, [RCPT], MESSAGE)
    assert server.wait_for(1)[0].auth_user == "alice"


def test_auth_optional(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(auth=USERS, auth_require_tls=False, auth_required=False)
    with connect(server) as client:
        client.sendmail(SENDER, [RCPT], MESSAGE)
    assert server.wait_for(1)[0].auth_user is None


# -- faults ------------------------------------------------------------------------


def test_fault_421_connect(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(fault="421-connect")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        connect(server)
    assert refused.value.smtp_code == 421


def test_fault_451_rcpt(smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = "451-rcpt"
    with (
        connect(smtp_server) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.sendmail(SENDER, [RCPT, "carol@example.net"], MESSAGE)
    assert {code for code, _ in refused.value.recipients.values()} == {451}
    assert smtp_server.messages == []


def test_fault_550_one_rcpt(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(fault="550-rcpt:Carol@example.net")
    with connect(server) as client:
        refused = client.sendmail(SENDER, [RCPT, "carol@example.net"], MESSAGE)
    assert list(refused) == ["carol@example.net"]
    code, reply = refused["carol@example.net"]
    assert (code, reply.split()[0]) == (550, b"5.1.1")
    assert server.wait_for(1)[0].rcpt_tos == [RCPT]


def test_fault_452_data(smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = "452-data"
    with connect(smtp_server) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(SENDER, [RCPT], MESSAGE)
    assert refused.value.smtp_code == 452
    assert smtp_server.messages == []


def test_fault_554_data_end(smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = "554-data-end"
    with connect(smtp_server) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(SENDER, [RCPT], MESSAGE)
    assert refused.value.smtp_code == 554
    assert smtp_server.messages == []
    assert [r.data for r in smtp_server.rejected] == [MESSAGE]


def test_fault_drop_mid_data(smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = "drop-mid-data"
    client = connect(smtp_server)
    try:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail(SENDER, [RCPT], MESSAGE)
    finally:
        client.close()
    assert smtp_server.messages == []


def test_fault_stall_banner(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(fault="stall-banner")
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        connect(server, timeout=STALL_TIMEOUT)


@pytest.mark.parametrize("fault", ["stall", "stall-ehlo"])
def test_fault_stall_ehlo(smtp_server_factory: Factory, fault: str) -> None:
    server = smtp_server_factory(fault=fault)
    client = connect(server, timeout=STALL_TIMEOUT)
    try:
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            client.ehlo()
    finally:
        client.close()


def test_fault_stall_data_end(smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = "stall-data-end"
    client = connect(smtp_server, timeout=STALL_TIMEOUT)
    try:
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            client.sendmail(SENDER, [RCPT], MESSAGE)
    finally:
        client.close()
    assert smtp_server.messages == []


def test_fault_drop_starttls(smtp_server_factory: Factory, tls_ca: trustme.CA) -> None:
    server = smtp_server_factory(starttls=True, fault="drop-starttls")
    client = connect(server)
    try:
        with pytest.raises(OSError):  # ssl.SSLEOFError or ConnectionResetError
            client.starttls(context=client_context(tls_ca))
    finally:
        client.close()


def test_fault_535_auth(auth_server: SMTPTestServer, tls_ca: trustme.CA) -> None:
    auth_server.fault = "535-auth"
    with connect(auth_server) as client:
        client.starttls(context=client_context(tls_ca))
        client.ehlo()
        for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                authenticate(client, mechanism, "alice", "s3cret")
            assert refused.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError):
            authenticate(client, "XOAUTH2", "alice", TOKENS["alice"])


def test_fault_changes_between_sends(smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = "451-rcpt"
    with connect(smtp_server) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail(SENDER, [RCPT], MESSAGE)
        smtp_server.fault = None
        client.sendmail(SENDER, [RCPT], MESSAGE)
    assert len(smtp_server.wait_for(1)) == 1


def test_pipelining_is_offered_only_when_asked(smtp_server_factory: Factory) -> None:
    plain, pipelining = smtp_server_factory(), smtp_server_factory(pipelining=True)
    for server, offered in ((plain, False), (pipelining, True)):
        with connect(server) as client:
            client.ehlo()
            assert client.has_extn("pipelining") is offered


def test_command_log_tells_pipelined_from_one_by_one(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(pipelining=True)
    with socket.create_connection((server.host, server.port), 5) as sock:
        replies = sock.makefile("rb")
        replies.readline()
        sock.sendall(b"EHLO c\r\n")
        while replies.readline()[3:4] == b"-":
            pass
        sock.sendall(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nRSET\r\n")
        assert [replies.readline()[:3] for _ in range(3)] == [b"250"] * 3
        sock.sendall(b"QUIT\r\n")
        replies.readline()
    assert server.commands == [("MAIL", True), ("RCPT", True), ("RSET", False), ("QUIT", False)]
    assert server.count("RSET") == 1


def test_fault_452_after_n_recipients(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(fault="452-rcpt-after:2")
    with connect(server) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        codes = [client.rcpt(f"r{i}@example.net")[0] for i in range(4)]
    assert codes == [250, 250, 452, 452]


def test_fault_550_mail_and_554_data(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(fault="550-mail")
    with connect(server) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 550
        server.fault = "554-data"
        client.rset()
        client.mail(SENDER)
        client.rcpt(RCPT)
        assert client.docmd("DATA")[0] == 554
    assert server.messages == []


def test_idle_timeout_says_421_and_hangs_up(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(idle_timeout=0.2)
    with socket.create_connection((server.host, server.port), 5) as sock:
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        assert replies.readline().startswith(b"421 4.4.2 ")
        assert replies.readline() == b""


def test_unknown_fault_is_refused(smtp_server: SMTPTestServer) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        smtp_server.fault = "999-everything"
    with pytest.raises(ValueError, match="unknown fault"):
        smtp_server.fault = "452-rcpt-after:two"
    with pytest.raises(ValueError, match="unknown cert"):
        SMTPTestServer(starttls=True, cert="revoked")


# -- raw misbehaving server ----------------------------------------------------------


def test_misbehaving_hang_up_during_tls_handshake(tls_ca: trustme.CA) -> None:
    with (
        MisbehavingServer(MisbehavingServer.hang_up) as server,
        pytest.raises((OSError, smtplib.SMTPServerDisconnected)),
    ):
        smtplib.SMTP_SSL(server.host, server.port, context=client_context(tls_ca), timeout=5)
    assert server.connections == 1


def test_misbehaving_silent(tls_ca: trustme.CA) -> None:
    with (
        MisbehavingServer(MisbehavingServer.silent) as server,
        pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"),
    ):
        smtplib.SMTP(server.host, server.port, timeout=STALL_TIMEOUT)


def test_misbehaving_garbage_banner() -> None:
    with (
        MisbehavingServer(MisbehavingServer.send(b"HTTP/1.1 400 Bad Request\r\n")) as server,
        pytest.raises(smtplib.SMTPConnectError),
    ):
        smtplib.SMTP(server.host, server.port, timeout=5)


# -- lifecycle ---------------------------------------------------------------------


def test_stop_closes_port_and_threads_even_with_stalled_clients() -> None:
    threads_before = set(threading.enumerate())
    with SMTPTestServer(fault="stall-ehlo") as server:
        port = server.port
        stalled = socket.create_connection((server.host, port), timeout=5)
        assert stalled.recv(1024).startswith(b"220 ")
        stalled.sendall(b"EHLO client\r\n")
    try:
        assert stalled.recv(1024) == b""  # the server hung up on stop()
    finally:
        stalled.close()
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    server.stop()  # idempotent
