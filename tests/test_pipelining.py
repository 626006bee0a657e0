"""PIPELINING (RFC 2920): one write for MAIL, every RCPT and DATA, replies matched in order.

Every case runs against a server that offers PIPELINING and one that does not; what the
sender is told must be the same either way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from smtpserver import SMTPTestServer
from test_relay import PASSWORD, RCPT, USER, make_config, send, tls_server

from ssmtp_mailer.errors import MailerError, NoUserError, TempFailError, UnavailableError
from ssmtp_mailer.relay.engine import DeliveryResult

Factory = Callable[..., SMTPTestServer]
THREE = ("one@example.org", "two@example.org", "three@example.org")

pipelining = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])


def outcome(
    factory: Factory, tmp_path: Path, pipelining: bool, recipients: tuple[str, ...], **server: Any
) -> tuple[SMTPTestServer, DeliveryResult | MailerError]:
    srv = factory(pipelining=pipelining, **server)
    config = make_config(tmp_path, srv)
    try:
        return srv, send(config, recipients)
    except MailerError as exc:
        return srv, exc


def where(path: Path) -> Path:
    path.mkdir()
    return path


def pipelined(server: SMTPTestServer) -> bool:
    """Whether the client sent RCPT before it had MAIL's reply."""
    return any(waiting for verb, waiting in server.commands if verb == "MAIL")


@pipelining
def test_one_write_only_when_offered(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    server, result = outcome(smtp_server_factory, tmp_path, pipelining, THREE)
    assert isinstance(result, DeliveryResult)
    assert result.accepted == THREE
    assert server.messages[0].rcpt_tos == list(THREE)
    assert pipelined(server) is pipelining
    if pipelining:
        # MAIL, the RCPTs and DATA all arrived before the first reply was read.
        commands = [c for c in server.commands if c[0] != "QUIT"]
        assert commands == [("MAIL", True)] + [("RCPT", True)] * 3 + [("DATA", False)]
    else:
        assert all(not waiting for _, waiting in server.commands)


@pipelining
def test_550_on_the_second_of_three(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    server, result = outcome(
        smtp_server_factory, tmp_path, pipelining, THREE, fault="550-rcpt:two@example.org"
    )
    assert isinstance(result, DeliveryResult)
    assert result.accepted == ("one@example.org", "three@example.org")
    assert list(result.refused) == ["two@example.org"]
    code, text = result.refused["two@example.org"]
    assert code == 550 and "User unknown" in text
    assert server.messages[0].rcpt_tos == ["one@example.org", "three@example.org"]
    assert pipelined(server) is pipelining


@pipelining
def test_452_after_two_defers_the_rest(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    four = (*THREE, "four@example.org")
    server, result = outcome(
        smtp_server_factory, tmp_path, pipelining, four, fault="452-rcpt-after:2"
    )
    assert isinstance(result, DeliveryResult)
    assert result.accepted == four[:2]
    assert result.deferred == four[2:]
    assert {code for code, _ in result.refused.values()} == {452}
    assert server.messages[0].rcpt_tos == list(four[:2])


@pipelining
def test_552_to_rcpt_is_taken_as_452(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    """RFC 5321 §4.5.3.1.10: older servers said 552 for too many recipients; clients
    take it as 452. Failing those recipients for good bounced mail a later transaction
    would have delivered."""
    srv = smtp_server_factory(pipelining=pipelining)
    srv.rcpt_replies = {"three@example.org": "552 5.5.3 Too many recipients"}
    result = send(make_config(tmp_path, srv), THREE)
    assert isinstance(result, DeliveryResult)
    assert result.deferred == ("three@example.org",) and result.rejected == ()
    assert result.over_limit


@pipelining
def test_552_for_a_full_mailbox_stays_permanent(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    srv = smtp_server_factory(pipelining=pipelining)
    srv.rcpt_replies = {"three@example.org": "552 5.2.2 Mailbox full"}
    result = send(make_config(tmp_path, srv), THREE)
    assert isinstance(result, DeliveryResult)
    assert result.rejected == ("three@example.org",) and result.deferred == ()
    assert not result.over_limit


@pipelining
def test_every_recipient_refused(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    server, result = outcome(
        smtp_server_factory, tmp_path, pipelining, ("two@example.org",),
        fault="550-rcpt:two@example.org",
    )  # fmt: skip
    assert isinstance(result, NoUserError) and result.exit_code == 67
    assert result.why.startswith("every recipient refused: <two@example.org>: 550 5.1.1")
    assert server.messages == []
    # Without pipelining DATA is never sent; pipelined, the server refused it.
    assert server.count("DATA") == (1 if pipelining else 0)


@pipelining
def test_mail_refused(smtp_server_factory: Factory, tmp_path: Path, pipelining: bool) -> None:
    server, result = outcome(smtp_server_factory, tmp_path, pipelining, THREE, fault="550-mail")
    assert isinstance(result, UnavailableError) and result.exit_code == 69
    assert result.why == (
        "MAIL: 550 5.7.1 <sender@example.com>: Sender address rejected: Access denied"
    )
    assert server.messages == []
    assert server.count("RCPT") == (3 if pipelining else 0)


@pipelining
def test_mail_refused_and_the_server_hangs_up(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    """A 421 to MAIL is what the sender hears, not the hang-up that follows it."""
    server, result = outcome(smtp_server_factory, tmp_path, pipelining, THREE, fault="421-mail")
    assert isinstance(result, TempFailError)
    assert result.why.endswith("MAIL: 421 4.3.2 localhost Service shutting down")
    assert server.messages == []


@pipelining
@pytest.mark.parametrize(
    ("fault", "error", "why"),
    [
        ("452-data", TempFailError, "DATA: 452 4.3.1 Insufficient system storage"),
        ("554-data", UnavailableError, "DATA: 554 5.7.1 Error: DATA refused by policy"),
    ],
)
def test_data_refused(
    smtp_server_factory: Factory,
    tmp_path: Path,
    pipelining: bool,
    fault: str,
    error: type[MailerError],
    why: str,
) -> None:
    server, result = outcome(smtp_server_factory, tmp_path, pipelining, THREE, fault=fault)
    assert type(result) is error
    assert result.why.endswith(why)
    assert server.messages == []


@pipelining
def test_connection_dropped_with_replies_pending(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    server, result = outcome(smtp_server_factory, tmp_path, pipelining, THREE, fault="drop-rcpt")
    assert isinstance(result, TempFailError)
    assert "DATA: the relay closed the connection" in result.why
    assert server.messages == []


def test_same_report_with_and_without_pipelining(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    """The words a sender sees do not depend on whether the relay pipelines."""
    faults = (
        "550-mail", "421-mail", "452-data", "554-data", "drop-rcpt", "550-rcpt:two@example.org",
    )  # fmt: skip
    for fault in faults:
        seen: list[tuple[object, ...]] = []
        for flag in (True, False):
            server, result = outcome(
                smtp_server_factory, where(tmp_path / f"{fault}-{flag}"), flag, THREE, fault=fault
            )
            if isinstance(result, MailerError):
                text = str(result).replace(str(server.port), "PORT")
                seen.append((type(result), result.exit_code, text))
            else:
                seen.append((DeliveryResult, result.accepted, result.refused))
        assert seen[0] == seen[1], fault


def test_pipelined_over_starttls_and_auth(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = tls_server(smtp_server_factory, pipelining=True)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, username=USER,
        password=PASSWORD, auth_method="AUTO",
    )  # fmt: skip
    result = send(config, (RCPT, *THREE))
    assert result.accepted == (RCPT, *THREE)
    [got] = server.messages
    assert got.tls and got.auth_user == USER
    assert pipelined(server)


def test_many_recipients_go_in_batches(smtp_server_factory: Factory, tmp_path: Path) -> None:
    """1,200 recipients: every reply matched to its RCPT across several writes."""
    server = smtp_server_factory(pipelining=True, fault="550-rcpt:r700@example.org")
    config = make_config(tmp_path, server)
    recipients = tuple(f"r{i}@example.org" for i in range(1200))
    result = send(config, recipients)
    assert len(result.accepted) == 1199
    assert list(result.refused) == ["r700@example.org"]
    assert server.messages[0].rcpt_tos == [r for r in recipients if r != "r700@example.org"]
