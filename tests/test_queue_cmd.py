"""`ssmtp-mailer queue …` through the real entry point, in-process and as subprocesses."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from smtpserver import MisbehavingServer, SMTPTestServer
from test_spool import SENDER, closed_port, enqueue, group_for, message_ids, write_config

from ssmtp_mailer import spool
from ssmtp_mailer.entry import main

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], config_file: Path, *args: str) -> Run:
    code = main(["queue", "-C", str(config_file), *args], prog_name="ssmtp-mailer")
    out, err = capsys.readouterr()
    return code, out, err


def test_list_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, closed_port())
    assert run(capsys, config.main_file, "list") == (0, "Mail queue is empty\n", "")
    code, out, _ = run(capsys, config.main_file, "list", "--json")
    assert code == 0 and json.loads(out) == []


def test_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, closed_port())
    entry_id = enqueue(config, 1, SENDER, "a@dest.example", "b@dest.example")
    code, out, _ = run(capsys, config.main_file, "list")
    assert code == 0
    assert entry_id in out and SENDER in out and "b@dest.example" in out
    assert "(relay down)" in out and "1 Request." in out

    code, out, _ = run(capsys, config.main_file, "list", "--json")
    [row] = json.loads(out)
    assert row["id"] == entry_id
    assert row["recipients"] == ["a@dest.example", "b@dest.example"]
    assert row["attempts"] == 1 and row["last_error"] == "relay down"
    assert row["size"] == len(spool.find_entry(config, entry_id)[1])

    code, out, _ = run(capsys, config.main_file, "show", entry_id.lower())
    assert code == 0
    assert "Subject: test 1" in out and "relay down" in out and "[domain:*]" in out
    code, out, _ = run(capsys, config.main_file, "show", entry_id, "--json")
    shown = json.loads(out)
    assert shown["history"][0]["reply"] == "relay down" and "Subject: test 1" in shown["headers"]


def test_show_unknown_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, closed_port())
    code, _, err = run(capsys, config.main_file, "show", "0" * 17)
    assert code == 64 and "no such entry" in err
    code, _, err = run(capsys, config.main_file, "show", "../../etc/passwd")
    assert code == 64 and "not a queue id" in err


def test_run_all_and_by_id(
    tmp_path: Path, smtp_server: SMTPTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    first, second = enqueue(config, 1), enqueue(config, 2)
    code, out, _ = run(capsys, config.main_file, "run")
    assert code == 0 and "0 delivered" in out and "2 not yet due" in out
    code, out, _ = run(capsys, config.main_file, "run", "--id", second, "--json")
    assert code == 0 and json.loads(out)["delivered"] == [second]
    code, out, _ = run(capsys, config.main_file, "run", "--all", "--progress")
    assert code == 0 and out.startswith("queue run: 1 delivered")
    assert message_ids(smtp_server) == ["<2.spool@test.example>", "<1.spool@test.example>"]
    assert first not in run(capsys, config.main_file, "list")[1]
    # An id already delivered (or never queued) is said so, not a quiet "0 delivered".
    code, out, err = run(capsys, config.main_file, "run", "--id", second)
    assert code == 64 and out == "" and f"{second}: no such entry in the queue" in err


def test_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, closed_port())
    keep, drop = enqueue(config, 1), enqueue(config, 2)
    code, out, err = run(capsys, config.main_file, "delete", drop, "0" * 17)
    assert code == 64 and f"deleted {drop} from queue/" in out and "no such entry" in err
    assert [e.id for e in spool.list_entries(config)] == [keep]
    assert not list((tmp_path / "spool" / "queue").glob(f"{drop}*"))


def test_failed_list_retry_and_delete(
    tmp_path: Path, smtp_server_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = smtp_server_factory(fault="554-data-end")
    config = write_config(tmp_path, server.port, bounce="false")
    entry_id = enqueue(config, 1)
    code, out, _ = run(capsys, config.main_file, "run", "--all")
    assert code == 0 and "1 failed" in out
    assert run(capsys, config.main_file, "list")[1] == "Mail queue is empty\n"
    code, out, _ = run(capsys, config.main_file, "list", "--failed", "--json")
    [row] = json.loads(out)
    assert row["origin"] == entry_id and "554" in row["reason"]
    failed_id = row["id"]
    code, out, _ = run(capsys, config.main_file, "show", failed_id)
    assert "(failed/)" in out and "554" in out

    server.fault = None
    code, out, _ = run(capsys, config.main_file, "retry-failed", failed_id)
    assert code == 0 and f"{failed_id} queued again as {failed_id}" in out
    code, out, _ = run(capsys, config.main_file, "run")
    assert code == 0 and "1 delivered" in out
    assert message_ids(server) == ["<1.spool@test.example>"]

    other = spool.store_failed(config, group_for(config), b"Subject: x\r\n\r\ny\r\n", reason="r")
    code, out, _ = run(capsys, config.main_file, "delete", other)
    assert code == 0 and "from failed/" in out
    assert run(capsys, config.main_file, "list", "--failed")[1] == "Failed area is empty\n"


def test_two_queue_run_commands_at_once(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    config = write_config(tmp_path, smtp_server.port)
    for n in range(20):
        enqueue(config, n)
    command = [sys.executable, "-m", "ssmtp_mailer", "-C", str(config.main_file)]
    runners = [
        subprocess.Popen([*command, "queue", "run", "--all", "--json"], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [json.loads(r.communicate(timeout=60)[0]) for r in runners]
    assert all(r.returncode == 0 for r in runners)
    assert sum(len(r["delivered"]) for r in results) == 20
    ids = message_ids(smtp_server)
    assert len(ids) == 20 and len(set(ids)) == 20


def test_help_lists_queue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], prog_name="ssmtp-mailer") == 0
    assert "queue" in capsys.readouterr().out
    assert main(["queue", "--help"], prog_name="ssmtp-mailer") == 0
    out = capsys.readouterr().out
    for sub in ("list", "show", "run", "delete", "retry-failed"):
        assert sub in out


def test_a_damaged_entry_is_shown_as_damaged_and_can_be_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, closed_port())
    damaged, moved = enqueue(config, 1), enqueue(config, 2)
    for entry_id in (damaged, moved):
        (tmp_path / "spool" / "queue" / f"{entry_id}.toml").write_text("not = [toml")
    code, _, err = run(capsys, config.main_file, "show", damaged)
    assert code == 65 and "unreadable envelope" in err and "internal error" not in err
    assert run(capsys, config.main_file, "delete", damaged)[0] == 0
    assert not (tmp_path / "spool" / "queue" / f"{damaged}.msg").exists()
    spool.run_queue(config, force=True)  # moves the other one aside
    code, out, _ = run(capsys, config.main_file, "list")
    assert moved in out and damaged not in out
    assert run(capsys, config.main_file, "delete", moved)[0] == 0
    assert list((tmp_path / "spool" / "damaged").iterdir()) == []
    assert run(capsys, config.main_file, "list")[1] == "Mail queue is empty\n"


def test_a_maildrop_file_name_cannot_forge_a_log_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Anyone may name a file in the maildrop: a name holding a newline and a fake
    delivery record stays inside the one line that reports the file."""
    log = tmp_path / "mail.log"
    config = write_config(tmp_path, closed_port(), log_file=str(log))
    (tmp_path / "spool").mkdir()
    run(capsys, config.main_file, "run")  # opens the maildrop
    forged = "x\n2026-01-01T00:00:00+0000 ssmtp-mailer[1]: info: msgid=- outcome=sent"
    (tmp_path / "spool" / "maildrop" / forged).write_text("not a maildrop file\n")
    run(capsys, config.main_file, "run")
    lines = log.read_text().splitlines()
    assert [line for line in lines if "outcome=sent" in line] != []  # the name is logged ...
    assert not [line for line in lines if line.startswith("2026-01-01")]  # ... inside a line


def test_a_relay_that_never_greets_is_waited_for_once_per_queue_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four entries for a relay that accepts the connection and says nothing: each waited
    read_timeout in turn (500 entries at the default 60 s: over eight hours). The first
    wait marks the relay unreachable and the others stay queued at once."""
    with MisbehavingServer(MisbehavingServer.silent) as server:
        config = write_config(tmp_path, server.port, read_timeout=1)
        ids = [enqueue(config, n) for n in range(4)]
        code, out, _ = run(capsys, config.main_file, "run", "--all")
        assert server.connections == 1
    assert code == 0 and "4 deferred" in out, out
    assert sorted(e.id for e in spool.list_entries(config)) == sorted(ids)


def test_an_entry_past_its_lifetime_is_tried_before_it_is_given_up(
    tmp_path: Path, smtp_server: SMTPTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Queued while the relay was down, the relay up again once queue_lifetime is over:
    the message goes (as Postfix: only a failed attempt after the lifetime bounces it),
    even before its backoff is over. It used to expire and bounce over that relay."""
    config = write_config(tmp_path, smtp_server.port, queue_lifetime=0)
    entry_id = enqueue(config, 1)
    code, out, _ = run(capsys, config.main_file, "run")
    assert code == 0
    assert out == "queue run: 1 delivered, 0 deferred, 0 failed, 0 expired\n"
    assert message_ids(smtp_server) == ["<1.spool@test.example>"]
    assert smtp_server.messages[0].rcpt_tos == ["rcpt@dest.example"]
    assert spool.list_entries(config, failed=True) == []
    assert entry_id not in run(capsys, config.main_file, "list")[1]


def test_deleting_an_entry_being_delivered_is_a_temporary_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SPEC §9: "try again" is EX_TEMPFAIL (75), not a usage error (64)."""
    config = write_config(tmp_path, closed_port())
    entry_id = enqueue(config, 1)
    with open(tmp_path / "spool" / "queue" / f"{entry_id}.msg", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a runner in the middle of its delivery
        code, out, err = run(capsys, config.main_file, "delete", entry_id)
    assert (code, out) == (75, "")
    assert err == f"ssmtp-mailer: {entry_id}: being delivered right now; try again\n"
    assert run(capsys, config.main_file, "delete", entry_id)[0] == 0


def test_the_summary_says_a_notice_the_relay_could_not_take_is_queued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The relay down: the expired entry's notice waits in the queue; it was said "sent"."""
    config = write_config(tmp_path, closed_port(), queue_lifetime=0)
    enqueue(config, 1)
    code, out, _ = run(capsys, config.main_file, "run")
    assert code == 0
    assert out == "queue run: 0 delivered, 0 deferred, 0 failed, 1 expired, 1 bounce(s) queued\n"
    [notice] = spool.list_entries(config)
    assert notice.sender == "" and notice.recipients == (SENDER,)


def test_the_summary_counts_entries_delivered_to_some_and_refused_for_others(
    tmp_path: Path, smtp_server_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each entry went to its good recipient and was refused for one: it was counted only
    as failed ("0 delivered, 0 deferred, 3 failed"), as if nobody had it."""
    server = smtp_server_factory(fault="550-rcpt:bad@dest.example")
    config = write_config(tmp_path, server.port)
    for n in range(3):
        enqueue(config, n, SENDER, "ok@dest.example", "bad@dest.example")
    code, out, _ = run(capsys, config.main_file, "run", "--all")
    assert code == 0
    assert out == (
        "queue run: 3 delivered (3 in part), 0 deferred, 3 failed, 0 expired, 3 bounce(s) sent\n"
    )
    assert sorted(m.rcpt_tos[0] for m in server.messages) == [SENDER] * 3 + ["ok@dest.example"] * 3


def test_a_hung_password_command_is_waited_for_once_a_run_not_once_an_entry(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    smtp_server_factory: Any,
) -> None:
    """A password_command that hangs cost its 10 s for each queued entry of the route:
    100 entries held a run for 16 minutes. Once it timed out, the route's other entries
    wait for the next run."""
    from ssmtp_mailer.config import secrets
    from ssmtp_mailer.config.loader import load_config

    server = smtp_server_factory(auth={"u": "pw"}, auth_require_tls=False)
    config = write_config(tmp_path, server.port)
    ran = tmp_path / "ran"
    text = config.main_file.read_text().replace(
        "auth_method = NONE",
        f"username = u\npassword_command = echo x >> {ran}; sleep 30\nallow_plaintext_auth = true",
    )
    config.main_file.write_text(text)
    config = load_config(str(config.main_file))
    ids = [enqueue(config, n) for n in range(3)]
    monkeypatch.setattr(secrets, "COMMAND_TIMEOUT", 1)
    code, out, _ = run(capsys, config.main_file, "run", "--all")
    assert code == 0
    assert "0 delivered, 3 deferred" in out
    assert ran.read_text() == "x\n"  # asked once, not three times
    assert sorted(e.id for e in spool.list_entries(config)) == sorted(ids)
    assert server.messages == []
