"""CrossImageAttention: the Knowledge Reasoning attention of CCG (paper Sec. 3.5) as a module."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ccg_layers._validation import check_shape, check_tensor
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.functional.attention import (
    _check_features,
    _check_image_batch,
    _check_weight_dtype,
    _cross_image_attention,
    _multi_head_cross_image_attention,
    _partner_attention,
)

__all__ = ["CrossImageAttention"]

Mode = Literal["pair", "residual"]


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
        scale: Multiplies ``P`` before the softmax. ``None`` (default): ``1 / sqrt(d)`` with
            ``d`` the query/key width per head (``C`` for the full ``W_P``); the paper's
            unscaled ``P`` saturates the softmax for 2048-channel features. ``1.0`` is the
            paper's literal form.
        mode: ``"pair"`` or ``"residual"``.
        gate_init: Initial value of the residual gate ``gamma`` (residual mode).
        fused: ``True``/``False`` force the fused/reference path, ``None`` lets
            :func:`ccg_layers.functional.set_fused_attn` (automatic by default) decide.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

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
        for name, value in (("channels", channels), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CCGValueRangeError(f"`{name}` must be a positive int, got {value!r}.")
        if qk_channels is not None and (
            isinstance(qk_channels, bool) or not isinstance(qk_channels, int) or qk_channels < 1
        ):
            raise CCGValueRangeError(
                f"`qk_channels` must be None or a positive int, got {qk_channels!r}."
            )
        if mode not in ("pair", "residual"):
            raise CCGValueRangeError(f"`mode` must be 'pair' or 'residual', got {mode!r}.")
        if fused is not None and not isinstance(fused, bool):
            raise CCGValueRangeError(f"`fused` must be True, False or None, got {fused!r}.")
        if not math.isfinite(gate_init):
            raise CCGValueRangeError(f"`gate_init` must be finite, got {gate_init!r}.")
        low_rank = qk_channels is not None or heads > 1
        d_total = channels if qk_channels is None else qk_channels
        if low_rank:
            for name, size in (("channels", channels), ("qk_channels", d_total)):
                if size % heads:
                    raise CCGShapeError(f"`heads`={heads} must divide `{name}`, got {name}={size}.")
        if scale is not None and not math.isfinite(scale):
            raise CCGValueRangeError(f"`scale` must be None or finite, got {scale!r}.")
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
                nn.init.orthogonal_(self.weight_u)
                self.weight_v.copy_(self.weight_u)
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
        check_tensor(x, name)
        check_shape(x, name, spec)
        if x.shape[1] != self.channels:
            raise CCGShapeError(
                f"`{name}` must have the layer's {self.channels} channels in dimension 1 "
                f"({', '.join(spec)}), got shape {tuple(x.shape)}."
            )

    def _check_weights_dtype(self, features: Tensor) -> None:
        for name in ("weight", "weight_u", "weight_v"):
            param = getattr(self, name)
            if param is not None:
                _check_weight_dtype(param, name, features)

    def forward_pair(self, fu: Tensor, fv: Tensor) -> tuple[Tensor, Tensor]:
        """``(F'_u, F'_v)`` of the pairs ``(fu[b], fv[b])`` (paper Eq. 8-9).

        The inputs are validated once here (the configuration at construction), then the
        functional kernel runs unchecked.
        """
        self._check_channels(fu, "fu", ("B", "C", "Hu", "Wu"))
        self._check_channels(fv, "fv", ("B", "C", "Hv", "Wv"))
        _check_features(fu, fv)
        self._check_weights_dtype(fu)
        if self.weight is not None:
            return _cross_image_attention(fu, fv, self.weight, self.scale, self.fused)
        assert self.weight_u is not None
        assert self.weight_v is not None
        return _multi_head_cross_image_attention(
            fu, fv, self.weight_u, self.weight_v, self.heads, self.scale, self.fused
        )

    def forward_residual(self, x: Tensor, partner_index: Tensor | None = None) -> Tensor:
        """``x + gate * (partner's features attended at x's positions)``."""
        if self.gate is None:
            raise CCGValueRangeError(
                "`forward_residual` needs a layer built with mode='residual', got mode='pair'."
            )
        self._check_channels(x, "x", ("B", "C", "H", "W"))
        _check_image_batch(x, partner_index)
        self._check_weights_dtype(x)
        attended = _partner_attention(
            x,
            self.weight,
            self.weight_u,
            self.weight_v,
            partner_index,
            self.heads,
            self.scale,
            self.fused,
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
