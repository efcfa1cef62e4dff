"""Nothing lost under faults (issue 19, point 4): checkpoints, atomic writes, resume, locks and a
full disk, each probe of the issue one test."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from examples.ccg_net import checkpoint as ckpt
from examples.ccg_net import cli, engine, runs
from examples.ccg_net.checkpoint import RunDirError, new_run_dir
from examples.ccg_net.config import TrainConfig, load_config
from examples.ccg_net.engine import NonFiniteWeightsError
from examples.ccg_net.runs import train

from .trainer_helpers import SimulatedKillError, killed_after_steps, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _flags(cfg: TrainConfig, **changes: Any) -> list[str]:
    """``cfg`` as the command line's options (every field but the preset, which the tests'
    configuration names ``test``), with ``changes``."""
    argv = []
    for f in dataclasses.fields(TrainConfig):
        value = changes.get(f.name, getattr(cfg, f.name))
        if f.name == "preset" or value is None:
            continue
        if isinstance(value, tuple):
            shown = ",".join(map(str, value))
        else:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
        argv += ["--" + f.name.replace("_", "-"), shown]
    return argv


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def _temp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*.tmp")]


@pytest.fixture(scope="module")
def finished(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (L_base alone: the report's model is "Baseline")."""
    out = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(tiny_root, out, run_name="done", epochs=1, losses=("base",), num_figures=1)
    return train(cfg, print_report=False).run_dir


@pytest.fixture
def copy_of(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, to resume or break."""
    return Path(shutil.copytree(finished, tmp_path / "copy"))


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- checkpoints


def _all_finite(path: Path) -> bool:
    state = ckpt.load(path)
    tensors = ckpt.state_tensors([state["model"], state["criterion"], state["optimizer"]])
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def test_a_diverging_run_exits_3_and_every_checkpoint_it_leaves_is_finite(make_config, capsys):
    # the probe: at a huge rate the update makes BatchNorm's running_var infinite
    # while the loss is still finite (here at --lr 1e8, step 2, on this trainer's tiny model)
    cfg = make_config(run_name="diverged", losses=("base",), checkpoint_every=1)
    assert cli.main(["train", *_flags(cfg, lr=1e8)]) == 3
    assert "--lr LOWER" in capsys.readouterr().err
    saved = sorted((Path(cfg.output_dir) / "diverged" / "checkpoints").glob("*.pt"))
    assert saved
    assert all(_all_finite(p) for p in saved)


def test_non_finite_buffers_are_not_saved_and_the_last_finite_checkpoint_is_named(
    make_config, monkeypatch
):
    # BatchNorm's running_var turns infinite after step 3; the loss, which uses the batch's
    # statistics in training, stays finite: only the check of what is saved can see it
    real_step = engine.train_step
    steps = {"n": 0}

    def diverging_buffers(net, *args, **kwargs):
        out = real_step(net, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 3:
            bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
            bn.running_var.fill_(math.inf)
        return out

    monkeypatch.setattr(engine, "train_step", diverging_buffers)
    cfg = make_config(run_name="buffers", checkpoint_every=2)
    last = Path(cfg.output_dir) / "buffers" / "checkpoints" / "last.pt"
    with pytest.raises(NonFiniteWeightsError, match="running_var") as err:
        train(cfg)
    assert f"the last finite checkpoint is {last}" in str(err.value)
    assert f"--resume {last.parent.parent} --lr LOWER" in str(err.value)
    assert ckpt.load(last)["global_step"] == 2  # step 4's checkpoint was not written
    assert _all_finite(last)
    assert not _temp_files(last.parent.parent)


def test_the_finiteness_check_is_one_reduction_over_every_floating_tensor():
    ok = [torch.ones(3), torch.zeros(2, 2, dtype=torch.float16), torch.arange(4)]
    assert bool(ckpt.all_finite(ok))
    assert ckpt.all_finite(ok).shape == ()
    assert bool(ckpt.all_finite([torch.empty(0), torch.tensor([3e38])]))
    for bad in (math.nan, math.inf, -math.inf):
        assert not bool(ckpt.all_finite([*ok, torch.tensor([1.0, bad])]))
    state = {"a": {"b": [torch.ones(1), (torch.tensor([math.nan]),)]}, "n": 3}
    assert not bool(ckpt.all_finite(ckpt.state_tensors(state)))


# --------------------------------------------------------------------------- atomic writes


def _kill_while_replacing(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Stop the run (as a kill would) while ``name`` is written: the new content is complete
    in its temporary file, not yet renamed."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise SimulatedKillError(f"killed while writing {name}")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "metrics.json",
        "metrics.csv",
        "results.md",
        "results.json",
        "predictions-baseline.pt",
        "last.pt",
    ],
)
def test_a_kill_while_writing_a_file_leaves_the_previous_one_and_the_run_resumable(
    copy_of, monkeypatch, name
):
    before = _files(copy_of)
    target = next(k for k in before if Path(k).name == name)
    _kill_while_replacing(monkeypatch, name)
    with pytest.raises(SimulatedKillError):
        train(load_config(copy_of), resume_dir=copy_of, changes={"epochs": 2})
    monkeypatch.undo()
    assert (copy_of / target).read_bytes() == before[target]
    assert not _temp_files(copy_of)
    run = train(load_config(copy_of), resume_dir=copy_of, changes={"epochs": 2})
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert torch.load(run.run_dir / "predictions-baseline.pt", weights_only=True)["names"]


def test_temporary_files_of_a_killed_write_are_removed_at_the_next_start(copy_of):
    # what a kill -9 during write_atomic leaves: '.NAME.XXXXXXXX.tmp' (mkstemp's 8 characters)
    left = [
        copy_of / "checkpoints" / ".last.pt.k2_x9abc.tmp",
        copy_of / ".metrics.json.0a1b2c3d.tmp",
        copy_of / "figures" / ".overlay.png.zz99yy88.tmp",
    ]
    for p in left:
        p.write_bytes(b"\0" * 4096)
    mine = [copy_of / "notes.tmp", copy_of / ".editor.tmp", copy_of / "checkpoints" / "keep.pt.tmp"]
    for p in mine:
        p.write_text("a user's file")
    train(load_config(copy_of), resume_dir=copy_of, print_report=False)
    assert not any(p.exists() for p in left)
    assert all(p.read_text() == "a user's file" for p in mine)


def test_an_exclusive_write_creates_the_file_once(tmp_path):
    ckpt.write_atomic(tmp_path / "c.json", lambda f: f.write(b"first"), exclusive=True)
    with pytest.raises(FileExistsError):
        ckpt.write_atomic(tmp_path / "c.json", lambda f: f.write(b"second"), exclusive=True)
    assert (tmp_path / "c.json").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


# --------------------------------------------------------------------------- resume


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = json.loads((run_dir / "metrics.json").read_text())["epochs"]
    return [{k: v for k, v in r.items() if k != "train_images_per_s"} for r in rows]


def test_a_kill_during_evaluation_evaluates_that_epoch_again_and_records_it_once(
    make_config, monkeypatch
):
    full = train(make_config(run_name="uninterrupted", num_figures=0)).run_dir
    cfg = make_config(run_name="killed", num_figures=0)
    real = runs.evaluate

    def killed(*args, **kwargs):
        raise SimulatedKillError("killed during the evaluation of epoch 1")

    monkeypatch.setattr(runs, "evaluate", killed)
    with pytest.raises(SimulatedKillError):
        train(cfg)
    run_dir = Path(cfg.output_dir) / "killed"
    assert ckpt.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 1  # saved before
    assert not (run_dir / "metrics.json").exists()  # ... the row was lost here
    evaluated = []
    monkeypatch.setattr(runs, "evaluate", lambda *a, **k: evaluated.append(1) or real(*a, **k))
    train(cfg, resume_dir=run_dir)
    assert len(evaluated) == 2  # epoch 1 again, then epoch 2 (which the report shows)
    assert _rows(run_dir) == _rows(full)
    csv_epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().split()]
    assert csv_epochs == ["epoch", "1", "2"]


def test_epoch_means_after_a_mid_epoch_resume_cover_the_whole_epoch(make_config):
    # 7 steps an epoch, checkpoints every 4; killed after step 9, resumed from step 8
    full = train(make_config(run_name="uninterrupted", checkpoint_every=4, num_figures=0))
    cfg = make_config(run_name="killed", checkpoint_every=4, num_figures=0)
    with pytest.raises(SimulatedKillError), killed_after_steps(9):
        train(cfg)
    resumed = train(cfg, resume_dir=Path(cfg.output_dir) / "killed")
    assert _rows(resumed.run_dir) == _rows(full.run_dir)  # the same sums over the same steps


def test_resume_with_more_epochs_extends_the_run(copy_of, capsys):
    assert cli.main(["train", "--resume", str(copy_of), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in _rows(copy_of)] == [1, 2]
    assert ckpt.load(copy_of / "checkpoints" / "last.pt")["epoch"] == 2
    assert load_config(copy_of).epochs == 2


def test_resume_with_a_lower_lr_lowers_the_optimizers_rate(copy_of):
    # the run: lr 1e-3, x0.1 every epoch (1e-4 after epoch 1); resumed at 1e-5, the decay so
    # far kept: 1e-6 in epoch 2 (its row's rate), 1e-7 after it
    assert load_config(copy_of).lr == 1e-3
    assert cli.main(["train", "--resume", str(copy_of), "--epochs", "2", "--lr", "1e-5"]) == 0
    assert _rows(copy_of)[1]["lr"] == pytest.approx(1e-6, rel=1e-12)
    state = ckpt.load(copy_of / "checkpoints" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-7, rel=1e-12)
    assert state["scheduler"]["base_lrs"] == [pytest.approx(1e-5, rel=1e-12)]
    assert load_config(copy_of).lr == 1e-5


def test_resume_with_options_that_cannot_change_is_one_error_listing_them(copy_of, capsys):
    before = _files(copy_of)
    argv = ["train", "--resume", str(copy_of), "--batch-size", "8", "--lr", "1e-4"]
    assert cli.main([*argv, "--seed", "1", "--ablation", "ir"]) == 2
    line = _one_error_line(capsys)
    assert "--batch-size (run: 4, given: 8)" in line
    assert "--seed (run: 0, given: 1)" in line
    assert "--losses (run: base, given: base,ir)" in line
    assert "--lr (" not in line  # changeable
    assert "--epochs" in line  # named among those that can change
    assert _files(copy_of) == before


def test_resume_counts_only_the_options_typed_not_their_defaults(copy_of):
    # the run's preset is "test", its batch 4: neither --preset's default (paper) nor the
    # paper preset's batch of 2 is a difference; an option typed with the run's value is none
    assert cli.main(["train", "--resume", str(copy_of), "--batch-size", "4"]) == 0


def test_resume_of_an_unreadable_config_json_is_one_error_line(copy_of, capsys):
    (copy_of / "config.json").write_text("")
    assert cli.main(["train", "--resume", str(copy_of)]) == 2
    assert "config.json is not a run configuration" in _one_error_line(capsys)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(make_config):
    full = train(make_config(run_name="uninterrupted", num_figures=0)).run_dir
    cfg = make_config(run_name="early", num_figures=0)
    with pytest.raises(SimulatedKillError), killed_after_steps(3):
        train(cfg)
    run_dir = Path(cfg.output_dir) / "early"
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    train(cfg, resume_dir=run_dir)
    a, b = (ckpt.load(d / "checkpoints" / "last.pt") for d in (full, run_dir))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


# --------------------------------------------------------------------------- locks


def _hold_lock(run_dir: Path) -> subprocess.Popen[str]:
    """Another process holding ``run_dir``'s lock, as a live run does."""
    code = (
        "import sys, time; from pathlib import Path; "
        "from examples.ccg_net.checkpoint import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(120)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_directory_in_use_by_a_live_run_is_refused(copy_of, capsys):
    before = _files(copy_of)
    holder = _hold_lock(copy_of)
    try:
        assert cli.main(["train", "--resume", str(copy_of), "--epochs", "2"]) == 2
    finally:
        holder.kill()
        holder.wait()
    line = _one_error_line(capsys)
    assert f"{copy_of} is in use by a live run (process {holder.pid} holds" in line
    # nothing written (but the holder's lock file, which its kill left)
    assert {k: v for k, v in _files(copy_of).items() if k != ckpt.LOCK_NAME} == before


def test_a_crashed_runs_lock_is_taken_over(copy_of):
    holder = _hold_lock(copy_of)
    holder.kill()  # kill -9: no clean-up; the kernel releases the lock, the file stays
    holder.wait()
    assert (copy_of / ckpt.LOCK_NAME).read_text().strip() == str(holder.pid)
    assert cli.main(["train", "--resume", str(copy_of), "--epochs", "2"]) == 0
    assert not (copy_of / ckpt.LOCK_NAME).exists()  # released at the end


def test_a_second_run_with_the_name_of_a_live_one_is_refused(make_config):
    cfg = make_config(run_name="twice")
    first = new_run_dir(cfg)  # the first run has claimed its directory and holds its lock
    with ckpt.run_lock(first):
        before = _files(first)
        with pytest.raises(RunDirError, match=r"twice: .* already holds a run"):
            train(cfg)
        with pytest.raises(ckpt.RunLockedError, match=f"process {os.getpid()} holds"):
            train(cfg, resume_dir=first)
        assert _files(first) == before


def test_a_reused_run_name_without_resume_is_refused_before_any_work(copy_of, capsys):
    before = _files(copy_of)
    cfg = load_config(copy_of)
    argv = _flags(cfg, output_dir=str(copy_of.parent), run_name=copy_of.name)
    assert cli.main(["train", *argv]) == 2
    line = _one_error_line(capsys)
    assert f"--run-name copy: {copy_of} already holds a run; continue it with --resume" in line
    assert _files(copy_of) == before  # no mixed metrics rows, no stale epoch checkpoint


def test_default_run_names_started_in_the_same_second_get_their_own_directories(
    make_config, monkeypatch
):
    monkeypatch.setattr(ckpt.time, "strftime", lambda *a: "20260101-120000")
    cfg = make_config(run_name=None)
    dirs = [new_run_dir(cfg) for _ in range(3)]
    assert [d.name for d in dirs] == [
        "test-base+ir+ik+kr-20260101-120000",
        "test-base+ir+ik+kr-20260101-120000-2",
        "test-base+ir+ik+kr-20260101-120000-3",
    ]


# --------------------------------------------------------------------------- disk


class _FullDisk(io.RawIOBase):
    """A file on a disk that fills up after ``room`` bytes."""

    def __init__(self, f: Any, room: int) -> None:
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)


def _fill_disk_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The disk is full when ``name`` is written (16 bytes fit); ``torch.save`` reports that
    as ``RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos``."""
    real = ckpt.write_atomic

    def write_atomic(path, write, **kwargs):
        if Path(path).name == name:
            return real(path, lambda f: write(_FullDisk(f, 16)), **kwargs)
        return real(path, write, **kwargs)

    monkeypatch.setattr(ckpt, "write_atomic", write_atomic)


@pytest.mark.parametrize(
    "name", ["last.pt", "metrics.json", "predictions-baseline.pt", "config.json"]
)
def test_a_full_disk_is_one_line_naming_the_file_and_corrupts_nothing(
    copy_of, monkeypatch, capsys, name
):
    before = _files(copy_of)
    target = next(k for k in before if Path(k).name == name)
    _fill_disk_at(monkeypatch, name)
    assert cli.main(["train", "--resume", str(copy_of), "--epochs", "2"]) == 2
    line = _one_error_line(capsys)
    assert f"cannot write {copy_of / target}: No space left on device" in line
    assert (copy_of / target).read_bytes() == before[target]
    assert not _temp_files(copy_of)
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(copy_of), "--epochs", "2"]) == 0  # resumable


def test_resume_does_not_compare_the_new_run_folder_options():
    # a resumed run is the directory --resume names (copied or moved there); --output-dir and
    # --run-name name a new run's folder and are not compared with config.json
    from examples.ccg_net.config import RESUME_IGNORED, TrainConfig, resume_config

    saved = TrainConfig(output_dir="/runs/a", run_name="x")
    cfg = resume_config(saved, {"output_dir": "/elsewhere", "run_name": "y"}, "/moved/x")
    assert (cfg.output_dir, cfg.run_name) == ("/runs/a", "x")
    assert {"output_dir", "run_name"} == RESUME_IGNORED
