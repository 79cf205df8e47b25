"""Shared helpers of the benchmark stages: percentiles, Markdown tables, results files, progress."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the repository: where subprocesses run
RESULTS_DIR = ROOT / "bench" / "results"
LATEST_JSON = RESULTS_DIR / "latest.json"
LATEST_MD = RESULTS_DIR / "latest.md"

_STARTED = time.perf_counter()


def setup_django(settings_module: str = "project.settings") -> None:
    """Configure Django (idempotent): stages read settings through ``taskqueue_app.conf``."""
    import django
    from django.apps import apps

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    if not apps.ready:
        django.setup()


def progress(message: str) -> None:
    """Print one progress line to stderr (stdout stays clean Markdown), with time since start."""
    print(f"[bench {time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def environment() -> dict[str, Any]:
    """The Python version and CPU count a stage's result records."""
    return {"python": platform.python_version(), "cpus": os.cpu_count()}


def target(name: str, goal: str, value: Any, met: bool) -> dict[str, Any]:
    """One entry of a result's ``targets``: its name, the goal, the value measured, met or not."""
    return {"name": name, "target": goal, "value": value, "met": met}


def met_marks(targets: Iterable[dict[str, Any]]) -> dict[str, str]:
    """A table's "met" cell by target name: 'yes' or '**NO**'."""
    return {t["name"]: "yes" if t["met"] else "**NO**" for t in targets}


def verdict(target: dict[str, Any]) -> str:
    """A target in the notes: 'met' or '**NOT met**'."""
    return "met" if target.get("met") else "**NOT met**"


def burst_notes(config: dict[str, Any], targets: Iterable[dict[str, Any]] = ()) -> list[str]:
    """The notes every burst-and-paced stage ends with: how runs/s and p50/p99 were measured,
    and each target's verdict."""
    return [
        f"- runs/s: median of {config['repeats']} bursts of {config['runs']:,}; p50/p99: "
        f"{config['paced_runs']} runs paced at {config['paced_rate']}/s, enqueue to task start.",
        *[
            f"- Target {t['name']}: {t['target']}: {fmt_ratio(t['value'])}, {verdict(t)}."
            for t in targets
        ],
    ]


def environment_note(environment: dict[str, Any]) -> str:
    """The start of a report's last note: ``- Python 3.x, N CPUs`` (of ``environment()``)."""
    return f"- Python {environment['python']}, {environment['cpus']} CPUs"


def stage_parser(name: str, doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The ``python -m bench.<name> [--quick]`` command line of a stage."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def stage_main(
    name: str,
    doc: str | None,
    quick_help: str,
    run: Callable[[bool], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
) -> None:
    """A stage's ``main``: parse ``[--quick]``, measure with ``run``, print ``report``'s tables."""
    print(report(run(stage_parser(name, doc, quick_help).parse_args(argv).quick)))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def p50_p99(values: Sequence[float]) -> tuple[float, float]:
    """The median and 99th percentile of ``values``."""
    return percentile(values, 50), percentile(values, 99)


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (of repeated measurements, say)."""
    return statistics.median(values)


def ratio(baseline: float | None, ours: float | None) -> float | None:
    """``baseline / ours``, or None when either is missing or ``ours`` is zero."""
    if baseline is None or not ours:
        return None
    return baseline / ours


def fmt_number(value: float | None, digits: int = 3) -> str:
    """A figure for a table: ``digits`` significant digits, thousands separators, '—' for None."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) < 10 ** (digits - 1):  # rounded first: 0.09999 is shown as 0.100, not 0.1000
        value = float(f"{value:.{digits}g}")
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def fmt_ratio(value: float | None) -> str:
    """A ratio such as ``168x``; '—' when there is none."""
    return "—" if value is None else f"{fmt_number(value)}x"


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None
) -> str:
    """A Markdown table; ``align`` has one of 'l', 'r', 'c' per column (default: all left)."""
    cells = [[str(cell) for cell in row] for row in rows]
    align = align or "l" * len(headers)
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    rules = {"l": ":{}", "r": "{}:", "c": ":{}:"}

    def line(row: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if how == "r" else cell.ljust(width)
            for cell, width, how in zip(row, widths, align, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        rules[how].format("-" * (width - (2 if how == "c" else 1)))
        for how, width in zip(align, widths, strict=True)
    ]
    return "\n".join([line(headers), line(rule), *(line(row) for row in cells)])


def load_results(path: Path = LATEST_JSON) -> dict[str, dict[str, Any]]:
    """The stored results, by stage name; empty when there are none (or the file is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def merge_results(
    updates: dict[str, dict[str, Any]], path: Path = LATEST_JSON
) -> dict[str, dict[str, Any]]:
    """Replace the entries of the stages in ``updates`` in ``path``, keep the others; return all."""
    results = load_results(path)
    results.update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return results


def write_markdown(
    results: dict[str, dict[str, Any]],
    order: Sequence[str] = (),
    path: Path = LATEST_MD,
    preface: str = "",
) -> None:
    """Write ``preface`` (the summary) then each stage's ``markdown`` entry under a heading,
    stages in ``order`` first."""
    names = [name for name in order if name in results]
    names += [name for name in results if name not in names]
    parts = ["# Benchmark results", ""]
    if preface:
        parts += ["## Summary", "", preface, ""]
    for name in names:
        entry = results[name]
        mode = "quick" if entry.get("quick") else "full"
        parts += [f"## {name}", "", f"_{entry.get('finished_at', '?')}, {mode} run._", ""]
        parts += [entry.get("markdown") or "(no table)", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
