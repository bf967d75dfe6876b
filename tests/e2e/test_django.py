"""
L{refresherd.contrib.django} end to end, with Django's test machinery inside
pytest (pytest-django): the test project C{tests/django_project} runs on
pytest-django's live server, and a live C{twistd -n refresherd} calls it back
for its signed C{fetch = "http"} jobs; and the examples (examples/django_site
as its README runs it, examples/appengine's configuration) with a live
refresherd.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.django_setup import setup_django

setup_django()

import httpx  # noqa: E402
import pytest  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.db import transaction  # noqa: E402
from django.template import Context, Template  # noqa: E402
from django.test import Client as DjangoClient  # noqa: E402

from refresherd.client import Client, FetchFailed, UnknownJob  # noqa: E402
from refresherd.signing import sign as sign_request  # noqa: E402  (the fetcher's signer)
from tests.django_project.models import Profile  # noqa: E402
from tests.django_project.refreshers import CALLS  # noqa: E402
from tests.harness import Service, start_service, wait_until  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

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
        "TRUSTED_HTML_JOBS": ["sidebar"],
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


def test_the_tag_escapes_the_value_of_a_job_not_trusted_as_html(rfd: Service) -> None:
    template = Template('{% load refresherd %}{% refreshed "echo" q=q %}-{% endrefreshed %}')
    html = template.render(Context({"q": "<b>x</b>"}))
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>" not in html


def test_a_batch_of_blocks_renders_each_as_it_would_alone(rfd: Service) -> None:
    template = Template(
        "{% load refresherd %}{% refreshed_batch %}"
        '{% for q in qs %}[{% refreshed "echo" q=q %}-{% endrefreshed %}]{% endfor %}'
        "{% endrefreshed_batch %}"
    )
    html = template.render(Context({"qs": ["<b>batch</b>", "two"]}))
    alone = Template('{% load refresherd %}{% refreshed "echo" q=q %}-{% endrefreshed %}')
    expected = "".join(f"[{alone.render(Context({'q': q}))}]" for q in ["<b>batch</b>", "two"])
    assert html == expected and "&lt;b&gt;batch&lt;/b&gt;" in html


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


# -- examples/django_site, as its README runs it -------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_site"


def test_the_example_site_runs_with_its_refresherd_config(tmp_path: Path) -> None:
    django_port = free_port()
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

    server: subprocess.Popen[bytes] | None = None
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
    config = Path(__file__).resolve().parents[2] / "examples" / "appengine" / "refresherd.toml"
    service = start_service(config, env={"RFD_READ": "example-read-token"})
    try:
        assert service.get("/healthz").status_code == 200
        with Client(service.url, service.admin_url) as client:
            jobs = client.jobs()
        assert [job["name"] for job in jobs] == ["banner", "rates"]
    finally:
        service.stop()
