r"""Sample and patch graphs of the CCG framework (paper Sec. 3.3-3.5, Eq. 4-10).

All three relation losses weight the Euclidean distances ``D(F_u, F_v)`` between the feature
maps of a batch by a graph ``G`` and average:
:math:`\sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2`. This module holds the batched pieces:

* :func:`pairwise_distance`, :func:`sample_graph_loss` (Eq. 4, 5) and :func:`paired_sample_loss`
  (explicit pairs, Eq. 8-10);
* :func:`normalize_graph`, the well-posed parametrisation of a learnable graph;
* :func:`superpixel_pool`, :func:`hash_codes`, :func:`hamming_distance` and
  :func:`patch_graph_logits` (Eq. 6-7), combined by :func:`patch_hash_graph_loss`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
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
    "GraphParametrization",
    "hamming_distance",
    "hash_codes",
    "normalize_graph",
    "paired_sample_loss",
    "pairwise_distance",
    "patch_graph_logits",
    "patch_hash_graph",
    "patch_hash_graph_loss",
    "sample_graph_loss",
    "superpixel_pool",
]

GraphParametrization = Literal["softmax", "free"]
_PARAMETRIZATIONS: tuple[str, ...] = get_args(GraphParametrization)


def _check_parametrization(value: object) -> GraphParametrization:
    if not isinstance(value, str) or value not in _PARAMETRIZATIONS:
        raise CCGValueRangeError(
            f"`parametrization` must be one of {', '.join(map(repr, _PARAMETRIZATIONS))}, "
            f"got {value!r}."
        )
    return value  # type: ignore[return-value]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _safe_sqrt(sq: Tensor) -> Tensor:
    """``sqrt(max(sq, 0))`` whose gradient is 0 (not infinite) where ``sq <= tiny``; NaN stays."""
    tiny = torch.finfo(sq.dtype).tiny
    positive = (sq > tiny) | sq.isnan()
    return torch.where(positive, sq.clamp(min=tiny).sqrt(), torch.zeros_like(sq))


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
    check_tensor(features, "features")
    check_dtype(features, "features", ("float",))
    if features.dim() < 1:
        raise CCGShapeError(
            f"`features` must have at least 1 dimension (n, ...), got shape {tuple(features.shape)}."
        )
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


def _check_graph_features(features: Tensor, graph: Tensor) -> int:
    check_tensor(features, "features")
    check_tensor(graph, "graph")
    check_dtype(features, "features", ("float",))
    check_dtype(graph, "graph", ("float",))
    if features.dim() < 1:
        raise CCGShapeError(
            f"`features` must have at least 1 dimension (n, ...), got shape {tuple(features.shape)}."
        )
    dims = {"n": int(features.shape[0])}
    check_shape(graph, "graph", ("n", "n"), dims)
    return dims["n"]


def sample_graph_loss(features: Tensor, graph: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    r"""Graph-weighted mean distance between samples (paper Eq. 4; Eq. 5 with ``G_k``).

    :math:`L = \sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2` with ``D`` the Euclidean distance
    between the flattened samples (:func:`pairwise_distance`). The graph is used as given: pass
    it through :func:`normalize_graph` for the well-posed parametrisation.

    Args:
        features: ``(n, ...)`` one feature map (or any tensor) per sample.
        graph: ``(n, n)`` weights ``G(u, v)``.
        reduction: ``"mean"`` is Eq. 4 (sum over the ``n^2`` terms divided by ``n^2``),
            ``"sum"`` the plain sum, ``"none"`` the ``(n, n)`` terms ``G(u, v) D(F_u, F_v)``.

    Returns:
        Scalar, or ``(n, n)`` for ``reduction="none"``; float32 at least.

    Raises:
        CCGShapeError: ``graph`` is not ``(n, n)`` for the ``n`` samples.
        CCGDTypeError: A non-floating input.
        CCGValueRangeError: A bad ``reduction`` or non-finite values.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> sample_graph_loss(x, torch.full((2, 2), 0.5))  # (0.5 * 5 + 0.5 * 5) / 4
        tensor(1.2500)
    """
    reduction = check_reduction(reduction)
    n = _check_graph_features(features, graph)
    check_finite(graph, "graph")
    dist = pairwise_distance(features)
    if n == 1:  # no off-diagonal distance to read the features' finiteness from
        check_finite(features, "features")
    _check_distances_finite(dist, "`features`")
    terms = graph.to(dist.dtype) * dist
    return reduce(terms, reduction, count=n * n)


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
        CCGShapeError: Mismatched shapes.
        CCGDTypeError: A non-floating input.
        CCGValueRangeError: A bad ``reduction`` or non-finite values.

    Example:
        >>> import torch
        >>> a, b = torch.zeros(2, 2), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
        >>> paired_sample_loss(a, b, torch.tensor([1.0, 2.0]), reduction="none")
        tensor([5., 2.])
    """
    reduction = check_reduction(reduction)
    for name, t in (("features_a", features_a), ("features_b", features_b), ("weights", weights)):
        check_tensor(t, name)
        check_dtype(t, name, ("float",))
    if features_a.dim() < 1:
        raise CCGShapeError(
            "`features_a` must have at least 1 dimension (P, ...), got shape "
            f"{tuple(features_a.shape)}."
        )
    if features_b.shape != features_a.shape:
        raise CCGShapeError(
            f"`features_b` must have the shape of `features_a` {tuple(features_a.shape)}, "
            f"got shape {tuple(features_b.shape)}."
        )
    dims = {"P": int(features_a.shape[0])}
    check_shape(weights, "weights", ("P",), dims)
    check_finite(weights, "weights")
    P = dims["P"]
    with torch.autocast(device_type=features_a.device.type, enabled=False):
        dtype = torch.promote_types(_compute_dtype(features_a), features_b.dtype)
        diff = (features_a.to(dtype) - features_b.to(dtype)).reshape(P, -1)
        dist = _safe_sqrt((diff * diff).sum(dim=1))
        _check_distances_finite(dist, "`features_a` and `features_b`")
        terms = weights.to(dtype) * dist
    return reduce(terms, reduction, count=P)


def normalize_graph(
    logits: Tensor, *, parametrization: GraphParametrization = "softmax", pairs: bool = False
) -> Tensor:
    r"""Turn unconstrained graph logits into the graph weights ``G`` (well-posed by default).

    The literal objective :math:`\sum G(u,v) D(F_u,F_v)/n^2` is unbounded below when ``G`` is
    free (``G -> -inf``) and collapses onto the self-pairs (``D(F_u, F_u) = 0``) when ``G`` is
    merely normalised. ``"softmax"`` (default) keeps every row a probability distribution in
    which the self-weight is frozen at ``1/n``: for ``v != u``,
    :math:`G(u, v) = \frac{n-1}{n}\,\mathrm{softmax}_{v' \ne u}(\theta_{u v'})_v`, and
    ``G(u, u) = 1/n``. Equal logits give exactly the paper's initial graph ``G = 1/n``; learning
    only moves weight between partners, so the loss stays ``>= 0`` and cannot collapse.

    For ``pairs=True``, ``logits`` are the ``(P,)`` scores of explicit pairs and ``"softmax"``
    gives :math:`w_p = P\,\mathrm{softmax}_p(\theta)_p` (all ``1`` for equal scores). ``"free"``
    returns ``logits`` unchanged (the literal, unbounded form).

    Args:
        logits: ``(n, n)`` (or ``(P,)`` with ``pairs=True``).
        parametrization: ``"softmax"`` or ``"free"``.
        pairs: Whether ``logits`` are pair scores.

    Returns:
        The weights, same shape as ``logits``.

    Example:
        >>> import torch
        >>> normalize_graph(torch.zeros(4, 4))[0]
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
        >>> normalize_graph(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 0.0]]))[1]
        tensor([8.2263e-05, 3.3333e-01, 6.6658e-01])
    """
    parametrization = _check_parametrization(parametrization)
    check_tensor(logits, "logits")
    check_dtype(logits, "logits", ("float",))
    if pairs:
        check_shape(logits, "logits", ("P",))
    else:
        check_shape(logits, "logits", ("n", "n"))
    if parametrization == "free":
        return logits
    n = logits.shape[0]
    if pairs:
        return n * torch.softmax(logits, dim=0)
    if n == 1:  # only the self-pair: G = 1, still attached to the logits (zero gradient)
        return logits - logits.detach() + 1.0
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    off = torch.softmax(logits.masked_fill(eye, float("-inf")), dim=1) * ((n - 1) / n)
    return torch.where(eye, torch.full_like(off, 1.0 / n), off)


def _check_labels(labels: Tensor, name: str, n: int) -> tuple[int, int]:
    check_tensor(labels, name)
    check_dtype(labels, name, ("int",))
    dims = {"N": n}
    check_shape(labels, name, ("N", "H", "W"), dims)
    return dims["H"], dims["W"]


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
    H, W = _check_labels(labels, "labels", dims["N"])
    check_index(labels, "labels", num_segments)
    N, C, h, w = dims["N"], dims["C"], dims["h"], dims["w"]
    m = num_segments
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
    with torch.autocast(device_type=x.device.type, enabled=False), torch.no_grad():
        dtype = torch.promote_types(_compute_dtype(x), projection.dtype)
        z = x.detach().to(dtype) @ projection.to(dtype)
        return torch.where(z >= 0, 1.0, -1.0).to(dtype)


def _check_codes(codes: Tensor, name: str, allow_zero: bool = False) -> None:
    check_tensor(codes, name)
    check_dtype(codes, name, ("float",))
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


def patch_graph_logits(
    codes: Tensor,
    weight: Tensor,
    bias: Tensor,
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
    ``bits/2`` to everything, i.e. 0.5).

    Args:
        codes: ``(n, m, bits)`` codes in ``{-1, 0, +1}``.
        weight: ``(m, m)`` ``W_l``.
        bias: ``()`` bias of ``W_l``.
        codes_b: ``None`` to score all ``n x n`` pairs of ``codes``; or ``(P, m, bits)`` to
            score the explicit pairs ``(codes[p], codes_b[p])`` (then ``codes`` is ``(P, ...)``).

    Returns:
        ``(n, n)`` scores, or ``(P,)`` with ``codes_b``.

    Example:
        >>> import torch
        >>> codes = torch.tensor([[[1.0, 1.0]], [[1.0, -1.0]]])  # 2 images, 1 patch, 2 bits
        >>> patch_graph_logits(codes, torch.ones(1, 1), torch.tensor(0.0))
        tensor([[0.0000, 0.5000],
                [0.5000, 0.0000]])
    """
    _check_codes(codes, "codes", allow_zero=True)
    dims = check_shape(codes, "codes", ("n", "m", "bits"))
    check_tensor(weight, "weight")
    check_tensor(bias, "bias")
    check_dtype(weight, "weight", ("float",))
    check_dtype(bias, "bias", ("float",))
    check_shape(weight, "weight", ("m", "m"), dims)
    check_shape(bias, "bias", ())
    if codes_b is not None:
        _check_codes(codes_b, "codes_b", allow_zero=True)
        check_shape(codes_b, "codes_b", ("n", "m", "bits"), dims)
    bits = dims["bits"]
    with torch.autocast(device_type=codes.device.type, enabled=False):
        dtype = _compute_dtype(weight)
        a = codes.to(dtype)
        other = a if codes_b is None else codes_b.to(dtype)
        w = weight.to(dtype)
        weighted = torch.einsum("ij,vjk->vik", w, other)  # (n, m, bits)
        if codes_b is None:
            dot = torch.einsum("uik,vik->uv", a, weighted)
        else:
            dot = torch.einsum("pik,pik->p", a, weighted)
        return bias.to(dtype) + 0.5 * w.sum() - dot / (2.0 * bits)


def patch_hash_graph(
    hash_input: Tensor,
    labels: Tensor,
    projection: Tensor,
    weight: Tensor,
    bias: Tensor,
    *,
    hash_input_b: Tensor | None = None,
    labels_b: Tensor | None = None,
    parametrization: GraphParametrization = "softmax",
) -> Tensor:
    r"""The patch-hash graph ``G_k`` of a batch (paper Eq. 6-7), or the weights of pairs.

    Each image's ``m`` superpixel patches are mean-pooled from ``hash_input`` (any feature map
    or the image itself; no gradient flows through hashing), hashed by :func:`hash_codes`
    (a vanished patch gets a zero code), the ``m x m`` Hamming graph of every pair of images is
    mapped by ``W_l`` to a pair score (:func:`patch_graph_logits`) and the scores become
    weights by :func:`normalize_graph`. Use it to share one :func:`pairwise_distance` between
    several graphs; :func:`patch_hash_graph_loss` is this followed by the weighted distances.

    Args:
        hash_input: ``(n, C_hash, h, w)`` what the patches are pooled and hashed from.
        labels: ``(n, H, W)`` superpixel labels in ``[0, m)``.
        projection: ``(C_hash, bits)`` fixed hashing projection.
        weight: ``(m, m)`` weight of ``W_l``.
        bias: ``()`` bias of ``W_l``.
        hash_input_b: ``(P, C_hash, h, w)`` second images of ``P`` explicit pairs
            ``(hash_input[p], hash_input_b[p])``; ``None`` for all pairs of the batch.
        labels_b: ``(P, H, W)`` their labels; required with ``hash_input_b``.
        parametrization: ``"softmax"`` (default, well-posed) or ``"free"`` (literal Eq. 6).

    Returns:
        ``(n, n)`` graph ``G_k``, or ``(P,)`` pair weights.

    Raises:
        CCGShapeError: Mismatched shapes, or ``labels_b`` without ``hash_input_b`` or the
            other way round.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Labels out of range or a bad ``parametrization``.

    Example:
        >>> import torch
        >>> labels = torch.arange(4).repeat_interleave(4).reshape(1, 4, 4).repeat(3, 1, 1)
        >>> g = patch_hash_graph(torch.randn(3, 8, 4, 4), labels, torch.randn(8, 16),
        ...                      torch.zeros(4, 4), torch.tensor(0.0))
        >>> g  # W_l = 0: the uniform graph 1/n
        tensor([[0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333]])
    """
    parametrization = _check_parametrization(parametrization)
    check_tensor(hash_input, "hash_input")
    check_tensor(weight, "weight")
    dims = check_shape(hash_input, "hash_input", ("n", "C_hash", "h", "w"))
    m = int(weight.shape[0]) if weight.dim() == 2 else 0
    check_shape(weight, "weight", ("m", "m"))
    _check_labels(labels, "labels", dims["n"])
    if (hash_input_b is None) != (labels_b is None):
        given, missing = (
            ("labels_b", "hash_input_b")
            if hash_input_b is None
            else (
                "hash_input_b",
                "labels_b",
            )
        )
        raise CCGShapeError(f"`{missing}` is required with `{given}` (pair form), got None.")

    def codes_of(x: Tensor, lab: Tensor) -> Tensor:
        pooled, valid = superpixel_pool(x.detach(), lab, m)
        return hash_codes(pooled, projection) * valid[..., None]

    codes = codes_of(hash_input, labels)
    if hash_input_b is None or labels_b is None:
        scores = patch_graph_logits(codes, weight, bias)
        return normalize_graph(scores, parametrization=parametrization)
    check_tensor(hash_input_b, "hash_input_b")
    check_shape(hash_input_b, "hash_input_b", ("n", "C_hash", "h", "w"), dims)
    _check_labels(labels_b, "labels_b", dims["n"])
    scores = patch_graph_logits(codes, weight, bias, codes_of(hash_input_b, labels_b))
    return normalize_graph(scores, parametrization=parametrization, pairs=True)


def patch_hash_graph_loss(
    features: Tensor,
    labels: Tensor,
    projection: Tensor,
    weight: Tensor,
    bias: Tensor,
    *,
    hash_input: Tensor | None = None,
    features_b: Tensor | None = None,
    labels_b: Tensor | None = None,
    hash_input_b: Tensor | None = None,
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

    Args:
        features: ``(n, C, h, w)`` feature maps whose distances are weighted.
        labels: ``(n, H, W)`` superpixel labels in ``[0, m)``.
        projection: ``(C_hash, bits)`` fixed hashing projection.
        weight: ``(m, m)`` weight of ``W_l``.
        bias: ``()`` bias of ``W_l``.
        hash_input: ``(n, C_hash, h', w')`` what the patches are hashed from; ``None`` for
            ``features``.
        features_b: ``(P, C, h, w)`` second maps of the explicit pairs (then ``n = P``).
        labels_b: ``(P, H, W)`` labels of the second images; required with ``features_b``.
        hash_input_b: Like ``hash_input`` for the second images.
        parametrization: ``"softmax"`` (default, well-posed) or ``"free"`` (literal Eq. 6).
        reduction: ``"mean"`` (Eq. 5, ``/n^2``; ``/P`` for pairs), ``"sum"`` or ``"none"``.

    Returns:
        Scalar, or ``(n, n)`` (``(P,)`` for pairs) with ``reduction="none"``.

    Raises:
        CCGShapeError: Mismatched shapes, or ``labels_b`` missing.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Labels out of range, bad ``reduction`` or ``parametrization``.

    Example:
        >>> import torch
        >>> feats = torch.randn(3, 8, 4, 4)
        >>> labels = torch.arange(4).repeat_interleave(4).reshape(1, 4, 4).repeat(3, 1, 1)
        >>> proj, w, b = torch.randn(8, 16), torch.zeros(4, 4), torch.tensor(0.0)
        >>> loss = patch_hash_graph_loss(feats, labels, proj, w, b)
        >>> bool(loss > 0), loss.shape
        (True, torch.Size([]))
    """
    reduction = check_reduction(reduction)
    check_tensor(features, "features")
    check_dtype(features, "features", ("float",))
    dims = check_shape(features, "features", ("n", "C", "h", "w"))
    _check_labels(labels, "labels", dims["n"])
    if features_b is None:
        if labels_b is not None or hash_input_b is not None:
            raise CCGShapeError(
                "`labels_b` and `hash_input_b` are only used with `features_b` (pair form), "
                "got them without `features_b`."
            )
        graph = patch_hash_graph(
            features if hash_input is None else hash_input,
            labels,
            projection,
            weight,
            bias,
            parametrization=parametrization,
        )
        return sample_graph_loss(features, graph, reduction=reduction)
    check_tensor(features_b, "features_b")
    check_shape(features_b, "features_b", ("n", "C", "h", "w"), dims)
    if labels_b is None:
        raise CCGShapeError("`labels_b` is required with `features_b` (pair form), got None.")
    _check_labels(labels_b, "labels_b", dims["n"])
    pair_weights = patch_hash_graph(
        features if hash_input is None else hash_input,
        labels,
        projection,
        weight,
        bias,
        hash_input_b=features_b if hash_input_b is None else hash_input_b,
        labels_b=labels_b,
        parametrization=parametrization,
    )
    return paired_sample_loss(features, features_b, pair_weights, reduction=reduction)
