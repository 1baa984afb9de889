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


def provider_share(options: Mapping[str, Any], scopes: Iterable[str], primary: bool) -> dict[str, Any]:
    """The ``--provider-options`` entries (``options["provider_options"]``) meant for one provider: the plain
    entries when it is the engine's own (``primary``) provider, then those under each name in ``scopes`` (its
    provider name, the engine name), later ones overriding earlier ones. Values are left as given."""
    raw = options.get("provider_options") or {}
    share = {k: v for k, v in raw.items() if not isinstance(v, Mapping)} if primary else {}
    for scope in scopes:
        scoped = raw.get(scope)
        if isinstance(scoped, Mapping):
            share.update(scoped)
    return share
