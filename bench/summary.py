"""The headline table: one row per system (ours and each peer) from the end_to_end, idle and
memory stages' results, plus every stage's targets met or missed."""

from __future__ import annotations

from typing import Any

from bench import common

SYSTEMS = {
    "ours": "taskqueue",
    "celery": "Celery 5 + Redis",
    "rq": "RQ 2 + Redis",
    "prefect": "Prefect 3.9",
}


def _e2e(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    entry = results.get("end_to_end")
    if not entry:
        return None
    found = entry["ours"]["in_server"] if key == "ours" else entry.get(key)
    return None if not found or "skipped" in found else found


def _stage(results: dict[str, Any], stage: str, key: str) -> dict[str, Any] | None:
    found = (results.get(stage) or {}).get(key)
    return None if not found or "skipped" in found else found


def _skip_reason(results: dict[str, Any], key: str) -> str:
    for stage in ("end_to_end", "idle", "memory"):
        found = (results.get(stage) or {}).get(key)
        if isinstance(found, dict) and "skipped" in found:
            return f"{stage}: {found['skipped']}"
    return ""


def table(results: dict[str, Any]) -> str:
    """Markdown: the per-system table and the list of targets; empty without the stages."""
    if not any(stage in results for stage in ("end_to_end", "idle", "memory")):
        return ""
    fmt = common.fmt_number
    rows = []
    for key, label in SYSTEMS.items():
        e2e, idle, memory = (
            _e2e(results, key),
            _stage(results, "idle", key),
            _stage(results, "memory", key),
        )
        burst = (e2e or {}).get("burst", {})
        paced = (e2e or {}).get("paced", {})
        rows.append(
            [
                label,
                fmt(burst.get("runs_per_s")),
                fmt(paced.get("p50_ms")),
                fmt(paced.get("p99_ms")),
                fmt(burst.get("server_cpu_ms_per_run")),
                fmt(idle["workers_pct"]) if idle else "—",
                fmt(memory["bytes_per_run"]) if memory else "—",
                _skip_reason(results, key),
            ]
        )
    headers = [
        "system",
        "runs/s",
        "p50 ms",
        "p99 ms",
        "server CPU ms/run",
        "server CPU, 100 idle workers (% core)",
        "bytes per queued run",
        "not measured",
    ]
    lines = [common.markdown_table(headers, rows, "lrrrrrrl"), ""]
    lines.append(
        "runs/s: median of 3 bursts, enqueue to recorded completion, one worker process; p50/p99: "
        "enqueue to task start at a paced 100/s (Prefect 2/s); server: ours the Daphne process, "
        "Celery and RQ redis-server, Prefect its server; idle: % of one core; memory: RSS growth "
        "per queued run with no worker. Details and caveats in each stage's section."
    )
    lines += ["", "Targets:", ""]
    for stage, entry in results.items():
        for target in entry.get("targets", []):
            verdict = common.verdict(target)
            value = target.get("value")
            shown = fmt(value) if isinstance(value, int | float) else "—"
            lines.append(f"- {stage}: {target['name']} ({target['target']}): {shown}, {verdict}")
    return "\n".join(lines)
