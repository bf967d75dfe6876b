"""
The callback view under a prefix of the application's choosing:

    urlpatterns = [path("refresherd/", include("refresherd.contrib.django.urls"))]

gives C{/refresherd/NAME} for each registered callback
(C{reverse("refresherd:callback", args=["sidebar"])}).
"""

from __future__ import annotations

from django.urls import re_path

from refresherd.contrib.django.views import callback_view

app_name = "refresherd"
urlpatterns = [re_path(r"^(?P<name>[A-Za-z0-9_-]{1,64})$", callback_view, name="callback")]
