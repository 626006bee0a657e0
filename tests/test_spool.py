"""The durable spool against real aiosmtpd relays: outages, concurrency, crashes, bounces."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from smtpserver import SMTPTestServer

from ssmtp_mailer import spool
from ssmtp_mailer.commands.queue import listing_text
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.config.model import Config, DomainConfig
from ssmtp_mailer.errors import CantCreateError, TempFailError, UnavailableError
from ssmtp_mailer.relay.engine import DeliveryLog, deliver
from ssmtp_mailer.rewrite import RouteGroup, plan_delivery
from ssmtp_mailer.spool import bounce as spool_bounce
from ssmtp_mailer.spool import runner as spool_runner
from ssmtp_mailer.spool import store

SENDER = "app@test.example"


def closed_port() -> int:
    """A port nothing listens on: connecting is refused at once (a relay outage)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, port: int, **global_: Any) -> Config:
    """An INI in tmp_path with its own spool and one catch-all route to 127.0.0.1:port."""
    settings = {
        "default_hostname": "test.example",
        "default_from": SENDER,
        "spool_dir": str(tmp_path / "spool"),
        "max_retries": 0,
        "retry_backoff": 0,
        "connection_timeout": 5,
        "enable_rate_limiting": "false",
        **global_,
    }
    lines = ["[global]", *(f"{k} = {v}" for k, v in settings.items())]
    lines += [
        "",
        "[domain:*]",
        "smtp_server = 127.0.0.1",
        f"smtp_port = {port}",
        "use_starttls = false",
        "auth_method = NONE",
    ]
    path = tmp_path / "ssmtp-mailer.conf"
    path.write_text("\n".join(lines) + "\n")
    return load_config(str(path))


def message(n: int, sender: str = SENDER, to: str = "rcpt@dest.example") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: test {n}\r\n"
        f"Message-ID: <{n}.spool@test.example>\r\n\r\nbody {n}\r\n"
    ).encode()


def group_for(config: Config, sender: str = SENDER, *rcpts: str) -> RouteGroup:
    plan = plan_delivery(config, sender, list(rcpts or ("rcpt@dest.example",)))
    return plan.groups[0]


def enqueue(config: Config, n: int, sender: str = SENDER, *rcpts: str) -> str:
    return spool.enqueue(
        config,
        group_for(config, sender, *rcpts),
        message(n, sender),
        smtputf8=False,
        eightbit=False,
        reason="relay down",
    )


def message_ids(server: SMTPTestServer) -> list[str]:
    return [str(m.message()["Message-ID"]) for m in server.messages]


# -- layout and durability -----------------------------------------------------------


def test_enqueue_writes_message_and_envelope(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    entry_id = enqueue(config, 1, SENDER, "a@dest.example", "b@dest.example")
    queue_dir = tmp_path / "spool" / "queue"
    assert sorted(os.listdir(queue_dir)) == [f"{entry_id}.msg", f"{entry_id}.toml"]
    assert (queue_dir / f"{entry_id}.msg").read_bytes() == message(1)
    # Others reach maildrop/ through the spool (SPEC §8), never into queue/.
    assert stat.S_IMODE(queue_dir.stat().st_mode) & 0o007 == 0
    assert stat.S_IMODE((queue_dir / f"{entry_id}.msg").stat().st_mode) & 0o007 == 0
    [entry] = spool.list_entries(config)
    assert entry.id == entry_id
    assert entry.sender == SENDER
    assert entry.recipients == ("a@dest.example", "b@dest.example")
    assert entry.route == "*"
    assert [a.reply for a in entry.attempts] == ["relay down"]
    assert (entry.next_attempt - entry.created).total_seconds() == spool.BACKOFF_START
    assert entry.size == len(message(1))
    text = listing_text(config)
    assert entry_id in text and "a@dest.example" in text and "(relay down)" in text


def test_empty_queue_listing(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    assert listing_text(config) == "Mail queue is empty"
    assert spool.run_queue(config) == spool.QueueRunResult()
    assert not (tmp_path / "spool").exists()  # looking never creates the spool


def test_backoff_doubles_from_a_minute_to_an_hour() -> None:
    assert [spool.backoff(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]


# -- outage, then recovery -----------------------------------------------------------


def test_outage_queues_and_recovery_delivers_each_exactly_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    down = write_config(tmp_path, closed_port())
    ids = []
    for n in range(5):
        group, data = group_for(down), message(n)
        with pytest.raises(TempFailError) as failure:
            deliver(down, group, data, record=DeliveryLog(down, group, data))
        entry_id = spool.handle_temporary_failure(
            down, group, data, smtputf8=False, eightbit=False, error=failure.value
        )
        assert entry_id is not None
        assert spool.queued_note(entry_id, failure.value).startswith(f"queued as {entry_id}: ")
        ids.append(entry_id)

    # Still down: one more attempt each, remembered, and the backoff doubles.
    result = spool.run_queue(down, force=True)
    assert sorted(result.deferred) == sorted(ids)
    for entry in spool.list_entries(down):
        assert len(entry.attempts) == 2
        assert (entry.next_attempt - entry.attempts[-1].time).total_seconds() == 120

    up = write_config(tmp_path, smtp_server.port)
    assert spool.run_queue(up).not_due == 5  # backoff respected without --all
    assert smtp_server.messages == []
    result = spool.run_queue(up, force=True)
    assert sorted(result.delivered) == sorted(ids)
    assert sorted(message_ids(smtp_server)) == sorted(f"<{n}.spool@test.example>" for n in range(5))
    assert [m.data for m in smtp_server.messages] == [message(n) for n in range(5)]
    assert spool.list_entries(up) == []
    assert spool.run_queue(up, force=True).delivered == ()
    assert len(smtp_server.messages) == 5


def test_run_only_given_ids(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    config = write_config(tmp_path, smtp_server.port)
    first, second = enqueue(config, 1), enqueue(config, 2)
    result = spool.run_queue(config, ids=[second.lower()])
    assert result.delivered == (second,)
    assert [e.id for e in spool.list_entries(config)] == [first]


def test_time_budget_stops_the_run(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    config = write_config(tmp_path, smtp_server.port)
    enqueue(config, 1)
    result = spool.run_queue(config, force=True, time_budget=0)
    assert result.out_of_time and result.delivered == ()
    assert len(spool.list_entries(config)) == 1


# -- concurrency and crashes ---------------------------------------------------------

RUNNER = textwrap.dedent(
    """
    import os, sys, time
    from ssmtp_mailer.config.loader import load_config
    from ssmtp_mailer.spool import run_queue
    config = load_config(sys.argv[1])
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.001)
    started = time.monotonic()
    delivered = len(run_queue(config, force=True).delivered)
    print(delivered, started, time.monotonic())
    """
)


def test_two_concurrent_runners_deliver_fifty_entries_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    for n in range(50):
        enqueue(config, n)
    go = tmp_path / "go"
    runners = [
        subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(config.main_file), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for runner in runners:  # a barrier: both imported and waiting for the same moment
        assert runner.stdout is not None and runner.stdout.readline() == "ready\n"
    go.touch()
    reports = [r.communicate(timeout=60)[0].split() for r in runners]
    assert all(r.returncode == 0 for r in runners)
    counts = [int(report[0]) for report in reports]
    (start_a, end_a), (start_b, end_b) = ((float(r[1]), float(r[2])) for r in reports)
    assert start_a < end_b and start_b < end_a, "the two runs did not overlap"
    assert sum(counts) == 50, counts
    ids = message_ids(smtp_server)
    assert len(ids) == 50 and len(set(ids)) == 50
    assert spool.list_entries(config) == []


def test_runner_killed_mid_delivery_leaves_entry_for_the_next_run(
    tmp_path: Path, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    server = smtp_server_factory(fault="stall-data-end")
    config = write_config(tmp_path, server.port, connection_timeout=30, read_timeout=30)
    entry_id = enqueue(config, 1)
    runner = subprocess.Popen(
        [sys.executable, "-m", "ssmtp_mailer", "-C", str(config.main_file), "queue", "run", "--all"]
    )
    deadline = time.monotonic() + 20
    while server.connections < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.connections == 1
    time.sleep(0.3)  # let it send the message and wait for the reply that never comes
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)

    [entry] = spool.list_entries(config)
    assert entry.id == entry_id and len(entry.attempts) == 1
    assert server.messages == []
    server.fault = None
    assert spool.run_queue(config, force=True).delivered == (entry_id,)
    assert message_ids(server) == ["<1.spool@test.example>"]


CRASHER = textwrap.dedent(
    """
    import os, sys
    from ssmtp_mailer.config.loader import load_config
    from ssmtp_mailer import spool
    from ssmtp_mailer.rewrite import plan_delivery
    config = load_config(sys.argv[1])
    real_replace = os.replace
    def crash(src, dst, **dir_fds):
        if str(dst).endswith(".toml"):
            os._exit(9)  # power lost after the envelope's temp file, before its rename
        return real_replace(src, dst, **dir_fds)
    os.replace = crash
    group = plan_delivery(config, "app@test.example", ["rcpt@dest.example"]).groups[0]
    spool.enqueue(config, group, b"Subject: lost\\r\\n\\r\\nx\\r\\n",
                  smtputf8=False, eightbit=False, reason="down")
    """
)


def test_crash_between_write_and_rename(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    config = write_config(tmp_path, smtp_server.port)
    survivor = enqueue(config, 1)
    crashed = subprocess.run([sys.executable, "-c", CRASHER, str(config.main_file)], check=False)
    assert crashed.returncode == 9
    queue_dir = tmp_path / "spool" / "queue"
    debris = sorted(n for n in os.listdir(queue_dir) if not n.startswith(survivor))
    assert len(debris) == 2 and debris[0].startswith(spool.TEMP_PREFIX)  # + an orphan .msg

    # A half-written entry is never picked up; fresh debris may be a live writer's: kept.
    assert [e.id for e in spool.list_entries(config)] == [survivor]
    assert spool.run_queue(config, force=True).delivered == (survivor,)
    assert message_ids(smtp_server) == ["<1.spool@test.example>"]
    assert sorted(os.listdir(queue_dir)) == debris

    old = time.time() - spool.STALE_SECONDS - 60
    for name in debris:
        os.utime(queue_dir / name, (old, old))
    assert spool.run_queue(config, force=True) == spool.QueueRunResult()
    assert os.listdir(queue_dir) == []
    assert len(smtp_server.messages) == 1


NOTICE_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from ssmtp_mailer.config.loader import load_config
    from ssmtp_mailer.spool import bounce, run_queue, runner
    config = load_config(sys.argv[1])
    point = sys.argv[2]
    def killed_at(module, name, after=False):
        real = getattr(module, name)
        def kill(*args, **kwargs):
            if after:
                real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(module, name, kill)
    if point == "before the queue entry goes":
        killed_at(runner, "_remove_pair")
    elif point == "before the notice is made":
        killed_at(bounce, "build_bounce")
    elif point == "once the notice is queued":
        killed_at(bounce, "enqueue", after=True)
    run_queue(config, force=True)
    """
)


@pytest.mark.parametrize(
    "point",
    ["before the queue entry goes", "before the notice is made", "once the notice is queued"],
)
def test_a_runner_killed_while_failing_an_entry_leaves_one_notice_owed(
    tmp_path: Path, smtp_server: SMTPTestServer, point: str
) -> None:
    """A `queue run` killed anywhere between the entry's copy in failed/ and its failure
    notice being sent or queued: the next run tells the sender once. Killed once the
    entry had left the queue, the notice was never sent."""
    config = write_config(tmp_path, smtp_server.port)
    smtp_server.rcpt_replies["rcpt@dest.example"] = "550 5.1.1 User unknown"
    if point == "once the notice is queued":
        smtp_server.rcpt_replies[SENDER] = "451 4.3.0 Try again later"
    entry_id = enqueue(config, 1)
    killed = subprocess.run(
        [sys.executable, "-c", NOTICE_KILLER, str(config.main_file), point], check=False
    )
    assert killed.returncode == -signal.SIGKILL
    assert smtp_server.messages == []
    smtp_server.rcpt_replies.pop(SENDER, None)

    spool.run_queue(config, force=True)
    assert spool.run_queue(config, force=True).bounces == 0
    [notice] = smtp_server.messages
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == [SENDER]
    assert b"<rcpt@dest.example>: 550 5.1.1 User unknown" in notice.data
    assert spool.list_entries(config) == []
    [failed] = spool.list_entries(config, failed=True)
    assert failed.id == entry_id and failed.recipients == ("rcpt@dest.example",)
    assert failed.id in listing_text(config, failed=True)


def test_a_notice_owed_for_recipients_that_left_an_entry_still_queued_is_sent_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """One recipient refused for good, one deferred, the run killed before the notice: the
    entry stays queued for the deferred one, and the refused one's notice still goes, once,
    not while another run holds the failed copy."""
    config = write_config(tmp_path, smtp_server.port)
    smtp_server.rcpt_replies["gone@dest.example"] = "550 5.1.1 User unknown"
    smtp_server.rcpt_replies["busy@dest.example"] = "451 4.2.0 Mailbox busy"
    entry_id = enqueue(config, 1, SENDER, "gone@dest.example", "busy@dest.example")
    point = "before the notice is made"
    killed = subprocess.run(
        [sys.executable, "-c", NOTICE_KILLER, str(config.main_file), point], check=False
    )
    assert killed.returncode == -signal.SIGKILL

    [failed] = spool.list_entries(config, failed=True)
    with open(tmp_path / "spool" / "failed" / f"{failed.id}.msg", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the run that failed it, still at its notice
        assert spool.run_queue(config).bounces == 0
    assert smtp_server.messages == []
    assert spool.run_queue(config).bounces == 1
    assert spool.run_queue(config, force=True).bounces == 0
    [notice] = smtp_server.messages
    assert notice.rcpt_tos == [SENDER] and b"<gone@dest.example>: 550 5.1.1" in notice.data
    [entry] = spool.list_entries(config)
    assert entry.id == entry_id and entry.recipients == ("busy@dest.example",)
    assert [e.recipients for e in spool.list_entries(config, failed=True)] == [
        ("gone@dest.example",)
    ]


def kill_while_failing(config: Config, point: str) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", NOTICE_KILLER, str(config.main_file), point], check=False
    )
    assert killed.returncode == -signal.SIGKILL


def null_sender(messages: list[Any]) -> list[Any]:
    return [m for m in messages if m.mail_from in ("", "<>")]


@pytest.mark.parametrize("then", ["taken", "refused again"])
@pytest.mark.parametrize("run_by", ["its id", "a run begun before the kill"])
def test_an_entry_killed_before_giving_up_failed_recipients_is_decided_by_its_next_attempt(
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    monkeypatch: pytest.MonkeyPatch,
    then: str,
    run_by: str,
) -> None:
    """Killed with the recipient's copy in failed/ and the entry still holding it: the
    next attempt, by `queue run --id` or by a run whose start came before the kill, alone
    decides. Taken: no notice; refused again: one notice and one failed copy."""
    config = write_config(tmp_path, smtp_server.port)
    smtp_server.rcpt_replies["rcpt@dest.example"] = "550 5.1.1 User unknown"
    entry_id = enqueue(config, 1)
    kill_while_failing(config, "before the queue entry goes")
    if then == "taken":
        smtp_server.rcpt_replies.clear()
    if run_by == "its id":
        spool.run_queue(config, ids=[entry_id])
    else:
        with monkeypatch.context() as patched:  # its start-of-run sweep found nothing owed
            patched.setattr(spool_runner, "_send_owed_notices", lambda *args: None)
            spool.run_queue(config, force=True)
    assert spool.run_queue(config, force=True).bounces == 0
    assert spool.list_entries(config) == []
    failed = spool.list_entries(config, failed=True)
    if then == "taken":
        assert [m.rcpt_tos for m in smtp_server.messages] == [["rcpt@dest.example"]]
        assert failed == []
    else:
        [notice] = null_sender(smtp_server.messages)
        assert b"<rcpt@dest.example>: 550 5.1.1 User unknown" in notice.data
        assert [f.id for f in failed] == [entry_id]


def test_a_second_copy_left_by_a_kill_is_dropped_by_the_entry_s_next_attempt(
    tmp_path: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One recipient failed earlier (its copy has the entry's id); the other is refused
    too and the run killed before the entry gave it up, its copy under an id of its own.
    The next attempt, by a run begun before the kill, delivers: no notice says it failed."""
    config = write_config(tmp_path, smtp_server.port)
    smtp_server.rcpt_replies["gone@dest.example"] = "550 5.1.1 User unknown"
    smtp_server.rcpt_replies["busy@dest.example"] = "451 4.2.0 Mailbox busy"
    entry_id = enqueue(config, 1, SENDER, "gone@dest.example", "busy@dest.example")
    assert spool.run_queue(config, force=True).bounces == 1
    smtp_server.rcpt_replies["busy@dest.example"] = "550 5.1.1 User unknown"
    kill_while_failing(config, "before the queue entry goes")
    assert len(spool.list_entries(config, failed=True)) == 2
    smtp_server.rcpt_replies.clear()
    with monkeypatch.context() as patched:  # its start-of-run sweep found nothing owed
        patched.setattr(spool_runner, "_send_owed_notices", lambda *args: None)
        assert spool.run_queue(config, force=True).delivered == (entry_id,)
    assert spool.run_queue(config, force=True).bounces == 0
    assert [m.rcpt_tos for m in smtp_server.messages] == [[SENDER], ["busy@dest.example"]]
    assert [f.id for f in spool.list_entries(config, failed=True)] == [entry_id]


def test_a_notice_queued_just_before_a_kill_and_delivered_by_its_id_goes_once(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """Killed after queuing the notice, before its mark was removed; `queue run --id`
    with the notice's id then sends it: no later run sends it again."""
    config = write_config(tmp_path, smtp_server.port)
    smtp_server.rcpt_replies["rcpt@dest.example"] = "550 5.1.1 User unknown"
    smtp_server.rcpt_replies[SENDER] = "451 4.3.0 Try again later"
    enqueue(config, 1)
    kill_while_failing(config, "once the notice is queued")
    [queued_notice] = spool.list_entries(config)
    assert queued_notice.sender == "" and queued_notice.recipients == (SENDER,)
    smtp_server.rcpt_replies.pop(SENDER)
    assert spool.run_queue(config, ids=[queued_notice.id]).delivered == (queued_notice.id,)
    assert spool.run_queue(config, force=True) == spool.QueueRunResult()
    [notice] = smtp_server.messages
    assert notice.rcpt_tos == [SENDER]


def test_a_notice_that_cannot_be_queued_stays_owed_and_the_run_says_so(
    tmp_path: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay defers the notice and the disk is full: exit 75 naming it, and the next
    run, with room again, sends it once."""
    config = write_config(tmp_path, smtp_server.port)
    smtp_server.rcpt_replies["rcpt@dest.example"] = "550 5.1.1 User unknown"
    smtp_server.rcpt_replies[SENDER] = "451 4.3.0 Try again later"
    entry_id = enqueue(config, 1)

    def disk_full(*args: Any, **kwargs: Any) -> str:
        raise CantCreateError("spool queue", "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(spool_bounce, "enqueue", disk_full)
        result = spool.run_queue(config, force=True)
    assert result.exit_code == 75 and result.failed == (entry_id,)
    [problem] = result.problems
    assert problem.startswith(entry_id) and "still owed: No space left on device" in problem
    smtp_server.rcpt_replies.pop(SENDER)
    assert spool.run_queue(config, force=True).bounces == 1
    assert spool.run_queue(config, force=True).bounces == 0
    [notice] = smtp_server.messages
    assert notice.rcpt_tos == [SENDER] and b"<rcpt@dest.example>: 550 5.1.1" in notice.data


def test_unwritable_spool_is_cantcreat_and_claims_nothing(tmp_path: Path) -> None:
    # chmod does not stop root, a regular file in the path stops everyone.
    (tmp_path / "not-a-dir").write_text("")
    config = write_config(tmp_path, closed_port(), spool_dir=tmp_path / "not-a-dir" / "spool")
    group, data = group_for(config), message(1)
    error = TempFailError("127.0.0.1", "connection refused")
    with pytest.raises(CantCreateError) as raised:
        spool.handle_temporary_failure(
            config, group, data, smtputf8=False, eightbit=False, error=error
        )
    assert raised.value.exit_code == 73
    with pytest.raises(CantCreateError):
        spool.store_failed(config, group, data, reason="550")
    assert spool.handle_permanent_failure(config, group, data, error=error) is None
    assert spool.list_entries(config) == []
    assert listing_text(config) == "Mail queue is empty"


def test_damaged_envelope_does_not_stop_the_run(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    damaged, good = enqueue(config, 1), enqueue(config, 2)
    (tmp_path / "spool" / "queue" / f"{damaged}.toml").write_text("not = [toml")
    result = spool.run_queue(config, force=True)
    assert result.delivered == (good,)
    assert len(result.problems) == 1 and damaged in result.problems[0]
    assert result.exit_code == 75


def test_damaged_entry_is_listed_and_moved_aside_with_the_reason(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = write_config(tmp_path, closed_port())
    damaged, kept = enqueue(config, 1), enqueue(config, 2)
    (tmp_path / "spool" / "queue" / f"{damaged}.toml").write_text("not = [toml")
    listing = listing_text(config)
    assert damaged in listing and "unreadable envelope" in listing and kept in listing
    result = spool.run_queue(config, force=True)
    assert "moved to damaged/" in result.problems[0]
    aside = tmp_path / "spool" / "damaged"
    assert (aside / f"{damaged}.msg").exists() and (aside / f"{damaged}.toml").exists()
    assert "TOMLDecodeError" in (aside / f"{damaged}.reason").read_text()
    assert not (tmp_path / "spool" / "queue" / f"{damaged}.msg").exists()
    # mailq still names it, with the reason, and the next run no longer trips over it.
    listing = listing_text(config)
    assert damaged in listing and "TOMLDecodeError" in listing
    assert spool.run_queue(config, force=True).problems == ()


def test_an_envelope_copied_under_another_name_is_set_aside_not_sent_over_and_over(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """An envelope whose id is not its file's: delivered under one name and removed under
    the other, it went out on every run and took another entry's files with it."""
    config = write_config(tmp_path, smtp_server.port)
    copied, other = enqueue(config, 1), enqueue(config, 2)
    envelope = tmp_path / "spool" / "queue" / f"{copied}.toml"
    envelope.write_text(envelope.read_text().replace(copied, other))
    result = spool.run_queue(config, force=True)
    assert result.delivered == (other,)
    assert "moved to damaged/" in result.problems[0] and f"not {copied!r}" in result.problems[0]
    assert spool.run_queue(config, force=True) == spool.QueueRunResult()
    assert message_ids(smtp_server) == ["<2.spool@test.example>"]
    assert (tmp_path / "spool" / "damaged" / f"{copied}.msg").exists()


def test_an_envelope_without_its_message_is_set_aside_not_called_busy_forever(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    lost, good = enqueue(config, 1), enqueue(config, 2)
    (tmp_path / "spool" / "queue" / f"{lost}.msg").unlink()
    result = spool.run_queue(config, force=True)
    assert result.delivered == (good,) and result.busy == ()
    assert result.problems == (f"{lost}: damaged, moved to damaged/: its message file is missing",)
    assert (tmp_path / "spool" / "damaged" / f"{lost}.toml").exists()
    assert spool.run_queue(config, force=True) == spool.QueueRunResult()


def test_a_runner_that_sees_an_entry_half_moved_aside_leaves_it_to_the_first(
    tmp_path: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """move_aside takes the message first: a second runner that looks just then finds an
    envelope without its message, and must not set it aside again over the first reason."""
    config = write_config(tmp_path, smtp_server.port)
    damaged = enqueue(config, 1)
    (tmp_path / "spool" / "queue" / f"{damaged}.toml").write_text("not = [toml")
    replace = os.replace
    second: list[spool.QueueRunResult] = []

    def replace_then_look(source: Any, target: Any, **dir_fds: Any) -> None:
        replace(source, target, **dir_fds)
        if str(source).endswith(".msg") and not second:
            second.append(spool.run_queue(config, force=True))

    monkeypatch.setattr(os, "replace", replace_then_look)
    first = spool.run_queue(config, force=True)
    monkeypatch.undo()
    assert len(first.problems) == 1 and "TOMLDecodeError" in first.problems[0]
    assert second[0].problems == ()
    reason = tmp_path / "spool" / "damaged" / f"{damaged}.reason"
    assert "TOMLDecodeError" in reason.read_text()


# -- policies: fail vs queue, permanent failures --------------------------------------


def test_temporary_failure_policy_fail_queues_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), on_temporary_failure="fail")
    error = TempFailError("127.0.0.1", "connection refused")
    got = spool.handle_temporary_failure(
        config, group_for(config), message(1), smtputf8=False, eightbit=False, error=error
    )
    assert got is None
    assert spool.list_entries(config) == []


def test_permanent_failure_keeps_a_copy_with_the_reason(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    error = UnavailableError("relay:587", "554 5.7.1 relay access denied")
    failed_id = spool.handle_permanent_failure(config, group_for(config), message(1), error=error)
    assert failed_id is not None
    [entry] = spool.list_entries(config, failed=True)
    assert entry.id == failed_id and "554 5.7.1" in entry.reason
    assert spool.list_entries(config) == []


def test_550_for_one_of_three_recipients(tmp_path: Path, smtp_server_factory: Any) -> None:
    server = smtp_server_factory(fault="550-rcpt:bad@dest.example")
    config = write_config(tmp_path, server.port)
    rcpts = ("ok1@dest.example", "bad@dest.example", "ok2@dest.example")
    entry_id = enqueue(config, 1, SENDER, *rcpts)
    result = spool.run_queue(config, force=True)
    assert result.failed == (entry_id,) and result.bounces == 1
    original, bounce = server.messages
    assert original.rcpt_tos == ["ok1@dest.example", "ok2@dest.example"]
    assert bounce.mail_from in ("", "<>") and bounce.rcpt_tos == [SENDER]
    assert spool.list_entries(config) == []
    [failed] = spool.list_entries(config, failed=True)
    assert failed.recipients == ("bad@dest.example",)
    assert failed.origin == entry_id
    assert failed.replies["bad@dest.example"].startswith("550 5.1.1")
    assert "User unknown" in failed.reason


def test_temporary_refusal_keeps_recipients_pending(
    tmp_path: Path, smtp_server_factory: Any
) -> None:
    server = smtp_server_factory(fault="451-rcpt")
    config = write_config(tmp_path, server.port)
    entry_id = enqueue(config, 1, SENDER, "a@dest.example", "b@dest.example")
    assert spool.run_queue(config, force=True).deferred == (entry_id,)
    [entry] = spool.list_entries(config)
    assert entry.recipients == ("a@dest.example", "b@dest.example")
    assert len(entry.attempts) == 2 and "451" in entry.attempts[-1].reply
    assert spool.list_entries(config, failed=True) == []
    server.fault = None
    assert spool.run_queue(config, force=True).delivered == (entry_id,)
    assert server.messages[0].rcpt_tos == ["a@dest.example", "b@dest.example"]


def test_route_gone_fails_the_entry_clearly(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    config = write_config(tmp_path, smtp_server.port, bounce="false")
    group = RouteGroup(
        route=DomainConfig(name="old", location=config.domains["*"].location),
        envelope_from=SENDER,
        recipients=("rcpt@dest.example",),
    )
    entry_id = spool.enqueue(config, group, message(1), smtputf8=False, eightbit=False, reason="x")
    assert spool.run_queue(config, force=True).failed == (entry_id,)
    [failed] = spool.list_entries(config, failed=True)
    assert "[domain:old] is no longer in the configuration" in failed.reason
    assert smtp_server.messages == []


# -- expiry and bounces --------------------------------------------------------------


# The relay takes the notice for the sender and defers the message's recipient.
BUSY_RECIPIENT = "451-rcpt:rcpt@dest.example"


def test_expired_entry_bounces_exactly_once(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = BUSY_RECIPIENT
    config = write_config(tmp_path, smtp_server.port, queue_lifetime=0)
    entry_id = enqueue(config, 7)
    first = spool.run_queue(config)  # past its lifetime: due, though its backoff is not over
    assert first.expired == (entry_id,) and first.bounces == 1
    assert spool.run_queue(config, force=True) == spool.QueueRunResult()
    [bounce] = smtp_server.messages
    assert bounce.mail_from in ("", "<>") and bounce.rcpt_tos == [SENDER]
    notice = bounce.message()
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    assert notice["Auto-Submitted"] == "auto-replied"
    parts = list(notice.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert "rcpt@dest.example" in parts[0].get_content()
    fields = [f for f in parts[1].get_payload() if not isinstance(f, str)]
    assert len(fields) == 2
    assert fields[0]["Reporting-MTA"] == "dns; test.example"
    assert fields[1]["Final-Recipient"] == "rfc822; rcpt@dest.example"
    assert fields[1]["Action"] == "failed"
    assert fields[1]["Status"] == "4.2.0"  # the last attempt's, as Postfix reports it
    assert "451 4.2.0" in fields[1]["Diagnostic-Code"]
    assert "<7.spool@test.example>" in str(parts[2].get_payload())
    [failed] = spool.list_entries(config, failed=True)
    assert failed.reason.startswith("expired after 0s in the queue; last error: 127.0.0.1")
    assert "Mailbox busy" in failed.reason


@pytest.mark.parametrize("hostname", ["sender.example", "host.example"])
def test_a_notice_finds_a_route_without_default_domain_or_catch_all(
    tmp_path: Path, smtp_server: SMTPTestServer, hostname: str
) -> None:
    """Only [domain:sender.example]: the notice from <> goes by default_hostname's route
    when it has one (<> is MAILER-DAEMON@default_hostname), else back the message's way.
    It used to be dropped without a word."""
    path = tmp_path / "ssmtp-mailer.conf"
    path.write_text(
        f"[global]\ndefault_hostname = {hostname}\nspool_dir = {tmp_path / 'spool'}\n"
        f"log_file = {tmp_path / 'mail.log'}\nqueue_lifetime = 0\nmax_retries = 0\n"
        "enable_rate_limiting = false\n\n[domain:sender.example]\nsmtp_server = 127.0.0.1\n"
        f"smtp_port = {smtp_server.port}\nuse_starttls = false\nauth_method = NONE\n"
    )
    config = load_config(str(path))
    sender = "alice@sender.example"
    entry_id = enqueue(config, 3, sender)
    smtp_server.fault = BUSY_RECIPIENT
    result = spool.run_queue(config)
    assert result.expired == (entry_id,) and result.bounces == 1
    [notice] = smtp_server.messages
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == [sender]
    assert notice.message()["Subject"] == "Undelivered Mail Returned to Sender"


def test_expired_bounce_never_bounces_a_bounce(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    smtp_server.fault = BUSY_RECIPIENT
    config = write_config(tmp_path, smtp_server.port, queue_lifetime=0)
    entry_id = enqueue(config, 1, "")
    result = spool.run_queue(config)
    assert result.expired == (entry_id,) and result.bounces == 0
    assert smtp_server.messages == []
    assert len(spool.list_entries(config, failed=True)) == 1


def test_bounce_is_queued_when_the_relay_is_down(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), queue_lifetime=0)
    entry_id = enqueue(config, 1)
    assert spool.run_queue(config).expired == (entry_id,)
    [queued_bounce] = spool.list_entries(config)
    assert queued_bounce.sender == "" and queued_bounce.recipients == (SENDER,)


def test_retry_failed_moves_back_and_delivers(tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    config = write_config(tmp_path, smtp_server.port, bounce="false")
    error = UnavailableError("relay", "554 go away")
    failed_id = spool.handle_permanent_failure(config, group_for(config), message(3), error=error)
    assert failed_id is not None
    assert spool.retry_failed(config, failed_id) == failed_id
    assert spool.list_entries(config, failed=True) == []
    assert spool.run_queue(config).delivered == (failed_id,)  # due now, no --all needed
    assert message_ids(smtp_server) == ["<3.spool@test.example>"]


def test_locked_entry_is_skipped_and_cannot_be_deleted(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    entry_id = enqueue(config, 1)
    with open(tmp_path / "spool" / "queue" / f"{entry_id}.msg", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another runner in the middle of a delivery
        assert spool.run_queue(config, force=True).busy == (entry_id,)
        with pytest.raises(spool.EntryBusyError):
            spool.delete_entry(config, entry_id)
    assert smtp_server.messages == []
    assert spool.run_queue(config, force=True).delivered == (entry_id,)


def test_no_failure_notice_when_the_sender_asked_for_none(
    tmp_path: Path, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    """RFC 3461 §4.1: `-N never` (or `success`) means no failure notice, even on expiry."""
    from ssmtp_mailer.message import Dsn

    server = smtp_server_factory(fault=BUSY_RECIPIENT)
    config = write_config(tmp_path, server.port, queue_lifetime=1)
    for notify in ("NEVER", "SUCCESS"):
        spool.enqueue(
            config, group_for(config), message(1), smtputf8=False, eightbit=False,
            reason="relay down", dsn=Dsn(notify=notify),
        )  # fmt: skip
    time.sleep(1.2)
    result = spool.run_queue(config, force=True)
    assert len(result.expired) == 2 and result.bounces == 0
    assert server.messages == []


def test_a_message_being_linked_into_failed_is_not_debris(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """Between the hard link and its envelope, another runner must not take the old file."""
    config = write_config(tmp_path, smtp_server.port)
    entry_id = enqueue(config, 1)
    queue_msg = tmp_path / "spool" / "queue" / f"{entry_id}.msg"
    old = time.time() - spool.STALE_SECONDS - 60
    os.utime(queue_msg, (old, old))
    failed_msg = tmp_path / "spool" / "failed" / f"{entry_id}.msg"
    os.link(queue_msg, failed_msg)  # a runner failing the entry, its envelope not yet placed
    spool.run_queue(config, ids=[entry_id])
    assert failed_msg.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs: root only")
def test_a_full_disk_refuses_the_message_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Room for the message file but not for its envelope: 73, and the message file goes
    too, not holding the last free space until the 15-minute debris cleanup."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        config = write_config(tmp_path, closed_port(), spool_dir=small / "spool")
        store.ensure_spool(config)
        filler = small / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, filler.stat().st_size - 4096)  # one block left: the message's
        with pytest.raises(CantCreateError, match="No space left"):
            spool.enqueue(
                config, group_for(config), message(7) + b"y" * 3000, smtputf8=False,
                eightbit=False, reason="relay down",
            )  # fmt: skip
        assert os.listdir(small / "spool" / "queue") == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_runner_that_listed_the_queue_mid_retry_leaves_the_message_alone(
    tmp_path: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another runner listed queue/ between retry-failed's link and its envelope, and
    looked closer once the move was done: the old message file, hard-linked with its
    old mtime and nothing left in failed/, looked like a crash's debris and was removed."""

    config = write_config(tmp_path, smtp_server.port)
    error = UnavailableError("relay", "550 no")
    failed_id = spool.handle_permanent_failure(config, group_for(config), message(5), error=error)
    assert failed_id is not None
    failed_msg = tmp_path / "spool" / "failed" / f"{failed_id}.msg"
    old = time.time() - spool.STALE_SECONDS - 60
    os.utime(failed_msg, (old, old))
    queue_dir = tmp_path / "spool" / "queue"
    os.link(failed_msg, queue_dir / failed_msg.name)
    listed_mid_move = os.listdir(queue_dir)  # the message linked in, its envelope not yet
    (queue_dir / failed_msg.name).unlink()
    assert spool.retry_failed(config, failed_id) == failed_id
    monkeypatch.setattr(os, "listdir", lambda directory: listed_mid_move)
    spool_runner._clean_debris(queue_dir, time.time())
    monkeypatch.undo()
    assert spool.run_queue(config, force=True).delivered == (failed_id,)
    assert message_ids(smtp_server) == ["<5.spool@test.example>"]


def test_an_smtputf8_recipient_gets_its_sender_a_notice(
    tmp_path: Path, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    from ssmtp_mailer.message import Dsn

    server = smtp_server_factory()
    config = write_config(tmp_path, server.port, queue_lifetime=1)
    spool.enqueue(
        config, group_for(config, SENDER, "jörg@exämple.org"), message(1), smtputf8=True,
        eightbit=False, reason="relay down", dsn=Dsn(envid="env-42"),
    )  # fmt: skip
    time.sleep(1.2)
    result = spool.run_queue(config, force=True)
    assert result.bounces == 1 and result.problems == ()
    [notice] = server.messages
    assert notice.rcpt_tos == [SENDER]
    assert b"Final-Recipient: utf-8; j\\x{F6}rg@ex\\x{E4}mple.org" in notice.data
    assert b"Original-Envelope-Id: env-42" in notice.data


def test_past_its_lifetime_only_the_recipients_still_deferred_expire(
    tmp_path: Path, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    """The last attempt delivers to one, is refused for good by one and deferred by one:
    the first has it, the second fails as at any age, the third expires."""
    server = smtp_server_factory(fault="451-rcpt:busy@dest.example")
    server.rcpt_replies["gone@dest.example"] = "550 5.1.1 User unknown"
    config = write_config(tmp_path, server.port, queue_lifetime=0)
    rcpts = ("ok@dest.example", "gone@dest.example", "busy@dest.example")
    entry_id = enqueue(config, 1, SENDER, *rcpts)
    result = spool.run_queue(config)
    assert result.expired == (entry_id,) and result.failed == (entry_id,)
    assert result.deferred == () and spool.list_entries(config) == []
    original, *notices = server.messages
    assert original.rcpt_tos == ["ok@dest.example"] and len(notices) == 2
    failed = {e.recipients: e for e in spool.list_entries(config, failed=True)}
    assert set(failed) == {("gone@dest.example",), ("busy@dest.example",)}
    assert failed[("gone@dest.example",)].reason.startswith("127.0.0.1")
    assert failed[("busy@dest.example",)].reason.startswith("expired after 0s")
    assert "Mailbox busy" in failed[("busy@dest.example",)].replies["busy@dest.example"]
