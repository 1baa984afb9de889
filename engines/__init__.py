"""The engine registry: name -> engine class, imported only when asked for.

Adding an engine is one module with an ``Engine`` subclass plus one line in ``_ENGINES``. Besides fixed names,
``ort:<ProviderName>`` names any ONNX Runtime execution provider (``ort:OpenVINOExecutionProvider``); such a
name resolves to a class made for that provider, in whichever process asks (cells run in spawned children
that get their engine by name).
"""

from __future__ import annotations

import importlib

from engines.base import Engine, EngineError

_ENGINES = {
    "ort-cpu": "engines.ort_cpu:OrtCpuEngine",
    "ort-cuda": "engines.ort_cuda:OrtCudaEngine",
    "ort-trt": "engines.ort_trt:OrtTrtEngine",
    "tensorrt": "engines.tensorrt_native:TensorRTEngine",
}
# Name patterns: (what `engines` shows, prefix, "module:factory" taking the rest of the name).
_PATTERNS = (("ort:<ProviderName>", "ort:", "engines.ort_provider:provider_engine"),)


class UnknownEngineError(ValueError):
    """An engine name that is not registered."""


def engine_names() -> list[str]:
    """Every registered fixed engine name, in registry order (patterns such as ``ort:<Name>`` excluded)."""
    return list(_ENGINES)


def engine_patterns() -> list[str]:
    """The name patterns, as shown to users (``ort:<ProviderName>``)."""
    return [shown for shown, _, _ in _PATTERNS]


def _pattern_for(name: str) -> tuple[str, str, str] | None:
    for shown, prefix, target in _PATTERNS:
        if name.startswith(prefix) and len(name) > len(prefix):
            return shown, prefix, target
    return None


def is_engine_name(name: str) -> bool:
    """True for a registered name or a name that fits a pattern (``ort:CPUExecutionProvider``)."""
    return name in _ENGINES or _pattern_for(name) is not None


def _load(target: str):
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def engine_class(name: str) -> type[Engine]:
    """The class for ``name``; an unknown name raises UnknownEngineError listing the valid ones."""
    if name in _ENGINES:
        return _load(_ENGINES[name])
    pattern = _pattern_for(name)
    if pattern is None:
        valid = ", ".join([*_ENGINES, *engine_patterns()])
        raise UnknownEngineError(f"unknown engine {name!r}; valid engines: {valid}")
    _, prefix, target = pattern
    return _load(target)(name[len(prefix) :])


def availability(name: str) -> str | None:
    """None if engine ``name`` can run here, else the reason it cannot (never raises for a known name)."""
    try:
        return engine_class(name).unavailable_reason()
    except ImportError as exc:
        return f"cannot import the engine's module: {exc}"


def pattern_status(pattern: str) -> tuple[str | None, str]:
    """(None or why the pattern can give no usable engine here, what it offers here) for a shown pattern."""
    for shown, _, target in _PATTERNS:
        if shown == pattern:
            module_name = target.split(":")[0]
            return importlib.import_module(module_name).pattern_status()
    raise UnknownEngineError(f"unknown engine pattern {pattern!r}")


__all__ = [
    "Engine",
    "EngineError",
    "UnknownEngineError",
    "availability",
    "engine_class",
    "engine_names",
    "engine_patterns",
    "is_engine_name",
    "pattern_status",
]
