"""What a sendmail caller sees when the relay is down, slow or picky (SPEC §6, §7, §9).

No caller is held up by an outage, temporary problems are queued, DSN flags reach a relay
that offers DSN, and the log line tells what really happened.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from relayconf import write_relay_config
from smtpserver import MisbehavingServer, SMTPTestServer
from test_acceptance import closed_port

from ssmtp_mailer import spool
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.config.model import Config

Run = Callable[..., tuple[int, str, str]]
Factory = Callable[..., SMTPTestServer]
MESSAGE = b"From: app@host.example\nTo: a@dest.example\nSubject: policy\n\nbody\n"


def config_for(tmp_path: Path, port: int, extra: str = "", host: str = "127.0.0.1") -> Path:
    path = write_relay_config(
        tmp_path / "m.conf", port, f"log_file = {tmp_path / 'mail.log'}\n{extra}"
    )
    if host != "127.0.0.1":
        path.write_text(
            path.read_text().replace("smtp_server = 127.0.0.1", f"smtp_server = {host}")
        )
    return path


def log_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "mail.log").read_text().splitlines()


# -- no caller waits through an outage ------------------------------------------------


def test_sendmail_tries_each_server_once_and_queues_with_retries_configured(
    tmp_path: Path, run_main: Run, smtp_server_factory: Factory
) -> None:
    """With the default max_retries = 3 and retry_backoff = 2, a caller used to wait 14 s."""
    primary = smtp_server_factory(fault="451-rcpt")
    fallback = smtp_server_factory(fault="451-rcpt")
    conf = config_for(tmp_path, primary.port)
    text = conf.read_text().replace("max_retries = 0", "max_retries = 3")
    text = text.replace("retry_backoff = 0", "retry_backoff = 2")
    conf.write_text(text + f"fallback_servers = 127.0.0.1:{fallback.port}\n")
    code, _, err = run_main(["-C", str(conf), "-v", "-t"], MESSAGE)
    assert code == 0 and "queued as " in err
    assert (primary.connections, fallback.connections) == (1, 1)
    assert "* retry" not in err
    assert len(spool.list_entries(_load(conf))) == 1


def test_unresolvable_relay_host_is_queued_not_failed(tmp_path: Path, run_main: Run) -> None:
    conf = config_for(tmp_path, 25, host="relay.invalid")
    code, _, err = run_main(["-C", str(conf), "-t"], MESSAGE)
    assert code == 0, err
    assert "queued as " in err and "relay host not found: relay.invalid" in err
    config = _load(conf)
    assert len(spool.list_entries(config)) == 1
    assert spool.list_entries(config, failed=True) == []


def test_unresolvable_relay_host_with_fail_policy_is_exit_68(tmp_path: Path, run_main: Run) -> None:
    conf = config_for(tmp_path, 25, "on_temporary_failure = fail", host="relay.invalid")
    code, _, err = run_main(["-C", str(conf), "-t"], MESSAGE)
    assert code == 68
    assert "relay host not found" in err
    assert spool.list_entries(_load(conf), failed=True) == []


def test_hanging_password_command_is_queued(
    tmp_path: Path, run_main: Run, smtp_server_factory: Factory, ca_file: Path
) -> None:
    from ssmtp_mailer.config import secrets

    server = smtp_server_factory(starttls=True, auth={"user": "pw"})
    conf = config_for(tmp_path, server.port)
    conf.write_text(
        conf.read_text()
        .replace("use_starttls = false", f"use_starttls = true\nssl_ca_file = {ca_file}")
        .replace("auth_method = NONE", "auth_method = AUTO\nusername = user\n"
                 f"password_command = sleep {secrets.COMMAND_TIMEOUT + 20}")
    )  # fmt: skip
    code, _, err = run_main(["-C", str(conf), "-t"], MESSAGE)
    assert code == 0, err
    assert "queued as " in err and "did not finish" in err
    assert server.messages == []
    assert spool.list_entries(_load(conf), failed=True) == []


def test_over_the_rate_limit_a_caller_waits_at_most_rate_limit_wait(
    tmp_path: Path, run_main: Run, smtp_server: SMTPTestServer
) -> None:
    conf = config_for(tmp_path, smtp_server.port)
    conf.write_text(
        conf.read_text().replace(
            "enable_rate_limiting = false",
            "enable_rate_limiting = true\nrate_limit_per_minute = 1\nrate_limit_wait = 1",
        )
    )
    assert run_main(["-C", str(conf), "-t"], MESSAGE)[0] == 0
    code, _, err = run_main(["-C", str(conf), "-t"], MESSAGE)
    assert code == 0
    assert "queued as " in err and "no free slot within 1 s" in err
    assert len(smtp_server.messages) == 1
    # With on_temporary_failure = fail nothing is kept, and no hint says it is.
    conf.write_text(
        conf.read_text().replace(
            "rate_limit_wait = 1", "rate_limit_wait = 1\non_temporary_failure = fail"
        )
    )
    code, _, err = run_main(["-C", str(conf), "-t"], MESSAGE)
    assert code == 75 and "no free slot within 1 s" in err
    assert "kept" not in err and "rate_limit_per_minute" in err


# -- the log line says what happened ----------------------------------------------------


def test_queued_message_is_logged_as_queued_with_id_and_real_exit(
    tmp_path: Path, run_main: Run
) -> None:
    conf = config_for(tmp_path, closed_port())
    code, _, _ = run_main(["-C", str(conf), "-t"], MESSAGE)
    assert code == 0
    [entry] = spool.list_entries(_load(conf))
    [line] = log_lines(tmp_path)
    assert "outcome=queued" in line and f"queue_id={entry.id}" in line and "exit=0" in line
    assert "deferred" not in line and "exit=75" not in line


def test_auth_failure_after_starttls_logs_the_tls_version(
    tmp_path: Path, run_main: Run, smtp_server_factory: Factory, ca_file: Path
) -> None:
    server = smtp_server_factory(starttls=True, auth={"user": "right"})
    conf = config_for(tmp_path, server.port)
    conf.write_text(
        conf.read_text()
        .replace("use_starttls = false", f"use_starttls = true\nssl_ca_file = {ca_file}")
        .replace("auth_method = NONE", "auth_method = PLAIN\nusername = user\npassword = wrong")
    )
    conf.chmod(0o600)
    code, _, _ = run_main(["-C", str(conf), "-t"], MESSAGE)
    assert code == 77
    [line] = log_lines(tmp_path)
    assert "outcome=failed" in line and "exit=77" in line
    assert "tls=TLSv1." in line and "tls=none" not in line


# -- DSN: -N, -R and -V ----------------------------------------------------------------


class DsnRelay:
    """A scripted relay that offers DSN (aiosmtpd does not) and records every command."""

    def __init__(self, offer_dsn: bool) -> None:
        self.offer_dsn = offer_dsn
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self.server = MisbehavingServer(self.serve)

    def serve(self, conn: socket.socket) -> None:
        conn.sendall(b"220 relay.example ESMTP\r\n")
        reader = conn.makefile("rb")
        try:
            while line := reader.readline():
                command = line.decode().rstrip("\r\n")
                self.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    dsn = b"250-DSN\r\n" if self.offer_dsn else b""
                    conn.sendall(b"250-relay.example\r\n" + dsn + b"250 8BITMIME\r\n")
                elif verb == "DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    data = b""
                    while (chunk := reader.readline()) not in (b".\r\n", b""):
                        data += chunk
                    self.messages.append(data)
                    conn.sendall(b"250 2.0.0 queued as 1234\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 OK\r\n")
        finally:
            reader.close()


@pytest.fixture
def dsn_relay() -> Iterator[Callable[[bool], DsnRelay]]:
    relays: list[DsnRelay] = []

    def start(offer_dsn: bool) -> DsnRelay:
        relay = DsnRelay(offer_dsn)
        relay.server.start()
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        relay.server.stop()


@pytest.mark.parametrize(
    "args",
    [
        ["-N", "success,failure", "-R", "hdrs", "-V", "envid123"],
        ["-Nsuccess,failure", "-Rhdrs", "-Venvid123"],
    ],
)
def test_dsn_flags_reach_a_relay_that_offers_dsn(
    tmp_path: Path, run_main: Run, dsn_relay: Callable[[bool], DsnRelay], args: list[str]
) -> None:
    relay = dsn_relay(True)
    conf = config_for(tmp_path, relay.server.port)
    code, out, err = run_main(["-C", str(conf), *args, "r@example.org"], MESSAGE)
    assert (code, out) == (0, ""), err
    assert len(relay.messages) == 1
    mail = next(c for c in relay.commands if c.upper().startswith("MAIL"))
    rcpt = next(c for c in relay.commands if c.upper().startswith("RCPT"))
    assert "RET=HDRS" in mail and "ENVID=envid123" in mail
    assert rcpt.endswith("NOTIFY=SUCCESS,FAILURE")


def test_dsn_flags_are_dropped_with_a_note_when_not_offered(
    tmp_path: Path, run_main: Run, dsn_relay: Callable[[bool], DsnRelay]
) -> None:
    relay = dsn_relay(False)
    conf = config_for(tmp_path, relay.server.port)
    code, _, err = run_main(
        ["-C", str(conf), "-v", "-N", "never", "-V", "x+y=z", "r@example.org"], MESSAGE
    )
    assert code == 0
    assert len(relay.messages) == 1
    assert "does not offer DSN" in err
    assert not any("NOTIFY=" in c or "ENVID=" in c for c in relay.commands)


def test_dsn_survives_the_queue(
    tmp_path: Path, run_main: Run, dsn_relay: Callable[[bool], DsnRelay]
) -> None:
    conf = config_for(tmp_path, closed_port())
    code, _, _ = run_main(["-C", str(conf), "-N", "delay", "-V", "a+b", "r@example.org"], MESSAGE)
    assert code == 0
    relay = dsn_relay(True)
    config_for(tmp_path, relay.server.port)  # the relay is back
    assert run_main(["-C", str(conf), "-q"])[0] == 0
    mail = next(c for c in relay.commands if c.upper().startswith("MAIL"))
    rcpt = next(c for c in relay.commands if c.upper().startswith("RCPT"))
    assert "ENVID=a+2Bb" in mail and rcpt.endswith("NOTIFY=DELAY")


@pytest.mark.parametrize(
    ("args", "named"),
    [(["-N", "sometimes"], "-N"), (["-R", "body"], "-R"), (["-V", "a" * 101], "-V")],
)
def test_bad_dsn_values_are_usage_errors(
    tmp_path: Path, run_main: Run, args: list[str], named: str
) -> None:
    conf = config_for(tmp_path, closed_port())
    code, _, err = run_main(["-C", str(conf), *args, "r@example.org"], MESSAGE)
    assert code == 64
    assert len(err.splitlines()) == 1 and named in err
    assert spool.list_entries(_load(conf)) == []


def test_version_flags_do_not_take_a_message(run_main: Run) -> None:
    code, out, _ = run_main(["-bV"])
    assert code == 0 and "ssmtp-mailer" in out


# -- the queue -----------------------------------------------------------------------------


def test_expired_entry_keeps_its_id_in_failed(tmp_path: Path, run_main: Run) -> None:
    conf = config_for(tmp_path, closed_port(), "queue_lifetime = 1\nbounce = false")
    assert run_main(["-C", str(conf), "-t"], MESSAGE)[0] == 0
    [queued] = spool.list_entries(_load(conf))
    threading.Event().wait(1.2)
    assert run_main(["-C", str(conf), "-q"])[0] == 0
    [failed] = spool.list_entries(_load(conf), failed=True)
    assert failed.id == queued.id
    assert "expired" in failed.reason


# -- a banner that never comes ----------------------------------------------------------


def test_banner_timeout_is_reported_as_the_banner(tmp_path: Path, run_main: Run) -> None:
    """A server that takes the connection and never greets holds the caller for
    connection_timeout (SPEC §6), not read_timeout: each fallback server added a minute."""
    server = MisbehavingServer(MisbehavingServer.silent).start()
    try:
        conf = config_for(tmp_path, server.port, "on_temporary_failure = fail")
        conf.write_text(
            conf.read_text().replace("connection_timeout = 5", "connection_timeout = 1")
        )
        code, _, err = run_main(["-C", str(conf), "-t"], MESSAGE)
    finally:
        server.stop()
    assert code == 75
    assert "no greeting within 1 s (connection_timeout)" in err
    assert "connect: timed out" not in err


def _load(conf: Path) -> Config:
    return load_config(str(conf))


def test_a_bug_is_one_line_for_the_user_and_a_traceback_in_the_debug_log(
    tmp_path: Path, run_main: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssmtp_mailer.message

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(ssmtp_mailer.message, "prepare", broken)
    conf = config_for(tmp_path, closed_port(), "log_level = DEBUG")
    code, _, err = run_main(["-C", str(conf), "-t"], MESSAGE)
    assert code == 70
    assert err.startswith("ssmtp-mailer: internal error: KeyError") and "Traceback" not in err
    logged = (tmp_path / "mail.log").read_text()
    assert "Traceback (most recent call last)" in logged and "KeyError: 'a bug'" in logged


# -- each recipient its own fate ------------------------------------------------------


def test_a_greylisted_recipient_beside_an_unknown_one_is_queued_not_failed(
    tmp_path: Path, run_main: Run, smtp_server: SMTPTestServer
) -> None:
    """No recipient accepted, one refused for good (550), one for now (451): the 451 one
    used to go to failed/ with the other, and was never tried again."""
    smtp_server.rcpt_replies = {
        "gone@dest.example": "550 5.1.1 <gone@dest.example>: User unknown",
        "grey@dest.example": "451 4.7.1 <grey@dest.example>: greylisted, come back later",
    }
    conf = config_for(tmp_path, smtp_server.port)
    code, _, err = run_main(
        ["-C", str(conf), "-i", "gone@dest.example", "grey@dest.example"], MESSAGE
    )
    assert code == 0, err
    assert "gone@dest.example: refused by" in err and "550 5.1.1" in err
    config = _load(conf)
    [queued] = spool.list_entries(config)
    assert queued.recipients == ("grey@dest.example",)
    [failed] = spool.list_entries(config, failed=True)
    assert failed.recipients == ("gone@dest.example",)
    smtp_server.rcpt_replies = {}
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    # The sender heard exit 0: told of gone@ in a notice; grey@ delivered once.
    assert [m.rcpt_tos for m in smtp_server.wait_for(2)] == [
        ["app@host.example"],
        ["grey@dest.example"],
    ]
    assert spool.list_entries(_load(conf)) == []


def test_the_queue_splits_a_mixed_refusal_too(
    tmp_path: Path, run_main: Run, smtp_server: SMTPTestServer
) -> None:
    """A queued entry whose recipients now get 550 and 451: the first is failed (and its
    sender told), the second stays queued, and is delivered once the relay takes it."""
    smtp_server.fault = "451-rcpt"
    conf = config_for(tmp_path, smtp_server.port)
    code, _, err = run_main(
        ["-C", str(conf), "-i", "gone@dest.example", "grey@dest.example"], MESSAGE
    )
    assert code == 0 and "queued as " in err
    smtp_server.fault = None
    smtp_server.rcpt_replies = {
        "gone@dest.example": "550 5.1.1 <gone@dest.example>: User unknown",
        "grey@dest.example": "451 4.7.1 greylisted",
    }
    run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    config = _load(conf)
    assert [e.recipients for e in spool.list_entries(config, failed=True)] == [
        ("gone@dest.example",)
    ]
    left = [e.recipients for e in spool.list_entries(config) if e.sender]
    assert left == [("grey@dest.example",)]
    smtp_server.rcpt_replies = {}
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    got = [m.rcpt_tos for m in smtp_server.wait_for(2)]  # and gone@'s failure notice
    assert sorted(got) == [["app@host.example"], ["grey@dest.example"]], err


@contextlib.contextmanager
def killed_queue_run(conf: Path) -> Iterator[None]:
    """`queue run --all` in a process of its own, killed (SIGKILL) when the block ends."""
    command = [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), "queue", "run", "--all"]
    quiet = subprocess.DEVNULL
    runner = subprocess.Popen(command, stdin=quiet, stdout=quiet, stderr=quiet)
    try:
        yield
    finally:
        runner.kill()
        runner.wait()


def _wait_until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_relay_recipient_limit_costs_no_wait_in_the_queue(
    tmp_path: Path, run_main: Run, smtp_server_factory: Factory
) -> None:
    """A relay that takes 40 recipients a message (452 to the 41st): the rest is queued
    due at once, and the queue runner sendmail starts sends it in further transactions.
    It used to wait for the backoff, and each retry took another 40 only."""
    server = smtp_server_factory(fault="452-rcpt-after:40")
    conf = config_for(tmp_path, server.port)
    recipients = [f"r{i}@dest.example" for i in range(100)]
    code, _, err = run_main(["-C", str(conf), "-i", *recipients], MESSAGE)
    assert code == 0, err
    assert "queued as " in err and "452 4.5.3" in err
    assert [len(m.rcpt_tos) for m in server.wait_for(3)] == [40, 40, 20]
    assert sorted(r for m in server.messages for r in m.rcpt_tos) == sorted(recipients)
    _wait_until(lambda: spool.list_entries(_load(conf)) == [], "the queue to empty")
    assert spool.list_entries(_load(conf), failed=True) == []
    # sendmail's 100, the runner's first 60, then batches of the 40 the relay takes.
    assert server.count("RCPT") == 100 + 60 + 20


def test_a_queue_run_sends_a_limited_relay_batches_of_what_it_takes(
    tmp_path: Path, run_main: Run, smtp_server_factory: Factory
) -> None:
    """Each later transaction offers as many recipients as the relay took, not the whole
    rest again: 1000 recipients at a limit of 100 were 5,500 RCPT commands, most refused."""
    server = smtp_server_factory(fault="451-rcpt")
    conf = config_for(tmp_path, server.port)
    rcpts = [f"r{i}@dest.example" for i in range(50)]
    assert run_main(["-C", str(conf), "-i", *rcpts], MESSAGE)[0] == 0
    server.fault = "452-rcpt-after:10"
    server.clear()
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    assert [len(m.rcpt_tos) for m in server.messages] == [10] * 5
    assert server.count("RCPT") == 50 + 4 * 10
    assert server.connections == 1
    assert spool.list_entries(_load(conf)) == []


def test_what_a_relay_took_is_recorded_before_the_next_transaction(
    tmp_path: Path, run_main: Run, smtp_server_factory: Factory
) -> None:
    """A queue run killed while the relay hangs in the second transaction (systemd's stop
    timeout, an OOM kill): the first transaction's recipients were already taken off the
    entry, so the next run sends them no second copy, and the rest is not lost."""
    server = smtp_server_factory(fault="451-rcpt")
    conf = config_for(tmp_path, server.port)
    four = [f"r{i}@dest.example" for i in range(4)]
    code, _, err = run_main(["-C", str(conf), "-i", *four], MESSAGE)
    assert code == 0 and "queued as " in err
    server.fault = "452-rcpt-after:2"
    server.stall_after = 1
    with killed_queue_run(conf):
        _wait_until(lambda: server.count("DATA") == 2, "the second transaction")
        [entry] = spool.list_entries(_load(conf))
        assert entry.recipients == tuple(four[2:])
    server.stall_after = None
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    assert sorted(r for m in server.messages for r in m.rcpt_tos) == four


def test_refused_recipients_are_taken_off_the_entry_before_their_failure_notice_goes(
    tmp_path: Path, run_main: Run, smtp_server_factory: Factory
) -> None:
    """The relay takes two, refuses one for good and limits the rest; the failure notice
    then hangs and the run is killed. The entry must already hold only the rest: it
    used to hold all five, and the next run sent two of them a second copy and kept the
    refused one in failed/ twice."""
    server = smtp_server_factory(fault="451-rcpt")
    conf = config_for(tmp_path, server.port)
    five = [f"r{i}@dest.example" for i in range(5)]
    code, _, err = run_main(["-C", str(conf), "-f", "app@host.example", "-i", *five], MESSAGE)
    assert code == 0 and "queued as " in err
    server.fault = "452-rcpt-after:2"
    server.rcpt_replies = {"r1@dest.example": "550 5.1.1 <r1@dest.example>: User unknown"}
    server.stall_after = 1  # the failure notice, the next message, gets no reply to its dot
    with killed_queue_run(conf):
        _wait_until(lambda: server.count("DATA") == 2, "the failure notice")
        [entry] = spool.list_entries(_load(conf))
        assert entry.recipients == ("r3@dest.example", "r4@dest.example")
        [failed] = spool.list_entries(_load(conf), failed=True)
        assert failed.recipients == ("r1@dest.example",)
    server.stall_after = None
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    delivered = sorted(r for m in server.messages for r in m.rcpt_tos if r != "app@host.example")
    assert delivered == ["r0@dest.example", "r2@dest.example", "r3@dest.example", "r4@dest.example"]
    assert len(spool.list_entries(_load(conf), failed=True)) == 1


def test_a_batch_refused_for_good_fails_that_batch_not_the_rest(
    tmp_path: Path, run_main: Run, smtp_server_factory: Factory
) -> None:
    """A limited relay that then refuses a whole batch (unknown users): the recipients
    never offered yet were failed and bounced with it."""
    server = smtp_server_factory(fault="451-rcpt")
    conf = config_for(tmp_path, server.port)
    six = [f"r{i}@dest.example" for i in range(6)]
    assert run_main(["-C", str(conf), "-f", "app@host.example", "-i", *six], MESSAGE)[0] == 0
    server.fault = "452-rcpt-after:2"
    gone = "550 5.1.1 User unknown"
    server.rcpt_replies = {"r2@dest.example": gone, "r3@dest.example": gone}
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    delivered = sorted(r for m in server.messages for r in m.rcpt_tos if r != "app@host.example")
    assert delivered == ["r0@dest.example", "r1@dest.example", "r4@dest.example", "r5@dest.example"]
    [failed] = spool.list_entries(_load(conf), failed=True)
    assert failed.recipients == ("r2@dest.example", "r3@dest.example")
    assert spool.list_entries(_load(conf)) == []


@pytest.mark.parametrize("reply", ["252 2.1.5 will try", "xyz not a reply"], ids=["252", "garbled"])
def test_an_odd_reply_to_rcpt_is_no_internal_error(
    reply: str, tmp_path: Path, run_main: Run, smtp_server: SMTPTestServer
) -> None:
    """252 accepts the recipient (any 2xx does); a line that is no reply defers it."""
    smtp_server.rcpt_replies = {"odd@dest.example": reply}
    conf = config_for(tmp_path, smtp_server.port)
    code, _, err = run_main(["-C", str(conf), "-i", "odd@dest.example"], MESSAGE)
    assert code == 0, err
    assert "internal error" not in err
    if reply.startswith("252"):
        assert [m.rcpt_tos for m in smtp_server.wait_for(1)] == [["odd@dest.example"]]
    else:
        assert "queued as " in err
        assert [e.recipients for e in spool.list_entries(_load(conf))] == [("odd@dest.example",)]


def test_with_fail_a_half_delivered_message_is_queued_for_the_rest_not_exit_75(
    tmp_path: Path, run_main: Run, smtp_server: SMTPTestServer
) -> None:
    """on_temporary_failure = fail, one recipient takes the message, the other says 451:
    exit 75 told the caller to send it again, and the first a second copy. The rest is
    queued (exit 0); with nothing delivered, fail still means 75 and nothing kept."""
    smtp_server.rcpt_replies = {"busy@dest.example": "451 4.2.0 mailbox busy"}
    conf = config_for(tmp_path, smtp_server.port, "on_temporary_failure = fail")
    code, _, err = run_main(
        ["-C", str(conf), "-i", "busy@dest.example", "ok@dest.example"], MESSAGE
    )
    assert code == 0, err
    assert [m.rcpt_tos for m in smtp_server.wait_for(1)] == [["ok@dest.example"]]
    assert [e.recipients for e in spool.list_entries(_load(conf))] == [("busy@dest.example",)]
    code, _, err = run_main(["-C", str(conf), "-i", "busy@dest.example"], MESSAGE)
    assert code == 75, err
    assert len(spool.list_entries(_load(conf))) == 1
