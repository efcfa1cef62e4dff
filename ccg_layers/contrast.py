r"""The contrast-constrained form of the relation losses (beyond the paper).

Every relation loss of Eq. 4-10 only *pulls* the feature maps of related images together; its
contrast form (Hadsell, Chopra & LeCun 2006) also *pushes* unlike images apart, up to a margin:
each distance ``D`` becomes :math:`s D + (1 - s) \max(0, m - D)` (:func:`contrast_distances`),
``s`` the alike-ness of the two images from their multi-hot labels (:func:`alike_pairs`). The
losses take it through ``image_labels`` and ``margin`` (:mod:`ccg_layers.distance`,
:mod:`ccg_layers.sample_graph`, :mod:`ccg_layers.patch_graph`); the modules through
``contrast_margin``, their memory then also queueing the labels (:mod:`ccg_layers.memory`).

Besides the two public functions, this file holds the checks and kernels the losses share:
:func:`check_margin`, :func:`check_image_labels`, :func:`check_contrast_args`,
:func:`batch_alike`, :func:`pair_alike` and :func:`contrast_costs`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ccg_layers.config import values_checkable
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.validation import check_dtype, check_shape, check_tensor, real_number

__all__ = [
    "alike_pairs",
    "batch_alike",
    "check_contrast_args",
    "check_image_labels",
    "check_margin",
    "contrast_alike",
    "contrast_costs",
    "contrast_distances",
    "pair_alike",
]


def check_margin(margin: object, name: str = "margin") -> float:
    """A finite positive float (an int or a NumPy scalar is accepted; a bool is not)."""
    return real_number(margin, name, low=0.0, low_open=True, what="a finite positive float")


def check_image_labels(
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


def pair_alike(labels: Tensor, labels_b: Tensor, memory_labels: Tensor | None) -> Tensor:
    """``(P,)`` alike-ness of each pair; ``(P, 1 + K)`` with the anchor against the memory."""
    with torch.autocast(device_type=labels.device.type, enabled=False):
        a = labels.to(torch.float32)
        b = labels_b.to(device=a.device, dtype=torch.float32)
        own = ((a * b).sum(dim=1) > 0.5) | ((a.sum(dim=1) < 0.5) & (b.sum(dim=1) < 0.5))
    if memory_labels is None:
        return own
    return torch.cat([own[:, None], _alike(labels, memory_labels)], dim=1)


def batch_alike(labels: Tensor, memory_labels: Tensor | None) -> Tensor:
    """Kernel: ``(n, n + K)`` alike-ness of the batch and then the memory (validated inputs)."""
    if memory_labels is None:
        return _alike(labels, labels)
    partners = torch.cat([labels.to(torch.float32), memory_labels.to(labels.device, torch.float32)])
    return _alike(labels, partners)


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
    y = check_image_labels(labels, "labels")
    n, c = int(y.shape[0]), int(y.shape[1])
    if n == 0:
        raise CCGShapeError(f"`labels` must hold at least 1 sample (n, C), got shape {(n, c)}.")
    if partner_labels is None:
        return _alike(y, y)
    mem = check_image_labels(partner_labels, "partner_labels", c=c)
    return _alike(y, torch.cat([y.to(torch.float32), mem.to(y.device, torch.float32)]))


def contrast_costs(distances: Tensor, alike: Tensor, margin: float) -> Tensor:
    """Kernel of :func:`contrast_distances` (validated inputs)."""
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
        CCGValueRangeError: ``margin`` not a finite positive float; with the value checks on,
            ``distances`` that are negative, NaN or infinite.

    Example:
        >>> import torch
        >>> d = torch.tensor([0.5, 0.5, 1.5])
        >>> contrast_distances(d, torch.tensor([True, False, False]), margin=1.0)
        tensor([0.5000, 0.5000, 0.0000])
    """
    m = check_margin(margin)
    check_tensor(distances, "distances")
    check_dtype(distances, "distances", ("float",))
    check_tensor(alike, "alike")
    check_dtype(alike, "alike", ("bool",))
    if alike.shape != distances.shape:
        raise CCGShapeError(
            f"`alike` must have the shape of `distances` {tuple(distances.shape)}, got shape "
            f"{tuple(alike.shape)}."
        )
    if values_checkable() and distances.numel():
        bad = ~torch.isfinite(distances) | (distances < 0)
        if bool(bad.any()):
            raise CCGValueRangeError(
                "`distances` must hold finite non-negative distances, got "
                f"{int(bad.sum())} other value(s), e.g. {distances[bad].flatten()[0].item()}."
            )
    return contrast_costs(distances, alike, m)


def check_contrast_args(
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
    m = check_margin(margin)
    y = check_image_labels(image_labels, "image_labels", n=n)
    c = int(y.shape[1])
    if has_memory:
        if memory_image_labels is None:
            raise CCGShapeError(
                "`memory_image_labels` is required with `image_labels` and a memory, got None."
            )
        check_image_labels(memory_image_labels, "memory_image_labels", n=k, c=c)
    elif memory_image_labels is not None:
        raise CCGShapeError("`memory_image_labels` is only used with a memory, got it without one.")
    return y, m


def contrast_alike(
    labels: Tensor, labels_b: Tensor | None, memory_labels: Tensor | None, pairs: bool
) -> Tensor:
    """Check ``image_labels_b`` against the form; the ``alike`` of the patch-hash loss.

    ``(n, n + K)`` for all pairs; ``(P,)`` / ``(P, 1 + K)`` in the pair form.
    """
    if not pairs:
        if labels_b is not None:
            raise CCGShapeError(
                "`image_labels_b` is only used in the pair form (with `features_b`), got it "
                "without `features_b`."
            )
        return batch_alike(labels, memory_labels)
    if labels_b is None:
        raise CCGShapeError(
            "`image_labels_b` is required with `image_labels` in the pair form, got None."
        )
    check_image_labels(labels_b, "image_labels_b", n=int(labels.shape[0]), c=int(labels.shape[1]))
    return pair_alike(labels, labels_b, memory_labels)
