"""A synthetic ChestX-ray14, written in exactly the real on-disk format.

``python -m ccg_layers.datasets.synthetic --out DIR --num-images N --seed S`` writes
``DIR/images/NNNNNNNN_NNN.png`` (8-bit grayscale, 1024 x 1024 by default), ``DIR/Data_Entry_2017_v2020.csv`` and
``DIR/BBox_List_2017.csv``, readable by :func:`~ccg_layers.datasets.read_chestxray14` unchanged.
The images are procedural frontal chest radiographs (body, lung fields, heart and mediastinum,
spine, clavicles, ribs, diaphragm, lung markings, noise; position, size, contrast and exposure
vary) with a lesion drawn for every positive label: inside its box for the 8 boxed diseases,
with a box written for the annotated images only. See ``docs/data.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ccg_layers.datasets.chestxray14 import (
    BBOX_LIST_FILE,
    BOX_FRAME,
    BOXED_CLASSES,
    CLASS_NAMES,
    ChestXray14Index,
)
from ccg_layers.errors import CCGValueRangeError
from ccg_layers.validation import check_positive, positive_int, real_number

__all__ = [
    "SyntheticConfig",
    "ensure_synthetic_dataset",
    "generate_synthetic_chestxray14",
    "main",
    "render_synthetic_image",
    "synthetic_index",
]

_log = logging.getLogger(__name__)

_DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
_MARKER = "synthetic.json"
_FORMAT_VERSION = 1

#: Label prevalence in the real Data_Entry file (images per class, of 112,120).
_PREVALENCE = (11559, 2776, 4667, 2303, 13317, 2516, 1686, 227, 19894, 5782, 6331, 3385, 1431, 5302)
_REAL_PREVALENCE = dict(zip(CLASS_NAMES, _PREVALENCE, strict=True))
#: Boxes per class in the real BBox_List file.
_REAL_BOX_COUNTS = dict(zip(BOXED_CLASSES, (180, 146, 153, 123, 85, 79, 120, 98), strict=True))
#: Box size (w, h) means in the 1024 frame, approximately as in BBox_List_2017.csv, and where
#: the box sits in the lung: vertical position as a fraction of the lung height (apex 0, base
#: 1) and horizontal as a fraction from medial (0) to lateral (1).
_BOX_SHAPE = {
    "Atelectasis": ((170.0, 110.0), (0.45, 0.9), (0.2, 0.8)),
    "Effusion": ((190.0, 240.0), (0.68, 0.85), (0.45, 0.75)),
    "Infiltration": ((240.0, 320.0), (0.3, 0.75), (0.3, 0.7)),
    "Mass": ((160.0, 160.0), (0.2, 0.8), (0.2, 0.8)),
    "Nodule": ((55.0, 55.0), (0.1, 0.9), (0.1, 0.9)),
    "Pneumonia": ((230.0, 290.0), (0.35, 0.75), (0.3, 0.7)),
    "Pneumothorax": ((200.0, 320.0), (0.15, 0.35), (0.55, 0.8)),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic dataset (the defaults are what ``make demo`` uses).

    Attributes:
        healthy_fraction: Images labelled ``No Finding``.
        annotated_fraction: Images with at least one box (real data: 0.8%; more here, so that
            the paper's settings and 5 folds are meaningful on a few hundred images).
        second_box_fraction: Annotated images with boxes of two classes (real: 93 of 880).
        mean_images_per_patient: Follow-up studies per patient (real: 3.6).
        lesion_contrast: Scales the intensity of every lesion.

    Raises:
        CCGValueRangeError: A fraction outside [0, 1], a mean below 1 or a negative contrast.
    """

    healthy_fraction: float = 0.4
    annotated_fraction: float = 0.3
    second_box_fraction: float = 0.1
    mean_images_per_patient: float = 3.0
    lesion_contrast: float = 1.0

    def __post_init__(self) -> None:
        for name in ("healthy_fraction", "annotated_fraction", "second_box_fraction"):
            real_number(getattr(self, name), name, low=0.0, high=1.0)
        real_number(self.mean_images_per_patient, "mean_images_per_patient", low=1.0)
        check_positive(self.lesion_contrast, "lesion_contrast", allow_zero=True)


@dataclass
class _Anatomy:
    cx: float
    scale: float
    dy: float
    heart_factor: float
    lung_top: float
    lung_bottom: float
    lung_offset: float
    lung_half_width: float

    def lung(self, side: int) -> tuple[float, float, float, float]:
        """(xc, yc, a, b) of the lung on image side -1 (left) or +1 (right)."""
        xc = self.cx + side * self.lung_offset
        yc = 0.5 * (self.lung_top + self.lung_bottom)
        return xc, yc, self.lung_half_width, 0.5 * (self.lung_bottom - self.lung_top)

    def heart(self) -> tuple[float, float, float, float]:
        """(xc, yc, a, b) of the heart ellipse."""
        a = 150.0 * self.scale * self.heart_factor
        b = 125.0 * self.scale * (0.5 + 0.5 * self.heart_factor)
        yc = self.lung_bottom - 0.95 * b
        return self.cx + 45.0 * self.scale, yc, a, b


def _sample_anatomy(
    rng: np.random.Generator, cardiomegaly: bool, patient: np.random.Generator | None = None
) -> _Anatomy:
    """The anatomy of one image.

    The body build comes from ``patient`` (shared by a patient's images, with a little
    jitter), the positioning from ``rng``.
    """
    p = rng if patient is None else patient
    build = float(p.uniform(0.88, 1.06))
    width = float(p.uniform(150.0, 165.0))
    heart = float(p.uniform(0.95, 1.1))
    scale = build * float(rng.uniform(0.98, 1.02))
    dy = float(rng.normal(0.0, 18.0))
    top = 135.0 + dy + float(rng.normal(0.0, 10.0))
    bottom = top + 665.0 * scale + float(rng.normal(0.0, 15.0))
    return _Anatomy(
        cx=512.0 + float(rng.normal(0.0, 18.0)),
        scale=scale,
        dy=dy,
        heart_factor=float(rng.uniform(1.45, 1.65)) if cardiomegaly else heart,
        lung_top=top,
        lung_bottom=min(bottom, 900.0),
        lung_offset=212.0 * scale,
        lung_half_width=width * scale,
    )


_TAPS = 5


@functools.lru_cache(maxsize=32)
def _interp_taps(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights ``(size, 5)`` of a Gaussian-kernel interpolation onto ``size`` samples.

    The ``cells + 4`` values interpolated are the grid with a margin of two on each side.
    """
    x = (np.arange(size, dtype=np.float64) + 0.5) / size * cells - 0.5 + 2.0  # in padded cells
    first = np.floor(x).astype(np.int64) - (_TAPS // 2 - 1)
    idx = np.clip(first[:, None] + np.arange(_TAPS)[None, :], 0, cells + 3)
    w = np.exp(-0.5 * ((x[:, None] - idx) / 0.7) ** 2)
    w /= w.sum(1, keepdims=True)
    return idx, w.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field of about unit scale: a grid of normals, Gaussian-interpolated.

    Separable, five taps per axis, elementwise numpy only (no BLAS threads).
    """
    idx, w = _interp_taps(size, cells)
    low = rng.standard_normal((cells + 4, cells + 4), dtype=np.float32)
    cols = np.zeros((cells + 4, size), dtype=np.float32)
    for t in range(_TAPS):  # five taps, not a loop over pixels: first along x on the small grid
        cols += low[:, idx[:, t]] * w[None, :, t]
    out = np.zeros((size, size), dtype=np.float32)
    for t in range(_TAPS):  # then along y, gathering whole rows
        out += cols[idx[:, t], :] * w[:, t : t + 1]
    out *= 1.6
    return out


def _smooth_profile(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random 1-D profile of about unit scale (see :func:`_smooth_noise`)."""
    idx, w = _interp_taps(size, cells)
    low = rng.standard_normal(cells + 4).astype(np.float32)
    out: np.ndarray = (low[idx] * w).sum(1) * 1.6
    return out


def _pow6(x: np.ndarray) -> np.ndarray:
    x3 = x * x * x
    out: np.ndarray = x3 * x3
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def _ellipse_r(
    x: np.ndarray, y: np.ndarray, xc: float, yc: float, a: float, b: float, p: float = 2.0
) -> np.ndarray:
    if p == 2.0:
        u, v = (x - xc) / a, (y - yc) / b
        out: np.ndarray = u * u + v * v
        return out
    out = np.abs((x - xc) / a) ** p + np.abs((y - yc) / b) ** p
    return out


def _sample_box(
    rng: np.random.Generator, cls: str, anatomy: _Anatomy
) -> tuple[float, float, float, float]:
    """A box ``(x, y, w, h)`` in the 1024 frame for class ``cls`` in this anatomy."""
    if cls == "Cardiomegaly":
        xc, yc, a, b = anatomy.heart()
        x1, y1 = xc - a + rng.normal(0, 8), yc - b + rng.normal(0, 8)
        x2, y2 = xc + a + rng.normal(0, 8), yc + b * 0.95 + rng.normal(0, 8)
    else:
        (mw, mh), (v_lo, v_hi), (h_lo, h_hi) = _BOX_SHAPE[cls]
        w = mw * float(np.exp(rng.normal(0.0, 0.25)))
        h = mh * float(np.exp(rng.normal(0.0, 0.25)))
        side = 1 if rng.random() < 0.5 else -1
        lxc, lyc, la, lb = anatomy.lung(side)
        fy = float(rng.uniform(v_lo, v_hi))
        fx = float(rng.uniform(h_lo, h_hi))
        cy = lyc - lb + 2 * lb * fy
        cx = lxc + side * la * (2 * fx - 1) * 0.85
        w, h = min(w, 2 * la * 0.95), min(h, 2 * lb * 0.9)
        # keep the box inside the lung's bounding box
        cx = float(np.clip(cx, lxc - la + w / 2, lxc + la - w / 2))
        cy = float(np.clip(cy, lyc - lb + h / 2, lyc + lb - h / 2))
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    x1, y1 = max(1.0, float(x1)), max(1.0, float(y1))
    x2, y2 = min(BOX_FRAME - 1.0, float(x2)), min(BOX_FRAME - 1.0, float(y2))
    return x1, y1, x2 - x1, y2 - y1


def render_synthetic_image(
    labels: Sequence[str],
    boxes: dict[str, tuple[float, float, float, float]],
    *,
    image_size: int = 1024,
    seed: int | Sequence[int] = 0,
    lesion_contrast: float = 1.0,
) -> np.ndarray:
    """Render one synthetic frontal chest radiograph.

    Args:
        labels: The findings to draw (names of :data:`CLASS_NAMES`), empty for a healthy image.
        boxes: ``{class: (x, y, w, h)}`` in the 1024 frame: where the boxed findings are drawn
            (a boxed finding of ``labels`` missing here gets a box drawn at random, unwritten).
        image_size: Side of the square image.
        seed: Seeds the anatomy, the texture and the noise.
        lesion_contrast: Scales the lesions' intensity.

    Returns:
        ``(image_size, image_size)`` uint8.

    Raises:
        CCGValueRangeError: An unknown finding, a box of a finding that is not in ``labels``
            or has no box, a box that is not finite with positive size inside the 1024 frame,
            a bad ``image_size`` or ``lesion_contrast``.

    Example:
        >>> img = render_synthetic_image(["Nodule"], {"Nodule": (300.0, 400.0, 60.0, 60.0)},
        ...                              image_size=128)
        >>> img.shape, img.dtype
        ((128, 128), dtype('uint8'))
    """
    listed = isinstance(labels, Sequence) and not isinstance(labels, str)
    if not (listed and set(map(str, labels)) <= set(CLASS_NAMES)):
        raise CCGValueRangeError(f"`labels` must be a list of CLASS_NAMES, got {labels!r}.")
    if not isinstance(boxes, dict):
        raise CCGValueRangeError(f"`boxes` must be a dict {{class: (x, y, w, h)}}, got {boxes!r}.")
    for cls, box in boxes.items():
        if cls not in labels or cls not in BOXED_CLASSES:
            raise CCGValueRangeError(f"`boxes` must hold boxed classes of `labels`, got {cls!r}.")
        _check_box(cls, box)
    positive_int(image_size, "image_size")
    check_positive(lesion_contrast, "lesion_contrast", allow_zero=True)
    rng = np.random.default_rng(seed)
    img, _ = _render(rng, list(labels), dict(boxes), image_size, lesion_contrast)
    return img


def _check_box(cls: str, box: object) -> None:
    values = list(box) if isinstance(box, Sequence) and len(box) == 4 else []
    name = f"boxes[{cls!r}]"
    coords = [real_number(v, f"{name}[{i}]", what="a finite number") for i, v in enumerate(values)]
    x, y, w, h = coords or [0.0] * 4
    if not (w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= BOX_FRAME and y + h <= BOX_FRAME):
        raise CCGValueRangeError(
            f"`{name}` must be (x, y, w, h) finite, w, h > 0, inside the {BOX_FRAME} "
            f"frame, got {box!r}."
        )


def _render(
    rng: np.random.Generator,
    labels: list[str],
    boxes: dict[str, tuple[float, float, float, float]],
    size: int,
    lesion_contrast: float,
    patient_seed: Sequence[int] | None = None,
) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]]]:
    S = size
    # lesions draw from their own stream, so adding a finding leaves the anatomy and noise alone
    lesion_rng = np.random.default_rng(int(rng.integers(0, 2**63)))
    patient = None if patient_seed is None else np.random.default_rng(list(patient_seed))
    anat = _sample_anatomy(rng, "Cardiomegaly" in labels, patient)
    boxes = dict(boxes)
    for cls in labels:
        if cls in BOXED_CLASSES and cls not in boxes:
            boxes[cls] = _sample_box(rng, cls, anat)
    f = BOX_FRAME / S
    coords = ((np.arange(S, dtype=np.float32) + 0.5) * f).astype(np.float32)
    X, Y = coords[None, :], coords[:, None]
    s = anat.scale
    emphysema = "Emphysema" in labels

    dx = np.abs(X - anat.cx)
    top, bottom = anat.lung_top, anat.lung_bottom
    body = _sigmoid((1.0 - _ellipse_r(X, Y, anat.cx, 620.0 + anat.dy, 570.0 * s, 780.0)) * 10.0)
    shoulders = _sigmoid((Y - (top - 60.0 + 0.0006 * dx * dx)) / 25.0)
    body = body * shoulders
    lung = np.zeros((S, S), dtype=np.float32)
    for side in (-1, 1):
        xc, _, a, _ = anat.lung(side)
        if emphysema:
            a *= 1.05
        t = np.clip((Y - top) / (bottom - top), 0.0, 1.0)
        half = a * np.sqrt(1.0 - (1.0 - np.clip(t / 0.5, 0.0, 1.0)) ** 2)
        dome = (55.0 if emphysema else 85.0) * s
        floor = bottom - dome * np.exp(-(((X - xc + side * 0.15 * a) / (0.75 * a)) ** 2))
        lung = np.maximum(
            lung,
            _sigmoid((half - np.abs(X - xc)) / 5.0)
            * _sigmoid((Y - top) / 5.0)
            * _sigmoid((floor - Y) / 5.0),
        )
    hxc, hyc, ha, hb = anat.heart()
    heart = _sigmoid((1.0 - _ellipse_r(X, Y, hxc, hyc, ha, hb)) * 9.0)
    medi = (
        _sigmoid((55.0 * s - np.abs(X - anat.cx - 6.0)) / 8.0)
        * _sigmoid((hyc - Y) / 20.0)
        * _sigmoid((Y - 60.0) / 20.0)
    )
    spine_band = _sigmoid((32.0 * s - dx) / 4.0)
    vert = 0.8 + 0.2 * np.cos(math.pi * (Y - anat.dy) / (58.0 * s)) ** 4  # (S, 1): cheap
    spine = spine_band * vert
    half_height = 0.5 * (bottom - top) + 40.0
    cage_a = anat.lung_offset + 175.0 * s
    rib_cage = _ellipse_r(X, Y, anat.cx, 0.5 * (top + bottom), cage_a, half_height)
    thorax = _sigmoid((1.0 - rib_cage) * 8.0)
    # posterior ribs: arches from the spine, rising then falling laterally; anterior ribs fainter
    period = 68.0 * s
    post = Y - (top - 0.45 * dx + 0.0016 * dx * dx)
    ant = Y - (top + 40.0 - 0.3 * dx)
    ribs = _pow6(0.5 + 0.5 * np.cos(2 * math.pi * post / period))
    ribs += 0.5 * _pow6(0.5 + 0.5 * np.cos(2 * math.pi * ant / (1.3 * period)))
    ribs *= thorax * _sigmoid((dx - 40.0) / 8.0)
    clav_y = top + 40.0 * s - 0.0011 * (dx - 40.0) ** 2 + 0.3 * (dx - 40.0)
    clavicle = (
        _sigmoid((13.0 * s - np.abs(Y - clav_y)) / 3.0)
        * _sigmoid((dx - 35.0) / 6.0)
        * _sigmoid((330.0 * s - dx) / 10.0)
    )
    # lung markings: vessel-like ridges of a random field, denser towards the hila
    ridges = np.clip(1.0 - np.abs(_smooth_noise(rng, S, 36)) / 0.12, 0.0, 1.0)
    hilum_y = top + 0.45 * (bottom - top)
    hila = np.exp(-np.sqrt((dx - 80.0 * s) ** 2 + (Y - hilum_y) ** 2) / (220.0 * s))
    markings = ridges * (0.4 + hila)

    img = 0.05 + 0.48 * body
    img += 0.10 * body * np.clip((Y - 150.0) / 900.0, 0.0, 1.0)  # denser towards the abdomen
    lung_air = lung * (1.0 - 0.9 * heart) * (1.0 - 0.95 * medi)
    air_depth = 0.36 if emphysema else 0.31
    img -= air_depth * lung_air
    img += 0.06 * heart + 0.05 * medi
    img += 0.12 * spine * body + 0.09 * ribs + 0.15 * clavicle
    lesion = np.zeros((S, S), dtype=np.float32)
    no_marking = np.zeros((S, S), dtype=np.float32)
    for cls in labels:
        _draw_finding(cls, boxes.get(cls), anat, X, Y, lung_air, lesion, no_marking, lesion_rng, S)
    img += 0.06 * markings * lung_air * (1.0 - no_marking)
    img += lesion_contrast * lesion
    # exposure, noise, then gamma and contrast through a lookup table on the 8-bit values
    # a smooth exposure gradient: the sum of a row and a column profile
    img += 0.035 * _smooth_profile(rng, S, 3)[None, :]
    img += 0.035 * _smooth_profile(rng, S, 3)[:, None]
    noise = rng.random((S, S), dtype=np.float32)
    noise -= 0.5
    noise *= 0.012 * math.sqrt(12.0)  # uniform, standard deviation 0.012
    img += noise
    gamma = float(rng.uniform(0.8, 1.25))
    lo, hi = float(rng.uniform(0.0, 0.06)), float(rng.uniform(0.85, 1.0))
    lut = lo + (hi - lo) * (np.arange(256, dtype=np.float64) / 255.0) ** gamma
    lut8 = (lut * 255.0 + 0.5).astype(np.uint8)
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return lut8[img.astype(np.uint8)], boxes


def _box_slices(
    box: tuple[float, float, float, float], size: int
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    S = size
    x, y, w, h = box
    f = S / BOX_FRAME
    c0, c1 = max(0, math.floor(x * f)), min(S, math.ceil((x + w) * f))
    r0, r1 = max(0, math.floor(y * f)), min(S, math.ceil((y + h) * f))
    # local coordinates in [-1, 1] across the box (pixel centres)
    u = (((np.arange(c0, c1) + 0.5) / f - x) / w * 2.0 - 1.0).astype(np.float32)[None, :]
    v = (((np.arange(r0, r1) + 0.5) / f - y) / h * 2.0 - 1.0).astype(np.float32)[:, None]
    return slice(r0, r1), slice(c0, c1), u, v


def _draw_finding(
    cls: str,
    box: tuple[float, float, float, float] | None,
    anat: _Anatomy,
    xs: np.ndarray,
    ys: np.ndarray,
    lung: np.ndarray,
    lesion: np.ndarray,
    no_marking: np.ndarray,
    rng: np.random.Generator,
    size: int,
) -> None:
    """Add the appearance of finding ``cls`` to ``lesion`` (in place)."""
    X, Y, S = xs, ys, size
    if cls == "Cardiomegaly":
        return  # drawn as the enlarged heart of the anatomy
    if box is not None:
        rs, cs, u, v = _box_slices(box, S)
        if rs.stop <= rs.start or cs.stop <= cs.start:
            return
        r = np.sqrt(u * u + v * v)
        patch = lesion[rs, cs]
        if cls == "Nodule":
            rad = float(rng.uniform(0.7, 0.9))
            patch += 0.26 * np.clip(1.0 - (r / rad) ** 2, 0.0, 1.0) ** 0.5
        elif cls == "Mass":
            theta = np.arctan2(v, u)
            rad = 0.8 * (1.0 + 0.1 * np.sin(3.0 * theta + rng.uniform(0, 6.3)))
            patch += 0.24 * _sigmoid((rad - r) * 14.0)
        elif cls == "Effusion":
            lateral = 1.0 if (box[0] + box[2] / 2) > anat.cx else -1.0
            # meniscus: the fluid surface climbs towards the lateral chest wall
            surface = -0.2 - 0.6 * np.clip(lateral * u, 0.0, 1.0) ** 2
            fluid = _sigmoid((v - surface) * 12.0) * _sigmoid((1.0 - np.abs(u)) * 12.0)
            patch += 0.30 * fluid * lung[rs, cs]
        elif cls == "Pneumothorax":
            lateral = 1.0 if (box[0] + box[2] / 2) > anat.cx else -1.0
            # visceral pleural line: a curve; lateral of it, air without lung markings
            line_u = -0.3 + 0.5 * v * v
            outside = _sigmoid((lateral * u - line_u) * 20.0) * _sigmoid((1.0 - r * 0.75) * 10.0)
            patch -= 0.10 * outside * lung[rs, cs]
            patch += (
                0.12
                * np.exp(-(((lateral * u - line_u) / 0.04) ** 2))
                * _sigmoid((1.0 - np.abs(v)) * 10.0)
            )
            no_marking[rs, cs] = np.maximum(no_marking[rs, cs], outside)
        elif cls in ("Infiltration", "Pneumonia"):
            amp = 0.20 if cls == "Pneumonia" else 0.16
            field = _smooth_noise(rng, 64, 6)
            patchy = _resize_nn(field, patch.shape)
            blob = _sigmoid((0.85 - r) * 8.0) * np.clip(0.55 + patchy, 0.0, 1.0)
            patch += amp * blob * (0.3 + 0.7 * lung[rs, cs])
        elif cls == "Atelectasis":
            ang = float(rng.uniform(-0.5, 0.5))
            d = np.abs(-math.sin(ang) * u + math.cos(ang) * v)
            band = _sigmoid((0.35 - d) * 14.0) * _sigmoid((1.0 - np.abs(u)) * 10.0)
            patch += 0.24 * band * (0.4 + 0.6 * lung[rs, cs])
        return
    # findings without boxes in ChestX-ray14: drawn where they occur, no box written
    if cls == "Consolidation":
        side = 1 if rng.random() < 0.5 else -1
        xc, yc, a, b = anat.lung(side)
        cx, cy = xc + rng.uniform(-0.4, 0.4) * a, yc + rng.uniform(0.0, 0.5) * b
        r = _ellipse_r(X, Y, cx, cy, 90.0, 110.0)
        lesion += 0.28 * _sigmoid((1.0 - r) * 8.0) * lung
    elif cls == "Edema":
        for side in (-1, 1):
            r = _ellipse_r(X, Y, anat.cx + side * 110.0 * anat.scale, 520.0 + anat.dy, 150.0, 190.0)
            lesion += 0.12 * np.exp(-r).astype(np.float32) * lung
    elif cls == "Emphysema":
        return  # hyperlucent, larger lungs: drawn in the anatomy
    elif cls == "Fibrosis":
        texture = np.abs(_smooth_noise(rng, S, 90))
        lower = _sigmoid((Y - (anat.lung_top + anat.lung_bottom) / 2) / 40.0)
        lesion += 0.10 * texture * lung * lower
    elif cls == "Hernia":
        r = _ellipse_r(X, Y, anat.cx + 20.0, anat.lung_bottom - 70.0, 80.0, 60.0)
        lesion += 0.18 * _sigmoid((1.0 - r) * 8.0)
    elif cls == "Pleural_Thickening":
        side = 1 if rng.random() < 0.5 else -1
        xc, yc, a, b = anat.lung(side)
        r = _ellipse_r(X, Y, xc, yc, a, b, 2.4)
        edge = np.exp(-(((r - 0.9) / 0.06) ** 2)) * _sigmoid((yc - Y) / 30.0)
        lesion += 0.16 * edge.astype(np.float32)


def _resize_nn(field: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(field))[None, None]
    out = F.interpolate(
        t, size=(int(shape[0]), int(shape[1])), mode="bilinear", align_corners=False
    )
    res: np.ndarray = out[0, 0].numpy()
    return res


# --------------------------------------------------------------------------- the dataset


def _sample_patients(rng: np.random.Generator, n: int, mean: float) -> list[tuple[int, int]]:
    """(patient id, follow-up #) for ``n`` images, patients with geometric numbers of images."""
    out: list[tuple[int, int]] = []
    pid = 0
    while len(out) < n:
        pid += int(rng.integers(1, 4))
        count = min(int(rng.geometric(1.0 / mean)), 12)
        out.extend((pid, k) for k in range(count))
    return out[:n]


def _sample_labels(
    rng: np.random.Generator, n: int, cfg: SyntheticConfig
) -> tuple[list[list[str]], list[dict[str, bool]]]:
    """Labels of each image and which of its classes get a written box."""
    classes = list(CLASS_NAMES)
    prev = np.array([_REAL_PREVALENCE[c] for c in classes], dtype=np.float64)
    # the boxed classes are the point of the demo: make them a little more frequent
    prev *= np.array([2.0 if c in BOXED_CLASSES else 1.0 for c in classes])
    prev /= prev.sum()
    box_names = list(_REAL_BOX_COUNTS)
    box_p = np.array([_REAL_BOX_COUNTS[c] for c in box_names], dtype=np.float64)
    box_p /= box_p.sum()
    labels: list[list[str]] = []
    boxed: list[dict[str, bool]] = []
    for _ in range(n):
        u = rng.random()
        found: list[str] = []
        written: dict[str, bool] = {}
        if u < cfg.annotated_fraction:
            first = str(rng.choice(box_names, p=box_p))
            found.append(first)
            written[first] = True
            if rng.random() < cfg.second_box_fraction:
                second = str(rng.choice([c for c in box_names if c != first]))
                found.append(second)
                written[second] = True
            if rng.random() < 0.3:
                extra = str(rng.choice(classes, p=prev))
                if extra not in found:
                    found.append(extra)
        elif u < cfg.annotated_fraction + (1.0 - cfg.annotated_fraction) * (
            1.0 - cfg.healthy_fraction
        ):
            k = int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12]))
            found = [str(c) for c in rng.choice(classes, size=k, replace=False, p=prev)]
        labels.append(sorted(found, key=CLASS_NAMES.index))
        boxed.append(written)
    return labels, boxed


def _draw_records(
    rng: np.random.Generator, n: int, cfg: SyntheticConfig
) -> tuple[list[tuple[int, int]], list[list[str]], list[dict[str, bool]]]:
    """Each image's (patient, follow-up), labels and boxed classes.

    These are the draws that come before any image is rendered; :func:`synthetic_index` repeats
    them without rendering.
    """
    ids = _sample_patients(rng, n, cfg.mean_images_per_patient)
    labels, written = _sample_labels(rng, n, cfg)
    return ids, labels, written


def synthetic_index(
    num_images: int, seed: int = 0, *, config: SyntheticConfig | None = None
) -> ChestXray14Index:
    """The index of ``generate_synthetic_chestxray14(_, num_images, seed=seed)``, drawn only.

    No image is rendered and no file written: the same image names, labels, patients, follow-ups and
    boxed classes (whatever ``image_size``), so the same :func:`chestxray14_splits`. The box
    coordinates and view positions are drawn with each image, so here the boxes are NaN and
    the view positions empty: use it for splits and counts, not for targets.

    Example:
        >>> index = synthetic_index(6, seed=1)
        >>> len(index.images), bool(index.boxes.isnan().all())
        (6, True)
    """
    num_images = positive_int(num_images, "num_images")
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng([seed, 0])
    ids, labels, written = _draw_records(rng, num_images, cfg)
    multi_hot = torch.zeros(num_images, len(CLASS_NAMES))
    box_image, box_class = [], []
    for i, (found, boxed) in enumerate(zip(labels, written, strict=True)):
        for cls in found:
            multi_hot[i, CLASS_NAMES.index(cls)] = 1.0
            if boxed.get(cls):
                box_image.append(i)
                box_class.append(CLASS_NAMES.index(cls))
    return ChestXray14Index(
        images=[f"{pid:08d}_{follow_up:03d}.png" for pid, follow_up in ids],
        labels=multi_hot,
        patient_ids=torch.tensor([pid for pid, _ in ids], dtype=torch.long),
        follow_ups=torch.tensor([f for _, f in ids], dtype=torch.long),
        view_positions=[""] * num_images,
        boxes=torch.full((len(box_image), 4), math.nan),
        box_image_index=torch.tensor(box_image, dtype=torch.long),
        box_class=torch.tensor(box_class, dtype=torch.long),
    )


def generate_synthetic_chestxray14(
    out_dir: str | os.PathLike[str],
    num_images: int,
    *,
    seed: int = 0,
    image_size: int = 1024,
    config: SyntheticConfig | None = None,
) -> Path:
    """Write a synthetic ChestX-ray14 of ``num_images`` images into ``out_dir``.

    Writes ``images/NNNNNNNN_NNN.png`` (8-bit grayscale, ``image_size`` square; 1024 like the
    real files by default), ``Data_Entry_2017_v2020.csv`` (11 fields a row, the real header)
    and ``BBox_List_2017.csv`` (boxes ``x, y, w, h`` in the 1024 frame whatever
    ``image_size``; ``Infiltration`` written ``Infiltrate`` as in the real file).
    Deterministic by ``seed``: the same arguments give the same bytes.

    Args:
        out_dir: The folder (created; existing files are overwritten).
        num_images: How many images.
        seed: The seed.
        image_size: Side of the PNGs. The CSV boxes stay in the 1024 frame.
        config: Label and annotation frequencies; defaults to :class:`SyntheticConfig`.

    Returns:
        ``Path(out_dir)``.

    Example:
        >>> import tempfile
        >>> from ccg_layers.datasets import read_chestxray14
        >>> root = generate_synthetic_chestxray14(tempfile.mkdtemp(), 6, seed=1, image_size=64)
        >>> len(read_chestxray14(root).images)
        6
    """
    num_images = positive_int(num_images, "num_images")
    if positive_int(image_size, "image_size") < 16:
        raise CCGValueRangeError(f"`image_size` must be an int >= 16, got {image_size!r}.")
    cfg = config or SyntheticConfig()
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    ids, labels, written = _draw_records(rng, num_images, cfg)
    patient_meta = {
        pid: (int(rng.integers(20, 86)), "M" if rng.random() < 0.56 else "F") for pid, _ in ids
    }
    entry_rows = [_DATA_ENTRY_HEADER]
    box_rows = [_BBOX_HEADER]
    for i, ((pid, follow_up), found, boxed) in enumerate(zip(ids, labels, written, strict=True)):
        name = f"{pid:08d}_{follow_up:03d}.png"
        img_rng = np.random.default_rng([seed, 1, i])
        img, boxes = _render(
            img_rng, found, {}, image_size, cfg.lesion_contrast, patient_seed=(seed, 2, pid)
        )
        Image.fromarray(img, mode="L").save(out / "images" / name, compress_level=1)
        age, sex = patient_meta[pid]
        view = "PA" if img_rng.random() < 0.55 else "AP"
        finding = "|".join(found) if found else "No Finding"
        entry_rows.append(
            f"{name},{finding},{follow_up},{pid},{age + follow_up // 4},{sex},{view},"
            f"{image_size},{image_size},{0.143 * BOX_FRAME / image_size:.3f},"
            f"{0.143 * BOX_FRAME / image_size:.3f}"
        )
        for cls in found:
            if boxed.get(cls):
                x, y, w, h = boxes[cls]
                label = "Infiltrate" if cls == "Infiltration" else cls
                box_rows.append(f"{name},{label},{x!r},{y!r},{w!r},{h!r}")
    (out / "Data_Entry_2017_v2020.csv").write_text("\n".join(entry_rows) + "\n")
    (out / BBOX_LIST_FILE).write_text("\n".join(box_rows) + "\n")
    return out


def ensure_synthetic_dataset(
    directory: str | os.PathLike[str],
    num_images: int = 800,
    seed: int = 0,
    *,
    image_size: int = 512,
) -> Path:
    """Return a cached synthetic dataset at ``directory``, generating it on first use.

    The dataset is written to a temporary sibling folder and renamed into place when complete
    (with a ``synthetic.json`` marker holding the arguments), so an interrupted run leaves no
    half-written dataset, and several processes may call this at once. A ``directory`` made
    with other arguments is regenerated; one without the marker is never touched.

    Raises:
        FileExistsError: ``directory`` exists, is not empty and holds no marker.
    """
    target = Path(directory)
    params = {
        "num_images": num_images,
        "seed": seed,
        "image_size": image_size,
        "version": _FORMAT_VERSION,
    }
    if _marker_matches(target, params):
        return target
    if target.exists() and any(target.iterdir()) and not (target / _MARKER).is_file():
        raise FileExistsError(
            f"{target} exists and is not a synthetic dataset made by ccg-layers "
            f"(no {_MARKER}); choose another folder"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _log.info("generating %d synthetic images into %s", num_images, target)
    generate_synthetic_chestxray14(tmp, num_images, seed=seed, image_size=image_size)
    (tmp / _MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
    if target.exists():
        if _marker_matches(target, params):  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _marker_matches(target, params):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _marker_matches(target: Path, params: dict[str, int]) -> bool:
    try:
        return bool(json.loads((target / _MARKER).read_text()) == params)
    except (OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m ccg_layers.datasets.synthetic --out DIR --num-images N``."""
    parser = argparse.ArgumentParser(
        prog="python -m ccg_layers.datasets.synthetic",
        description="Write a synthetic ChestX-ray14 in the real on-disk format.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-images", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-size",
        type=int,
        default=1024,
        help="side of the PNGs (default 1024 as the real files; CSV boxes stay in the 1024 frame)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    generate_synthetic_chestxray14(
        args.out, args.num_images, seed=args.seed, image_size=args.image_size
    )
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.num_images} images ({args.image_size}x{args.image_size}) to {args.out} "
        f"in {elapsed:.1f} s ({args.num_images / elapsed:.1f} images/s)"
    )


if __name__ == "__main__":
    main()
