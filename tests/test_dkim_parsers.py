"""The pure parsers behind DKIM and `dns check`: arbitrary input gives their own error or a value."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmtp_mailer import dnsrecords, spf
from ssmtp_mailer.dkimkey import KeyFileError, parse_private_key


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_der_in_a_pem_is_a_key_or_a_key_file_error(der: bytes) -> None:
    for label in ("PRIVATE KEY", "RSA PRIVATE KEY"):
        pem = f"-----BEGIN {label}-----\n{base64.encodebytes(der).decode()}-----END {label}-----\n"
        try:
            key = parse_private_key(pem.encode())
        except KeyFileError:
            continue
        assert key.algorithm in ("rsa-sha256", "ed25519-sha256")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120))
def test_any_spf_text_parses_or_is_an_spf_error(rest: str) -> None:
    # What a suggested fix keeps of it is always a valid record.
    kept = spf.valid_terms("v=spf1 " + rest)
    assert spf.parse(" ".join(["v=spf1", *(t.text for t in kept)])).terms == tuple(kept)
    try:
        record = spf.parse("v=spf1 " + rest)
    except spf.SpfError:
        return
    assert all(t.text for t in record.terms)


@given(st.text(max_size=2000))
def test_txt_strings_split_at_255_octets_and_join_back(value: str) -> None:
    ascii_value = value.encode("ascii", "ignore").decode()
    strings = dnsrecords.txt_strings(ascii_value)
    assert "".join(strings) == ascii_value
    assert all(len(s.encode()) <= 255 for s in strings)


@pytest.mark.parametrize(
    ("record", "mechanism", "expected"),
    [
        ("v=spf1 mx ~all", "ip4:192.0.2.1", "v=spf1 mx ip4:192.0.2.1 ~all"),
        ("v=spf1 mx redirect=_spf.example.com", "a", "v=spf1 mx a redirect=_spf.example.com"),
        ("v=spf1 mx", "a", "v=spf1 mx a"),
    ],
)
def test_spf_with_adds_before_the_end(record: str, mechanism: str, expected: str) -> None:
    assert dnsrecords.spf_with(record, mechanism) == expected


def test_provider_table() -> None:
    assert dnsrecords.provider_for("smtp.office365.com").spf_include == "spf.protection.outlook.com"  # type: ignore[union-attr]
    assert dnsrecords.provider_for("email-smtp.eu-west-1.amazonaws.com").name == "Amazon SES"  # type: ignore[union-attr]
    assert dnsrecords.provider_for("smtp.sendgrid.net").spf_include == "sendgrid.net"  # type: ignore[union-attr]
    assert dnsrecords.provider_for("mail.example.com") is None
    assert dnsrecords.provider_for("notgmail.com") is None


def test_unsupported_key_kinds_are_named() -> None:
    with pytest.raises(
        KeyFileError, match="EC PRIVATE KEY: DKIM signs with RSA or Ed25519 keys only"
    ):
        parse_private_key(b"-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="bad base64"):
        parse_private_key(b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="encrypted"):
        parse_private_key(
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMAA=\n"
            b"-----END RSA PRIVATE KEY-----\n"
        )
