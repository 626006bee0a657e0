"""message.py: parsing, preparation and header rewriting, with plain values (no I/O)."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmtp_mailer.config.model import DomainConfig, Location
from ssmtp_mailer.errors import DataError, MailerError, UsageError
from ssmtp_mailer.message import (
    Intake,
    PreparedMessage,
    _parse_address_list,
    apply_group_headers,
    crlf_lines,
    format_mailbox,
    parse_addresses,
    prepare,
    split_recipients,
    truncate_at_lone_dot,
)
from ssmtp_mailer.rewrite import Plan, RouteGroup

HOST = "host.example"
NOW = 1_700_000_000.0


def prep(raw: bytes, **intake: object) -> PreparedMessage:
    intake.setdefault("recipients", ())
    return prepare(
        raw,
        Intake(**intake),  # type: ignore[arg-type]
        hostname=HOST,
        default_from="nobody",
        max_size=100_000,
        now=NOW,
    )


def header_block(data: bytes | bytearray) -> bytes:
    return bytes(data).split(b"\r\n\r\n", 1)[0]


def body_of(data: bytes | bytearray) -> bytes:
    return bytes(data).split(b"\r\n\r\n", 1)[1]


# -- address lists ---------------------------------------------------------------------

CORPUS = [
    ("a@x", ["a@x"]),
    ("A <a@x>, b@y", ["a@x", "b@y"]),
    ('"Doe, John" <j@x>, "x,y" <k@x>', ["j@x", "k@x"]),
    ("j@x (Doe, John), k@x (comment (nested, too))", ["j@x", "k@x"]),
    ("undisclosed-recipients:;", []),
    ("Team: a@x, B <b@x>;, c@x", ["a@x", "b@x", "c@x"]),
    ("Team: ;", []),
    ("=?utf-8?q?J=C3=B6rg?= <jorg@x>, =?iso-8859-1?b?SvZyZw==?= <j2@x>", ["jorg@x", "j2@x"]),
    ("<@relay1,@relay2:user@x>", ["user@x"]),
    ('"quoted local"@x', ['"quoted local"@x']),
    ("root", ["root"]),
    ("Root <root>", ["root"]),
    ("Ünïcode Näme <üser@exämple.org>", ["üser@exämple.org"]),
    ("a@x,,, ,b@x", ["a@x", "b@x"]),
    ("<>", [""]),
    ("\t a@x\r\n\t, b@x", ["a@x", "b@x"]),
    ('"unterminated <a@x>', ['"unterminated <a@x>']),  # address_problem() refuses it
    ("a)b@x, c@x", ["a)b@x", "c@x"]),  # a stray ")": address_problem() refuses it
]


@pytest.mark.parametrize(("text", "expected"), CORPUS)
def test_parse_addresses_corpus(text: str, expected: list[str]) -> None:
    assert [box.address for box in parse_addresses(text)] == expected


@settings(max_examples=500)
@given(st.text(alphabet=' \t\r\n()"[]<>,:;@.\\ax\u00e9', max_size=12))
def test_a_lone_address_parses_as_the_full_parser_does(text: str) -> None:
    assert parse_addresses(text) == _parse_address_list(text)


def test_spans_point_at_the_addr_spec() -> None:
    text = '"Doe, John" <j@x> (c), k@y'
    assert [text[b.start : b.end] for b in parse_addresses(text)] == ["j@x", "k@y"]
    assert parse_addresses(text)[0].name == "Doe, John"


def test_email_package_agrees_on_simple_lists() -> None:
    from email.utils import getaddresses

    for text, _ in CORPUS[:4]:
        parsed = getaddresses([text])
        if parsed == [("", "")] and "(" in text:
            # Since the CVE-2023-27043 fix (3.13, and 3.10-3.12 security releases) the
            # strict parser counts commas outside quotes and gives up on one in a comment.
            continue
        ours = [b.address for b in parse_addresses(text)]
        theirs = [a for _, a in parsed if a]
        assert ours == theirs


def test_split_recipients_from_arguments() -> None:
    assert split_recipients(["a@x, B <b@x>", "root"]) == ["a@x", "b@x", "root"]


def test_format_mailbox() -> None:
    assert format_mailbox("CronDaemon", "r@x") == "CronDaemon <r@x>"
    assert format_mailbox("Doe, J.", "r@x") == '"Doe, J." <r@x>'
    encoded = format_mailbox("Jörg Müller", "r@x")
    assert encoded.isascii() and encoded.endswith(" <r@x>")
    parsed = email.message_from_bytes(f"From: {encoded}\n\n".encode(), policy=email.policy.default)
    assert str(parsed["From"]) == "Jörg Müller <r@x>"


# -- recipients, envelope, headers -------------------------------------------------------


def test_t_reads_to_cc_bcc_and_removes_bcc() -> None:
    raw = b"To: a@x\nCc: B <b@x>, root\nBcc: hidden@x\nSubject: s\n\nbody\n"
    p = prep(raw, extract_recipients=True, recipients=("argv@x",))
    assert p.recipients == ("argv@x", "a@x", "b@x", "root@host.example", "hidden@x")
    head = header_block(p.data)
    assert b"Bcc" not in head and b"hidden" not in head
    assert b"Cc: B <b@x>, root@host.example\r\n" in head + b"\r\n"


def test_duplicate_to_headers_all_count_and_recipients_dedupe() -> None:
    raw = b"To: a@x\nTo: b@x, A@X\n\nbody\n"
    assert prep(raw, extract_recipients=True).recipients == ("a@x", "b@x")


def test_resent_headers_take_precedence() -> None:
    raw = b"Resent-To: r@x\nResent-Bcc: rb@x\nTo: original@x\nBcc: ob@x\n\nbody\n"
    p = prep(raw, extract_recipients=True)
    assert p.recipients == ("r@x", "rb@x")
    head = header_block(p.data)
    assert b"Resent-Bcc" not in head and b"\r\nBcc" not in b"\r\n" + head
    assert b"To: original@x" in head


def test_without_t_headers_do_not_add_recipients() -> None:
    p = prep(b"To: a@x\nBcc: b@x\n\nbody\n", recipients=("c@x",))
    assert p.recipients == ("c@x",)
    assert b"Bcc" not in p.data


def test_no_recipients_is_usage_error() -> None:
    with pytest.raises(UsageError) as info:
        prep(b"Subject: x\n\nbody\n")
    assert info.value.exit_code == 64
    with pytest.raises(UsageError):
        prep(b"To: undisclosed-recipients:;\n\nbody\n", extract_recipients=True)


def test_bad_argument_address_is_usage_error_bad_header_is_data_error() -> None:
    with pytest.raises(UsageError):
        prep(b"\n", recipients=("a b@x",))
    with pytest.raises(DataError):
        prep(b"To: john doe@x\n\nbody\n", extract_recipients=True)


def test_envelope_sender_rules() -> None:
    raw = b"From: Author <author@x>\nTo: a@x\n\nbody\n"
    assert prep(raw, recipients=("a@x",)).sender == "author@x"
    assert prep(raw, recipients=("a@x",), envelope_from="f@x").sender == "f@x"
    assert prep(raw, recipients=("a@x",), envelope_from="<>").sender == ""
    assert prep(raw, recipients=("a@x",), envelope_from="MAILER-DAEMON").sender == ""
    assert prep(raw, recipients=("a@x",), envelope_from="root").sender == "root@host.example"
    assert prep(b"To: a@x\n\nb\n", recipients=("a@x",)).sender == "nobody@host.example"
    assert prep(b"From: root\n\nb\n", recipients=("a@x",)).sender == "root@host.example"


def test_from_date_message_id_added_when_missing() -> None:
    p = prep(b"Subject: s\n\nbody\n", recipients=("a@x",), full_name="Cron Daemon")
    msg = email.message_from_bytes(p.data, policy=email.policy.default)
    assert msg["From"] == "Cron Daemon <nobody@host.example>"
    assert msg["Date"] is not None and msg["Date"].datetime.timestamp() == NOW
    assert msg["Message-ID"] == p.message_id
    assert p.message_id.endswith("@host.example>")


def test_non_ascii_full_name_is_rfc2047() -> None:
    p = prep(b"\n", recipients=("a@x",), full_name="Démon Crön", envelope_from="c@x")
    line = next(x for x in p.data.split(b"\r\n") if x.startswith(b"From:"))
    assert line.isascii() and b"=?utf-8?" in line
    msg = email.message_from_bytes(p.data, policy=email.policy.default)
    assert msg["From"] == "Démon Crön <c@x>"


def test_existing_headers_kept_byte_for_byte() -> None:
    raw = (
        b'From: "Weird, Name" <w@x> (c)\nDate: whatever\nMessage-ID: <m@x>\n'
        b"X-Odd:   spaced  \t\nSubject: =?utf-8?q?caf=C3=A9?=\n folded\n\nbody\n"
    )
    p = prep(raw, recipients=("a@x",))
    expected = raw.replace(b"\n", b"\r\n")
    assert p.data == expected
    assert p.message_id == "<m@x>"


def test_qualifies_bare_names_only_in_address_headers() -> None:
    raw = b"From: root\nTo: Admin <admin>, (c) ops\nX-Note: root\nReply-To: root\n\nroot\n"
    p = prep(raw, extract_recipients=True)
    head = header_block(p.data)
    assert b"From: root@host.example\r\n" in head + b"\r\n"
    assert b"To: Admin <admin@host.example>, (c) ops@host.example" in head
    assert b"X-Note: root" in head and b"Reply-To: root" in head
    assert body_of(p.data) == b"root\r\n"


def test_line_endings_lf_crlf_bare_cr_mixed_become_crlf() -> None:
    for raw in (b"To: a@x\n\nl1\nl2\n", b"To: a@x\r\n\r\nl1\r\nl2\r\n", b"To: a@x\n\r\nl1\r\nl2\n"):
        assert body_of(prep(raw, recipients=("a@x",)).data) == b"l1\r\nl2\r\n"
    # RFC 5321 §2.3.8: a bare CR never goes out; it ends a line.
    assert body_of(prep(b"\nx\ry\n", recipients=("a@x",)).data) == b"x\r\ny\r\n"
    assert body_of(prep(b"\nx\r\ry\r", recipients=("a@x",)).data) == b"x\r\n\r\ny\r\n"
    # A CRLF converted twice on its way (CR CR LF) is one line end: the header stays whole.
    doubled = prep(
        b"To: a@x\r\r\nSubject: s\r\r\nX-A: 1\r\r\n\r\r\nbody\r\r\n", recipients=("a@x",)
    )
    assert b"\r\nSubject: s\r\nX-A: 1\r\n" in doubled.data
    assert body_of(doubled.data) == b"body\r\n"
    # However many CRs stand before the LF (one pass, not one per CR).
    assert crlf_lines(b"a" + b"\r" * 50_000 + b"\nb\r\n") == b"a\r\nb\r\n"
    assert prep(b"To: a@x\n\nno newline", recipients=("a@x",)).data.endswith(b"no newline\r\n")
    # A bare CR in the header of LF (or SMTP's CRLF) input is a space: no field is added.
    for eol in (b"\n", b"\r\n"):
        raw = b"To: a@x" + eol + b"Subject: hi\rBcc: victim@x" + eol + eol + b"b" + eol
        injected = prep(raw, recipients=("a@x",)).data
        assert b"\r\nSubject: hi Bcc: victim@x\r\n" in injected
        assert b"\nBcc:" not in injected


def test_body_bytes_are_untouched() -> None:
    body = bytes(range(1, 256)).replace(b"\n", b"").replace(b"\r", b"") + b"\n.leading dot\n..\n"
    p = prep(b"To: a@x\n\n" + body, recipients=("a@x",))
    assert body_of(p.data) == body.replace(b"\n", b"\r\n")
    assert p.eightbit and not p.smtputf8


def test_message_without_header_gets_a_separator() -> None:
    p = prep(b"Just a line of text\nand another\n", recipients=("a@x",))
    assert body_of(p.data) == b"Just a line of text\r\nand another\r\n"
    assert prep(b"", recipients=("a@x",)).data.endswith(b"\r\n\r\n")


def test_mbox_from_line_dropped() -> None:
    p = prep(b"From someone@x Mon Jan  1 00:00:00 2024\nTo: a@x\n\nbody\n", recipients=("a@x",))
    assert not p.data.startswith(b"From ")
    assert b"someone" not in p.data


def test_lone_dot_ends_input_without_i() -> None:
    raw = b"To: a@x\n\nbefore\n.\nafter\n"
    assert b"after" not in prep(raw, recipients=("a@x",), dot_ends_input=True).data
    assert body_of(prep(raw, recipients=("a@x",)).data) == b"before\r\n.\r\nafter\r\n"
    assert truncate_at_lone_dot(b".\r\nx") == b""
    assert truncate_at_lone_dot(b"a\n..\n. \n") == b"a\n..\n. \n"
    assert truncate_at_lone_dot(b"a\n.") == b"a\n"


def test_nul_byte_is_data_error_naming_line() -> None:
    with pytest.raises(DataError, match="line 3"):
        prep(b"To: a@x\n\nx\x00y\n", recipients=("a@x",))


def test_long_body_line_refused_naming_line() -> None:
    ok = b"x" * 998
    assert body_of(prep(b"\n" + ok + b"\n", recipients=("a@x",)).data) == ok + b"\r\n"
    with pytest.raises(DataError, match="line 4 is over 998"):
        prep(b"To: a@x\n\nshort\n" + b"y" * 2000 + b"\nend\n", recipients=("a@x",))
    with pytest.raises(DataError, match="line 2"):
        prep(b"\n" + b"y" * 999, recipients=("a@x",))


def test_long_header_line_folded_at_whitespace() -> None:
    to = ", ".join(f"user{i}@example.org" for i in range(120))
    p = prep(f"To: {to}\nSubject: s\n\nbody\n".encode(), extract_recipients=True)
    assert len(p.recipients) == 120
    head = header_block(p.data)
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    unfolded = head.replace(b"\r\n ", b" ").split(b"\r\n")[0]
    assert unfolded == f"To: {to}".encode()


def test_the_size_limit_counts_line_ends_as_smtp_size_does() -> None:
    """Bare LF (a pipe) or CR LF (the listener, sendmail's own reading): the same count,
    the one a relay's SIZE applies; the Date and Message-ID added do not count."""
    crlf = b"Subject: s\r\n\r\n" + b"line\r\n" * 40
    lf = crlf.replace(b"\r\n", b"\n")
    for raw in (lf, crlf):
        intake = Intake(recipients=("a@x",))
        prepare(raw, intake, hostname=HOST, default_from="n", max_size=len(crlf))
        with pytest.raises(DataError, match=f"{len(crlf)} octets, over max_message_size"):
            prepare(raw, intake, hostname=HOST, default_from="n", max_size=len(crlf) - 1)


def test_empty_from_date_and_message_id_are_replaced_not_kept_beside_ours() -> None:
    """PHP's `"From: " . $from` with an empty $from, and empty Date and Message-ID: one
    of each, ours, where an empty one stood for present and a second Message-ID came."""
    prepared = prep(
        b"From:\nTo: a@x.example\nMessage-ID:\nDate: \nSubject: e\n\nx\n", extract_recipients=True
    )
    head = header_block(prepared.data).decode()
    assert head.count("From:") == 1 and f"From: nobody@{HOST}" in head
    assert head.count("Message-ID:") == 1 and prepared.message_id in head
    assert head.count("Date:") == 1 and "Date: \r\n" not in head


def test_a_long_address_list_without_spaces_is_folded_after_its_commas() -> None:
    """`To: a@x,b@y,...` as programs join 120 addresses: 65 for want of whitespace, where
    a fold after a comma between addresses changes nothing (never one inside a quoted name)."""
    names = [f'"Doe,J{n}"<j{n}@example.com>' for n in range(60)]
    plain = [f"user{n}@example.com" for n in range(60)]
    to = ",".join(x for pair in zip(names, plain, strict=True) for x in pair).encode()
    prepared = prep(b"To: " + to + b"\nSubject: s\n\nx\n", extract_recipients=True)
    assert len(prepared.recipients) == 120
    head = bytes(header_block(prepared.data))
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    unfolded = head.split(b"\r\nSubject:")[0].replace(b"\r\n", b"")
    assert unfolded.replace(b", ", b",") == (b"To: " + to).replace(b", ", b",")
    assert unfolded.count(b'"Doe,J') == 60  # every quoted name whole


def test_unfoldable_header_line_refused() -> None:
    with pytest.raises(DataError, match="X-Blob"):
        prep(b"X-Blob: " + b"z" * 2000 + b"\n\nbody\n", recipients=("a@x",))


def test_size_limit() -> None:
    with pytest.raises(DataError, match="max_message_size"):
        prepare(
            b"\n" + b"x\n" * 100,
            Intake(recipients=("a@x",)),
            hostname=HOST,
            default_from="n",
            max_size=150,
        )


def test_eightbit_and_smtputf8_flags() -> None:
    assert not prep(b"\nascii\n", recipients=("a@x",)).eightbit
    p = prep("Subject: é\n\nbody\n".encode(), recipients=("a@x",))
    assert p.eightbit and not p.smtputf8
    p = prep(b"\nx\n", recipients=("üser@exämple.org",))
    assert p.smtputf8


def test_invalid_utf8_address_is_refused() -> None:
    with pytest.raises(DataError, match="UTF-8"):
        prep(b"To: a\xff@x\n\nb\n", extract_recipients=True)


# -- apply_group_headers -------------------------------------------------------------------

ROUTE = DomainConfig(name="relay", location=Location("test.conf", 1), smtp_server="127.0.0.1")


def test_apply_group_headers_noop_returns_same_bytes() -> None:
    p = prep(b"From: a@x\nTo: b@x\n\nbody\n", recipients=("b@x",))
    group = RouteGroup(ROUTE, "a@x", ("b@x",))
    assert apply_group_headers(p, Plan("a@x", (group,)), group) == p.data


def test_apply_group_headers_rewrites_only_address_headers() -> None:
    raw = (
        b'From: "Author, A." <author@mailer.x> (c)\nTo: contact@mailer.x, other@y\n'
        b"Cc: Contact <CONTACT@mailer.x>\nSubject: contact@mailer.x\nReply-To: old@x\n"
        b"X-Other: keep   me\n\ncontact@mailer.x\n"
    )
    p = prep(raw, recipients=("contact@x",))
    group = RouteGroup(
        ROUTE, "relay@x", ("contact@x",), header_from="relay@x", reply_to="author@mailer.x"
    )
    plan = Plan("relay@x", (group,), address_rewrites={"contact@mailer.x": "contact@x"})
    out = apply_group_headers(p.data, plan, group)
    head = header_block(out)
    assert b'From: "Author, A." <relay@x> (c)\r\n' in head + b"\r\n"
    assert b"To: contact@x, other@y\r\n" in head + b"\r\n"
    assert b"Cc: Contact <contact@x>\r\n" in head + b"\r\n"
    assert b"Subject: contact@mailer.x" in head
    assert b"X-Other: keep   me" in head
    # The author's own Reply-To survives; the route's goes in only when there is none.
    assert head.count(b"Reply-To") == 1 and b"Reply-To: old@x" in head
    assert body_of(out) == b"contact@mailer.x\r\n"
    # Every untouched header line is byte for byte the same.
    untouched = [
        x
        for x in header_block(p.data).split(b"\r\n")
        if x.split(b":")[0] in (b"Subject", b"X-Other", b"Date", b"Message-ID")
    ]
    assert all(line in head.split(b"\r\n") for line in untouched)


def test_apply_group_headers_in_place_reuses_the_buffer_unless_a_view_holds_it() -> None:
    group = RouteGroup(ROUTE, "relay@x", ("b@x",), header_from="relay@x")
    plan = Plan("relay@x", (group,))
    p = prep(b"From: a@x\nTo: b@x\n\nbody\n", recipients=("b@x",))
    out = apply_group_headers(p, plan, group, in_place=True)
    assert out is p.data and b"From: relay@x\r\n" in out
    # An earlier group's failed DATA can keep a view of the buffer alive: then a copy is made.
    p = prep(b"From: a@x\nTo: b@x\n\nbody\n", recipients=("b@x",))
    before = bytes(p.data)
    with memoryview(p.data):
        out = apply_group_headers(p, plan, group, in_place=True)
    assert out is not p.data and bytes(p.data) == before
    assert b"From: relay@x\r\n" in out and body_of(out) == b"body\r\n"


# -- anything in: a prepared message or a clean error ------------------------------------------


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=3000), extract=st.booleans(), dots=st.booleans())
def test_any_bytes_prepare_or_clean_error(raw: bytes, extract: bool, dots: bool) -> None:
    try:
        p = prep(raw, recipients=("a@x",), extract_recipients=extract, dot_ends_input=dots)
    except (DataError, UsageError) as exc:
        assert isinstance(exc, MailerError) and exc.why
        return
    assert b"\r\n\r\n" in p.data
    assert b"\n" not in p.data.replace(b"\r\n", b"")
    assert "a@x" in p.recipients
    for line in p.data.split(b"\r\n"):
        assert len(line) <= 998


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(
        st.text(
            alphabet=st.characters(
                blacklist_categories=("Cs",),  # type: ignore[arg-type, unused-ignore]
                blacklist_characters="\r\n\x00",
            ),
            max_size=60,
        ),
        max_size=20,
    )
)
def test_headerish_text_prepare_or_clean_error(lines: list[str]) -> None:
    raw = "\n".join(f"To: {line}" if i % 2 else line for i, line in enumerate(lines)).encode()
    try:
        p = prep(raw, recipients=("a@x",), extract_recipients=True)
    except (DataError, UsageError):
        return
    assert p.recipients[0] == "a@x"


def test_a_null_sender_message_without_from_is_from_mailer_daemon() -> None:
    """An outsider's `MAIL FROM:<>` with no From got the account running us (root@, or
    mail@ under the listener) as its author; as Postfix, it is MAILER-DAEMON's."""
    p = prepare(
        b"Subject: t\n\nbody\n",
        Intake(recipients=("a@x.example",), envelope_from="<>"),
        hostname="host.example",
        default_from="root",
        max_size=10_000,
    )
    assert p.sender == ""
    assert b"\r\nFrom: MAILER-DAEMON@host.example\r\n" in b"\r\n" + bytes(p.data)
