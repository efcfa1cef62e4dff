"""Superpixel pooling and hashing (Eq. 6-7): superpixel_pool, hash_codes, patch_codes and hamming_distance, against float64 references."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

import ccg_layers
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    hamming_distance,
    hash_codes,
    patch_codes,
    patch_graph_logits,
    superpixel_pool,
)
from tests.graph_references import (
    patch_inputs,
    random_codes,
    ref_hamming_popcount,
    ref_patch_scores,
    ref_superpixel_pool,
)


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


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_hamming_matches_xor_popcount_exactly(m, m2, bits, seed):
    a = random_codes((2, m, bits), seed, torch.float32)
    b = random_codes((2, m2, bits), seed + 1, torch.float32)
    got = hamming_distance(a, b)
    for i in range(2):
        assert torch.equal(got[i].double(), ref_hamming_popcount(a[i], b[i]))
    assert torch.equal(got, got.round())


@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_hamming_symmetric_and_zero_on_self(m, bits, seed):
    a = random_codes((m, bits), seed)
    b = random_codes((m, bits), seed + 7)
    torch.testing.assert_close(hamming_distance(a, b), hamming_distance(b, a).T)
    assert bool((hamming_distance(a, a).diagonal() == 0).all())


def test_hamming_exact_under_bf16_autocast():
    a, b = random_codes((8, 256), 1, torch.bfloat16), random_codes((8, 256), 2, torch.bfloat16)
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


@given(patch_inputs(), st.booleans())
def test_patch_graph_logits_match_the_literal_hamming_graph(inputs, with_missing):
    x, _, projection, weight, bias = inputs
    n, m = x.shape[0], weight.shape[0]
    codes = random_codes((n, m, projection.shape[1]), 3)
    if with_missing:
        codes[0, -1] = 0
    got = patch_graph_logits(codes, weight, bias)
    want = torch.tensor(
        [[ref_patch_scores(codes[u], codes[v], weight, bias) for v in range(n)] for u in range(n)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want)
    other = random_codes((n, m, projection.shape[1]), 4)
    got_pairs = patch_graph_logits(codes, weight, bias, other)
    want_pairs = torch.tensor(
        [ref_patch_scores(codes[p], other[p], weight, bias) for p in range(n)], dtype=torch.float64
    )
    torch.testing.assert_close(got_pairs, want_pairs)


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


def test_patch_codes_match_pool_then_hash():
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    labels = torch.randint(0, 5, (3, 8, 8))
    proj = torch.randn(4, 16, dtype=torch.float64)
    pooled, valid = superpixel_pool(x, labels, 5)
    assert torch.equal(patch_codes(x, labels, proj, 5), hash_codes(pooled, proj) * valid[..., None])


# --------------------------------------------------------------------------- validation gaps

NAN, INF = float("nan"), float("inf")


def _pool_args(n=1):
    return torch.randn(n, 2, 2, 2), torch.zeros(n, 2, 2, dtype=torch.long)


def test_error_hash_codes_nan_x():
    with pytest.raises(CCGValueRangeError, match=r"`x` must be finite, got NaN or infinite"):
        hash_codes(torch.tensor([[NAN, 1.0]]), torch.eye(2))


def test_error_hash_codes_inf_x():
    with pytest.raises(CCGValueRangeError, match=r"`x` must be finite, got NaN or infinite"):
        hash_codes(torch.tensor([[1.0, -INF]]), torch.eye(2))


def test_hash_codes_nan_x_passes_with_value_checks_off():
    with ccg_layers.set_value_checks(False):
        assert hash_codes(torch.tensor([[NAN, 1.0]]), torch.eye(2)).shape == (1, 2)


def test_hash_codes_does_not_check_the_projection_values():
    """A learnable/fixed parameter is the trainer's to watch: only the data input is checked."""
    codes = hash_codes(torch.ones(1, 2), torch.tensor([[NAN, 1.0], [1.0, 1.0]]))
    assert codes.shape == (1, 2)


def test_error_patch_codes_nan_hash_input():
    x, labels = _pool_args()
    x[0, 1, 0, 0] = NAN
    with pytest.raises(CCGValueRangeError, match=r"`hash_input` must be finite, got NaN"):
        patch_codes(x, labels, torch.ones(2, 2), 3)


def test_error_patch_codes_num_patches_bool():
    x, labels = _pool_args()
    with pytest.raises(CCGValueRangeError, match=r"`num_patches` must be a positive int, got True"):
        patch_codes(x, labels, torch.ones(2, 2), True)


def test_error_patch_codes_empty_label_grid():
    x, labels = _pool_args()
    with pytest.raises(
        CCGShapeError,
        match=r"`labels` must have at least one cell \(H, W >= 1\), got shape \(1, 2, 0\)",
    ):
        patch_codes(x, labels[:, :, :0], torch.ones(2, 2), 3)


def test_error_patch_codes_empty_hash_input_grid():
    x, labels = _pool_args()
    with pytest.raises(
        CCGShapeError,
        match=r"`hash_input` must have at least one cell \(h, w >= 1\), got shape \(1, 2, 0, 2\)",
    ):
        patch_codes(x[:, :, :0], labels, torch.ones(2, 2), 3)


def test_error_superpixel_pool_nan_x():
    x, labels = _pool_args()
    x[0, 0, 1, 1] = NAN
    with pytest.raises(CCGValueRangeError, match=r"`x` must be finite, got NaN or infinite"):
        superpixel_pool(x, labels, 3)


def test_error_superpixel_pool_num_segments_bool():
    x, labels = _pool_args()
    with pytest.raises(
        CCGValueRangeError, match=r"`num_segments` must be a positive int, got True"
    ):
        superpixel_pool(x, labels, True)


def test_error_superpixel_pool_empty_label_grid():
    x, labels = _pool_args()
    with pytest.raises(
        CCGShapeError,
        match=r"`labels` must have at least one cell \(H, W >= 1\), got shape \(1, 0, 2\)",
    ):
        superpixel_pool(x, labels[:, :0], 3)


def test_error_superpixel_pool_empty_x_grid():
    x, labels = _pool_args()
    with pytest.raises(
        CCGShapeError,
        match=r"`x` must have at least one cell \(h, w >= 1\), got shape \(1, 2, 0, 2\)",
    ):
        superpixel_pool(x[:, :, :0], labels, 3)


def test_error_hamming_zero_bits():
    with pytest.raises(
        CCGShapeError,
        match=r"`a` must have at least 1 bit \(last dimension bits >= 1\), got shape \(2, 0\)",
    ):
        hamming_distance(torch.ones(2, 0), torch.ones(3, 0))


def test_error_hamming_zero_bits_b():
    with pytest.raises(CCGShapeError, match=r"`b` must have at least 1 bit .*, got shape \(3, 0\)"):
        hamming_distance(torch.ones(2, 2), torch.ones(3, 0))


def test_error_hash_codes_zero_bit_projection():
    with pytest.raises(
        CCGShapeError,
        match=r"`projection` must have at least 1 bit \(last dimension bits >= 1\), got shape "
        r"\(2, 0\)",
    ):
        hash_codes(torch.ones(3, 2), torch.ones(2, 0))


def test_error_patch_codes_zero_bit_projection():
    x, labels = _pool_args()
    with pytest.raises(
        CCGShapeError, match=r"`projection` must have at least 1 bit .*, got shape \(2, 0\)"
    ):
        patch_codes(x, labels, torch.ones(2, 0), 3)


def test_codes_mixing_zero_with_signs_are_refused():
    # 0/1 bits passed for -1/+1 codes: a row of zeros is a missing patch, a partial one is not
    bits01 = torch.tensor([[[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]).repeat(2, 1, 1)
    with pytest.raises(
        CCGValueRangeError,
        match=r"`codes` must hold codes of -1 and \+1, or a row of zeros for a missing patch, "
        r"got 2 row\(s\) mixing 0 with \+-1",
    ):
        patch_graph_logits(bits01, torch.zeros(2, 2))
    missing = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]]]).repeat(2, 1, 1)
    assert patch_graph_logits(missing, torch.zeros(2, 2)).shape == (2, 2)
    with ccg_layers.set_value_checks(False):  # a value check
        patch_graph_logits(bits01, torch.zeros(2, 2))
