"""Bad files of the training and test data are named before any work (issue 19): a fast
pass over the split's images (open, header, PNG chunks; cached by name, modification time
and size) and their boxes against the 1024-pixel frame; an unwritable ``--output-dir`` is one
line too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from examples.ccg_net import cli
from examples.ccg_net.config import resolve_config
from examples.ccg_net.data import DataFileError, check_image_files, plan_split
from examples.ccg_net.runs import train

from .trainer_helpers import one_error_line, tiny_config


@pytest.fixture
def root(tiny_root: Path, tmp_path: Path) -> Path:
    """A copy of the tiny synthetic dataset, for each test to damage."""
    return Path(shutil.copytree(tiny_root, tmp_path / "data"))


def _argv(root: Path, tmp_path: Path) -> list[str]:
    """A demo-preset run (setting b) with all relation terms on the tiny dataset."""
    return [
        "train",
        "--preset",
        "demo",
        "--ablation",
        "ir+ik+kr",
        "--data-root",
        str(root),
        "--output-dir",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--image-size",
        "64",
        "--superpixel-size",
        "16",
        "--num-patches",
        "4",
        "--batch-size",
        "4",
    ]


def _split(argv: list[str]) -> dict[str, list[str]]:
    cfg = resolve_config(cli.build_parser().parse_args(argv))
    return plan_split(cfg)[cfg.fold]


def _fails_at_start(capsys, argv: list[str], tmp_path: Path, *matches: str) -> str:
    """One ``error:`` line holding ``matches``, exit 2, and no run directory."""
    code = cli.main(argv)
    line = one_error_line(capsys.readouterr().err, code, *matches)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    return line


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------- training images


def test_a_truncated_training_image_stops_the_run_at_start_with_its_path(root, tmp_path, capsys):
    argv = _argv(root, tmp_path)
    bad = root / "images" / _split(argv)["train"][5]
    _truncate(bad)
    _fails_at_start(
        capsys, argv, tmp_path, f"1 training image(s) cannot be used: {bad}: damaged (truncated"
    )


def test_a_text_file_as_a_training_image_stops_the_run_at_start_with_its_path(
    root, tmp_path, capsys
):
    argv = _argv(root, tmp_path)
    bad = root / "images" / _split(argv)["train"][0]
    bad.write_text("not an image\n")
    _fails_at_start(capsys, argv, tmp_path, f"{bad}: not an image Pillow can read")


def test_a_1x1_training_image_is_named_before_the_superpixel_pass(root, tmp_path, capsys):
    argv = _argv(root, tmp_path)
    bad = root / "images" / _split(argv)["train"][-1]
    Image.new("L", (1, 1)).save(bad)
    line = _fails_at_start(capsys, argv, tmp_path, f"{bad}: 1x1 pixels")
    assert "at least --superpixel-size 16 pixels" in line
    assert not (tmp_path / "cache" / "superpixels").exists()  # the pass never started


def test_the_library_raises_a_data_file_error_before_the_run_directory(tiny_root, root, tmp_path):
    cfg = tiny_config(root, tmp_path)
    bad = root / "images" / plan_split(cfg)[cfg.fold]["train"][0]
    _truncate(bad)
    with pytest.raises(DataFileError, match=str(bad)):
        train(cfg)
    assert not Path(cfg.output_dir).exists()


# --------------------------------------------------------------------------- test images


def test_a_truncated_test_image_stops_the_run_at_start_not_after_training(root, tmp_path, capsys):
    argv = _argv(root, tmp_path)
    bad = root / "images" / _split(argv)["test"][0]
    _truncate(bad)
    _fails_at_start(capsys, argv, tmp_path, f"1 test image(s) cannot be used: {bad}: damaged")


def test_a_box_outside_the_frame_stops_the_run_at_start_with_its_image(root, tmp_path, capsys):
    argv = _argv(root, tmp_path)
    csv = root / "BBox_List_2017.csv"
    header, first, *rest = csv.read_text().splitlines()
    name, label = first.split(",")[:2]
    assert name in _split(argv)["test"]  # setting b tests on the boxed images
    csv.write_text("\n".join([header, f"{name},{label},5000,5000,100,80", *rest]) + "\n")
    _fails_at_start(
        capsys,
        argv,
        tmp_path,
        "1 box(es) of BBox_List_2017.csv lie wholly outside the 1024x1024 frame",
        f"{name} {label} box x=5000 y=5000 w=100 h=80",
    )


# --------------------------------------------------------------------------- the pass's cache


def _count_opens(monkeypatch) -> list[Path]:
    opened: list[Path] = []
    real = Image.open

    def counting(path, *args, **kwargs):
        opened.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return opened


def test_the_pass_opens_each_file_once_and_then_only_changed_ones(root, tmp_path, monkeypatch):
    paths = sorted((root / "images").glob("*.png"))
    opened = _count_opens(monkeypatch)
    check_image_files(paths, root=root, cache_dir=tmp_path / "cache", what="training image")
    assert sorted(opened) == paths
    opened.clear()
    check_image_files(paths, root=root, cache_dir=tmp_path / "cache", what="training image")
    assert opened == []  # every file from the cache
    os.utime(paths[3], ns=(1, 1))  # another modification time: checked again
    check_image_files(paths, root=root, cache_dir=tmp_path / "cache", what="training image")
    assert opened == [paths[3]]


def test_a_file_damaged_after_it_was_cached_is_still_caught(root, tmp_path):
    paths = sorted((root / "images").glob("*.png"))
    check_image_files(paths, root=root, cache_dir=tmp_path / "cache", what="training image")
    _truncate(paths[7])  # another size
    with pytest.raises(DataFileError, match=f"{paths[7]}: damaged"):
        check_image_files(paths, root=root, cache_dir=tmp_path / "cache", what="training image")


def test_an_unreadable_cache_is_ignored_and_rewritten(root, tmp_path):
    paths = sorted((root / "images").glob("*.png"))
    check_image_files(paths, root=root, cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache" / "file-checks").iterdir()
    cache.write_text("{not json")
    check_image_files(paths, root=root, cache_dir=tmp_path / "cache")
    assert cache.read_text().startswith('{"files": {')


# --------------------------------------------------------------------------- train's output


def test_an_output_dir_below_a_file_is_one_line_before_any_work(root, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = _argv(root, tmp_path)
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "file" / "runs")
    line = _fails_at_start(capsys, argv, tmp_path, "is a file, so the folder cannot be made")
    assert line.startswith(f"error: --output-dir {tmp_path / 'file' / 'runs'}: ")
    assert not (tmp_path / "cache").exists()  # no work: not even the cache folder


def test_a_cache_dir_below_a_file_or_read_only_is_one_line_before_any_work(
    root, tmp_path, capsys, monkeypatch
):
    (tmp_path / "file").write_text("x")
    argv = _argv(root, tmp_path)
    argv[argv.index("--cache-dir") + 1] = str(tmp_path / "file" / "cache")
    line = _fails_at_start(capsys, argv, tmp_path, "is a file, so the folder cannot be made")
    assert line.startswith(f"error: --cache-dir {tmp_path / 'file' / 'cache'}: ")
    cache = tmp_path / "read-only-cache"
    cache.mkdir()
    _read_only(cache, monkeypatch)
    argv[argv.index("--cache-dir") + 1] = str(cache)
    try:
        _fails_at_start(capsys, argv, tmp_path, f"--cache-dir {cache} is not writable")
    finally:
        cache.chmod(0o755)
    assert not (tmp_path / "runs").exists()  # no work: not even the output folder


def _read_only(folder: Path, monkeypatch) -> None:
    """``folder`` read-only: its mode, and ``os.access`` answering as for any user other than
    root (root ignores the mode bits)."""
    folder.chmod(0o555)
    real = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_a_read_only_output_dir_is_one_line_before_any_work(root, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    _read_only(runs, monkeypatch)
    try:
        _fails_at_start(
            capsys, _argv(root, tmp_path), tmp_path, f"--output-dir {runs} is not writable"
        )
    finally:
        runs.chmod(0o755)
    assert not (tmp_path / "cache").exists()


def test_a_read_only_run_directory_to_resume_is_one_line_before_any_work(
    finished_tiny_run, tmp_path, capsys, monkeypatch
):
    run = Path(shutil.copytree(finished_tiny_run, tmp_path / "run"))
    before = sorted(p.name for p in run.rglob("*"))
    _read_only(run, monkeypatch)
    try:
        # --output-dir (here: below a file) does not matter to a resumed run
        (tmp_path / "file").write_text("x")
        argv = ["train", "--resume", str(run), "--output-dir", str(tmp_path / "file" / "runs")]
        _fails_at_start(capsys, argv, tmp_path, f"--resume {run} is not writable")
    finally:
        run.chmod(0o755)
    assert sorted(p.name for p in run.rglob("*")) == before
