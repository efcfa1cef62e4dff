"""collate_chestxray14 names each malformed sample (batching itself is tested with the datasets)."""

from __future__ import annotations

import pytest
import torch

from ccg_layers import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.datasets import collate_chestxray14


def sample(**change):
    base = {
        "image": torch.zeros(1, 8, 8, dtype=torch.uint8),
        "labels": torch.zeros(3),
        "has_box": torch.zeros(3, dtype=torch.bool),
        "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]),
        "box_class": torch.tensor([1]),
        "name": "a.png",
        "index": 0,
    }
    return {**base, **change}


def test_good_samples_batch():
    batch = collate_chestxray14(
        [sample(), sample(boxes=torch.zeros(0, 4), box_class=torch.zeros(0, dtype=torch.long))]
    )
    assert batch["box_image_index"].tolist() == [0]


@pytest.mark.parametrize(
    ("samples", "error", "match"),
    [
        ({"a": sample()}, CCGDTypeError, r"`samples` must be a list of sample dicts, got dict\."),
        ("abc", CCGDTypeError, r"`samples` must be a list of sample dicts, got str\."),
        ([sample(), 3], CCGDTypeError, r"`samples\[1\]` must be a sample dict, got int\."),
        (
            [sample(box_class=torch.tensor([1, 2]))],
            CCGShapeError,
            r"`samples\[0\]\['box_class'\]` must have shape \(1,\), one class per box, got \(2,\)\.",
        ),
        (
            [sample(), sample(image=torch.zeros(1, 4, 4, dtype=torch.uint8))],
            CCGShapeError,
            r"`samples\[1\]\['image'\]` must have the shape of samples\[0\]\['image'\], "
            r"\(1, 8, 8\), got \(1, 4, 4\)\.",
        ),
        (
            [sample(), sample(labels=torch.zeros(4))],
            CCGShapeError,
            r"`samples\[1\]\['labels'\]` must have the shape of samples\[0\]\['labels'\]",
        ),
        (
            [sample(boxes=torch.zeros(2, 3), box_class=torch.zeros(2, dtype=torch.long))],
            CCGShapeError,
            r"`samples\[0\]\['boxes'\]` must have shape \(b, 4\), got \(2, 3\)\.",
        ),
        (
            [sample(boxes=[[0.0, 0.0, 1.0, 1.0]])],
            CCGDTypeError,
            r"`samples\[0\]\['boxes'\]` must be a torch\.Tensor, got list\.",
        ),
        (
            [{k: v for k, v in sample().items() if k != "has_box"}],
            CCGValueRangeError,
            r"`samples\[0\]` must have the keys image, .*, got one without has_box\.",
        ),
    ],
)
def test_collate_names_each_bad_sample(samples, error, match):
    with pytest.raises(error, match=match):
        collate_chestxray14(samples)


def test_collate_names_a_box_class_past_the_labels():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`samples\[\.\.\.\]\['box_class'\]` must hold indices in \[0, 3\), got values "
        r"in \[1, 3\]",
    ):
        collate_chestxray14([sample(), sample(box_class=torch.tensor([3]))])


def test_collate_names_a_float_box_class():
    # torch.zeros(0) is float: concatenated with the others it made the batch's classes float
    with pytest.raises(
        CCGDTypeError,
        match=r"`samples\[1\]\['box_class'\]` must have a int dtype, got torch.float32",
    ):
        collate_chestxray14([sample(), sample(boxes=torch.zeros(0, 4), box_class=torch.zeros(0))])
