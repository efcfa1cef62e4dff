"""The paper's three data settings (Sec. 4.2) with 5-fold cross-validation, and split files.

They work on any :class:`~ccg_layers.datasets.DatasetIndex` (ChestX-ray14, VinDr-CXR, RSNA
Pneumonia): the settings are fractions of the annotated images, the parts are cut by patient.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ccg_layers.datasets.image_files import name_list, repeated_names
from ccg_layers.datasets.index import DatasetIndex, check_is_index, lookup_rows
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.validation import check_choice, check_flag, positive_int

__all__ = [
    "NUM_FOLDS",
    "Setting",
    "check_split",
    "chestxray14_splits",
    "dataset_splits",
    "patient_fold_kernel",
    "patient_folds",
    "read_split_files",
    "save_split",
    "split_summary",
]

Setting = Literal["a", "b", "c"]
NUM_FOLDS = 5


def patient_folds(patient_ids: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Assign items grouped by patient to ``num_folds`` parts of (almost) equal size.

    Patients are shuffled by ``seed`` and placed largest group first, each into the part with
    the most room left under its target size (``len // num_folds`` or one more), so parts are
    exactly equal whenever the groups allow it and no patient is in two parts.

    Returns:
        ``(len(patient_ids),)`` int64, the part of each item.

    Raises:
        CCGShapeError: ``patient_ids`` is not 1-D.
        CCGValueRangeError: ``num_folds`` is not a positive int at most the number of
            patients (else a part is empty), or ``seed`` is not a non-negative int.

    Example:
        >>> patient_folds(np.array([7, 7, 8, 9]), 2, seed=0).tolist()
        [0, 0, 1, 1]
    """
    patient_ids = np.asarray(patient_ids)
    if patient_ids.ndim != 1:
        raise CCGShapeError(
            f"`patient_ids` must have 1 dimension (n,), got shape {patient_ids.shape}."
        )
    positive_int(num_folds, "num_folds")
    patients = len(np.unique(patient_ids))
    if num_folds > patients:
        raise CCGValueRangeError(
            f"`num_folds` must be at most the number of patients ({patients}), else a part "
            f"is empty, got {num_folds}."
        )
    positive_int(seed, "seed", allow_zero=True)
    return patient_fold_kernel(patient_ids, num_folds, seed)


def patient_fold_kernel(patient_ids: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Kernel of :func:`patient_folds` (validated inputs; a part may be empty)."""
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

    Raises:
        CCGDTypeError: ``index`` is not a :class:`~ccg_layers.datasets.DatasetIndex`.
        CCGValueRangeError: ``setting`` is not ``"a"``, ``"b"`` or ``"c"``, ``fold`` not an
            int (not a bool) in ``[0, 5)``, ``seed`` not a non-negative int, or
            ``patient_disjoint`` not a bool.

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
    check_is_index(index)
    check_choice(setting, "setting", Setting)
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise CCGValueRangeError(f"`fold` must be an int in [0, {NUM_FOLDS}), got {fold!r}.")
    positive_int(seed, "seed", allow_zero=True)
    check_flag(patient_disjoint, "patient_disjoint")
    annotated = index.annotated.numpy()
    patients = index.patient_ids.numpy()
    ann_rows = np.flatnonzero(annotated)
    unann_rows = np.flatnonzero(~annotated)
    parts = patient_fold_kernel(patients[ann_rows], NUM_FOLDS, seed)
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

    Raises:
        CCGDTypeError: ``index`` is not a :class:`~ccg_layers.datasets.DatasetIndex`, or
            ``split`` is not as :func:`check_split` says.
        CCGValueRangeError: ``split`` lacks a side, names an image twice on a side or on
            both sides, or names images not in ``index`` (as :func:`check_split` says).

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
    check_is_index(index)
    check_split(split, index)
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


def check_split(split: object, index: DatasetIndex | None = None) -> None:
    """Raise unless ``split`` is ``{"train": [...], "test": [...]}`` of image names (str).

    Each image stands once, on one side; with ``index``, every name must be in it.

    Raises:
        CCGDTypeError: ``split`` is not a dict, or a side is not a list of str.
        CCGValueRangeError: ``split`` lacks ``"train"`` or ``"test"``, names an image twice on
            a side or on both sides, or (with ``index``) names images that are not in
            ``index`` (names the first ones).
    """
    if not isinstance(split, Mapping):
        raise CCGDTypeError(
            f"`split` must be a dict {{'train': [...], 'test': [...]}} of image names, got "
            f"{type(split).__name__}."
        )
    missing = [side for side in ("train", "test") if side not in split]
    if missing:
        raise CCGValueRangeError(
            f"`split` must have the keys 'train' and 'test', got {sorted(map(str, split))} "
            f"(missing {name_list(missing, quote=True)})."
        )
    for side in ("train", "test"):
        names = split[side]
        if (
            isinstance(names, str)
            or not isinstance(names, Sequence)
            or not all(isinstance(n, str) for n in names)
        ):
            raise CCGDTypeError(
                f"`split[{side!r}]` must be a list of image names (str), got "
                f"{type(names).__name__}{'' if isinstance(names, str) else ' holding other types'}."
            )
        repeated = repeated_names(names)
        if repeated:
            raise CCGValueRangeError(
                f"`split[{side!r}]` must name each image once, got {len(repeated)} more than "
                f"once: {name_list(repeated, quote=True)}."
            )
        if index is None:
            continue
        _, unknown = lookup_rows(index, names)
        if unknown:
            raise CCGValueRangeError(
                f"`split[{side!r}]` must name images of the {index.dataset_name} index, got "
                f"{len(unknown)} that are not: {name_list(unknown, quote=True)}."
            )
    both = sorted(set(split["train"]) & set(split["test"]))
    if both:
        raise CCGValueRangeError(
            f"`split` must not name an image on both sides, got {len(both)} in 'train' and "
            f"'test': {name_list(both, quote=True)}."
        )


def save_split(
    split: dict[str, list[str]],
    out_dir: str | os.PathLike[str],
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write ``train.txt`` and ``test.txt`` (one image name per line) and ``split.json``.

    ``split.json`` holds ``summary`` (e.g. :func:`split_summary` plus the setting, fold and
    seed). Returns ``out_dir``. :func:`read_split_files` reads the two text files back.

    Raises:
        CCGDTypeError: ``split`` is not a dict of two lists of names (:func:`check_split`),
            or ``summary`` is neither ``None`` nor a dict.
        CCGValueRangeError: ``split`` lacks ``"train"`` or ``"test"``, or names an image twice
            (on a side or on both): :func:`read_split_files` would refuse the files.
    """
    check_split(split)
    if summary is not None and not isinstance(summary, Mapping):
        raise CCGDTypeError(f"`summary` must be a dict or None, got {type(summary).__name__}.")
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
        ValueError: A name not in ``index``, listed twice in a file (names the file and line)
            or on both sides.
    """
    split: dict[str, list[str]] = {}
    for side, path in (("train", Path(train_file)), ("test", Path(test_file))):
        names: list[str] = []
        listed: set[str] = set()
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
            if name in listed:
                raise ValueError(f"{path}:{line_no}: image {name!r} is listed a second time")
            listed.add(name)
            names.append(name)
        split[side] = names
    both = set(split["train"]) & set(split["test"])
    if both:
        raise ValueError(
            f"{len(both)} image(s) in both {train_file} and {test_file}, e.g. {sorted(both)[0]}"
        )
    return split
