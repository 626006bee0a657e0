"""`sendmail -t < message` through our symlink vs msmtp vs a bare smtplib script (SPEC §10).

Starts a plain local aiosmtpd server, runs each sender N times interleaved, and prints wall
and CPU (children's rusage) medians and their ratios. It prints numbers; it asserts nothing.
Usage: python bench/bench_sendmail.py [--runs N] [--body-lines N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

SENDER = "bench@host.example"
RECIPIENT = "root@host.example"

SMTPLIB_SCRIPT = """\
import smtplib, sys
data = sys.stdin.buffer.read()
with smtplib.SMTP(sys.argv[1], int(sys.argv[2])) as client:
    client.ehlo("host.example")
    client.sendmail(sys.argv[3], [sys.argv[4]], data.replace(b"\\n", b"\\r\\n"))
"""


class Sink:
    """aiosmtpd handler that accepts and counts every message."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 OK"


def ensure_msmtp() -> str | None:
    """The msmtp binary, installed with apt-get when missing and we are root."""
    found = shutil.which("msmtp")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", "msmtp"], env=env, check=False)
    return shutil.which("msmtp")


def make_message(body_lines: int) -> bytes:
    lines = [
        f"From: Bench <{SENDER}>",
        f"To: {RECIPIENT}",
        "Subject: benchmark message",
        "",
        *(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(body_lines)),
    ]
    return ("\n".join(lines) + "\n").encode()


def free_port() -> int:
    """A free loopback port (aiosmtpd 1.4's Controller cannot listen on port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str], message: bytes, env: dict[str, str]) -> tuple[float, float]:
    """One run: (wall seconds, CPU seconds of the child)."""
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(argv, input=message, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    cpu = children_cpu() - cpu0
    if done.returncode != 0:
        sys.exit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--body-lines", type=int, default=40)
    options = parser.parse_args()

    # The script beside our interpreter: a pyenv shim on PATH would dispatch on the link's name.
    beside = Path(sys.executable).parent / "ssmtp-mailer"
    script = str(beside) if beside.exists() else shutil.which("ssmtp-mailer")
    if script is None:
        sys.exit("ssmtp-mailer is not installed (pip install -e .)")
    msmtp = ensure_msmtp()
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            config = work / "ssmtp-mailer.conf"
            config.write_text(
                "[global]\ndefault_hostname = host.example\n"
                f"default_from = {SENDER}\nspool_dir = {work}/spool\n"
                "enable_rate_limiting = false\n\n"
                f"[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {port}\n"
                "use_starttls = false\nauth_method = NONE\n"
            )
            (work / "sendmail").symlink_to(script)
            smtplib_script = work / "bare_smtplib.py"
            smtplib_script.write_text(SMTPLIB_SCRIPT)
            env = dict(os.environ, SSMTP_MAILER_CONFIG=str(config), HOME=str(work))
            # An installed package runs from byte-compiled files; with PYTHONDONTWRITEBYTECODE
            # every run would recompile our sources. The cache lives in the temporary folder.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
            contenders: dict[str, list[str]] = {
                "ssmtp-mailer sendmail -t": [str(work / "sendmail"), "-t"],
                "bare smtplib script": [
                    sys.executable, str(smtplib_script), "127.0.0.1", str(port), SENDER, RECIPIENT,
                ],
            }  # fmt: skip
            if msmtp:
                contenders["msmtp -t"] = [
                    msmtp, "--host=127.0.0.1", f"--port={port}", "--auth=off", "--tls=off",
                    f"--from={SENDER}", "-t",
                ]  # fmt: skip
            else:
                print("msmtp not available (not root, or apt-get failed): skipped")
            message = make_message(options.body_lines)
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
            for argv in contenders.values():  # warm caches once, unmeasured
                measure(argv, message, env)
            for _ in range(options.runs):
                for name, argv in contenders.items():  # interleaved: drift hits all alike
                    results[name].append(measure(argv, message, env))
    finally:
        controller.stop()

    median: Callable[[list[float]], float] = statistics.median
    walls = {n: median([w for w, _ in r]) for n, r in results.items()}
    cpus = {n: median([c for _, c in r]) for n, r in results.items()}
    print(f"{options.runs} runs each, {len(message)}-byte message, plain SMTP on loopback")
    print(f"{'sender':<28}{'wall median':>14}{'CPU median':>14}")
    for name in results:
        print(f"{name:<28}{walls[name] * 1000:>11.1f} ms{cpus[name] * 1000:>11.1f} ms")
    ours = "ssmtp-mailer sendmail -t"
    if "msmtp -t" in results:
        print(f"wall ratio ours/msmtp:           {walls[ours] / walls['msmtp -t']:.2f}")
        print(f"CPU  ratio ours/msmtp:           {cpus[ours] / cpus['msmtp -t']:.2f}")
    print(f"CPU  ratio ours/bare smtplib:    {cpus[ours] / cpus['bare smtplib script']:.2f}")
    print(f"wall ratio ours/bare smtplib:    {walls[ours] / walls['bare smtplib script']:.2f}")
    print(f"messages received by the sink:   {sink.count}")


if __name__ == "__main__":
    main()
