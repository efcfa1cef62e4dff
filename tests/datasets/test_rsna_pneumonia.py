"""The RSNA Pneumonia reader on small fixtures in the challenge's format: counts, PNG and DICOM
images, and one test per malformed row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ccg_layers.datasets import (
    RSNA_CLASS_NAMES,
    DatasetFormatError,
    RadiographDataset,
    read_rsna_pneumonia,
)
from tests.datasets.malformed_rows import assert_row_is_named, assert_row_is_skipped
from tests.datasets.published_roots import RSNA_CSV, RSNA_HEADER, write_rsna_csv

CSV, HEADER = RSNA_CSV, RSNA_HEADER
P = [f"0004cfab-14fd-4e49-80ba-63a80b6bddd{i}" for i in range(4)]  # ids like the challenge's
ROWS = [
    f"{P[0]},,,,,0\n",
    f"{P[1]},264.0,152.0,213.0,379.0,1\n",
    f"{P[1]},562.0,152.0,256.0,453.0,1\n",
    f"{P[2]},,,,,0\n",
    f"{P[3]},323.0,577.0,160.0,104.0,1\n",
]


def write_csv(root, rows=ROWS):
    return write_rsna_csv(root, rows)


def test_counts(tmp_path):
    index = read_rsna_pneumonia(write_csv(tmp_path))
    assert index.images == P
    assert index.class_names == RSNA_CLASS_NAMES == ("Lung Opacity",)
    assert index.labels.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert index.annotated.tolist() == [False, True, False, True]
    assert index.boxes.tolist() == [
        [264.0, 152.0, 477.0, 531.0],
        [562.0, 152.0, 818.0, 605.0],
        [323.0, 577.0, 483.0, 681.0],
    ]
    assert index.box_image_index.tolist() == [1, 1, 3]
    assert index.box_class.tolist() == [0, 0, 0]
    assert index.image_sizes.tolist() == [[1024, 1024]] * 4  # the publishers' frame
    assert index.patient_ids.tolist() == [0, 1, 2, 3]
    assert not index.has_patient_ids


def test_frame_sizes_override_the_published_frame(tmp_path):
    index = read_rsna_pneumonia(write_csv(tmp_path), frame_sizes={P[1]: (2048, 2048)})
    assert index.image_sizes[:2].tolist() == [[1024, 1024], [2048, 2048]]


def test_png_copies_at_512_give_boxes_at_the_working_size(tmp_path):
    write_csv(tmp_path)
    folder = tmp_path / "stage_2_train_images"
    folder.mkdir()
    for i, name in enumerate(P):
        Image.fromarray(np.full((512, 512), 30 * i, dtype=np.uint8)).save(folder / f"{name}.png")
    ds = RadiographDataset(read_rsna_pneumonia(tmp_path), image_size=256)
    sample = ds[1]
    assert sample["image"].shape == (1, 256, 256)
    assert sample["boxes"].tolist() == [[66.0, 38.0, 119.25, 132.75], [140.5, 38.0, 204.5, 151.25]]
    assert sample["labels"].tolist() == [1.0]
    assert int(ds[3]["image"][0, 0, 0]) == 90


@pytest.mark.extras  # needs the `dicom` extra
def test_dicom_files_in_the_published_layout(tmp_path):
    from tests.datasets.dicom_files import write_dicom

    write_csv(tmp_path)
    for i, name in enumerate(P):  # RSNA: 8-bit MONOCHROME2, JPEG baseline
        pixels = np.full((64, 64), 20 + 60 * i, dtype=np.uint8)
        pixels[0, 0] = 0  # so that min-max keeps the level
        pixels[-1, -1] = 255
        write_dicom(
            tmp_path / "stage_2_train_images" / f"{name}.dcm", pixels, syntax="jpeg-baseline"
        )
    index = read_rsna_pneumonia(tmp_path, images="dicom")
    assert all(p.suffix == ".dcm" for p in index.find_images().values())
    ds = RadiographDataset(index, image_size=64)
    levels = [int(ds[i]["image"][0, 32, 32]) for i in range(4)]
    assert [abs(v - (20 + 60 * i)) <= 4 for i, v in enumerate(levels)] == [True] * 4


BAD_ROWS = {
    "fields": (f"{P[0]},1,2,3,0\n", "expected 6 fields .* got 5"),
    "empty_patient_id": (",1,2,3,4,1\n", "patientId must be a file stem, got ''"),
    "bad_target": (f"{P[3]},1,2,3,4,2\n", "Target must be 0 or 1, got '2'"),
    "box_on_target_0": (f"{P[0]},1,2,3,4,0\n", "a box on a Target 0 row of"),
    "target_1_without_box": (f"{P[3]},,,,,1\n", "a Target 1 row of .* without a box"),
    "not_a_number": (f"{P[3]},1,2,x,4,1\n", "x, y, width, height must be numbers"),
    "not_finite": (f"{P[3]},1,2,nan,4,1\n", "box must be finite with x, y >= 0"),
    "negative": (f"{P[3]},-1,2,3,4,1\n", "box must be finite with x, y >= 0"),
    "empty_box": (
        f"{P[3]},1,2,0,4,1\n",
        "box must be finite .* width, height > 0, got \\(1.0, 2.0, 0.0, 4.0\\)",
    ),
    "duplicate_box": (ROWS[1], "duplicate of line 3"),
    "duplicate_no_box": (ROWS[0], "duplicate of line 2"),
    "both_targets": (
        f"{P[0]},1,2,3,4,1\n",
        f"image {P[0]} has Target 1 here and Target 0 on line 2",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_a_malformed_row_is_named_by_file_and_line(tmp_path, kind):
    row, match = BAD_ROWS[kind]
    write_csv(tmp_path, [*ROWS, row])
    assert_row_is_named(read_rsna_pneumonia, tmp_path, CSV, len(ROWS) + 2, match)


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_skip_bad_rows_logs_and_skips_it(tmp_path, kind, caplog):
    write_csv(tmp_path, [*ROWS, BAD_ROWS[kind][0]])
    good = write_csv(tmp_path / "good")
    assert_row_is_skipped(read_rsna_pneumonia, tmp_path, good, CSV, len(ROWS) + 2, caplog)


def test_a_header_without_a_column_is_named(tmp_path):
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height\n")
    with pytest.raises(DatasetFormatError, match=r"csv:1: header must have .*\(missing Target\)"):
        read_rsna_pneumonia(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": "x"}, r"`images` must be one of 'auto', 'dicom', 'png', 'jpeg', got 'x'\."),
        ({"frame_sizes": [(1, 2)]}, r"`frame_sizes` must be a dict .* or None, got list\."),
        ({"skip_bad_rows": "no"}, r"`skip_bad_rows` must be True or False, got 'no'\."),
    ],
)
def test_bad_options_are_named_before_the_disk_is_read(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):  # not FileNotFoundError: no such root
        read_rsna_pneumonia(tmp_path / "nonexistent", **kwargs)
