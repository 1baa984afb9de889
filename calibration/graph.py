"""Graph clean-up before conversion: constant folding and dead-node removal with onnxslim.

Quantizers and FP16 converters work on the graph they are given; raw exporter output carries shape
arithmetic, identity chains and foldable constants that make them insert needless casts or Q/DQ pairs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from common.errors import first_line
from common.graphs import subgraphs

log = logging.getLogger(__name__)


def clean(path: Path) -> tuple[onnx.ModelProto, str]:
    """Load ``path`` and return (the slimmed model, a note on what was done).

    If onnxslim fails on a graph, the unslimmed model is returned with the reason in the note, so a
    clean-up problem never blocks an artifact.
    """
    model = onnx.load(str(path))
    try:
        import onnxslim

        slimmed = onnxslim.slim(model)
    except Exception as exc:  # noqa: BLE001 - onnxslim raises many kinds; the graph stays usable without it
        log.warning("onnxslim failed on %s (%s); using the graph as exported", path, exc)
        return model, f"not slimmed: {first_line(exc, 200)}"
    note = f"onnxslim {onnxslim.__version__}: {len(model.graph.node)} -> {len(slimmed.graph.node)} nodes"
    renamed = unique_initializer_names(slimmed)
    if renamed:
        note += f"; {renamed} repeated initializer names in Loop/Scan/If bodies made unique"
    return slimmed, note


def _rename_references(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every use of ``old`` in ``graph`` (and in bodies nested in it that do not define ``old``) at ``new``."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for sub in subgraphs(node):
            defined = {vi.name for vi in sub.input} | {t.name for t in sub.initializer}
            if old not in defined and not any(old in n.output for n in sub.node):
                _rename_references(sub, old, new)


def unique_initializer_names(model: onnx.ModelProto) -> int:
    """Rename Loop / Scan / If body initializers whose names another graph of the model also uses; returns
    how many were renamed.

    onnxslim folds constants in every body separately and can give the results of two bodies (or of a body
    and the main graph) one name. ONNX Runtime accepts that, but the FP16 converter keys its initializer
    bookkeeping by name across all graphs and stops on the repeat (an assertion), so every name is made
    unique, with its uses inside the body renamed alike.
    """
    seen = {t.name for t in model.graph.initializer}
    taken: set[str] = set()

    def collect(graph: onnx.GraphProto) -> None:
        taken.update(t.name for t in graph.initializer)
        taken.update(vi.name for vi in graph.input)
        for node in graph.node:
            taken.update(node.output)
            for sub in subgraphs(node):
                collect(sub)

    collect(model.graph)
    renamed = 0

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal renamed
        for node in graph.node:
            for sub in subgraphs(node):
                for tensor in sub.initializer:
                    if tensor.name in seen:
                        k = 1
                        while f"{tensor.name}__{k}" in taken:
                            k += 1
                        new = f"{tensor.name}__{k}"
                        taken.add(new)
                        _rename_references(sub, tensor.name, new)
                        tensor.name = new
                        renamed += 1
                    seen.add(tensor.name)
                visit(sub)

    visit(model.graph)
    return renamed


def check_runs(
    model: onnx.ModelProto | Path, feeds: dict, shapes: list[tuple[int, ...]] | None = None, optimize: bool = True
) -> list:
    """Open ``model`` in ONNX Runtime CPU and run it once on ``feeds``; returns the outputs. ``optimize`` False
    runs every node as written (``common.ort_session.cpu_session``).

    Raises whatever ONNX Runtime raises, and ValueError if an output holds NaN or infinity, or (given
    ``shapes``, the FP32 model's output shapes on the same feeds, see ``output_shapes``) has another rank, so
    a broken conversion is caught when it is made, not when it is measured. Ranks, not sizes: a detector's
    number of boxes may differ between precisions.
    """
    import numpy as np

    from common.ort_session import cpu_session

    session = cpu_session(model, optimize=optimize)
    outputs = session.run(None, feeds)
    for meta, value in zip(session.get_outputs(), outputs, strict=False):
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(f"output {meta.name} has NaN or infinite values")
    for meta, value, shape in zip(session.get_outputs(), outputs, shapes or [], strict=False):
        # onnxslim folded ddddocr's computed Reshape target from its wrong declared output shape, and the
        # converted graphs returned (1, 262720) where the FP32 one returns (32, 1, 8210).
        if value.ndim != len(shape):
            raise ValueError(f"output {meta.name} has shape {value.shape}, the FP32 model's {tuple(shape)}")
    return outputs


def output_shapes(model: onnx.ModelProto | Path, feeds: dict) -> list[tuple[int, ...]]:
    """The shapes of ``model``'s outputs on ``feeds`` (ONNX Runtime CPU), for ``check_runs(..., shapes=)``."""
    return [value.shape for value in check_runs(model, feeds)]


def batchnorm_to_depthwise(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite each inference BatchNormalization on a 4-D tensor as a depthwise 1x1 Conv; returns (model, count).

    Exporters fold a BatchNormalization into the convolution before it, but not one that comes first
    (DenseNet's pre-activation BN-ReLU-Conv). Left as BatchNormalization it has no integer kernel, so the
    quantized graph drops back to float around it and spends its time in casts, layout transposes and
    float copies: DenseNet-121 INT8 was barely faster than FP32. The same affine map as a depthwise Conv
    (weight = gamma / sqrt(var + eps), bias = beta - mean * weight) quantizes like every other Conv, and
    the whole graph, the concatenations included, then runs in 8 bits. Mathematically identical in FP32.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in (*inferred.graph.value_info, *inferred.graph.input)
        if v.type.tensor_type.HasField("shape")
    }
    initializers = {i.name: i for i in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        params = node.input[1:5]
        if not (
            node.op_type == "BatchNormalization"
            and len(node.output) == 1
            and len(params) == 4
            and all(p in initializers for p in params)
            and ranks.get(node.input[0]) == 4
        ):
            nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(initializers[p]).astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        base = node.name or node.output[0]
        weight, bias = f"{base}/depthwise_weight", f"{base}/depthwise_bias"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(scale.astype(np.float32).reshape(-1, 1, 1, 1), weight),
                numpy_helper.from_array(shift.astype(np.float32), bias),
            ]
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [node.input[0], weight, bias],
                list(node.output),
                name=f"{base}/depthwise",
                group=len(scale),
                kernel_shape=[1, 1],
            )
        )
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {i for n in model.graph.node for i in n.input}
        kept = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return model, rewritten
