"""
End to end: a single C{twistd -n refresherd} reloaded under load
(docs/configuration.md, "Reloading"): jobs added, changed and removed, a token
rotated, a job moved to new keys, then a broken file refused; no request fails
but those the changes make, and nothing is fetched twice.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from tests.harness import Service, start_origin, start_service, wait_until
from tests.load import Load, Outcome, error_code

JOB = """
[jobs.{name}]
args = ["k"]
url = "{origin}/{name}/{{k}}"
fresh = "{fresh}"
stale = "10m"
wait_timeout = "5s"
timeout = "3s"
version = {version}
"""


SUCCESSFUL = "refresherd_config_last_reload_successful"
SUCCESS_AT = "refresherd_config_last_reload_success_timestamp_seconds"


def config(origin: str, tokens: list[str], jobs: dict[str, tuple[str, int]]) -> str:
    """A file with these read tokens and jobs (name: (fresh, version)), each on the origin."""
    text = "[auth]\nread_tokens = [" + ", ".join(f'"{t}"' for t in tokens) + "]\n"
    for name, (fresh, version) in jobs.items():
        text += JOB.format(name=name, origin=origin, fresh=fresh, version=version)
    return text


def reloads(service: Service, word: str) -> int:
    return sum(1 for line in service.lines if word in line)


def metric(service: Service, name: str) -> float:
    text = httpx.get(service.admin_url + "/metrics", timeout=5).text
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_reloads_under_load_fail_no_request_but_those_the_changes_make(tmp_path: Path) -> None:
    origin = start_origin()
    origin.default.body = b'{"n": {n}}'
    origin.default.delay = 0.1  # misses wait for their fetch; reloads land while some run
    path = tmp_path / "refresherd.toml"
    path.write_text(config(origin.url, ["tok-1"], {"a": ("1m", 1), "b": ("1m", 1)}))
    service = start_service(path)
    token = {"Authorization": "Bearer tok-1"}
    keys = [f"{job}?k={k}" for job in ("a", "b") for k in range(12)]
    marks: dict[str, float] = {}
    try:
        with Load(
            [service.url], keys, clients=6, path="/v1/jobs/%s", pause=0.002, headers=lambda: token
        ) as load:
            load.wait_for(200)

            # 1. SIGHUP: c added, a changed (its fetches in flight finish under the old settings).
            path.write_text(
                config(origin.url, ["tok-1"], {"a": ("30s", 1), "b": ("1m", 1), "c": ("1m", 1)})
            )
            service.process.send_signal(signal.SIGHUP)
            wait_until(lambda: reloads(service, "refresherd: reloaded") == 1)
            answer = httpx.get(service.url + "/v1/jobs/c?k=0", headers=token, timeout=5)
            assert answer.status_code == 200, answer.text  # at once
            keys += [f"c?k={k}" for k in range(12)]
            load.wait_for(200, since=load.now())

            # 2. POST /v1/reload: a second token beside the first, and the clients move to it.
            jobs = {"a": ("30s", 1), "b": ("1m", 1), "c": ("1m", 1)}
            path.write_text(config(origin.url, ["tok-1", "tok-2"], jobs))
            reloaded = reload(service)
            assert (reloaded["tokens"], reloaded["changed"]) == (True, [])
            token = {"Authorization": "Bearer tok-2"}
            load.wait_for(100, since=load.now())

            # 3. The old token removed, b removed, a moved to new keys.
            jobs = {"a": ("30s", 2), "c": ("1m", 1)}
            path.write_text(config(origin.url, ["tok-2"], jobs))
            marks["b removed"] = load.now()
            reloaded = reload(service)
            assert (reloaded["removed"], reloaded["new_keys"]) == (["b"], ["a"])
            old = httpx.get(
                service.url + "/v1/jobs/c?k=0", headers={"Authorization": "Bearer tok-1"}
            )
            assert old.status_code == 401
            moved = httpx.get(service.url + "/v1/jobs/a?k=0", headers=token, timeout=5).json()
            assert moved["key"] == "rfd:a:v2:k=0"
            load.wait_for(200, since=load.now())

            # 3b. Six more in a row, by both ways, each changing c's lifetimes (same keys).
            done = reloads(service, "refresherd: reloaded")
            for i in range(1, 7):
                jobs = {"a": ("30s", 2), "c": (("1m", "2m")[i % 2], 1)}
                path.write_text(config(origin.url, ["tok-2"], jobs))
                if i % 2:
                    service.process.send_signal(signal.SIGHUP)
                else:
                    assert reload(service)["changed"] == ["c"]
                wait_until(lambda i=i: reloads(service, "refresherd: reloaded") == done + i)
                load.wait_for(30, since=load.now())

            # 4. A broken file by SIGHUP: refused, nothing changes, the log and metric say why.
            served = httpx.get(service.admin_url + "/v1/jobs", timeout=5).json()
            assert metric(service, SUCCESSFUL) == 1
            loaded_at = metric(service, SUCCESS_AT)
            path.write_text(config(origin.url, ["tok-2"], jobs) + "[jobs.d]\nfresh = 1\nurl = 3\n")
            service.process.send_signal(signal.SIGHUP)
            wait_until(lambda: reloads(service, "reload refused") == 1)
            assert httpx.get(service.admin_url + "/v1/jobs", timeout=5).json() == served
            assert (metric(service, SUCCESSFUL), metric(service, SUCCESS_AT)) == (0, loaded_at)
            load.wait_for(100, since=load.now())
        outcomes = load.results()
    finally:
        assert service.stop() == 0, service.output()

    refused = [line for line in service.lines if "reload refused" in line]
    assert (
        refused[0]
        .rstrip()
        .endswith(
            "refresherd: "
            f"{path}: jobs.d.url: must be a string, not an integer (reload refused: the "
            "configuration loaded before is still served)"
        )
    ), refused
    failed = [o for o in outcomes if not allowed(o, marks["b removed"])]
    assert failed == [], "\n".join(o.describe() for o in failed[:20])
    assert len(outcomes) > 600, len(outcomes)  # measured: about 450 a second
    assert {"hit", "miss"} <= {o.status_of_value for o in outcomes}
    assert any(o.kind == "error:unknown_job" or o.status == 404 for o in outcomes)
    # Each key fetched once per version: never twice for one reload.
    for k in range(12):
        assert origin.count(f"/b/{k}") <= 1 and origin.count(f"/c/{k}") <= 1, k
        assert origin.count(f"/a/{k}") <= 2, k


def reload(service: Service) -> Any:
    answer = httpx.post(
        service.admin_url + "/v1/reload",
        json={},
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def allowed(outcome: Outcome, removed_at: float) -> bool:
    """A value, or b's unknown_job once a reload removing it began."""
    if outcome.kind == "value":
        return True
    return (
        outcome.status == 404
        and error_code(outcome.body) == "unknown_job"
        and outcome.key.startswith("b?")
        and outcome.sent + outcome.took >= removed_at
    )
