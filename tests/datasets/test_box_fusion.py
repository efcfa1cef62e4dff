"""fuse_boxes names each bad input (the fusion itself is tested in test_index.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ccg_layers import CCGDTypeError, CCGShapeError, CCGValueRangeError, set_value_checks
from ccg_layers.datasets import fuse_boxes


@pytest.mark.parametrize(
    ("boxes", "error", "match"),
    [
        ([[0, 0, 1, 1]], CCGDTypeError, r"`boxes` must be a torch\.Tensor, got list\."),
        (torch.ones(1, 4, dtype=torch.bool), CCGDTypeError, r"`boxes` must have a float or int"),
        (
            torch.zeros(4),
            CCGShapeError,
            r"`boxes` must have 2 dimensions \(n, 4\), got shape \(4,\)\.",
        ),
        (
            torch.zeros(2, 3),
            CCGShapeError,
            r"`boxes` must have shape \(n, 4\) with 4 in that position, got shape \(2, 3\)\.",
        ),
        (
            torch.tensor([[0.0, 0.0, math.nan, 1.0]]),
            CCGValueRangeError,
            r"`boxes` must be finite, got NaN",
        ),
        (
            torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 0.0, 1.0, 1.0]]),
            CCGValueRangeError,
            r"`boxes` must be \(x1, y1, x2, y2\) with x1 < x2 and y1 < y2, got 1 inverted or "
            r"empty box\(es\), e\.g\. \[5\.0, 0\.0, 1\.0, 1\.0\]\.",
        ),
        (
            torch.tensor([[0.0, 3.0, 1.0, 3.0]]),
            CCGValueRangeError,
            r"got 1 inverted or empty box\(es\)",
        ),
    ],
)
def test_fuse_boxes_names_bad_boxes(boxes, error, match):
    with pytest.raises(error, match=match):
        fuse_boxes(boxes)


@pytest.mark.parametrize("threshold", ["0.5", math.nan, 1.0, True, None])
def test_fuse_boxes_names_a_bad_threshold(threshold):
    with pytest.raises(CCGValueRangeError, match=r"`iou_threshold` must be in \[0, 1\), got"):
        fuse_boxes(torch.zeros(0, 4), threshold)


def test_fuse_boxes_takes_integer_boxes_and_skips_value_checks_when_off():
    fused, cluster = fuse_boxes(torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]]))
    assert fused.tolist() == [[0.0, 0.0, 10.0, 10.0]]
    assert cluster.tolist() == [0, 0]
    with set_value_checks(False):
        fuse_boxes(torch.tensor([[5.0, 0.0, 1.0, 1.0]]))  # a value check, off with the others
