"""
Real parts for end-to-end tests: an origin HTTP server that counts its
requests, and C{twistd -n refresherd} started as a user starts it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import httpx

TWISTD = str(Path(sys.executable).with_name("twistd"))
LISTENING = re.compile(r"refresherd: (public|admin) API listening on ([\d.]+):(\d+)")


@attrs.define
class Behaviour:
    status: int = 200
    body: bytes = b'{"ok": true}'
    content_type: str = "application/json"
    delay: float = 0.0
    headers: dict[str, str] = attrs.field(factory=dict)
    """More headers of its answers (caching headers, an ETag...)."""
    not_modified: bool = False
    """Answer 304 (with C{headers}, no body) when C{If-None-Match} names C{headers["ETag"]}."""
    gate: threading.Event | None = None
    """Answer only once it is set (at most a minute later): a fetch held under way for as
    long as a test needs it to be, however slow the machine."""


@attrs.define
class Origin:
    """
    A threaded HTTP origin on a free loopback port; behaviour, counts and the
    bodies it sent, per path.
    """

    server: ThreadingHTTPServer
    behaviours: dict[str, Behaviour] = attrs.field(factory=dict)
    default: Behaviour = attrs.field(factory=Behaviour)
    """How it answers a path not in C{behaviours}."""
    hits: Counter[str] = attrs.field(factory=Counter)
    sent: dict[str, list[bytes]] = attrs.field(factory=dict)
    conditions: dict[str, list[str | None]] = attrs.field(factory=dict)
    """The C{If-None-Match} of each request, per path (None: not conditional)."""
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def set(self, path: str, **changes: Any) -> None:
        self.behaviours[path] = attrs.evolve(self.behaviours.get(path, Behaviour()), **changes)

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]

    def bodies(self, path: str) -> list[bytes]:
        """The bodies of the answers it began to send for C{path}, in order."""
        with self.lock:
            return list(self.sent.get(path, ()))


class OriginServer(ThreadingHTTPServer):
    """
    A thread per connection, and a listen backlog as long as a real server's:
    Python's default of 5 drops connections opened in a burst (the client
    tries again a second later).
    """

    daemon_threads = True
    request_queue_size = 128


def start_origin() -> Origin:
    origin: Origin

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            condition = self.headers.get("If-None-Match")
            with origin.lock:
                origin.hits[path] += 1
                origin.conditions.setdefault(path, []).append(condition)
            behaviour = origin.behaviours.get(path, origin.default)
            if behaviour.delay:
                time.sleep(behaviour.delay)
            if behaviour.gate is not None:
                behaviour.gate.wait(60)
            if behaviour.not_modified and condition == behaviour.headers.get("ETag"):
                self.send_response(304)
                for name, value in behaviour.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                return
            body = behaviour.body.replace(b"{n}", str(origin.count(path)).encode())
            with origin.lock:
                origin.sent.setdefault(path, []).append(body)
            self.send_response(behaviour.status)
            self.send_header("Content-Type", behaviour.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in behaviour.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = OriginServer(("127.0.0.1", 0), Handler)
    origin = Origin(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return origin


@attrs.define
class Service:
    """A running C{twistd -n refresherd} and what it printed."""

    process: subprocess.Popen[str]
    lines: list[str] = attrs.field(factory=list)
    ports: dict[str, int] = attrs.field(factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['public']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def run_twistd(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "refresherd", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def start_service(config: Path, *args: str, env: dict[str, str] | None = None) -> Service:
    """Start refresherd on free ports and wait until it says where both listeners are."""
    process = run_twistd(
        "--config",
        str(config),
        "--listen",
        "tcp:0:interface=127.0.0.1:backlog=512",
        "--admin-listen",
        "tcp:0:interface=127.0.0.1",
        *args,
        cwd=config.parent,
        env=env,
    )
    service = Service(process)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            service.lines.append(line)
            match = LISTENING.search(line)
            if match:
                service.ports[match.group(1)] = int(match.group(3))
                if len(service.ports) == 2:
                    ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or len(service.ports) < 2:
        service.stop()
        raise AssertionError("refresherd did not start:\n" + service.output())
    return service


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def statuses(responses: Iterator[httpx.Response]) -> list[str]:
    return [r.json()["status"] for r in responses]
