"""The SMTP client: the only code that opens smarthost sockets (with relay.wire and ssl).

`RelayConnection` is a `wire.SMTPClient` that records a redacted transcript, applies
separate connect/read/write timeouts, does TLS (implicit or STARTTLS) with
verification, pinning or neither, authenticates, and streams one transaction.
Every failure leaves as `RelayFailure`: the user-facing `MailerError` (SPEC §9) and
whether the engine may retry it.
"""

import contextlib
import functools
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ssmtp_mailer.addresses import ascii_address
from ssmtp_mailer.config.model import AuthMethod, DomainConfig
from ssmtp_mailer.errors import (
    ConfigError,
    DataError,
    MailerError,
    NoHostError,
    NoPermError,
    NoUserError,
    ProtocolError,
    TempFailError,
    UnavailableError,
)
from ssmtp_mailer.relay import hints
from ssmtp_mailer.relay.wire import (
    SMTPClient,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
)

if TYPE_CHECKING:
    from typing import Any

    from ssmtp_mailer.message import Dsn

Transcript = Callable[[str], None]

# Bytes per sendall() while streaming DATA: bounds memory and makes write_timeout apply
# per chunk (since Python 3.5 a socket timeout covers a whole sendall call).
CHUNK = 1 << 20
# AUTO picks the first offered. Over TLS the password is protected by the channel, so
# round trips decide: PLAIN with its initial response is one (RFC 4954 §4), CRAM-MD5
# two, LOGIN three. Without TLS (allow_plaintext_auth) CRAM-MD5 first: it never shows
# the password.
AUTO_ORDER_TLS = ("PLAIN", "CRAM-MD5", "LOGIN")
AUTO_ORDER_PLAINTEXT = ("CRAM-MD5", "PLAIN", "LOGIN")
# Commands per write when pipelining (RFC 2920 §3.1 and §4): the replies to a batch
# must fit the socket buffers while we are still writing, or both ends wait for each
# other. 500 replies are about 20 KB.
PIPELINE_BATCH = 500
REDACTED = "<redacted>"
# Seconds to wait for the reply to QUIT (RFC 5321 §4.1.1.10 asks the client to wait).
QUIT_WAIT = 2.0


class RelayFailure(Exception):
    """One failed attempt at one server: the error to show, and what the engine may do next."""

    def __init__(
        self,
        error: MailerError,
        *,
        temporary: bool,
        stage: str,
        code: int | None = None,
        reply: str = "",
        next_server: bool = False,
        stale: bool = False,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.temporary = temporary
        self.stage = stage
        self.code = code
        self.reply = reply
        # A permanent problem of this server only (name not found, bad certificate):
        # not worth retrying here, but a fallback server may do better.
        self.next_server = next_server
        # A reused connection that the server had closed while it was idle: nothing of
        # this transaction was accepted, so a new connection may simply try again.
        self.stale = stale
        # The whole message went, its final dot too, and no reply came: the server may
        # have taken it. Another server now would likely mean a second copy (RFC 5321
        # §4.5.3.2.6), so the message waits in the queue instead.
        self.unanswered = False
        # The TLS version in use when it failed, for the log line (set by the pool).
        self.tls: str | None = None


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    """settimeout() only when it changes: each call is a system call that lets go of the GIL,
    and the read and write timeouts are usually the same."""
    if sock.gettimeout() != seconds:
        sock.settimeout(seconds)


def _ascii_or_idn(host: str) -> str | bytes:
    """An ASCII host name as bytes, which the resolver and ssl take as they are.

    Given str, both run it through the `idna` codec, whose import (with stringprep and
    unicodedata) costs a sendmail run about a millisecond and changes nothing for an
    ASCII name; an internationalised name still goes that way.
    """
    return host.encode("ascii") if host.isascii() else host


class Endpoint(NamedTuple):
    """Where and how to connect: one server of a route, with its TLS and timeouts."""

    host: str
    port: int
    route: str
    helo: str
    implicit_tls: bool
    starttls: bool
    context: ssl.SSLContext | None
    fingerprint: str | None
    connect_timeout: float
    read_timeout: float
    write_timeout: float
    # Direct delivery (relay/direct.py): the MX host's address from our own lookup, so
    # `host` is only the name TLS checks; and STARTTLS only when the MX offers it.
    address: str | None = None
    starttls_optional: bool = False

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.address is not None:
            host += f"[{self.address}]"
        return f"{host}:{self.port}"


class Transaction:
    """What one MAIL/RCPT/DATA exchange achieved."""

    __slots__ = ("accepted", "refused", "reply")

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.refused: dict[str, tuple[int, str]] = {}
        self.reply = ""


def permanent(code: int, text: str) -> bool:
    """A 5xx: the one reply to RCPT that fails a recipient for good. A 4xx is temporary
    (RFC 5321 §4.2.1), and so is what makes no sense there (a garbled line, a 3xx), and
    a 552 that says "too many recipients" (too_many_recipients)."""
    return 500 <= code < 600 and not too_many_recipients(code, text)


def too_many_recipients(code: int, text: str) -> bool:
    """A reply to RCPT that is the relay's limit of recipients per transaction: 452, or
    552 from older servers (RFC 5321 §4.5.3.1.10 asks clients to take it as 452), with
    4.5.3 or in words; not a mailbox full or a server out of storage."""
    if code not in (452, 552):
        return False
    return text.startswith(("4.5.3", "5.5.3")) or "recipients" in text.lower()


def reply_text(message: bytes | str) -> str:
    """An SMTP reply's text on one line."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return " / ".join(part.strip() for part in text.splitlines() if part.strip())


def fingerprint_of(der: bytes) -> str:
    """SHA-256 of a DER certificate in the form `tls_fingerprint` accepts (lowercase hex)."""
    import hashlib  # here: its OpenSSL start-up is for pinned or inspected certificates only

    return hashlib.sha256(der).hexdigest()


def format_fingerprint(digest: str) -> str:
    """The colon-separated uppercase form people compare with `openssl x509 -fingerprint`."""
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


@functools.lru_cache(maxsize=64)
def _cached_context(
    verify: bool,
    pinned: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
) -> ssl.SSLContext:
    # Loading the system store costs milliseconds: the queue runner and the listener
    # reuse one context per distinct TLS setting.
    context = ssl.create_default_context(cafile=ca_file)
    if pinned or not verify:
        # A pin replaces CA and host-name checks; the leaf is compared after the handshake.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file, password=no_passphrase)
    return context


def no_passphrase() -> bytes:
    """load_cert_chain's password callback: an encrypted key is an error, never a prompt
    on the terminal (which hung a sendmail run from a shell, and garbled one from cron)."""
    raise OSError("the key is encrypted; store it unencrypted, readable by root alone")


def tls_context(route: DomainConfig) -> ssl.SSLContext:
    """The client TLS context for a route (cached per distinct setting)."""

    def text(path: Path | None) -> str | None:
        return str(path) if path is not None else None

    try:
        return _cached_context(
            route.tls_verify,
            route.tls_fingerprint is not None,
            text(route.ssl_ca_file),
            text(route.ssl_cert_file),
            text(route.ssl_key_file),
        )
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(
            str(p) for p in (route.ssl_ca_file, route.ssl_cert_file, route.ssl_key_file) if p
        )
        raise ConfigError(
            f"[domain:{route.name}] TLS files",
            f"cannot be loaded ({files}): {exc}",
            hint="ssl_ca_file is PEM CA certificates; ssl_cert_file/ssl_key_file a PEM"
            " certificate and its unencrypted key",
        ) from None


def endpoint_for(
    route: DomainConfig,
    host: str,
    port: int,
    *,
    helo: str,
    connect_timeout: float,
    read_timeout: float,
    write_timeout: float,
) -> Endpoint:
    """The Endpoint for one server of `route`."""
    tls = route.use_ssl or route.use_starttls
    return Endpoint(
        host=host,
        port=port,
        route=route.name,
        helo=helo,
        implicit_tls=route.use_ssl,
        starttls=route.use_starttls and not route.use_ssl,
        context=tls_context(route) if tls else None,
        fingerprint=route.tls_fingerprint,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        write_timeout=write_timeout,
    )


class RelayConnection(SMTPClient):
    """An SMTP client with a redacted transcript, per-direction timeouts, TLS and AUTH."""

    def __init__(
        self,
        endpoint: Endpoint,
        transcript: Transcript | None = None,
        *,
        tls_session: ssl.SSLSession | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._transcript = transcript
        self._in_auth = False
        self._ack_at_once = False  # set by a TLS handshake, for the first reply after it
        self.banner = ""
        # A session of an earlier connection to the same server, offered for resumption.
        self.tls_session = tls_session
        self.tls_resumed = False
        self.transactions = 0
        self.tls_version: str | None = None
        self.cipher: str | None = None
        self.peer_der: bytes | None = None
        self.peer_cert: dict[str, Any] = {}
        self.features_before_tls: dict[str, str] = {}
        self.auth_user: str | None = None
        self.auth_mechanism: str | None = None
        super().__init__(local_hostname=endpoint.helo or "localhost")

    # -- transcript ------------------------------------------------------------

    def set_transcript(self, transcript: Transcript | None) -> None:
        """Where the lines go from now on: a reused connection serves another caller."""
        self._transcript = transcript

    def note(self, line: str) -> None:
        """Add a line of our own (not protocol) to the transcript."""
        if self._transcript is not None:
            self._transcript(f"* {line}")

    def _client_lines(self, data: str | bytes) -> None:
        if self._transcript is None:
            return
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        for line in text.rstrip("\r\n").split("\r\n"):
            if self._in_auth:
                # Everything the client says inside an AUTH exchange is (or encodes) a secret.
                line = REDACTED
            elif line[:5].upper() == "AUTH ":
                parts = line.split(" ", 2)
                if len(parts) == 3:
                    line = f"{parts[0]} {parts[1]} {REDACTED}"
                self._in_auth = True
            self._transcript(f"C: {line}")

    def send(self, s: str | bytes) -> None:
        self._client_lines(s)
        if self.sock is not None:
            _set_timeout(self.sock, self.endpoint.write_timeout)
        try:
            super().send(s)
        finally:
            if self.sock is not None:
                _set_timeout(self.sock, self.endpoint.read_timeout)

    def getreply(self) -> tuple[int, bytes]:
        if self._ack_at_once and self.sock is not None:
            # A TLS 1.3 server sends its session tickets after the handshake in two writes;
            # with Nagle on its side (Postfix) the second, and the reply to our first
            # command behind it, waited for our delayed ACK of the first: 40 ms a
            # connection. Acknowledging at once while that reply comes ends the wait.
            self._ack_at_once = False
            with contextlib.suppress(OSError, AttributeError):  # TCP_QUICKACK is Linux's
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        code, message = super().getreply()
        if code != 334:
            self._in_auth = False
        if self._transcript is not None:
            lines = message.decode("utf-8", "replace").splitlines() or [""]
            for i, line in enumerate(lines):
                sep = "-" if i < len(lines) - 1 else " "
                self._transcript(f"S: {code}{sep}{line}")
        return code, message

    # -- connection and TLS ----------------------------------------------------

    def _get_socket(self, host: str, port: int) -> socket.socket:
        # The resolver takes bytes too (typeshed says str only).
        address = (self.endpoint.address or _ascii_or_idn(host), port)
        sock = socket.create_connection(address, self.endpoint.connect_timeout)  # type: ignore[arg-type]
        # Without it, Nagle holds the final ".\r\n" until the peer's delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Connecting ends with the greeting (and an implicit TLS handshake): SPEC §6 holds
        # a caller at most connection_timeout a server when it is down or a tarpit.
        sock.settimeout(self.endpoint.connect_timeout)
        if self.endpoint.implicit_tls:
            sock = self._handshake(sock)
        return sock

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        context = self.endpoint.context
        assert context is not None
        tls = context.wrap_socket(
            sock, server_hostname=_ascii_or_idn(self.endpoint.host), session=self.tls_session
        )
        self._ack_at_once = True
        self.tls_version = tls.version()
        cipher = tls.cipher()
        self.cipher = cipher[0] if cipher else None
        self.tls_resumed = bool(tls.session_reused)
        self.peer_der = tls.getpeercert(binary_form=True)
        # Empty unless the chain was verified (CERT_REQUIRED); `test` decodes it otherwise.
        self.peer_cert = dict(tls.getpeercert() or {})
        resumed = ", session resumed" if self.tls_resumed else ""
        self.note(f"TLS: {self.tls_version}, {self.cipher}{resumed}")
        pin = self.endpoint.fingerprint
        if pin is not None:
            seen = fingerprint_of(self.peer_der or b"")
            import hmac

            if not hmac.compare_digest(seen, pin):
                tls.close()
                raise _TLSPinMismatch(seen)
            self.note("certificate matches tls_fingerprint")
        return tls

    def open(self) -> None:
        """Connect (and, for implicit TLS, handshake); read the banner; EHLO; STARTTLS; EHLO."""
        self.connect_banner()
        self.negotiate()

    def connect_banner(self) -> None:
        """Open the connection (implicit TLS included) and read the 220 greeting."""
        ep = self.endpoint
        self.note(f"connecting to {ep.label}{' (implicit TLS)' if ep.implicit_tls else ''}")
        try:
            self.sock = self._get_socket(ep.host, ep.port)
            self.file = None
        except Exception as exc:
            raise self._transport_failure("connect", exc) from None
        try:
            code, message = self.getreply()
        except Exception as exc:
            # Connected, but no greeting: a tarpit, a firewall that accepts and drops, or
            # a TLS port spoken to in plain text.
            raise self._transport_failure("banner", exc) from None
        _set_timeout(self.sock, self.endpoint.read_timeout)
        self.banner = f"{code} {reply_text(message)}"
        if code != 220:
            self.close()
            raise self._reply_failure("connect", code, message)

    def negotiate(self) -> None:
        """EHLO, then STARTTLS and EHLO again when the route asks for it."""
        ep = self.endpoint
        stage = "EHLO"
        try:
            self._greet()
            self.features_before_tls = dict(self.esmtp_features)
            if ep.starttls and (self.has_extn("starttls") or not ep.starttls_optional):
                # Through the EHLO after the handshake: a server that fails there has a
                # broken TLS (direct delivery then tries in clear), not a silent EHLO.
                stage = "STARTTLS"
                self._starttls()
                self._greet()
        except RelayFailure:
            raise
        except Exception as exc:
            raise self._transport_failure(stage, exc) from None

    def _greet(self) -> None:
        code, message = self.ehlo()
        if code != 250:
            code, message = self.helo()
        if code != 250:
            raise self._reply_failure("EHLO", code, message)

    def _starttls(self) -> None:
        if not self.has_extn("starttls"):
            raise RelayFailure(
                ProtocolError(
                    self.endpoint.label,
                    "the relay does not offer STARTTLS (use_starttls = true)",
                    hint="check smtp_port (587 for STARTTLS, 465 with use_ssl = true); never"
                    " send over an unencrypted connection to a relay on the internet",
                ),
                temporary=False,
                stage="STARTTLS",
                next_server=True,
            )
        code, message = self.docmd("STARTTLS")
        if code != 220:
            raise self._reply_failure("STARTTLS", code, message)
        assert self.sock is not None
        self.sock = self._handshake(self.sock)
        self.file = None
        self.forget_greeting()

    @property
    def encrypted(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket)

    # -- authentication --------------------------------------------------------

    def offered_mechanisms(self) -> list[str]:
        """AUTH mechanisms in the EHLO reply, upper case."""
        return [m.upper() for m in self.esmtp_features.get("auth", "").split()]

    def choose_mechanism(self, route: DomainConfig) -> str:
        """The mechanism to use, or raise RelayFailure when none fits."""
        offered = self.offered_mechanisms()
        method = route.auth_method
        label = self.endpoint.label
        if not offered:
            raise RelayFailure(
                ProtocolError(
                    label,
                    "the relay offers no AUTH but the route has a username",
                    hint="many relays offer AUTH only after STARTTLS or on port 587/465;"
                    " set auth_method = NONE if this relay needs no login",
                ),
                temporary=False,
                stage="AUTH",
            )
        if method == AuthMethod.AUTO:
            if route.oauth2_token_command and "XOAUTH2" in offered:
                return "XOAUTH2"
            order = AUTO_ORDER_TLS if self.encrypted else AUTO_ORDER_PLAINTEXT
            for mechanism in order:
                if mechanism in offered:
                    return mechanism
            wanted = ", ".join(order)
        else:
            wanted = str(method.value)
            if wanted in offered:
                return wanted
        raise RelayFailure(
            ProtocolError(
                label,
                f"the relay offers AUTH {' '.join(offered)}, not {wanted}",
                hint="set auth_method to one the relay offers",
            ),
            temporary=False,
            stage="AUTH",
        )

    def authenticate(self, route: DomainConfig, mechanism: str, user: str, secret: str) -> None:
        """Run one AUTH exchange; refuses on an unencrypted connection unless allowed."""
        if not self.encrypted and not route.allow_plaintext_auth:
            # Checked before a byte of AUTH is sent: a sniffer must never see the secret.
            raise RelayFailure(
                NoPermError(
                    self.endpoint.label,
                    "refusing to authenticate over an unencrypted connection",
                    hint=hints.PLAINTEXT_AUTH,
                ),
                temporary=False,
                stage="AUTH",
            )
        try:
            code, message = self._auth_exchange(mechanism, user, secret)
        except RelayFailure:
            raise
        except Exception as exc:
            raise self._transport_failure("AUTH", exc) from None
        if code == 235 or (code == 503 and b"already" in message.lower()):
            self.auth_user = user
            self.auth_mechanism = mechanism
            self.note(f"authenticated as {user} with {mechanism}")
            return
        failure = self._reply_failure("AUTH", code, message)
        if mechanism == "XOAUTH2" and failure.error.hint == hints.CREDENTIALS:
            failure.error.hint = hints.TOKEN  # a password hint is no help with a token
        raise failure

    def _auth_exchange(self, mechanism: str, user: str, secret: str) -> tuple[int, bytes]:
        import base64

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii")

        # RFC 4954: credentials are UTF-8 (smtplib's own auth() encodes ASCII only).
        u, s = user.encode("utf-8"), secret.encode("utf-8")
        if mechanism == "PLAIN":
            return self.docmd("AUTH", "PLAIN " + b64(b"\0" + u + b"\0" + s))
        if mechanism == "XOAUTH2":
            blob = b"user=" + u + b"\x01auth=Bearer " + s + b"\x01\x01"
            code, message = self.docmd("AUTH", "XOAUTH2 " + b64(blob))
            if code == 334:
                # Google/Microsoft send a base64 JSON error and wait for an empty line
                # before the final 5xx.
                code, message = self.docmd("")
            return code, message
        if mechanism == "LOGIN":
            # No initial response: older servers (and some appliances) reject it for LOGIN.
            code, message = self.docmd("AUTH", "LOGIN")
            if code == 334:
                code, message = self.docmd(b64(u))
            if code == 334:
                code, message = self.docmd(b64(s))
            return code, message
        if mechanism == "CRAM-MD5":
            code, message = self.docmd("AUTH", "CRAM-MD5")
            if code != 334:
                return code, message
            import hmac

            challenge = base64.b64decode(message.strip())
            digest = hmac.new(s, challenge, "md5").hexdigest()
            return self.docmd(b64(u + b" " + digest.encode("ascii")))
        raise ValueError(f"unknown mechanism {mechanism}")

    # -- the transaction -------------------------------------------------------

    def transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes | bytearray,
        *,
        smtputf8: bool,
        eightbit: bool,
        reset: bool = False,
        dsn: "Dsn | None" = None,
    ) -> Transaction:
        """MAIL, every RCPT, DATA; partial refusals are returned, not raised.

        `reset` starts with RSET: the connection carried a transaction before.
        """
        label = self.endpoint.label
        options: list[str] = []
        self.command_encoding = "ascii"
        with_dsn: Dsn | None = None
        if dsn is not None:
            if self.has_extn("dsn"):
                options += dsn.mail_options()
                with_dsn = dsn
            else:
                self.note("relay does not offer DSN (RFC 3461); -N, -R, -V and ORCPT dropped")
        # What MAIL and RCPT name (the A-label forms below); replies map to `recipients`.
        wire_sender, wire_recipients = sender, list(recipients)
        if smtputf8 and not self.has_extn("smtputf8"):
            converted = [ascii_address(a) for a in (sender, *recipients)]
            if all(c is not None for c in converted):
                # Only domains were non-ASCII: their A-labels are the same addresses.
                wire_sender, *wire_recipients = [c for c in converted if c is not None]
                smtputf8 = False
                self.note("relay does not offer SMTPUTF8; domains sent as A-labels (IDNA)")
        if smtputf8:
            if not self.has_extn("smtputf8"):
                raise RelayFailure(
                    DataError(
                        label,
                        "the message needs SMTPUTF8 (non-ASCII addresses)"
                        " and the relay does not offer it",
                        hint=hints.SMTPUTF8,
                    ),
                    temporary=False,
                    stage="MAIL",
                    next_server=True,
                )
            options.append("SMTPUTF8")
            self.command_encoding = "utf-8"
        if eightbit:
            # RFC 6152 asks for conversion when 8BITMIME is missing; in practice every
            # relay passes 8-bit bodies through, so send as is (documented).
            if self.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            else:
                self.note("relay does not offer 8BITMIME; sending the 8-bit body unchanged")
        if self.has_extn("size"):
            limit_text = self.esmtp_features.get("size", "").strip()
            limit = int(limit_text) if limit_text.isdigit() else 0
            if limit and len(data) > limit:
                raise RelayFailure(
                    DataError(
                        label, f"the message is {len(data)} bytes; the relay accepts {limit}"
                    ),
                    temporary=False,
                    stage="MAIL",
                    code=552,
                )
            options.append(f"SIZE={len(data)}")
        suffix = "".join(f" {o}" for o in options)
        # Addresses go out verbatim in <>: smtplib's quoteaddr() re-parses them and can
        # mangle quoted local parts.
        commands = [("mail", f"FROM:<{wire_sender}>{suffix}")]

        def rcpt_suffix(rcpt: str) -> str:
            found = with_dsn.rcpt_options(rcpt) if with_dsn is not None else []
            if not smtputf8:  # a UTF-8 ORCPT goes only where SMTPUTF8 does (RFC 6533)
                found = [o for o in found if o.isascii()]
            return "".join(f" {o}" for o in found)

        commands += [
            ("rcpt", f"TO:<{wire}>{rcpt_suffix(rcpt)}")
            for rcpt, wire in zip(recipients, wire_recipients, strict=True)
        ]
        commands.append(("data", ""))
        if reset:
            commands.insert(0, ("rset", ""))
        self.transactions += 1
        try:
            if self.has_extn("pipelining"):
                replies = self._pipelined(commands)
            else:
                replies = self._one_by_one(commands)
            if reset:
                self._check_reset(replies)
            return self._exchange(replies, recipients, data)
        except RelayFailure:
            raise
        except Exception as exc:
            raise self._transport_failure("DATA", exc) from None

    def _one_by_one(self, commands: list[tuple[str, str]]) -> Iterator[tuple[int, bytes]]:
        """Each reply before the next command; no DATA after a refused MAIL or all RCPTs refused."""
        accepted = False
        for verb, args in commands:
            if verb == "data" and not accepted:
                return
            reply = self.docmd(verb, args)
            yield reply
            if verb == "mail" and reply[0] != 250:
                return
            accepted = accepted or (verb == "rcpt" and 200 <= reply[0] < 300)

    def _pipelined(self, commands: list[tuple[str, str]]) -> Iterator[tuple[int, bytes]]:
        """RFC 2920: every command of a batch in one write, then their replies in order."""
        for start in range(0, len(commands), PIPELINE_BATCH):
            batch = commands[start : start + PIPELINE_BATCH]
            self.putcmds(batch)
            for _ in batch:
                yield self.getreply()

    def _check_reset(self, replies: Iterator[tuple[int, bytes]]) -> None:
        """The RSET that opens a transaction on a reused connection."""
        try:
            code, message = next(replies)
        except (OSError, SMTPException) as exc:
            raise RelayFailure(
                TempFailError(self.endpoint.label, f"RSET: the idle connection was lost ({exc})"),
                temporary=True,
                stage="RSET",
                stale=True,
            ) from None
        if code != 250:
            # 421: the server timed the idle connection out. Whatever else it says, the
            # refusal is of this old session, not of the message: a new one may take it
            # (a 5xx to RSET used to fail a queued message for good).
            failure = self._reply_failure("RSET", code, message)
            failure.stale = True
            raise failure

    def _exchange(
        self,
        replies: Iterator[tuple[int, bytes]],
        recipients: Sequence[str],
        data: bytes | bytearray,
    ) -> Transaction:
        """Match the replies to MAIL, each RCPT and DATA; stream the message after a 354."""
        code, message = next(replies)
        if code != 250:
            self._drain(replies)
            raise self._reply_failure("MAIL", code, message)
        result = Transaction()
        for rcpt in recipients:
            code, message = next(replies)
            if 200 <= code < 300:
                result.accepted.append(rcpt)
            else:
                result.refused[rcpt] = (code, reply_text(message))
        if not result.accepted:
            self._drain(replies)
            self._rset_quietly()
            kinds = {permanent(code, text) for code, text in result.refused.values()}
            if len(kinds) == 1:
                raise self._all_refused(result.refused, permanently=kinds.pop())
            return result  # some refused for good, some for now: each recipient its fate
        code, message = next(replies)
        if code != 354:
            raise self._reply_failure("DATA", code, message)
        self._stream(data)
        try:
            code, message = self.getreply()
        except Exception as exc:
            failure = self._transport_failure("end of DATA", exc)
            if failure.temporary:
                failure.unanswered = True
                failure.error = TempFailError(
                    self.endpoint.label,
                    f"{failure.error.why}, after the whole message was sent: it may have"
                    " arrived, so it is not sent anywhere else now",
                )
            raise failure from None
        if code != 250:
            raise self._reply_failure("end of DATA", code, message)
        result.reply = f"{code} {reply_text(message)}"
        return result

    def _drain(self, replies: Iterator[tuple[int, bytes]]) -> None:
        """Read the replies still due after a refusal; end a DATA that was accepted anyway.

        The refusal is what the caller hears: a server that hangs up after it (a 421)
        only ends the connection here.
        """
        try:
            for code, _ in replies:
                if code == 354:
                    # RFC 2920 §3.1: DATA accepted although no recipient was; an empty
                    # body ends it, and the server refuses or drops that message.
                    self.send(".\r\n")
                    self.getreply()
        except (OSError, SMTPException):
            self.close()

    def _stream(self, data: bytes | bytearray) -> None:
        """Send the message dot-stuffed (RFC 5321 4.5.2) and the final dot, without copying it."""
        sock = self.sock
        assert sock is not None
        if self._transcript is not None:
            self._transcript(f"C: <message: {len(data)} bytes>")
            self._transcript("C: .")
        view = memoryview(data)
        pending = bytearray()
        _set_timeout(sock, self.endpoint.write_timeout)

        def put(piece: memoryview | bytes) -> None:
            if len(pending) + len(piece) <= CHUNK:
                pending.extend(piece)
                return
            if pending:
                sock.sendall(pending)
                pending.clear()
            for start in range(0, len(piece), CHUNK):
                part = piece[start : start + CHUNK]
                if len(part) < CHUNK:
                    pending.extend(part)
                else:
                    sock.sendall(part)

        pos = 0
        if data.startswith(b"."):
            put(b".")
        while True:
            dot = data.find(b"\n.", pos)
            if dot < 0:
                put(view[pos:])
                break
            put(view[pos : dot + 1])
            put(b".")
            pos = dot + 1
        put(b".\r\n" if data.endswith(b"\r\n") or not data else b"\r\n.\r\n")
        sock.sendall(pending)
        _set_timeout(sock, self.endpoint.read_timeout)

    def _rset_quietly(self) -> None:
        with contextlib.suppress(OSError, SMTPException):
            self.rset()

    def close_quietly(self) -> None:
        """QUIT and close; after a delivered message nothing here may turn into a failure."""
        try:
            if self.sock is not None:
                self.putcmd("quit")
                # Everything sent is delivered by now: a relay slow to say goodbye must
                # not hold the caller (cron, a PHP page) for read_timeout.
                if self.sock is not None:
                    self.sock.settimeout(min(self.endpoint.read_timeout, QUIT_WAIT))
                self.getreply()
        except (OSError, SMTPException):
            pass
        finally:
            self.forget_greeting()
            self.close()

    # -- failures --------------------------------------------------------------

    def _all_refused(
        self, refused: dict[str, tuple[int, str]], *, permanently: bool
    ) -> RelayFailure:
        """Every recipient refused, all for good (5xx) or all for now."""
        label = self.endpoint.label
        listing = "; ".join(f"<{r}>: {code} {text}" for r, (code, text) in refused.items())
        code, text = next(iter(refused.values()))
        if not permanently:
            return RelayFailure(
                TempFailError(label, f"every recipient deferred: {listing}"),
                temporary=True,
                stage="RCPT",
                code=code,
                reply=listing,
            )
        return RelayFailure(
            NoUserError(
                label,
                f"every recipient refused: {listing}",
                hint=hints.for_reply(
                    code, text, port=self.endpoint.port, mx=self.endpoint.address is not None
                ),
            ),
            temporary=False,
            stage="RCPT",
            code=code,
            reply=listing,
        )

    def _reply_failure(self, stage: str, code: int, message: bytes | str) -> RelayFailure:
        """Map an unexpected reply at `stage` to the SPEC §9 error."""
        label = self.endpoint.label
        text = reply_text(message)
        reply = f"{code} {text}".rstrip()
        why = f"{stage}: {reply}"
        hint = hints.for_reply(
            code, text, port=self.endpoint.port, mx=self.endpoint.address is not None
        )
        if 400 <= code < 500 or code < 200:
            # 4xx is transient by definition (RFC 5321 4.2.1); codes < 200 mean a broken
            # conversation, which a new connection may not repeat.
            return RelayFailure(
                TempFailError(label, why, hint=hint),
                temporary=True,
                stage=stage,
                code=code,
                reply=reply,
            )
        error: MailerError
        if stage == "AUTH":
            if code in (535, 534, 538, 530):
                error = NoPermError(label, f"authentication refused: {code} {text}", hint=hint)
            else:
                error = ProtocolError(label, why, hint=hint)
        elif code == 530:
            error = NoPermError(label, why, hint=hint or hints.AUTH_REQUIRED)
        elif stage == "end of DATA" or (stage == "MAIL" and code in (552, 554) and not hint):
            who = "the MX" if self.endpoint.address is not None else "the relay"
            error = DataError(label, f"{who} refused the message: {why}", hint=hint)
        elif stage == "STARTTLS":
            error = ProtocolError(label, why, hint=hint)
        else:
            error = UnavailableError(label, why, hint=hint)
        return RelayFailure(error, temporary=False, stage=stage, code=code, reply=reply)

    def _transport_failure(self, stage: str, exc: BaseException) -> RelayFailure:
        """Map a socket, TLS or wire exception to a RelayFailure."""
        label = self.endpoint.label
        port = self.endpoint.port
        if isinstance(exc, _TLSPinMismatch):
            return RelayFailure(
                ProtocolError(
                    label,
                    f"the certificate does not match tls_fingerprint: the server presented"
                    f" {exc.seen}",
                    hint="if the relay's certificate was renewed on purpose, check the new one"
                    " out of band (`ssmtp-mailer test` prints it) and update tls_fingerprint",
                ),
                temporary=False,
                stage="TLS",
                next_server=True,
            )
        if isinstance(exc, socket.gaierror):
            if exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None)):
                return RelayFailure(
                    TempFailError(label, f"cannot resolve {self.endpoint.host}: {exc.strerror}"),
                    temporary=True,
                    stage="DNS",
                )
            # Temporary too: an offline laptop or a DNS blip must not cost the message.
            return RelayFailure(
                NoHostError(
                    label,
                    f"relay host not found: {self.endpoint.host} ({exc.strerror})",
                    hint=f"check smtp_server in [domain:{self.endpoint.route}]",
                ),
                temporary=True,
                stage="DNS",
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return RelayFailure(
                ProtocolError(
                    label,
                    f"TLS certificate not accepted: {exc.verify_message or exc.reason}",
                    hint=hints.CERTIFICATE,
                ),
                temporary=False,
                stage="TLS",
                next_server=True,
            )
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
            return RelayFailure(
                TempFailError(label, f"{stage}: TLS handshake interrupted ({exc})"),
                temporary=True,
                stage=stage,
            )
        if isinstance(exc, ssl.SSLError):
            return RelayFailure(
                ProtocolError(
                    label,
                    f"{stage}: TLS failed: {exc.reason or exc}",
                    hint="check use_ssl/use_starttls against the port (465 is implicit TLS,"
                    " 587 STARTTLS); the relay must speak TLS 1.2 or newer",
                ),
                temporary=False,
                stage="TLS",
                next_server=True,
            )
        # The wire's exceptions are OSErrors too: the specific ones first, OSError last.
        if isinstance(exc, SMTPResponseException):
            # The wire's own verdict on a reply it could not read (a line over 8192
            # octets, endless continuation lines): the server is broken, not refusing.
            return RelayFailure(
                ProtocolError(label, f"{stage}: unreadable reply: {reply_text(exc.smtp_error)}"),
                temporary=False,
                stage=stage,
                next_server=True,
            )
        if isinstance(exc, TimeoutError):
            why = f"{stage}: timed out"
            if stage == "banner":
                why = (
                    f"banner: connected, but no greeting within"
                    f" {self.endpoint.connect_timeout} s (connection_timeout)"
                )
            return RelayFailure(
                TempFailError(label, why, hint=hints.for_timeout(port)),
                temporary=True,
                stage=stage,
            )
        if isinstance(exc, SMTPServerDisconnected):
            return RelayFailure(
                TempFailError(label, f"{stage}: the relay closed the connection ({exc})"),
                temporary=True,
                stage=stage,
            )
        if isinstance(exc, ConnectionRefusedError):
            return RelayFailure(
                TempFailError(
                    label, "connection refused", hint="is the relay running on this port?"
                ),
                temporary=True,
                stage=stage,
            )
        if isinstance(exc, OSError):
            return RelayFailure(
                TempFailError(label, f"{stage}: {exc.strerror or exc}"), temporary=True, stage=stage
            )
        raise exc


class _TLSPinMismatch(ssl.SSLError):
    """The leaf certificate's SHA-256 differs from tls_fingerprint."""

    def __init__(self, seen: str) -> None:
        super().__init__(f"certificate fingerprint {seen} does not match tls_fingerprint")
        self.seen = seen
