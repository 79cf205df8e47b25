"""Plain task functions (no Django) served by worker subprocesses in the end-to-end tests."""

from __future__ import annotations

import asyncio
import sys
import time


def echo(value):
    """Returns its argument."""
    return value


async def double(value):
    """An async task: runs in the worker's loop."""
    await asyncio.sleep(0)
    return value * 2


def boom(message):
    """Raises ValueError(message)."""
    raise ValueError(message)


def not_json():
    """Returns a set, which JSON cannot carry."""
    return {1, 2, 3}


def slow(tag, seconds):
    """Says it started (a line the test waits for), works for ``seconds``, returns ``tag``."""
    print(f"slow-started {tag}", file=sys.stderr, flush=True)
    time.sleep(seconds)  # the work itself
    return tag
