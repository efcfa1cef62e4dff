"""``--dataset``: the trainer on VinDr-CXR and RSNA Pneumonia folders in their published layouts
(DICOM images), end to end from the command line, and one test per bad input of the option."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccg_layers.datasets import RSNA_CLASS_NAMES, VINDR_CLASS_NAMES, read_dicom
from examples import dataset_counts
from examples.ccg_net import cli
from examples.ccg_net.config import TrainConfig
from examples.ccg_net.data import read_index
from examples.ccg_net.report import THRESHOLDS, class_file_name
from examples.ccg_net.reproduce import reproduce_report
from tests.datasets.published_roots import VINDR_CSV, rsna_root, vindr_root

from .trainer_helpers import one_error_line

#: The smallest run that exercises every part: a tiny backbone on 64-px images, one epoch,
#: the four losses (SLIC on the DICOM files), two figures.
TINY = [
    *("--image-size", "64", "--backbone", "tiny", "--weights", "none"),
    *("--tiny-widths", "8,8,8,8", "--tiny-stride", "8", "--head-channels", "8"),
    *("--freeze-bn", "false", "--num-patches", "4", "--superpixel-size", "16"),
    *("--code-bits", "16", "--batch-size", "4", "--epochs", "1", "--num-workers", "0"),
    *("--checkpoint-every", "0", "--progress", "false", "--deterministic", "true"),
    *("--threads", "1", "--num-figures", "2"),
]


@pytest.fixture(scope="module")
def vindr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vindr_root(tmp_path_factory.mktemp("vindr"), 24, seed=1)


@pytest.fixture(scope="module")
def rsna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rsna_root(tmp_path_factory.mktemp("rsna"), 24, seed=2)


def _train(dataset: str, root: Path, out: Path, *extra: str) -> Path:
    argv = [
        *("train", "--dataset", dataset, "--data-root", str(root)),
        *("--output-dir", str(out / "runs"), "--cache-dir", str(out / "cache")),
        *("--run-name", "run", *TINY, *extra),
    ]
    assert cli.main(argv) == 0
    return out / "runs" / "run"


def _check_run(run: Path, name: str, classes: tuple[str, ...], boxed: tuple[str, ...]) -> None:
    """The run's files are written and name the dataset's classes, not ChestX-ray14's."""
    for f in ("config.json", "metrics.csv", "results.md", "results.json", "checkpoints/last.pt"):
        assert (run / f).is_file(), f
    results = json.loads((run / "results.json").read_text())
    assert results["dataset"] == name
    assert results["class_names"] == list(classes)
    assert results["boxed_classes"] == list(boxed)
    assert results["test_images"]
    for method in results["methods"].values():  # CCG and the reference maps
        for t in THRESHOLDS:
            assert list(method["localization"][f"T={t:g}"]) == [*boxed, "Mean"]
        assert len(method["accuracy_matrix"][0]) == len(classes)
    ccg = results["methods"]["CCG"]
    assert list(ccg["auc"]) == list(classes)
    assert ccg["localization"]["T=0.1"]["Mean"] is not None  # scored on the test boxes
    table = (run / "results.md").read_text()
    assert f"| T(IoU) | model | {' | '.join(boxed)} | Mean |" in table
    assert f"Localization accuracy on the {name} test split" in table
    assert f"AUC ({len(boxed)} boxed)" in table
    with open(run / "metrics.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert not math.isnan(float(row["test_acc_T0.1_mean"]))
    figures = sorted(p.name for p in (run / "figures").iterdir())
    assert figures
    assert all(p.is_file() for p in (run / "figures").iterdir())
    files = {class_file_name(c) for c in classes}
    assert all(f.rsplit("_", 1)[1].removesuffix(".png") in files for f in figures), figures


def _predict(run: Path, out: Path) -> dict[str, object]:
    image = out.parent / "radiograph.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80), np.uint8)).save(image)
    argv = ["predict", "--checkpoint", str(run), "--out", str(out), "--threshold", "0.01"]
    assert cli.main([*argv, str(image)]) == 0
    assert (out / "summary.csv").is_file()
    record: dict[str, object] = json.loads((out / "radiograph.json").read_text())
    return record


def test_train_and_predict_on_vindr_cxr(vindr: Path, tmp_path: Path) -> None:
    run = _train("vindr-cxr", vindr, tmp_path)  # setting a, fold 0; --vindr-combine merge
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["dataset"], cfg["vindr_combine"], cfg["num_classes"]) == ("vindr-cxr", "merge", 14)
    _check_run(run, "VinDr-CXR", VINDR_CLASS_NAMES, VINDR_CLASS_NAMES)
    record = _predict(run, tmp_path / "predicted")
    assert list(record["probabilities"]) == list(VINDR_CLASS_NAMES)  # type: ignore[call-overload]
    # a class of the training boxes is above the 0.01 threshold: "Nodule/Mass" as a file name
    overlays = sorted(Path(p).name for p in record["overlays"])  # type: ignore[attr-defined]
    assert "radiograph_Nodule-Mass.png" in overlays
    assert all((tmp_path / "predicted" / f).is_file() for f in overlays)
    # predict reads the dataset's DICOM files too; a file that is not DICOM is one error row
    dicom = sorted((vindr / "train").glob("*.dicom"))[0]
    fake = tmp_path / "fake.dcm"
    fake.write_text("not a DICOM file")
    out = tmp_path / "predicted-dicom"
    argv = ["predict", "--checkpoint", str(run), "--out", str(out), str(dicom), str(fake)]
    assert cli.main(argv) == 1
    on_dicom = json.loads((out / f"{dicom.stem}.json").read_text())
    assert list(on_dicom["probabilities"]) == list(VINDR_CLASS_NAMES)
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1][:2] == [str(dicom), "ok"]
    assert rows[2][:2] == [str(fake), "error"]
    assert "not a DICOM file" in rows[2][2]


def test_train_and_predict_on_rsna_pneumonia(rsna: Path, tmp_path: Path) -> None:
    # setting b: every unboxed image trains, every boxed one tests; the head's one class by
    # default (no --num-classes); the relation terms' form for a run without boxes
    form = ("--relation-form", "contrast", "--relation-features", "unit")
    run = _train("rsna-pneumonia", rsna, tmp_path, "--setting", "b", *form)
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["dataset"], cfg["num_classes"]) == ("rsna-pneumonia", 1)
    _check_run(run, "RSNA Pneumonia", RSNA_CLASS_NAMES, RSNA_CLASS_NAMES)
    split = json.loads((run / "results.json").read_text())["split"]
    assert (split["train"], split["train_annotated"], split["test"]) == (12, 0, 12)
    record = _predict(run, tmp_path / "predicted")
    assert list(record["probabilities"]) == ["Lung Opacity"]  # type: ignore[call-overload]


def test_non_square_dicoms_train_with_every_loss_their_patches_on_the_training_square(
    tmp_path: Path,
) -> None:
    # most VinDr-CXR radiographs are not square: SLIC runs on each image resized to the
    # --superpixel-size square, as the dataset resizes it to S x S
    root = vindr_root(tmp_path / "vindr", 16, size=96, height=128, seed=3)
    run = _train("vindr-cxr", root, tmp_path)
    _check_run(run, "VinDr-CXR", VINDR_CLASS_NAMES, VINDR_CLASS_NAMES)
    cached = sorted((tmp_path / "cache" / "superpixels").glob("*.npy"))
    assert cached
    assert {np.load(p).shape for p in cached} == {(16, 16)}


def test_resized_png_copies_take_their_frame_from_frame_sizes(
    vindr: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 64-pixel PNG copies of the 128-pixel DICOMs, the boxes still in the DICOM's frame
    root = tmp_path / "vindr-png"
    (root / "train").mkdir(parents=True)
    (root / VINDR_CSV).write_text((vindr / VINDR_CSV).read_text())
    names = []
    for dicom in sorted((vindr / "train").glob("*.dicom")):
        pixels = read_dicom(dicom)[0][0].numpy()
        Image.fromarray(pixels).resize((64, 64)).save(root / "train" / f"{dicom.stem}.png")
        names.append(dicom.stem)
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("image_id,width,height\n" + "".join(f"{n},128,128\n" for n in names))
    cfg = TrainConfig(dataset="vindr-cxr", data_root=str(root), image_kind="png")
    with caplog.at_level("WARNING"):
        index = read_index(dataclasses.replace(cfg, frame_sizes=str(sizes)), root)
        assert index.image_sizes.tolist() == [[128, 128]] * len(names)
        assert not caplog.records
        read_index(cfg, root)  # without them the copies frame their boxes, wrongly: a warning
    assert "reach past their PNG/JPEG image" in caplog.records[0].getMessage()
    run = _train("vindr-cxr", root, tmp_path, "--image-kind", "png", "--frame-sizes", str(sizes))
    assert json.loads((run / "config.json").read_text())["frame_sizes"] == str(sizes.resolve())
    _check_run(run, "VinDr-CXR", VINDR_CLASS_NAMES, VINDR_CLASS_NAMES)


def test_dataset_counts_prints_what_the_readers_count(vindr: Path, rsna: Path, tmp_path, capsys):
    dataset_counts.main(["--dataset", "vindr-cxr", "--data-root", str(vindr)])
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out if not line.startswith(" ")] == [
        f"VinDr-CXR, combine={c}" for c in ("all", "merge", "single")
    ]
    # 24 images, every other one with a finding boxed by 3 radiologists: 36 boxes, 12 merged
    assert out[0].endswith(": 24 images, 12 with a box, 12 without, 36 boxes, 14 boxed classes")
    assert out[5].endswith(": 24 images, 12 with a box, 12 without, 12 boxes, 14 boxed classes")
    assert "  setting (b), fold 0: 12 train, 12 test" in out
    labels_only = tmp_path / "labels-only"
    labels_only.mkdir()
    (labels_only / VINDR_CSV).write_text((vindr / VINDR_CSV).read_text())  # no images
    dataset_counts.main(
        ["--dataset", "vindr-cxr", "--data-root", str(labels_only), "--labels-only"]
    )
    assert capsys.readouterr().out.splitlines() == out
    dataset_counts.main(["--dataset", "rsna-pneumonia", "--data-root", str(rsna)])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("RSNA Pneumonia: 24 images, 12 with a box, 12 without, ")


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("argv", "matches"),
    [
        (["--dataset", "mimic-cxr"], ("--dataset must be one of chestxray14, ", "'mimic-cxr'")),
        (["--dataset", "rsna-pneumonia", "--num-classes", "14"], ("--num-classes must be 1",)),
        (["--dataset", "vindr-cxr", "--num-classes", "1"], ("--num-classes must be 14",)),
        (["--vindr-combine", "vote"], ("--vindr-combine must be one of", "'vote'")),
        (["--dataset", "rsna-pneumonia", "--vindr-combine", "all"], ("--vindr-combine all is",)),
        (["--image-kind", "tiff"], ("--image-kind must be one of", "'tiff'")),
        (["--image-kind", "png"], ("--image-kind png is for --dataset vindr-cxr",)),
        (
            ["--dataset", "rsna-pneumonia", "--frame-sizes", "sizes.csv"],
            ("--frame-sizes is for --dataset vindr-cxr", "got --dataset rsna-pneumonia"),
        ),
    ],
)
def test_a_bad_dataset_option_is_one_line(argv, matches, rsna, tmp_path, capsys) -> None:
    code = cli.main(["train", "--data-root", str(rsna), "--output-dir", str(tmp_path), *argv])
    one_error_line(capsys.readouterr().err, code, *matches)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_the_num_classes_message_names_the_dataset(rsna, tmp_path, capsys) -> None:
    argv = ["train", "--dataset", "rsna-pneumonia", "--data-root", str(rsna), "--num-classes", "2"]
    code = cli.main([*argv, "--output-dir", str(tmp_path)])
    one_error_line(
        capsys.readouterr().err,
        code,
        "--num-classes must be 1, the classes of RSNA Pneumonia (--dataset rsna-pneumonia), got 2",
    )


@pytest.mark.parametrize("dataset", ["vindr-cxr", "rsna-pneumonia"])
def test_the_synthetic_twin_is_chestxray14_only(dataset, tmp_path, capsys) -> None:
    # no --data-root: the synthetic twin, which is ChestX-ray14's
    code = cli.main(["train", "--dataset", dataset, "--output-dir", str(tmp_path)])
    one_error_line(
        capsys.readouterr().err, code, f"--dataset {dataset} needs --data-root", "synthetic twin"
    )


def test_a_malformed_csv_is_one_line_naming_file_and_line(vindr, tmp_path, capsys) -> None:
    root = tmp_path / "vindr"
    root.mkdir()
    lines = (vindr / VINDR_CSV).read_text().splitlines(keepends=True)
    (root / VINDR_CSV).write_text("".join([*lines[:2], lines[1].replace(",3,", ",4,"), *lines[2:]]))
    (root / "train").symlink_to(vindr / "train")
    argv = ["train", "--dataset", "vindr-cxr", "--data-root", str(root), "--weights", "none"]
    code = cli.main([*argv, "--output-dir", str(tmp_path / "runs")])
    one_error_line(capsys.readouterr().err, code, f"{root / VINDR_CSV}:3: unknown class")


def test_a_config_without_dataset_is_chestxray14_and_resume_keeps_it(tmp_path, capsys) -> None:
    saved = json.loads(TrainConfig().to_json())
    for key in ("dataset", "vindr_combine", "image_kind", "frame_sizes"):  # before --dataset
        del saved[key]
    assert TrainConfig.from_dict(saved).dataset == "chestxray14"
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(saved))
    code = cli.main(["train", "--resume", str(run), "--dataset", "vindr-cxr"])
    one_error_line(
        capsys.readouterr().err,
        code,
        "--dataset (run: chestxray14, given: vindr-cxr) differ",
        "a resumed run cannot change them",
    )


def test_reproduce_on_another_dataset_has_no_published_row(tmp_path) -> None:
    cfg = TrainConfig(dataset="rsna-pneumonia", data_root=str(tmp_path), num_classes=1, setting="b")
    stats = {"CCG": {"mean": torch.full((len(THRESHOLDS), 2), 0.5), "std": torch.zeros(4, 2)}}
    text = reproduce_report(cfg, (0,), stats, tmp_path, RSNA_CLASS_NAMES)
    assert "| T(IoU) | method | Lung Opacity | Mean |" in text
    assert "No published row" in text
    assert "RSNA Pneumonia" in text
    assert "Wang et al. 2017 (" not in text
    assert "arXiv" not in text
    saved = json.loads((tmp_path / "reproduce.json").read_text())
    assert (saved["dataset"], saved["published"]) == ("rsna-pneumonia", [])
    assert saved["columns"] == ["Lung Opacity", "Mean"]
    # on ChestX-ray14 the same call shows the paper's rows of setting (b)
    cxr = TrainConfig(data_root=str(tmp_path), setting="b")
    stats14 = {"CCG": {"mean": torch.full((len(THRESHOLDS), 9), 0.5), "std": torch.zeros(4, 9)}}
    assert "Wang et al. 2017" in reproduce_report(cxr, (0,), stats14, tmp_path)
