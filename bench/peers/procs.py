"""What a server process costs, read with psutil from the bench's side: CPU time and memory of
a process and its children (Prefect's server runs in a child of ``prefect server start``)."""

from __future__ import annotations

import os
import time

import psutil

TICK_S = 1 / os.sysconf("SC_CLK_TCK")  # the resolution of a process's CPU times


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants alive now."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU time of ``processes``, all their threads."""
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def rss_bytes(processes: list[psutil.Process]) -> int:
    """Resident memory of ``processes`` now."""
    return sum(process.memory_info().rss for process in processes)


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident memory (``VmHWM``), or None where ``/proc`` has none."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def idle_cpu_pct(processes: list[psutil.Process], seconds: float) -> float:
    """% of one core ``processes`` spend over the next ``seconds`` (the caller set up the load)."""
    before, wall = cpu_seconds(processes), time.perf_counter()
    time.sleep(seconds)  # measuring a window of idleness: there is nothing to wait for
    return 100 * (cpu_seconds(processes) - before) / (time.perf_counter() - wall)
