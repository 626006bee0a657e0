"""Routing speed (SPEC §10): 10,000 mappings + 1,000 domains loaded, a 100-recipient message planned.

Run: python bench/bench_routing.py [--runs N]. Prints numbers, asserts nothing.

Each load is timed in a process of its own, as a sendmail run meets the tree: once, in a new
interpreter, with the garbage collector off as entry.script has it, and the tree's cache
written by an earlier run. (Loads repeated in one process with the collector on measure
its scans of the previous trees instead: twice the time for the one-file-a-section tree.)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ssmtp_mailer.config.cache import RACY_NS
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.rewrite import plan_delivery

DOMAINS = 1000
MAPPINGS = 10_000
RECIPIENTS = 100


def write_tree(root: Path, *, files_per_kind: int) -> Path:
    """A configuration tree; domains and mappings spread over `files_per_kind` files each."""
    (root / "domains").mkdir()
    (root / "mappings").mkdir()
    (root / "users").mkdir()
    main = root / "ssmtp-mailer.conf"
    main.write_text(
        "[global]\ndefault_hostname = bench.example\ndefault_from = root@bench.example\n"
        "default_domain = d0.example\nspool_dir = spool\n"
    )
    chunks: list[list[str]] = [[] for _ in range(files_per_kind)]
    for n in range(DOMAINS):
        chunks[n % files_per_kind].append(
            f"[domain:d{n}.example]\nsmtp_server = smtp.d{n}.example\nsmtp_port = 587\n"
            f"auth_method = LOGIN\nusername = relay@d{n}.example\n"
            f"relay_account = relay@d{n}.example\n\n"
        )
    for i, chunk in enumerate(chunks):
        if chunk:
            (root / "domains" / f"{i:05d}.conf").write_text("".join(chunk))
    chunks = [[] for _ in range(files_per_kind)]
    for n in range(MAPPINGS):
        kind = n % 10
        domain = f"d{n % DOMAINS}.example"
        if kind < 7:
            source, target = f"alias{n}@in{n % 500}.example", f"user{n}@{domain}"
        elif kind < 9:
            source, target = f"*@wild{n}.example", f"*@{domain}"
        else:
            source, target = f"name{n}@*", f"name{n}@{domain}"
        chunks[n % files_per_kind].append(
            f"[mapping:m{n}]\nfrom_pattern = {source}\nto_pattern = {target}\ndomain = {domain}\n\n"
        )
    for i, chunk in enumerate(chunks):
        (root / "mappings" / f"{i:05d}.conf").write_text("".join(chunk))
    return main


def recipients() -> list[str]:
    """A mix of exact aliases, wildcard domains, `name@*` hits and unmapped addresses."""
    out = []
    for i in range(RECIPIENTS):
        n = (i * 97) % MAPPINGS
        kind = i % 4
        if kind == 0:
            n -= n % 10  # an exact mapping
            out.append(f"alias{n}@in{n % 500}.example")
        elif kind == 1:
            n = n - n % 10 + 7
            out.append(f"someone{i}@wild{n}.example")
        elif kind == 2:
            n = n - n % 10 + 9
            out.append(f"name{n}@anywhere{i}.example")
        else:
            out.append(f"nobody{i}@elsewhere.example")
    return out


def timed(func: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, best) milliseconds over `runs` calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), min(samples)


def fresh_process(main: Path) -> None:
    """One load and one plan, as a sendmail process meets them: a new interpreter, the
    cyclic garbage collector off (entry.script), the tree's cache already written."""
    gc.disable()
    start = time.perf_counter()
    config = load_config(str(main))
    loaded = time.perf_counter()
    plan_delivery(config, "root@bench.example", recipients())
    planned = time.perf_counter()
    print((loaded - start) * 1000, (planned - loaded) * 1000)


def in_fresh_processes(main: Path, runs: int) -> list[tuple[float, float]]:
    """(load, plan) milliseconds in each of `runs` fresh processes."""
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(main)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        load, plan = out.split()
        samples.append((float(load), float(plan)))
    return samples


def bench(layout: str, files_per_kind: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        main = write_tree(Path(tmp), files_per_kind=files_per_kind)
        # A tree as a send meets it, written before then: the configuration cache compares
        # by content only files changed within RACY_NS of its being written (their times
        # alone might not have moved), so a tree read at once would be read whole each time.
        time.sleep(RACY_NS / 1e9 + 0.1)
        rcpts = recipients()
        sender = "root@bench.example"
        config = load_config(str(main))  # and the cache is written
        start = time.perf_counter()
        plan_delivery(config, sender, rcpts)
        first = (time.perf_counter() - start) * 1000
        warm = timed(lambda: plan_delivery(config, sender, rcpts), runs)
        samples = in_fresh_processes(main, runs)
        plan = plan_delivery(config, sender, rcpts)
        routed = sum(len(g.recipients) for g in plan.groups)
        print(f"layout: {layout} ({MAPPINGS} mappings, {DOMAINS} domains, {RECIPIENTS} recipients)")
        loads = [load for load, _ in samples]
        totals = [load + plan for load, plan in samples]
        for name, values in (("config load alone", loads), ("load + plan", totals)):
            print(
                f"  {name:25} median {statistics.median(values):7.1f} ms"
                f"  best {min(values):7.1f} ms"
            )
        print(f"  plan, first (index build) {first:7.1f} ms")
        print(f"  plan, index cached        median {warm[0]:7.2f} ms  best {warm[1]:7.2f} ms")
        print(f"  -> {routed} recipients in {len(plan.groups)} transactions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fresh_process(Path(args.child))
        return
    bench("10 files per folder", 10, args.runs)
    bench("one file per section", MAPPINGS, max(3, args.runs // 3))


if __name__ == "__main__":
    main()
