"""Relay engine benchmark (SPEC §10): prints numbers, asserts nothing.

1. One STARTTLS + AUTH send to the local Postfix relay (tests/integration/relay-setup.sh):
   the engine in a fresh process, the engine in-process, a bare smtplib script, and msmtp
   with the same settings; wall and CPU medians and ratios measured in the same run.
2. A 1,000-recipient message to an aiosmtpd server: one connection, RCPTs counted.
3. A 25 MB message: peak RSS of the sending process against the message size.

Usage: python bench/bench_relay.py [--runs N]   (run as root or with the relay started)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MESSAGE = (
    b"From: relay-user@example.com\r\nTo: bench@example.net\r\nSubject: bench\r\n"
    b"Message-ID: <bench@client.example>\r\n\r\n" + b"benchmark body line\r\n" * 40
)


def relay_env() -> dict[str, str]:
    path = Path(os.environ.get("RELAY_DIR", "/tmp/ssmtp-mailer-relay")) / "relay.env"
    if not path.exists():
        if os.geteuid() != 0:
            sys.exit("relay not running; run tests/integration/relay-setup.sh as root")
        subprocess.run(["bash", str(ROOT / "tests/integration/relay-setup.sh")], check=True)
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def write_config(tmp: Path, route: dict[str, object], **global_: object) -> Path:
    settings: dict[str, object] = {
        "default_hostname": "client.example",
        "spool_dir": tmp / "spool",
        "enable_rate_limiting": False,
        "max_retries": 0,
    }
    settings.update(global_)
    lines = ["[global]", *(f"{k} = {v}" for k, v in settings.items()), "", "[domain:bench]"]
    lines += [f"{k} = {json.dumps(v) if isinstance(v, str) else v}" for k, v in route.items()]
    path = tmp / "bench.conf"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


ENGINE_SCRIPT = """
import sys
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.relay.engine import deliver
from ssmtp_mailer.rewrite import RouteGroup
config = load_config(sys.argv[1])
route = config.domains["bench"]
data = sys.stdin.buffer.read()
deliver(config, RouteGroup(route, sys.argv[2], tuple(sys.argv[3:])), data)
"""

SMTPLIB_SCRIPT = """
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
data = sys.stdin.buffer.read()
with smtplib.SMTP(sys.argv[2], int(sys.argv[3]), local_hostname="client.example") as s:
    s.starttls(context=ctx)
    s.login(sys.argv[4], sys.argv[5])
    s.sendmail(sys.argv[4], ["bench@example.net"], data)
"""


def child_env() -> dict[str, str]:
    """Children write and reuse bytecode (as an installed package does), outside the tree."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "ssmtp-mailer-bench-pycache")
    return env


def measure(command: list[str], data: bytes) -> tuple[float, float]:
    """Wall and CPU (user+sys of the child) seconds of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, input=data, check=True, stdout=subprocess.DEVNULL, env=child_env())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def medians(runs: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    run()  # warm-up: page cache, Postfix's first smtpd
    samples = [run() for _ in range(runs)]
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def bench_relay(runs: int) -> None:
    env = relay_env()
    port = env["RELAY_SUBMISSION_PORT"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = write_config(
            tmp,
            {
                "smtp_server": env["RELAY_HOST"],
                "smtp_port": int(port),
                "use_starttls": "true",
                "ssl_ca_file": env["RELAY_CA"],
                "username": env["RELAY_USER"],
                "password": env["RELAY_PASSWORD"],
            },
        )
        sender, rcpt = env["RELAY_USER"], "bench@example.net"
        results: dict[str, tuple[float, float]] = {}
        engine_cmd = [sys.executable, "-c", ENGINE_SCRIPT, str(config), sender, rcpt]
        results["engine (new process)"] = medians(runs, lambda: measure(engine_cmd, MESSAGE))
        smtplib_cmd = [
            sys.executable, "-c", SMTPLIB_SCRIPT, env["RELAY_CA"], env["RELAY_HOST"], port,
            sender, env["RELAY_PASSWORD"],
        ]  # fmt: skip
        results["bare smtplib (new process)"] = medians(runs, lambda: measure(smtplib_cmd, MESSAGE))
        # relay.env's msmtprc carries the password inline, and msmtp 1.8.23 misreads one
        # with `#` and `"` in it; passwordeval reads it from a file instead (one extra
        # `sh -c cat`, ~1-2 ms, counted against msmtp).
        secret = tmp / "password"
        secret.write_text(env["RELAY_PASSWORD"] + "\n")
        secret.chmod(0o600)
        rc = tmp / "msmtprc"
        rc.write_text(
            f"account relay\nhost {env['RELAY_HOST']}\nport {port}\ntls on\ntls_starttls on\n"
            f"tls_trust_file {env['RELAY_CA']}\nauth on\nuser {sender}\n"
            f'passwordeval "cat {secret}"\nfrom {sender}\naccount default : relay\n'
        )
        rc.chmod(0o600)
        msmtp_cmd = ["msmtp", "-C", str(rc), "-a", "relay", rcpt]
        results["msmtp"] = medians(runs, lambda: measure(msmtp_cmd, MESSAGE))

        from ssmtp_mailer.config.loader import load_config
        from ssmtp_mailer.relay.engine import deliver
        from ssmtp_mailer.rewrite import RouteGroup

        loaded = load_config(str(config))
        group = RouteGroup(loaded.domains["bench"], sender, (rcpt,))

        def in_process() -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            deliver(loaded, group, MESSAGE)
            return time.perf_counter() - wall, time.process_time() - cpu

        results["engine.deliver (in process)"] = medians(runs, in_process)

    print(f"1. one STARTTLS+AUTH send to Postfix, median of {runs} runs")
    print(f"   {'':30} {'wall ms':>9} {'cpu ms':>9}")
    for name, (wall, cpu) in results.items():
        print(f"   {name:30} {wall * 1000:9.1f} {cpu * 1000:9.1f}")
    eng, bare, msmtp = (
        results["engine (new process)"],
        results["bare smtplib (new process)"],
        results["msmtp"],
    )
    print(f"   engine/msmtp wall ratio:        {eng[0] / msmtp[0]:.2f}")
    print(f"   engine/msmtp cpu ratio:         {eng[1] / msmtp[1]:.2f}")
    print(f"   engine/bare smtplib cpu ratio:  {eng[1] / bare[1]:.2f}")


def bench_many_recipients(count: int = 1000) -> None:
    from smtpserver import SMTPTestServer

    from ssmtp_mailer.config.loader import load_config
    from ssmtp_mailer.relay.engine import deliver
    from ssmtp_mailer.rewrite import RouteGroup

    with SMTPTestServer() as server, tempfile.TemporaryDirectory() as tmp_name:
        config = load_config(
            str(
                write_config(
                    Path(tmp_name),
                    {"smtp_server": server.host, "smtp_port": server.port,
                     "use_starttls": "false", "auth_method": "NONE"},
                )
            )
        )  # fmt: skip
        recipients = tuple(f"user{i}@example.net" for i in range(count))
        started = time.perf_counter()
        deliver(config, RouteGroup(config.domains["bench"], "a@example.com", recipients), MESSAGE)
        wall = time.perf_counter() - started
        [got] = server.wait_for(1)
        print(f"2. {count}-recipient message: {wall * 1000:.1f} ms,")
        print(
            f"   connections={server.connections}, RCPTs counted at the server={len(got.rcpt_tos)}"
        )


RSS_SCRIPT = """
import sys
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.relay.engine import deliver
from ssmtp_mailer.rewrite import RouteGroup


def hwm():
    # VmHWM belongs to this program's address space; getrusage's ru_maxrss survives
    # exec on Linux and would report the parent's peak.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024


config = load_config(sys.argv[1])
base = hwm()
with open(sys.argv[2], "rb") as handle:  # one copy, as sendmail reading stdin has
    data = handle.read()
deliver(config, RouteGroup(config.domains["bench"], "a@example.com", ("b@example.net",)), data)
print(len(data), base, hwm())
"""


def bench_big_message(size: int = 25 * 1024 * 1024) -> None:
    from smtpserver import SMTPTestServer

    with SMTPTestServer(size_limit=None) as server, tempfile.TemporaryDirectory() as tmp_name:
        config = write_config(
            Path(tmp_name),
            {"smtp_server": server.host, "smtp_port": server.port,
             "use_starttls": "false", "auth_method": "NONE"},
        )  # fmt: skip
        message = Path(tmp_name) / "big.eml"
        line = b"x" * 76 + b"\r\n"
        message.write_bytes(b"Subject: big\r\n\r\n" + line * (size // len(line)))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(config), str(message)],
            capture_output=True,
            text=True,
            check=True,
            env=child_env(),
        )
        wall = time.perf_counter() - started
        length, base, peak = (int(x) for x in done.stdout.split())
        server.wait_for(1, timeout=60)
        ok = server.messages[0].data.endswith(b"x" * 76 + b"\r\n")
        mib = 1024 * 1024
        print(f"3. {length / mib:.1f} MiB message: {wall:.2f} s, arrived intact={ok}")
        print(
            f"   peak RSS {peak / mib:.1f} MiB = {peak / length:.2f}x the size"
            f"; {(peak - base) / length:.2f}x above the {base / mib:.1f} MiB of interpreter"
            " and imports"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    bench_relay(args.runs)
    bench_many_recipients()
    bench_big_message()


if __name__ == "__main__":
    main()
