"""A real authoritative DNS server on a loopback port for tests (dnspython, UDP and TCP).

Never a mocked resolver: the code under test sends real queries to this server, exactly
as it would to the system's, and reads real answers.

    zone = {
        "example.com": [("MX", "10 mx.example.com."), ("TXT", "v=spf1 -all")],
        "mx.example.com": [("A", "192.0.2.25"), ("AAAA", "2001:db8::25")],
        "www.example.com": [("CNAME", "example.com.")],
        "null.example": [("MX", "0 .")],                       # RFC 7505 null MX
        "25.2.0.192.in-addr.arpa": [("PTR", "mx.example.com.")],
        "k._domainkey.example.com": [("TXT", ("v=DKIM1; k=rsa; p=MIIB...", "...rest"))],
        "cached.example": [("MX", "10 a.example.", 30)],         # a TTL of 30 s
        "soa.example": [("SOA", "ns.soa.example. admin.soa.example. 1 3600 600 86400 60")],
    }
    with DNSServer(zone) as dns:
        dns.nameserver          # "127.0.0.1:PORT", what `dns_servers` takes
        dns.count("example.com", "MX")   # queries answered for that name and type
        dns.set("example.com", [("MX", "20 other.example.")])   # change while running

Records are `(type, value)` or `(type, value, ttl)` (TTL default 300). Values are rdata in
zone-file text, except TXT: a `str` is one record whose text is split into 255-octet
strings, a `tuple` of `str` gives the strings explicitly. Names are case-insensitive,
absolute, written without the final dot. A name with a CNAME answers every other type
with the CNAME plus the target's records when the target is in the zone. A name that
is not in the zone (and has no names below it) is NXDOMAIN; a name without the asked
type is NOERROR with no answer. Either negative answer carries the SOA of the nearest
name above (or at) the name that has one, as a real server does (RFC 2308), so a
resolver may cache it for the SOA's minimum. Every answer is authoritative (AA). A UDP answer larger
than the client's limit (512 octets, or its EDNS payload size) is sent truncated (TC)
so the client retries over TCP, as with a real server.

`dns_server` is a pytest fixture factory: `dns_server(zone)` starts a server that
stops when the test ends.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import pytest

__all__ = ["DNSServer", "Record", "Zone", "dns_server", "txt_strings"]

Value = str | tuple[str, ...]
Record = tuple[str, Value] | tuple[str, Value, int]
Zone = Mapping[str, Sequence[Record]]

DEFAULT_TTL = 300


def txt_strings(text: str) -> tuple[str, ...]:
    """`text` as the 255-octet strings a TXT record holds it in."""
    data = text.encode("utf-8")
    return tuple(data[i : i + 255].decode("utf-8") for i in range(0, len(data), 255)) or ("",)


def _quote(strings: Sequence[str]) -> str:
    return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings)


def _key(name: str) -> str:
    return name.rstrip(".").lower()


class _Records:
    """The zone as rdatasets, built once per `set`."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict[int, dns.rdataset.Rdataset]] = {}

    def put(self, name: str, records: Sequence[Record]) -> None:
        sets: dict[int, dns.rdataset.Rdataset] = {}
        for record in records:
            rtype, value = record[0].upper(), record[1]
            ttl = record[2] if len(record) > 2 else DEFAULT_TTL  # type: ignore[misc, unused-ignore]
            rdtype = dns.rdatatype.from_text(rtype)
            if rdtype == dns.rdatatype.TXT:
                strings = txt_strings(value) if isinstance(value, str) else tuple(value)
                text = _quote(strings)
            else:
                assert isinstance(value, str), f"{rtype} value must be text"
                text = value
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)
            rdataset = sets.setdefault(rdtype, dns.rdataset.Rdataset(dns.rdataclass.IN, rdtype))
            rdataset.add(rdata, ttl)
        if sets:
            self.by_name[_key(name)] = sets
        else:
            self.by_name.pop(_key(name), None)

    def exists(self, name: str) -> bool:
        suffix = "." + name
        return name in self.by_name or any(n.endswith(suffix) for n in self.by_name)


class DNSServer:
    """An authoritative server for `zone` on `host` (UDP and TCP on one port)."""

    def __init__(self, zone: Zone | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._records = _Records()
        self._lock = threading.Lock()
        self.queries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.log: list[tuple[str, str, str]] = []  # (name, type, "udp" | "tcp")
        # (name, type) pairs answered SERVFAIL, as a broken authoritative server would.
        self.servfail: set[tuple[str, str]] = set()
        # (name, type) pairs never answered, as a server that drops some queries (AAAA,
        # names it does not know) is met on the internet.
        self.dropped: set[tuple[str, str]] = set()
        for name, records in (zone or {}).items():
            self._records.put(name, records)
        self._selector: selectors.DefaultSelector | None = None
        self._thread: threading.Thread | None = None
        self._sockets: list[socket.socket] = []

    # -- the zone --------------------------------------------------------------------

    def set(self, name: str, records: Sequence[Record]) -> None:
        """Replace every record of `name` (an empty list removes the name)."""
        with self._lock:
            self._records.put(name, records)

    def count(self, name: str, rdtype: str | None = None) -> int:
        """Queries received for `name` (of `rdtype`, or of any type)."""
        name = _key(name)
        with self._lock:
            if rdtype is not None:
                return self.queries[(name, rdtype.upper())]
            return sum(n for (q, _), n in self.queries.items() if q == name)

    def reset_counts(self) -> None:
        with self._lock:
            self.queries.clear()
            self.log.clear()

    @property
    def nameserver(self) -> str:
        """`host:port`, the form `dns_servers` takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> DNSServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:  # that port is taken for TCP: try another
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        tcp.listen(16)
        self.port = port
        stop_r, self._stop_w = socket.socketpair()
        self._sockets = [udp, tcp, stop_r, self._stop_w]
        self._selector = selectors.DefaultSelector()
        self._selector.register(udp, selectors.EVENT_READ, self._on_udp)
        self._selector.register(tcp, selectors.EVENT_READ, self._on_accept)
        self._selector.register(stop_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop_w.send(b"x")
        self._thread.join(5)
        self._thread = None
        assert self._selector is not None
        self._selector.close()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- serving ---------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._selector is not None
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    return
                handler: Callable[[socket.socket], None] = key.data
                with contextlib.suppress(OSError):
                    handler(key.fileobj)  # type: ignore[arg-type]

    def _on_udp(self, sock: socket.socket) -> None:
        wire, peer = sock.recvfrom(65535)
        reply = self._reply(wire, "udp")
        if reply is not None:
            sock.sendto(reply, peer)

    def _on_accept(self, sock: socket.socket) -> None:
        conn, _ = sock.accept()
        # A test client sends one query per connection or a few in a row: serve them here.
        with conn:
            conn.settimeout(5)
            while True:
                head = _read_exact(conn, 2)
                if head is None:
                    return
                wire = _read_exact(conn, struct.unpack("!H", head)[0])
                if wire is None:
                    return
                reply = self._reply(wire, "tcp")
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def _reply(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = question.rdtype
        with self._lock:
            self.queries[(name, dns.rdatatype.to_text(rdtype))] += 1
            self.log.append((name, dns.rdatatype.to_text(rdtype), transport))
            if (name, dns.rdatatype.to_text(rdtype)) in self.dropped:
                return None
            if (name, dns.rdatatype.to_text(rdtype)) in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response.to_wire()
            self._answer(response, question.name, rdtype)
            if not response.answer:
                self._negative(response, question.name)
        limit = 65535
        if transport == "udp":
            limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    def _answer(self, response: dns.message.Message, qname: dns.name.Name, rdtype: int) -> None:
        owner = qname
        for _ in range(8):  # CNAME chains in a test zone are short; a loop must not hang
            sets = self._records.by_name.get(_key(owner.to_text()))
            if sets is None:
                if owner == qname and not self._records.exists(_key(owner.to_text())):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                return
            wanted = sets.get(rdtype)
            if wanted is not None:
                response.answer.append(_rrset(owner, wanted))
                return
            cname = sets.get(dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.ANY:
                if rdtype == dns.rdatatype.ANY:
                    for rdataset in sets.values():
                        response.answer.append(_rrset(owner, rdataset))
                return
            response.answer.append(_rrset(owner, cname))
            owner = next(iter(cname)).target  # type: ignore[attr-defined, unused-ignore]

    def _negative(self, response: dns.message.Message, qname: dns.name.Name) -> None:
        """RFC 2308: a negative answer carries the SOA of the zone above the name, if any."""
        labels = _key(qname.to_text()).split(".")
        for index in range(len(labels)):
            owner = ".".join(labels[index:])
            soa = self._records.by_name.get(owner, {}).get(dns.rdatatype.SOA)
            if soa is not None:
                response.authority.append(_rrset(dns.name.from_text(owner), soa))
                return


def _rrset(owner: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(owner, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)  # type: ignore[no-untyped-call, unused-ignore]
    return rrset


def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


@pytest.fixture
def dns_server() -> Iterator[Callable[..., DNSServer]]:
    """`dns_server(zone, host="127.0.0.1")`: a started DNSServer, stopped after the test."""
    started: list[DNSServer] = []

    def start(zone: Zone | None = None, host: str = "127.0.0.1") -> DNSServer:
        server = DNSServer(zone, host).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
