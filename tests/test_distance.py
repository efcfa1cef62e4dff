"""The shared distance core: pairwise_distance, sample_graph_loss and paired_sample_loss (Eq. 4, 5, and the pairs of Eq. 8-10), against float64 loop references."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

import ccg_layers
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    paired_sample_loss,
    pairwise_distance,
    sample_graph_loss,
)
from tests.graph_references import (
    batches,
    gen,
    ref_distance,
    ref_memory_loss,
    ref_sample_graph_loss,
)


@given(batches(), st.sampled_from(["none", "mean", "sum"]))
def test_sample_graph_loss_matches_reference(batch, reduction):
    x, graph = batch
    got = sample_graph_loss(x, graph, reduction=reduction)
    want = ref_sample_graph_loss(x, graph, reduction)
    # Gram-form error: about sqrt(eps) * |x| per distance (only visible on identical samples)
    atol = 1e-7 * float(x.flatten(1).norm(dim=1).max()) * float(graph.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-9, atol=atol)


@given(batches())
def test_pairwise_distance_symmetric_zero_diagonal_and_permutation_equivariant(batch):
    x, _ = batch
    d = pairwise_distance(x)
    assert torch.equal(d, d.T)
    assert bool((d.diagonal() == 0).all())
    assert bool((d >= 0).all())
    perm = torch.randperm(x.shape[0])
    # Gram-form error: about sqrt(eps) * |x| (only visible on identical samples)
    atol = 1e-7 * float(x.flatten(1).norm(dim=1).max())
    torch.testing.assert_close(pairwise_distance(x[perm]), d[perm][:, perm], rtol=1e-9, atol=atol)


def test_pairwise_distance_float32_close_to_float64_for_large_offset():
    # samples far from the origin but close to each other: centring keeps the digits
    x = torch.randn(6, 2048, 4, 4, dtype=torch.float64) * 0.01 + 100.0
    got = pairwise_distance(x.float()).double()
    want = pairwise_distance(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_gradient_finite_for_identical_samples_and_self_pairs():
    x = torch.randn(1, 5, dtype=torch.float64).repeat(3, 1).requires_grad_()
    loss = sample_graph_loss(x, torch.ones(3, 3, dtype=torch.float64))
    loss.backward()
    assert float(loss.detach()) < 1e-6  # Gram form: identical samples are ~0 apart
    assert bool(torch.isfinite(x.grad).all())


def test_gradcheck_sample_graph_loss():
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    graph = torch.rand(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, g: sample_graph_loss(a, g, reduction="none"), (x, graph)
    )


def test_gradient_matches_analytic_unit_vectors():
    # d/dx_u of D(x_u, x_v) is the unit vector (x_u - x_v) / D
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    graph = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    sample_graph_loss(x, graph, reduction="sum").backward()
    torch.testing.assert_close(x.grad, torch.tensor([[-0.6, -0.8], [0.6, 0.8]]).double())


def test_one_sample_gives_zero():
    loss = sample_graph_loss(torch.randn(1, 8), torch.ones(1, 1))
    assert float(loss) == 0.0


def test_constant_features_give_zero_and_finite_grad():
    x = torch.full((4, 3, 2, 2), 7.0, requires_grad=True)
    loss = sample_graph_loss(x, torch.rand(4, 4))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_gives_float32(dtype):
    x = torch.randn(4, 16, 4, 4)
    graph = torch.rand(4, 4)
    with torch.autocast("cpu", dtype=dtype):
        loss = sample_graph_loss(x.to(dtype), graph)
    assert loss.dtype == torch.float32
    want = sample_graph_loss(x.to(dtype).float(), graph)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)


@given(st.integers(1, 5), st.integers(0, 2**31 - 1), st.sampled_from(["none", "mean", "sum"]))
def test_paired_sample_loss_matches_reference(P, seed, reduction):
    g = gen(seed)
    a = torch.randn(P, 3, 2, 2, generator=g, dtype=torch.float64)
    b = torch.randn(P, 3, 2, 2, generator=g, dtype=torch.float64)
    b[0] = a[0]
    w = torch.rand(P, generator=g, dtype=torch.float64)
    terms = torch.tensor(
        [float(w[p]) * ref_distance(a[p], b[p]) for p in range(P)], dtype=torch.float64
    )
    want = {"none": terms, "sum": terms.sum(), "mean": terms.sum() / P}[reduction]
    torch.testing.assert_close(paired_sample_loss(a, b, w, reduction=reduction), want)


def test_paired_equals_diagonal_blocks_of_the_batch_form():
    x = torch.randn(4, 6, dtype=torch.float64)
    d = pairwise_distance(x)
    i, j = torch.tensor([0, 1, 3]), torch.tensor([2, 3, 1])
    got = paired_sample_loss(x[i], x[j], torch.ones(3, dtype=torch.float64), reduction="none")
    torch.testing.assert_close(got, d[i, j])


def test_gradcheck_paired_with_an_equal_pair_finite():
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, z: paired_sample_loss(x, y, z), (a, b, w))
    same = a.detach().clone().requires_grad_()
    paired_sample_loss(same, a.detach(), w.detach()).backward()
    assert bool(torch.isfinite(same.grad).all())


def test_error_sample_graph_loss_graph_wrong_size():
    with pytest.raises(
        CCGShapeError, match=r"`graph` must have shape \(n, n \+ K\) with n=3 .*\(2, 2\)"
    ):
        sample_graph_loss(torch.randn(3, 4), torch.ones(2, 2))


def test_error_sample_graph_loss_graph_not_square():
    with pytest.raises(
        CCGShapeError, match=r"`graph` must have 2 dimensions \(n, n \+ K\), got shape \(3,\)"
    ):
        sample_graph_loss(torch.randn(3, 4), torch.ones(3))


def test_error_sample_graph_loss_integer_features():
    with pytest.raises(CCGDTypeError, match=r"`features` must have a float dtype, got torch.int64"):
        sample_graph_loss(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 3))


def test_error_sample_graph_loss_scalar_features():
    with pytest.raises(CCGShapeError, match=r"`features` must have at least 1 dimension"):
        sample_graph_loss(torch.tensor(1.0), torch.ones(1, 1))


def test_error_sample_graph_loss_not_a_tensor():
    with pytest.raises(CCGDTypeError, match=r"`features` must be a torch.Tensor, got list"):
        sample_graph_loss([[1.0]], torch.ones(1, 1))


def test_error_sample_graph_loss_nan_features():
    x = torch.randn(2, 3)
    x[0, 0] = float("nan")
    with pytest.raises(CCGValueRangeError, match=r"`features` must be finite"):
        sample_graph_loss(x, torch.ones(2, 2))


def test_error_sample_graph_loss_bad_reduction():
    with pytest.raises(CCGValueRangeError, match=r"`reduction` must be one of .* got 'avg'"):
        sample_graph_loss(torch.randn(2, 3), torch.ones(2, 2), reduction="avg")


def test_error_sample_graph_loss_inf_features():
    x = torch.randn(3, 4)
    x[2, 1] = float("inf")
    with pytest.raises(CCGValueRangeError, match=r"`features` must be finite"):
        sample_graph_loss(x, torch.ones(3, 3))


def test_error_sample_graph_loss_nan_graph():
    with pytest.raises(CCGValueRangeError, match=r"`graph` must be finite"):
        sample_graph_loss(torch.randn(2, 3), torch.full((2, 2), float("nan")))


def test_error_paired_nan_features():
    b = torch.randn(2, 3)
    b[1, 0] = float("nan")
    with pytest.raises(CCGValueRangeError, match=r"`features_a` and `features_b` must be finite"):
        paired_sample_loss(torch.randn(2, 3), b, torch.ones(2))


def test_error_paired_mismatched_shapes():
    with pytest.raises(
        CCGShapeError,
        match=r"`features_b` must have the shape of `features_a` \(2, 3\), got shape \(2, 4\)",
    ):
        paired_sample_loss(torch.randn(2, 3), torch.randn(2, 4), torch.ones(2))


def test_error_paired_weights_wrong_length():
    with pytest.raises(CCGShapeError, match=r"`weights` must have shape \(P\) with P=2 .*\(3,\)"):
        paired_sample_loss(torch.randn(2, 3), torch.randn(2, 3), torch.ones(3))


def test_sample_graph_loss_with_memory_matches_reference():
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    memory = torch.randn(3, 3, 2, dtype=torch.float64)
    graph = torch.rand(2, 5, dtype=torch.float64)
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            sample_graph_loss(x, graph, memory=memory, reduction=reduction),
            ref_memory_loss(x, graph, memory, reduction),
        )


def test_error_memory_features_shape():
    with pytest.raises(
        CCGShapeError, match=r"`memory` must have shape \(K, 3, 2\) like one sample .*\(1, 3, 3\)"
    ):
        sample_graph_loss(torch.randn(2, 3, 2), torch.ones(2, 3), memory=torch.randn(1, 3, 3))


# --------------------------------------------------------------------------- validation gaps


def test_error_pairwise_distance_nan_features():
    with pytest.raises(
        CCGValueRangeError, match=r"`features` must be finite, got NaN or infinite values"
    ):
        pairwise_distance(torch.tensor([[float("nan"), 0.0], [1.0, 2.0]]))


def test_error_pairwise_distance_inf_features():
    with pytest.raises(
        CCGValueRangeError, match=r"`features` must be finite, got NaN or infinite values"
    ):
        pairwise_distance(torch.tensor([[1.0, 0.0], [float("inf"), 2.0], [0.0, 0.0]]))


def test_error_pairwise_distance_nan_lone_sample():
    """One sample has no partner to read NaN off: the rule checks its features directly."""
    with pytest.raises(CCGValueRangeError, match=r"`features` must be finite"):
        pairwise_distance(torch.tensor([[float("nan"), 0.0]]))


def test_error_pairwise_distance_overflowing_features():
    with pytest.raises(CCGValueRangeError, match=r"`features` must be finite.* overflow"):
        pairwise_distance(torch.tensor([[1e30, 0.0], [1.0, 2.0]]))


def test_pairwise_distance_nan_passes_with_value_checks_off():
    with ccg_layers.set_value_checks(False):
        assert pairwise_distance(torch.tensor([[float("nan"), 0.0], [1.0, 2.0]])).isnan().any()
