from django.contrib import admin

from blog.models import Author, Post

admin.site.register(Author)
admin.site.register(Post)
