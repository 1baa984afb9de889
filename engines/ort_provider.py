"""``ort:<ProviderName>``: any ONNX Runtime execution provider by name, so that a vendor runs the suite on its
own stack (``ort:OpenVINOExecutionProvider``, ``ort:ROCMExecutionProvider``, ...) without code changes.

The provider gets the run's ``--provider-options``; ONNX Runtime's CPU provider takes the nodes it has no
kernel for. Feeds and outputs stay on the host (``session.run``), the one form every provider accepts, so
host-device copies are inside the timed region for device providers; ``ort-cuda`` and ``ort-trt`` bind on the
device instead. A provider that ONNX Runtime cannot start is an error, not a silent fall back to the CPU.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineError
from engines.options import option_string, provider_share
from engines.ort_cpu import OrtSessionEngine

# Providers built on TensorRT take the symmetric INT8 artifact; the others the CPU-style U8S8 one, the usual
# ONNX Runtime QDQ form.
_TENSORRT_PROVIDERS = frozenset({"TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider"})
_CLASSES: dict[str, type[OrtProviderEngine]] = {}


class OrtProviderEngine(OrtSessionEngine):
    """ONNX Runtime on the provider ``provider`` (set by :func:`provider_engine`)."""

    provider = "CPUExecutionProvider"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed: pip install -e '.[cpu]' (or '.[gpu]' for onnxruntime-gpu)"
        available = ort.get_available_providers()
        if cls.provider not in available:
            return (
                f"{cls.provider} is not in onnxruntime.get_available_providers() here ({', '.join(available)}); "
                "install the onnxruntime build that carries it"
            )
        return None

    def provider_list(self) -> list:
        options = provider_share(self.options.provider_options, [self.provider, self.name], primary=True)
        first = (self.provider, {key: option_string(value) for key, value in options.items()})
        return [first] if self.provider == "CPUExecutionProvider" else [first, "CPUExecutionProvider"]

    def activate_impl(self, model_path: Path) -> dict[str, tuple[tuple, np.dtype]]:
        # ONNX Runtime prints a provider's start-up failure and retries on the CPU; keep the printout for the row.
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                meta = super().activate_impl(model_path)
        finally:
            sys.stderr.write(log.getvalue())
        active = self.session.get_providers()
        if not active or active[0] != self.provider:
            del self.session
            printed = next((line for line in log.getvalue().splitlines() if line.startswith("EP Error")), "")
            raise EngineError(
                f"{self.name}: ONNX Runtime did not start {self.provider} (session providers: "
                f"{', '.join(active) or 'none'}){f': {printed[:400]}' if printed else ''}"
            )
        return meta

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["provider_options"] = dict(self.provider_list()[0][1])
        info["io_binding"] = "host"
        return info


def provider_engine(provider: str) -> type[OrtProviderEngine]:
    """The engine class for ``ort:<provider>``, made once per process and provider."""
    if provider not in _CLASSES:
        _CLASSES[provider] = type(
            f"Ort{provider}Engine",
            (OrtProviderEngine,),
            {
                "name": f"ort:{provider}",
                "provider": provider,
                "int8_flavour": "tensorrt" if provider in _TENSORRT_PROVIDERS else "cpu",
                "__doc__": f"``ort:{provider}``: ONNX Runtime on {provider}.",
            },
        )
    return _CLASSES[provider]


def unknown_provider(provider: str) -> str | None:
    """Why ``provider`` is no ONNX Runtime provider name at all (a typo, not a provider missing from this
    build), or None: a name is known when this onnxruntime lists it among all providers or can run it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if provider in ort.get_all_providers() or provider in ort.get_available_providers():
        return None
    return (
        f"unknown ONNX Runtime provider {provider!r}; available here: {', '.join(ort.get_available_providers())}; "
        f"known to onnxruntime {ort.__version__}: {', '.join(ort.get_all_providers())}"
    )


def pattern_status() -> tuple[str | None, str]:
    """(None or why no ``ort:<Name>`` engine can run here, the provider names it takes here)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed: pip install -e '.[cpu]'", ""
    names = ort.get_available_providers()
    return None, "any ONNX Runtime provider by name; here: " + ", ".join(f"ort:{n}" for n in names)
