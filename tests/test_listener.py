"""`ssmtp-mailer listen` as a real process, driven by real SMTP clients (smtplib, swaks)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from smtpserver import SMTPTestServer

from ssmtp_mailer import passhash
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.spool import list_entries

PASSWORD = "correct horse battery staple"


def listener_config(path: Path, upstream_port: int, extra: str = "", *, sections: str = "") -> Path:
    """A listener that relays everything to `upstream_port`, trusting only 127.0.0.1."""
    path.write_text(
        f"""[global]
default_hostname = host.example
spool_dir = {path.parent / "spool"}
max_retries = 0
retry_backoff = 0
connection_timeout = 5
enable_rate_limiting = false
listen_user = root
allowed_networks = 127.0.0.1/32
{extra}
[domain:*]
smtp_server = 127.0.0.1
smtp_port = {upstream_port}
use_starttls = false
auth_method = NONE

[mapping:contact]
from_pattern = *@mailer.domain1.com
to_pattern = *@domain1.com
{sections}"""
    )
    return path


class Listener:
    """A `ssmtp-mailer listen` subprocess on a free port of 127.0.0.1."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ssmtp_mailer",
                "--config",
                str(config),
                "listen",
                "--address",
                "127.0.0.1:0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        line = self.wait_for("listening on")
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        self.port = int(match.group(1))

    def _read(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:
            for line in self.process.stderr:
                with self._seen:
                    self.lines.append(line.rstrip("\n"))
                    self._seen.notify_all()

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no {text!r} from the listener: {self.lines}")
                self._seen.wait(min(left, 0.2))

    def client(self, source: str = "127.0.0.1") -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, source_address=(source, 0), timeout=30)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(30)
        self.reader.join(10)
        return code


@pytest.fixture
def start_listener() -> Iterator[Callable[[Path], Listener]]:
    started: list[Listener] = []

    def start(config: Path) -> Listener:
        listener = Listener(config)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        if listener.process.poll() is None:
            listener.process.kill()
            listener.process.wait()
        listener.reader.join(10)


@pytest.fixture
def upstream(smtp_server: SMTPTestServer) -> SMTPTestServer:
    return smtp_server


@pytest.fixture
def listener(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> Listener:
    return start_listener(listener_config(tmp_path / "listen.conf", upstream.port))


def run_queue(conf: Path) -> str:
    """`queue run --all` in a process of its own, as the timer or cron runs it; its output."""
    run = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), "queue", "run", "--all"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def message(subject: str = "hello", sender: str = "app@host.example", body: str = "hi") -> str:
    return f"From: {sender}\r\nTo: someone\r\nSubject: {subject}\r\n\r\n{body}\r\n"


def test_a_local_client_relays_to_an_outside_recipient(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    with listener.client() as client:
        refused = client.sendmail("app@host.example", ["out@far.example"], message("outside"))
        assert refused == {}
    got = upstream.wait_for(1)[0]
    assert got.mail_from == "app@host.example"
    assert got.rcpt_tos == ["out@far.example"]
    msg = got.message()
    assert msg["Subject"] == "outside"
    assert "by host.example (ssmtp-mailer" in str(msg["Received"])
    assert "[127.0.0.1]" in str(msg["Received"])


def test_the_reply_to_the_dot_carries_the_relays_answer(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    with listener.client() as client:
        client.ehlo()
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        code, text = client.data(message())
    assert code == 250
    assert b"delivered" in text


def test_an_outside_client_is_no_open_relay_but_reaches_mapped_aliases(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    with listener.client("127.0.0.2") as client:
        client.ehlo()
        client.mail("someone@internet.example")
        code, text = client.rcpt("out@far.example")
        assert (code, text[:5]) == (554, b"5.7.1")
        assert b"Relay access denied" in text
        code, _ = client.rcpt("contact-sales@mailer.domain1.com")
        assert code == 250
        code, _ = client.data(message("inbound", "someone@internet.example"))
        assert code == 250
    got = upstream.wait_for(1)[0]
    assert got.rcpt_tos == ["contact-sales@domain1.com"]
    assert got.message()["Subject"] == "inbound"
    assert len(upstream.messages) == 1


def test_an_outsider_is_not_masqueraded_as_one_of_ours(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """`root` → alerts@domain1.com masquerades our own cron mail; from the internet it
    gave anyone our From, through our relay account, to our own people."""
    conf = listener_config(
        tmp_path / "l.conf",
        upstream.port,
        sections="\n[mapping:root]\nfrom_pattern = root\nto_pattern = alerts@domain1.com\n",
    )
    listener = start_listener(conf)
    spoof = "From: root@host.example\r\nSubject: reset your password\r\n\r\nclick\r\n"
    with listener.client("127.0.0.2") as client:
        assert client.sendmail("root@host.example", ["contact-it@mailer.domain1.com"], spoof) == {}
    with listener.client("127.0.0.1") as client:  # a local client: masqueraded as before
        assert client.sendmail("root@host.example", ["contact-it@mailer.domain1.com"], spoof) == {}
    outside, local = upstream.wait_for(2)
    assert outside.message()["From"] == "root@host.example"
    assert outside.mail_from == "root@host.example"  # the route has no relay_account
    assert local.message()["From"] == "alerts@domain1.com"
    assert local.mail_from == "alerts@domain1.com"


def test_an_outsiders_recipient_is_judged_at_rcpt_as_at_data(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """RCPT planned with the outsider's sender masqueraded (as alerts@, who may write to
    ops@ only) and refused the forwarding alias that DATA, not masquerading, delivers."""
    sections = (
        "\n[mapping:root]\nfrom_pattern = root\nto_pattern = alerts@domain1.com\n"
        "\n[user:alerts@domain1.com]\nallowed_recipients = ops@domain1.com\n"
    )
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, sections=sections)
    )
    with listener.client("127.0.0.2") as client:
        client.ehlo()
        client.mail("root@host.example")
        assert client.rcpt("contact-it@mailer.domain1.com")[0] == 250
        assert client.data(message("inbound", "root@host.example"))[0] == 250
    with listener.client("127.0.0.1") as client:  # ours, masqueraded: alerts@'s policy
        client.ehlo()
        client.mail("root@host.example")
        assert client.rcpt("contact-it@mailer.domain1.com")[0] == 550
    [got] = upstream.wait_for(1)
    assert got.rcpt_tos == ["contact-it@domain1.com"]


@pytest.mark.parametrize(
    "rcpt",
    [
        "victim%elsewhere.example@mailer.domain1.com",
        "elsewhere.example!victim@mailer.domain1.com",
        '"victim@elsewhere.example"@mailer.domain1.com',
    ],
    ids=["percent-hack", "bang-path", "quoted-at"],
)
def test_an_outsider_cannot_route_through_a_mapped_domain(
    rcpt: str, listener: Listener, upstream: SMTPTestServer
) -> None:
    """The mapping forwards *@mailer.domain1.com: a local part that names another host
    would have the next hop relay for the outsider, with our relay's credentials."""
    with listener.client("127.0.0.2") as client:
        client.ehlo()
        client.mail("someone@internet.example")
        code, text = client.rcpt(rcpt)
    assert code == 554 and b"Relay access denied" in text
    assert upstream.messages == []


def test_an_ehlo_name_cannot_put_header_fields_above_our_received(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    """`EHLO x<CR>Authentication-Results: ...` from outside: the bare CRs became line ends
    in our Received: field, and forged fields stood above it as if we had added them."""
    with socket.create_connection(
        ("127.0.0.1", listener.port), source_address=("127.0.0.2", 0)
    ) as raw:
        replies = raw.makefile("rb")
        assert replies.readline().startswith(b"220")
        raw.sendall(b"EHLO x\rAuthentication-Results: mx.example; dkim=pass\r\n")
        while not replies.readline().startswith(b"250 "):
            pass
        for line in (
            b"MAIL FROM:<someone@internet.example>",
            b"RCPT TO:<contact-sales@mailer.domain1.com>",
            b"DATA",
        ):
            raw.sendall(line + b"\r\n")
            assert replies.readline()[:1] in (b"2", b"3")
        raw.sendall(message("forged?", "someone@internet.example").encode() + b".\r\n")
        assert replies.readline().startswith(b"250")
    got = upstream.wait_for(1)[0].message()
    assert got["Authentication-Results"] is None
    assert str(got["Received"]).startswith("from unknown ([127.0.0.2])")


def test_an_address_that_is_no_utf_8_is_refused_not_answered_with_an_internal_error(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    with socket.create_connection(("127.0.0.1", listener.port)) as raw:
        replies = raw.makefile("rb")
        assert replies.readline().startswith(b"220")
        raw.sendall(b"EHLO app.example\r\n")
        while not replies.readline().startswith(b"250 "):
            pass
        raw.sendall(b"MAIL FROM:<\xff\xfe@evil.example>\r\n")
        reply = replies.readline()
        assert reply[:1] == b"5", reply  # the client's mistake, not ours to retry
        raw.sendall(b"MAIL FROM:<app@host.example>\r\nRCPT TO:<\xe9@far.example>\r\n")
        assert replies.readline().startswith(b"250")
        reply = replies.readline()
        assert reply[:1] == b"5", reply


def test_a_transaction_takes_1000_recipients_and_says_452_to_the_next(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    """20,000 RCPTs from outside went into one transaction through our relay account."""
    with listener.client("127.0.0.2") as client:
        client.ehlo()
        client.mail("someone@internet.example")
        for n in range(1000):
            assert client.rcpt(f"contact-{n}@mailer.domain1.com")[0] == 250
        code, text = client.rcpt("contact-1000@mailer.domain1.com")
        assert (code, text) == (452, b"4.5.3 Too many recipients")
        assert client.data(message("many", "someone@internet.example"))[0] == 250
    assert len(upstream.wait_for(1)[0].rcpt_tos) == 1000


def test_a_user_that_may_receive_is_reachable_from_outside(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    conf = listener_config(
        tmp_path / "l.conf",
        upstream.port,
        sections="\n[user:help@host.example]\ncan_send_to = true\n"
        "\n[user:closed@host.example]\ncan_send_to = false\n"
        # What nagios may send as (README: local submission), not a way to every domain.
        "\n[user:nagios@*]\n",
    )
    listener = start_listener(conf)
    with listener.client("127.0.0.2") as client:
        client.ehlo()
        client.mail("x@internet.example")
        assert client.rcpt("help@host.example")[0] == 250
        assert client.rcpt("closed@host.example")[0] == 554
        code, text = client.rcpt("nagios@victim.example")
        assert (code, text) == (554, b"5.7.1 <nagios@victim.example>: Relay access denied")
        assert client.data(message())[0] == 250
    assert upstream.wait_for(1)[0].rcpt_tos == ["help@host.example"]
    with listener.client() as client:  # from allowed_networks, nagios@ anywhere is fine
        assert client.sendmail("nagios@host.example", ["nagios@far.example"], message()) == {}
    assert upstream.wait_for(2)[1].rcpt_tos == ["nagios@far.example"]


def test_a_fault_of_our_set_up_is_queued_for_the_fix_not_refused_and_kept_twice(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """The route asks for AUTH the relay does not offer (as with a password out of the
    listener's reach): a 451 put a copy in failed/ at every retry of the client; queued,
    it waits for the fix."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    conf.write_text(
        conf.read_text().replace("auth_method = NONE", "auth_method = PLAIN\nusername = relay")
    )
    listener = start_listener(conf)
    assert any(  # said at the start, not found at the first message
        line.startswith("ssmtp-mailer: listen: warning: [domain:*]: no password for relay")
        and line.endswith("run: ssmtp-mailer password set '*'")
        for line in listener.lines
    ), listener.lines
    with listener.client() as client:
        client.ehlo()
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        code, text = client.data(message("no password"))
    assert code == 250 and b"queued as" in text, text
    config = load_config(str(conf))
    [entry] = list_entries(config)
    assert entry.attempts[-1].reply.endswith(
        "the relay offers no AUTH but the route has a username"
    )
    assert list_entries(config, failed=True) == []
    conf.write_text(
        conf.read_text().replace("auth_method = PLAIN\nusername = relay", "auth_method = NONE")
    )
    run_queue(conf)
    assert [m.rcpt_tos for m in upstream.wait_for(1)] == [["out@far.example"]]


def test_a_recipient_refused_after_the_250_gets_its_sender_a_failure_notice(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    """The client heard 250 for the message; the relay took one recipient and refused the
    other. Nobody told the sender: the refused one sat in failed/ (RFC 5321 §6.1)."""
    upstream.fault = "550-rcpt:gone@far.example"
    with listener.client() as client:
        refused = client.sendmail(
            "app@host.example", ["out@far.example", "gone@far.example"], message("two")
        )
        assert refused == {}
    delivered, notice = upstream.wait_for(2)
    assert delivered.rcpt_tos == ["out@far.example"]
    assert (notice.mail_from, notice.rcpt_tos) == ("<>", ["app@host.example"])
    assert b"Final-Recipient: rfc822; gone@far.example" in notice.data
    assert b"Action: failed" in notice.data


def test_the_failure_notice_does_not_hold_the_250_for_the_rate_limit(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """One message a minute allowed: the notice for the refused recipient waited its
    minute before the client heard 250 (and a client that gives up sends it again)."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    conf.write_text(
        conf.read_text().replace(
            "enable_rate_limiting = false",
            "enable_rate_limiting = true\nrate_limit_per_minute = 1\nrate_limit_wait = 1",
        )
    )
    listener = start_listener(conf)
    upstream.fault = "550-rcpt:gone@far.example"
    started = time.monotonic()
    with listener.client() as client:
        client.sendmail("app@host.example", ["out@far.example", "gone@far.example"], message())
    assert time.monotonic() - started < 10
    assert [m.rcpt_tos for m in upstream.wait_for(1)] == [["out@far.example"]]
    [notice] = list_entries(load_config(str(conf)))  # waiting for its turn, in the queue
    assert (notice.sender, notice.recipients) == ("", ("app@host.example",))


def test_with_fail_a_half_delivered_message_queues_the_rest_instead_of_451(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """on_temporary_failure = fail: one recipient took it, the other said 451. A 451 to
    the client brought the whole message back, and the first recipient a second copy."""
    conf = listener_config(tmp_path / "l.conf", upstream.port, "on_temporary_failure = fail")
    listener = start_listener(conf)
    upstream.fault = "451-rcpt:busy@far.example"
    with listener.client() as client:
        assert (
            client.sendmail("app@host.example", ["out@far.example", "busy@far.example"], message())
            == {}
        )
    assert [m.rcpt_tos for m in upstream.wait_for(1)] == [["out@far.example"]]
    [entry] = list_entries(load_config(str(conf)))
    assert entry.recipients == ("busy@far.example",)
    # Nothing went at all: the client keeps it, as on_temporary_failure = fail says.
    with listener.client() as client:
        client.ehlo()
        client.mail("app@host.example")
        client.rcpt("busy@far.example")
        assert client.data(message())[0] == 451


def test_with_fail_a_route_that_fails_before_another_delivers_is_queued(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """on_temporary_failure = fail, and a message over two routes: the first one's relay
    is down, the second takes it. A 451 would bring the message back, and the second
    route's recipient a second copy: the first route's share is queued instead."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    sections = (
        f"\n[domain:down.example]\nsmtp_server = 127.0.0.1\nsmtp_port = {dead_port}\n"
        "use_starttls = false\nauth_method = NONE\n\n"
        "[mapping:slow]\nfrom_pattern = *@slow.example\nto_pattern = *@slow.example\n"
        "domain = down.example\n"
    )
    conf = listener_config(
        tmp_path / "l.conf", upstream.port, "on_temporary_failure = fail", sections=sections
    )
    listener = start_listener(conf)
    with listener.client() as client:
        refused = client.sendmail(
            "app@host.example", ["a@slow.example", "out@far.example"], message("two routes")
        )
    assert refused == {}
    assert [m.rcpt_tos for m in upstream.wait_for(1)] == [["out@far.example"]]
    [entry] = list_entries(load_config(str(conf)))
    assert entry.recipients == ("a@slow.example",)


def test_upstream_down_queues_with_250_then_delivers_once(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    start_listener: Callable[[Path], Listener],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    conf = listener_config(tmp_path / "l.conf", dead_port)
    listener = start_listener(conf)
    with listener.client() as client:
        client.ehlo()
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        code, text = client.data(message("later"))
    assert code == 250
    assert b"queued as" in text
    config = load_config(str(conf))
    assert [e.recipients for e in list_entries(config)] == [("out@far.example",)]

    upstream = smtp_server_factory()
    conf.write_text(
        conf.read_text().replace(f"smtp_port = {dead_port}", f"smtp_port = {upstream.port}")
    )
    for _ in range(2):  # a second run must not send it again
        run_queue(conf)
    assert len(upstream.wait_for(1)) == 1
    time.sleep(0.2)
    assert len(upstream.messages) == 1
    assert upstream.messages[0].message()["Subject"] == "later"
    assert list_entries(load_config(str(conf))) == []


def test_size_is_advertised_and_enforced(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, "max_message_size = 4000")
    )
    with listener.client() as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "4000"
        code, _ = client.mail("app@host.example", ["SIZE=5000"])
        assert code == 552
        client.rset()
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        code, _ = client.data(message(body="x" * 70 + "\r\n") * 80)
        assert code == 552
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        code, _ = client.data(message(body="y" * 70 + "\r\n") * 5000)  # many reads
        assert code == 552
        # The session goes on: a message within the limit still goes through.
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        assert client.data(message("small"))[0] == 250
        # Exactly the SIZE advertised: what we add (Received:, Date:, Message-ID:) is ours.
        exact = message("exact", body="z" * 70)
        while len(exact) < 4000 - 72:
            exact += "z" * 70 + "\r\n"
        exact += "z" * (4000 - len(exact) - 2) + "\r\n"
        assert len(exact) == 4000
        assert client.sendmail("app@host.example", ["out@far.example"], exact) == {}
        client.mail("app@host.example")  # one octet more, without SIZE= to warn us
        client.rcpt("out@far.example")
        assert client.data("z" + exact)[0] == 552
    got = upstream.wait_for(2)
    assert [m.message()["Subject"] for m in got] == ["small", "exact"]
    assert len(got[1].data) > 4000


def _replies(sock: socket.socket, count: int) -> list[bytes]:
    """The next `count` complete replies (multi-line ones joined) from a raw SMTP socket."""
    got = b""
    while True:
        lines = got.split(b"\r\n")[:-1]
        finals = [line for line in lines if line[3:4] == b" "]
        if len(finals) >= count:
            return finals[:count]
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk


def test_data_ends_at_the_lone_dot_however_it_arrives(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    """The final dot split over three TCP segments, dot-stuffed lines, a 3 MB message in
    many blocks, and commands pipelined behind the dot in the same segment."""
    big_body = "".join(f"line {i:07d} of a long report\r\n" for i in range(100_000))
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        assert _replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO x\r\n")
        assert _replies(sock, 1)[0].startswith(b"250")
        envelope = b"MAIL FROM:<app@host.example>\r\nRCPT TO:<out@far.example>\r\nDATA\r\n"
        sock.sendall(envelope)
        assert [r[:3] for r in _replies(sock, 3)] == [b"250", b"250", b"354"]
        for piece in (b"Subject: split\r\n\r\n..dotted\r\n..\r\nlast\r", b"\n.", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.1)
        assert _replies(sock, 1)[0].startswith(b"250 2.0.0 OK")
        sock.sendall(envelope)
        assert [r[:3] for r in _replies(sock, 3)] == [b"250", b"250", b"354"]
        sock.sendall(f"Subject: big\r\n\r\n{big_body}.\r\nRSET\r\nNOOP\r\n".encode())
        assert [r[:3] for r in _replies(sock, 3)] == [b"250", b"250", b"250"]
    split, big = upstream.wait_for(2)
    assert split.data.endswith(b"\r\n\r\n.dotted\r\n.\r\nlast\r\n")
    assert big.data.endswith(b"\r\n\r\n" + big_body.encode())


def test_a_client_that_closes_its_side_after_the_dot_still_hears_250(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """`printf ... | nc`: the message, the dot and the end of input in one go. The reply
    is owed (a client that hears nothing sends the message again), then the session ends."""
    log = tmp_path / "mail.log"
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, f"log_file = {log}")
    )
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        assert _replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO x\r\n")
        assert _replies(sock, 1)[0].startswith(b"250")
        sock.sendall(b"MAIL FROM:<app@host.example>\r\nRCPT TO:<out@far.example>\r\nDATA\r\n")
        assert [r[:3] for r in _replies(sock, 3)] == [b"250", b"250", b"354"]
        sock.sendall(b"Subject: half-closed\r\n\r\nbody\r\n.\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert _replies(sock, 1)[0].startswith(b"250 2.0.0 OK")
        assert sock.recv(100) == b""  # and then the listener hangs up
    assert [m.data.count(b"half-closed") for m in upstream.wait_for(1)] == [1]
    # Cut off inside the message: nothing is delivered, and nothing is promised.
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        assert _replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO x\r\nMAIL FROM:<app@host.example>\r\nRCPT TO:<out@far.example>\r\n")
        assert [r[:3] for r in _replies(sock, 3)] == [b"250", b"250", b"250"]
        sock.sendall(b"DATA\r\n")
        assert _replies(sock, 1)[0].startswith(b"354")
        sock.sendall(b"Subject: cut\r\n\r\nno dot")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    time.sleep(0.5)
    assert len(upstream.messages) == 1
    assert listener.stop() == 0
    assert not [line for line in listener.lines if "rror" in line or "Traceback" in line]
    assert not [line for line in log.read_text().splitlines() if "error" in line.lower()]


def test_a_client_gone_in_the_middle_of_data_leaves_no_error_behind(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """Cut off mid-message by an end of input, then by a reset: nothing is sent, and once
    listen_timeout has passed the log shows no error from a timer left running."""
    log = tmp_path / "mail.log"
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, f"listen_timeout = 1\nlog_file = {log}")
    )
    for reset in (False, True):
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            assert _replies(sock, 1)[0].startswith(b"220")
            sock.sendall(b"EHLO x\r\nMAIL FROM:<app@host.example>\r\nRCPT TO:<out@far.example>\r\n")
            assert len(_replies(sock, 3)) == 3
            sock.sendall(b"DATA\r\n")
            assert _replies(sock, 1)[0].startswith(b"354")
            sock.sendall(b"Subject: cut\r\n\r\nhalf a")
            time.sleep(0.2)
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(100) == b""
    time.sleep(2)  # past listen_timeout
    with listener.client() as client:  # and it serves on
        assert client.noop()[0] == 250
    assert listener.stop() == 0
    assert upstream.messages == []
    logged = log.read_text().splitlines() if log.exists() else []
    assert [line for line in logged if "error" in line.lower()] == []


def test_commands_and_bad_order(listener: Listener, upstream: SMTPTestServer) -> None:
    with listener.client() as client:
        assert client.docmd("MAIL FROM:<a@host.example>")[0] == 503  # before HELO
        assert client.helo("client.example")[0] == 250
        code, _ = client.ehlo("client.example")
        assert code == 250
        for keyword in ("pipelining", "size", "8bitmime", "smtputf8"):
            assert keyword in client.esmtp_features
        assert "auth" not in client.esmtp_features  # not before STARTTLS, and no TLS here
        assert client.noop()[0] == 250
        code, text = client.docmd("HELP")
        assert code == 214 and {"MAIL", "RCPT", "DATA"} <= set(text.decode().split())
        # Only what EHLO offers: no AUTH before STARTTLS (it listed AUTH all the same).
        assert "AUTH" not in text.decode().split() and "STARTTLS" not in text.decode().split()
        assert client.docmd("HELP MAIL")[1].startswith(b"2.0.0 Syntax: MAIL FROM:<address>")
        assert client.docmd("RCPT TO:<x@far.example>")[0] == 503  # before MAIL
        assert client.docmd("DATA")[0] == 503
        assert client.verify("someone@host.example")[0] == 252
        assert client.docmd("BOGUS")[0] == 500
        assert client.mail("a@host.example")[0] == 250
        assert client.docmd("MAIL FROM:<b@host.example>")[0] == 503  # nested
        assert client.rset()[0] == 250
        assert client.docmd("DATA")[0] == 503  # RSET forgot the sender
        assert client.quit()[0] == 221
    assert upstream.messages == []


def test_swaks_with_pipelining(listener: Listener, upstream: SMTPTestServer) -> None:
    if not shutil.which("swaks"):
        pytest.skip("swaks is not installed")
    run = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{listener.port}",
            "--pipeline",
            "--from",
            "app@host.example",
            "--to",
            "a@far.example,b@far.example",
            "--header",
            "Subject: swaks",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = upstream.wait_for(1)[0]
    assert sorted(got.rcpt_tos) == ["a@far.example", "b@far.example"]
    assert got.message()["Subject"] == "swaks"


def test_connections_beyond_max_connections_get_421(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, "max_connections = 2")
    )
    first, second = listener.client(), listener.client()
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            listener.client()
        assert refused.value.smtp_code == 421
    finally:
        first.quit()
        second.quit()
    time.sleep(0.2)
    with listener.client() as again:  # the slots are free again
        assert again.noop()[0] == 250


def test_outsiders_cannot_take_every_session_from_local_clients(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """Idle connections from the internet held all of max_connections, and every local
    application heard 421: outsiders hold at most half of the sessions between them."""
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, "max_connections = 4")
    )
    outside = [listener.client("127.0.0.2"), listener.client("127.0.0.3")]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            listener.client("127.0.0.4")
        assert refused.value.smtp_code == 421
        local = [listener.client(), listener.client()]
        for client in local:
            assert client.noop()[0] == 250
            client.quit()
    finally:
        for client in outside:
            client.quit()


def test_ten_clients_thirty_messages_each_delivered_exactly_once(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    failures: list[str] = []

    def client_run(n: int) -> None:
        try:
            with listener.client() as client:
                for i in range(30):
                    client.sendmail("app@host.example", ["out@far.example"], message(f"c{n}-m{i}"))
        except Exception as exc:
            failures.append(f"{n}: {exc!r}")

    threads = [threading.Thread(target=client_run, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    got = upstream.wait_for(300, timeout=30)
    subjects = sorted(str(m.message()["Subject"]) for m in got)
    assert subjects == sorted(f"c{n}-m{i}" for n in range(10) for i in range(30))


def test_sigterm_during_a_burst_keeps_every_accepted_message(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    listener = start_listener(conf)
    accepted: list[str] = []
    lock = threading.Lock()
    started = threading.Event()

    def burst(n: int) -> None:
        try:
            with listener.client() as client:
                for i in range(1000):
                    subject = f"b{n}-{i}"
                    client.sendmail("app@host.example", ["out@far.example"], message(subject))
                    with lock:
                        accepted.append(subject)
                    started.set()
        except (smtplib.SMTPException, OSError):
            pass  # the listener went away: what it did not answer 250 is the client's

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    assert started.wait(30)
    time.sleep(0.3)
    assert listener.stop(signal.SIGTERM) == 0
    for thread in threads:
        thread.join(60)
    listener.wait_for("stopped")
    assert accepted
    time.sleep(0.3)
    delivered = {str(m.message()["Subject"]) for m in upstream.messages}
    queued = {e.id for e in list_entries(load_config(str(conf)))}
    assert queued == set()
    assert set(accepted) <= delivered
    assert len(upstream.messages) == len(delivered)  # none twice


def test_sighup_with_a_broken_config_keeps_serving(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    log = tmp_path / "mail.log"
    conf = listener_config(tmp_path / "l.conf", upstream.port, f"log_file = {log}")
    listener = start_listener(conf)
    good = conf.read_text()
    conf.write_text(good + "\n[domain:broken]\nsmtp_port = many\n")
    listener.process.send_signal(signal.SIGHUP)
    listener.wait_for("keeping the old one")
    assert "smtp_port: expected a port number" in listener.wait_for("smtp_port")
    # The log says why, not only the journal.
    refused = [line for line in log.read_text().splitlines() if "reload refused" in line]
    assert any("smtp_port: expected a port number" in line for line in refused), listener.lines
    with listener.client() as client:
        assert client.sendmail("app@host.example", ["out@far.example"], message("still")) == {}
    assert upstream.wait_for(1)[0].message()["Subject"] == "still"
    # A good configuration is taken: now 127.0.0.2 may relay too.
    conf.write_text(
        good.replace("allowed_networks = 127.0.0.1/32", "allowed_networks = 127.0.0.0/8")
    )
    listener.process.send_signal(signal.SIGHUP)
    listener.wait_for("reloaded")
    with listener.client("127.0.0.2") as client:
        assert client.sendmail("app@host.example", ["out@far.example"], message("wider")) == {}
    assert listener.stop() == 0
    assert f"listen: reloaded {conf}" in log.read_text()


# -- listen_processes ------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_several_processes_serve_one_address_and_share_max_connections(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    conf = listener_config(
        tmp_path / "l.conf", upstream.port, "listen_processes = 2\nmax_connections = 3\n"
    )
    listener = start_listener(conf)
    assert "2 processes" in listener.wait_for("listening on")
    assert len(_children(listener.process.pid)) == 2
    sessions = [listener.client() for _ in range(3)]
    for session in sessions:
        session.ehlo()
    # The fourth session is over max_connections, whichever process the kernel gave it.
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as extra:
        assert extra.recv(1024).startswith(b"421 4.7.0")
    for n, session in enumerate(sessions):
        for i in range(4):
            assert (
                session.sendmail("app@host.example", ["out@far.example"], message(f"{n}.{i}")) == {}
            )
        session.quit()
    subjects = sorted(str(m.message()["Subject"]) for m in upstream.wait_for(12))
    assert subjects == sorted(f"{n}.{i}" for n in range(3) for i in range(4))
    # Closed sessions are counted out: three new ones are served again.
    for _ in range(3):
        with listener.client() as again:
            assert again.noop()[0] == 250
    children = _children(listener.process.pid)
    assert listener.stop() == 0
    assert listener.lines.count("ssmtp-mailer: listen: stopped") == 2
    assert not any(Path(f"/proc/{child}").exists() for child in children)
    time.sleep(0.2)
    assert len(upstream.messages) == 12  # none twice


def test_sighup_reaches_every_process(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    conf = listener_config(tmp_path / "l.conf", upstream.port, "listen_processes = 2\n")
    listener = start_listener(conf)
    conf.write_text(
        conf.read_text().replace(
            "allowed_networks = 127.0.0.1/32", "allowed_networks = 127.0.0.0/8"
        )
    )
    listener.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while sum("SIGHUP: reloaded" in line for line in listener.lines) < 2:
        assert time.monotonic() < deadline, listener.lines
        time.sleep(0.1)
    # Whichever process takes them, clients from 127.0.0.2 may relay now.
    for n in range(8):
        with listener.client("127.0.0.2") as client:
            assert client.sendmail("app@host.example", ["out@far.example"], message(f"w{n}")) == {}
    assert len(upstream.wait_for(8)) == 8
    assert listener.stop() == 0


def test_a_process_that_dies_stops_the_listener(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    conf = listener_config(tmp_path / "l.conf", upstream.port, "listen_processes = 2\n")
    listener = start_listener(conf)
    first, second = _children(listener.process.pid)
    os.kill(second, signal.SIGKILL)
    assert listener.process.wait(30) == 70  # EX_SOFTWARE: systemd's Restart= takes over
    listener.reader.join(10)
    assert any(
        f"(pid {second}) ended with signal 9; stopping the others" in line
        for line in listener.lines
    )
    assert not Path(f"/proc/{first}").exists()


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever adopted it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_serving_processes_end_with_a_killed_supervisor(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """SIGKILL to the listener itself (an OOM kill, a `kill -9` outside systemd): its
    serving processes drain and end instead of serving the port on as orphans."""
    conf = listener_config(tmp_path / "l.conf", upstream.port, "listen_processes = 2\n")
    listener = start_listener(conf)
    children = _children(listener.process.pid)
    listener.process.kill()
    listener.process.wait(30)
    deadline = time.monotonic() + 15
    while any(_running(child) for child in children):
        assert time.monotonic() < deadline, [c for c in children if _running(c)]
        time.sleep(0.1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=5).close()


def test_a_process_killed_while_counting_sessions_blocks_no_other() -> None:
    """The serving processes count sessions under one lock; a process that dies holding it
    (killed, out of memory) must not leave the others stuck at their next connection."""
    from ssmtp_mailer.listener import SessionCount

    count = SessionCount(shared=True)
    assert count.enter(2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed at once
        try:
            with count._locked():
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    answers: list[bool] = []
    counting = threading.Thread(
        target=lambda: answers.extend([count.enter(2), count.enter(2)]), daemon=True
    )
    counting.start()
    counting.join(5)
    assert answers == [True, False]  # the second session of two, then over the limit
    count.leave()
    assert count.enter(2)


def test_replies_written_one_after_another_are_not_held_back() -> None:
    """The connections the listener accepts have Nagle's algorithm off: with it on, a reply
    written right after another (EHLO's lines, the replies to pipelined MAIL, RCPT and
    DATA) waits for the client's delayed ACK, some 40 ms a message for every pipelining
    client (Postfix's smtp client, swaks --pipeline)."""
    import asyncio

    from ssmtp_mailer.config.model import HostPort
    from ssmtp_mailer.listener import bind

    async def accepted_nodelay() -> int:
        [[sock]] = bind([HostPort("127.0.0.1", 0)])
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted = transport.get_extra_info("socket")
                seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            got = await asyncio.wait_for(seen, 10)
            writer.close()
            return got

    assert asyncio.run(accepted_nodelay()) != 0


def test_listen_processes_must_be_a_positive_number(
    tmp_path: Path, upstream: SMTPTestServer
) -> None:
    conf = listener_config(tmp_path / "l.conf", upstream.port, "listen_processes = 0\n")
    done = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), "listen"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 78
    assert "listen_processes" in done.stderr.splitlines()[0]
    assert "Traceback" not in done.stderr


# -- STARTTLS and AUTH ---------------------------------------------------------------


@pytest.fixture
def tls_listener(
    tmp_path: Path,
    upstream: SMTPTestServer,
    tls_ca: trustme.CA,
    start_listener: Callable[[Path], Listener],
) -> Listener:
    cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "listen.pem"))
    conf = listener_config(
        tmp_path / "l.conf",
        upstream.port,
        f"listen_tls_cert_file = {tmp_path / 'listen.pem'}\n"
        f"listen_tls_key_file = {tmp_path / 'listen.pem'}\n"
        f"log_file = {tmp_path / 'mail.log'}\n",
        sections=f"\n[user:app@partner.example]\nsmtp_password_hash = {passhash.hash_password(PASSWORD)}\n",
    )
    return start_listener(conf)


def tls_client(listener: Listener, tls_ca: trustme.CA, source: str = "127.0.0.2") -> smtplib.SMTP:
    client = listener.client(source)
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    client.starttls(context=context)
    return client


def test_auth_before_starttls_is_refused(tls_listener: Listener) -> None:
    with tls_listener.client("127.0.0.2") as client:
        client.ehlo()
        assert "starttls" in client.esmtp_features
        assert "auth" not in client.esmtp_features
        code, text = client.docmd("AUTH", "PLAIN AGFwcEBwYXJ0bmVyLmV4YW1wbGUAeA==")
        assert code == 538
        assert b"Encryption required" in text
        assert "AUTH" not in client.docmd("HELP")[1].decode().split()


def test_help_names_auth_once_starttls_offers_it(
    tls_listener: Listener, tls_ca: trustme.CA
) -> None:
    with contextlib.closing(tls_client(tls_listener, tls_ca, source="127.0.0.2")) as client:
        client.ehlo()
        assert "auth" in client.esmtp_features
        commands = client.docmd("HELP")[1].decode().split()
        assert "AUTH" in commands and "STARTTLS" not in commands


def test_a_broken_tls_handshake_is_one_line_in_the_log_and_none_on_stderr(
    tmp_path: Path, tls_listener: Listener, tls_ca: trustme.CA
) -> None:
    """STARTTLS, then plain text: aiosmtpd logs a traceback, which must not reach the
    journal; the log file gets one line, and the listener serves on."""
    with socket.create_connection(("127.0.0.1", tls_listener.port), timeout=10) as sock:
        assert _replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO x\r\nSTARTTLS\r\n")
        assert [r[:3] for r in _replies(sock, 2)] == [b"250", b"220"]
        sock.sendall(b"MAIL FROM:<not@tls.example>\r\n" * 20)
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass
    with contextlib.closing(tls_client(tls_listener, tls_ca, source="127.0.0.1")) as client:
        assert client.noop()[0] == 250
    assert tls_listener.stop() == 0
    ours = ("listen: listening on", "listen: stopping", "listen: stopped")
    assert [line for line in tls_listener.lines if not any(o in line for o in ours)] == []
    logged = (tmp_path / "mail.log").read_text().splitlines()
    assert logged and all("Traceback" not in line for line in logged)
    assert any("listen:" in line and "SSL" in line for line in logged), logged


def test_auth_plain_for_another_user_is_refused(tls_listener: Listener, tls_ca: trustme.CA) -> None:
    """AUTH PLAIN with an authzid (act as boss@) and app@'s own password: RFC 4616 lets
    the server decide, and it let app@ in as app@, saying nothing of the request."""
    import base64

    blob = base64.b64encode(f"boss@partner.example\0app@partner.example\0{PASSWORD}".encode())
    with tls_client(tls_listener, tls_ca) as client:
        client.ehlo()
        code, text = client.docmd("AUTH", f"PLAIN {blob.decode()}")
        assert (code, text) == (535, b"5.7.8 Cannot act for another user")
        same = base64.b64encode(f"app@partner.example\0app@partner.example\0{PASSWORD}".encode())
        assert client.docmd("AUTH", f"PLAIN {same.decode()}")[0] == 235


def test_wrong_password_gets_535_after_a_delay(tls_listener: Listener, tls_ca: trustme.CA) -> None:
    import base64

    with tls_client(tls_listener, tls_ca) as client:
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"]
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("app@partner.example", "wrong")  # PLAIN, then LOGIN: two guesses
        assert failed.value.smtp_code == 535
        assert time.monotonic() - started >= 1.5
        # The third wrong guess of the session, and the next try ends it.
        guess = base64.b64encode(b"\0app@partner.example\0wrong").decode()
        assert client.docmd("AUTH", f"PLAIN {guess}")[0] == 535
        right = base64.b64encode(f"\0app@partner.example\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {right}")
        assert (code, text) == (421, b"4.7.0 Too many failed authentications, closing")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_an_authenticated_client_relays_as_its_user(
    tls_listener: Listener, tls_ca: trustme.CA, upstream: SMTPTestServer, mechanism: str
) -> None:
    with tls_client(tls_listener, tls_ca) as client:
        client.ehlo()
        client.user, client.password = "app@partner.example", PASSWORD
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        # Another sender is not theirs to use.
        assert client.docmd("MAIL FROM:<ceo@partner.example>")[0] == 553
        refused = client.sendmail("app@partner.example", ["out@far.example"], message("authed"))
        assert refused == {}
    got = upstream.wait_for(1)[0]
    assert got.mail_from == "app@partner.example"
    assert "with ESMTPSA" in str(got.message()["Received"])


def test_auth_inside_a_transaction_is_refused(
    tls_listener: Listener, tls_ca: trustme.CA, upstream: SMTPTestServer
) -> None:
    """MAIL as someone else, then AUTH: the sender was checked at MAIL, when the client
    was an outsider, so a login then let it relay as anyone (RFC 4954 §4 says 503)."""
    import base64

    right = base64.b64encode(f"\0app@partner.example\0{PASSWORD}".encode()).decode()
    with tls_client(tls_listener, tls_ca) as client:
        client.ehlo()
        assert client.docmd("MAIL FROM:<ceo@bank.example>")[0] == 250
        code, text = client.docmd("AUTH", f"PLAIN {right}")
        assert (code, text) == (503, b"5.5.1 AUTH not permitted during a mail transaction")
        assert client.docmd("RCPT TO:<victim@far.example>")[0] == 554
        assert client.docmd("RSET")[0] == 250
        assert client.docmd("AUTH", f"PLAIN {right}")[0] == 235
    assert upstream.messages == []


def test_a_second_starttls_is_refused_and_the_session_goes_on(
    tls_listener: Listener, tls_ca: trustme.CA
) -> None:
    with tls_client(tls_listener, tls_ca) as client:
        client.ehlo()
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
        assert client.noop()[0] == 250


def test_an_empty_initial_response_is_one_not_bad_base64(
    tls_listener: Listener, tls_ca: trustme.CA
) -> None:
    """`=` is how a client sends an initial response of no octets (RFC 4954 §4)."""
    with tls_client(tls_listener, tls_ca) as client:
        client.ehlo()
        code, text = client.docmd("AUTH", "PLAIN =")
        assert (code, text) == (501, b"5.5.2 Cannot split the PLAIN response")
        assert client.docmd("AUTH", "PLAIN !!") == (501, b"5.5.2 Cannot decode base64")
        # LOGIN's `=` is an empty user name: then the password is asked for as ever.
        assert client.docmd("AUTH", "LOGIN =")[0] == 334
        assert client.docmd("*")[0] == 501


def test_an_outsider_cannot_send_as_a_user_who_logs_in(
    tls_listener: Listener, upstream: SMTPTestServer
) -> None:
    """app@partner.example sends by AUTH; a client that did not log in claiming it was let
    through to every address that accepts mail from anywhere."""
    with tls_listener.client("127.0.0.2") as client:
        client.ehlo()
        code, text = client.docmd("MAIL FROM:<app@partner.example>")
        assert (code, text) == (
            553,
            b"5.7.1 <app@partner.example>: Sender address rejected: not logged in",
        )
        # Nor in another spelling of the same address (the relay takes them for it).
        for spelling in ('"app"@partner.example', "app@partner.example.", "APP@Partner.Example"):
            assert client.docmd(f"MAIL FROM:<{spelling}>")[0] == 553, spelling
        assert client.docmd("MAIL FROM:<someone@internet.example>")[0] == 250
    with tls_listener.client("127.0.0.1") as client:  # allowed_networks: as before
        client.ehlo()
        assert client.docmd("MAIL FROM:<app@partner.example>")[0] == 250


def test_the_local_socket_offers_no_starttls(tmp_path: Path, tls_listener: Listener) -> None:
    """TLS over submit.sock protects nothing, and `sendmail -bs` (whose session that is
    for a user who cannot read the configuration) has none."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(tmp_path / "spool" / "submit.sock"))
        assert _replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO local\r\n")
        ehlo = sock.recv(4096)
        while not re.search(rb"(^|\n)250 ", ehlo):
            ehlo += sock.recv(4096)
        assert b"STARTTLS" not in ehlo and b"PIPELINING" in ehlo
        sock.sendall(b"STARTTLS\r\n")
        assert _replies(sock, 1) == [b"454 4.7.0 TLS not available"]
    with tls_listener.client() as client:  # TCP: offered as before
        client.ehlo()
        assert "starttls" in client.esmtp_features


def test_a_login_shadowed_by_a_pattern_is_still_no_outsiders_sender(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """[user:*@partner.example] first, the login's own section after it: the check read
    the first match, which has no password, and let the login's address through."""
    hashed = passhash.hash_password(PASSWORD)
    sections = (
        "\n[user:*@partner.example]\ncan_send_to = false\n"
        f"\n[user:app@partner.example]\nsmtp_password_hash = {hashed}\n"
    )
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, sections=sections)
    )
    with listener.client("127.0.0.2") as client:
        client.ehlo()
        assert client.docmd("MAIL FROM:<app@partner.example>")[0] == 553


def test_password_hash_reads_stdin_and_prints_a_hash_that_verifies(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "password", "hash"],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    hashed = run.stdout.strip()
    assert PASSWORD not in hashed
    assert passhash.verify_password(PASSWORD.encode(), hashed)
    assert not passhash.verify_password(b"other", hashed)
    empty = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "password", "hash"],
        input="\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert empty.returncode == 64
    assert empty.stderr.startswith("ssmtp-mailer: password hash: empty password")


def test_a_bad_hash_in_the_config_is_a_config_error(
    tmp_path: Path, upstream: SMTPTestServer
) -> None:
    conf = listener_config(
        tmp_path / "l.conf",
        upstream.port,
        sections="\n[user:a@host.example]\nsmtp_password_hash = hunter2\n",
    )
    run = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), "listen"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 78
    assert "smtp_password_hash: expected scrypt$N$r$p$salt$key" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_address_in_use_is_one_line(tmp_path: Path, upstream: SMTPTestServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = listener_config(tmp_path / "l.conf", upstream.port)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "ssmtp_mailer",
                "--config",
                str(conf),
                "listen",
                "--address",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 64
    assert run.stderr.strip().splitlines() == [
        f"ssmtp-mailer: listen 127.0.0.1:{port}: Address already in use"
    ]


def test_a_second_listener_on_a_shared_port_is_refused_too(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """Processes of one listener share their port; another listener run by the same user
    gets "in use", as with one process, rather than half of the first one's connections."""
    conf = listener_config(tmp_path / "l.conf", upstream.port, "listen_processes = 2")
    first = start_listener(conf)
    run = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), "listen", "--address",
         f"127.0.0.1:{first.port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 64
    assert run.stderr.strip().splitlines() == [
        f"ssmtp-mailer: listen 127.0.0.1:{first.port}: Address already in use"
    ]
    with first.client() as client:  # the first one serves on
        assert client.sendmail("app@host.example", ["out@far.example"], message()) == {}
    assert len(upstream.wait_for(1)) == 1


def test_listener_settings_are_checked_by_config_check_and_named_by_listen(
    tmp_path: Path, upstream: SMTPTestServer
) -> None:
    """What `listen` would trip over shows in `config check` first (a TLS file that is not
    there is an error; users that do not exist and a listen_address that does not resolve
    are warnings, errors with --strict); and a listen_address that cannot be bound is a
    configuration error, exit 78, naming the key where it is set."""
    (tmp_path / "plain").write_text("")
    missing = tmp_path / "plain" / "none.pem"  # not even a directory on the way
    tls = f"listen_tls_cert_file = {missing}\nlisten_tls_key_file = {missing}\n"
    conf = listener_config(
        tmp_path / "l.conf",
        upstream.port,
        f"listen_address = no-such-host.invalid:2525\nspool_user = nosuchuser\n{tls}",
    )
    conf.write_text(conf.read_text().replace("listen_user = root", "listen_user = nosuchuser"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    checked = run("config", "check")
    assert checked.returncode == 78
    lines = checked.stderr.splitlines()
    assert len(lines) == 4 and "Traceback" not in checked.stderr
    assert f"listen_tls_cert_file {missing}: cannot load" in lines[0]
    assert lines[1].endswith("listen_user: no such user: nosuchuser"
                             " (a listener started as root would refuse to start)")  # fmt: skip
    assert "warning:" in lines[2] and "spool_user: no such user: nosuchuser" in lines[2]
    assert "warning:" in lines[3] and "listen_address no-such-host.invalid:2525: " in lines[3]
    conf.write_text(conf.read_text().replace(tls, ""))
    assert run("config", "check").returncode == 0
    strict = run("config", "check", "--strict")
    assert strict.returncode == 78 and "warning" not in strict.stderr
    listened = run("listen")
    assert listened.returncode == 78
    assert listened.stderr.count("\n") == 1
    line = conf.read_text().splitlines().index("listen_address = no-such-host.invalid:2525") + 1
    assert f"{conf}:{line}: listen_address no-such-host.invalid:2525: " in listened.stderr
    assert f"{conf}:{line}: listen_address no-such-host.invalid:2525: " in checked.stderr


def test_config_check_warns_about_a_password_hash_others_can_read(
    tmp_path: Path, upstream: SMTPTestServer
) -> None:
    """Against the listener a guess costs 2 s; a local user who can read the hash guesses
    offline as fast as their CPU goes."""
    users = tmp_path / "users"
    users.mkdir()
    user_file = users / "app.conf"
    user_file.write_text(
        f"[user:app@partner.example]\nsmtp_password_hash = {passhash.hash_password(PASSWORD)}\n"
    )
    user_file.chmod(0o644)
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    command = [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), "config", "check"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{user_file}: smtp_password_hash: holds a password hash but is readable by others" in (
        done.stderr
    )
    user_file.chmod(0o600)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert "password hash" not in done.stderr


def test_config_show_redacts_the_password_hash(tmp_path: Path, upstream: SMTPTestServer) -> None:
    hashed = passhash.hash_password(PASSWORD)
    conf = listener_config(
        tmp_path / "l.conf",
        upstream.port,
        sections=f"\n[user:a@host.example]\nsmtp_password_hash = {hashed}\n",
    )
    run = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert hashed not in run.stdout
    assert "smtp_password_hash = <redacted>" in run.stdout
    assert os.environ.get("SSMTP_MAILER_CONFIG") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_started_as_root_it_binds_then_becomes_listen_user(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    conf.write_text(conf.read_text().replace("listen_user = root", "listen_user = nobody"))
    listener = start_listener(conf)
    status = Path(f"/proc/{listener.process.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {str(pwd.getpwnam("nobody").pw_uid)}
    with listener.client() as client:
        assert client.sendmail("app@host.example", ["out@far.example"], message("dropped")) == {}
    assert upstream.wait_for(1)[0].message()["Subject"] == "dropped"
    assert listener.stop() == 0


def test_sendmail_bs_and_the_listener_speak_one_dialect(
    tmp_path: Path,
    upstream: SMTPTestServer,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    """The same policy refusal at RCPT and the same kind of reply to the dot, both ways."""
    conf = listener_config(
        tmp_path / "l.conf",
        upstream.port,
        sections="\n[user:app@host.example]\nallowed_domains = far.example\n",
    )
    listener = start_listener(conf)
    with listener.client() as client:
        client.ehlo()
        client.mail("app@host.example")
        over_smtp = client.rcpt("x@elsewhere.example")
        assert client.rcpt("ok@far.example")[0] == 250
        code, text = client.data(message("one"))
        assert code == 250 and text.startswith(b"2.0.0 OK ")
    session = (
        b"EHLO x\r\nMAIL FROM:<app@host.example>\r\nRCPT TO:<x@elsewhere.example>\r\n"
        b"RCPT TO:<ok@far.example>\r\nDATA\r\n" + message("two").encode() + b".\r\nQUIT\r\n"
    )
    code, out, _ = run_main(["-C", str(conf), "-bs"], session)
    assert code == 0
    replies = out.splitlines()
    refusal = next(r for r in replies if r.startswith("550"))
    assert refusal == f"{over_smtp[0]} {over_smtp[1].decode()}"
    assert "domain not in allowed_domains" in refusal
    assert any(r.startswith("250 2.0.0 OK ") for r in replies)
    assert sorted(str(m.message()["Subject"]) for m in upstream.wait_for(2)) == ["one", "two"]


def test_sendmail_bs_and_the_listener_word_every_reply_alike(
    tmp_path: Path,
    upstream: SMTPTestServer,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    """One dialect: the same commands, good and bad, get the same replies word for word,
    each with an enhanced status code (both offer ENHANCEDSTATUSCODES)."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    commands = [
        "EHLO x", "HELO", "FOO", "MAIL FROM:<a@host.example> SIZE=999999999999",
        "RCPT TO:<b@far.example>", "DATA", "MAIL TO:<x>", "MAIL FROM:<a@host.example>",
        "MAIL FROM:<a@host.example>", "RCPT TO:<bad address>", "RCPT FROM:<b@far.example>",
        "DATA", "RSET", "NOOP", "VRFY b@far.example", "EXPN staff", "QUIT",
    ]  # fmt: skip
    session = "".join(f"{c}\r\n" for c in commands).encode()
    over_smtp, by_bs = _both_ways(conf, session, start_listener, run_main)
    assert over_smtp == by_bs
    assert "250-ENHANCEDSTATUSCODES" in over_smtp
    for reply in [line for line in over_smtp if line[3:4] != "-"][1:]:  # after EHLO
        assert re.match(r"\d{3} [245]\.\d{1,3}\.\d{1,3} ", reply), reply


def test_both_sessions_read_paths_alike(
    tmp_path: Path,
    upstream: SMTPTestServer,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    """A quoted local part holding '>' and a space, a source route and a bare address
    arrive as the same recipients over the listener and over `sendmail -bs`; a path with
    no closing '>' is refused by both, in the same words."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    listener = start_listener(conf)
    paths = ['<"odd> name"@far.example>', "<@hop.example:routed@far.example>", "bare@far.example"]
    expected = ['"odd> name"@far.example', "routed@far.example", "bare@far.example"]
    with listener.client() as client:
        client.ehlo()
        assert client.docmd("MAIL FROM:<@hop.example:>")[0] == 553  # a route to nowhere
        assert client.mail("app@host.example")[0] == 250
        for path in paths:
            assert client.docmd("RCPT TO:" + path)[0] == 250
        assert client.docmd("RCPT TO:<open@far.example")[0] == 553
        assert client.data(message("listener"))[0] == 250
    session = (
        b"EHLO x\r\nMAIL FROM:<@hop.example:>\r\nMAIL FROM:<app@host.example>\r\n"
        + b"".join(f"RCPT TO:{path}\r\n".encode() for path in paths)
        + b"RCPT TO:<open@far.example\r\nDATA\r\n"
        + message("bs").encode()
        + b".\r\nQUIT\r\n"
    )
    code, out, _ = run_main(["-C", str(conf), "-bs"], session)
    assert code == 0
    assert [r[:3] for r in out.splitlines()[-7:-2]] == ["250", "250", "250", "553", "354"]
    final = [line for line in out.splitlines() if line[3:4] != "-"]
    assert final[2:4] == ["553 5.1.3 Malformed address", "250 2.1.0 OK"]
    for got in upstream.wait_for(2):
        assert got.rcpt_tos == expected


def test_the_workers_retry_quickly_where_sendmail_would_queue(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    start_listener: Callable[[Path], Listener],
) -> None:
    flaky = smtp_server_factory(fault="421-connect")
    conf = listener_config(tmp_path / "l.conf", flaky.port)
    conf.write_text(
        conf.read_text().replace(
            "max_retries = 0\nretry_backoff = 0", "max_retries = 2\nretry_backoff = 1"
        )
    )
    listener = start_listener(conf)
    threading.Timer(0.5, setattr, (flaky, "fault", None)).start()
    with listener.client() as client:
        client.ehlo()
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        code, text = client.data(message("retried"))
    assert code == 250 and b"delivered" in text  # the retry after 1 s got through
    assert flaky.wait_for(1)[0].message()["Subject"] == "retried"
    assert list_entries(load_config(str(conf))) == []


def test_smtputf8_and_8bit_pass_through(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    start_listener: Callable[[Path], Listener],
) -> None:
    upstream = smtp_server_factory(smtputf8=True)
    listener = start_listener(listener_config(tmp_path / "l.conf", upstream.port))
    body = "From: app@host.example\r\nSubject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
    with listener.client() as client:
        client.ehlo()
        assert "smtputf8" in client.esmtp_features and "8bitmime" in client.esmtp_features
        code, _ = client.mail("app@host.example", ["SMTPUTF8", "BODY=8BITMIME"])
        assert code == 250
        assert client.rcpt("j\u00fcrgen@m\u00fcller.example")[0] == 250
        assert client.data(body)[0] == 250
    got = upstream.wait_for(1)[0]
    assert got.rcpt_tos == ["j\u00fcrgen@m\u00fcller.example"]
    assert got.smtputf8
    assert "d\u00e9j\u00e0 vu".encode() in got.data


def test_an_idle_client_is_dropped_after_listen_timeout(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, "listen_timeout = 1")
    )
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        assert sock.recv(1024).startswith(b"220 ")
        started = time.monotonic()
        assert _replies(sock, 1) == [b"421 4.4.2 Timeout waiting for the client, closing"]
        assert sock.recv(1024) == b""  # closed by the listener, not by us
        assert 0.5 < time.monotonic() - started < 5


def test_listen_timeout_is_the_clients_not_the_uploads_nor_the_deliverys(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    start_listener: Callable[[Path], Listener],
) -> None:
    """listen_timeout = 1: a message sent slowly, a line every 0.3 s for 2 s, is read to its
    dot; and the delivery's quick retries (2 s) do not cut the client off before the reply
    it waits for (a client that hears nothing sends the message again)."""
    flaky = smtp_server_factory(fault="421-connect")
    conf = listener_config(tmp_path / "l.conf", flaky.port, "listen_timeout = 1")
    conf.write_text(
        conf.read_text().replace(
            "max_retries = 0\nretry_backoff = 0", "max_retries = 2\nretry_backoff = 1"
        )
    )
    listener = start_listener(conf)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        assert _replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO x\r\nMAIL FROM:<app@host.example>\r\nRCPT TO:<out@far.example>\r\n")
        assert [r[:3] for r in _replies(sock, 3)] == [b"250", b"250", b"250"]
        sock.sendall(b"DATA\r\n")
        assert _replies(sock, 1)[0].startswith(b"354")
        for line in (b"Subject: slowly\r\n", b"\r\n", *[b"a line\r\n"] * 5):
            sock.sendall(line)
            time.sleep(0.3)
        threading.Timer(1.5, setattr, (flaky, "fault", None)).start()
        started = time.monotonic()
        sock.sendall(b".\r\n")
        [reply] = _replies(sock, 1)
        assert reply.startswith(b"250 2.0.0 OK") and b"delivered" in reply, reply
        assert time.monotonic() - started > 1.2  # longer than listen_timeout
    [got] = flaky.wait_for(1)
    assert got.message()["Subject"] == "slowly"
    time.sleep(0.3)
    assert len(flaky.messages) == 1


def test_an_outsider_trickling_its_data_is_cut_off_after_listen_timeout(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """A byte every 0.3 s from outside allowed_networks: each read restarted listen_timeout,
    so five such sessions held every slot the local programs need, for as long as they liked."""
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, "listen_timeout = 1")
    )
    with socket.create_connection(
        ("127.0.0.1", listener.port), timeout=30, source_address=("127.0.0.2", 0)
    ) as sock:
        assert _replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO x\r\nMAIL FROM:<a@internet.example>\r\n")
        sock.sendall(b"RCPT TO:<contact-sales@mailer.domain1.com>\r\nDATA\r\n")
        assert [r[:3] for r in _replies(sock, 4)] == [b"250", b"250", b"250", b"354"]
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"Subject: slow\r\n\r\n" * 4:
                sock.sendall(bytes([byte]))
                time.sleep(0.3)
        assert b"421 4.4.2" in sock.recv(1024)
        assert time.monotonic() - started < 5
    time.sleep(0.3)
    assert upstream.messages == []


def test_a_message_that_cannot_even_be_queued_gets_451(
    tmp_path: Path, start_listener: Callable[[Path], Listener]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    (tmp_path / "not-a-dir").write_text("")
    conf = listener_config(tmp_path / "l.conf", dead_port)
    conf.write_text(
        conf.read_text().replace(
            f"spool_dir = {tmp_path / 'spool'}", f"spool_dir = {tmp_path / 'not-a-dir' / 'spool'}"
        )
    )
    listener = start_listener(conf)
    with listener.client() as client:
        client.ehlo()
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        code, text = client.data(message())
    assert code == 451
    assert text.startswith(b"4.")


def test_a_permanent_refusal_is_passed_on_with_the_relays_reason(
    smtp_server_factory: Callable[..., SMTPTestServer],
    tmp_path: Path,
    start_listener: Callable[[Path], Listener],
) -> None:
    refusing = smtp_server_factory(fault="554-data-end")
    listener = start_listener(listener_config(tmp_path / "l.conf", refusing.port))
    with listener.client() as client:
        client.ehlo()
        client.mail("app@host.example")
        client.rcpt("out@far.example")
        code, text = client.data(message())
    assert code in (550, 554)
    assert text.startswith(b"5.")
    assert b"content policy" in text  # the relay's own reason is in ours


def test_the_workers_reuse_upstream_connections(
    listener: Listener, upstream: SMTPTestServer
) -> None:
    with listener.client() as client:
        for i in range(10):
            assert client.sendmail("app@host.example", ["out@far.example"], message(f"r{i}")) == {}
    assert len(upstream.wait_for(10)) == 10
    assert upstream.connections == 1  # one upstream session carried all ten (SPEC §6 reuse)


# -- the null reverse-path (RFC 5321 §4.5.5): bounces and delivery status notifications --

NOTICE = (
    "From: Mail Delivery System <MAILER-DAEMON@mx.far.example>\r\n"
    "To: contact-sales@mailer.domain1.com\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
    "Auto-Submitted: auto-replied\r\n"
    "\r\n"
    "Your message could not be delivered.\r\n"
)


def test_a_bounce_from_the_internet_reaches_a_mapped_alias_with_mail_from_null(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    log_file = tmp_path / "mail.log"
    listener = start_listener(
        listener_config(tmp_path / "l.conf", upstream.port, f"log_file = {log_file}")
    )
    with listener.client("127.0.0.2") as client:
        client.ehlo("mx.far.example")
        assert client.mail("")[0] == 250  # smtplib sends MAIL FROM:<>
        assert client.docmd("MAIL FROM:<again@far.example>")[0] == 503  # nested, even after <>
        code, text = client.rcpt("out@far.example")  # the null sender opens no relay
        assert (code, text[:5]) == (554, b"5.7.1")
        assert client.rcpt("contact-sales@mailer.domain1.com")[0] == 250
        code, text = client.data(NOTICE)
        assert code == 250 and b"delivered" in text
        # The next transaction of the same session may use <> again.
        assert client.sendmail("", ["contact-legal@mailer.domain1.com"], NOTICE) == {}
    got = upstream.wait_for(2)
    assert [(m.mail_from, m.rcpt_tos) for m in got] == [
        ("<>", ["contact-sales@domain1.com"]),
        ("<>", ["contact-legal@domain1.com"]),
    ]
    assert got[0].message()["Subject"] == "Undelivered Mail Returned to Sender"
    lines = [line for line in log_file.read_text().splitlines() if " outcome=sent " in line]
    assert len(lines) == 2 and all(" from=<> " in line for line in lines), lines


def test_swaks_sends_with_the_null_sender(listener: Listener, upstream: SMTPTestServer) -> None:
    if not shutil.which("swaks"):
        pytest.skip("swaks is not installed")
    run = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{listener.port}",
            "--from",
            "<>",
            "--to",
            "out@far.example",
            "--header",
            "Subject: swaks null sender",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = upstream.wait_for(1)[0]
    assert (got.mail_from, got.rcpt_tos) == ("<>", ["out@far.example"])
    assert got.message()["Subject"] == "swaks null sender"


def test_a_queued_null_sender_message_keeps_it_and_never_gets_a_failure_notice(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    start_listener: Callable[[Path], Listener],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    conf = listener_config(tmp_path / "l.conf", dead_port)
    listener = start_listener(conf)
    with listener.client() as client:
        client.ehlo()
        for sender, recipient, subject in [
            ("", "out@far.example", "null, delivered later"),
            ("", "gone@far.example", "null, refused later"),
            ("app@host.example", "gone@far.example", "app, refused later"),
        ]:
            assert client.mail(sender)[0] == 250
            assert client.rcpt(recipient)[0] == 250
            code, text = client.data(message(subject, sender or "MAILER-DAEMON@host.example"))
            assert code == 250 and b"queued as" in text
    assert sorted(e.sender for e in list_entries(load_config(str(conf)))) == [
        "",
        "",
        "app@host.example",
    ]

    upstream = smtp_server_factory(fault="550-rcpt:gone@far.example")
    conf.write_text(
        conf.read_text().replace(f"smtp_port = {dead_port}", f"smtp_port = {upstream.port}")
    )
    queue_run = [sys.executable, "-m", "ssmtp_mailer", "--config", str(conf), "queue", "run"]
    run = subprocess.run(
        [*queue_run, "--all", "--json"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["bounces"] == 1, run.stdout  # for app@host.example only
    upstream.wait_for(2)
    time.sleep(0.2)
    by_recipient = {m.rcpt_tos[0]: m for m in upstream.messages}
    assert len(upstream.messages) == 2 and set(by_recipient) == {
        "out@far.example",
        "app@host.example",  # the one failure notice
    }
    delivered = by_recipient["out@far.example"]
    assert delivered.mail_from == "<>"
    assert delivered.message()["Subject"] == "null, delivered later"
    notice = by_recipient["app@host.example"]
    assert notice.mail_from == "<>" and b"app, refused later" in notice.data
    assert b"null, refused later" not in notice.data
    config = load_config(str(conf))
    assert list_entries(config) == []
    failed = list_entries(config, failed=True)
    assert sorted(e.sender for e in failed) == ["", "app@host.example"]


def test_sendmail_bs_and_the_listener_treat_the_null_sender_alike(
    tmp_path: Path,
    upstream: SMTPTestServer,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    """MAIL FROM:<>, a nested MAIL, the null sender's [user:] policy at RCPT, and DATA."""
    conf = listener_config(
        tmp_path / "l.conf",
        upstream.port,
        sections="\n[user:MAILER-DAEMON@host.example]\nallowed_domains = far.example\n",
    )
    listener = start_listener(conf)
    with listener.client() as client:
        client.ehlo()
        over_smtp = [
            client.docmd("MAIL FROM:<>"),
            client.docmd("MAIL FROM:<b@host.example>"),
            client.rcpt("x@elsewhere.example"),
            client.rcpt("ok@far.example"),
        ]
        code, text = client.data(message("one", "MAILER-DAEMON@host.example"))
        assert code == 250 and text.startswith(b"2.0.0 OK ")
    assert [code for code, _ in over_smtp] == [250, 503, 550, 250]
    session = (
        b"EHLO x\r\nMAIL FROM:<>\r\nMAIL FROM:<b@host.example>\r\n"
        b"RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<ok@far.example>\r\nDATA\r\n"
        + message("two", "MAILER-DAEMON@host.example").encode()
        + b".\r\nQUIT\r\n"
    )
    code, out, _ = run_main(["-C", str(conf), "-bs"], session)
    assert code == 0
    replies = [r for r in out.splitlines() if not r.startswith(("220 ", "250-", "250 HELP"))]
    assert [r[:3] for r in replies] == ["250", "503", "550", "250", "354", "250", "221"]
    assert replies[2] == f"550 {over_smtp[2][1].decode()}"
    assert "domain not in allowed_domains" in replies[2]
    got = upstream.wait_for(2)
    assert sorted((str(m.message()["Subject"]), m.mail_from) for m in got) == [
        ("one", "<>"),
        ("two", "<>"),
    ]


def test_sendmail_bs_ends_data_only_at_crlf_dot_crlf_for_a_crlf_client(
    tmp_path: Path, upstream: SMTPTestServer, run_main: Callable[..., tuple[int, str, str]]
) -> None:
    """`-bs` ended DATA at a `.` line ended by a bare LF: a body could carry a second
    message, with recipients of its own, after it (SMTP smuggling). The listener keeps
    such bytes one message; so does `-bs` now. A script writing LF alone still ends
    with `.` LF."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    smuggling = (
        b"EHLO me\r\nMAIL FROM:<root@host.example>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
        b"Subject: first\r\n\r\nhello\n.\nMAIL FROM:<root@host.example>\n"
        b"RCPT TO:<smuggled@example.net>\nDATA\nSubject: smuggled\n\nevil\r\n.\r\nQUIT\r\n"
    )
    code, out, _ = run_main(["-C", str(conf), "-bs"], smuggling)
    assert code == 0
    assert sum(r.startswith("354") for r in out.splitlines()) == 1
    (got,) = upstream.wait_for(1)
    assert got.rcpt_tos == ["a@example.org"]
    assert b"smuggled@example.net" in got.data  # content, not a transaction
    time.sleep(0.3)
    assert len(upstream.messages) == 1
    lf_only = (
        b"EHLO me\nMAIL FROM:<root@host.example>\nRCPT TO:<b@example.org>\nDATA\nhi\n.\nQUIT\n"
    )
    code, out, _ = run_main(["-C", str(conf), "-bs"], lf_only)
    assert code == 0 and any(r.startswith("250 2.0.0 OK") for r in out.splitlines())
    assert upstream.wait_for(2)[1].rcpt_tos == ["b@example.org"]


def test_an_outsider_hears_the_relays_refusal_not_our_relay_or_alias(
    tmp_path: Path, upstream: SMTPTestServer, start_listener: Callable[[Path], Listener]
) -> None:
    """SPEC §8: a permanent refusal goes back "with the relay's reason". Around it our
    own words named the relay's address and the alias's target to the internet."""
    upstream.fault = "550-rcpt:contact-sales@domain1.com"
    listener = start_listener(listener_config(tmp_path / "l.conf", upstream.port))
    with listener.client("127.0.0.2") as client:
        client.ehlo()
        assert client.mail("someone@internet.example")[0] == 250
        assert client.rcpt("contact-sales@mailer.domain1.com")[0] == 250
        code, text = client.data(message("inbound", "someone@internet.example"))
    assert code == 550
    assert text.startswith(b"5.1.1 ")
    assert f"127.0.0.1:{upstream.port}".encode() not in text and b"refused:" not in text
    with listener.client("127.0.0.1") as client:  # our own client hears it all
        client.ehlo()
        client.mail("app@host.example")
        client.rcpt("contact-sales@mailer.domain1.com")
        code, text = client.data(message("inbound"))
    assert code == 550 and f"127.0.0.1:{upstream.port}".encode() in text


def test_a_control_character_a_client_sent_is_not_echoed_into_a_reply(
    listener: Listener, tmp_path: Path, run_main: Callable[..., tuple[int, str, str]]
) -> None:
    """RFC 5321 §4.2: reply text has no bare CR; `RCPT TO:<x@evil.com\\rFAKE>` was echoed
    with its CR, by the listener and by `sendmail -bs` alike."""
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        assert _replies(sock, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO x\r\nMAIL FROM:<a@host.example>\r\nRCPT TO:<x@evil.com\rFAKE>\r\n")
        replies = _replies(sock, 3)
    assert b"\r" not in replies[2].rstrip(b"\r\n") and replies[2].startswith(b"553")
    conf = listener_config(tmp_path / "bs.conf", 9)
    session = b"EHLO x\r\nMAIL FROM:<a@host.example>\r\nRCPT TO:<x@evil.com\rFAKE>\r\nQUIT\r\n"
    code, out, _ = run_main(["-C", str(conf), "-bs"], session)
    assert code == 0
    refusal = next(line for line in out.split("\r\n") if line.startswith("553"))
    assert "\r" not in refusal and "x@evil.com?FAKE" in refusal


def _both_ways(
    conf: Path,
    session: bytes,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> tuple[list[str], list[str]]:
    """The replies, after the greeting, to `session` from the listener and from -bs; the
    listener's connection is read until it closes."""
    code, out, _ = run_main(["-C", str(conf), "-bs"], session)
    assert code == 0
    listener = start_listener(conf)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        sock.sendall(session)
        heard = b""
        while chunk := sock.recv(65536):
            heard += chunk
    return heard.decode().splitlines()[1:], out.splitlines()[1:]


def test_both_sessions_close_after_five_unknown_commands(
    tmp_path: Path,
    upstream: SMTPTestServer,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    """The fifth unrecognized command ends the session with 421 (RFC 5321 §4.2.3), the same
    way both ways; what the client sends after it is not read."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    session = b"HELO x\r\n" + b"FOO\r\n" * 5 + b"NOOP\r\n"  # no QUIT: the server hangs up
    over_smtp, by_bs = _both_ways(conf, session, start_listener, run_main)
    assert over_smtp == by_bs
    assert by_bs[1:] == ["500 5.5.1 Command not recognized"] * 4 + [
        "421 4.7.0 Too many unrecognized commands, closing"
    ]


def test_both_sessions_close_a_noop_flood_and_mail_resets_the_count(
    tmp_path: Path,
    upstream: SMTPTestServer,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    """Postfix's smtpd_junk_command_limit: 100 NOOP, RSET, VRFY, EXPN or HELP between two
    messages; the 101st gets 421 and the hang-up. A delivered message starts the count
    again, so a client that sends mail between its NOOPs is never cut off."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    junk = b"NOOP\r\nRSET\r\nVRFY a@host.example\r\nHELP\r\nEXPN staff\r\n" * 12
    mail = b"MAIL FROM:<app@host.example>\r\nRCPT TO:<out@far.example>\r\nDATA\r\n"
    mail += message("between").encode() + b".\r\n"
    session = b"EHLO x\r\n" + junk + mail + junk + b"NOOP\r\n" * 41
    over_smtp, by_bs = _both_ways(conf, session, start_listener, run_main)
    final = [re.sub("<.*>", "<id>", line) for line in over_smtp if line[3:4] != "-"]
    assert final == [re.sub("<.*>", "<id>", line) for line in by_bs if line[3:4] != "-"]
    assert final[-1] == "421 4.7.0 Too many commands without mail, closing"
    assert sum(line.startswith("250 2.0.0 OK ") for line in final) == 1  # the message
    # 60 before the message, 60 + 40 after it; the 101st since the message is refused.
    assert len(final) == 1 + 60 + 4 + 100 + 1
    assert [m.message()["Subject"] for m in upstream.wait_for(2)] == ["between"] * 2


def test_both_sessions_take_the_same_longest_command(
    tmp_path: Path,
    upstream: SMTPTestServer,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    """A RCPT with a 500-octet ORCPT (RFC 3461 §4.2 allows it) is taken both ways; a
    command of more than 2048 octets gets 500 5.5.2 both ways and the session goes on."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    orcpt = "rfc822;" + "o" * 480 + "@far.example"
    too_long = "NOOP " + "x" * 2044
    session = (
        f"EHLO x\r\nMAIL FROM:<app@host.example>\r\nRCPT TO:<out@far.example> ORCPT={orcpt}\r\n"
        f"{too_long}\r\nRSET\r\nQUIT\r\n"
    ).encode()
    over_smtp, by_bs = _both_ways(conf, session, start_listener, run_main)
    final = [line for line in over_smtp if line[3:4] != "-"]
    assert final == [line for line in by_bs if line[3:4] != "-"]
    assert [line[:9] for line in final[1:]] == [
        "250 2.1.0", "250 2.1.5", "500 5.5.2", "250 2.0.0", "221 2.0.0",
    ]  # fmt: skip


def test_sendmail_bs_reads_an_endless_data_line_in_pieces(tmp_path: Path) -> None:
    """A 200 MB data line with no newline, over max_message_size: 552, and the -bs process
    never holds the line (its peak memory stays far below the line's size)."""
    conf = listener_config(tmp_path / "l.conf", 9, "max_message_size = 1048576")
    head = b"EHLO x\r\nMAIL FROM:<app@host.example>\r\nRCPT TO:<out@far.example>\r\nDATA\r\n"
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'ssmtp_mailer', 'sendmail', '-C', sys.argv[1],"
        " '-bs'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "p.stdin.write(sys.stdin.buffer.read())\n"
        "for _ in range(200):\n"
        "    p.stdin.write(b'x' * 1048576)\n"
        "out, _ = p.communicate(b'\\r\\n.\\r\\nQUIT\\r\\n')\n"
        "sys.stdout.write(out.decode())\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(conf)], input=head, capture_output=True, timeout=120
    )
    lines = done.stdout.decode().splitlines()
    assert "552 5.3.4 Message size exceeds fixed maximum message size" in lines
    assert int(lines[-1]) < 100_000  # KiB: 100 MB, half the line


ODD_SESSIONS = {
    "before and after HELO": [
        "MAIL FROM:<a@host.example>", "RCPT TO:<b@far.example>", "DATA", "VRFY b@far.example",
        "HELO x", "MAIL FROM:<a@host.example> SIZE=10", "MAIL FROM:<a@host.example>",
        "RCPT TO:<b@far.example> NOTIFY=NEVER", "RCPT TO:<b@far.example>", "RSET",
        "EHLO x", "MAIL FROM:<a@host.example> SMTPUTF8=yes", "MAIL FROM:<a@host.example> SIZE=",
        "MAIL FROM:<a@host.example> BODY=BINARYMIME", "MAIL FROM:<a@host.example",
        "MAIL FROM:", "MAIL FROM:<a@host.example>", "MAIL FROM:<a@host.example> SIZE=abc",
        "RCPT TO:<b@far.example", "RCPT TO:<>", "RCPT TO:", "RCPT TO:b@far.example",
        "DATA now", "QUIT now", "QUIT",
    ],
    "commands with odd arguments": [
        "HELO", "EHLO", "EHLO x", "RSET now", "VRFY", "VRFY <x", "VRFY <x@y.example>",
        "HELP MAIL", "HELP rset", "HELP FOO", "HELP STARTTLS", "AUTH PLAIN", "STARTTLS",
        "BDAT 10", "ETRN x", "", "   ", "EXPN x", "QUIT",
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ODD_SESSIONS))
def test_both_sessions_answer_odd_commands_alike(
    name: str,
    tmp_path: Path,
    upstream: SMTPTestServer,
    start_listener: Callable[[Path], Listener],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    """Out of order, with arguments where none belong, parameters after HELO, paths cut
    short, STARTTLS and AUTH where neither is offered: word for word alike both ways."""
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    session = "".join(f"{c}\r\n" for c in ODD_SESSIONS[name]).encode()
    over_smtp, by_bs = _both_ways(conf, session, start_listener, run_main)
    assert over_smtp == by_bs
    assert by_bs[-1] == "221 2.0.0 host.example closing"
    if name == "before and after HELO":
        assert by_bs[:3] == ["503 5.5.1 Send HELO or EHLO first"] * 3
        assert by_bs[5] == "501 5.5.4 Syntax: MAIL FROM:<address>"  # SIZE= after HELO
        assert "553 5.1.3 Malformed address" in by_bs
    else:
        assert "214 2.0.0 Syntax: RSET" in by_bs
        assert "454 4.7.0 TLS not available" in by_bs
    assert upstream.messages == []
