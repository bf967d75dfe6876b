"""
A small Django project for C{tests/*/test_django.py}: one model, the callbacks
refresherd calls back (C{refreshers.py}), a page using the C{refreshed} tag,
and tag purges when profiles change.
"""
