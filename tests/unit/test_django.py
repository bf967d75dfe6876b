"""
L{refresherd.contrib.django} without refresherd or a server: settings and the
system check, the template tag's syntax, the request target, signatures,
callbacks and instance tags (the tag and the callback view against a live
refresherd: tests/e2e/test_django.py; the tag failing over a refused
connection: tests/integration/test_django.py).
"""

from __future__ import annotations

import ast
import base64
import datetime
import decimal
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.django_setup import setup_django

setup_django()

import httpx  # noqa: E402
import pytest  # noqa: E402
from django.core import checks  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.template import Context, Template, TemplateSyntaxError  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django.utils.html import escape  # noqa: E402

from refresherd.client import AsyncClient, Client, UnknownJob  # noqa: E402
from refresherd.contrib.django import (  # noqa: E402
    callback,
    get_async_client,
    get_client,
    register,
    unregister,
)
from refresherd.contrib.django.callbacks import Callback, registered  # noqa: E402
from refresherd.contrib.django.conf import load_settings  # noqa: E402
from refresherd.contrib.django.invalidation import instance_tags  # noqa: E402
from refresherd.contrib.django.templatetags import refresherd as refreshed_tag  # noqa: E402
from refresherd.contrib.django.views import render, request_target  # noqa: E402
from refresherd.contrib.signing import (  # noqa: E402
    BadSignature,
    NonceMemory,
    check_signature,
    sign,
)
from refresherd.signing import sign as sign_request  # noqa: E402  (the fetcher's signer)
from tests.django_project.models import Profile  # noqa: E402

# -- settings and the tag's syntax ---------------------------------------------------------


def test_the_client_is_rebuilt_when_the_setting_changes(settings: Any) -> None:
    settings.REFRESHERD = {"URL": "http://127.0.0.1:1"}
    first = get_client()
    assert get_client() is first and first.url == "http://127.0.0.1:1"
    settings.REFRESHERD = {"URL": "http://127.0.0.1:2", "TOKEN": "write-token-0123"}
    assert get_client().url == "http://127.0.0.1:2"


def test_the_async_client_is_built_on_the_same_settings_and_rebuilt_with_them(
    settings: Any,
) -> None:
    settings.REFRESHERD = {"URL": "http://127.0.0.1:1", "TIMEOUT": 2.5}
    first = get_async_client()
    assert isinstance(first, AsyncClient) and get_async_client() is first
    assert (first.url, first.timeout) == ("http://127.0.0.1:1", 2.5)
    settings.REFRESHERD = {"URL": "http://127.0.0.1:2"}
    assert get_async_client().url == "http://127.0.0.1:2"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"URLS": "x"}, "unknown key 'URLS'"),
        ({"URL": "ftp://x"}, "http"),
        ({"TIMEOUT": 0}, "TIMEOUT"),
        ({"TIMEOUT": "2"}, "TIMEOUT"),
        ({"TOKEN": "two words"}, "printable ASCII"),
        ({"SECRET": ""}, "SECRET"),
        ({"SECRET": []}, "SECRET"),
        ({"CIRCUIT_FAILURES": -1}, "CIRCUIT_FAILURES"),
        ({"TRUSTED_HTML_JOBS": "sidebar"}, "must be a list of job names"),
        ({"TRUSTED_HTML_JOBS": [""]}, "must be a list of job names"),
        ({"TRUSTED_HTML_JOBS": [1]}, "must be a list of job names"),
        ({"REDIS_URL": 6379}, "REDIS_URL"),
        ({"REDIS_URL": "http://redis:6379"}, "Redis URL must specify"),
    ],
)
def test_bad_settings_are_improperly_configured_and_fail_the_system_check(
    settings: Any, given: dict[str, Any], message: str
) -> None:
    settings.REFRESHERD = given
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        load_settings()
    assert "two words" not in str(raised.value)
    errors = [e for e in checks.run_checks() if e.id == "refresherd.E001"]
    assert len(errors) == 1 and message in errors[0].msg


def test_a_redis_url_gives_both_clients_direct_reads(settings: Any) -> None:
    settings.REFRESHERD = {"URL": "http://127.0.0.1:1"}
    assert get_client()._direct is None and get_async_client()._direct is None
    settings.REFRESHERD = {"URL": "http://127.0.0.1:1", "REDIS_URL": "redis://u:pw@127.0.0.1:1/0"}
    assert get_client()._direct is not None and get_async_client()._direct is not None
    assert "pw" not in repr(load_settings())


def test_good_settings_pass_the_system_check(settings: Any) -> None:
    settings.REFRESHERD = {
        "URL": "http://127.0.0.1:8080",
        "SECRET": ["new", "old"],
        "TRUSTED_HTML_JOBS": ["sidebar"],
    }
    assert load_settings().secrets == ("new", "old")
    assert load_settings().trusted_html_jobs == frozenset({"sidebar"})
    assert not [e for e in checks.run_checks() if e.id == "refresherd.E001"]


def nonce_cache_checks() -> list[tuple[str, int]]:
    """The ids and levels of the system check's messages about the nonce cache."""
    return [
        (message.id, message.level)
        for message in checks.run_checks()
        if message.id in ("refresherd.E002", "refresherd.E003", "refresherd.W001")
    ]


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("django.core.cache.backends.dummy.DummyCache", [("refresherd.E003", checks.ERROR)]),
        ("django.core.cache.backends.locmem.LocMemCache", [("refresherd.W001", checks.WARNING)]),
        ("django.core.cache.backends.db.DatabaseCache", []),
        ("django.core.cache.backends.redis.RedisCache", []),
    ],
)
def test_a_nonce_cache_that_does_not_stop_replays_in_every_process_fails_the_system_check(
    settings: Any, backend: str, expected: list[tuple[str, int]]
) -> None:
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "nonces": {"BACKEND": backend, "LOCATION": "redis://127.0.0.1:1/0"},
    }
    settings.REFRESHERD = {"SECRET": "s3cret", "NONCE_CACHE": "nonces"}
    assert nonce_cache_checks() == expected


def test_a_nonce_cache_that_is_not_configured_fails_the_system_check(settings: Any) -> None:
    settings.REFRESHERD = {"SECRET": "s3cret", "NONCE_CACHE": "nonces"}
    assert nonce_cache_checks() == [("refresherd.E002", checks.ERROR)]


def test_the_nonce_cache_is_not_checked_without_callbacks(settings: Any) -> None:
    """With no SECRET no callback is accepted: a per-process cache protects nothing less."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    settings.REFRESHERD = {"URL": "http://127.0.0.1:8080"}
    assert nonce_cache_checks() == []


@pytest.mark.parametrize(
    "source",
    [
        "{% refreshed %}{% endrefreshed %}",
        '{% refreshed "a" b %}{% endrefreshed %}',
        '{% refreshed "a" x=1 %}',
    ],
)
def test_the_tag_refuses_bad_syntax(source: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        Template("{% load refresherd %}" + source)


SNIPPET = '<b>hi</b><script>alert("x")</script>'


@pytest.fixture
def stored_snippet(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The tag's client answers every raw request with C{SNIPPET} as HTML; the paths asked."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        headers = {"Content-Type": "text/html; charset=utf-8"}
        return httpx.Response(200, content=SNIPPET.encode(), headers=headers)

    client = Client("http://refresherd.test", transport=httpx.MockTransport(answer))
    monkeypatch.setattr(refreshed_tag, "get_client", lambda: client)
    yield asked
    client.close()


def render_tag(job: str, autoescape: bool = True) -> str:
    template = Template("{% load refresherd %}{% refreshed job %}-{% endrefreshed %}")
    return str(template.render(Context({"job": job}, autoescape=autoescape)))


def test_the_tag_escapes_a_snippet_unless_its_job_is_trusted_html(
    settings: Any, stored_snippet: list[str]
) -> None:
    settings.REFRESHERD = {"TRUSTED_HTML_JOBS": ["sidebar"]}
    assert render_tag("motd") == escape(SNIPPET)
    assert render_tag("sidebar") == SNIPPET
    assert stored_snippet == ["/v1/jobs/motd/raw", "/v1/jobs/sidebar/raw"]
    settings.REFRESHERD = {}
    assert render_tag("sidebar") == escape(SNIPPET)


def test_the_tag_follows_autoescape_off_as_a_variable_does(
    settings: Any, stored_snippet: list[str]
) -> None:
    settings.REFRESHERD = {}
    assert render_tag("motd", autoescape=False) == SNIPPET


# -- the request target -------------------------------------------------------------------


def test_the_target_keeps_the_raw_query_and_rebuilds_a_plain_path() -> None:
    request = RequestFactory().get("/refresherd/echo?q=a%20b%2Fc%26d&lang=fr")
    assert request_target(request) == "/refresherd/echo?q=a%20b%2Fc%26d&lang=fr"
    assert request_target(RequestFactory().get("/refresherd/names")) == "/refresherd/names"
    assert request_target(RequestFactory().get("/caf%C3%A9/x~y")) == "/caf%C3%A9/x~y"


def test_the_target_is_the_raw_uri_when_the_server_gives_it() -> None:
    raw = "/refresherd/echo%2Fx?q=%7E"
    request = RequestFactory().get("/refresherd/echo/x?q=~", RAW_URI=raw)
    assert request_target(request) == raw
    request = RequestFactory().get("/x", REQUEST_URI="http://app.example/refresherd/a%2Fb?q=1")
    assert request_target(request) == "/refresherd/a%2Fb?q=1"


def test_the_target_of_an_asgi_request_is_its_raw_path() -> None:
    request = RequestFactory().get("/refresherd/a/b")
    request.scope = {"raw_path": b"/refresherd/a%2Fb", "query_string": b"q=%20"}
    assert request_target(request) == "/refresherd/a%2Fb?q=%20"


# -- signatures ---------------------------------------------------------------------------


def test_a_signature_made_as_refresherd_makes_it_is_accepted_once() -> None:
    now = 1767225600
    header = sign_request(b"s3cret", now, "3f9a0c5d7e21b48a", "POST", "/p?x=%20", b"{}")
    assert sign("s3cret", now, "3f9a0c5d7e21b48a", "post", "/p?x=%20", b"{}") == header
    memory = NonceMemory(clock=lambda: now)
    signature = check_signature(
        ["old", "s3cret"], header, "POST", "/p?x=%20", b"{}", memory.remember, now=now + 299
    )
    assert (signature.t, signature.nonce) == (now, "3f9a0c5d7e21b48a")
    with pytest.raises(BadSignature, match="replay"):
        check_signature(["s3cret"], header, "POST", "/p?x=%20", b"{}", memory.remember, now=now)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"header": None}, "no X-Refresherd-Signature"),
        ({"header": "t=1,n=00,v1=00"}, "malformed"),
        ({"now": 1767225600 + 301}, "more than 300 s"),
        ({"now": 1767225600 - 301}, "more than 300 s"),
        ({"method": "GET"}, "does not match"),
        ({"target": "/p?x=+"}, "does not match"),
        ({"body": b"{ }"}, "does not match"),
        ({"secrets": ["other"]}, "does not match"),
        ({"secrets": []}, "no secret"),
    ],
)
def test_a_signature_that_does_not_match_the_request_is_refused(
    change: dict[str, Any], reason: str
) -> None:
    now = 1767225600
    call: dict[str, Any] = {
        "secrets": ["s3cret"],
        "header": sign_request(b"s3cret", now, "3f9a0c5d7e21b48a", "POST", "/p?x=%20", b"{}"),
        "method": "POST",
        "target": "/p?x=%20",
        "body": b"{}",
        "remember": NonceMemory(clock=lambda: now).remember,
        "now": now,
    }
    call.update(change)
    with pytest.raises(BadSignature, match=reason):
        check_signature(**call)


def test_the_nonce_memory_forgets_nonces_past_the_window() -> None:
    clock = [1000.0]
    memory = NonceMemory(clock=lambda: clock[0])
    assert memory.remember("a" * 16, 1000)
    assert not memory.remember("a" * 16, 1000)
    clock[0] += 301
    assert memory.remember("a" * 16, 1301)


# -- callbacks and tags -------------------------------------------------------------------


def test_a_name_has_one_function_and_a_valid_name() -> None:
    def first() -> str:
        return "1"

    def second() -> str:
        return "2"

    try:
        register("unit-test", first)
        register("unit-test", first)
        with pytest.raises(ValueError, match="already registered"):
            register("unit-test", second)
        assert registered("unit-test") == Callback("unit-test", first)
    finally:
        unregister("unit-test")
    with pytest.raises(ValueError, match="callback name"):
        callback("a/b")(first)
    assert registered("a/b") is None


def test_results_become_answers_with_their_content_types() -> None:
    html = Callback("x", str, "text/html; charset=utf-8")
    plain = Callback("x", str)
    assert render(html, "<p>é</p>")["Content-Type"] == "text/html; charset=utf-8"
    assert render(html, "<p>é</p>").content == "<p>é</p>".encode()
    assert render(plain, "hi")["Content-Type"] == "text/plain; charset=utf-8"
    assert render(plain, b"\xff")["Content-Type"] == "application/octet-stream"
    data = {"when": datetime.date(2026, 1, 2), "amount": decimal.Decimal("1.50")}
    answer = render(plain, data)
    assert answer["Content-Type"] == "application/json"
    assert answer.content == b'{"when": "2026-01-02", "amount": "1.50"}'
    response = HttpResponse(b"as is", status=201)
    assert render(plain, response) is response
    with pytest.raises(ValueError):
        render(plain, float("nan"))


def test_instance_tags_come_from_templates_or_a_function() -> None:
    profile = Profile(pk=5, name="Ada")
    assert instance_tags(["user:{pk}", "name:{name}"], profile) == ["user:5", "name:Ada"]
    assert instance_tags(lambda p: [f"u{p.pk}"], profile) == ["u5"]
    with pytest.raises(TypeError):
        instance_tags(lambda p: [""], profile)


# -- the contrib modules -------------------------------------------------------------------


def test_the_contrib_modules_import_nothing_of_the_server() -> None:
    contrib = Path(__file__).resolve().parents[2] / "refresherd" / "contrib"
    for module in contrib.rglob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "refresherd":
                    # refresherd.signing is shared and pure: tests/unit/test_signing.py
                    assert name in ("refresherd.client", "refresherd.signing") or name.startswith(
                        "refresherd.contrib"
                    ), f"{module.name} imports {name}"


# -- refreshed_batch ------------------------------------------------------------------------


class Batches:
    """
    A refresherd for the batch tag: C{POST /v1/fetch} answers each item as
    C{answers} says by job (C{"pending"}, C{"down"}, C{"json"}, C{"nope"}, else
    the job's HTML), C{/raw} gives a JSON body; every request is kept.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.down = False

    def item(self, job: str, args: dict[str, str]) -> dict[str, Any]:
        if job == "pending":
            return {"job": job, "key": f"rfd:{job}:v1:", "status": "pending"}
        if job == "down":
            return {"error": {"code": "fetch_failed", "message": "origin down"}}
        if job == "nope":
            return {"error": {"code": "unknown_job", "message": "no job 'nope'"}}
        if job == "json":
            return {"status": "hit", "content_type": "application/json", "value": {"a": 1}}
        if job == "bytes":
            body = base64.b64encode("<i>é</i>".encode("latin-1")).decode()
            return {
                "status": "hit",
                "content_type": "text/html; charset=latin-1",
                "value_b64": body,
            }
        text = f"<p>{job} {args.get('n', '')}</p>"
        return {"status": "hit", "content_type": "text/html; charset=utf-8", "value": text}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/fetch":
            items = json.loads(request.read())["items"]
            self.requests.append(("fetch", [(i["job"], i["args"]) for i in items]))
            if self.down:
                return httpx.Response(503, json={"error": {"code": "overloaded", "message": "x"}})
            return httpx.Response(
                200, json={"items": [self.item(i["job"], i["args"]) for i in items]}
            )
        self.requests.append(("raw", request.url.path))
        return httpx.Response(
            200, content=b'{"a": 1}', headers={"Content-Type": "application/json"}
        )


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[Batches]:
    fake = Batches()
    client = Client("http://refresherd.test", transport=httpx.MockTransport(fake))
    monkeypatch.setattr(refreshed_tag, "get_client", lambda: client)
    yield fake
    client.close()


def batch_page(body: str, **context: Any) -> str:
    source = "{% load refresherd %}{% refreshed_batch %}" + body + "{% endrefreshed_batch %}"
    return str(Template(source).render(Context(context)))


def test_a_batch_asks_for_every_block_in_one_request_loops_and_includes_too(
    settings: Any, batches: Batches
) -> None:
    settings.REFRESHERD = {"TRUSTED_HTML_JOBS": ["side"]}
    included = Template('{% load refresherd %}[{% refreshed "side" n=9 %}-{% endrefreshed %}]')
    html = batch_page(
        '{% for n in ns %}{% refreshed "side" n=n %}-{% endrefreshed %}{% endfor %}'
        '{% refreshed "motd" %}-{% endrefreshed %}{% include sub %}'
        '{% refreshed "side" n=1 %}again{% endrefreshed %}',
        ns=[1, 2],
        sub=included,
    )
    assert batches.requests == [
        ("fetch", [("side", {"n": "1"}), ("side", {"n": "2"}), ("motd", {}), ("side", {"n": "9"})])
    ]
    assert html == (
        "<p>side 1</p><p>side 2</p>&lt;p&gt;motd &lt;/p&gt;[<p>side 9</p>]<p>side 1</p>"
    )


def test_a_batch_renders_fallbacks_for_pending_values_and_outages_and_raises_mistakes(
    batches: Batches,
) -> None:
    page = (
        '{% refreshed "pending" %}wait{% endrefreshed %}|'
        '{% refreshed "down" %}down{% endrefreshed %}'
    )
    assert batch_page(page) == "wait|down"
    batches.down = True
    assert batch_page('{% refreshed "side" %}later{% endrefreshed %}') == "later"
    batches.down = False
    with pytest.raises(UnknownJob):
        batch_page(
            '{% refreshed "side" %}-{% endrefreshed %}{% refreshed "nope" %}-{% endrefreshed %}'
        )


def test_a_batch_asks_alone_for_a_value_it_cannot_give_as_its_body(batches: Batches) -> None:
    html = batch_page(
        '{% autoescape off %}{% refreshed "json" %}-{% endrefreshed %}'
        '{% refreshed "bytes" %}-{% endrefreshed %}{% endautoescape %}'
    )
    assert html == '{"a": 1}<i>é</i>'
    assert batches.requests == [
        ("fetch", [("json", {}), ("bytes", {})]),
        ("raw", "/v1/jobs/json/raw"),
    ]


def test_a_batch_of_more_blocks_than_the_service_takes_is_split_and_nested_batches_join(
    batches: Batches,
) -> None:
    html = batch_page(
        '{% for n in ns %}{% refreshed_batch %}{% refreshed "s" n=n %}-{% endrefreshed %}'
        "{% endrefreshed_batch %}{% endfor %}",
        ns=range(150),
    )
    assert [len(items) for kind, items in batches.requests] == [100, 50]
    assert html == "".join(f"&lt;p&gt;s {n}&lt;/p&gt;" for n in range(150))


def test_a_filter_around_a_block_changes_its_marker_not_its_snippet(batches: Batches) -> None:
    html = batch_page('{% filter upper %}{% refreshed "side" %}-{% endrefreshed %}{% endfilter %}')
    assert html == "&lt;p&gt;side &lt;/p&gt;"


def test_a_batch_without_blocks_asks_nothing_and_takes_no_arguments(batches: Batches) -> None:
    assert batch_page("plain") == "plain" and batches.requests == []
    with pytest.raises(TemplateSyntaxError):
        Template("{% load refresherd %}{% refreshed_batch x %}{% endrefreshed_batch %}")
