"""The test DNS server answers real dnspython queries like an authoritative server."""

from __future__ import annotations

from collections.abc import Callable

import dns.resolver
import pytest
from dnsserver import DNSServer, txt_strings


def _resolver(server: DNSServer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameserver_ports = {server.host: server.port}
    resolver.nameservers = [server.host]
    resolver.lifetime = 5
    return resolver


ZONE = {
    "example.com": [("MX", "10 mx.example.com."), ("TXT", "v=spf1 -all"), ("A", "192.0.2.1")],
    "mx.example.com": [("A", "192.0.2.25"), ("AAAA", "2001:db8::25", 60)],
    "www.example.com": [("CNAME", "mx.example.com.")],
    "null.example": [("MX", "0 .")],
    "25.2.0.192.in-addr.arpa": [("PTR", "mx.example.com.")],
    "long.example.com": [("TXT", "p=" + "A" * 600)],
    "sub.deep.example.com": [("A", "192.0.2.9")],
}


def test_answers_each_type_with_its_ttl(dns_server: Callable[..., DNSServer]) -> None:
    server = dns_server(ZONE)
    resolver = _resolver(server)
    mx = resolver.resolve("example.com", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mx.example.com.")]
    assert mx.response.flags & dns.flags.AA
    aaaa = resolver.resolve("mx.example.com", "AAAA")
    assert (
        [r.address for r in aaaa] == ["2001:db8::25"]
        and aaaa.rrset is not None
        and aaaa.rrset.ttl == 60
    )
    assert [r.target.to_text() for r in resolver.resolve("25.2.0.192.in-addr.arpa", "PTR")] == [
        "mx.example.com."
    ]
    null = resolver.resolve("null.example", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in null] == [(0, ".")]


def test_cname_is_followed_and_unknown_names_are_nxdomain(
    dns_server: Callable[..., DNSServer],
) -> None:
    resolver = _resolver(dns_server(ZONE))
    answer = resolver.resolve("WWW.Example.com", "A")
    assert [r.address for r in answer] == ["192.0.2.25"]
    assert answer.canonical_name.to_text().lower() == "mx.example.com."
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nothing.example.com", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("mx.example.com", "MX")
    # A name with names below it exists (NODATA), it is not NXDOMAIN.
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("deep.example.com", "A")


def test_long_txt_is_split_and_big_answers_go_over_tcp(
    dns_server: Callable[..., DNSServer],
) -> None:
    server = dns_server(ZONE)
    resolver = _resolver(server)
    answer = resolver.resolve("long.example.com", "TXT")
    strings = next(iter(answer)).strings
    assert [len(s) for s in strings] == [255, 255, 92]
    assert b"".join(strings) == b"p=" + b"A" * 600
    assert txt_strings("x" * 256) == ("x" * 255, "x")
    # 602 octets of TXT do not fit in 512: truncated over UDP, then asked again over TCP.
    assert [t for n, _, t in server.log if n == "long.example.com"] == ["udp", "tcp"]


def test_counts_queries_per_name_and_the_zone_can_change(
    dns_server: Callable[..., DNSServer],
) -> None:
    server = dns_server(ZONE)
    resolver = _resolver(server)
    for _ in range(3):
        resolver.resolve("example.com", "MX")
    resolver.resolve("example.com", "TXT")
    assert server.count("example.com", "MX") == 3
    assert server.count("EXAMPLE.com.") == 4
    server.set("example.com", [("MX", "20 other.example.")])
    assert [r.exchange.to_text() for r in resolver.resolve("example.com", "MX")] == [
        "other.example."
    ]
    server.reset_counts()
    assert server.count("example.com") == 0
    assert server.nameserver == f"127.0.0.1:{server.port}"
