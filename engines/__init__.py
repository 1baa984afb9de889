"""The engine registry: name -> engine class, imported only when asked for.

Adding an engine is one module with an ``Engine`` subclass plus one line in ``_ENGINES``.
"""

from __future__ import annotations

import importlib

from engines.base import Engine, EngineError

_ENGINES = {
    "ort-cpu": "engines.ort_cpu:OrtCpuEngine",
}


class UnknownEngineError(ValueError):
    """An engine name that is not registered."""


def engine_names() -> list[str]:
    """Every registered engine name, in registry order."""
    return list(_ENGINES)


def engine_class(name: str) -> type[Engine]:
    """The class for ``name``; an unknown name raises UnknownEngineError listing the valid ones."""
    if name not in _ENGINES:
        raise UnknownEngineError(f"unknown engine {name!r}; valid engines: {', '.join(_ENGINES)}")
    module_name, class_name = _ENGINES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def availability(name: str) -> str | None:
    """None if engine ``name`` can run here, else the reason it cannot (never raises for a known name)."""
    try:
        return engine_class(name).unavailable_reason()
    except ImportError as exc:
        return f"cannot import the engine's module: {exc}"


__all__ = ["Engine", "EngineError", "UnknownEngineError", "availability", "engine_class", "engine_names"]
