"""Graph modules: thin :class:`torch.nn.Module` wrappers over :mod:`ccg_layers.functional`.

:class:`LearnableSampleGraph` is the inter-image relation loss ``L_IR`` (paper Eq. 4) and
:class:`PatchHashGraph` the intra-image knowledge loss ``L_IK`` (Eq. 5-7), which also serves
the patch graph of the knowledge reasoning loss ``L_KR`` on attended pairs (Eq. 8-10). Both can
keep a cross-batch memory of partners (``memory_size``), so that even at a batch of 2 every
image has several partners and every parameter of the graphs learns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ccg_layers._validation import Reduction, check_finite, check_reduction, check_tensor
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.functional.graphs import (
    GraphForm,
    GraphParametrization,
    _batch_alike,
    _check_batch,
    _check_form,
    _check_image_labels,
    _check_margin,
    _check_parametrization,
    _check_patch_graph_args,
    _conditioned_loss,
    _embed,
    _enqueue,
    _graph_loss,
    _normalize,
    _pair_alike,
    _patch_codes,
    _patch_graph,
    _patch_loss,
    _sample_graph,
)

__all__ = ["LearnableSampleGraph", "PatchHashGraph", "all_gather_batch"]


def all_gather_batch(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate the ``(n_r, ...)`` batches of all ranks in rank order, keeping gradients.

    Uses :func:`torch.distributed.nn.functional.all_gather` (its backward sums every rank's
    gradient for this rank's slice back onto it); batches of different sizes (the last batch of
    a sharded epoch) are padded for the collective and trimmed after it. Without an initialised
    process group, returns ``x``.

    Example:
        >>> import torch
        >>> all_gather_batch(torch.ones(2, 3)).shape  # not distributed: unchanged
        torch.Size([2, 3])
    """
    if not (dist.is_available() and dist.is_initialized()):
        return x
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size(group)
    if world == 1:
        return x
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = x
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        padded = torch.cat([x, pad], dim=0)
    with warnings.catch_warnings():
        # torch >= 2.10 marks it deprecated in favour of a private API; it still works (and is
        # what gloo supports): keep the documented public function and silence the notice.
        warnings.filterwarnings(
            "ignore", message=".*all_gather is deprecated", category=FutureWarning
        )
        parts = all_gather(padded, group=group)  # type: ignore[no-untyped-call]
    return torch.cat([part[:c] for part, c in zip(parts, counts, strict=True)], dim=0)


def _positive_int(value: object, name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "non-negative" if allow_zero else "positive"
        raise CCGValueRangeError(f"`{name}` must be a {kind} int, got {value!r}.")
    return value


class _PartnerMemory(nn.Module):
    """A FIFO queue of earlier samples (partners only, never anchors), as persistent buffers.

    Subclasses name their parallel queues in ``_queues``. The queues are allocated at the first
    enqueue (their entry shape is that of the first batch) and saved in ``state_dict`` with the
    pointer and the fill count, so a resumed run continues bit-identically.
    """

    _queues: tuple[str, ...] = ()
    memory_size: int

    def _init_memory(self, memory_size: int, memory_dtype: torch.dtype | None, device: Any) -> None:
        self.memory_size = _positive_int(memory_size, "memory_size", allow_zero=True)
        if memory_dtype is not None and not (
            isinstance(memory_dtype, torch.dtype) and memory_dtype.is_floating_point
        ):
            raise CCGValueRangeError(
                f"`memory_dtype` must be a floating torch.dtype or None, got {memory_dtype!r}."
            )
        self.memory_dtype = memory_dtype
        if self.memory_size == 0:
            return
        self.register_buffer("memory_pointer", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("memory_count", torch.zeros((), dtype=torch.long, device=device))
        for name in self._queues:
            self.register_buffer(name, torch.zeros(0, device=device))

    def _queue(self, name: str) -> Tensor:
        buf = self._buffers[name]
        assert buf is not None
        return buf

    def _allocated(self) -> bool:
        return self.memory_size > 0 and self._queue(self._queues[0]).shape[0] == self.memory_size

    def memory_valid(self) -> Tensor | None:
        """``(memory_size,)`` bool, the filled slots; ``None`` while the memory is empty/off."""
        if not self._allocated():
            return None
        count = self._buffers["memory_count"]
        assert count is not None
        return torch.arange(self.memory_size, device=count.device) < count

    def reset_memory(self) -> None:
        """Empty the memory (e.g. between training and an evaluation on other data)."""
        if self.memory_size == 0:
            return
        for name in ("memory_pointer", "memory_count"):
            self._queue(name).zero_()
        for name in self._queues:
            self._buffers[name] = torch.zeros(0, device=self._queue(name).device)

    def _memory(self) -> tuple[Tensor, ...] | None:
        return tuple(self._queue(name) for name in self._queues) if self._allocated() else None

    def _init_contrast(self, contrast_margin: float | None) -> None:
        """``contrast_margin`` (call before ``_init_memory``): the memory also queues labels."""
        self.contrast_margin = (
            None if contrast_margin is None else _check_margin(contrast_margin, "contrast_margin")
        )
        if self.contrast_margin is not None:
            self._queues = (*type(self)._queues, "memory_image_labels")

    def _image_labels(
        self, image_labels: Tensor | None, n: int, name: str = "image_labels"
    ) -> Tensor | None:
        """The image labels of a batch of ``n``: required with a contrast margin, else refused."""
        if self.contrast_margin is None:
            if image_labels is not None:
                raise CCGValueRangeError(
                    f"`{name}` is only used with `contrast_margin` set (the contrast form), "
                    "got it with contrast_margin=None."
                )
            return None
        if image_labels is None:
            raise CCGShapeError(
                f"`{name}` (n, C) multi-hot image labels are required with "
                f"contrast_margin={self.contrast_margin}, got None."
            )
        held = None
        if self._allocated():
            held = int(self._queue("memory_image_labels").shape[1])
        return _check_image_labels(image_labels, name, n=n, c=held)

    def _memory_labels(self) -> Tensor | None:
        if self.contrast_margin is None or not self._allocated():
            return None
        return self._queue("memory_image_labels")

    def _check_entry(self, features: Tensor, name: str) -> None:
        """The maps of a batch must have the shape of the maps in the memory."""
        if not self._allocated():
            return
        held = self._queue(self._queues[0]).shape[1:]
        if tuple(features.shape[1:]) != tuple(held):
            raise CCGShapeError(
                f"`{name}` must have shape (n, {', '.join(map(str, held))}) like the feature "
                f"maps already in the memory, got shape {tuple(features.shape)} (call "
                "`reset_memory()` to change the map size)."
            )

    def _push(self, entries: Sequence[Tensor], dtypes: Sequence[torch.dtype]) -> None:
        if not self._allocated():
            pointer = self._queue("memory_pointer")
            for name, entry, dtype in zip(self._queues, entries, dtypes, strict=True):
                self._buffers[name] = torch.zeros(
                    (self.memory_size, *entry.shape[1:]), dtype=dtype, device=pointer.device
                )
        queues = [self._queue(name) for name in self._queues]
        _enqueue(queues, self._queue("memory_pointer"), self._queue("memory_count"), entries)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # the queues are allocated lazily: adopt the saved shape and dtype before copying
        for name in self._queues if self.memory_size else ():
            saved = state_dict.get(prefix + name)
            current = self._queue(name)
            if (
                isinstance(saved, Tensor)
                and saved.dim() > 0
                and saved.shape[0]
                not in (
                    0,
                    self.memory_size,
                )
            ):
                error_msgs.append(
                    f"{prefix}{name}: the saved memory has {saved.shape[0]} slots, this "
                    f"module has memory_size={self.memory_size}."
                )
                continue
            if isinstance(saved, Tensor) and (
                saved.shape != current.shape or saved.dtype != current.dtype
            ):
                self._buffers[name] = torch.empty(
                    saved.shape, dtype=saved.dtype, device=current.device
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class LearnableSampleGraph(_PartnerMemory):
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
    synchronisation). The queues are persistent buffers (with ``memory_pointer`` and
    ``memory_count``), allocated at the first enqueue in ``memory_dtype`` (default: the
    features' dtype). Cost per entry: one feature map (``C*h*w`` values, a ``2048x16x16`` map is
    1 MiB in float16, 2 MiB in float32) plus ``embed_dim`` float32. ``"mean"`` divides by
    ``n^2`` whatever ``K``.

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
        parametrization: ``"softmax"`` (default) or ``"free"`` (positional form only).
        distributed: Gather the batch across ranks when a process group is initialised.
        reduction: ``"mean"`` (Eq. 4), ``"sum"`` or ``"none"`` (the ``(n, n + K)`` terms).
        contrast_margin: ``None`` (default) for the paper's pull-only Eq. 4; a finite positive
            float for the contrast form (then ``forward`` requires ``image_labels``).
        seed: Seed of the fixed projection (the same on every rank and run).
        device: Device of the parameter and buffers.
        dtype: Dtype of the parameter and the projection.

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
        parametrization: GraphParametrization = "softmax",
        distributed: bool = False,
        reduction: Reduction = "mean",
        contrast_margin: float | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_contrast(contrast_margin)
        self.form: GraphForm = _check_form(form)
        if num_samples is not None:
            _positive_int(num_samples, "num_samples")
        self.num_samples = num_samples
        self.parametrization: GraphParametrization = _check_parametrization(parametrization)
        self.distributed = bool(distributed)
        self.reduction: Reduction = check_reduction(reduction)
        self.embed_dim = _positive_int(embed_dim, "embed_dim")
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
            self.in_channels = in_channels
            init = 1.0 / num_samples if self.parametrization == "free" else 0.0
            self.weight = nn.Parameter(
                torch.full((num_samples, num_samples), init, device=device, dtype=dtype)
            )
            self._init_memory(0, memory_dtype, device)
            return
        if in_channels is None:
            raise CCGValueRangeError(
                "`in_channels` (the channels C of the feature maps) is required with "
                "form='conditioned', the default, got None; pass form='positional' for the "
                "paper's position-indexed num_samples x num_samples matrix."
            )
        self.in_channels = _positive_int(in_channels, "in_channels")
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
        self._init_memory(memory_size, memory_dtype, device)

    def _check_n(self, features: Tensor) -> int:
        n = int(features.shape[0])
        if self.num_samples is not None and n > self.num_samples:
            raise CCGShapeError(
                f"`features` must hold 1 <= n <= num_samples={self.num_samples} samples "
                f"(the global batch when distributed), got shape {tuple(features.shape)}."
            )
        return n

    def _check_features(self, features: Tensor) -> int:
        if self.form == "positional":
            if features.dim() >= 1 and features.shape[0] == 0 and self.num_samples is not None:
                raise CCGShapeError(
                    f"`features` must hold 1 <= n <= num_samples={self.num_samples} samples "
                    f"(the global batch when distributed), got shape {tuple(features.shape)}."
                )
            _check_batch(features, "features")
            return self._check_n(features)
        _check_batch(features, "features", min_dim=2, what="(n, C, ...)")
        if features.shape[1] != self.in_channels:
            raise CCGShapeError(
                f"`features` must have in_channels={self.in_channels} channels in dimension 1 "
                f"(n, C, ...), got shape {tuple(features.shape)}."
            )
        self._check_entry(features, "features")
        return self._check_n(features)

    def graph(self, features: Tensor | int | None = None, *, use_memory: bool = True) -> Tensor:
        """The graph ``G`` that forward uses for ``features`` (read-only; enqueues nothing).

        Conditioned form: ``(n, n + K)`` for the ``(n, C, ...)`` ``features`` (``K`` the
        memory slots, 0 where unfilled; ``use_memory=False`` for the batch alone, ``(n, n)``).
        The forward enqueues the batch in training mode, so call this *before* it (or in
        eval mode) to see the weights that forward used. Positional form: ``(n, n)`` for a
        batch of ``n`` (an int, or the features; default ``num_samples``).
        """
        if self.form == "positional":
            if isinstance(features, Tensor):
                features = int(features.shape[0])
            n = self.num_samples if features is None else features
            assert self.num_samples is not None
            if not isinstance(n, int) or not 1 <= n <= self.num_samples:
                raise CCGShapeError(
                    f"the batch must have 1 <= n <= num_samples={self.num_samples} samples, "
                    f"got n={n}."
                )
            return _normalize(self.weight[:n, :n], self.parametrization)
        if not isinstance(features, Tensor):
            raise CCGShapeError(
                "`features` (n, C, ...) are required by the conditioned graph, got "
                f"{type(features).__name__}."
            )
        self._check_features(features)
        memory = self._memory() if use_memory else None
        z = _embed(features, self.projection)
        if memory is None:
            return _sample_graph(z, self.weight, None, None)
        return _sample_graph(z, self.weight, memory[1], self.memory_valid())

    def forward(self, features: Tensor, *, image_labels: Tensor | None = None) -> Tensor:
        """Compute ``L_IR`` of the batch (and enqueue it in training mode).

        ``image_labels`` ``(n, C)`` (the contrast form, required with ``contrast_margin``):
        the batch's multi-hot labels, float 0/1 or bool (gathered under ``distributed``).
        """
        check_tensor(features, "features")
        if self.distributed:
            features = all_gather_batch(features)
            if image_labels is not None:
                labels = check_tensor(image_labels, "image_labels")
                if labels.dtype == torch.bool:  # collectives of gloo take no bool
                    labels = labels.to(torch.float32)
                image_labels = all_gather_batch(labels)
        n = self._check_features(features)
        y = self._image_labels(image_labels, n)
        margin = self.contrast_margin
        if self.form == "positional":
            if n == 1:
                check_finite(features, "features")
            graph = _normalize(self.weight[:n, :n], self.parametrization)
            alike = None if y is None else _batch_alike(y, None)
            return _graph_loss(features, graph, None, self.reduction, alike, margin)
        memory = self._memory()
        if n == 1 and memory is None:
            check_finite(features, "features")
        mem_f, mem_z = (None, None) if memory is None else memory[:2]
        alike = None if y is None else _batch_alike(y, self._memory_labels())
        loss, z, _ = _conditioned_loss(
            features,
            self.weight,
            self.projection,
            mem_f,
            mem_z,
            self.memory_valid(),
            self.reduction,
            alike,
            margin,
        )
        if self.training and self.memory_size > 0:
            feature_dtype = self.memory_dtype or features.dtype
            if y is None:
                self._push([features, z], [feature_dtype, z.dtype])
            else:
                self._push([features, z, y], [feature_dtype, z.dtype, torch.float32])
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


class PatchHashGraph(_PartnerMemory):
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
        distributed: In the all-pairs form, gather features, labels and ``hash_input`` from
            all ranks (as :class:`LearnableSampleGraph`) so the graph spans the global batch.
            The pair form's loss is always local (each rank's pairs); its enqueued pairs are
            gathered.
        memory_size: ``K``, partners kept from earlier batches; 0 for none.
        memory_dtype: Dtype of the stored maps; ``None`` for the features' dtype.
        contrast_margin: ``None`` (default) for the paper's pull-only form; a finite positive
            float for the contrast form (then ``forward`` requires ``image_labels``).
        seed: Seed of the random projection (the same on every rank and run).
        device: Device of the parameters and buffers.
        dtype: Dtype of the parameters and the projection.

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
        contrast_margin: float | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_contrast(contrast_margin)
        self.num_patches = _positive_int(num_patches, "num_patches")
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.code_bits = _positive_int(code_bits, "code_bits")
        self.parametrization: GraphParametrization = _check_parametrization(parametrization)
        self.reduction: Reduction = check_reduction(reduction)
        self.distributed = bool(distributed)
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(in_channels, code_bits, generator=generator)
        self.register_buffer("projection", projection.to(device=device, dtype=dtype))
        self.weight = nn.Parameter(
            torch.zeros(num_patches, num_patches, device=device, dtype=dtype)
        )
        if self.parametrization == "free":
            self.bias = nn.Parameter(torch.zeros((), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self._init_memory(memory_size, memory_dtype, device)

    def _check_source(self, x: Tensor, name: str) -> None:
        check_tensor(x, name)
        if x.dim() == 4 and x.shape[1] != self.in_channels:
            raise CCGShapeError(
                f"`{name}` must have in_channels={self.in_channels} channels (n, C, h, w) to "
                f"be hashed, got shape {tuple(x.shape)}."
            )

    def _validate(
        self,
        features: Tensor,
        labels: Tensor,
        features_b: Tensor | None,
        labels_b: Tensor | None,
        hash_input: Tensor | None,
        hash_input_b: Tensor | None,
        *,
        hash_only: bool = False,
    ) -> None:
        """Validate once at the module boundary (the kernels do not re-check)."""
        first = "hash_input" if hash_only else "features"
        _check_batch(features, first, min_dim=4, what="(n, C, h, w)")
        if features.dim() != 4:
            raise CCGShapeError(
                f"`{first}` must have 4 dimensions (n, C, h, w), got shape {tuple(features.shape)}."
            )
        if not hash_only:
            if features_b is None and (labels_b is not None or hash_input_b is not None):
                raise CCGShapeError(
                    "`labels_b` and `hash_input_b` are only used with `features_b` (pair "
                    "form), got them without `features_b`."
                )
            if features_b is not None:
                check_tensor(features_b, "features_b")
                if features_b.shape != features.shape:
                    raise CCGShapeError(
                        f"`features_b` must have the shape of `features` "
                        f"{tuple(features.shape)}, got shape {tuple(features_b.shape)}."
                    )
                if labels_b is None:
                    raise CCGShapeError(
                        "`labels_b` is required with `features_b` (pair form), got None."
                    )
            self._check_entry(features, "features")
        src_name = "hash_input" if hash_input is not None or hash_only else "features"
        src = features if hash_input is None else hash_input
        self._check_source(src, src_name)
        src_b = features_b if hash_input_b is None else hash_input_b
        b_name = "hash_input_b" if hash_input_b is not None or hash_only else "features_b"
        if src_b is not None:
            self._check_source(src_b, b_name)
        if hash_only and (src_b is None) != (labels_b is None):
            given, missing = ("labels_b", b_name) if src_b is None else (b_name, "labels_b")
            raise CCGShapeError(f"`{missing}` is required with `{given}` (pair form), got None.")
        _check_patch_graph_args(
            src,
            src_name,
            labels,
            self.projection,
            self.weight,
            self.bias,
            src_b,
            b_name,
            labels_b if src_b is not None else None,
            None,
            None,
        )

    def _memory_args(self, use: bool = True) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        memory = self._memory() if use else None
        if memory is None:
            return None, None, None
        return memory[0], memory[1], self.memory_valid()

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
        """Compute ``L_IK`` (or the pair loss); see :func:`~ccg_layers.functional.patch_hash_graph_loss`.

        ``image_labels`` ``(n, C)`` and, in the pair form, ``image_labels_b`` ``(P, C)``: the
        multi-hot labels of the images (contrast form, required with ``contrast_margin``).
        """
        if image_labels is not None and image_labels.dtype == torch.bool:
            image_labels = image_labels.to(torch.float32)  # gloo's collectives take no bool
        if image_labels_b is not None and image_labels_b.dtype == torch.bool:
            image_labels_b = image_labels_b.to(torch.float32)
        if self.distributed and features_b is None:
            check_tensor(features, "features")
            check_tensor(labels, "labels")
            features = all_gather_batch(features)
            labels = all_gather_batch(labels)
            if hash_input is not None:
                hash_input = all_gather_batch(check_tensor(hash_input, "hash_input"))
            if image_labels is not None:
                image_labels = all_gather_batch(check_tensor(image_labels, "image_labels"))
        self._validate(features, labels, features_b, labels_b, hash_input, hash_input_b)
        y = self._image_labels(image_labels, int(features.shape[0]))
        y_b = None
        if features_b is None and image_labels_b is not None:
            raise CCGShapeError(
                "`image_labels_b` is only used in the pair form (with `features_b`), got it "
                "without `features_b`."
            )
        if features_b is not None and y is not None:
            y_b = self._image_labels(image_labels_b, int(features.shape[0]), "image_labels_b")
            if y_b is not None and y_b.shape[1] != y.shape[1]:
                raise CCGShapeError(
                    f"`image_labels_b` must have shape {tuple(y.shape)} like `image_labels`, "
                    f"got shape {tuple(y_b.shape)}."
                )
        m = self.num_patches
        src = features if hash_input is None else hash_input
        codes = _patch_codes(src, labels, self.projection, m)
        codes_b = None
        if features_b is not None and labels_b is not None:
            src_b = features_b if hash_input_b is None else hash_input_b
            codes_b = _patch_codes(src_b, labels_b, self.projection, m)
        mem_f, mem_c, valid = self._memory_args()
        if features.shape[0] == 1 and mem_f is None and features_b is None:
            check_finite(features, "features")
        alike = None
        if y is not None:
            mem_y = self._memory_labels()
            alike = _batch_alike(y, mem_y) if y_b is None else _pair_alike(y, y_b, mem_y)
        loss, _ = _patch_loss(
            features,
            features_b,
            codes,
            codes_b,
            self.weight,
            self.bias,
            mem_f,
            mem_c,
            valid,
            self.parametrization,
            self.reduction,
            alike,
            self.contrast_margin,
        )
        if self.training and self.memory_size > 0:
            entries, entry_codes, entry_labels = features.detach(), codes, y
            if features_b is not None and codes_b is not None:
                parts = [features.detach(), features_b.detach(), codes, codes_b]
                if y is not None and y_b is not None:
                    parts += [y, y_b]
                if self.distributed:  # the global pairs, in the order of the gathered batch
                    parts = [all_gather_batch(t) for t in parts]
                entries = torch.cat(parts[:2], dim=0)
                entry_codes = torch.cat(parts[2:4], dim=0)
                if y is not None:
                    entry_labels = torch.cat(parts[4:6], dim=0)
            feature_dtype = self.memory_dtype or features.dtype
            if entry_labels is None:
                self._push([entries, entry_codes], [feature_dtype, torch.int8])
            else:
                self._push(
                    [entries, entry_codes, entry_labels], [feature_dtype, torch.int8, torch.float32]
                )
        return loss

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
        See :func:`ccg_layers.functional.patch_hash_graph`; with
        :func:`~ccg_layers.functional.pairwise_distance` it lets ``L_IR`` and ``L_IK`` share
        one distance matrix.
        """
        self._validate(hash_input, labels, None, labels_b, None, hash_input_b, hash_only=True)
        m = self.num_patches
        codes = _patch_codes(hash_input, labels, self.projection, m)
        codes_b = None
        if hash_input_b is not None and labels_b is not None:
            codes_b = _patch_codes(hash_input_b, labels_b, self.projection, m)
        _, mem_c, valid = self._memory_args(use_memory)
        return _patch_graph(
            codes, self.weight, self.bias, codes_b, mem_c, valid, self.parametrization
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
