"""The ChestX-ray14 reader, Dataset and collate on hand-written fixtures with the real quirks."""

from __future__ import annotations

import logging
import re
import shutil
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccg_layers import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.datasets import (
    BOX_FRAME,
    CLASS_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChestXray14,
    ChestXray14FormatError,
    ChestXray14Index,
    collate_chestxray14,
    find_image_files,
    normalize_radiographs,
    read_chestxray14,
    read_radiograph,
)

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURES = DATA / "chestxray14"
NIH = DATA / "nih"
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
ROW1 = "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"


def k(name: str) -> int:
    return CLASS_NAMES.index(name)


def copy_fixture(name: str, dst: Path) -> Path:
    shutil.copytree(FIXTURES / name, dst)
    return dst


def gray_value(name: str) -> int:
    """A distinct gray level per image, so tests can tell which image a sample holds."""
    return (int(name[:8]) * 37 + int(name[9:12]) * 11) % 200 + 20


def write_images(root: Path, names: list[str], *, layout: str = "flat", size: int = 32) -> None:
    for i, name in enumerate(names):
        folder = root / "images" if layout == "flat" else root / f"images_{i % 2 + 1:03d}/images"
        folder.mkdir(parents=True, exist_ok=True)
        arr = np.full((size, size), gray_value(name), dtype=np.uint8)
        Image.fromarray(arr, mode="L").save(folder / name)


def write_csv(root: Path, entry_rows: str, bbox_rows: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017_v2020.csv").write_text(HEADER + entry_rows)
    if bbox_rows is not None:
        (root / "BBox_List_2017.csv").write_text(BBOX_HEADER + bbox_rows)
    return root


# --------------------------------------------------------------------------- the index


def test_reads_v2020_fixture_exactly():
    index = read_chestxray14(FIXTURES / "v2020")
    assert index.images == [
        "00000001_000.png",
        "00000001_001.png",
        "00000002_000.png",
        "00000003_000.png",
        "00013118_008.png",
        "00014716_007.png",
        "00027426_000.png",
        "00030805_000.png",
    ]
    assert index.labels.shape == (8, 14)
    assert index.labels.dtype == torch.float32
    expected = torch.zeros(8, 14)
    for i, names in enumerate(
        [
            ["Cardiomegaly"],
            ["Cardiomegaly", "Emphysema"],
            [],
            ["Hernia"],
            ["Atelectasis", "Infiltration"],
            ["Atelectasis", "Effusion", "Nodule"],
            [],
            ["Pneumothorax"],
        ]
    ):
        for n in names:
            expected[i, k(n)] = 1
    torch.testing.assert_close(index.labels, expected)
    assert index.patient_ids.tolist() == [1, 1, 2, 3, 13118, 14716, 27426, 30805]
    assert index.follow_ups.tolist() == [0, 1, 0, 0, 8, 7, 0, 0]
    assert index.view_positions[4] == "AP"
    # x, y, w, h -> x1, y1, x2, y2 in the 1024 frame; "Infiltrate" means Infiltration
    torch.testing.assert_close(
        index.boxes,
        torch.tensor(
            [
                [225.084745762712, 547.019216763771, 225.084745762712 + 86.7796610169491,
                 547.019216763771 + 79.1864406779661],
                [500.5, 300.25, 700.5, 450.75],
                [640.0, 600.0, 840.0, 840.0],  # the row with trailing empty fields
                [600.0, 100.0, 850.0, 500.0],
            ]
        ),
    )  # fmt: skip
    assert index.box_image_index.tolist() == [4, 4, 5, 7]
    assert index.box_class.tolist() == [
        k("Atelectasis"),
        k("Infiltration"),
        k("Effusion"),
        k("Pneumothorax"),
    ]
    assert index.box_image_index.dtype == index.box_class.dtype == torch.long
    assert index.annotated.tolist() == [False] * 4 + [True, True, False, True]
    has_box = index.has_box
    assert has_box.sum() == 4
    assert has_box[4, k("Infiltration")]
    assert not has_box[5, k("Atelectasis")]


def test_reads_original_2017_file_with_trailing_empty_fields():
    index = read_chestxray14(FIXTURES / "original")
    assert index.images == ["00000001_000.png", "00000002_000.png", "00000005_006.png"]
    assert index.labels[2, k("Infiltration")] == 1
    assert index.labels[2, k("Mass")] == 1
    assert index.boxes.tolist() == [[300.0, 400.0, 400.0, 520.0]]


def test_prefers_the_2020_file_when_both_exist(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    shutil.copy(FIXTURES / "original" / "Data_Entry_2017.csv", root)
    assert len(read_chestxray14(root)) == 8


def test_csv_only_root_needs_no_images(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    assert not (root / "images").exists()
    assert len(read_chestxray14(root).images) == 8


def test_without_bbox_file_the_index_has_no_boxes(tmp_path):
    root = write_csv(tmp_path / "d", ROW1)
    index = read_chestxray14(root)
    assert index.boxes.shape == (0, 4)
    assert index.box_image_index.shape == index.box_class.shape == (0,)
    assert not index.annotated.any()


def test_missing_label_file_names_the_expected_files(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"Data_Entry_2017_v2020\.csv or Data_Entry_2017\.csv"
    ):
        read_chestxray14(tmp_path)


def test_position_of_unknown_image_names_it():
    index = read_chestxray14(FIXTURES / "v2020")
    assert index.position("00000002_000.png") == 2
    with pytest.raises(KeyError, match=r"99999999_000\.png"):
        index.position("99999999_000.png")


# --------------------------------------------------------------------------- malformed rows


def test_bad_header_names_file_and_line(tmp_path):
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("Image,Labels\n" + ROW1)
    with pytest.raises(ChestXray14FormatError, match=r"Data_Entry_2017_v2020\.csv:1: header"):
        read_chestxray14(tmp_path)


def test_empty_label_file(tmp_path):
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("")
    with pytest.raises(ChestXray14FormatError, match=r"csv:1: the file is empty"):
        read_chestxray14(tmp_path)


def test_row_with_too_few_fields_names_line(tmp_path):
    root = write_csv(tmp_path, ROW1 + "00000002_000.png,No Finding,0,2\n")
    with pytest.raises(ChestXray14FormatError, match=r"v2020\.csv:3: expected 11 fields, got 4"):
        read_chestxray14(root)


def test_row_with_too_many_fields_names_line(tmp_path):
    root = write_csv(tmp_path, ROW1 + ROW1.replace("0_000", "2_000").strip() + ",x,y\n")
    with pytest.raises(ChestXray14FormatError, match=r"csv:3: expected 11 fields, got 13"):
        read_chestxray14(root)


def test_bad_image_name(tmp_path):
    root = write_csv(tmp_path, ROW1.replace("00000001_000.png", "img1.png"))
    with pytest.raises(
        ChestXray14FormatError, match=r"csv:2: image name must look like .*'img1.png'"
    ):
        read_chestxray14(root)


def test_duplicate_image(tmp_path):
    root = write_csv(tmp_path, ROW1 + ROW1)
    with pytest.raises(
        ChestXray14FormatError, match=r"csv:3: image 00000001_000.png is listed twice"
    ):
        read_chestxray14(root)


def test_unknown_finding_label(tmp_path):
    root = write_csv(tmp_path, ROW1.replace("Cardiomegaly", "Cardiomegaly|Flu"))
    with pytest.raises(
        ChestXray14FormatError, match=r"csv:2: unknown finding label\(s\) \['Flu'\]"
    ):
        read_chestxray14(root)


def test_no_finding_mixed_with_a_disease_is_malformed(tmp_path):
    root = write_csv(tmp_path, ROW1.replace("Cardiomegaly", "No Finding|Mass"))
    with pytest.raises(
        ChestXray14FormatError, match=r"csv:2: unknown finding label\(s\) \['No Finding'\]"
    ):
        read_chestxray14(root)


def test_non_integer_patient_id(tmp_path):
    root = write_csv(tmp_path, ROW1.replace(",0,1,57", ",0,P1,57"))
    with pytest.raises(
        ChestXray14FormatError, match=r"csv:2: Patient ID and Follow-up # must be integers"
    ):
        read_chestxray14(root)


def test_bbox_bad_header(tmp_path):
    root = write_csv(tmp_path, ROW1)
    (root / "BBox_List_2017.csv").write_text("Image,Box\n")
    with pytest.raises(ChestXray14FormatError, match=r"BBox_List_2017\.csv:1: header"):
        read_chestxray14(root)


def test_bbox_row_with_five_fields(tmp_path):
    root = write_csv(tmp_path, ROW1, "00000001_000.png,Cardiomegaly,1,2,3\n")
    with pytest.raises(
        ChestXray14FormatError, match=r"BBox_List_2017\.csv:2: expected 6 fields, got 5"
    ):
        read_chestxray14(root)


def test_bbox_non_numeric_coordinate(tmp_path):
    root = write_csv(tmp_path, ROW1, "00000001_000.png,Cardiomegaly,1,2,three,4\n")
    with pytest.raises(
        ChestXray14FormatError, match=r"BBox_List_2017\.csv:2: x, y, w, h must be numbers"
    ):
        read_chestxray14(root)


def test_bbox_non_positive_size(tmp_path):
    root = write_csv(tmp_path, ROW1, "00000001_000.png,Cardiomegaly,1,2,0,4\n")
    with pytest.raises(
        ChestXray14FormatError, match=r"csv:2: box must be finite with w > 0 and h > 0"
    ):
        read_chestxray14(root)


def test_bbox_nan_coordinate(tmp_path):
    root = write_csv(tmp_path, ROW1, "00000001_000.png,Cardiomegaly,nan,2,3,4\n")
    with pytest.raises(ChestXray14FormatError, match=r"csv:2: box must be finite"):
        read_chestxray14(root)


def test_bbox_unknown_label(tmp_path):
    root = write_csv(tmp_path, ROW1, "00000001_000.png,Heart,1,2,3,4\n")
    with pytest.raises(ChestXray14FormatError, match=r"csv:2: unknown box label 'Heart'"):
        read_chestxray14(root)


def test_bbox_on_unlisted_image(tmp_path):
    root = write_csv(tmp_path, ROW1, "00000009_000.png,Cardiomegaly,1,2,3,4\n")
    with pytest.raises(
        ChestXray14FormatError, match=r"csv:2: image 00000009_000.png is not in the label file"
    ):
        read_chestxray14(root)


def test_bbox_class_not_among_image_labels(tmp_path):
    root = write_csv(
        tmp_path, ROW1, "00000001_000.png,Cardiomegaly,1,2,3,4\n00000001_000.png,Mass,1,2,3,4\n"
    )
    with pytest.raises(
        ChestXray14FormatError, match=r"csv:3: box of class Mass on image 00000001_000.png"
    ):
        read_chestxray14(root)


def test_skip_bad_rows_logs_and_skips(tmp_path, caplog):
    rows = ROW1 + "00000002_000.png,No Finding,0,2\n" + ROW1.replace("00000001_000", "00000003_000")
    root = write_csv(
        tmp_path, rows, "00000001_000.png,Mass,1,2,3,4\n00000001_000.png,Cardiomegaly,1,2,3,4\n"
    )
    with caplog.at_level(logging.WARNING, logger="ccg_layers.datasets.chestxray14"):
        index = read_chestxray14(root, skip_bad_rows=True)
    assert index.images == ["00000001_000.png", "00000003_000.png"]
    assert index.boxes.tolist() == [[1.0, 2.0, 4.0, 6.0]]
    messages = [r.getMessage() for r in caplog.records]
    assert any("v2020.csv:3: expected 11 fields" in m for m in messages)
    assert any("BBox_List_2017.csv:2: box of class Mass" in m for m in messages)


# --------------------------------------------------------------------------- the Dataset


@pytest.fixture
def v2020_root(tmp_path: Path) -> Path:
    """A copy of the v2020 fixture with an image file for each of its rows."""
    root = copy_fixture("v2020", tmp_path / "d")
    write_images(root, read_chestxray14(root).images)
    return root


@pytest.mark.parametrize("layout", ["flat", "subfolders"])
def test_dataset_finds_images_in_both_layouts(tmp_path, layout):
    root = copy_fixture("v2020", tmp_path / "d")
    index = read_chestxray14(root)
    write_images(root, index.images, layout=layout)
    if layout == "subfolders":
        assert (root / "images_001" / "images").is_dir()
        assert (root / "images_002" / "images").is_dir()
        assert not (root / "images").exists()
    ds = ChestXray14(root, image_size=16)
    assert len(ds) == 8
    for i, name in enumerate(index.images):
        sample = ds[i]
        assert sample["name"] == name
        assert sample["index"] == i
        assert torch.equal(
            sample["image"], torch.full((1, 16, 16), gray_value(name), dtype=torch.uint8)
        )


def test_sample_content_boxes_scaled_to_working_size(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    index = read_chestxray14(root)
    write_images(root, index.images)
    ds = ChestXray14(root, image_size=64)
    s = ds[4]  # 00013118_008.png: Atelectasis and Infiltration boxes
    assert s["image"].shape == (1, 64, 64)
    assert s["image"].dtype == torch.uint8
    torch.testing.assert_close(s["labels"], index.labels[4])
    torch.testing.assert_close(s["boxes"], index.boxes[:2] * (64 / BOX_FRAME))
    assert s["box_class"].tolist() == [k("Atelectasis"), k("Infiltration")]
    expected_has_box = torch.zeros(14, dtype=torch.bool)
    expected_has_box[[k("Atelectasis"), k("Infiltration")]] = True
    assert torch.equal(s["has_box"], expected_has_box)
    empty = ds[0]
    assert empty["boxes"].shape == (0, 4)
    assert empty["box_class"].shape == (0,)
    assert not empty["has_box"].any()


def test_imagenet_normalisation(v2020_root):
    name = "00000002_000.png"
    image = ChestXray14(v2020_root, [name], image_size=8, output="imagenet")[0]["image"]
    v = gray_value(name) / 255.0
    expected = torch.stack(
        [torch.full((8, 8), (v - m) / s) for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )
    torch.testing.assert_close(image, expected)
    # the same numbers as the uint8 sample normalised on the device by the model
    raw = ChestXray14(v2020_root, [name], image_size=8)[0]["image"]
    torch.testing.assert_close(normalize_radiographs(raw[None])[0], expected)
    unit = ChestXray14(v2020_root, [name], image_size=8, output="unit")[0]["image"]
    torch.testing.assert_close(unit, torch.full((3, 8, 8), v))


def test_bad_output_form_is_rejected(v2020_root):
    with pytest.raises(
        CCGValueRangeError,
        match=r"`output` must be one of 'uint8', 'imagenet', 'unit', got 'float'\.",
    ):
        ChestXray14(v2020_root, output="float")  # type: ignore[arg-type]


def test_rgba_image_is_read_as_its_luminance(tmp_path):
    root = write_csv(tmp_path / "d", ROW1)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    (root / "images").mkdir()
    Image.fromarray(rgba, mode="RGBA").save(root / "images" / "00000001_000.png")
    image = ChestXray14(root, image_size=16)[0]["image"]
    r, g, b = (rgba[..., c].astype(np.float64) for c in range(3))
    luma = (r * 299 + g * 587 + b * 114) / 1000  # ITU-R 601-2, alpha ignored
    assert image.shape == (1, 16, 16)
    torch.testing.assert_close(image[0].double(), torch.from_numpy(luma), atol=1, rtol=0)


def test_sixteen_bit_png_is_scaled_to_unit_range(tmp_path):
    root = write_csv(tmp_path / "d", ROW1)
    (root / "images").mkdir()
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(
        root / "images" / "00000001_000.png"
    )
    image = ChestXray14(root, image_size=8)[0]["image"]
    assert torch.equal(image, torch.full((1, 8, 8), round(32768 * 255 / 65535), dtype=torch.uint8))


def test_real_nih_samples_through_the_reader(tmp_path):
    rows = ROW1 + "00027426_000.png,No Finding,0,27426,53,M,PA,2992,2991,0.143,0.143\n"
    root = write_csv(tmp_path / "d", rows)
    (root / "images").mkdir()
    for name in ("00000001_000.png", "00027426_000.png"):
        shutil.copy(NIH / name, root / "images" / name)
    ds = ChestXray14(root, image_size=256)
    ref = Image.open(NIH / "00000001_000.png")
    assert ref.mode == "L"
    assert ref.size == (512, 512)
    # 512 -> 256: the 2x2 block mean of the 8-bit file, rounded (within one gray level)
    expected = np.asarray(ref, dtype=np.float64).reshape(256, 2, 256, 2).mean(axis=(1, 3))
    got = ds[0]["image"][0].double()
    torch.testing.assert_close(got, torch.from_numpy(expected.copy()).double(), atol=1, rtol=0)
    assert ds[0]["labels"][k("Cardiomegaly")] == 1
    assert ds[1]["labels"].sum() == 0
    # a radiograph, not a constant: dark lungs, bright mediastinum
    assert (got / 255).std() > 0.15


def test_image_names_select_and_order_the_samples(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    index = read_chestxray14(root)
    write_images(root, index.images)
    names = ["00030805_000.png", "00000002_000.png"]
    ds = ChestXray14(index, names, image_size=8)
    assert ds.image_names == names
    assert len(ds) == 2
    assert ds[0]["box_class"].tolist() == [k("Pneumothorax")]
    assert ds[1]["boxes"].shape == (0, 4)


def test_image_name_not_in_index(v2020_root):
    with pytest.raises(
        CCGValueRangeError,
        match=r"`image_names` must be images of the ChestX-ray14 index, got 1 that are not: "
        r"'00000099_000\.png'",
    ):
        ChestXray14(v2020_root, ["00000099_000.png"])


def test_missing_image_file_is_named(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    names = read_chestxray14(root).images
    write_images(root, [n for n in names if n != "00000003_000.png"])
    with pytest.raises(
        FileNotFoundError, match=r"1 image\(s\) not found under .*: 00000003_000.png"
    ):
        ChestXray14(root)


def test_skip_bad_images_drops_missing_files_with_a_warning(tmp_path, caplog):
    root = copy_fixture("v2020", tmp_path / "d")
    names = read_chestxray14(root).images
    write_images(root, [n for n in names if n != "00000003_000.png"])
    with caplog.at_level(logging.WARNING, logger="ccg_layers.datasets.chestxray14"):
        ds = ChestXray14(root, skip_bad_images=True, image_size=8)
    assert len(ds) == 7
    assert "00000003_000.png" not in ds.image_names
    assert any("00000003_000.png" in r.getMessage() for r in caplog.records)


def test_unreadable_image_raises_with_its_path(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    names = read_chestxray14(root).images
    write_images(root, names)
    (root / "images" / names[0]).write_bytes(b"not a png")
    ds = ChestXray14(root, image_size=8)
    with pytest.raises(OSError, match=r"cannot read ChestX-ray14 image .*00000001_000\.png"):
        ds[0]


def test_skip_bad_images_replaces_an_unreadable_image_by_the_next(tmp_path, caplog):
    root = copy_fixture("v2020", tmp_path / "d")
    names = read_chestxray14(root).images
    write_images(root, names)
    (root / "images" / names[0]).write_bytes(b"not a png")
    ds = ChestXray14(root, image_size=8, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="ccg_layers.datasets.chestxray14"):
        sample = ds[0]
    assert sample["name"] == names[1]
    assert sample["index"] == 1
    assert any("00000001_000.png" in r.getMessage() for r in caplog.records)
    assert [s["name"] for s in islice(ds, 20)] == [names[1], *names[1:]]  # iteration still ends


@pytest.mark.parametrize("size", [0, -3, True, 2.5, "32", np.float64(32.0)])
def test_bad_image_size(tmp_path, size):
    root = copy_fixture("v2020", tmp_path / "d")
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`image_size` must be a positive int, got {re.escape(repr(size))}",
    ):
        ChestXray14(root, image_size=size)


def test_image_size_may_be_a_numpy_integer(v2020_root):
    ds = ChestXray14(v2020_root, image_size=np.int64(8))
    assert type(ds.image_size) is int
    assert ds[0]["image"].shape == (1, 8, 8)


@pytest.mark.parametrize("root", [123, None, 1.5, [b"d"], torch.zeros(2)])
def test_root_or_index_that_is_no_path_nor_index_is_named(root):
    with pytest.raises(
        CCGDTypeError,
        match=r"`root_or_index` must be a dataset folder \(a str or an os\.PathLike\) or a "
        rf"ChestXray14Index, got {type(root).__name__}\.",
    ):
        ChestXray14(root)


def test_read_chestxray14_root_that_is_no_path_is_named():
    with pytest.raises(
        CCGDTypeError,
        match=r"`root` must be a dataset folder \(a str or an os\.PathLike\), got int\.",
    ):
        read_chestxray14(123)  # type: ignore[arg-type]


def test_iteration_gives_every_sample_once_in_order(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    index = read_chestxray14(root)
    write_images(root, index.images)
    ds = ChestXray14(index, image_size=8)
    samples = list(islice(ds, 20))  # islice: without the IndexError it would never end
    assert len(samples) == len(ds) == 8
    assert [s["name"] for s in samples] == index.images
    assert [s["index"] for s in samples] == list(range(8))
    assert ds[-1]["name"] == index.images[-1]
    assert ds[-1]["index"] == 7
    assert ds.targets(-8)["name"] == index.images[0]
    assert torch.equal(ds.load_image(np.int64(-1)), samples[-1]["image"])


@pytest.mark.parametrize("i", [8, -9, 10**6])
def test_out_of_range_index_is_an_index_error(v2020_root, i):
    ds = ChestXray14(v2020_root, image_size=8)
    with pytest.raises(
        IndexError,
        match=rf"ChestXray14 sample index {i} is out of range for a dataset of 8 sample\(s\) "
        r"\(valid: -8 to 7\)\.",
    ):
        ds[i]


@pytest.mark.parametrize("i", [True, "a", None, 1.5])
def test_non_integer_index_is_a_type_error(v2020_root, i):
    ds = ChestXray14(v2020_root, image_size=8)
    with pytest.raises(
        TypeError,
        match=rf"ChestXray14 sample indices must be integers \(not bool\), got {re.escape(repr(i))}",
    ):
        ds[i]


def test_index_without_root_needs_image_root():
    index = ChestXray14Index(
        images=["00000001_000.png"],
        labels=torch.zeros(1, 14),
        patient_ids=torch.tensor([1]),
        follow_ups=torch.tensor([0]),
        view_positions=["PA"],
        boxes=torch.zeros(0, 4),
        box_image_index=torch.zeros(0, dtype=torch.long),
        box_class=torch.zeros(0, dtype=torch.long),
    )
    with pytest.raises(ValueError, match="`image_root` is required"):
        ChestXray14(index)


def test_bad_skip_bad_rows_is_named_before_the_disk_is_read(tmp_path):
    with pytest.raises(CCGValueRangeError, match=r"`skip_bad_rows` must be True or False"):
        read_chestxray14(tmp_path / "nonexistent", skip_bad_rows="no")  # type: ignore[arg-type]
    with pytest.raises(CCGValueRangeError, match=r"`skip_bad_images` must be True or False"):
        ChestXray14(tmp_path / "nonexistent", skip_bad_images="no")  # type: ignore[arg-type]


def test_find_image_files_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nonexistent: no such folder of ChestX-ray14"):
        find_image_files(tmp_path / "nonexistent")


def chestxray14_fields(n=2):
    return {
        "images": [f"0000000{i}_000.png" for i in range(n)],
        "labels": torch.zeros(n, 14).index_fill_(1, torch.tensor([1]), 1.0),
        "patient_ids": torch.arange(n),
        "follow_ups": torch.zeros(n, dtype=torch.long),
        "view_positions": ["PA"] * n,
        "boxes": torch.tensor([[0.0, 0.0, 9.0, 9.0]]),
        "box_image_index": torch.tensor([1]),
        "box_class": torch.tensor([1]),
    }


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            {"labels": torch.zeros(2, 3)},
            CCGShapeError,
            r"`labels` must have shape \(2, 14\), got \(2, 3\)",
        ),
        (
            {"labels": torch.full((2, 14), 0.5)},
            CCGValueRangeError,
            r"`labels` must hold only 0 and 1",
        ),
        (
            {"view_positions": ["PA"]},
            CCGShapeError,
            r"`view_positions` must have shape \(2,\), got \(1,\)",
        ),
        (
            {"follow_ups": torch.zeros(3, dtype=torch.long)},
            CCGShapeError,
            r"`follow_ups` must have shape \(2,\)",
        ),
        (
            {"follow_ups": [0, 0]},
            CCGDTypeError,
            r"`follow_ups` must be a torch\.Tensor, got list\.",
        ),
        (
            {"images": ["a.png", "a.png"]},
            CCGValueRangeError,
            r"`images` must hold each name once, got 1 more than once: 'a\.png'\.",
        ),
        ({"boxes": torch.zeros(1, 3)}, CCGShapeError, r"`boxes` must have shape \(M, 4\)"),
        (
            {"box_image_index": torch.tensor([2])},
            CCGValueRangeError,
            r"`box_image_index` must hold indices in \[0, 2\), got values in \[2, 2\]",
        ),
        (
            {"box_class": torch.tensor([14])},
            CCGValueRangeError,
            r"`box_class` must hold indices in \[0, 14\)",
        ),
        (
            {"box_class": torch.tensor([1, 1])},
            CCGShapeError,
            r"`box_class` must have shape \(1,\), got \(2,\)",
        ),
    ],
)
def test_chestxray14_index_names_each_bad_field(change, error, match):
    with pytest.raises(error, match=match):
        ChestXray14Index(**{**chestxray14_fields(), **change})


def test_find_image_files_in_official_subfolders(tmp_path):
    write_images(tmp_path, ["00000001_000.png", "00000002_000.png"], layout="subfolders")
    found = find_image_files(tmp_path)
    assert sorted(found) == ["00000001_000.png", "00000002_000.png"]
    assert found["00000002_000.png"] == tmp_path / "images_002" / "images" / "00000002_000.png"


# --------------------------------------------------------------------------- collate


def test_collate_varying_numbers_of_boxes_through_a_dataloader(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    index = read_chestxray14(root)
    write_images(root, index.images)
    ds = ChestXray14(root, image_size=16)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_chestxray14)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [3, 3, 2]
    b = batches[1]  # images 3, 4, 5: 0, 2 and 1 boxes
    assert b["image"].shape == (3, 1, 16, 16)
    assert b["labels"].shape == (3, 14)
    assert b["has_box"].shape == (3, 14)
    assert b["has_box"].dtype == torch.bool
    assert b["boxes"].shape == (3, 4)
    assert b["box_image_index"].tolist() == [1, 1, 2]
    assert b["box_class"].tolist() == [k("Atelectasis"), k("Infiltration"), k("Effusion")]
    assert b["names"] == index.images[3:6]
    assert b["indices"] == [3, 4, 5]
    torch.testing.assert_close(b["boxes"], index.boxes[:3] * (16 / 1024))
    first = batches[0]
    assert first["boxes"].shape == (0, 4)
    assert first["box_image_index"].shape == (0,)


def test_collate_empty_sequence():
    with pytest.raises(ValueError, match="at least one sample"):
        collate_chestxray14([])


def test_targets_are_the_sample_without_the_image(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    index = read_chestxray14(root)
    write_images(root, index.images)
    ds = ChestXray14(root, image_size=16)
    (root / "images" / index.images[4]).unlink()  # targets never open the PNG
    t = ds.targets(4)
    assert set(t) == {"labels", "boxes", "box_class", "has_box", "name", "index"}
    full = ds[5]
    t5 = ds.targets(5)
    for key in ("labels", "boxes", "box_class", "has_box"):
        assert torch.equal(t5[key], full[key])
    assert t["box_class"].tolist() == [k("Atelectasis"), k("Infiltration")]
    assert t["name"] == index.images[4]


def test_rows_map_samples_to_index_rows(tmp_path):
    root = copy_fixture("v2020", tmp_path / "d")
    index = read_chestxray14(root)
    write_images(root, index.images)
    ds = ChestXray14(index, ["00030805_000.png", "00000002_000.png"], image_size=8)
    assert ds.rows.tolist() == [7, 2]
    assert torch.equal(index.labels[ds.rows][0], ds[0]["labels"])


def test_read_radiograph_keeps_the_file_size_or_resizes(tmp_path):
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(tmp_path / "a.png")
    full = read_radiograph(tmp_path / "a.png")
    assert full.shape == (1, 6, 8)
    assert full.dtype == torch.uint8
    assert full.flatten().tolist() == list(range(48))
    assert read_radiograph(tmp_path / "a.png", 4).shape == (1, 4, 4)
    Image.fromarray(np.full((8, 8, 3), (10, 200, 30), dtype=np.uint8)).save(tmp_path / "b.jpg")
    rgb = read_radiograph(tmp_path / "b.jpg", 8)
    assert abs(int(rgb[0, 4, 4]) - round(10 * 0.299 + 200 * 0.587 + 30 * 0.114)) <= 3
    with pytest.raises(OSError, match="missing"):
        read_radiograph(tmp_path / "missing.png")
