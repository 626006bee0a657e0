"""Connection reuse (SPEC §6): one authenticated connection per server for many transactions."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from relayconf import RunMain, write_relay_config
from smtpserver import SMTPTestServer
from test_relay import MESSAGE, PASSWORD, RCPT, SENDER, USER, make_config, send, tls_server

from ssmtp_mailer import spool
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import UnavailableError
from ssmtp_mailer.relay.pool import ConnectionPool
from ssmtp_mailer.rewrite import RouteGroup

Factory = Callable[..., SMTPTestServer]

pipelining = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])


def peers(server: SMTPTestServer) -> set[tuple[str, int]]:
    """The client ends of the connections that carried accepted messages."""
    return {m.peer for m in server.messages}


def enqueue(config: Config, count: int, name: str = "example.com") -> list[str]:
    group = RouteGroup(route=config.domains[name], envelope_from=SENDER, recipients=(RCPT,))
    return [
        spool.enqueue(
            config,
            group,
            MESSAGE.replace(b"<m1@", f"<q{n}@".encode()),
            smtputf8=False,
            eightbit=False,
            reason="test",
        )
        for n in range(count)
    ]


# -- queue run ---------------------------------------------------------------------


@pipelining
def test_queue_run_sends_every_entry_over_one_connection(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool
) -> None:
    server = smtp_server_factory(pipelining=pipelining)
    config = make_config(tmp_path, server)
    ids = enqueue(config, 5)
    result = spool.run_queue(config, force=True)
    assert sorted(result.delivered) == sorted(ids)
    assert spool.list_entries(config) == []
    # Message files go too, once the run is over: nothing is left behind.
    assert list((config.global_.spool_dir / "queue").iterdir()) == []
    assert server.connections == 1
    assert len(server.messages) == 5 and len(peers(server)) == 1
    # RSET between transactions; pipelined, each RSET went out with its MAIL.
    assert server.count("RSET") == 4
    rsets = [waiting for verb, waiting in server.commands if verb == "RSET"]
    assert all(rsets) if pipelining else not any(rsets)
    assert server.count("QUIT") == 1


def test_queue_run_authenticates_once_over_starttls(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = tls_server(smtp_server_factory, pipelining=True)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    enqueue(config, 4)
    result = spool.run_queue(config, force=True)
    assert len(result.delivered) == 4
    assert server.connections == 1
    assert [(a.mechanism, a.success) for a in server.auth_attempts] == [("PLAIN", True)]
    assert all(m.tls and m.auth_user == USER for m in server.messages)


def test_queue_run_killed_before_quit_never_sends_twice(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    """The entry leaves the queue on the 250 to its dot, not after QUIT's reply."""
    server = smtp_server_factory(fault="stall-quit")
    config = make_config(tmp_path, server, global_={"read_timeout": 30})
    [entry_id] = enqueue(config, 1)
    argv = [sys.executable, "-m", "ssmtp_mailer", "--config", str(config.main_file)]
    with (tmp_path / "runner.err").open("w+b") as errors:
        runner = subprocess.Popen([*argv, "queue", "run", "--all"], stderr=errors)
        try:
            try:
                server.wait_for(1, timeout=20)
                server.wait_for_command("QUIT", timeout=20)
            except TimeoutError:
                runner.kill()
                runner.wait()
                errors.seek(0)
                raise AssertionError(errors.read().decode()) from None
            # The runner now waits for QUIT's reply, which never comes: kill it there.
            time.sleep(0.2)
            assert runner.poll() is None
        finally:
            runner.kill()
            runner.wait()
    assert [e.id for e in spool.list_entries(config)] == []
    server.fault = None
    again = spool.run_queue(config, force=True)
    assert again.delivered == ()
    assert [m.data.count(b"<m1@") + m.data.count(b"<q0@") for m in server.messages] == [1]
    assert entry_id not in {e.id for e in spool.list_entries(config, failed=True)}


def test_sendmail_is_not_held_up_by_a_relay_that_never_answers_quit(
    smtp_server_factory: Factory, tmp_path: Path, run_main: RunMain
) -> None:
    server = smtp_server_factory(fault="stall-quit")
    conf = write_relay_config(tmp_path / "ssmtp-mailer.conf", server.port, "read_timeout = 60")
    started = time.monotonic()
    code, _, err = run_main(["-C", str(conf), "-i", "r@x.example"], b"Subject: s\n\nbody\n")
    assert code == 0, err
    assert len(server.messages) == 1 and server.count("QUIT") == 1
    # Delivered before QUIT: the caller waits a moment for the goodbye, not read_timeout.
    assert time.monotonic() - started < 20


# -- one message, several route groups ---------------------------------------------


def test_route_groups_of_one_message_share_a_connection(
    smtp_server_factory: Factory, tmp_path: Path, run_main: RunMain
) -> None:
    server = smtp_server_factory(pipelining=True)
    conf = tmp_path / "ssmtp-mailer.conf"
    conf.write_text(
        f"""[global]
default_hostname = host.example
spool_dir = {tmp_path / "spool"}
max_retries = 0
enable_rate_limiting = false

[domain:a.example]
smtp_server = 127.0.0.1
smtp_port = {server.port}
use_starttls = false
auth_method = NONE

[domain:b.example]
smtp_server = 127.0.0.1
smtp_port = {server.port}
use_starttls = false
auth_method = NONE
relay_account = relay@b.example

[mapping:forward]
from_pattern = alias@a.example
to_pattern = someone@elsewhere.example
domain = b.example
"""
    )
    message = b"From: user@a.example\nSubject: two groups\n\nHello.\n"
    code, _, err = run_main(
        ["-C", str(conf), "-i", "friend@dest.example", "alias@a.example"], message
    )
    assert code == 0, err
    got = server.wait_for(2)
    assert sorted(r for m in got for r in m.rcpt_tos) == [
        "friend@dest.example",
        "someone@elsewhere.example",
    ]
    assert server.connections == 1 and len(peers(server)) == 1
    assert server.count("RSET") == 1


def test_sendmail_bs_session_sends_its_messages_over_one_connection(
    smtp_server_factory: Factory, tmp_path: Path, run_main: RunMain
) -> None:
    """Symfony Mailer's `sendmail -bs`: one relay connection for the whole session."""
    server = smtp_server_factory(pipelining=True)
    conf = write_relay_config(tmp_path / "ssmtp-mailer.conf", server.port)
    dialogue = b"EHLO app.example\r\n"
    for n in (1, 2, 3):
        dialogue += (
            f"MAIL FROM:<app@x.example>\r\nRCPT TO:<r{n}@x.example>\r\nDATA\r\n"
            f"Subject: message {n}\r\n\r\nbody\r\n.\r\n"
        ).encode()
    code, out, err = run_main(["-C", str(conf), "-bs"], dialogue + b"QUIT\r\n")
    assert code == 0, err
    assert out.count("\r\n250 ") >= 3
    got = server.wait_for(3)
    assert [m.rcpt_tos for m in got] == [["r1@x.example"], ["r2@x.example"], ["r3@x.example"]]
    assert server.connections == 1 and server.count("RSET") == 2


# -- when a connection is not reused -----------------------------------------------


def test_server_closing_an_idle_connection(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(pipelining=True, idle_timeout=0.3)
    config = make_config(tmp_path, server)
    lines: list[str] = []
    with ConnectionPool(5) as pool:
        send(config, pool=pool)
        time.sleep(0.8)  # the server hangs up after 0.3 s of silence
        result = send(config, pool=pool, transcript=lines.append)
    assert result.accepted == (RCPT,)
    assert len(server.messages) == 2
    assert server.connections == 2
    assert pool.opened == 2 and pool.reused == 0
    assert any(line.startswith("* connecting to") for line in lines)


@pipelining
@pytest.mark.parametrize("fault", ["drop-rset", "421-rset", "550-rset"])
def test_connection_lost_at_rset_is_retried_on_a_new_one(
    smtp_server_factory: Factory, tmp_path: Path, pipelining: bool, fault: str
) -> None:
    """The server closed it just as it was reused, or refused RSET: nothing was accepted,
    so try again on a new connection (a 550 to RSET failed the message for good)."""
    server = smtp_server_factory(pipelining=pipelining)
    config = make_config(tmp_path, server)
    with ConnectionPool(5) as pool:
        send(config, pool=pool)
        server.fault = fault
        result = send(config, pool=pool)
    assert result.accepted == (RCPT,)
    assert len(server.messages) == 2 and len(peers(server)) == 2
    assert server.connections == 2


def test_idle_longer_than_connection_reuse_idle(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    config = make_config(tmp_path, server)
    with ConnectionPool(0.2) as pool:
        send(config, pool=pool)
        time.sleep(0.35)
        send(config, pool=pool)
        assert server.count("QUIT") == 1  # the expired one, before the new connection
    assert server.connections == 2 and server.count("RSET") == 0


def test_prune_ends_expired_connections_without_a_new_message(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    """A long-running caller (the listener) lets go of connections it no longer uses."""
    server = smtp_server_factory()
    config = make_config(tmp_path, server)
    with ConnectionPool(0.2) as pool:
        send(config, pool=pool)
        pool.prune()
        assert server.count("QUIT") == 0  # still fresh: kept
        time.sleep(0.3)
        pool.prune()
        assert server.count("QUIT") == 1


def test_connection_reuse_idle_zero_means_a_connection_per_message(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    config = make_config(tmp_path, server, global_={"connection_reuse_idle": 0})
    assert config.global_.connection_reuse_idle == 0
    enqueue(config, 3)
    assert len(spool.run_queue(config, force=True).delivered) == 3
    assert server.connections == 3 and server.count("RSET") == 0


def test_default_connection_reuse_idle(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    assert make_config(tmp_path, smtp_server).global_.connection_reuse_idle == 5


def test_a_failed_transaction_ends_its_connection(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    server = smtp_server_factory(pipelining=True, fault="550-mail")
    config = make_config(tmp_path, server)
    with ConnectionPool(5) as pool:
        with pytest.raises(UnavailableError):
            send(config, pool=pool)
        server.fault = None
        send(config, pool=pool)
    assert server.connections == 2 and len(server.messages) == 1
    assert server.count("RSET") == 0


def test_partial_refusal_keeps_the_connection(smtp_server_factory: Factory, tmp_path: Path) -> None:
    server = smtp_server_factory(pipelining=True, fault="550-rcpt:bad@example.org")
    config = make_config(tmp_path, server)
    with ConnectionPool(5) as pool:
        first = send(config, (RCPT, "bad@example.org"), pool=pool)
        second = send(config, pool=pool)
    assert first.refused and second.accepted == (RCPT,)
    assert server.connections == 1


def test_different_logins_get_different_connections(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    other = "other@example.com"
    server = smtp_server_factory(starttls=True, auth={USER: PASSWORD, other: "pw2"})
    one = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    (tmp_path / "two").mkdir()
    two = make_config(
        tmp_path / "two", server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=other, password="pw2",
    )  # fmt: skip
    with ConnectionPool(5) as pool:
        send(one, pool=pool)
        send(two, pool=pool)
        send(one, pool=pool)
        send(two, pool=pool)
    assert server.connections == 2
    assert [m.auth_user for m in server.messages] == [USER, other, USER, other]
    assert len(server.auth_attempts) == 2


def test_tls_session_is_resumed_on_a_new_connection(
    smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    server = tls_server(smtp_server_factory)
    config = make_config(
        tmp_path, server, use_starttls=True, ssl_ca_file=ca_file, auth_method="AUTO",
        username=USER, password=PASSWORD,
    )  # fmt: skip
    first: list[str] = []
    second: list[str] = []
    with ConnectionPool(0.1) as pool:
        send(config, pool=pool, transcript=first.append)
        time.sleep(0.2)
        send(config, pool=pool, transcript=second.append)
    assert server.connections == 2 and len(server.messages) == 2
    assert not any("session resumed" in line for line in first)
    assert any(line.startswith("* TLS: ") and "session resumed" in line for line in second)


def test_pinned_certificate_is_checked_on_a_resumed_session(
    smtp_server_factory: Factory, tmp_path: Path
) -> None:
    server = smtp_server_factory(starttls=True, cert="self-signed")
    config = make_config(
        tmp_path, server, use_starttls=True, tls_fingerprint=server.cert_fingerprint_sha256
    )
    second: list[str] = []
    with ConnectionPool(0.1) as pool:
        send(config, pool=pool)
        time.sleep(0.2)
        send(config, pool=pool, transcript=second.append)
    assert len(server.messages) == 2 and server.connections == 2
    assert any("session resumed" in line for line in second)
    assert "* certificate matches tls_fingerprint" in second


def test_one_pool_shared_by_threads(smtp_server_factory: Factory, tmp_path: Path) -> None:
    """The listener's workers share one pool; each borrows a connection of its own."""
    server = smtp_server_factory(pipelining=True)
    config = make_config(tmp_path, server)
    errors: list[BaseException] = []
    with ConnectionPool(5) as pool:

        def worker(n: int) -> None:
            try:
                for i in range(5):
                    send(config, (f"t{n}-{i}@example.org",), pool=pool)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(server.messages) == 20
    assert server.connections <= 4
    assert pool.opened == server.connections and pool.reused == 20 - pool.opened
