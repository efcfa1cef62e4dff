"""Tests of the shared validation helpers (ccg_layers.validation) and the switches (ccg_layers.config)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import ccg_layers
from ccg_layers import validation as v
from ccg_layers.errors import CCGDTypeError, CCGInputError, CCGShapeError, CCGValueRangeError


def test_errors_are_value_errors():
    for cls in (CCGInputError, CCGShapeError, CCGDTypeError, CCGValueRangeError):
        assert issubclass(cls, ValueError)


def test_check_shape_binds_and_compares_symbols():
    dims = v.check_shape(torch.zeros(2, 3, 4), "x", ("N", "K", 4))
    assert dims == {"N": 2, "K": 3}
    v.check_shape(torch.zeros(2, 3), "y", ("N", "K"), dims)
    with pytest.raises(
        CCGShapeError, match=r"`z` must have shape \(N, K\) with K=3 .* got shape \(2, 5\) \(K=5\)"
    ):
        v.check_shape(torch.zeros(2, 5), "z", ("N", "K"), dims)


def test_check_shape_leading_dims():
    assert v.check_shape(torch.zeros(7, 6, 5, 4), "x", ("D", 4), leading=True) == {"D": 5}
    with pytest.raises(
        CCGShapeError, match=r"`x` must have at least 2 dimensions \(\.\.\., D, 4\)"
    ):
        v.check_shape(torch.zeros(4), "x", ("D", 4), leading=True)


def test_check_shape_fixed_size():
    with pytest.raises(CCGShapeError, match=r"with 4 in that position, got shape \(3, 5\)"):
        v.check_shape(torch.zeros(3, 5), "boxes", ("M", 4))


def test_check_dtype_names_kinds():
    v.check_dtype(torch.zeros(1), "x", ("float",))
    with pytest.raises(
        CCGDTypeError, match=r"`x` must have a int or bool dtype, got torch.float32"
    ):
        v.check_dtype(torch.zeros(1), "x", ("int", "bool"))


def test_check_binary_and_finite_and_index():
    v.check_binary(torch.tensor([0.0, 1.0]), "y")
    with pytest.raises(
        CCGValueRangeError, match=r"`y` must hold only 0 and 1, got 1 other value\(s\), e.g. 2"
    ):
        v.check_binary(torch.tensor([0, 2]), "y")
    with pytest.raises(CCGValueRangeError, match=r"`f` must be finite"):
        v.check_finite(torch.tensor([float("inf")]), "f")
    v.check_index(torch.tensor([0, 2]), "i", 3)
    with pytest.raises(
        CCGValueRangeError, match=r"`i` must hold indices in \[0, 3\), got values in \[-1, 3\]"
    ):
        v.check_index(torch.tensor([-1, 3]), "i", 3)
    with pytest.raises(CCGDTypeError, match=r"`i` must have a int dtype"):
        v.check_index(torch.tensor([0.0]), "i", 3)


def test_check_positive_rejects_nan_sign_infinity_and_non_numbers():
    v.check_positive(1.0, "a")
    v.check_positive(3, "a")
    v.check_positive(0.0, "a", allow_zero=True)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "4", True, None):
        with pytest.raises(CCGValueRangeError, match=r"`a` must be a positive number, got "):
            v.check_positive(bad, "a")
    with pytest.raises(CCGValueRangeError, match=r"`a` must be a non-negative number, got -1"):
        v.check_positive(-1, "a", allow_zero=True)


def test_real_number_checks_the_interval_and_the_type():
    assert v.real_number(2, "x") == 2.0
    assert v.real_number(np.float32(0.25), "x") == 0.25
    assert v.real_number(np.int64(3), "x", low=0) == 3.0
    assert v.real_number(0.5, "x", low=0, high=1, low_open=True, high_open=True) == 0.5
    assert v.real_number(0.0, "x", low=0, high=1) == 0.0
    cases = [
        (0.0, {"low": 0, "high": 1, "low_open": True}, r"in \(0, 1\]"),
        (1.0, {"low": 0, "high": 1, "high_open": True}, r"in \[0, 1\)"),
        (-2.0, {"low": -1}, r"in \[-1, inf\]"),
        (float("nan"), {}, r"in \[-inf, inf\]"),
        ("0.5", {"low": 0}, r"in \[0, inf\]"),
        (False, {}, r"in \[-inf, inf\]"),
    ]
    for value, kw, interval in cases:
        with pytest.raises(CCGValueRangeError, match=rf"`x` must be a finite number {interval}"):
            v.real_number(value, "x", **kw)
    with pytest.raises(CCGValueRangeError, match=r"`x` must be a gain, got 'a'"):
        v.real_number("a", "x", what="a gain")


def test_check_flag_takes_only_bools():
    assert v.check_flag(True, "f") is True
    assert v.check_flag(False, "f") is False
    for bad in ("no", 1, 0, None):
        with pytest.raises(CCGValueRangeError, match=r"`f` must be True or False, got "):
            v.check_flag(bad, "f")


def test_reduce():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert v.reduce(x, "none") is x
    assert v.reduce(x, "sum") == 10
    assert v.reduce(x, "mean") == 2.5
    assert v.reduce(x, "mean", count=5) == 2


def test_check_size2_accepts_an_int_or_a_pair():

    assert v.check_size2(100, "image_size") == (100, 100)
    assert v.check_size2((3, 4), "image_size") == (3, 4)
    assert v.check_size2([3, 4], "image_size") == (3, 4)
    assert v.check_size2(torch.Size([3, 4]), "image_size") == (3, 4)
    assert v.check_size2(np.int64(7), "image_size") == (7, 7)


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, (3,), (3, 4, 5), (3, 0), "34", None])
def test_check_size2_names_the_argument(bad):
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`grid_size` must be a positive int or two positive ints \(H, W\), got {re.escape(repr(bad))}\.",
    ):
        v.check_size2(bad, "grid_size")


def test_reduce_mean_of_nothing_is_zero():
    x = torch.zeros(0, 3, requires_grad=True)
    out = v.reduce(x, "mean")
    assert out.shape == ()
    assert float(out.detach()) == 0.0
    out.backward()
    assert x.grad is not None


def test_positive_int_takes_python_and_numpy_integers_only():
    assert v.positive_int(3, "k") == 3
    assert v.positive_int(np.int64(3), "k") == 3
    assert type(v.positive_int(np.int32(2), "k")) is int
    assert v.positive_int(0, "k", allow_zero=True) == 0
    for bad in (0, -1, 2.0, "3", True, np.bool_(True), torch.tensor(3), None):
        with pytest.raises(CCGValueRangeError, match=r"`k` must be a positive int, got "):
            v.positive_int(bad, "k")
    with pytest.raises(CCGValueRangeError, match=r"`k` must be a non-negative int, got -1"):
        v.positive_int(-1, "k", allow_zero=True)


def test_check_grid_refuses_an_empty_grid():
    v.check_grid(torch.zeros(2, 3, 1, 1), "x")
    v.check_grid(torch.zeros(0, 3, 2, 2), "x")  # an empty batch is the caller's to judge
    for shape in ((2, 3, 0, 4), (2, 3, 4, 0)):
        with pytest.raises(
            CCGShapeError, match=r"`x` must have at least one cell \(h, w >= 1\), got shape "
        ):
            v.check_grid(torch.zeros(shape), "x", "h, w")


def test_check_probabilities_is_a_value_check_of_zero_to_one():
    v.check_probabilities(torch.tensor([0.0, 0.5, 1.0]), "p")
    for bad, shown in ((2.0, r"\[0, 2\]"), (-0.5, r"\[-0.5, 0\]")):
        with pytest.raises(
            CCGValueRangeError,
            match=rf"`p` must hold probabilities in \[0, 1\] .* values in {shown}",
        ):
            v.check_probabilities(torch.tensor([0.0, bad]), "p")
    with ccg_layers.set_value_checks(False):
        v.check_probabilities(torch.tensor([2.0]), "p")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_probabilities_names_non_finite_values_as_check_finite_does(bad):
    with pytest.raises(
        CCGValueRangeError, match=r"^`p` must be finite, got NaN or infinite values\.$"
    ):
        v.check_probabilities(torch.tensor([0.5, bad]), "p")


def test_optional_positive_int_and_check_size2_axes():
    assert v.optional_positive_int(None, "q") is None
    assert v.optional_positive_int(np.int64(4), "q") == 4
    for bad in (0, True, 2.5, "4"):
        with pytest.raises(CCGValueRangeError, match=r"`q` must be None or a positive int, got "):
            v.optional_positive_int(bad, "q")
    assert v.check_size2((3, 5), "size", "(W, H)") == (3, 5)
    with pytest.raises(CCGValueRangeError, match=r"two positive ints \(W, H\), got \(0, 5\)"):
        v.check_size2((0, 5), "size", "(W, H)")
