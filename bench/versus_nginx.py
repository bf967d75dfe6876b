"""
Hit throughput of refresherd against nginx C{proxy_cache} answering the same
bytes, against the ceiling of a plain Twisted protocol, with the access log,
and the latency of a hit at a fixed rate, in one run on this machine.

refresherd (memory store, one process) answers a hit of a 200-byte JSON value
on the raw endpoint (C{/v1/jobs/user/raw?name=hot}: the value as stored) and
on the JSON endpoint (C{/v1/jobs/user?name=hot}: the value in its JSON
object); nginx with one worker (L{bench/nginx-hits.conf.template}) sits in
front of it with C{proxy_cache}, so that once warm it answers the same bodies
and refresherd's headers from its cache without asking refresherd.  Measured
alongside, in the same rounds:

- the ceiling: a plain Twisted L{Protocol} (L{bench.bare_server} C{protocol})
  answering every request head with the bytes of refresherd's raw answer,
  captured whole (status line, headers, body), parsing nothing else; and
  the same protocol read and written as refresherd's public listener does
  (L{bench.bare_server} C{fast}): what Twisted allows with refresherd's I/O;
- two more refresherd processes with C{[server] access_log = true}, one
  logging text, one JSON (C{--log-format json}), both to a pipe a thread
  drains (as under systemd);
- refresherd with C{--workers 2} on a real redis-server, and a second nginx
  with two workers in front of it, on the raw endpoint.

wrk (one thread, 50 connections) measures each in turn, round after round;
each ratio is the median of the ratios measured within a round, with their
range.  Then, at a fixed rate (half of refresherd's median raw req/s of the
rounds, or C{--rate}), wrk paced by a Lua C{delay()} measures the latency of a raw hit of
refresherd and of nginx with one worker, in turn, for as many rounds.

The machine may be shared, and req/s then say as much about the neighbours
as about the servers; so each run also counts the CPU time the server's
processes spent (C{/proc/PID/stat}: refresherd's process, or its parent and
workers and redis-server; nginx's workers; the ceiling's process), and the
requests answered per CPU second ("per core") are compared too, beside how
many cores they kept busy: under one for a single process, the limit was
elsewhere (wrk's one thread, or the neighbours).

Run from the repository root after C{bash .ci/run} (for the venv) with wrk,
nginx and redis-server installed (C{apt-get install wrk nginx-light
redis-server}):

    .venv/bin/python -m bench.versus_nginx [--rounds 5] [--seconds 5] [--rate N]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import attrs
import httpx

from bench.peers_servers import nginx, version
from bench.shared_stores import write_section, wrk_latencies
from bench.throughput import ROOT, SERVING, cpu_times, spawn, stolen_share
from tests.harness import Service, start_origin, start_service, wait_until
from tests.redis_server import RedisServer

START, END = "<!-- bench:versus_nginx:start -->", "<!-- bench:versus_nginx:end -->"
HEADING = "Hits against nginx, and the access log"
TEMPLATE = Path(__file__).with_name("nginx-hits.conf.template")
CONNECTIONS = 50
VALUE = b'{"name": "hot", "bio": "' + b"x" * 174 + b'"}'
assert len(VALUE) == 200
WORKER_SERVING = re.compile(r"refresherd: worker \d+ \(pid (\d+)\) serving the public API")

CONFIG = """
[server]
access_log = {access_log}

[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
stale = "1h"
early_refresh = 0
"""

PATHS = {"raw": "/v1/jobs/user/raw?name=hot", "JSON": "/v1/jobs/user?name=hot"}
CEILING = "ceiling (Twisted Protocol)"
FAST_CEILING = "ceiling, read and written as refresherd does"
TEXT_LOG, JSON_LOG = "refresherd JSON, access log as text", "refresherd JSON, access log as JSON"
WORKERS, NGINX_WORKERS = "refresherd --workers 2 on Redis, raw", "nginx 2 workers, raw"
PACED = ("refresherd raw", "nginx raw")
"""The targets whose latency is measured at a fixed rate."""

RATIOS = (
    ("refresherd / nginx, raw", "refresherd raw", "nginx raw", "at least 0.5"),
    ("refresherd / nginx, JSON", "refresherd JSON", "nginx JSON", "at least 0.5"),
    ("ceiling / nginx, raw", CEILING, "nginx raw", ""),
    ("refresherd / ceiling, raw", "refresherd raw", CEILING, ""),
    ("ceiling read and written as refresherd does / nginx, raw", FAST_CEILING, "nginx raw", ""),
    ("refresherd / that ceiling, raw", "refresherd raw", FAST_CEILING, ""),
    ("refresherd --workers 2 / nginx 2 workers, raw", WORKERS, NGINX_WORKERS, "at least 0.5"),
    ("access log as text on / off, JSON", TEXT_LOG, "refresherd JSON", "at least 0.85"),
    ("access log as JSON on / off, JSON", JSON_LOG, "refresherd JSON", "at least 0.85"),
)
"""Each ratio of the report: its label, its two targets, its goal."""

PACING = """\
-- {name}: before each request of a connection, a random delay (exponential, mean
-- {mean} ms), so that the connections' requests together arrive about as a Poisson
-- stream of {rate} a second.
-- wrk takes whole milliseconds: the fraction is kept on average by rounding at random.
function delay()
  local wait = -{mean} * math.log(1 - math.random())
  return math.floor(wait + math.random())
end
"""


@attrs.define
class Target:
    """What wrk measures: a URL, and the processes whose CPU time it costs."""

    url: str
    pids: list[int]
    output: list[str] = attrs.field(factory=list)
    """What its server printed so far (refresherd's log)."""


@attrs.define
class Paced:
    """The latency of hits at a fixed rate: each round's achieved rate, p50 and p99 (ms)."""

    rate: float
    """The rate asked for, in requests a second."""
    given: bool = False
    """Whether the rate was given (C{--rate}), not half of refresherd's raw req/s."""
    delays: dict[str, float] = attrs.field(factory=dict)
    """The mean delay before each request of a connection, in ms, for each target."""
    rates: dict[str, list[float]] = attrs.field(factory=dict)
    p50: dict[str, list[float]] = attrs.field(factory=dict)
    p99: dict[str, list[float]] = attrs.field(factory=dict)
    stolen: list[float] = attrs.field(factory=list)
    """The share of the machine's CPU time its hypervisor took during each run."""

    def why(self) -> str:
        """Where the rate comes from, as the report says it."""
        return "as given" if self.given else "half of refresherd's raw req/s above"


def cpu_seconds(pids: Sequence[int]) -> float:
    """The CPU time (user and system) the processes C{pids} have spent so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def workers(pid: int) -> list[int]:
    """nginx's worker processes, children of its master C{pid} (not its cache loader)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"worker process" in command:
            found.append(int(stat.parent.name))
    return found


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def raw_answer(port: int, path: str) -> tuple[list[tuple[str, str]], bytes]:
    """The headers (as sent, in order) and the body of a GET of C{path} on C{port}."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += receive(connection)
        head, _, body = received.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        assert status.startswith("HTTP/1.1 200 "), status
        headers = [(name, value.strip()) for name, _, value in (h.partition(":") for h in lines)]
        length = next(int(v) for n, v in headers if n.lower() == "content-length")
        while len(body) < length:
            body += receive(connection)
    return headers, body[:length]


def receive(connection: socket.socket) -> bytes:
    received = connection.recv(65536)
    if not received:
        raise RuntimeError("the server closed the connection before its answer was whole")
    return received


def start_ceiling(stack: ExitStack, directory: Path, port: int, kind: str) -> Target:
    """A ceiling (L{bench.bare_server} C{protocol} or C{fast}) answering refresherd's raw answer."""
    headers, body = raw_answer(port, PATHS["raw"])
    (directory / "ceiling.body").write_bytes(body)
    spec = directory / "ceiling.json"
    answer = {"body": str(directory / "ceiling.body"), "headers": headers}
    spec.write_text(json.dumps({"/": answer}))
    argv = [sys.executable, "-m", "bench.bare_server", kind, "--spec", str(spec)]
    name = CEILING if kind == "protocol" else FAST_CEILING
    process = spawn(stack, name, [*argv, "--port", "0"], lifeline=True, cwd=ROOT)
    match = SERVING.search(process.wait_for(lambda text: SERVING.search(text) is not None))
    assert match is not None
    return Target(f"http://127.0.0.1:{match.group(2)}{PATHS['raw']}", [process.popen.pid])


def start(stack: ExitStack, config: Path, *args: str) -> Service:
    service = start_service(config, *args)
    stack.callback(service.stop)
    return service


def start_nginx(stack: ExitStack, directory: Path, service: Service, count: int) -> Target:
    """nginx with C{count} workers caching C{service}'s answers; its raw target."""
    proxy, port = nginx(directory, service.ports["public"], 3600, TEMPLATE, count)
    stack.callback(proxy.stop)
    url = f"http://127.0.0.1:{port}"
    for _ in range(2):  # nginx's cache warm
        assert httpx.get(url + PATHS["raw"]).status_code == 200
    wait_until(lambda: len(workers(proxy.popen.pid)) == count)
    return Target(url, workers(proxy.popen.pid))


def start_targets(stack: ExitStack, directory: Path, origin_url: str) -> dict[str, Target]:
    """Every server measured, started and warm; what wrk measures of each, in order."""
    configs = {}
    for log in ("false", "true"):
        configs[log] = directory / f"log-{log}.toml"
        configs[log].write_text(CONFIG.format(access_log=log, origin=origin_url))
    plain = start(stack, configs["false"])
    text_log = start(stack, configs["true"])
    json_log = start(stack, configs["true"], "--log-format", "json")
    redis = stack.enter_context(RedisServer())
    pooled = start(stack, configs["false"], "--store", redis.url(), "--workers", "2")
    wait_until(lambda: len(WORKER_SERVING.findall(pooled.output())) == 2, timeout=30)
    redis_info = redis.command("INFO", "server")
    assert isinstance(redis_info, bytes)
    redis_pid = int(re.search(rb"process_id:(\d+)", redis_info).group(1))  # type: ignore[union-attr]
    for service in (plain, text_log, json_log, pooled):  # a value in each
        for path in PATHS.values():
            for _ in range(2):
                assert service.get(path).status_code == 200, path
    one = start_nginx(stack, directory / "nginx-1", plain, 1)
    two = start_nginx(stack, directory / "nginx-2", pooled, 2)
    targets = {}
    for kind, path in PATHS.items():
        targets[f"refresherd {kind}"] = Target(plain.url + path, [plain.process.pid])
        targets[f"nginx {kind}"] = Target(one.url + path, one.pids)
        if kind == "raw":
            targets[CEILING] = start_ceiling(stack, directory, plain.ports["public"], "protocol")
            targets[FAST_CEILING] = start_ceiling(stack, directory, plain.ports["public"], "fast")
    for name, logging in ((TEXT_LOG, text_log), (JSON_LOG, json_log)):
        targets[name] = Target(logging.url + PATHS["JSON"], [logging.process.pid], logging.lines)
    pooled_pids = [int(pid) for pid in WORKER_SERVING.findall(pooled.output())]
    targets[WORKERS] = Target(
        pooled.url + PATHS["raw"], [pooled.process.pid, *pooled_pids, redis_pid]
    )
    targets[NGINX_WORKERS] = Target(two.url + PATHS["raw"], two.pids)
    return targets


def access_lines(output: list[str]) -> int:
    """How many of a refresherd's lines are its access log's."""
    return sum("refresherd.access" in line for line in output)


def pacing_script(directory: Path, name: str, mean: float, rate: float) -> Path:
    """The Lua script of wrk waiting C{mean} ms on average before each request."""
    script = directory / f"paced-{len(list(directory.glob('paced-*')))}.lua"
    script.write_text(PACING.format(mean=f"{mean:.3f}", rate=f"{rate:.0f}", name=name))
    return script


def calibrate(directory: Path, name: str, url: str, rate: float, seconds: int) -> float:
    """
    The mean delay (ms) that paces wrk's L{CONNECTIONS} connections to
    C{url} at C{rate}: each waits for its answer before its delay starts, so
    a run with the naive delay (connections / rate) shows how long the rest
    of a request's cycle takes, and the delay left is what remains of it.
    """
    naive = 1000 * CONNECTIONS / rate
    achieved = wrk_latencies(url, seconds, CONNECTIONS, pacing_script(directory, name, naive, rate))
    rest = 1000 * CONNECTIONS / achieved[0] - naive
    return max(0.0, naive - rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--rate",
        type=float,
        help="the fixed rate of the latency rounds, requests a second "
        "(default: half of refresherd's median raw req/s in the same run)",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write the docs")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "redis-server"):
        if shutil.which(tool) is None:
            needed = "apt-get install wrk nginx-light redis-server"
            sys.exit(f"bench: {tool} is not installed ({needed})")
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        origin = start_origin()
        stack.callback(origin.server.shutdown)
        origin.set("/users/hot", body=VALUE)
        targets = start_targets(stack, directory, origin.url)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        per_cpu: dict[str, list[float]] = {name: [] for name in targets}
        stolen: list[float] = []
        for _ in range(args.rounds):
            for name, target in targets.items():
                spent, machine = cpu_seconds(target.pids), cpu_times()
                rate = wrk_latencies(target.url, args.seconds, CONNECTIONS)[0]
                spent = cpu_seconds(target.pids) - spent
                stolen.append(stolen_share(machine, cpu_times()))
                rates[name].append(rate)
                per_cpu[name].append(rate * args.seconds / max(spent, 0.01))
        if args.rate:
            paced = Paced(args.rate, given=True)
        else:
            paced = Paced(statistics.median(rates["refresherd raw"]) / 2)
        scripts = {}
        for name in PACED:
            url = targets[name].url
            paced.delays[name] = calibrate(directory, name, url, paced.rate, args.seconds)
            scripts[name] = pacing_script(directory, name, paced.delays[name], paced.rate)
        for _ in range(args.rounds):
            for name in PACED:
                url, script, machine = targets[name].url, scripts[name], cpu_times()
                rate, p50, p99 = wrk_latencies(url, args.seconds, CONNECTIONS, script)
                paced.stolen.append(stolen_share(machine, cpu_times()))
                paced.rates.setdefault(name, []).append(rate)
                paced.p50.setdefault(name, []).append(p50)
                paced.p99.setdefault(name, []).append(p99)
        log_lines = {name: access_lines(targets[name].output) for name in (TEXT_LOG, JSON_LOG)}
    text = report(rates, per_cpu, stolen, paced, args.rounds, args.seconds, log_lines)
    print(text)
    if not args.no_write:
        write_section(START, END, HEADING, text)


def ratio(rates: dict[str, list[float]], top: str, bottom: str) -> str:
    each = [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]
    return f"{statistics.median(each):.2f} ({min(each):.2f} to {max(each):.2f})"


def steal(shares: list[float]) -> str:
    """The median and the largest of the shares the hypervisor took, as percentages."""
    return f"{100 * statistics.median(shares):.1f}% (at most {100 * max(shares):.1f}%)"


def report(
    rates: dict[str, list[float]],
    per_cpu: dict[str, list[float]],
    stolen: list[float],
    paced: Paced,
    rounds: int,
    seconds: int,
    log_lines: dict[str, int],
) -> str:
    median = {name: statistics.median(values) for name, values in rates.items()}
    cpu = {name: statistics.median(values) for name, values in per_cpu.items()}
    busy = {
        name: statistics.median(r / c for r, c in zip(rates[name], per_cpu[name], strict=True))
        for name in rates
    }
    nginx_version = version(["nginx", "-v"], r"nginx/([\d.]+)")
    redis_version = version(["redis-server", "--version"], r"v=(\S+)")
    logged = ", ".join(f"{count} as {name.rpartition(' ')[2]}" for name, count in log_lines.items())
    return "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} cores, refresherd {git_commit()}, "
            f"Python {platform.python_version()}, "
            f"Twisted {importlib.metadata.version('twisted')}, "
            f"nginx {nginx_version}, Redis {redis_version}; "
            f"`python -m bench.versus_nginx --rounds {rounds} --seconds {seconds}"
            f"{f' --rate {paced.rate:.0f}' if paced.given else ''}` "
            f"(wrk, 1 thread, {CONNECTIONS} connections; a 200-byte JSON value; "
            f"access log lines written: {logged}). The hypervisor took {steal(stolen)} of "
            f"the machine's CPU time during these runs, {steal(paced.stolen)} during those at "
            "a fixed rate.",
            "",
            "| target | req/s (median) | rounds | requests per CPU second (median) "
            "| cores busy (median) |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {median[name]:.0f} | {', '.join(f'{r:.0f}' for r in values)} "
                f"| {cpu[name]:.0f} | {busy[name]:.2f} |"
                for name, values in rates.items()
            ),
            "",
            "| ratio (in the same round) | req/s: median (range) "
            "| per CPU second: median (range) | goal |",
            "|---|---|---|---|",
            *(
                f"| {label} | {ratio(rates, top, bottom)} | {ratio(per_cpu, top, bottom)} "
                f"| {goal} |"
                for label, top, bottom, goal in RATIOS
            ),
            "",
            f"At a fixed rate, {paced.rate:.0f} requests a second ({paced.why()}"
            f"; wrk paced by `delay()`, {CONNECTIONS} connections, {rounds} rounds "
            f"of {seconds} s each, after one to calibrate the delay):",
            "",
            "| target | mean delay ms | req/s achieved (median) | p50 ms (median) "
            "| p99 ms (median) | p99 ms, rounds |",
            "|---|---|---|---|---|---|",
            *(
                f"| {name} | {paced.delays[name]:.2f} "
                f"| {statistics.median(paced.rates[name]):.0f} "
                f"| {statistics.median(paced.p50[name]):.2f} "
                f"| {statistics.median(paced.p99[name]):.2f} "
                f"| {', '.join(f'{p:.2f}' for p in paced.p99[name])} |"
                for name in paced.rates
            ),
        ]
    )


if __name__ == "__main__":
    main()
