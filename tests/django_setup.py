"""
Django for the tests of L{refresherd.contrib.django}: set up with the test
project C{tests/django_project}, pytest-django's live server on the loopback
address refresherd listens on.  A test module calls L{setup_django} before it
imports anything of Django's that needs the apps (models, the test client).
"""

from __future__ import annotations

import os

import django


def setup_django() -> None:
    """Django configured with the test project, and set up (again: nothing more)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
    os.environ.setdefault("DJANGO_LIVE_TEST_SERVER_ADDRESS", "127.0.0.1")
    django.setup()
