"""``predict`` under bad inputs and bad outputs: a bad input is one line naming it and the
others are still predicted (exit 1); output names never collide; an unwritable or full output
is one line naming the path (exit 2) and leaves no partial file; ``summary.csv`` covers every
input; a checkpoint trained on the synthetic twin is noted once (issue 19)."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch

from examples.ccg_net import cli
from examples.ccg_net import predict as predict_module
from examples.ccg_net.checkpoint import write_atomic

from .trainer_helpers import one_error_line

GOOD = ("good1.png", "good2.png")


def _png_of_zeros(width: int, height: int, rows_per_block: int = 100) -> bytes:
    """A valid 8-bit gray PNG of ``width`` x ``height`` black pixels, built in a fraction of a
    second whatever its size: the zlib stream repeats one fully flushed block of zero rows."""
    block = bytes(width + 1) * rows_per_block  # each row: filter byte 0, then the pixels
    co = zlib.compressobj(9)
    first = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)  # no history: the same bytes
    end = co.flush()[:-4]
    n = len(block) * (height // rows_per_block)
    adler = ((n % 65521) << 16) | 1  # Adler-32 of n zero bytes
    stream = first + again * (height // rows_per_block - 1) + end + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    )


@pytest.fixture
def images(tiny_root: Path, tmp_path: Path) -> Path:
    """A folder with two good radiographs (each test adds its bad one)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, src in zip(GOOD, sorted((tiny_root / "images").glob("*.png")), strict=False):
        shutil.copy(src, folder / name)
    return folder


def _predict(
    run: Path, out: Path, *inputs: Path, overlays: bool = False, threshold: float = 0.01
) -> int:
    argv = ["predict", "--checkpoint", str(run), "--out", str(out), "--threshold", str(threshold)]
    return cli.main([*argv, *([] if overlays else ["--no-overlays"]), *map(str, inputs)])


def _read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _summary(out: Path) -> dict[str, dict[str, str]]:
    return {Path(row["image"]).name: row for row in _read_rows(out)}


def _top_class(run: Path, image: Path, tmp_path: Path) -> tuple[str, float]:
    """The most probable class of ``image`` and a threshold just below its probability, so
    that a prediction at that threshold draws one overlay (each takes a fraction of a second)."""
    assert _predict(run, tmp_path / "probe", image) == 0
    probs = json.loads((tmp_path / "probe" / f"{image.stem}.json").read_text())["probabilities"]
    top = max(probs, key=probs.get)
    return top, probs[top] * 0.999


def _assert_skipped(capsys, code: int, bad: Path, reason: str, out: Path) -> None:
    """Exit 1; one error line naming ``bad``; the good images predicted; all in the summary."""
    captured = capsys.readouterr()
    assert code == 1, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: {bad}: "), lines[0]
    assert reason in lines[0], lines[0]
    assert lines[0].endswith("(skipped)"), lines[0]
    assert "Traceback" not in captured.err
    assert "2 predicted, 1 failed" in captured.out
    assert sorted(p.name for p in out.glob("*.json")) == ["good1.json", "good2.json"]
    rows = _summary(out)
    assert rows[bad.name]["status"] == "error"
    assert reason in rows[bad.name]["message"]
    assert rows[bad.name]["output"] == ""
    assert [rows[g]["status"] for g in GOOD] == ["ok", "ok"]


# --------------------------------------------------------------------------- bad inputs


def test_a_truncated_png_is_named_and_the_others_are_predicted(
    finished_tiny_run, images, tmp_path, capsys
):
    data = (images / "good1.png").read_bytes()
    bad = images / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    code = _predict(finished_tiny_run, tmp_path / "out", images)
    _assert_skipped(capsys, code, bad, "damaged (truncated or overwritten?)", tmp_path / "out")


def test_a_text_file_named_png_is_named_and_the_others_are_predicted(
    finished_tiny_run, images, tmp_path, capsys
):
    bad = images / "notes.png"
    bad.write_text("not an image\n")
    code = _predict(finished_tiny_run, tmp_path / "out", images)
    _assert_skipped(capsys, code, bad, "not an image Pillow can read", tmp_path / "out")


def test_a_20000_pixel_square_image_is_named_and_the_others_are_predicted(
    finished_tiny_run, images, tmp_path, capsys
):
    bad = images / "huge.png"
    bad.write_bytes(_png_of_zeros(20000, 20000))
    code = _predict(finished_tiny_run, tmp_path / "out", images)
    _assert_skipped(capsys, code, bad, "too large to decode", tmp_path / "out")


def test_a_symlink_loop_in_a_folder_is_named_and_the_others_are_predicted(
    finished_tiny_run, images, tmp_path, capsys
):
    bad = images / "loop.png"
    os.symlink("loop.png", bad)
    code = _predict(finished_tiny_run, tmp_path / "out", images)
    _assert_skipped(capsys, code, bad, os.strerror(errno.ELOOP), tmp_path / "out")


def test_every_input_predicted_is_exit_0_with_a_summary_row_each(
    finished_tiny_run, images, tmp_path, capsys
):
    out = tmp_path / "out"
    assert _predict(finished_tiny_run, out, images) == 0
    assert capsys.readouterr().err == ""
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(predict_module.SUMMARY_COLUMNS)
    assert [Path(r["image"]).name for r in rows] == list(GOOD)  # the inputs' order
    for row in rows:
        assert row["status"] == "ok"
        assert row["message"] == ""
        record = (out / Path(row["output"]).name).read_text()
        probs = json.loads(record)["probabilities"]
        top = max(probs, key=probs.get)
        assert (row["top_class"], float(row["top_probability"])) == (
            top,
            pytest.approx(probs[top], abs=5e-4),
        )
        listed = [f.rsplit(" ", 1)[0] for f in row["findings"].split("; ") if f]
        above = sorted((c for c in probs if probs[c] > 0.01), key=lambda c: -probs[c])
        assert listed == above


# --------------------------------------------------------------------------- output names


def test_a_png_and_a_jpg_of_one_name_get_two_outputs(finished_tiny_run, images, tmp_path):
    from PIL import Image

    Image.open(images / "good1.png").convert("RGB").save(images / "good1.jpg")
    out = tmp_path / "out"
    assert _predict(finished_tiny_run, out, images) == 0
    rows = _summary(out)
    # sorted inputs: good1.jpg comes first and keeps the name, good1.png takes good1-2
    assert Path(rows["good1.jpg"]["output"]).name == "good1.json"
    assert Path(rows["good1.png"]["output"]).name == "good1-2.json"
    for name, row in rows.items():
        record = json.loads(Path(row["output"]).read_text())
        assert Path(record["image"]).name == name
        assert all(
            Path(f).name.startswith(Path(row["output"]).stem + "_") for f in record["overlays"]
        )


def test_one_name_in_two_folders_and_in_another_case_get_distinct_outputs(
    finished_tiny_run, images, tmp_path
):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "good1.png", other / "good1.png")
    shutil.copy(images / "good2.png", other / "GOOD2.png")
    out = tmp_path / "out"
    assert _predict(finished_tiny_run, out, images, other) == 0
    outputs = [Path(p).name for p in (r["output"] for r in _read_rows(out))]
    assert outputs == ["good1.json", "good2.json", "GOOD2-2.json", "good1-2.json"]


def test_an_overlay_never_overwrites_an_input_in_the_output_folder(
    finished_tiny_run, images, tmp_path
):
    top, threshold = _top_class(finished_tiny_run, images / "good1.png", tmp_path)
    # --out is the input folder, which holds an input named like good1's overlay
    victim = images / f"good1_{top}.png"
    shutil.move(images / "good2.png", victim)
    before = victim.read_bytes()
    assert _predict(finished_tiny_run, images, images, overlays=True, threshold=threshold) == 0
    assert victim.read_bytes() == before
    names = {Path(r["image"]).name: Path(r["output"]).name for r in _read_rows(images)}
    assert names == {"good1.png": "good1-2.json", victim.name: f"{victim.stem}.json"}
    assert (images / f"good1-2_{top}.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- bad outputs


def _assert_one_line(capsys, code: int, *matches: str) -> str:
    return one_error_line(capsys.readouterr().err, code, *matches)


def test_an_out_below_a_file_is_one_line_before_any_work(images, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "preds"
    # the checkpoint does not exist either: the output is checked first, before any work
    code = _predict(tmp_path / "no-such.pt", out, images)
    _assert_one_line(capsys, code, f"--out {out}:", "is a file, so the folder cannot be made")


def test_a_read_only_out_is_one_line_before_any_work(images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o555)
    real = os.access  # root ignores the mode bits: answer as for any other user

    def access(path, mode, *args, **kwargs):
        if Path(path) == out and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    try:
        code = _predict(tmp_path / "no-such.pt", out, images)
    finally:
        out.chmod(0o755)
    _assert_one_line(capsys, code, f"--out {out} is not writable")
    assert not any(out.iterdir())


@pytest.mark.parametrize("failing", ["good2.json", "good1_{top}.png", "summary.csv"])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_file(
    failing, finished_tiny_run, images, tmp_path, capsys, monkeypatch
):
    top, threshold = _top_class(finished_tiny_run, images / "good1.png", tmp_path)
    failing = failing.format(top=top)

    def full_disk(path, write):
        if Path(path).name != failing:
            return write_atomic(path, write)

        def half_then_enospc(f):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return write_atomic(path, half_then_enospc)

    monkeypatch.setattr(predict_module, "write_atomic", full_disk)
    out = tmp_path / "out"
    capsys.readouterr()
    code = _predict(finished_tiny_run, out, images, overlays=True, threshold=threshold)
    line = _assert_one_line(capsys, code, f"cannot write {out / failing}: No space left on device")
    assert line.count("cannot write") == 1, line  # the path and reason said once
    assert not (out / failing).exists()
    assert not list(out.glob(".*.tmp"))  # write_atomic removed its temporary file
    for path in out.iterdir():  # whatever was written before is whole
        if path.suffix == ".json":
            assert json.loads(path.read_text())["image"]


# --------------------------------------------------------------------------- the model's data


def _twin_checkpoint(run: Path, tmp_path: Path) -> Path:
    """The run's checkpoint as if trained on the synthetic twin: no data_root."""
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["data_root"] = None
    path = tmp_path / "twin.pt"
    torch.save(state, path)
    return path


def test_a_checkpoint_trained_on_the_twin_is_noted_once(
    finished_tiny_run, images, tmp_path, capsys
):
    code = _predict(_twin_checkpoint(finished_tiny_run, tmp_path), tmp_path / "out", images)
    assert code == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # once, for two images
    assert lines[0].startswith("note: ")
    assert "trained on the synthetic ChestX-ray14 twin" in lines[0]


def test_a_checkpoint_trained_on_a_data_root_has_no_note(
    finished_tiny_run, images, tmp_path, capsys
):
    assert _predict(finished_tiny_run, tmp_path / "out", images) == 0
    assert "note:" not in capsys.readouterr().err
