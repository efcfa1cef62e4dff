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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from ccg_layers.datasets.image_files import IMAGE_SUFFIXES, scan_image_folder

__all__ = ["DatasetIndex", "IndexRows", "RadiographIndex", "boxes_at_size"]


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


class IndexRows:
    """The row look-ups every index shares: ``len``, :meth:`position`, ``has_box``, ``annotated``.

    A base of the frozen dataclasses :class:`RadiographIndex` and
    :class:`~ccg_layers.datasets.ChestXray14Index`, which hold the fields read here and fill
    ``_positions`` (image name -> row) in their ``__post_init__``.
    """

    images: list[str]
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
        n, k = len(self.images), len(self.class_names)
        checks = {
            "labels": (tuple(self.labels.shape), (n, k)),
            "patient_ids": (tuple(self.patient_ids.shape), (n,)),
            "image_sizes": (tuple(self.image_sizes.shape), (n, 2)),
            "files": ((len(self.files),), (n,)),
            "box_image_index": (tuple(self.box_image_index.shape), (len(self.boxes),)),
            "box_class": (tuple(self.box_class.shape), (len(self.boxes),)),
        }
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"`{name}` must have shape {want}, got {got}")
        self._positions.update({name: i for i, name in enumerate(self.images)})
        if len(self._positions) != n:
            raise ValueError(f"`images` must be unique; {n - len(self._positions)} repeated")

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


def boxes_at_size(index: DatasetIndex, size: int | tuple[int, int]) -> Tensor:
    """``(M, 4)`` float32: every box of ``index`` scaled to a working image of ``size``.

    ``size`` is ``S`` (square) or ``(W, H)``; each box is scaled from its image's frame
    (``index.image_sizes``), as :class:`~ccg_layers.datasets.RadiographDataset` scales them.

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
    w, h = (size, size) if isinstance(size, int) else size
    frame = index.image_sizes[index.box_image_index].to(torch.float32)  # (M, 2) (W, H)
    scale = torch.stack([w / frame[:, 0], h / frame[:, 1], w / frame[:, 0], h / frame[:, 1]], dim=1)
    return (index.boxes * scale).to(torch.float32)
