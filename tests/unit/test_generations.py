"""Purge marks (refresherd.core.marks): pure, so checked as properties."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from refresherd.core.marks import NO_MARK, Purge, generation_keys, purge_of

tokens = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)


def test_keys_cover_the_job_and_each_tag_once_hard_and_soft() -> None:
    keys = generation_keys("rfd", "tweets", ("user:bob", "all", "user:bob"))
    assert keys.hard == (
        "rfd:gen:hard:job:tweets",
        "rfd:gen:hard:tag:user:bob",
        "rfd:gen:hard:tag:all",
    )
    assert keys.soft == tuple(k.replace(":hard:", ":soft:") for k in keys.hard)
    assert keys.all == keys.hard + keys.soft


def test_never_purged_keys_have_no_mark() -> None:
    assert generation_keys("rfd", "j", ("t",)).marks({}) == (NO_MARK, NO_MARK)


@given(tokens, tokens)
def test_a_new_token_of_any_key_changes_only_its_own_mark(old: str, new: str) -> None:
    keys = generation_keys("rfd", "j", ("t", "u"))
    for key in keys.all:
        before = keys.marks({key: old})
        after = keys.marks({key: new})
        strength = 0 if key in keys.hard else 1
        assert (before[strength] == after[strength]) == (old == new)
        assert before[1 - strength] == after[1 - strength] == NO_MARK


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), tokens))
def test_marks_ignore_keys_outside_the_job_and_its_tags(others: dict[str, str]) -> None:
    keys = generation_keys("rfd", "j", ("t",))
    assert keys.marks(others) == (NO_MARK, NO_MARK)


def test_purge_of_compares_hard_first() -> None:
    assert purge_of(("h", "s"), ("h", "s")) is None
    assert purge_of(("h", "s"), ("h", "s2")) is Purge.SOFT
    assert purge_of(("h", "s"), ("h2", "s")) is Purge.HARD
    assert purge_of(("h", "s"), ("h2", "s2")) is Purge.HARD
    assert purge_of(("h", ""), ("", "")) is Purge.HARD  # a lost token reads as a purge


@functools.cache
def _documented_marks() -> Any:
    """The reference code of docs/store-format.md, as printed there."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "store-format.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "def marks" in b)
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    return namespace["marks"]


@given(
    st.lists(st.text(max_size=210), max_size=4),
    st.dictionaries(st.integers(0, 9), tokens),
)
def test_the_documented_marks_are_the_ones_refresherd_computes(
    tags: list[str], purged: dict[int, str]
) -> None:
    keys = generation_keys("rfd", "job", tuple(tags))
    current = {keys.all[i % len(keys.all)]: token for i, token in purged.items()}
    assert _documented_marks()("rfd", "job", tags, current) == keys.marks(current)
