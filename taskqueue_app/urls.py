"""HTTP API of taskqueue_app; the project mounts it at ``api/``."""

app_name = "taskqueue_app"

urlpatterns: list = []
