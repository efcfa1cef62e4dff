"""Cross-image attention of the CCG Knowledge Reasoning module (paper Sec. 3.5, Eq. 8-9).

The functions (:func:`cross_image_attention`, :func:`multi_head_cross_image_attention`,
:func:`partner_attention`) and the module :class:`CrossImageAttention`, whose forward calls
them.

With ``F_u`` (C, HW_u), ``F_v`` (C, HW_v) and a learnable ``W_P`` (C, C)::

    P    = F_u^T W_P F_v                  (HW_u, HW_v)
    F'_u = F_u softmax(P)                 softmax over u's positions (dim 0): v's layout
    F'_v = F_v softmax(P^T)               softmax over v's positions: u's layout

Two execution paths compute the same function:

* the **reference** path materialises ``P`` once and takes both softmaxes of it;
* the **fused** path folds ``W_P`` into the queries and calls
  :func:`torch.nn.functional.scaled_dot_product_attention` once per direction, so the
  ``HW_u x HW_v`` matrix is never stored: ``F'_u`` is an attention whose queries are v's
  positions ``(W_P F_v)^T``, whose keys and values are u's positions ``F_u^T``; ``F'_v`` has
  queries ``(W_P^T F_u)^T`` and keys and values ``F_v^T``.

``fused=None`` picks a path per call (:func:`use_fused_path`): the process-wide switch of
:mod:`ccg_layers.config`, set by :func:`~ccg_layers.config.set_fused_attn` or the environment
variable ``CCG_FUSED_ATTN`` (``0`` reference,
``1`` fused, ``auto`` or unset: by size and device), and never the fused path while exporting to
ONNX.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ccg_layers.config import get_fused_attn
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.validation import (
    check_choice,
    check_dtype,
    check_finite,
    check_float_dtype,
    check_grid,
    check_index,
    check_shape,
    check_tensor,
    optional_positive_int,
    positive_int,
    real_number,
)

__all__ = [
    "CrossImageAttention",
    "cross_image_attention",
    "multi_head_cross_image_attention",
    "partner_attention",
    "use_fused_path",
]

Mode = Literal["pair", "residual"]

# Auto choice: the fused path when the score tensor B * heads * HW_u * HW_v holds at least this
# many elements. Measured on a 2-core CPU (docs/benchmarks.md, benchmarks/cross_attention.py):
# below it materialising P once for both directions is faster than two fused calls. On
# accelerators the fused kernels win already at small sizes and P costs scarce memory.
CPU_FUSED_MIN_SCORES = 4 * 1024 * 1024
ACCEL_FUSED_MIN_SCORES = 256 * 256


def use_fused_path(
    fused: bool | None, device: torch.device | str, batch_heads: int, len_u: int, len_v: int
) -> bool:
    """Whether a call with these sizes takes the fused path.

    Args:
        fused: The call's ``fused`` argument; ``None`` defers to
            :func:`~ccg_layers.config.set_fused_attn`.
        device: Device of the features (a ``torch.device`` or a device string such as
            ``"cuda:0"``).
        batch_heads: ``B * heads``, a non-negative int.
        len_u: ``HW_u``, a non-negative int.
        len_v: ``HW_v``, a non-negative int.

    Returns:
        ``False`` while exporting to ONNX; else ``fused`` if given; else the process-wide switch
        if set; else whether ``batch_heads * len_u * len_v`` reaches the device's threshold.

    Raises:
        CCGValueRangeError: ``fused`` not ``True``, ``False`` or ``None``; ``device`` not a
            device; a size not a non-negative int.

    Example:
        >>> import torch
        >>> use_fused_path(None, torch.device("cpu"), 2, 16 * 16, 16 * 16)
        False
        >>> use_fused_path(None, torch.device("cpu"), 16, 4096, 4096)
        True
    """
    _check_fused(fused)
    if isinstance(device, str):
        with contextlib.suppress(RuntimeError):  # not a device string: named below
            device = torch.device(device)
    if not isinstance(device, torch.device):
        raise CCGValueRangeError(
            f"`device` must be a torch.device or a device string, got {device!r}."
        )
    sizes = [
        positive_int(size, name, allow_zero=True)
        for name, size in (("batch_heads", batch_heads), ("len_u", len_u), ("len_v", len_v))
    ]
    return _fused_path(fused, device, *sizes)


def _fused_path(
    fused: bool | None, device: torch.device, batch_heads: int, len_u: int, len_v: int
) -> bool:
    """:func:`use_fused_path` on validated arguments (no checks: called inside the kernels)."""
    if torch.onnx.is_in_onnx_export():
        return False
    if fused is not None:
        return bool(fused)
    setting = get_fused_attn()
    if setting is not None:
        return setting
    scores = batch_heads * len_u * len_v
    limit = CPU_FUSED_MIN_SCORES if device.type == "cpu" else ACCEL_FUSED_MIN_SCORES
    return scores >= limit


# --------------------------------------------------------------------------- validation


def _check_scale(scale: float) -> float:
    return real_number(scale, "scale", what="a finite real number")


def _check_fused(fused: object) -> None:
    if fused is not None and not isinstance(fused, bool):
        raise CCGValueRangeError(f"`fused` must be True, False or None, got {fused!r}.")


def _check_features(fu: Tensor, fv: Tensor) -> dict[str, int]:
    check_tensor(fu, "fu")
    check_tensor(fv, "fv")
    check_dtype(fu, "fu", ("float",))
    check_dtype(fv, "fv", ("float",))
    dims = check_shape(fu, "fu", ("B", "C", "Hu", "Wu"))
    check_shape(fv, "fv", ("B", "C", "Hv", "Wv"), dims)
    check_grid(fu, "fu", "Hu, Wu")
    check_grid(fv, "fv", "Hv, Wv")
    if fu.dtype != fv.dtype:
        raise CCGDTypeError(f"`fv` must have the dtype of `fu` ({fu.dtype}), got {fv.dtype}.")
    check_finite(fu, "fu")
    check_finite(fv, "fv")
    return dims


def _check_image_batch(x: Tensor, partner_index: Tensor | None) -> dict[str, int]:
    """Validate ``x`` (and ``partner_index``) of :func:`partner_attention`."""
    check_tensor(x, "x")
    check_dtype(x, "x", ("float",))
    dims = check_shape(x, "x", ("B", "C", "H", "W"))
    check_grid(x, "x")
    check_finite(x, "x")
    if partner_index is not None:
        check_tensor(partner_index, "partner_index")
        check_shape(partner_index, "partner_index", ("B",), dims)
        check_index(partner_index, "partner_index", dims["B"])
    return dims


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def _check_weight_dtype(weight: Tensor, name: str, features: Tensor) -> None:
    check_dtype(weight, name, ("float",))
    autocast = _autocast_enabled(features.device.type)
    if not autocast and weight.dtype != features.dtype:
        raise CCGDTypeError(
            f"`{name}` must have the dtype of the features ({features.dtype}) outside autocast, "
            f"got {weight.dtype}."
        )


def _check_heads(heads: int, channels: int, qk_channels: int) -> int:
    heads = positive_int(heads, "heads")
    for name, size in (("channels C", channels), ("query/key channels D", qk_channels)):
        if size % heads:
            raise CCGShapeError(
                f"`heads`={heads} must divide the {name}, got {name.split()[-1]}={size}."
            )
    return heads


def _check_low_rank_weights(
    weight_u: Tensor, weight_v: Tensor, heads: int, dims: dict[str, int], features: Tensor
) -> int:
    """Validate the low-rank ``W_P = weight_u^T weight_v`` factors, each ``(D, C)``; ``heads``."""
    for name, w in (("weight_u", weight_u), ("weight_v", weight_v)):
        check_tensor(w, name)
        check_shape(w, name, ("D", "C"), dims)
        _check_weight_dtype(w, name, features)
    return _check_heads(heads, dims["C"], dims["D"])


# --------------------------------------------------------------------------- kernels


def _fused_attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """SDPA on ``(B, h, L, d)`` inputs, padding so that query/key and value widths agree.

    Zero columns change no dot product and give zero output columns, and equal widths keep
    PyTorch on its flash/memory-efficient kernels (unequal widths fall back to the math kernel,
    which materialises the score matrix).
    """
    if k.dtype != q.dtype:  # autocast casts the projected queries only (torch < 2.3 on CPU)
        k, v = k.to(q.dtype), v.to(q.dtype)
    dk, dv = q.shape[-1], v.shape[-1]
    if dk < dv:
        q = F.pad(q, (0, dv - dk))
        k = F.pad(k, (0, dv - dk))
    elif dv < dk:
        v = F.pad(v, (0, dk - dv))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out[..., :dv] if dv < dk else out


def _to_map(x: Tensor, like: Tensor, height: int, width: int) -> Tensor:
    """``(B, h, L, c)`` -> ``(B, h*c, H, W)`` in the memory format of ``like``."""
    out = rearrange(x, "b h (y x) c -> b (h c) y x", y=height, x=width)
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and not (
        like.is_contiguous()
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


def _project(weight: Tensor, x: Tensor, *, transpose: bool = False) -> Tensor:
    """``(B, L, D)``: ``(W x)^T``, or ``(W^T x)^T`` with ``transpose``.

    ``W`` is ``(D, C)`` (``(C, D)`` with ``transpose``) and ``x`` is ``(B, C, L)``. Written so
    that autograd gives the weight's gradient in the weight's own (contiguous) layout: the
    einsum ``"dc,bcl->bld"`` gives it transposed, which ``AccumulateGrad`` then copies into
    ``.grad`` (16 MiB and a page-faulting copy every step at C = 2048).
    """
    if transpose:
        return torch.einsum("bcl,cd->bld", x, weight)
    return torch.matmul(weight, x).transpose(1, 2)


def _split(x: Tensor, heads: int) -> Tensor:
    """``(B, L, c)`` -> ``(B, heads, L, c / heads)`` with a unit stride in the last dimension.

    SDPA's fused CPU/CUDA kernels need the last dimension contiguous; a transposed
    ``(B, c, L)`` feature map is copied once here (``O(L c)``, never ``O(L^2)``).
    """
    if x.stride(-1) != 1:
        x = x.contiguous()
    return rearrange(x, "b l (h c) -> b h l c", h=heads)


def _pair(
    ku: Tensor,
    qu: Tensor,
    vu: Tensor,
    kv: Tensor,
    qv: Tensor,
    vv: Tensor,
    scale: float,
    fused: bool,
) -> tuple[Tensor, Tensor]:
    """Both directions on ``(B, h, L, d)`` tensors.

    ``qu`` (queries at v's positions) attend over keys ``ku`` / values ``vu`` at u's positions;
    ``qv`` (at u's positions) over ``kv`` / ``vv`` at v's. Both parametrisations satisfy
    ``P = ku qu^T = qv kv^T``, which the reference path forms once.
    """
    if fused:
        return _fused_attend(qu, ku, vu, scale), _fused_attend(qv, kv, vv, scale)
    p = torch.matmul(ku, (qu * scale).transpose(-1, -2))  # (B, h, HW_u, HW_v)
    fu_att = torch.matmul(p.softmax(dim=-2).transpose(-1, -2), vu)  # (B, h, HW_v, c)
    fv_att = torch.matmul(p.softmax(dim=-1), vv)  # (B, h, HW_u, c)
    return fu_att, fv_att


# --------------------------------------------------------------------------- public


def cross_image_attention(
    fu: Tensor, fv: Tensor, weight: Tensor, *, scale: float = 1.0, fused: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Cross-image attention of the CCG Knowledge Reasoning module (paper Eq. 8-9).

    ``P = F_u^T W F_v`` (times ``scale``); ``F'_u = F_u softmax(P)`` with the softmax over u's
    positions, so ``F'_u`` has v's spatial layout; ``F'_v = F_v softmax(P^T)`` with the softmax
    over v's positions, in u's layout. Pairs are ``(fu[b], fv[b])``.

    Args:
        fu: ``(B, C, Hu, Wu)`` features of the images u.
        fv: ``(B, C, Hv, Wv)`` features of the images v; the spatial size may differ from u's.
        weight: ``(C, C)`` the learnable ``W_P``.
        scale: Multiplies ``P`` before the softmax; the paper's form is ``1.0``, the usual
            dot-product scaling ``1 / sqrt(C)`` keeps the softmax from saturating for wide
            features.
        fused: ``True`` the fused SDPA path (never stores the ``HW_u x HW_v`` matrix),
            ``False`` the reference path (materialises ``P``), ``None`` the process-wide
            choice (:func:`set_fused_attn`, automatic by size and device by default). ONNX
            export always takes the reference path.

    Returns:
        ``(fu_att, fv_att)``: ``F'_u`` ``(B, C, Hv, Wv)`` and ``F'_v`` ``(B, C, Hu, Wu)``, in the
        memory format (contiguous or channels_last) of ``fv`` and ``fu`` respectively.

    Raises:
        CCGShapeError: Wrong rank, mismatched ``B`` or ``C``, an empty grid (``Hu * Wu`` or
            ``Hv * Wv`` zero), ``weight`` not ``(C, C)``.
        CCGDTypeError: Non-float tensors, or dtypes that differ (outside autocast).
        CCGValueRangeError: Non-finite features (a value check, see
            :func:`ccg_layers.set_value_checks`), non-finite ``scale``, ``fused`` not a bool
            or None.

    Example:
        >>> import torch
        >>> fu, fv = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 3, 5)
        >>> fu_att, fv_att = cross_image_attention(fu, fv, torch.eye(8), scale=8**-0.5)
        >>> fu_att.shape, fv_att.shape
        (torch.Size([2, 8, 3, 5]), torch.Size([2, 8, 4, 4]))
        >>> same = cross_image_attention(fu, fv, torch.eye(8), scale=8**-0.5, fused=True)
        >>> torch.allclose(same[0], fu_att, atol=1e-5)
        True
    """
    dims = _check_features(fu, fv)
    check_tensor(weight, "weight")
    check_shape(weight, "weight", ("C", "C"), dims)
    _check_weight_dtype(weight, "weight", fu)
    scale = _check_scale(scale)
    _check_fused(fused)
    return _cross_image_attention(fu, fv, weight, scale, fused)


def _cross_image_attention(
    fu: Tensor, fv: Tensor, weight: Tensor, scale: float, fused: bool | None
) -> tuple[Tensor, Tensor]:
    """:func:`cross_image_attention` on validated inputs (no checks, no host sync)."""
    (hu, wu), (hv, wv) = fu.shape[-2:], fv.shape[-2:]
    use_fused = _fused_path(fused, fu.device, fu.shape[0], hu * wu, hv * wv)

    xu = fu.flatten(2)  # (B, C, HW_u)
    xv = fv.flatten(2)
    ku = _split(xu.transpose(1, 2), 1)  # (B, 1, HW_u, C): keys and values at u's positions
    kv = _split(xv.transpose(1, 2), 1)
    qu = _split(_project(weight, xv), 1)  # (W F_v)^T: queries at v's
    # (W^T F_u)^T: queries at u's positions; the reference path forms P = F_u^T (W F_v) once
    # and does not need them.
    qv = _split(_project(weight, xu, transpose=True), 1) if use_fused else qu
    fu_att, fv_att = _pair(ku, qu, ku, kv, qv, kv, scale, use_fused)
    return _to_map(fu_att, fv, hv, wv), _to_map(fv_att, fu, hu, wu)


def multi_head_cross_image_attention(
    fu: Tensor,
    fv: Tensor,
    weight_u: Tensor,
    weight_v: Tensor,
    *,
    heads: int = 1,
    scale: float = 1.0,
    fused: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-image attention with a low-rank, multi-head ``W_P = W_u^T W_v`` (Eq. 8-9).

    Head ``h`` of ``heads`` uses rows ``h`` of ``weight_u`` and ``weight_v`` split into
    ``heads`` blocks of ``D / heads`` and channels ``h`` of the features split into ``heads``
    blocks of ``C / heads``: ``P_h = (W_u^h F_u)^T (W_v^h F_v)`` (times ``scale``),
    ``F'_u[h] = F_u[h] softmax(P_h)`` over u's positions and ``F'_v[h] = F_v[h] softmax(P_h^T)``
    over v's positions. With ``heads=1`` this is :func:`cross_image_attention` with
    ``weight = weight_u.T @ weight_v``.

    Args:
        fu: ``(B, C, Hu, Wu)``.
        fv: ``(B, C, Hv, Wv)``.
        weight_u: ``(D, C)`` projection of u's features (``W_q``).
        weight_v: ``(D, C)`` projection of v's features (``W_k``).
        heads: Number of heads; must divide ``C`` and ``D``.
        scale: Multiplies each ``P_h`` before the softmax (usual: ``(D / heads) ** -0.5``).
        fused: As in :func:`cross_image_attention`.

    Returns:
        ``(fu_att, fv_att)``: ``(B, C, Hv, Wv)`` and ``(B, C, Hu, Wu)``.

    Raises:
        CCGShapeError: Wrong ranks or sizes, an empty grid (``Hu * Wu`` or ``Hv * Wv`` zero),
            ``heads`` not dividing ``C`` or ``D``.
        CCGDTypeError: Non-float tensors, or dtypes that differ (outside autocast).
        CCGValueRangeError: Non-finite features (a value check), bad ``heads``, ``scale`` or
            ``fused``.

    Example:
        >>> import torch
        >>> fu, fv = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 6, 6)
        >>> wu, wv = torch.randn(8, 16), torch.randn(8, 16)
        >>> fu_att, fv_att = multi_head_cross_image_attention(fu, fv, wu, wv, heads=4, scale=0.5)
        >>> fu_att.shape, fv_att.shape
        (torch.Size([2, 16, 6, 6]), torch.Size([2, 16, 4, 4]))
    """
    dims = _check_features(fu, fv)
    heads = _check_low_rank_weights(weight_u, weight_v, heads, dims, fu)
    scale = _check_scale(scale)
    _check_fused(fused)
    return _multi_head_cross_image_attention(fu, fv, weight_u, weight_v, heads, scale, fused)


def _multi_head_cross_image_attention(
    fu: Tensor,
    fv: Tensor,
    weight_u: Tensor,
    weight_v: Tensor,
    heads: int,
    scale: float,
    fused: bool | None,
) -> tuple[Tensor, Tensor]:
    """:func:`multi_head_cross_image_attention` on validated inputs (no checks, no host sync)."""
    (hu, wu), (hv, wv) = fu.shape[-2:], fv.shape[-2:]
    use_fused = _fused_path(fused, fu.device, fu.shape[0] * heads, hu * wu, hv * wv)

    xu, xv = fu.flatten(2), fv.flatten(2)
    a = _split(_project(weight_u, xu), heads)  # (B, h, HW_u, D/h)
    b = _split(_project(weight_v, xv), heads)  # (B, h, HW_v, D/h)
    vu = _split(xu.transpose(1, 2), heads)  # (B, h, HW_u, C/h)
    vv = _split(xv.transpose(1, 2), heads)
    fu_att, fv_att = _pair(a, b, vu, b, a, vv, scale, use_fused)
    return _to_map(fu_att, fv, hv, wv), _to_map(fv_att, fu, hu, wu)


def partner_attention(
    x: Tensor,
    weight: Tensor | None = None,
    weight_u: Tensor | None = None,
    weight_v: Tensor | None = None,
    *,
    partner_index: Tensor | None = None,
    heads: int = 1,
    scale: float = 1.0,
    fused: bool | None = None,
) -> Tensor:
    """Each image's partner in the batch, attended at the image's own positions.

    For image ``i`` with partner ``p = partner_index[i]`` this is ``F'_u`` of
    :func:`cross_image_attention` with ``u = x[p]``, ``v = x[i]``: ``x[p] softmax(P)``,
    ``P = x[p]^T W_P x[i]``, in ``x[i]``'s layout. Only this direction is computed. Give either
    the full ``weight`` (``W_P``, ``heads`` must be 1) or the low-rank pair ``weight_u``,
    ``weight_v`` (``W_P = W_u^T W_v``, multi-head as in
    :func:`multi_head_cross_image_attention`).

    Args:
        x: ``(B, C, H, W)``.
        weight: ``(C, C)`` full ``W_P``.
        weight_u: ``(D, C)`` projection of the partner's features.
        weight_v: ``(D, C)`` projection of the image's own features.
        partner_index: ``(B,)`` integer indices into the batch; default ``(i + 1) mod B``.
            With ``B = 1`` and no index there is no partner and ``x`` is returned unchanged
            (an explicit ``tensor([0])`` attends the image to itself).
        heads: Number of heads (low-rank form only).
        scale: Multiplies ``P`` before the softmax.
        fused: As in :func:`cross_image_attention`.

    Returns:
        ``(B, C, H, W)``, in ``x``'s memory format.

    Raises:
        CCGShapeError: Wrong shapes, an empty grid (``H * W`` zero), weights given in neither
            or both forms.
        CCGDTypeError: Non-float ``x`` or weights, a non-integer ``partner_index``.
        CCGValueRangeError: Non-finite ``x`` or partner indices outside ``[0, B)`` (value
            checks), bad ``heads``, ``scale``, ``fused``.

    Example:
        >>> import torch
        >>> x = torch.randn(3, 8, 4, 4)
        >>> out = partner_attention(x, torch.eye(8), scale=8**-0.5)  # partners 1, 2, 0
        >>> want, _ = cross_image_attention(x.roll(-1, 0), x, torch.eye(8), scale=8**-0.5)
        >>> torch.allclose(out, want, atol=1e-6)
        True
    """
    dims = _check_image_batch(x, partner_index)
    low_rank = weight_u is not None or weight_v is not None
    if (weight is None) == (not low_rank) or (low_rank and (weight_u is None or weight_v is None)):
        raise CCGShapeError(
            "Give either `weight` (C, C) or both `weight_u` and `weight_v` (D, C), got "
            f"weight={'set' if weight is not None else None}, "
            f"weight_u={'set' if weight_u is not None else None}, "
            f"weight_v={'set' if weight_v is not None else None}."
        )
    if weight is not None:
        check_tensor(weight, "weight")
        check_shape(weight, "weight", ("C", "C"), dims)
        _check_weight_dtype(weight, "weight", x)
        if heads != 1:
            raise CCGValueRangeError(
                f"`heads` must be 1 with a full `weight`, got {heads!r}; use weight_u/weight_v."
            )
    else:
        assert weight_u is not None
        assert weight_v is not None
        heads = _check_low_rank_weights(weight_u, weight_v, heads, dims, x)
    scale = _check_scale(scale)
    _check_fused(fused)
    return _partner_attention(x, weight, weight_u, weight_v, partner_index, heads, scale, fused)


def _partner_attention(
    x: Tensor,
    weight: Tensor | None,
    weight_u: Tensor | None,
    weight_v: Tensor | None,
    partner_index: Tensor | None,
    heads: int,
    scale: float,
    fused: bool | None,
) -> Tensor:
    """:func:`partner_attention` on validated inputs (no checks, no host sync)."""
    batch, _, height, width = x.shape
    if partner_index is None:
        if batch <= 1:
            return x  # no partner: identity (documented)
        partner = x.roll(-1, 0)  # partner of i is (i + 1) mod B
    else:
        partner = x.index_select(0, partner_index)

    length = height * width
    use_fused = _fused_path(fused, x.device, batch * heads, length, length)
    own, other = x.flatten(2), partner.flatten(2)  # (B, C, HW)
    if weight is not None:
        q = _split(_project(weight, own), 1)  # (W x_i)^T, queries at x's
        k = _split(other.transpose(1, 2), 1)
        v = k
    else:
        assert weight_u is not None
        assert weight_v is not None
        q = _split(_project(weight_v, own), heads)
        k = _split(_project(weight_u, other), heads)
        v = _split(other.transpose(1, 2), heads)
    if use_fused:
        out = _fused_attend(q, k, v, scale)
    else:
        p = torch.matmul(q * scale, k.transpose(-1, -2))  # (B, h, HW_x, HW_partner) = P^T
        out = torch.matmul(p.softmax(dim=-1), v)
    return _to_map(out, x, height, width)


class CrossImageAttention(nn.Module):
    r"""Cross-image attention ``P = F_u^T W_P F_v`` of the CCG Knowledge Reasoning module.

    Two modes:

    * ``mode="pair"`` (the paper, Eq. 8-9): ``forward(fu, fv) -> (fu_att, fv_att)`` with
      ``fu_att = F_u softmax(P)`` in v's layout ``(B, C, Hv, Wv)`` and
      ``fv_att = F_v softmax(P^T)`` in u's layout ``(B, C, Hu, Wu)``; see
      :func:`ccg_layers.functional.cross_image_attention`.
    * ``mode="residual"`` (drop-in for any backbone or detector):
      ``forward(x, partner_index=None) -> x + gate * partner's features attended at x's
      positions``, pairing image ``i`` of the batch with ``partner_index[i]`` (default
      ``(i + 1) mod B``); see :func:`ccg_layers.functional.partner_attention`. ``gate`` is a
      learnable scalar initialised to ``gate_init = 0``, so inserting the layer into a
      pretrained network leaves its outputs unchanged until training moves the gate. A batch of
      one image has no partner: the layer is then the identity.

    ``W_P`` is a full learnable ``(C, C)`` matrix (initialised to the identity, i.e. plain
    dot-product similarity) when ``qk_channels`` is ``None`` and ``heads == 1``; otherwise it is
    low-rank and multi-head, ``W_P = W_q^T W_k`` with ``W_q, W_k`` of shape
    ``(qk_channels, C)`` (``qk_channels`` defaults to ``C`` when ``heads > 1``), each head using
    ``qk_channels / heads`` query/key and ``C / heads`` value channels.

    Args:
        channels: ``C``.
        qk_channels: Rank of ``W_P`` for the low-rank form; ``None`` for the full matrix.
        heads: Number of heads (low-rank form).
        scale: ``None`` or a positive number (unlike the functions, which take any finite
            scale: a layer's softmax must not be flattened or inverted). Multiplies ``P``
            before the softmax. ``None`` (default): ``1 / sqrt(d)`` with ``d`` the query/key
            width per head (``C`` for the full ``W_P``); the paper's unscaled ``P`` saturates
            the softmax for 2048-channel features. ``1.0`` is the paper's literal form.
        mode: ``"pair"`` or ``"residual"``.
        gate_init: Initial value of the residual gate ``gamma`` (residual mode), finite.
        fused: ``True``/``False`` force the fused/reference path, ``None`` lets
            :func:`ccg_layers.functional.set_fused_attn` (automatic by default) decide.
        device: Device of the parameters.
        dtype: Dtype of the parameters (floating); the inputs must have it outside autocast.

    Raises:
        CCGValueRangeError: A size, ``heads``, ``mode`` or ``fused`` out of range; ``scale``
            not ``None`` or a positive finite number; ``gate_init`` not a finite number.
        CCGShapeError: ``heads`` not dividing ``channels`` or ``qk_channels``.
        CCGDTypeError: ``dtype`` not a floating dtype; at the forward, an input whose dtype
            is not the layer's (outside autocast).

    Shape:
        - pair: ``fu (B, C, Hu, Wu)``, ``fv (B, C, Hv, Wv)`` -> ``(B, C, Hv, Wv)``,
          ``(B, C, Hu, Wu)``.
        - residual: ``x (B, C, H, W)``, ``partner_index (B,)`` -> ``(B, C, H, W)``.

    Example:
        >>> import torch
        >>> layer = CrossImageAttention(16)
        >>> fu_att, fv_att = layer(torch.randn(2, 16, 4, 4), torch.randn(2, 16, 5, 3))
        >>> fu_att.shape, fv_att.shape
        (torch.Size([2, 16, 5, 3]), torch.Size([2, 16, 4, 4]))
        >>> drop_in = CrossImageAttention(16, qk_channels=8, heads=2, mode="residual")
        >>> x = torch.randn(4, 16, 6, 6)
        >>> torch.equal(drop_in(x), x)  # gate starts at 0
        True
    """

    def __init__(
        self,
        channels: int,
        *,
        qk_channels: int | None = None,
        heads: int = 1,
        scale: float | None = None,
        mode: Mode = "pair",
        gate_init: float = 0.0,
        fused: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        channels = positive_int(channels, "channels")
        heads = positive_int(heads, "heads")
        qk_channels = optional_positive_int(qk_channels, "qk_channels")
        mode = check_choice(mode, "mode", Mode)
        _check_fused(fused)
        real_number(gate_init, "gate_init", what="a finite number")
        check_float_dtype(dtype, "dtype")
        low_rank = qk_channels is not None or heads > 1
        d_total = channels if qk_channels is None else qk_channels
        if low_rank:
            for name, size in (("channels", channels), ("qk_channels", d_total)):
                if size % heads:
                    raise CCGShapeError(f"`heads`={heads} must divide `{name}`, got {name}={size}.")
        if scale is not None:
            real_number(
                scale, "scale", low=0.0, low_open=True, what="None or a positive finite number"
            )
        self.channels = channels
        self.qk_channels = d_total if low_rank else None
        self.heads = heads
        self.head_dim = d_total // heads
        self.scale = float(scale) if scale is not None else self.head_dim**-0.5
        self.mode: Mode = mode
        self.fused = fused
        self.gate_init = float(gate_init)
        self.weight: nn.Parameter | None
        self.weight_u: nn.Parameter | None
        self.weight_v: nn.Parameter | None
        if low_rank:
            self.weight = None
            self.weight_u = nn.Parameter(torch.empty(d_total, channels, **factory))
            self.weight_v = nn.Parameter(torch.empty(d_total, channels, **factory))
        else:
            self.weight = nn.Parameter(torch.empty(channels, channels, **factory))
            self.weight_u = None
            self.weight_v = None
        self.gate: nn.Parameter | None = (
            nn.Parameter(torch.empty((), **factory)) if mode == "residual" else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W_P = I`` (full form), ``W_q = W_k`` random orthogonal rows (low-rank), gate."""
        with torch.no_grad():
            if self.weight is not None:
                nn.init.eye_(self.weight)
            if self.weight_u is not None and self.weight_v is not None:
                # W_q = W_k: W_P = W_q^T W_q starts as a positive semi-definite similarity.
                # Half precision: the QR of orthogonal_ is drawn in float32 (no CPU kernel for
                # half dtypes), giving the float32 layer's values cast to the dtype.
                init: Tensor = self.weight_u
                if torch.finfo(init.dtype).bits < 32:
                    init = torch.empty(init.shape, dtype=torch.float32, device=init.device)
                nn.init.orthogonal_(init)
                self.weight_u.copy_(init)
                self.weight_v.copy_(init)
            if self.gate is not None:
                self.gate.fill_(self.gate_init)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``forward(fu, fv)`` in pair mode, ``forward(x, partner_index=None)`` in residual.

        See :meth:`forward_pair` and :meth:`forward_residual`, which are the typed forms.
        """
        if self.mode == "pair":
            return self.forward_pair(*args, **kwargs)
        return self.forward_residual(*args, **kwargs)

    def _check_channels(self, x: Tensor, name: str, spec: tuple[str, ...]) -> None:
        """The layer's own configuration: ``x`` has its ``channels`` and dtype (not autocast).

        The rest is the function's, which would name the weight for a dtype mismatch.
        """
        if not isinstance(x, Tensor) or x.dim() != len(spec):
            return
        if x.shape[1] != self.channels:
            raise CCGShapeError(
                f"`{name}` must have the layer's {self.channels} channels in dimension 1 "
                f"({', '.join(spec)}), got shape {tuple(x.shape)}."
            )
        weight = self.weight if self.weight is not None else self.weight_u
        assert weight is not None
        if (
            x.dtype.is_floating_point
            and x.dtype != weight.dtype
            and not _autocast_enabled(x.device.type)
        ):
            raise CCGDTypeError(
                f"`{name}` must have the layer's dtype {weight.dtype} (outside autocast), got "
                f"{x.dtype}."
            )

    def forward_pair(self, fu: Tensor, fv: Tensor) -> tuple[Tensor, Tensor]:
        """``(F'_u, F'_v)`` of the pairs ``(fu[b], fv[b])`` (paper Eq. 8-9).

        Calls :func:`cross_image_attention` (low rank: :func:`multi_head_cross_image_attention`),
        which validates the inputs once; the configuration was validated at construction.
        """
        self._check_channels(fu, "fu", ("B", "C", "Hu", "Wu"))
        self._check_channels(fv, "fv", ("B", "C", "Hv", "Wv"))
        if self.weight is not None:
            return cross_image_attention(fu, fv, self.weight, scale=self.scale, fused=self.fused)
        assert self.weight_u is not None
        assert self.weight_v is not None
        return multi_head_cross_image_attention(
            fu,
            fv,
            self.weight_u,
            self.weight_v,
            heads=self.heads,
            scale=self.scale,
            fused=self.fused,
        )

    def forward_residual(self, x: Tensor, partner_index: Tensor | None = None) -> Tensor:
        """``x + gate * (partner's features attended at x's positions)`` (:func:`partner_attention`)."""
        if self.gate is None:
            raise CCGValueRangeError(
                "`forward_residual` needs a layer built with mode='residual', got mode='pair'."
            )
        self._check_channels(x, "x", ("B", "C", "H", "W"))
        attended = partner_attention(
            x,
            self.weight,
            self.weight_u,
            self.weight_v,
            partner_index=partner_index,
            heads=self.heads,
            scale=self.scale,
            fused=self.fused,
        )
        if attended is x:  # a batch of one image without partner
            return x
        return x + self.gate.to(attended.dtype) * attended

    def extra_repr(self) -> str:
        """Show the configuration in ``repr``."""
        rank = "full" if self.qk_channels is None else f"qk_channels={self.qk_channels}"
        return (
            f"{self.channels}, {rank}, heads={self.heads}, scale={self.scale:.4g}, "
            f"mode={self.mode!r}, fused={self.fused}"
        )
