"""
examples/appengine/main.py, the WSGI app that reads refresherd over plain
HTTP without the client library, loaded as a module and called as a WSGI
server would call it.
"""

from __future__ import annotations

import importlib.util
import wsgiref.util
from pathlib import Path
from types import ModuleType
from typing import Any

APPENGINE = Path(__file__).resolve().parent.parent / "examples" / "appengine" / "main.py"


def appengine_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("appengine_example_main", APPENGINE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(app: Any, path: str, query: str = "") -> tuple[str, str]:
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    wsgiref.util.setup_testing_defaults(environ)
    started: list[str] = []
    body = b"".join(app(environ, lambda status, headers: started.append(status)))
    return started[0], body.decode()
