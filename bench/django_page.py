"""
What a Django page of 20 cached blocks costs to render: through refresherd's
template tags (C{refreshed} alone and C{refreshed_batch}, with direct reads
from Redis and over HTTP) against the same page through Django's own cache
framework (C{django.core.cache}'s Redis backend) on the same redis-server:
C{{% cache %}} fragments, and the view's C{cache.get_many}.  Every way renders
the same HTML, checked.  One refresherd (its defaults otherwise) on a real
redis-server, one origin; each round renders the page every way in turn, one
render at a time from one thread, the ways taking turns so that the machine's
drift touches them all alike.

Each way's time is the median and p99 of every render; its ratio is the median
over the rounds of (its median in that round / the C{{% cache %}} page's median
in that round).

Run from the repository root after C{bash .ci/run} (and
C{.venv/bin/pip install ".[bench]"} for redis-py):

    .venv/bin/python -m bench.django_page [--rounds 9] [--renders 1000]

It writes its results into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import django
import redis
from django.conf import settings

from bench.client_cost import Sample, p99
from bench.shared_stores import write_section
from bench.throughput import machine, origin_server, versions
from refresherd.client import Client
from tests.harness import start_service
from tests.redis_server import RedisServer

BLOCKS = 20
STRIDE = 50
"""Renders of one way before the next way's turn."""
START, END = "<!-- bench:django_page:start -->", "<!-- bench:django_page:end -->"
HEADING = "A Django page of 20 cached blocks"
FRAGMENTS = "Django {% cache %} fragments (20 GETs)"
GET_MANY = "Django cache.get_many in the view (1 MGET)"
TAG_DIRECT = "refreshed tags, direct reads (20 MGETs)"
BATCH_DIRECT = "refreshed_batch, direct reads (1 MGET)"
BATCH_HTTP = "refreshed_batch over HTTP (1 POST /v1/fetch)"
TAG_HTTP = "refreshed tags over HTTP (20 GET /raw)"

CONFIG = """
[jobs.block]
args = ["n"]
url = "{origin}/blocks/{{n}}"
fresh = "1d"
tags = ["block:{{n}}"]
"""

PAGE = "<main>{% for n in ns %}<div>BLOCK</div>{% endfor %}</main>"
TAG = '{% refreshed "block" n=n %}-{% endrefreshed %}'
SOURCES = {
    FRAGMENTS: "{% load cache %}"
    + PAGE.replace("BLOCK", "{% cache 86400 block n %}-{% endcache %}"),
    GET_MANY: "<main>{% for block in blocks %}<div>{{ block }}</div>{% endfor %}</main>",
    TAG_DIRECT: "{% load refresherd %}" + PAGE.replace("BLOCK", TAG),
    BATCH_DIRECT: "{% load refresherd %}{% refreshed_batch %}"
    + PAGE.replace("BLOCK", TAG)
    + "{% endrefreshed_batch %}",
}
SOURCES[TAG_HTTP] = SOURCES[TAG_DIRECT]
SOURCES[BATCH_HTTP] = SOURCES[BATCH_DIRECT]


def snippet(n: int) -> bytes:
    """The HTML of block C{n}: about 1 KB, a list of links, as a sidebar or a menu."""
    items = "".join(
        f'<li><a href="/items/{n}/{i}">Item {n}.{i}</a> and a line</li>' for i in range(16)
    )
    return f'<section class="block" id="b{n}"><h2>Block {n}</h2><ul>{items}</ul></section>'.encode()


def configure(store: RedisServer) -> None:
    """Django with refresherd's app and the Redis cache backend on C{store}."""
    settings.configure(
        DEBUG=False,
        INSTALLED_APPS=["refresherd.contrib.django"],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
            }
        ],
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": store.url(),
            }
        },
        REFRESHERD={},
    )
    django.setup()


@contextmanager
def refresherd_settings(options: dict[str, Any]) -> Iterator[None]:
    """C{settings.REFRESHERD} as C{options} (the process's client rebuilt on them)."""
    from django.test.utils import override_settings

    with override_settings(REFRESHERD=options):
        yield


Render = Callable[[], str]


def ways(service_url: str, store: RedisServer) -> dict[str, tuple[dict[str, Any], Render]]:
    """Each way of rendering the page: its C{REFRESHERD} setting, and a function rendering it."""
    from django.core.cache import cache
    from django.core.cache.utils import make_template_fragment_key
    from django.template import engines
    from django.utils.safestring import mark_safe

    engine = engines["django"]
    ns = list(range(1, BLOCKS + 1))
    html = {n: snippet(n).decode() for n in ns}
    cache.set_many({make_template_fragment_key("block", [n]): html[n] for n in ns}, 86400)
    cache.set_many({f"block:{n}": html[n] for n in ns}, 86400)
    templates = {name: engine.from_string(source) for name, source in SOURCES.items()}
    http = {"URL": service_url, "TIMEOUT": 10, "TRUSTED_HTML_JOBS": ["block"]}
    direct = {**http, "REDIS_URL": store.url()}

    def render(name: str) -> Render:
        template = templates[name]
        return lambda: template.render({"ns": ns})

    def get_many() -> str:
        found = cache.get_many([f"block:{n}" for n in ns])
        blocks = [mark_safe(found[f"block:{n}"]) for n in ns]
        return templates[GET_MANY].render({"blocks": blocks})

    return {
        FRAGMENTS: (http, render(FRAGMENTS)),
        GET_MANY: (http, get_many),
        TAG_DIRECT: (direct, render(TAG_DIRECT)),
        BATCH_DIRECT: (direct, render(BATCH_DIRECT)),
        BATCH_HTTP: (http, render(BATCH_HTTP)),
        TAG_HTTP: (http, render(TAG_HTTP)),
    }


def time_renders(options: dict[str, Any], render: Render, renders: int) -> Sample:
    """The time of each of C{renders} renders (after one untimed), and the CPU time per render."""
    with refresherd_settings(options):
        render()  # the client built again: its connections, the layout
        times = []
        clock = time.perf_counter_ns
        cpu_start = time.thread_time_ns()
        for _ in range(renders):
            start = clock()
            render()
            times.append((clock() - start) / 1000)
        return Sample(times, (time.thread_time_ns() - cpu_start) / 1000 / renders)


def measure(
    service_url: str, store: RedisServer, rounds: int, renders: int
) -> dict[str, list[Sample]]:
    """C{rounds} rounds of C{renders} renders of each way, taking turns by C{STRIDE}."""
    pages = ways(service_url, store)
    expected = None
    for name, (options, render) in pages.items():
        with refresherd_settings(options):
            page = render()
            assert page == render(), name
        assert page.count('<section class="block"') == BLOCKS, (name, page[:300])
        assert expected is None or page == expected, name
        expected = page
    samples: dict[str, list[Sample]] = {name: [] for name in pages}
    for n in range(rounds):
        parts: dict[str, list[Sample]] = {name: [] for name in pages}
        for start in range(0, renders, STRIDE):
            for name, (options, render) in pages.items():
                parts[name].append(time_renders(options, render, min(STRIDE, renders - start)))
        for name, pieces in parts.items():
            times = [t for piece in pieces for t in piece.times]
            cpu = sum(piece.cpu * len(piece.times) for piece in pieces) / len(times)
            samples[name].append(Sample(times, cpu))
        medians = ", ".join(f"{statistics.median(s[-1].times):.0f}" for s in samples.values())
        print(f"bench: round {n + 1}/{rounds}: median µs {medians}", file=sys.stderr)
    return samples


def report(samples: dict[str, list[Sample]], args: argparse.Namespace) -> str:
    base_rounds = samples[FRAGMENTS]
    lines = [
        f"`python -m bench.django_page --rounds {args.rounds} --renders {args.renders}`: "
        f"{machine()}; {versions()}, Django {django.__version__}, redis-py {redis.__version__}. "
        f"Load average at the start {args.load:.1f}.",
        "",
        f"A page of {BLOCKS} blocks of about 1 KB of HTML each (`{{% for %}}` over them), "
        "every block a fresh hit, the same HTML from every way (checked); the template "
        "compiled once, rendered one at a time from one thread. Wall: the median and p99 of "
        "every render. CPU: the rendering thread's CPU time per render (the median over the "
        "rounds). Ratio: the median over the rounds of each way's median / the `{% cache %}` "
        f"page's in the same round. Within a round the ways take turns every {STRIDE} renders.",
        "",
        "| way | wall median µs | wall p99 µs | ratio to {% cache %} | CPU µs | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rounds in samples.items():
        times = [t for r in rounds for t in r.times]
        ratios = [
            statistics.median(mine.times) / statistics.median(base.times)
            for mine, base in zip(rounds, base_rounds, strict=True)
        ]
        cpu_ratios = [mine.cpu / base.cpu for mine, base in zip(rounds, base_rounds, strict=True)]
        lines.append(
            f"| {name} | {statistics.median(times):.0f} | {p99(times):.0f} "
            f"| {statistics.median(ratios):.2f}× | {statistics.median(r.cpu for r in rounds):.0f} "
            f"| {statistics.median(cpu_ratios):.2f}× |"
        )
    return "\n".join(lines)


def run(rounds: int, renders: int) -> dict[str, list[Sample]]:
    """Start Redis, an origin and refresherd, make every block a hit, and measure every way."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rfd-bench-")))
        store = RedisServer()
        store.start()
        stack.callback(store.cleanup)
        origin = stack.enter_context(origin_server())
        for n in range(1, BLOCKS + 1):
            origin.set(f"/blocks/{n}", body=snippet(n), content_type="text/html; charset=utf-8")
        config = directory / "refresherd.toml"
        config.write_text(CONFIG.format(origin=origin.url))
        service = start_service(config, "--store", store.url())
        stack.callback(service.stop)
        configure(store)
        with Client(service.url, timeout=30) as client:
            # Right after start-up, the first values' next reads may be misses again.
            items = [("block", {"n": n}) for n in range(1, BLOCKS + 1)]
            statuses: list[list[str]] = []
            while statuses[-3:] != [["hit"] * BLOCKS] * 3:
                assert len(statuses) < 100, statuses[-1]
                statuses.append([a["status"] for a in client.get_many(items)])
                time.sleep(0.05)
        return measure(service.url, store, rounds, renders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--renders", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="print, do not write the docs")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]
    text = report(run(args.rounds, args.renders), args)
    print(text)
    if not args.no_write:
        write_section(START, END, HEADING, text)


if __name__ == "__main__":
    main()
