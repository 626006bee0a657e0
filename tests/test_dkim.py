"""DKIM: keys from `dkim keygen`, signing on the way out, verification against real DNS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from dkimverify import signatures, verify_each
from dnsserver import DNSServer
from relayconf import RunMain
from smtpserver import SMTPTestServer

from ssmtp_mailer.config.model import DomainConfig

DOMAIN = "example.com"


def keygen(run_main: RunMain, ssl: Path, selector: str, algorithm: str) -> dict[str, str]:
    code, out, err = run_main(
        [
            "dkim",
            "keygen",
            "--domain",
            DOMAIN,
            "--selector",
            selector,
            "--algorithm",
            algorithm,
            "--out",
            str(ssl / f"{selector}.pem"),
            "--json",
        ],
        prog="ssmtp-mailer",
    )
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def write_config(
    tmp_path: Path, port: int, selectors: list[str], extra: str = "", global_extra: str = ""
) -> Path:
    keys = ", ".join(f"{s}.pem" for s in selectors)
    dkim = f"dkim_selector = {', '.join(selectors)}\ndkim_key_file = {keys}\n" if selectors else ""
    path = tmp_path / "ssmtp-mailer.conf"
    path.write_text(
        f"""[global]
default_hostname = host.example
spool_dir = {tmp_path / "spool"}
max_retries = 0
connection_timeout = 5
enable_rate_limiting = false
{global_extra}
[domain:{DOMAIN}]
smtp_server = 127.0.0.1
smtp_port = {port}
use_starttls = false
auth_method = NONE
{dkim}{extra}
[domain:*]
smtp_server = 127.0.0.1
smtp_port = {port}
use_starttls = false
auth_method = NONE
"""
    )
    return path


@pytest.fixture
def keys(run_main: RunMain, tmp_path: Path) -> dict[str, dict[str, str]]:
    ssl = tmp_path / "ssl"
    return {
        "rsa2026": keygen(run_main, ssl, "rsa2026", "rsa"),
        "mana2026": keygen(run_main, ssl, "mana2026", "ed25519"),
    }


@pytest.fixture
def zone(keys: dict[str, dict[str, str]], dns_server: Callable[..., DNSServer]) -> DNSServer:
    return dns_server({k["name"]: [("TXT", k["value"])] for k in keys.values()})


MESSAGE = (
    "From: Ålice <alice@example.com>\n"
    "To: bob@x.example,\n"
    "   carol@x.example\n"
    "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?= and a subject long enough\n"
    "\tto be folded onto a second line\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "MIME-Version: 1.0\n"
    "\n"
    "Grüße aus Köln, 8-bit body.\n"
    "trailing spaces   \n"
).encode()


@pytest.mark.parametrize(
    "selectors",
    [["rsa2026"], ["mana2026"], ["mana2026", "rsa2026"]],
    ids=["rsa", "ed25519", "both"],
)
def test_signed_message_verifies_against_dns(
    selectors: list[str],
    keys: dict[str, dict[str, str]],
    zone: DNSServer,
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    config = write_config(tmp_path, smtp_server.port, selectors)
    code, _, err = run_main(["-C", str(config), "-t"], stdin=MESSAGE)
    assert code == 0, err
    (received,) = smtp_server.messages
    results = verify_each(received.data, zone)
    algorithms = {"rsa2026": "rsa-sha256", "mana2026": "ed25519-sha256"}
    assert results == [(s, algorithms[s], True) for s in selectors]
    for tags in signatures(received.data):
        assert tags[b"d"] == b"example.com" and tags[b"c"] == b"relaxed/relaxed"
        signed = tags[b"h"].lower().split(b":")
        # From, To, Subject over-signed, and Cc and Reply-To, absent, listed once: none of
        # them can be added. Every other SPEC header present is signed, absent ones not.
        assert [signed.count(f) for f in (b"from", b"to", b"subject", b"cc", b"reply-to")] == [
            2, 2, 2, 1, 1,
        ]  # fmt: skip
        assert set(signed) == {
            b"from",
            b"to",
            b"cc",
            b"subject",
            b"reply-to",
            b"date",
            b"message-id",
            b"mime-version",
            b"content-type",
            b"content-transfer-encoding",
        }
    assert "8BITMIME" in " ".join(received.mail_options).upper()


def test_an_obsolete_space_before_a_colon_is_signed_not_refused(
    keys: dict[str, dict[str, str]],
    zone: DNSServer,
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    """`Subject : x` is legal (RFC 5322 §4.5) and DKIM's parser refuses it: the message
    once went to failed/ with exit 70 on a signing route, and out unsigned elsewhere."""
    config = write_config(tmp_path, smtp_server.port, ["rsa2026"])
    message = b"From: app@example.com\nTo: b@x.example\nSubject : spaced\nX-Tab\t: t\n\nbody\n"
    code, _, err = run_main(["-C", str(config), "-t"], stdin=message)
    assert code == 0, err
    (received,) = smtp_server.messages
    assert verify_each(received.data, zone) == [("rsa2026", "rsa-sha256", True)]
    assert received.message()["Subject"] == "spaced" and received.message()["X-Tab"] == "t"


def test_tampered_message_fails_verification(
    keys: dict[str, dict[str, str]],
    zone: DNSServer,
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    config = write_config(tmp_path, smtp_server.port, ["mana2026", "rsa2026"])
    assert run_main(["-C", str(config), "-t"], stdin=MESSAGE)[0] == 0
    data = smtp_server.messages[0].data
    assert [ok for _, _, ok in verify_each(data, zone)] == [True, True]
    body = data.replace("Köln".encode(), b"Bonn")
    assert [ok for _, _, ok in verify_each(body, zone)] == [False, False]
    header = data.replace(b"bob@x.example", b"eve@x.example")
    assert [ok for _, _, ok in verify_each(header, zone)] == [False, False]
    # A second From, a Subject or a Reply-To added after signing breaks it: over-signed.
    for field in (b"From: mallory@evil.example", b"Subject: URGENT", b"Reply-To: m@evil.example"):
        added = field + b"\r\n" + data
        assert [ok for _, _, ok in verify_each(added, zone)] == [False, False], field
    # Relaxed canonicalisation: refolding a header and trailing whitespace still verify.
    refolded = data.replace(b"enough\r\n\tto", b"enough\r\n to").replace(b"   \r\n", b"\r\n")
    assert refolded != data
    assert [ok for _, _, ok in verify_each(refolded, zone)] == [True, True]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_queued_entry_keeps_the_signature_and_is_not_signed_again(
    keys: dict[str, dict[str, str]],
    zone: DNSServer,
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    down = write_config(tmp_path, _closed_port(), ["mana2026", "rsa2026"])
    code, _, err = run_main(["-C", str(down), "-t"], stdin=MESSAGE)
    assert code == 0 and "queued as" in err, err
    (queued,) = (tmp_path / "spool" / "queue").glob("*.msg")
    stored = queued.read_bytes()
    assert len(signatures(stored)) == 2
    # The relay comes back; the runner sends the stored bytes as they are.
    up = write_config(tmp_path, smtp_server.port, ["mana2026", "rsa2026"])
    code, _, err = run_main(["-C", str(up), "queue", "run", "--all"], prog="ssmtp-mailer")
    assert code == 0, err
    (received,) = smtp_server.messages
    assert received.data == stored
    assert [ok for _, _, ok in verify_each(received.data, zone)] == [True, True]


def test_unsigned_route_is_left_alone(
    keys: dict[str, dict[str, str]], tmp_path: Path, smtp_server: SMTPTestServer, run_main: RunMain
) -> None:
    config = write_config(tmp_path, smtp_server.port, ["rsa2026"])
    other = MESSAGE.replace(b"alice@example.com", b"alice@other.example")
    assert run_main(["-C", str(config), "-t"], stdin=other)[0] == 0
    assert signatures(smtp_server.messages[0].data) == []


def test_an_idn_route_signs_with_its_own_a_label(
    keys: dict[str, dict[str, str]], tmp_path: Path, smtp_server: SMTPTestServer, run_main: RunMain
) -> None:
    """d= for straße.example is xn--strae-oqa.example: the stdlib's IDNA 2003 made it
    strasse.example, another domain, whose DNS says nothing of our key."""
    config = write_config(tmp_path, smtp_server.port, ["rsa2026"])
    config.write_text(config.read_text().replace(f"[domain:{DOMAIN}]", "[domain:straße.example]"))
    # The sender in its A-label: this relay has no SMTPUTF8; the route is straße's all the same.
    idn = MESSAGE.replace(b"alice@example.com", b"alice@xn--strae-oqa.example")
    code, _, err = run_main(["-C", str(config), "-t"], stdin=idn)
    assert code == 0, err
    [tags] = signatures(smtp_server.messages[0].data)
    assert tags[b"d"] == b"xn--strae-oqa.example"


def test_pkcs1_rsa_key_signs_too(
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "ssl").mkdir()
    (tmp_path / "ssl" / "old.pem").write_bytes(
        key.private_bytes(s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption())
    )
    public = key.public_key().public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
    import base64

    zone = dns_server(
        {
            "old._domainkey.example.com": [
                ("TXT", "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode())
            ]
        }
    )
    config = write_config(tmp_path, smtp_server.port, ["old"])
    assert run_main(["-C", str(config), "-t"], stdin=MESSAGE)[0] == 0
    assert verify_each(smtp_server.messages[0].data, zone) == [("old", "rsa-sha256", True)]


def test_keygen_writes_0600_pkcs8_and_never_overwrites(run_main: RunMain, tmp_path: Path) -> None:
    config = tmp_path / "ssmtp-mailer.conf"
    config.write_text("[global]\nssl_dir = keys\n")
    args = ["-C", str(config), "dkim", "keygen", "--domain", "Example.COM", "--selector", "rsa2026"]
    code, out, err = run_main(args, prog="ssmtp-mailer")
    assert code == 0, err
    path = tmp_path / "keys" / "dkim-rsa2026.example.com.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    # The record to paste: its name, its value, and the zone line in 255-octet strings.
    assert "name:  rsa2026._domainkey.example.com\n" in out
    value = out.split("value: ")[1].splitlines()[0]
    assert value.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")
    line = next(
        x for x in out.splitlines() if x.startswith("rsa2026._domainkey.example.com. IN TXT ")
    )
    strings = line.split(" IN TXT ")[1].strip('"').split('" "')
    assert [len(s) for s in strings] == [255, len(value) - 255]
    assert "".join(strings) == value
    assert f"dkim_key_file = {path}" in out
    before = path.read_bytes()
    code, out, err = run_main(args, prog="ssmtp-mailer")
    assert code == 73
    assert err == f"ssmtp-mailer: {path}: exists\nssmtp-mailer: hint: pass --force to replace it\n"
    assert path.read_bytes() == before
    code, _, err = run_main([*args, "--force", "--algorithm", "ed25519"], prog="ssmtp-mailer")
    assert code == 0, err
    assert path.read_bytes() != before and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list((tmp_path / "keys").iterdir()) == [path]  # no temporary file left behind


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to group mail")
def test_keygen_group_mail_makes_a_key_the_listener_can_read(run_main: RunMain) -> None:
    """The listener drops to `mail` and signs with the keys: 0600 root's keys in a 0700
    ssl_dir were out of its reach. --group mail makes them root:mail 0640 (in a new
    directory 0750 root:mail), which the user mail reads and others do not."""
    import grp
    import pwd

    mail_gid = grp.getgrnam("mail").gr_gid
    shared = Path(tempfile.mkdtemp(prefix="dkim-group-", dir="/tmp"))  # mail can reach it
    shared.chmod(0o755)
    config = shared / "ssmtp-mailer.conf"
    config.write_text(f"[global]\nssl_dir = {shared / 'keys'}\n")
    base = ["-C", str(config), "dkim", "keygen", "--domain", DOMAIN, "--selector", "s1"]
    code, out, err = run_main([*base, "--group", "mail"], prog="ssmtp-mailer")
    assert (code, err) == (0, ""), err
    key = shared / "keys" / f"dkim-s1.{DOMAIN}.pem"
    assert "mode 0640, group mail" in out
    for path, mode in ((key, 0o640), (key.parent, 0o750)):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, mail_gid)
    mail = pwd.getpwnam("mail")
    read = subprocess.run(
        ["setpriv", f"--reuid={mail.pw_uid}", f"--regid={mail.pw_gid}", "--clear-groups",
         "head", "-c", "27", str(key)],
        capture_output=True,
    )  # fmt: skip
    assert read.stdout == b"-----BEGIN PRIVATE KEY-----", read.stderr
    # Into an existing 0700 directory the key is made, and the way to it is named.
    closed = shared / "closed"
    closed.mkdir(mode=0o700)
    code, _, err = run_main(
        [*base[:3], "keygen", "--domain", DOMAIN, "--selector", "s2", "--group", "mail",
         "--out", str(closed / "k.pem")],
        prog="ssmtp-mailer",
    )  # fmt: skip
    assert code == 0 and f"warning: group mail cannot enter {closed}" in err
    code, _, err = run_main([*base, "--group", "no-such-group", "--force"], prog="ssmtp-mailer")
    assert (code, err) == (64, "ssmtp-mailer: --group: no such group: no-such-group\n")
    shutil.rmtree(shared)


def test_keygen_names_an_idn_domain_by_its_a_label(run_main: RunMain, tmp_path: Path) -> None:
    """`--domain straße.example` was refused, though a route of that name signs with
    d=xn--strae-oqa.example: the record goes where the verifier will look."""
    out_file = tmp_path / "k.pem"
    code, out, err = run_main(
        [
            "dkim",
            "keygen",
            "--domain",
            "Straße.Example",
            "--selector",
            "s1",
            "--out",
            str(out_file),
        ],
        prog="ssmtp-mailer",
    )
    assert code == 0, err
    assert "s1._domainkey.xn--strae-oqa.example" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--domain", "bad domain", "--selector", "s"], "--domain: "),
        (["--domain", "192.0.2.1", "--selector", "s"], "--domain: expected a domain name, not"),
        (["--domain", "example.com", "--selector", "a_b"], "--selector: expected DKIM selectors"),
        (
            ["--domain", "example.com", "--selector", "s", "--bits", "512"],
            "512 is not in the range",
        ),
    ],
)
def test_keygen_bad_arguments(
    args: list[str], message: str, run_main: RunMain, tmp_path: Path
) -> None:
    code, _, err = run_main(
        ["dkim", "keygen", "--out", str(tmp_path / "k.pem"), *args], prog="ssmtp-mailer"
    )
    assert code == 64
    assert err.startswith("ssmtp-mailer: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "k.pem").exists()


def _garbage(ssl: Path) -> None:
    (ssl / "rsa2026.pem").write_text("not a key\n")


def _encrypted(ssl: Path) -> None:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.BestAvailableEncryption(b"pw"))
    (ssl / "rsa2026.pem").write_bytes(pem)


def _der_int(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return (
        b"\x02" + bytes([len(body)]) + body
        if len(body) < 128
        else b"\x02\x81" + bytes([len(body)]) + body
    )


def _small(ssl: Path) -> None:
    import base64

    # A PKCS#1 RSAPrivateKey shape with a 512-bit modulus (cryptography refuses to make one).
    fields = b"".join(_der_int(v) for v in (0, 2**511 + 1, 65537, 3, 5, 7, 11, 13, 17))
    der = b"\x30\x81" + bytes([len(fields)]) + fields
    pem = base64.encodebytes(der).decode()
    (ssl / "rsa2026.pem").write_text(
        f"-----BEGIN RSA PRIVATE KEY-----\n{pem}-----END RSA PRIVATE KEY-----\n"
    )


def _truncated(ssl: Path) -> None:
    pem = (ssl / "rsa2026.pem").read_text().splitlines()
    (ssl / "rsa2026.pem").write_text("\n".join([*pem[:5], pem[-1]]) + "\n")


def _cert(ssl: Path) -> None:
    (ssl / "rsa2026.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    )


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (_garbage, "no PEM private key in the file"),
        (_encrypted, "the key is encrypted"),
        (_small, "RSA key of 512 bits; DKIM needs at least 1024"),
        (_truncated, "truncated DER"),
        (_cert, "CERTIFICATE: not a private key"),
    ],
    ids=["garbage", "encrypted", "small", "truncated", "certificate"],
)
def test_bad_key_is_ex_config_at_check_and_at_send(
    spoil: Callable[[Path], None],
    why: str,
    keys: dict[str, dict[str, str]],
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    spoil(tmp_path / "ssl")
    config = write_config(tmp_path, smtp_server.port, ["mana2026", "rsa2026"])
    code, _, err = run_main(["-C", str(config), "config", "check"], prog="ssmtp-mailer")
    assert code == 78
    assert f"dkim_key_file: {tmp_path / 'ssl' / 'rsa2026.pem'}: {why}" in err
    code, _, err = run_main(["-C", str(config), "-t"], stdin=MESSAGE)
    assert code == 78 and why in err and "Traceback" not in err
    assert smtp_server.messages == []
    assert not list((tmp_path / "spool").glob("*/*.msg"))


@pytest.mark.parametrize(
    ("algorithm", "selectors", "why"),
    [
        (
            "rsa-sha256",
            ["mana2026", "rsa2026"],
            "dkim_algorithm = rsa-sha256, but {ssl}/mana2026.pem is an Ed25519 key",
        ),
        (
            "ed25519-sha256",
            ["rsa2026"],
            "dkim_algorithm = ed25519-sha256, but {ssl}/rsa2026.pem is an RSA key",
        ),
        (
            "both",
            ["rsa2026"],
            "dkim_algorithm = both needs an RSA and an Ed25519 key, the keys are all RSA",
        ),
    ],
)
def test_dkim_algorithm_insists(
    algorithm: str,
    selectors: list[str],
    why: str,
    keys: dict[str, dict[str, str]],
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    config = write_config(tmp_path, smtp_server.port, selectors, f"dkim_algorithm = {algorithm}\n")
    code, _, err = run_main(["-C", str(config), "config", "check"], prog="ssmtp-mailer")
    assert code == 78 and why.format(ssl=tmp_path / "ssl") in err, err


def test_config_lists_must_pair_up(
    tmp_path: Path, run_main: RunMain, keys: dict[str, dict[str, str]]
) -> None:
    config = write_config(tmp_path, 25, [], "dkim_selector = a, b\ndkim_key_file = rsa2026.pem\n")
    code, _, err = run_main(["-C", str(config), "config", "check"], prog="ssmtp-mailer")
    assert code == 78
    assert "dkim_selector and dkim_key_file: lists of equal length" in err
    config = write_config(tmp_path, 25, [], "dkim_selector = a\ndkim_key_file = missing.pem\n")
    code, _, err = run_main(["-C", str(config), "config", "check"], prog="ssmtp-mailer")
    assert code == 78 and f"dkim_key_file: {tmp_path / 'ssl' / 'missing.pem'}: no such file" in err
    config = write_config(tmp_path, 25, ["mana2026", "rsa2026"])
    code, out, err = run_main(["-C", str(config), "config", "check"], prog="ssmtp-mailer")
    assert code == 0 and "OK" in out, err


_IMPORTS = (
    "import io, sys\n"
    "from ssmtp_mailer.entry import main\n"
    "sys.stdin = io.TextIOWrapper(io.BytesIO(sys.argv[2].encode()))\n"
    "rc = main(['-C', sys.argv[1], '-t'], prog_name='sendmail')\n"
    "print(rc, sorted(m for m in ('dkim', 'nacl', 'cryptography', 'ssmtp_mailer.relay.dkim') if m in sys.modules))\n"
)


def test_dkimpy_is_imported_only_when_a_route_signs(
    keys: dict[str, dict[str, str]], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    config = write_config(tmp_path, smtp_server.port, ["mana2026", "rsa2026"])

    def run(sender: str) -> str:
        message = f"From: {sender}\nTo: bob@x.example\nSubject: s\n\nbody\n"
        done = subprocess.run(
            [sys.executable, "-c", _IMPORTS, str(config), message],
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(os.environ),
        )
        return done.stdout.strip() or done.stderr

    assert run("alice@other.example") == "0 []"
    # Signing needs dkimpy (and PyNaCl for Ed25519), never the cryptography package.
    assert run("alice@example.com") == "0 ['dkim', 'nacl', 'ssmtp_mailer.relay.dkim']"
    assert len(smtp_server.messages) == 2


def test_shipped_dkim_example_signs_with_both_keys(
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    example = Path(__file__).resolve().parent.parent / "etc" / "examples" / "dkim-signing.conf"
    text = example.read_text().replace("mail.example.com  ", "127.0.0.1  ", 1)
    text = text.replace("smtp_port = 587", f"smtp_port = {smtp_server.port}")
    text = text.replace("use_starttls = true", "use_starttls = false\nauth_method = NONE")
    text = text.replace(
        "[global]", f"[global]\nspool_dir = {tmp_path / 'spool'}\nenable_rate_limiting = false"
    )
    config = tmp_path / "dkim-signing.conf"
    config.write_text(text)
    code, _, err = run_main(["-C", str(config), "config", "check"], prog="ssmtp-mailer")
    assert code == 78 and "dkim-mana2026.example.com.pem: no such file" in err
    records = {}
    for selector, algorithm in (("mana2026", "ed25519"), ("rsa2026", "rsa")):
        code, out, err = run_main(
            ["-C", str(config), "dkim", "keygen", "--domain", DOMAIN, "--selector", selector,
             "--algorithm", algorithm, "--json"],
            prog="ssmtp-mailer",
        )  # fmt: skip
        assert code == 0, err
        key = json.loads(out)
        assert key["file"] == str(tmp_path / "ssl" / f"dkim-{selector}.example.com.pem")
        records[key["name"]] = [("TXT", key["value"])]
    code, out, err = run_main(["-C", str(config), "config", "check"], prog="ssmtp-mailer")
    assert code == 0, err
    assert run_main(["-C", str(config), "-t"], stdin=MESSAGE)[0] == 0
    zone = dns_server(records)
    assert verify_each(smtp_server.messages[0].data, zone) == [
        ("mana2026", "ed25519-sha256", True),
        ("rsa2026", "rsa-sha256", True),
    ]


def test_catch_all_route_signs_for_the_from_domain(
    keys: dict[str, dict[str, str]],
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    config = write_config(tmp_path, smtp_server.port, [])
    text = config.read_text().replace(
        "[domain:*]\n", "[domain:*]\ndkim_selector = mana2026\ndkim_key_file = mana2026.pem\n"
    )
    config.write_text(text)
    other = MESSAGE.replace(b"alice@example.com", b"alice@Other.Example")
    assert run_main(["-C", str(config), "-t"], stdin=other)[0] == 0
    (tags,) = signatures(smtp_server.messages[0].data)
    assert tags[b"d"] == b"other.example"
    zone = dns_server({"mana2026._domainkey.other.example": [("TXT", keys["mana2026"]["value"])]})
    assert verify_each(smtp_server.messages[0].data, zone) == [("mana2026", "ed25519-sha256", True)]


def test_a_route_named_relay_signs_for_the_sender_domain(
    keys: dict[str, dict[str, str]],
    zone: DNSServer,
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    """`default_domain = relay` and `[domain:relay]`: "relay" is no domain, and a d=relay
    signature fails everywhere; the sender's domain, where the key is published, signs."""
    config = write_config(
        tmp_path, smtp_server.port, ["mana2026", "rsa2026"], global_extra="default_domain = relay"
    )
    config.write_text(config.read_text().replace(f"[domain:{DOMAIN}]", "[domain:relay]"))
    assert run_main(["-C", str(config), "-f", "alice@example.com", "-t"], stdin=MESSAGE)[0] == 0
    received = smtp_server.messages[0].data
    assert [tags[b"d"] for tags in signatures(received)] == [b"example.com", b"example.com"]
    assert verify_each(received, zone) == [
        ("mana2026", "ed25519-sha256", True),
        ("rsa2026", "rsa-sha256", True),
    ]


def test_forwarded_mail_is_signed_for_the_relay_account_not_the_strangers_from(
    keys: dict[str, dict[str, str]],
    zone: DNSServer,
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    """A catch-all route forwarding an outsider's mail: the envelope is our relay_account,
    From stays the stranger's. Signing as the stranger's domain (a key record that is not
    there) fails at every receiver; the relay_account's domain is ours."""
    config = write_config(tmp_path, smtp_server.port, [])
    config.write_text(
        config.read_text().replace(
            "[domain:*]\n",
            "[domain:*]\nrelay_account = relay@example.com\n"
            "dkim_selector = mana2026\ndkim_key_file = mana2026.pem\n",
        )
        + "\n[mapping:contact]\nfrom_pattern = contact@mailer.example.net\n"
        "to_pattern = owner@x.example\n"
    )
    letter = b"From: Stranger <stranger@other.org>\nTo: contact@mailer.example.net\n\nhello\n"
    code, _, err = run_main(["-C", str(config), "-f", "stranger@other.org", "-t"], stdin=letter)
    assert code == 0, err
    (received,) = smtp_server.messages
    assert received.mail_from == "relay@example.com"
    assert received.message()["From"] == "Stranger <stranger@other.org>"
    (tags,) = signatures(received.data)
    assert tags[b"d"] == b"example.com"
    assert verify_each(received.data, zone) == [("mana2026", "ed25519-sha256", True)]


def test_a_signing_key_others_may_read_is_warned_of(
    keys: dict[str, dict[str, str]], tmp_path: Path, run_main: RunMain
) -> None:
    """Anyone who reads the key can sign as the domain: config check says so (an error
    with --strict), as it does for a password file."""
    config = write_config(tmp_path, 2525, ["rsa2026"])
    key = tmp_path / "ssl" / "rsa2026.pem"
    assert run_main(["config", "check", "-C", str(config)], prog="ssmtp-mailer")[2] == ""
    key.chmod(0o644)
    code, _, err = run_main(["config", "check", "-C", str(config)], prog="ssmtp-mailer")
    assert code == 0
    assert "dkim_key_file: holds a DKIM private key but is readable by others (mode 0644)" in err
    assert f"chmod 600 {key}" in err
    code, _, _ = run_main(["config", "check", "--strict", "-C", str(config)], prog="ssmtp-mailer")
    assert code == 78


def _without_pynacl(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python has no PyNaCl (a zipapp's, a bare venv's)."""
    fake = tmp_path / "no-nacl" / "nacl"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no PyNaCl here')\n")
    return {**os.environ, "PYTHONPATH": str(fake.parent)}


def test_without_pynacl_an_ed25519_route_keeps_nothing_to_send_unsigned(
    keys: dict[str, dict[str, str]], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """Signing failed after the route was chosen, and the message was kept unsigned: the
    listener queued it with a 250 and the queue later delivered it with no signature (a
    DMARC p=reject domain loses it); sendmail said 78 and left an unsigned failed/ copy."""
    config = write_config(tmp_path, smtp_server.port, ["mana2026"])
    env = _without_pynacl(tmp_path)
    sendmail = [sys.executable, "-m", "ssmtp_mailer", "sendmail", "-C", str(config), "-t"]
    run = subprocess.run(sendmail, input=MESSAGE, capture_output=True, env=env, timeout=60)
    assert run.returncode == 78
    assert b"mana2026.pem: Ed25519 signing needs PyNaCl (Debian: python3-nacl)" in run.stderr
    assert not list((tmp_path / "spool").glob("*/*.msg"))
    listen = [sys.executable, "-m", "ssmtp_mailer", "--config", str(config), "listen"]
    listen += ["--address", "127.0.0.1:0"]
    # Run as listen_user (mail), the listener cannot read root's 0600 key: it says so
    # at start, not with a 451 to every message.
    run = subprocess.run(listen, capture_output=True, timeout=60)
    assert run.returncode == 78 and b"mana2026.pem: cannot read: Permission denied" in run.stderr
    config.write_text(config.read_text().replace("[global]\n", "[global]\nlisten_user = root\n"))
    run = subprocess.run(listen, capture_output=True, env=env, timeout=60)
    assert run.returncode == 78 and b"needs PyNaCl" in run.stderr
    assert smtp_server.messages == []


def test_a_message_the_listener_cannot_sign_is_never_queued_unsigned(
    keys: dict[str, dict[str, str]],
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    run_main: RunMain,
) -> None:
    """A catch-all route signs as the sender's domain; an address literal is none (d= must
    be a domain name). The listener queued such a message unsigned, and the queue sent it."""
    from test_listener import Listener, run_queue

    config = write_config(tmp_path, smtp_server.port, [], global_extra="listen_user = root\n")
    text = config.read_text().replace(
        "[domain:*]\n", "[domain:*]\ndkim_selector = mana2026\ndkim_key_file = mana2026.pem\n"
    )
    config.write_text(text)
    config.write_text(
        config.read_text().replace("[global]\n", "[global]\nallowed_networks = 127.0.0.1/32\n")
    )
    listener = Listener(config)
    try:
        with listener.client() as client:
            client.ehlo()
            code, reply = client.mail("app@[127.0.0.1]")
            assert code == 250, reply
            assert client.rcpt("out@far.example")[0] == 250
            code, reply = client.data(b"Subject: literal\r\n\r\nbody\r\n")
        # For good: a 451 brought the client back, and each time another copy in failed/.
        assert code == 554 and b"d= must be a domain name" in reply
    finally:
        listener.stop()
    assert not list((tmp_path / "spool" / "queue").glob("*.msg"))
    assert len(list((tmp_path / "spool" / "failed").glob("*.msg"))) == 1
    run_queue(config)
    assert smtp_server.messages == []


def test_sighup_with_a_key_the_listener_cannot_use_keeps_the_old_configuration(
    keys: dict[str, dict[str, str]], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    from test_listener import Listener

    config = write_config(
        tmp_path, smtp_server.port, ["rsa2026"], global_extra="listen_user = root\n"
    )
    listener = Listener(config)
    try:
        (tmp_path / "ssl" / "garbage.pem").write_text("not a key\n")
        config.write_text(config.read_text().replace("rsa2026.pem", "garbage.pem"))
        listener.process.send_signal(signal.SIGHUP)
        listener.wait_for("keeping the old one")
        assert "garbage.pem" in listener.wait_for("garbage.pem")
        with listener.client() as client:
            assert client.sendmail("alice@example.com", ["bob@x.example"], MESSAGE) == {}
        (tags,) = signatures(smtp_server.wait_for(1)[0].data)
        assert tags[b"s"] == b"rsa2026"
    finally:
        listener.stop()


def test_a_failure_notice_through_a_signing_route_is_signed(
    keys: dict[str, dict[str, str]],
    zone: DNSServer,
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    run_main: RunMain,
) -> None:
    """SPEC §6: the route signs every message; the notice telling alice@example.com of a
    refused recipient went out through it with no signature."""
    server = smtp_server_factory(fault="550-rcpt:carol@x.example")
    config = write_config(tmp_path, server.port, ["rsa2026"])
    # Only the signing route: the notice (from <>) goes back the way the message went.
    text = config.read_text()
    config.write_text(text[: text.index("[domain:*]")])
    code, _, err = run_main(["-C", str(config), "-t"], stdin=MESSAGE)
    assert code == 0 and "carol@x.example" in err
    _, notice = server.wait_for(2)
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == ["alice@example.com"]
    assert verify_each(notice.data, zone) == [("rsa2026", "rsa-sha256", True)]
    (tags,) = signatures(notice.data)
    assert tags[b"d"] == b"example.com"


def test_a_route_through_amazon_ses_leaves_message_id_and_date_unsigned(
    keys: dict[str, dict[str, str]], zone: DNSServer, tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    """SES replaces Message-ID and Date, and says not to sign them ("Manual DKIM signing in
    Amazon SES"): our signature over them broke on every message through it."""
    from ssmtp_mailer.config.loader import load_config
    from ssmtp_mailer.relay import dkim

    config = load_config(str(write_config(tmp_path, smtp_server.port, ["rsa2026"])))
    route = config.domains[DOMAIN]
    ses = route._replace(smtp_server="email-smtp.eu-west-1.amazonaws.com")
    message = MESSAGE.replace(b"\n", b"\r\n").replace(
        b"MIME-Version", b"Message-ID: <1@example.com>\r\nMIME-Version"
    )

    def signed_by(relay: DomainConfig) -> tuple[bytes, list[bytes]]:
        signer = dkim.signer_for(relay)
        assert signer is not None
        data = dkim.sign(signer, message, "alice@example.com")
        (tags,) = signatures(data)
        return data, tags[b"h"].lower().split(b":")

    plain, fields = signed_by(route)
    assert b"message-id" in fields
    through_ses, fields = signed_by(ses)
    assert b"message-id" not in fields and b"date" not in fields and b"from" in fields
    # What SES does to the message after us breaks the one signature, not the other.
    theirs = (b"<1@example.com>", b"<0100018c@email.amazonses.com>")
    assert verify_each(through_ses.replace(*theirs), zone) == [("rsa2026", "rsa-sha256", True)]
    assert verify_each(plain.replace(*theirs), zone) == [("rsa2026", "rsa-sha256", False)]
