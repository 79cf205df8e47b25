"""Plain task functions (no Django) served by worker subprocesses in the end-to-end tests."""

from __future__ import annotations

import asyncio
import os
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


def exits(code):
    """Calls ``sys.exit(code)``: a task, not the worker, decided to stop."""
    sys.exit(code)


def interrupts():
    """Raises KeyboardInterrupt, as a task that catches Ctrl-C badly might."""
    raise KeyboardInterrupt


async def exits_async():
    """An async task that raises SystemExit in the worker's own loop."""
    await asyncio.sleep(0)
    raise SystemExit(4)


def leaks_generator_exit():
    """Lets a GeneratorExit escape, as user code closing generators wrongly can."""
    raise GeneratorExit


def tally(log_path, token, seconds):
    """Notes its start and its end (with the worker's pid) in ``log_path``; returns ``token``.

    Lines of a few bytes appended to a file opened for appending land whole, whichever of the
    worker processes writes them.
    """
    with open(log_path, "a") as log:
        log.write(f"start {token} {os.getpid()}\n")
    time.sleep(seconds)
    with open(log_path, "a") as log:
        log.write(f"end {token} {os.getpid()}\n")
    return token
