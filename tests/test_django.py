"""
L{refresherd.contrib.django} with Django's test machinery inside pytest
(pytest-django): the test project C{tests/django_project} runs on
pytest-django's live server, and a live C{twistd -n refresherd} calls it back
for its signed C{fetch = "http"} jobs.  The unit tests at the end need
neither.
"""

from __future__ import annotations

import ast
import datetime
import decimal
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The test project; the live server on the same loopback address as refresherd.
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
os.environ.setdefault("DJANGO_LIVE_TEST_SERVER_ADDRESS", "127.0.0.1")

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
import pytest  # noqa: E402
from django.core import checks  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.db import transaction  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.template import Context, Template, TemplateSyntaxError  # noqa: E402
from django.test import Client as DjangoClient  # noqa: E402
from django.test import RequestFactory  # noqa: E402

from refresherd.client import Client, FetchFailed, UnknownJob  # noqa: E402
from refresherd.contrib.django import callback, get_client, register, unregister  # noqa: E402
from refresherd.contrib.django.callbacks import Callback, registered  # noqa: E402
from refresherd.contrib.django.conf import load_settings  # noqa: E402
from refresherd.contrib.django.invalidation import instance_tags  # noqa: E402
from refresherd.contrib.django.views import render, request_target  # noqa: E402
from refresherd.contrib.signing import (  # noqa: E402
    BadSignature,
    NonceMemory,
    check_signature,
    sign,
)
from refresherd.fetchers.http import sign_request  # noqa: E402
from tests.django_project.models import Profile  # noqa: E402
from tests.django_project.refreshers import CALLS  # noqa: E402
from tests.harness import Service, start_service, wait_until  # noqa: E402

SECRET = "callback-secret-0123"
READ = "read-token-0123"
WRITE = "write-token-0123"
ADMIN = "admin-token-0123"

CONFIG = """
[auth]
read_tokens = ["{read}"]
write_tokens = ["{write}"]
admin_tokens = ["{admin}"]

[jobs.sidebar]
args = ["user_id"]
arg_patterns = {{ user_id = "[0-9]{{1,9}}" }}
url = "{live}/refresherd/sidebar?user_id={{user_id}}"
sign = "env:RFD_TEST_SECRET"
fresh = "1h"
stale = "1h"
on_miss = "empty"
tags = ["user:{{user_id}}"]

[jobs.echo]
args = ["q"]
url = "{live}/refresherd/echo?q={{q}}&lang=fr"
sign = "env:RFD_TEST_SECRET"
fresh = "1h"

[jobs.echo_post]
args = ["q"]
url = "{live}/refresherd/echo?lang=de"
method = "POST"
body = {{ q = "{{q}}" }}
sign = "env:RFD_TEST_SECRET"
fresh = "1h"

[jobs.names]
url = "{live}/refresherd/names"
sign = "env:RFD_TEST_SECRET"
fresh = "1h"

[jobs.blob]
args = ["n"]
url = "{live}/refresherd/blob?n={{n}}"
sign = "env:RFD_TEST_SECRET"
fresh = "1h"

[jobs.forged]
args = ["q"]
url = "{live}/refresherd/echo?q={{q}}"
sign = "env:RFD_WRONG_SECRET"
fresh = "1h"

[jobs.unsigned]
url = "{live}/refresherd/names"
fresh = "1h"

[jobs.unregistered]
url = "{live}/refresherd/nobody"
sign = "env:RFD_TEST_SECRET"
fresh = "1h"
"""
JOBS = ["sidebar", "echo", "echo_post", "names", "blob", "forged", "unsigned", "unregistered"]


@pytest.fixture(scope="module")
def refresherd(
    django_db_setup: None, live_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """refresherd, configured once the live server (its origin) listens."""
    path = tmp_path_factory.mktemp("django") / "refresherd.toml"
    path.write_text(CONFIG.format(live=live_server.url, read=READ, write=WRITE, admin=ADMIN))
    service = start_service(
        path, env={"RFD_TEST_SECRET": SECRET, "RFD_WRONG_SECRET": "not-the-secret"}
    )
    yield service
    service.stop()


@pytest.fixture
def rfd(refresherd: Service, settings: Any) -> Iterator[Service]:
    """The Django app configured for refresherd, with no value stored and no call counted."""
    settings.REFRESHERD = {
        "URL": refresherd.url,
        "ADMIN_URL": refresherd.admin_url,
        "TOKEN": WRITE,
        "SECRET": SECRET,
        "TIMEOUT": 10,
    }
    with Client(refresherd.url, refresherd.admin_url, token=ADMIN) as admin:
        admin.purge(jobs=JOBS)
    CALLS.clear()
    cache.clear()
    yield refresherd


@pytest.fixture
def reader(rfd: Service) -> Iterator[Client]:
    with Client(rfd.url, rfd.admin_url, token=READ) as client:
        yield client


def page(pk: int) -> str:
    response = DjangoClient().get(f"/page/{pk}/")
    assert response.status_code == 200
    return str(response.content.decode())


def sidebar_of(pk: int) -> str:
    """The sidebar snippet once refresherd has it."""
    wait_until(lambda: "fallback" not in page(pk))
    return page(pk)


# -- the template tag and tag purges, end to end ---------------------------------------------


def test_the_tag_renders_its_fallback_then_the_snippet_the_callback_built(rfd: Service) -> None:
    Profile.objects.create(pk=7, name="Ada", bio="<b>maths</b>")
    assert '<p class="fallback">Loading 7…</p>' in page(7)
    html = sidebar_of(7)
    assert (
        '<aside><section class="sidebar"><h2>Ada</h2><p>&lt;b&gt;maths&lt;/b&gt;</p></section>'
        in html
    )
    assert CALLS["sidebar"] == 1


def test_a_save_soft_purges_the_tag_and_the_next_render_shows_the_new_content_after_one_refresh(
    rfd: Service,
) -> None:
    profile = Profile.objects.create(pk=8, name="Ada")
    assert "<h2>Ada</h2>" in sidebar_of(8)
    profile.name = "Grace"
    profile.save()
    # Soft: the old snippet at once, while one refresh builds the new one.
    assert "<h2>Ada</h2>" in page(8)
    wait_until(lambda: "<h2>Grace</h2>" in page(8))
    assert CALLS["sidebar"] == 2


def test_the_purge_waits_for_the_transaction_to_commit(rfd: Service, reader: Client) -> None:
    profile = Profile.objects.create(pk=9, name="Ada")
    sidebar_of(9)
    with transaction.atomic():
        profile.name = "Grace"
        profile.save()
        assert reader.get("sidebar", user_id=9)["status"] == "hit"
    assert reader.get("sidebar", user_id=9)["status"] == "stale"
    wait_until(lambda: "<h2>Grace</h2>" in reader.value("sidebar", user_id=9))
    assert CALLS["sidebar"] == 2


def test_a_delete_soft_purges_the_tag_too(rfd: Service, reader: Client) -> None:
    profile = Profile.objects.create(pk=10, name="Ada")
    sidebar_of(10)
    profile.delete()
    assert reader.get("sidebar", user_id=10)["status"] == "stale"
    wait_until(lambda: "No such user." in reader.value("sidebar", user_id=10))
    assert CALLS["sidebar"] == 2


def test_the_tag_raises_for_an_unknown_job(rfd: Service) -> None:
    with pytest.raises(UnknownJob):
        Template('{% load refresherd %}{% refreshed "nope" %}-{% endrefreshed %}').render(Context())


# -- the callback view, end to end ------------------------------------------------------------


def test_arguments_needing_percent_encoding_reach_the_callback_intact(reader: Client) -> None:
    q = "a b/é&x=%+~*?#"
    assert reader.value("echo", q=q) == {"q": q, "lang": "fr"}
    assert CALLS["echo"] == 1


def test_a_post_job_signs_its_body_and_passes_its_members(reader: Client) -> None:
    assert reader.value("echo_post", q="ü ß") == {"q": "ü ß", "lang": "de"}


def test_a_callback_may_return_a_queryset_or_bytes(rfd: Service, reader: Client) -> None:
    Profile.objects.create(pk=1, name="Ada")
    Profile.objects.create(pk=2, name="Grace")
    assert reader.value("names") == [{"pk": 1, "name": "Ada"}, {"pk": 2, "name": "Grace"}]
    assert reader.value("blob", n=5) == b"\x00\x01\x02\x03\x04"
    assert reader.value("blob", n=256) == bytes(range(256))


def test_a_forged_or_missing_signature_is_rejected_through_refresherd(reader: Client) -> None:
    for job in ("forged", "unsigned"):
        with pytest.raises(FetchFailed, match="403"):
            reader.get(job, {"q": "x"} if job == "forged" else {})
    with pytest.raises(FetchFailed, match="404"):
        reader.get("unregistered")
    assert CALLS["echo"] == 0 and CALLS["names"] == 0


def signed_get(
    live_server: Any, target: str, *, secret: str = SECRET, t: int | None = None, nonce: str = ""
) -> tuple[httpx.Response, str]:
    t = int(time.time()) if t is None else t
    nonce = nonce or os.urandom(8).hex()
    header = sign_request(secret.encode(), t, nonce, "GET", target, b"")
    response = httpx.get(live_server.url + target, headers={"X-Refresherd-Signature": header})
    return response, header


def test_the_view_refuses_bad_stale_and_replayed_signatures(rfd: Service, live_server: Any) -> None:
    target = "/refresherd/echo?q=a%20b%2Fc"
    url = live_server.url + target
    assert httpx.get(url).status_code == 403
    assert httpx.get(url, headers={"X-Refresherd-Signature": "t=1,n=2,v1=3"}).status_code == 403
    assert signed_get(live_server, target, secret="another")[0].status_code == 403
    now = int(time.time())
    # Well outside the 300 s window: the clocks here tick between the two
    # readings; the exact boundary is tested with a fixed now below.
    assert signed_get(live_server, target, t=now - 330)[0].status_code == 403
    assert signed_get(live_server, target, t=now + 330)[0].status_code == 403
    good, header = signed_get(live_server, target)
    assert good.status_code == 200
    assert good.json() == {"q": "a b/c", "lang": "en"}
    assert "no-store" in good.headers["Cache-Control"]
    replayed = httpx.get(url, headers={"X-Refresherd-Signature": header})
    assert replayed.status_code == 403
    # A signature of one request does not sign another.
    signature = sign_request(SECRET.encode(), now, os.urandom(8).hex(), "GET", target, b"")
    tampered = httpx.get(
        live_server.url + "/refresherd/echo?q=a%20b%2Fd",
        headers={"X-Refresherd-Signature": signature},
    )
    assert tampered.status_code == 403
    assert CALLS["echo"] == 1


def test_the_view_answers_404_400_and_405_only_to_good_signatures(
    rfd: Service, live_server: Any
) -> None:
    assert signed_get(live_server, "/refresherd/nobody")[0].status_code == 404
    assert httpx.get(live_server.url + "/refresherd/nobody").status_code == 403
    extra = signed_get(live_server, "/refresherd/echo?q=a&zzz=1")[0]
    assert extra.status_code == 400 and "zzz" in extra.text
    repeated = signed_get(live_server, "/refresherd/echo?q=a&q=b")[0]
    assert repeated.status_code == 400 and "repeated" in repeated.text
    assert httpx.put(live_server.url + "/refresherd/echo").status_code == 405


# -- without refresherd --------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_tag_renders_its_fallback_when_refresherd_is_unreachable(settings: Any) -> None:
    port = closed_port()
    settings.REFRESHERD = {"URL": f"http://127.0.0.1:{port}", "TIMEOUT": 2}
    template = Template(
        '{% load refresherd %}{% refreshed "sidebar" user_id=n %}<i>{{ n }}</i>{% endrefreshed %}'
    )
    for _ in range(5):
        assert template.render(Context({"n": 3})) == "<i>3</i>"
    assert get_client().circuit() == "open"


def test_the_client_is_rebuilt_when_the_setting_changes(settings: Any) -> None:
    settings.REFRESHERD = {"URL": "http://127.0.0.1:1"}
    first = get_client()
    assert get_client() is first and first.url == "http://127.0.0.1:1"
    settings.REFRESHERD = {"URL": "http://127.0.0.1:2", "TOKEN": WRITE}
    assert get_client().url == "http://127.0.0.1:2"


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


def test_good_settings_pass_the_system_check(settings: Any) -> None:
    settings.REFRESHERD = {"URL": "http://127.0.0.1:8080", "SECRET": ["new", "old"]}
    assert load_settings().secrets == ("new", "old")
    assert not [e for e in checks.run_checks() if e.id == "refresherd.E001"]


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
    request.scope = {"raw_path": b"/refresherd/a%2Fb", "query_string": b"q=%20"}  # type: ignore[attr-defined]
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


def test_the_tag_arguments_reach_refresherd_as_text(settings: Any, tmp_path: Path) -> None:
    # No refresherd: the request fails at once, and the fallback is rendered.
    settings.REFRESHERD = {"URL": f"http://127.0.0.1:{closed_port()}", "CIRCUIT_FAILURES": 0}
    template = Template("{% load refresherd %}{% refreshed job n=n %}none{% endrefreshed %}")
    assert template.render(Context({"job": "sidebar", "n": 1})) == "none"
    with pytest.raises(ValueError, match="None"):
        template.render(Context({"job": "sidebar", "n": None}))


# -- examples/django_site, as its README runs it -------------------------------------------

EXAMPLE = Path(__file__).parent.parent / "examples" / "django_site"


def test_the_example_site_runs_with_its_refresherd_config(tmp_path: Path) -> None:
    django_port = closed_port()
    site = f"http://127.0.0.1:{django_port}"
    config = tmp_path / "refresherd.toml"
    config.write_text(
        (EXAMPLE / "refresherd.toml").read_text().replace("http://127.0.0.1:8000", site)
    )
    secrets = {"RFD_SECRET": "example-secret", "RFD_WRITE_TOKEN": "example-write-token"}
    service = start_service(config, env=secrets)
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        **secrets,
        "EXAMPLE_DB": str(tmp_path / "db.sqlite3"),
        "RFD_URL": service.url,
        "RFD_ADMIN_URL": service.admin_url,
    }

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    server: subprocess.Popen[str] | None = None
    try:
        manage("check", "--fail-level", "WARNING")
        manage("makemigrations", "--check", "--dry-run")
        manage("migrate", "-v0")
        manage("loaddata", "demo")
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{django_port}"],
            cwd=EXAMPLE,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def get(path: str) -> str:
            try:
                return httpx.get(site + path, timeout=10).text
            except httpx.TransportError:
                return ""

        wait_until(lambda: "Example blog" in get("/"), timeout=30)
        assert "Grace Hopper</a>: 2 posts" in get("/")
        assert "The sidebar is being prepared" in get("/authors/2/")
        wait_until(lambda: "Recent posts by Grace Hopper" in get("/authors/2/"))
        assert "Compilers for everyone" in get("/authors/2/")
        manage(
            "shell",
            "-c",
            "from blog.models import Post; p = Post.objects.get(pk=3); "
            "p.title = 'Compilers for all'; p.save()",
        )
        assert "Compilers for everyone" in get("/authors/2/")
        wait_until(lambda: "Compilers for all" in get("/authors/2/"))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        service.stop()


def test_the_appengine_example_config_starts(tmp_path: Path) -> None:
    config = Path(__file__).parent.parent / "examples" / "appengine" / "refresherd.toml"
    service = start_service(config, env={"RFD_READ": "example-read-token"})
    try:
        assert service.get("/healthz").status_code == 200
        with Client(service.url, service.admin_url) as client:
            jobs = client.jobs()
        assert [job["name"] for job in jobs] == ["banner", "rates"]
    finally:
        service.stop()


def test_the_contrib_modules_import_nothing_of_the_server() -> None:
    contrib = Path(__file__).parent.parent / "refresherd" / "contrib"
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
