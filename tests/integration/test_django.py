"""
L{refresherd.contrib.django}'s template tag when refresherd cannot be
reached (a port nothing listens on): the fallback is rendered, the circuit
opens, and the tag's arguments are still checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.django_setup import setup_django

setup_django()

import pytest  # noqa: E402
from django.template import Context, Template  # noqa: E402

from refresherd.contrib.django import get_client  # noqa: E402
from tests.redis_server import free_port  # noqa: E402


def test_the_tag_renders_its_fallback_when_refresherd_is_unreachable(settings: Any) -> None:
    port = free_port()
    settings.REFRESHERD = {"URL": f"http://127.0.0.1:{port}", "TIMEOUT": 2}
    template = Template(
        '{% load refresherd %}{% refreshed "sidebar" user_id=n %}<i>{{ n }}</i>{% endrefreshed %}'
    )
    for _ in range(5):
        assert template.render(Context({"n": 3})) == "<i>3</i>"
    assert get_client().circuit() == "open"


def test_the_tag_arguments_reach_refresherd_as_text(settings: Any, tmp_path: Path) -> None:
    # No refresherd: the request fails at once, and the fallback is rendered.
    settings.REFRESHERD = {"URL": f"http://127.0.0.1:{free_port()}", "CIRCUIT_FAILURES": 0}
    template = Template("{% load refresherd %}{% refreshed job n=n %}none{% endrefreshed %}")
    assert template.render(Context({"job": "sidebar", "n": 1})) == "none"
    with pytest.raises(ValueError, match="None"):
        template.render(Context({"job": "sidebar", "n": None}))
