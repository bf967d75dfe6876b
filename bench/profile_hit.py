"""
Where the time of a hit goes: py-spy samples one refresherd process while
wrk drives C{GET /v1/jobs/user?name=small} (the hit L{bench.throughput}
measures), and the functions that took most of the samples are printed,
each with its share of the process's busy samples (the reactor thread's,
without the thread pool waiting), including what it calls and on its own.

Run from the repository root after C{bash .ci/run}, with wrk installed
(C{apt-get install wrk}) and the C{bench} extra (for py-spy; sampling
another process needs root or C{ptrace} rights):

    .venv/bin/python -m bench.profile_hit [--store memory|redis] [--seconds 8] [--top 40]

It prints; it writes no file of the repository.  The profiler slows the
process down: read the shares, not the rate.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.throughput import CONFIG, SMALL_CONNECTIONS, SMALL_PATH, hit, origin_server, wrk
from bench.throughput import start_refresherd_process as start
from tests.redis_server import RedisServer

IDLE = ("Condition.wait", "Thread._bootstrap")
"""Frames of the thread pool's threads waiting for work: not the process's time."""


def frame_name(frame: str) -> str:
    """C{function (path:line)} as C{function (file)}."""
    function, _, where = frame.partition(" (")
    return f"{function} ({where.rsplit('/', 1)[-1].split(':')[0]}"


def shares(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """
    From py-spy's raw (collapsed) output: the busy samples, and per function
    the samples it was on the stack (once per stack) and on top.
    """
    total, inclusive, own = 0, collections.Counter[str](), collections.Counter[str]()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame_name(f) for f in stack.split(";")]
        if any(f.startswith(IDLE) for f in frames):
            continue
        n = int(count)
        total += n
        for name in dict.fromkeys(frames):  # Once per stack, in stack order.
            inclusive[name] += n
        own[frames[-1]] += n
    return total, inclusive, own


def table(title: str, counts: collections.Counter[str], total: int, top: int) -> str:
    lines = [f"{title}:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counts.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    # py-spy is a command of the venv's, which need not be on PATH.
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        sys.exit("bench: py-spy is not installed (pip install '.[bench]')")
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install wrk)")
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rfd-prof-")))
        origin = stack.enter_context(origin_server())
        origin.set("/users/small", body=b'{"name": "small", "tweets": ["hello"]}')
        config = directory / "refresherd.toml"
        config.write_text(CONFIG.format(origin=origin.url))
        store = "memory://"
        if args.store == "redis":
            redis = RedisServer()
            stack.callback(redis.cleanup)
            redis.start()
            store = redis.url()
        process, url = start(stack, "refresherd", config, store)
        hit(url + SMALL_PATH)
        unprofiled = wrk(url + SMALL_PATH, 3, SMALL_CONNECTIONS)
        out = directory / "samples.txt"
        argv = [py_spy, "record", "--pid", str(process.popen.pid), "--rate", "500"]
        argv += ["--duration", str(args.seconds), "--format", "raw", "--output", str(out)]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        profiled = wrk(url + SMALL_PATH, args.seconds - 1, SMALL_CONNECTIONS)
        if spy.wait() != 0 or not out.exists():
            sys.exit("bench: py-spy failed (sampling another process needs root or ptrace rights)")
        total, inclusive, own = shares(out.read_text())
    rates = f"{unprofiled.rate:.0f} req/s unprofiled, {profiled.rate:.0f} profiled"
    print(f"{args.store} store: {rates}")
    print(f"{total} busy samples of the reactor thread")
    print(table("including what it calls", inclusive, total, args.top))
    print(table("on its own", own, total, args.top))


if __name__ == "__main__":
    main()
