"""TensorFlow / Keras 3 -> ONNX with tf2onnx, through a traced ``tf.function`` (deterministic bytes per seed).

``tf2onnx.convert.from_keras`` does not handle Keras 3 models reliably; ``from_function`` on a function that
calls the model does. The function takes the weights as arguments (``stateless_call``) so that tf2onnx never
sees them as constants; they become initializers after conversion. The converted graph is then normalised:
inputs and outputs take the catalogue's names and the batch dimension is the symbolic ``batch``. Two exports
with the same seed are byte-identical, in one process or two: the process-wide counters Keras and tf2onnx
put into names are restarted for each export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# These must be set before TensorFlow is first imported: TF reads them once, at import. Level 3 hides the
# CPU-feature banner; the oneDNN banner is printed before TF's log setup and only disabling oneDNN hides it
# (which also gives the Keras reference run TF's plain kernels). Setdefault, so a user's own choice wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.numpy_helper  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
import tf2onnx.convert  # noqa: E402 - imported here, not lazily mid-conversion (see _COUNTER_START)
import tf2onnx.graph  # noqa: E402
import tf2onnx.optimizer  # noqa: E402
import tf2onnx.utils  # noqa: E402

from common.graphs import all_graphs  # noqa: E402
from exporters import ExportError, FrameworkExport  # noqa: E402
from models import ModelSpec  # noqa: E402

# tf2onnx logs every conversion step at INFO and warns about ops it constant-folds; only errors matter here.
tf2onnx.logging.set_level(logging.ERROR)
tf.get_logger().setLevel(logging.ERROR)

BATCH_DIM = "batch"
# tf2onnx's name counter once all of tf2onnx is imported (some modules draw a name at import time): every
# conversion restarts from here, so every export numbers its nodes as the first one in a process would.
_COUNTER_START = tf2onnx.utils.INTERNAL_NAME


def load_weights(model: Any, weights: Path) -> None:
    """Load a user's Keras weights file (``.weights.h5``, ``.keras`` or legacy ``.h5``) into ``model``.

    Keras 3 refuses a file whose layers, variable counts or shapes differ from the model's; that, an
    unreadable file and an unsupported suffix all raise ExportError with a one-line message.
    """
    try:
        with warnings.catch_warnings():
            # h5py's numpy-2 copy warnings and Keras's per-layer "skipping" notes precede the real error.
            warnings.simplefilter("ignore")
            model.load_weights(str(weights))
    except Exception as exc:  # noqa: BLE001 - any unreadable or mismatching file is the same user error
        raise ExportError(f"cannot load weights {weights} into {model.name}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s message on one line, cut at ``limit`` characters (Keras messages run to dozens of lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_onnx(
    spec: ModelSpec,
    cfg: Mapping[str, Any],
    out_path: Path,
    *,
    seed: int,
    weights: Path | None,
    opset: int,
    feeds: dict[str, np.ndarray],
) -> FrameworkExport:
    """Build the Keras model, convert it with a dynamic batch dimension, return Keras's outputs on ``feeds``.

    ``spec.build(cfg, seed)`` must return a Keras model taking its inputs in the order of
    ``spec.inputs(cfg)`` and returning its outputs in the order of ``spec.outputs``. The ONNX file at
    ``out_path`` has exactly those input and output names, each with first dimension ``batch``.
    """
    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"exporting Keras models needs KERAS_BACKEND=tensorflow, not {keras.backend.backend()}")
    # A fresh Keras session restarts the layer-name counters ("dense_3"), which end up in ONNX node names.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = spec.build(cfg, seed)
    if weights is not None:
        load_weights(model, weights)

    input_specs = spec.inputs(cfg)
    signature = [tf.TensorSpec((None, *s.shape[1:]), tf.as_dtype(s.dtype), name=s.name) for s in input_specs]
    # The weights enter the traced function as arguments (Keras's stateless_call) instead of as captured
    # variables, which tf2onnx would freeze into constants: every tf2onnx optimiser pass re-copies each
    # constant into a protobuf arena that is only freed at the end, so a frozen BERT-large would need tens of
    # GB (measured: 11 GB for a 230 MB model). As arguments they stay out of the converted graph and become
    # initializers afterwards. It also keeps the graph independent of the weight values (TF's constant
    # folding would otherwise delete "x + 0" for zero biases and merge equal tensors).
    trainable, non_trainable = list(model.trainable_variables), list(model.non_trainable_variables)
    variables = [*trainable, *non_trainable]
    weight_signature = [tf.TensorSpec(v.shape, v.dtype, name=f"weight_{i}") for i, v in enumerate(variables)]

    @tf.function(input_signature=[*signature, *weight_signature], autograph=False)
    def serve(*args: tf.Tensor) -> tuple[tf.Tensor, ...]:
        inputs, values = args[: len(signature)], args[len(signature) :]
        result, _ = model.stateless_call(
            list(values[: len(trainable)]), list(values[len(trainable) :]), _model_inputs(inputs), training=False
        )
        # A tuple, not a dict: tf.nest flattens dicts in key order, which would reorder the graph's outputs.
        return _as_tuple(result)

    try:
        with _tf2onnx_patched():
            proto, _ = tf2onnx.convert.from_function(
                serve, input_signature=[*signature, *weight_signature], opset=opset
            )
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises assorted types; the report wants one line
        raise ExportError(f"tf2onnx could not convert {spec.name}: {_one_line(exc)}") from exc
    _weights_to_initializers(proto, {s.name: v for s, v in zip(weight_signature, variables, strict=True)})

    if len(proto.graph.output) != len(spec.outputs):
        raise ExportError(
            f"{spec.name}: the model returns {len(proto.graph.output)} outputs, spec names {spec.outputs}"
        )
    _rename_tensors(proto, [i.name for i in proto.graph.input], [s.name for s in input_specs])
    _rename_tensors(proto, [o.name for o in proto.graph.output], list(spec.outputs))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    # tf2onnx writes "converted from __inference_serve_<uid>", the traced function's process-unique name.
    proto.graph.doc_string = f"{spec.name}, converted from Keras by tf2onnx"
    onnx.save(proto, str(out_path))
    # from_function converts with continue_on_error: an op tf2onnx cannot map (Erfc, say) is logged and left
    # in the graph as the TF op, so the file only fails later, in ONNX Runtime. Check it here instead. By
    # path, which also works for models past protobuf's 2 GiB limit.
    try:
        onnx.checker.check_model(str(out_path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"tf2onnx produced an invalid graph for {spec.name}: {_one_line(exc)}") from exc

    result = _call(model, [feeds[s.name] for s in input_specs])
    outputs = {name: np.asarray(keras.ops.convert_to_numpy(t)) for name, t in zip(spec.outputs, result, strict=True)}
    return FrameworkExport(f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}", outputs)


def _model_inputs(inputs: Any) -> Any:
    """Positional model inputs in the form a Keras functional model expects: one tensor, or a list."""
    # A one-input functional model wants the tensor itself (a one-element list draws a structure warning).
    return inputs[0] if len(inputs) == 1 else list(inputs)


def _as_tuple(result: Any) -> tuple[Any, ...]:
    """A model's output(s) as a tuple."""
    return tuple(result) if isinstance(result, (list, tuple)) else (result,)


def _call(model: Any, inputs: Any) -> tuple[Any, ...]:
    """Run ``model`` in inference mode on positional ``inputs``; always returns a tuple of outputs."""
    return _as_tuple(model(_model_inputs(inputs), training=False))


def _weights_to_initializers(proto: onnx.ModelProto, weights: Mapping[str, Any]) -> None:
    """Turn the graph inputs named in ``weights`` (input name -> Keras variable) into initializers.

    Each initializer takes its variable's path ("layer_0/query/kernel") as its name when the paths are unique.
    """
    graph = proto.graph
    used = {i.name for i in graph.input} & set(weights)
    kept = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    # In variable order, so the file does not depend on the order tf2onnx lists its inputs in.
    for name, variable in weights.items():
        if name in used:
            graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(variable.numpy()), name))
    paths = {name: variable.path for name, variable in weights.items() if name in used}
    # Readable names are a nicety: keep "weight_<i>" if paths repeat or collide with a tensor of the graph.
    if len(set(paths.values())) == len(paths) and not set(paths.values()) & _tensor_names(proto):
        _rename_tensors(proto, list(paths), list(paths.values()))


@contextlib.contextmanager
def _tf2onnx_patched() -> Iterator[None]:
    """Run one tf2onnx conversion deterministically and without its GlobalPoolOptimizer; restore it after.

    Determinism. tf2onnx numbers the nodes it inserts from a process-wide counter ("const_fold_opt__21"),
    and ``Graph.extract_sub_graph_nodes`` returns the graph's nodes as ``list(set(...))``, an order that
    follows object addresses. The optimisers then keep the first of two equal constants and hand out counter
    values in that order, so names, node order and bytes change from run to run even in one process. The
    counter is restarted and the node list is sorted by name.

    GlobalPoolOptimizer rewrites a ReduceMean over the last axis of a rank-3 tensor as GlobalAveragePool:
    the same arithmetic, but it hides every layer norm (ReduceMean / Sub / Pow / ReduceMean / ...) from
    ONNX Runtime's LayerNormalization fusion. from_function takes no optimizer list, so the registry is
    edited.

    All three are tf2onnx internals (checked against 1.17); if one is gone the conversion still runs and
    the determinism test says whether it still holds.
    """
    graph_class = tf2onnx.graph.Graph
    extract = graph_class.extract_sub_graph_nodes
    registry = getattr(tf2onnx.optimizer, "_optimizers", {})
    saved = list(registry.items())

    def extract_sorted(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return sorted(extract(self, *args, **kwargs), key=lambda node: node.name)

    tf2onnx.utils.INTERNAL_NAME = _COUNTER_START
    registry.pop("global_pool_optimizer", None)
    graph_class.extract_sub_graph_nodes = extract_sorted
    try:
        yield
    finally:
        graph_class.extract_sub_graph_nodes = extract
        registry.clear()
        registry.update(saved)


def _tensor_names(proto: onnx.ModelProto) -> set[str]:
    """Every tensor name the model uses: node inputs and outputs, initializers, graph inputs and outputs."""
    names: set[str] = set()
    for graph in all_graphs(proto.graph):
        names.update(i.name for i in graph.initializer)
        names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
    return names


def _rename_tensors(proto: onnx.ModelProto, old: list[str], new: list[str]) -> None:
    """Rename tensors ``old[i]`` -> ``new[i]`` wherever they are produced, consumed or declared."""
    mapping = {o: n for o, n in zip(old, new, strict=True) if o != n}
    if not mapping:
        return
    clash = (set(mapping.values()) & _tensor_names(proto)) - set(mapping)
    if clash:
        raise ExportError(f"cannot rename graph tensors to {sorted(clash)}: the converted graph already uses them")
    for graph in all_graphs(proto.graph):
        for init in graph.initializer:
            init.name = mapping.get(init.name, init.name)
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.name = mapping.get(value.name, value.name)
        for node in graph.node:
            node.input[:] = [mapping.get(n, n) for n in node.input]
            node.output[:] = [mapping.get(n, n) for n in node.output]
