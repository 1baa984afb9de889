"""The layering every module keeps, checked on the import statements of every module (top-level and inside
functions) and of ``suite.py``: packages form layers, low to high (``LAYERS``), and a module imports only its
own package and the packages of lower layers. So data flows one way: the leaf ``common`` imports nothing of
the suite, the catalogue knows nothing of the store, the store nothing of engines, the run pipeline (``bench``)
nothing of the reports, diagnostics or the cluster that use it, and only the command line (``cli`` and
``suite.py``) sits above them all.
Packages of one layer do not import each other. Besides, the report measures nothing, and no import cycle
crosses a package boundary."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Low to high. A new package must be placed here: the test fails for a package it does not know.
LAYERS = (
    ("common",),
    ("analysis", "assets"),
    ("models",),
    ("exporters", "calibration"),
    ("onnx_models",),
    ("engines",),
    ("bench",),
    ("cluster", "diagnose", "report"),
    ("cli",),
    ("suite",),
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
# Modules that launch work: child processes, timed loops, roof measurements.
MEASURING = {"bench.cell", "bench.executor", "bench.isolation", "bench.peak", "bench.runner", "bench.timer"}


def _sources() -> dict[str, Path]:
    """{module name: file} of every module of the suite: each package's files and ``suite.py``."""
    sources = {"suite": ROOT / "suite.py"}
    for init in sorted(ROOT.glob("*/__init__.py")):
        if init.parent.name in ("tests", "benchmarks", "docs"):
            continue
        for path in init.parent.rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            sources[name] = path
    return sources


def module_imports() -> dict[str, set[str]]:
    """{module: the project modules it imports}, for every module of the suite."""
    sources = _sources()
    packages = {name.split(".")[0] for name in sources}
    modules: dict[str, set[str]] = {}
    for name, path in sources.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        modules[name] = {d for d in found if d.split(".")[0] in packages}
    return {name: {d for d in found if d != name} for name, found in modules.items()}


def package(module: str) -> str:
    return module.split(".")[0]


def test_every_package_has_a_layer():
    assert sorted({package(m) for m in module_imports()} - set(RANK)) == []


def upward(imports: dict[str, set[str]]) -> dict[str, list[str]]:
    """{module: the imports it makes of its own layer's other packages or of a higher layer} (empty ones left out)."""
    offending = {
        m: sorted(d for d in deps if package(d) != package(m) and RANK[package(d)] >= RANK[package(m)])
        for m, deps in imports.items()
    }
    return {m: d for m, d in offending.items() if d}


def test_imports_point_down_the_layers():
    """A module imports its own package or a lower layer's; an import that runs back up (or sideways, between
    packages of one layer) names itself here."""
    assert upward(module_imports()) == {}


def test_the_layer_rule_sees_a_back_up_and_a_sideways_import():
    """The rule is not vacuous: ``common`` importing ``bench`` (up) and ``report`` importing ``diagnose``
    (sideways) are both reported."""
    imports = module_imports()
    imports["common.paths"] = imports["common.paths"] | {"bench.runner"}
    imports["report.compare"] = imports["report.compare"] | {"diagnose.explain"}
    assert upward(imports) == {"common.paths": ["bench.runner"], "report.compare": ["diagnose.explain"]}


def test_the_report_measures_nothing():
    imports = module_imports()
    reporting = [m for m in imports if package(m) == "report"]
    assert reporting
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
            if dep not in graph:
                continue
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
