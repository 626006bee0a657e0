"""One log line per message (SPEC §6) to `log_file` and/or syslog; never a secret."""

import os
import re
import time
from collections.abc import Sequence
from typing import NamedTuple

from ssmtp_mailer import errors
from ssmtp_mailer.config.model import Config

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_SAFE = re.compile(r"[^\s\"\\=]+")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*((?:.|\r\n[ \t])*)", re.I | re.M)
_warned: set[str] = set()


class DeliveryRecord(NamedTuple):
    """The fields of one message's log line."""

    message_id: str
    sender: str
    recipients: Sequence[str]
    route: str
    relay: str
    tls: str | None
    auth_user: str | None
    size: int
    reply: str
    outcome: str  # sent, partial, queued, deferred, failed, refused
    exit_code: int
    refused: Sequence[str] = ()
    queue_id: str | None = None
    path: str = "relay"  # relay, direct, or direct+relay for a hybrid route that used both


def message_id_of(data: bytes | bytearray) -> str:
    """The Message-ID header's value from the message's header block, or ""."""
    end = data.find(b"\r\n\r\n")
    head = data[: end + 2] if end >= 0 else data[:65536]
    match = _MESSAGE_ID.search(head)
    if not match:
        return ""
    return re.sub(r"\s+", " ", match.group(1).decode("utf-8", "replace")).strip()


def quoted(text: str) -> str:
    """A value from the network, a message or a file name, as one token of a log line."""
    text = text.replace("\r", " ").replace("\n", " ")
    if text and _SAFE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_record(record: DeliveryRecord) -> str:
    """The line without time stamp and program name."""
    fields = [
        ("msgid", record.message_id or "-"),
        ("from", f"<{record.sender}>"),
        ("to", ",".join(f"<{r}>" for r in record.recipients)),
        ("route", record.route),
        ("path", record.path),
        ("relay", record.relay or "-"),
        ("tls", record.tls or "none"),
        ("auth", record.auth_user or "-"),
        ("size", str(record.size)),
        ("reply", record.reply or "-"),
        ("outcome", record.outcome),
    ]
    if record.queue_id:
        fields.append(("queue_id", record.queue_id))
    fields.append(("exit", str(record.exit_code)))
    if record.refused:
        fields.append(("refused", ",".join(f"<{r}>" for r in record.refused)))
    return " ".join(f"{key}={quoted(value)}" for key, value in fields)


def has_destination(config: Config) -> bool:
    """Whether log lines go anywhere (log_file, syslog): if not, none need be made."""
    return config.global_.log_file is not None or config.global_.syslog


def _enabled(config: Config, level: str) -> bool:
    return has_destination(config) and LEVELS[level] >= LEVELS.get(config.global_.log_level, 20)


def _warn_once(key: str, text: str) -> None:
    if key not in _warned:
        _warned.add(key)
        errors.report(f"warning: {text}")


def write(config: Config, level: str, line: str) -> None:
    """Append `line` at `level` to the log file and/or syslog, when the level is enabled.

    One line whatever it holds: a CR or LF from a file name, a reply or a header (a
    maildrop file named to look like a delivery line) is written as a space.
    """
    if not _enabled(config, level):
        return
    line = line.replace("\r", " ").replace("\n", " ")
    path = config.global_.log_file
    if path is not None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        data = f"{stamp} ssmtp-mailer[{os.getpid()}]: {level.lower()}: {line}\n".encode()
        try:
            # O_APPEND and one write() per line: concurrent processes never interleave.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            _warn_once(str(path), f"cannot write the log file {path}: {exc.strerror}")
    if config.global_.syslog:
        import syslog

        priority = {
            "DEBUG": syslog.LOG_DEBUG,
            "INFO": syslog.LOG_INFO,
            "WARNING": syslog.LOG_WARNING,
            "ERROR": syslog.LOG_ERR,
            "CRITICAL": syslog.LOG_CRIT,
        }[level]
        syslog.openlog("ssmtp-mailer", syslog.LOG_PID, syslog.LOG_MAIL)
        syslog.syslog(priority, line)


def log_delivery(config: Config, record: DeliveryRecord) -> None:
    """The message's line: INFO when sent, WARNING when queued or partial, ERROR when failed."""
    level = {"sent": "INFO", "partial": "WARNING", "queued": "WARNING", "deferred": "WARNING"}.get(
        record.outcome, "ERROR"
    )
    if _enabled(config, level):
        write(config, level, format_record(record))


def write_traceback(config: Config, exc: BaseException) -> None:
    """An internal error's traceback, to the log at DEBUG (SPEC §9), never to the user."""
    if not _enabled(config, "DEBUG"):
        return
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for line in text.rstrip("\n").splitlines():
        write(config, "DEBUG", line)
