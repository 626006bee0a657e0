"""Direct delivery to a real Postfix as the MX, found through the test DNS server.

Postfix's `trusted` port (10025, no AUTH, any client on 127.0.0.0/8) plays a recipient
domain's MX: the domain's MX record names a host whose A record is 127.0.0.1, and the
route's direct_port is that port. The relay is the one tests/test_integration_postfix.py's
`relay` fixture provides; what Postfix delivered is read from its Maildir.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import test_integration_postfix as postfix_tier
from dnsserver import DNSServer
from relayconf import RunMain
from test_integration_postfix import wait_in_maildir

pytestmark = pytest.mark.integration
relay = postfix_tier.relay


def holding(relay: dict[str, str], token: str) -> list[Path]:
    maildir = Path(relay["RELAY_MAILDIR"])
    return [
        p
        for sub in ("new", "cur")
        for p in (maildir / sub).glob("*")
        if token.encode() in p.read_bytes()
    ]


def test_postfix_as_the_mx_of_two_domains(
    relay: dict[str, str],
    tmp_path: Path,
    dns_server: Callable[..., DNSServer],
    run_main: RunMain,
) -> None:
    zone = {
        "example.net": [("MX", "10 mx.example.net.")],
        "mx.example.net": [("A", "127.0.0.1")],
        "anything.test": [("A", "127.0.0.1")],  # no MX: the domain's own address
    }
    dns = dns_server(zone)
    conf = tmp_path / "ssmtp-mailer.conf"
    conf.write_text(
        f"""[global]
default_hostname = client.test.example
spool_dir = {tmp_path / "spool"}
log_file = {tmp_path / "mail.log"}
dns_servers = {dns.nameserver}
enable_rate_limiting = false

[domain:client.test.example]
delivery_mode = direct
direct_port = {relay["RELAY_TRUSTED_PORT"]}
"""
    )
    token = uuid.uuid4().hex
    data = (
        f"From: sender@client.test.example\r\nTo: inbox@example.net\r\n"
        f"Subject: direct {token}\r\nMessage-ID: <{token}@client.test.example>\r\n\r\n"
        f"token {token}\r\n"
    ).encode()
    code, _, err = run_main(
        ["-C", str(conf), "-i", "-f", "sender@client.test.example",
         "inbox@example.net", "dave@anything.test"],
        stdin=data,
    )  # fmt: skip
    assert (code, err) == (0, "")
    delivered = wait_in_maildir(relay, token)
    assert f"token {token}".encode() in delivered
    # One file per recipient: both domains' transactions arrived.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(holding(relay, token)) < 2:
        time.sleep(0.1)
    assert len(holding(relay, token)) == 2
    lines = (tmp_path / "mail.log").read_text().splitlines()
    [line] = [x for x in lines if "outcome=sent" in x]
    assert "path=direct" in line
    port = relay["RELAY_TRUSTED_PORT"]
    assert (
        f"mx.example.net[127.0.0.1]:{port}" in line and f"anything.test[127.0.0.1]:{port}" in line
    )
