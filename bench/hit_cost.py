"""
What one hit costs refresherd in CPU time, with no socket and no load
generator sharing the cores: the service as twistd builds it
(L{refresherd.run.build.build}, the memory store, the configuration of
L{bench.throughput}), one connection of its public site on an in-memory
transport, fed C{GET /v1/jobs/user?name=small} over and over (keep-alive);
against the bare twisted.web Resource of L{bench.bare_server} answering the
same bytes with the same headers on its own channel.  Each round times a
batch of requests on each, alternating; the result is the median time per
request and the median of the per-round ratios.

wrk's own work and the kernel's sockets cost both servers the same, so
L{bench.throughput}'s req/s ratios are closer to 1 than this one: this is
the cost of refresherd's own code on a hit, measured with less noise.

Run from the repository root after C{bash .ci/run}:

    .venv/bin/python -m bench.hit_cost [--rounds 9] [--requests 20000]

It writes its results into docs/benchmarks.md between its markers.  It
also prices the parts of refresherd's own work: each round times the hit as it
is and with one part replaced by its result computed beforehand (the lookup's
answer, the body's bytes) or by nothing (the request's timing, the answer's
count); a part's cost is the median of the per-round differences.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from bench.bare_server import Answer, Fixed, QuietSite
from bench.shared_stores import write_section
from bench.throughput import CONFIG, SMALL_PATH, machine, origin_server, versions
from refresherd.core.refresher import Refresher
from refresherd.http import fastpath
from refresherd.http.answers import Bodies
from refresherd.metrics import Metrics
from refresherd.run.build import build
from refresherd.run.tap import Options

START, END = "<!-- bench:hit_cost:start -->", "<!-- bench:hit_cost:end -->"
HEADING = "The cost of a hit, in process"
REQUEST = b"GET " + SMALL_PATH.encode("ascii") + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
UNSENT = (b"date", b"server", b"content-length")
"""Headers of refresherd's answer that twisted.web sets itself in the bare server too."""


@dataclass
class Channel:
    """One connection of a site, on an in-memory transport."""

    protocol: Any
    transport: StringTransport

    @classmethod
    def of(cls, site: Site) -> Channel:
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return cls(protocol, transport)

    def ask(self) -> bytes:
        """The request once, and what was written back."""
        self.transport.clear()
        self.protocol.dataReceived(REQUEST)
        return bytes(self.transport.value())

    def time(self, requests: int) -> float:
        """Microseconds of CPU time per request, over C{requests} of them."""
        receive, clear = self.protocol.dataReceived, self.transport.clear
        started = time.process_time()
        for _ in range(requests):
            receive(REQUEST)
            clear()
        return (time.process_time() - started) / requests * 1e6


def split(response: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """The status line, the headers and the body of one response."""
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = [(name, value) for name, _, value in (line.partition(b": ") for line in lines)]
    return status, headers, body


async def hit_channel(reactor: Any, directory: Path, origin_url: str) -> Channel:
    """refresherd's public site, started, with the value fetched: a channel where it hits."""
    config = directory / "refresherd.toml"
    config.write_text(CONFIG.format(origin=origin_url))
    options = Options()
    options.parseOptions(
        ["--config", str(config), "--store", "memory://", "--listen", "tcp:0:interface=127.0.0.1"]
    )
    service: Any = build(options, reactor, {})
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    channel = Channel.of(service.sites[0])
    for _ in range(100):  # The first request is the miss that fetches.
        status, headers, _ = split(channel.ask())
        if status.endswith(b" 200 OK") and dict(headers).get(b"Cache-Status", b"").startswith(
            b"refresherd; hit"
        ):
            return channel
        await task.deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError(f"no hit at {SMALL_PATH}")


def bare_channel(reference: bytes) -> Channel:
    """The bare Resource answering the body and headers of C{reference}."""
    _, headers, body = split(reference)
    kept = [(name, value) for name, value in headers if name.lower() not in UNSENT]
    site = QuietSite(Fixed({SMALL_PATH.partition("?")[0].encode("ascii"): Answer(body, kept)}))
    channel = Channel.of(site)
    if split(channel.ask())[2] != body:
        raise RuntimeError("the bare server does not answer refresherd's body")
    return channel


@dataclass
class Result:
    bare: list[float]
    refresherd: list[float]

    @property
    def ratios(self) -> list[float]:
        return [b / r for b, r in zip(self.bare, self.refresherd, strict=True)]


def measure(bare: Channel, refresherd: Channel, rounds: int, requests: int) -> Result:
    """A warm-up of each, then C{rounds} rounds of a batch on each, the first alternating."""
    bare.time(requests // 4)
    refresherd.time(requests // 4)
    result = Result([], [])
    for n in range(rounds):
        pair = [(bare, result.bare), (refresherd, result.refresherd)]
        for channel, times in pair if n % 2 == 0 else pair[::-1]:
            times.append(channel.time(requests))
        print(
            f"bench: round {n + 1}/{rounds}: bare {result.bare[-1]:.1f} µs, "
            f"refresherd {result.refresherd[-1]:.1f} µs",
            file=sys.stderr,
            flush=True,
        )
    return result


Part = tuple[str, Any, str, Any]
"""A part of a hit: what it is, and the attribute of a class or module that stands in for it."""


def parts(site: Any) -> list[Part]:
    """The parts of refresherd's own work on the hit C{site} answers, each made free."""
    values = site.quick.values
    query = SMALL_PATH.partition("?")[2].encode("ascii")
    answer = values.refresher.lookup(values.targets.target("user", query))
    body = values.bodies.body(answer, 0.0)
    return [
        (
            "the lookup: store read, purge marks, policy decision",
            Refresher,
            "lookup",
            lambda self, target: answer,
        ),
        ("timing the request (metrics, access log)", fastpath, "observe", lambda *a: None),
        ("counting the answer", Metrics, "count_request", lambda *a: None),
        ("the answer's JSON around the kept head", Bodies, "body", lambda *a: body),
    ]


def price(channel: Channel, part: Part, rounds: int, requests: int) -> list[float]:
    """Per round, the µs per hit of C{channel} as it is less those with C{part} made free."""
    _, owner, name, stand_in = part
    original = owner.__dict__[name]
    differences = []
    for _ in range(rounds):
        whole = channel.time(requests)
        setattr(owner, name, stand_in)
        try:
            differences.append(whole - channel.time(requests))
        finally:
            setattr(owner, name, original)
    return differences


def parts_report(costs: dict[str, list[float]]) -> str:
    lines = ["| part of refresherd's own work | µs per hit |", "|---|---|"]
    lines += [f"| {name} | {statistics.median(c):.1f} |" for name, c in costs.items()]
    return "\n".join(lines)


def report(result: Result, args: argparse.Namespace) -> str:
    ratios = result.ratios
    bare, refresherd = statistics.median(result.bare), statistics.median(result.refresherd)
    return "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {versions()}; "
            f"`python -m bench.hit_cost --rounds {args.rounds} --requests {args.requests}`. "
            f"CPU time of this process per request, medians of {args.rounds} "
            "alternating rounds; the ratio is the median of the per-round ratios.",
            "",
            "| server | µs per hit |",
            "|---|---|",
            f"| bare twisted.web Resource | {bare:.1f} |",
            f"| refresherd, memory store | {refresherd:.1f} |",
            "",
            "| ratio | median | per round |",
            "|---|---|---|",
            f"| bare / refresherd | {statistics.median(ratios):.2f} | "
            f"{min(ratios):.2f} to {max(ratios):.2f} |",
        ]
    )


async def run(reactor: Any, args: argparse.Namespace) -> None:
    with origin_server() as origin, tempfile.TemporaryDirectory(prefix="rfd-cost-") as tmp:
        origin.set("/users/small", body=b'{"name": "small", "tweets": ["hello"]}')
        refresherd = await hit_channel(reactor, Path(tmp), origin.url)
        try:
            bare = bare_channel(refresherd.ask())
            result = measure(bare, refresherd, args.rounds, args.requests)
            costs = {
                part[0]: price(refresherd, part, args.rounds, args.requests // 4)
                for part in parts(refresherd.protocol.factory)
            }
            bare.protocol.connectionLost(Failure(ConnectionDone()))
        finally:  # The in-memory transport never tells it; the service's stop waits for it.
            refresherd.protocol.connectionLost(Failure(ConnectionDone()))
    text = report(result, args) + "\n\n" + parts_report(costs)
    print(text)
    if args.write:
        write_section(START, END, HEADING, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
