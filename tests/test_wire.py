"""The wire layer against scripted servers, side by side with smtplib on the same replies.

relay.wire replaced smtplib under RelayConnection; whatever a server says, both must read
the same codes, texts and EHLO keywords, and fail the same way.
"""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable, Iterator

import pytest
from smtpserver import MisbehavingServer

from ssmtp_mailer.relay.wire import (
    SMTPClient,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
)

EHLO = (
    b"250-relay.example greets you\r\n"
    b"250-SIZE 35882577\r\n"
    b"250-8BITMIME\r\n"
    b"250-AUTH=LOGIN PLAIN\r\n"
    b"250-AUTH CRAM-MD5 PLAIN\r\n"
    b"250-auth xoauth2\r\n"
    b"250-X-ODD-Keyword  with  spaces \r\n"
    b"250-!not a keyword\r\n"
    b"250-\r\n"
    b"250 STARTTLS\r\n"
)


def scripted(replies: list[bytes]) -> Callable[[socket.socket], None]:
    """Greet, then answer each command line with the next reply; hang up after the last."""

    def behaviour(conn: socket.socket) -> None:
        conn.sendall(b"220 relay.example ESMTP\r\n")
        reader = conn.makefile("rb")
        for reply in replies:
            if not reader.readline():
                return
            conn.sendall(reply)
        reader.close()

    return behaviour


@pytest.fixture
def serve() -> Iterator[Callable[[list[bytes]], MisbehavingServer]]:
    servers: list[MisbehavingServer] = []

    def start(replies: list[bytes]) -> MisbehavingServer:
        server = MisbehavingServer(scripted(replies)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def ours(server: MisbehavingServer) -> SMTPClient:
    client = SMTPClient("client.example")
    assert client.connect(server.host, server.port) == (220, b"relay.example ESMTP")
    return client


def theirs(server: MisbehavingServer) -> smtplib.SMTP:
    client = smtplib.SMTP(local_hostname="client.example", timeout=5)
    client.connect(server.host, server.port)
    return client


def test_ehlo_keywords_as_smtplib_reads_them(serve: Callable[..., MisbehavingServer]) -> None:
    server = serve([EHLO])
    mine, reference = ours(server), theirs(server)
    assert mine.ehlo() == reference.ehlo()
    assert mine.esmtp_features == reference.esmtp_features
    assert mine.esmtp_features["size"] == "35882577"
    assert mine.esmtp_features["auth"].split() == ["LOGIN", "PLAIN", "CRAM-MD5", "PLAIN", "xoauth2"]
    assert mine.has_extn("STARTTLS") and mine.has_extn("8bitmime") and mine.does_esmtp
    mine.close()
    reference.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"250-first\r\n250-second\r\n250 third\r\n",  # multi-line
        b"451 4.3.0 try again later\r\n",
        b"abc not a reply\r\n250 never read\r\n",  # no code: -1, the rest is not read
        b"250 ok\n",  # bare LF
        b"354\r\n",  # no text
    ],
)
def test_replies_as_smtplib_reads_them(
    serve: Callable[..., MisbehavingServer], reply: bytes
) -> None:
    server = serve([reply])
    mine, reference = ours(server), theirs(server)
    assert mine.docmd("NOOP") == reference.docmd("NOOP")
    mine.close()
    reference.close()


def test_a_refused_ehlo_leaves_no_keywords(serve: Callable[..., MisbehavingServer]) -> None:
    client = ours(serve([b"502 5.5.1 EHLO not supported\r\n", b"250 relay.example\r\n"]))
    assert client.ehlo() == (502, b"5.5.1 EHLO not supported")
    assert client.esmtp_features == {} and not client.does_esmtp
    assert client.helo() == (250, b"relay.example")
    client.close()


def test_an_overlong_reply_line_is_an_error_and_closes(
    serve: Callable[..., MisbehavingServer],
) -> None:
    client = ours(serve([b"250 " + b"x" * 9000 + b"\r\n"]))
    with pytest.raises(SMTPResponseException) as raised:
        client.docmd("NOOP")
    assert (raised.value.smtp_code, raised.value.smtp_error) == (500, b"Line too long.")
    assert client.sock is None


def test_a_server_that_hangs_up_is_disconnected(serve: Callable[..., MisbehavingServer]) -> None:
    client = ours(serve([]))
    with pytest.raises(SMTPServerDisconnected):
        client.docmd("NOOP")
    assert client.sock is None
    with pytest.raises(SMTPServerDisconnected):
        client.docmd("NOOP")
    assert issubclass(SMTPServerDisconnected, SMTPException) and issubclass(SMTPException, OSError)


def test_quit_closes_and_forgets_the_keywords(serve: Callable[..., MisbehavingServer]) -> None:
    client = ours(serve([EHLO, b"221 bye\r\n"]))
    client.ehlo()
    assert client.quit() == (221, b"bye")
    assert client.sock is None and client.esmtp_features == {} and not client.does_esmtp


def test_line_breaks_never_reach_the_wire(serve: Callable[..., MisbehavingServer]) -> None:
    client = ours(serve([b"250 ok\r\n"]))
    with pytest.raises(ValueError, match="line break"):
        client.putcmd("MAIL", "FROM:<a@x>\r\nRCPT TO:<b@y>")
    assert client.docmd("NOOP") == (250, b"ok")  # nothing of the injected line was sent
    client.close()
