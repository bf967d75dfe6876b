"""
The patterns of C{arg_patterns}, run by RE2 (the C{google-re2} package): it
decides a match in time linear in the value, whatever the pattern, so no
pattern and crafted value can hold the reactor as a backtracking engine can.
RE2 has no backreferences and no lookaround; a pattern it cannot run is
refused when it is compiled, at start-up.
"""

from __future__ import annotations

from typing import Any

import attrs
import re2  # no type information: this module is its typed face

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported once, by the configuration


@attrs.frozen
class ArgPattern:
    """A compiled pattern; C{text} is what the operator wrote."""

    text: str
    _regexp: Any = attrs.field(eq=False, repr=False)

    def fullmatch(self, value: str) -> bool:
        """Whether C{value} matches the whole pattern."""
        return self._regexp.fullmatch(value) is not None


def compile_pattern(text: str) -> ArgPattern:
    """C{text} compiled by RE2; L{ValueError} saying why RE2 cannot run it."""
    try:
        regexp = re2.compile(text, _OPTIONS)
    except re2.error as e:
        why = e.args[0] if e.args else ""
        if isinstance(why, bytes):
            why = why.decode("utf-8", "replace")
        raise ValueError(
            f"not a pattern RE2 can run ({why}); RE2 has no backreferences or lookaround"
        ) from None
    return ArgPattern(text, regexp)
