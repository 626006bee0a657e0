"""Connections kept open for the next transaction to the same server (SPEC §6, reuse).

A `ConnectionPool` owns every relay connection of one caller: a sendmail run (the route
groups of one message), a `queue run` (every due entry) or the listener (every message
of every worker). A connection is opened, secured and authenticated once, lent to one
transaction at a time, and given back; the next transaction to the same server with
the same login starts with RSET (pipelined with MAIL when the server offers
PIPELINING). It is not reused after a failed transaction, once it has been idle for
`connection_reuse_idle` seconds, or when the server has closed it; a new connection
then offers the old one's TLS session for resumption.

QUIT is sent when a connection leaves the pool (`close()`, idle expiry), never between
the 250 to the final dot and the caller's bookkeeping: whoever delivered a message can
mark it delivered before anything else can go wrong.

Thread-safe: the listener's workers share one pool, each borrowing its own connection;
several idle connections to one server may wait side by side. A long-running caller
calls `prune()` now and then to let go of connections nobody used for
`connection_reuse_idle`, and `close()` when it stops.
"""

import _thread
import contextlib
import ssl
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ssmtp_mailer.errors import TempFailError
from ssmtp_mailer.relay.smtp import (
    Endpoint,
    RelayConnection,
    RelayFailure,
    Transaction,
    Transcript,
)

if TYPE_CHECKING:
    from ssmtp_mailer.message import Dsn

# Authenticates a freshly opened connection (AUTH, or nothing for a route without login).
LoginStep = Callable[[RelayConnection], None]

# A server that could not be reached (refused, timed out before its greeting) is not tried
# again by the same caller for this long: a `queue run` over 500 entries for a dead relay
# waited connection_timeout for each, and the listener for every message.
UNREACHABLE_SECONDS = 30.0


class Login(NamedTuple):
    """How to log in, and what identifies that login (connections are shared per identity)."""

    identity: Hashable
    step: LoginStep


class Sent(NamedTuple):
    """A transaction's outcome and what the log line names about its connection."""

    transaction: Transaction
    tls: str | None
    auth_user: str | None
    reused: bool


class _Idle(NamedTuple):
    since: float
    conn: RelayConnection


class ConnectionPool:
    """Open, authenticated SMTP connections per server and login, reused between transactions."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        # _thread's lock is threading.Lock without importing threading, which a
        # sendmail run (one caller, one thread) would pay a millisecond for.
        self._lock = _thread.allocate_lock()
        self._idle: dict[Hashable, list[_Idle]] = {}
        self._sessions: dict[Hashable, ssl.SSLSession] = {}
        # Servers (host, port, address) that could not be reached: when, and why.
        self._unreachable: dict[tuple[str, int, str | None], tuple[float, RelayFailure]] = {}
        # Connections opened and transactions on reused ones, for tests and benchmarks.
        self.opened = 0
        self.reused = 0

    @staticmethod
    def key(endpoint: Endpoint, login: Login | None) -> Hashable:
        """Connections are interchangeable when server, TLS settings, timeouts and login match.

        The route name is left out: two routes to one relay with one login share.
        """
        return (endpoint._replace(route=""), None if login is None else login.identity)

    def send(
        self,
        endpoint: Endpoint,
        login: Login | None,
        sender: str,
        recipients: Sequence[str],
        data: bytes | bytearray,
        *,
        smtputf8: bool,
        eightbit: bool,
        dsn: "Dsn | None" = None,
        transcript: Transcript | None = None,
    ) -> Sent:
        """One transaction on a reused connection when there is a live one, else on a new one."""
        key = self.key(endpoint, login)

        def transact(conn: RelayConnection, reused: bool) -> Sent:
            try:
                tx = conn.transaction(
                    sender,
                    recipients,
                    data,
                    smtputf8=smtputf8,
                    eightbit=eightbit,
                    dsn=dsn,
                    reset=reused,
                )
            except RelayFailure as failure:
                failure.tls = conn.tls_version
                if failure.stale:
                    conn.note("the relay closed the idle connection; opening a new one")
                    self._keep_session(key, conn)
                    conn.close()
                else:
                    self._give_back(key, conn, failure)
                raise
            except BaseException:
                conn.close()
                raise
            self._give_back(key, conn, None)
            return Sent(tx, conn.tls_version, conn.auth_user, reused=reused)

        conn = self._borrow(key, transcript)
        if conn is not None:
            try:
                return transact(conn, reused=True)
            except RelayFailure as failure:
                if not failure.stale:
                    raise
                # Nothing of this transaction was accepted: try again on a new connection.
        return transact(self._open(key, endpoint, login, transcript), reused=False)

    def close(self) -> None:
        """QUIT every idle connection. The pool stays usable; new connections may follow."""
        with self._lock:
            idle = [entry.conn for entries in self._idle.values() for entry in entries]
            self._idle.clear()
        for conn in idle:
            conn.close_quietly()

    def __enter__(self) -> "ConnectionPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- inside ------------------------------------------------------------------

    def prune(self) -> None:
        """QUIT the idle connections unused for `idle_seconds` (a long-running caller's timer)."""
        now = time.monotonic()
        expired: list[tuple[Hashable, RelayConnection]] = []
        with self._lock:
            for key, entries in list(self._idle.items()):
                keep = [e for e in entries if now - e.since < self.idle_seconds]
                expired += [(key, e.conn) for e in entries if now - e.since >= self.idle_seconds]
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
        for key, conn in expired:
            self._keep_session(key, conn)
            conn.close_quietly()

    def _borrow(self, key: Hashable, transcript: Transcript | None) -> RelayConnection | None:
        """A live idle connection for `key`, now lent to the caller; expired ones are closed."""
        self.prune()
        with self._lock:
            entries = self._idle.get(key)
            found = entries.pop().conn if entries else None
            if entries == []:
                del self._idle[key]
        if found is None:
            return None
        if found.peer_spoke_or_closed():
            # A 421 for idleness, or the server's EOF: this connection is over.
            self._keep_session(key, found)
            found.close()
            return None
        found.set_transcript(transcript)
        found.note(
            f"reusing the connection to {found.endpoint.label}"
            f" (transaction {found.transactions + 1})"
        )
        with self._lock:
            self.reused += 1
        return found

    def _open(
        self,
        key: Hashable,
        endpoint: Endpoint,
        login: Login | None,
        transcript: Transcript | None,
    ) -> RelayConnection:
        server = (endpoint.host, endpoint.port, endpoint.address)
        with self._lock:
            session = self._sessions.get(key)
            seen = self._unreachable.get(server)
        if seen is not None and time.monotonic() - seen[0] < UNREACHABLE_SECONDS:
            ago = time.monotonic() - seen[0]
            if transcript is not None:
                transcript(f"* {endpoint.label}: unreachable {ago:.0f} s ago; not tried again")
            raise RelayFailure(
                TempFailError(endpoint.label, f"{seen[1].error.why} ({ago:.0f} s ago)"),
                temporary=True,
                stage=seen[1].stage,
            )
        with self._lock:
            self.opened += 1
        conn = RelayConnection(endpoint, transcript, tls_session=session)
        try:
            conn.open()
            if login is not None:
                login.step(conn)
        except RelayFailure as failure:
            if (
                failure.temporary
                and failure.code is None
                and failure.stage in ("connect", "banner")
            ):
                with self._lock:
                    self._unreachable[server] = (time.monotonic(), failure)
            # The log names the TLS version in use when AUTH failed (SPEC §6 log).
            failure.tls = conn.tls_version
            # After a reply the conversation is sane and QUIT is polite; after a socket
            # error or timeout it would only wait read_timeout again.
            if failure.code is not None:
                conn.close_quietly()
            else:
                conn.close()
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _give_back(
        self, key: Hashable, conn: RelayConnection, failure: RelayFailure | None
    ) -> None:
        """Keep the connection for the next transaction, or end it after a failed one.

        A retry, or the next message, gets a new connection: perhaps another server process
        behind the same name, and certainly no state left from a broken conversation.
        """
        if failure is not None:
            self._keep_session(key, conn)
            # After a reply QUIT is polite; after a socket error or a timeout it would only
            # wait read_timeout again.
            if failure.code is not None and failure.code != 421:
                conn.close_quietly()
            else:
                conn.close()
            return
        if conn.sock is None:
            return
        conn.set_transcript(None)
        with self._lock:
            self._idle.setdefault(key, []).append(_Idle(time.monotonic(), conn))

    def _keep_session(self, key: Hashable, conn: RelayConnection) -> None:
        """Keep the TLS session of a connection that ends while the pool goes on.

        The next connection to the server offers it for resumption. Read only here, not
        for every connection: it costs a serialisation, and a pool that is closed (a
        sendmail run, the end of a queue run) opens nothing more.
        """
        sock = conn.sock
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                session = sock.session
                if session is not None:
                    with self._lock:
                        self._sessions[key] = session


def with_pool(
    pool: ConnectionPool | None, idle_seconds: float
) -> contextlib.AbstractContextManager[ConnectionPool]:
    """`pool` as it is, or a pool of one's own that is closed on exit."""
    if pool is not None:
        return contextlib.nullcontext(pool)
    return ConnectionPool(idle_seconds)
