"""DKIM verification for tests: dkimpy, with keys read from the test DNS server over the wire."""

from __future__ import annotations

from collections.abc import Callable

import dkim  # type: ignore[import-untyped, unused-ignore]
import dns.exception
import dns.resolver
from dnsserver import DNSServer


def resolver_for(server: DNSServer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameserver_ports = {server.host: server.port}
    resolver.nameservers = [server.host]
    resolver.lifetime = 5
    return resolver


def dnsfunc_for(server: DNSServer) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` that asks `server` for the TXT record, as a verifier would."""
    resolver = resolver_for(server)

    def get_txt(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii").rstrip("."), "TXT")
        except dns.exception.DNSException:
            return None
        return b"".join(next(iter(answer)).strings)

    return get_txt


def signatures(data: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature in `data`, first header first."""
    parsed = dkim.DKIM(data)
    out = []
    for name, value in parsed.headers:
        if name.lower() == b"dkim-signature":
            tags = dkim.util.parse_tag_value(value)
            out.append({k: b"".join(v.split()) for k, v in tags.items()})
    return out


def verify_each(data: bytes, server: DNSServer) -> list[tuple[str, str, bool]]:
    """(selector, algorithm, verified) for every signature in `data`."""
    dnsfunc = dnsfunc_for(server)
    out = []
    for index, tags in enumerate(signatures(data)):
        try:
            ok = bool(dkim.DKIM(data).verify(idx=index, dnsfunc=dnsfunc))
        except dkim.DKIMException:  # dkimpy raises on some mismatches (body hash)
            ok = False
        out.append((tags[b"s"].decode(), tags[b"a"].decode(), ok))
    return out
