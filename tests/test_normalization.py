"""Graph normalisation: normalize_graph, the well-posed parametrisation of a learnable graph (Eq. 4-6), against float64 references."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

import ccg_layers
from ccg_layers.errors import CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    normalize_graph,
    sample_graph_loss,
)
from tests.graph_references import batches, gen, ref_normalize, ref_normalize_with_memory


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_normalize_graph_matches_reference_rows_sum_to_one(n, seed):
    logits = torch.randn(n, n, generator=gen(seed), dtype=torch.float64) * 3
    got = normalize_graph(logits)
    torch.testing.assert_close(got, ref_normalize(logits))
    torch.testing.assert_close(got.sum(1), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(got.diagonal(), torch.full((n,), 1.0 / n, dtype=torch.float64))
    assert bool((got >= 0).all())


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_normalize_graph_pairs_and_free(P, seed):
    logits = torch.randn(P, generator=gen(seed), dtype=torch.float64)
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


@given(st.integers(1, 4), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_normalize_graph_with_memory_matches_reference(n, K, seed):
    g = gen(seed)
    logits = torch.randn(n, n + K, generator=g, dtype=torch.float64) * 3
    valid = torch.cat([torch.ones(n, dtype=torch.bool), torch.rand(K, generator=g) < 0.5])
    got = normalize_graph(logits, valid=valid)
    torch.testing.assert_close(got, ref_normalize_with_memory(logits, valid.tolist()))
    torch.testing.assert_close(got.sum(1), torch.ones(n, dtype=torch.float64))


# --------------------------------------------------------------------------- validation gaps


def test_error_normalize_graph_valid_masks_every_column():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`valid` must be True for the n=2 batch columns \(only memory columns may be "
        r"masked\), got False at column 0",
    ):
        normalize_graph(torch.zeros(2, 4), valid=torch.zeros(4, dtype=torch.bool))


def test_error_normalize_graph_valid_masks_a_batch_column():
    with pytest.raises(
        CCGValueRangeError, match=r"`valid` must be True for the n=2 batch columns .* column 1"
    ):
        normalize_graph(torch.zeros(2, 4), valid=torch.tensor([True, False, True, True]))


def test_error_normalize_graph_free_valid_masks_a_batch_column():
    with pytest.raises(CCGValueRangeError, match=r"`valid` must be True for the n=2 batch"):
        normalize_graph(
            torch.zeros(2, 3), parametrization="free", valid=torch.tensor([False, True, True])
        )


def test_error_normalize_graph_pair_valid_masks_the_own_partner():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`valid` must be True for the pair's own partner .* got False at column 0",
    ):
        normalize_graph(torch.zeros(2, 3), pairs=True, valid=torch.tensor([False, True, True]))


def test_normalize_graph_valid_values_unchecked_with_value_checks_off():
    with ccg_layers.set_value_checks(False):
        normalize_graph(torch.zeros(2, 3), valid=torch.tensor([False, True, True]))


def test_normalize_graph_masked_memory_columns_stay_allowed():
    got = normalize_graph(torch.zeros(2, 4), valid=torch.tensor([True, True, False, False]))
    torch.testing.assert_close(got, torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]))


def test_error_normalize_graph_nan_logits():
    with pytest.raises(CCGValueRangeError, match=r"`logits` must be finite, got NaN or infinite"):
        normalize_graph(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))


def test_error_normalize_graph_inf_pair_logits():
    with pytest.raises(CCGValueRangeError, match=r"`logits` must be finite, got NaN or infinite"):
        normalize_graph(torch.tensor([0.0, float("inf")]), pairs=True)


def test_error_normalize_graph_pairs_not_a_bool():
    with pytest.raises(CCGValueRangeError, match=r"`pairs` must be True or False, got 'yes'"):
        normalize_graph(torch.zeros(2, 2), pairs="yes")


def test_error_normalize_graph_pair_scores_without_a_column():
    with pytest.raises(
        CCGShapeError,
        match=r"`logits` must score at least 1 pair, each against at least .*\(2, 0\)",
    ):
        normalize_graph(torch.zeros(2, 0), pairs=True)
