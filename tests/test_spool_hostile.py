"""Root in a spool its owner (`mail`) may have turned hostile: links planted inside it are
refused with one line, never followed. Real symlinks and files; root runs the real commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from relayconf import RunMain
from smtpserver import SMTPTestServer
from test_spool import closed_port, write_config

from ssmtp_mailer import listener, spool
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import CantCreateError
from ssmtp_mailer.rewrite import plan_delivery
from ssmtp_mailer.submit import MAILDROP_MAGIC

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root is who must not follow the links")

MESSAGE = b"From: root@test.example\r\nTo: rcpt@dest.example\r\nSubject: hi\r\n\r\nbody\r\n"


def queue_run(config: Config) -> subprocess.CompletedProcess[str]:
    """Root's `queue run --all` in a process of its own, whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(config.main_file), "queue", "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def drop_file(directory: Path, name: str, recipient: str = "rcpt@dest.example") -> Path:
    """A maildrop file as a submitter writes it (root's own: root may send as anyone)."""
    envelope = {"sender": "root@test.example", "recipients": [recipient]}
    path = directory / name
    path.write_bytes(MAILDROP_MAGIC + json.dumps(envelope).encode() + b"\n" + MESSAGE)
    return path


def outside(tmp_path: Path) -> Path:
    """A directory outside the spool (standing in for /etc), with things in it."""
    target = tmp_path / "etc"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    (target / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (target / "hosts.link").symlink_to(target / "passwd")
    os.link(target / "passwd", target / "passwd.bak")
    return target


def plant(name: Path, target: Path) -> None:
    """What a compromised `mail` does: its spool directory's entry made a link."""
    if name.is_dir():
        name.rmdir()
    name.symlink_to(target)


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each name's mode, link count and content: what an administrator would see change."""
    out = {}
    for path in directory.iterdir():
        st = path.lstat()
        data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        out[path.name] = (st.st_mode, st.st_nlink, data)
    return out


def test_a_maildrop_link_is_not_chmodded_by_root_s_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, closed_port())
    root = spool.store.ensure_spool(config)
    target = outside(tmp_path)
    plant(root / "maildrop", target)
    before = snapshot(target)
    assert listener.bind_submit_socket(config) is None
    assert target.stat().st_mode & 0o7777 == 0o755  # not made 1733, world-writable
    assert snapshot(target) == before
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"ssmtp-mailer: listen: no local submission socket: spool {root / 'maildrop'}:"
        " not a real directory (a symbolic link or a file): refused"
    )


def test_a_maildrop_link_is_not_emptied_by_root_s_queue_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port())
    root = spool.store.ensure_spool(config)
    target = outside(tmp_path)
    (target / "junk").write_bytes(b"not a maildrop file")
    plant(root / "maildrop", target)
    before = snapshot(target)
    run = queue_run(config)
    assert snapshot(target) == before  # no link or second name removed, nothing moved out
    assert not (root / "corrupt").exists()
    assert run.returncode == 75
    assert run.stderr.splitlines() == [
        f"ssmtp-mailer: queue run: {root / 'maildrop'}: not a real directory"
        " (a symbolic link or a file): refused; nothing picked up"
    ]


def test_a_corrupt_link_gets_no_file_and_the_message_beside_it_still_goes(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    root = spool.store.ensure_spool(config)
    spool.store.open_for_submission(root)
    target = tmp_path / "elsewhere"
    target.mkdir()
    plant(root / "corrupt", target)
    (root / "maildrop" / "a-junk").write_bytes(b"not mail")
    drop_file(root / "maildrop", "b-mail")
    run = queue_run(config)
    assert list(target.iterdir()) == []  # nothing created through the link
    assert [p.name for p in (root / "maildrop").iterdir()] == ["a-junk"]  # kept for the admin
    assert run.returncode == 75
    [line] = run.stderr.splitlines()
    assert line == (
        f"ssmtp-mailer: queue run: maildrop a-junk: {root / 'corrupt'}:"
        " not a real directory (a symbolic link or a file): refused"
    )
    [got] = smtp_server.wait_for(1)
    assert got.rcpt_tos == ["rcpt@dest.example"]


@pytest.mark.parametrize("area", ["queue", "failed", "damaged"])
def test_a_queue_area_link_is_neither_filled_nor_run(tmp_path: Path, area: str) -> None:
    config = write_config(tmp_path, closed_port())
    root = spool.store.ensure_spool(config)
    target = outside(tmp_path)
    (target / "0000000000000000A.msg").write_bytes(b"old debris")
    os.utime(target / "0000000000000000A.msg", (0, 0))
    if area != "queue":
        spool.enqueue(
            config,
            plan_delivery(config, "root@test.example", ["rcpt@dest.example"]).groups[0],
            MESSAGE,
            smtputf8=False,
            eightbit=False,
            reason="test",
        )
    plant(root / area, target)
    before = snapshot(target)
    if area == "queue":
        group = plan_delivery(config, "root@test.example", ["rcpt@dest.example"]).groups[0]
        with pytest.raises(CantCreateError) as caught:
            spool.enqueue(config, group, MESSAGE, smtputf8=False, eightbit=False, reason="x")
        assert caught.value.why == "not a real directory (a symbolic link or a file): refused"
        assert caught.value.what == f"spool {root / 'queue'}"
    run = queue_run(config)
    assert snapshot(target) == before
    assert run.returncode == 75
    assert run.stderr.splitlines() == [
        f"ssmtp-mailer: queue run: {root / area}: not a real directory"
        " (a symbolic link or a file): refused; nothing in the queue was run"
    ]


def test_a_rate_limit_state_link_leaves_its_target_alone_and_the_message_goes(
    tmp_path: Path, smtp_server: SMTPTestServer, run_main: RunMain
) -> None:
    log = tmp_path / "mail.log"
    config = write_config(
        tmp_path, smtp_server.port, enable_rate_limiting="true", rate_limit_per_minute=100,
        log_file=log,
    )  # fmt: skip
    state = spool.store.ensure_area(config, "ratelimit")
    precious = tmp_path / "shadow"
    precious.write_text("root:$y$secret:19000:0:99999:7:::\n")
    (state / "global.times").symlink_to(precious)
    code, _, err = run_main(["-C", str(config.main_file), "-i", "rcpt@dest.example"], MESSAGE)
    assert code == 0, err
    assert precious.read_text() == "root:$y$secret:19000:0:99999:7:::\n"  # not truncated
    assert (state / "global.times").is_symlink()
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["rcpt@dest.example"]
    [line] = [x for x in log.read_text().splitlines() if "rate limit" in x]
    assert "rate limit state not usable" in line and "sending unthrottled" in line


def test_a_huge_sparse_maildrop_file_is_set_aside_unread_and_the_others_go(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """3 GB that cost its writer 4 KB of disk, sorted first: the run read it whole and died
    (MemoryError, exit 70) on every run, and nobody's mail behind it was ever picked up."""
    import resource

    config = write_config(tmp_path, smtp_server.port, max_message_size=100_000)
    root = spool.store.ensure_spool(config)
    spool.store.open_for_submission(root)
    huge = drop_file(root / "maildrop", "0-huge")
    with huge.open("r+b") as handle:
        handle.truncate(3 << 30)
    drop_file(root / "maildrop", "1-mail")

    def small_memory() -> None:  # as on a small machine: 3 GB will never fit
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    run = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(config.main_file), "queue", "run"],
        capture_output=True, text=True, timeout=60, preexec_fn=small_memory,
    )  # fmt: skip
    assert run.returncode == 75, run.stderr
    assert run.stdout.startswith("queue run: 1 taken from the maildrop and handed on")
    assert run.stderr.splitlines() == [
        "ssmtp-mailer: queue run: maildrop 0-huge from uid 0 (root): 3221225472 octets, over"
        f" max_message_size (100000 octets); moved unread to {root / 'corrupt' / '0-huge'}"
    ]
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["rcpt@dest.example"]
    assert (root / "corrupt" / "0-huge").stat().st_size == 3 << 30
    assert list((root / "maildrop").iterdir()) == []


def test_a_maildrop_name_with_a_newline_forges_no_log_line(
    tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    log = tmp_path / "mail.log"
    config = write_config(tmp_path, smtp_server.port, log_file=log)
    root = spool.store.ensure_spool(config)
    spool.store.open_for_submission(root)
    forged = "x\n2030-01-01T00:00:00+0000 ssmtp-mailer[1]: info: maildrop y: 250 sent"
    (root / "maildrop" / forged).write_bytes(b"not mail")
    drop_file(root / "maildrop", "z\nsent")
    run = queue_run(config)
    assert run.returncode == 75
    [told] = run.stderr.splitlines()  # one line for the junk, however it is named
    assert told.startswith('ssmtp-mailer: queue run: maildrop "x 2030-01-01T00:00:00+0000 ')
    lines = log.read_text().splitlines()
    # The error, the delivery, the pickup's note: each a line of this process's.
    assert len(lines) == 3
    pids = {re.match(r"\d{4}-\S+ ssmtp-mailer\[(\d+)\]: ", x) for x in lines}
    assert None not in pids and len({m.group(1) for m in pids if m}) == 1
    assert not any(x.startswith("2030-") for x in lines)
    assert 'error: maildrop "x 2030-01-01T00:00:00+0000 ssmtp-mailer[1]: ' in lines[0]
    assert 'info: maildrop "z sent" from uid 0 (root): 250 ' in lines[2]
    assert (root / "corrupt" / forged).read_bytes() == b"not mail"
