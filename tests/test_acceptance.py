"""SPEC §7's acceptance rule through the sendmail entry point: delivered, queued, or not acked."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from relayconf import write_relay_config
from smtpserver import SMTPTestServer

HOST = "host.example"
MESSAGE = b"From: app@host.example\nTo: a@dest.example, b@dest.example\nSubject: accept\n\nbody\n"
Run = Callable[..., tuple[int, str, str]]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, port: int, extra: str = "", spool: Path | None = None) -> Path:
    return write_relay_config(path, port, extra, spool=spool)


@pytest.fixture
def run(run_main: Run) -> Run:
    return run_main


def test_relay_down_queues_with_exit_0_and_queue_run_delivers_once(
    tmp_path: Path, run: Run, smtp_server: SMTPTestServer
) -> None:
    conf = write_config(tmp_path / "m.conf", closed_port())
    code, _, err = run(["-C", str(conf), "-t"], MESSAGE)
    assert code == 0
    assert "queued as " in err and "connection refused" in err
    code, out, _ = run(["-C", str(conf)], prog="mailq")
    assert code == 0
    assert "a@dest.example" in out and "b@dest.example" in out
    write_config(conf, smtp_server.port)  # the relay is back
    code, _, err = run(["-C", str(conf), "-q"])
    assert code == 0, err
    received = smtp_server.wait_for(1)
    assert [m.rcpt_tos for m in received] == [["a@dest.example", "b@dest.example"]]
    assert b"Subject: accept" in received[0].data
    code, out, _ = run(["-C", str(conf), "-bp"])
    assert "Mail queue is empty" in out
    run(["-C", str(conf), "-q"])
    assert len(smtp_server.messages) == 1


def test_fail_policy_exits_75_and_queues_nothing(tmp_path: Path, run: Run) -> None:
    conf = write_config(tmp_path / "m.conf", closed_port(), "on_temporary_failure = fail")
    code, _, err = run(["-C", str(conf), "-t"], MESSAGE)
    assert code == 75
    assert "queued" not in err
    _, out, _ = run(["-C", str(conf)], prog="mailq")
    assert "Mail queue is empty" in out


def test_unwritable_spool_is_exit_73_not_success(tmp_path: Path, run: Run) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the spool's parent should be")
    conf = write_config(tmp_path / "m.conf", closed_port(), spool=blocker / "spool")
    code, _, err = run(["-C", str(conf), "-t"], MESSAGE)
    assert code == 73
    assert "queued as" not in err


def test_permanent_failure_keeps_a_copy_in_failed(
    tmp_path: Path, run: Run, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    server = smtp_server_factory(fault="554-data-end")
    conf = write_config(tmp_path / "m.conf", server.port)
    code, _, err = run(["-C", str(conf), "-t"], MESSAGE)
    assert code == 65
    assert "554" in err
    code, out, _ = run(["-C", str(conf), "queue", "list", "--failed"], prog="ssmtp-mailer")
    assert code == 0
    assert "554" in out and "a@dest.example" in out


def test_one_recipient_deferred_is_queued_alone(
    tmp_path: Path, run: Run, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    server = smtp_server_factory(fault="451-rcpt:b@dest.example")
    conf = write_config(tmp_path / "m.conf", server.port)
    code, _, err = run(["-C", str(conf), "-t"], MESSAGE)
    assert code == 0, err
    assert "queued as " in err and "451" in err
    assert [m.rcpt_tos for m in server.messages] == [["a@dest.example"]]
    server.fault = None
    code, _, err = run(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    assert [m.rcpt_tos for m in server.wait_for(2)] == [["a@dest.example"], ["b@dest.example"]]


def test_one_recipient_refused_is_reported_and_kept_in_failed(
    tmp_path: Path, run: Run, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    server = smtp_server_factory(fault="550-rcpt:b@dest.example")
    conf = write_config(tmp_path / "m.conf", server.port)
    code, _, err = run(["-C", str(conf), "-t"], MESSAGE)
    assert code == 0
    assert "b@dest.example: refused by" in err and "550" in err
    delivered, notice = server.wait_for(2)
    assert delivered.rcpt_tos == ["a@dest.example"]
    # Exit 0 cannot name b@: the sender gets a failure notice, as from Postfix.
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == [delivered.mail_from]
    _, out, _ = run(["-C", str(conf), "queue", "list", "--failed"], prog="ssmtp-mailer")
    assert "b@dest.example" in out and "a@dest.example" not in out


def test_a_successful_send_starts_a_runner_for_what_is_due(
    tmp_path: Path, run: Run, smtp_server: SMTPTestServer
) -> None:
    conf = write_config(tmp_path / "m.conf", closed_port())
    code, _, _ = run(["-C", str(conf), "-t"], MESSAGE)
    assert code == 0
    (envelope,) = (tmp_path / "spool" / "queue").glob("*.toml")
    # An hour passes: the entry's backoff is over.
    text = envelope.read_text()
    envelope.write_text(re.sub(r"next_attempt = .*", "next_attempt = 2000-01-01T00:00:00Z", text))
    write_config(conf, smtp_server.port)
    later = MESSAGE.replace(b"Subject: accept", b"Subject: later")
    code, _, err = run(["-C", str(conf), "-t"], later)
    assert code == 0, err
    subjects = sorted(m.message()["Subject"] for m in smtp_server.wait_for(2, timeout=20))
    assert subjects == ["accept", "later"]


def test_mapping_to_a_non_ascii_address_needs_smtputf8_and_is_kept_when_refused(
    tmp_path: Path, run: Run, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    plain = smtp_server_factory()
    conf = write_config(
        tmp_path / "m.conf",
        plain.port,
        "[mapping:idn]\nfrom_pattern = root@host.example\nto_pattern = jörg@bücher.example\n",
    )
    code, _, err = run(["-C", str(conf), "root"], b"Subject: x\n\nx\n")
    assert code == 65, err
    assert "SMTPUTF8" in err
    assert plain.messages == []
    _, out, _ = run(["-C", str(conf), "queue", "list", "--failed"], prog="ssmtp-mailer")
    assert "bücher.example" in out
    utf8 = smtp_server_factory(smtputf8=True)
    write_config(
        conf,
        utf8.port,
        "[mapping:idn]\nfrom_pattern = root@host.example\nto_pattern = jörg@bücher.example\n",
    )
    code, _, err = run(["-C", str(conf), "root"], b"Subject: x\n\nx\n")
    assert code == 0, err
    (received,) = utf8.wait_for(1)
    assert received.rcpt_tos == ["jörg@bücher.example"]
    assert "SMTPUTF8" in received.mail_options
