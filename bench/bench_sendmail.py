"""`sendmail -t < message` through our symlink vs a bare smtplib script vs msmtp (SPEC §10).

tls:   STARTTLS + AUTH to the local Postfix relay (tests/integration/relay-setup.sh), the
       SPEC setting; wall and CPU medians per sender and the ratios, in one run.
plain: the same three senders to an aiosmtpd sink on loopback, no TLS, no AUTH.
big:   a 25 MiB message through `sendmail -t` (and msmtp) to that sink: wall, peak RSS
       of the sender against the message size, and whether it arrived intact.
Senders run once unmeasured, then N times round-robin. It prints numbers; it asserts nothing.

What users get is a regular install, so by default ours and the bare script both run on the
interpreter of a virtual environment (--venv DIR, kept between runs) holding a regular,
non-editable install of the working tree, reinstalled on every run. --installed measures the
current interpreter's `ssmtp-mailer` instead (and runs the bare script on sys.executable); an
editable install or a .pth in its site-packages then adds to every start of both.
The bench itself imports aiosmtpd (for the sink) from the current interpreter.

Usage: python bench/bench_sendmail.py [--runs N] [--only tls,plain,big] [--body-lines N]
                                      [--venv DIR | --installed]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
RECIPIENT = "bench@example.net"  # Postfix's relay accepts example.net recipients
PLAIN_SENDER = "bench@client.example"
SETTINGS = ("tls", "plain", "big")
OURS, BARE, MSMTP = "ssmtp-mailer sendmail -t", "bare smtplib script", "msmtp -t"
DEFAULT_VENV = Path(tempfile.gettempdir()) / "ssmtp-mailer-bench-venv"
# What the snapshot of the working tree leaves out: caches, VCS data and earlier build output
# (a stale build/lib would put modules deleted since into the wheel).
SNAPSHOT_IGNORE = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__")

# argv: host port sender recipient [cafile]; with a cafile: STARTTLS, then AUTH as the
# sender with $BENCH_PASSWORD (kept out of argv, where ps would show it).
BARE_SCRIPT = """\
import os, smtplib, ssl, sys
host, port, sender, recipient = sys.argv[1:5]
data = sys.stdin.buffer.read().replace(b"\\n", b"\\r\\n")
with smtplib.SMTP(host, int(port), local_hostname="client.example") as client:
    if len(sys.argv) > 5:
        client.starttls(context=ssl.create_default_context(cafile=sys.argv[5]))
        client.login(sender, os.environ["BENCH_PASSWORD"])
    client.sendmail(sender, [recipient], data)
"""

# ru_maxrss of a child we spawn is floored at *our* peak RSS: subprocess uses vfork, and exec
# folds the old (our) address space's high-water mark into the child's. A grandchild forked
# from this small launcher starts from the launcher's few MiB instead (the floor is printed).
RSS_LAUNCHER = """\
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        print(exc, file=sys.stderr)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {time.perf_counter() - started}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


class Contender(NamedTuple):
    name: str
    argv: list[str]
    env: dict[str, str]


class Sink:
    """aiosmtpd handler that accepts every message, counts them and keeps the last."""

    def __init__(self) -> None:
        self.count = 0
        self.last = b""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        self.last = envelope.original_content
        return "250 2.0.0 OK"


def make_message(sender: str, subject: str, body_lines: int) -> bytes:
    head = [f"From: Bench <{sender}>", f"To: {RECIPIENT}", f"Subject: {subject}", ""]
    body = (f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(body_lines))
    return ("\n".join([*head, *body]) + "\n").encode()


def relay_settings() -> dict[str, str] | None:
    """relay.env's settings, starting the relay first when it is down and we are root."""
    path = Path(os.environ.get("RELAY_DIR", "/tmp/ssmtp-mailer-relay")) / "relay.env"
    for attempt in ("read", "start"):
        if path.exists():
            pairs = (line.partition("=") for line in path.read_text().splitlines())
            env = {k: "".join(shlex.split(v)) for k, eq, v in pairs if eq and k[:1] != "#"}
            try:
                address = (env["RELAY_HOST"], int(env["RELAY_SUBMISSION_PORT"]))
                socket.create_connection(address, timeout=2).close()
                return env
            except OSError:
                pass
        if attempt == "read" and os.geteuid() == 0:
            setup = ROOT / "tests/integration/relay-setup.sh"
            subprocess.run(["bash", str(setup)], check=True, stdout=subprocess.DEVNULL)
    return None


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def run_child(contender: Contender, stdin: Path) -> tuple[float, float]:
    """One run with the message file as stdin: (wall seconds, user+sys seconds of the child)."""
    with stdin.open("rb") as message, tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        child = subprocess.Popen(
            contender.argv, stdin=message, stdout=subprocess.DEVNULL, stderr=errors,
            env=contender.env,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            sys.stdout.flush()
            errors.seek(0)
            sys.stderr.write(errors.read().decode(errors="replace"))
            sys.exit(f"{contender.name} failed with exit status {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def bench(title: str, contenders: list[Contender], message: Path, runs: int) -> None:
    """Warm up once, run round-robin so drift hits all alike, print medians and ratios."""
    for contender in contenders:
        run_child(contender, message)
    samples: dict[str, list[tuple[float, float]]] = {c.name: [] for c in contenders}
    for _ in range(runs):
        for contender in contenders:
            samples[contender.name].append(run_child(contender, message))
    wall = {n: statistics.median(w for w, _ in s) for n, s in samples.items()}
    cpu = {n: statistics.median(c for _, c in s) for n, s in samples.items()}
    print(f"\n{title}: {runs} runs each, {message.stat().st_size}-byte message, medians")
    print(f"  {'sender':<28}{'wall ms':>10}{'CPU ms':>10}")
    for name in samples:
        print(f"  {name:<28}{wall[name] * 1000:>10.1f}{cpu[name] * 1000:>10.1f}")
    if MSMTP in wall:
        print(f"  wall ours/msmtp:       {wall[OURS] / wall[MSMTP]:.2f}   (target <= 1.00)")
    print(f"  CPU  ours/bare smtplib: {cpu[OURS] / cpu[BARE]:.2f}   (target <= 1.00, SPEC §10)")


def free_port() -> int:
    """A free loopback port (aiosmtpd 1.4's Controller cannot listen on port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def maildir_count(maildir: Path, token: bytes, known: set[str], expected: int) -> int | None:
    """Files new in maildir that carry token, polled until `expected` arrive or 10 s pass."""
    deadline = time.monotonic() + 10
    found: set[str] = set()
    while True:
        try:
            for name in {p.name for p in maildir.iterdir()} - known - found:
                if token in (maildir / name).read_bytes():
                    found.add(name)
        except PermissionError:
            return None
        if len(found) >= expected or time.monotonic() > deadline:
            return len(found)
        time.sleep(0.1)


class Bench:
    """The senders' commands and environment, shared by the three settings."""

    def __init__(
        self, work: Path, script: str, python: str, msmtp: str | None, options: argparse.Namespace
    ) -> None:
        self.work, self.msmtp, self.options = work, msmtp, options
        self.send = [str(work / "sendmail"), "-t"]
        (work / "sendmail").symlink_to(script)
        (work / "bare.py").write_text(BARE_SCRIPT)
        self.bare = [python, str(work / "bare.py")]
        # An installed package runs from byte-compiled files; with PYTHONDONTWRITEBYTECODE
        # every run would recompile our sources. The cache lives in the temporary folder.
        self.env = dict(os.environ, HOME=str(work), PYTHONPYCACHEPREFIX=str(work / "pycache"))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def config(self, name: str, sender: str, route: dict[str, str]) -> dict[str, str]:
        """The environment pointing ours at a new 0600 config with this [domain:*] route."""
        # Rate limiting stays on, as by default (its locked state files are part of every
        # send), with a limit no run of the bench reaches.
        lines = [
            "[global]", "default_hostname = client.example", f"default_from = {sender}",
            f"spool_dir = {self.work / 'spool'}", "rate_limit_per_minute = 1000000",
            "[domain:*]", *(f"{key} = {value}" for key, value in route.items()),
        ]  # fmt: skip
        path = private_file(self.work / name, "\n".join(lines) + "\n")
        return dict(self.env, SSMTP_MAILER_CONFIG=str(path))

    def tls(self) -> None:
        relay = relay_settings()
        if relay is None:
            print("\ntls: skipped, the relay is not running and we are not root to start it")
            return
        host, port, user = relay["RELAY_HOST"], relay["RELAY_SUBMISSION_PORT"], relay["RELAY_USER"]
        ca, password = relay["RELAY_CA"], relay["RELAY_PASSWORD"]
        route = {
            "smtp_server": host, "smtp_port": port, "use_starttls": "true", "ssl_ca_file": ca,
            "username": user, "password": json.dumps(password),  # quoted: may hold # or "
        }  # fmt: skip
        contenders = [
            Contender(OURS, self.send, self.config("tls.conf", user, route)),
            Contender(BARE, [*self.bare, host, port, user, RECIPIENT, ca],
                      dict(self.env, BENCH_PASSWORD=password)),
        ]  # fmt: skip
        if self.msmtp:
            # msmtp 1.8.23 misreads an inline password with `#` and `"`: it reads a file.
            secret = private_file(self.work / "password", password + "\n")
            rc = private_file(
                self.work / "msmtprc",
                f"account relay\nhost {host}\nport {port}\ntls on\ntls_starttls on\n"
                f'tls_trust_file {ca}\nauth on\nuser {user}\npasswordeval "cat {secret}"\n'
                f"from {user}\naccount default : relay\n",
            )
            contenders.append(Contender(MSMTP, [self.msmtp, "-C", str(rc), "-t"], self.env))
        token = f"bench-sendmail-{uuid.uuid4().hex}"
        message = self.work / "tls.eml"
        message.write_bytes(make_message(user, token, self.options.body_lines))
        maildir = Path(relay["RELAY_MAILDIR"]) / "new"
        known = {p.name for p in maildir.iterdir()}
        bench("tls: STARTTLS + AUTH to Postfix", contenders, message, self.options.runs)
        expected = len(contenders) * (self.options.runs + 1)
        got = maildir_count(maildir, token.encode(), known, expected)
        print(f"  delivered to the Maildir: {'unreadable' if got is None else got} of {expected}")

    def plain_contenders(self, port: int) -> list[Contender]:
        """The three senders for the aiosmtpd sink on port: plain SMTP, no AUTH."""
        route = {"smtp_server": "127.0.0.1", "smtp_port": str(port), "use_starttls": "false",
                 "auth_method": "NONE"}  # fmt: skip
        env = self.config("plain.conf", PLAIN_SENDER, route)
        bare = [*self.bare, "127.0.0.1", str(port), PLAIN_SENDER, RECIPIENT]
        contenders = [Contender(OURS, self.send, env), Contender(BARE, bare, env)]
        if self.msmtp:
            msmtp = [self.msmtp, "--host=127.0.0.1", f"--port={port}", "--auth=off",
                     "--tls=off", f"--from={PLAIN_SENDER}", "-t"]  # fmt: skip
            contenders.append(Contender(MSMTP, msmtp, env))
        return contenders

    def plain(self, sink: Sink, port: int) -> None:
        contenders = self.plain_contenders(port)
        message = self.work / "plain.eml"
        message.write_bytes(make_message(PLAIN_SENDER, "bench", self.options.body_lines))
        before = sink.count
        bench("plain: SMTP on loopback to aiosmtpd", contenders, message, self.options.runs)
        expected = len(contenders) * (self.options.runs + 1)
        print(f"  received by the sink: {sink.count - before} of {expected}")

    def peak(self, contender: Contender, stdin: Path) -> tuple[int, float]:
        """(peak RSS bytes, wall seconds) of one run through the RSS launcher."""
        result = self.work / "rss.out"
        launcher = [sys.executable, "-I", "-S", "-c", RSS_LAUNCHER, str(result), *contender.argv]
        run_child(contender._replace(argv=launcher), stdin)
        kib, wall = result.read_text().split()
        return int(kib) * 1024, float(wall)

    def big(self, sink: Sink, port: int, size: int = 25 * 1024 * 1024) -> None:
        message = self.work / "big.eml"
        with message.open("wb") as out:
            out.write(f"From: {PLAIN_SENDER}\nTo: {RECIPIENT}\nSubject: big\n\n".encode())
            filler = ("the quick brown fox jumps over the lazy dog " * 2)[:65]
            out.writelines(f"{i:010d} {filler}\n".encode() for i in range(size // 77))
        length = message.stat().st_size
        body = message.read_bytes().partition(b"\n\n")[2]
        contenders = [c for c in self.plain_contenders(port) if c.name != BARE]
        floor, _ = self.peak(Contender("true", ["/bin/true"], {}), message)
        mib = 1024 * 1024
        print(f"\nbig: {length} bytes ({length / mib:.1f} MiB, LF) to the aiosmtpd sink")
        print(f"  {'sender':<28}{'wall s':>8}{'peak RSS':>14}{'peak/size':>11}  received")
        for contender in contenders:
            sink.last = b""
            rss, wall = self.peak(contender, message)
            got = sink.last.replace(b"\r\n", b"\n")
            state = "intact" if got.endswith(body) else "DAMAGED"
            last = got.rstrip(b"\n").rpartition(b"\n")[2][:10].decode(errors="replace")
            print(f"  {contender.name:<28}{wall:>8.2f}{rss / mib:>10.1f} MiB"
                  f"{rss / length:>11.2f}  {len(sink.last)} bytes (CRLF), body {state},"
                  f" last line #{last}")  # fmt: skip
        print(
            f"  (peak RSS as a fork of a small launcher; /bin/true that way: {floor / mib:.1f} MiB)"
        )


def editable_note() -> str:
    try:
        direct = json.loads(
            metadata.distribution("ssmtp-mailer").read_text("direct_url.json") or "{}"
        )
    except metadata.PackageNotFoundError:
        return "ssmtp-mailer: no installed distribution found"
    if direct.get("dir_info", {}).get("editable"):
        return (f"ssmtp-mailer is installed editable from {direct.get('url')}: its __editable__ "
                ".pth runs at every Python start, ours and the bare script alike")  # fmt: skip
    return "ssmtp-mailer is installed non-editable"


def same_interpreter(python: Path) -> bool:
    """Whether python runs and is a venv of the interpreter running this bench."""
    probe = "import sys; print(sys.version, sys.base_prefix)"
    try:
        found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    except OSError:
        return False
    return found.returncode == 0 and found.stdout.strip() == f"{sys.version} {sys.base_prefix}"


def pip_run(argv: list[str], may_fail: bool = False) -> bool:
    """Run pip, its output (warnings about the index setup, say) shown only when it fails."""
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0 and not may_fail:
        sys.stderr.write(done.stdout)
        sys.exit(f"{shlex.join(argv)} failed with exit status {done.returncode}")
    return done.returncode == 0


def bench_venv(venv: Path) -> tuple[str, str, str]:
    """(script, python, note) of venv holding a regular install of the working tree.

    A new venv gets a full install (dependencies included); a reused one gets the project
    reinstalled without touching its dependencies, unless `pip check` finds one missing. pip
    installs from a snapshot of the tree, so no build output lands in (or comes from) ROOT.
    """
    python = venv / "bin" / "python"
    started = time.perf_counter()
    reuse = same_interpreter(python)
    if not reuse:
        if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
            sys.exit(f"--venv {venv}: exists and is not a virtual environment; left alone")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "ssmtp-mailer"
        shutil.copytree(ROOT, source, ignore=SNAPSHOT_IGNORE)
        if reuse:
            pip_run([*pip, "install", "--quiet", "--force-reinstall", "--no-deps", str(source)])
            reuse = pip_run([*pip, "check"], may_fail=True)
        if not reuse:
            pip_run([*pip, "install", "--quiet", str(source)])
    script = venv / "bin" / "ssmtp-mailer"
    if not script.exists():
        sys.exit(f"{script}: missing after the install")
    seconds = time.perf_counter() - started
    how = "reinstalled" if reuse else "installed with its dependencies"
    note = (f"measured: a regular (non-editable) install of the working tree of {ROOT}, {how} "
            f"in {seconds:.1f} s into the venv {venv}; ours and the bare script run {python} "
            f"(Python {sys.version.split()[0]}, the bench's own interpreter's venv)")  # fmt: skip
    return str(script), str(python), note


def ensure_msmtp() -> str | None:
    """The msmtp binary, installed from Debian's packages when missing and we are root."""
    found = shutil.which("msmtp")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", "msmtp"], env=env, check=False)
    return shutil.which("msmtp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, metavar="N", help="default 20")
    parser.add_argument("--body-lines", type=int, default=40, metavar="N", help="default 40")
    parser.add_argument(
        "--only", action="extend", type=lambda value: value.split(","), default=[],
        metavar="tls,plain,big", help="settings to run, repeatable or comma list; default all",
    )  # fmt: skip
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--venv", type=Path, default=DEFAULT_VENV, metavar="DIR",
        help=f"venv for a regular install of the working tree, reinstalled every run; "
             f"created when missing (default {DEFAULT_VENV})",
    )  # fmt: skip
    where.add_argument(
        "--installed", action="store_true",
        help="measure the current interpreter's ssmtp-mailer (and its python for the bare "
             "script) instead, as installed, editable or not",
    )  # fmt: skip
    options = parser.parse_args()
    only = set(options.only or SETTINGS)
    if only - set(SETTINGS):
        parser.error(f"--only: choose from {', '.join(SETTINGS)}")

    if options.installed:
        # The script beside our interpreter: a pyenv shim on PATH would dispatch on the link's
        # name.
        beside = Path(sys.executable).parent / "ssmtp-mailer"
        found = str(beside) if beside.exists() else shutil.which("ssmtp-mailer")
        if found is None:
            sys.exit("ssmtp-mailer is not installed (pip install -e .)")
        script, python = found, sys.executable
        print(f"measured: the current interpreter's install, {script}; bare script on {python}")
        print(editable_note())
    else:
        script, python, note = bench_venv(Path(options.venv).resolve())
        print(note)
    msmtp = ensure_msmtp()
    if msmtp is None:
        print("msmtp not found and not installable (needs root and apt-get): its rows are skipped")
    with tempfile.TemporaryDirectory() as tmp:
        runner = Bench(Path(tmp), script, python, msmtp, options)
        if "tls" in only:
            runner.tls()
        if only & {"plain", "big"}:
            sink, port = Sink(), free_port()
            controller = Controller(sink, hostname="127.0.0.1", port=port, data_size_limit=None)
            controller.start()
            try:
                if "plain" in only:
                    runner.plain(sink, port)
                if "big" in only:
                    runner.big(sink, port)
            finally:
                controller.stop()


if __name__ == "__main__":
    main()
