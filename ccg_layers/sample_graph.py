r"""The sample graph of the inter-image relation loss ``L_IR`` (paper Eq. 4), function and module.

:math:`L_{IR} = \sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2` over the ``n`` images ``u`` of a batch
and their partners ``v``. The input-conditioned graph (the default) weighs a pair by a learned
bilinear similarity of the two images' descriptors: :func:`graph_embedding` (the descriptor),
:func:`conditioned_graph_logits`, :func:`sample_graph` (the graph) and
:func:`conditioned_sample_graph_loss` (the loss); :class:`LearnableSampleGraph` holds ``W``, the
projection and a memory of partners and calls these functions. The distances come from
:mod:`ccg_layers.distance`, the normalisation from :mod:`ccg_layers.normalization`.

**Partners beyond the batch.** Every function takes an optional memory of ``K`` earlier samples
(detached; partners only, never anchors): the graph of a batch of ``n`` is then ``(n, n + K)``,
columns ``0..n-1`` the batch and ``n..n+K-1`` the memory, with a ``(K,)`` bool ``memory_valid``
marking the filled slots. Each row is normalised over the valid partners.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccg_layers.contrast import batch_alike, check_contrast_args
from ccg_layers.distance import (
    check_memory_features,
    compute_dtype,
    sample_graph_loss,
    weighted_distance_loss,
)
from ccg_layers.distributed import all_gather_batch
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
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
    check_choice,
    check_dtype,
    check_finite,
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
    "GraphForm",
    "LearnableSampleGraph",
    "check_form",
    "conditioned_graph_logits",
    "conditioned_sample_graph_loss",
    "embed_features",
    "graph_embedding",
    "sample_graph",
    "sample_graph_from_embeddings",
]

GraphForm = Literal["conditioned", "positional"]


def check_form(value: object) -> GraphForm:
    """Return ``value`` if it is ``"conditioned"`` or ``"positional"``; else raise naming ``form``."""
    return check_choice(value, "form", GraphForm)  # type: ignore[no-any-return]


def embed_features(features: Tensor, projection: Tensor) -> Tensor:
    """Kernel of :func:`graph_embedding`: spatial mean, projection, unit norm; no gradient."""
    n = features.shape[0]
    with torch.autocast(device_type=features.device.type, enabled=False), torch.no_grad():
        dtype = torch.promote_types(compute_dtype(features), projection.dtype)
        x = features.detach().reshape(n, features.shape[1], -1).to(dtype).mean(dim=2)
        x = x - x.mean(dim=1, keepdim=True)  # per image: drop the offset all channels share
        return F.normalize(x @ projection.to(dtype), dim=1)


def check_embedding_inputs(
    features: Tensor,
    projection: Tensor,
    name: str,
    *,
    validated: bool = False,
    projection_name: str = "projection",
) -> dict[str, int]:
    """``features`` ``(n, C, ...)`` against the ``(C, d)`` projection; returns ``{"C", "d"}``.

    ``validated=True``: the caller already checked ``features`` as a floating batch.
    """
    if not validated:
        check_batch(features, name, min_dim=2, what="(n, C, ...)")
    check_tensor(projection, projection_name)
    check_dtype(projection, projection_name, ("float",))
    dims = check_shape(projection, projection_name, ("C", "d"))
    if features.shape[1] != dims["C"]:
        raise CCGShapeError(
            f"`{name}` must have in_channels={dims['C']} channels (C, the rows of "
            f"`{projection_name}`) in dimension 1 (n, C, ...), got shape {tuple(features.shape)}."
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

    Raises:
        CCGShapeError: ``features`` not ``(n, C, ...)`` with ``n >= 1`` and the projection's
            ``C``, ``projection`` not ``(C, d)``.
        CCGDTypeError: Non-float tensors.
        CCGValueRangeError: Non-finite ``features`` (a value check, see
            :func:`ccg_layers.set_value_checks`).

    Example:
        >>> import torch
        >>> x = torch.tensor([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0]])[:, :, None, None]
        >>> graph_embedding(x, torch.eye(3)[:, :2])  # channel means 2: centred (1, -1, 0)
        tensor([[ 0.7071, -0.7071],
                [-0.7071,  0.7071]])
    """
    check_embedding_inputs(features, projection, "features")
    check_finite(features, "features")
    return embed_features(features, projection)


def _bilinear_logits(embeddings: Tensor, weight: Tensor, memory: Tensor | None) -> Tensor:
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        dtype = torch.promote_types(compute_dtype(weight), embeddings.dtype)
        z = embeddings.to(dtype)
        partners = z if memory is None else torch.cat([z, memory.to(dtype)], dim=0)
        return (z @ weight.to(dtype)) @ partners.T


def _check_logit_inputs(
    embeddings: Tensor, weight: Tensor, memory_embeddings: Tensor | None
) -> dict[str, int]:
    check_batch(embeddings, "embeddings", min_dim=2, what="(n, d)")
    check_tensor(weight, "weight")
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

    Raises:
        CCGShapeError: ``embeddings`` not ``(n, d)`` with ``n >= 1`` (an empty batch), ``weight``
            not ``(d, d)``, ``memory_embeddings`` not ``(K, d)``.
        CCGDTypeError: Non-float tensors.

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
    check_memory_valid(memory_valid, dims["K"])
    return dims["K"]


def sample_graph_from_embeddings(
    embeddings: Tensor,
    weight: Tensor,
    memory_embeddings: Tensor | None,
    memory_valid: Tensor | None,
    parametrization: GraphParametrization = "softmax",
) -> Tensor:
    """Kernel of :func:`sample_graph` from the descriptors (validated inputs): ``(n, n + K)``."""
    n = embeddings.shape[0]
    logits = _bilinear_logits(embeddings, weight, memory_embeddings)
    if memory_embeddings is None:
        return normalize_logits(logits, parametrization)
    valid = columns_valid(n, memory_valid, memory_embeddings.shape[0], logits.device)
    return normalize_logits(logits, parametrization, valid=valid)


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

    Raises:
        CCGShapeError: Mismatched shapes, an empty batch.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Non-finite ``features`` (a value check).

    Example:
        >>> import torch
        >>> g = sample_graph(torch.randn(2, 8, 4, 4), torch.zeros(4, 4), torch.randn(8, 4),
        ...                  memory_embeddings=torch.randn(3, 4),
        ...                  memory_valid=torch.tensor([True, True, False]))
        >>> g  # W = 0: uniform over the 2 + 2 valid columns
        tensor([[0.2500, 0.2500, 0.2500, 0.2500, 0.0000],
                [0.2500, 0.2500, 0.2500, 0.2500, 0.0000]])
    """
    dims = check_embedding_inputs(features, projection, "features")
    check_tensor(weight, "weight")
    check_dtype(weight, "weight", ("float",))
    check_shape(weight, "weight", ("d", "d"), dims)
    _check_sample_memory(memory_embeddings, memory_valid, dims["d"])
    check_finite(features, "features")
    return sample_graph_from_embeddings(
        embed_features(features, projection), weight, memory_embeddings, memory_valid
    )


@overload
def conditioned_sample_graph_loss(
    features: Tensor,
    weight: Tensor,
    projection: Tensor,
    *,
    memory_features: Tensor | None = ...,
    memory_embeddings: Tensor | None = ...,
    memory_valid: Tensor | None = ...,
    image_labels: Tensor | None = ...,
    memory_image_labels: Tensor | None = ...,
    margin: float | None = ...,
    reduction: Reduction = ...,
    return_embeddings: Literal[False] = ...,
) -> Tensor: ...


@overload
def conditioned_sample_graph_loss(
    features: Tensor,
    weight: Tensor,
    projection: Tensor,
    *,
    memory_features: Tensor | None = ...,
    memory_embeddings: Tensor | None = ...,
    memory_valid: Tensor | None = ...,
    image_labels: Tensor | None = ...,
    memory_image_labels: Tensor | None = ...,
    margin: float | None = ...,
    reduction: Reduction = ...,
    return_embeddings: Literal[True],
) -> tuple[Tensor, Tensor]: ...


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
    return_embeddings: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""``L_IR`` (paper Eq. 4) with the input-conditioned sample graph of :func:`sample_graph`.

    :math:`L_{IR} = \sum_{u} \sum_{v} G(u, v)\, D(F_u, F_v) / n^2`, ``u`` over the ``n``
    images of the batch (the anchors), ``v`` over the batch and the ``K`` memory partners
    (earlier images, detached: they receive no gradient). ``G(u, v)`` is a function of images
    ``u`` and ``v`` only, so the loss does not depend on the order of the batch.
    ``image_labels`` with ``margin`` give the contrast form (beyond the paper), as in
    :func:`~ccg_layers.functional.sample_graph_loss`.

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
        return_embeddings: Also return the batch's ``(n, d)`` descriptors (what a memory of
            partners keeps, :func:`graph_embedding`), computed once for the graph.

    Returns:
        Scalar, or ``(n, n + K)``; float32 at least. With ``return_embeddings``, the pair
        ``(loss, embeddings)``.

    Raises:
        CCGShapeError: Mismatched shapes, an empty batch, memory maps without descriptors.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Non-finite features, a bad ``reduction``, ``return_embeddings``
            not a bool.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 8, 4, 4)
        >>> from ccg_layers.functional import pairwise_distance
        >>> loss = conditioned_sample_graph_loss(x, torch.zeros(4, 4), torch.randn(8, 4))
        >>> torch.allclose(loss, pairwise_distance(x).sum() / 8)  # W = 0: G = 1/2
        True
    """
    reduction = check_reduction(reduction)
    check_flag(return_embeddings, "return_embeddings")
    dims = check_embedding_inputs(features, projection, "features")
    check_tensor(weight, "weight")
    check_dtype(weight, "weight", ("float",))
    check_shape(weight, "weight", ("d", "d"), dims)
    if (memory_features is None) != (memory_embeddings is None):
        raise CCGShapeError(
            "`memory_features` and `memory_embeddings` go together (the maps for the "
            "distances, the descriptors for the graph), got only one of them."
        )
    K = _check_sample_memory(memory_embeddings, memory_valid, dims["d"])
    check_memory_features(
        memory_features, features, "memory_features", like=("memory_embeddings", K)
    )
    y, m = check_contrast_args(
        image_labels,
        margin,
        int(features.shape[0]),
        memory_image_labels,
        K,
        memory_features is not None,
    )
    alike = None if y is None else batch_alike(y, memory_image_labels)
    z = embed_features(features, projection)
    graph = sample_graph_from_embeddings(z, weight, memory_embeddings, memory_valid)
    loss = weighted_distance_loss(features, graph, memory_features, reduction, alike, m)
    return (loss, z) if return_embeddings else loss


class LearnableSampleGraph(PartnerMemory):
    r"""Inter-image relation loss ``L_IR`` with a learnable sample graph (paper Eq. 4).

    :math:`L_{IR} = \sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2` over the ``n`` images ``u`` of a
    batch and their partners ``v``, ``G`` learnable and initialised to the uniform ``1/n``.

    **Forms.** ``form="conditioned"`` (default) computes the weight of a pair from the two
    images: :math:`\theta_{uv} = z_u^\top W z_v` with ``z`` the unit-length random projection
    of the spatially pooled, channel-centred feature map
    (:func:`~ccg_layers.functional.graph_embedding`, detached; so ``in_channels >= 2``) and
    ``W`` an ``embed_dim x embed_dim`` learned bilinear weight, initialised to 0. It learns *which images are related* (a similarity of their pooled features), so the
    graph follows the images: permuting the batch permutes ``G`` and leaves the loss
    unchanged, and it works for any batch size. ``form="positional"`` is the paper's literal
    ``num_samples x num_samples`` matrix indexed by batch positions (it learns a weight per
    pair of *slots*, which a shuffling loader fills with unrelated images each step), kept for
    reproductions.

    **Parametrisation.** Rows are normalised by
    :func:`~ccg_layers.functional.normalize_graph`: the self-weight is frozen at ``1/N``
    (``N`` the columns: batch and filled memory slots) and the other ``(N-1)/N`` is a softmax
    of the logits over the partners ``v != u``. It starts at exactly the uniform graph, stays
    non-negative (so ``L_IR >= 0``) and cannot collapse onto the self-pairs.
    ``parametrization="free"`` (positional form only) is the literal, unbounded Eq. 4.

    **Memory.** With ``memory_size=K > 0`` the module keeps the feature maps of the last ``K``
    images seen in training (and their descriptors ``z``) in a FIFO queue: they are extra
    partners of every anchor (never anchors, no gradient), so at a batch of 2 each image has
    ``1 + K`` partners and ``W`` learns; without it, a batch of 2 gives every image a single
    partner whose softmax weight is 1 whatever the logits. The batch is enqueued after the
    loss is computed, in training mode only, with one ``index_copy_`` per queue (no host
    synchronisation); with ``defer_enqueue=True`` it is kept until :meth:`commit_memory`
    after the backward, and the forward reads the memory without copying it. The queues are
    persistent buffers (with ``memory_pointer`` and ``memory_count``), allocated at the first
    enqueue in ``memory_dtype`` (default: the features' dtype). Cost per entry: one feature map
    (``C*h*w`` values, a ``2048x16x16`` map is 1 MiB in float16, 2 MiB in float32) plus
    ``embed_dim`` float32. ``"mean"`` divides by ``n^2`` whatever ``K``.

    **DDP.** With ``distributed=True`` and an initialised process group the features of all
    ranks are gathered with gradients (:func:`all_gather_batch`), the graph spans the global
    batch, every rank returns the same global loss, and the enqueued batch is the gathered one,
    so the memory is identical on every rank.

    **Contrast form** (beyond the paper; ``contrast_margin=m``): ``forward`` takes the batch's
    multi-hot ``image_labels`` ``(n, C)`` and every distance becomes
    ``s D + (1 - s) max(0, m - D)`` (:func:`~ccg_layers.functional.contrast_distances`, ``s``
    from :func:`~ccg_layers.functional.alike_pairs`): pairs sharing a finding, or both without
    any, are pulled, the others pushed up to the margin. The memory then also queues each
    partner's labels (``memory_image_labels``, float32; gathered like the features under
    ``distributed``). ``m`` is in the distances' units: meant for unit-normalised maps.

    Args:
        num_samples: Largest batch (global batch under ``distributed``); required by the
            positional form, an optional bound for the conditioned one.
        in_channels: ``C`` of the feature maps; required by the conditioned form.
        form: ``"conditioned"`` (default) or ``"positional"``.
        embed_dim: ``d`` of the descriptors and of ``W`` (conditioned form).
        memory_size: ``K``, partners kept from earlier batches (conditioned form); 0 for none.
        memory_dtype: Dtype of the stored maps; ``None`` for the features' dtype.
        defer_enqueue: Keep a training batch for :meth:`commit_memory` (or
            :func:`~ccg_layers.commit_memories`, after ``backward()``) instead of enqueuing it
            in the forward, which then reads the memory without copying it.
        parametrization: ``"softmax"`` (default) or ``"free"`` (positional form only).
        distributed: Gather the batch across ranks when a process group is initialised.
        reduction: ``"mean"`` (Eq. 4), ``"sum"`` or ``"none"`` (the ``(n, n + K)`` terms).
        contrast_margin: ``None`` (default) for the paper's pull-only Eq. 4; a finite positive
            float for the contrast form (then ``forward`` requires ``image_labels``).
        seed: Seed of the fixed projection (the same on every rank and run).
        device: Device of the parameter and buffers.
        dtype: Dtype of the parameter and the projection (floating).

    Raises:
        CCGValueRangeError: A bad option (e.g. a ``distributed`` that is not a bool, a ``seed``
            that is not an int) or a combination the form does not take.
        CCGDTypeError: A ``dtype`` that is not floating.

    Shape:
        - features: ``(n, C, ...)``, e.g. ``(n, 2048, 16, 16)`` (positional form: ``(n, ...)``).
        - output: scalar (``(n, n + K)`` with ``reduction="none"``).

    Example:
        >>> import torch
        >>> graph = LearnableSampleGraph(in_channels=8, memory_size=4)
        >>> for _ in range(2):  # batches of 2; the first fills the memory
        ...     loss = graph(torch.randn(2, 8, 2, 2, requires_grad=True))
        ...     loss.backward()
        >>> graph.weight.grad.abs().sum() > 0  # 1 + 2 partners per image: W learns
        tensor(True)
        >>> graph.graph(torch.randn(2, 8, 2, 2)).shape  # (n, n + K)
        torch.Size([2, 6])
    """

    _queues = ("memory_features", "memory_embeddings")
    projection: Tensor

    def __init__(
        self,
        num_samples: int | None = None,
        *,
        in_channels: int | None = None,
        form: GraphForm = "conditioned",
        embed_dim: int = 64,
        memory_size: int = 0,
        memory_dtype: torch.dtype | None = None,
        defer_enqueue: bool = False,
        parametrization: GraphParametrization = "softmax",
        distributed: bool = False,
        reduction: Reduction = "mean",
        contrast_margin: float | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.init_contrast(contrast_margin)
        self.form: GraphForm = check_form(form)
        if num_samples is not None:
            positive_int(num_samples, "num_samples")
        self.num_samples = num_samples
        self.parametrization: GraphParametrization = check_parametrization(parametrization)
        self.distributed = check_flag(distributed, "distributed")
        self.reduction: Reduction = check_reduction(reduction)
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        seed = check_seed(seed)
        check_float_dtype(dtype, "dtype")
        if self.form == "positional":
            if num_samples is None:
                raise CCGValueRangeError(
                    "`num_samples` is required with form='positional' (the size of the "
                    "position-indexed matrix), got None."
                )
            if memory_size:
                raise CCGValueRangeError(
                    "`memory_size` must be 0 with form='positional' (memory slots have no "
                    f"batch position), got {memory_size!r}; use form='conditioned'."
                )
            self.in_channels = (
                None if in_channels is None else positive_int(in_channels, "in_channels")
            )
            init = 1.0 / num_samples if self.parametrization == "free" else 0.0
            self.weight = nn.Parameter(
                torch.full((num_samples, num_samples), init, device=device, dtype=dtype)
            )
            self.init_memory(0, memory_dtype, device)
            return
        if in_channels is None:
            raise CCGValueRangeError(
                "`in_channels` (the channels C of the feature maps) is required with "
                "form='conditioned', the default, got None; pass form='positional' for the "
                "paper's position-indexed num_samples x num_samples matrix."
            )
        self.in_channels = positive_int(in_channels, "in_channels")
        if self.in_channels < 2:
            raise CCGValueRangeError(
                "`in_channels` must be >= 2 with form='conditioned' (a single channel, centred "
                f"across channels, is 0 for every image), got {in_channels!r}."
            )
        if self.parametrization == "free":
            raise CCGValueRangeError(
                "`parametrization='free'` (the literal, unbounded Eq. 4) only exists for "
                "form='positional', got it with form='conditioned'."
            )
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(self.in_channels, self.embed_dim, generator=generator)
        self.register_buffer("projection", projection.to(device=device, dtype=dtype))
        self.weight = nn.Parameter(
            torch.zeros(self.embed_dim, self.embed_dim, device=device, dtype=dtype)
        )
        self.init_memory(memory_size, memory_dtype, device, defer_enqueue)

    def _check_state(self, features: Tensor) -> None:
        """The batch against the module's own state: ``num_samples`` and the memory's maps.

        Everything else about the inputs is validated once, by the public function the call
        goes to (:func:`conditioned_sample_graph_loss`, :func:`sample_graph`,
        :func:`~ccg_layers.functional.sample_graph_loss`).
        """
        if not isinstance(features, Tensor) or features.dim() == 0:
            return  # not a batch: the function names the error
        n = int(features.shape[0])
        too_few = n == 0 and self.form == "positional"
        if self.num_samples is not None and (too_few or n > self.num_samples):
            raise CCGShapeError(
                f"`features` must hold 1 <= n <= num_samples={self.num_samples} samples "
                f"(the global batch when distributed), got shape {tuple(features.shape)}."
            )
        self.check_memory_entry(features, "features")

    def _positional_graph(self, n: int) -> Tensor:
        return normalize_logits(self.weight[:n, :n], self.parametrization)  # own state

    def graph(self, features: Tensor | int | None = None, *, use_memory: bool = True) -> Tensor:
        """The graph ``G`` that forward uses for ``features`` (read-only; enqueues nothing).

        Conditioned form: ``(n, n + K)`` for the ``(n, C, ...)`` ``features`` (``K`` the
        memory slots, 0 where unfilled; ``use_memory=False`` for the batch alone, ``(n, n)``),
        :func:`sample_graph`. The forward enqueues the batch in training mode, so call this
        *before* it (or in eval mode) to see the weights that forward used. Positional form:
        ``(n, n)`` for a batch of ``n`` (an int, or the features; default ``num_samples``).
        """
        if self.form == "positional":
            assert self.num_samples is not None
            if isinstance(features, Tensor):
                n = int(features.shape[0])
            else:  # an int (NumPy ints too); a bool or a string is a type error, not a range one
                n = self.num_samples if features is None else positive_int(features, "n")
            if not 1 <= n <= self.num_samples:
                raise CCGShapeError(
                    f"the batch must have 1 <= n <= num_samples={self.num_samples} samples, "
                    f"got n={n}."
                )
            return self._positional_graph(n)
        if not isinstance(features, Tensor):
            raise CCGShapeError(
                "`features` (n, C, ...) are required by the conditioned graph, got "
                f"{type(features).__name__}."
            )
        self._check_state(features)
        memory = self.memory_tensors() if check_flag(use_memory, "use_memory") else None
        return sample_graph(
            features,
            self.weight,
            self.projection,
            memory_embeddings=None if memory is None else memory[1],
            memory_valid=None if memory is None else self.memory_valid(),
        )

    def forward(self, features: Tensor, *, image_labels: Tensor | None = None) -> Tensor:
        """Compute ``L_IR`` of the batch (and enqueue it in training mode).

        Calls :func:`conditioned_sample_graph_loss` (positional form:
        :func:`~ccg_layers.functional.sample_graph_loss` on :meth:`graph`), which validates
        the inputs once. ``image_labels`` ``(n, C)`` (the contrast form, required with
        ``contrast_margin``): the batch's multi-hot labels, float 0/1 or bool (gathered under
        ``distributed``).
        """
        self.check_contrast_inputs(image_labels, "image_labels")
        if self.distributed:
            features = all_gather_batch(features)
            if image_labels is not None:
                image_labels = all_gather_batch(gatherable(image_labels))
        self._check_state(features)
        self.check_memory_labels(image_labels, "image_labels")
        margin = self.contrast_margin
        if self.form == "positional":
            batch = isinstance(features, Tensor) and features.dim() > 0
            n = int(features.shape[0]) if batch else self.num_samples
            assert n is not None
            graph = self._positional_graph(n)
            return sample_graph_loss(
                features, graph, image_labels=image_labels, margin=margin, reduction=self.reduction
            )
        memory = self.memory_inputs()
        loss, z = conditioned_sample_graph_loss(
            features,
            self.weight,
            self.projection,
            memory_features=None if memory is None else memory[0],
            memory_embeddings=None if memory is None else memory[1],
            memory_valid=None if memory is None else self.memory_valid(),
            image_labels=image_labels,
            memory_image_labels=self.memory_labels(),
            margin=margin,
            reduction=self.reduction,
            return_embeddings=True,
        )
        if self.training and self.memory_size > 0:
            feature_dtype = self.memory_dtype or features.dtype
            if image_labels is None:
                self.push_batch([features, z], [feature_dtype, z.dtype])
            else:
                entries = [features, z, image_labels]
                self.push_batch(entries, [feature_dtype, z.dtype, torch.float32])
        return loss

    def extra_repr(self) -> str:
        """Show the configuration in ``repr``."""
        return (
            f"num_samples={self.num_samples}, in_channels={self.in_channels}, "
            f"form={self.form!r}, embed_dim={self.embed_dim}, memory_size={self.memory_size}, "
            f"parametrization={self.parametrization!r}, distributed={self.distributed}, "
            f"reduction={self.reduction!r}"
            + ("" if self.contrast_margin is None else f", contrast_margin={self.contrast_margin}")
        )
