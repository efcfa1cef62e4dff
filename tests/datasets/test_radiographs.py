"""RadiographDataset names each bad argument (its samples are tested in test_index.py)."""

from __future__ import annotations

import pytest
import torch

from ccg_layers import CCGDTypeError, CCGValueRangeError
from ccg_layers.datasets import RadiographDataset, RadiographIndex


@pytest.fixture
def index():
    return RadiographIndex(
        dataset_name="demo",
        images=["a", "b"],
        labels=torch.tensor([[1.0], [0.0]]),
        patient_ids=torch.arange(2),
        boxes=torch.tensor([[1.0, 2.0, 5.0, 10.0]]),
        box_image_index=torch.tensor([0]),
        box_class=torch.tensor([0]),
        image_sizes=torch.tensor([[10, 20], [10, 20]]),
        class_names=("x",),
        boxed_classes=("x",),
        files=[None, None],
    )


def test_unknown_image_names_are_a_named_error_listing_them(index):
    with pytest.raises(
        CCGValueRangeError,
        match=r"`image_names` must be images of the demo index, got 2 that are not: "
        r"'nope\.png', 'zzz'\.",
    ):
        RadiographDataset(index, ["nope.png", "a", "zzz"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"index": None}, CCGDTypeError, r"`index` must be a DatasetIndex .*, got NoneType\."),
        ({"image_names": "a"}, CCGDTypeError, r"`image_names` must be an iterable .*, got str\."),
        ({"image_names": 3}, CCGDTypeError, r"`image_names` must be an iterable .*, got int\."),
        ({"image_size": True}, ValueError, r"`image_size` must be a positive int, got True"),
        ({"skip_bad_images": "no"}, CCGValueRangeError, r"`skip_bad_images` must be True or"),
    ],
)
def test_radiograph_dataset_names_each_bad_argument(index, kwargs, error, match):
    with pytest.raises(error, match=match):
        RadiographDataset(**{"index": index, **kwargs})
