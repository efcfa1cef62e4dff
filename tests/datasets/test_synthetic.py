"""The synthetic ChestX-ray14: real format, round trip through the reader, determinism, caching."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ccg_layers.datasets.synthetic as synthetic
from ccg_layers import CCGValueRangeError
from ccg_layers.datasets import (
    BOXED_CLASSES,
    CLASS_NAMES,
    ChestXray14,
    SyntheticConfig,
    chestxray14_splits,
    collate_chestxray14,
    ensure_synthetic_dataset,
    generate_synthetic_chestxray14,
    read_chestxray14,
    render_synthetic_image,
    split_summary,
    synthetic_index,
)

REAL_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
REAL_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_synthetic_chestxray14(
        tmp_path_factory.mktemp("syn") / "d", 40, seed=3, image_size=64
    )


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    # the labels, patients and boxes do not depend on the image size: the demo's 300 images,
    # written tiny
    root = generate_synthetic_chestxray14(
        tmp_path_factory.mktemp("demo") / "d", 300, seed=0, image_size=16
    )
    return read_chestxray14(root)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_files_are_in_the_real_format(small):
    entry = (small / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    bbox = (small / "BBox_List_2017.csv").read_text().splitlines()
    assert entry[0] == REAL_ENTRY_HEADER
    assert bbox[0] == REAL_BBOX_HEADER
    rows = list(csv.reader(entry))
    assert len(rows[0]) == 11
    assert all(len(r) == 11 for r in rows[1:])
    assert len(next(iter(csv.reader(bbox[:1])))) == 9
    assert all(len(r) == 6 for r in csv.reader(bbox[1:]))
    labels_used = {r[1] for r in csv.reader(bbox[1:])}
    assert "Infiltration" not in labels_used  # written "Infiltrate", as in the real file
    pngs = sorted((small / "images").glob("*.png"))
    assert len(pngs) == 40
    assert [p.name for p in pngs] == sorted(r[0] for r in rows[1:])
    for p in pngs[:5]:
        with Image.open(p) as im:
            assert im.mode == "L"
            assert im.size == (64, 64)


def test_round_trip_through_the_reader(small):
    index = read_chestxray14(small)
    rows = list(csv.reader((small / "Data_Entry_2017_v2020.csv").read_text().splitlines()))[1:]
    assert index.images == [r[0] for r in rows]
    for i, r in enumerate(rows):
        names = [] if r[1] == "No Finding" else r[1].split("|")
        assert [CLASS_NAMES[k] for k in torch.nonzero(index.labels[i]).flatten().tolist()] == names
        assert int(index.patient_ids[i]) == int(r[3])
    box_rows = list(csv.reader((small / "BBox_List_2017.csv").read_text().splitlines()))[1:]
    assert len(box_rows) == len(index.boxes) > 0
    for m, r in enumerate(box_rows):
        x, y, w, h = map(float, r[2:])
        torch.testing.assert_close(index.boxes[m], torch.tensor([x, y, x + w, y + h]))
    ds = ChestXray14(small, image_size=32)
    batch = collate_chestxray14([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (40, 1, 32, 32)
    assert len(batch["boxes"]) == len(index.boxes)
    torch.testing.assert_close(batch["boxes"].sum(), index.boxes.sum() * 32 / 1024)


@pytest.mark.parametrize("fixture", ["small", "demo_index"])
def test_synthetic_index_is_the_generated_index_without_rendering(fixture, request):
    """Everything a split depends on, drawn without writing a file (the trainer checks the
    dataset's size before generating it)."""
    written = request.getfixturevalue(fixture)
    if isinstance(written, Path):
        written, (n, seed) = read_chestxray14(written), (40, 3)
    else:
        n, seed = 300, 0
    drawn = synthetic_index(n, seed)
    assert drawn.images == written.images
    for field in ("labels", "patient_ids", "follow_ups", "box_image_index", "box_class"):
        assert torch.equal(getattr(drawn, field), getattr(written, field)), field
    assert drawn.boxes.shape == written.boxes.shape
    assert drawn.boxes.isnan().all()
    for setting in ("a", "b", "c"):
        assert chestxray14_splits(drawn, setting, 1) == chestxray14_splits(written, setting, 1)


def test_boxes_are_valid_and_consistent(demo_index):
    idx = demo_index
    b = idx.boxes
    assert (b[:, :2] >= 0).all()
    assert (b[:, 2:] <= 1024).all()
    assert (b[:, 2:] > b[:, :2]).all()
    assert set(idx.box_class.tolist()) == {CLASS_NAMES.index(c) for c in BOXED_CLASSES}
    pairs = set(zip(idx.box_image_index.tolist(), idx.box_class.tolist(), strict=True))
    assert len(pairs) == len(b)  # at most one box per (image, class)
    assert (idx.labels[idx.box_image_index, idx.box_class] == 1).all()  # box class among labels


def test_demo_size_makes_the_paper_settings_meaningful(demo_index):
    idx = demo_index
    n_ann = int(idx.annotated.sum())
    assert 60 <= n_ann <= 120  # about 30% annotated
    _, counts = torch.unique(idx.patient_ids, return_counts=True)
    assert (counts >= 2).sum() >= 30  # patients with several images
    assert (idx.labels.sum(1) == 0).float().mean() > 0.2  # healthy images
    assert (idx.labels[~idx.annotated].sum(0) > 0).sum() >= 12  # image labels of many classes
    per_image = torch.bincount(idx.box_image_index, minlength=len(idx))
    assert (per_image >= 2).sum() >= 3  # some images with boxes of several classes
    for setting, test_share in (("a", 0.2), ("c", 0.6)):
        for fold in range(5):
            split = chestxray14_splits(idx, setting, fold)
            assert abs(len(split["test"]) - test_share * n_ann) <= 4
            s = split_summary(idx, split)
            assert s["test_annotated"] == s["test"]
            assert s["train_annotated"] > 0
    # annotated patients also have unannotated images, so the overlap report is not trivial
    assert split_summary(idx, chestxray14_splits(idx, "b"))["train_sharing_patient_with_test"] > 0


def test_box_sizes_distributed_like_the_real_ones(demo_index):
    idx = demo_index
    wh = idx.boxes[:, 2:] - idx.boxes[:, :2]
    area = wh.prod(1) / 1024**2
    nodule = idx.box_class == CLASS_NAMES.index("Nodule")
    cardio = idx.box_class == CLASS_NAMES.index("Cardiomegaly")
    # small lesions against the anatomy: nodules ~ 0.3% of the image, most boxes under 10%
    assert area[nodule].median() < 0.01
    assert area[~cardio].median() < 0.1
    # cardiomegaly boxes are the widest, centred low in the chest (as in BBox_List_2017.csv)
    assert wh[cardio, 0].mean() > 350
    assert wh[nodule, 0].mean() < 90
    cy = (idx.boxes[cardio, 1] + idx.boxes[cardio, 3]) / 2
    assert ((cy > 450) & (cy < 800)).all()


@pytest.mark.parametrize("cls", BOXED_CLASSES)
def test_each_lesion_is_drawn_inside_its_box(cls):
    box = {
        "Nodule": (300.0, 400.0, 60.0, 60.0),
        "Mass": (280.0, 380.0, 160.0, 150.0),
        "Effusion": (180.0, 560.0, 200.0, 230.0),
        "Pneumothorax": (150.0, 180.0, 200.0, 320.0),
        "Atelectasis": (220.0, 520.0, 170.0, 110.0),
        "Infiltration": (200.0, 300.0, 240.0, 320.0),
        "Pneumonia": (200.0, 300.0, 230.0, 290.0),
    }.get(cls)
    boxes = {} if box is None else {cls: box}
    plain = render_synthetic_image([], {}, image_size=256, seed=5).astype(float)
    sick = render_synthetic_image([cls], boxes, image_size=256, seed=5).astype(float)
    diff = np.abs(sick - plain)
    assert diff.max() >= 15  # visible: at least 15 gray levels somewhere
    if box is not None:
        x, y, w, h = (v / 4 for v in box)
        inside = diff[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))].sum()
        assert inside / diff.sum() > 0.99
        assert diff[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))].mean() > 3


def test_render_is_a_chest_radiograph_not_noise():
    img = render_synthetic_image([], {}, image_size=256, seed=0).astype(float)
    lungs = np.r_[img[100:140, 60:90].ravel(), img[100:140, 166:196].ravel()]
    spine = img[100:140, 124:132]
    below = img[230:250, 40:216]
    assert spine.mean() > lungs.mean() + 40  # bright mediastinum and spine between dark lungs
    assert below.mean() > lungs.mean() + 40  # the abdomen under the diaphragm
    assert img[0:10, 0:10].mean() < lungs.mean() + 20  # dark corners outside the body


def test_deterministic_by_seed(tmp_path):
    a = generate_synthetic_chestxray14(tmp_path / "a", 6, seed=11, image_size=48)
    b = generate_synthetic_chestxray14(tmp_path / "b", 6, seed=11, image_size=48)
    c = generate_synthetic_chestxray14(tmp_path / "c", 6, seed=12, image_size=48)
    assert digest(a) == digest(b) != digest(c)


def test_default_size_is_the_real_1024(tmp_path):
    root = generate_synthetic_chestxray14(tmp_path / "d", 1, seed=0)
    (png,) = (root / "images").glob("*.png")
    with Image.open(png) as im:
        assert im.size == (1024, 1024)
        assert im.mode == "L"


def test_bad_arguments(tmp_path):
    with pytest.raises(CCGValueRangeError, match=r"`num_images` must be a positive int, got 0"):
        generate_synthetic_chestxray14(tmp_path, 0)
    with pytest.raises(CCGValueRangeError, match=r"`num_images` must be a positive int, got True"):
        generate_synthetic_chestxray14(tmp_path, True)
    with pytest.raises(CCGValueRangeError, match=r"`image_size` must be an int >= 16, got 8\."):
        generate_synthetic_chestxray14(tmp_path, 1, image_size=8)
    with pytest.raises(CCGValueRangeError, match=r"`image_size` must be a positive int, got 32\.0"):
        generate_synthetic_chestxray14(tmp_path, 1, image_size=32.0)
    with pytest.raises(CCGValueRangeError, match=r"`num_images` must be a positive int, got True"):
        synthetic_index(True)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (
            "healthy_fraction",
            2.0,
            r"`healthy_fraction` must be a finite number in \[0, 1\], got 2\.0\.",
        ),
        (
            "annotated_fraction",
            -1,
            r"`annotated_fraction` must be a finite number in \[0, 1\], got -1\.",
        ),
        (
            "second_box_fraction",
            "0.1",
            r"`second_box_fraction` must be a finite number in \[0, 1\]",
        ),
        (
            "mean_images_per_patient",
            0.5,
            r"`mean_images_per_patient` must be a finite number in \[1, inf\]",
        ),
        (
            "lesion_contrast",
            float("nan"),
            r"`lesion_contrast` must be a non-negative number, got nan\.",
        ),
        ("lesion_contrast", -1.0, r"`lesion_contrast` must be a non-negative number, got -1\.0\."),
    ],
)
def test_synthetic_config_names_each_bad_field(field, value, match):
    with pytest.raises(CCGValueRangeError, match=match):
        SyntheticConfig(**{field: value})


NODULE = (300.0, 400.0, 60.0, 60.0)


@pytest.mark.parametrize(
    ("labels", "boxes", "kwargs", "match"),
    [
        (["Nodle"], {}, {}, r"`labels` must be a list of CLASS_NAMES, got \['Nodle'\]\."),
        ("Nodule", {}, {}, r"`labels` must be a list of CLASS_NAMES, got 'Nodule'\."),
        (
            [],
            {"Nodule": NODULE},
            {},
            r"`boxes` must hold boxed classes of `labels`, got 'Nodule'\.",
        ),
        (
            ["Edema"],
            {"Edema": NODULE},
            {},
            r"`boxes` must hold boxed classes of `labels`, got 'Edema'",
        ),
        (["Nodule"], [NODULE], {}, r"`boxes` must be a dict \{class: \(x, y, w, h\)\}, got \["),
        (
            ["Nodule"],
            {"Nodule": (2000.0, 0.0, 60.0, 60.0)},
            {},
            r"`boxes\['Nodule'\]` must be \(x, y, w, h\) finite, w, h > 0, inside the 1024 frame, got \(2000\.0",
        ),
        (
            ["Nodule"],
            {"Nodule": (300.0, 400.0, -6.0, 60.0)},
            {},
            r"`boxes\['Nodule'\]` must be .*, got \(300\.0, 400\.0, -6\.0, 60\.0\)\.",
        ),
        (
            ["Nodule"],
            {"Nodule": (float("nan"), 0.0, 6.0, 6.0)},
            {},
            r"`boxes\['Nodule'\]\[0\]` must be a finite number, got nan\.",
        ),
        (
            ["Nodule"],
            {"Nodule": (0.0, "1", 6.0, 6.0)},
            {},
            r"`boxes\['Nodule'\]\[1\]` must be a finite number, got '1'\.",
        ),
        (
            ["Nodule"],
            {"Nodule": (0.0, 0.0, True, 6.0)},
            {},
            r"`boxes\['Nodule'\]\[2\]` must be a finite number, got True\.",
        ),
        (
            ["Nodule"],
            {"Nodule": (1.0, 2.0, 3.0)},
            {},
            r"`boxes\['Nodule'\]` must be .*, got \(1\.0, 2\.0, 3\.0\)\.",
        ),
        ([], {}, {"image_size": 0}, r"`image_size` must be a positive int, got 0\."),
        ([], {}, {"image_size": -1}, r"`image_size` must be a positive int, got -1\."),
        (
            [],
            {},
            {"lesion_contrast": float("nan")},
            r"`lesion_contrast` must be a non-negative number",
        ),
    ],
)
def test_render_synthetic_image_names_each_bad_argument(labels, boxes, kwargs, match):
    with pytest.raises(CCGValueRangeError, match=match):
        render_synthetic_image(labels, boxes, **kwargs)


# --------------------------------------------------------------------------- caching


def test_ensure_generates_once_then_reuses(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "synthetic"
    root = ensure_synthetic_dataset(target, 5, 0, image_size=32)
    assert root == target
    assert len(read_chestxray14(root)) == 5
    assert [p.name for p in target.parent.iterdir()] == ["synthetic"]  # no temp folder left

    def boom(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synthetic, "generate_synthetic_chestxray14", boom)
    assert ensure_synthetic_dataset(target, 5, 0, image_size=32) == target


def test_ensure_regenerates_for_other_arguments(tmp_path):
    target = tmp_path / "s"
    ensure_synthetic_dataset(target, 4, 0, image_size=32)
    ensure_synthetic_dataset(target, 6, 0, image_size=32)
    assert len(read_chestxray14(target)) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    real = synthetic.generate_synthetic_chestxray14

    def interrupted(out_dir, *args, **kwargs):
        real(out_dir, 2, seed=0, image_size=32)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate_synthetic_chestxray14", interrupted)
    target = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(target, 4, 0, image_size=32)
    assert not target.exists()
    monkeypatch.setattr(synthetic, "generate_synthetic_chestxray14", real)
    assert len(read_chestxray14(ensure_synthetic_dataset(target, 4, 0, image_size=32))) == 4


def test_ensure_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match=r"is not a synthetic dataset made by ccg-layers"):
        ensure_synthetic_dataset(tmp_path, 2, 0, image_size=32)
    assert (tmp_path / "mine.txt").read_text() == "precious"


# --------------------------------------------------------------------------- command line


def test_command_line(tmp_path, capsys):
    synthetic.main(
        ["--out", str(tmp_path / "d"), "--num-images", "3", "--seed", "1", "--image-size", "32"]
    )
    assert "wrote 3 images (32x32)" in capsys.readouterr().out
    assert len(read_chestxray14(tmp_path / "d")) == 3


@pytest.mark.slow
def test_python_dash_m_entry_point(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ccg_layers.datasets.synthetic",
            "--out",
            str(tmp_path / "d"),
            "--num-images",
            "2",
            "--image-size",
            "32",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert "images/s" in out.stdout
    assert "Warning" not in out.stderr  # no runpy "found in sys.modules" RuntimeWarning
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 2


def test_images_of_a_patient_share_the_body_build():
    def anatomy(patient, image):
        return synthetic._sample_anatomy(
            np.random.default_rng([0, 1, image]), False, np.random.default_rng([0, 2, patient])
        )

    a, b, other = anatomy(7, 0), anatomy(7, 1), anatomy(8, 2)
    assert a.lung_half_width / a.scale == b.lung_half_width / b.scale
    assert a.heart_factor == b.heart_factor
    assert abs(a.scale / b.scale - 1) <= 0.05
    assert a.heart_factor != other.heart_factor
    assert a.cx != b.cx  # positioning differs between the patient's images
