"""The paper's three data settings (Sec. 4.2) with 5-fold cross-validation, and split files.

They work on any :class:`~ccg_layers.datasets.DatasetIndex` (ChestX-ray14, VinDr-CXR, RSNA
Pneumonia): the settings are fractions of the annotated images, the parts are cut by patient.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ccg_layers.datasets.index import DatasetIndex

__all__ = [
    "NUM_FOLDS",
    "Setting",
    "chestxray14_splits",
    "dataset_splits",
    "patient_folds",
    "read_split_files",
    "save_split",
    "split_summary",
]

Setting = Literal["a", "b", "c"]
NUM_FOLDS = 5
_SETTINGS = ("a", "b", "c")


def patient_folds(patient_ids: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Assign items grouped by patient to ``num_folds`` parts of (almost) equal size.

    Patients are shuffled by ``seed`` and placed largest group first, each into the part with
    the most room left under its target size (``len // num_folds`` or one more), so parts are
    exactly equal whenever the groups allow it and no patient is in two parts.

    Returns:
        ``(len(patient_ids),)`` int64, the part of each item.
    """
    patient_ids = np.asarray(patient_ids)
    n = len(patient_ids)
    targets = np.full(num_folds, n // num_folds)
    targets[: n % num_folds] += 1
    rng = np.random.default_rng(seed)
    uniq, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    perm = rng.permutation(len(uniq))
    order = perm[np.argsort(-counts[perm], kind="stable")]
    filled = np.zeros(num_folds, dtype=np.int64)
    part_of_patient = np.zeros(len(uniq), dtype=np.int64)
    for p in order:  # one step per patient group, not per image
        room = targets - filled
        part = int(np.argmax(room))
        part_of_patient[p] = part
        filled[part] += counts[p]
    return part_of_patient[inverse]


def chestxray14_splits(
    index: DatasetIndex,
    setting: Setting,
    fold: int = 0,
    *,
    seed: int = 0,
    patient_disjoint: bool = False,
) -> dict[str, list[str]]:
    """Training and test images of the paper's data settings (Sec. 4.2), deterministic by seed.

    "Annotated" images have at least one box; the others are "unannotated". The annotated
    images are cut into 5 parts by patient (:func:`patient_folds`, so no patient has annotated
    images on both sides), and:

    * ``"a"``: 50% of the unannotated (drawn by ``seed``, the same for every fold) plus the 4
      annotated parts other than ``fold`` for training (80%); part ``fold`` for testing (20%).
    * ``"b"``: 100% of the unannotated for training, all annotated images for testing
      (``fold`` has no effect).
    * ``"c"``: 100% of the unannotated plus parts ``fold`` and ``fold + 1 mod 5`` (40%) for
      training, the other three parts (60%) for testing.

    By default the counts follow the paper, so unannotated training images may belong to a
    patient with a test image (:func:`split_summary` counts them); ``patient_disjoint=True``
    drops those images from training.

    Args:
        index: Any dataset index (:func:`~ccg_layers.datasets.read_chestxray14`,
            :func:`~ccg_layers.datasets.read_vindr_cxr`, ...).
        setting: ``"a"``, ``"b"`` or ``"c"``.
        fold: ``0 .. 4``.
        seed: Seeds the patient parts and the 50% draw.
        patient_disjoint: Make train and test fully patient-disjoint.

    Returns:
        ``{"train": [...], "test": [...]}``, image names in index order.

    Example:
        >>> import torch
        >>> from ccg_layers.datasets import ChestXray14Index
        >>> n = 20
        >>> index = ChestXray14Index(
        ...     images=[f"{i:08d}_000.png" for i in range(n)], labels=torch.zeros(n, 14),
        ...     patient_ids=torch.arange(n), follow_ups=torch.zeros(n, dtype=torch.long),
        ...     view_positions=["PA"] * n, boxes=torch.tensor([[0.0, 0.0, 9.0, 9.0]] * 10),
        ...     box_image_index=torch.arange(10), box_class=torch.zeros(10, dtype=torch.long))
        >>> s = chestxray14_splits(index, "a", fold=0)
        >>> len(s["train"]), len(s["test"])  # 5 of 10 unannotated + 8 of 10 annotated; 2
        (13, 2)
    """
    if setting not in _SETTINGS:
        raise ValueError(f"`setting` must be one of 'a', 'b', 'c', got {setting!r}")
    if not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"`fold` must be an int in [0, {NUM_FOLDS}), got {fold!r}")
    annotated = index.annotated.numpy()
    patients = index.patient_ids.numpy()
    ann_rows = np.flatnonzero(annotated)
    unann_rows = np.flatnonzero(~annotated)
    parts = patient_folds(patients[ann_rows], NUM_FOLDS, seed)
    if setting == "a":
        rng = np.random.default_rng([seed, 1])
        half = rng.permutation(len(unann_rows))[: len(unann_rows) // 2]
        unann_train = np.sort(unann_rows[half])
        train_mask = parts != fold
    elif setting == "b":
        unann_train = unann_rows
        train_mask = np.zeros(len(ann_rows), dtype=bool)
    else:
        unann_train = unann_rows
        train_mask = (parts == fold) | (parts == (fold + 1) % NUM_FOLDS)
    test_rows = ann_rows[~train_mask]
    train_rows = np.sort(np.concatenate([unann_train, ann_rows[train_mask]]))
    if patient_disjoint:
        test_patients = np.unique(patients[test_rows])
        train_rows = train_rows[~np.isin(patients[train_rows], test_patients)]
    names = index.images
    return {"train": [names[i] for i in train_rows], "test": [names[i] for i in test_rows]}


#: :func:`chestxray14_splits` under the name that says it serves every dataset.
dataset_splits = chestxray14_splits


def split_summary(index: DatasetIndex, split: dict[str, list[str]]) -> dict[str, int]:
    """Sizes of a split: images, annotated images and patients per side, and the overlap.

    ``train_sharing_patient_with_test`` counts the training images whose patient has a test
    image (0 for a patient-disjoint split).

    Example:
        >>> import torch
        >>> from ccg_layers.datasets import ChestXray14Index
        >>> index = ChestXray14Index(
        ...     images=["00000001_000.png", "00000001_001.png"], labels=torch.zeros(2, 14),
        ...     patient_ids=torch.tensor([1, 1]), follow_ups=torch.tensor([0, 1]),
        ...     view_positions=["PA", "PA"], boxes=torch.zeros(0, 4),
        ...     box_image_index=torch.zeros(0, dtype=torch.long),
        ...     box_class=torch.zeros(0, dtype=torch.long))
        >>> split_summary(index, {"train": ["00000001_000.png"], "test": ["00000001_001.png"]})
        ... # doctest: +NORMALIZE_WHITESPACE
        {'train': 1, 'train_annotated': 0, 'train_patients': 1, 'test': 1, 'test_annotated': 0,
         'test_patients': 1, 'train_sharing_patient_with_test': 1}
    """
    annotated = index.annotated
    out: dict[str, int] = {}
    rows = {}
    for side in ("train", "test"):
        r = torch.tensor([index.position(n) for n in split[side]], dtype=torch.long)
        rows[side] = r
        out[side] = len(r)
        out[f"{side}_annotated"] = int(annotated[r].sum())
        out[f"{side}_patients"] = len(torch.unique(index.patient_ids[r]))
    shared = torch.isin(index.patient_ids[rows["train"]], index.patient_ids[rows["test"]])
    out["train_sharing_patient_with_test"] = int(shared.sum())
    return out


def save_split(
    split: dict[str, list[str]],
    out_dir: str | os.PathLike[str],
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write ``train.txt`` and ``test.txt`` (one image name per line) and ``split.json``.

    ``split.json`` holds ``summary`` (e.g. :func:`split_summary` plus the setting, fold and
    seed). Returns ``out_dir``. :func:`read_split_files` reads the two text files back.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for side in ("train", "test"):
        (out / f"{side}.txt").write_text("".join(f"{n}\n" for n in split[side]))
    (out / "split.json").write_text(json.dumps(summary or {}, indent=2, sort_keys=True) + "\n")
    return out


def read_split_files(
    train_file: str | os.PathLike[str],
    test_file: str | os.PathLike[str],
    index: DatasetIndex | None = None,
) -> dict[str, list[str]]:
    """Read an explicit split: two text files of image names, one per line.

    Blank lines and lines starting with ``#`` are ignored. With ``index``, every name must be
    in it, and no name may be on both sides.

    Raises:
        ValueError: A name not in ``index`` or on both sides (names the file and line).
    """
    split: dict[str, list[str]] = {}
    for side, path in (("train", Path(train_file)), ("test", Path(test_file))):
        names: list[str] = []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if index is not None:
                try:
                    index.position(name)
                except KeyError:
                    raise ValueError(
                        f"{path}:{line_no}: image {name!r} is not in the index"
                    ) from None
            names.append(name)
        split[side] = names
    both = set(split["train"]) & set(split["test"])
    if both:
        raise ValueError(
            f"{len(both)} image(s) in both {train_file} and {test_file}, e.g. {sorted(both)[0]}"
        )
    return split
