"""Tests of the LearnableSampleGraph and PatchHashGraph modules (paper Eq. 4-10)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from ccg_layers import LearnableSampleGraph, PatchHashGraph, all_gather_batch, superpixels
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    conditioned_sample_graph_loss,
    normalize_graph,
    paired_sample_loss,
    pairwise_distance,
    patch_hash_graph_loss,
    sample_graph_loss,
)
from tests.functional.test_graphs import (
    ref_conditioned_graph,
    ref_memory_loss,
    ref_patch_hash_graph_loss,
    ref_sample_graph_loss,
)

# --------------------------------------------------------------------------- LearnableSampleGraph


def test_initial_graph_is_one_over_n_for_both_parametrisations():
    for parametrization in ("softmax", "free"):
        module = LearnableSampleGraph(5, form="positional", parametrization=parametrization)
        torch.testing.assert_close(module.graph(), torch.full((5, 5), 0.2))


def test_initial_loss_is_literal_eq4_with_uniform_graph():
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    module = LearnableSampleGraph(4, form="positional", dtype=torch.float64)
    want = ref_sample_graph_loss(x, torch.full((4, 4), 0.25, dtype=torch.float64))
    torch.testing.assert_close(module(x), want)
    literal = LearnableSampleGraph(
        4, form="positional", parametrization="free", dtype=torch.float64
    )
    torch.testing.assert_close(literal(x), want)


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_module_equals_function_for_every_batch_size(n, seed):
    g = torch.Generator().manual_seed(seed)
    module = LearnableSampleGraph(6, form="positional", dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.randn(6, 6, generator=g, dtype=torch.float64))
    x = torch.randn(n, 4, 2, 2, generator=g, dtype=torch.float64)
    want = sample_graph_loss(x, normalize_graph(module.weight[:n, :n]))
    torch.testing.assert_close(module(x), want)
    assert float(module(x).detach()) >= 0.0


def test_one_sample_gives_zero_not_nan_with_finite_grads():
    module = LearnableSampleGraph(4, form="positional")
    x = torch.randn(1, 8, 2, 2, requires_grad=True)
    loss = module(x)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert bool(torch.isfinite(x.grad).all())
    assert torch.equal(module.weight.grad, torch.zeros(4, 4))  # used (DDP), zero gradient


def test_default_training_stays_non_negative_and_never_collapses_onto_self_pairs():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    module = LearnableSampleGraph(6, form="positional")
    opt = torch.optim.SGD(module.parameters(), lr=50.0)
    for _ in range(200):
        opt.zero_grad()
        loss = module(x)
        loss.backward()
        opt.step()
    g = module.graph().detach()
    assert float(loss.detach()) > 0.0
    torch.testing.assert_close(g.diagonal(), torch.full((6,), 1 / 6))
    torch.testing.assert_close(g.sum(1), torch.ones(6))
    # weight moves to the nearest partner: the loss tends to sum_u (n-1)/n * min_v D(u, v) / n^2
    d = torch.cdist(x, x) + torch.eye(6) * 1e9
    floor = (5 / 6) * d.min(1).values.sum() / 36
    assert float(loss.detach()) < 1.05 * float(floor)
    assert bool((g.argmax(1) == (-d).argmax(1)).all())


def test_free_parametrisation_is_unbounded_below():
    x = torch.randn(4, 5)
    module = LearnableSampleGraph(4, form="positional", parametrization="free")
    opt = torch.optim.SGD(module.parameters(), lr=10.0)
    for _ in range(20):
        opt.zero_grad()
        loss = module(x)
        loss.backward()
        opt.step()
    assert float(module(x).detach()) < -1.0


def test_reduction_none_returns_terms():
    module = LearnableSampleGraph(3, form="positional", reduction="none")
    x = torch.randn(3, 4)
    torch.testing.assert_close(module(x).sum() / 9, LearnableSampleGraph(3, form="positional")(x))


def test_device_and_dtype_arguments():
    module = LearnableSampleGraph(3, form="positional", device="cpu", dtype=torch.float64)
    assert module.weight.dtype == torch.float64
    assert "num_samples=3" in repr(module)


def test_all_gather_batch_without_process_group_is_identity():
    x = torch.randn(3, 2)
    assert all_gather_batch(x) is x


def test_distributed_flag_without_process_group_equals_local():
    x = torch.randn(3, 4)
    torch.testing.assert_close(
        LearnableSampleGraph(4, form="positional", distributed=True)(x),
        LearnableSampleGraph(4, form="positional")(x),
    )


def test_error_batch_larger_than_num_samples():
    with pytest.raises(
        CCGShapeError, match=r"`features` must hold 1 <= n <= num_samples=2 .* got shape \(3, 4\)"
    ):
        LearnableSampleGraph(2, form="positional")(torch.randn(3, 4))


def test_error_empty_batch():
    with pytest.raises(CCGShapeError, match=r"1 <= n <= num_samples=2 .* got shape \(0, 4\)"):
        LearnableSampleGraph(2, form="positional")(torch.randn(0, 4))


def test_error_graph_of_bad_size():
    with pytest.raises(CCGShapeError, match=r"1 <= n <= num_samples=2 samples, got n=5"):
        LearnableSampleGraph(2, form="positional").graph(5)


def test_error_num_samples_not_positive():
    with pytest.raises(CCGValueRangeError, match=r"`num_samples` must be a positive int, got 0"):
        LearnableSampleGraph(0, form="positional")


def test_error_bad_parametrization():
    with pytest.raises(CCGValueRangeError, match=r"`parametrization` must be one of .* got 'abs'"):
        LearnableSampleGraph(2, form="positional", parametrization="abs")


def test_error_bad_reduction():
    with pytest.raises(CCGValueRangeError, match=r"`reduction` must be one of .* got 'max'"):
        LearnableSampleGraph(2, form="positional", reduction="max")


# --------------------------------------------------------------------------- conditioned form


def test_conditioned_module_equals_function_and_reference():
    module = LearnableSampleGraph(in_channels=5, embed_dim=4, dtype=torch.float64)
    with torch.no_grad():
        module.weight.normal_()
    x = torch.randn(4, 5, 2, 2, dtype=torch.float64)
    want = conditioned_sample_graph_loss(x, module.weight, module.projection)
    torch.testing.assert_close(module(x), want)
    graph = ref_conditioned_graph(x, module.weight.detach(), module.projection)
    torch.testing.assert_close(module.graph(x), graph)
    torch.testing.assert_close(module(x).detach(), ref_memory_loss(x, graph))


def test_conditioned_training_stays_non_negative_and_never_collapses_onto_self_pairs():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 2, 2)
    module = LearnableSampleGraph(in_channels=5, embed_dim=8)
    opt = torch.optim.SGD(module.parameters(), lr=50.0)
    first = float(module(x).detach())
    for _ in range(100):
        opt.zero_grad()
        loss = module(x)
        loss.backward()
        opt.step()
    g = module.graph(x).detach()
    assert 0.0 < float(loss.detach()) < 0.9 * first
    torch.testing.assert_close(g.diagonal(), torch.full((6,), 1 / 6))
    torch.testing.assert_close(g.sum(1), torch.ones(6))


def test_conditioned_form_takes_any_batch_size_and_one_image_gives_zero():
    module = LearnableSampleGraph(in_channels=3)
    assert module(torch.randn(9, 3)).shape == ()
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = module(x)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert bool(torch.isfinite(x.grad).all())


def test_conditioned_num_samples_bounds_the_batch():
    with pytest.raises(CCGShapeError, match=r"1 <= n <= num_samples=2 .* got shape \(3, 4\)"):
        LearnableSampleGraph(2, in_channels=4)(torch.randn(3, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conditioned_under_autocast_is_float32_and_finite(dtype):
    module = LearnableSampleGraph(in_channels=6, memory_size=3)
    with torch.no_grad():
        module.weight.normal_()
    feats = torch.randn(2, 6, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        module(torch.randn(2, 6, 4, 4).to(dtype))  # the first enqueue sets the stored dtype
        loss = module(feats.to(dtype) * 1.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert bool(torch.isfinite(feats.grad).all())
    assert bool(torch.isfinite(module.weight.grad).all())
    assert module.memory_features.dtype == dtype  # stored as the features came


def test_conditioned_distributed_flag_without_process_group_equals_local():
    x = torch.randn(3, 4)
    a = LearnableSampleGraph(in_channels=4, distributed=True, memory_size=2)
    b = LearnableSampleGraph(in_channels=4, memory_size=2)
    torch.testing.assert_close(a(x), b(x))
    assert torch.equal(a.memory_features, b.memory_features)


def test_conditioned_device_dtype_and_repr():
    module = LearnableSampleGraph(in_channels=3, embed_dim=5, device="cpu", dtype=torch.float64)
    assert module.weight.shape == (5, 5)
    assert module.weight.dtype == module.projection.dtype == torch.float64
    assert "form='conditioned'" in repr(module)
    assert [name for name, _ in module.named_parameters()] == ["weight"]
    assert list(module.state_dict()) == ["weight", "projection"]  # no memory buffers at K=0


# --------------------------------------------------------------------------- PatchHashGraph


def _labels(n, m=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return superpixels(torch.rand(n, size, size, generator=g), m)


def test_patch_hash_graph_equals_function_and_reference():
    module = PatchHashGraph(8, 6, code_bits=16, dtype=torch.float64)
    with torch.no_grad():
        module.weight.normal_()
    x = torch.randn(4, 6, 4, 4, dtype=torch.float64)
    labels = _labels(4)
    got = module(x, labels)
    want = patch_hash_graph_loss(x, labels, module.projection, module.weight)
    torch.testing.assert_close(got, want)
    ref = ref_patch_hash_graph_loss(
        x, labels, module.projection, module.weight.detach(), torch.tensor(0.3).double()
    )
    torch.testing.assert_close(got.detach(), ref)


def test_patch_hash_graph_initial_graph_is_uniform():
    # W_l = 0: every pair weight is 1/n, i.e. L_IK starts as Eq. 4 with G = 1/n
    x, labels = torch.randn(4, 6, 4, 4), _labels(4)
    got = PatchHashGraph(8, 6)(x, labels)
    torch.testing.assert_close(got, sample_graph_loss(x, torch.full((4, 4), 0.25)))


def test_patch_hash_graph_pairs_of_attended_maps():
    # Eq. 8-10: the attended maps F'_u, F'_v of P explicit pairs, each (P, C, h, w)
    P, C = 3, 16
    fa = torch.randn(P, C, 16, 16, requires_grad=True)
    fb = torch.randn(P, C, 16, 16, requires_grad=True)
    labels = _labels(4, m=16, size=64)
    la, lb = labels[:P], labels[1:]
    module = PatchHashGraph(16, C, code_bits=32)
    with torch.no_grad():
        module.weight.normal_()
    loss = module(fa, la, fb, lb)
    loss.backward()
    assert loss.shape == ()
    assert float(loss.detach()) >= 0.0
    assert module.bias is None  # a softmax does not see a shift: no dead bias
    for t in (fa.grad, fb.grad, module.weight.grad):
        assert t is not None
        assert bool(torch.isfinite(t).all())
    want = patch_hash_graph_loss(
        fa, la, module.projection, module.weight, features_b=fb, labels_b=lb
    )
    torch.testing.assert_close(loss, want)


def test_patch_hash_graph_hash_input_image():
    images = torch.rand(3, 1, 64, 64)
    labels = superpixels(images, 16)
    module = PatchHashGraph(16, 1, code_bits=8)
    feats = torch.randn(3, 4, 16, 16)
    got = module(feats, labels, hash_input=images)
    want = patch_hash_graph_loss(feats, labels, module.projection, module.weight, hash_input=images)
    torch.testing.assert_close(got, want)


def test_patch_hash_graph_projection_is_a_seeded_buffer():
    a, b = PatchHashGraph(4, 5, seed=3), PatchHashGraph(4, 5, seed=3)
    assert torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, PatchHashGraph(4, 5, seed=4).projection)
    assert "projection" in a.state_dict()
    assert [name for name, _ in a.named_parameters()] == ["weight"]
    free = PatchHashGraph(4, 5, parametrization="free")  # the literal Eq. 6 keeps its bias
    assert [name for name, _ in free.named_parameters()] == ["weight", "bias"]
    assert "code_bits=64" in repr(a)


def test_patch_hash_graph_training_stays_non_negative():
    x, labels = torch.randn(5, 6, 4, 4), _labels(5)
    module = PatchHashGraph(8, 6, code_bits=16)
    opt = torch.optim.SGD(module.parameters(), lr=10.0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = module(x, labels)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses) >= 0.0
    assert losses[-1] < losses[0]  # W_l learns to weight the closer pairs


def test_patch_hash_graph_one_image_is_zero():
    assert float(PatchHashGraph(8, 6)(torch.randn(1, 6, 4, 4), _labels(1)).detach()) == 0.0


def test_error_patch_hash_graph_labels_out_of_range():
    with pytest.raises(
        CCGValueRangeError, match=r"`labels` must hold indices in \[0, 4\), got values in \[0, 7\]"
    ):
        PatchHashGraph(4, 6)(torch.randn(2, 6, 4, 4), _labels(2))


def test_error_patch_hash_graph_wrong_channels():
    with pytest.raises(
        CCGShapeError,
        match=r"`features` must have in_channels=6 channels .* got shape \(2, 3, 4, 4\)",
    ):
        PatchHashGraph(8, 6)(torch.randn(2, 3, 4, 4), _labels(2))


def test_error_patch_hash_graph_bad_code_bits():
    with pytest.raises(CCGValueRangeError, match=r"`code_bits` must be a positive int, got 0"):
        PatchHashGraph(8, 6, code_bits=0)


def test_graphs_share_one_distance_matrix():
    # the trainer's pattern: one pairwise_distance for L_IR and L_IK
    feats, labels = torch.randn(4, 6, 4, 4), _labels(4)
    lsg, phg = LearnableSampleGraph(4, form="positional"), PatchHashGraph(8, 6)
    with torch.no_grad():
        lsg.weight.normal_()
        phg.weight.normal_()
    dist = pairwise_distance(feats)
    torch.testing.assert_close((lsg.graph(4) * dist).sum() / 16, lsg(feats))
    torch.testing.assert_close((phg.graph(feats, labels) * dist).sum() / 16, phg(feats, labels))


def test_patch_hash_graph_pair_weights_match_forward():
    fa, fb = torch.randn(3, 6, 4, 4), torch.randn(3, 6, 4, 4)
    la, lb = _labels(3), _labels(3, seed=1)
    phg = PatchHashGraph(8, 6)
    with torch.no_grad():
        phg.weight.normal_()
    w = phg.graph(fa, la, fb, lb)
    assert w.shape == (3,)
    torch.testing.assert_close(w.sum(), torch.tensor(3.0))
    torch.testing.assert_close(paired_sample_loss(fa, fb, w), phg(fa, la, fb, lb))


def test_error_patch_hash_graph_hash_input_b_without_labels_b():
    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(CCGShapeError, match=r"`labels_b` is required with `hash_input_b`"):
        PatchHashGraph(8, 6).graph(x, _labels(2), hash_input_b=x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_patch_hash_graph_under_autocast_is_float32_and_finite(dtype):
    feats = torch.randn(3, 6, 4, 4, requires_grad=True)
    labels = _labels(3)
    module = PatchHashGraph(8, 6)
    with torch.no_grad():
        module.weight.normal_()
    with torch.autocast("cpu", dtype=dtype):
        loss = module(feats.to(dtype) * 1.0, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert bool(torch.isfinite(feats.grad).all())
    assert bool(torch.isfinite(module.weight.grad).all())


@given(st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_losses_invariant_to_permuting_the_batch_with_its_graph(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64)
    logits = torch.randn(n, n, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    want = sample_graph_loss(x, normalize_graph(logits))
    got = sample_graph_loss(x[perm], normalize_graph(logits[perm][:, perm]))
    torch.testing.assert_close(got, want)
    labels = torch.randint(0, 4, (n, 6, 6), generator=g)
    proj = torch.randn(3, 8, generator=g, dtype=torch.float64)
    w, b = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.tensor(0.2).double()
    torch.testing.assert_close(
        patch_hash_graph_loss(x[perm], labels[perm], proj, w, b),
        patch_hash_graph_loss(x, labels, proj, w, b),
    )
