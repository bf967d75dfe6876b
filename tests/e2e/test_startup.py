"""
Start-up as a user meets it: every mistake in the configuration, the options
or the endpoints stops C{twistd -n refresherd} with one line and a non-zero
exit status; no traceback, no usage text.  A store that cannot be used (a
Redis Cluster node) is told in one error line, and the service is not ready.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import LISTENING, TWISTD, run_twistd, start_service
from tests.redis_server import RedisServer

GOOD = """
[jobs.square]
args = ["n"]
callable = "refresherd.demo:slow_square"
fresh = "1m"
"""


def start_up_error(tmp_path: Path, config: str, *args: str) -> str:
    (tmp_path / "refresherd.toml").write_text(config)
    process = run_twistd("--config", "refresherd.toml", *args, cwd=tmp_path)
    out, _ = process.communicate(timeout=60)
    assert process.returncode != 0, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert "Traceback" not in out and "Usage" not in out
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("config", "args", "expected"),
    [
        (GOOD + "frsh = 1\n", (), "refresherd.toml: jobs.square: unknown key 'frsh'"),
        (
            GOOD + 'warm = [{n = "1"}, {m = "2"}]\n',
            (),
            "refresherd.toml: jobs.square.warm[1]: job 'square' takes no argument 'm'",
        ),
        (
            GOOD + 'warm_file = "nowhere.jsonl"\n',
            (),
            "refresherd.toml: jobs.square.warm_file: cannot read 'nowhere.jsonl': ",
        ),
        ('[jobs.x]\nurl = "http://h/"\nfresh = "15x"\n', (), "jobs.x.fresh: not a duration"),
        ("[jobs.x\n", (), "refresherd.toml"),
        (
            GOOD,
            ("--store", "memcached://127.0.0.1:11211 127.0.0.2:11211"),
            "--store: the memcached store URL: '127.0.0.1:11211 127.0.0.2' is not a host",
        ),
        (
            GOOD,
            ("--store", "memcached://127.0.0.1:11211?item_limit=1k"),
            "--store: the memcached store URL: item_limit must be a number of bytes",
        ),
        (GOOD, ("--store", "couchdb://h"), "--store: unknown store 'couchdb'; use memory://"),
        (GOOD, ("--store", "memory://?max_bytes=lots"), "--store"),
        (GOOD, ("--workers", "2"), "--workers 2: needs a shared store"),
        (GOOD, ("--workers", "two"), "--workers: not a positive whole number"),
        (GOOD, ("--log-format", "yaml"), "--log-format: must be 'text' or 'json'"),
        (GOOD, ("--listen", "nonsense:1"), "--listen: not a valid endpoint 'nonsense:1'"),
        (
            GOOD,
            ("--admin-listen", "tcp:0:interface=0.0.0.0"),
            "--admin-listen: with no admin token configured, the admin API may listen only on "
            "loopback (127.0.0.0/8, ::1 or a UNIX socket), not on 0.0.0.0:",
        ),
        (
            GOOD,
            ("--admin-listen", "none", "--listen", "tcp:0"),
            "--listen: with no admin token configured, the admin API may listen only on loopback",
        ),
        (
            GOOD.replace("refresherd.demo:slow_square", "refresherd.demo:nothing_here"),
            (),
            "refresherd.toml: jobs.square.callable:",
        ),
    ],
)
def test_a_mistake_stops_start_up_with_one_line(
    tmp_path: Path, config: str, args: tuple[str, ...], expected: str
) -> None:
    assert expected in start_up_error(tmp_path, config, *args)


def test_a_port_in_use_stops_start_up_with_one_line(tmp_path: Path, busy_port: int) -> None:
    line = start_up_error(tmp_path, GOOD, "--listen", f"tcp:{busy_port}:interface=127.0.0.1")
    assert line.startswith(f"refresherd: --listen: cannot listen on 'tcp:{busy_port}:")
    assert "in use" in line


def test_admin_routes_mounted_on_the_public_listener_with_none(tmp_path: Path) -> None:
    config = tmp_path / "refresherd.toml"
    config.write_text(GOOD)
    from tests.harness import LISTENING  # noqa: F401  (the format the harness relies on)

    process = run_twistd(
        "--config",
        str(config),
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--admin-listen",
        "none",
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "public API listening on" in line:
                port = int(line.rsplit(":", 1)[1])
                break
        else:
            raise AssertionError("no listening line")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert metrics.status_code == 200
        assert "refresherd_requests_total" in metrics.text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json() == {"status": "ok"}
    finally:
        process.terminate()
        process.wait(30)


def test_json_log_format_writes_one_object_per_line(tmp_path: Path) -> None:
    config = tmp_path / "refresherd.toml"
    config.write_text(GOOD)
    service = start_service(config, "--log-format", "json")
    assert service.get("/v1/jobs/square?n=2").json()["value"]["square"] == 4
    assert service.stop() == 0
    records = [json.loads(line) for line in service.lines]
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    assert any("public API listening on" in r["message"] for r in records)
    summary = [r for r in records if r["message"].startswith("refresherd 0.1.0:")]
    assert len(summary) == 1, records
    assert summary[0]["message"] == (
        f"refresherd 0.1.0: 1 job(s) from {config} (square); store memory://"
    )
    assert summary[0]["level"] == "info"


def test_start_up_without_jobs_says_so_and_names_the_store(tmp_path: Path) -> None:
    """
    A configuration without jobs: it serves, and a warning says there are
    none; the store is named without its password.
    """
    config = tmp_path / "refresherd.toml"
    config.write_text("")
    service = start_service(config, "--log-format", "json", "--store", "redis://:pw@127.0.0.1:1/3")
    assert service.stop() == 0
    records = [json.loads(line) for line in service.lines]
    messages = [(r["level"], r["message"]) for r in records]
    assert (
        "info",
        f"refresherd 0.1.0: 0 job(s) from {config} (none); store redis://127.0.0.1:1/3",
    ) in messages
    warnings = [m for level, m in messages if level == "warn"]
    assert len(warnings) == 1 and warnings[0].startswith("refresherd: no jobs are configured")
    assert not any("pw" in m for _, m in messages)


def test_access_log_lines_in_json_carry_route_status_and_duration(tmp_path: Path) -> None:
    config = tmp_path / "refresherd.toml"
    config.write_text("[server]\naccess_log = true\n" + GOOD)
    service = start_service(config, "--log-format", "json")
    try:
        assert service.get("/v1/jobs/square?n=3").status_code == 200
        assert service.get("/v1/jobs/square?n=x&token=query-secret-value").status_code == 400
        assert httpx.get(service.admin_url + "/v1/jobs", timeout=10).status_code == 200
    finally:
        assert service.stop() == 0
    access = [
        record
        for record in map(json.loads, service.lines)
        if record["namespace"] == "refresherd.access"
    ]
    assert [(r["method"], r["route"], r["code"]) for r in access] == [
        ("GET", "/v1/jobs/{job}", 200),
        ("GET", "/v1/jobs/{job}", 400),
        ("GET", "/v1/jobs", 200),
    ]
    assert all(r["client"] == "127.0.0.1" and r["duration"] >= 0 for r in access)
    assert "query-secret-value" not in "".join(service.lines)  # (never a hex address)


def test_an_admin_listener_on_every_interface_is_fine_with_an_admin_token(tmp_path: Path) -> None:
    config = tmp_path / "refresherd.toml"
    config.write_text('[auth]\nadmin_tokens = ["a-token"]\n' + GOOD)
    service = start_service(config, "--admin-listen", "tcp:0:interface=0.0.0.0")
    try:
        jobs = httpx.get(
            service.admin_url + "/v1/jobs", headers={"Authorization": "Bearer a-token"}, timeout=10
        )
        assert [job["name"] for job in jobs.json()["jobs"]] == ["square"]
        assert httpx.get(service.admin_url + "/v1/jobs", timeout=10).status_code == 401
    finally:
        service.stop()


def test_a_sigterm_right_after_start_up_still_stops_gracefully(tmp_path: Path) -> None:
    """The listening lines come before the reactor runs: a SIGTERM then exits 0, not -15."""
    config = tmp_path / "refresherd.toml"
    config.write_text(GOOD)
    for _ in range(3):
        service = start_service(config)
        assert service.stop() == 0, service.output()


def test_a_redis_cluster_node_is_refused_with_one_error_and_never_ready(tmp_path: Path) -> None:
    """
    Pointed at a Redis Cluster node, refresherd starts (the node may be fixed
    or replaced), logs one error naming it, and /readyz stays 503 while it
    keeps checking.
    """
    config = tmp_path / "refresherd.toml"
    config.write_text(GOOD)
    with RedisServer(["--cluster-enabled", "yes"]) as node:
        service = start_service(config, "--log-format", "json", "--store", node.url())
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # well past the first connections and retries
                assert service.get("/readyz").status_code == 503
                time.sleep(0.2)
        finally:
            assert service.stop() == 0
    records = [json.loads(line) for line in service.lines]
    errors = [r["message"] for r in records if r["level"] == "error"]
    assert errors == [
        f"Redis at 127.0.0.1:{node.port} is a Redis Cluster node; refresherd needs a single "
        "primary (see docs/scaling.md)"
    ]


def test_access_log_lines_go_to_twistd_s_logfile(tmp_path: Path) -> None:
    """With --logfile, every line (the access log's too) goes to that file, none to stdout."""
    config = tmp_path / "refresherd.toml"
    config.write_text("[server]\naccess_log = true\n" + GOOD)
    log = tmp_path / "refresherd.log"
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile", str(log), "refresherd", "--config", str(config)]
        + ["--listen", "tcp:0:interface=127.0.0.1", "--admin-listen", "tcp:0:interface=127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            match = LISTENING.search(log.read_text() if log.exists() else "")
            port = int(match.group(3)) if match else None
            time.sleep(0.05)
        assert port is not None, log.read_text() if log.exists() else "no log file"
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/v1/jobs/square?n=3", timeout=10).status_code == 200
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
    finally:
        process.terminate()
        stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    lines = [line for line in log.read_text().splitlines() if "[refresherd.access#info]" in line]
    assert [line.split("] ", 1)[1].rsplit(" ", 2)[0] for line in lines] == [
        "GET /v1/jobs/{job} 200",
        "GET /healthz 200",
    ]
    assert "refresherd.access" not in stdout
