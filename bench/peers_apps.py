"""
The HTTP servers of L{bench.peers} that are not refresherd, each run in a
process of its own so that neither its threads nor the load generator's event
loop share a GIL with the other:

    python -m bench.peers_apps origin
    python -m bench.peers_apps naive --origin URL --redis URL --fresh SECONDS
    python -m bench.peers_apps dogpile --origin URL --redis URL --fresh SECONDS

Each listens on a free loopback port and prints C{listening on 127.0.0.1:PORT}
as its first line.  All are C{ThreadingHTTPServer}s (a thread per connection)
with a listen backlog of 1024, so that a burst of 1,000 connections is not
turned into SYN retries by the server's default backlog of 5.

- C{origin}: the slow origin.  C{GET /users/NAME} answers C{{"name": NAME, "n": N}}
  (N: its requests of that path so far) after the delay set for that path.
  C{POST /_delay?path=P&seconds=S} sets a delay, C{GET /_count?path=P} answers
  C{{"count": N, "arrivals": [...]}}, the Unix time of each request of that path.
- C{naive}: the pattern web applications use, with redis-py: C{GET} the key, on
  a miss call the origin and C{SET} the value with an expiry of C{--fresh}
  seconds (no stale values: an expired key is a miss).
- C{dogpile}: dogpile.cache's C{get_or_create} on its Redis backend with
  C{distributed_lock}: C{expiration_time} of C{--fresh} seconds, values kept in
  Redis for an hour so that expired ones are served while one thread regenerates.

Both caching apps serve C{GET /users/NAME} (fresh C{--fresh} seconds) and
C{GET /hot/NAME} (fresh an hour, for plain hits), both from the origin's
C{/users/NAME}.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

HOUR = 3600
MAX_CONNECTIONS = 4096
"""Redis connections per app: one per thread (redis-py's default pool stops at 100)."""

Get = Callable[[str, str], bytes]
"""Answer the body for (kind, name), kind "users" or "hot"."""


class Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


def serve(handler: type[BaseHTTPRequestHandler]) -> None:
    server = Server(("127.0.0.1", 0), handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def origin() -> None:
    arrivals: defaultdict[str, list[float]] = defaultdict(list)
    delays: dict[str, float] = {}
    lock = threading.Lock()

    class Origin(Handler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/_count":
                path = parse_qs(parts.query)["path"][0]
                with lock:
                    times = list(arrivals[path])
                self.answer(200, json.dumps({"count": len(times), "arrivals": times}).encode())
                return
            with lock:
                arrivals[parts.path].append(time.time())
                count = len(arrivals[parts.path])
            time.sleep(delays.get(parts.path, 0.0))
            name = parts.path.rpartition("/")[2]
            self.answer(200, json.dumps({"name": name, "n": count}).encode())

        def do_POST(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            delays[query["path"][0]] = float(query["seconds"][0])
            self.answer(200, b"{}")

    serve(Origin)


def app(get: Get) -> None:
    class App(Handler):
        def do_GET(self) -> None:
            kind, _, name = self.path.lstrip("/").partition("/")
            if kind not in ("users", "hot") or not name:
                self.answer(404, b'{"error": "not_found"}')
                return
            try:
                body = get(kind, name)
            except Exception as error:  # any failure of the pattern answers 502
                message = f"{type(error).__name__}: {error}"
                print(f"502 {self.path}: {message}", file=sys.stderr, flush=True)
                self.answer(502, json.dumps({"error": message}).encode())
                return
            self.answer(200, body)

    serve(App)


def fetcher(origin_url: str) -> Callable[[str], bytes]:
    def fetch(name: str) -> bytes:
        with urllib.request.urlopen(f"{origin_url}/users/{name}", timeout=30) as response:
            body: bytes = response.read()
            return body

    return fetch


def naive(origin_url: str, redis_url: str, fresh: float) -> Get:
    import redis

    client = redis.Redis.from_url(redis_url, max_connections=MAX_CONNECTIONS)
    fetch = fetcher(origin_url)

    def get(kind: str, name: str) -> bytes:
        key = f"naive:{kind}:{name}"
        value = cast(bytes | None, client.get(key))
        if value is None:
            value = fetch(name)
            client.set(key, value, px=int(1000 * (fresh if kind == "users" else HOUR)))
        return value

    return get


def dogpile(origin_url: str, redis_url: str, fresh: float) -> Get:
    from dogpile.cache import make_region

    address = urlsplit(redis_url)
    fetch = fetcher(origin_url)
    regions = {
        kind: make_region().configure(
            "dogpile.cache.redis",
            expiration_time=expiration,
            arguments={
                "host": address.hostname,
                "port": address.port,
                "db": int(address.path.lstrip("/") or 0),
                "redis_expiration_time": 2 * HOUR,
                "distributed_lock": True,
                "thread_local_lock": False,
                "lock_timeout": 60,
                "connection_kwargs": {"max_connections": MAX_CONNECTIONS},
            },
        )
        for kind, expiration in (("users", fresh), ("hot", HOUR))
    }

    def get(kind: str, name: str) -> bytes:
        value: bytes = regions[kind].get_or_create(f"{kind}:{name}", lambda: fetch(name))
        return value

    return get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["origin", "naive", "dogpile"])
    parser.add_argument("--origin", help="the origin's URL")
    parser.add_argument("--redis", help="redis://host:port/db")
    parser.add_argument("--fresh", type=float, default=5.0, help="seconds")
    args = parser.parse_args()
    if args.kind == "origin":
        origin()
    else:
        make = naive if args.kind == "naive" else dogpile
        app(make(args.origin, args.redis, args.fresh))


if __name__ == "__main__":
    main()
