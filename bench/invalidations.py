"""
Benchmark of how changes reach refresherd processes on one Redis: the
broadcast channel (every process subscribed to C{{ns}:changes}, as refresherd
0.1 did) against client-side caching (C{CLIENT TRACKING}: each process is
told only of the keys it read), in one run.

For each N of C{--processes} and each way, N small processes each run a
L{RedisStore} with a near cache, as refresherd does, and read their share of
C{--keys} keys: each key is read by two of them (key i by processes i and
i + 1, modulo N).  Process 0 then writes every key once per round, one write
at a time (unfenced puts, the script a PUT runs: as fetches ending at
different moments write, each write is then delivered on its own rather than
in a batch with others), and between rounds every process reads its keys
again (through its near cache: what a change dropped is read from Redis, which
tracks it again).  Per write, from each round's write phase:

- messages: change messages the processes received (their stores' counters);
- Redis CPU: C{used_cpu_user + used_cpu_sys} of C{INFO cpu}, in microseconds;
- bytes out: C{total_net_output_bytes} of C{INFO stats}, every reply included.

Run from the repository root after C{bash .ci/run} (for the venv):

    .venv/bin/python -m bench.invalidations [--rounds 7] [--keys 1024] [--processes 2,8,32]

It writes its results into docs/benchmarks.md between its markers.  A process
of the benchmark is this same module, with C{--process}.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

import attrs

from bench.shared_stores import write_section
from bench.throughput import machine, versions
from tests.redis_server import RedisServer

START, END = "<!-- bench:invalidations:start -->", "<!-- bench:invalidations:end -->"
NAMESPACE = "rfdbench"
WAYS = ("broadcast", "tracking")
SETTLE = 0.3
"""Seconds left after a round's writes for their messages to be delivered."""


def key(i: int) -> str:
    return f"{NAMESPACE}:item:v1:id={i}"


def keys_of(process: int, processes: int, keys: int) -> list[str]:
    """The keys process C{process} reads: each key is read by two processes (one if N is 1)."""
    return [key(i) for i in range(keys) if process in {i % processes, (i + 1) % processes}]


# -- one process -------------------------------------------------------------


def run_process(port: int, way: str, process: int, processes: int, keys: int) -> None:
    """
    A process of the benchmark: a store with a near cache, answering lines on
    standard input (C{read}, C{write}, C{count}) with one line each.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.protocols.basic import LineReceiver

    from refresherd.stores.near import NearCache
    from refresherd.stores.redis import RedisStore
    from tests.store_contract import sample_entry

    store = RedisStore(reactor, "127.0.0.1", port, namespace=NAMESPACE, tracking=way == "tracking")
    near = NearCache(store, reactor)
    mine = keys_of(process, processes, keys)
    everything = [key(i) for i in range(keys)]
    entry = sample_entry(b'{"n": 1}')

    async def write() -> None:
        # One at a time, as fetches that end at different moments write.
        for k in everything:
            await near.put(k, entry, 3600)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command = line.decode().strip()
            done: Deferred[Any]
            if command == "read":
                done = gatherResults([near.read(k, []) for k in mine])
            elif command == "write":
                done = Deferred.fromCoroutine(write())
            elif command == "count":
                self.sendLine(str(store.messages).encode())
                return
            else:
                raise ValueError(command)
            done.addCallback(lambda _: self.sendLine(b"done"))

        def connectionLost(self, reason: Any = None) -> None:
            near.stopService().addBoth(lambda _: reactor.stop())

    def started(_: object) -> Deferred[Any]:
        return gatherResults([near.read(k, []) for k in mine])

    near.startService()
    ready = store.ready().addCallback(started)
    ready.addCallback(lambda _: stdio.StandardIO(Commands()))
    ready.addCallback(lambda _: sys.stdout.buffer.write(b"ready\n") and sys.stdout.flush())
    reactor.run()


# -- the parent --------------------------------------------------------------


@attrs.define
class Process:
    popen: subprocess.Popen[bytes]

    def ask(self, command: str) -> str:
        stdin, stdout = self.popen.stdin, self.popen.stdout
        assert stdin is not None and stdout is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        return answer(stdout)


def answer(stdout: IO[bytes]) -> str:
    line = stdout.readline()
    if not line:
        raise RuntimeError("a benchmark process exited")
    return line.decode().strip()


@contextmanager
def processes(server: RedisServer, way: str, n: int, keys: int) -> Iterator[list[Process]]:
    started = [
        Process(
            subprocess.Popen(
                [sys.executable, "-m", "bench.invalidations", "--process"]
                + [str(server.port), way, str(p), str(n), str(keys)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        )
        for p in range(n)
    ]
    try:
        for process in started:
            assert process.popen.stdout is not None
            if answer(process.popen.stdout) != "ready":
                raise RuntimeError("a benchmark process did not start")
        yield started
    finally:
        for process in started:
            assert process.popen.stdin is not None
            process.popen.stdin.close()
        for process in started:
            process.popen.wait(10)


def info(server: RedisServer, section: str, field: str) -> float:
    text = server.command("INFO", section)
    assert isinstance(text, bytes)
    for line in text.decode().splitlines():
        if line.startswith(field + ":"):
            return float(line.split(":", 1)[1])
    raise KeyError(field)


def cpu(server: RedisServer) -> float:
    return info(server, "cpu", "used_cpu_user") + info(server, "cpu", "used_cpu_sys")


@attrs.frozen
class Round:
    """Per write, in one round: messages received, Redis CPU (µs), bytes Redis sent."""

    messages: float
    cpu_us: float
    bytes_out: float


def measure(server: RedisServer, way: str, n: int, keys: int, rounds: int) -> list[Round]:
    """The rounds of one way with N processes."""
    results = []
    with processes(server, way, n, keys) as running:
        for _ in range(rounds):
            for process in running:
                assert process.ask("read") == "done"
            time.sleep(SETTLE)
            heard = sum(int(p.ask("count")) for p in running)
            cpu_before = cpu(server)
            out_before = info(server, "stats", "total_net_output_bytes")
            assert running[0].ask("write") == "done"
            time.sleep(SETTLE)
            cpu_after = cpu(server)
            out_after = info(server, "stats", "total_net_output_bytes")
            heard = sum(int(p.ask("count")) for p in running) - heard
            results.append(
                Round(
                    messages=heard / keys,
                    cpu_us=(cpu_after - cpu_before) * 1e6 / keys,
                    bytes_out=(out_after - out_before) / keys,
                )
            )
    return results


Results = dict[int, dict[str, list[Round]]]


def run(processes_: Sequence[int], keys: int, rounds: int) -> Results:
    results: Results = {}
    with RedisServer() as server:
        for n in processes_:
            results[n] = {way: measure(server, way, n, keys, rounds) for way in WAYS}
    return results


def report(results: Results, args: argparse.Namespace) -> str:
    counts = ",".join(str(n) for n in results)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {versions()}; "
        f"`python -m bench.invalidations --rounds {args.rounds} --keys {args.keys} "
        f"--processes {counts}`.",
        "",
        f"Per write, median of {args.rounds} rounds of {args.keys} writes (each key read by "
        "two processes; process 0 writes):",
        "",
        "| processes | way | messages | Redis CPU µs | bytes out | CPU against broadcast |",
        "|---|---|---|---|---|---|",
    ]
    for n, by_way in results.items():
        medians = {
            way: (
                statistics.median(r.messages for r in rows),
                statistics.median(r.cpu_us for r in rows),
                statistics.median(r.bytes_out for r in rows),
            )
            for way, rows in by_way.items()
        }
        for way, (messages, cpu_us, bytes_out) in medians.items():
            ratio = cpu_us / medians["broadcast"][1] if medians["broadcast"][1] else float("nan")
            lines.append(
                f"| {n} | {way} | {messages:.2f} | {cpu_us:.1f} | {bytes_out:.0f} | {ratio:.2f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keys", type=int, default=1024)
    parser.add_argument("--processes", default="2,8,32")
    parser.add_argument("--process", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.process:
        port, way, process, n, keys = args.process
        run_process(int(port), way, int(process), int(n), int(keys))
        return
    counts = [int(n) for n in args.processes.split(",")]
    text = report(run(counts, args.keys, args.rounds), args)
    print(text)
    write_section(START, END, "Invalidations", text)


if __name__ == "__main__":
    main()
