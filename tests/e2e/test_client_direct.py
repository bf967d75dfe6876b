"""
Direct reads (docs/clients.md, "Direct reads") against a real redis-server and
a real C{twistd -n refresherd --store redis://...}: a L{Client} (and an
L{AsyncClient}, and the Django template tags with C{REFRESHERD["REDIS_URL"]})
with C{redis_url} (a read-only ACL user, as docs/security.md gives it) answers
fresh hits without an HTTP request, and sends everything else to the service.
The client's HTTP requests are counted by its transport.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.django_setup import setup_django

setup_django()

import httpx  # noqa: E402
import pytest  # noqa: E402
from django.template import Context, Template  # noqa: E402

from refresherd.client import AsyncClient, AsyncHTTPTransport, Client, direct  # noqa: E402
from refresherd.client.calls import Request, Response  # noqa: E402
from refresherd.contrib.django import get_client  # noqa: E402
from tests.harness import Origin, Service, start_origin, start_service, wait_until  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

READ = "read-token-0123"
ADMIN = "admin-token-0123"

CONFIG = """
[auth]
read_tokens = ["{read}"]
admin_tokens = ["{admin}"]

[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
stale = "1h"
version = {version}
tags = ["user:{{name}}", "users"]

[jobs.block]
args = ["n"]
url = "{origin}/blocks/{{n}}"
fresh = "1h"
stale = "1h"
tags = ["block:{{n}}"]

[jobs.flash]
args = ["name"]
url = "{origin}/flash/{{name}}"
fresh = "1s"
stale = "1h"
"""


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        server.command(
            "ACL", "SETUSER", "reader", "on", ">reader-pw", "resetkeys", "%R~rfd:*",
            "resetchannels", "-@all", "+get", "+mget",
        )  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    origin = start_origin()
    origin.default.body = b'{"n": 1}'
    yield origin
    origin.server.shutdown()


def start(tmp: Path, redis: RedisServer, origin: Origin, version: int) -> Service:
    path = tmp / f"refresherd-v{version}.toml"
    text = CONFIG.format(origin=origin.url, read=READ, admin=ADMIN, version=version)
    path.write_text(text)
    return start_service(path, "--store", redis.url())


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer, origin: Origin
) -> Iterator[Service]:
    service = start(tmp_path_factory.mktemp("direct"), redis, origin, 1)
    yield service
    assert service.stop() == 0


class Counting(httpx.BaseTransport):
    """An HTTP transport that counts the client's requests per path, sent to C{port}."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.paths: list[str] = []
        self._http = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        request.url = request.url.copy_with(port=self.port)
        return self._http.handle_request(request)

    def close(self) -> None:
        self._http.close()

    def values(self) -> list[str]:
        """The requests for values (not the layout)."""
        return [path for path in self.paths if path != "/v1/layout"]


@pytest.fixture
def reader(service: Service, redis: RedisServer) -> Iterator[tuple[Client, Counting, list[float]]]:
    transport = Counting(service.ports["public"])
    now = [0.0]
    url = f"redis://reader:reader-pw@{redis.host}:{redis.port}/0"
    with Client(
        service.url, token=READ, transport=transport, redis_url=url, clock=lambda: now[0]
    ) as client:
        yield client, transport, now


@pytest.fixture
def admin(service: Service) -> Iterator[Client]:
    with Client(service.url, service.admin_url, token=ADMIN) as client:
        yield client


def test_a_fresh_hit_is_read_in_redis_without_asking_the_service(
    reader: tuple[Client, Counting, list[float]], origin: Origin
) -> None:
    client, transport, now = reader
    first = client.get("user", name="ada")
    assert first["status"] == "miss" and transport.values() == ["/v1/jobs/user"]
    second = client.get("user", name="ada")
    assert second["status"] == "hit" and second["value"] == {"n": 1}
    assert {k: v for k, v in second.items() if k not in ("status", "age")} == {
        k: v for k, v in first.items() if k not in ("status", "age")
    }
    assert client.value("user", name="ada") == {"n": 1}
    assert transport.values() == ["/v1/jobs/user"]
    assert transport.paths.count("/v1/layout") == 1
    now[0] += direct.LAYOUT_RECHECK  # rechecked: a 304, the same layout
    assert client.get("user", name="ada")["status"] == "hit"
    assert transport.paths.count("/v1/layout") == 2 and transport.values() == ["/v1/jobs/user"]
    assert origin.count("/users/ada") == 1


@pytest.mark.parametrize(
    ("name", "purge", "soft"),
    [
        ("bob1", {"jobs": ["user"]}, False),
        ("bob2", {"jobs": ["user"]}, True),
        ("bob3", {"tags": ["user:bob3"]}, False),
        ("bob4", {"tags": ["users"]}, True),
    ],
)
def test_a_purged_value_goes_to_the_service(
    reader: tuple[Client, Counting, list[float]],
    admin: Client,
    name: str,
    purge: dict[str, Any],
    soft: bool,
) -> None:
    client, transport, _ = reader
    client.get("user", name=name)
    assert client.get("user", name=name)["status"] == "hit"
    asked = len(transport.values())
    admin.purge(soft=soft, **purge)
    answer = client.get("user", name=name)
    assert answer["status"] == ("stale" if soft else "miss")
    assert len(transport.values()) == asked + 1


def test_a_stale_or_absent_value_goes_to_the_service(
    reader: tuple[Client, Counting, list[float]],
) -> None:
    client, transport, _ = reader
    first = client.get("flash", name="x")
    assert first["status"] == "miss"
    # Past its fresh second: stale, answered by the service (which refreshes it).
    wait_until(lambda: time.time() > first["fresh_until"] + 0.05, timeout=5)
    assert client.get("flash", name="x")["status"] == "stale"
    assert client.get("user", name="nobody-yet")["status"] == "miss"
    assert transport.values() == ["/v1/jobs/flash"] * 2 + ["/v1/jobs/user"]


def test_a_version_bump_is_read_after_the_layout_recheck(
    tmp_path: Path,
    reader: tuple[Client, Counting, list[float]],
    redis: RedisServer,
    origin: Origin,
) -> None:
    client, transport, now = reader
    client.get("user", name="eve")
    assert client.get("user", name="eve")["key"] == "rfd:user:v1:name=eve"
    bumped = start(tmp_path, redis, origin, 2)
    try:
        transport.port = bumped.ports["public"]
        assert client.get("user", name="eve")["key"] == "rfd:user:v1:name=eve"  # not rechecked
        now[0] += direct.LAYOUT_RECHECK
        assert client.get("user", name="eve")["status"] == "miss"
        hit = client.get("user", name="eve")
        assert hit["status"] == "hit" and hit["key"] == "rfd:user:v2:name=eve"
        assert transport.values() == ["/v1/jobs/user"] * 2
    finally:
        assert bumped.stop() == 0


def test_redis_down_sends_reads_to_the_service(
    reader: tuple[Client, Counting, list[float]], service: Service
) -> None:
    client, transport, now = reader
    client.get("user", name="zed")
    assert client._direct is not None
    client._direct._redis = type(client._direct._redis).from_url("redis://127.0.0.1:1/0")
    assert client.get("user", name="zed")["status"] == "hit"  # from the service
    assert client.get("user", name="zed")["status"] == "hit"
    assert transport.values() == ["/v1/jobs/user"] * 3


class AsyncCounting:
    """The async client's own transport, counting the requests per path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._http = AsyncHTTPTransport()

    async def send(
        self, request: Request, headers: dict[str, str], timeout: float, connect_timeout: float
    ) -> Response:
        self.paths.append(request.path)
        return await self._http.send(request, headers, timeout, connect_timeout)

    async def aclose(self) -> None:
        await self._http.aclose()


def test_the_async_client_reads_fresh_hits_in_redis_too(
    service: Service, redis: RedisServer, admin: Client
) -> None:
    transport = AsyncCounting()
    url = f"redis://reader:reader-pw@{redis.host}:{redis.port}/0"

    async def reads() -> list[Any]:
        async with AsyncClient(
            service.url, token=READ, transport=transport, redis_url=url
        ) as client:
            answers = [await client.get("user", name="amy"), await client.get("user", name="amy")]
            answers.append(await client.value("user", name="amy"))
            admin.purge(tags=["user:amy"])
            answers.append(await client.get("user", name="amy"))
            return answers

    miss, hit, value, after_purge = asyncio.run(reads())
    assert (miss["status"], hit["status"], value, after_purge["status"]) == (
        "miss",
        "hit",
        {"n": 1},
        "miss",
    )
    assert transport.paths == ["/v1/layout", "/v1/jobs/user", "/v1/jobs/user"]


# -- the Django template tags with REFRESHERD["REDIS_URL"] ---------------------------------


@pytest.fixture
def django_sent(
    settings: Any, service: Service, redis: RedisServer, origin: Origin
) -> Iterator[list[tuple[str, int]]]:
    """
    The Django app reading the service's Redis directly: each HTTP request its
    client sends, as (path, the number of items of a batch).  Each block C{n}
    is an HTML snippet numbered by its fetch.
    """
    settings.REFRESHERD = {
        "URL": service.url,
        "TOKEN": READ,
        "REDIS_URL": f"redis://reader:reader-pw@{redis.host}:{redis.port}/0",
        "TRUSTED_HTML_JOBS": ["block"],
    }
    for n in range(1, 20):
        origin.set(f"/blocks/{n}", body=b"<p>{n}</p>", content_type="text/html; charset=utf-8")
    client = get_client()
    send = client._transport.send
    sent: list[tuple[str, int]] = []

    def counting(request: Request, *args: Any) -> Response:
        items = json.loads(request.body)["items"] if request.body else ()
        sent.append((request.path, len(items)))
        return send(request, *args)

    client._transport.send = counting  # type: ignore[method-assign,assignment]
    yield sent


def test_the_tag_renders_a_fresh_hit_read_in_redis_and_asks_the_service_otherwise(
    django_sent: list[tuple[str, int]], admin: Client, origin: Origin
) -> None:
    page = Template('{% load refresherd %}{% refreshed "block" n=1 %}-{% endrefreshed %}')
    render = lambda: page.render(Context())  # noqa: E731
    assert render() == "<p>1</p>"  # a miss: the service fetched it
    assert render() == "<p>1</p>"  # a fresh hit, read in Redis
    assert django_sent == [("/v1/layout", 0), ("/v1/jobs/block/raw", 0)]
    admin.purge(tags=["block:1"], soft=True)
    assert render() == "<p>1</p>"  # stale: from the service, which refreshes it
    assert django_sent[-1] == ("/v1/jobs/block/raw", 0) and len(django_sent) == 3
    wait_until(lambda: origin.count("/blocks/1") == 2)
    wait_until(lambda: render() == "<p>2</p>")
    asked = len(django_sent)
    assert render() == "<p>2</p>" and len(django_sent) == asked  # the refreshed value, fresh
    admin.purge(tags=["block:1"])
    assert render() == "<p>3</p>"  # purged: a miss, fetched by the service
    assert django_sent[asked:] == [("/v1/jobs/block/raw", 0)]


def test_the_batch_tag_reads_its_fresh_hits_in_redis_and_asks_the_service_for_the_rest(
    django_sent: list[tuple[str, int]], admin: Client
) -> None:
    page = Template(
        "{% load refresherd %}{% refreshed_batch %}"
        '{% for n in ns %}[{% refreshed "block" n=n %}-{% endrefreshed %}]{% endfor %}'
        "{% endrefreshed_batch %}"
    )
    render = lambda: page.render(Context({"ns": [11, 12, 13]}))  # noqa: E731
    assert render() == "[<p>1</p>][<p>1</p>][<p>1</p>]"  # three misses, in one request
    assert render() == "[<p>1</p>][<p>1</p>][<p>1</p>]"  # three fresh hits, one MGET
    assert django_sent == [("/v1/layout", 0), ("/v1/fetch", 3)]
    admin.purge(tags=["block:12"])
    admin.purge(tags=["block:13"], soft=True)
    # The purged one fetched again, the soft-purged one stale (and refreshed behind).
    assert render() == "[<p>1</p>][<p>2</p>][<p>1</p>]"
    assert django_sent[2:] == [("/v1/fetch", 2)]
