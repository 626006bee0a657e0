"""What a local user can do to a running system: entries in the maildrop no pickup can take,
and `mailq` by a user who may read neither the relay's secrets nor the queue.

Real processes as `nobody` (setpriv, as tests/test_submit.py runs them), a real relay
(tests/smtpserver.py), a real listener. Skipped unless run as root. The systemd unit's
own root commands are checked by packaging/check-deb.sh, in a throwaway Debian root.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer
from test_listener import Listener, run_queue
from test_submit import (
    MESSAGE,
    _as_nobody,
    _skip_reason,
    nobody_sendmail,
    queue_run_with_problems,
    readable_main,
    shared_dir,
    tree,
)

from ssmtp_mailer.submit import MAILDROP_MAGIC

pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))

__all__ = ["shared_dir", "tree"]  # fixtures, shared with tests/test_submit.py

NOBODY = "uid 65534 (nobody)"

# What a local user leaves in maildrop/ (1733) that is no message: each kind once.
PLANT = """
import os, socket
drop = {drop!r}
os.mkdir(os.path.join(drop, "empty"))
os.mkdir(os.path.join(drop, "full"))
open(os.path.join(drop, "full", "note"), "w").write("mine")
os.mkdir(os.path.join(drop, ".tmp-dir"))
os.mkfifo(os.path.join(drop, "fifo"))
socket.socket(socket.AF_UNIX).bind(os.path.join(drop, "sock"))
os.symlink("/etc/passwd", os.path.join(drop, "link"))
"""


def _log_lines(log: Path, name: str) -> list[str]:
    """The log's lines about the maildrop entry `name`."""
    lines = log.read_text().splitlines()
    return [x for x in lines if f"maildrop {name} " in x or f"maildrop {name}:" in x]


def test_what_no_pickup_can_take_is_cleared_once_and_never_named_again(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """A directory nobody made in the maildrop was named at every pickup ("Is a
    directory"), forever; a socket too. Now each entry that is no file is removed (an
    empty directory, a FIFO, a socket, a link) or, a directory with something in it,
    moved to corrupt/ as junk files are: named once, and the message beside it goes."""
    spool = tree.parent / "spool"
    spool.mkdir()
    run_queue(tree)
    drop = spool / "maildrop"
    planted = _as_nobody(shared_dir, ["-c", PLANT.format(drop=str(drop))], b"", {})
    assert planted.returncode == 0, planted.stderr
    assert nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE).returncode == 0
    log = tree.parent / "mail.log"
    with tree.open("a") as main:
        main.write(f"log_file = {log}\n")

    first = queue_run_with_problems(tree)
    assert first.returncode == 75, first.stderr
    told = "ssmtp-mailer: queue run: maildrop"
    assert first.stderr.splitlines() == [
        f"{told} .tmp-dir from {NOBODY}: an empty directory, removed",
        f"{told} empty from {NOBODY}: an empty directory, removed",
        f"{told} fifo from {NOBODY}: a FIFO, removed",
        f"{told} full from {NOBODY}: a directory with something in it;"
        f" moved to {spool / 'corrupt' / 'full'}",
        f"{told} link: a symbolic link, removed",
        f"{told} sock from {NOBODY}: a socket, removed",
    ]
    assert "1 taken from the maildrop" in first.stdout
    assert smtp_server.wait_for(1)[0].mail_from == "nobody@host.example"
    assert list(drop.iterdir()) == []
    kept = spool / "corrupt" / "full" / "note"
    assert kept.read_text() == "mine" and kept.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert Path("/etc/passwd").is_file()

    for _ in range(2):  # the next pickups: nothing left to name
        again = queue_run_with_problems(tree)
        assert (again.returncode, again.stderr) == (0, ""), again.stderr
    for name in (".tmp-dir", "empty", "fifo", "full", "link", "sock"):
        assert len(_log_lines(log, name)) == 1, (name, log.read_text())


def _drop(directory: Path, name: str) -> None:
    """A maildrop file as root's sendmail leaves it (root may send as anyone), for name@."""
    envelope = {"sender": "root@host.example", "recipients": [f"{name}@far.example"]}
    path = directory / name
    path.write_bytes(MAILDROP_MAGIC + json.dumps(envelope).encode() + b"\n" + MESSAGE)
    path.chmod(0o644)  # the listener reads it as spool_user


@pytest.fixture
def checkout_for_nobody() -> None:
    """The listener below imports more of the package once it is nobody: from this checkout."""
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run(
        [*nobody, sys.executable, "-c", "import ssmtp_mailer.pickup, ssmtp_mailer.relay.engine"],
        capture_output=True,
        cwd="/",
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this checkout: {probe.stderr[-300:]!r}")


@pytest.mark.usefixtures("checkout_for_nobody")
def test_the_listener_as_spool_user_clears_what_it_may_and_leaves_the_rest_to_root(
    smtp_server: SMTPTestServer,
) -> None:
    """The listener runs as spool_user and picks up every 5 seconds. What it may clear from
    the sticky maildrop it owns (an empty directory, a FIFO) it clears and names once; a
    directory of another user's with something in it, which only root may move (its `..`
    changes), it leaves unnamed to root's queue run, which moves it aside, once."""
    base = Path(tempfile.mkdtemp(prefix="ops-listener-", dir="/tmp"))
    try:
        base.chmod(0o755)
        main = readable_main(base, smtp_server.port)
        log = base / "mail.log"
        log.touch()
        text = main.read_text().replace(
            "[domain:*]",
            f"spool_user = nobody\nlisten_user = nobody\nlog_file = {log}\n\n[domain:*]",
        )
        main.write_text(text)
        nobody = pwd.getpwnam("nobody")
        (base / "spool").mkdir()
        os.chown(base / "spool", nobody.pw_uid, nobody.pw_gid)
        os.chown(log, nobody.pw_uid, -1)  # the listener writes it as listen_user
        run_queue(main)  # root opens maildrop/ 1733 in it, owned as the spool is
        drop = base / "spool" / "maildrop"
        assert drop.stat().st_uid == nobody.pw_uid
        (drop / "empty").mkdir()
        (drop / "full").mkdir(mode=0o755)
        (drop / "full" / "note").write_text("root's")
        os.mkfifo(drop / "fifo")
        _drop(drop, "first")

        listener = Listener(main)
        try:
            assert smtp_server.wait_for(1)[0].rcpt_tos == ["first@far.example"]
            _drop(drop, "second")  # taken by a later pickup, which sees the rest again
            assert smtp_server.wait_for(2, timeout=15)[1].rcpt_tos == ["second@far.example"]
        finally:
            assert listener.stop(signal.SIGTERM) == 0
        assert sorted(p.name for p in drop.iterdir()) == ["full"]
        for name, what in (("empty", "an empty directory, removed"), ("fifo", "a FIFO, removed")):
            [line] = _log_lines(log, name)
            assert f"maildrop {name} from uid 0 (root): {what}" in line
        assert _log_lines(log, "full") == []

        first = queue_run_with_problems(main)
        assert first.returncode == 75
        kept = base / "spool" / "corrupt" / "full"
        assert first.stderr.splitlines() == [
            "ssmtp-mailer: queue run: maildrop full from uid 0 (root):"
            f" a directory with something in it; moved to {kept}"
        ]
        assert (kept / "note").read_text() == "root's"
        again = queue_run_with_problems(main)
        assert (again.returncode, again.stderr) == (0, "")
        assert len(_log_lines(log, "full")) == 1
    finally:
        shutil.rmtree(base)


def _packaged_secrets(main: Path) -> None:
    """relay.conf as the package ships it: root:mail 0640 in a directory anyone may enter."""
    domains = main.parent / "domains"
    domains.chmod(0o755)
    os.chown(domains / "relay.conf", 0, pwd.getpwnam("mail").pw_gid)
    (domains / "relay.conf").chmod(0o640)


MAILQ = "import sys; sys.argv[0] = 'mailq'; from ssmtp_mailer.entry import script; script()"


# Every way to list the queue, as arguments of /usr/bin/python3.
LISTINGS = (
    ["-c", MAILQ],
    ["-m", "ssmtp_mailer", "sendmail", "-bp"],
    ["-m", "ssmtp_mailer", "queue", "list"],
    ["-m", "ssmtp_mailer", "queue", "list", "--json"],
)


def test_a_user_who_may_read_neither_the_secrets_nor_the_queue_hears_so_in_one_line(
    shared_dir: Path, tree: Path
) -> None:
    """With the packaged layout, mailq, sendmail -bp and queue list by a user said
    `relay.conf: cannot read: Permission denied` and exited 78. A configuration file
    the user cannot read is no error (SPEC §8); the queue they cannot read is said in
    one line, 77, with the maildrop's count when this user may see it."""
    spool = tree.parent / "spool"
    spool.mkdir()
    run_queue(tree)  # queue/ and failed/ 2770 mail:mail, as the package ships them
    _packaged_secrets(tree)
    env = {"SSMTP_MAILER_CONFIG": str(tree)}
    one_line = (
        f"ssmtp-mailer: queue {spool / 'queue'}: not readable by this user"
        " (root and spool_user mail can list it)"
    )
    for args in LISTINGS:
        run = _as_nobody(shared_dir, args, b"", env)
        assert (run.returncode, run.stdout, run.stderr.decode()) == (77, b"", one_line + "\n")
    failed = _as_nobody(shared_dir, ["-m", "ssmtp_mailer", "queue", "list", "--failed"], b"", env)
    assert failed.returncode == 77
    assert failed.stderr.decode().splitlines() == [
        f"ssmtp-mailer: failed {spool / 'failed'}: not readable by this user"
        " (root and spool_user mail can list it)"
    ]
    # A maildrop this user may list (not the packaged 1733): what waits there is said too.
    assert nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE).returncode == 0
    (spool / "maildrop").chmod(0o1737)
    run = _as_nobody(shared_dir, ["-c", MAILQ], b"", env)
    assert run.returncode == 77
    assert run.stderr.decode().splitlines() == [
        f"{one_line}; 1 in the maildrop, for `ssmtp-mailer queue run` to pick up"
    ]


def test_a_user_who_may_read_the_queue_but_not_the_secrets_lists_it(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """spool_user itself (here nobody) reads queue/ but not the relay's password: it lists
    the queue, as root does, with what waits in the maildrop."""
    with tree.open("a") as main:
        main.write("spool_user = nobody\n")
    spool = tree.parent / "spool"
    smtp_server.fault = "421-mail"
    queued = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "-C", str(tree), "sendmail", "-i", "out@x.example"],
        input=MESSAGE,
        capture_output=True,
        timeout=60,
    )
    assert queued.returncode == 0 and b"queued as" in queued.stderr, queued.stderr
    _packaged_secrets(tree)
    assert nobody_sendmail(shared_dir, tree, ["-i", "later@far.example"], MESSAGE).returncode == 0
    env = {"SSMTP_MAILER_CONFIG": str(tree)}
    for args in LISTINGS:
        run = _as_nobody(shared_dir, args, b"", env)
        out = run.stdout.decode()
        assert (run.returncode, run.stderr) == (0, b""), (args, run.stderr)
        if "--json" in args:
            [entry] = json.loads(out)
            assert entry["recipients"] == ["out@x.example"]
        else:
            assert "out@x.example" in out and "-- 1 Kbytes in 1 Request." in out, out
            assert "-- 1 in the maildrop, for `ssmtp-mailer queue run` to pick up" in out
    assert len(list((spool / "maildrop").iterdir())) == 1
