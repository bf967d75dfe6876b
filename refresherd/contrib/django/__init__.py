"""
The Django integration of refresherd (docs/clients.md, "Django").  Django is an
optional extra: C{pip install "refresherd[django]"}.

Add C{"refresherd.contrib.django"} to C{INSTALLED_APPS} and configure

    REFRESHERD = {
        "URL": "http://127.0.0.1:8080",        # the public listener
        "ADMIN_URL": "http://127.0.0.1:8081",  # the admin listener (purges)
        "TOKEN": os.environ["RFD_WRITE_TOKEN"], # a write token: reads, PUT, purges of tags
        "TIMEOUT": 2.0,                        # seconds per request
        "SECRET": os.environ["RFD_SECRET"],    # the jobs' `sign` secret
        "TRUSTED_HTML_JOBS": ["sidebar"],      # the tag inserts these as HTML
    }

Then:

  - C{{% load refresherd %}{% refreshed "sidebar" user_id=user.id %}fallback{% endrefreshed %}}
    renders the pre-generated snippet of a job, escaped unless the job is
    trusted HTML (L{templatetags.refresherd});
  - C{path("refresherd/", include("refresherd.contrib.django.urls"))} is the
    view refresherd calls back for C{fetch = "http"} jobs with C{sign}; it
    runs the functions registered with L{callback}, kept by convention in a
    C{refreshers.py} module of an installed app (imported at start-up);
  - L{refresh_tags_on_change} soft-purges tags when models are saved or
    deleted; L{purge_tags} does it by hand;
  - L{get_client} is the process's L{refresherd.client.Client} on these settings,
    L{get_async_client} its L{refresherd.client.AsyncClient} (async views).
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "refresherd.contrib.django needs Django: pip install 'refresherd[django]'"
    ) from e

from refresherd.contrib.django.callbacks import Callback, callback, register, unregister
from refresherd.contrib.django.conf import (
    RefresherdSettings,
    get_async_client,
    get_client,
    get_settings,
)
from refresherd.contrib.django.invalidation import purge_tags, refresh_tags_on_change

__all__ = [
    "Callback",
    "RefresherdSettings",
    "callback",
    "get_async_client",
    "get_client",
    "get_settings",
    "purge_tags",
    "refresh_tags_on_change",
    "register",
    "unregister",
]
