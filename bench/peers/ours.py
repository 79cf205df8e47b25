"""The no-op task our worker runs in the end-to-end benchmark (a plain function: no Django)."""

from __future__ import annotations

import time


def noop(sent_at: float) -> float:
    """Returns how long after its enqueue (wall clock, seconds) the task body started."""
    return time.time() - sent_at
