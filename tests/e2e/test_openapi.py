"""
The OpenAPI document, C{refresherd/openapi.json}, true to a live C{twistd -n
refresherd}: served as it is by C{GET /v1/openapi.json}, and schemathesis
generates requests from it and checks every answer against it (no 5xx;
status, content type, headers and body as documented).  The document itself:
tests/unit/test_openapi.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi import checks

from tests.harness import Service, start_origin, start_service
from tests.openapi_document import DOCUMENT, RAW

READ, WRITE, ADMIN, METRICS = "read-token-1", "write-token-1", "admin-token-1", "metrics-token-1"

CONFIG = f"""
[server]
max_batch = 5

[store]
url = "memory://"

[auth]
read_tokens = ["{READ}"]
write_tokens = ["{WRITE}"]
admin_tokens = ["{ADMIN}"]
metrics_tokens = ["{METRICS}"]

# A second to compute, but on_miss = "empty": callers get 202 at once.
[jobs.square]
args = ["n"]
arg_patterns = {{ n = "-?[0-9]{{1,9}}" }}
fetch = "python"
callable = "refresherd.demo:slow_square"
on_miss = "empty"
fresh = "2s"
stale = "1m"
early_refresh = 0
writable = true

[jobs.user]
args = ["name"]
url = "{{origin}}/users/{{name}}"
tags = ["user:{{name}}"]
fresh = "2s"
stale = "1m"
wait_timeout = "300ms"
timeout = "2s"
error_ttl = "1s"
writable = true
"""

# Jobs and arguments of CONFIG, and the keys they make: a generated case is
# often rewritten to name them, so that hits, misses, stale and pending
# answers, timeouts, failed fetches and real entries are exercised, not only
# unknown jobs and bad arguments.
NAMES = ["bob", "alice", "slow", "broken"]
VALID_ARGS = {
    "square": st.fixed_dictionaries({"n": st.integers(0, 5).map(str)}),
    "user": st.fixed_dictionaries({"name": st.sampled_from(NAMES)}),
}
# Written when the service starts; never purged by key, so that GET /v1/entries finds them.
SEEDED = {
    "rfd:square:v1:n=0": ("/v1/jobs/square?n=0", "application/json", b'{"n": 0, "square": 0}'),
    "rfd:user:v1:name=bob": ("/v1/jobs/user?name=bob", "text/plain", b"hello"),
    "rfd:user:v1:name=alice": ("/v1/jobs/user?name=alice", "image/png", b"\x89PNG\xff"),
}
LOOKED_UP = [*SEEDED, "rfd:user:v1:name=broken", "rfd:user:v1:name=nobody"]
PURGED = ["rfd:square:v1:n=1", "rfd:square:v1:n=2", "rfd:user:v1:name=slow"]


# -- a live service ----------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One C{twistd -n refresherd} for the module, its http job on an origin of its own."""
    origin = start_origin()
    origin.set("/users/slow", delay=0.6)
    origin.set("/users/broken", status=500, body=b"down")
    config = tmp_path_factory.mktemp("openapi") / "refresherd.toml"
    config.write_text(CONFIG.replace("{origin}", origin.url))
    service = start_service(config)
    try:
        for path, content_type, body in SEEDED.values():
            headers = {"Authorization": f"Bearer {WRITE}", "Content-Type": content_type}
            put = httpx.put(service.url + path, content=body, headers=headers)
            assert put.status_code == 200, put.text
        broken = service.get(
            "/v1/jobs/user?name=broken", headers={"Authorization": f"Bearer {READ}"}
        )
        assert broken.status_code == 502, broken.text
        yield service
    finally:
        status = service.stop()
        origin.server.shutdown()
        assert status == 0, service.output()
        tracebacks = logged_tracebacks(service)
        assert not tracebacks, "the service logged tracebacks:\n" + "".join(tracebacks)


def logged_tracebacks(service: Service) -> list[str]:
    """The events of the service's log that carry a traceback (lines after the first indented)."""
    events: list[str] = []
    for line in service.lines:
        if line.startswith("\t") and events:
            events[-1] += line
        else:
            events.append(line)
    return [event for event in events if "Traceback" in event]


def test_get_openapi_json_serves_the_file_byte_for_byte(service: Service) -> None:
    token = {"Authorization": f"Bearer {READ}"}
    response = service.get("/v1/openapi.json", headers=token)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content == RAW
    head = httpx.head(service.url + "/v1/openapi.json", headers=token)
    assert head.status_code == 200 and head.content == b""


CHECKS = [
    schemathesis.checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


def load_schema(token: str | None) -> Any:
    """The document for schemathesis, sending C{token} (if any) with every request."""
    project: dict[str, Any] = {
        # Positive and negative data; a fixed seed, so that a failure comes back.
        "seed": 20261202,
        "generation": {"mode": "all", "database": "none"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        "checks": {
            # The origin failing (502 fetch_failed) and a slow fetch (504 wait_timeout) are
            # answers of this configuration; any other 5xx is a bug of refresherd.
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "504"]},
        },
        "request-timeout": 10,
    }
    if token is not None:
        project["headers"] = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict(project))
    schema.hook("flatmap_case")(plausible)
    return schema


def plausible(context: Any, case: Any) -> st.SearchStrategy[Any]:
    """
    The generated case as it is, or rewritten to name what the service has:
    a configured job with valid arguments (and sometimes C{If-None-Match: *}),
    a key it holds, a batch of such items, a purge of them.
    """
    path = case.operation.path

    def rewrite(draw: st.DrawFn) -> Any:
        if path in (
            "/v1/jobs/{job}",
            "/v1/jobs/{job}/raw",
            "/v1/jobs/{job}/refresh",
            "/v1/jobs/{job}/key",
        ):
            job = draw(st.sampled_from(sorted(VALID_ARGS)))
            case.path_parameters = {"job": job}
            case.query = draw(VALID_ARGS[job])
            if case.method.upper() in ("GET", "HEAD") and draw(st.booleans()):
                case.headers = {**(case.headers or {}), "If-None-Match": "*"}
        elif path == "/v1/entries/{key}":
            case.path_parameters = {"key": quote(draw(st.sampled_from(LOOKED_UP)), safe="")}
            case.query = draw(st.sampled_from([{}, {"value": "1"}, {"value": "0"}]))
        elif path == "/v1/fetch":
            items = st.sampled_from(sorted(VALID_ARGS)).flatmap(
                lambda job: st.fixed_dictionaries({"job": st.just(job), "args": VALID_ARGS[job]})
            )
            case.body = {"items": draw(st.lists(items, max_size=6))}
        elif path == "/v1/purge":
            case.body = {
                "keys": draw(st.lists(st.sampled_from(PURGED), max_size=2)),
                "jobs": draw(st.lists(st.sampled_from(sorted(VALID_ARGS)), max_size=1)),
                "tags": draw(st.lists(st.sampled_from([f"user:{n}" for n in NAMES]), max_size=2)),
                "soft": draw(st.booleans()),
            }
        return case

    return st.one_of(st.just(case), st.composite(rewrite)())


def base_url(service: Service, case: Any) -> str:
    """The admin listener for the admin routes, the public one for the others."""
    return service.admin_url if "admin" in (case.operation.tags or []) else service.url


TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
FRAMING = {"content-length", "transfer-encoding"}


def not_http(case: Any) -> bool:
    """
    Whether the case's own headers make the request invalid HTTP: a name that
    is not a token, or a framing header of its own beside the client's.
    """
    names = [str(name) for name in (case.headers or {})]
    return any(not TOKEN.fullmatch(n) or n.lower() in FRAMING for n in names)


def call_and_validate(case: Any, service: Service) -> None:
    """
    The case sent and its answer checked; twisted.web's bare 400 is allowed
    for a request that is not valid HTTP (docs/README.md, "Errors"), and only for one.
    """
    response = case.call(base_url=base_url(service, case))
    if response.status_code == 400 and not response.content and not_http(case):
        return
    case.validate_response(response, checks=CHECKS)


AS_ADMIN = load_schema(ADMIN)
AS_WRITER = load_schema(WRITE)
ANONYMOUS = load_schema(None)
FEW = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@AS_ADMIN.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_service_answers_an_admin_as_documented(case: Any, service: Service) -> None:
    call_and_validate(case, service)


@AS_WRITER.parametrize()
@FEW
def test_the_service_answers_a_writer_as_documented(case: Any, service: Service) -> None:
    call_and_validate(case, service)


@ANONYMOUS.parametrize()
@FEW
def test_the_service_answers_anyone_as_documented(case: Any, service: Service) -> None:
    call_and_validate(case, service)


# Requests schemathesis does not make by itself, each to be answered as documented
# (without a 5xx): (method, path template, path parameters as sent, query, headers, body).
DEEP = 100_000
HOSTILE: dict[str, tuple[str, str, dict[str, str], str, dict[str, str], bytes]] = {
    "batch nested too deep": (
        "POST",
        "/v1/fetch",
        {},
        "",
        {"Content-Type": "application/json"},
        b'{"items": [' + b"[" * DEEP + b"]" * DEEP + b"]}",
    ),
    "purge nested too deep": (
        "POST",
        "/v1/purge",
        {},
        "",
        {"Content-Type": "application/json"},
        b'{"keys": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    ),
    "put nested too deep": (
        "PUT",
        "/v1/jobs/{job}",
        {"job": "user"},
        "name=deep",
        {"Content-Type": "application/json"},
        b"[" * DEEP + b"]" * DEEP,
    ),
    "job name not UTF-8": ("GET", "/v1/jobs/{job}", {"job": "%FF"}, "name=bob", {}, b""),
    "entry key not UTF-8": ("GET", "/v1/entries/{key}", {"key": "rfd%3Ax%FF"}, "", {}, b""),
    "empty job name": ("GET", "/v1/jobs/{job}/raw", {"job": ""}, "", {}, b""),
    "put with if-none-match": (
        "PUT",
        "/v1/jobs/{job}",
        {"job": "user"},
        "name=bob",
        {"Content-Type": "text/plain", "If-None-Match": "*"},
        b"hello",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_requests_are_answered_as_documented(name: str, service: Service) -> None:
    method, template, parameters, query, headers, body = HOSTILE[name]
    operation = AS_ADMIN[template][method]
    base = service.admin_url if "admin" in (operation.tags or []) else service.url
    url = base + template.format(**parameters) + ("?" + query if query else "")
    headers = {"Authorization": f"Bearer {ADMIN}", **headers}
    response = httpx.request(method, url, headers=headers, content=body, timeout=30)
    case = operation.Case(method=method, path_parameters=parameters, headers=headers)
    case.validate_response(response, checks=CHECKS)
