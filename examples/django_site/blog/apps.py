from django.apps import AppConfig


class BlogConfig(AppConfig):
    name = "blog"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from refresherd.contrib.django import refresh_tags_on_change

        from blog.models import Author, Post

        # The values built from a post or an author are tagged in refresherd.toml;
        # a save or a delete soft-purges them once its transaction commits.
        refresh_tags_on_change(Post, tags=lambda post: [f"author:{post.author_id}", "posts"])
        refresh_tags_on_change(Author, tags=["author:{pk}", "posts"])
