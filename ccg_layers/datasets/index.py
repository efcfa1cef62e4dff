"""The one dataset interface: an index of radiographs with labels and boxes.

:class:`DatasetIndex` is what the splits, the Dataset, the metric and the trainer read from any
box-annotated chest X-ray dataset: the images (name, file, size of the frame its boxes are in,
patient), the image-level labels over the dataset's class list, the boxes flat (in each image's
pixel frame) and which classes have boxes. :class:`~ccg_layers.datasets.ChestXray14Index`
satisfies it; :class:`RadiographIndex` is the general form that the VinDr-CXR and RSNA
Pneumonia readers return.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from ccg_layers.config import values_checkable
from ccg_layers.datasets.image_files import (
    IMAGE_SUFFIXES,
    name_list,
    repeated_names,
    scan_image_folder,
)
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.validation import (
    check_binary,
    check_dtype,
    check_index,
    check_shape,
    check_size2,
    check_tensor,
)

__all__ = [
    "DatasetIndex",
    "IndexRows",
    "RadiographIndex",
    "boxes_at_size",
    "check_dataset_index",
    "check_is_index",
    "check_positive_sizes",
    "lookup_rows",
    "scaled_boxes",
]

#: A field of an index checked at construction: its value, its shape, and a dtype kind (or
#: ``None`` for a list).
Table = tuple[object, tuple[int, ...], Literal["float", "int"] | None]


@runtime_checkable
class DatasetIndex(Protocol):
    """What every dataset index offers (``N`` images, ``K`` classes, ``M`` boxes).

    Attributes:
        dataset_name: The dataset's name, for messages (e.g. ``"VinDr-CXR"``).
        images: The ``N`` image names (unique keys: a file name or the publisher's image id).
        labels: ``(N, K)`` float32 multi-hot image-level labels over :attr:`class_names`.
        patient_ids: ``(N,)`` long; images of one patient share an id. Datasets without
            patient ids give each image its own (``has_patient_ids`` is then ``False``).
        has_patient_ids: Whether ``patient_ids`` come from the publisher.
        boxes: ``(M, 4)`` float32 ``(x1, y1, x2, y2)`` in the pixel frame of their image.
        box_image_index: ``(M,)`` long into ``images``.
        box_class: ``(M,)`` long into :attr:`class_names`.
        image_sizes: ``(N, 2)`` long ``(width, height)`` of the frame each image's boxes are in.
        class_names: The ``K`` classes of ``labels``.
        boxed_classes: The classes that can have boxes, in the column order of the tables.
        root: The folder the index was read from, or ``None``.
    """

    @property
    def dataset_name(self) -> str:
        """The dataset's name."""

    @property
    def images(self) -> list[str]:
        """The ``N`` image names."""

    @property
    def labels(self) -> Tensor:
        """``(N, K)`` float32 labels over ``class_names``."""

    @property
    def patient_ids(self) -> Tensor:
        """``(N,)`` long patient of each image."""

    @property
    def has_patient_ids(self) -> bool:
        """Whether the patient ids come from the publisher."""

    @property
    def boxes(self) -> Tensor:
        """``(M, 4)`` float32 xyxy boxes in their image's frame."""

    @property
    def box_image_index(self) -> Tensor:
        """``(M,)`` long image of each box."""

    @property
    def box_class(self) -> Tensor:
        """``(M,)`` long class of each box."""

    @property
    def image_sizes(self) -> Tensor:
        """``(N, 2)`` long ``(width, height)`` of each box frame."""

    @property
    def class_names(self) -> tuple[str, ...]:
        """The ``K`` classes."""

    @property
    def boxed_classes(self) -> tuple[str, ...]:
        """The classes that can have boxes."""

    @property
    def root(self) -> Path | None:
        """The folder read, or ``None``."""

    @property
    def has_box(self) -> Tensor:
        """``(N, K)`` bool: whether class ``k`` of image ``i`` has at least one box."""

    @property
    def annotated(self) -> Tensor:
        """``(N,)`` bool: whether the image has at least one box."""

    def __len__(self) -> int: ...
    def position(self, name: str) -> int:
        """The row of image ``name``; ``KeyError`` naming it when it is not in the index."""

    def find_images(self, image_root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
        """Map the name of every image found on disk to its file (under ``image_root`` if given)."""


def _names(value: object, name: str) -> list[str]:
    """``value`` as a list if it is a sequence of unique strings (not a string)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise CCGDTypeError(f"`{name}` must be a list of str, got {type(value).__name__}.")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise CCGDTypeError(f"`{name}` must be a list of str, got a {type(bad[0]).__name__}.")
    repeated = repeated_names(value)
    if repeated:
        raise CCGValueRangeError(
            f"`{name}` must hold each name once, got {len(repeated)} more than once: "
            f"{name_list(repeated, quote=True)}."
        )
    return list(value)


def check_positive_sizes(sizes: Tensor, name: str) -> None:
    """Raise unless every ``(width, height)`` of ``sizes`` is positive (a value check)."""
    if not values_checkable() or sizes.numel() == 0:
        return
    bad = (sizes <= 0).any(dim=-1)
    if bool(bad.any()):
        raise CCGValueRangeError(
            f"`{name}` must hold positive (width, height), got {int(bad.sum())} frame(s) that "
            f"are not, e.g. {sizes[bad][0].tolist()}."
        )


def lookup_rows(index: DatasetIndex, names: Iterable[str]) -> tuple[list[int], list[str]]:
    """The rows of ``names`` in ``index``, and the names it does not hold, in the given order."""
    rows: list[int] = []
    unknown: list[str] = []
    for n in names:
        try:
            rows.append(index.position(n))
        except KeyError:
            unknown.append(n)
    return rows, unknown


class IndexRows:
    """The row look-ups every index shares: ``len``, :meth:`position`, ``has_box``, ``annotated``.

    A base of the frozen dataclasses :class:`RadiographIndex` and
    :class:`~ccg_layers.datasets.ChestXray14Index`, which hold the fields read here and check
    them and fill ``_positions`` (image name -> row) in their ``__post_init__``
    (:func:`check_dataset_index`).
    """

    images: list[str]
    labels: Tensor
    patient_ids: Tensor
    boxes: Tensor
    box_image_index: Tensor
    box_class: Tensor
    _positions: dict[str, int]

    if TYPE_CHECKING:  # a field of one index, a property of another: declared, not defined

        @property
        def dataset_name(self) -> str:
            """The dataset's name, for messages."""

        @property
        def class_names(self) -> tuple[str, ...]:
            """The ``K`` classes."""

    def __len__(self) -> int:
        return len(self.images)

    def position(self, name: str) -> int:
        """The row of image ``name``; ``KeyError`` naming it when it is not in the index."""
        try:
            return self._positions[name]
        except KeyError:
            raise KeyError(f"image {name!r} is not in the {self.dataset_name} index") from None

    @property
    def has_box(self) -> Tensor:
        """``(N, K)`` bool: whether class ``k`` of image ``i`` has at least one box."""
        out = torch.zeros(len(self.images), len(self.class_names), dtype=torch.bool)
        out[self.box_image_index, self.box_class] = True
        return out

    @property
    def annotated(self) -> Tensor:
        """``(N,)`` bool: whether the image has at least one box."""
        out = torch.zeros(len(self.images), dtype=torch.bool)
        out[self.box_image_index] = True
        return out


@dataclass(frozen=True)
class RadiographIndex(IndexRows):
    """A :class:`DatasetIndex` held in memory: what the VinDr-CXR and RSNA readers return.

    Attributes:
        dataset_name: The dataset's name, for messages.
        images: The ``N`` image names (the publisher's ids), in file order.
        labels: ``(N, K)`` float32 over ``class_names``.
        patient_ids: ``(N,)`` long.
        boxes: ``(M, 4)`` float32 xyxy in each image's pixel frame.
        box_image_index: ``(M,)`` long into ``images``.
        box_class: ``(M,)`` long into ``class_names``.
        image_sizes: ``(N, 2)`` long ``(width, height)`` of each image's box frame.
        class_names: The ``K`` classes.
        boxed_classes: The classes that can have boxes.
        files: The file of each image (``None`` where it was not found).
        has_patient_ids: Whether ``patient_ids`` come from the publisher (default ``False``:
            one patient per image).
        root: The folder the index was read from.
        image_suffixes: The file suffixes :meth:`find_images` looks for under another folder.

    Raises:
        CCGDTypeError: A field that is not a tensor (or a list), or of the wrong dtype.
        CCGShapeError: Fields whose sizes disagree.
        CCGValueRangeError: Labels other than 0 and 1, a box index out of range, a frame
            size that is not positive (value checks), repeated names, or a boxed class that
            is not a class.

    Example:
        >>> import torch
        >>> index = RadiographIndex(
        ...     dataset_name="demo", images=["a", "b"], labels=torch.tensor([[1.0], [0.0]]),
        ...     patient_ids=torch.arange(2), boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0]]),
        ...     box_image_index=torch.tensor([0]), box_class=torch.tensor([0]),
        ...     image_sizes=torch.tensor([[100, 200], [100, 200]]), class_names=("Opacity",),
        ...     boxed_classes=("Opacity",), files=[None, None])
        >>> index.annotated.tolist(), index.position("b"), isinstance(index, DatasetIndex)
        ([True, False], 1, True)
    """

    dataset_name: str
    images: list[str]
    labels: Tensor
    patient_ids: Tensor
    boxes: Tensor
    box_image_index: Tensor
    box_class: Tensor
    image_sizes: Tensor
    class_names: tuple[str, ...]
    boxed_classes: tuple[str, ...]
    files: list[Path | None]
    has_patient_ids: bool = False
    root: Path | None = None
    image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES["auto"]
    _positions: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.images) if isinstance(self.images, Sequence) else -1  # checked below
        own: dict[str, Table] = {
            "image_sizes": (self.image_sizes, (n, 2), "int"),
            "files": (self.files, (n,), None),
        }
        check_dataset_index(self, own, self.boxed_classes)
        check_positive_sizes(self.image_sizes, "image_sizes")

    def find_images(self, image_root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
        """Map every image found on disk to its file.

        Without ``image_root``: the files the reader found. With it: the files in that folder
        named ``<image name><suffix>`` for a suffix of ``image_suffixes`` (the first suffix
        found wins, so DICOM before PNG before JPEG).
        """
        if image_root is None:
            return {n: p for n, p in zip(self.images, self.files, strict=True) if p is not None}
        found = scan_image_folder(Path(image_root), self.image_suffixes)
        return {n: found[n] for n in self.images if n in found}


def check_dataset_index(index: IndexRows, own: dict[str, Table], boxed_classes: object) -> None:
    """Check the fields of an index at its construction and fill its ``_positions``.

    The fields every index has (``images``, ``labels``, ``patient_ids``, the boxes, the class
    names) and the index's ``own`` (name -> :data:`Table`): types, dtypes, shapes that agree,
    labels in ``{0, 1}`` and box indices in range (value checks, while they are on), unique
    names, ``boxed_classes`` among the class names.

    Raises:
        CCGDTypeError: A field that is not a tensor (or a list), or of the wrong dtype.
        CCGShapeError: A field whose shape does not agree with the others.
        CCGValueRangeError: Labels other than 0 and 1, a box index out of range, repeated
            names, or a boxed class that is not a class.
    """
    n = len(_names(index.images, "images"))
    classes = _names(index.class_names, "class_names")
    boxed = _names(boxed_classes, "boxed_classes")
    unknown = [c for c in boxed if c not in classes]
    if unknown:
        raise CCGValueRangeError(
            f"`boxed_classes` must be among `class_names` ({name_list(classes)}), got "
            f"{name_list(unknown, quote=True)}."
        )
    boxes = check_tensor(index.boxes, "boxes")
    check_dtype(boxes, "boxes", ("float",))
    m = check_shape(boxes, "boxes", ("M", 4))["M"]
    tables: dict[str, Table] = {
        "labels": (index.labels, (n, len(classes)), "float"),
        "patient_ids": (index.patient_ids, (n,), "int"),
        "box_image_index": (index.box_image_index, (m,), "int"),
        "box_class": (index.box_class, (m,), "int"),
        **own,
    }
    for name, (value, want, kind) in tables.items():
        if kind is None:
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise CCGDTypeError(f"`{name}` must be a list, got {type(value).__name__}.")
            got: tuple[int, ...] = (len(value),)
        else:
            check_dtype(check_tensor(value, name), name, (kind,))
            got = tuple(value.shape)  # type: ignore[attr-defined]
        if got != want:  # the message of the index's first shape check (a ValueError)
            raise CCGShapeError(f"`{name}` must have shape {want}, got {got}")
    check_binary(index.labels, "labels")
    check_index(index.box_image_index, "box_image_index", n)
    check_index(index.box_class, "box_class", len(classes))
    index._positions.update({name: i for i, name in enumerate(index.images)})


def scaled_boxes(index: DatasetIndex, w: int, h: int) -> Tensor:
    """Kernel of :func:`boxes_at_size` (validated inputs): the boxes scaled to ``w`` x ``h``."""
    frame = index.image_sizes[index.box_image_index].to(torch.float32)  # (M, 2) (W, H)
    scale = torch.stack([w / frame[:, 0], h / frame[:, 1], w / frame[:, 0], h / frame[:, 1]], dim=1)
    return (index.boxes * scale).to(torch.float32)


def boxes_at_size(index: DatasetIndex, size: int | tuple[int, int]) -> Tensor:
    """``(M, 4)`` float32: every box of ``index`` scaled to a working image of ``size``.

    ``size`` is ``S`` (square) or ``(W, H)``; each box is scaled from its image's frame
    (``index.image_sizes``), as :class:`~ccg_layers.datasets.RadiographDataset` scales them.

    Raises:
        CCGDTypeError: ``index`` is not a :class:`DatasetIndex`.
        CCGValueRangeError: ``size`` is not a positive int or two positive ints, or an image
            of ``index`` has a frame that is not positive (a value check).

    Example:
        >>> import torch
        >>> index = RadiographIndex(
        ...     dataset_name="demo", images=["a"], labels=torch.ones(1, 1),
        ...     patient_ids=torch.zeros(1, dtype=torch.long),
        ...     boxes=torch.tensor([[100.0, 200.0, 300.0, 400.0]]),
        ...     box_image_index=torch.tensor([0]), box_class=torch.tensor([0]),
        ...     image_sizes=torch.tensor([[1000, 2000]]), class_names=("x",),
        ...     boxed_classes=("x",), files=[None])
        >>> boxes_at_size(index, 500).tolist()
        [[50.0, 50.0, 150.0, 100.0]]
    """
    check_is_index(index)
    w, h = check_size2(size, "size", "(W, H)")
    check_positive_sizes(index.image_sizes, "index.image_sizes")
    return scaled_boxes(index, w, h)


def check_is_index(index: object) -> None:
    """Raise :class:`~ccg_layers.CCGDTypeError` unless ``index`` is a :class:`DatasetIndex`."""
    if not isinstance(index, DatasetIndex):
        raise CCGDTypeError(
            f"`index` must be a DatasetIndex (e.g. read_chestxray14's), got {type(index).__name__}."
        )
