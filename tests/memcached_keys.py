"""
Keys the memcached store must refuse before anything reaches the wire:
commands smuggled after a line end, white space and control characters,
non-ASCII, over 250 bytes, empty.
"""

from __future__ import annotations

BAD_KEYS = [
    "rfdtest:job:v1:id=1\r\nflush_all",
    "rfdtest:job:v1:id=1\r\nset canary 0 0 3\r\nbad",
    "rfdtest:job:v1:id=1\n",
    "rfdtest:job:v1:id=1\r",
    "rfdtest:job:v1:id=1 2",
    "rfdtest:job:v1:id=\t1",
    "rfdtest:job:v1:id=\x001",
    "rfdtest:job:v1:id=\x7f",
    "rfdtest:job:v1:id=caf\u00e9",
    "rfdtest:job:v1:id=" + "x" * 233,
    "",
]
