"""Secrets of a route, resolved only when the route is used: inline, command, or keyring."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import types
from pathlib import Path

from ssmtp_mailer.config.model import DomainConfig
from ssmtp_mailer.errors import ConfigError, TempFailError

KEYRING_SERVICE = "ssmtp-mailer"
# A secret command that has not answered by then (a vault that is down, a prompt with no
# terminal) is a temporary failure: the message is queued, not held or failed.
COMMAND_TIMEOUT = 10


def secret_file_problem(path: Path, holds: str = "a password") -> str | None:
    """Why a file holding a secret is too open, or None (root:mail 0640 is allowed)."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot check permissions: {exc.strerror}"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 == 0:
        return None
    if st.st_uid == 0 and mode & 0o037 == 0 and _is_mail_group(st.st_gid):
        return None
    return (
        f"holds {holds} but is readable by {'others' if mode & 0o007 else 'its group'}"
        f" (mode {mode:04o}); run: chmod 600 {path}"
    )


def _is_mail_group(gid: int) -> bool:
    import grp

    try:
        return grp.getgrgid(gid).gr_name == "mail"
    except KeyError:
        return False


class CommandTimedOut(TempFailError):
    """A password_command or oauth2_token_command that did not finish in time: a queue
    run waits for it once a route, not once an entry."""


def run_secret_command(command: str, what: str) -> str:
    """First line of a command's stdout; the command line comes from the configuration.

    What it says on stderr goes to a terminal only, never into our errors, the log or the
    spool: a token helper's complaint may hold the secret. Without a terminal (cron, the
    queue runner, the listener) it runs in a session of its own, so that a time-out ends
    it with all it started, not the shell alone; with one it keeps the terminal, where a
    helper may ask for a pass phrase (openssl, gpg, age).
    """
    import signal
    import subprocess  # here: an inline or keyring password never needs it

    terminal = sys.stderr is not None and sys.stderr.isatty()
    try:
        process = subprocess.Popen(
            command,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None if terminal else subprocess.DEVNULL,
            start_new_session=not terminal,
        )
    except OSError as exc:
        raise ConfigError(what, f"command could not run: {exc.strerror}") from None
    try:
        out, _ = process.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if terminal:
                process.kill()
            else:
                os.killpg(process.pid, signal.SIGKILL)
        # Not waiting for the pipe's end: something it started elsewhere may hold it.
        assert process.stdout is not None
        process.stdout.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)
        raise CommandTimedOut(
            what,
            f"command did not finish within {COMMAND_TIMEOUT} s",
            hint="run the command by hand to see where it hangs",
        ) from None
    if process.returncode != 0:
        raise ConfigError(
            what,
            f"command exited with status {process.returncode}",
            hint="run the command by hand to see what it says",
        )
    lines = out.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise ConfigError(what, "command printed nothing")
    return lines[0]


def set_command(name: str, *, config: str | Path | None = None) -> str:
    """The `password set` command line for route `name`, quoted for a shell (`*` too)."""
    import shlex

    where = f" --config {shlex.quote(str(config))}" if config is not None else ""
    return f"ssmtp-mailer{where} password set {shlex.quote(name)}"


def resolve_password(domain: DomainConfig) -> str | None:
    """The route's password, or None when it has none anywhere."""
    if domain.password is not None:
        if domain.password_location is not None:
            problem = secret_file_problem(Path(domain.password_location.path))
            if problem:
                raise ConfigError(
                    f"{domain.password_location}: password",
                    problem,
                    hint="or move the secret to password_command or the keyring"
                    f" ({set_command(domain.name)})",
                )
        return domain.password
    if domain.password_command:
        return run_secret_command(
            domain.password_command, f"[domain:{domain.name}] password_command"
        )
    if domain.username:
        return keyring_get(domain.name)
    return None


def resolve_oauth2_token(domain: DomainConfig) -> str:
    if not domain.oauth2_token_command:
        raise ConfigError(f"[domain:{domain.name}]", "XOAUTH2 needs oauth2_token_command")
    return run_secret_command(
        domain.oauth2_token_command, f"[domain:{domain.name}] oauth2_token_command"
    )


def _keyring() -> types.ModuleType:
    try:
        import keyring
        import keyring.errors
    except ImportError as exc:  # pragma: no cover - keyring is a dependency
        raise ConfigError("keyring", f"cannot be loaded: {exc}") from None
    return keyring


def keyring_get(name: str) -> str | None:
    keyring = _keyring()
    try:
        value = keyring.get_password(KEYRING_SERVICE, name)
    except keyring.errors.KeyringError as exc:
        raise ConfigError(
            f"keyring for [domain:{name}]",
            f"cannot be read: {exc}",
            hint="use password_command, or install a keyring backend (e.g. keyrings.alt)",
        ) from None
    return value if value is None else str(value)


def keyring_set(name: str, secret: str) -> None:
    keyring = _keyring()
    try:
        keyring.set_password(KEYRING_SERVICE, name, secret)
    except keyring.errors.KeyringError as exc:
        raise ConfigError(
            f"keyring for [domain:{name}]",
            f"cannot store the password: {exc}",
            hint="install a keyring backend (e.g. keyrings.alt), or use password_command",
        ) from None


def keyring_delete(name: str) -> bool:
    """Remove the stored password; False when there was none."""
    keyring = _keyring()
    try:
        keyring.delete_password(KEYRING_SERVICE, name)
    except keyring.errors.PasswordDeleteError:
        return False
    except keyring.errors.KeyringError as exc:
        raise ConfigError(f"keyring for [domain:{name}]", f"cannot delete: {exc}") from None
    return True
