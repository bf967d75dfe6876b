"""
End to end for operators: two C{twistd -n refresherd} processes on one real
Redis or memcached (each test runs on both), purged through the admin API of
one and asked through the other; secrets kept out of every answer and log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.harness import Origin, Service, start_service, wait_until
from tests.memcached_server import MemcachedServer
from tests.redis_server import RedisServer

SECRETS = {
    "RFD_WRITE": "write-token-0123456789",
    "RFD_ADMIN": "admin-token-0123456789",
    "RFD_HEADER": "header-secret-0123456789",
    "RFD_SIGN": "signing-secret-0123456789",
}
QUERY_SECRET = "query-secret-0123456789"
PASS_SECRET = "pass-secret-0123456789"
PATH_SECRET = "path-secret-0123456789"
TEAMS = f"/{PATH_SECRET}/teams"
"""The path of the team job's URL, given as env:RFD_TEAM_URL."""

CONFIG = """
[auth]
write_tokens = ["env:RFD_WRITE"]
admin_tokens = ["env:RFD_ADMIN"]

[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}?api_key={query_secret}"
headers = {{ "X-Api-Key" = "env:RFD_HEADER", "X-Api-Pass" = "{pass_secret}" }}
sign = "env:RFD_SIGN"
tags = ["user:{{name}}", "everyone"]
fresh = "1h"
stale = "1h"
early_refresh = 0

[jobs.team]
args = ["team"]
url = "env:RFD_TEAM_URL"
fresh = "1h"
early_refresh = 0
"""

ADMIN = {"Authorization": f"Bearer {SECRETS['RFD_ADMIN']}"}
WRITE = {"Authorization": f"Bearer {SECRETS['RFD_WRITE']}"}


@pytest.fixture
def pair(
    tmp_path: Path, origin: Origin, shared_store: RedisServer | MemcachedServer
) -> Iterator[tuple[Service, Service]]:
    config = tmp_path / "refresherd.toml"
    config.write_text(
        CONFIG.format(origin=origin.url, query_secret=QUERY_SECRET, pass_secret=PASS_SECRET)
    )
    env = {**SECRETS, "RFD_TEAM_URL": origin.url + TEAMS + "/{team}"}
    services = [start_service(config, "--store", shared_store.url(), env=env) for _ in range(2)]
    yield services[0], services[1]
    for service in services:
        service.stop()


def value(service: Service, path: str) -> tuple[str, object]:
    answer = service.get(path)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["status"], body["value"]


def purge(service: Service, headers: dict[str, str] = ADMIN, **body: object) -> httpx.Response:
    return httpx.post(service.admin_url + "/v1/purge", json=body, headers=headers, timeout=10)


def test_a_key_purged_through_one_process_is_a_miss_in_the_other(
    pair: tuple[Service, Service], origin: Origin
) -> None:
    one, two = pair
    origin.set("/users/bob", body=b'{"fetch": {n}}')
    assert value(one, "/v1/jobs/user?name=bob") == ("miss", {"fetch": 1})
    assert value(two, "/v1/jobs/user?name=bob") == ("hit", {"fetch": 1})
    answer = purge(one, WRITE, keys=["rfd:user:v1:name=bob"])
    assert (answer.status_code, answer.json()) == (200, {"purged": 1})
    assert value(two, "/v1/jobs/user?name=bob") == ("miss", {"fetch": 2})
    assert origin.count("/users/bob") == 2


def test_a_tag_purged_through_one_process_reaches_every_entry_in_the_other(
    pair: tuple[Service, Service], origin: Origin
) -> None:
    one, two = pair
    for name in ("ann", "cy"):
        origin.set(f"/users/{name}", body=b'{"fetch": {n}}')
        assert value(one, f"/v1/jobs/user?name={name}")[0] == "miss"
    origin.set(TEAMS + "/red", body=b'{"fetch": {n}}')
    assert value(one, "/v1/jobs/team?team=red")[0] == "miss"
    assert purge(one, WRITE, tags=["everyone"]).json() == {"purged": 1}
    for name in ("ann", "cy"):
        assert value(two, f"/v1/jobs/user?name={name}") == ("miss", {"fetch": 2})
    assert value(two, "/v1/jobs/team?team=red") == ("hit", {"fetch": 1})


def test_a_soft_purge_answers_stale_then_refreshes_once(
    pair: tuple[Service, Service], origin: Origin
) -> None:
    one, two = pair
    origin.set("/users/dee", body=b'{"fetch": {n}}')
    assert value(one, "/v1/jobs/user?name=dee") == ("miss", {"fetch": 1})
    refreshing = threading.Event()  # the refresh is held under way until it is set
    origin.set("/users/dee", gate=refreshing)
    assert purge(one, tags=["user:dee"], soft=True).json() == {"purged": 1}
    for service in (two, one, two):  # nobody waits for the refresh
        assert value(service, "/v1/jobs/user?name=dee") == ("stale", {"fetch": 1})
    refreshing.set()
    wait_until(lambda: value(two, "/v1/jobs/user?name=dee") == ("hit", {"fetch": 2}))
    assert value(one, "/v1/jobs/user?name=dee") == ("hit", {"fetch": 2})
    time.sleep(0.2)
    assert origin.count("/users/dee") == 2


def test_a_job_purged_through_one_process_and_its_entry_inspected(
    pair: tuple[Service, Service], origin: Origin
) -> None:
    one, two = pair
    origin.set(TEAMS + "/blue", body=b'{"fetch": {n}}')
    assert value(one, "/v1/jobs/team?team=blue")[0] == "miss"
    entry = httpx.get(
        two.admin_url + "/v1/entries/" + quote("rfd:team:v1:team=blue", safe=""),
        headers=ADMIN,
        timeout=10,
    )
    assert entry.status_code == 200
    assert (entry.json()["job"], entry.json()["purged"]) == ("team", None)
    assert purge(one, WRITE, jobs=["team"]).status_code == 403  # jobs need an admin token
    assert purge(one, jobs=["team"]).json() == {"purged": 1}
    entry = httpx.get(
        two.admin_url + "/v1/entries/" + quote("rfd:team:v1:team=blue", safe=""),
        headers=ADMIN,
        timeout=10,
    )
    assert entry.json()["purged"] == "hard"
    assert value(two, "/v1/jobs/team?team=blue") == ("miss", {"fetch": 2})


def test_secrets_never_appear_in_answers_or_logs(
    pair: tuple[Service, Service], origin: Origin
) -> None:
    one, two = pair
    jobs = httpx.get(one.admin_url + "/v1/jobs", headers=ADMIN, timeout=10)
    assert jobs.status_code == 200
    shown = {job["name"]: job for job in jobs.json()["jobs"]}
    assert shown["team"]["url"] == origin.url + "/<redacted>/<redacted>/{team}"
    assert shown["user"]["headers"] == {"X-Api-Key": "<redacted>", "X-Api-Pass": "<redacted>"}
    origin.set("/users/eve", status=500)
    one.get("/v1/jobs/user?name=eve")  # a failed fetch is logged
    httpx.get(one.admin_url + "/v1/jobs", headers={"Authorization": "Bearer wrong"}, timeout=10)
    purge(one, WRITE, jobs=["user"])  # refused, and logged as nothing secret
    one.stop()
    for text in (jobs.text, one.output()):
        for secret in [*SECRETS.values(), QUERY_SECRET, PASS_SECRET, PATH_SECRET]:
            assert secret not in text


REFRESHERCTL = str(Path(sys.executable).with_name("refresherctl"))


def refresherctl(service: Service | None, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script as an operator runs it, pointed at C{service}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHERD_")}
    if service is not None:
        env.update(REFRESHERD_ADMIN_URL=service.admin_url, REFRESHERD_URL=service.url)
    env["REFRESHERD_TOKEN"] = SECRETS["RFD_ADMIN"]
    return subprocess.run(
        [REFRESHERCTL, *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_refresherctl_purges_inspects_refreshes_and_lists(
    pair: tuple[Service, Service], origin: Origin
) -> None:
    one, two = pair
    origin.set("/users/fay", body=b'{"fetch": {n}}')
    got = refresherctl(one, "get", "user", "name=fay")
    assert (got.returncode, json.loads(got.stdout)) == (0, {"fetch": 1})
    inspected = refresherctl(two, "inspect", "rfd:user:v1:name=fay", "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["tags"] == ["user:fay", "everyone"]
    purged = refresherctl(two, "purge", "--tag", "user:fay", "--soft")
    assert (purged.returncode, purged.stdout) == (0, "purged 1\n")
    assert value(one, "/v1/jobs/user?name=fay") == ("stale", {"fetch": 1})
    wait_until(lambda: value(two, "/v1/jobs/user?name=fay") == ("hit", {"fetch": 2}))
    refreshed = refresherctl(one, "refresh", "user", "name=fay")
    assert (refreshed.returncode, refreshed.stdout) == (0, "refreshing rfd:user:v1:name=fay\n")
    wait_until(lambda: origin.count("/users/fay") == 3)
    listed = refresherctl(one, "jobs")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["NAME", "team", "user"]
    as_json = refresherctl(one, "jobs", "--json")
    for text in (listed.stdout, listed.stderr, as_json.stdout):
        for secret in [*SECRETS.values(), QUERY_SECRET, PASS_SECRET, PATH_SECRET]:
            assert secret not in text


def test_refresherctl_exit_codes(pair: tuple[Service, Service]) -> None:
    one, _ = pair
    unknown = refresherctl(one, "refresh", "nope")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "refresherctl: unknown_job: no job named 'nope'\n"
    down = refresherctl(None, "--url", "http://127.0.0.1:9", "jobs")
    assert down.returncode == 1
    assert down.stderr.startswith("refresherctl: cannot reach http://127.0.0.1:9")
    assert len(down.stderr.splitlines()) == 1
    for usage in (["purge"], ["get"], ["frobnicate"], ["get", "user", "novalue"]):
        answer = refresherctl(one, *usage)
        assert answer.returncode == 2, usage
        assert "Traceback" not in answer.stderr
    for answer in (unknown, down):
        assert SECRETS["RFD_ADMIN"] not in answer.stderr
