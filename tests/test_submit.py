"""Local submission by a user who cannot read the secrets (SPEC §8), as the real `nobody`.

`nobody` runs Debian's /usr/bin/python3 (root's pyenv is not executable for other users)
on a world-readable copy of the package, under `setpriv`. Skipped unless run as root.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from smtpserver import SMTPTestServer
from test_listener import Listener, run_queue

from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.spool import list_entries

PACKAGE = Path(__file__).resolve().parent.parent / "ssmtp_mailer"
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = "nobody"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to become nobody"
    if not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON):
        return "needs setpriv and /usr/bin/python3"
    try:
        pwd.getpwnam(NOBODY)
    except KeyError:
        return "no user nobody"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can reach, with a copy of the package in it."""
    root = Path(tempfile.mkdtemp(prefix="ssmtp-mailer-submit-", dir="/tmp"))
    root.chmod(0o755)
    shutil.copytree(
        PACKAGE, root / "code" / "ssmtp_mailer", ignore=shutil.ignore_patterns("__pycache__")
    )
    # The pure-Python dependencies, from this interpreter's environment: a CI machine's
    # /usr/bin/python3 need not have Debian's python3-click and friends installed.
    # aiosmtpd (with public and attr) for `config check`, which looks at the listener's TLS.
    for name in ("click", "platformdirs", "tomli_w", "aiosmtpd", "public", "attr"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations
        source = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(source, root / "code" / name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (root / "code").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (root / "code").chmod(0o755)
    probe = _as_nobody(root, ["-c", "import ssmtp_mailer.sendmail, ssmtp_mailer.submit"], b"", {})
    if probe.returncode != 0:
        shutil.rmtree(root)
        pytest.skip(f"/usr/bin/python3 cannot run the package as nobody: {probe.stderr[-300:]!r}")
    yield root
    shutil.rmtree(root)


def _as_nobody(
    root: Path, args: list[str], stdin: bytes, env: dict[str, str], *, groups: str = ""
) -> subprocess.CompletedProcess[bytes]:
    """`groups`: supplementary groups for nobody (setpriv --groups), else none."""
    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PYTHONPATH": str(root / "code"),
        "PYTHONDONTWRITEBYTECODE": "1",
        **env,
    }
    return subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            f"--groups={groups}" if groups else "--clear-groups",
            SYSTEM_PYTHON,
            *args,
        ],
        input=stdin,
        capture_output=True,
        env=environment,
        cwd="/",
        timeout=60,
    )


@pytest.fixture
def tree(shared_dir: Path, smtp_server: SMTPTestServer) -> Iterator[Path]:
    """Main file 0644 with [global] only; the route (a relay password) in a 0600 root file."""
    base = Path(tempfile.mkdtemp(prefix="tree-", dir=shared_dir))
    base.chmod(0o755)
    main = base / "ssmtp-mailer.conf"
    main.write_text(
        f"[global]\ndefault_hostname = host.example\nspool_dir = {base / 'spool'}\n"
        "max_retries = 0\nenable_rate_limiting = false\nlisten_user = root\n"
        "allowed_networks = 127.0.0.1/32\n"
    )
    main.chmod(0o644)
    (base / "domains").mkdir(mode=0o700)
    secret = base / "domains" / "relay.conf"
    secret.write_text(
        f"[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {smtp_server.port}\n"
        "use_starttls = false\nauth_method = NONE\npassword = relay-secret-never-shown\n"
        "\n[user:nobody@partner.example]\ncan_send_from = true\n"
    )
    secret.chmod(0o600)
    yield main
    shutil.rmtree(base)


def nobody_sendmail(
    shared_dir: Path, main: Path, args: list[str], message: bytes
) -> subprocess.CompletedProcess[bytes]:
    return _as_nobody(
        shared_dir,
        ["-m", "ssmtp_mailer", "sendmail", *args],
        message,
        {"SSMTP_MAILER_CONFIG": str(main)},
    )


def queue_run_with_problems(main: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """`queue run` (or `command`) as root, whatever its exit code (run_queue wants 0)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmtp_mailer",
            "--config",
            str(main),
            *(command or ("queue", "run")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def readable_main(base: Path, port: int) -> Path:
    """A 0644 main file with the route in it too (no secret), relaying to 127.0.0.1:port."""
    main = base / "ssmtp-mailer.conf"
    main.write_text(
        f"[global]\ndefault_hostname = host.example\nspool_dir = {base / 'spool'}\n"
        "max_retries = 0\nenable_rate_limiting = false\n\n"
        f"[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {port}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    main.chmod(0o644)
    return main


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


MESSAGE = b"Subject: from nobody\nTo: out@far.example\n\nhello from a cron job\n"


@pytest.fixture
def running_listener(tree: Path) -> Iterator[Listener]:
    listener = Listener(tree)
    yield listener
    listener.stop(signal.SIGTERM)


def test_nobody_cannot_read_the_secrets_yet_sends_through_the_socket(
    shared_dir: Path, tree: Path, running_listener: Listener, smtp_server: SMTPTestServer
) -> None:
    sock = tree.parent / "spool" / "submit.sock"
    assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o666
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    assert b"relay-secret" not in run.stdout + run.stderr
    got = smtp_server.wait_for(1)[0]
    assert got.mail_from == "nobody@host.example"
    assert got.rcpt_tos == ["out@far.example"]
    received = str(got.message()["Received"])
    assert "uid 65534 (nobody)" in received
    assert "submit.sock" in received


def test_nobody_cannot_claim_another_users_address_on_the_socket(
    shared_dir: Path, tree: Path, running_listener: Listener, smtp_server: SMTPTestServer
) -> None:
    run = nobody_sendmail(
        shared_dir, tree, ["-i", "-f", "root@host.example", "out@far.example"], MESSAGE
    )
    assert run.returncode == 77
    assert b"root@host.example: sender address not owned by uid 65534 (nobody)" in run.stderr
    # The listener checks what the submitter could not: this domain needs a [user:].
    run = nobody_sendmail(
        shared_dir, tree, ["-i", "-f", "nobody@other.example", "out@far.example"], MESSAGE
    )
    assert run.returncode == 77
    assert b"553 5.7.1" in run.stderr
    run = nobody_sendmail(
        shared_dir, tree, ["-i", "-f", "nobody@partner.example", "out@far.example"], MESSAGE
    )
    assert run.returncode == 0, run.stderr
    got = smtp_server.wait_for(1)
    assert [m.mail_from for m in got] == ["nobody@partner.example"]


def test_nobody_speaks_smtp_with_sendmail_bs_through_the_listener(
    shared_dir: Path, tree: Path, running_listener: Listener, smtp_server: SMTPTestServer
) -> None:
    session = (
        b"EHLO app.example\r\nMAIL FROM:<nobody@host.example>\r\nRCPT TO:<out@far.example>\r\n"
        b"DATA\r\nSubject: over -bs\r\n\r\nhi\r\n.\r\n"
        b"MAIL FROM:<root@host.example>\r\nQUIT\r\n"
    )
    run = nobody_sendmail(shared_dir, tree, ["-bs"], session)
    assert run.returncode == 0, run.stderr
    replies = run.stdout.decode().splitlines()
    assert replies[0].startswith("220 ")
    assert any(r.startswith("250 2.0.0 OK") for r in replies), "\n".join(replies)
    assert any(r.startswith("553 5.7.1 <root@host.example>") for r in replies), replies
    got = smtp_server.wait_for(1)[0]
    assert got.message()["Subject"] == "over -bs"
    assert "uid 65534 (nobody)" in str(got.message()["Received"])


DSN_FLAGS = ["-N", "success,failure", "-R", "hdrs", "-V", "cron+job=7"]


def test_nobody_s_dsn_flags_reach_the_relay_through_the_socket(
    shared_dir: Path, tree: Path, running_listener: Listener, smtp_server: SMTPTestServer
) -> None:
    smtp_server.dsn = True
    run = nobody_sendmail(shared_dir, tree, ["-i", *DSN_FLAGS, "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    got = smtp_server.wait_for(1)[0]
    assert "submit.sock" in str(got.message()["Received"])
    assert got.mail_options[-2:] == ["RET=HDRS", "ENVID=cron+2Bjob+3D7"]
    assert got.rcpt_options == ["NOTIFY=SUCCESS,FAILURE"]


def test_nobody_s_sendmail_bs_passes_dsn_parameters_through_the_listener(
    shared_dir: Path, tree: Path, running_listener: Listener, smtp_server: SMTPTestServer
) -> None:
    smtp_server.dsn = True
    session = (
        b"EHLO app.example\r\nMAIL FROM:<nobody@host.example> ENVID=Run-9\r\n"
        b"RCPT TO:<out@far.example> NOTIFY=NEVER\r\nRCPT TO:<two@far.example>\r\n"
        b"DATA\r\nSubject: over -bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    run = nobody_sendmail(shared_dir, tree, ["-bs"], session)
    replies = run.stdout.decode().splitlines()
    assert "250-DSN" in replies
    assert any(r.startswith("455 4.5.4 <two@far.example>") for r in replies), replies
    got = smtp_server.wait_for(1)[0]
    assert got.rcpt_tos == ["out@far.example"]
    assert got.mail_options[-1:] == ["ENVID=Run-9"] and got.rcpt_options == ["NOTIFY=NEVER"]


def test_sendmail_bs_without_a_listener_says_421(shared_dir: Path, tree: Path) -> None:
    run = nobody_sendmail(shared_dir, tree, ["-bs"], b"EHLO x\r\nQUIT\r\n")
    assert run.returncode == 75
    assert run.stdout.startswith(b"421 4.3.2")
    assert b"hint: start `ssmtp-mailer listen`" in run.stderr


def test_without_a_listener_nobody_sends_through_the_maildrop(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    (tree.parent / "spool").mkdir()
    run_queue(tree)  # root's first run opens the maildrop of an existing spool
    drop = tree.parent / "spool" / "maildrop"
    assert drop.stat().st_mode & 0o7777 == 0o1733
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    files = list(drop.iterdir())
    assert len(files) == 1 and files[0].stat().st_uid == pwd.getpwnam(NOBODY).pw_uid
    assert files[0].stat().st_mode & 0o777 == 0o600
    assert smtp_server.messages == []
    assert run_queue(tree).startswith(
        "queue run: 1 taken from the maildrop and handed on; from the queue: 0 delivered"
    )
    got = smtp_server.wait_for(1)[0]
    assert got.mail_from == "nobody@host.example"
    assert "uid 65534 (nobody)" in str(got.message()["Received"])
    assert list(drop.iterdir()) == []
    run_queue(tree)
    time.sleep(0.2)
    assert len(smtp_server.messages) == 1


def test_without_a_maildrop_nobody_is_told_what_makes_one(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """No spool at all, then a spool without maildrop/: exit 73 each time, and the hint
    names what really opens the way (root's queue run only opens an existing spool's)."""
    spool = tree.parent / "spool"
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 73
    assert f"there is no spool {spool} yet: the package makes it" in run.stderr.decode()
    spool.mkdir()
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 73
    assert "hint: root's `ssmtp-mailer queue run` opens it" in run.stderr.decode()
    run_queue(tree)  # as the hint says
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    run_queue(tree)
    assert smtp_server.wait_for(1)[0].mail_from == "nobody@host.example"


def test_junk_in_the_maildrop_is_set_aside_once_and_mail_beside_it_goes(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """Any user may write into maildrop/: what is no message goes to corrupt/, named once in
    the log (not at every pickup), and the real message next to it is delivered."""
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    drop = tree.parent / "spool" / "maildrop"
    junk = _as_nobody(
        shared_dir, ["-c", f"open({str(drop / 'junk')!r}, 'wb').write(b'not mail')"], b"", {}
    )
    assert junk.returncode == 0, junk.stderr
    # An envelope nested too deep for the JSON reader: set aside as well, not a crash.
    from ssmtp_mailer.submit import MAILDROP_MAGIC

    (drop / "deep").write_bytes(MAILDROP_MAGIC + b"[" * 100_000 + b"\nSubject: x\r\n\r\n")
    assert nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE).returncode == 0
    log = tree.parent / "mail.log"
    with tree.open("a") as main:
        main.write(f"log_file = {log}\n")
    first = queue_run_with_problems(tree)
    # Whoever runs the queue hears of it too (once: the files are out of the way after).
    assert first.returncode == 75, first.stderr
    told = first.stderr.splitlines()
    assert len(told) == 2 and all(x.startswith("ssmtp-mailer: queue run: maildrop ") for x in told)
    assert any("junk from uid 65534 (nobody): not a maildrop file" in x for x in told)
    assert any("deep from uid 0 (root): its envelope is nested too deep" in x for x in told)
    run_queue(tree)
    assert smtp_server.wait_for(1)[0].mail_from == "nobody@host.example"
    assert list(drop.iterdir()) == []
    kept = tree.parent / "spool" / "corrupt" / "junk"
    assert kept.read_bytes() == b"not mail"
    assert kept.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in kept.parent.iterdir()) == ["deep", "junk"]
    [line] = [x for x in log.read_text().splitlines() if "junk" in x]
    assert "maildrop junk from uid 65534 (nobody): not a maildrop file" in line


def test_a_message_the_submission_would_grow_past_the_limit_is_refused_at_once(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """Under max_message_size as given, over it as prepared (CR LF, Date, Message-ID): the
    listener or the pickup would refuse it after sendmail's exit 0, so sendmail says so."""
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    with tree.open("a") as main:
        main.write("max_message_size = 300\n")
    body = b"Subject: big\n\n" + b"line of text\n" * 20
    assert len(body) < 300
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], body)
    assert run.returncode == 65
    [line] = run.stderr.decode().splitlines()
    assert "octets, over max_message_size (300 octets)" in line
    assert list((tree.parent / "spool" / "maildrop").iterdir()) == []


def test_nobody_s_dsn_flags_survive_the_maildrop(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.dsn = True
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    run = nobody_sendmail(shared_dir, tree, ["-i", *DSN_FLAGS, "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    run_queue(tree)
    got = smtp_server.wait_for(1)[0]
    assert "via maildrop" in str(got.message()["Received"])
    assert got.mail_options[-2:] == ["RET=HDRS", "ENVID=cron+2Bjob+3D7"]
    assert got.rcpt_options == ["NOTIFY=SUCCESS,FAILURE"]


def test_a_listener_without_dsn_leaves_the_dsn_flags_to_the_maildrop(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """A listener that does not offer DSN (one from before it) is not told to drop -N."""
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    heard: list[bytes] = []
    with socket.socket(socket.AF_UNIX) as server:
        path = tree.parent / "spool" / "submit.sock"
        server.bind(str(path))
        path.chmod(0o666)
        server.listen(1)

        def serve() -> None:
            conn, _ = server.accept()
            with conn, conn.makefile("rb") as reader:
                conn.sendall(b"220 old.example ESMTP\r\n")
                while line := reader.readline():
                    heard.append(line)
                    conn.sendall(b"250-old.example\r\n250 8BITMIME\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        run = nobody_sendmail(shared_dir, tree, ["-i", "-N", "never", "out@far.example"], MESSAGE)
        thread.join(10)
    assert run.returncode == 0, run.stderr
    assert [line.split()[0] for line in heard] == [b"EHLO"]  # no MAIL without its NOTIFY
    [dropped] = (tree.parent / "spool" / "maildrop").iterdir()
    assert b'"dsn": {"notify": "NEVER"}' in dropped.read_bytes()


def test_a_maildrop_file_with_a_foreign_sender_is_refused_into_failed_with_a_bounce(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    run = nobody_sendmail(
        shared_dir, tree, ["-i", "-f", "nobody@other.example", "out@far.example"], MESSAGE
    )
    assert run.returncode == 0, run.stderr  # the submitter cannot tell; the pickup can
    run_queue(tree)
    config = load_config(str(tree))
    failed = list_entries(config, failed=True)
    assert len(failed) == 1
    assert "not owned by uid 65534 (nobody)" in failed[0].reason
    bounce = smtp_server.wait_for(1)[0]
    assert bounce.mail_from in ("", "<>")  # the null sender
    assert bounce.rcpt_tos == ["nobody@host.example"]
    assert all(m.rcpt_tos != ["out@far.example"] for m in smtp_server.messages)


@pytest.mark.parametrize(
    ("default_from", "sender"),
    [("alerts@partner.example", "alerts@partner.example"), ("alerts", "alerts@host.example")],
)
def test_the_default_from_the_administrator_set_is_everyone_s_default_sender(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer, default_from: str, sender: str
) -> None:
    """`default_from = alerts@partner.example` (or a bare `alerts`) in [global]: a user's
    cron job without -f sends as that, where it was refused (77) as not the user's own."""
    tree.write_text(tree.read_text() + f"default_from = {default_from}\n")
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    run_queue(tree)
    assert smtp_server.wait_for(1)[0].mail_from == sender
    other = nobody_sendmail(
        shared_dir, tree, ["-i", "-f", "boss@partner.example", "out@far.example"], MESSAGE
    )
    assert other.returncode == 77, other.stderr


def test_a_maildrop_message_the_relay_refuses_gets_its_submitter_a_notice(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """nobody's sendmail exited 0 when the file was written; the relay refused the only
    recipient at pickup, the message went to failed/, and nobody was ever told."""
    smtp_server.fault = "550-rcpt:out@far.example"
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    run_queue(tree)
    [notice] = smtp_server.wait_for(1)
    assert (notice.mail_from, notice.rcpt_tos) == ("<>", ["nobody@host.example"])
    assert b"Final-Recipient: rfc822; out@far.example" in notice.data


def test_a_listener_picks_the_maildrop_up(
    shared_dir: Path,
    tree: Path,
    smtp_server: SMTPTestServer,
) -> None:
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    listener = Listener(tree)
    try:
        got = smtp_server.wait_for(1, timeout=15)[0]
    finally:
        assert listener.stop() == 0
    assert "via maildrop" in str(got.message()["Received"])


PARTIAL = b"Subject: to two\nTo: out@far.example, busy@far.example\n\nhello\n"


def _fail_on_temporary_failure(main: Path) -> None:
    main.write_text(main.read_text() + "on_temporary_failure = fail\n")


def test_a_maildrop_file_half_delivered_is_not_sent_again_even_with_fail(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    # The submitter was told 0 long ago: a temporary failure of one recipient is queued
    # (on_temporary_failure = fail has nobody to tell), and the other gets one copy.
    _fail_on_temporary_failure(tree)
    smtp_server.fault = "451-rcpt:busy@far.example"
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    args = ["-i", "out@far.example", "busy@far.example"]
    run = nobody_sendmail(shared_dir, tree, args, PARTIAL)
    assert run.returncode == 0, run.stderr
    for _ in range(3):
        run_queue(tree)
    time.sleep(0.2)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["out@far.example"]]
    assert list((tree.parent / "spool" / "maildrop").iterdir()) == []
    (entry,) = list_entries(load_config(str(tree)))
    assert entry.recipients == ("busy@far.example",)


def test_a_maildrop_file_meeting_a_fault_of_our_set_up_is_queued_once(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """The route wants AUTH the relay does not offer: every pickup kept the file and put
    one more copy in failed/; now it is queued once, to wait for the fix."""
    secret = tree.parent / "domains" / "relay.conf"
    secret.write_text(
        secret.read_text().replace("auth_method = NONE", "auth_method = PLAIN\nusername = relay")
    )
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    run_queue(tree)
    run_queue(tree)
    config = load_config(str(tree))
    assert [e.recipients for e in list_entries(config)] == [("out@far.example",)]
    assert list_entries(config, failed=True) == []
    assert list((tree.parent / "spool" / "maildrop").iterdir()) == []


def test_a_submission_half_delivered_through_the_socket_is_queued_not_dropped_again(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    # A 451 would send nobody's sendmail to the maildrop, whose pickup would send the
    # whole message again: the listener queues the rest of a local submission instead.
    _fail_on_temporary_failure(tree)
    smtp_server.fault = "451-rcpt:busy@far.example"
    listener = Listener(tree)
    try:
        args = ["-i", "out@far.example", "busy@far.example"]
        run = nobody_sendmail(shared_dir, tree, args, PARTIAL)
        assert run.returncode == 0, run.stderr
        time.sleep(6)  # past the listener's next maildrop pickup
    finally:
        assert listener.stop() == 0
    assert [m.rcpt_tos for m in smtp_server.messages] == [["out@far.example"]]
    assert list((tree.parent / "spool" / "maildrop").iterdir()) == []
    (entry,) = list_entries(load_config(str(tree)))
    assert entry.recipients == ("busy@far.example",)


def test_root_still_delivers_directly(tree: Path, smtp_server: SMTPTestServer) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmtp_mailer",
            "--config",
            str(tree),
            "sendmail",
            "-i",
            "out@far.example",
        ],
        input=MESSAGE,
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    got = smtp_server.wait_for(1)[0]
    assert "Received" not in got.message()


def test_root_s_first_sendmail_leaves_a_spool_that_nobody_can_submit_to(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """Rate limiting on (the default): its state once made the spool 0700 root's before
    anything else, and nobody's sendmail then died with exit 70, its message lost."""
    tree.write_text(tree.read_text().replace("enable_rate_limiting = false\n", ""))
    root_run = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(tree), "sendmail", "a@far.example"],
        input=MESSAGE,
        capture_output=True,
        timeout=60,
    )
    assert root_run.returncode == 0, root_run.stderr
    spool = tree.parent / "spool"
    assert spool.stat().st_mode & 0o055 == 0o055
    assert (spool / "maildrop").stat().st_mode & 0o7777 == 0o1733
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    assert len(list((spool / "maildrop").iterdir())) == 1
    run_queue(tree)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.wait_for(2)) == [
        "a@far.example",
        "out@far.example",
    ]


def test_the_spool_belongs_to_spool_user_and_root_and_mail_share_entries(
    shared_dir: Path, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    """Root queues while the relay is down; the runner as `mail` delivers and removes it."""
    try:
        mail = pwd.getpwnam("mail")
    except KeyError:
        pytest.skip("no user mail")
    base = Path(tempfile.mkdtemp(prefix="shared-", dir=shared_dir))
    base.chmod(0o755)
    main = readable_main(base, _closed_port())
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmtp_mailer",
            "--config",
            str(main),
            "sendmail",
            "-i",
            "a@far.example",
        ],
        input=MESSAGE,
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0 and b"queued as" in run.stderr, run.stderr
    queue = base / "spool" / "queue"
    assert (queue.stat().st_uid, queue.stat().st_gid) == (mail.pw_uid, mail.pw_gid)
    assert queue.stat().st_mode & 0o7777 == 0o2770
    upstream = smtp_server_factory()
    readable_main(base, upstream.port)
    as_mail = subprocess.run(
        [
            "setpriv",
            "--reuid=mail",
            "--regid=mail",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-m",
            "ssmtp_mailer",
            "--config",
            str(main),
            "queue",
            "run",
            "--all",
        ],
        capture_output=True,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": "/nonexistent",
            "PYTHONPATH": str(shared_dir / "code"),
        },
        cwd="/",
        timeout=60,
    )
    assert as_mail.returncode == 0, as_mail.stderr
    assert upstream.wait_for(1)[0].rcpt_tos == ["a@far.example"]
    assert [p.name for p in queue.iterdir()] == []


def test_an_entry_a_member_of_group_mail_queued_is_listed_and_delivered(
    shared_dir: Path, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    """The spool is shared with group mail: a member's sendmail queues into it directly,
    and root's runner once took the member's file for a stranger's: never listed, never sent."""
    try:
        pwd.getpwnam("mail")
    except KeyError:
        pytest.skip("no user mail")
    base = Path(tempfile.mkdtemp(prefix="member-", dir=shared_dir))
    base.chmod(0o755)
    main = readable_main(base, _closed_port())
    (base / "spool").mkdir()
    run_queue(main)
    # umask 077, as a careful user's: the group must still read what it queued.
    sendmail = (
        "import os, runpy; os.umask(0o077); runpy.run_module('ssmtp_mailer', run_name='__main__')"
    )
    run = _as_nobody(
        shared_dir,
        ["-c", sendmail, "sendmail", "-i", "out@far.example"],
        MESSAGE,
        {"SSMTP_MAILER_CONFIG": str(main)},
        groups="mail",
    )
    assert run.returncode == 0 and b"queued as" in run.stderr, run.stderr
    (entry,) = list_entries(load_config(str(main)))
    assert entry.recipients == ("out@far.example",)
    upstream = smtp_server_factory()
    readable_main(base, upstream.port)
    assert "1 delivered" in run_queue(main)
    assert upstream.wait_for(1)[0].mail_from == "nobody@host.example"
    assert list((base / "spool" / "queue").iterdir()) == []


def test_config_check_by_a_user_who_cannot_reach_the_listener_key_says_so_in_one_line(
    shared_dir: Path,
) -> None:
    """The key in a directory closed to the user (/etc/ssl/private is 0700): a warning
    that it was not checked, where a traceback and exit 70 came out."""
    import trustme

    base = Path(tempfile.mkdtemp(prefix="tlskey-", dir=shared_dir))
    base.chmod(0o755)
    cert = trustme.CA().issue_cert("host.example")
    cert.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    (base / "cert.pem").chmod(0o644)
    private = base / "private"
    private.mkdir(mode=0o700)
    cert.private_key_pem.write_to_path(str(private / "key.pem"))
    main = base / "ssmtp-mailer.conf"
    main.write_text(
        f"[global]\ndefault_hostname = host.example\nspool_dir = {base / 'spool'}\n"
        f"listen_tls_cert_file = {base / 'cert.pem'}\n"
        f"listen_tls_key_file = {private / 'key.pem'}\n"
        "\n[domain:*]\nsmtp_server = 127.0.0.1\nuse_starttls = false\nauth_method = NONE\n"
    )
    main.chmod(0o644)
    run = _as_nobody(
        shared_dir, ["-m", "ssmtp_mailer", "config", "check", "-C", str(main)], b"", {}
    )
    out = (run.stdout + run.stderr).decode()
    assert run.returncode == 0, out
    assert f"listen_tls_key_file {private / 'key.pem'}: not readable by this user" in out
    assert "internal error" not in out


def test_a_user_outside_the_spool_hears_so_from_every_queue_command(shared_dir: Path) -> None:
    """Root's spool is spool_user's: `queue run`, `sendmail -q`, `queue show|delete|
    retry-failed` by anyone else end in one line and 77, where they ended in a traceback."""
    base = Path(tempfile.mkdtemp(prefix="outside-", dir=shared_dir))
    base.chmod(0o755)
    tree = readable_main(base, _closed_port())  # all of it readable: only the spool is not
    (base / "spool").mkdir()
    run_queue(tree)
    some_id = "1A23A731917F8028C"
    for args in (
        ["queue", "run"],
        ["queue", "run", "--id", some_id],
        ["sendmail", "-q"],
        ["queue", "show", some_id],
        ["queue", "delete", some_id],
        ["queue", "retry-failed", some_id],
    ):
        run = _as_nobody(shared_dir, ["-m", "ssmtp_mailer", "-C", str(tree), *args], b"", {})
        lines = run.stderr.decode().splitlines()
        assert run.returncode == 77, (args, lines)
        assert lines[0].startswith("ssmtp-mailer: spool ") and "Permission denied" in lines[0]
        assert lines[1:] == ["ssmtp-mailer: hint: run as the spool's owner"]


def test_the_pickup_refuses_links_and_foreign_files(
    tree: Path, smtp_server: SMTPTestServer
) -> None:
    """A hard link or a symlink in the maildrop is never mailed out as its target's owner."""
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    drop = tree.parent / "spool" / "maildrop"
    secret = tree.parent / "root-only"
    secret.write_bytes(
        b"ssmtp-mailer-maildrop 1\n"
        + b'{"sender": "root@host.example", "recipients": ["out@far.example"]}\n'
        + b"Subject: stolen\n\nx\n"
    )
    secret.chmod(0o600)
    os.link(secret, drop / "hardlink")
    (drop / "symlink").symlink_to(secret)
    run = queue_run_with_problems(tree, "sendmail", "-q")  # as cron's `sendmail -q` hears it
    assert run.returncode == 75
    assert run.stderr.splitlines() == [
        "ssmtp-mailer: queue run: maildrop hardlink: not a plain file, removed",
        "ssmtp-mailer: queue run: maildrop symlink: a symbolic link, removed",
    ]
    time.sleep(0.2)
    assert smtp_server.messages == []
    assert sorted(p.name for p in drop.iterdir()) == []
    assert secret.exists()


def test_a_user_who_may_not_write_the_queue_submits_too(
    shared_dir: Path, smtp_server: SMTPTestServer
) -> None:
    base = Path(tempfile.mkdtemp(prefix="readable-", dir=shared_dir))
    base.chmod(0o755)
    main = base / "ssmtp-mailer.conf"
    main.write_text(
        f"[global]\ndefault_hostname = host.example\nspool_dir = {base / 'spool'}\n"
        "max_retries = 0\nenable_rate_limiting = false\n\n"
        f"[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {smtp_server.port}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    main.chmod(0o644)  # everything readable: only the queue is out of reach
    (base / "spool").mkdir()
    run_queue(main)
    assert (base / "spool" / "queue").stat().st_mode & 0o007 == 0  # not nobody's
    run = nobody_sendmail(shared_dir, main, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    assert smtp_server.messages == []  # handed over, not sent by nobody itself
    run_queue(main)
    got = smtp_server.wait_for(1)[0]
    assert "uid 65534 (nobody)" in str(got.message()["Received"])
    # -bs alike: not a session of nobody's own that could not queue a message it took.
    session = (
        b"EHLO app.example\r\nMAIL FROM:<nobody@host.example>\r\nRCPT TO:<out@far.example>\r\n"
        b"DATA\r\nSubject: over -bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    run = nobody_sendmail(shared_dir, main, ["-bs"], session)
    assert run.returncode == 75 and run.stdout.decode().startswith("421 "), run.stdout
    main.write_text(main.read_text().replace("[global]\n", "[global]\nlisten_user = root\n"))
    listener = Listener(main)
    try:
        run = nobody_sendmail(shared_dir, main, ["-bs"], session)
        assert run.returncode == 0, run.stderr
        got = smtp_server.wait_for(2)[1]
        assert got.message()["Subject"] == "over -bs"
        assert "uid 65534 (nobody)" in str(got.message()["Received"])
    finally:
        listener.stop(signal.SIGTERM)


def test_nobody_may_not_use_the_null_sender_and_hears_so_in_one_line(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """sender_refusal's rule (a user sends as themselves) holds for <> on every path."""
    refusal = b"ssmtp-mailer: <>: sender address not owned by uid 65534 (nobody)\n"
    run = nobody_sendmail(shared_dir, tree, ["-i", "-f", "<>", "out@far.example"], MESSAGE)
    assert run.returncode == 77  # no listener: refused before the maildrop
    assert run.stderr.startswith(refusal) and b"Traceback" not in run.stderr
    listener = Listener(tree)  # it would pick up (and refuse) anything left in the maildrop
    try:
        run = nobody_sendmail(shared_dir, tree, ["-i", "-f", "", "out@far.example"], MESSAGE)
        assert run.returncode == 77
        assert run.stderr.startswith(refusal) and b"Traceback" not in run.stderr
        session = b"EHLO app.example\r\nMAIL FROM:<>\r\nRCPT TO:<out@far.example>\r\nQUIT\r\n"
        run = nobody_sendmail(shared_dir, tree, ["-bs"], session)
        assert run.returncode == 0, run.stderr
        replies = run.stdout.decode().splitlines()
        assert "553 5.7.1 <>: Sender address not owned by uid 65534 (nobody)" in replies
        assert any(r.startswith("503 ") for r in replies), replies  # no MAIL was taken
    finally:
        listener.stop(signal.SIGTERM)
    assert smtp_server.messages == []
    config = load_config(str(tree))
    assert list_entries(config) == list_entries(config, failed=True) == []


@pytest.mark.parametrize("closed", ["ssl_dir", "key"], ids=["key-in-0700-ssl-dir", "key-0600"])
def test_a_signing_key_nobody_cannot_read_sends_through_the_maildrop(
    closed: str, shared_dir: Path, smtp_server: SMTPTestServer
) -> None:
    """A route without a password, but signing with root's key (as `dkim keygen` leaves
    it: 0600 in a 0700 ssl_dir): the key is a secret like a password, so nobody's message
    goes to the maildrop and root's runner signs it. It was refused (70 or 78), and lost."""
    base = Path(tempfile.mkdtemp(prefix="dkim-", dir=shared_dir))
    base.chmod(0o755)
    main = readable_main(base, smtp_server.port)
    ssl = base / "ssl"
    main.write_text(main.read_text().replace("[global]\n", f"[global]\nssl_dir = {ssl}\n", 1))
    keygen = ["dkim", "keygen", "--domain", "host.example", "--selector", "s1", "--algorithm"]
    made = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(main), *keygen, "ed25519"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    main.write_text(
        main.read_text() + "dkim_selector = s1\ndkim_key_file = dkim-s1.host.example.pem\n"
    )
    if closed == "key":
        ssl.chmod(0o755)
    assert ssl.stat().st_mode & 0o777 == (0o700 if closed == "ssl_dir" else 0o755)
    (base / "spool").mkdir()
    run_queue(main)  # opens the maildrop
    run = nobody_sendmail(shared_dir, main, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    assert len(list((base / "spool" / "maildrop").iterdir())) == 1
    run_queue(main)
    got = smtp_server.wait_for(1)[0]
    assert got.mail_from == "nobody@host.example"
    assert b"DKIM-Signature:" in got.data and b"d=host.example" in got.data
    shutil.rmtree(base)


def test_a_users_cron_job_mail_from_root_cron_daemon_is_sent_from_the_user(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """Debian's cron writes `From: root (Cron Daemon)` whoever the job's user, and calls
    sendmail without -f: the sender taken from that From is not nobody's, so it was
    refused (77) and the job's output lost. As Postfix does, nobody's own address is the
    envelope sender and From names root as cron wrote it; with -f, the refusal stands."""
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    cron = b"From: root (Cron Daemon)\nTo: nobody\nSubject: Cron <nobody@host> backup\n\nok\n"
    run = nobody_sendmail(shared_dir, tree, ["-FCronDaemon", "-i", "-B8BITMIME", "nobody"], cron)
    assert run.returncode == 0, run.stderr
    run_queue(tree)
    got = smtp_server.wait_for(1)[0]
    assert got.mail_from == "nobody@host.example"
    assert got.message()["From"] == "root@host.example"  # qualified, as for every sender
    run = nobody_sendmail(shared_dir, tree, ["-i", "-f", "root", "nobody"], cron)
    assert run.returncode == 77


def test_a_home_this_user_cannot_enter_is_not_its_configuration(shared_dir: Path) -> None:
    """cron started from a root shell gives every job HOME=/root: the user file under it
    cannot even be looked for, so it is not this user's and the system one is tried (here
    there is none: one line, 78). It was an internal error (70) for every user's job."""
    home = Path(tempfile.mkdtemp(prefix="roothome-", dir=shared_dir))
    user_file = home / ".config" / "ssmtp-mailer" / "ssmtp-mailer.conf"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("[global]\n")
    home.chmod(0o700)
    run = _as_nobody(
        shared_dir,
        ["-m", "ssmtp_mailer", "sendmail", "-i", "nobody"],
        MESSAGE,
        {"HOME": str(home)},
    )
    err = run.stderr.decode()
    assert run.returncode == 78, err
    assert "internal error" not in err and err.count("\n") <= 2
    assert "no configuration file found" in err
    shutil.rmtree(home)


def test_mail_the_pickup_cannot_hand_on_is_shown_not_silent(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """Right after install there is no route: nobody's message waits in the maildrop. Root's
    queue run said "0 delivered" and mailq "Mail queue is empty"; both now say it is there
    and why, and it goes once a route exists."""
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    secret = tree.parent / "domains" / "relay.conf"
    routes = secret.read_text()
    secret.write_text(routes.replace("[domain:*]", "[domain:elsewhere.example]"))
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    done = queue_run_with_problems(tree)
    assert done.returncode == 75, done.stderr
    assert "from uid 65534 (nobody): left in the maildrop for the next run: 4" in done.stderr
    listing = queue_run_with_problems(tree, "queue", "list")
    assert "-- 1 in the maildrop, for `ssmtp-mailer queue run` to pick up" in listing.stdout
    secret.write_text(routes)
    assert run_queue(tree).startswith("queue run: 1 taken from the maildrop")
    assert smtp_server.wait_for(1)[0].mail_from == "nobody@host.example"
    assert "Mail queue is empty" in queue_run_with_problems(tree, "queue", "list").stdout


def test_a_listener_closing_after_its_250_does_not_get_the_message_into_the_maildrop_too(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """A listener told to stop (SIGTERM) finishes the message in flight, says 250 and
    421 and closes. Our QUIT then met EPIPE, which was read as 'nothing accepted': the
    message went to the maildrop as well, and the relay got it twice."""
    spool = tree.parent / "spool"
    spool.mkdir()
    run_queue(tree)  # the spool and its maildrop, as root's first run makes them
    path = spool / "submit.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    path.chmod(0o666)
    server.listen(1)
    server.settimeout(30)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 draining listener\r\n")
            for line in lines:
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-host.example\r\n250-8BITMIME\r\n250 DSN\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    for data_line in lines:
                        if data_line == b".\r\n":
                            break
                    conn.sendall(b"250 2.0.0 delivered\r\n421 4.3.2 shutting down\r\n")
                    return  # closed before QUIT, as a listener that exits
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    finally:
        thread.join(30)
        server.close()
    assert run.returncode == 0, run.stderr
    assert list((spool / "maildrop").iterdir()) == []
    assert smtp_server.messages == []


def test_a_maildrop_file_is_removed_when_the_relay_says_250_not_after_its_quit(
    shared_dir: Path,
    tree: Path,
    smtp_server: SMTPTestServer,
    smtp_server_factory: Callable[..., SMTPTestServer],
) -> None:
    """SPEC §6: delivered the moment the relay answers the final dot, before QUIT. The
    pickup removed its file only after QUIT: a `queue run` killed while a relay took its
    time over QUIT left the file, and the next run sent the message again."""
    slow_quit = smtp_server_factory(fault="stall-quit")
    secret = tree.parent / "domains" / "relay.conf"
    secret.write_text(
        secret.read_text().replace(
            f"smtp_port = {smtp_server.port}", f"smtp_port = {slow_quit.port}"
        )
    )
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    run = nobody_sendmail(shared_dir, tree, ["-i", "out@far.example"], MESSAGE)
    assert run.returncode == 0, run.stderr
    drop = tree.parent / "spool" / "maildrop"
    assert len(list(drop.iterdir())) == 1
    command = [sys.executable, "-m", "ssmtp_mailer", "--config", str(tree), "queue", "run"]
    runner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        slow_quit.wait_for(1, timeout=30)
        time.sleep(0.5)  # well inside the wait for QUIT's reply
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    assert list(drop.iterdir()) == []
    run_queue(tree)
    time.sleep(0.2)
    assert len(slow_quit.messages) == 1


def test_a_user_who_cannot_read_the_main_file_leaves_bare_names_to_the_pickup(
    shared_dir: Path, tree: Path, smtp_server: SMTPTestServer
) -> None:
    """A main file of 0640 root:mail (it may hold a password): the user's sendmail knows
    no default_hostname and qualified with this host's own name. The pickup, with the
    configured one, took `nobody@<this host>` for a sender nobody does not own, and sent
    a failure notice out through the relay instead of the message."""
    (tree.parent / "spool").mkdir()
    run_queue(tree)
    # As sendmail runs with no configuration it can read (g None), into this spool.
    code = (
        "import io, sys\n"
        "from pathlib import Path\n"
        "from ssmtp_mailer import submit\n"
        "from ssmtp_mailer.sendmail import _prepare_stdin, parse_args\n"
        "prepared = _prepare_stdin(parse_args(['-i', 'root']), None, io.BytesIO(sys.stdin.buffer.read()))\n"
        "print(prepared.sender, prepared.recipients, repr(prepared.message_id), file=sys.stderr)\n"
        "sys.exit(submit.submit(None, Path(sys.argv[1]), prepared, bytes(prepared.data),"
        " sender_given=False))\n"
    )
    run = _as_nobody(
        shared_dir, ["-c", code, str(tree.parent / "spool")], b"Subject: bare\n\nhi\n", {}
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == b"nobody ('root',) ''\n"
    assert run_queue(tree).startswith("queue run: 1 taken from the maildrop")
    (got,) = smtp_server.wait_for(1)
    assert (got.mail_from, got.rcpt_tos) == ("nobody@host.example", ["root@host.example"])
    message = got.message()
    assert message["From"] == "nobody@host.example" and message["Message-ID"].endswith(
        "@host.example>"
    )
    assert message["Subject"] == "bare"


@pytest.mark.parametrize(
    "recipient",
    ["x@far.example> NOTIFY=NEVER", "out@far.example>\r\nRSET", "a@far.example, b@far.example"],
    ids=["parameters", "crlf", "two-in-one"],
)
def test_a_maildrop_file_the_pickup_refuses_is_kept_and_its_submitter_told(
    tree: Path, smtp_server: SMTPTestServer, recipient: str
) -> None:
    """A maildrop file refused as a whole (a recipient that is no address, over the
    configured max_message_size) was removed with a line in the log: its submitter,
    told 0 when it was dropped, never heard, and nothing was kept."""
    import json

    from ssmtp_mailer.submit import MAILDROP_MAGIC

    (tree.parent / "spool").mkdir()
    run_queue(tree)
    drop = tree.parent / "spool" / "maildrop" / "4242-handwritten"
    envelope = {"sender": "nobody", "recipients": [recipient]}
    drop.write_bytes(MAILDROP_MAGIC + json.dumps(envelope).encode() + b"\nSubject: s\r\n\r\nx\r\n")
    nobody = pwd.getpwnam(NOBODY)
    os.chown(drop, nobody.pw_uid, nobody.pw_gid)
    drop.chmod(0o600)
    run_queue(tree)
    assert not drop.exists()
    failed = list_entries(load_config(str(tree)), failed=True)
    assert len(failed) == 1 and "recipient address" in failed[0].reason
    (notice,) = smtp_server.wait_for(1)
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == ["nobody@host.example"]
