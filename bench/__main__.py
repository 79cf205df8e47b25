"""``python -m bench [--quick] [--only NAME ...]``: run the benchmark stages, record results."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from types import ModuleType
from typing import Any

from bench import common, summary

# One module per stage, ``bench/<name>.py``, exposing ``run(quick: bool) -> dict`` and optionally
# ``report(result: dict) -> str`` (Markdown). A stage whose module does not exist yet is skipped.
STAGES = [
    "queue_core",
    "http_enqueue",
    "consumer",
    "end_to_end",
    "producers",
    "postgres",
    "scale_out",
    "idle",
    "memory",
    "costs",
]


def _load(name: str) -> ModuleType | None:
    """The stage's module, or None when it has not been written yet."""
    module_name = f"{__package__ or 'bench'}.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return None
        raise  # the stage exists but something it imports is missing: that is a failure


def _run_stage(name: str, module: ModuleType, quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    result = module.run(quick)
    report = getattr(module, "report", None)
    markdown = report(result) if report else "```json\n" + json.dumps(result, indent=2) + "\n```"
    return {
        **result,
        "quick": quick,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "markdown": markdown,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected stages in order; 0 when every stage that ran succeeded."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer samples")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", choices=STAGES, help="run only these stages"
    )
    args = parser.parse_args(argv)
    selected = [name for name in STAGES if not args.only or name in args.only]

    begun = time.perf_counter()
    finished: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for index, name in enumerate(selected, 1):
        prefix = f"stage {index}/{len(selected)} {name}"
        module = _load(name)
        if module is None:
            common.progress(f"{prefix}: skipped (bench/{name}.py does not exist yet)")
            continue
        common.progress(f"{prefix}: running ({'quick' if args.quick else 'full'})")
        try:
            entry = _run_stage(name, module, args.quick)
        except Exception:
            traceback.print_exc()
            common.progress(f"{prefix}: FAILED")
            failed.append(name)
            continue
        finished[name] = entry
        missed = [t["name"] for t in entry.get("targets", []) if not t.get("met")]
        verdict = f"missed targets: {', '.join(missed)}" if missed else "all targets met"
        common.progress(f"{prefix}: done in {entry['elapsed_s']:g} s, {verdict}")
        print(f"## {name}\n\n{entry['markdown']}\n", flush=True)

    if finished:
        results = common.merge_results(finished)
        headline = summary.table(results)
        common.write_markdown(results, STAGES, preface=headline)
        if headline:
            print(f"## summary\n\n{headline}\n", flush=True)
        common.progress(f"wrote {common.LATEST_JSON} and {common.LATEST_MD}")
    if failed:
        common.progress(f"failed stages: {', '.join(failed)}")
    common.progress(f"all done in {time.perf_counter() - begun:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
