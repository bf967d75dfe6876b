"""
A real C{memcached} for tests: started on a free loopback port, stopped,
killed, paused or restarted on the same port, always cleaned up.

    with MemcachedServer(item_limit="2m") as server:  # started, and cleaned up after
        server.set(b"k", b"v")

Its C{get}, C{set}, C{delete}, C{stats} and C{metadump} are a tiny blocking
client, for checking what is really in memcached (raw bytes, expiry times,
command counts) without going through the store under test.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from urllib.parse import unquote

import attrs

MEMCACHED = os.environ.get("MEMCACHED", "memcached")


def free_port() -> int:
    """A loopback TCP port that nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.define(eq=False)
class MemcachedServer:
    """
    One C{memcached} process on C{127.0.0.1}, with 64 MB of memory, no UDP.

    @ivar item_limit: its C{-I} (such as C{"2m"}), or None for memcached's 1 MiB.
    @ivar args: further command-line options.
    @ivar port: the port, chosen by L{start} the first time; kept by L{restart}.
    """

    item_limit: str | None = None
    args: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 0
    start_timeout: float = 10.0
    _process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, **params: object) -> str:
        query = "&".join(f"{name}={value}" for name, value in params.items())
        return f"memcached://{self.address}" + (f"?{query}" if query else "")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """
        Start the server and wait until it answers C{version}; on a port found
        free, retried when another process takes that port first.
        """
        attempts = 1 if self.port else 5
        port = self.port
        for _ in range(attempts):
            port = self.port or free_port()
            if self._spawn(port):
                self.port = port
                return
        raise RuntimeError(f"memcached did not start on {self.host}:{port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers) and wait for its exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        # The signal is delivered asynchronously: wait until every thread has stopped.
        tasks = f"/proc/{self._process.pid}/task"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.path.isdir(tasks):
            states = []
            for task in os.listdir(tasks):
                with open(f"{tasks}/{task}/stat") as stat:
                    states.append(stat.read().rpartition(")")[2].split()[0])
            if all(state in ("T", "t") for state in states):
                return
            time.sleep(0.005)

    def resume(self) -> None:
        """Undo L{pause}."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop the server, then start a new one on the same port (with no data)."""
        self.stop()
        self.start()

    cleanup = stop

    def __enter__(self) -> MemcachedServer:
        """The server, started; cleaned up when the block ends."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # -- a tiny blocking client ----------------------------------------------

    def request(self, command: bytes, data: bytes | None = None, until: bytes = b"") -> bytes:
        """
        Send one command (and its data block), and return the reply: one line,
        or the lines up to and including the line C{until} (no values).
        """
        with (
            socket.create_connection((self.host, self.port), timeout=5) as sock,
            sock.makefile("rb") as reader,
        ):
            sock.sendall(command + b"\r\n" + (b"" if data is None else data + b"\r\n"))
            reply = line = reader.readline()
            if line.startswith((b"BUSY", b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
                return reply
            while until and line not in (b"", until + b"\r\n"):
                line = reader.readline()
                reply += line
            return reply

    def get(self, key: bytes) -> bytes | None:
        """The value of C{key}, or None."""
        with (
            socket.create_connection((self.host, self.port), timeout=5) as sock,
            sock.makefile("rb") as reader,
        ):
            sock.sendall(b"get " + key + b"\r\n")
            header = reader.readline()
            if header == b"END\r\n":
                return None
            size = int(header.split()[3])
            value = reader.read(size + 2)[:-2]
            assert reader.readline() == b"END\r\n"
            return value

    def set(self, key: bytes, value: bytes, exptime: int = 0) -> bytes:
        return self.request(b"set %s 0 %d %d" % (key, exptime, len(value)), value).strip()

    def delete(self, key: bytes) -> bytes:
        return self.request(b"delete " + key).strip()

    def stats(self, arg: str = "") -> dict[str, str]:
        reply = self.request(b"stats" + (b" " + arg.encode() if arg else b""), until=b"END")
        stats = {}
        for line in reply.decode().splitlines():
            if line.startswith("STAT "):
                _, name, value = line.split(" ", 2)
                stats[name] = value
        return stats

    def metadump(self) -> dict[str, dict[str, str]]:
        """
        Every item's metadata (C{lru_crawler metadump all}), by key; retried
        while memcached's crawler is busy with a crawl of its own.
        """
        for _ in range(100):
            reply = self.request(b"lru_crawler metadump all", until=b"END")
            if not reply.startswith(b"BUSY"):
                break
            time.sleep(0.05)
        items = {}
        for line in reply.decode().splitlines():
            if line.startswith("key="):
                fields = dict(field.split("=", 1) for field in line.split())
                items[unquote(fields["key"])] = fields
        return items

    def item(self, key: str) -> dict[str, str]:
        """
        The metadata of one item (C{exp}, C{size}, ...).  A crawl can miss an
        item that memcached moves between its LRUs meanwhile, so it is retried.
        """
        for _ in range(50):
            found = self.metadump().get(key)
            if found is not None:
                return found
            time.sleep(0.05)
        raise KeyError(key)

    def _spawn(self, port: int) -> bool:
        """Run memcached on C{port}; whether it came up (False: the port was taken)."""
        argv = [MEMCACHED, "-l", self.host, "-p", str(port), "-U", "0", "-m", "64"]
        if self.item_limit is not None:
            argv += ["-I", self.item_limit]
        if os.geteuid() == 0:
            argv += ["-u", pwd.getpwuid(0).pw_name]
        argv += list(self.args)
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            try:
                with socket.create_connection((self.host, port), timeout=1) as sock:
                    sock.sendall(b"version\r\n")
                    if sock.recv(64).startswith(b"VERSION "):
                        return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        return False


@contextlib.contextmanager
def running_pool(count: int) -> Iterator[list[MemcachedServer]]:
    """C{count} memcached servers started, and cleaned up afterwards."""
    servers = [MemcachedServer() for _ in range(count)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.cleanup()
