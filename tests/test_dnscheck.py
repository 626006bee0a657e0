"""`dns check` against a real DNS server on loopback: a correct zone passes, each fault is named."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkimverify
import pytest
from dnsserver import DNSServer, Zone
from relayconf import RunMain
from stsserver import PolicyServer

from ssmtp_mailer import spf
from ssmtp_mailer.config.model import HostPort
from ssmtp_mailer.dnscheck import Resolver
from ssmtp_mailer.relay import hints

IP = "192.0.2.10"


def keygen(run_main: RunMain, path: Path, selector: str, algorithm: str) -> dict[str, Any]:
    code, out, err = run_main(
        [
            "dkim",
            "keygen",
            "--domain",
            "example.com",
            "--selector",
            selector,
            "--algorithm",
            algorithm,
            "--out",
            str(path),
            "--json",
        ],
        prog="ssmtp-mailer",
    )
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


@pytest.fixture
def keys(run_main: RunMain, tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "rsa2026": keygen(run_main, tmp_path / "ssl" / "rsa2026.pem", "rsa2026", "rsa"),
        "mana2026": keygen(run_main, tmp_path / "ssl" / "mana2026.pem", "mana2026", "ed25519"),
    }


def good_zone(keys: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    return {
        "example.com": [
            ("MX", "10 mail.example.com."),
            ("TXT", "v=spf1 a:mail.example.com include:_spf.relay.example ~all"),
            ("TXT", "google-site-verification=abc"),
        ],
        "mail.example.com": [("A", IP)],
        "_spf.relay.example": [("TXT", "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8::/32 -all")],
        "_dmarc.example.com": [
            ("TXT", "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com")
        ],
        "10.2.0.192.in-addr.arpa": [("PTR", "mail.example.com.")],
        "_smtp._tls.example.com": [("TXT", "v=TLSRPTv1; rua=mailto:tls@example.com")],
        **{k["name"]: [("TXT", k["value"])] for k in keys.values()},
    }


def write_config(tmp_path: Path, server: DNSServer, route: str = "") -> Path:
    path = tmp_path / "ssmtp-mailer.conf"
    path.write_text(
        f"""[global]
default_hostname = host.example
dns_servers = {server.nameserver}

[domain:example.com]
smtp_server = {route or "relay.internal.example"}
dkim_selector = mana2026, rsa2026
dkim_key_file = mana2026.pem, rsa2026.pem
"""
    )
    return path


def dns_check(run_main: RunMain, config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = run_main(
        ["-C", str(config), "dns", "check", "example.com", "--json", *args], prog="ssmtp-mailer"
    )
    assert err == ""
    return code, json.loads(out), out


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def test_correct_zone_passes(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    server = dns_server(good_zone(keys))
    config = write_config(tmp_path, server)
    code, report, _ = dns_check(run_main, config, "--ip", IP)
    checks = by_name(report)
    assert code == 0 and report["ok"] is True, checks
    assert {n: c["status"] for n, c in checks.items()} == {
        "MX": "ok",
        "SPF": "ok",
        "SPF lookups": "ok",
        f"SPF for {IP}": "ok",
        "DKIM mana2026": "ok",
        "DKIM rsa2026": "ok",
        "DMARC": "ok",
        "PTR": "ok",
        "MTA-STS": "skip",
        "TLS-RPT": "ok",
    }
    assert checks["SPF lookups"]["summary"] == "2 of 10"
    assert checks[f"SPF for {IP}"]["summary"] == "pass (a:mail.example.com)"
    assert (
        checks["DMARC"]["summary"]
        == "_dmarc.example.com: p=quarantine, rua=mailto:postmaster@example.com"
    )
    assert checks["PTR"]["summary"] == f"{IP} -> mail.example.com -> {IP}"
    assert report["resolvers"] == [server.nameserver]
    assert server.count("rsa2026._domainkey.example.com", "TXT") == 1
    # The text form: a checklist, and the same verdict.
    code, out, err = run_main(
        ["-C", str(config), "dns", "check", "example.com", "--ip", IP], prog="ssmtp-mailer"
    )
    assert code == 0 and err == ""  # no progress when stderr is not a terminal
    assert out.splitlines()[0] == f"DNS check for example.com (resolvers: {server.nameserver})"
    assert "[ok  ] DKIM rsa2026: rsa2026._domainkey.example.com: k=rsa, matches" in out
    assert "[ -- ] MTA-STS: not published" in out
    assert out.endswith("all required checks passed\n")


def _spf(zone: dict[str, list[Any]], *records: str) -> None:
    zone["example.com"] = [r for r in zone["example.com"] if r[0] != "TXT"] + [
        ("TXT", r) for r in records
    ]


def _no_spf(zone: dict[str, list[Any]]) -> None:
    _spf(zone)


def _two_spf(zone: dict[str, list[Any]]) -> None:
    _spf(zone, "v=spf1 mx -all", "v=spf1 include:_spf.relay.example ~all")


def _ip_not_covered(zone: dict[str, list[Any]]) -> None:
    _spf(zone, "v=spf1 ip4:192.0.2.99 -all")


def _eleven_lookups(zone: dict[str, list[Any]]) -> None:
    _spf(
        zone,
        "v=spf1 " + " ".join(f"include:i{n}.example" for n in range(1, 12)) + f" ip4:{IP} -all",
    )
    for n in range(1, 12):
        zone[f"i{n}.example"] = [("TXT", "v=spf1 ip4:198.51.100.1 -all")]


def _three_voids(zone: dict[str, list[Any]]) -> None:
    _spf(zone, f"v=spf1 a:x1.example a:x2.example a:x3.example ip4:{IP} -all")


def _dkim_mismatch(zone: dict[str, list[Any]]) -> None:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    spki = other.public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
    zone["rsa2026._domainkey.example.com"] = [
        ("TXT", "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode())
    ]


def _dkim_tag(tag: str) -> Callable[[dict[str, list[Any]]], None]:
    def spoil(zone: dict[str, list[Any]]) -> None:
        name = "rsa2026._domainkey.example.com"
        zone[name] = [(kind, text.replace("k=rsa;", f"k=rsa; {tag};")) for kind, text in zone[name]]

    return spoil


def _dkim_version_last(zone: dict[str, list[Any]]) -> None:
    name = "rsa2026._domainkey.example.com"
    zone[name] = [(kind, text.replace("v=DKIM1; ", "") + "; v=DKIM1") for kind, text in zone[name]]


def _plus_all(zone: dict[str, list[Any]]) -> None:
    _spf(zone, f"v=spf1 ip4:{IP} +all")


def _no_dmarc(zone: dict[str, list[Any]]) -> None:
    del zone["_dmarc.example.com"]


def _ptr_mismatch(zone: dict[str, list[Any]]) -> None:
    zone["10.2.0.192.in-addr.arpa"] = [("PTR", "host-10.isp.example.")]
    zone["host-10.isp.example"] = [("A", "203.0.113.7")]


def _null_mx(zone: dict[str, list[Any]]) -> None:
    zone["example.com"] = [r for r in zone["example.com"] if r[0] != "MX"] + [("MX", "0 .")]


@pytest.mark.parametrize(
    ("spoil", "check", "summary", "publish"),
    [
        (_no_spf, "SPF", "no SPF record", 'example.com. IN TXT "v=spf1 ip4:192.0.2.10 ~all"'),
        (
            _two_spf,
            "SPF",
            "2 SPF records: that is a permanent error (RFC 7208 §4.5)",
            'example.com. IN TXT "v=spf1 ',  # one record: both records' mechanisms, merged
        ),
        (
            _ip_not_covered,
            f"SPF for {IP}",
            f"fail (-all): {IP} is not authorised to send for example.com",
            'example.com. IN TXT "v=spf1 ip4:192.0.2.99 ip4:192.0.2.10 -all"',
        ),
        (
            _eleven_lookups,
            "SPF lookups",
            "11 DNS lookups, more than the 10 RFC 7208 §4.6.4 allows",
            None,
        ),
        (
            _three_voids,
            "SPF lookups",
            "3 of its lookups find nothing (a:x1.example, a:x2.example, a:x3.example)",
            None,
        ),
        (
            _dkim_mismatch,
            "DKIM rsa2026",
            "rsa2026._domainkey.example.com: the published key is not the public half of",
            'rsa2026._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=MIIB',
        ),
        (
            _dkim_tag("s=web"),
            "DKIM rsa2026",
            "rsa2026._domainkey.example.com: s=web: the key is not for email, verifiers ignore it (RFC 6376 §3.6.1)",
            'rsa2026._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=MIIB',
        ),
        (
            _dkim_tag("h=sha1"),
            "DKIM rsa2026",
            "rsa2026._domainkey.example.com: h=sha1: our signatures are sha256, which it rules out (RFC 6376 §3.6.1)",
            'rsa2026._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=MIIB',
        ),
        (
            _dkim_version_last,
            "DKIM rsa2026",
            "rsa2026._domainkey.example.com: v=DKIM1 is not the first tag",
            'rsa2026._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=MIIB',
        ),
        (
            _plus_all,
            "SPF all",
            "+all: every host on the internet passes SPF for example.com",
            f'example.com. IN TXT "v=spf1 ip4:{IP} ~all"',
        ),
        (
            _no_dmarc,
            "DMARC",
            "no DMARC record at _dmarc.example.com",
            '_dmarc.example.com. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"',
        ),
        (
            _ptr_mismatch,
            "PTR",
            f"{IP} -> host-10.isp.example, but host-10.isp.example -> 203.0.113.7 (not forward-confirmed)",
            f"host-10.isp.example. IN A {IP}",
        ),
        (
            _null_mx,
            "MX",
            "null MX (RFC 7505): the domain says it receives no mail",
            "example.com. IN MX 10 mail.example.com.",
        ),
    ],
    ids=[
        "no-spf",
        "two-spf",
        "ip-not-covered",
        "11-lookups",
        "three-void-lookups",
        "dkim-mismatch",
        "dkim-not-for-email",
        "dkim-sha1-only",
        "dkim-version-last",
        "plus-all",
        "no-dmarc",
        "ptr-mismatch",
        "null-mx",
    ],
)
def test_each_fault_is_named_with_the_record_to_publish(
    spoil: Callable[[dict[str, list[Any]]], None],
    check: str,
    summary: str,
    publish: str | None,
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    zone = good_zone(keys)
    spoil(zone)
    config = write_config(tmp_path, dns_server(zone))
    code, report, _ = dns_check(run_main, config, "--ip", IP)
    assert code == 1 and report["ok"] is False
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    # Over 10 lookups, evaluating for the IP is a permanent error too, as receivers see it.
    also = [f"SPF for {IP}"] if check == "SPF lookups" else []
    assert [c["name"] for c in failed] == [check, *also], failed
    if also:  # the address added to a record that stays broken would fix nothing
        assert failed[1]["publish"] == [], failed[1]
    assert failed[0]["summary"].startswith(summary)
    if check == "SPF" and "2 SPF" in summary:
        assert set(failed[0]["publish"][0].split()) >= {"mx", "include:_spf.relay.example"}
    if publish is not None:
        assert any(line.startswith(publish) for line in failed[0]["publish"]), failed[0]["publish"]
    # The text checklist names the same fault and prints the record to publish.
    code, out, _ = run_main(
        ["-C", str(config), "dns", "check", "example.com", "--ip", IP], prog="ssmtp-mailer"
    )
    assert code == 1
    assert f"[FAIL] {check}: {summary}" in out
    if publish is not None:
        assert f"       publish: {publish}" in out
    assert out.endswith(f"{1 + len(also)} required check(s) failed: {', '.join([check, *also])}\n")


@pytest.mark.parametrize(
    ("server", "include", "ok"),
    [
        ("smtp.gmail.com", "_spf.google.com", True),
        ("smtp.gmail.com", None, False),
        # OCI: one include per sending region, as its SPF page lists them.
        ("smtp.email.eu-frankfurt-1.oci.oraclecloud.com", "eu.rp.oracleemaildelivery.com", True),
        ("smtp.email.eu-frankfurt-1.oci.oraclecloud.com", "rp.oracleemaildelivery.com", False),
        ("smtp.email.ap-tokyo-1.oci.oraclecloud.com", "ap.rp.oracleemaildelivery.com", True),
        ("smtp.email.us-ashburn-1.oci.oraclecloud.com", "rp.oracleemaildelivery.com", True),
        ("smtp.email.me-jeddah-1.oci.oraclecloud.com", "eu.rp.oracleemaildelivery.com", True),
        ("smtp-relay.brevo.com", None, False),
    ],
)
def test_relay_route_needs_its_providers_include(
    server: str,
    include: str | None,
    ok: bool,
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    zone = good_zone(keys)
    if include:
        _spf(zone, f"v=spf1 include:{include} ~all")
        zone[include] = [("TXT", "v=spf1 ip4:198.51.100.0/24 ~all")]
    config = write_config(tmp_path, dns_server(zone), route=server)
    code, report, _ = dns_check(run_main, config)
    provider = next(c for c in report["checks"] if c["name"].startswith("SPF for "))
    assert (code == 0, provider["status"]) == (ok, "ok" if ok else "fail"), report
    if not ok:
        expected = {
            "smtp.gmail.com": "_spf.google.com",
            "smtp-relay.brevo.com": "spf.brevo.com",
            "smtp.email.eu-frankfurt-1.oci.oraclecloud.com": "eu.rp.oracleemaildelivery.com",
        }[server]
        assert f"does not include {expected}" in provider["summary"]
        assert provider["publish"][0].endswith(f'include:{expected} ~all"')
    else:
        assert provider["summary"] == f"includes {include or ''}"


def test_selectors_without_keys_missing_record_and_mta_sts(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    zone = good_zone(keys)
    zone["_mta-sts.example.com"] = [("TXT", "v=STSv1; id=20260101")]
    zone["mta-sts.example.com"] = [("A", "127.0.0.1")]
    server = dns_server(zone)
    config = tmp_path / "plain.conf"
    config.write_text(f"[global]\ndns_servers = {server.nameserver}\n")
    code, report, _ = dns_check(run_main, config, "--selector", "mana2026", "--selector", "gone")
    checks = by_name(report)
    assert checks["DKIM mana2026"]["status"] == "ok"
    assert "no key configured to compare" in checks["DKIM mana2026"]["summary"]
    assert checks["DKIM gone"]["status"] == "fail"
    assert checks["DKIM gone"]["details"] == [
        "make a key and its record with: ssmtp-mailer dkim keygen --domain example.com --selector gone"
    ]
    # MTA-STS is published, so its policy must be reachable: nothing listens on 127.0.0.1:443.
    assert checks["MTA-STS"]["status"] == "fail"
    assert (
        "the policy cannot be fetched from https://mta-sts.example.com/.well-known/mta-sts.txt"
        in checks["MTA-STS"]["summary"]
    )
    assert code == 1


def test_dns_check_takes_an_idn_domain_as_its_a_label(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """`dns check bücher.example` was a usage error, though sendmail and route take it."""
    zone = {"xn--bcher-kva.example": [("MX", "10 mail.example.com."), ("TXT", "v=spf1 -all")]}
    config = write_config(tmp_path, dns_server({**good_zone(keys), **zone}))
    _, out, err = run_main(
        ["-C", str(config), "dns", "check", "bücher.example", "--json"], prog="ssmtp-mailer"
    )
    assert err == "", err
    report = json.loads(out)
    assert report["domain"] == "xn--bcher-kva.example"
    assert by_name(report)["MX"]["status"] == "ok"


def test_dns_check_bad_input(
    run_main: RunMain, tmp_path: Path, dns_server: Callable[..., DNSServer]
) -> None:
    code, _, err = run_main(
        ["dns", "check", "example.com", "--ip", "300.1.1.1"], prog="ssmtp-mailer"
    )
    assert (code, err) == (64, "ssmtp-mailer: --ip: expected an IP address, got '300.1.1.1'\n")
    config = tmp_path / "c.conf"
    config.write_text("[global]\ndns_servers = resolver.example\n")
    code, _, err = run_main(["-C", str(config), "dns", "check", "example.com"], prog="ssmtp-mailer")
    assert code == 78 and "dns_servers: expected IP addresses with optional :port" in err
    config.write_text(f"[global]\ndns_servers = {dns_server({}).nameserver}\n")
    code, _, err = run_main(
        ["-C", str(config), "dns", "check", "example.com", "--route", "nope"], prog="ssmtp-mailer"
    )
    assert (code, err) == (78, "ssmtp-mailer: --route nope: no such route (routes: none)\n")


def test_dkim_is_checked_where_the_route_signs(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """`dns check other.example --route example.com`: the route signs d=example.com
    whatever the sender's domain, so its keys are looked for there, not at other.example."""
    config = write_config(tmp_path, dns_server(good_zone(keys)))
    code, out, _ = run_main(
        ["-C", str(config), "dns", "check", "other.example", "--route", "example.com", "--json"],
        prog="ssmtp-mailer",
    )
    checks = by_name(json.loads(out))
    assert checks["DKIM mana2026"]["status"] == "ok", checks["DKIM mana2026"]
    assert "mana2026._domainkey.example.com" in json.dumps(checks["DKIM mana2026"])
    assert checks["MX"]["status"] == "fail"  # the rest is other.example's own
    assert code == 1


def test_sender_auth_hint_names_the_command() -> None:
    hint = hints.for_reply(550, "5.7.26 This message does not pass authentication checks")
    assert hint == hints.SENDER_AUTH
    assert "ssmtp-mailer dns check YOUR-DOMAIN --ip" in hint


# The SPF evaluator on its own, through the same real resolver.
SPF_ZONE: Zone = {
    "a.example": [("TXT", "v=spf1 a/24 mx:b.example -all"), ("A", "192.0.2.1")],
    "b.example": [("MX", "10 mx.b.example."), ("TXT", "v=spf1 redirect=a.example")],
    "mx.b.example": [("A", "198.51.100.5"), ("AAAA", "2001:db8::5")],
    "c.example": [("TXT", "v=spf1 include:%{d2}.missing.example ip6:2001:db8::/48 ?all")],
    "m.example": [("TXT", "v=spf1 exists:%{ir}.list.m.example -all")],
    "5.100.51.198.list.m.example": [("A", "127.0.0.2")],
    "bad.example": [("TXT", "v=spf1 ip4:1.2.3 -all")],
}


@pytest.mark.parametrize(
    ("domain", "ip", "result"),
    [
        ("a.example", "192.0.2.200", "pass"),  # a/24
        ("a.example", "198.51.100.5", "pass"),  # mx:b.example
        ("a.example", "203.0.113.1", "fail"),
        ("b.example", "192.0.2.77", "pass"),  # redirect= to a.example
        ("b.example", "2001:db8::5", "pass"),  # mx, IPv6
        (
            "c.example",
            "2001:db8:0:1::1",
            "pass",
        ),  # ip6 before the failing include is reached? no: in order
        ("m.example", "198.51.100.5", "pass"),  # exists with a reversed-IP macro
        ("m.example", "198.51.100.6", "fail"),
        ("bad.example", "192.0.2.1", "permerror"),
        ("none.example", "192.0.2.1", "none"),
    ],
)
def test_spf_check_host(
    domain: str, ip: str, result: str, dns_server: Callable[..., DNSServer]
) -> None:
    server = dns_server(SPF_ZONE)
    resolver = Resolver((HostPort(server.host, server.port),))
    got = spf.check_host(resolver, ip, domain)
    if domain == "c.example":
        # include: comes first and its target has no SPF record: a permanent error (§5.2).
        assert got.result == "permerror" and "has no SPF record" in got.why
        return
    assert got.result == result, got


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ("v=spf1 ip4:1.2.3 -all", "bad ip4 network"),
        ("v=spf1 ip4:2001:db8::1 -all", "ip4 with an IPv6 network"),
        ("v=spf1 foo:bar -all", "unknown mechanism"),
        ("v=spf1 redirect=a.example redirect=b.example", "redirect= appears twice"),
        ("v=spf1 a/33 -all", "bad IPv4 prefix length"),
        ("v=spf1 include:%{z}.example -all", "bad macro"),
        ("v=spf10 -all", "does not start with v=spf1"),
        ("v=spf1 a: -all", "no domain after the colon in 'a:'"),
        ("v=spf1 mx:/24 -all", "no domain after the colon in 'mx:/24'"),
        ("v=spf1 ptr: -all", "no domain after the colon in 'ptr:'"),
        ("v=spf1 include: -all", "include needs a domain"),
        ("v=spf1 exists: -all", "exists needs a domain"),
    ],
)
def test_spf_syntax_errors(record: str, why: str) -> None:
    with pytest.raises(spf.SpfError, match=why):
        spf.parse(record)
    assert spf.parse(
        "v=spf1 a mx/24//64 ptr ip6:2001:db8::/32 exists:%{i}.x.example ~all exp=e.example"
    )
    assert spf.parse("v=spf1 a:b.example/24//64 ptr:b.example -all")


def test_progress_only_on_a_terminal(tmp_path: Path, dns_server: Callable[..., DNSServer]) -> None:
    import os
    import pty
    import subprocess
    import sys

    server = dns_server({"example.com": [("MX", "0 .")]})
    config = tmp_path / "c.conf"
    config.write_text(f"[global]\ndns_servers = {server.nameserver}\n")
    argv = [sys.executable, "-m", "ssmtp_mailer", "-C", str(config), "dns", "check", "example.com"]
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=follower, timeout=60)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    assert done.returncode == 1
    assert b"checking MX..." in seen and b"checking DMARC..." in seen
    assert b"checking" not in done.stdout
    assert b"[FAIL] MX: null MX" in done.stdout


@contextlib.contextmanager
def published_policy(
    policy: str,
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    dns_server: Callable[..., DNSServer],
    tls_ca: Any,
    ca_file: Path,
) -> Iterator[Path]:
    """A configuration whose domain publishes `policy` at its mta-sts host (CA trusted)."""
    server = PolicyServer(tls_ca, "mta-sts.example.com", policy)
    try:
        zone = good_zone(keys)
        zone["_mta-sts.example.com"] = [("TXT", "v=STSv1; id=20260101T000000")]
        zone["mta-sts.example.com"] = [("A", server.address)]
        config = write_config(tmp_path, dns_server(zone))
        config.write_text(config.read_text() + f"ssl_ca_file = {ca_file}\n")
        yield config
    finally:
        server.stop()


def test_mta_sts_policy_is_fetched_and_verified(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
    tls_ca: Any,
    ca_file: Path,
) -> None:
    policy = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n"
    with published_policy(policy, keys, tmp_path, dns_server, tls_ca, ca_file) as config:
        code, report, _ = dns_check(run_main, config)
        mta_sts = by_name(report)["MTA-STS"]
        assert (code, mta_sts["status"]) == (0, "ok"), mta_sts
        assert mta_sts["summary"] == "mode=enforce, mx=mail.example.com"
        # Without the CA the certificate is not trusted: a published policy that cannot be
        # fetched over verified HTTPS is a failure.
        config.write_text(config.read_text().replace(f"ssl_ca_file = {ca_file}\n", ""))
        code, report, _ = dns_check(run_main, config)
        mta_sts = by_name(report)["MTA-STS"]
        assert (code, mta_sts["status"]) == (1, "fail")
        assert "CERTIFICATE_VERIFY_FAILED" in mta_sts["summary"]


@pytest.mark.parametrize(
    ("policy", "status", "said"),
    [
        ("mode: enforce\nmx: other.example.net\nmax_age: 86400\n", "fail", "does not cover"),
        ("mode: testing\nmx: other.example.net\nmax_age: 86400\n", "warn", "does not cover"),
        ("mode: enforce\nmax_age: 86400\n", "fail", "is not valid"),
        ("mode: enforce\nmx: mail.example.com\nmax_age: soon\n", "fail", "is not valid"),
        ("mode: enforce\nmx: *.example.com\nmax_age: 86400\n", "ok", "mx=*.example.com"),
        ("mode: enforce\nmx: mail.example.com\nmax_age: 99999999999\n", "fail", "is over the"),
    ],
    ids=["mx-elsewhere", "testing-mx-elsewhere", "no-mx", "bad-max-age", "wildcard", "max-age"],
)
def test_an_mta_sts_policy_senders_would_ignore_or_trip_on_is_not_ok(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
    tls_ca: Any,
    ca_file: Path,
    policy: str,
    status: str,
    said: str,
) -> None:
    """Read as a sending MTA reads it (RFC 8461 §3.2, §4.1): a policy that does not cover
    the domain's own MX, or that senders discard, was once reported OK."""
    text = "version: STSv1\n" + policy
    with published_policy(text, keys, tmp_path, dns_server, tls_ca, ca_file) as config:
        code, report, _ = dns_check(run_main, config)
    mta_sts = by_name(report)["MTA-STS"]
    assert mta_sts["status"] == status and said in mta_sts["summary"], mta_sts
    assert code == (1 if status == "fail" else 0)


@pytest.mark.parametrize(
    "rows", [[("MX", "0 ."), ("MX", "10 mail.example.com.")], [("MX", "10 .")]]
)
def test_a_null_mx_beside_others_or_not_at_zero_is_named_as_such(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
    rows: list[tuple[str, str]],
) -> None:
    zone = good_zone(keys)
    zone["example.com"] = [r for r in zone["example.com"] if r[0] != "MX"] + rows
    code, report, _ = dns_check(run_main, write_config(tmp_path, dns_server(zone)))
    mx = by_name(report)["MX"]
    assert code == 1 and mx["status"] == "fail" and "RFC 7505 §3" in mx["summary"], mx
    assert "address of  " not in str(mx)


def test_void_lookups_are_found_without_an_address_to_try(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """Three a: names that do not exist: receivers give permerror for every sender, yet
    without --ip the record was "SPF ok, 3 of 10"."""
    zone = good_zone(keys)
    _three_voids(zone)
    code, report, _ = dns_check(run_main, write_config(tmp_path, dns_server(zone)))
    lookups = by_name(report)["SPF lookups"]
    assert code == 1 and lookups["status"] == "fail", lookups
    assert lookups["summary"].startswith("3 of its lookups find nothing")


def test_a_testing_dkim_key_and_an_spf_ptr_are_warned_of(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    zone = good_zone(keys)
    _dkim_tag("t=y")(zone)
    _spf(zone, f"v=spf1 ptr ip4:{IP} -all")
    code, report, _ = dns_check(run_main, write_config(tmp_path, dns_server(zone)))
    checks = by_name(report)
    assert code == 0  # warnings, not required checks
    assert checks["DKIM rsa2026"]["status"] == "warn"
    assert "t=y: a key in testing" in checks["DKIM rsa2026"]["summary"]
    assert checks["SPF ptr"]["status"] == "warn"


def test_an_mx_naming_an_alias_is_warned_of(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """An MX pointing at a CNAME passed as ok; RFC 2181 §10.3 forbids it."""
    zone = good_zone(keys)
    zone["example.com"] = [r for r in zone["example.com"] if r[0] != "MX"] + [
        ("MX", "10 alias.example.com.")
    ]
    zone["alias.example.com"] = [("CNAME", "mail.example.com.")]
    code, report, _ = dns_check(run_main, write_config(tmp_path, dns_server(zone)))
    mx = by_name(report)["MX"]
    assert mx["status"] == "warn" and code == 0, mx  # a warning, not a required check
    assert mx["summary"].startswith(
        "MX host alias.example.com is an alias (CNAME) of mail.example.com"
    )
    assert mx["publish"] == ["example.com. IN MX 10 mail.example.com."]


@pytest.mark.parametrize(
    ("record", "said"),
    [
        ("v=dmarc1; p=reject", "v=dmarc1, expected v=DMARC1 exactly"),
        ("v=DMARC1; p=reject; pct=200", "pct=200, expected 0 to 100"),
        (
            "v=DMARC1; p=reject; rua=postmaster@example.com",
            "rua=postmaster@example.com: a report address is a URI, as mailto:",
        ),
        ("v=DMARC1; p=reject; sp=bogus", "sp=bogus, expected none or quarantine or reject"),
        ("v=DMARC1; p=reject; adkim=x", "adkim=x, expected r or s"),
        ("v=DMARC1; p=reject; fo=9", "fo=9, expected options of 0, 1, d and s"),
        ("v=DMARC1; p=reject; ri=abc", "ri=abc, expected seconds"),
    ],
    ids=["lower-case-version", "pct-over-100", "rua-not-a-uri", "sp", "adkim", "fo", "ri"],
)
def test_a_dmarc_record_receivers_would_ignore_fails(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
    record: str,
    said: str,
) -> None:
    zone = good_zone(keys)
    zone["_dmarc.example.com"] = [("TXT", record)]
    code, report, _ = dns_check(run_main, write_config(tmp_path, dns_server(zone)))
    dmarc = by_name(report)["DMARC"]
    assert code == 1 and dmarc["status"] == "fail" and said in dmarc["summary"], dmarc
    assert dmarc["publish"] == [
        '_dmarc.example.com. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"'
    ]


def test_an_optional_record_whose_lookup_fails_is_a_warning(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """MTA-STS and TLS-RPT are checked when published: a lookup of theirs that times out
    or gets SERVFAIL failed the run, though the same records absent are optional."""
    server = dns_server(good_zone(keys))
    server.servfail.add(("_mta-sts.example.com", "TXT"))
    server.dropped.add(("_smtp._tls.example.com", "TXT"))
    config = write_config(tmp_path, server)
    code, report, _ = dns_check(run_main, config, "--ip", IP)
    checks = by_name(report)
    for name in ("MTA-STS", "TLS-RPT"):
        assert checks[name]["status"] == "warn" and checks[name]["required"] is False
        assert checks[name]["summary"].startswith("DNS lookup failed: ")
    assert code == 0 and report["ok"] is True
    server.dropped.clear()  # one time-out (5 s) is enough
    server.servfail.add(("_smtp._tls.example.com", "TXT"))
    code, out, _ = run_main(
        ["-C", str(config), "dns", "check", "example.com", "--ip", IP], prog="ssmtp-mailer"
    )
    assert code == 0 and "[warn] MTA-STS: DNS lookup failed: " in out
    assert out.endswith("all required checks passed\n")
    # A required record's failed lookup still fails the run.
    server.servfail.add(("_dmarc.example.com", "TXT"))
    code, report, _ = dns_check(run_main, config, "--ip", IP)
    dmarc = by_name(report)["DMARC"]
    assert (code, dmarc["status"], dmarc["required"]) == (1, "fail", True)


@pytest.mark.parametrize("term", ["a:", "mx:", "ptr:", "include:", "exists:"])
def test_a_term_with_an_empty_domain_is_an_invalid_record(
    term: str,
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """`v=spf1 a: -all` was ok: RFC 7208 §5 makes an empty domain-spec a permerror."""
    zone = good_zone(keys)
    _spf(zone, f"v=spf1 {term} ip4:{IP} -all")
    code, out, _ = run_main(
        ["-C", str(write_config(tmp_path, dns_server(zone))), "dns", "check", "example.com"],
        prog="ssmtp-mailer",
    )
    assert code == 1
    assert "[FAIL] SPF: invalid SPF record: " in out and f"'{term}'" in out, out


@pytest.mark.parametrize(
    ("records", "summary"),
    [
        (
            {"gone.example": [("A", "192.0.2.1")]},
            "include:gone.example: gone.example has no SPF record, so receivers give permerror"
            " (RFC 7208 §5.2)",
        ),
        (
            {"gone.example": [("TXT", "v=spf1 ip4:1.2.3 -all")]},
            "include:gone.example: the SPF record of gone.example is invalid (bad ip4 network in"
            " 'ip4:1.2.3'), so receivers give permerror (RFC 7208 §5.2)",
        ),
    ],
    ids=["no-record", "invalid-record"],
)
def test_a_broken_include_fails_the_spf_check_saying_why(
    records: dict[str, list[Any]],
    summary: str,
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """An include of a domain without a (valid) SPF record was "[ok] SPF", then an
    "SPF lookups" failure that spoke of the 10-lookup limit."""
    zone = {**good_zone(keys), **records}
    _spf(zone, f"v=spf1 include:gone.example ip4:{IP} -all")
    config = write_config(tmp_path, dns_server(zone))
    code, report, _ = dns_check(run_main, config)
    checks = by_name(report)
    assert code == 1 and checks["SPF"]["status"] == "fail", checks["SPF"]
    assert checks["SPF"]["summary"] == summary
    assert checks["SPF lookups"] == {**checks["SPF lookups"], "status": "ok", "summary": "1 of 10"}
    code, out, _ = run_main(["-C", str(config), "dns", "check", "example.com"], prog="ssmtp-mailer")
    assert f"[FAIL] SPF: {summary}\n" in out and "[ok  ] SPF lookups: 1 of 10\n" in out
    assert out.endswith("1 required check(s) failed: SPF\n")


@pytest.mark.parametrize(
    ("records", "summary"),
    [
        (
            {"b.example": [("TXT", "v=spf1 include:example.com -all")]},
            "include:b.example > include:example.com: loops back to example.com, whose record"
            " is being evaluated: receivers go round until the 10-lookup limit, then give"
            " permerror (RFC 7208 §4.6.4)",
        ),
        (
            {"b.example": [("TXT", "v=spf1 ip4:198.51.100.9 include:B.example. -all")]},
            "include:b.example > include:B.example.: loops back to b.example, whose record"
            " is being evaluated: receivers go round until the 10-lookup limit, then give"
            " permerror (RFC 7208 §4.6.4)",
        ),
        (
            {
                "b.example": [("TXT", "v=spf1 include:c.example -all")],
                "c.example": [("TXT", "v=spf1 redirect=b.example")],
            },
            "include:b.example > include:c.example > redirect=b.example: loops back to"
            " b.example, whose record is being evaluated: receivers go round until the"
            " 10-lookup limit, then give permerror (RFC 7208 §4.6.4)",
        ),
        (
            {},
            "include:b.example: b.example has no SPF record, so receivers give permerror"
            " (RFC 7208 §5.2)",
        ),
        (
            {"b.example": [("A", "192.0.2.1")]},
            "include:b.example: b.example has no SPF record, so receivers give permerror"
            " (RFC 7208 §5.2)",
        ),
    ],
    ids=["loop-back", "loop-to-itself", "loop-through-redirect", "nxdomain", "no-spf-record"],
)
def test_the_spf_record_to_publish_leaves_out_an_include_receivers_fail_on(
    records: dict[str, list[Any]],
    summary: str,
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """The record to publish kept an include that loops or names no SPF record: a
    permerror at receivers (RFC 7208 §4.6.4, §5.2), so it would fail as the old one did."""
    zone = good_zone(keys)
    zone.update(records)
    _spf(zone, f"v=spf1 include:b.example ip4:{IP} include:_spf.relay.example +all")
    config = write_config(tmp_path, dns_server(zone), route="smtp.gmail.com")
    code, report, _ = dns_check(run_main, config, "--ip", IP)
    checks = by_name(report)
    fixed = (
        f'example.com. IN TXT "v=spf1 ip4:{IP} include:_spf.relay.example'
        ' include:_spf.google.com ~all"'
    )
    left_out = "the record to publish leaves out include:b.example: receivers give permerror there"
    assert code == 1 and checks["SPF"]["summary"] == summary, checks["SPF"]
    assert left_out in checks["SPF"]["details"]
    # The loop is the record's fault, not a lookup count over the limit.
    assert checks["SPF lookups"]["status"] == "ok", checks["SPF lookups"]
    for name in ("SPF", "SPF all", "SPF for Gmail"):
        assert checks[name]["status"] == "fail" and checks[name]["publish"] == [fixed], name
        assert left_out in checks[name]["details"], name
    code, out, _ = run_main(
        ["-C", str(config), "dns", "check", "example.com", "--ip", IP], prog="ssmtp-mailer"
    )
    assert f"[FAIL] SPF: {summary}\n" in out
    assert f"       {left_out}\n" in out and f"       publish: {fixed}\n" in out
    assert (
        "       if that service still sends for you, correct the name or have its owner fix"
        " its record, then add it back\n" in out
    )


@pytest.mark.parametrize(
    ("record", "relay", "checks", "fixed"),
    [
        # The valid terms stay, the broken one goes; the address is covered already.
        (f"v=spf1 mx ip4:1.2.3 ip4:{IP} -all", "", ["SPF"], f"v=spf1 mx ip4:{IP} -all"),
        # An include of a name without an SPF record goes too: receivers fail on it (§5.2).
        (
            f"v=spf1 include:gone.example ip4:1.2.3 ip4:{IP} -all",
            "",
            ["SPF"],
            f"v=spf1 ip4:{IP} -all",
        ),
        # +all closed, and what the sender needs added: it was "v=spf1 ~all", nobody.
        (
            "v=spf1 +all",
            "smtp.gmail.com",
            ["SPF all", "SPF for Gmail"],
            f"v=spf1 ip4:{IP} include:_spf.google.com ~all",
        ),
        (
            "v=spf1 a:mail.example.com +all",
            "smtp.gmail.com",
            ["SPF all", "SPF for Gmail"],
            "v=spf1 a:mail.example.com include:_spf.google.com ~all",
        ),
        # The address and the relay both missing: one record that fixes both.
        (
            "v=spf1 ip4:203.0.113.2 -all",
            "smtp.gmail.com",
            [f"SPF for {IP}", "SPF for Gmail"],
            f"v=spf1 ip4:203.0.113.2 ip4:{IP} include:_spf.google.com -all",
        ),
    ],
    ids=[
        "invalid",
        "invalid-with-an-include-of-nothing",
        "plus-all-alone",
        "plus-all",
        "ip-and-relay-missing",
    ],
)
def test_the_spf_record_to_publish_keeps_the_users_terms(
    record: str,
    relay: str,
    checks: list[str],
    fixed: str,
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """An invalid record's fix was `v=spf1 mx ~all`, whatever the record said; +all's was
    `v=spf1 ~all`, which lets no one send."""
    zone = good_zone(keys)
    _spf(zone, record)
    config = write_config(tmp_path, dns_server(zone), route=relay)
    code, report, _ = dns_check(run_main, config, "--ip", IP)
    failed = {c["name"]: c["publish"] for c in report["checks"] if c["status"] == "fail"}
    line = f'example.com. IN TXT "{fixed}"'
    assert code == 1 and {n: failed.get(n) for n in checks} == {n: [line] for n in checks}, failed


@pytest.mark.parametrize(
    ("record", "status", "summary", "publish"),
    [
        (
            "p=reject; v=DMARC1",
            "fail",
            "_dmarc.example.com: v=DMARC1 is not the first tag, which RFC 7489 §6.4 requires;"
            " receivers discard the record",
            "v=DMARC1; p=reject",
        ),
        (
            "v=DMARC1; rua=mailto:dmarc@example.com",
            "warn",
            "_dmarc.example.com: no p=, but a rua= to report to: receivers act as if it said"
            " p=none (RFC 7489 §6.6.3)",
            "v=DMARC1; p=none; rua=mailto:dmarc@example.com",
        ),
    ],
    ids=["version-not-first", "no-policy-with-rua"],
)
def test_a_dmarc_record_is_read_as_receivers_read_it(
    record: str,
    status: str,
    summary: str,
    publish: str,
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """`p=reject; v=DMARC1` was "no DMARC record"; a record without p= but with a rua=
    failed, where receivers take it for p=none."""
    zone = good_zone(keys)
    zone["_dmarc.example.com"] = [("TXT", record)]
    config = write_config(tmp_path, dns_server(zone))
    code, report, _ = dns_check(run_main, config)
    dmarc = by_name(report)["DMARC"]
    assert (dmarc["status"], dmarc["summary"]) == (status, summary)
    assert dmarc["publish"] == [f'_dmarc.example.com. IN TXT "{publish}"']
    assert code == (1 if status == "fail" else 0)
    code, out, _ = run_main(["-C", str(config), "dns", "check", "example.com"], prog="ssmtp-mailer")
    assert f"[{status.upper() if status == 'fail' else status}] DMARC: {summary}\n" in out


def _dkim_upper_case_tags(zone: dict[str, list[Any]]) -> None:
    name = "rsa2026._domainkey.example.com"
    zone[name] = [
        (kind, text.replace("v=", "V=").replace("k=", "K=").replace("p=", "P="))
        for kind, text in zone[name]
    ]


def test_tag_names_are_case_sensitive(
    keys: dict[str, dict[str, Any]],
    tmp_path: Path,
    run_main: RunMain,
    dns_server: Callable[..., DNSServer],
) -> None:
    """`V=DKIM1; K=rsa; P=<the key>` was "[ok] matches", but verifiers (dkimpy among them)
    find no p= in it: RFC 6376 §3.2 tag names are case-sensitive. DMARC has the same
    syntax. (MTA-STS's id=, lower case as RFC 8461 spells it, is read as before.)"""
    import dkim  # type: ignore[import-untyped, unused-ignore]

    zone = good_zone(keys)
    _dkim_upper_case_tags(zone)
    zone["_dmarc.example.com"] = [("TXT", "v=DMARC1; P=reject")]
    name = "rsa2026._domainkey.example.com"
    server = dns_server(zone)
    with pytest.raises(dkim.KeyFormatError):  # what a verifier makes of it
        dkim.load_pk_from_dns(name.encode(), dnsfunc=dkimverify.dnsfunc_for(server))
    config = write_config(tmp_path, server)
    code, report, _ = dns_check(run_main, config)
    checks = by_name(report)
    assert code == 1
    assert checks["DKIM rsa2026"]["status"] == "fail"
    assert checks["DKIM rsa2026"]["summary"] == (
        f"{name}: V=: tag names are case-sensitive (RFC 6376 §3.2); verifiers read v= only"
    )
    assert checks["DMARC"]["status"] == "fail"
    assert checks["DMARC"]["summary"] == (
        "_dmarc.example.com: P=: tag names are case-sensitive, as in DKIM, so this is no p="
        " (RFC 7489 §6.4); receivers ignore the record"
    )
