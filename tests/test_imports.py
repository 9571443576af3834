"""Dependencies point one way: ``import gpunet`` and the wire contract pull in no torch, the engine never imports the
operator or the worker, and no module-level import cycle runs through the controller, the RPC stubs or their
helpers. (The operator's own no-torch check is in test_operator_builders.py.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Where each import package lives.
PACKAGES = {"gpunet": ROOT / "gpunet", "gpunet_worker": ROOT / "worker" / "gpunet_worker"}
#: Modules that no dependency cycle may run through, not even through an import deferred into a function: the
#: controller, the wire contract, the workers and their helpers.
ACYCLIC = ("gpunet.controller", "gpunet.rpc", "gpunet_worker", "gpunet.sqlite", "gpunet.fileio", "gpunet.errors",
           "gpunet.latency.table")
#: Imported by the operator and tools without a deep-learning stack (hubfile: a hub is read back without torch).
TORCH_FREE = ("gpunet", "gpunet.rpc", "gpunet.spec", "gpunet.sqlite", "gpunet.fileio", "gpunet.errors", "gpunet.controller",
              "gpunet.controller.core", "gpunet.controller.local", "gpunet.controller.state", "gpunet.controller.status",
              "gpunet.controller.hubfile",
              "gpunet.latency.table", "gpunet.latency.profiling")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _module_level_imports(body: list[ast.stmt], deferred: bool = False) -> list[ast.stmt]:
    """Import statements that run when the module is imported (not in functions, not under TYPE_CHECKING); with
    ``deferred``, every import statement of the module."""
    if deferred:
        return [node for stmt in body for node in ast.walk(stmt) if isinstance(node, (ast.Import, ast.ImportFrom))]
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                out += _module_level_imports(node.body) + _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            out += _module_level_imports(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                out += _module_level_imports(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            out += _module_level_imports(node.body)
    return out


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    """``module -> modules of ours it imports at import time`` (a module also needs its packages' ``__init__``);
    with ``deferred``, imports inside functions and under TYPE_CHECKING count too."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in _module_level_imports(ast.parse(path.read_text()).body, deferred):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in mods}
        own_ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}
        edges = set()
        for target in targets:
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(mods)
        graph[name] = edges - own_ancestors
    return graph


def cycles_through(graph: dict[str, set[str]], prefixes: tuple[str, ...]) -> list[list[str]]:
    """Every elementary cycle found by depth-first search that contains a module under one of ``prefixes``."""
    found, state = [], {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                if any(m == p or m.startswith(p + ".") for m in cycle for p in prefixes):
                    found.append(cycle)
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_import_graph_finds_a_cycle_when_there_is_one() -> None:
    graph = {"gpunet.a": {"gpunet.b"}, "gpunet.b": {"gpunet.c"}, "gpunet.c": {"gpunet.a"}, "gpunet.d": {"gpunet.a"}}
    assert cycles_through(graph, ("gpunet.b",)) == [["gpunet.a", "gpunet.b", "gpunet.c", "gpunet.a"]]
    assert cycles_through(graph, ("gpunet.d",)) == []
    graph = import_graph()
    assert "gpunet.controller.leases" in graph["gpunet.controller.core"]  # relative imports are resolved
    assert "gpunet.rpc" in graph["gpunet.controller.state"] and "gpunet_worker.client" in graph["gpunet_worker.trainer"]
    assert "gpunet.latency" not in graph["gpunet.controller.errors"]  # imported inside a function only
    assert "gpunet.latency" in import_graph(deferred=True)["gpunet.controller.errors"]


def test_no_module_imports_itself_in_a_cycle_at_import_time() -> None:
    assert cycles_through(import_graph(), tuple(PACKAGES)) == []


def test_no_dependency_cycle_runs_through_the_controller_rpc_or_workers() -> None:
    assert cycles_through(import_graph(deferred=True), ACYCLIC) == []


def test_the_engine_never_imports_the_operator_or_the_worker() -> None:
    graph = import_graph()
    wrong = {m: sorted(t for t in targets if t.startswith(("gpunet_operator", "gpunet_worker")))
             for m, targets in graph.items() if m.startswith("gpunet.")}
    assert {m: t for m, t in wrong.items() if t} == {}
    text = {m: p.read_text() for m, p in modules().items() if m.startswith("gpunet.")}
    assert [m for m, source in text.items() if "import gpunet_operator" in source or "from gpunet_operator" in source] == []


def test_gpunet_its_wire_contract_and_the_controller_import_no_torch() -> None:
    for order in (TORCH_FREE, TORCH_FREE[::-1]):  # each module first once: a cycle can hide behind one order
        code = (f"import importlib, sys\nfor name in {list(order)!r}:\n    importlib.import_module(name)\n"
                "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'gpunet_operator'))\n"
                "print(bad)\nsys.exit(1 if bad else 0)\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
