"""DSN requests (RFC 3461) however a message enters: `sendmail -bs`, the listener, the maildrop.

The upstream is a real aiosmtpd server that offers DSN and records the parameters exactly
as it got them; the listener is a real process driven by smtplib.
"""

from __future__ import annotations

import json
import os
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smtpserver import Received, SMTPTestServer
from test_listener import Listener, listener_config, run_queue

from ssmtp_mailer import dialect, pickup, submit
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.message import Dsn, Intake, prepare, unxtext, xtext
from ssmtp_mailer.spool import list_entries

Run = Callable[..., tuple[int, str, str]]
SENDER = "app@host.example"
MESSAGE = f"From: {SENDER}\r\nTo: out@far.example\r\nSubject: dsn\r\n\r\nhi\r\n"


@pytest.fixture
def upstream(smtp_server_factory: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    return smtp_server_factory(dsn=True)


@pytest.fixture
def conf(tmp_path: Path, upstream: SMTPTestServer) -> Path:
    return listener_config(tmp_path / "l.conf", upstream.port, f"log_file = {tmp_path / 'log'}")


@pytest.fixture
def listener(conf: Path) -> Iterator[Listener]:
    started = Listener(conf)
    yield started
    assert started.stop() == 0


# -- the one parser ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "params", "values", "others"),
    [
        ("MAIL", ["ret=hdrs", "ENVID=Batch+2B7", "SIZE=10"], {"RET": "HDRS", "ENVID": "Batch+7"}, ["SIZE=10"]),
        ("MAIL", ["BODY=8BITMIME"], {}, ["BODY=8BITMIME"]),
        ("RCPT", ["notify=failure,delay,failure"], {"NOTIFY": "FAILURE,DELAY"}, []),
        ("RCPT", ["ORCPT=rfc822;Out+2Bx@far.example"], {"ORCPT": "rfc822;Out+2Bx@far.example"}, []),
        ("RCPT", ["ORCPT=utf-8;j\u00f6rg@far.example"], {"ORCPT": "utf-8;j\u00f6rg@far.example"}, []),
    ],
)  # fmt: skip
def test_dsn_parameters_are_split_checked_and_normalised(
    verb: str, params: list[str], values: dict[str, str], others: list[str]
) -> None:
    assert dialect.dsn_parameters(verb, params) == dialect.DsnParameters(values, others)


@pytest.mark.parametrize(
    ("verb", "param", "named"),
    [
        ("MAIL", "RET=BODY", "RET"),
        ("MAIL", "RET", "RET"),
        ("MAIL", "ENVID=a+b", "ENVID"),  # '+' starts a two-digit hex escape
        ("MAIL", "ENVID=a=b", "ENVID"),
        ("MAIL", "ENVID=a+0Ab", "ENVID"),  # a control character once decoded
        ("MAIL", "ENVID=" + "x" * 101, "ENVID"),
        ("RCPT", "NOTIFY=sometimes", "NOTIFY"),
        ("RCPT", "NOTIFY=NEVER,SUCCESS", "NOTIFY"),
        ("RCPT", "ORCPT=out@far.example", "ORCPT"),
        ("RCPT", "ORCPT=rfc822;", "ORCPT"),
        ("RCPT", "ORCPT=rfc822;j\u00f6rg@far.example", "ORCPT"),
        ("RCPT", "ORCPT=rfc822;" + "x" * 500, "ORCPT"),
    ],
)
def test_a_bad_dsn_parameter_gets_501_naming_it(verb: str, param: str, named: str) -> None:
    refusal = dialect.dsn_parameters(verb, [param]).refusal
    assert refusal is not None and refusal.startswith(f"501 5.5.4 Bad {named} parameter: ")


def test_a_dsn_parameter_given_twice_is_refused() -> None:
    refusal = dialect.dsn_parameters("MAIL", ["RET=FULL", "ret=hdrs"]).refusal
    assert refusal == "501 5.5.4 Bad RET parameter: given twice"


@pytest.mark.parametrize(
    ("verb", "param"), [("MAIL", "NOTIFY=NEVER"), ("RCPT", "RET=FULL"), ("RCPT", "XFOO=1")]
)
def test_a_parameter_out_of_place_or_unknown_gets_555_naming_it(verb: str, param: str) -> None:
    first = "SIZE=1" if verb == "MAIL" else "NOTIFY=NEVER"
    found = dialect.dsn_parameters(verb, [first, param])
    assert found.refusal == f"555 5.5.4 Unsupported parameter {param}"


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=100))
def test_xtext_decodes_what_it_encodes(text: str) -> None:
    assert unxtext(xtext(text)) == text


def test_one_notify_per_transaction() -> None:
    """A recipient asking for another NOTIFY than the earlier ones waits for its own message."""
    transaction = dialect.DsnTransaction({"RET": "HDRS", "ENVID": "e-1"})
    assert transaction.refusal("a@x.example", {"NOTIFY": "SUCCESS,FAILURE"}) is None
    transaction.accepted("a@x.example", {"NOTIFY": "SUCCESS,FAILURE"})
    assert transaction.refusal("b@x.example", {"NOTIFY": "FAILURE,SUCCESS"}) is None
    for other in ({"NOTIFY": "NEVER"}, {}):
        refusal = transaction.refusal("c@x.example", other)
        assert refusal is not None and refusal.startswith("455 4.5.4 <c@x.example>: NOTIFY")
    assert transaction.dsn() == Dsn("SUCCESS,FAILURE", "HDRS", "e-1")
    assert dialect.DsnTransaction({}).dsn() is None


def test_each_recipient_keeps_its_orcpt() -> None:
    """RFC 3461 §6.2.1: an ORCPT goes on with its own recipient, unchanged, also when a
    mapping rewrote the recipient; the recipients without one send none."""
    transaction = dialect.DsnTransaction({})
    transaction.accepted("a@x.example", {"ORCPT": "rfc822;A+2Bb@x.example"})
    transaction.accepted("b@x.example", {})
    dsn = transaction.dsn()
    assert dsn == Dsn(orcpt=(("a@x.example", "rfc822;A+2Bb@x.example"),))
    assert dsn.rcpt_options("a@X.EXAMPLE") == ["ORCPT=rfc822;A+2Bb@x.example"]
    assert dsn.rcpt_options("b@x.example") == []
    moved = dsn.renamed({"a@x.example": "sales@y.example"})
    assert moved.rcpt_options("sales@y.example") == ["ORCPT=rfc822;A+2Bb@x.example"]
    assert moved.rcpt_options("a@x.example") == []
    assert moved.flags() == {}  # the maildrop's and the spool's -N, -R and -V


# -- sendmail -bs ------------------------------------------------------------------------


def _bs(run_main: Run, conf: Path, commands: list[str]) -> list[str]:
    session = "".join(f"{c}\r\n" for c in commands).encode()
    code, out, _ = run_main(["-C", str(conf), "-bs"], session)
    assert code == 0
    return out.splitlines()


def test_sendmail_bs_passes_dsn_on_to_the_relay(
    conf: Path, upstream: SMTPTestServer, run_main: Run
) -> None:
    replies = _bs(
        run_main,
        conf,
        [
            "EHLO client.example",
            f"MAIL FROM:<{SENDER}> RET=HDRS ENVID=Batch+2B7",
            "RCPT TO:<out@far.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;out@far.example",
            "RCPT TO:<two@far.example> NOTIFY=failure,success",
            "RCPT TO:<three@far.example> NOTIFY=NEVER",
            "DATA",
            MESSAGE + ".",
            f"MAIL FROM:<{SENDER}>",
            "RCPT TO:<three@far.example> NOTIFY=NEVER",
            "DATA",
            MESSAGE + ".",
            "QUIT",
        ],
    )
    assert "250-DSN" in replies
    after_ehlo = replies[replies.index("250 HELP") + 1 :]
    assert [r[:3] for r in after_ehlo] == [
        "250", "250", "250", "455", "354", "250", "250", "250", "354", "250", "221",
    ]  # fmt: skip
    assert after_ehlo[3].startswith("455 4.5.4 <three@far.example>: NOTIFY differs")
    first, second = upstream.wait_for(2)
    assert first.rcpt_tos == ["out@far.example", "two@far.example"]
    assert first.mail_options[-2:] == ["RET=HDRS", "ENVID=Batch+2B7"]  # the case kept
    # Each RCPT as it came: the ORCPT only with its own recipient (RFC 3461 §6.2.1).
    assert first.rcpt_options == [
        "NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;out@far.example", "NOTIFY=SUCCESS,FAILURE",
    ]  # fmt: skip
    assert second.rcpt_tos == ["three@far.example"]
    assert second.rcpt_options == ["NOTIFY=NEVER"]
    assert not any(o.startswith(("RET=", "ENVID=")) for o in second.mail_options)


BAD_COMMANDS = [
    (f"MAIL FROM:<{SENDER}> RET=BODY", "501 5.5.4 Bad RET parameter: expected full or hdrs"),
    (f"MAIL FROM:<{SENDER}> ENVID=a+b", "501 5.5.4 Bad ENVID parameter: not xtext (RFC 3461 §4)"),
    (f"MAIL FROM:<{SENDER}> NOTIFY=NEVER", "555 5.5.4 Unsupported parameter NOTIFY=NEVER"),
    ("RCPT TO:<out@far.example> NOTIFY=sometimes", "501 5.5.4 Bad NOTIFY parameter: expected"),
    ("RCPT TO:<out@far.example> ORCPT=out@far.example", "501 5.5.4 Bad ORCPT parameter: expected"),
    ("RCPT TO:<out@far.example> XFOO=1", "555 5.5.4 Unsupported parameter XFOO=1"),
]


@pytest.mark.parametrize(("command", "reply"), BAD_COMMANDS)
def test_sendmail_bs_refuses_a_bad_dsn_parameter_in_one_line(
    conf: Path, upstream: SMTPTestServer, run_main: Run, command: str, reply: str
) -> None:
    before = [f"MAIL FROM:<{SENDER}>"] if command.startswith("RCPT") else []
    replies = _bs(run_main, conf, ["EHLO client.example", *before, command, "QUIT"])
    assert replies[-2].startswith(reply), replies
    assert upstream.messages == []


# -- the listener ------------------------------------------------------------------------


def test_the_listener_advertises_dsn_and_passes_it_on(
    conf: Path, upstream: SMTPTestServer, listener: Listener
) -> None:
    with listener.client() as client:
        client.ehlo("client.example")
        assert client.has_extn("dsn")
        refused = client.sendmail(
            SENDER,
            ["out@far.example", "two@far.example"],
            MESSAGE,
            mail_options=["RET=FULL", "ENVID=Order-17+2Bx"],
            rcpt_options=["NOTIFY=DELAY,FAILURE", "ORCPT=rfc822;out@far.example"],
        )
        assert refused == {}
    got = upstream.wait_for(1)[0]
    assert got.mail_from == SENDER and got.rcpt_tos == ["out@far.example", "two@far.example"]
    assert got.mail_options[-2:] == ["RET=FULL", "ENVID=Order-17+2Bx"]
    # smtplib gives every RCPT the same options: both recipients carry that ORCPT.
    assert got.rcpt_options == ["NOTIFY=DELAY,FAILURE", "ORCPT=rfc822;out@far.example"] * 2


def test_the_listener_refuses_a_second_notify_with_455_and_takes_it_next(
    conf: Path, upstream: SMTPTestServer, listener: Listener
) -> None:
    with listener.client() as client:
        client.ehlo("client.example")
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("a@far.example", ["NOTIFY=NEVER"])[0] == 250
        code, text = client.rcpt("b@far.example", ["NOTIFY=SUCCESS"])
        assert (code, text[:5]) == (455, b"4.5.4")
        code, text = client.rcpt("c@far.example")  # no NOTIFY is not NEVER either
        assert code == 455
        assert client.data(MESSAGE)[0] == 250
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("b@far.example", ["NOTIFY=SUCCESS"])[0] == 250
        assert client.data(MESSAGE)[0] == 250
    first, second = upstream.wait_for(2)
    assert (first.rcpt_tos, first.rcpt_options) == (["a@far.example"], ["NOTIFY=NEVER"])
    assert (second.rcpt_tos, second.rcpt_options) == (["b@far.example"], ["NOTIFY=SUCCESS"])


def test_the_listener_and_sendmail_bs_refuse_bad_parameters_alike(
    conf: Path, upstream: SMTPTestServer, listener: Listener
) -> None:
    with listener.client() as client:
        client.ehlo("client.example")
        for command, reply in BAD_COMMANDS:
            if command.startswith("RCPT"):
                assert client.mail(SENDER)[0] == 250
            code, text = client.docmd(command)
            assert f"{code} {text.decode()}".startswith(reply), (command, code, text)
            client.rset()
    assert upstream.messages == []


# -- the failure notice ------------------------------------------------------------------


def test_orcpt_survives_mapping_and_queue_and_names_the_original_in_a_notice(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
) -> None:
    """RFC 3461 §6.2.1: the ORCPT a client gave goes on unchanged with its recipient, after
    a mapping rewrote that recipient and after a night in the queue; and our own failure
    notice names it as Original-Recipient (RFC 3464 §2.3.1)."""
    upstream = smtp_server_factory(dsn=True, fault="451-rcpt")
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    listener = Listener(conf)
    try:
        with listener.client() as client:
            for rcpt, orcpt in (
                ("contact-sales@mailer.domain1.com", "rfc822;contact-sales@mailer.domain1.com"),
                ("gone@far.example", "rfc822;Gone+2Bold@far.example"),
            ):
                client.ehlo("client.example")
                assert client.mail(SENDER)[0] == 250
                assert client.rcpt(rcpt, ["NOTIFY=FAILURE", f"ORCPT={orcpt}"])[0] == 250
                code, text = client.data(MESSAGE)
                assert code == 250 and b"queued as" in text
    finally:
        assert listener.stop() == 0
    upstream.fault = "550-rcpt:gone@far.example"
    run_queue(conf)
    delivered, notice = sorted(upstream.wait_for(2), key=lambda m: m.mail_from != SENDER)
    assert delivered.rcpt_tos == ["contact-sales@domain1.com"]  # the mapping's work
    assert delivered.rcpt_options == [
        "NOTIFY=FAILURE",
        "ORCPT=rfc822;contact-sales@mailer.domain1.com",
    ]
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == [SENDER]
    assert b"Original-Recipient: rfc822; Gone+old@far.example" in notice.data
    assert b"Final-Recipient: rfc822; gone@far.example" in notice.data


def test_an_orcpt_in_a_failure_notice_stays_one_printable_line() -> None:
    """Any client may send an ORCPT: decoded, it must not end the field (a header of the
    client's own in our notice) nor leave ASCII (the notice could not be built at all)."""
    from ssmtp_mailer.spool.bounce import original_recipient

    assert original_recipient("rfc822;Gone+2Bold@far.example") == "rfc822; Gone+old@far.example"
    injected = "rfc822;a+0D+0AX-Injected:+20yes@x.example"
    assert original_recipient(injected) == "rfc822; a+0D+0AX-Injected:+20yes@x.example"
    assert original_recipient("utf-8;j\u00f6rg@far.example") == "utf-8; j\\x{F6}rg@far.example"


def test_notify_never_over_the_listener_means_no_failure_notice(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
) -> None:
    """Queued by the listener, refused for good by the relay later: only one sender hears."""
    upstream = smtp_server_factory(dsn=True, fault="451-rcpt")
    conf = listener_config(tmp_path / "l.conf", upstream.port)
    listener = Listener(conf)
    try:
        with listener.client() as client:
            for notify, envid in (("NEVER", "quiet-1"), ("FAILURE", "loud-2")):
                client.ehlo("client.example")
                assert client.mail(SENDER, [f"ENVID={envid}"])[0] == 250
                assert client.rcpt("out@far.example", [f"NOTIFY={notify}"])[0] == 250
                code, text = client.data(MESSAGE)
                assert code == 250 and b"queued as" in text
    finally:
        assert listener.stop() == 0
    assert len(list_entries(load_config(str(conf)))) == 2
    upstream.fault = "550-rcpt:out@far.example"
    run_queue(conf)
    [notice] = upstream.wait_for(1)
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == [SENDER]
    assert b"Original-Envelope-Id: loud-2" in notice.data
    assert len(list_entries(load_config(str(conf)), failed=True)) == 2


# -- the maildrop ------------------------------------------------------------------------


def _drop(conf: Path, dsn: Dsn | None, envelope: dict[str, object] | None = None) -> Path:
    """A maildrop file as the submitting sendmail writes it (here as root)."""
    config = load_config(str(conf))
    submit.ensure_submission_dirs(config)
    prepared = prepare(
        MESSAGE.encode(),
        Intake(recipients=("out@far.example",), envelope_from=SENDER, dsn=dsn),
        hostname="host.example",
        default_from=SENDER,
        max_size=10**6,
    )
    raw = submit.maildrop_bytes(prepared, bytes(prepared.data))
    if envelope is not None:
        head, _, data = raw[len(submit.MAILDROP_MAGIC) :].partition(b"\n")
        changed = {**json.loads(head), **envelope}
        raw = submit.MAILDROP_MAGIC + json.dumps(changed).encode() + b"\n" + data
    path = config.global_.spool_dir / submit.MAILDROP / "dropped"
    path.write_bytes(raw)
    os.chmod(path, 0o600)
    return path


def test_the_maildrop_keeps_the_dsn_request(conf: Path, upstream: SMTPTestServer) -> None:
    path = _drop(conf, Dsn("SUCCESS", "HDRS", "a+b=c"))
    assert json.loads(path.read_bytes().splitlines()[1])["dsn"] == {
        "notify": "SUCCESS",
        "ret": "HDRS",
        "envid": "a+b=c",
    }
    assert pickup.pick_up(load_config(str(conf))) == 1
    got = upstream.wait_for(1)[0]
    assert got.mail_options[-2:] == ["RET=HDRS", "ENVID=a+2Bb+3Dc"]
    assert got.rcpt_options == ["NOTIFY=SUCCESS"]
    assert not path.exists()


@pytest.mark.parametrize(
    ("dsn", "why"),
    [
        ({"notify": "sometimes"}, "-N 'sometimes'"),
        ({"ret": "BODY"}, "-R 'BODY'"),
        ({"envid": "x" * 101}, "-V"),
        ({"notify": 3}, "values must be strings"),
        ({"orcpt": "rfc822;a@b"}, "not an object of notify, ret and envid"),
        ("NEVER", "not an object of notify, ret and envid"),
    ],
)
def test_a_bad_dsn_in_a_maildrop_file_is_logged_and_nothing_sent(
    tmp_path: Path, conf: Path, upstream: SMTPTestServer, dsn: object, why: str
) -> None:
    path = _drop(conf, None, {"dsn": dsn})
    config = load_config(str(conf))
    assert pickup.pick_up(config) == 0
    [line] = [x for x in (tmp_path / "log").read_text().splitlines() if "maildrop" in x]
    assert "maildrop dropped from uid 0 (root): dsn: " in line and why in line
    # Kept for the administrator, like any unreadable maildrop file, and named only once.
    kept = config.global_.spool_dir / pickup.CORRUPT / "dropped"
    assert line.endswith(f"moved to {kept}") and not path.exists()
    assert kept.read_bytes().startswith(submit.MAILDROP_MAGIC)
    assert pickup.pick_up(config) == 0
    assert (tmp_path / "log").read_text().count("maildrop dropped") == 1
    assert upstream.messages == []


def test_smtplib_without_dsn_parameters_sends_none(
    conf: Path, upstream: SMTPTestServer, listener: Listener
) -> None:
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client:
        assert client.sendmail(SENDER, ["out@far.example"], MESSAGE) == {}
    got = upstream.wait_for(1)[0]
    assert got.rcpt_options == []
    assert not any(o.startswith(("RET=", "ENVID=")) for o in got.mail_options)


# -- what our own failure notices return (RFC 3461 §4.3) ----------------------------------


def _notice_for(
    tmp_path: Path,
    server: SMTPTestServer,
    capsys: pytest.CaptureFixture[str],
    dsn: Dsn | None,
    data: bytes,
    **settings: object,
) -> Received:
    """`queue run` of one entry whose recipient the relay refuses for good: the notice
    the same relay got for its sender."""
    from test_spool import SENDER as SPOOL_SENDER
    from test_spool import group_for, write_config

    from ssmtp_mailer import spool
    from ssmtp_mailer.entry import main

    server.fault = "550-rcpt:gone@dest.example"
    config = write_config(tmp_path, server.port, **settings)
    spool.enqueue(
        config, group_for(config, SPOOL_SENDER, "gone@dest.example"), data, smtputf8=False,
        eightbit=not data.isascii(), reason="relay down", dsn=dsn,
    )  # fmt: skip
    assert main(["queue", "-C", str(config.main_file), "run", "--all"]) == 0
    assert capsys.readouterr().out.endswith(", 1 bounce(s) sent\n")
    [notice] = server.messages
    assert notice.mail_from in ("", "<>") and notice.rcpt_tos == [SPOOL_SENDER]
    return notice


def _original(n: int, body: str = "") -> bytes:
    return (
        f"From: app@test.example\r\nTo: gone@dest.example\r\nSubject: ret {n}\r\n"
        f"Message-ID: <{n}.ret@test.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body or 'the body'}\r\n"
    ).encode()


@pytest.mark.parametrize("body", ["plain ASCII text", "8-bit: Grüße aus Köln"])
def test_ret_full_returns_the_whole_message(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    capsys: pytest.CaptureFixture[str],
    body: str,
) -> None:
    """`-R full`: the notice ended "attached below (headers only)", text/rfc822-headers."""
    data = _original(1, body)
    notice = _notice_for(tmp_path, smtp_server_factory(), capsys, Dsn(ret="FULL"), data)
    parts = list(notice.message().iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert "It is attached below. <gone@" in " ".join(parts[0].get_content().split())
    assert data + b"\r\n--" in notice.data  # byte for byte, headers and body
    [returned] = parts[2].iter_parts()
    assert returned["Message-ID"] == "<1.ret@test.example>"
    assert returned.get_content() == f"{body}\r\n"  # its last line end kept
    eightbit = not body.isascii()
    assert ("BODY=8BITMIME" in notice.mail_options) is eightbit
    assert (parts[2]["Content-Transfer-Encoding"] == "8bit") is eightbit


@pytest.mark.parametrize("dsn", [None, Dsn(ret="HDRS")])
def test_without_ret_full_a_notice_returns_the_headers(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    capsys: pytest.CaptureFixture[str],
    dsn: Dsn | None,
) -> None:
    notice = _notice_for(tmp_path, smtp_server_factory(), capsys, dsn, _original(2))
    parts = list(notice.message().iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert "attached below (headers only). <gone@" in " ".join(parts[0].get_content().split())
    assert "<2.ret@test.example>" in str(parts[2].get_payload())
    assert b"the body" not in notice.data


def test_ret_full_returns_only_the_headers_of_a_message_too_large(
    tmp_path: Path,
    smtp_server_factory: Callable[..., SMTPTestServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A notice never grows past max_message_size (as Postfix's bounce_size_limit); the
    sender is told why the body is missing."""
    data = _original(3, "x" * 3000)
    notice = _notice_for(
        tmp_path, smtp_server_factory(), capsys, Dsn(ret="FULL"), data, max_message_size=4000
    )
    parts = list(notice.message().iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert (
        f"It is attached below (headers only: the whole message, {len(data)} octets,"
        " is too large to return)." in " ".join(parts[0].get_content().split())
    )
    assert b"x" * 100 not in notice.data and len(notice.data) < 4000
