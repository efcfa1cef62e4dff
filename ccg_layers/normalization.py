r"""Graph normalisation: the well-posed parametrisation of a learnable graph (Eq. 4-6).

:func:`normalize_graph` turns unconstrained logits into the graph weights ``G``; every graph of
the library (the sample graph of ``L_IR``, the patch-hash graph of ``L_IK`` and ``L_KR``) goes
through its kernel :func:`normalize_logits`. :func:`columns_valid` builds the column mask of a
batch followed by ``K`` memory partners.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ccg_layers.config import values_checkable
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.validation import (
    check_choice,
    check_dtype,
    check_finite,
    check_flag,
    check_shape,
    check_tensor,
)

__all__ = [
    "GraphParametrization",
    "check_parametrization",
    "columns_valid",
    "normalize_graph",
    "normalize_logits",
]

GraphParametrization = Literal["softmax", "free"]


def check_parametrization(value: object) -> GraphParametrization:
    """Return ``value`` if it is ``"softmax"`` or ``"free"``; else raise naming ``parametrization``."""
    return check_choice(value, "parametrization", GraphParametrization)  # type: ignore[no-any-return]


def columns_valid(n: int, memory_valid: Tensor | None, k: int, device: torch.device) -> Tensor:
    """``(n + K,)`` validity of the columns: the batch, then the memory slots."""
    batch = torch.ones(n, dtype=torch.bool, device=device)
    if memory_valid is None:
        mem = torch.ones(k, dtype=torch.bool, device=device)
    else:
        mem = memory_valid.to(device=device, dtype=torch.bool)
    return torch.cat([batch, mem])


def normalize_logits(
    logits: Tensor,
    parametrization: GraphParametrization = "softmax",
    *,
    pairs: bool = False,
    valid: Tensor | None = None,
) -> Tensor:
    """Kernel of :func:`normalize_graph` (validated inputs); ``valid`` masks the ``(columns,)``."""
    if parametrization == "free":
        return logits if valid is None else logits * valid.to(logits.dtype)
    # A softmax written out so that equal logits give exactly 1/N (no rounding of
    # softmax * (N-1)/N); a masked entry gets the lowest finite logit, not -inf, so that a row
    # without any partner stays finite (weight 0, gradient 0).
    lowest = torch.finfo(logits.dtype).min
    tiny = torch.finfo(logits.dtype).tiny
    if pairs:
        P = logits.shape[0]
        mask = (
            torch.ones_like(logits, dtype=torch.bool)
            if valid is None
            else valid.expand(logits.shape)
        )
        flat = logits.masked_fill(~mask, lowest).reshape(-1)
        e = torch.exp(flat - flat.max()).reshape(logits.shape) * mask
        return e * (P / e.sum().clamp(min=tiny))
    n, cols = logits.shape
    ids = torch.arange(cols, device=logits.device)
    eye = ids[None, :] == ids[:n, None]  # (n, cols): column u is anchor u's self-pair
    if valid is None:
        partner = ~eye
        count = torch.full((), float(cols), dtype=logits.dtype, device=logits.device)
    else:
        partner = ~eye & valid[None, :]
        count = valid.sum().to(logits.dtype)
    masked = logits.masked_fill(~partner, lowest)
    e = torch.exp(masked - masked.amax(dim=1, keepdim=True)) * partner
    # (N-1)/N * e / sum(e) as e / (sum(e) * N / (N-1)): exact for equal logits
    scale = count / (count - 1.0).clamp(min=1.0)
    off = e / (e.sum(dim=1, keepdim=True) * scale).clamp(min=tiny)
    self_weight = torch.ones_like(off) / count
    return torch.where(eye, self_weight, off)


def normalize_graph(
    logits: Tensor,
    *,
    parametrization: GraphParametrization = "softmax",
    pairs: bool = False,
    valid: Tensor | None = None,
) -> Tensor:
    r"""Turn unconstrained graph logits into the graph weights ``G`` (well-posed by default).

    The literal objective :math:`\sum G(u,v) D(F_u,F_v)/n^2` is unbounded below when ``G`` is
    free (``G -> -inf``) and collapses onto the self-pairs (``D(F_u, F_u) = 0``) when ``G`` is
    merely normalised. ``"softmax"`` (default) keeps every row a probability distribution in
    which the self-weight is frozen at ``1/N`` (``N`` the number of valid columns, ``n`` without
    a memory): for ``v != u``,
    :math:`G(u, v) = \frac{N-1}{N}\,\mathrm{softmax}_{v' \ne u}(\theta_{u v'})_v`, and
    ``G(u, u) = 1/N``. Equal logits give exactly the paper's initial graph ``G = 1/n``; learning
    only moves weight between partners, so the loss stays ``>= 0`` and cannot collapse.

    ``logits`` may be ``(n, n + K)``: the columns after the ``n`` batch columns are ``K``
    memory partners, and ``valid`` ``(n + K,)`` marks the columns that exist (unfilled memory
    slots get weight 0).

    For ``pairs=True``, ``logits`` are the ``(P,)`` scores of explicit pairs and ``"softmax"``
    gives :math:`w_p = P\,\mathrm{softmax}_p(\theta)_p` (all ``1`` for equal scores); ``(P, J)``
    scores (each pair's own partner, then memory partners) are normalised the same way over all
    valid entries (``valid`` ``(J,)``). ``"free"`` returns ``logits`` (zeroed where not valid):
    the literal, unbounded form.

    Args:
        logits: ``(n, n + K)`` (or ``(P,)`` / ``(P, J)`` with ``pairs=True``).
        parametrization: ``"softmax"`` or ``"free"``.
        pairs: Whether ``logits`` are pair scores.
        valid: Bool mask of the columns; ``None`` for all.

    Returns:
        The weights, same shape as ``logits``.

    Raises:
        CCGShapeError: ``logits`` not ``(n, n + K)`` with ``n >= 1`` (``(P,)`` / ``(P, J)``
            with ``P, J >= 1`` for ``pairs=True``), or ``valid`` not ``(n + K,)`` / ``(J,)``.
        CCGDTypeError: Non-floating ``logits`` or a non-bool ``valid``.
        CCGValueRangeError: A bad ``parametrization``, ``pairs`` not a bool; with the value
            checks on, non-finite ``logits`` or a ``valid`` that masks one of the first ``n``
            columns (the batch's own; the pair's own partner, column 0, with ``pairs=True``).

    Example:
        >>> import torch
        >>> normalize_graph(torch.zeros(4, 4))[0]
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
        >>> normalize_graph(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 0.0]]))[1]
        tensor([8.2263e-05, 3.3333e-01, 6.6658e-01])
        >>> normalize_graph(torch.zeros(2, 4), valid=torch.tensor([True, True, True, False]))
        tensor([[0.3333, 0.3333, 0.3333, 0.0000],
                [0.3333, 0.3333, 0.3333, 0.0000]])
    """
    parametrization = check_parametrization(parametrization)
    pairs = check_flag(pairs, "pairs")
    check_tensor(logits, "logits")
    check_dtype(logits, "logits", ("float",))
    if pairs:
        if logits.dim() == 1:
            dims = check_shape(logits, "logits", ("P",))
            cols = 1
        else:
            dims = check_shape(logits, "logits", ("P", "J"))
            cols = dims["J"]
        if dims["P"] == 0 or cols == 0:
            raise CCGShapeError(
                "`logits` must score at least 1 pair, each against at least its own partner "
                f"(P, J >= 1), got shape {tuple(logits.shape)}."
            )
    else:
        if logits.dim() != 2 or logits.shape[1] < logits.shape[0] or logits.shape[0] == 0:
            raise CCGShapeError(
                "`logits` must have shape (n, n) or (n, n + K) with n >= 1 anchors and "
                f"K >= 0 memory columns, got shape {tuple(logits.shape)}."
            )
        cols = int(logits.shape[1])
    if valid is not None:
        check_tensor(valid, "valid")
        check_dtype(valid, "valid", ("bool",))
        if pairs and logits.dim() == 1:
            raise CCGShapeError("`valid` is only used with (P, J) pair scores, got (P,) scores.")
        check_shape(valid, "valid", ("columns",), {"columns": cols})
        own = 1 if pairs else int(logits.shape[0])  # the columns that must exist
        if values_checkable() and not bool(valid[:own].all()):
            first = int((~valid[:own]).nonzero()[0, 0])
            what = "the pair's own partner" if pairs else f"the n={own} batch columns"
            raise CCGValueRangeError(
                f"`valid` must be True for {what} (only memory columns may be masked), got "
                f"False at column {first}."
            )
    check_finite(logits, "logits")
    return normalize_logits(logits, parametrization, pairs=pairs, valid=valid)
