r"""The shared distance core of the relation losses (paper Eq. 4, 5 and the pairs of Eq. 8-10).

All relation losses weight the Euclidean distances ``D(F_u, F_v)`` between the feature maps of
a batch by a graph ``G`` and average: :math:`\sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2`. This file
holds the public :func:`pairwise_distance`, :func:`sample_graph_loss` and
:func:`paired_sample_loss`, and the kernels the graph files build on:
:func:`distance_matrix` (the batch and ``K`` memory partners), :func:`pair_distances`,
:func:`weighted_distance_loss`, :func:`weighted_pair_loss`, and the one finiteness rule
(:func:`check_finite_through_distances`). A kernel takes validated inputs (its caller's public
function validated them) and checks nothing but that rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ccg_layers.config import values_checkable
from ccg_layers.contrast import batch_alike, check_contrast_args, contrast_costs
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.validation import (
    Reduction,
    check_batch,
    check_dtype,
    check_finite,
    check_reduction,
    check_shape,
    check_tensor,
    reduce,
)

__all__ = [
    "check_finite_through_distances",
    "check_memory_features",
    "compute_dtype",
    "distance_matrix",
    "pair_distances",
    "paired_sample_loss",
    "pairwise_distance",
    "safe_sqrt",
    "sample_graph_loss",
    "weighted_distance_loss",
    "weighted_distance_losses",
    "weighted_pair_loss",
]


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a relation kernel computes in: ``x``'s, float32 at least."""
    return torch.promote_types(x.dtype, torch.float32)


def safe_sqrt(sq: Tensor) -> Tensor:
    """``sqrt(max(sq, 0))`` whose gradient is 0 (not infinite) where ``sq <= tiny``; NaN stays."""
    tiny = torch.finfo(sq.dtype).tiny
    positive = (sq > tiny) | sq.isnan()
    return torch.where(positive, sq.clamp(min=tiny).sqrt(), torch.zeros_like(sq))


def _pairwise(features: Tensor) -> Tensor:
    n = features.shape[0]
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.reshape(n, -1).to(compute_dtype(features))
        x = x - x.mean(dim=0, keepdim=True)
        gram = x @ x.T
        gram = 0.5 * (gram + gram.T)  # exactly symmetric whatever the BLAS kernel
        sq_norm = gram.diagonal()
        sq = sq_norm[:, None] + sq_norm[None, :] - 2.0 * gram
        sq = sq.masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), 0.0)
        return safe_sqrt(sq)


def _cross(features: Tensor, others: Tensor) -> Tensor:
    """``(n, K)`` distances from each sample to each of ``K`` other (detached) samples.

    Direct differences (``torch.cdist`` without the matmul form): with ``n * K`` small this is
    one pass over the memory without the centred copies a Gram form needs, and exact. The
    memory is read, not copied (converted only where its dtype is not the compute dtype): the
    backward needs its values, so a caller that updates it in place before the backward passes
    a copy (:meth:`~ccg_layers.memory.PartnerMemory.memory_inputs`).
    """
    n, K = features.shape[0], others.shape[0]
    with torch.autocast(device_type=features.device.type, enabled=False):
        dtype = torch.promote_types(compute_dtype(features), others.dtype)
        x = features.reshape(1, n, -1).to(dtype)
        y = others.detach().reshape(1, K, x.shape[2]).to(dtype)
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")[0]


def distance_matrix(features: Tensor, memory: Tensor | None = None) -> Tensor:
    """Kernel: ``(n, n)`` distances of the batch, or ``(n, n + K)`` with the memory's after.

    The batch block is :func:`pairwise_distance`'s Gram form, the memory block direct
    differences (exact, one pass over the memory, no gradient to it). Inputs validated.
    """
    dist = _pairwise(features)
    if memory is None:
        return dist
    return torch.cat([dist, _cross(features, memory).to(dist.dtype)], dim=1)


def pair_distances(features_a: Tensor, features_b: Tensor, memory: Tensor | None = None) -> Tensor:
    """Kernel: ``(P,)`` distances of explicit pairs, or ``(P, 1 + K)`` with a memory.

    Column 0 is the pair's own distance ``D(a_p, b_p)``, the others ``D(a_p, M_k)`` to the ``K``
    memory maps. The gradient is finite (0) where a pair is equal. Inputs validated.
    """
    P = features_a.shape[0]
    with torch.autocast(device_type=features_a.device.type, enabled=False):
        dtype = torch.promote_types(compute_dtype(features_a), features_b.dtype)
        diff = (features_a.to(dtype) - features_b.to(dtype)).reshape(P, -1)
        own = safe_sqrt((diff * diff).sum(dim=1))
    if memory is None:
        return own
    return torch.cat([own[:, None], _cross(features_a, memory).to(own.dtype)], dim=1)


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

    Raises:
        CCGShapeError: No sample dimension or an empty batch.
        CCGDTypeError: Non-floating ``features``.
        CCGValueRangeError: With the value checks on, non-finite values: the relation losses'
            rule (:func:`check_finite_through_distances`), read off the distances.

    Example:
        >>> import torch
        >>> pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        tensor([[0., 5.],
                [5., 0.]])
    """
    dist = _pairwise(check_batch(features, "features"))
    check_finite_through_distances(dist, features, "`features`")
    return dist


def check_finite_through_distances(
    dist: Tensor, features: Tensor, names: str, *, pairs: bool = False
) -> None:
    """The one finiteness rule of the relation losses, read off their distances.

    A NaN or infinity anywhere in a sample makes its distances to its partners non-finite, so
    checking the (small) distance matrix is as strict as checking the features themselves, at
    ``n (n + K)`` instead of ``n * D`` reads. A lone sample (``n == 1``, no memory: one column,
    its self-distance 0) has no partner to read it from, so its features are checked directly.
    Explicit pairs (``pairs=True``) always have their partner. Skipped with value checks off.

    Args:
        dist: ``(n, n + K)`` (or ``(P,)`` / ``(P, 1 + K)`` with ``pairs``) distances.
        features: The anchors the distances came from.
        names: The inputs named by the message, e.g. ``"`features`"``.
        pairs: Whether ``dist`` are pair distances.
    """
    if not values_checkable():
        return
    if not pairs and dist.shape[-1] < 2:
        check_finite(features, "features")
        return
    if not bool(torch.isfinite(dist).all()):
        raise CCGValueRangeError(
            f"{names} must be finite, got NaN or infinite values (or values so large that "
            "their squared distances overflow)."
        )


def check_memory_features(
    memory: Tensor | None, features: Tensor, name: str, like: tuple[str, int] | None = None
) -> int:
    """Validate a memory of feature maps ``(K, *features.shape[1:])``; returns ``K`` (0 for none).

    ``like=(other, K)``: the maps must be as many as the entries of the memory ``other``
    (the descriptors or codes given with them).
    """
    if memory is None:
        return 0
    check_tensor(memory, name)
    check_dtype(memory, name, ("float",))
    if tuple(memory.shape[1:]) != tuple(features.shape[1:]) or memory.dim() != features.dim():
        raise CCGShapeError(
            f"`{name}` must have shape (K, {', '.join(str(s) for s in features.shape[1:])}) "
            f"like one sample of `features`, got shape {tuple(memory.shape)}."
        )
    if like is not None and memory.shape[0] != like[1]:
        raise CCGShapeError(
            f"`{name}` must hold K={like[1]} maps like `{like[0]}`, got shape "
            f"{tuple(memory.shape)}."
        )
    return int(memory.shape[0])


def weighted_distance_losses(
    features: Tensor,
    graphs: Sequence[Tensor],
    memory: Tensor | None,
    reduction: Reduction,
    alike: Tensor | None = None,
    margin: float | None = None,
) -> tuple[Tensor, ...]:
    """Kernel: one distance matrix weighted by several graphs, ``reduce(G_i * D)`` each.

    The distances (the batch and the memory, :func:`distance_matrix`), the finiteness rule
    (:func:`check_finite_through_distances`) and the contrast costs (``alike`` ``(n, n + K)``
    with ``margin``, :func:`~ccg_layers.contrast.contrast_costs`) are computed once for all the
    graphs, e.g. ``L_IR``'s and ``L_IK``'s (Eq. 4 and 5). ``"mean"`` divides by ``n^2``.
    Inputs validated.
    """
    n = features.shape[0]
    dist = distance_matrix(features, memory)
    check_finite_through_distances(
        dist, features, "`features`" if memory is None else "`features` and the memory"
    )
    if alike is not None and margin is not None:
        dist = contrast_costs(dist, alike, margin)
    return tuple(reduce(g.to(dist.dtype) * dist, reduction, count=n * n) for g in graphs)


def weighted_distance_loss(
    features: Tensor,
    graph: Tensor,
    memory: Tensor | None,
    reduction: Reduction,
    alike: Tensor | None = None,
    margin: float | None = None,
) -> Tensor:
    """Kernel of :func:`sample_graph_loss`: ``reduce(G * D)`` with ``"mean"`` over ``n^2``.

    :func:`weighted_distance_losses` with one graph. Inputs validated.
    """
    return weighted_distance_losses(features, (graph,), memory, reduction, alike, margin)[0]


def weighted_pair_loss(
    features_a: Tensor,
    features_b: Tensor,
    weights: Tensor,
    memory: Tensor | None,
    reduction: Reduction,
    alike: Tensor | None = None,
    margin: float | None = None,
) -> Tensor:
    """Kernel of :func:`paired_sample_loss`: ``reduce(w * D)`` with ``"mean"`` over ``P``.

    ``weights`` ``(P,)``, or ``(P, 1 + K)`` with a ``memory`` (:func:`pair_distances`).
    Applies the finiteness rule; ``alike`` (same shape) with ``margin``: the contrast costs.
    Inputs validated.
    """
    dist = pair_distances(features_a, features_b, memory)
    check_finite_through_distances(
        dist,
        features_a,
        "`features_a` and `features_b`" if memory is None else "the features",
        pairs=True,
    )
    if alike is not None and margin is not None:
        dist = contrast_costs(dist, alike, margin)
    return reduce(weights.to(dist.dtype) * dist, reduction, count=features_a.shape[0])


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
    :func:`~ccg_layers.functional.contrast_distances` with the pairs of :func:`~ccg_layers.functional.alike_pairs`,
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
    check_batch(features, "features")
    check_tensor(graph, "graph")
    check_dtype(graph, "graph", ("float",))
    n = int(features.shape[0])
    K = check_memory_features(memory, features, "memory")
    check_shape(graph, "graph", ("n", "n + K"), {"n": n, "n + K": n + K})
    check_finite(graph, "graph")
    y, m = check_contrast_args(image_labels, margin, n, memory_image_labels, K, memory is not None)
    alike = None if y is None else batch_alike(y, memory_image_labels)
    return weighted_distance_loss(features, graph, memory, reduction, alike, m)


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
    check_batch(features_a, "features_a", what="(P, ...)")
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
    return weighted_pair_loss(features_a, features_b, weights, None, reduction)
