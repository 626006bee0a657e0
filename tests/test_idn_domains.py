"""Internationalised domains compare as IDNA 2008 has them, not as the stdlib's IDNA 2003.

IDNA 2003's nameprep folds ß to ss: straße.example passed for strasse.example, so an
outsider could relay through `[user:*@strasse.example]` to straße.example, which relays
and resolvers (IDNA 2008, UTS #46 non-transitional) take for xn--strae-oqa.example, a
domain of its own that anyone may register.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dnsserver import DNSServer
from hypothesis import given, settings
from hypothesis import strategies as st
from relayconf import RunMain, write_relay_config
from smtpserver import SMTPTestServer
from test_direct import MESSAGE, SENDER, Net, mx_server, net, write_config  # noqa: F401
from test_listener import Listener, listener_config, start_listener  # noqa: F401

import ssmtp_mailer
from ssmtp_mailer.addresses import address_problem, ascii_domain, domain_key, domain_problem

OUTSIDER = "127.0.0.2"  # listener_config trusts 127.0.0.1 only
BODY = "From: someone@internet.example\r\nSubject: idn\r\n\r\nhi\r\n"


def rcpt_replies(listener: Listener, *recipients: str) -> list[tuple[int, bytes]]:
    """What the listener answers an outsider's RCPT TO for each recipient (SMTPUTF8 on)."""
    replies = []
    with listener.client(OUTSIDER) as client:
        client.ehlo("mx.internet.example")
        assert client.mail("someone@internet.example", ["SMTPUTF8"])[0] == 250
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            replies.append((code, text[:5]))
        if any(code == 250 for code, _ in replies):
            assert client.data(BODY.encode())[0] == 250
    return replies


REFUSED = (554, b"5.7.1")
ACCEPTED = (250, b"2.1.5")
BAD_SYNTAX = (553, b"5.1.3")


def test_an_outsider_cannot_relay_to_a_look_alike_of_a_receiving_domain(
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    start_listener: Callable[[Path], Listener],  # noqa: F811
) -> None:
    conf = listener_config(
        tmp_path / "l.conf", smtp_server.port, sections="\n[user:*@strasse.example]\n"
    )
    listener = start_listener(conf)
    replies = rcpt_replies(
        listener,
        "x@stra\u00dfe.example",  # ß: xn--strae-oqa.example, another domain
        "x@STRASSE.example",  # ASCII case is no difference
        "y@Strasse.Example",
        "x@\uff53\uff54\uff52\uff41\uff53\uff53\uff45.example",  # full-width letters
        "x@stra\u00adsse.example",  # a soft hyphen
        "x@stras\u200dse.example",  # a zero width joiner
        "x@xn--strae-oqa.example",
    )
    assert replies == [REFUSED, ACCEPTED, ACCEPTED, BAD_SYNTAX, BAD_SYNTAX, BAD_SYNTAX, REFUSED]
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["x@STRASSE.example", "y@Strasse.Example"]
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize("section", ["stra\u00dfe.example", "xn--strae-oqa.example"])
def test_a_receiving_idn_domain_takes_both_of_its_spellings_and_nothing_else(
    section: str,
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    start_listener: Callable[[Path], Listener],  # noqa: F811
) -> None:
    upstream = smtp_server_factory(smtputf8=True)
    conf = listener_config(tmp_path / "l.conf", upstream.port, sections=f"\n[user:*@{section}]\n")
    listener = start_listener(conf)
    replies = rcpt_replies(
        listener,
        "a@stra\u00dfe.example",
        "b@Stra\u00dfe.EXAMPLE",
        "c@XN--STRAE-OQA.example",
        "d@strasse.example",
        "e@STRA\u1e9eE.example",  # capital sharp s: IDNA 2008 refuses it
    )
    assert replies == [ACCEPTED, ACCEPTED, ACCEPTED, REFUSED, BAD_SYNTAX]
    got = upstream.wait_for(1)[0]
    assert got.rcpt_tos == [
        "a@stra\u00dfe.example",
        "b@Stra\u00dfe.EXAMPLE",
        "c@XN--STRAE-OQA.example",
    ]
    assert got.smtputf8


def test_direct_delivery_asks_dns_for_the_idna_2008_name(
    tmp_path: Path,
    net: Net,  # noqa: F811
    dns_server: Callable[..., DNSServer],
    mx_server: Callable[..., SMTPTestServer],  # noqa: F811
    run_main: RunMain,
) -> None:
    """IDNA 2003 took straße.example's mail to strasse.example's MX."""
    own, look_alike = mx_server(2, smtputf8=True), mx_server(4, smtputf8=True)
    zone = {
        "xn--strae-oqa.example": [("MX", "10 mx.xn--strae-oqa.example.")],
        "mx.xn--strae-oqa.example": [("A", net.ip(2))],
        "strasse.example": [("MX", "10 mx.strasse.example.")],
        "mx.strasse.example": [("A", net.ip(4))],
    }
    conf = write_config(tmp_path, dns_server(zone), net)
    code, _, err = run_main(
        ["-C", str(conf), "-i", "-f", SENDER, "x@stra\u00dfe.example", "y@STRASSE.example"],
        stdin=MESSAGE,
    )
    assert (code, err) == (0, "")
    assert [m.rcpt_tos for m in own.messages] == [["x@stra\u00dfe.example"]]
    assert [m.rcpt_tos for m in look_alike.messages] == [["y@STRASSE.example"]]


def route(run_main: RunMain, conf: Path, sender: str, recipient: str) -> dict[str, Any]:
    code, out, err = run_main(
        ["route", "-C", str(conf), "--json", "--from", sender, "--to", recipient],
        prog="ssmtp-mailer",
    )
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_mappings_and_routes_match_an_idn_domain_by_its_idna_2008_name(
    tmp_path: Path, smtp_server: SMTPTestServer, run_main: RunMain
) -> None:
    conf = write_relay_config(tmp_path / "m.conf", smtp_server.port)
    conf.write_text(
        conf.read_text()
        + "\n[domain:stra\u00dfe.example]\nsmtp_server = mail.xn--strae-oqa.example\n"
        "\n[mapping:strasse]\nfrom_pattern = *@strasse.example\nto_pattern = *@dest.example\n"
    )
    # The mapping is strasse.example's: straße.example's mail goes on as it was addressed.
    data = route(run_main, conf, "me@host.example", "x@stra\u00dfe.example")
    assert data["mappings"] == []
    data = route(run_main, conf, "me@host.example", "x@Strasse.example")
    [mapping] = data["mappings"]
    assert mapping["rewritten"] == "x@dest.example"
    # [domain:straße.example] sends for straße.example (either spelling), not strasse.example.
    for sender, server in (
        ("me@STRA\u00dfE.example", "mail.xn--strae-oqa.example"),
        ("me@xn--strae-oqa.example", "mail.xn--strae-oqa.example"),
        ("me@strasse.example", "127.0.0.1"),
    ):
        [chosen] = route(run_main, conf, sender, "x@far.example")["routes"]
        assert chosen["server"] == server, (sender, chosen)


def test_a_section_for_a_name_idna_2008_refuses_is_a_one_line_error(
    tmp_path: Path, smtp_server: SMTPTestServer, run_main: RunMain
) -> None:
    conf = write_relay_config(tmp_path / "m.conf", smtp_server.port)
    conf.write_text(conf.read_text() + "\n[user:*@stra\u00adsse.example]\n")
    code, out, err = run_main(["-C", str(conf), "config", "check"], prog="ssmtp-mailer")
    assert code == 78, (out, err)
    assert "not a valid internationalized domain name" in out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    "section",
    [
        "[domain:\uff46\uff55\uff4c\uff4c.example]",  # full-width: it would sign d=????
        "[domain:xn--zz.example]",
        "[mapping:x]\nfrom_pattern = *@xn--zz.example\nto_pattern = *@dest.example",
    ],
    ids=["full-width-route", "bad-a-label-route", "bad-a-label-pattern"],
)
def test_a_route_or_pattern_idna_2008_refuses_is_a_config_error(
    section: str, tmp_path: Path, smtp_server: SMTPTestServer, run_main: RunMain
) -> None:
    """Such a route never served a sender (intake refuses the address) and named its DKIM
    d= wrong; such a pattern silently matched nothing."""
    conf = write_relay_config(tmp_path / "m.conf", smtp_server.port)
    conf.write_text(conf.read_text() + f"\n{section}\nsmtp_server = 127.0.0.1\n")
    code, out, err = run_main(["-C", str(conf), "config", "check"], prog="ssmtp-mailer")
    assert code == 78, (out, err)
    assert "IDNA 2008" in out + err and "Traceback" not in out + err


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("STRASSE.example", "strasse.example."),
        ("stra\u00dfe.example", "xn--strae-oqa.example"),
        ("STRA\u00dfE.EXAMPLE", "XN--STRAE-OQA.example"),
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("B\u00dcCHER.example", "bu\u0308cher.example"),  # NFC: ü composed or not
        ("\u03a3\u0391\u03a3.gr", "\u03c3\u03b1\u03c3.gr"),  # no final-sigma guess
        ("\u03c3\u03b1\u03c2.gr", "xn--mxa8ab.gr"),
        ("\u65e5\u672c.jp", "xn--wgv71a.jp"),
    ],
)
def test_one_domain_in_two_spellings(one: str, other: str) -> None:
    assert domain_key(one) == domain_key(other)
    assert domain_problem(one) is None and domain_problem(other) is None


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("stra\u00dfe.example", "strasse.example"),  # ß is no ss (a deviation, RFC 5892 §2.6)
        ("\u03c3\u03b1\u03c2.gr", "\u03c3\u03b1\u03c3.gr"),  # nor the final sigma the plain one
        ("\uff53\uff54\uff52\uff41\uff53\uff53\uff45.example", "strasse.example"),
        ("stra\u00adsse.example", "strasse.example"),
        ("stras\u200dse.example", "strasse.example"),
        ("stras\u200cse.example", "strasse.example"),
        ("stra\u034fsse.example", "strasse.example"),  # combining grapheme joiner
        ("STRA\u1e9eE.example", "stra\u00dfe.example"),
        ("STRA\u1e9eE.example", "strasse.example"),
        ("\u212a.example", "k.example"),  # Kelvin sign
        ("i\u0307.example", "i.example"),
    ],
)
def test_two_domains_nameprep_would_have_taken_for_one(one: str, other: str) -> None:
    assert domain_key(one) != domain_key(other)


@pytest.mark.parametrize(
    "domain",
    [
        "\uff53\uff54\uff52\uff41\uff53\uff53\uff45.example",
        "stra\u00adsse.example",
        "stras\u200dse.example",
        "STRA\u1e9eE.example",
        "\u212a.example",  # a spelling of k.example: refused, not taken for it
        "stra\u00dfe\u3002example",  # UTS #46 takes an ideographic full stop for a dot
        "caf\u00e9\u2122.example",  # a symbol
        "\u0308a.example",  # a combining mark first
        "-\u00fc.example",  # RFC 5891 §4.2.3.1
        "\u00fc\u00fc--a.example",
        "a\ue000.example",  # private use
        "xn--zz.example",  # does not decode
        "xn--.example",
        "xn--strasse-.example",  # decodes to an ASCII name
        "xn--"
        + "\uff53\uff54\uff52\uff41\uff53\uff53\uff45".encode("punycode").decode()
        + ".example",
        "xn--strae-oqa.b\u00fccher.xn--zz.example",  # checked beside a U-label too
    ],
)
def test_a_name_idna_2008_refuses_is_a_problem_with_a_reason(domain: str) -> None:
    assert ascii_domain(domain) is None
    problem = domain_problem(domain)
    assert problem is not None and "\n" not in problem
    assert address_problem(f"x@{domain}") == problem


@pytest.mark.parametrize(
    ("name", "a_label"),
    [
        ("col\u00b7legi.cat", "xn--collegi-xma.cat"),  # Catalan l·l (RFC 5892 A.3)
        ("\u30a2\u30a4\u30fb\u30a6.jp", "xn--cckeg35a.jp"),  # katakana middle dot (A.7)
        ("\u05d0\u05f3\u05d1.il", "xn--4dbc5h.il"),  # geresh after Hebrew (A.5)
        ("\u0915\u094d\u200d\u0937.in", "xn--11b2ezcw70k.in"),  # ZWJ after a virama (A.2)
        ("\u0375\u03b1.gr", "xn--wva4j.gr"),  # the keraia before Greek (A.4)
    ],
)
def test_a_joiner_or_mark_where_its_rule_holds_is_a_name(name: str, a_label: str) -> None:
    """Valid IDNA 2008 names, and valid under IDNA 2003 before: the listener answered 553
    to them and config check refused them."""
    assert ascii_domain(name) == a_label and domain_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "a\u00b7b.example",
        "ab\u30fbc.jp",
        "a\u05f3b.il",
        "a\u200cb.example",
        "\u0661\u06f1.example",  # two kinds of Arabic-Indic digits (A.8, A.9)
    ],
)
def test_a_joiner_or_mark_out_of_its_context_is_refused(name: str) -> None:
    assert ascii_domain(name) is None and domain_problem(name) is not None


def test_an_a_label_must_round_trip() -> None:
    """An `xn--` label that decodes to a name whose own A-label is another is none."""
    assert domain_problem("XN--Mnchen-3YA.de") is None  # ASCII case: the same label
    assert domain_problem("xn--mnchen-3ya.de") is None
    upper = "M\u00dcnchen".encode("punycode").decode()  # Ü: IDNA 2008 holds no upper case
    assert domain_problem(f"xn--{upper}.de") is not None
    assert domain_key(f"xn--{upper}.de") != domain_key("m\u00fcnchen.de")


@pytest.mark.skipif(
    importlib.util.find_spec("idna") is None, reason="the idna package (IDNA 2008) is not here"
)
@settings(max_examples=400, deadline=None)
@given(
    st.text(
        st.sampled_from(
            "abkSsz09-\u00df\u1e9e\u03c2\u03c3\u03a3\u00fc\u00dcu\u0308\u0130i\u0307\u0131"
            "\u212a\u00ad\u200c\u200d\u034f\uff53\uff33\u3002\ufb01\u01c5\u00b2\u00b5"
            "\u0345\u1f88\u0149\u017f\u65e5\u672c\ud55c\u1100\u1161\u05d0"
            "l\u00b7\u30fb\u30a2\u05f3\u0915\u094d\u0661\u06f1"
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_name_taken_is_the_one_uts46_resolvers_take(label: str) -> None:
    """Where the reference implementation (the `idna` package) is at hand: every name we
    take is the name it makes of the same text, or one it refuses outright."""
    import idna

    name = f"{label}.example"
    ours = ascii_domain(name)
    if ours is None:
        return
    try:
        theirs = idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        return  # a rule we do not check (the bidi rule, RFC 5893): stricter, never another name
    assert ours == theirs.lower()


def isolated(code: str) -> subprocess.CompletedProcess[str]:
    """`code` in an interpreter of its own, without site: what it imports is ours alone."""
    source = str(Path(ssmtp_mailer.__file__).resolve().parent.parent)
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": source, "PATH": "/usr/bin:/bin"},
    )


def test_comparing_idn_domains_keeps_the_idna_2003_codec_off() -> None:
    """The stdlib `idna` codec (with stringprep) is IDNA 2003, and slow to import."""
    code = (
        "import sys\n"
        "from ssmtp_mailer.addresses import domain_key, domain_problem\n"
        "assert domain_key('stra\\u00dfe.example') == 'xn--strae-oqa.example'\n"
        "assert domain_problem('b\\u00fccher.example') is None\n"
        "print(' '.join(sorted(m for m in ('encodings.idna', 'stringprep') if m in sys.modules)))\n"
    )
    done = isolated(code)
    assert (done.returncode, done.stdout.strip()) == (0, ""), done.stderr


def test_an_ascii_name_costs_no_unicode_tables() -> None:
    """The sendmail path compares ASCII names without unicodedata (tests/test_sendmail.py)."""
    code = (
        "import sys\n"
        "from ssmtp_mailer.addresses import address_key, address_problem\n"
        "assert address_key('A@Mailer.Domain1.COM.') == ('a', 'mailer.domain1.com')\n"
        "assert address_problem('a@mailer--x.domain1.com') is None\n"
        "print('unicodedata' in sys.modules)\n"
    )
    done = isolated(code)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr
