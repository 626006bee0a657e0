"""Directories inside the spool, opened without ever following a link (SPEC §8).

Apart from spool/ so that the sendmail path (the rate limit's state files) can use it
without importing the spool package, whose runner and bounces it does not need.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class UnsafeSpoolError(OSError):
    """A name inside the spool that is no real directory (a link its owner planted): refused."""


def open_spool_dir(path: Path, *, trusted: bool = False) -> int:
    """An fd on a directory of the spool, never reached through a symbolic link.

    The spool belongs to `spool_user`, so root treats every name inside it as hostile: a
    `maildrop` or `queue` made a link to /etc must not get /etc chmodded, filled or
    emptied. Only the spool itself (`trusted`, named by the administrator) may be a link.
    FileNotFoundError when it is missing; UnsafeSpoolError when it is no real directory.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if trusted else os.O_NOFOLLOW)
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise UnsafeSpoolError(
            exc.errno, "not a real directory (a symbolic link or a file): refused", str(path)
        ) from None


@contextlib.contextmanager
def spool_dir_fd(path: Path, *, trusted: bool = False) -> Iterator[int]:
    """`open_spool_dir` for the length of a `with`."""
    fd = open_spool_dir(path, trusted=trusted)
    try:
        yield fd
    finally:
        os.close(fd)
