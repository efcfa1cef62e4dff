"""Reader of VinDr-CXR as released for the VinBigData Chest X-ray Abnormalities Detection challenge.

``train.csv`` has one row per box per radiologist (``image_id, class_name, class_id, rad_id,
x_min, y_min, x_max, y_max``; three radiologists read each image), the class ``No finding``
(14) with empty box cells for a radiologist who found nothing; boxes are in the DICOM's pixel
frame. The images are ``train/<image_id>.dicom``, or PNG/JPEG copies of them. See
``docs/data.md``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ccg_layers.datasets.box_fusion import weighted_box_fusion
from ccg_layers.datasets.dicom import DICOM_SUFFIXES
from ccg_layers.datasets.image_files import (
    ImageKind,
    check_reader_options,
    frame_sizes_of,
    locate_images,
    name_list,
)
from ccg_layers.datasets.index import RadiographIndex
from ccg_layers.datasets.published_csv import csv_records, fail_or_skip
from ccg_layers.validation import check_choice, real_number

__all__ = ["VINDR_CLASS_NAMES", "VINDR_NO_FINDING", "Combine", "read_vindr_cxr"]

_log = logging.getLogger(__name__)

#: The 14 finding classes of VinDr-CXR (``class_id`` 0-13), the order of the label vectors.
VINDR_CLASS_NAMES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)
#: The class of a radiologist who found nothing (``class_id`` 14, empty box cells).
VINDR_NO_FINDING = "No finding"
#: Every ``class_name`` of ``train.csv``, at its ``class_id``.
_ALL_NAMES = (*VINDR_CLASS_NAMES, VINDR_NO_FINDING)
#: How the radiologists' boxes are combined (see :func:`read_vindr_cxr`).
Combine = Literal["all", "merge", "single"]
_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
_BOX = ("x_min", "y_min", "x_max", "y_max")


@dataclass
class _Box:
    line: int
    image: str
    reader: str
    k: int
    xyxy: tuple[float, float, float, float]


def _reader_key(rad_id: str) -> tuple[int, str]:
    m = re.fullmatch(r"R(\d+)", rad_id)
    return (int(m.group(1)) if m else 1 << 30, rad_id)


def _parse_row(
    where: str, row: dict[str, str], skip: bool
) -> tuple[str, str, int | None, tuple[float, float, float, float] | None] | None:
    """``(image, reader, class or None for No finding, box or None)``; ``None`` if skipped."""
    image, reader, name, cid = row["image_id"], row["rad_id"], row["class_name"], row["class_id"]
    if not image or "/" in image or "\\" in image:
        fail_or_skip(f"{where}: image_id must be a file stem, got {image!r}", skip, _log)
        return None
    if not reader:
        fail_or_skip(f"{where}: rad_id is empty; expected a radiologist such as R9", skip, _log)
        return None
    names = _ALL_NAMES
    if name not in names or cid != str(names.index(name)):
        expected = f"{names.index(name)}" if name in names else "a class of VinDr-CXR"
        fail_or_skip(
            f"{where}: unknown class {name!r} with class_id {cid!r}; expected {expected} "
            f"(the classes are {', '.join(f'{i} {n}' for i, n in enumerate(names))})",
            skip,
            _log,
        )
        return None
    cells = [row[c] for c in _BOX]
    if name == VINDR_NO_FINDING:
        if any(cells):
            fail_or_skip(
                f"{where}: a box on '{VINDR_NO_FINDING}' for image {image}; expected empty "
                f"x_min, y_min, x_max, y_max, got {cells}",
                skip,
                _log,
            )
            return None
        return image, reader, None, None
    if not all(cells):
        fail_or_skip(
            f"{where}: a {name} finding without a box; expected x_min, y_min, x_max, y_max, "
            f"got {cells}",
            skip,
            _log,
        )
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in cells)
    except ValueError:
        fail_or_skip(
            f"{where}: x_min, y_min, x_max, y_max of a {name} box must be numbers, got {cells}",
            skip,
            _log,
        )
        return None
    box = (x1, y1, x2, y2)
    if not all(math.isfinite(v) for v in box) or min(box) < 0:
        fail_or_skip(
            f"{where}: box must be finite and non-negative (pixels of the DICOM), got {box}",
            skip,
            _log,
        )
        return None
    if x2 <= x1 or y2 <= y1:
        fail_or_skip(
            f"{where}: inverted or empty box; expected x_min < x_max and y_min < y_max, got {box}",
            skip,
            _log,
        )
        return None
    return image, reader, VINDR_CLASS_NAMES.index(name), box


def _warn_resized_copies(
    names: list[str],
    files: list[Path | None],
    frame_sizes: Mapping[str, tuple[int, int]] | None,
    sizes: torch.Tensor,
    boxes: list[list[float]],
    image: list[int],
) -> None:
    """Log a warning when boxes reach past PNG/JPEG copies that set their own frame.

    The boxes are in the DICOM's frame; a copy read without ``frame_sizes`` frames them by its
    own size, which is wrong when it was resized (VinDr-CXR's DICOMs are about 2000-3000
    pixels, common copies 512 or 1024): then most boxes reach past the copy.
    """
    # the files were found by their suffixes (locate_images): a copy is a PNG/JPEG one, known
    # without opening it again
    own = [
        f is not None
        and f.suffix.lower() not in DICOM_SUFFIXES
        and (frame_sizes is None or n not in frame_sizes)
        for n, f in zip(names, files, strict=True)
    ]
    frame = sizes.tolist()  # (width, height) of each image, read once
    past = [
        j
        for j, (i, (_, _, x2, y2)) in enumerate(zip(image, boxes, strict=True))
        if own[i] and (x2 > frame[i][0] + 1 or y2 > frame[i][1] + 1)
    ]
    if past:
        images = list(dict.fromkeys(names[image[j]] for j in past))
        _log.warning(
            "%d of %d VinDr-CXR boxes reach past their PNG/JPEG image (%s): the boxes are in "
            "the DICOM's pixel frame, so if the copies were resized pass each DICOM's size as "
            "`frame_sizes` (read_frame_sizes; the trainer's --frame-sizes)",
            len(past),
            len(boxes),
            name_list(images, shown=3),
        )


def read_vindr_cxr(
    root: str | os.PathLike[str],
    *,
    combine: Combine = "merge",
    iou_threshold: float = 0.5,
    images: ImageKind = "auto",
    image_dir: str | os.PathLike[str] | None = None,
    csv_file: str = "train.csv",
    frame_sizes: Mapping[str, tuple[int, int]] | None = None,
    skip_bad_rows: bool = False,
) -> RadiographIndex:
    r"""Read VinDr-CXR's ``train.csv`` and find its images into a :class:`RadiographIndex`.

    Images are listed in the order of their first row. An image's label of class ``k`` is 1
    when a radiologist whose boxes are kept marked ``k`` (all of them, or the one ``"single"``
    picks); ``No finding`` images have all labels 0 and no box. Every finding has boxes, so
    ``has_box == labels``. How the three readings are combined (``combine``):

    * ``"merge"`` (default): per image and class, the boxes of all radiologists are fused by
      weighted box fusion with equal weights (:func:`~ccg_layers.datasets.fuse_boxes`): a box
      joins a cluster whose mean box it overlaps with IoU > ``iou_threshold``, each cluster
      becomes its mean box. One box per finding that several radiologists drew.
    * ``"all"``: every radiologist's box is kept (the metric's ground truth is then their
      union).
    * ``"single"``: per image, only the reading of the radiologist with the lowest ``rad_id``
      number (``R2`` before ``R10``), including a ``No finding`` reading.

    VinDr-CXR publishes no patient ids: every image is its own patient
    (``has_patient_ids=False``).

    Args:
        root: The dataset folder, holding ``csv_file`` and ``train/``.
        combine: ``"merge"``, ``"all"`` or ``"single"``.
        iou_threshold: The fusion threshold of ``"merge"``.
        images: Which files are the images: ``"dicom"`` (``.dicom``, ``.dcm``), ``"png"``,
            ``"jpeg"`` (``.jpg``, ``.jpeg``), or ``"auto"`` (any, DICOM first).
        image_dir: The folder of the images; default ``root/train``.
        csv_file: The annotation file under ``root``.
        frame_sizes: ``{image_id: (width, height)}`` of the original DICOMs, for PNG/JPEG
            copies that were resized (the boxes stay in the DICOM's frame). Without it the
            frame is the DICOM header's, or else the copy's own size.
        skip_bad_rows: Log (``WARNING``) and skip malformed rows instead of raising.

    Returns:
        The index; boxes ``(x_min, y_min, x_max, y_max)`` in each image's DICOM frame.

    Raises:
        FileNotFoundError: No ``csv_file``, or an image without a file or ``frame_sizes``.
        DatasetFormatError: A malformed row, named by file and line: wrong number of fields,
            an empty image_id or rad_id, an unknown class (or a class_id that is not the
            class_name's), a box on ``No finding``, a finding without a box, a box that is not
            finite, negative, inverted or empty, a duplicated row, or a radiologist who marks
            an image both ``No finding`` and a finding.
        ValueError: A bad ``combine``, ``iou_threshold``, ``images``, ``frame_sizes`` or
            ``skip_bad_rows`` (checked before any file is read).

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "train.csv").write_text(
        ...     "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        ...     "a,Cardiomegaly,3,R8,100,200,300,260\n"
        ...     "a,Cardiomegaly,3,R9,104,204,296,262\n"
        ...     "a,No finding,14,R10,,,,\n"
        ...     "b,No finding,14,R8,,,,\n")
        >>> index = read_vindr_cxr(root, frame_sizes={"a": (400, 500), "b": (400, 500)})
        >>> index.images, index.boxes.tolist(), int(index.labels.sum())
        (['a', 'b'], [[102.0, 202.0, 298.0, 261.0]], 1)
        >>> sizes = {"a": (400, 500), "b": (400, 500)}
        >>> len(read_vindr_cxr(root, combine="all", frame_sizes=sizes).boxes)
        2
    """
    check_choice(combine, "combine", Combine)
    real_number(iou_threshold, "iou_threshold", low=0.0, high=1.0, high_open=True, what="in [0, 1)")
    check_reader_options(images, frame_sizes, skip_bad_rows)
    root = Path(root)
    path = root / csv_file
    order: dict[str, int] = {}
    readers: dict[str, set[str]] = {}  # image -> its radiologists
    no_findings: dict[tuple[str, str], int] = {}  # (image, reader) -> line of No finding
    boxes: list[_Box] = []
    seen: dict[tuple[object, ...], int] = {}
    findings: dict[tuple[str, str], int] = {}  # (image, reader) -> line of a finding
    for line, row in csv_records(path, _COLUMNS, skip_bad_rows=skip_bad_rows, log=_log):
        where = f"{path}:{line}"
        parsed = _parse_row(where, row, skip_bad_rows)
        if parsed is None:
            continue
        image, reader, k, box = parsed
        key = (image, reader, k, box)
        if key in seen:
            fail_or_skip(f"{where}: duplicate of line {seen[key]}: {row}", skip_bad_rows, _log)
            continue
        no_finding = no_findings.get((image, reader))
        finding = findings.get((image, reader))
        if (k is None and finding is not None) or (k is not None and no_finding is not None):
            other = finding if k is None else no_finding
            fail_or_skip(
                f"{where}: radiologist {reader} marks image {image} both "
                f"'{VINDR_NO_FINDING}' and a finding (line {other}); expected one or the other",
                skip_bad_rows,
                _log,
            )
            continue
        seen[key] = line
        order.setdefault(image, len(order))
        readers.setdefault(image, set()).add(reader)
        if k is None:
            no_findings[(image, reader)] = line
        else:
            findings.setdefault((image, reader), line)
            assert box is not None
            boxes.append(_Box(line, image, reader, k, box))
    names = list(order)
    if combine == "single":
        chosen = {img: min(rs, key=_reader_key) for img, rs in readers.items()}
        boxes = [b for b in boxes if b.reader == chosen[b.image]]
    out_boxes: list[list[float]] = []
    out_image: list[int] = []
    out_class: list[int] = []
    if combine == "merge":
        groups: dict[tuple[int, int], list[_Box]] = {}
        for b in boxes:
            groups.setdefault((order[b.image], b.k), []).append(b)
        for (i, k), group in sorted(groups.items()):
            group.sort(key=lambda b: (_reader_key(b.reader), b.xyxy))
            fused, _ = weighted_box_fusion(torch.tensor([b.xyxy for b in group]), iou_threshold)
            out_boxes += fused.tolist()
            out_image += [i] * len(fused)
            out_class += [k] * len(fused)
    else:
        for b in sorted(boxes, key=lambda b: (order[b.image], b.line)):
            out_boxes.append(list(b.xyxy))
            out_image.append(order[b.image])
            out_class.append(b.k)
    labels = torch.zeros(len(names), len(VINDR_CLASS_NAMES))
    labels[torch.tensor(out_image, dtype=torch.long), torch.tensor(out_class, dtype=torch.long)] = 1
    folder = Path(image_dir) if image_dir is not None else root / "train"
    files, suffixes = locate_images(folder, names, images)
    sizes = frame_sizes_of(names, files, frame_sizes, None, "VinDr-CXR")
    _warn_resized_copies(names, files, frame_sizes, sizes, out_boxes, out_image)
    return RadiographIndex(
        dataset_name="VinDr-CXR",
        images=names,
        labels=labels,
        patient_ids=torch.arange(len(names)),
        boxes=torch.tensor(out_boxes, dtype=torch.float32).reshape(-1, 4),
        box_image_index=torch.tensor(out_image, dtype=torch.long),
        box_class=torch.tensor(out_class, dtype=torch.long),
        image_sizes=sizes,
        class_names=VINDR_CLASS_NAMES,
        boxed_classes=VINDR_CLASS_NAMES,
        files=files,
        has_patient_ids=False,
        root=root,
        image_suffixes=suffixes,
    )
