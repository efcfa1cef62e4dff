"""Multiple-instance grid loss ``L_base`` of the CCG framework (paper Sec. 3.2, Eq. 1-3).

The functions :func:`log_noisy_or` (Eq. 2) and :func:`mil_grid_loss` (Eq. 1-3), and the module
:class:`MILGridLoss`, whose forward calls :func:`mil_grid_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccg_layers.config import values_checkable
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.validation import (
    Reduction,
    check_binary,
    check_dtype,
    check_finite,
    check_grid,
    check_positive,
    check_reduction,
    check_shape,
    check_tensor,
    real_number,
    reduce,
)

__all__ = ["MILGridLoss", "log_noisy_or", "mil_grid_loss"]

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

    Raises:
        CCGDTypeError: ``logits`` not a floating tensor.
        CCGShapeError: ``logits`` of fewer than 2 dimensions, or an empty grid (``H`` or ``W``
            zero).
        CCGValueRangeError: Non-finite ``logits`` (a value check: see
            :func:`ccg_layers.set_value_checks`), ``noisy_or_floor`` not ``None`` or a number
            in ``[0, 1)``.

    Example:
        >>> import torch
        >>> log_pos, log_neg = log_noisy_or(torch.zeros(1, 2, 2))  # four cells at p = 0.5
        >>> float(log_neg.exp()), float(log_pos.exp())
        (0.0625, 0.9375)
    """
    _check_floor(noisy_or_floor)
    check_tensor(logits, "logits")
    check_dtype(logits, "logits", ("float",))
    check_shape(logits, "logits", ("H", "W"), leading=True)
    check_grid(logits, "logits")
    check_finite(logits, "logits")
    return _log_noisy_or(logits, noisy_or_floor)


def _log_noisy_or(logits: Tensor, noisy_or_floor: float | None) -> tuple[Tensor, Tensor]:
    """Kernel of :func:`log_noisy_or` (no checks)."""
    z = logits.flatten(-2)
    if not noisy_or_floor:
        # -log(1 - p_j) = softplus(z_j);  s = -log P(negative) = sum_j softplus(z_j)
        s = F.softplus(z).sum(-1)
        log_s = torch.logsumexp(_log_softplus(z), dim=-1)
    else:
        a = 1.0 - noisy_or_floor
        if a <= 0.5:
            # 1 - a p_j >= 1/2: log1p is exact to rounding (no cancellation, no threshold).
            s = -torch.log1p(-a * torch.sigmoid(z)).sum(-1)
        else:
            # 1 - a p_j = (1 + f e^z) / (1 + e^z), tiny for a small f: the difference of two
            # softplus, each exact for every z (logaddexp(x, 0); F.softplus switches to x above
            # 20 and drops e^-20 ~ 2e-9, visible in float64).
            s = (
                torch.logaddexp(z, torch.zeros_like(z))
                - torch.logaddexp(z + math.log(noisy_or_floor), torch.zeros_like(z))
            ).sum(-1)
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
            at least one cell marked where ``box_mask`` is true; e.g. from
            :func:`boxes_to_grid_targets`. Required when ``box_mask`` is given.
        box_mask: ``(N, K)`` bool, true where class ``k`` of image ``i`` has a box. A marked
            class must have label 1. ``None`` means no boxes (pure multiple-instance loss).
        box_weight: :math:`\beta_B`, the weight of the box term (paper: 4).
        reduction: ``"none"`` returns the ``(N, K)`` weighted per-image, per-class terms,
            ``"sum"`` is Eq. 3 exactly, ``"mean"`` is that sum divided by ``N*K``. The loss of
            an empty batch (``N = 0``) is ``0`` with both (a zero gradient, not NaN).
        noisy_or_floor: ``None`` (default) for the paper's noisy-OR; ``0.98`` reproduces
            Li et al. 2018, who rescale every ``1 - p_j`` into ``[0.98, 1]`` so that the
            product over many cells does not vanish. See :func:`log_noisy_or`.

    Returns:
        The loss: a scalar, or ``(N, K)`` for ``reduction="none"``; float32 at least.

    Raises:
        CCGShapeError: Wrong rank, mismatched ``N``, ``K``, ``H``, ``W``, an empty grid
            (``H`` or ``W`` zero), or ``box_mask`` given without ``grid_targets`` or the other
            way round.
        CCGDTypeError: A non-tensor argument, non-float ``logits``, ``box_mask`` not bool.
        CCGValueRangeError: Labels or targets outside ``{0, 1}``, a box on a class whose label
            is 0, an all-zero target where ``box_mask`` is true, non-finite logits, a bad
            ``reduction``, ``box_weight`` or ``noisy_or_floor`` (``None`` or a number in
            ``[0, 1)``). (Value checks read tensor values: see
            :func:`ccg_layers.set_value_checks`.)

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
    _check_options(box_weight, noisy_or_floor)
    _check_inputs(logits, labels, grid_targets, box_mask)
    return _mil_grid_loss(
        logits,
        labels,
        grid_targets,
        box_mask,
        box_weight=box_weight,
        reduction=reduction,
        noisy_or_floor=noisy_or_floor,
    )


def _check_options(box_weight: float, noisy_or_floor: float | None) -> None:
    """Validate the loss's configuration (the module does it once, at construction)."""
    check_positive(box_weight, "box_weight", allow_zero=True)
    _check_floor(noisy_or_floor)


def _check_floor(noisy_or_floor: object) -> None:
    """``noisy_or_floor``: ``None`` or a real number (not a bool or a string) in ``[0, 1)``."""
    if noisy_or_floor is not None:
        what = "None or a number in [0, 1)"
        real_number(noisy_or_floor, "noisy_or_floor", low=0.0, high=1.0, high_open=True, what=what)


def _check_inputs(
    logits: Tensor, labels: Tensor, grid_targets: Tensor | None, box_mask: Tensor | None
) -> None:
    """Validate the tensors of one call, once (shape and dtype always; values when enabled)."""
    check_tensor(logits, "logits")
    check_tensor(labels, "labels")
    check_dtype(logits, "logits", ("float",))
    dims = check_shape(logits, "logits", ("N", "K", "H", "W"))
    check_grid(logits, "logits")  # the noisy-OR of no cell is a certain negative
    check_shape(labels, "labels", ("N", "K"), dims)
    check_dtype(labels, "labels", ("float", "int", "bool"))
    if (grid_targets is None) != (box_mask is None):
        given, missing = (
            ("box_mask", "grid_targets") if grid_targets is None else ("grid_targets", "box_mask")
        )
        raise CCGShapeError(
            f"`{missing}` is required when `{given}` is given: pass both (boxes) or neither "
            f"(image labels only), got `{given}` alone."
        )
    if grid_targets is not None and box_mask is not None:
        check_tensor(grid_targets, "grid_targets")
        check_tensor(box_mask, "box_mask")
        check_shape(grid_targets, "grid_targets", ("N", "K", "H", "W"), dims)
        check_shape(box_mask, "box_mask", ("N", "K"), dims)
        check_dtype(grid_targets, "grid_targets", ("float", "int", "bool"))
        check_dtype(box_mask, "box_mask", ("bool",))
    if not values_checkable():
        return
    check_finite(logits, "logits")
    check_binary(labels, "labels")
    if grid_targets is None or box_mask is None:
        return
    check_binary(grid_targets, "grid_targets")
    on_negative = box_mask & (labels == 0)
    if bool(on_negative.any()):
        i, k = (int(v) for v in on_negative.nonzero()[0])
        raise CCGValueRangeError(
            "`box_mask` marks a box on a class whose label is 0: image "
            f"{i}, class {k} has box_mask=True but labels[{i}, {k}]=0."
        )
    empty = box_mask & ~(grid_targets != 0).flatten(2).any(-1)
    if bool(empty.any()):
        i, k = (int(v) for v in empty.nonzero()[0])
        raise CCGValueRangeError(
            "`grid_targets` must mark at least one cell where `box_mask` is True (an all-zero "
            f"target trains 'no lesion anywhere' on a positive class): image {i}, class {k} has "
            f"box_mask=True but grid_targets[{i}, {k}] is all zero ({int(empty.sum())} such "
            "pair(s)). A box outside the grid's image or of zero area marks no cell: build both "
            "with boxes_to_grid_targets."
        )


def _mil_grid_loss(
    logits: Tensor,
    labels: Tensor,
    grid_targets: Tensor | None,
    box_mask: Tensor | None,
    *,
    box_weight: float,
    reduction: Reduction,
    noisy_or_floor: float | None,
) -> Tensor:
    """:func:`mil_grid_loss` on validated inputs (no checks, no host synchronisation)."""
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.to(compute_dtype)
        y = labels.to(compute_dtype)
        log_pos, log_neg = _log_noisy_or(z, noisy_or_floor)
        terms = -(y * log_pos + (1.0 - y) * log_neg)
        if grid_targets is not None and box_mask is not None:
            t = grid_targets.to(compute_dtype)
            bce = F.binary_cross_entropy_with_logits(z, t, reduction="none").sum((-2, -1))
            terms = torch.where(box_mask, box_weight * bce, terms)
    return reduce(terms, reduction)


class MILGridLoss(nn.Module):
    r"""Multiple-instance grid loss ``L_base`` (paper Eq. 1-3).

    Per-cell binary cross-entropy, weighted by ``box_weight`` (:math:`\beta_B`), where a class
    has a box; the noisy-OR multiple-instance loss on the image label elsewhere. See
    :func:`mil_grid_loss` for the arguments and shapes.

    Args:
        box_weight: :math:`\beta_B` (paper: 4).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        noisy_or_floor: ``None`` for the paper's noisy-OR, ``0.98`` for Li et al. 2018.

    Shape:
        - logits: ``(N, K, H, W)``; labels, box_mask: ``(N, K)``; grid_targets: like logits.
        - output: scalar, or ``(N, K)`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> loss_fn = MILGridLoss()
        >>> logits = torch.randn(2, 8, 16, 16, requires_grad=True)
        >>> labels = torch.randint(0, 2, (2, 8)).float()
        >>> loss = loss_fn(logits, labels)
        >>> loss.backward()
        >>> loss.shape, logits.grad.shape
        (torch.Size([]), torch.Size([2, 8, 16, 16]))
    """

    def __init__(
        self,
        box_weight: float = 4.0,
        reduction: Reduction = "mean",
        noisy_or_floor: float | None = None,
    ) -> None:
        super().__init__()
        _check_options(box_weight, noisy_or_floor)
        self.box_weight = float(box_weight)
        self.reduction: Reduction = check_reduction(reduction)
        self.noisy_or_floor = noisy_or_floor

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        grid_targets: Tensor | None = None,
        box_mask: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss by :func:`mil_grid_loss`, which validates the inputs once."""
        return mil_grid_loss(
            logits,
            labels,
            grid_targets,
            box_mask,
            box_weight=self.box_weight,
            reduction=self.reduction,
            noisy_or_floor=self.noisy_or_floor,
        )

    def extra_repr(self) -> str:
        """Show the configuration in ``repr``."""
        return (
            f"box_weight={self.box_weight}, reduction={self.reduction!r}, "
            f"noisy_or_floor={self.noisy_or_floor}"
        )
