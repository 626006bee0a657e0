"""The spool root's first `sendmail` makes has the package's layout (SPEC §8)."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, who makes the spool")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_spool_root_makes_is_0755_and_only_its_areas_are_group_mails(tmp_path: Path) -> None:
    """A zipapp or pip install with no spool yet: root's queued message makes the spool."""
    try:
        mail = pwd.getpwnam("mail")
    except KeyError:
        pytest.skip("no user mail")
    spool = tmp_path / "spool"
    main = tmp_path / "ssmtp-mailer.conf"
    main.write_text(
        f"[global]\ndefault_hostname = host.example\nspool_dir = {spool}\n"
        "max_retries = 0\nenable_rate_limiting = false\n\n"
        f"[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {_closed_port()}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmtp_mailer",
            "--config",
            str(main),
            "sendmail",
            "-i",
            "a@b.example",
        ],
        input=b"Subject: disk\n\n90% full\n",
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0 and b"queued as" in run.stderr, run.stderr

    def looks(path: Path) -> tuple[str, int, int]:
        st = path.stat()
        return stat.filemode(st.st_mode), st.st_uid, st.st_gid

    owned = (mail.pw_uid, mail.pw_gid)
    assert looks(spool) == ("drwxr-xr-x", *owned)  # not drwxrwsr-x: group mail may not add here
    assert looks(spool / "queue") == ("drwxrws---", *owned)
    assert looks(spool / "failed") == ("drwxrws---", *owned)
    assert looks(spool / "maildrop") == ("drwx-wx-wt", *owned)
