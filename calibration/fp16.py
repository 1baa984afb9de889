"""FP16 artifacts: weights and compute in float16, inputs and outputs kept float32.

Keeping FP32 I/O means every precision takes the same feeds and returns comparable outputs. Converters
break on some graphs (Cast nodes left with a mismatched type, ops without float16 kernels, ranges that
overflow float16), so conversion is tried on the cleaned graph first and, if the result does not load or
gives non-finite outputs, again with a wider list of ops kept in FP32. The list used goes in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from calibration.graph import check_runs, clean, output_shapes
from common.errors import first_line
from common.paths import atomic_path

log = logging.getLogger(__name__)

# Ops whose float16 versions are missing in some runtimes or lose too much range (indices, sorting, NMS,
# shape-producing arithmetic). Tried only when the plain conversion fails.
CONSERVATIVE_BLOCK = (
    "Range",
    "Resize",
    "NonMaxSuppression",
    "TopK",
    "RoiAlign",
    "CumSum",
    "Loop",
    "Scan",
    "If",
    "Softmax",
    "LayerNormalization",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "Exp",
)


def quantization_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    """The ops of an already quantized graph that ``model`` holds (a brought-in file, such as ddddocr's
    dynamically quantized OCR): (Dynamic)QuantizeLinear, DequantizeLinear, ONNX Runtime's DynamicQuantizeLSTM,
    DynamicQuantizeMatMul, MatMulIntegerToFloat. Their float side is float32 only: converted to float16,
    their inputs no longer type-check, so they are always kept in FP32."""
    from common.graphs import all_graphs

    held = {n.op_type for g in all_graphs(model.graph) for n in g.node}
    return tuple(sorted(op for op in held if "Quantize" in op or op.endswith("IntegerToFloat")))


def block_lists(model: onnx.ModelProto) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The two op block lists tried in turn: the converter's default, then CONSERVATIVE_BLOCK; each with the
    quantization ops the graph holds (empty first list: the converter's default as it is)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    extra = quantization_ops(model)
    return ((*DEFAULT_OP_BLOCK_LIST, *extra) if extra else ()), (*CONSERVATIVE_BLOCK, *extra)


class ConversionError(RuntimeError):
    """A graph that could not be converted to the requested precision."""


def drop_duplicate_nodes(graph: onnx.GraphProto) -> int:
    """Remove every node that repeats an earlier node exactly (name, inputs, outputs, attributes), and repeated
    value_info entries, in ``graph`` and its subgraphs; returns how many nodes went.

    onnxruntime-gpu 1.31's converter inserts one ``<name>_cast_to_fp32_node`` Cast per consumer when a float16
    tensor feeds several nodes kept in float32, all with the same name and output, and ONNX Runtime then
    refuses the graph ("two nodes with same node name"); 1.32 shares one Cast. An exact repeat computes the
    same value into the same name, so dropping it changes nothing else."""
    from common.graphs import subgraphs

    seen, kept, inner = set(), [], 0
    for node in graph.node:
        for body in subgraphs(node):
            inner += drop_duplicate_nodes(body)
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    dropped = len(graph.node) - len(kept)
    if dropped:
        del graph.node[:]
        graph.node.extend(kept)
    names, infos = set(), []
    for info in graph.value_info:
        if info.name not in names:
            names.add(info.name)
            infos.append(info)
    if len(infos) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(infos)
    return dropped + inner


def convert(fp32_path: Path, out_path: Path, feeds: dict, cleaned: tuple[onnx.ModelProto, str] | None = None) -> dict:
    """Convert ``fp32_path`` to FP16 at ``out_path``, check it runs on ``feeds``; returns manifest info.
    ``cleaned`` is ``calibration.graph.clean(fp32_path)`` when the caller already has it.

    Raises ConversionError with both attempts' reasons when no block list gives a working model.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model, clean_note = cleaned or clean(fp32_path)
    shapes = output_shapes(fp32_path, feeds)
    errors = []
    for block in block_lists(model):
        try:
            converted = convert_float_to_float16(
                model,
                keep_io_types=True,
                op_block_list=list(block) or None,
            )
            duplicates = drop_duplicate_nodes(converted.graph)
            check_runs(converted, feeds, shapes)
        except Exception as exc:  # noqa: BLE001 - converter and runtime failures are both retried
            errors.append(f"block={list(block) or 'default'}: {first_line(exc)}")
            log.info("fp16 conversion attempt failed: %s", errors[-1])
            continue
        # Written like every artifact: a run reading the old file never sees a half-written new one.
        with atomic_path(out_path) as tmp:
            onnx.save(converted, str(tmp))
        return {
            "converter": "onnxruntime.transformers.float16",
            "graph_cleanup": clean_note,
            "fp32_blocked_ops": list(block) or "converter default",
            "io_types": "float32",
            "attempts": errors,
            "duplicate_nodes_dropped": duplicates,
        }
    raise ConversionError(f"{fp32_path}: FP16 conversion failed: " + " | ".join(errors))


# ------------------------------------------------------------------------------------------------ builder
# The FP16 entry of the precision registry (common.precisions) names this module: ``key`` and ``build`` are
# what onnx_models.artifacts.ensure calls, with a BuildJob (the artifact, its model, store and FP32 file).


def key(job) -> dict:
    """What the FP16 artifact depends on besides the FP32 file, this module's source and ONNX Runtime: the
    graph slimmer's version."""
    from common.packages import package_version

    return {"onnxslim": package_version("onnxslim") or "absent"}


def build(job, out: Path) -> dict:
    """Convert ``job``'s FP32 file into ``out`` (``convert``, from the slimmed graph); returns manifest info, with
    ``mac_coverage``: how many of the graph's MACs run in float16 (``analysis.quant_coverage``, at the check
    batch's shapes)."""
    from analysis.quant_coverage import coverage

    feeds = job.check_feeds()
    info = convert(job.fp32, out, feeds, cleaned=job.cleaned())
    shapes = {name: value.shape for name, value in feeds.items()}
    return {**info, "mac_coverage": coverage(out, job.artifact.precision, shapes).as_dict()}
