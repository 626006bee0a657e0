"""Real SMTP servers on 127.0.0.1 for tests: aiosmtpd with TLS, AUTH and fault modes.

Every server is a real TCP listener (never a mock). `SMTPTestServer` wraps an
aiosmtpd `Controller`; `MisbehavingServer` is a bare socket for failures that
happen below SMTP (a TLS port that hangs up, a peer that never speaks).
Works with aiosmtpd >= 1.4.3.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import email
import email.message
import email.policy
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, AnyStr, Final

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, auth_mechanism

__all__ = [
    "AUTH_MECHANISMS",
    "CERT_FAULTS",
    "FAULTS",
    "AuthAttempt",
    "MisbehavingServer",
    "Received",
    "SMTPTestServer",
    "ca_file",
    "smtp_server",
    "smtp_server_factory",
    "tls_ca",
]


class _DropLoginDataNotice(logging.Filter):
    """aiosmtpd logs this WARNING on every successful AUTH, from its own code."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_DropLoginDataNotice())

HOST: Final = "127.0.0.1"
SERVER_NAME: Final = "localhost"
AUTH_MECHANISMS: Final = ("CRAM-MD5", "LOGIN", "PLAIN", "XOAUTH2")
FAULTS: Final = frozenset(
    {
        "421-connect",
        "554-connect",
        "stall-banner",
        "stall",
        "stall-ehlo",
        "451-rcpt",
        "452-data",
        "554-data-end",
        "drop-mid-data",
        "stall-data-end",
        "drop-starttls",
        "454-starttls",
        "535-auth",
        "550-mail",
        "421-mail",
        "554-data",
        "drop-rcpt",
        "stall-quit",
        "drop-rset",
        "421-rset",
        "550-rset",
    }
)
"""Fault names accepted by `SMTPTestServer.fault`; plus ``"550-rcpt:ADDR"``, ``"451-rcpt:ADDR"``
and ``"452-rcpt-after:N"`` (452 to every RCPT once N recipients were accepted)."""
CERT_FAULTS: Final = frozenset({"wrong-host", "expired", "self-signed"})
DEFAULT_SIZE_LIMIT: Final = 33_554_432  # aiosmtpd's own default


@dataclass(frozen=True)
class Received:
    """One message accepted (or refused at end of DATA) by a test server."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    """The message exactly as received: CRLF line ends, dot-unstuffed."""
    mail_options: list[str]
    rcpt_options: list[str]
    tls: bool
    tls_version: str | None
    auth_user: str | None
    peer: tuple[str, int]
    helo: str | None

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.mail_options

    def message(self) -> email.message.EmailMessage:
        """The data parsed with the modern email policy."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH command as the server saw it."""

    mechanism: str
    username: str | None
    success: bool
    tls: bool


def _validate_fault(fault: str | None) -> str | None:
    if fault is None or fault in FAULTS:
        return fault
    if fault.startswith(("550-rcpt:", "451-rcpt:")) and "@" in fault:
        return fault
    if fault.startswith("452-rcpt-after:") and fault.partition(":")[2].isdigit():
        return fault
    raise ValueError(
        f"unknown fault {fault!r}; expected one of {sorted(FAULTS)},"
        " '550-rcpt:ADDR', '451-rcpt:ADDR' or '452-rcpt-after:N'"
    )


async def _forever() -> None:
    """Wait until cancelled (the peer hangs up or the server stops)."""
    await asyncio.get_running_loop().create_future()


def _is_tls(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def _tls_version(server: SMTP) -> str | None:
    transport = server.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    return None if ssl_object is None else str(ssl_object.version())


def _leaf_pem(
    identities: Sequence[str],
    ca: trustme.CA | None,
    *,
    expired: bool = False,
) -> tuple[bytes, bytes]:
    """A server certificate and its key (PEM), issued by `ca` or, without one, self-signed.

    Built with cryptography rather than trustme: trustme >= 0.9 (our minimum) cannot
    set validity dates, and it has no self-signed leaf. The extensions are those of a
    real relay's certificate; Python 3.13's default context (VERIFY_X509_STRICT) refuses
    a chain without the key identifiers (RFC 5280 4.2.1.1, 4.2.1.2).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identities[0])])
    names: list[x509.GeneralName] = []
    for identity in identities:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(identity)))
        except ValueError:
            names.append(x509.DNSName(identity))
    signing_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if ca is None:
        issuer, signing_key = subject, key
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    else:
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
        ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
        assert isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
        issuer, signing_key = ca_cert.subject, ca_key
        ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_key_id.value
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        not_before, not_after = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    else:
        not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=365)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority_key_id, critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    # Server-purpose context: no client-certificate demand, no hostname check, which is
    # what aiosmtpd expects (it logs a warning otherwise).
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        chain = Path(tmp, "chain.pem")
        chain.write_bytes(key_pem + cert_pem)
        context.load_cert_chain(chain)
    return context


class _Handler:
    """aiosmtpd handler: records messages and applies the server's fault.

    aiosmtpd treats every attribute named ``auth_*`` on the handler as an AUTH
    mechanism, so this class has no other attribute with that prefix.
    """

    def __init__(self, owner: SMTPTestServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # The 5-argument hook must record the HELO name itself.
        session.host_name = hostname
        if _fault_of(server) in ("stall", "stall-ehlo"):
            await _forever()
        if not self.owner.auth_enabled:
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        if self.owner.pipelining:
            # aiosmtpd reads one command at a time, so pipelined commands simply queue up.
            responses.insert(len(responses) - 1, "250-PIPELINING")
        if self.owner.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        if _fault_of(server) in ("stall", "stall-ehlo"):
            await _forever()
        return f"250 {SERVER_NAME}"

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Enforced here rather than with aiosmtpd's auth_required, which warns whenever
        # auth_require_tls is off (and it must be off for implicit TLS, see _smtp_kwargs).
        if self.owner.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if _fault_of(server) == "550-mail":
            return f"550 5.7.1 <{address}>: Sender address rejected: Access denied"
        if _fault_of(server) == "421-mail":
            # Shutting down: the reply, then the connection closes (RFC 5321 §3.8).
            await server.push(f"421 4.3.2 {SERVER_NAME} Service shutting down")
            assert server.transport is not None
            server.transport.close()
            await _forever()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        own = self.owner.rcpt_replies.get(address.lower())
        if own is not None:
            if own.startswith("2"):
                envelope.rcpt_tos.append(address)
            return own
        fault = _fault_of(server)
        if fault == "451-rcpt":
            return "451 4.3.0 Temporary local problem, try again later"
        if fault == "drop-rcpt" and envelope.rcpt_tos:
            # Hang up on the second RCPT, with its reply (and DATA's) still pending.
            assert server.transport is not None
            server.transport.close()
            await _forever()
        kind, _, target = (fault or "").partition(":")
        if kind == "452-rcpt-after" and len(envelope.rcpt_tos) >= int(target):
            return "452 4.5.3 Error: too many recipients"
        if "@" in target and address.lower() == target.lower():
            if kind == "451-rcpt":
                return f"451 4.2.0 <{address}>: Recipient address rejected: Mailbox busy"
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = _fault_of(server)
        stall_after = self.owner.stall_after
        if fault == "stall-data-end" or (
            stall_after is not None and len(self.owner.messages) >= stall_after
        ):
            await _forever()
        assert envelope.mail_from is not None and envelope.original_content is not None
        peer: Any = session.peer
        auth_user = session.auth_data if session.authenticated else None
        received = Received(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content),
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            tls=_is_tls(server),
            tls_version=_tls_version(server),
            auth_user=auth_user if isinstance(auth_user, str) else None,
            peer=(str(peer[0]), int(peer[1])),
            helo=session.host_name,
        )
        if fault == "554-data-end":
            self.owner._record(received, accepted=False)
            return "554 5.7.1 Message rejected: content policy"
        self.owner._record(received, accepted=True)
        return "250 2.0.0 OK: queued"

    async def handle_exception(self, error: Exception) -> str:
        self.owner._record_error(error)
        return f"451 4.3.0 Server error ({type(error).__name__})"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """aiosmtpd `authenticator` for the built-in PLAIN and LOGIN."""
        assert isinstance(auth_data, LoginPassword)
        user = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        expected = self.owner.auth.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode(), password.encode())
        return self._result(server, mechanism, user, ok)

    def _result(self, server: SMTP, mechanism: str, user: str | None, ok: bool) -> AuthResult:
        ok = ok and _fault_of(server) != "535-auth"
        self.owner._record_auth(AuthAttempt(mechanism, user, ok, _is_tls(server)))
        # handled=False: aiosmtpd sends "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 2195: the client answers ``user hex(hmac-md5(password, challenge))``."""
        if len(args) > 1:
            await server.push("501 5.5.2 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = f"<{secrets.randbelow(10**12)}.{int(time.time())}@{SERVER_NAME}>".encode()
        response = await server.challenge_auth(challenge)
        if not isinstance(response, bytes):  # aiosmtpd already replied 501
            return AuthResult(success=False, handled=True)
        user, _, digest = response.decode("utf-8", "replace").rpartition(" ")
        password = self.owner.auth.get(user)
        ok = password is not None and hmac.compare_digest(
            hmac.new(password.encode(), challenge, "md5").hexdigest(), digest.lower()
        )
        return self._result(server, "CRAM-MD5", user or None, ok)

    @auth_mechanism("XOAUTH2")
    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """Google/Microsoft XOAUTH2: ``user=U^Aauth=Bearer T^A^A``, base64."""
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            response = await server.challenge_auth(b"")
            if not isinstance(response, bytes):
                return AuthResult(success=False, handled=True)
            blob = response
        fields: dict[str, str] = {}
        for part in blob.decode("utf-8", "replace").split("\x01"):
            key, _, value = part.partition("=")
            fields[key] = value
        user = fields.get("user")
        scheme, _, token = fields.get("auth", "").partition(" ")
        expected = self.owner.xoauth2_tokens.get(user or "")
        ok = (
            scheme.lower() == "bearer"
            and expected is not None
            and hmac.compare_digest(expected.encode(), token.encode())
            and _fault_of(server) != "535-auth"
        )
        if not ok:
            # Like Gmail: a 334 carrying a JSON error, which the client acknowledges
            # with an empty line before the final 535.
            error = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
            if not isinstance(await server.challenge_auth(json.dumps(error).encode()), bytes):
                self.owner._record_auth(AuthAttempt("XOAUTH2", user, False, _is_tls(server)))
                return AuthResult(success=False, handled=True)
        return self._result(server, "XOAUTH2", user, ok)


def _fault_of(server: SMTP) -> str | None:
    assert isinstance(server, _SMTP)
    return server.fault


class _SMTP(SMTP):
    """aiosmtpd's SMTP with the connection-level faults; one instance per connection."""

    def __init__(self, handler: _Handler, *, probe: bool, **kwargs: Any) -> None:
        self._owner = handler.owner
        # aiosmtpd's Controller opens one connection of its own during start(); it must
        # not see faults (a stalled banner would delay start-up) nor count.
        self._probe = probe
        self._greeted = False
        super().__init__(handler, **kwargs)

    @property
    def fault(self) -> str | None:
        return None if self._probe else self._owner.fault

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._probe and self._original_transport is None:
            self._owner._connection_made()
        self._owner._live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._owner._live.discard(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if not self._greeted:  # the first reply of a connection is the banner
            self._greeted = True
            if self.fault == "stall-banner":
                await _forever()
            if self.fault == "421-connect":
                await super().push(
                    f"421 4.3.2 {SERVER_NAME} Service not available, closing channel"
                )
                assert self.transport is not None
                self.transport.close()
                return
            if self.fault == "554-connect":  # this client is not served (a blocklist)
                await super().push(f"554 5.7.1 {SERVER_NAME} no SMTP service for you")
                return
        await super().push(status)

    async def smtp_AUTH(self, arg: str) -> None:
        if not self._owner.auth_enabled:
            await self.push("503 5.5.1 Error: authentication not enabled")
            return
        await super().smtp_AUTH(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.fault == "454-starttls" and self.tls_context and not arg:
            await self.push("454 4.7.0 TLS not available due to temporary reason")
            return
        if self.fault == "drop-starttls" and self.tls_context and not arg:
            await self.push("220 2.0.0 Ready to start TLS")
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_STARTTLS(arg)

    def _command(self, verb: str) -> None:
        """Record the command, and whether more input was already waiting (a pipelined one)."""
        if not self._probe:
            # What the client sent beyond this line, in asyncio's read buffer.
            waiting = bool(getattr(self._reader, "_buffer", b""))
            self._owner._record_command(verb, waiting)

    async def smtp_MAIL(self, arg: str) -> None:
        self._command("MAIL")
        arg, dsn = self._dsn_options(arg, ("RET", "ENVID"))
        await super().smtp_MAIL(arg)
        if dsn and self.envelope is not None and self.envelope.mail_from is not None:
            self.envelope.mail_options.extend(dsn)

    async def smtp_RCPT(self, arg: str) -> None:
        self._command("RCPT")
        arg, dsn = self._dsn_options(arg, ("NOTIFY", "ORCPT"))
        before = len(self.envelope.rcpt_tos) if self.envelope is not None else 0
        await super().smtp_RCPT(arg)
        if dsn and self.envelope is not None and len(self.envelope.rcpt_tos) > before:
            self.envelope.rcpt_options.extend(dsn)

    def _dsn_options(self, arg: str, keywords: tuple[str, ...]) -> tuple[str, list[str]]:
        """With `dsn`: the RFC 3461 parameters taken out of the command, exactly as sent
        (aiosmtpd would refuse them, and upper-cases what it keeps)."""
        if not self._owner.dsn or not arg:
            return arg, []
        head, bracket, tail = arg.rpartition(">")
        if not bracket:
            return arg, []
        words = tail.split()
        dsn = [w for w in words if w.partition("=")[0].upper() in keywords]
        kept = [w for w in words if w not in dsn]
        return " ".join([head + bracket, *kept]), dsn

    async def smtp_RSET(self, arg: str) -> None:
        self._command("RSET")
        if self.fault == "550-rset":  # a server confused about its old session
            await super().push("550 5.5.1 Error: session in a bad state")
            return
        if self.fault in ("drop-rset", "421-rset"):
            # As if the server had timed the idle connection out just before.
            if self.fault == "421-rset":
                await super().push(f"421 4.4.2 {SERVER_NAME} Error: timeout exceeded")
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_RSET(arg)

    def _timeout_cb(self) -> None:
        # What Postfix says when a client has been idle too long, then it hangs up.
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(f"421 4.4.2 {SERVER_NAME} Error: timeout exceeded\r\n".encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call, unused-ignore]

    async def smtp_QUIT(self, arg: str) -> None:
        self._command("QUIT")
        if self.fault == "stall-quit":
            await _forever()
        await super().smtp_QUIT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._command("DATA")
        fault = self.fault
        ready = (
            self.session is not None
            and self.session.host_name
            and self.envelope is not None
            and self.envelope.rcpt_tos
            and not arg
        )
        if ready and fault == "452-data":
            await self.push("452 4.3.1 Insufficient system storage")
            return
        if ready and fault == "554-data":
            await self.push("554 5.7.1 Error: DATA refused by policy")
            return
        if ready and fault == "drop-mid-data":
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")  # the first line of the body
            assert self.transport is not None
            self.transport.close()
            await _forever()
        await super().smtp_DATA(arg)


class _Controller(Controller):
    """Controller that binds port 0 and learns the port the kernel picked.

    aiosmtpd 1.4's Controller connects to ``self.port`` after binding to make its
    lazy server start, so with ``port=0`` it would connect to port 0; the real port
    is read from the bound socket first (race-free, unlike probing for a free port).
    """

    def __init__(
        self,
        handler: _Handler,
        *,
        smtp_kwargs: dict[str, Any],
        host: str = HOST,
        port: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._smtp_kwargs = smtp_kwargs
        self.probing = True

    def factory(self) -> SMTP:
        return _SMTP(self.handler, probe=self.probing, loop=self.loop, **self._smtp_kwargs)

    def _trigger_server(self) -> None:
        server: Any = self.server
        self.port = server.sockets[0].getsockname()[1]
        trigger: Callable[[], None] = super()._trigger_server
        trigger()


class SMTPTestServer:
    """A real aiosmtpd server on 127.0.0.1 with a free port.

    Args:
        starttls: offer STARTTLS with a certificate from ``ca`` for localhost/127.0.0.1.
        implicit_tls: TLS from the first byte (port-465 style).
        require_starttls: refuse everything but EHLO/NOOP/QUIT before STARTTLS.
        auth: username -> password for PLAIN, LOGIN and CRAM-MD5.
        xoauth2_tokens: username -> bearer token; enables XOAUTH2.
        auth_mechanisms: the mechanisms offered (default: every one that is enabled).
        auth_require_tls: offer/accept AUTH only over TLS (the default, like real relays).
        auth_required: refuse MAIL before AUTH (default: True when AUTH is enabled).
        smtputf8: advertise and accept SMTPUTF8.
        size_limit: the SIZE limit in octets; None for no limit and no SIZE keyword.
        pipelining: advertise PIPELINING (RFC 2920).
        dsn: advertise DSN (RFC 3461) and record RET, ENVID, NOTIFY and ORCPT as sent, in
            `mail_options` and `rcpt_options` (one entry per accepted recipient's parameter).
        idle_timeout: seconds of client silence after which the server hangs up.
        fault: a name from `FAULTS` or ``"550-rcpt:ADDR"``; can be changed at any time.
        cert: None, or a fault from `CERT_FAULTS` for the certificate served.
        ca: the CA issuing the certificate (default: a new one).
        host, port: where to listen (default 127.0.0.1 and a free port); any 127.0.0.x
            with one fixed port models several MX hosts.
        names: the certificate's names (default localhost and the host address).
    """

    def __init__(
        self,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        auth: Mapping[str, str] | None = None,
        xoauth2_tokens: Mapping[str, str] | None = None,
        auth_mechanisms: Sequence[str] | None = None,
        auth_require_tls: bool = True,
        auth_required: bool | None = None,
        smtputf8: bool = False,
        size_limit: int | None = DEFAULT_SIZE_LIMIT,
        pipelining: bool = False,
        dsn: bool = False,
        idle_timeout: float | None = None,
        fault: str | None = None,
        cert: str | None = None,
        ca: trustme.CA | None = None,
        host: str = HOST,
        port: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        self._host = host
        self._names = list(names) if names else [SERVER_NAME, host]
        if starttls and implicit_tls:
            raise ValueError("starttls and implicit_tls are exclusive")
        if require_starttls and not starttls:
            raise ValueError("require_starttls needs starttls=True")
        if cert is not None and cert not in CERT_FAULTS:
            raise ValueError(f"unknown cert fault {cert!r}; expected one of {sorted(CERT_FAULTS)}")
        self.auth: dict[str, str] = dict(auth or {})
        self.xoauth2_tokens: dict[str, str] = dict(xoauth2_tokens or {})
        if auth_mechanisms is None:
            offered = {"PLAIN", "LOGIN", "CRAM-MD5"} if self.auth else set()
            offered |= {"XOAUTH2"} if self.xoauth2_tokens else set()
        else:
            offered = {m.upper() for m in auth_mechanisms}
            if not offered <= set(AUTH_MECHANISMS):
                raise ValueError(f"auth_mechanisms must be among {AUTH_MECHANISMS}")
        self.auth_mechanisms: tuple[str, ...] = tuple(sorted(offered))
        self.auth_enabled = bool(offered)
        self.auth_required = self.auth_enabled if auth_required is None else auth_required
        self.tls = starttls or implicit_tls
        self.pipelining = pipelining
        self.dsn = dsn
        self._commands: list[tuple[str, bool]] = []
        self._fault = _validate_fault(fault)
        # Each recipient's own reply to RCPT (lower-case address -> reply line), before
        # any fault: a transaction whose recipients get different answers.
        self.rcpt_replies: dict[str, str] = {}
        # Once this many messages were accepted, the final dot of the next goes unanswered
        # (a relay that hangs mid-conversation): what a client keeps between transactions.
        self.stall_after: int | None = None
        self._ca = ca
        self._cert = cert
        self._cert_pem = b""
        self._lock = threading.Condition()
        self._messages: list[Received] = []
        self._rejected: list[Received] = []
        self._auth_attempts: list[AuthAttempt] = []
        self._errors: list[Exception] = []
        self._connections = 0
        self._live: set[_SMTP] = set()
        self._controller: _Controller | None = None
        self._handler = _Handler(self)

        context = self._make_tls_context() if self.tls else None
        smtp_kwargs: dict[str, Any] = {
            "hostname": SERVER_NAME,
            "enable_SMTPUTF8": smtputf8,
            "data_size_limit": size_limit,
            "auth_exclude_mechanism": [m for m in AUTH_MECHANISMS if m not in offered],
            "authenticator": self._handler.authenticate,
            # With implicit TLS every connection is encrypted, but aiosmtpd only counts
            # STARTTLS as TLS for AUTH; off is then correct, not a weakening.
            "auth_require_tls": auth_require_tls and not implicit_tls,
        }
        if idle_timeout is not None:
            smtp_kwargs["timeout"] = idle_timeout
        if starttls:
            smtp_kwargs.update(tls_context=context, require_starttls=require_starttls)
        self._controller_kwargs: dict[str, Any] = {
            "smtp_kwargs": smtp_kwargs,
            "host": host,
            "port": port,
            "ssl_context": context if implicit_tls else None,
        }

    # -- TLS ---------------------------------------------------------------------

    def _make_tls_context(self) -> ssl.SSLContext:
        if self._cert == "self-signed":
            cert_pem, key_pem = _leaf_pem(self._names, None)
        elif self._cert == "wrong-host":
            cert_pem, key_pem = _leaf_pem(["other.example"], self.ca)
        else:
            cert_pem, key_pem = _leaf_pem(self._names, self.ca, expired=self._cert == "expired")
        self._cert_pem = cert_pem
        return _server_context(cert_pem, key_pem)

    @property
    def ca(self) -> trustme.CA:
        """The CA that issues this server's certificate (not the self-signed one)."""
        if self._ca is None:
            self._ca = trustme.CA()
        return self._ca

    def write_ca_pem(self, path: str | Path) -> Path:
        """Write the CA certificate as PEM to `path` and return it."""
        self.ca.cert_pem.write_to_path(str(path))
        return Path(path)

    @property
    def cert_pem(self) -> bytes:
        """The certificate served, PEM."""
        if not self._cert_pem:
            raise RuntimeError("server has no TLS")
        return self._cert_pem

    @property
    def cert_fingerprint_sha256(self) -> str:
        """SHA-256 of the DER leaf certificate, lowercase hex without colons."""
        leaf = self.cert_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.decode())).hexdigest()

    # -- state -------------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        self._fault = _validate_fault(value)

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("server not started")
        return int(self._controller.port)

    @property
    def messages(self) -> list[Received]:
        """Messages accepted with 250, oldest first (a copy)."""
        with self._lock:
            return list(self._messages)

    @property
    def rejected(self) -> list[Received]:
        """Messages received in full but refused at end of DATA (fault ``554-data-end``)."""
        with self._lock:
            return list(self._rejected)

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        """Every AUTH exchange that reached a credential check, oldest first."""
        with self._lock:
            return list(self._auth_attempts)

    @property
    def errors(self) -> list[Exception]:
        """Exceptions raised inside the server while handling commands (TLS failures too)."""
        with self._lock:
            return list(self._errors)

    @property
    def commands(self) -> list[tuple[str, bool]]:
        """(MAIL|RCPT|DATA|RSET|QUIT, whether more input was already waiting), oldest first.

        True for a command the client sent before reading the replies to the ones before
        it: RFC 2920 pipelining.
        """
        with self._lock:
            return list(self._commands)

    def count(self, verb: str) -> int:
        """How many times the clients sent `verb`."""
        return sum(1 for seen, _ in self.commands if seen == verb)

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        with self._lock:
            return self._connections

    def clear(self) -> None:
        """Forget recorded messages, attempts, errors and the connection count."""
        with self._lock:
            self._messages.clear()
            self._rejected.clear()
            self._auth_attempts.clear()
            self._errors.clear()
            self._commands.clear()
            self._connections = 0

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[Received]:
        """Block until `count` messages were accepted; return them all."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(f"{len(self._messages)} of {count} messages within {timeout} s")
            return list(self._messages)

    def _record(self, received: Received, *, accepted: bool) -> None:
        with self._lock:
            (self._messages if accepted else self._rejected).append(received)
            self._lock.notify_all()

    def _record_auth(self, attempt: AuthAttempt) -> None:
        with self._lock:
            self._auth_attempts.append(attempt)

    def _record_error(self, error: Exception) -> None:
        with self._lock:
            self._errors.append(error)

    def _record_command(self, verb: str, waiting: bool) -> None:
        with self._lock:
            self._commands.append((verb, waiting))
            self._lock.notify_all()

    def wait_for_command(self, verb: str, timeout: float = 5.0) -> None:
        """Block until a client has sent `verb`."""
        with self._lock:
            if not self._lock.wait_for(lambda: any(v == verb for v, _ in self._commands), timeout):
                raise TimeoutError(f"no {verb} within {timeout} s")

    def _connection_made(self) -> None:
        with self._lock:
            self._connections += 1

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> SMTPTestServer:
        if self._controller is not None:
            raise RuntimeError("server already started")
        controller = _Controller(self._handler, **self._controller_kwargs)
        controller.loop.set_exception_handler(self._loop_exception)
        try:
            controller.start()
        except BaseException:
            if not controller.loop.is_closed():
                controller.stop(no_assert=True)
            if not controller.loop.is_closed():
                controller.loop.close()
            raise
        controller.probing = False
        self._controller = controller
        return self

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # E.g. a failed implicit-TLS handshake, which asyncio would log as an ERROR.
        error = context.get("exception")
        self._record_error(error if isinstance(error, Exception) else RuntimeError(context))

    def stop(self) -> None:
        """Hang up on every client, then stop the listener and its thread. Idempotent."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        # Close connections on the loop first: a transport still open when the loop
        # closes is reported later as an unraisable ResourceWarning.
        asyncio.run_coroutine_threadsafe(self._disconnect_all(), controller.loop).result(10)
        controller.stop()

    async def _disconnect_all(self) -> None:
        for protocol in list(self._live):
            transport = protocol.transport
            if transport is None or transport.is_closing():
                # Already on its way out. Python 3.11.2 (Debian 12's) raises when a TLS
                # transport that has already closed is aborted; 3.11.7 checks first.
                continue
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            else:
                transport.close()
        deadline = time.monotonic() + 5
        while self._live and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def __enter__(self) -> SMTPTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        port = self._controller.port if self._controller else None
        return f"<SMTPTestServer {self._host}:{port} tls={self.tls} fault={self._fault!r}>"


class MisbehavingServer:
    """A bare TCP listener on 127.0.0.1 that runs `behaviour` on each connection.

    For failures below SMTP, e.g. an implicit-TLS port that hangs up during the
    handshake (``MisbehavingServer.hang_up``) or never answers (``silent``).
    """

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self._stopping = threading.Event()
        self._sock = socket.create_server((HOST, 0))
        self._sock.settimeout(0.05)
        self._clients: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @staticmethod
    def hang_up(conn: socket.socket) -> None:
        """Close at once, without a byte."""

    @staticmethod
    def silent(conn: socket.socket) -> None:
        """Keep the connection open and never send anything (until stop())."""
        while True:
            try:
                if not conn.recv(4096):
                    return
            except OSError:
                return

    @staticmethod
    def send(data: bytes) -> Callable[[socket.socket], None]:
        """Send `data` (a banner, garbage) and then hang up."""

        def behaviour(conn: socket.socket) -> None:
            conn.sendall(data)

        return behaviour

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.connections += 1
            self._clients.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.behaviour(conn)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def start(self) -> MisbehavingServer:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join()
        for conn in self._clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join()
        self._sock.close()

    def __enter__(self) -> MisbehavingServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- pytest fixtures ---------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """One trustme CA for the whole session; servers from the fixtures use it."""
    return trustme.CA()


@pytest.fixture
def ca_file(tls_ca: trustme.CA, tmp_path: Path) -> Path:
    """Path of `tls_ca`'s certificate as PEM."""
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def smtp_server_factory(tls_ca: trustme.CA) -> Iterator[Callable[..., SMTPTestServer]]:
    """Call with `SMTPTestServer` arguments; returns it started, stops it at teardown."""
    with contextlib.ExitStack() as servers:

        def make(**options: Any) -> SMTPTestServer:
            options.setdefault("ca", tls_ca)
            return servers.enter_context(SMTPTestServer(**options))

        yield make


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    """A started plain server: no TLS, no AUTH, records every message."""
    return smtp_server_factory()
