"""The VinDr-CXR reader on small fixtures in the challenge's format: counts, the combination of
the radiologists' boxes, PNG copies and DICOM files, and one test per malformed row."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from ccg_layers.datasets import (
    VINDR_CLASS_NAMES,
    DatasetFormatError,
    DatasetIndex,
    RadiographDataset,
    collate_chestxray14,
    read_frame_sizes,
    read_vindr_cxr,
)
from tests.datasets import published_roots
from tests.datasets.malformed_rows import assert_row_is_named, assert_row_is_skipped
from tests.datasets.published_roots import VINDR_HEADER, VINDR_IMAGES, write_vindr_csv

HEADER = VINDR_HEADER
A, B, C, D = (f"{c * 32}" for c in "abcd")  # ids like the challenge's 32 hex digits
ROWS = [
    f"{A},Cardiomegaly,3,R8,100.0,200.0,300.0,260.0\n",
    f"{A},Cardiomegaly,3,R9,104.0,204.0,296.0,262.0\n",
    f"{A},Nodule/Mass,8,R10,50.0,50.0,70.0,70.0\n",
    f"{A},Pleural effusion,10,R10,10.0,300.0,100.0,400.0\n",
    f"{B},No finding,14,R8,,,,\n",
    f"{B},No finding,14,R9,,,,\n",
    f"{B},No finding,14,R10,,,,\n",
    f"{C},No finding,14,R2,,,,\n",
    f"{C},Aortic enlargement,0,R9,500.0,100.0,560.0,180.0\n",
    f"{C},Aortic enlargement,0,R10,700.0,700.0,750.0,760.0\n",
    f"{D},Pneumothorax,12,R3,0.0,0.0,40.0,80.0\n",
    f"{D},Pneumothorax,12,R4,2.0,1.0,41.0,79.0\n",
    f"{D},Pneumothorax,12,R5,1.0,0.0,40.0,80.0\n",
]
SIZES = {A: (1000, 800), B: (1000, 800), C: (2000, 2500), D: (640, 480)}
READ_WITH_SIZES = functools.partial(read_vindr_cxr, frame_sizes=SIZES)


def k(name: str) -> int:
    return VINDR_CLASS_NAMES.index(name)


def write_csv(root, rows=ROWS):
    return write_vindr_csv(root, rows)


def write_pngs(root, sizes, *, folder=VINDR_IMAGES, suffix=".png"):
    published_roots.write_pngs(root, sizes, folder=folder, suffix=suffix)


def test_counts_with_the_default_merge(tmp_path):
    index = read_vindr_cxr(write_csv(tmp_path), frame_sizes=SIZES)
    assert isinstance(index, DatasetIndex)
    assert index.images == [A, B, C, D]
    assert len(index) == 4
    assert index.annotated.tolist() == [True, False, True, True]
    assert len(index.boxes) == 6  # A: 3 (the two cardiomegaly boxes fused), C: 2, D: 1
    assert index.class_names == VINDR_CLASS_NAMES
    assert len(index.class_names) == 14
    assert index.boxed_classes == VINDR_CLASS_NAMES
    assert index.box_class.tolist() == [
        k("Cardiomegaly"),
        k("Nodule/Mass"),
        k("Pleural effusion"),
        k("Aortic enlargement"),
        k("Aortic enlargement"),
        k("Pneumothorax"),
    ]
    assert index.box_image_index.tolist() == [0, 0, 0, 2, 2, 3]
    assert index.boxes[0].tolist() == [102.0, 202.0, 298.0, 261.0]  # the mean of R8's and R9's
    torch.testing.assert_close(
        index.boxes[5],
        torch.tensor([1.0, 1 / 3, 121 / 3, 239 / 3]),  # the three readers' mean
    )
    assert torch.equal(index.labels.bool(), index.has_box)  # every finding has a box
    assert index.labels.sum(0)[k("Cardiomegaly")] == 1
    assert index.labels[1].sum() == 0
    assert index.image_sizes.tolist() == [list(s) for s in SIZES.values()]
    assert index.patient_ids.tolist() == [0, 1, 2, 3]
    assert not index.has_patient_ids


def test_all_keeps_every_radiologists_box_in_file_order(tmp_path):
    index = read_vindr_cxr(write_csv(tmp_path), combine="all", frame_sizes=SIZES)
    assert len(index.boxes) == 9
    assert index.boxes[:2].tolist() == [[100.0, 200.0, 300.0, 260.0], [104.0, 204.0, 296.0, 262.0]]
    assert index.annotated.tolist() == [True, False, True, True]
    merged = read_vindr_cxr(tmp_path, frame_sizes=SIZES)
    assert torch.equal(index.labels, merged.labels)  # the same findings, more boxes


def test_single_keeps_the_lowest_numbered_radiologists_reading(tmp_path):
    index = read_vindr_cxr(write_csv(tmp_path), combine="single", frame_sizes=SIZES)
    # A: R8 (one cardiomegaly box); C: R2 said No finding; D: R3
    assert index.boxes.tolist() == [[100.0, 200.0, 300.0, 260.0], [0.0, 0.0, 40.0, 80.0]]
    assert index.annotated.tolist() == [True, False, False, True]
    assert index.labels[2].sum() == 0
    assert index.labels[0].sum() == 1


def test_a_higher_iou_threshold_merges_less(tmp_path):
    write_csv(tmp_path)
    assert len(read_vindr_cxr(tmp_path, iou_threshold=0.95, frame_sizes=SIZES).boxes) == 8
    assert len(read_vindr_cxr(tmp_path, iou_threshold=0.0, frame_sizes=SIZES).boxes) == 6


def test_merge_does_not_depend_on_the_row_order(tmp_path):
    a = read_vindr_cxr(write_csv(tmp_path / "a"), frame_sizes=SIZES)
    b = read_vindr_cxr(write_csv(tmp_path / "b", ROWS[:4][::-1] + ROWS[4:]), frame_sizes=SIZES)
    assert torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.labels, b.labels)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"combine": "vote"}, "`combine` must be one of 'all', 'merge', 'single', got 'vote'."),
        ({"iou_threshold": 1.0}, r"`iou_threshold` must be in \[0, 1\), got 1.0"),
        ({"images": "tiff"}, r"`images` must be one of .* got 'tiff'\."),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        read_vindr_cxr(write_csv(tmp_path), frame_sizes=SIZES, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": "x"}, r"`images` must be one of 'auto', 'dicom', 'png', 'jpeg', got 'x'\."),
        ({"iou_threshold": "0.5"}, r"`iou_threshold` must be in \[0, 1\), got '0\.5'\."),
        ({"frame_sizes": [(1, 2)]}, r"`frame_sizes` must be a dict .* or None, got list\."),
        ({"skip_bad_rows": "no"}, r"`skip_bad_rows` must be True or False, got 'no'\."),
    ],
)
def test_bad_options_are_named_before_the_disk_is_read(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):  # not FileNotFoundError: no such root
        read_vindr_cxr(tmp_path / "nonexistent", **kwargs)


def test_png_copies_at_full_size_give_the_frame(tmp_path):
    write_pngs(write_csv(tmp_path), SIZES)
    index = read_vindr_cxr(tmp_path)
    assert index.image_sizes.tolist() == [list(s) for s in SIZES.values()]
    assert [p.name for p in index.find_images().values()] == [f"{n}.png" for n in SIZES]


def test_resized_copies_with_frame_sizes_scale_the_boxes_to_the_working_size(tmp_path):
    write_pngs(write_csv(tmp_path), {n: (64, 64) for n in SIZES}, suffix=".jpg")
    index = read_vindr_cxr(tmp_path, images="jpeg", frame_sizes=SIZES)
    ds = RadiographDataset(index, image_size=50)
    sample = ds[0]
    assert sample["image"].shape == (1, 50, 50)
    assert sample["labels"].shape == (14,)
    # (102, 202, 298, 261) in the 1000 x 800 frame -> x * 50/1000, y * 50/800
    torch.testing.assert_close(sample["boxes"][0], torch.tensor([5.1, 12.625, 14.9, 16.3125]))
    batch = collate_chestxray14([ds[i] for i in range(4)])
    assert batch["boxes"].shape == (6, 4)
    assert batch["box_image_index"].tolist() == [
        0,
        0,
        0,
        2,
        2,
        3,
    ]
    assert batch["has_box"].shape == (4, 14)


def test_resized_copies_without_frame_sizes_are_warned_of(tmp_path, caplog):
    write_pngs(write_csv(tmp_path), {n: (64, 64) for n in SIZES})
    with caplog.at_level("WARNING"):
        index = read_vindr_cxr(tmp_path)
    assert index.image_sizes.tolist() == [[64, 64]] * 4  # the copies' own frame: wrong
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"6 of 6 VinDr-CXR boxes reach past their PNG/JPEG image ({A}, {C}, {D}): "
    )
    assert "pass each DICOM's size as `frame_sizes`" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING"):
        read_vindr_cxr(tmp_path, frame_sizes=SIZES)  # the DICOM sizes: nothing to warn of
        write_pngs(tmp_path, SIZES)  # full-size copies frame their boxes themselves
        read_vindr_cxr(tmp_path)
    assert not caplog.records


def test_read_frame_sizes_gives_the_frame_sizes_of_a_csv(tmp_path):
    path = tmp_path / "sizes.csv"
    rows = "".join(f"{n},800,{w},{h}\n" for n, (w, h) in SIZES.items())
    path.write_text("image_id,copy,width,height\n" + rows)  # other columns allowed
    assert read_frame_sizes(path) == SIZES
    write_pngs(write_csv(tmp_path), {n: (64, 64) for n in SIZES}, suffix=".jpg")
    index = read_vindr_cxr(tmp_path, images="jpeg", frame_sizes=read_frame_sizes(path))
    assert index.image_sizes.tolist() == [list(s) for s in SIZES.values()]
    path.write_text("id,width,height\nx,3,4\n")
    assert read_frame_sizes(path, id_column="id") == {"x": (3, 4)}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("image_id,width\na,3\n", r"sizes.csv:1: header must have the columns image_id, "),
        ("image_id,width,height\na,3,four\n", r"sizes.csv:2: expected an image_id and a "),
        ("image_id,width,height\na,0,4\n", r"positive integer width and height, got 'a', '0'"),
        ("image_id,width,height\n,3,4\n", r"sizes.csv:2: expected an image_id"),
        ("image_id,width,height\na,3,4\n\na,3,4\n", r"sizes.csv:4: image_id 'a' is listed twice"),
        ("image_id,width,height\na,3\n", r"sizes.csv:2: expected 3 fields"),
    ],
)
def test_read_frame_sizes_names_a_malformed_row(tmp_path, text, match):
    path = tmp_path / "sizes.csv"
    path.write_text(text)
    with pytest.raises(DatasetFormatError, match=match):
        read_frame_sizes(path)


def test_read_frame_sizes_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.csv: no such file"):
        read_frame_sizes(tmp_path / "nope.csv")


def test_an_image_without_file_or_frame_size_is_named(tmp_path):
    write_pngs(write_csv(tmp_path), {A: (10, 10), B: (10, 10), C: (10, 10)})
    with pytest.raises(
        FileNotFoundError, match=f"1 VinDr-CXR image.* frame of their boxes is unknown: {D}"
    ):
        read_vindr_cxr(tmp_path)


def test_the_dataset_names_a_missing_image(tmp_path):
    write_csv(tmp_path)
    index = read_vindr_cxr(tmp_path, frame_sizes=SIZES)
    with pytest.raises(FileNotFoundError, match=f"4 VinDr-CXR image\\(s\\) not found .*{A}"):
        RadiographDataset(index)


@pytest.mark.extras  # needs the `dicom` extra
def test_dicom_files_give_the_frame_and_the_images(tmp_path):
    from tests.datasets.dicom_files import write_dicom

    write_csv(tmp_path)
    syntaxes = ["jpeg2000", "rle", "jpeg-ls", "explicit"]
    for (name, (w, h)), syntax in zip(SIZES.items(), syntaxes, strict=True):
        w, h = w // 10, h // 10
        pixels = np.linspace(0, 4095, w * h).reshape(h, w).astype(np.uint16)
        write_dicom(
            tmp_path / "train" / f"{name}.dicom",
            pixels,
            syntax=syntax,
            bits_stored=12,
            photometric="MONOCHROME1" if name == A else "MONOCHROME2",
        )
    write_pngs(tmp_path, {A: (5, 5)})  # a PNG copy beside the DICOM: "auto" takes the DICOM
    index = read_vindr_cxr(tmp_path)
    assert index.image_sizes.tolist() == [[w // 10, h // 10] for w, h in SIZES.values()]
    assert all(p.suffix == ".dicom" for p in index.find_images().values())
    ds = RadiographDataset(index, image_size=32)
    first, second = ds[0]["image"], ds[1]["image"]
    assert int(first[0, 0, 0]) > 200
    assert int(second[0, 0, 0]) < 50
    assert (
        read_vindr_cxr(tmp_path, images="png", frame_sizes=SIZES).find_images()[A].suffix == ".png"
    )


# --------------------------------------------------------------------------- malformed rows

BAD_ROWS = {
    "fields": (f"{A},Cardiomegaly,3,R8,1,2,3\n", "expected 8 fields .* got 7"),
    "empty_image_id": (",Cardiomegaly,3,R8,1,2,3,4\n", "image_id must be a file stem, got ''"),
    "empty_rad_id": (f"{A},Cardiomegaly,3,,1,2,3,4\n", "rad_id is empty"),
    "unknown_class": (f"{A},Heart,3,R8,1,2,3,4\n", "unknown class 'Heart' with class_id '3'"),
    "class_id_mismatch": (
        f"{A},Cardiomegaly,4,R8,1,2,3,4\n",
        "unknown class 'Cardiomegaly' with class_id '4'; expected 3",
    ),
    "box_on_no_finding": (f"{B},No finding,14,R1,1,2,3,4\n", "a box on 'No finding' for image"),
    "finding_without_box": (f"{A},Cardiomegaly,3,R1,,,,\n", "a Cardiomegaly finding without a box"),
    "not_a_number": (
        f"{A},Cardiomegaly,3,R1,1,2,x,4\n",
        "x_min, y_min, x_max, y_max of a Cardiomegaly box must be numbers, got \\['1', '2', 'x', '4'\\]",
    ),
    "not_finite": (f"{A},Cardiomegaly,3,R1,1,2,inf,4\n", "box must be finite and non-negative"),
    "negative": (f"{A},Cardiomegaly,3,R1,-1,2,3,4\n", "box must be finite and non-negative"),
    "inverted": (
        f"{A},Cardiomegaly,3,R1,30,2,3,4\n",
        "inverted or empty box; expected x_min < x_max",
    ),
    "empty_box": (f"{A},Cardiomegaly,3,R1,1,4,3,4\n", "inverted or empty box"),
    "duplicate": (ROWS[0], "duplicate of line 2"),
    "no_finding_and_finding": (
        f"{A},No finding,14,R8,,,,\n",
        f"radiologist R8 marks image {A} both 'No finding' and a finding \\(line 2\\)",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_a_malformed_row_is_named_by_file_and_line(tmp_path, kind):
    row, match = BAD_ROWS[kind]
    write_csv(tmp_path, [*ROWS, row])
    assert_row_is_named(READ_WITH_SIZES, tmp_path, "train.csv", len(ROWS) + 2, match)


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_skip_bad_rows_logs_and_skips_it(tmp_path, kind, caplog):
    write_csv(tmp_path, [*ROWS, BAD_ROWS[kind][0]])
    good = write_csv(tmp_path / "good")
    assert_row_is_skipped(READ_WITH_SIZES, tmp_path, good, "train.csv", len(ROWS) + 2, caplog)


def test_a_header_without_a_column_is_named(tmp_path):
    (tmp_path / "train.csv").write_text(HEADER.replace("rad_id,", "") + "".join(ROWS))
    with pytest.raises(
        DatasetFormatError, match=r"train\.csv:1: header must have .* \(missing rad_id\)"
    ):
        read_vindr_cxr(tmp_path, frame_sizes=SIZES)


def test_an_empty_file_is_named(tmp_path):
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(DatasetFormatError, match=r"train\.csv:1: the file is empty"):
        read_vindr_cxr(tmp_path)


def test_a_missing_csv_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.csv"):
        read_vindr_cxr(tmp_path)
