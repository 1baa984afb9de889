"""Where to put short labels next to chart points so that no two overlap: a greedy search in pixel space.

Charts of twenty models put points on top of each other where models cluster; a label written beside its point
then covers its neighbours'. Each label here goes to the first free spot in rings of growing radius around its
point; labels pushed away from their point get a leader line (the caller draws it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Directions tried on each ring, right and up first (where a reader looks for a point's label).
_DIRECTIONS = [(math.cos(a), math.sin(a)) for a in (math.radians(d) for d in (45, 0, 90, 315, 135, 270, 180, 225))]


@dataclass(frozen=True)
class Placed:
    """A label's centre in the caller's pixel space and whether it is far enough to need a leader line."""

    x: float
    y: float
    leader: bool


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    bounds: tuple[float, float, float, float],
    marker_radius: float = 5.0,
    rings: int = 8,
) -> list[Placed]:
    """Label centres for points at ``anchors`` (pixels), labels of ``sizes`` (width, height in pixels), all
    inside ``bounds`` (x0, y0, x1, y1). Returns one ``Placed`` per anchor, in order.

    A label avoids every other label and every point's marker (a square of ``marker_radius``); where no spot
    on ``rings`` rings is free, it takes the least crowded one tried (it overlaps rather than vanishes)."""
    markers = [(x - marker_radius, y - marker_radius, x + marker_radius, y + marker_radius) for x, y in anchors]
    boxes: list[tuple[float, float, float, float]] = []
    out: list[Placed] = []
    for (ax, ay), (width, height) in zip(anchors, sizes, strict=True):
        best: tuple[int, float, float, float] | None = None
        step = max(height, marker_radius * 2)
        for ring in range(rings):
            distance = marker_radius + 2 + ring * step
            for dx, dy in _DIRECTIONS:
                # The label's near edge sits ``distance`` from the point, whatever its width.
                cx = ax + dx * (distance + width / 2)
                cy = ay + dy * (distance + height / 2)
                box = (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
                if box[0] < bounds[0] or box[1] < bounds[1] or box[2] > bounds[2] or box[3] > bounds[3]:
                    continue
                clashes = sum(_overlaps(box, other) for other in boxes + markers)
                if best is None or clashes < best[0]:
                    best = (clashes, cx, cy, ring)
                if clashes == 0:
                    break
            if best is not None and best[0] == 0:
                break
        if best is None:  # no spot inside the bounds at all: on the point
            best = (0, ax, ay, 0)
        _, cx, cy, ring = best
        boxes.append((cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2))
        out.append(Placed(cx, cy, ring > 0))
    return out
