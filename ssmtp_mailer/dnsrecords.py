"""DNS records a route needs (DKIM, SPF, DMARC): building them as text and reading tags; pure."""

from __future__ import annotations

from typing import NamedTuple

# RFC 1035 §3.3.14: a TXT record is a sequence of strings of at most 255 octets each.
TXT_STRING_MAX = 255


class TxtRecord(NamedTuple):
    """A TXT record to publish: owner name (no final dot) and its value."""

    name: str
    value: str

    @property
    def strings(self) -> list[str]:
        return txt_strings(self.value)

    def zone_line(self) -> str:
        """The record as a zone-file line, ready to paste."""
        quoted = (s.replace("\\", "\\\\").replace('"', '\\"') for s in self.strings)
        return f"{self.name}. IN TXT " + " ".join(f'"{s}"' for s in quoted)


def txt_strings(value: str) -> list[str]:
    """`value` cut into 255-octet strings (the value is ASCII in every record built here)."""
    data = value.encode("utf-8")
    return [
        data[i : i + TXT_STRING_MAX].decode("utf-8") for i in range(0, len(data), TXT_STRING_MAX)
    ] or [""]


def dkim_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain.rstrip('.')}"


def dkim_record(selector: str, domain: str, key_type: str, public_b64: str) -> TxtRecord:
    """RFC 6376 §3.6.1 key record; k=ed25519 per RFC 8463."""
    return TxtRecord(dkim_name(selector, domain), f"v=DKIM1; k={key_type}; p={public_b64}")


def dmarc_record(domain: str) -> TxtRecord:
    """A starting DMARC policy (RFC 7489), reports to postmaster."""
    domain = domain.rstrip(".")
    return TxtRecord(f"_dmarc.{domain}", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}")


def parse_tags(text: str) -> dict[str, str]:
    """A DKIM/DMARC/MTA-STS/TLS-RPT tag list (`v=DKIM1; k=rsa; p=...`) as a dict.

    RFC 6376 §3.2: whitespace around tags and values is ignored (inside `p=` it is too);
    tag names are case-sensitive, so they are kept as written (`P=` is no `p=`), as
    RFC 8461 §3.1 and RFC 8460 §3 spell theirs too. A malformed list raises ValueError.
    """
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"not a tag=value list: {part.strip()!r}")
        tags[name.strip()] = value.strip()
    return tags


def miscased_tag(tags: dict[str, str], known: set[str]) -> str | None:
    """The first tag of `known` written in capitals (`P=`), which readers do not see."""
    return next((n for n in tags if n != n.lower() and n.lower() in known), None)


def joined_key(value: str) -> str:
    """A `p=` value without the folding whitespace zone editors leave in it."""
    return "".join(value.split())


class Provider(NamedTuple):
    """A relay service and the SPF domain it documents for its customers' records."""

    name: str
    spf_include: str
    also: tuple[str, ...] = ()  # older names of the same include


# Matched against the end of a route's smtp_server (SPEC §6 `dns check`).
PROVIDERS: tuple[tuple[tuple[str, ...], Provider], ...] = (
    (
        ("smtp.gmail.com", "smtp-relay.gmail.com", "googlemail.com"),
        Provider("Gmail", "_spf.google.com"),
    ),
    (
        ("office365.com", "outlook.com", "protection.outlook.com"),
        Provider("Microsoft 365", "spf.protection.outlook.com"),
    ),
    (("amazonaws.com",), Provider("Amazon SES", "amazonses.com")),
    (("sendgrid.net",), Provider("SendGrid", "sendgrid.net")),
    (("oraclecloud.com",), Provider("OCI Email Delivery", "rp.oracleemaildelivery.com")),
    (
        ("brevo.com", "sendinblue.com"),
        Provider("Brevo", "spf.brevo.com", ("spf.sendinblue.com",)),
    ),
)


# OCI documents one include per sending region: smtp.email.REGION.oci.oraclecloud.com.
_OCI_AMERICAS = "rp.oracleemaildelivery.com"
_OCI_INCLUDES = {
    "us": _OCI_AMERICAS,
    "ca": _OCI_AMERICAS,
    "sa": _OCI_AMERICAS,
    "mx": _OCI_AMERICAS,
    "ap": "ap.rp.oracleemaildelivery.com",
    "eu": "eu.rp.oracleemaildelivery.com",
    "uk": "eu.rp.oracleemaildelivery.com",
}


def provider_for(server: str | None) -> Provider | None:
    """The known relay service behind `server`, if any."""
    if not server:
        return None
    host = server.lower().rstrip(".")
    for suffixes, provider in PROVIDERS:
        if any(host == s or host.endswith("." + s) for s in suffixes):
            if provider.spf_include == _OCI_AMERICAS:
                return _oci_region(host, provider)
            return provider
    return None


def _oci_region(host: str, provider: Provider) -> Provider:
    """OCI's include for the region in the server's name; for a region not known here,
    any of OCI's includes passes."""
    labels = host.split(".")
    region = labels[2] if len(labels) > 2 and labels[:2] == ["smtp", "email"] else ""
    wanted = _OCI_INCLUDES.get(region.split("-", 1)[0])
    if wanted is not None:
        return provider._replace(spf_include=wanted)
    others = sorted(set(_OCI_INCLUDES.values()) - {provider.spf_include})
    return provider._replace(also=tuple(others))


def spf_with(record: str, mechanism: str) -> str:
    """`record` with `mechanism` added before its final `all` or `redirect=`."""
    words = record.split()
    for index, word in enumerate(words):
        if index and (word.lstrip("+-~?").lower() == "all" or word.lower().startswith("redirect=")):
            return " ".join([*words[:index], mechanism, *words[index:]])
    return " ".join([*words, mechanism])


def spf_merged(records: list[str]) -> str:
    """One SPF record holding the mechanisms of several (RFC 7208 §4.5 allows only one)."""
    terms: list[str] = []
    ending = "~all"
    for record in records:
        for word in record.split()[1:]:
            if word.lstrip("+-~?").lower() == "all":
                ending = word
            elif word not in terms:
                terms.append(word)
    return " ".join(["v=spf1", *terms, ending])
