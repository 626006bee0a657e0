"""The maildrop pickup (SPEC §8): files local users left in `spool_dir/maildrop/`.

Run by every `queue run` and by the listener, as root or the spool's owner. Each file is
taken under `flock`, its owner's uid checked against the sender, a `Received:` naming the
uid added, and the message delivered or queued through the sendmail path; the file goes
only once that outcome is durable. A sender the uid may not use is kept in `failed/` and
the user is told by a bounce. A file that is no maildrop message at all goes to
`corrupt/`, named once in the log, for the administrator to look at; so does a directory
with something in it, while links, empty directories, FIFOs and sockets are removed, each
named once too: whatever a user leaves here is out of every later pickup's way.
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
from typing import TYPE_CHECKING

from ssmtp_mailer import dialect, log
from ssmtp_mailer.addresses import address_problem, qualify
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import PROG, MailerError, UsageError
from ssmtp_mailer.message import Dsn, parse_dsn
from ssmtp_mailer.submit import MAILDROP, MAILDROP_MAGIC, TEMP_PREFIX, login_of, sender_refusal
from ssmtp_mailer.submit import uid_label as _uid_label

if TYPE_CHECKING:
    from ssmtp_mailer.relay.pool import ConnectionPool

# A temp file this old belongs to a submitter that died before its rename.
STALE_SECONDS = 15 * 60
CORRUPT = "corrupt"  # beside maildrop/: files no pickup could read, kept, never retried
# Room for the magic line and the JSON envelope (sender, recipients, DSN) beside a message
# of max_message_size: a file larger than both is set aside unread, never read into memory.
ENVELOPE_ALLOWANCE = 1 << 20


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
        sender, recipients = envelope["sender"], envelope["recipients"]
        if not isinstance(sender, str) or not isinstance(recipients, list):
            raise ValueError("the envelope's sender or recipients are of the wrong type")
        if not all(isinstance(r, str) for r in recipients):
            raise ValueError("a recipient that is not a string")
        self.sender = sender
        self.recipients = recipients
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


def pick_up(
    config: Config,
    problems: Callable[[str], None] | None = None,
    pool: ConnectionPool | None = None,
) -> int:
    """Take every complete maildrop file; the number handed on (delivered, queued or failed).

    Each file that could not be taken is logged, and told to `problems` (a `queue run`
    has someone to tell). The relay connections are `pool`'s (the listener's), or this
    pickup's own: they are closed (QUIT) only after the files they carried are removed,
    so that a kill while a relay takes its time over QUIT never sends one twice.
    """

    def problem(line: str) -> None:
        log.write(config, "ERROR", line)
        if problems is not None:
            problems(line)

    from ssmtp_mailer.spooldirs import UnsafeSpoolError, open_spool_dir

    directory = config.global_.spool_dir / MAILDROP
    if os.geteuid() == 0 and directory.parent.is_dir() and not os.path.lexists(directory):
        # root's first `queue run` opens the maildrop of an existing spool for local
        # users, listener or not (looking never creates the spool itself).
        from ssmtp_mailer.errors import MailerError
        from ssmtp_mailer.submit import ensure_submission_dirs

        with contextlib.suppress(MailerError):
            ensure_submission_dirs(config)
    try:
        # Never through a link: root would list, remove and move whatever it points at.
        dir_fd = open_spool_dir(directory)
    except UnsafeSpoolError as exc:
        problem(f"{exc.filename}: {exc.strerror}; nothing picked up")
        return 0
    except OSError:
        return 0
    from ssmtp_mailer.relay.pool import with_pool

    try:
        with with_pool(pool, config.global_.connection_reuse_idle) as connections:
            return _take_all(config, dir_fd, problem, connections)
    finally:
        os.close(dir_fd)


def _take_all(
    config: Config, dir_fd: int, problem: Callable[[str], None], pool: ConnectionPool
) -> int:
    from ssmtp_mailer.spooldirs import UnsafeSpoolError

    try:
        names = sorted(os.listdir(dir_fd))
    except OSError:
        return 0
    taken = 0
    for name in names:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # another pickup took it
        except OSError as exc:
            problem(f"maildrop {log.quoted(name)}: {exc.strerror or exc}")
            continue
        try:
            if not stat.S_ISREG(st.st_mode):
                # A submitter only ever makes regular files, its temporary ones included.
                _clear_away(config, dir_fd, name, st, problem)
            elif name.startswith(TEMP_PREFIX):
                if time.time() - st.st_mtime > STALE_SECONDS:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dir_fd)
            elif _take(config, dir_fd, name, problem, pool):
                taken += 1
        except UnsafeSpoolError as exc:
            problem(f"maildrop {log.quoted(name)}: {exc.filename}: {exc.strerror}")
        except OSError as exc:
            problem(f"maildrop {log.quoted(name)}: {exc.strerror or exc}")
        except (ValueError, KeyError, TypeError) as exc:
            problem(f"maildrop {log.quoted(name)}: {_unreadable(exc)}")
        except MemoryError:  # one file must never stop the pickup of the others
            problem(f"maildrop {log.quoted(name)}: out of memory taking it; left for the next run")
    if taken:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    return taken


def _take(
    config: Config, dir_fd: int, name: str, problem: Callable[[str], None], pool: ConnectionPool
) -> bool:
    """Take the maildrop file `name` (in the directory `dir_fd`); True once handed on."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return False  # another pickup took it
    except PermissionError:
        # The file is its submitter's alone (0600): a listener running as spool_user
        # leaves it to root's runner (the path unit, the timer or cron).
        return False
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        return False  # made a link or a socket since it was looked at: the next pickup clears it
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False  # replaced since it was looked at: the next pickup clears it
        # Each with its one name: a hard link to another user's file must not be mailed
        # out as theirs.
        if st.st_nlink != 1:
            problem(f"maildrop {log.quoted(name)}: not a plain file, removed")
            os.unlink(name, dir_fd=dir_fd)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino != st.st_ino:
                return False
        except FileNotFoundError:
            return False
        who = f"maildrop {log.quoted(name)} from {_uid_label(st.st_uid)}"
        # Anyone writes here, and a sparse file of gigabytes costs its writer nothing.
        limit = config.global_.max_message_size + ENVELOPE_ALLOWANCE
        raw = handle.read(limit + 1) if st.st_size <= limit else b""
        if st.st_size > limit or len(raw) > limit:  # grown since the fstat: still too big
            kept = _set_aside(config, dir_fd, name)
            size = max(st.st_size, len(raw))
            limit = config.global_.max_message_size
            why = f"{size} octets, over max_message_size ({limit} octets)"
            problem(f"{who}: {why}; moved unread to {log.quoted(str(kept))}")
            return False
        try:
            dropped = Dropped(st.st_uid, raw)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # anyone writes here
            kept = _set_aside(config, dir_fd, name)
            why = _unreadable(exc)
            problem(f"{who}: {why}; moved to {log.quoted(str(kept))}")
            return False
        outcome = _hand_on(config, dropped, pool)
        if outcome.startswith("4"):  # not durable anywhere yet: try again on the next run
            problem(f"{who}: left in the maildrop for the next run: {outcome}")
            return False
        os.unlink(name, dir_fd=dir_fd)
        log.write(config, "INFO", f"{who}: {outcome}")
        return True


def _clear_away(
    config: Config, dir_fd: int, name: str, st: os.stat_result, problem: Callable[[str], None]
) -> None:
    """Out of every later pickup's way, named once: an entry that is no regular file.

    Anyone may make one (maildrop/ is 1733) and no pickup can ever take it, so leaving it
    would name it again at every pickup, the listener's every few seconds. A link, a FIFO
    or a socket is removed; a directory too when it is empty, else it goes to `corrupt/`
    as junk files do: what is in it may be somebody's. maildrop/ is the spool owner's, so
    the sticky bit lets the pickup remove and rename the entries of others.
    """
    where = f"maildrop {log.quoted(name)}"
    who = f"{where} from {_uid_label(st.st_uid)}"
    try:
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(name, dir_fd=dir_fd)
                what = "an empty directory, removed"
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                kept = _set_aside(config, dir_fd, name)
                what = f"a directory with something in it; moved to {log.quoted(str(kept))}"
        else:
            os.unlink(name, dir_fd=dir_fd)
            if stat.S_ISLNK(st.st_mode):
                who, what = where, "a symbolic link, removed"
            else:
                what = f"{_kind(st.st_mode)}, removed"
    except FileNotFoundError:
        return  # another pickup cleared it first
    except PermissionError:
        if not stat.S_ISDIR(st.st_mode):
            raise
        # Moving a directory takes write permission on it (its `..` changes), which the
        # listener, running as spool_user, lacks on a user's own: it leaves it to root's
        # runner (the path unit, the timer or cron), as it leaves their 0600 files.
        return
    problem(f"{who}: {what}")


def _kind(mode: int) -> str:
    """What a maildrop entry that is neither a file, a directory nor a link is, in words."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def _unreadable(exc: Exception) -> str:
    """Why a maildrop file is no message, in words (not the Python class that said so)."""
    if isinstance(exc, KeyError):
        return f"its envelope has no {exc}"
    if isinstance(exc, RecursionError):
        return "its envelope is nested too deep"
    if isinstance(exc, json.JSONDecodeError):
        return f"its envelope is no JSON: {exc}"
    return str(exc)


def _hand_on(config: Config, dropped: Dropped, pool: ConnectionPool) -> str:
    """Deliver or queue; keep a refused sender in failed/ with a bounce. What became of it:
    a 4xx reply when nothing took it (the spool full, no route), to try again later."""
    why = sender_refusal(config, dropped.uid, dropped.sender)
    received = received_field(config, dropped.uid, "maildrop")

    def keep(reason: str) -> str:
        """In failed/, and a notice to the submitter, who heard 0 when it was dropped."""
        from ssmtp_mailer.spool.bounce import refuse_local

        owner = f"{login_of(dropped.uid)}@{config.global_.default_hostname}"
        entry = refuse_local(
            config, owner, dropped.sender, dropped.recipients, received + dropped.data, reason
        )
        return f"refused ({reason}), kept in failed/ as {entry}"

    if why is not None:
        return keep(f"sender {dropped.sender or '<>'} not owned by {why}")
    hostname = config.global_.default_hostname
    for recipient in dropped.recipients:
        # One address each, as the submitter wrote them (not a list to split again).
        problem = address_problem(qualify(recipient, hostname))
        if problem is not None:
            return keep(f"recipient address {recipient!r}: {problem}")
    whole: list[MailerError] = []  # the message refused as a whole: nothing kept of it
    reply = dialect.deliver_data(
        config,
        dropped.data,
        dropped.sender,
        dropped.recipients,
        received=received,
        dsn=dropped.dsn,
        report=lambda line: log.write(config, "WARNING", line),
        run_queue=False,
        pool=pool,
        held=True,
        told=False,
        refused=whole.append,
    )
    if whole:  # a recipient no address, over max_message_size, no route: never silently
        return keep(f"{whole[0].what}: {whole[0].why}")
    return reply


def _set_aside(config: Config, drop_fd: int, name: str) -> Path:
    """Move a file that is no maildrop message to `corrupt/` (0700, the spool owner's), out
    of every later pickup's way; it may still be somebody's mail. Never into a link
    planted as `corrupt` (UnsafeSpoolError): the file would land wherever it points."""
    from ssmtp_mailer.spooldirs import spool_dir_fd

    root = config.global_.spool_dir
    with spool_dir_fd(root, trusted=True) as root_fd:
        try:
            os.mkdir(CORRUPT, 0o700, dir_fd=root_fd)
            made = True
        except FileExistsError:
            made = False
        with spool_dir_fd(root / CORRUPT) as fd:
            if made and os.geteuid() == 0:
                owner = os.fstat(root_fd)
                os.fchown(fd, owner.st_uid, owner.st_gid)
            target, n = name, 0
            while _exists(fd, target):  # submitters choose the names: never over an earlier one
                n += 1
                target = f"{name}.{n}"
            os.rename(name, target, src_dir_fd=drop_fd, dst_dir_fd=fd)
    return root / CORRUPT / target


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
