"""The one dataset interface: ChestX-ray14 satisfies it, RadiographDataset reads any index (and
gives ChestXray14's samples on ChestX-ray14), the settings work on any index, box fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ccg_layers import CCGDTypeError, CCGShapeError, CCGValueRangeError, set_value_checks
from ccg_layers.datasets import (
    BOX_FRAME,
    BOXED_CLASSES,
    CLASS_NAMES,
    ChestXray14,
    DatasetIndex,
    RadiographDataset,
    RadiographIndex,
    boxes_at_size,
    chestxray14_splits,
    dataset_splits,
    fuse_boxes,
    generate_synthetic_chestxray14,
    read_chestxray14,
    read_split_files,
    save_split,
    split_summary,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = generate_synthetic_chestxray14(tmp_path_factory.mktemp("nih"), 24, seed=3, image_size=96)
    return read_chestxray14(root)


def test_chestxray14_index_is_a_dataset_index(synthetic):
    assert isinstance(synthetic, DatasetIndex)
    assert synthetic.dataset_name == "ChestX-ray14"
    assert synthetic.class_names == CLASS_NAMES
    assert synthetic.boxed_classes == BOXED_CLASSES
    assert synthetic.has_patient_ids
    assert synthetic.image_sizes.tolist() == [[BOX_FRAME, BOX_FRAME]] * len(synthetic)
    assert sorted(synthetic.find_images()) == sorted(synthetic.images)
    assert torch.equal(boxes_at_size(synthetic, 512), synthetic.boxes * (512 / BOX_FRAME))


@pytest.mark.parametrize("output", ["uint8", "imagenet", "unit"])
def test_radiograph_dataset_gives_chestxray14s_samples(synthetic, output):
    names = synthetic.images[::2]
    ours = RadiographDataset(synthetic, names, image_size=48, output=output)
    theirs = ChestXray14(synthetic, names, image_size=48, output=output)
    assert len(ours) == len(theirs) == 12
    assert torch.equal(ours.rows, theirs.rows)
    assert ours.paths == theirs.paths
    for i in range(len(ours)):
        a, b = ours[i], theirs[i]
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def test_radiograph_dataset_checks_its_arguments(synthetic):
    with pytest.raises(ValueError, match="`image_size` must be a positive int, got 0"):
        RadiographDataset(synthetic, image_size=0)
    with pytest.raises(
        CCGValueRangeError,
        match=r"`output` must be one of 'uint8', 'imagenet', 'unit', got 'float'\.",
    ):
        RadiographDataset(synthetic, output="float")  # type: ignore[arg-type]


def small_index(tmp_path=None, n=3):
    files = [None] * n
    if tmp_path is not None:
        files = []
        for i in range(n):
            path = tmp_path / f"img{i}.png"
            Image.fromarray(np.full((20, 10), 50 * i, dtype=np.uint8)).save(path)
            files.append(path)
    return RadiographIndex(
        dataset_name="demo",
        images=[f"img{i}" for i in range(n)],
        labels=torch.eye(n, 2)[:, :2],
        patient_ids=torch.arange(n),
        boxes=torch.tensor([[1.0, 2.0, 5.0, 10.0]]),
        box_image_index=torch.tensor([0]),
        box_class=torch.tensor([0]),
        image_sizes=torch.tensor([[10, 20]] * n),
        class_names=("x", "y"),
        boxed_classes=("x",),
        files=files,
    )


def test_radiograph_index_finds_images_where_it_read_them_or_under_another_folder(tmp_path):
    index = small_index(tmp_path)
    assert index.find_images() == {f"img{i}": tmp_path / f"img{i}.png" for i in range(3)}
    other = tmp_path / "copies"
    other.mkdir()
    (other / "img1.jpg").write_bytes(b"")
    (other / "img1.dcm").write_bytes(b"")
    assert index.find_images(other) == {"img1": other / "img1.dcm"}  # DICOM first
    sample = RadiographDataset(index, image_size=10)[0]
    assert sample["boxes"].tolist() == [[1.0, 1.0, 5.0, 5.0]]  # (10, 20) frame -> 10 x 10
    assert sample["has_box"].tolist() == [True, False]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"labels": torch.zeros(3, 5)}, r"`labels` must have shape \(3, 2\), got \(3, 5\)"),
        (
            {"image_sizes": torch.ones(3, dtype=torch.long)},
            r"`image_sizes` must have shape \(3, 2\)",
        ),
        ({"files": [None]}, r"`files` must have shape \(3,\), got \(1,\)"),
        ({"box_class": torch.zeros(2, dtype=torch.long)}, r"`box_class` must have shape \(1,\)"),
        (
            {"images": ["a", "a", "b"]},
            r"`images` must hold each name once, got 1 more than once: 'a'\.",
        ),
    ],
)
def test_radiograph_index_checks_its_shapes(change, match):
    with pytest.raises(ValueError, match=match):
        RadiographIndex(**{**index_fields(), **change})


def index_fields():
    fields = (
        "dataset_name",
        "images",
        "labels",
        "patient_ids",
        "boxes",
        "box_image_index",
        "box_class",
        "image_sizes",
        "class_names",
        "boxed_classes",
        "files",
    )
    return {f: getattr(small_index(), f) for f in fields}


LONG = torch.long


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            {"boxes": torch.zeros(1, 3)},
            CCGShapeError,
            r"`boxes` must have shape \(M, 4\) .*\(1, 3\)",
        ),
        ({"boxes": torch.zeros(1, 4, dtype=LONG)}, CCGDTypeError, r"`boxes` must have a float"),
        ({"labels": [[1.0]]}, CCGDTypeError, r"`labels` must be a torch\.Tensor, got list\."),
        (
            {"labels": torch.full((3, 2), 2.0)},
            CCGValueRangeError,
            r"`labels` must hold only 0 and 1",
        ),
        ({"labels": torch.eye(3, 2).bool()}, CCGDTypeError, r"`labels` must have a float dtype"),
        ({"patient_ids": torch.zeros(3)}, CCGDTypeError, r"`patient_ids` must have a int dtype"),
        (
            {"patient_ids": torch.zeros(2, dtype=LONG)},
            CCGShapeError,
            r"`patient_ids` .*\(3,\), got \(2,\)",
        ),
        (
            {"box_image_index": torch.tensor([3])},
            CCGValueRangeError,
            r"`box_image_index` must hold indices in \[0, 3\), got",
        ),
        (
            {"box_class": torch.tensor([-1])},
            CCGValueRangeError,
            r"`box_class` must hold indices in \[0, 2\), got",
        ),
        ({"box_class": torch.tensor([0.0])}, CCGDTypeError, r"`box_class` must have a int dtype"),
        (
            {"boxed_classes": ("x", "z")},
            CCGValueRangeError,
            r"`boxed_classes` must be among `class_names` \(x, y\), got 'z'\.",
        ),
        (
            {"class_names": ("x", "x")},
            CCGValueRangeError,
            r"`class_names` must hold each name once, got 1 more than once: 'x'\.",
        ),
        ({"images": "abc"}, CCGDTypeError, r"`images` must be a list of str, got str\."),
        ({"images": [0, 1, 2]}, CCGDTypeError, r"`images` must be a list of str, got a int\."),
        (
            {"image_sizes": torch.zeros(3, 2, dtype=LONG)},
            CCGValueRangeError,
            r"`image_sizes` must hold positive \(width, height\), got 3",
        ),
        ({"image_sizes": torch.ones(3, 2)}, CCGDTypeError, r"`image_sizes` must have a int dtype"),
        ({"files": None}, CCGDTypeError, r"`files` must be a list, got NoneType\."),
    ],
)
def test_radiograph_index_names_each_bad_field(change, error, match):
    with pytest.raises(error, match=match):
        RadiographIndex(**{**index_fields(), **change})


def test_radiograph_index_value_checks_follow_the_switch():
    bad = {**index_fields(), "labels": torch.full((3, 2), 2.0)}
    with set_value_checks(False):
        RadiographIndex(**bad)  # a value check: off with the others


@pytest.mark.parametrize(
    ("size", "error", "match"),
    [
        (
            0,
            CCGValueRangeError,
            r"`size` must be a positive int or two positive ints \(W, H\), got 0\.",
        ),
        (-5, CCGValueRangeError, r"`size` must be a positive int .*, got -5\."),
        (True, CCGValueRangeError, r"`size` must be a positive int .*, got True\."),
        (2.5, CCGValueRangeError, r"`size` must be a positive int .*, got 2\.5\."),
        ((1, 2, 3), CCGValueRangeError, r"`size` must be a positive int .*, got \(1, 2, 3\)\."),
        ("500", CCGValueRangeError, r"`size` must be a positive int .*, got '500'\."),
        ((10, 0), CCGValueRangeError, r"`size` must be a positive int .*, got \(10, 0\)\."),
    ],
)
def test_boxes_at_size_names_a_bad_size(size, error, match):
    with pytest.raises(error, match=match):
        boxes_at_size(small_index(), size)


def test_boxes_at_size_takes_numpy_sizes_as_ints():
    index = small_index()
    expected = boxes_at_size(index, (20, 40))
    assert torch.equal(boxes_at_size(index, (np.int64(20), np.int64(40))), expected)
    assert torch.equal(boxes_at_size(index, np.int32(20)), boxes_at_size(index, 20))


def test_boxes_at_size_names_a_bad_index():
    with pytest.raises(CCGDTypeError, match=r"`index` must be a DatasetIndex .*, got NoneType\."):
        boxes_at_size(None, 10)  # type: ignore[arg-type]
    index = small_index()
    with set_value_checks(False):  # built unchecked, then checked where it is used
        index = RadiographIndex(**{**index_fields(), "image_sizes": torch.zeros(3, 2, dtype=LONG)})
    with pytest.raises(CCGValueRangeError, match=r"`index\.image_sizes` must hold positive"):
        boxes_at_size(index, 10)


def test_boxes_at_size_takes_a_rectangle():
    assert boxes_at_size(small_index(), (20, 40)).tolist() == [[2.0, 4.0, 10.0, 20.0]]


# --------------------------------------------------------------------------- the settings


def vindr_like_index(n_annotated=50, n_healthy=150):
    """An index like VinDr-CXR's: one patient per image, most images without finding."""
    n = n_annotated + n_healthy
    rng = np.random.default_rng(0)
    annotated = rng.permutation(n)[:n_annotated]
    return RadiographIndex(
        dataset_name="VinDr-like",
        images=[f"{i:032x}" for i in range(n)],
        labels=torch.zeros(n, 14).index_fill_(0, torch.from_numpy(annotated), 1.0),
        patient_ids=torch.arange(n),
        boxes=torch.tensor([[1.0, 1.0, 9.0, 9.0]]).repeat(n_annotated, 1),
        box_image_index=torch.from_numpy(np.sort(annotated)),
        box_class=torch.zeros(n_annotated, dtype=torch.long),
        image_sizes=torch.full((n, 2), 2000),
        class_names=tuple(f"c{i}" for i in range(14)),
        boxed_classes=tuple(f"c{i}" for i in range(14)),
        files=[None] * n,
    )


@pytest.mark.parametrize(
    ("setting", "train_annotated", "test", "train_unannotated"),
    [("a", 40, 10, 75), ("b", 0, 50, 150), ("c", 20, 30, 150)],
)
def test_the_settings_are_fractions_of_the_annotated_images_of_any_dataset(
    setting, train_annotated, test, train_unannotated
):
    index = vindr_like_index()
    tested = set()
    for fold in range(5):
        split = dataset_splits(index, setting, fold, seed=1)
        summary = split_summary(index, split)
        assert summary["train_annotated"] == train_annotated
        assert summary["test"] == summary["test_annotated"] == test
        assert summary["train"] - summary["train_annotated"] == train_unannotated
        assert summary["train_sharing_patient_with_test"] == 0  # one image per patient
        tested |= set(split["test"])
    assert len(tested) == 50  # the folds together test every annotated image


def test_dataset_splits_is_the_chestxray14_function():
    assert dataset_splits is chestxray14_splits


def test_split_files_round_trip_on_any_index(tmp_path):
    index = vindr_like_index()
    split = dataset_splits(index, "a", 2)
    out = save_split(split, tmp_path / "split")
    assert read_split_files(out / "train.txt", out / "test.txt", index) == split
    (tmp_path / "bad.txt").write_text("nope\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: image 'nope' is not in the index"):
        read_split_files(tmp_path / "bad.txt", out / "test.txt", index)


# --------------------------------------------------------------------------- box fusion


def test_fuse_boxes_clusters_by_iou_with_the_running_mean():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 5.0, 10.0, 15.0]])
    fused, cluster = fuse_boxes(boxes, 0.5)
    # IoU(box 1, box 0) = 100/120 > 0.5: joins; box 2 vs mean (0, 0, 10, 11): 60/150 = 0.4
    assert cluster.tolist() == [0, 0, 1]
    assert fused.tolist() == [[0.0, 0.0, 10.0, 11.0], [0.0, 5.0, 10.0, 15.0]]
    assert fuse_boxes(boxes, 0.3)[1].tolist() == [0, 0, 0]
    assert fuse_boxes(boxes, 0.9)[1].tolist() == [0, 1, 2]


def test_fuse_boxes_of_nothing_and_bad_arguments():
    fused, cluster = fuse_boxes(torch.zeros(0, 4))
    assert fused.shape == (0, 4)
    assert cluster.shape == (0,)
    with pytest.raises(
        CCGShapeError, match=r"`boxes` must have 2 dimensions \(n, 4\), got shape \(3,\)\."
    ):
        fuse_boxes(torch.zeros(3))
    with pytest.raises(CCGValueRangeError, match=r"`iou_threshold` must be in \[0, 1\), got -0.1"):
        fuse_boxes(torch.zeros(1, 4), -0.1)
