"""The arithmetic of C{bench.profile_hit}: shares of py-spy's collapsed stacks."""

from __future__ import annotations

from bench.profile_hit import frame_name, shares, table

RAW = """\
<module> (twistd:6);run (twisted/app.py:10);render (refresherd/api.py:5) 6
<module> (twistd:6);run (twisted/app.py:10);render (refresherd/api.py:5);lookup (r/refresher.py:9) 3
<module> (twistd:6);run (twisted/app.py:10);run (twisted/app.py:12) 1
Thread._bootstrap (threading.py:1);Condition.wait (threading.py:2) 40
"""


def test_a_frame_is_named_by_its_function_and_file() -> None:
    assert frame_name("render (refresherd/api.py:5)") == "render (api.py"


def test_idle_threads_are_left_out_and_each_function_counts_once_per_stack() -> None:
    total, inclusive, own = shares(RAW)
    assert total == 10
    assert inclusive["run (app.py"] == 10  # On one stack twice: counted once.
    assert inclusive["render (api.py"] == 9
    assert own == {"render (api.py": 6, "lookup (refresher.py": 3, "run (app.py": 1}
    assert "Condition.wait (threading.py" not in inclusive


def test_the_table_shows_shares_of_the_busy_samples() -> None:
    _, inclusive, _ = shares(RAW)
    assert table("t", inclusive, 10, 2).splitlines() == [
        "t:",
        "  100.0%  <module> (twistd",
        "  100.0%  run (app.py",
    ]
