"""Damaged or mismatched checkpoints: one ``error:`` line saying what is wrong, exit 2, for
``predict``, ``evaluate`` and ``train --resume`` alike (issue 19, the 9 checkpoint probes)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.ccg_net import checkpoint as ckpt
from examples.ccg_net import cli
from examples.ccg_net.config import PRESETS, TrainConfig
from examples.ccg_net.model import model_from_config

from .trainer_helpers import one_error_line

VERBS = ("predict", "evaluate", "resume")


def _run_with(tmp_path: Path, finished_tiny_run: Path, damage: Callable[[Path], None]) -> Path:
    """A copy of the finished run whose checkpoints/last.pt ``damage`` has changed."""
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run)
    damage(run / "checkpoints" / "last.pt")
    return run


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A damage that loads the checkpoint, changes its dict and saves it again."""

    def damage(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)

    return damage


def _argv(verb: str, run: Path, tmp_path: Path, tiny_root: Path) -> list[str]:
    last = str(run / "checkpoints" / "last.pt")
    if verb == "predict":
        image = next((tiny_root / "images").glob("*.png"))
        return ["predict", "--checkpoint", last, "--out", str(tmp_path / "pred"), str(image)]
    if verb == "evaluate":
        return ["evaluate", last]
    return ["train", "--resume", str(run), "--output-dir", str(tmp_path / "runs")]


def _assert_one_line(capsys: pytest.CaptureFixture[str], code: int, *matches: str) -> str:
    return one_error_line(capsys.readouterr().err, code, *matches)


def _fails(verb, run, tmp_path, tiny_root, capsys, *matches: str) -> str:
    line = _assert_one_line(capsys, cli.main(_argv(verb, run, tmp_path, tiny_root)), *matches)
    assert not (tmp_path / "pred").exists()  # predict wrote nothing
    assert not (tmp_path / "runs").exists()  # resume made no new run
    return line


# --------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("verb", VERBS)
def test_a_truncated_checkpoint_is_named_damaged(
    verb, finished_tiny_run, tmp_path, tiny_root, capsys
):
    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    run = _run_with(tmp_path, finished_tiny_run, truncate)
    _fails(verb, run, tmp_path, tiny_root, capsys, "last.pt is damaged", "truncated")


@pytest.mark.parametrize("verb", VERBS)
def test_a_file_that_is_no_checkpoint_at_all_is_named(
    verb, finished_tiny_run, tmp_path, tiny_root, capsys
):
    def replace_by_an_image(path: Path) -> None:
        shutil.copy(next((tiny_root / "images").glob("*.png")), path)

    run = _run_with(tmp_path, finished_tiny_run, replace_by_an_image)
    _fails(verb, run, tmp_path, tiny_root, capsys, "is not a checkpoint of the CCG-Net trainer")


@pytest.mark.parametrize("verb", VERBS)
def test_a_directory_in_place_of_the_checkpoint_is_named(
    verb, finished_tiny_run, tmp_path, tiny_root, capsys
):
    def replace_by_a_folder(path: Path) -> None:
        path.unlink()
        path.mkdir()

    run = _run_with(tmp_path, finished_tiny_run, replace_by_a_folder)
    _fails(verb, run, tmp_path, tiny_root, capsys, "last.pt is a directory, not a checkpoint")


@pytest.mark.parametrize("verb", VERBS)
def test_a_checkpoint_of_another_type_names_the_type(
    verb, finished_tiny_run, tmp_path, tiny_root, capsys
):
    run = _run_with(tmp_path, finished_tiny_run, lambda path: torch.save([1, 2, 3], path))
    _fails(verb, run, tmp_path, tiny_root, capsys, "holds a list, not the trainer's dict")


# --------------------------------------------------------------------------- wrong contents


@pytest.mark.parametrize(("verb", "key"), [("predict", "config"), ("evaluate", "model")])
def test_a_missing_entry_is_named(verb, key, finished_tiny_run, tmp_path, tiny_root, capsys):
    run = _run_with(tmp_path, finished_tiny_run, _edit(lambda state: state.pop(key)))
    expected = f"lacks '{key}'" if key != "model" else "no 'model' entry"
    _fails(verb, run, tmp_path, tiny_root, capsys, expected)


def test_a_missing_entry_is_named_on_resume(finished_tiny_run, tmp_path, tiny_root, capsys):
    run = _run_with(tmp_path, finished_tiny_run, _edit(lambda state: state.pop("optimizer")))
    _fails("resume", run, tmp_path, tiny_root, capsys, "lacks 'optimizer'")


@pytest.mark.parametrize("verb", VERBS)
def test_another_configurations_weights_are_named(
    verb, finished_tiny_run, tmp_path, tiny_root, capsys
):
    def other_weights(state: dict[str, Any]) -> None:
        cfg = TrainConfig.from_dict(state["config"])
        wider = dataclasses.replace(cfg, tiny_widths=(16, 16, 16, 16), head_channels=12)
        state["model"] = model_from_config(wider, "none").state_dict()

    run = _run_with(tmp_path, finished_tiny_run, _edit(other_weights))
    line = _fails(verb, run, tmp_path, tiny_root, capsys, "weights do not fit the model of")
    shapes = "backbone.stem.0.weight (16, 3, 3, 3) in the checkpoint, (8, 3, 3, 3) in the model"
    assert f"61 of another shape (the first: {shapes})" in line, line


def test_a_paper_checkpoint_resumed_as_a_demo_run_names_its_configuration(
    finished_tiny_run, tmp_path, tiny_root, capsys
):
    def papers(state: dict[str, Any]) -> None:
        paper = TrainConfig(**PRESETS["paper"])  # ResNet-50 at 512 px, the paper preset
        state["model"] = model_from_config(paper, "none").state_dict()
        state["config"] = {**state["config"], **dataclasses.asdict(paper)}

    run = _run_with(tmp_path, finished_tiny_run, _edit(papers))
    line = _fails("resume", run, tmp_path, tiny_root, capsys, "do not fit the model of this run")
    assert "backbone resnet50, head 512 channels, 512 px, preset paper" in line, line


@pytest.mark.parametrize("verb", VERBS)
def test_an_unknown_configuration_key_is_named(
    verb, finished_tiny_run, tmp_path, tiny_root, capsys
):
    run = _run_with(tmp_path, finished_tiny_run, _edit(lambda s: s["config"].update(frobnicate=1)))
    _fails(verb, run, tmp_path, tiny_root, capsys, "'frobnicate', unknown to this trainer")


def test_a_checkpoint_made_with_a_removed_option_loads_at_its_default_only(
    finished_tiny_run, tmp_path, tiny_root, capsys
):
    # options removed after commit 4d6a716 (issue 19): at their default the run still loads
    off = {"stop_after_steps": 0, "relation_start_epoch": 0, "graph_lr_mult": 1.0}
    run = _run_with(tmp_path, finished_tiny_run, _edit(lambda s: s["config"].update(off)))
    ckpt.load_model(run)
    trained = _run_with(
        tmp_path / "glr",
        finished_tiny_run,
        _edit(lambda s: s["config"].update(graph_lr_mult=100.0)),
    )
    _fails("evaluate", trained, tmp_path, tiny_root, capsys, "removed after commit 4d6a716")


@pytest.mark.parametrize("verb", VERBS)
def test_non_finite_weights_are_named(verb, finished_tiny_run, tmp_path, tiny_root, capsys):
    def poison(state: dict[str, Any]) -> None:
        state["model"]["head.3.bias"][0] = float("nan")
        state["model"]["head.1.running_var"][1] = float("inf")

    run = _run_with(tmp_path, finished_tiny_run, _edit(poison))
    line = _fails(verb, run, tmp_path, tiny_root, capsys, "non-finite values (NaN or inf)")
    assert "2 model tensor(s): head.1.running_var, head.3.bias" in line, line


def test_the_undamaged_copy_loads_resumes_and_predicts(finished_tiny_run, tmp_path, tiny_root):
    """The damages above are the only difference: the copy itself is a good checkpoint."""
    run = _run_with(tmp_path, finished_tiny_run, lambda path: None)
    model, cfg = ckpt.load_model(run)
    assert cfg.run_name == "good"
    assert not model.training
    assert cli.main(_argv("predict", run, tmp_path, tiny_root)) == 0
    assert cli.main(_argv("resume", run, tmp_path, tiny_root)) == 0
