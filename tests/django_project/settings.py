"""Settings of the test project; C{REFRESHERD} is set by each test for its live refresherd."""

SECRET_KEY = "refresherd-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = ["refresherd.contrib.django", "tests.django_project"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.django_project.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
USE_TZ = True
# UTC, as the rest of the suite expects: Django sets the process time zone (TZ) from this.
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
REFRESHERD: dict[str, object] = {}
STATIC_URL = "/static/"
