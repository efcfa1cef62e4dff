"""Cross-image attention (Eq. 8-9): the functions against float64 references written from the
equations, the fused-path switch, and the CrossImageAttention module (module == function, both
modes, formats, compile).
"""

from __future__ import annotations

import math
import re

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given
from torch.profiler import ProfilerActivity, profile

from ccg_layers import CrossImageAttention
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    cross_image_attention,
    get_fused_attn,
    multi_head_cross_image_attention,
    partner_attention,
    set_fused_attn,
    use_fused_path,
)


def column_softmax(p):
    """softmax over the rows i of every column j, written out: exp(P_ij) / sum_i exp(P_ij)."""
    e = torch.exp(p - p.max(dim=0, keepdim=True).values)
    return e / e.sum(dim=0, keepdim=True)


def ref_pair(fu, fv, weight, scale):
    """Per image pair, straight from the paper: P = F_u^T W F_v, F'_u = F_u softmax(P),
    F'_v = F_v softmax(P^T), the softmax over u's (resp. v's) positions."""
    B, C, Hu, Wu = fu.shape
    _, _, Hv, Wv = fv.shape
    out_u = torch.zeros(B, C, Hv, Wv, dtype=torch.float64)
    out_v = torch.zeros(B, C, Hu, Wu, dtype=torch.float64)
    for b in range(B):
        Fu = fu[b].double().reshape(C, Hu * Wu)
        Fv = fv[b].double().reshape(C, Hv * Wv)
        P = scale * (Fu.T @ weight.double() @ Fv)  # (HW_u, HW_v)
        out_u[b] = (Fu @ column_softmax(P)).reshape(C, Hv, Wv)
        out_v[b] = (Fv @ column_softmax(P.T)).reshape(C, Hu, Wu)
    return out_u, out_v


def ref_multi_head(fu, fv, wu, wv, heads, scale):
    """Head h: W_P^h = W_u^h^T W_v^h on channel block h of the features."""
    C, D = fu.shape[1], wu.shape[0]
    c, d = C // heads, D // heads
    outs_u, outs_v = [], []
    for h in range(heads):
        w = wu[h * d : (h + 1) * d].double().T @ wv[h * d : (h + 1) * d].double()  # (C, C)
        # P_h = (W_u^h F_u)^T (W_v^h F_v) = F_u^T w F_v; the values are channel block h only.
        Fu_all, Fv_all = fu.double(), fv.double()
        B = fu.shape[0]
        ou = torch.zeros(B, c, *fv.shape[2:], dtype=torch.float64)
        ov = torch.zeros(B, c, *fu.shape[2:], dtype=torch.float64)
        for b in range(B):
            Fu = Fu_all[b].reshape(C, -1)
            Fv = Fv_all[b].reshape(C, -1)
            P = scale * (Fu.T @ w @ Fv)
            ou[b] = (Fu[h * c : (h + 1) * c] @ column_softmax(P)).reshape(c, *fv.shape[2:])
            ov[b] = (Fv[h * c : (h + 1) * c] @ column_softmax(P.T)).reshape(c, *fu.shape[2:])
        outs_u.append(ou)
        outs_v.append(ov)
    return torch.cat(outs_u, 1), torch.cat(outs_v, 1)


def ref_partner(x, weight, partner, scale):
    """Image i attends to x[partner[i]]: F'_u with u = x[partner[i]], v = x[i]."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    for i, p in enumerate(partner):
        out[i] = ref_pair(x[p : p + 1], x[i : i + 1], weight, scale)[0][0]
    return out


def rel_err(got, want):
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


# --------------------------------------------------------------------------- strategies


@st.composite
def pair_inputs(draw, max_b=3, max_c=8, max_side=5, dtype=torch.float64):
    B = draw(st.integers(1, max_b))
    C = draw(st.integers(1, max_c))
    Hu, Wu, Hv, Wv = (draw(st.integers(1, max_side)) for _ in range(4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    fu = torch.randn(B, C, Hu, Wu, generator=g, dtype=dtype)
    fv = torch.randn(B, C, Hv, Wv, generator=g, dtype=dtype)
    weight = torch.randn(C, C, generator=g, dtype=dtype) / math.sqrt(C)
    return fu, fv, weight


scales = st.sampled_from([1.0, 0.25, 2.0, 0.0, -0.5])


# --------------------------------------------------------------------------- pair, full W_P


@given(pair_inputs(), scales, st.sampled_from([False, True]))
def test_pair_matches_float64_reference(inputs, scale, fused):
    fu, fv, weight = inputs
    got_u, got_v = cross_image_attention(fu, fv, weight, scale=scale, fused=fused)
    want_u, want_v = ref_pair(fu, fv, weight, scale)
    torch.testing.assert_close(got_u, want_u, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_v, want_v, rtol=1e-10, atol=1e-10)


@given(pair_inputs(max_b=2, max_c=48, max_side=12, dtype=torch.float32), scales)
def test_fused_equals_reference_float32_within_1e5_relative(inputs, scale):
    fu, fv, weight = inputs
    ref = cross_image_attention(fu, fv, weight, scale=scale, fused=False)
    fus = cross_image_attention(fu, fv, weight, scale=scale, fused=True)
    for got, want in zip(fus, ref, strict=True):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("fused", [False, True])
def test_gradcheck_pair(fused):
    fu = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    fv = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: cross_image_attention(a, b, c, scale=0.7, fused=fused), (fu, fv, w)
    )


def test_output_layouts_follow_the_paper():
    # F'_u lives on v's grid, F'_v on u's grid.
    fu, fv = torch.randn(2, 4, 3, 7), torch.randn(2, 4, 5, 2)
    for fused in (False, True):
        fu_att, fv_att = cross_image_attention(fu, fv, torch.eye(4), fused=fused)
        assert fu_att.shape == (2, 4, 5, 2)
        assert fv_att.shape == (2, 4, 3, 7)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("s", [1.0, 3.0, 40.0])
def test_one_hot_features_known_answer(fused, s):
    # F_u = F_v = one-hot positions (C = HW), W = I: P = s * identity, so column j of softmax(P)
    # is e^s at i = j and 1 elsewhere, over e^s + n - 1.
    n = 6
    f = torch.eye(n, dtype=torch.float64).reshape(1, n, 2, 3)
    fu_att, fv_att = cross_image_attention(f, f, torch.eye(n, dtype=torch.float64), scale=s)
    denom = math.exp(s) + n - 1
    want = (torch.ones(n, n, dtype=torch.float64) + (math.exp(s) - 1) * torch.eye(n)) / denom
    torch.testing.assert_close(fu_att.reshape(n, n), want.double())
    torch.testing.assert_close(fv_att.reshape(n, n), want.double())


@pytest.mark.parametrize("fused", [False, True])
def test_one_hot_permuted_partner_is_recovered_in_vs_layout(fused):
    # v holds u's one-hot features at permuted positions: F'_u (in v's layout) ~ F_v and
    # F'_v (in u's layout) ~ F_u when the softmax is sharp.
    n = 8
    perm = torch.randperm(n)
    fu = torch.eye(n, dtype=torch.float64).reshape(1, n, 2, 4)
    fv = fu.reshape(1, n, n)[:, :, perm].reshape(1, n, 4, 2)  # different grid shape too
    fu_att, fv_att = cross_image_attention(
        fu, fv, torch.eye(n, dtype=torch.float64), scale=60.0, fused=fused
    )
    torch.testing.assert_close(fu_att, fv, atol=1e-20, rtol=1e-20)
    torch.testing.assert_close(fv_att, fu, atol=1e-20, rtol=1e-20)


@pytest.mark.parametrize("fused", [False, True])
def test_zero_scale_is_the_mean_over_the_other_image(fused):
    fu, fv = torch.randn(2, 5, 3, 3), torch.randn(2, 5, 4, 2)
    fu_att, fv_att = cross_image_attention(fu, fv, torch.randn(5, 5), scale=0.0, fused=fused)
    torch.testing.assert_close(fu_att, fu.mean((2, 3), keepdim=True).expand_as(fv))
    torch.testing.assert_close(fv_att, fv.mean((2, 3), keepdim=True).expand_as(fu))


def test_single_position_images_copy_the_other_feature():
    fu, fv = torch.randn(3, 4, 1, 1), torch.randn(3, 4, 1, 1)
    for fused in (False, True):
        fu_att, fv_att = cross_image_attention(fu, fv, torch.randn(4, 4), fused=fused)
        torch.testing.assert_close(fu_att, fu)
        torch.testing.assert_close(fv_att, fv)


def test_outputs_are_convex_combinations_of_the_other_images_features():
    fu, fv = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 3, 3)
    fu_att, fv_att = cross_image_attention(fu, fv, torch.randn(6, 6), scale=0.5)
    lo_u, hi_u = fu.amin((2, 3), keepdim=True), fu.amax((2, 3), keepdim=True)
    assert bool(((fu_att >= lo_u - 1e-6) & (fu_att <= hi_u + 1e-6)).all())
    lo_v, hi_v = fv.amin((2, 3), keepdim=True), fv.amax((2, 3), keepdim=True)
    assert bool(((fv_att >= lo_v - 1e-6) & (fv_att <= hi_v + 1e-6)).all())


def test_swapping_u_and_v_with_transposed_weight_swaps_the_outputs():
    fu, fv, w = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 2, 6), torch.randn(5, 5)
    a_u, a_v = cross_image_attention(fu, fv, w, scale=0.3)
    b_u, b_v = cross_image_attention(fv, fu, w.T, scale=0.3)
    torch.testing.assert_close(a_u, b_v)
    torch.testing.assert_close(a_v, b_u)


# --------------------------------------------------------------------------- multi-head


@st.composite
def multi_head_inputs(draw):
    heads = draw(st.integers(1, 3))
    C = heads * draw(st.integers(1, 3))
    D = heads * draw(st.integers(1, 3))
    B = draw(st.integers(1, 2))
    Hu, Wu, Hv, Wv = (draw(st.integers(1, 4)) for _ in range(4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    fu = torch.randn(B, C, Hu, Wu, generator=g, dtype=torch.float64)
    fv = torch.randn(B, C, Hv, Wv, generator=g, dtype=torch.float64)
    wu = torch.randn(D, C, generator=g, dtype=torch.float64)
    wv = torch.randn(D, C, generator=g, dtype=torch.float64)
    return fu, fv, wu, wv, heads


@given(multi_head_inputs(), st.sampled_from([1.0, 0.3]), st.sampled_from([False, True]))
def test_multi_head_matches_float64_reference(inputs, scale, fused):
    fu, fv, wu, wv, heads = inputs
    got = multi_head_cross_image_attention(fu, fv, wu, wv, heads=heads, scale=scale, fused=fused)
    want = ref_multi_head(fu, fv, wu, wv, heads, scale)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("C", "D", "heads"), [(16, 16, 4), (16, 8, 2), (8, 24, 2)])
def test_multi_head_fused_equals_reference_float32(C, D, heads):
    # D != C: the fused path pads query/key or values to a common width.
    fu, fv = torch.randn(2, C, 9, 7), torch.randn(2, C, 5, 11)
    wu, wv = torch.randn(D, C) / C**0.5, torch.randn(D, C) / C**0.5
    ref = multi_head_cross_image_attention(fu, fv, wu, wv, heads=heads, fused=False)
    fus = multi_head_cross_image_attention(fu, fv, wu, wv, heads=heads, fused=True)
    for got, want in zip(fus, ref, strict=True):
        assert rel_err(got, want) < 1e-5


def test_one_head_equals_full_weight_wu_t_wv():
    fu, fv = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 4, 4)
    wu, wv = torch.randn(4, 6), torch.randn(4, 6)
    got = multi_head_cross_image_attention(fu, fv, wu, wv, heads=1, scale=0.4)
    want = cross_image_attention(fu, fv, wu.T @ wv, scale=0.4)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("fused", [False, True])
def test_gradcheck_multi_head(fused):
    fu = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    fv = torch.randn(1, 4, 3, 1, dtype=torch.float64, requires_grad=True)
    wu = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    wv = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: multi_head_cross_image_attention(*t, heads=2, fused=fused), (fu, fv, wu, wv)
    )


# --------------------------------------------------------------------------- partner attention


@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(0, 2**31 - 1),
    st.booleans(),
    st.sampled_from([False, True]),
)
def test_partner_attention_matches_reference(batch, channels, seed, explicit, fused):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, 3, 2, generator=g, dtype=torch.float64)
    w = torch.randn(channels, channels, generator=g, dtype=torch.float64)
    if explicit:
        index = torch.randint(0, batch, (batch,), generator=g)
        got = partner_attention(x, w, partner_index=index, scale=0.5, fused=fused)
        torch.testing.assert_close(got, ref_partner(x, w, index.tolist(), 0.5))
    elif batch > 1:
        got = partner_attention(x, w, scale=0.5, fused=fused)
        partners = [(i + 1) % batch for i in range(batch)]
        torch.testing.assert_close(got, ref_partner(x, w, partners, 0.5))
    else:  # one image, no partner: identity
        assert partner_attention(x, w, scale=0.5, fused=fused) is x


def test_partner_attention_low_rank_matches_multi_head():
    x = torch.randn(3, 8, 4, 4)
    wu, wv = torch.randn(4, 8), torch.randn(4, 8)
    index = torch.tensor([2, 2, 0])
    for fused in (False, True):
        got = partner_attention(x, None, wu, wv, partner_index=index, heads=2, fused=fused)
        want, _ = multi_head_cross_image_attention(x[index], x, wu, wv, heads=2, fused=fused)
        torch.testing.assert_close(got, want)


def test_partner_attention_single_image_without_partner_is_identity():
    x = torch.randn(1, 4, 3, 3)
    assert partner_attention(x, torch.eye(4)) is x


def test_partner_attention_single_image_with_itself_as_partner():
    x = torch.randn(1, 4, 3, 3)
    got = partner_attention(x, torch.eye(4), partner_index=torch.tensor([0]))
    torch.testing.assert_close(got, cross_image_attention(x, x, torch.eye(4))[0])


def test_gradcheck_partner_attention():
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([1, 0, 0])
    for fused in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, f=fused: partner_attention(a, b, partner_index=index, fused=f), (x, w)
        )


# --------------------------------------------------------------------------- numerics, formats


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_half_precision(fused, dtype):
    fu = torch.randn(2, 16, 6, 6, requires_grad=True)
    fv = torch.randn(2, 16, 5, 5, requires_grad=True)
    w = torch.randn(16, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        fu_att, fv_att = cross_image_attention(fu, fv, w, scale=0.25, fused=fused)
    assert fu_att.dtype == dtype
    (fu_att.float().sum() + fv_att.float().square().sum()).backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in (fu, fv, w))
    want_u, want_v = cross_image_attention(fu.detach(), fv.detach(), w.detach(), scale=0.25)
    assert rel_err(fu_att.detach(), want_u) < 0.05
    assert rel_err(fv_att.detach(), want_v) < 0.05


@pytest.mark.parametrize("fused", [False, True])
def test_channels_last_inputs_give_the_same_values_in_channels_last(fused):
    fu, fv, w = torch.randn(2, 8, 5, 4), torch.randn(2, 8, 3, 6), torch.randn(8, 8)
    want = cross_image_attention(fu, fv, w, fused=fused)
    cl = torch.channels_last
    got = cross_image_attention(fu.to(memory_format=cl), fv.to(memory_format=cl), w, fused=fused)
    for g_, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g_, w_)
        assert g_.is_contiguous(memory_format=cl)
    assert want[0].is_contiguous()
    assert want[1].is_contiguous()


def _ops_and_peak(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return names, max(e.cpu_memory_usage for e in prof.key_averages())


def test_fused_path_runs_a_fused_kernel_and_never_allocates_the_score_matrix():
    n = 64 * 64  # P would be n * n * 4 bytes = 64 MiB
    fu = torch.randn(1, 4, 64, 64, requires_grad=True)
    fv = torch.randn(1, 4, 64, 64, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)

    def step(fused):
        a, b = cross_image_attention(fu, fv, w, fused=fused)
        (a.sum() + b.sum()).backward()

    names, largest = _ops_and_peak(lambda: step(True))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert largest < n * n * 4 / 8  # no op allocates anything near P


def test_reference_path_materialises_the_score_matrix():
    n = 16 * 16
    fu, fv = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    names, largest = _ops_and_peak(lambda: cross_image_attention(fu, fv, torch.eye(4), fused=False))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in names
    assert largest >= n * n * 4


def test_multi_head_with_unequal_widths_still_uses_the_fused_kernel():
    fu, fv = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    wu, wv = torch.randn(4, 16), torch.randn(4, 16)
    names, _ = _ops_and_peak(
        lambda: multi_head_cross_image_attention(fu, fv, wu, wv, heads=2, fused=True)
    )
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_attention_math" not in names


# --------------------------------------------------------------------------- path selection


@pytest.fixture
def restore_switch():
    before = get_fused_attn()
    yield
    set_fused_attn(before)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """A list that grows by one at every call of scaled_dot_product_attention (the fused path)."""
    calls: list[int] = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    return calls


def test_auto_choice_by_size_and_device(restore_switch):
    set_fused_attn(None)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_fused_path(None, cpu, 2, 256, 256)
    assert use_fused_path(None, cpu, 16, 4096, 4096)
    assert use_fused_path(None, cuda, 2, 256, 256)
    assert not use_fused_path(None, cuda, 1, 8, 8)


def test_process_wide_switch_and_explicit_argument(restore_switch, sdpa_calls):
    calls = sdpa_calls
    fu, fv, w = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.eye(4)
    set_fused_attn(True)
    cross_image_attention(fu, fv, w)
    assert len(calls) == 2  # one SDPA per direction
    cross_image_attention(fu, fv, w, fused=False)  # the argument wins over the switch
    assert len(calls) == 2
    set_fused_attn(False)
    cross_image_attention(fu, fv, w)
    assert len(calls) == 2
    cross_image_attention(fu, fv, w, fused=True)
    assert len(calls) == 4
    assert not use_fused_path(None, torch.device("cuda"), 64, 4096, 4096)


def test_use_fused_path_takes_a_device_string(restore_switch):
    set_fused_attn(None)
    assert use_fused_path(None, "cuda:0", 2, 256, 256)
    assert not use_fused_path(None, "cpu", 2, 256, 256)


@pytest.mark.parametrize("fused", ["no", 1, 0.0])
def test_error_use_fused_path_bad_fused(fused):
    with pytest.raises(CCGValueRangeError, match=r"`fused` must be True, False or None, got"):
        use_fused_path(fused, torch.device("cpu"), 1, 10, 10)


@pytest.mark.parametrize("device", ["no-such-device", 0, None])
def test_error_use_fused_path_bad_device(device):
    with pytest.raises(
        CCGValueRangeError, match=r"`device` must be a torch.device or a device string, got"
    ):
        use_fused_path(None, device, 1, 10, 10)


@pytest.mark.parametrize("name", ["batch_heads", "len_u", "len_v"])
@pytest.mark.parametrize("value", [-1, 1.5, "a", True])
def test_error_use_fused_path_bad_sizes(name, value):
    sizes = {"batch_heads": 1, "len_u": 10, "len_v": 10, name: value}
    with pytest.raises(
        CCGValueRangeError, match=rf"`{name}` must be a non-negative int, got {value!r}"
    ):
        use_fused_path(None, torch.device("cpu"), **sizes)


def test_use_fused_path_of_numpy_sizes_is_a_python_bool(restore_switch):
    set_fused_attn(None)
    got = use_fused_path(None, "cpu", np.int64(16), np.int64(4096), np.int64(4096))
    assert got is True
    assert use_fused_path(None, "cpu", np.int64(1), np.int64(8), np.int64(8)) is False


def test_error_bad_switch_value(restore_switch):
    with pytest.raises(CCGValueRangeError, match=r"`enable` must be True, False or None, got 1"):
        set_fused_attn(1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"]
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
# The input checks read shapes while the TorchScript exporter traces: they validate the example
# inputs, as intended, and the tracer warns that shapes become constants.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_export_never_takes_the_fused_path(tmp_path, sdpa_calls, dynamo):
    import onnx

    calls = sdpa_calls

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 4))

        def forward(self, fu, fv):
            return cross_image_attention(fu, fv, self.w, fused=True)

    fu, fv = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 2, 2)
    cross_image_attention(fu, fv, torch.eye(4), fused=True)
    assert len(calls) == 2  # eager: fused=True is honoured
    path = tmp_path / "pair.onnx"
    torch.onnx.export(Pair().eval(), (fu, fv), str(path), dynamo=dynamo)
    assert len(calls) == 2  # export: the reference path, despite fused=True
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Softmax" in ops
    assert "Attention" not in ops


# --------------------------------------------------------------------------- bad input


def _ok():
    return torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 2, 5), torch.eye(4)


def test_error_fu_wrong_rank():
    _, fv, w = _ok()
    with pytest.raises(
        CCGShapeError, match=r"`fu` must have 4 dimensions \(B, C, Hu, Wu\), got shape \(4, 9\)"
    ):
        cross_image_attention(torch.zeros(4, 9), fv, w)


def test_error_fv_wrong_rank():
    fu, _, w = _ok()
    with pytest.raises(
        CCGShapeError, match=r"`fv` must have 4 dimensions .* got shape \(2, 4, 10\)"
    ):
        cross_image_attention(fu, torch.zeros(2, 4, 10), w)


def test_error_channel_mismatch():
    fu, _, w = _ok()
    with pytest.raises(
        CCGShapeError, match=r"`fv` must have shape \(B, C, Hv, Wv\) with C=4 .* \(C=5\)"
    ):
        cross_image_attention(fu, torch.zeros(2, 5, 2, 5), w)


def test_error_batch_mismatch():
    fu, _, w = _ok()
    with pytest.raises(CCGShapeError, match=r"`fv` .* with B=2 .* \(B=3\)"):
        cross_image_attention(fu, torch.zeros(3, 4, 2, 5), w)


@pytest.mark.parametrize("shape", [(4, 5), (5, 4), (4,), (4, 4, 1)])
def test_error_weight_shape(shape):
    fu, fv, _ = _ok()
    with pytest.raises(CCGShapeError, match=r"`weight` must (have shape \(C, C\)|have 2 dim)"):
        cross_image_attention(fu, fv, torch.zeros(shape))


def test_error_weight_not_a_tensor():
    fu, fv, _ = _ok()
    with pytest.raises(CCGDTypeError, match=r"`weight` must be a torch.Tensor, got list"):
        cross_image_attention(fu, fv, [[1.0]])


def test_error_integer_features():
    _, fv, w = _ok()
    with pytest.raises(CCGDTypeError, match=r"`fu` must have a float dtype, got torch.int64"):
        cross_image_attention(torch.zeros(2, 4, 3, 3, dtype=torch.long), fv, w)


def test_error_feature_dtypes_differ():
    fu, fv, w = _ok()
    with pytest.raises(
        CCGDTypeError,
        match=r"`fv` must have the dtype of `fu` \(torch.float32\), got torch.float64",
    ):
        cross_image_attention(fu, fv.double(), w)


def test_error_weight_dtype_differs_outside_autocast():
    fu, fv, w = _ok()
    with pytest.raises(CCGDTypeError, match=r"`weight` must have the dtype of the features"):
        cross_image_attention(fu, fv, w.double())


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "1", None])
def test_error_bad_scale(scale):
    fu, fv, w = _ok()
    with pytest.raises(CCGValueRangeError, match=r"`scale` must be a finite real number, got"):
        cross_image_attention(fu, fv, w, scale=scale)


def test_error_bad_fused():
    fu, fv, w = _ok()
    with pytest.raises(CCGValueRangeError, match=r"`fused` must be True, False or None, got 'yes'"):
        cross_image_attention(fu, fv, w, fused="yes")


def test_error_heads_not_dividing_channels():
    fu, fv, _ = _ok()
    with pytest.raises(CCGShapeError, match=r"`heads`=3 must divide the channels C, got C=4"):
        multi_head_cross_image_attention(fu, fv, torch.zeros(6, 4), torch.zeros(6, 4), heads=3)


def test_error_heads_not_dividing_qk_channels():
    fu, fv, _ = _ok()
    with pytest.raises(CCGShapeError, match=r"must divide the query/key channels D, got D=3"):
        multi_head_cross_image_attention(fu, fv, torch.zeros(3, 4), torch.zeros(3, 4), heads=2)


@pytest.mark.parametrize("heads", [0, -1, 1.5, True])
def test_error_bad_heads(heads):
    fu, fv, _ = _ok()
    with pytest.raises(CCGValueRangeError, match=r"`heads` must be a positive int"):
        multi_head_cross_image_attention(fu, fv, torch.zeros(4, 4), torch.zeros(4, 4), heads=heads)


def test_error_low_rank_weights_disagree():
    fu, fv, _ = _ok()
    with pytest.raises(CCGShapeError, match=r"`weight_v` must have shape \(D, C\) with D=2"):
        multi_head_cross_image_attention(fu, fv, torch.zeros(2, 4), torch.zeros(3, 4))


def test_error_low_rank_weight_wrong_channels():
    fu, fv, _ = _ok()
    with pytest.raises(CCGShapeError, match=r"`weight_u` must have shape \(D, C\) with C=4"):
        multi_head_cross_image_attention(fu, fv, torch.zeros(2, 5), torch.zeros(2, 4))


def test_error_partner_index_out_of_range():
    x = torch.zeros(3, 4, 2, 2)
    with pytest.raises(
        CCGValueRangeError, match=r"`partner_index` must hold indices in \[0, 3\), got values in"
    ):
        partner_attention(x, torch.eye(4), partner_index=torch.tensor([0, 1, 3]))


def test_error_partner_index_negative():
    x = torch.zeros(3, 4, 2, 2)
    with pytest.raises(CCGValueRangeError, match=r"got values in \[-1, 1\]"):
        partner_attention(x, torch.eye(4), partner_index=torch.tensor([0, 1, -1]))


def test_error_partner_index_float():
    x = torch.zeros(3, 4, 2, 2)
    with pytest.raises(CCGDTypeError, match=r"`partner_index` must have a int dtype, got torch.f"):
        partner_attention(x, torch.eye(4), partner_index=torch.tensor([0.0, 1.0, 2.0]))


def test_error_partner_index_wrong_length():
    x = torch.zeros(3, 4, 2, 2)
    with pytest.raises(CCGShapeError, match=r"`partner_index` must have shape \(B\) with B=3"):
        partner_attention(x, torch.eye(4), partner_index=torch.tensor([0, 1]))


def test_error_partner_both_weight_forms():
    x = torch.zeros(3, 4, 2, 2)
    with pytest.raises(CCGShapeError, match=r"Give either `weight` \(C, C\) or both"):
        partner_attention(x, torch.eye(4), torch.zeros(2, 4), torch.zeros(2, 4))


def test_error_partner_no_weight():
    with pytest.raises(CCGShapeError, match=r"Give either .* got weight=None, weight_u=None"):
        partner_attention(torch.zeros(3, 4, 2, 2))


def test_error_partner_half_low_rank():
    with pytest.raises(CCGShapeError, match=r"weight_u=set, weight_v=None"):
        partner_attention(torch.zeros(3, 4, 2, 2), None, torch.zeros(2, 4))


def test_error_partner_heads_with_full_weight():
    with pytest.raises(CCGValueRangeError, match=r"`heads` must be 1 with a full `weight`, got 2"):
        partner_attention(torch.zeros(3, 4, 2, 2), torch.eye(4), heads=2)


def test_error_partner_x_wrong_rank():
    with pytest.raises(CCGShapeError, match=r"`x` must have 4 dimensions \(B, C, H, W\)"):
        partner_attention(torch.zeros(4, 2, 2), torch.eye(4))


@pytest.mark.parametrize("bad", ["fu", "fv"])
def test_error_non_finite_features(bad):
    fu, fv = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 2)
    (fu if bad == "fu" else fv)[1, 2, 0, 1] = float("nan")
    msg = rf"`{bad}` must be finite, got NaN or infinite values"
    with pytest.raises(CCGValueRangeError, match=msg):
        cross_image_attention(fu, fv, torch.eye(4))
    with pytest.raises(CCGValueRangeError, match=msg):
        multi_head_cross_image_attention(fu, fv, torch.eye(4), torch.eye(4), heads=2)


def test_error_non_finite_x_in_partner_attention():
    x = torch.randn(3, 4, 2, 2)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(CCGValueRangeError, match=r"`x` must be finite, got NaN or infinite"):
        partner_attention(x, torch.eye(4))


def test_non_finite_features_pass_through_with_value_checks_off():
    import ccg_layers

    fu, fv = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    fu[0, 0, 0, 0] = float("nan")
    with ccg_layers.set_value_checks(False):
        out, _ = cross_image_attention(fu, fv, torch.eye(4))
    assert out.isnan().any()


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


def test_error_heads_not_dividing_channels_module():
    with pytest.raises(CCGShapeError, match=r"`heads`=3 must divide `channels`, got channels=8"):
        CrossImageAttention(8, heads=3)


def test_error_heads_not_dividing_qk_channels_module():
    with pytest.raises(CCGShapeError, match=r"must divide `qk_channels`, got qk_channels=5"):
        CrossImageAttention(8, qk_channels=5, heads=2)


@pytest.mark.parametrize("qk_channels", [0, 2.0, True, "8"])
def test_error_bad_qk_channels(qk_channels):
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`qk_channels` must be None or a positive int, got {re.escape(repr(qk_channels))}",
    ):
        CrossImageAttention(8, qk_channels=qk_channels)


def test_qk_channels_may_be_a_numpy_int():
    layer = CrossImageAttention(8, qk_channels=np.int64(4), heads=2)
    assert layer.qk_channels == 4
    assert type(layer.qk_channels) is int


def test_error_bad_mode():
    with pytest.raises(
        CCGValueRangeError, match=r"`mode` must be one of 'pair', 'residual', got 'x'"
    ):
        CrossImageAttention(8, mode="x")


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0, 0.0, "1", True])
def test_error_bad_scale_module(scale):
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`scale` must be None or a positive finite number, got {scale!r}",
    ):
        CrossImageAttention(8, scale=scale)


@pytest.mark.parametrize("gate_init", [float("inf"), float("nan"), "0", True, None])
def test_error_bad_gate_init(gate_init):
    with pytest.raises(
        CCGValueRangeError, match=rf"`gate_init` must be a finite number, got {gate_init!r}"
    ):
        CrossImageAttention(8, mode="residual", gate_init=gate_init)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32"])
def test_error_bad_dtype_module(dtype):
    with pytest.raises(
        CCGDTypeError, match=rf"`dtype` must be a floating torch.dtype or None, got {dtype!r}"
    ):
        CrossImageAttention(8, dtype=dtype)


@pytest.mark.parametrize("mode", ["pair", "residual"])
@pytest.mark.parametrize("low_rank", [False, True])
def test_error_input_dtype_is_not_the_layers(mode, low_rank):
    """The module names its forward's argument and its own dtype, not the function's `weight`."""
    kwargs = {"qk_channels": 4, "heads": 2} if low_rank else {}
    layer = CrossImageAttention(8, mode=mode, **kwargs)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    name = "fu" if mode == "pair" else "x"
    with pytest.raises(
        CCGDTypeError,
        match=rf"`{name}` must have the layer's dtype torch.float32 \(outside autocast\), "
        r"got torch.float64",
    ):
        layer(x, x) if mode == "pair" else layer(x)


def test_error_pair_second_input_dtype_is_not_the_layers():
    layer = CrossImageAttention(8, dtype=torch.float64)
    fu = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    with pytest.raises(
        CCGDTypeError, match=r"`fv` must have the layer's dtype torch.float64 .* got torch.float32"
    ):
        layer(fu, fu.float())


def test_error_bad_fused_module():
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
    import ccg_layers.attention as fa

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


# --------------------------------------------------------------------------- empty grids, NumPy


@pytest.mark.parametrize("which", ["fu", "fv"])
@pytest.mark.parametrize("empty", [lambda t: t[:, :, :0], lambda t: t[..., :0]])
def test_error_empty_grid(which, empty):
    fu, fv, w = _ok()
    fu, fv = (empty(fu), fv) if which == "fu" else (fu, empty(fv))
    grid = "Hu, Wu" if which == "fu" else "Hv, Wv"
    shape = tuple((fu if which == "fu" else fv).shape)
    with pytest.raises(
        CCGShapeError,
        match=rf"`{which}` must have at least one cell \({grid} >= 1\), got shape "
        + re.escape(str(shape)),
    ):
        cross_image_attention(fu, fv, w)


def test_error_empty_grid_multi_head():
    fu, fv, _ = _ok()
    with pytest.raises(
        CCGShapeError, match=r"`fv` must have at least one cell \(Hv, Wv >= 1\), got shape"
    ):
        multi_head_cross_image_attention(
            fu, fv[..., :0], torch.zeros(4, 4), torch.zeros(4, 4), heads=2
        )


@pytest.mark.parametrize("batch", [1, 2])
def test_error_empty_grid_partner_attention(batch):
    x = torch.zeros(batch, 4, 0, 3)
    with pytest.raises(
        CCGShapeError,
        match=rf"`x` must have at least one cell \(H, W >= 1\), got shape \({batch}, 4, 0, 3\)",
    ):
        partner_attention(x, torch.eye(4))


@pytest.mark.parametrize("batch", [1, 2])
def test_error_empty_grid_residual_module(batch):
    layer = CrossImageAttention(4, mode="residual", gate_init=0.5)
    with pytest.raises(
        CCGShapeError, match=r"`x` must have at least one cell \(H, W >= 1\), got shape"
    ):
        layer(torch.zeros(batch, 4, 3, 0))


def test_error_empty_grid_pair_module():
    with pytest.raises(
        CCGShapeError, match=r"`fu` must have at least one cell \(Hu, Wu >= 1\), got shape"
    ):
        CrossImageAttention(4)(torch.zeros(2, 4, 0, 3), torch.zeros(2, 4, 3, 3))


def test_numpy_scale_and_heads_in_the_functions():
    fu, fv = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 5)
    w = torch.randn(4, 4)
    for got, want in zip(
        cross_image_attention(fu, fv, w, scale=np.float32(0.5)),
        cross_image_attention(fu, fv, w, scale=0.5),
        strict=True,
    ):
        torch.testing.assert_close(got, want)
    wu, wv = torch.randn(4, 4), torch.randn(4, 4)
    for got, want in zip(
        multi_head_cross_image_attention(fu, fv, wu, wv, heads=np.int64(2), scale=np.float64(0.5)),
        multi_head_cross_image_attention(fu, fv, wu, wv, heads=2, scale=0.5),
        strict=True,
    ):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        partner_attention(fu, None, wu, wv, heads=np.int64(2), scale=np.float32(0.5)),
        partner_attention(fu, None, wu, wv, heads=2, scale=0.5),
    )


def test_error_numpy_nan_scale():
    fu, fv, w = _ok()
    with pytest.raises(CCGValueRangeError, match=r"`scale` must be a finite real number, got"):
        cross_image_attention(fu, fv, w, scale=np.float32("nan"))


def test_numpy_sizes_in_the_module():
    layer = CrossImageAttention(np.int64(8), qk_channels=np.int64(4), heads=np.int64(2))
    assert (layer.channels, layer.qk_channels, layer.heads) == (8, 4, 2)
    assert all(type(v) is int for v in (layer.channels, layer.qk_channels, layer.heads))
    fu_att, fv_att = layer(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 2, 2))
    assert (fu_att.shape, fv_att.shape) == ((2, 8, 2, 2), (2, 8, 3, 3))
    assert CrossImageAttention(np.int32(8)).weight.shape == (8, 8)


def test_error_numpy_float_channels():
    with pytest.raises(CCGValueRangeError, match=r"`channels` must be a positive int, got"):
        CrossImageAttention(np.float64(8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["pair", "residual"])
def test_half_precision_low_rank_layer_is_the_float32_layer_cast(dtype, mode):
    torch.manual_seed(0)
    want = CrossImageAttention(8, qk_channels=4, heads=2, mode=mode)
    torch.manual_seed(0)
    got = CrossImageAttention(8, qk_channels=4, heads=2, mode=mode, dtype=dtype)
    for name, p in got.named_parameters():
        assert p.dtype == dtype
        torch.testing.assert_close(p, getattr(want, name).to(dtype), rtol=0, atol=0)
    assert torch.equal(got.weight_u, got.weight_v)
    full = CrossImageAttention(8, dtype=dtype)
    assert torch.equal(full.weight, torch.eye(8, dtype=dtype))
