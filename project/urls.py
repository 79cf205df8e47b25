"""URLs of the example project: the admin and the taskqueue API at ``api/``."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("taskqueue_app.urls")),
]
