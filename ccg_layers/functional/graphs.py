r"""Sample and patch graphs of the CCG framework (paper Sec. 3.3-3.5, Eq. 4-10).

All three relation losses weight the Euclidean distances ``D(F_u, F_v)`` between the feature
maps of a batch by a graph ``G`` and average:
:math:`\sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2`. This module holds the batched pieces:

* :func:`pairwise_distance`, :func:`sample_graph_loss` (Eq. 4, 5) and :func:`paired_sample_loss`
  (explicit pairs, Eq. 8-10);
* :func:`normalize_graph`, the well-posed parametrisation of a learnable graph;
* the input-conditioned sample graph of ``L_IR``: :func:`graph_embedding`,
  :func:`conditioned_graph_logits`, :func:`sample_graph` and
  :func:`conditioned_sample_graph_loss`;
* :func:`superpixel_pool`, :func:`hash_codes`, :func:`patch_codes`, :func:`hamming_distance` and
  :func:`patch_graph_logits` (Eq. 6-7), combined by :func:`patch_hash_graph` and
  :func:`patch_hash_graph_loss`;
* :func:`memory_enqueue_`, the FIFO update of a cross-batch memory of partners.

Every public function validates its inputs once and then calls unchecked internal kernels
(``_name``); the modules of :mod:`ccg_layers.graphs` validate at their own boundary and call the
kernels directly, so nothing re-checks what the library itself produced.

**Partners beyond the batch.** Every graph function takes an optional memory of ``K`` earlier
samples (detached; partners only, never anchors): the graph of a batch of ``n`` is then
``(n, n + K)``, columns ``0..n-1`` the batch and ``n..n+K-1`` the memory, with a ``(K,)`` bool
``memory_valid`` marking the filled slots. Each row is normalised over the valid partners.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ccg_layers._validation import (
    Reduction,
    check_dtype,
    check_finite,
    check_index,
    check_reduction,
    check_shape,
    check_tensor,
    reduce,
    values_checkable,
)
from ccg_layers.errors import CCGShapeError, CCGValueRangeError

__all__ = [
    "GraphForm",
    "GraphParametrization",
    "alike_pairs",
    "conditioned_graph_logits",
    "conditioned_sample_graph_loss",
    "contrast_distances",
    "graph_embedding",
    "hamming_distance",
    "hash_codes",
    "memory_enqueue_",
    "normalize_graph",
    "paired_sample_loss",
    "pairwise_distance",
    "patch_codes",
    "patch_graph_logits",
    "patch_hash_graph",
    "patch_hash_graph_loss",
    "sample_graph",
    "sample_graph_loss",
    "superpixel_pool",
]

GraphParametrization = Literal["softmax", "free"]
_PARAMETRIZATIONS: tuple[str, ...] = get_args(GraphParametrization)
GraphForm = Literal["conditioned", "positional"]
_FORMS: tuple[str, ...] = get_args(GraphForm)


def _check_parametrization(value: object) -> GraphParametrization:
    if not isinstance(value, str) or value not in _PARAMETRIZATIONS:
        raise CCGValueRangeError(
            f"`parametrization` must be one of {', '.join(map(repr, _PARAMETRIZATIONS))}, "
            f"got {value!r}."
        )
    return value  # type: ignore[return-value]


def _check_form(value: object) -> GraphForm:
    if not isinstance(value, str) or value not in _FORMS:
        raise CCGValueRangeError(
            f"`form` must be one of {', '.join(map(repr, _FORMS))}, got {value!r}."
        )
    return value  # type: ignore[return-value]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _safe_sqrt(sq: Tensor) -> Tensor:
    """``sqrt(max(sq, 0))`` whose gradient is 0 (not infinite) where ``sq <= tiny``; NaN stays."""
    tiny = torch.finfo(sq.dtype).tiny
    positive = (sq > tiny) | sq.isnan()
    return torch.where(positive, sq.clamp(min=tiny).sqrt(), torch.zeros_like(sq))


def _check_batch(x: object, name: str, *, min_dim: int = 1, what: str = "(n, ...)") -> Tensor:
    """A floating tensor of rank ``>= min_dim`` holding at least one sample."""
    t = check_tensor(x, name)
    check_dtype(t, name, ("float",))
    if t.dim() < min_dim:
        raise CCGShapeError(
            f"`{name}` must have at least {min_dim} dimension{'s' if min_dim > 1 else ''} "
            f"{what}, got shape {tuple(t.shape)}."
        )
    if t.shape[0] == 0:
        raise CCGShapeError(
            f"`{name}` must hold at least 1 sample {what}, got shape {tuple(t.shape)} "
            "(an empty batch)."
        )
    return t


def _check_memory_valid(memory_valid: Tensor | None, k: int) -> None:
    if memory_valid is None:
        return
    check_tensor(memory_valid, "memory_valid")
    check_dtype(memory_valid, "memory_valid", ("bool",))
    check_shape(memory_valid, "memory_valid", ("K",), {"K": k})


def _columns_valid(n: int, memory_valid: Tensor | None, k: int, device: torch.device) -> Tensor:
    """``(n + K,)`` validity of the columns: the batch, then the memory slots."""
    batch = torch.ones(n, dtype=torch.bool, device=device)
    if memory_valid is None:
        mem = torch.ones(k, dtype=torch.bool, device=device)
    else:
        mem = memory_valid.to(device=device, dtype=torch.bool)
    return torch.cat([batch, mem])


# --------------------------------------------------------------------------- distances


def _pairwise_distance(features: Tensor) -> Tensor:
    n = features.shape[0]
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.reshape(n, -1).to(_compute_dtype(features))
        x = x - x.mean(dim=0, keepdim=True)
        gram = x @ x.T
        gram = 0.5 * (gram + gram.T)  # exactly symmetric whatever the BLAS kernel
        sq_norm = gram.diagonal()
        sq = sq_norm[:, None] + sq_norm[None, :] - 2.0 * gram
        sq = sq.masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), 0.0)
        return _safe_sqrt(sq)


def _cross_distance(features: Tensor, others: Tensor) -> Tensor:
    """``(n, K)`` distances from each sample to each of ``K`` other (detached) samples.

    Direct differences (``torch.cdist`` without the matmul form): with ``n * K`` small this is
    one pass over the memory without the centred copies a Gram form needs, and exact. The
    memory is copied once (in the compute dtype): the backward needs its values, and a module
    updates its queue in place right after the forward.
    """
    n, K = features.shape[0], others.shape[0]
    with torch.autocast(device_type=features.device.type, enabled=False):
        dtype = torch.promote_types(_compute_dtype(features), others.dtype)
        x = features.reshape(1, n, -1).to(dtype)
        y = others.detach().reshape(1, K, x.shape[2]).to(dtype, copy=True)
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")[0]


def _distances(features: Tensor, memory: Tensor | None) -> Tensor:
    """``(n, n)``, or ``(n, n + K)`` with the memory's columns after the batch's."""
    dist = _pairwise_distance(features)
    if memory is None:
        return dist
    return torch.cat([dist, _cross_distance(features, memory).to(dist.dtype)], dim=1)


def pairwise_distance(features: Tensor) -> Tensor:
    """Euclidean distances ``D(F_u, F_v)`` between all pairs of samples, in one matmul.

    Each sample is flattened; the squared distances come from the Gram matrix of the samples
    after subtracting the batch mean (distances do not change, the cancellation in
    ``|a|^2 + |b|^2 - 2 a.b`` shrinks). The diagonal is exactly 0 and the gradient is finite
    (0) wherever a distance is 0 (self-pairs, identical samples). Computed in float32 at least,
    also under autocast. The Gram form costs one ``(n, D) x (D, n)`` matmul instead of an
    ``(n, n, D)`` difference tensor; its absolute error is about ``sqrt(eps) * |F - mean F|``,
    negligible against the distances between distinct samples, but a pair of *identical*
    samples other than a self-pair may get a small positive distance instead of 0.

    Args:
        features: ``(n, ...)`` floating point, ``n >= 1``.

    Returns:
        ``(n, n)`` symmetric, non-negative.

    Example:
        >>> import torch
        >>> pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        tensor([[0., 5.],
                [5., 0.]])
    """
    return _pairwise_distance(_check_batch(features, "features"))


def _check_distances_finite(dist: Tensor, names: str) -> None:
    """Finiteness of the features, read off the (small) distance matrix they produce.

    A NaN or infinity anywhere in a sample makes its distances non-finite, so this is as strict
    as checking the features themselves at ``n^2`` instead of ``n * D`` reads (``isfinite`` over
    a batch of C5 maps costs more than the distances).
    """
    if values_checkable() and not bool(torch.isfinite(dist).all()):
        raise CCGValueRangeError(
            f"{names} must be finite, got NaN or infinite values (or values so large that "
            "their squared distances overflow)."
        )


def _check_memory_features(memory: Tensor | None, features: Tensor, name: str) -> int:
    """Shape of a memory of feature maps ``(K, *features.shape[1:])``; returns ``K``."""
    if memory is None:
        return 0
    check_tensor(memory, name)
    check_dtype(memory, name, ("float",))
    if tuple(memory.shape[1:]) != tuple(features.shape[1:]) or memory.dim() != features.dim():
        raise CCGShapeError(
            f"`{name}` must have shape (K, {', '.join(str(s) for s in features.shape[1:])}) "
            f"like one sample of `features`, got shape {tuple(memory.shape)}."
        )
    return int(memory.shape[0])


def _graph_loss(
    features: Tensor,
    graph: Tensor,
    memory: Tensor | None,
    reduction: Reduction,
    alike: Tensor | None = None,
    margin: float | None = None,
) -> Tensor:
    n = features.shape[0]
    dist = _distances(features, memory)
    _check_distances_finite(dist, "`features`" if memory is None else "`features` and the memory")
    if alike is not None and margin is not None:
        dist = _contrast(dist, alike, margin)
    terms = graph.to(dist.dtype) * dist
    return reduce(terms, reduction, count=n * n)


# --------------------------------------------------------------------------- contrast (beyond
# the paper: every relation loss of Eq. 4-10 only pulls; this form also pushes unlike pairs)


def _check_margin(margin: object, name: str = "margin") -> float:
    """A finite positive float (an int is accepted; a bool is not)."""
    if (
        isinstance(margin, bool)
        or not isinstance(margin, (int, float))
        or not math.isfinite(margin)
        or margin <= 0
    ):
        raise CCGValueRangeError(f"`{name}` must be a finite positive float, got {margin!r}.")
    return float(margin)


def _check_image_labels(
    labels: object, name: str, n: int | None = None, c: int | None = None
) -> Tensor:
    """``(n, C)`` multi-hot image labels, float or bool, values 0/1 (value check switchable)."""
    t = check_tensor(labels, name)
    check_dtype(t, name, ("float", "bool"))
    dims: dict[str, int] = {}
    if n is not None:
        dims["n"] = n
    if c is not None:
        dims["C"] = c
    check_shape(t, name, ("n", "C"), dims)
    binary = t.dtype == torch.bool or t.numel() == 0 or not values_checkable()
    if not binary and not bool(((t == 0) | (t == 1)).all()):
        raise CCGValueRangeError(
            f"`{name}` must hold multi-hot labels (0 or 1), got other or non-finite values."
        )
    return t


def _alike(labels: Tensor, partners: Tensor) -> Tensor:
    """``(n, M)`` bool: rows share a positive label, or both rows are all zero."""
    with torch.autocast(device_type=labels.device.type, enabled=False):
        a = labels.to(torch.float32)
        b = partners.to(device=a.device, dtype=torch.float32)
        shared = (a @ b.T) > 0.5  # 0/1 values: the counts are exact integers
        none_a = a.sum(dim=1) < 0.5
        none_b = b.sum(dim=1) < 0.5
        return shared | (none_a[:, None] & none_b[None, :])


def _pair_alike(labels: Tensor, labels_b: Tensor, memory_labels: Tensor | None) -> Tensor:
    """``(P,)`` alike-ness of each pair; ``(P, 1 + K)`` with the anchor against the memory."""
    with torch.autocast(device_type=labels.device.type, enabled=False):
        a = labels.to(torch.float32)
        b = labels_b.to(device=a.device, dtype=torch.float32)
        own = ((a * b).sum(dim=1) > 0.5) | ((a.sum(dim=1) < 0.5) & (b.sum(dim=1) < 0.5))
    if memory_labels is None:
        return own
    return torch.cat([own[:, None], _alike(labels, memory_labels)], dim=1)


def alike_pairs(labels: Tensor, partner_labels: Tensor | None = None) -> Tensor:
    r"""Which pairs of images are *alike*, from their image-level multi-hot labels (one matmul).

    :math:`s(u, v) = [y_u \cdot y_v > 0] \lor [y_u = 0 \land y_v = 0]`: the two images share
    a positive finding, or neither has any ("No finding"). ``s(u, u) = 1``. The columns are the
    batch, then the ``K`` partners of a memory (``partner_labels``), in the layout of the
    ``(n, n + K)`` graphs. Used by :func:`contrast_distances` (beyond the paper).

    Args:
        labels: ``(n, C)`` multi-hot labels of the batch, float (0/1) or bool.
        partner_labels: ``(K, C)`` labels of the memory partners; ``None`` for none.

    Returns:
        ``(n, n + K)`` bool.

    Raises:
        CCGShapeError: Not ``(n, C)``, or ``partner_labels`` with another ``C``.
        CCGDTypeError: Neither floating nor bool.
        CCGValueRangeError: Values other than 0 and 1 (with the value checks on).

    Example:
        >>> import torch
        >>> y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
        >>> alike_pairs(y, torch.tensor([[0.0, 0.0]])).int()
        tensor([[1, 1, 0, 0, 0],
                [1, 1, 1, 0, 0],
                [0, 1, 1, 0, 0],
                [0, 0, 0, 1, 1]], dtype=torch.int32)
    """
    y = _check_image_labels(labels, "labels")
    n, c = int(y.shape[0]), int(y.shape[1])
    if n == 0:
        raise CCGShapeError(f"`labels` must hold at least 1 sample (n, C), got shape {(n, c)}.")
    if partner_labels is None:
        return _alike(y, y)
    mem = _check_image_labels(partner_labels, "partner_labels", c=c)
    return _alike(y, torch.cat([y.to(torch.float32), mem.to(y.device, torch.float32)]))


def _contrast(distances: Tensor, alike: Tensor, margin: float) -> Tensor:
    return torch.where(alike, distances, (margin - distances).clamp_min(0.0))


def contrast_distances(distances: Tensor, alike: Tensor, margin: float) -> Tensor:
    r"""The contrast-constrained pair cost (beyond the paper; Hadsell, Chopra & LeCun 2006).

    :math:`c(u, v) = s\, D + (1 - s) \max(0, m - D)`: alike pairs (``s = 1``,
    :func:`alike_pairs`) are pulled together as in Eq. 4-10, unlike pairs pushed apart until
    their distance reaches the margin ``m``. The distance itself (not its square) keeps the
    paper's units. Weighted by a graph, :math:`\sum G(u, v)\, c(u, v) / n^2` has a minimum
    other than "every image alike". ``m`` is in the distances' units: it is meant for
    unit-normalised maps (distances in ``[0, 2]``, ``[0, \sqrt 2]`` for non-negative maps).
    Raw maps have no fixed scale: rescaling the features moves every distance against the
    margin, so a network can undercut any margin (shrinking the maps shrinks the pull terms,
    and the push terms are bounded by ``m``); compare unit maps.

    Args:
        distances: ``(...)`` non-negative distances, e.g. ``(n, n + K)`` or ``(P,)``.
        alike: Bool of the same shape, ``s(u, v)``.
        margin: Finite positive float ``m``.

    Returns:
        The costs, same shape and dtype as ``distances``.

    Raises:
        CCGShapeError: ``alike`` has another shape.
        CCGDTypeError: ``distances`` not floating or ``alike`` not bool.
        CCGValueRangeError: ``margin`` not a finite positive float.

    Example:
        >>> import torch
        >>> d = torch.tensor([0.5, 0.5, 1.5])
        >>> contrast_distances(d, torch.tensor([True, False, False]), margin=1.0)
        tensor([0.5000, 0.5000, 0.0000])
    """
    m = _check_margin(margin)
    check_tensor(distances, "distances")
    check_dtype(distances, "distances", ("float",))
    check_tensor(alike, "alike")
    check_dtype(alike, "alike", ("bool",))
    if alike.shape != distances.shape:
        raise CCGShapeError(
            f"`alike` must have the shape of `distances` {tuple(distances.shape)}, got shape "
            f"{tuple(alike.shape)}."
        )
    return _contrast(distances, alike, m)


def _check_contrast_args(
    image_labels: Tensor | None,
    margin: object,
    n: int,
    memory_image_labels: Tensor | None,
    k: int,
    has_memory: bool,
) -> tuple[Tensor | None, float | None]:
    """The contrast arguments of a loss: both or neither; the memory's labels with a memory."""
    if image_labels is None:
        if margin is not None or memory_image_labels is not None:
            given = "margin" if margin is not None else "memory_image_labels"
            raise CCGShapeError(
                f"`image_labels` is required with `{given}` (the contrast form), got None."
            )
        return None, None
    if margin is None:
        raise CCGValueRangeError(
            "`margin` is required with `image_labels` (the contrast form), got None."
        )
    m = _check_margin(margin)
    y = _check_image_labels(image_labels, "image_labels", n=n)
    c = int(y.shape[1])
    if has_memory:
        if memory_image_labels is None:
            raise CCGShapeError(
                "`memory_image_labels` is required with `image_labels` and a memory, got None."
            )
        _check_image_labels(memory_image_labels, "memory_image_labels", n=k, c=c)
    elif memory_image_labels is not None:
        raise CCGShapeError("`memory_image_labels` is only used with a memory, got it without one.")
    return y, m


def _batch_alike(labels: Tensor, memory_labels: Tensor | None) -> Tensor:
    if memory_labels is None:
        return _alike(labels, labels)
    partners = torch.cat([labels.to(torch.float32), memory_labels.to(labels.device, torch.float32)])
    return _alike(labels, partners)


def sample_graph_loss(
    features: Tensor,
    graph: Tensor,
    *,
    memory: Tensor | None = None,
    image_labels: Tensor | None = None,
    memory_image_labels: Tensor | None = None,
    margin: float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Graph-weighted mean distance between samples (paper Eq. 4; Eq. 5 with ``G_k``).

    :math:`L = \sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2` with ``D`` the Euclidean distance
    between the flattened samples (:func:`pairwise_distance`). The graph is used as given: pass
    it through :func:`normalize_graph` for the well-posed parametrisation. With a ``memory`` of
    ``K`` earlier samples (partners only, detached) the graph is ``(n, n + K)`` and ``v`` also
    runs over the memory; the mean still divides by ``n^2`` (rows of a normalised graph sum to
    1, so each anchor's weighted mean distance counts the same whatever ``K``).

    Contrast form (beyond the paper; ``image_labels`` with ``margin``): ``D`` is replaced by
    :func:`contrast_distances` with the pairs of :func:`alike_pairs`,
    :math:`L = \sum_{u,v} G(u, v)\, [s D + (1 - s) \max(0, m - D)] / n^2`.

    Args:
        features: ``(n, ...)`` one feature map (or any tensor) per sample.
        graph: ``(n, n)`` weights ``G(u, v)``, or ``(n, n + K)`` with ``memory``.
        memory: ``(K, ...)`` earlier samples (same shape per sample as ``features``).
        image_labels: ``(n, C)`` multi-hot image labels (float 0/1 or bool): the contrast
            form; ``None`` (default) for the paper's pull-only form.
        memory_image_labels: ``(K, C)`` labels of the memory; required with both.
        margin: The contrast margin ``m`` (finite, > 0), in the distances' units; required
            with ``image_labels``.
        reduction: ``"mean"`` is Eq. 4 (sum over the terms divided by ``n^2``),
            ``"sum"`` the plain sum, ``"none"`` the terms ``G(u, v) D(F_u, F_v)``.

    Returns:
        Scalar, or ``(n, n + K)`` for ``reduction="none"``; float32 at least.

    Raises:
        CCGShapeError: ``graph`` is not ``(n, n + K)`` for the ``n`` samples, an empty batch.
        CCGDTypeError: A non-floating input.
        CCGValueRangeError: A bad ``reduction`` or non-finite values.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> sample_graph_loss(x, torch.full((2, 2), 0.5))  # (0.5 * 5 + 0.5 * 5) / 4
        tensor(1.2500)
    """
    reduction = check_reduction(reduction)
    _check_batch(features, "features")
    check_tensor(graph, "graph")
    check_dtype(graph, "graph", ("float",))
    n = int(features.shape[0])
    K = _check_memory_features(memory, features, "memory")
    check_shape(graph, "graph", ("n", "n + K"), {"n": n, "n + K": n + K})
    check_finite(graph, "graph")
    y, m = _check_contrast_args(image_labels, margin, n, memory_image_labels, K, memory is not None)
    if n == 1 and K == 0:  # no off-diagonal distance to read the features' finiteness from
        check_finite(features, "features")
    alike = None if y is None else _batch_alike(y, memory_image_labels)
    return _graph_loss(features, graph, memory, reduction, alike, m)


def _paired_terms(features_a: Tensor, features_b: Tensor) -> Tensor:
    P = features_a.shape[0]
    with torch.autocast(device_type=features_a.device.type, enabled=False):
        dtype = torch.promote_types(_compute_dtype(features_a), features_b.dtype)
        diff = (features_a.to(dtype) - features_b.to(dtype)).reshape(P, -1)
        return _safe_sqrt((diff * diff).sum(dim=1))


def paired_sample_loss(
    features_a: Tensor, features_b: Tensor, weights: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    r"""Weighted distance of ``P`` explicit pairs (the pair form of Eq. 4-5, used by Eq. 8-10).

    :math:`L = \sum_p w_p\, \lVert F^a_p - F^b_p \rVert / P`, e.g. on the attended maps
    ``F'_u, F'_v`` of cross-image attention. The gradient is finite (0) where a pair is equal.

    Args:
        features_a: ``(P, ...)``.
        features_b: ``(P, ...)`` same shape as ``features_a``.
        weights: ``(P,)`` pair weights.
        reduction: ``"mean"`` divides the sum by ``P``, ``"sum"``, or ``"none"`` for the
            ``(P,)`` terms ``w_p D_p``.

    Returns:
        Scalar, or ``(P,)``; float32 at least.

    Raises:
        CCGShapeError: Mismatched shapes or no pair.
        CCGDTypeError: A non-floating input.
        CCGValueRangeError: A bad ``reduction`` or non-finite values.

    Example:
        >>> import torch
        >>> a, b = torch.zeros(2, 2), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
        >>> paired_sample_loss(a, b, torch.tensor([1.0, 2.0]), reduction="none")
        tensor([5., 2.])
    """
    reduction = check_reduction(reduction)
    _check_batch(features_a, "features_a", what="(P, ...)")
    for name, t in (("features_b", features_b), ("weights", weights)):
        check_tensor(t, name)
        check_dtype(t, name, ("float",))
    if features_b.shape != features_a.shape:
        raise CCGShapeError(
            f"`features_b` must have the shape of `features_a` {tuple(features_a.shape)}, "
            f"got shape {tuple(features_b.shape)}."
        )
    dims = {"P": int(features_a.shape[0])}
    check_shape(weights, "weights", ("P",), dims)
    check_finite(weights, "weights")
    dist = _paired_terms(features_a, features_b)
    _check_distances_finite(dist, "`features_a` and `features_b`")
    terms = weights.to(dist.dtype) * dist
    return reduce(terms, reduction, count=dims["P"])


# --------------------------------------------------------------------------- normalisation


def _normalize(
    logits: Tensor,
    parametrization: GraphParametrization = "softmax",
    *,
    pairs: bool = False,
    valid: Tensor | None = None,
) -> Tensor:
    """Kernel of :func:`normalize_graph`; ``valid`` is the ``(columns,)`` mask of partners."""
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
    parametrization = _check_parametrization(parametrization)
    check_tensor(logits, "logits")
    check_dtype(logits, "logits", ("float",))
    if pairs:
        if logits.dim() == 1:
            dims = check_shape(logits, "logits", ("P",))
            cols = 1
        else:
            dims = check_shape(logits, "logits", ("P", "J"))
            cols = dims["J"]
        if dims["P"] == 0:
            raise CCGShapeError(
                f"`logits` must score at least 1 pair, got shape {tuple(logits.shape)}."
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
    return _normalize(logits, parametrization, pairs=pairs, valid=valid)


# --------------------------------------------------------------------------- conditioned L_IR


def _embed(features: Tensor, projection: Tensor) -> Tensor:
    """Kernel of :func:`graph_embedding`: spatial mean, projection, unit norm; no gradient."""
    n = features.shape[0]
    with torch.autocast(device_type=features.device.type, enabled=False), torch.no_grad():
        dtype = torch.promote_types(_compute_dtype(features), projection.dtype)
        x = features.detach().reshape(n, features.shape[1], -1).to(dtype).mean(dim=2)
        x = x - x.mean(dim=1, keepdim=True)  # per image: drop the offset all channels share
        return F.normalize(x @ projection.to(dtype), dim=1)


def _check_embedding_inputs(features: Tensor, projection: Tensor, name: str) -> dict[str, int]:
    _check_batch(features, name, min_dim=2, what="(n, C, ...)")
    check_tensor(projection, "projection")
    check_dtype(projection, "projection", ("float",))
    dims = check_shape(projection, "projection", ("C", "d"))
    if features.shape[1] != dims["C"]:
        raise CCGShapeError(
            f"`{name}` must have C={dims['C']} channels (the rows of `projection`) in "
            f"dimension 1, got shape {tuple(features.shape)}."
        )
    return dims


def graph_embedding(features: Tensor, projection: Tensor) -> Tensor:
    """The descriptor of each image that the input-conditioned sample graph compares.

    The spatial mean of the feature map (global average pooling), centred across its channels
    (per image: non-negative ReLU features share a large common offset that would make every
    pair of images look alike), projected by a fixed random ``projection`` to ``d`` dimensions
    and scaled to unit length: the projection keeps the angles between the pooled features
    (Johnson-Lindenstrauss), the unit length keeps the graph logits bounded by the norm of the
    learned weight. Detached (the graph is conditioned
    on the images, the backbone gets its gradient through the distances, as in Eq. 4).

    Args:
        features: ``(n, C, ...)`` feature maps (any number of spatial dimensions, or none).
        projection: ``(C, d)`` fixed projection (a buffer of the module).

    Returns:
        ``(n, d)`` unit vectors (0 for an all-zero map), float32 at least, no gradient.

    Example:
        >>> import torch
        >>> x = torch.tensor([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0]])[:, :, None, None]
        >>> graph_embedding(x, torch.eye(3)[:, :2])  # channel means 2: centred (1, -1, 0)
        tensor([[ 0.7071, -0.7071],
                [-0.7071,  0.7071]])
    """
    _check_embedding_inputs(features, projection, "features")
    return _embed(features, projection)


def _bilinear_logits(embeddings: Tensor, weight: Tensor, memory: Tensor | None) -> Tensor:
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        dtype = torch.promote_types(_compute_dtype(weight), embeddings.dtype)
        z = embeddings.to(dtype)
        partners = z if memory is None else torch.cat([z, memory.to(dtype)], dim=0)
        return (z @ weight.to(dtype)) @ partners.T


def _check_logit_inputs(
    embeddings: Tensor, weight: Tensor, memory_embeddings: Tensor | None
) -> dict[str, int]:
    check_tensor(embeddings, "embeddings")
    check_tensor(weight, "weight")
    check_dtype(embeddings, "embeddings", ("float",))
    check_dtype(weight, "weight", ("float",))
    dims = check_shape(embeddings, "embeddings", ("n", "d"))
    check_shape(weight, "weight", ("d", "d"), dims)
    if memory_embeddings is not None:
        check_tensor(memory_embeddings, "memory_embeddings")
        check_dtype(memory_embeddings, "memory_embeddings", ("float",))
        check_shape(memory_embeddings, "memory_embeddings", ("K", "d"), dims)
    return dims


def conditioned_graph_logits(
    embeddings: Tensor, weight: Tensor, memory_embeddings: Tensor | None = None
) -> Tensor:
    r"""Logits of the input-conditioned sample graph: a learned bilinear similarity.

    :math:`\theta_{uv} = z_u^\top W z_v` for the descriptors ``z`` of :func:`graph_embedding`,
    ``v`` over the batch and then the memory. ``W = 0`` gives equal logits, i.e. exactly the
    uniform graph after :func:`normalize_graph`. The logit of a pair depends only on the two
    images, so permuting the batch permutes the logits: ``theta(z[pi]) = pi theta(z) pi^T``.

    Args:
        embeddings: ``(n, d)`` descriptors of the batch.
        weight: ``(d, d)`` ``W`` (need not be symmetric: ``u`` ranks its partners).
        memory_embeddings: ``(K, d)`` descriptors of the memory partners.

    Returns:
        ``(n, n + K)`` logits.

    Example:
        >>> import torch
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> conditioned_graph_logits(z, torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        tensor([[2., 0.],
                [0., 1.]])
    """
    _check_logit_inputs(embeddings, weight, memory_embeddings)
    return _bilinear_logits(embeddings, weight, memory_embeddings)


def _check_sample_memory(
    memory_embeddings: Tensor | None, memory_valid: Tensor | None, d: int
) -> int:
    if memory_embeddings is None:
        if memory_valid is not None:
            raise CCGShapeError(
                "`memory_valid` is only used with `memory_embeddings`, got it without them."
            )
        return 0
    check_tensor(memory_embeddings, "memory_embeddings")
    check_dtype(memory_embeddings, "memory_embeddings", ("float",))
    dims = check_shape(memory_embeddings, "memory_embeddings", ("K", "d"), {"d": d})
    _check_memory_valid(memory_valid, dims["K"])
    return dims["K"]


def _sample_graph(
    embeddings: Tensor,
    weight: Tensor,
    memory_embeddings: Tensor | None,
    memory_valid: Tensor | None,
    parametrization: GraphParametrization = "softmax",
) -> Tensor:
    n = embeddings.shape[0]
    logits = _bilinear_logits(embeddings, weight, memory_embeddings)
    if memory_embeddings is None:
        return _normalize(logits, parametrization)
    valid = _columns_valid(n, memory_valid, memory_embeddings.shape[0], logits.device)
    return _normalize(logits, parametrization, valid=valid)


def sample_graph(
    features: Tensor,
    weight: Tensor,
    projection: Tensor,
    *,
    memory_embeddings: Tensor | None = None,
    memory_valid: Tensor | None = None,
) -> Tensor:
    r"""The input-conditioned sample graph ``G`` of ``L_IR`` (paper Eq. 4) for a batch.

    ``G = normalize_graph(conditioned_graph_logits(graph_embedding(features, projection),
    weight, memory_embeddings))``: row ``u`` gives the self-pair ``1/N`` (``N = n + K_valid``)
    and shares the rest among ``u``'s partners (the other images of the batch and the valid
    memory slots) by a softmax of the learned bilinear similarity of their descriptors. It is
    the graph :func:`conditioned_sample_graph_loss` uses, for reading or plotting.

    Args:
        features: ``(n, C, ...)`` feature maps of the batch.
        weight: ``(d, d)`` bilinear weight ``W`` (zeros: the uniform graph).
        projection: ``(C, d)`` fixed projection of :func:`graph_embedding`.
        memory_embeddings: ``(K, d)`` descriptors of the memory partners (from
            :func:`graph_embedding` of their maps).
        memory_valid: ``(K,)`` bool, the filled memory slots; ``None`` for all.

    Returns:
        ``(n, n + K)`` weights, rows summing to 1, no weight on invalid slots.

    Example:
        >>> import torch
        >>> g = sample_graph(torch.randn(2, 8, 4, 4), torch.zeros(4, 4), torch.randn(8, 4),
        ...                  memory_embeddings=torch.randn(3, 4),
        ...                  memory_valid=torch.tensor([True, True, False]))
        >>> g  # W = 0: uniform over the 2 + 2 valid columns
        tensor([[0.2500, 0.2500, 0.2500, 0.2500, 0.0000],
                [0.2500, 0.2500, 0.2500, 0.2500, 0.0000]])
    """
    dims = _check_embedding_inputs(features, projection, "features")
    check_tensor(weight, "weight")
    check_dtype(weight, "weight", ("float",))
    check_shape(weight, "weight", ("d", "d"), dims)
    _check_sample_memory(memory_embeddings, memory_valid, dims["d"])
    return _sample_graph(_embed(features, projection), weight, memory_embeddings, memory_valid)


def conditioned_sample_graph_loss(
    features: Tensor,
    weight: Tensor,
    projection: Tensor,
    *,
    memory_features: Tensor | None = None,
    memory_embeddings: Tensor | None = None,
    memory_valid: Tensor | None = None,
    image_labels: Tensor | None = None,
    memory_image_labels: Tensor | None = None,
    margin: float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""``L_IR`` (paper Eq. 4) with the input-conditioned sample graph of :func:`sample_graph`.

    :math:`L_{IR} = \sum_{u} \sum_{v} G(u, v)\, D(F_u, F_v) / n^2`, ``u`` over the ``n``
    images of the batch (the anchors), ``v`` over the batch and the ``K`` memory partners
    (earlier images, detached: they receive no gradient). ``G(u, v)`` is a function of images
    ``u`` and ``v`` only, so the loss does not depend on the order of the batch.
    ``image_labels`` with ``margin`` give the contrast form (beyond the paper), as in
    :func:`sample_graph_loss`.

    Args:
        features: ``(n, C, ...)`` feature maps of the batch.
        weight: ``(d, d)`` bilinear weight.
        projection: ``(C, d)`` fixed projection.
        memory_features: ``(K, C, ...)`` feature maps of the memory partners.
        memory_embeddings: ``(K, d)`` their descriptors; required with ``memory_features``.
        memory_valid: ``(K,)`` bool, the filled slots; ``None`` for all.
        image_labels: ``(n, C)`` multi-hot labels for the contrast form; ``None`` for pull.
        memory_image_labels: ``(K, C)`` the memory's labels; required with both.
        margin: Contrast margin (finite, > 0); required with ``image_labels``.
        reduction: ``"mean"`` (``/ n^2``), ``"sum"`` or ``"none"`` (the ``(n, n + K)`` terms).

    Returns:
        Scalar, or ``(n, n + K)``; float32 at least.

    Raises:
        CCGShapeError: Mismatched shapes, an empty batch, memory maps without descriptors.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Non-finite features or a bad ``reduction``.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 8, 4, 4)
        >>> loss = conditioned_sample_graph_loss(x, torch.zeros(4, 4), torch.randn(8, 4))
        >>> torch.allclose(loss, pairwise_distance(x).sum() / 8)  # W = 0: G = 1/2
        True
    """
    reduction = check_reduction(reduction)
    dims = _check_embedding_inputs(features, projection, "features")
    check_tensor(weight, "weight")
    check_dtype(weight, "weight", ("float",))
    check_shape(weight, "weight", ("d", "d"), dims)
    if (memory_features is None) != (memory_embeddings is None):
        raise CCGShapeError(
            "`memory_features` and `memory_embeddings` go together (the maps for the "
            "distances, the descriptors for the graph), got only one of them."
        )
    K = _check_sample_memory(memory_embeddings, memory_valid, dims["d"])
    if (
        memory_features is not None
        and _check_memory_features(memory_features, features, "memory_features") != K
    ):
        raise CCGShapeError(
            f"`memory_features` must hold K={K} maps like `memory_embeddings`, got shape "
            f"{tuple(memory_features.shape)}."
        )
    y, m = _check_contrast_args(
        image_labels,
        margin,
        int(features.shape[0]),
        memory_image_labels,
        K,
        memory_features is not None,
    )
    if features.shape[0] == 1 and K == 0:
        check_finite(features, "features")
    alike = None if y is None else _batch_alike(y, memory_image_labels)
    return _conditioned_loss(
        features,
        weight,
        projection,
        memory_features,
        memory_embeddings,
        memory_valid,
        reduction,
        alike,
        m,
    )[0]


def _conditioned_loss(
    features: Tensor,
    weight: Tensor,
    projection: Tensor,
    memory_features: Tensor | None,
    memory_embeddings: Tensor | None,
    memory_valid: Tensor | None,
    reduction: Reduction,
    alike: Tensor | None = None,
    margin: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel: the loss, the batch's descriptors (for the memory) and the graph."""
    z = _embed(features, projection)
    graph = _sample_graph(z, weight, memory_embeddings, memory_valid)
    return _graph_loss(features, graph, memory_features, reduction, alike, margin), z, graph


# --------------------------------------------------------------------------- superpixels, hashing


def _check_labels(labels: Tensor, name: str, n: int) -> tuple[int, int]:
    check_tensor(labels, name)
    check_dtype(labels, name, ("int",))
    dims = {"N": n}
    check_shape(labels, name, ("N", "H", "W"), dims)
    return dims["H"], dims["W"]


def _superpixel_pool(x: Tensor, labels: Tensor, m: int) -> tuple[Tensor, Tensor]:
    N, C, h, w = x.shape
    H, W = labels.shape[1], labels.shape[2]
    lab = labels.to(device=x.device, dtype=torch.int64)
    if h > H:  # coarser labels than the grid: nearest upsampling, label row r * H // h
        lab = lab[:, torch.div(torch.arange(h, device=x.device) * H, h, rounding_mode="floor")]
        H = h
    if w > W:
        lab = lab[:, :, torch.div(torch.arange(w, device=x.device) * W, w, rounding_mode="floor")]
        W = w
    rows = torch.div(torch.arange(H, device=x.device) * h, H, rounding_mode="floor")
    cols = torch.div(torch.arange(W, device=x.device) * w, W, rounding_mode="floor")
    cell = rows[:, None] * w + cols[None, :]  # (H, W) index of the grid cell of each pixel
    index = (lab * (h * w) + cell).reshape(N, H * W)
    dtype = _compute_dtype(x)
    counts = torch.zeros(N, m * h * w, device=x.device, dtype=dtype)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=dtype))
    counts = counts.reshape(N, m, h * w)
    area = counts.sum(dim=2)  # (N, m)
    valid = area > 0
    assign = counts / area.clamp(min=1.0)[..., None]
    with torch.autocast(device_type=x.device.type, enabled=False):
        pooled = torch.bmm(assign, x.reshape(N, C, h * w).to(dtype).transpose(1, 2))
    return pooled, valid


def superpixel_pool(x: Tensor, labels: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    """Mean of a feature map over each superpixel (patch), for a whole batch in one scatter.

    ``labels`` may have any resolution: every label pixel is assigned to the cell of ``x``'s
    ``(h, w)`` grid it falls in (labels smaller than the grid are first upsampled, nearest), so
    cell ``(r, c)`` belongs to segment ``l`` with the fraction of its label pixels labelled
    ``l``, and the patch mean is the area-weighted mean of the cells. Pass labels at SLIC's
    working size (e.g. 128x128): pooling them is cheaper than pooling full-size labels.

    Args:
        x: ``(N, C, h, w)`` feature map (or the image itself).
        labels: ``(N, H, W)`` integer segment labels in ``[0, num_segments)``.
        num_segments: ``m``.

    Returns:
        ``(pooled, valid)``: ``(N, m, C)`` means (0 where invalid) and ``(N, m)`` bool, false
        for a segment that covers no pixel of the labels.

    Raises:
        CCGShapeError: Wrong ranks or mismatched ``N``.
        CCGDTypeError: Non-floating ``x`` or non-integer ``labels``.
        CCGValueRangeError: Labels outside ``[0, num_segments)`` or ``num_segments < 1``.

    Example:
        >>> import torch
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> labels = torch.tensor([[[0, 0], [1, 1]]])
        >>> pooled, valid = superpixel_pool(x, labels, 3)
        >>> pooled[0, :, 0], valid
        (tensor([0.5000, 2.5000, 0.0000]), tensor([[ True,  True, False]]))
    """
    check_tensor(x, "x")
    check_dtype(x, "x", ("float",))
    dims = check_shape(x, "x", ("N", "C", "h", "w"))
    if not isinstance(num_segments, int) or num_segments < 1:
        raise CCGValueRangeError(f"`num_segments` must be a positive int, got {num_segments!r}.")
    _check_labels(labels, "labels", dims["N"])
    check_index(labels, "labels", num_segments)
    return _superpixel_pool(x, labels, num_segments)


def _hash_codes(x: Tensor, projection: Tensor) -> Tensor:
    with torch.autocast(device_type=x.device.type, enabled=False), torch.no_grad():
        dtype = torch.promote_types(_compute_dtype(x), projection.dtype)
        z = x.detach().to(dtype) @ projection.to(dtype)
        return torch.where(z >= 0, 1.0, -1.0).to(dtype)


def hash_codes(x: Tensor, projection: Tensor) -> Tensor:
    """Binary codes ``sign(x @ projection)`` in ``{-1, +1}`` (sign of 0 is ``+1``).

    With a fixed Gaussian ``projection`` this is SimHash: the Hamming distance between two
    codes estimates the angle between the inputs. The codes carry no gradient.

    Args:
        x: ``(..., D)`` descriptors (e.g. patch means from :func:`superpixel_pool`).
        projection: ``(D, bits)`` fixed random projection (a buffer of the module).

    Returns:
        ``(..., bits)`` float codes of ``+1``/``-1``.

    Example:
        >>> import torch
        >>> hash_codes(torch.tensor([[1.0, -2.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        tensor([[ 1., -1.]])
    """
    check_tensor(x, "x")
    check_tensor(projection, "projection")
    check_dtype(x, "x", ("float",))
    check_dtype(projection, "projection", ("float",))
    dims = check_shape(x, "x", ("D",), leading=True)
    check_shape(projection, "projection", ("D", "bits"), dims)
    return _hash_codes(x, projection)


def _patch_codes(hash_input: Tensor, labels: Tensor, projection: Tensor, m: int) -> Tensor:
    pooled, valid = _superpixel_pool(hash_input.detach(), labels, m)
    return _hash_codes(pooled, projection) * valid[..., None]


def _check_hash_input(hash_input: Tensor, name: str, projection: Tensor) -> dict[str, int]:
    """``hash_input`` ``(n, C_hash, h, w)`` against the ``(C_hash, bits)`` projection."""
    check_tensor(hash_input, name)
    check_dtype(hash_input, name, ("float",))
    check_tensor(projection, "projection")
    check_dtype(projection, "projection", ("float",))
    dims = check_shape(hash_input, name, ("n", "C_hash", "h", "w"))
    pdims = check_shape(projection, "projection", ("C", "bits"))
    if dims["C_hash"] != pdims["C"]:
        raise CCGShapeError(
            f"`{name}` must have C_hash={pdims['C']} channels (the rows of `projection`), "
            f"got shape {tuple(hash_input.shape)}."
        )
    if dims["n"] == 0:
        raise CCGShapeError(
            f"`{name}` must hold at least 1 image (n, C_hash, h, w), got shape "
            f"{tuple(hash_input.shape)} (an empty batch)."
        )
    return {"n": dims["n"], "bits": pdims["bits"]}


def patch_codes(hash_input: Tensor, labels: Tensor, projection: Tensor, num_patches: int) -> Tensor:
    """The patch codes of each image: pooled superpixels, hashed (paper Eq. 7's inputs).

    :func:`superpixel_pool` of ``hash_input`` over the ``num_patches`` superpixels of
    ``labels``, then :func:`hash_codes`; a segment that covers no pixel gets the zero code
    (distance ``bits/2`` to every code). No gradient. This is what a memory of partners keeps
    of each earlier image for the patch graph.

    Args:
        hash_input: ``(n, C_hash, h, w)`` what the patches are pooled from.
        labels: ``(n, H, W)`` superpixel labels in ``[0, num_patches)``.
        projection: ``(C_hash, bits)`` fixed hashing projection.
        num_patches: ``m``.

    Returns:
        ``(n, m, bits)`` codes in ``{-1, 0, +1}``.

    Example:
        >>> import torch
        >>> labels = torch.tensor([[[0, 0], [1, 1]]])
        >>> patch_codes(torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]]]), labels,
        ...             torch.ones(1, 2), 3)
        tensor([[[ 1.,  1.],
                 [-1., -1.],
                 [ 0.,  0.]]])
    """
    dims = _check_hash_input(hash_input, "hash_input", projection)
    if not isinstance(num_patches, int) or num_patches < 1:
        raise CCGValueRangeError(f"`num_patches` must be a positive int, got {num_patches!r}.")
    _check_labels(labels, "labels", dims["n"])
    check_index(labels, "labels", num_patches)
    return _patch_codes(hash_input, labels, projection, num_patches)


def _check_codes(codes: Tensor, name: str, allow_zero: bool = False, ints: bool = False) -> None:
    check_tensor(codes, name)
    check_dtype(codes, name, ("float", "int") if ints else ("float",))
    if not values_checkable() or codes.numel() == 0:
        return
    ok = (codes == 1) | (codes == -1)
    if allow_zero:
        ok |= codes == 0
    if not bool(ok.all()):
        bad = codes[~ok].flatten()[0].item()
        allowed = "-1, 0 (missing patch) and +1" if allow_zero else "-1 and +1"
        raise CCGValueRangeError(f"`{name}` must hold only {allowed}, got e.g. {bad}.")


def hamming_distance(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distances between all codes of ``a`` and all codes of ``b`` as one matmul.

    For ``±1`` codes of ``bits`` bits, ``hamming(x, y) = (bits - x.y) / 2`` (paper Eq. 7).
    Exact integers (computed in float32 at least, outside autocast).

    Args:
        a: ``(..., m, bits)`` codes in ``{-1, +1}``.
        b: ``(..., m', bits)`` codes, leading dimensions broadcastable with ``a``'s.

    Returns:
        ``(..., m, m')`` float distances in ``[0, bits]``.

    Example:
        >>> import torch
        >>> a = torch.tensor([[1.0, 1.0, -1.0]])
        >>> b = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]])
        >>> hamming_distance(a, b)
        tensor([[0., 2.]])
    """
    _check_codes(a, "a")
    _check_codes(b, "b")
    dims = check_shape(a, "a", ("m", "bits"), leading=True)
    check_shape(b, "b", ("m'", "bits"), dims, leading=True)
    try:
        torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])  # type: ignore[no-untyped-call]
    except RuntimeError:
        raise CCGShapeError(
            f"`b`'s leading dimensions {tuple(b.shape[:-2])} must broadcast with `a`'s "
            f"{tuple(a.shape[:-2])}."
        ) from None
    with torch.autocast(device_type=a.device.type, enabled=False):
        dtype = torch.promote_types(_compute_dtype(a), b.dtype)
        dot = a.to(dtype) @ b.to(dtype).transpose(-1, -2)
        return (dims["bits"] - dot) / 2


def _patch_scores(
    codes: Tensor, others: Tensor, weight: Tensor, bias: Tensor | None, *, pairs: bool = False
) -> Tensor:
    """Scores of ``W_l``: ``(n, J)`` for all ``codes`` x ``others``, ``(P,)`` for pairs.

    With ``pairs=True`` the pairs are ``(codes[p], others[p])``.
    """
    bits = codes.shape[-1]
    with torch.autocast(device_type=codes.device.type, enabled=False):
        dtype = _compute_dtype(weight)
        w = weight.to(dtype)
        weighted = torch.einsum("ij,vjk->vik", w, others.to(dtype))  # (J, m, bits)
        a = codes.to(dtype)
        if pairs:
            dot = torch.einsum("pik,pik->p", a, weighted)
        else:
            dot = torch.einsum("uik,vik->uv", a, weighted)
        scores = 0.5 * w.sum() - dot / (2.0 * bits)
        return scores if bias is None else scores + bias.to(dtype)


def patch_graph_logits(
    codes: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    codes_b: Tensor | None = None,
) -> Tensor:
    r"""Fully-connected layer on the patch Hamming graphs of image pairs (paper Eq. 6-7).

    For images ``u, v`` with ``m`` patch codes each, :math:`G_l(u,v)_{ij}` is the Hamming
    distance between patch ``i`` of ``u`` and patch ``j`` of ``v`` divided by ``bits`` (Eq. 7,
    scaled into ``[0, 1]``), and the pair score is
    :math:`s(u, v) = \sum_{ij} W_{ij}\, G_l(u,v)_{ij} + b` (Eq. 6, ``W_l`` as an ``(m, m)``
    weight). The layer is linear in the Hamming graph, so the ``(n, n, m, m)`` tensor of graphs
    is never formed: :math:`s = b + \tfrac12 \sum W - \tfrac{1}{2\,\mathrm{bits}} \sum_{i,k}
    a_{uik} (W b_v)_{ik}`, two einsums. A code of all zeros marks a missing patch (distance
    ``bits/2`` to everything, i.e. 0.5). The bias only matters for the literal ``"free"``
    graph: a softmax over partners does not see it, so the modules drop it there.

    Args:
        codes: ``(n, m, bits)`` codes in ``{-1, 0, +1}``.
        weight: ``(m, m)`` ``W_l``.
        bias: ``()`` bias of ``W_l``; ``None`` for none.
        codes_b: ``None`` to score all ``n x n`` pairs of ``codes``; or ``(P, m, bits)`` to
            score the explicit pairs ``(codes[p], codes_b[p])`` (then ``codes`` is ``(P, ...)``).

    Returns:
        ``(n, n)`` scores, or ``(P,)`` with ``codes_b``.

    Example:
        >>> import torch
        >>> codes = torch.tensor([[[1.0, 1.0]], [[1.0, -1.0]]])  # 2 images, 1 patch, 2 bits
        >>> patch_graph_logits(codes, torch.ones(1, 1))
        tensor([[0.0000, 0.5000],
                [0.5000, 0.0000]])
    """
    _check_codes(codes, "codes", allow_zero=True)
    dims = check_shape(codes, "codes", ("n", "m", "bits"))
    check_tensor(weight, "weight")
    check_dtype(weight, "weight", ("float",))
    check_shape(weight, "weight", ("m", "m"), dims)
    if bias is not None:
        check_tensor(bias, "bias")
        check_dtype(bias, "bias", ("float",))
        check_shape(bias, "bias", ())
    if codes_b is None:
        return _patch_scores(codes, codes, weight, bias)
    _check_codes(codes_b, "codes_b", allow_zero=True)
    check_shape(codes_b, "codes_b", ("n", "m", "bits"), dims)
    return _patch_scores(codes, codes_b, weight, bias, pairs=True)


def _patch_graph(
    codes: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    codes_b: Tensor | None,
    memory_codes: Tensor | None,
    memory_valid: Tensor | None,
    parametrization: GraphParametrization,
) -> Tensor:
    """Kernel of :func:`patch_hash_graph` from the codes."""
    n = codes.shape[0]
    if codes_b is None:
        if memory_codes is None:
            return _normalize(_patch_scores(codes, codes, weight, bias), parametrization)
        others = torch.cat([codes, memory_codes.to(codes.dtype)], dim=0)
        valid = _columns_valid(n, memory_valid, memory_codes.shape[0], codes.device)
        scores = _patch_scores(codes, others, weight, bias)
        return _normalize(scores, parametrization, valid=valid)
    own = _patch_scores(codes, codes_b, weight, bias, pairs=True)
    if memory_codes is None:
        return _normalize(own, parametrization, pairs=True)
    mem = _patch_scores(codes, memory_codes, weight, bias)
    valid = _columns_valid(1, memory_valid, memory_codes.shape[0], codes.device)
    return _normalize(
        torch.cat([own[:, None], mem], dim=1), parametrization, pairs=True, valid=valid
    )


def _check_patch_memory(
    memory_codes: Tensor | None, memory_valid: Tensor | None, m: int, bits: int
) -> int:
    if memory_codes is None:
        if memory_valid is not None:
            raise CCGShapeError(
                "`memory_valid` is only used with `memory_codes`, got it without them."
            )
        return 0
    _check_codes(memory_codes, "memory_codes", allow_zero=True, ints=True)
    dims = check_shape(memory_codes, "memory_codes", ("K", "m", "bits"), {"m": m, "bits": bits})
    _check_memory_valid(memory_valid, dims["K"])
    return dims["K"]


def _check_patch_graph_args(
    hash_input: Tensor,
    hash_name: str,
    labels: Tensor,
    projection: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    hash_input_b: Tensor | None,
    hash_b_name: str,
    labels_b: Tensor | None,
    memory_codes: Tensor | None,
    memory_valid: Tensor | None,
) -> tuple[int, int, int]:
    """Validate the graph's inputs once; returns ``(n, m, K)``."""
    dims = _check_hash_input(hash_input, hash_name, projection)
    check_tensor(weight, "weight")
    check_dtype(weight, "weight", ("float",))
    wdims = check_shape(weight, "weight", ("m", "m"))
    m = wdims["m"]
    if bias is not None:
        check_tensor(bias, "bias")
        check_dtype(bias, "bias", ("float",))
        check_shape(bias, "bias", ())
    _check_labels(labels, "labels", dims["n"])
    check_index(labels, "labels", m)
    if (hash_input_b is None) != (labels_b is None):
        given, missing = (
            ("labels_b", hash_b_name) if hash_input_b is None else (hash_b_name, "labels_b")
        )
        raise CCGShapeError(f"`{missing}` is required with `{given}` (pair form), got None.")
    if hash_input_b is not None and labels_b is not None:
        bdims = _check_hash_input(hash_input_b, hash_b_name, projection)
        if bdims["n"] != dims["n"]:
            raise CCGShapeError(
                f"`{hash_b_name}` must hold P={dims['n']} images like `{hash_name}` (one per "
                f"pair), got shape {tuple(hash_input_b.shape)}."
            )
        _check_labels(labels_b, "labels_b", dims["n"])
        check_index(labels_b, "labels_b", m)
    K = _check_patch_memory(memory_codes, memory_valid, m, dims["bits"])
    return dims["n"], m, K


def patch_hash_graph(
    hash_input: Tensor,
    labels: Tensor,
    projection: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    hash_input_b: Tensor | None = None,
    labels_b: Tensor | None = None,
    memory_codes: Tensor | None = None,
    memory_valid: Tensor | None = None,
    parametrization: GraphParametrization = "softmax",
) -> Tensor:
    r"""The patch-hash graph ``G_k`` of a batch (paper Eq. 6-7), or the weights of pairs.

    Each image's ``m`` superpixel patches are mean-pooled from ``hash_input`` (any feature map
    or the image itself; no gradient flows through hashing), hashed by :func:`hash_codes`
    (a vanished patch gets a zero code, :func:`patch_codes`), the ``m x m`` Hamming graph of
    every pair of images is mapped by ``W_l`` to a pair score (:func:`patch_graph_logits`) and
    the scores become weights by :func:`normalize_graph`. Use it to share one
    :func:`pairwise_distance` between several graphs, or to read the graph;
    :func:`patch_hash_graph_loss` is this followed by the weighted distances.

    With ``memory_codes`` (the codes of ``K`` earlier images, :func:`patch_codes`) every anchor
    also scores the memory partners: all-pairs form ``(n, n + K)``; pair form ``(P, 1 + K)``,
    column 0 the pair's own partner ``b_p``, the rest the memory, normalised together.

    Args:
        hash_input: ``(n, C_hash, h, w)`` what the patches are pooled and hashed from.
        labels: ``(n, H, W)`` superpixel labels in ``[0, m)``.
        projection: ``(C_hash, bits)`` fixed hashing projection.
        weight: ``(m, m)`` weight of ``W_l``.
        bias: ``()`` bias of ``W_l`` (only seen by ``"free"``); ``None`` for none.
        hash_input_b: ``(P, C_hash, h, w)`` second images of ``P`` explicit pairs
            ``(hash_input[p], hash_input_b[p])``; ``None`` for all pairs of the batch.
        labels_b: ``(P, H, W)`` their labels; required with ``hash_input_b``.
        memory_codes: ``(K, m, bits)`` codes of the memory partners (float or int).
        memory_valid: ``(K,)`` bool, the filled slots; ``None`` for all.
        parametrization: ``"softmax"`` (default, well-posed) or ``"free"`` (literal Eq. 6).

    Returns:
        ``(n, n + K)`` graph ``G_k``; or ``(P,)`` pair weights, ``(P, 1 + K)`` with a memory.

    Raises:
        CCGShapeError: Mismatched shapes, an empty batch, or ``labels_b`` without
            ``hash_input_b`` or the other way round.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Labels out of range or a bad ``parametrization``.

    Example:
        >>> import torch
        >>> labels = torch.arange(4).repeat_interleave(4).reshape(1, 4, 4).repeat(3, 1, 1)
        >>> g = patch_hash_graph(torch.randn(3, 8, 4, 4), labels, torch.randn(8, 16),
        ...                      torch.zeros(4, 4))
        >>> g  # W_l = 0: the uniform graph 1/n
        tensor([[0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333]])
    """
    parametrization = _check_parametrization(parametrization)
    _, m, _ = _check_patch_graph_args(
        hash_input,
        "hash_input",
        labels,
        projection,
        weight,
        bias,
        hash_input_b,
        "hash_input_b",
        labels_b,
        memory_codes,
        memory_valid,
    )
    codes = _patch_codes(hash_input, labels, projection, m)
    codes_b = None
    if hash_input_b is not None and labels_b is not None:
        codes_b = _patch_codes(hash_input_b, labels_b, projection, m)
    return _patch_graph(codes, weight, bias, codes_b, memory_codes, memory_valid, parametrization)


def _patch_loss(
    features: Tensor,
    features_b: Tensor | None,
    codes: Tensor,
    codes_b: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    memory_features: Tensor | None,
    memory_codes: Tensor | None,
    memory_valid: Tensor | None,
    parametrization: GraphParametrization,
    reduction: Reduction,
    alike: Tensor | None = None,
    margin: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Kernel of :func:`patch_hash_graph_loss` from the codes: the loss and the graph.

    ``alike`` (contrast form): ``(n, n + K)``, or in the pair form ``(P,)`` / ``(P, 1 + K)``.
    """
    graph = _patch_graph(codes, weight, bias, codes_b, memory_codes, memory_valid, parametrization)
    if features_b is None:
        return _graph_loss(features, graph, memory_features, reduction, alike, margin), graph
    P = features.shape[0]
    dist = _paired_terms(features, features_b)
    if memory_features is not None:
        dist = torch.cat([dist[:, None], _cross_distance(features, memory_features)], dim=1)
    _check_distances_finite(
        dist,
        "`features_a` and `features_b`" if memory_features is None else "the features",
    )
    if alike is not None and margin is not None:
        dist = _contrast(dist, alike, margin)
    return reduce(graph.to(dist.dtype) * dist, reduction, count=P), graph


def patch_hash_graph_loss(
    features: Tensor,
    labels: Tensor,
    projection: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    hash_input: Tensor | None = None,
    features_b: Tensor | None = None,
    labels_b: Tensor | None = None,
    hash_input_b: Tensor | None = None,
    memory_features: Tensor | None = None,
    memory_codes: Tensor | None = None,
    memory_valid: Tensor | None = None,
    image_labels: Tensor | None = None,
    image_labels_b: Tensor | None = None,
    memory_image_labels: Tensor | None = None,
    margin: float | None = None,
    parametrization: GraphParametrization = "softmax",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Patch-hash graph loss ``L_IK`` (paper Eq. 5-7), and its pair form for Eq. 8-10.

    The graph ``G_k`` of :func:`patch_hash_graph` (patches hashed from ``hash_input``, default
    ``features``) weights the distances of the feature maps:
    :math:`L_{IK} = \sum_{u,v} G_k(u, v)\, D(F_u, F_v) / n^2` (:func:`sample_graph_loss`).

    Pair form (``features_b`` given): the ``P`` explicit pairs ``(features[p], features_b[p])``,
    e.g. the attended maps ``F'_u, F'_v`` of cross-image attention (Eq. 8-10), each with its own
    labels; :math:`\sum_p w_p D(F'_{u,p}, F'_{v,p}) / P` (:func:`paired_sample_loss`).

    Memory (``memory_features`` with ``memory_codes``): ``K`` earlier maps and their codes are
    extra partners of every anchor (``features[u]``, or ``features[p]`` in the pair form):
    :math:`\sum_u \sum_{v \in \text{batch} \cup \text{memory}} G_k(u, v) D(F_u, F_v) / n^2`,
    resp. :math:`\sum_p [w_{p0} D(F'_{u,p}, F'_{v,p}) + \sum_k w_{pk} D(F'_{u,p}, M_k)] / P`.
    The memory gets no gradient.

    Contrast form (beyond the paper; ``image_labels`` with ``margin``): every distance ``D``
    becomes :func:`contrast_distances`' ``s D + (1 - s) max(0, m - D)``; ``s`` from
    :func:`alike_pairs` for all pairs, per pair ``s(u_p, v_p)`` from ``image_labels[p]`` and
    ``image_labels_b[p]`` in the pair form, and between the anchor and each memory entry.

    Args:
        features: ``(n, C, h, w)`` feature maps whose distances are weighted.
        labels: ``(n, H, W)`` superpixel labels in ``[0, m)``.
        projection: ``(C_hash, bits)`` fixed hashing projection.
        weight: ``(m, m)`` weight of ``W_l``.
        bias: ``()`` bias of ``W_l`` (only seen by ``"free"``); ``None`` for none.
        hash_input: ``(n, C_hash, h', w')`` what the patches are hashed from; ``None`` for
            ``features``.
        features_b: ``(P, C, h, w)`` second maps of the explicit pairs (then ``n = P``).
        labels_b: ``(P, H, W)`` labels of the second images; required with ``features_b``.
        hash_input_b: Like ``hash_input`` for the second images.
        memory_features: ``(K, C, h, w)`` maps of the memory partners.
        memory_codes: ``(K, m, bits)`` their codes; required with ``memory_features``.
        memory_valid: ``(K,)`` bool, the filled slots; ``None`` for all.
        image_labels: ``(n, C)`` multi-hot image labels (float 0/1 or bool) of the images of
            ``features``: the contrast form; ``None`` (default) for the paper's pull form.
        image_labels_b: ``(P, C)`` those of the second images; required in the pair form.
        memory_image_labels: ``(K, C)`` those of the memory; required with a memory.
        margin: Contrast margin (finite, > 0), in the distances' units; required with
            ``image_labels``.
        parametrization: ``"softmax"`` (default, well-posed) or ``"free"`` (literal Eq. 6).
        reduction: ``"mean"`` (Eq. 5, ``/n^2``; ``/P`` for pairs), ``"sum"`` or ``"none"``.

    Returns:
        Scalar, or with ``reduction="none"`` the terms: ``(n, n + K)``; ``(P,)`` for pairs
        (``(P, 1 + K)`` with a memory).

    Raises:
        CCGShapeError: Mismatched shapes, an empty batch, or ``labels_b`` missing.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Labels out of range, bad ``reduction`` or ``parametrization``.

    Example:
        >>> import torch
        >>> feats = torch.randn(3, 8, 4, 4)
        >>> labels = torch.arange(4).repeat_interleave(4).reshape(1, 4, 4).repeat(3, 1, 1)
        >>> proj, w = torch.randn(8, 16), torch.zeros(4, 4)
        >>> loss = patch_hash_graph_loss(feats, labels, proj, w)
        >>> bool(loss > 0), loss.shape
        (True, torch.Size([]))
    """
    reduction = check_reduction(reduction)
    parametrization = _check_parametrization(parametrization)
    _check_batch(features, "features", min_dim=4, what="(n, C, h, w)")
    dims = check_shape(features, "features", ("n", "C", "h", "w"))
    if features_b is None:
        if labels_b is not None or hash_input_b is not None:
            raise CCGShapeError(
                "`labels_b` and `hash_input_b` are only used with `features_b` (pair form), "
                "got them without `features_b`."
            )
    else:
        check_tensor(features_b, "features_b")
        check_dtype(features_b, "features_b", ("float",))
        check_shape(features_b, "features_b", ("n", "C", "h", "w"), dims)
        if labels_b is None:
            raise CCGShapeError("`labels_b` is required with `features_b` (pair form), got None.")
    if (memory_features is None) != (memory_codes is None):
        raise CCGShapeError(
            "`memory_features` and `memory_codes` go together (the maps for the distances, "
            "the codes for the graph), got only one of them."
        )
    src = features if hash_input is None else hash_input
    src_b = features_b if hash_input_b is None else hash_input_b
    _, m, K = _check_patch_graph_args(
        src,
        "features" if hash_input is None else "hash_input",
        labels,
        projection,
        weight,
        bias,
        src_b if features_b is not None else None,
        "features_b" if hash_input_b is None else "hash_input_b",
        labels_b if features_b is not None else None,
        memory_codes,
        memory_valid,
    )
    if (
        memory_features is not None
        and _check_memory_features(memory_features, features, "memory_features") != K
    ):
        raise CCGShapeError(
            f"`memory_features` must hold K={K} maps like `memory_codes`, got shape "
            f"{tuple(memory_features.shape)}."
        )
    y, margin_ = _check_contrast_args(
        image_labels,
        margin,
        int(features.shape[0]),
        memory_image_labels,
        K,
        memory_features is not None,
    )
    alike = None
    if y is not None:
        alike = _contrast_alike(y, image_labels_b, memory_image_labels, features_b is not None)
    elif image_labels_b is not None:
        raise CCGShapeError(
            "`image_labels` is required with `image_labels_b` (the contrast form), got None."
        )
    if features.shape[0] == 1 and K == 0 and features_b is None:
        check_finite(features, "features")
    codes = _patch_codes(src, labels, projection, m)
    codes_b = None
    if src_b is not None and labels_b is not None and features_b is not None:
        codes_b = _patch_codes(src_b, labels_b, projection, m)
    return _patch_loss(
        features,
        features_b,
        codes,
        codes_b,
        weight,
        bias,
        memory_features,
        memory_codes,
        memory_valid,
        parametrization,
        reduction,
        alike,
        margin_,
    )[0]


def _contrast_alike(
    labels: Tensor, labels_b: Tensor | None, memory_labels: Tensor | None, pairs: bool
) -> Tensor:
    """Check ``image_labels_b`` against the form and build the ``alike`` of :func:`_patch_loss`."""
    if not pairs:
        if labels_b is not None:
            raise CCGShapeError(
                "`image_labels_b` is only used in the pair form (with `features_b`), got it "
                "without `features_b`."
            )
        return _batch_alike(labels, memory_labels)
    if labels_b is None:
        raise CCGShapeError(
            "`image_labels_b` is required with `image_labels` in the pair form, got None."
        )
    _check_image_labels(labels_b, "image_labels_b", n=int(labels.shape[0]), c=int(labels.shape[1]))
    return _pair_alike(labels, labels_b, memory_labels)


# --------------------------------------------------------------------------- memory


def _enqueue(
    memory: Sequence[Tensor], pointer: Tensor, count: Tensor, entries: Sequence[Tensor]
) -> None:
    size = memory[0].shape[0]
    n = entries[0].shape[0]
    keep = min(n, size)  # a batch larger than the queue: only its last `size` entries stay
    with torch.no_grad():
        steps = torch.arange(n - keep, n, device=pointer.device)
        index = torch.remainder(pointer + steps, size)
        for buf, entry in zip(memory, entries, strict=True):
            buf.index_copy_(0, index.to(buf.device), entry[n - keep :].detach().to(buf.dtype))
        pointer.copy_(torch.remainder(pointer + n, size))
        count.copy_(torch.clamp(count + n, max=size))


def memory_enqueue_(
    memory: Sequence[Tensor], pointer: Tensor, count: Tensor, entries: Sequence[Tensor]
) -> None:
    """Push a batch into a FIFO memory of partners, in place, without a host synchronisation.

    ``memory`` are parallel queues of ``S`` slots (e.g. feature maps and their codes),
    ``pointer`` the next slot to write and ``count`` how many slots are filled (``()`` int64
    tensors). The ``n`` entries go to slots ``pointer, pointer + 1, ...`` modulo ``S`` with
    one ``index_copy_`` per queue (the oldest are overwritten); with ``n > S`` only the last
    ``S`` stay. Detached; converted to each queue's dtype.

    Args:
        memory: Queues, each ``(S, ...)``.
        pointer: ``()`` int64, updated to ``(pointer + n) % S``.
        count: ``()`` int64, updated to ``min(count + n, S)``.
        entries: One ``(n, ...)`` tensor per queue.

    Example:
        >>> import torch
        >>> queue, ptr, count = torch.zeros(3, 1), torch.tensor(2), torch.tensor(0)
        >>> memory_enqueue_([queue], ptr, count, [torch.tensor([[1.0], [2.0]])])
        >>> queue.flatten(), ptr, count
        (tensor([2., 0., 1.]), tensor(1), tensor(2))
    """
    if not memory or len(memory) != len(entries):
        raise CCGShapeError(
            f"`entries` must hold one tensor per queue of `memory` ({len(memory)}), got "
            f"{len(entries)}."
        )
    for name, t in (("pointer", pointer), ("count", count)):
        check_tensor(t, name)
        check_dtype(t, name, ("int",))
        check_shape(t, name, ())
    size = int(check_tensor(memory[0], "memory[0]").shape[0])
    n = int(check_tensor(entries[0], "entries[0]").shape[0])
    for i, (buf, entry) in enumerate(zip(memory, entries, strict=True)):
        check_tensor(buf, f"memory[{i}]")
        check_tensor(entry, f"entries[{i}]")
        if buf.shape[0] != size or size == 0:
            raise CCGShapeError(
                f"`memory[{i}]` must have S={size} >= 1 slots like `memory[0]`, got shape "
                f"{tuple(buf.shape)}."
            )
        if tuple(entry.shape) != (n, *buf.shape[1:]):
            raise CCGShapeError(
                f"`entries[{i}]` must have shape (n, {', '.join(map(str, buf.shape[1:]))}) "
                f"with n={n}, got shape {tuple(entry.shape)}."
            )
    _enqueue(memory, pointer, count, entries)
