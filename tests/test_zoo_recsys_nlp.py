"""DIN, DIEN, GCN, NCF and NMT at tiny size: one run through export, FP16, INT8 and timing on ort-cpu, FLOP counts
(Loop bodies times trip counts) against hand counts, and the tricky pieces against NumPy references: the
(AU)GRU step and masked sequence, the GCN's edge aggregation against a dense adjacency, and the samplers."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import onnxruntime as ort
import pytest

from analysis.flops import count
from models import get_model
from onnx_models.store import ModelStore
from tests.zoo import CPU_INT8, run_tiny

MODELS = ("din", "dien", "gcn", "ncf", "nmt")
PRECISIONS = ("fp32", "fp16", "int8")
METRICS = {
    "din": "max_abs_error",
    "dien": "max_abs_error",
    "ncf": "max_abs_error",
    "gcn": "top1_agreement",
    "nmt": "token_agreement",
}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="needs the export extras (tensorflow-cpu, tf2onnx)",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[dict]]:
    """One run of the five tiny models at batch 2 in all three precisions; (exit status, result rows)."""
    status, rows = run_tiny(MODELS, tmp_path_factory.mktemp("recsys_nlp_run"))
    return status, rows


def test_every_cell_runs_with_accuracy_and_flops(tiny_run: tuple[int, list[dict]]) -> None:
    status, rows = tiny_run
    assert status == 0
    assert sorted((r["model"], r["precision"]) for r in rows) == sorted((m, p) for m in MODELS for p in PRECISIONS)
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert row["accuracy_metric"] == METRICS[row["model"]]
        assert row["accuracy_value"] is not None and row["accuracy_samples"] == 4
        assert row["flops_per_batch"] > 0 and row["iterations"] >= 2
        if row["precision"] == "fp32":
            # FP32 against the FP32 reference: exact, so the accuracy path compares like with like.
            assert row["accuracy_max_abs_error"] == 0.0


@pytest.mark.parametrize("name", ["din", "dien"])
def test_int8_keeps_the_logits_layer_float(name: str, tiny_run: tuple[int, list[dict]]) -> None:
    """The excluded node exists under its name (a renamed layer would silently quantize it) and stays float."""
    import onnx

    (node_name,) = get_model(name).int8_options["exclude_nodes"]
    store = ModelStore(name, "tiny")
    assert store.entry(CPU_INT8)["excluded_nodes"] == [node_name]
    graph = onnx.load(str(store.verified_path(CPU_INT8))).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    (node,) = [n for n in graph.node if n.name == node_name]
    assert node.op_type == "MatMul" and not set(node.input) & dequantized
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)  # the rest is quantized


def test_int8_quantizes_the_large_matmuls_inside_loops(tiny_run) -> None:
    """NMT's recurrent and projection weights run as int8 DynamicQuantizeMatMul (the threshold is lowered for
    the tiny widths); its attention over the encoder outputs (an activation, not a weight) stays float."""
    import onnx

    from calibration.loop_int8 import quantize_loop_matmuls

    store = ModelStore("nmt", "tiny")
    assert store.entry(CPU_INT8)["loop_matmuls_dynamic_int8"] == 0  # tiny weights are under the threshold
    model = onnx.load(str(store.verified_path(CPU_INT8)))
    assert quantize_loop_matmuls(model, min_weight_elements=0) == 15
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (tokens,) = session.run(None, get_model("nmt").make_feeds("tiny", 2, 0))
    assert tokens.shape[0] == 2
    # DIEN's GRU weights (36 x 108 at full size) are under the threshold at either size: they stay float.
    assert ModelStore("dien", "tiny").entry(CPU_INT8)["loop_matmuls_dynamic_int8"] == 0


# --- FLOPs: hand counts of the multiply-accumulates, 2 FLOPs each --------------------------------------------


def _din_macs(cfg: dict, batch: int) -> int:
    width, length = 2 * cfg["embedding_dim"], cfg["history"]
    (a1, a2), (m1, m2) = cfg["attention"], cfg["mlp"]
    attention = batch * length * (4 * width * a1 + a1 * a2 + a2)
    pooling = batch * length * width
    mlp = batch * (4 * width * m1 + m1 * m2 + m2 * 2)
    return 2 * (attention + pooling + mlp)


def _dien_macs(cfg: dict, batch: int) -> int:
    width, hidden, length = 2 * cfg["embedding_dim"], cfg["hidden"], cfg["history"]
    (a1, a2), (m1, m2) = cfg["attention"], cfg["mlp"]

    def gru(inputs: int) -> int:
        # input projection of every step (before the loop) + the recurrent gate and candidate products
        return batch * length * (inputs * 3 * hidden + hidden * 2 * hidden + hidden * hidden)

    query = batch * width * hidden
    attention = batch * length * (4 * hidden * a1 + a1 * a2 + a2)
    mlp = batch * ((3 * width + hidden) * m1 + m1 * m2 + m2 * 2)
    return 2 * (gru(width) + gru(hidden) + query + attention + mlp)


def _gcn_macs(cfg: dict, batch: int) -> int:
    return 2 * batch * cfg["nodes"] * (cfg["features"] * cfg["hidden"] + cfg["hidden"] * cfg["classes"])


def _ncf_macs(cfg: dict, batch: int) -> int:
    layers = cfg["layers"]
    mlp = sum(a * b for a, b in zip(layers[:-1], layers[1:], strict=True))
    return 2 * batch * (mlp + cfg["factors"] + layers[-1])


def _nmt_macs(cfg: dict, batch: int) -> int:
    units, source, steps = cfg["units"], cfg["source_len"], cfg["max_decode"]

    def lstm(inputs: int) -> int:
        return inputs * 4 * units + units * 4 * units

    # bidirectional layer, the first unidirectional layer (input 2H), the others, Bahdanau's memory layer
    encoder = batch * source * (2 * lstm(units) + lstm(2 * units) + (cfg["layers"] - 2) * lstm(units) + units**2)
    # every decoder layer reads [input, attention] (2H); query layer, context, output projection
    step = batch * (cfg["layers"] * lstm(2 * units) + units**2 + source * units + units * cfg["vocab"])
    return 2 * (encoder + steps * step)


HAND_COUNTS = {"din": _din_macs, "dien": _dien_macs, "gcn": _gcn_macs, "ncf": _ncf_macs, "nmt": _nmt_macs}


@pytest.mark.parametrize("name", MODELS)
def test_mac_flops_match_hand_count(name: str, tiny_run: tuple[int, list[dict]]) -> None:
    """The counter multiplies each Loop body by its constant trip count (DIEN's GRU and AUGRU, NMT's encoder
    layers and decode loop): its MAC FLOPs equal the hand count exactly, with no shape left unknown."""
    spec = get_model(name)
    batch = 3
    cost = count(ModelStore(name, "tiny").verified_path("fp32"), batch)
    assert cost.unknown_shapes == []
    assert cost.mac_flops == HAND_COUNTS[name](dict(spec.config("tiny")), batch)


def test_gcn_aggregation_is_counted_per_edge(tiny_run: tuple[int, list[dict]]) -> None:
    """The segment sums cost one running-sum addition per edge (self loops included) and feature: E x width."""
    cfg = get_model("gcn").config("tiny")
    cost = count(ModelStore("gcn", "tiny").verified_path("fp32"), 2)
    links = 2 * (cfg["edges"] + cfg["nodes"])
    assert cost.by_op["CumSum"] == links * (cfg["hidden"] + cfg["classes"])


# --- DIEN's GRU and AUGRU against NumPy -----------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _reference_step(layer, x: np.ndarray, h: np.ndarray, score: np.ndarray | None) -> np.ndarray:
    """The DIEN code's GRUCell / VecAttGRUCell step in NumPy, from the layer's weights."""
    units = layer.units
    w, b = np.asarray(layer.input_kernel), np.asarray(layer.bias)
    u_gates, u_candidate = np.asarray(layer.gate_kernel), np.asarray(layer.candidate_kernel)
    gates = _sigmoid(x @ w[:, : 2 * units] + b[: 2 * units] + h @ u_gates)
    r, u = gates[:, :units], gates[:, units:]
    c = np.tanh(x @ w[:, 2 * units :] + b[2 * units :] + (r * h) @ u_candidate)
    if score is not None:
        u = (1.0 - score) * u
    return u * h + (1.0 - u) * c


def _interest_gru(attentional: bool, return_sequences: bool, inputs: int = 5, units: int = 4, length: int = 6):
    from models.dien import dien_layers

    layer = dien_layers()["InterestGRU"](
        units, attentional=attentional, return_sequences=return_sequences, time_major=False
    )
    shapes = [(None, length, inputs), (None, length)] + ([(None, length)] if attentional else [])
    layer.build(shapes)
    # Random recurrent weights and biases (not the initial ones, whose biases are constants).
    rng = np.random.default_rng(3)
    layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("attentional", [False, True])
def test_gru_step_matches_numpy(attentional: bool) -> None:
    import tensorflow as tf

    layer = _interest_gru(attentional, return_sequences=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5)).astype("float32")
    h = rng.normal(size=(3, 4)).astype("float32")
    score = rng.uniform(size=(3, 1)).astype("float32") if attentional else None
    got = layer.step(
        layer.project_inputs(tf.constant(x)), tf.constant(h), None if score is None else tf.constant(score)
    )
    np.testing.assert_allclose(np.asarray(got), _reference_step(layer, x, h, score), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attentional", [False, True])
def test_gru_sequence_stops_at_each_length(attentional: bool) -> None:
    """The whole layer against a NumPy loop: state frozen and output 0 past each row's length, as dynamic_rnn."""
    length = 6
    layer = _interest_gru(attentional, return_sequences=True, length=length)
    rng = np.random.default_rng(1)
    lengths = np.array([1, 4, 6])
    x = rng.normal(size=(3, length, 5)).astype("float32")
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype("float32")
    scores = rng.uniform(size=(3, length)).astype("float32")
    inputs = [x, mask, scores] if attentional else [x, mask]
    outputs, final = (np.asarray(v) for v in layer(inputs))

    h = np.zeros((3, 4), "float32")
    expected = np.zeros((length, 3, 4), "float32")
    for t in range(length):
        new = _reference_step(layer, x[:, t], h, scores[:, t : t + 1] if attentional else None)
        keep = mask[:, t : t + 1]
        h = keep * new + (1 - keep) * h
        expected[t] = keep * new
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final, h, rtol=1e-5, atol=1e-6)
    assert np.all(outputs[1:, 0] == 0.0)  # the length-1 row has no outputs past its first step


# --- GCN: sparse edge aggregation against a dense adjacency -----------------------------------------------------


def test_gcn_matches_dense_adjacency() -> None:
    """Two graphs in one batch (so node ids are offset per graph) against D^-1/2 (A + I) D^-1/2 H W, dense."""
    import keras

    from models.gcn import build, sampler

    cfg = {"nodes": 7, "features": 5, "edges": 12, "hidden": 3, "classes": 2}
    keras.utils.set_random_seed(0)
    model = build(cfg, seed=0)
    feeds = sampler(cfg, 2, np.random.default_rng(5))
    got = np.asarray(model([feeds["features"], feeds["edges"]]))

    w1, w2 = (np.asarray(v) for v in model.weights)
    for b in range(2):
        adjacency = np.eye(cfg["nodes"])
        adjacency[feeds["edges"][b, 1], feeds["edges"][b, 0]] = 1.0
        scale = 1.0 / np.sqrt(adjacency.sum(axis=1))
        propagate = scale[:, None] * adjacency * scale[None, :]
        hidden = np.maximum(propagate @ feeds["features"][b] @ w1, 0.0)
        np.testing.assert_allclose(got[b], propagate @ hidden @ w2, rtol=1e-5, atol=1e-6)


# --- Samplers ------------------------------------------------------------------------------------------------


def test_history_sampler_pads_past_each_length() -> None:
    from models._ctr import item_categories

    cfg = get_model("dien").config("full")
    feeds = get_model("dien").make_feeds("full", 64, 0)
    lengths = feeds["history_length"]
    assert lengths.min() >= 1 and lengths.max() <= cfg["history"]
    real = np.arange(cfg["history"])[None, :] < lengths[:, None]
    assert np.all(feeds["history_items"][~real] == 0) and np.all(feeds["history_categories"][~real] == 0)
    categories = item_categories(cfg["items"], cfg["categories"])
    assert np.array_equal(feeds["history_categories"][real], categories[feeds["history_items"][real]])
    assert np.array_equal(feeds["target_category"], categories[feeds["target_item"]])


def test_gcn_sampler_makes_a_simple_undirected_graph() -> None:
    cfg = get_model("gcn").config("full")
    edges = get_model("gcn").make_feeds("full", 1, 0)["edges"][0]
    assert edges.shape == (2, cfg["edges"]) and edges.min() >= 0 and edges.max() < cfg["nodes"]
    pairs = set(zip(edges[0].tolist(), edges[1].tolist(), strict=True))
    assert len(pairs) == cfg["edges"]  # no repeated edge
    assert all(a != b and (b, a) in pairs for a, b in pairs)  # no self loop, both directions


def test_nmt_sampler_pads_with_eos() -> None:
    from models.nmt import EOS

    cfg = get_model("nmt").config("full")
    feeds = get_model("nmt").make_feeds("full", 32, 0)
    real = np.arange(cfg["source_len"])[None, :] < feeds["source_length"][:, None]
    assert np.all(feeds["source"][~real] == EOS) and np.all(feeds["source"][real] > EOS)
    assert np.all(feeds["source"] < cfg["vocab"])
