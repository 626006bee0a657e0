"""Answers kept for their TTL: in the process, and across processes in one small file.

Direct delivery (relay/direct.py) keeps MX, address and `_mta-sts` TXT answers for
their DNS TTL and MTA-STS policies for their `max_age` (RFC 8461 §3.2). The file lives
in the spool directory (the state every process of the system shares); when it cannot
be read or written the cache simply stays in memory: a cache must never cost a message.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILE_NAME = "dns-cache.json"
# Nothing is kept longer than a day however long its TTL: a changed MX shows up by then.
MAX_TTL = 86400
# RFC 8461 §3.2: max_age is at most 31557600 s (about a year).
MAX_POLICY_AGE = 31557600

# Per cache file: one process may serve several configurations (tests, the listener's reload).
_memory: dict[Path | None, dict[str, tuple[float, Any]]] = {}


def path_for(spool_dir: Path) -> Path:
    return spool_dir / FILE_NAME


class Cache:
    """Values by key until they expire; `put` writes through to the shared file."""

    def __init__(self, path: Path | None, make_dir: Callable[[], object] | None = None) -> None:
        self.path = path
        # Creates the file's directory (the spool, with its permissions) on the first write.
        self._make_dir = make_dir
        self._loaded = False
        self._memory = _memory.setdefault(path, {})

    def _load(self) -> None:
        if self._loaded or self.path is None:
            return
        self._loaded = True
        now = time.time()
        for key, (expires, value) in _read(self.path).items():
            if expires > now and self._memory.get(key, (0.0, None))[0] < expires:
                self._memory[key] = (expires, value)

    def get(self, key: str) -> Any | None:
        """The live value for `key`, or None."""
        found = self._memory.get(key)
        if found is None or found[0] <= time.time():
            self._load()
            found = self._memory.get(key)
        if found is None or found[0] <= time.time():
            return None
        return found[1]

    def put(self, key: str, value: Any, ttl: float, limit: float = MAX_TTL) -> None:
        ttl = min(ttl, limit)
        if ttl <= 0:
            return
        entry = (time.time() + ttl, value)
        self._memory[key] = entry
        if self.path is not None:
            # A failure to share the answer only costs other processes a lookup.
            with contextlib.suppress(Exception):
                if self._make_dir is not None and not self.path.parent.is_dir():
                    self._make_dir()
                _write(self.path, key, entry)


def _read(path: Path) -> dict[str, tuple[float, Any]]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: (float(v[0]), v[1])
        for k, v in data.items()
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], (int, float))
    }


def _write(path: Path, key: str, entry: tuple[float, Any]) -> None:
    """Merge `entry` into the file; expired entries go. Atomic: a reader sees old or new."""
    now = time.time()
    data = {k: list(v) for k, v in _read(path).items() if v[0] > now}
    data[key] = list(entry)
    fd, temp = tempfile.mkstemp(prefix=".dns-cache-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, separators=(",", ":"))
        # Readable by every local sender: these are public DNS answers, no secret.
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
