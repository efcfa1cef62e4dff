r"""Superpixel pooling and hashing: the patch codes of the patch-hash graph (paper Eq. 6-7).

Each image's ``m`` superpixel patches are mean-pooled from a feature map (or the image)
(:func:`superpixel_pool`), hashed to ``bits``-bit codes by the sign of a fixed random
projection (:func:`hash_codes`; both together: :func:`patch_codes`), and compared by their
Hamming distances (:func:`hamming_distance`, Eq. 7). The graph built on the codes lives in
:mod:`ccg_layers.patch_graph`, the superpixel labels come from :mod:`ccg_layers.superpixels`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ccg_layers.config import values_checkable
from ccg_layers.distance import compute_dtype
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.validation import (
    check_dtype,
    check_finite,
    check_grid,
    check_index,
    check_labels,
    check_shape,
    check_tensor,
    positive_int,
)

__all__ = [
    "check_codes",
    "check_hash_input",
    "check_pooling",
    "check_projection",
    "encode_patches",
    "hamming_distance",
    "hash_codes",
    "patch_codes",
    "superpixel_pool",
]


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
    dtype = compute_dtype(x)
    counts = torch.zeros(N, m * h * w, device=x.device, dtype=dtype)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=dtype))
    counts = counts.reshape(N, m, h * w)
    area = counts.sum(dim=2)  # (N, m)
    valid = area > 0
    assign = counts / area.clamp(min=1.0)[..., None]
    with torch.autocast(device_type=x.device.type, enabled=False):
        pooled = torch.bmm(assign, x.reshape(N, C, h * w).to(dtype).transpose(1, 2))
    return pooled, valid


def check_pooling(
    x: Tensor,
    name: str,
    labels: Tensor,
    m: int,
    *,
    labels_name: str = "labels",
    finite: bool = True,
) -> None:
    """The labels of a pooling of ``x`` (``(N, h, w)`` grid) in ``[0, m)``; non-empty grids.

    The labels' values and ``x``'s finiteness (``finite``: unless the caller's distances check
    it) are value checks (skipped while disabled).
    """
    check_labels(labels, labels_name, int(x.shape[0]))
    check_grid(x, name, "h, w")
    check_grid(labels, labels_name)
    check_index(labels, labels_name, m)
    if finite:
        check_finite(x, name)  # one NaN would turn every patch mean of its image into NaN


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
        CCGShapeError: Wrong ranks, mismatched ``N`` or an empty ``(h, w)`` / ``(H, W)`` grid.
        CCGDTypeError: Non-floating ``x`` or non-integer ``labels``.
        CCGValueRangeError: ``num_segments`` not a positive int; with the value checks on,
            labels outside ``[0, num_segments)`` or a non-finite ``x``.

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
    check_shape(x, "x", ("N", "C", "h", "w"))
    positive_int(num_segments, "num_segments")
    check_pooling(x, "x", labels, num_segments)
    return _superpixel_pool(x, labels, num_segments)


def _hash_codes(x: Tensor, projection: Tensor) -> Tensor:
    with torch.autocast(device_type=x.device.type, enabled=False), torch.no_grad():
        dtype = torch.promote_types(compute_dtype(x), projection.dtype)
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

    Raises:
        CCGShapeError: ``x`` without a last dimension ``D``, ``projection`` not ``(D, bits)``
            or with ``bits = 0``.
        CCGDTypeError: A non-floating input.
        CCGValueRangeError: A non-finite ``x`` (with the value checks on): its codes would
            look valid.

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
    _check_bits(projection, "projection")
    check_finite(x, "x")  # sign(NaN) would be a valid-looking code
    return _hash_codes(x, projection)


def encode_patches(hash_input: Tensor, labels: Tensor, projection: Tensor, m: int) -> Tensor:
    """Kernel of :func:`patch_codes` (validated inputs): pool, hash, zero the vanished patches."""
    pooled, valid = _superpixel_pool(hash_input.detach(), labels, m)
    return _hash_codes(pooled, projection) * valid[..., None]


def _check_bits(t: Tensor, name: str) -> None:
    """At least one bit (the last dimension): the graph divides by ``bits``."""
    if t.dim() and t.shape[-1] == 0:
        raise CCGShapeError(
            f"`{name}` must have at least 1 bit (last dimension bits >= 1), got shape "
            f"{tuple(t.shape)}."
        )


def check_projection(projection: object, name: str = "projection") -> dict[str, int]:
    """A floating ``(C, bits)`` hashing projection, ``bits >= 1``; returns ``{"C", "bits"}``."""
    t = check_tensor(projection, name)
    check_dtype(t, name, ("float",))
    dims = check_shape(t, name, ("C", "bits"))
    _check_bits(t, name)
    return dims


def check_hash_input(
    hash_input: Tensor,
    name: str,
    projection_dims: dict[str, int],
    *,
    validated: bool = False,
    projection_name: str = "projection",
) -> int:
    """``hash_input`` ``(n, C_hash, h, w)`` against the ``(C_hash, bits)`` projection; returns ``n``.

    ``validated=True``: the caller already checked it as a floating ``(n, C, h, w)`` batch
    with ``n >= 1`` (e.g. the feature maps, hashed when no ``hash_input`` is given), so only
    the channels are compared with the projection's rows.
    """
    if not validated:
        check_tensor(hash_input, name)
        check_dtype(hash_input, name, ("float",))
        check_shape(hash_input, name, ("n", "C_hash", "h", "w"))
    if hash_input.shape[1] != projection_dims["C"]:
        raise CCGShapeError(
            f"`{name}` must have in_channels={projection_dims['C']} channels (C_hash, the rows "
            f"of `{projection_name}`), got shape {tuple(hash_input.shape)}."
        )
    if hash_input.shape[0] == 0:
        raise CCGShapeError(
            f"`{name}` must hold at least 1 image (n, C_hash, h, w), got shape "
            f"{tuple(hash_input.shape)} (an empty batch)."
        )
    return int(hash_input.shape[0])


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

    Raises:
        CCGShapeError: Wrong ranks, mismatched ``n`` or ``C_hash``, an empty batch, an empty
            ``(h, w)`` / ``(H, W)`` grid or a ``projection`` of 0 bits.
        CCGDTypeError: A non-floating ``hash_input`` or ``projection``, non-integer ``labels``.
        CCGValueRangeError: ``num_patches`` not a positive int; with the value checks on,
            labels outside ``[0, num_patches)`` or a non-finite ``hash_input`` (its codes
            would look valid).

    Example:
        >>> import torch
        >>> labels = torch.tensor([[[0, 0], [1, 1]]])
        >>> patch_codes(torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]]]), labels,
        ...             torch.ones(1, 2), 3)
        tensor([[[ 1.,  1.],
                 [-1., -1.],
                 [ 0.,  0.]]])
    """
    check_hash_input(hash_input, "hash_input", check_projection(projection))
    positive_int(num_patches, "num_patches")
    check_pooling(hash_input, "hash_input", labels, num_patches)
    return encode_patches(hash_input, labels, projection, num_patches)


def check_codes(codes: Tensor, name: str, allow_zero: bool = False, ints: bool = False) -> None:
    """Codes in ``{-1, +1}`` (``allow_zero``: also a row of 0, a missing patch); values when enabled.

    A codes tensor with a last dimension (``bits``) of 0 is a :class:`CCGShapeError`.
    """
    check_tensor(codes, name)
    check_dtype(codes, name, ("float", "int") if ints else ("float",))
    _check_bits(codes, name)
    if not values_checkable() or codes.numel() == 0:
        return
    ok = (codes == 1) | (codes == -1)
    bad = ~ok.all()
    if allow_zero:  # a missing patch is a whole row of zeros; {0, 1} bits are not codes
        zero = codes == 0
        ok |= zero
        zeros = zero.sum(-1)
        partial = (zeros > 0) & (zeros < codes.shape[-1])
        bad = ~ok.all() | partial.any()
    if not bool(bad):  # the one read of a valid input
        return
    if not bool(ok.all()):
        first = codes[~ok].flatten()[0].item()
        allowed = "-1, 0 (missing patch) and +1" if allow_zero else "-1 and +1"
        raise CCGValueRangeError(f"`{name}` must hold only {allowed}, got e.g. {first}.")
    raise CCGValueRangeError(  # only allow_zero gets here: rows mixing 0 with +-1
        f"`{name}` must hold codes of -1 and +1, or a row of zeros for a missing patch, got "
        f"{int(partial.sum())} row(s) mixing 0 with +-1 (0/1 bits instead of -1/+1 codes?)."
    )


def hamming_distance(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distances between all codes of ``a`` and all codes of ``b`` as one matmul.

    For ``±1`` codes of ``bits`` bits, ``hamming(x, y) = (bits - x.y) / 2`` (paper Eq. 7).
    Exact integers (computed in float32 at least, outside autocast).

    Args:
        a: ``(..., m, bits)`` codes in ``{-1, +1}``.
        b: ``(..., m', bits)`` codes, leading dimensions broadcastable with ``a``'s.

    Returns:
        ``(..., m, m')`` float distances in ``[0, bits]``.

    Raises:
        CCGShapeError: Ranks below 2, different ``bits`` (or none), leading dimensions that do
            not broadcast.
        CCGDTypeError: Non-floating codes.
        CCGValueRangeError: With the value checks on, values other than -1 and +1.

    Example:
        >>> import torch
        >>> a = torch.tensor([[1.0, 1.0, -1.0]])
        >>> b = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]])
        >>> hamming_distance(a, b)
        tensor([[0., 2.]])
    """
    check_codes(a, "a")
    check_codes(b, "b")
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
        dtype = torch.promote_types(compute_dtype(a), b.dtype)
        dot = a.to(dtype) @ b.to(dtype).transpose(-1, -2)
        return (dims["bits"] - dot) / 2
