"""Messages per minute per route and overall, shared by every process through locked state files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ssmtp_mailer.errors import TempFailError

WINDOW = 60.0
# How long a send may wait for a free slot before it is handed to the spool instead.
MAX_WAIT = 60.0


def state_dir_for(spool_dir: Path) -> Path:
    """Where the rate-limit state lives: beside the queue, shared by every process."""
    return spool_dir / "ratelimit"


_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def _file_name(key: str) -> str:
    return "".join(c if c in _NAME_CHARS else f"%{ord(c):02x}" for c in key) + ".times"


@contextlib.contextmanager
def _locked(paths: Sequence[Path]) -> Iterator[list[int]]:
    from ssmtp_mailer.spooldirs import spool_dir_fd

    fds: list[int] = []
    try:
        # Sorted so two processes never take the same pair of locks in opposite order.
        for path in sorted(paths):
            with spool_dir_fd(path.parent) as dir_fd:  # never through a planted link
                fd = _open(dir_fd, path.name)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        order = sorted(range(len(paths)), key=lambda i: paths[i])
        by_input = [0] * len(paths)
        for fd, index in zip(fds, order, strict=True):
            by_input[index] = fd
        yield by_input
    finally:
        for fd in fds:
            os.close(fd)  # closing releases the flock


def _open(dir_fd: int, name: str) -> int:
    """The state file, made shared like its directory (the spool's group may take slots).

    Never a link (O_NOFOLLOW, ELOOP) nor anything but a regular file: the spool's owner
    could point `global.times` at a file of root's, which root's sendmail would truncate.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        mode = 0o660 if os.fstat(dir_fd).st_mode & 0o070 else 0o600
        fd = os.open(name, flags | os.O_CREAT, mode, dir_fd=dir_fd)
        with contextlib.suppress(OSError):  # another process made it first
            os.fchmod(fd, mode)  # the umask would take the group's write
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device put in its place
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file: refused", name)
    return fd


def _read_times(fd: int) -> list[float]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    words = b"".join(chunks).split()
    try:
        # A queue run reads a minute of send times before every message: parse in one go.
        return list(map(float, words))
    except ValueError:
        times = []
        for word in words:
            with contextlib.suppress(ValueError):
                times.append(float(word))
        return times


def _write_times(fd: int, times: list[float]) -> None:
    data = "".join(f"{t:.3f}\n" for t in times).encode("ascii")
    # Written over the old state, then cut to length: the file is mostly the same size
    # from one message to the next, so no blocks are freed and allocated again.
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def acquire(
    state_dir: Path,
    limits: Sequence[tuple[str, int]],
    *,
    max_wait: float | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Take one slot under every (key, per-minute limit); wait for one, or raise TempFailError.

    Returns the seconds waited. A sliding one-minute window of send times per key, kept
    in a file locked with flock, so concurrent sendmail processes share the budget.
    `state_dir` exists: it is an area of the spool (store.ensure_area), owned as the spool is.
    """
    limits = [(key, limit) for key, limit in limits if limit > 0]
    if not limits:
        return 0.0
    bound = MAX_WAIT if max_wait is None else max_wait
    paths = [state_dir / _file_name(key) for key, _ in limits]
    started = clock()
    while True:
        now = clock()
        with _locked(paths) as fds:
            windows = [[t for t in _read_times(fd) if now - WINDOW < t <= now + 1] for fd in fds]
            wait = 0.0
            for (_key, limit), times in zip(limits, windows, strict=True):
                if len(times) >= limit:
                    times.sort()
                    wait = max(wait, times[len(times) - limit] + WINDOW - now)
            if wait <= 0:
                for fd, times in zip(fds, windows, strict=True):
                    times.append(now)
                    _write_times(fd, times)
                return now - started
        left = bound - (now - started)
        if left <= 0:
            names = ", ".join(f"{key} ({limit}/min)" for key, limit in limits)
            raise TempFailError(
                "rate limit",
                f"no free slot within {bound:g} s under {names}",
                # Not "kept": with on_temporary_failure = fail nothing is (the stderr line
                # before says whether it was queued).
                hint="raise rate_limit_per_minute if the relay allows more, or"
                " rate_limit_wait for senders to wait longer for a slot",
            )
        sleep(min(wait, left) + 0.01)
