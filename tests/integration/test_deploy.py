"""
The deployment files of C{deploy/} checked by the tools that read them:
C{promtool} (the alerting rules, their unit tests, the scrape configuration,
the dashboard's queries) and C{systemd-analyze} (the unit verifies, and its
offline security check).

promtool comes from Debian's C{prometheus} package, systemd-analyze from
C{systemd}; C{.ci/run} installs them.  No test here is ever skipped.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy_files import (
    ALERTS,
    ALERTS_TESTS,
    DEPLOY,
    PROMETHEUS,
    UNIT,
    alert_rules,
    dashboard_queries,
    endpoint_port,
    loaded_config,
    run,
    scrape_config,
    substitute,
    tool,
    value,
)

# -- alerts.yml -------------------------------------------------------------------------


def test_alerts_pass_promtool() -> None:
    promtool = tool("promtool")
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alerts_unit_tests() -> None:
    """deploy/alerts.test.yml passes, and makes every alert fire at least once."""
    result = run(tool("promtool"), "test", "rules", ALERTS_TESTS.name, cwd=DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr
    document = yaml.safe_load(ALERTS_TESTS.read_text())
    assert document["rule_files"] == [ALERTS.name]
    fired = {
        case["alertname"]
        for test in document["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in alert_rules()}


# -- prometheus.yml ---------------------------------------------------------------------


def test_prometheus_config() -> None:
    """It scrapes the admin listener's /metrics with a bearer token file, and loads alerts.yml."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert [(DEPLOY / path).resolve() for path in config["rule_files"]] == [ALERTS]
    scrape = scrape_config()
    assert scrape.get("metrics_path", "/metrics") == "/metrics"
    assert scrape.get("scheme", "http") == "http"
    assert scrape["authorization"]["type"] == "Bearer"
    assert scrape["authorization"]["credentials_file"].startswith("/")
    assert "credentials" not in scrape["authorization"]
    admin_port = endpoint_port(loaded_config().server.admin_listen)
    for static in scrape["static_configs"]:
        for target in static["targets"]:
            assert target.rpartition(":")[2] == str(admin_port), target
    result = run(tool("promtool"), "check", "config", "--syntax-only", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr


# -- grafana-dashboard.json -------------------------------------------------------------


def test_dashboard_queries_pass_promtool(tmp_path: Path) -> None:
    """Every query is PromQL Prometheus accepts (as recording rules, variables filled in)."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{n}", "expr": substitute(target["expr"])}
                    for n, (_, target) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- refresherd.service -----------------------------------------------------------------


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """
    A root directory for systemd-analyze: this machine's unit directory (for
    the targets the unit depends on), the unit, and stand-ins at the paths of
    ExecStart (twistd) and ExecReload (kill), so that the unit file itself is
    checked unchanged.
    """
    tool("systemd-analyze")
    source = next(
        (
            Path(d)
            for d in ("/usr/lib/systemd/system", "/lib/systemd/system")
            if (Path(d) / "sysinit.target").exists()
        ),
        None,
    )
    if source is None:
        pytest.fail("no systemd unit directory with sysinit.target: install systemd")
    root = tmp_path / "root"
    shutil.copytree(source, root / source.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    for command in ("ExecStart", "ExecReload"):
        program = root / shlex.split(value("Service", command))[0].lstrip("/")
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    return root


def test_unit_verifies(unit_root: Path) -> None:
    """systemd-analyze verify: exit status 0 and not one warning (it warns and exits 0)."""
    result = run("systemd-analyze", "verify", f"--root={unit_root}", UNIT.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_unit_security(unit_root: Path) -> None:
    """systemd-analyze security, offline: an overall exposure of at most 2.0 (of 10)."""
    result = run(
        "systemd-analyze",
        "security",
        "--offline=yes",
        f"--root={unit_root}",
        "--threshold=20",
        "--no-pager",
        UNIT.name,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level for refresherd.service" in result.stdout
