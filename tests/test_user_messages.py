"""What the commands tell a user: the author's Reply-To kept, errors short and right, hints true."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from relayconf import write_relay_config
from test_acceptance import closed_port

Run = Callable[..., tuple[int, str, str]]
EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "ssmtp-mailer" / "ssmtp-mailer.conf"


def cli(run_main: Run, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    return run_main(list(args), stdin, prog="ssmtp-mailer")


def test_authors_reply_to_survives_a_rewritten_from(run_main: Run) -> None:
    code, out, err = cli(
        run_main, "send", "--dry-run", "--json", "--config", str(EXAMPLE),
        "--from", "visitor@outside.example", "--reply-to", "list@outside.example",
        "--to", "contact-general@mailer.domain1.com", "--subject", "s", "--body", "b",
    )  # fmt: skip
    assert code == 0, err
    [transaction] = json.loads(out)["transactions"]
    message = transaction["message"]
    assert "Reply-To: list@outside.example" in message
    assert "Reply-To: visitor@outside.example" not in message


def test_reply_to_is_set_to_the_author_when_there_is_none(run_main: Run) -> None:
    code, out, err = cli(
        run_main, "send", "--dry-run", "--json", "--config", str(EXAMPLE),
        "--from", "visitor@outside.example", "--to", "contact-general@mailer.domain1.com",
        "--subject", "s", "--body", "b",
    )  # fmt: skip
    assert code == 0, err
    [transaction] = json.loads(out)["transactions"]
    assert "Reply-To: visitor@outside.example" in transaction["message"]


def test_a_huge_value_is_cut_in_the_error(tmp_path: Path, run_main: Run) -> None:
    conf = write_relay_config(tmp_path / "m.conf", closed_port())
    conf.write_text(
        conf.read_text().replace("smtp_server = 127.0.0.1", "smtp_server = " + "x!" * 5_000_000)
    )
    code, _, err = run_main(["-C", str(conf), "a@example.org"], b"Subject: s\n\nb\n")
    assert code == 78
    assert "smtp_server" in err and "10000000 characters" in err
    assert len(err) < 2000


def test_config_check_shows_warnings_beside_errors(tmp_path: Path, run_main: Run) -> None:
    conf = write_relay_config(
        tmp_path / "m.conf", closed_port(), "no_such_key = 1\nmax_retries = lots"
    )
    code, _, err = cli(run_main, "config", "check", "--config", str(conf))
    assert code == 78
    assert "max_retries" in err
    assert "warning:" in err and "no_such_key" in err


def test_config_check_secrets_accepts_an_oauth2_route(tmp_path: Path, run_main: Run) -> None:
    conf = write_relay_config(tmp_path / "m.conf", closed_port())
    conf.write_text(
        conf.read_text().replace(
            "auth_method = NONE",
            "auth_method = AUTO\nusername = me@example.com\noauth2_token_command = echo tok",
        )
    )
    code, out, err = cli(run_main, "config", "check", "--secrets", "--config", str(conf))
    assert code == 0, err
    assert "OK" in out


def test_password_delete_of_a_missing_entry_is_a_sysexit(tmp_path: Path, run_main: Run) -> None:
    conf = write_relay_config(tmp_path / "m.conf", closed_port())
    conf.write_text(conf.read_text() + "\n[domain:nosuch]\nsmtp_server = 127.0.0.1\n")
    code, _, err = cli(run_main, "password", "delete", "nosuch", "--config", str(conf))
    assert code == 64
    assert "no password stored" in err


def test_send_without_recipients_hints_at_send_options(tmp_path: Path, run_main: Run) -> None:
    conf = write_relay_config(tmp_path / "m.conf", closed_port())
    code, _, err = cli(run_main, "send", "--config", str(conf), "--subject", "s", "--body", "b")
    assert code == 64
    assert "--to" in err and "-t" not in err.replace("--to", "")


def test_sendmail_help_through_the_subcommand_lists_the_flags(run_main: Run) -> None:
    code, out, _ = cli(run_main, "sendmail", "--help")
    assert code == 0
    assert "-t " in out and "-bs" in out and "-V ENVID" in out
    assert "sendmail -?" not in out


def test_route_says_what_happens_to_a_rewritten_sender(run_main: Run) -> None:
    code, out, err = cli(
        run_main, "route", "-C", str(EXAMPLE), "--from", "visitor@outside.example",
        "--to", "contact-general@mailer.domain1.com",
    )  # fmt: skip
    assert code == 0, err
    assert "envelope sender becomes" in out
    assert "may not send through" not in out


def test_dkim_keygen_without_cryptography_is_one_line(tmp_path: Path) -> None:
    """As in the zipapp, which carries no native parts: a clear error, not an internal one."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class NoCrypto:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'cryptography':\n"
        "            raise ImportError('no cryptography here')\n"
        "sys.meta_path.insert(0, NoCrypto())\n"
        "from ssmtp_mailer.entry import main\n"
        "sys.exit(main(sys.argv[1:], prog_name='ssmtp-mailer'))\n"
    )
    out = tmp_path / "k.pem"
    done = subprocess.run(
        [sys.executable, "-c", code, "dkim", "keygen", "--domain", "example.com",
         "--selector", "s1", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 69, done.stderr
    assert done.stderr.startswith("ssmtp-mailer: cryptography: not installed")
    assert "internal error" not in done.stderr and not out.exists()


def test_a_missing_file_names_the_option_sendmail_was_given(run_main: Run) -> None:
    """`sendmail -C /nonexistent`: the error said "(from --config)", a flag sendmail has not."""
    assert run_main(["-C", "/nonexistent", "a@b.example"], b"Subject: s\n\nb\n") == (
        78,
        "",
        "ssmtp-mailer: /nonexistent: no such file (from -C/--config)\n",
    )
