"""
L{refresherd.client} against a live C{twistd -n refresherd} (memory store,
read, write and admin tokens) and a real origin: no mocks.  One service for
the module; each test uses values of its own.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refresherd.client import (
    AsyncClient,
    BadArgs,
    CircuitOpen,
    Client,
    FetchFailed,
    Forbidden,
    Pending,
    ServiceError,
    Unauthorized,
    UnknownJob,
    Unreachable,
)
from tests.appengine_example import appengine_app, call
from tests.harness import Origin, Service, start_origin, start_service, wait_until

READ = "read-token-0123"
WRITE = "write-token-0123"
ADMIN = "admin-token-0123"

CONFIG = """
[auth]
read_tokens = ["{read}"]
write_tokens = ["{write}"]
admin_tokens = ["{admin}"]

[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1h"
stale = "1h"
tags = ["user:{{name}}"]

[jobs.snippet]
args = ["id"]
url = "{origin}/snippets/{{id}}"
fresh = "1h"
on_miss = "empty"

[jobs.image]
url = "{origin}/image"
fresh = "1h"

[jobs.broken]
url = "{origin}/broken"
fresh = "1h"
error_ttl = "1s"

[jobs.file]
args = ["path"]
url = "{origin}/files/{{path}}"
path_slash = true
fresh = "1h"

[jobs.motd]
args = ["lang"]
url = "{origin}/motd/{{lang}}"
fresh = "1h"
writable = true

# The jobs of examples/appengine, on the test origin.
[jobs.rates]
args = ["base"]
arg_patterns = {{ base = "[A-Z]{{3}}" }}
url = "{origin}/rates/{{base}}"
fresh = "1h"

[jobs.banner]
url = "{origin}/banner"
fresh = "1h"
on_miss = "empty"
"""

PNG = b"\x89PNG\r\n\x1a\n\x00\xff\xfe"


@pytest.fixture(scope="module")
def origin_server() -> Iterator[Origin]:
    origin = start_origin()
    origin.set("/broken", status=500, body=b"down")
    origin.set("/image", body=PNG, content_type="image/png")
    yield origin
    origin.server.shutdown()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, origin_server: Origin) -> Iterator[Service]:
    path = tmp_path_factory.mktemp("client-live") / "refresherd.toml"
    path.write_text(CONFIG.format(origin=origin_server.url, read=READ, write=WRITE, admin=ADMIN))
    service = start_service(path)
    yield service
    assert service.stop() == 0


def client(service: Service, token: str | None = READ) -> Client:
    return Client(service.url, service.admin_url, token=token, timeout=10)


@pytest.fixture
def reader(service: Service) -> Iterator[Client]:
    with client(service, READ) as c:
        yield c


@pytest.fixture
def writer(service: Service) -> Iterator[Client]:
    with client(service, WRITE) as c:
        yield c


@pytest.fixture
def admin(service: Service) -> Iterator[Client]:
    with client(service, ADMIN) as c:
        yield c


def test_get_is_a_miss_then_a_hit_with_the_value_and_its_metadata(
    reader: Client, origin_server: Origin
) -> None:
    origin_server.set("/users/ada", body=b'{"name": "ada", "fetch": {n}}')
    first = reader.get("user", name="ada")
    assert first["status"] == "miss"
    assert first["key"] == "rfd:user:v1:name=ada"
    assert first["value"] == {"name": "ada", "fetch": 1}
    assert first["content_type"] == "application/json"
    assert first["fresh_until"] == pytest.approx(first["fetched_at"] + 3600)
    second = reader.get("user", {"name": "ada"})
    assert second["status"] == "hit" and second["fetched_at"] == first["fetched_at"]
    assert reader.value("user", name="ada") == {"name": "ada", "fetch": 1}
    assert origin_server.count("/users/ada") == 1


def test_argument_values_needing_percent_encoding_reach_the_origin_intact(
    reader: Client, origin_server: Origin
) -> None:
    origin_server.set("/users/%C3%A9%20b%3Fc%26d%3D%23", body=b'"found"')
    assert reader.value("user", name="é b?c&d=#") == "found"
    assert origin_server.count("/users/%C3%A9%20b%3Fc%26d%3D%23") == 1


@pytest.mark.parametrize("name", ["../../admin", "a/b", "a\\b", ""])
def test_a_path_argument_with_a_slash_or_empty_is_bad_args_and_fetches_nothing(
    reader: Client, origin_server: Origin, name: str
) -> None:
    with pytest.raises(BadArgs, match="fills a URL path segment"):
        reader.get("user", {"name": name})
    assert origin_server.count("/users/..%2F..%2Fadmin") == 0


def test_a_job_with_path_slash_sends_a_slash_as_2f(reader: Client, origin_server: Origin) -> None:
    origin_server.set("/files/docs%2Fa%20b.md", body=b'"doc"')
    assert reader.value("file", path="docs/a b.md") == "doc"
    assert origin_server.count("/files/docs%2Fa%20b.md") == 1


def test_get_many_returns_answers_and_item_errors_in_order(
    reader: Client, origin_server: Origin
) -> None:
    origin_server.set("/users/bea", body=b'{"name": "bea"}')
    answers = reader.get_many(
        [("user", {"name": "bea"}), {"job": "nope", "args": {}}, ("user", {}), "broken"]
    )
    found, unknown, bad, broken = answers
    assert isinstance(found, dict) and found["value"] == {"name": "bea"}
    assert isinstance(unknown, UnknownJob) and unknown.status == 404
    assert isinstance(bad, BadArgs) and bad.status == 400
    assert isinstance(broken, FetchFailed) and broken.status == 502
    # With a default, the outage becomes the default; the mistakes stay errors.
    again = reader.get_many([("user", {"name": "bea"}), ("user", {}), "broken"], default=None)
    assert isinstance(again[0], dict) and again[0]["status"] == "hit"
    assert isinstance(again[1], BadArgs)
    assert again[2] is None


def test_raw_gives_a_pending_answer_then_the_stored_snippet(
    reader: Client, origin_server: Origin
) -> None:
    origin_server.set("/snippets/1", body=b"<p>one</p>", content_type="text/html; charset=utf-8")
    first = reader.raw("snippet", id=1)
    assert first.pending and first.status == 202
    assert reader.raw("snippet", id=2, default="later") == "later"
    wait_until(lambda: not reader.raw("snippet", id=1).pending)
    raw = reader.raw("snippet", id=1)
    assert (raw.status, raw.body, raw.text) == (200, b"<p>one</p>", "<p>one</p>")
    assert raw.content_type == "text/html; charset=utf-8"
    assert raw.etag is not None and raw.etag.startswith('W/"')
    assert raw.cache_status is not None and raw.cache_status.startswith("refresherd; hit; ttl=")
    assert reader.raw("snippet", id=1, default=None) == raw
    assert origin_server.count("/snippets/1") == 1


def test_a_body_that_is_not_utf8_comes_back_as_bytes(reader: Client) -> None:
    assert reader.value("image") == PNG
    raw = reader.raw("image")
    assert (raw.body, raw.content_type) == (PNG, "image/png")


def test_put_stores_text_json_and_bytes_that_get_then_returns(writer: Client) -> None:
    answer = writer.put("motd", "Grüß Gott", lang="de")
    assert answer["status"] == "hit" and answer["value"] == "Grüß Gott"
    assert answer["content_type"] == "text/plain; charset=utf-8"
    assert writer.value("motd", lang="de") == "Grüß Gott"
    writer.put("motd", {"text": "bonjour", "n": [1, 2]}, {"lang": "fr"})
    assert writer.get("motd", lang="fr")["value"] == {"text": "bonjour", "n": [1, 2]}
    writer.put("motd", PNG, lang="xx", content_type="image/png")
    assert writer.value("motd", lang="xx") == PNG
    assert writer.raw("motd", lang="xx").content_type == "image/png"


def test_put_needs_a_write_token(reader: Client) -> None:
    with pytest.raises(Forbidden) as raised:
        reader.put("motd", "hi", lang="en")
    assert raised.value.status == 403


def test_a_large_put_refused_at_its_head_gets_its_error_object(
    service: Service, reader: Client
) -> None:
    # The service answers and closes before it takes the body: the clients read that answer.
    large = b"x" * 30_000_000
    with pytest.raises(Forbidden):
        reader.put("motd", large, lang="en")

    async def put() -> None:
        async with AsyncClient(service.url, service.admin_url, token=READ) as client:
            with pytest.raises(Forbidden):
                await client.put("motd", large, lang="en")

    asyncio.run(put())


def test_put_to_a_job_that_is_not_writable_is_forbidden(writer: Client) -> None:
    with pytest.raises(Forbidden, match=r"'user' is not writable: set writable = true"):
        writer.put("user", "forged", name="eve")
    with pytest.raises(UnknownJob):
        writer.put("nope", "x")


def test_a_hard_purge_by_key_makes_the_next_get_a_miss(
    reader: Client, admin: Client, origin_server: Origin
) -> None:
    origin_server.set("/users/cy", body=b'{"fetch": {n}}')
    key = reader.get("user", name="cy")["key"]
    assert admin.purge(keys=[key]) == 1
    again = reader.get("user", name="cy")
    assert (again["status"], again["value"]) == ("miss", {"fetch": 2})


def test_a_soft_purge_by_tag_with_a_write_token_serves_stale_then_the_new_value(
    reader: Client, writer: Client, origin_server: Origin
) -> None:
    origin_server.set("/users/dee", body=b'{"fetch": {n}}')
    assert reader.value("user", name="dee") == {"fetch": 1}
    assert writer.purge(tags=["user:dee"], soft=True) == 1
    stale = reader.get("user", name="dee")
    assert (stale["status"], stale["value"]) == ("stale", {"fetch": 1})
    wait_until(lambda: reader.get("user", name="dee")["value"] == {"fetch": 2})
    assert reader.get("user", name="dee")["status"] == "hit"
    assert origin_server.count("/users/dee") == 2


def test_purging_a_job_needs_an_admin_token(writer: Client, admin: Client) -> None:
    with pytest.raises(Forbidden):
        writer.purge(jobs=["image"])
    assert admin.purge(jobs=["image"]) == 1


def test_refresh_starts_a_fetch_now(reader: Client, admin: Client, origin_server: Origin) -> None:
    origin_server.set("/users/eve", body=b'{"fetch": {n}}')
    reader.get("user", name="eve")
    answer = admin.refresh("user", name="eve")
    assert answer == {"job": "user", "key": "rfd:user:v1:name=eve", "status": "pending"}
    wait_until(lambda: reader.value("user", name="eve") == {"fetch": 2})


def test_errors_are_raised_as_their_classes(service: Service, reader: Client) -> None:
    with pytest.raises(UnknownJob):
        reader.get("nope")
    with pytest.raises(BadArgs):
        reader.get("user", name="ada", extra="x")
    with pytest.raises(FetchFailed) as failed:
        reader.get("broken")
    assert failed.value.status == 502 and failed.value.outage
    with client(service, "not-a-known-token") as stranger, pytest.raises(Unauthorized):
        stranger.get("user", name="ada")
    with client(service, None) as anonymous, pytest.raises(Unauthorized):
        anonymous.get("user", name="ada")


def test_a_default_covers_an_outage_but_never_a_mistake(reader: Client) -> None:
    assert reader.get("broken", default="fallback") == "fallback"
    assert reader.value("broken", default=None) is None
    with pytest.raises(BadArgs):
        reader.value("user", default=None)
    with pytest.raises(Pending):
        reader.value("snippet", id="never-fetched-before")


def test_a_stopped_service_gives_the_default_and_then_fails_at_once(tmp_path: Path) -> None:
    config = tmp_path / "refresherd.toml"
    config.write_text(
        '[jobs.square]\nargs = ["n"]\ncallable = "refresherd.demo:slow_square"\nfresh = "1m"\n'
    )
    stopped = start_service(config)
    assert stopped.get("/healthz").status_code == 200
    assert stopped.stop() == 0
    with Client(stopped.url, stopped.admin_url, timeout=2) as down:
        with pytest.raises(Unreachable) as raised:
            down.get("square", n=1)
        assert "connection refused" in raised.value.message
        assert down.get("square", n=1, default="fallback") == "fallback"
        assert down.value("square", n=1, default=0) == 0
        # Three failures in a row: the circuit is open, and no request is tried.
        started = time.monotonic()
        with pytest.raises(CircuitOpen):
            down.get("square", n=1)
        assert down.raw("square", n=1, default=None) is None
        assert time.monotonic() - started < 0.1
        assert down.circuit() == "open"
        # The admin listener has its own circuit.
        with pytest.raises(Unreachable) as admin_down:
            down.purge(keys=["rfd:square:v1:n=1"])
        assert not isinstance(admin_down.value, CircuitOpen)
        assert not isinstance(admin_down.value, ServiceError)


# -- examples/appengine: plain HTTP, no client library ---------------------------------------


def test_the_appengine_example_reads_json_and_raw_values_over_plain_http(
    service: Service, origin_server: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin_server.set("/rates/EUR", body=b'{"base": "EUR", "rates": {"USD": 1.1, "JPY": 160}}')
    origin_server.set("/banner", body=b"<b>Sale</b>", content_type="text/html; charset=utf-8")
    monkeypatch.setenv("REFRESHERD_URL", service.url)
    monkeypatch.setenv("REFRESHERD_TOKEN", READ)
    app = appengine_app().app
    status, page = call(app, "/", "base=EUR")
    assert status == "200 OK"
    assert page == (
        "<h1>1 EUR</h1><table><tr><td>JPY</td><td>160</td></tr>"
        "<tr><td>USD</td><td>1.1</td></tr></table>"
    )
    # The banner is pending at first (on_miss = "empty"): the fallback, then the snippet.
    assert call(app, "/banner") == ("200 OK", "<p>Welcome!</p>")
    wait_until(lambda: call(app, "/banner")[1] == "<b>Sale</b>")
    # A bad argument is a bug, not an outage.
    with pytest.raises(RuntimeError, match="400 bad_args"):
        call(app, "/", "base=euro")


# -- AsyncClient: the same calls, awaited, on the same service ------------------------------


def test_the_async_client_gets_values_batches_and_raw_bodies(
    service: Service, origin_server: Origin
) -> None:
    origin_server.set("/users/ann", body=b'{"name": "ann", "fetch": {n}}')
    origin_server.set("/snippets/9", body=b"<p>nine</p>", content_type="text/html")

    async def main() -> None:
        async with AsyncClient(service.url, service.admin_url, token=READ) as reader:
            first, second = await asyncio.gather(
                reader.get("user", name="ann"), reader.get("user", {"name": "ann"})
            )
            assert {first["status"], second["status"]} <= {"miss", "hit"}
            assert first["value"] == second["value"] == {"name": "ann", "fetch": 1}
            assert (await reader.get("user", name="ann"))["status"] == "hit"
            found, unknown, broken = await reader.get_many(
                [("user", {"name": "ann"}), "nope", "broken"]
            )
            assert isinstance(found, dict) and found["value"] == {"name": "ann", "fetch": 1}
            assert isinstance(unknown, UnknownJob) and isinstance(broken, FetchFailed)
            assert (await reader.raw("snippet", id=9)).pending
            assert await reader.raw("snippet", id=10, default="later") == "later"
            while (raw := await reader.raw("snippet", id=9)).pending:
                await asyncio.sleep(0.05)
            assert raw.text == "<p>nine</p>" and raw.content_type == "text/html"

    asyncio.run(main())
    assert origin_server.count("/users/ann") == 1


def test_the_async_client_raises_typed_errors_and_falls_back_on_outages(
    service: Service,
) -> None:
    async def main() -> None:
        async with AsyncClient(service.url, service.admin_url, token=READ) as reader:
            with pytest.raises(BadArgs):
                await reader.get("user", name="ada", extra="x")
            with pytest.raises(FetchFailed):
                await reader.get("broken")
            assert await reader.value("broken", default="fallback") == "fallback"
            with pytest.raises(Forbidden):
                await reader.purge(jobs=["user"])
        async with AsyncClient(service.url, service.admin_url, token=WRITE) as writer:
            assert (await writer.put("motd", "Hi", lang="xx"))["value"] == "Hi"
            assert await writer.purge(tags=["user:ann"], soft=True) == 1

    asyncio.run(main())


def test_the_async_client_of_a_port_nothing_listens_on_falls_back_then_fails_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    async def main() -> None:
        async with AsyncClient(url, url, timeout=2) as down:
            assert [await down.get("user", default=None) for _ in range(3)] == [None] * 3
            with pytest.raises(CircuitOpen):
                await down.get("user")

    asyncio.run(main())
