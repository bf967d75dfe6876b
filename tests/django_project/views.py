from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def page(request: HttpRequest, user_id: int) -> HttpResponse:
    return render(request, "django_project/page.html", {"user_id": user_id})
