"""Brought-in ONNX files made into the graphs the suite's converters expect, without changing what they compute.

Real files come from many exporters and opsets. ``normalize`` applies, in order:

- declared output shapes that contradict what the file returns on a run are removed (ONNX Runtime's layout
  optimizer trusts them, and the converted graphs did not load);
- initializers that are also listed as graph inputs (IR < 4 exporters, PyTorch 1.2's CenterFace) stop being
  inputs: ONNX Runtime otherwise treats them as overridable, folds nothing through them, and the quantizer
  does not see them as weights;
- ``Constant`` nodes holding tensors (paddle2onnx writes every weight so) become initializers: ONNX Runtime's
  quantizer finds weights only among initializers;
- a default-domain opset older than the suite's (``exporters.OPSET``) is upgraded with ONNX's version
  converter: per-channel ``DequantizeLinear`` needs opset 13 for its ``axis``, and the quantizer writes it
  into whatever opset it is given, which then does not load.

A graph the converter cannot upgrade raises NormalizeError with the converter's reason in one line; the
caller keeps the file as it is for FP32 and reports FP16 and INT8 as unsupported with that reason.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from common.errors import first_line
from common.graphs import all_graphs

DEFAULT_DOMAINS = ("", "ai.onnx")


class NormalizeError(ValueError):
    """A graph that cannot be brought to the suite's opset; the message is the converter's reason."""


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain (``ai.onnx``) opset version, or None if it imports none."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Remove every graph input (of the main graph and of bodies) that an initializer of that graph also
    defines; returns how many. Needs IR 4 or later, which is set when inputs are removed."""
    removed = 0
    for graph in all_graphs(model.graph):
        names = {t.name for t in graph.initializer}
        kept = [vi for vi in graph.input if vi.name not in names]
        if graph is not model.graph:
            # A Loop or Scan body's inputs are positional: removing one would shift the rest.
            continue
        removed += len(graph.input) - len(kept)
        if len(kept) != len(graph.input):
            del graph.input[:]
            graph.input.extend(kept)
    if removed and model.ir_version < 4:
        model.ir_version = 4
    return removed


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn the main graph's ``Constant`` nodes with a tensor ``value`` into initializers; returns how many.

    Bodies keep theirs (a body initializer is the same thing to ONNX Runtime, and the quantizer does not
    quantize inside bodies). A Constant whose output is also a graph output stays a node, since an
    initializer cannot be an output in every IR version."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    nodes, moved = [], 0
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if (
            node.op_type == "Constant"
            and node.domain in DEFAULT_DOMAINS
            and value is not None
            and len(node.attribute) == 1
            and node.output[0] not in outputs
        ):
            tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            graph.initializer.append(tensor)
            moved += 1
        else:
            nodes.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(nodes)
    return moved


def _ops(model: onnx.ModelProto) -> set[str]:
    """The default-domain op types used anywhere in ``model``."""
    return {n.op_type for g in all_graphs(model.graph) for n in g.node if n.domain in DEFAULT_DOMAINS}


def upgrade_opset(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, int | None]:
    """``model`` at default-domain opset ``target`` or newer: (the model, the opset it had if it was upgraded,
    else None). Raises NormalizeError where ONNX's version converter cannot convert it."""
    from onnx import version_converter

    before = default_opset(model)
    if before is None or before >= target:
        return model, None
    # Ops removed from the standard (ImageScaler, Crop, DynamicSlice, ...) still run in ONNX Runtime at their
    # old opsets, but the converter has no schema for them and fails with an assertion that names none.
    gone = sorted(op for op in _ops(model) if not onnx.defs.has(op))
    if gone:
        raise NormalizeError(
            f"opset {before} cannot be upgraded to {target}: {', '.join(gone)} "
            f"{'is' if len(gone) == 1 else 'are'} no longer in the ONNX standard, so ONNX's version converter "
            "has no rule for it; re-export the model at opset 13 or later"
        )
    try:
        upgraded = version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError, ValueError, and C++ errors
        raise NormalizeError(
            f"ONNX's version converter cannot upgrade opset {before} to {target}: {first_line(exc)}"
        ) from None
    return upgraded, before


def clear_wrong_output_shapes(model: onnx.ModelProto, actual: dict[str, tuple[int, ...]]) -> list[str]:
    """Remove each graph output's declared shape that contradicts the shape the file really returns
    (``actual``: output name -> shape from a run); returns the names of the outputs changed.

    ddddocr's OCR declares (1, seqlen) and returns (seqlen, 1, 8210): ONNX Runtime's layout optimizer trusts
    the declaration, and the FP16 graph failed to load ("Permutation length 3 does not match rank 2")."""
    changed = []
    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        if output.name not in actual or not tensor_type.HasField("shape"):
            continue
        dims, shape = tensor_type.shape.dim, actual[output.name]
        wrong = len(dims) != len(shape) or any(
            d.WhichOneof("value") == "dim_value" and d.dim_value > 0 and d.dim_value != n
            for d, n in zip(dims, shape, strict=True)
        )
        if wrong:
            tensor_type.ClearField("shape")
            changed.append(output.name)
    return changed


def normalize(
    model: onnx.ModelProto, target_opset: int, actual_shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """The normalized model and one note per change made (empty when the file needed none); see the module.
    ``actual_shapes`` (output name -> shape the file returned on a run) lets declared shapes that contradict
    them be removed (``clear_wrong_output_shapes``)."""
    notes = []
    wrong = clear_wrong_output_shapes(model, actual_shapes or {})
    if wrong:
        notes.append(f"declared shapes of outputs {', '.join(wrong)} contradicted what the file returns: removed")
    removed = drop_initializer_inputs(model)
    if removed:
        notes.append(f"{removed} initializers listed as graph inputs are no longer inputs")
    moved = constants_to_initializers(model)
    if moved:
        notes.append(f"{moved} Constant nodes became initializers")
    model, before = upgrade_opset(model, target_opset)
    if before is not None:
        notes.append(f"opset {before} upgraded to {target_opset} with ONNX's version converter")
    return model, notes
