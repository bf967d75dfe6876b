"""
GET /v1/status with C{--workers} (refresherd.run.workers.recent): each
worker's tallies in a file of the shared directory, written on a fake clock,
and the view that adds them up (files in a temporary directory; no process).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

from refresherd.core.hotkeys import HotKeysRegistry
from refresherd.core.recent import FETCHES, WIDTH, WINDOW, Recent, Tally
from refresherd.core.refresher import Refresher
from refresherd.metrics import FLUSH_INTERVAL, metrics_for
from refresherd.run.services import Engine, RefresherdService, ThreadPools
from refresherd.run.workers.recent import LIVE_FOR, RecentView
from refresherd.stores.memory import MemoryStore


def view(directory: Path, clock: task.Clock, n: int | None, *answers: str) -> RecentView:
    """The view of worker C{n} (None: the parent), its own jobs having given C{answers}."""
    own = Recent(["job", "idle"], clock.seconds)
    for status in answers:
        own.answer("job", status)
    own.fetch("job", 0.01, f"error of {n}")
    return RecentView(own.tallies, clock.seconds, lambda: str(directory), n)


def hits(tallies: dict[str, Tally]) -> int:
    return tallies["job"].counts[0]


def test_the_parent_adds_every_workers_file_to_its_own(tmp_path: Path) -> None:
    clock = task.Clock()
    view(tmp_path, clock, 1, "hit", "hit").write()
    clock.advance(0.5)
    view(tmp_path, clock, 2, "hit", "miss").write()
    clock.advance(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status-1.json", "status-2.json"]
    shown = view(tmp_path, clock, None, "hit").current()
    assert set(shown) == {"job", "idle"}
    assert hits(shown) == 4
    assert shown["job"].counts[FETCHES] == 3
    assert [message for _, message in shown["job"].errors] == [  # newest first
        "error of None",
        "error of 2",
        "error of 1",
    ]
    assert shown["idle"] == Tally()


def test_a_worker_shows_its_live_tallies_with_the_others_files(tmp_path: Path) -> None:
    clock = task.Clock()
    one = view(tmp_path, clock, 1, "hit")
    one.write()
    view(tmp_path, clock, 2, "hit", "hit").write()
    assert hits(one.current()) == 3  # its own file skipped: its live tallies count instead


def test_an_old_file_counts_its_errors_only(tmp_path: Path) -> None:
    clock = task.Clock()
    worker = Recent(["job"], clock.seconds)
    worker.answer("job", "hit")
    worker.fetch("job", 0.01, "gone")
    tallies = worker.tallies()
    tallies["job"].in_flight = 2
    RecentView(lambda: tallies, clock.seconds, lambda: str(tmp_path), 1).write()
    parent = RecentView(
        Recent(["job"], clock.seconds).tallies, clock.seconds, lambda: str(tmp_path)
    )
    clock.advance(LIVE_FOR + 0.1)  # a worker that no longer writes: nothing of it runs now
    shown = parent.current()["job"]
    assert (shown.counts[0], shown.in_flight) == (1, 0)
    clock.advance(WINDOW)
    shown = parent.current()["job"]
    assert shown.counts == [0] * WIDTH
    assert [message for _, message in shown.errors] == ["gone"]


@pytest.fixture
def logged() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def test_a_bad_file_is_skipped_with_a_warning(tmp_path: Path, logged: EventLoggingObserver) -> None:
    clock = task.Clock()
    view(tmp_path, clock, 1, "hit").write()
    (tmp_path / "status-2.json").write_text("{not json")
    (tmp_path / "status-3.json").write_text(json.dumps({"written": 0, "jobs": {"job": {}}}))
    (tmp_path / "status-4.json").write_text(json.dumps([]))
    (tmp_path / "hot-1.json").write_text("{}")  # the hot keys': not this view's
    (tmp_path / "status-5.json").write_text(json.dumps({"written": 0, "jobs": {"nojob": {}}}))
    shown = RecentView(Recent(["job"], clock.seconds).tallies, clock.seconds, lambda: str(tmp_path))
    assert hits(shown.current()) == 1
    warned = [str(e.get("name")) for e in logged if e.get("log_level") == LogLevel.warn]
    assert warned == ["status-2.json", "status-3.json", "status-4.json", "status-5.json"]


def test_no_directory_shows_the_own_tallies(tmp_path: Path) -> None:
    clock = task.Clock()
    alone = view(tmp_path, clock, None, "hit")
    alone.directory = lambda: None
    assert hits(alone.current()) == 1
    gone = view(tmp_path / "gone", clock, None, "hit")
    assert hits(gone.current()) == 1
    gone.write()  # not a worker: nothing to write
    assert list(tmp_path.iterdir()) == []


def test_a_worker_writes_its_status_every_interval_and_when_stopped(tmp_path: Path) -> None:
    clock = MemoryReactorClock()
    metrics = metrics_for(["job"], multiprocess_dir=str(tmp_path), seconds=clock.seconds)
    refresher = Refresher(MemoryStore(clock), {}, clock, "rfd", metrics)
    engine = Engine(refresher, ThreadPools(), HotKeysRegistry())
    recent = RecentView(metrics.tallies, clock.seconds, lambda: str(tmp_path), 1)
    service = RefresherdService(
        engine, [clock.listenTCP(0, Factory())], [], worker=1, recent=recent
    )
    service.startService()
    file = tmp_path / "status-1.json"
    metrics.count_request("job", "hit")
    clock.advance(FLUSH_INTERVAL - 0.001)
    assert not file.exists()
    clock.advance(0.001)
    written = json.loads(file.read_text())
    assert written["written"] == FLUSH_INTERVAL
    assert set(written["jobs"]) == {"job"}  # the idle ones (the unknown job's) left out
    assert written["jobs"]["job"]["counts"][0] == 1
    metrics.count_request("job", "hit")
    assert service.stopService().called
    assert json.loads(file.read_text())["jobs"]["job"]["counts"][0] == 2
