"""Virtual environments of the peer systems (Celery, Prefect), kept in the user's cache directory.

They are never the project's venv: a peer's dependencies must not leak into the app's tests.
Created on first use with the ordinary ``venv`` + ``pip``; a failure is a reason to skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taskqueue-bench"
INSTALL_TIMEOUT_S = 900


class PeerUnavailable(Exception):
    """The peer cannot be measured here; ``str()`` is the reason shown in the report."""


def python_of(name: str) -> Path:
    """Where the peer's interpreter lives (whether or not it exists yet)."""
    return CACHE / f"{name}-venv" / "bin" / "python"


def ready(name: str, probe: str) -> bool:
    """True when the peer's venv exists and ``probe`` (Python code) runs in it."""
    python = python_of(name)
    if not python.exists():
        return False
    done = subprocess.run([python, "-c", probe], capture_output=True, timeout=120)
    return done.returncode == 0


def ensure(name: str, requirements: list[str], probe: str, create: bool = True) -> Path:
    """The peer's interpreter, creating its venv and installing ``requirements`` if needed."""
    if ready(name, probe):
        return python_of(name)
    if not create:
        raise PeerUnavailable(f"no {name} venv at {python_of(name).parent.parent} (quick mode)")
    venv = python_of(name).parent.parent
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", venv], check=True, capture_output=True
        )
        subprocess.run(
            [python_of(name), "-m", "pip", "install", "--quiet", *requirements],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise PeerUnavailable(f"could not install {' '.join(requirements)}: {tail[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"installing {' '.join(requirements)} took too long") from exc
    if not ready(name, probe):
        raise PeerUnavailable(f"{name} installed but `{probe}` fails in its venv")
    return python_of(name)
