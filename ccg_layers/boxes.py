"""Boxes in and out: box targets for the MIL grid loss and boxes from probability maps.

Boxes are ``(x1, y1, x2, y2)`` in pixels of an image of ``image_size = (H, W)``. A batch of
boxes uses the *flat layout* of :class:`ccg_layers.datasets.ChestXray14` and
:func:`ccg_layers.metrics.localization_accuracy`: ``boxes`` ``(M, 4)``, ``box_image_index``
``(M,)`` (the image of each box in the batch) and ``box_class`` ``(M,)`` (its class).

A box reaching past the image is clipped to it (only the part inside counts); a box lying
wholly outside the image raises :class:`~ccg_layers.errors.CCGValueRangeError`: it is almost
always a box in another frame, such as ChestX-ray14's 1024-pixel frame given with the size of a
downscaled image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ccg_layers.config import values_checkable
from ccg_layers.errors import CCGDTypeError, CCGValueRangeError
from ccg_layers.validation import (
    check_dtype,
    check_finite,
    check_grid,
    check_index,
    check_probabilities,
    check_shape,
    check_size2,
    check_tensor,
    positive_int,
    real_number,
)

__all__ = ["boxes_to_grid", "boxes_to_grid_targets", "maps_to_boxes", "xywh_to_xyxy"]

#: The frame of ChestX-ray14's ``BBox_List_2017.csv`` (the original image side in pixels).
_NIH_FRAME = 1024


def _fmt_box(box: list[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def check_boxes(boxes: Tensor, name: str, image_size: tuple[int, int] | None) -> None:
    """Value checks of ``(M, 4)`` xyxy boxes: finite, ``x1 <= x2``, ``y1 <= y2``, in the image.

    Skipped with value checks off (see :func:`ccg_layers.set_value_checks`). A box that only
    reaches past the image is accepted (it is clipped where it is used); one that lies wholly
    outside ``[0, W] x [0, H]`` raises (for a box of positive area: one whose overlap with the
    image has zero area).

    Raises:
        CCGValueRangeError: Naming ``name`` (and ``image_size`` for a box outside the image).
    """
    if not values_checkable() or boxes.numel() == 0:
        return
    check_finite(boxes.float(), name)
    inverted = _inverted(boxes)
    if bool(inverted.any()):
        m = int(inverted.nonzero()[0, 0])
        raise CCGValueRangeError(
            f"`{name}` must be (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, got box {m} "
            f"{_fmt_box(boxes[m].tolist())}."
        )
    if image_size is None:
        return
    H, W = image_size
    outside = boxes_outside(boxes, H, W)
    if bool(outside.any()):
        m = int(outside.nonzero()[0, 0])
        hint = ""
        if max(H, W) < _NIH_FRAME:
            hint = (
                f" ChestX-ray14's boxes are in the {_NIH_FRAME}-pixel frame of the original "
                f"images: scale them by {max(H, W)}/{_NIH_FRAME} for an image of {image_size}"
                " (the ChestXray14 dataset yields them scaled), or pass that frame's size."
            )
        raise CCGValueRangeError(
            f"`{name}` must overlap the image of `image_size`={tuple(image_size)} (H, W) "
            f"(boxes reaching past it are clipped), got box {m} {_fmt_box(boxes[m].tolist())}, "
            f"which lies wholly outside it ({int(outside.sum())} such box(es)).{hint}"
        )


def _inverted(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x2 < x1) | (y2 < y1)


def boxes_outside(boxes: Tensor, height: Tensor | int, width: Tensor | int) -> Tensor:
    """``(M,)`` bool: the xyxy ``boxes`` that lie wholly outside ``[0, W] x [0, H]``.

    Such a box has no point in the closed frame or, if it has a positive area, no overlap of
    positive area with it. ``height`` and ``width`` are one frame, or ``(M,)`` tensors giving
    each box its own; no value is read on the host.

    Example:
        >>> boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [100.0, 5.0, 120.0, 9.0]])
        >>> boxes_outside(boxes, 64, 64)
        tensor([False,  True])
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    positive = (x2 > x1) & (y2 > y1)
    off = (x1 >= width) | (y1 >= height) | (x2 <= 0) | (y2 <= 0)
    return (x1 > width) | (y1 > height) | (x2 < 0) | (y2 < 0) | (positive & off)


def rejected_boxes(boxes: Tensor, height: Tensor | int, width: Tensor | int) -> Tensor:
    """``(M,)`` bool: the boxes :func:`check_boxes` rejects for their frame (value checks on).

    Non-finite, inverted (``x2 < x1`` or ``y2 < y1``), or wholly outside the frame
    (:func:`boxes_outside`; one frame, or an ``(M,)`` height and width per box): one pass over
    every box, for a caller that names each bad one rather than stopping at the first.

    Example:
        >>> boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [30.0, 5.0, 20.0, 9.0]])
        >>> rejected_boxes(boxes, torch.tensor([64, 64]), torch.tensor([64, 8]))
        tensor([False,  True])
    """
    finite = boxes.isfinite().all(dim=-1)
    return ~finite | _inverted(boxes) | boxes_outside(boxes, height, width)


# --------------------------------------------------------------------------- kernels


def _grid_cells(boxes: Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]) -> Tensor:
    """``(M, h, w)`` bool: cells whose intersection with the box has positive area."""
    (H, W), (h, w) = image_size, grid_size
    # float64 (where the device has it): x * w of a float32 coordinate within an ulp of a cell
    # border rounds onto the border in float32 and loses a sliver of positive overlap.
    wide = torch.float32 if boxes.device.type == "mps" else torch.float64
    b = boxes.to(torch.promote_types(boxes.dtype, wide))
    # Compare in units of cells (c * W / w == x  <=>  c * W == x * w), exact for integer pixels.
    cols = torch.arange(w, device=b.device, dtype=b.dtype) * W
    rows = torch.arange(h, device=b.device, dtype=b.dtype) * H
    x1, y1, x2, y2 = (b[:, i : i + 1] for i in range(4))
    in_x = (x1 * w < cols + W) & (x2 * w > cols) & (x2 > x1)  # (M, w)
    in_y = (y1 * h < rows + H) & (y2 * h > rows) & (y2 > y1)  # (M, h)
    return in_y[:, :, None] & in_x[:, None, :]


def _cell_edges(cells: Tensor, n_cells: int, n_pixels: int) -> Tensor:
    """Pixel edge where cell ``c`` starts: the first pixel the metric maps to a cell ``>= c``.

    :func:`ccg_layers.metrics.localization_accuracy` gives pixel ``j`` of ``N`` the cell
    ``floor((j + 1/2) n / N)`` of ``n`` through ``F.interpolate(mode="nearest-exact")``, which
    computes it in floating point: where ``(j + 1/2) n / N`` is an integer, rounding can put the
    pixel in the cell below. The edges are read off that very interpolation of the cell indices,
    so a box covers exactly the pixels the metric gives its cells (``c N / n`` when ``n``
    divides ``N``).
    """
    index = torch.arange(n_cells, dtype=torch.float32, device=cells.device)
    src = F.interpolate(index.view(1, 1, n_cells, 1), size=(n_pixels, 1), mode="nearest-exact")
    return torch.searchsorted(src.view(-1).contiguous(), cells.to(torch.float32), right=False)


# --------------------------------------------------------------------------- public


def boxes_to_grid(
    boxes: Tensor, image_size: int | tuple[int, int], grid_size: int | tuple[int, int]
) -> Tensor:
    """Rasterise boxes onto a coarse grid: which cells a box overlaps with positive area.

    The image of ``image_size = (H, W)`` pixels is cut into ``grid_size = (h, w)`` equal
    cells; cell ``(r, c)`` covers ``[c W/w, (c+1) W/w] x [r H/h, (r+1) H/h]``. A cell is
    marked when its intersection with the box has positive area, so a box edge lying exactly
    on a cell border does not mark the neighbouring cell, and a box of zero area marks none.
    A box reaching past the image is clipped to it; one wholly outside the image is an error.

    Args:
        boxes: ``(M, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels, ``x1 <= x2``, ``y1 <= y2``.
        image_size: ``(H, W)`` of the image the boxes live in (an int for a square).
        grid_size: ``(h, w)`` of the grid (an int for a square).

    Returns:
        ``(M, h, w)`` bool.

    Raises:
        CCGShapeError: ``boxes`` not ``(M, 4)``.
        CCGValueRangeError: Non-finite or inverted boxes, a box wholly outside the image, bad
            sizes.

    Example:
        >>> import torch
        >>> boxes_to_grid(torch.tensor([[0.0, 0.0, 256.0, 300.0]]), 512, (4, 4)).int()
        tensor([[[1, 1, 0, 0],
                 [1, 1, 0, 0],
                 [1, 1, 0, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    check_tensor(boxes, "boxes")
    check_shape(boxes, "boxes", ("M", 4))
    check_dtype(boxes, "boxes", ("float", "int"))
    size = check_size2(image_size, "image_size")
    grid = check_size2(grid_size, "grid_size")
    check_boxes(boxes, "boxes", size)
    return _grid_cells(boxes, size, grid)


def boxes_to_grid_targets(
    boxes: Tensor,
    box_image_index: Tensor,
    box_class: Tensor,
    *,
    num_images: int,
    num_classes: int,
    image_size: int | tuple[int, int],
    grid_size: int | tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Grid targets and box mask of :func:`mil_grid_loss` from boxes in the flat layout.

    ``grid[i, k]`` is the union over the boxes of class ``k`` of image ``i`` of
    :func:`boxes_to_grid` (the cells each box overlaps with positive area); ``box_mask[i, k]``
    is true where that union marks at least one cell. A box of zero area therefore marks no
    cell and sets no mask: the class then falls back to its image label in the loss. One
    scatter over all boxes, no loop.

    Args:
        boxes: ``(M, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels of an image of ``image_size``.
        box_image_index: ``(M,)`` integer, the image of each box in ``[0, num_images)``.
        box_class: ``(M,)`` integer, the class of each box in ``[0, num_classes)``.
        num_images: ``N``, the batch size.
        num_classes: ``K``.
        image_size: ``(H, W)`` of the image the boxes live in (an int for a square).
        grid_size: ``(h, w)`` of the logits' grid (an int for a square).

    Returns:
        ``(grid, box_mask)``: ``(N, K, h, w)`` float32 in ``{0, 1}`` and ``(N, K)`` bool, on
        ``boxes.device``.

    Raises:
        CCGShapeError: Mismatched ``M`` or ``boxes`` not ``(M, 4)``.
        CCGDTypeError: Non-integer indices.
        CCGValueRangeError: Indices out of range, non-finite, inverted or outside boxes, bad
            sizes or counts.

    Example:
        >>> import torch
        >>> boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [64.0, 64.0, 128.0, 128.0]])
        >>> grid, box_mask = boxes_to_grid_targets(
        ...     boxes, torch.tensor([1, 1]), torch.tensor([0, 0]),
        ...     num_images=2, num_classes=3, image_size=128, grid_size=2)
        >>> grid[1, 0]
        tensor([[1., 0.],
                [0., 1.]])
        >>> box_mask
        tensor([[False, False, False],
                [ True, False, False]])
    """
    check_tensor(boxes, "boxes")
    check_tensor(box_image_index, "box_image_index")
    check_tensor(box_class, "box_class")
    check_dtype(boxes, "boxes", ("float", "int"))
    dims = check_shape(boxes, "boxes", ("M", 4))
    check_shape(box_image_index, "box_image_index", ("M",), dims)
    check_shape(box_class, "box_class", ("M",), dims)
    num_images = positive_int(num_images, "num_images", allow_zero=True)
    num_classes = positive_int(num_classes, "num_classes")
    size = check_size2(image_size, "image_size")
    grid_hw = check_size2(grid_size, "grid_size")
    check_index(box_image_index, "box_image_index", num_images)
    check_index(box_class, "box_class", num_classes)
    check_boxes(boxes, "boxes", size)
    return _boxes_to_grid_targets(
        boxes, box_image_index, box_class, num_images, num_classes, size, grid_hw
    )


def _boxes_to_grid_targets(
    boxes: Tensor,
    box_image_index: Tensor,
    box_class: Tensor,
    num_images: int,
    num_classes: int,
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    h, w = grid_size
    cells = _grid_cells(boxes, image_size, grid_size).to(torch.float32)  # (M, h, w)
    pair = box_image_index.to(boxes.device).long() * num_classes + box_class.to(boxes.device)
    grid = torch.zeros(num_images * num_classes, h, w, dtype=torch.float32, device=boxes.device)
    grid.index_add_(0, pair.long(), cells)  # counts of boxes per cell: exact small integers
    grid = grid.clamp_(max=1.0).view(num_images, num_classes, h, w)
    return grid, grid.flatten(2).amax(-1) > 0


def maps_to_boxes(
    maps: Tensor,
    *,
    threshold: float = 0.5,
    image_size: int | tuple[int, int] | None = None,
    min_area: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Boxes around the connected regions of probability maps above a threshold (Figure 4).

    The region of class ``k`` in image ``i`` is the set of cells with
    ``maps[i, k] > threshold``, the region :func:`ccg_layers.metrics.localization_accuracy`
    evaluates with ``prob_threshold=threshold`` (and ``interpolation="nearest"``). Each
    8-connected component of it gives one box: the bounding box of the image pixels the
    component covers, pixel ``j`` of ``W_img`` belonging to cell ``floor((j + 1/2) w / W_img)``
    of ``w`` as the metric's ``nearest-exact`` interpolation computes it (in floating point;
    cell ``c`` spans ``[c W_img / w, (c+1) W_img / w)`` when ``w`` divides ``W_img``). So a rectangular region gives back
    exactly its pixels, and the metric scores the box against the map as IoU 1.

    The score of a box is the **maximum** probability inside its region (the peak of the
    lesion, as in the paper's heat maps); boxes are ordered by image, class, then by the
    raster position (top row first, then leftmost cell) of their region.

    Note:
        Connected components are labelled by :func:`skimage.measure.label` on the CPU (the
        boolean masks make one round trip, and the number of boxes is only known there, so
        the call synchronises with the device); everything else runs on ``maps.device`` and
        the results are returned there. For inference and plotting, not for a training step.

    Args:
        maps: ``(N, K, H, W)`` class-wise probability maps (e.g. ``logits.sigmoid()``).
        threshold: A cell is in a region when its probability is **strictly** greater; a
            probability in ``[0, 1)``.
        image_size: ``(H_img, W_img)`` of the frame the boxes are returned in (an int for a
            square), e.g. the input image size or ChestX-ray14's 1024-pixel frame; ``None``
            for the map's own grid, i.e. boxes in cell units.
        min_area: Drop regions of fewer than this many cells of the map (a non-negative int).

    Returns:
        ``(boxes, box_image_index, box_class, scores)`` in the flat layout: ``(M, 4)`` float32
        ``(x1, y1, x2, y2)``, ``(M,)`` int64, ``(M,)`` int64, ``(M,)`` in ``maps.dtype``.

    Raises:
        CCGShapeError: ``maps`` not 4-D, or an empty map (``H`` or ``W`` zero).
        CCGDTypeError: Non-float ``maps``.
        CCGValueRangeError: Non-finite ``maps`` or values outside ``[0, 1]`` (value checks),
            ``threshold`` not a number in ``[0, 1)``, bad ``image_size`` or ``min_area``.

    Example:
        >>> import torch
        >>> maps = torch.zeros(1, 2, 4, 4)
        >>> maps[0, 1, 1:3, 0:2] = torch.tensor([[0.7, 0.9], [0.6, 0.8]])
        >>> maps[0, 1, 0, 3] = 0.55
        >>> boxes, image, cls, scores = maps_to_boxes(maps, image_size=512)
        >>> boxes
        tensor([[384.,   0., 512., 128.],
                [  0., 128., 256., 384.]])
        >>> image, cls, scores
        (tensor([0, 0]), tensor([1, 1]), tensor([0.5500, 0.9000]))
    """
    check_tensor(maps, "maps")
    check_dtype(maps, "maps", ("float",))
    check_shape(maps, "maps", ("N", "K", "H", "W"))
    check_grid(maps, "maps")
    # probabilities: no cell exceeds a threshold of 1 (no box), every one a negative threshold
    threshold = real_number(
        threshold, "threshold", low=0.0, high=1.0, high_open=True, what="a probability in [0, 1)"
    )
    min_area = positive_int(min_area, "min_area", allow_zero=True)
    H, W = maps.shape[-2:]
    frame = (H, W) if image_size is None else check_size2(image_size, "image_size")
    check_probabilities(maps, "maps")  # logits passed by mistake would give plausible boxes
    return _maps_to_boxes(maps, threshold, frame, min_area)


def _maps_to_boxes(
    maps: Tensor, threshold: float, frame: tuple[int, int], min_area: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from skimage.measure import label as label_components

    N, K, H, W = maps.shape
    device = maps.device
    # One labelling call for the whole batch: the N*K masks stacked vertically, each followed
    # by an empty row so that no component (not even diagonally) joins two masks.
    mask = F.pad((maps > threshold).reshape(N * K, H, W), (0, 0, 0, 1))
    stacked = mask.reshape(N * K * (H + 1), W).cpu().numpy()
    labels_np, count = label_components(  # type: ignore[no-untyped-call]
        stacked, connectivity=2, return_num=True
    )
    labels = torch.from_numpy(labels_np).to(device=device, dtype=torch.long)
    labels = labels.view(N * K, H + 1, W)[:, :H].reshape(-1)  # 0: background, 1..count
    slots = count + 1

    def reduce(values: Tensor, how: str, init: float) -> Tensor:
        out = torch.full((slots,), init, dtype=values.dtype, device=device)
        return out.scatter_reduce(0, labels, values.reshape(-1), how)[1:]

    grid = torch.arange(N * K * H * W, device=device)
    col = grid % W
    row = (grid // W) % H
    pair = grid // (H * W)
    c0, c1 = reduce(col, "amin", W), reduce(col, "amax", -1)
    r0, r1 = reduce(row, "amin", H), reduce(row, "amax", -1)
    region_pair = reduce(pair, "amin", N * K)
    scores = reduce(maps.detach(), "amax", float("-inf"))
    area = torch.bincount(labels, minlength=slots)[1:]
    keep = area >= max(min_area, 1)
    H_img, W_img = frame
    boxes = torch.stack(
        [
            _cell_edges(c0, W, W_img),
            _cell_edges(r0, H, H_img),
            _cell_edges(c1 + 1, W, W_img),
            _cell_edges(r1 + 1, H, H_img),
        ],
        dim=-1,
    ).to(torch.float32)
    return boxes[keep], (region_pair // K)[keep], (region_pair % K)[keep], scores[keep]


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``(..., 4)`` boxes from ``(x, y, width, height)`` to ``(x1, y1, x2, y2)``.

    Args:
        boxes: ``(..., 4)`` boxes of a floating dtype, or int32 / int64 (a narrower integer
            dtype would overflow in ``x + width``).

    Returns:
        ``(..., 4)`` boxes of the same dtype.

    Raises:
        CCGShapeError: Last dimension not 4.
        CCGDTypeError: Not a tensor, or a dtype other than floating, int32 or int64.
        CCGValueRangeError: Non-finite values, a negative width or height (value checks: see
            :func:`ccg_layers.set_value_checks`).

    Example:
        >>> import torch
        >>> xywh_to_xyxy(torch.tensor([[10.0, 20.0, 5.0, 8.0]]))
        tensor([[10., 20., 15., 28.]])
    """
    check_tensor(boxes, "boxes")
    if not (boxes.dtype.is_floating_point or boxes.dtype in (torch.int32, torch.int64)):
        raise CCGDTypeError(
            "`boxes` must have a float, int32 or int64 dtype (a narrower integer dtype "
            f"overflows in x + width), got {boxes.dtype}."
        )
    check_shape(boxes, "boxes", (4,), leading=True)
    check_finite(boxes, "boxes")
    xy, wh = boxes[..., :2], boxes[..., 2:]
    if values_checkable() and boxes.numel() and bool((wh < 0).any()):
        flat = boxes.reshape(-1, 4)
        m = int((flat[:, 2:] < 0).any(-1).nonzero()[0, 0])
        raise CCGValueRangeError(
            "`boxes` must be (x, y, width, height) with width >= 0 and height >= 0, got box "
            f"{m} {_fmt_box(flat[m].tolist())}."
        )
    return torch.cat([xy, xy + wh], dim=-1)
