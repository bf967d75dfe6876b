"""
refresherd against the alternatives, side by side in one run on this machine,
all on loopback, with a slow origin that the benchmark runs itself:

1. Stampede: N concurrent clients (one connection each) ask for one key while
   it is absent and while it is stale; the origin takes 1 s.  Origin requests
   per stampede (the physical limit is 1) and client latency p50/p99.
2. Serving stale: waves of requests during a 2 s refresh, against the same
   waves on plain hits; p50/p99 of both, the request that triggered the
   refresh (when it was answered, when its connection closed), and whether
   anybody waited for the origin.
3. Waiters: 200 clients on an absent key, origin 1 s: how close their p99 is to
   the origin's time (woken when the value lands, or polling).

The peers, all behind the same HTTP load generator (L{bench.peers_load}):
refresherd on its memory store, on Redis with two processes, with
C{--workers 2} on Redis, and on memcached with two processes; the naive
pattern (redis-py C{get}, on a miss fetch and C{set}) and dogpile.cache
(Redis backend, C{distributed_lock}) in threaded HTTP apps
(L{bench.peers_apps}); nginx C{proxy_cache} with C{proxy_cache_lock},
C{proxy_cache_use_stale updating} and C{proxy_cache_background_update}
(L{bench/nginx.conf.template}).

Run from the repository root with the C{bench} extra installed and Debian's
redis-server, memcached and nginx:

    .venv/bin/python -m bench.peers [--rounds 5] [--clients 100,1000] [--quick]

The default run takes about ten minutes; C{--quick} (one round, 100 clients)
about a minute and a half.  It writes its results and plots into docs/benchmarks.md (between
its markers) and docs/img/peers-*.png.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NoReturn

import attrs

from bench import peers_plots
from bench.peers_load import Shot, burst, window
from bench.peers_servers import Origin, nginx, python_server, refresherd, version
from bench.shared_stores import write_section
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "img"
START, END = "<!-- bench:peers:start -->", "<!-- bench:peers:end -->"

ORIGIN_DELAY = 1.0
"""Seconds the origin takes in stampedes and for waiters."""
REFRESH_DELAY = 2.0
"""Seconds the origin takes for the refresh while stale values are served."""
FRESH = 10.0
"""Freshness of values in every peer: long enough that a value fetched during a
stampede of 1,000 clients does not go stale before the stampede is over (the
last of dogpile.cache's 1,000 waiters take its lock some 6 s after they came)."""
TAIL = 0.5
"""Seconds waited after a stampede before counting origin requests, for late refreshes."""
WAITERS = 200
WAVES, WAVE_SIZE, WAVE_INTERVAL = 20, 20, 0.1
"""Serving stale: 20 waves of 20 requests at once, one every 0.1 s (2 s, 400 requests)."""

CONFIG = """
[store]
namespace = "{namespace}"

[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "{fresh:g}s"
stale = "1h"
wait_timeout = "30s"
timeout = "30s"
early_refresh = 0

[jobs.hot]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
wait_timeout = "30s"
timeout = "30s"
early_refresh = 0
"""


@attrs.define(eq=False)
class Peer:
    """
    One contender, as its clients see it.

    @ivar key: a short name, the first part of the names of its values.
    @ivar bases: the base URL of each process a client may talk to (clients alternate).
    @ivar waiters: how clients waiting on an absent key learn that the value landed.
    """

    key: str
    name: str
    bases: list[str]
    refresherd: bool
    waiters: str
    description: str

    def url(self, kind: str, name: str, client: int = 0) -> str:
        """The URL of value C{name}: C{kind} "users" (fresh L{FRESH}) or "hot" (an hour)."""
        base = self.bases[client % len(self.bases)]
        if self.refresherd:
            return f"{base}/v1/jobs/{'user' if kind == 'users' else 'hot'}?name={name}"
        return f"{base}/{kind}/{name}"


@attrs.frozen
class Run:
    """
    One stampede or window: origin requests it caused, when the first of them
    arrived (Unix time; None: there was none), each client's shot, and the
    shot of the request that triggered a refresh.
    """

    origin_requests: int
    first_request: float | None
    began: float
    shots: list[Shot]
    trigger: Shot | None = None

    @property
    def reached(self) -> float | None:
        """Seconds from the clients' start to the first origin request."""
        return None if self.first_request is None else self.first_request - self.began


Stampedes = dict[tuple[int, str], dict[str, list[Run]]]
"""(clients, "absent" or "stale") -> peer key -> one run per round."""
Serving = dict[str, list[tuple[Run, Run]]]
"""Peer key -> (plain hits, during a refresh) per round."""
Waiters = dict[str, list[Run]]


def path(name: str) -> str:
    """The origin's path of value C{name}."""
    return f"/users/{name}"


def rotated(peers: list[Peer], number: int) -> list[Peer]:
    """The peers in another order each round, so that none always goes first."""
    shift = number % len(peers)
    return peers[shift:] + peers[:shift]


def fill(origin: Origin, values: list[tuple[str, str]]) -> float:
    """GET each (url, name) once with no origin delay; when the values were stored."""
    for _, name in values:
        origin.set_delay(path(name), 0.0)
    shots = burst([url for url, _ in values])
    failed = [url for (url, _), shot in zip(values, shots, strict=True) if shot.status != 200]
    if failed:
        raise RuntimeError(f"could not fill {failed}")
    return time.monotonic()


def wait_until_stale(filled: float) -> None:
    """Sleep until values stored at C{filled} (monotonic time) are stale everywhere."""
    time.sleep(max(0.0, filled + FRESH + 0.5 - time.monotonic()))


def measured(origin: Origin, name: str, before: int) -> tuple[int, float | None]:
    """Origin requests of C{name} beyond the first C{before}, and when the first came."""
    arrivals = origin.arrivals(path(name))[before:]
    return len(arrivals), (arrivals[0] if arrivals else None)


def stampede(peer: Peer, origin: Origin, name: str, clients: int) -> Run:
    """C{clients} requests at once for value C{name}, split across the peer's processes."""
    before = origin.count(path(name))
    began = time.time()
    shots = burst([peer.url("users", name, client) for client in range(clients)])
    time.sleep(TAIL)
    return Run(*measured(origin, name, before), began=began, shots=shots)


def stampede_round(
    peers: list[Peer], origin: Origin, clients: int, number: int
) -> dict[str, dict[str, Run]]:
    """A stampede per peer on an absent key, then one per peer on a stale key."""
    absent = {peer.key: f"{peer.key}-{clients}-absent-{number}" for peer in peers}
    stale = {peer.key: f"{peer.key}-{clients}-stale-{number}" for peer in peers}
    filled = fill(origin, [(peer.url("users", stale[peer.key]), stale[peer.key]) for peer in peers])
    for name in [*absent.values(), *stale.values()]:
        origin.set_delay(path(name), ORIGIN_DELAY)
    runs: dict[str, dict[str, Run]] = {"absent": {}, "stale": {}}
    for peer in rotated(peers, number):
        runs["absent"][peer.key] = stampede(peer, origin, absent[peer.key], clients)
    wait_until_stale(filled)
    for peer in rotated(peers, number):
        runs["stale"][peer.key] = stampede(peer, origin, stale[peer.key], clients)
    return runs


def waves(peer: Peer, kind: str, name: str) -> list[list[str]]:
    """The URLs of the serving-stale waves, alternating between the peer's processes."""
    return [
        [peer.url(kind, name, wave * WAVE_SIZE + i) for i in range(WAVE_SIZE)]
        for wave in range(WAVES)
    ]


def serving_window(peer: Peer, origin: Origin, kind: str, name: str, trigger: bool) -> Run:
    """L{WAVES} waves of requests for C{name}, after one request alone if C{trigger}."""
    before = origin.count(path(name))
    began = time.time()
    first, shots = window(
        peer.url(kind, name) if trigger else None, waves(peer, kind, name), WAVE_INTERVAL
    )
    time.sleep(TAIL)
    return Run(*measured(origin, name, before), began=began, shots=shots, trigger=first)


def serving_round(peers: list[Peer], origin: Origin, number: int) -> dict[str, tuple[Run, Run]]:
    """
    For each peer, the waves on a plain hit and, right before or after (in
    turn), the same waves during the refresh of a stale value.
    """
    hot = {peer.key: f"{peer.key}-hot-{number}" for peer in peers}
    stale = {peer.key: f"{peer.key}-serving-{number}" for peer in peers}
    filled = fill(
        origin,
        [(peer.url("hot", hot[peer.key]), hot[peer.key]) for peer in peers]
        + [(peer.url("users", stale[peer.key]), stale[peer.key]) for peer in peers],
    )
    for name in stale.values():
        origin.set_delay(path(name), REFRESH_DELAY)
    wait_until_stale(filled)
    runs = {}
    names = {"hot": hot, "users": stale}
    order = ["hot", "users"] if number % 2 == 0 else ["users", "hot"]
    for peer in rotated(peers, number):
        windows = {
            kind: serving_window(peer, origin, kind, names[kind][peer.key], kind == "users")
            for kind in order
        }
        runs[peer.key] = (windows["hot"], windows["users"])
    return runs


def waiters_round(peers: list[Peer], origin: Origin, number: int) -> dict[str, Run]:
    """L{WAITERS} clients at once on an absent key, for each peer."""
    runs = {}
    for peer in rotated(peers, number):
        name = f"{peer.key}-waiters-{number}"
        origin.set_delay(path(name), ORIGIN_DELAY)
        runs[peer.key] = stampede(peer, origin, name, WAITERS)
    return runs


# -- the peers ---------------------------------------------------------------


def config_file(directory: Path, origin: Origin, namespace: str) -> Path:
    config = directory / f"{namespace}.toml"
    config.write_text(CONFIG.format(namespace=namespace, origin=origin.url, fresh=FRESH))
    return config


@contextmanager
def running_peers(directory: Path, origin: Origin) -> Iterator[list[Peer]]:
    """Start every peer (and the Redis and memcached they need); stop them all at the end."""
    with ExitStack() as stack:
        redis, memcached = RedisServer(), MemcachedServer()
        stack.callback(redis.cleanup)
        stack.callback(memcached.cleanup)
        redis.start()
        memcached.start()

        def rfd(namespace: str, store: str, count: int = 1, workers: int = 1) -> list[str]:
            config = config_file(directory, origin, namespace)
            env = {"TMPDIR": str(directory)}
            bases = []
            for i in range(count):
                process, port = refresherd(f"{namespace}[{i}]", config, store, workers, env)
                stack.callback(process.stop)
                bases.append(f"http://127.0.0.1:{port}")
            return bases

        def app(kind: str, db: int) -> list[str]:
            process, port = python_server(
                kind, kind, "--origin", origin.url, "--redis", redis.url(db), "--fresh", str(FRESH)
            )
            stack.callback(process.stop)
            return [f"http://127.0.0.1:{port}"]

        process, port = nginx(directory / "nginx", origin, FRESH)
        stack.callback(process.stop)
        woken = "woken when the value lands"
        yield [
            Peer(
                "rfd-memory",
                "refresherd, memory",
                rfd("rfd-memory", "memory://"),
                True,
                woken,
                "one process, memory store",
            ),
            Peer(
                "rfd-redis",
                "refresherd, Redis ×2",
                rfd("rfd-redis", redis.url(1), count=2),
                True,
                woken + " (the other process by a Redis pub/sub notice)",
                "two processes on one Redis, clients alternating between them",
            ),
            Peer(
                "rfd-workers",
                "refresherd --workers 2, Redis",
                rfd("rfd-workers", redis.url(2), workers=2),
                True,
                woken + " (the other worker by a Redis pub/sub notice)",
                "`--workers 2` on Redis: two processes sharing one listening socket",
            ),
            Peer(
                "rfd-memcached",
                "refresherd, memcached ×2",
                rfd("rfd-memcached", memcached.url(), count=2),
                True,
                "the fetching process's clients woken; the other process polls, "
                "every 0.05 s doubling up to 0.5 s (at most 0.5 s late)",
                "two processes on one memcached, clients alternating between them",
            ),
            Peer(
                "naive",
                "naive get/set, redis-py",
                app("naive", 3),
                False,
                "no waiting: every client that misses calls the origin",
                "a threaded HTTP app (a thread per connection): redis-py `get`, on a miss "
                f"call the origin and `set` with an expiry of {FRESH:g} s",
            ),
            Peer(
                "dogpile",
                "dogpile.cache, Redis lock",
                app("dogpile", 4),
                False,
                "poll the Redis lock every 0.1 s, then take it one by one",
                "a threaded HTTP app: `get_or_create` on dogpile.cache's Redis backend with "
                f"`distributed_lock`, `expiration_time` {FRESH:g} s",
            ),
            Peer(
                "nginx",
                "nginx proxy_cache",
                [f"http://127.0.0.1:{port}"],
                False,
                "proxy_cache_lock: waiters re-check every 0.5 s",
                "2 workers, `proxy_cache_lock`, `proxy_cache_use_stale updating`, "
                f"`proxy_cache_background_update`, `proxy_cache_valid 200 {FRESH:g}s`",
            ),
        ]


# -- the report --------------------------------------------------------------


def answered(shots: list[Shot]) -> list[float]:
    """Latencies of the requests that got a 200."""
    return [shot.answered for shot in shots if shot.status == 200]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def quantile(run: Run, q: float) -> float:
    """The C{q} quantile of the run's answered latency."""
    return percentile(answered(run.shots), q)


def median_of(runs: list[Run], q: float) -> float:
    """The median over the runs of each run's C{q} quantile of answered latency."""
    return statistics.median(quantile(run, q) for run in runs)


def counts(runs: list[Run]) -> str:
    return ", ".join(str(run.origin_requests) for run in runs)


def reached(runs: list[Run]) -> str:
    """The median time, in ms, from the clients' start to the first origin request."""
    times = [run.reached for run in runs if run.reached is not None]
    return f"{1000 * statistics.median(times):.0f}" if times else "—"


def failures(runs: list[Run]) -> int:
    return sum(shot.status != 200 for run in runs for shot in run.shots)


def waited(shots: list[Shot], seconds: float) -> int:
    """Clients that were answered only after C{seconds} (or not at all)."""
    return sum(shot.status != 200 or shot.answered >= seconds for shot in shots)


def blocked(run: Run, delay: float) -> tuple[int, int]:
    """
    Clients of a stampede that waited for the origin: answered (or failed)
    only once it had worked on the first request for 0.9 of C{delay}; and
    those answered before that whose connection stayed open until then.
    """
    if run.first_request is None:
        return 0, 0
    late = run.first_request + 0.9 * delay
    answered_late = sum(s.status != 200 or s.began + s.answered >= late for s in run.shots)
    held_open = sum(
        s.status == 200 and s.began + s.answered < late <= s.began + s.closed for s in run.shots
    )
    return answered_late, held_open


def yes(condition: bool) -> str:
    return "yes" if condition else "**no**"


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} ({model}), {len(os.sched_getaffinity(0))} cores"


def refresherd_version() -> str:
    """The commit that was measured, and whether the installed package differs from it."""

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=30)

    commit = git("rev-parse", "--short", "HEAD").stdout.decode().strip() or "?"
    # Where twistd imports refresherd from: the venv's install (not this work tree).
    where = subprocess.run(
        [sys.executable, "-c", "import refresherd; print(refresherd.__file__)"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        timeout=30,
    )
    if where.returncode != 0:
        return f"refresherd {commit} (not installed in this venv)"
    installed = Path(where.stdout.strip()).parent
    committed = git("ls-files", "refresherd").stdout.decode().split()
    sources = {str(f.relative_to(installed.parent)) for f in installed.rglob("*.py")}
    same = sources == {f for f in committed if f.endswith(".py")} and all(
        (installed.parent / name).read_bytes() == git("show", f"HEAD:{name}").stdout
        for name in sources
    )
    return f"refresherd {commit}" + ("" if same else " with uncommitted changes")


def versions() -> str:
    def package(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    redis = version(["redis-server", "--version"], r"v=(\S+)")
    memcached = version(["memcached", "-V"], r"memcached (\S+)")
    nginx = version(["nginx", "-v"], r"nginx/(\S+)")
    return (
        f"{refresherd_version()}, Python {platform.python_version()}, "
        f"Twisted {package('Twisted')}, Redis {redis}, "
        f"memcached {memcached}, nginx {nginx}, dogpile.cache {package('dogpile.cache')}, "
        f"redis-py {package('redis')}"
    )


def report(
    peers: list[Peer],
    stampedes: Stampedes,
    serving: Serving,
    waiters: Waiters,
    args: argparse.Namespace,
    minutes: float,
) -> tuple[str, list[str]]:
    """The section of docs/benchmarks.md, and the lines that check the targets."""
    command = " ".join(["python -m bench.peers", *sys.argv[1:]])
    rounds = args.rounds
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, {versions()}; "
        f"`{command}` ({rounds} round{'s' * (rounds != 1)}, {minutes:.1f} minutes).",
    ]
    if args.quick:
        lines += [
            "",
            "**A quick run** (`--quick`: one round): a smoke test of the command, not a "
            "measurement. A full run (`python -m bench.peers`) replaces it.",
        ]
    lines += ["", "The peers, all on loopback, in front of the same origin:", ""]
    lines += [f"- **{peer.name}**: {peer.description}." for peer in peers]
    checks: list[str] = []

    lines += [
        "",
        f"**Stampede** (N concurrent clients, one connection each, on one key; the origin "
        f"takes {ORIGIN_DELAY:g} s; *first origin request after*: from the clients' start to "
        f"the first request the origin got; p50 and p99 of the time to the whole answer, each "
        f"the median over {rounds} round{'s' * (rounds != 1)}; *waited* counts the clients "
        "that waited for the origin (answered only once it had worked on the first request "
        "for 0.9 of its time), *held* those answered sooner whose connection stayed open until "
        "then, medians per stampede; *errors*: requests without a 200, all rounds):",
        "",
        "| peer | clients | key | origin requests per stampede | first origin request after ms "
        "| p50 s | p99 s | waited / held | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (clients, kind), by_peer in stampedes.items():
        for peer in peers:
            runs = by_peer[peer.key]
            slow = statistics.median(blocked(run, ORIGIN_DELAY)[0] for run in runs)
            open_ = statistics.median(blocked(run, ORIGIN_DELAY)[1] for run in runs)
            lines.append(
                f"| {peer.name} | {clients} | {kind} | {counts(runs)} | {reached(runs)} | "
                f"{median_of(runs, 0.5):.3f} | {median_of(runs, 0.99):.3f} | "
                f"{'—' if kind == 'absent' else f'{slow:g} / {open_:g}'} | {failures(runs)} |"
            )
            if peer.refresherd:
                single = all(run.origin_requests == 1 for run in runs)
                checks.append(
                    f"stampede {clients} {kind} {peer.name}: origin requests {counts(runs)} "
                    f"(one per stampede: {yes(single)})"
                    + ("" if kind == "absent" else f", nobody waited: {yes(slow == 0)}")
                )
    lines += [
        "",
        "![Origin requests per stampede](img/peers-stampede-origin.png)",
        "",
        "![Client latency in stampedes](img/peers-stampede-latency.png)",
        "",
        f"**Serving stale** (the origin takes {REFRESH_DELAY:g} s to refresh a stale value; one "
        f"request triggers the refresh, then {WAVES} waves of {WAVE_SIZE} requests at once, one "
        f"every {WAVE_INTERVAL:g} s, against the same waves on a plain hit right before or after; "
        f"medians over the rounds; *p99 ratio*: the median over the rounds of each round's "
        f"p99 during the refresh over its plain-hit p99, with the lowest and highest; "
        f"the trigger's times are until its answer and until its connection closed; "
        f"*waited* counts the requests answered after {REFRESH_DELAY / 2:g} s or more, "
        "the trigger included):",
        "",
        "| peer | plain hit p50 / p99 ms | during the refresh p50 / p99 ms | p99 ratio "
        "| trigger answered s | trigger closed s | waited | origin requests | target met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for peer in peers:
        pairs = serving[peer.key]
        hits, during = [h for h, _ in pairs], [d for _, d in pairs]
        # The two windows of a round run back to back: each round's ratio
        # compares like with like when the machine drifts between rounds.
        ratios = [quantile(d, 0.99) / quantile(h, 0.99) for h, d in pairs]
        ratio = statistics.median(ratios)
        triggers = [run.trigger for run in during if run.trigger is not None]
        trigger_answered = statistics.median(t.answered for t in triggers)
        trigger_closed = statistics.median(t.closed for t in triggers)
        slow = statistics.median(
            waited([*run.shots, *([run.trigger] if run.trigger else [])], REFRESH_DELAY / 2)
            for run in during
        )
        target = "—"
        if peer.refresherd:
            met = ratio <= 1.2 and slow == 0
            target = yes(met)
            checks.append(
                f"serving stale {peer.name}: p99 {ratio:.2f} × the plain-hit p99 (target ≤ 1.2), "
                f"trigger answered in {trigger_answered:.3f} s, {slow:g} waited: {yes(met)}"
            )
        lines.append(
            f"| {peer.name} | {1000 * median_of(hits, 0.5):.1f} / "
            f"{1000 * median_of(hits, 0.99):.1f} | {1000 * median_of(during, 0.5):.1f} / "
            f"{1000 * median_of(during, 0.99):.1f} | "
            f"{ratio:.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {trigger_answered:.3f} | "
            f"{trigger_closed:.3f} | {slow:g} | {counts(during)} | {target} |"
        )
    lines += [
        "",
        "![Latency while a stale value is refreshed](img/peers-serving-stale.png)",
        "",
        f"**Waiters on an absent key** ({WAITERS} clients at once, the origin takes "
        f"{ORIGIN_DELAY:g} s; medians over the rounds; target for refresherd on memory and "
        f"Redis: p99 at most the origin's time plus 100 ms):",
        "",
        "| peer | origin requests | first origin request after ms | p50 s | p99 s "
        "| p99 − origin ms | target met | how waiters learn of the value |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for peer in peers:
        runs = waiters[peer.key]
        p99 = median_of(runs, 0.99)
        target = "—"
        if peer.key in ("rfd-memory", "rfd-redis", "rfd-workers"):
            target = yes(p99 <= ORIGIN_DELAY + 0.1)
            checks.append(
                f"waiters {peer.name}: p99 {p99:.3f} s = origin + "
                f"{1000 * (p99 - ORIGIN_DELAY):.0f} ms (target ≤ +100 ms; the origin reached "
                f"after {reached(runs)} ms): {target}"
            )
        lines.append(
            f"| {peer.name} | {counts(runs)} | {reached(runs)} | {median_of(runs, 0.5):.3f} | "
            f"{p99:.3f} | "
            f"{1000 * (p99 - ORIGIN_DELAY):.0f} | {target} | {peer.waiters} |"
        )
    lines += ["", "![Waiters on an absent key](img/peers-waiters.png)"]
    return "\n".join(lines), checks


# -- main --------------------------------------------------------------------


def interrupted(signum: int, frame: object) -> NoReturn:
    """SIGTERM ends the benchmark as Ctrl-C does: every server it started is stopped."""
    raise KeyboardInterrupt


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of each measurement")
    parser.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        help="concurrent clients of the stampedes, comma-separated (default 100,1000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one round, 100 clients unless --clients says otherwise (~2 minutes)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    if args.clients is None:
        args.clients = [100] if args.quick else [100, 1000]
    if args.rounds < 1 or min(args.clients) < 1:
        parser.error("--rounds and --clients must be at least 1")
    return args


def main() -> None:
    args = parse()
    missing = [n for n in ("redis-server", "memcached", "nginx") if shutil.which(n) is None]
    if missing:
        sys.exit(f"bench: not installed: {', '.join(missing)} (apt-get install them)")
    signal.signal(signal.SIGTERM, interrupted)
    began = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - began:6.0f} s] {text}", file=sys.stderr, flush=True)

    stampedes: Stampedes = {}
    serving: Serving = {}
    waiters: Waiters = {}
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp, ExitStack() as stack:
        origin = Origin.start()
        stack.callback(origin.stop)
        peers = stack.enter_context(running_peers(Path(tmp), origin))
        progress(f"started {len(peers)} peers")
        for clients in args.clients:
            for number in range(args.rounds):
                progress(f"stampedes of {clients} clients, round {number + 1}/{args.rounds}")
                for kind, by_peer in stampede_round(peers, origin, clients, number).items():
                    for key, run in by_peer.items():
                        stampedes.setdefault((clients, kind), {}).setdefault(key, []).append(run)
        for number in range(args.rounds):
            progress(f"serving stale, round {number + 1}/{args.rounds}")
            for key, pair in serving_round(peers, origin, number).items():
                serving.setdefault(key, []).append(pair)
        for number in range(args.rounds):
            progress(f"{WAITERS} waiters, round {number + 1}/{args.rounds}")
            for key, waited_run in waiters_round(peers, origin, number).items():
                waiters.setdefault(key, []).append(waited_run)
        progress("stopping")
    minutes = (time.monotonic() - began) / 60
    text, checks = report(peers, stampedes, serving, waiters, args, minutes)
    IMAGES.mkdir(parents=True, exist_ok=True)
    peers_plots.plot_all(IMAGES, peers, stampedes, serving, waiters)
    print(text)
    print()
    print("\n".join(checks))
    write_section(START, END, "Against the peers", text)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench: interrupted (every server it started has been stopped)")
