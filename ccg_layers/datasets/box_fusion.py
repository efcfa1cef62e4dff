"""Combining the boxes several radiologists drew for one finding: weighted box fusion.

VinDr-CXR has three readings per image. :func:`fuse_boxes` is weighted box fusion (Solovyev
et al., 2021) with equal weights, as there are no confidence scores: boxes are taken in a
fixed order, each joins the cluster whose fused box it overlaps most with IoU above the
threshold (else it starts one), and a cluster's box is the mean of its members' coordinates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ccg_layers.config import values_checkable
from ccg_layers.errors import CCGValueRangeError
from ccg_layers.validation import (
    check_dtype,
    check_finite,
    check_shape,
    check_tensor,
    real_number,
)

__all__ = ["fuse_boxes", "weighted_box_fusion"]


def _iou(box: Tensor, boxes: Tensor) -> Tensor:
    x1 = torch.maximum(box[0], boxes[:, 0])
    y1 = torch.maximum(box[1], boxes[:, 1])
    x2 = torch.minimum(box[2], boxes[:, 2])
    y2 = torch.minimum(box[3], boxes[:, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def fuse_boxes(boxes: Tensor, iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Weighted box fusion with equal weights of boxes of one class on one image.

    Args:
        boxes: ``(n, 4)`` xyxy with positive width and height, in the order they are taken.
        iou_threshold: A box joins a cluster when its IoU with the cluster's fused box is
            strictly greater than this.

    Returns:
        ``(c, 4)`` float32 fused boxes (the mean of each cluster), and ``(n,)`` long: the
        cluster of each input box.

    Raises:
        CCGShapeError: ``boxes`` is not ``(n, 4)``.
        CCGDTypeError: ``boxes`` is not a float or integer tensor.
        CCGValueRangeError: ``iou_threshold`` is not a number in [0, 1); ``boxes`` holds NaN
            or infinity, or a box without positive width and height (value checks).

    Example:
        >>> import torch
        >>> fused, cluster = fuse_boxes(torch.tensor(
        ...     [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]]))
        >>> fused.tolist(), cluster.tolist()
        ([[0.5, 0.5, 10.5, 10.5], [50.0, 50.0, 60.0, 60.0]], [0, 0, 1])
    """
    check_dtype(check_tensor(boxes, "boxes"), "boxes", ("float", "int"))
    check_shape(boxes, "boxes", ("n", 4))
    real_number(iou_threshold, "iou_threshold", low=0.0, high=1.0, high_open=True, what="in [0, 1)")
    check_finite(boxes, "boxes")
    if values_checkable() and len(boxes):
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bool(bad.any()):
            raise CCGValueRangeError(
                f"`boxes` must be (x1, y1, x2, y2) with x1 < x2 and y1 < y2, got "
                f"{int(bad.sum())} inverted or empty box(es), e.g. {boxes[bad][0].tolist()}."
            )
    return weighted_box_fusion(boxes, float(iou_threshold))


def weighted_box_fusion(boxes: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Kernel of :func:`fuse_boxes` (validated inputs)."""
    boxes = boxes.to(torch.float64)
    sums: list[Tensor] = []
    counts: list[int] = []
    cluster = torch.empty(len(boxes), dtype=torch.long)
    for i, box in enumerate(boxes):
        if sums:
            fused = torch.stack(sums) / torch.tensor(counts, dtype=torch.float64)[:, None]
            iou = _iou(box, fused)
            best = int(torch.argmax(iou))
            if float(iou[best]) > iou_threshold:
                sums[best] = sums[best] + box
                counts[best] += 1
                cluster[i] = best
                continue
        sums.append(box.clone())
        counts.append(1)
        cluster[i] = len(sums) - 1
    if not sums:
        return torch.zeros(0, 4), cluster
    fused = torch.stack(sums) / torch.tensor(counts, dtype=torch.float64)[:, None]
    return fused.to(torch.float32), cluster
