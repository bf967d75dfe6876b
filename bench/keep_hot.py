"""
What refresh-ahead (C{keep_hot}) does for the hottest keys, in one run on this
machine: C{twistd -n refresherd} (memory store) and a real origin that takes
C{--origin-ms} per answer; a closed-loop load of keep-alive connections
asking for 10,000 keys with Zipf popularity (key of rank r asked in proportion
to 1 / (r + 1)), and a soft purge of the tag of one group of keys (the one
holding the hottest key) every C{--purge-every} seconds through the admin
API.  Once without C{keep_hot} and once with C{keep_hot = N}.

For the N hottest keys and for all keys, after a warm-up: the share of
answers served stale, the share that waited on the origin (misses), and the
origin's requests per second.

Run from the repository root after C{bash .ci/run}:

    .venv/bin/python -m bench.keep_hot [--seconds 30] [--hot 100]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.load import measuring
from bench.shared_stores import write_section
from bench.throughput import machine, versions
from tests.harness import start_service

START, END = "<!-- bench:keep_hot:start -->", "<!-- bench:keep_hot:end -->"
HEADING = "Refresh-ahead of the hottest keys"
KEYS = 10_000
GROUPS = 10

CONFIG = """
[server]
hot_keys = {sketch}

[jobs.item]
args = ["id", "group"]
url = "{origin}/items/{{id}}"
fresh = "{fresh}s"
stale = "1m"
early_refresh = 0
concurrency = 64
max_queue = 10000
wait_timeout = "30s"
tags = ["group:{{group}}"]
keep_hot = {keep_hot}
"""


@dataclass
class Run:
    hotter: Counter[str] = field(default_factory=Counter)
    """The statuses of the N/2 hottest keys."""
    hot: Counter[str] = field(default_factory=Counter)
    all: Counter[str] = field(default_factory=Counter)
    origin_requests: int = 0
    seconds: float = 0.0
    purges: int = 0
    refreshes: dict[str, float] = field(default_factory=dict)


def zipf_ranks(seed: int) -> itertools.cycle[int]:
    """An endless stream of key ranks with Zipf (s = 1) popularity, the same for each run."""
    weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(KEYS)))
    chooser = random.Random(seed)
    return itertools.cycle(chooser.choices(range(KEYS), cum_weights=weights, k=200_000))


async def client(
    port: int, ranks: itertools.cycle[int], until: float, warm_until: float, hot: int, run: Run
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (now := time.monotonic()) < until:
            rank = next(ranks)
            writer.write(
                f"GET /v1/jobs/item?id={rank}&group={rank % GROUPS} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            status = json.loads(await reader.readexactly(length)).get("status", "error")
            if now >= warm_until:
                run.all[status] += 1
                if rank < hot:
                    run.hot[status] += 1
                if rank < hot // 2:
                    run.hotter[status] += 1
    finally:
        writer.close()


async def purger(admin: str, until: float, every: float, run: Run) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() + every < until:
            await asyncio.sleep(every)
            answer = await http.post(admin + "/v1/purge", json={"tags": ["group:0"], "soft": True})
            answer.raise_for_status()
            run.purges += 1


ORIGIN = """
import sys, time
from tests.harness import Behaviour, start_origin
origin = start_origin()
origin.default = Behaviour(body=b'{"item": {n}}', delay=float(sys.argv[1]))
print(origin.url, flush=True)
sys.stdin.read()
"""


def fetched(admin: str) -> int:
    """How many fetch attempts refresherd made (its origin's requests)."""
    text = httpx.get(admin + "/metrics", timeout=10).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("refresherd_fetches_total{")
    )


def one_run(
    origin: str,
    keep_hot: int,
    hot: int,
    seconds: float,
    clients: int,
    purge_every: float,
    fresh: float = 5.0,
) -> Run:
    run = Run()
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "refresherd.toml"
        config.write_text(CONFIG.format(origin=origin, fresh=5, keep_hot=keep_hot, sketch=10 * hot))
        service = start_service(config)
        try:
            port = service.ports["public"]
            start = time.monotonic()
            warm_until, until = start + min(5.0, seconds / 3), start + seconds
            before: list[int] = []

            async def main() -> None:
                ranks = zipf_ranks(seed=7)

                async def mark() -> None:
                    await asyncio.sleep(warm_until - time.monotonic())
                    before.append(await asyncio.to_thread(fetched, service.admin_url))

                await asyncio.gather(
                    mark(),
                    purger(service.admin_url, until, purge_every, run),
                    *(client(port, ranks, until, warm_until, hot, run) for _ in range(clients)),
                )

            measuring(main())
            run.seconds = time.monotonic() - warm_until
            run.origin_requests = fetched(service.admin_url) - before[0]
            metrics = httpx.get(service.admin_url + "/metrics", timeout=10).text
            for line in metrics.splitlines():
                if line.startswith("refresherd_refreshes_total{"):
                    reason = line.split('reason="', 1)[1].split('"', 1)[0]
                    run.refreshes[reason] = float(line.rsplit(" ", 1)[1])
        finally:
            service.stop()
    return run


def run_both(
    seconds: float,
    hot: int,
    clients: int,
    purge_every: float,
    origin_ms: float,
    fresh: float = 5.0,
) -> dict[str, Run]:
    """Both runs against one origin in a process of its own (so that it never waits for
    the load generator's)."""
    origin = subprocess.Popen(
        [sys.executable, "-c", ORIGIN, str(origin_ms / 1000)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert origin.stdout is not None
        url = origin.stdout.readline().strip()
        return {
            f"keep_hot = {keep_hot}": one_run(
                url, keep_hot, hot, seconds, clients, purge_every, fresh
            )
            for keep_hot in (0, hot)
        }
    finally:
        origin.kill()
        origin.wait()


def share(counts: Counter[str], status: str) -> str:
    total = sum(counts.values())
    return f"{100 * counts[status] / total:.2f}%" if total else "-"


def report(results: dict[str, Run], hot: int, purge_every: float, origin_ms: float) -> str:
    rows = [
        f"| run | requests | {hot // 2} hottest: stale | {hot} hottest: stale | "
        f"{hot} hottest: miss | all: stale | all: miss | origin requests/s | "
        "fetches started, by reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in results.items():
        rows.append(
            f"| {name} | {sum(run.all.values()):,} | {share(run.hotter, 'stale')} | "
            f"{share(run.hot, 'stale')} | "
            f"{share(run.hot, 'miss')} | {share(run.all, 'stale')} | {share(run.all, 'miss')} | "
            f"{run.origin_requests / run.seconds:,.1f} | "
            + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(run.refreshes.items()))
            + " |"
        )
    return "\n".join(
        [
            f'`python -m bench.keep_hot`: 10,000 keys, Zipf popularity, `fresh = "5s"`, '
            f'`stale = "1m"`, an origin answering in {origin_ms:g} ms, a soft purge of the '
            f"group holding the hottest key every {purge_every:g} s; counted after a warm-up.",
            "",
            *rows,
            "",
            f"Machine: {machine()}; {versions()}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--hot", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--purge-every", type=float, default=3.0)
    parser.add_argument("--origin-ms", type=float, default=20.0)
    options = parser.parse_args()
    results = run_both(
        options.seconds, options.hot, options.clients, options.purge_every, options.origin_ms
    )
    text = report(results, options.hot, options.purge_every, options.origin_ms)
    write_section(START, END, HEADING, text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
