"""Hand a routed message to its relay (SPEC §6): fallbacks, quick retries, rate limit.

Used identically by `sendmail`, `send`, the queue runner and the listener. The caller
knows the outcome (queued, failed, the process's exit code), so the caller writes the
message's log line from the `DeliveryLog` the engine filled in.
"""

import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from ssmtp_mailer import errors, log
from ssmtp_mailer.config.model import AuthMethod, Config, DeliveryMode, DomainConfig, HostPort
from ssmtp_mailer.errors import (
    CantCreateError,
    ConfigError,
    MailerError,
    NoHostError,
    TempFailError,
)
from ssmtp_mailer.message import Dsn
from ssmtp_mailer.relay import ratelimit
from ssmtp_mailer.relay.pool import ConnectionPool, Login, Sent, with_pool
from ssmtp_mailer.relay.smtp import (
    Endpoint,
    RelayConnection,
    RelayFailure,
    endpoint_for,
    permanent,
    too_many_recipients,
)
from ssmtp_mailer.rewrite import RouteGroup

Transcript = Callable[[str], None]
# Addresses named before "and N more" where many got the same reply.
NAMED = 5


class DeliveryResult(NamedTuple):
    route: str
    server: str
    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]]
    reply: str = ""
    tls: str | None = None
    auth_user: str | None = None
    attempts: int = 1
    path: str = "relay"  # or "direct", or "direct+relay" (hybrid, SPEC §6 log)
    # Who refused a recipient, where not `server` (direct delivery: its domain's MX, or
    # the domain itself when its lookup refused it).
    refused_by: Mapping[str, str] = MappingProxyType({})

    @property
    def deferred(self) -> tuple[str, ...]:
        """Refused recipients whose reply was not permanent (4xx, or a reply that makes no
        sense for RCPT): worth queueing for them alone."""
        return tuple(r for r, (code, text) in self.refused.items() if not permanent(code, text))

    @property
    def rejected(self) -> tuple[str, ...]:
        """Refused recipients whose reply was permanent (5xx): failed for good."""
        return tuple(r for r, (code, text) in self.refused.items() if permanent(code, text))

    @property
    def over_limit(self) -> bool:
        """Whether the relay took some recipients and said "too many recipients" to others
        (RFC 5321 §4.5.3.1.10): the rest may go in another transaction at once.

        A relay's one transaction only: direct delivery's merges several MX hosts', and
        one that took some says nothing of another that deferred.
        """
        return (
            self.path == "relay"
            and bool(self.accepted)
            and any(too_many_recipients(code, text) for code, text in self.refused.values())
        )

    def refuser_of(self, address: str) -> str:
        """Who refused `address`: its server, or its domain for direct delivery."""
        return self.refused_by.get(address, self.server)

    def refusal(self, addresses: Sequence[str], kind: type[MailerError]) -> MailerError:
        """Who refused `addresses` and what each said, as one error: the server, then each
        reply after the addresses it was said to; with several servers (direct delivery:
        one per domain) each reply after its addresses and the server that said it."""
        said = self.reply_to_each(addresses)
        refusers = dict.fromkeys(self.refuser_of(a) for a in addresses)
        if len(refusers) > 1:
            by = {a: f"{self.refuser_of(a)}: {reply}" for a, reply in said.items()}
            return kind(f"[domain:{self.route}] direct delivery", _after_addresses(by))
        return kind(next(iter(refusers), self.server), _after_addresses(said))

    def reply_to_each(self, addresses: Sequence[str]) -> dict[str, str]:
        """Each of `addresses` with the relay's reply to it (a failure notice's
        Diagnostic-Code)."""
        return {a: f"{self.refused[a][0]} {self.refused[a][1]}" for a in addresses}


def _after_addresses(said: Mapping[str, str]) -> str:
    """What was said to each address, on one line: each text once, after the addresses it
    was said to (the first few of them: a relay's limit of 100 left 900 recipients with
    one and the same 452)."""
    to: dict[str, list[str]] = {}
    for address, text in said.items():
        to.setdefault(text, []).append(address)
    parts = []
    for text, addresses in to.items():
        named = ", ".join(addresses[:NAMED])
        if len(addresses) > NAMED:
            named += f" and {len(addresses) - NAMED} more"
        parts.append(f"{named}: {text}")
    return "; ".join(parts)


def servers_of(route: DomainConfig) -> list[HostPort]:
    """The primary server, then every fallback in order; ports default to the route's."""
    if not route.smtp_server:
        raise ConfigError(
            f"{route.location}: [domain:{route.name}] smtp_server",
            "required for a relay route, not set",
        )
    primary = HostPort(route.smtp_server, route.smtp_port)
    fallbacks = [HostPort(hp.host, hp.port or route.smtp_port) for hp in route.fallback_servers]
    return [primary, *fallbacks]


def make_endpoint(config: Config, route: DomainConfig, server: HostPort) -> Endpoint:
    """The connection settings for one server of a route, from the route and [global]."""
    g = config.global_
    return endpoint_for(
        route,
        server.host,
        server.port or route.smtp_port,
        helo=route.helo_name or g.default_hostname,
        connect_timeout=g.connection_timeout,
        read_timeout=g.read_timeout,
        write_timeout=g.write_timeout,
    )


class Credentials:
    """A route's login, resolved on first use only (keyring and commands are slow or prompt)."""

    def __init__(self, route: DomainConfig) -> None:
        self.route = route
        self._password: str | None = None
        self._token: str | None = None

    @property
    def needed(self) -> bool:
        route = self.route
        if route.auth_method == AuthMethod.NONE:
            return False
        if route.auth_method == AuthMethod.AUTO:
            return bool(route.username)
        if not route.username:
            raise ConfigError(
                f"{route.location}: [domain:{route.name}] username",
                f"auth_method = {route.auth_method.value} needs a username",
            )
        return True

    def login(self) -> Login | None:
        """The AUTH step for a new connection, and what makes two logins the same one."""
        if not self.needed:
            return None
        route = self.route
        # The keyring holds the password under the route's name when nothing else does.
        keyring = route.name if not (route.password or route.password_command) else None
        identity = (
            route.username,
            route.auth_method,
            # Only its (per-process, salted) hash: the identity may end up in a repr.
            hash(route.password) if route.password else None,
            route.password_command,
            route.oauth2_token_command,
            route.allow_plaintext_auth,
            keyring,
        )

        def step(conn: RelayConnection) -> None:
            mechanism = conn.choose_mechanism(route)
            assert route.username is not None
            conn.authenticate(route, mechanism, route.username, self.secret_for(mechanism))

        return Login(identity, step)

    def secret_for(self, mechanism: str) -> str:
        """The password, or for XOAUTH2 a fresh token from oauth2_token_command."""
        # Imported here: secrets brings subprocess, which a send without AUTH never needs.
        from ssmtp_mailer.config import secrets

        route = self.route
        if mechanism == "XOAUTH2":
            if self._token is None:
                self._token = secrets.resolve_oauth2_token(route)
            return self._token
        if self._password is None:
            password = secrets.resolve_password(route)
            if password is None:
                raise ConfigError(
                    f"[domain:{route.name}]",
                    f"no password for {route.username}",
                    hint=f"set password_command, or run `{secrets.set_command(route.name)}`",
                )
            self._password = password
        return self._password


def warn_unverified(config: Config, route: DomainConfig) -> None:
    """tls_verify = false is allowed, but never silently."""
    if route.unverified_tls:
        text = f"[domain:{route.name}] {route.unverified_tls}"
        errors.report(f"warning: {text}")
        log.write(config, "WARNING", text)


def _rate_limit(config: Config, route: DomainConfig, max_wait: float | None) -> None:
    g = config.global_
    if not g.enable_rate_limiting:
        return
    limits = [
        ("global", g.rate_limit_per_minute),
        (f"route-{route.name}", route.rate_limit_per_minute),
    ]
    state_dir = ratelimit.state_dir_for(g.spool_dir)
    try:
        if not state_dir.is_dir():
            from ssmtp_mailer.spool.store import ensure_area

            ensure_area(config, state_dir.name)
        ratelimit.acquire(state_dir, limits, max_wait=max_wait)
    except (OSError, CantCreateError) as exc:
        # The limit protects the relay account; it must never cost a message.
        log.write(config, "WARNING", f"rate limit state not usable ({exc}); sending unthrottled")


def deliver(
    config: Config,
    group: RouteGroup,
    data: bytes | bytearray,
    *,
    record: "DeliveryLog",
    smtputf8: bool = False,
    eightbit: bool = False,
    dsn: Dsn | None = None,
    transcript: Callable[[str], None] | None = None,
    retries: int = 0,
    rate_wait: float | None = None,
    pool: ConnectionPool | None = None,
) -> DeliveryResult:
    """One SMTP transaction for the group; raises a MailerError with the SPEC §9 code.

    With `pool`, the connection stays open for the caller's next message (SPEC §6
    reuse) and QUIT comes with `pool.close()`; without, it ends before the return.

    Each server is tried once, `retries` more times on the primary with `retry_backoff`
    doubling in between (the listener's workers); a sendmail caller passes none, so an
    outage costs it at most connection_timeout per server (SPEC §6). `rate_wait` bounds
    the wait for a rate-limit slot; None waits as long as the limit needs (the runner).
    """
    route = group.route
    flags = _Flags(smtputf8, eightbit, dsn)
    if route.delivery_mode != DeliveryMode.RELAY:
        with with_pool(pool, config.global_.connection_reuse_idle) as connections:
            return _deliver_direct(
                config, group, data, record, flags, transcript, rate_wait, connections
            )
    servers = servers_of(route)
    warn_unverified(config, route)
    _rate_limit(config, route, rate_wait)
    with with_pool(pool, config.global_.connection_reuse_idle) as connections:
        return _deliver(
            config, group, data, servers, record, flags, transcript, retries, connections
        )


def _deliver_direct(
    config: Config,
    group: RouteGroup,
    data: bytes | bytearray,
    record: "DeliveryLog",
    flags: "_Flags",
    transcript: Transcript | None,
    rate_wait: float | None,
    pool: ConnectionPool,
) -> DeliveryResult:
    """SPEC §6 direct delivery; a hybrid route's relay takes what the MX hosts deferred.

    MX connections come from `pool` too: the queue runner's entries for one MX share one.
    """
    from ssmtp_mailer.relay import direct

    route = group.route
    _rate_limit(config, route, rate_wait)

    def send(endpoint: Endpoint, part: RouteGroup, notes: Transcript | None) -> DeliveryResult:
        # No login: a hybrid route's credentials are for its relay, never for an MX.
        try:
            sent = pool.send(
                endpoint, None, part.envelope_from, part.recipients, data,
                smtputf8=flags.smtputf8, eightbit=flags.eightbit, dsn=flags.dsn,
                transcript=notes,
            )  # fmt: skip
        except RelayFailure as failure:
            record.tls = failure.tls
            raise
        return _result(route, endpoint, sent, 1)._replace(path="direct")

    relay = None
    if route.delivery_mode == DeliveryMode.HYBRID:
        servers = servers_of(route)

        def relay(recipients: tuple[str, ...]) -> DeliveryResult:
            warn_unverified(config, route)
            part = group._replace(recipients=recipients)
            return _deliver(config, part, data, servers, record, flags, transcript, 0, pool)

    return direct.deliver(
        config, group, data, record=record, send=send, relay=relay, transcript=transcript
    )


def _deliver(
    config: Config,
    group: RouteGroup,
    data: bytes | bytearray,
    servers: list[HostPort],
    record: "DeliveryLog",
    flags: "_Flags",
    transcript: Transcript | None,
    retries: int,
    pool: ConnectionPool,
) -> DeliveryResult:
    route = group.route
    g = config.global_
    login = Credentials(route).login()
    failures: list[tuple[str, RelayFailure]] = []
    attempts = 0
    for index, server in enumerate(servers):
        endpoint = make_endpoint(config, route, server)
        record.relay = endpoint.label
        tries = 1 + retries if index == 0 else 1
        for attempt in range(tries):
            if attempt:
                delay = g.retry_backoff * 2 ** (attempt - 1)
                if transcript is not None:
                    transcript(f"* retry {attempt} of {retries} at {endpoint.label} in {delay} s")
                time.sleep(delay)
            attempts += 1
            try:
                sent = pool.send(
                    endpoint,
                    login,
                    group.envelope_from,
                    group.recipients,
                    data,
                    smtputf8=flags.smtputf8,
                    eightbit=flags.eightbit,
                    dsn=flags.dsn,
                    transcript=transcript,
                )
            except RelayFailure as failure:
                record.tls = failure.tls
                failures.append((endpoint.label, failure))
                log.write(
                    config, "DEBUG", f"attempt {attempts} at {endpoint.label}: {failure.error}"
                )
                if failure.unanswered:
                    record.reply = failure.reply
                    raise failure.error from None
                if failure.temporary:
                    continue
                if failure.next_server:
                    break
                record.reply = failure.reply
                raise failure.error from None
            return _result(route, endpoint, sent, attempts)
    raise _exhausted(route, failures, attempts)


class _Flags(NamedTuple):
    """What the message asks of every transaction that carries it."""

    smtputf8: bool
    eightbit: bool
    dsn: Dsn | None


def _exhausted(
    route: DomainConfig, failures: list[tuple[str, RelayFailure]], attempts: int
) -> MailerError:
    """The error once every server failed: temporary if any was, else the first one's.

    When no server's name resolved, the error says so (EX_NOHOST under
    `on_temporary_failure = fail`); it is still temporary: an offline laptop or a DNS
    blip must not need a manual retry-failed.
    """
    if not any(f.temporary for _, f in failures):
        return failures[0][1].error
    if len(failures) == 1:
        return failures[0][1].error
    last: dict[str, RelayFailure] = {}
    for label, failure in failures:
        last[label] = failure
    why = "; ".join(f"{label}: {f.error.why}" for label, f in last.items())
    hint = next((f.error.hint for f in reversed(list(last.values())) if f.error.hint), None)
    kind = TempFailError
    if all(isinstance(f.error, NoHostError) for f in last.values()):
        kind = NoHostError
    return kind(
        f"[domain:{route.name}]",
        f"temporary failure after {attempts} attempt{'s' if attempts != 1 else ''}: {why}",
        hint=hint,
    )


def _result(route: DomainConfig, endpoint: Endpoint, sent: Sent, attempts: int) -> DeliveryResult:
    tx = sent.transaction
    return DeliveryResult(
        route=route.name,
        server=endpoint.label,
        accepted=tuple(tx.accepted),
        refused=dict(tx.refused),
        reply=tx.reply,
        tls=sent.tls,
        auth_user=sent.auth_user,
        attempts=attempts,
    )


class DeliveryLog:
    """The fields of one message's log line (SPEC §6), collected while delivery goes on.

    The engine fills in the relay, its reply and the TLS version; the caller, once it
    knows what became of the message, calls `sent` or `not_sent` exactly once.
    """

    def __init__(self, config: Config, group: RouteGroup, data: bytes | bytearray) -> None:
        self.config = config
        self.group = group
        self.size = len(data)
        self.message_id = log.message_id_of(data) if log.has_destination(config) else ""
        self.relay = ""
        self.reply = ""
        self.tls: str | None = None
        self.path = "relay"

    def _write(self, **fields: object) -> None:
        if not log.has_destination(self.config):
            return
        group = self.group
        values: dict[str, object] = {
            "message_id": self.message_id,
            "sender": group.envelope_from,
            "recipients": group.recipients,
            "route": group.route.name,
            "path": self.path,
            "relay": self.relay,
            "tls": self.tls,
            "auth_user": None,
            "size": self.size,
            "reply": self.reply,
        }
        values.update(fields)
        log.log_delivery(self.config, log.DeliveryRecord(**values))  # type: ignore[arg-type]

    def sent(self, result: DeliveryResult, exit_code: int) -> None:
        self._write(
            path=result.path,
            relay=result.server,
            tls=result.tls,
            auth_user=result.auth_user,
            reply=result.reply,
            outcome="partial" if result.refused else "sent",
            exit_code=exit_code,
            refused=tuple(f"{r} {c} {t}" for r, (c, t) in result.refused.items()),
        )

    def not_sent(
        self, error: MailerError, outcome: str, exit_code: int, queue_id: str | None = None
    ) -> None:
        """`outcome`: queued (with `queue_id`), deferred (still queued), failed or refused."""
        self._write(
            reply=self.reply or error.why, outcome=outcome, exit_code=exit_code, queue_id=queue_id
        )
