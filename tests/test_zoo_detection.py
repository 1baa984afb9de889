"""The two-stage detectors (Faster R-CNN, Mask R-CNN): a tiny suite run, the fixed-size output conventions,
the dynamic batch, INT8 box arithmetic left in float, and the grouped NMS and multi-level RoIAlign pieces
against torchvision."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from models import get_model
from models._detection import align_detections
from models._rcnn import SCORE_THRESHOLD, grouped_nms, multiscale_roi_align
from onnx_models.store import ModelStore
from tests.zoo import CPU_INT8, run_tiny

MODELS = ("faster_rcnn", "mask_rcnn")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The result rows of one tiny run of both detectors (fp32, fp16, int8 on ort-cpu, batch 2)."""
    status, rows = run_tiny(MODELS, tmp_path_factory.mktemp("detection_run"))
    assert status == 0
    return rows


def _session(model: str, artifact: str = "fp32") -> ort.InferenceSession:
    """An ONNX Runtime session on a tiny artifact stored by ``tiny_run``."""
    path = ModelStore(model, "tiny").verified_path(artifact)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_cell_is_measured_with_box_f1(tiny_run):
    assert len(tiny_run) == len(MODELS) * 3
    assert {r["status"] for r in tiny_run} == {"ok"}, [r["error"] for r in tiny_run if r["error"]]
    for row in tiny_run:
        assert row["accuracy_metric"] == "box_f1"
        assert row["flops_per_batch"] > 0 and row["params"] > 0
        # Seeded random weights still give detections above the score threshold, so F1 compares real boxes.
        assert row["accuracy_reference_boxes"] >= 4
        if row["precision"] == "fp32":
            assert row["accuracy_value"] == 1.0
        else:
            assert 0.5 <= row["accuracy_value"] <= 1.0, row


@pytest.mark.parametrize("model", MODELS)
def test_outputs_are_padded_detections(tiny_run, model):
    spec = get_model(model)
    cfg = spec.config("tiny")
    feeds = spec.make_feeds("tiny", 2, 11)
    outputs = dict(zip(spec.outputs, _session(model).run(list(spec.outputs), feeds), strict=True))
    boxes, scores, labels = outputs["boxes"], outputs["scores"], outputs["labels"]
    k = cfg["detections"]
    assert boxes.shape == (2, k, 4) and scores.shape == (2, k) and labels.shape == (2, k)
    assert labels.dtype == np.int64
    found = scores > 0
    assert found.any() and np.all(scores[found] > SCORE_THRESHOLD)
    assert np.all(np.diff(scores, axis=1) <= 0), "detections come best first"
    assert np.all(labels[found] >= 1) and np.all(labels[found] < cfg["classes"]) and np.all(labels[~found] == 0)
    assert np.all(boxes[~found] == 0)
    real = boxes[found]
    assert np.all(real[:, 0] <= real[:, 2]) and np.all(real[:, 1] <= real[:, 3])
    assert real.min() >= 0 and np.all(real[:, 2] <= cfg["width"]) and np.all(real[:, 3] <= cfg["height"])
    if model == "mask_rcnn":
        masks = outputs["masks"]
        assert masks.shape == (2, k, 28, 28) and masks.min() >= 0 and masks.max() <= 1


@pytest.mark.parametrize("model", MODELS)
def test_batch_dimension_is_dynamic_and_images_independent(tiny_run, model):
    spec = get_model(model)
    session = _session(model)
    feeds = spec.make_feeds("tiny", 3, 21)["images"]
    together = session.run(None, {"images": feeds})
    for i in range(3):
        alone = session.run(None, {"images": feeds[i : i + 1]})
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(a[0], b[i], atol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_int8_quantizes_the_network_but_not_the_boxes(tiny_run, model):
    entry = ModelStore(model, "tiny").entry(CPU_INT8)
    assert {"Conv", "Gemm"} <= set(entry["quantized_ops"])
    graph = onnx.load(str(ModelStore(model, "tiny").verified_path(CPU_INT8))).graph
    assert_quantizes_only_network_tensors(graph)
    producers = {o: n.op_type for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    assert not any(producers.get(o) == "DequantizeLinear" for o in outputs & {"boxes", "scores"})


# Ops that pass a quantized tensor on unchanged in value (the quantizer gives their output the input's scale).
_PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}
_PASS_THROUGH |= {"Slice", "Split", "Pad", "Concat", "Gather", "Where"}
# Ops whose outputs are the network's activations, what INT8 is for: layers, and RoI pooling with the scatter
# that merges its FPN levels.
_NETWORK = {"Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "Relu", "Add", "Resize"}
_NETWORK |= {"MaxRoiPool", "RoiAlign", "ScatterND"}


def assert_quantizes_only_network_tensors(graph) -> None:
    """Every QuantizeLinear in ``graph`` quantizes a network activation or the normalised input image, traced
    back through data-movement ops; none quantizes box coordinates or scores computed by the decoding."""
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        source = producers.get(node.input[0])
        while source is not None and source.op_type in _PASS_THROUGH:
            source = producers.get(source.input[0])
        chain = source
        # The image normalisation ((images - mean) / std) is the graph input's own arithmetic.
        while chain is not None and chain.op_type in ("Sub", "Div"):
            chain = producers.get(chain.input[0])
        from_image = source is not None and source.op_type in ("Sub", "Div") and chain is None
        assert source is None or source.op_type in _NETWORK or from_image, (node.name, source.op_type, source.name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_grouped_nms_matches_torchvision_and_onnx(tmp_path):
    generator = torch.Generator().manual_seed(3)
    corners = torch.rand((3, 40, 2), generator=generator) * 50
    sizes = torch.rand((3, 40, 2), generator=generator) * 30 + 1
    boxes = torch.cat([corners, corners + sizes], dim=2)
    scores = torch.rand((3, 40), generator=generator)
    iou, threshold, most = 0.4, 0.2, 7

    class Module(torch.nn.Module):
        def forward(self, boxes, scores):
            return grouped_nms(boxes, scores, iou, threshold, most)

    mask = Module()(boxes, scores)
    for group in range(3):
        candidates = torch.nonzero(scores[group] > threshold).flatten()
        keep = torchvision.ops.nms(boxes[group, candidates], scores[group, candidates], iou)[:most]
        expected = torch.zeros(40)
        expected[candidates[keep]] = 1
        assert torch.equal(mask[group], expected)
    path = tmp_path / "nms.onnx"
    torch.onnx.export(
        Module(), (boxes, scores), str(path), dynamo=False, opset_version=17, input_names=["boxes", "scores"]
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
    np.testing.assert_array_equal(got, mask.numpy())


def test_multiscale_roi_align_matches_torchvision():
    from torchvision.ops import MultiScaleRoIAlign

    generator = torch.Generator().manual_seed(4)
    size = 256
    features = [torch.rand((2, 8, size // s, size // s), generator=generator) for s in (4, 8, 16, 32)]
    corners = torch.rand((2, 30, 2), generator=generator) * 150
    boxes = torch.cat([corners, corners + torch.rand((2, 30, 2), generator=generator) * 100 + 2], dim=2)
    rois = torch.cat([torch.arange(2.0)[:, None, None].expand(2, 30, 1), boxes], dim=2).flatten(0, 1)
    ours = multiscale_roi_align(features, rois, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    theirs = pooler({str(i): f for i, f in enumerate(features)}, list(boxes), [(size, size)] * 2)
    torch.testing.assert_close(ours, theirs)


def test_parity_alignment_undoes_swaps_of_near_tied_detections_only():
    boxes = np.array([[[0, 0, 10, 10], [50, 50, 80, 90], [20, 0, 40, 30], [0, 0, 0, 0]]], dtype=np.float32)
    reference = {
        "boxes": boxes,
        "scores": np.array([[0.9, 0.70001, 0.7, 0.0]], dtype=np.float32),
        "labels": np.array([[3, 5, 5, 0]]),
        "masks": np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1) * np.ones((1, 1, 2, 2), dtype=np.float32),
    }
    # ONNX Runtime ranks the two near-tied detections the other way round.
    swap = [0, 2, 1, 3]
    candidate = {name: value[:, swap] for name, value in reference.items()}
    aligned = align_detections(reference, candidate)
    for name, value in reference.items():
        np.testing.assert_array_equal(aligned[name], value)
    # A detection the framework does not have stays a mismatch.
    moved = {name: value.copy() for name, value in candidate.items()}
    moved["boxes"][0, 1] = [200, 200, 230, 230]
    assert np.abs(align_detections(reference, moved)["boxes"] - reference["boxes"]).max() > 100
