"""The sample graph of L_IR (Eq. 4): graph_embedding, conditioned_graph_logits, sample_graph, conditioned_sample_graph_loss and the LearnableSampleGraph module, against float64 loop references."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given

from ccg_layers import LearnableSampleGraph, set_value_checks
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    conditioned_graph_logits,
    conditioned_sample_graph_loss,
    graph_embedding,
    normalize_graph,
    pairwise_distance,
    sample_graph,
    sample_graph_loss,
)
from tests.graph_references import (
    C,
    gen,
    memory_batch,
    ref_memory_loss,
    ref_normalize_with_memory,
    ref_sample_graph_loss,
)
from tests.validation_counter import count_checks


def ref_embedding(features, projection):
    """Spatial mean of each channel, minus its mean over the channels, times the projection,
    scaled to unit length (loops)."""
    n, C = features.shape[:2]
    d = projection.shape[1]
    flat = features.double().reshape(n, C, -1)
    out = torch.zeros(n, d, dtype=torch.float64)
    for u in range(n):
        pooled = [sum(flat[u, c].tolist()) / flat.shape[2] for c in range(C)]
        offset = sum(pooled) / C
        pooled = [p - offset for p in pooled]
        z = [sum(pooled[c] * float(projection[c, j]) for c in range(C)) for j in range(d)]
        norm = math.sqrt(sum(t * t for t in z))
        out[u] = torch.tensor([t / max(norm, 1e-12) for t in z], dtype=torch.float64)
    return out


def ref_conditioned_graph(features, weight, projection, mem_z=None, valid=None):
    """Eq. 4's G with theta_uv = z_u^T W z_v over the batch and the memory (loops)."""
    z = ref_embedding(features, projection)
    partners = z if mem_z is None else torch.cat([z, mem_z.double()])
    n, cols = z.shape[0], partners.shape[0]
    d = z.shape[1]
    theta = torch.zeros(n, cols, dtype=torch.float64)
    for u in range(n):
        for v in range(cols):
            theta[u, v] = sum(
                float(z[u, i]) * float(weight[i, j]) * float(partners[v, j])
                for i in range(d)
                for j in range(d)
            )
    columns = [True] * cols if valid is None else [True] * n + [bool(t) for t in valid]
    return ref_normalize_with_memory(theta, columns)


@st.composite
def conditioned_inputs(draw, max_n=4, max_k=3):
    n = draw(st.integers(1, max_n))
    K = draw(st.integers(0, max_k))
    C, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    g = gen(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, C, 2, 2, generator=g, dtype=torch.float64)
    weight = torch.randn(d, d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0, 1, 5]))
    projection = torch.randn(C, d, generator=g, dtype=torch.float64)
    mem_x = torch.randn(K, C, 2, 2, generator=g, dtype=torch.float64)
    mem_z = graph_embedding(mem_x, projection) if K else torch.zeros(0, d, dtype=torch.float64)
    valid = torch.rand(K, generator=g) < 0.7
    return x, weight, projection, mem_x, mem_z, valid


@given(conditioned_inputs(), st.booleans())
def test_sample_graph_matches_loop_reference(inputs, with_memory):
    x, weight, projection, _, mem_z, valid = inputs
    if with_memory:
        got = sample_graph(x, weight, projection, memory_embeddings=mem_z, memory_valid=valid)
        want = ref_conditioned_graph(x, weight, projection, mem_z, valid)
    else:
        got = sample_graph(x, weight, projection)
        want = ref_conditioned_graph(x, weight, projection)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(1), torch.ones(x.shape[0], dtype=torch.float64))
    assert bool((got >= 0).all())


@given(conditioned_inputs(), st.sampled_from(["none", "mean", "sum"]))
def test_conditioned_sample_graph_loss_matches_loop_reference(inputs, reduction):
    x, weight, projection, mem_x, mem_z, valid = inputs
    got = conditioned_sample_graph_loss(
        x,
        weight,
        projection,
        memory_features=mem_x,
        memory_embeddings=mem_z,
        memory_valid=valid,
        reduction=reduction,
    )
    graph = ref_conditioned_graph(x, weight, projection, mem_z, valid)
    want = ref_memory_loss(x, graph, mem_x, reduction)
    torch.testing.assert_close(got, want)


@given(conditioned_inputs())
def test_conditioned_graph_is_exactly_uniform_at_zero_weight(inputs):
    x, weight, projection, _, mem_z, valid = inputs
    n, K = x.shape[0], mem_z.shape[0]
    got = sample_graph(x, weight * 0, projection, memory_embeddings=mem_z, memory_valid=valid)
    N = n + int(valid.sum())
    f64 = torch.float64
    want = torch.cat([torch.full((n, n), 1.0 / N, dtype=f64), (valid.to(f64) / N).expand(n, K)], 1)
    assert torch.equal(got, want)  # bit-exact: the paper's 1/n (1/N with the memory)


@given(conditioned_inputs(max_n=5), st.integers(0, 2**31 - 1))
def test_conditioned_graph_and_loss_follow_a_permutation_of_the_batch(inputs, seed):
    x, weight, projection, mem_x, mem_z, valid = inputs
    n, K = x.shape[0], mem_x.shape[0]
    perm = torch.randperm(n, generator=gen(seed))
    mem = {"memory_embeddings": mem_z, "memory_valid": valid}
    g = sample_graph(x, weight, projection, **mem)
    g_perm = sample_graph(x[perm], weight, projection, **mem)
    columns = torch.cat([perm, torch.arange(n, n + K)])  # batch columns move, memory stays
    torch.testing.assert_close(g_perm, g[perm][:, columns], rtol=1e-12, atol=1e-12)
    loss = conditioned_sample_graph_loss(x, weight, projection, memory_features=mem_x, **mem)
    loss_perm = conditioned_sample_graph_loss(
        x[perm], weight, projection, memory_features=mem_x, **mem
    )
    # the Gram form's rounding differs with the order of the samples
    torch.testing.assert_close(loss_perm, loss, rtol=1e-9, atol=1e-9)


def test_conditioned_loss_never_collapses_onto_self_pairs_and_stays_non_negative():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 2, 2)
    projection = torch.randn(5, 8)
    weight = torch.zeros(8, 8, requires_grad=True)
    opt = torch.optim.SGD([weight], lr=50.0)
    for _ in range(100):
        opt.zero_grad()
        loss = conditioned_sample_graph_loss(x, weight, projection)
        loss.backward()
        opt.step()
    g = sample_graph(x, weight.detach(), projection)
    assert float(loss.detach()) > 0.0
    torch.testing.assert_close(g.diagonal(), torch.full((6,), 1 / 6))
    torch.testing.assert_close(g.sum(1), torch.ones(6))
    # the weight moved towards each image's nearer partners: below the uniform graph's loss
    uniform = conditioned_sample_graph_loss(x, torch.zeros(8, 8), projection)
    assert float(loss.detach()) < 0.9 * float(uniform)


def test_gradcheck_conditioned_sample_graph_loss_with_memory():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    projection = torch.randn(3, 4, dtype=torch.float64)
    mem_x = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    mem_z = graph_embedding(mem_x, projection)
    valid = torch.tensor([True, False, True])
    mem = {"memory_features": mem_x, "memory_embeddings": mem_z, "memory_valid": valid}
    assert torch.autograd.gradcheck(
        lambda w: conditioned_sample_graph_loss(x.detach(), w, projection, **mem), (weight,)
    )
    # the graph is conditioned on detached descriptors: the features' gradient is that of
    # the distances under the graph held fixed (Eq. 4, where G is not a function of F)
    graph = sample_graph(x, weight, projection, memory_embeddings=mem_z, memory_valid=valid)
    assert torch.autograd.gradcheck(
        lambda a: sample_graph_loss(a, graph.detach(), memory=mem_x), (x,)
    )
    conditioned_sample_graph_loss(x, weight, projection, **mem).backward()
    want = torch.autograd.grad(sample_graph_loss(x, graph.detach(), memory=mem_x), x)[0]
    torch.testing.assert_close(x.grad, want)


def test_graph_embedding_matches_reference_and_has_no_gradient():
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    projection = torch.randn(5, 6, dtype=torch.float64)
    z = graph_embedding(x, projection)
    assert not z.requires_grad
    torch.testing.assert_close(z, ref_embedding(x.detach(), projection))
    assert torch.equal(graph_embedding(torch.zeros(1, 5), projection), torch.zeros(1, 6).double())


def test_conditioned_graph_logits_are_the_bilinear_form():
    z = torch.randn(3, 4, dtype=torch.float64)
    mem = torch.randn(2, 4, dtype=torch.float64)
    w = torch.randn(4, 4, dtype=torch.float64)
    got = conditioned_graph_logits(z, w, mem)
    partners = torch.cat([z, mem])
    want = torch.tensor(
        [[float(z[u] @ w @ partners[v]) for v in range(5)] for u in range(3)], dtype=torch.float64
    )
    torch.testing.assert_close(got, want)


def test_one_sample_with_memory_partners_is_not_zero():
    x = torch.randn(1, 3, 2, 2)
    projection = torch.randn(3, 4)
    mem_x = torch.randn(2, 3, 2, 2)
    loss = conditioned_sample_graph_loss(
        x,
        torch.zeros(4, 4),
        projection,
        memory_features=mem_x,
        memory_embeddings=graph_embedding(mem_x, projection),
    )
    want = (pairwise_distance(torch.cat([x, mem_x]))[0, 1:].sum() / 3).float()
    torch.testing.assert_close(loss, want)


def test_error_conditioned_features_channels():
    with pytest.raises(
        CCGShapeError,
        match=r"`features` must have in_channels=3 channels .* got shape \(2, 5, 2, 2\)",
    ):
        sample_graph(torch.randn(2, 5, 2, 2), torch.zeros(4, 4), torch.randn(3, 4))


def test_error_conditioned_memory_features_without_embeddings():
    with pytest.raises(
        CCGShapeError, match=r"`memory_features` and `memory_embeddings` go together"
    ):
        conditioned_sample_graph_loss(
            torch.randn(2, 3),
            torch.zeros(4, 4),
            torch.randn(3, 4),
            memory_features=torch.randn(1, 3),
        )


def test_error_conditioned_memory_sizes_disagree():
    with pytest.raises(CCGShapeError, match=r"`memory_features` must hold K=2 maps"):
        conditioned_sample_graph_loss(
            torch.randn(2, 3),
            torch.zeros(4, 4),
            torch.randn(3, 4),
            memory_features=torch.randn(1, 3),
            memory_embeddings=torch.randn(2, 4),
        )


def test_error_memory_valid_wrong_length_and_dtype():
    args = (torch.randn(2, 3), torch.zeros(4, 4), torch.randn(3, 4))
    with pytest.raises(CCGShapeError, match=r"`memory_valid` must have shape \(K\) with K=2"):
        sample_graph(
            *args, memory_embeddings=torch.randn(2, 4), memory_valid=torch.ones(3, dtype=torch.bool)
        )
    with pytest.raises(CCGDTypeError, match=r"`memory_valid` must have a bool dtype"):
        sample_graph(*args, memory_embeddings=torch.randn(2, 4), memory_valid=torch.ones(2))


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


def test_graph_size_may_be_a_numpy_int():
    module = LearnableSampleGraph(4, form="positional")
    torch.testing.assert_close(module.graph(np.int64(2)), torch.full((2, 2), 0.5))


@pytest.mark.parametrize("n", ["2", 2.0, True, 0])
def test_error_graph_size_not_a_positive_int(n):
    """A type problem is named as one, not as a batch size out of range."""
    with pytest.raises(CCGValueRangeError, match=rf"`n` must be a positive int, got {n!r}"):
        LearnableSampleGraph(4, form="positional").graph(n)


def test_positional_graph_does_not_revalidate_its_own_weight():
    """The module's own weight goes to the kernel: only the loss validates the graph."""
    module = LearnableSampleGraph(4, form="positional")
    with count_checks() as calls:
        module.graph(3)
    assert calls[("check_tensor", "logits")] == 0


def test_error_num_samples_not_positive():
    with pytest.raises(CCGValueRangeError, match=r"`num_samples` must be a positive int, got 0"):
        LearnableSampleGraph(0, form="positional")


def test_error_bad_parametrization():
    with pytest.raises(CCGValueRangeError, match=r"`parametrization` must be one of .* got 'abs'"):
        LearnableSampleGraph(2, form="positional", parametrization="abs")


def test_error_bad_reduction():
    with pytest.raises(CCGValueRangeError, match=r"`reduction` must be one of .* got 'max'"):
        LearnableSampleGraph(2, form="positional", reduction="max")


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


def test_positional_form_at_batch_2_has_zero_gradient_and_conditioned_form_is_uniform_at_init():
    x, _ = memory_batch(3, 0)
    positional = LearnableSampleGraph(2, form="positional")
    positional(x[:2].requires_grad_()).backward()
    assert float(positional.weight.grad.abs().sum()) == 0.0
    conditioned = LearnableSampleGraph(in_channels=C)
    assert torch.equal(conditioned.graph(x), torch.full((3, 3), 1 / 3))


def test_error_conditioned_form_without_in_channels():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`in_channels` .* is required with form='conditioned', the default, got None; "
        r"pass form='positional'",
    ):
        LearnableSampleGraph(4)


def test_error_positional_form_with_memory_or_without_num_samples():
    with pytest.raises(CCGValueRangeError, match=r"`memory_size` must be 0 with form='positional'"):
        LearnableSampleGraph(4, form="positional", memory_size=2)
    with pytest.raises(CCGValueRangeError, match=r"`num_samples` is required with form='posit"):
        LearnableSampleGraph(form="positional")


def test_error_free_parametrisation_with_conditioned_form():
    with pytest.raises(CCGValueRangeError, match=r"only exists for form='positional'"):
        LearnableSampleGraph(in_channels=4, parametrization="free")


def test_error_conditioned_features_channels_name_in_channels():
    with pytest.raises(
        CCGShapeError,
        match=r"`features` must have in_channels=16 channels .* got shape \(2, 8, 4, 4\)",
    ):
        LearnableSampleGraph(in_channels=16)(torch.randn(2, 8, 4, 4))


def test_error_graph_accessor_needs_features_in_conditioned_form():
    with pytest.raises(CCGShapeError, match=r"`features` \(n, C, \.\.\.\) are required"):
        LearnableSampleGraph(in_channels=C).graph(4)


def test_error_conditioned_form_with_one_channel():
    with pytest.raises(CCGValueRangeError, match=r"`in_channels` must be >= 2 .* got 1"):
        LearnableSampleGraph(in_channels=1)


# --------------------------------------------------------------------------- bad input (audit)


def _nan_features():
    x = torch.randn(3, 4, 2, 2)
    x[1, 2, 0, 1] = float("nan")
    return x


def test_error_graph_embedding_non_finite_features():
    with pytest.raises(CCGValueRangeError, match=r"`features` must be finite, got NaN or inf"):
        graph_embedding(_nan_features(), torch.randn(4, 3))


def test_error_sample_graph_non_finite_features():
    with pytest.raises(CCGValueRangeError, match=r"`features` must be finite, got NaN or inf"):
        sample_graph(_nan_features(), torch.zeros(3, 3), torch.randn(4, 3))


def test_error_graph_accessor_non_finite_features():
    with pytest.raises(CCGValueRangeError, match=r"`features` must be finite, got NaN or inf"):
        LearnableSampleGraph(in_channels=4, embed_dim=3).graph(_nan_features())


def test_non_finite_features_pass_with_value_checks_off():
    with set_value_checks(False):
        g = sample_graph(_nan_features(), torch.zeros(3, 3), torch.randn(4, 3))
    assert g.shape == (3, 3)


def test_error_conditioned_graph_logits_empty_batch():
    with pytest.raises(
        CCGShapeError,
        match=r"`embeddings` must hold at least 1 sample \(n, d\), got shape \(0, 4\)",
    ):
        conditioned_graph_logits(torch.zeros(0, 4), torch.zeros(4, 4))


def test_error_conditioned_graph_logits_embeddings_rank():
    with pytest.raises(CCGShapeError, match=r"`embeddings` must have at least 2 dimensions"):
        conditioned_graph_logits(torch.zeros(4), torch.zeros(4, 4))


@pytest.mark.parametrize("flag", ["no", 1, None])
def test_error_return_embeddings_not_a_bool(flag):
    with pytest.raises(
        CCGValueRangeError, match=rf"`return_embeddings` must be True or False, got {flag!r}"
    ):
        conditioned_sample_graph_loss(
            torch.randn(2, 4), torch.zeros(3, 3), torch.randn(4, 3), return_embeddings=flag
        )


@pytest.mark.parametrize("form", ["conditioned", "positional"])
@pytest.mark.parametrize("flag", ["x", 1, None])
def test_error_distributed_not_a_bool(form, flag):
    with pytest.raises(
        CCGValueRangeError, match=rf"`distributed` must be True or False, got {flag!r}"
    ):
        LearnableSampleGraph(4, in_channels=8, form=form, distributed=flag)


def test_error_defer_enqueue_not_a_bool():
    with pytest.raises(CCGValueRangeError, match=r"`defer_enqueue` must be"):
        LearnableSampleGraph(in_channels=8, defer_enqueue="x")


@pytest.mark.parametrize("form", ["conditioned", "positional"])
@pytest.mark.parametrize("seed", ["a", True, 1.0, None])
def test_error_seed_not_an_int(form, seed):
    with pytest.raises(CCGValueRangeError, match=rf"`seed` must be an int, got {seed!r}"):
        LearnableSampleGraph(4, in_channels=8, form=form, seed=seed)


@pytest.mark.parametrize("form", ["conditioned", "positional"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32"])
def test_error_dtype_not_floating(form, dtype):
    with pytest.raises(
        CCGDTypeError, match=rf"`dtype` must be a floating torch.dtype or None, got {dtype!r}"
    ):
        LearnableSampleGraph(4, in_channels=8, form=form, dtype=dtype)


@pytest.mark.parametrize("in_channels", [0, "8", True])
def test_error_positional_in_channels_not_a_positive_int(in_channels):
    with pytest.raises(CCGValueRangeError, match=r"`in_channels` must be a positive int, got"):
        LearnableSampleGraph(4, form="positional", in_channels=in_channels)


def test_error_positional_graph_of_a_bool_size():
    with pytest.raises(CCGValueRangeError, match=r"`n` must be a positive int, got True"):
        LearnableSampleGraph(2, form="positional").graph(True)


def test_error_graph_accessor_use_memory_not_a_bool():
    graph = LearnableSampleGraph(in_channels=4, embed_dim=3, memory_size=2)
    with pytest.raises(CCGValueRangeError, match=r"`use_memory` must be True or False, got 'no'"):
        graph.graph(torch.randn(2, 4, 2, 2), use_memory="no")
