"""INT8 with FP16 artifacts (``int8fp16``): the ``tensorrt`` INT8 graph with every float layer in FP16.

A strongly typed TensorRT network runs every layer at the type the ONNX graph gives its tensors, so the INT8
artifact (float32 outside its Q/DQ pairs) runs each layer that is not quantized in FP32. The usual practice,
``trtexec --int8 --fp16``, lets those layers run in FP16; this artifact writes that choice into the graph, so
that a strongly typed build (native TensorRT) and a weakly typed one with both flags (ONNX Runtime's TensorRT
provider) run the same mixed network.

It is made from the ``tensorrt`` INT8 artifact's recipe (``calibration.int8.build``: the same stored
calibration ranges, weight width and float nodes, so it is never calibrated differently) and then converted the
way ``calibration.fp16`` converts the FP32 graph, with float32 inputs and outputs, except that the Q/DQ nodes are
converted too: their scales become float16, zero points stay int8. FP16 scales rather than FP32 scales with
casts, because in a strongly typed network a DequantizeLinear's output has its scale's type (onnx-tensorrt's
``QuantDequantLinearHelper`` passes the scale's type as the layer's output type; TensorRT's Dequantize operator
page gives scale and output one type, float32, float16 or bfloat16), and a QuantizeLinear's scale has its
input's type (onnx-tensorrt casts a scale to the input's type only below opset 19). FP32 scales would make each
DQ output FP32 and put a Cast between it and the FP16 layer it feeds, outside the Q/DQ pattern TensorRT fuses.
ONNX takes float16 scales from opset 19 (QuantizeLinear-19 / DequantizeLinear-19), so the graph is converted to
opset 19 first (``onnx.version_converter``). ``calibration.tensorrt_rules`` checks the result, as it checks the
INT8 artifact.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from analysis.quant_coverage import coverage
from calibration import fp16, int8
from calibration.graph import check_runs, output_shapes
from common.errors import first_line
from common.graphs import sort_nodes
from common.paths import atomic_path

log = logging.getLogger(__name__)

# The first opset whose QuantizeLinear / DequantizeLinear take float16 scales.
OPSET = 19
# FP16's smallest normal number: a scale below it is stored with fewer significant bits (a subnormal).
FP16_NORMAL_MIN = float(np.finfo(np.float16).tiny)


class MixedConversionError(fp16.ConversionError):
    """An INT8 graph that could not be given FP16 float layers."""


def _scale_rounding(int8_model: onnx.ModelProto) -> tuple[int, int, float]:
    """(scales, how many fall below FP16's normal range, the largest relative error of rounding one to FP16)
    over the float32 Q/DQ scales of ``int8_model``: what moving them to float16 costs."""
    from common.graphs import all_graphs

    inits = {t.name: t for g in all_graphs(int8_model.graph) for t in g.initializer}
    names = {
        n.input[1]
        for g in all_graphs(int8_model.graph)
        for n in g.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1 and n.input[1] in inits
    }
    count, subnormal, worst = 0, 0, 0.0
    for name in names:
        exact = onnx.numpy_helper.to_array(inits[name]).astype(np.float64).ravel()
        rounded = exact.astype(np.float16).astype(np.float64)
        count += exact.size
        subnormal += int(np.count_nonzero(np.abs(exact) < FP16_NORMAL_MIN))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(rounded - exact) / np.abs(exact)
        worst = max(worst, float(np.nanmax(rel)) if rel.size else 0.0)
    return count, subnormal, worst


def convert(int8_path: Path, out_path: Path, check_feeds: dict, shapes: list[tuple[int, ...]]) -> dict:
    """Give the ``tensorrt`` INT8 graph ``int8_path`` FP16 float layers and float16 Q/DQ scales, at opset 19,
    into ``out_path``; returns manifest info. The result must run in ONNX Runtime CPU on ``check_feeds`` with
    finite outputs of the ranks in ``shapes`` (the FP32 graph's).

    The op block lists are ``calibration.fp16``'s (the converter's default, then the conservative one), without
    the quantization ops: those are what this precision converts. Raises MixedConversionError with each
    attempt's reason when neither gives a working graph."""
    from onnx import version_converter
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(int8_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    scales, subnormal, worst = _scale_rounding(model)
    try:
        upgraded = version_converter.convert_version(model, OPSET) if opset < OPSET else model
    except Exception as exc:  # noqa: BLE001 - the converter raises several kinds for an op it cannot move
        raise MixedConversionError(f"{int8_path.name}: opset {opset} -> {OPSET} failed: {first_line(exc)}") from exc
    del model
    errors = []
    for block in (DEFAULT_OP_BLOCK_LIST, fp16.CONSERVATIVE_BLOCK):
        try:
            converted = convert_float_to_float16(upgraded, keep_io_types=True, op_block_list=list(block))
            for graph in _graphs(converted):
                sort_nodes(graph)
            duplicates = fp16.drop_duplicate_nodes(converted.graph)
            # Optimisation off: ONNX Runtime CPU's QDQ fusions fold float16 Q/DQ into QLinear* ops that take
            # float32 scales only (GoogLeNet's Concat became an invalid QLinearConcat). Nodes without a float16
            # CPU kernel (Conv) then run in float32 between casts that ONNX Runtime inserts.
            check_runs(converted, check_feeds, shapes, optimize=False)
        except Exception as exc:  # noqa: BLE001 - converter and runtime failures are both retried
            errors.append(f"block={'default' if block is DEFAULT_OP_BLOCK_LIST else 'conservative'}: {first_line(exc)}")
            log.info("int8fp16 conversion attempt failed: %s", errors[-1])
            continue
        with atomic_path(out_path) as tmp:
            onnx.save(converted, str(tmp))
        return {
            "converter": "onnxruntime.transformers.float16 (Q/DQ included)",
            "opset": {"from": opset, "to": max(opset, OPSET)},
            "fp32_blocked_ops": "converter default" if block is DEFAULT_OP_BLOCK_LIST else list(block),
            "io_types": "float32",
            "scale_type": "float16",
            "qdq_scales": scales,
            "qdq_scales_subnormal_fp16": subnormal,
            "qdq_scale_max_rel_rounding": worst,
            "attempts": errors,
            "duplicate_nodes_dropped": duplicates,
        }
    raise MixedConversionError(f"{int8_path.name}: INT8 with FP16 conversion failed: " + " | ".join(errors))


def _graphs(model: onnx.ModelProto):
    from common.graphs import all_graphs

    return list(all_graphs(model.graph))


# ------------------------------------------------------------------------------------------------ builder
# The int8fp16 entry of the precision registry (common.precisions) names this module: ``key`` and ``build`` are
# what onnx_models.artifacts.ensure calls, with a BuildJob.


def _int8_job(job):
    """``job`` for the INT8 artifact this one is made from: the same model, flavour, weight width and float
    nodes, precision ``int8``."""
    if job.artifact.flavour != "tensorrt":
        raise ValueError(
            f"int8fp16 is made from the tensorrt INT8 flavour only, not {job.artifact.flavour!r}: "
            "its engines (TensorRT, ONNX Runtime's CUDA and TensorRT providers) consume that flavour"
        )
    return dataclasses.replace(job, artifact=dataclasses.replace(job.artifact, precision="int8"))


def key(job) -> dict:
    """What the artifact depends on besides the FP32 file, this module's source (which imports
    ``calibration.int8`` and ``calibration.fp16``) and ONNX Runtime: the INT8 artifact's own key (its
    calibration ranges, flavour, weight width, options and TensorRT's rules), the graph slimmer's version, and
    onnx's (its version converter moves the graph to opset 19)."""
    return {"int8": int8.key(_int8_job(job)), **fp16.key(job), "onnx": onnx.__version__}


def build(job, out: Path) -> dict:
    """Make the ``tensorrt`` INT8 graph of ``job`` by ``calibration.int8.build`` (reusing its stored ranges)
    into a temporary file, convert it (``convert``) into ``out`` and check it against TensorRT's rules; returns
    manifest info: the INT8 build's, the conversion's, ``tensorrt_conformance`` and ``mac_coverage`` (the share
    of MACs in int8 of the converted graph). An INT8 build that is refused (no MAC runs in int8) refuses this one
    with the same reason."""
    from calibration import tensorrt_rules

    int8_job = _int8_job(job)
    check_feeds = job.check_feeds()
    with tempfile.TemporaryDirectory(prefix="aimatrix-int8fp16-") as tmp:
        qdq = Path(tmp) / "int8.onnx"
        info = int8.build(int8_job, qdq)
        info.pop("tensorrt_conformance", None)  # the INT8 graph's; this artifact's own is checked below
        mixed = convert(qdq, out, check_feeds, output_shapes(job.fp32, check_feeds))
    violations = tensorrt_rules.check(out)
    record = tensorrt_rules.conformance(violations)
    if violations:
        log.warning(
            "%s (%s) %s breaks TensorRT's Q/DQ rules: %s (first: %s)",
            job.artifact.model,
            job.artifact.size,
            job.artifact.name,
            tensorrt_rules.row_text(record),
            violations[0],
        )
    # The INT8 build's coverage was its graph's; this one's is counted on the converted graph.
    shapes = {name: value.shape for name, value in check_feeds.items()}
    covered = coverage(out, job.artifact.precision, shapes).as_dict()
    return {**info, "mixed": mixed, "tensorrt_conformance": record, "mac_coverage": covered}
