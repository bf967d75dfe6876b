"""WSGI entry point: gunicorn site_project.wsgi (gunicorn passes RAW_URI, the exact target)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_project.settings")
application = get_wsgi_application()
