"""Routing speed (SPEC §10): 10,000 mappings + 1,000 domains loaded, a 100-recipient message planned.

Run: python bench/bench_routing.py [--runs N]. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def bench(layout: str, files_per_kind: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        main = write_tree(Path(tmp), files_per_kind=files_per_kind)
        rcpts = recipients()
        sender = "root@bench.example"

        def load() -> object:
            return load_config(str(main))

        def load_and_plan() -> object:
            return plan_delivery(load_config(str(main)), sender, rcpts)

        config = load_config(str(main))
        start = time.perf_counter()
        plan_delivery(config, sender, rcpts)
        first = (time.perf_counter() - start) * 1000
        warm = timed(lambda: plan_delivery(config, sender, rcpts), runs)
        loaded = timed(load, runs)
        total = timed(load_and_plan, runs)
        plan = plan_delivery(config, sender, rcpts)
        routed = sum(len(g.recipients) for g in plan.groups)
        print(f"layout: {layout} ({MAPPINGS} mappings, {DOMAINS} domains, {RECIPIENTS} recipients)")
        print(f"  config load alone         median {loaded[0]:7.1f} ms  best {loaded[1]:7.1f} ms")
        print(f"  load + plan               median {total[0]:7.1f} ms  best {total[1]:7.1f} ms")
        print(f"  plan, first (index build) {first:7.1f} ms")
        print(f"  plan, index cached        median {warm[0]:7.2f} ms  best {warm[1]:7.2f} ms")
        print(f"  -> {routed} recipients in {len(plan.groups)} transactions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    bench("10 files per folder", 10, args.runs)
    bench("one file per section", MAPPINGS, max(3, args.runs // 3))


if __name__ == "__main__":
    main()
