"""What the peers' stages share: a peer's venv and environment, its driver run beside a worker
process, and a peer measured or skipped without hiding the other systems' figures."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import venvs
from bench.peers.redis_server import RedisServer, stop

ROOT = common.ROOT
DRIVER_TIMEOUT_S = 900


def peer_python(label: str, requirements: list[str], probe: str) -> Path:
    """The interpreter of the peer's venv (``label`` lowercased), created on first use."""
    common.progress(f"{label} venv (created on first use)")
    return venvs.ensure(label.lower(), requirements, probe)


def peer_env(redis_url: str) -> dict[str, str]:
    """The environment of a peer process: the bench importable, no Django settings."""
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def drive(python: Path, module: str, args: list[str], env: dict, what: str) -> dict[str, Any]:
    """Run a driver module in a peer venv; the dict of its ``RESULT`` line."""
    done = subprocess.run(
        [python, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    tail = "\n".join((done.stderr or "").strip().splitlines()[-15:])
    raise RuntimeError(f"the {what} driver failed (exit {done.returncode}):\n{tail}")


def drive_beside_worker(
    worker: list[Any],
    log: Path,
    env: dict,
    note: str,
    python: Path,
    module: str,
    args: list[str],
    what: str,
) -> dict[str, Any]:
    """Start a peer's ``worker`` command (output to ``log``), print ``note``, ``drive`` the
    driver ``module``, stop the worker; the driver's result."""
    process = None
    try:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                worker, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        common.progress(note)
        return drive(python, module, args, env, what)
    finally:
        stop(process)


def redis_e2e(
    label: str,
    python_of: Callable[[], Path],
    worker: Callable[[Path, str], list[Any]],
    config: dict[str, Any],
    tmp: Path,
) -> dict[str, Any]:
    """The end-to-end phases of a Redis-backed peer: redis-server, ``worker(python, redis_url)``
    and the driver ``bench.peers.<label>_run e2e``, redis-server's CPU counted."""
    name = label.lower()
    with RedisServer(tmp) as redis:
        python = python_of()
        return drive_beside_worker(
            worker(python, redis.url),
            tmp / f"{name}-worker.log",
            peer_env(redis.url),
            f"end_to_end: {label}, paced phase and {config['repeats']} bursts of "
            f"{config['runs']:,}",
            python,
            f"bench.peers.{name}_run",
            ["e2e", json.dumps({**config, "server_pids": [redis.pid]})],
            label,
        )


def measured_or_skipped(
    stage: str,
    label: str,
    measure: Callable[[dict[str, Any], Path], dict[str, Any]],
    config: dict[str, Any],
    tmp: Path,
) -> dict[str, Any]:
    """``measure(config, tmp)``, or ``{"skipped": reason}`` when the peer is unavailable or
    breaks."""
    try:
        return measure(config, tmp)
    except venvs.PeerUnavailable as exc:
        common.progress(f"{stage}: {label} skipped: {exc}")
        return {"skipped": str(exc)}
    except Exception as exc:  # a peer that breaks must not hide the other systems' figures
        common.progress(f"{stage}: {label} failed: {exc}")
        return {"skipped": f"failed: {str(exc).splitlines()[0]}"}
