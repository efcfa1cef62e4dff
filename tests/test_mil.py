"""The multiple-instance grid loss (Eq. 1-3): log_noisy_or and mil_grid_loss against float64\nreferences written from the equations, and the MILGridLoss module (it equals the function,\ncompiles and validates once).\n"""

from __future__ import annotations

import math
import re

import hypothesis.strategies as st
import mpmath
import pytest
import torch
from hypothesis import given

from ccg_layers import MILGridLoss, set_value_checks
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import boxes_to_grid, log_noisy_or, mil_grid_loss, xywh_to_xyxy


def ref_mil_grid_loss(logits, labels, grid, box_mask, box_weight=4.0, reduction="mean", floor=None):
    """Loop over images, classes and cells, straight from Eq. 1-3.

    Probabilities are formed explicitly, as in the paper, in 60-digit arithmetic (mpmath) so
    that the reference itself does not lose the digits that the log-space implementation keeps.
    """
    N, K, H, W = logits.shape
    out = torch.zeros(N, K, dtype=torch.float64)
    with mpmath.workdps(60):
        for i in range(N):
            for k in range(K):
                z = [mpmath.mpf(float(logits[i, k, r, c])) for r in range(H) for c in range(W)]
                p = [1 / (1 + mpmath.exp(-zj)) for zj in z]
                if box_mask is not None and bool(box_mask[i, k]):
                    t = [float(grid[i, k, r, c]) for r in range(H) for c in range(W)]
                    bce = sum(
                        -(tj * mpmath.log(pj) + (1 - tj) * mpmath.log(1 - pj))
                        for tj, pj in zip(t, p, strict=True)
                    )
                    out[i, k] = float(box_weight * bce)
                else:
                    prod = mpmath.mpf(1)
                    for pj in p:
                        q = 1 - pj
                        if floor is not None:
                            q = floor + (1 - mpmath.mpf(floor)) * q
                        prod *= q
                    y = float(labels[i, k])
                    out[i, k] = float(-(y * mpmath.log(1 - prod) + (1 - y) * mpmath.log(prod)))
    if reduction == "none":
        return out
    if reduction == "sum":
        return out.sum()
    return out.sum() / (N * K)


def ref_boxes_to_grid(boxes, image_size, grid_size):
    H, W = image_size
    h, w = grid_size
    out = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for m, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        for r in range(h):
            for c in range(w):
                cx1, cx2 = c * W / w, (c + 1) * W / w
                cy1, cy2 = r * H / h, (r + 1) * H / h
                ox = min(x2, cx2) - max(x1, cx1)
                oy = min(y2, cy2) - max(y1, cy1)
                out[m, r, c] = ox > 0 and oy > 0
    return out


# --------------------------------------------------------------------------- strategies


@st.composite
def mil_inputs(draw, max_n=3, max_k=3, max_hw=5, logit_range=6.0):
    N = draw(st.integers(1, max_n))
    K = draw(st.integers(1, max_k))
    H = draw(st.integers(1, max_hw))
    W = draw(st.integers(1, max_hw))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = (torch.rand(N, K, H, W, generator=g, dtype=torch.float64) * 2 - 1) * logit_range
    labels = torch.randint(0, 2, (N, K), generator=g).double()
    box_mask = (torch.rand(N, K, generator=g) < 0.5) & (labels == 1)
    grid = torch.randint(0, 2, (N, K, H, W), generator=g).double()
    # a box marks at least one cell (an all-zero target under box_mask is an error)
    cell = torch.randint(0, H * W, (N, K, 1), generator=g)
    grid.view(N, K, H * W).scatter_add_(-1, cell, box_mask.double().unsqueeze(-1))
    grid.clamp_(max=1.0)
    return logits, labels, grid, box_mask


# --------------------------------------------------------------------------- mil_grid_loss


@given(mil_inputs(), st.sampled_from(["none", "mean", "sum"]), st.sampled_from([4.0, 1.0, 0.0]))
def test_matches_reference_with_boxes(inputs, reduction, box_weight):
    logits, labels, grid, box_mask = inputs
    got = mil_grid_loss(logits, labels, grid, box_mask, box_weight=box_weight, reduction=reduction)
    want = ref_mil_grid_loss(logits, labels, grid, box_mask, box_weight, reduction)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@given(mil_inputs(), st.sampled_from(["none", "mean", "sum"]))
def test_matches_reference_without_boxes(inputs, reduction):
    logits, labels, _, _ = inputs
    got = mil_grid_loss(logits, labels, reduction=reduction)
    want = ref_mil_grid_loss(logits, labels, None, None, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@given(mil_inputs(logit_range=30.0), st.sampled_from([0.98, 0.5, 0.3, 1e-6, 0.0]))
def test_noisy_or_floor_matches_reference(inputs, floor):
    logits, labels, grid, box_mask = inputs
    got = mil_grid_loss(logits, labels, grid, box_mask, reduction="none", noisy_or_floor=floor)
    want = ref_mil_grid_loss(logits, labels, grid, box_mask, reduction="none", floor=floor)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("floor", [0.98, 0.3])
def test_noisy_or_floor_is_exact_just_above_the_softplus_threshold(floor):
    # F.softplus returns z itself above 20, dropping e^-20 ~ 2e-9: the floor term must not.
    logits = torch.tensor([[[[20.0006, -3.0], [25.0, 19.99]]]], dtype=torch.float64)
    labels = torch.tensor([[0.0]], dtype=torch.float64)
    got = mil_grid_loss(logits, labels, reduction="none", noisy_or_floor=floor)
    want = ref_mil_grid_loss(logits, labels, None, None, reduction="none", floor=floor)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_li_et_al_floor_keeps_image_probability_away_from_one():
    # 256 cells at p = 0.9: without the floor P(neg) = 0.1^256 underflows; with it, it is 0.98^...
    logits = torch.full((1, 1, 16, 16), math.log(9.0), dtype=torch.float64)
    _, log_neg = log_noisy_or(logits, noisy_or_floor=0.98)
    torch.testing.assert_close(log_neg, torch.tensor([[256 * math.log(1 - 0.02 * 0.9)]]).double())


@given(mil_inputs(max_hw=3))
def test_sum_is_mean_times_count_and_none_sums_to_sum(inputs):
    logits, labels, grid, box_mask = inputs
    none = mil_grid_loss(logits, labels, grid, box_mask, reduction="none")
    total = mil_grid_loss(logits, labels, grid, box_mask, reduction="sum")
    mean = mil_grid_loss(logits, labels, grid, box_mask, reduction="mean")
    torch.testing.assert_close(none.sum(), total)
    torch.testing.assert_close(mean * none.numel(), total)
    assert bool((none >= 0).all())


def test_one_cell_grid_is_plain_bce_on_the_image_label():
    logits = torch.randn(4, 5, 1, 1, dtype=torch.float64) * 5
    labels = torch.randint(0, 2, (4, 5)).double()
    got = mil_grid_loss(logits, labels, reduction="none")
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[..., 0, 0], labels, reduction="none"
    )
    torch.testing.assert_close(got, want)


def test_box_term_is_weighted_summed_bce():
    logits = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    grid = torch.randint(0, 2, (1, 1, 3, 3)).double()
    got = mil_grid_loss(
        logits, torch.ones(1, 1), grid, torch.ones(1, 1, dtype=torch.bool), reduction="sum"
    )
    want = 4.0 * torch.nn.functional.binary_cross_entropy_with_logits(logits, grid, reduction="sum")
    torch.testing.assert_close(got, want)


def test_gradcheck_float64():
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    box_mask = torch.tensor([[True, False, False], [False, True, False]])
    grid = torch.randint(0, 2, (2, 3, 3, 4)).double()
    assert torch.autograd.gradcheck(
        lambda z: mil_grid_loss(z, labels, grid, box_mask, reduction="none"), (logits,)
    )
    for floor in (0.98, 0.3):  # both forms of the floor term
        assert torch.autograd.gradcheck(
            lambda z, f=floor: mil_grid_loss(z, labels, reduction="sum", noisy_or_floor=f),
            (logits,),
        )


@pytest.mark.parametrize("tiny", [1e-5, 1e-3, 0.5, 0.9, 5.0])
def test_gradcheck_across_the_three_log1mexp_branches(tiny):
    # logits chosen so that s = sum softplus(z) lands in each branch of the stable log(1 - e^-s)
    z0 = math.log(math.expm1(tiny / 4))
    logits = torch.full((1, 1, 2, 2), z0, dtype=torch.float64, requires_grad=True)
    labels = torch.ones(1, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: mil_grid_loss(z, labels, reduction="sum"), (logits,))
    want = ref_mil_grid_loss(logits.detach(), labels, None, None, reduction="sum")
    torch.testing.assert_close(mil_grid_loss(logits, labels, reduction="sum").detach(), want)


@pytest.mark.parametrize("hw", [1, 16, 64])
@pytest.mark.parametrize("value", [-100.0, -30.0, 0.0, 30.0, 100.0])
@pytest.mark.parametrize("floor", [None, 0.98])
def test_extreme_logits_are_finite_in_float32(hw, value, floor):
    logits = torch.full((2, 2, hw, hw), value, requires_grad=True)
    logits.data[1, 1] = -value  # mix the two extremes in one batch
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    box_mask = torch.tensor([[True, False], [False, False]])
    grid = torch.zeros(2, 2, hw, hw)
    grid[0, 0, : hw // 2 + 1] = 1
    loss = mil_grid_loss(logits, labels, grid, box_mask, noisy_or_floor=floor)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_tiny_probabilities_do_not_underflow_to_infinite_loss():
    # every p_j = sigmoid(-100) ~ 4e-44: log P(positive) ~ log(4096) - 100, not log(0)
    logits = torch.full((1, 1, 64, 64), -100.0)
    loss = mil_grid_loss(logits, torch.ones(1, 1), reduction="sum")
    torch.testing.assert_close(loss, torch.tensor(100.0 - math.log(64 * 64)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [-100.0, 0.0, 100.0])
def test_autocast_half_precision_is_finite_and_float32(dtype, value):
    logits = torch.full((2, 3, 64, 64), value, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    box_mask = torch.tensor([[True, False, False], [False, False, False]])
    grid = torch.zeros(2, 3, 64, 64)
    grid[0, 0, :10, :10] = 1
    with torch.autocast("cpu", dtype=dtype):
        scores = logits.to(dtype) * 1.0
        loss = mil_grid_loss(scores, labels, grid, box_mask)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    want = mil_grid_loss(logits.detach().to(dtype).float(), labels, grid, box_mask)
    torch.testing.assert_close(loss.detach(), want)


def test_labels_may_be_bool_or_int():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 2, (2, 3))
    want = mil_grid_loss(logits, labels.float())
    torch.testing.assert_close(mil_grid_loss(logits, labels), want)
    torch.testing.assert_close(mil_grid_loss(logits, labels.bool()), want)


# --------------------------------------------------------------------------- bad input


def _ok():
    logits = torch.zeros(2, 3, 4, 4)
    labels = torch.ones(2, 3)
    grid = torch.zeros(2, 3, 4, 4)
    box_mask = torch.zeros(2, 3, dtype=torch.bool)
    return logits, labels, grid, box_mask


def test_error_logits_wrong_rank():
    _, labels, _, _ = _ok()
    with pytest.raises(
        CCGShapeError,
        match=r"`logits` must have 4 dimensions \(N, K, H, W\), got shape \(2, 3, 16\)",
    ):
        mil_grid_loss(torch.zeros(2, 3, 16), labels)


def test_error_labels_mismatched_n():
    logits, _, _, _ = _ok()
    with pytest.raises(
        CCGShapeError, match=r"`labels` must have shape \(N, K\) with N=2 .* got shape \(3, 3\)"
    ):
        mil_grid_loss(logits, torch.ones(3, 3))


def test_error_labels_mismatched_k():
    logits, _, _, _ = _ok()
    with pytest.raises(CCGShapeError, match=r"`labels` .* K=3 .* got shape \(2, 4\)"):
        mil_grid_loss(logits, torch.ones(2, 4))


@pytest.mark.parametrize(("shape", "sym"), [((2, 3, 5, 4), "H=4"), ((2, 3, 4, 5), "W=4")])
def test_error_grid_targets_mismatched_hw(shape, sym):
    logits, labels, _, box_mask = _ok()
    with pytest.raises(CCGShapeError, match=rf"`grid_targets` .* {sym} .*"):
        mil_grid_loss(logits, labels, torch.zeros(shape), box_mask)


def test_error_box_mask_mismatched():
    logits, labels, grid, _ = _ok()
    with pytest.raises(CCGShapeError, match=r"`box_mask` .* got shape \(2, 2\)"):
        mil_grid_loss(logits, labels, grid, torch.zeros(2, 2, dtype=torch.bool))


def test_error_box_mask_not_bool():
    logits, labels, grid, _ = _ok()
    with pytest.raises(
        CCGDTypeError, match=r"`box_mask` must have a bool dtype, got torch.float32"
    ):
        mil_grid_loss(logits, labels, grid, torch.zeros(2, 3))


def test_error_labels_outside_01():
    logits, _, _, _ = _ok()
    labels = torch.full((2, 3), 0.5)
    with pytest.raises(
        CCGValueRangeError,
        match=r"`labels` must hold only 0 and 1, got 6 other value\(s\), e.g. 0.5",
    ):
        mil_grid_loss(logits, labels)


def test_error_grid_targets_outside_01():
    logits, labels, grid, box_mask = _ok()
    grid[0, 0, 0, 0] = 2.0
    with pytest.raises(CCGValueRangeError, match=r"`grid_targets` must hold only 0 and 1"):
        mil_grid_loss(logits, labels, grid, box_mask)


def test_error_box_mask_without_grid_targets():
    logits, labels, _, box_mask = _ok()
    with pytest.raises(CCGShapeError, match=r"`grid_targets` is required when `box_mask` is given"):
        mil_grid_loss(logits, labels, None, box_mask)


def test_error_grid_targets_without_box_mask():
    logits, labels, grid, _ = _ok()
    with pytest.raises(CCGShapeError, match=r"`box_mask` is required when `grid_targets` is given"):
        mil_grid_loss(logits, labels, grid, None)


def test_error_box_on_negative_label():
    logits, labels, grid, box_mask = _ok()
    labels[1, 2] = 0
    box_mask[1, 2] = True
    with pytest.raises(
        CCGValueRangeError, match=r"image 1, class 2 has box_mask=True but labels\[1, 2\]=0"
    ):
        mil_grid_loss(logits, labels, grid, box_mask)


def test_error_all_zero_grid_targets_under_box_mask():
    logits, labels, grid, box_mask = _ok()
    box_mask[0, 1] = box_mask[1, 2] = True
    grid[1, 2, 3, 3] = 1  # (1, 2) marks a cell; (0, 1) marks none
    with pytest.raises(
        CCGValueRangeError,
        match=r"`grid_targets` must mark at least one cell where `box_mask` is True .* image 0, "
        r"class 1 has box_mask=True but grid_targets\[0, 1\] is all zero \(1 such pair",
    ):
        mil_grid_loss(logits, labels, grid, box_mask)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("boxes", [False, True])
def test_empty_batch_gives_zero_loss_and_zero_gradient(reduction, boxes):
    logits = torch.zeros(0, 3, 4, 4, requires_grad=True)
    labels = torch.zeros(0, 3)
    extra = (torch.zeros(0, 3, 4, 4), torch.zeros(0, 3, dtype=torch.bool)) if boxes else ()
    loss = mil_grid_loss(logits, labels, *extra, reduction=reduction)
    assert loss.shape == ()
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None
    assert logits.grad.shape == (0, 3, 4, 4)
    assert mil_grid_loss(logits, labels, *extra, reduction="none").shape == (0, 3)


@pytest.mark.parametrize("reduction", ["avg", None, "MEAN"])
def test_error_bad_reduction(reduction):
    logits, labels, _, _ = _ok()
    with pytest.raises(
        CCGValueRangeError, match=r"`reduction` must be one of 'none', 'mean', 'sum', got"
    ):
        mil_grid_loss(logits, labels, reduction=reduction)


def test_error_non_finite_logits():
    logits, labels, _, _ = _ok()
    logits[0, 0, 0, 0] = float("nan")
    with pytest.raises(CCGValueRangeError, match=r"`logits` must be finite"):
        mil_grid_loss(logits, labels)


def test_error_integer_logits():
    _, labels, _, _ = _ok()
    with pytest.raises(CCGDTypeError, match=r"`logits` must have a float dtype, got torch.int64"):
        mil_grid_loss(torch.zeros(2, 3, 4, 4, dtype=torch.long), labels)


def test_error_logits_not_a_tensor():
    _, labels, _, _ = _ok()
    with pytest.raises(CCGDTypeError, match=r"`logits` must be a torch.Tensor, got list"):
        mil_grid_loss([[0.0]], labels)


@pytest.mark.parametrize("floor", [1.0, -0.1])
def test_error_bad_floor(floor):
    logits, labels, _, _ = _ok()
    with pytest.raises(
        CCGValueRangeError, match=r"`noisy_or_floor` must be None or a number in \[0, 1\)"
    ):
        mil_grid_loss(logits, labels, noisy_or_floor=floor)


@pytest.mark.parametrize("floor", ["x", float("nan"), True])
def test_error_floor_not_a_number(floor):
    logits, labels, _, _ = _ok()
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`noisy_or_floor` must be None or a number in \[0, 1\), got {floor!r}",
    ):
        mil_grid_loss(logits, labels, noisy_or_floor=floor)


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (2, 3, 4, 0)])
def test_error_empty_grid(shape):
    _, labels, _, _ = _ok()
    with pytest.raises(
        CCGShapeError,
        match=r"`logits` must have at least one cell \(H, W >= 1\), got shape "
        + re.escape(str(shape)),
    ):
        mil_grid_loss(torch.zeros(shape), labels)


# --------------------------------------------------------------------------- log_noisy_or errors


def test_log_noisy_or_error_not_a_tensor():
    with pytest.raises(CCGDTypeError, match=r"`logits` must be a torch.Tensor, got list"):
        log_noisy_or([[0.0, 1.0]])


def test_log_noisy_or_error_one_dimension():
    with pytest.raises(
        CCGShapeError,
        match=r"`logits` must have at least 2 dimensions \(\.\.\., H, W\), got shape \(3,\)",
    ):
        log_noisy_or(torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.long, torch.bool])
def test_log_noisy_or_error_non_float(dtype):
    with pytest.raises(CCGDTypeError, match=rf"`logits` must have a float dtype, got {dtype}"):
        log_noisy_or(torch.zeros(1, 2, 2, dtype=dtype))


@pytest.mark.parametrize("floor", ["0.9", 1.5, -0.5, 1.0, float("nan"), True])
def test_log_noisy_or_error_bad_floor(floor):
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`noisy_or_floor` must be None or a number in \[0, 1\), got {re.escape(repr(floor))}",
    ):
        log_noisy_or(torch.zeros(1, 2, 2), noisy_or_floor=floor)


@pytest.mark.parametrize("shape", [(1, 0, 0), (1, 0, 3), (1, 3, 0)])
def test_log_noisy_or_error_empty_grid(shape):
    with pytest.raises(CCGShapeError, match=r"`logits` must have at least one cell \(H, W >= 1\)"):
        log_noisy_or(torch.zeros(shape))


def test_log_noisy_or_error_non_finite_logits_only_with_value_checks():
    logits = torch.tensor([[[float("nan"), 0.0]]])
    with pytest.raises(CCGValueRangeError, match=r"`logits` must be finite, got NaN or infinite"):
        log_noisy_or(logits)
    with set_value_checks(False):
        log_noisy_or(logits)  # a value check: skipped when value checks are off


def test_log_noisy_or_empty_batch_is_fine():
    log_pos, log_neg = log_noisy_or(torch.zeros(0, 2, 2))
    assert log_pos.shape == log_neg.shape == (0,)


def test_error_negative_box_weight():
    logits, labels, _, _ = _ok()
    with pytest.raises(
        CCGValueRangeError, match=r"`box_weight` must be a non-negative number, got -1.0"
    ):
        mil_grid_loss(logits, labels, box_weight=-1.0)


# --------------------------------------------------------------------------- boxes_to_grid


@st.composite
def box_inputs(draw):
    H = draw(st.integers(1, 64))
    W = draw(st.integers(1, 64))
    h = draw(st.integers(1, 8))
    w = draw(st.integers(1, 8))
    M = draw(st.integers(0, 5))
    coords = st.floats(0, 1, allow_nan=False)
    boxes = []
    for _ in range(M):
        xa, xb = sorted(draw(st.tuples(coords, coords)))
        ya, yb = sorted(draw(st.tuples(coords, coords)))
        if draw(st.booleans()):  # snap to integer pixels so that edges hit cell borders
            boxes.append([round(xa * W), round(ya * H), round(xb * W), round(yb * H)])
        else:
            boxes.append([xa * W, ya * H, xb * W, yb * H])
    return torch.tensor(boxes, dtype=torch.float64).reshape(M, 4), (H, W), (h, w)


@given(box_inputs())
def test_boxes_to_grid_matches_reference(inputs):
    boxes, image_size, grid_size = inputs
    torch.testing.assert_close(
        boxes_to_grid(boxes, image_size, grid_size), ref_boxes_to_grid(boxes, image_size, grid_size)
    )


def test_boxes_to_grid_edge_on_cell_border_does_not_mark_neighbour():
    # 512 px, 16 cells of 32 px: a box from 32 to 64 is exactly cell 1
    grid = boxes_to_grid(torch.tensor([[32.0, 32.0, 64.0, 64.0]]), (512, 512), (16, 16))
    assert grid.sum() == 1
    assert bool(grid[0, 1, 1])


def test_boxes_to_grid_zero_area_box_marks_nothing():
    grid = boxes_to_grid(torch.tensor([[10.0, 10.0, 10.0, 50.0]]), (512, 512), (16, 16))
    assert grid.sum() == 0


def test_boxes_to_grid_non_square():
    grid = boxes_to_grid(torch.tensor([[0, 0, 10, 3]]), (6, 20), (2, 4))
    want = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    torch.testing.assert_close(grid, want)


def test_boxes_to_grid_errors():
    with pytest.raises(
        CCGShapeError, match=r"`boxes` must have 2 dimensions \(M, 4\), got shape \(4,\)"
    ):
        boxes_to_grid(torch.zeros(4), (8, 8), (2, 2))
    with pytest.raises(
        CCGShapeError, match=r"`boxes` must have shape \(M, 4\) with 4 in that position"
    ):
        boxes_to_grid(torch.zeros(2, 5), (8, 8), (2, 2))
    with pytest.raises(CCGValueRangeError, match=r"x1 <= x2 and y1 <= y2"):
        boxes_to_grid(torch.tensor([[5.0, 0.0, 1.0, 2.0]]), (8, 8), (2, 2))
    with pytest.raises(
        CCGValueRangeError,
        match=r"`grid_size` must be a positive int or two positive ints \(H, W\), got \(0, 2\)",
    ):
        boxes_to_grid(torch.zeros(1, 4), (8, 8), (0, 2))
    with pytest.raises(CCGValueRangeError, match=r"`boxes` must be finite"):
        boxes_to_grid(torch.tensor([[0.0, 0.0, float("inf"), 1.0]]), (8, 8), (2, 2))


def test_xywh_to_xyxy_roundtrip_and_error():
    xywh = torch.rand(3, 7, 4)
    xyxy = xywh_to_xyxy(xywh)
    torch.testing.assert_close(xyxy[..., 2:] - xyxy[..., :2], xywh[..., 2:])
    with pytest.raises(CCGShapeError, match=r"`boxes` must have shape \(\.\.\., 4\)"):
        xywh_to_xyxy(torch.zeros(3, 5))


def _inputs():
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    box_mask = torch.tensor([[True, False, False, False], [False, False, True, False]])
    grid = torch.zeros(2, 4, 8, 8)
    grid[0, 0, 2:5, 1:3] = 1
    grid[1, 2, 6:, 6:] = 1
    return logits, labels, grid, box_mask


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("floor", [None, 0.98])
def test_module_equals_function(reduction, floor):
    args = _inputs()
    module = MILGridLoss(box_weight=2.5, reduction=reduction, noisy_or_floor=floor)
    want = mil_grid_loss(*args, box_weight=2.5, reduction=reduction, noisy_or_floor=floor)
    torch.testing.assert_close(module(*args), want)
    torch.testing.assert_close(
        module(args[0], args[1]),
        mil_grid_loss(args[0], args[1], box_weight=2.5, reduction=reduction, noisy_or_floor=floor),
    )


def test_module_validates_its_inputs_once_with_the_functions_messages():
    logits, labels, grid, box_mask = _inputs()
    grid[0, 0] = 0  # box_mask[0, 0] is True: an all-zero target
    with pytest.raises(CCGValueRangeError, match=r"`grid_targets` must mark at least one cell"):
        MILGridLoss()(logits, labels, grid, box_mask)
    assert float(MILGridLoss()(torch.zeros(0, 4, 8, 8), torch.zeros(0, 4))) == 0.0


def test_module_repr_and_validation():
    assert "box_weight=4.0" in repr(MILGridLoss())
    with pytest.raises(CCGValueRangeError, match="`reduction` must be one of"):
        MILGridLoss(reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(CCGValueRangeError, match="`box_weight` must be a non-negative number"):
        MILGridLoss(box_weight=-1)
    with pytest.raises(CCGValueRangeError, match="`noisy_or_floor` must be None or a number in"):
        MILGridLoss(noisy_or_floor=2.0)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    args = _inputs()
    module = MILGridLoss()
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(*args), module(*args), rtol=1e-5, atol=1e-5)
    logits = args[0].clone().requires_grad_()
    compiled(logits, *args[1:]).backward()
    assert torch.isfinite(logits.grad).all()


def test_module_validates_once_at_its_boundary(monkeypatch):
    import ccg_layers.mil as mil

    calls = []
    original = mil.check_finite

    def counting(x, name):
        calls.append(name)
        original(x, name)

    monkeypatch.setattr(mil, "check_finite", counting)
    MILGridLoss()(*_inputs())
    assert calls == ["logits"]
