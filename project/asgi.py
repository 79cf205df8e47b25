"""ASGI entry point of the example project: HTTP to Django, WebSocket to taskqueue_app."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Set Django up before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from taskqueue_app import routing  # noqa: E402
from taskqueue_app.middleware import TaskQueueMiddleware  # noqa: E402

application = TaskQueueMiddleware(
    ProtocolTypeRouter(
        {
            # `make run` serves with plain Daphne: in DEBUG let it serve the admin's static files
            # too, as runserver would. In production a web server or WhiteNoise serves them.
            "http": ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app,
            # Workers send no Origin header: the route is protected by the token instead.
            "websocket": URLRouter(routing.websocket_urlpatterns),
        }
    )
)
