"""
L{refresherd.signing} in a fresh interpreter: importing it, or its re-export
C{refresherd.contrib.signing}, loads neither Twisted nor Django (the unit tests
of the signature are in tests/unit/test_signing.py).  Nor does importing
C{refresherd} itself, which exports L{refresherd.Result} to python jobs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "module", ["refresherd", "refresherd.signing", "refresherd.contrib.signing"]
)
def test_it_imports_neither_twisted_nor_django(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'django'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
