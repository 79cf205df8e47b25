"""taskqueue: background task runs for Django, delivered to workers over WebSocket."""

__version__ = "0.1.0"
