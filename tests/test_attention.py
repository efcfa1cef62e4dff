"""Tests of the CrossImageAttention module: module == function, both modes, formats, compile."""

from __future__ import annotations

import math

import pytest
import torch

from ccg_layers import CrossImageAttention
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    cross_image_attention,
    multi_head_cross_image_attention,
    partner_attention,
)


def _randomise(layer: CrossImageAttention, gate: float | None = None) -> CrossImageAttention:
    with torch.no_grad():
        for p in (layer.weight, layer.weight_u, layer.weight_v):
            if p is not None:
                p.normal_()
        if gate is not None and layer.gate is not None:
            layer.gate.fill_(gate)
    return layer


# --------------------------------------------------------------------------- pair mode


@pytest.mark.parametrize("fused", [None, False, True])
def test_pair_full_equals_function_with_default_scale(fused):
    layer = _randomise(CrossImageAttention(8, fused=fused))
    assert layer.weight is not None
    assert layer.weight_u is None
    fu, fv = torch.randn(2, 8, 3, 4), torch.randn(2, 8, 5, 2)
    got = layer(fu, fv)
    want = cross_image_attention(fu, fv, layer.weight, scale=1 / math.sqrt(8))
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("fused", [False, True])
def test_pair_low_rank_multi_head_equals_function(fused):
    layer = _randomise(CrossImageAttention(12, qk_channels=6, heads=3, fused=fused))
    assert layer.weight is None
    assert layer.weight_u is not None
    assert layer.weight_u.shape == (6, 12)
    assert layer.scale == pytest.approx(2**-0.5)  # per-head query/key width 6 / 3 = 2
    fu, fv = torch.randn(2, 12, 3, 3), torch.randn(2, 12, 4, 4)
    got = layer(fu, fv)
    want = multi_head_cross_image_attention(
        fu, fv, layer.weight_u, layer.weight_v, heads=3, scale=2**-0.5
    )
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_heads_without_qk_channels_use_all_channels():
    layer = CrossImageAttention(16, heads=4)
    assert layer.qk_channels == 16
    assert layer.weight_u is not None
    assert layer.weight_u.shape == (16, 16)
    assert layer.scale == pytest.approx(0.5)


def test_scale_one_is_the_papers_literal_form():
    layer = _randomise(CrossImageAttention(4, scale=1.0))
    fu, fv = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    want = cross_image_attention(fu, fv, layer.weight, scale=1.0)
    torch.testing.assert_close(layer(fu, fv)[0], want[0])


def test_full_weight_starts_as_identity_dot_product_attention():
    layer = CrossImageAttention(6)
    torch.testing.assert_close(layer.weight, torch.eye(6))
    low = CrossImageAttention(6, qk_channels=4, heads=2)
    torch.testing.assert_close(low.weight_u, low.weight_v)
    torch.testing.assert_close(low.weight_u @ low.weight_u.T, torch.eye(4))


def test_pair_gradients_reach_features_and_weight():
    layer = CrossImageAttention(4)
    fu = torch.randn(2, 4, 3, 3, requires_grad=True)
    fv = torch.randn(2, 4, 2, 2, requires_grad=True)
    a, b = layer(fu, fv)
    (a.square().sum() + b.square().sum()).backward()
    for t in (fu.grad, fv.grad, layer.weight.grad):
        assert t is not None
        assert bool(torch.isfinite(t).all())
        assert float(t.abs().sum()) > 0


# --------------------------------------------------------------------------- residual mode


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("kwargs", [{}, {"qk_channels": 4, "heads": 2}])
def test_residual_is_identity_at_init(fused, kwargs):
    layer = CrossImageAttention(8, mode="residual", fused=fused, **kwargs)
    x = torch.randn(3, 8, 5, 5)
    assert torch.equal(layer(x), x)
    assert torch.equal(layer(x, torch.tensor([2, 2, 0])), x)


def test_residual_single_image_is_identity_even_with_nonzero_gate():
    layer = _randomise(CrossImageAttention(4, mode="residual"), gate=1.5)
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(layer(x), x)


def test_residual_single_image_with_explicit_self_partner():
    layer = _randomise(CrossImageAttention(4, mode="residual"), gate=0.5)
    x = torch.randn(1, 4, 3, 3)
    att, _ = cross_image_attention(x, x, layer.weight, scale=layer.scale)
    torch.testing.assert_close(layer(x, torch.tensor([0])), x + 0.5 * att)


@pytest.mark.parametrize("fused", [False, True])
def test_residual_equals_x_plus_gate_times_partner_attention(fused):
    layer = _randomise(CrossImageAttention(6, mode="residual", fused=fused), gate=0.7)
    x = torch.randn(4, 6, 3, 2)
    partner = torch.tensor([3, 0, 0, 1])
    want = x + 0.7 * partner_attention(x, layer.weight, partner_index=partner, scale=6**-0.5)
    torch.testing.assert_close(layer(x, partner), want)
    torch.testing.assert_close(layer(x, partner_index=partner), want)
    # default partner: (i + 1) mod B, i.e. x rolled by one
    att, _ = cross_image_attention(x.roll(-1, 0), x, layer.weight, scale=6**-0.5)
    torch.testing.assert_close(layer(x), x + 0.7 * att)


@pytest.mark.parametrize("kwargs", [{}, {"qk_channels": 4, "heads": 2}])
def test_residual_is_not_identity_after_a_training_step(kwargs):
    layer = CrossImageAttention(8, mode="residual", **kwargs)
    x = torch.randn(4, 8, 4, 4)
    target = x + torch.randn_like(x)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = (layer(x) - target).square().mean()
    loss.backward()
    assert layer.gate.grad is not None
    assert float(layer.gate.grad.abs()) > 0
    opt.step()
    assert float(layer.gate.detach().abs()) > 0
    assert not torch.equal(layer(x), x)
    with torch.no_grad():
        assert float((layer(x) - target).square().mean()) < float(loss)


def test_residual_keeps_channels_last_and_matches_contiguous():
    layer = _randomise(CrossImageAttention(8, mode="residual"), gate=0.3)
    x = torch.randn(2, 8, 5, 6)
    xc = x.to(memory_format=torch.channels_last)
    out = layer(xc)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, layer(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_residual_under_autocast(dtype):
    layer = _randomise(CrossImageAttention(8, mode="residual", qk_channels=8, heads=2), gate=0.5)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        out = torch.nn.functional.conv2d(x, torch.eye(8)[:, :, None, None])  # a low-precision op
        out = layer(out)
    out.float().sum().backward()
    assert bool(torch.isfinite(out).all())
    assert bool(torch.isfinite(x.grad).all())
    torch.testing.assert_close(out.float(), layer(x.detach()), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("mode", ["pair", "residual"])
def test_deterministic_in_eval_mode(mode):
    layer = _randomise(CrossImageAttention(8, heads=2, mode=mode), gate=0.5).eval()
    x, y = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    args = (x, y) if mode == "pair" else (x,)
    first, second = layer(*args), layer(*args)
    for a, b in zip(
        first if mode == "pair" else [first], second if mode == "pair" else [second], strict=True
    ):
        assert torch.equal(a, b)


def test_factory_kwargs_and_state_dict():
    layer = CrossImageAttention(4, mode="residual", dtype=torch.float64, device="cpu")
    assert layer.weight.dtype == torch.float64
    assert layer.gate.dtype == torch.float64
    assert set(layer.state_dict()) == {"weight", "gate"}
    low = CrossImageAttention(4, qk_channels=2)
    assert set(low.state_dict()) == {"weight_u", "weight_v"}
    assert "mode='pair'" in repr(low)


def test_gate_init_is_used():
    layer = CrossImageAttention(4, mode="residual", gate_init=0.25)
    assert float(layer.gate.detach()) == 0.25
    layer.gate.data.fill_(3.0)
    layer.reset_parameters()
    assert float(layer.gate.detach()) == 0.25


@pytest.mark.slow
def test_torch_compile_fullgraph_both_modes():
    pair = _randomise(CrossImageAttention(8, heads=2))
    residual = _randomise(CrossImageAttention(8, mode="residual"), gate=0.5)

    def f(x, y, index):
        a, b = pair(x, y)
        return a.sum() + b.sum(), residual(x), residual(x, index)

    x, y = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 3, 3)
    index = torch.tensor([1, 1])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, y, index), f(x, y, index), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_torch_compile_inductor_residual_forward_backward():
    # the fused (SDPA) path under inductor; the aot_eager test above covers the reference path
    layer = _randomise(CrossImageAttention(8, heads=2, mode="residual", fused=True), gate=0.5)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    out = compiled(x)
    out.square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    want = layer(x)
    want.square().sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("channels", [0, -3, 2.5, True])
def test_error_bad_channels(channels):
    with pytest.raises(CCGValueRangeError, match=r"`channels` must be a positive int"):
        CrossImageAttention(channels)


def test_error_heads_not_dividing_channels():
    with pytest.raises(CCGShapeError, match=r"`heads`=3 must divide `channels`, got channels=8"):
        CrossImageAttention(8, heads=3)


def test_error_heads_not_dividing_qk_channels():
    with pytest.raises(CCGShapeError, match=r"must divide `qk_channels`, got qk_channels=5"):
        CrossImageAttention(8, qk_channels=5, heads=2)


def test_error_bad_qk_channels():
    with pytest.raises(CCGValueRangeError, match=r"`qk_channels` must be None or a positive int"):
        CrossImageAttention(8, qk_channels=0)


def test_error_bad_mode():
    with pytest.raises(CCGValueRangeError, match=r"`mode` must be 'pair' or 'residual', got 'x'"):
        CrossImageAttention(8, mode="x")


def test_error_bad_scale():
    with pytest.raises(CCGValueRangeError, match=r"`scale` must be None or finite, got nan"):
        CrossImageAttention(8, scale=float("nan"))


def test_error_bad_gate_init():
    with pytest.raises(CCGValueRangeError, match=r"`gate_init` must be finite, got inf"):
        CrossImageAttention(8, mode="residual", gate_init=float("inf"))


def test_error_bad_fused():
    with pytest.raises(CCGValueRangeError, match=r"`fused` must be True, False or None, got 1"):
        CrossImageAttention(8, fused=1)


def test_error_pair_channel_mismatch():
    layer = CrossImageAttention(8)
    with pytest.raises(
        CCGShapeError, match=r"`fu` must have the layer's 8 channels in dimension 1 \(B, C, Hu, Wu"
    ):
        layer(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3))


def test_error_pair_fv_channel_mismatch():
    layer = CrossImageAttention(8)
    with pytest.raises(CCGShapeError, match=r"`fv` must have the layer's 8 channels .* \(2, 6, 3"):
        layer(torch.randn(2, 8, 3, 3), torch.randn(2, 6, 3, 3))


def test_error_pair_missing_fv():
    layer = CrossImageAttention(8)
    with pytest.raises(TypeError, match=r"fv"):
        layer(torch.randn(2, 8, 3, 3))


def test_error_residual_wrong_rank():
    layer = CrossImageAttention(8, mode="residual")
    with pytest.raises(CCGShapeError, match=r"`x` must have 4 dimensions \(B, C, H, W\)"):
        layer(torch.randn(8, 3, 3))


def test_error_residual_channel_mismatch():
    layer = CrossImageAttention(8, mode="residual")
    with pytest.raises(
        CCGShapeError, match=r"`x` must have the layer's 8 channels .* \(2, 4, 3, 3\)"
    ):
        layer(torch.randn(2, 4, 3, 3))


def test_error_residual_bad_partner_index():
    layer = CrossImageAttention(8, mode="residual")
    with pytest.raises(CCGValueRangeError, match=r"`partner_index` must hold indices in \[0, 2\)"):
        layer(torch.randn(2, 8, 3, 3), torch.tensor([0, 2]))


def test_error_forward_residual_on_pair_layer():
    layer = CrossImageAttention(8)
    with pytest.raises(CCGValueRangeError, match=r"needs a layer built with mode='residual'"):
        layer.forward_residual(torch.randn(2, 8, 3, 3))


@pytest.mark.parametrize("mode", ["pair", "residual"])
def test_error_non_finite_features_in_both_modes(mode):
    layer = CrossImageAttention(4, mode=mode)
    x = torch.randn(2, 4, 3, 3)
    x[1, 1, 1, 1] = float("nan")
    name = "fu" if mode == "pair" else "x"
    with pytest.raises(CCGValueRangeError, match=rf"`{name}` must be finite, got NaN or infinite"):
        layer(x, torch.randn(2, 4, 3, 3)) if mode == "pair" else layer(x)


def test_module_validates_once_at_its_boundary(monkeypatch):
    """The module checks each input once and calls the unchecked kernel (no re-validation)."""
    import ccg_layers.functional.attention as fa

    calls = []
    original = fa.check_finite

    def counting(x, name):
        calls.append(name)
        original(x, name)

    monkeypatch.setattr(fa, "check_finite", counting)
    CrossImageAttention(4)(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 2))
    assert calls == ["fu", "fv"]
    calls.clear()
    CrossImageAttention(4, qk_channels=2, mode="residual")(torch.randn(2, 4, 3, 3))
    assert calls == ["x"]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("low_rank", [False, True])
def test_output_dtype_under_autocast(fused, low_rank):
    """docs/attention.md: pair mode returns the autocast dtype, residual mode x's dtype."""
    kwargs = {"qk_channels": 4, "heads": 2} if low_rank else {}
    pair = CrossImageAttention(8, fused=fused, **kwargs)
    residual = CrossImageAttention(8, mode="residual", gate_init=0.5, fused=fused, **kwargs)
    x = torch.randn(2, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert {t.dtype for t in pair(x, x)} == {torch.bfloat16}
        assert residual(x).dtype == torch.float32
        low = torch.nn.functional.conv2d(x, torch.eye(8)[:, :, None, None])
        assert low.dtype == torch.bfloat16
        assert residual(low).dtype == torch.bfloat16
