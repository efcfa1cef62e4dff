r"""``L_IR`` (Eq. 4) and ``L_IK`` (Eq. 5-7) of a batch over one memory of partners.

Both losses weight the distances between the feature maps of the batch and of the partners by a
graph: the sample graph of :mod:`ccg_layers.sample_graph` and the patch-hash graph of
:mod:`ccg_layers.patch_graph`. When both run on the same maps (the trainer's C5 maps) they
need the same partners, so :func:`relation_graph_losses` computes the distance matrix, its
finiteness check and (contrast form) the alike-ness once for the two graphs, and
:class:`RelationGraphs` keeps one memory for both: each entry is a feature map with its sample
descriptor and its patch codes (and its image labels in the contrast form), enqueued once and
stored once, instead of the same map in two queues. The results equal the two modules
:class:`~ccg_layers.LearnableSampleGraph` and :class:`~ccg_layers.PatchHashGraph` with their own
memories of the same size.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import Tensor

from ccg_layers.contrast import batch_alike, check_contrast_args
from ccg_layers.distance import check_memory_features, weighted_distance_losses
from ccg_layers.distributed import all_gather_batch
from ccg_layers.errors import CCGShapeError
from ccg_layers.hashing import encode_patches
from ccg_layers.memory import PartnerMemory, gatherable
from ccg_layers.normalization import GraphParametrization, check_parametrization
from ccg_layers.patch_graph import PatchHashGraph, check_patch_graph_args, patch_graph_from_codes
from ccg_layers.sample_graph import (
    LearnableSampleGraph,
    check_embedding_inputs,
    embed_features,
    sample_graph_from_embeddings,
)
from ccg_layers.validation import (
    Reduction,
    check_batch,
    check_dtype,
    check_flag,
    check_reduction,
    check_shape,
    check_tensor,
)

__all__ = ["RelationGraphs", "relation_graph_losses"]


@overload
def relation_graph_losses(
    features: Tensor,
    labels: Tensor,
    sample_weight: Tensor,
    sample_projection: Tensor,
    patch_weight: Tensor,
    patch_projection: Tensor,
    patch_bias: Tensor | None = ...,
    *,
    memory_features: Tensor | None = ...,
    memory_embeddings: Tensor | None = ...,
    memory_codes: Tensor | None = ...,
    memory_valid: Tensor | None = ...,
    image_labels: Tensor | None = ...,
    memory_image_labels: Tensor | None = ...,
    margin: float | None = ...,
    parametrization: GraphParametrization = ...,
    reduction: Reduction = ...,
    return_entries: Literal[False] = ...,
) -> tuple[Tensor, Tensor]: ...


@overload
def relation_graph_losses(
    features: Tensor,
    labels: Tensor,
    sample_weight: Tensor,
    sample_projection: Tensor,
    patch_weight: Tensor,
    patch_projection: Tensor,
    patch_bias: Tensor | None = ...,
    *,
    memory_features: Tensor | None = ...,
    memory_embeddings: Tensor | None = ...,
    memory_codes: Tensor | None = ...,
    memory_valid: Tensor | None = ...,
    image_labels: Tensor | None = ...,
    memory_image_labels: Tensor | None = ...,
    margin: float | None = ...,
    parametrization: GraphParametrization = ...,
    reduction: Reduction = ...,
    return_entries: Literal[True],
) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


def relation_graph_losses(
    features: Tensor,
    labels: Tensor,
    sample_weight: Tensor,
    sample_projection: Tensor,
    patch_weight: Tensor,
    patch_projection: Tensor,
    patch_bias: Tensor | None = None,
    *,
    memory_features: Tensor | None = None,
    memory_embeddings: Tensor | None = None,
    memory_codes: Tensor | None = None,
    memory_valid: Tensor | None = None,
    image_labels: Tensor | None = None,
    memory_image_labels: Tensor | None = None,
    margin: float | None = None,
    parametrization: GraphParametrization = "softmax",
    reduction: Reduction = "mean",
    return_entries: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(L_IR, L_IK)`` of one batch and one memory, the distances computed once (Eq. 4, 5).

    :math:`L_{IR} = \sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2` with the input-conditioned sample
    graph (:func:`~ccg_layers.functional.conditioned_sample_graph_loss`) and
    :math:`L_{IK} = \sum_{u,v} G_k(u, v)\, D(F_u, F_v) / n^2` with the patch-hash graph of the
    patches of ``features`` (:func:`~ccg_layers.functional.patch_hash_graph_loss`), ``v`` over
    the batch and the ``K`` memory partners. One ``(n, n + K)`` distance matrix serves both;
    each equals its own function exactly. ``image_labels`` with ``margin``: the contrast form
    (beyond the paper) of both.

    Args:
        features: ``(n, C, h, w)`` feature maps of the batch.
        labels: ``(n, H, W)`` superpixel labels in ``[0, m)``.
        sample_weight: ``(d, d)`` bilinear weight of the sample graph.
        sample_projection: ``(C, d)`` its fixed projection.
        patch_weight: ``(m, m)`` weight of ``W_l``.
        patch_projection: ``(C, bits)`` fixed hashing projection.
        patch_bias: ``()`` bias of ``W_l`` (only seen by ``"free"``); ``None`` for none.
        memory_features: ``(K, C, h, w)`` maps of the memory partners.
        memory_embeddings: ``(K, d)`` their sample descriptors; required with the maps.
        memory_codes: ``(K, m, bits)`` their patch codes; required with the maps.
        memory_valid: ``(K,)`` bool, the filled slots; ``None`` for all.
        image_labels: ``(n, C')`` multi-hot labels for the contrast form; ``None`` for pull.
        memory_image_labels: ``(K, C')`` the memory's labels; required with both.
        margin: Contrast margin (finite, > 0); required with ``image_labels``.
        parametrization: Of the patch graph: ``"softmax"`` (default) or ``"free"``.
        reduction: ``"mean"`` (``/ n^2``), ``"sum"`` or ``"none"`` (``(n, n + K)`` terms).
        return_entries: Also return what a memory keeps of the batch: the ``(n, d)``
            descriptors and the ``(n, m, bits)`` patch codes, computed once for the graphs.

    Returns:
        ``(loss_ir, loss_ik)``; with ``return_entries``, ``(loss_ir, loss_ik, embeddings,
        codes)``.

    Raises:
        CCGShapeError: Mismatched shapes, an empty batch, a memory given in part.
        CCGDTypeError: Wrong dtypes.
        CCGValueRangeError: Labels out of range, non-finite features, a bad option
            (``return_entries`` not a bool, ...).

    Example:
        >>> import torch
        >>> from ccg_layers.functional import conditioned_sample_graph_loss, patch_hash_graph_loss
        >>> x = torch.randn(3, 8, 4, 4)
        >>> labels = torch.arange(4).repeat_interleave(4).reshape(1, 4, 4).repeat(3, 1, 1)
        >>> w_ir, p_ir, w_ik, p_ik = torch.randn(4, 4), torch.randn(8, 4), torch.randn(4, 4), torch.randn(8, 16)
        >>> l_ir, l_ik = relation_graph_losses(x, labels, w_ir, p_ir, w_ik, p_ik)
        >>> bool(l_ir == conditioned_sample_graph_loss(x, w_ir, p_ir))
        True
        >>> bool(l_ik == patch_hash_graph_loss(x, labels, p_ik, w_ik))
        True
    """
    reduction = check_reduction(reduction)
    parametrization = check_parametrization(parametrization)
    check_flag(return_entries, "return_entries")
    check_batch(features, "features", min_dim=4, what="(n, C, h, w)")
    check_shape(features, "features", ("n", "C", "h", "w"))
    dims = check_embedding_inputs(
        features, sample_projection, "features", validated=True, projection_name="sample_projection"
    )
    check_tensor(sample_weight, "sample_weight")
    check_dtype(sample_weight, "sample_weight", ("float",))
    check_shape(sample_weight, "sample_weight", ("d", "d"), dims)
    given = [t is not None for t in (memory_features, memory_embeddings, memory_codes)]
    if any(given) and not all(given):
        raise CCGShapeError(
            "`memory_features`, `memory_embeddings` and `memory_codes` go together (the maps "
            "for the distances, the descriptors and the codes for the graphs), got "
            f"{sum(given)} of them."
        )
    n, m, K = check_patch_graph_args(
        features,
        "features",
        labels,
        patch_projection,
        patch_weight,
        patch_bias,
        None,
        "features_b",
        None,
        memory_codes,
        memory_valid,
        validated=True,
        prefix="patch_",
    )
    if memory_embeddings is not None:  # memory_valid: checked with the codes
        check_tensor(memory_embeddings, "memory_embeddings")
        check_dtype(memory_embeddings, "memory_embeddings", ("float",))
        check_shape(memory_embeddings, "memory_embeddings", ("K", "d"), {"K": K, "d": dims["d"]})
    check_memory_features(memory_features, features, "memory_features", like=("memory_codes", K))
    y, margin_ = check_contrast_args(
        image_labels, margin, n, memory_image_labels, K, memory_features is not None
    )
    alike = None if y is None else batch_alike(y, memory_image_labels)
    z = embed_features(features, sample_projection)
    graph_ir = sample_graph_from_embeddings(z, sample_weight, memory_embeddings, memory_valid)
    codes = encode_patches(features, labels, patch_projection, m)
    graph_ik = patch_graph_from_codes(
        codes, patch_weight, patch_bias, None, memory_codes, memory_valid, parametrization
    )
    loss_ir, loss_ik = weighted_distance_losses(
        features, (graph_ir, graph_ik), memory_features, reduction, alike, margin_
    )
    if return_entries:
        return loss_ir, loss_ik, z, codes
    return loss_ir, loss_ik


class RelationGraphs(PartnerMemory):
    r"""``L_IR`` and ``L_IK`` over one memory of partners (paper Eq. 4, 5-7).

    A :class:`~ccg_layers.LearnableSampleGraph` (conditioned form) and a
    :class:`~ccg_layers.PatchHashGraph` on the same feature maps, as ``sample_graph`` and
    ``patch_graph`` (their parameters; their own memories are off), with **one** memory: each
    of the last ``memory_size`` images seen in training is kept once, as its feature map, its
    sample descriptor and its patch codes (and its image labels in the contrast form), enqueued
    once after the losses; the forward computes the distances to the batch and the memory once
    for both graphs (:func:`relation_graph_losses`). The losses equal those of the two modules
    with memories of the same size, and the state (persistent buffers ``memory_features``,
    ``memory_embeddings``, ``memory_codes``, ``memory_pointer``, ``memory_count``) resumes
    bit-identically. Under ``distributed`` the batch is gathered from every rank (with
    gradients) and the memory holds the gathered batch, identical on every rank. With value
    checks off the forward and backward make no host synchronisation.

    Args:
        in_channels: ``C`` of the feature maps (>= 2).
        num_patches: ``m``, the superpixels per image.
        embed_dim: ``d`` of the sample descriptors.
        code_bits: Bits of each patch code.
        memory_size: ``K``, partners kept from earlier batches; 0 for none.
        memory_dtype: Dtype of the stored maps; ``None`` for the features' dtype.
        defer_enqueue: Keep a training batch for :meth:`commit_memory` (or
            :func:`~ccg_layers.commit_memories`, after ``backward()``) instead of enqueuing it
            in the forward, which then reads the memory without copying it.
        parametrization: Of the patch graph: ``"softmax"`` (default) or ``"free"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        distributed: Gather the batch across ranks when a process group is initialised.
        contrast_margin: ``None`` for the paper's pull-only form; a finite positive float for
            the contrast form (then ``forward`` requires ``image_labels``).
        seed: Seed of the fixed projections (the same on every rank and run).
        device: Device of the parameters and buffers.
        dtype: Dtype of the parameters and the projections (floating).

    Raises:
        CCGValueRangeError: A bad option, e.g. a ``distributed`` that is not a bool.
        CCGDTypeError: A ``dtype`` that is not floating.

    Shape:
        - features: ``(n, C, h, w)``; labels: ``(n, H, W)`` superpixel labels.
        - output: ``(loss_ir, loss_ik)``, scalars (``(n, n + K)`` with ``reduction="none"``).

    Example:
        >>> import torch
        >>> from ccg_layers import superpixels
        >>> graphs = RelationGraphs(8, 16, code_bits=32, memory_size=4)
        >>> labels = superpixels(torch.rand(2, 64, 64), 16)
        >>> for _ in range(2):  # batches of 2; the first fills the memory
        ...     l_ir, l_ik = graphs(torch.randn(2, 8, 8, 8, requires_grad=True), labels)
        ...     (l_ir + l_ik).backward()
        >>> int(graphs.memory_count), graphs.memory_features.shape
        (4, torch.Size([4, 8, 8, 8]))
    """

    _queues = ("memory_features", "memory_embeddings", "memory_codes")

    def __init__(
        self,
        in_channels: int,
        num_patches: int,
        *,
        embed_dim: int = 64,
        code_bits: int = 64,
        memory_size: int = 0,
        memory_dtype: torch.dtype | None = None,
        defer_enqueue: bool = False,
        parametrization: GraphParametrization = "softmax",
        reduction: Reduction = "mean",
        distributed: bool = False,
        contrast_margin: float | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.init_contrast(contrast_margin)
        self.sample_graph = LearnableSampleGraph(
            in_channels=in_channels,
            embed_dim=embed_dim,
            reduction=reduction,
            contrast_margin=contrast_margin,
            seed=seed,
            device=device,
            dtype=dtype,
        )
        self.patch_graph = PatchHashGraph(
            num_patches,
            in_channels,
            code_bits=code_bits,
            parametrization=parametrization,
            reduction=reduction,
            contrast_margin=contrast_margin,
            seed=seed,
            device=device,
            dtype=dtype,
        )
        self.reduction: Reduction = check_reduction(reduction)
        self.distributed = check_flag(distributed, "distributed")
        self.init_memory(memory_size, memory_dtype, device, defer_enqueue)

    def forward(
        self, features: Tensor, labels: Tensor, *, image_labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(L_IR, L_IK)`` of the batch by :func:`relation_graph_losses` (enqueued in training).

        The inputs are validated once, by that function; the module checks its own state (the
        maps and labels in its memory against the batch's, ``contrast_margin`` against the
        labels given).
        """
        self.check_contrast_inputs(image_labels, "image_labels")
        if self.distributed:
            features = all_gather_batch(features)
            labels = all_gather_batch(labels)
            if image_labels is not None:
                image_labels = all_gather_batch(gatherable(image_labels))
        if isinstance(features, Tensor):
            self.check_memory_entry(features, "features")
        self.check_memory_labels(image_labels, "image_labels")
        memory = self.memory_inputs()
        loss_ir, loss_ik, z, codes = relation_graph_losses(
            features,
            labels,
            self.sample_graph.weight,
            self.sample_graph.projection,
            self.patch_graph.weight,
            self.patch_graph.projection,
            self.patch_graph.bias,
            memory_features=None if memory is None else memory[0],
            memory_embeddings=None if memory is None else memory[1],
            memory_codes=None if memory is None else memory[2],
            memory_valid=None if memory is None else self.memory_valid(),
            image_labels=image_labels,
            memory_image_labels=self.memory_labels(),
            margin=self.contrast_margin,
            parametrization=self.patch_graph.parametrization,
            reduction=self.reduction,
            return_entries=True,
        )
        if self.training and self.memory_size > 0:
            entries = [features.detach(), z, codes]
            dtypes = [self.memory_dtype or features.dtype, z.dtype, torch.int8]
            if image_labels is not None:
                entries.append(image_labels)
                dtypes.append(torch.float32)
            self.push_batch(entries, dtypes)
        return loss_ir, loss_ik

    def extra_repr(self) -> str:
        """Show the configuration in ``repr``."""
        return (
            f"memory_size={self.memory_size}, distributed={self.distributed}, "
            f"reduction={self.reduction!r}"
            + ("" if self.contrast_margin is None else f", contrast_margin={self.contrast_margin}")
        )
