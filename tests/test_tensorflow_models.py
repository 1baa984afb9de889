"""The TensorFlow exporter on every Keras catalogue model at tiny size.

Parity with Keras, input/output names and the symbolic batch dimension, byte-identical files for one seed
and different ones for another, and refusal of weights files that cannot be read or do not fit. Exports
are shared across tests (module fixture) because each one costs a TF trace and a tf2onnx conversion.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import exporters
from models import InputSpec, ModelSpec, all_models, get_model

pytestmark = [
    # Checked without importing: TensorFlow must not be imported while tests are collected (torch goes first:
    # tests/conftest.py).
    pytest.mark.skipif(
        importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
        reason="needs the export extras (tensorflow-cpu, tf2onnx)",
    ),
    # Keras's save_weights trips numpy 2's __array__(copy=) deprecation: library noise, not this code's.
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

# The exporter's own checks run on the models it was written against; every other TensorFlow model is
# exported, converted and run by its family's zoo test.
TF_MODELS = ["wide_deep", "bert", "bert_base"]
# Seed 0 twice (determinism), seed 1 once (the seed reaches the weights).
RUNS = {"first": 0, "again": 0, "other_seed": 1}


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, exporters.ExportReport]]:
    """model name -> run label (``RUNS``) -> ExportReport of a tiny export."""
    root = tmp_path_factory.mktemp("tf_exports")
    return {
        name: {
            label: exporters.export(get_model(name), "tiny", root / f"{name}_{label}.onnx", seed=seed)
            for label, seed in RUNS.items()
        }
        for name in TF_MODELS
    }


def test_catalogue_has_the_tensorflow_models() -> None:
    assert all(all_models()[name].framework == "tensorflow" for name in TF_MODELS)


@pytest.mark.parametrize("name", TF_MODELS)
def test_parity_within_tolerance(name: str, exported: dict) -> None:
    report = exported[name]["first"]
    assert report.parity_max_rel <= get_model(name).parity_rtol
    assert report.framework_version.startswith("tensorflow ") and "tf2onnx " in report.framework_version
    assert report.opset == exporters.OPSET


@pytest.mark.parametrize("name", TF_MODELS)
def test_names_and_symbolic_batch(name: str, exported: dict) -> None:
    spec = get_model(name)
    path = exported[name]["first"].path
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph

    def dims(value: onnx.ValueInfoProto) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    input_specs = spec.input_specs("tiny")
    assert [i.name for i in graph.input] == [s.name for s in input_specs]
    for value, input_spec in zip(graph.input, input_specs, strict=True):
        assert dims(value) == list(input_spec.shape)
        assert onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) == np.dtype(input_spec.dtype)
    assert [o.name for o in graph.output] == list(spec.outputs)
    assert all(dims(o)[0] == "batch" for o in graph.output)

    # The batch really is free: run a batch size the parity check did not use.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = exporters.PARITY_BATCH + 3
    results = session.run(list(spec.outputs), spec.make_feeds("tiny", batch, seed=7))
    cfg = spec.config("tiny")
    expected = {"wide_deep": (batch, 1)}.get(name, (batch, cfg.get("seq_len")))
    assert all(r.shape == expected for r in results)
    assert all(np.isfinite(r).all() for r in results)


@pytest.mark.parametrize("name", TF_MODELS)
def test_same_seed_gives_identical_bytes(name: str, exported: dict) -> None:
    runs = exported[name]
    assert sha256(runs["first"].path) == sha256(runs["again"].path)


@pytest.mark.parametrize("name", TF_MODELS)
def test_other_seed_gives_other_bytes(name: str, exported: dict) -> None:
    runs = exported[name]
    assert sha256(runs["first"].path) != sha256(runs["other_seed"].path)


@pytest.mark.parametrize("name", TF_MODELS)
def test_corrupt_weights_file_is_an_export_error(name: str, tmp_path: Path) -> None:
    weights = tmp_path / "corrupt.weights.h5"
    weights.write_bytes(b"not an HDF5 file")
    with pytest.raises(exporters.ExportError, match="cannot load weights") as info:
        exporters.export(get_model(name), "tiny", tmp_path / "out.onnx", weights=weights)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.onnx").exists()


def test_weights_of_another_shape_are_an_export_error(tmp_path: Path) -> None:
    spec = get_model("wide_deep")
    weights = tmp_path / "bigger_vocab.weights.h5"
    spec.build({**spec.config("tiny"), "vocab": 40}, 0).save_weights(str(weights))
    with pytest.raises(exporters.ExportError, match="cannot load weights") as info:
        exporters.export(spec, "tiny", tmp_path / "out.onnx", weights=weights)
    assert "\n" not in str(info.value)


def test_weights_file_replaces_seeded_weights(tmp_path: Path, exported: dict) -> None:
    # Seed-1 weights loaded into a seed-0 build must give exactly the seed-1 export.
    spec = get_model("wide_deep")
    weights = tmp_path / "seed1.weights.h5"
    spec.build(spec.config("tiny"), 1).save_weights(str(weights))
    report = exporters.export(spec, "tiny", tmp_path / "loaded.onnx", seed=0, weights=weights)
    assert sha256(report.path) == sha256(exported["wide_deep"]["other_seed"].path)


def _erfc_model(cfg: Any, seed: int) -> Any:
    import keras
    import tensorflow as tf

    x = keras.Input((4,), name="x")
    # tf.math.erfc has no tf2onnx mapping: the converter logs it and leaves a TF op in the graph.
    y = keras.layers.Lambda(lambda t: tf.math.erfc(t), name="erfc")(x)
    return keras.Model(x, y)


def test_unconvertible_op_is_an_export_error(tmp_path: Path) -> None:
    spec = ModelSpec(
        name="erfc_probe",
        category="test",
        framework="tensorflow",
        task="classification",
        paper_model=None,
        paper_batch=1,
        summary="a model tf2onnx cannot convert",
        configs={"full": {}, "tiny": {}},
        inputs=lambda cfg: [InputSpec("x", ("batch", 4), "float32")],
        outputs=("y",),
        build=_erfc_model,
    )
    with pytest.raises(exporters.ExportError, match="invalid graph"):
        exporters.export(spec, "tiny", tmp_path / "erfc.onnx")
