"""Pieces every detector of the zoo shares (SSD, DSSD, Faster R-CNN, Mask R-CNN): the ONNX NonMaxSuppression
node their NMS functions export to, and the alignment of detection lists used by the parity check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def nms_node(g: Any, boxes: Any, scores: Any, max_per_class: int, iou_threshold: float, score_threshold: float) -> Any:
    """One ONNX NonMaxSuppression in a torch.onnx ``symbolic``: boxes (B, N, 4), scores (B, C, N) ->
    selected (K, 3) rows of (batch, class, box index); the limits become constant inputs."""
    import torch

    return g.op(
        "NonMaxSuppression",
        boxes,
        scores,
        g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
        g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
        g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
    )


def align_detections(reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, Any]:
    """``candidate``'s detections reordered, per image, to the row order of ``reference`` (the parity check's
    ``parity_align``).

    Both map output names to arrays with images on axis 0 and detections on axis 1, in the detector's output
    order (boxes, scores, labels, then any per-detection output such as masks). Rows are sorted by score, so
    two detections whose scores differ by less than the framework-to-ONNX Runtime error (about 1e-4 at full
    size, after fifty layers of float32 accumulation in different orders) can trade places. Each reference
    row takes the unused candidate row of the same label that overlaps it most (IoU >= 0.5); rows left over
    keep their order. A detection that one side has and the other lacks stays unmatched and still fails
    the comparison.
    """
    import numpy as np

    from analysis.accuracy import box_iou

    names = list(reference)
    boxes, labels = names[0], names[2]
    orders = []
    for image in range(reference[boxes].shape[0]):
        overlap = box_iou(reference[boxes][image], candidate[boxes][image])
        same = reference[labels][image][:, None] == candidate[labels][image][None, :]
        overlap = np.where(same & (overlap >= 0.5), overlap, -1.0)
        used = np.zeros(overlap.shape[1], dtype=bool)
        order = []
        for row in overlap:
            best = int(np.argmax(np.where(used, -2.0, row)))
            if row[best] >= 0 and not used[best]:
                used[best] = True
                order.append(best)
            else:
                order.append(-1)
        leftover = iter(np.flatnonzero(~used))
        orders.append([j if j >= 0 else next(leftover) for j in order])
    index = np.asarray(orders)
    return {
        name: np.take_along_axis(value, index.reshape(*index.shape, *([1] * (value.ndim - 2))), axis=1)
        for name, value in candidate.items()
    }
