"""
A real C{redis-server} for tests: started on a free loopback port, stopped,
killed, paused or restarted on the same port, always cleaned up.

    with RedisServer(password="pw") as server:  # started, and cleaned up after
        server.command("SET", "k", b"v")

L{RedisServer.command} is a tiny blocking RESP client, for checking what is
really in Redis (raw bytes, TTLs) without going through the store under test.

A server may also listen with TLS (L{RedisServer.tls}: certificates of a test
CA, L{TLSFiles}) on C{tls_port}, and on a UNIX socket
(L{RedisServer.unix_socket}); its plain loopback port stays open beside them,
for L{RedisServer.command}.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import attrs
import trustme

REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")
REDIS_SENTINEL = os.environ.get("REDIS_SENTINEL", "redis-sentinel")

Reply = bytes | int | None | list["Reply"]


class RedisReplyError(Exception):
    """Redis answered a command with an error reply."""


def free_port() -> int:
    """A loopback TCP port that nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.frozen
class TLSFiles:
    """
    PEM files of a test CA (trustme) in a directory: the CA's certificate, a
    server certificate and key for C{127.0.0.1} and C{localhost}, and a client
    certificate and key.
    """

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    @classmethod
    def make(cls, directory: str, name: str = "test") -> TLSFiles:
        authority = trustme.CA()
        server = authority.issue_cert("127.0.0.1", "localhost")
        client = authority.issue_cert("refresherd@test.example")
        paths = {
            field: os.path.join(directory, f"{name}-{field}.pem")
            for field in ("ca", "server_cert", "server_key", "client_cert", "client_key")
        }
        authority.cert_pem.write_to_path(paths["ca"])
        server.cert_chain_pems[0].write_to_path(paths["server_cert"])
        server.private_key_pem.write_to_path(paths["server_key"])
        client.cert_chain_pems[0].write_to_path(paths["client_cert"])
        client.private_key_pem.write_to_path(paths["client_key"])
        return cls(**paths)


@attrs.frozen
class ServerTLS:
    """A server's TLS: its certificates, and whether clients must show one of that CA."""

    certificates: TLSFiles
    client_certificates: bool = False


@attrs.define(eq=False)
class RedisServer:
    """
    One C{redis-server} process on C{127.0.0.1}, persisting nothing.

    @ivar args: further command-line options, such as C{["--maxmemory", "1mb"]}.
    @ivar password: the C{requirepass} of the server, or L{None}.
    @ivar port: the port, chosen by L{start} the first time; kept by L{restart}.
    @ivar tls: listen with TLS too, on C{tls_port} (chosen as C{port} is).
    @ivar unix: listen on a UNIX socket too, at L{unix_socket}.
    """

    args: Sequence[str] = ()
    password: str | None = attrs.field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    start_timeout: float = 10.0
    tls: ServerTLS | None = None
    tls_port: int = 0
    unix: bool = False
    _process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)
    _dir: str | None = attrs.field(default=None, init=False)

    def url(self, db: int = 0, password: str | None = None) -> str:
        """A C{redis://} URL of this server, with C{password} if given."""
        auth = f":{password}@" if password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    @property
    def unix_socket(self) -> str:
        """The path of the UNIX socket (with L{unix}), known once started."""
        assert self._dir is not None
        return os.path.join(self._dir, "redis.sock")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """
        Start the server and wait until it answers; on a port found free,
        retried when another process takes that port first.
        """
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="rfd-redis-")
        attempts = 1 if self.port else 5
        for _ in range(attempts):
            port = self.port or free_port()
            if self.tls is not None and not self.tls_port:
                tls_port = free_port()
            else:
                tls_port = self.tls_port
            if self._spawn(port, tls_port):
                self.port, self.tls_port = port, tls_port
                return
        raise RuntimeError(f"redis-server did not start on {self.host}:{port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers) and wait for its exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
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

    def resume(self) -> None:
        """Undo L{pause}."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop the server, then start a new one on the same port (with no data)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        """The server, started; cleaned up when the block ends."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def command(self, *args: str | bytes | int, db: int = 0) -> Reply:
        """Run one command on a fresh connection (after AUTH and SELECT) and return its reply."""
        return _command(self.host, self.port, self.password, db, args)

    @contextmanager
    def subscribed(self, channel: str) -> Iterator[Callable[[], Reply]]:
        """
        Subscribe to C{channel} on a connection of its own, and yield a function
        that returns the next message (C{[b"message", channel, data]}), waiting
        at most 5 s for it.
        """
        with (
            socket.create_connection((self.host, self.port), timeout=5) as sock,
            sock.makefile("rb") as reader,
        ):
            if self.password is not None:
                sock.sendall(_encode(("AUTH", self.password)))
                _read(reader)
            sock.sendall(_encode(("SUBSCRIBE", channel)))
            _read(reader)
            yield lambda: _read(reader)

    def _spawn(self, port: int, tls_port: int) -> bool:
        """Run redis-server on C{port}; whether it came up (False: a port was taken)."""
        assert self._dir is not None
        argv = self._argv(port)
        if self.password is not None:
            argv += ["--requirepass", self.password]
        if self.tls is not None:
            files = self.tls.certificates
            argv += [
                "--tls-port",
                str(tls_port),
                "--tls-cert-file",
                files.server_cert,
                "--tls-key-file",
                files.server_key,
                "--tls-ca-cert-file",
                files.ca,
                "--tls-auth-clients",
                "yes" if self.tls.client_certificates else "no",
            ]
        if self.unix:
            argv += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
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
                    sock.sendall(_encode(("PING",)))
                    if sock.recv(64)[:1] in (b"+", b"-"):
                        return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        return False

    def _argv(self, port: int) -> list[str]:
        assert self._dir is not None
        return [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--loglevel",
            "warning",
            *self.args,
        ]


@attrs.define(eq=False)
class SentinelServer(RedisServer):
    """
    One C{redis-sentinel} process on C{127.0.0.1} (announcing that address),
    monitoring C{service} on C{primary}, with a quorum of C{quorum}; a failover
    takes a few seconds (C{down-after-milliseconds} C{down_after}, a short
    C{failover-timeout}).  Its configuration is a file of its own, which
    Sentinel rewrites.  C{password} is the sentinel's own (C{requirepass});
    C{auth_pass} the monitored servers'.
    """

    primary: RedisServer | None = None
    service: str = "rfd"
    quorum: int = 2
    down_after: int = 500
    failover_timeout: int = 2000
    auth_pass: str | None = attrs.field(default=None, repr=False)
    monitor_tls: bool = False
    """Reach the monitored servers over TLS, on the primary's C{tls_port}."""

    def _argv(self, port: int) -> list[str]:
        assert self._dir is not None and self.primary is not None
        name = self.service
        primary_port = self.primary.tls_port if self.monitor_tls else self.primary.port
        lines = [
            f"port {port}",
            f"bind {self.host}",
            f"dir {self._dir}",
            "loglevel warning",
            f"sentinel announce-ip {self.host}",
            f"sentinel monitor {name} {self.primary.host} {primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after}",
            f"sentinel failover-timeout {name} {self.failover_timeout}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.monitor_tls:
            lines.append("tls-replication yes")
        if self.auth_pass is not None:
            lines.append(f"sentinel auth-pass {name} {self.auth_pass}")
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        config = os.path.join(self._dir, f"sentinel-{port}.conf")
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
        return [REDIS_SENTINEL, config]

    def primary_address(self) -> tuple[str, int] | None:
        """Where this sentinel says the primary of its service is now."""
        reply = self.command("SENTINEL", "get-master-addr-by-name", self.service)
        if not isinstance(reply, list):
            return None
        host, port = reply
        assert isinstance(host, bytes) and isinstance(port, bytes)
        return host.decode(), int(port)


def sentinel_url(
    sentinels: Sequence[RedisServer], service: str = "rfd", db: int = 0, auth: str = ""
) -> str:
    """The C{redis+sentinel://} URL of these sentinels (C{auth}: C{:password@})."""
    hosts = ",".join(f"{s.host}:{s.port}" for s in sentinels)
    return f"redis+sentinel://{auth}{hosts}/{service}/{db}"


def _command(
    host: str, port: int, password: str | None, db: int, args: Sequence[str | bytes | int]
) -> Reply:
    with (
        socket.create_connection((host, port), timeout=5) as sock,
        sock.makefile("rb") as reader,
    ):
        prelude: list[Sequence[str | bytes | int]] = []
        if password is not None:
            prelude.append(("AUTH", password))
        if db:
            prelude.append(("SELECT", db))
        for command in [*prelude, args]:
            sock.sendall(_encode(command))
            reply = _read(reader)
        return reply


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read(reader: BinaryIO) -> Reply:
    line = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisReplyError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return reader.read(size + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read(reader) for _ in range(count)]
    raise RedisReplyError(f"unexpected reply {line!r}")


@attrs.define(eq=False)
class SentinelSet:
    """
    A primary, a replica of it and C{count} sentinels monitoring it as
    C{service}, started and ready (every sentinel knows the replica and the
    other sentinels, so a failover can happen); all cleaned up after.

        with SentinelSet() as group:
            group.primary.kill()
            group.wait_for_failover()
    """

    count: int = 3
    service: str = "rfd"
    password: str | None = attrs.field(default=None, repr=False)
    primary: RedisServer = attrs.field(init=False)
    replica: RedisServer = attrs.field(init=False)
    sentinels: list[SentinelServer] = attrs.field(init=False, factory=list)

    def __enter__(self) -> SentinelSet:
        self.primary = RedisServer(password=self.password)
        try:
            self.primary.start()
            args = ["--replicaof", self.primary.host, str(self.primary.port)]
            if self.password is not None:
                args += ["--masterauth", self.password]
            self.replica = RedisServer(args, password=self.password)
            self.replica.start()
            for _ in range(self.count):
                sentinel = SentinelServer(
                    primary=self.primary, service=self.service, auth_pass=self.password
                )
                self.sentinels.append(sentinel)
                sentinel.start()
            self.wait_ready()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        for server in [*self.sentinels, getattr(self, "replica", None), self.primary]:
            if server is not None:
                server.cleanup()

    def url(self, db: int = 0, auth: str = "") -> str:
        """The C{redis+sentinel://} URL of the service."""
        return sentinel_url(self.sentinels, self.service, db, auth)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """
        Wait until the replica is in sync and every sentinel knows it and the
        other sentinels.
        """
        deadline = time.monotonic() + timeout
        while True:
            info = self.replica.command("INFO", "replication")
            synced = isinstance(info, bytes) and b"master_link_status:up" in info
            if synced and all(self._knows_all(s) for s in self.sentinels):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not discover each other and the replica")
            time.sleep(0.1)

    def _knows_all(self, sentinel: SentinelServer) -> bool:
        replicas = sentinel.command("SENTINEL", "replicas", self.service)
        others = sentinel.command("SENTINEL", "sentinels", self.service)
        return (
            isinstance(replicas, list)
            and len(replicas) == 1
            and isinstance(others, list)
            and len(others) == self.count - 1
        )

    def wait_for_failover(self, timeout: float = 20.0) -> float:
        """
        Seconds until every sentinel that runs names the replica as the primary,
        and the replica says it is one.
        """
        began = time.monotonic()
        want = (self.replica.host, self.replica.port)
        while True:
            role = self.replica.command("ROLE")
            if (
                isinstance(role, list)
                and role[0] == b"master"
                and all(s.primary_address() == want for s in self.sentinels if s.running)
            ):
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"no failover to the replica within {timeout:g} s")
            time.sleep(0.05)
