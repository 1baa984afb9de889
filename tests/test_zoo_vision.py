"""The PyTorch vision models of the zoo (GoogLeNet, ResNet-101, SSD and its ResNet variants, DSSD): a tiny run
through export, FP16, INT8 and measurement, plus the pieces written here: default boxes, the in-graph
detection output (NMS over a dynamic batch), head settling and DSSD's deconvolution path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from analysis.accuracy import box_iou
from models import dssd, get_model, ssd
from tests.zoo import run_tiny

# Each artifact and cell runs in a child process whose start-up dominates at tiny size, so the full run takes
# one model per code path. resnet101 is resnet50's torchvision code (run by test_pipeline) with other depths
# and ssd_resnet18 has basic blocks where ssd_resnet50 has bottlenecks: both are exported with the parity
# check in-process below instead. ssd_resnet101 is ssd_resnet50's code with one more block at tiny size.
MODELS = ("googlenet", "ssd", "ssd_resnet50", "dssd")
DETECTORS = {"ssd", "ssd_resnet50", "dssd"}


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory):
    """Every model here at tiny size, batch 2, fp32/fp16/int8 on ort-cpu: (exit status, result rows)."""
    status, rows = run_tiny(MODELS, tmp_path_factory.mktemp("zoo-vision"))
    return status, rows


def test_every_cell_runs_with_accuracy_and_flops(tiny_rows):
    status, rows = tiny_rows
    assert status == 0
    assert {(r["model"], r["precision"]) for r in rows} == {(m, p) for m in MODELS for p in ("fp32", "fp16", "int8")}
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows if r["error"]]
    for row in rows:
        assert row["flops_per_batch"] > 0 and row["params"] > 0
        assert row["accuracy_metric"] == ("box_f1" if row["model"] in DETECTORS else "top1_agreement")
        assert 0.0 <= row["accuracy_value"] <= 1.0
        if row["precision"] == "fp32":
            assert row["accuracy_value"] == 1.0 and row["accuracy_max_abs_error"] == 0.0
        if row["model"] in DETECTORS:
            # The reference has detections to match, so the F1 is not 1.0 by default.
            assert row["accuracy_reference_boxes"] > 0


@pytest.mark.parametrize("name", ["resnet101", "ssd_resnet18"])
def test_same_code_models_export_with_parity(name, tmp_path):
    from exporters import export

    report = export(get_model(name), "tiny", tmp_path / "fp32.onnx")
    assert report.parity_max_rel <= report.parity_tolerance


def test_ssd300_and_dssd321_have_the_papers_default_boxes():
    for name in ("ssd", "ssd_resnet18", "ssd_resnet50", "ssd_resnet101"):
        cfg = get_model(name).config("full")
        sizes = ssd.feature_sizes(cfg)
        assert sizes == [38, 19, 10, 5, 3, 1]
        priors = ssd.prior_boxes(sizes, 300, cfg["box_sizes"], cfg["aspect_ratios"], cfg["steps"])
        assert priors.shape == (8732, 4)
    cfg = get_model("dssd").config("full")
    sizes = dssd.feature_sizes(cfg)
    assert sizes == [40, 20, 10, 5, 3, 1]
    assert ssd.prior_boxes(sizes, 321, cfg["box_sizes"], cfg["aspect_ratios"]).shape == (17080, 4)


def test_prior_boxes_follow_the_caffe_layout():
    priors = ssd.prior_boxes([2], 100, (0.2, 0.45), [(2,)], steps=[50])
    assert priors.shape == (2 * 2 * 4, 4)
    # First location (row 0, column 0) centred half a step in; its four boxes are adjacent.
    np.testing.assert_allclose(priors[:4, :2].numpy(), [[0.25, 0.25]] * 4)
    side = np.sqrt(0.2 * 0.45)
    np.testing.assert_allclose(
        priors[:4, 2:].numpy(),
        [[0.2, 0.2], [side, side], [0.2 * np.sqrt(2), 0.2 / np.sqrt(2)], [0.2 / np.sqrt(2), 0.2 * np.sqrt(2)]],
        rtol=1e-6,
    )
    # The second location is the next column of the same row.
    np.testing.assert_allclose(priors[4, :2].numpy(), [0.75, 0.25])


def _post(top_k=20):
    priors = ssd.prior_boxes([6, 3], 60, (0.2, 0.4, 0.7), [(2,), (2, 3)])
    return ssd.detection_output(priors, 60, score_threshold=0.05, iou_threshold=0.45, top_k=top_k), len(priors)


def test_detection_output_exports_with_nms_over_a_dynamic_batch(tmp_path):
    import onnx
    import onnxruntime as ort

    post, count = _post()
    generator = torch.Generator().manual_seed(3)
    loc = torch.randn(2, count, 4, generator=generator)
    conf = torch.randn(2, count, 4, generator=generator) * 2
    path = tmp_path / "post.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            post,
            (loc, conf),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["loc", "conf"],
            output_names=list(ssd.OUTPUTS),
            dynamic_axes={n: {0: "batch"} for n in ("loc", "conf", *ssd.OUTPUTS)},
        )
    assert "NonMaxSuppression" in {n.op_type for n in onnx.load(str(path)).graph.node}
    # A batch size other than the traced one: the graph is not specialised to it.
    loc3 = torch.randn(3, count, 4, generator=generator)
    conf3 = torch.randn(3, count, 4, generator=generator) * 2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"loc": loc3.numpy(), "conf": conf3.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in post(loc3, conf3)]
    assert boxes.shape == (3, 20, 4) and scores.shape == (3, 20) and labels.dtype == np.int64
    np.testing.assert_allclose(boxes, want[0], atol=1e-4)
    np.testing.assert_allclose(scores, want[1], atol=1e-6)
    np.testing.assert_array_equal(labels, want[2])
    # Saturated logits: many scores tie at exactly 1.0, and the eager NMS and sort must break ties as ONNX does.
    conf_tied = conf3 * 40
    tied = session.run(None, {"loc": loc3.numpy(), "conf": conf_tied.numpy()})
    with torch.no_grad():
        want_tied = [t.numpy() for t in post(loc3, conf_tied)]
    assert np.sum(tied[1] == 1.0) > 3
    np.testing.assert_allclose(tied[0], want_tied[0], atol=1e-4)
    np.testing.assert_allclose(tied[1], want_tied[1], atol=1e-6)
    np.testing.assert_array_equal(tied[2], want_tied[2])
    for b in range(3):
        valid = scores[b] > 0
        assert valid.any() and np.all(np.diff(scores[b]) <= 0)
        assert np.all(scores[b][valid] > 0.05) and np.all((labels[b][valid] >= 1) & (labels[b][valid] <= 3))
        assert np.all(boxes[b][~valid] == 0) and np.all(labels[b][~valid] == 0)
        assert np.all((boxes[b] >= 0) & (boxes[b] <= 60))
        # NMS per class: no two kept boxes of one class overlap beyond the IoU threshold.
        for label in np.unique(labels[b][valid]):
            same = boxes[b][valid & (labels[b] == label)]
            iou = box_iou(same, same)
            assert np.all(iou[np.triu_indices(len(same), 1)] <= 0.45 + 1e-6)


def test_detection_output_pads_when_few_boxes_pass():
    post, count = _post(top_k=30)
    conf = torch.full((1, count, 4), -10.0)
    conf[0, :, 0] = 10.0  # background everywhere ...
    conf[0, 5, 2] = 20.0  # ... but one confident box of class 2
    boxes, scores, labels = post(torch.zeros(1, count, 4), conf)
    assert scores[0, 0] > 0.99 and labels[0, 0] == 2
    assert torch.all(scores[0, 1:] == 0) and torch.all(labels[0, 1:] == 0) and torch.all(boxes[0, 1:] == 0)
    # Zero offsets decode to the default box itself, in pixels, clipped to the image.
    cx, cy, w, h = (post.priors[5] * 60).tolist()
    want = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, 60)
    np.testing.assert_allclose(boxes[0, 0].numpy(), want, atol=1e-4)


def test_settled_heads_pass_the_target_share_of_scores():
    cfg = get_model("ssd").config("tiny")
    torch.manual_seed(0)
    net = ssd.build_net(cfg)
    ssd.settle_heads(net.eval(), net.head, cfg["resolution"], 0, cfg["score_threshold"])
    with torch.no_grad():
        # Other images than the ones the heads were settled on.
        loc, conf = net(ssd.synthetic_images(cfg["resolution"], seed=99, batch=4))
    passing = float((conf.softmax(-1)[..., 1:] > cfg["score_threshold"]).float().mean())
    assert 0.3 * ssd.CANDIDATE_FRACTION < passing < 3 * ssd.CANDIDATE_FRACTION
    assert 0.7 < float(loc.std()) < 1.4


def test_deconvolution_geometry():
    # DSSD321's top-down path: 1 -> 3 -> 5 by 3x3 stride-1 deconvolutions, then 2x2 stride-2 doublings.
    assert [dssd.deconv_geometry(a, b) for a, b in ((1, 3), (3, 5), (5, 10), (10, 20), (20, 40))] == [
        (3, 1),
        (3, 1),
        (2, 2),
        (2, 2),
        (2, 2),
    ]
    assert dssd.deconv_geometry(2, 5) == (3, 2)
    with pytest.raises(ValueError):
        dssd.deconv_geometry(5, 5)


def test_dssd321_deconvolution_modules_give_each_scale():
    cfg = get_model("dssd").config("full")
    with torch.device("meta"):
        net = dssd.build_net(cfg).eval()
        pyramid = net.pyramid(torch.zeros(2, 3, 321, 321))
        loc, conf = net(torch.zeros(2, 3, 321, 321))
    assert [tuple(p.shape) for p in pyramid] == [
        (2, 512, 40, 40),
        (2, 512, 20, 20),
        (2, 512, 10, 10),
        (2, 512, 5, 5),
        (2, 512, 3, 3),
        (2, 1024, 1, 1),
    ]
    assert tuple(loc.shape) == (2, 17080, 4) and tuple(conf.shape) == (2, 17080, 21)


def test_dssd_deconvolution_module_computes_at_tiny_size():
    cfg = get_model("dssd").config("tiny")
    torch.manual_seed(0)
    net = dssd.build_net(cfg).eval()
    with torch.no_grad():
        pyramid = net.pyramid(ssd.synthetic_images(cfg["resolution"], seed=1, batch=2))
    assert [tuple(p.shape) for p in pyramid] == [(2, 32, 12, 12), (2, 32, 6, 6), (2, 32, 3, 3), (2, 64, 1, 1)]
    # Each module's output is a ReLU of a product: non-negative and not all zero.
    for fused in pyramid[:-1]:
        assert float(fused.min()) >= 0.0 and float(fused.max()) > 0.0


def test_batchnorm_folding_keeps_outputs_and_damping_scales_residual_branches():
    from torch import nn
    from torchvision.models.resnet import Bottleneck

    from models._vision import settle_batchnorm

    cfg = get_model("ssd_resnet50").config("tiny")
    torch.manual_seed(0)
    net = ssd.damp_residual_branches(ssd.build_net(cfg))
    gammas = torch.cat([b.bn3.weight.detach() for b in net.modules() if isinstance(b, Bottleneck)])
    torch.testing.assert_close(gammas, torch.full_like(gammas, ssd.RESIDUAL_SCALE))
    settle_batchnorm(net, cfg["resolution"], 0, batches=1, batch_size=4)
    images = ssd.synthetic_images(cfg["resolution"], seed=5, batch=2)
    with torch.no_grad():
        before = net(images)
        after = ssd.fold_batchnorm(net)(images)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
