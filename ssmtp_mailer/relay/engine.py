"""Hand a routed message to its relay (SPEC §6)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from ssmtp_mailer.config import secrets
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import (
    NoPermError,
    NoUserError,
    TempFailError,
    UnavailableError,
)
from ssmtp_mailer.rewrite import RouteGroup


@dataclass(frozen=True)
class DeliveryResult:
    route: str
    server: str
    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    reply: str = ""
    tls: str | None = None
    auth_user: str | None = None


def deliver(
    config: Config,
    group: RouteGroup,
    data: bytes,
    *,
    smtputf8: bool = False,
    eightbit: bool = False,
    transcript: Callable[[str], None] | None = None,
) -> DeliveryResult:
    """One SMTP transaction for the group; raises a MailerError with the SPEC §9 code."""
    route = group.route
    host = route.smtp_server or "localhost"
    timeout = config.global_.connection_timeout
    context = ssl.create_default_context(cafile=str(route.ssl_ca_file) if route.ssl_ca_file else None)
    server = f"{host}:{route.smtp_port}"
    try:
        client: smtplib.SMTP
        if route.use_ssl:
            client = smtplib.SMTP_SSL(host, route.smtp_port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(host, route.smtp_port, timeout=timeout)
        with client:
            client.ehlo(route.helo_name)
            if route.use_starttls:
                client.starttls(context=context)
                client.ehlo(route.helo_name)
            if route.username and route.auth_method.value != "NONE":
                client.login(route.username, secrets.resolve_password(route) or "")
            options = (["BODY=8BITMIME"] if eightbit else []) + (["SMTPUTF8"] if smtputf8 else [])
            refused = client.sendmail(group.envelope_from, list(group.recipients), data, options)
    except smtplib.SMTPAuthenticationError as exc:
        raise NoPermError(server, f"authentication refused: {exc.smtp_code}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise NoUserError(server, f"every recipient refused: {exc.recipients}") from None
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise TempFailError(server, f"{exc.smtp_code} {exc.smtp_error!r}") from None
        raise UnavailableError(server, f"{exc.smtp_code} {exc.smtp_error!r}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise TempFailError(server, str(exc)) from None
    accepted = tuple(r for r in group.recipients if r not in refused)
    return DeliveryResult(
        route=route.name,
        server=server,
        accepted=accepted,
        refused={k: (v[0], v[1].decode("utf-8", "replace")) for k, v in refused.items()},
    )
