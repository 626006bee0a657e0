"""Spool speed: 1,000 messages queued while the relay is down, then delivered by `run_queue`.

Run: python bench/bench_queue.py [--messages N] [--spool-parent DIR]. Prints numbers,
asserts nothing. The spool lives on the file system of --spool-parent (default: the
system temp dir), because every entry costs fsyncs and their price depends on the disk.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from smtpserver import SMTPTestServer  # a test helper, found through tests/

from ssmtp_mailer import spool
from ssmtp_mailer.commands.queue import listing_text
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.config.model import Config
from ssmtp_mailer.errors import TempFailError
from ssmtp_mailer.relay.engine import DeliveryLog, deliver
from ssmtp_mailer.rewrite import plan_delivery


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_for(root: Path, port: int) -> Config:
    path = root / "ssmtp-mailer.conf"
    path.write_text(
        "[global]\ndefault_hostname = bench.example\ndefault_from = bench@bench.example\n"
        f"spool_dir = {root / 'spool'}\nmax_retries = 0\nretry_backoff = 0\n"
        "connection_timeout = 5\nenable_rate_limiting = false\n\n"
        f"[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {port}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    return load_config(str(path))


def message(n: int) -> bytes:
    body = "".join(
        f"line {i} of a typical cron report, nothing special here\r\n" for i in range(40)
    )
    return (
        f"From: bench@bench.example\r\nTo: admin@dest.example\r\nSubject: report {n}\r\n"
        f"Message-ID: <{n}.bench@bench.example>\r\n\r\n{body}"
    ).encode()


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.1f} msg/s  ({seconds * 1000 / count:6.2f} ms/msg, {seconds:.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--spool-parent", default=None)
    args = parser.parse_args()
    count: int = args.messages

    with tempfile.TemporaryDirectory(dir=args.spool_parent) as tmp:
        root = Path(tmp)
        down = config_for(root, closed_port())
        group = plan_delivery(down, "bench@bench.example", ["admin@dest.example"]).groups[0]
        data = [message(n) for n in range(count)]
        print(f"spool: {root / 'spool'}  messages: {count}  size: {len(data[0])} bytes")

        # What the sendmail path pays on an outage: a refused connection, then the queue.
        started = time.perf_counter()
        for blob in data[: count // 2]:
            try:
                deliver(down, group, blob, record=DeliveryLog(down, group, blob))
            except TempFailError as exc:
                spool.handle_temporary_failure(
                    down, group, blob, smtputf8=False, eightbit=False, error=exc
                )
        half = count // 2
        print(f"refused + enqueue:  {rate(half, time.perf_counter() - started)}")

        started = time.perf_counter()
        for blob in data[half:]:
            spool.enqueue(down, group, blob, smtputf8=False, eightbit=False, reason="down")
        print(f"enqueue only:       {rate(count - half, time.perf_counter() - started)}")

        started = time.perf_counter()
        text = listing_text(down)
        print(f"listing ({text.splitlines()[-1]}): {time.perf_counter() - started:.3f} s")

        with SMTPTestServer(size_limit=None) as server:
            up = config_for(root, server.port)
            started = time.perf_counter()
            result = spool.run_queue(up, force=True)
            elapsed = time.perf_counter() - started
            print(f"run_queue delivery: {rate(len(result.delivered), elapsed)}")
            print(f"  server received {len(server.messages)}, result: {result.summary()}")


if __name__ == "__main__":
    main()
