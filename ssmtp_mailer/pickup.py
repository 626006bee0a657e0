"""The maildrop pickup (SPEC §8): files local users left in `spool_dir/maildrop/`.

Run by every `queue run` and by the listener, as root or the spool's owner. Each file is
taken under `flock`, its owner's uid checked against the sender, a `Received:` naming the
uid added, and the message delivered or queued through the sendmail path; the file goes
only once that outcome is durable. A sender the uid may not use is kept in `failed/` and
the user is told by a bounce. A file that is no maildrop message at all goes to
`corrupt/`, named once in the log, for the administrator to look at.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ssmtp_mailer import dialect, log
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import PROG, UsageError
from ssmtp_mailer.message import Dsn, parse_dsn
from ssmtp_mailer.submit import MAILDROP, MAILDROP_MAGIC, TEMP_PREFIX, login_of, sender_refusal
from ssmtp_mailer.submit import uid_label as _uid_label

# A temp file this old belongs to a submitter that died before its rename.
STALE_SECONDS = 15 * 60
CORRUPT = "corrupt"  # beside maildrop/: files no pickup could read, kept, never retried


class Dropped:
    """One maildrop file, read and checked."""

    __slots__ = ("data", "dsn", "eightbit", "recipients", "sender", "smtputf8", "uid")

    def __init__(self, uid: int, raw: bytes) -> None:
        if not raw.startswith(MAILDROP_MAGIC):
            raise ValueError("not a maildrop file")
        head, newline, data = raw[len(MAILDROP_MAGIC) :].partition(b"\n")
        if not newline:
            raise ValueError("no envelope line")
        envelope = json.loads(head)
        self.uid = uid
        self.sender = str(envelope["sender"])
        self.recipients = [str(r) for r in envelope["recipients"]]
        self.smtputf8 = bool(envelope.get("smtputf8", False))
        self.eightbit = bool(envelope.get("eightbit", False))
        self.dsn = _dsn(envelope.get("dsn"))
        self.data = data


def _dsn(value: object) -> Dsn | None:
    """The envelope's -N, -R and -V, checked as sendmail checks them; ValueError if bad."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"notify", "ret", "envid"}:
        raise ValueError("dsn: not an object of notify, ret and envid")
    if not all(isinstance(v, str) for v in value.values()):
        raise ValueError("dsn: values must be strings")
    try:
        return parse_dsn(value.get("notify"), value.get("ret"), value.get("envid"))
    except UsageError as exc:
        raise ValueError(f"dsn: {exc.what}: {exc.why}") from None


def received_field(config: Config, uid: int, via: str) -> bytes:
    from ssmtp_mailer import __version__
    from ssmtp_mailer.message import format_date

    hostname = config.global_.default_hostname
    line = f"Received: from {_uid_label(uid)}\r\n\tby {hostname} ({PROG} {__version__}) via {via};"
    return f"{line}\r\n\t{format_date(time.time())}\r\n".encode("utf-8", "replace")


def pick_up(config: Config, problems: Callable[[str], None] | None = None) -> int:
    """Take every complete maildrop file; the number handed on (delivered, queued or failed).

    Each file that could not be taken is logged, and told to `problems` (a `queue run`
    has someone to tell).
    """

    def problem(line: str) -> None:
        log.write(config, "ERROR", line)
        if problems is not None:
            problems(line)

    directory = config.global_.spool_dir / MAILDROP
    if os.geteuid() == 0 and directory.parent.is_dir() and not directory.is_dir():
        # root's first `queue run` opens the maildrop of an existing spool for local
        # users, listener or not (looking never creates the spool itself).
        from ssmtp_mailer.errors import MailerError
        from ssmtp_mailer.submit import ensure_submission_dirs

        with contextlib.suppress(MailerError):
            ensure_submission_dirs(config)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return 0
    taken = 0
    for name in names:
        path = directory / name
        if name.startswith(TEMP_PREFIX):
            with contextlib.suppress(OSError):
                if time.time() - path.lstat().st_mtime > STALE_SECONDS:
                    path.unlink()
            continue
        try:
            if _take(config, path, problem):
                taken += 1
        except OSError as exc:
            problem(f"maildrop {name}: {exc.strerror or exc}")
        except (ValueError, KeyError, TypeError) as exc:
            problem(f"maildrop {name}: {_unreadable(exc)}")
    if taken:
        _fsync(directory)
    return taken


def _take(config: Config, path: Path, problem: Callable[[str], None]) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False  # another pickup took it
    except PermissionError:
        # The file is its submitter's alone (0600): a listener running as spool_user
        # leaves it to root's runner (the path unit, the timer or cron).
        return False
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        problem(f"maildrop {path.name}: a symbolic link, removed")
        path.unlink()
        return False
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        # Only regular files, each with its one name: a hard link to another user's file
        # must not be mailed out as theirs.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            problem(f"maildrop {path.name}: not a plain file, removed")
            path.unlink()
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if os.stat(path).st_ino != st.st_ino:
                return False
        except FileNotFoundError:
            return False
        try:
            dropped = Dropped(st.st_uid, handle.read())
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # anyone writes here
            kept = _set_aside(config, path)
            why = _unreadable(exc)
            problem(f"maildrop {path.name} from {_uid_label(st.st_uid)}: {why}; moved to {kept}")
            return False
        outcome = _hand_on(config, dropped)
        if outcome is None:
            return False  # not durable anywhere yet: try again on the next run
        path.unlink()
        log.write(config, "INFO", f"maildrop {path.name} from {_uid_label(st.st_uid)}: {outcome}")
        return True


def _unreadable(exc: Exception) -> str:
    """Why a maildrop file is no message, in words (not the Python class that said so)."""
    if isinstance(exc, KeyError):
        return f"its envelope has no {exc}"
    if isinstance(exc, RecursionError):
        return "its envelope is nested too deep"
    if isinstance(exc, json.JSONDecodeError):
        return f"its envelope is no JSON: {exc}"
    return str(exc)


def _hand_on(config: Config, dropped: Dropped) -> str | None:
    """Deliver or queue; keep a refused sender in failed/ with a bounce. None: try later."""
    why = sender_refusal(config, dropped.uid, dropped.sender)
    received = received_field(config, dropped.uid, "maildrop")
    if why is not None:
        reason = f"sender {dropped.sender or '<>'} not owned by {why}"
        owner = f"{login_of(dropped.uid)}@{config.global_.default_hostname}"
        from ssmtp_mailer.spool.bounce import refuse_local

        entry = refuse_local(
            config, owner, dropped.sender, dropped.recipients, received + dropped.data, reason
        )
        return f"refused ({reason}), kept in failed/ as {entry}"
    reply = dialect.deliver_data(
        config,
        dropped.data,
        dropped.sender,
        dropped.recipients,
        received=received,
        dsn=dropped.dsn,
        report=lambda line: log.write(config, "WARNING", line),
        run_queue=False,
        held=True,
        told=False,
    )
    if reply.startswith("4"):
        return None  # not even queued (the spool is full): the file stays for the next run
    return reply


def _set_aside(config: Config, path: Path) -> Path:
    """Move a file that is no maildrop message to `corrupt/` (0700, the spool owner's), out
    of every later pickup's way; it may still be somebody's mail."""
    directory = config.global_.spool_dir / CORRUPT
    if not directory.is_dir():
        directory.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            owner = os.stat(directory.parent)
            os.chown(directory, owner.st_uid, owner.st_gid)
    target = directory / path.name
    n = 0
    while target.exists():  # submitters choose the names: never over an earlier one
        n += 1
        target = directory / f"{path.name}.{n}"
    os.rename(path, target)
    return target


def _fsync(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
