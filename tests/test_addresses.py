"""One address model: what intake accepts, every mapping can match; what it cannot, intake refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from relayconf import write_relay_config
from smtpserver import SMTPTestServer

from ssmtp_mailer.addresses import address_key, address_problem, has_domain, qualify, split_address

Run = Callable[..., tuple[int, str, str]]
MAPPING = """
[mapping:forward]
from_pattern = *@in.example
to_pattern = *@out.example
"""


def write(tmp_path: Path, server: SMTPTestServer) -> Path:
    path = write_relay_config(tmp_path / "m.conf", server.port)
    path.write_text(path.read_text() + MAPPING)
    return path


@pytest.mark.parametrize(
    "recipient",
    ["l" * 65 + "@in.example", "user@[1.2.3.999]", "user@exa_mple..com"],
)
def test_what_rewriting_would_not_take_is_refused_at_intake(
    tmp_path: Path, smtp_server: SMTPTestServer, run_main: Run, recipient: str
) -> None:
    config = write(tmp_path, smtp_server)
    code, _, err = run_main(["-C", str(config), recipient], b"Subject: s\n\nbody\n")
    assert code == 64
    assert len(err.splitlines()) == 1 and "recipient" in err
    code, _, err = run_main(
        ["-C", str(config), "-t"], f"To: {recipient}\nSubject: s\n\nb\n".encode()
    )
    assert code == 65
    assert smtp_server.messages == []


def test_a_quoted_local_part_with_an_at_sign_is_rewritten_by_its_mapping(
    tmp_path: Path, smtp_server: SMTPTestServer, run_main: Run
) -> None:
    config = write(tmp_path, smtp_server)
    code, _, err = run_main(["-C", str(config), '"a@b"@in.example'], b"Subject: s\n\nbody\n")
    assert code == 0, err
    [received] = smtp_server.messages
    assert received.rcpt_tos == ['"a@b"@out.example']


def test_route_refuses_what_intake_refuses(
    tmp_path: Path, smtp_server: SMTPTestServer, run_main: Run
) -> None:
    config = write(tmp_path, smtp_server)
    code, _, err = run_main(
        ["route", "-C", str(config), "--from", "me@host.example", "--to", "user@[1.2.3.999]"],
        prog="ssmtp-mailer",
    )
    assert code == 64 and "address literal" in err
    code, out, _ = run_main(
        [
            "route",
            "-C",
            str(config),
            "--from",
            "me@host.example",
            "--to",
            'Name <"a@b"@in.example>',
        ],
        prog="ssmtp-mailer",
    )
    assert code == 0 and '"a@b"@out.example' in out


def test_model() -> None:
    assert split_address('"a@b"@x.example') == ('"a@b"', "x.example")
    assert split_address('"a@b"') == ('"a@b"', "")
    assert not has_domain('"a@b"') and has_domain("a@b")
    assert qualify('"a@b"', "host.example") == '"a@b"@host.example'
    assert qualify("root", "host.example") == "root@host.example" and qualify("", "h") == ""
    assert address_key('"Alice"@Example.COM.') == address_key("alice@example.com")
    assert address_problem("user@example.com.") is None
    assert address_problem("a@[IPv6:::1]") is None and address_problem("a@[127.0.0.1]") is None
    assert "254 octets" in (address_problem("a" * 60 + "@" + ".".join(["b" * 60] * 4)) or "")
    assert "UTF-8" in (address_problem("a\udcff@x.example") or "")
    assert "no domain" in (address_problem("root") or "")
