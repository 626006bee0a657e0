"""`config import --from ssmtp|msmtp`: real-world samples become a tree that checks and sends."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from relayconf import RunMain
from smtpserver import SMTPTestServer

from ssmtp_mailer.config import importers, secrets
from ssmtp_mailer.config.loader import load_config_file
from ssmtp_mailer.config.model import AuthMethod
from ssmtp_mailer.errors import ConfigError

Factory = Callable[..., SMTPTestServer]

# What Debian's ssmtp package installs, filled in the way its users do (comments kept).
SSMTP_CONF = """\
#
# Config file for sSMTP sendmail
#
# The person who gets all mail for userids < 1000
# Make this empty to disable rewriting.
root=postmaster@example.com

# The place where the mail goes. The actual machine name is required no
# MX records are consulted. Commonly mailhosts are named mail.domain.com
mailhub=smtp.gmail.com:587

AuthUser=alerts@example.com
AuthPass=app-password-1234
AuthMethod=LOGIN
UseTLS=YES
UseSTARTTLS=YES
TLS_CA_File=/etc/ssl/certs/ca-certificates.crt

# Where will the mail seem to come from?
rewriteDomain=example.com

# The full hostname
hostname=web1.example.com

# Are users allowed to set their own From: address?
# YES - Allow the user to specify their own From: address
# NO - Use the system generated From: address
FromLineOverride=YES
"""

REVALIASES = """\
# sSMTP aliases
#
# Format:	local_account:outgoing_address:mailhub
#
# Example: root:your_login@your.domain:your.domain:587
www-data:web@example.com:smtp.gmail.com:587
backup:backup@example.org:smtp.example.org:465
nagios:nagios@example.com
"""

MSMTPRC = """\
# /etc/msmtprc: system-wide msmtp configuration
defaults
auth           on
tls            on
tls_trust_file /etc/ssl/certs/ca-certificates.crt
logfile        /var/log/msmtp.log
syslog         LOG_MAIL
timeout        20
aliases        {aliases}

# Gmail with an app password from pass(1)
account        gmail
host           smtp.gmail.com
port           587
from           alerts@example.com
user           alerts@example.com
passwordeval   "pass show mail/gmail | head -n1"

# Amazon SES, implicit TLS, inline password
account        ses
host           email-smtp.eu-west-1.amazonaws.com
port           465
tls_starttls   off
from           reports@example.org
user           AKIAEXAMPLEEXAMPLE
password       "pa ss#word"
dsn_notify     failure

# The office relay: self-signed, pinned; inherits gmail's settings
account        office : gmail
host           mail.office.example
tls_fingerprint 9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08
from           *@office.example
user           relay
auth           login
domain         web1.example.com

account default : gmail
"""

ALIASES = """\
# msmtp aliases (local recipients)
root: admin@example.com
postmaster: admin@example.com, ops@example.com
default: admin@example.com
"""


def run_import(run_main: RunMain, *args: str) -> tuple[int, str, str]:
    return run_main(["config", "import", *args], prog="ssmtp-mailer")


def sections(path: Path) -> str:
    return path.read_text()


def is_private(path: Path) -> bool:
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode & 0o007 == 0 and secrets.secret_file_problem(path) is None


def test_ssmtp_with_revaliases(run_main: RunMain, tmp_path: Path) -> None:
    conf = tmp_path / "ssmtp.conf"
    conf.write_text(SSMTP_CONF)
    aliases = tmp_path / "revaliases"
    aliases.write_text(REVALIASES)
    out = tmp_path / "new"
    code, stdout, err = run_import(
        run_main, "--from", "ssmtp", str(conf), "--revaliases", str(aliases), "--out", str(out)
    )
    assert code == 0, err
    assert "passes `ssmtp-mailer config check`" in stdout
    config = load_config_file(out / "ssmtp-mailer.conf", strict=True)
    g = config.global_
    assert (g.default_hostname, g.default_domain) == ("example.com", "relay")
    relay = config.domains["relay"]
    assert (relay.smtp_server, relay.smtp_port) == ("smtp.gmail.com", 587)
    assert (relay.use_starttls, relay.use_ssl, relay.tls_verify) == (True, False, True)
    assert relay.ssl_ca_file is None  # the system bundle is the default store
    assert relay.username == relay.relay_account == "alerts@example.com"
    assert relay.auth_method == AuthMethod.AUTO
    assert relay.helo_name == "web1.example.com"
    assert secrets.resolve_password(relay) == "app-password-1234"
    assert is_private(out / "domains" / "relay.conf")
    assert "app-password" not in (out / "ssmtp-mailer.conf").read_text()
    assert "app-password" not in stdout + err
    # backup's own mailhub is a route of its own, with the same credentials.
    other = config.domains["relay-smtp.example.org-465"]
    assert (other.smtp_server, other.smtp_port, other.use_starttls) == (
        "smtp.example.org",
        465,
        True,
    )
    assert secrets.resolve_password(other) == "app-password-1234"
    mappings = {m.from_pattern: m for m in config.mappings}
    assert mappings["root"].to_pattern == "postmaster@example.com"
    assert (mappings["www-data"].to_pattern, mappings["www-data"].domain) == (
        "web@example.com",
        "relay",
    )
    assert mappings["backup"].domain == "relay-smtp.example.org-465"
    assert mappings["nagios"].to_pattern == "nagios@example.com"
    # What ssmtp did that now differs is said, not hidden.
    assert "uid < 1000" in stdout
    assert "as a recipient too" in stdout
    code, stdout, err = run_main(
        ["config", "check", "--strict", "-C", str(out / "ssmtp-mailer.conf")], prog="ssmtp-mailer"
    )
    assert code == 0, err
    assert "OK: 2 routes, 0 users, 4 mappings" in stdout


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("mailhub=mail.example.com:465\nUseTLS=YES\n", (465, True, False)),
        ("mailhub=mail.example.com\nUseTLS=YES\n", (465, True, False)),
        (
            "mailhub=mail.example.com\nRemotePort=2525\nUseTLS=YES\nUseSTARTTLS=YES\n",
            (2525, False, True),
        ),
        ("mailhub=mail.example.com\nport=587\nUseTLS=YES\nUseSTARTTLS=YES\n", (587, False, True)),
        ("mailhub=mail.example.com\n", (25, False, False)),
        ("mailhub=mail.example.com:587\nUseSTARTTLS=YES\n", (587, False, True)),
    ],
)
def test_ssmtp_tls_and_port(lines: str, expected: tuple[int, bool, bool]) -> None:
    imported = importers.import_ssmtp(lines, "ssmtp.conf")
    route = next(f.text for f in imported.files if f.path == "domains/relay.conf")
    port, implicit, starttls = expected
    assert f"smtp_port = {port}\n" in route
    assert ("use_ssl = true\n" in route) is implicit
    assert f"use_starttls = {'true' if starttls else 'false'}\n" in route
    assert "auth_method = NONE\n" in route
    if port == 25:
        assert any("port 25" in note for note in imported.notes)


def test_ssmtp_notes_what_differs() -> None:
    imported = importers.import_ssmtp(
        "mailhub=relay.example.com\nAuthUser=me\nAuthPass=abc#def\nAuthMethod=cram-md5\n"
        "TLS_CA_Dir=/etc/ssl/certs\nUseTLSCert=YES\nTLSCert=/nonexistent/ssmtp.pem\nDebug=YES\n"
        "Sendmail=/usr/sbin/ssmtp\nmailhub smtp.other.example\n",
        "ssmtp.conf",
        exists=lambda path: not path.startswith("/nonexistent"),
    )
    notes = "\n".join(imported.notes)
    assert "ssmtp.conf:9: sendmail: unknown" in notes
    assert "ssmtp.conf:10: not a Key=Value line, skipped" in notes
    assert "without TLS" in notes
    assert "up to a space, tab, '=' or '#'" in notes
    assert "TLS_CA_Dir" in notes
    assert "/nonexistent/ssmtp.pem: no such file here, ssl_cert_file not set" in notes
    assert "FromLineOverride=NO" in notes
    route = next(f.text for f in imported.files if f.path == "domains/relay.conf")
    assert "auth_method = CRAM-MD5\n" in route
    assert 'password = "abc"\n' in route
    assert "log_level = DEBUG" in imported.files[0].text


def test_ssmtp_without_mailhub_is_a_config_error(run_main: RunMain, tmp_path: Path) -> None:
    conf = tmp_path / "ssmtp.conf"
    conf.write_text("root=postmaster\nhostname=a.example\n")
    code, _, err = run_import(run_main, "--from", "ssmtp", str(conf), "--out", str(tmp_path / "o"))
    assert code == 78
    assert err == f"ssmtp-mailer: {conf}: mailhub: not set; there is no relay to import\n"
    assert not (tmp_path / "o").exists()


def test_msmtp_accounts_become_routes(run_main: RunMain, tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text(ALIASES)
    rc = tmp_path / "msmtprc"
    rc.write_text(MSMTPRC.format(aliases=aliases))
    out = tmp_path / "new"
    code, stdout, err = run_import(run_main, "--from", "msmtp", str(rc), "--out", str(out))
    assert code == 0, err
    config = load_config_file(out / "ssmtp-mailer.conf")
    g = config.global_
    assert g.default_domain == "example.com"  # `account default : gmail`
    assert (str(g.log_file), g.syslog, g.connection_timeout) == ("/var/log/msmtp.log", True, 20)
    assert sorted(config.domains) == ["example.com", "example.org", "office.example"]
    gmail = config.domains["example.com"]
    assert (gmail.smtp_server, gmail.smtp_port, gmail.use_starttls) == ("smtp.gmail.com", 587, True)
    assert gmail.password_command == "pass show mail/gmail | head -n1"
    assert gmail.relay_account == "alerts@example.com"
    ses = config.domains["example.org"]
    assert (ses.smtp_port, ses.use_ssl, ses.use_starttls) == (465, True, False)
    assert secrets.resolve_password(ses) == "pa ss#word"
    assert is_private(out / "domains" / "example.org.conf")
    assert not is_private(out / "domains" / "example.com.conf")  # no secret in it
    office = config.domains["office.example"]
    assert (
        office.tls_fingerprint == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    )
    assert (office.auth_method, office.username) == (AuthMethod.LOGIN, "relay")
    assert office.helo_name == "web1.example.com"
    assert office.password_command == gmail.password_command  # inherited from gmail
    assert office.relay_account is None  # a pattern is not an address to send as
    mappings = {m.from_pattern: m.to_pattern for m in config.mappings}
    assert mappings == {"root": "admin@example.com", "postmaster": "admin@example.com"}
    assert "dsn_notify: pass -N to sendmail instead" in stdout
    assert "ops@example.com dropped" in stdout
    assert "default: admin@example.com: not carried over" in stdout
    assert "pa ss#word" not in stdout + err


def test_msmtp_one_account_and_keyring(run_main: RunMain, tmp_path: Path) -> None:
    rc = tmp_path / "msmtprc"
    rc.write_text(MSMTPRC.format(aliases=tmp_path / "missing-aliases"))
    out = tmp_path / "new"
    code, stdout, err = run_import(
        run_main,
        "--from",
        "msmtp",
        str(rc),
        "--account",
        "ses",
        "--passwords",
        "keyring",
        "--out",
        str(out),
    )
    assert code == 0, err
    config = load_config_file(out / "ssmtp-mailer.conf")
    assert list(config.domains) == ["example.org"]
    assert config.global_.default_domain == "example.org"
    ses = config.domains["example.org"]
    assert ses.password is None
    assert secrets.resolve_password(ses) == "pa ss#word"  # from the keyring now
    assert "stored the password for [domain:example.org] in the keyring" in stdout
    assert "missing-aliases: msmtp's aliases file cannot be read" in stdout


def test_passwords_omitted_print_the_command(run_main: RunMain, tmp_path: Path) -> None:
    conf = tmp_path / "ssmtp.conf"
    conf.write_text(SSMTP_CONF)
    out = tmp_path / "new"
    code, stdout, err = run_import(
        run_main, "--from", "ssmtp", str(conf), "--passwords", "omit", "--json", "--out", str(out)
    )
    assert code == 0, err
    data = json.loads(stdout)
    main = out / "ssmtp-mailer.conf"
    assert data["ok"] is True
    assert data["commands"] == [f"ssmtp-mailer --config {main} password set relay"]
    assert all("app-password" not in Path(f).read_text() for f in data["files"])
    # The printed command works: it stores the password where the route finds it.
    code, _, err = run_main(
        ["--config", str(main), "password", "set", "relay"],
        stdin=b"app-password-1234\n",
        prog="ssmtp-mailer",
    )
    assert code == 0, err
    route = load_config_file(main).domains["relay"]
    assert secrets.resolve_password(route) == "app-password-1234"


def test_existing_files_are_kept_without_force(run_main: RunMain, tmp_path: Path) -> None:
    conf = tmp_path / "ssmtp.conf"
    conf.write_text(SSMTP_CONF)
    out = tmp_path / "new"
    out.mkdir()
    (out / "ssmtp-mailer.conf").write_text("[global]\n")
    code, _, err = run_import(run_main, "--from", "ssmtp", str(conf), "--out", str(out))
    assert code == 64
    assert "already holds ssmtp-mailer.conf" in err
    assert (out / "ssmtp-mailer.conf").read_text() == "[global]\n"
    code, _, err = run_import(run_main, "--from", "ssmtp", str(conf), "--out", str(out), "--force")
    assert code == 0, err
    assert "default_domain = relay" in (out / "ssmtp-mailer.conf").read_text()
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left


@pytest.mark.parametrize(
    ("kind", "text", "why"),
    [
        ("msmtp", "host smtp.example.com\n", "host: outside any account"),
        ("msmtp", "account a : b\nhost x.example\n", "account b: not defined above"),
        ("msmtp", "account a\nfrom a@example.com\n", "account a: host: not set"),
        ("msmtp", "# nothing\n", "no account defined"),
        ("ssmtp", "mailhub=bad!host\n", "expected a host name"),
    ],
)
def test_bad_sources(run_main: RunMain, tmp_path: Path, kind: str, text: str, why: str) -> None:
    source = tmp_path / "source"
    source.write_text(text)
    code, _, err = run_import(run_main, "--from", kind, str(source), "--out", str(tmp_path / "o"))
    assert code == 78
    assert err.startswith("ssmtp-mailer: ") and why in err and len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_unreadable_source_and_wrong_options(run_main: RunMain, tmp_path: Path) -> None:
    code, _, err = run_import(
        run_main, "--from", "ssmtp", str(tmp_path / "none"), "--out", str(tmp_path / "o")
    )
    assert (code, err) == (
        78,
        f"ssmtp-mailer: {tmp_path / 'none'}: cannot read: No such file or directory\n",
    )
    rc = tmp_path / "msmtprc"
    rc.write_text("account a\nhost x.example\n")
    code, _, err = run_import(
        run_main, "--from", "msmtp", str(rc), "--revaliases", str(rc), "--out", str(tmp_path / "o")
    )
    assert code == 64 and "--revaliases is for --from ssmtp" in err
    code, _, err = run_import(
        run_main, "--from", "msmtp", str(rc), "--account", "nope", "--out", str(tmp_path / "o")
    )
    assert code == 78 and "account nope: not defined" in err


def test_imported_tree_sends(
    run_main: RunMain, smtp_server_factory: Factory, tmp_path: Path, ca_file: Path
) -> None:
    """The migration's point: cron's mail to root leaves through the old relay, as before."""
    server = smtp_server_factory(starttls=True, auth={"alerts@example.com": "app-password-1234"})
    conf = tmp_path / "ssmtp.conf"
    conf.write_text(
        SSMTP_CONF.replace("smtp.gmail.com:587", f"127.0.0.1:{server.port}").replace(
            "/etc/ssl/certs/ca-certificates.crt", str(ca_file)
        )
    )
    out = tmp_path / "new"
    code, _, err = run_import(run_main, "--from", "ssmtp", str(conf), "--out", str(out))
    assert code == 0, err
    main = out / "ssmtp-mailer.conf"
    with main.open("a") as handle:  # keep this test's queue out of the system spool
        handle.write(f"spool_dir = {tmp_path / 'spool'}\n")
    code, _, err = run_main(
        ["-C", str(main), "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        stdin=b"Subject: cron output\n\ndisk 90% full\n",
    )
    assert code == 0, err
    [message] = server.messages
    assert message.rcpt_tos == ["postmaster@example.com"]
    assert message.auth_user == "alerts@example.com"
    assert message.tls


def test_importers_are_pure_text_in_text_out() -> None:
    rc = textwrap.dedent(
        """\
        account work
        host smtp.office365.com
        port 587
        tls on
        from me@corp.example
        user me@corp.example
        auth xoauth2
        passwordeval "oauth2ms"
        account home
        host smtp.example.net
        from me@corp.example
        auth off
        tls_certcheck off
        """
    )
    imported = importers.import_msmtp(rc, "msmtprc")
    files = {f.path: f.text for f in imported.files}
    # Two accounts with one from-domain: each keeps its own route, and a mapping says which.
    assert set(files) == {
        "ssmtp-mailer.conf",
        "domains/work.conf",
        "domains/home.conf",
        "mappings/msmtp.conf",
    }
    assert "auth_method = XOAUTH2\n" in files["domains/work.conf"]
    assert "oauth2_token_command = oauth2ms\n" in files["domains/work.conf"]
    assert "tls_verify = false\n" in files["domains/home.conf"]
    assert any("no default account" in note for note in imported.notes)
    with pytest.raises(ConfigError):
        importers.import_msmtp("account x\n", "msmtprc")
    assert os.sep not in importers._file_name("a/b")


@pytest.mark.parametrize(
    "password",
    ['p"q\\r', "x #y ;z", "  spaced  ", "[not a list]", "mot de passe é\u2028fin", "'quoted'"],
)
def test_any_password_reads_back_as_it_was(tmp_path: Path, password: str) -> None:
    rc = f'account a\nhost smtp.example.com\nfrom a@example.com\nauth on\nuser a\npassword "{password}"\n'
    imported = importers.import_msmtp(rc, "msmtprc")
    for item in imported.files:
        path = tmp_path / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item.text)
        path.chmod(0o600)
    route = load_config_file(tmp_path / "ssmtp-mailer.conf").domains["example.com"]
    assert route.password == password


def test_duplicates_and_quirks_are_reported_not_written(tmp_path: Path) -> None:
    aliases = "root: a@example.com\nroot: b@example.com\n"
    rc = (
        "account a\nhost smtp.example.com\nfrom a@example.com\nremove_bcc_headers off\n"
        "aliases /etc/aliases\n"
    )
    imported = importers.import_msmtp(rc, "msmtprc", read_aliases={"/etc/aliases": aliases}.get)
    notes = "\n".join(imported.notes)
    assert "root is listed twice, the first is kept" in notes
    assert "remove_bcc_headers: Bcc headers are always removed" in notes
    mappings = next(f.text for f in imported.files if f.path.startswith("mappings/"))
    assert mappings.count("[mapping:") == 1 and "a@example.com" in mappings
    with pytest.raises(ConfigError, match="expected a host name"):
        importers.import_ssmtp(
            "mailhub=smtp.example.com\nhostname=bad!host\nrewriteDomain=example.com\n", "c"
        )


def test_msmtp_substitutions_in_from() -> None:
    rc = (
        "account users\nhost smtp.example.com\nfrom %U@example.com\n"
        "account host\nhost smtp.example.net\nfrom %U@%H\nsyslog on\n"
    )
    imported = importers.import_msmtp(rc, "msmtprc")
    paths = sorted(f.path for f in imported.files)
    assert paths == ["domains/example.com.conf", "domains/host.conf", "ssmtp-mailer.conf"]
    notes = "\n".join(imported.notes)
    assert "from %U@%H: route named host" in notes
    assert "syslog facility on: LOG_MAIL is used" in notes


def test_msmtp_user_without_auth_does_not_authenticate() -> None:
    """As msmtp itself: `auth` defaults to off, a `user` alone does not turn it on."""
    imported = importers.import_msmtp(
        "account a\nhost smtp.example.com\nfrom a@example.com\nuser bob\n", "msmtprc"
    )
    route = next(f.text for f in imported.files if f.path == "domains/example.com.conf")
    assert "auth_method = NONE\n" in route and "username" not in route
    assert any("user bob but auth off" in note for note in imported.notes)


def test_a_result_that_fails_check_replaces_nothing(run_main: RunMain, tmp_path: Path) -> None:
    rc = tmp_path / "msmtprc"
    rc.write_text("account a\nhost smtp.example.com\nfrom not an@address.example\n")
    out = tmp_path / "etc"
    out.mkdir()
    (out / "ssmtp-mailer.conf").write_text("[global]\n# the working configuration\n")
    code, stdout, err = run_import(
        run_main, "--from", "msmtp", str(rc), "--out", str(out), "--force"
    )
    assert code == 78, stdout
    assert f"{out}/domains/address.example.conf:" in err and "relay_account" in err
    assert (out / "ssmtp-mailer.conf").read_text() == "[global]\n# the working configuration\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc", "msmtprc"]  # no stage left


def test_an_import_under_umask_000_makes_a_tree_no_one_else_may_change(
    run_main: RunMain, tmp_path: Path
) -> None:
    """Its folders were made 0777 under umask 000: anyone could add a route file with a
    password_command that root's sendmail runs (the loader now refuses such a tree)."""
    rc = tmp_path / "msmtprc"
    aliases = tmp_path / "aliases"
    aliases.write_text(ALIASES)
    rc.write_text(MSMTPRC.format(aliases=aliases))
    out = tmp_path / "new" / "etc"
    old = os.umask(0)
    try:
        code, _, err = run_import(run_main, "--from", "msmtp", str(rc), "--out", str(out))
    finally:
        os.umask(old)
    assert code == 0, err
    for folder in (tmp_path / "new", out, out / "domains"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    load_config_file(out / "ssmtp-mailer.conf")  # the loader takes it
