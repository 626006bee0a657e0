"""`queue run` (SPEC §7): due entries retried with backoff, one connection per server,
never one entry twice (the store's lock); an entry past queue_lifetime gets one more
attempt, and is failed and bounced only when that one fails too."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmtp_mailer import log
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.config.secrets import CommandTimedOut
from ssmtp_mailer.errors import (
    EX_OK,
    EX_TEMPFAIL,
    CantCreateError,
    MailerError,
    NoUserError,
    TempFailError,
    UsageError,
)
from ssmtp_mailer.relay import failures
from ssmtp_mailer.relay.smtp import too_many_recipients
from ssmtp_mailer.rewrite import RouteGroup

if TYPE_CHECKING:
    from ssmtp_mailer.relay.pool import ConnectionPool


from ssmtp_mailer.spool.bounce import _bounce, notice_wanted
from ssmtp_mailer.spool.store import (
    DAMAGED,
    ENVELOPE_SUFFIX,
    FAILED,
    MESSAGE_SUFFIX,
    QUEUE,
    STALE_SECONDS,
    TEMP_PREFIX,
    Attempt,
    DamagedEntryError,
    Entry,
    _encode,
    _entry_ids,
    _fresh_id,
    _fsync_dir,
    _link_or_copy,
    _locked,
    _now,
    _open_regular,
    _place,
    _read_entry,
    _remove_pair,
    _unlink_in,
    area_dir,
    backoff,
    check_id,
    denied,
    ensure_spool,
    error_reason,
    move_aside,
    owe_notice,
    owed_notices,
    settle_notice,
    short_age,
)
from ssmtp_mailer.spooldirs import UnsafeSpoolError, open_spool_dir, spool_dir_fd


@dataclass(frozen=True)
class QueueRunResult:
    """What one `run_queue` did, entry ids per outcome."""

    delivered: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()
    not_due: int = 0
    bounces: int = 0  # failure notices the relay took
    bounces_queued: int = 0  # failure notices queued: the relay could not take them now
    out_of_time: bool = False
    problems: tuple[str, ...] = ()
    picked_up: int = 0  # maildrop files handed on (delivered, queued or refused)

    @property
    def partly_delivered(self) -> int:
        """Entries delivered to some recipients and deferred, failed or expired for others
        (each is in every tally its recipients had)."""
        return len(set(self.delivered) & {*self.deferred, *self.failed, *self.expired})

    @property
    def exit_code(self) -> int:
        """0, or EX_TEMPFAIL when some entry could not be read (deferrals are normal)."""
        return EX_TEMPFAIL if self.problems else 0

    def summary(self) -> str:
        # A maildrop file goes the sendmail way (sent, queued or refused), not through the
        # counts of queue entries that follow.
        head = f"{self.picked_up} taken from the maildrop and handed on; from the queue: "
        partly = self.partly_delivered
        parts = [
            f"{head if self.picked_up else ''}{len(self.delivered)} delivered"
            + (f" ({partly} in part)" if partly else ""),
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
        if self.bounces_queued:
            parts.append(f"{self.bounces_queued} bounce(s) queued")
        if self.out_of_time:
            parts.append("stopped at the time budget")
        return ", ".join(parts)


# -- the runner ----------------------------------------------------------------------


def _clean_debris(directory: Path, now: float) -> None:
    """Remove temp files and envelope-less message files left by a crash, once stale."""
    try:
        dir_fd = open_spool_dir(directory)
    except FileNotFoundError:
        return
    try:
        names = os.listdir(dir_fd)
        envelopes = {n[: -len(ENVELOPE_SUFFIX)] for n in names if n.endswith(ENVELOPE_SUFFIX)}
        for name in names:
            debris = name.startswith(TEMP_PREFIX) or (
                name.endswith(MESSAGE_SUFFIX) and name[: -len(MESSAGE_SUFFIX)] not in envelopes
            )
            if not debris:
                continue
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                # A message hard-linked into place (into failed/, back by retry-failed)
                # keeps its old mtime, and its envelope follows: while the other name
                # exists it is not debris; once it is gone the envelope is here, though
                # maybe not when the directory was listed. So the envelope is looked for
                # again, after the stat.
                envelope = name[: -len(MESSAGE_SUFFIX)] + ENVELOPE_SUFFIX
                moved_in = name.endswith(MESSAGE_SUFFIX) and os.path.lexists(directory / envelope)
                if st.st_nlink == 1 and now - st.st_mtime > STALE_SECONDS and not moved_in:
                    os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


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
    bounces_queued: int = 0
    out_of_time: bool = False
    picked_up: int = 0
    # Routes whose secret command timed out in this run, with why: their other entries
    # wait for the next run instead of 10 s each.
    hung_secrets: dict[str, str] = field(default_factory=dict)
    # One connection per server for the whole run (SPEC §6 reuse); QUIT when the run ends.
    connections: ConnectionPool | None = None
    tidier: _Tidier | None = None
    # failed/ entries made in this run whose notice is owed: the queue id it is promised.
    owed: dict[str, str] = field(default_factory=dict)
    # Locks on failed/ copies that are no hard link of the locked queue entry, held with it.
    held: list[int] = field(default_factory=list)

    def result(self) -> QueueRunResult:
        return QueueRunResult(
            delivered=tuple(self.delivered),
            deferred=tuple(self.deferred),
            failed=tuple(self.failed),
            expired=tuple(self.expired),
            busy=tuple(self.busy),
            not_due=self.not_due,
            bounces=self.bounces,
            bounces_queued=self.bounces_queued,
            out_of_time=self.out_of_time,
            problems=tuple(self.problems),
            picked_up=self.picked_up,
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
    try:
        return _run_queue(config, force, ids, time_budget, progress, pick_up)
    except PermissionError as exc:  # root's spool, and this user is not spool_user
        raise denied(exc) from None


def _run_queue(
    config: Config,
    force: bool,
    ids: Sequence[str],
    time_budget: float | None,
    progress: bool,
    pick_up: bool,
) -> QueueRunResult:
    from ssmtp_mailer.relay.pool import ConnectionPool

    picked_up = 0
    maildrop_problems: list[str] = []
    if pick_up and not ids:
        from ssmtp_mailer import pickup

        picked_up = pickup.pick_up(config, maildrop_problems.append)

    queue_dir = area_dir(config, QUEUE)
    unsafe = _unsafe_areas(config)
    if unsafe:  # never followed: root would send, move and remove what the link points at
        return _Run(picked_up=picked_up, problems=[*maildrop_problems, *unsafe]).result()
    for entry_id in ids:  # asked for by name: one that is not there is the caller's mistake
        if not (queue_dir / f"{check_id(entry_id)}{ENVELOPE_SUFFIX}").exists():
            raise UsageError(
                entry_id,
                "no such entry in the queue",
                hint="`queue list` shows them; `queue retry-failed ID` takes a failed one",
            )
    if not queue_dir.is_dir():
        return _Run(picked_up=picked_up, problems=maildrop_problems).result()
    with ConnectionPool(config.global_.connection_reuse_idle) as connections:
        tidier = _Tidier(queue_dir)
        run = _Run(
            connections=connections, tidier=tidier, picked_up=picked_up, problems=maildrop_problems
        )
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


def _unsafe_areas(config: Config) -> list[str]:
    """One line for each area the run works in that is no real directory (a planted link)."""
    lines = []
    for area in (QUEUE, FAILED, DAMAGED):
        try:
            os.close(open_spool_dir(area_dir(config, area)))
        except FileNotFoundError:
            continue
        except UnsafeSpoolError as exc:
            lines.append(f"{exc.filename}: {exc.strerror}; nothing in the queue was run")
    return lines


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
                # One sync for every removal since the last one.
                _unlink_in(self.directory, *(f"{i}{MESSAGE_SUFFIX}" for i in batch))
            except OSError as exc:
                self.error = exc


def _mark_delivered(queue_dir: Path, entry_id: str, run: _Run) -> None:
    """The relay accepted the message: the entry leaves the queue now, before any QUIT."""
    if run.tidier is None:
        _remove_pair(queue_dir, entry_id)
        return
    # Envelope first: without it the message file is debris, never a half entry.
    with spool_dir_fd(queue_dir) as dir_fd, contextlib.suppress(FileNotFoundError):
        os.unlink(f"{entry_id}{ENVELOPE_SUFFIX}", dir_fd=dir_fd)
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
    _send_owed_notices(config, queue_dir, run)
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
            except DamagedEntryError as exc:
                # Moved aside with the reason, so that mailq names it and it stops
                # costing every run; the others go on.
                reason = exc.why
                try:
                    move_aside(config, entry_id, reason)
                except (OSError, MailerError) as move_exc:
                    reason += f"; could not move it aside: {move_exc}"
                run.problems.append(f"{entry_id}: damaged, moved to {DAMAGED}/: {reason}")
            except OSError as exc:
                # An unreadable entry must not stop the others either.
                run.problems.append(f"{entry_id}: {type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug: this entry stays where it is, the run goes on
                log.write_traceback(config, exc)
                run.problems.append(f"{entry_id}: internal error: {type(exc).__name__}: {exc}")


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
            if not (queue_dir / f"{entry_id}{ENVELOPE_SUFFIX}").exists():
                return  # delivered by another runner
            if not (queue_dir / f"{entry_id}{MESSAGE_SUFFIX}").exists():
                # Every writer puts the message before the envelope and removes it after;
                # only move_aside takes it first, into damaged/.
                if (queue_dir.parent / DAMAGED / f"{entry_id}{MESSAGE_SUFFIX}").exists():
                    return
                raise DamagedEntryError(entry_id, "its message file is missing")
            run.busy.append(entry_id)
            return
        fd, entry = held
        _drop_unfinished_copy(config, queue_dir, entry)
        now = _now()
        # One past its lifetime is due: its last attempt decides (see _defer_or_expire).
        if not force and now < entry.next_attempt and not _expired(config, entry, now):
            run.not_due += 1
            return
        try:
            _attempt(config, queue_dir, entry, _read_fd(fd), run)
        finally:
            while run.held:
                os.close(run.held.pop())


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _attempt(config: Config, queue_dir: Path, entry: Entry, data: bytes, run: _Run) -> None:
    from ssmtp_mailer.pipeline import attempt
    from ssmtp_mailer.relay.engine import DeliveryLog

    route = config.domains.get(entry.route)
    if route is None:
        reason = f"route [domain:{entry.route}] is no longer in the configuration"
        _fail_entry(config, queue_dir, entry, data, entry.recipients, reason, {}, run)
        _count(run.failed, entry.id)
        return
    if not route.enabled:
        why = f"route [domain:{route.name}] is disabled"
        _defer_or_expire(config, queue_dir, entry, data, entry.recipients, why, {}, run)
        return
    hung = run.hung_secrets.get(route.name)
    if hung is not None:
        _defer_or_expire(config, queue_dir, entry, data, entry.recipients, hung, {}, run)
        return
    limit = 0  # the relay's recipients per transaction, once it has said (0: all at once)
    while True:
        now = _now()
        batch = entry.recipients[:limit] if limit else entry.recipients
        group = RouteGroup(
            route=route,
            envelope_from=entry.sender,
            recipients=batch,
            header_from=entry.header_from,
            reply_to=entry.reply_to,
        )
        record = DeliveryLog(config, group, data)
        # The same step as a new message's (pipeline.attempt), as a queue entry.
        attempted = attempt(
            config,
            group,
            data,
            record=record,
            smtputf8=entry.smtputf8,
            eightbit=entry.eightbit,
            dsn=entry.dsn,
            pool=run.connections,
            queued=True,
        )
        result, error = attempted.result, attempted.error
        untried = entry.recipients[len(batch) :]
        if result is None and untried and isinstance(error, NoUserError):
            # Every recipient of this batch refused for good: theirs alone, not the rest's.
            refused = _copy_to_failed(config, queue_dir, entry, batch, error_reason(error), {}, run)
            _count(run.failed, entry.id)
            entry = _replace_envelope(queue_dir, replace(entry, recipients=untried))
            record.not_sent(error, "failed", EX_OK, entry.id)
            _notify(config, refused, data, run)
            continue
        if result is None:
            assert error is not None
            if isinstance(error, CommandTimedOut):
                run.hung_secrets[route.name] = error_reason(error)
            if attempted.fate is failures.Fate.QUEUE:
                reply = error_reason(error)
                expired = _defer_or_expire(
                    config, queue_dir, entry, data, entry.recipients, reply, {}, run, now
                )
                record.not_sent(error, "failed" if expired else "deferred", EX_OK, entry.id)
            else:
                reason = error_reason(error)
                _fail_entry(config, queue_dir, entry, data, entry.recipients, reason, {}, run)
                record.not_sent(error, "failed", EX_OK, entry.id)
                _count(run.failed, entry.id)
            return
        # Those the relay took and those it refused for good leave the entry before
        # anything else goes on the wire (a failure notice, the next transaction): a kill
        # from here on sends none of them a second copy.
        rejected = result.rejected
        failed: Entry | None = None
        if rejected:
            reason = error_reason(result.refusal(rejected, NoUserError))
            replies = result.reply_to_each(rejected)
            failed = _copy_to_failed(config, queue_dir, entry, rejected, reason, replies, run)
            _count(run.failed, entry.id)
        if result.over_limit:  # a relay route's own limit (RFC 5321 §4.5.3.1.10)
            limit = len(result.accepted)
        deferred = result.deferred
        over = tuple(r for r in deferred if too_many_recipients(*result.refused[r]))
        # Those over the limit next, those the relay deferred for reasons of their own last.
        rest = over + untried + tuple(r for r in deferred if r not in over)
        done_some = bool(result.accepted or rejected)
        # Over the relay's limit: the next batch goes now, on the same connection.
        again = bool(limit) and done_some and bool(over or untried)
        if again:
            entry = _replace_envelope(queue_dir, replace(entry, recipients=rest))
        elif rest:
            why = error_reason(result.refusal(deferred, TempFailError))
            replies = result.reply_to_each(deferred)
            _defer_or_expire(config, queue_dir, entry, data, rest, why, replies, run, now)
        elif rejected:
            _remove_pair(queue_dir, entry.id)
        else:
            _mark_delivered(queue_dir, entry.id, run)
        if result.accepted:
            _count(run.delivered, entry.id)
        record.sent(result, EX_OK)
        if failed is not None:
            _notify(config, failed, data, run)
        if not again:
            return


def _count(ids: list[str], entry_id: str) -> None:
    """An entry in one of the run's tallies once, however many transactions it took (they
    come one after another: only the last id needs a look)."""
    if not ids or ids[-1] != entry_id:
        ids.append(entry_id)


def _expired(config: Config, entry: Entry, now: dt.datetime) -> bool:
    return now >= entry.queued + dt.timedelta(seconds=config.global_.queue_lifetime)


def _defer_or_expire(
    config: Config,
    queue_dir: Path,
    entry: Entry,
    data: bytes,
    pending: tuple[str, ...],
    reply: str,
    replies: dict[str, str],
    run: _Run,
    now: dt.datetime | None = None,
) -> bool:
    """`pending` failed temporarily: deferred, or, once the entry has outlived
    queue_lifetime, failed and bounced (as Postfix: only an attempt after
    maximal_queue_lifetime that fails makes mail undeliverable). True if expired."""
    now = now or _now()
    if not _expired(config, entry, now):
        _defer(queue_dir, entry, pending, reply, now)
        _count(run.deferred, entry.id)
        return False
    lifetime = short_age(config.global_.queue_lifetime)
    reason = f"expired after {lifetime} in the queue; last error: {reply}"
    _fail_entry(config, queue_dir, entry, data, pending, reason, replies, run)
    run.expired.append(entry.id)
    return True


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
    _replace_envelope(queue_dir, updated)


def _replace_envelope(queue_dir: Path, updated: Entry) -> Entry:
    """Replace the entry's envelope, durably."""
    _place(queue_dir, f"{updated.id}{ENVELOPE_SUFFIX}", _encode(updated))
    _fsync_dir(queue_dir)
    return updated


def _fail_entry(
    config: Config,
    queue_dir: Path,
    entry: Entry,
    data: bytes,
    recipients: tuple[str, ...],
    reason: str,
    replies: dict[str, str],
    run: _Run,
) -> None:
    """The whole entry fails: copied (for `recipients`) into `failed/`, dropped, bounced."""
    copy = _copy_to_failed(config, queue_dir, entry, recipients, reason, replies, run)
    _remove_pair(queue_dir, entry.id)
    _notify(config, copy, data, run)


def _notify(config: Config, failed: Entry, data: bytes, run: _Run) -> None:
    """The failure notice for `failed`, counted as the relay took it (or did not); owed
    no more once it is sent or queued, still owed when it could not even be queued."""
    notice_id = run.owed.pop(failed.id, None)
    try:
        outcome = _bounce(config, failed, data, run.connections, notice_id=notice_id)
    except CantCreateError as exc:
        run.problems.append(f"{failed.id}: failure notice not queued, still owed: {exc.why}")
        return
    if notice_id is not None:
        settle_notice(area_dir(config, FAILED), failed.id)
    if outcome == "sent":
        run.bounces += 1
    elif outcome == "queued":
        run.bounces_queued += 1


def _copy_to_failed(
    config: Config,
    queue_dir: Path,
    entry: Entry,
    recipients: tuple[str, ...],
    reason: str,
    replies: dict[str, str],
    run: _Run,
) -> Entry:
    """A durable copy of the entry for `recipients` in `failed/`: the one to bounce, its
    notice owed (in `run.owed`) until _notify has sent or queued it."""
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
    message = queue_dir / f"{entry.id}{MESSAGE_SUFFIX}"
    _link_or_copy(message, failed_dir, copy.id)
    _place(failed_dir, f"{copy.id}{ENVELOPE_SUFFIX}", _encode(copy))
    if notice_wanted(config, copy):
        _hold(failed_dir / f"{copy.id}{MESSAGE_SUFFIX}", message, run)
        # Durable before the queue entry gives these recipients up (the caller's next step).
        run.owed[copy.id] = owe_notice(failed_dir, copy.id, queue_dir)
    _fsync_dir(failed_dir)
    return copy


def _hold(copy: Path, message: Path, run: _Run) -> None:
    """Lock the failed/ copy of the locked queue entry's `message` while its notice is
    owed, so that another run's _send_owed_notices leaves it alone; a hard link of it is
    locked already (flock is the file's, not the name's)."""
    if os.path.samefile(copy, message):
        return
    fd = _open_regular(copy)
    run.held.append(fd)
    fcntl.flock(fd, fcntl.LOCK_EX)


def _send_owed_notices(config: Config, queue_dir: Path, run: _Run) -> None:
    """The notices a run killed after failing an entry left owed, at the start of every
    run: each sent or queued, once unless a run is killed again between the relay's reply
    and the mark's removal. One whose entry still holds its recipients (killed before the
    queue entry gave them up) is no failure yet: its copy goes, and the entry's next
    attempt decides (_drop_unfinished_copy, for a run killed after this one began)."""
    failed_dir = area_dir(config, FAILED)
    for failed_id, notice_id in owed_notices(failed_dir):
        try:
            with _locked(failed_dir, failed_id, FAILED) as held:
                if held is None:
                    if not (failed_dir / f"{failed_id}{ENVELOPE_SUFFIX}").exists():
                        settle_notice(failed_dir, failed_id)  # deleted meanwhile
                    continue  # else another run is still at it
                fd, failed = held
                if _still_queued(queue_dir, failed):
                    _drop_copy(failed_dir, failed_id)
                elif notice_id and (queue_dir / f"{notice_id}{ENVELOPE_SUFFIX}").exists():
                    settle_notice(failed_dir, failed_id)  # queued before the kill
                else:
                    run.owed[failed_id] = notice_id or _fresh_id(queue_dir)
                    _notify(config, failed, _read_fd(fd), run)
        except (OSError, DamagedEntryError) as exc:
            run.problems.append(f"{failed_id}: failure notice owed: {exc}")
        except Exception as exc:  # a bug: the notice stays owed, the run goes on
            log.write_traceback(config, exc)
            run.problems.append(f"{failed_id}: failure notice owed: internal error: {exc}")


def _still_queued(queue_dir: Path, failed: Entry) -> bool:
    """Whether the queue entry `failed` was copied from still has any of its recipients."""
    if failed.origin is None:
        return False
    try:
        origin = _read_entry(queue_dir, failed.origin, QUEUE)
    except (FileNotFoundError, DamagedEntryError):
        return False
    return _copied_from(origin, failed)


def _copied_from(origin: Entry, failed: Entry) -> bool:
    """Whether `failed` is a copy of the queue entry `origin` for recipients it still has:
    made by a run killed before the entry gave them up."""
    return failed.origin == origin.id and not set(origin.recipients).isdisjoint(failed.recipients)


def _drop_copy(failed_dir: Path, failed_id: str) -> None:
    """A failed/ copy that is no failure after all goes, with its mark."""
    settle_notice(failed_dir, failed_id)
    _remove_pair(failed_dir, failed_id)


def _drop_unfinished_copy(config: Config, queue_dir: Path, entry: Entry) -> None:
    """Under the locked entry's lock, before its attempt: a copy in failed/ owing a notice
    for recipients the entry still has goes, as the sweep at the start of a run drops one
    (a run killed after that sweep left this one). Else this attempt would make a second
    copy, or deliver the message while the copy still tells its sender it failed."""
    failed_dir = area_dir(config, FAILED)
    # None was made while failed/ has no copy under the entry's id (later ones have ids
    # of their own): the look through failed/ is only for entries that failed in part.
    copied = (failed_dir / f"{entry.id}{ENVELOPE_SUFFIX}").exists()
    owed = [failed_id for failed_id, _ in owed_notices(failed_dir)] if copied else []
    message = queue_dir / f"{entry.id}{MESSAGE_SUFFIX}"
    for failed_id in owed:
        copy = failed_dir / f"{failed_id}{MESSAGE_SUFFIX}"
        try:
            if os.path.samefile(copy, message):  # a hard link: locked with the entry
                if _copied_from(entry, _read_entry(failed_dir, failed_id, FAILED)):
                    _drop_copy(failed_dir, failed_id)
                continue
            # A copy of its own: a sweep holding it drops it itself (the entry still has them).
            with _locked(failed_dir, failed_id, FAILED) as held:
                if held is not None and _copied_from(entry, held[1]):
                    _drop_copy(failed_dir, failed_id)
        except (FileNotFoundError, DamagedEntryError):
            continue
