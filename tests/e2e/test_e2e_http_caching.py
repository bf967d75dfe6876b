"""
End to end: an origin's caching headers (docs/http-caching.md) through
C{twistd -n refresherd} and a real origin over HTTP: lifetimes from each
header, stale-while-revalidate and stale-if-error, no-store, Surrogate-Key
tags purged by tag, and revalidation with 304.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.harness import Origin, Service, start_service, wait_until

CONFIG = """
[jobs.page]
args = ["name"]
url = "{origin}/pages/{{name}}"
freshness = "origin"
fresh = "1m"
max_fresh = "1h"
stale = "1h"
stale_if_error = "2h"
min_refresh = "0.1s"
wait_timeout = "10s"
tags = ["page"]
"""


@pytest.fixture
def service(tmp_path: Path, origin: Origin) -> Iterator[Service]:
    path = tmp_path / "refresherd.toml"
    path.write_text(CONFIG.format(origin=origin.url))
    started = start_service(path)
    yield started
    started.stop()


def get(service: Service, name: str) -> httpx.Response:
    response = service.get(f"/v1/jobs/page?name={name}")
    assert response.status_code == 200, response.text
    return response


def entry(service: Service, name: str) -> httpx.Response:
    key = quote(f"rfd:page:v1:name={name}", safe="")
    return httpx.get(f"{service.admin_url}/v1/entries/{key}", timeout=10)


def metadata(service: Service, name: str) -> dict[str, object]:
    response = entry(service, name)
    assert response.status_code == 200, response.text
    meta: dict[str, object] = response.json()
    return meta


def windows(meta: dict[str, object]) -> tuple[float, float, float]:
    """fresh, stale and stale_if_error of an entry's metadata, in seconds."""
    fetched, fresh_until = float(meta["fetched_at"]), float(meta["fresh_until"])  # type: ignore[arg-type]
    stale_until, error_until = float(meta["stale_until"]), float(meta["error_until"])  # type: ignore[arg-type]
    return (
        round(fresh_until - fetched, 3),
        round(stale_until - fresh_until, 3),
        round(error_until - fresh_until, 3),
    )


def purge(service: Service, **body: object) -> None:
    answer = httpx.post(f"{service.admin_url}/v1/purge", json=body, timeout=10)
    assert answer.status_code == 200, answer.text


def test_each_header_sets_the_lifetime_within_the_jobs_cap(
    service: Service, origin: Origin
) -> None:
    now = time.time()
    cases = {
        "surrogate": (
            {"Surrogate-Control": "max-age=120", "Cache-Control": "max-age=5"},
            120,
            "Surrogate-Control",
        ),
        "smaxage": ({"Cache-Control": "max-age=5, s-maxage=300"}, 300, "s-maxage"),
        "maxage": ({"Cache-Control": "max-age=42"}, 42, "max-age"),
        # The origin sends its own Date, to the second.
        "expires": ({"Expires": formatdate(now + 600, usegmt=True)}, 600, "Expires"),
        "age": ({"Cache-Control": "max-age=100", "Age": "30"}, 70, "Age"),
        "capped": ({"Cache-Control": "max-age=86400"}, 3600, "max_fresh"),
        "silent": ({}, 60, "job"),
    }
    for name, (headers, _, _) in cases.items():
        origin.set(f"/pages/{name}", headers=headers)
    for name, (_, fresh, said) in cases.items():
        assert get(service, name).json()["status"] == "miss"
        meta = metadata(service, name)
        assert fresh - (2 if name == "expires" else 0) <= windows(meta)[0] <= fresh, (name, meta)
        assert said in meta["lifetimes"]["fresh"], (name, meta)  # type: ignore[index]


def test_stale_while_revalidate_and_stale_if_error_from_the_origin(
    service: Service, origin: Origin
) -> None:
    origin.set(
        "/pages/swr",
        headers={"Cache-Control": "max-age=10, stale-while-revalidate=20, stale-if-error=30"},
    )
    get(service, "swr")
    meta = metadata(service, "swr")
    assert windows(meta) == (10, 20, 30)
    assert "stale-while-revalidate=20" in meta["lifetimes"]["stale"]  # type: ignore[index]
    origin.set("/pages/big", headers={"Cache-Control": "max-age=10, stale-if-error=99999"})
    get(service, "big")
    assert windows(metadata(service, "big")) == (10, 3600, 7200)  # the job's caps


def test_a_no_store_answer_is_served_to_its_caller_and_never_stored(
    service: Service, origin: Origin
) -> None:
    origin.set("/pages/me", body=b'{"fetch": {n}}', headers={"Cache-Control": "private"})
    first = get(service, "me")
    assert (first.json()["status"], first.json()["value"]) == ("miss", {"fetch": 1})
    assert first.headers["cache-status"] == "refresherd; fwd=miss"
    assert entry(service, "me").status_code == 404
    second = get(service, "me")
    assert (second.json()["status"], second.json()["value"]) == ("miss", {"fetch": 2})
    assert origin.count("/pages/me") == 2


def test_surrogate_key_tags_are_purged_by_tag(service: Service, origin: Origin) -> None:
    origin.set("/pages/shoe", body=b'{"fetch": {n}}', headers={"Surrogate-Key": "product:7 sale"})
    get(service, "shoe")
    assert metadata(service, "shoe")["tags"] == ["page", "product:7", "sale"]
    assert get(service, "shoe").json()["status"] == "hit"
    purge(service, tags=["other"])
    assert get(service, "shoe").json()["status"] == "hit"
    purge(service, tags=["sale"])
    again = get(service, "shoe")
    assert (again.json()["status"], again.json()["value"]) == ("miss", {"fetch": 2})
    purge(service, tags=["product:7"], soft=True)
    assert get(service, "shoe").json()["status"] == "stale"
    wait_until(lambda: get(service, "shoe").json()["value"] == {"fetch": 3})
    assert origin.count("/pages/shoe") == 3


def test_a_304_renews_the_value_without_its_body_then_a_new_etag_replaces_it(
    service: Service, origin: Origin
) -> None:
    origin.set(
        "/pages/doc",
        body=b'{"version": 1}',
        headers={"ETag": '"v1"', "Cache-Control": "max-age=1"},
        not_modified=True,
    )
    first = get(service, "doc")
    served_etag = first.headers["etag"]
    fetched_at = metadata(service, "doc")["fetched_at"]
    assert metadata(service, "doc")["validators"] == {"etag": '"v1"', "last_modified": None}
    time.sleep(1.05)
    assert get(service, "doc").json()["status"] == "stale"
    wait_until(lambda: metadata(service, "doc")["fetched_at"] != fetched_at)
    assert origin.conditions["/pages/doc"] == [None, '"v1"']
    assert origin.bodies("/pages/doc") == [b'{"version": 1}']  # the 304 sent none
    renewed = get(service, "doc")
    assert (renewed.json()["status"], renewed.json()["value"]) == ("hit", {"version": 1})
    assert renewed.headers["etag"] == served_etag
    metrics = httpx.get(service.admin_url + "/metrics", timeout=10).text
    assert 'refresherd_fetches_total{job="page",outcome="not_modified"} 1.0' in metrics
    origin.set("/pages/doc", body=b'{"version": 2}', headers={"ETag": '"v2"'})
    time.sleep(1.05)
    get(service, "doc")
    wait_until(lambda: get(service, "doc").json()["value"] == {"version": 2})
    assert get(service, "doc").headers["etag"] != served_etag
    assert metadata(service, "doc")["validators"] == {"etag": '"v2"', "last_modified": None}
