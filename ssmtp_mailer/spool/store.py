"""The durable spool (SPEC §7): entries, their TOML envelopes, durable writes and locking.

Layout under `spool_dir`: `queue/ID.msg` (the message bytes exactly as handed to the
engine) plus `queue/ID.toml` (envelope and history); `failed/` holds the same pair for
messages that will not be retried. The envelope is the commit point: it is renamed into
place only after the message file is durable, and removed first when an entry goes, so a
message file without an envelope is always debris. A runner holds `flock` on the message
file (never rewritten, unlike the envelope) while it works on an entry.

A failed/ entry whose sender is owed a failure notice has `ID.notice` beside it, naming the
queue id the notice takes if it must wait: made durable with the entry, before the queue
entry gives up its recipients, and removed once the notice is sent or queued, so that a
runner killed in between leaves it to the next run (once: a notice queued under that id
is not made again).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ssmtp_mailer.config.model import Config, TempFailurePolicy
from ssmtp_mailer.errors import (
    CantCreateError,
    DataError,
    MailerError,
    NoPermError,
    TempFailError,
    UsageError,
)
from ssmtp_mailer.message import Dsn
from ssmtp_mailer.rewrite import RouteGroup
from ssmtp_mailer.spooldirs import UnsafeSpoolError, open_spool_dir, spool_dir_fd

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

QUEUE = "queue"
FAILED = "failed"
# Entries whose envelope cannot be read, moved aside by the runner with the reason beside them.
DAMAGED = "damaged"
REASON_SUFFIX = ".reason"
NOTICE_SUFFIX = ".notice"
MESSAGE_SUFFIX = ".msg"
ENVELOPE_SUFFIX = ".toml"
TEMP_PREFIX = ".tmp-"
# Debris (temp files, message files whose envelope never arrived) younger than this may
# belong to a writer that is still running, so only older debris is removed.
STALE_SECONDS = 15 * 60
BACKOFF_START = 60
BACKOFF_CAP = 3600
ENVELOPE_VERSION = 1
_ID_RE = re.compile(r"^[0-9A-F]{17}$")


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt: when, and what the relay (or the network) said."""

    time: dt.datetime
    reply: str


@dataclass(frozen=True)
class Entry:
    """A spool entry's envelope; `replies` and `failed_at` are set only in `failed/`."""

    id: str
    sender: str
    recipients: tuple[str, ...]
    route: str
    smtputf8: bool
    eightbit: bool
    created: dt.datetime
    queued: dt.datetime
    next_attempt: dt.datetime
    attempts: tuple[Attempt, ...] = ()
    header_from: str | None = None
    reply_to: str | None = None
    reason: str = ""
    failed_at: dt.datetime | None = None
    replies: dict[str, str] = field(default_factory=dict)
    origin: str | None = None
    size: int = 0
    area: str = QUEUE
    dsn: Dsn | None = None

    @property
    def last_error(self) -> str:
        if self.area == FAILED and self.reason:
            return self.reason
        return self.attempts[-1].reply if self.attempts else self.reason

    def age(self, now: dt.datetime | None = None) -> float:
        return ((now or _now()) - self.created).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view for `queue list --json` and `queue show --json`."""
        out: dict[str, Any] = {
            "id": self.id,
            "area": self.area,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "route": self.route,
            "size": self.size,
            "created": self.created.isoformat(),
            "age": round(self.age()),
            "attempts": len(self.attempts),
            "last_error": self.last_error,
            "next_attempt": self.next_attempt.isoformat(),
            "history": [{"time": a.time.isoformat(), "reply": a.reply} for a in self.attempts],
        }
        if self.area == FAILED:
            out.update(
                reason=self.reason,
                failed_at=self.failed_at.isoformat() if self.failed_at else None,
                replies=dict(self.replies),
                origin=self.origin,
            )
        return out


# -- locations and low-level durable writes ------------------------------------------


def spool_root(config: Config) -> Path:
    return config.global_.spool_dir


def area_dir(config: Config, area: str) -> Path:
    return config.global_.spool_dir / area


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _new_id() -> str:
    # Millisecond time first so ids sort in arrival order; random bits keep concurrent
    # writers apart.
    return f"{time.time_ns() // 1_000_000:011X}{secrets.randbits(24):06X}"


def _cant_create(path: Path, exc: OSError) -> CantCreateError:
    if isinstance(exc, UnsafeSpoolError):
        return CantCreateError(
            f"spool {exc.filename}",
            exc.strerror or str(exc),
            hint="someone who owns the spool put it there: look at it, move it away",
        )
    return CantCreateError(
        f"spool {path}",
        exc.strerror or str(exc),
        hint="check spool_dir in [global] and that this user may write there",
    )


def _group_mail() -> int | None:
    """The `mail` group's id when we are root and it exists (a shared root:mail spool)."""
    if os.geteuid() != 0:
        return None
    import grp

    try:
        return grp.getgrnam("mail").gr_gid
    except KeyError:
        return None


def _spool_owner(config: Config) -> tuple[int, int] | None:
    """As root: `spool_user` and its group, who own the spool (SPEC §8), when that user exists."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(config.global_.spool_user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _make_dir(
    path: Path, owner: tuple[int, int] | None = None, *, trusted: bool = False, mode: int = 0o2770
) -> None:
    """Make a spool directory if it is missing; UnsafeSpoolError if the name is no directory.

    Root makes it `mode` for spool_user (or root:mail); anyone else 0700, their own."""
    try:
        os.close(open_spool_dir(path, trusted=trusted))
        return
    except FileNotFoundError:
        pass
    gid = _group_mail() if owner is None else owner[1]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with spool_dir_fd(path, trusted=trusted) as fd:  # the one just made, not a link put there
        if gid is not None:
            os.fchown(fd, 0 if owner is None else owner[0], gid)
            # setgid so entries inherit the group; explicit chmod because mkdir obeys umask.
            os.fchmod(fd, mode)
        else:
            os.fchmod(fd, 0o700)


def ensure_spool(config: Config) -> Path:
    """Create the spool and its areas with safe permissions; CantCreateError if impossible.

    Made by root, they belong to `spool_user` (group-shared, setgid), so that root's
    sendmail, the listener and the runner can each read, update and remove the entries.
    """
    root = spool_root(config)
    owner = _spool_owner(config)
    made = not root.is_dir()
    try:
        # SPEC §8: the spool itself 0755, as the package makes it (anyone reaches maildrop/
        # and submit.sock; only its areas are group mail's).
        _make_dir(root, owner, trusted=True, mode=0o755)
        for path in (root / QUEUE, root / FAILED):
            _make_dir(path, owner)
        if made and os.geteuid() == 0:
            open_for_submission(root)  # whoever makes root's spool: SPEC §8's layout
    except OSError as exc:
        raise _cant_create(root, exc) from None
    return root


def ensure_area(config: Config, name: str) -> Path:
    """An area of the spool beside queue/ (the rate-limit state), owned as queue/ is."""
    path = ensure_spool(config) / name
    try:
        _make_dir(path, _spool_owner(config))
    except OSError as exc:
        raise _cant_create(path, exc) from None
    return path


def open_for_submission(root: Path) -> None:
    """As the spool's owner: the spool 0755 at least (others reach maildrop/ and the
    socket) and maildrop/ 1733, owned as the spool is (SPEC §8); OSError if impossible,
    UnsafeSpoolError if `maildrop` is no real directory (never followed, never chmodded)."""
    from ssmtp_mailer.submit import MAILDROP

    with spool_dir_fd(root, trusted=True) as root_fd:
        owner = os.fstat(root_fd)
        mode = owner.st_mode & 0o7777
        if mode & 0o055 != 0o055:
            os.fchmod(root_fd, mode | 0o055)
        drop = root / MAILDROP
        try:
            os.mkdir(MAILDROP, 0o700, dir_fd=root_fd)
            made = True
        except FileExistsError:
            made = False
        with spool_dir_fd(drop) as fd:
            if made and os.geteuid() == 0:
                # The spool's owner (spool_user) lists it: the listener runs as that user.
                os.fchown(fd, owner.st_uid, owner.st_gid)
            if os.fstat(fd).st_mode & 0o7777 != 0o1733:
                os.fchmod(fd, 0o1733)


def _fsync_dir(directory: Path) -> None:
    with spool_dir_fd(directory) as fd:
        os.fsync(fd)


def _write_temp(dir_fd: int, data: bytes | bytearray) -> str:
    """Write `data` to a fresh temp file in the directory `dir_fd` and fsync it; its name."""
    temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    # Group members may run the queue when the spool is shared with group `mail`.
    mode = 0o660 if os.fstat(dir_fd).st_mode & 0o070 else 0o600
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, mode, dir_fd=dir_fd)
    try:
        if mode & 0o060:
            os.fchmod(fd, mode)  # a group member's umask (077) must not hide it from the group
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    os.close(fd)
    return temp


def _place(directory: Path, name: str, data: bytes | bytearray) -> None:
    """Atomically put `data` at directory/name (temp file, fsync, rename); no dir fsync."""
    with spool_dir_fd(directory) as dir_fd:
        temp = _write_temp(dir_fd, data)
        try:
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise


def _unlink_in(directory: Path, *names: str) -> None:
    """Remove `names` from a spool directory (reached without following a link), in order;
    a name already gone is no error; then fsync the directory."""
    with spool_dir_fd(directory) as dir_fd:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
        os.fsync(dir_fd)


# -- envelope encoding ---------------------------------------------------------------


def _encode(entry: Entry) -> bytes:
    import tomli_w

    doc: dict[str, Any] = {
        "version": ENVELOPE_VERSION,
        "id": entry.id,
        "sender": entry.sender,
        "recipients": list(entry.recipients),
        "route": entry.route,
        "smtputf8": entry.smtputf8,
        "eightbit": entry.eightbit,
        "created": entry.created,
        "queued": entry.queued,
        "next_attempt": entry.next_attempt,
        "reason": entry.reason,
    }
    optional = {
        "header_from": entry.header_from,
        "reply_to": entry.reply_to,
        "failed_at": entry.failed_at,
        "origin": entry.origin,
    }
    doc.update({k: v for k, v in optional.items() if v is not None})
    if entry.replies:
        doc["replies"] = dict(entry.replies)
    if entry.dsn is not None:
        doc["dsn"] = {**entry.dsn.flags()}
        if entry.dsn.orcpt:
            doc["dsn"]["orcpt"] = [list(pair) for pair in entry.dsn.orcpt]
    doc["attempts"] = [{"time": a.time, "reply": a.reply} for a in entry.attempts]
    return tomli_w.dumps(doc).encode("utf-8")


def _as_time(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise ValueError(f"expected a date-time, got {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _dsn(table: dict[str, Any]) -> Dsn:
    flags = {k: str(table[k]) for k in ("notify", "ret", "envid") if k in table}
    orcpt = tuple((str(rcpt), str(value)) for rcpt, value in table.get("orcpt", []))
    return Dsn(**flags, orcpt=orcpt)


def _decode(text: bytes, *, area: str, size: int) -> Entry:
    doc = tomllib.loads(text.decode("utf-8"))
    failed_at = doc.get("failed_at")
    return Entry(
        id=str(doc["id"]),
        sender=str(doc["sender"]),
        recipients=tuple(str(r) for r in doc["recipients"]),
        route=str(doc["route"]),
        smtputf8=bool(doc.get("smtputf8", False)),
        eightbit=bool(doc.get("eightbit", False)),
        created=_as_time(doc["created"]),
        queued=_as_time(doc.get("queued", doc["created"])),
        next_attempt=_as_time(doc["next_attempt"]),
        attempts=tuple(
            Attempt(_as_time(a["time"]), str(a["reply"])) for a in doc.get("attempts", [])
        ),
        header_from=doc.get("header_from"),
        reply_to=doc.get("reply_to"),
        reason=str(doc.get("reason", "")),
        failed_at=_as_time(failed_at) if failed_at is not None else None,
        replies={str(k): str(v) for k, v in doc.get("replies", {}).items()},
        origin=doc.get("origin"),
        size=size,
        area=area,
        dsn=_dsn(doc["dsn"]) if "dsn" in doc else None,
    )


def _open_regular(path: Path) -> int:
    """Open a spool file without following links; only a regular file of ours or root's.

    The root spool may be group-writable (root:mail): a planted symlink must not make
    the runner mail out /etc/shadow.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    st = os.fstat(fd)
    area = path.parent.stat()
    # Ours, root's, or the spool_user's who owns the area (entries the listener wrote);
    # or, in an area shared with its group, a group member's (their own sendmail queued
    # it), which the group may read anyway: nothing they could not mail out themselves.
    ours = st.st_uid in {0, os.geteuid(), area.st_uid}
    shared = area.st_mode & stat.S_IWGRP and st.st_gid == area.st_gid
    if not stat.S_ISREG(st.st_mode) or not (ours or (shared and st.st_mode & stat.S_IRGRP)):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular spool file of ours", str(path))
    return fd


def _read_regular(path: Path) -> bytes:
    fd = _open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


class DamagedEntryError(DataError):
    """An envelope that cannot be read: listed with its reason, moved aside by the runner."""


def _read_entry(directory: Path, entry_id: str, area: str) -> Entry:
    raw = _read_regular(directory / f"{entry_id}{ENVELOPE_SUFFIX}")
    try:
        size = (directory / f"{entry_id}{MESSAGE_SUFFIX}").stat().st_size
    except FileNotFoundError:
        size = 0
    try:
        entry = _decode(raw, area=area, size=size)
        if entry.id != entry_id:
            # Delivered, deferred and removed by its id: it would act on another entry.
            raise ValueError(f"it says it is {entry.id!r}, not {entry_id!r}")
        return entry
    except (ValueError, KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise DamagedEntryError(
            entry_id,
            f"unreadable envelope: {type(exc).__name__}: {exc}",
            hint="`queue run` moves it into damaged/; `queue delete ID` removes it",
        ) from None


# -- writing entries -----------------------------------------------------------------


def _write_entry(directory: Path, entry: Entry, data: bytes | bytearray) -> None:
    """Message, then envelope, each made durable before the next step depends on it."""
    message = directory / f"{entry.id}{MESSAGE_SUFFIX}"
    _place(directory, message.name, data)
    try:
        # The message's rename must be on disk before the envelope that points at it can be.
        _fsync_dir(directory)
        _place(directory, f"{entry.id}{ENVELOPE_SUFFIX}", _encode(entry))
    except OSError:
        # Not accepted (the disk is full): its message must not hold the space meanwhile.
        with contextlib.suppress(OSError):
            _unlink_in(directory, message.name)
        raise
    _fsync_dir(directory)


def _fresh_id(directory: Path) -> str:
    while True:
        entry_id = _new_id()
        if not (directory / f"{entry_id}{MESSAGE_SUFFIX}").exists():
            return entry_id


def _store(
    config: Config,
    area: str,
    group: RouteGroup,
    data: bytes | bytearray,
    *,
    smtputf8: bool,
    eightbit: bool,
    reason: str,
    dsn: Dsn | None = None,
    due_now: bool = False,
    replies: dict[str, str] | None = None,
    entry_id: str | None = None,
) -> str:
    """Write a new entry for `group` into `area`, durably; CantCreateError (73) if impossible.

    A queue entry is due after the first backoff, or at once with `due_now`; `replies`,
    a failed/ entry's reply for each recipient (its notice's Diagnostic-Code); `entry_id`,
    an id chosen before (an owed notice's), else a fresh one.
    """
    directory = ensure_spool(config) / area
    now = _now()
    failed = area == FAILED
    try:
        entry = Entry(
            id=entry_id or _fresh_id(directory),
            sender=group.envelope_from,
            recipients=tuple(group.recipients),
            route=group.route.name,
            smtputf8=smtputf8,
            eightbit=eightbit,
            dsn=dsn,
            created=now,
            queued=now,
            next_attempt=now if failed or due_now else now + dt.timedelta(seconds=backoff(1)),
            attempts=(Attempt(now, reason),),
            header_from=group.header_from,
            reply_to=group.reply_to,
            reason=reason,
            failed_at=now if failed else None,
            area=area,
            replies=dict(replies or {}),
        )
        _write_entry(directory, entry, data)
    except OSError as exc:
        raise _cant_create(directory, exc) from None
    return entry.id


def enqueue(
    config: Config,
    group: RouteGroup,
    data: bytes | bytearray,
    *,
    smtputf8: bool,
    eightbit: bool,
    reason: str,
    dsn: Dsn | None = None,
    due_now: bool = False,
    entry_id: str | None = None,
) -> str:
    """Queue the message for `group`; durable on return. CantCreateError (73) if impossible.

    `entry_id`: the id an owed failure notice was promised (see owe_notice)."""
    return _store(
        config,
        QUEUE,
        group,
        data,
        smtputf8=smtputf8,
        eightbit=eightbit,
        reason=reason,
        dsn=dsn,
        due_now=due_now,
        entry_id=entry_id,
    )


def store_failed(
    config: Config,
    group: RouteGroup,
    data: bytes | bytearray,
    *,
    reason: str,
    smtputf8: bool = False,
    eightbit: bool = False,
    dsn: Dsn | None = None,
    replies: dict[str, str] | None = None,
) -> str:
    """Keep a copy of a message that failed permanently, with the reason, in `failed/`."""
    return _store(
        config,
        FAILED,
        group,
        data,
        smtputf8=smtputf8,
        eightbit=eightbit,
        reason=reason,
        dsn=dsn,
        replies=replies,
    )


def error_reason(error: MailerError) -> str:
    return f"{error.what}: {error.why}"


def handle_temporary_failure(
    config: Config,
    group: RouteGroup,
    data: bytes | bytearray,
    *,
    smtputf8: bool,
    eightbit: bool,
    error: MailerError,
    dsn: Dsn | None = None,
    due_now: bool = False,
) -> str | None:
    """SPEC §7 for a temporary failure: the queue id (exit 0), or None when the policy is `fail`.

    With None the caller exits 75 with `error`; with an id it prints `queued_note(id, error)`
    on stderr and exits 0. CantCreateError (73) propagates: the message was not accepted.
    `due_now`: the next queue run takes it, without a backoff.
    """
    if config.global_.on_temporary_failure != TempFailurePolicy.QUEUE:
        return None
    return enqueue(
        config,
        group,
        data,
        smtputf8=smtputf8,
        eightbit=eightbit,
        reason=error_reason(error),
        dsn=dsn,
        due_now=due_now,
    )


def queued_note(entry_id: str, error: MailerError) -> str:
    """The one stderr line for a queued message: `queued as ID: reason`."""
    return f"queued as {entry_id}: {error_reason(error)}"


def handle_permanent_failure(
    config: Config,
    group: RouteGroup,
    data: bytes | bytearray,
    *,
    error: MailerError,
    smtputf8: bool = False,
    eightbit: bool = False,
    dsn: Dsn | None = None,
    replies: dict[str, str] | None = None,
) -> str | None:
    """SPEC §7 for a permanent failure: keep a copy in `failed/`; the caller still exits non-zero.

    Returns the failed copy's id, or None when even that could not be written (the
    caller's exit code already tells the sender the message was not accepted).
    """
    try:
        return store_failed(
            config,
            group,
            data,
            reason=error_reason(error),
            smtputf8=smtputf8,
            eightbit=eightbit,
            dsn=dsn,
            replies=replies,
        )
    except CantCreateError:
        return None


# -- the retry schedule


def backoff(attempts: int) -> int:
    """Seconds to wait after `attempts` failed attempts: 60 s doubling, capped at an hour."""
    return int(min(BACKOFF_START * 2 ** max(attempts - 1, 0), BACKOFF_CAP))


# -- reading the spool ---------------------------------------------------------------


def denied(exc: PermissionError) -> NoPermError:
    """A spool this user may not enter (root's, kept for spool_user): 77 and one line."""
    return NoPermError(
        f"spool {exc.filename}", exc.strerror or str(exc), hint="run as the spool's owner"
    )


def _names(directory: Path) -> list[str]:
    """The names in a spool area, sorted; none when it does not exist yet."""
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError as exc:
        raise denied(exc) from None


def _entry_ids(directory: Path) -> list[str]:
    return [
        n[: -len(ENVELOPE_SUFFIX)]
        for n in _names(directory)
        if n.endswith(ENVELOPE_SUFFIX) and not n.startswith(".")
    ]


def list_damaged(config: Config) -> list[tuple[str, str]]:
    """(id, reason) of every damaged entry: moved aside already, or still in the queue."""
    found: list[tuple[str, str]] = []
    damaged_dir = area_dir(config, DAMAGED)
    for entry_id in _entry_ids(damaged_dir):
        try:
            reason = (damaged_dir / f"{entry_id}{REASON_SUFFIX}").read_text("utf-8").strip()
        except OSError:
            reason = "no reason recorded"
        found.append((entry_id, reason))
    queue_dir = area_dir(config, QUEUE)
    for entry_id in _entry_ids(queue_dir):
        try:
            _read_entry(queue_dir, entry_id, QUEUE)
        except DamagedEntryError as exc:
            found.append((entry_id, f"{exc.why} (the next queue run moves it aside)"))
        except OSError:
            continue
    return found


def move_aside(config: Config, entry_id: str, reason: str) -> None:
    """Move a damaged queue entry into `damaged/`, with the reason in ID.reason beside it."""
    queue_dir = area_dir(config, QUEUE)
    damaged_dir = ensure_spool(config) / DAMAGED
    _make_dir(damaged_dir, _spool_owner(config))
    _place(damaged_dir, f"{entry_id}{REASON_SUFFIX}", (reason + "\n").encode("utf-8"))
    with spool_dir_fd(queue_dir) as queue_fd, spool_dir_fd(damaged_dir) as damaged_fd:
        for suffix in (MESSAGE_SUFFIX, ENVELOPE_SUFFIX):
            name = f"{entry_id}{suffix}"
            with contextlib.suppress(FileNotFoundError):  # another runner moved it first
                os.replace(name, name, src_dir_fd=queue_fd, dst_dir_fd=damaged_fd)
        os.fsync(damaged_fd)
        os.fsync(queue_fd)


def list_entries(config: Config, *, failed: bool = False) -> list[Entry]:
    """Every readable entry of the queue (or `failed/`), oldest first."""
    area = FAILED if failed else QUEUE
    directory = area_dir(config, area)
    entries = []
    for entry_id in _entry_ids(directory):
        # Another runner may remove an entry, or a file may be damaged, between listing
        # and reading; neither should hide the rest of the queue.
        # Damaged ones are listed by list_damaged.
        with contextlib.suppress(OSError, DamagedEntryError):
            entries.append(_read_entry(directory, entry_id, area))
    return entries


def check_id(entry_id: str) -> str:
    """An id as typed by a user, normalised; UsageError if it cannot be one of ours."""
    normal = entry_id.strip().upper()
    if not _ID_RE.match(normal):
        raise UsageError(entry_id, "not a queue id (17 hexadecimal digits, see `queue list`)")
    return normal


def find_entry(config: Config, entry_id: str) -> tuple[Entry, bytes]:
    """An entry from the queue or `failed/` with its message; UsageError if there is none."""
    normal = check_id(entry_id)
    for area in (QUEUE, FAILED):
        directory = area_dir(config, area)
        try:
            entry = _read_entry(directory, normal, area)
            data = _read_regular(directory / f"{normal}{MESSAGE_SUFFIX}")
        except FileNotFoundError:
            continue
        return entry, data
    raise UsageError(normal, "no such entry in the queue or failed/")


def short_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- locking -------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(
    directory: Path, entry_id: str, area: str = QUEUE
) -> Iterator[tuple[int, Entry] | None]:
    """Hold the entry's lock; yields (message fd, fresh envelope), or None if busy or gone."""
    path = directory / f"{entry_id}{MESSAGE_SUFFIX}"
    try:
        fd = _open_regular(path)
    except FileNotFoundError:
        # Gone (delivered by another runner), or not a regular file of ours; anything
        # else (permissions) is a problem the run reports, not a busy entry.
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        # The holder before us may have finished and removed the entry while we waited
        # to open it: only a message file still linked at its name is the live entry.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
            entry = _read_entry(directory, entry_id, area) if same else None
        except FileNotFoundError:
            entry = None
        yield None if entry is None else (fd, entry)
    finally:
        os.close(fd)


class EntryBusyError(TempFailError):
    """The entry is locked by a running delivery: EX_TEMPFAIL, try again (SPEC §9)."""


def _remove_pair(directory: Path, entry_id: str) -> None:
    # Envelope first: without it the message file is debris, never a half entry.
    _unlink_in(directory, f"{entry_id}{ENVELOPE_SUFFIX}", f"{entry_id}{MESSAGE_SUFFIX}")


def delete_entry(config: Config, entry_id: str) -> str:
    """Remove an entry from the queue or `failed/`; returns the area it was in."""
    normal = check_id(entry_id)
    queue_dir = area_dir(config, QUEUE)
    if (queue_dir / f"{normal}{ENVELOPE_SUFFIX}").exists():
        try:
            with _locked(queue_dir, normal) as held:
                if held is None:
                    if (queue_dir / f"{normal}{ENVELOPE_SUFFIX}").exists():
                        raise EntryBusyError(normal, "being delivered right now; try again")
                else:
                    _remove_pair(queue_dir, normal)
                    return QUEUE
        except DamagedEntryError:
            _remove_pair(queue_dir, normal)  # nothing can deliver it
            return QUEUE
    for area in (FAILED, DAMAGED):
        directory = area_dir(config, area)
        if (directory / f"{normal}{ENVELOPE_SUFFIX}").exists():
            _unlink_in(directory, f"{normal}{REASON_SUFFIX}", f"{normal}{NOTICE_SUFFIX}")
            _remove_pair(directory, normal)
            return area
    raise UsageError(normal, "no such entry in the queue, failed/ or damaged/")


def retry_failed(config: Config, entry_id: str) -> str:
    """Move a failed entry back into the queue, due now; returns its new queue id."""
    normal = check_id(entry_id)
    failed_dir = area_dir(config, FAILED)
    try:
        entry = _read_entry(failed_dir, normal, FAILED)
    except FileNotFoundError:
        raise UsageError(normal, "no such entry in failed/") from None
    root = ensure_spool(config)
    queue_dir = root / QUEUE
    now = _now()
    try:
        new = replace(
            entry,
            # Same id when free, so the user can follow the entry they just retried.
            id=normal
            if not (queue_dir / f"{normal}{MESSAGE_SUFFIX}").exists()
            else _fresh_id(queue_dir),
            queued=now,
            next_attempt=now,
            failed_at=None,
            replies={},
            origin=None,
            area=QUEUE,
        )
        _link_or_copy(failed_dir / f"{normal}{MESSAGE_SUFFIX}", queue_dir, new.id)
        _place(queue_dir, f"{new.id}{ENVELOPE_SUFFIX}", _encode(new))
        _fsync_dir(queue_dir)
        # Back in the queue, it is owed no notice now: its next failure makes one.
        settle_notice(failed_dir, normal)
        _remove_pair(failed_dir, normal)
    except OSError as exc:
        raise _cant_create(queue_dir, exc) from None
    return new.id


def _link_or_copy(source: Path, directory: Path, entry_id: str) -> None:
    """Put the message file `source` into `directory` under `entry_id`, durably."""
    target = f"{entry_id}{MESSAGE_SUFFIX}"
    try:
        with spool_dir_fd(source.parent) as source_fd, spool_dir_fd(directory) as dir_fd:
            # Same file system: a hard link is atomic and copies nothing.
            os.link(
                source.name, target, src_dir_fd=source_fd, dst_dir_fd=dir_fd, follow_symlinks=False
            )
    except UnsafeSpoolError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        _place(directory, target, _read_regular(source))
    _fsync_dir(directory)


# -- failure notices owed ------------------------------------------------------------


def owe_notice(failed_dir: Path, failed_id: str, queue_dir: Path) -> str:
    """Mark the failed/ entry `failed_id` as owing its sender a notice; the queue id the
    notice is to be queued under. Durable once the caller fsyncs `failed_dir`."""
    notice_id = _fresh_id(queue_dir)
    _place(failed_dir, f"{failed_id}{NOTICE_SUFFIX}", f"{notice_id}\n".encode("ascii"))
    return notice_id


def owed_notices(failed_dir: Path) -> list[tuple[str, str | None]]:
    """(failed/ id, the notice's queue id) of every notice still owed, oldest first; the
    queue id is None when its mark cannot be read."""
    owed: list[tuple[str, str | None]] = []
    for name in _names(failed_dir):
        failed_id = name[: -len(NOTICE_SUFFIX)]
        if not name.endswith(NOTICE_SUFFIX) or not _ID_RE.match(failed_id):
            continue
        try:
            notice_id = _read_regular(failed_dir / name).decode("ascii", "replace").strip()
        except FileNotFoundError:
            continue  # settled meanwhile
        owed.append((failed_id, notice_id if _ID_RE.match(notice_id) else None))
    return owed


def settle_notice(failed_dir: Path, failed_id: str) -> None:
    """The notice `failed_id` owed is sent or queued (or owed no more), durably."""
    _unlink_in(failed_dir, f"{failed_id}{NOTICE_SUFFIX}")
