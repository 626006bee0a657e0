"""The spool (SPEC §7), by job: `store` (entries, durable writes, locking), `runner`
(`queue run`), `bounce` (RFC 3464 notices). The listing and `show` output live with the
`queue` command (commands/queue.py)."""

from __future__ import annotations

from ssmtp_mailer.spool.runner import QueueRunResult, run_queue
from ssmtp_mailer.spool.store import (
    BACKOFF_START,
    FAILED,
    QUEUE,
    STALE_SECONDS,
    TEMP_PREFIX,
    Entry,
    EntryBusyError,
    backoff,
    delete_entry,
    enqueue,
    find_entry,
    handle_permanent_failure,
    handle_temporary_failure,
    list_entries,
    queued_note,
    retry_failed,
    store_failed,
)

__all__ = [
    "BACKOFF_START",
    "FAILED",
    "QUEUE",
    "STALE_SECONDS",
    "TEMP_PREFIX",
    "Entry",
    "EntryBusyError",
    "QueueRunResult",
    "backoff",
    "delete_entry",
    "enqueue",
    "find_entry",
    "handle_permanent_failure",
    "handle_temporary_failure",
    "list_entries",
    "queued_note",
    "retry_failed",
    "run_queue",
    "store_failed",
]
