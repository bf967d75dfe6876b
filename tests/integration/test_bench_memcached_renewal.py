"""
C{bench.memcached_renewal} on a tiny run (in a process of its own: it runs the
global reactor): a renewal of a 1 MiB value sends the whole value again with
manifests of version 1, and only a manifest (and a C{touch} per chunk) with
version 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.memcached_renewal import Rows, report


def test_a_full_rewrite_sends_the_value_and_a_renewal_only_its_manifest() -> None:
    argv = ["--rounds", "1", "--renewals", "2", "--sizes", "1", "--json"]
    command = [sys.executable, "-m", "bench.memcached_renewal", *argv]
    output = subprocess.run(command, check=True, capture_output=True, timeout=120).stdout
    results = {way: Rows(**rows) for way, rows in json.loads(output)["1"].items()}
    full, renewal = results["full rewrite"], results["manifest only"]
    assert all(sent > 1024 * 1024 for sent in full.counted["bytes_read"])
    assert full.counted["cmd_set"] == [3, 3]  # two chunks and the manifest
    assert full.counted["cmd_touch"] == [0, 0]
    assert all(sent < 4096 for sent in renewal.counted["bytes_read"])
    assert renewal.counted["cmd_set"] == [1, 1]
    assert renewal.counted["cmd_touch"] == [2, 2]
    text = report({1: results}, argparse.Namespace(rounds=1, renewals=2))
    assert "| 1 MiB | full rewrite |" in text and "| 1 MiB | manifest only |" in text
