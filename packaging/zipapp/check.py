"""Build ssmtp-mailer.pyz and send a message with it from a bare /usr/bin/python3.

    python3 packaging/zipapp/check.py        (called by .ci/run; python3 = the CI venv)

The pyz runs from an empty directory with `-I -S` (no site-packages at all, so Debian's
own python3-click and friends cannot stand in for what it carries) and, linked as
`sendmail`, through its own `#!/usr/bin/python3 -I` line. The relay is a real aiosmtpd
server with STARTTLS and AUTH (tests/smtpserver.py) on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from smtpserver import SMTPTestServer  # noqa: E402

USER, PASSWORD = "relay@example.com", "zip pass"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def run(argv: list[str], cwd: Path, home: Path, stdin: bytes = b"") -> str:
    done = subprocess.run(
        argv,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env={**ENV, "HOME": str(home)},
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"zipapp check FAILED: {argv}: exit {done.returncode}: {done.stderr.decode()}")
    return done.stdout.decode()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pyz = base / "ssmtp-mailer.pyz"
        subprocess.run(
            [sys.executable, str(REPO / "packaging/zipapp/build.py"), str(pyz)], check=True
        )
        empty, home = base / "empty", base / "home"
        empty.mkdir()
        home.mkdir()
        bare = ["/usr/bin/python3", "-I", "-S", str(pyz)]
        print(run([*bare, "--version"], empty, home).strip())
        with SMTPTestServer(starttls=True, auth={USER: PASSWORD}) as server:
            ca = server.write_ca_pem(base / "ca.pem")
            conf = base / "ssmtp-mailer.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(
                    f"[global]\ndefault_hostname = host.example\nspool_dir = {base / 'spool'}\n"
                    f"\n[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {server.port}\n"
                    f"use_starttls = true\nssl_ca_file = {ca}\nusername = {USER}\n"
                    f'password = "{PASSWORD}"\n'
                )
            run([*bare, "config", "check", "-C", str(conf)], empty, home)
            sendmail = base / "bin" / "sendmail"
            sendmail.parent.mkdir()
            sendmail.symlink_to(pyz)
            message = b"To: root\nSubject: from the zipapp\n\nhello\n"
            run([str(sendmail), "-C", str(conf), "-t", "-i"], empty, home, message)
            run([*bare, "sendmail", "-C", str(conf), "a@example.net"], empty, home, message)
            received = server.messages
            if [m.rcpt_tos for m in received] != [["root@host.example"], ["a@example.net"]]:
                sys.exit(f"zipapp check FAILED: the relay got {[m.rcpt_tos for m in received]}")
            if not all(m.tls and m.auth_user == USER for m in received):
                sys.exit("zipapp check FAILED: not sent over STARTTLS with AUTH")
        print(
            f"zipapp check: OK ({pyz.stat().st_size // 1024} KiB; sent as sendmail and as"
            " `ssmtp-mailer sendmail` from a bare /usr/bin/python3 -I -S)"
        )


if __name__ == "__main__":
    main()
