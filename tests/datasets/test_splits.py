"""The paper's three data settings: sizes, folds, patient-disjointness, determinism, split files."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given

from ccg_layers import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.datasets import (
    ChestXray14Index,
    chestxray14_splits,
    patient_folds,
    read_split_files,
    save_split,
    split_summary,
)


def make_index(
    n_unannotated: int, annotated_patients: list[int], *, seed: int = 0, shared_patients: int = 0
) -> ChestXray14Index:
    """An index whose annotated images belong to patients with the given numbers of images.

    The unannotated images belong to their own patients, except ``shared_patients`` of them,
    which belong to annotated patients (as in the real data, where annotated patients also
    have unannotated follow-ups).
    """
    rng = np.random.default_rng(seed)
    ann_pids = np.repeat(np.arange(1, len(annotated_patients) + 1), annotated_patients)
    unann_pids = np.arange(len(annotated_patients) + 1, len(annotated_patients) + 1 + n_unannotated)
    if shared_patients:
        unann_pids[:shared_patients] = rng.choice(ann_pids, shared_patients)
    pids = np.concatenate([ann_pids, unann_pids])
    order = rng.permutation(len(pids))  # interleave annotated and unannotated rows
    pids = pids[order]
    annotated = (np.arange(len(order)) < len(ann_pids))[order]
    n = len(pids)
    counter: dict[int, int] = {}
    names = []
    for p in pids.tolist():
        counter[p] = counter.get(p, -1) + 1
        names.append(f"{p:08d}_{counter[p]:03d}.png")
    rows = np.flatnonzero(annotated)
    return ChestXray14Index(
        images=names,
        labels=torch.zeros(n, 14),
        patient_ids=torch.from_numpy(pids).long(),
        follow_ups=torch.zeros(n, dtype=torch.long),
        view_positions=["PA"] * n,
        boxes=torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(len(rows), 1),
        box_image_index=torch.from_numpy(rows).long(),
        box_class=torch.zeros(len(rows), dtype=torch.long),
    )


@pytest.fixture(scope="module")
def index() -> ChestXray14Index:
    # 100 annotated images of 70 patients (some with several), 301 unannotated, 40 of which
    # belong to annotated patients
    sizes = [1] * 50 + [2] * 15 + [4] * 5
    return make_index(301, sizes, shared_patients=40)


def annotated_names(index):
    return {index.images[i] for i in index.box_image_index.tolist()}


def patients_of(index, names):
    return {int(index.patient_ids[index.position(n)]) for n in names}


# --------------------------------------------------------------------------- the settings


@pytest.mark.parametrize("fold", range(5))
def test_setting_a_sizes_and_folds(index, fold):
    split = chestxray14_splits(index, "a", fold)
    ann = annotated_names(index)
    train_ann = [n for n in split["train"] if n in ann]
    assert set(split["test"]) <= ann
    assert len(split["test"]) == 20
    assert len(train_ann) == 80
    assert len(split["train"]) - len(train_ann) == 301 // 2  # 50% of the unannotated
    assert not set(split["train"]) & set(split["test"])


def test_setting_a_test_parts_partition_the_annotated_images(index):
    tests = [set(chestxray14_splits(index, "a", f)["test"]) for f in range(5)]
    assert set().union(*tests) == annotated_names(index)
    assert sum(len(t) for t in tests) == 100  # disjoint
    unann = [
        {n for n in chestxray14_splits(index, "a", f)["train"]} - annotated_names(index)
        for f in range(5)
    ]
    assert all(u == unann[0] for u in unann)  # the same 50% for every fold


def test_setting_b_uses_everything(index):
    split = chestxray14_splits(index, "b")
    ann = annotated_names(index)
    assert set(split["test"]) == ann
    assert len(split["test"]) == 100
    assert set(split["train"]) == set(index.images) - ann
    assert len(split["train"]) == 301
    for f in range(1, 5):
        assert chestxray14_splits(index, "b", f) == split


@pytest.mark.parametrize("fold", range(5))
def test_setting_c_trains_on_parts_f_and_f_plus_1(index, fold):
    split = chestxray14_splits(index, "c", fold)
    ann = annotated_names(index)
    train_ann = {n for n in split["train"] if n in ann}
    assert len(train_ann) == 40
    assert len(split["test"]) == 60
    assert len(split["train"]) == 301 + 40
    parts = [set(chestxray14_splits(index, "a", f)["test"]) for f in range(5)]
    assert train_ann == parts[fold] | parts[(fold + 1) % 5]
    assert set(split["test"]) == ann - train_ann


@pytest.mark.parametrize("setting", ["a", "b", "c"])
@pytest.mark.parametrize("fold", range(5))
def test_annotated_images_are_split_by_patient(index, setting, fold):
    split = chestxray14_splits(index, setting, fold)
    ann = annotated_names(index)
    train_ann_patients = patients_of(index, [n for n in split["train"] if n in ann])
    assert not train_ann_patients & patients_of(index, split["test"])


@pytest.mark.parametrize("setting", ["a", "b", "c"])
@pytest.mark.parametrize("fold", range(5))
def test_patient_disjoint_option(index, setting, fold):
    default = chestxray14_splits(index, setting, fold)
    disjoint = chestxray14_splits(index, setting, fold, patient_disjoint=True)
    assert disjoint["test"] == default["test"]
    assert set(disjoint["train"]) <= set(default["train"])
    assert not patients_of(index, disjoint["train"]) & patients_of(index, disjoint["test"])
    summary = split_summary(index, default)
    dropped = len(default["train"]) - len(disjoint["train"])
    assert dropped == summary["train_sharing_patient_with_test"]
    assert split_summary(index, disjoint)["train_sharing_patient_with_test"] == 0


def test_default_split_reports_shared_patients(index):
    # the unannotated follow-ups of annotated patients make the default split overlap
    split = chestxray14_splits(index, "b")
    test_patients = patients_of(index, split["test"])
    brute = sum(int(index.patient_ids[index.position(n)]) in test_patients for n in split["train"])
    summary = split_summary(index, split)
    assert summary["train_sharing_patient_with_test"] == brute > 0
    assert summary["train"] == 301
    assert summary["test"] == 100
    assert summary["test_annotated"] == 100
    assert summary["train_annotated"] == 0
    assert summary["test_patients"] == 70


def test_splits_are_deterministic_by_seed(index):
    a = chestxray14_splits(index, "a", 2, seed=7)
    assert chestxray14_splits(index, "a", 2, seed=7) == a
    b = chestxray14_splits(index, "a", 2, seed=8)
    assert b["test"] != a["test"]
    assert b["train"] != a["train"]


def test_names_are_in_index_order(index):
    split = chestxray14_splits(index, "a", 0)
    for side in ("train", "test"):
        rows = [index.position(n) for n in split[side]]
        assert rows == sorted(rows)


def test_paper_counts_on_an_index_of_the_real_size():
    # 112,120 images; 880 annotated of 726 patients; 111,240 unannotated
    sizes = [1] * 620 + [2] * 74 + [3] * 24 + [4] * 8  # 620 + 148 + 72 + 32 = 872 ... + 8
    sizes[-1] = 12
    assert sum(sizes) == 880
    assert len(sizes) == 726
    big = make_index(111_240, sizes, seed=1)
    a = chestxray14_splits(big, "a", 3)
    assert len(a["test"]) == 176
    assert len(a["train"]) == 55_620 + 704
    b = chestxray14_splits(big, "b")
    assert len(b["test"]) == 880
    assert len(b["train"]) == 111_240
    c = chestxray14_splits(big, "c", 4)
    assert len(c["test"]) == 528
    assert len(c["train"]) == 111_240 + 352


# --------------------------------------------------------------------------- patient folds


@given(
    st.lists(st.integers(1, 6), min_size=5, max_size=60),  # at least one patient per part
    st.integers(0, 2**31 - 1),
)
def test_patient_folds_never_split_a_patient_and_balance_sizes(group_sizes, seed):
    pids = np.repeat(np.arange(len(group_sizes)), group_sizes)
    parts = patient_folds(pids, 5, seed)
    assert parts.shape == pids.shape
    assert parts.min() >= 0
    assert parts.max() < 5
    for p in range(len(group_sizes)):
        assert len(set(parts[pids == p].tolist())) == 1
    counts = np.bincount(parts, minlength=5)
    # greedy largest-first into the part with the most room: no part exceeds its target by
    # more than the largest group
    assert counts.max() - len(pids) / 5 <= max(group_sizes)


def test_patient_folds_exact_when_singletons_allow():
    pids = np.concatenate([np.repeat(np.arange(10), 3), np.arange(10, 80)])  # 100 items
    counts = np.bincount(patient_folds(pids, 5, 0), minlength=5)
    assert counts.tolist() == [20] * 5


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("setting", ["d", "A", None, 1])
def test_bad_setting(index, setting):
    with pytest.raises(
        CCGValueRangeError, match=rf"`setting` must be one of 'a', 'b', 'c', got {setting!r}\."
    ):
        chestxray14_splits(index, setting)


@pytest.mark.parametrize("fold", [5, -1, True, 2.0, "0", None])
def test_bad_fold(index, fold):
    with pytest.raises(
        CCGValueRangeError, match=rf"`fold` must be an int in \[0, 5\), got {fold!r}\."
    ):
        chestxray14_splits(index, "a", fold)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([1, 1, 2], 3, 0), CCGValueRangeError, r"number of patients \(2\), else a part is empty"),
        (
            ([1, 2, 3], 4, 0),
            CCGValueRangeError,
            r"`num_folds` must be at most the number of patients \(3\), else a part is empty, got 4\.",
        ),
        (([1, 2, 3], 0, 0), CCGValueRangeError, r"`num_folds` must be a positive int, got 0\."),
        (([1, 2, 3], -1, 0), CCGValueRangeError, r"`num_folds` must be a positive int, got -1\."),
        (
            ([1, 2, 3], 2.5, 0),
            CCGValueRangeError,
            r"`num_folds` must be a positive int, got 2\.5\.",
        ),
        (([1, 2, 3], 2, "a"), CCGValueRangeError, r"`seed` must be a non-negative int, got 'a'\."),
        (([1, 2, 3], 2, -1), CCGValueRangeError, r"`seed` must be a non-negative int, got -1\."),
        (
            ([[1, 2], [3, 4]], 2, 0),
            CCGShapeError,
            r"`patient_ids` must have 1 dimension \(n,\), got shape \(2, 2\)\.",
        ),
    ],
)
def test_patient_folds_names_each_bad_argument(args, error, match):
    with pytest.raises(error, match=match):
        patient_folds(np.array(args[0]), *args[1:])


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("a", True), {}, ValueError, r"`fold` must be an int in \[0, 5\), got True"),
        (
            ("a",),
            {"seed": "x"},
            CCGValueRangeError,
            r"`seed` must be a non-negative int, got 'x'\.",
        ),
        (
            ("a",),
            {"patient_disjoint": "no"},
            CCGValueRangeError,
            r"`patient_disjoint` must be True or False",
        ),
    ],
)
def test_chestxray14_splits_names_each_bad_argument(index, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        chestxray14_splits(index, *args, **kwargs)


def test_chestxray14_splits_names_a_missing_index():
    with pytest.raises(CCGDTypeError, match=r"`index` must be a DatasetIndex .*, got NoneType\."):
        chestxray14_splits(None, "a")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("split", "error", "match"),
    [
        (
            ["a"],
            CCGDTypeError,
            r"`split` must be a dict \{'train': \[\.\.\.\], 'test': \[\.\.\.\]\} of image names, got list\.",
        ),
        (
            {"train": []},
            CCGValueRangeError,
            r"`split` must have the keys 'train' and 'test', got \['train'\] \(missing 'test'\)\.",
        ),
        (
            {"train": [], "test": "abc"},
            CCGDTypeError,
            r"`split\['test'\]` must be a list of image names \(str\), got str\.",
        ),
        (
            {"train": [1], "test": []},
            CCGDTypeError,
            r"`split\['train'\]` must be a list of image names \(str\), got list holding other types\.",
        ),
        (
            {"train": ["00000001_000.png", "00000002_000.png", "00000001_000.png"], "test": []},
            CCGValueRangeError,
            r"`split\['train'\]` must name each image once, got 1 more than once: "
            r"'00000001_000\.png'\.",
        ),
        (
            {"train": ["00000001_000.png"], "test": ["00000002_000.png", "00000001_000.png"]},
            CCGValueRangeError,
            r"`split` must not name an image on both sides, got 1 in 'train' and 'test': "
            r"'00000001_000\.png'\.",
        ),
    ],
)
def test_split_summary_and_save_split_name_a_bad_split(index, tmp_path, split, error, match):
    with pytest.raises(error, match=match):
        split_summary(index, split)
    with pytest.raises(error, match=match):
        save_split(split, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_split_summary_names_the_unknown_images(index):
    split = {"train": [index.images[0], "zzz.png"], "test": []}
    with pytest.raises(
        CCGValueRangeError,
        match=r"`split\['train'\]` must name images of the ChestX-ray14 index, got 1 that are "
        r"not: 'zzz\.png'\.",
    ):
        split_summary(index, split)


def test_save_split_names_a_bad_summary(tmp_path):
    with pytest.raises(CCGDTypeError, match=r"`summary` must be a dict or None, got list\."):
        save_split({"train": [], "test": []}, tmp_path, [1])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- split files


def test_save_and_read_split_files_round_trip(index, tmp_path):
    split = chestxray14_splits(index, "c", 1)
    summary = {**split_summary(index, split), "setting": "c", "fold": 1, "seed": 0}
    out = save_split(split, tmp_path / "run", summary)
    assert (out / "train.txt").read_text().splitlines() == split["train"]
    assert json.loads((out / "split.json").read_text())["test"] == 60
    assert read_split_files(out / "train.txt", out / "test.txt", index) == split


def test_read_split_files_skips_blank_and_comment_lines(index, tmp_path):
    (tmp_path / "tr.txt").write_text(f"# another group's split\n{index.images[0]}\n\n")
    (tmp_path / "te.txt").write_text(f"{index.images[1]}\n")
    split = read_split_files(tmp_path / "tr.txt", tmp_path / "te.txt", index)
    assert split == {"train": [index.images[0]], "test": [index.images[1]]}


def test_read_split_files_unknown_name(index, tmp_path):
    (tmp_path / "tr.txt").write_text(f"{index.images[0]}\n99999999_000.png\n")
    (tmp_path / "te.txt").write_text("")
    with pytest.raises(
        ValueError, match=r"tr\.txt:2: image '99999999_000.png' is not in the index"
    ):
        read_split_files(tmp_path / "tr.txt", tmp_path / "te.txt", index)


def test_read_split_files_name_on_both_sides(index, tmp_path):
    (tmp_path / "tr.txt").write_text(f"{index.images[0]}\n")
    (tmp_path / "te.txt").write_text(f"{index.images[0]}\n")
    with pytest.raises(ValueError, match=r"1 image\(s\) in both .*tr\.txt and .*te\.txt"):
        read_split_files(tmp_path / "tr.txt", tmp_path / "te.txt")


def test_read_split_files_name_listed_twice(index, tmp_path):
    (tmp_path / "tr.txt").write_text(f"{index.images[0]}\n{index.images[1]}\n{index.images[0]}\n")
    (tmp_path / "te.txt").write_text("")
    with pytest.raises(
        ValueError, match=rf"tr\.txt:3: image '{index.images[0]}' is listed a second time"
    ):
        read_split_files(tmp_path / "tr.txt", tmp_path / "te.txt")
