"""The configuration most tests need: one catch-all route to a test server, a private spool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# The `run_main` fixture: (args, stdin=b"", prog="sendmail") -> (exit code, stdout, stderr).
RunMain = Callable[..., tuple[int, str, str]]

HOST = "host.example"


def write_relay_config(
    path: Path, port: int, extra: str = "", *, spool: Path | None = None
) -> Path:
    """Write `path`: no retries, no rate limit, `[domain:*]` plain and unauthenticated."""
    path.write_text(
        f"""[global]
default_hostname = {HOST}
spool_dir = {spool or path.parent / "spool"}
max_retries = 0
retry_backoff = 0
connection_timeout = 5
enable_rate_limiting = false
{extra}
[domain:*]
smtp_server = 127.0.0.1
smtp_port = {port}
use_starttls = false
auth_method = NONE
"""
    )
    return path
