"""Bring your own model: a ModelSpec built from any ONNX file (``suite.py run --onnx FILE``).

This is not a catalogue model file (it has no ``SPECS``): ``describe_onnx`` reads the file's graph inputs and
outputs into a description, and ``build_spec`` makes the ModelSpec named ``byo/<stem>`` from it. Keeping the
description in the store (``<store>/byo/<stem>/spec.json``, beside the model's artifacts in
``<store>/byo/<stem>/<size>/``) is the store's business: ``onnx_models.byo`` registers it, and child processes
look such models up by name there (``onnx_models.model_spec``).

Inputs take their dtype from the graph and their shape from the graph, with the first dimension as the
batch; any other dimension that is not a fixed number must be given with ``--input-shapes`` (whose first
value, the batch, is replaced by each batch size of the run). A graph whose first dimension is a fixed
number runs at that batch size only. Synthetic inputs are valid whatever the model means by them: floats
uniform in [0, 1), integers drawn from {0, 1} (valid as ids, masks and segment ids of any vocabulary),
booleans True. ``--calib-data`` replaces the synthetic calibration inputs with real ones (for a graph with a
fixed batch N they are read N samples at a time, so give a multiple of N).

The file is the FP32 reference as it is: it is copied into the store (with its sha256), not exported, so
there is no parity check. Its task is ``generic``: accuracy is the cosine similarity and max abs error of
every output against FP32.
"""

from __future__ import annotations

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


def parse_batch_axes(text: str | None) -> dict[str, int]:
    """``out:1,logits:0`` -> {"out": 1, "logits": 0}; bad text raises ByoError."""
    axes: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, axis = part.strip().rpartition(":")
        if not sep or not name or not axis.strip().isdigit():
            raise ByoError(f"--output-batch-axes: cannot read {part.strip()!r}; write output:1,other:0")
        axes[name] = int(axis)
    return axes


def describe_onnx(
    path: Path,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    output_batch_axes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The JSON description of an ONNX file's spec: name, source, sha256, inputs, outputs, fixed batch, and the
    outputs' batch axes where ``output_batch_axes`` names any (outputs it leaves out have theirs at 0).

    Raises ByoError when the file cannot be read, keeps its weights in external files, has an input type the
    suite cannot feed, or has dynamic dimensions (other than the batch) that ``input_shapes`` does not give:
    one message names all of them.
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
    init_names = {t.name for t in proto.graph.initializer}
    graph_inputs = [vi for vi in proto.graph.input if vi.name not in init_names]
    unknown = sorted(set(shapes) - {vi.name for vi in graph_inputs})
    if unknown:
        raise ByoError(
            f"--input-shapes names inputs the model does not have: {', '.join(unknown)}; "
            f"its inputs are {', '.join(vi.name for vi in graph_inputs)}"
        )
    inputs, dynamic, problems, batches = [], [], [], set()
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
            continue
        if dims is not None and given is not None and len(given) != len(dims):
            problems.append(f"--input-shapes gives {vi.name} rank {len(given)}, the model has rank {len(dims)}")
            continue
        rank = len(given) if given is not None else len(dims)
        if rank == 0:
            problems.append(f"input {vi.name} is a scalar; only inputs with a batch dimension can be run")
            continue
        shape: list[int | str] = ["batch"]
        batches.add(_fixed_dim(dims[0]) if dims is not None else None)
        for i in range(1, rank):
            fixed = _fixed_dim(dims[i]) if dims is not None else None
            if given is not None:
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
        low, high = _INT_RANGE if np.issubdtype(np.dtype(dtype), np.integer) else _FLOAT_RANGE
        inputs.append({"name": vi.name, "shape": shape, "dtype": dtype, "low": low, "high": high})
    if dynamic:
        example = ",".join(f"{vi.name}:1x..." for vi in graph_inputs)
        raise ByoError(
            f"{path.name}: dynamic dimensions without a size: {'; '.join(dynamic)}; "
            f"give every input's full shape with --input-shapes {example}"
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
    if len(batches) > 1:
        raise ByoError(
            f"{path.name}: the inputs' first dimensions disagree ({sorted(batches, key=str)}); "
            "every input must have the same batch dimension, dynamic or fixed"
        )
    return {
        "name": PREFIX + _stem(path),
        "source": str(path),
        "sha256": sha256_file(path),
        "inputs": inputs,
        "outputs": outputs,
        "fixed_batch": next(iter(batches)) if batches else None,
        # Given ones only; the rest are found when the file is imported (onnx_models.artifacts.batch_axes).
        "output_batch_axes": {name: axes.get(name, 0) for name in outputs} if axes else None,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
    }


def _not_exportable(cfg: Mapping[str, Any], seed: int) -> None:
    raise RuntimeError("a brought-in ONNX model is copied into the store, never exported")


def build_spec(description: Mapping[str, Any]) -> ModelSpec:
    """The ModelSpec of a description written by ``describe_onnx``."""
    inputs = [
        InputSpec(i["name"], tuple(i["shape"]), i["dtype"], float(i["low"]), float(i["high"]))
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
    }
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
        version=description["sha256"][:16],
        sampler=sampler,
        notes="brought in with --onnx: copied, not exported; accuracy is cosine similarity against FP32",
    )
