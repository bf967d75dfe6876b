"""
Hit throughput of refresherd against bare servers, in one run on this machine:
wrk against each target in turn, the targets alternating round by round;
median req/s and p99 per target, and the ratios the performance targets name
(each the median of the ratios of the rounds, with their range).

- Small JSON hit, C{GET /v1/jobs/user?name=small}, wrk with 32 connections:
  refresherd on the memory store and on Redis (one process each), and with
  C{--workers 1} and C{--workers 2} on Redis; against a bare twisted.web
  Resource answering the same bytes with the same headers (captured from
  refresherd's hit answer at start), a bare Klein route doing the same, and
  two bare Klein processes sharing one listening socket.
- 10 MiB value, C{GET /v1/jobs/user/raw?name=large}, wrk with 4 connections:
  refresherd on Redis and on memcached (started with its default 1 MiB item
  limit, so the value is chunked), against the bare twisted.web Resource
  answering the same 10 MiB body.

Every server is a process of its own (L{bench.bare_server} for the bare
ones).  The bare Klein processes accept on a listening socket that this
process binds and hands down (C{pass_fds}), which is what refresherd's
C{--workers} does (its parent binds, every worker adopts the socket), so that
C{bare Klein x2 / x1} is the scaling that refresherd's C{--workers 2 / 1} is
measured against.

Run from the repository root after C{bash .ci/run} (for the venv) with wrk
installed (C{apt-get install wrk}):

    .venv/bin/python -m bench.throughput [--rounds 5] [--seconds 5] [--quick]

C{--quick} is 2 rounds of 2 s, to check that everything works (its numbers
are too noisy to compare).  The default takes about 5 minutes.  It writes its
results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from bench.shared_stores import write_section
from tests.harness import LISTENING, TWISTD, Origin, start_origin
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer

START, END = "<!-- bench:throughput:start -->", "<!-- bench:throughput:end -->"
HEADING = "Hit throughput against bare servers"
ROOT = Path(__file__).resolve().parent.parent

LARGE = 10 * 1024 * 1024
SMALL_PATH = "/v1/jobs/user?name=small"
LARGE_PATH = "/v1/jobs/user/raw?name=large"
SMALL_CONNECTIONS = 32
LARGE_CONNECTIONS = 4
WARM_UP_SECONDS = 1
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
KEPT_HEADERS = (
    "content-type",
    "cache-status",
    "age",
    "etag",
    "x-content-type-options",
    "content-security-policy",
)
"""The headers of refresherd's answer that the bare servers send too (the others
are twisted.web's own: Server, Date, and Content-Length or Transfer-Encoding)."""

CONFIG = """
[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
stale = "1h"
wait_timeout = "30s"
timeout = "30s"
early_refresh = 0
"""

SERVING = re.compile(r"bare: serving on ([\d.]+):(\d+)")
WORKER_SERVING = re.compile(r"refresherd: worker \d+ \(pid \d+\) serving the public API")


# -- processes -----------------------------------------------------------------


@dataclass
class Process:
    """A server process of the benchmark and what it printed (a thread reads it)."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, ready: Callable[[str], bool], timeout: float = START_TIMEOUT) -> str:
        """Wait until C{ready} holds of the output; the output, or an error if it exits first."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                text = "".join(self.lines)
                if ready(text):
                    return text
                left = deadline - time.monotonic()
                if self.popen.poll() is not None or left <= 0:
                    raise RuntimeError(f"{self.name} did not start:\n{text}")
                self.changed.wait(min(left, 0.1))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after L{STOP_TIMEOUT}."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"bench: {self.name} did not stop; killing it", file=sys.stderr)
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdin is not None:
            self.popen.stdin.close()


def spawn(
    stack: ExitStack,
    name: str,
    argv: Sequence[str],
    pass_fds: Sequence[int] = (),
    lifeline: bool = False,
    cwd: Path | None = None,
) -> Process:
    """Start C{argv}, stopped when C{stack} closes.  C{lifeline}: a pipe as its stdin."""
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if lifeline else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        pass_fds=tuple(pass_fds),
        cwd=cwd,
    )
    process = Process(name, popen)
    stack.callback(process.stop)
    return process


@dataclass
class Target:
    """Something wrk measures: a URL and how many connections it gets."""

    name: str
    url: str
    connections: int
    processes: str
    """What serves it, for the table."""


def start_refresherd(
    stack: ExitStack, name: str, config: Path, store: str, workers: int | None = None
) -> str:
    """
    C{twistd -n refresherd} on free ports (C{--workers N} if given); once it
    serves (every worker too), the URL of its public API.
    """
    return start_refresherd_process(stack, name, config, store, workers)[1]


def start_refresherd_process(
    stack: ExitStack,
    name: str,
    config: Path,
    store: str,
    workers: int | None = None,
    twistd: Sequence[str] = (),
) -> tuple[Process, str]:
    """L{start_refresherd}, and the process; C{twistd}: options of twistd's own (a reactor)."""
    argv = [TWISTD, *twistd, "-n", "--pidfile=", "refresherd", "--config", str(config)]
    argv += ["--listen", "tcp:0:interface=127.0.0.1:backlog=512"]
    argv += ["--admin-listen", "tcp:0:interface=127.0.0.1", "--store", store]
    if workers is not None:
        argv += ["--workers", str(workers)]
    process = spawn(stack, name, argv, cwd=config.parent)

    def ready(text: str) -> bool:
        listening = {m.group(1) for m in LISTENING.finditer(text)}
        # --workers 1 is the single process (no parent); more: wait for every worker.
        expected = workers if workers is not None and workers > 1 else 0
        return listening == {"public", "admin"} and len(WORKER_SERVING.findall(text)) >= expected

    text = process.wait_for(ready)
    port = next(m.group(3) for m in LISTENING.finditer(text) if m.group(1) == "public")
    return process, f"http://127.0.0.1:{port}"


def serving(text: str) -> bool:
    """Whether a bare server's output says that it serves."""
    return SERVING.search(text) is not None


def start_bare(stack: ExitStack, name: str, kind: str, spec: Path, count: int | None = None) -> str:
    """
    A bare server (L{bench.bare_server}) and the base URL where it serves.
    C{count=None}: one process listening itself; else C{count} processes
    accepting on one socket bound here and handed down to each.
    """
    argv = [sys.executable, "-m", "bench.bare_server", kind, "--spec", str(spec)]
    if count is None:
        process = spawn(stack, name, [*argv, "--port", "0"], lifeline=True, cwd=ROOT)
        match = SERVING.search(process.wait_for(serving))
        assert match is not None
        return f"http://127.0.0.1:{match.group(2)}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(512)
        listening.setblocking(False)  # As refresherd's parent leaves its socket for the workers.
        fd = listening.fileno()
        processes = [
            spawn(stack, f"{name} #{n}", [*argv, "--fd", str(fd)], [fd], lifeline=True, cwd=ROOT)
            for n in range(1, count + 1)
        ]
        port = listening.getsockname()[1]
    # Our copy is closed (the children have theirs): only they accept on the socket.
    for process in processes:
        process.wait_for(serving)
    return f"http://127.0.0.1:{port}"


# -- what is measured ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    rate: float
    """Requests per second."""
    p99: float
    """Milliseconds."""
    stolen: float = 0.0
    """The share of the machine's CPU time that its hypervisor took during the run."""


def cpu_times() -> tuple[int, int]:
    """The machine's stolen and total CPU time so far, in ticks (0, 0 where unknown)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(f) for f in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return fields[7], sum(fields)


def stolen_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def wrk(url: str, seconds: int, connections: int) -> Sample:
    """One wrk run (1 thread); an error if any answer was not a 2xx or any socket failed."""
    before = cpu_times()
    out = subprocess.run(
        ["wrk", "--latency", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Socket errors: (.*)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or non_2xx:
        raise RuntimeError(f"wrk {url}: failed requests:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if rate is None or p99 is None:
        raise RuntimeError(f"wrk {url}: unexpected output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    stolen = stolen_share(before, cpu_times())
    return Sample(float(rate.group(1)), float(p99.group(1)) * scale, stolen)


@dataclass
class Result:
    target: Target
    samples: list[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples)

    @property
    def p99(self) -> float:
        return statistics.median(s.p99 for s in self.samples)


def measure(targets: list[Target], rounds: int, seconds: int) -> dict[str, Result]:
    """
    A warm-up run of each target, then C{rounds} rounds of one run of each,
    alternating; each round starts one target further on, so that no target
    always follows the same one.
    """
    results = {target.name: Result(target) for target in targets}
    for target in targets:
        wrk(target.url, WARM_UP_SECONDS, target.connections)
    for n in range(rounds):
        order = targets[n % len(targets) :] + targets[: n % len(targets)]
        for target in order:
            sample = wrk(target.url, seconds, target.connections)
            results[target.name].samples.append(sample)
            print(
                f"bench: round {n + 1}/{rounds} {target.name}: {sample.rate:.0f} req/s, "
                f"p99 {sample.p99:.2f} ms, {100 * sample.stolen:.0f}% stolen",
                file=sys.stderr,
                flush=True,
            )
    return results


# -- setting up ------------------------------------------------------------------


def hit(url: str, expect: bytes | None = None) -> httpx.Response:
    """GET C{url} until it answers a hit (the first request may be the miss that fetches)."""
    for _ in range(2):
        response = httpx.get(url, timeout=60)
        response.raise_for_status()
        if response.headers.get("cache-status", "").startswith("refresherd; hit"):
            break
    else:
        raise RuntimeError(f"{url}: no hit: {response.headers}")
    if expect is not None and response.content != expect:
        raise RuntimeError(f"{url}: not the expected body")
    return response


def check_bare(url: str, expect: httpx.Response) -> None:
    """A bare server answers the bytes and the kept headers of refresherd's answer."""
    response = httpx.get(url, timeout=60)
    response.raise_for_status()
    if response.content != expect.content:
        raise RuntimeError(f"{url}: not the body of refresherd's answer")
    for name in KEPT_HEADERS:
        if response.headers.get(name) != expect.headers.get(name):
            raise RuntimeError(f"{url}: header {name} differs from refresherd's answer")


def write_spec(directory: Path, answers: dict[str, httpx.Response]) -> Path:
    """The spec file of the bare servers: each answer's body and kept headers, by path."""
    spec = {}
    for n, (path, response) in enumerate(answers.items()):
        body = directory / f"body-{n}"
        body.write_bytes(response.content)
        headers = [
            [name, response.headers[name]] for name in KEPT_HEADERS if name in response.headers
        ]
        spec[path.split("?", 1)[0]] = {"body": str(body), "headers": headers}
    spec_file = directory / "bare.json"
    spec_file.write_text(json.dumps(spec))
    return spec_file


def chunk_count(memcached: MemcachedServer) -> int:
    """The number of chunks of the 10 MiB value in memcached, from its manifest."""
    manifest = memcached.get(b"rfd:user:v1:name=large") or b""
    fields = manifest.split(b"\n", 1)[0].split()
    if fields[:2] not in ([b"manifest", b"1"], [b"manifest", b"2"]):
        raise RuntimeError(f"the 10 MiB value is not chunked in memcached: {manifest[:80]!r}")
    return int(fields[3])


def set_up(stack: ExitStack, directory: Path, origin: Origin) -> list[Target]:
    """Start every server; the targets, in the order each round measures them."""
    small = b'{"name": "small", "tweets": ["hello"]}'
    large = os.urandom(LARGE).replace(b"{n}", b"{m}")  # The origin would fill in {n}.
    origin.set("/users/small", body=small)
    origin.set("/users/large", body=large, content_type="application/octet-stream")
    config = directory / "refresherd.toml"
    config.write_text(CONFIG.format(origin=origin.url))

    redis = RedisServer()
    stack.callback(redis.cleanup)
    redis.start()
    memcached = MemcachedServer()  # memcached's default item limit, 1 MiB: 10 MiB in chunks.
    stack.callback(memcached.cleanup)
    memcached.start()

    memory = start_refresherd(stack, "refresherd memory", config, "memory://")
    on_redis = start_refresherd(stack, "refresherd redis", config, redis.url())
    workers = {
        n: start_refresherd(stack, f"refresherd --workers {n}", config, redis.url(), n)
        for n in (1, 2)
    }
    on_memcached = start_refresherd(stack, "refresherd memcached", config, memcached.url())

    answers = {SMALL_PATH: hit(memory + SMALL_PATH), LARGE_PATH: hit(on_redis + LARGE_PATH, large)}
    for url in (on_redis, *workers.values()):
        hit(url + SMALL_PATH)
    hit(on_memcached + LARGE_PATH, large)
    chunks = chunk_count(memcached)

    spec = write_spec(directory, answers)
    bare_web = start_bare(stack, "bare twisted.web", "web", spec)
    bare_klein = {n: start_bare(stack, f"bare Klein x{n}", "klein", spec, n) for n in (1, 2)}
    check_bare(bare_web + SMALL_PATH, answers[SMALL_PATH])
    check_bare(bare_web + LARGE_PATH, answers[LARGE_PATH])
    for url in bare_klein.values():
        check_bare(url + SMALL_PATH, answers[SMALL_PATH])

    s, lg = SMALL_CONNECTIONS, LARGE_CONNECTIONS
    return [
        Target("bare-web", bare_web + SMALL_PATH, s, "1 process"),
        Target("bare-klein-1", bare_klein[1] + SMALL_PATH, s, "1 process, inherited socket"),
        Target("bare-klein-2", bare_klein[2] + SMALL_PATH, s, "2 processes, one socket"),
        Target("memory", memory + SMALL_PATH, s, "1 process"),
        Target("redis", on_redis + SMALL_PATH, s, "1 process"),
        Target("workers-1", workers[1] + SMALL_PATH, s, "1 process (no parent)"),
        Target("workers-2", workers[2] + SMALL_PATH, s, "parent + 2 workers, one socket"),
        Target("bare-web-10MiB", bare_web + LARGE_PATH, lg, "1 process"),
        Target("redis-10MiB", on_redis + LARGE_PATH, lg, "1 process"),
        Target("memcached-10MiB", on_memcached + LARGE_PATH, lg, f"1 process; {chunks} chunks"),
    ]


# -- the report ----------------------------------------------------------------

LABELS = {
    "bare-web": "bare twisted.web Resource",
    "bare-klein-1": "bare Klein route",
    "bare-klein-2": "bare Klein route",
    "memory": "refresherd, memory store",
    "redis": "refresherd, Redis",
    "workers-1": "refresherd `--workers 1`, Redis",
    "workers-2": "refresherd `--workers 2`, Redis",
    "bare-web-10MiB": "bare twisted.web Resource",
    "redis-10MiB": "refresherd, Redis",
    "memcached-10MiB": "refresherd, memcached (1 MiB items)",
}


@dataclass(frozen=True)
class Ratio:
    name: str
    rounds: list[float]
    """The ratio in each round: of runs made within seconds of each other."""
    target: float | None

    @property
    def value(self) -> float:
        return statistics.median(self.rounds)


def per_round(results: dict[str, Result], top: str, bottom: str) -> list[float]:
    """C{top}'s rate over C{bottom}'s, round by round."""
    return [
        a.rate / b.rate for a, b in zip(results[top].samples, results[bottom].samples, strict=True)
    ]


LARGE_BARE = "bare-web-10MiB"


def ratios(results: dict[str, Result]) -> list[Ratio]:
    """
    The ratios that the performance targets name, and a few for context: each
    the median of its per-round ratios (the machine's speed drifts from round
    to round more than the targets differ within one).
    """

    def of(top: str, bottom: str) -> list[float]:
        return per_round(results, top, bottom)

    scaling, bare_scaling = of("workers-2", "workers-1"), of("bare-klein-2", "bare-klein-1")
    relative = [a / b for a, b in zip(scaling, bare_scaling, strict=True)]
    return [
        Ratio("bare Klein / bare twisted.web", of("bare-klein-1", "bare-web"), None),
        Ratio("memory / bare twisted.web", of("memory", "bare-web"), 0.8),
        Ratio("Redis / bare twisted.web", of("redis", "bare-web"), 0.6),
        Ratio("`--workers 2` / `--workers 1`", scaling, None),
        Ratio("bare Klein x2 / x1", bare_scaling, None),
        Ratio("workers scaling / bare Klein scaling", relative, 0.9),
        Ratio("10 MiB: Redis / bare twisted.web", of("redis-10MiB", LARGE_BARE), None),
        Ratio("10 MiB: memcached / bare twisted.web", of("memcached-10MiB", LARGE_BARE), None),
    ]


def command_version(argv: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True).stdout
    except OSError:
        return "?"
    match = re.search(pattern, out)
    return match.group(1) if match else "?"


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                "?",
            )
    except OSError:
        pass
    return (
        f"{platform.machine()} ({cpu}), {len(os.sched_getaffinity(0))} cores, "
        f"Linux {platform.release()}"
    )


PACKAGES = ("refresherd", "Twisted", "klein", "txredisapi", "hiredis")


def versions() -> str:
    packages = ", ".join(f"{name} {package_version(name)}" for name in PACKAGES)
    redis = command_version(["redis-server", "--version"], r"v=(\S+)")
    memcached = command_version(["memcached", "-V"], r"memcached (\S+)")
    wrk_version = command_version(["wrk", "--version"], r"wrk (\S+)")
    return (
        f"Python {platform.python_version()}, {packages}, Redis {redis}, memcached {memcached}, "
        f"wrk {wrk_version}"
    )


def stolen_note(results: dict[str, Result]) -> str:
    """How much CPU time the hypervisor took during the runs: how noisy they were."""
    shares = [sample.stolen for result in results.values() for sample in result.samples]
    return (
        f"The hypervisor took {100 * statistics.median(shares):.0f}% of the CPU time "
        f"during the median run, {100 * max(shares):.0f}% during the worst."
    )


def report(
    results: dict[str, Result], args: argparse.Namespace, elapsed: float, load: float
) -> str:
    options = "--quick" if args.quick else f"--rounds {args.rounds} --seconds {args.seconds}"
    command = f"python -m bench.throughput {options}"
    quick = (
        "**Quick run** (`--quick`: too few and too short rounds to compare; for checking "
        "that the benchmark works). "
        if args.quick
        else ""
    )
    lines = [
        f"{quick}Measured {time.strftime('%Y-%m-%d')} on {machine()} (load average "
        f"{load:.2f} at start); {versions()}; `{command}` ({elapsed / 60:.1f} min). "
        f"wrk with 1 thread, {SMALL_CONNECTIONS} "
        f"connections on the small hit and {LARGE_CONNECTIONS} on the 10 MiB value, "
        f"{args.seconds} s per run after a {WARM_UP_SECONDS} s warm-up; medians of "
        f"{args.rounds} alternating rounds; each ratio the median of its per-round "
        f"ratios, with their range. {stolen_note(results)}",
        "",
        "| value | target | processes | req/s | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        value = "10 MiB raw" if name.endswith("10MiB") else "small JSON"
        lines.append(
            f"| {value} | {LABELS[name]} | {result.target.processes} | {result.rate:.0f} | "
            f"{result.p99:.2f} |"
        )
    lines += ["", "| ratio | median | per round | target |", "|---|---|---|---|"]
    for ratio in ratios(results):
        if ratio.target is None:
            goal = ""
        else:
            met = "met" if ratio.value >= ratio.target else "**not met**"
            goal = f"at least {ratio.target} ({met})"
        spread = f"{min(ratio.rounds):.2f} to {max(ratio.rounds):.2f}"
        lines.append(f"| {ratio.name} | {ratio.value:.2f} | {spread} | {goal} |")
    return "\n".join(lines)


# -- running it ------------------------------------------------------------------


def _terminated(number: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + number)


@contextmanager
def origin_server() -> Iterator[Origin]:
    origin = start_origin()
    try:
        yield origin
    finally:
        origin.server.shutdown()
        origin.server.server_close()


def run(args: argparse.Namespace, out: IO[str]) -> None:
    started, load = time.monotonic(), os.getloadavg()[0]
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rfd-bench-")))
        origin = stack.enter_context(origin_server())
        targets = set_up(stack, directory, origin)
        results = measure(targets, args.rounds, args.seconds)
    text = report(results, args, time.monotonic() - started, load)
    print(text, file=out)
    write_section(START, END, HEADING, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s: a check")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 2
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install wrk)")
    # SIGTERM unwinds like Ctrl-C, so that every process started is stopped.
    signal.signal(signal.SIGTERM, _terminated)
    run(args, sys.stdout)


if __name__ == "__main__":
    main()
