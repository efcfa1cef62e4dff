"""Graph modules: thin :class:`torch.nn.Module` wrappers over :mod:`ccg_layers.functional`.

:class:`LearnableSampleGraph` is the inter-image relation loss ``L_IR`` (paper Eq. 4) and
:class:`PatchHashGraph` the intra-image knowledge loss ``L_IK`` (Eq. 5-7), which also serves
the patch graph of the knowledge reasoning loss ``L_KR`` on attended pairs (Eq. 8-10).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ccg_layers._validation import Reduction, check_reduction, check_tensor
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.functional.graphs import (
    GraphParametrization,
    _check_parametrization,
    normalize_graph,
    patch_hash_graph,
    patch_hash_graph_loss,
    sample_graph_loss,
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


class LearnableSampleGraph(nn.Module):
    r"""Inter-image relation loss ``L_IR`` with a learnable sample graph (paper Eq. 4).

    :math:`L_{IR} = \sum_{u,v} G(u, v)\, D(F_u, F_v) / n^2` over the ``n`` samples of a batch,
    with a learnable ``G`` of ``num_samples x num_samples`` initialised to ``1/n``.

    **Parametrisation.** The literal objective with a free ``G`` is unbounded below (the
    optimiser drives ``G`` to ``-inf``), and a merely normalised ``G`` collapses onto the
    self-pairs, whose distance is 0. The default ``"softmax"`` stores logits ``theta`` and uses
    :func:`~ccg_layers.functional.normalize_graph`: every row is a distribution whose
    self-weight is frozen at ``1/n`` and whose other ``(n-1)/n`` is a softmax over the
    partners ``v != u``. It starts at exactly ``G = 1/n`` (the paper's initial graph), stays
    non-negative (so ``L_IR >= 0``) and can only move weight between partners, towards the
    nearest ones. ``parametrization="free"`` is the literal Eq. 4 (``G`` itself is the
    parameter, initialised to ``1/num_samples``), kept for reproductions.

    A batch of ``n <= num_samples`` samples uses the leading ``n x n`` block of the logits
    (renormalised); ``n = 1`` gives 0. With ``distributed=True`` and an initialised process
    group, the features of all ranks are gathered with gradients (:func:`all_gather_batch`),
    the graph spans the global batch (``num_samples`` is then the global batch size) and every
    rank returns the same global loss.

    Args:
        num_samples: Largest batch (global batch under ``distributed``).
        parametrization: ``"softmax"`` (default) or ``"free"``.
        distributed: Gather the batch across ranks when a process group is initialised.
        reduction: ``"mean"`` (Eq. 4), ``"sum"`` or ``"none"`` (the ``(n, n)`` terms).
        device: Device of the parameter.
        dtype: Dtype of the parameter.

    Shape:
        - features: ``(n, ...)``, e.g. ``(n, 2048, 16, 16)``.
        - output: scalar (``(n_global, n_global)`` with ``reduction="none"``).

    Example:
        >>> import torch
        >>> graph = LearnableSampleGraph(num_samples=4)
        >>> loss = graph(torch.randn(4, 8, 2, 2, requires_grad=True))
        >>> loss.backward()
        >>> graph.graph(4)[0]
        tensor([0.2500, 0.2500, 0.2500, 0.2500], grad_fn=<SelectBackward0>)
    """

    def __init__(
        self,
        num_samples: int,
        *,
        parametrization: GraphParametrization = "softmax",
        distributed: bool = False,
        reduction: Reduction = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_samples, int) or num_samples < 1:
            raise CCGValueRangeError(f"`num_samples` must be a positive int, got {num_samples!r}.")
        self.num_samples = num_samples
        self.parametrization: GraphParametrization = _check_parametrization(parametrization)
        self.distributed = bool(distributed)
        self.reduction: Reduction = check_reduction(reduction)
        init = 1.0 / num_samples if self.parametrization == "free" else 0.0
        self.weight = nn.Parameter(
            torch.full((num_samples, num_samples), init, device=device, dtype=dtype)
        )

    def graph(self, n: int | None = None) -> Tensor:
        """The ``(n, n)`` graph ``G`` used for a batch of ``n`` (default ``num_samples``)."""
        n = self.num_samples if n is None else n
        if not 1 <= n <= self.num_samples:
            raise CCGShapeError(
                f"the batch must have 1 <= n <= num_samples={self.num_samples} samples, got n={n}."
            )
        return normalize_graph(self.weight[:n, :n], parametrization=self.parametrization)

    def forward(self, features: Tensor) -> Tensor:
        """Compute ``L_IR`` of the batch; see :func:`ccg_layers.functional.sample_graph_loss`."""
        check_tensor(features, "features")
        if self.distributed:
            features = all_gather_batch(features)
        if features.dim() < 1:
            raise CCGShapeError(
                f"`features` must have at least 1 dimension (n, ...), got shape "
                f"{tuple(features.shape)}."
            )
        n = int(features.shape[0])
        if not 1 <= n <= self.num_samples:
            raise CCGShapeError(
                f"`features` must hold 1 <= n <= num_samples={self.num_samples} samples "
                f"(the global batch when distributed), got shape {tuple(features.shape)}."
            )
        return sample_graph_loss(features, self.graph(n), reduction=self.reduction)

    def extra_repr(self) -> str:
        """Show the configuration in ``repr``."""
        return (
            f"num_samples={self.num_samples}, parametrization={self.parametrization!r}, "
            f"distributed={self.distributed}, reduction={self.reduction!r}"
        )


class PatchHashGraph(nn.Module):
    r"""Patch-hash graph loss ``L_IK`` (paper Eq. 5-7), and the patch graph of Eq. 8-10.

    Each image's ``num_patches`` superpixel patches (labels from
    :func:`ccg_layers.superpixels`) are mean-pooled from a feature map (or the image) and hashed
    to ``code_bits``-bit codes by the sign of a fixed random projection (a buffer). For every
    pair of images the ``m x m`` Hamming graph ``G_l`` (Eq. 7) is mapped by a fully-connected
    layer ``W_l`` to the pair score (Eq. 6), which becomes the pair weight ``G_k`` and weights
    the Euclidean distance of the pair's feature maps (Eq. 5). See
    :func:`ccg_layers.functional.patch_hash_graph_loss`.

    **Parametrisation** (as :class:`LearnableSampleGraph`): with a free ``G_k = W_l(G_l)`` the
    loss is unbounded below (``W_l``'s bias alone drives it to ``-inf``). The default
    ``"softmax"`` normalises the scores of each image's partners by a softmax (self-weight
    frozen at ``1/n``), so ``L_IK >= 0`` and ``W_l`` learns which Hamming patterns mark related
    images; for explicit pairs the weights are ``P * softmax`` over the pairs. ``W_l`` starts
    at zero, i.e. at the uniform graph ``G_k = 1/n``. ``"free"`` is the literal Eq. 6.

    Two call forms:

    * ``forward(features, labels)``: all ``n x n`` pairs of the batch (``L_IK``, Eq. 5).
    * ``forward(fa, labels_a, fb, labels_b)``: ``P`` explicit pairs, e.g. the attended maps
      ``F'_u, F'_v`` (each ``(P, C, h, w)``) of cross-image attention (Eq. 8-10).

    ``hash_input`` (and ``hash_input_b``) hash the patches of another map than the one whose
    distances are weighted, e.g. the backbone features while the distances use the attended
    maps; its channels must be ``in_channels``.

    Args:
        num_patches: ``m``, the superpixels per image.
        in_channels: Channels of the map the patches are hashed from.
        code_bits: Bits of each patch code.
        parametrization: ``"softmax"`` (default) or ``"free"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        distributed: In the all-pairs form, gather features, labels and ``hash_input`` from
            all ranks (as :class:`LearnableSampleGraph`) so the graph spans the global batch.
            The pair form is always local (each rank's pairs).
        seed: Seed of the random projection (the same on every rank and run).
        device: Device of the parameters and buffer.
        dtype: Dtype of the parameters and buffer.

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

    projection: Tensor

    def __init__(
        self,
        num_patches: int,
        in_channels: int,
        *,
        code_bits: int = 64,
        parametrization: GraphParametrization = "softmax",
        reduction: Reduction = "mean",
        distributed: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_patches", num_patches),
            ("in_channels", in_channels),
            ("code_bits", code_bits),
        ):
            if not isinstance(value, int) or value < 1:
                raise CCGValueRangeError(f"`{name}` must be a positive int, got {value!r}.")
        self.num_patches = num_patches
        self.in_channels = in_channels
        self.code_bits = code_bits
        self.parametrization: GraphParametrization = _check_parametrization(parametrization)
        self.reduction: Reduction = check_reduction(reduction)
        self.distributed = bool(distributed)
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(in_channels, code_bits, generator=generator)
        self.register_buffer("projection", projection.to(device=device, dtype=dtype))
        self.weight = nn.Parameter(
            torch.zeros(num_patches, num_patches, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.zeros((), device=device, dtype=dtype))

    def forward(
        self,
        features: Tensor,
        labels: Tensor,
        features_b: Tensor | None = None,
        labels_b: Tensor | None = None,
        *,
        hash_input: Tensor | None = None,
        hash_input_b: Tensor | None = None,
    ) -> Tensor:
        """Compute ``L_IK`` (or the pair loss); see :func:`~ccg_layers.functional.patch_hash_graph_loss`."""
        if self.distributed and features_b is None:
            check_tensor(features, "features")
            check_tensor(labels, "labels")
            features = all_gather_batch(features)
            labels = all_gather_batch(labels)
            if hash_input is not None:
                hash_input = all_gather_batch(check_tensor(hash_input, "hash_input"))
        return patch_hash_graph_loss(
            features,
            labels,
            self.projection,
            self.weight,
            self.bias,
            hash_input=hash_input,
            features_b=features_b,
            labels_b=labels_b,
            hash_input_b=hash_input_b,
            parametrization=self.parametrization,
            reduction=self.reduction,
        )

    def graph(
        self,
        hash_input: Tensor,
        labels: Tensor,
        hash_input_b: Tensor | None = None,
        labels_b: Tensor | None = None,
    ) -> Tensor:
        """The graph ``G_k`` (``(n, n)``), or the ``(P,)`` pair weights, that forward uses.

        See :func:`ccg_layers.functional.patch_hash_graph`; with
        :func:`~ccg_layers.functional.pairwise_distance` it lets ``L_IR`` and ``L_IK`` share
        one distance matrix.
        """
        return patch_hash_graph(
            hash_input,
            labels,
            self.projection,
            self.weight,
            self.bias,
            hash_input_b=hash_input_b,
            labels_b=labels_b,
            parametrization=self.parametrization,
        )

    def extra_repr(self) -> str:
        """Show the configuration in ``repr``."""
        return (
            f"num_patches={self.num_patches}, in_channels={self.in_channels}, "
            f"code_bits={self.code_bits}, parametrization={self.parametrization!r}, "
            f"distributed={self.distributed}, reduction={self.reduction!r}"
        )
