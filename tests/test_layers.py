"""The layering the run pipeline relies on, checked on the import statements of every module (top-level and
inside functions): shared helpers sit in the leaf package ``common``; nothing below ``bench`` (the run's
orchestration and measurement) imports it; the store does not call the FLOP counter; the report measures
nothing; no import cycle crosses a package boundary."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("analysis", "bench", "calibration", "common", "engines", "exporters", "models", "onnx_models")
# Modules that launch work: child processes, timed loops, roof measurements.
MEASURING = {"bench.cell", "bench.executor", "bench.isolation", "bench.peak", "bench.runner", "bench.timer"}


def module_imports() -> dict[str, set[str]]:
    """{module: the project modules it imports}, for every module of the packages above."""
    modules: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            modules[name] = found
    return {name: {d for d in found if d in modules and d != name} for name, found in modules.items()}


def package(module: str) -> str:
    return module.split(".")[0]


def test_common_is_a_leaf():
    offending = {m: sorted(d for d in deps if package(d) != "common") for m, deps in module_imports().items()}
    assert {m: d for m, d in offending.items() if package(m) == "common" and d} == {}


def test_nothing_below_bench_imports_it():
    imports = module_imports()
    offending = {m: sorted(d for d in deps if package(d) == "bench") for m, deps in imports.items()}
    assert {m: d for m, d in offending.items() if package(m) != "bench" and d} == {}


def test_the_store_does_not_count_flops():
    imports = module_imports()
    assert {m: sorted(d) for m, d in imports.items() if package(m) == "onnx_models" and "analysis.flops" in d} == {}


def test_the_report_measures_nothing():
    imports = module_imports()
    reporting = ("bench.report", "bench.compare", "analysis.roofline", "analysis.roofs")
    assert {m: sorted(imports[m] & MEASURING) for m in reporting if imports[m] & MEASURING} == {}


def test_no_import_cycle_crosses_packages():
    """Strongly connected groups of modules (Tarjan) stay inside one package: a package's registry may import
    its members lazily and they import it back, but two packages never depend on each other through a loop."""
    graph = module_imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for dep in graph[module]:
            if dep not in index:
                visit(dep)
                low[module] = min(low[module], low[dep])
            elif dep in on_stack:
                low[module] = min(low[module], index[dep])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            groups.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    assert [g for g in groups if len({package(m) for m in g}) > 1] == []
