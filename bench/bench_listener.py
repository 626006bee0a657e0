"""Listener throughput (SPEC §10): 10 SMTP clients relayed to a loopback upstream, vs msmtp.

Run: python bench/bench_listener.py [--clients 10] [--messages 100] [--msmtp-messages 200]
[--client smtplib|pipelining].
Prints numbers, asserts nothing.

- ours: `ssmtp-mailer listen` with --processes serving processes (listen_processes, default
  one per CPU), relaying on reused upstream connections; --clients threads each keep one
  SMTP session and send --messages messages through it. Every 250 from the listener means
  the upstream already said 250 (the listener replies to the dot after delivery), so the
  rate is end-to-end. `--client pipelining` has each client pipeline (RFC 2920) as
  Postfix's smtp client does: a message's data, its dot and the next MAIL, RCPT and DATA
  in one write, one round trip a message instead of four. `--client smtp-source` runs
  Postfix's C load generator instead (one session per client, a round trip a command),
  whose own CPU is next to nothing: the listener's rate when it has the cores to itself.
- the upstream, in a process of its own, offers PIPELINING as Postfix and the big relays
  do. By default it is a bare sink that answers 250 to everything (~0.2 ms of CPU a
  message): on a small machine every process shares the same cores, and a real relay runs
  elsewhere. `--upstream aiosmtpd` puts a real SMTP server there instead (~1 ms a message).
- msmtp: the same messages, one `msmtp` process each, --clients at a time, to the same
  upstream: the ratio SPEC §10 asks for. Then, for scale, one at a time (as a script
  calling sendmail in a loop does): msmtp waits ~40 ms for the reply to its final dot on
  loopback (Nagle's algorithm holds the dot back until the peer's delayed ACK), so its
  rate is set by that wait, not by its CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BODY = "".join(f"line {i} of a typical application notice, nothing special\r\n" for i in range(30))


def message(n: int) -> str:
    return (
        f"From: app@bench.example\r\nTo: admin@dest.example\r\nSubject: notice {n}\r\n"
        f"Message-ID: <{n}.bench@bench.example>\r\n\r\n{BODY}"
    )


def sink(port_file: str) -> None:
    """The upstream: an aiosmtpd server that accepts and counts (run in its own process)."""
    from aiosmtpd.controller import Controller

    count = 0
    lock = threading.Lock()

    class Handler:
        async def handle_EHLO(
            self,
            server: object,
            session: Any,
            envelope: object,
            hostname: str,
            responses: list[str],
        ) -> list[str]:
            # Like Postfix and the big relays; aiosmtpd serves pipelined commands in order.
            session.host_name = hostname
            return [responses[0], "250-PIPELINING", *responses[1:]]

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            nonlocal count
            with lock:
                count += 1
            return "250 2.0.0 Ok: queued"

    import socket

    with socket.socket() as probe:  # aiosmtpd 1.4's Controller cannot take port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    Path(port_file).write_text(str(port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    print(count, flush=True)


def bare_sink(port_file: str) -> None:
    """A minimal upstream that says 250 to everything (run in its own process): the
    listener's cost alone, without aiosmtpd's on the other side. Understands what our
    relay client sends: EHLO, pipelined RSET/MAIL/RCPT/DATA, the data, QUIT."""
    import asyncio

    count = 0

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""
            self.in_data = False
            transport.write(b"220 sink ESMTP\r\n")

        def data_received(self, data: bytes) -> None:
            nonlocal count
            self.buffer += data
            out = []
            while True:
                if self.in_data:
                    end = self.buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    self.buffer = self.buffer[end + 5 :]
                    self.in_data = False
                    count += 1
                    out.append(b"250 2.0.0 Ok: queued\r\n")
                    continue
                line, sep, rest = self.buffer.partition(b"\r\n")
                if not sep:
                    break
                self.buffer = rest
                verb = line[:4].upper()
                if verb == b"EHLO":
                    out.append(
                        b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 99999999\r\n"
                    )
                elif verb == b"DATA":
                    self.in_data = True
                    self.buffer = b"\r\n" + self.buffer  # the dot may end the first line
                    out.append(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    out.append(b"221 bye\r\n")
                    self.transport.write(b"".join(out))
                    self.transport.close()
                    return
                else:
                    out.append(b"250 2.0.0 Ok\r\n")
            if out:
                self.transport.write(b"".join(out))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", 0)
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())
    print(count, flush=True)


def start_sink(tmp: Path, kind: str) -> tuple[subprocess.Popen[str], int]:
    port_file = tmp / "sink.port"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--sink" if kind == "aiosmtpd" else "--bare-sink",
            str(port_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for _ in range(200):
        if port_file.exists() and port_file.read_text():
            return proc, int(port_file.read_text())
        time.sleep(0.05)
    raise SystemExit("the upstream sink did not start")


def stop_sink(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return int(out.strip() or 0)


def start_listener(
    tmp: Path, upstream: int, workers: int, processes: int
) -> tuple[subprocess.Popen[str], int]:
    conf = tmp / "listen.conf"
    conf.write_text(
        f"[global]\ndefault_hostname = bench.example\nspool_dir = {tmp / 'spool'}\n"
        # A log line per message, as a sysadmin who keeps a mail log pays for it.
        f"log_file = {tmp / 'mail.log'}\n"
        f"max_retries = 0\nenable_rate_limiting = false\nlisten_user = root\n"
        f"max_connections = {workers}\nlisten_processes = {processes}\n"
        "allowed_networks = 127.0.0.1/32\n\n"
        f"[domain:*]\nsmtp_server = 127.0.0.1\nsmtp_port = {upstream}\n"
        "use_starttls = false\nauth_method = NONE\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssmtp_mailer",
            "--config",
            str(conf),
            "listen",
            "--address",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not match:
        raise SystemExit(f"the listener did not start: {line}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, int(match.group(1))


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU of a process and its live children so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / tick, int(fields[12]) / tick
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        child_user, child_system = cpu_seconds(int(child))
        user, system = user + child_user, system + child_system
    return user, system


def own_cpu_seconds() -> tuple[float, float]:
    """This process's CPU and its finished children's (smtp-source, when it is the client)."""
    times = os.times()
    return times.user + times.children_user, times.system + times.children_system


def _timed_clients(
    client: Callable[[int], None],
    barrier: threading.Barrier,
    errors: list[str],
    clients: int,
    per_client: int,
) -> tuple[float, int]:
    """Start the clients, time them from the barrier (their sessions open) to the last
    one done; the seconds and the messages that got 250."""
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        print(f"  {len(errors)} errors, first: {errors[0]}")
    return elapsed, clients * per_client - len(errors)


def run_clients(port: int, clients: int, per_client: int) -> tuple[float, int]:
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo()
            barrier.wait()
            for i in range(per_client):
                try:
                    smtp.sendmail(
                        "app@bench.example", ["admin@dest.example"], message(n * 100000 + i)
                    )
                except smtplib.SMTPException as exc:
                    errors.append(repr(exc))

    return _timed_clients(client, barrier, errors, clients, per_client)


def read_replies(sock: socket.socket, pending: bytes, count: int) -> tuple[list[bytes], bytes]:
    """The next `count` SMTP replies (last lines only) from `sock`, and what is left over."""
    got: list[bytes] = []
    while len(got) < count:
        while b"\r\n" not in pending:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the listener closed the connection")
            pending += chunk
        line, _, pending = pending.partition(b"\r\n")
        if line[3:4] != b"-":
            got.append(line)
    return got, pending


def run_pipelining_clients(port: int, clients: int, per_client: int) -> tuple[float, int]:
    """As run_clients, but each client pipelines (RFC 2920) as Postfix's smtp client does:
    the data of one message, its dot and the next MAIL, RCPT and DATA go in one write."""
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    envelope = b"MAIL FROM:<app@bench.example>\r\nRCPT TO:<admin@dest.example>\r\nDATA\r\n"

    def client(n: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending = b""
            _, pending = read_replies(sock, pending, 1)
            sock.sendall(b"EHLO bench.example\r\n")
            _, pending = read_replies(sock, pending, 1)
            barrier.wait()
            sock.sendall(envelope)
            _, pending = read_replies(sock, pending, 3)
            for i in range(per_client):
                data = message(n * 100000 + i).encode() + b".\r\n"
                last = i + 1 == per_client
                sock.sendall(data + (b"QUIT\r\n" if last else envelope))
                got, pending = read_replies(sock, pending, 2 if last else 4)
                if not got[0].startswith(b"250"):
                    errors.append(got[0].decode(errors="replace"))

    return _timed_clients(client, barrier, errors, clients, per_client)


def run_smtp_source(port: int, clients: int, per_client: int) -> tuple[float, int]:
    """Postfix's own load generator, smtp-source (C): the clients cost next to no CPU, so
    the listener has the cores to itself. One session per client (-d), a round trip a
    command, a message of about the same size."""
    smtp_source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not os.access(smtp_source, os.X_OK):
        raise SystemExit("--client smtp-source needs Postfix's smtp-source (package postfix)")
    count = clients * per_client
    command = [
        smtp_source, "-s", str(clients), "-d", "-m", str(count), "-l", str(len(BODY)),
        "-f", "app@bench.example", "-t", "admin@dest.example", "-M", "bench.example",
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        print(f"  smtp-source failed: {done.stderr.strip()[-300:]}")
        return elapsed, 0
    return elapsed, count


def run_msmtp(msmtp: str, tmp: Path, upstream: int, clients: int, count: int) -> float:
    """Seconds for `count` messages, one msmtp process each, `clients` at a time."""
    rc = tmp / "msmtprc"
    rc.write_text(
        f"account bench\nhost 127.0.0.1\nport {upstream}\nauth off\ntls off\n"
        "from app@bench.example\nlogfile\naccount default : bench\n"
    )
    rc.chmod(0o600)

    def one(n: int) -> None:
        subprocess.run(
            [msmtp, "-C", str(rc), "admin@dest.example"],
            input=message(n).encode(),
            check=True,
            capture_output=True,
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100, help="per client")
    parser.add_argument("--msmtp-messages", type=int, default=200)
    parser.add_argument(
        "--upstream",
        choices=("aiosmtpd", "bare"),
        default="bare",
        help="a bare 250-to-everything sink (default), or a real aiosmtpd server",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="the listener's listen_processes (default: one per CPU)",
    )
    parser.add_argument(
        "--client",
        choices=("smtplib", "pipelining", "smtp-source"),
        default="smtplib",
        help="the clients: smtplib, a round trip a command (default), pipelining (RFC 2920),"
        " or Postfix's smtp-source (C: the clients' CPU out of the picture)",
    )
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--bare-sink", help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="FILE", help="py-spy the listener into FILE")
    args = parser.parse_args()
    if args.sink:
        sink(args.sink)
        return
    if args.bare_sink:
        bare_sink(args.bare_sink)
        return
    print(
        f"cpus: {os.cpu_count()}  clients: {args.clients}  message: {len(message(0))} bytes"
        f"  upstream: {args.upstream}  listen_processes: {args.processes}"
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        upstream, port = start_sink(tmp, args.upstream)
        listener, listen_port = start_listener(tmp, port, args.clients, args.processes)
        try:
            run_clients(listen_port, args.clients, 5)  # warm-up: imports, first connections
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "-p",
                        str(listener.pid),
                        "-o",
                        args.profile,
                        "-f",
                        "raw",
                        "-r",
                        "200",
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1)
            before = cpu_seconds(listener.pid), cpu_seconds(upstream.pid), own_cpu_seconds()
            clients = {
                "smtplib": run_clients,
                "pipelining": run_pipelining_clients,
                "smtp-source": run_smtp_source,
            }[args.client]
            elapsed, sent = clients(listen_port, args.clients, args.messages)
            after = cpu_seconds(listener.pid), cpu_seconds(upstream.pid), own_cpu_seconds()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
        finally:
            listener.send_signal(signal.SIGTERM)
            listener.wait(60)
        ours = sent / elapsed
        print(f"ours:  {sent} messages in {elapsed:.2f} s = {ours:7.1f} msg/s")
        per = []
        for name, start, end in zip(
            ("listener", "upstream", "clients"), before, after, strict=True
        ):
            user, system = ((e - b) * 1000 / max(sent, 1) for b, e in zip(start, end, strict=True))
            per.append(f"{name} {user + system:.2f} (user {user:.2f}, sys {system:.2f})")
        print(f"  CPU ms/msg: {', '.join(per)}")
        msmtp = shutil.which("msmtp")
        if msmtp:
            took = run_msmtp(msmtp, tmp, port, args.clients, args.msmtp_messages)
            theirs = args.msmtp_messages / took
            print(
                f"msmtp, {args.clients} at a time: {args.msmtp_messages} messages in {took:.2f} s"
                f" = {theirs:7.1f} msg/s"
            )
            alone = max(args.msmtp_messages // 10, 5)
            took_alone = run_msmtp(msmtp, tmp, port, 1, alone)
            print(
                f"msmtp, one at a time: {alone} messages in {took_alone:.2f} s"
                f" = {alone / took_alone:7.1f} msg/s ({1000 * took_alone / alone:.0f} ms each)"
            )
            print(
                f"ours/msmtp: {ours / theirs:.1f}x at the same concurrency"
                f"  (targets: >= 1000 msg/s and >= 20x);"
                f" {ours * took_alone / alone:.0f}x msmtp one at a time"
            )
        else:
            print("msmtp not installed: no comparison")
        received = stop_sink(upstream)
        print(f"upstream received: {received}")


if __name__ == "__main__":
    main()
