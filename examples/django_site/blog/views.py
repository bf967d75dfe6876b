from django.shortcuts import get_object_or_404, render

from blog.models import Author
from refresherd.contrib.django import get_client


def index(request):
    # One JSON value from refresherd, with a fallback when it is down.
    counts = get_client().value("post_counts", default=None)
    return render(request, "blog/index.html", {"counts": counts})


def author(request, author_id):
    author = get_object_or_404(Author, pk=author_id)
    return render(request, "blog/author.html", {"author": author})
