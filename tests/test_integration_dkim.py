"""DKIM through the real Postfix relay: signed on the way out, verified from its Maildir.

The keys come from `dkim keygen` and are served by the test DNS server; dkimpy verifies
each delivered message by querying that server, as a receiving MTA would. The relay is
the one tests/test_integration_postfix.py's `relay` fixture provides.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_integration_postfix as postfix_tier
from dkimverify import signatures, verify_each
from dnsserver import DNSServer
from relayconf import RunMain
from test_integration_postfix import SLOW_AUTH, route_for, wait_in_maildir
from test_relay import make_config

pytestmark = pytest.mark.integration
# The Postfix tier's own fixture: the running relay, held against restarts while in use.
relay = postfix_tier.relay

SELECTORS = {"rsa": ["rsa2026"], "ed25519": ["mana2026"], "both": ["mana2026", "rsa2026"]}
ALGORITHMS = {"rsa2026": "rsa-sha256", "mana2026": "ed25519-sha256"}


@pytest.fixture
def zone(run_main: RunMain, tmp_path: Path, dns_server: Callable[..., DNSServer]) -> DNSServer:
    records: dict[str, list[Any]] = {}
    for selector, algorithm in (("rsa2026", "rsa"), ("mana2026", "ed25519")):
        code, out, err = run_main(
            ["dkim", "keygen", "--domain", "example.com", "--selector", selector,
             "--algorithm", algorithm, "--out", str(tmp_path / "ssl" / f"{selector}.pem"), "--json"],
            prog="ssmtp-mailer",
        )  # fmt: skip
        assert code == 0, err
        key = json.loads(out)
        records[key["name"]] = [("TXT", key["value"])]
    return dns_server(records)


def signing_config(
    tmp_path: Path, relay: dict[str, str], selectors: list[str], **extra: Any
) -> Path:
    keys = route_for(relay, **extra)
    keys["dkim_selector"] = selectors
    keys["dkim_key_file"] = [f"{s}.pem" for s in selectors]
    make_config(tmp_path, global_=SLOW_AUTH, **keys)
    return tmp_path / "ssmtp-mailer.conf"


def message(token: str) -> bytes:
    # An 8-bit body, a folded Subject and a folded To, as mail from cron or mutt has.
    return (
        f"From: relay-user@example.com\n"
        f"To: inbox@example.net,\n"
        f"    other@example.net\n"
        f"Subject: integration {token} with a subject long enough that the mail user\n"
        f"\tagent folded it\n"
        f"Message-ID: <{token}@client.test.example>\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset=utf-8\n"
        f"Content-Transfer-Encoding: 8bit\n"
        f"\n"
        f"token {token}\n"
        f".leading dot line\n"
        f"Gr\u00fc\u00dfe aus K\u00f6ln\n"
    ).encode()


def verified(
    relay: dict[str, str], token: str, zone: DNSServer
) -> tuple[bytes, list[tuple[str, str, bool]]]:
    # Postfix's virtual(8) stores LF line ends; a verifier works on the CRLF wire form.
    delivered = wait_in_maildir(relay, token).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return delivered, verify_each(delivered, zone)


@pytest.mark.parametrize("kind", list(SELECTORS))
def test_signed_through_postfix_verifies(
    kind: str, relay: dict[str, str], zone: DNSServer, tmp_path: Path, run_main: RunMain
) -> None:
    selectors = SELECTORS[kind]
    config = signing_config(tmp_path, relay, selectors)
    token = uuid.uuid4().hex
    code, _, err = run_main(["-C", str(config), "-i", "-t"], stdin=message(token))
    assert code == 0, err
    delivered, results = verified(relay, token, zone)
    assert results == [(s, ALGORITHMS[s], True) for s in selectors]
    assert "Grüße aus Köln".encode() in delivered
    # Postfix added Received/Return-Path above the signatures; they are not signed.
    for tags in signatures(delivered):
        assert b"received" not in tags[b"h"].lower().split(b":")
    tampered = delivered.replace(b"K\xc3\xb6ln", b"Bonn")
    assert [ok for _, _, ok in verify_each(tampered, zone)] == [False] * len(selectors)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_queued_then_delivered_through_postfix_verifies(
    relay: dict[str, str], zone: DNSServer, tmp_path: Path, run_main: RunMain
) -> None:
    selectors = SELECTORS["both"]
    down = signing_config(tmp_path, relay, selectors, smtp_port=_closed_port())
    token = uuid.uuid4().hex
    code, _, err = run_main(["-C", str(down), "-i", "-t"], stdin=message(token))
    assert code == 0 and "queued as" in err, err
    (queued,) = (tmp_path / "spool" / "queue").glob("*.msg")
    assert len(signatures(queued.read_bytes())) == 2
    up = signing_config(tmp_path, relay, selectors)
    code, _, err = run_main(["-C", str(up), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    delivered, results = verified(relay, token, zone)
    assert results == [(s, ALGORITHMS[s], True) for s in selectors]
    # Exactly the two signatures made before queueing: the retry did not sign again.
    assert len(signatures(delivered)) == 2
