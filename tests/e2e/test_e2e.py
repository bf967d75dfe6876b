"""
End to end: C{twistd -n refresherd} started as a user starts it, a real
origin over HTTP, requests from real clients.

These tests wait in real time (the service is another process), so their
windows are short: a second or two.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from tests.harness import Origin, Service, start_service, wait_until

CONFIG = """
[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "{fresh}"
stale = "{stale}"
stale_if_error = "{stale_if_error}"
error_ttl = "{error_ttl}"
on_miss = "{on_miss}"
wait_timeout = "10s"
timeout = "5s"
early_refresh = {early_refresh}
tags = ["user:{{name}}"]

[jobs.square]
args = ["n"]
fetch = "python"
callable = "refresherd.demo:slow_square"
fresh = "1m"
"""


def write_config(tmp_path: Path, origin: Origin, **job: object) -> Path:
    values: dict[str, object] = {
        "fresh": "1m",
        "stale": "1h",
        "stale_if_error": "0s",
        "error_ttl": "5s",
        "on_miss": "wait",
        "early_refresh": 1.0,
    }
    values.update(job)
    path = tmp_path / "refresherd.toml"
    path.write_text(CONFIG.format(origin=origin.url, **values))
    return path


class Run(Protocol):
    """Start refresherd with job C{user}'s settings (C{fresh}, C{stale}, ...) given."""

    def __call__(self, **job: object) -> Service: ...


@pytest.fixture
def run(tmp_path: Path, origin: Origin) -> Iterator[Run]:
    started: list[Service] = []

    def run(**job: object) -> Service:
        service = start_service(write_config(tmp_path, origin, **job))
        started.append(service)
        return service

    yield run
    for service in started:
        service.stop()


def status(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def test_miss_hit_stale_hit_lifecycle(run: Run, origin: Origin) -> None:
    origin.set("/users/bob", body=b'{"fetch": {n}}')
    service = run(fresh="1s", stale="1h")
    first = service.get("/v1/jobs/user?name=bob")
    assert status(first) == "miss"
    assert first.json()["value"] == {"fetch": 1}
    assert first.headers["cache-status"] == "refresherd; fwd=miss; stored"
    assert status(service.get("/v1/jobs/user?name=bob")) == "hit"
    time.sleep(1.1)
    stale = service.get("/v1/jobs/user?name=bob")
    assert (status(stale), stale.json()["value"]) == ("stale", {"fetch": 1})
    assert stale.headers["cache-status"].startswith("refresherd; hit; ttl=-")
    wait_until(lambda: service.get("/v1/jobs/user?name=bob").json()["status"] == "hit")
    assert service.get("/v1/jobs/user?name=bob").json()["value"] == {"fetch": 2}
    assert origin.count("/users/bob") == 2


def test_a_stampede_on_an_absent_key_makes_one_origin_request(run: Run, origin: Origin) -> None:
    origin.set("/users/hot", delay=1.0)
    service = run()

    def ask(_: int) -> str:
        with httpx.Client(timeout=30) as client:
            return status(client.get(service.url + "/v1/jobs/user?name=hot"))

    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(ask, range(200)))
    assert answers.count("miss") + answers.count("hit") == 200
    assert origin.count("/users/hot") == 1
    metrics = httpx.get(service.admin_url + "/metrics").text
    assert 'refresherd_fetches_total{job="user",outcome="success"} 1.0' in metrics
    # Every answer timed once, by its route: what twistd's own requests are timed by.
    timed = 'refresherd_http_request_duration_seconds_count{code="200",route="/v1/jobs/{job}"}'
    assert f"{timed} 200.0" in metrics


def test_stale_if_error_serves_the_old_value_while_the_origin_fails(
    run: Run, origin: Origin
) -> None:
    service = run(fresh="1s", stale="0s", stale_if_error="1h")
    assert status(service.get("/v1/jobs/user?name=eve")) == "miss"
    origin.set("/users/eve", status=503, body=b"down")
    time.sleep(1.1)
    answer = service.get("/v1/jobs/user?name=eve").json()
    assert (answer["status"], answer["value"]) == ("stale", {"ok": True})
    assert "503" in answer["error"]
    assert origin.count("/users/eve") == 2


def test_a_failed_miss_is_remembered_for_error_ttl(run: Run, origin: Origin) -> None:
    origin.set("/users/gone", status=500)
    service = run(error_ttl="1h")
    for _ in range(3):
        response = service.get("/v1/jobs/user?name=gone")
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "fetch_failed"
    assert origin.count("/users/gone") == 1


def test_on_miss_empty_answers_202_then_serves_the_value(run: Run, origin: Origin) -> None:
    origin.set("/users/amy", delay=0.3)
    service = run(on_miss="empty")
    first = service.get("/v1/jobs/user?name=amy")
    assert (first.status_code, first.json()["status"]) == (202, "pending")
    wait_until(lambda: service.get("/v1/jobs/user?name=amy").status_code == 200)
    assert service.get("/v1/jobs/user?name=amy").json()["status"] == "hit"
    assert origin.count("/users/amy") == 1


def test_early_refresh_keeps_a_hot_key_fresh(run: Run, origin: Origin) -> None:
    origin.set("/users/hot", delay=0.1)
    service = run(fresh="2s", stale="1h", early_refresh=30)
    seen = []
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        seen.append(status(service.get("/v1/jobs/user?name=hot")))
        time.sleep(0.05)
    assert seen[0] == "miss"
    assert set(seen[1:]) == {"hit"}
    assert origin.count("/users/hot") >= 3
    metrics = httpx.get(service.admin_url + "/metrics").text
    assert 'refresherd_early_refreshes_total{job="user"}' in metrics


def test_python_job_and_raw_endpoint(run: Run) -> None:
    service = run()
    answer = service.get("/v1/jobs/square?n=12")
    assert answer.json()["value"]["square"] == 144
    raw = service.get("/v1/jobs/square/raw?n=12")
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-content-type-options"] == "nosniff"
    assert raw.headers["etag"] == answer.headers["etag"]


def test_bad_requests_get_json_errors_never_500(run: Run) -> None:
    service = run()
    cases = [
        ("GET", "/v1/jobs/nope", None, 404, "unknown_job"),
        ("GET", "/v1/jobs/user", None, 400, "bad_args"),
        ("GET", "/v1/jobs/user?name=%FF", None, 400, "bad_args"),
        ("GET", "/v1/jobs/user?name=..", None, 400, "bad_args"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("PATCH", "/v1/jobs/user", None, 405, "method_not_allowed"),
        ("POST", "/v1/fetch", b"{nope", 400, "bad_json"),
        ("POST", "/v1/fetch", b"x" * (1024 * 1024 + 1), 413, "body_too_large"),
        ("PUT", "/v1/jobs/user?name=a", b"v", 403, "forbidden"),
    ]
    for method, path, body, code, error in cases:
        response = httpx.request(method, service.url + path, content=body, timeout=10)
        assert response.status_code == code, (method, path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == error


def test_a_body_announced_too_large_is_refused_before_it_is_sent(run: Run) -> None:
    service = run()
    with socket.create_connection(("127.0.0.1", service.ports["public"]), timeout=10) as s:
        s.sendall(
            b"POST /v1/fetch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b'"body_too_large"' in reply


def test_sigterm_answers_the_requests_waiting_on_a_fetch_then_exits_0(
    run: Run, origin: Origin
) -> None:
    origin.set("/users/slow", delay=1.0)
    service = run()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(service.get, "/v1/jobs/user?name=slow")
        wait_until(lambda: origin.count("/users/slow") == 1)
        assert service.stop() == 0
        answer = pending.result(timeout=10)
    assert (answer.status_code, answer.json()["status"]) == (200, "miss")
    assert "Traceback" not in service.output()
