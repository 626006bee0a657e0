"""The sendmail interface: real callers' command lines against a real SMTP server."""

from __future__ import annotations

import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from relayconf import HOST, write_relay_config
from smtpserver import Received, SMTPTestServer

import ssmtp_mailer
from ssmtp_mailer import __version__
from ssmtp_mailer.errors import DataError
from ssmtp_mailer.sendmail import USAGE, parse_args, read_message


def write_config(tmp_path: Path, server: SMTPTestServer, extra: str = "") -> Path:
    return write_relay_config(
        tmp_path / "ssmtp-mailer.conf",
        server.port,
        f"default_from = nobody@{HOST}\non_temporary_failure = fail\n{extra}",
    )


@pytest.fixture
def config(tmp_path: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The configuration, found through $SSMTP_MAILER_CONFIG so command lines stay exact."""
    path = write_config(tmp_path, smtp_server)
    monkeypatch.setenv("SSMTP_MAILER_CONFIG", str(path))
    return path


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def sendmail(run_main: Run) -> Run:
    """Run `sendmail ARGS` in-process with `stdin` as its binary standard input."""
    return run_main


def only(server: SMTPTestServer) -> Received:
    messages = server.messages
    assert len(messages) == 1, messages
    return messages[0]


# -- the exact command lines of real callers ----------------------------------------------

CRON_MESSAGE = (
    b"From: root (Cron Daemon)\n"
    b"To: root\n"
    b"Subject: Cron <root@host> /usr/local/bin/backup\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=UTF-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"X-Cron-Env: <SHELL=/bin/sh>\n"
    b"\n"
    b"backup done: 3 fichiers copi\xc3\xa9s\n"
    b".\n"
    b"a lone dot above is content with -i\n"
)


def test_cron(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    code, _, err = sendmail(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], CRON_MESSAGE)
    assert (code, err) == (0, "")
    got = only(smtp_server)
    assert got.mail_from == f"root@{HOST}"
    assert got.rcpt_tos == [f"root@{HOST}"]
    assert "BODY=8BITMIME" in got.mail_options
    msg = got.message()
    assert f"\r\nFrom: root@{HOST} (Cron Daemon)\r\n".encode() in b"\r\n" + got.data
    assert msg["To"] == f"root@{HOST}"
    assert msg["Message-ID"].endswith(f"@{HOST}>") and msg["Date"] is not None
    assert got.data.endswith(b"copi\xc3\xa9s\r\n.\r\na lone dot above is content with -i\r\n")


def test_php_mail(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    message = (
        b'To: "Doe, Jane" <jane@example.org>, bob@example.org\r\n'
        b"Subject: Order confirmation\r\n"
        b"From: shop@example.com\r\n"
        b"Bcc: archive@example.com\r\n"
        b"\r\n"
        b"Thanks.\r\n"
    )
    code, _, err = sendmail(["-t", "-i"], message)
    assert (code, err) == (0, "")
    got = only(smtp_server)
    assert got.mail_from == "shop@example.com"
    assert got.rcpt_tos == ["jane@example.org", "bob@example.org", "archive@example.com"]
    assert b"Bcc" not in got.data and b"archive" not in got.data
    assert got.message()["To"] == '"Doe, Jane" <jane@example.org>, bob@example.org'


def test_a_cr_pasted_into_a_php_subject_adds_no_recipient(
    config: Path, smtp_server: SMTPTestServer, sendmail: Run
) -> None:
    """PHP's mail() with a form's `hi<CR>Bcc: victim@evil.example` as the subject, which
    the app stripped of LF only: one recipient, the Subject whole."""
    message = b"To: jane@example.org\nSubject: hi\rBcc: victim@evil.example\n\nThanks.\n"
    assert sendmail(["-t", "-i"], message)[0] == 0
    got = only(smtp_server)
    assert got.rcpt_tos == ["jane@example.org"]
    assert got.message()["Subject"] == "hi Bcc: victim@evil.example"


def test_bsd_mailx(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    message = b"Subject: hello\nTo: user@x.example\n\nhi\n"
    assert sendmail(["-i", "--", "user@x.example"], message)[0] == 0
    got = only(smtp_server)
    assert (got.mail_from, got.rcpt_tos) == (f"nobody@{HOST}", ["user@x.example"])
    assert got.message()["From"] == f"nobody@{HOST}"


def test_git_send_email(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    message = (
        b"From: Dev Eloper <dev@example.org>\nTo: a@x.example\nCc: b@x.example\n"
        b"Subject: [PATCH] fix\nMessage-ID: <patch-1@example.org>\n\n---\n.\n diff\n"
    )
    assert sendmail(["-i", "a@x.example", "b@x.example"], message)[0] == 0
    got = only(smtp_server)
    assert got.mail_from == "dev@example.org"
    assert got.rcpt_tos == ["a@x.example", "b@x.example"]
    # Only a Date line is added; every other byte is as git wrote it.
    lines = got.data.split(b"\r\n")
    assert [x for x in lines if not x.startswith(b"Date: ")] == message.split(b"\n")


def test_mutt(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    message = b"From: Me <me@example.org>\nTo: a@x.example\nSubject: s\n\nbody\n"
    assert sendmail(["-oem", "-oi", "--", "a@x.example"], message)[0] == 0
    got = only(smtp_server)
    assert (got.mail_from, got.rcpt_tos) == ("me@example.org", ["a@x.example"])


def test_unattended_upgrades(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    message = b"From: root\nTo: root, admin@example.org\nSubject: upgrades\n\nlog\n"
    assert sendmail(["-oi", "-t"], message)[0] == 0
    got = only(smtp_server)
    assert got.mail_from == f"root@{HOST}"
    assert got.rcpt_tos == [f"root@{HOST}", "admin@example.org"]


def test_fail2ban_without_i_a_lone_dot_ends_input(
    config: Path, smtp_server: SMTPTestServer, sendmail: Run
) -> None:
    message = b"Subject: [Fail2Ban] sshd: banned 1.2.3.4\nFrom: Fail2Ban <fail2ban@host>\n\nbanned\n.\nnot sent\n"
    assert sendmail(["-f", "fail2ban@host", "root"], message)[0] == 0
    got = only(smtp_server)
    assert (got.mail_from, got.rcpt_tos) == ("fail2ban@host", [f"root@{HOST}"])
    assert got.data.endswith(b"\r\n\r\nbanned\r\n")


def test_logwatch(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    message = b"To: root\nFrom: logwatch@host.example\nSubject: Logwatch\n\n ### Logwatch ###\n"
    assert sendmail(["-t"], message)[0] == 0
    got = only(smtp_server)
    assert got.rcpt_tos == [f"root@{HOST}"]


def test_attached_and_separate_values(
    config: Path, smtp_server: SMTPTestServer, sendmail: Run
) -> None:
    assert (
        sendmail(["-fme@x.example", "-F", "Full Name", "-ti", "a@x.example"], b"\nbody\n")[0] == 0
    )
    got = only(smtp_server)
    assert got.mail_from == "me@x.example"
    assert got.message()["From"] == "Full Name <me@x.example>"


def test_null_sender(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    assert sendmail(["-f", "<>", "a@x.example"], b"Subject: bounce\n\nb\n")[0] == 0
    assert only(smtp_server).mail_from == "<>"  # aiosmtpd's spelling of MAIL FROM:<>


def test_sendmail_subcommand_keeps_double_dash(
    config: Path, smtp_server: SMTPTestServer, sendmail: Run
) -> None:
    code, _, err = sendmail(
        ["sendmail", "-oi", "--", "a@x.example"], b"\nbody\n", prog="ssmtp-mailer"
    )
    assert (code, err) == (0, "")
    assert only(smtp_server).rcpt_tos == ["a@x.example"]


# -- errors and small modes -----------------------------------------------------------------


def test_unknown_flag_is_64_naming_it(config: Path, sendmail: Run) -> None:
    code, _, err = sendmail(["-i", "-Z", "a@x"], b"")
    assert code == 64
    assert err.splitlines()[0] == "ssmtp-mailer: -Z: unknown flag"
    assert sendmail(["--frobnicate"], b"")[0] == 64
    assert sendmail(["-bd"], b"")[0] == 64
    assert sendmail(["-f"], b"")[0] == 64


def test_no_recipients_is_64(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    code, _, err = sendmail(["-i"], b"Subject: x\n\nbody\n")
    assert code == 64 and "no recipients" in err
    assert sendmail(["-t"], b"Subject: x\n\nbody\n")[0] == 64
    assert smtp_server.messages == []


def test_data_errors_are_65(config: Path, smtp_server: SMTPTestServer, sendmail: Run) -> None:
    code, _, err = sendmail(["-i", "a@x.example"], b"\n" + b"x" * 2000 + b"\n")
    assert code == 65 and "line 2 is over 998 octets" in err
    assert len(err.splitlines()) == 1
    assert sendmail(["-i", "a@x.example"], b"\nnul\x00\n")[0] == 65
    assert smtp_server.messages == []


def test_version(sendmail: Run) -> None:
    for args in (["-bV"], ["--version"]):
        code, out, _ = sendmail(args)
        assert code == 0 and __version__ in out


def test_verbose_prints_transcript(
    config: Path, smtp_server: SMTPTestServer, sendmail: Run
) -> None:
    code, _, err = sendmail(["-v", "-i", "a@x.example"], b"\nbody\n")
    assert code == 0
    assert "MAIL FROM:<NOBODY@HOST.EXAMPLE>" in err.upper()
    assert "250" in err


def test_explicit_config_flag(
    tmp_path: Path, smtp_server: SMTPTestServer, sendmail: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, smtp_server)
    monkeypatch.delenv("SSMTP_MAILER_CONFIG", raising=False)
    assert sendmail(["-C", str(path), "-i", "a@x.example"], b"\nbody\n")[0] == 0
    assert sendmail(["-C", str(tmp_path / "missing.conf"), "-i", "a@x"], b"\n")[0] == 78


def test_partial_refusal_delivers_to_the_rest(
    config: Path, smtp_server: SMTPTestServer, sendmail: Run
) -> None:
    smtp_server.fault = "550-rcpt:bad@x.example"
    code, _, err = sendmail(["-i", "good@x.example", "bad@x.example"], b"\nbody\n")
    assert code == 0
    delivered, notice = smtp_server.wait_for(2)
    assert delivered.rcpt_tos == ["good@x.example"]
    assert "bad@x.example" in err and len(err.splitlines()) == 1
    # A program reads the 0, not stderr: the sender is told in a notice, as by Postfix.
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == [delivered.mail_from]
    assert b"bad@x.example" in notice.data
    # The relay's own reply (RFC 3464 §2.3.6), not our summary line.
    assert re.search(rb"Diagnostic-Code:\s+smtp; 550 5\.1\.1 <bad@x\.example>", notice.data)


def test_every_recipient_refused_is_67(
    config: Path, smtp_server: SMTPTestServer, sendmail: Run
) -> None:
    smtp_server.fault = "550-rcpt:bad@x.example"
    code, _, err = sendmail(["-i", "bad@x.example"], b"\nbody\n")
    assert code == 67, err
    assert err.startswith("ssmtp-mailer: ") and "Traceback" not in err


def test_temporary_failure_is_75_with_queueing_off(
    config: Path, smtp_server: SMTPTestServer, sendmail: Run
) -> None:
    smtp_server.fault = "451-rcpt"
    code, _, err = sendmail(["-i", "a@x.example"], b"\nbody\n")
    assert code == 75, err
    assert "Traceback" not in err


def test_unit_flag_parsing() -> None:
    p = parse_args(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
    assert (p.full_name, p.ignore_dots, p.recipients) == ("CronDaemon", True, ["root"])
    p = parse_args(["-oem", "-oi", "--", "-odd@x"])
    assert p.ignore_dots and p.recipients == ["-odd@x"]
    p = parse_args(["a@x", "-t", "-r", "s@x", "-N", "never", "-R", "hdrs", "-h", "5", "-L", "t"])
    assert p.extract_recipients and p.sender == "s@x" and p.recipients == ["a@x"]
    p = parse_args(
        [
            "-tif",
            "s@x",
            "-X",
            "/tmp/t",
            "-O",
            "IgnoreDots=true",
            "-d0.1",
            "-n",
            "-U",
            "-G",
            "-m",
            "-Ac",
        ]
    )
    assert p.extract_recipients and p.ignore_dots and p.sender == "s@x"
    assert parse_args(["-bs"]).mode == "smtp"
    assert parse_args(["-bp"]).mode == "list"
    assert parse_args(["-q"]).mode == "queue"
    assert parse_args(["-q1h"]).mode == "queue"
    assert not parse_args(["-t"]).ignore_dots


# -- real processes through a `sendmail` symlink ---------------------------------------------


@pytest.fixture
def symlinks(tmp_path: Path) -> Path:
    # The script beside our interpreter: a pyenv shim on PATH would dispatch on the link's name.
    beside = Path(sys.executable).parent / "ssmtp-mailer"
    script = str(beside) if beside.exists() else shutil.which("ssmtp-mailer")
    if script is None:
        pytest.skip("ssmtp-mailer is not installed on PATH")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sendmail", "mailq", "newaliases"):
        (bin_dir / name).symlink_to(script)
    return bin_dir


def test_subprocess_cron_and_t(config: Path, smtp_server: SMTPTestServer, symlinks: Path) -> None:
    sendmail = str(symlinks / "sendmail")
    done = subprocess.run(
        [sendmail, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        input=CRON_MESSAGE,
        capture_output=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    done = subprocess.run(
        [sendmail, "-t"],
        input=b"To: a@x.example\nSubject: s\n\nb\n",
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert [m.rcpt_tos for m in smtp_server.messages] == [[f"root@{HOST}"], ["a@x.example"]]
    done = subprocess.run([sendmail, "-Q"], capture_output=True, timeout=30)
    assert done.returncode == 64
    assert done.stderr.splitlines()[0] == b"ssmtp-mailer: -Q: unknown flag"
    done = subprocess.run([str(symlinks / "newaliases")], capture_output=True, timeout=30)
    assert done.returncode == 0


def test_links_flush_their_output_and_keep_exit_codes(
    config: Path, smtp_server: SMTPTestServer, symlinks: Path
) -> None:
    # The links leave through os._exit once main() returns: nothing may be lost on the way.
    mailq = str(symlinks / "mailq")
    done = subprocess.run([mailq], capture_output=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"Mail queue is empty\n", b"")
    done = subprocess.run([str(symlinks / "sendmail"), "--help"], capture_output=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.decode() == USAGE
    # `mailq | head -0`: a reader that is gone is no failure for a listing...
    listing = subprocess.Popen([mailq], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert listing.stdout is not None
    listing.stdout.close()
    _, err = listing.communicate(timeout=30)
    assert (listing.returncode, err) == (0, b"")
    # ...and a message the relay refused keeps its code and its one line on stderr.
    smtp_server.fault = "550-rcpt:bad@x.example"
    done = subprocess.run(
        [str(symlinks / "sendmail"), "-i", "bad@x.example"],
        input=b"Subject: s\n\nb\n",
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 67
    assert done.stderr.startswith(b"ssmtp-mailer: ") and b"bad@x.example" in done.stderr


# Runs argv[2:] with descriptor argv[1] closed, as a careless parent (a daemon) leaves it.
_WITHOUT_FD = "import os, sys; os.close(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"


def test_closed_standard_descriptors(
    config: Path, smtp_server: SMTPTestServer, symlinks: Path, tmp_path: Path
) -> None:
    sendmail = str(symlinks / "sendmail")

    def without(fd: int, *args: str) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-c", _WITHOUT_FD, str(fd), sendmail, *args]
        with (tmp_path / "in.eml").open("rb") as stdin:
            return subprocess.run(argv, stdin=stdin, capture_output=True, timeout=30)

    (tmp_path / "in.eml").write_bytes(b"To: a@x.example\nSubject: s\n\nbody\n")
    # No stdout: the message goes, and the exit status says so.
    assert (without(1, "-t").returncode, len(smtp_server.messages)) == (0, 1)
    # No stdin: nothing to send, one line and EX_IOERR, never a traceback.
    done = without(0, "-t")
    assert done.returncode == 74
    assert (
        done.stderr
        == b"ssmtp-mailer: standard input: not open (closed by the program that ran us)\n"
    )
    # No stdout for a listing: the same.
    done = without(1, "-bp")
    assert (done.returncode, done.stderr.count(b"\n")) == (74, 1)
    assert len(smtp_server.messages) == 1


def test_a_stderr_nobody_can_write_costs_no_message(
    config: Path, smtp_server: SMTPTestServer, symlinks: Path, tmp_path: Path
) -> None:
    """stderr closed (a daemon's child), or full: what was queued or delivered still exits
    0, where the failed write of its note made it 1; and `-v`'s transcript failing to
    print once sent the message to failed/."""
    sendmail = str(symlinks / "sendmail")
    (tmp_path / "in.eml").write_bytes(b"To: a@x.example\nSubject: s\n\nbody\n")
    config.write_text(config.read_text().replace("on_temporary_failure = fail\n", ""))

    def run(*args: str, closed: bool = False) -> subprocess.CompletedProcess[bytes]:
        argv = [sendmail, *args]
        if closed:
            argv = [sys.executable, "-c", _WITHOUT_FD, "2", *argv]
        with (tmp_path / "in.eml").open("rb") as stdin, open("/dev/full", "wb") as full:
            return subprocess.run(
                argv, stdin=stdin, stdout=subprocess.PIPE, stderr=full, timeout=30
            )

    smtp_server.fault = "421-connect"  # the relay is down: queued, and a note on stderr
    for closed in (False, True):
        done = run("-t", closed=closed)
        assert (done.returncode, done.stdout) == (0, b"")
    queue = config.parent / "spool" / "queue"
    assert len(list(queue.glob("*.toml"))) == 2
    smtp_server.fault = None
    done = run("-t", "-v")
    assert done.returncode == 0
    assert len(smtp_server.messages) == 1
    assert not (config.parent / "spool" / "failed").exists() or not list(
        (config.parent / "spool" / "failed").iterdir()
    )


# Every module a plain `sendmail` run may load beyond what the interpreter starts with:
# the standard library it needs for a plain SMTP send, and this package's own path.
# Heavy or unneeded modules (click, keyring, dnspython, dkimpy, aiosmtpd, dataclasses,
# subprocess, smtplib, email, hashlib, the idna codec) stay off it; a new import must be
# added here on purpose.
SENDMAIL_PATH_MODULES = frozenset(
    {
        "__future__", "_bisect", "_collections", "_collections_abc", "_functools",
        "_opcode", "_operator", "_random", "_sha512", "_socket", "_sre", "_ssl", "_stat",
        "_string", "_struct", "_typing", "_weakrefset", "array", "base64", "binascii",
        "bisect", "collections", "collections.abc", "contextlib", "copy", "copyreg",
        "enum", "errno", "fcntl", "fnmatch", "functools", "gc", "genericpath", "getpass",
        "grp", "importlib", "importlib._bootstrap", "importlib._bootstrap_external",
        "importlib.machinery", "ipaddress", "itertools", "keyword", "math", "ntpath",
        "opcode", "operator", "os", "os.path", "pathlib", "posixpath", "pwd", "random",
        "re", "re._casefix", "re._compiler", "re._constants", "re._parser", "reprlib",
        "select", "selectors", "socket", "ssl", "stat", "string", "struct", "termios",
        "types", "typing", "typing.io", "typing.re", "urllib", "urllib.parse", "warnings",
        "weakref",
        "ssmtp_mailer", "ssmtp_mailer.addresses", "ssmtp_mailer.config",
        "ssmtp_mailer.config.ini",
        "ssmtp_mailer.config.loader", "ssmtp_mailer.config.model",
        "ssmtp_mailer.config.values", "ssmtp_mailer.entry", "ssmtp_mailer.errors",
        "ssmtp_mailer.log", "ssmtp_mailer.message", "ssmtp_mailer.paths",
        "ssmtp_mailer.patterns", "ssmtp_mailer.pipeline", "ssmtp_mailer.relay",
        "ssmtp_mailer.relay.engine", "ssmtp_mailer.relay.failures", "ssmtp_mailer.relay.hints", "ssmtp_mailer.relay.pool",
        "ssmtp_mailer.relay.ratelimit", "ssmtp_mailer.relay.smtp",
        "ssmtp_mailer.relay.wire", "ssmtp_mailer.rewrite", "ssmtp_mailer.sendmail",
        # The rate limit's state file, opened refusing links (enable_rate_limiting).
        "ssmtp_mailer.spooldirs",
        # A user who is not root checks whether the queue is theirs to write (SPEC §8).
        "ssmtp_mailer.submit",
        # The same modules as 3.10 (re's sre_* and _locale) and 3.13 (pathlib, a package
        # that imports glob) lay them out.
        "_locale", "sre_compile", "sre_constants", "sre_parse",
        "glob", "pathlib._abc", "pathlib._local",
    }
)  # fmt: skip


@pytest.mark.parametrize("limited", [False, True], ids=["unlimited", "rate-limited"])
def test_sendmail_path_imports_stay_lean(
    config: Path, smtp_server: SMTPTestServer, limited: bool
) -> None:
    # Quoted, as a password holding `#` or `"` must be: read without the json module.
    path = write_config(config.parent, smtp_server, 'log_level = "INFO"\n')
    if limited:
        # The default. The limit's state lives in the spool; the first run of all makes
        # its directory (with the spool's own code), every later run only reads it.
        text = path.read_text()
        assert "enable_rate_limiting = false" in text
        path.write_text(text.replace("rate_limiting = false", "rate_limiting = true"))
    code = (
        "import io, sys\n"
        "started = set(sys.modules)\n"
        "from ssmtp_mailer.entry import main\n"
        "sys.stdin = io.TextIOWrapper(io.BytesIO(b'Subject: s\\n\\nbody\\n'))\n"
        "rc = main(['-i', 'a@x.example'], prog_name='sendmail')\n"
        "print(rc, *sorted(set(sys.modules) - started))\n"
    )
    # -S: no site, whose .pth files (an editable install's finder) import modules themselves;
    # the sendmail path needs nothing outside the standard library and this source tree.
    source = str(Path(ssmtp_mailer.__file__).resolve().parent.parent)
    runs = 2 if limited else 1
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-S", "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": source},
        )
        assert done.stdout.split()[:1] == ["0"], done.stderr
    rc, *loaded = done.stdout.split()
    assert rc == "0", done.stderr
    assert sorted(set(loaded) - SENDMAIL_PATH_MODULES) == []
    assert len(smtp_server.messages) == runs


def test_sendmail_path_named_tuples_have_real_annotations() -> None:
    """typing turns a string field annotation into a ForwardRef, compiled on every run."""
    strings = []
    for name in sorted(m for m in SENDMAIL_PATH_MODULES if m.startswith("ssmtp_mailer")):
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, type) and issubclass(value, tuple) and value.__module__ == name:
                fields = value.__annotations__.items()
                strings += [f"{name}.{value.__name__}.{field}" for field, kind in fields
                            if isinstance(kind, (str, typing.ForwardRef))]  # fmt: skip
    assert strings == []


def test_sendmail_link_leaves_nothing_for_os_exit_to_skip(
    config: Path, smtp_server: SMTPTestServer
) -> None:
    """The links leave with os._exit: nothing may still need the interpreter's teardown."""
    code = (
        "import atexit, io, os, sys, threading\n"
        "fds, hooks = set(os.listdir('/proc/self/fd')), atexit._ncallbacks()\n"
        "from ssmtp_mailer.entry import main\n"
        "sys.stdin = io.TextIOWrapper(io.BytesIO(b'Subject: s\\n\\nbody\\n'))\n"
        "rc = main(['-i', 'a@x.example'], prog_name='sendmail')\n"
        "left = set(os.listdir('/proc/self/fd')) - fds\n"
        "handlers = sys.modules['logging'].root.handlers if 'logging' in sys.modules else []\n"
        "print(rc, threading.active_count(), atexit._ncallbacks() - hooks, len(handlers), len(left))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    # exit code, threads, atexit hooks, logging handlers, descriptors opened and left open
    assert done.stdout.split() == ["0", "1", "0", "0", "0"], done.stderr
    assert len(smtp_server.messages) == 1


def test_writer_holding_stdin_open_after_the_dot_is_not_waited_for(
    config: Path, smtp_server: SMTPTestServer, symlinks: Path
) -> None:
    # A program that writes the lone dot and then waits for sendmail before closing its end.
    proc = subprocess.Popen(
        [str(symlinks / "sendmail"), "-t"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"To: a@x.example\nSubject: held\n\nbody\n.\nnot part of it\n")
    proc.stdin.flush()
    try:
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        proc.stdin.close()
        proc.kill()
        proc.stderr.close()
    data = only(smtp_server).data
    assert data.endswith(b"\r\n\r\nbody\r\n")
    assert b"not part of it" not in data


_SPAWN_AND_MEASURE = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def test_25_mb_message_costs_under_3x_its_size(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    symlinks: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SPEC §10: the whole process (interpreter included) peaks under 3x the message."""
    server = smtp_server_factory(size_limit=None)
    monkeypatch.setenv("SSMTP_MAILER_CONFIG", str(write_config(tmp_path, server)))
    line = b"0123456789" * 7 + b"abcdef\n"  # LF input: line endings are converted on the way
    message = tmp_path / "big.eml"
    lines = 25 * 1024 * 1024 // len(line)
    message.write_bytes(b"To: big@x.example\nSubject: big\n\n" + line * lines)
    with message.open("rb") as stdin:
        # Started from a small interpreter: a child's peak RSS includes the memory of the
        # process it was forked from, and this test process holds far more than sendmail does.
        done = subprocess.run(
            [sys.executable, "-S", "-c", _SPAWN_AND_MEASURE, str(symlinks / "sendmail"), "-t"],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
    code, peak_kib = (int(word) for word in done.stdout.split())
    assert code == 0, done.stderr
    [got] = server.wait_for(1, timeout=60)
    assert got.data.count(line.replace(b"\n", b"\r\n")) == lines
    peak = peak_kib * 1024
    size = message.stat().st_size
    assert peak < 3 * size, f"peak RSS {peak / size:.2f}x the message"


class _Pieces(io.RawIOBase):
    """Standard input that arrives in the given pieces, as from a pipe."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces: Iterator[bytes] = iter(pieces)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        piece = next(self._pieces, b"")
        buffer[: len(piece)] = piece
        return len(piece)


def _read(pieces: list[bytes], *, dot_ends: bool = True, limit: int = 1000) -> bytes:
    return bytes(read_message(io.BufferedReader(_Pieces(pieces)), dot_ends=dot_ends, limit=limit))


def test_read_message_across_piece_boundaries() -> None:
    # CR and LF of one line ending in different pieces stay one CRLF.
    assert _read([b"a\r", b"\nb\n"]) == b"a\r\nb\r\n"
    # In the body a bare CR ends a line (RFC 5321 §2.3.8), also at the very end.
    assert _read([b"\na\rb\n", b"c\r"]) == b"\r\na\r\nb\r\nc\r\n"
    # CR CR LF (a CRLF converted again) is one line end, also split between pieces.
    assert _read([b"To: a@x\r", b"\r\nSubject: s\r\r", b"\n\r\r\nbody\r\r\n"]) == (
        b"To: a@x\r\nSubject: s\r\n\r\nbody\r\n"
    )
    # The lone dot split over pieces still ends the input, and nothing after it is read.
    assert _read([b"a\n", b".", b"\n", b"never\n"]) == b"a\r\n"
    assert _read([b"a\n.\r", b"\nnever\n"]) == b"a\r\n"
    assert _read([b".\n", b"never\n"]) == b""
    # With -i a dot line is content; "..", ". " are content either way.
    assert _read([b"a\n.\nb\n"], dot_ends=False) == b"a\r\n.\r\nb\r\n"
    assert _read([b"..\n. \n"]) == b"..\r\n. \r\n"


def test_a_bare_cr_in_the_header_of_lf_input_is_a_space_however_the_input_arrives() -> None:
    """`Subject: hi<CR>Bcc: victim` from a web form stays one field (as Postfix and msmtp
    keep it): read whole or a byte at a time, no Bcc field appears for -t to send to."""
    raw = b"To: a@x\nSubject: hi\rBcc: victim@x\n\nline\rtwo\n"
    want = b"To: a@x\r\nSubject: hi Bcc: victim@x\r\n\r\nline\r\ntwo\r\n"
    assert _read([raw]) == want
    assert _read([raw[i : i + 1] for i in range(len(raw))]) == want
    # Old Mac input has no LF at all: each CR ends a line, the header's too.
    assert _read([b"To: a@x\rSubject: s\r\rbody\r"]) == b"To: a@x\r\nSubject: s\r\n\r\nbody\r\n"
    # The header's end split between pieces, a dot ending it, a CR before the end.
    assert _read([b"To: a@x\n\r", b"\nb\rc\n"]) == b"To: a@x\r\n\r\nb\r\nc\r\n"
    assert _read([b"To: a@x\rY\n", b".\n", b"never\n"]) == b"To: a@x Y\r\n"
    assert _read([b"To: a@x\r", b"\r\n\nbody\n"]) == b"To: a@x\r\n\r\nbody\r\n"
    # A Mac's input with one final LF keeps its blank line and body.
    assert _read([b"Subject: hi\r\rbody line\r\n"]) == b"Subject: hi\r\n\r\nbody line\r\n"
    # A header longer than max_message_size is refused, never read on as body.
    with pytest.raises(DataError):
        _read([b"Subject: a" + b"\r" * 600, b"\rBcc: victim@x\n\nbody\n"], limit=500)


def test_read_message_over_the_limit_is_65() -> None:
    with pytest.raises(DataError) as caught:
        _read([b"x" * 600, b"y" * 600], limit=1000)
    assert caught.value.exit_code == 65
    assert "max_message_size" in str(caught.value)


class SMTPPipeClient:
    """A line-based SMTP client speaking to `sendmail -bs` over its stdin/stdout."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def read_reply(self) -> tuple[int, list[str]]:
        assert self.proc.stdout is not None
        lines: list[str] = []
        while True:
            line = self.proc.stdout.readline().decode()
            assert line.endswith("\r\n"), f"bad reply line {line!r} after {lines}"
            lines.append(line[4:-2])
            if line[3] == " ":
                return int(line[:3]), lines

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def command(self, line: str) -> tuple[int, list[str]]:
        self.send(line.encode() + b"\r\n")
        return self.read_reply()

    def finish(self) -> tuple[int, bytes]:
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


def test_bs_session_symfony(config: Path, smtp_server: SMTPTestServer, symlinks: Path) -> None:
    client = SMTPPipeClient([str(symlinks / "sendmail"), "-bs"])
    try:
        assert client.read_reply()[0] == 220
        code, lines = client.command(f"EHLO [{HOST}]")
        assert code == 250 and "8BITMIME" in lines and "PIPELINING" in lines
        assert client.command("RCPT TO:<a@x.example>")[0] == 503
        assert client.command("DATA")[0] == 503
        assert client.command("MAIL FROM:<app@example.org> BODY=8BITMIME")[0] == 250
        assert client.command("MAIL FROM:<again@example.org>")[0] == 503
        assert client.command("RCPT TO:<a@x.example>")[0] == 250
        assert client.command("RCPT TO:<b@x.example>")[0] == 250
        assert client.command("NOOP")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(
            b"From: App <app@example.org>\r\nTo: a@x.example\r\nSubject: hi\r\n\r\n"
            b"..leading dot\r\n.\r\n"
        )
        code, lines = client.read_reply()
        assert code == 250, lines
        # A second transaction after RSET, and one whose delivery fails at the relay.
        assert client.command("RSET")[0] == 250
        assert client.command("HELO client")[0] == 250
        assert client.command("MAIL FROM:<>")[0] == 250
        assert client.command("RCPT TO:<root>")[0] == 250
        assert client.command("DATA")[0] == 354
        smtp_server.fault = "554-data-end"
        client.send(b"Subject: second\r\n\r\nbody\r\n.\r\n")
        code, lines = client.read_reply()
        assert 500 <= code < 600, lines
        smtp_server.fault = None
        assert client.command("VRFY x")[0] == 252
        assert client.command("BOGUS")[0] == 500
        assert client.command("QUIT")[0] == 221
    finally:
        returncode, err = client.finish()
    assert returncode == 0, err
    got = smtp_server.messages[0]
    assert (got.mail_from, got.rcpt_tos) == ("app@example.org", ["a@x.example", "b@x.example"])
    assert got.data.endswith(b"\r\n\r\n.leading dot\r\n")
    rejected = smtp_server.rejected[0]
    assert (rejected.mail_from, rejected.rcpt_tos) == ("<>", [f"root@{HOST}"])


def test_bs_in_process_eof(config: Path, sendmail: Run) -> None:
    code, out, _ = sendmail(["-bs"], b"EHLO x\r\nMAIL FROM:<a@x.example>\r\n")
    assert code == 0
    replies = out.splitlines()
    assert replies[0].startswith("220 ") and replies[-1].startswith("250 ")


@pytest.mark.parametrize("offered", [True, False])
def test_utf8_address_needs_smtputf8(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    sendmail: Run,
    offered: bool,
) -> None:
    server = smtp_server_factory(smtputf8=offered)
    path = write_config(tmp_path, server)
    code, _, err = sendmail(
        ["-C", str(path), "-i", "üser@exämple.org"], "Subject: é\n\nb\n".encode()
    )
    if offered:
        assert code == 0
        got = only(server)
        assert got.smtputf8 and "BODY=8BITMIME" in got.mail_options
        assert got.rcpt_tos == ["üser@exämple.org"]
    else:
        assert code == 65 and "SMTPUTF8" in err
        assert server.messages == []


def test_a_full_stdout_is_one_line_and_ex_ioerr(
    config: Path, smtp_server: SMTPTestServer, symlinks: Path
) -> None:
    """`sendmail -bp > /dev/full` and `-bs`: a disk that is full is the user's, not a bug
    (70 with "internal error: OSError"), as a stdout that is not open at all."""
    script = str(symlinks / "sendmail")
    for argv in ([script, "-bp"], [script, "-bs"], [sys.executable, "-m", "ssmtp_mailer",
                 "sendmail", "-bp"]):  # fmt: skip
        with open("/dev/full", "wb") as full:
            done = subprocess.run(
                argv, input=b"QUIT\r\n", stdout=full, stderr=subprocess.PIPE, timeout=30
            )
        assert (done.returncode, done.stderr) == (
            74,
            b"ssmtp-mailer: standard output: No space left on device\n",
        ), argv


def test_config_and_verbose_after_the_sendmail_command(
    config: Path, smtp_server: SMTPTestServer, run_main: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §2: `ssmtp-mailer sendmail --config PATH --verbose` as before the command name
    (it was "--config: unknown flag", 64); the sendmail link takes only sendmail's flags."""
    monkeypatch.delenv("SSMTP_MAILER_CONFIG")
    message = b"Subject: s\n\nb\n"
    code, _, err = run_main(
        ["sendmail", "--config", str(config), "--verbose", "a@x.example"], message, prog="x"
    )
    assert (code, "S: 250" in err) == (0, True)
    assert run_main(["sendmail", f"--config={config}", "b@x.example"], message, prog="x") == (
        0,
        "",
        "",
    )
    assert [m.rcpt_tos for m in smtp_server.wait_for(2)] == [["a@x.example"], ["b@x.example"]]
    # After `--` it is a recipient, and the link itself knows no such flag.
    code, _, err = run_main(["sendmail", "--", "--config"], message, prog="x")
    assert code == 78 and "no configuration file found" in err
    for args in (["--config", str(config), "c@x.example"], ["--verbose", "c@x.example"]):
        assert run_main(args, message) == (
            64,
            "",
            f"ssmtp-mailer: {args[0]}: unknown flag\nssmtp-mailer: hint: see sendmail --help\n",
        )
    assert len(smtp_server.messages) == 2
