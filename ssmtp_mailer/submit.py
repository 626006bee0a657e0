"""Local submission by any user (SPEC §8): the submit.sock client and the maildrop writer.

A user who may not read the relay's secrets (or write the queue) hands the prepared
message to the system: over the listener's `spool_dir/submit.sock` when one runs, else as
a file in `spool_dir/maildrop/` (1733) for the pickup. Exit 0 only once it is durable.
Also the one rule for what a uid may send as, used here, by the listener and the pickup.
Kept lean: this runs on a user's sendmail path.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING

from ssmtp_mailer.errors import (
    EX_DATAERR,
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    EX_UNAVAILABLE,
    CantCreateError,
    DataError,
    NoPermError,
    report,
)

if TYPE_CHECKING:
    from pathlib import Path

    from ssmtp_mailer.config.model import Config, GlobalConfig
    from ssmtp_mailer.message import PreparedMessage

MAILDROP = "maildrop"
SUBMIT_SOCKET = "submit.sock"
MAILDROP_MAGIC = b"ssmtp-mailer-maildrop 1\n"
TEMP_PREFIX = ".tmp-"


def login_of(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def uid_label(uid: int) -> str:
    """How a Received: field names a local submitter: `uid 33 (www-data)`."""
    return f"uid {uid} ({login_of(uid)})"


def sender_refusal(
    config: Config | None, uid: int, sender: str, g: GlobalConfig | None = None
) -> str | None:
    """None when `uid` may send as `sender`, else who the sender is not owned by.

    Root sends as anyone. A user sends as `login@default_hostname`, as the default_from the
    administrator set (everyone's default sender), or as `login@DOMAIN` when a `[user:]`
    section covers that address (`[user:nagios@*]`). With `config` None (the user cannot
    read the [user:] sections; `g`, the [global] they can) only that much can be checked
    here; the listener or the pickup checks the rest.
    """
    if uid == 0:
        return None
    g = config.global_ if config is not None else g
    admins = _admins_default_sender(g)
    if admins is not None and sender.lower() == admins.lower():
        return None
    login = login_of(uid)
    local, at, domain = sender.rpartition("@")
    if not at:
        local, domain = sender, ""
    if not sender or local.lower() != login.lower():
        return uid_label(uid)
    if config is None:
        return None
    if not domain or domain.lower().rstrip(".") == config.global_.default_hostname.lower():
        return None
    from ssmtp_mailer import rewrite

    if rewrite.user_of(config, sender) is not None:
        return None
    return uid_label(uid)


def own_sender(uid: int, g: GlobalConfig | None) -> str:
    """The sender `uid` may always use: the administrator's default_from, else its login
    at default_hostname (qualified by whoever reads [global], when this user cannot)."""
    admins = _admins_default_sender(g)
    if admins is not None:
        return admins
    login = login_of(uid)
    return f"{login}@{g.default_hostname}" if g is not None else login


def _admins_default_sender(g: GlobalConfig | None) -> str | None:
    """The default_from [global] sets, as the message gets it (`noreply` is
    noreply@default_hostname); None when it is not set there (each user's own login)."""
    if g is None or "default_from" not in dict(g.key_lines):
        return None
    from ssmtp_mailer.addresses import qualify

    return qualify(g.default_from, g.default_hostname)


def maildrop_waiting(spool_dir: Path) -> int | None:
    """How many messages wait in the maildrop for a pickup; None for a user who may not
    list it (anyone but root and the spool's owner: 1733)."""
    try:
        names = os.listdir(spool_dir / MAILDROP)
    except OSError:
        return None
    return sum(1 for name in names if not name.startswith(TEMP_PREFIX))


def needs_submission(config: Config) -> bool:
    """True for a user who may not write the queue the configuration names (SPEC §8)."""
    if os.geteuid() == 0:
        return False
    spool = config.global_.spool_dir
    queue = spool / "queue"
    try:
        if queue.is_dir():
            return not os.access(queue, os.W_OK | os.X_OK)
        return spool.is_dir() and not os.access(spool, os.W_OK | os.X_OK)
    except OSError:  # a spool this user may not even look into is not this user's
        return True


def ensure_submission_dirs(config: Config) -> None:
    """As the spool's owner: spool 0755 (others reach maildrop/ and the socket), maildrop 1733."""
    from ssmtp_mailer.spool.store import ensure_spool, open_for_submission

    root = ensure_spool(config)
    try:
        open_for_submission(root)
    except OSError as exc:
        raise CantCreateError(f"spool {root / MAILDROP}", exc.strerror or str(exc)) from None


# -- the submitting side -------------------------------------------------------------


def submit(
    g: GlobalConfig | None,
    spool_dir: Path,
    prepared: PreparedMessage,
    data: bytes,
    *,
    sender_given: bool,
) -> int:
    """Hand the prepared message over: the listener's socket, else the maildrop; exit code.

    Without -f the sender came from the From field, and a program may write one the user
    does not own: cron's is `root (Cron Daemon)` whoever the job's user. Then, as with
    Postfix, the envelope sender is the user's own address and From is left as written.
    """
    uid = os.getuid()
    hostname = g.default_hostname if g is not None else ""
    why = sender_refusal(None, uid, prepared.sender, g)
    if why is not None and not sender_given:
        prepared = prepared._replace(sender=own_sender(uid, g))
        why = sender_refusal(None, uid, prepared.sender, g)
    if why is not None:
        raise NoPermError(
            prepared.sender or "<>",
            f"sender address not owned by {why}",
            hint=f"send as {login_of(uid)}@{hostname or 'this host'} (or drop -f)",
        )
    # What goes over is the prepared message (CR LF, Date, Message-ID), and the listener
    # or the pickup holds that to max_message_size: say so here, never after exit 0.
    if g is not None:
        limit = g.max_message_size
    else:  # no configuration could be read: the default, as the listener's
        from ssmtp_mailer.config.model import GlobalConfig

        limit = GlobalConfig._field_defaults["max_message_size"]
    if len(data) > limit:
        raise DataError("message", f"{len(data)} octets, over max_message_size ({limit} octets)")
    code = _over_socket(spool_dir / SUBMIT_SOCKET, prepared, data)
    if code is not None:
        return code
    return _to_maildrop(spool_dir / MAILDROP, prepared, data)


def _over_socket(path: Path, prepared: PreparedMessage, data: bytes) -> int | None:
    """SMTP to the listener over its UNIX socket; None when no listener answers (or 4xx)."""
    from ssmtp_mailer.relay import wire

    class LocalClient(wire.SMTPClient):
        def _get_socket(self, host: str, port: int) -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(300)
                sock.connect(host)
            except OSError:
                sock.close()
                raise
            return sock

    client = LocalClient("localhost")
    try:
        code, _ = client.connect(str(path), 0)
    except OSError:
        return None
    with contextlib.closing(client):
        try:
            if code != 220:
                return None
            client.putcmd("EHLO", "localhost")
            code, text = client.getreply()
            dsn = prepared.dsn
            if dsn is not None and b"DSN" not in text.upper().split(b"\n"):
                return None  # a listener from before DSN: the maildrop keeps -N, -R and -V
            options = dsn.mail_options() if dsn is not None else []
            if prepared.smtputf8:
                options.append("SMTPUTF8")
                client.command_encoding = "utf-8"
            if prepared.eightbit:
                options.append("BODY=8BITMIME")
            suffix = (" " + " ".join(options)) if options else ""
            client.putcmd("MAIL", f"FROM:<{prepared.sender}>{suffix}")
            code, text = client.getreply()
            if code != 250:
                # 4xx (a listener shutting down): the maildrop takes it instead.
                return None if code < 500 else _refused(code, text, "sender")
            accepted = 0
            rcpt_suffix = "".join(f" {o}" for o in dsn.rcpt_options()) if dsn is not None else ""
            for recipient in prepared.recipients:
                client.putcmd("RCPT", f"TO:<{recipient}>{rcpt_suffix}")
                code, text = client.getreply()
                if code == 250:
                    accepted += 1
                elif code >= 500:
                    said = text.decode(errors="replace")
                    report(f"{recipient}: refused by the listener: {code} {said}")
                else:
                    return None
            if not accepted:
                return EX_NOUSER
            client.putcmd("DATA")
            code, text = client.getreply()
            if code != 354:
                return None if code < 500 else _refused(code, text, "message")
            client.send(_dot_stuffed(data) + b".\r\n")
            code, text = client.getreply()
        except OSError:
            return None  # the listener went away before the dot's reply: nothing was accepted
        # After the dot's reply the outcome is known: a listener that closes now (SIGTERM
        # drains, then says 421) must not send the message to the maildrop a second time.
        with contextlib.suppress(OSError):
            client.putcmd("QUIT")
    if code == 250:
        return EX_OK if accepted == len(prepared.recipients) else EX_NOUSER
    if 400 <= code < 500:
        return None
    return _refused(code, text, "message")


# The listener's 5xx, by enhanced status class (RFC 3463), back to SPEC §9 exit codes.
_EXITS = {"5.7.": EX_NOPERM, "5.6.": EX_DATAERR, "5.3.": EX_DATAERR, "5.1.": EX_NOUSER}


def _refused(code: int, text: bytes, what: str) -> int:
    """A permanent refusal by the listener: one line, and the exit code sendmail gives it."""
    said = text.decode("utf-8", "replace").replace("\n", " ")
    report(f"{what}: refused by the listener: {code} {said}")
    return next((v for k, v in _EXITS.items() if said.startswith(k)), EX_UNAVAILABLE)


def _dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency; `data` has CRLF line ends."""
    out = data.replace(b"\r\n.", b"\r\n..")
    if out.startswith(b"."):
        out = b"." + out
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def maildrop_bytes(prepared: PreparedMessage, data: bytes) -> bytes:
    """The maildrop file: a magic line, the envelope as one JSON line, then the message."""
    import json

    envelope = {
        "sender": prepared.sender,
        "recipients": list(prepared.recipients),
        "smtputf8": prepared.smtputf8,
        "eightbit": prepared.eightbit,
    }
    if prepared.dsn is not None:
        # Decoded, as sendmail's -N, -R and -V gave them; the pickup checks them again.
        envelope["dsn"] = prepared.dsn.flags()
    return MAILDROP_MAGIC + json.dumps(envelope).encode("utf-8") + b"\n" + data


def _to_maildrop(directory: Path, prepared: PreparedMessage, data: bytes) -> int:
    """Write, fsync, rename into maildrop/; the pickup fsyncs the directory when it takes it
    (a user may not open maildrop/ to fsync it: it is 1733)."""
    import secrets

    name = f"{os.getpid()}-{secrets.token_hex(8)}"
    temp = directory / f"{TEMP_PREFIX}{name}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if directory.parent.is_dir():
            hint = "root's `ssmtp-mailer queue run` opens it; or start `ssmtp-mailer listen`"
        else:  # root's queue run only opens the maildrop of a spool that exists
            hint = (
                f"there is no spool {directory.parent} yet: the package makes it, and so"
                " does `ssmtp-mailer listen` started as root"
            )
        why = exc.strerror or str(exc)
        raise CantCreateError(f"maildrop {directory}", why, hint=hint) from None
    try:
        view = memoryview(maildrop_bytes(prepared, data))
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(temp, directory / name)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise CantCreateError(f"maildrop {directory}", exc.strerror or str(exc)) from None
    return EX_OK


def submission_spool(g: GlobalConfig | None) -> Path:
    """Where to submit: the configured spool_dir, else the system spool (never a user's own)."""
    from ssmtp_mailer import paths

    if g is None or g.spool_dir == paths.default_spool_dir():
        return paths.ROOT_SPOOL
    return g.spool_dir


def relay_session(spool_dir: Path, infd: int, outfd: int) -> int:
    """`sendmail -bs` for a user who cannot read the configuration: the SMTP session is
    the listener's, over submit.sock (it knows the uid); exit 0, or 75 with no listener."""
    import selectors

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(spool_dir / SUBMIT_SOCKET))
    except OSError as exc:
        sock.close()
        os.write(outfd, b"421 4.3.2 Local submission needs the listener; try again later\r\n")
        report(f"{spool_dir / SUBMIT_SOCKET}: {exc.strerror or exc}")
        report("hint: start `ssmtp-mailer listen`; plain `sendmail` (not -bs) uses the maildrop")
        return 75
    with sock, selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ, "listener")
        selector.register(infd, selectors.EVENT_READ, "client")
        while True:
            for key, _ in selector.select():
                if key.data == "client":
                    data = os.read(infd, 65536)
                    if not data:
                        # End of input ends the session as QUIT would (a second QUIT after
                        # the client's own is harmless), once every reply is out.
                        selector.unregister(infd)
                        with contextlib.suppress(OSError):
                            sock.sendall(b"QUIT\r\n")
                    else:
                        sock.sendall(data)
                    continue
                data = sock.recv(65536)
                if not data:
                    return EX_OK
                view = memoryview(data)
                while view:
                    view = view[os.write(outfd, view) :]
