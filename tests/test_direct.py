"""Direct and hybrid delivery to MX hosts: a real DNS server and real SMTP servers on 127.0.0.x.

Every MX host is an aiosmtpd server on its own loopback address, all on one port (the
route's direct_port), as port 25 is one port on many hosts on the internet.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import pytest
from dnsserver import DNSServer, Zone
from relayconf import RunMain
from smtpserver import SMTPTestServer
from stsserver import PolicyServer

SENDER = "alice@sender.example"
MESSAGE = (
    b"From: Alice <alice@sender.example>\r\n"
    b"To: many\r\n"
    b"Subject: direct\r\n"
    b"Message-ID: <direct-1@sender.example>\r\n"
    b"\r\n"
    b"Straight to the MX.\r\n"
)


class Net:
    """Loopback addresses of one test (random, so parallel runs do not meet) and one port."""

    def __init__(self) -> None:
        self.prefix = f"127.{random.randint(10, 250)}.{random.randint(0, 255)}."
        probe = socket.socket()
        probe.bind((self.ip(2), 0))
        self.port = int(probe.getsockname()[1])
        probe.close()

    def ip(self, n: int) -> str:
        return f"{self.prefix}{n}"


@pytest.fixture
def net() -> Net:
    return Net()


@pytest.fixture
def mx_server(net: Net, tls_ca: Any) -> Iterator[Callable[..., SMTPTestServer]]:
    """`mx_server(n, **options)`: an SMTP server on 127.x.y.n at the test's direct_port."""
    started: list[SMTPTestServer] = []

    def start(n: int, **options: Any) -> SMTPTestServer:
        options.setdefault("ca", tls_ca)
        server = SMTPTestServer(host=net.ip(n), port=net.port, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def zone_for(net: Net) -> dict[str, list[Any]]:
    return {
        "a.example": [("MX", "10 mx1.a.example."), ("MX", "20 mx2.a.example.")],
        "mx1.a.example": [("A", net.ip(2))],
        "mx2.a.example": [("A", net.ip(3))],
        "b.example": [("MX", "10 mx.b.example.")],
        "mx.b.example": [("A", net.ip(4))],
        "c.example": [("A", net.ip(5))],
        "null.example": [("MX", "0 .")],
    }


def write_config(
    tmp_path: Path, dns: DNSServer, net: Net, route: str = "", global_: str = ""
) -> Path:
    path = tmp_path / "ssmtp-mailer.conf"
    mode = "" if "delivery_mode" in route else "delivery_mode = direct\n"
    path.write_text(
        f"""[global]
default_hostname = sender.example
spool_dir = {tmp_path / "spool"}
log_file = {tmp_path / "mail.log"}
dns_servers = {dns.nameserver}
connection_timeout = 3
enable_rate_limiting = false
{global_}
[domain:sender.example]
{mode}direct_port = {net.port}
helo_name = mta.sender.example
{route}"""
    )
    return path


def sendmail(run_main: RunMain, conf: Path, *rcpts: str) -> tuple[int, str, str]:
    return run_main(["-C", str(conf), "-i", "-f", SENDER, *rcpts], stdin=MESSAGE)


def log_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "mail.log"
    return [line for line in path.read_text().splitlines() if "outcome=" in line]


def queue_list(run_main: RunMain, conf: Path, *options: str) -> list[dict[str, Any]]:
    """`queue list --json`; with "--failed", of failed/."""
    command = ["-C", str(conf), "queue", "list", "--json", *options]
    code, out, err = run_main(command, prog="ssmtp-mailer")
    assert code == 0, err
    data = json.loads(out)
    entries = data["entries"] if isinstance(data, dict) else data
    assert isinstance(entries, list)
    return entries


def test_two_domains_each_to_its_own_mx(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx_a, mx_b = mx_server(2), mx_server(4)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example", "two@a.example", "three@b.example")
    assert (code, err) == (0, "")
    # One transaction per domain, each carrying only that domain's recipients.
    [got_a], [got_b] = mx_a.messages, mx_b.messages
    assert got_a.rcpt_tos == ["one@a.example", "two@a.example"]
    assert got_b.rcpt_tos == ["three@b.example"]
    assert got_a.mail_from == SENDER and got_a.helo == "mta.sender.example"
    assert b"Straight to the MX." in got_a.data
    [line] = log_lines(tmp_path)
    assert "path=direct" in line and "outcome=sent" in line
    assert f"mx1.a.example[{net.ip(2)}]:{net.port}" in line
    assert f"mx.b.example[{net.ip(4)}]:{net.port}" in line


def test_next_mx_by_preference_when_the_first_is_down(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    backup = mx_server(3)  # mx2, preference 20; mx1 (preference 10) has nothing listening
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert [m.rcpt_tos for m in backup.messages] == [["one@a.example"]]
    assert f"relay=mx2.a.example[{net.ip(3)}]:{net.port}" in log_lines(tmp_path)[0]


def test_a_4xx_from_the_first_mx_moves_on_to_the_next(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    busy = mx_server(2, fault="421-connect")
    backup = mx_server(3)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert busy.messages == [] and busy.connections == 1
    assert len(backup.messages) == 1


def test_equal_preferences_are_shuffled(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    first, second = mx_server(2), mx_server(3)
    zone = zone_for(net)
    zone["a.example"] = [("MX", "10 mx1.a.example."), ("MX", "10 mx2.a.example.")]
    conf = write_config(tmp_path, dns_server(zone), net)
    for _ in range(24):
        code, _, err = sendmail(run_main, conf, "one@a.example")
        assert (code, err) == (0, "")
    # Both take a share (the chance that 24 sends all pick one host is 2 in 16 million).
    assert first.messages and second.messages
    assert len(first.messages) + len(second.messages) == 24


def test_no_mx_means_the_domains_own_address(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    host = mx_server(5)
    dns = dns_server(zone_for(net))
    conf = write_config(tmp_path, dns, net)
    code, _, err = sendmail(run_main, conf, "someone@c.example")
    assert (code, err) == (0, "")
    assert [m.rcpt_tos for m in host.messages] == [["someone@c.example"]]
    assert dns.count("c.example", "MX") == 1 and dns.count("c.example", "A") == 1
    assert f"relay=c.example[{net.ip(5)}]:{net.port}" in log_lines(tmp_path)[0]


def test_ipv6_address_of_an_mx(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    tls_ca: Any,
    run_main: RunMain,
) -> None:
    try:
        server = SMTPTestServer(host="::1", port=net.port, ca=tls_ca).start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        zone = zone_for(net)
        zone["six.example"] = [("MX", "10 mx.six.example.")]
        zone["mx.six.example"] = [("AAAA", "::1")]
        conf = write_config(tmp_path, dns_server(zone), net)
        code, _, err = sendmail(run_main, conf, "v6@six.example")
        assert (code, err) == (0, "")
        assert [m.rcpt_tos for m in server.messages] == [["v6@six.example"]]
        assert f"mx.six.example[::1]:{net.port}" in log_lines(tmp_path)[0]
    finally:
        server.stop()


def test_a_servfail_for_an_mx_hosts_a_record_does_not_hide_its_aaaa(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    tls_ca: Any,
    run_main: RunMain,
) -> None:
    """An IPv6-only MX whose DNS answers SERVFAIL for A: its AAAA was never asked, and
    the message waited in the queue for an address it could have had."""
    try:
        server = SMTPTestServer(host="::1", port=net.port, ca=tls_ca).start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        zone = zone_for(net)
        zone["six.example"] = [("MX", "10 mx.six.example.")]
        zone["mx.six.example"] = [("AAAA", "::1")]
        dns = dns_server(zone)
        dns.servfail.add(("mx.six.example", "A"))
        conf = write_config(tmp_path, dns, net)
        code, _, err = sendmail(run_main, conf, "v6@six.example")
        assert (code, err) == (0, "")
        assert [m.rcpt_tos for m in server.messages] == [["v6@six.example"]]
    finally:
        server.stop()


def test_null_mx_refuses_that_domain_only(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx_b = mx_server(4)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "nobody@null.example", "three@b.example")
    assert code == 0
    assert "nobody@null.example" in err and "null MX" in err and "RFC 7505" in err
    # Named as the domain's own refusal, not b.example's MX, which never saw it.
    assert "nobody@null.example: refused by null.example: 556 null.example publishes" in err
    assert "mx.b.example" not in err
    assert [m.rcpt_tos for m in mx_b.messages] == [["three@b.example"]]
    # Permanent: kept in failed/ for that recipient, nothing queued for a retry.
    assert queue_list(run_main, conf) == []
    # Beside it, the sender's failure notice, which found no MX for sender.example here.
    failed = [p.read_text() for p in (tmp_path / "spool" / "failed").glob("*.toml")]
    assert len(failed) == 2
    assert sum('sender = "alice@sender.example"' in text for text in failed) == 1, failed


def test_null_mx_alone_is_a_permanent_failure(
    tmp_path: Path, net: Net, dns_server: Callable[..., DNSServer], run_main: RunMain
) -> None:
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "nobody@null.example")
    assert code == 67  # every recipient refused, by its own domain
    assert err.startswith("ssmtp-mailer: null.example: null.example publishes a null MX")
    assert "Traceback" not in err
    assert queue_list(run_main, conf) == []


def test_an_mx_refusing_the_sender_gets_no_advice_meant_for_a_relay(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """`550 5.7.1 ... Access denied` from a recipient's MX: the hint was to authenticate
    and use the submission port 587, which is what a relay wants, not an MX."""
    mx_server(2, fault="550-mail")
    mx_server(3, fault="550-mail")
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert code == 69, err
    assert "Access denied" in err
    hints = [line for line in err.splitlines() if line.startswith("ssmtp-mailer: hint:")]
    assert not [h for h in hints if "587" in h or "authenticate" in h], hints
    assert "authenticate" not in err  # (the test's own port may hold the digits 587)


def test_the_transcript_names_the_mx_hosts_without_claiming_they_have_no_address(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """`-v` printed `mx1.a.example [no address] (MX 10)` for hosts whose addresses were
    simply not looked up yet, and then connected to them."""
    mx_server(2)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = run_main(
        ["-C", str(conf), "-v", "-i", "-f", SENDER, "one@a.example"], stdin=MESSAGE
    )
    assert code == 0, err
    assert "* a.example: mx1.a.example (MX 10); mx2.a.example (MX 20)" in err
    assert "no address" not in err


def test_every_mx_down_queues_then_queue_run_delivers_once(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example", "three@b.example")
    assert code == 0
    assert "queued as" in err and "no MX host took the message" in err
    [entry] = queue_list(run_main, conf)
    assert sorted(entry["recipients"]) == ["one@a.example", "three@b.example"]
    assert "path=direct" in log_lines(tmp_path)[0] and "outcome=queued" in log_lines(tmp_path)[0]
    # The hosts come back; the retry goes to each domain's MX again.
    mx1, mx_b = mx_server(2), mx_server(4)
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    assert [m.rcpt_tos for m in mx1.messages] == [["one@a.example"]]
    assert [m.rcpt_tos for m in mx_b.messages] == [["three@b.example"]]
    assert queue_list(run_main, conf) == []
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    assert len(mx1.messages) == 1 and len(mx_b.messages) == 1


def test_one_mx_limiting_recipients_does_not_make_the_run_call_every_mx_again(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """a.example's MX takes one recipient a transaction, b.example's greylists: a queue run
    that sent a.example's rest at once would call b.example's MX (or wait out one that
    never answers its dot) once for every a.example recipient."""
    mx_a = mx_server(2, fault="452-rcpt-after:1")
    mx_b = mx_server(4, fault="451-rcpt")
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    rcpts = ["a0@a.example", "a1@a.example", "a2@a.example", "b0@b.example"]
    code, _, err = sendmail(run_main, conf, *rcpts)
    assert code == 0 and "queued as" in err
    assert [m.rcpt_tos for m in mx_a.messages] == [["a0@a.example"]]
    before = mx_b.connections
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    assert mx_b.connections == before + 1
    assert [m.rcpt_tos for m in mx_a.messages] == [["a0@a.example"], ["a1@a.example"]]


def test_one_domain_down_queues_only_its_recipients(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx_b = mx_server(4)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example", "three@b.example")
    assert code == 0 and "queued as" in err
    assert [m.rcpt_tos for m in mx_b.messages] == [["three@b.example"]]
    [entry] = queue_list(run_main, conf)
    assert entry["recipients"] == ["one@a.example"]


def test_hybrid_hands_what_the_mx_deferred_to_the_relay(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    mx_b = mx_server(4)  # b.example's MX is up, a.example's are both down
    route = (
        "delivery_mode = hybrid\n"
        f"smtp_server = 127.0.0.1\nsmtp_port = {smtp_server.port}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    conf = write_config(tmp_path, dns_server(zone_for(net)), net, route)
    code, _, err = sendmail(run_main, conf, "one@a.example", "three@b.example")
    assert (code, err) == (0, "")
    assert [m.rcpt_tos for m in mx_b.messages] == [["three@b.example"]]
    assert [m.rcpt_tos for m in smtp_server.messages] == [["one@a.example"]]
    assert queue_list(run_main, conf) == []
    [line] = log_lines(tmp_path)
    assert "path=direct+relay" in line
    # Every MX down: the relay takes it all, and the log line says so.
    smtp_server.clear()
    mx_b.stop()
    code, _, err = sendmail(run_main, conf, "one@a.example", "three@b.example")
    assert (code, err) == (0, "")
    assert [sorted(m.rcpt_tos) for m in smtp_server.messages] == [
        ["one@a.example", "three@b.example"]
    ]
    line = log_lines(tmp_path)[-1]
    assert "path=relay" in line and f"relay=127.0.0.1:{smtp_server.port}" in line


def test_self_signed_mx_certificate_is_fine_opportunistically(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx1 = mx_server(2, starttls=True, cert="self-signed", names=["mx1.a.example"])
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    [got] = mx1.messages
    assert got.tls and got.tls_version in ("TLSv1.2", "TLSv1.3")
    assert "tls=TLSv1." in log_lines(tmp_path)[0]


def test_plaintext_mx_is_fine_opportunistically(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx1 = mx_server(2)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert [m.tls for m in mx1.messages] == [False]
    assert "tls=none" in log_lines(tmp_path)[0]


def test_direct_tls_verify_refuses_a_self_signed_mx(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
    ca_file: Path,
) -> None:
    bad = mx_server(2, starttls=True, cert="self-signed", names=["mx1.a.example"])
    plain = mx_server(3)  # no STARTTLS at all
    route = f"direct_tls = verify\nssl_ca_file = {ca_file}\n"
    conf = write_config(tmp_path, dns_server(zone_for(net)), net, route)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert code == 0 and "queued as" in err
    assert "certificate" in err and "direct_tls = verify" in err
    assert "does not offer STARTTLS" in err
    assert bad.messages == [] and plain.messages == []
    [entry] = queue_list(run_main, conf)
    assert entry["recipients"] == ["one@a.example"]


def test_direct_tls_verify_delivers_to_a_verified_mx(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
    ca_file: Path,
) -> None:
    good = mx_server(2, starttls=True, names=["mx1.a.example"])
    route = f"direct_tls = verify\nssl_ca_file = {ca_file}\n"
    conf = write_config(tmp_path, dns_server(zone_for(net)), net, route)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert [m.tls for m in good.messages] == [True]


def sts_zone(net: Net, policy: PolicyServer) -> Zone:
    zone = zone_for(net)
    zone["_mta-sts.a.example"] = [("TXT", "v=STSv1; id=20260101T000000")]
    zone["mta-sts.a.example"] = [("A", policy.address)]
    return zone


def test_mta_sts_enforce_skips_an_mx_not_in_the_policy(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
    tls_ca: Any,
    ca_file: Path,
) -> None:
    policy = PolicyServer(
        tls_ca,
        "mta-sts.a.example",
        "version: STSv1\nmode: enforce\nmx: mx2.a.example\nmax_age: 86400\n",
    )
    try:
        # mx1 is preferred and has a valid certificate, but the policy does not list it.
        mx1 = mx_server(2, starttls=True, names=["mx1.a.example"])
        mx2 = mx_server(3, starttls=True, names=["mx2.a.example"])
        dns = dns_server(sts_zone(net, policy))
        conf = write_config(tmp_path, dns, net, f"ssl_ca_file = {ca_file}\n")
        code, out, err = run_main(
            ["-C", str(conf), "route", "--from", SENDER, "--to", "one@a.example"],
            prog="ssmtp-mailer",
        )
        assert code == 0, err
        assert "MTA-STS enforce (not in the policy: mx1.a.example)" in out
        code, _, err = sendmail(run_main, conf, "one@a.example")
        assert (code, err) == (0, "")
        assert mx1.messages == [] and mx1.connections == 0
        assert [m.tls for m in mx2.messages] == [True]
        # The policy is cached for max_age: the next message fetches nothing.
        fetched = policy.requests
        code, _, err = sendmail(run_main, conf, "two@a.example")
        assert (code, err) == (0, "") and policy.requests == fetched
        assert len(mx2.messages) == 2
    finally:
        policy.stop()


def test_mta_sts_enforce_with_no_listed_mx_queues(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
    tls_ca: Any,
    ca_file: Path,
) -> None:
    policy = PolicyServer(
        tls_ca,
        "mta-sts.a.example",
        "version: STSv1\nmode: enforce\nmx: *.elsewhere.example\nmax_age: 86400\n",
    )
    try:
        mx1 = mx_server(2, starttls=True, names=["mx1.a.example"])
        conf = write_config(
            tmp_path, dns_server(sts_zone(net, policy)), net, f"ssl_ca_file = {ca_file}\n"
        )
        code, _, err = sendmail(run_main, conf, "one@a.example")
        assert code == 0 and "queued as" in err
        assert "no MX is listed in its MTA-STS policy" in err
        assert mx1.messages == []
    finally:
        policy.stop()


def test_mta_sts_enforce_requires_a_verified_certificate(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
    tls_ca: Any,
    ca_file: Path,
) -> None:
    policy = PolicyServer(
        tls_ca,
        "mta-sts.a.example",
        "version: STSv1\nmode: enforce\nmx: *.a.example\nmax_age: 86400\n",
    )
    try:
        selfsigned = mx_server(2, starttls=True, cert="self-signed", names=["mx1.a.example"])
        conf = write_config(
            tmp_path, dns_server(sts_zone(net, policy)), net, f"ssl_ca_file = {ca_file}\n"
        )
        code, _, err = sendmail(run_main, conf, "one@a.example")
        assert code == 0 and "queued as" in err
        assert "the MTA-STS policy of a.example (mode enforce)" in err
        assert selfsigned.messages == []
    finally:
        policy.stop()


def test_mx_answers_are_cached_for_their_ttl(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx1 = mx_server(2)
    zone = zone_for(net)
    zone["short.example"] = [("MX", "10 mx1.a.example.", 1)]
    dns = dns_server(zone)
    conf = write_config(tmp_path, dns, net)
    for _ in range(3):
        code, _, err = sendmail(run_main, conf, "one@a.example")
        assert (code, err) == (0, "")
    assert dns.count("a.example", "MX") == 1 and dns.count("mx1.a.example", "A") == 1
    # Another process reads the answers from the state directory's file.
    done = subprocess.run(
        [sys.executable, "-m", "ssmtp_mailer", "sendmail", "-C", str(conf), "-i", "two@a.example"],
        input=MESSAGE,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(mx1.messages) == 4
    assert dns.count("a.example", "MX") == 1
    assert (tmp_path / "spool" / "dns-cache.json").is_file()
    # A TTL of 1 s: asked again once it has passed.
    sendmail(run_main, conf, "x@short.example")
    time.sleep(1.2)
    sendmail(run_main, conf, "y@short.example")
    assert dns.count("short.example", "MX") == 2
    assert len(mx1.messages) == 6


def test_dns_servers_that_do_not_answer_queue_the_message(
    tmp_path: Path, net: Net, dns_server: Callable[..., DNSServer], run_main: RunMain
) -> None:
    dns = dns_server(zone_for(net))
    conf = write_config(tmp_path, dns, net)
    conf.write_text(conf.read_text().replace("connection_timeout = 3", "connection_timeout = 1"))
    dns.stop()
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert code == 0 and "queued as" in err and "MX lookup failed" in err


def test_a_silent_resolver_is_waited_for_once_not_once_per_domain(
    tmp_path: Path, net: Net, dns_server: Callable[..., DNSServer], run_main: RunMain
) -> None:
    """dns_servers that take the questions and never answer: each recipient domain waited
    the whole timeout in turn (10 domains at the default 30 s: five minutes). After two
    in a row, the others are queued without asking."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent.settimeout(0.2)
    asked: set[str] = set()
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                wire, _ = silent.recvfrom(4096)
            except TimeoutError:
                continue
            asked.add(dns.message.from_wire(wire).question[0].name.to_text())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    real = dns_server(zone_for(net))
    conf = write_config(tmp_path, real, net)
    host, port = silent.getsockname()
    text = conf.read_text().replace(real.nameserver, f"{host}:{port}")
    conf.write_text(text.replace("connection_timeout = 3", "connection_timeout = 1"))
    code, _, err = sendmail(run_main, conf, *[f"one@d{n}.example" for n in range(4)])
    done.set()
    listener.join()
    silent.close()
    assert code == 0 and err.count("queued as") == 1, err
    assert len(asked) == 2, asked


def test_route_and_dry_run_show_the_mx_hosts(
    tmp_path: Path, net: Net, dns_server: Callable[..., DNSServer], run_main: RunMain
) -> None:
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, out, err = run_main(
        ["-C", str(conf), "route", "--from", SENDER, "--to", "one@a.example,x@null.example"],
        prog="ssmtp-mailer",
    )
    assert code == 0, err
    assert f"server: MX of each recipient domain, port {net.port} (direct delivery)" in out
    assert (
        f"MX a.example: mx1.a.example [{net.ip(2)}] (MX 10); mx2.a.example [{net.ip(3)}] (MX 20)"
        in out
    )
    assert "MX null.example: null.example publishes a null MX" in out
    # The relay's TLS and AUTH settings are no part of a direct route.
    assert "    tls:" not in out and "    auth:" not in out
    code, out, err = run_main(
        ["-C", str(conf), "route", "--json", "--from", SENDER, "--to", "z@c.example"],
        prog="ssmtp-mailer",
    )
    assert code == 0, err
    [route] = json.loads(out)["routes"]
    assert route["mx"] == {
        "c.example": f"c.example [{net.ip(5)}] (no MX, the domain's own address)"
    }
    assert route["delivery_mode"] == "direct" and route["direct_port"] == net.port
    code, out, err = run_main(
        ["-C", str(conf), "send", "--dry-run", "--from", SENDER, "--to", "one@b.example",
         "--subject", "s", "--body", "b"],
        prog="ssmtp-mailer",
    )  # fmt: skip
    assert code == 0, err
    assert f"MX b.example: mx.b.example [{net.ip(4)}] (MX 10)" in out


def test_test_command_checks_each_mx(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx_server(2, starttls=True, cert="self-signed", names=["mx1.a.example"])
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, out, err = run_main(
        ["-C", str(conf), "test", "--to", "one@a.example"], prog="ssmtp-mailer"
    )
    assert code == 0, out + err
    assert f"DNS: a.example: mx1.a.example [{net.ip(2)}] (MX 10)" in out
    assert f"mx1.a.example[{net.ip(2)}]:{net.port} STARTTLS: TLSv1." in out
    assert "certificate not checked" in out
    # mx2 is down: reported, but one MX that takes mail is enough.
    assert f"FAIL  mx2.a.example[{net.ip(3)}]:{net.port} TCP: connection refused" in out.replace(
        "Connection refused", "connection refused"
    )
    assert "test message: from" in out


def test_test_command_gives_the_port_25_hint_on_a_timeout(
    tmp_path: Path, dns_server: Callable[..., DNSServer], run_main: RunMain
) -> None:
    # 192.0.2.0/24 (TEST-NET-1) is never routed: a connection attempt there times out,
    # as port 25 does on a cloud host that blocks it.
    zone: Zone = {
        "far.example": [("MX", "10 mx.far.example.")],
        "mx.far.example": [("A", "192.0.2.25")],
    }
    dns = dns_server(zone)
    path = tmp_path / "ssmtp-mailer.conf"
    path.write_text(
        f"[global]\ndefault_hostname = sender.example\nspool_dir = {tmp_path / 'spool'}\n"
        f"dns_servers = {dns.nameserver}\nconnection_timeout = 1\n\n"
        "[domain:sender.example]\ndelivery_mode = direct\n"
    )
    code, out, _ = run_main(["-C", str(path), "test", "--to", "x@far.example"], prog="ssmtp-mailer")
    assert code == 75
    assert "mx.far.example[192.0.2.25]:25 TCP:" in out
    assert "cloud providers" in out and "port 25" in out


def test_config_check_accepts_the_direct_keys_and_warns_on_a_relay_route(
    tmp_path: Path, run_main: RunMain
) -> None:
    path = tmp_path / "ssmtp-mailer.conf"
    path.write_text(
        "[global]\ndefault_hostname = sender.example\n\n"
        "[domain:sender.example]\ndelivery_mode = direct\ndirect_port = 2525\n"
        "direct_tls = verify\n\n"
        "[domain:relay.example]\nsmtp_server = smtp.relay.example\ndirect_port = 2525\n"
    )
    code, out, err = run_main(["-C", str(path), "config", "check"], prog="ssmtp-mailer")
    assert code == 0, err
    assert "direct_port: used only with delivery_mode = direct or hybrid" in out + err
    path.write_text(path.read_text().replace("direct_tls = verify", "direct_tls = strict"))
    code, out, err = run_main(["-C", str(path), "config", "check"], prog="ssmtp-mailer")
    assert code == 78
    assert "direct_tls" in out + err and "opportunistic" in out + err


def test_shipped_hybrid_example_passes_config_check(run_main: RunMain) -> None:
    example = Path(__file__).resolve().parent.parent / "etc" / "examples" / "hybrid-delivery.conf"
    code, out, err = run_main(["-C", str(example), "config", "check"], prog="ssmtp-mailer")
    assert (code, err) == (0, ""), out


def test_a_broken_tls_handshake_is_retried_in_clear_when_opportunistic(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    # The MX offers STARTTLS, says 220 and hangs up: its TLS is broken, its SMTP is not.
    broken = mx_server(2, starttls=True, fault="drop-starttls", names=["mx1.a.example"])
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert broken.connections == 2
    assert [m.tls for m in broken.messages] == [False]


def test_an_mx_silent_after_ehlo_is_waited_for_once_and_named_so(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """No reply to the first EHLO: that is no broken TLS, so no second connection (and
    second read_timeout) in clear, and the error says EHLO, not STARTTLS."""
    silent = mx_server(2, starttls=True, fault="stall-ehlo", names=["mx1.a.example"])
    zone = zone_for(net)
    zone["a.example"] = [("MX", "10 mx1.a.example.")]
    conf = write_config(tmp_path, dns_server(zone), net, global_="read_timeout = 1")
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert code == 0 and "queued as " in err
    assert "EHLO: timed out" in err and "STARTTLS" not in err
    assert silent.connections == 1


def test_a_starttls_the_mx_refuses_is_done_without_when_opportunistic(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """STARTTLS offered, then 454: with TLS only opportunistic the mail goes in clear, as
    Postfix's `may` does; it used to wait in the queue for days, then bounce."""
    refusing = mx_server(2, starttls=True, fault="454-starttls", names=["mx1.a.example"])
    zone = zone_for(net)
    zone["a.example"] = [("MX", "10 mx1.a.example.")]
    conf = write_config(tmp_path, dns_server(zone), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert [m.tls for m in refusing.messages] == [False]


def test_an_mx_that_greets_with_5xx_is_skipped_for_the_next(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """A 554 greeting refuses this client, not the recipient: the backup MX takes the
    message (it went to failed/ with a bounce); with no MX left, it waits in the queue."""
    refusing = mx_server(2, fault="554-connect")
    backup = mx_server(3)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert refusing.messages == [] and len(backup.messages) == 1
    backup.fault = "554-connect"
    code, _, err = sendmail(run_main, conf, "two@a.example")
    assert code == 0 and "queued as " in err, err
    assert [e["recipients"] for e in queue_list(run_main, conf)] == [["two@a.example"]]


def test_no_reply_to_the_dot_sends_the_message_to_no_other_mx(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """MX1 has the whole message and says nothing (slow content scanning): MX2 must not
    get a second copy, nor the relay of a hybrid route; the message waits in the queue."""
    slow = mx_server(2, fault="stall-data-end")
    backup = mx_server(3)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net, global_="read_timeout = 1")
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert code == 0 and "queued as " in err, err
    assert "after the whole message was sent" in err
    assert len(slow.messages) == 0 and backup.connections == 0
    assert [e["recipients"] for e in queue_list(run_main, conf)] == [["one@a.example"]]


def test_an_address_literal_goes_to_that_address(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    host = mx_server(6)
    dns = dns_server(zone_for(net))
    conf = write_config(tmp_path, dns, net)
    code, _, err = sendmail(run_main, conf, f"postmaster@[{net.ip(6)}]")
    assert (code, err) == (0, "")
    assert [m.rcpt_tos for m in host.messages] == [[f"postmaster@[{net.ip(6)}]"]]
    assert sum(dns.queries.values()) == 0


def test_an_address_literal_with_direct_tls_verify_checks_the_ip_in_the_certificate(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
    ca_file: Path,
) -> None:
    """`x@[IP]` under direct_tls = verify: the certificate names the IP; checked against
    `[IP]`, brackets and all, it never matched and the message waited for days."""
    host = mx_server(6, starttls=True, names=[net.ip(6)])
    route = f"direct_tls = verify\nssl_ca_file = {ca_file}\n"
    conf = write_config(tmp_path, dns_server(zone_for(net)), net, route)
    code, _, err = sendmail(run_main, conf, f"postmaster@[{net.ip(6)}]")
    assert (code, err) == (0, "")
    assert [m.tls for m in host.messages] == [True]


def test_a_null_mx_beside_a_real_one_is_ignored(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx1 = mx_server(2)
    zone = zone_for(net)
    zone["a.example"] = [("MX", "0 ."), ("MX", "10 mx1.a.example.")]
    conf = write_config(tmp_path, dns_server(zone), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert len(mx1.messages) == 1


def test_hybrid_queues_when_the_relay_refuses_too(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    smtp_server_factory: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    # Every MX is down and the relay refuses the message: the direct path's failure was
    # temporary, so the message waits in the queue for the MX hosts to come back.
    relay = smtp_server_factory(fault="554-data-end")
    route = (
        "delivery_mode = hybrid\n"
        f"smtp_server = 127.0.0.1\nsmtp_port = {relay.port}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    conf = write_config(tmp_path, dns_server(zone_for(net)), net, route)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert code == 0 and "queued as" in err
    assert "no MX host took the message" in err and "through the relay" in err
    assert len(relay.rejected) == 1
    [entry] = queue_list(run_main, conf)
    assert entry["recipients"] == ["one@a.example"]


def _test_hybrid_route(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    relay: SMTPTestServer,
    run_main: RunMain,
) -> tuple[int, dict[str, Any]]:
    """`test --to x@b.example --json` on a hybrid route whose relay is `relay`."""
    route = (
        "delivery_mode = hybrid\n"
        f"smtp_server = 127.0.0.1\nsmtp_port = {relay.port}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    conf = write_config(tmp_path, dns_server(zone_for(net)), net, route)
    code, out, _ = run_main(
        ["-C", str(conf), "test", "--to", "x@b.example", "--json"], prog="ssmtp-mailer"
    )
    [report] = json.loads(out)["routes"]
    return code, report


def test_test_command_on_a_hybrid_route_checks_the_mx_and_the_relay(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    mx_server(4)
    code, report = _test_hybrid_route(tmp_path, net, dns_server, smtp_server, run_main)
    assert code == 0, report
    names = [s["name"] for s in report["steps"]]
    assert "DNS" in names and f"mx.b.example[{net.ip(4)}]:{net.port} STARTTLS" in names
    assert "relay TCP connect" in names and "relay AUTH" in names
    assert names[-1] == "test message"


def test_test_command_on_a_hybrid_route_whose_mx_fails_still_checks_the_relay(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    """No MX host answers (port 25 blocked, say): the relay, which hybrid falls back to,
    is checked too, and the report says that mail still goes out through it."""
    code, report = _test_hybrid_route(tmp_path, net, dns_server, smtp_server, run_main)
    assert code == 75, report
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["relay TCP connect"]["ok"] and steps["relay AUTH"]["ok"]
    assert steps["hybrid"]["hint"].startswith("mail still goes out, through the relay")
    assert smtp_server.messages == []


def test_queue_run_shares_one_connection_per_mx(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    for n in range(3):
        code, _, err = sendmail(run_main, conf, f"r{n}@a.example")
        assert code == 0 and "queued as" in err
    mx1 = mx_server(2, pipelining=True)
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    assert len(mx1.messages) == 3
    # Three entries for one MX: one connection, RSET between transactions (SPEC §6 reuse),
    # MAIL, RCPT and DATA pipelined.
    assert mx1.connections == 1
    assert any(waiting for verb, waiting in mx1.commands if verb == "RCPT")


def test_hybrid_sends_a_greylisted_recipient_through_the_relay(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    mx1 = mx_server(2, fault="451-rcpt:grey@a.example")
    route = (
        "delivery_mode = hybrid\n"
        f"smtp_server = 127.0.0.1\nsmtp_port = {smtp_server.port}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    conf = write_config(tmp_path, dns_server(zone_for(net)), net, route)
    code, _, err = sendmail(run_main, conf, "grey@a.example", "one@a.example")
    assert (code, err) == (0, "")
    assert [m.rcpt_tos for m in mx1.messages] == [["one@a.example"]]
    assert [m.rcpt_tos for m in smtp_server.messages] == [["grey@a.example"]]
    assert queue_list(run_main, conf) == []
    [line] = log_lines(tmp_path)
    assert "path=direct+relay" in line and "outcome=sent" in line


def test_direct_queues_a_greylisted_recipient_alone(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx1 = mx_server(2, fault="451-rcpt:grey@a.example")
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "grey@a.example", "one@a.example")
    assert code == 0 and "queued as" in err
    assert [m.rcpt_tos for m in mx1.messages] == [["one@a.example"]]
    [entry] = queue_list(run_main, conf)
    assert entry["recipients"] == ["grey@a.example"]
    mx1.fault = None
    code, _, err = run_main(["-C", str(conf), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    assert [m.rcpt_tos for m in mx1.messages] == [["one@a.example"], ["grey@a.example"]]


def test_recipients_refused_by_several_servers_are_each_named_with_theirs(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """One MX defers a recipient, another domain has no host up: each refused address is
    named with the server (or domain) that refused it and its reply, not every server,
    then every reply."""
    mx_server(2, fault="451-rcpt:grey@a.example")  # mx2.a.example and c.example are down
    mx_b = mx_server(4, fault="550-rcpt:gone@b.example")
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "x@c.example", "grey@a.example", "one@a.example")
    [entry] = queue_list(run_main, conf)
    mx1, c = f"mx1.a.example[{net.ip(2)}]:{net.port}", f"c.example[{net.ip(5)}]:{net.port}"
    reason = (
        "[domain:sender.example] direct delivery: "
        f"x@c.example: c.example: 451 no MX host took the message: {c}: connection refused; "
        f"grey@a.example: {mx1}: 451 4.2.0 <grey@a.example>: Recipient address rejected: "
        "Mailbox busy"
    )
    assert (code, err) == (0, f"ssmtp-mailer: queued as {entry['id']}: {reason}\n")
    code, out, err = run_main(["-C", str(conf), "queue", "show", entry["id"]], prog="ssmtp-mailer")
    assert code == 0, err
    assert f"  {reason}\n" in out
    # Refused for good by a domain and by a server: failed/ names each with its own.
    code, _, err = sendmail(run_main, conf, "nobody@null.example", "gone@b.example", "ok@b.example")
    assert code == 0, err
    assert [m.rcpt_tos for m in mx_b.messages] == [["ok@b.example"]]
    [failed] = [e for e in queue_list(run_main, conf, "--failed") if e["sender"] == SENDER]
    code, out, err = run_main(["-C", str(conf), "queue", "show", failed["id"]], prog="ssmtp-mailer")
    assert code == 0, err
    mx_b_label = f"mx.b.example[{net.ip(4)}]:{net.port}"
    assert (
        "Reason:       [domain:sender.example] direct delivery: nobody@null.example: "
        "null.example: 556 null.example publishes a null MX: it accepts no mail (RFC 7505); "
        f"gone@b.example: {mx_b_label}: 550 5.1.1 <gone@b.example>: Recipient address "
        "rejected: User unknown\n"
    ) in out


def test_addresses_are_looked_up_only_as_far_as_the_attempts_get(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx_server(2)
    dns = dns_server(zone_for(net))
    conf = write_config(tmp_path, dns, net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    # mx1's A record worked: neither its AAAA nor the backup MX was asked for.
    assert dns.count("mx1.a.example", "A") == 1
    assert dns.count("mx1.a.example", "AAAA") == 0 and dns.count("mx2.a.example") == 0


def test_no_mta_sts_record_is_cached_for_the_soa_minimum(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    mx_server(2)
    zone = zone_for(net)
    # The zone's SOA comes with every negative answer (RFC 2308); its minimum is 600 s.
    zone["a.example"].append(("SOA", "ns.a.example. admin.a.example. 1 3600 600 86400 600"))
    dns = dns_server(zone)
    conf = write_config(tmp_path, dns, net)
    for _ in range(2):
        code, _, err = sendmail(run_main, conf, "one@a.example")
        assert (code, err) == (0, "")
    assert dns.count("_mta-sts.a.example", "TXT") == 1
    # Without an SOA (zone_for's b.example) the absence is asked again each time.
    mx_server(4)
    for _ in range(2):
        code, _, err = sendmail(run_main, conf, "three@b.example")
        assert (code, err) == (0, "")
    assert dns.count("_mta-sts.b.example", "TXT") == 2


def test_test_command_on_a_direct_catch_all_needs_a_recipient(
    tmp_path: Path, net: Net, dns_server: Callable[..., DNSServer], run_main: RunMain
) -> None:
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    conf.write_text(conf.read_text().replace("[domain:sender.example]", "[domain:*]"))
    code, out, _ = run_main(["-C", str(conf), "test"], prog="ssmtp-mailer")
    assert code == 78
    assert "FAIL  configuration: a direct route is checked against a recipient domain's MX" in out
    assert "--to someone@example.com" in out


def test_a_query_one_server_drops_delays_only_what_needs_it(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """Name servers that drop queries for one name or type (the optional _mta-sts TXT, an
    AAAA) are met on the internet. One such timeout made every later lookup of the
    message 'not asked': a.example, b.example and c.example were all queued, on every
    retry, until the message bounced."""
    mx_a, mx_b, host_c = mx_server(2), mx_server(4), mx_server(5)
    dns = dns_server(zone_for(net))
    dns.dropped |= {("_mta-sts.a.example", "TXT"), ("c.example", "AAAA")}
    conf = write_config(tmp_path, dns, net)
    conf.write_text(conf.read_text().replace("connection_timeout = 3", "connection_timeout = 1"))
    code, _, err = sendmail(run_main, conf, "one@a.example", "two@b.example", "three@c.example")
    assert (code, err) == (0, "")
    # c.example's A answered: its address is used though its AAAA never was.
    assert [m.rcpt_tos for m in (*mx_a.messages, *mx_b.messages, *host_c.messages)] == [
        ["one@a.example"],
        ["two@b.example"],
        ["three@c.example"],
    ]


def test_the_second_dns_server_is_asked_when_the_first_is_silent(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """`dns_servers = A, B` with A down: the first server had the whole timeout to itself,
    so B was never asked and the message was queued."""
    mx1 = mx_server(2)
    real = dns_server(zone_for(net))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # takes the questions, answers none
        host, port = silent.getsockname()
        conf = write_config(tmp_path, real, net)
        conf.write_text(
            conf.read_text().replace(
                f"dns_servers = {real.nameserver}",
                f"dns_servers = {host}:{port}, {real.nameserver}",
            )
        )
        code, _, err = sendmail(run_main, conf, "one@a.example")
    assert (code, err) == (0, "")
    assert [m.rcpt_tos for m in mx1.messages] == [["one@a.example"]]


def test_every_mx_refusing_a_utf8_address_refuses_it_at_once(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """Two MX hosts without SMTPUTF8: the message was queued and retried for days, where
    one such MX gave the EX_DATAERR and the hint at once."""
    mx1, mx2 = mx_server(2), mx_server(3)
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "jörg@a.example")
    assert code == 65, err
    assert "needs SMTPUTF8" in err and "queued" not in err
    assert mx1.messages == mx2.messages == []
    assert queue_list(run_main, conf) == []


def test_an_mx_naming_a_host_without_an_address_is_refused_not_queued(
    tmp_path: Path, net: Net, dns_server: Callable[..., DNSServer], run_main: RunMain
) -> None:
    """RFC 5321 §5.1: MX records none of which is usable are an error. The DNS answered
    (nothing failed), so waiting in the queue for days changes nothing (Postfix bounces
    such mail as "Host not found")."""
    zone = zone_for(net)
    zone["ghost.example"] = [("MX", "10 nothing.ghost.example."), ("MX", "20 mx.void.example.")]
    zone["void.example"] = [("TXT", "here, with no mx host")]
    conf = write_config(tmp_path, dns_server(zone), net)
    code, _, err = sendmail(run_main, conf, "one@ghost.example")
    assert code == 67, err
    assert "no MX host has an address" in err and "queued" not in err
    assert queue_list(run_main, conf) == []


def test_an_mx_refusing_the_message_is_named_the_mx(
    tmp_path: Path,
    net: Net,
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """There is no relay on a direct route: a 554 at the end of DATA is the MX's."""
    mx_server(2, fault="554-data-end")
    conf = write_config(tmp_path, dns_server(zone_for(net)), net)
    code, _, err = sendmail(run_main, conf, "one@a.example")
    assert code == 65, err
    assert "the MX refused the message: end of DATA: 554" in err and "relay" not in err
