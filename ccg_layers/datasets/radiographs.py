"""The PyTorch ``Dataset`` of any :class:`~ccg_layers.datasets.DatasetIndex`.

Samples and batches have the keys of ChestX-ray14's (:class:`~ccg_layers.datasets.ChestXray14Sample`,
batched by :func:`~ccg_layers.datasets.collate_chestxray14`), with ``K`` classes; images are
PNG, JPEG or DICOM (:func:`~ccg_layers.datasets.read_image`), boxes are scaled from each
image's frame to the working size. On a ``ChestXray14Index`` it yields exactly what
:class:`~ccg_layers.datasets.ChestXray14` yields.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ccg_layers.datasets.dicom import read_image
from ccg_layers.datasets.image_files import name_list, repeated_names
from ccg_layers.datasets.index import DatasetIndex, check_is_index, lookup_rows, scaled_boxes
from ccg_layers.datasets.samples import ChestXray14Sample
from ccg_layers.errors import CCGDTypeError, CCGValueRangeError
from ccg_layers.transforms import imagenet_input
from ccg_layers.validation import check_choice, check_flag, positive_int

__all__ = ["ImageOutput", "RadiographDataset"]

#: The forms of a sample's image (see :class:`RadiographDataset`'s ``output``).
ImageOutput = Literal["uint8", "imagenet", "unit"]

_log = logging.getLogger(__name__)


class RadiographDataset(Dataset[ChestXray14Sample]):
    """A map-style ``Dataset`` of the images of a :class:`~ccg_layers.datasets.DatasetIndex`.

    A sample is a :class:`~ccg_layers.datasets.ChestXray14Sample` with ``K`` =
    ``len(index.class_names)``: the image resized to ``image_size`` x ``image_size`` (PNG and
    JPEG as :func:`~ccg_layers.datasets.read_radiograph` reads them, DICOM as
    :func:`~ccg_layers.datasets.read_dicom` decodes it), the ``(K,)`` labels, the image's boxes
    scaled from its frame (``index.image_sizes``) to the working size, their classes,
    ``has_box`` and the name. Batch with :func:`~ccg_layers.datasets.collate_chestxray14`.

    :class:`~ccg_layers.datasets.ChestXray14` is this class on a ChestX-ray14 index; a subclass
    may change how a file is read (``_read_file``), the message naming missing images
    (``_missing_message``) and the logger of its warnings (``_logger``).

    Args:
        index: Any dataset index (ChestX-ray14, VinDr-CXR, RSNA Pneumonia, ...).
        image_names: The images of this dataset (e.g. ``splits["train"]``); default all.
        image_size: The working size ``S``.
        output: ``"uint8"`` ``(1, S, S)`` (default), ``"imagenet"`` or ``"unit"`` ``(3, S, S)``
            float32, as for :class:`~ccg_layers.datasets.ChestXray14`.
        image_root: Where the images are; default where the index found them.
        skip_bad_images: Log and drop missing images instead of raising; an unreadable image
            at load time is replaced by the next readable one.

    Samples are indexed like a list: ``ds[i]``, ``ds.targets(i)`` and ``ds.load_image(i)``
    take an integer ``i`` (a Python or NumPy integer, or a 0-d integer tensor; not a bool) in
    ``[-len(ds), len(ds))``, a negative ``i`` counting from the end. Anything else raises
    ``IndexError`` (out of range, so ``for sample in ds`` stops after the last sample) or
    ``TypeError`` (not an integer), as for a Python sequence.

    Raises:
        ValueError: An index without ``root`` and no ``image_root``.
        CCGDTypeError: ``index`` is not a :class:`~ccg_layers.datasets.DatasetIndex`, or
            ``image_names`` is a string or not iterable.
        CCGValueRangeError: ``image_size`` is not a positive int, ``output`` is not one of the
            three forms, names of ``image_names`` are not in the index or stand twice (names
            the first ones), or ``skip_bad_images`` is not a bool.
        FileNotFoundError: An image of ``image_names`` is not on disk (names the first ones).

    Example:
        >>> import tempfile
        >>> from ccg_layers.datasets import generate_synthetic_chestxray14, read_chestxray14
        >>> root = generate_synthetic_chestxray14(tempfile.mkdtemp(), 4, seed=0, image_size=128)
        >>> ds = RadiographDataset(read_chestxray14(root), image_size=64)
        >>> sample = ds[0]
        >>> sample["image"].shape, sample["labels"].shape, sample["has_box"].dtype
        (torch.Size([1, 64, 64]), torch.Size([14]), torch.bool)
    """

    #: Where missing and unreadable images are reported (``logging.WARNING``).
    _logger: ClassVar[logging.Logger] = _log

    def __init__(
        self,
        index: DatasetIndex,
        image_names: Iterable[str] | None = None,
        *,
        image_size: int = 512,
        output: ImageOutput = "uint8",
        image_root: str | os.PathLike[str] | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        check_is_index(index)
        image_size = positive_int(image_size, "image_size")
        check_choice(output, "output", ImageOutput)
        check_flag(skip_bad_images, "skip_bad_images")
        if isinstance(image_names, str) or not isinstance(image_names, Iterable | None):
            raise CCGDTypeError(
                f"`image_names` must be an iterable of image names (str) or None, got "
                f"{type(image_names).__name__}."
            )
        names = list(index.images) if image_names is None else list(image_names)
        repeated = repeated_names(names)
        if repeated:  # a repeated image would weigh twice in training and evaluation
            raise CCGValueRangeError(
                f"`image_names` must name each image once, got {len(repeated)} more than once: "
                f"{name_list(repeated, quote=True)}."
            )
        rows, unknown = lookup_rows(index, names)
        if unknown:
            raise CCGValueRangeError(
                f"`image_names` must be images of the {index.dataset_name} index, got "
                f"{len(unknown)} that are not: {name_list(unknown, quote=True)}."
            )
        files = index.find_images(image_root)
        self.index = index
        self.image_size = image_size
        self.output = output
        self.skip_bad_images = skip_bad_images
        missing = [n for n in names if n not in files]
        if missing:
            message = self._missing_message(missing, image_root)
            if not skip_bad_images:
                raise FileNotFoundError(message)
            self._logger.warning("skipping: %s", message)
            gone = set(missing)
            keep = [j for j, n in enumerate(names) if n not in gone]
            names, rows = [names[j] for j in keep], [rows[j] for j in keep]
        self.image_names = names
        self.paths = [files[n] for n in names]
        self._rows = torch.tensor(rows, dtype=torch.long)
        # Boxes grouped by index row, scaled from each image's frame to the working size.
        order = torch.argsort(index.box_image_index, stable=True)
        self._box_rows = index.box_image_index[order]
        self._boxes = scaled_boxes(index, image_size, image_size)[order]
        self._box_class = index.box_class[order]
        self._has_box = index.has_box

    def __len__(self) -> int:
        return len(self.image_names)

    def _missing_message(
        self, missing: list[str], image_root: str | os.PathLike[str] | None
    ) -> str:
        """The message naming the images of ``image_names`` that have no file."""
        where = image_root if image_root is not None else self.index.root
        return (
            f"{len(missing)} {self.index.dataset_name} image(s) not found (under {where}): "
            f"{name_list(missing)}"
        )

    def _read_file(self, path: Path) -> Tensor:
        """The ``(1, S, S)`` uint8 image in ``path``, of any kind (:func:`read_image`)."""
        return read_image(path, self.image_size)

    @property
    def rows(self) -> Tensor:
        """``(len(self),)`` long: each sample's row in ``self.index`` (e.g. ``index.labels[rows]``)."""
        return self._rows

    def _sample_index(self, i: object) -> int:
        """``i`` as a position in ``[0, len(self))``, a negative ``i`` counting from the end.

        ``TypeError`` unless ``i`` is an integer (not a bool), ``IndexError`` naming ``i`` and
        the length when it is out of range: Python's sequence protocol, on which iteration
        and ``DataLoader`` rely (a ``ValueError`` would not end ``for sample in ds``).
        """
        n = len(self)
        bad = isinstance(i, (bool, np.bool_)) or (
            isinstance(i, Tensor) and (i.dim() != 0 or i.dtype == torch.bool)
        )
        try:
            j = None if bad else operator.index(i)  # type: ignore[arg-type]
        except TypeError:
            j = None
        if j is None:
            raise TypeError(
                f"{type(self).__name__} sample indices must be integers (not bool), got {i!r} "
                f"({type(i).__name__})."
            )
        if not -n <= j < n:
            raise IndexError(
                f"{type(self).__name__} sample index {j} is out of range for a dataset of {n} "
                f"sample(s) (valid: -{n} to {n - 1})."
                if n
                else f"{type(self).__name__} sample index {j} is out of range: the dataset is empty."
            )
        return j % n

    def load_image(self, i: int) -> Tensor:
        """The image of sample ``i`` in the ``output`` form (``OSError`` naming an unreadable file).

        Raises:
            IndexError: ``i`` is out of range (see the class docstring).
            TypeError: ``i`` is not an integer.
        """
        return self._load_image(self._sample_index(i))

    def _load_image(self, i: int) -> Tensor:
        """Kernel of :meth:`load_image` (``i`` in ``[0, len(self))``)."""
        path = self.paths[i]
        try:
            gray = self._read_file(path)
        except (OSError, ValueError) as err:
            raise OSError(f"cannot read {self.index.dataset_name} image {path}: {err}") from err
        if self.output == "imagenet":
            return imagenet_input(gray)  # the reader's own uint8 (1, S, S)
        if self.output == "unit":
            return (gray.float() / 255.0).expand(3, -1, -1).clone()
        return gray

    def _target_tensors(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        row = int(self._rows[i])
        lo = int(torch.searchsorted(self._box_rows, row, side="left"))
        hi = int(torch.searchsorted(self._box_rows, row, side="right"))
        return (
            self.index.labels[row].clone(),
            self._boxes[lo:hi].clone(),
            self._box_class[lo:hi].clone(),
            self._has_box[row].clone(),
        )

    def targets(self, i: int) -> dict[str, Tensor | str | int]:
        """Everything of sample ``i`` but the image, without opening the image file.

        The keys of :class:`~ccg_layers.datasets.ChestXray14Sample` other than ``image``:
        ``labels``, ``boxes`` (at the working size), ``box_class``, ``has_box``, ``name``,
        ``index``. For pipelines that keep decoded images in memory.

        Raises:
            IndexError: ``i`` is out of range (see the class docstring).
            TypeError: ``i`` is not an integer.
        """
        i = self._sample_index(i)
        labels, boxes, box_class, has_box = self._target_tensors(i)
        return {
            "labels": labels,
            "boxes": boxes,
            "box_class": box_class,
            "has_box": has_box,
            "name": self.image_names[i],
            "index": i,
        }

    def __getitem__(self, i: int) -> ChestXray14Sample:
        """Sample ``i`` (see the class docstring).

        Raises:
            IndexError: ``i`` is out of range (see the class docstring).
            TypeError: ``i`` is not an integer.
        """
        i = self._sample_index(i)
        n = len(self)
        # With skip_bad_images, an unreadable image is replaced by the next readable one
        # (wrapping at the end); the requested ``i`` itself has been checked above.
        for attempt in range(n if self.skip_bad_images else 1):
            j = (i + attempt) % n
            try:
                image = self._load_image(j)
            except OSError:
                if not self.skip_bad_images:
                    raise
                self._logger.warning("skipping unreadable image %s", self.paths[j], exc_info=True)
                continue
            labels, boxes, box_class, has_box = self._target_tensors(j)
            return ChestXray14Sample(
                image=image,
                labels=labels,
                boxes=boxes,
                box_class=box_class,
                has_box=has_box,
                name=self.image_names[j],
                index=j,
            )
        raise OSError("no readable image in the dataset")
