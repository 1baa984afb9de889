"""INT8 artifacts: static post-training quantization to a QDQ graph with a calibration step.

Two flavours of the same calibration (the ranges are shared through one cache file):

- ``cpu``: unsigned 8-bit activations with zero points, signed 8-bit per-channel weights (U8S8). This is
  what x86 VNNI kernels in ONNX Runtime run fastest: on ResNet-50 here it measured 3.2x faster than FP32
  at batch 1, whereas signed activations are known to run slower than FP32 on some graphs. Where the CPU's
  u8 x s8 dot products saturate (x86 without VNNI or AMX), the weights are limited to [-64, 64]
  (``calibration.int8_recipe``).
- ``tensorrt``: signed, symmetric 8-bit activations and weights (zero point 0), per-channel weights, float
  biases and standard ONNX Q/DQ only: the explicit-quantization form TensorRT requires (TensorRT 11 has no
  implicit INT8 calibration). ``calibration.tensorrt_rules`` writes those rules down and checks every build.

MatMuls inside Loop bodies, which the static quantizer does not enter, get int8 weights with activations
quantized at run time in the ``cpu`` flavour (``calibration.loop_int8``). Operators inside If and Scan bodies
stay in float: ONNX Runtime's QDQ quantizer walks the top-level graph only (``QDQQuantizer.quantize_model``; its
``EnableSubgraph`` option is the QOperator quantizer's, for dynamic quantization) and its calibrators collect
ranges there only. Each artifact records the share of the graph's MACs that run in int8
(``analysis.quant_coverage``); a graph of which none do (every Conv inside If bodies, say) is refused as
unsupported, with where its MACs sit, rather than measured as an INT8 result that is FP32. Any share above 0 is
built and reported.

What must stay in float stays in float: embedding lookups (Gather), sorting and selection (TopK, NMS),
softmax and index arithmetic are never quantized. The manifest lists which op types were quantized.

Before quantization the graph is cleaned (onnxslim) and any BatchNormalization that the exporter could not
fold is rewritten as the equivalent depthwise 1x1 Conv, so that it too runs in 8 bits (see
``calibration.graph.batchnorm_to_depthwise``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from analysis.quant_coverage import coverage
from calibration.feeds import Feeds
from calibration.graph import batchnorm_to_depthwise, check_runs, clean, output_shapes
from calibration.int8_recipe import FLAVOURS, METHODS
from common.cpu_isa import weight_max
from common.errors import Unsupported
from common.graphs import subgraphs
from common.paths import unique_temp

log = logging.getLogger(__name__)

# Float-only ops, whatever ONNX Runtime's QDQ registry would quantize.
KEEP_FLOAT = frozenset(
    {"Gather", "GatherElements", "GatherND", "TopK", "NonMaxSuppression", "Softmax", "CumSum", "Where", "Range"}
)
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "LSTM", "GRU", "RNN"})


def quantizable_op_types() -> list[str]:
    """The op types handed to the quantizer: ONNX Runtime's QDQ registry less ``KEEP_FLOAT``."""
    from onnxruntime.quantization.registry import QDQRegistry

    return sorted(set(QDQRegistry) - KEEP_FLOAT)


def quantizer_options(flavour: str) -> dict:
    """The ``extra_options`` of ONNX Runtime's ``quantize_static`` for ``flavour``.

    The ``tensorrt`` flavour is written to the rules of ``calibration.tensorrt_rules`` (checked after every
    build): symmetric int8 activations and weights, and biases left in float. ONNX Runtime's default quantizes
    a bias to INT32 behind a DequantizeLinear, which TensorRT's parser refuses (it dequantizes INT8, FP8 and INT4
    only; onnx-tensorrt #850, TensorRT #3360) and for which, as the issue reports, ONNX Runtime's CUDA provider
    has no kernel (those nodes fall back to the CPU). NVIDIA's own ONNX Runtime based quantizer for TensorRT
    (Model Optimizer) leaves biases in float the same way; TensorRT adds them in its fused INT8 kernels.
    """
    options = {
        # One batch at a time through the calibrator: entropy and percentile otherwise keep every batch's
        # activations (tens of GB on BERT-large); histograms are merged between strides.
        "CalibStridedMinMax": 1,
        "ActivationSymmetric": flavour == "tensorrt",
        "WeightSymmetric": True,
    }
    if flavour == "tensorrt":
        # Float biases (see above), and plain ONNX Q/DQ: ONNX Runtime switches to its com.microsoft contrib
        # Q/DQ by itself for some types, which TensorRT's parser does not know.
        options |= {"QuantizeBias": False, "UseQDQContribOps": False}
    return options


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def quantize(
    fp32_path: Path,
    out_path: Path,
    feeds: Feeds,
    *,
    method: str,
    flavour: str,
    cache_path: Path,
    check_feeds: dict,
    exclude_op_types: tuple[str, ...] = (),
    exclude_nodes: tuple[str, ...] = (),
    weight_bits: int = 8,
    cleaned: tuple[onnx.ModelProto, str] | None = None,
) -> dict:
    """Quantize ``fp32_path`` into the QDQ model ``out_path``; returns manifest info.

    ``feeds`` are the calibration batches (read one batch at a time, so memory stays at one batch's
    activations whatever the method); ``cache_path`` holds the tensor ranges: when it exists, calibration
    is skipped. ``check_feeds`` is one batch the result must run on with finite outputs. ``exclude_op_types``
    and ``exclude_nodes`` keep more of the graph in float for a model that needs it. ``weight_bits`` 7 limits
    the weights to [-64, 64] (ONNX Runtime's reduced range; ``calibration.int8_recipe`` says when), in the
    static graph and in the Loop MatMuls alike. ``cleaned`` is ``calibration.graph.clean(fp32_path)`` when the
    caller already has it.

    The info's ``mac_coverage`` is ``analysis.quant_coverage`` of the result at ``check_feeds``' shapes. Raises
    ``common.errors.Unsupported`` (``out_path`` left as it was) when none of the graph's MACs run in int8.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown INT8 flavour {flavour!r}; valid: {', '.join(FLAVOURS)}")
    largest = weight_max(weight_bits)  # raises for a width other than 8 or 7
    model, clean_note = cleaned or clean(fp32_path)
    model, depthwise = batchnorm_to_depthwise(model)
    if depthwise:
        clean_note += f"; {depthwise} BatchNormalization -> depthwise 1x1 Conv"
    _check_nodes_exist(model, exclude_nodes)
    cache_hit = cache_path.is_file()
    # ONNX Runtime writes the ranges straight to the path it is given: give it a unique temporary (one that
    # does not exist yet, or it would be read as a cache) and move the complete file into place afterwards.
    ort_cache = cache_path if cache_hit else unique_temp(cache_path)
    symmetric = flavour == "tensorrt"
    extra = quantizer_options(flavour)
    feeds.rewind()
    with tempfile.TemporaryDirectory(prefix="aimatrix-int8-") as tmp:
        cleaned = Path(tmp) / "clean.onnx"
        onnx.save(model, str(cleaned))
        del model
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = unique_temp(out_path)
        # The quantizer logs advice through the root logger on every call ("consider pre-processing",
        # per-axis notes on 1-D weights); our graph is already cleaned, so keep the run's output readable.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(cleaned),
                str(partial),
                calibration_data_reader=feeds,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=[t for t in quantizable_op_types() if t not in exclude_op_types],
                nodes_to_exclude=list(exclude_nodes),
                per_channel=True,
                # Weights only: activations keep the full uint8/int8 range either way.
                reduce_range=weight_bits == 7,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=_method(method),
                extra_options=extra,
                calibration_cache_path=str(ort_cache),
            )
            if not cache_hit:
                os.replace(ort_cache, cache_path)
        finally:
            root.setLevel(level)
            if not cache_hit:
                ort_cache.unlink(missing_ok=True)
    loop_matmuls = _quantize_loops(partial, weight_bits) if flavour == "cpu" else 0
    check_runs(partial, check_feeds, output_shapes(fp32_path, check_feeds))
    covered = coverage(partial, "int8", {name: value.shape for name, value in check_feeds.items()})
    # Nodes kept in float on request (an INT8 plan, or explain's search, whose last candidate keeps every one)
    # are what was asked for: only a graph the quantizer itself left in float is refused.
    refusal = None if exclude_nodes else unquantized_reason(covered, flavour)
    if refusal:
        partial.unlink(missing_ok=True)
        raise Unsupported(refusal)
    os.replace(partial, out_path)
    return {
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
        "flavour": flavour,
        "activations": "int8 symmetric" if symmetric else "uint8 asymmetric",
        "weights": f"int8 symmetric per-channel, {weight_bits}-bit range [-{largest}, {largest}]",
        "weight_bits": weight_bits,
        "calibration": {
            "method": method,
            "samples": feeds.samples,
            "batches": len(feeds),
            "data": feeds.origin,
            "data_sha256": feeds.digest,
            "cache": cache_path.name,
            "cache_reused": cache_hit,
        },
        "graph_cleanup": clean_note,
        "kept_float": sorted(KEEP_FLOAT | set(exclude_op_types)),
        "excluded_nodes": list(exclude_nodes),
        "loop_matmuls_dynamic_int8": loop_matmuls,
        "mac_coverage": covered.as_dict(),
        **quantized_summary(out_path),
    }


def unquantized_reason(covered, flavour: str) -> str | None:
    """Why an INT8 graph (``covered``: its ``analysis.quant_coverage.Coverage``) is refused: none of its MACs run
    in int8, and where they are instead (``all 1.2 GMACs sit inside If bodies, which ONNX Runtime's QDQ quantizer
    does not enter``); None when some do, whatever the share, or the graph has none."""
    from analysis.quant_coverage import mac_text

    if not covered.macs or covered.reduced_macs:
        return None
    text = f"INT8 quantization leaves every multiply-accumulate in float: {covered.where()}"
    if covered.body_macs:
        text += ", which ONNX Runtime's QDQ quantizer does not enter"
        if "Loop" in covered.body_macs_by_op:
            from calibration.loop_int8 import MIN_WEIGHT_ELEMENTS

            text += (
                f" (the cpu flavour gives int8 weights to Loop MatMuls whose weight passes through the loop and has "
                f"{MIN_WEIGHT_ELEMENTS} values or more: none here)"
                if flavour == "cpu"
                else " (the tensorrt flavour leaves Loops to TensorRT)"
            )
        top = covered.macs - covered.body_macs
        if top > 0:
            text += f", and the other {mac_text(top)} are kept in float"
    else:
        text += ", every operator doing them kept in float"
    return text


def _check_nodes_exist(model: onnx.ModelProto, nodes: tuple[str, ...]) -> None:
    """Refuse nodes to keep in float that ``model``'s top-level graph lacks: the quantizer would ignore them
    silently, and the artifact would not be the one that was asked for (an INT8 plan made for another graph)."""
    names = {node.name for node in model.graph.node}
    missing = [name for name in nodes if name not in names]
    if missing:
        raise ValueError(
            f"{len(missing)} node(s) to keep in float are not in the graph (first: {missing[0]!r}): the model "
            "changed since its INT8 plan was made; run `suite.py explain` again for a new plan"
        )


def _quantize_loops(path: Path, weight_bits: int) -> int:
    """Int8 weights (``weight_bits`` wide) for the MatMuls in ``path``'s Loop bodies (``calibration.loop_int8``),
    rewriting the file when there are any; returns their number."""
    from calibration.loop_int8 import quantize_loop_matmuls

    model = onnx.load(str(path))
    rewritten = quantize_loop_matmuls(model, weight_max=weight_max(weight_bits))
    if rewritten:
        onnx.save(model, str(path))
    return rewritten


def quantized_summary(path: Path) -> dict:
    """Which op types in a QDQ model run quantized and which compute ops stay float, with node counts.

    A node runs quantized when it reads at least one dequantized tensor (Conv, MatMul and the other
    ``COMPUTE_OPS``: its weight operand too) and every one of its outputs goes only into QuantizeLinear: the
    DQ -> op -> Q group that runtimes fuse into an integer kernel. A float op that merely follows a
    quantized one (reading a DQ output, writing float) does not count. Loop, Scan and
    If bodies are searched too: the static quantizer does not enter them, so their matmuls show up as float
    unless ``calibration.loop_int8`` made them DynamicQuantizeMatMul (counted as quantized).
    """
    model = onnx.load(str(path), load_external_data=False)
    quantized: Counter[str] = Counter()
    float_compute: Counter[str] = Counter()
    _summarise(model.graph, quantized, float_compute)
    return {"quantized_ops": dict(sorted(quantized.items())), "float_compute_ops": dict(sorted(float_compute.items()))}


def _summarise(graph: onnx.GraphProto, quantized: Counter[str], float_compute: Counter[str]) -> None:
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    graph_outputs = {o.name for o in graph.output}
    for node in graph.node:
        for body in subgraphs(node):
            _summarise(body, quantized, float_compute)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "DynamicQuantizeMatMul":
            quantized[node.op_type] += 1
            continue
        # An arithmetic op with float weights (one left out of quantization between two quantized ones)
        # runs in float even inside a DQ -> op -> Q group.
        weights_dq = node.op_type not in COMPUTE_OPS or (len(node.input) > 1 and node.input[1] in dq_outputs)
        reads_dq = weights_dq and any(i in dq_outputs for i in node.input)
        writes_q = all(
            o not in graph_outputs and consumers.get(o) and set(consumers[o]) == {"QuantizeLinear"} for o in node.output
        )
        if reads_dq and writes_q:
            quantized[node.op_type] += 1
        elif node.op_type in COMPUTE_OPS:
            float_compute[node.op_type] += 1


# ------------------------------------------------------------------------------------------------ builder
# The INT8 entry of the precision registry (common.precisions) names this module: ``key`` and ``build`` are
# what onnx_models.artifacts.ensure calls, with a BuildJob (the artifact, its model, store and FP32 file, the
# calibration settings and data).


def ranges_key(job) -> str:
    """The key of the calibration ranges of ``job``: the FP32 file, method, sample count, the data (for
    synthetic data the model's sampler code too, which the feeds' digest of shapes, count and seed does not
    cover), the graph clean-up and feeds code, and the calibrator (ONNX Runtime). Not the flavour, weight
    width or plan: every INT8 artifact of one model and data reuses the same ranges."""
    from common.hashing import cache_key
    from common.packages import onnxruntime_version
    from common.source_hash import source_digest

    calib = job.calib
    return cache_key(
        source=job.source_sha256,
        method=calib.method,
        samples=calib.samples,
        data=job.calibration.digest,
        sampler=job.spec.code_digest() if calib.data is None else None,
        code=source_digest("calibration.graph", "calibration.feeds"),
        onnxruntime=onnxruntime_version(),
    )


def key(job) -> dict:
    """What the INT8 artifact depends on besides the FP32 file, this module's source and ONNX Runtime: its
    calibration ranges, flavour, weight width, the model's INT8 options, TensorRT's rules for that flavour, and
    an INT8 plan's nodes where there are some."""
    from common.source_hash import source_digest

    artifact = job.artifact
    return {
        "calib": ranges_key(job),
        "flavour": artifact.flavour,
        "weight_bits": artifact.weight_bits,
        "options": dict(job.spec.int8_options),
        "rules": source_digest("calibration.tensorrt_rules") if artifact.flavour == "tensorrt" else None,
        **({"float_nodes": artifact.float_nodes} if artifact.float_nodes else {}),
    }


def build(job, out: Path) -> dict:
    """Calibrate (or reuse the stored ranges) and quantize ``job``'s FP32 file into ``out``; returns manifest
    info. ONNX Runtime uses any ranges file it finds, so one whose bytes the manifest does not vouch for is
    deleted first and calibration runs again; the one it writes is recorded once ``quantize`` returns.

    A ``tensorrt`` artifact is checked against TensorRT's explicit-quantization rules
    (``calibration.tensorrt_rules``) and the result recorded (``tensorrt_conformance``). A graph that breaks a
    rule is kept, with a warning: its rows say which rules it breaks, and an engine that cannot take it fails
    with its own reason."""
    from calibration.int8_recipe import weight_recipe
    from common.cpu_isa import isa

    artifact, store = job.artifact, job.store
    ranges = f"calibration-{ranges_key(job)}.json"
    store.verified_cache(ranges)
    options = dict(job.spec.int8_options)
    info = quantize(
        job.fp32,
        out,
        job.calibration,
        method=job.calib.method,
        flavour=artifact.flavour,
        cache_path=store.cache_path(ranges),
        check_feeds=job.check_feeds(),
        exclude_op_types=tuple(options.get("exclude_op_types", ())),
        exclude_nodes=tuple(options.get("exclude_nodes", ())) + artifact.float_nodes,
        weight_bits=artifact.weight_bits,
        cleaned=job.cleaned(),
    )
    if artifact.float_nodes:
        info["float_nodes_from_plan"] = list(artifact.float_nodes)
    store.record_cache(ranges)
    if artifact.flavour == "tensorrt":
        from calibration import tensorrt_rules

        violations = tensorrt_rules.check(out)
        info["tensorrt_conformance"] = tensorrt_rules.conformance(violations)
        if violations:
            log.warning(
                "%s (%s) %s breaks TensorRT's Q/DQ rules: %s (first: %s)",
                artifact.model,
                artifact.size,
                artifact.name,
                tensorrt_rules.row_text(info["tensorrt_conformance"]),
                violations[0],
            )
    recipe = weight_recipe(artifact.flavour, job.calib.int8_weights)
    return {**info, "weight_recipe": recipe.reason, "built_on_isa": isa()}
