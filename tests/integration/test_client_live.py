"""
examples/appengine falls back when refresherd cannot be reached (a port
nothing listens on); against a live refresherd: tests/e2e/test_client_live.py.
"""

from __future__ import annotations

import socket

import pytest

from tests.appengine_example import appengine_app, call


def test_the_appengine_example_falls_back_when_refresherd_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("REFRESHERD_URL", f"http://127.0.0.1:{port}")
    app = appengine_app().app
    assert call(app, "/", "base=EUR") == (
        "200 OK",
        "<p>The rates are not available right now.</p>",
    )
    assert call(app, "/banner") == ("200 OK", "<p>Welcome!</p>")
