"""The command line: verbs, one-line errors, per-preset help, predict, reproduce, load_model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from examples.ccg_net import cli, load_model
from examples.ccg_net.runs import reproduce, train

from .trainer_helpers import SimulatedKillError, killed_after_steps

NIH = Path(__file__).resolve().parents[1] / "data" / "nih"


@pytest.fixture
def tiny_run(make_config):
    return train(make_config(run_name="tiny", epochs=1, losses=("base",))).run_dir


def _assert_one_line_error(capsys, code: int, match: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert match in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", "--setting", "d"], "--setting must be a, b or c"),
        (["train", "--image-size", "500"], "--image-size must be a positive multiple of 32"),
        (["train", "--lr", "abc"], "invalid float value"),
        (["train", "--preset", "nope"], "invalid choice"),
        (["train", "--data-root", "/no/such/folder"], "--data-root /no/such/folder: no such"),
        (["evaluate", "{tmp}/missing.pt"], "missing.pt not found"),
        (["evaluate", "{tmp}"], "is a directory, not a checkpoint"),
        (["evaluate", "{tmp}/config.json"], "is not a checkpoint of the CCG-Net trainer"),
        (["predict", "--checkpoint", "{tmp}/missing.pt", "--out", "{tmp}/p", "{nih}"], "not found"),
        (["predict", "--checkpoint", "x", "--out", "{tmp}/p", "{tmp}/no.png"], "no such image"),
        (["reproduce", "--folds", "0,7"], "--folds must be in 0..4"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_exit_2_and_leave_no_run_directory(
    argv, match, tmp_path, capsys, monkeypatch
):
    (tmp_path / "config.json").write_text("{}")
    out = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    argv = [a.format(tmp=tmp_path, nih=NIH) for a in argv]
    if argv[0] in ("train", "reproduce"):
        argv += ["--output-dir", str(out), "--preset", "demo"] if "--preset" not in argv else []
    _assert_one_line_error(capsys, cli.main(argv), match)
    assert not out.exists() or not any(out.iterdir())


def test_no_cuda_is_one_line_and_no_run_directory(make_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = make_config()
    argv = ["train", "--preset", "demo", "--device", "cuda", "--data-root", cfg.data_root]
    argv += ["--output-dir", cfg.output_dir, "--cache-dir", cfg.cache_dir]
    _assert_one_line_error(capsys, cli.main(argv), "no CUDA GPU is visible")
    assert not Path(cfg.output_dir).exists()


@pytest.mark.parametrize("missing", ["tqdm", "torchvision", "matplotlib"])
def test_missing_extras_are_reported_before_any_work(make_config, capsys, monkeypatch, missing):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    cfg = make_config()
    argv = ["--preset", "demo", "--data-root", cfg.data_root, "--output-dir", cfg.output_dir]
    # no verb: as examples/train_ccg.py (what make demo runs) calls it
    code = cli.main(argv, default_verb="train")
    _assert_one_line_error(capsys, code, "pip install -e '.[examples]'")
    assert not Path(cfg.output_dir).exists()


def test_help_shows_each_presets_default(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(paper: resnet50; demo: tiny)" in text
    assert "(paper: 512; demo: 128)" in text
    assert "(default: 0.9)" in text  # the same in every preset
    assert "preset value" not in text
    assert cli.main(["--help"]) == 0
    assert "{train,evaluate,predict,reproduce,pretrain}" in capsys.readouterr().out


def test_load_model_gives_a_ready_ccgnet_and_its_config(tiny_run):
    model, cfg = load_model(tiny_run / "checkpoints" / "last.pt")
    assert not model.training
    assert cfg.image_size == 64
    logits, _ = model(torch.zeros(1, 1, cfg.image_size, cfg.image_size, dtype=torch.uint8))
    assert logits.shape == (1, 14, 16, 16)  # test-time upsampled 8x8 grid
    same, _ = load_model(tiny_run)  # a run directory means its last.pt
    assert torch.equal(same.state_dict()["head.3.bias"], model.state_dict()["head.3.bias"])


@pytest.mark.slow
def test_predict_writes_a_json_and_overlays_per_image_in_its_own_pixel_frame(
    tiny_run, tmp_path, capsys
):
    images = tmp_path / "images"
    images.mkdir()
    for p in NIH.glob("*.png"):
        shutil.copy(p, images / p.name)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (200, 300, 4), dtype=np.uint8)  # not square, RGBA
    Image.fromarray(rgba, mode="RGBA").save(images / "rgba.png")
    deep = (rng.random((90, 120)) * 65535).astype(np.uint16)  # 16-bit
    Image.fromarray(deep).save(images / "deep.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "single.jpg")
    out = tmp_path / "pred"
    argv = ["predict", "--checkpoint", str(tiny_run), "--out", str(out)]
    # a threshold below every cell (the head's bias starts at each class's prior, down to
    # 1e-4 over the grid): each class's region is the whole image
    argv += ["--threshold", "1e-12", str(images), str(tmp_path / "single.jpg")]
    assert cli.main(argv) == 0
    assert "written to" in capsys.readouterr().out
    records = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(records) == {"00000001_000", "00027426_000", "rgba", "deep", "single"}
    for stem, rec in records.items():
        assert len(rec["probabilities"]) == 14
        w, h = rec["width"], rec["height"]
        assert (w, h) == Image.open(rec["image"]).size
        assert len(rec["findings"]) == 14
        for finding in rec["findings"]:
            assert finding["boxes"] == [
                {"xyxy": [0.0, 0.0, w, h], "score": pytest.approx(finding["boxes"][0]["score"])}
            ]
            png = out / f"{stem}_{finding['class']}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert records["rgba"]["width"] == 300


def test_reproduce_runs_every_fold_resumes_a_killed_one_and_aggregates(make_config, capsys):
    cfg = make_config(run_name="rep", epochs=1, losses=("base",), checkpoint_every=2)
    cfg.data_root, cfg.synthetic_images, cfg.synthetic_seed = None, 48, 3  # the synthetic twin
    with pytest.raises(SimulatedKillError), killed_after_steps(3):
        reproduce(cfg, folds=(0, 1))
    root = Path(cfg.output_dir) / "rep"
    assert (root / "fold0" / "checkpoints" / "last.pt").is_file()
    assert not (root / "fold1").exists()
    capsys.readouterr()
    reproduce(cfg, folds=(0, 1))
    out = capsys.readouterr().out
    assert "=== fold 0: resuming" in out
    assert "resumed" in out
    assert "=== fold 1 ===" in out
    assert "| 0.3 | Baseline (this run, 2 folds) |" in out
    assert "| 0.3 | Prior (this run, 2 folds) |" in out
    assert "synthetic twin" in out
    assert "| 0.3 | Ours (CCG paper, arXiv:2101.08992, Table 1) | 0.44 | 0.86 |" in out
    stats = json.loads((root / "reproduce.json").read_text())
    assert stats["folds"] == [0, 1]
    assert set(stats["methods"]) == {"Baseline", "Prior", "Whole image"}
    # a third call reads both folds back: nothing is trained again
    before = (root / "fold1" / "checkpoints" / "last.pt").stat().st_mtime_ns
    reproduce(cfg, folds=(0, 1))
    assert "=== fold" not in capsys.readouterr().out
    assert (root / "fold1" / "checkpoints" / "last.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_reproduce_side_by_side_equals_fold_after_fold(make_config):
    cfg = make_config(run_name="seq", epochs=1, losses=("base",))
    cfg.data_root, cfg.synthetic_images, cfg.synthetic_seed = None, 48, 3
    one = json.loads((reproduce(cfg, folds=(0, 1)) / "reproduce.json").read_text())
    par = cfg.__class__(**{**cfg.__dict__, "run_name": "par", "parallel_runs": 2})
    two = json.loads((reproduce(par, folds=(0, 1)) / "reproduce.json").read_text())
    assert one["methods"] == two["methods"]


def test_published_rows_are_well_formed_and_shown_beside_their_setting():
    from examples.ccg_net.report import THRESHOLDS
    from examples.ccg_net.reproduce import PUBLISHED_ROWS, paper_table, published_rows

    for row in PUBLISHED_ROWS:
        assert row.source
        assert row.table
        assert row.label
        assert set(row.settings) <= {"a", "b", "c"}
        for values in row.accuracy.values():
            assert len(values) == 8
            assert all(0.0 <= v <= 1.0 for v in values)
        assert set(row.mean) <= set(row.accuracy)
    wang = next(r for r in published_rows("b") if r.method == "Wang et al. 2017")
    assert all(r.method != "Wang et al. 2017" for r in published_rows("a") + published_rows("c"))
    nan = torch.full((len(THRESHOLDS), 9), float("nan"))
    table = paper_table({"Baseline": {"mean": nan, "std": nan}}, "b", 1)
    line = next(x for x in table.splitlines() if x.startswith("| 0.3 | Wang et al. 2017"))
    # as printed (Table 7, T(IoU)=0.3), and no mean where the source prints none
    assert line.endswith("| 0.24 | 0.46 | 0.30 | 0.28 | 0.15 | 0.04 | 0.17 | 0.13 | — |")
    assert wang.accuracy[0.3][1] == 0.4589
    assert "Wang et al. 2017" not in paper_table({"Baseline": {"mean": nan, "std": nan}}, "a", 1)


SHARED_TABLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "ccg-paper-tables.csv"


def test_the_ccg_papers_tables_are_the_shared_copy_field_by_field():
    """examples/ccg_net/paper_tables.csv is ../shared/data/ccg-paper-tables.csv, every field,
    and PUBLISHED_ROWS holds every row of it that is not a repeat."""
    import csv

    from examples.ccg_net.reproduce import PAPER_TABLES_CSV, PUBLISHED_ROWS

    if not SHARED_TABLES.is_file():
        pytest.fail(f"the paper's tables are expected at {SHARED_TABLES} (../shared of the repo)")
    with open(SHARED_TABLES, newline="") as f:
        shared = list(csv.reader(f))
    with open(PAPER_TABLES_CSV, newline="") as f:
        ours = list(csv.reader(f))
    assert len(ours) == len(shared)
    for i, (a, b) in enumerate(zip(ours, shared, strict=True)):
        assert a == b, f"line {i + 1}: {a} != {b}"
    header, *lines = shared
    assert len(lines) == 12 + 10 + 9 + 25  # Tables 1-4 as printed
    columns = header[4:12]
    ccg = [r for r in PUBLISHED_ROWS if r.source.startswith("CCG paper")]
    for line in map(dict, (zip(header, x, strict=True) for x in lines)):
        t = float(line["t_iou"])
        values = tuple(float(line[c]) for c in columns)
        found = [
            r
            for r in ccg
            if r.label == line["model_as_printed"]
            and r.settings == (line["setting"],)
            and r.accuracy.get(t) == values
            and r.mean.get(t) == float(line["Mean"])
        ]
        assert len(found) == 1, line
        # shown once: Table 4's repeats of Tables 1-3 stand under the table that printed them
        assert found[0].table in (line["table"], "Table 1", "Table 2", "Table 3"), line
    assert sum(len(r.accuracy) for r in ccg) == len(lines) - 7  # Table 4 repeats 7 of 1-3
    # "Ours" of Tables 1-3 is, number for number, one of Table 4's rows (docs/training.md)
    for setting in "abc":
        ours = next(r for r in ccg if r.label == "Ours" and r.settings == (setting,))
        ablation = [r for r in ccg if r.table == "Table 4" and r.settings == (setting,)]
        assert any(r.accuracy[0.7] == ours.accuracy[0.7] for r in ablation), setting


@pytest.mark.parametrize(
    ("setting", "threshold", "label", "cells"),
    [
        ("a", 0.5, "Ours (CCG paper, arXiv:2101.08992, Table 1)", "0.27 | 0.86 | 0.48 | 0.72"),
        ("a", 0.7, "(IR+IK) (CCG paper, arXiv:2101.08992, Table 4)", "0.20 | 0.86 | 0.48"),
        ("b", 0.1, "Z, Li [8] (CCG paper, arXiv:2101.08992, Table 2)", "0.59 | 0.81 | 0.72"),
        (
            "b",
            0.7,
            "GR (as printed; most likely IR) (CCG paper, arXiv:2101.08992, Table 4)",
            "0.06",
        ),
        ("b", 0.7, "IK (as printed, Table 4's second IK row; most likely KR)", "0.09 | 0.63"),
        ("c", 0.3, "Baseline (CCG paper, arXiv:2101.08992, Table 3)", "0.47 | 0.84 | 0.65"),
        ("c", 0.7, "IR+IK+KR (CCG paper, arXiv:2101.08992, Table 4)", "0.18 | 0.71 | 0.20"),
    ],
)
def test_paper_table_shows_the_ccg_rows_at_the_thresholds_their_table_prints(
    setting, threshold, label, cells
):
    from examples.ccg_net.report import THRESHOLDS
    from examples.ccg_net.reproduce import paper_table

    nan = torch.full((len(THRESHOLDS), 9), float("nan"))
    table = paper_table({"Baseline": {"mean": nan, "std": nan}}, setting, 5).splitlines()
    assert any(x.startswith(f"| {threshold:g} | {label}") and f"| {cells}" in x for x in table)
    # Table 1 prints 0.3, 0.5 and 0.7: nothing of it at 0.1
    assert not any(x.startswith("| 0.1 |") and "Table 1" in x for x in table)
    # each row once: Table 4's repeats of Tables 1-3 (here its Liu et al. row) are not shown again
    assert not any("J, Liu [9]" in x and "Table 4" in x for x in table)


def test_one_fold_has_no_spread():
    from examples.ccg_net.report import THRESHOLDS
    from examples.ccg_net.reproduce import paper_table

    mean = torch.full((len(THRESHOLDS), 9), 0.5)
    one = {"mean": mean, "std": torch.zeros_like(mean), "folds": torch.ones_like(mean)}
    table = paper_table({"Baseline": one}, "a", 1)
    assert "| 0.3 | Baseline (this run, 1 fold) | 0.50 | 0.50 |" in table
    assert "±" not in table
    # two folds, but a class with a box in one of them only: no spread for that cell
    folds = torch.full_like(mean, 2.0)
    folds[:, 0] = 1
    two = {"mean": mean, "std": torch.full_like(mean, 0.1), "folds": folds}
    line = next(x for x in paper_table({"CCG": two}, "a", 2).splitlines() if "| 0.3 | CCG" in x)
    assert line.startswith("| 0.3 | CCG (this run, 2 folds) | 0.50 | 0.50 ± 0.10 |")
