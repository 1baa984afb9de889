"""The Keras vision models of the zoo (CPN, SegLink, CRNN): a tiny suite run, output layouts, CRNN's frame count,
and the hand-written bidirectional LSTM against Keras's own."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import onnxruntime as ort
import pytest

from common.precisions import run_by
from models import get_model
from tests.zoo import import_torch_first, run_tiny

pytestmark = [
    # Checked without importing: TensorFlow must not be imported while tests are collected.
    pytest.mark.skipif(
        importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
        reason="needs the export extras (tensorflow-cpu, tf2onnx)",
    ),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

MODELS = ("cpn", "seglink", "crnn")


@pytest.fixture(scope="module", autouse=True)
def frameworks_in_safe_order() -> None:
    """Torch before TensorFlow (see tests/zoo.py)."""
    import_torch_first()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The result rows of one tiny run of the three models (fp32, fp16, int8 on ort-cpu)."""
    status, rows = run_tiny(MODELS, tmp_path_factory.mktemp("tf_vision_run"))
    assert status == 0
    return rows


def _fp32_session(name: str) -> ort.InferenceSession:
    """ONNX Runtime session on the tiny FP32 artifact (tests that call this take ``tiny_run``, which stored it)."""
    from onnx_models.artifacts import ensure_fp32

    path = ensure_fp32(get_model(name), "tiny")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _keras():
    """Keras, imported after exporters.tensorflow has set TensorFlow's environment (log level, oneDNN off)."""
    importlib.import_module("exporters.tensorflow")
    return importlib.import_module("keras")


def _keras_output_shapes(name: str, **overrides: object) -> list[tuple[int, ...]]:
    """Shapes of the Keras model's outputs on one zero batch, built from the tiny config with ``overrides``."""
    _keras()
    spec = get_model(name)
    cfg = {**spec.config("tiny"), **overrides}
    model = spec.build(cfg, 0)
    feeds = [np.zeros(s.concrete_shape(1), dtype=s.dtype) for s in spec.inputs(cfg)]
    outputs = model(feeds[0] if len(feeds) == 1 else feeds, training=False)
    return [tuple(o.shape) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def test_tiny_run_is_ok_with_accuracy_and_flops(tiny_run: list[dict]) -> None:
    # Every precision the run's engines run (the default engines: those usable here).
    precisions = run_by({r["engine"] for r in tiny_run})
    assert {(r["model"], r["precision"]) for r in tiny_run} == {(m, p) for m in MODELS for p in precisions}
    for row in tiny_run:
        assert row["status"] == "ok", row.get("reason")
        assert row["accuracy_value"] is not None and 0.0 <= row["accuracy_value"] <= 1.0
        assert row["flops_per_batch"] > 0
        if row["precision"] == "fp32":
            assert row["accuracy_value"] == 1.0


def test_cpn_heatmaps_are_a_quarter_of_the_input(tiny_run: list[dict]) -> None:
    session = _fp32_session("cpn")
    spec = get_model("cpn")
    heatmaps, global_heatmaps = session.run(None, spec.make_feeds("tiny", 3, seed=5))
    height, width = spec.config("tiny")["height"], spec.config("tiny")["width"]
    assert heatmaps.shape == (3, 17, height // 4, width // 4)
    assert global_heatmaps.shape == (3, 4, 17, height // 4, width // 4)
    # Another input size, wider than tall, through the Keras model.
    assert _keras_output_shapes("cpn", height=64, width=128) == [(1, 17, 16, 32), (1, 4, 17, 16, 32)]


@pytest.mark.parametrize(("width", "frames"), [(100, 26), (48, 13)])
def test_crnn_frames_follow_the_conv_stack_width_reduction(width: int, frames: int) -> None:
    from models import crnn

    # 100 -> 50 -> 25 -> 26 -> 27 -> 26 frames is the paper's 32x100 case (Shi et al. 2015, Table 4).
    assert crnn.frames(width) == frames
    assert _keras_output_shapes("crnn", width=width) == [(1, frames, crnn.CLASSES)]


def test_crnn_onnx_logits_have_static_frames_and_37_classes(tiny_run: list[dict]) -> None:
    session = _fp32_session("crnn")
    assert [d for d in session.get_outputs()[0].shape] == ["batch", 13, 37]
    (logits,) = session.run(None, get_model("crnn").make_feeds("tiny", 2, seed=5))
    assert logits.shape == (2, 13, 37) and np.isfinite(logits).all()


def test_seglink_outputs_concatenate_six_layers(tiny_run: list[dict]) -> None:
    from models import seglink

    # The paper's 512x512 layers: conv4_3 64, fc7 32, conv8_2 16, conv9_2 8, conv10_2 4, conv11 2 cells square.
    assert seglink.feature_sizes(512) == [64, 32, 16, 8, 4, 2]
    sizes = seglink.feature_sizes(get_model("seglink").config("tiny")["resolution"])
    cells = sum(s * s for s in sizes)
    cross = cells - sizes[0] ** 2
    outputs = _fp32_session("seglink").run(None, get_model("seglink").make_feeds("tiny", 2, seed=5))
    assert [o.shape for o in outputs] == [(2, cells, 2), (2, cells, 5), (2, cells, 16), (2, cross, 8)]


def test_bilstm_equals_keras_bidirectional_lstm() -> None:
    from models import crnn

    keras = _keras()
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(3).normal(size=(2, 7, 5)).astype("float32")
    ours = crnn._layers()["BiLSTM"](4)
    reference = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), merge_mode="concat")
    ours.build(x.shape)
    reference.build(x.shape)
    # Random biases too (Keras starts at zero but for the forget gate), so every term of the cell is checked.
    for layer, direction in ((reference.forward_layer, "forward"), (reference.backward_layer, "backward")):
        values = [np.asarray(v) for v in layer.cell.weights]
        values[2] = np.random.default_rng(4).normal(size=values[2].shape).astype("float32")
        layer.cell.set_weights(values)
        for variable, value in zip(ours.cells[direction], values, strict=True):
            variable.assign(value)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(reference(x)), rtol=1e-5, atol=1e-6)
