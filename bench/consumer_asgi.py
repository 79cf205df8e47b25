"""ASGI entry point of the consumer benchmark's server: the example project on ``bench.settings``,
plus a bench-only WebSocket route, ``/bench/produce``, that creates runs without HTTP.

Each text frame sent to ``/bench/produce`` is a run as ``POST /api/task_runs/`` takes it; the
server creates it with ``lifecycle.create`` (validated, recorded durably, queued: what the view
does) and answers ``{"id": ...}``. It lets the benchmark compare the subscription consumer with
a bare ``websockets`` server that takes runs the same way, with Django's HTTP handling left out.
"""

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.consumer import get_handler_name  # noqa: E402
from channels.exceptions import StopConsumer  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from taskqueue_app import lifecycle, routing  # noqa: E402
from taskqueue_app.middleware import TaskQueueMiddleware  # noqa: E402
from taskqueue_app.schemas import ValidationError  # noqa: E402


class Producer(AsyncWebsocketConsumer):
    """Creates one run per frame, in order, and answers each with its id (closed loop)."""

    async def __call__(self, scope, receive, send):
        # As SubscriptionConsumer does: read the socket's messages directly, without Channels'
        # task per receive and its thread hop per message to close old database connections.
        self.scope, self.channel_layer, self.base_send = scope, None, send
        try:
            while True:
                message = await receive()
                await getattr(self, get_handler_name(message))(message)
        except StopConsumer:
            pass

    async def receive(self, text_data=None, bytes_data=None):
        try:
            run, _ = await lifecycle.create(json.loads(text_data or bytes_data))
        except (ValueError, ValidationError, lifecycle.QueueFullError) as error:
            await self.send(text_data=json.dumps({"error": str(error)}))
            return
        await self.send(text_data=json.dumps({"id": str(run.id)}))


application = TaskQueueMiddleware(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": URLRouter(
                [*routing.websocket_urlpatterns, path("bench/produce", Producer.as_asgi())]
            ),
        }
    )
)
