"""The sample and batch layout of every dataset: images, labels and boxes flat.

:class:`~ccg_layers.datasets.ChestXray14` and :class:`~ccg_layers.datasets.RadiographDataset`
yield :class:`ChestXray14Sample`; :func:`collate_chestxray14` batches them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

import torch
from torch import Tensor

from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.validation import check_dtype, check_index, check_tensor

__all__ = ["ChestXray14Batch", "ChestXray14Sample", "collate_chestxray14"]

_TENSORS = ("image", "labels", "has_box", "boxes", "box_class")
_KEYS = (*_TENSORS, "name", "index")


class ChestXray14Sample(TypedDict):
    """One sample of :class:`~ccg_layers.datasets.ChestXray14` (and of any dataset).

    ``image`` (1, S, S) uint8 luminance (``output="uint8"``, the default), or (3, S, S) float32
    ImageNet-normalised (``output="imagenet"``) or in [0, 1] (``output="unit"``); ``labels``
    (K,) float32 (K = 14 on ChestX-ray14); ``boxes`` (b, 4) float32 xyxy in pixels of the
    S x S working image; ``box_class`` (b,) long; ``has_box`` (K,) bool; ``name`` the image
    name; ``index`` the position in the dataset.
    """

    image: Tensor
    labels: Tensor
    boxes: Tensor
    box_class: Tensor
    has_box: Tensor
    name: str
    index: int


class ChestXray14Batch(TypedDict):
    """A batch from :func:`collate_chestxray14`.

    ``image`` (B, 1, S, S) uint8 (or (B, 3, S, S) float32, see :class:`ChestXray14Sample`);
    ``labels`` (B, K); ``has_box`` (B, K) bool; the boxes of all images flat: ``boxes``
    (M, 4), ``box_class`` (M,), ``box_image_index`` (M,) long into the batch (the layout
    :func:`ccg_layers.metrics.localization_accuracy` takes); ``names`` and ``indices`` lists of
    length B.
    """

    image: Tensor
    labels: Tensor
    has_box: Tensor
    boxes: Tensor
    box_class: Tensor
    box_image_index: Tensor
    names: list[str]
    indices: list[int]


def collate_chestxray14(samples: Sequence[ChestXray14Sample]) -> ChestXray14Batch:
    """Batch samples with varying numbers of boxes: images stacked, boxes concatenated flat.

    Raises:
        CCGDTypeError: ``samples`` is not a sequence of dicts, a value of a sample's tensor
            keys is not a tensor, or a ``box_class`` is not an integer tensor.
        CCGValueRangeError: ``samples`` is empty, a sample lacks a key of
            :class:`ChestXray14Sample`, or (a value check) a ``box_class`` is outside
            ``[0, K)``, ``K`` the length of the labels.
        CCGShapeError: A sample's ``boxes`` is not ``(b, 4)`` or its ``box_class`` not
            ``(b,)``, or its ``image``, ``labels`` or ``has_box`` differs in shape from the
            first sample's.

    Example:
        >>> import torch
        >>> s = dict(image=torch.zeros(3, 8, 8), labels=torch.zeros(14), has_box=torch.zeros(14,
        ...          dtype=torch.bool), box_class=torch.tensor([1]), name="a.png", index=0,
        ...          boxes=torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
        >>> t = dict(s, boxes=torch.zeros(0, 4), box_class=torch.zeros(0, dtype=torch.long))
        >>> batch = collate_chestxray14([t, s])
        >>> batch["image"].shape, batch["box_image_index"].tolist()
        (torch.Size([2, 3, 8, 8]), [1])
    """
    if isinstance(samples, (str, Mapping)) or not isinstance(samples, Sequence):
        raise CCGDTypeError(
            f"`samples` must be a list of sample dicts, got {type(samples).__name__}."
        )
    if not samples:
        raise CCGValueRangeError("`samples` must hold at least one sample, got an empty sequence.")
    first: dict[str, tuple[int, ...]] = {}
    for i, sample in enumerate(samples):  # one step per sample: shapes and lengths only
        where = f"samples[{i}]"
        if not isinstance(sample, Mapping):
            raise CCGDTypeError(f"`{where}` must be a sample dict, got {type(sample).__name__}.")
        fields: Mapping[str, object] = sample
        missing = [k for k in _KEYS if k not in fields]
        if missing:
            raise CCGValueRangeError(
                f"`{where}` must have the keys {', '.join(_KEYS)}, got one without "
                f"{', '.join(missing)}."
            )
        shapes = {k: tuple(check_tensor(fields[k], f"{where}['{k}']").shape) for k in _TENSORS}
        check_dtype(fields["box_class"], f"{where}['box_class']", ("int",))  # type: ignore[arg-type]
        b = shapes["boxes"]
        if len(b) != 2 or b[1] != 4:
            raise CCGShapeError(f"`{where}['boxes']` must have shape (b, 4), got {b}.")
        if shapes["box_class"] != b[:1]:
            raise CCGShapeError(
                f"`{where}['box_class']` must have shape ({b[0]},), one class per box, got "
                f"{shapes['box_class']}."
            )
        first = first or shapes
        for k in ("image", "labels", "has_box"):
            if shapes[k] != first[k]:
                raise CCGShapeError(
                    f"`{where}['{k}']` must have the shape of samples[0]['{k}'], {first[k]}, "
                    f"got {shapes[k]}."
                )
    counts = torch.tensor([len(s["boxes"]) for s in samples], dtype=torch.long)
    labels = torch.stack([s["labels"] for s in samples])
    box_class = torch.cat([s["box_class"].reshape(-1) for s in samples])
    # a class index past the labels' K would be a box of no class (a value check, on the CPU)
    check_index(box_class, "samples[...]['box_class']", int(labels.shape[-1]))
    return ChestXray14Batch(
        image=torch.stack([s["image"] for s in samples]),
        labels=labels,
        has_box=torch.stack([s["has_box"] for s in samples]),
        boxes=torch.cat([s["boxes"].reshape(-1, 4) for s in samples]),
        box_class=box_class,
        box_image_index=torch.repeat_interleave(torch.arange(len(samples)), counts),
        names=[s["name"] for s in samples],
        indices=[s["index"] for s in samples],
    )
