"""
The hot keys of C{--workers} (refresherd.run.workers.hot): each worker's
file in the shared directory, written on a fake clock, and the view that
merges them (files in a temporary directory; no process).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.refresher import Refresher
from refresherd.metrics import FLUSH_INTERVAL, metrics_for
from refresherd.run.services import Engine, RefresherdService, ThreadPools
from refresherd.run.workers.hot import HotKeysView
from refresherd.stores.memory import MemoryStore

PER_REQUEST = math.log(2) / 60


def worker(directory: Path, n: int, *keys: str) -> HotKeysView:
    """The view of worker C{n}, its own sketch having seen C{keys} at time 0."""
    own = HotKeysRegistry(capacity=10, half_life=60.0)
    for key in keys:
        own.observe("job", key, {"k": key}, 0.0)
    return HotKeysView(own, lambda: str(directory), n)


def rates(registry: HotKeysRegistry) -> dict[str, float]:
    return {hot.key: hot.rate / PER_REQUEST for hot in registry.top("job", 0.0)}


def test_the_parent_shows_every_workers_file_merged(tmp_path: Path) -> None:
    worker(tmp_path, 1, "a", "a", "b").write()
    worker(tmp_path, 2, "a", "c").write()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hot-1.json", "hot-2.json"]
    parent = HotKeysView(HotKeysRegistry(capacity=10, half_life=60.0), lambda: str(tmp_path))
    shown = parent.current()
    assert rates(shown) == {"a": pytest.approx(3), "b": pytest.approx(1), "c": pytest.approx(1)}
    assert parent.sizes() == {"job": 3}
    assert parent.own.sizes() == {}  # what the parent's own registry holds is left alone


def test_a_worker_shows_its_live_sketch_with_the_others_files(tmp_path: Path) -> None:
    one = worker(tmp_path, 1, "a")
    one.write()
    one.own.observe("job", "a", {"k": "a"}, 0.0)  # not written yet: its own file is skipped
    worker(tmp_path, 2, "b").write()
    assert rates(one.current()) == {"a": pytest.approx(2), "b": pytest.approx(1)}


@pytest.fixture
def logged() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def test_a_bad_file_is_skipped_with_a_warning(tmp_path: Path, logged: EventLoggingObserver) -> None:
    worker(tmp_path, 1, "a").write()
    (tmp_path / "hot-2.json").write_text("{not json")
    (tmp_path / "hot-3.json").write_text(json.dumps({"half_life": 30.0, "jobs": {}}))
    (tmp_path / "counter_123.db").write_bytes(b"\0" * 8)  # prometheus-client's: not ours
    parent = HotKeysView(HotKeysRegistry(capacity=10, half_life=60.0), lambda: str(tmp_path))
    assert rates(parent.current()) == {"a": pytest.approx(1)}
    warned = [str(e.get("name")) for e in logged if e.get("log_level") == LogLevel.warn]
    assert warned == ["hot-2.json", "hot-3.json"]


def test_no_directory_yet_shows_the_own_sketch(tmp_path: Path) -> None:
    own = HotKeysRegistry()
    assert HotKeysView(own).current() is own
    missing = HotKeysView(own, lambda: str(tmp_path / "gone"))
    assert missing.current().sizes() == {}
    missing.write()  # not a worker: nothing to write
    assert list(tmp_path.iterdir()) == []


def test_a_worker_writes_its_hot_keys_every_interval_and_when_stopped(tmp_path: Path) -> None:
    clock = MemoryReactorClock()
    metrics = metrics_for(["job"], multiprocess_dir=str(tmp_path))
    refresher = Refresher(MemoryStore(clock), {}, clock, "rfd", metrics)
    engine = Engine(refresher, ThreadPools(), HotKeysRegistry(capacity=10, half_life=60.0))
    view = HotKeysView(engine.hot, lambda: str(tmp_path), 1)
    service = RefresherdService(
        engine, [clock.listenTCP(0, Factory())], [], worker=1, hot_keys=view
    )
    service.startService()
    file = tmp_path / "hot-1.json"
    engine.hot.observe("job", "a", {"k": "a"}, 0.0)
    clock.advance(FLUSH_INTERVAL - 0.001)
    assert not file.exists()
    clock.advance(0.001)
    assert json.loads(file.read_text())["jobs"]["job"]["entries"] == [["a", {"k": "a"}, 1.0, 0.0]]
    engine.hot.observe("job", "b", {"k": "b"}, 0.0)
    assert service.stopService().called
    assert len(json.loads(file.read_text())["jobs"]["job"]["entries"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("hot")) == ["hot-1.json"]
