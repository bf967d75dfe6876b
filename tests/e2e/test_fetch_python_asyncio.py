"""
Python jobs whose coroutines use asyncio, end to end: C{twistd -r asyncio -n
refresherd} runs one, and plain C{twistd -n refresherd} answers with the
error that asks for the asyncio reactor (docs/configuration.md, "Python jobs").  The shim and the
fetcher on a loop of the test's own: tests/unit/test_fetch_python_asyncio.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LISTENING, TWISTD, Service

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[jobs.mixed]
args = ["name"]
fetch = "python"
callable = "tests.asyncio_jobs:mixed"
fresh = "1m"
"""


def start(tmp_path: Path, *twistd_options: str) -> Service:
    """C{twistd [options] -n refresherd} on free ports, able to import C{tests}."""
    config = tmp_path / "refresherd.toml"
    config.write_text(CONFIG)
    # Only the tests package on the path: refresherd stays the installed copy.
    path = tmp_path / "path"
    path.mkdir()
    (path / "tests").symlink_to(ROOT / "tests")
    process = subprocess.Popen(
        [TWISTD, *twistd_options, "-n", "--pidfile=", "refresherd", "--config", str(config)]
        + ["--listen", "tcp:0:interface=127.0.0.1", "--admin-listen", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")])),
        },
    )
    service = Service(process)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        with process.stdout:  # closed at the end of the output, when twistd exits
            for line in process.stdout:
                service.lines.append(line)
                match = LISTENING.search(line)
                if match:
                    service.ports[match.group(1)] = int(match.group(3))
                    ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or "public" not in service.ports:
        service.stop()
        raise AssertionError("refresherd did not start:\n" + service.output())
    return service


@pytest.fixture
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    service = start(tmp_path, *request.param)
    yield service
    assert service.stop() == 0, service.output()


@pytest.mark.parametrize("service", [("-r", "asyncio")], indirect=True)
def test_an_asyncio_job_under_the_asyncio_reactor(service: Service) -> None:
    response = service.get("/v1/jobs/mixed?name=bob")
    assert response.status_code == 200, response.text
    assert response.json()["value"] == {
        "name": "bob",
        "deferred": "later bob",
        "task": True,
        "thread": True,
    }
    assert "Traceback" not in service.output()


@pytest.mark.parametrize("service", [()], indirect=True)
def test_an_asyncio_job_under_another_reactor_asks_for_it(service: Service) -> None:
    response = service.get("/v1/jobs/mixed?name=bob")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "fetch_failed"
    assert "twistd -r asyncio" in error["message"]
    assert "\n" not in error["message"]
    assert json.loads(service.get("/v1/jobs/mixed?name=bob").text)["error"] == error
