"""Loss modules: thin :class:`torch.nn.Module` wrappers over :mod:`ccg_layers.functional`."""

from __future__ import annotations

from torch import Tensor, nn

from ccg_layers._validation import Reduction, check_reduction
from ccg_layers.functional.mil import _check_inputs, _check_options, _mil_grid_loss

__all__ = ["MILGridLoss"]


class MILGridLoss(nn.Module):
    r"""Multiple-instance grid loss ``L_base`` (paper Eq. 1-3).

    Per-cell binary cross-entropy, weighted by ``box_weight`` (:math:`\beta_B`), where a class
    has a box; the noisy-OR multiple-instance loss on the image label elsewhere. See
    :func:`ccg_layers.functional.mil_grid_loss` for the arguments and shapes.

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
        """Compute the loss; see :func:`ccg_layers.functional.mil_grid_loss`.

        The inputs are validated here once; the configuration was validated at construction.
        """
        _check_inputs(logits, labels, grid_targets, box_mask)
        return _mil_grid_loss(
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
