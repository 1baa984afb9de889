"""Which instruction set the CPU's 8-bit kernels run on, and whether their dot products saturate.

ONNX Runtime's integer GEMMs and convolutions (MLAS) multiply unsigned 8-bit activations by signed 8-bit
weights. On x86 with VNNI (AVX-512 VNNI, AVX-VNNI) or AMX, the products of four bytes are summed straight into
32 bits. On AVX2 and on AVX-512 without VNNI the kernels use ``vpmaddubsw``, which adds each pair of products
into a signed 16-bit lane and saturates: 255 * 127 * 2 = 64770 does not fit in 32767, so a model whose
weights use the full 8-bit range can come out wrong there and nowhere else. Weights limited to [-64, 64]
(ONNX Runtime's ``reduce_range``, "7-bit weights") keep every pair within 255 * 64 * 2 = 32640.

``isa()`` names the instruction set from the CPU flags (what is documented); ``saturation_probe()`` asks the
installed ONNX Runtime directly, with one integer matrix product whose exact result is known (what is true
of the kernels at hand). The suite chooses its INT8 recipe from the probe; the tests check that probe and
documentation agree wherever the documentation says what to expect.
"""

from __future__ import annotations

import functools
import platform

# From the best 8-bit path down; the first whose flags are all present names the machine.
X86_ISAS = (
    ("amx", ("amx_int8", "amx_tile")),
    ("avx512-vnni", ("avx512_vnni",)),
    ("avx-vnni", ("avx_vnni",)),
    ("avx512", ("avx512bw",)),
    ("avx2", ("avx2",)),
    ("sse4.1", ("sse4_1",)),
)
# The ISAs whose u8 x s8 kernels sum pairs of products in saturating 16-bit lanes (vpmaddubsw). On SSE-only
# machines ONNX Runtime widens to 16 bits first on Linux but has a vpmaddubsw-like kernel on Windows, and on
# Arm it uses widening or dot-product instructions: no expectation there, the probe decides.
SATURATING = frozenset({"avx512", "avx2"})
NOT_SATURATING = frozenset({"amx", "avx512-vnni", "avx-vnni", "arm64", "arm64-dotprod", "arm64-i8mm"})
# Largest weight magnitude whose products with any uint8 activation sum pairwise within int16: 64, as in
# onnxruntime.quantization's reduced range for int8 ([-64, 64]).
REDUCED_WEIGHT_MAX = 64
FULL_WEIGHT_MAX = 127


def weight_max(bits: int) -> int:
    """The largest int8 weight magnitude of a ``bits``-wide weight range: 127 for 8, 64 for 7."""
    if bits not in (7, 8):
        raise ValueError(f"weight bits must be 8 or 7, got {bits!r}")
    return FULL_WEIGHT_MAX if bits == 8 else REDUCED_WEIGHT_MAX


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags`` or Arm ``Features`` of /proc/cpuinfo); empty where unreadable.
    Read once per process: every row asks for the ISA."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def isa(flags: set[str] | frozenset[str] | None = None, machine: str | None = None) -> str:
    """The instruction set the 8-bit kernels use, from ``flags`` (default: this CPU's): ``amx``,
    ``avx512-vnni``, ``avx-vnni``, ``avx512``, ``avx2``, ``sse4.1``, ``arm64-i8mm``, ``arm64-dotprod``,
    ``arm64``, or the machine name when none of these applies."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "arm64-i8mm"
        return "arm64-dotprod" if "asimddp" in flags else "arm64"
    for name, needed in X86_ISAS:
        if all(flag in flags for flag in needed):
            return name
    return machine or "unknown"


def expected_saturation(name: str) -> bool | None:
    """Whether 8-bit dot products are documented to saturate on ISA ``name`` (None: no expectation)."""
    if name in SATURATING:
        return True
    if name in NOT_SATURATING:
        return False
    return None


def _integer_matmul(weight_value: int, depth: int = 64) -> tuple[int, int]:
    """(ONNX Runtime's result, the exact result) of an 8 x depth x 32 MatMulInteger of activations 255 and
    constant weights ``weight_value``: the largest products the kernels can be handed."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from common.ort_session import cpu_session

    rows, cols = 8, 32
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "saturation_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [rows, depth])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, cols])],
        [numpy_helper.from_array(np.full((depth, cols), weight_value, np.int8), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = cpu_session(model, threads=1)
    (result,) = session.run(None, {"a": np.full((rows, depth), 255, np.uint8)})
    return int(result.max()), 255 * weight_value * depth


@functools.cache
def saturation_probe() -> bool | None:
    """True when ONNX Runtime's CPU integer kernels here lose precision on full-range 8-bit weights (and stay
    exact on reduced-range ones); False when they are exact; None when ONNX Runtime cannot be imported."""
    try:
        full, exact_full = _integer_matmul(FULL_WEIGHT_MAX)
        reduced, exact_reduced = _integer_matmul(REDUCED_WEIGHT_MAX)
    except ImportError:
        return None
    if reduced != exact_reduced:
        raise RuntimeError(
            f"ONNX Runtime's integer MatMul is wrong even on reduced-range weights ({reduced} != {exact_reduced})"
        )
    return full != exact_full


def describe() -> dict[str, object]:
    """This machine's 8-bit facts for ``env.json`` and INT8 rows: the ISA, what its documentation says of
    saturation, and what the probe found."""
    name = isa()
    return {"isa": name, "int8_saturation_expected": expected_saturation(name), "int8_saturates": saturation_probe()}
