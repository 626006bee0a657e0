"""The durable spool (SPEC §7): queue entries, failed copies, locking and the retry schedule.

Layout under `spool_dir`: `queue/ID.msg` (the message bytes exactly as handed to the
engine) plus `queue/ID.toml` (envelope and history); `failed/` holds the same pair for
messages that will not be retried. The envelope is the commit point: it is renamed into
place only after the message file is durable, and removed first when an entry goes, so a
message file without an envelope is always debris. A runner holds `flock` on the message
file (never rewritten, unlike the envelope) while it works on an entry.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmtp_mailer import log
from ssmtp_mailer.config.model import Config, TempFailurePolicy
from ssmtp_mailer.errors import (
    EX_OK,
    EX_TEMPFAIL,
    CantCreateError,
    MailerError,
    NoPermError,
    TempFailError,
    UsageError,
)
from ssmtp_mailer.message import Dsn
from ssmtp_mailer.relay import failures
from ssmtp_mailer.rewrite import RouteGroup

if TYPE_CHECKING:
    from ssmtp_mailer.relay.pool import ConnectionPool

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

QUEUE = "queue"
FAILED = "failed"
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


@dataclass(frozen=True)
class QueueRunResult:
    """What one `run_queue` did, entry ids per outcome."""

    delivered: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()
    not_due: int = 0
    bounces: int = 0
    out_of_time: bool = False
    problems: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0, or EX_TEMPFAIL when some entry could not be read (deferrals are normal)."""
        return EX_TEMPFAIL if self.problems else 0

    def summary(self) -> str:
        parts = [
            f"{len(self.delivered)} delivered",
            f"{len(self.deferred)} deferred",
            f"{len(self.failed)} failed",
            f"{len(self.expired)} expired",
        ]
        if self.busy:
            parts.append(f"{len(self.busy)} busy in another runner")
        if self.not_due:
            parts.append(f"{self.not_due} not yet due")
        if self.bounces:
            parts.append(f"{self.bounces} bounce(s) sent")
        if self.out_of_time:
            parts.append("stopped at the time budget")
        return ", ".join(parts)


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


def _file_mode(directory: Path) -> int:
    # Group members may run the queue when the spool is shared with group `mail`.
    try:
        shared = directory.stat().st_mode & 0o070
    except OSError:
        shared = 0
    return 0o660 if shared else 0o600


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


def _make_dir(path: Path, owner: tuple[int, int] | None = None) -> None:
    if path.is_dir():
        return
    gid = _group_mail() if owner is None else owner[1]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if gid is not None:
        os.chown(path, 0 if owner is None else owner[0], gid)
        # setgid so entries inherit the group; explicit chmod because mkdir obeys umask.
        os.chmod(path, 0o2770)
    else:
        os.chmod(path, 0o700)


def ensure_spool(config: Config) -> Path:
    """Create the spool and its areas with safe permissions; CantCreateError if impossible.

    Made by root, they belong to `spool_user` (group-shared, setgid), so that root's
    sendmail, the listener and the runner can each read, update and remove the entries.
    """
    root = spool_root(config)
    owner = _spool_owner(config)
    try:
        for path in (root, root / QUEUE, root / FAILED):
            _make_dir(path, owner)
    except OSError as exc:
        raise _cant_create(root, exc) from None
    return root


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes | bytearray) -> Path:
    """Write `data` to a fresh temp file in `directory` and fsync it; return its path."""
    temp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _file_mode(directory))
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    return temp


def _place(directory: Path, name: str, data: bytes | bytearray) -> None:
    """Atomically put `data` at directory/name (temp file, fsync, rename); no dir fsync."""
    temp = _write_temp(directory, data)
    try:
        os.replace(temp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


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
        doc["dsn"] = {k: v for k, v in entry.dsn._asdict().items() if v is not None}
    doc["attempts"] = [{"time": a.time, "reply": a.reply} for a in entry.attempts]
    return tomli_w.dumps(doc).encode("utf-8")


def _as_time(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise ValueError(f"expected a date-time, got {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


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
        dsn=Dsn(**{k: str(v) for k, v in doc["dsn"].items()}) if "dsn" in doc else None,
    )


def _open_regular(path: Path) -> int:
    """Open a spool file without following links; only a regular file of ours or root's.

    The root spool may be group-writable (root:mail): a planted symlink must not make
    the runner mail out /etc/shadow.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    st = os.fstat(fd)
    # Ours, root's, or the spool_user's who owns the area (entries the listener wrote).
    owners = {0, os.geteuid(), path.parent.stat().st_uid}
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in owners:
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular spool file of ours", str(path))
    return fd


def _read_regular(path: Path) -> bytes:
    fd = _open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _read_entry(directory: Path, entry_id: str, area: str) -> Entry:
    raw = _read_regular(directory / f"{entry_id}{ENVELOPE_SUFFIX}")
    try:
        size = (directory / f"{entry_id}{MESSAGE_SUFFIX}").stat().st_size
    except FileNotFoundError:
        size = 0
    return _decode(raw, area=area, size=size)


# -- writing entries -----------------------------------------------------------------


def _write_entry(directory: Path, entry: Entry, data: bytes | bytearray) -> None:
    """Message, then envelope, each made durable before the next step depends on it."""
    _place(directory, f"{entry.id}{MESSAGE_SUFFIX}", data)
    # The message's rename must be on disk before the envelope that points at it can be.
    _fsync_dir(directory)
    _place(directory, f"{entry.id}{ENVELOPE_SUFFIX}", _encode(entry))
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
) -> str:
    """Write a new entry for `group` into `area`, durably; CantCreateError (73) if impossible."""
    directory = ensure_spool(config) / area
    now = _now()
    failed = area == FAILED
    try:
        entry = Entry(
            id=_fresh_id(directory),
            sender=group.envelope_from,
            recipients=tuple(group.recipients),
            route=group.route.name,
            smtputf8=smtputf8,
            eightbit=eightbit,
            dsn=dsn,
            created=now,
            queued=now,
            next_attempt=now if failed else now + dt.timedelta(seconds=backoff(1)),
            attempts=(Attempt(now, reason),),
            header_from=group.header_from,
            reply_to=group.reply_to,
            reason=reason,
            failed_at=now if failed else None,
            area=area,
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
) -> str:
    """Queue the message for `group`; durable on return. CantCreateError (73) if impossible."""
    return _store(
        config, QUEUE, group, data, smtputf8=smtputf8, eightbit=eightbit, reason=reason, dsn=dsn
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
) -> str:
    """Keep a copy of a message that failed permanently, with the reason, in `failed/`."""
    return _store(
        config, FAILED, group, data, smtputf8=smtputf8, eightbit=eightbit, reason=reason, dsn=dsn
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
) -> str | None:
    """SPEC §7 for a temporary failure: the queue id (exit 0), or None when the policy is `fail`.

    With None the caller exits 75 with `error`; with an id it prints `queued_note(id, error)`
    on stderr and exits 0. CantCreateError (73) propagates: the message was not accepted.
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
        )
    except CantCreateError:
        return None


def refuse_local(
    config: Config,
    owner: str,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    reason: str,
) -> str:
    """A local submission whose sender its uid may not use (SPEC §8): kept in `failed/`
    (route `maildrop`), and a bounce to `owner`, the user who submitted it."""
    directory = ensure_spool(config) / FAILED
    now = _now()
    entry = Entry(
        id=_fresh_id(directory),
        sender=owner,
        recipients=tuple(recipients),
        route="maildrop",
        smtputf8=not all(a.isascii() for a in (sender, *recipients)),
        eightbit=False,
        created=now,
        queued=now,
        next_attempt=now,
        attempts=(Attempt(now, reason),),
        reason=reason,
        failed_at=now,
        area=FAILED,
    )
    try:
        _write_entry(directory, entry, data)
    except OSError as exc:
        raise _cant_create(directory, exc) from None
    _bounce(config, entry, data)
    return entry.id


# -- reading the spool ---------------------------------------------------------------


def _entry_ids(directory: Path) -> list[str]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError as exc:
        raise NoPermError(
            f"spool {directory}", exc.strerror or str(exc), hint="run as the spool's owner"
        ) from None
    return sorted(
        n[: -len(ENVELOPE_SUFFIX)]
        for n in names
        if n.endswith(ENVELOPE_SUFFIX) and not n.startswith(".")
    )


def list_entries(config: Config, *, failed: bool = False) -> list[Entry]:
    """Every readable entry of the queue (or `failed/`), oldest first."""
    area = FAILED if failed else QUEUE
    directory = area_dir(config, area)
    entries = []
    for entry_id in _entry_ids(directory):
        # Another runner may remove an entry, or a file may be damaged, between listing
        # and reading; neither should hide the rest of the queue.
        with contextlib.suppress(OSError, ValueError, KeyError, tomllib.TOMLDecodeError):
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


def _short_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_LISTING_HEADER = (
    "-Queue ID-------- --Size-- ----Arrival Time---- -Age- -Tries- -Sender/Recipient-------"
)
_LISTING_INDENT = _LISTING_HEADER.index("-Sender")


def listing_text(config: Config, *, failed: bool = False) -> str:
    """The mailq-style listing: id, size, arrival, age, attempts, sender, last error, recipients."""
    entries = list_entries(config, failed=failed)
    if not entries:
        return "Failed area is empty" if failed else "Mail queue is empty"
    lines = [_LISTING_HEADER]
    total = 0
    for entry in entries:
        total += entry.size
        arrival = entry.created.astimezone().strftime("%a %b %d %H:%M:%S")
        lines.append(
            f"{entry.id} {entry.size:>8} {arrival:>20} {_short_age(entry.age()):>5}"
            f" {len(entry.attempts):>7} {entry.sender or 'MAILER-DAEMON'}"
        )
        if entry.last_error:
            lines.append(f"{'':>{_LISTING_INDENT}}({entry.last_error})")
        lines.extend(f"{'':>{_LISTING_INDENT}}{rcpt}" for rcpt in entry.recipients)
        lines.append("")
    count = len(entries)
    lines.append(
        f"-- {(total + 1023) // 1024} Kbytes in {count} Request{'s' if count != 1 else ''}."
    )
    return "\n".join(lines)


# -- locking -------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path, entry_id: str) -> Iterator[tuple[int, Entry] | None]:
    """Hold the entry's lock; yields (message fd, fresh envelope), or None if busy or gone."""
    path = directory / f"{entry_id}{MESSAGE_SUFFIX}"
    try:
        fd = _open_regular(path)
    except (FileNotFoundError, OSError):
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
            entry = _read_entry(directory, entry_id, QUEUE) if same else None
        except FileNotFoundError:
            entry = None
        yield None if entry is None else (fd, entry)
    finally:
        os.close(fd)


class EntryBusyError(UsageError):
    """The entry is locked by a running delivery."""


def _remove_pair(directory: Path, entry_id: str) -> None:
    # Envelope first: without it the message file is debris, never a half entry.
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{entry_id}{ENVELOPE_SUFFIX}").unlink()
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{entry_id}{MESSAGE_SUFFIX}").unlink()
    _fsync_dir(directory)


def delete_entry(config: Config, entry_id: str) -> str:
    """Remove an entry from the queue or `failed/`; returns the area it was in."""
    normal = check_id(entry_id)
    queue_dir = area_dir(config, QUEUE)
    if (queue_dir / f"{normal}{ENVELOPE_SUFFIX}").exists():
        with _locked(queue_dir, normal) as held:
            if held is None:
                if (queue_dir / f"{normal}{ENVELOPE_SUFFIX}").exists():
                    raise EntryBusyError(normal, "being delivered right now; try again")
            else:
                _remove_pair(queue_dir, normal)
                return QUEUE
    failed_dir = area_dir(config, FAILED)
    if (failed_dir / f"{normal}{ENVELOPE_SUFFIX}").exists():
        _remove_pair(failed_dir, normal)
        return FAILED
    raise UsageError(normal, "no such entry in the queue or failed/")


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
        _remove_pair(failed_dir, normal)
    except OSError as exc:
        raise _cant_create(queue_dir, exc) from None
    return new.id


def _link_or_copy(source: Path, directory: Path, entry_id: str) -> None:
    """Put the message file `source` into `directory` under `entry_id`, durably."""
    target = directory / f"{entry_id}{MESSAGE_SUFFIX}"
    try:
        # Same file system: a hard link is atomic and copies nothing.
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        _place(directory, target.name, _read_regular(source))
    _fsync_dir(directory)


# -- the runner ----------------------------------------------------------------------


def backoff(attempts: int) -> int:
    """Seconds to wait after `attempts` failed attempts: 60 s doubling, capped at an hour."""
    return int(min(BACKOFF_START * 2 ** max(attempts - 1, 0), BACKOFF_CAP))


def _clean_debris(directory: Path, now: float) -> None:
    """Remove temp files and envelope-less message files left by a crash, once stale."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    envelopes = {n[: -len(ENVELOPE_SUFFIX)] for n in names if n.endswith(ENVELOPE_SUFFIX)}
    for name in names:
        debris = name.startswith(TEMP_PREFIX) or (
            name.endswith(MESSAGE_SUFFIX) and name[: -len(MESSAGE_SUFFIX)] not in envelopes
        )
        if not debris:
            continue
        path = directory / name
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()


@dataclass
class _Run:
    """Mutable tallies while a run goes; frozen into a QueueRunResult at the end."""

    delivered: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    not_due: int = 0
    bounces: int = 0
    out_of_time: bool = False
    # One connection per server for the whole run (SPEC §6 reuse); QUIT when the run ends.
    connections: ConnectionPool | None = None
    tidier: _Tidier | None = None

    def result(self) -> QueueRunResult:
        return QueueRunResult(
            delivered=tuple(self.delivered),
            deferred=tuple(self.deferred),
            failed=tuple(self.failed),
            expired=tuple(self.expired),
            busy=tuple(self.busy),
            not_due=self.not_due,
            bounces=self.bounces,
            out_of_time=self.out_of_time,
            problems=tuple(self.problems),
        )


def run_queue(
    config: Config,
    *,
    force: bool = False,
    ids: Sequence[str] = (),
    time_budget: float | None = None,
    progress: bool = False,
    pick_up: bool = True,
) -> QueueRunResult:
    """Deliver due entries (all with `force`, or just `ids`); never one entry twice at once.

    First the maildrop's files (SPEC §8) are taken, unless `pick_up` is False.
    Entries for one server share one connection; each is locked while it is sent and
    leaves the queue on the relay's 250 to its final dot, before any QUIT.
    """
    from ssmtp_mailer.relay.pool import ConnectionPool

    if pick_up and not ids:
        from ssmtp_mailer import pickup

        pickup.pick_up(config)
    queue_dir = area_dir(config, QUEUE)
    if not queue_dir.is_dir():
        return _Run().result()
    with ConnectionPool(config.global_.connection_reuse_idle) as connections:
        tidier = _Tidier(queue_dir)
        run = _Run(connections=connections, tidier=tidier)
        try:
            _run_entries(
                config, queue_dir, run, force=force, ids=ids, time_budget=time_budget,
                progress=progress,
            )  # fmt: skip
        finally:
            tidier.close()
            if tidier.error is not None:
                run.problems.append(f"{queue_dir}: {tidier.error}")
    return run.result()


class _Tidier:
    """Removes delivered entries' message files and syncs the queue directory, in a thread.

    A delivered entry's envelope is unlinked the moment the relay accepts the message:
    that is the commit point, after which no runner sends the entry again, even if this
    one is killed. What is left (freeing the message file, and making the removal
    survive a power failure) runs while the next message is on the wire; the run waits
    for it before it ends.
    """

    def __init__(self, directory: Path) -> None:
        import threading

        self.directory = directory
        self.error: OSError | None = None
        self._pending: list[str] = []
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="spool-tidier", daemon=True)
        self._started = False

    def add(self, entry_id: str) -> None:
        with self._wake:
            self._pending.append(entry_id)
            self._wake.notify()
            if not self._started:
                self._started = True
                self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._started:
            self._thread.join()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            try:
                for entry_id in batch:
                    with contextlib.suppress(FileNotFoundError):
                        (self.directory / f"{entry_id}{MESSAGE_SUFFIX}").unlink()
                # One sync for every removal since the last one.
                _fsync_dir(self.directory)
            except OSError as exc:
                self.error = exc


def _mark_delivered(queue_dir: Path, entry_id: str, run: _Run) -> None:
    """The relay accepted the message: the entry leaves the queue now, before any QUIT."""
    if run.tidier is None:
        _remove_pair(queue_dir, entry_id)
        return
    # Envelope first: without it the message file is debris, never a half entry.
    with contextlib.suppress(FileNotFoundError):
        (queue_dir / f"{entry_id}{ENVELOPE_SUFFIX}").unlink()
    run.tidier.add(entry_id)


def _run_entries(
    config: Config,
    queue_dir: Path,
    run: _Run,
    *,
    force: bool,
    ids: Sequence[str],
    time_budget: float | None,
    progress: bool,
) -> None:
    deadline = None if time_budget is None else time.monotonic() + time_budget
    for directory in (queue_dir, area_dir(config, FAILED)):
        _clean_debris(directory, time.time())
    wanted = [check_id(i) for i in ids]
    todo = wanted or _entry_ids(queue_dir)
    if wanted:
        force = True
    with _progress(todo, enabled=progress) as entries:
        for entry_id in entries:
            if deadline is not None and time.monotonic() >= deadline:
                run.out_of_time = True
                break
            try:
                _run_one(config, queue_dir, entry_id, force=force, run=run)
            except (OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as exc:
                # A damaged or unreadable entry must not stop the others.
                run.problems.append(f"{entry_id}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _progress(items: list[str], *, enabled: bool) -> Iterator[Any]:
    if not enabled or not sys.stderr.isatty():
        yield items
        return
    import click

    with click.progressbar(items, label="Running the queue", file=sys.stderr) as bar:
        yield bar


def _run_one(config: Config, queue_dir: Path, entry_id: str, *, force: bool, run: _Run) -> None:
    with _locked(queue_dir, entry_id) as held:
        if held is None:
            if (queue_dir / f"{entry_id}{ENVELOPE_SUFFIX}").exists():
                run.busy.append(entry_id)
            return
        fd, entry = held
        now = _now()
        lifetime = dt.timedelta(seconds=config.global_.queue_lifetime)
        if now >= entry.queued + lifetime:
            data = _read_fd(fd)
            reason = f"expired after {_short_age(lifetime.total_seconds())} in the queue"
            if entry.attempts:
                reason += f"; last error: {entry.attempts[-1].reply}"
            _fail_entry(config, queue_dir, entry, data, entry.recipients, reason, {}, run)
            run.expired.append(entry.id)
            return
        if not force and now < entry.next_attempt:
            run.not_due += 1
            return
        _attempt(config, queue_dir, entry, _read_fd(fd), run)


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _attempt(config: Config, queue_dir: Path, entry: Entry, data: bytes, run: _Run) -> None:
    from ssmtp_mailer.relay.engine import DeliveryLog, deliver

    route = config.domains.get(entry.route)
    if route is None:
        reason = f"route [domain:{entry.route}] is no longer in the configuration"
        _fail_entry(config, queue_dir, entry, data, entry.recipients, reason, {}, run)
        run.failed.append(entry.id)
        return
    now = _now()
    if not route.enabled:
        _defer(queue_dir, entry, entry.recipients, f"route [domain:{route.name}] is disabled", now)
        run.deferred.append(entry.id)
        return
    group = RouteGroup(
        route=route,
        envelope_from=entry.sender,
        recipients=entry.recipients,
        header_from=entry.header_from,
        reply_to=entry.reply_to,
    )
    record = DeliveryLog(config, group, data)
    try:
        result = deliver(
            config,
            group,
            data,
            record=record,
            smtputf8=entry.smtputf8,
            eightbit=entry.eightbit,
            dsn=entry.dsn,
            pool=run.connections,
        )
    except Exception as exc:
        if isinstance(exc, MailerError):
            error = exc
        else:  # a bug: the entry waits for the fix, and the traceback goes to the log
            log.write_traceback(config, exc)
            error = failures.unexpected(exc, f"[domain:{route.name}]")
        if failures.fate(error, queued=True) is failures.Fate.QUEUE:
            _defer(queue_dir, entry, entry.recipients, error_reason(error), now)
            record.not_sent(error, "deferred", EX_OK, entry.id)
            run.deferred.append(entry.id)
        else:
            reason = error_reason(error)
            _fail_entry(config, queue_dir, entry, data, entry.recipients, reason, {}, run)
            record.not_sent(error, "failed", EX_OK, entry.id)
            run.failed.append(entry.id)
        return
    record.sent(result, EX_OK)
    permanent = {r: f"{c} {m}" for r, (c, m) in result.refused.items() if c >= 500}
    pending = tuple(r for r in entry.recipients if r in result.refused and r not in permanent)
    if permanent:
        reason = f"{result.server}: " + "; ".join(f"{r}: {m}" for r, m in permanent.items())
        _fail_entry(
            config,
            queue_dir,
            entry,
            data,
            tuple(permanent),
            reason,
            permanent,
            run,
            keep=bool(pending),
        )
        run.failed.append(entry.id)
    if pending:
        replies = "; ".join(f"{r}: {c} {m}" for r, (c, m) in result.refused.items() if c < 500)
        _defer(queue_dir, entry, pending, f"{result.server}: {replies}", now)
        run.deferred.append(entry.id)
    elif not permanent:
        _mark_delivered(queue_dir, entry.id, run)
        run.delivered.append(entry.id)


def _defer(
    queue_dir: Path, entry: Entry, pending: tuple[str, ...], reply: str, now: dt.datetime
) -> None:
    attempts = (*entry.attempts, Attempt(now, reply))
    updated = replace(
        entry,
        recipients=pending,
        attempts=attempts,
        next_attempt=now + dt.timedelta(seconds=backoff(len(attempts))),
    )
    _place(queue_dir, f"{entry.id}{ENVELOPE_SUFFIX}", _encode(updated))
    _fsync_dir(queue_dir)


def _fail_entry(
    config: Config,
    queue_dir: Path,
    entry: Entry,
    data: bytes,
    recipients: tuple[str, ...],
    reason: str,
    replies: dict[str, str],
    run: _Run,
    *,
    keep: bool = False,
) -> None:
    """Copy the entry (for `recipients`) into `failed/`, bounce it; drop it unless `keep`."""
    failed_dir = ensure_spool(config) / FAILED
    now = _now()
    # SPEC §7: the id stays; only a second failed copy of one entry (some recipients
    # failed earlier) needs an id of its own, and `origin` names the entry either way.
    taken = (failed_dir / f"{entry.id}{ENVELOPE_SUFFIX}").exists()
    copy = replace(
        entry,
        id=_fresh_id(failed_dir) if taken else entry.id,
        recipients=recipients,
        attempts=(*entry.attempts, Attempt(now, reason)),
        reason=reason,
        failed_at=now,
        replies=dict(replies),
        origin=entry.id,
        area=FAILED,
    )
    _link_or_copy(queue_dir / f"{entry.id}{MESSAGE_SUFFIX}", failed_dir, copy.id)
    _place(failed_dir, f"{copy.id}{ENVELOPE_SUFFIX}", _encode(copy))
    _fsync_dir(failed_dir)
    if not keep:
        _remove_pair(queue_dir, entry.id)
    if _bounce(config, copy, data, run.connections):
        run.bounces += 1


# -- bounces (RFC 3464) --------------------------------------------------------------


def _bounce(config: Config, failed: Entry, data: bytes, pool: ConnectionPool | None = None) -> bool:
    """Tell the sender, with a null envelope sender (never a bounce for a bounce)."""
    if not config.global_.bounce or not failed.sender:
        return False
    from ssmtp_mailer.relay.engine import DeliveryLog, deliver
    from ssmtp_mailer.rewrite import plan_delivery

    notice = build_bounce(config, failed, data)
    try:
        plan = plan_delivery(config, "", [failed.sender])
    except MailerError:
        return False
    sent = False
    for group in plan.groups:
        record = DeliveryLog(config, group, notice)
        try:
            record.sent(deliver(config, group, notice, record=record, pool=pool), EX_OK)
            sent = True
        except TempFailError as exc:
            record.not_sent(exc, "queued", EX_OK)
            # The notice must not be lost either; it is an ordinary entry from here on.
            with contextlib.suppress(CantCreateError):
                enqueue(
                    config,
                    group,
                    notice,
                    smtputf8=False,
                    eightbit=False,
                    reason=error_reason(exc),
                )
                sent = True
        except MailerError as exc:
            record.not_sent(exc, "failed", EX_OK)
            with contextlib.suppress(CantCreateError):
                store_failed(config, group, notice, reason=error_reason(exc))
    return sent


def _status_for(reply: str, default: str) -> str:
    """The enhanced status code (RFC 3463) in a reply, else `default`."""
    match = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", reply)
    return match.group(1) if match else default


def build_bounce(config: Config, failed: Entry, data: bytes) -> bytes:
    """A multipart/report delivery-status notice (RFC 3464) for `failed`, CRLF bytes."""
    import email.policy
    import email.utils
    from email.message import Message
    from email.mime.base import MIMEBase
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText
    from email.parser import BytesHeaderParser

    hostname = config.global_.default_hostname
    expired = failed.reason.startswith("expired")
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients."
        " It is attached below (headers only).",
        "",
    ]
    for rcpt in failed.recipients:
        lines.append(f"<{rcpt}>: {failed.replies.get(rcpt, failed.reason)}")
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = failed.sender
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: automatic, not to be answered
    text = "\n".join(lines) + "\n"
    explanation = MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8")
    del explanation["MIME-Version"]
    report.attach(explanation)

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Queue-ID"] = failed.origin or failed.id
    per_message["Arrival-Date"] = email.utils.format_datetime(failed.created)
    blocks: list[Message | str] = [per_message]
    for rcpt in failed.recipients:
        reply = failed.replies.get(rcpt, failed.attempts[-1].reply if failed.attempts else "")
        block = Message()
        block["Final-Recipient"] = f"rfc822; {rcpt}"
        block["Action"] = "failed"
        block["Status"] = _status_for(reply, "4.4.7" if expired else "5.0.0")
        if re.match(r"^[245]\d\d\b", reply):
            block["Diagnostic-Code"] = f"smtp; {reply}"
        else:
            block["Diagnostic-Code"] = f"X-ssmtp-mailer; {failed.reason}"
        if failed.failed_at is not None:
            block["Last-Attempt-Date"] = email.utils.format_datetime(failed.failed_at)
        blocks.append(block)
    status = MIMEBase("message", "delivery-status")
    status.set_payload(blocks)
    del status["MIME-Version"]
    report.attach(status)

    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    original = MIMEBase("text", "rfc822-headers")
    original.set_payload(
        "".join(f"{k}: {v}\n" for k, v in headers.items())
        .encode("ascii", "replace")
        .decode("ascii")
    )
    del original["MIME-Version"]
    report.attach(original)
    return report.as_bytes(policy=email.policy.SMTP)


def header_block(data: bytes) -> str:
    """The message's header section, for `queue show`."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = data if end < 0 else data[:end]
    return head.decode("utf-8", "replace").replace("\r\n", "\n")
