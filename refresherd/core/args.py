"""
Arguments of a lookup, checked against their job: a missing or unknown
argument, a value over 1 KiB, a value that does not fully match its
C{arg_patterns} entry, C{.} or C{..} where the value lands in a URL, and,
unless the job sets C{path_slash}, an empty value or one holding C{/} or
C{\\} where it lands in the URL's path are all C{bad_args}: an origin that
decodes C{%2F} before routing would otherwise see other path segments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from refresherd.core.templates import path_placeholders, placeholders
from refresherd.errors import BadArgs

if TYPE_CHECKING:  # refresherd.config checks warm lists with check_args
    from refresherd.config import JobConfig

MAX_VALUE_BYTES = 1024


def check_args(job: JobConfig, args: Mapping[str, object]) -> dict[str, str]:
    """C{args} if they are exactly the arguments C{job} takes, with valid values."""
    unknown = sorted(set(args) - set(job.args))
    if unknown:
        raise BadArgs(f"job {job.name!r} takes no argument {unknown[0]!r}")
    missing = [name for name in job.args if name not in args]
    if missing:
        raise BadArgs(f"job {job.name!r} needs argument {missing[0]!r}")
    in_url = set(placeholders(job.url)) if job.url else set()
    in_path = set(path_placeholders(job.url)) if job.url and not job.path_slash else set()
    checked: dict[str, str] = {}
    for name in job.args:
        value = args[name]
        if not isinstance(value, str):
            raise BadArgs(f"argument {name!r} must be a string")
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadArgs(f"argument {name!r} is not valid Unicode") from None
        if len(encoded) > MAX_VALUE_BYTES:
            raise BadArgs(f"argument {name!r} is longer than {MAX_VALUE_BYTES} bytes")
        pattern = job.arg_patterns.get(name)
        if pattern is not None and not pattern.fullmatch(value):
            raise BadArgs(f"argument {name!r} does not match {pattern.text!r}")
        if name in in_url and value in (".", ".."):
            raise BadArgs(f"argument {name!r} may not be {value!r}")
        if name in in_path and (not value or "/" in value or "\\" in value):
            raise BadArgs(
                f"argument {name!r} fills a URL path segment:"
                " it may not be empty or hold '/' or '\\'"
            )
        checked[name] = value
    return checked
