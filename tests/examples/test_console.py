"""What a person reads: progress bars, the per-epoch line, how AUC is named, the training
curves, reproduce's rows, and load_model from a script in any directory (issue 19, point 5)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from ccg_layers.datasets import BOXED_CLASSES, CLASS_NAMES
from examples.ccg_net import cli, runs
from examples.ccg_net.config import OPTION_GROUPS, OTHER_OPTIONS, TrainConfig
from examples.ccg_net.engine import EpochLog, epoch_line
from examples.ccg_net.report import AUC_NAMES, THRESHOLDS, EvalResults
from examples.ccg_net.runs import compare, reproduce, train

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _results(auc: list[float]) -> EvalResults:
    nan = torch.full((len(THRESHOLDS), len(CLASS_NAMES)), math.nan)
    acc = torch.full_like(nan, 0.25)
    return EvalResults([], nan, None, acc, torch.tensor(auc), torch.full((4,), 0.25))


class InlinePool:
    """A stand-in for ProcessPoolExecutor that runs each job at submit, recording its args."""

    calls: ClassVar[list[tuple[Any, ...]]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        job = functools.partial(fn, *args)  # a job of side_by_side: a partial, its args recorded
        InlinePool.calls.append(job.args)
        done: Future[Any] = Future()
        done.set_result(job())
        return done


# --------------------------------------------------------------------------- progress bars


def test_the_training_bar_names_the_run_and_the_epoch(make_config, capsys):
    train(make_config(run_name="lab", epochs=2, losses=("base",), progress=True))
    err = capsys.readouterr().err
    assert "lab train e1/2" in err
    assert "lab train e2/2" in err
    assert "epoch 1/2:" not in err  # the old unlabelled bar


def test_evaluation_has_a_bar_of_its_own(make_config, capsys):
    train(make_config(run_name="lab", epochs=1, losses=("base",), progress=True))
    assert "lab eval" in capsys.readouterr().err


def test_progress_false_shows_no_bar(make_config, capsys):
    train(make_config(run_name="quiet", epochs=1, losses=("base",), progress=False))
    err = capsys.readouterr().err
    assert "quiet train" not in err
    assert "quiet eval" not in err


def test_a_bar_position_moves_the_runs_bars_to_their_own_line(make_config, capsys):
    train(make_config(run_name="first", epochs=1, losses=("base",), progress=True))
    assert "\x1b[A" not in capsys.readouterr().err  # line 0: no cursor movement
    cfg = make_config(run_name="second", epochs=1, losses=("base",), progress=True)
    train(cfg, bar_position=1)
    assert "\x1b[A" in capsys.readouterr().err  # tqdm moves up from line 1 after drawing


def test_a_comparison_side_by_side_gives_each_run_its_own_labelled_bar_line(
    make_config, monkeypatch, capsys
):
    monkeypatch.setattr(runs, "ProcessPoolExecutor", InlinePool)
    InlinePool.calls = []
    compare(make_config(run_name="side", epochs=1, parallel_runs=2, progress=True, num_figures=0))
    positions = {cfg.run_name: (cfg.progress, pos) for cfg, pos in InlinePool.calls}
    assert positions == {"baseline": (True, 0), "ccg": (True, 1)}
    err = capsys.readouterr().err
    assert "baseline train e1/1" in err
    assert "ccg train e1/1" in err


# --------------------------------------------------------------------------- per-epoch line


def test_one_console_line_per_epoch_with_the_loss_terms_both_aucs_and_accuracy(make_config, capsys):
    run = train(make_config(run_name="lines", epochs=2)).run_dir
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.startswith("[lines] epoch ")]
    assert [x.split(":")[0] for x in lines] == ["[lines] epoch 1/2", "[lines] epoch 2/2"]
    for line, row in zip(lines, _csv_rows(run / "metrics.csv"), strict=True):
        for term in ("L_base", "L_IR", "L_IK", "L_KR"):
            assert f"{term} " in line
        assert f"loss {float(row['train_loss']):.4g} (" in line
        assert f"AUC (8 boxed) {float(row['test_auc_boxed8']):.3f}" in line
        assert f"AUC (all 14) {float(row['test_auc_all14']):.3f}" in line
        acc = float(row["test_acc_T0.3_mean"])
        assert line.endswith(f"mean accuracy at T(IoU)=0.3 {acc:.3f}")


def test_the_epoch_line_shows_the_rate_the_epoch_trained_at(make_config, capsys):
    cfg = make_config(run_name="rate", epochs=2, losses=("base",))
    train(cfg)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[rate] epoch")]
    assert f"lr {cfg.lr:.3g}," in lines[0]  # stepped (x lr_gamma) only after the epoch
    assert f"lr {cfg.lr * cfg.lr_gamma:.3g}," in lines[1]


def test_an_epoch_without_evaluation_says_so(make_config, capsys):
    train(make_config(run_name="skip", epochs=2, eval_every=2, losses=("base",)))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[skip] epoch")]
    assert lines[0].endswith("not evaluated this epoch (--eval-every)")
    assert "AUC (8 boxed)" in lines[1]


def test_the_epoch_line_of_a_model_without_an_auc_says_n_a():
    res = _results([math.nan] * len(CLASS_NAMES))
    log = EpochLog({"base": 2.0, "loss": 0.5}, 10.0)
    line = epoch_line("x", 1, 3, log, 0.1, res)
    assert line.startswith("[x] epoch 1/3: loss 0.5 (L_base 2), lr 0.1, 10.0 img/s; test ")
    assert "AUC (8 boxed) n/a, AUC (all 14) n/a" in line


def test_the_epoch_line_of_an_epoch_resumed_at_its_end_says_no_step_was_left():
    line = epoch_line("x", 2, 3, EpochLog({}, 0.0), 0.1, None)
    assert line.startswith("[x] epoch 2/3: no step left (resumed at the epoch's end), lr 0.1,")
    assert "nan" not in line


# --------------------------------------------------------------------------- AUC naming


def test_the_two_mean_aucs_leave_out_a_class_without_an_auc_and_name_it():
    auc = [0.5 + 0.01 * k for k in range(len(CLASS_NAMES))]
    auc[CLASS_NAMES.index("Hernia")] = math.nan  # no positive test image (the demo's split)
    res = _results(auc)
    boxed = [auc[CLASS_NAMES.index(c)] for c in BOXED_CLASSES]
    means = res.auc_means()
    assert means["auc_boxed8"] == pytest.approx(sum(boxed) / 8)
    assert means["auc_all14"] == pytest.approx(sum(v for v in auc if v == v) / 13)
    assert res.auc_undefined() == ["Hernia"]
    assert "13 of 14 classes have an AUC" in res.auc_text()
    assert "Hernia" in res.auc_text()


def test_metrics_csv_names_both_aucs_as_the_console_does(make_config):
    run = train(make_config(run_name="names", epochs=1, losses=("base",))).run_dir
    rows = _csv_rows(run / "metrics.csv")
    assert {"test_auc_boxed8", "test_auc_all14"} <= rows[0].keys()
    assert "test_auc_mean" not in rows[0]
    # the values are the means of results.json's per-class AUCs over the 8 boxed / all 14
    per_class = json.loads((run / "results.json").read_text())["methods"]["Baseline"]["auc"]
    defined = {c: v for c, v in per_class.items() if v is not None}
    boxed = [v for c, v in defined.items() if c in BOXED_CLASSES]
    assert float(rows[0]["test_auc_boxed8"]) == pytest.approx(sum(boxed) / len(boxed))
    assert float(rows[0]["test_auc_all14"]) == pytest.approx(sum(defined.values()) / len(defined))


def test_the_report_names_both_aucs_and_the_classes_without_one(make_config):
    run = train(make_config(run_name="report", epochs=1, losses=("base",))).run_dir
    method = json.loads((run / "results.json").read_text())["methods"]["Baseline"]
    assert {"auc_boxed8", "auc_all14", "auc_undefined"} <= method.keys()
    assert method["auc_undefined"] == [c for c, v in method["auc"].items() if v is None]
    report = (run / "results.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("Baseline: AUC"))
    assert line.startswith(f"Baseline: AUC (8 boxed) {method['auc_boxed8']:.3f}, AUC (all 14) ")
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert final["auc_boxed8"] == method["auc_boxed8"]


def test_the_docs_use_the_same_auc_names():
    training = (ROOT / "docs" / "training.md").read_text()
    for key, label in AUC_NAMES.items():
        assert f"test_{key}" in training
        assert label in training


# --------------------------------------------------------------------------- training curves


def test_a_run_writes_its_training_curves_png(make_config, capsys):
    run = train(make_config(run_name="curves", epochs=2)).run_dir
    assert (run / "training-curves.png").read_bytes()[:8] == PNG
    assert not list(run.glob(".training-curves.png.*"))  # written atomically, no temp left
    assert f"Training curves: {run / 'training-curves.png'}" in capsys.readouterr().out


def test_no_figures_means_no_training_curves(make_config):
    run = train(make_config(run_name="nofig", epochs=1, num_figures=0)).run_dir
    assert not (run / "training-curves.png").exists()


def test_a_comparison_plots_both_runs_in_one_png(make_config, monkeypatch):
    import matplotlib.figure

    labels: list[list[str]] = []
    real = matplotlib.figure.Figure.savefig

    def savefig(fig: Any, *args: Any, **kwargs: Any) -> None:
        labels.append(
            [
                t.get_text()
                for ax in fig.axes
                if ax.get_legend()
                for t in ax.get_legend().get_texts()
            ]
        )
        real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    root = compare(make_config(run_name="both", epochs=1, num_figures=1))
    assert (root / "training-curves.png").read_bytes()[:8] == PNG
    curves = labels[-1]
    assert "Baseline: AUC (8 boxed)" in curves
    assert "CCG: L_KR" in curves
    assert not (root / "baseline" / "training-curves.png").exists()  # one PNG, at the root
    assert "Training curves:" in (root / "results.md").read_text()


# --------------------------------------------------------------------------- reproduce rows


def test_reproduce_reports_a_baseline_row_beside_the_ccg_row(make_config, capsys):
    cfg = make_config(run_name="rep", epochs=1)
    cfg.data_root, cfg.synthetic_images, cfg.synthetic_seed = None, 48, 3
    root = reproduce(cfg, folds=(0,))
    out = capsys.readouterr().out
    assert "| 0.3 | CCG (this run, 1 fold) |" in out
    assert "| 0.3 | Baseline (this run, 1 fold) |" in out
    assert "1 folds" not in out
    runs = [x for x in out.splitlines() if "(this run" in x]
    assert runs
    assert not any("±" in x for x in runs)
    stats = json.loads((root / "reproduce.json").read_text())
    assert set(stats["methods"]) == {"CCG", "Baseline", "Prior", "Whole image"}
    losses = json.loads((root / "fold0-baseline" / "config.json").read_text())["losses"]
    assert losses == ["base"]


def test_reproduce_of_the_baseline_alone_trains_it_once(make_config):
    cfg = make_config(run_name="base", epochs=1, losses=("base",))
    cfg.data_root, cfg.synthetic_images, cfg.synthetic_seed = None, 48, 3
    root = reproduce(cfg, folds=(0,))
    assert not (root / "fold0-baseline").exists()
    assert set(json.loads((root / "reproduce.json").read_text())["methods"]) == {
        "Baseline",
        "Prior",
        "Whole image",
    }


# --------------------------------------------------------------------------- load_model


def _script_elsewhere(tmp_path: Path, checkpoint: Path, site_dir: Path | None) -> Any:
    """Run a script from an empty folder with the environment's packages but not the checkout
    (nor the editable finders of the environment's own install); ``site_dir`` holds an
    editable install's files, processed like site-packages."""
    script = tmp_path / "elsewhere" / "use_checkpoint.py"
    script.parent.mkdir()
    script.write_text(
        "from examples.ccg_net import load_model\n"
        "import examples.ccg_net\n"
        f"model, cfg = load_model({str(checkpoint)!r})\n"
        "print(type(model).__name__, cfg.image_size, examples.ccg_net.__file__)\n"
    )
    boot = "import runpy, site, sys\n"
    if site_dir is not None:
        boot += f"site.addsitedir({str(site_dir)!r})\n"
    boot += f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
    boot += f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", boot],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_load_model_works_from_a_script_in_any_directory_after_the_editable_install(
    make_config, tmp_path
):
    run = train(make_config(run_name="ckpt", epochs=1, losses=("base",))).run_dir
    # the documented install, pip install -e ".[examples]", builds this editable wheel (PEP 660)
    checkout = tmp_path / "checkout"
    for name in ("ccg_layers", "examples"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, checkout / name)
    wheels = tmp_path / "wheels"
    build = "from setuptools import build_meta; print(build_meta.build_editable(%r))"
    subprocess.run(
        [sys.executable, "-c", build % str(wheels)],
        cwd=checkout,
        check=True,
        capture_output=True,
    )
    site_dir = tmp_path / "site-packages"
    zipfile.ZipFile(next(wheels.glob("*.whl"))).extractall(site_dir)
    done = _script_elsewhere(tmp_path, run / "checkpoints" / "last.pt", site_dir)
    assert done.returncode == 0, done.stderr
    name, size, where = done.stdout.split()
    assert (name, size) == ("CCGNet", "64")
    assert Path(where).is_relative_to(checkout / "examples" / "ccg_net")


def test_without_the_install_a_script_elsewhere_cannot_import_the_trainer(make_config, tmp_path):
    done = _script_elsewhere(tmp_path, tmp_path / "unused.pt", None)
    assert done.returncode != 0
    assert "No module named 'examples'" in done.stderr


# --------------------------------------------------------------------------- options


def _verbs() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("verb", cli.VERBS)
def test_every_option_has_help_text_beyond_its_default(verb):
    for action in _verbs()[verb]._actions:
        text = re.sub(r"\s*\([^()]*\)$", "", action.help or "").strip()
        assert text, f"{verb} {action.option_strings or action.dest}: no help text"


def test_every_configuration_field_is_in_one_help_section():
    names = [n for group in OPTION_GROUPS.values() for n in group]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in dataclasses.fields(TrainConfig)} - {"preset"}


@pytest.mark.parametrize("verb", ["train", "reproduce", "pretrain"])
def test_the_options_are_grouped_in_sections(verb):
    titles = {g.title: g for g in _verbs()[verb]._action_groups}
    assert list(OPTION_GROUPS) == [t for t in titles if t in OPTION_GROUPS]
    assert OTHER_OPTIONS not in titles
    loose = [a.dest for a in titles["options"]._group_actions]
    assert loose == ["help", "preset"]  # every other option is in a section


def test_the_help_lists_the_sections_in_order(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    heads = [out.index(f"\n{title}:\n") for title in OPTION_GROUPS]
    assert heads == sorted(heads)
    assert out.index("--ablation") > out.index("\nlosses and relation terms (Eq. 1-11):\n")
