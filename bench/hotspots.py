"""Where the end-to-end time goes: ours under the end-to-end burst load, sampled with py-spy.

``python -m bench.hotspots [--runs N] [--rate HZ]`` starts the end-to-end server (Daphne) and
worker, records both with ``py-spy record --format raw`` (py-spy installed into the bench's
cache venv, never the project's) while bursts of runs are enqueued in the server, then prints
the top functions by own time and by inclusive time, and the share per area (Twisted/Daphne,
Django, Channels, taskqueue_app, SQLite, JSON, asyncio, ...), for each process. Not a stage of
``python -m bench``: profiling slows the server down; its figures are not the benchmark's.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import common
from bench.peers import phases, venvs
from bench.peers.ours_peer import Records, Trigger, server, start_worker, wait_for_worker
from bench.peers.redis_server import stop

NAME = "hotspots"
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Which part of the stack a file belongs to, by the first matching fragment of its path.
AREAS = [
    ("taskqueue_app/", "taskqueue_app"),
    ("bench/", "bench view"),
    ("twisted/", "Twisted (Daphne's reactor)"),
    ("daphne/", "Daphne"),
    ("autobahn/", "autobahn (WebSocket framing)"),
    ("channels/", "Channels"),
    ("asgiref/", "asgiref"),
    ("django/db/", "Django ORM"),
    ("django/", "Django (other)"),
    ("sqlite3/", "sqlite3"),
    ("json/", "json"),
    ("asyncio/", "asyncio"),
    ("websockets/", "websockets (worker client)"),
    ("concurrent/", "concurrent.futures"),
    ("threading", "threading"),
    ("selectors", "selectors (epoll)"),
    ("random", "random (WebSocket masks)"),
    ("uuid", "uuid"),
    ("datetime", "datetime"),
]


def pyspy() -> Path:
    """The py-spy executable, installed into its own cache venv on first use."""
    python = venvs.ensure("pyspy", ["py-spy"], "import sys")
    return python.parent / "py-spy"


def _record(executable: Path, pid: int, output: Path, rate: int) -> subprocess.Popen:
    return subprocess.Popen(
        [executable, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate)]
        + ["--output", str(output), "--nonblocking", "--function"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# Frames every stack passes through (entry points, loops, thread bootstrap): left out of the
# inclusive table so that it shows the work, not the plumbing around it.
PLUMBING = (
    "runpy",
    "threading.py",
    "asyncio/base_events.py",
    "asyncio/runners.py",
    "asyncio/events.py",
    "daphne/cli.py",
    "daphne/__main__.py",
    "daphne/server.py",
    "twisted/internet/asyncioreactor.py",
    "twisted/python/log.py",
    "twisted/python/context.py",
    "concurrent/futures/thread.py",
    "taskqueue_app/worker/cli.py",
    "contextlib.py",
)


def _area(file: str) -> str:
    for fragment, area in AREAS:
        if fragment in file:
            return area
    return "other"


def analyse(raw: Path, top: int = 15) -> dict:
    """Own-time and inclusive-time shares per function, and own time per area."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    areas: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = []
        for frame in stack.split(";"):
            match = FRAME.match(frame)
            name = f"{match['function']} ({match['file']})" if match else frame
            frames.append((name, match["file"] if match else ""))
        own[frames[-1][0]] += samples
        areas[_area(frames[-1][1])] += samples
        for name in {name for name, file in frames if not any(p in file for p in PLUMBING)}:
            inclusive[name] += samples
    share = {
        "samples": total,
        "own": [(name, n / total) for name, n in own.most_common(top)],
        "inclusive": [(name, n / total) for name, n in inclusive.most_common(top + 10)],
        "areas": [(name, n / total) for name, n in areas.most_common()],
    }
    return share


def report(name: str, figures: dict) -> str:
    """Markdown tables of ``analyse``'s figures for one process."""
    pct = "{:.1%}".format
    parts = [f"### {name} ({figures['samples']:,} busy samples)", ""]
    parts += [
        common.markdown_table(
            ["own time by area", "share"], [[a, pct(s)] for a, s in figures["areas"]], "lr"
        ),
        "",
        common.markdown_table(
            ["function (own time)", "share"], [[f, pct(s)] for f, s in figures["own"]], "lr"
        ),
        "",
        common.markdown_table(
            ["function (inclusive)", "share"],
            [[f, pct(s)] for f, s in figures["inclusive"]],
            "lr",
        ),
    ]
    return "\n".join(parts)


def profile(runs: int, bursts: int, rate: int, keep: Path | None = None) -> str:
    """Record the server and the worker through ``bursts`` bursts of ``runs``; the report."""
    common.setup_django()
    executable = pyspy()
    with tempfile.TemporaryDirectory(prefix="taskqueue-hotspots-") as name:
        tmp = Path(name)
        with server(tmp) as daphne, open(tmp / "worker.log", "wb") as log:
            worker = start_worker(daphne.api_url, 10, log)
            try:
                wait_for_worker(daphne.api_url)
                trigger, records = Trigger(daphne.port), Records(daphne.database)
                records.collect(phases.paced(lambda: trigger(1)[0], 50, 500))  # warm-up
                spies = {
                    "server (Daphne)": (tmp / "server.txt", daphne.process.pid),
                    "worker": (tmp / "worker.txt", worker.pid),
                }
                recorders = [_record(executable, pid, out, rate) for out, pid in spies.values()]
                time.sleep(1.0)  # py-spy attached (it gives no signal when it is)
                common.progress(f"{NAME}: {bursts} bursts of {runs:,} runs under py-spy")
                config = {"producers": 4, "repeats": bursts}
                burst = phases.bursts(trigger, records.collect, config, runs, 50, records.wait)
                for recorder in recorders:
                    recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    _, err = recorder.communicate(timeout=60)
                    if recorder.returncode not in (0, -signal.SIGINT):
                        raise RuntimeError(f"py-spy failed: {err.decode()[-300:]}")
            finally:
                stop(worker)
        sections = [
            f"py-spy {rate} Hz, --nonblocking, idle samples left out; load: {bursts} bursts of "
            f"{runs:,} runs enqueued in the server, {burst['runs_per_s']:.0f} runs/s (slowed "
            "by sampling).",
            "",
        ]
        for label, (out, _) in spies.items():
            sections += [report(label, analyse(out)), ""]
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / out.name).write_bytes(out.read_bytes())
        return "\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    """Profile and print the Markdown report."""
    parser = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__)
    parser.add_argument("--runs", type=int, default=5_000, help="runs per burst")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--keep", type=Path, help="copy py-spy's raw stacks into this folder")
    args = parser.parse_args(argv)
    print(profile(args.runs, args.bursts, args.rate, args.keep))


if __name__ == "__main__":
    main()
