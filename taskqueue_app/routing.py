"""WebSocket URL patterns of taskqueue_app, to be included in the project's ASGI router."""

websocket_urlpatterns: list = []
