"""
The processes of L{bench.peers}: the origin, the naive and dogpile.cache apps
(L{bench.peers_apps}), refresherd (one process, or C{--workers N}) and nginx,
each started on free loopback ports in a session of its own (so that a Ctrl-C
reaches only the benchmark, which then stops them), and stopped with
everything it forked even when the benchmark fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import attrs

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))
NGINX_TEMPLATE = Path(__file__).with_name("nginx.conf.template")
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
RFD_LISTENING = re.compile(r"refresherd: (public|admin) API listening on [\d.]+:(\d+)")
RFD_SERVING = re.compile(r"refresherd: worker (\d+) \(pid \d+\) serving the public API")


@attrs.define(eq=False)
class Process:
    """A started server process and what it printed (drained by a thread)."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    @classmethod
    def start(
        cls, name: str, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> Process:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        process = cls(name, popen)
        threading.Thread(target=process._drain, daemon=True).start()
        return process

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout:
            for line in self.popen.stdout:
                with self.lock:
                    self.lines.append(line)

    def output(self) -> str:
        with self.lock:
            return "".join(self.lines)

    def wait_for(self, ready: Callable[[str], bool], timeout: float = 30.0) -> str:
        """Wait until C{ready} holds of the output so far; the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if ready(out):
                return out
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.output()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL; and SIGKILL to anything left in its session (its workers)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def python_server(name: str, *args: str) -> tuple[Process, int]:
    """One of L{bench.peers_apps}'s servers, and its port."""
    process = Process.start(name, [sys.executable, "-m", "bench.peers_apps", *args], cwd=ROOT)
    out = process.wait_for(lambda out: LISTENING.search(out) is not None)
    return process, int(LISTENING.search(out).group(1))  # type: ignore[union-attr]


@attrs.define(eq=False)
class Origin:
    """The slow origin in its own process: delays and request counts per path."""

    process: Process
    port: int

    @classmethod
    def start(cls) -> Origin:
        return cls(*python_server("origin", "origin"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_delay(self, path: str, seconds: float) -> None:
        request = urllib.request.Request(
            f"{self.url}/_delay?path={quote(path)}&seconds={seconds}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def arrivals(self, path: str) -> list[float]:
        """The Unix time of each request of C{path} so far."""
        with urllib.request.urlopen(f"{self.url}/_count?path={quote(path)}", timeout=10) as r:
            times: list[float] = json.load(r)["arrivals"]
            return times

    def count(self, path: str) -> int:
        return len(self.arrivals(path))

    def stop(self) -> None:
        self.process.stop()


def refresherd(
    name: str, config: Path, store: str, workers: int = 1, env: dict[str, str] | None = None
) -> tuple[Process, int]:
    """C{twistd -n refresherd} (with C{--workers} if more than 1) on free ports; its public port."""
    argv = [TWISTD, "-n", "--pidfile=", "refresherd", "--config", str(config)]
    argv += ["--listen", "tcp:0:interface=127.0.0.1:backlog=1024"]
    argv += ["--admin-listen", "tcp:0:interface=127.0.0.1", "--store", store]
    if workers > 1:
        argv += ["--workers", str(workers)]

    def ready(out: str) -> bool:
        listening = {m[1] for m in RFD_LISTENING.finditer(out)} == {"public", "admin"}
        serving = workers == 1 or len({m[1] for m in RFD_SERVING.finditer(out)}) == workers
        return listening and serving

    process = Process.start(name, argv, cwd=config.parent, env=env)
    out = process.wait_for(ready)
    ports = {m[1]: int(m[2]) for m in RFD_LISTENING.finditer(out)}
    return process, ports["public"]


def render(template: str, values: dict[str, str]) -> str:
    """Replace every C{@NAME@} of C{template} (nginx uses C{$} and braces itself)."""

    def value(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return re.sub(r"@([A-Z_]+)@", value, template)


def nginx(
    directory: Path,
    origin: Origin | int,
    fresh: float,
    template: Path = NGINX_TEMPLATE,
    workers: int = 1,
) -> tuple[Process, int]:
    """
    nginx with C{proxy_cache} in front of C{origin} (or the server on that
    port), in C{directory}; its port.  C{template}: L{NGINX_TEMPLATE}, or
    another with the same placeholders (and C{@WORKERS@}: C{workers}).
    """
    origin_port = origin if isinstance(origin, int) else origin.port
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = free_port()
        conf = directory / "nginx.conf"
        conf.write_text(
            render(
                template.read_text(),
                {
                    "PREFIX": str(directory),
                    "PORT": str(port),
                    "ORIGIN_PORT": str(origin_port),
                    "FRESH": f"{fresh:g}",
                    "WORKERS": str(workers),
                    "USER": "user root;" if os.geteuid() == 0 else "",
                },
            )
        )
        log = directory / "error.log"
        argv = ["nginx", "-p", str(directory), "-c", str(conf), "-e", str(log)]
        process = Process.start("nginx", [*argv, "-g", "daemon off;"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.popen.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process, port
            except OSError:
                time.sleep(0.05)
        process.stop()
        if "Address already in use" not in log.read_text(errors="replace"):
            break
    raise RuntimeError("nginx did not start:\n" + (directory / "error.log").read_text())


def version(argv: list[str], pattern: str) -> str:
    """The version a command prints (on stdout or stderr), or C{"?"}."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "?"
