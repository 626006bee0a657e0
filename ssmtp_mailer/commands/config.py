"""`ssmtp-mailer config check|show|import`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ssmtp_mailer.commands.common import common_options, json_option, load, print_json, settings
from ssmtp_mailer.config.model import AuthMethod, Config
from ssmtp_mailer.errors import EX_CONFIG, CantCreateError, ConfigError, MailerError, UsageError

if TYPE_CHECKING:
    from ssmtp_mailer.config.importers import ImportedFile


@click.group("config")
@common_options
def config_group() -> None:
    """Check, show or import the configuration."""


def secret_problems(config: Config, *, resolve: bool) -> list[str]:
    """Over-readable password files always; with `resolve`, every secret is fetched too."""
    from ssmtp_mailer.config import secrets

    problems: list[str] = []
    for domain in config.domains.values():
        if domain.password is not None and domain.password_location is not None:
            problem = secrets.secret_file_problem(Path(domain.password_location.path))
            if problem:
                problems.append(f"{domain.password_location}: password: {problem}")
        if not resolve or not domain.enabled:
            continue
        try:
            if domain.auth_method == AuthMethod.XOAUTH2 or (
                domain.auth_method == AuthMethod.AUTO and domain.oauth2_token_command
            ):
                secrets.resolve_oauth2_token(domain)
            elif (
                domain.auth_method != AuthMethod.NONE
                and domain.password is None
                and domain.username
                and secrets.resolve_password(domain) is None
            ):
                problems.append(
                    f"{domain.location}: [domain:{domain.name}]: no password for"
                    f" {domain.username} (no password, password_command or keyring entry;"
                    f" run: {secrets.set_command(domain.name)})"
                )
        except MailerError as exc:
            problems.append(f"{domain.location}: {exc.what}: {exc.why}")
    return problems


def dkim_problems(config: Config) -> list[str]:
    """Every signing route's keys are read, checked and tried on a sample message."""
    signing = [d for d in config.domains.values() if d.dkim_key_file]
    if not signing:
        return []
    from ssmtp_mailer.relay import dkim

    return [line for domain in signing for line in dkim.check_route(domain)]


def key_file_warnings(config: Config) -> list[str]:
    """Private keys others may read: a DKIM key (anyone could sign as us), a client
    certificate's or the listener's TLS key (anyone could pose as us)."""
    from ssmtp_mailer.config import secrets

    keys: list[tuple[str, Path, str]] = []
    for domain in config.domains.values():
        where = f"{domain.location}: [domain:{domain.name}]"
        keys += [(f"{where}: dkim_key_file", p, "a DKIM private key") for p in domain.dkim_key_file]
        if domain.ssl_key_file is not None:
            keys.append((f"{where}: ssl_key_file", domain.ssl_key_file, "a TLS private key"))
    if config.global_.listen_tls_key_file is not None:
        keys.append(
            ("listen_tls_key_file", config.global_.listen_tls_key_file, "a TLS private key")
        )
    found = []
    for where, path, holds in keys:
        if not os.path.exists(path):
            continue  # missing or out of reach: the check that loads it says so
        problem = secrets.secret_file_problem(Path(path), holds)
        if problem:
            found.append(f"{where}: {problem}")
    return found


def tls_problems(config: Config) -> list[str]:
    """Every route's TLS files load (a client certificate and its key, ssl_ca_file) as a
    send loads them: an encrypted key, say, is found here, not at every send."""
    from ssmtp_mailer.relay.smtp import tls_context

    problems = []
    for domain in config.domains.values():
        if domain.ssl_cert_file is None and domain.ssl_ca_file is None:
            continue
        try:
            tls_context(domain)
        except MailerError as exc:
            problems.append(f"{domain.location}: {exc.what}: {exc.why}")
    return problems


def password_hash_warnings(config: Config) -> list[str]:
    """Listener logins whose scrypt hash others may read: a local user could guess at it
    offline, as fast as their CPU goes, instead of at 2 s a try against the listener."""
    from ssmtp_mailer.config import secrets

    found = []
    files = dict.fromkeys(u.location.path for u in config.users if u.smtp_password_hash)
    for path in files:  # once a file, however many logins it holds
        problem = secrets.secret_file_problem(Path(path), "a password hash")
        if problem:
            found.append(f"{path}: smtp_password_hash: {problem}")
    return found


def _beyond_reach(path: Path) -> bool:
    """There, or maybe there (its directory is closed to us), but not for this user to read."""
    if os.access(path, os.R_OK):
        return False
    try:
        path.stat()
    except PermissionError:
        return True  # a directory on the way is closed to this user
    except OSError:
        return False  # missing, or no file at all: tls_context says so
    return True


def listener_problems(config: Config) -> tuple[list[str], list[str]]:
    """What `listen` would refuse (errors) or not do as asked (warnings), checked without
    binding: the TLS certificate and key, the users it becomes and gives the spool to, and
    listen_address's names."""
    import pwd
    import socket

    from ssmtp_mailer import listener

    g = config.global_

    def where(key: str) -> str:
        found = g.location_of(key)
        return f"{found}: " if found is not None else ""

    errors: list[str] = []
    warnings: list[str] = []
    files = {
        "listen_tls_cert_file": g.listen_tls_cert_file,
        "listen_tls_key_file": g.listen_tls_key_file,
    }
    unreadable = [
        f"{where(key)}{key} {path}: not readable by this user, not checked"
        for key, path in files.items()
        if path is not None and _beyond_reach(path)
    ]
    if unreadable:  # the key is root's and mail's (0640): not this user's to check
        warnings += unreadable
    else:
        try:
            listener.tls_context(config)
        except ConfigError as exc:
            errors.append(f"{where('listen_tls_cert_file')}{exc.what}: {exc.why}")
    for key, user, effect in (
        ("listen_user", g.listen_user, "a listener started as root would refuse to start"),
        ("spool_user", g.spool_user, "root's spool stays root's"),
    ):
        try:
            pwd.getpwnam(user)
        except KeyError:
            warnings.append(f"{where(key)}{key}: no such user: {user} ({effect})")
    for hp in g.listen_address:
        try:
            socket.getaddrinfo(hp.host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            warnings.append(f"{where('listen_address')}listen_address {hp}: {why}")
    return errors, warnings


@config_group.command("check")
@common_options
@json_option
@click.option("--strict", is_flag=True, help="Treat warnings (unknown keys) as errors.")
@click.option(
    "--secrets",
    "check_secrets",
    is_flag=True,
    help="Also run password commands and read the keyring.",
)
def check(as_json: bool, strict: bool, check_secrets: bool) -> int:
    """Validate the configuration; exit 78 listing every problem."""
    errors: list[str] = []
    warnings: list[str] = []
    config = None
    hint = None
    try:
        # Loaded leniently even for --strict: a warning that is an error stops nothing
        # here, so that every problem is listed at once.
        config = load()
    except ConfigError as exc:
        errors = exc.problems or [f"{exc.what}: {exc.why}"]
        warnings = list(exc.warnings)
        hint = exc.hint
    if config is not None:
        listen_errors, listen_warnings = listener_problems(config)
        warnings = list(config.warnings) + listen_warnings + key_file_warnings(config)
        warnings += password_hash_warnings(config)
        errors = secret_problems(config, resolve=check_secrets) + dkim_problems(config)
        errors += tls_problems(config)
        errors += listen_errors
        if not config.domains:
            warnings.append(
                f"{config.main_file}: no [domain:] section: nothing can be sent"
                " (add one, or a file in domains/)"
            )
    if strict:
        errors, warnings = errors + warnings, []
    ok = not errors
    if as_json:
        print_json(
            {
                "ok": ok,
                "file": str(config.main_file) if config else settings().config_path,
                "errors": errors,
                "hint": hint,
                "warnings": warnings,
                "files": [str(f) for f in config.files] if config else [],
            }
        )
    else:
        for line in errors:
            click.echo(f"ssmtp-mailer: {line}", err=True)
        if hint:
            click.echo(f"ssmtp-mailer: hint: {hint}", err=True)
        for line in warnings:
            click.echo(f"ssmtp-mailer: warning: {line}", err=True)
        if ok and config is not None:
            click.echo(
                f"{config.main_file}: OK: {_count(len(config.domains), 'route')},"
                f" {_count(len(config.users), 'user')}, {_count(len(config.mappings), 'mapping')}"
                f" in {_count(len(config.files), 'file')}"
            )
    return 0 if ok else EX_CONFIG


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@config_group.command("show")
@common_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ini", "toml", "json"]),
    default="ini",
    show_default=True,
    help="Output format.",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json (SPEC §2).")
def show(fmt: str, as_json: bool) -> None:
    """Print the effective configuration, defaults filled in, secrets redacted."""
    from ssmtp_mailer.config import render

    if as_json:
        fmt = "json"
    config = load()
    text = {"ini": render.to_ini, "toml": render.to_toml, "json": render.to_json}[fmt](config)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@config_group.command("import")
@common_options
@json_option
@click.option(
    "--from",
    "kind",
    type=click.Choice(["ssmtp", "msmtp"]),
    required=True,
    help="What FILE is: an ssmtp.conf or an msmtprc.",
)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--revaliases",
    type=click.Path(dir_okay=False),
    help="ssmtp's revaliases file; its entries become sender mappings.",
)
@click.option(
    "--account",
    metavar="NAME",
    help="msmtp: import only this account (it becomes default_domain);"
    " ssmtp: the route's name [default: relay].",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Folder to write the new tree into (ssmtp-mailer.conf, domains/, mappings/).",
)
@click.option(
    "--passwords",
    type=click.Choice(["file", "keyring", "omit"]),
    default="file",
    show_default=True,
    help="Where passwords found inline go: the route's file (mode 0600, or 0640 root:mail"
    " as root), the keyring, or nowhere (the `password set` commands to run are printed).",
)
@click.option("--force", is_flag=True, help="Overwrite files that already exist in --out.")
def import_command(
    as_json: bool,
    kind: str,
    file: str,
    revaliases: str | None,
    account: str | None,
    out_dir: str,
    passwords: str,
    force: bool,
) -> int:
    """Write an equivalent tree from an ssmtp or msmtp configuration; say what differs."""
    from ssmtp_mailer.config import importers, secrets

    if revaliases is not None and kind != "ssmtp":
        raise UsageError("config import", "--revaliases is for --from ssmtp")
    inline = passwords == "file"
    text = _read_source(file)
    if kind == "ssmtp":
        imported = importers.import_ssmtp(
            text,
            file,
            revaliases=_read_source(revaliases) if revaliases is not None else None,
            revaliases_source=revaliases or "revaliases",
            route=account or "relay",
            inline_passwords=inline,
            exists=_is_file,
        )
    else:
        imported = importers.import_msmtp(
            text,
            file,
            read_aliases=_read_optional,
            account=account,
            inline_passwords=inline,
            exists=_is_file,
        )
    out = Path(out_dir)
    if not force:
        taken = [f.path for f in imported.files if (out / f.path).exists()]
        if taken:
            raise UsageError(
                f"config import: {out}", f"already holds {', '.join(taken)}", hint="pass --force"
            )
    # The new tree is checked on its own before it replaces anything in --out, then again
    # in place, with whatever else --out holds.
    problems = _staged_problems(out, imported.files)
    if problems:
        raise ConfigError(
            "config import", "the result does not pass config check", problems=problems
        )
    modes = [
        _write_imported(out / item.path, item.text, secret=item.secret) for item in imported.files
    ]
    main = out / importers.MAIN_FILE
    commands: list[str] = []
    for name, secret in imported.passwords:
        if passwords == "keyring":
            secrets.keyring_set(name, secret)
        else:
            commands.append(secrets.set_command(name, config=main))
    for name in imported.keyring_routes:
        commands.append(secrets.set_command(name, config=main))
    problems = _check_problems(main)
    if as_json:
        print_json(
            {
                "ok": not problems,
                "files": [str(out / f.path) for f in imported.files],
                "notes": list(imported.notes),
                "stored_in_keyring": [n for n, _ in imported.passwords if passwords == "keyring"],
                "commands": commands,
                "errors": problems,
            }
        )
    else:
        for item, mode in zip(imported.files, modes, strict=True):
            click.echo(f"wrote {out / item.path} ({mode})")
        if passwords == "keyring":
            for name, _ in imported.passwords:
                click.echo(f"stored the password for [domain:{name}] in the keyring")
        for note in imported.notes:
            click.echo(f"not carried over or different: {note}")
        for command in commands:
            click.echo(f"to do: {command}")
        for line in problems:
            click.echo(f"ssmtp-mailer: {line}", err=True)
        if not problems:
            click.echo(f"{main}: OK: passes `ssmtp-mailer config check`")
    return EX_CONFIG if problems else 0


def _check_problems(main: Path) -> list[str]:
    from ssmtp_mailer.config.loader import load_config_file

    try:
        load_config_file(main)
    except ConfigError as exc:
        return exc.problems or [f"{exc.what}: {exc.why}"]
    return []


def _staged_problems(out: Path, files: Sequence[ImportedFile]) -> list[str]:
    """What `config check` says of the imported files alone, written next to --out."""
    import shutil
    import tempfile

    from ssmtp_mailer.config.importers import MAIN_FILE

    parent = out.resolve().parent
    try:
        _make_folders(parent)
        stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}-import-"))
    except OSError as exc:
        raise CantCreateError(str(out), f"cannot write: {exc.strerror or exc}") from None
    try:
        for item in files:
            _write_imported(stage / item.path, item.text, secret=item.secret)
        return [line.replace(str(stage), str(out)) for line in _check_problems(stage / MAIN_FILE)]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _read_source(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError:
        raise ConfigError(path, "not valid UTF-8") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None


def _read_optional(path: str) -> str | None:
    try:
        return _read_source(os.path.expanduser(path))
    except ConfigError:
        return None


def _make_folders(folder: Path) -> None:
    """`folder` and those above it that are missing, 0755 whatever the umask: one others
    may write is a tree the loader refuses (and anyone's commands run as root)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        made.chmod(0o755)


def _write_imported(path: Path, text: str, *, secret: bool) -> str:
    """Written whole or not at all; a password file never exists, even briefly, wider open
    than 0600 (0640 root:mail as root, which the listener running as mail may read)."""
    import tempfile

    try:
        _make_folders(path.parent)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
                mode = "mode 0600, holds a password"
                if not secret:
                    os.fchmod(handle.fileno(), 0o644)
                    mode = "mode 0644, no secret"
                elif os.geteuid() == 0 and (gid := _mail_gid()) is not None:
                    os.fchown(handle.fileno(), 0, gid)
                    os.fchmod(handle.fileno(), 0o640)
                    mode = "mode 0640 root:mail, holds a password"
            os.replace(temp, path)
            return mode
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except OSError as exc:
        raise CantCreateError(str(path), f"cannot write: {exc.strerror or exc}") from None


def _mail_gid() -> int | None:
    import grp

    try:
        return grp.getgrnam("mail").gr_gid
    except KeyError:
        return None


def _is_file(path: str) -> bool:
    """As the loader will see it: `~` is the home of whoever reads the configuration."""
    return os.path.isfile(os.path.expanduser(path))
