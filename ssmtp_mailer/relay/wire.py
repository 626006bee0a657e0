"""The SMTP client's wire layer: commands out, replies in (RFC 5321 §4.2), EHLO keywords.

Ours rather than smtplib's: smtplib cannot pipeline (RFC 2920), `RelayConnection` already
speaks every command itself (AUTH, MAIL, RCPT, DATA, STARTTLS), and importing smtplib
brings the email package, datetime, random and hashlib onto every sendmail run. The
behaviour is smtplib's: the same reply parsing, line limit, EHLO keyword table and exceptions.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import BinaryIO

CRLF = "\r\n"
# The longest reply line we read (smtplib's limit; RFC 5321 §4.5.3.1.5 says 512).
MAX_LINE = 8192
# The most lines one reply may have: a server streaming continuation lines forever must not
# fill our memory (an EHLO reply has about a dozen).
MAX_REPLY_LINES = 200


class SMTPException(OSError):
    """A protocol-level failure of the connection (an OSError, as smtplib's are)."""


class SMTPServerDisconnected(SMTPException, ConnectionError):
    """The server closed the connection, or it was never open."""


class SMTPTimeout(SMTPException, TimeoutError):
    """No reply, or no room to send, within the socket's timeout."""


class SMTPResponseException(SMTPException):
    """A reply that cannot be used; carries its code and text."""

    def __init__(self, code: int, message: bytes) -> None:
        super().__init__(code, message)
        self.smtp_code = code
        self.smtp_error = message


class SMTPClient:
    """One client connection: connect, send commands, read replies, remember EHLO keywords."""

    def __init__(self, local_hostname: str) -> None:
        self.local_hostname = local_hostname
        self.sock: socket.socket | None = None
        self.file: BinaryIO | None = None
        self.esmtp_features: dict[str, str] = {}
        self.does_esmtp = False
        self.command_encoding = "ascii"

    def _get_socket(self, host: str, port: int) -> socket.socket:
        return socket.create_connection((host, port))

    def connect(self, host: str, port: int) -> tuple[int, bytes]:
        """Open the connection and read the greeting."""
        self.sock = self._get_socket(host, port)
        self.file = None
        return self.getreply()

    def send(self, data: str | bytes) -> None:
        if self.sock is None:
            raise SMTPServerDisconnected("please run connect() first")
        if isinstance(data, str):
            data = data.encode(self.command_encoding)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.close()
            raise SMTPTimeout("timed out sending to the server") from None
        except OSError:
            self.close()
            raise SMTPServerDisconnected("Server not connected") from None

    def putcmd(self, command: str, args: str = "") -> None:
        self.send(_command_line(command, args))

    def putcmds(self, commands: Sequence[tuple[str, str]]) -> None:
        """Several commands in one write (RFC 2920 pipelining); read their replies in order."""
        self.send("".join(_command_line(command, args) for command, args in commands))

    def getreply(self) -> tuple[int, bytes]:
        """(code, text lines joined by LF); code -1 when the reply has no valid code."""
        if self.sock is None:
            raise SMTPServerDisconnected("please run connect() first")
        if self.file is None:
            self.file = self.sock.makefile("rb")
        lines: list[bytes] = []
        while True:
            try:
                line = self.file.readline(MAX_LINE + 1)
            except TimeoutError:
                self.close()
                raise SMTPTimeout("timed out waiting for the server's reply") from None
            except OSError as exc:
                self.close()
                raise SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}") from None
            if not line:
                self.close()
                raise SMTPServerDisconnected("Connection unexpectedly closed")
            if len(line) > MAX_LINE:
                self.close()
                raise SMTPResponseException(500, b"Line too long.")
            if len(lines) >= MAX_REPLY_LINES:
                self.close()
                raise SMTPResponseException(500, b"Reply too long.")
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                code = -1  # no continuation is read after a broken line
                break
            if line[3:4] != b"-":
                break
        return code, b"\n".join(lines)

    def docmd(self, command: str, args: str = "") -> tuple[int, bytes]:
        self.putcmd(command, args)
        return self.getreply()

    def helo(self) -> tuple[int, bytes]:
        return self.docmd("helo", self.local_hostname)

    def ehlo(self) -> tuple[int, bytes]:
        """EHLO; on 250 the keywords go to esmtp_features (lower case -> parameters)."""
        self.esmtp_features = {}
        code, message = self.docmd("ehlo", self.local_hostname)
        if code == -1 and not message:
            self.close()
            raise SMTPServerDisconnected("Server not connected")
        if code != 250:
            return code, message
        self.does_esmtp = True
        for line in message.decode("latin-1").split("\n")[1:]:
            if line[:5].lower() == "auth=":  # the pre-RFC 2554 spelling some servers still use
                self._add_auth(line[5:])
                continue
            keyword = _keyword(line)
            if keyword:
                params = line[len(keyword) :].strip()
                if keyword.lower() == "auth":
                    self._add_auth(params)
                else:
                    self.esmtp_features[keyword.lower()] = params
        return code, message

    def _add_auth(self, mechanisms: str) -> None:
        self.esmtp_features["auth"] = self.esmtp_features.get("auth", "") + " " + mechanisms

    def has_extn(self, keyword: str) -> bool:
        return keyword.lower() in self.esmtp_features

    def rset(self) -> tuple[int, bytes]:
        self.command_encoding = "ascii"
        return self.docmd("rset")

    def quit(self) -> tuple[int, bytes]:
        reply = self.docmd("quit")
        self.forget_greeting()
        self.close()
        return reply

    def forget_greeting(self) -> None:
        """Drop what EHLO said: after QUIT, or after STARTTLS (RFC 3207 §4.2)."""
        self.esmtp_features = {}
        self.does_esmtp = False

    def peer_spoke_or_closed(self) -> bool:
        """Whether an idle connection has something unasked waiting: a 421, or the server's EOF.

        Checked before a connection is reused; a TLS record without data (a session ticket)
        does not count.
        """
        import select

        sock = self.sock
        if sock is None:
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.recv(1)
            else:
                sock.recv(1, socket.MSG_PEEK)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        return True

    def close(self) -> None:
        file, self.file = self.file, None
        sock, self.sock = self.sock, None
        try:
            if file is not None:
                file.close()
        finally:
            if sock is not None:
                sock.close()


def _command_line(command: str, args: str) -> str:
    line = f"{command} {args}" if args else command
    if "\r" in line or "\n" in line:
        shown = line.replace("\n", "\\n").replace("\r", "\\r")
        raise ValueError(f"command contains a line break: {shown}")
    return line + CRLF


def _keyword(line: str) -> str:
    """The EHLO keyword a reply line starts with (RFC 5321 §4.1.1.1), or ""."""
    if not line or not (line[0].isascii() and line[0].isalnum()):
        return ""
    end = 1
    while end < len(line) and line[end].isascii() and (line[end].isalnum() or line[end] == "-"):
        end += 1
    return line[:end]
