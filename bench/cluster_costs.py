"""
What a lookup would cost on a Redis Cluster, measured on loopback: a real
3-primary Redis Cluster (C{redis-server --cluster-enabled yes}, three
processes on free ports, joined by C{redis-cli --cluster create}) against one
plain C{redis-server} in the same run.

A lookup reads an entry and the generation keys of its job and its tag (hard
and soft: five keys in all, docs/store-format.md).  On one server that is
one C{MGET}, one round trip (what refresherd does).  On a Cluster the five
keys of today's layout fall into five slots, usually on several nodes, and a
command may not name keys of two slots (C{CROSSSLOT}); the ways to read them:

    single          one MGET of the five keys on one plain server (the baseline)
    co-located      the five keys under one hash tag: one MGET on their node
    sequential      one GET per key, each on its node, one after another
    parallel        the GETs sent at once to every node that holds one (pipelined
                    per node), then every reply read: a round trip per node, overlapped
    entry only      one GET of the entry on its node, the generation tokens taken
                    from the process (a cache kept by the change channel)
    redirected      the entry asked of the wrong node first: MOVED, then its node
                    (what every key costs once after a resharding)

With redis-py installed (the C{bench} extra), two more: its asyncio client
reading the five keys with one MGET on the plain server, and its asyncio
Cluster client with C{mget_nonatomic} (an MGET per slot) on the Cluster.

Each is timed over C{--reads} lookups of C{--keys} different entries (one
client, one connection per node), in C{--rounds} rounds that interleave
every way in slices; the result is the median µs per lookup and the median
of the per-round ratios to C{single}.  It also records what the Cluster
answers to refresherd's own put script on an entry and its lease.  Then,
with wrk installed and C{--seconds} above 0, the hit throughput of
refresherd on twistd's default reactor and on its asyncio reactor (which
redis-py's asyncio clients would need), one process each on the plain
server, as L{bench.throughput} measures it.

Run from the repository root after C{bash .ci/run}:

    .venv/bin/python -m bench.cluster_costs [--rounds 7] [--reads 5000] [--keys 64] [--seconds 5]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import BinaryIO

from bench.shared_stores import write_section
from bench.throughput import (
    CONFIG,
    SMALL_CONNECTIONS,
    SMALL_PATH,
    Result,
    Target,
    command_version,
    hit,
    machine,
    origin_server,
    per_round,
    start_refresherd,
    start_refresherd_process,
)
from bench.throughput import measure as throughput_measure
from refresherd.core.marks import generation_keys
from refresherd.entry import encode
from refresherd.keys import entry_key
from refresherd.stores.redis import _PUT, lease_key
from tests.redis_server import RedisReplyError, RedisServer, Reply, _encode, _read
from tests.store_contract import sample_entry

START, END = "<!-- bench:cluster_costs:start -->", "<!-- bench:cluster_costs:end -->"
HEADING = "Redis Cluster, on paper and on loopback"
REDIS_PY_ONE, REDIS_PY_CLUSTER = "redis-py, one server", "redis-py, Cluster"
DEFAULT_REACTOR, ASYNCIO_REACTOR = "default (epoll)", "asyncio (`-r asyncio`)"
NAMESPACE = "rfd"
SLOTS = 16384


@dataclass
class Node:
    """One blocking connection to one server."""

    port: int
    sock: socket.socket = field(init=False)
    reader: BinaryIO = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def send(self, *commands: Sequence[str | bytes | int]) -> None:
        self.sock.sendall(b"".join(_encode(c) for c in commands))

    def read(self) -> Reply:
        return _read(self.reader)

    def ask(self, *command: str | bytes | int) -> Reply:
        self.send(command)
        return self.read()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@dataclass
class Lookup:
    """The keys one lookup reads: an entry and its generation keys."""

    entry: str
    generations: list[str]

    @property
    def keys(self) -> list[str]:
        return [self.entry, *self.generations]


def lookups(count: int, tagged: bool) -> list[Lookup]:
    """
    C{count} lookups of job C{tweets} with tag C{user:NAME}: in today's layout,
    or (C{tagged}) with every key of a lookup under the entry's hash tag.
    """
    found = []
    for n in range(count):
        name = f"user{n}"
        key = entry_key(NAMESPACE, "tweets", 1, {"username": name})
        generations = list(generation_keys(NAMESPACE, "tweets", (f"user:{name}",)).all)
        if tagged:
            tag = "{" + key + "}"
            key, generations = tag, [f"{tag}{g}" for g in generations]
        found.append(Lookup(key, generations))
    return found


@dataclass
class Cluster:
    """Connections to every primary, and which one serves each slot (C{CLUSTER SLOTS})."""

    nodes: dict[int, Node]
    owner: list[int]

    @classmethod
    def of(cls, ports: Sequence[int]) -> Cluster:
        nodes = {port: Node(port) for port in ports}
        owner = [0] * SLOTS
        reply = nodes[ports[0]].ask("CLUSTER", "SLOTS")
        assert isinstance(reply, list)
        for entry in reply:
            assert isinstance(entry, list)
            first, last, primary = entry[0], entry[1], entry[2]
            assert isinstance(first, int) and isinstance(last, int)
            assert isinstance(primary, list) and isinstance(primary[1], int)
            owner[first : last + 1] = [primary[1]] * (last - first + 1)
        return cls(nodes, owner)

    def slot(self, key: str) -> int:
        reply = next(iter(self.nodes.values())).ask("CLUSTER", "KEYSLOT", key)
        assert isinstance(reply, int)
        return reply

    def node_of(self, key: str) -> Node:
        return self.nodes[self.owner[self.slot(key)]]

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()


Read = Callable[[], object]


def single(server: Node, lookup: Lookup) -> Read:
    keys = lookup.keys
    return lambda: server.ask("MGET", *keys)


def co_located(cluster: Cluster, lookup: Lookup) -> Read:
    node, keys = cluster.node_of(lookup.entry), lookup.keys
    return lambda: node.ask("MGET", *keys)


def sequential(cluster: Cluster, lookup: Lookup) -> Read:
    routed = [(cluster.node_of(key), key) for key in lookup.keys]
    return lambda: [node.ask("GET", key) for node, key in routed]


def parallel(cluster: Cluster, lookup: Lookup) -> Read:
    by_node: dict[int, list[str]] = {}
    for key in lookup.keys:
        by_node.setdefault(cluster.owner[cluster.slot(key)], []).append(key)
    batches = [(cluster.nodes[port], [("GET", k) for k in keys]) for port, keys in by_node.items()]

    def read() -> object:
        for node, commands in batches:
            node.send(*commands)
        return [[node.read() for _ in commands] for node, commands in batches]

    return read


def entry_only(cluster: Cluster, lookup: Lookup) -> Read:
    node, key = cluster.node_of(lookup.entry), lookup.entry
    return lambda: node.ask("GET", key)


def redirected(cluster: Cluster, lookup: Lookup) -> Read:
    right, key = cluster.node_of(lookup.entry), lookup.entry
    wrong = next(n for n in cluster.nodes.values() if n is not right)

    def read() -> object:
        try:
            wrong.ask("GET", key)
        except RedisReplyError as e:
            assert str(e).startswith("MOVED "), e
        return right.ask("GET", key)

    return read


Way = Callable[[int], None]
"""Make that many lookups, going round the lookups of the run."""


def blocking(reads: list[Read]) -> Way:
    """The way that calls C{reads} in turn."""

    def run(count: int) -> None:
        for n in range(count):
            reads[n % len(reads)]()

    return run


def time_reads(way: Way, count: int) -> float:
    """Microseconds per lookup over C{count} lookups."""
    started = time.perf_counter()
    way(count)
    return (time.perf_counter() - started) / count * 1e6


@dataclass
class Results:
    times: dict[str, list[float]] = field(default_factory=dict)

    def ratios(self, way: str, baseline: str = "single") -> list[float]:
        return [t / b for t, b in zip(self.times[way], self.times[baseline], strict=True)]


SLICES = 20
"""A round runs each way in this many slices, interleaved, so that the noise of a
shared machine falls on every way alike."""


def measure(ways: dict[str, Way], rounds: int, reads: int) -> Results:
    """
    A warm-up of each way, then C{rounds} rounds; a round interleaves
    L{SLICES} slices of every way, the order alternating, and gives each way
    its mean over its slices.
    """
    names = list(ways)
    for name in names:
        time_reads(ways[name], max(1, reads // 10))
    results = Results({name: [] for name in names})
    each = max(1, reads // SLICES)
    for n in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        for k in range(SLICES):
            for name in names if (n + k) % 2 == 0 else names[::-1]:
                spent[name] += time_reads(ways[name], each)
        for name in names:
            results.times[name].append(spent[name] / SLICES)
        line = ", ".join(f"{w} {results.times[w][-1]:.0f}" for w in names)
        print(f"bench: round {n + 1}/{rounds}: µs per lookup: {line}", file=sys.stderr)
    return results


def spread(cluster: Cluster, plain: list[Lookup]) -> tuple[float, float]:
    """The mean number of slots and of nodes the keys of a lookup fall on (today's layout)."""
    slots = [len({cluster.slot(k) for k in lookup.keys}) for lookup in plain]
    nodes = [len({cluster.owner[cluster.slot(k)] for k in lookup.keys}) for lookup in plain]
    return statistics.mean(slots), statistics.mean(nodes)


def put_script_reply(cluster: Cluster, lookup: Lookup) -> str:
    """What the Cluster answers refresherd's put script on an entry and its lease."""
    keys = [lookup.entry, lease_key(lookup.entry)]
    node = cluster.node_of(lookup.entry)
    try:
        node.ask("EVAL", _PUT, len(keys), *keys, encode(sample_entry()), 60000, 0, "rfd:changes")
    except RedisReplyError as e:
        return str(e).split(" ", 1)[0]
    return "OK"


TRIPS = {
    "single": "1",
    "co-located": "1",
    "sequential": "5, one after another",
    "parallel": "1 per node, overlapped",
    "entry only": "1 (tokens in the process)",
    "redirected": "2 (MOVED, then the node)",
    REDIS_PY_ONE: "1 (`MGET`)",
    REDIS_PY_CLUSTER: "1 per slot (`mget_nonatomic`)",
}


def report(
    results: Results, args: argparse.Namespace, spread: tuple[float, float], put: str
) -> str:
    redis = command_version(["redis-server", "--version"], r"v=(\S+)")
    py = f", redis-py {package_version('redis')}" if REDIS_PY_ONE in results.times else ""
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; Python "
        f"{sys.version.split()[0]}, Redis {redis}{py}; `python -m bench.cluster_costs "
        f"--rounds {args.rounds} --reads {args.reads} --keys {args.keys} --seconds "
        f"{args.seconds}`. One client on loopback, one connection per node, blocking "
        "sockets (redis-py: its asyncio clients on one event loop); a lookup is an entry and "
        "the 4 generation keys of its job and tag. In today's layout those 5 keys fell in "
        f"{spread[0]:.1f} slots on {spread[1]:.1f} of the 3 nodes on average; refresherd's "
        f"put script on an entry and its lease got `{put}`. Medians of {args.rounds} "
        f"rounds, each interleaving {SLICES} slices of every way; a ratio is the median of "
        "the per-round ratios.",
        "",
        "| way | round trips | µs per lookup | ratio to single | per round |",
        "|---|---|---|---|---|",
    ]
    for way, times in results.times.items():
        ratios = results.ratios(way)
        lines.append(
            f"| {way} | {TRIPS[way]} | {statistics.median(times):.1f} | "
            f"{statistics.median(ratios):.2f} | {min(ratios):.2f} to {max(ratios):.2f} |"
        )
    if REDIS_PY_CLUSTER in results.times:
        ratios = results.ratios(REDIS_PY_CLUSTER, REDIS_PY_ONE)
        lines += [
            "",
            f"redis-py's cluster client over its one-server client: "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f} to {max(ratios):.2f}).",
        ]
    return "\n".join(lines)


def reactors_report(results: dict[str, Result]) -> str:
    lines = [
        f"**Reactors** (wrk, 1 thread, {SMALL_CONNECTIONS} connections, a small hit, "
        "refresherd on the plain Redis, one process each; median of the rounds):",
        "",
        "| twistd reactor | req/s | p99 ms | ratio to default | per round |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        ratios = per_round(results, name, DEFAULT_REACTOR)
        lines.append(
            f"| {name} | {result.rate:.0f} | {result.p99:.2f} | "
            f"{statistics.median(ratios):.2f} | {min(ratios):.2f} to {max(ratios):.2f} |"
        )
    return "\n".join(lines)


def create_cluster(servers: Sequence[RedisServer]) -> None:
    """Join C{servers} into one Cluster of primaries, and wait until it serves every slot."""
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0"],
        input=b"yes\n",
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        infos = [s.command("CLUSTER", "INFO") for s in servers]
        if all(isinstance(i, bytes) and b"cluster_state:ok" in i for i in infos):
            return
        time.sleep(0.1)
    raise RuntimeError("the Cluster did not reach cluster_state:ok within 30 s")


def redis_py_ways(
    stack: ExitStack, port: int, cluster_port: int, plain: list[Lookup]
) -> dict[str, Way]:
    """
    redis-py's asyncio clients, one server and Cluster, reading the lookups
    of today's layout; none when redis-py is not installed (the C{bench} extra).
    """
    try:
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster
    except ImportError:
        print("bench: redis-py is not installed: its ways are left out", file=sys.stderr)
        return {}
    loop = asyncio.new_event_loop()
    stack.callback(loop.close)
    one = Redis(host="127.0.0.1", port=port)
    cluster = RedisCluster(host="127.0.0.1", port=cluster_port)
    loop.run_until_complete(cluster.initialize())
    stack.callback(lambda: loop.run_until_complete(cluster.aclose()))
    stack.callback(lambda: loop.run_until_complete(one.aclose()))

    def way(read: Callable[[list[str]], Awaitable[object]]) -> Way:
        async def reads(count: int) -> None:
            for n in range(count):
                await read(plain[n % len(plain)].keys)

        return lambda count: loop.run_until_complete(reads(count))

    return {
        REDIS_PY_ONE: way(lambda keys: one.mget(keys)),
        REDIS_PY_CLUSTER: way(lambda keys: cluster.mget_nonatomic(keys)),
    }


def reactor_costs(stack: ExitStack, redis_url: str, args: argparse.Namespace) -> str:
    """Hit throughput of refresherd on twistd's default reactor and on its asyncio reactor."""
    if shutil.which("wrk") is None:
        return "**Reactors**: not measured (wrk is not installed)."
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rfd-cluster-")))
    origin = stack.enter_context(origin_server())
    origin.set("/users/small", body=b'{"name": "small", "tweets": ["hello"]}')
    config = directory / "refresherd.toml"
    config.write_text(CONFIG.format(origin=origin.url))
    urls = {
        DEFAULT_REACTOR: start_refresherd(stack, "refresherd", config, redis_url),
        ASYNCIO_REACTOR: start_refresherd_process(
            stack, "refresherd -r asyncio", config, redis_url, twistd=("-r", "asyncio")
        )[1],
    }
    targets = []
    for name, url in urls.items():
        hit(url + SMALL_PATH)
        targets.append(Target(name, url + SMALL_PATH, SMALL_CONNECTIONS, "1 process"))
    return reactors_report(throughput_measure(targets, args.rounds, args.seconds))


@contextmanager
def running(stack: ExitStack) -> Iterator[tuple[RedisServer, list[RedisServer]]]:
    plain = stack.enter_context(RedisServer())
    members = [stack.enter_context(RedisServer(["--cluster-enabled", "yes"])) for _ in "abc"]
    create_cluster(members)
    yield plain, members


def run(args: argparse.Namespace) -> str:
    with ExitStack() as stack, running(stack) as (plain_server, members):
        server = Node(plain_server.port)
        stack.callback(server.close)
        cluster = Cluster.of([m.port for m in members])
        stack.callback(cluster.close)
        plain, tagged = lookups(args.keys, False), lookups(args.keys, True)
        value = encode(sample_entry())
        for lookup in plain:
            server.ask("SET", lookup.entry, value)
            cluster.node_of(lookup.entry).ask("SET", lookup.entry, value)
        for lookup in tagged:
            cluster.node_of(lookup.entry).ask("SET", lookup.entry, value)
        for lookup in plain + tagged:
            for key in lookup.generations:
                server.ask("SET", key, "0" * 32)
                cluster.node_of(key).ask("SET", key, "0" * 32)
        ways = {
            "single": blocking([single(server, lookup) for lookup in plain]),
            "co-located": blocking([co_located(cluster, lookup) for lookup in tagged]),
            "sequential": blocking([sequential(cluster, lookup) for lookup in plain]),
            "parallel": blocking([parallel(cluster, lookup) for lookup in plain]),
            "entry only": blocking([entry_only(cluster, lookup) for lookup in plain]),
            "redirected": blocking([redirected(cluster, lookup) for lookup in plain]),
            **redis_py_ways(stack, plain_server.port, members[0].port, plain),
        }
        results = measure(ways, args.rounds, args.reads)
        text = report(results, args, spread(cluster, plain), put_script_reply(cluster, plain[0]))
        if args.seconds > 0:
            text += "\n\n" + reactor_costs(stack, plain_server.url(), args)
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=64)
    parser.add_argument(
        "--seconds", type=int, default=5, help="of each wrk run of the reactors (0: none)"
    )
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args()
    text = run(args)
    print(text)
    if args.write:
        write_section(START, END, HEADING, text)


if __name__ == "__main__":
    main()
