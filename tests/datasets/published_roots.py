"""Dataset folders in the published layouts of VinDr-CXR and RSNA Pneumonia, written by the
tests: the label CSV under its published name and the images in the published folder (PNG
copies, or DICOM files through :func:`tests.datasets.dicom_files.write_dicom`, which needs
pydicom). The reader tests (``test_vindr_cxr.py``, ``test_rsna_pneumonia.py``) write their
hand-made rows with them; :func:`vindr_root` and :func:`rsna_root` make a larger folder of
generated rows and DICOM images (the trainer's test, ``tests/examples/test_dataset_option.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

VINDR_CSV = "train.csv"
VINDR_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
VINDR_IMAGES = "train"
RSNA_CSV = "stage_2_train_labels.csv"
RSNA_HEADER = "patientId,x,y,width,height,Target\n"
RSNA_IMAGES = "stage_2_train_images"


def write_vindr_csv(root: Path, rows: Iterable[str]) -> Path:
    """``root/train.csv`` with the challenge's header and ``rows``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / VINDR_CSV).write_text(VINDR_HEADER + "".join(rows))
    return root


def write_rsna_csv(root: Path, rows: Iterable[str]) -> Path:
    """``root/stage_2_train_labels.csv`` with the challenge's header and ``rows``; returns
    ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / RSNA_CSV).write_text(RSNA_HEADER + "".join(rows))
    return root


def write_pngs(
    root: Path, sizes: Mapping[str, tuple[int, int]], *, folder: str, suffix: str = ".png"
) -> None:
    """One flat gray image ``root/folder/<name><suffix>`` of ``(width, height)`` per name, the
    ``i``-th at level ``40 + 50 i``."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i, (name, (w, h)) in enumerate(sizes.items()):
        arr = np.full((h, w), 40 + 50 * i, dtype=np.uint8)
        Image.fromarray(arr).save(root / folder / f"{name}{suffix}")


def _radiograph(
    size: int, boxes: list[tuple[float, float, float, float]], seed: int, height: int | None = None
) -> np.ndarray:
    """A ``size`` wide, ``height`` (default ``size``) high uint8 image: noise on a dark
    background, each box (in pixels of the image) brighter."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(20, 80, size=(height or size, size)).astype(np.uint8)
    for x1, y1, x2, y2 in boxes:
        pixels[int(y1) : int(y2), int(x1) : int(x2)] = 200
    return pixels


def _box(rng: np.random.Generator, frame: int) -> tuple[float, float, float, float]:
    x1, y1 = (float(v) for v in rng.integers(0, frame // 2, size=2))
    w, h = (float(v) for v in rng.integers(frame // 8, frame // 3, size=2))
    return x1, y1, x1 + w, y1 + h


def vindr_root(
    root: Path,
    num_images: int,
    *,
    size: int = 128,
    height: int | None = None,
    classes: tuple[tuple[str, int], ...] = (("Cardiomegaly", 3), ("Nodule/Mass", 8)),
    seed: int = 0,
) -> Path:
    """A VinDr-CXR folder: ``train.csv`` and ``train/<image_id>.dicom`` (``size`` wide,
    ``height`` high, default square).

    Every other image has one finding (cycling through ``classes``, ``(class_name,
    class_id)``), boxed by three radiologists with a few pixels of disagreement; the others
    are ``No finding`` by all three. Boxes are in the DICOM's pixel frame. Returns ``root``.
    """
    from tests.datasets.dicom_files import write_dicom

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_images):
        image = f"{i:032x}"
        boxes = []
        if i % 2 == 0:
            name, cid = classes[(i // 2) % len(classes)]
            box = _box(rng, min(size, height or size))
            boxes.append(box)
            for r, d in enumerate((0.0, 1.0, -1.0)):
                x1, y1, x2, y2 = (v + d for v in box)
                rows.append(
                    f"{image},{name},{cid},R{r + 8},{max(x1, 0.0)},{max(y1, 0.0)},{x2},{y2}\n"
                )
        else:
            rows += [f"{image},No finding,14,R{r + 8},,,,\n" for r in range(3)]
        pixels = _radiograph(size, boxes, seed + i, height)
        write_dicom(root / VINDR_IMAGES / f"{image}.dicom", pixels)
    return write_vindr_csv(root, rows)


def rsna_root(
    root: Path, num_images: int, *, size: int = 128, frame: int = 1024, seed: int = 0
) -> Path:
    """An RSNA Pneumonia folder: ``stage_2_train_labels.csv`` and
    ``stage_2_train_images/<patientId>.dcm`` (``size`` square, standing in for the published
    1024-pixel files).

    Every other image has one or two ``Target`` 1 boxes, the others one ``Target`` 0 row;
    boxes ``x, y, width, height`` are in the publishers' ``frame`` (1024), which the reader
    assumes for every image. Returns ``root``.
    """
    from tests.datasets.dicom_files import write_dicom

    rng = np.random.default_rng(seed)
    rows = []
    scale = size / frame
    for i in range(num_images):
        pid = f"0004cfab-14fd-4e49-80ba-{i:012x}"
        boxes = []
        if i % 2 == 0:
            for _ in range(1 + (i // 2) % 2):
                x1, y1, x2, y2 = _box(rng, frame)
                rows.append(f"{pid},{x1},{y1},{x2 - x1},{y2 - y1},1\n")
                boxes.append((x1 * scale, y1 * scale, x2 * scale, y2 * scale))
        else:
            rows.append(f"{pid},,,,,0\n")
        write_dicom(root / RSNA_IMAGES / f"{pid}.dcm", _radiograph(size, boxes, seed + i))
    return write_rsna_csv(root, rows)
