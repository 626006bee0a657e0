"""`ssmtp-mailer test`: check each route step by step, with a hint for each known failure."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from typing import Any

from ssmtp_mailer.config.model import Config, DeliveryMode, DomainConfig
from ssmtp_mailer.errors import (
    EX_NOHOST,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    ConfigError,
    MailerError,
    TempFailError,
)
from ssmtp_mailer.relay import engine, hints
from ssmtp_mailer.relay.smtp import (
    Endpoint,
    RelayConnection,
    RelayFailure,
    fingerprint_of,
    format_fingerprint,
)
from ssmtp_mailer.rewrite import RouteGroup

Transcript = Callable[[str], None]


@dataclass
class Step:
    """One check and its outcome."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class RouteReport:
    """Every step for one route; `exit_code` is 0 when all passed."""

    route: str
    server: str
    steps: list[Step] = field(default_factory=list)
    exit_code: int = 0
    fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    def fail(self, name: str, error: MailerError) -> None:
        self.add(Step(name, False, error.why, error.hint))
        if self.exit_code == 0:
            self.exit_code = error.exit_code

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "server": self.server,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "tls_fingerprint": self.fingerprint,
            "steps": [dataclasses.asdict(s) for s in self.steps],
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _names(rdns: Any) -> str:
    return ", ".join(f"{k}={v}" for rdn in rdns or () for k, v in rdn)


def _decode_unverified(der: bytes) -> dict[str, Any]:
    """What getpeercert() gives, for a certificate it says nothing about (not verified)."""
    try:
        from cryptography import x509
    except ImportError:  # the zipapp without native parts: the fingerprint still shows
        return {}

    try:
        cert = x509.load_der_x509_certificate(der)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = [("DNS", n) for n in names.get_values_for_type(x509.DNSName)]
        alt += [("IP Address", str(a)) for a in names.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        alt = []
    except ValueError:
        return {}
    # not_valid_after_utc is cryptography 42's name; Debian 12 ships 38.
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after

    def rdns(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
        return tuple(((a.rfc4514_attribute_name, str(a.value)),) for a in name)

    return {
        "subject": rdns(cert.subject),
        "issuer": rdns(cert.issuer),
        "notAfter": after.strftime("%b %d %H:%M:%S %Y GMT"),
        "subjectAltName": tuple(alt),
    }


def describe_certificate(der: bytes, info: dict[str, Any]) -> dict[str, Any]:
    """Subject, issuer, expiry, names and the SHA-256 fingerprint of a DER certificate."""
    info = info or _decode_unverified(der)
    details: dict[str, Any] = {
        "subject": _names(info.get("subject")),
        "issuer": _names(info.get("issuer")),
        "not_after": info.get("notAfter", ""),
        "names": [v for k, v in info.get("subjectAltName", ()) if k in ("DNS", "IP Address")],
        "sha256": fingerprint_of(der),
    }
    if details["not_after"]:
        with contextlib.suppress(ValueError):
            expiry = ssl.cert_time_to_seconds(details["not_after"])
            details["days_left"] = int((expiry - time.time()) // 86400)
    return details


def _certificate_step(conn: RelayConnection, route: DomainConfig, *, verified: bool) -> Step:
    cert = describe_certificate(conn.peer_der or b"", conn.peer_cert)
    if route.tls_fingerprint:
        how = "matches tls_fingerprint"
    elif verified and route.tls_verify:
        how = f"verified against {route.ssl_ca_file or 'the system CA store'}"
    else:
        how = "NOT verified"
    expiry = expiry_text(cert["not_after"]) if cert["not_after"] else "unknown"
    if "days_left" in cert:
        expiry += f" ({cert['days_left']} days left)"
    detail = (
        f"{how}; subject {cert['subject'] or '?'}; issuer {cert['issuer'] or '?'};"
        f" expires {expiry}; SHA-256 {format_fingerprint(cert['sha256'])}"
    )
    hint = None
    if cert.get("days_left", 99) < 14:
        hint = "the certificate expires soon; the relay's operator should renew it"
    return Step("certificate", True, detail, hint, data=cert)


def _peek_certificate(endpoint: Endpoint, transcript: Transcript | None) -> dict[str, Any] | None:
    """Fetch the server's certificate without checking it, to show what failed verification."""
    assert endpoint.context is not None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = endpoint.context.minimum_version
    peek = endpoint._replace(context=context, fingerprint=None)
    conn = RelayConnection(peek, transcript)
    try:
        conn.open()
        return describe_certificate(conn.peer_der or b"", {}) if conn.peer_der else None
    except (RelayFailure, OSError):
        return None
    finally:
        conn.close_quietly()


def sample_message(config: Config, route: DomainConfig, sender: str, to: str) -> bytes:
    """A small plain-text test message with CRLF line ends."""
    server = f"{route.smtp_server}:{route.smtp_port}"
    if route.delivery_mode == DeliveryMode.DIRECT:
        server = f"direct to the MX on port {route.direct_port}"
    lines = [
        f"From: ssmtp-mailer test <{sender}>",
        f"To: <{to}>",
        f"Subject: ssmtp-mailer test through [domain:{route.name}]",
        f"Date: {formatdate(localtime=True)}",
        f"Message-ID: {make_msgid('test', domain=config.global_.default_hostname)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This test message left {config.global_.default_hostname} through the route"
        f" [domain:{route.name}] ({server}).",
        "If you can read it, the route works.",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


def sample_sender(config: Config, route: DomainConfig) -> str:
    """The envelope sender of the test message: the address the relay lets us send as."""
    for candidate in (route.relay_account, route.username):
        if candidate and "@" in candidate and not candidate.startswith("ocid1."):
            return candidate
    return config.global_.default_from


def check_route(
    config: Config,
    route: DomainConfig,
    *,
    to: str | None = None,
    transcript: Transcript | None = None,
) -> RouteReport:
    """Run every check for one route and return the report (never raises a MailerError)."""
    if route.delivery_mode != DeliveryMode.RELAY:
        report = check_direct(config, route, to=to, transcript=transcript)
        if route.delivery_mode == DeliveryMode.HYBRID:
            # Both ways, whatever the first gave: the relay is what hybrid falls back to.
            relay = check_route(
                config, route._replace(delivery_mode=DeliveryMode.RELAY), transcript=transcript
            )
            report.steps += [dataclasses.replace(s, name=f"relay {s.name}") for s in relay.steps]
            report.fingerprint = relay.fingerprint
            if report.ok:
                report.exit_code = relay.exit_code
            elif relay.ok:
                report.add(
                    Step(
                        "hybrid",
                        False,
                        "the MX hosts failed, the relay passed",
                        "mail still goes out, through the relay, once the MX hosts failed;"
                        " delivery_mode = relay skips that wait",
                    )
                )
        if to is not None and report.ok:
            _send_test(config, route, to, report, transcript)
        return report
    try:
        server = engine.servers_of(route)[0]
        endpoint = engine.make_endpoint(config, route, server)
    except MailerError as exc:
        report = RouteReport(route.name, f"{route.smtp_server}:{route.smtp_port}")
        report.fail("configuration", exc)
        return report
    report = RouteReport(route.name, endpoint.label)
    if not _dns_and_tcp(report, endpoint):
        return report
    conn = RelayConnection(endpoint, transcript)
    try:
        _session(config, route, endpoint, conn, report, transcript)
    finally:
        conn.close_quietly()
    if to is not None and report.ok:
        _send_test(config, route, to, report, transcript)
    return report


def check_direct(
    config: Config,
    route: DomainConfig,
    *,
    to: str | None = None,
    transcript: Transcript | None = None,
) -> RouteReport:
    """A direct route: the MX lookup, then port reachability and STARTTLS of each MX host.

    The domain is that of `to`, else the route's own name (a sender domain receives mail
    too: its MX is a fair sample of the path out).
    """
    from ssmtp_mailer import spf
    from ssmtp_mailer.relay import direct

    domain = direct.domain_of(to) if to else route.name
    report = RouteReport(route.name, f"MX of {domain}:{route.direct_port}")
    if "." not in domain or "*" in domain:
        report.fail(
            "configuration",
            ConfigError(
                f"[domain:{route.name}]",
                "a direct route is checked against a recipient domain's MX",
                hint="name one: ssmtp-mailer test --domain NAME --to someone@example.com",
            ),
        )
        return report
    try:
        lookups = direct.Lookups(config)
        plan = direct.plan_domain(lookups, route, domain)
    except spf.TempError as exc:
        report.fail("DNS", TempFailError(domain, f"MX lookup failed: {exc}"))
        return report
    except MailerError as exc:
        report.fail("configuration", exc)
        return report
    resolvers = ", ".join(lookups.resolver.names)
    if plan.refusal is not None:
        report.add(Step("DNS", False, f"{plan.refusal} (asked {resolvers})"))
        report.exit_code = EX_UNAVAILABLE
        return report
    report.add(Step("DNS", True, f"{domain}: {direct.hosts_text(plan)} (asked {resolvers})"))
    if not plan.hosts:
        report.fail("MX", TempFailError(domain, "no MX host to try"))
        return report
    required = direct.tls_requirement(route, plan)
    reachable = 0
    for host in plan.hosts:
        for address in (host.addresses or ())[:1]:
            endpoint = direct.endpoint_for(config, route, host, address, required is not None)
            if _mx_session(report, endpoint, required, transcript):
                reachable += 1
    if not reachable and report.exit_code == 0:
        report.exit_code = EX_TEMPFAIL
    return report


def _mx_session(
    report: RouteReport, endpoint: Endpoint, required: str | None, transcript: Transcript | None
) -> bool:
    """TCP, banner, EHLO and STARTTLS at one MX address; True when it would take mail."""
    started = time.monotonic()
    name = endpoint.label
    try:
        with socket.create_connection(
            (endpoint.address or endpoint.host, endpoint.port), endpoint.connect_timeout
        ):
            took = time.monotonic() - started
    except OSError as exc:
        timed_out = isinstance(exc, TimeoutError)
        why = "timed out" if timed_out else (exc.strerror or str(exc))
        hint = hints.DIRECT_PORT25_BLOCKED if timed_out and endpoint.port == 25 else None
        report.add(Step(f"{name} TCP", False, why, hint))
        return False
    report.add(Step(f"{name} TCP", True, f"connected ({_ms(took)})"))
    conn = RelayConnection(endpoint, transcript)
    try:
        conn.open()
    except RelayFailure as failure:
        conn.close_quietly()
        report.add(Step(f"{name} SMTP", False, failure.error.why, failure.error.hint))
        if failure.stage in ("TLS", "STARTTLS") and required:
            report.steps[-1].detail += f" (TLS is required: {required})"
        return False
    encrypted = conn.encrypted
    conn.close_quietly()
    report.add(Step(f"{name} banner", True, conn.banner))
    if encrypted:
        cert = describe_certificate(conn.peer_der or b"", conn.peer_cert)
        how = f"certificate verified ({required})" if required else "certificate not checked"
        report.add(
            Step(
                f"{name} STARTTLS",
                True,
                f"{conn.tls_version}, {conn.cipher}; {how}; subject {cert['subject'] or '?'};"
                f" issuer {cert['issuer'] or '?'}",
                data=cert,
            )
        )
    else:
        report.add(
            Step(
                f"{name} STARTTLS",
                True,
                "not offered: mail to this host goes unencrypted",
                "nothing to fix on your side; direct_tls = verify would refuse such hosts",
            )
        )
    return True


def _dns_and_tcp(report: RouteReport, endpoint: Endpoint) -> bool:
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        temporary = exc.errno == socket.EAI_AGAIN
        report.add(
            Step(
                "DNS",
                False,
                f"{endpoint.host}: {exc.strerror}",
                "check smtp_server" + ("" if not temporary else " and the resolver"),
            )
        )
        report.exit_code = EX_TEMPFAIL if temporary else EX_NOHOST
        return False
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    took = time.monotonic() - started
    report.add(Step("DNS", True, f"{endpoint.host} -> {', '.join(addresses)} ({_ms(took)})"))
    started = time.monotonic()
    try:
        with socket.create_connection((endpoint.host, endpoint.port), endpoint.connect_timeout):
            took = time.monotonic() - started
    except OSError as exc:
        timed_out = isinstance(exc, TimeoutError)
        why = "timed out" if timed_out else (exc.strerror or str(exc))
        hint = hints.for_timeout(endpoint.port) if timed_out else None
        if isinstance(exc, ConnectionRefusedError):
            hint = "nothing listens there: check smtp_port (587 STARTTLS, 465 implicit TLS)"
        report.add(Step("TCP connect", False, f"{endpoint.label}: {why}", hint))
        report.exit_code = EX_TEMPFAIL
        return False
    report.add(Step("TCP connect", True, f"{endpoint.label} ({_ms(took)})"))
    return True


def _session(
    config: Config,
    route: DomainConfig,
    endpoint: Endpoint,
    conn: RelayConnection,
    report: RouteReport,
    transcript: Transcript | None,
) -> None:
    try:
        conn.connect_banner()
    except RelayFailure as failure:
        _tls_failure(report, "connect" if failure.stage != "TLS" else "TLS", failure, endpoint)
        return
    report.add(Step("banner", True, conn.banner))
    try:
        conn.negotiate()
    except RelayFailure as failure:
        name = "TLS" if failure.stage in ("TLS", "STARTTLS") else "EHLO"
        _tls_failure(report, name, failure, endpoint)
        return
    features = ", ".join(
        f"{k.upper()} {v.strip()}".strip() for k, v in conn.esmtp_features.items()
    ).strip()
    report.add(Step("EHLO", True, features or "(no extensions: plain SMTP)"))
    if conn.encrypted:
        kind = "implicit TLS" if endpoint.implicit_tls else "STARTTLS"
        report.add(Step(kind, True, f"{conn.tls_version}, {conn.cipher}"))
        step = _certificate_step(conn, route, verified=True)
        report.fingerprint = step.data["sha256"]
        report.add(step)
        if not route.tls_verify and not route.tls_fingerprint:
            report.add(
                Step(
                    "TLS verification",
                    True,
                    "off (tls_verify = false)",
                    f"pin the certificate instead: tls_fingerprint = {report.fingerprint}",
                )
            )
    else:
        report.add(Step("TLS", True, "none: the connection is not encrypted"))
    _auth_step(route, conn, report)


def _tls_failure(report: RouteReport, name: str, failure: RelayFailure, endpoint: Endpoint) -> None:
    report.fail(name, failure.error)
    if failure.stage != "TLS" or endpoint.context is None:
        return
    cert = _peek_certificate(endpoint, None)
    if cert is None:
        return
    report.fingerprint = cert["sha256"]
    report.add(
        Step(
            "certificate",
            False,
            f"NOT trusted; subject {cert['subject'] or '?'}; issuer {cert['issuer'] or '?'};"
            f" expires {expiry_text(cert['not_after']) or '?'};"
            f" names {', '.join(cert['names']) or '?'};"
            f" SHA-256 {format_fingerprint(cert['sha256'])}",
            "if this is your relay's certificate (check it out of band), pin it:"
            f" tls_fingerprint = {cert['sha256']}",
            data=cert,
        )
    )


def _auth_step(route: DomainConfig, conn: RelayConnection, report: RouteReport) -> None:
    credentials = engine.Credentials(route)
    try:
        if not credentials.needed:
            why = "auth_method = NONE" if route.auth_method.value == "NONE" else "no username"
            report.add(Step("AUTH", True, f"not used ({why})"))
            return
        mechanism = conn.choose_mechanism(route)
        assert route.username is not None
        secret = credentials.secret_for(mechanism)
        started = time.monotonic()
        conn.authenticate(route, mechanism, route.username, secret)
    except RelayFailure as failure:
        report.fail("AUTH", failure.error)
        return
    except MailerError as exc:
        report.fail("AUTH", exc)
        return
    took = time.monotonic() - started
    report.add(Step("AUTH", True, f"{mechanism} as {route.username}: accepted ({_ms(took)})"))


def _send_test(
    config: Config, route: DomainConfig, to: str, report: RouteReport, transcript: Transcript | None
) -> None:
    sender = sample_sender(config, route)
    data = sample_message(config, route, sender, to)
    group = RouteGroup(route=route, envelope_from=sender, recipients=(to,))
    smtputf8 = not (to.isascii() and sender.isascii())
    record = engine.DeliveryLog(config, group, data)
    try:
        result = engine.deliver(
            config, group, data, record=record, smtputf8=smtputf8, transcript=transcript
        )
    except MailerError as exc:
        report.fail("test message", exc)
        record.not_sent(exc, "failed", report.exit_code)
        return
    record.sent(result, EX_UNAVAILABLE if result.refused else 0)
    if result.refused:
        code, text = result.refused[to]
        report.add(Step("test message", False, f"<{to}> refused: {code} {text}"))
        report.exit_code = EX_UNAVAILABLE
        return
    report.add(Step("test message", True, f"from <{sender}> to <{to}>: {result.reply}"))


def check_routes(
    config: Config,
    routes: list[DomainConfig],
    *,
    to: str | None = None,
    transcript: Transcript | None = None,
) -> list[RouteReport]:
    """Check every route given, in order."""
    return [check_route(config, r, to=to, transcript=transcript) for r in routes]


def expiry_text(not_after: str) -> str:
    """A certificate's notAfter as an ISO date, or the text unchanged."""
    try:
        stamp = ssl.cert_time_to_seconds(not_after)
    except ValueError:
        return not_after
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).date().isoformat()
