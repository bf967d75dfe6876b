"""
What refresh-ahead (C{keep_hot}) does for the hottest keys, in one run on this
machine: C{twistd -n refresherd} (memory store) and a real origin that takes
C{--origin-ms} per answer; a closed-loop load of keep-alive connections
asking for 10,000 keys with Zipf popularity (key of rank r asked in proportion
to 1 / (r + 1)), and a soft purge of the tag of one group of keys (the one
holding the hottest key) every C{--purge-every} seconds through the admin
API.  Once without C{keep_hot} and once with C{keep_hot = N}, at the same
paced rate (C{--rate}), so that their origin requests compare.

The workload is that of cached blocks: C{fresh = "30s"} by default (a block
of a page is cached for tens of seconds or minutes, not for a few seconds:
with a very short C{fresh}, refresh-ahead's lead of at least a second is a
large share of every key's life and its cost is that share, which no real
job pays), and each run is long enough for several refreshes of every hot
key after the warm-up (200 s, 40 s of them warm-up: more than five C{fresh}
periods counted).

For the N hottest keys and for all keys, after a warm-up: the share of
answers served stale, the share that waited on the origin (misses), and the
origin's requests per second.  The stale answers of the N hottest keys are
split in two: those a soft purge made stale (their value's C{fresh_until}
cut short: served while it is regenerated, as a soft purge means), and all
the others.  For each purge and each of the N hottest keys it covers, its
regeneration window: from the purge (sent) to the write of the value fetched
after it.

With C{--trace}, the refresherd process records what refresh-ahead did
(L{bench.keep_hot_trace}), and each other stale answer of the N hottest keys
is explained on standard output: whether the key was kept hot at the last
look before it, whether a background refresh of it had started since its
value was fetched, and how late the answer was past C{fresh_until}; and the regeneration windows
and the stale answers a purge made are split between the keys the purge
regenerated at once (kept hot at that moment) and the others, which are
regenerated only when a request finds them stale (their window is the wait
for that request).

Run from the repository root after C{bash .ci/run}:

    .venv/bin/python -m bench.keep_hot [--seconds 200] [--fresh 30] [--hot 100] [--trace]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.load import measuring
from bench.shared_stores import write_section
from bench.throughput import machine, versions
from tests.harness import start_service

START, END = "<!-- bench:keep_hot:start -->", "<!-- bench:keep_hot:end -->"
HEADING = "Refresh-ahead of the hottest keys"
KEYS = 10_000
GROUPS = 10
FRESH = 30.0
"""The job's C{fresh}, in seconds, unless C{--fresh} says otherwise."""

CONFIG = """
[server]
hot_keys = {hot}

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
class Stale:
    """A stale answer of one of the N hottest keys."""

    at: float
    """When it was read (wall clock, as refresherd's)."""
    rank: int
    fetched_at: float
    fresh_until: float


@dataclass
class Run:
    fresh: float = FRESH
    warm_up: float = 40.0
    rate: float = 0.0
    """Requests per second asked (0: as fast as the clients get answers)."""
    clients: int = 0
    hotter: Counter[str] = field(default_factory=Counter)
    """The statuses of the N/2 hottest keys."""
    hot: Counter[str] = field(default_factory=Counter)
    all: Counter[str] = field(default_factory=Counter)
    origin_requests: int = 0
    """The origin's requests after the warm-up."""
    origin_hot: int = 0
    """The origin's requests for the N hottest keys, in the whole run."""
    origin_total: int = 0
    """The origin's requests in the whole run."""
    seconds: float = 0.0
    purges: list[float] = field(default_factory=list)
    """When each soft purge was sent (wall clock)."""
    refreshes: dict[str, float] = field(default_factory=dict)
    stale: list[Stale] = field(default_factory=list)
    asked: set[int] = field(default_factory=set)
    """The ranks asked for so far, warm-up included."""
    first_misses: int = 0
    """Misses of the N hottest keys at their first request (nobody could have known them)."""
    """The stale answers of the N hottest keys."""
    values: dict[int, set[float]] = field(default_factory=dict)
    """The C{fetched_at} of each value served of each of the N hottest keys."""
    trace: list[dict[str, Any]] = field(default_factory=list)

    def purged(self, stale: Stale) -> bool:
        """Whether a soft purge made C{stale} stale (cut its C{fresh_until} short)."""
        return stale.fresh_until < stale.fetched_at + self.fresh - 0.001

    @property
    def other_stale(self) -> list[Stale]:
        return [s for s in self.stale if not self.purged(s)]

    def windows(self, hot: int) -> list[float]:
        """
        For each purge and each of the N hottest keys it covers: seconds from
        the purge to the write of the first value fetched after it (among the
        keys asked for again before the next purge).
        """
        return [seconds for _, _, seconds in self.timed(hot)]

    def timed(self, hot: int) -> list[tuple[int, int, float]]:
        """L{windows}, each with the purge's index and the key's rank."""
        windows = []
        for i, sent in enumerate(self.purges):
            next_one = self.purges[i + 1] if i + 1 < len(self.purges) else math.inf
            for rank in range(0, hot, GROUPS):
                after = [f for f in self.values.get(rank, ()) if sent < f < next_one]
                if after:  # (unless the key was not asked for again before the next purge)
                    windows.append((i, rank, min(after) - sent))
        return windows


def zipf_ranks(seed: int) -> itertools.cycle[int]:
    """An endless stream of key ranks with Zipf (s = 1) popularity, the same for each run."""
    weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(KEYS)))
    chooser = random.Random(seed)
    return itertools.cycle(chooser.choices(range(KEYS), cum_weights=weights, k=200_000))


async def client(
    port: int,
    ranks: itertools.cycle[int],
    until: float,
    warm_until: float,
    hot: int,
    run: Run,
    interval: float,
    offset: float,
) -> None:
    """
    One keep-alive connection asking one request after another: every
    C{interval} seconds (from C{offset}), or at once with an interval of 0.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    next_at = time.monotonic() + offset
    try:
        while (now := time.monotonic()) < until:
            if interval:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                    now = time.monotonic()
                next_at += interval
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
            answer = json.loads(await reader.readexactly(length))
            status = answer.get("status", "error")
            first = rank not in run.asked
            run.asked.add(rank)
            if now >= warm_until:
                run.all[status] += 1
                if rank < hot:
                    run.hot[status] += 1
                    if status == "miss" and first:
                        run.first_misses += 1
                    run.values.setdefault(rank, set()).add(answer["fetched_at"])
                    if status == "stale":
                        run.stale.append(
                            Stale(time.time(), rank, answer["fetched_at"], answer["fresh_until"])
                        )
                if rank < hot // 2:
                    run.hotter[status] += 1
    finally:
        writer.close()


async def purger(admin: str, until: float, every: float, run: Run) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() + every < until:
            await asyncio.sleep(every)
            sent = time.time()
            answer = await http.post(admin + "/v1/purge", json={"tags": ["group:0"], "soft": True})
            answer.raise_for_status()
            run.purges.append(sent)


ORIGIN = """
import json, sys, time
from tests.harness import Behaviour, start_origin
origin = start_origin()
origin.default = Behaviour(body=b'{"item": {n}}', delay=float(sys.argv[1]))
print(origin.url, flush=True)
sys.stdin.read()
with origin.lock:
    print(json.dumps(origin.hits), flush=True)
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
    fresh: float = FRESH,
    trace: bool = False,
    warm_up: float = 40.0,
    rate: float = 0.0,
) -> Run:
    run = Run(fresh, rate=rate, clients=clients)
    interval = clients / rate if rate else 0.0
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "refresherd.toml"
        config.write_text(
            CONFIG.format(origin=origin, fresh=f"{fresh:g}", keep_hot=keep_hot, hot=hot)
        )
        traced = Path(directory) / "trace.jsonl"
        env = None
        if trace:
            env = {
                "KEEP_HOT_TRACE": str(traced),
                "PYTHONPATH": os.pathsep.join(
                    [
                        str(Path(__file__).with_name("keep_hot_trace")),
                        os.environ.get("PYTHONPATH", ""),
                    ]
                ),
            }
        service = start_service(config, env=env)
        try:
            port = service.ports["public"]
            start = time.monotonic()
            run.warm_up = min(warm_up, seconds / 2)
            warm_until, until = start + run.warm_up, start + seconds
            before: list[int] = []

            async def main() -> None:
                ranks = zipf_ranks(seed=7)

                async def mark() -> None:
                    await asyncio.sleep(warm_until - time.monotonic())
                    before.append(await asyncio.to_thread(fetched, service.admin_url))

                await asyncio.gather(
                    mark(),
                    purger(service.admin_url, until, purge_every, run),
                    *(
                        client(
                            port,
                            ranks,
                            until,
                            warm_until,
                            hot,
                            run,
                            interval,
                            i * interval / clients,
                        )
                        for i in range(clients)
                    ),
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
        if trace and traced.exists():
            run.trace = [json.loads(line) for line in traced.read_text().splitlines() if line]
    return run


def run_both(
    seconds: float,
    hot: int,
    clients: int,
    purge_every: float,
    origin_ms: float,
    fresh: float = FRESH,
    trace: bool = False,
    warm_up: float = 40.0,
    rate: float = 0.0,
) -> dict[str, Run]:
    """Both runs, each against an origin in a process of its own (so that it never waits
    for the load generator's), which counts its requests per key."""
    results = {}
    for keep_hot in (0, hot):
        origin = subprocess.Popen(
            [sys.executable, "-c", ORIGIN, str(origin_ms / 1000)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            assert origin.stdin is not None and origin.stdout is not None
            url = origin.stdout.readline().strip()
            run = one_run(
                url, keep_hot, hot, seconds, clients, purge_every, fresh, trace, warm_up, rate
            )
            origin.stdin.close()
            hits = json.loads(origin.stdout.readline())
            run.origin_hot = sum(hits.get(f"/items/{rank}", 0) for rank in range(hot))
            run.origin_total = sum(hits.values())
            results[f"keep_hot = {keep_hot}"] = run
        finally:
            origin.kill()
            origin.wait()
    return results


def share(counts: Counter[str], status: str) -> str:
    return percent(counts[status], sum(counts.values()))


def percent(part: int, total: int) -> str:
    return f"{100 * part / total:.2f}%" if total else "-"


def window(run: Run, hot: int) -> str:
    """The median and p99 of the regeneration windows, in ms."""
    windows = sorted(run.windows(hot))
    if not windows:
        return "-"
    p99 = windows[min(len(windows) - 1, int(0.99 * len(windows)))]
    return f"{1000 * statistics.median(windows):.0f} / {1000 * p99:.0f}"


def report(results: dict[str, Run], hot: int, purge_every: float, origin_ms: float) -> str:
    rows = [
        f"| run | requests | {hot // 2} hottest: stale | {hot} hottest: stale | "
        f"of which after a purge | other | purge to regenerated, ms (median / p99) | "
        f"{hot} hottest: miss (at a first request) | all: stale | all: miss | origin requests/s | "
        f"origin requests against the first run | "
        f"origin requests, whole run: all, {hot} hottest | fetches started, by reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = next(iter(results.values()))
    base = first.origin_requests / first.seconds
    for name, run in results.items():
        hot_answers = sum(run.hot.values())
        other = len(run.other_stale)
        rows.append(
            f"| {name} | {sum(run.all.values()):,} | {share(run.hotter, 'stale')} | "
            f"{share(run.hot, 'stale')} | "
            f"{percent(len(run.stale) - other, hot_answers)} | {percent(other, hot_answers)} | "
            f"{window(run, hot)} | "
            f"{share(run.hot, 'miss')} ({percent(run.first_misses, hot_answers)}) | "
            f"{share(run.all, 'stale')} | {share(run.all, 'miss')} | "
            f"{run.origin_requests / run.seconds:,.1f} | "
            f"{run.origin_requests / run.seconds / base:.3f} | "
            f"{run.origin_total:,}, {run.origin_hot:,} | "
            + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(run.refreshes.items()))
            + " |"
        )
    return "\n".join(
        [
            "`python -m bench.keep_hot`: 10,000 keys, Zipf popularity, "
            + (
                f"{first.rate:g} requests per second"
                if first.rate
                else "requests as fast as they are answered"
            )
            + f" on {first.clients} connections, "
            f'`fresh = "{first.fresh:g}s"`, `stale = "1m"`, an origin answering in '
            f"{origin_ms:g} ms, "
            + (
                f"a soft purge of the group holding the hottest key every {purge_every:g} s"
                if first.purges
                else "no purge"
            )
            + f"; counted for {first.seconds:.0f} s after a warm-up of {first.warm_up:g} s.",
            "",
            *rows,
            "",
            f"Machine: {machine()}; {versions()}.",
        ]
    )


def by_regeneration(run: Run, hot: int) -> str:
    """
    Of a traced run: the regeneration windows and the stale answers a purge
    made, split between the keys that the purge regenerated at once (kept hot
    then, by the trace's record of the purge) and the others, regenerated only
    when a request found them stale: for those, the window is the wait for
    that request.
    """
    notices = [e for e in run.trace if e["e"] == "purge"]
    if not notices:
        return ""
    covered = []
    for sent in run.purges:
        notice = next((n for n in notices if n["t"] >= sent), None)
        covered.append({str(i) for i in notice["covered"]} if notice is not None else set())
    names = ("regenerated at the purge", "not kept at the purge")
    windows: dict[str, list[float]] = {name: [] for name in names}
    for i, rank, seconds in run.timed(hot):
        windows[names[str(rank) not in covered[i]]].append(seconds)
    stale = Counter[str]()
    for answer in run.stale:
        i = bisect.bisect(run.purges, answer.at) - 1
        if run.purged(answer) and i >= 0:
            stale[names[str(answer.rank) not in covered[i]]] += 1
    answers = sum(run.hot.values())
    lines = []
    for name in names:
        ms = sorted(windows[name])
        timing = (
            f"{1000 * statistics.median(ms):.0f} / "
            f"{1000 * ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.0f} ms (median / p99) "
            f"of {len(ms)} windows, longest {1000 * ms[-1]:.0f} ms"
            if ms
            else "no windows"
        )
        lines.append(
            f"  {name}: {timing}; {stale[name]} stale answers "
            f"({percent(stale[name], answers)} of the {hot} hottest keys' answers)"
        )
    return "purges, by whether each covered key was kept hot then:\n" + "\n".join(lines)


def explain(run: Run) -> str:
    """
    The other stale answers of the N hottest keys of a traced run, one line
    per episode (a key's value served stale), with what refresh-ahead did.
    """
    looks = [(e["t"], set(e["ids"])) for e in run.trace if e["e"] == "kept"]
    starts: dict[str, list[dict[str, Any]]] = {}
    ends: dict[str, list[dict[str, Any]]] = {}
    for e in run.trace:
        if e["e"] in ("start", "end"):
            (starts if e["e"] == "start" else ends).setdefault(str(e["id"]), []).append(e)
    episodes: dict[tuple[int, float], list[Stale]] = {}
    for stale in run.other_stale:
        episodes.setdefault((stale.rank, stale.fetched_at), []).append(stale)
    lines, kinds = [], Counter[str]()
    for (rank, fetched_at), answers in sorted(episodes.items(), key=lambda i: i[1][0].at):
        first = answers[0]
        last_look = max((look for look in looks if look[0] <= first.at), default=None)
        kept = last_look is not None and str(rank) in last_look[1]
        began = [e for e in starts.get(str(rank), []) if fetched_at <= e["t"] <= answers[-1].at]
        ended = [
            e
            for e in ends.get(str(rank), [])
            if began and e["t"] >= began[0]["t"] and e["reason"] == began[0]["reason"]
        ]
        kind = ("kept" if kept else "not kept") + (
            ", refresh started" if began else ", no refresh started"
        )
        kinds[kind] += len(answers)
        detail = ""
        if began:
            b = began[0]
            end = ended[0]["t"] if ended else None
            detail = f"; {b['reason']} started {b['t'] - first.fresh_until:+.2f} s"
            if end is not None:
                detail += f", ended {end - first.fresh_until:+.2f} s ({ended[0].get('status')})"
        lines.append(
            f"  rank {rank}: {len(answers)} stale, {first.at - first.fresh_until:.2f}"
            f"-{answers[-1].at - first.fresh_until:.2f} s past fresh_until; {kind}{detail}"
        )
    summary = ", ".join(f"{k}: {v}" for k, v in kinds.most_common())
    return f"other stale answers by cause: {summary or 'none'}\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=200, help="each run's, warm-up included")
    parser.add_argument(
        "--rate",
        type=float,
        default=300,
        help="requests per second, all clients together (0: each asks again at once); the "
        "same in both runs, so that their origin requests compare",
    )
    parser.add_argument(
        "--warm-up",
        type=float,
        default=40,
        help="seconds not counted (at most half the run): the first requests of each key, "
        "and the sketch learning which keys are hottest",
    )
    parser.add_argument(
        "--fresh",
        type=float,
        default=FRESH,
        help="the job's fresh, in seconds (several of them should fit in the run)",
    )
    parser.add_argument("--hot", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--purge-every", type=float, default=3.0)
    parser.add_argument("--origin-ms", type=float, default=20.0)
    parser.add_argument(
        "--trace", action="store_true", help="explain the other stale answers of the hottest keys"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the results only (docs/benchmarks.md kept)"
    )
    options = parser.parse_args()
    results = run_both(
        options.seconds,
        options.hot,
        options.clients,
        options.purge_every,
        options.origin_ms,
        fresh=options.fresh,
        trace=options.trace,
        warm_up=options.warm_up,
        rate=options.rate,
    )
    text = report(results, options.hot, options.purge_every, options.origin_ms)
    if not options.no_write:
        write_section(START, END, HEADING, text)
    sys.stdout.write(text + "\n")
    for name, run in results.items():
        if run.trace:
            sys.stdout.write(f"\n{name}: {explain(run)}\n")
            if split := by_regeneration(run, options.hot):
                sys.stdout.write(f"{name}: {split}\n")


if __name__ == "__main__":
    main()
