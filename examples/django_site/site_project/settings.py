"""
Settings of the example site: a blog whose author sidebars are pre-rendered
by refresherd calling the site back, and refreshed when posts change.
Development settings only (DEBUG, SQLite, a local-memory cache).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-site-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "refresherd.contrib.django",  # the {% refreshed %} tag, the callback view's registry
    "blog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "site_project.urls"
WSGI_APPLICATION = "site_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB", str(BASE_DIR / "db.sqlite3")),
    }
}

# The nonces of refresherd's signatures are remembered in this cache: with
# several processes (gunicorn workers), use one they share (Redis, memcached,
# the database cache).  runserver is one process, so a local-memory cache
# protects it, and its warning (refresherd.W001) is silenced here; remove that
# line with the cache in production.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
SILENCED_SYSTEM_CHECKS = ["refresherd.W001"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "/static/"

# refresherd: the same tokens and secret as refresherd.toml (beside manage.py).
REFRESHERD = {
    "URL": os.environ.get("RFD_URL", "http://127.0.0.1:8080"),
    "ADMIN_URL": os.environ.get("RFD_ADMIN_URL", "http://127.0.0.1:8081"),
    "TOKEN": os.environ.get("RFD_WRITE_TOKEN", "dev-write-token"),  # reads, and purges of tags
    "SECRET": os.environ.get("RFD_SECRET", "dev-secret"),  # the jobs' `sign`
    "TIMEOUT": 2.0,
    "CONNECT_TIMEOUT": 0.5,
    # The sidebar is this site's own HTML (blog/refreshers.py), and no job is
    # writable in refresherd.toml: the tag inserts it as it is.  Any other job's
    # value the tag escapes.
    "TRUSTED_HTML_JOBS": ["sidebar"],
    # With refresherd on Redis, the URL of a read-only Redis user: the tags read
    # fresh snippets there, without a request to refresherd (README.md).
    "REDIS_URL": os.environ.get("RFD_REDIS_URL"),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "refresherd": {"handlers": ["console"], "level": "INFO"},
    },
}
