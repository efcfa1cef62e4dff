"""The contrast-constrained form of the relation losses (beyond the paper): alike_pairs,
contrast_distances, the contrast form of sample_graph_loss, conditioned_sample_graph_loss,
patch_hash_graph_loss and of the LearnableSampleGraph / PatchHashGraph modules (their label
queue), against float64 references."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given

import ccg_layers
from ccg_layers import LearnableSampleGraph, PatchHashGraph
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    alike_pairs,
    conditioned_sample_graph_loss,
    contrast_distances,
    graph_embedding,
    pairwise_distance,
    patch_codes,
    patch_hash_graph,
    patch_hash_graph_loss,
    sample_graph,
    sample_graph_loss,
)
from tests.graph_references import (
    BITS,
    C,
    M,
    batches,
    contrast_modules,
    count_tensor_syncs,
    gen,
    memory_batch,
    memory_modules,
    patch_inputs,
    random_codes,
    ref_distance,
    resume_round_trip,
)


def ref_alike(ya, yb):
    """Alike: the two images share a positive finding, or neither has any."""
    a, b = [float(t) for t in ya], [float(t) for t in yb]
    shared = any(x > 0 and y > 0 for x, y in zip(a, b, strict=True))
    return shared or (sum(a) == 0 and sum(b) == 0)


def ref_cost(fa, fb, ya, yb, margin):
    d = ref_distance(fa, fb)
    return d if ref_alike(ya, yb) else max(0.0, margin - d)


def ref_contrast_graph_loss(features, graph, y, margin, memory=None, mem_y=None, reduction="mean"):
    """sum_u sum_{v in batch + memory} G(u, v) c(u, v) / n^2, one pair at a time."""
    n = features.shape[0]
    partners = list(features) + ([] if memory is None else list(memory))
    partner_y = list(y) + ([] if mem_y is None else list(mem_y))
    terms = torch.zeros(n, len(partners), dtype=torch.float64)
    for u in range(n):
        for v in range(len(partners)):
            c = ref_cost(features[u], partners[v], y[u], partner_y[v], margin)
            terms[u, v] = float(graph[u, v]) * c
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.sum() / (n * n)


def ref_contrast_pair_loss(fa, fb, ya, yb, weights, margin, memory=None, mem_y=None):
    """Pair form: sum_p [w_p0 c(u_p, v_p) + sum_k w_pk c(u_p, M_k)] / P, as (P, 1 + K) terms."""
    P = fa.shape[0]
    K = 0 if memory is None else memory.shape[0]
    w = weights.reshape(P, 1 + K)
    terms = torch.zeros(P, 1 + K, dtype=torch.float64)
    for p in range(P):
        terms[p, 0] = float(w[p, 0]) * ref_cost(fa[p], fb[p], ya[p], yb[p], margin)
        for k in range(K):
            terms[p, 1 + k] = float(w[p, 1 + k]) * ref_cost(
                fa[p], memory[k], ya[p], mem_y[k], margin
            )
    return terms


def _image_labels(n, c, g, dtype=torch.float64):
    y = torch.rand(n, c, generator=g) < 0.3
    y[torch.rand(n, generator=g) < 0.3] = False  # "No finding" rows
    return y.to(dtype)


@st.composite
def contrast_inputs(draw, max_n=5, max_k=3):
    x, graph = draw(batches(max_n=max_n))
    n = x.shape[0]
    g = gen(draw(st.integers(0, 2**31 - 1)))
    c = draw(st.integers(1, 4))
    y = _image_labels(n, c, g, draw(st.sampled_from([torch.float64, torch.float32, torch.bool])))
    K = draw(st.integers(0, max_k))
    memory = mem_y = None
    if K:
        memory = torch.randn(K, *x.shape[1:], generator=g, dtype=torch.float64)
        mem_y = _image_labels(K, c, g)
        graph = torch.randn(n, n + K, generator=g, dtype=torch.float64)
    scale = float(pairwise_distance(x).max()) if n > 1 else 1.0
    margin = draw(st.sampled_from([0.5, 1.0, 2.0])) * max(scale, 1e-3)
    return x, graph, y, margin, memory, mem_y


def _todays_graph_loss(features, graph, memory):
    """The pull form as computed before the contrast form existed (a frozen copy)."""
    from ccg_layers.distance import distance_matrix
    from ccg_layers.validation import reduce

    dist = distance_matrix(features, memory)
    return reduce(graph.to(dist.dtype) * dist, "mean", count=features.shape[0] ** 2)


def _todays_pair_loss(features, features_b, weights, memory):
    from ccg_layers.distance import pair_distances
    from ccg_layers.validation import reduce

    dist = pair_distances(features, features_b, memory)
    return reduce(weights.to(dist.dtype) * dist, "mean", count=features.shape[0])


def _contrast_call(**kw):
    x = torch.randn(3, 4)
    args = dict(image_labels=torch.zeros(3, 2), margin=1.0)
    args.update(kw)
    return sample_graph_loss(x, torch.rand(3, 3), **args)


NC = 3  # findings per image in these tests


def _findings(n, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    y = (torch.rand(n, NC, generator=g) < 0.4).float()
    y[0] = 0.0  # a "No finding" image in every batch
    return y


def _contrast_step(lsg, ik, kr, seed, n=2):
    x, labels = memory_batch(n, seed)
    y = _findings(n, seed)
    h = n // 2
    return (
        lsg(x, image_labels=y)
        + ik(x, labels, image_labels=y)
        + kr(x[:h], labels[:h], x[h:], labels[h:], image_labels=y[:h], image_labels_b=y[h:])
    )


def test_alike_pairs_example_rule_and_self_pairs():
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    s = alike_pairs(y)
    want = torch.tensor(
        [[ref_alike(a, b) for b in y.double()] for a in y.double()], dtype=torch.bool
    )
    assert torch.equal(s, want)
    assert s.diagonal().all()  # s(u, u) = 1, also for a "No finding" row
    assert s[3, 4]
    assert not s[0, 2]
    assert not s[0, 3]


@given(st.integers(1, 6), st.integers(0, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_alike_pairs_matches_reference_with_partners(n, K, c, seed):
    g = gen(seed)
    y, mem = _image_labels(n, c, g, torch.float32), _image_labels(K, c, g, torch.float32)
    got = alike_pairs(y, mem)
    partners = list(y) + list(mem)
    want = torch.tensor([[ref_alike(a, b) for b in partners] for a in y], dtype=torch.bool)
    assert got.shape == (n, n + K)
    assert torch.equal(got, want)


def test_contrast_distances_formula_and_gradient():
    d = torch.tensor([0.2, 0.2, 0.7, 1.4], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([True, False, False, False])
    c = contrast_distances(d, s, 1.0)
    torch.testing.assert_close(c, torch.tensor([0.2, 0.8, 0.3, 0.0], dtype=torch.float64))
    c.sum().backward()
    assert d.grad.tolist() == [1.0, -1.0, -1.0, 0.0]  # pull, push below the margin, hinge off


@given(contrast_inputs(), st.sampled_from(["none", "mean", "sum"]))
def test_sample_graph_loss_contrast_matches_reference(inputs, reduction):
    x, graph, y, margin, memory, mem_y = inputs
    got = sample_graph_loss(
        x,
        graph,
        memory=memory,
        image_labels=y,
        memory_image_labels=mem_y,
        margin=margin,
        reduction=reduction,
    )
    want = ref_contrast_graph_loss(x, graph, y, margin, memory, mem_y, reduction)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7 * max(1.0, margin))


@given(contrast_inputs(max_n=4))
def test_conditioned_sample_graph_loss_contrast_matches_reference(inputs):
    x, _, y, margin, memory, mem_y = inputs
    if x.shape[1] < 2:
        x = torch.cat([x, -x], dim=1)
        memory = None if memory is None else torch.cat([memory, -memory], dim=1)
    C = x.shape[1]
    g = gen(5)
    projection = torch.randn(C, 3, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 3, generator=g, dtype=torch.float64)
    mem_z = None if memory is None else graph_embedding(memory, projection)
    valid = None if memory is None else torch.arange(memory.shape[0]) != 0  # slot 0 empty
    got = conditioned_sample_graph_loss(
        x,
        weight,
        projection,
        memory_features=memory,
        memory_embeddings=mem_z,
        memory_valid=valid,
        image_labels=y,
        memory_image_labels=mem_y,
        margin=margin,
        reduction="none",
    )
    graph = sample_graph(x, weight, projection, memory_embeddings=mem_z, memory_valid=valid)
    want = ref_contrast_graph_loss(x, graph, y, margin, memory, mem_y, "none")
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7 * max(1.0, margin))


@given(patch_inputs(), st.integers(0, 3), st.booleans(), st.integers(0, 2**31 - 1))
def test_patch_hash_graph_loss_contrast_matches_reference(inputs, K, pairs, seed):
    x, labels, projection, weight, bias = inputs
    n, m, bits = x.shape[0], weight.shape[0], projection.shape[1]
    g = gen(seed)
    y = _image_labels(n, 3, g)
    margin = float(torch.rand((), generator=g, dtype=torch.float64)) * 4 + 0.1
    memory = mem_codes = mem_y = valid = None
    if K:
        memory = torch.randn(K, *x.shape[1:], generator=g, dtype=torch.float64)
        mem_codes = random_codes((K, m, bits), seed)
        mem_y = _image_labels(K, 3, g)
        valid = torch.arange(K) < K - 1 if K > 1 else None
    kw = dict(memory_codes=mem_codes, memory_valid=valid)
    if pairs:
        xb = torch.randn(x.shape, generator=g, dtype=torch.float64)
        yb, labels_b = _image_labels(n, 3, g), labels.flip(0)
        got = patch_hash_graph_loss(
            x, labels, projection, weight, bias, features_b=xb, labels_b=labels_b,
            memory_features=memory, image_labels=y, image_labels_b=yb,
            memory_image_labels=mem_y, margin=margin, reduction="none", **kw,
        )  # fmt: skip
        w = patch_hash_graph(x, labels, projection, weight, bias, hash_input_b=xb,
                             labels_b=labels_b, **kw)  # fmt: skip
        want = ref_contrast_pair_loss(x, xb, y, yb, w, margin, memory, mem_y)
        got = got.reshape(want.shape)
    else:
        got = patch_hash_graph_loss(
            x, labels, projection, weight, bias, memory_features=memory, image_labels=y,
            memory_image_labels=mem_y, margin=margin, reduction="none", **kw,
        )  # fmt: skip
        graph = patch_hash_graph(x, labels, projection, weight, bias, **kw)
        want = ref_contrast_graph_loss(x, graph, y, margin, memory, mem_y, "none")
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7 * margin)


def test_gradcheck_contrast_forms():
    g = gen(3)
    x = torch.randn(4, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    mem = torch.randn(2, 3, 2, dtype=torch.float64, generator=g)
    graph = torch.rand(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    mem_y = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # a margin halfway between two distances (away from the hinge's kink): some unlike pairs
    # pushed, some released
    d = pairwise_distance(x.detach()).flatten().sort().values
    margin = float(d[8] + d[10]) / 2

    def loss(f, w):
        return sample_graph_loss(
            f, w, memory=mem, image_labels=y, memory_image_labels=mem_y, margin=margin
        )

    assert torch.autograd.gradcheck(loss, (x, graph))
    xb = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=g, requires_grad=True)
    xa = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=g, requires_grad=True)
    lab = torch.randint(0, 2, (4, 2, 2), generator=g)
    proj, weight = torch.randn(3, 5, dtype=torch.float64, generator=g), torch.zeros(2, 2)

    def pair_loss(a, b):
        return patch_hash_graph_loss(
            a, lab, proj, weight.double(), features_b=b, labels_b=lab.flip(0),
            image_labels=y, image_labels_b=y.flip(0), margin=3.0,
        )  # fmt: skip

    assert torch.autograd.gradcheck(pair_loss, (xa, xb))


@given(contrast_inputs())
def test_contrast_all_pairs_alike_is_bit_identical_to_the_pull_form(inputs):
    x, graph, _, margin, memory, _ = inputs
    ones = torch.ones(x.shape[0], 2)  # every image has the same finding: every pair alike
    mem_ones = None if memory is None else torch.ones(memory.shape[0], 2)
    pull = sample_graph_loss(x, graph, memory=memory, reduction="none")
    contrast = sample_graph_loss(
        x,
        graph,
        memory=memory,
        image_labels=ones,
        memory_image_labels=mem_ones,
        margin=margin,
        reduction="none",
    )
    assert torch.equal(pull, contrast)


def test_contrast_no_pair_alike_and_margin_below_every_distance_gives_zero():
    g = gen(4)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.eye(4, dtype=torch.float64)  # one distinct finding each: no off-diagonal alike
    d = pairwise_distance(x.detach())
    margin = 0.5 * float(d[~torch.eye(4, dtype=torch.bool)].min())
    loss = sample_graph_loss(x, torch.rand(4, 4, generator=g), image_labels=y, margin=margin)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_contrast_huge_margin_pushes_every_unlike_pair():
    g = gen(6)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g)
    graph = torch.rand(4, 4, dtype=torch.float64, generator=g)
    y = torch.eye(4, dtype=torch.float64)
    margin = 1e6
    terms = sample_graph_loss(x, graph, image_labels=y, margin=margin, reduction="none")
    d = pairwise_distance(x)
    off = ~torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(terms[off], (graph * (margin - d))[off])
    assert torch.equal(terms.diagonal(), torch.zeros(4, dtype=torch.float64))  # self-pairs: 0
    # the gradient pushes: it is minus the pull form's on every unlike pair
    xa = x.clone().requires_grad_()
    sample_graph_loss(xa, graph, image_labels=y, margin=margin).backward()
    xb = x.clone().requires_grad_()
    sample_graph_loss(xb, graph).backward()
    torch.testing.assert_close(xa.grad, -xb.grad)


@pytest.mark.parametrize("with_memory", [False, True])
def test_pull_form_loss_and_gradients_are_bit_identical_to_todays(with_memory):
    g = gen(8)
    x = torch.randn(5, 4, 3, 3, generator=g)
    mem = torch.randn(3, 4, 3, 3, generator=g) if with_memory else None
    graph = torch.rand(5, 8 if with_memory else 5, generator=g, requires_grad=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = sample_graph_loss(xa, graph, memory=mem)
    got.backward()
    ga, graph.grad = graph.grad, None
    want = _todays_graph_loss(xb, graph, mem)
    want.backward()
    assert torch.equal(got, want)
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(ga, graph.grad)
    # the pair form of L_KR
    lab = torch.randint(0, 3, (5, 6, 6), generator=g)
    proj, weight = torch.randn(4, 8, generator=g), torch.randn(3, 3, generator=g)
    fb = torch.randn(5, 4, 3, 3, generator=g)
    codes = None if mem is None else patch_codes(mem, lab[:3], proj, 3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = patch_hash_graph_loss(
        xa, lab, proj, weight, features_b=fb, labels_b=lab.flip(0), memory_features=mem,
        memory_codes=codes,
    )  # fmt: skip
    w = patch_hash_graph(x, lab, proj, weight, hash_input_b=fb, labels_b=lab.flip(0),
                         memory_codes=codes)  # fmt: skip
    want = _todays_pair_loss(xb, fb, w, mem)
    got.backward()
    want.backward()
    assert torch.equal(got, want)
    assert torch.equal(xa.grad, xb.grad)


@pytest.mark.parametrize(
    "margin", [0.0, -1.0, math.inf, math.nan, True, "1", np.float32(-1), np.float64(math.nan)]
)
def test_error_bad_margin(margin):
    with pytest.raises(CCGValueRangeError, match=r"`margin` must be a finite positive float"):
        _contrast_call(margin=margin)


def test_error_margin_without_image_labels():
    with pytest.raises(CCGShapeError, match=r"`image_labels` is required with `margin`"):
        _contrast_call(image_labels=None)


def test_error_image_labels_without_margin():
    with pytest.raises(CCGValueRangeError, match=r"`margin` is required with `image_labels`"):
        _contrast_call(margin=None)


def test_error_image_labels_wrong_shape():
    with pytest.raises(CCGShapeError, match=r"`image_labels`"):
        _contrast_call(image_labels=torch.zeros(2, 2))


def test_error_image_labels_wrong_dtype():
    with pytest.raises(CCGDTypeError, match=r"`image_labels`"):
        _contrast_call(image_labels=torch.zeros(3, 2, dtype=torch.long))


@pytest.mark.parametrize("bad", [0.5, math.nan, math.inf, 2.0])
def test_error_image_labels_not_multi_hot(bad):
    y = torch.zeros(3, 2)
    y[1, 1] = bad
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` must hold multi-hot labels"):
        _contrast_call(image_labels=y)


def test_error_memory_without_memory_image_labels():
    with pytest.raises(CCGShapeError, match=r"`memory_image_labels` is required"):
        sample_graph_loss(
            torch.randn(3, 4), torch.rand(3, 5), memory=torch.randn(2, 4),
            image_labels=torch.zeros(3, 2), margin=1.0,
        )  # fmt: skip


def test_error_memory_image_labels_other_classes():
    with pytest.raises(CCGShapeError, match=r"`memory_image_labels`"):
        sample_graph_loss(
            torch.randn(3, 4), torch.rand(3, 5), memory=torch.randn(2, 4),
            image_labels=torch.zeros(3, 2), memory_image_labels=torch.zeros(2, 3), margin=1.0,
        )  # fmt: skip


def test_error_memory_image_labels_without_memory():
    with pytest.raises(CCGShapeError, match=r"`memory_image_labels` is only used with a memory"):
        _contrast_call(memory_image_labels=torch.zeros(2, 2))


def test_error_pair_form_without_image_labels_b():
    x, lab = torch.randn(2, 3, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long)
    with pytest.raises(CCGShapeError, match=r"`image_labels_b` is required"):
        patch_hash_graph_loss(
            x, lab, torch.randn(3, 4), torch.zeros(1, 1), features_b=x, labels_b=lab,
            image_labels=torch.zeros(2, 2), margin=1.0,
        )  # fmt: skip


def test_error_image_labels_b_without_pair_form():
    x, lab = torch.randn(2, 3, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long)
    with pytest.raises(CCGShapeError, match=r"`image_labels_b` is only used in the pair form"):
        patch_hash_graph_loss(
            x, lab, torch.randn(3, 4), torch.zeros(1, 1), image_labels=torch.zeros(2, 2),
            image_labels_b=torch.zeros(2, 2), margin=1.0,
        )  # fmt: skip


def test_error_contrast_distances_alike_shape_and_dtype():
    with pytest.raises(CCGShapeError, match=r"`alike` must have the shape of `distances`"):
        contrast_distances(torch.zeros(3), torch.zeros(2, dtype=torch.bool), 1.0)
    with pytest.raises(CCGDTypeError, match=r"`alike`"):
        contrast_distances(torch.zeros(3), torch.zeros(3), 1.0)


def test_error_alike_pairs_partner_classes():
    with pytest.raises(CCGShapeError, match=r"`partner_labels`"):
        alike_pairs(torch.zeros(2, 3), torch.zeros(1, 2))


def test_contrast_module_equals_function_with_the_memory():
    lsg, ik, kr = contrast_modules(memory_size=4)
    for seed in range(3):
        _contrast_step(lsg, ik, kr, seed)
    x, labels = memory_batch(4, 7)
    y = _findings(4, 7)
    want = conditioned_sample_graph_loss(
        x,
        lsg.weight,
        lsg.projection,
        memory_features=lsg.memory_features,
        memory_embeddings=lsg.memory_embeddings,
        memory_valid=lsg.memory_valid(),
        image_labels=y,
        memory_image_labels=lsg.memory_image_labels,
        margin=1.5,
    )
    mem = {
        "memory_features": ik.memory_features,
        "memory_codes": ik.memory_codes,
        "memory_valid": ik.memory_valid(),
        "memory_image_labels": ik.memory_image_labels,
    }
    want_ik = patch_hash_graph_loss(
        x, labels, ik.projection, ik.weight, image_labels=y, margin=1.5, **mem
    )
    mem_kr = {
        "memory_features": kr.memory_features,
        "memory_codes": kr.memory_codes,
        "memory_valid": kr.memory_valid(),
        "memory_image_labels": kr.memory_image_labels,
    }
    want_kr = patch_hash_graph_loss(
        x[:2], labels[:2], kr.projection, kr.weight, features_b=x[2:], labels_b=labels[2:],
        image_labels=y[:2], image_labels_b=y[2:], margin=1.5, **mem_kr,
    )  # fmt: skip
    assert lsg.memory_image_labels.shape == (4, NC)
    torch.testing.assert_close(lsg(x, image_labels=y.bool()), want)  # bool labels work too
    torch.testing.assert_close(ik(x, labels, image_labels=y), want_ik)
    got_kr = kr(x[:2], labels[:2], x[2:], labels[2:], image_labels=y[:2], image_labels_b=y[2:])
    torch.testing.assert_close(got_kr, want_kr)
    # and it differs from the pull form (some pairs are unlike)
    assert not torch.allclose(want, conditioned_sample_graph_loss(
        x, lsg.weight, lsg.projection, memory_features=lsg.memory_features,
        memory_embeddings=lsg.memory_embeddings, memory_valid=lsg.memory_valid(),
    ))  # fmt: skip


def test_contrast_memory_keeps_the_labels_fifo_with_wrap_around():
    lsg = LearnableSampleGraph(in_channels=C, embed_dim=8, memory_size=5, contrast_margin=1.0)
    seen_x, seen_y = [], []
    for step, n in enumerate((2, 2, 3, 1, 4)):
        x, _ = memory_batch(n, step)
        y = _findings(n, step)
        lsg(x, image_labels=y)
        seen_x.extend(x)
        seen_y.extend(y)
    assert lsg.memory_image_labels.dtype == torch.float32
    for i in range(len(seen_x) - 5, len(seen_x)):
        assert torch.equal(lsg.memory_features[i % 5], seen_x[i])
        assert torch.equal(lsg.memory_image_labels[i % 5], seen_y[i])


def test_contrast_pair_form_enqueues_the_labels_of_both_images_of_every_pair():
    kr = PatchHashGraph(M, C, code_bits=BITS, memory_size=8, contrast_margin=1.0)
    x, labels = memory_batch(4, 0)
    y = _findings(4, 0)
    kr(x[:2], labels[:2], x[2:], labels[2:], image_labels=y[:2], image_labels_b=y[2:])
    assert torch.equal(kr.memory_features[:4], x)
    assert torch.equal(kr.memory_image_labels[:4], y)


def test_contrast_state_dict_round_trip_with_a_filled_memory_gives_identical_losses():
    saved, _, _, want, got = resume_round_trip(
        lambda: contrast_modules(memory_size=3),
        lambda m, seed: _contrast_step(*m, seed, n=4),
        range(3),  # wrapped around already
        range(3, 6),
    )
    assert "memory_image_labels" in saved[0]  # loaded exactly, as every state (the helper)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_contrast_zero_host_synchronisations_with_value_checks_off():
    def step():
        lsg, ik, kr = contrast_modules(memory_size=4)
        positional = LearnableSampleGraph(4, form="positional", contrast_margin=1.0)
        _contrast_step(lsg, ik, kr, 0)  # allocate and fill the queues before counting
        x, _labels = memory_batch(4, 1)
        y = _findings(4, 1)
        x.requires_grad_()
        with count_tensor_syncs() as calls:
            loss = _contrast_step(lsg, ik, kr, 1, n=4) + positional(x, image_labels=y)
            loss.backward()
        return calls

    with ccg_layers.set_value_checks(False):
        assert step() == []
    assert len(step()) > 0  # with the checks on the labels' values are read back


@pytest.mark.parametrize(
    "margin", [0, -0.5, float("nan"), float("inf"), "1.0", True, np.float32(0), np.bool_(True)]
)
def test_error_bad_contrast_margin(margin):
    with pytest.raises(CCGValueRangeError, match=r"`contrast_margin` must be a finite positive"):
        LearnableSampleGraph(in_channels=C, contrast_margin=margin)
    with pytest.raises(CCGValueRangeError, match=r"`contrast_margin` must be a finite positive"):
        PatchHashGraph(M, C, contrast_margin=margin)


def test_error_contrast_module_without_image_labels():
    lsg, ik, kr = contrast_modules()
    x, labels = memory_batch(2, 0)
    y = _findings(2, 0)
    with pytest.raises(CCGShapeError, match=r"`image_labels` \(n, C\) multi-hot .* required"):
        lsg(x)
    with pytest.raises(CCGShapeError, match=r"`image_labels` \(n, C\) multi-hot .* required"):
        ik(x, labels)
    with pytest.raises(CCGShapeError, match=r"`image_labels_b` \(n, C\) multi-hot .* required"):
        kr(x[:1], labels[:1], x[1:], labels[1:], image_labels=y[:1])


def test_error_contrast_module_image_labels_wrong_shape():
    lsg, ik, _ = contrast_modules()
    x, labels = memory_batch(2, 0)
    with pytest.raises(CCGShapeError, match=r"`image_labels`"):
        lsg(x, image_labels=torch.zeros(3, NC))
    with pytest.raises(CCGShapeError, match=r"`image_labels`"):
        ik(x, labels, image_labels=torch.zeros(2))


@pytest.mark.parametrize("bad", [0.5, float("nan"), float("inf"), -1.0])
def test_error_contrast_module_image_labels_not_multi_hot(bad):
    lsg, ik, _ = contrast_modules()
    x, labels = memory_batch(2, 0)
    y = torch.zeros(2, NC)
    y[1, 2] = bad
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` must hold multi-hot labels"):
        lsg(x, image_labels=y)
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` must hold multi-hot labels"):
        ik(x, labels, image_labels=y)


def test_error_contrast_module_classes_change_while_the_memory_holds_labels():
    lsg, _, _ = contrast_modules()
    x, _ = memory_batch(2, 0)
    lsg(x, image_labels=torch.zeros(2, NC))
    with pytest.raises(CCGShapeError, match=r"`image_labels`"):
        lsg(x, image_labels=torch.zeros(2, NC + 1))


def test_error_image_labels_without_contrast_margin():
    lsg, ik, _ = memory_modules()
    x, labels = memory_batch(2, 0)
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` is only used with"):
        lsg(x, image_labels=torch.zeros(2, NC))
    with pytest.raises(CCGValueRangeError, match=r"`image_labels` is only used with"):
        ik(x, labels, image_labels=torch.zeros(2, NC))


def test_error_image_labels_b_without_pair_form_module():
    _, ik, _ = contrast_modules()
    x, labels = memory_batch(2, 0)
    with pytest.raises(CCGShapeError, match=r"`image_labels_b` is only used in the pair form"):
        ik(x, labels, image_labels=torch.zeros(2, NC), image_labels_b=torch.zeros(2, NC))


@pytest.mark.parametrize(
    ("bad", "shown"), [(-1.0, r"-1\.0"), (float("nan"), "nan"), (float("inf"), "inf")]
)
def test_error_contrast_distances_bad_distance(bad, shown):
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`distances` must hold finite non-negative distances, got 1 other value\(s\), "
        rf"e\.g\. {shown}",
    ):
        contrast_distances(torch.tensor([0.5, bad]), torch.tensor([True, False]), 1.0)


def test_contrast_distances_values_unchecked_with_value_checks_off():
    with ccg_layers.set_value_checks(False):
        got = contrast_distances(torch.tensor([-1.0]), torch.tensor([True]), 1.0)
    assert float(got) == -1.0


def test_numpy_margin_is_accepted():
    torch.manual_seed(0)
    want = _contrast_call(margin=1.0)
    torch.manual_seed(0)
    assert torch.equal(_contrast_call(margin=np.float32(1)), want)
    d, alike = torch.tensor([0.5, 0.5]), torch.tensor([True, False])
    assert torch.equal(
        contrast_distances(d, alike, margin=np.int64(1)), contrast_distances(d, alike, margin=1.0)
    )


def test_numpy_contrast_margin_is_accepted():
    lsg = LearnableSampleGraph(in_channels=C, contrast_margin=np.float32(1))
    phg = PatchHashGraph(M, C, contrast_margin=np.float64(0.5))
    assert (lsg.contrast_margin, phg.contrast_margin) == (1.0, 0.5)
    assert type(lsg.contrast_margin) is float
