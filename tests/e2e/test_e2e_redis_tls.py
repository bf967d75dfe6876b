"""
C{twistd -n refresherd --store rediss://...} as a user starts it (docs/redis.md,
"TLS"): ready and storing in Redis with the server's CA; not ready, with one
error line saying why, when the server's certificate does not verify.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Origin, Service, start_service, wait_until
from tests.redis_server import RedisServer, ServerTLS, TLSFiles

CONFIG = """
[jobs.user]
args = ["name"]
url = "{origin}/users/{{name}}"
fresh = "1m"
"""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.make(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def tls_redis(tls_files: TLSFiles) -> Iterator[RedisServer]:
    with RedisServer(password="tls pw", tls=ServerTLS(tls_files)) as server:
        yield server


def start(tmp_path: Path, origin: Origin, store: str) -> Service:
    config = tmp_path / "refresherd.toml"
    config.write_text(CONFIG.format(origin=origin.url))
    return start_service(config, "--store", store, env={"RFD_REDIS_PW": "tls pw"})


def test_rediss_with_the_ca_comes_up_ready_and_stores(
    tmp_path: Path, origin: Origin, tls_redis: RedisServer, tls_files: TLSFiles
) -> None:
    url = f"rediss://:env:RFD_REDIS_PW@127.0.0.1:{tls_redis.tls_port}/0?ca={tls_files.ca}"
    service = start(tmp_path, origin, url)
    try:
        wait_until(lambda: service.get("/readyz").status_code == 200)
        assert service.get("/v1/jobs/user?name=ann").status_code == 200
        assert tls_redis.command("GET", "rfd:user:v1:name=ann") is not None
        assert f"store rediss://127.0.0.1:{tls_redis.tls_port}/0" in service.output()
        assert "tls pw" not in service.output()
    finally:
        assert service.stop() == 0


def test_rediss_whose_certificate_does_not_verify_is_not_ready(
    tmp_path: Path, origin: Origin, tls_redis: RedisServer
) -> None:
    """Without ca=, the system's CAs do not know the test CA."""
    url = f"rediss://:env:RFD_REDIS_PW@127.0.0.1:{tls_redis.tls_port}/0"
    service = start(tmp_path, origin, url)
    try:
        wait_until(lambda: "did not verify" in service.output())
        for _ in range(3):
            assert service.get("/readyz").status_code == 503
        wait_until(lambda: service.output().count("Scheduling retry") >= 4, timeout=15)
        said = [line for line in service.lines if "could not be used over TLS" in line]
        assert len(said) == 1, said
        assert "the server's certificate did not verify: no CA trusted here signed it" in said[0]
    finally:
        assert service.stop() == 0
