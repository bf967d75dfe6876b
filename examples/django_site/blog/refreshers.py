"""
What refresherd asks this site to compute (imported at start-up by
refresherd.contrib.django, like admin.py).  Each function is a job of
refresherd.toml with `fetch = "http"` and `sign`: refresherd calls
/refresherd/NAME?ARGS, the view checks the signature and calls the function.
"""

from django.db.models import Count
from django.template.loader import render_to_string

from blog.models import Author, Post
from refresherd.contrib.django import callback


@callback("sidebar", content_type="text/html; charset=utf-8")
def sidebar(author_id):
    """An author's sidebar: a pre-rendered snippet (a template cache block, pulled out)."""
    author = Author.objects.get(pk=author_id)
    recent = Post.objects.filter(author=author)[:5]
    return render_to_string("blog/sidebar.html", {"author": author, "recent": recent})


@callback("post_counts")
def post_counts():
    """A denormalised queryset, sent as JSON: the number of posts of each author."""
    return (
        Author.objects.annotate(posts_count=Count("posts"))
        .order_by("name")
        .values("id", "name", "posts_count")
    )
