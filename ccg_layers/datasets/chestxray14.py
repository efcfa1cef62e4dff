"""Reader of the NIH ChestX-ray14 dataset in its on-disk format, and the PyTorch ``Dataset``.

The index (:func:`read_chestxray14`) reads only the two CSV files; images are opened lazily by
:class:`ChestXray14`. PNG files are read with Pillow (which scikit-image's ``imageio`` depends
on), so the runtime dependencies stay torch, numpy, einops and scikit-image.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from ccg_layers.datasets.grayscale import read_radiograph
from ccg_layers.datasets.image_files import name_list
from ccg_layers.datasets.index import IndexRows, Table, check_dataset_index
from ccg_layers.datasets.published_csv import DatasetFormatError, fail_or_skip
from ccg_layers.datasets.radiographs import ImageOutput, RadiographDataset
from ccg_layers.datasets.samples import ChestXray14Batch, ChestXray14Sample, collate_chestxray14
from ccg_layers.errors import CCGDTypeError
from ccg_layers.validation import check_flag

__all__ = [
    "BBOX_LIST_FILE",
    "BOXED_CLASSES",
    "BOX_FRAME",
    "CLASS_NAMES",
    "DATA_ENTRY_FILES",
    "ChestXray14",
    "ChestXray14Batch",
    "ChestXray14FormatError",
    "ChestXray14Index",
    "ChestXray14Sample",
    "collate_chestxray14",
    "find_image_files",
    "read_chestxray14",
    "read_radiograph",
]

_log = logging.getLogger(__name__)

#: The 14 disease classes, in the order of the label vectors (alphabetical, as NIH lists them).
CLASS_NAMES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
#: The 8 classes that have boxes in ``BBox_List_2017.csv``, in the column order of the paper's
#: tables.
BOXED_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
#: Boxes in ``BBox_List_2017.csv`` are in the frame of a 1024 x 1024 image.
BOX_FRAME = 1024
#: The image-label file: the 2020 revision first, then the original 2017 one.
DATA_ENTRY_FILES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_LIST_FILE = "BBox_List_2017.csv"

_NO_FINDING = "No Finding"
_LABEL_ALIASES = {"Infiltrate": "Infiltration"}
_IMAGE_NAME = re.compile(r"^\d{8}_\d{3}\.png$")
_DATA_ENTRY_HEADER = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
_BBOX_HEADER = ("Image Index", "Finding Label")


class ChestXray14FormatError(DatasetFormatError):
    """A ChestX-ray14 file is malformed; the message names the file and the line.

    A :class:`~ccg_layers.datasets.DatasetFormatError` (hence a ``ValueError``).
    """


@dataclass(frozen=True)
class ChestXray14Index(IndexRows):
    """The content of the two ChestX-ray14 CSV files, as tensors.

    Attributes:
        images: The ``N`` image names (``NNNNNNNN_NNN.png``), in file order.
        labels: ``(N, 14)`` float32 multi-hot labels in the order of :data:`CLASS_NAMES`
            (all zero for ``No Finding``).
        patient_ids: ``(N,)`` long.
        follow_ups: ``(N,)`` long, the ``Follow-up #`` column.
        view_positions: The ``N`` view positions (``"PA"`` or ``"AP"``).
        boxes: ``(M, 4)`` float32 boxes ``(x1, y1, x2, y2)`` in the 1024-pixel frame.
        box_image_index: ``(M,)`` long, index of each box's image into ``images``.
        box_class: ``(M,)`` long, index of each box's class into :data:`CLASS_NAMES`.
        root: The folder the CSV files were read from (images are looked up under it), or
            ``None`` for an index built in memory.

    Raises:
        CCGDTypeError: A field that is not a tensor (or a list), or of the wrong dtype.
        CCGShapeError: Fields whose sizes disagree (``labels`` must be ``(N, 14)``).
        CCGValueRangeError: Labels other than 0 and 1, a box index out of range (value
            checks), or repeated image names.

    ``len(index)``, ``index.position(name)``, ``has_box`` ``(N, 14)`` and ``annotated`` ``(N,)``
    are those of every index (:class:`~ccg_layers.datasets.index.IndexRows`).
    """

    images: list[str]
    labels: Tensor
    patient_ids: Tensor
    follow_ups: Tensor
    view_positions: list[str]
    boxes: Tensor
    box_image_index: Tensor
    box_class: Tensor
    root: Path | None = None
    _positions: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.images) if isinstance(self.images, Sequence) else -1
        own: dict[str, Table] = {
            "follow_ups": (self.follow_ups, (n,), "int"),
            "view_positions": (self.view_positions, (n,), None),
        }
        check_dataset_index(self, own, BOXED_CLASSES)

    # ----------------------------------------------- the DatasetIndex interface (index.py)

    @property
    def dataset_name(self) -> str:
        """``"ChestX-ray14"``."""
        return "ChestX-ray14"

    @property
    def has_patient_ids(self) -> bool:
        """``True``: the ``Patient ID`` column."""
        return True

    @property
    def class_names(self) -> tuple[str, ...]:
        """:data:`CLASS_NAMES`, the 14 classes of ``labels``."""
        return CLASS_NAMES

    @property
    def boxed_classes(self) -> tuple[str, ...]:
        """:data:`BOXED_CLASSES`, the 8 classes with boxes."""
        return BOXED_CLASSES

    @property
    def image_sizes(self) -> Tensor:
        """``(N, 2)`` long, all :data:`BOX_FRAME` (the CSV boxes' frame, whatever the PNG's size)."""
        return torch.full((len(self.images), 2), BOX_FRAME, dtype=torch.long)

    def find_images(self, image_root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
        """:func:`find_image_files` of ``image_root`` (default ``root``), limited to the index."""
        folder = Path(image_root) if image_root is not None else self.root
        if folder is None:
            raise ValueError("`image_root` is required when the index has no root folder")
        return {n: p for n, p in find_image_files(folder).items() if n in self._positions}


# --------------------------------------------------------------------------- CSV reading


def _fail_or_skip(message: str, skip: bool) -> None:
    fail_or_skip(message, skip, _log, ChestXray14FormatError)


def _find_data_entry(root: Path) -> Path:
    for name in DATA_ENTRY_FILES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"no ChestX-ray14 label file in {root}: expected {' or '.join(DATA_ENTRY_FILES)}"
    )


def _csv_rows(path: Path, expected_header: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` of every non-empty data row, after checking the header."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ChestXray14FormatError(f"{path}:1: the file is empty")
        got = tuple(cell.strip() for cell in header[: len(expected_header)])
        if got != tuple(expected_header):
            raise ChestXray14FormatError(
                f"{path}:1: header must start with {', '.join(expected_header)}; "
                f"got {', '.join(header)}"
            )
        for row in reader:
            if row:
                yield reader.line_num, row


def _read_data_entry(
    path: Path, skip_bad_rows: bool
) -> tuple[list[str], list[list[int]], list[int], list[int], list[str]]:
    images: list[str] = []
    labels: list[list[int]] = []
    patients: list[int] = []
    follow_ups: list[int] = []
    views: list[str] = []
    seen: set[str] = set()
    for line, row in _csv_rows(path, _DATA_ENTRY_HEADER):
        fields = row[:-1] if len(row) == 12 and not row[-1].strip() else row
        where = f"{path}:{line}"
        if len(fields) != 11:
            _fail_or_skip(f"{where}: expected 11 fields, got {len(row)}: {row}", skip_bad_rows)
            continue
        name, findings, follow_up, patient, view = (
            fields[0].strip(),
            fields[1].strip(),
            fields[2].strip(),
            fields[3].strip(),
            fields[6].strip(),
        )
        if not _IMAGE_NAME.match(name):
            _fail_or_skip(
                f"{where}: image name must look like NNNNNNNN_NNN.png, got {name!r}",
                skip_bad_rows,
            )
            continue
        if name in seen:
            _fail_or_skip(f"{where}: image {name} is listed twice", skip_bad_rows)
            continue
        names = [s.strip() for s in findings.split("|")]
        if names == [_NO_FINDING]:
            ks: list[int] = []
        else:
            unknown = [s for s in names if s not in CLASS_NAMES]
            if unknown:
                _fail_or_skip(
                    f"{where}: unknown finding label(s) {unknown} in {findings!r}; expected "
                    f"'{_NO_FINDING}' or a '|'-joined subset of {', '.join(CLASS_NAMES)}",
                    skip_bad_rows,
                )
                continue
            ks = sorted({CLASS_NAMES.index(s) for s in names})
        try:
            patient_id, follow = int(patient), int(follow_up)
        except ValueError:
            _fail_or_skip(
                f"{where}: Patient ID and Follow-up # must be integers, got "
                f"{patient!r} and {follow_up!r}",
                skip_bad_rows,
            )
            continue
        seen.add(name)
        images.append(name)
        labels.append(ks)
        patients.append(patient_id)
        follow_ups.append(follow)
        views.append(view)
    return images, labels, patients, follow_ups, views


def _read_bbox_list(
    path: Path,
    positions: dict[str, int],
    labels: Tensor,
    skip_bad_rows: bool,
) -> tuple[list[list[float]], list[int], list[int]]:
    boxes: list[list[float]] = []
    image_index: list[int] = []
    classes: list[int] = []
    for line, row in _csv_rows(path, _BBOX_HEADER):
        fields = list(row)
        while len(fields) > 6 and not fields[-1].strip():
            fields.pop()
        where = f"{path}:{line}"
        if len(fields) != 6:
            _fail_or_skip(f"{where}: expected 6 fields, got {len(row)}: {row}", skip_bad_rows)
            continue
        name, label = fields[0].strip(), fields[1].strip()
        label = _LABEL_ALIASES.get(label, label)
        if label not in CLASS_NAMES:
            _fail_or_skip(f"{where}: unknown box label {fields[1]!r}", skip_bad_rows)
            continue
        try:
            x, y, w, h = (float(v) for v in fields[2:6])
        except ValueError:
            _fail_or_skip(f"{where}: x, y, w, h must be numbers, got {fields[2:6]}", skip_bad_rows)
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            _fail_or_skip(
                f"{where}: box must be finite with w > 0 and h > 0, got {(x, y, w, h)}",
                skip_bad_rows,
            )
            continue
        if name not in positions:
            _fail_or_skip(f"{where}: image {name} is not in the label file", skip_bad_rows)
            continue
        i, k = positions[name], CLASS_NAMES.index(label)
        if labels[i, k] != 1:
            _fail_or_skip(
                f"{where}: box of class {label} on image {name}, whose labels do not include it",
                skip_bad_rows,
            )
            continue
        boxes.append([x, y, x + w, y + h])
        image_index.append(i)
        classes.append(k)
    return boxes, image_index, classes


def read_chestxray14(
    root: str | os.PathLike[str], *, skip_bad_rows: bool = False
) -> ChestXray14Index:
    r"""Read the two ChestX-ray14 CSV files under ``root`` into a :class:`ChestXray14Index`.

    Reads ``Data_Entry_2017_v2020.csv`` (or the original ``Data_Entry_2017.csv``, whose rows
    carry one trailing empty field) and ``BBox_List_2017.csv`` (optional: without it the index
    has no boxes). Images are not opened; a root holding only the CSV files works. The
    bracketed header names (``OriginalImage[Width,Height]``) contain commas, so the header has
    more cells than the names; only the first cells are checked. The box label
    ``Infiltrate`` means ``Infiltration``. Box rows ``x, y, w, h`` become ``(x, y, x+w, y+h)``.

    Args:
        root: The dataset folder.
        skip_bad_rows: Log (``logging.WARNING``) and skip malformed rows instead of raising.

    Returns:
        The index.

    Raises:
        CCGDTypeError: ``root`` is not a str or an ``os.PathLike``.
        CCGValueRangeError: ``skip_bad_rows`` is not a bool (checked before any file is read).
        FileNotFoundError: No label file under ``root``.
        ChestXray14FormatError: A malformed header or row, with the file name and line: wrong
            number of fields, a bad image name, an unknown label, a box that is not a positive
            finite rectangle, a box on an image that is not listed or on a class that is not
            among its image's labels.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "Data_Entry_2017_v2020.csv").write_text(
        ...     "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        ...     "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        ...     "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"
        ...     "00000002_000.png,No Finding,0,2,80,M,PA,2500,2048,0.171,0.171\n")
        >>> _ = (root / "BBox_List_2017.csv").write_text(
        ...     "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        ...     "00000001_000.png,Cardiomegaly,300,500,400,250\n")
        >>> index = read_chestxray14(root)
        >>> index.images, index.labels[0, 1].item(), index.boxes.tolist(), index.box_class.tolist()
        (['00000001_000.png', '00000002_000.png'], 1.0, [[300.0, 500.0, 700.0, 750.0]], [1])
    """
    check_flag(skip_bad_rows, "skip_bad_rows")
    if not isinstance(root, str | os.PathLike):
        raise CCGDTypeError(
            f"`root` must be a dataset folder (a str or an os.PathLike), got {type(root).__name__}."
        )
    root = Path(root)
    entry = _find_data_entry(root)
    images, label_lists, patients, follow_ups, views = _read_data_entry(entry, skip_bad_rows)
    rows = [i for i, ks in enumerate(label_lists) for _ in ks]
    cols = [k for ks in label_lists for k in ks]
    labels = torch.zeros(len(images), len(CLASS_NAMES), dtype=torch.float32)
    labels[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = 1.0
    positions = {name: i for i, name in enumerate(images)}
    bbox_path = root / BBOX_LIST_FILE
    if bbox_path.is_file():
        boxes, image_index, classes = _read_bbox_list(bbox_path, positions, labels, skip_bad_rows)
    else:
        _log.info("no %s in %s: the index has no boxes", BBOX_LIST_FILE, root)
        boxes, image_index, classes = [], [], []
    return ChestXray14Index(
        images=images,
        labels=labels,
        patient_ids=torch.tensor(patients, dtype=torch.long),
        follow_ups=torch.tensor(follow_ups, dtype=torch.long),
        view_positions=views,
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        box_image_index=torch.tensor(image_index, dtype=torch.long),
        box_class=torch.tensor(classes, dtype=torch.long),
        root=root,
    )


# --------------------------------------------------------------------------- images


def find_image_files(image_root: str | os.PathLike[str]) -> dict[str, Path]:
    """Map every ``*.png`` name under ``image_root`` to its path.

    Looks in ``image_root/images/`` and in the official ``image_root/images_001/images/`` ...
    ``images_012/images/`` subfolders (and in ``image_root`` itself).

    Raises:
        FileNotFoundError: ``image_root`` is not a folder (names it).
    """
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of ChestX-ray14 images")
    folders = [root, root / "images", *sorted(root.glob("images_*/images"))]
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(".png") and entry.is_file():
                    found.setdefault(entry.name, Path(entry.path))
    return found


class ChestXray14(RadiographDataset):
    """ChestX-ray14 as a map-style ``torch.utils.data.Dataset``.

    A sample (:class:`ChestXray14Sample`) is the image resized to ``image_size`` x
    ``image_size`` (block mean for integer factors, else bilinear) as 1-channel uint8 luminance
    (see :func:`read_radiograph`: 1 byte per pixel through the loader; a model expands it to 3
    channels and normalises it on its device with
    :func:`~ccg_layers.datasets.normalize_radiographs`), the 14-class label vector, the image's
    boxes scaled from the 1024-pixel frame to the working size with their classes, and
    ``has_box`` (14,) saying which classes have a box. Batch with :func:`collate_chestxray14`.

    Images are found in ``image_root/images/`` or the official ``images_001/images`` ...
    ``images_012/images`` subfolders. The CSV boxes are always in the 1024-pixel frame; a PNG
    of another size (e.g. a dataset written at 512 x 512) is read as the same frame.

    A :class:`~ccg_layers.datasets.RadiographDataset` of a
    :class:`~ccg_layers.datasets.ChestXray14Index`, reading its PNGs with
    :func:`read_radiograph`; it has the same attributes (``index``, ``image_names``, ``paths``,
    ``rows``, ``image_size``, ``output``, ``skip_bad_images``) and methods (``load_image``,
    ``targets``).

    Args:
        root_or_index: The dataset folder (read with :func:`read_chestxray14`) or an index.
        image_names: The images of this dataset (e.g. ``splits["train"]``); default all.
        image_size: The working size ``S`` (paper: 512).
        output: The image's form: ``"uint8"`` (default) ``(1, S, S)`` uint8 luminance;
            ``"imagenet"`` ``(3, S, S)`` float32 ImageNet-normalised (the gray value repeated
            to 3 channels, :func:`~ccg_layers.datasets.normalize_radiographs`); ``"unit"``
            ``(3, S, S)`` float32 in [0, 1].
        image_root: Where the images are; default the index's ``root``.
        skip_bad_images: Log and skip missing images (and malformed CSV rows when reading
            ``root``) instead of raising; an unreadable image at load time is replaced by the
            next readable one.

    Raises:
        CCGDTypeError: ``root_or_index`` is neither a folder (a str or an ``os.PathLike``) nor a
            :class:`ChestXray14Index`.
        ChestXray14FormatError: A malformed row of the CSV files when reading ``root``.
        ValueError: As :class:`~ccg_layers.datasets.RadiographDataset` (an unknown name is
            a ``CCGValueRangeError``); so is a missing image, a ``FileNotFoundError``.

    Example:
        >>> import tempfile
        >>> from ccg_layers.datasets import ChestXray14, generate_synthetic_chestxray14
        >>> root = generate_synthetic_chestxray14(tempfile.mkdtemp(), 4, seed=0, image_size=128)
        >>> ds = ChestXray14(root, image_size=64)
        >>> sample = ds[0]
        >>> sample["image"].shape, sample["image"].dtype, sample["has_box"].dtype
        (torch.Size([1, 64, 64]), torch.uint8, torch.bool)
        >>> ChestXray14(root, image_size=64, output="imagenet")[0]["image"].shape
        torch.Size([3, 64, 64])
    """

    index: ChestXray14Index
    _logger: ClassVar[logging.Logger] = _log

    def __init__(
        self,
        root_or_index: str | os.PathLike[str] | ChestXray14Index,
        image_names: Iterable[str] | None = None,
        *,
        image_size: int = 512,
        output: ImageOutput = "uint8",
        image_root: str | os.PathLike[str] | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        check_flag(skip_bad_images, "skip_bad_images")
        if isinstance(root_or_index, ChestXray14Index):
            index = root_or_index
        elif not isinstance(root_or_index, str | os.PathLike):
            raise CCGDTypeError(
                "`root_or_index` must be a dataset folder (a str or an os.PathLike) or a "
                f"ChestXray14Index, got {type(root_or_index).__name__}."
            )
        else:
            index = read_chestxray14(root_or_index, skip_bad_rows=skip_bad_images)
        super().__init__(
            index,
            image_names,
            image_size=image_size,
            output=output,
            image_root=image_root,
            skip_bad_images=skip_bad_images,
        )

    def _missing_message(
        self, missing: list[str], image_root: str | os.PathLike[str] | None
    ) -> str:
        """The message of the original reader: where it looked, which names it missed."""
        folder = Path(image_root) if image_root is not None else self.index.root
        return (
            f"{len(missing)} image(s) not found under {folder} (looked in images/ and "
            f"images_*/images/): {name_list(missing)}"
        )

    def _read_file(self, path: Path) -> Tensor:
        """The PNG in ``path`` (:func:`read_radiograph`; never taken for DICOM)."""
        return read_radiograph(path, self.image_size)
