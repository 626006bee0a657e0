"""`ssmtp-mailer listen` (SPEC §8): aiosmtpd sessions, policy at RCPT, delivery on a worker pool.

The event loop only speaks SMTP. Each message that reaches the final dot goes to a pool of
`max_connections` threads, through the same prepare → plan → engine → spool path as
`sendmail` (dialect.deliver_data); the reply to the dot waits for its outcome. The
workers share one upstream connection pool, and the engine's quick retries (max_retries,
retry_backoff) sleep in those threads, never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import signal
import socket
import ssl
import struct
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, NoReturn

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    Session,
    TLSSetupException,
    syntax,
)

from ssmtp_mailer import __version__, dialect, errors, log, rewrite
from ssmtp_mailer.addresses import address_problem, is_null_sender, qualify, split_path
from ssmtp_mailer.config.model import AuthMethod, Config, HostPort, UserConfig
from ssmtp_mailer.errors import EX_SOFTWARE, PROG, ConfigError, MailerError, UsageError
from ssmtp_mailer.message import Dsn, format_date
from ssmtp_mailer.relay.pool import ConnectionPool

# A failed AUTH costs the client this long before it hears 535 (RFC 4954 §4 allows it).
AUTH_FAILURE_DELAY = 2.0
AUTH_FAILURES = 3  # in one session; then 421 and the connection closes
PICKUP_INTERVAL = 5.0
QUEUE_INTERVAL = 60.0
PRUNE_INTERVAL = 1.0  # upstream connections idle for connection_reuse_idle get QUIT
SUBMIT_SOCKET = "submit.sock"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # to every serving process
VERDICTS_KEPT = 4096
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DATA_BLOCK = 1 << 20  # more than the reader ever holds: one read empties it
# From outside allowed_networks, a message that has taken listen_timeout must have come
# at least this fast (octets a second, Postfix's smtpd_min_data_rate): a byte now and then
# must not hold one of the max_connections sessions the local programs need.
MIN_DATA_RATE = 500


class _LibraryLog(logging.Handler):
    """What aiosmtpd and asyncio log (a client's unknown command, a failed TLS handshake, an
    exception in a session): one line each in our log, never a traceback on stderr."""

    def __init__(self, state: ListenerState) -> None:
        super().__init__(logging.WARNING)
        self.state = state

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Session.login_data is deprecated"):
            return  # aiosmtpd's own code, at every successful AUTH
        raised = record.exc_info[1] if record.exc_info else None
        error = raised
        while error is not None:  # the exception and what it came from, on one line
            text += f": {type(error).__name__}" + (f": {error}" if str(error) else "")
            error = error.__cause__ or error.__context__
        level = "ERROR" if record.levelno >= logging.ERROR else "WARNING"
        log.write(self.state.config, level, f"listen: {' '.join(text.split())}")
        if raised is not None:
            log.write_traceback(self.state.config, raised)  # at DEBUG (SPEC §9)

    @classmethod
    def install(cls, state: ListenerState) -> None:
        handler = cls(state)
        for name in ("mail.log", "asyncio"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.WARNING)  # aiosmtpd's INFO is a line per command
            logger.handlers = [handler]
            logger.propagate = False


def say(line: str) -> None:
    """One line on stderr (the journal under systemd), in one write: the listener's
    processes share the stream."""
    errors.say(f"{PROG}: listen: {line}")


class SessionCount:
    """The sessions open in all of the listener's processes: max_connections is for all of
    them together. With several, it is made before they are forked, in memory they share,
    under a POSIX record lock: each process holds that one on its own and loses it when it
    dies, so one killed while counting never blocks the others.

    Clients outside allowed_networks hold at most half of the sessions between them: idle
    connections from the internet must not lock out the local applications and users.
    """

    def __init__(self, *, shared: bool) -> None:
        self._open: Any = types.SimpleNamespace(value=0)
        self._outside: Any = types.SimpleNamespace(value=0)
        self._lock_fd: int | None = None
        if shared:
            import multiprocessing

            self._open = multiprocessing.RawValue("i", 0)
            self._outside = multiprocessing.RawValue("i", 0)
            # In memory, not in /tmp: the listener's unit leaves the file system read-only.
            self._lock_fd = os.memfd_create("ssmtp-mailer-sessions")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd is None:  # one process: only its event loop counts
            yield
            return
        import fcntl

        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)

    def enter(self, limit: int, *, outsider: bool = False) -> bool:
        """Count one more session, unless `limit` are open already (or, for an outsider,
        half of them are outsiders')."""
        with self._locked():
            if self._open.value >= limit:
                return False
            if outsider and self._outside.value >= max(1, limit // 2):
                return False
            self._open.value += 1
            self._outside.value += int(outsider)
            return True

    def leave(self, *, outsider: bool = False) -> None:
        with self._locked():
            self._open.value -= 1
            self._outside.value -= int(outsider)


class ListenerState:
    """What every session of one process shares: the current configuration, the pool, the
    live sessions, and the count of sessions open in all the processes."""

    def __init__(
        self, config: Config, *, tls: ssl.SSLContext | None, open_sessions: SessionCount
    ) -> None:
        self.config = config
        self.tls = tls
        self.open_sessions = open_sessions
        self.pool = ThreadPoolExecutor(
            max_workers=config.global_.max_connections, thread_name_prefix="deliver"
        )
        # Upstream connections every worker shares: reused, pipelined (SPEC §6 reuse).
        self.connections = ConnectionPool(config.global_.connection_reuse_idle)
        self.sessions: set[ListenerSMTP] = set()
        self.inflight: set[asyncio.Future[str]] = set()
        self.draining = False
        self.networks = _networks(config)
        # (sender, recipient) -> the RCPT verdict under this configuration: the same app
        # writes to the same addresses all day, and planning is the loop's biggest cost.
        self.verdicts: dict[tuple[str, str, bool], str | None] = {}

    def use(self, config: Config) -> None:
        """Switch to a newly loaded configuration (SIGHUP)."""
        self.networks = _networks(config)
        rewrite.accepts_from_anywhere(config, "postmaster")  # build its index here, once
        self.verdicts = {}
        self.config = config

    def allows(self, address: IPAddress | None) -> bool:
        """Whether a client at `address` is in allowed_networks."""
        return address is not None and any(address in n for n in self.networks)

    def recipient_reply(self, sender: str, recipient: str, *, foreign: bool) -> str | None:
        """dialect.recipient_reply, remembered per configuration."""
        key = (sender, recipient, foreign)
        verdicts = self.verdicts
        if key in verdicts:
            return verdicts[key]
        verdict = dialect.recipient_reply(self.config, sender, recipient, foreign=foreign)
        if len(verdicts) >= VERDICTS_KEPT:
            verdicts.clear()
        verdicts[key] = verdict
        return verdict

    def report(self, line: str) -> None:
        log.write(self.config, "WARNING", line)
        say(line)


def _networks(config: Config) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n) for n in config.global_.allowed_networks)


def client_ip(peer: object) -> IPAddress | None:
    """The IP address of a TCP peer (an IPv4-mapped one as IPv4), None for any other."""
    if not isinstance(peer, tuple):
        return None
    try:
        address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server context for STARTTLS, or None when no certificate is configured."""
    g = config.global_
    if g.listen_tls_cert_file is None or g.listen_tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        from ssmtp_mailer.relay.smtp import no_passphrase

        context.load_cert_chain(g.listen_tls_cert_file, g.listen_tls_key_file, no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"listen_tls_cert_file {g.listen_tls_cert_file}",
            f"cannot load with listen_tls_key_file {g.listen_tls_key_file}: {exc}",
        ) from None
    return context


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a UNIX socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class ListenerEnvelope(Envelope):
    """aiosmtpd's envelope with what the transaction asked of DSN."""

    def __init__(self) -> None:
        super().__init__()
        self.dsn: dialect.DsnTransaction | None = None

    @property
    def sender(self) -> str:
        """The envelope sender as the rest of the package takes it: "" for the null sender."""
        mail_from = self.mail_from or ""
        return "" if is_null_sender(mail_from) else mail_from


class _CommandSizes(dict[str, int]):
    """aiosmtpd's longest command line by verb: dialect.MAX_COMMAND for every one. Its EHLO
    adds room to MAIL's for SIZE= and SMTPUTF8, which that limit has already."""

    def __missing__(self, verb: str) -> int:
        return dialect.MAX_COMMAND

    def __setitem__(self, verb: str, size: int) -> None:
        pass


class ListenerSMTP(SMTP):
    """aiosmtpd's server with the connection limit (421 beyond max_connections) and DSN."""

    # The command line limits of `sendmail -bs` (one dialect); the reader's includes CRLF.
    command_size_limit = dialect.MAX_COMMAND
    command_size_limits = _CommandSizes()
    line_length_limit = dialect.MAX_COMMAND + 2

    def __init__(self, handler: ListenerHandler, state: ListenerState, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.state = state
        self.count = dialect.CommandCount()  # aiosmtpd counts the unrecognized ones itself
        self.refused = False
        self.counted = False
        self.uid: int | None = None  # set for the local submission socket
        self.in_networks = False  # the client's address is in allowed_networks
        self.outsider = False  # neither that nor the local socket (SessionCount)
        self.auth_failures = 0
        self.peer_ip: IPAddress | None = None  # the client's, read once, for allowed_networks
        self.in_data = False  # from the 354 until the reply to the dot is written
        self.ended_in_data = False  # the client closed its side during DATA
        # The DSN parameters of the MAIL or RCPT being served, for the handler's hook.
        self.dsn_parameters = dialect.DsnParameters({}, [])

    def _create_envelope(self) -> ListenerEnvelope:
        return ListenerEnvelope()

    async def push(self, status: str) -> None:  # type: ignore[override]
        """Every reply in the words `sendmail -bs` uses (dialect.in_our_words); what the
        client sent that is no UTF-8 (aiosmtpd keeps it as surrogates), or a control
        character, echoed as `?`."""
        if isinstance(status, str):  # aiosmtpd pushes some (AUTH's) as bytes
            status = dialect.printable(status.encode("utf-8", "replace").decode("utf-8"))
        await super().push(dialect.in_our_words(status))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path of MAIL, RCPT or VRFY as `sendmail -bs` reads it (addresses.split_path).

        aiosmtpd's own parser goes through the email package and builds a class per call;
        its callers take `<>` for the null path and None for a malformed one.
        """
        if not arg:
            return "", ""
        path = split_path(arg)
        if path is None:
            return None, None
        return path[0] or "<>", path[1]

    # HELP lists the commands with a syntax (dialect.help_reply), STARTTLS and AUTH when offered.
    @syntax(dialect.HELP_TOPICS["MAIL"])
    async def smtp_MAIL(self, arg: str | None) -> None:
        arg = self._take_dsn("FROM:", "MAIL", arg)
        found, envelope = self.dsn_parameters, self.envelope
        if envelope is not None and envelope.mail_from is None:  # else 503, nested MAIL
            refusal = found.refusal or dialect.mail_parameters_refusal(
                found.others, self.data_size_limit or 0
            )
            if refusal is not None:  # in `sendmail -bs`'s words, before aiosmtpd's checks
                await self.push(refusal)
                return
        await super().smtp_MAIL(arg)

    @syntax(dialect.HELP_TOPICS["RCPT"])
    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(self._take_dsn("TO:", "RCPT", arg))

    def _take_dsn(self, keyword: str, verb: str, arg: str | None) -> str | None:
        """The command without its DSN parameters, which go to `dsn_parameters`.

        aiosmtpd refuses parameters it does not know and upper-cases the rest (an ENVID
        is case-sensitive), so they are taken out first; its own checks then run as
        before, and the handler's hook answers a bad one.
        """
        self.dsn_parameters = dialect.DsnParameters({}, [])
        if arg is None or self.session is None or not self.session.extended_smtp:
            return arg
        path = self._strip_command_keyword(keyword, arg)
        if path is None:
            return arg
        address, rest = self._getaddr(path)
        if address is None or not rest:
            return arg
        found = dialect.dsn_parameters(verb, rest.split())
        self.dsn_parameters = found
        head = path[: len(path) - len(rest)].rstrip()
        return " ".join([keyword + head, *found.others])

    @property
    def starttls_offered(self) -> bool:
        """Whether EHLO lists STARTTLS now: so HELP names it only then."""
        return self.tls_context is not None and self._tls_protocol is None

    @syntax(dialect.HELP_TOPICS["STARTTLS"], when="starttls_offered")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:  # RFC 3207 §4.2: one TLS negotiation a session
            await self.push(dialect.TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    @property
    def auth_offered(self) -> bool:
        """Whether EHLO lists AUTH now (aiosmtpd's rule), likewise."""
        return not self._auth_require_tls or self._tls_protocol is not None

    @syntax(dialect.HELP_TOPICS["AUTH"], when="auth_offered")
    async def smtp_AUTH(self, arg: str) -> None:
        envelope = self.envelope
        if envelope is not None and envelope.mail_from is not None:
            # RFC 4954 §4. The sender was checked at MAIL as the client was then: a login
            # now would let it send as whoever it named before.
            await self.push(dialect.AUTH_IN_TRANSACTION)
            return
        await super().smtp_AUTH(arg)

    async def _closing(self, verb: str) -> bool:
        """Whether the session ends here, over the junk command limit: 421 and the hang-up."""
        reply = self.count.closing(verb, known=True)
        if reply is None:
            return False
        peer = self.session.peer if self.session is not None else None
        log.write(self.state.config, "WARNING", f"listen: {reply} to {peer}")
        await self.push(reply)
        assert self.transport is not None
        self.transport.close()
        return True

    @syntax(dialect.HELP_TOPICS["NOOP"])
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._closing("NOOP"):
            await super().smtp_NOOP(arg)

    @syntax(dialect.HELP_TOPICS["RSET"])
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._closing("RSET"):
            await super().smtp_RSET(arg)

    @syntax(dialect.HELP_TOPICS["VRFY"])
    async def smtp_VRFY(self, arg: str) -> None:
        if await self._closing("VRFY"):
            return
        if arg and self._getaddr(arg)[0] is None:
            await self.push(dialect.SYNTAX.format(dialect.HELP_TOPICS["VRFY"]))
            return
        await super().smtp_VRFY(arg)

    @syntax(dialect.HELP_TOPICS["HELP"])
    async def smtp_HELP(self, arg: str) -> None:
        if await self._closing("HELP") or await self.check_auth_needed("HELP"):
            return
        offered = (v for v, method in self._smtp_methods.items() if self._syntax_available(method))
        await self.push(dialect.help_reply(arg or "", offered))

    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._closing("EXPN"):
            await self.push(dialect.NO_EXPN)  # no lists to expand (RFC 5321 §3.5.2), as -bs

    @syntax(dialect.HELP_TOPICS["DATA"])
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the message read in blocks, not line by line.

        Replies as `sendmail -bs` does: 552 when over max_message_size (read to its end
        first, RFC 5321 §4.2.5), and over-long lines are left to the message checks.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            no_mail = envelope.mail_from is None
            await self.push(dialect.NEED_MAIL if no_mail else dialect.NO_RECIPIENTS)
            return
        if arg:
            await self.push(dialect.SYNTAX.format("DATA"))
            return
        await self.push(dialect.START_DATA)
        self.in_data = True
        try:
            content = await self._read_data(self.data_size_limit or 0)
            if content is None:
                self.envelope = self._create_envelope()
                await self.push(dialect.TOO_BIG)
            else:
                envelope.content = envelope.original_content = content
                # listen_timeout is the client's, not the relay's: a delivery that takes
                # longer must still get its reply (else the client sends it again).
                if self._timeout_handle is not None:
                    self._timeout_handle.cancel()
                status = await self._call_handler_hook("DATA")
                self.envelope = self._create_envelope()
                if status is MISSING or status.startswith("250"):
                    self.count.accepted()
                await self.push("250 OK" if status is MISSING else status)
        finally:
            self.in_data = False
            if self.transport is not None:  # not for a connection already gone
                self._reset_timeout()
        if self.ended_in_data:
            # The reply is out: the session ends as at any EOF. aiosmtpd cancels this task,
            # and the cancellation lands at the next await (its next read would not wait).
            super().eof_received()
            await asyncio.sleep(0)

    async def _read_data(self, limit: int) -> bytes | None:
        """The message up to the lone dot, un-dot-stuffed; None when over `limit` octets.

        What follows the dot in the last block (a pipelined next command) goes back to the
        reader: every read empties its buffer, so it goes back in front.
        """
        reader = self._reader
        # A leading CRLF, so that a dot on the first line ends the data as on any other.
        data = bytearray(b"\r\n")
        over = False
        loop = asyncio.get_running_loop()
        started, received = loop.time(), 0
        assert isinstance(self.event_handler, ListenerHandler) and self.session is not None
        outsider = not self.event_handler.trusted(self, self.session)
        patience = self.state.config.global_.listen_timeout
        while True:
            block = await reader.read(DATA_BLOCK)
            if not block:
                raise ConnectionResetError("end of input in DATA")
            received += len(block)
            took = loop.time() - started
            if outsider and took > patience and received < MIN_DATA_RATE * took:
                self._timeout_cb()
                raise ConnectionResetError(f"DATA at {received / took:.0f} octets a second")
            self._reset_timeout()  # listen_timeout between reads, not for the whole upload
            searched = max(len(data) - 4, 0)
            data += block
            end = data.find(b"\r\n.\r\n", searched)
            if end >= 0:
                rest = data[end + 5 :]
                if rest and not reader.at_eof():
                    reader.feed_data(bytes(rest))
                del data[end + 2 :]
                break
            if limit and len(data) > limit + 2:
                over = True
                del data[2:-4]  # only enough to find the dot in the next block
        if over or (limit and len(data) > limit + 2):
            return None
        # RFC 5321 §4.5.2: the client doubled the dot that starts a line.
        return bytes(data).replace(b"\r\n.", b"\r\n")[2:]

    def _timeout_cb(self) -> None:
        """listen_timeout passed with nothing from the client: 421 before the hang-up."""
        if self.transport is None:
            return  # the connection ended meanwhile
        if not self.transport.is_closing():
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(dialect.TIMED_OUT.encode() + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        state = self.state
        if not self.counted:
            limit = state.config.global_.max_connections
            sock = transport.get_extra_info("socket")
            local = sock is not None and sock.family == socket.AF_UNIX
            self.peer_ip = client_ip(transport.get_extra_info("peername"))
            # Decided once, at the connection: a SIGHUP's new allowed_networks take the next.
            self.in_networks = state.allows(self.peer_ip)
            self.outsider = not local and not self.in_networks
            if state.draining or not state.open_sessions.enter(limit, outsider=self.outsider):
                self.refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                reply = dialect.SHUTTING_DOWN if state.draining else dialect.TOO_MANY
                transport.write(reply.encode() + b"\r\n")
                transport.close()
                return
            self.counted = True
            state.sessions.add(self)
            if local:
                self.uid = peer_uid(sock)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self.state.sessions.discard(self)
        self.state.open_sessions.leave(outsider=self.outsider)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """The client closed its side. aiosmtpd ends the session at once; during DATA the
        message is read to its dot first and the reply to it is written, since a client
        that sent a whole message and hears nothing sends it again. (Over TLS the
        connection cannot stay half open: there it ends as aiosmtpd ends it.)"""
        if self.refused:
            return None
        if self.in_data and self.session is not None and self.session.ssl is None:
            self.ended_in_data = True
            self._reader.feed_eof()
            return True
        return super().eof_received()


class ListenerHandler:
    """aiosmtpd hooks: who may send what (SPEC §8), and the reply to DATA."""

    def __init__(self, state: ListenerState) -> None:
        self.state = state

    # -- who the client is ------------------------------------------------------------

    def trusted(self, server: ListenerSMTP, session: Session) -> bool:
        """In allowed_networks, authenticated, or a local user on the submission socket."""
        return session.authenticated or server.uid is not None or server.in_networks

    async def handle_EHLO(
        self,
        server: ListenerSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands one by one from a buffer, so pipelined ones are served.
        # In the order `sendmail -bs` gives them, with STARTTLS and AUTH where offered.
        return [
            responses[0],
            "250-PIPELINING",
            *responses[1:-1],
            "250-DSN",
            "250-ENHANCEDSTATUSCODES",
            responses[-1],
        ]

    async def handle_QUIT(self, server: ListenerSMTP, session: Session, envelope: Envelope) -> str:
        return dialect.CLOSING.format(self.state.config.global_.default_hostname)

    async def handle_exception(self, error: Exception) -> str:
        """An exception in a command: one line in the log (a client's broken TLS handshake
        a warning, anything else an error with its traceback at DEBUG); the client hears
        451, as from `sendmail -bs` (aiosmtpd closes a failed TLS session instead)."""
        level = logging.WARNING if isinstance(error, TLSSetupException) else logging.ERROR
        logging.getLogger("mail.log").log(level, "session exception", exc_info=error)
        return dialect.reply_for(EX_SOFTWARE, "internal error")

    async def handle_MAIL(
        self,
        server: ListenerSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        state = self.state
        if state.draining:
            return dialect.SHUTTING_DOWN
        found = server.dsn_parameters
        config = state.config
        hostname = config.global_.default_hostname
        sender = "" if is_null_sender(address) else qualify(address, hostname)
        if sender and address_problem(sender):
            return f"553 5.1.7 Bad sender address syntax: {address}"
        user = session.auth_data if session.authenticated else None
        if isinstance(user, UserConfig) and not rewrite.user_allows_sender(config, user, sender):
            return dialect.SENDER_NOT_OWNED.format(sender, f"[user:{user.address}]")
        if (
            sender
            and not self.trusted(server, session)
            and rewrite.owned_by_a_login(config, sender)
        ):
            # One of ours, who sends by logging in (Postfix's sender login mismatch).
            return dialect.SENDER_NEEDS_LOGIN.format(sender)
        if server.uid is not None:
            from ssmtp_mailer import submit

            why = submit.sender_refusal(config, server.uid, sender)
            if why is not None:
                return dialect.SENDER_NOT_OWNED.format(sender, why)
        # aiosmtpd reads an empty mail_from as "no MAIL yet" (503 to RCPT, a second MAIL
        # allowed), so the null reverse-path (RFC 5321 §4.5.5) keeps its wire spelling there.
        envelope.mail_from = sender or "<>"
        envelope.mail_options.extend(mail_options)
        assert isinstance(envelope, ListenerEnvelope)
        envelope.dsn = dialect.DsnTransaction(found.values)
        return dialect.MAIL_OK

    async def handle_RCPT(
        self,
        server: ListenerSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address == "<>":  # the null path is no recipient (RFC 5321 §4.1.1.3)
            return dialect.SYNTAX.format("RCPT TO:<address>")
        found = server.dsn_parameters
        if found.refusal is not None:
            return found.refusal
        if len(envelope.rcpt_tos) >= dialect.MAX_RECIPIENTS:
            return dialect.TOO_MANY_RECIPIENTS
        config = self.state.config
        recipient = qualify(address, config.global_.default_hostname)
        if address_problem(recipient):
            return f"553 5.1.3 Bad recipient address syntax: {address}"
        foreign = not self.trusted(server, session)
        if foreign and not rewrite.accepts_from_anywhere(config, recipient):
            return dialect.RELAY_DENIED.format(recipient)
        assert isinstance(envelope, ListenerEnvelope) and envelope.dsn is not None
        # The plan DATA will follow: an outsider's sender is not masqueraded there either.
        refusal = self.state.recipient_reply(envelope.sender, recipient, foreign=foreign)
        if refusal is not None and foreign:
            log.write(config, "INFO", f"listen: RCPT from [{server.peer_ip}]: {refusal}")
            refusal = dialect.for_outsiders(refusal, recipient)
        if refusal is None:
            refusal = envelope.dsn.refusal(recipient, found.values)
        if refusal is not None:
            return refusal
        envelope.dsn.accepted(recipient, found.values)
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(rcpt_options)
        return dialect.RCPT_OK

    async def handle_DATA(self, server: ListenerSMTP, session: Session, envelope: Envelope) -> str:
        state = self.state
        if state.draining:
            return dialect.SHUTTING_DOWN  # too late to promise delivery before we exit
        data = envelope.original_content or b""
        received = self._received(server, session)
        assert isinstance(envelope, ListenerEnvelope)
        dsn = envelope.dsn.dsn() if envelope.dsn is not None else None
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            state.pool,
            _deliver,
            state.config,
            received,
            data,
            envelope.sender,
            list(envelope.rcpt_tos),
            dsn,
            state.report,
            state.connections,
            server.uid is not None,
            not self.trusted(server, session),
        )
        state.inflight.add(future)
        try:
            # Shielded: a client hanging up must not cancel a delivery under way.
            reply = await asyncio.shield(future)
        finally:
            state.inflight.discard(future)
        return reply if self.trusted(server, session) else dialect.for_outsiders(reply)

    def _received(self, server: ListenerSMTP, session: Session) -> bytes:
        """Our Received: field (RFC 5321 §4.4), naming the uid for local submission."""
        hostname = self.state.config.global_.default_hostname
        if server.uid is not None:
            from ssmtp_mailer.submit import uid_label

            origin = f"from {uid_label(server.uid)}"
            protocol = "with ESMTP (submit.sock)"
        else:
            peer = session.peer
            ip = peer[0] if isinstance(peer, tuple) else "unknown"
            origin = f"from {trace_name(session.host_name)} ([{ip}])"
            protocol = "with ESMTP"
            if session.ssl is not None:
                protocol += "S"
            if session.authenticated:
                protocol += "A"
        line = f"Received: {origin}\r\n\tby {hostname} ({PROG} {__version__}) {protocol};"
        return f"{line}\r\n\t{format_date(time.time())}\r\n".encode("utf-8", "replace")

    # -- AUTH PLAIN and LOGIN (only after STARTTLS: aiosmtpd's auth_require_tls) --------

    async def auth_PLAIN(self, server: ListenerSMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            given = initial_response(args[1])
            if given is None:
                await server.push(dialect.BAD_BASE64)
                return AuthResult(success=False, handled=True)
            blob = given
        assert isinstance(blob, bytes)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split the PLAIN response")
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        if authzid and authzid.lower() != login.lower():
            # RFC 4616 §2: to act as someone else; nobody may here, so no one is let in.
            await server.push("535 5.7.8 Cannot act for another user")
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def auth_LOGIN(self, server: ListenerSMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
        else:
            given = initial_response(args[1])
            if given is None:
                await server.push(dialect.BAD_BASE64)
                return AuthResult(success=False, handled=True)
            login = given
        if login is MISSING:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check(server, login, password)

    async def _check(self, server: ListenerSMTP, login: bytes, password: bytes) -> AuthResult:
        """scrypt in a thread (it takes ~50 ms); a failure waits before its 535, and after
        AUTH_FAILURES of them the session ends (a guesser reconnects, slower still)."""
        from ssmtp_mailer import passhash

        if server.auth_failures >= AUTH_FAILURES:
            await server.push(dialect.TOO_MANY_AUTH_FAILURES)
            assert server.transport is not None
            server.transport.close()
            return AuthResult(success=False, handled=True)
        config = self.state.config
        name = login.decode("utf-8", "replace")
        user = rewrite.user_for_login(config, name)
        stored = user.smtp_password_hash if user is not None else None
        loop = asyncio.get_running_loop()
        # Unknown users cost the same one scrypt as known ones (timing says nothing), off
        # the event loop: the stand-in hash is made once, not at each attempt.
        candidate = stored if stored else await loop.run_in_executor(None, _stand_in_hash)
        ok = await loop.run_in_executor(None, passhash.verify_password, password, candidate)
        if ok and user is not None and stored:
            return AuthResult(success=True, auth_data=user, message=dialect.AUTH_OK)
        peer = server.session.peer if server.session is not None else None
        log.write(config, "WARNING", f"listen: AUTH failed for {name!r} from {peer}")
        server.auth_failures += 1
        await asyncio.sleep(AUTH_FAILURE_DELAY)
        return AuthResult(success=False, handled=False, message=dialect.AUTH_FAILED)


@functools.lru_cache(maxsize=1)
def _stand_in_hash() -> str:
    """A hash no password matches in practice, checked against for unknown logins."""
    from ssmtp_mailer import passhash

    return passhash.hash_password(os.urandom(16).hex())


def initial_response(arg: str) -> bytes | None:
    """The initial response of AUTH, decoded; None when it is no base64. A lone `=` is
    an empty one (RFC 4954 §4)."""
    import base64
    import binascii

    if arg == "=":
        return b""
    try:
        return base64.b64decode(arg, validate=True)
    except binascii.Error:
        return None


def trace_name(helo: str | None) -> str:
    """The client's EHLO name as our Received: field gives it: a name or address literal
    as RFC 5321 writes them, else `unknown`. It is the client's to choose: one holding
    a bare CR would put header fields of its own above ours."""
    if helo and len(helo) <= 255 and all(c in _TRACE_CHARACTERS for c in helo):
        return helo
    return "unknown"


_TRACE_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]"
)


def _deliver(
    config: Config,
    received: bytes,
    raw: bytes,
    sender: str,
    recipients: list[str],
    dsn: Dsn | None,
    report: Callable[[str], None],
    connections: ConnectionPool,
    held: bool,
    foreign: bool,
) -> str:
    """In a worker: the message through the sendmail path; the reply to the final dot.

    `held`: a local submission; `foreign`: from a client that is not ours
    (dialect.deliver_data).
    """
    return dialect.deliver_data(
        config,
        raw,
        sender,
        recipients,
        received=received,
        dsn=dsn,
        report=report,
        run_queue=False,
        retries=config.global_.max_retries,
        pool=connections,
        held=held,
        foreign=foreign,
    )


# -- binding, privileges and the lifecycle ---------------------------------------------


def bind(
    addresses: Sequence[HostPort], copies: int = 1, *, configured: Config | None = None
) -> list[list[socket.socket]]:
    """Listening sockets for every address (before privileges are dropped), one set per
    process. Several sets share each address and port (SO_REUSEPORT: the kernel spreads
    new connections among them); port 0 takes a free port, the same for every set.

    An address that cannot be bound is a usage error (`--address`), or with `configured`
    a configuration error naming listen_address where that configuration sets it."""
    sets: list[list[socket.socket]] = [[] for _ in range(copies)]
    try:
        for hp in addresses:
            port = 25 if hp.port is None else hp.port
            family = socket.AF_INET6 if ":" in hp.host else socket.AF_INET
            if copies > 1:
                port = _unshared_port(family, hp.host, port)
            for sockets in sets:
                # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on each accepted
                # connection: without it Nagle's algorithm holds every reply written
                # after another (EHLO's lines, pipelined RCPTs) for the client's delayed
                # ACK, ~40 ms each.
                sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if copies > 1:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((hp.host, port))
                port = sock.getsockname()[1]
                sock.listen(128)
                sock.setblocking(False)
    except OSError as exc:
        for sockets in sets:
            for sock in sockets:
                sock.close()
        why = exc.strerror or str(exc)
        if configured is None:
            raise UsageError(f"listen {hp}", why) from None
        where = configured.global_.location_of("listen_address")
        what = f"{where}: listen_address {hp}" if where else f"listen_address {hp}"
        raise ConfigError(what, why) from None
    return sets


def _unshared_port(family: socket.AddressFamily, host: str, port: int) -> int:
    """The port, once a socket without SO_REUSEPORT could bind it: a second listener of the
    same user would otherwise join the first one's port instead of hearing "in use"."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def bind_submit_socket(config: Config) -> socket.socket | None:
    """spool_dir/submit.sock, mode 0666: any local user may submit (SPEC §8)."""
    from ssmtp_mailer import submit

    try:
        submit.ensure_submission_dirs(config)
    except MailerError as exc:
        say(f"no local submission socket: {exc.what}: {exc.why}")
        return None
    path = config.global_.spool_dir / SUBMIT_SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()
        # Made 0666 by the umask as bind creates it: a chmod by name afterwards would
        # follow whatever the spool's owner put there meanwhile (a link to a root file).
        umask = os.umask(0o111)
        try:
            sock.bind(str(path))
        finally:
            os.umask(umask)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        say(f"no local submission socket {path}: {exc.strerror or exc}")
        return None
    return sock


def drop_privileges(user: str) -> None:
    """As root: become `user`, keeping group `mail` for the secrets (root:mail 0640)."""
    if os.geteuid() != 0:
        return
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError("listen_user", f"no such user: {user}") from None
    if entry.pw_uid == 0:
        return
    groups = {entry.pw_gid}
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrnam("mail").gr_gid)
    os.setgroups(sorted(groups))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


class Listener:
    """One serving process: servers, signal handlers, the periodic pickup and queue run.

    `ready` is called once the servers and the signal handlers are in place; `background`
    says whether this process picks up the maildrop and runs the queue (one process does).
    """

    def __init__(
        self,
        state: ListenerState,
        sockets: list[socket.socket],
        submit_socket: socket.socket | None,
        reload: Callable[[], Config],
        *,
        ready: Callable[[], None],
        background: bool = True,
    ) -> None:
        self.state = state
        self.sockets = sockets
        self.submit_socket = submit_socket
        self.reload_config = reload
        self.ready = ready
        self.background = background
        self.stopping: asyncio.Event | None = None
        self.servers: list[asyncio.base_events.Server] = []

    def _factory(self, *, local: bool = False) -> ListenerSMTP:
        """A session; on the local socket without STARTTLS (and so without AUTH): TLS
        protects nothing there, and `sendmail -bs`, whose session it carries, has none."""
        state = self.state
        g = state.config.global_
        return ListenerSMTP(
            ListenerHandler(state),
            state,
            data_size_limit=g.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=g.default_hostname,
            ident=f"ESMTP {PROG} {__version__}",
            tls_context=None if local else state.tls,
            timeout=g.listen_timeout,
            auth_require_tls=True,
        )

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        for sock in self.sockets:
            self.servers.append(await loop.create_server(self._factory, sock=sock))
        if self.submit_socket is not None:
            # We remove the socket file ourselves, on the way out (3.13's asyncio would stat it
            # now, as listen_user, and remove it when the server closes).
            cleanup: dict[str, Any] = {}
            if sys.version_info >= (3, 13):
                cleanup["cleanup_socket"] = False
            local = functools.partial(self._factory, local=True)
            unix = await loop.create_unix_server(local, sock=self.submit_socket, **cleanup)
            self.servers.append(unix)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload()))
        self.ready()
        background = [loop.create_task(self._every(PRUNE_INTERVAL, self.state.connections.prune))]
        if self.background:
            background.append(loop.create_task(self._every(PICKUP_INTERVAL, self._pickup)))
            background.append(loop.create_task(self._every(QUEUE_INTERVAL, self._run_queue)))
        await self.stopping.wait()
        await self._drain(background)
        return 0

    async def _drain(self, background: list[asyncio.Task[None]]) -> None:
        """Stop accepting, let every message past its final dot finish, then close."""
        state = self.state
        state.draining = True
        say("stopping: finishing messages in flight")
        for server in self.servers:
            server.close()
        for task in background:
            task.cancel()
        while state.inflight:
            await asyncio.wait(list(state.inflight))
        for session in list(state.sessions):
            transport = session.transport
            if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
                with contextlib.suppress(Exception):
                    transport.write(dialect.SHUTTING_DOWN.encode() + b"\r\n")
                transport.close()
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, state.pool.shutdown, True)
        # QUIT to the relays only now: every message's outcome is known and answered.
        state.connections.close()
        if self.submit_socket is not None:
            with contextlib.suppress(OSError):
                (state.config.global_.spool_dir / SUBMIT_SOCKET).unlink()
        say("stopped")

    async def _reload(self) -> None:
        loop = asyncio.get_running_loop()

        def load() -> tuple[Config, ssl.SSLContext | None]:
            config = self.reload_config()
            check_signing(config)
            return config, tls_context(config)  # renewed certificates are taken too

        try:
            config, tls = await loop.run_in_executor(None, load)
        except MailerError as exc:
            for line in exc.lines():  # the log first: once stderr says it, the log has it
                log.write(self.state.config, "ERROR", f"listen: reload refused: {line}")
            say("SIGHUP: the new configuration is broken, keeping the old one:")
            for line in exc.lines():
                say(f"  {line}")
            return
        before = self.state.config.global_
        if config.global_.listen_address != before.listen_address:
            say("SIGHUP: listen_address changed; the new addresses need a restart")
        if config.global_.max_connections != before.max_connections:
            say("SIGHUP: max_connections changed; the delivery pool keeps its size until a restart")
        self.state.tls = tls
        self.state.use(config)
        log.write(config, "INFO", f"listen: reloaded {config.main_file}")
        say(f"SIGHUP: reloaded {config.main_file}")

    async def _every(self, interval: float, job: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self.state.pool, job)
            except Exception as exc:  # a background job must never stop the service
                say(f"{job.__name__.strip('_')}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(interval)

    def _pickup(self) -> None:
        from ssmtp_mailer import pickup

        pickup.pick_up(self.state.config, pool=self.state.connections)

    def _run_queue(self) -> None:
        from ssmtp_mailer import spool

        spool.run_queue(self.state.config, pick_up=False)


def _sockname(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def keyring_out_of_reach(config: Config) -> list[str]:
    """Routes whose password is to come from a keyring this user does not have: root's,
    once the listener is listen_user. Said at the start, not at the first message."""
    from ssmtp_mailer.config import secrets

    found = []
    for route in config.domains.values():
        keyring_only = route.password is None and not route.password_command and route.username
        if not route.enabled or route.auth_method == AuthMethod.NONE or not keyring_only:
            continue
        if route.auth_method == AuthMethod.XOAUTH2 or route.oauth2_token_command:
            continue
        try:
            missing = secrets.keyring_get(route.name) is None
        except MailerError:
            missing = True
        if not missing:
            continue
        line = f"[domain:{route.name}]: no password for {route.username} in the keyring"
        if os.geteuid() == 0:
            found.append(f"{line}; run: {secrets.set_command(route.name)}")
        else:
            from ssmtp_mailer.submit import uid_label

            found.append(
                f"{line} of {uid_label(os.geteuid())}, which root's is not: put it in a"
                " root:mail 0640 file (password = ...) or use password_command"
            )
    return found


def check_signing(config: Config) -> None:
    """Every signing route's keys load and can sign (ConfigError): a listener started or
    reloaded with a key it cannot use would answer 451 to every message of that route."""
    from ssmtp_mailer.relay import dkim

    for route in config.domains.values():
        if route.enabled:  # a disabled route signs nothing
            dkim.signer_for(route)


def run_listener(
    config: Config,
    addresses: Sequence[HostPort],
    reload: Callable[[], Config],
    *,
    configured: bool = False,
) -> int:
    """Bind, drop privileges, serve until SIGTERM/SIGINT; the exit code. `configured`: the
    addresses are listen_address's, not the command line's."""
    tls = tls_context(config)
    processes = config.global_.listen_processes
    socket_sets = bind(addresses, processes, configured=config if configured else None)
    submit_socket = bind_submit_socket(config)
    if submit_socket is not None and os.geteuid() == 0:
        _hand_over(config, config.global_.listen_user)
    open_sessions = SessionCount(shared=processes > 1)
    drop_privileges(config.global_.listen_user)
    check_signing(config)  # as listen_user: the keys it cannot read refuse every message
    for line in keyring_out_of_reach(config):
        log.write(config, "WARNING", f"listen: {line}")
        say(f"warning: {line}")
    names = ", ".join(_sockname(s) for s in socket_sets[0])
    service = Service(config, tls, submit_socket, reload, open_sessions)
    if processes == 1:

        def ready() -> None:
            say(f"listening on {names} (pid {os.getpid()})")

        return _serve(service, socket_sets[0], ready=ready)
    return _supervise(service, socket_sets, names)


class Service(NamedTuple):
    """What every serving process starts from."""

    config: Config
    tls: ssl.SSLContext | None
    submit_socket: socket.socket | None
    reload: Callable[[], Config]
    open_sessions: SessionCount


def _serve(
    service: Service,
    sockets: list[socket.socket],
    *,
    ready: Callable[[], None],
    background: bool = True,
) -> int:
    """One serving process, until SIGTERM/SIGINT."""
    config = service.config
    state = ListenerState(config, tls=service.tls, open_sessions=service.open_sessions)
    state.use(config)
    _LibraryLog.install(state)
    listener = Listener(
        state,
        sockets,
        service.submit_socket,
        service.reload,
        ready=ready,
        background=background,
    )
    return asyncio.run(listener.serve())


def _supervise(service: Service, socket_sets: list[list[socket.socket]], names: str) -> int:
    """listen_processes > 1: one serving process per socket set, forked before any thread
    or event loop exists. This process passes SIGTERM, SIGINT and SIGHUP on and waits; when
    one of them ends unexpectedly it stops the others and fails (systemd restarts the unit)."""
    children: dict[int, int] = {}
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    # Held back while forking: every child is known before one is passed on, and a child
    # takes them only once its event loop has its handlers.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    readiness, announce = os.pipe()
    supervisor = os.getpid()
    for index in range(len(socket_sets)):
        pid = os.fork()
        if pid == 0:
            _child(service, socket_sets, index, readiness, announce, supervisor)
        children[pid] = index
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    os.close(announce)
    for sockets in socket_sets:
        for sock in sockets:
            sock.close()
    if service.submit_socket is not None:
        service.submit_socket.close()
    started = 0
    while started < len(socket_sets):
        got = os.read(readiness, len(socket_sets) - started)
        if not got:
            break  # a process ended before it served; the wait below reports it
        started += len(got)
    os.close(readiness)
    if started == len(socket_sets):
        say(f"listening on {names} (pid {os.getpid()}, {started} processes)")
    status = 0
    while children:
        pid, wait_status = os.wait()
        index = children.pop(pid, -1)
        if index < 0:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping and code in (0, -signal.SIGTERM, -signal.SIGINT):
            continue
        say(f"process {index + 1} (pid {pid}) ended with {_ending(code)}; stopping the others")
        status = EX_SOFTWARE
        forward(signal.SIGTERM, None)
    if service.submit_socket is not None:
        with contextlib.suppress(OSError):
            (service.config.global_.spool_dir / SUBMIT_SOCKET).unlink()
    return status


def _child(
    service: Service,
    socket_sets: list[list[socket.socket]],
    index: int,
    readiness: int,
    announce: int,
    supervisor: int,
) -> NoReturn:
    """A forked serving process: its own sockets only; it says when it serves; never returns."""
    code = EX_SOFTWARE
    try:
        # The signals stay held back (the parent's mask) until the event loop has its
        # handlers; then one that came meanwhile is served by them.
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        _stop_with(supervisor)
        os.close(readiness)
        for other, sockets in enumerate(socket_sets):
            if other != index:
                for sock in sockets:
                    sock.close()

        def ready() -> None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
            os.write(announce, b".")
            os.close(announce)

        code = _serve(service, socket_sets[index], ready=ready, background=index == 0)
    except BaseException as exc:  # never back into the parent's code
        with contextlib.suppress(Exception):
            say(f"process {index + 1}: {type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _stop_with(supervisor: int) -> None:
    """SIGTERM (drain, then exit) for this serving process once its supervisor is gone,
    even by SIGKILL, so that no orphan goes on serving the port (Linux's parent-death
    signal; the privileges were dropped before the fork, which would clear it)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != supervisor:  # gone before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)  # held back until the loop serves it


def _ending(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _hand_over(config: Config, user: str) -> None:
    """The socket file belongs to the listener's user, so it can remove it on the way out."""
    import pwd

    with contextlib.suppress(KeyError, OSError):
        entry = pwd.getpwnam(user)
        # Not through a link: the spool is listen_user's, who could have put one in the
        # socket's place since the bind (root would then give them the link's target).
        path = config.global_.spool_dir / SUBMIT_SOCKET
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
