"""Tests of ccg_layers.functional.graphs against float64 loop references from Eq. 4-10."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    alike_pairs,
    conditioned_graph_logits,
    conditioned_sample_graph_loss,
    contrast_distances,
    graph_embedding,
    hamming_distance,
    hash_codes,
    memory_enqueue_,
    normalize_graph,
    paired_sample_loss,
    pairwise_distance,
    patch_codes,
    patch_graph_logits,
    patch_hash_graph,
    patch_hash_graph_loss,
    sample_graph,
    sample_graph_loss,
    superpixel_pool,
)

# --------------------------------------------------------------------------- references


def ref_distance(a, b):
    """Euclidean distance of two flattened samples, a plain loop in float64."""
    a, b = a.double().flatten().tolist(), b.double().flatten().tolist()
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def ref_sample_graph_loss(features, graph, reduction="mean"):
    """Eq. 4: sum_{u,v} G(u, v) D(F_u, F_v) / n^2."""
    n = features.shape[0]
    terms = torch.zeros(n, n, dtype=torch.float64)
    for u in range(n):
        for v in range(n):
            terms[u, v] = float(graph[u, v]) * ref_distance(features[u], features[v])
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.sum() / (n * n)


def ref_normalize(logits, parametrization="softmax", pairs=False):
    """Row softmax over the partners v != u scaled by (n-1)/n, self-weight 1/n (or P*softmax)."""
    if parametrization == "free":
        return logits.double()
    x = logits.double().tolist()
    if pairs:
        P = len(x)
        z = sum(math.exp(t) for t in x)
        return torch.tensor([P * math.exp(t) / z for t in x], dtype=torch.float64)
    n = len(x)
    out = torch.zeros(n, n, dtype=torch.float64)
    for u in range(n):
        if n == 1:
            out[u, u] = 1.0
            continue
        z = sum(math.exp(x[u][v]) for v in range(n) if v != u)
        for v in range(n):
            out[u, v] = 1.0 / n if v == u else (n - 1) / n * math.exp(x[u][v]) / z
    return out


def ref_superpixel_pool(x, labels, m):
    """Mean over the label pixels of segment l of the value of the grid cell each pixel is in."""
    N, C, h, w = x.shape
    _, H0, W0 = labels.shape
    H, W = max(H0, h), max(W0, w)  # labels coarser than the grid are upsampled (nearest)
    labels = labels[:, [(r * H0) // H for r in range(H)]][:, :, [(c * W0) // W for c in range(W)]]
    pooled = torch.zeros(N, m, C, dtype=torch.float64)
    valid = torch.zeros(N, m, dtype=torch.bool)
    for i in range(N):
        for seg in range(m):
            acc, count = torch.zeros(C, dtype=torch.float64), 0
            for r in range(H):
                for c in range(W):
                    if int(labels[i, r, c]) == seg:
                        acc += x[i, :, (r * h) // H, (c * w) // W].double()
                        count += 1
            if count:
                pooled[i, seg] = acc / count
                valid[i, seg] = True
    return pooled, valid


def ref_hamming_popcount(a, b):
    """XOR/popcount of the codes packed into Python ints (bit k set where code k is +1)."""

    def pack(code):
        return sum(1 << k for k, v in enumerate(code.tolist()) if v > 0)

    A = a.reshape(-1, a.shape[-1])
    B = b.reshape(-1, b.shape[-1])
    out = torch.zeros(A.shape[0], B.shape[0], dtype=torch.float64)
    for i in range(A.shape[0]):
        for j in range(B.shape[0]):
            out[i, j] = bin(pack(A[i]) ^ pack(B[j])).count("1")
    return out


def ref_patch_scores(codes_a, codes_b, weight, bias):
    """Eq. 6-7 literally: the m x m Hamming graph (missing patch: bits/2), then W_l."""
    bits = codes_a.shape[-1]
    m = codes_a.shape[0]
    s = float(bias)
    for i in range(m):
        for j in range(m):
            if not codes_a[i].any() or not codes_b[j].any():
                dist = bits / 2
            else:
                dist = float(ref_hamming_popcount(codes_a[i : i + 1], codes_b[j : j + 1])[0, 0])
            s += float(weight[i, j]) * dist / bits
    return s


def ref_patch_hash_graph_loss(
    features,
    labels,
    projection,
    weight,
    bias,
    features_b=None,
    labels_b=None,
    parametrization="softmax",
    reduction="mean",
):
    """Eq. 5-7 (and the pair form of Eq. 8-10) with every piece from the references above."""
    m = weight.shape[0]

    def codes_of(x, lab):
        pooled, valid = ref_superpixel_pool(x, lab, m)
        z = pooled @ projection.double()
        codes = torch.where(z >= 0, 1.0, -1.0).double()
        return codes * valid[..., None]

    ca = codes_of(features, labels)
    if features_b is None:
        n = features.shape[0]
        scores = torch.tensor(
            [[ref_patch_scores(ca[u], ca[v], weight, bias) for v in range(n)] for u in range(n)],
            dtype=torch.float64,
        )
        graph = ref_normalize(scores, parametrization)
        return ref_sample_graph_loss(features, graph, reduction)
    cb = codes_of(features_b, labels_b)
    P = features.shape[0]
    scores = torch.tensor(
        [ref_patch_scores(ca[p], cb[p], weight, bias) for p in range(P)], dtype=torch.float64
    )
    w = ref_normalize(scores, parametrization, pairs=True)
    terms = torch.tensor(
        [float(w[p]) * ref_distance(features[p], features_b[p]) for p in range(P)],
        dtype=torch.float64,
    )
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.sum() / P


# --------------------------------------------------------------------------- strategies


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@st.composite
def batches(draw, max_n=5, max_d=6):
    n = draw(st.integers(1, max_n))
    shape = (n, draw(st.integers(1, max_d)), draw(st.integers(1, 3)))
    g = _gen(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * draw(st.sampled_from([1e-3, 1, 1e3]))
    if n > 1 and draw(st.booleans()):
        x[-1] = x[0]  # an identical pair: D = 0 off the diagonal
    graph = torch.randn(n, n, generator=g, dtype=torch.float64)
    return x, graph


@st.composite
def patch_inputs(draw, max_n=4):
    n = draw(st.integers(1, max_n))
    C = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    m = draw(st.integers(1, 5))
    bits = draw(st.integers(1, 12))
    g = _gen(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, C, h, w, generator=g, dtype=torch.float64)
    labels = torch.randint(0, m, (n, H, W), generator=g)
    projection = torch.randn(C, bits, generator=g, dtype=torch.float64)
    weight = torch.randn(m, m, generator=g, dtype=torch.float64)
    bias = torch.randn((), generator=g, dtype=torch.float64)
    return x, labels, projection, weight, bias


def _codes(shape, seed=0, dtype=torch.float64):
    g = _gen(seed)
    return torch.randint(0, 2, shape, generator=g).to(dtype) * 2 - 1


# --------------------------------------------------------------------------- distances, Eq. 4


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


# --------------------------------------------------------------------------- pair form


@given(st.integers(1, 5), st.integers(0, 2**31 - 1), st.sampled_from(["none", "mean", "sum"]))
def test_paired_sample_loss_matches_reference(P, seed, reduction):
    g = _gen(seed)
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


# --------------------------------------------------------------------------- normalize_graph


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_normalize_graph_matches_reference_rows_sum_to_one(n, seed):
    logits = torch.randn(n, n, generator=_gen(seed), dtype=torch.float64) * 3
    got = normalize_graph(logits)
    torch.testing.assert_close(got, ref_normalize(logits))
    torch.testing.assert_close(got.sum(1), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(got.diagonal(), torch.full((n,), 1.0 / n, dtype=torch.float64))
    assert bool((got >= 0).all())


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_normalize_graph_pairs_and_free(P, seed):
    logits = torch.randn(P, generator=_gen(seed), dtype=torch.float64)
    torch.testing.assert_close(
        normalize_graph(logits, pairs=True), ref_normalize(logits, pairs=True)
    )
    assert normalize_graph(logits, parametrization="free", pairs=True) is logits


def test_normalize_graph_equal_logits_is_the_papers_initial_graph():
    torch.testing.assert_close(normalize_graph(torch.zeros(5, 5)), torch.full((5, 5), 0.2))
    torch.testing.assert_close(normalize_graph(torch.zeros(3), pairs=True), torch.ones(3))


def test_gradcheck_normalize_graph():
    logits = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_graph, (logits,))


@given(batches())
def test_loss_non_negative_under_default_parametrisation(batch):
    x, logits = batch
    assert float(sample_graph_loss(x, normalize_graph(logits * 10))) >= 0.0


# --------------------------------------------------------------------------- superpixel_pool


@given(patch_inputs())
def test_superpixel_pool_matches_reference(inputs):
    x, labels, _, weight, _ = inputs
    m = weight.shape[0]
    pooled, valid = superpixel_pool(x, labels, m)
    want_pooled, want_valid = ref_superpixel_pool(x, labels, m)
    torch.testing.assert_close(pooled, want_pooled)
    assert torch.equal(valid, want_valid)


def test_superpixel_pool_mean_of_constant_map_is_the_constant():
    x = torch.full((2, 3, 4, 4), 2.5)
    labels = torch.randint(0, 6, (2, 16, 16))
    pooled, valid = superpixel_pool(x, labels, 6)
    torch.testing.assert_close(pooled[valid], torch.full_like(pooled[valid], 2.5))


def test_superpixel_pool_is_permutation_equivariant_over_the_batch():
    x, labels = torch.randn(4, 3, 4, 4), torch.randint(0, 5, (4, 8, 8))
    pooled, valid = superpixel_pool(x, labels, 5)
    perm = torch.tensor([2, 0, 3, 1])
    p2, v2 = superpixel_pool(x[perm], labels[perm], 5)
    torch.testing.assert_close(p2, pooled[perm])
    assert torch.equal(v2, valid[perm])


def test_superpixel_pool_gradcheck():
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 6, 6))
    assert torch.autograd.gradcheck(lambda t: superpixel_pool(t, labels, 4)[0], (x,))


# --------------------------------------------------------------------------- hashing, Eq. 7


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_hamming_matches_xor_popcount_exactly(m, m2, bits, seed):
    a = _codes((2, m, bits), seed, torch.float32)
    b = _codes((2, m2, bits), seed + 1, torch.float32)
    got = hamming_distance(a, b)
    for i in range(2):
        assert torch.equal(got[i].double(), ref_hamming_popcount(a[i], b[i]))
    assert torch.equal(got, got.round())


@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_hamming_symmetric_and_zero_on_self(m, bits, seed):
    a = _codes((m, bits), seed)
    b = _codes((m, bits), seed + 7)
    torch.testing.assert_close(hamming_distance(a, b), hamming_distance(b, a).T)
    assert bool((hamming_distance(a, a).diagonal() == 0).all())


def test_hamming_exact_under_bf16_autocast():
    a, b = _codes((8, 256), 1, torch.bfloat16), _codes((8, 256), 2, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hamming_distance(a, b)
    assert torch.equal(got.double(), ref_hamming_popcount(a.float(), b.float()))


def test_hash_codes_sign_of_projection_without_grad():
    x = torch.randn(3, 5, 4, requires_grad=True)
    proj = torch.randn(4, 16)
    codes = hash_codes(x, proj)
    assert codes.shape == (3, 5, 16)
    assert not codes.requires_grad
    want = torch.where(x.detach() @ proj >= 0, 1.0, -1.0)
    assert torch.equal(codes, want)


def test_hash_codes_angle_property_scale_invariant():
    x, proj = torch.randn(6, 8), torch.randn(8, 32)
    assert torch.equal(hash_codes(x, proj), hash_codes(3.0 * x, proj))


# --------------------------------------------------------------------------- patch graph, Eq. 5-7


@given(patch_inputs(), st.booleans())
def test_patch_graph_logits_match_the_literal_hamming_graph(inputs, with_missing):
    x, _, projection, weight, bias = inputs
    n, m = x.shape[0], weight.shape[0]
    codes = _codes((n, m, projection.shape[1]), 3)
    if with_missing:
        codes[0, -1] = 0
    got = patch_graph_logits(codes, weight, bias)
    want = torch.tensor(
        [[ref_patch_scores(codes[u], codes[v], weight, bias) for v in range(n)] for u in range(n)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want)
    other = _codes((n, m, projection.shape[1]), 4)
    got_pairs = patch_graph_logits(codes, weight, bias, other)
    want_pairs = torch.tensor(
        [ref_patch_scores(codes[p], other[p], weight, bias) for p in range(n)], dtype=torch.float64
    )
    torch.testing.assert_close(got_pairs, want_pairs)


def test_patch_graph_logits_permutation_equivariant():
    codes = _codes((5, 4, 16), 0)
    weight, bias = torch.randn(4, 4, dtype=torch.float64), torch.tensor(0.3).double()
    s = patch_graph_logits(codes, weight, bias)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(patch_graph_logits(codes[perm], weight, bias), s[perm][:, perm])


def test_patch_graph_logits_gradcheck_in_weight_and_bias():
    codes = _codes((3, 4, 8), 0)
    weight = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn((), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b: patch_graph_logits(codes, w, b), (weight, bias))


@given(patch_inputs(), st.sampled_from(["softmax", "free"]), st.sampled_from(["none", "mean"]))
def test_patch_hash_graph_loss_matches_reference(inputs, parametrization, reduction):
    x, labels, projection, weight, bias = inputs
    got = patch_hash_graph_loss(
        x, labels, projection, weight, bias, parametrization=parametrization, reduction=reduction
    )
    want = ref_patch_hash_graph_loss(
        x, labels, projection, weight, bias, parametrization=parametrization, reduction=reduction
    )
    torch.testing.assert_close(got, want)


@given(patch_inputs(), st.sampled_from(["softmax", "free"]))
def test_patch_hash_graph_pair_form_matches_reference(inputs, parametrization):
    x, labels, projection, weight, bias = inputs
    g = _gen(11)
    xb = torch.randn(x.shape, generator=g, dtype=torch.float64)
    labels_b = labels.flip(0)
    got = patch_hash_graph_loss(
        x,
        labels,
        projection,
        weight,
        bias,
        features_b=xb,
        labels_b=labels_b,
        parametrization=parametrization,
        reduction="none",
    )
    want = ref_patch_hash_graph_loss(
        x, labels, projection, weight, bias, xb, labels_b, parametrization, reduction="none"
    )
    torch.testing.assert_close(got, want)


@given(patch_inputs())
def test_patch_hash_graph_loss_non_negative_by_default(inputs):
    x, labels, projection, weight, bias = inputs
    assert float(patch_hash_graph_loss(x, labels, projection, weight * 50, bias)) >= 0.0


def test_patch_hash_graph_loss_one_image_is_zero():
    x = torch.randn(1, 4, 4, 4)
    loss = patch_hash_graph_loss(
        x,
        torch.zeros(1, 8, 8, dtype=torch.long),
        torch.randn(4, 8),
        torch.ones(2, 2),
        torch.tensor(0.0),
    )
    assert float(loss) == 0.0


def test_patch_hash_graph_hashes_a_separate_input():
    # hash the patches of the image (1 channel, 32x32), weight distances of 16x16 features
    feats = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    image = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 32, 32))
    proj, w, b = torch.randn(1, 8).double(), torch.randn(4, 4).double(), torch.tensor(0.1).double()
    got = patch_hash_graph_loss(feats, labels, proj, w, b, hash_input=image, reduction="none")
    codes = hash_codes(superpixel_pool(image, labels, 4)[0], proj)
    graph = normalize_graph(patch_graph_logits(codes, w, b))
    torch.testing.assert_close(got, sample_graph_loss(feats, graph, reduction="none"))


def test_gradcheck_patch_hash_graph_loss():
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (3, 6, 6))
    proj = torch.randn(2, 8, dtype=torch.float64)
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn((), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, w, b: patch_hash_graph_loss(a, labels, proj, w, b), (x, weight, bias)
    )
    xb = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, c, w: patch_hash_graph_loss(
            a, labels, proj, w, bias, features_b=c, labels_b=labels
        ),
        (x, xb, weight),
    )


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    x = torch.randn(4, 8, 4, 4, requires_grad=True)
    labels = torch.randint(0, 6, (4, 16, 16))
    proj, w, b = torch.randn(8, 16), torch.randn(6, 6, requires_grad=True), torch.tensor(0.0)
    logits = torch.zeros(4, 4, requires_grad=True)

    def both(feat, weight, theta):
        l_ir = sample_graph_loss(feat, normalize_graph(theta))
        l_ik = patch_hash_graph_loss(feat, labels, proj, weight, b)
        return l_ir + l_ik

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    got = compiled(x, w, logits)
    torch.testing.assert_close(got, both(x, w, logits))
    got.backward()
    assert x.grad is not None
    assert w.grad is not None
    assert logits.grad is not None


# --------------------------------------------------------------------------- bad input


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


def test_error_normalize_graph_bad_parametrization():
    with pytest.raises(
        CCGValueRangeError, match=r"`parametrization` must be one of 'softmax', 'free', got 'relu'"
    ):
        normalize_graph(torch.zeros(2, 2), parametrization="relu")


def test_error_normalize_graph_fewer_columns_than_rows():
    with pytest.raises(
        CCGShapeError, match=r"`logits` must have shape \(n, n\) or \(n, n \+ K\) .*\(3, 2\)"
    ):
        normalize_graph(torch.zeros(3, 2))


def test_error_superpixel_pool_labels_out_of_range():
    with pytest.raises(
        CCGValueRangeError, match=r"`labels` must hold indices in \[0, 4\), got values in \[0, 4\]"
    ):
        superpixel_pool(torch.randn(1, 2, 2, 2), torch.tensor([[[0, 4], [1, 2]]]), 4)


def test_error_superpixel_pool_float_labels():
    with pytest.raises(CCGDTypeError, match=r"`labels` must have a int dtype, got torch.float32"):
        superpixel_pool(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2), 4)


def test_error_superpixel_pool_labels_batch_mismatch():
    with pytest.raises(
        CCGShapeError, match=r"`labels` must have shape \(N, H, W\) with N=1 .*\(2, 2, 2\)"
    ):
        superpixel_pool(torch.randn(1, 2, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long), 4)


def test_error_superpixel_pool_x_wrong_rank():
    with pytest.raises(
        CCGShapeError, match=r"`x` must have 4 dimensions \(N, C, h, w\), got shape \(2, 2, 2\)"
    ):
        superpixel_pool(torch.randn(2, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long), 4)


def test_error_superpixel_pool_bad_num_segments():
    with pytest.raises(CCGValueRangeError, match=r"`num_segments` must be a positive int, got 0"):
        superpixel_pool(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 0)


def test_error_hash_codes_projection_mismatch():
    with pytest.raises(
        CCGShapeError, match=r"`projection` must have shape \(D, bits\) with D=4 .*\(5, 8\)"
    ):
        hash_codes(torch.randn(3, 4), torch.randn(5, 8))


def test_error_hamming_not_pm_one():
    with pytest.raises(CCGValueRangeError, match=r"`a` must hold only -1 and \+1, got e.g. 0.0"):
        hamming_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, -1.0]]))


def test_error_hamming_bits_mismatch():
    with pytest.raises(
        CCGShapeError, match=r"`b` must have shape \(\.\.\., m', bits\) with bits=2 .*\(1, 3\)"
    ):
        hamming_distance(torch.ones(1, 2), torch.ones(1, 3))


def test_error_hamming_batch_not_broadcastable():
    with pytest.raises(
        CCGShapeError, match=r"`b`'s leading dimensions \(3,\) must broadcast with `a`'s \(2,\)"
    ):
        hamming_distance(torch.ones(2, 1, 2), torch.ones(3, 1, 2))


def test_error_patch_graph_logits_weight_size():
    with pytest.raises(
        CCGShapeError, match=r"`weight` must have shape \(m, m\) with m=4 .*\(3, 3\)"
    ):
        patch_graph_logits(torch.ones(2, 4, 8), torch.zeros(3, 3), torch.tensor(0.0))


def test_error_patch_graph_logits_bias_not_scalar():
    with pytest.raises(CCGShapeError, match=r"`bias` must have 0 dimensions"):
        patch_graph_logits(torch.ones(2, 4, 8), torch.zeros(4, 4), torch.zeros(1))


def test_error_patch_graph_logits_codes_out_of_set():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`codes` must hold only -1, 0 \(missing patch\) and \+1, got e.g. 2.0",
    ):
        patch_graph_logits(torch.full((2, 4, 8), 2.0), torch.zeros(4, 4), torch.tensor(0.0))


def _phg_args():
    return (
        torch.randn(2, 4, 4, 4),
        torch.zeros(2, 8, 8, dtype=torch.long),
        torch.randn(4, 8),
        torch.zeros(3, 3),
        torch.tensor(0.0),
    )


def test_error_patch_hash_graph_labels_b_missing():
    x, lab, proj, w, b = _phg_args()
    with pytest.raises(CCGShapeError, match=r"`labels_b` is required with `features_b`"):
        patch_hash_graph_loss(x, lab, proj, w, b, features_b=x)


def test_error_patch_hash_graph_labels_b_without_features_b():
    x, lab, proj, w, b = _phg_args()
    with pytest.raises(
        CCGShapeError, match=r"`labels_b` and `hash_input_b` are only used with `features_b`"
    ):
        patch_hash_graph_loss(x, lab, proj, w, b, labels_b=lab)


def test_error_patch_hash_graph_features_b_shape():
    x, lab, proj, w, b = _phg_args()
    with pytest.raises(
        CCGShapeError,
        match=r"`features_b` must have shape \(n, C, h, w\) with C=4 .*\(2, 5, 4, 4\)",
    ):
        patch_hash_graph_loss(x, lab, proj, w, b, features_b=torch.randn(2, 5, 4, 4), labels_b=lab)


def test_error_patch_hash_graph_labels_b_batch():
    x, lab, proj, w, b = _phg_args()
    with pytest.raises(
        CCGShapeError, match=r"`labels_b` must have shape \(N, H, W\) with N=2 .*\(3, 8, 8\)"
    ):
        patch_hash_graph_loss(
            x, lab, proj, w, b, features_b=x, labels_b=torch.zeros(3, 8, 8, dtype=torch.long)
        )


def test_error_patch_hash_graph_hash_input_channels():
    x, lab, proj, w, b = _phg_args()
    with pytest.raises(
        CCGShapeError,
        match=r"`hash_input` must have C_hash=4 channels \(the rows of `projection`\), "
        r"got shape \(2, 1, 8, 8\)",
    ):
        patch_hash_graph_loss(x, lab, proj, w, b, hash_input=torch.rand(2, 1, 8, 8))


def test_error_patch_hash_graph_labels_out_of_range():
    x, _, proj, w, b = _phg_args()
    with pytest.raises(
        CCGValueRangeError, match=r"`labels` must hold indices in \[0, 3\), got values in \[0, 5\]"
    ):
        patch_hash_graph_loss(
            x,
            torch.full((2, 8, 8), 5, dtype=torch.long).index_fill_(1, torch.tensor([0]), 0),
            proj,
            w,
            b,
        )


# --------------------------------------------------------------------------- memory references


def ref_normalize_with_memory(logits, valid):
    """Row u: self-weight 1/N (N the valid columns), (N-1)/N shared by a softmax over the
    valid partners v != u; 0 on invalid columns. Plain loops in float64."""
    x = logits.double().tolist()
    n, cols = len(x), len(x[0])
    out = torch.zeros(n, cols, dtype=torch.float64)
    N = sum(bool(v) for v in valid)
    for u in range(n):
        partners = [v for v in range(cols) if v != u and bool(valid[v])]
        z = sum(math.exp(x[u][v]) for v in partners)
        out[u, u] = 1.0 / N
        for v in partners:
            out[u, v] = (N - 1) / N * math.exp(x[u][v]) / z
    return out


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


def ref_memory_loss(features, graph, memory=None, reduction="mean"):
    """sum over anchors u and partners v (batch, then memory) of G(u, v) D(F_u, F_v) / n^2."""
    n = features.shape[0]
    partners = list(features) + ([] if memory is None else list(memory))
    terms = torch.zeros(n, len(partners), dtype=torch.float64)
    for u in range(n):
        for v, other in enumerate(partners):
            terms[u, v] = float(graph[u, v]) * ref_distance(features[u], other)
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.sum() / (n * n)


@st.composite
def conditioned_inputs(draw, max_n=4, max_k=3):
    n = draw(st.integers(1, max_n))
    K = draw(st.integers(0, max_k))
    C, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    g = _gen(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, C, 2, 2, generator=g, dtype=torch.float64)
    weight = torch.randn(d, d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0, 1, 5]))
    projection = torch.randn(C, d, generator=g, dtype=torch.float64)
    mem_x = torch.randn(K, C, 2, 2, generator=g, dtype=torch.float64)
    mem_z = graph_embedding(mem_x, projection) if K else torch.zeros(0, d, dtype=torch.float64)
    valid = torch.rand(K, generator=g) < 0.7
    return x, weight, projection, mem_x, mem_z, valid


# --------------------------------------------------------------------------- conditioned L_IR


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
    perm = torch.randperm(n, generator=_gen(seed))
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


@given(st.integers(1, 4), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_normalize_graph_with_memory_matches_reference(n, K, seed):
    g = _gen(seed)
    logits = torch.randn(n, n + K, generator=g, dtype=torch.float64) * 3
    valid = torch.cat([torch.ones(n, dtype=torch.bool), torch.rand(K, generator=g) < 0.5])
    got = normalize_graph(logits, valid=valid)
    torch.testing.assert_close(got, ref_normalize_with_memory(logits, valid.tolist()))
    torch.testing.assert_close(got.sum(1), torch.ones(n, dtype=torch.float64))


def test_sample_graph_loss_with_memory_matches_reference():
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    memory = torch.randn(3, 3, 2, dtype=torch.float64)
    graph = torch.rand(2, 5, dtype=torch.float64)
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            sample_graph_loss(x, graph, memory=memory, reduction=reduction),
            ref_memory_loss(x, graph, memory, reduction),
        )


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


# --------------------------------------------------------------------------- patch graph memory


def ref_patch_loss_with_memory(
    x, labels, projection, weight, mem_x, mem_codes, valid, xb=None, lb=None
):
    """Eq. 5-7 with memory partners, every piece from the loop references above."""
    m = weight.shape[0]

    def codes_of(t, lab):
        pooled, ok = ref_superpixel_pool(t, lab, m)
        z = pooled @ projection.double()
        return torch.where(z >= 0, 1.0, -1.0).double() * ok[..., None]

    ca = codes_of(x, labels)
    n, K = x.shape[0], mem_x.shape[0]
    zero = torch.tensor(0.0)
    if xb is None:
        partners = list(ca) + list(mem_codes.double())
        scores = torch.tensor(
            [[ref_patch_scores(ca[u], c, weight, zero) for c in partners] for u in range(n)],
            dtype=torch.float64,
        )
        graph = ref_normalize_with_memory(scores, [True] * n + valid.tolist())
        return ref_memory_loss(x, graph, mem_x)
    cb = codes_of(xb, lb)
    rows = []
    for p in range(n):
        rows.append(
            [ref_patch_scores(ca[p], cb[p], weight, zero)]
            + [ref_patch_scores(ca[p], mem_codes[k].double(), weight, zero) for k in range(K)]
        )
    ok = [True, *valid.tolist()]
    z = sum(math.exp(s) for row in rows for s, o in zip(row, ok, strict=True) if o)
    total = 0.0
    for p, row in enumerate(rows):
        partners = [xb[p], *mem_x]
        for s, o, other in zip(row, ok, partners, strict=True):
            if o:
                total += n * math.exp(s) / z * ref_distance(x[p], other)
    return torch.tensor(total / n, dtype=torch.float64)


@given(patch_inputs(), st.integers(0, 3), st.booleans(), st.integers(0, 2**31 - 1))
def test_patch_hash_graph_loss_with_memory_matches_reference(inputs, K, pair_form, seed):
    x, labels, projection, weight, _ = inputs
    g = _gen(seed)
    _, C, h, w = x.shape
    m, bits = weight.shape[0], projection.shape[1]
    mem_x = torch.randn(K, C, h, w, generator=g, dtype=torch.float64)
    mem_labels = torch.randint(0, m, (K, *labels.shape[1:]), generator=g)
    mem_codes = torch.zeros(0, m, bits, dtype=torch.int8)
    if K:
        mem_codes = patch_codes(mem_x, mem_labels, projection, m).to(torch.int8)
    valid = torch.rand(K, generator=g) < 0.7
    kwargs = {"memory_features": mem_x, "memory_codes": mem_codes, "memory_valid": valid}
    if pair_form:
        xb = torch.randn(x.shape, generator=g, dtype=torch.float64)
        lb = labels.flip(0)
        got = patch_hash_graph_loss(
            x, labels, projection, weight, features_b=xb, labels_b=lb, **kwargs
        )
        want = ref_patch_loss_with_memory(
            x, labels, projection, weight, mem_x, mem_codes, valid, xb, lb
        )
    else:
        got = patch_hash_graph_loss(x, labels, projection, weight, **kwargs)
        want = ref_patch_loss_with_memory(x, labels, projection, weight, mem_x, mem_codes, valid)
    torch.testing.assert_close(got, want)


def test_patch_hash_graph_with_memory_shapes_and_uniform_start():
    x = torch.randn(2, 4, 4, 4)
    labels = torch.randint(0, 3, (2, 8, 8))
    proj = torch.randn(4, 8)
    mem_codes = patch_codes(torch.randn(3, 4, 4, 4), torch.randint(0, 3, (3, 8, 8)), proj, 3)
    valid = torch.tensor([True, True, False])
    g = patch_hash_graph(
        x, labels, proj, torch.zeros(3, 3), memory_codes=mem_codes, memory_valid=valid
    )
    want = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0]]).expand(2, 5)
    assert torch.equal(g, want)
    pairs = patch_hash_graph(
        x,
        labels,
        proj,
        torch.zeros(3, 3),
        hash_input_b=x.flip(0),
        labels_b=labels,
        memory_codes=mem_codes,
        memory_valid=valid,
    )
    # P * softmax over the P * (1 + K_valid) = 6 entries: each row sums to 1 at the start
    torch.testing.assert_close(pairs, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]]).expand(2, 4))


def test_gradcheck_patch_hash_graph_loss_with_memory():
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 6))
    proj = torch.randn(2, 8, dtype=torch.float64)
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    mem_x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    mem_codes = patch_codes(mem_x, torch.randint(0, 3, (2, 6, 6)), proj, 3)
    kw = {"memory_features": mem_x, "memory_codes": mem_codes}
    assert torch.autograd.gradcheck(
        lambda a, w: patch_hash_graph_loss(a, labels, proj, w, **kw), (x, weight)
    )
    xb = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, w: patch_hash_graph_loss(
            a, labels, proj, w, features_b=b, labels_b=labels, **kw
        ),
        (x, xb, weight),
    )


def test_patch_codes_match_pool_then_hash():
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    labels = torch.randint(0, 5, (3, 8, 8))
    proj = torch.randn(4, 16, dtype=torch.float64)
    pooled, valid = superpixel_pool(x, labels, 5)
    assert torch.equal(patch_codes(x, labels, proj, 5), hash_codes(pooled, proj) * valid[..., None])


# --------------------------------------------------------------------------- memory_enqueue_


@given(st.integers(1, 5), st.lists(st.integers(1, 7), min_size=1, max_size=6))
def test_memory_enqueue_is_a_fifo_with_wrap_around(size, batch_sizes):
    queue = torch.zeros(size, 2)
    codes = torch.zeros(size, 1, dtype=torch.int8)
    pointer, count = torch.tensor(0), torch.tensor(0)
    slots = [None] * size  # loop reference: write one entry after the other
    ref_ptr, seen = 0, 0
    for b in batch_sizes:
        entries = torch.arange(seen, seen + b, dtype=torch.float32)
        memory_enqueue_(
            [queue, codes],
            pointer,
            count,
            [entries[:, None].expand(b, 2), (entries[:, None] % 100).to(torch.int8)],
        )
        for e in entries.tolist():
            slots[ref_ptr] = e
            ref_ptr = (ref_ptr + 1) % size
        seen += b
        filled = [i for i, s in enumerate(slots) if s is not None]
        assert int(pointer) == ref_ptr
        assert int(count) == len(filled)
        for i in filled:
            assert float(queue[i, 0]) == slots[i] == float(queue[i, 1])
            assert int(codes[i, 0]) == int(slots[i]) % 100


def test_memory_enqueue_detaches_and_casts():
    queue = torch.zeros(2, 3, dtype=torch.float16)
    x = torch.randn(1, 3, requires_grad=True)
    memory_enqueue_([queue], torch.tensor(1), torch.tensor(0), [x])
    assert not queue.requires_grad
    assert torch.equal(queue[1], x.detach().half()[0])


def test_error_memory_enqueue_entry_shape():
    with pytest.raises(CCGShapeError, match=r"`entries\[0\]` must have shape \(n, 3\) .*\(2, 4\)"):
        memory_enqueue_([torch.zeros(2, 3)], torch.tensor(0), torch.tensor(0), [torch.zeros(2, 4)])


def test_error_memory_enqueue_pointer_not_integer():
    with pytest.raises(CCGDTypeError, match=r"`pointer` must have a int dtype"):
        memory_enqueue_(
            [torch.zeros(2, 3)], torch.tensor(0.0), torch.tensor(0), [torch.zeros(1, 3)]
        )


# --------------------------------------------------------------------------- new bad inputs


def test_error_empty_batch_is_named_not_zero_division():
    x, lab, proj, w, _ = _phg_args()
    with pytest.raises(CCGShapeError, match=r"`features` must hold at least 1 .*\(0, 4, 4, 4\)"):
        patch_hash_graph_loss(x[:0], lab[:0], proj, w)
    with pytest.raises(CCGShapeError, match=r"`hash_input` must hold at least 1 image"):
        patch_hash_graph(x[:0], lab[:0], proj, w)
    with pytest.raises(CCGShapeError, match=r"`features` must hold at least 1 sample"):
        sample_graph_loss(torch.zeros(0, 3), torch.zeros(0, 0))
    with pytest.raises(CCGShapeError, match=r"`logits` must have shape \(n, n\) or"):
        normalize_graph(torch.zeros(0, 0))


def test_error_features_channels_name_the_argument_not_the_projection():
    _, lab, proj, w, _ = _phg_args()
    with pytest.raises(
        CCGShapeError,
        match=r"`features` must have C_hash=4 channels \(the rows of `projection`\), got shape "
        r"\(2, 8, 4, 4\)",
    ):
        patch_hash_graph_loss(torch.randn(2, 8, 4, 4), lab, proj, w)


def test_error_conditioned_features_channels():
    with pytest.raises(
        CCGShapeError, match=r"`features` must have C=3 channels .* got shape \(2, 5, 2, 2\)"
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


def test_error_memory_features_shape():
    with pytest.raises(
        CCGShapeError, match=r"`memory` must have shape \(K, 3, 2\) like one sample .*\(1, 3, 3\)"
    ):
        sample_graph_loss(torch.randn(2, 3, 2), torch.ones(2, 3), memory=torch.randn(1, 3, 3))


def test_error_patch_memory_codes_without_features_and_bad_values():
    x, lab, proj, w, _ = _phg_args()
    with pytest.raises(CCGShapeError, match=r"`memory_features` and `memory_codes` go together"):
        patch_hash_graph_loss(x, lab, proj, w, memory_codes=torch.zeros(1, 3, 8))
    with pytest.raises(CCGValueRangeError, match=r"`memory_codes` must hold only -1, 0"):
        patch_hash_graph(x, lab, proj, w, memory_codes=torch.full((1, 3, 8), 3.0))
    with pytest.raises(
        CCGShapeError, match=r"`memory_codes` must have shape \(K, m, bits\) with m=3"
    ):
        patch_hash_graph(x, lab, proj, w, memory_codes=torch.zeros(1, 4, 8))


# --------------------------------------------------------------------------- contrast form
# (beyond the paper): c(u, v) = s D + (1 - s) max(0, margin - D), s from the image labels


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
    g = _gen(draw(st.integers(0, 2**31 - 1)))
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
    g = _gen(seed)
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
    g = _gen(5)
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
    g = _gen(seed)
    y = _image_labels(n, 3, g)
    margin = float(torch.rand((), generator=g, dtype=torch.float64)) * 4 + 0.1
    memory = mem_codes = mem_y = valid = None
    if K:
        memory = torch.randn(K, *x.shape[1:], generator=g, dtype=torch.float64)
        mem_codes = _codes((K, m, bits), seed)
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
    g = _gen(3)
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
    g = _gen(4)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.eye(4, dtype=torch.float64)  # one distinct finding each: no off-diagonal alike
    d = pairwise_distance(x.detach())
    margin = 0.5 * float(d[~torch.eye(4, dtype=torch.bool)].min())
    loss = sample_graph_loss(x, torch.rand(4, 4, generator=g), image_labels=y, margin=margin)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_contrast_huge_margin_pushes_every_unlike_pair():
    g = _gen(6)
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


def _todays_graph_loss(features, graph, memory):
    """The pull form as computed before the contrast form existed (a frozen copy)."""
    from ccg_layers._validation import reduce
    from ccg_layers.functional.graphs import _distances

    dist = _distances(features, memory)
    return reduce(graph.to(dist.dtype) * dist, "mean", count=features.shape[0] ** 2)


def _todays_pair_loss(features, features_b, weights, memory):
    from ccg_layers._validation import reduce
    from ccg_layers.functional.graphs import _cross_distance, _paired_terms

    dist = _paired_terms(features, features_b)
    if memory is not None:
        dist = torch.cat([dist[:, None], _cross_distance(features, memory)], dim=1)
    return reduce(weights.to(dist.dtype) * dist, "mean", count=features.shape[0])


@pytest.mark.parametrize("with_memory", [False, True])
def test_pull_form_loss_and_gradients_are_bit_identical_to_todays(with_memory):
    g = _gen(8)
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


# bad input: one test per argument and failure


def _contrast_call(**kw):
    x = torch.randn(3, 4)
    args = dict(image_labels=torch.zeros(3, 2), margin=1.0)
    args.update(kw)
    return sample_graph_loss(x, torch.rand(3, 3), **args)


@pytest.mark.parametrize("margin", [0.0, -1.0, math.inf, math.nan, True, "1"])
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
