"""Bring your own model: a ModelSpec built from any ONNX file (``suite.py run --onnx FILE``).

This is not a catalogue model file (it has no ``SPECS``): ``describe_onnx`` reads the file's graph inputs and
outputs into a description, and ``build_spec`` makes the ModelSpec named ``byo/<stem>`` from it. Keeping the
description in the store (``<store>/byo/<stem>/spec.json``, beside the model's artifacts in
``<store>/byo/<stem>/<size>/``) is the store's business: ``onnx_models.byo`` registers it, and child processes
look such models up by name there (``onnx_models.model_spec``).

Inputs take their dtype and shape from the graph. Each input's batch axis is its first dimension when that is
dynamic; an input whose first dimension is fixed while other inputs' batch is dynamic has its batch on its one
dynamic dimension (a PyTorch RNN's ``h0`` of ``[layers, batch, hidden]``) or none at all (a fully fixed tensor,
shared by the batch); a 0-d input has none. ``--input-batch-axes state:1,sr:none`` says it where the graph
cannot. Inputs without a batch axis are fed the same array at every batch size and are held out of the batch
arithmetic. Any other dimension that is not a fixed number must be given with ``--input-shapes`` (whose value
at the batch axis is replaced by each batch size of the run). A graph whose batch axes are all fixed to N runs
at that batch size only.

What each input is fed: floats uniform in [0, 1), integers drawn from {0, 1} (valid as ids, masks and segment
ids of any vocabulary), booleans True, unless ``--input-values sr:16000`` fixes a value (required for a 0-d
input that chooses the branch of an If) or ``--input-range bytes:0..256`` gives the range (both ends included
for integers; [low, high) for floats). ``--feeds FILE.npz`` replaces the drawn inputs of timing, accuracy and
calibration with the file's; ``--calib-data`` replaces only calibration's (for a graph with a fixed batch N
they are read N samples at a time, so give a multiple of N). ``--state stateN:state`` runs the model as a
stream: each inference's output ``stateN`` is the next one's input ``state``.

The file is the FP32 reference as it is: it is copied into the store (with its sha256), not exported, so
there is no parity check. Its task is ``generic``: accuracy is the cosine similarity and max abs error of
every output against FP32.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models import InputSpec, ModelSpec

PREFIX = "byo/"
_FLOAT_RANGE = (0.0, 1.0)
_INT_RANGE = (0, 2)


class ByoError(ValueError):
    """An ONNX file, or input shapes for it, that the suite cannot run as given; the message says the fix."""


def parse_input_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """``x:1x3x224x224,mask:1x128`` -> {"x": (1, 3, 224, 224), "mask": (1, 128)}; bad text raises ByoError."""
    shapes: dict[str, tuple[int, ...]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, dims = part.strip().rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise ByoError(f"--input-shapes: cannot read {part.strip()!r}; write name:1x3x224x224,other:1x128")
        shapes[name] = shape
    return shapes


def _stem(path: Path) -> str:
    """The model-name part of a file's path: one safe directory name, never ``.``, ``..``, hidden or empty.

    Characters other than letters, digits, ``_``, ``.`` and ``-`` become ``_`` (so no path separator gets
    through), and so do leading dots: ``...onnx`` (stem ``..``) is ``__``, not the store's parent directory.
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
    stem = re.sub(r"^\.+", lambda dots: "_" * len(dots.group()), stem)
    return stem or "model"


def _fixed_dim(dim) -> int | None:
    """A dimension's size, or None where it is not a positive number: symbolic, unset, or written as -1 or 0
    (paddle2onnx writes a dynamic batch as -1)."""
    return dim.dim_value if dim.WhichOneof("value") == "dim_value" and dim.dim_value > 0 else None


def external_tensors(proto) -> list[str]:
    """Names of the tensors anywhere in ``proto`` whose bytes are in external files: initializers (sparse ones
    too) and Constant attributes, of the main graph and of every Loop, Scan and If body."""
    from onnx import AttributeProto, TensorProto

    from common.graphs import all_graphs

    found = []

    def check(tensor, name: str) -> None:
        if tensor.data_location == TensorProto.EXTERNAL:
            found.append(name or tensor.name)

    for graph in all_graphs(proto.graph):
        for tensor in graph.initializer:
            check(tensor, tensor.name)
        for sparse in graph.sparse_initializer:
            check(sparse.values, sparse.values.name)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    check(attr.t, f"{node.name or node.output[0]}.{attr.name}")
                elif attr.type == AttributeProto.SPARSE_TENSOR:
                    check(attr.sparse_tensor.values, f"{node.name or node.output[0]}.{attr.name}")
                elif attr.type == AttributeProto.TENSORS:
                    for tensor in attr.tensors:
                        check(tensor, f"{node.name or node.output[0]}.{attr.name}")
    return found


def _pairs(text: str | None, option: str, example: str) -> list[tuple[str, str]]:
    """``a:1,b:2`` -> [("a", "1"), ("b", "2")] (names may hold ``:``, the value is after the last); bad text raises
    ByoError naming ``option`` and how to write it."""
    pairs = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.strip().rpartition(":")
        if not sep or not name or not value.strip():
            raise ByoError(f"{option}: cannot read {part.strip()!r}; write {example}")
        pairs.append((name, value.strip()))
    return pairs


def parse_batch_axes(text: str | None) -> dict[str, int]:
    """``out:1,logits:0`` -> {"out": 1, "logits": 0}; bad text raises ByoError."""
    axes: dict[str, int] = {}
    for name, axis in _pairs(text, "--output-batch-axes", "output:1,other:0"):
        if not axis.isdigit():
            raise ByoError(f"--output-batch-axes: cannot read {name}:{axis}; write output:1,other:0")
        axes[name] = int(axis)
    return axes


def parse_input_batch_axes(text: str | None) -> dict[str, int | None]:
    """``state:1,sr:none`` -> {"state": 1, "sr": None} (none: the input has no batch axis); bad text raises
    ByoError."""
    axes: dict[str, int | None] = {}
    for name, axis in _pairs(text, "--input-batch-axes", "state:1,sr:none"):
        if not (axis.isdigit() or axis.lower() == "none"):
            raise ByoError(f"--input-batch-axes: cannot read {name}:{axis}; write state:1,sr:none")
        axes[name] = int(axis) if axis.isdigit() else None
    return axes


def parse_input_values(text: str | None) -> dict[str, float]:
    """``sr:16000,t:0.5`` -> {"sr": 16000.0, "t": 0.5}: each input holds that one value; bad text raises ByoError."""
    values: dict[str, float] = {}
    for name, value in _pairs(text, "--input-values", "sr:16000,threshold:0.5"):
        try:
            values[name] = float(value)
        except ValueError:
            values[name] = math.nan
        if not math.isfinite(values[name]):
            raise ByoError(f"--input-values: {name}:{value} is not a finite number; write sr:16000,threshold:0.5")
    return values


def parse_input_ranges(text: str | None) -> dict[str, tuple[float, float]]:
    """``bytes:0..256,x:-1..1`` -> {"bytes": (0.0, 256.0), "x": (-1.0, 1.0)}, the values an input is drawn
    from (both ends included for integers, [low, high) for floats); bad text raises ByoError."""
    ranges: dict[str, tuple[float, float]] = {}
    for name, text_range in _pairs(text, "--input-range", "bytes:0..256,x:-1..1"):
        low, sep, high = text_range.partition("..")
        try:
            bounds = (float(low), float(high))
        except ValueError:
            bounds = (math.nan, math.nan)
        if not sep or not all(math.isfinite(b) for b in bounds) or bounds[1] < bounds[0]:
            raise ByoError(f"--input-range: cannot read {name}:{text_range}; write bytes:0..256,x:-1..1 (low..high)")
        ranges[name] = bounds
    return ranges


def parse_state(text: str | None) -> dict[str, str]:
    """``stateN:state,hn:h0`` -> {"stateN": "state", "hn": "h0"}: output -> the input it is fed back to in a
    stream; bad text raises ByoError."""
    return dict(_pairs(text, "--state", "stateN:state (output:input, one pair per state)"))


def _reaches_control(graph, start: str) -> str | None:
    """The name of the first If or Loop whose condition (or trip count) depends on the value of tensor ``start``
    in ``graph``, or None. Shape and Size outputs depend on a tensor's shape, not its values: not followed."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen, todo = {start}, [start]
    while todo:
        for node in consumers.get(todo.pop(), ()):
            if node.op_type in ("Shape", "Size"):
                continue
            if node.op_type == "If" and node.input[0] in seen:
                return node.name or node.output[0]
            if node.op_type == "Loop" and seen & set(node.input[:2]):
                return node.name or node.output[0]
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    todo.append(out)
    return None


def _batch_axis(dims, given_axis, rank: int) -> int | None | str:
    """An input's batch axis from its declared dims alone: the given one, none for a 0-d input, 0 where the first
    dimension is dynamic (or the rank is known only from ``--input-shapes``); ``"later"`` where the first is fixed
    and the answer depends on the other inputs."""
    if given_axis is not _UNSET:
        return given_axis
    if rank == 0:
        return None
    if dims is None or _fixed_dim(dims[0]) is None:
        return 0
    return "later"


_UNSET = object()


def describe_onnx(
    path: Path,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    output_batch_axes: Mapping[str, int] | None = None,
    *,
    input_batch_axes: Mapping[str, int | None] | None = None,
    input_values: Mapping[str, float] | None = None,
    input_ranges: Mapping[str, tuple[float, float]] | None = None,
    state: Mapping[str, str] | None = None,
    feeds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON description of an ONNX file's spec: name, source, sha256, inputs (shape with the batch axis
    written ``batch`` where there is one, dtype, the range drawn from or the fixed value), outputs, fixed batch,
    the outputs' batch axes where ``output_batch_axes`` names any (outputs it leaves out have theirs at 0), the
    stream's ``state`` pairs (output -> input), ``feeds`` ({"path", "sha256"} of a feeds file, as given) and
    ``notices`` (what the suite chose that the user may want to change).

    Raises ByoError when the file cannot be read, keeps its weights in external files, has an input type the
    suite cannot feed, has dynamic dimensions (other than the batch) that ``input_shapes`` does not give, a
    value-less 0-d input that steers control flow, batch axes it cannot tell apart, or options naming inputs
    or outputs it does not have: one message names all of them, each with the option that resolves it.
    """
    import onnx
    from onnx import TensorProto, helper

    from common.hashing import sha256_file

    path = Path(path).resolve()
    if not path.is_file():
        raise ByoError(f"--onnx {path} does not exist")
    fix = "bring a model saved with onnx.save"
    # An empty file parses as an empty ModelProto, and so do some bytes that are not a model at all: without
    # these checks such a file was registered, copied into the store and failed in every cell.
    if path.stat().st_size == 0:
        raise ByoError(f"--onnx {path} is empty (0 bytes); {fix}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ByoError(f"--onnx {path} is not an ONNX model: {detail}; {fix}") from None
    if not proto.HasField("graph"):
        raise ByoError(f"--onnx {path} is not an ONNX model: it has no graph; {fix}")
    if not proto.graph.output:
        raise ByoError(f"--onnx {path} is not an ONNX model: its graph has no outputs; {fix}")
    if not proto.ir_version:
        raise ByoError(f"--onnx {path} is not an ONNX model: it has no IR version; {fix}")
    external = external_tensors(proto)
    if external:
        raise ByoError(
            f"{path} keeps {len(external)} tensors in external data files (first: {external[0]}); the suite takes "
            "one self-contained file: save it as one (onnx.save(onnx.load(path), new_path)) if it is under 2 GiB; "
            "larger models are not supported"
        )
    shapes = dict(input_shapes or {})
    given_axes = dict(input_batch_axes or {})
    values, ranges = dict(input_values or {}), dict(input_ranges or {})
    init_names = {t.name for t in proto.graph.initializer}
    graph_inputs = [vi for vi in proto.graph.input if vi.name not in init_names]
    input_names = [vi.name for vi in graph_inputs]
    for option, names in (
        ("--input-shapes", shapes),
        ("--input-batch-axes", given_axes),
        ("--input-values", values),
        ("--input-range", ranges),
    ):
        unknown = sorted(set(names) - set(input_names))
        if unknown:
            raise ByoError(
                f"{option} names inputs the model does not have: {', '.join(unknown)}; "
                f"its inputs are {', '.join(input_names)}"
            )
    both = sorted(set(values) & set(ranges))
    if both:
        raise ByoError(f"--input-values and --input-range both name {', '.join(both)}: give one of them")
    # First pass: what the declaration says about each input on its own.
    found = []
    problems, dynamic, templates = [], [], {}
    for vi in graph_inputs:
        tensor_type = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tensor_type.elem_type in (TensorProto.STRING, 0):
            problems.append(f"input {vi.name} is not a numeric tensor")
            continue
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        dims = list(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
        given = shapes.get(vi.name)
        if dims is None and given is None:
            dynamic.append(f"{vi.name} (rank unknown)")
            templates[vi.name] = "1x..."
            continue
        if dims is not None and given is not None and len(given) != len(dims):
            problems.append(f"--input-shapes gives {vi.name} rank {len(given)}, the model has rank {len(dims)}")
            continue
        rank = len(given) if given is not None else len(dims)
        axis = given_axes.get(vi.name, _UNSET)
        if axis is not _UNSET and axis is not None and axis >= rank:
            problems.append(f"--input-batch-axes gives {vi.name} axis {axis}, but it has {rank} dimensions")
            continue
        found.append((vi, dtype, dims, given, rank, _batch_axis(dims, axis, rank)))
    dynamic_batch = any(
        isinstance(axis, int) and (dims is None or _fixed_dim(dims[axis]) is None) for _, _, dims, _, _, axis in found
    )
    batch_names = {
        dims[axis].dim_param
        for _, _, dims, _, _, axis in found
        if isinstance(axis, int) and dims is not None and dims[axis].dim_param
    }
    inputs, batches, notices = [], {}, []
    for vi, dtype, dims, given, rank, axis in found:
        if axis == "later":
            open_dims = [i for i in range(rank) if _fixed_dim(dims[i]) is None]
            named = [i for i in open_dims if dims[i].dim_param and dims[i].dim_param in batch_names]
            if not dynamic_batch:
                axis = 0  # every batch axis is fixed: the graph runs at one batch size, held on axis 0
            elif len(open_dims) <= 1:
                axis = open_dims[0] if open_dims else None
            elif len(named) == 1:
                axis = named[0]
            else:
                problems.append(
                    f"input {vi.name} has dynamic dimensions {', '.join(map(str, open_dims))} and a fixed first one: "
                    f"say which holds the batch with --input-batch-axes {vi.name}:{open_dims[0]} "
                    f"(or {vi.name}:none if none does)"
                )
                continue
        shape: list[int | str] = []
        for i in range(rank):
            fixed = _fixed_dim(dims[i]) if dims is not None else None
            if i == axis:
                shape.append("batch")
                batches[vi.name] = fixed
            elif given is not None:
                if fixed is not None and given[i] != fixed:
                    problems.append(
                        f"--input-shapes gives {vi.name} dimension {i} = {given[i]}, the model fixes {fixed}"
                    )
                shape.append(given[i])
            elif fixed is not None:
                shape.append(fixed)
            else:
                symbol = dims[i].dim_param if dims is not None else ""
                dynamic.append(f"{vi.name} dimension {i}" + (f" ({symbol})" if symbol else ""))
                shape.append("?")
        if "?" in shape:
            templates[vi.name] = "x".join("1" if d == "batch" else str(d) for d in shape)
            continue
        integer = np.issubdtype(np.dtype(dtype), np.integer)
        entry: dict[str, Any] = {"name": vi.name, "shape": shape, "dtype": dtype}
        if vi.name in values:
            value = values[vi.name]
            if (integer or dtype == "bool") and value != int(value):
                problems.append(f"--input-values gives {vi.name} {value:g}, but it is {dtype}: give a whole number")
            entry["value"] = value
            low, high = (value, value + 1) if integer else (value, value + 1.0)
        elif vi.name in ranges:
            low, high = ranges[vi.name]
            if integer and (low != int(low) or high != int(high)):
                problems.append(f"--input-range gives {vi.name} {low:g}..{high:g}, but it is {dtype}: give integers")
            # Integers: both ends included, so bytes:0..256 draws 256 too. Floats: [low, high).
            high = high + 1 if integer else high
            if high <= low:
                problems.append(f"--input-range gives {vi.name} an empty range {low:g}..{high:g}; give low..high")
                continue
        elif vi.name in (state or {}).values():
            # A stream starts from a zero state, as a recurrent layer's does when none is given.
            entry["value"], low, high = 0.0, 0, 1
        else:
            low, high = _INT_RANGE if integer else _FLOAT_RANGE
            steered = _reaches_control(proto.graph, vi.name) if axis is None else None
            if steered:
                problems.append(
                    f"input {vi.name} ({'0-d ' if rank == 0 else ''}{dtype}) decides which branch of {steered} runs: "
                    f"give the value the model expects with --input-values {vi.name}:VALUE"
                )
            elif integer:
                notices.append(
                    f"integer input {vi.name} is drawn from {{0, 1}}; give the values real data holds with "
                    f"--input-range {vi.name}:LOW..HIGH (or --input-values, or --feeds)"
                )
        entry.update(low=low, high=high)
        inputs.append(entry)
    if dynamic:
        example = ",".join(f"{name}:{shape}" for name, shape in templates.items())
        problems.insert(
            0,
            f"dynamic dimensions without a size: {'; '.join(dynamic)}; give those inputs' full shapes with "
            f"--input-shapes {example} (each ? a size; the batch's is replaced by each batch size)",
        )
    if problems:
        raise ByoError(f"{path.name}: " + "; ".join(problems))
    outputs = [o.name for o in proto.graph.output]
    axes = dict(output_batch_axes or {})
    unknown = sorted(set(axes) - set(outputs))
    if unknown:
        raise ByoError(
            f"--output-batch-axes names outputs the model does not have: {', '.join(unknown)}; "
            f"its outputs are {', '.join(outputs)}"
        )
    if len(set(batches.values())) > 1:
        held = ", ".join(f"{name} {size or 'dynamic'}" for name, size in batches.items())
        raise ByoError(
            f"{path.name}: the inputs' batch dimensions disagree ({held}); where an input holds its batch on another "
            "axis than the first, or has none, say so with --input-batch-axes NAME:AXIS or NAME:none"
        )
    pairs = dict(state or {})
    _check_state(proto, pairs, {i["name"]: i for i in inputs})
    return {
        "name": PREFIX + _stem(path),
        "source": str(path),
        "sha256": sha256_file(path),
        "inputs": inputs,
        "outputs": outputs,
        "fixed_batch": next(iter(batches.values())) if batches else None,
        # Given ones only; the rest are found when the file is imported (onnx_models.artifacts.batch_axes).
        "output_batch_axes": {name: axes.get(name, 0) for name in outputs} if axes else None,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        **({"state": pairs} if pairs else {}),
        **({"feeds": dict(feeds)} if feeds else {}),
        **({"notices": notices} if notices else {}),
    }


def _check_state(proto, pairs: Mapping[str, str], inputs: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ByoError unless every ``--state`` pair joins an output to an input of the same element type, each
    input fed by one output and holding no fixed value."""
    from onnx import helper

    outputs = {o.name: o for o in proto.graph.output}
    for output, name in pairs.items():
        if output not in outputs:
            raise ByoError(
                f"--state {output}:{name}: the model has no output {output}; its outputs are {', '.join(outputs)}"
            )
        if name not in inputs:
            raise ByoError(
                f"--state {output}:{name}: the model has no input {name}; its inputs are {', '.join(inputs)}"
            )
        elem = outputs[output].type.tensor_type.elem_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name if elem else inputs[name]["dtype"]
        if dtype != inputs[name]["dtype"]:
            raise ByoError(
                f"--state {output}:{name}: output {output} is {dtype}, input {name} is "
                f"{inputs[name]['dtype']}; pair an output with the input it feeds back to"
            )
    twice = sorted({name for name in pairs.values() if list(pairs.values()).count(name) > 1})
    if twice:
        raise ByoError(f"--state feeds input {', '.join(twice)} from two outputs; name one output per input")


def _not_exportable(cfg: Mapping[str, Any], seed: int) -> None:
    raise RuntimeError("a brought-in ONNX model is copied into the store, never exported")


def build_spec(description: Mapping[str, Any]) -> ModelSpec:
    """The ModelSpec of a description written by ``describe_onnx``."""
    inputs = [
        InputSpec(i["name"], tuple(i["shape"]), i["dtype"], float(i["low"]), float(i["high"]), i.get("value"))
        for i in description["inputs"]
    ]
    fixed = description.get("fixed_batch")
    sampler = None
    if fixed:
        # A graph traced at batch N runs only N: every batch drawn (checks, calibration) has N samples.
        def sampler(cfg: Mapping[str, Any], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
            return {spec.name: spec.sample(rng, fixed) for spec in inputs}

    config = {
        "onnx": description["source"],
        "sha256": description["sha256"],
        "inputs": [s.describe() for s in inputs],
        "fixed_batch": fixed,
        "output_batch_axes": description.get("output_batch_axes"),
        "state": description.get("state"),
        "feeds": description.get("feeds"),
    }
    # What the inputs are fed is part of the model here (there is no sampler code to hash): a new range, value
    # or feeds file gives new FP32 references.
    fed = {k: description.get(k) for k in ("sha256", "inputs", "fixed_batch", "state", "feeds")}
    return ModelSpec(
        name=description["name"],
        category="byo",
        framework="onnx",
        task="generic",
        paper_model=None,
        paper_batch=fixed or 1,
        summary=f"ONNX file {description['source']}",
        configs={"full": config, "tiny": config},
        inputs=lambda cfg: list(inputs),
        outputs=tuple(description["outputs"]),
        build=_not_exportable,
        version=hashlib.sha256(json.dumps(fed, sort_keys=True).encode()).hexdigest()[:16],
        sampler=sampler,
        notes="brought in with --onnx: copied, not exported; accuracy is cosine similarity against FP32",
    )
