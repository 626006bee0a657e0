"""`ssmtp-mailer queue list|show|run|delete|retry-failed` (SPEC §7)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ssmtp_mailer import errors
from ssmtp_mailer.commands.common import common_options, json_option, load, print_json, settings
from ssmtp_mailer.config.model import Config, GlobalConfig
from ssmtp_mailer.errors import MailerError, NoPermError
from ssmtp_mailer.spool.store import (
    DAMAGED,
    FAILED,
    QUEUE,
    Entry,
    area_dir,
    denied,
    list_damaged,
    list_entries,
    short_age,
)
from ssmtp_mailer.submit import maildrop_waiting

Command = TypeVar("Command", bound=Callable[..., Any])

_LISTING_HEADER = (
    "-Queue ID-------- --Size-- ----Arrival Time---- -Age- -Tries- -Sender/Recipient-------"
)
_LISTING_INDENT = _LISTING_HEADER.index("-Sender")


def listing_config(explicit: str | None, global_: GlobalConfig | None) -> Config:
    """What a user who may not read every configuration file lists the queue with (SPEC §8):
    the [global] that could be read (the defaults without it) and the spool this user's
    sendmail submits to. `explicit`: the --config/-C path, if one was given."""
    from ssmtp_mailer.config import loader
    from ssmtp_mailer.submit import submission_spool

    main_file = Path(os.path.abspath(loader.find_config_file(explicit)))
    if global_ is None:
        global_ = loader.default_global(main_file)
    global_ = global_._replace(spool_dir=submission_spool(global_))
    return Config(main_file=main_file, global_=global_, domains={}, users=(), mappings=())


def _load_for_listing() -> Config:
    """The configuration, or as much of it as a listing needs when secrets stood in the way."""
    from ssmtp_mailer.config.loader import UnreadableConfigError

    try:
        return load()
    except UnreadableConfigError as exc:
        if os.geteuid() == 0:
            raise
        return listing_config(settings().config_path, exc.global_)


def _check_listable(config: Config, area: str) -> None:
    """NoPermError (77), in one line, for a user who may not list the area: queue/ and
    failed/ are for root and spool_user alone (2770, SPEC §8), and no daemon lists them
    for others as Postfix's showq does. The maildrop's count goes with it when this user
    may see it."""
    directory = area_dir(config, area)
    try:
        with os.scandir(directory):
            return
    except PermissionError:
        pass
    except OSError:
        return  # no such area yet: the listing says it is empty
    why = f"not readable by this user (root and spool_user {config.global_.spool_user} can list it)"
    waiting = None if area == FAILED else maildrop_waiting(config.global_.spool_dir)
    if waiting:
        why += f"; {waiting} in the maildrop, for `ssmtp-mailer queue run` to pick up"
    raise NoPermError(f"{area} {directory}", why)


def listing_text(config: Config, *, failed: bool = False) -> str:
    """The mailq-style listing: id, size, arrival, age, attempts, sender, last error, recipients;
    then the damaged entries, each with its reason."""
    _check_listable(config, FAILED if failed else QUEUE)
    entries = list_entries(config, failed=failed)
    damaged = [] if failed else list_damaged(config)
    waiting = None if failed else maildrop_waiting(config.global_.spool_dir)
    lines = _entry_lines(entries) if entries else []
    if damaged:
        lines.append(f"-- {len(damaged)} damaged (kept in {DAMAGED}/ with the reason):")
        lines.extend(f"{entry_id} {reason}" for entry_id, reason in damaged)
    if waiting:
        # Local users' mail not yet picked up: the queue run that takes it says what holds it.
        lines.append(f"-- {waiting} in the maildrop, for `ssmtp-mailer queue run` to pick up")
    if not lines:
        return "Failed area is empty" if failed else "Mail queue is empty"
    return "\n".join(lines)


def _entry_lines(entries: list[Entry]) -> list[str]:
    lines = [_LISTING_HEADER]
    total = 0
    for entry in entries:
        total += entry.size
        arrival = entry.created.astimezone().strftime("%a %b %d %H:%M:%S")
        lines.append(
            f"{entry.id} {entry.size:>8} {arrival:>20} {short_age(entry.age()):>5}"
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
    return lines


def header_block(data: bytes) -> str:
    """The message's header section, for `queue show`."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = data if end < 0 else data[:end]
    return head.decode("utf-8", "replace").replace("\r\n", "\n")


def _spool_access(command: Command) -> Command:
    """The spool is root's and spool_user's: anyone else hears so, not a traceback."""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PermissionError as exc:
            raise denied(exc) from None

    return guarded  # type: ignore[return-value]


@click.group("queue")
@common_options
def queue_group() -> None:
    """List, show, run and clean the spool."""


@queue_group.command("list")
@common_options
@json_option
@click.option("--failed", is_flag=True, help="List failed/ (kept after a permanent failure).")
@_spool_access
def list_cmd(as_json: bool, failed: bool) -> None:
    """Queue entries: id, age, size, sender, pending recipients, attempts, last error."""
    from ssmtp_mailer import spool

    config = _load_for_listing()
    if as_json:
        _check_listable(config, FAILED if failed else QUEUE)
        listed: list[dict[str, Any]] = [
            e.as_dict() for e in spool.list_entries(config, failed=failed)
        ]
        if not failed:
            listed += [{"id": i, "damaged": why} for i, why in list_damaged(config)]
        print_json(listed)
    else:
        click.echo(listing_text(config, failed=failed))


@queue_group.command("show")
@common_options
@json_option
@click.argument("entry_id", metavar="ID")
@_spool_access
def show_cmd(as_json: bool, entry_id: str) -> None:
    """One entry: its envelope, attempt history and message headers."""
    from ssmtp_mailer import spool

    entry, data = spool.find_entry(load(), entry_id)
    if as_json:
        print_json({**entry.as_dict(), "headers": header_block(data)})
        return
    rows = [
        ("ID", entry.id + ("  (failed/)" if entry.area == spool.FAILED else "")),
        ("Sender", entry.sender or "<> (null sender)"),
        ("Recipients", ", ".join(entry.recipients)),
        ("Route", f"[domain:{entry.route}]"),
        ("Size", f"{entry.size} bytes"),
        ("Created", entry.created.astimezone().isoformat(sep=" ")),
        (
            "Flags",
            " ".join(
                f for f, on in (("SMTPUTF8", entry.smtputf8), ("8BITMIME", entry.eightbit)) if on
            )
            or "-",
        ),
    ]
    if entry.area == spool.FAILED:
        when = entry.failed_at.astimezone().isoformat(sep=" ") if entry.failed_at else "-"
        rows.append(("Failed", when))
        rows.append(("Reason", entry.reason))
        rows.extend(("Refused", f"{rcpt}: {reply}") for rcpt, reply in entry.replies.items())
        if entry.origin:
            rows.append(("Queued as", entry.origin))
    else:
        rows.append(("Next attempt", entry.next_attempt.astimezone().isoformat(sep=" ")))
    for name, value in rows:
        click.echo(f"{name + ':':<14}{value}")
    click.echo(f"\nHistory ({len(entry.attempts)} attempt(s)):")
    for attempt in entry.attempts:
        click.echo(f"  {attempt.time.astimezone().isoformat(sep=' ')}  {attempt.reply}")
    click.echo("\nHeaders:")
    click.echo(header_block(data))


@queue_group.command("run")
@common_options
@json_option
@click.option("--all", "force", is_flag=True, help="Ignore the backoff: try every entry now.")
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only this entry (repeatable).")
@click.option("--progress", is_flag=True, help="Show a progress bar (on a terminal).")
def run_cmd(as_json: bool, force: bool, ids: tuple[str, ...], progress: bool) -> int:
    """Deliver the entries that are due; safe to run from several places at once."""
    from ssmtp_mailer import spool

    result = spool.run_queue(load(), force=force, ids=ids, progress=progress)
    if as_json:
        print_json(
            {
                "delivered": result.delivered,
                "deferred": result.deferred,
                "failed": result.failed,
                "expired": result.expired,
                "busy": result.busy,
                "not_due": result.not_due,
                "bounces": result.bounces,
                "bounces_queued": result.bounces_queued,
                "picked_up": result.picked_up,
                "problems": result.problems,
            }
        )
    else:
        click.echo(f"queue run: {result.summary()}")
        for problem in result.problems:
            errors.report(f"queue run: {problem}")
    return result.exit_code


def _each_entry(entry_ids: tuple[str, ...], act: Callable[[str], str]) -> int:
    """Apply `act` to every id, printing its line; the last failure's exit code, else 0."""
    status = 0
    for entry_id in entry_ids:
        try:
            click.echo(act(entry_id))
        except MailerError as exc:
            for line in exc.lines():
                errors.report(line)
            status = exc.exit_code
    return status


@queue_group.command("delete")
@common_options
@click.argument("entry_ids", metavar="ID...", nargs=-1, required=True)
@_spool_access
def delete_cmd(entry_ids: tuple[str, ...]) -> int:
    """Remove entries from the queue or failed/ (never one being delivered)."""
    from ssmtp_mailer import spool

    config = load()

    def delete(entry_id: str) -> str:
        return f"deleted {entry_id.upper()} from {spool.delete_entry(config, entry_id)}/"

    return _each_entry(entry_ids, delete)


@queue_group.command("retry-failed")
@common_options
@click.argument("entry_ids", metavar="ID...", nargs=-1, required=True)
@_spool_access
def retry_failed_cmd(entry_ids: tuple[str, ...]) -> int:
    """Move failed entries back into the queue, due now (the next `queue run` tries them)."""
    from ssmtp_mailer import spool

    config = load()

    def retry(entry_id: str) -> str:
        return f"{entry_id.upper()} queued again as {spool.retry_failed(config, entry_id)}"

    return _each_entry(entry_ids, retry)
