"""The patch-hash graph of L_IK and L_KR (Eq. 5-7, 10): patch_graph_logits, patch_hash_graph, patch_hash_graph_loss and the PatchHashGraph module, against float64 loop references."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from ccg_layers import LearnableSampleGraph, PatchHashGraph, set_value_checks, superpixels
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    hash_codes,
    normalize_graph,
    paired_sample_loss,
    pairwise_distance,
    patch_codes,
    patch_graph_logits,
    patch_hash_graph,
    patch_hash_graph_loss,
    sample_graph_loss,
    superpixel_pool,
)
from tests.graph_references import (
    C,
    M,
    gen,
    memory_batch,
    patch_inputs,
    random_codes,
    ref_distance,
    ref_memory_loss,
    ref_normalize,
    ref_normalize_with_memory,
    ref_patch_scores,
    ref_sample_graph_loss,
    ref_superpixel_pool,
)
from tests.validation_counter import count_checks, repeated


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


def _phg_args():
    return (
        torch.randn(2, 4, 4, 4),
        torch.zeros(2, 8, 8, dtype=torch.long),
        torch.randn(4, 8),
        torch.zeros(3, 3),
        torch.tensor(0.0),
    )


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


def _labels(n, m=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return superpixels(torch.rand(n, size, size, generator=g), m)


def test_patch_graph_logits_permutation_equivariant():
    codes = random_codes((5, 4, 16), 0)
    weight, bias = torch.randn(4, 4, dtype=torch.float64), torch.tensor(0.3).double()
    s = patch_graph_logits(codes, weight, bias)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(patch_graph_logits(codes[perm], weight, bias), s[perm][:, perm])


def test_patch_graph_logits_gradcheck_in_weight_and_bias():
    codes = random_codes((3, 4, 8), 0)
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
    g = gen(11)
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


def test_error_patch_graph_logits_weight_size():
    with pytest.raises(
        CCGShapeError, match=r"`weight` must have shape \(m, m\) with m=4 .*\(3, 3\)"
    ):
        patch_graph_logits(torch.ones(2, 4, 8), torch.zeros(3, 3), torch.tensor(0.0))


def test_error_patch_graph_logits_weight_none():
    """Only the bias may be None: a missing weight is named, not an AttributeError."""
    with pytest.raises(CCGDTypeError, match=r"`weight` must be a torch.Tensor, got NoneType"):
        patch_graph_logits(torch.ones(2, 4, 8), None)  # type: ignore[arg-type]


def test_error_patch_memory_features_count_differs_from_codes():
    x, lab, proj, w, _ = _phg_args()
    mem_x, mem_codes = torch.randn(2, 4, 4, 4), torch.zeros(1, 3, 8)
    with pytest.raises(
        CCGShapeError,
        match=r"`memory_features` must hold K=1 maps like `memory_codes`, got shape \(2, 4, 4, 4\)",
    ):
        patch_hash_graph_loss(x, lab, proj, w, memory_features=mem_x, memory_codes=mem_codes)


def test_error_patch_graph_logits_bias_not_scalar():
    with pytest.raises(CCGShapeError, match=r"`bias` must have 0 dimensions"):
        patch_graph_logits(torch.ones(2, 4, 8), torch.zeros(4, 4), torch.zeros(1))


def test_error_patch_graph_logits_codes_out_of_set():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`codes` must hold only -1, 0 \(missing patch\) and \+1, got e.g. 2.0",
    ):
        patch_graph_logits(torch.full((2, 4, 8), 2.0), torch.zeros(4, 4), torch.tensor(0.0))


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
        match=r"`hash_input` must have in_channels=4 channels \(C_hash, the rows of `projection`\), "
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


@given(patch_inputs(), st.integers(0, 3), st.booleans(), st.integers(0, 2**31 - 1))
def test_patch_hash_graph_loss_with_memory_matches_reference(inputs, K, pair_form, seed):
    x, labels, projection, weight, _ = inputs
    g = gen(seed)
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
        match=r"`features` must have in_channels=4 channels \(C_hash, the rows of `projection`\), got shape "
        r"\(2, 8, 4, 4\)",
    ):
        patch_hash_graph_loss(torch.randn(2, 8, 4, 4), lab, proj, w)


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


def test_error_patch_hash_graph_labels_out_of_range_module():
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


def test_error_patch_hash_graph_features_channels_name_in_channels():
    x, labels = memory_batch(2, 0)  # 8 channels
    with pytest.raises(
        CCGShapeError,
        match=r"`features` must have in_channels=16 channels .* got shape \(2, 8, 4, 4\)",
    ):
        PatchHashGraph(M, 16)(x, labels)
    with pytest.raises(
        CCGShapeError,
        match=r"`hash_input` must have in_channels=16 channels .* got shape \(2, 8, 4, 4\)",
    ):
        PatchHashGraph(M, 16)(torch.randn(2, 3, 4, 4), labels, hash_input=x)


def test_error_patch_hash_graph_empty_batch_is_named():
    x, labels = memory_batch(2, 0)
    with pytest.raises(CCGShapeError, match=r"`features` must hold at least 1 sample"):
        PatchHashGraph(M, C)(x[:0], labels[:0])
    with pytest.raises(CCGShapeError, match=r"`features` must hold at least 1 sample"):
        PatchHashGraph(M, C)(x[:0], labels[:0], x[:0], labels[:0])
    with pytest.raises(CCGShapeError, match=r"`features` must hold at least 1 sample"):
        LearnableSampleGraph(in_channels=C)(x[:0])


# --------------------------------------------------------------------------- bad input (audit)


def _with_nan(x):
    x = x.clone()
    x[-1, 0, 1, 1] = float("nan")
    return x


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_error_patch_hash_graph_non_finite_hash_input(value):
    x, lab, proj, w, _ = _phg_args()
    x[1, 2, 0, 0] = value
    with pytest.raises(CCGValueRangeError, match=r"`hash_input` must be finite, got NaN or inf"):
        patch_hash_graph(x, lab, proj, w)


def test_error_patch_hash_graph_non_finite_hash_input_b():
    x, lab, proj, w, _ = _phg_args()
    with pytest.raises(CCGValueRangeError, match=r"`hash_input_b` must be finite, got NaN or inf"):
        patch_hash_graph(x, lab, proj, w, hash_input_b=_with_nan(x), labels_b=lab)


def test_error_patch_hash_graph_loss_non_finite_hash_input():
    x, lab, proj, w, _ = _phg_args()
    with pytest.raises(CCGValueRangeError, match=r"`hash_input` must be finite, got NaN or inf"):
        patch_hash_graph_loss(x, lab, proj, w, hash_input=_with_nan(x))


def test_error_patch_hash_graph_loss_non_finite_hash_input_b():
    x, lab, proj, w, _ = _phg_args()
    with pytest.raises(CCGValueRangeError, match=r"`hash_input_b` must be finite, got NaN or inf"):
        patch_hash_graph_loss(
            x, lab, proj, w, features_b=x, labels_b=lab, hash_input_b=_with_nan(x)
        )


@pytest.mark.parametrize("pair_form", [False, True])
def test_hashed_features_are_checked_finite_once_by_the_distances(pair_form):
    """With ``hash_input=None`` the hashed maps are the features: the distances' rule checks
    them, the graph's checker does not check them again."""
    x, lab, proj, w, _ = _phg_args()
    kwargs = {"features_b": _with_nan(x), "labels_b": lab} if pair_form else {}
    features = x if pair_form else _with_nan(x)
    with count_checks() as calls, pytest.raises(CCGValueRangeError, match=r"must be finite"):
        patch_hash_graph_loss(features, lab, proj, w, **kwargs)
    assert repeated(calls) == {}
    assert calls[("check_finite_through_distances", "distances")] == 1
    assert not any(check == "check_finite" for check, _ in calls)


def test_non_finite_hash_input_passes_with_value_checks_off():
    x, lab, proj, w, _ = _phg_args()
    with set_value_checks(False):
        assert patch_hash_graph(_with_nan(x), lab, proj, w).shape == (2, 2)


def test_error_module_graph_non_finite_hash_input():
    x, lab, _, _, _ = _phg_args()
    with pytest.raises(CCGValueRangeError, match=r"`hash_input` must be finite, got NaN or inf"):
        PatchHashGraph(3, 4, code_bits=8).graph(_with_nan(x), lab)


def test_error_patch_hash_graph_loss_hash_input_batch():
    x, _, proj, w, _ = _phg_args()
    hash_input = torch.randn(3, 4, 8, 8)
    labels = torch.zeros(3, 8, 8, dtype=torch.long)
    with pytest.raises(
        CCGShapeError,
        match=r"`hash_input` must hold n=2 images like `features`, got shape \(3, 4, 8, 8\)",
    ):
        patch_hash_graph_loss(x, labels, proj, w, hash_input=hash_input)


@pytest.mark.parametrize("flag", ["x", 1, None])
def test_error_return_codes_not_a_bool(flag):
    x, lab, proj, w, _ = _phg_args()
    with pytest.raises(
        CCGValueRangeError, match=rf"`return_codes` must be True or False, got {flag!r}"
    ):
        patch_hash_graph_loss(x, lab, proj, w, return_codes=flag)


def test_error_patch_graph_logits_empty_batch():
    with pytest.raises(
        CCGShapeError, match=r"`codes` must hold at least 1 image, got shape \(0, 4, 8\)"
    ):
        patch_graph_logits(torch.ones(0, 4, 8), torch.zeros(4, 4))


@pytest.mark.parametrize("flag", ["x", 1, None])
def test_error_module_distributed_not_a_bool(flag):
    with pytest.raises(
        CCGValueRangeError, match=rf"`distributed` must be True or False, got {flag!r}"
    ):
        PatchHashGraph(3, 4, distributed=flag)


def test_error_module_defer_enqueue_not_a_bool():
    with pytest.raises(CCGValueRangeError, match=r"`defer_enqueue` must be"):
        PatchHashGraph(3, 4, defer_enqueue="x")


@pytest.mark.parametrize("seed", ["a", True, 1.0, None])
def test_error_module_seed_not_an_int(seed):
    with pytest.raises(CCGValueRangeError, match=rf"`seed` must be an int, got {seed!r}"):
        PatchHashGraph(3, 4, seed=seed)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32"])
def test_error_module_dtype_not_floating(dtype):
    with pytest.raises(
        CCGDTypeError, match=rf"`dtype` must be a floating torch.dtype or None, got {dtype!r}"
    ):
        PatchHashGraph(3, 4, dtype=dtype)


def test_error_module_graph_use_memory_not_a_bool():
    x, lab, _, _, _ = _phg_args()
    with pytest.raises(CCGValueRangeError, match=r"`use_memory` must be True or False, got 'no'"):
        PatchHashGraph(3, 4, code_bits=8, memory_size=2).graph(x, lab, use_memory="no")


@pytest.mark.parametrize(
    ("hash_input", "labels", "message"),
    [
        (
            torch.randn(2, 8, 0, 4),
            torch.zeros(2, 4, 4, dtype=torch.long),
            r"`hash_input` must have at least one cell \(h, w >= 1\), got shape \(2, 8, 0, 4\)",
        ),
        (
            torch.randn(2, 8, 4, 4),
            torch.zeros(2, 0, 4, dtype=torch.long),
            r"`labels` must have at least one cell \(H, W >= 1\), got shape \(2, 0, 4\)",
        ),
    ],
)
def test_an_empty_hashing_grid_is_refused(hash_input, labels, message):
    projection, weight = torch.randn(8, 16), torch.zeros(4, 4)
    with pytest.raises(CCGShapeError, match=message):
        patch_hash_graph(hash_input, labels, projection, weight)
    with pytest.raises(CCGShapeError, match=message):
        patch_hash_graph_loss(
            torch.randn(2, 8, 4, 4), labels, projection, weight, hash_input=hash_input
        )


def test_error_patch_graph_logits_zero_bits():
    """Codes of 0 bits would divide by bits = 0: every logit NaN."""
    with pytest.raises(
        CCGShapeError,
        match=r"`codes` must have at least 1 bit \(last dimension bits >= 1\), got shape "
        r"\(2, 1, 0\)",
    ):
        patch_graph_logits(torch.ones(2, 1, 0), torch.zeros(1, 1))


def test_error_patch_hash_graph_zero_bit_projection():
    x, lab, _, w, b = _phg_args()
    with pytest.raises(
        CCGShapeError, match=r"`projection` must have at least 1 bit .*, got shape \(4, 0\)"
    ):
        patch_hash_graph(x, lab, torch.randn(4, 0), w, b)
    with pytest.raises(
        CCGShapeError, match=r"`projection` must have at least 1 bit .*, got shape \(4, 0\)"
    ):
        patch_hash_graph_loss(x, lab, torch.randn(4, 0), w, b)


def test_error_patch_memory_codes_zero_bits():
    x, lab, proj, w, _ = _phg_args()
    with pytest.raises(
        CCGShapeError, match=r"`memory_codes` must have at least 1 bit .*, got shape \(1, 3, 0\)"
    ):
        patch_hash_graph(x, lab, proj, w, memory_codes=torch.zeros(1, 3, 0))
