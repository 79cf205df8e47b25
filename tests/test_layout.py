"""The house rules of the package (DESIGN §1), checked on its source rather than trusted.

Imports are read with ``ast`` from every module, including imports inside functions (a lazy
import is still a dependency), so the rules below cannot be dodged by moving an import down.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "taskqueue_app"
MAX_LINES = 400

# What a worker on a machine without the database must never pull in.
SERVER_SIDE = {
    "admin",
    "auth",
    "backend",
    "checks",
    "consumers",
    "dashboard",
    "lifecycle",
    "middleware",
    "models",
    "queues",
    "records",
    "routing",
    "server",
    "urls",
    "views",
    "workers",
}
# What the engines may import of the app: nothing above them.
ENGINE_ALLOWED = {"conf", "errors", "lanes", "queues", "schemas", "states", "task_queue"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in path.parts
    }


MODULES = modules()


def imports_of(name: str) -> set[str]:
    """The package modules ``name`` imports, anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from . import lifecycle`` names a module; ``from .schemas import now`` does not.
            targets = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target != "taskqueue_app":
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def part(name: str) -> str:
    """The first component below the package: ``queues`` for ``taskqueue_app.queues.memory``."""
    return name.split(".")[1] if "." in name else ""


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_under_400_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines < MAX_LINES, f"{name} has {lines} lines: split it by concept"


def test_no_import_circle_anywhere():
    # Depth-first search for a back edge; the cycle it finds is reported whole.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_worker_side_imports_nothing_of_the_server_side():
    worker_side = [name for name in MODULES if part(name) == "worker"]
    assert worker_side, "the worker package is missing"
    for name in worker_side:
        reached = {target for target in GRAPH[name] if part(target) in SERVER_SIDE}
        assert not reached, f"{name} imports the server side: {sorted(reached)}"


def test_the_engines_import_nothing_above_them():
    for name in MODULES:
        if part(name) == "queues":
            above = {t for t in GRAPH[name] if part(t) not in ENGINE_ALLOWED}
            assert not above, f"{name} imports {sorted(above)}"


def test_the_queue_core_imports_only_conf_and_its_lanes():
    assert GRAPH["taskqueue_app.task_queue"] == {"taskqueue_app.conf", "taskqueue_app.lanes"}
    assert GRAPH["taskqueue_app.lanes"] == set()


def test_schemas_and_states_import_no_orm():
    for name in (
        "taskqueue_app.schemas",
        "taskqueue_app.inputs",
        "taskqueue_app.states",
        "taskqueue_app.errors",
    ):
        assert "taskqueue_app.models" not in GRAPH[name]
        source = MODULES[name].read_text()
        assert "django.db" not in source, f"{name} imports the ORM"


def test_a_plain_worker_process_loads_neither_django_nor_the_server():
    """What ``python -m taskqueue_app.worker`` imports, in a fresh interpreter."""
    code = (
        "import sys, taskqueue_app.worker, taskqueue_app.worker.cli, taskqueue_app.worker.http\n"
        "loaded = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')\n"
        "    or m.split('.')[1:2] and m.startswith('taskqueue_app.')\n"
        "    and m.split('.')[1] in " + repr(sorted(SERVER_SIDE)) + ")\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PACKAGE.parent)},
        check=True,
    )
    assert done.stdout.strip() == "", f"a worker process loaded: {done.stdout.strip()}"
