"""Reader of the RSNA Pneumonia Detection Challenge (stage 2) training set.

``stage_2_train_labels.csv`` has one row per box (``patientId, x, y, width, height, Target``
with ``Target`` 1), or one row with empty box cells and ``Target`` 0 for an image without one.
The images are ``stage_2_train_images/<patientId>.dcm`` (1024 x 1024), or PNG/JPEG copies of
them. See ``docs/data.md``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ccg_layers.datasets.image_files import (
    ImageKind,
    check_reader_options,
    frame_sizes_of,
    locate_images,
)
from ccg_layers.datasets.index import RadiographIndex
from ccg_layers.datasets.published_csv import csv_records, fail_or_skip

__all__ = ["RSNA_CLASS_NAMES", "RSNA_FRAME", "read_rsna_pneumonia"]

_log = logging.getLogger(__name__)

#: The one class: the lung opacity that the boxes mark (``Target`` 1).
RSNA_CLASS_NAMES: tuple[str, ...] = ("Lung Opacity",)
#: The publishers' frame of every image and box: 1024 x 1024 pixels.
RSNA_FRAME = 1024
_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
_BOX = ("x", "y", "width", "height")


def read_rsna_pneumonia(
    root: str | os.PathLike[str],
    *,
    images: ImageKind = "auto",
    image_dir: str | os.PathLike[str] | None = None,
    csv_file: str = "stage_2_train_labels.csv",
    frame_sizes: Mapping[str, tuple[int, int]] | None = None,
    skip_bad_rows: bool = False,
) -> RadiographIndex:
    r"""Read RSNA Pneumonia's ``stage_2_train_labels.csv`` into a :class:`RadiographIndex`.

    One class, ``Lung Opacity``: an image is labelled 1 when it has a box (``Target`` 1).
    Boxes ``x, y, width, height`` become ``(x, y, x + width, y + height)`` in the 1024-pixel
    frame the publishers give every image (:data:`RSNA_FRAME`; no file is opened for it),
    unless ``frame_sizes`` says otherwise. The labels are one reading per image (the stage 2
    labels carry no radiologist id), so there is nothing to combine. ``patientId`` names one
    image: every image is its own patient (``has_patient_ids=False``; the publishers give no
    id that links a patient's images).

    Args:
        root: The dataset folder, holding ``csv_file`` and ``stage_2_train_images/``.
        images: ``"dicom"`` (``.dcm``), ``"png"``, ``"jpeg"`` or ``"auto"`` (DICOM first).
        image_dir: The folder of the images; default ``root/stage_2_train_images``.
        csv_file: The label file under ``root``.
        frame_sizes: ``{patientId: (width, height)}`` where the frame is not 1024 x 1024.
        skip_bad_rows: Log (``WARNING``) and skip malformed rows instead of raising.

    Returns:
        The index, images in the order of their first row.

    Raises:
        ValueError: A bad ``images``, ``frame_sizes`` or ``skip_bad_rows`` (checked before any
            file is read).
        FileNotFoundError: No ``csv_file``.
        DatasetFormatError: A malformed row, named by file and line: wrong number of fields,
            an empty patientId, a Target other than 0 or 1, a Target 1 row without a box or a
            Target 0 row with one, a box that is not finite, negative or empty, a duplicated
            row, or an image with both a Target 0 and a Target 1 row.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "stage_2_train_labels.csv").write_text(
        ...     "patientId,x,y,width,height,Target\n"
        ...     "p1,264.0,152.0,213.0,379.0,1\n"
        ...     "p1,562.0,152.0,256.0,453.0,1\n"
        ...     "p2,,,,,0\n")
        >>> index = read_rsna_pneumonia(root)
        >>> index.images, index.labels.flatten().tolist(), index.boxes[0].tolist()
        (['p1', 'p2'], [1.0, 0.0], [264.0, 152.0, 477.0, 531.0])
    """
    check_reader_options(images, frame_sizes, skip_bad_rows)
    root = Path(root)
    path = root / csv_file
    order: dict[str, int] = {}
    target: dict[str, tuple[int, int]] = {}  # image -> (Target, line of its first row)
    seen: dict[tuple[object, ...], int] = {}
    boxes: list[list[float]] = []
    image_index: list[int] = []
    for line, row in csv_records(path, _COLUMNS, skip_bad_rows=skip_bad_rows, log=_log):
        where = f"{path}:{line}"
        image, t = row["patientId"], row["Target"]
        cells = [row[c] for c in _BOX]
        if not image or "/" in image or "\\" in image:
            fail_or_skip(
                f"{where}: patientId must be a file stem, got {image!r}", skip_bad_rows, _log
            )
            continue
        if t not in ("0", "1"):
            fail_or_skip(f"{where}: Target must be 0 or 1, got {t!r}", skip_bad_rows, _log)
            continue
        box: tuple[float, ...] | None = None
        if t == "0":
            if any(cells):
                fail_or_skip(
                    f"{where}: a box on a Target 0 row of {image}; expected empty x, y, width, "
                    f"height, got {cells}",
                    skip_bad_rows,
                    _log,
                )
                continue
        else:
            if not all(cells):
                fail_or_skip(
                    f"{where}: a Target 1 row of {image} without a box; expected x, y, width, "
                    f"height, got {cells}",
                    skip_bad_rows,
                    _log,
                )
                continue
            try:
                box = tuple(float(v) for v in cells)
            except ValueError:
                fail_or_skip(
                    f"{where}: x, y, width, height must be numbers, got {cells}",
                    skip_bad_rows,
                    _log,
                )
                continue
            x, y, w, h = box
            if not all(math.isfinite(v) for v in box) or x < 0 or y < 0 or w <= 0 or h <= 0:
                fail_or_skip(
                    f"{where}: box must be finite with x, y >= 0 and width, height > 0, got {box}",
                    skip_bad_rows,
                    _log,
                )
                continue
        key = (image, t, box)
        if key in seen:
            fail_or_skip(f"{where}: duplicate of line {seen[key]}: {row}", skip_bad_rows, _log)
            continue
        if image in target and target[image][0] != int(t):
            fail_or_skip(
                f"{where}: image {image} has Target {t} here and Target {target[image][0]} on "
                f"line {target[image][1]}; expected one Target per image",
                skip_bad_rows,
                _log,
            )
            continue
        seen[key] = line
        target.setdefault(image, (int(t), line))
        order.setdefault(image, len(order))
        if box is not None:
            x, y, w, h = box
            boxes.append([x, y, x + w, y + h])
            image_index.append(order[image])
    names = list(order)
    labels = torch.zeros(len(names), 1)
    labels[torch.tensor(image_index, dtype=torch.long), 0] = 1.0
    folder = Path(image_dir) if image_dir is not None else root / "stage_2_train_images"
    files, suffixes = locate_images(folder, names, images)
    # The publishers' frame for everything but the images frame_sizes names (no file opened).
    given = {n: frame_sizes[n] for n in names if n in frame_sizes} if frame_sizes else {}
    sizes = frame_sizes_of(names, [None] * len(names), given, (RSNA_FRAME, RSNA_FRAME), "RSNA")
    return RadiographIndex(
        dataset_name="RSNA Pneumonia",
        images=names,
        labels=labels,
        patient_ids=torch.arange(len(names)),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        box_image_index=torch.tensor(image_index, dtype=torch.long),
        box_class=torch.zeros(len(boxes), dtype=torch.long),
        image_sizes=sizes,
        class_names=RSNA_CLASS_NAMES,
        boxed_classes=RSNA_CLASS_NAMES,
        files=files,
        has_patient_ids=False,
        root=root,
        image_suffixes=suffixes,
    )
