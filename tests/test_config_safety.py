"""Configuration that others could change, broken include entries and checks at load."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest
from relayconf import RunMain
from test_submit import _as_nobody, shared_dir  # noqa: F401 (a fixture)

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

MAIN = "[global]\ndefault_domain = relay.example\n"
ROUTE = "[domain:relay.example]\nsmtp_server = 127.0.0.1\nsmtp_port = 9\n"


def tree(base: Path, route: str = ROUTE) -> Path:
    (base / "domains").mkdir(parents=True, mode=0o755)
    main = base / "ssmtp-mailer.conf"
    main.write_text(MAIN)
    main.chmod(0o644)
    (base / "domains" / "relay.conf").write_text(route)
    (base / "domains" / "relay.conf").chmod(0o600)
    return main


def check(run_main: RunMain, main: Path) -> tuple[int, str]:
    code, _, err = run_main(["config", "check", "--config", str(main)], prog="ssmtp-mailer")
    return code, err


def test_a_tree_only_root_may_write_loads(tmp_path: Path, run_main: RunMain) -> None:
    assert check(run_main, tree(tmp_path)) == (0, "")


def test_an_included_file_others_may_write_is_refused(tmp_path: Path, run_main: RunMain) -> None:
    main = tree(tmp_path)
    bad = tmp_path / "domains" / "x.conf"
    bad.write_text("[domain:x.example]\nsmtp_server = 127.0.0.1\npassword_command = id\n")
    bad.chmod(0o666)
    code, err = check(run_main, main)
    assert code == 78
    assert f"ssmtp-mailer: {bad}: writable by others (mode 0666); chmod o-w {bad}\n" in err


def test_an_include_folder_others_may_write_is_refused_even_sticky(
    tmp_path: Path, run_main: RunMain
) -> None:
    main = tree(tmp_path)
    (tmp_path / "domains").chmod(0o1777)
    code, err = check(run_main, main)
    assert code == 78
    folder = tmp_path / "domains"
    assert f"ssmtp-mailer: {folder}: writable by others (mode 1777); chmod o-w {folder}\n" in err


def test_sendmail_runs_no_password_command_from_a_file_others_may_write(
    tmp_path: Path, run_main: RunMain
) -> None:
    main = tree(tmp_path)
    pwned = tmp_path / "pwned"
    bad = tmp_path / "domains" / "relay.conf"
    bad.write_text(ROUTE + f"username = u\npassword_command = touch {pwned}; echo x\n")
    bad.chmod(0o666)
    code, _, err = run_main(["-C", str(main), "-t"], stdin=b"To: a@b.example\n\nhi\n")
    assert code == 78
    assert "writable by others" in err
    assert not pwned.exists()


@needs_root
def test_a_file_another_user_owns_is_refused(tmp_path: Path, run_main: RunMain) -> None:
    main = tree(tmp_path)
    included = tmp_path / "domains" / "relay.conf"
    os.chown(included, NOBODY.pw_uid, 0)
    code, err = check(run_main, main)
    assert code == 78
    assert f"ssmtp-mailer: {included}: owned by nobody, not root; chown root {included}\n" in err


@needs_root
def test_a_main_file_writable_by_a_group_other_than_roots_is_refused(
    tmp_path: Path, run_main: RunMain
) -> None:
    main = tree(tmp_path)
    os.chown(main, 0, NOBODY.pw_gid)
    main.chmod(0o664)
    code, err = check(run_main, main)
    assert code == 78
    assert f"ssmtp-mailer: {main}: writable by group" in err
    assert f"chmod g-w {main}\n" in err
    os.chown(main, 0, 0)  # root's group may write it
    assert check(run_main, main) == (0, "")


@needs_root
def test_a_sticky_folder_open_to_all_holds_only_a_main_file_of_ours(
    tmp_path: Path, run_main: RunMain
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    main = shared / "m.conf"
    main.write_text(MAIN.replace("default_domain = relay.example\n", "") + ROUTE)
    main.chmod(0o644)
    assert check(run_main, main) == (0, "")
    os.chown(main, NOBODY.pw_uid, NOBODY.pw_gid)
    code, err = check(run_main, main)
    assert code == 78
    assert f"ssmtp-mailer: {main}: owned by nobody" in err
    os.chown(main, 0, 0)
    shared.chmod(0o777)  # not sticky: anyone may replace the file
    code, err = check(run_main, main)
    assert code == 78
    assert f"ssmtp-mailer: {shared}: writable by others (mode 0777); chmod o-w {shared}\n" in err


def test_a_link_to_a_file_others_may_write_is_refused(tmp_path: Path, run_main: RunMain) -> None:
    main = tree(tmp_path)
    target = tmp_path / "elsewhere.conf"
    target.write_text("[domain:x.example]\nsmtp_server = 127.0.0.1\n")
    target.chmod(0o666)
    link = tmp_path / "domains" / "x.conf"
    link.symlink_to(target)
    code, err = check(run_main, main)
    assert code == 78
    assert f"ssmtp-mailer: {link}: writable by others (mode 0666)" in err


# --- every folder on the way to a file, links followed -------------------------------------


@pytest.mark.parametrize("linked", ["main", "included"])
def test_a_link_into_a_folder_others_may_write_is_refused(
    tmp_path: Path, run_main: RunMain, linked: str
) -> None:
    """Who may write the folder of the link's target may put another file there."""
    main = tree(tmp_path / "etc")
    folder = tmp_path / "srv" / "conf"
    folder.mkdir(parents=True, mode=0o755)
    pwned = tmp_path / "pwned"
    target = folder / "mailer.conf"
    route = ROUTE + f"username = u\npassword_command = touch {pwned}; echo x\n"
    if linked == "main":
        target.write_text(MAIN + route.replace("relay.example", "other.example"))
        main.unlink()
        main.symlink_to(target)
    else:
        target.write_text(route.replace("relay.example", "other.example"))
        (tmp_path / "etc" / "domains" / "other.conf").symlink_to(target)
    target.chmod(0o644)
    assert check(run_main, main) == (0, "")
    folder.chmod(0o777)
    code, _, err = run_main(["-C", str(main), "-t"], stdin=b"To: a@other.example\n\nhi\n")
    assert code == 78
    assert f"ssmtp-mailer: {folder}: writable by others (mode 0777); chmod o-w {folder}\n" in err
    assert not pwned.exists()


@needs_root
@pytest.mark.parametrize("how", ["owner", "group"])
def test_a_folder_above_the_tree_another_user_may_write_is_refused(
    tmp_path: Path, run_main: RunMain, how: str
) -> None:
    """/srv writable by another user: /srv/conf, the tree's folder, could be replaced."""
    grandparent = tmp_path / "srv"
    main = tree(grandparent / "conf")
    if how == "owner":
        os.chown(grandparent, NOBODY.pw_uid, 0)
        why = f"owned by nobody, not root; chown root {grandparent}"
    else:
        os.chown(grandparent, 0, NOBODY.pw_gid)
        grandparent.chmod(0o775)
        group = grp.getgrgid(NOBODY.pw_gid).gr_name
        why = f"writable by group {group} (mode 0775); chmod g-w {grandparent}"
    code, err = check(run_main, main)
    assert code == 78
    assert err == f"ssmtp-mailer: {grandparent}: {why}\n"


@needs_root
def test_a_link_whose_targets_grandparent_another_user_owns_is_refused_once(
    tmp_path: Path, run_main: RunMain
) -> None:
    main = tree(tmp_path / "etc")
    grandparent = tmp_path / "srv"
    (grandparent / "conf").mkdir(parents=True)
    for name in ("a", "b"):
        target = grandparent / "conf" / f"{name}.conf"
        target.write_text(f"[domain:{name}.example]\nsmtp_server = 127.0.0.1\n")
        (tmp_path / "etc" / "domains" / f"{name}.conf").symlink_to(target)
    os.chown(grandparent, NOBODY.pw_uid, NOBODY.pw_gid)
    code, err = check(run_main, main)
    assert code == 78
    assert (
        err == f"ssmtp-mailer: {grandparent}: owned by nobody, not root; chown root {grandparent}\n"
    )


def test_a_sticky_folder_open_to_all_above_the_tree_is_fine(
    tmp_path: Path, run_main: RunMain
) -> None:
    """As /tmp: no one may rename what they do not own in it, and what is in it is checked."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    main = tree(shared / "tree")
    target = shared / "elsewhere.conf"
    target.write_text("[domain:x.example]\nsmtp_server = 127.0.0.1\n")
    target.chmod(0o644)
    (shared / "tree" / "domains" / "x.conf").symlink_to(target)
    assert check(run_main, main) == (0, "")
    (shared / "tree").chmod(0o777)
    code, err = check(run_main, main)
    assert code == 78
    folder = shared / "tree"
    assert err == f"ssmtp-mailer: {folder}: writable by others (mode 0777); chmod o-w {folder}\n"


# --- broken include entries --------------------------------------------------------------


def test_a_dangling_link_in_an_include_folder_is_an_error(
    tmp_path: Path, run_main: RunMain
) -> None:
    main = tree(tmp_path)
    link = tmp_path / "domains" / "dangling.conf"
    link.symlink_to("/nonexistent")
    code, err = check(run_main, main)
    assert code == 78
    assert (
        f"ssmtp-mailer: {link}: a symbolic link to /nonexistent, which cannot be read:"
        " No such file or directory\n"
    ) in err


def test_a_directory_named_conf_in_an_include_folder_is_an_error(
    tmp_path: Path, run_main: RunMain
) -> None:
    main = tree(tmp_path)
    (tmp_path / "domains" / "dir.conf").mkdir()
    code, err = check(run_main, main)
    assert code == 78
    folder = tmp_path / "domains" / "dir.conf"
    assert f"ssmtp-mailer: {folder}: is a directory, expected a configuration file\n" in err


# --- one route, two spellings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [("bücher.example", "xn--bcher-kva.example"), ("example.org.", "example.org")],
)
def test_one_route_in_two_spellings_is_defined_twice(
    tmp_path: Path, run_main: RunMain, first: str, second: str
) -> None:
    main = tree(tmp_path)
    extra = tmp_path / "domains" / "twice.conf"
    extra.write_text(
        f"[domain:{first}]\nsmtp_server = 127.0.0.1\n\n[domain:{second}]\nsmtp_server = ::1\n"
    )
    code, err = check(run_main, main)
    assert code == 78
    assert (
        f"ssmtp-mailer: {extra}:4: [domain:{second}] is defined twice"
        f" (also at {extra}:1 as [domain:{first}])\n"
    ) in err


def test_one_user_in_two_spellings_is_defined_twice(tmp_path: Path, run_main: RunMain) -> None:
    main = tree(tmp_path)
    users = tmp_path / "users" / "u.conf"
    users.parent.mkdir()
    users.write_text("[user:Alice@Bücher.example]\n\n[user:alice@xn--bcher-kva.example.]\n")
    code, err = check(run_main, main)
    assert code == 78
    assert f"ssmtp-mailer: {users}:3: [user:alice@xn--bcher-kva.example.] is defined twice" in err


# --- references compare as routing does ------------------------------------------------


@pytest.mark.parametrize(
    ("route", "reference"),
    [
        ("xn--bcher-kva.example", "[global]\ndefault_domain = bücher.example\n"),
        (
            "example.org.",
            "[mapping:m]\nfrom_pattern = a@x.example\nto_pattern = a@x.example\n"
            "domain = example.org\n",
        ),
        ("bücher.example", "[user:a@x.example]\ndomain = BÜCHER.example\n"),
    ],
)
def test_a_reference_to_a_route_in_another_spelling_is_the_route(
    tmp_path: Path, run_main: RunMain, route: str, reference: str
) -> None:
    main = tmp_path / "m.conf"
    main.write_text(
        ("" if reference.startswith("[global]") else "[global]\n")
        + reference
        + f"\n[domain:{route}]\nsmtp_server = 127.0.0.1\n"
    )
    assert check(run_main, main) == (0, "")


# --- route names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["*.example.org", "**", "exa mple.org", "user@example.net", "a..example"]
)
def test_a_route_name_that_is_no_domain_is_refused(
    tmp_path: Path, run_main: RunMain, name: str
) -> None:
    main = tmp_path / "m.conf"
    main.write_text(f"[domain:{name}]\nsmtp_server = 127.0.0.1\n")
    code, err = check(run_main, main)
    assert code == 78
    assert err == (
        f"ssmtp-mailer: {main}:1: [domain:{name}]: {name!r} is not a valid domain name"
        " (only * alone is the catch-all)\n"
    )


@pytest.mark.parametrize("name", ["*", "relay", "work_mail", "example.org."])
def test_a_route_named_for_a_relay_or_the_catch_all_loads(
    tmp_path: Path, run_main: RunMain, name: str
) -> None:
    main = tmp_path / "m.conf"
    main.write_text(f"[domain:{name}]\nsmtp_server = 127.0.0.1\n")
    assert check(run_main, main) == (0, "")


# --- routes that could never send ----------------------------------------------------------


@pytest.mark.parametrize("method", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_an_auth_method_without_a_username_is_refused_at_load(
    tmp_path: Path, run_main: RunMain, method: str
) -> None:
    main = tmp_path / "m.conf"
    main.write_text(f"[domain:*]\nsmtp_server = 127.0.0.1\nauth_method = {method}\n")
    code, err = check(run_main, main)
    assert code == 78
    assert err == (f"ssmtp-mailer: {main}:3: auth_method: {method} needs a username, not set\n")


def test_a_login_without_tls_is_named_by_check_and_refused_by_strict(
    tmp_path: Path, run_main: RunMain
) -> None:
    main = tmp_path / "m.conf"
    route = "[domain:*]\nsmtp_server = 127.0.0.1\nuse_starttls = false\nusername = u\n"
    main.write_text(route + "password = p\n")
    main.chmod(0o600)
    code, _, err = run_main(
        ["config", "check", "--strict", "--config", str(main)], prog="ssmtp-mailer"
    )
    assert code == 78
    assert err.startswith(
        f"ssmtp-mailer: {main}:3: use_starttls: false with a username, and use_ssl is not set:"
        " every send refuses to log in unencrypted (exit 77)"
    )
    code, err = check(run_main, main)
    assert code == 0 and f"{main}:3: use_starttls: false with a username" in err
    main.write_text(route + "password = p\nallow_plaintext_auth = true\n")
    assert check(run_main, main) == (0, "")
    main.write_text(route + "password = p\nuse_ssl = true\n")
    assert check(run_main, main) == (0, "")


# --- this host's name ----------------------------------------------------------------------


def test_a_final_dot_is_dropped_from_default_hostname(tmp_path: Path, run_main: RunMain) -> None:
    main = tmp_path / "m.conf"
    main.write_text("[global]\ndefault_hostname = mailer.example.org.\n" + ROUTE)
    code, out, _ = run_main(
        ["config", "show", "--format", "json", "--config", str(main)], prog="ssmtp-mailer"
    )
    assert code == 0
    assert '"default_hostname": "mailer.example.org"' in out
    assert 'root@mailer.example.org"' in out or "mailer.example.org." not in out


@pytest.mark.parametrize(
    ("key", "value"),
    [("default_hostname", "192.0.2.1"), ("default_hostname", "[2001:db8::1]"),
     ("helo_name", "[192.0.2.1]")],
)  # fmt: skip
def test_an_ip_address_as_this_hosts_name_is_refused(
    tmp_path: Path, run_main: RunMain, key: str, value: str
) -> None:
    main = tmp_path / "m.conf"
    section = "[global]\n" if key == "default_hostname" else ROUTE
    main.write_text(section + f"{key} = {value}\n" + ("" if key == "helo_name" else ROUTE))
    line = 2 if key == "default_hostname" else 4
    code, err = check(run_main, main)
    assert code == 78
    assert err == (
        f"ssmtp-mailer: {main}:{line}: {key}: expected this host's name, not an IP address:"
        f" {value!r} (use a name that resolves to it)\n"
    )


# --- numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("connection_timeout", "99999999999999999999",
         "expected a number of seconds (1-86400), got 99999999999999999999"),
        ("read_timeout", "86401", "expected a number of seconds (1-86400), got 86401"),
        ("max_retries", "1_000", "expected a whole number, got '1_000'"),
        ("max_retries", "١٢", "expected a whole number, got '١٢'"),
        ("queue_lifetime", "99999999999999999999",
         "expected a number of seconds (0-2147483647), got 99999999999999999999"),
    ],
)  # fmt: skip
def test_a_number_out_of_range_or_not_plain_digits_is_refused(
    tmp_path: Path, run_main: RunMain, key: str, value: str, why: str
) -> None:
    main = tmp_path / "m.conf"
    main.write_text(f"[global]\n{key} = {value}\n" + ROUTE)
    code, err = check(run_main, main)
    assert code == 78
    assert err == f"ssmtp-mailer: {main}:2: {key}: {why}\n"


@pytest.mark.parametrize("value", ["", "[]"])
def test_an_empty_listen_address_is_refused(tmp_path: Path, run_main: RunMain, value: str) -> None:
    main = tmp_path / "m.conf"
    main.write_text(f"[global]\nlisten_address = {value}\n" + ROUTE)
    code, err = check(run_main, main)
    assert code == 78
    assert err == (
        f"ssmtp-mailer: {main}:2: listen_address: expected addresses to listen on like"
        " 127.0.0.1:25, got nothing\n"
    )


def test_config_show_json_is_format_json(tmp_path: Path, run_main: RunMain) -> None:
    main = tree(tmp_path)
    shown = [
        run_main(["config", "show", *args, "--config", str(main)], prog="ssmtp-mailer")
        for args in (["--json"], ["--format", "json"])
    ]
    assert shown[0] == shown[1]
    assert shown[0][0] == 0 and '"relay.example"' in shown[0][1]


def test_text_after_a_closing_quote_is_refused(tmp_path: Path, run_main: RunMain) -> None:
    main = tmp_path / "m.conf"
    main.write_text(ROUTE + 'helo_name = "a.example" extra words\n')
    code, err = check(run_main, main)
    assert code == 78
    assert err == (
        f"ssmtp-mailer: {main}:4: helo_name: text after the closing quote (put it inside the"
        " quotes, or start a comment with ' #')\n"
    )
    main.write_text(ROUTE + 'helo_name = "a.example"  # a comment\n')
    assert check(run_main, main) == (0, "")


@needs_root
def test_a_users_own_tree_from_git_clone_under_umask_002_loads_for_that_user(
    shared_dir: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    """A user-private group (Ubuntu's umask 002) leaves a user's clone 0664/0775 in the
    user's own group: that user's own runs take it; root's would not."""
    base = shared_dir / "own-tree"
    main = tree(base)
    for path in (base, base / "domains", main, base / "domains" / "relay.conf"):
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
        path.chmod(0o775 if path.is_dir() else 0o664)
    run = _as_nobody(
        shared_dir, ["-m", "ssmtp_mailer", "config", "check", "--config", str(main)], b"", {}
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == b""
