from django.contrib import admin
from django.urls import include, path

from blog import views

urlpatterns = [
    path("", views.index, name="index"),
    path("authors/<int:author_id>/", views.author, name="author"),
    # refresherd calls back here for its signed jobs (see refresherd.toml).
    path("refresherd/", include("refresherd.contrib.django.urls")),
    path("admin/", admin.site.urls),
]
