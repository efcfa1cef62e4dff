"""RadiographDataset names each bad argument (its samples are tested in test_index.py)."""

from __future__ import annotations

import logging
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

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


def test_repeated_image_names_are_a_named_error(index):
    # a repeated image would weigh twice in training and evaluation
    with pytest.raises(
        CCGValueRangeError,
        match=r"`image_names` must name each image once, got 1 more than once: 'a'\.",
    ):
        RadiographDataset(index, ["a", "b", "a"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"index": None}, CCGDTypeError, r"`index` must be a DatasetIndex .*, got NoneType\."),
        ({"image_names": "a"}, CCGDTypeError, r"`image_names` must be an iterable .*, got str\."),
        ({"image_names": 3}, CCGDTypeError, r"`image_names` must be an iterable .*, got int\."),
        (
            {"image_size": True},
            CCGValueRangeError,
            r"`image_size` must be a positive int, got True",
        ),
        ({"image_size": 0}, CCGValueRangeError, r"`image_size` must be a positive int, got 0\."),
        ({"image_size": 2.0}, CCGValueRangeError, r"`image_size` must be a positive int, got 2\.0"),
        (
            {"output": "rgb"},
            CCGValueRangeError,
            r"`output` must be one of 'uint8', 'imagenet', 'unit', got 'rgb'\.",
        ),
        ({"skip_bad_images": "no"}, CCGValueRangeError, r"`skip_bad_images` must be True or"),
    ],
)
def test_radiograph_dataset_names_each_bad_argument(index, kwargs, error, match):
    with pytest.raises(error, match=match):
        RadiographDataset(**{"index": index, **kwargs})


@pytest.fixture
def dataset(tmp_path):
    """Three 10 x 20 images of gray values 0, 50, 100, the sample i's value 50 * i."""
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((20, 10), 50 * i, dtype=np.uint8)).save(files[-1])
    index = RadiographIndex(
        dataset_name="demo",
        images=[f"img{i}" for i in range(3)],
        labels=torch.eye(3, 2),
        patient_ids=torch.arange(3),
        boxes=torch.zeros(0, 4),
        box_image_index=torch.zeros(0, dtype=torch.long),
        box_class=torch.zeros(0, dtype=torch.long),
        image_sizes=torch.tensor([[10, 20]] * 3),
        class_names=("x", "y"),
        boxed_classes=("x",),
        files=files,
    )
    return RadiographDataset(index, image_size=4)


def test_image_size_may_be_a_numpy_integer(dataset):
    ds = RadiographDataset(dataset.index, image_size=np.int64(8))
    assert ds.image_size == 8
    assert type(ds.image_size) is int
    assert ds[0]["image"].shape == (1, 8, 8)


def test_iteration_gives_every_sample_once_in_order(dataset):
    samples = list(islice(dataset, 10))  # islice: without the IndexError it would never end
    assert len(samples) == len(dataset) == 3
    assert [s["name"] for s in samples] == ["img0", "img1", "img2"]
    assert [s["index"] for s in samples] == [0, 1, 2]
    assert [int(s["image"][0, 0, 0]) for s in samples] == [0, 50, 100]
    assert sum(1 for _ in dataset) == 3


@pytest.mark.parametrize(
    ("i", "expected"),
    [(-1, 2), (-3, 0), (np.int64(1), 1), (np.int32(-2), 1), (torch.tensor(2), 2)],
)
def test_negative_and_numpy_indices_count_like_a_list(dataset, i, expected):
    sample = dataset[i]
    assert sample["name"] == f"img{expected}"
    assert sample["index"] == expected
    assert int(sample["image"][0, 0, 0]) == 50 * expected
    assert dataset.targets(i)["name"] == f"img{expected}"
    assert dataset.targets(i)["index"] == expected
    assert int(dataset.load_image(i)[0, 0, 0]) == 50 * expected


@pytest.mark.parametrize("i", [3, 10**6, -4, np.int64(3), torch.tensor(-4)])
@pytest.mark.parametrize("get", ["getitem", "targets", "load_image"])
def test_out_of_range_index_is_an_index_error_naming_it_and_the_length(dataset, i, get):
    call = {"getitem": dataset.__getitem__, "targets": dataset.targets}.get(get, dataset.load_image)
    with pytest.raises(
        IndexError,
        match=rf"RadiographDataset sample index {int(i)} is out of range for a dataset of 3 "
        r"sample\(s\) \(valid: -3 to 2\)\.",
    ):
        call(i)


def test_empty_dataset_index_is_an_index_error(dataset):
    empty = RadiographDataset(dataset.index, [], image_size=4)
    assert len(empty) == 0
    assert list(empty) == []
    with pytest.raises(IndexError, match=r"sample index 0 is out of range: the dataset is empty"):
        empty[0]


@pytest.mark.parametrize(
    ("i", "shown"),
    [
        (True, r"True \(bool\)"),
        (np.bool_(False), r"np\.False_ \(bool\)|False \(bool_?\)"),
        ("a", r"'a' \(str\)"),
        (None, r"None \(NoneType\)"),
        (1.5, r"1\.5 \(float\)"),
        (1.0, r"1\.0 \(float\)"),
        (torch.tensor(1.0), r"tensor\(1\.\) \(Tensor\)"),
        (torch.tensor([1]), r"tensor\(\[1\]\) \(Tensor\)"),
        (torch.tensor(True), r"tensor\(True\) \(Tensor\)"),
        (slice(0, 2), r"slice\(0, 2, None\) \(slice\)"),
    ],
)
@pytest.mark.parametrize("get", ["getitem", "targets", "load_image"])
def test_non_integer_index_is_a_type_error_naming_it(dataset, i, shown, get):
    call = {"getitem": dataset.__getitem__, "targets": dataset.targets}.get(get, dataset.load_image)
    with pytest.raises(
        TypeError,
        match=rf"RadiographDataset sample indices must be integers \(not bool\), got {shown}",
    ):
        call(i)


def test_skip_bad_images_replaces_an_unreadable_image_by_the_next_wrapping(dataset, caplog):
    ds = RadiographDataset(dataset.index, image_size=4, skip_bad_images=True)
    ds.paths[2].write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="ccg_layers.datasets.radiographs"):
        last = ds[-1]
    assert last["name"] == "img0"  # the requested index is checked, the retry wraps
    assert last["index"] == 0
    assert any("img2.png" in r.getMessage() for r in caplog.records)
    assert [s["name"] for s in islice(ds, 10)] == ["img0", "img1", "img0"]
    with pytest.raises(IndexError, match=r"sample index 3 is out of range"):
        ds[3]
