"""``predict``: heatmaps, image-level probabilities and boxes for one's own radiographs.

A file that cannot be read is reported and skipped, the others are still predicted; every
input gets a row of ``summary.csv``. Output names never collide (:func:`output_names`), and
every file is written atomically (:func:`.checkpoint.write_atomic`), so a full disk or a
read-only folder leaves no partial file and stops with :class:`.checkpoint.WriteError` naming
the path (:class:`OutputError` when the output folder cannot be made).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from ccg_layers.datasets import (
    CLASS_NAMES,
    DICOM_SUFFIXES,
    dicom_frame_size,
    read_dicom,
    read_radiograph,
)
from ccg_layers.datasets.dicom import is_dicom
from ccg_layers.functional import maps_to_boxes

from .checkpoint import write_atomic
from .data import DICOM_ERRORS, IMAGE_ERRORS, dicom_problem, image_problem
from .model import CCGNet
from .report import class_file_name

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES)
#: The table over all inputs, in the output folder.
SUMMARY_FILE = "summary.csv"
SUMMARY_COLUMNS = (
    "image",
    "status",
    "message",
    "output",
    "top_class",
    "top_probability",
    "findings",
)


class OutputError(OSError):
    """The output folder could not be made (below a file, a read-only parent); names it. A file
    that cannot be written raises :class:`.checkpoint.WriteError`."""


@dataclass
class Prediction:
    """What ``predict`` did with one input: ``record`` (the JSON written to ``output``) or,
    for a file that could not be read, ``error`` (why)."""

    image: Path
    output: Path
    record: dict[str, Any] | None = None
    error: str = ""


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files among ``inputs`` (files, and the PNG, JPEG and DICOM files of
    folders, sorted), each once.

    Raises:
        FileNotFoundError: An input does not exist, or a folder holds no image.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item}: no PNG, JPEG or DICOM images in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder")
    seen: set[str] = set()
    unique = []
    for f in files:  # a file given twice (itself and in its folder) is predicted once
        key = os.path.normcase(os.path.abspath(f))
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def output_names(
    paths: list[Path], out_dir: Path, class_names: tuple[str, ...] = tuple(CLASS_NAMES)
) -> list[str]:
    """The base name of each input's outputs (``<name>.json``, ``<name>_<class>.png`` for each
    of ``class_names``, the model's classes; default ChestX-ray14's).

    An input's file stem, unless that would write a file another input's outputs already
    take, or an input file of ``out_dir`` itself: then the first free ``<stem>-2``,
    ``<stem>-3``, ... In the order of ``paths``, names compared case-insensitively (as on
    macOS and Windows), so ``a.png`` and ``a.jpg`` give ``a`` and ``a-2``.
    """
    here = os.path.normcase(os.path.abspath(out_dir))
    taken = {
        p.name.casefold() for p in paths if os.path.normcase(os.path.abspath(p.parent)) == here
    }
    names = []
    for path in paths:
        stem, k = path.stem, 1
        while True:
            name = stem if k == 1 else f"{stem}-{k}"
            files = {f.casefold() for f in _output_files(name, class_names)}
            if not files & taken:
                break
            k += 1
        taken |= files
        names.append(name)
    return names


def _output_files(name: str, class_names: tuple[str, ...]) -> list[str]:
    return [f"{name}.json", *(f"{name}_{class_file_name(c)}.png" for c in class_names)]


def _read(path: Path, image_size: int) -> tuple[Tensor, tuple[int, int]]:
    """The radiograph at the working size and the file's own ``(width, height)``: PNG, JPEG,
    or DICOM (VinDr-CXR, RSNA; the ``dicom`` extra), as the dataset reads it.

    Raises:
        ValueError: The file cannot be read, in words (:func:`.data.image_problem`).
    """
    if is_dicom(path):
        try:
            return read_dicom(path, image_size), dicom_frame_size(path)
        except DICOM_ERRORS as err:
            raise ValueError(dicom_problem(err, path)) from None
    try:
        with Image.open(path) as im:
            size = im.size
        return read_radiograph(path, image_size), size
    except IMAGE_ERRORS as err:
        raise ValueError(image_problem(err)) from None


@torch.no_grad()
def predict(
    model: CCGNet,
    image_size: int,
    paths: list[Path],
    out_dir: Path,
    *,
    threshold: float = 0.5,
    batch_size: int = 8,
    overlays: bool = True,
    on_result: Callable[[Prediction], None] | None = None,
    class_names: tuple[str, ...] = tuple(CLASS_NAMES),
) -> list[Prediction]:
    """Run ``model`` on the radiographs ``paths`` and write, per image, ``<name>.json`` and an
    overlay ``<name>_<class>.png`` per positive class (names: :func:`output_names`), then
    ``summary.csv``, one row per input (:func:`write_summary`).

    The JSON holds every class's image-level probability (the noisy-OR of its map) and, for
    each class above ``threshold``, its boxes (connected regions of the map above
    ``threshold``, from :func:`ccg_layers.functional.maps_to_boxes`) with scores, in the
    pixel frame of the file itself. A file that cannot be read gets an ``error`` and no
    output; the others are predicted. ``on_result`` is called with each input's
    :class:`Prediction` as soon as it is done. ``class_names`` are the model's classes, in the
    order of its outputs (the checkpoint's ``--dataset``:
    :func:`.config.dataset_class_names`; default ChestX-ray14's).

    Raises:
        OutputError: The output folder could not be made.
        WriteError: A file could not be written (what was written before stays; no file is
            left half-written).
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the folder {out_dir}: {err.strerror or err}") from None
    device = next(model.parameters()).device
    model.eval()
    results = [
        Prediction(path, out_dir / f"{name}.json")
        for path, name in zip(paths, output_names(paths, out_dir, class_names), strict=True)
    ]
    for start in range(0, len(results), batch_size):
        readable, images, sizes = [], [], []
        for res in results[start : start + batch_size]:
            try:
                image, size = _read(res.image, image_size)
            except ValueError as err:
                res.error = str(err)
                if on_result is not None:
                    on_result(res)
                continue
            readable.append(res)
            images.append(image)
            sizes.append(size)
        if not readable:
            continue
        batch = torch.stack(images)
        logits, feats = model(batch.to(device))
        probs = torch.sigmoid(logits.float()).cpu()
        scores = model.image_scores(feats).cpu()
        boxes, img, cls, box_scores = maps_to_boxes(
            probs, threshold=threshold, image_size=image_size
        )
        for j, res in enumerate(readable):
            mine = img == j
            res.record = _write_one(
                res,
                batch[j, 0],
                probs[j],
                scores[j],
                boxes[mine],
                cls[mine],
                box_scores[mine],
                sizes[j],
                image_size,
                threshold,
                overlays,
                class_names,
            )
            if on_result is not None:
                on_result(res)
    write_summary(results, out_dir / SUMMARY_FILE)
    return results


def write_summary(results: list[Prediction], path: Path) -> None:
    """``summary.csv``: per input its path, ``ok`` or ``error`` with the reason, its JSON file,
    the most probable class with its probability, and the classes above the threshold, most
    probable first (``Mass 0.912; Nodule 0.634``). Written atomically.

    Raises:
        WriteError: The file could not be written.
    """
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(SUMMARY_COLUMNS)
    for res in results:
        if res.record is None:
            rows.writerow([res.image, "error", res.error, "", "", "", ""])
            continue
        probs = res.record["probabilities"]
        top = max(probs, key=probs.get)
        findings = "; ".join(
            f"{f['class']} {f['probability']:.3f}"
            for f in sorted(res.record["findings"], key=lambda f: -f["probability"])
        )
        rows.writerow([res.image, "ok", "", res.output, top, f"{probs[top]:.3f}", findings])
    data = text.getvalue().encode()
    write_atomic(path, lambda f: f.write(data))


def _write_one(
    res: Prediction,
    image: Tensor,
    probs: Tensor,
    scores: Tensor,
    boxes: Tensor,
    cls: Tensor,
    box_scores: Tensor,
    size: tuple[int, int],
    image_size: int,
    threshold: float,
    overlays: bool,
    class_names: tuple[str, ...],
) -> dict[str, Any]:
    width, height = size
    scale = torch.tensor([width, height, width, height]) / image_size
    boxes = boxes * scale  # into the file's own pixel frame
    name = res.output.stem
    findings = []
    figures = []
    for k, cname in enumerate(class_names):
        p = float(scores[k])
        if p <= threshold:
            continue
        mine = cls == k
        findings.append(
            {
                "class": cname,
                "probability": p,
                "boxes": [
                    {"xyxy": [round(v, 1) for v in b.tolist()], "score": float(s)}
                    for b, s in zip(boxes[mine], box_scores[mine], strict=True)
                ],
            }
        )
        if overlays:
            target = res.output.with_name(f"{name}_{class_file_name(cname)}.png")
            _overlay(image, probs[k], boxes[mine], cname, p, size, res.image, target)
            figures.append(target)
    record = {
        "image": str(res.image),
        "width": width,
        "height": height,
        "threshold": threshold,
        "probabilities": {c: float(v) for c, v in zip(class_names, scores, strict=True)},
        "findings": findings,
        "overlays": [str(f) for f in figures],
    }
    text = (json.dumps(record, indent=2) + "\n").encode()
    write_atomic(res.output, lambda f: f.write(text))
    return record


def _overlay(
    image: Tensor,
    prob: Tensor,
    boxes: Tensor,
    name: str,
    p: float,
    size: tuple[int, int],
    path: Path,
    target: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    width, height = size
    extent = (0, width, height, 0)
    fig, ax = plt.subplots(figsize=(4, 4 * min(max(height / width, 0.25), 4.0)))
    try:
        ax.imshow(image.numpy(), cmap="gray", extent=extent)
        ax.imshow(prob.numpy(), cmap="jet", alpha=0.35, vmin=0, vmax=1, extent=extent)
        for x1, y1, x2, y2 in boxes.tolist():
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", lw=1.5))
        ax.set_title(f"{path.name}: {name} p={p:.2f}", fontsize=8)
        ax.axis("off")
        fig.tight_layout()
        write_atomic(target, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
