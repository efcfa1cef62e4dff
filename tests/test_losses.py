"""Tests of the MILGridLoss module: it equals the function, compiles and validates."""

from __future__ import annotations

import pytest
import torch

from ccg_layers import MILGridLoss
from ccg_layers.errors import CCGValueRangeError
from ccg_layers.functional import mil_grid_loss


def _inputs():
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    box_mask = torch.tensor([[True, False, False, False], [False, False, True, False]])
    grid = torch.zeros(2, 4, 8, 8)
    grid[0, 0, 2:5, 1:3] = 1
    grid[1, 2, 6:, 6:] = 1
    return logits, labels, grid, box_mask


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("floor", [None, 0.98])
def test_module_equals_function(reduction, floor):
    args = _inputs()
    module = MILGridLoss(box_weight=2.5, reduction=reduction, noisy_or_floor=floor)
    want = mil_grid_loss(*args, box_weight=2.5, reduction=reduction, noisy_or_floor=floor)
    torch.testing.assert_close(module(*args), want)
    torch.testing.assert_close(
        module(args[0], args[1]),
        mil_grid_loss(args[0], args[1], box_weight=2.5, reduction=reduction, noisy_or_floor=floor),
    )


def test_module_validates_its_inputs_once_with_the_functions_messages():
    logits, labels, grid, box_mask = _inputs()
    grid[0, 0] = 0  # box_mask[0, 0] is True: an all-zero target
    with pytest.raises(CCGValueRangeError, match=r"`grid_targets` must mark at least one cell"):
        MILGridLoss()(logits, labels, grid, box_mask)
    assert float(MILGridLoss()(torch.zeros(0, 4, 8, 8), torch.zeros(0, 4))) == 0.0


def test_module_repr_and_validation():
    assert "box_weight=4.0" in repr(MILGridLoss())
    with pytest.raises(CCGValueRangeError, match="`reduction` must be one of"):
        MILGridLoss(reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(CCGValueRangeError, match="`box_weight` must be non-negative"):
        MILGridLoss(box_weight=-1)
    with pytest.raises(CCGValueRangeError, match="`noisy_or_floor` must be None or in"):
        MILGridLoss(noisy_or_floor=2.0)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    args = _inputs()
    module = MILGridLoss()
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(*args), module(*args), rtol=1e-5, atol=1e-5)
    logits = args[0].clone().requires_grad_()
    compiled(logits, *args[1:]).backward()
    assert torch.isfinite(logits.grad).all()


def test_module_validates_once_at_its_boundary(monkeypatch):
    import ccg_layers.functional.mil as mil

    calls = []
    original = mil.check_finite

    def counting(x, name):
        calls.append(name)
        original(x, name)

    monkeypatch.setattr(mil, "check_finite", counting)
    MILGridLoss()(*_inputs())
    assert calls == ["logits"]
