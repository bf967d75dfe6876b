"""
The deployment files of C{deploy/} against a real refresherd: a real
Prometheus scrapes it with C{deploy/prometheus.yml}'s job and evaluates
C{deploy/alerts.yml} and the dashboard's queries, and the Containerfile's
health check passes on it, and fails once it has stopped.

prometheus comes from Debian's C{prometheus} package; C{.ci/run} installs it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy_files import (
    ALERTS,
    alert_rules,
    dashboard_queries,
    healthcheck,
    scrape_config,
    substitute,
    tool,
)
from tests.harness import start_service
from tests.redis_server import free_port

# -- a real Prometheus scraping a real refresherd -------------------------------------


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """
    refresherd with a metrics token, scraped by Prometheus every second with
    deploy/prometheus.yml's job (only the target and the token file changed) and
    deploy/alerts.yml: (Prometheus's URL, refresherd's admin address).
    """
    prometheus = tool("prometheus")
    token = tmp_path / "metrics.token"
    token.write_text("metrics-token-0123456789\n")
    config = tmp_path / "refresherd.toml"
    config.write_text(
        f'[auth]\nmetrics_tokens = ["file:{token}"]\n\n'
        '[jobs.square]\nargs = ["n"]\ncallable = "refresherd.demo:slow_square"\nfresh = "30s"\n'
    )
    service = start_service(config)
    log = (tmp_path / "prometheus.log").open("w")
    process = None
    try:
        admin = f"127.0.0.1:{service.ports['admin']}"
        scrape = scrape_config()
        scrape["static_configs"] = [{"targets": [admin]}]
        scrape["authorization"] = {**scrape["authorization"], "credentials_file": str(token)}
        scrape["scrape_interval"] = "1s"
        settings = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [scrape],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(settings))
        port = free_port()
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            eventually(lambda: httpx.get(f"{url}/-/ready", timeout=5).status_code == 200)
        except (AssertionError, httpx.HTTPError):
            pytest.fail("prometheus did not start:\n" + (tmp_path / "prometheus.log").read_text())
        yield url, admin
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        service.stop()


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The first true result of C{check}, retried while it is false or raises."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, IndexError, AssertionError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("not in time")
        time.sleep(0.25)


def test_prometheus_scrapes_refresherd(scraped: tuple[str, str]) -> None:
    """
    The token file is accepted (up is 1), refresherd's job label is stored as
    exported_job, every alert rule evaluates, and every dashboard query runs.
    """
    url, admin = scraped

    def query(expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    (up,) = eventually(lambda: [s for s in query("up") if s["value"][1] == "1"])
    assert up["metric"] == {"__name__": "up", "job": "refresherd", "instance": admin}
    (depth,) = query("refresherd_queue_depth")
    assert depth["metric"] == {
        "__name__": "refresherd_queue_depth",
        "job": "refresherd",
        "instance": admin,
        "exported_job": "square",
    }
    names = set(httpx.get(f"{url}/api/v1/label/__name__/values", timeout=10).json()["data"])
    assert {"process_cpu_seconds_total", "refresherd_fetches_in_flight"} <= names

    def evaluated() -> list[dict[str, Any]]:
        groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules: list[dict[str, Any]] = [rule for group in groups for rule in group["rules"]]
        assert all(rule["health"] == "ok" for rule in rules), rules
        return rules

    assert {rule["name"] for rule in eventually(evaluated)} == {
        rule["alert"] for rule in alert_rules()
    }
    for _, target in dashboard_queries():
        query(substitute(target["expr"]))


# -- Containerfile ----------------------------------------------------------------------


def test_container_healthcheck_against_refresherd(tmp_path: Path) -> None:
    """The health check exits 0 on a running refresherd (read tokens and all), else not."""
    config = tmp_path / "refresherd.toml"
    config.write_text('[auth]\nread_tokens = ["read-token-0123456789"]\n')
    service = start_service(config)
    code = healthcheck()[2].replace("127.0.0.1:8080", f"127.0.0.1:{service.ports['public']}")
    try:
        healthy = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        assert service.stop() == 0
    down = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert down.returncode != 0
