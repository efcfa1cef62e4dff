"""Tests of ccg_layers.functional.graphs against float64 loop references from Eq. 4-10."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    hamming_distance,
    hash_codes,
    normalize_graph,
    paired_sample_loss,
    pairwise_distance,
    patch_graph_logits,
    patch_hash_graph_loss,
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
