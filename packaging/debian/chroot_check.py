"""Install the .deb in a throwaway Debian 12 root and send through its /usr/sbin/sendmail.

Run as root by packaging/check-deb.sh: `python3 chroot_check.py ROOT DEB`. ROOT is an
unpacked minimal bookworm (mmdebstrap) that already holds the package's dependencies.
The relay is a real aiosmtpd server with STARTTLS and AUTH (tests/smtpserver.py) on
127.0.0.1 outside the root: a chroot shares the host's loopback. The package is never
installed on the host itself, where it would remove the Postfix the integration tier uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

import trustme  # noqa: E402
from smtpserver import SMTPTestServer  # noqa: E402

USER, PASSWORD = "relay@example.com", "s3cret pass#1"
HOST = "host.example"
ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]


class CheckFailed(Exception):
    pass


def run(root: Path, command: str, *, user: str | None = None, stdin: str = "") -> str:
    """A shell command inside the root, as root or as `user`; its stdout; fail on non-zero."""
    spec = ["--userspec", f"{user}:{user}"] if user else []
    home = f"/home/{user}" if user else "/root"
    done = subprocess.run(
        [
            "chroot",
            *spec,
            str(root),
            *ENV,
            f"HOME={home}",
            f"USER={user or 'root'}",
            "sh",
            "-c",
            command,
        ],
        input=stdin.encode(),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise CheckFailed(
            f"{command!r} as {user or 'root'}: exit {done.returncode}:"
            f" {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout.decode(errors="replace")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)
    print(f"ok: {what}")


def wait_for(server: SMTPTestServer, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(server.messages) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def main(root: Path, deb: Path) -> None:
    shutil.copy(deb, root / "tmp" / deb.name)
    run(
        root,
        f"apt-get install -y -q -o Dpkg::Use-Pty=0 /tmp/{deb.name} >/tmp/apt.log 2>&1"
        " || { cat /tmp/apt.log >&2; exit 1; }",
    )
    check(
        (root / "usr/sbin/sendmail").resolve() == root / "usr/bin/ssmtp-mailer",
        "/usr/sbin/sendmail is the package's program",
    )
    shebang = (root / "usr/bin/ssmtp-mailer").read_text().splitlines()[0]
    check(shebang == "#!/usr/bin/python3", f"runs on Debian's python3 ({shebang})")
    units = sorted(p.name for p in (root / "lib/systemd/system").glob("ssmtp-mailer*"))
    enabled = {p.name for p in (root / "etc/systemd/system").glob("*.wants/ssmtp-mailer*")}
    for unit in units:
        if unit.endswith((".timer", ".path")):
            check(unit in enabled, f"{unit} is enabled")
    services = sorted(u for u in enabled if u.endswith((".service", ".socket")))
    check(services == [], "no service or socket (the listener) is enabled by default")
    for unit in (u for u in units if u.endswith(".service")):
        text = (root / "lib/systemd/system" / unit).read_text()
        programs = re.findall(r"^Exec\w+=[-+!@:]*(\S+)", text, re.MULTILINE)
        missing = sorted({p for p in programs if not os.path.lexists(root / p.lstrip("/"))})
        check(missing == [], f"{unit}: every Exec program is installed ({missing or 'yes'})")
    spool = os.stat(root / "var/spool/ssmtp-mailer/maildrop")
    check(spool.st_mode & 0o7777 == 0o1733, "maildrop/ is 1733")
    run(root, "ssmtp-mailer --version && newaliases && sendmail -bp >/dev/null")
    completion = run(
        root,
        "bash -c '. /usr/share/bash-completion/completions/ssmtp-mailer;"
        " COMP_WORDS=(ssmtp-mailer config im); COMP_CWORD=2;"
        ' _ssmtp_mailer_completion ssmtp-mailer; echo "${COMPREPLY[@]}"\'',
    )
    check(completion.split() == ["import"], "bash completes `ssmtp-mailer config im`")

    ca = trustme.CA()
    with SMTPTestServer(starttls=True, auth={USER: PASSWORD}, ca=ca) as server:
        configure(root, server)
        run(root, "ssmtp-mailer config check")
        # The issue's own words: root, then an unprivileged user.
        run(root, "sendmail -t root", stdin="Subject: hi\n\nfrom root\n")
        wait_for(server, 1)
        [message] = server.messages
        check(message.rcpt_tos == ["admin@example.com"], "root's mail reached the mapped address")
        check(message.auth_user == USER and message.tls, "over STARTTLS, authenticated")
        signatures = message.message().get_all("DKIM-Signature") or []
        check(
            sorted(re.search(r"a=([\w-]+)", str(sig)).group(1) for sig in signatures)  # type: ignore[union-attr]
            == ["ed25519-sha256", "rsa-sha256"],
            "signed with both DKIM keys",
        )
        log = root / "var/log/ssmtp-mailer.log"
        check("admin@example.com" in log.read_text(), "log_file got the message's line")
        run(root, "logrotate -f /etc/logrotate.d/ssmtp-mailer")
        rotated = root / "var/log/ssmtp-mailer.log.1"
        check(
            rotated.exists() and "admin@example.com" in rotated.read_text(), "logrotate rotated it"
        )
        fresh = os.stat(log)
        check(
            (fresh.st_mode & 0o777, run(root, "stat -c %U:%G /var/log/ssmtp-mailer.log").strip())
            == (0o640, "mail:adm"),
            "and made a new 0640 mail:adm log",
        )
        run(root, "id tester >/dev/null 2>&1 || useradd -m tester")
        if (root / "usr/lib/python3/dist-packages/ssmtp_mailer/submit.py").exists():
            # The user cannot read the relay's secret: the message goes to the maildrop
            # and the root-run queue (the path unit does this under systemd) sends it.
            run(root, "sendmail -t root", user="tester", stdin="Subject: hi\n\nfrom tester\n")
            # mailq by the user, who may read neither relay.conf nor queue/: one line, 77.
            said = run(root, 'mailq 2>&1; echo "exit $?"', user="tester").splitlines()
            check(
                said
                == [
                    "ssmtp-mailer: queue /var/spool/ssmtp-mailer/queue: not readable by this"
                    " user (root and spool_user mail can list it)",
                    "exit 77",
                ],
                f"the user's mailq says in one line who can list the queue ({said})",
            )
            listing = run(root, "mailq")
            check("-- 1 in the maildrop" in listing, "root's mailq counts the user's message")
            # What cron runs; under systemd its lines leave the work to the path unit.
            commands = cron_commands(root)
            with systemd_running(root):
                for command in commands:
                    run(root, command)
            maildrop = root / "var/spool/ssmtp-mailer/maildrop"
            check(any(maildrop.iterdir()), "under systemd /etc/cron.d/ssmtp-mailer runs nothing")
            for command in commands:
                run(root, command)
            wait_for(server, 2)
            check(len(server.messages) == 2, "with no systemd, cron relayed the user's mail")
            check(server.messages[1].auth_user == USER, "with the relay's credentials")
            check_queue_unit_repeats(root, server)
        else:
            print(
                "note: no local submission in this build; the unprivileged send below"
                " uses a route without secrets"
            )
    with SMTPTestServer(starttls=True, ca=ca) as open_server:
        conf = root / "home/tester/.config/ssmtp-mailer/ssmtp-mailer.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(
            f"[global]\ndefault_hostname = {HOST}\n\n[domain:*]\nsmtp_server = 127.0.0.1\n"
            f"smtp_port = {open_server.port}\nuse_starttls = true\nauth_method = NONE\n"
            "ssl_ca_file = /etc/ssmtp-mailer/ca.pem\n"
        )
        run(root, "chown -R tester:tester /home/tester/.config")
        run(root, "sendmail -t root", user="tester", stdin="Subject: hi\n\nfrom tester\n")
        wait_for(open_server, 1)
        [message] = open_server.messages
        check(message.rcpt_tos == [f"root@{HOST}"], "an unprivileged user's sendmail relayed")
        check(message.mail_from == f"tester@{HOST}", "as the user's own address")

    check_unit_handling(root, deb)
    check_spool_links(root, deb)
    # Mail not delivered yet, which the purge deletes: root's, queued with the relay gone,
    # and a user's in the maildrop.
    run(root, "sendmail -t root", stdin="Subject: hi\n\nqueued\n")
    system = "SSMTP_MAILER_CONFIG=/etc/ssmtp-mailer/ssmtp-mailer.conf"
    run(root, f"{system} sendmail -t root", user="tester", stdin="Subject: hi\n\ndropped\n")
    # Remove, not purge (installing postfix does it through Conflicts): the mail stays,
    # and nothing sends it any more.
    run(
        root,
        "apt-get remove -y -q -o Dpkg::Use-Pty=0 ssmtp-mailer >/tmp/apt.log 2>&1"
        " || { cat /tmp/apt.log >&2; exit 1; }",
    )
    said = re.findall(r"^ssmtp-mailer: remove .*", (root / "tmp/apt.log").read_text(), re.M)
    check(
        len(said) == 1
        and " 1 queued and 1 maildrop messages in /var/spool/ssmtp-mailer" in said[0]
        and "purge deletes them" in said[0],
        f"remove says what undelivered mail stays in the spool until purge ({said})",
    )
    # Its cron.d file is a conffile, kept until purge: each line must see that the program
    # is gone and do nothing (Debian Policy 9.5.1), not fail for cron to mail every minute.
    for command in cron_commands(root):
        said_cron = run(root, f"{{ {command}\n}} 2>&1")
        check(
            said_cron == "", f"after remove, cron's {command[:40]!r}... is silent ({said_cron!r})"
        )
    run(
        root,
        "apt-get purge -y -q -o Dpkg::Use-Pty=0 ssmtp-mailer >/tmp/apt.log 2>&1"
        " || { cat /tmp/apt.log >&2; exit 1; }",
    )
    said = re.findall(r"^ssmtp-mailer: purge .*", (root / "tmp/apt.log").read_text(), re.M)
    check(
        len(said) == 1 and " 1 queued and 1 maildrop messages" in said[0],
        f"purge says what undelivered mail it deletes ({said})",
    )
    left = [
        p
        for p in (
            "var/spool/ssmtp-mailer",
            "var/cache/ssmtp-mailer",
            "etc/systemd/system/timers.target.wants/ssmtp-mailer-queue.timer",
            "etc/cron.d/ssmtp-mailer",
            "usr/sbin/sendmail",
        )
        if os.path.lexists(root / p)
    ]
    left += [str(p.relative_to(root)) for p in (root / "var/log").glob("ssmtp-mailer.log*")]
    left += [str(p.relative_to(root)) for p in (root / "etc/systemd/system").rglob("ssmtp-mailer*")]
    check(left == [], f"purge leaves nothing behind ({left or 'clean'})")
    etc = sorted(p.name for p in (root / "etc/ssmtp-mailer").rglob("*") if p.is_file())
    own = ["ca.pem", "dkim-ed25519.pem", "dkim-rsa.pem"]
    check(etc == own, f"purge keeps only the administrator's own files in /etc ({etc})")


# Stands in for systemd's: deb-systemd-invoke asks it whether a unit is enabled (its
# .wants/ link, as deb-systemd-helper makes it) or active before it starts or restarts
# one. Every call is logged; start/restart/stop keep the set of active units.
FAKE_SYSTEMCTL = r"""#!/bin/sh
echo "$*" >>/tmp/systemctl.log
verb= units=
for arg; do
    case $arg in
        -*) ;;
        *) if [ -z "$verb" ]; then verb=$arg; else units="$units $arg"; fi ;;
    esac
done
active=/tmp/active.units
touch $active
case $verb in
    is-enabled) for u in $units; do ls /etc/systemd/system/*.wants/"$u" >/dev/null 2>&1 ||
        { echo disabled; exit 1; }; done; echo enabled ;;
    is-active) for u in $units; do grep -qx "$u" $active || exit 3; done ;;
    start|restart) for u in $units; do grep -qx "$u" $active || echo "$u" >>$active; done ;;
    stop) for u in $units; do grep -vx "$u" $active >$active.new; mv $active.new $active; done ;;
esac
exit 0
"""


@contextmanager
def systemd_running(root: Path) -> Iterator[None]:
    """What maintainer scripts and cron lines test for systemd, and a stand-in systemctl."""
    systemctl = root / "usr/bin/systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)
    (root / "run/systemd/system").mkdir(parents=True)
    try:
        yield
    finally:
        systemctl.unlink()
        (root / "run/systemd/system").rmdir()
        (root / "run/systemd").rmdir()


def cron_commands(root: Path) -> list[str]:
    """The commands of /etc/cron.d/ssmtp-mailer, each checked to run as root."""
    crontab = root / "etc/cron.d/ssmtp-mailer"
    check(crontab.is_file(), "/etc/cron.d/ssmtp-mailer is installed")
    lines = crontab.read_text().splitlines()
    pattern = re.compile(r"(?:\S+\s+){5}(\S+)\s+(.+)")
    jobs = [job for line in lines if not line.startswith("#") and (job := pattern.match(line))]
    check(
        len(jobs) == 2 and all(job.group(1) == "root" for job in jobs),
        "/etc/cron.d/ssmtp-mailer has its two root jobs",
    )
    return [job.group(2) for job in jobs]


def check_unit_handling(root: Path, deb: Path) -> None:
    """The maintainer scripts under a (stand-in) systemd: upgrade and remove vs the listener."""
    listener, oneshot = "ssmtp-mailer-listen.service", "ssmtp-mailer-queue.service"
    apt = (
        "apt-get {} -y -q -o Dpkg::Use-Pty=0 {} >/tmp/apt.log 2>&1"
        " || {{ cat /tmp/apt.log >&2; exit 1; }}"
    )
    upgrade = apt.format("install --reinstall", f"/tmp/{deb.name}")
    log = root / "tmp/systemctl.log"

    def calls(command: str) -> list[list[str]]:
        """systemctl's arguments, options left out, for each call `command` made."""
        log.write_text("")
        run(root, command)
        lines = log.read_text().splitlines()
        return [[word for word in line.split() if not word.startswith("-")] for line in lines]

    def acted(calls: list[list[str]], verb: str, unit: str) -> bool:
        return any(call[:1] == [verb] and unit in call[1:] for call in calls)

    with systemd_running(root):
        lines = calls(upgrade)
        check(
            not any(acted(lines, v, u) for v in ("start", "restart") for u in (listener, oneshot)),
            "an upgrade starts neither the disabled listener nor the queue run",
        )
        # What `systemctl enable --now` leaves: the link deb-systemd-helper purges, a running unit.
        wants = "/etc/systemd/system/multi-user.target.wants"
        run(root, f"mkdir -p {wants} && ln -s /lib/systemd/system/{listener} {wants}/")
        run(root, f"echo {listener} >/tmp/active.units")
        lines = calls(upgrade)
        check(
            acted(lines, "restart", listener) and not acted(lines, "stop", listener),
            "an upgrade restarts the enabled listener (and leaves it running)",
        )
        check(not acted(lines, "start", oneshot), "and never starts the oneshot queue run")
        lines = calls(apt.format("remove", "ssmtp-mailer"))
        check(acted(lines, "stop", listener), "remove stops the enabled listener")
    run(root, apt.format("install", f"/tmp/{deb.name}"))


def exec_lines(unit: Path) -> list[tuple[str, str, str]]:
    """A unit's Exec lines: (key, prefix, command), the command as systemd passes it on
    ("$$" a dollar sign, "%%" a percent sign) for sh to run."""
    found = re.findall(r"^(Exec\w+)=([-+!@:]*)(.+)$", unit.read_text(), re.MULTILINE)
    return [
        (key, prefix, command.replace("$$", "$").replace("%%", "%"))
        for key, prefix, command in found
    ]


def root_commands(root: Path) -> list[str]:
    """What systemd would run as root for the package's services: every Exec line of a
    unit without User=, and those marked "+" or "!" of one with it."""
    commands = []
    for unit in sorted((root / "lib/systemd/system").glob("ssmtp-mailer*.service")):
        as_user = re.search(r"^User=", unit.read_text(), re.MULTILINE) is not None
        for _, prefix, command in exec_lines(unit):
            if not as_user or set(prefix) & {"+", "!"}:
                commands.append(command)
    return commands


def check_queue_unit_repeats(root: Path, server: SMTPTestServer) -> None:
    """ssmtp-mailer-queue.service, which the path unit starts: a local user's drop while it
    runs is taken before it ends (systemd does not trigger the path unit for it), and what
    no run can take yet (a submitter's fresh .tmp- file) does not keep it running."""
    [command] = [
        command
        for key, _, command in exec_lines(root / "lib/systemd/system/ssmtp-mailer-queue.service")
        if key == "ExecStart"
    ]
    main = root / "etc/ssmtp-mailer/ssmtp-mailer.conf"
    text = main.read_text()
    # A relay that never greets holds the run this long: the time to drop during it.
    main.write_text(text.replace("[global]\n", "[global]\nconnection_timeout = 3\n", 1))
    system = "SSMTP_MAILER_CONFIG=/etc/ssmtp-mailer/ssmtp-mailer.conf"
    drop = root / "var/spool/ssmtp-mailer/maildrop"
    run(root, "touch /var/spool/ssmtp-mailer/maildrop/.tmp-in-progress", user="tester")
    run(root, f"{system} sendmail -t root", user="tester", stdin="Subject: a\n\nfirst\n")
    seen = len(server.messages)
    connections = server.connections
    server.fault = "stall-banner"
    unit = subprocess.Popen(
        ["chroot", str(root), *ENV, "HOME=/root", "sh", "-c", command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while server.connections == connections and time.monotonic() < deadline:
            time.sleep(0.05)
        check(server.connections > connections, "the queue unit's run took the first drop")
        # After the run listed maildrop/: the path unit would not see this one.
        run(root, f"{system} sendmail -t root", user="tester", stdin="Subject: b\n\nsecond\n")
        server.fault = None
        try:
            unit.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise CheckFailed("the queue unit still runs on a maildrop with a .tmp- file") from None
    finally:
        server.fault = None
        if unit.poll() is None:
            unit.kill()
            unit.wait()
        main.write_text(text)
    left = sorted(p.name for p in drop.iterdir())
    check(
        left == [".tmp-in-progress"],
        f"and the drop made during that run, before it ended ({left})",
    )
    wait_for(server, seen + 1)
    subjects = [m.message()["Subject"] for m in server.messages[seen:]]
    check(subjects == ["b"], f"the second reached the relay ({subjects})")
    # The first, queued when the relay never greeted, goes too: the spool is as before.
    run(root, "ssmtp-mailer queue run --all >/dev/null")
    wait_for(server, seen + 2)
    check(len(server.messages) == seen + 2, "and the first with the next queue run")
    (drop / ".tmp-in-progress").unlink()


def check_spool_links(root: Path, deb: Path) -> None:
    """What a compromised `mail` (the listener's user) may do to the spool it owns: make
    maildrop/, queue/ and failed/ links to a directory of root's. Root's commands of the
    units (run at the next start or on the timer) and a reinstall leave that one alone."""
    target = root / "srv/target"
    target.mkdir(parents=True)
    target.chmod(0o755)
    (target / "file").write_text("root's\n")

    def looks() -> list[tuple[str, int, int, int]]:
        st = os.lstat(target)
        return [("", st.st_mode, st.st_uid, st.st_gid)] + [
            (p.name, p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_gid)
            for p in sorted(target.iterdir())
        ]

    before = looks()
    spool = "/var/spool/ssmtp-mailer"
    areas = ("maildrop", "queue", "failed")
    plant = " && ".join(
        f"mv {spool}/{a} {spool}/{a}.real && ln -s /srv/target {spool}/{a}" for a in areas
    )
    run(root, plant, user="mail")
    for command in root_commands(root):
        run(root, f"{command} >/dev/null 2>&1 || true")
    check(looks() == before, "root's commands of the units follow no link mail put in the spool")
    run(
        root,
        f"apt-get install --reinstall -y -q -o Dpkg::Use-Pty=0 /tmp/{deb.name} >/tmp/apt.log 2>&1"
        " || { cat /tmp/apt.log >&2; exit 1; }",
    )
    check(looks() == before, "and neither does a reinstall")
    restore = " && ".join(f"rm {spool}/{a} && mv {spool}/{a}.real {spool}/{a}" for a in areas)
    run(root, restore, user="mail")
    shutil.rmtree(target)


def configure(root: Path, server: SMTPTestServer) -> None:
    """What an administrator does after installing: the relay, its password, a mapping."""
    etc = root / "etc/ssmtp-mailer"
    server.write_ca_pem(etc / "ca.pem")
    main = etc / "ssmtp-mailer.conf"
    text = main.read_text().replace("#default_domain = relay", "default_domain = relay")
    text = text.replace(
        "#log_file = /var/log/ssmtp-mailer.log", "log_file = /var/log/ssmtp-mailer.log"
    )
    main.write_text(
        text.replace("#default_hostname = server.example.com", f"default_hostname = {HOST}")
    )
    # DKIM with Debian's own python3-dkim, -nacl and -cryptography: one key of each kind.
    for algorithm in ("rsa", "ed25519"):
        run(
            root,
            f"ssmtp-mailer dkim keygen --domain relay --selector {algorithm}1"
            f" --algorithm {algorithm} --out /etc/ssmtp-mailer/dkim-{algorithm}.pem >/dev/null",
        )
    relay = etc / "domains/relay.conf"
    before = os.stat(relay)
    with open(relay, "a") as handle:  # keeps the shipped 0640 root:mail
        handle.write(
            f"\n[domain:relay]\nsmtp_server = 127.0.0.1\nsmtp_port = {server.port}\n"
            f"use_starttls = true\nssl_ca_file = /etc/ssmtp-mailer/ca.pem\nusername = {USER}\n"
            f'relay_account = {USER}\npassword = "{PASSWORD}"\n'
            "dkim_selector = rsa1, ed255191\n"
            "dkim_key_file = /etc/ssmtp-mailer/dkim-rsa.pem, /etc/ssmtp-mailer/dkim-ed25519.pem\n"
        )
    after = os.stat(relay)
    check(
        (after.st_mode & 0o777, after.st_gid) == (0o640, before.st_gid),
        "the relay's password sits in a 0640 root:mail file",
    )
    (etc / "mappings/local.conf").write_text(
        f"[mapping:local-accounts]\nfrom_pattern = *@{HOST}\nto_pattern = admin@example.com\n"
    )


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
    except CheckFailed as exc:
        print(f"chroot check FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
