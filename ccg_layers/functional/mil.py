"""Multiple-instance grid loss of the CCG end-to-end framework (paper Sec. 3.2, Eq. 1-3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ccg_layers._validation import (
    Reduction,
    check_binary,
    check_dtype,
    check_finite,
    check_positive,
    check_reduction,
    check_shape,
    check_tensor,
    reduce,
    values_checkable,
)
from ccg_layers.errors import CCGShapeError, CCGValueRangeError

__all__ = ["boxes_to_grid", "log_noisy_or", "mil_grid_loss", "xywh_to_xyxy"]

_LN2 = math.log(2.0)
_SMALL_S = 1e-3


def _log_softplus(z: Tensor) -> Tensor:
    """``log(softplus(z))``, exact to float precision for every finite ``z``."""
    # softplus(z) = e^z (1 - e^z / 2 + ...) for z << 0, so log softplus(z) = z - e^z / 2 + O(e^2z).
    z_low = z.clamp(max=-20.0)
    z_high = z.clamp(min=-20.0)
    return torch.where(z < -20.0, z_low - 0.5 * torch.exp(z_low), torch.log(F.softplus(z_high)))


def _log_neg_log1p_neg(log_a: Tensor) -> Tensor:
    """``log(-log1p(-a))`` from ``log a`` for ``a`` in ``(0, 0.5]``, without underflow.

    Only used where the sum it enters is small, so every ``a`` is small there; ``a`` is clamped
    to ``0.5`` elsewhere to keep the unused branch (and its gradient) finite.
    """
    a = torch.exp(log_a)
    a_safe = a.clamp(min=1e-4, max=0.5)
    # -log1p(-a) = a (1 + a/2 + a^2/3 + ...): the log of the bracket is a/2 + O(a^2) for small a.
    correction = torch.where(
        a < 1e-4, 0.5 * a + (5.0 / 24.0) * a * a, torch.log(-torch.log1p(-a_safe) / a_safe)
    )
    return log_a + correction


def _log1mexp_neg(s: Tensor, log_s: Tensor) -> Tensor:
    """``log(1 - exp(-s))`` for ``s >= 0`` given also ``log s`` (so tiny ``s`` never underflows)."""
    # (1 - e^-s) / s = 1 - s/2 + s^2/6 - ...,  whose log is -s/2 + s^2/24 + O(s^4).
    small = log_s - 0.5 * s + s * s / 24.0
    s_mid = s.clamp(min=_SMALL_S)
    mid = torch.log(-torch.expm1(-s_mid))
    s_big = s.clamp(min=_LN2)
    big = torch.log1p(-torch.exp(-s_big))
    return torch.where(s < _SMALL_S, small, torch.where(s < _LN2, mid, big))


def log_noisy_or(logits: Tensor, *, noisy_or_floor: float | None = None) -> tuple[Tensor, Tensor]:
    """Log-probabilities of the noisy-OR of per-cell probabilities (paper Eq. 2).

    With ``p_j = sigmoid(logits_j)`` over the last two (grid) dimensions, the image is positive
    with probability ``1 - prod_j (1 - p_j)``. Both logs are computed from the logits without
    forming a product of probabilities or the log of a probability, so they stay finite for
    logits in ``[-100, 100]`` on large grids.

    Args:
        logits: ``(..., H, W)`` scores before the sigmoid.
        noisy_or_floor: If given (Li et al. 2018 use ``0.98``), every ``1 - p_j`` is rescaled
            from ``[0, 1]`` into ``[noisy_or_floor, 1]`` before the product, i.e.
            ``1 - p_j`` becomes ``1 - (1 - noisy_or_floor) p_j``.

    Returns:
        ``(log_pos, log_neg)``, each ``(...)``: ``log P(positive)`` and ``log P(negative)``.

    Example:
        >>> import torch
        >>> log_pos, log_neg = log_noisy_or(torch.zeros(1, 2, 2))  # four cells at p = 0.5
        >>> float(log_neg.exp()), float(log_pos.exp())
        (0.0625, 0.9375)
    """
    z = logits.flatten(-2)
    if not noisy_or_floor:
        # -log(1 - p_j) = softplus(z_j);  s = -log P(negative) = sum_j softplus(z_j)
        s = F.softplus(z).sum(-1)
        log_s = torch.logsumexp(_log_softplus(z), dim=-1)
    else:
        # 1 - (1 - f) p_j = (1 + f e^z) / (1 + e^z):  -log of it = softplus(z) - softplus(z + log f)
        s = (F.softplus(z) - F.softplus(z + math.log(noisy_or_floor))).sum(-1)
        log_a = math.log1p(-noisy_or_floor) + F.logsigmoid(z)  # a_j = (1 - f) p_j
        log_s = torch.logsumexp(_log_neg_log1p_neg(log_a), dim=-1)
    return _log1mexp_neg(s, log_s), -s


def mil_grid_loss(
    logits: Tensor,
    labels: Tensor,
    grid_targets: Tensor | None = None,
    box_mask: Tensor | None = None,
    *,
    box_weight: float = 4.0,
    reduction: Reduction = "mean",
    noisy_or_floor: float | None = None,
) -> Tensor:
    r"""Multiple-instance grid loss ``L_base`` of the CCG framework (paper Eq. 1-3).

    For image ``i`` and class ``k`` with grid probabilities ``p_j = sigmoid(logits[i, k, j])``:

    * where ``box_mask[i, k]`` (the paper's :math:`\lambda = 1`): Eq. 1, the binary
      cross-entropy against ``grid_targets[i, k]`` **summed** over the ``H*W`` cells, times
      ``box_weight`` (:math:`\beta_B`);
    * elsewhere: Eq. 2, the noisy-OR loss on the image label ``y = labels[i, k]``:
      ``-y log(1 - prod_j (1 - p_j)) - (1 - y) log prod_j (1 - p_j)``.

    Everything is computed in log space from the logits (float32 at least, also under
    float16/bfloat16 autocast), so values and gradients are finite for logits in
    ``[-100, 100]``.

    Args:
        logits: ``(N, K, H, W)`` class-wise grid scores before the sigmoid.
        labels: ``(N, K)`` image-level labels in ``{0, 1}`` (float, int or bool).
        grid_targets: ``(N, K, H, W)`` per-cell targets in ``{0, 1}`` where a box exists,
            e.g. from :func:`boxes_to_grid`. Required when ``box_mask`` is given.
        box_mask: ``(N, K)`` bool, true where class ``k`` of image ``i`` has a box. A marked
            class must have label 1. ``None`` means no boxes (pure multiple-instance loss).
        box_weight: :math:`\beta_B`, the weight of the box term (paper: 4).
        reduction: ``"none"`` returns the ``(N, K)`` weighted per-image, per-class terms,
            ``"sum"`` is Eq. 3 exactly, ``"mean"`` is that sum divided by ``N*K``.
        noisy_or_floor: ``None`` (default) for the paper's noisy-OR; ``0.98`` reproduces
            Li et al. 2018, who rescale every ``1 - p_j`` into ``[0.98, 1]`` so that the
            product over many cells does not vanish. See :func:`log_noisy_or`.

    Returns:
        The loss: a scalar, or ``(N, K)`` for ``reduction="none"``; float32 at least.

    Raises:
        CCGShapeError: Wrong rank or mismatched ``N``, ``K``, ``H``, ``W``.
        CCGValueRangeError: Labels or targets outside ``{0, 1}``, a box on a class whose label
            is 0, non-finite logits, a bad ``reduction``, ``box_weight`` or ``noisy_or_floor``.
        CCGInputError: ``box_mask`` given without ``grid_targets`` or the other way round.

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
        >>> box_mask = torch.zeros(2, 3, dtype=torch.bool)
        >>> box_mask[0, 2] = True
        >>> grid = torch.zeros(2, 3, 4, 4)
        >>> grid[0, 2, :2, :2] = 1
        >>> mil_grid_loss(logits, labels, grid, box_mask, reduction="none").shape
        torch.Size([2, 3])
        >>> round(float(mil_grid_loss(logits, labels)), 4)  # no boxes: noisy-OR everywhere
        5.5452
    """
    reduction = check_reduction(reduction)
    check_tensor(logits, "logits")
    check_tensor(labels, "labels")
    check_dtype(logits, "logits", ("float",))
    dims = check_shape(logits, "logits", ("N", "K", "H", "W"))
    check_shape(labels, "labels", ("N", "K"), dims)
    check_dtype(labels, "labels", ("float", "int", "bool"))
    check_positive(box_weight, "box_weight", allow_zero=True)
    if noisy_or_floor is not None and not 0.0 <= noisy_or_floor < 1.0:
        raise CCGValueRangeError(
            f"`noisy_or_floor` must be None or in [0, 1), got {noisy_or_floor}."
        )
    if (grid_targets is None) != (box_mask is None):
        given, missing = (
            ("box_mask", "grid_targets")
            if grid_targets is None
            else (
                "grid_targets",
                "box_mask",
            )
        )
        raise CCGShapeError(
            f"`{missing}` is required when `{given}` is given: pass both (boxes) or neither "
            f"(image labels only), got `{given}` alone."
        )
    check_finite(logits, "logits")
    check_binary(labels, "labels")

    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.to(compute_dtype)
        y = labels.to(compute_dtype)
        log_pos, log_neg = log_noisy_or(z, noisy_or_floor=noisy_or_floor)
        terms = -(y * log_pos + (1.0 - y) * log_neg)
        if grid_targets is not None and box_mask is not None:
            check_tensor(grid_targets, "grid_targets")
            check_tensor(box_mask, "box_mask")
            check_shape(grid_targets, "grid_targets", ("N", "K", "H", "W"), dims)
            check_shape(box_mask, "box_mask", ("N", "K"), dims)
            check_dtype(grid_targets, "grid_targets", ("float", "int", "bool"))
            check_dtype(box_mask, "box_mask", ("bool",))
            check_binary(grid_targets, "grid_targets")
            if values_checkable() and bool((box_mask & (y == 0)).any()):
                i, k = (int(v) for v in torch.nonzero(box_mask & (y == 0))[0])
                raise CCGValueRangeError(
                    "`box_mask` marks a box on a class whose label is 0: image "
                    f"{i}, class {k} has box_mask=True but labels[{i}, {k}]=0."
                )
            t = grid_targets.to(compute_dtype)
            bce = F.binary_cross_entropy_with_logits(z, t, reduction="none").sum((-2, -1))
            terms = torch.where(box_mask, box_weight * bce, terms)
    return reduce(terms, reduction)


def boxes_to_grid(boxes: Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]) -> Tensor:
    """Rasterise boxes onto a coarse grid: which cells a box overlaps with positive area.

    The image of ``image_size = (H, W)`` pixels is cut into ``grid_size = (h, w)`` equal
    cells; cell ``(r, c)`` covers ``[c W/w, (c+1) W/w] x [r H/h, (r+1) H/h]``. A cell is
    marked when its intersection with the box has positive area, so a box edge lying exactly
    on a cell border does not mark the neighbouring cell, and a box of zero area marks none.

    Args:
        boxes: ``(M, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels, ``x1 <= x2``, ``y1 <= y2``.
        image_size: ``(H, W)`` of the image the boxes live in.
        grid_size: ``(h, w)`` of the grid.

    Returns:
        ``(M, h, w)`` bool.

    Example:
        >>> import torch
        >>> boxes_to_grid(torch.tensor([[0.0, 0.0, 256.0, 300.0]]), (512, 512), (4, 4)).int()
        tensor([[[1, 1, 0, 0],
                 [1, 1, 0, 0],
                 [1, 1, 0, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    check_tensor(boxes, "boxes")
    check_shape(boxes, "boxes", ("M", 4))
    check_dtype(boxes, "boxes", ("float", "int"))
    for arg, value in (("image_size", image_size), ("grid_size", grid_size)):
        if len(value) != 2 or any(int(v) <= 0 for v in value):
            raise CCGValueRangeError(f"`{arg}` must be two positive ints (H, W), got {value}.")
    check_finite(boxes.float(), "boxes")
    if (
        values_checkable()
        and boxes.numel()
        and bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any())
    ):
        raise CCGValueRangeError("`boxes` must be (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2.")
    (H, W), (h, w) = image_size, grid_size
    b = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
    # Compare in units of cells (c * W / w == x  <=>  c * W == x * w), exact for integer pixels.
    cols = torch.arange(w, device=b.device, dtype=b.dtype) * W
    rows = torch.arange(h, device=b.device, dtype=b.dtype) * H
    x1, y1, x2, y2 = (b[:, i : i + 1] for i in range(4))
    in_x = (x1 * w < cols + W) & (x2 * w > cols) & (x2 > x1)  # (M, w)
    in_y = (y1 * h < rows + H) & (y2 * h > rows) & (y2 > y1)  # (M, h)
    return in_y[:, :, None] & in_x[:, None, :]


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``(..., 4)`` boxes from ``(x, y, width, height)`` to ``(x1, y1, x2, y2)``.

    Example:
        >>> import torch
        >>> xywh_to_xyxy(torch.tensor([[10.0, 20.0, 5.0, 8.0]]))
        tensor([[10., 20., 15., 28.]])
    """
    check_tensor(boxes, "boxes")
    check_shape(boxes, "boxes", (4,), leading=True)
    xy, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([xy, xy + wh], dim=-1)
