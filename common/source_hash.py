"""Cache keys derived from source code: the digest of a module's file and of every project module it imports.

An artifact or cache is rebuilt when the code that made it changed, without anyone remembering to bump a
version string: the key holds ``source_digest`` of the model's module (its layers, weights and samplers, and
the helpers it imports, followed through ``import`` and ``from ... import`` statements anywhere in the file,
lazy ones inside functions included) and of the code that converts or counts it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

# The suite's own top-level packages: imports of anything else (numpy, torch, onnxruntime) are versions, which
# keys record separately, not source.
PROJECT_PACKAGES = frozenset(
    {
        "analysis",
        "assets",
        "bench",
        "calibration",
        "cli",
        "cluster",
        "common",
        "diagnose",
        "engines",
        "exporters",
        "models",
        "onnx_models",
        "report",
        "suite",
    }
)


# Where the project's packages sit (the repository, or site-packages for a regular install).
ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _module_file(name: str) -> Path | None:
    """The source file of project module ``name``, found on disk without importing anything (``find_spec`` of
    ``a.b.c`` would import ``a.b``, and with it onnx or torch), or None when there is none."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


@functools.cache
def _imports(name: str) -> tuple[str, ...]:
    """The project modules that module ``name`` imports anywhere in its file."""
    path = _module_file(name)
    if path is None:
        return ()
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = _package_of(name, path).split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.append(base)
            # ``from pkg import sub`` names a submodule when one of that name exists.
            found += [f"{base}.{alias.name}" for alias in node.names if _module_file(f"{base}.{alias.name}")]
    return tuple(sorted({m for m in found if _module_file(m)}))


def project_modules(*names: str, leaves: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> list[str]:
    """``names`` and every project module they import, directly or through each other, sorted. Modules in
    ``leaves`` are included but their imports not followed (a registry that loads every model lazily);
    modules under a package in ``ignore`` are left out (code that stores what is built, not what builds it)."""
    seen: set[str] = set()
    todo = [n for n in names if _module_file(n)]
    while todo:
        current = todo.pop()
        if current in seen or any(current == p or current.startswith(p + ".") for p in ignore):
            continue
        seen.add(current)
        if current not in leaves:
            todo += _imports(current)
    return sorted(seen)


def source_digest(*names: str, leaves: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> str:
    """A short sha256 over the source of modules ``names`` and every project module they import (see
    ``project_modules`` for ``leaves`` and ``ignore``); any edit of any of those files changes it. Raises
    ValueError for a name that is no project module."""
    missing = [n for n in names if _module_file(n) is None]
    if missing:
        raise ValueError(f"no project module {', '.join(missing)}")
    digest = hashlib.sha256()
    for module in project_modules(*names, leaves=leaves, ignore=ignore):
        digest.update(module.encode() + b"\0" + _module_file(module).read_bytes() + b"\0")
    return digest.hexdigest()[:16]
