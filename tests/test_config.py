"""The configuration system: discovery, every key, every bad input, check and show."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmtp_mailer.config.ini import unquote
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.config.model import AuthMethod, HostPort, TempFailurePolicy
from ssmtp_mailer.entry import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "ssmtp-mailer" / "ssmtp-mailer.conf"
SINGLE = REPO / "etc" / "examples" / "single-relay.conf"

RELAY = """
[domain:example.com]
smtp_server = smtp.example.com
username = me@example.com
"""


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args), prog_name="ssmtp-mailer")
    out, err = capsys.readouterr()
    return code, out, err


def check(capsys: pytest.CaptureFixture[str], conf: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "config", "check", "--config", str(conf), *extra)


# --- the shipped examples ----------------------------------------------------------------


@pytest.mark.parametrize("conf", [EXAMPLE, SINGLE], ids=["seed-004-tree", "single-relay"])
def test_shipped_examples_pass_check(capsys: pytest.CaptureFixture[str], conf: Path) -> None:
    code, out, err = check(capsys, conf)
    assert code == 0, err
    assert "OK" in out
    assert err == ""


def test_seed_004_tree_loads_every_section() -> None:
    config = load_config(str(EXAMPLE))
    assert set(config.domains) == {"domain1.com", "mailer.domain1.com"}
    gmail = config.domains["domain1.com"]
    assert (gmail.smtp_server, gmail.smtp_port, gmail.auth_method) == (
        "smtp.gmail.com",
        587,
        AuthMethod.LOGIN,
    )
    assert gmail.use_starttls and not gmail.use_ssl and gmail.tls_verify
    assert [m.name for m in config.mappings] == [
        "contact-general",
        "contact-legal",
        "contact-privacy",
        "contact-support",
        "contact-sales",
    ]
    assert config.mappings[0].to_pattern == "contact-general@domain1.com"
    assert config.users[0].allowed_domains == ("domain1.com",)
    assert config.global_.default_hostname == "mailer.domain1.com"
    assert config.global_.domains_dir == EXAMPLE.parent / "domains"
    assert config.mappings[0].location.path.endswith("relay-mappings.conf")


# --- syntax and types ---------------------------------------------------------------------


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    conf = write(tmp_path / "m.conf", "[global]\ndefault_hostname = host.example\n" + RELAY)
    config = load_config(str(conf))
    g = config.global_
    assert g.default_from.endswith("@host.example")
    assert (g.max_connections, g.connection_timeout, g.read_timeout, g.max_retries) == (
        10,
        30,
        60,
        3,
    )
    assert g.on_temporary_failure is TempFailurePolicy.QUEUE
    assert g.listen_address == (HostPort("127.0.0.1", 25),)
    assert g.allowed_networks == ("127.0.0.0/8", "::1/128")
    d = config.domains["example.com"]
    assert (d.smtp_port, d.use_starttls, d.tls_verify, d.helo_name) == (
        587,
        True,
        True,
        "host.example",
    )
    assert d.rate_limit_per_minute == 100


def test_use_ssl_defaults_to_port_465_without_starttls(tmp_path: Path) -> None:
    conf = write(tmp_path / "m.conf", "[domain:x]\nsmtp_server = s.example\nuse_ssl = yes\n")
    d = load_config(str(conf)).domains["x"]
    assert (d.smtp_port, d.use_ssl, d.use_starttls) == (465, True, False)


@pytest.mark.parametrize(
    "word,value",
    [
        ("true", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        ("TRUE", True),
        ("false", False),
        ("no", False),
        ("off", False),
        ("0", False),
    ],
)
def test_all_boolean_spellings(tmp_path: Path, word: str, value: bool) -> None:
    conf = write(tmp_path / "m.conf", f"[global]\nbounce = {word}\n")
    assert load_config(str(conf)).global_.bounce is value


@pytest.mark.parametrize("text", ["a.example, b.example:2525", '["a.example", "b.example:2525"]'])
def test_both_list_syntaxes(tmp_path: Path, text: str) -> None:
    conf = write(
        tmp_path / "m.conf", f"[domain:x]\nsmtp_server = s.example\nfallback_servers = {text}\n"
    )
    assert load_config(str(conf)).domains["x"].fallback_servers == (
        HostPort("a.example"),
        HostPort("b.example", 2525),
    )


def test_inline_comments_and_quoted_values(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "m.conf",
        (
            "[global]\nmax_retries = 5   # five tries\nretry_backoff = 7 ; seconds\n"
            "[domain:x]\nsmtp_server = s.example\nusername = u@x.example\n"
            'password = "pa ss #not-a-comment"  # a comment\n'
        ),
    )
    config = load_config(str(conf))
    assert (config.global_.max_retries, config.global_.retry_backoff) == (5, 7)
    assert config.domains["x"].password == "pa ss #not-a-comment"


def test_utf8_bom_and_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "m.conf"
    path.write_bytes(
        "\ufeff[global]\r\nmax_retries = 4\r\n\r\n[domain:x]\r\nsmtp_server = s.example\r\n".encode()
    )
    config = load_config(str(path))
    assert config.global_.max_retries == 4
    assert config.domains["x"].smtp_server == "s.example"


def test_directories_are_read_in_sorted_order(tmp_path: Path) -> None:
    conf = write(tmp_path / "m.conf", "[global]\ndefault_hostname = h.example\n")
    write(tmp_path / "domains" / "b.conf", "[domain:b]\nsmtp_server = b.example\n")
    write(tmp_path / "domains" / "a.conf", "[domain:a]\nsmtp_server = a.example\n")
    write(tmp_path / "domains" / "ignored.txt", "not read")
    write(
        tmp_path / "mappings" / "2.conf",
        "[mapping:second]\nfrom_pattern = x@h.example\nto_pattern = y@a\n",
    )
    write(
        tmp_path / "mappings" / "1.conf",
        "[mapping:first]\nfrom_pattern = z@h.example\nto_pattern = y@a\n",
    )
    config = load_config(str(conf))
    assert list(config.domains) == ["a", "b"]
    assert [m.name for m in config.mappings] == ["first", "second"]


def test_template_user_expands_over_allowed_types(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "m.conf",
        (
            "[user:alerts-{type}@example.com]\ntemplate_address = true\nallowed_types = cron, backup\n"
        ),
    )
    assert [u.address for u in load_config(str(conf)).users] == [
        "alerts-cron@example.com",
        "alerts-backup@example.com",
    ]


def test_discovery_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    user_file = write(
        isolated_env / "config" / "ssmtp-mailer" / "ssmtp-mailer.conf",
        "[global]\nmax_retries = 1\n",
    )
    env_file = write(tmp_path / "env.conf", "[global]\nmax_retries = 2\n")
    flag_file = write(tmp_path / "flag.conf", "[global]\nmax_retries = 3\n")
    assert load_config(None).main_file == user_file
    monkeypatch.setenv("SSMTP_MAILER_CONFIG", str(env_file))
    assert load_config(None).global_.max_retries == 2
    assert load_config(str(flag_file)).global_.max_retries == 3


def test_no_configuration_anywhere_is_exit_78(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ssmtp_mailer.paths.SYSTEM_CONFIG", Path("/nonexistent/ssmtp-mailer.conf"))
    code, _, err = run(capsys, "config", "check")
    assert code == 78
    assert "no configuration file found" in err
    assert "Traceback" not in err


# --- bad input: one clear line with file:line, exit 78, never a traceback --------------------

BAD: dict[str, tuple[str | bytes, str]] = {
    "key-outside-section": ("smtp_port = 25\n[global]\n", ":1: smtp_port: key outside any section"),
    "section-without-name": ("[domain:]\nsmtp_server = x\n", ":1: section [domain:] has no name"),
    "not-ini": ("this is { not an ini file }\n", ":1: expected 'key = value'"),
    "port-abc": (
        "[domain:x]\nsmtp_server = s\nsmtp_port = abc\n",
        ":3: smtp_port: expected a port number, got 'abc'",
    ),
    "port-70000": (
        "[domain:x]\nsmtp_server = s\nsmtp_port = 70000\n",
        ":3: smtp_port: expected a port number (1-65535), got 70000",
    ),
    "bool-maybe": (
        "[domain:x]\nsmtp_server = s\nuse_ssl = maybe\n",
        ":3: use_ssl: expected true/false",
    ),
    "ssl-and-starttls": (
        "[domain:x]\nsmtp_server = s\nuse_ssl = true\nuse_starttls = true\n",
        ":4: use_starttls: cannot be true together with use_ssl",
    ),
    "mapping-to-missing-domain": (
        "[domain:x]\nsmtp_server = s\n[mapping:m]\nfrom_pattern = a@b.example\nto_pattern = c@d.example\ndomain = nowhere\n",
        ":3: domain: [mapping:m] names [domain:nowhere], which is not configured",
    ),
    "unknown-section": ("[domian:x]\n", ":1: unknown section [domian:x]"),
    "duplicate-key": (
        "[global]\nbounce = yes\nbounce = no\n",
        ":3: bounce: set twice in one section (first at",
    ),
    "relay-without-server": (
        "[domain:x]\nusername = u\n",
        ":1: smtp_server: required for a relay route",
    ),
    "wildcard-target-without-wildcard-source": (
        "[mapping:m]\nfrom_pattern = a@b.example\nto_pattern = *@d.example\n",
        ":3: to_pattern: '*@d.example' keeps the local part",
    ),
    "missing-ca-file": (
        "[domain:x]\nsmtp_server = s\nssl_ca_file = /nonexistent/ca.pem\n",
        ":3: ssl_ca_file: /nonexistent/ca.pem: no such file",
    ),
    "bad-log-level": ("[global]\nlog_level = LOUD\n", ":2: log_level: expected DEBUG, INFO"),
    "not-utf8": (b"[global]\ndefault_from = \xff\xfe@x\n", ":2: not valid UTF-8"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_names_file_line_and_exits_78(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    text, expected = BAD[name]
    conf = tmp_path / "bad.conf"
    if isinstance(text, bytes):
        conf.write_bytes(text)
    else:
        conf.write_text(text)
    code, _, err = check(capsys, conf)
    assert code == 78
    assert f"{conf}{expected}" in err, err
    assert "Traceback" not in err
    assert all(line.startswith("ssmtp-mailer: ") for line in err.splitlines())


def test_a_malformed_line_never_echoes_a_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(tmp_path / "m.conf", "[domain:x]\nsmtp_server = s\npassword hunter2-secret\n")
    code, out, err = check(capsys, conf)
    assert code == 78
    assert f"{conf}:3: expected 'key = value' or '[section]', got a line starting 'password'" in err
    assert "hunter2" not in out + err


def test_every_problem_is_reported_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(
        tmp_path / "m.conf",
        "[global]\nmax_retries = many\n[domain:x]\nsmtp_server = s\nsmtp_port = abc\nuse_ssl = maybe\n",
    )
    code, _, err = check(capsys, conf)
    assert code == 78
    assert ":2: max_retries" in err and ":5: smtp_port" in err and ":6: use_ssl" in err


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = check(capsys, tmp_path / "absent.conf")
    assert code == 78
    assert err == f"ssmtp-mailer: {tmp_path / 'absent.conf'}: no such file (from -C/--config)\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file regardless of permissions")
def test_unreadable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = write(tmp_path / "m.conf", "[global]\n", mode=0o000)
    code, _, err = check(capsys, conf)
    assert code == 78
    assert f"{conf}: cannot read: Permission denied" in err


def test_config_path_that_is_a_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = check(capsys, tmp_path)
    assert code == 78
    assert "is a directory" in err


def test_domains_dir_that_is_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write(tmp_path / "notadir", "x")
    conf = write(tmp_path / "m.conf", "[global]\ndomains_dir = notadir\n")
    code, _, err = check(capsys, conf)
    assert code == 78
    assert f"{conf}:2: domains_dir: {tmp_path / 'notadir'} is not a directory" in err


def test_same_section_in_two_files_names_both(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(tmp_path / "m.conf", "[global]\n")
    a = write(tmp_path / "domains" / "a.conf", "[domain:x]\nsmtp_server = a.example\n")
    b = write(tmp_path / "domains" / "b.conf", "\n[domain:X]\nsmtp_server = b.example\n")
    code, _, err = check(capsys, conf)
    assert code == 78
    assert f"{b}:2: [domain:X] is defined twice (also at {a}:1)" in err


def test_unknown_key_warns_and_strict_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(tmp_path / "m.conf", "[global]\nmax_retriess = 3\n")
    code, _, err = check(capsys, conf)
    assert code == 0
    assert f"warning: {conf}:2: max_retriess: unknown key" in err
    code, _, err = check(capsys, conf, "--strict")
    assert code == 78
    assert f"{conf}:2: max_retriess: unknown key" in err


def test_strict_still_lists_every_problem_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An unknown key that --strict makes an error stops no other check: the listener's
    settings are reported beside it, not only after it is fixed."""
    conf = write(
        tmp_path / "m.conf",
        "[global]\nlisten_user = no-such-user-here\n" + RELAY + "smtp_prot = 25\n",
    )
    code, _, err = check(capsys, conf, "--strict")
    assert code == 78 and "warning" not in err
    assert "smtp_prot: unknown key" in err
    assert "listen_user: no such user: no-such-user-here" in err


def test_a_broken_route_is_not_also_called_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """default_domain names a [domain:] whose own value is wrong: that value is the error,
    on its own line; no second one saying the route does not exist."""
    conf = write(
        tmp_path / "m.conf",
        "[global]\ndefault_domain = example.com\n"
        "[domain:example.com]\nsmtp_server = smtp.example.com\nsmtp_port = many\n",
    )
    code, _, err = check(capsys, conf)
    assert code == 78
    assert err.count("\n") == 1 and f"{conf}:5: smtp_port" in err, err


def test_a_global_key_s_error_names_its_own_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(tmp_path / "m.conf", "[global]\nmax_retries = 3\ndefault_domain = nowhere\n")
    code, _, err = check(capsys, conf)
    assert code == 78 and f"{conf}:3: default_domain: no [domain:nowhere]" in err


def test_a_configuration_without_routes_is_checked_with_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(tmp_path / "m.conf", "[global]\ndefault_hostname = host.example\n")
    code, out, err = check(capsys, conf)
    assert code == 0 and "OK: 0 routes, 0 users, 0 mappings in 1 file\n" in out
    assert f"warning: {conf}: no [domain:] section: nothing can be sent" in err
    assert check(capsys, conf, "--strict")[0] == 78


# --- secrets ------------------------------------------------------------------------------


def test_password_in_world_readable_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(tmp_path / "m.conf", RELAY + "password = hunter2-secret\n", mode=0o644)
    code, out, err = check(capsys, conf)
    assert code == 78
    assert f"{conf}:5: password: holds a password but is readable by others (mode 0644)" in err
    assert "chmod 600" in err
    assert "hunter2-secret" not in out + err


def test_password_in_private_file_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(tmp_path / "m.conf", RELAY + "password = hunter2-secret\n", mode=0o600)
    code, out, err = check(capsys, conf, "--secrets")
    assert code == 0, err
    assert "hunter2-secret" not in out + err


def test_failing_password_command_is_a_clear_error_only_with_secrets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    conf = write(
        tmp_path / "m.conf", RELAY + f"password_command = touch {marker}; echo nope >&2; exit 1\n"
    )
    code, _, err = check(capsys, conf)
    assert code == 0, err
    assert not marker.exists(), "config check must not run password commands without --secrets"
    code, _, err = check(capsys, conf, "--secrets")
    assert code == 78
    assert "password_command: command exited with status 1" in err
    # What a helper says on stderr may hold the secret: never in our error (or the log,
    # or failed/); it reaches a terminal only.
    assert "nope" not in err and "Traceback" not in err


def test_a_password_command_that_hangs_is_ended_with_all_it_started(tmp_path: Path) -> None:
    """On the 10 s time-out only the shell was killed: `sleep` went on as an orphan."""
    import subprocess

    from ssmtp_mailer.config import secrets
    from ssmtp_mailer.errors import TempFailError

    script = tmp_path / "slow.sh"
    session = tmp_path / "sid"  # field 6 of /proc/PID/stat: the session's id
    script.write_text(f"#!/bin/sh\nawk '{{print $6}}' /proc/$$/stat > {session}\nsleep 300\n")
    script.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(secrets, "COMMAND_TIMEOUT", 1)
        with pytest.raises(TempFailError):
            secrets.run_secret_command(str(script), "password_command")
    sid = session.read_text().strip()
    for _ in range(50):  # killed; then reaped by init
        left = subprocess.run(["pgrep", "-s", sid], capture_output=True, text=True).stdout
        if not left:
            break
        time.sleep(0.1)
    assert left == "", "the command's session is still running"


def test_password_command_first_line_is_used(tmp_path: Path) -> None:
    from ssmtp_mailer.config.secrets import resolve_password

    conf = write(
        tmp_path / "m.conf", RELAY + "password_command = printf 'first line\\nsecond\\n'\n"
    )
    assert resolve_password(load_config(str(conf)).domains["example.com"]) == "first line"


def test_keyring_password_set_and_delete(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from ssmtp_mailer.config.secrets import resolve_password

    conf = write(tmp_path / "m.conf", RELAY)
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret from stdin\n"))
    code, out, err = run(capsys, "password", "set", "example.com", "--config", str(conf))
    assert code == 0, err
    assert "s3cret" not in out + err
    assert resolve_password(load_config(str(conf)).domains["example.com"]) == "s3cret from stdin"
    code, _, err = run(capsys, "config", "check", "--secrets", "--config", str(conf))
    assert code == 0, err
    code, _, _ = run(capsys, "password", "delete", "example.com", "--config", str(conf))
    assert code == 0
    code, _, err = run(capsys, "config", "check", "--secrets", "--config", str(conf))
    assert code == 78
    assert "no password for me@example.com" in err
    code, _, err = run(capsys, "password", "set", "nosuch", "--config", str(conf))
    assert code == 78
    assert "[domain:nosuch]: no such route (routes: example.com)" in err
    # Stored all the same, but said: a route's own password_command comes first.
    conf.write_text(RELAY + "password_command = echo other\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("unused\n"))
    code, _, err = run(capsys, "password", "set", "example.com", "--config", str(conf))
    assert code == 0
    assert "has password_command, which is used instead of the keyring" in err


# --- config show --------------------------------------------------------------------------


@pytest.fixture
def secret_conf(tmp_path: Path) -> Path:
    return write(
        tmp_path / "m.conf",
        "[global]\ndefault_hostname = h.example\n" + RELAY + "password = hunter2-secret\n",
    )


def test_show_ini_is_loadable_and_redacted(
    capsys: pytest.CaptureFixture[str], secret_conf: Path, tmp_path: Path
) -> None:
    code, out, err = run(capsys, "config", "show", "--config", str(secret_conf))
    assert code == 0, err
    assert "hunter2-secret" not in out
    assert "password = <redacted>" in out
    assert "connection_timeout = 30" in out
    again = write(tmp_path / "again" / "m.conf", out)
    assert load_config(str(again)).domains["example.com"].smtp_server == "smtp.example.com"


def test_shown_configuration_passes_a_strict_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`config show > file` is a configuration of its own: no internal field in it (the
    line each [global] key was on came out as `key_lines`, an unknown key)."""
    conf = write(tmp_path / "m.conf", "[global]\ndefault_hostname = h.example\n" + RELAY)
    for name in ("domains", "users", "mappings"):
        (tmp_path / name).mkdir()
    code, out, err = run(capsys, "config", "show", "--config", str(conf))
    assert code == 0, err
    assert "key_lines" not in out
    again = write(tmp_path / "again" / "m.conf", out)
    code, _, err = check(capsys, again, "--strict")
    assert (code, err) == (0, "")


def test_unverified_tls_is_warned_at_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = write(tmp_path / "m.conf", "[global]\n" + RELAY + "tls_verify = false\n")
    code, _, err = check(capsys, conf)
    assert code == 0
    assert "tls_verify = false: the relay's certificate is not checked" in err
    pinned = write(tmp_path / "p.conf", conf.read_text() + f"tls_fingerprint = {'ab' * 32}\n")
    code, _, err = check(capsys, pinned)
    assert code == 0 and "tls_verify" not in err


def test_show_toml_round_trips(capsys: pytest.CaptureFixture[str], secret_conf: Path) -> None:
    code, out, _ = run(capsys, "config", "show", "--format", "toml", "--config", str(secret_conf))
    assert code == 0
    data = tomllib.loads(out)
    assert data["domain"]["example.com"]["smtp_port"] == 587
    assert data["domain"]["example.com"]["password"] == "<redacted>"
    assert data["global"]["default_hostname"] == "h.example"
    assert "hunter2-secret" not in out


def test_show_json(capsys: pytest.CaptureFixture[str], secret_conf: Path) -> None:
    code, out, _ = run(capsys, "config", "show", "--format", "json", "--config", str(secret_conf))
    assert code == 0
    data = json.loads(out)
    assert data["domain"]["example.com"]["auth_method"] == "AUTO"
    assert "hunter2-secret" not in out


def test_show_writes_host_ports_as_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = write(
        tmp_path / "m.conf",
        "[global]\nlisten_address = [::1]:2525\n"
        + RELAY
        + "fallback_servers = b.example:2525, [2001:db8::1]:25, c.example\n",
    )
    code, out, _ = run(capsys, "config", "show", "--format", "json", "--config", str(conf))
    assert code == 0
    data = json.loads(out)
    assert data["global"]["listen_address"] == ["[::1]:2525"]
    assert data["domain"]["example.com"]["fallback_servers"] == [
        "b.example:2525",
        "[2001:db8::1]:25",
        "c.example",
    ]
    code, out, _ = run(capsys, "config", "show", "--config", str(conf))
    assert code == 0
    assert "fallback_servers = b.example:2525, [2001:db8::1]:25, c.example\n" in out
    assert "listen_address = [::1]:2525\n" in out


def test_a_route_repr_hides_its_password(secret_conf: Path) -> None:
    route = load_config(str(secret_conf)).domains["example.com"]
    assert "hunter2-secret" not in repr(route)
    assert "hunter2-secret" not in str(route)
    assert "smtp_server='smtp.example.com'" in repr(route)


def test_check_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = write(tmp_path / "m.conf", "[domain:x]\nsmtp_port = abc\n")
    code, out, _ = run(capsys, "config", "check", "--json", "--config", str(conf))
    assert code == 78
    data = json.loads(out)
    assert data["ok"] is False
    assert any(":2: smtp_port" in e for e in data["errors"])


# --- entry point --------------------------------------------------------------------------


def test_unknown_subcommand_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 64
    assert "No such command 'frobnicate'" in err


def test_newaliases_explains_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([], prog_name="/usr/bin/newaliases")
    _, err = capsys.readouterr()
    assert code == 0
    assert "mapping" in err


# Characters that make JSON strings interesting: quotes, escapes and their letters, hex
# digits of surrogates, controls, and a lone surrogate of each half.
_JSON_PIECES = st.text(
    alphabet=st.sampled_from(
        ['"', "\\", "u", "d", "D", "8", "b", "c", "0", "f", "F", "n", "/", "x", "\x00", "\x1f",
         " ", "é", "\ud83d", "\ude00", "😀"]
    ),
    max_size=30,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        _JSON_PIECES,
        st.text(max_size=30),
        st.text(max_size=30).map(lambda s: json.dumps(s)[1:-1]),
        st.text(max_size=30).map(lambda s: json.dumps(s, ensure_ascii=False)[1:-1]),
    )
)
def test_a_quoted_value_is_what_json_reads_or_else_its_text(body: str) -> None:
    """`"..."` holds a JSON string (man page: JSON escapes); one JSON refuses stays as written."""
    value = f'"{body}"'
    try:
        expected = json.loads(value)
    except ValueError:
        expected = body
    assert unquote(value) == expected


def test_a_password_with_escapes_is_read_as_written_in_json(tmp_path: Path) -> None:
    secret = 'S3cret: p@ss#"word \\ ünïcode 😀\t'
    conf = write(
        tmp_path / "m.conf",
        "[domain:x]\nsmtp_server = s.example\nusername = u@x.example\n"
        f"password = {json.dumps(secret)}\n",
    )
    assert load_config(str(conf)).domains["x"].password == secret


def test_a_client_key_that_is_encrypted_or_open_to_others_is_found_by_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    """An encrypted ssl_key_file passed check, then had OpenSSL ask for its pass phrase at
    every send (a sendmail run from a shell hung there); one others may read passed too."""
    from cryptography.hazmat.primitives import serialization

    issued = tls_ca.issue_cert("client.example")
    cert = tmp_path / "client.crt"
    cert.write_bytes(issued.cert_chain_pems[0].bytes())
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"kpass"),
        )
    )
    encrypted.chmod(0o600)
    conf = write(
        tmp_path / "m.conf",
        RELAY + f"ssl_cert_file = {cert}\nssl_key_file = {encrypted}\n",
    )
    code, _, err = check(capsys, conf)
    assert code == 78
    assert "the key is encrypted; store it unencrypted" in err and "Traceback" not in err
    plain = tmp_path / "plain.key"
    plain.write_bytes(issued.private_key_pem.bytes())
    plain.chmod(0o644)
    conf.write_text(conf.read_text().replace(str(encrypted), str(plain)))
    code, out, err = check(capsys, conf)
    assert code == 0, err
    assert "ssl_key_file: holds a TLS private key but is readable by others" in out + err


def test_a_password_without_a_username_is_warned_of(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No username, so no AUTH: the relay's 530 at every send was the first word of it."""
    conf = write(
        tmp_path / "m.conf", "[domain:example.com]\nsmtp_server = smtp.example.com\npassword = x\n"
    )
    code, out, err = check(capsys, conf)
    assert code == 0, err
    assert "password: set without a username, so no login is tried" in out + err
    code, _, err = check(capsys, conf, "--strict")
    assert code == 78
