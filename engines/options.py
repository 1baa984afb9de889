"""Engine options given on the command line, and the share of ``--provider-options`` each engine takes.

``--provider-options`` is one JSON object for the whole run:

- a plain value (``"device_id": 1``) is an option of each engine's own provider: the CUDA provider for
  ``ort-cuda``, the TensorRT provider for ``ort-trt``, the named provider for ``ort:<Name>``, and a builder
  setting for the native ``tensorrt`` engine;
- an object under a provider name (``"CUDAExecutionProvider": {...}``) applies to that provider wherever an
  engine uses it (``ort-trt``'s CUDA fallback included), and an object under an engine name
  (``"tensorrt": {...}``) to that engine alone.

Values reach ONNX Runtime as strings (booleans as ``"1"``/``"0"``, the form its option parser reads).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

PROVIDER_SUFFIX = "ExecutionProvider"


def _is_scope(key: str) -> bool:
    import engines

    return key.endswith(PROVIDER_SUFFIX) or engines.is_engine_name(key)


def _check_value(where: str, value: Any) -> None:
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"--provider-options: {where} must be a string, number or boolean, not {json.dumps(value)}")


def parse_provider_options(text: str) -> dict[str, Any]:
    """Parse the ``--provider-options`` JSON text into a dict; a malformed value raises ValueError with a
    one-line reason (bad JSON, not an object, an object under a key that names no provider or engine)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--provider-options is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ValueError("--provider-options must be a JSON object, such as '{\"device_id\": 0}'")
    for key, item in value.items():
        if isinstance(item, dict):
            if not _is_scope(key):
                raise ValueError(
                    f"--provider-options: {key!r} holds an object, but only a provider name (...{PROVIDER_SUFFIX}) "
                    "or an engine name may"
                )
            for inner, inner_value in item.items():
                _check_value(f"{key}.{inner}", inner_value)
        else:
            _check_value(repr(key), item)
    return value


def option_string(value: Any) -> str:
    """One option value as ONNX Runtime's option parser wants it: booleans as ``1``/``0``, the rest as text."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@dataclass(frozen=True)
class EngineOptions:
    """What a run sets for every engine: ``--threads`` (None: one per physical core), ``--provider-options``
    (parsed JSON), ``--include-copies``, ``--cuda-graph``, ``tf32`` (False with ``--no-tf32``: GPU engines run
    FP32 convolutions and matrix products in IEEE FP32, not in TF32), ``optimization`` ``disabled`` (graph optimisation
    off, for the INT8 kernel check's float simulation), and ``profile``, a file prefix under which ONNX Runtime
    engines write their per-node profile (``suite.py explain``). Engines read these attributes and nothing
    else."""

    threads: int | None = None
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    include_copies: bool = False
    cuda_graph: bool = False
    tf32: bool = True
    optimization: str = "enabled"
    profile: str | None = None

    @classmethod
    def of(cls, options: EngineOptions | Mapping[str, Any] | None) -> EngineOptions:
        """``options`` as EngineOptions: itself, or built from a mapping of the same names (what crosses into a
        cell's child process); an unknown name raises ValueError naming the valid ones."""
        if isinstance(options, EngineOptions):
            return options
        given = dict(options or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(valid))
        if unknown:
            raise ValueError(f"unknown engine option {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**given)

    def as_dict(self) -> dict[str, Any]:
        """The options that differ from the defaults, as plain values (``env.json``, a child's arguments)."""
        defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(self)}
        return {name: getattr(self, name) for name, default in defaults.items() if getattr(self, name) != default}


def provider_share(raw: Mapping[str, Any], scopes: Iterable[str], primary: bool) -> dict[str, Any]:
    """The ``--provider-options`` entries (``raw``, the parsed JSON) meant for one provider: the plain
    entries when it is the engine's own (``primary``) provider, then those under each name in ``scopes`` (its
    provider name, the engine name), later ones overriding earlier ones. Values are left as given."""
    share = {k: v for k, v in raw.items() if not isinstance(v, Mapping)} if primary else {}
    for scope in scopes:
        scoped = raw.get(scope)
        if isinstance(scoped, Mapping):
            share.update(scoped)
    return share
