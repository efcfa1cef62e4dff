r"""The patch-hash graph of the intra-image knowledge loss ``L_IK`` (paper Eq. 5-7, 10).

For every pair of images the ``m x m`` Hamming graph ``G_l`` of their patch codes (Eq. 7,
:mod:`ccg_layers.hashing`) is mapped by a fully-connected layer ``W_l`` to the pair score
(Eq. 6, :func:`patch_graph_logits`), normalised to the pair weight ``G_k``
(:func:`patch_hash_graph`) that weights the distances of the pair's feature maps (Eq. 5,
:func:`patch_hash_graph_loss`). The pair form serves the knowledge reasoning loss ``L_KR`` on
the attended maps of cross-image attention (Eq. 8-10). :class:`PatchHashGraph` holds ``W_l``,
the projection and a memory of partners and calls these functions.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import Tensor, nn

from ccg_layers.contrast import check_contrast_args, contrast_alike
from ccg_layers.distance import (
    check_memory_features,
    compute_dtype,
    weighted_distance_loss,
    weighted_pair_loss,
)
from ccg_layers.distributed import all_gather_batch
from ccg_layers.errors import CCGShapeError
from ccg_layers.hashing import (
    check_codes,
    check_hash_input,
    check_pooling,
    check_projection,
    encode_patches,
)
from ccg_layers.memory import PartnerMemory, gatherable
from ccg_layers.normalization import (
    GraphParametrization,
    check_parametrization,
    columns_valid,
    normalize_logits,
)
from ccg_layers.validation import (
    Reduction,
    check_batch,
    check_dtype,
    check_flag,
    check_float_dtype,
    check_memory_valid,
    check_reduction,
    check_seed,
    check_shape,
    check_tensor,
    positive_int,
)

__all__ = [
    "PatchHashGraph",
    "check_patch_graph_args",
    "patch_graph_from_codes",
    "patch_graph_logits",
    "patch_hash_graph",
    "patch_hash_graph_loss",
]


def _patch_scores(
    codes: Tensor, others: Tensor, weight: Tensor, bias: Tensor | None, *, pairs: bool = False
) -> Tensor:
    """Scores of ``W_l``: ``(n, J)`` for all ``codes`` x ``others``, ``(P,)`` for pairs.

    With ``pairs=True`` the pairs are ``(codes[p], others[p])``.
    """
    bits = codes.shape[-1]
    with torch.autocast(device_type=codes.device.type, enabled=False):
        dtype = compute_dtype(weight)
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
    check_codes(codes, "codes", allow_zero=True)
    dims = check_shape(codes, "codes", ("n", "m", "bits"))
    if dims["n"] == 0:
        raise CCGShapeError(f"`codes` must hold at least 1 image, got shape {tuple(codes.shape)}.")
    _check_patch_weights(weight, bias, dims)
    if codes_b is None:
        return _patch_scores(codes, codes, weight, bias)
    check_codes(codes_b, "codes_b", allow_zero=True)
    check_shape(codes_b, "codes_b", ("n", "m", "bits"), dims)
    return _patch_scores(codes, codes_b, weight, bias, pairs=True)


def patch_graph_from_codes(
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
            return normalize_logits(_patch_scores(codes, codes, weight, bias), parametrization)
        others = torch.cat([codes, memory_codes.to(codes.dtype)], dim=0)
        valid = columns_valid(n, memory_valid, memory_codes.shape[0], codes.device)
        scores = _patch_scores(codes, others, weight, bias)
        return normalize_logits(scores, parametrization, valid=valid)
    own = _patch_scores(codes, codes_b, weight, bias, pairs=True)
    if memory_codes is None:
        return normalize_logits(own, parametrization, pairs=True)
    mem = _patch_scores(codes, memory_codes, weight, bias)
    valid = columns_valid(1, memory_valid, memory_codes.shape[0], codes.device)
    return normalize_logits(
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
    check_codes(memory_codes, "memory_codes", allow_zero=True, ints=True)
    dims = check_shape(memory_codes, "memory_codes", ("K", "m", "bits"), {"m": m, "bits": bits})
    check_memory_valid(memory_valid, dims["K"])
    return dims["K"]


def _check_patch_weights(
    weight: Tensor, bias: Tensor | None, dims: dict[str, int], prefix: str = ""
) -> int:
    """``W_l`` ``(m, m)`` (``m`` as ``dims`` binds it) and its ``()`` bias; returns ``m``."""
    w_name, b_name = f"{prefix}weight", f"{prefix}bias"
    check_dtype(check_tensor(weight, w_name), w_name, ("float",))
    m = check_shape(weight, w_name, ("m", "m"), dims)["m"]
    if bias is not None:
        check_dtype(check_tensor(bias, b_name), b_name, ("float",))
        check_shape(bias, b_name, ())
    return m


def check_patch_graph_args(
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
    *,
    validated: bool = False,
    validated_b: bool = False,
    prefix: str = "",
) -> tuple[int, int, int]:
    """Validate the graph's inputs once; returns ``(n, m, K)``.

    ``validated`` / ``validated_b``: the hashed maps are the feature maps the caller validated
    (only their channels are compared with the projection; the distances check them finite).
    ``prefix`` names the projection, weight and bias (e.g. ``"patch_"`` for ``patch_weight``).
    """
    proj = f"{prefix}projection"
    pdims = check_projection(projection, proj)
    n = check_hash_input(hash_input, hash_name, pdims, validated=validated, projection_name=proj)
    m = _check_patch_weights(weight, bias, {}, prefix)
    # labels in [0, m), non-empty grids; NaN would give valid-looking codes (the sign of the
    # patch means), so maps the caller's distances do not check are checked finite here
    check_pooling(hash_input, hash_name, labels, m, finite=not validated)
    if (hash_input_b is None) != (labels_b is None):
        given, missing = (
            ("labels_b", hash_b_name) if hash_input_b is None else (hash_b_name, "labels_b")
        )
        raise CCGShapeError(f"`{missing}` is required with `{given}` (pair form), got None.")
    if hash_input_b is not None and labels_b is not None:
        n_b = check_hash_input(
            hash_input_b, hash_b_name, pdims, validated=validated_b, projection_name=proj
        )
        if n_b != n:
            raise CCGShapeError(
                f"`{hash_b_name}` must hold P={n} images like `{hash_name}` (one per "
                f"pair), got shape {tuple(hash_input_b.shape)}."
            )
        check_pooling(
            hash_input_b, hash_b_name, labels_b, m, labels_name="labels_b", finite=not validated_b
        )
    K = _check_patch_memory(memory_codes, memory_valid, m, pdims["bits"])
    return n, m, K


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
        CCGValueRangeError: Labels out of range, non-finite hash inputs, bad ``parametrization``.

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
    parametrization = check_parametrization(parametrization)
    _, m, _ = check_patch_graph_args(
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
    codes = encode_patches(hash_input, labels, projection, m)
    codes_b = None
    if hash_input_b is not None and labels_b is not None:
        codes_b = encode_patches(hash_input_b, labels_b, projection, m)
    return patch_graph_from_codes(
        codes, weight, bias, codes_b, memory_codes, memory_valid, parametrization
    )


@overload
def patch_hash_graph_loss(
    features: Tensor,
    labels: Tensor,
    projection: Tensor,
    weight: Tensor,
    bias: Tensor | None = ...,
    *,
    hash_input: Tensor | None = ...,
    features_b: Tensor | None = ...,
    labels_b: Tensor | None = ...,
    hash_input_b: Tensor | None = ...,
    memory_features: Tensor | None = ...,
    memory_codes: Tensor | None = ...,
    memory_valid: Tensor | None = ...,
    image_labels: Tensor | None = ...,
    image_labels_b: Tensor | None = ...,
    memory_image_labels: Tensor | None = ...,
    margin: float | None = ...,
    parametrization: GraphParametrization = ...,
    reduction: Reduction = ...,
    return_codes: Literal[False] = ...,
) -> Tensor: ...


@overload
def patch_hash_graph_loss(
    features: Tensor,
    labels: Tensor,
    projection: Tensor,
    weight: Tensor,
    bias: Tensor | None = ...,
    *,
    hash_input: Tensor | None = ...,
    features_b: Tensor | None = ...,
    labels_b: Tensor | None = ...,
    hash_input_b: Tensor | None = ...,
    memory_features: Tensor | None = ...,
    memory_codes: Tensor | None = ...,
    memory_valid: Tensor | None = ...,
    image_labels: Tensor | None = ...,
    image_labels_b: Tensor | None = ...,
    memory_image_labels: Tensor | None = ...,
    margin: float | None = ...,
    parametrization: GraphParametrization = ...,
    reduction: Reduction = ...,
    return_codes: Literal[True],
) -> tuple[Tensor, Tensor, Tensor | None]: ...


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
    return_codes: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
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
    becomes :func:`~ccg_layers.functional.contrast_distances`' ``s D + (1 - s) max(0, m - D)``;
    ``s`` from :func:`~ccg_layers.functional.alike_pairs` for all pairs, per pair
    ``s(u_p, v_p)`` from ``image_labels[p]`` and ``image_labels_b[p]`` in the pair form, and
    between the anchor and each memory entry.

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
        return_codes: Also return the patch codes computed for the graph (what a memory of
            partners keeps, :func:`~ccg_layers.functional.patch_codes`): ``(n, m, bits)`` of
            the images, and ``(P, m, bits)`` of the second images of the pairs (else ``None``).

    Returns:
        Scalar, or with ``reduction="none"`` the terms: ``(n, n + K)``; ``(P,)`` for pairs
        (``(P, 1 + K)`` with a memory). With ``return_codes``, ``(loss, codes, codes_b)``.

    Raises:
        CCGShapeError: Mismatched shapes, an empty batch, or ``labels_b`` missing.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Labels out of range, bad ``reduction``, ``parametrization`` or
            ``return_codes``, non-finite ``features`` or ``hash_input`` (value checks).

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
    parametrization = check_parametrization(parametrization)
    check_flag(return_codes, "return_codes")
    check_batch(features, "features", min_dim=4, what="(n, C, h, w)")
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
    n, m, K = check_patch_graph_args(
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
        validated=hash_input is None,
        validated_b=hash_input_b is None,
    )
    check_memory_features(memory_features, features, "memory_features", like=("memory_codes", K))
    if n != dims["n"]:
        raise CCGShapeError(
            f"`hash_input` must hold n={dims['n']} images like `features`, got shape "
            f"{tuple(src.shape)}."
        )
    y, margin_ = check_contrast_args(
        image_labels, margin, n, memory_image_labels, K, memory_features is not None
    )
    alike = None
    if y is not None:
        alike = contrast_alike(y, image_labels_b, memory_image_labels, features_b is not None)
    elif image_labels_b is not None:
        raise CCGShapeError(
            "`image_labels` is required with `image_labels_b` (the contrast form), got None."
        )
    codes = encode_patches(src, labels, projection, m)
    codes_b = None
    if src_b is not None and labels_b is not None and features_b is not None:
        codes_b = encode_patches(src_b, labels_b, projection, m)
    graph = patch_graph_from_codes(
        codes, weight, bias, codes_b, memory_codes, memory_valid, parametrization
    )
    if features_b is None:
        loss = weighted_distance_loss(features, graph, memory_features, reduction, alike, margin_)
    else:
        loss = weighted_pair_loss(
            features, features_b, graph, memory_features, reduction, alike, margin_
        )
    return (loss, codes, codes_b) if return_codes else loss


class PatchHashGraph(PartnerMemory):
    r"""Patch-hash graph loss ``L_IK`` (paper Eq. 5-7), and the patch graph of Eq. 8-10.

    Each image's ``num_patches`` superpixel patches (labels from
    :func:`ccg_layers.superpixels`) are mean-pooled from a feature map (or the image) and hashed
    to ``code_bits``-bit codes by the sign of a fixed random projection (a buffer). For every
    pair of images the ``m x m`` Hamming graph ``G_l`` (Eq. 7) is mapped by a fully-connected
    layer ``W_l`` to the pair score (Eq. 6), which becomes the pair weight ``G_k`` and weights
    the Euclidean distance of the pair's feature maps (Eq. 5). The graph is a function of the
    two images (their patch codes), so it follows the images whatever their batch positions.
    See :func:`ccg_layers.functional.patch_hash_graph_loss`.

    **Parametrisation** (as :class:`LearnableSampleGraph`): with a free ``G_k = W_l(G_l)`` the
    loss is unbounded below (``W_l``'s bias alone drives it to ``-inf``). The default
    ``"softmax"`` normalises the scores of each image's partners by a softmax (self-weight
    frozen at ``1/N``), so ``L_IK >= 0`` and ``W_l`` learns which Hamming patterns mark related
    images; for explicit pairs the weights are ``P * softmax`` over the pairs. ``W_l`` starts
    at zero, i.e. at the uniform graph ``G_k = 1/n``. A softmax does not see a constant shift,
    so ``W_l`` has no bias there (it would never get a gradient); ``"free"`` is the literal
    Eq. 6 and keeps the bias.

    Two call forms:

    * ``forward(features, labels)``: all ``n x n`` pairs of the batch (``L_IK``, Eq. 5).
    * ``forward(fa, labels_a, fb, labels_b)``: ``P`` explicit pairs, e.g. the attended maps
      ``F'_u, F'_v`` (each ``(P, C, h, w)``) of cross-image attention (Eq. 8-10).

    ``hash_input`` (and ``hash_input_b``) hash the patches of another map than the one whose
    distances are weighted, e.g. the backbone features while the distances use the attended
    maps; its channels must be ``in_channels``.

    **Memory.** With ``memory_size=K > 0`` the module keeps, for the last ``K`` images seen in
    training, their feature map and their patch codes (``num_patches x code_bits`` int8) in a
    FIFO queue. They are extra partners of every anchor (never anchors, no gradient): the
    all-pairs graph is ``(n, n + K)``; in the pair form each pair ``p`` scores its own partner
    ``F'_v`` and the ``K`` memory maps, ``w = P * softmax`` over all ``P (1 + K)`` entries, and
    the loss is :math:`\sum_p [w_{p0} D(F'_{u,p}, F'_{v,p}) + \sum_k w_{pk} D(F'_{u,p}, M_k)] / P`,
    so the paper's single pair at a batch of 2 gets ``1 + K`` weights and ``W_l`` learns. The
    pair form enqueues both maps of every pair (``2P`` entries), the all-pairs form the batch.
    Use one module per term (``L_IK``, ``L_KR``): the queue holds whatever maps its forward
    sees. Cost per entry: one feature map (a ``2048x16x16`` map is 1 MiB in float16) plus
    ``num_patches * code_bits`` bytes. Enqueued after the loss, in training mode only, without
    host synchronisation; persistent buffers (``state_dict``), identical on every rank under
    ``distributed`` (the gathered batch, also for the pair form).

    **Contrast form** (beyond the paper; ``contrast_margin=m``): ``forward`` takes the images'
    multi-hot ``image_labels`` ``(n, C)`` (and ``image_labels_b`` ``(P, C)`` of the second
    images in the pair form) and every distance becomes ``s D + (1 - s) max(0, m - D)``
    (:func:`~ccg_layers.functional.contrast_distances`); in the pair form ``s`` is that of
    each pair ``(u_p, v_p)`` and, for the memory columns, of the anchor and the memory entry.
    The memory also queues the labels (``memory_image_labels``, float32). Note: ``labels``
    are the superpixel label maps; the findings are ``image_labels``.

    Args:
        num_patches: ``m``, the superpixels per image.
        in_channels: Channels of the map the patches are hashed from.
        code_bits: Bits of each patch code.
        parametrization: ``"softmax"`` (default) or ``"free"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        distributed: In the all-pairs form, gather features, labels and ``hash_input`` from all
            ranks (as :class:`LearnableSampleGraph`) so the graph spans the global batch; the
            pair form's loss is always local (each rank's pairs), its enqueued pairs gathered.
        memory_size: ``K``, partners kept from earlier batches; 0 for none.
        memory_dtype: Dtype of the stored maps; ``None`` for the features' dtype.
        defer_enqueue: Keep a training batch for :meth:`commit_memory` (or
            :func:`~ccg_layers.commit_memories`, after ``backward()``) instead of enqueuing it
            in the forward, which then reads the memory without copying it.
        contrast_margin: ``None`` (default) for the paper's pull-only form; a finite positive
            float for the contrast form (then ``forward`` requires ``image_labels``).
        seed: Seed of the random projection (the same on every rank and run).
        device: Device of the parameters and buffers.
        dtype: Dtype of the parameters and the projection (floating).

    Raises:
        CCGValueRangeError: A bad option, e.g. a ``distributed`` that is not a bool.
        CCGDTypeError: A ``dtype`` that is not floating.

    Example:
        >>> import torch
        >>> from ccg_layers import superpixels
        >>> labels = superpixels(torch.rand(4, 64, 64), 16)
        >>> phg = PatchHashGraph(num_patches=16, in_channels=32, code_bits=32)
        >>> feats = torch.randn(4, 32, 8, 8, requires_grad=True)
        >>> loss_ik = phg(feats, labels)  # all pairs of the batch (Eq. 5-7)
        >>> fa, fb = torch.randn(3, 32, 8, 8), torch.randn(3, 32, 8, 8)  # attended pairs
        >>> loss_kr = phg(fa, labels[:3], fb, labels[1:])  # explicit pairs (Eq. 8-10)
        >>> (loss_ik + loss_kr).backward()
        >>> phg.weight.grad.shape
        torch.Size([16, 16])
    """

    _queues = ("memory_features", "memory_codes")
    projection: Tensor
    bias: nn.Parameter | None

    def __init__(
        self,
        num_patches: int,
        in_channels: int,
        *,
        code_bits: int = 64,
        parametrization: GraphParametrization = "softmax",
        reduction: Reduction = "mean",
        distributed: bool = False,
        memory_size: int = 0,
        memory_dtype: torch.dtype | None = None,
        defer_enqueue: bool = False,
        contrast_margin: float | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.init_contrast(contrast_margin)
        self.num_patches = positive_int(num_patches, "num_patches")
        self.in_channels = positive_int(in_channels, "in_channels")
        self.code_bits = positive_int(code_bits, "code_bits")
        self.parametrization: GraphParametrization = check_parametrization(parametrization)
        self.reduction: Reduction = check_reduction(reduction)
        self.distributed = check_flag(distributed, "distributed")
        check_float_dtype(dtype, "dtype")
        generator = torch.Generator().manual_seed(check_seed(seed))
        projection = torch.randn(in_channels, code_bits, generator=generator)
        self.register_buffer("projection", projection.to(device=device, dtype=dtype))
        self.weight = nn.Parameter(
            torch.zeros(num_patches, num_patches, device=device, dtype=dtype)
        )
        if self.parametrization == "free":
            self.bias = nn.Parameter(torch.zeros((), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.init_memory(memory_size, memory_dtype, device, defer_enqueue)

    def _memory_args(self, memory: tuple[Tensor, ...] | None) -> tuple[Tensor | None, ...]:
        """The memory's maps, codes and valid slots as the function takes them."""
        return (None,) * 3 if memory is None else (memory[0], memory[1], self.memory_valid())

    def forward(
        self,
        features: Tensor,
        labels: Tensor,
        features_b: Tensor | None = None,
        labels_b: Tensor | None = None,
        *,
        hash_input: Tensor | None = None,
        hash_input_b: Tensor | None = None,
        image_labels: Tensor | None = None,
        image_labels_b: Tensor | None = None,
    ) -> Tensor:
        """Compute ``L_IK`` (or the pair loss) by :func:`patch_hash_graph_loss`.

        The inputs are validated once, by that function; the module checks its own state (the
        maps and labels in its memory against the batch's, its ``contrast_margin`` against the
        labels given). ``image_labels`` ``(n, C)`` and, in the pair form, ``image_labels_b``
        ``(P, C)``: the multi-hot labels of the images (contrast form, required with
        ``contrast_margin``).
        """
        self.check_contrast_inputs(image_labels, "image_labels")
        if features_b is not None and image_labels is not None:
            self.check_contrast_inputs(image_labels_b, "image_labels_b")
        if self.distributed and features_b is None:
            features, labels = all_gather_batch(features), all_gather_batch(labels)
            if hash_input is not None:
                hash_input = all_gather_batch(hash_input)
            if image_labels is not None:
                image_labels = all_gather_batch(gatherable(image_labels))
        if isinstance(features, Tensor):
            self.check_memory_entry(features, "features")
        self.check_memory_labels(image_labels, "image_labels")
        mem_f, mem_c, valid = self._memory_args(self.memory_inputs())
        loss, codes, codes_b = patch_hash_graph_loss(
            features,
            labels,
            self.projection,
            self.weight,
            self.bias,
            hash_input=hash_input,
            features_b=features_b,
            labels_b=labels_b,
            hash_input_b=hash_input_b,
            memory_features=mem_f,
            memory_codes=mem_c,
            memory_valid=valid,
            image_labels=image_labels,
            image_labels_b=image_labels_b,
            memory_image_labels=self.memory_labels(),
            margin=self.contrast_margin,
            parametrization=self.parametrization,
            reduction=self.reduction,
            return_codes=True,
        )
        if self.training and self.memory_size > 0:
            self._enqueue_batch(features, features_b, codes, codes_b, image_labels, image_labels_b)
        return loss

    def _enqueue_batch(
        self,
        features: Tensor,
        features_b: Tensor | None,
        codes: Tensor,
        codes_b: Tensor | None,
        image_labels: Tensor | None,
        image_labels_b: Tensor | None,
    ) -> None:
        """Enqueue the batch (both maps of every pair in the pair form; gathered under DDP)."""
        entries, entry_codes, entry_labels = features.detach(), codes, image_labels
        if features_b is not None and codes_b is not None:
            parts = [features.detach(), features_b.detach(), codes, codes_b]
            if image_labels is not None and image_labels_b is not None:
                parts += [gatherable(image_labels), gatherable(image_labels_b)]
            if self.distributed:  # the global pairs, in the order of the gathered batch
                parts = [all_gather_batch(t) for t in parts]
            entries = torch.cat(parts[:2], dim=0)
            entry_codes = torch.cat(parts[2:4], dim=0)
            if image_labels is not None:
                entry_labels = torch.cat(parts[4:6], dim=0)
        queued, dtypes = [entries, entry_codes], [self.memory_dtype or features.dtype, torch.int8]
        if entry_labels is not None:
            queued, dtypes = [*queued, entry_labels], [*dtypes, torch.float32]
        self.push_batch(queued, dtypes)

    def graph(
        self,
        hash_input: Tensor,
        labels: Tensor,
        hash_input_b: Tensor | None = None,
        labels_b: Tensor | None = None,
        *,
        use_memory: bool = True,
    ) -> Tensor:
        """The graph ``G_k`` or the pair weights that forward uses (read-only).

        ``(n, n + K)`` in the all-pairs form, ``(P,)`` for explicit pairs, ``(P, 1 + K)`` for
        pairs with a memory (column 0 the pair's own partner); ``K`` the memory slots (0
        weight where unfilled), none with ``use_memory=False``. Pass what forward hashes
        (``features``, or ``hash_input`` when given). The forward enqueues the batch in
        training mode, so call this *before* it (or in eval mode) to see the weights it used.
        See :func:`patch_hash_graph` (which validates the inputs); with
        :func:`~ccg_layers.functional.pairwise_distance` it lets ``L_IR`` and ``L_IK`` share
        one distance matrix.
        """
        use_memory = check_flag(use_memory, "use_memory")
        _, mem_c, valid = self._memory_args(self.memory_tensors() if use_memory else None)
        return patch_hash_graph(
            hash_input,
            labels,
            self.projection,
            self.weight,
            self.bias,
            hash_input_b=hash_input_b,
            labels_b=labels_b,
            memory_codes=mem_c,
            memory_valid=valid,
            parametrization=self.parametrization,
        )

    def extra_repr(self) -> str:
        """Show the configuration in ``repr``."""
        return (
            f"num_patches={self.num_patches}, in_channels={self.in_channels}, "
            f"code_bits={self.code_bits}, parametrization={self.parametrization!r}, "
            f"distributed={self.distributed}, memory_size={self.memory_size}, "
            f"reduction={self.reduction!r}"
            + ("" if self.contrast_margin is None else f", contrast_margin={self.contrast_margin}")
        )
