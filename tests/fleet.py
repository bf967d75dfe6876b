"""
A fleet of C{twistd -n refresherd} processes for fault injection, all with one
job, C{item}, whose values name their key and the origin's count of that
key's fetches, so that every value a client gets can be checked against what
the origin really sent for that key; and where its keys are in the stores.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import attrs

from refresherd.core.policy import lease_ttl
from tests.harness import Origin, Service, start_service, wait_until
from tests.load import Load
from tests.redis_server import RedisServer

JOB = """
[jobs.item]
args = ["k"]
url = "{origin}{prefix}/items/{{k}}"
fresh = "{fresh}"
stale = "{stale}"
wait_timeout = "{wait_timeout}"
timeout = "{timeout}"
early_refresh = 0
"""

TIMEOUT = 1.0
"""The job's fetch timeout (one attempt, no retry), so that a lease lives LEASE seconds."""
LEASE = lease_ttl(TIMEOUT, 0)
"""How long a lease of job C{item} lives in the store."""
STORE_DEADLINE = 2.0
"""The deadline of every call refresherd makes to Redis or memcached (docs/README.md)."""


def entry_key(key: str) -> str:
    """The store key of job C{item}'s entry for C{k=key} (docs/store-format.md)."""
    return f"rfd:item:v1:k={key}"


def lease_key(key: str) -> str:
    """The key of its lease (docs/redis.md, docs/memcached.md)."""
    return f"rfd:lease:item:v1:k={key}"


def leases(redis: RedisServer) -> list[str]:
    """Every lease key in Redis."""
    found = redis.command("KEYS", "rfd:lease:*")
    assert isinstance(found, list)
    return sorted(k.decode() for k in found if isinstance(k, bytes))


def no_lease_left(redis: RedisServer, within: float = 1.0) -> None:
    """
    Fail unless Redis holds no lease within C{within} seconds (the fetches
    under way end meanwhile): every lease was released or never taken.
    """
    found: list[str] = []

    def none() -> bool:
        found[:] = leases(redis)
        return not found

    try:
        wait_until(none, timeout=within)
    except AssertionError:
        raise AssertionError(f"{len(found)} leases left in Redis: {found[:5]}") from None


@attrs.define
class Fleet:
    """Starts refresherd processes with job C{item}; kills them all when the test ends."""

    tmp_path: Path
    origin: Origin
    services: list[Service] = attrs.field(factory=list)
    prefixes: set[str] = attrs.field(factory=set)

    def start(
        self,
        store: str,
        *,
        prefix: str = "",
        fresh: str = "500ms",
        stale: str = "2s",
        wait_timeout: str = "3s",
        timeout: float = TIMEOUT,
    ) -> Service:
        """
        One process on C{store}, fetching C{item} from the origin's
        C{{prefix}/items/{k}} (a prefix per process lets a test make the
        origin behave differently for each).
        """
        config = self.tmp_path / f"refresherd-{len(self.services)}.toml"
        config.write_text(
            JOB.format(
                origin=self.origin.url,
                prefix=prefix,
                fresh=fresh,
                stale=stale,
                wait_timeout=wait_timeout,
                timeout=f"{timeout}s",
            )
        )
        self.prefixes.add(prefix)
        service = start_service(config, "--store", store)
        self.services.append(service)
        return service

    def serve(self, keys: Sequence[str], prefix: str = "", **behaviour: Any) -> None:
        """Have the origin answer C{keys} under C{prefix} with their values so (delay, status)."""
        self.prefixes.add(prefix)
        for key in keys:
            body = b'{"key": "' + key.encode() + b'", "n": {n}}'
            self.origin.set(f"{prefix}/items/{key}", body=body, **behaviour)

    def produced(self, key: str) -> list[Any]:
        """Every value the origin sent for C{key}, under any prefix."""
        return [
            json.loads(body)
            for prefix in sorted(self.prefixes)
            for body in self.origin.bodies(f"{prefix}/items/{key}")
        ]

    def fetches(self) -> int:
        """How many requests the origin has had, for any key."""
        with self.origin.lock:
            return sum(self.origin.hits.values())

    def when_fetching(self, fault: Callable[[], None]) -> None:
        """
        Inject C{fault} as soon as a fetch reaches the origin: while its
        process holds the key's lease (if the origin's delay gives time enough).
        """
        before = self.fetches()
        wait_until(lambda: self.fetches() > before, timeout=10, interval=0.002)
        fault()

    def newest(self, key: str) -> int:
        """The count in the newest value the origin sent for C{key} (0: none yet)."""
        return max((value["n"] for value in self.produced(key)), default=0)

    def kill_all(self) -> None:
        """Kill every process (SIGKILL), frozen ones too."""
        for service in self.services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGCONT)
                service.process.kill()
            try:
                service.process.wait(10)
            except subprocess.TimeoutExpired:
                pass


def recovery(
    fleet: Fleet, load: Load, keys: Collection[str], timeout: float
) -> tuple[float | None, set[str]]:
    """
    Seconds until every key was answered a hit (read from the store) with a
    value the origin sent from now on, or None after C{timeout}; and the keys
    not recovered by then.
    """
    since = load.now()
    floor = {key: fleet.newest(key) for key in keys}
    limit = time.monotonic() + timeout
    while True:
        fresh = {
            o.key
            for o in load.results(since)
            if o.status_of_value == "hit" and o.body["value"]["n"] > floor[o.key]
        }
        if fresh >= set(keys):
            return load.now() - since, set()
        if time.monotonic() > limit:
            return None, set(keys) - fresh
        time.sleep(0.05)
