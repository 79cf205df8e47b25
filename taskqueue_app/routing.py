"""WebSocket URL patterns of taskqueue_app, to be included in the project's ASGI router.

Mounted at the root (``URLRouter(routing.websocket_urlpatterns)``) the route is
``/api/task_runs/subscriptions/scheduled``: the path Prefect's client dials for an API at
``http://host:port/api``. Do not wrap it in ``AllowedHostsOriginValidator``: workers send no
Origin header, and the token protects the route.
"""

from django.urls import path

from .consumers import SubscriptionConsumer
from .producers import ProducerConsumer

websocket_urlpatterns = [
    path(
        "api/task_runs/subscriptions/scheduled",
        SubscriptionConsumer.as_asgi(),
        name="taskqueue-subscription",
    ),
    # Producers outside the server: creates over one kept-open connection (producers.py).
    path("api/task_runs/stream", ProducerConsumer.as_asgi(), name="taskqueue-producer-stream"),
]
